//! Quantizing a model's weights at load (`--quant fp8|nvfp4`): the formats a linear layer can keep
//! its weight in ([`super::fp8`], [`super::nvfp4`]) and the pass that converts a model's blocks.

use super::Linear;
use crate::lora::{Adaptable, Weight};
use candle_core::Result;
use serde::{Deserialize, Serialize};

/// A weight format a model's linear layers can be quantized to at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quant {
    /// float8 e4m3, one scale per output channel ([`super::fp8`]).
    Fp8,
    /// 4-bit e2m1 with an e4m3 scale per 16 values and one per tensor ([`super::nvfp4`]).
    Nvfp4,
}

impl std::fmt::Display for Quant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Quant::Fp8 => "FP8",
            Quant::Nvfp4 => "NVFP4",
        })
    }
}

/// Whether `linear` belongs to one of a model's repeated blocks (`blocks.N`,
/// `transformer_blocks.N`, `single_transformer_blocks.N`).
fn in_blocks(linear: &Linear) -> bool {
    linear
        .name()
        .split('.')
        .any(|part| part.ends_with("blocks"))
}

/// Bytes the linear layers of `model`'s repeated blocks take as stored: what
/// [`quantize_blocks`] shrinks.
pub fn block_weight_bytes(model: &mut dyn Adaptable) -> Result<usize> {
    let mut bytes = 0;
    model
        .visit_weights(&mut |weight| {
            if let Weight::Linear(linear) = weight
                && in_blocks(linear)
            {
                bytes += linear.stored_bytes();
            }
            Ok(())
        })
        .map_err(candle_core::Error::wrap)?;
    Ok(bytes)
}

/// Keeps every linear layer of `model`'s repeated blocks (`blocks.N`, `transformer_blocks.N`,
/// `single_transformer_blocks.N`: nearly all of a transformer's weights) in `quant`; the
/// embeddings, norms and output head stay as loaded, as do layers already quantized and, for
/// NVFP4, layers whose input width is not a multiple of its 16-value blocks. Layer by layer, so
/// memory peaks at the loaded model plus one layer. Returns how many layers were quantized.
pub fn quantize_blocks(model: &mut dyn Adaptable, quant: Quant) -> Result<usize> {
    let class = model.class_name();
    let mut layers = 0;
    let mut failed = None;
    model
        .visit_weights(&mut |weight| {
            if let Weight::Linear(linear) = weight
                && failed.is_none()
                && in_blocks(linear)
            {
                match linear.quantize(quant) {
                    Ok(true) => layers += 1,
                    Ok(false) => {}
                    Err(err) => {
                        failed = Some(candle_core::Error::msg(format!(
                            "quantizing {class} `{}` to {quant}: {err}",
                            linear.name()
                        )))
                    }
                }
            }
            Ok(())
        })
        .map_err(candle_core::Error::wrap)?;
    failed.map_or(Ok(layers), Err)
}
