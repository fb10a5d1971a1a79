//! The one linear layer every model is built from: `x wᵀ + b`, plus the low-rank side paths that
//! LoRAs applied at run time add to it ([`crate::lora`]). It remembers the checkpoint name it was
//! loaded under, so that a LoRA key can find it. The fused dispatch points take it as it is; a
//! layer with side paths always runs the portable matmul, never a fused epilogue that would skip
//! them.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

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

/// `nn.Linear` with its checkpoint name and optional low-rank side paths.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
    name: String,
    adapters: Vec<LowRank>,
}

/// `nn.Linear(in_dim, out_dim, bias)` with the checkpoint's `weight` (`[out, in]`) and `bias` under
/// the prefix of `vb`, which becomes the layer's name.
pub(crate) fn linear(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = if bias {
        Some(vb.get(out_dim, "bias")?)
    } else {
        None
    };
    Ok(Linear {
        inner: candle_nn::Linear::new(weight, bias),
        name: vb.prefix(),
        adapters: Vec::new(),
    })
}

impl Linear {
    /// The module path the weights were loaded from (`blocks.0.attn1.to_q`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }

    /// The side paths added to the output, in the order they were attached.
    pub fn adapters(&self) -> &[LowRank] {
        &self.adapters
    }

    /// Replaces the weight (same shape; a merged LoRA or the restored original).
    pub(crate) fn set_weight(&mut self, weight: Tensor) {
        self.inner = candle_nn::Linear::new(weight, self.inner.bias().cloned());
    }

    /// Replaces the bias (same shape).
    pub(crate) fn set_bias(&mut self, bias: Tensor) {
        self.inner = candle_nn::Linear::new(self.inner.weight().clone(), Some(bias));
    }

    pub(crate) fn set_adapters(&mut self, adapters: Vec<LowRank>) {
        self.adapters = adapters;
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = self.inner.forward(x)?;
        for adapter in &self.adapters {
            y = (y + adapter.forward(x)?)?;
        }
        Ok(y)
    }
}
