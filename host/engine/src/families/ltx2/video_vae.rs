//! `AutoencoderKLLTX2Video` (diffusers `models/autoencoders/autoencoder_kl_ltx2.py`): LTX-2's
//! causal 3-D video VAE (in the published config 32x spatial and 8x temporal compression, 128
//! latent channels), its encoder (posterior mode) and decoder (optionally conditioned on the
//! decode timestep), the reference's tiled and framewise (temporal-tile) decoding and encoding,
//! and the `latents_mean`/`latents_std` statistics the LTX-2 pipelines standardise latents with.
//!
//! Public tensors use the diffusers layout `[batch, channels, frames, height, width]`; inside,
//! video is frames-major `[batch, frames, channels, height, width]` so that every 3-D convolution
//! runs through [`Conv3d`] (a wide 2-D convolution over each window of frames).

use crate::fused::profile::section;
use crate::loader::single_file::{self, OriginalLayout};
use crate::models::conv::{Conv3d, PaddingMode};
use crate::models::embeddings::{TimestepEmbedding, timestep_features};
use crate::models::pixel_shuffle::{patchify, pixel_shuffle_3d, pixel_unshuffle_3d, unpatchify};
use crate::models::{LayerNorm, rms_normalize};
use candle_core::{DType, Device, Module, Result, Tensor, bail};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::path::Path;
use videosdgx_kernels::ChannelDivisor;

/// `PerChannelRMSNorm`'s epsilon (not configurable in the reference).
const RMS_EPS: f64 = 1e-8;
/// Channels of the sinusoidal timestep features of `PixArtAlphaCombinedTimestepSizeEmbeddings`.
const TIMESTEP_FEATURES: usize = 256;

/// A config field the reference accepts as one bool for every block or as one bool per block.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum PerBlock {
    All(bool),
    Each(Vec<bool>),
}

impl PerBlock {
    /// The per-block list; a single bool stands for `n` blocks, as the reference expands it.
    fn expand(&self, n: usize) -> Vec<bool> {
        match self {
            Self::All(flag) => vec![*flag; n],
            Self::Each(flags) => flags.clone(),
        }
    }
}

/// `config.json` of an `AutoencoderKLLTX2Video`, field names and defaults as the reference's
/// constructor.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct AutoencoderKLLTX2VideoConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub decoder_block_out_channels: Vec<usize>,
    pub layers_per_block: Vec<usize>,
    pub decoder_layers_per_block: Vec<usize>,
    pub spatio_temporal_scaling: PerBlock,
    pub decoder_spatio_temporal_scaling: PerBlock,
    pub decoder_inject_noise: PerBlock,
    pub downsample_type: Vec<String>,
    pub upsample_type: Vec<String>,
    pub upsample_residual: PerBlock,
    pub upsample_factor: Vec<usize>,
    pub timestep_conditioning: bool,
    pub patch_size: usize,
    pub patch_size_t: usize,
    pub resnet_norm_eps: f64,
    pub scaling_factor: f64,
    pub encoder_causal: bool,
    pub decoder_causal: bool,
    pub encoder_spatial_padding_mode: String,
    pub decoder_spatial_padding_mode: String,
    pub spatial_compression_ratio: Option<usize>,
    pub temporal_compression_ratio: Option<usize>,
}

impl Default for AutoencoderKLLTX2VideoConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 128,
            block_out_channels: vec![256, 512, 1024, 2048],
            down_block_types: vec!["LTX2VideoDownBlock3D".into(); 4],
            decoder_block_out_channels: vec![256, 512, 1024],
            layers_per_block: vec![4, 6, 6, 2, 2],
            decoder_layers_per_block: vec![5, 5, 5, 5],
            spatio_temporal_scaling: PerBlock::Each(vec![true; 4]),
            decoder_spatio_temporal_scaling: PerBlock::Each(vec![true; 3]),
            decoder_inject_noise: PerBlock::Each(vec![false; 4]),
            downsample_type: ["spatial", "temporal", "spatiotemporal", "spatiotemporal"]
                .map(String::from)
                .to_vec(),
            upsample_type: vec!["spatiotemporal".into(); 3],
            upsample_residual: PerBlock::Each(vec![true; 3]),
            upsample_factor: vec![2, 2, 2],
            timestep_conditioning: false,
            patch_size: 4,
            patch_size_t: 1,
            resnet_norm_eps: 1e-6,
            scaling_factor: 1.0,
            encoder_causal: true,
            decoder_causal: true,
            encoder_spatial_padding_mode: "zeros".into(),
            decoder_spatial_padding_mode: "reflect".into(),
            spatial_compression_ratio: None,
            temporal_compression_ratio: None,
        }
    }
}

impl AutoencoderKLLTX2VideoConfig {
    /// The encoder's scaling flags, a single bool expanded to `len(layers_per_block) - 1` blocks.
    fn encoder_scaling(&self) -> Vec<bool> {
        self.spatio_temporal_scaling
            .expand(self.layers_per_block.len().saturating_sub(1))
    }

    /// Pixels per latent pixel, as the reference computes it (the config's value, else
    /// `patch_size · 2^(scaling encoder blocks)`); the tiled paths divide tile sizes by it.
    pub fn spatial_compression_ratio(&self) -> usize {
        let scaled = self.encoder_scaling().iter().filter(|s| **s).count() as u32;
        self.spatial_compression_ratio
            .unwrap_or(self.patch_size * 2usize.pow(scaled))
    }

    /// Frames per latent frame (after the first), as the reference computes it.
    pub fn temporal_compression_ratio(&self) -> usize {
        let scaled = self.encoder_scaling().iter().filter(|s| **s).count() as u32;
        self.temporal_compression_ratio
            .unwrap_or(self.patch_size_t * 2usize.pow(scaled))
    }

    fn padding(name: &str, field: &str) -> std::result::Result<PaddingMode, String> {
        PaddingMode::from_name(name).ok_or_else(|| {
            format!("{field} `{name}` is not supported (zeros, reflect or replicate)")
        })
    }

    /// Options the reference accepts but this port cannot run, refused by name.
    fn check_supported(&self) -> std::result::Result<(), String> {
        if self.patch_size == 0 {
            return Err("patch_size is 0".into());
        }
        if self.patch_size_t != 1 {
            return Err(format!(
                "patch_size_t {} is not supported (the reference's encoder only runs patch_size_t 1)",
                self.patch_size_t
            ));
        }
        let noise = self
            .decoder_inject_noise
            .expand(self.decoder_layers_per_block.len());
        if noise.iter().any(|n| *n) {
            return Err(format!(
                "decoder_inject_noise {noise:?} is not supported: the injected noise comes from \
                 torch's random generator"
            ));
        }
        Self::padding(
            &self.encoder_spatial_padding_mode,
            "encoder_spatial_padding_mode",
        )?;
        Self::padding(
            &self.decoder_spatial_padding_mode,
            "decoder_spatial_padding_mode",
        )?;
        Ok(())
    }
}

