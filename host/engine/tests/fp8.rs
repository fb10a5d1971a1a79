//! FP8 weights on the tiny Wan transformer (tests/fixtures/make_fp8_fixtures.py): checkpoints
//! stored in float8 stay float8 in memory and match diffusers run on their dequantized weights;
//! quantizing at load (`--quant fp8`) reproduces PyTorch's bytes; LoRAs join FP8 layers as side
//! paths; malformed scales are refused by name.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use videosdgx_engine::families::wan::transformer::WanTransformer3DModel;
use videosdgx_engine::lora::{Adaptable, Lora, LoraFile, LoraMode, Weight};
use videosdgx_engine::models::fp8::quantize_blocks;
use videosdgx_engine::models::relative_error;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn fp8_fixture(file: &str) -> PathBuf {
    fixtures().join("components/wan_t2v_fp8").join(file)
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn load(dir: &Path) -> WanTransformer3DModel {
    WanTransformer3DModel::load(dir, &Device::Cpu, DType::F32).unwrap()
}

fn forward(model: &WanTransformer3DModel, inputs: &Path) -> Tensor {
    let t = tensors(inputs);
    model
        .forward(
            &t["hidden_states"],
            &t["timestep"],
            &t["encoder_hidden_states"],
            None,
        )
        .unwrap()
}

fn component_inputs() -> PathBuf {
    fixtures().join("components/wan_t2v/inputs.safetensors")
}

/// The name, data and scale of every FP8 layer, and how many layers stay dense.
fn fp8_layers(model: &mut WanTransformer3DModel) -> (Vec<(String, Tensor, Tensor)>, usize) {
    let (mut fp8, mut dense) = (Vec::new(), 0);
    model
        .visit_weights(&mut |w| {
            if let Weight::Linear(linear) = w {
                match linear.fp8() {
                    Some(q) => fp8.push((
                        linear.name().to_string(),
                        q.data().clone(),
                        q.scale().clone(),
                    )),
                    None => dense += 1,
                }
            }
            Ok(())
        })
        .unwrap();
    (fp8, dense)
}

#[test]
fn fp8_checkpoints_stay_fp8_and_match_diffusers_on_their_dequantized_weights() {
    let outputs = tensors(&fp8_fixture("outputs.safetensors"));
    for (folder, scales) in [("per_channel", 32usize), ("per_tensor", 1)] {
        let mut model = load(&fp8_fixture(folder));
        let (layers, dense) = fp8_layers(&mut model);
        // Two blocks of q, k, v, out for two attentions and two feed-forward layers.
        assert_eq!(layers.len(), 20, "{folder}: FP8 layers");
        assert!(
            dense > 0,
            "{folder}: the embeddings and the head stay dense"
        );
        for (name, data, scale) in &layers {
            assert_eq!(
                data.dtype(),
                DType::F8E4M3,
                "{folder} {name}: one byte a weight"
            );
            if name.ends_with("to_q") {
                assert_eq!(scale.elem_count(), scales, "{folder} {name}: scales");
            }
        }
        let sample = forward(&model, &component_inputs());
        let err = relative_error(&sample, &outputs[folder]).unwrap();
        assert!(err <= 1e-4, "{folder}: relative error {err:e}");
    }
}

#[test]
fn quantizing_at_load_reproduces_pytorch_bytes_and_its_checkpoint() {
    let mut model = load(&fixtures().join("components/wan_t2v/model"));
    assert_eq!(quantize_blocks(&mut model).unwrap(), 20);
    let expected = tensors(&fp8_fixture("quantized.safetensors"));
    let (layers, _) = fp8_layers(&mut model);
    for (name, data, scale) in &layers {
        let values = |t: &Tensor| -> Vec<f32> {
            t.to_dtype(DType::F32)
                .and_then(|t| t.flatten_all()?.to_vec1())
                .unwrap()
        };
        let (got, want) = (values(data), values(&expected[&format!("{name}.weight")]));
        // e4m3 to f32 is exact: equal values are equal bytes (up to the sign of zero).
        assert_eq!(got, want, "{name}: the e4m3 values");
        let err = relative_error(scale, &expected[&format!("{name}.weight_scale")]).unwrap();
        assert!(err <= 1e-7, "{name}: scale error {err:e}");
    }
    let outputs = tensors(&fp8_fixture("outputs.safetensors"));
    let err = relative_error(
        &forward(&model, &component_inputs()),
        &outputs["per_channel"],
    )
    .unwrap();
    assert!(err <= 1e-4, "quantized at load: relative error {err:e}");
}

#[test]
fn loras_join_fp8_layers_as_side_paths_in_either_mode() {
    let dir = fixtures().join("tiny-wan-t2v/transformer");
    let inputs = fixtures().join("lora/inputs_t2v.safetensors");
    let peft = Lora {
        file: Arc::new(LoraFile::open(&fixtures().join("lora/peft.safetensors")).unwrap()),
        strength: 0.8,
    };
    let mut dense = load(&dir);
    dense.set_loras(std::slice::from_ref(&peft), LoraMode::Runtime).unwrap();
    let dense_out = forward(&dense, &inputs);

    let mut model = load(&dir);
    quantize_blocks(&mut model).unwrap();
    let plain = forward(&model, &inputs);
    model.set_loras(std::slice::from_ref(&peft), LoraMode::Merge).unwrap();
    let merged = forward(&model, &inputs);
    model.set_loras(&[peft], LoraMode::Runtime).unwrap();
    let runtime = forward(&model, &inputs);

    assert!(
        relative_error(&plain, &merged).unwrap() > 1e-2,
        "the LoRA applies"
    );
    let err = relative_error(&merged, &runtime).unwrap();
    assert!(
        err <= 1e-6,
        "merge mode on FP8 layers is the side path: {err:e}"
    );
    // FP8 rounding of the base weights only.
    let err = relative_error(&runtime, &dense_out).unwrap();
    assert!(err <= 5e-2, "FP8 against dense with the same LoRA: {err:e}");

    let diff = Lora {
        file: Arc::new(LoraFile::open(&fixtures().join("lora/comfy_diff.safetensors")).unwrap()),
        strength: 1.0,
    };
    let err = model
        .set_loras(&[diff], LoraMode::Merge)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blocks.1.ffn.2.diff") && err.contains("FP8"),
        "a whole-weight change on an FP8 layer is refused by name: {err}"
    );
}

#[test]
fn malformed_fp8_scales_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::copy(
        fp8_fixture("per_channel/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let mut state = tensors(&fp8_fixture(
        "per_channel/diffusion_pytorch_model.safetensors",
    ));
    state.insert(
        "blocks.0.attn1.to_q.weight_scale".into(),
        Tensor::ones(3, DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&state, dir.join("diffusion_pytorch_model.safetensors"))
        .unwrap();
    let err = WanTransformer3DModel::load(dir, &Device::Cpu, DType::F32)
        .err()
        .expect("three scales for 32 channels");
    let err = format!("{err:#}");
    assert!(
        err.contains("blocks.0.attn1.to_q") && err.contains("1 or 32 scales, not 3"),
        "{err}"
    );
}
