//! Diffusers' adaptive norms (`models/normalization.py`) that the diffusion transformers share:
//! a parameter-free layer norm modulated by a linear projection of the conditioning embedding.
//! The modulation is applied in f32 ([`LayerNorm::forward_modulated`]).

use super::{LayerNorm, Linear, linear, linear_forward};
use crate::lora::{LoraError, Visitor, Weight};
use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

/// `linear(silu_emb)` (`[B, n * dim]`) split into `n` tensors of `[B, 1, dim]` in f32.
fn chunks(linear: &Linear, silu_emb: &Tensor, n: usize) -> Result<Vec<Tensor>> {
    let params = linear_forward(linear, silu_emb, None)?.to_dtype(DType::F32)?;
    let (b, width) = params.dims2()?;
    let dim = width / n;
    (0..n)
        .map(|i| params.narrow(1, i * dim, dim)?.reshape((b, 1, dim)))
        .collect()
}

/// `AdaLayerNormContinuous(dim, dim, elementwise_affine=False, eps, bias)`: the output norm of
/// the FLUX transformers, modulated by `linear(silu(temb))`, whose first half is the **scale** and
/// second the shift (the reverse of the blocks' order).
pub(crate) struct AdaLayerNormContinuous {
    linear: Linear,
    norm: LayerNorm,
}

impl AdaLayerNormContinuous {
    pub(crate) fn new(dim: usize, eps: f64, bias: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear: linear(dim, 2 * dim, bias, vb.pp("linear"))?,
            norm: LayerNorm::new(dim, eps, false, vb.pp("norm"))?,
        })
    }

    pub(crate) fn visit_weights(
        &mut self,
        f: &mut Visitor<'_>,
    ) -> std::result::Result<(), LoraError> {
        f(Weight::Linear(&mut self.linear))
    }

    pub(crate) fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let silu = temb.silu()?.to_dtype(x.dtype())?;
        let [scale, shift] = &chunks(&self.linear, &silu, 2)?[..] else {
            candle_core::bail!("AdaLayerNormContinuous: two chunks expected");
        };
        self.norm.forward_modulated(x, shift, scale)
    }
}

/// `AdaLayerNormZero` (6 chunks: shift, scale, gate of the attention, then of the MLP) and
/// `AdaLayerNormZeroSingle` (3 chunks), with the default `layer_norm` (no affine, eps 1e-6).
pub(crate) struct AdaLayerNormZero {
    linear: Linear,
    norm: LayerNorm,
    chunks: usize,
}

impl AdaLayerNormZero {
    /// `chunks` is 6 for `AdaLayerNormZero`, 3 for `AdaLayerNormZeroSingle`.
    pub(crate) fn new(dim: usize, chunks: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear: linear(dim, chunks * dim, true, vb.pp("linear"))?,
            norm: LayerNorm::new(dim, 1e-6, false, vb.pp("norm"))?,
            chunks,
        })
    }

    pub(crate) fn visit_weights(
        &mut self,
        f: &mut Visitor<'_>,
    ) -> std::result::Result<(), LoraError> {
        f(Weight::Linear(&mut self.linear))
    }

    /// `norm(x) * (1 + scale_msa) + shift_msa` and the remaining chunks after the first two
    /// (gate_msa, then shift_mlp, scale_mlp, gate_mlp for the 6-chunk form), each `[B, 1, dim]`
    /// in f32.
    pub(crate) fn forward(&self, x: &Tensor, emb: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let mut params = chunks(&self.linear, &emb.silu()?, self.chunks)?;
        let rest = params.split_off(2);
        let normed = self.norm.forward_modulated(x, &params[0], &params[1])?;
        Ok((normed, rest))
    }
}
