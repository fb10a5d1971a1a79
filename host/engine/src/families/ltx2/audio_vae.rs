//! `AutoencoderKLLTX2Audio` (diffusers `models/autoencoders/autoencoder_kl_ltx2_audio.py`): the
//! LTX-2 audio VAE over mel spectrograms `[batch, channels, frames, mel_bins]`, a 2-D
//! encoder/decoder with causal convolutions along time (or mel bins), pixel or group norms and
//! optional single-head attention. `encode` returns the posterior mode, `decode` the mel
//! spectrogram `[batch, output_channels, 4·frames − 3, mel_bins]` the vocoder takes. The pipeline's
//! latent steps (packing to `[batch, frames, channels·mel_bins]` and the per-feature statistics)
//! are methods here, as `LTX2Pipeline` spells them.

use crate::loader::single_file::{self, OriginalLayout};
use crate::models::conv::Conv2d;
use crate::models::{GroupNorm, rms_normalize};
use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Time (and mel) compression of the latents (`LATENT_DOWNSAMPLE_FACTOR`).
pub const LATENT_DOWNSAMPLE_FACTOR: usize = 4;

/// `config.json` of an `AutoencoderKLLTX2Audio`, field names and defaults as the reference's
/// constructor.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AutoencoderKLLTX2AudioConfig {
    pub base_channels: usize,
    pub output_channels: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// Resolutions (`resolution` halved per level) whose blocks add attention.
    pub attn_resolutions: Option<Vec<usize>>,
    pub in_channels: usize,
    pub resolution: usize,
    pub latent_channels: usize,
    /// `pixel` or `group` (32 groups).
    pub norm_type: String,
    /// `height` (time), `width` (mel bins), `width-compatibility` or `none`.
    pub causality_axis: Option<String>,
    /// Training only.
    pub dropout: f64,
    pub mid_block_add_attention: bool,
    pub sample_rate: usize,
    pub mel_hop_length: usize,
    pub is_causal: bool,
    /// Mel bins of the decoded spectrogram; `null` keeps the decoder's own width.
    pub mel_bins: Option<usize>,
    pub double_z: bool,
}

impl Default for AutoencoderKLLTX2AudioConfig {
    fn default() -> Self {
        Self {
            base_channels: 128,
            output_channels: 2,
            ch_mult: vec![1, 2, 4],
            num_res_blocks: 2,
            attn_resolutions: None,
            in_channels: 2,
            resolution: 256,
            latent_channels: 8,
            norm_type: "pixel".into(),
            causality_axis: Some("height".into()),
            dropout: 0.0,
            mid_block_add_attention: false,
            sample_rate: 16000,
            mel_hop_length: 160,
            is_causal: true,
            mel_bins: Some(64),
            double_z: true,
        }
    }
}

impl AutoencoderKLLTX2AudioConfig {
    /// The reference constructor's checks.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let axis = self.axis()?;
        match self.norm_type.as_str() {
            "pixel" => {}
            "group" if axis != CausalityAxis::None => {
                return Err("a causal ResnetBlock with GroupNorm is not supported: norm_type \"group\" needs causality_axis \"none\"".into());
            }
            "group" => {}
            other => {
                return Err(format!(
                    "invalid norm_type {other:?}; supported: group, pixel"
                ));
            }
        }
        if self.ch_mult.is_empty() || self.ch_mult.contains(&0) || self.base_channels == 0 {
            return Err(format!(
                "ch_mult {:?} and base_channels {} must be non-empty and positive",
                self.ch_mult, self.base_channels
            ));
        }
        Ok(())
    }

    fn axis(&self) -> std::result::Result<CausalityAxis, String> {
        Ok(match self.causality_axis.as_deref() {
            Some("none") => CausalityAxis::None,
            Some("width") => CausalityAxis::Width,
            Some("height") => CausalityAxis::Height,
            Some("width-compatibility") => CausalityAxis::WidthCompatibility,
            other => {
                return Err(format!(
                    "causality_axis {other:?} is not valid; supported: none, width, height, width-compatibility"
                ));
            }
        })
    }

    /// Whether the blocks at `resolution` add attention.
    fn attends_at(&self, resolution: usize) -> bool {
        self.attn_resolutions
            .as_ref()
            .is_some_and(|r| r.contains(&resolution))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CausalityAxis {
    None,
    Width,
    Height,
    WidthCompatibility,
}

/// `LTX2AudioCausalConv2d`: zero padding all on the past side of the causal axis (centred on the
/// other), then an unpadded convolution under `conv.`.
struct CausalConv2d {
    conv: Conv2d,
    /// `(left, right, top, bottom)`, `F.pad`'s order.
    padding: (usize, usize, usize, usize),
}

impl CausalConv2d {
    fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        axis: CausalityAxis,
    ) -> Result<Self> {
        let pad = kernel - 1;
        let padding = match axis {
            CausalityAxis::None => (pad / 2, pad - pad / 2, pad / 2, pad - pad / 2),
            CausalityAxis::Width | CausalityAxis::WidthCompatibility => {
                (pad, 0, pad / 2, pad - pad / 2)
            }
            CausalityAxis::Height => (pad / 2, pad - pad / 2, pad, 0),
        };
        let conv = Conv2d::load(vb.pp("conv"), in_channels, out_channels, kernel, 1, true)?;
        Ok(Self {
            conv: conv.with_padding(0),
            padding,
        })
    }
}

