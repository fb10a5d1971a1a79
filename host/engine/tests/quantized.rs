//! Quantized weights on the tiny Wan transformer of tests/fixtures/components/wan_t2v: FP8
//! (make_fp8_fixtures.py) and NVFP4 (make_nvfp4_fixtures.py) checkpoints and `--quant` at load.

#[path = "quantized/fp8.rs"]
mod fp8;
#[path = "quantized/nvfp4.rs"]
mod nvfp4;

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use videosdgx_engine::families::wan::transformer::WanTransformer3DModel;
use videosdgx_engine::lora::{Adaptable, Lora, LoraFile, LoraMode};
use videosdgx_engine::models::quant::{Quant, quantize_blocks};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn load(dir: &Path) -> WanTransformer3DModel {
    WanTransformer3DModel::load(dir, &Device::Cpu, DType::F32).unwrap()
}

/// The transformer's `sample` on the inputs in `inputs`.
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

/// wan_t2v's inputs, on which every quantized fixture's reference ran.
fn component_inputs() -> PathBuf {
    fixtures().join("components/wan_t2v/inputs.safetensors")
}

/// The tiny Wan T2V transformer quantized to `quant`, and its outputs on the LoRA fixtures'
/// inputs without a LoRA, with the PEFT LoRA (strength 0.8) merged, and with it at run time.
fn with_a_lora(quant: Quant) -> (WanTransformer3DModel, [Tensor; 3]) {
    let inputs = fixtures().join("lora/inputs_t2v.safetensors");
    let peft = Lora {
        file: Arc::new(LoraFile::open(&fixtures().join("lora/peft.safetensors")).unwrap()),
        strength: 0.8,
    };
    let mut model = load(&fixtures().join("tiny-wan-t2v/transformer"));
    assert!(quantize_blocks(&mut model, quant).unwrap() > 0);
    let plain = forward(&model, &inputs);
    model
        .set_loras(std::slice::from_ref(&peft), LoraMode::Merge)
        .unwrap();
    let merged = forward(&model, &inputs);
    model.set_loras(&[peft], LoraMode::Runtime).unwrap();
    let runtime = forward(&model, &inputs);
    (model, [plain, merged, runtime])
}

/// Float8 attention runs only on a Hopper GPU in bf16, and only for Wan: elsewhere a pipeline
/// declines it and says so, so that the record carries what ran.
#[test]
fn fp8_attention_is_declined_where_it_cannot_run() {
    use videosdgx_engine::pipelines::{AttentionPrecision, Pipeline};
    for (pipeline, dtype) in [
        ("tiny-wan-t2v", DType::F32),
        ("tiny-wan-t2v", DType::BF16),
        ("tiny-flux2-klein", DType::F32),
    ] {
        let mut pipeline = Pipeline::open(&fixtures().join(pipeline), &Device::Cpu, dtype).unwrap();
        assert_eq!(
            pipeline.set_attention_precision(AttentionPrecision::Fp8),
            AttentionPrecision::Exact,
            "{dtype:?}"
        );
        assert_eq!(
            pipeline.set_attention_precision(AttentionPrecision::Exact),
            AttentionPrecision::Exact
        );
    }
}