/// `silu(PerChannelRMSNorm(x))` over the channels of frames-major `x`, modulated by
/// `(shift, scale)` before the SiLU where the timestep conditions it, in `x`'s dtype; one fused
/// kernel pass without modulation on CUDA.
fn norm_silu(x: &Tensor, modulation: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
    section("vae.norm+silu", x.device(), || {
        if modulation.is_none() {
            let ones = Tensor::ones(x.dim(2)?, DType::F32, x.device())?;
            let divisor = ChannelDivisor::Rms { eps: RMS_EPS };
            if let Some(y) = crate::fused::channel_norm(x, &ones, 2, divisor, true)? {
                return Ok(y);
            }
        }
        // `x / sqrt(mean(x², channels) + 1e-8)` in f32.
        let mut h = rms_normalize(x, 2, RMS_EPS)?;
        if let Some((shift, scale)) = modulation {
            h = modulate(&h, shift, scale)?;
        }
        h.silu()?.to_dtype(x.dtype())
    })
}

/// `h · (1 + scale) + shift` for per-sample `shift`/`scale` `[B, C]` (f32) over frames-major `h`.
fn modulate(h: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let as_channels = |t: &Tensor| -> Result<Tensor> {
        let (b, c) = t.dims2()?;
        t.reshape((b, 1, c, 1, 1))
    };
    h.broadcast_mul(&(as_channels(scale)? + 1.0)?)?
        .broadcast_add(&as_channels(shift)?)
}

/// Row `i` of each sample's `[B, rows·C]` embedding plus row `i` of `table` `[rows, C]`, in f32:
/// the reference's `temb.unflatten(1, (rows, -1)) + scale_shift_table`.
fn table_row(temb: &Tensor, table: &Tensor, i: usize) -> Result<Tensor> {
    let (rows, c) = table.dims2()?;
    let (b, _) = temb.dims2()?;
    temb.to_dtype(DType::F32)?
        .reshape((b, rows, c))?
        .narrow(1, i, 1)?
        .squeeze(1)?
        .broadcast_add(&table.narrow(0, i, 1)?.to_dtype(DType::F32)?)
}

/// `LTX2VideoCausalConv3d`: a [`Conv3d`] whose time is padded by repeating the first frame
/// (causal), or the first and last frames (not causal), chosen per call.
struct CausalConv3d {
    conv: Conv3d,
}

impl CausalConv3d {
    fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        stride: usize,
        mode: PaddingMode,
    ) -> Result<Self> {
        Ok(Self {
            conv: Conv3d::load(
                vb.pp("conv"),
                in_channels,
                out_channels,
                (3, 3),
                (stride, stride),
                mode,
            )?,
        })
    }

    fn forward(&self, x: &Tensor, causal: bool) -> Result<Tensor> {
        let k = self.conv.kernel_t();
        if causal {
            self.conv.forward_time_padded(x, k - 1, 0)
        } else {
            self.conv.forward_time_padded(x, (k - 1) / 2, (k - 1) / 2)
        }
    }
}

/// `LTX2VideoResnetBlock3d`: RMS norms, SiLU and causal convs, with a LayerNorm + 1x1x1 conv
/// shortcut where the width changes and scale/shift from the timestep embedding where the
/// decoder is timestep-conditioned.
struct ResnetBlock3d {
    conv1: CausalConv3d,
    conv2: CausalConv3d,
    norm3: Option<LayerNorm>,
    conv_shortcut: Option<Conv3d>,
    /// `[4, in_channels]`: shift 1, scale 1, shift 2, scale 2.
    scale_shift_table: Option<Tensor>,
}

impl ResnetBlock3d {
    fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        eps: f64,
        timestep_conditioning: bool,
        mode: PaddingMode,
    ) -> Result<Self> {
        let (norm3, conv_shortcut) = if in_channels != out_channels {
            (
                Some(LayerNorm::new(in_channels, eps, true, vb.pp("norm3"))?),
                Some(Conv3d::load(
                    vb.pp("conv_shortcut"),
                    in_channels,
                    out_channels,
                    (1, 1),
                    (1, 1),
                    PaddingMode::Zeros,
                )?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            conv1: CausalConv3d::new(vb.pp("conv1"), in_channels, out_channels, 1, mode)?,
            conv2: CausalConv3d::new(vb.pp("conv2"), out_channels, out_channels, 1, mode)?,
            norm3,
            conv_shortcut,
            scale_shift_table: timestep_conditioning
                .then(|| vb.get((4, in_channels), "scale_shift_table"))
                .transpose()?,
        })
    }

    /// `temb` `[B, 4·C]` is the block's timestep embedding where the block is conditioned.
    fn forward(&self, x: &Tensor, temb: Option<&Tensor>, causal: bool) -> Result<Tensor> {
        let modulation = match (&self.scale_shift_table, temb) {
            (Some(table), Some(temb)) => Some(
                (0..4)
                    .map(|i| table_row(temb, table, i))
                    .collect::<Result<Vec<_>>>()?,
            ),
            (Some(_), None) => bail!("a timestep-conditioned resnet got no timestep embedding"),
            _ => None,
        };
        let dev = x.device();
        let m = modulation.as_ref();
        let h = self
            .conv1
            .forward(&norm_silu(x, m.map(|m| (&m[0], &m[1])))?, causal)?;
        let h = self
            .conv2
            .forward(&norm_silu(&h, m.map(|m| (&m[2], &m[3])))?, causal)?;
        let mut shortcut = x.clone();
        if let Some(norm) = &self.norm3 {
            // LayerNorm over the channels, moved last and back.
            shortcut = section("vae.shortcut_norm", dev, || {
                norm.forward(&shortcut.permute((0, 1, 3, 4, 2))?)?
                    .permute((0, 1, 4, 2, 3))
            })?;
        }
        if let Some(conv) = &self.conv_shortcut {
            shortcut = conv.forward(&shortcut)?;
        }
        section("vae.residual_add", dev, || h + shortcut)
    }
}

