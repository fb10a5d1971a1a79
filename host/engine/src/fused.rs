//! The one dispatch point for each fused elementwise kernel of `videosdgx_kernels` (modulated
//! LayerNorm/RMSNorm, Wan's 3-D RoPE, gated residual), as [`crate::attention`] is for attention.
//!
//! Each function returns `Some(result)` when a fused kernel covers the inputs (the `cuda` feature,
//! bf16 on a CUDA device, shapes the kernel takes) and `None` otherwise; the caller then runs its
//! portable candle ops, so the CPU path stays exactly what it was. A CUDA input that falls back is
//! logged once per op, so the slow path on a GPU is never silent. The kernels compute in f32 and
//! round once to the input dtype, as the candle versions do.
//!
//! `VIDEOSDGX_UNFUSED=linear,norm,rope,residual,conv,pad` (or `all`) turns kernels off for A/B timing;
//! attention's own switch is `attention` in the same list ([`crate::attention`]).
//!
//! [`profile`] times named sections of a forward when a benchmark asks for it.

use candle_core::{DType, Result, Tensor};
use videosdgx_kernels::{ChannelDivisor, ChannelSlot, Epilogue, FrameConv, FramePadding};

/// Which normalisation [`modulated_norm`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Norm {
    Layer,
    Rms,
}

/// Optional terms of [`modulated_norm`]: `(n * weight + bias) * (1 + scale) + shift`.
#[derive(Default)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct Modulation<'a> {
    pub weight: Option<&'a Tensor>,
    pub bias: Option<&'a Tensor>,
    /// `[B, D]`, `[B, 1, D]` (one per sample) or `[B, L, D]` (one per token).
    pub scale: Option<&'a Tensor>,
    pub shift: Option<&'a Tensor>,
    /// Wan's 3-D RoPE (theta 10000) over the token grid `[frames, height, width]`, applied to
    /// each `head_dim` slice of the result.
    pub rope: Option<([usize; 3], usize)>,
}

/// Fused norm over the last dim of `x [B, L, D]` with the terms of `m`, in `x`'s dtype.
pub(crate) fn modulated_norm(
    x: &Tensor,
    kind: Norm,
    eps: f64,
    m: Modulation<'_>,
) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    {
        if let Some(y) = cuda::modulated_norm(x, kind, eps, &m)? {
            return Ok(Some(y));
        }
        warn_fallback(x, "modulated norm");
    }
    let _ = (x, kind, eps, m);
    Ok(None)
}

/// Wan's self-attention q/k path, RMS norm (with `weight`) of `x [B, L, D]` across the heads and
/// then the 3-D RoPE of each `head_dim` slice, as one fused pass. `None` where no kernel covers it
/// (the caller then runs the norm and the RoPE, which log their own fallbacks).
pub(crate) fn rms_norm_rope(
    x: &Tensor,
    weight: &Tensor,
    eps: f64,
    grid: [usize; 3],
    head_dim: usize,
) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    {
        let m = Modulation {
            weight: Some(weight),
            rope: Some((grid, head_dim)),
            ..Default::default()
        };
        cuda::modulated_norm(x, Norm::Rms, eps, &m)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (x, weight, eps, grid, head_dim);
        Ok(None)
    }
}

/// Fused Wan 3-D RoPE (theta 10000) of `x [B, L, H, D]` over the token grid `[frames, height,
/// width]`, in `x`'s dtype.
pub(crate) fn rope3d(x: &Tensor, grid: [usize; 3]) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    {
        if let Some(y) = cuda::rope3d(x, grid)? {
            return Ok(Some(y));
        }
        warn_fallback(x, "rope3d");
    }
    let _ = (x, grid);
    Ok(None)
}

/// Fused `x + y * gate` (`x`, `y` `[B, L, D]`; `gate` `[B, D]`, `[B, 1, D]` or `[B, L, D]`),
/// in `x`'s dtype.
pub(crate) fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    {
        if let Some(out) = cuda::gated_residual(x, y, gate)? {
            return Ok(Some(out));
        }
        warn_fallback(x, "gated residual");
    }
    let _ = (x, y, gate);
    Ok(None)
}

