//! Neural network components, one file per model family, each built from its reference config
//! (`Config` fields carry the reference's names) and a `VarBuilder` whose prefixes spell the
//! checkpoint keys. This module holds the few building blocks they share; it must never read files
//! (the loader does) nor pick devices or dtypes (callers do).

pub mod alias_free;
pub mod autoencoder_kl;
pub mod clip_text;
pub mod clip_vision;
pub mod conv;
pub mod conv1d;
pub(crate) mod embeddings;
pub(crate) mod feed_forward;
pub mod fp8;
mod group_norm;
pub(crate) mod joint_attention;
mod linear;
pub(crate) mod normalization;
pub mod nvfp4;
pub mod pixel_shuffle;
pub mod quant;
pub(crate) mod rope;
pub mod t5;
pub(crate) mod vit;

pub(crate) use group_norm::GroupNorm;
pub(crate) use linear::linear;
pub use linear::{Linear, LowRank};

use crate::lora::{LoraError, Visitor, Weight};
use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// `x w^T + b`, plus `residual` when given, through the fused dispatch point where it covers the
/// inputs (one cuBLASLt matmul with the bias and the residual in its epilogue, on CUDA bf16),
/// else the layer's own forward (with its side paths).
pub(crate) fn linear_forward(
    layer: &Linear,
    x: &Tensor,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    if let Some(y) = crate::fused::linear(layer, x, false, residual)? {
        return Ok(y);
    }
    let y = layer.forward(x)?;
    match residual {
        Some(r) => y + r,
        None => Ok(y),
    }
}

/// `x + y * gate` computed in f32 (`gate` f32, broadcasting against `y`), cast back to the dtype
/// of `x`: the gated residual of adaLN-modulated blocks, one fused pass where a kernel covers it.
pub(crate) fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    if let Some(out) = crate::fused::gated_residual(x, y, gate)? {
        return Ok(out);
    }
    x.to_dtype(DType::F32)?
        .add(&y.to_dtype(DType::F32)?.broadcast_mul(gate)?)?
        .to_dtype(x.dtype())
}

/// Clamps to the f16 range where the stream is f16, as the FLUX transformers do after each block.
pub(crate) fn clip_f16(x: Tensor) -> Result<Tensor> {
    if x.dtype() == DType::F16 {
        x.clamp(-65504f32, 65504f32)
    } else {
        Ok(x)
    }
}

/// Applies a linear layer whose weights may be kept in another dtype than the activations
/// (`_keep_in_fp32_modules`): the input is cast to the weights' dtype first, as PyTorch would
/// require.
pub(crate) fn apply_linear(layer: &Linear, x: &Tensor) -> Result<Tensor> {
    layer.forward(&x.to_dtype(layer.dtype())?)
}

/// Layer normalisation over the last dimension computed in f32, like diffusers' `FP32LayerNorm`;
/// returns the input dtype. `affine = false` is `elementwise_affine=False` (no checkpoint tensors).
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    eps: f64,
    /// The checkpoint prefix of `weight` and `bias`.
    name: String,
}

impl LayerNorm {
    pub(crate) fn new(dim: usize, eps: f64, affine: bool, vb: VarBuilder) -> Result<Self> {
        let (weight, bias) = if affine {
            (Some(vb.get(dim, "weight")?), Some(vb.get(dim, "bias")?))
        } else {
            (None, None)
        };
        Ok(Self {
            weight,
            bias,
            eps,
            name: vb.prefix(),
        })
    }

    /// Its learned tensors, for LoRA.
    pub(crate) fn visit_weights(
        &mut self,
        f: &mut Visitor<'_>,
    ) -> std::result::Result<(), LoraError> {
        for (leaf, tensor) in [("weight", &mut self.weight), ("bias", &mut self.bias)] {
            if let Some(tensor) = tensor {
                f(Weight::Tensor {
                    name: format!("{}.{leaf}", self.name),
                    tensor,
                })?;
            }
        }
        Ok(())
    }

    /// The normalised tensor in f32 (callers that keep modulation in f32 use this directly).
    pub(crate) fn forward_f32(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let mut y = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        if let Some(w) = &self.weight {
            y = y.broadcast_mul(&w.to_dtype(DType::F32)?)?;
        }
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&b.to_dtype(DType::F32)?)?;
        }
        Ok(y)
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.fused(x, None, None)? {
            return Ok(y);
        }
        self.forward_f32(x)?.to_dtype(x.dtype())
    }

    /// `norm(x) * (1 + scale) + shift` in f32, cast back to the dtype of `x`; `shift`/`scale`
    /// broadcast against `x` (`[B, 1, D]` per sample, `[B, L, D]` per token).
    pub(crate) fn forward_modulated(
        &self,
        x: &Tensor,
        shift: &Tensor,
        scale: &Tensor,
    ) -> Result<Tensor> {
        if let Some(y) = self.fused(x, Some(shift), Some(scale))? {
            return Ok(y);
        }
        self.forward_f32(x)?
            .broadcast_mul(&(scale + 1.0)?)?
            .broadcast_add(shift)?
            .to_dtype(x.dtype())
    }

    /// The fused kernel's result where one covers the inputs (CUDA bf16), else `None`.
    fn fused(
        &self,
        x: &Tensor,
        shift: Option<&Tensor>,
        scale: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        crate::fused::modulated_norm(
            x,
            crate::fused::Norm::Layer,
            self.eps,
            crate::fused::Modulation {
                weight: self.weight.as_ref(),
                bias: self.bias.as_ref(),
                scale,
                shift,
                rope: None,
            },
        )
    }
}

