//! FP8 weights on the tiny Wan transformer (tests/fixtures/make_fp8_fixtures.py): checkpoints
//! stored in float8 stay float8 in memory and match diffusers run on their dequantized weights;
//! quantizing at load (`--quant fp8`) reproduces PyTorch's bytes; LoRAs join FP8 layers as side
//! paths; malformed scales are refused by name.

use super::{component_inputs, fixtures, forward, load, tensors, with_a_lora};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use videosdgx_engine::families::wan::transformer::WanTransformer3DModel;
use videosdgx_engine::lora::{Adaptable, Lora, LoraFile, LoraMode, Weight};
use videosdgx_engine::models::quant::{Quant, quantize_blocks};
use videosdgx_engine::models::relative_error;

fn fp8_fixture(file: &str) -> PathBuf {
    fixtures().join("components/wan_t2v_fp8").join(file)
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
    assert_eq!(quantize_blocks(&mut model, Quant::Fp8).unwrap(), 20);
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
    dense
        .set_loras(std::slice::from_ref(&peft), LoraMode::Runtime)
        .unwrap();
    let dense_out = forward(&dense, &inputs);

    let (mut model, [plain, merged, runtime]) = with_a_lora(Quant::Fp8);

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
        err.contains("blocks.1.ffn.2.diff") && err.contains("kept quantized"),
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

#[test]
fn wan_single_files_in_the_release_names_load_as_users_download_them() {
    let outputs = tensors(&fp8_fixture("outputs.safetensors"));
    let dense = tensors(&fixtures().join("components/wan_t2v/outputs.safetensors"));
    for (file, expected, fp8) in [
        ("wan_t2v.safetensors", &dense["sample"], 0),
        ("wan_t2v_fp8_scaled.safetensors", &outputs["per_tensor"], 20),
        (
            "wan_t2v_fp8_comfy_quant.safetensors",
            &outputs["per_tensor"],
            20,
        ),
        (
            "wan_t2v_fp8_lightx2v.safetensors",
            &outputs["per_channel"],
            20,
        ),
    ] {
        let stem = file.trim_end_matches(".safetensors");
        let mut model = load(&fp8_fixture("original").join(stem));
        assert_eq!(fp8_layers(&mut model).0.len(), fp8, "{file}: FP8 layers");
        let err = relative_error(&forward(&model, &component_inputs()), expected).unwrap();
        assert!(err <= 1e-4, "{file}: relative error {err:e}");
    }
    // A bare file has no config: its shapes give one, with the published head dim of 128,
    // which the tiny model's width of 32 does not fit.
    let bare = fp8_fixture("original/wan_t2v/wan_t2v.safetensors");
    let err = WanTransformer3DModel::load(&bare, &Device::Cpu, DType::F32)
        .err()
        .expect("no head dim of 128");
    assert!(
        format!("{err:#}").contains("a width of 32 does not split into heads of 128"),
        "{err:#}"
    );
}

#[test]
fn a_bare_wan_file_implies_its_config_from_the_shapes() {
    use videosdgx_engine::loader::Checkpoint;
    use videosdgx_engine::loader::single_file::{OriginalLayout, SingleFile};
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("wan2.1_i2v_tiny.safetensors");
    let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::BF16, &Device::Cpu).unwrap();
    let p = "model.diffusion_model.";
    let state: HashMap<String, Tensor> = [
        ("patch_embedding.weight", zeros(&[256, 36, 1, 2, 2])),
        ("head.head.weight", zeros(&[64, 256])),
        ("text_embedding.0.weight", zeros(&[256, 4096])),
        ("time_embedding.0.weight", zeros(&[256, 256])),
        ("blocks.0.self_attn.q.weight", zeros(&[256, 256])),
        ("blocks.0.ffn.0.weight", zeros(&[512, 256])),
        ("blocks.2.norm3.weight", zeros(&[256])),
        ("blocks.0.norm3.weight", zeros(&[256])),
        ("blocks.0.cross_attn.k_img.weight", zeros(&[256, 256])),
        ("img_emb.proj.0.weight", zeros(&[1280])),
    ]
    .into_iter()
    .map(|(k, v)| (format!("{p}{k}"), v))
    .collect();
    candle_core::safetensors::save(&state, &path).unwrap();
    let file = SingleFile::detect(Arc::new(Checkpoint::open_file(&path).unwrap()))
        .unwrap()
        .expect("the Wan layout");
    assert_eq!(file.layout(), OriginalLayout::WanTransformer);
    let config = file.wan_config().unwrap();
    assert_eq!(
        (config.num_attention_heads, config.attention_head_dim),
        (2, 128)
    );
    assert_eq!((config.in_channels, config.out_channels), (36, Some(16)));
    assert_eq!(
        (config.text_dim, config.freq_dim, config.ffn_dim),
        (4096, 256, 512)
    );
    assert_eq!(config.num_layers, 3);
    assert!(config.cross_attn_norm);
    assert_eq!(
        (config.image_dim, config.added_kv_proj_dim),
        (Some(1280), Some(256))
    );
    assert_eq!(config.pos_embed_seq_len, None);
}

#[test]
fn models_verify_accepts_fp8_checkpoints_and_their_markers() {
    for dir in [
        "per_channel",
        "per_tensor",
        "original/wan_t2v",
        "original/wan_t2v_fp8_scaled",
        "original/wan_t2v_fp8_comfy_quant",
        "original/wan_t2v_fp8_lightx2v",
    ] {
        let report = videosdgx_engine::loader::verify(&fp8_fixture(dir)).unwrap();
        for component in &report.components {
            assert!(component.is_ok(), "{dir}: {component:?}");
        }
    }
}
