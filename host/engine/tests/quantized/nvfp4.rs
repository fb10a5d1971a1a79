//! NVFP4 weights on the tiny Wan transformer (tests/fixtures/make_nvfp4_fixtures.py): the three
//! layouts in circulation (ModelOpt, ComfyUI, LightX2V) load into one form, stay 4-bit in memory
//! and match diffusers run on their dequantized weights; quantizing at load (`--quant nvfp4`)
//! reproduces ModelOpt's bytes; LoRAs join NVFP4 layers as side paths; malformed layers are
//! refused by name.

use super::{component_inputs, fixtures, forward, load, tensors, with_a_lora};
use candle_core::{DType, Device, Tensor};
use std::path::PathBuf;
use videosdgx_engine::families::wan::transformer::WanTransformer3DModel;
use videosdgx_engine::lora::{Adaptable, Weight};
use videosdgx_engine::models::nvfp4::Nvfp4Weight;
use videosdgx_engine::models::quant::{Quant, quantize_blocks};
use videosdgx_engine::models::relative_error;

fn nvfp4_fixture(file: &str) -> PathBuf {
    fixtures().join("components/wan_t2v_nvfp4").join(file)
}

/// Every NVFP4 layer by name, and how many linear layers stay dense.
fn nvfp4_layers(model: &mut WanTransformer3DModel) -> (Vec<(String, Nvfp4Weight)>, usize) {
    let (mut quantized, mut dense) = (Vec::new(), 0);
    model
        .visit_weights(&mut |w| {
            if let Weight::Linear(linear) = w {
                match linear.nvfp4() {
                    Some(q) => quantized.push((linear.name().to_string(), q.clone())),
                    None => dense += 1,
                }
            }
            Ok(())
        })
        .unwrap();
    (quantized, dense)
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all()?.to_vec1())
        .unwrap()
}

/// Two blocks of q, k, v, out for two attentions and the feed-forward's first layer; its second
/// (input width 40, not a multiple of 16) stays dense.
const LAYERS: usize = 18;

#[test]
fn each_nvfp4_layout_stays_4_bit_and_matches_diffusers_on_its_dequantized_weights() {
    let outputs = tensors(&nvfp4_fixture("outputs.safetensors"));
    for (dir, expected) in [
        ("modelopt", "modelopt"),
        ("original/wan_t2v_nvfp4_comfy", "modelopt"),
        ("original/wan_t2v_nvfp4_lightx2v", "lightx2v"),
        ("original/wan_t2v_nvfp4_lightx2v_alpha", "lightx2v_alpha"),
    ] {
        let mut model = load(&nvfp4_fixture(dir));
        let (layers, dense) = nvfp4_layers(&mut model);
        assert_eq!(layers.len(), LAYERS, "{dir}: NVFP4 layers");
        assert!(
            dense > 0,
            "{dir}: the embeddings, the head and ffn.2 stay dense"
        );
        for (name, weight) in &layers {
            let [out, inner] = [weight.dims()[0], weight.dims()[1]];
            assert_eq!(weight.packed().dtype(), DType::U8, "{dir} {name}");
            assert_eq!(
                weight.packed().dims(),
                [out, inner / 2],
                "{dir} {name}: unpadded"
            );
            assert_eq!(
                weight.block_scales().dims(),
                [out, inner / 16],
                "{dir} {name}"
            );
        }
        let sample = forward(&model, &component_inputs());
        let err = relative_error(&sample, &outputs[expected]).unwrap();
        assert!(err <= 1e-4, "{dir}: relative error {err:e}");
    }
}

#[test]
fn quantizing_at_load_reproduces_modelopt_bytes_and_its_checkpoint() {
    let mut model = load(&fixtures().join("components/wan_t2v/model"));
    assert_eq!(quantize_blocks(&mut model, Quant::Nvfp4).unwrap(), LAYERS);
    let expected = tensors(&nvfp4_fixture("quantized.safetensors"));
    let (layers, _) = nvfp4_layers(&mut model);
    for (name, weight) in &layers {
        let packed = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
        assert_eq!(
            packed(weight.packed()),
            packed(&expected[&format!("{name}.weight")]),
            "{name}: the packed codes"
        );
        assert_eq!(
            values(weight.block_scales()),
            values(&expected[&format!("{name}.weight_scale")]),
            "{name}: the block scales"
        );
        assert_eq!(
            values(weight.global()),
            values(&expected[&format!("{name}.weight_scale_2")]),
            "{name}: the tensor scale"
        );
    }
    let outputs = tensors(&nvfp4_fixture("outputs.safetensors"));
    let err = relative_error(&forward(&model, &component_inputs()), &outputs["modelopt"]).unwrap();
    assert!(err <= 1e-4, "quantized at load: relative error {err:e}");
    // Already-quantized layers are left alone.
    assert_eq!(quantize_blocks(&mut model, Quant::Nvfp4).unwrap(), 0);
}

