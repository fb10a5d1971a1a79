//! CPU references: the plain, obviously-right versions of what each CUDA kernel computes, in f32
//! with candle's ordinary ops. They define correctness for the GPU checks and run in CI; they are
//! never used as a silent stand-in for a kernel on the GPU.

use crate::spec::{
    Activation, CausalMask, ChannelDivisor, ChannelSlot, Epilogue, FrameConv, FramePadding,
    NormKind, NormSpec, RopeGrid, RotaryPairs, SpatialPad,
};
use candle_core::{D, DType, Result, Tensor, bail};

/// Multi-head attention, non-causal: `softmax(q k^T * softmax_scale) v` per (batch, head).
///
/// `q [B, Lq, H, Dh]`, `k`/`v [B, Lk, H, Dh]`; returns f32 `[B, Lq, H, Dh]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, softmax_scale: f32) -> Result<Tensor> {
    let (b, lq, h, d) = q.dims4()?;
    let (kb, _, kh, kd) = k.dims4()?;
    if (kb, kh, kd) != (b, h, d) || v.dims() != k.dims() {
        bail!(
            "attention shapes disagree: q {:?}, k {:?}, v {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let heads_first = |t: &Tensor| t.to_dtype(DType::F32)?.transpose(1, 2)?.contiguous();
    let (q, k, v) = (heads_first(q)?, heads_first(k)?, heads_first(v)?);
    let scores = (q.matmul(&k.t()?)? * f64::from(softmax_scale))?;
    let scores = scores
        .broadcast_sub(&scores.max_keepdim(D::Minus1)?)?
        .exp()?;
    let probs = scores.broadcast_div(&scores.sum_keepdim(D::Minus1)?)?;
    let out = probs.matmul(&v)?;
    debug_assert_eq!(out.dims(), [b, h, lq, d]);
    out.transpose(1, 2)?.contiguous()
}

/// A language model's causal attention, `softmax(q k^T * softmax_scale + mask) v`, with
/// grouped key/value heads: query head `h` reads key/value head `h / (H / Hkv)`.
///
/// `q [B, Lq, H, Dh]`, `k`/`v [B, Lk, Hkv, Dh]`; returns f32 `[B, Lq, H, Dh]`. Which keys each
/// query sees is `mask`'s rule ([`CausalMask::visible`]); a query that sees none averages every key.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    softmax_scale: f32,
    mask: &CausalMask,
) -> Result<Tensor> {
    let groups = mask.check_operands(q, k, v)?;
    let (b, lq, h, _) = q.dims4()?;
    let lk = k.dim(1)?;
    let heads_first = |t: &Tensor| t.to_dtype(DType::F32)?.transpose(1, 2)?.contiguous();
    let kv_of_head: Vec<u32> = (0..h).map(|i| (i / groups) as u32).collect();
    let kv_of_head = Tensor::new(kv_of_head, q.device())?;
    let (q, k, v) = (
        heads_first(q)?,
        heads_first(k)?.index_select(&kv_of_head, 1)?,
        heads_first(v)?.index_select(&kv_of_head, 1)?,
    );
    // Visible keys keep their score, the others get -inf; a row that sees none gets all zeros.
    let (mut keep, mut bias) = (Vec::with_capacity(b * lq), Vec::with_capacity(b * lq * lk));
    for seq in 0..b {
        for row in 0..lq {
            let visible = mask.visible(seq, row, lk);
            keep.push(if visible.is_some() { 1f32 } else { 0.0 });
            bias.extend((0..lk).map(|key| match visible {
                Some((lo, hi)) if !(lo..=hi).contains(&key) => f32::NEG_INFINITY,
                _ => 0.0,
            }));
        }
    }
    let keep = Tensor::from_vec(keep, (b, 1, lq, 1), q.device())?;
    let bias = Tensor::from_vec(bias, (b, 1, lq, lk), q.device())?;
    let scores = (q.matmul(&k.t()?)? * f64::from(softmax_scale))?
        .broadcast_mul(&keep)?
        .broadcast_add(&bias)?;
    let scores = scores
        .broadcast_sub(&scores.max_keepdim(D::Minus1)?)?
        .exp()?;
    let probs = scores.broadcast_div(&scores.sum_keepdim(D::Minus1)?)?;
    probs.matmul(&v)?.transpose(1, 2)?.contiguous()
}