/// The per-head RMS norm (`weight` `[D]`) of `x` `[B, L, H, D]` then the rotary embedding of
/// interleaved pairs from the tables `cos`/`sin` `[L, D / 2]`, as one kernel pass; `None` where no
/// kernel covers the inputs (the caller then runs the two, which log their own fallbacks).
pub(crate) fn rms_norm_rope_tables(
    x: &Tensor,
    weight: &Tensor,
    eps: f64,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if cuda::rope_tables_covered(x) && !disabled("norm") {
        return videosdgx_kernels::rms_norm_rope(x, Some(weight), cos, sin, eps).map(Some);
    }
    let _ = (x, weight, eps, cos, sin);
    Ok(None)
}

/// The RMS norm of each whole row of `x` `[B, L, D]` (times `weight` `[D]`), then the rotary
/// `pairs` from the tables `cos`/`sin` `[L or B·L, D / 2]`, as one kernel pass (LTX-2's q/k path:
/// the norm across heads, then the split or interleaved RoPE); `None` where no kernel covers the
/// inputs (the caller then runs the two, which log their own fallbacks).
pub(crate) fn rms_norm_rotary(
    x: &Tensor,
    weight: &Tensor,
    eps: f64,
    cos: &Tensor,
    sin: &Tensor,
    pairs: videosdgx_kernels::RotaryPairs,
) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if cuda::norm_rotary_covered(x, pairs) && !disabled("norm") {
        return videosdgx_kernels::rms_norm_rotary(
            &x.contiguous()?,
            Some(weight),
            eps,
            cos,
            sin,
            pairs,
        )
        .map(Some);
    }
    let _ = (x, weight, eps, cos, sin, pairs);
    Ok(None)
}

/// The rotary embedding of the interleaved pairs of `x` `[B, L, H, D]` from the tables
/// `cos`/`sin` `[L, D / 2]`.
pub(crate) fn rope_tables(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    {
        if cuda::rope_tables_covered(x) {
            return videosdgx_kernels::rope_tables(x, cos, sin).map(Some);
        }
        warn_fallback(x, "rotary tables");
    }
    let _ = (x, cos, sin);
    Ok(None)
}

/// `silu(x[..., :n]) * x[..., n:]` (FLUX.2's SwiGLU) in one pass.
pub(crate) fn swiglu(x: &Tensor) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    {
        let half = x.dims().last().copied().unwrap_or(0) / 2;
        if x.device().is_cuda()
            && x.dtype() == candle_core::DType::BF16
            && half % 8 == 0
            && !disabled("swiglu")
        {
            return videosdgx_kernels::swiglu(x).map(Some);
        }
        warn_fallback(x, "swiglu");
    }
    let _ = x;
    Ok(None)
}

/// `torch.nn.GroupNorm` of `x` `[B, C, ...]` with the per-channel affine (and SiLU when `silu`)
/// as two kernel passes, where a kernel covers the inputs.
pub(crate) fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    {
        if let Some(y) = cuda::group_norm(x, weight, bias, groups, eps, silu)? {
            return Ok(Some(y));
        }
        warn_fallback(x, "group norm");
    }
    let _ = (x, weight, bias, groups, eps, silu);
    Ok(None)
}

/// `x w^T + b` of a `Linear` layer, followed by tanh-approximated GELU when `gelu`, plus
/// `residual` when given, as one cuBLASLt matmul with a fused epilogue (no separate bias,
/// activation or residual pass), in `x`'s dtype. A layer with LoRA side paths is left to its own
/// forward, whose output they must join before the activation.
pub(crate) fn linear(
    layer: &crate::models::Linear,
    x: &Tensor,
    gelu: bool,
    residual: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    if !layer.adapters().is_empty() {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        if let Some(y) = cuda::linear(layer, x, gelu, residual)? {
            return Ok(Some(y));
        }
        warn_fallback(x, "linear");
    }
    let _ = (layer, x, gelu, residual);
    Ok(None)
}

/// The VAEs' channel RMS norm (`x / divisor * scale` over `channel_dim`, `scale` `[C]`),
/// followed by SiLU when `silu`, in `x`'s dtype.
pub(crate) fn channel_norm(
    x: &Tensor,
    scale: &Tensor,
    channel_dim: usize,
    divisor: ChannelDivisor,
    silu: bool,
) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    {
        if let Some(y) = cuda::channel_norm(x, scale, channel_dim, divisor, silu)? {
            return Ok(Some(y));
        }
        warn_fallback(x, "channel norm");
    }
    let _ = (x, scale, channel_dim, divisor, silu);
    Ok(None)
}

