//! Building blocks of the Wan VAE: causal 3D convolutions with their temporal cache, RMS norms,
//! residual and attention blocks, spatial/temporal resampling and the Wan 2.2 shortcut reshapes.
//!
//! Every tensor here is laid out frames-major, `[batch, frames, channels, height, width]`, so that a
//! 3D convolution reads each window of frames as one wide 2D image ([`FrameConv`]) and spatial ops
//! see `[b*t, c, h, w]`.
//! The temporal cache reproduces the reference's chunked decoding exactly (including its quirks), so
//! chunked results equal the reference's; it must never be "simplified" into a plain causal conv.

use crate::fused::profile::section;
use crate::models::pixel_shuffle::pixel_unshuffle_3d;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use videosdgx_kernels::{ChannelDivisor, Epilogue, FrameConv};

/// Frames of context a kernel-3 causal convolution needs from the previous chunk.
const CACHE_FRAMES: usize = 2;

/// What one cached layer remembers between chunks.
#[derive(Clone)]
enum Slot {
    Empty,
    /// The temporal upsampler has seen its first chunk (which it passes through unchanged).
    FirstChunkSeen,
    Frames(Tensor),
}

/// Per-layer memory carried from one temporal chunk to the next. Layers claim slots in call order,
/// so `start_chunk` must be called before each chunk and the layers must run in the same order.
#[derive(Default)]
pub struct FeatCache {
    slots: Vec<Slot>,
    next: usize,
}

impl FeatCache {
    pub fn start_chunk(&mut self) {
        self.next = 0;
    }

    fn claim(&mut self) -> usize {
        if self.next == self.slots.len() {
            self.slots.push(Slot::Empty);
        }
        self.next += 1;
        self.next - 1
    }
}

fn frames(x: &Tensor) -> usize {
    x.dim(1).unwrap_or(0)
}

fn last_frames(x: &Tensor, n: usize) -> Result<Tensor> {
    let t = frames(x);
    let n = n.min(t);
    // A copy of these frames alone (`copy` would clone the whole storage), so the cache does not
    // keep the whole activation alive.
    x.narrow(1, t - n, n)?.force_contiguous()
}

/// `[b, t, c, h, w]` -> `[b*t, c, h, w]` and back.
fn fold_frames(x: &Tensor) -> Result<(Tensor, usize, usize)> {
    let (b, t, c, h, w) = x.dims5()?;
    Ok((x.reshape((b * t, c, h, w))?, b, t))
}

fn unfold_frames(x: &Tensor, b: usize, t: usize) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    x.reshape((b, t, c, h, w))
}

/// `Conv3d` that pads time on the front only (causal), optionally taking the previous chunk's
/// frames in place of that padding.
pub struct CausalConv3d {
    /// `[out, kt * in, kh, kw]`: the temporal taps in front of the input channels ([`FrameConv`]).
    weight: Tensor,
    bias: Tensor,
    conv: FrameConv,
    pad_t: usize,
}

impl CausalConv3d {
    pub fn new(
        vb: VarBuilder,
        in_c: usize,
        out_c: usize,
        kernel: (usize, usize, usize),
        stride_t: usize,
        padding: (usize, usize),
    ) -> Result<Self> {
        let (kt, kh, kw) = kernel;
        let weight = vb
            .get((out_c, in_c, kt, kh, kw), "weight")?
            .permute((0, 2, 1, 3, 4))?
            .reshape((out_c, kt * in_c, kh, kw))?;
        Ok(Self {
            weight,
            bias: vb.get(out_c, "bias")?,
            conv: FrameConv {
                taps: kt,
                stride_t,
                pad: padding.1,
                stride: 1,
            },
            pad_t: 2 * padding.0,
        })
    }

    pub fn forward(&self, x: &Tensor, cache: Option<&Tensor>) -> Result<Tensor> {
        let mut front = self.pad_t;
        let x = match cache {
            Some(prev) if self.pad_t > 0 => {
                front = front.saturating_sub(frames(prev));
                Tensor::cat(&[prev, x], 1)?
            }
            _ => x.clone(),
        };
        let x = if front > 0 {
            x.pad_with_zeros(1, front, 0)?
        } else {
            x
        };
        self.convolve(&x)
    }