/// The normalisation and modulation described by `spec`, over the last dim of `x [B, L, D]`;
/// returns f32 `[B, L, D]`.
pub fn modulated_norm(x: &Tensor, spec: &NormSpec) -> Result<Tensor> {
    spec.validate(x)?;
    let x = x.to_dtype(DType::F32)?;
    let centred = match spec.kind {
        NormKind::Layer => x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?,
        NormKind::Rms => x,
    };
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let mut n = centred.broadcast_div(&(var + spec.eps)?.sqrt()?)?;
    let f32_of = |t: &Tensor| t.to_dtype(DType::F32);
    // Per-sample modulation [B, D] applies to every token: give it a sequence axis of 1.
    let per_token = |t: &Tensor| -> Result<Tensor> {
        let t = f32_of(t)?;
        if t.rank() == 2 { t.unsqueeze(1) } else { Ok(t) }
    };
    if let Some(w) = &spec.weight {
        n = n.broadcast_mul(&f32_of(w)?)?;
    }
    if let Some(bias) = &spec.bias {
        n = n.broadcast_add(&f32_of(bias)?)?;
    }
    if let Some(scale) = &spec.scale {
        n = n.broadcast_mul(&(per_token(scale)? + 1.0)?)?;
    }
    if let Some(shift) = &spec.shift {
        n = n.broadcast_add(&per_token(shift)?)?;
    }
    if let Some(rope) = &spec.rope {
        let (b, l, d) = n.dims3()?;
        let heads = (b, l, d / rope.head_dim, rope.head_dim);
        n = rope3d(&n.reshape(heads)?, rope.grid, rope.theta)?.reshape((b, l, d))?;
    }
    Ok(n)
}

/// Wan's gated residual `x + y * gate` over `[B, L, D]`, `gate` `[B, D]` (per sample) or
/// `[B, L, D]` (per token); returns f32 `[B, L, D]`.
pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    crate::spec::validate_gated_residual(x, y, gate)?;
    let gate = gate.to_dtype(DType::F32)?;
    let gate = if gate.rank() == 2 {
        gate.unsqueeze(1)?
    } else {
        gate
    };
    x.to_dtype(DType::F32)? + y.to_dtype(DType::F32)?.broadcast_mul(&gate)?
}