/// `(t, h, w)` strides of the resamplers by their config names.
fn resample_stride(kind: &str) -> Option<(usize, usize, usize)> {
    Some(match kind {
        "spatial" => (1, 2, 2),
        "temporal" => (2, 1, 1),
        "spatiotemporal" => (2, 2, 2),
        _ => return None,
    })
}

/// `LTX2VideoDownsampler3d`: a causal conv to `out / (st·sh·sw)` channels, space/time folded into
/// channels, plus the input folded the same way and averaged over channel groups.
struct Downsampler3d {
    stride: (usize, usize, usize),
    group_size: usize,
    conv: CausalConv3d,
}

impl Downsampler3d {
    fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        stride: (usize, usize, usize),
        mode: PaddingMode,
    ) -> Result<Self> {
        let factor = stride.0 * stride.1 * stride.2;
        if !out_channels.is_multiple_of(factor)
            || !(in_channels * factor).is_multiple_of(out_channels)
        {
            bail!(
                "a {stride:?} downsampler from {in_channels} to {out_channels} channels needs \
                 the output width divisible by {factor} and {factor}x the input width divisible \
                 by it"
            );
        }
        Ok(Self {
            stride,
            group_size: in_channels * factor / out_channels,
            conv: CausalConv3d::new(vb.pp("conv"), in_channels, out_channels / factor, 1, mode)?,
        })
    }

    fn forward(&self, x: &Tensor, causal: bool) -> Result<Tensor> {
        let st = self.stride.0;
        let x = Tensor::cat(&[&x.narrow(1, 0, st - 1)?, x], 1)?;
        let residual = pixel_unshuffle_3d(&x, self.stride)?;
        let (b, t, c, h, w) = residual.dims5()?;
        let residual = residual
            .reshape((b, t, c / self.group_size, self.group_size, h, w))?
            .mean(3)?;
        let hidden = pixel_unshuffle_3d(&self.conv.forward(&x, causal)?, self.stride)?;
        hidden + residual
    }
}

/// `LTX2VideoUpsampler3d`: a causal conv to `in · st·sh·sw / upscale_factor` channels unfolded
/// into space/time, dropping the first `st - 1` frames; optionally plus the input unfolded the
/// same way and its channels tiled.
struct Upsampler3d {
    stride: (usize, usize, usize),
    residual: bool,
    upscale_factor: usize,
    conv: CausalConv3d,
}

impl Upsampler3d {
    fn new(
        vb: VarBuilder,
        in_channels: usize,
        stride: (usize, usize, usize),
        residual: bool,
        upscale_factor: usize,
        mode: PaddingMode,
    ) -> Result<Self> {
        let factor = stride.0 * stride.1 * stride.2;
        let conv_out = in_channels * factor / upscale_factor;
        if !(in_channels * factor).is_multiple_of(upscale_factor)
            || !conv_out.is_multiple_of(factor)
            || (residual
                && (!in_channels.is_multiple_of(factor) || !factor.is_multiple_of(upscale_factor)))
        {
            bail!(
                "a {stride:?} upsampler of {in_channels} channels cannot upscale by \
                 {upscale_factor} (residual: {residual})"
            );
        }
        Ok(Self {
            stride,
            residual,
            upscale_factor,
            conv: CausalConv3d::new(vb.pp("conv"), in_channels, conv_out, 1, mode)?,
        })
    }

    fn forward(&self, x: &Tensor, causal: bool) -> Result<Tensor> {
        let drop = self.stride.0 - 1;
        let trim = |t: Tensor| -> Result<Tensor> {
            let frames = t.dim(1)?;
            t.narrow(1, drop, frames - drop)
        };
        let hidden = self.conv.forward(x, causal)?;
        section("vae.upsample", x.device(), || {
            let hidden = trim(pixel_shuffle_3d(&hidden, self.stride)?)?;
            if !self.residual {
                return Ok(hidden);
            }
            let factor = self.stride.0 * self.stride.1 * self.stride.2;
            let residual = pixel_shuffle_3d(x, self.stride)?.repeat((
                1,
                1,
                factor / self.upscale_factor,
                1,
                1,
            ))?;
            hidden + trim(residual)?
        })
    }
}

/// `PixArtAlphaCombinedTimestepSizeEmbeddings(dim, 0)`: the 256 sinusoidal features of the
/// timestep through a `TimestepEmbedding`.
struct TimeEmbedder {
    timestep_embedder: TimestepEmbedding,
}

impl TimeEmbedder {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Self {
            timestep_embedder: TimestepEmbedding::new(
                TIMESTEP_FEATURES,
                dim,
                true,
                vb.pp("timestep_embedder"),
            )?,
        })
    }

    /// `timestep` `[B]` -> `[B, dim]` in the dtype of `like` (the reference's `hidden_dtype`).
    fn forward(&self, timestep: &Tensor, like: &Tensor) -> Result<Tensor> {
        let features = timestep_features(timestep, TIMESTEP_FEATURES)?.to_dtype(like.dtype())?;
        self.timestep_embedder
            .forward(&features)?
            .to_dtype(like.dtype())
    }
}

enum Downsampler {
    /// `downsample_type` `conv`: a stride-2 causal conv keeping the width.
    Conv(CausalConv3d),
    Fold(Downsampler3d),
}

/// `LTX2VideoDownBlock3D`.
struct DownBlock3d {
    resnets: Vec<ResnetBlock3d>,
    downsampler: Option<Downsampler>,
}

impl DownBlock3d {
    fn forward(&self, x: &Tensor, causal: bool) -> Result<Tensor> {
        let mut h = x.clone();
        for resnet in &self.resnets {
            h = resnet.forward(&h, None, causal)?;
        }
        match &self.downsampler {
            Some(Downsampler::Conv(conv)) => conv.forward(&h, causal),
            Some(Downsampler::Fold(down)) => down.forward(&h, causal),
            None => Ok(h),
        }
    }
}

/// `LTX2VideoMidBlock3d`.
struct MidBlock3d {
    time_embedder: Option<TimeEmbedder>,
    resnets: Vec<ResnetBlock3d>,
}

impl MidBlock3d {
    fn new(
        vb: VarBuilder,
        channels: usize,
        layers: usize,
        eps: f64,
        timestep_conditioning: bool,
        mode: PaddingMode,
    ) -> Result<Self> {
        Ok(Self {
            time_embedder: timestep_conditioning
                .then(|| TimeEmbedder::new(vb.pp("time_embedder"), channels * 4))
                .transpose()?,
            resnets: (0..layers)
                .map(|i| {
                    let vb = vb.pp(format!("resnets.{i}"));
                    ResnetBlock3d::new(vb, channels, channels, eps, timestep_conditioning, mode)
                })
                .collect::<Result<_>>()?,
        })
    }

