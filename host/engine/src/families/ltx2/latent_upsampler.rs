//! `LTX2LatentUpsamplerModel`, following diffusers' `pipelines/ltx2/latent_upsampler.py`: the
//! latent upsampler of LTX-2's two-stage generation (x2 spatially by default; any scale of the
//! rational resampler, temporal or spatio-temporal by config), on the VAE's un-normalised latents
//! `[B, C, F, H, W]`. Res blocks of 2-D (frames folded into the batch) or 3-D convolutions around
//! one upsampling stage.
//!
//! The steps `LTX2LatentUpsamplePipeline` (`pipeline_ltx2_latent_upsample.py`) takes around the
//! model are here too: [`adain_filter_latent`] and [`tone_map_latents`], and, shared with the
//! other LTX-2 pipelines and re-exported from where they live, [`denormalize_latents`] (and
//! [`normalize_latents`]) with the VAE's statistics and [`unpack_latents`] of packed token latents.

pub use super::pipeline::unpack_latents;
use super::video_vae::video_channels;
pub use super::video_vae::{denormalize_latents, normalize_latents};
use crate::loader::single_file::{self, OriginalLayout};
use crate::models::GroupNorm;
use crate::models::conv::{Conv2d, Conv3d, PaddingMode, conv_dtype};
use crate::models::pixel_shuffle::pixel_shuffle_3d;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::path::Path;

/// The reference config (`latent_upsampler/config.json`), field names and defaults as
/// `LTX2LatentUpsamplerModel.__init__`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct LTX2LatentUpsamplerConfig {
    pub in_channels: usize,
    pub mid_channels: usize,
    /// Res blocks before and after the upsampler (each).
    pub num_blocks_per_stage: usize,
    /// 2 (per-frame convolutions) or 3.
    pub dims: usize,
    pub spatial_upsample: bool,
    pub temporal_upsample: bool,
    /// The rational resampler's scale: 0.75, 1.5, 2.0 or 4.0.
    pub rational_spatial_scale: f64,
    /// Spatial-only upsampling through the rational resampler (else a x2 pixel shuffle).
    pub use_rational_resampler: bool,
}

impl Default for LTX2LatentUpsamplerConfig {
    fn default() -> Self {
        Self {
            in_channels: 128,
            mid_channels: 1024,
            num_blocks_per_stage: 4,
            dims: 3,
            spatial_upsample: true,
            temporal_upsample: false,
            rational_spatial_scale: 2.0,
            use_rational_resampler: true,
        }
    }
}

/// `RATIONAL_RESAMPLER_SCALE_MAPPING`: scale -> (upsampling numerator, downsampling denominator).
const RATIONAL_SCALES: [(f64, (usize, usize)); 4] =
    [(0.75, (3, 4)), (1.5, (3, 2)), (2.0, (2, 1)), (4.0, (4, 1))];

/// The groups of every `GroupNorm` of the model.
const GROUPS: usize = 32;

impl LTX2LatentUpsamplerConfig {
    /// The rational resampler's (numerator, denominator).
    fn rational(&self) -> std::result::Result<(usize, usize), String> {
        RATIONAL_SCALES
            .iter()
            .find(|(scale, _)| *scale == self.rational_spatial_scale)
            .map(|(_, ratio)| *ratio)
            .ok_or_else(|| {
                format!(
                    "rational_spatial_scale {} is not supported; supported scales are 0.75, 1.5, 2.0, 4.0",
                    self.rational_spatial_scale
                )
            })
    }

    /// How much the model enlarges height and width, as (numerator, denominator): the rational
    /// resampler's scale, 2 for the pixel-shuffle stages, 1 for a temporal-only upsampler.
    pub fn spatial_scale(&self) -> std::result::Result<(usize, usize), String> {
        match (self.spatial_upsample, self.temporal_upsample) {
            (false, _) => Ok((1, 1)),
            (true, false) if self.use_rational_resampler => self.rational(),
            (true, _) => Ok((2, 1)),
        }
    }