/// Per-token rotation angles of Wan's 3-D RoPE, `[L, Dh/2]` f32 as (cos, sin), computed in f64.
pub fn rope3d_tables(grid: RopeGrid, head_dim: usize, theta: f64) -> Result<(Tensor, Tensor)> {
    let (t_dim, hw_dim) = RopeGrid::split(head_dim);
    let pairs = head_dim / 2;
    let mut cos = Vec::with_capacity(grid.tokens() * pairs);
    let mut sin = Vec::with_capacity(grid.tokens() * pairs);
    for f in 0..grid.frames {
        for y in 0..grid.height {
            for x in 0..grid.width {
                for j in 0..pairs {
                    let (pos, i, n) = if 2 * j < t_dim {
                        (f, j, t_dim)
                    } else if 2 * j < t_dim + hw_dim {
                        (y, j - t_dim / 2, hw_dim)
                    } else {
                        (x, j - (t_dim + hw_dim) / 2, hw_dim)
                    };
                    let angle = pos as f64 * theta.powf(-((2 * i) as f64) / n as f64);
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
    }
    let shape = (grid.tokens(), pairs);
    let dev = &candle_core::Device::Cpu;
    Ok((
        Tensor::from_vec(cos, shape, dev)?,
        Tensor::from_vec(sin, shape, dev)?,
    ))
}

/// Wan's 3-D RoPE on `x [B, L, H, Dh]` with `L = grid.tokens()`: each adjacent pair
/// `(x[2j], x[2j+1])` rotates by its token's angle; returns f32 `[B, L, H, Dh]`.
pub fn rope3d(x: &Tensor, grid: RopeGrid, theta: f64) -> Result<Tensor> {
    let (b, l, h, d) = grid.validate(x)?;
    let (cos, sin) = rope3d_tables(grid, d, theta)?;
    let (cos, sin) = (
        cos.to_device(x.device())?.reshape((1, l, 1, d / 2))?,
        sin.to_device(x.device())?.reshape((1, l, 1, d / 2))?,
    );
    let pairs = x.to_dtype(DType::F32)?.reshape((b, l, h, d / 2, 2))?;
    let x0 = pairs.narrow(4, 0, 1)?.squeeze(4)?;
    let x1 = pairs.narrow(4, 1, 1)?.squeeze(4)?;
    let out0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
    let out1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
    Tensor::stack(&[out0, out1], 4)?.reshape((b, l, h, d))
}

/// `x w^T + bias`, then GELU (tanh approximation) when `gelu`: `x [.., K]`, `weight [N, K]`,
/// `bias [N]`; returns f32 `[.., N]`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, gelu: bool) -> Result<Tensor> {
    let (n, k) = weight.dims2()?;
    let mut dims = x.dims().to_vec();
    let rows = x.elem_count() / k;
    let x = x.to_dtype(DType::F32)?.reshape((rows, k))?;
    let mut y = x.matmul(&weight.to_dtype(DType::F32)?.t()?)?;
    if let Some(b) = bias {
        y = y.broadcast_add(&b.to_dtype(DType::F32)?)?;
    }
    if gelu {
        y = y.gelu()?;
    }
    *dims.last_mut().expect("x has a last dim") = n;
    y.reshape(dims)
}

/// The VAEs' channel RMS norm: `x / divisor * scale` over dim `channel_dim` (`scale` `[C]`), then
/// SiLU when `silu`; returns f32 in the shape of `x`.
pub fn channel_rms_norm(
    x: &Tensor,
    scale: &Tensor,
    channel_dim: usize,
    divisor: ChannelDivisor,
    silu: bool,
) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let c = x.dim(channel_dim)?;
    let mut shape = vec![1; x.rank()];
    shape[channel_dim] = c;
    let norm = match divisor {
        ChannelDivisor::L2 => x.sqr()?.sum_keepdim(channel_dim)?.sqrt()?.maximum(1e-12)?,
        ChannelDivisor::Rms { eps } => (x.sqr()?.mean_keepdim(channel_dim)? + eps)?.sqrt()?,
    };
    let y = x
        .broadcast_div(&norm)?
        .broadcast_mul(&scale.to_dtype(DType::F32)?.reshape(shape)?)?;
    if silu { y.silu() } else { Ok(y) }
}

/// `torch.nn.GroupNorm(groups, C, eps)` over `x` `[B, C, ...]` in f32, then SiLU when `silu`:
/// what [`crate::group_norm`] computes on CUDA.
pub fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let grouped = x.to_dtype(DType::F32)?.reshape((dims[0], groups, ()))?;
    let centered = grouped.broadcast_sub(&grouped.mean_keepdim(2)?)?;
    let var = centered.sqr()?.mean_keepdim(2)?;
    let mut shape = vec![1; dims.len()];
    shape[1] = dims[1];
    let y = centered
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .reshape(dims)?
        .broadcast_mul(&weight.to_dtype(DType::F32)?.reshape(shape.clone())?)?
        .broadcast_add(&bias.to_dtype(DType::F32)?.reshape(shape)?)?;
    if silu { y.silu() } else { Ok(y) }
}

/// `torch.nn.RMSNorm(D, eps)` of every head of `x` `[B, L, H, D]` (times `weight` `[D]` when
/// given), then the rotary embedding of the interleaved pairs `(x[2j], x[2j+1])` by the angles
/// whose `cos`/`sin` are `[L, D / 2]`, in f32: what [`crate::rms_norm_rope`] computes on CUDA.
pub fn rms_norm_rope(
    x: &Tensor,
    weight: Option<&Tensor>,
    cos: &Tensor,
    sin: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let (b, l, h, d) = x.dims4()?;
    let x = x.to_dtype(DType::F32)?;
    let mut normed = x.broadcast_div(&(x.sqr()?.mean_keepdim(3)? + eps)?.sqrt()?)?;
    if let Some(w) = weight {
        normed = normed.broadcast_mul(&w.to_dtype(DType::F32)?.reshape((1, 1, 1, d))?)?;
    }
    rotate_pairs(&normed.reshape((b, l, h, d / 2, 2))?, cos, sin)
}