    /// `timestep` `[B]` is the scaled decode timestep where the block is conditioned.
    fn forward(&self, x: &Tensor, timestep: Option<&Tensor>, causal: bool) -> Result<Tensor> {
        let temb = embed(self.time_embedder.as_ref(), timestep, x)?;
        let mut h = x.clone();
        for resnet in &self.resnets {
            h = resnet.forward(&h, temb.as_ref(), causal)?;
        }
        Ok(h)
    }
}

/// The block's timestep embedding, where it has an embedder.
fn embed(
    embedder: Option<&TimeEmbedder>,
    timestep: Option<&Tensor>,
    like: &Tensor,
) -> Result<Option<Tensor>> {
    match (embedder, timestep) {
        (Some(embedder), Some(t)) => Ok(Some(embedder.forward(t, like)?)),
        (Some(_), None) => bail!("the decoder is timestep-conditioned: decode needs a timestep"),
        (None, _) => Ok(None),
    }
}

/// `LTX2VideoUpBlock3d`.
struct UpBlock3d {
    conv_in: Option<ResnetBlock3d>,
    time_embedder: Option<TimeEmbedder>,
    upsampler: Option<Upsampler3d>,
    resnets: Vec<ResnetBlock3d>,
}

impl UpBlock3d {
    fn forward(&self, x: &Tensor, timestep: Option<&Tensor>, causal: bool) -> Result<Tensor> {
        let mut h = x.clone();
        if let Some(conv_in) = &self.conv_in {
            h = conv_in.forward(&h, None, causal)?;
        }
        let temb = embed(self.time_embedder.as_ref(), timestep, &h)?;
        if let Some(up) = &self.upsampler {
            h = up.forward(&h, causal)?;
        }
        for resnet in &self.resnets {
            h = resnet.forward(&h, temb.as_ref(), causal)?;
        }
        Ok(h)
    }
}

/// `LTX2VideoEncoder3d`: patchify, conv, down blocks, mid block, norm, SiLU, conv to
/// `latent_channels + 1` channels (the mean, then one shared log-variance channel).
struct Encoder3d {
    patch_size: usize,
    causal: bool,
    conv_in: CausalConv3d,
    down_blocks: Vec<DownBlock3d>,
    mid_block: MidBlock3d,
    conv_out: CausalConv3d,
}

impl Encoder3d {
    fn new(vb: VarBuilder, config: &AutoencoderKLLTX2VideoConfig) -> Result<Self> {
        let mode = PaddingMode::from_name(&config.encoder_spatial_padding_mode)
            .expect("checked by check_supported");
        let eps = config.resnet_norm_eps;
        let n = config.block_out_channels.len();
        let scaling = config.encoder_scaling();
        for (field, len) in [
            ("down_block_types", config.down_block_types.len()),
            ("spatio_temporal_scaling", scaling.len()),
            ("downsample_type", config.downsample_type.len()),
            ("layers_per_block", config.layers_per_block.len()),
        ] {
            if len < n {
                bail!("{field} has {len} entries for {n} encoder blocks (block_out_channels)");
            }
        }
        let mut channels = config.latent_channels;
        let conv_in = CausalConv3d::new(
            vb.pp("conv_in"),
            config.in_channels * config.patch_size * config.patch_size,
            channels,
            1,
            mode,
        )?;
        let mut down_blocks = Vec::with_capacity(n);
        for (i, &scaled) in scaling.iter().enumerate().take(n) {
            let vb = vb.pp(format!("down_blocks.{i}"));
            if config.down_block_types[i] != "LTX2VideoDownBlock3D" {
                bail!("unknown down block type `{}`", config.down_block_types[i]);
            }
            let out = config.block_out_channels[i];
            let resnets = (0..config.layers_per_block[i])
                .map(|j| {
                    let vb = vb.pp(format!("resnets.{j}"));
                    ResnetBlock3d::new(vb, channels, channels, eps, false, mode)
                })
                .collect::<Result<_>>()?;
            let kind = config.downsample_type[i].as_str();
            let down_vb = vb.pp("downsamplers.0");
            let downsampler = match (scaled, kind, resample_stride(kind)) {
                (false, _, _) => None,
                (true, "conv", _) => Some(Downsampler::Conv(CausalConv3d::new(
                    down_vb, channels, channels, 2, mode,
                )?)),
                (true, _, Some(stride)) => Some(Downsampler::Fold(Downsampler3d::new(
                    down_vb, channels, out, stride, mode,
                )?)),
                (true, _, None) => bail!(
                    "downsample_type `{kind}` is not one of conv, spatial, temporal, spatiotemporal"
                ),
            };
            // Resnets and the strided conv keep the width; only the folding downsamplers change it.
            let produced = if matches!(downsampler, Some(Downsampler::Fold(_))) {
                out
            } else {
                channels
            };
            if produced != out {
                bail!(
                    "encoder block {i} keeps {channels} channels, but block_out_channels[{i}] is \
                     {out}: the next block would not fit"
                );
            }
            channels = out;
            down_blocks.push(DownBlock3d {
                resnets,
                downsampler,
            });
        }
        let mid_layers = *config.layers_per_block.last().unwrap_or(&0);
        Ok(Self {
            patch_size: config.patch_size,
            causal: config.encoder_causal,
            conv_in,
            down_blocks,
            mid_block: MidBlock3d::new(vb.pp("mid_block"), channels, mid_layers, eps, false, mode)?,
            conv_out: CausalConv3d::new(
                vb.pp("conv_out"),
                channels,
                config.latent_channels + 1,
                1,
                mode,
            )?,
        })
    }

    /// Frames-major video -> frames-major `[B, T', latent_channels + 1, H', W']`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self
            .conv_in
            .forward(&patchify(x, self.patch_size)?, self.causal)?;
        for block in &self.down_blocks {
            h = block.forward(&h, self.causal)?;
        }
        h = self.mid_block.forward(&h, None, self.causal)?;
        self.conv_out.forward(&norm_silu(&h, None)?, self.causal)
    }
}

/// `LTX2VideoDecoder3d`: conv, mid block, up blocks, norm (modulated by the timestep where
/// conditioned), SiLU, conv, unpatchify.
struct Decoder3d {
    patch_size: usize,
    causal: bool,
    conv_in: CausalConv3d,
    mid_block: MidBlock3d,
    up_blocks: Vec<UpBlock3d>,
    conv_out: CausalConv3d,
    conditioning: Option<DecoderConditioning>,
}