    /// Every combination the reference could not run fails here, by field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.dims != 2 && self.dims != 3 {
            return Err(format!("dims must be 2 or 3, got {}", self.dims));
        }
        if !self.spatial_upsample && !self.temporal_upsample {
            return Err("either spatial_upsample or temporal_upsample must be true".into());
        }
        if self.dims == 2 && self.temporal_upsample {
            return Err(
                "temporal_upsample needs dims 3 (with dims 2 the frames are folded into the batch)"
                    .into(),
            );
        }
        if self.in_channels == 0
            || self.mid_channels == 0
            || !self.mid_channels.is_multiple_of(GROUPS)
        {
            return Err(format!(
                "in_channels ({}) must be positive and mid_channels ({}) a positive multiple of the {GROUPS} GroupNorm groups",
                self.in_channels, self.mid_channels
            ));
        }
        if self.spatial_upsample && !self.temporal_upsample && self.use_rational_resampler {
            self.rational()?;
        }
        Ok(())
    }
}

/// `nn.Conv3d(in, out, 3, padding=1)` on videos `[B, C, F, H, W]`: the frames-major [`Conv3d`]
/// with time zero-padded too.
struct VideoConv(Conv3d);

impl VideoConv {
    fn load(vb: VarBuilder, in_channels: usize, out_channels: usize) -> Result<Self> {
        let conv = Conv3d::load(
            vb,
            in_channels,
            out_channels,
            (3, 3),
            (1, 1),
            PaddingMode::Zeros,
        )?;
        Ok(Self(conv))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let frames = x
            .permute((0, 2, 1, 3, 4))?
            .pad_with_zeros(1, 1, 1)?
            .contiguous()?;
        self.0
            .forward(&frames)?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()
    }
}

/// `PixelShuffleND` of videos `[B, C·st·sh·sw, F, H, W]` -> `[B, C, F·st, H·sh, W·sw]`.
fn shuffle_video(x: &Tensor, factors: (usize, usize, usize)) -> Result<Tensor> {
    let frames = x.permute((0, 2, 1, 3, 4))?.contiguous()?;
    pixel_shuffle_3d(&frames, factors)?
        .permute((0, 2, 1, 3, 4))?
        .contiguous()
}

/// A 2-D convolution of frames `[N, C, H, W]` or a 3-D one of videos `[B, C, F, H, W]`, by `dims`.
enum ConvNd {
    Two(Conv2d),
    Three(VideoConv),
}