    /// The convolution of an input already padded in time.
    fn convolve(&self, padded: &Tensor) -> Result<Tensor> {
        section("vae.conv3d", padded.device(), || {
            crate::fused::frame_conv(
                padded,
                &self.weight,
                &self.bias,
                self.conv,
                &Epilogue::default(),
            )
        })
    }

    /// The reference's chunked call: the conv reads the previous chunk's last `CACHE_FRAMES`
    /// input frames (zeros before the first chunk) in front of this chunk's, and keeps the last
    /// `CACHE_FRAMES` frames of that input for the next chunk. For a causal kernel-3 conv this is
    /// exactly the reference's bookkeeping (it keeps up to two frames, topped up from the previous
    /// chunk, and zero-pads what is missing).
    pub fn forward_cached(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        self.forward_cached_with(x, cache, |input| {
            input.slice_set(&x.contiguous()?, 1, CACHE_FRAMES)
        })
    }

    /// [`Self::forward_cached`] of `silu(norm(x))`, the norm written straight behind the cached
    /// frames (no separate activation, no concatenation copy: at full resolution each is hundreds
    /// of MiB of the decoder's peak).
    pub fn forward_cached_normed(
        &self,
        norm: &RmsNorm,
        x: &Tensor,
        cache: &mut FeatCache,
    ) -> Result<Tensor> {
        self.forward_cached_with(x, cache, |input| {
            norm.forward_silu_into(x, input, CACHE_FRAMES)
        })
    }

    /// Builds the conv's input `[cached frames, fill]`, where `fill` writes the chunk's
    /// `frames(x)` frames behind the cached ones, convolves it and caches its last frames.
    fn forward_cached_with(
        &self,
        x: &Tensor,
        cache: &mut FeatCache,
        fill: impl FnOnce(&Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        if self.pad_t != CACHE_FRAMES {
            candle_core::bail!(
                "a cached causal conv pads {CACHE_FRAMES} frames in front, this one {}",
                self.pad_t
            );
        }
        let (b, t, c, h, w) = x.dims5()?;
        let idx = cache.claim();
        let front = match std::mem::replace(&mut cache.slots[idx], Slot::Empty) {
            Slot::Frames(prev) if prev.dims() == [b, CACHE_FRAMES, c, h, w] => prev,
            Slot::Empty => Tensor::zeros((b, CACHE_FRAMES, c, h, w), x.dtype(), x.device())?,
            _ => candle_core::bail!("the VAE's chunk cache is out of step with its layers"),
        };
        // SAFETY: every element is written before the buffer is read: the first CACHE_FRAMES
        // frames by `slice_set` below, the others by `fill`, and `fill` failing drops it unread.
        let input =
            unsafe { Tensor::empty((b, CACHE_FRAMES + t, c, h, w), x.dtype(), x.device()) }?;
        input.slice_set(&front, 1, 0)?;
        drop(front);
        fill(&input)?;
        let y = self.convolve(&input)?;
        cache.slots[idx] = Slot::Frames(last_frames(&input, CACHE_FRAMES)?);
        Ok(y)
    }
}

/// A plain 2D convolution applied to every frame.
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    conv: FrameConv,
}

impl Conv2d {
    pub fn new(
        vb: VarBuilder,
        in_c: usize,
        out_c: usize,
        kernel: usize,
        padding: usize,
        stride: usize,
    ) -> Result<Self> {
        Ok(Self {
            weight: vb.get((out_c, in_c, kernel, kernel), "weight")?,
            bias: vb.get(out_c, "bias")?,
            conv: FrameConv {
                taps: 1,
                stride_t: 1,
                pad: padding,
                stride,
            },
        })
    }
}