/// Rotates `pairs` `[B, L, H, D/2, 2]` (f32) by the angles of `cos`/`sin` `[L, D/2]`.
fn rotate_pairs(pairs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, l, h, half, _) = pairs.dims5()?;
    let (x1, x2) = (pairs.narrow(4, 0, 1)?, pairs.narrow(4, 1, 1)?);
    let cos = cos.to_dtype(DType::F32)?.reshape((1, l, 1, half, 1))?;
    let sin = sin.to_dtype(DType::F32)?.reshape((1, l, 1, half, 1))?;
    let even = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let odd = (x1.broadcast_mul(&sin)? + x2.broadcast_mul(&cos)?)?;
    Tensor::cat(&[even, odd], 4)?.reshape((b, l, h, half * 2))
}

/// `x [B, L, D]` RMS-normalised over each whole row (times `weight` `[D]` when given), then its
/// pairs (`pairs`) rotated by the angles whose `cos`/`sin` are `[L or B·L, D / 2]`, in f32: what
/// [`crate::rms_norm_rotary`] computes on CUDA.
pub fn rms_norm_rotary(
    x: &Tensor,
    weight: Option<&Tensor>,
    eps: f64,
    cos: &Tensor,
    sin: &Tensor,
    pairs: RotaryPairs,
) -> Result<Tensor> {
    let table_rows = pairs.check(x, cos, sin)?;
    let (b, l, d) = x.dims3()?;
    let rows = b * l;
    let x = x.to_dtype(DType::F32)?.reshape((rows, d))?;
    let mut normed = x.broadcast_div(&(x.sqr()?.mean_keepdim(1)? + eps)?.sqrt()?)?;
    if let Some(w) = weight {
        normed = normed.broadcast_mul(&w.to_dtype(DType::F32)?.reshape((1, d))?)?;
    }
    // Every row's table row, as `[rows, D / 2]`.
    let table = |t: &Tensor| -> Result<Tensor> {
        t.to_dtype(DType::F32)?
            .unsqueeze(0)?
            .repeat((rows / table_rows, 1, 1))?
            .reshape((rows, d / 2))
    };
    let (cos, sin) = (table(cos)?, table(sin)?);
    let rotated = match pairs {
        RotaryPairs::Interleaved => {
            rotate_pairs(&normed.reshape((1, rows, 1, d / 2, 2))?, &cos, &sin)?
        }
        RotaryPairs::Split { head_dim } => {
            let (heads, half) = (d / head_dim, head_dim / 2);
            let halves = normed.reshape((rows, heads, 2, half))?;
            let (x1, x2) = (halves.narrow(2, 0, 1)?, halves.narrow(2, 1, 1)?);
            let cos = cos.reshape((rows, heads, 1, half))?;
            let sin = sin.reshape((rows, heads, 1, half))?;
            let first = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
            let second = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
            Tensor::cat(&[first, second], 2)?
        }
    };
    rotated.reshape((b, l, d))
}

/// The rotary embedding alone: [`rms_norm_rope`] without the norm (what [`crate::rope_tables`]
/// computes on CUDA).
pub fn rope_tables(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, l, h, d) = x.dims4()?;
    let pairs = x.to_dtype(DType::F32)?.reshape((b, l, h, d / 2, 2))?;
    rotate_pairs(&pairs, cos, sin)
}

/// `silu(x[..., :n]) * x[..., n:]` in f32: what [`crate::swiglu`] computes on CUDA.
pub fn swiglu(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let half = x.dim(candle_core::D::Minus1)? / 2;
    x.narrow(candle_core::D::Minus1, 0, half)?
        .silu()?
        .mul(&x.narrow(candle_core::D::Minus1, half, half)?)
}

