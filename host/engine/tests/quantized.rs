//! Quantized weights on the tiny Wan transformer of tests/fixtures/components/wan_t2v: FP8
//! (make_fp8_fixtures.py) and NVFP4 (make_nvfp4_fixtures.py) checkpoints and `--quant` at load.

#[path = "quantized/fp8.rs"]
mod fp8;
#[path = "quantized/nvfp4.rs"]
mod nvfp4;

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use videosdgx_engine::families::wan::transformer::WanTransformer3DModel;

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