impl ConvNd {
    /// `ConvNd(in, out, kernel_size=3, padding=1)`.
    fn new(dims: usize, in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(if dims == 2 {
            Self::Two(Conv2d::load(vb, in_channels, out_channels, 3, 1, true)?)
        } else {
            Self::Three(VideoConv::load(vb, in_channels, out_channels)?)
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Two(conv) => conv.forward(x),
            Self::Three(conv) => conv.forward(x),
        }
    }
}

/// `ResBlock`: conv, norm, SiLU, conv, norm, then SiLU of the sum with the input.
struct ResBlock {
    conv1: ConvNd,
    norm1: GroupNorm,
    conv2: ConvNd,
    norm2: GroupNorm,
}

impl ResBlock {
    fn new(channels: usize, dims: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: ConvNd::new(dims, channels, channels, vb.pp("conv1"))?,
            norm1: GroupNorm::new(channels, GROUPS, 1e-5, vb.pp("norm1"))?,
            conv2: ConvNd::new(dims, channels, channels, vb.pp("conv2"))?,
            norm2: GroupNorm::new(channels, GROUPS, 1e-5, vb.pp("norm2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.norm1.forward_silu(&self.conv1.forward(x)?)?;
        let h = self.norm2.forward(&self.conv2.forward(&h)?)?;
        (h + x)?.silu()
    }
}

/// `BlurDownsample(dims=2, stride)`: anti-aliased downsampling of frames `[N, C, H, W]` by a
/// depthwise 5x5 binomial filter with `stride` (identity at stride 1).
pub struct BlurDownsample {
    stride: usize,
    /// `[1, 1, 5, 5]`, summing to 1.
    kernel: Tensor,
}

/// The filter's size: the reference's default, which no config changes.
const BLUR_KERNEL: usize = 5;

impl BlurDownsample {
    /// With the binomial filter the reference's constructor builds.
    pub fn binomial(stride: usize, device: &Device) -> Result<Self> {
        let row: Vec<f32> = (0..BLUR_KERNEL)
            .map(|k| binomial_coefficient(BLUR_KERNEL - 1, k) as f32)
            .collect();
        let sum: f32 = row.iter().sum::<f32>().powi(2);
        let kernel: Vec<f32> = row
            .iter()
            .flat_map(|a| row.iter().map(move |b| a * b / sum))
            .collect();
        Ok(Self {
            stride,
            kernel: Tensor::from_vec(kernel, (1, 1, BLUR_KERNEL, BLUR_KERNEL), device)?,
        })
    }

    /// The checkpoint's `kernel` buffer where it holds one (as the reference loads it), else the
    /// binomial filter.
    fn load(stride: usize, vb: VarBuilder) -> Result<Self> {
        if vb.contains_tensor("kernel") {
            return Ok(Self {
                stride,
                kernel: vb.get((1, 1, BLUR_KERNEL, BLUR_KERNEL), "kernel")?,
            });
        }
        Self::binomial(stride, vb.device())
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.stride == 1 {
            return Ok(x.clone());
        }
        let channels = x.dim(1)?;
        let dtype = conv_dtype(x);
        let weight = self
            .kernel
            .to_dtype(dtype)?
            .broadcast_as((channels, 1, BLUR_KERNEL, BLUR_KERNEL))?
            .contiguous()?;
        x.to_dtype(dtype)?
            .conv2d(&weight, BLUR_KERNEL / 2, self.stride, 1, channels)?
            .to_dtype(x.dtype())
    }
}

fn binomial_coefficient(n: usize, k: usize) -> usize {
    (0..k).fold(1, |acc, i| acc * (n - i) / (i + 1))
}

/// The upsampling stage, by the config's options.
enum Upsampler {
    /// `SpatialRationalResampler`: conv to `num²` times the channels, pixel shuffle by `num`, blur
    /// down by `den`, per frame.
    Rational {
        conv: Conv2d,
        num: usize,
        blur_down: BlurDownsample,
    },
    /// `Conv2d(mid, 4·mid)` + `PixelShuffleND(2)`, per frame.
    Spatial(Conv2d),
    /// `Conv3d(mid, 2·mid)` + `PixelShuffleND(1)`.
    Temporal(VideoConv),
    /// `Conv3d(mid, 8·mid)` + `PixelShuffleND(3)`.
    SpatioTemporal(VideoConv),
}

impl Upsampler {
    fn new(cfg: &LTX2LatentUpsamplerConfig, vb: VarBuilder) -> Result<Self> {
        let mid = cfg.mid_channels;
        Ok(match (cfg.spatial_upsample, cfg.temporal_upsample) {
            (true, true) => Self::SpatioTemporal(VideoConv::load(vb.pp(0), mid, 8 * mid)?),
            (false, true) => Self::Temporal(VideoConv::load(vb.pp(0), mid, 2 * mid)?),
            _ if cfg.use_rational_resampler => {
                let (num, den) = cfg.rational().map_err(candle_core::Error::Msg)?;
                Self::Rational {
                    conv: Conv2d::load(vb.pp("conv"), mid, num * num * mid, 3, 1, true)?,
                    num,
                    blur_down: BlurDownsample::load(den, vb.pp("blur_down"))?,
                }
            }
            _ => Self::Spatial(Conv2d::load(vb.pp(0), mid, 4 * mid, 3, 1, true)?),
        })
    }

    /// Frames `[N, C, H, W]` for the spatial stages, videos `[B, C, F, H, W]` for the others.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Rational {
                conv,
                num,
                blur_down,
            } => blur_down.forward(&candle_nn::ops::pixel_shuffle(&conv.forward(x)?, *num)?),
            Self::Spatial(conv) => candle_nn::ops::pixel_shuffle(&conv.forward(x)?, 2),
            Self::Temporal(conv) => shuffle_video(&conv.forward(x)?, (2, 1, 1)),
            Self::SpatioTemporal(conv) => shuffle_video(&conv.forward(x)?, (2, 2, 2)),
        }
    }
}