impl Module for Conv2d {
    /// `x`: `[n, c, h, w]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        section("vae.conv2d", x.device(), || {
            let (n, c, h, w) = x.dims4()?;
            let y = crate::fused::frame_conv(
                &x.reshape((1, n, c, h, w))?,
                &self.weight,
                &self.bias,
                self.conv,
                &Epilogue::default(),
            )?;
            y.squeeze(0)
        })
    }
}

/// L2-normalises over channels, then scales by `sqrt(channels) * gamma` (the reference's `WanRMS_norm`).
pub struct RmsNorm {
    scale: Tensor,
}

impl RmsNorm {
    pub fn new(vb: VarBuilder, dim: usize, images: bool) -> Result<Self> {
        let gamma = if images {
            vb.get((dim, 1, 1), "gamma")?
        } else {
            vb.get((dim, 1, 1, 1), "gamma")?
        };
        let scale = (gamma.reshape((dim, 1, 1))? * (dim as f64).sqrt())?;
        Ok(Self { scale })
    }

    /// Normalises over `channel_dim` of `x`, whose trailing dims are `[c, h, w]`.
    pub fn forward(&self, x: &Tensor, channel_dim: usize) -> Result<Tensor> {
        section("vae.norm", x.device(), || match crate::fused::channel_norm(
            x,
            &self.scale,
            channel_dim,
            ChannelDivisor::L2,
            false,
        )? {
            Some(y) => Ok(y),
            None => self.forward_inner(x, channel_dim),
        })
    }

    /// [`Self::forward_silu`] over the channels (dim 2) of `x` `[b, t, c, h, w]`, written into
    /// frames `[offset, offset + t)` of `buf` `[b, t', c, h, w]`.
    pub fn forward_silu_into(&self, x: &Tensor, buf: &Tensor, offset: usize) -> Result<()> {
        let view = buf.narrow(1, offset, frames(x))?;
        let fused = section("vae.norm+silu", x.device(), || {
            crate::fused::channel_norm_into(&view, x, &self.scale, 2, true)
        })?;
        if !fused {
            buf.slice_set(&self.forward_silu(x, 2)?, 1, offset)?;
        }
        Ok(())
    }

    /// `silu(forward(x))`, one fused pass on CUDA bf16.
    pub fn forward_silu(&self, x: &Tensor, channel_dim: usize) -> Result<Tensor> {
        section(
            "vae.norm+silu",
            x.device(),
            || match crate::fused::channel_norm(
                x,
                &self.scale,
                channel_dim,
                ChannelDivisor::L2,
                true,
            )? {
                Some(y) => Ok(y),
                None => candle_nn::ops::silu(&self.forward_inner(x, channel_dim)?),
            },
        )
    }

    fn forward_inner(&self, x: &Tensor, channel_dim: usize) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let norm = xf.sqr()?.sum_keepdim(channel_dim)?.sqrt()?.maximum(1e-12)?;
        xf.broadcast_div(&norm)?
            .to_dtype(dtype)?
            .broadcast_mul(&self.scale.to_dtype(dtype)?)
    }
}

pub struct ResidualBlock {
    norm1: RmsNorm,
    conv1: CausalConv3d,
    norm2: RmsNorm,
    conv2: CausalConv3d,
    shortcut: Option<CausalConv3d>,
}