/// `x` `[B, C, H, W]` zero-padded by `(left, right, top, bottom)`.
fn pad2d(x: &Tensor, (left, right, top, bottom): (usize, usize, usize, usize)) -> Result<Tensor> {
    x.pad_with_zeros(3, left, right)?
        .pad_with_zeros(2, top, bottom)
}

impl Module for CausalConv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(&pad2d(x, self.padding)?)
    }
}

/// The blocks' normalisation: `LTX2AudioPixelNorm` (RMS over channels, eps 1e-6) or a 32-group
/// `GroupNorm` (eps 1e-6).
enum Norm {
    Pixel,
    Group(GroupNorm),
}

impl Norm {
    fn new(config: &AutoencoderKLLTX2AudioConfig, channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(match config.norm_type.as_str() {
            "group" => Self::Group(GroupNorm::new(channels, 32, 1e-6, vb)?),
            _ => Self::Pixel,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Pixel => rms_normalize(x, 1, 1e-6)?.to_dtype(x.dtype()),
            Self::Group(norm) => norm.forward(x),
        }
    }

    /// `forward` then SiLU.
    fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Pixel => self.forward(x)?.silu(),
            Self::Group(norm) => norm.forward_silu(x),
        }
    }
}

/// `LTX2AudioResnetBlock` (no time embedding): norm, SiLU, conv, norm, SiLU, conv, plus the input
/// through a 1x1 `nin_shortcut` where the width changes.
struct ResnetBlock {
    norm1: Norm,
    conv1: CausalConv2d,
    norm2: Norm,
    conv2: CausalConv2d,
    nin_shortcut: Option<CausalConv2d>,
}