/// `[B, C, F, H, W]` -> `[B·F, C, H, W]`.
fn fold_frames(x: &Tensor) -> Result<Tensor> {
    let (b, c, f, h, w) = x.dims5()?;
    x.permute((0, 2, 1, 3, 4))?
        .contiguous()?
        .reshape((b * f, c, h, w))
}

/// `[B·F, C, H, W]` -> `[B, C, F, H, W]`.
fn unfold_frames(x: &Tensor, batch: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    x.reshape((batch, n / batch, c, h, w))?
        .permute((0, 2, 1, 3, 4))?
        .contiguous()
}

/// The LTX-2 latent upsampler.
pub struct LTX2LatentUpsamplerModel {
    config: LTX2LatentUpsamplerConfig,
    initial_conv: ConvNd,
    initial_norm: GroupNorm,
    res_blocks: Vec<ResBlock>,
    upsampler: Upsampler,
    post_upsample_res_blocks: Vec<ResBlock>,
    final_conv: ConvNd,
    dtype: DType,
}

impl LTX2LatentUpsamplerModel {
    pub fn new(cfg: &LTX2LatentUpsamplerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let (dims, mid) = (cfg.dims, cfg.mid_channels);
        let blocks = |name: &str| {
            (0..cfg.num_blocks_per_stage)
                .map(|i| ResBlock::new(mid, dims, vb.pp(name).pp(i)))
                .collect::<Result<Vec<_>>>()
        };
        Ok(Self {
            initial_conv: ConvNd::new(dims, cfg.in_channels, mid, vb.pp("initial_conv"))?,
            initial_norm: GroupNorm::new(mid, GROUPS, 1e-5, vb.pp("initial_norm"))?,
            res_blocks: blocks("res_blocks")?,
            upsampler: Upsampler::new(cfg, vb.pp("upsampler"))?,
            post_upsample_res_blocks: blocks("post_upsample_res_blocks")?,
            final_conv: ConvNd::new(dims, mid, cfg.in_channels, vb.pp("final_conv"))?,
            dtype: vb.dtype(),
            config: cfg.clone(),
        })
    }

    /// Reads a `latent_upsampler` folder (`config.json` and the memory-mapped weights), or
    /// the released `ltx-2-spatial-upscaler-x2-1.0.safetensors` (the same names; the reference's
    /// default config, which is that model's).
    pub fn load(path: &Path, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        let builder = single_file::Builder {
            layout: OriginalLayout::Ltx2LatentUpsampler,
            infer: |_| Ok(LTX2LatentUpsamplerConfig::default()),
            check: LTX2LatentUpsamplerConfig::validate,
            build: |config, vb| Self::new(config, vb),
        };
        Ok(single_file::load_model(path, builder, dtype, device)?.0)
    }