impl ResidualBlock {
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let conv3 = |vb, i, o| CausalConv3d::new(vb, i, o, (3, 3, 3), 1, (1, 1));
        Ok(Self {
            norm1: RmsNorm::new(vb.pp("norm1"), in_dim, false)?,
            conv1: conv3(vb.pp("conv1"), in_dim, out_dim)?,
            norm2: RmsNorm::new(vb.pp("norm2"), out_dim, false)?,
            conv2: conv3(vb.pp("conv2"), out_dim, out_dim)?,
            shortcut: if in_dim != out_dim {
                Some(CausalConv3d::new(
                    vb.pp("conv_shortcut"),
                    in_dim,
                    out_dim,
                    (1, 1, 1),
                    1,
                    (0, 0),
                )?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let dev = x.device();
        let h = match &self.shortcut {
            Some(conv) => conv.forward(x, None)?,
            None => x.clone(),
        };
        // Reassigned rather than shadowed: a shadowed tensor lives to the end of the scope, and
        // at full resolution each of these is hundreds of MiB.
        let mut y = self.conv1.forward_cached_normed(&self.norm1, x, cache)?;
        y = self.conv2.forward_cached_normed(&self.norm2, &y, cache)?;
        section("vae.residual_add", dev, || y + h)
    }
}

/// Single-head self-attention over the pixels of each frame.
pub struct AttentionBlock {
    norm: RmsNorm,
    to_qkv: Conv2d,
    proj: Conv2d,
}

impl AttentionBlock {
    pub fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Self {
            norm: RmsNorm::new(vb.pp("norm"), dim, true)?,
            to_qkv: Conv2d::new(vb.pp("to_qkv"), dim, 3 * dim, 1, 0, 1)?,
            proj: Conv2d::new(vb.pp("proj"), dim, dim, 1, 0, 1)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        section("vae.attention", x.device(), || self.forward_inner(x))
    }

    fn forward_inner(&self, x: &Tensor) -> Result<Tensor> {
        let (folded, b, t) = fold_frames(x)?;
        let (n, c, h, w) = folded.dims4()?;
        let qkv = self.to_qkv.forward(&self.norm.forward(&folded, 1)?)?;
        // [n, 3c, h*w] -> [n, h*w, 3c], split into q, k, v of `c` channels each.
        let qkv = qkv.reshape((n, 3 * c, h * w))?.transpose(1, 2)?;
        let part = |i: usize| qkv.narrow(2, i * c, c)?.contiguous();
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let scores = (q.matmul(&k.t()?)? / (c as f64).sqrt())?;
        let attn = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?;
        let out = attn.transpose(1, 2)?.reshape((n, c, h, w))?;
        let out = self.proj.forward(&out)?;
        unfold_frames(&out, b, t)? + x
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ResampleMode {
    Upsample2d,
    Upsample3d,
    Downsample2d,
    Downsample3d,
}

/// Spatial 2x resampling, plus a temporal 2x step for the 3D modes.
pub struct Resample {
    mode: ResampleMode,
    conv: Conv2d,
    time_conv: Option<CausalConv3d>,
}

impl Resample {
    pub fn new(vb: VarBuilder, dim: usize, mode: ResampleMode, up_out_dim: usize) -> Result<Self> {
        use ResampleMode::*;
        let conv = match mode {
            Upsample2d | Upsample3d => Conv2d::new(vb.pp("resample.1"), dim, up_out_dim, 3, 1, 1)?,
            Downsample2d | Downsample3d => Conv2d::new(vb.pp("resample.1"), dim, dim, 3, 0, 2)?,
        };
        let time_conv = match mode {
            Upsample3d => Some(CausalConv3d::new(
                vb.pp("time_conv"),
                dim,
                2 * dim,
                (3, 1, 1),
                1,
                (1, 0),
            )?),
            Downsample3d => Some(CausalConv3d::new(
                vb.pp("time_conv"),
                dim,
                dim,
                (3, 1, 1),
                2,
                (0, 0),
            )?),
            _ => None,
        };
        Ok(Self {
            mode,
            conv,
            time_conv,
        })
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let mut x = x.clone();
        if let (ResampleMode::Upsample3d, Some(time_conv)) = (self.mode, &self.time_conv) {
            x = self.upsample_time(&x, time_conv, cache)?;
        }
        let (folded, b, t) = fold_frames(&x)?;
        let folded = match self.mode {
            ResampleMode::Upsample2d | ResampleMode::Upsample3d => {
                let (_, _, h, w) = folded.dims4()?;
                section("vae.upsample", folded.device(), || {
                    folded.upsample_nearest2d(2 * h, 2 * w)
                })?
            }
            // The reference pads one zero row/column at the bottom/right before the stride-2 conv.
            _ => folded.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?,
        };
        x = unfold_frames(&self.conv.forward(&folded)?, b, t)?;
        if let (ResampleMode::Downsample3d, Some(time_conv)) = (self.mode, &self.time_conv) {
            x = self.downsample_time(&x, time_conv, cache)?;
        }
        Ok(x)
    }

    /// Doubles the frame count, except on the first chunk, which passes through (one image frame).
    fn upsample_time(
        &self,
        x: &Tensor,
        conv: &CausalConv3d,
        cache: &mut FeatCache,
    ) -> Result<Tensor> {
        let idx = cache.claim();
        let y = match cache.slots[idx].clone() {
            Slot::Empty => {
                cache.slots[idx] = Slot::FirstChunkSeen;
                return Ok(x.clone());
            }
            Slot::FirstChunkSeen => {
                let mut keep = last_frames(x, CACHE_FRAMES)?;
                if frames(&keep) < CACHE_FRAMES {
                    keep = Tensor::cat(&[&keep.zeros_like()?, &keep], 1)?;
                }
                let y = conv.forward(x, None)?;
                cache.slots[idx] = Slot::Frames(keep);
                y
            }
            Slot::Frames(prev) => {
                let mut keep = last_frames(x, CACHE_FRAMES)?;
                if frames(&keep) < CACHE_FRAMES {
                    keep = Tensor::cat(&[&last_frames(&prev, 1)?, &keep], 1)?;
                }
                let y = conv.forward(x, Some(&prev))?;
                cache.slots[idx] = Slot::Frames(keep);
                y
            }
        };
        // Channels [0, c) are the first of each frame pair, [c, 2c) the second.
        let (b, t, c2, h, w) = y.dims5()?;
        y.reshape((b, t * 2, c2 / 2, h, w))
    }

    /// Halves the frame count, except on the first chunk, which is kept (one image frame).
    fn downsample_time(
        &self,
        x: &Tensor,
        conv: &CausalConv3d,
        cache: &mut FeatCache,
    ) -> Result<Tensor> {
        let idx = cache.claim();
        match cache.slots[idx].clone() {
            Slot::Frames(prev) => {
                let keep = last_frames(x, 1)?;
                let y = conv.forward(&Tensor::cat(&[&last_frames(&prev, 1)?, x], 1)?, None)?;
                cache.slots[idx] = Slot::Frames(keep);
                Ok(y)
            }
            _ => {
                cache.slots[idx] = Slot::Frames(x.copy()?);
                Ok(x.clone())
            }
        }
    }
}

/// Wan 2.2 encoder shortcut: space/time-to-channel reshape, then the mean over channel groups.
pub struct AvgDown3d {
    out_c: usize,
    factor_t: usize,
    factor_s: usize,
}

impl AvgDown3d {
    pub fn new(in_c: usize, out_c: usize, factor_t: usize, factor_s: usize) -> Result<Self> {
        if !(in_c * factor_t * factor_s * factor_s).is_multiple_of(out_c) {
            candle_core::bail!(
                "AvgDown3D: {in_c} channels times factor {} not divisible by {out_c}",
                factor_t * factor_s * factor_s
            );
        }
        Ok(Self {
            out_c,
            factor_t,
            factor_s,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (ft, fs) = (self.factor_t, self.factor_s);
        let pad_t = (ft - frames(x) % ft) % ft;
        let x = pixel_unshuffle_3d(&x.pad_with_zeros(1, pad_t, 0)?, (ft, fs, fs))?;
        let (b, t2, c, h2, w2) = x.dims5()?;
        x.reshape((b, t2, self.out_c, c / self.out_c, h2, w2))?
            .mean(3)
    }
}

/// Wan 2.2 decoder shortcut: channel repetition, then channel-to-space/time reshape.
pub struct DupUp3d {
    out_c: usize,
    factor_t: usize,
    factor_s: usize,
    repeats: usize,
}

impl DupUp3d {
    pub fn new(in_c: usize, out_c: usize, factor_t: usize, factor_s: usize) -> Result<Self> {
        let factor = factor_t * factor_s * factor_s;
        if !(out_c * factor).is_multiple_of(in_c) {
            candle_core::bail!(
                "DupUp3D: {out_c} channels times factor {factor} not divisible by {in_c}"
            );
        }
        Ok(Self {
            out_c,
            factor_t,
            factor_s,
            repeats: out_c * factor / in_c,
        })
    }

    pub fn forward(&self, x: &Tensor, first_chunk: bool) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        let (ft, fs) = (self.factor_t, self.factor_s);
        let x = x
            .unsqueeze(3)?
            .broadcast_as((b, t, c, self.repeats, h, w))?
            .contiguous()?
            .reshape(vec![b, t, self.out_c, ft, fs, fs, h, w])?
            .permute([0, 1, 3, 2, 6, 4, 7, 5])?
            .contiguous()?
            .reshape((b, t * ft, self.out_c, h * fs, w * fs))?;
        if first_chunk {
            x.narrow(1, ft - 1, t * ft - (ft - 1))
        } else {
            Ok(x)
        }
    }
}

/// RMS norm, SiLU and a cached causal conv: the head of the encoder and the decoder.
pub struct Head {
    norm: RmsNorm,
    conv: CausalConv3d,
}

impl Head {
    pub fn new(vb: VarBuilder, in_c: usize, out_c: usize) -> Result<Self> {
        Ok(Self {
            norm: RmsNorm::new(vb.pp("norm_out"), in_c, false)?,
            conv: CausalConv3d::new(vb.pp("conv_out"), in_c, out_c, (3, 3, 3), 1, (1, 1))?,
        })
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        self.conv.forward_cached_normed(&self.norm, x, cache)
    }
}

/// Residual, attention, residual: the middle of the encoder and the decoder.
pub struct MidBlock {
    first: ResidualBlock,
    attention: AttentionBlock,
    second: ResidualBlock,
}

impl MidBlock {
    pub fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Self {
            first: ResidualBlock::new(vb.pp("resnets.0"), dim, dim)?,
            attention: AttentionBlock::new(vb.pp("attentions.0"), dim)?,
            second: ResidualBlock::new(vb.pp("resnets.1"), dim, dim)?,
        })
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let x = self.first.forward(x, cache)?;
        let x = self.attention.forward(&x)?;
        self.second.forward(&x, cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Storage};
    use candle_nn::VarBuilder;

    /// Elements held by the storage behind `t` (not just its view).
    fn storage_len(t: &Tensor) -> usize {
        let (storage, _) = t.storage_and_layout();
        match &*storage {
            Storage::Cpu(cpu) => cpu.as_slice::<f32>().unwrap().len(),
            _ => unreachable!("the test runs on the CPU"),
        }
    }

    #[test]
    fn cached_conv_keeps_only_its_cached_frames_in_memory() {
        let dev = Device::Cpu;
        let vb = VarBuilder::from_tensors(
            [
                (
                    "weight".to_string(),
                    Tensor::ones((4, 4, 3, 3, 3), DType::F32, &dev).unwrap(),
                ),
                (
                    "bias".to_string(),
                    Tensor::zeros(4, DType::F32, &dev).unwrap(),
                ),
            ]
            .into(),
            DType::F32,
            &dev,
        );
        let conv = CausalConv3d::new(vb, 4, 4, (3, 3, 3), 1, (1, 1)).unwrap();
        let mut cache = FeatCache::default();
        for t in [1, 4, 4] {
            cache.start_chunk();
            let x = Tensor::randn(0f32, 1f32, (1, t, 4, 8, 8), &dev).unwrap();
            conv.forward_cached(&x, &mut cache).unwrap();
            let Slot::Frames(kept) = &cache.slots[0] else {
                panic!("the conv cached nothing")
            };
            assert_eq!(kept.dims(), [1, CACHE_FRAMES, 4, 8, 8]);
            // A view of the whole chunk would keep every frame of it alive.
            assert_eq!(storage_len(kept), CACHE_FRAMES * 4 * 8 * 8);
        }
    }
}