/// `x / sqrt(mean(x², axis) + eps)` in f32, without a scale: an RMS norm along any one axis (the
/// channels of pixel norms, the hidden axis of stacked per-layer states).
pub(crate) fn rms_normalize(x: &Tensor, axis: usize, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let mean_sq = x.sqr()?.mean_keepdim(axis)?;
    x.broadcast_div(&(mean_sq + eps)?.sqrt()?)
}

/// `torch.nn.RMSNorm` with a learned scale, computed in f32 and returned in the input dtype.
#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f32,
    /// The checkpoint name of `weight`; `None` where `weight` is not the checkpoint's tensor
    /// (Gemma's `1 + weight`), which LoRAs then leave alone.
    name: Option<String>,
}

impl RmsNorm {
    pub(crate) fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps: eps as f32,
            name: Some(format!("{}.weight", vb.prefix())),
        })
    }

    /// `torch.nn.RMSNorm(dim, eps, elementwise_affine=False)`: no checkpoint tensor, a scale of
    /// ones (so the fused kernel serves it too), which LoRAs leave alone.
    pub(crate) fn without_affine(
        dim: usize,
        eps: f64,
        device: &candle_core::Device,
    ) -> Result<Self> {
        Ok(Self {
            weight: Tensor::ones(dim, DType::F32, device)?,
            eps: eps as f32,
            name: None,
        })
    }

    /// Gemma's RMS norm, scaled by `1 + weight` in f32 (the reference rounds once, after the
    /// scale); the sum is taken once at load and kept in f32.
    pub(crate) fn gemma(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: (vb.get(dim, "weight")?.to_dtype(DType::F32)? + 1.0)?,
            eps: eps as f32,
            name: None,
        })
    }

    /// Its learned scale, for LoRA.
    pub(crate) fn visit_weights(
        &mut self,
        f: &mut Visitor<'_>,
    ) -> std::result::Result<(), LoraError> {
        match &self.name {
            Some(name) => f(Weight::Tensor {
                name: name.clone(),
                tensor: &mut self.weight,
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let fused = crate::fused::modulated_norm(
            x,
            crate::fused::Norm::Rms,
            f64::from(self.eps),
            crate::fused::Modulation {
                weight: Some(&self.weight),
                ..Default::default()
            },
        )?;
        if let Some(y) = fused {
            return Ok(y);
        }
        let y = candle_nn::ops::rms_norm(
            &x.to_dtype(DType::F32)?.contiguous()?,
            &self.weight.to_dtype(DType::F32)?,
            self.eps,
        )?;
        y.to_dtype(x.dtype())
    }

    /// `forward(x)` with Wan's 3-D RoPE of each `head_dim` slice over the token `grid`, where
    /// one fused kernel does both (CUDA bf16); `None` otherwise.
    pub(crate) fn forward_rope(
        &self,
        x: &Tensor,
        grid: [usize; 3],
        head_dim: usize,
    ) -> Result<Option<Tensor>> {
        crate::fused::rms_norm_rope(x, &self.weight, f64::from(self.eps), grid, head_dim)
    }

    /// The norm of each head of `x` `[B, L, H, D]` (this norm's dim is `D`), then the rotary
    /// embedding of the tables `cos`/`sin` `[L, D / 2]` ([`rope::apply_interleaved`]), where one
    /// fused kernel does both (CUDA bf16); `None` otherwise.
    pub(crate) fn forward_heads_rope(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Option<Tensor>> {
        crate::fused::rms_norm_rope_tables(x, &self.weight, f64::from(self.eps), cos, sin)
    }

    /// The norm of each whole row of `x` `[B, L, D]` (across its heads), then the rotary `pairs`
    /// of the tables `cos`/`sin` `[L or B·L, D / 2]`, where one fused kernel does both (CUDA
    /// bf16); `None` otherwise.
    pub(crate) fn forward_rotary(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        pairs: videosdgx_kernels::RotaryPairs,
    ) -> Result<Option<Tensor>> {
        crate::fused::rms_norm_rotary(x, &self.weight, f64::from(self.eps), cos, sin, pairs)
    }
}

/// Activation functions by the names transformers' `ACT2FN` and diffusers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU: `gelu`.
    Gelu,
    /// Tanh-approximated GELU: `gelu_new`, `gelu_pytorch_tanh`, `gelu-approximate`.
    GeluTanh,
    /// `x * sigmoid(1.702 x)`: `quick_gelu` (OpenAI CLIP).
    QuickGelu,
    Relu,
    Silu,
}

impl Activation {
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "gelu-approximate" => Self::GeluTanh,
            "quick_gelu" => Self::QuickGelu,
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            _ => return None,
        })
    }

    pub(crate) fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Gelu => x.gelu_erf(),
            Self::GeluTanh => x.gelu(),
            Self::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Self::Relu => x.relu(),
            Self::Silu => x.silu(),
        }
    }
}

/// Relative error ‖a − b‖ / ‖b‖ in f64, the metric of the parity tests and `model forward` checks.
pub fn relative_error(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    let diff = (a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let norm = b.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(if norm == 0.0 { diff } else { diff / norm })
}