/// A [`FrameConv`] and its [`Epilogue`] with candle's ordinary ops, in `x`'s dtype on `x`'s device
/// (the engine's portable path): the frames each output frame reads are gathered side by side on
/// the channel dim, then one 2-D convolution runs over every output frame.
pub fn frame_conv(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    spec: FrameConv,
    epilogue: &Epilogue,
) -> Result<Tensor> {
    let [b, t_out, o, h_out, w_out] = spec.output_shape(x, weight, bias)?;
    let frames_of_tap = |tap: usize| {
        if spec.stride_t == 1 {
            return x.narrow(1, tap, t_out);
        }
        let picked = (0..t_out)
            .map(|j| x.narrow(1, tap + j * spec.stride_t, 1))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&picked, 1)
    };
    let taps = (0..spec.taps)
        .map(frames_of_tap)
        .collect::<Result<Vec<_>>>()?;
    let windows = Tensor::cat(&taps, 2)?;
    let (_, _, ck, h, w) = windows.dims5()?;
    let y = windows
        .reshape((b * t_out, ck, h, w))?
        .conv2d(weight, spec.pad, spec.stride, 1, 1)?
        .broadcast_add(&bias.reshape((1, o, 1, 1))?)?
        .reshape((b, t_out, o, h_out, w_out))?;
    conv_epilogue(&y, epilogue)
}

/// [`crate::spec::nhwc_output_shape`]'s channels-last convolution with its [`Epilogue`]: the
/// NCHW [`frame_conv`] between two transpositions.
pub fn image_conv_nhwc(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    spec: FrameConv,
    epilogue: &Epilogue,
) -> Result<Tensor> {
    crate::spec::nhwc_output_shape(x, weight, bias, spec)?;
    let first = |t: &Tensor| t.permute((0, 3, 1, 2))?.contiguous()?.unsqueeze(1);
    let epilogue = Epilogue {
        residual: epilogue.residual.as_ref().map(first).transpose()?,
        activation: epilogue.activation.clone(),
    };
    let weight = weight.permute((0, 3, 1, 2))?.contiguous()?;
    frame_conv(&first(x)?, &weight, bias, spec, &epilogue)?
        .squeeze(1)?
        .permute((0, 2, 3, 1))?
        .contiguous()
}

/// `activation(y + residual)` of a convolution's output `y [B, T, O, H, W]` (bias added), as
/// [`Epilogue`] defines it.
fn conv_epilogue(y: &Tensor, epilogue: &Epilogue) -> Result<Tensor> {
    let o = y.dim(2)?;
    epilogue.check(y.dims(), o)?;
    let y = match &epilogue.residual {
        Some(residual) => (y + residual.to_dtype(y.dtype())?)?,
        None => y.clone(),
    };
    let negative = match &epilogue.activation {
        Activation::None => return Ok(y),
        Activation::LeakyRelu(slope) => (&y * *slope as f64)?,
        Activation::PRelu(slopes) => {
            y.broadcast_mul(&slopes.to_dtype(y.dtype())?.reshape((1, 1, o, 1, 1))?)?
        }
    };
    y.ge(0f32)?.where_cond(&y, &negative)
}

/// `x [B, T, C, H, W]` padded by `padding` with candle's ops: what [`crate::pad_frames`] computes
/// on CUDA, in `x`'s dtype.
pub fn pad_frames(x: &Tensor, padding: FramePadding) -> Result<Tensor> {
    padding.output_shape(x)?;
    let mut x = x.pad_with_same(1, padding.before, padding.after)?;
    let pad = padding.pad;
    for dim in [3, 4] {
        x = match padding.mode {
            SpatialPad::Zeros => x.pad_with_zeros(dim, pad, pad)?,
            SpatialPad::Replicate => x.pad_with_same(dim, pad, pad)?,
            SpatialPad::Reflect => {
                let last = x.dim(dim)? as i64 - 1;
                let index: Vec<u32> = (-(pad as i64)..=last + pad as i64)
                    .map(|i| i.abs().min(2 * last - i) as u32)
                    .collect();
                x.index_select(&Tensor::new(index.as_slice(), x.device())?, dim)?
            }
        };
    }
    Ok(x)
}