    pub fn config(&self) -> &LTX2LatentUpsamplerConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Latents `hidden_states` `[B, in_channels, F, H, W]` (un-normalised) to the upsampled
    /// latents, in the model's dtype: `[B, in_channels, F, H·s, W·s]` spatially, `2F - 1` frames
    /// temporally.
    pub fn forward(&self, hidden_states: &Tensor) -> Result<Tensor> {
        let channels = self.config.in_channels;
        let batch = match *hidden_states.dims() {
            [b, c, _, _, _] if c == channels => b,
            _ => candle_core::bail!(
                "hidden_states must have shape [batch, {channels}, frames, height, width] (in_channels = {channels}), got {:?}",
                hidden_states.dims()
            ),
        };
        let x = hidden_states.to_dtype(self.dtype)?;
        let stage = |x: &Tensor, blocks: &[ResBlock]| {
            blocks
                .iter()
                .try_fold(x.clone(), |x, block| block.forward(&x))
        };
        if self.config.dims == 2 {
            let x = self
                .initial_norm
                .forward_silu(&self.initial_conv.forward(&fold_frames(&x)?)?)?;
            let x = self.upsampler.forward(&stage(&x, &self.res_blocks)?)?;
            let x = stage(&x, &self.post_upsample_res_blocks)?;
            return unfold_frames(&self.final_conv.forward(&x)?, batch);
        }
        let x = self
            .initial_norm
            .forward_silu(&self.initial_conv.forward(&x)?)?;
        let x = stage(&x, &self.res_blocks)?;
        let x = if self.config.temporal_upsample {
            // The first output frame duplicates the causal first latent frame's padding: dropped.
            let x = self.upsampler.forward(&x)?;
            let frames = x.dim(2)?;
            x.narrow(2, 1, frames - 1)?
        } else {
            unfold_frames(&self.upsampler.forward(&fold_frames(&x)?)?, batch)?
        };
        let x = stage(&x, &self.post_upsample_res_blocks)?;
        self.final_conv.forward(&x)
    }
}

/// Per-(sample, channel) mean and unbiased standard deviation of `[B, C, ...]` in f32, each
/// `[B, C, 1]`, over the flattened rest.
fn std_mean(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let (b, c) = (x.dim(0)?, x.dim(1)?);
    let x = x.to_dtype(DType::F32)?.reshape((b, c, ()))?;
    let n = x.dim(2)?;
    let mean = x.mean_keepdim(2)?;
    let var = (x.broadcast_sub(&mean)?.sqr()?.sum_keepdim(2)? / (n as f64 - 1.0))?;
    Ok((var.sqrt()?, mean))
}

/// `adain_filter_latent`: each channel of `latents` given the mean and (unbiased) standard
/// deviation of that channel of `reference_latents` (same batch and channels, any size), then
/// blended with the original by `factor` (`lerp`). In f32; returns the dtype of `latents`.
pub fn adain_filter_latent(
    latents: &Tensor,
    reference_latents: &Tensor,
    factor: f64,
) -> Result<Tensor> {
    let channels = video_channels(latents, "adain_filter_latent")?;
    if video_channels(reference_latents, "adain_filter_latent")? != channels
        || reference_latents.dim(0)? != latents.dim(0)?
    {
        candle_core::bail!(
            "adain_filter_latent: reference latents of shape {:?} do not match the batch and channels of latents {:?}",
            reference_latents.dims(),
            latents.dims()
        );
    }
    let dims = latents.dims().to_vec();
    let (b, c) = (dims[0], dims[1]);
    let x = latents.to_dtype(DType::F32)?.reshape((b, c, ()))?;
    let (r_sd, r_mean) = std_mean(reference_latents)?;
    let (i_sd, i_mean) = std_mean(latents)?;
    let result = x
        .broadcast_sub(&i_mean)?
        .broadcast_div(&i_sd)?
        .broadcast_mul(&r_sd)?
        .broadcast_add(&r_mean)?;
    (&x + ((result - &x)? * factor)?)?
        .reshape(dims)?
        .to_dtype(latents.dtype())
}

/// `tone_map_latents`: a sigmoid-shaped compression of large magnitudes by `compression` in
/// [0, 1] (0: identity). In f32; returns the input dtype.
pub fn tone_map_latents(latents: &Tensor, compression: f64) -> Result<Tensor> {
    let scale_factor = compression * 0.75;
    let x = latents.to_dtype(DType::F32)?;
    let sigmoid_term = candle_nn::ops::sigmoid(&((x.abs()? - 1.0)? * (4.0 * scale_factor))?)?;
    let scales = ((sigmoid_term * (-0.8 * scale_factor))? + 1.0)?;
    (x * scales)?.to_dtype(latents.dtype())
}
