//! The one linear layer every model is built from: `x wᵀ + b`, plus the low-rank side paths that
//! LoRAs applied at run time add to it ([`crate::lora`]). It remembers the checkpoint name it was
//! loaded under, so that a LoRA key can find it. The fused dispatch points take it as it is; a
//! layer with side paths always runs the portable matmul, never a fused epilogue that would skip
//! them. Its weight is dense, float8 with a scale ([`Fp8Weight`]) or NVFP4 ([`Nvfp4Weight`]): a
//! quantized checkpoint's layers stay quantized in memory and are dequantized for each product.

use super::fp8::{FP8_SCALE_NAMES, Fp8Weight};
use super::nvfp4::{Nvfp4Layout, Nvfp4Weight};
use super::quant::Quant;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use std::borrow::Cow;

/// A low-rank side path `scale · (x downᵀ) upᵀ`: one LoRA applied at run time.
#[derive(Debug, Clone)]
pub struct LowRank {
    /// `[rank, in]`, in the layer's dtype.
    pub down: Tensor,
    /// `[out, rank]`, in the layer's dtype.
    pub up: Tensor,
    /// strength × alpha / rank.
    pub scale: f64,
}

impl LowRank {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = x.broadcast_matmul(&self.down.t()?)?;
        h.broadcast_matmul(&self.up.t()?)? * self.scale
    }
}

/// How a layer keeps its weight.
#[derive(Debug, Clone)]
enum Stored {
    Dense(Tensor),
    /// Float8 with its scale; products run in `dtype`, the model's.
    Fp8 {
        weight: Fp8Weight,
        dtype: DType,
    },
    /// NVFP4; products run in `dtype`, the model's.
    Nvfp4 {
        weight: Nvfp4Weight,
        dtype: DType,
    },
}

/// `nn.Linear` with its checkpoint name and optional low-rank side paths.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Stored,
    bias: Option<Tensor>,
    name: String,
    adapters: Vec<LowRank>,
}

/// `nn.Linear(in_dim, out_dim, bias)` with the checkpoint's `weight` (`[out, in]`) and `bias` under
/// the prefix of `vb`, which becomes the layer's name. A weight stored in NVFP4, or in float8
/// beside its scale, is kept so.
pub(crate) fn linear(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let fp8_scale = FP8_SCALE_NAMES.iter().find(|n| vb.contains_tensor(n));
    let weight = match (Nvfp4Layout::of(&vb), fp8_scale) {
        (Some(layout), _) => Stored::Nvfp4 {
            weight: Nvfp4Weight::load(layout, in_dim, out_dim, &vb).map_err(|err| {
                candle_core::Error::msg(format!("{} ({layout:?} NVFP4): {err}", vb.prefix()))
            })?,
            dtype: vb.dtype(),
        },
        (None, Some(scale_name)) => {
            let data = vb.get_with_hints_dtype(
                (out_dim, in_dim),
                "weight",
                candle_nn::Init::Const(0.),
                DType::F8E4M3,
            )?;
            let scale = vb.get_unchecked_dtype(scale_name, DType::F32)?;
            let weight = Fp8Weight::new(data, &scale).map_err(|err| {
                candle_core::Error::msg(format!("{}.{scale_name}: {err}", vb.prefix()))
            })?;
            Stored::Fp8 {
                weight,
                dtype: vb.dtype(),
            }
        }
        (None, None) => Stored::Dense(vb.get((out_dim, in_dim), "weight")?),
    };
    let bias = if bias {
        Some(vb.get(out_dim, "bias")?)
    } else {
        None
    };
    Ok(Linear {
        weight,
        bias,
        name: vb.prefix(),
        adapters: Vec::new(),
    })
}

