//! Diffusers' `FeedForward` (`models/attention.py`) with a GELU projection: `net.0.proj`, the
//! activation, `net.2`. Wan's blocks and FLUX.1's double-stream blocks use it (`gelu-approximate`).

use super::{Activation, Linear, linear, linear_forward};
use crate::fused::profile::section;
use crate::lora::{LoraError, Visitor, Weight};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

pub(crate) struct FeedForward {
    proj: Linear,
    out: Linear,
    act: Activation,
}

impl FeedForward {
    pub(crate) fn new(
        dim: usize,
        inner: usize,
        out: usize,
        act: Activation,
        vb: VarBuilder,
    ) -> Result<Self> {
        Self::with_bias(dim, inner, out, act, true, vb)
    }

    /// `FeedForward(..., bias=bias)`: LTX-2.3's feed-forwards have no biases.
    pub(crate) fn with_bias(
        dim: usize,
        inner: usize,
        out: usize,
        act: Activation,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            proj: linear(dim, inner, bias, vb.pp("net").pp(0).pp("proj"))?,
            out: linear(inner, out, bias, vb.pp("net").pp(2))?,
            act,
        })
    }

    pub(crate) fn visit_weights(
        &mut self,
        f: &mut Visitor<'_>,
    ) -> std::result::Result<(), LoraError> {
        f(Weight::Linear(&mut self.proj))?;
        f(Weight::Linear(&mut self.out))
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dev = x.device();
        if self.act == Activation::GeluTanh
            && let Some(h) = section("ffn.proj+act", dev, || {
                crate::fused::linear(&self.proj, x, true, None)
            })?
        {
            return section("ffn.out", dev, || linear_forward(&self.out, &h, None));
        }
        let h = section("ffn.proj", dev, || self.proj.forward(x))?;
        let h = section("ffn.act", dev, || self.act.apply(&h))?;
        section("ffn.out", dev, || self.out.forward(&h))
    }
}