impl ResnetBlock {
    fn new(
        config: &AutoencoderKLLTX2AudioConfig,
        in_channels: usize,
        out_channels: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let axis = config.axis().map_err(candle_core::Error::Msg)?;
        Ok(Self {
            norm1: Norm::new(config, in_channels, vb.pp("norm1"))?,
            conv1: CausalConv2d::new(vb.pp("conv1"), in_channels, out_channels, 3, axis)?,
            norm2: Norm::new(config, out_channels, vb.pp("norm2"))?,
            conv2: CausalConv2d::new(vb.pp("conv2"), out_channels, out_channels, 3, axis)?,
            nin_shortcut: (in_channels != out_channels)
                .then(|| {
                    CausalConv2d::new(vb.pp("nin_shortcut"), in_channels, out_channels, 1, axis)
                })
                .transpose()?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        match &self.nin_shortcut {
            Some(shortcut) => shortcut.forward(x)? + h,
            None => x + h,
        }
    }
}

/// `LTX2AudioAttnBlock`: one head as wide as the channels over every (frame, mel bin).
struct AttnBlock {
    norm: Norm,
    q: Conv2d,
    k: Conv2d,
    v: Conv2d,
    proj_out: Conv2d,
}

impl AttnBlock {
    fn new(config: &AutoencoderKLLTX2AudioConfig, channels: usize, vb: VarBuilder) -> Result<Self> {
        let conv = |name: &str| Conv2d::load(vb.pp(name), channels, channels, 1, 1, true);
        Ok(Self {
            norm: Norm::new(config, channels, vb.pp("norm"))?,
            q: conv("q")?,
            k: conv("k")?,
            v: conv("v")?,
            proj_out: conv("proj_out")?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let normed = self.norm.forward(x)?;
        // [B, C, H, W] -> [B, H·W, 1, C]
        let tokens = |t: Tensor| t.reshape((b, c, h * w))?.transpose(1, 2)?.unsqueeze(2);
        let q = tokens(self.q.forward(&normed)?)?;
        let k = tokens(self.k.forward(&normed)?)?;
        let v = tokens(self.v.forward(&normed)?)?;
        let out = crate::attention::attention(&q, &k, &v)?
            .squeeze(2)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        x + self.proj_out.forward(&out)?
    }
}

/// `LTX2AudioDownsample` (with a conv): asymmetric zero padding by axis, then a stride-2 3x3
/// convolution.
struct Downsample {
    conv: Conv2d,
    padding: (usize, usize, usize, usize),
}

impl Downsample {
    fn new(channels: usize, axis: CausalityAxis, vb: VarBuilder) -> Result<Self> {
        let padding = match axis {
            CausalityAxis::None => (0, 1, 0, 1),
            CausalityAxis::Width => (2, 0, 0, 1),
            CausalityAxis::Height => (0, 1, 2, 0),
            CausalityAxis::WidthCompatibility => (1, 0, 0, 1),
        };
        let conv = Conv2d::load(vb.pp("conv"), channels, channels, 3, 2, true)?;
        Ok(Self {
            conv: conv.with_padding(0),
            padding,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(&pad2d(x, self.padding)?)
    }
}

/// `LTX2AudioUpsample` (with a conv): nearest 2x, a causal conv, then the first row (`height`)
/// or column (`width`) dropped so the causal axis grows to `2n − 1`.
struct Upsample {
    conv: CausalConv2d,
    axis: CausalityAxis,
}

impl Upsample {
    fn new(channels: usize, axis: CausalityAxis, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: CausalConv2d::new(vb.pp("conv"), channels, channels, 3, axis)?,
            axis,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let x = self.conv.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)?;
        match self.axis {
            CausalityAxis::Height => x.narrow(2, 1, 2 * h - 1),
            CausalityAxis::Width => x.narrow(3, 1, 2 * w - 1),
            CausalityAxis::None | CausalityAxis::WidthCompatibility => Ok(x),
        }
    }
}

/// One level of the encoder or decoder: resnets, each followed by attention at the attention
/// resolutions, then the resampling (none on the last level).
struct Stage<S> {
    blocks: Vec<(ResnetBlock, Option<AttnBlock>)>,
    resample: Option<S>,
}

impl<S> Stage<S> {
    fn forward_blocks(&self, mut x: Tensor) -> Result<Tensor> {
        for (block, attn) in &self.blocks {
            x = block.forward(&x)?;
            if let Some(attn) = attn {
                x = attn.forward(&x)?;
            }
        }
        Ok(x)
    }
}

/// Builds `count` resnets from `block_in` to `block_out` under `vb.block`, with attention under
/// `vb.attn` where `attends`; returns them and the width they leave.
fn stage_blocks(
    config: &AutoencoderKLLTX2AudioConfig,
    count: usize,
    block_in: usize,
    block_out: usize,
    attends: bool,
    vb: &VarBuilder,
) -> Result<Vec<(ResnetBlock, Option<AttnBlock>)>> {
    (0..count)
        .map(|i| {
            let in_channels = if i == 0 { block_in } else { block_out };
            let block = ResnetBlock::new(config, in_channels, block_out, vb.pp("block").pp(i))?;
            let attn = attends
                .then(|| AttnBlock::new(config, block_out, vb.pp("attn").pp(i)))
                .transpose()?;
            Ok((block, attn))
        })
        .collect()
}

/// `mid`: resnet, optional attention, resnet.
struct MidBlock {
    block_1: ResnetBlock,
    attn_1: Option<AttnBlock>,
    block_2: ResnetBlock,
}

impl MidBlock {
    fn new(config: &AutoencoderKLLTX2AudioConfig, channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            block_1: ResnetBlock::new(config, channels, channels, vb.pp("block_1"))?,
            attn_1: config
                .mid_block_add_attention
                .then(|| AttnBlock::new(config, channels, vb.pp("attn_1")))
                .transpose()?,
            block_2: ResnetBlock::new(config, channels, channels, vb.pp("block_2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.block_1.forward(x)?;
        if let Some(attn) = &self.attn_1 {
            x = attn.forward(&x)?;
        }
        self.block_2.forward(&x)
    }
}

/// `LTX2AudioEncoder`.
struct Encoder {
    conv_in: CausalConv2d,
    down: Vec<Stage<Downsample>>,
    mid: MidBlock,
    norm_out: Norm,
    conv_out: CausalConv2d,
}

impl Encoder {
    fn new(config: &AutoencoderKLLTX2AudioConfig, vb: VarBuilder) -> Result<Self> {
        let axis = config.axis().map_err(candle_core::Error::Msg)?;
        let base = config.base_channels;
        let conv_in = CausalConv2d::new(vb.pp("conv_in"), config.in_channels, base, 3, axis)?;
        let levels = config.ch_mult.len();
        let mut block_in = base;
        let mut resolution = config.resolution;
        let mut down = Vec::with_capacity(levels);
        for (level, mult) in config.ch_mult.iter().enumerate() {
            let vb = vb.pp("down").pp(level);
            let block_out = base * mult;
            let attends = config.attends_at(resolution);
            let blocks = stage_blocks(
                config,
                config.num_res_blocks,
                block_in,
                block_out,
                attends,
                &vb,
            )?;
            if config.num_res_blocks > 0 {
                block_in = block_out;
            }
            let resample = (level + 1 != levels)
                .then(|| Downsample::new(block_in, axis, vb.pp("downsample")))
                .transpose()?;
            resolution /= 2;
            down.push(Stage { blocks, resample });
        }
        let z_channels = if config.double_z {
            2 * config.latent_channels
        } else {
            config.latent_channels
        };
        Ok(Self {
            conv_in,
            down,
            mid: MidBlock::new(config, block_in, vb.pp("mid"))?,
            norm_out: Norm::new(config, block_in, vb.pp("norm_out"))?,
            conv_out: CausalConv2d::new(vb.pp("conv_out"), block_in, z_channels, 3, axis)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.conv_in.forward(x)?;
        for stage in &self.down {
            x = stage.forward_blocks(x)?;
            if let Some(downsample) = &stage.resample {
                x = downsample.forward(&x)?;
            }
        }
        let x = self.mid.forward(&x)?;
        self.conv_out.forward(&self.norm_out.forward_silu(&x)?)
    }
}

/// `LTX2AudioDecoder`.
struct Decoder {
    conv_in: CausalConv2d,
    mid: MidBlock,
    /// By level, lowest resolution last (applied in reverse).
    up: Vec<Stage<Upsample>>,
    norm_out: Norm,
    conv_out: CausalConv2d,
    output_channels: usize,
    mel_bins: Option<usize>,
}

impl Decoder {
    fn new(config: &AutoencoderKLLTX2AudioConfig, vb: VarBuilder) -> Result<Self> {
        let axis = config.axis().map_err(candle_core::Error::Msg)?;
        let base = config.base_channels;
        let levels = config.ch_mult.len();
        let mut block_in = base * config.ch_mult[levels - 1];
        let conv_in =
            CausalConv2d::new(vb.pp("conv_in"), config.latent_channels, block_in, 3, axis)?;
        let mid = MidBlock::new(config, block_in, vb.pp("mid"))?;
        let mut resolution = config.resolution >> (levels - 1);
        let mut up = Vec::with_capacity(levels);
        for level in (0..levels).rev() {
            let vb = vb.pp("up").pp(level);
            let block_out = base * config.ch_mult[level];
            let attends = config.attends_at(resolution);
            let blocks = stage_blocks(
                config,
                config.num_res_blocks + 1,
                block_in,
                block_out,
                attends,
                &vb,
            )?;
            block_in = block_out;
            let resample = (level != 0)
                .then(|| Upsample::new(block_in, axis, vb.pp("upsample")))
                .transpose()?;
            resolution *= 2;
            up.push(Stage { blocks, resample });
        }
        up.reverse();
        Ok(Self {
            conv_in,
            mid,
            up,
            norm_out: Norm::new(config, block_in, vb.pp("norm_out"))?,
            conv_out: CausalConv2d::new(
                vb.pp("conv_out"),
                block_in,
                config.output_channels,
                3,
                axis,
            )?,
            output_channels: config.output_channels,
            mel_bins: config.mel_bins,
        })
    }

    fn forward(&self, sample: &Tensor) -> Result<Tensor> {
        let (_, _, frames, mel_bins) = sample.dims4()?;
        // Every supported axis is a causality axis here (`"none"` included, as in the reference).
        let target_time = (frames * LATENT_DOWNSAMPLE_FACTOR)
            .saturating_sub(LATENT_DOWNSAMPLE_FACTOR - 1)
            .max(1);
        let target_freq = self.mel_bins.unwrap_or(mel_bins);

        let mut x = self.mid.forward(&self.conv_in.forward(sample)?)?;
        for stage in self.up.iter().rev() {
            x = stage.forward_blocks(x)?;
            if let Some(upsample) = &stage.resample {
                x = upsample.forward(&x)?;
            }
        }
        let x = self.conv_out.forward(&self.norm_out.forward_silu(&x)?)?;

        // Cropped, then zero-padded, to exactly `target_time` x `target_freq`.
        let (_, channels, time, freq) = x.dims4()?;
        let x = x
            .narrow(1, 0, channels.min(self.output_channels))?
            .narrow(2, 0, time.min(target_time))?
            .narrow(3, 0, freq.min(target_freq))?;
        let x = x.pad_with_zeros(2, 0, target_time - time.min(target_time))?;
        x.pad_with_zeros(3, 0, target_freq - freq.min(target_freq))
    }
}

pub struct AutoencoderKLLTX2Audio {
    encoder: Encoder,
    decoder: Decoder,
    /// Per packed feature (`latent_channels · latent mel bins`), `[base_channels]`.
    latents_mean: Tensor,
    latents_std: Tensor,
    device: Device,
    dtype: DType,
    config: AutoencoderKLLTX2AudioConfig,
}

impl AutoencoderKLLTX2Audio {
    pub fn new(config: &AutoencoderKLLTX2AudioConfig, vb: VarBuilder) -> Result<Self> {
        config.validate().map_err(candle_core::Error::Msg)?;
        Ok(Self {
            encoder: Encoder::new(config, vb.pp("encoder"))?,
            decoder: Decoder::new(config, vb.pp("decoder"))?,
            latents_mean: vb.get(config.base_channels, "latents_mean")?,
            latents_std: vb.get(config.base_channels, "latents_std")?,
            device: vb.device().clone(),
            dtype: vb.dtype(),
            config: config.clone(),
        })
    }

    /// Reads `dir/config.json` and the memory-mapped weights of an `audio_vae` folder, or the
    /// audio VAE of an LTX-2 checkpoint (see [`crate::loader::single_file`]).
    pub fn load(path: &Path, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        let builder = single_file::Builder {
            layout: OriginalLayout::Ltx2AudioVae,
            infer: |_| Ok(AutoencoderKLLTX2AudioConfig::default()),
            check: AutoencoderKLLTX2AudioConfig::validate,
            build: |config, vb| Self::new(config, vb),
        };
        Ok(single_file::load_model(path, builder, dtype, device)?.0)
    }

    pub fn config(&self) -> &AutoencoderKLLTX2AudioConfig {
        &self.config
    }

    /// The dtype of the weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `x` on the model's device and dtype, after checking it is `[batch, channels, frames,
    /// mel_bins]`.
    fn input(&self, x: &Tensor, what: &str, channels: usize) -> Result<Tensor> {
        match x.dims() {
            &[_, c, t, m] if c == channels && t > 0 && m > 0 => {
                x.to_device(&self.device)?.to_dtype(self.dtype)
            }
            dims => candle_core::bail!(
                "AutoencoderKLLTX2Audio.{what} has shape {dims:?}; expected [batch, {channels}, frames, mel_bins]"
            ),
        }
    }

    /// Mel frames per latent frame (`temporal_compression_ratio`).
    pub fn temporal_compression_ratio(&self) -> usize {
        LATENT_DOWNSAMPLE_FACTOR
    }

    /// Mel bins per latent mel bin (`mel_compression_ratio`).
    pub fn mel_compression_ratio(&self) -> usize {
        LATENT_DOWNSAMPLE_FACTOR
    }

    /// Samples per second of the audio its mel spectrograms describe (`config.sample_rate`).
    pub fn sample_rate(&self) -> usize {
        self.config.sample_rate
    }

    /// Waveform samples per mel frame (`config.mel_hop_length`).
    pub fn mel_hop_length(&self) -> usize {
        self.config.mel_hop_length
    }

    /// Latent frames per second of audio, as the pipeline sizes the audio latents.
    pub fn latents_per_second(&self) -> f64 {
        self.config.sample_rate as f64
            / self.config.mel_hop_length as f64
            / LATENT_DOWNSAMPLE_FACTOR as f64
    }

    /// The latents' mel bins, `mel_bins / mel_compression_ratio`, as the pipeline sizes them
    /// (it needs `mel_bins` set).
    pub fn latent_mel_bins(&self) -> Result<usize> {
        match self.config.mel_bins {
            Some(mel_bins) => Ok(mel_bins / LATENT_DOWNSAMPLE_FACTOR),
            None => candle_core::bail!(
                "AutoencoderKLLTX2Audio: mel_bins is null, so the latents' mel bins are unknown"
            ),
        }
    }

    /// The per-feature statistics `[base_channels]` the pipeline normalises packed latents with.
    pub fn latents_mean(&self) -> &Tensor {
        &self.latents_mean
    }

    pub fn latents_std(&self) -> &Tensor {
        &self.latents_std
    }

    /// `sample` `[batch, in_channels, frames, mel_bins]` -> the posterior mode
    /// `[batch, latent_channels, frames', mel_bins']`.
    pub fn encode(&self, sample: &Tensor) -> Result<Tensor> {
        let sample = self.input(sample, "encode: sample", self.config.in_channels)?;
        let moments = self.encoder.forward(&sample)?;
        // `DiagonalGaussianDistribution.mode()`: the first half of the channels (torch.chunk).
        let channels = moments.dim(1)?;
        moments.narrow(1, 0, channels.div_ceil(2))
    }

    /// `latents` `[batch, latent_channels, frames, mel_bins']` -> the mel spectrogram
    /// `[batch, output_channels, 4·frames − 3, mel_bins]`.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let latents = self.input(latents, "decode: latents", self.config.latent_channels)?;
        self.decoder.forward(&latents)
    }

    /// `[B, C, L, M]` -> `[B, L, C·M]` (`_pack_audio_latents`).
    pub fn pack_latents(latents: &Tensor) -> Result<Tensor> {
        let (b, c, l, m) = latents.dims4()?;
        latents
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, l, c * m))
    }

    /// `[B, L, C·M]` -> `[B, C, L, M]` for `num_mel_bins` = M (`_unpack_audio_latents`).
    pub fn unpack_latents(latents: &Tensor, num_mel_bins: usize) -> Result<Tensor> {
        let (b, l, features) = latents.dims3()?;
        if num_mel_bins == 0 || !features.is_multiple_of(num_mel_bins) {
            candle_core::bail!(
                "unpack_latents: packed latents of shape {:?} do not split into {num_mel_bins} mel bins",
                latents.dims()
            );
        }
        latents
            .reshape((b, l, features / num_mel_bins, num_mel_bins))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// The statistics in the dtype and on the device of packed `latents` `[B, L, features]`.
    fn stats(&self, latents: &Tensor, what: &str) -> Result<(Tensor, Tensor)> {
        let features = self.latents_mean.elem_count();
        if latents.rank() != 3 || latents.dim(D::Minus1)? != features {
            candle_core::bail!(
                "{what}: latents have shape {:?}; the packed audio latents are [batch, frames, {features}]",
                latents.dims()
            );
        }
        let cast = |t: &Tensor| t.to_device(latents.device())?.to_dtype(latents.dtype());
        Ok((cast(&self.latents_mean)?, cast(&self.latents_std)?))
    }

    /// Packed posterior latents -> the standardised latents the transformer works on
    /// (`_normalize_audio_latents`).
    pub fn normalize_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let (mean, std) = self.stats(latents, "normalize_latents")?;
        latents.broadcast_sub(&mean)?.broadcast_div(&std)
    }

    /// Standardised packed latents -> packed latents, then [`Self::unpack_latents`] and
    /// [`Self::decode`] (`_denormalize_audio_latents`).
    pub fn denormalize_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let (mean, std) = self.stats(latents, "denormalize_latents")?;
        latents.broadcast_mul(&std)?.broadcast_add(&mean)
    }
}
