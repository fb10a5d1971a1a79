//! Rotary position embedding over several position axes with interleaved pairs, the math of
//! diffusers' `get_1d_rotary_pos_embed(use_real=True, repeat_interleave_real=True)` per axis,
//! concatenated over the axes, and `apply_rotary_emb(use_real_unbind_dim=-1)`. Wan's 3-D RoPE
//! (frame, row, column; theta 10000) and FLUX.2's 4-axis one (`Flux2PosEmbed`) are both this with
//! other axes, positions and theta.

use candle_core::{DType, Device, Result, Tensor};

/// `cos` and `sin` tables of shape `[tokens, Σ axes_dims / 2]` (f32, one angle per interleaved
/// pair). `positions` holds one row of `axes_dims.len()` positions per token; token `t` gets, for
/// each axis `a` in order, the angles `positions[t][a] · theta^(-2j / axes_dims[a])` for
/// `j < axes_dims[a] / 2`, computed in f64 as the reference does and rounded once to f32.
pub(crate) fn rope_tables(
    positions: &[f64],
    axes_dims: &[usize],
    theta: f64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let axes = axes_dims.len();
    if axes == 0 || !positions.len().is_multiple_of(axes) {
        candle_core::bail!(
            "rotary positions: {} values do not make rows of {axes} axes",
            positions.len()
        );
    }
    let freqs: Vec<Vec<f64>> = axes_dims
        .iter()
        .map(|&dim| {
            (0..dim / 2)
                .map(|j| 1.0 / theta.powf((2 * j) as f64 / dim as f64))
                .collect()
        })
        .collect();
    let half: usize = freqs.iter().map(Vec::len).sum();
    let tokens = positions.len() / axes;
    let mut cos = Vec::with_capacity(tokens * half);
    let mut sin = Vec::with_capacity(tokens * half);
    for row in positions.chunks_exact(axes) {
        for (pos, axis_freqs) in row.iter().zip(&freqs) {
            for freq in axis_freqs {
                let angle = pos * freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (tokens, half), device)?,
        Tensor::from_vec(sin, (tokens, half), device)?,
    ))
}

/// Rotates the interleaved pairs `(x[2j], x[2j+1])` of every head of `x` (`[B, L, H, D]`) by the
/// angles whose `cos`/`sin` are `[L, D / 2]`, in f32; returns the dtype of `x`.
pub(crate) fn apply_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, l, h, d) = x.dims4()?;
    if cos.dims() != [l, d / 2] || sin.dims() != [l, d / 2] {
        candle_core::bail!(
            "rotary tables of shape {:?} do not fit {l} tokens of head dim {d}",
            cos.dims()
        );
    }
    if let Some(y) = crate::fused::rope_tables(x, cos, sin)? {
        return Ok(y);
    }
    let pairs = x.to_dtype(DType::F32)?.reshape((b, l, h, d / 2, 2))?;
    let x1 = pairs.narrow(4, 0, 1)?.squeeze(4)?;
    let x2 = pairs.narrow(4, 1, 1)?.squeeze(4)?;
    let cos = cos.reshape((1, l, 1, d / 2))?;
    let sin = sin.reshape((1, l, 1, d / 2))?;
    let even = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let odd = (x1.broadcast_mul(&sin)? + x2.broadcast_mul(&cos)?)?;
    Tensor::stack(&[even, odd], 4)?
        .reshape((b, l, h, d))?
        .to_dtype(x.dtype())
}