#[test]
fn loras_join_nvfp4_layers_as_side_paths() {
    let (_, [plain, merged, runtime]) = with_a_lora(Quant::Nvfp4);
    assert!(
        relative_error(&plain, &merged).unwrap() > 1e-2,
        "the LoRA applies"
    );
    let err = relative_error(&merged, &runtime).unwrap();
    assert!(
        err <= 1e-6,
        "merge mode on NVFP4 layers is the side path: {err:e}"
    );
}

/// The ModelOpt checkpoint with tensor `name` replaced, in a temporary directory.
fn altered_modelopt(name: &str, tensor: Tensor) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        nvfp4_fixture("modelopt/config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let mut state = tensors(&nvfp4_fixture(
        "modelopt/diffusion_pytorch_model.safetensors",
    ));
    state.insert(name.to_string(), tensor);
    candle_core::safetensors::save(
        &state,
        tmp.path().join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    tmp
}

#[test]
fn malformed_nvfp4_layers_are_refused_by_name() {
    let q = "blocks.0.attn1.to_q";
    let cpu = &Device::Cpu;
    let three_blocks = Tensor::ones((32, 3), DType::F32, cpu)
        .unwrap()
        .to_dtype(DType::F8E4M3)
        .unwrap();
    for (tensor, replacement, says) in [
        ("weight_scale", three_blocks, "weight_scale"),
        (
            "weight_scale_2",
            Tensor::ones(2, DType::F32, cpu).unwrap(),
            "2 tensor scales",
        ),
        (
            "weight",
            Tensor::zeros((32, 32), DType::U8, cpu).unwrap(),
            "weight",
        ),
    ] {
        let dir = altered_modelopt(&format!("{q}.{tensor}"), replacement);
        let err = WanTransformer3DModel::load(dir.path(), cpu, DType::F32)
            .err()
            .expect("a malformed layer");
        let err = format!("{err:#}");
        assert!(err.contains(q) && err.contains(says), "{says}: {err}");
    }
}

#[test]
fn models_verify_accepts_nvfp4_checkpoints() {
    for dir in [
        "modelopt",
        "original/wan_t2v_nvfp4_comfy",
        "original/wan_t2v_nvfp4_lightx2v",
        "original/wan_t2v_nvfp4_lightx2v_alpha",
    ] {
        let report = videosdgx_engine::loader::verify(&nvfp4_fixture(dir)).unwrap();
        for component in &report.components {
            assert!(component.is_ok(), "{dir}: {component:?}");
        }
    }
}

/// Black Forest Labs' FLUX.2 [dev] NVFP4 file as it is stored: their names with q/k/v fused,
/// ComfyUI's storage, and the quantized layers named by the header's `_quantization_metadata`
/// instead of `comfy_quant` tensors; the text stream's q/k/v stays bf16.
#[test]
fn a_flux2_file_naming_its_nvfp4_layers_in_the_header_matches_diffusers() {
    use videosdgx_engine::families::flux2::transformer::Flux2Transformer2DModel;
    let dir = fixtures().join("components/flux2_nvfp4");
    let file = dir.join("flux2-dev-nvfp4.safetensors");
    let mut model = Flux2Transformer2DModel::load(&file, &Device::Cpu, DType::F32).unwrap();
    let mut quantized = Vec::new();
    model
        .visit_weights(&mut |w| {
            if let Weight::Linear(linear) = w
                && linear.nvfp4().is_some()
            {
                quantized.push(linear.name().to_string());
            }
            Ok(())
        })
        .unwrap();
    // The image stream's q, k and v (cut from one fused layer), its output and feed-forward, the
    // text stream's output and feed-forward, and both single blocks' two layers.
    assert_eq!(quantized.len(), 13, "{quantized:?}");
    assert!(quantized.iter().any(|n| n.ends_with("attn.to_k")));
    assert!(!quantized.iter().any(|n| n.ends_with("add_k_proj")));
    let inputs = tensors(&fixtures().join("components/flux2-dev-tiny/inputs.safetensors"));
    let sample = model
        .forward(
            &inputs["hidden_states"],
            &inputs["encoder_hidden_states"],
            &inputs["timestep"],
            &inputs["img_ids"],
            &inputs["txt_ids"],
            inputs.get("guidance"),
        )
        .unwrap();
    let expected = &tensors(&dir.join("outputs.safetensors"))["sample"];
    let err = relative_error(&sample, expected).unwrap();
    eprintln!("FLUX.2 NVFP4 file: relative error {err:e}");
    assert!(err <= 1e-4, "relative error {err:e}");
}