/// What a timestep-conditioned decoder adds: the timestep's scale and the modulation of its last
/// norm.
struct DecoderConditioning {
    timestep_scale_multiplier: Tensor,
    time_embedder: TimeEmbedder,
    /// `[2, C]`: shift, scale.
    scale_shift_table: Tensor,
}

impl Decoder3d {
    fn new(vb: VarBuilder, config: &AutoencoderKLLTX2VideoConfig) -> Result<Self> {
        let mode = PaddingMode::from_name(&config.decoder_spatial_padding_mode)
            .expect("checked by check_supported");
        let eps = config.resnet_norm_eps;
        let conditioned = config.timestep_conditioning;
        let n_layers = config.decoder_layers_per_block.len();
        let reversed = |v: Vec<bool>| v.into_iter().rev().collect::<Vec<_>>();
        let block_out: Vec<usize> = config
            .decoder_block_out_channels
            .iter()
            .rev()
            .copied()
            .collect();
        let scaling = reversed(
            config
                .decoder_spatio_temporal_scaling
                .expand(n_layers.saturating_sub(1)),
        );
        let layers: Vec<usize> = config
            .decoder_layers_per_block
            .iter()
            .rev()
            .copied()
            .collect();
        let residual = reversed(config.upsample_residual.expand(n_layers.saturating_sub(1)));
        let factors: Vec<usize> = config.upsample_factor.iter().rev().copied().collect();
        let n = block_out.len();
        if n == 0 {
            bail!("decoder_block_out_channels is empty");
        }
        for (field, len, needed) in [
            ("decoder_layers_per_block", layers.len(), n + 1),
            ("decoder_spatio_temporal_scaling", scaling.len(), n),
            ("upsample_type", config.upsample_type.len(), n),
            ("upsample_residual", residual.len(), n),
            ("upsample_factor", factors.len(), n),
        ] {
            if len < needed {
                bail!("{field} has {len} entries, the decoder's {n} up blocks need {needed}");
            }
        }
        let mut output_channel = block_out[0];
        let conv_in = CausalConv3d::new(
            vb.pp("conv_in"),
            config.latent_channels,
            output_channel,
            1,
            mode,
        )?;
        let mid_block = MidBlock3d::new(
            vb.pp("mid_block"),
            output_channel,
            layers[0],
            eps,
            conditioned,
            mode,
        )?;
        // The width actually flowing, checked against what each block was built for.
        let mut channels = output_channel;
        let mut up_blocks = Vec::with_capacity(n);
        for i in 0..n {
            let vb = vb.pp(format!("up_blocks.{i}"));
            let factor = factors[i];
            if factor == 0 {
                bail!("upsample_factor has a 0");
            }
            let input_channel = output_channel / factor;
            output_channel = block_out[i] / factor;
            let conv_in = if input_channel != output_channel {
                if conditioned {
                    bail!(
                        "up block {i} changes the width ({input_channel} -> {output_channel}) \
                         and the decoder is timestep-conditioned: the reference cannot run that"
                    );
                }
                if channels != input_channel {
                    bail!("up block {i} expects {input_channel} channels, {channels} reach it");
                }
                channels = output_channel;
                Some(ResnetBlock3d::new(
                    vb.pp("conv_in"),
                    input_channel,
                    output_channel,
                    eps,
                    false,
                    mode,
                )?)
            } else {
                None
            };
            let time_embedder = conditioned
                .then(|| TimeEmbedder::new(vb.pp("time_embedder"), input_channel * 4))
                .transpose()?;
            let upsampler = if scaling[i] {
                let kind = config.upsample_type[i].as_str();
                let stride = resample_stride(kind).ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "upsample_type `{kind}` is not one of spatial, temporal, spatiotemporal"
                    ))
                })?;
                let up_in = output_channel * factor;
                if channels != up_in {
                    bail!("up block {i}'s upsampler expects {up_in} channels, {channels} reach it");
                }
                channels = output_channel;
                Some(Upsampler3d::new(
                    vb.pp("upsamplers.0"),
                    up_in,
                    stride,
                    residual[i],
                    factor,
                    mode,
                )?)
            } else {
                None
            };
            if channels != output_channel {
                bail!(
                    "up block {i}'s resnets expect {output_channel} channels, {channels} reach them"
                );
            }
            let resnets = (0..layers[i + 1])
                .map(|j| {
                    let vb = vb.pp(format!("resnets.{j}"));
                    ResnetBlock3d::new(vb, output_channel, output_channel, eps, conditioned, mode)
                })
                .collect::<Result<_>>()?;
            up_blocks.push(UpBlock3d {
                conv_in,
                time_embedder,
                upsampler,
                resnets,
            });
        }
        let patch = config.patch_size;
        Ok(Self {
            patch_size: patch,
            causal: config.decoder_causal,
            conv_in,
            mid_block,
            up_blocks,
            conv_out: CausalConv3d::new(
                vb.pp("conv_out"),
                output_channel,
                config.out_channels * patch * patch,
                1,
                mode,
            )?,
            conditioning: conditioned
                .then(|| -> Result<DecoderConditioning> {
                    Ok(DecoderConditioning {
                        timestep_scale_multiplier: vb.get((), "timestep_scale_multiplier")?,
                        time_embedder: TimeEmbedder::new(
                            vb.pp("time_embedder"),
                            output_channel * 2,
                        )?,
                        scale_shift_table: vb.get((2, output_channel), "scale_shift_table")?,
                    })
                })
                .transpose()?,
        })
    }

    /// Frames-major latents -> frames-major video; `timestep` `[B]` where conditioned.
    fn forward(&self, z: &Tensor, timestep: Option<&Tensor>) -> Result<Tensor> {
        let causal = self.causal;
        let mut h = self.conv_in.forward(z, causal)?;
        let timestep = match (&self.conditioning, timestep) {
            (Some(c), Some(t)) => {
                let multiplier = &c.timestep_scale_multiplier;
                Some(t.to_dtype(multiplier.dtype())?.broadcast_mul(multiplier)?)
            }
            (Some(_), None) => {
                bail!("the decoder is timestep-conditioned: decode needs a timestep")
            }
            (None, _) => None,
        };
        h = self.mid_block.forward(&h, timestep.as_ref(), causal)?;
        for block in &self.up_blocks {
            h = block.forward(&h, timestep.as_ref(), causal)?;
        }
        let modulation = match (&self.conditioning, &timestep) {
            (Some(c), Some(t)) => {
                let temb = c.time_embedder.forward(t, &h)?;
                Some((
                    table_row(&temb, &c.scale_shift_table, 0)?,
                    table_row(&temb, &c.scale_shift_table, 1)?,
                ))
            }
            _ => None,
        };
        let normed = norm_silu(&h, modulation.as_ref().map(|(shift, scale)| (shift, scale)))?;
        let h = self.conv_out.forward(&normed, causal)?;
        unpatchify(&h, self.patch_size)
    }
}