/// [`channel_norm`] with Wan's L2 divisor written into `dst` (a view of x's shape, e.g. part of a
/// larger buffer);
/// returns whether a fused kernel wrote it. On `false` the caller computes the norm with
/// [`channel_norm`] (which logs a fallback) and copies it.
pub(crate) fn channel_norm_into(
    dst: &Tensor,
    x: &Tensor,
    scale: &Tensor,
    channel_dim: usize,
    silu: bool,
) -> Result<bool> {
    #[cfg(feature = "cuda")]
    {
        cuda::channel_norm_into(dst, x, scale, channel_dim, ChannelDivisor::L2, silu)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (dst, x, scale, channel_dim, silu);
        Ok(false)
    }
}

/// A [`FrameConv`] (the VAE's causal 3-D and per-frame 2-D convolutions, the image models' 2-D
/// ones) finished by `epilogue`, in `x`'s dtype: cuDNN (frame windows read in place, or gathered
/// into batches for long clips) with the `cudnn` feature on CUDA bf16 or f32; otherwise candle's
/// ops ([`videosdgx_kernels::reference::frame_conv`], which defines it).
pub(crate) fn frame_conv(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    spec: FrameConv,
    epilogue: &Epilogue,
) -> Result<Tensor> {
    #[cfg(feature = "cudnn")]
    if kernel_takes("conv", x) && spec.frames_aligned(x, weight, bias)? {
        return videosdgx_kernels::frame_conv(x, weight, bias, spec, epilogue);
    }
    #[cfg(feature = "cuda")]
    warn_fallback(x, "frame conv");
    reference_conv(
        videosdgx_kernels::reference::frame_conv,
        (x, weight, bias),
        spec,
        epilogue,
    )
}

/// A channels-last 2-D convolution (`x [B, H, W, C]`, `weight [O, kh, kw, C]`, `spec` one tap)
/// finished by `epilogue`, in `x`'s dtype: cuDNN's NHWC kernels with the `cudnn` feature on CUDA
/// bf16 or f32; otherwise candle's ops ([`videosdgx_kernels::reference::image_conv_nhwc`], which
/// defines it).
pub(crate) fn image_conv_nhwc(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    spec: FrameConv,
    epilogue: &Epilogue,
) -> Result<Tensor> {
    #[cfg(feature = "cudnn")]
    if kernel_takes("conv", x) {
        return videosdgx_kernels::image_conv_nhwc(x, weight, bias, spec, epilogue);
    }
    #[cfg(feature = "cuda")]
    warn_fallback(x, "image conv");
    reference_conv(
        videosdgx_kernels::reference::image_conv_nhwc,
        (x, weight, bias),
        spec,
        epilogue,
    )
}

/// A reference convolution in the dtype candle convolves `x` in (f32 for half precision on the
/// CPU), every operand cast to it, the result returned in `x`'s dtype.
fn reference_conv(
    conv: fn(&Tensor, &Tensor, &Tensor, FrameConv, &Epilogue) -> Result<Tensor>,
    (x, weight, bias): (&Tensor, &Tensor, &Tensor),
    spec: FrameConv,
    epilogue: &Epilogue,
) -> Result<Tensor> {
    let dtype = crate::models::conv::conv_dtype(x);
    conv(
        &x.to_dtype(dtype)?,
        &weight.to_dtype(dtype)?,
        &bias.to_dtype(dtype)?,
        spec,
        &epilogue.to_dtype(dtype)?,
    )?
    .to_dtype(x.dtype())
}

/// Copies the channels-last `part [.., C]` into every [`ChannelSlot`] of the flat `buffer`: one
/// pass that reads the part once on CUDA where every copy moves whole 16-byte units, otherwise
/// one `slice_set` per slot ([`videosdgx_kernels::reference::scatter_channels`], which defines
/// it).
pub(crate) fn scatter_channels(
    buffer: &Tensor,
    part: &Tensor,
    slots: &[ChannelSlot],
) -> Result<()> {
    #[cfg(feature = "cuda")]
    {
        let elem = part.dtype().size_in_bytes();
        if kernel_takes("scatter", part)
            && (buffer.layout().start_offset() * elem).is_multiple_of(16)
            && ChannelSlot::vectorizes(slots, part, elem)
        {
            return videosdgx_kernels::scatter_channels(buffer, part, slots);
        }
        warn_fallback(part, "scatter channels");
    }
    videosdgx_kernels::reference::scatter_channels(buffer, part, slots)
}

