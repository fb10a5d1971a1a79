//! Diffusers' timestep embeddings (`models/embeddings.py`), shared by the diffusion transformers:
//! the sinusoidal `Timesteps` projection and the `TimestepEmbedding` MLP.

use super::{Linear, apply_linear, linear};
use crate::lora::{LoraError, Visitor, Weight};
use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

/// `Timesteps(num_channels, flip_sin_to_cos=True, downscale_freq_shift=0)`: the features
/// `[cos | sin]` of each value of `timestep` (any shape; `channels` is appended), in f32 and
/// computed in f32 arithmetic as `get_timestep_embedding` does (max period 10000, zero-padded to
/// an odd `channels`).
pub(crate) fn timestep_features(timestep: &Tensor, channels: usize) -> Result<Tensor> {
    let dims = timestep.dims().to_vec();
    let values = timestep
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let half = channels / 2;
    let log_period = -(10000f64.ln() as f32);
    let freqs: Vec<f32> = (0..half)
        .map(|i| (log_period * i as f32 / half as f32).exp())
        .collect();
    let mut out = Vec::with_capacity(values.len() * channels);
    for t in values {
        out.extend(freqs.iter().map(|f| (t * f).cos()));
        out.extend(freqs.iter().map(|f| (t * f).sin()));
        if channels % 2 == 1 {
            out.push(0.0);
        }
    }
    let mut shape = dims;
    shape.push(channels);
    Tensor::from_vec(out, shape, timestep.device())
}

/// `TimestepEmbedding` with its default SiLU: `linear_2(silu(linear_1(x)))`. The input is cast to
/// the weights' dtype, which may be f32 where a model keeps the embedder in f32 (Wan).
pub(crate) struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    /// `bias` is the reference's `sample_proj_bias`.
    pub(crate) fn new(in_channels: usize, dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear_1: linear(in_channels, dim, bias, vb.pp("linear_1"))?,
            linear_2: linear(dim, dim, bias, vb.pp("linear_2"))?,
        })
    }

    pub(crate) fn visit_weights(
        &mut self,
        f: &mut Visitor<'_>,
    ) -> std::result::Result<(), LoraError> {
        f(Weight::Linear(&mut self.linear_1))?;
        f(Weight::Linear(&mut self.linear_2))
    }

    /// In the weights' dtype.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = apply_linear(&self.linear_1, x)?.silu()?;
        apply_linear(&self.linear_2, &h)
    }
}