/// The reference's tiling settings (`enable_tiling`'s arguments, in sample pixels and frames),
/// with its defaults.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct Tiling {
    pub tile_sample_min_height: usize,
    pub tile_sample_min_width: usize,
    pub tile_sample_min_num_frames: usize,
    pub tile_sample_stride_height: usize,
    pub tile_sample_stride_width: usize,
    pub tile_sample_stride_num_frames: usize,
}

impl Default for Tiling {
    fn default() -> Self {
        Self {
            tile_sample_min_height: 512,
            tile_sample_min_width: 512,
            tile_sample_min_num_frames: 16,
            tile_sample_stride_height: 448,
            tile_sample_stride_width: 448,
            tile_sample_stride_num_frames: 8,
        }
    }
}

/// Blends the last `extent` entries of `a` along `dim` into the first of `b` (linear ramp from
/// `a` to `b`), as the reference's `blend_v`/`blend_h`/`blend_t` do.
fn blend(a: &Tensor, b: &Tensor, dim: usize, extent: usize) -> Result<Tensor> {
    let (na, nb) = (a.dim(dim)?, b.dim(dim)?);
    let extent = extent.min(na).min(nb);
    if extent == 0 {
        return Ok(b.clone());
    }
    let weights: Vec<f32> = (0..extent).map(|y| y as f32 / extent as f32).collect();
    let mut shape = vec![1; b.rank()];
    shape[dim] = extent;
    let w = Tensor::from_vec(weights, shape, b.device())?.to_dtype(b.dtype())?;
    let head = a
        .narrow(dim, na - extent, extent)?
        .broadcast_mul(&(w.ones_like()? - &w)?)?
        .add(&b.narrow(dim, 0, extent)?.broadcast_mul(&w)?)?;
    Tensor::cat(&[&head, &b.narrow(dim, extent, nb - extent)?], dim)
}

/// At most `len` entries of `x` along `dim` from `start`.
fn clip(x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
    let n = x.dim(dim)?;
    let start = start.min(n);
    x.narrow(dim, start, len.min(n - start))
}

/// The reference's spatial tiling (`tiled_encode`/`tiled_decode`) over frames-major `x`: tiles
/// of `tile_in` pixels every `stride_in` through `run`, each blended with its (already blended)
/// upper and left neighbours over `blend_out` pixels, cut to `stride_out` and joined, cut to
/// `size_out`. All pairs are (height, width).
struct SpatialTiles {
    tile_in: (usize, usize),
    stride_in: (usize, usize),
    blend_out: (usize, usize),
    stride_out: (usize, usize),
    size_out: (usize, usize),
}

impl SpatialTiles {
    fn run(&self, x: &Tensor, run: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let (_, _, _, height, width) = x.dims5()?;
        if self.stride_in.0 == 0 || self.stride_in.1 == 0 {
            bail!("tiling: the tile strides are 0 in latent pixels");
        }
        let mut rows: Vec<Vec<Tensor>> = Vec::new();
        for i in (0..height).step_by(self.stride_in.0) {
            let mut row: Vec<Tensor> = Vec::new();
            for j in (0..width).step_by(self.stride_in.1) {
                let tile = clip(&clip(x, 3, i, self.tile_in.0)?, 4, j, self.tile_in.1)?;
                let mut tile = run(&tile)?;
                if let Some(above) = rows.last() {
                    tile = blend(&above[row.len()], &tile, 3, self.blend_out.0)?;
                }
                if let Some(left) = row.last() {
                    tile = blend(left, &tile, 4, self.blend_out.1)?;
                }
                row.push(tile);
            }
            rows.push(row);
        }
        let joined = rows
            .iter()
            .map(|row| {
                let cut = row
                    .iter()
                    .map(|t| clip(&clip(t, 3, 0, self.stride_out.0)?, 4, 0, self.stride_out.1))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&cut, 4)
            })
            .collect::<Result<Vec<_>>>()?;
        let out = Tensor::cat(&joined, 3)?;
        clip(&clip(&out, 3, 0, self.size_out.0)?, 4, 0, self.size_out.1)
    }
}

/// The LTX-2 video VAE.
pub struct AutoencoderKLLTX2Video {
    config: AutoencoderKLLTX2VideoConfig,
    encoder: Encoder3d,
    decoder: Decoder3d,
    /// `[latent_channels]`, in the model's dtype (buffers of the checkpoint).
    latents_mean: Tensor,
    latents_std: Tensor,
    tiling: Tiling,
    use_tiling: bool,
    use_framewise_decoding: bool,
    device: Device,
    dtype: DType,
}

impl AutoencoderKLLTX2Video {
    /// Reads `dir/config.json` and the memory-mapped weights of a `vae` folder, or the video
    /// VAE of an LTX-2 checkpoint (see [`crate::loader::single_file`]).
    pub fn load(path: &Path, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        let builder = single_file::Builder {
            layout: OriginalLayout::Ltx2VideoVae,
            infer: |_| Ok(AutoencoderKLLTX2VideoConfig::default()),
            check: AutoencoderKLLTX2VideoConfig::check_supported,
            build: |config, vb| Self::new(config, vb),
        };
        Ok(single_file::load_model(path, builder, dtype, device)?.0)
    }