/// Copies the channels-last `part [.., C]` into every slot of the flat `buffer`: channel
/// `slot.offset` of the images `[pixels, slot.pitch]` starting `slot.start` elements in, one
/// `slice_set` per slot. What [`crate::scatter_channels`] does on CUDA in one pass.
pub fn scatter_channels(buffer: &Tensor, part: &Tensor, slots: &[ChannelSlot]) -> Result<()> {
    let (pixels, c) = ChannelSlot::check(buffer, part, slots)?;
    let part = part.contiguous()?.reshape((pixels, c))?;
    for slot in slots {
        buffer
            .narrow(0, slot.start, pixels * slot.pitch)?
            .reshape((pixels, slot.pitch))?
            .slice_set(&part, 1, slot.offset)?;
    }
    Ok(())
}

/// Backward warp: out(y, x) = image(y + flow_y, x + flow_x), sampled bilinearly with the sample
/// point clamped into the image (border padding). `image` [B, C, H, W], `flow` [B, 2, H, W] in
/// pixels (x first). This is RIFE's `warplayer.warp`: `grid_sample(mode="bilinear",
/// padding_mode="border", align_corners=True)` on the normalised grid plus flow / ((size − 1) / 2),
/// which is a displacement in pixels. Computed in f32 and returned in the image's dtype: what
/// [`crate::warp`] computes on CUDA.
///
/// The four neighbours of every output pixel are fetched with one `index_select` from the image
/// laid out as rows of channels, [B·H·W, C], so the index costs 4·B·H·W whatever C is.
pub fn warp(image: &Tensor, flow: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = image.dims4()?;
    check_warp_flow(image, flow)?;
    let device = image.device();
    let flow = flow.to_dtype(DType::F32)?;
    let ramp = |n: usize| Tensor::arange(0u32, n as u32, device)?.to_dtype(DType::F32);
    let xs = ramp(w)?.reshape((1, 1, w))?;
    let ys = ramp(h)?.reshape((1, h, 1))?;
    let last = |n: usize| (n - 1) as f32;
    let x = flow
        .narrow(1, 0, 1)?
        .squeeze(1)?
        .broadcast_add(&xs)?
        .clamp(0f32, last(w))?;
    let y = flow
        .narrow(1, 1, 1)?
        .squeeze(1)?
        .broadcast_add(&ys)?
        .clamp(0f32, last(h))?;
    let x0 = x.floor()?;
    let y0 = y.floor()?;
    let fx = (&x - &x0)?;
    let fy = (&y - &y0)?;
    // At the last row or column the upper neighbour has weight 0; clamping keeps it in range.
    let x1 = (&x0 + 1.0)?.clamp(0f32, last(w))?;
    let y1 = (&y0 + 1.0)?.clamp(0f32, last(h))?;
    let row0 = (y0 * w as f64)?;
    let row1 = (y1 * w as f64)?;
    // Offsets within one image are exact in f32 (below 2^24 pixels); the batch offset is added
    // in u32 so that batches of large frames stay exact too.
    let local = Tensor::stack(
        &[
            (&row0 + &x0)?,
            (&row0 + &x1)?,
            (&row1 + &x0)?,
            (&row1 + &x1)?,
        ],
        1,
    )?
    .to_dtype(DType::U32)?;
    let base = (Tensor::arange(0u32, b as u32, device)? * (h * w) as f64)?.reshape((b, 1, 1, 1))?;
    let index = local.broadcast_add(&base)?.flatten_all()?;
    let gx = (1.0 - &fx)?;
    let gy = (1.0 - &fy)?;
    let weights = Tensor::stack(&[(&gx * &gy)?, (&fx * &gy)?, (&gx * &fy)?, (&fx * &fy)?], 1)?
        .reshape((b, 4, h * w, 1))?;
    let rows = image
        .to_dtype(DType::F32)?
        .permute((0, 2, 3, 1))?
        .reshape((b * h * w, c))?;
    rows.index_select(&index, 0)?
        .reshape((b, 4, h * w, c))?
        .broadcast_mul(&weights)?
        .sum(1)?
        .reshape((b, h, w, c))?
        .permute((0, 3, 1, 2))?
        .to_dtype(image.dtype())?
        .contiguous()
}

