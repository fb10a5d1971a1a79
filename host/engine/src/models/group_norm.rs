//! `torch.nn.GroupNorm` with a learned per-channel affine, for the image models built from
//! diffusers' 2-D blocks. candle_nn has one, but it rounds the normalised tensor to the input dtype
//! before the affine; PyTorch computes statistics, normalisation and affine in f32 and rounds once,
//! which this one reproduces so that half-precision runs stay close to the reference.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub(crate) struct GroupNorm {
    /// `[1, channels, 1, ...]` in f32, shaped for the input's rank at each call.
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// Reads `weight` and `bias` `[channels]` under `vb`; `groups` must divide `channels`.
    pub(crate) fn new(channels: usize, groups: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!(
                "GroupNorm {}: {groups} groups do not divide {channels} channels",
                vb.prefix()
            );
        }
        Ok(Self {
            weight: vb.get(channels, "weight")?.to_dtype(DType::F32)?,
            bias: vb.get(channels, "bias")?.to_dtype(DType::F32)?,
            groups,
            eps,
        })
    }

    /// Normalises `x` `[batch, channels, ...]` over each group of channels and every position;
    /// returns the input dtype.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, false)
    }

    /// [`GroupNorm::forward`] then SiLU, fused on CUDA (the resnets' `norm -> act -> conv`).
    pub(crate) fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, true)
    }

    fn forward_with(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if let Some(y) =
            crate::fused::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, silu)?
        {
            return Ok(y);
        }
        let y = self.portable(x)?;
        if silu { y.silu() } else { Ok(y) }
    }

    fn portable(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        if dims.len() < 2 || dims[1] != self.weight.elem_count() {
            candle_core::bail!(
                "GroupNorm over {} channels got a tensor of shape {dims:?}",
                self.weight.elem_count()
            );
        }
        let grouped = x
            .to_dtype(DType::F32)?
            .reshape((dims[0], self.groups, ()))?;
        let mean = grouped.mean_keepdim(2)?;
        let centered = grouped.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(2)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let mut affine_shape = vec![1; dims.len()];
        affine_shape[1] = dims[1];
        normed
            .reshape(dims)?
            .broadcast_mul(&self.weight.reshape(affine_shape.clone())?)?
            .broadcast_add(&self.bias.reshape(affine_shape)?)?
            .to_dtype(x.dtype())
    }
}