impl Linear {
    /// The module path the weights were loaded from (`blocks.0.attn1.to_q`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The weight as the products use it: the dense tensor, or the quantized weight
    /// dequantized.
    pub fn weight(&self) -> Result<Cow<'_, Tensor>> {
        match &self.weight {
            Stored::Dense(w) => Ok(Cow::Borrowed(w)),
            Stored::Fp8 { weight, dtype } => weight.dequantize(*dtype).map(Cow::Owned),
            Stored::Nvfp4 { weight, dtype } => weight.dequantize(*dtype).map(Cow::Owned),
        }
    }

    /// The weight, where the layer keeps it dense.
    pub fn dense_weight(&self) -> Option<&Tensor> {
        match &self.weight {
            Stored::Dense(w) => Some(w),
            Stored::Fp8 { .. } | Stored::Nvfp4 { .. } => None,
        }
    }

    /// The FP8 weight, where the layer keeps one.
    pub fn fp8(&self) -> Option<&Fp8Weight> {
        match &self.weight {
            Stored::Fp8 { weight, .. } => Some(weight),
            Stored::Dense(_) | Stored::Nvfp4 { .. } => None,
        }
    }

    /// The NVFP4 weight, where the layer keeps one.
    pub fn nvfp4(&self) -> Option<&Nvfp4Weight> {
        match &self.weight {
            Stored::Nvfp4 { weight, .. } => Some(weight),
            Stored::Dense(_) | Stored::Fp8 { .. } => None,
        }
    }

    /// `[out, in]`.
    pub fn dims(&self) -> &[usize] {
        match &self.weight {
            Stored::Dense(w) => w.dims(),
            Stored::Fp8 { weight, .. } => weight.dims(),
            Stored::Nvfp4 { weight, .. } => weight.dims(),
        }
    }

    /// Bytes the weight and bias take in memory, as stored (codes and scales for a quantized
    /// weight).
    pub fn stored_bytes(&self) -> usize {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let weight = match &self.weight {
            Stored::Dense(w) => bytes(w),
            Stored::Fp8 { weight, .. } => bytes(weight.data()) + bytes(weight.scale()),
            Stored::Nvfp4 { weight, .. } => {
                bytes(weight.packed()) + bytes(weight.block_scales()) + bytes(weight.global())
            }
        };
        weight + self.bias.as_ref().map_or(0, bytes)
    }

    /// The dtype the layer computes in.
    pub fn dtype(&self) -> DType {
        match &self.weight {
            Stored::Dense(w) => w.dtype(),
            Stored::Fp8 { dtype, .. } | Stored::Nvfp4 { dtype, .. } => *dtype,
        }
    }

    pub fn device(&self) -> &Device {
        match &self.weight {
            Stored::Dense(w) => w.device(),
            Stored::Fp8 { weight, .. } => weight.data().device(),
            Stored::Nvfp4 { weight, .. } => weight.packed().device(),
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Keeps a dense weight in `quant` (`--quant`): float8 with one scale per output channel, or
    /// NVFP4 where the input width is a multiple of 16. Returns whether the layer changed; a
    /// quantized layer stays as it is.
    pub fn quantize(&mut self, quant: Quant) -> Result<bool> {
        let Stored::Dense(w) = &self.weight else {
            return Ok(false);
        };
        let dtype = w.dtype();
        self.weight = match quant {
            Quant::Fp8 => Stored::Fp8 {
                weight: Fp8Weight::quantize(w)?,
                dtype,
            },
            Quant::Nvfp4
                if w.dim(1)?
                    .is_multiple_of(videosdgx_kernels::reference::NVFP4_BLOCK) =>
            {
                Stored::Nvfp4 {
                    weight: Nvfp4Weight::quantize(w)?,
                    dtype,
                }
            }
            Quant::Nvfp4 => return Ok(false),
        };
        Ok(true)
    }

    /// The side paths added to the output, in the order they were attached.
    pub fn adapters(&self) -> &[LowRank] {
        &self.adapters
    }

    /// Replaces the weight with a dense one (same shape; a merged LoRA or the restored
    /// original).
    pub(crate) fn set_weight(&mut self, weight: Tensor) {
        self.weight = Stored::Dense(weight);
    }

    /// Replaces the bias (same shape).
    pub(crate) fn set_bias(&mut self, bias: Tensor) {
        self.bias = Some(bias);
    }

    pub(crate) fn set_adapters(&mut self, adapters: Vec<LowRank>) {
        self.adapters = adapters;
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let weight = self.weight()?.into_owned();
        let mut y = candle_nn::Linear::new(weight, self.bias.clone()).forward(x)?;
        for adapter in &self.adapters {
            y = (y + adapter.forward(x)?)?;
        }
        Ok(y)
    }
}