/// RIFE's backward warp of `image [B, C, H, W]` by `flow [B, 2, H, W]` (pixels, x first; border
/// padding), in the image's dtype: one kernel pass on CUDA (bf16 or f32), otherwise candle's ops
/// ([`videosdgx_kernels::reference::warp`], which defines it).
pub(crate) fn warp(image: &Tensor, flow: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    {
        if kernel_takes("warp", image) {
            return videosdgx_kernels::warp(image, flow);
        }
        warn_fallback(image, "warp");
    }
    videosdgx_kernels::reference::warp(image, flow)
}

/// Frames-major video padded in time and space ([`FramePadding`]) in `x`'s dtype: one kernel
/// pass on CUDA bf16 or f32, otherwise candle's ops ([`videosdgx_kernels::reference::pad_frames`],
/// which defines it).
pub(crate) fn pad_frames(x: &Tensor, padding: FramePadding) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    {
        if kernel_takes("pad", x) {
            return videosdgx_kernels::pad_frames(x, padding);
        }
        warn_fallback(x, "pad frames");
    }
    videosdgx_kernels::reference::pad_frames(x, padding)
}

/// An FP8 weight's `data · scale` in `dtype`: one kernel pass on CUDA (bf16 or f32), otherwise
/// candle's ops ([`videosdgx_kernels::reference::fp8_dequantize`], which defines it).
pub(crate) fn fp8_dequantize(data: &Tensor, scale: &Tensor, dtype: DType) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    {
        if data.device().is_cuda() && matches!(dtype, DType::BF16 | DType::F32) {
            return videosdgx_kernels::fp8_dequantize(data, scale, dtype);
        }
        warn_fallback(data, "fp8 dequantize");
    }
    videosdgx_kernels::reference::fp8_dequantize(data, scale, dtype)
}

/// `w / scale` in float8 e4m3 (rounded to nearest even, saturated): one kernel pass on CUDA (bf16
/// or f32 weights), otherwise candle's ops ([`videosdgx_kernels::reference::fp8_quantize`]).
pub(crate) fn fp8_quantize(w: &Tensor, scale: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    {
        if w.device().is_cuda() && matches!(w.dtype(), DType::BF16 | DType::F32) {
            return videosdgx_kernels::fp8_quantize(w, scale);
        }
        warn_fallback(w, "fp8 quantize");
    }
    videosdgx_kernels::reference::fp8_quantize(w, scale)
}

/// `x [.., cols]` in float8 e4m3 with one scale per row (`max |row| / 448`), and those scales
/// (f32 `[rows]`): one kernel on CUDA (bf16, `cols` a multiple of 8), otherwise the scales from
/// candle's ops and [`fp8_quantize`] ([`videosdgx_kernels::reference::fp8_quantize_rows`] defines
/// both).
pub(crate) fn fp8_quantize_rows(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let cols = x.dim(candle_core::D::Minus1)?;
    #[cfg(feature = "cuda")]
    {
        if x.device().is_cuda() && x.dtype() == DType::BF16 && cols.is_multiple_of(8) {
            return videosdgx_kernels::fp8_quantize_rows(x);
        }
    }
    let scale = videosdgx_kernels::reference::fp8_row_scales(x)?;
    let q = fp8_quantize(&x.reshape(((), cols))?, &scale)?.reshape(x.shape())?;
    Ok((q, scale.flatten_all()?))
}