/// `flow` must be [B, 2, H, W] for `image` [B, C, H, W].
pub(crate) fn check_warp_flow(image: &Tensor, flow: &Tensor) -> Result<()> {
    let (b, _, h, w) = image.dims4()?;
    if flow.dims() != [b, 2, h, w] {
        bail!(
            "warp: flow {:?} does not match image {:?} (want [B, 2, H, W])",
            flow.dims(),
            image.dims()
        )
    }
    Ok(())
}

/// The largest finite e4m3 value.
pub const E4M3_MAX: f64 = 448.0;

/// The scale as the e4m3 conversions take it: f32, `[]` for one value, `[rows, 1]` for one per
/// row of a `rows`-row weight.
fn e4m3_scale(scale: &Tensor, rows: usize) -> Result<Tensor> {
    let scale = scale.to_dtype(DType::F32)?;
    match scale.elem_count() {
        1 => scale.flatten_all()?.reshape(()),
        n if n == rows => scale.reshape((rows, 1)),
        n => bail!("e4m3: {rows} rows take 1 or {rows} scales, not {n}"),
    }
}

/// `data` (float8 e4m3 `[rows, cols]`) times `scale` (one value or one per row) in `dtype`,
/// computed in f32 and rounded once: what [`crate::fp8_dequantize`] computes on CUDA.
pub fn fp8_dequantize(data: &Tensor, scale: &Tensor, dtype: DType) -> Result<Tensor> {
    let scale = e4m3_scale(scale, data.dim(0)?)?;
    data.to_dtype(DType::F32)?
        .broadcast_mul(&scale)?
        .to_dtype(dtype)
}

/// `w / scale` (`w` `[rows, cols]`, `scale` one value or one per row) in float8 e4m3, rounded to
/// nearest even and saturated to ±448 as PyTorch's `to(torch.float8_e4m3fn)` after a clamp: what
/// [`crate::fp8_quantize`] computes on CUDA.
pub fn fp8_quantize(w: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let scale = e4m3_scale(scale, w.dim(0)?)?;
    w.to_dtype(DType::F32)?
        .broadcast_div(&scale)?
        .clamp(-E4M3_MAX, E4M3_MAX)?
        .to_dtype(DType::F8E4M3)
}

/// The per-row scales of [`fp8_quantize_rows`]: `max |x[row]| · (1/448)` in f32 (candle divides
/// by a constant as a multiplication by its reciprocal), 1 for an all-zero row, `[rows, 1]` (any
/// device).
pub fn fp8_row_scales(x: &Tensor) -> Result<Tensor> {
    let cols = x.dim(candle_core::D::Minus1)?;
    let absmax = x
        .to_dtype(DType::F32)?
        .reshape(((), cols))?
        .abs()?
        .max_keepdim(1)?;
    absmax
        .eq(0f64)?
        .where_cond(&absmax.ones_like()?, &(absmax / E4M3_MAX)?)
}

/// Activations quantized per row (token) for an FP8 GEMM: `x [.., cols]` to e4m3 of x's shape
/// with [`fp8_row_scales`], and those scales as `[rows]`.
pub fn fp8_quantize_rows(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let cols = x.dim(candle_core::D::Minus1)?;
    let scale = fp8_row_scales(x)?;
    let q = fp8_quantize(&x.reshape(((), cols))?, &scale)?.reshape(x.shape())?;
    Ok((q, scale.flatten_all()?))
}