#[test]
fn a_malformed_quantization_header_is_refused_naming_the_file() {
    use safetensors::tensor::{Dtype, TensorView};
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("listed.safetensors");
    let bytes = [0u8; 4];
    let header = std::collections::HashMap::from([(
        "_quantization_metadata".to_string(),
        r#"{"layers": ["double_blocks.0.img_attn.qkv"]}"#.to_string(),
    )]);
    safetensors::serialize_to_file(
        [("w", TensorView::new(Dtype::F32, vec![1], &bytes).unwrap())],
        Some(header),
        &path,
    )
    .unwrap();
    let err = videosdgx_engine::loader::Checkpoint::open_file(&path)
        .err()
        .expect("layers must be an object");
    let err = err.to_string();
    assert!(
        err.contains("listed.safetensors") && err.contains("_quantization_metadata"),
        "{err}"
    );
}

#[test]
fn models_verify_accepts_the_flux2_nvfp4_file() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("components/flux2-dev-tiny/model/config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    std::fs::copy(
        fixtures().join("components/flux2_nvfp4/flux2-dev-nvfp4.safetensors"),
        tmp.path().join("flux2-dev-nvfp4.safetensors"),
    )
    .unwrap();
    let report = videosdgx_engine::loader::verify(tmp.path()).unwrap();
    assert!(!report.components.is_empty());
    for component in &report.components {
        assert!(component.is_ok(), "{component:?}");
    }
}

/// ModelOpt's NVFP4 export of a language model (text/qwen3_nvfp4; its logits and greedy
/// generation are checked with the other language models in text_parity.rs).
#[test]
fn models_verify_accepts_a_modelopt_nvfp4_language_model() {
    let report =
        videosdgx_engine::loader::verify(&fixtures().join("text/qwen3_nvfp4/model")).unwrap();
    assert!(!report.components.is_empty());
    for component in &report.components {
        assert!(component.is_ok(), "{component:?}");
    }
}

/// `--quant nvfp4` on a language model reproduces ModelOpt's export of it (text/qwen3_nvfp4,
/// quantized by the same PyTorch port) byte for byte, and so its logits.
#[test]
fn quantizing_a_language_model_at_load_reproduces_its_modelopt_export() {
    use videosdgx_engine::text::decoder::{HiddenStates, Logits};
    use videosdgx_engine::text::model::{LanguageModel, ModelInput};
    let text = fixtures().join("text");
    let mut model =
        LanguageModel::load(&text.join("qwen3/model"), &Device::Cpu, DType::F32).unwrap();
    // Three layers of q, k, v, o, gate and up; down's input width (100) is not a multiple of 16.
    assert_eq!(model.quantize(Quant::Nvfp4).unwrap(), 18);
    let export =
        LanguageModel::load(&text.join("qwen3_nvfp4/model"), &Device::Cpu, DType::F32).unwrap();
    let inputs = tensors(&text.join("qwen3/forward_inputs.safetensors"));
    let input = ModelInput {
        input_ids: &inputs["input_ids"],
        attention_mask: inputs.get("attention_mask"),
        pixel_values: None,
        token_type_ids: None,
    };
    let logits = |m: &LanguageModel| {
        m.forward(&input, &HiddenStates::None, Logits::All)
            .unwrap()
            .logits
            .unwrap()
    };
    let (quantized, exported) = (logits(&model), logits(&export));
    let expected = &tensors(&text.join("qwen3_nvfp4/forward_outputs.safetensors"))["logits"];
    assert_eq!(values(&quantized), values(&exported), "the same weights");
    let err = relative_error(&quantized, expected).unwrap();
    assert!(err <= 1e-4, "relative error {err:e}");
}