/// Whether `VIDEOSDGX_UNFUSED` (a comma-separated list of op names, or `all`) turns the fused
/// kernel of `op` off, so one binary can time both paths.
#[cfg(feature = "cuda")]
pub(crate) fn disabled(op: &str) -> bool {
    use std::sync::OnceLock;
    static OFF: OnceLock<Vec<String>> = OnceLock::new();
    let off = OFF.get_or_init(|| {
        std::env::var("VIDEOSDGX_UNFUSED")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
    off.iter().any(|o| o == op || o == "all")
}

/// Whether the kernel of `op` takes `x`: on CUDA, in bf16 or f32, unless `VIDEOSDGX_UNFUSED` turns
/// it off.
#[cfg(feature = "cuda")]
fn kernel_takes(op: &str, x: &Tensor) -> bool {
    !disabled(op) && x.device().is_cuda() && matches!(x.dtype(), DType::BF16 | DType::F32)
}

/// One warning per op and process when a CUDA input takes the portable path.
#[cfg(feature = "cuda")]
fn warn_fallback(x: &Tensor, op: &'static str) {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    if !x.device().is_cuda() {
        return;
    }
    static WARNED: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut warned = WARNED
        .get_or_init(Default::default)
        .lock()
        .expect("warned set poisoned");
    if warned.insert(op) {
        tracing::warn!(
            "{op}: no fused kernel for {:?} {:?}; portable candle ops on CUDA (slow)",
            x.dtype(),
            x.dims()
        );
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::{Modulation, Norm};
    use candle_core::{DType, Result, Tensor};
    use videosdgx_kernels::{ChannelDivisor, NormKind, NormRope, NormSpec, RopeGrid};

    /// The widest row the norm kernel takes (norm.cu).
    const NORM_MAX_DIM: usize = 6144;

    fn bf16_cuda(x: &Tensor) -> bool {
        x.device().is_cuda() && x.dtype() == DType::BF16
    }

    /// A modulation term as `[B, D]` or `[B, L, D]` for `x [b, l, d]`, or `None` if it fits neither.
    fn per_row(t: &Tensor, (b, l, d): (usize, usize, usize)) -> Option<Tensor> {
        match *t.dims() {
            [tb, td] if tb == b && td == d => Some(t.clone()),
            [tb, 1, td] if tb == b && td == d => t.squeeze(1).ok(),
            [tb, tl, td] if tb == b && tl == l && td == d => Some(t.clone()),
            _ => None,
        }
    }

    pub(super) fn linear(
        layer: &crate::models::Linear,
        x: &Tensor,
        gelu: bool,
        residual: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        let &[n, k] = layer.dims() else {
            return Ok(None);
        };
        let residual_fits = residual.is_none_or(|r| {
            !gelu && bf16_cuda(r) && r.rank() == x.rank() && r.dims().last() == Some(&n)
        });
        if super::disabled("linear")
            || !bf16_cuda(x)
            || !layer.device().is_cuda()
            || layer.dtype() != DType::BF16
            || x.dim(candle_core::D::Minus1)? != k
            || layer
                .bias()
                .is_some_and(|b| !bf16_cuda(b) || b.dims() != [n])
            || !residual_fits
        {
            return Ok(None);
        }
        if let Some(fp8) = layer.fp8()
            && let Some(y) = linear_fp8(layer, fp8, x, gelu, residual)?
        {
            return Ok(Some(y));
        }
        // A quantized layer's weight is dequantized for the product.
        let w = layer.weight()?;
        match residual {
            None => videosdgx_kernels::linear(x, &w, layer.bias(), gelu).map(Some),
            Some(r) => videosdgx_kernels::linear_residual(x, &w, layer.bias(), r).map(Some),
        }
    }

    /// An FP8 layer (whose operands [`linear`] checked) as an FP8 GEMM: `x` quantized per token,
    /// the product scaled per token and output channel, bias, GELU and residual in the epilogue.
    /// `None` where the GPU has no FP8 products (before Ada) or the widths are not multiples of
    /// 16, and with `VIDEOSDGX_UNFUSED=fp8_gemm` (the weight-only A/B of the benchmarks).
    fn linear_fp8(
        layer: &crate::models::Linear,
        weight: &crate::models::fp8::Fp8Weight,
        x: &Tensor,
        gelu: bool,
        residual: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        let (n, k) = weight.dims2()?;
        if super::disabled("fp8_gemm")
            || !k.is_multiple_of(16)
            || !n.is_multiple_of(16)
            || !videosdgx_kernels::fp8_linear_supported(x.device())?
        {
            return Ok(None);
        }
        let (xq, x_scale) = videosdgx_kernels::fp8_quantize_rows(x)?;
        videosdgx_kernels::linear_fp8(
            &xq,
            &x_scale,
            weight.data(),
            weight.scale(),
            layer.bias(),
            gelu,
            residual,
        )
        .map(Some)
    }

    /// Whether the channel-norm kernel takes `x` (bf16 or f32 on CUDA, 8-pixel groups).
    fn channel_norm_takes(x: &Tensor, scale: &Tensor, channel_dim: usize) -> Result<bool> {
        let f32_cuda = x.device().is_cuda() && x.dtype() == DType::F32;
        if super::disabled("norm") || !(bf16_cuda(x) || f32_cuda) || channel_dim >= x.rank() {
            return Ok(false);
        }
        let inner: usize = x.dims()[channel_dim + 1..].iter().product();
        Ok(inner.is_multiple_of(8) && scale.elem_count() == x.dim(channel_dim)?)
    }

    pub(super) fn channel_norm(
        x: &Tensor,
        scale: &Tensor,
        channel_dim: usize,
        divisor: ChannelDivisor,
        silu: bool,
    ) -> Result<Option<Tensor>> {
        if !channel_norm_takes(x, scale, channel_dim)? {
            return Ok(None);
        }
        videosdgx_kernels::channel_rms_norm(x, scale, channel_dim, divisor, silu).map(Some)
    }

    pub(super) fn channel_norm_into(
        dst: &Tensor,
        x: &Tensor,
        scale: &Tensor,
        channel_dim: usize,
        divisor: ChannelDivisor,
        silu: bool,
    ) -> Result<bool> {
        // The kernel writes a contiguous destination: one batch item's frames, for instance.
        let aligned = dst.layout().start_offset().is_multiple_of(8);
        if !channel_norm_takes(x, scale, channel_dim)?
            || !dst.is_contiguous()
            || !aligned
            || dst.dims() != x.dims()
            || dst.dtype() != x.dtype()
        {
            return Ok(false);
        }
        videosdgx_kernels::channel_rms_norm_into(dst, x, scale, channel_dim, divisor, silu)?;
        Ok(true)
    }

    pub(super) fn modulated_norm(
        x: &Tensor,
        kind: Norm,
        eps: f64,
        m: &Modulation<'_>,
    ) -> Result<Option<Tensor>> {
        if super::disabled("norm") || !bf16_cuda(x) || x.rank() != 3 {
            return Ok(None);
        }
        let (b, l, d) = x.dims3()?;
        if d % 8 != 0 || d > NORM_MAX_DIM {
            return Ok(None);
        }
        if [m.weight, m.bias]
            .into_iter()
            .flatten()
            .any(|t| t.dims() != [d])
        {
            return Ok(None);
        }
        let mut terms = [None, None];
        for (slot, t) in terms.iter_mut().zip([m.scale, m.shift]) {
            if let Some(t) = t {
                let Some(t) = per_row(t, (b, l, d)) else {
                    return Ok(None);
                };
                *slot = Some(t);
            }
        }
        let [scale, shift] = terms;
        if let (Some(s), Some(t)) = (&scale, &shift)
            && s.dims() != t.dims()
        {
            return Ok(None);
        }
        let rope = match m.rope {
            None => None,
            Some(([frames, height, width], head_dim)) => {
                let rope = NormRope {
                    grid: RopeGrid {
                        frames,
                        height,
                        width,
                    },
                    head_dim,
                    theta: 10000.0,
                };
                if super::disabled("rope") || rope.check(l, d).is_err() {
                    return Ok(None);
                }
                Some(rope)
            }
        };
        let spec = NormSpec {
            kind: match kind {
                Norm::Layer => NormKind::Layer,
                Norm::Rms => NormKind::Rms,
            },
            eps,
            weight: m.weight.cloned(),
            bias: m.bias.cloned(),
            scale,
            shift,
            rope,
        };
        videosdgx_kernels::modulated_norm(&x.contiguous()?, &spec).map(Some)
    }

    pub(super) fn rope3d(
        x: &Tensor,
        [frames, height, width]: [usize; 3],
    ) -> Result<Option<Tensor>> {
        if super::disabled("rope") || !bf16_cuda(x) || x.rank() != 4 {
            return Ok(None);
        }
        let (_, l, _, d) = x.dims4()?;
        let grid = RopeGrid {
            frames,
            height,
            width,
        };
        let (t_dim, hw_dim) = RopeGrid::split(d);
        if l != grid.tokens() || d % 8 != 0 || t_dim % 2 != 0 || hw_dim == 0 {
            return Ok(None);
        }
        videosdgx_kernels::rope3d(x, grid, 10000.0).map(Some)
    }

    pub(super) fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Option<Tensor>> {
        if super::disabled("residual")
            || !bf16_cuda(x)
            || !bf16_cuda(y)
            || x.rank() != 3
            || y.dims() != x.dims()
        {
            return Ok(None);
        }
        let (b, l, d) = x.dims3()?;
        if d % 8 != 0 {
            return Ok(None);
        }
        let Some(gate) = per_row(gate, (b, l, d)) else {
            return Ok(None);
        };
        videosdgx_kernels::gated_residual(x, y, &gate).map(Some)
    }

    /// Whether the rotary-table kernels take `x` `[B, L, H, D]`: bf16 on CUDA, a contiguous head
    /// dim of 8k up to 256, 16-byte aligned strides.
    pub(super) fn rope_tables_covered(x: &Tensor) -> bool {
        if super::disabled("rope") || !bf16_cuda(x) || x.rank() != 4 {
            return false;
        }
        let d = x.dims()[3];
        let (_, layout) = x.storage_and_layout();
        let st = layout.stride();
        d.is_multiple_of(8)
            && d <= 256
            && st[3] == 1
            && st[..3].iter().all(|s| s % 8 == 0)
            && layout.start_offset() % 8 == 0
    }

    /// Whether the norm-and-rotary kernel takes rows `x` `[B, L, D]` with `pairs`: bf16 on CUDA,
    /// D a multiple of 16 up to [`NORM_MAX_DIM`], a split head's halves of 8k values.
    pub(super) fn norm_rotary_covered(x: &Tensor, pairs: videosdgx_kernels::RotaryPairs) -> bool {
        let d = x.dims().last().copied().unwrap_or(0);
        let half = match pairs {
            videosdgx_kernels::RotaryPairs::Interleaved => 0,
            videosdgx_kernels::RotaryPairs::Split { head_dim } => head_dim / 2,
        };
        bf16_cuda(x) && x.rank() == 3 && d % 16 == 0 && d <= NORM_MAX_DIM && half % 8 == 0
    }

    pub(super) fn group_norm(
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> Result<Option<Tensor>> {
        let per_thread = 16 / x.dtype().size_in_bytes();
        let pixels: usize = x.dims().iter().skip(2).product();
        let covered = matches!(x.dtype(), DType::BF16 | DType::F32)
            && x.device().is_cuda()
            && x.rank() >= 3
            && pixels.is_multiple_of(per_thread);
        if super::disabled("norm") || !covered {
            return Ok(None);
        }
        videosdgx_kernels::group_norm(x, weight, bias, groups, eps, silu).map(Some)
    }
}

/// Per-section wall time of a forward, for benchmarks: off unless [`profile::enable`] was called.
/// When on, each section synchronises the device before and after, so the sum of the sections is
/// the forward's time with the launch overlap between sections removed.
pub mod profile {
    use candle_core::{Device, Result};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    static ON: AtomicBool = AtomicBool::new(false);
    static SECTIONS: Mutex<Vec<(&'static str, f64, usize)>> = Mutex::new(Vec::new());

    /// Starts recording (and clears what was recorded), or stops it.
    pub fn enable(on: bool) {
        SECTIONS.lock().expect("profile poisoned").clear();
        ON.store(on, Ordering::Relaxed);
    }

    /// `(section, total milliseconds, calls)` in first-seen order.
    pub fn report() -> Vec<(&'static str, f64, usize)> {
        SECTIONS.lock().expect("profile poisoned").clone()
    }

    /// Runs `f`, timing it as `name` when profiling is on.
    pub fn section<T>(
        name: &'static str,
        dev: &Device,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if !ON.load(Ordering::Relaxed) {
            return f();
        }
        dev.synchronize()?;
        let start = Instant::now();
        let out = f()?;
        dev.synchronize()?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let mut sections = SECTIONS.lock().expect("profile poisoned");
        match sections.iter_mut().find(|s| s.0 == name) {
            Some(s) => {
                s.1 += ms;
                s.2 += 1;
            }
            None => sections.push((name, ms, 1)),
        }
        Ok(out)
    }
}

/// An NVFP4 weight (`packed` e2m1 codes, e4m3 `block_scales`, f32 `global`) in `dtype`: one
/// kernel pass on CUDA (bf16 or f32), otherwise candle's ops
/// ([`videosdgx_kernels::reference::nvfp4_dequantize`], which defines it).
pub(crate) fn nvfp4_dequantize(
    packed: &Tensor,
    block_scales: &Tensor,
    global: &Tensor,
    dtype: DType,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    {
        if packed.device().is_cuda() && matches!(dtype, DType::BF16 | DType::F32) {
            return videosdgx_kernels::nvfp4_dequantize(packed, block_scales, global, dtype);
        }
        warn_fallback(packed, "nvfp4 dequantize");
    }
    videosdgx_kernels::reference::nvfp4_dequantize(packed, block_scales, global, dtype)
}