/// The float8 operands of [`crate::attention_fp8`], dequantized to f32: `q` with a scale per token
/// ([`fp8_quantize_rows`]), `k` with one per 128-key tile of a head and `v` with one per channel of
/// a head, each scale the largest magnitude it covers times 1/448 (1 where all are zero). `q [B,
/// Lq, H, D]`, `k`/`v [B, Lk, H, D]`; attention over the three is what the kernel approximates
/// (it also keeps the probabilities in e4m3).
pub fn attention_fp8_operands(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dequantize = |x: &Tensor, scale: &Tensor| -> Result<Tensor> {
        x.to_dtype(DType::F32)?
            .broadcast_div(scale)?
            .clamp(-E4M3_MAX, E4M3_MAX)?
            .to_dtype(DType::F8E4M3)?
            .to_dtype(DType::F32)?
            .broadcast_mul(scale)
    };
    let absmax_scale = |absmax: Tensor| -> Result<Tensor> {
        absmax
            .eq(0f64)?
            .where_cond(&absmax.ones_like()?, &(absmax / E4M3_MAX)?)
    };
    let (q8, q_scale) = fp8_quantize_rows(q)?;
    let q = q8
        .to_dtype(DType::F32)?
        .broadcast_mul(&q_scale.reshape(q.dims()[..3].to_vec())?.unsqueeze(3)?)?;
    // K: [B, Lk, H, D] padded with zeros to whole tiles, a scale per (batch, tile, head).
    let (b, lk, h, d) = k.dims4()?;
    let tiles = lk.div_ceil(128);
    let padded = k
        .to_dtype(DType::F32)?
        .pad_with_zeros(1, 0, tiles * 128 - lk)?
        .reshape((b, tiles, 128, h, d))?;
    let k_scale = absmax_scale(padded.abs()?.max_keepdim(4)?.max_keepdim(2)?)?;
    let k = dequantize(&padded, &k_scale)?
        .reshape((b, tiles * 128, h, d))?
        .narrow(1, 0, lk)?;
    // V: a scale per (batch, head, channel) over every key.
    let v_scale = absmax_scale(v.to_dtype(DType::F32)?.abs()?.max_keepdim(1)?)?;
    let v = dequantize(v, &v_scale)?;
    Ok((q, k, v))
}

/// The magnitudes of the eight e2m1 codes (sign bit 8 aside), code order.
pub const E2M1_MAGNITUDES: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];

/// NVFP4 values a block scale serves.
pub const NVFP4_BLOCK: usize = 16;

/// `(rows, cols)` of an NVFP4 weight: `packed` u8 `[rows, cols/2]` (two e2m1 codes a byte, the
/// even element low), `block_scales` `[rows, cols/16]`.
pub fn nvfp4_dims(packed: &Tensor, block_scales: &Tensor) -> Result<(usize, usize)> {
    let (rows, half) = packed.dims2()?;
    let cols = 2 * half;
    if packed.dtype() != DType::U8
        || block_scales.dtype() != DType::F8E4M3
        || !cols.is_multiple_of(NVFP4_BLOCK)
        || block_scales.dims() != [rows, cols / NVFP4_BLOCK]
    {
        bail!(
            "NVFP4: packed codes u8 [rows, cols/2] with e4m3 block scales [rows, cols/16], cols a \
             multiple of 16; got {:?} {:?} and {:?} {:?}",
            packed.dtype(),
            packed.dims(),
            block_scales.dtype(),
            block_scales.dims()
        );
    }
    Ok((rows, cols))
}

/// An NVFP4 weight in `dtype`: `(e2m1(code[r, c]) · e4m3(block_scales[r, c/16])) · global`, the
/// first product exact in f32: what [`crate::nvfp4_dequantize`] computes on CUDA. `global` is an
/// f32 scalar.
pub fn nvfp4_dequantize(
    packed: &Tensor,
    block_scales: &Tensor,
    global: &Tensor,
    dtype: DType,
) -> Result<Tensor> {
    let (rows, cols) = nvfp4_dims(packed, block_scales)?;
    // Each byte's two values, low nibble first, looked up by the byte.
    let pairs: Vec<f32> = (0..=255u8)
        .flat_map(|byte| [byte & 15, byte >> 4])
        .map(|code| {
            let magnitude = E2M1_MAGNITUDES[usize::from(code & 7)];
            if code & 8 != 0 { -magnitude } else { magnitude }
        })
        .collect();
    let device = packed.device();
    let pairs = Tensor::from_vec(pairs, (256, 2), device)?;
    let codes = packed.flatten_all()?.to_dtype(DType::U32)?;
    let values = pairs
        .index_select(&codes, 0)?
        .reshape((rows, cols / NVFP4_BLOCK, NVFP4_BLOCK))?;
    values
        .broadcast_mul(&block_scales.to_dtype(DType::F32)?.unsqueeze(2)?)?
        .broadcast_mul(&global.to_dtype(DType::F32)?.reshape(())?)?
        .reshape((rows, cols))?
        .to_dtype(dtype)
}