    pub fn new(config: &AutoencoderKLLTX2VideoConfig, vb: VarBuilder) -> Result<Self> {
        config.check_supported().map_err(candle_core::Error::Msg)?;
        let c = config.latent_channels;
        Ok(Self {
            encoder: Encoder3d::new(vb.pp("encoder"), config)?,
            decoder: Decoder3d::new(vb.pp("decoder"), config)?,
            latents_mean: vb.get(c, "latents_mean")?,
            latents_std: vb.get(c, "latents_std")?,
            tiling: Tiling::default(),
            use_tiling: false,
            use_framewise_decoding: false,
            device: vb.device().clone(),
            dtype: vb.dtype(),
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &AutoencoderKLLTX2VideoConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `[latent_channels]` per-channel mean of the latents (the checkpoint's buffer).
    pub fn latents_mean(&self) -> &Tensor {
        &self.latents_mean
    }

    /// `[latent_channels]` per-channel standard deviation of the latents.
    pub fn latents_std(&self) -> &Tensor {
        &self.latents_std
    }

    /// `enable_tiling`: decode (and encode) in overlapping spatial tiles of these sizes.
    pub fn enable_tiling(&mut self, tiling: Tiling) {
        self.tiling = tiling;
        self.use_tiling = true;
    }

    /// `use_framewise_decoding = True`: decode and encode in overlapping temporal tiles too.
    pub fn enable_framewise_decoding(&mut self) {
        self.use_framewise_decoding = true;
    }

    /// [`normalize_latents`] with the VAE's statistics (`LTX2Pipeline._normalize_latents`; the
    /// image-to-video pipeline passes `scaling_factor` 1, the others the config's).
    pub fn normalize_latents(&self, latents: &Tensor, scaling_factor: f64) -> Result<Tensor> {
        normalize_latents(
            latents,
            &self.latents_mean,
            &self.latents_std,
            scaling_factor,
        )
    }

    /// [`denormalize_latents`] with the VAE's statistics, what `decode` takes.
    pub fn denormalize_latents(&self, latents: &Tensor, scaling_factor: f64) -> Result<Tensor> {
        denormalize_latents(
            latents,
            &self.latents_mean,
            &self.latents_std,
            scaling_factor,
        )
    }

    /// `[B, C, F, H, W]` -> frames-major in the model's dtype and device, checking `C`.
    fn frames_major(&self, x: &Tensor, channels: usize, what: &str) -> Result<Tensor> {
        match x.dims() {
            &[_, c, _, _, _] if c == channels => {}
            dims => bail!(
                "{what}: input has shape {dims:?}, expected [batch, {channels}, frames, height, width]"
            ),
        }
        x.to_device(&self.device)?
            .to_dtype(self.dtype)?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()
    }

    /// `sample` `[B, in_channels, 1 + 8k frames, H, W]` in [-1, 1] -> the posterior mode
    /// `[B, latent_channels, 1 + k, H / 32, W / 32]` (published ratios), unnormalised, in the
    /// model's dtype (`vae.encode(x).latent_dist.mode()`).
    pub fn encode(&self, sample: &Tensor) -> Result<Tensor> {
        let x = self.frames_major(sample, self.config.in_channels, "encode")?;
        let moments = self.encode_frames(&x)?;
        moments
            .narrow(2, 0, self.config.latent_channels)?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()
    }

    /// `_encode` over frames-major video.
    fn encode_frames(&self, x: &Tensor) -> Result<Tensor> {
        let (_, frames, _, height, width) = x.dims5()?;
        let t = &self.tiling;
        if self.use_framewise_decoding && frames > t.tile_sample_min_num_frames {
            return self.temporal_tiled_encode(x);
        }
        if self.use_tiling && (width > t.tile_sample_min_width || height > t.tile_sample_min_height)
        {
            return self.tiled_encode(x);
        }
        self.encoder.forward(x)
    }

    fn tiled_encode(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, _, height, width) = x.dims5()?;
        let (t, r) = (&self.tiling, self.config.spatial_compression_ratio());
        let latent_min = (t.tile_sample_min_height / r, t.tile_sample_min_width / r);
        let latent_stride = (
            t.tile_sample_stride_height / r,
            t.tile_sample_stride_width / r,
        );
        SpatialTiles {
            tile_in: (t.tile_sample_min_height, t.tile_sample_min_width),
            stride_in: (t.tile_sample_stride_height, t.tile_sample_stride_width),
            blend_out: (
                latent_min.0.saturating_sub(latent_stride.0),
                latent_min.1.saturating_sub(latent_stride.1),
            ),
            stride_out: latent_stride,
            size_out: (height / r, width / r),
        }
        .run(x, |tile| self.encoder.forward(tile))
    }

    fn temporal_tiled_encode(&self, x: &Tensor) -> Result<Tensor> {
        let (_, frames, _, height, width) = x.dims5()?;
        let (t, r) = (&self.tiling, self.config.temporal_compression_ratio());
        let latent_frames = (frames - 1) / r + 1;
        let latent_min = t.tile_sample_min_num_frames / r;
        let latent_stride = t.tile_sample_stride_num_frames / r;
        let blend_frames = latent_min.saturating_sub(latent_stride);
        if t.tile_sample_stride_num_frames == 0 {
            bail!("tiling: tile_sample_stride_num_frames is 0");
        }
        let spatial = self.use_tiling
            && (height > t.tile_sample_min_height || width > t.tile_sample_min_width);
        let mut row: Vec<Tensor> = Vec::new();
        for i in (0..frames).step_by(t.tile_sample_stride_num_frames) {
            let tile = clip(x, 1, i, t.tile_sample_min_num_frames + 1)?;
            let mut tile = if spatial {
                self.tiled_encode(&tile)?
            } else {
                self.encoder.forward(&tile)?
            };
            if i > 0 {
                tile = clip(&tile, 1, 1, usize::MAX)?;
            }
            row.push(tile);
        }
        self.join_temporal(row, blend_frames, latent_stride, latent_frames)
    }

    /// Blends each temporal tile with the previous (already blended) one and joins the first
    /// `stride + 1` frames of the first tile with the first `stride` of each other, cut to `total`.
    fn join_temporal(
        &self,
        mut row: Vec<Tensor>,
        blend_frames: usize,
        stride: usize,
        total: usize,
    ) -> Result<Tensor> {
        let mut kept = Vec::with_capacity(row.len());
        for i in 0..row.len() {
            if i > 0 {
                row[i] = blend(&row[i - 1], &row[i], 1, blend_frames)?;
                kept.push(clip(&row[i], 1, 0, stride)?);
            } else {
                kept.push(clip(&row[i], 1, 0, stride + 1)?);
            }
        }
        clip(&Tensor::cat(&kept, 1)?, 1, 0, total)
    }

    /// Latents `[B, latent_channels, F, H, W]` (denormalised) -> video `[B, out_channels,
    /// 1 + 8(F - 1), 32H, 32W]` (published ratios), not clamped. `timestep` (`[B]` or one value,
    /// the pipeline's `decode_timestep`) is required where the decoder is timestep-conditioned
    /// and ignored otherwise, as in the reference.
    pub fn decode(&self, latents: &Tensor, timestep: Option<&Tensor>) -> Result<Tensor> {
        let z = self.frames_major(latents, self.config.latent_channels, "decode")?;
        let batch = z.dim(0)?;
        let timestep = match timestep {
            Some(t) if self.config.timestep_conditioning => {
                let t = t.flatten_all()?.to_device(&self.device)?;
                match t.elem_count() {
                    n if n == batch => Some(t),
                    1 => Some(t.broadcast_as(batch)?.contiguous()?),
                    _ => bail!(
                        "decode: timestep has shape {:?}, expected [{batch}] (one per latent) or one value",
                        t.dims()
                    ),
                }
            }
            None if self.config.timestep_conditioning => {
                bail!("decode: this VAE's decoder is timestep-conditioned and needs a `timestep`")
            }
            _ => None,
        };
        let video = self.decode_frames(&z, timestep.as_ref())?;
        video.permute((0, 2, 1, 3, 4))?.contiguous()
    }

    /// `_decode` over frames-major latents.
    fn decode_frames(&self, z: &Tensor, timestep: Option<&Tensor>) -> Result<Tensor> {
        let (_, frames, _, height, width) = z.dims5()?;
        let t = &self.tiling;
        let r = self.config.spatial_compression_ratio();
        let latent_min = (t.tile_sample_min_height / r, t.tile_sample_min_width / r);
        let latent_min_frames =
            t.tile_sample_min_num_frames / self.config.temporal_compression_ratio();
        if self.use_framewise_decoding && frames > latent_min_frames {
            return self.temporal_tiled_decode(z, timestep);
        }
        if self.use_tiling && (width > latent_min.1 || height > latent_min.0) {
            return self.tiled_decode(z, timestep);
        }
        self.decoder.forward(z, timestep)
    }

    fn tiled_decode(&self, z: &Tensor, timestep: Option<&Tensor>) -> Result<Tensor> {
        let (_, _, _, height, width) = z.dims5()?;
        let (t, r) = (&self.tiling, self.config.spatial_compression_ratio());
        SpatialTiles {
            tile_in: (t.tile_sample_min_height / r, t.tile_sample_min_width / r),
            stride_in: (
                t.tile_sample_stride_height / r,
                t.tile_sample_stride_width / r,
            ),
            blend_out: (
                t.tile_sample_min_height
                    .saturating_sub(t.tile_sample_stride_height),
                t.tile_sample_min_width
                    .saturating_sub(t.tile_sample_stride_width),
            ),
            stride_out: (t.tile_sample_stride_height, t.tile_sample_stride_width),
            size_out: (height * r, width * r),
        }
        .run(z, |tile| self.decoder.forward(tile, timestep))
    }

    fn temporal_tiled_decode(&self, z: &Tensor, timestep: Option<&Tensor>) -> Result<Tensor> {
        let (_, frames, _, height, width) = z.dims5()?;
        let t = &self.tiling;
        let r = self.config.spatial_compression_ratio();
        let rt = self.config.temporal_compression_ratio();
        let sample_frames = (frames - 1) * rt + 1;
        let latent_min = (t.tile_sample_min_height / r, t.tile_sample_min_width / r);
        let latent_min_frames = t.tile_sample_min_num_frames / rt;
        let latent_stride_frames = t.tile_sample_stride_num_frames / rt;
        if latent_stride_frames == 0 {
            bail!("tiling: tile_sample_stride_num_frames is under one latent frame");
        }
        let blend_frames = t
            .tile_sample_min_num_frames
            .saturating_sub(t.tile_sample_stride_num_frames);
        let spatial = self.use_tiling && (width > latent_min.1 || height > latent_min.0);
        let mut row: Vec<Tensor> = Vec::new();
        for i in (0..frames).step_by(latent_stride_frames) {
            let tile = clip(z, 1, i, latent_min_frames + 1)?;
            let mut decoded = if spatial {
                self.tiled_decode(&tile, timestep)?
            } else {
                self.decoder.forward(&tile, timestep)?
            };
            if i > 0 {
                let n = decoded.dim(1)?;
                decoded = decoded.narrow(1, 0, n.saturating_sub(1))?;
            }
            row.push(decoded);
        }
        self.join_temporal(
            row,
            blend_frames,
            t.tile_sample_stride_num_frames,
            sample_frames,
        )
    }
}

/// Checks that `latents` is `[batch, channels, frames, height, width]` and returns the channels.
pub(super) fn video_channels(latents: &Tensor, what: &str) -> Result<usize> {
    match *latents.dims() {
        [_, c, _, _, _] => Ok(c),
        _ => bail!(
            "{what}: latents must have shape [batch, channels, frames, height, width], got {:?}",
            latents.dims()
        ),
    }
}

/// The per-channel `latents_mean` / `latents_std` (`[channels]`) as `[1, C, 1, 1, 1]` f32.
fn channel_stats(latents: &Tensor, stats: &[&Tensor], what: &str) -> Result<Vec<Tensor>> {
    let channels = video_channels(latents, what)?;
    stats
        .iter()
        .map(|s| {
            if s.elem_count() != channels {
                bail!(
                    "{what}: statistics of shape {:?} for latents of {channels} channels ({:?})",
                    s.dims(),
                    latents.dims()
                );
            }
            s.to_device(latents.device())?
                .to_dtype(DType::F32)?
                .reshape((1, channels, 1, 1, 1))
        })
        .collect()
}

/// `_denormalize_latents` of the LTX-2 pipelines: `latents · std / scaling_factor + mean` per
/// channel, from the standardised latents the transformer makes to the VAE's (in f32; returns the
/// input dtype).
pub fn denormalize_latents(
    latents: &Tensor,
    latents_mean: &Tensor,
    latents_std: &Tensor,
    scaling_factor: f64,
) -> Result<Tensor> {
    let stats = channel_stats(latents, &[latents_mean, latents_std], "denormalize_latents")?;
    (latents.to_dtype(DType::F32)?.broadcast_mul(&stats[1])? / scaling_factor)?
        .broadcast_add(&stats[0])?
        .to_dtype(latents.dtype())
}

/// `_normalize_latents`: `(latents - mean) · scaling_factor / std` per channel, the inverse of
/// [`denormalize_latents`].
pub fn normalize_latents(
    latents: &Tensor,
    latents_mean: &Tensor,
    latents_std: &Tensor,
    scaling_factor: f64,
) -> Result<Tensor> {
    let stats = channel_stats(latents, &[latents_mean, latents_std], "normalize_latents")?;
    (latents.to_dtype(DType::F32)?.broadcast_sub(&stats[0])? * scaling_factor)?
        .broadcast_div(&stats[1])?
        .to_dtype(latents.dtype())
}
