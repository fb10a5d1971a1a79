//! `LTX2Vocoder` and `LTX2VocoderWithBWE` (diffusers `pipelines/ltx2/vocoder.py`): the HiFi-GAN /
//! BigVGAN style generator that turns the audio VAE's mel spectrograms into waveforms, and the
//! LTX-2.X variant that runs a second generator on the mel spectrogram of the first one's output
//! (bandwidth extension) and adds it to the resampled waveform. The pipeline passes the audio
//! VAE's decoded `[batch, channels, frames, mel_bins]` straight in; the output is
//! `[batch, out_channels, samples]` at [`LTX2Vocoder::output_sampling_rate`].

use crate::loader::single_file::{self, OriginalLayout};
use crate::models::alias_free::{AntiAliasAct1d, SnakeBeta, UpSample1d};
use crate::models::conv1d::{Conv1d, ConvTranspose1d, PaddingMode, pad1d};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `config.json` of an `LTX2Vocoder`, field names and defaults as the reference's constructor.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct LTX2VocoderConfig {
    /// Input channels × mel bins of the spectrogram.
    pub in_channels: usize,
    pub hidden_channels: usize,
    pub out_channels: usize,
    pub upsample_kernel_sizes: Vec<usize>,
    pub upsample_factors: Vec<usize>,
    pub resnet_kernel_sizes: Vec<usize>,
    pub resnet_dilations: Vec<Vec<usize>>,
    /// `leaky_relu`, `snake` or `snakebeta`.
    pub act_fn: String,
    pub leaky_relu_negative_slope: f64,
    pub antialias: bool,
    pub antialias_ratio: usize,
    pub antialias_kernel_size: usize,
    /// `tanh`, `clamp` or none.
    pub final_act_fn: Option<String>,
    pub final_bias: bool,
    pub output_sampling_rate: usize,
}

impl Default for LTX2VocoderConfig {
    fn default() -> Self {
        Self {
            in_channels: 128,
            hidden_channels: 1024,
            out_channels: 2,
            upsample_kernel_sizes: vec![16, 15, 8, 4, 4],
            upsample_factors: vec![6, 5, 2, 2, 2],
            resnet_kernel_sizes: vec![3, 7, 11],
            resnet_dilations: vec![vec![1, 3, 5]; 3],
            act_fn: "leaky_relu".into(),
            leaky_relu_negative_slope: 0.1,
            antialias: false,
            antialias_ratio: 2,
            antialias_kernel_size: 12,
            final_act_fn: Some("tanh".into()),
            final_bias: true,
            output_sampling_rate: 24000,
        }
    }
}

impl LTX2VocoderConfig {
    /// The reference's own checks, plus the options it accepts but this engine refuses.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.upsample_kernel_sizes.len() != self.upsample_factors.len() {
            return Err(format!(
                "upsample_kernel_sizes {:?} and upsample_factors {:?} must have the same length",
                self.upsample_kernel_sizes, self.upsample_factors
            ));
        }
        if self.upsample_factors.is_empty() {
            return Err("the vocoder needs at least one upsampling layer".into());
        }
        if self.resnet_kernel_sizes.len() != self.resnet_dilations.len() {
            return Err(format!(
                "resnet_kernel_sizes {:?} and resnet_dilations {:?} must have the same length",
                self.resnet_kernel_sizes, self.resnet_dilations
            ));
        }
        if self.resnet_kernel_sizes.is_empty() {
            return Err("the vocoder needs at least one resnet per upsampling layer".into());
        }
        if self.resnet_kernel_sizes.contains(&0)
            || self.resnet_dilations.iter().flatten().any(|&d| d == 0)
        {
            return Err(format!(
                "resnet kernel sizes {:?} and dilations {:?} must be positive",
                self.resnet_kernel_sizes, self.resnet_dilations
            ));
        }
        for (&kernel, &stride) in self
            .upsample_kernel_sizes
            .iter()
            .zip(&self.upsample_factors)
        {
            if stride == 0 || kernel < stride {
                return Err(format!(
                    "an upsampling layer of kernel {kernel} and factor {stride}: the factor must be positive and at most the kernel size"
                ));
            }
        }
        let last = self.hidden_channels >> self.upsample_factors.len();
        if last == 0 {
            return Err(format!(
                "hidden_channels {} halved over {} upsampling layers leaves no channels",
                self.hidden_channels,
                self.upsample_factors.len()
            ));
        }
        match self.act_fn.as_str() {
            "snake" | "snakebeta" => {}
            "leaky_relu" if self.antialias => {
                // diffusers' ResBlock then wraps its second activations in ever deeper nested
                // anti-aliasing (a bug no released checkpoint exercises).
                return Err("act_fn \"leaky_relu\" with antialias=true is not supported".into());
            }
            "leaky_relu" => {}
            other => {
                return Err(format!(
                    "unsupported act_fn {other:?}; supported: snakebeta, snake, leaky_relu"
                ));
            }
        }
        let snake = self.act_fn != "leaky_relu";
        if (snake || self.antialias)
            && (self.antialias_ratio == 0 || self.antialias_kernel_size < self.antialias_ratio)
        {
            return Err(format!(
                "antialias_kernel_size {} must be at least antialias_ratio {} (> 0)",
                self.antialias_kernel_size, self.antialias_ratio
            ));
        }
        match self.final_act_fn.as_deref() {
            None | Some("tanh") | Some("clamp") => Ok(()),
            Some(other) => Err(format!(
                "unsupported final_act_fn {other:?}; supported: tanh, clamp, null"
            )),
        }
    }
}

/// An activation of the generator: leaky ReLU, or a Snake, anti-aliased or not.
#[derive(Debug, Clone)]
enum Activation {
    LeakyRelu(f64),
    Snake(SnakeBeta),
    AntiAliased(AntiAliasAct1d),
}

impl Activation {
    /// The activation `ResBlock` builds under `vb` for `config` (`use_beta` for `snakebeta`).
    fn new(config: &LTX2VocoderConfig, channels: usize, vb: VarBuilder) -> Result<Self> {
        if config.act_fn == "leaky_relu" {
            return Ok(Self::LeakyRelu(config.leaky_relu_negative_slope));
        }
        let use_beta = config.act_fn == "snakebeta";
        if config.antialias {
            let act = SnakeBeta::new(channels, use_beta, &vb.pp("act"))?;
            let (ratio, kernel) = (config.antialias_ratio, config.antialias_kernel_size);
            Ok(Self::AntiAliased(AntiAliasAct1d::new(
                act, ratio, kernel, &vb,
            )?))
        } else {
            Ok(Self::Snake(SnakeBeta::new(channels, use_beta, &vb)?))
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::LeakyRelu(slope) => candle_nn::ops::leaky_relu(x, *slope),
            Self::Snake(act) => act.forward(x),
            Self::AntiAliased(act) => act.forward(x),
        }
    }
}

/// `ResBlock`: per dilation, act, dilated conv, act, conv, plus the input.
#[derive(Debug, Clone)]
struct ResBlock {
    layers: Vec<(Activation, Conv1d, Activation, Conv1d)>,
}

impl ResBlock {
    fn new(
        config: &LTX2VocoderConfig,
        channels: usize,
        kernel: usize,
        dilations: &[usize],
        vb: VarBuilder,
    ) -> Result<Self> {
        let layers = dilations
            .iter()
            .enumerate()
            .map(|(j, &dilation)| {
                let conv = |name: &str, dilation: usize| {
                    Conv1d::load(vb.pp(name).pp(j), channels, channels, kernel, 0, true)
                        .map(|c| c.same(dilation))
                };
                Ok((
                    Activation::new(config, channels, vb.pp("acts1").pp(j))?,
                    conv("convs1", dilation)?,
                    Activation::new(config, channels, vb.pp("acts2").pp(j))?,
                    conv("convs2", 1)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (act1, conv1, act2, conv2) in &self.layers {
            let xt = conv1.forward(&act1.forward(&x)?)?;
            let xt = conv2.forward(&act2.forward(&xt)?)?;
            x = (x + xt)?;
        }
        Ok(x)
    }
}

/// What follows `conv_out`.
#[derive(Debug, Clone, Copy)]
enum FinalActivation {
    Tanh,
    Clamp,
    Identity,
}

pub struct LTX2Vocoder {
    conv_in: Conv1d,
    upsamplers: Vec<ConvTranspose1d>,
    /// `resnets_per_upsample` blocks per upsampler, averaged.
    resnets: Vec<Vec<ResBlock>>,
    /// The leaky ReLU slope applied before each upsampler (the Snake variants activate inside
    /// the blocks instead).
    pre_upsample_slope: Option<f64>,
    act_out: Activation,
    conv_out: Conv1d,
    final_act: FinalActivation,
    device: Device,
    dtype: DType,
    config: LTX2VocoderConfig,
}

impl LTX2Vocoder {
    pub fn new(config: &LTX2VocoderConfig, vb: VarBuilder) -> Result<Self> {
        config.validate().map_err(candle_core::Error::Msg)?;
        let conv_in = Conv1d::load(
            vb.pp("conv_in"),
            config.in_channels,
            config.hidden_channels,
            7,
            3,
            true,
        )?;
        let mut upsamplers = Vec::new();
        let mut resnets = Vec::new();
        let mut channels = config.hidden_channels;
        for (i, (&stride, &kernel)) in config
            .upsample_factors
            .iter()
            .zip(&config.upsample_kernel_sizes)
            .enumerate()
        {
            let out = channels / 2;
            upsamplers.push(ConvTranspose1d::load(
                vb.pp("upsamplers").pp(i),
                channels,
                out,
                kernel,
                stride,
                (kernel - stride) / 2,
            )?);
            let per_upsample = config.resnet_kernel_sizes.len();
            let blocks = config
                .resnet_kernel_sizes
                .iter()
                .zip(&config.resnet_dilations)
                .enumerate()
                .map(|(j, (&kernel, dilations))| {
                    let vb = vb.pp("resnets").pp(i * per_upsample + j);
                    ResBlock::new(config, out, kernel, dilations, vb)
                })
                .collect::<Result<_>>()?;
            resnets.push(blocks);
            channels = out;
        }
        let act_out = if config.act_fn == "leaky_relu" {
            // `nn.LeakyReLU()`: PyTorch's default slope, not the configured one (as the original).
            Activation::LeakyRelu(0.01)
        } else {
            // Always anti-aliased SnakeBeta, whatever `antialias` says.
            let vb = vb.pp("act_out");
            let act = SnakeBeta::new(channels, true, &vb.pp("act"))?;
            let (ratio, kernel) = (config.antialias_ratio, config.antialias_kernel_size);
            Activation::AntiAliased(AntiAliasAct1d::new(act, ratio, kernel, &vb)?)
        };
        let conv_out = Conv1d::load(
            vb.pp("conv_out"),
            channels,
            config.out_channels,
            7,
            3,
            config.final_bias,
        )?;
        let final_act = match config.final_act_fn.as_deref() {
            Some("tanh") => FinalActivation::Tanh,
            Some("clamp") => FinalActivation::Clamp,
            _ => FinalActivation::Identity,
        };
        Ok(Self {
            conv_in,
            upsamplers,
            resnets,
            pre_upsample_slope: (config.act_fn == "leaky_relu")
                .then_some(config.leaky_relu_negative_slope),
            act_out,
            conv_out,
            final_act,
            device: vb.device().clone(),
            dtype: vb.dtype(),
            config: config.clone(),
        })
    }

    /// Reads `dir/config.json` and the memory-mapped weights of a `vocoder` folder, or the
    /// vocoder of an LTX-2 checkpoint (see [`crate::loader::single_file`]).
    pub fn load(path: &Path, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        let builder = single_file::Builder {
            layout: OriginalLayout::Ltx2Vocoder,
            infer: |_| Ok(LTX2VocoderConfig::default()),
            check: LTX2VocoderConfig::validate,
            build: |config, vb| Self::new(config, vb),
        };
        Ok(single_file::load_model(path, builder, dtype, device)?.0)
    }

    pub fn config(&self) -> &LTX2VocoderConfig {
        &self.config
    }

    /// The dtype of the weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Samples per second of the waveform it makes.
    pub fn output_sampling_rate(&self) -> usize {
        self.config.output_sampling_rate
    }

    /// Samples out per input frame (the product of the upsampling factors).
    pub fn total_upsample_factor(&self) -> usize {
        self.config.upsample_factors.iter().product()
    }

    /// A mel spectrogram `[batch, channels, frames, mel_bins]` (the audio VAE's decoded sample)
    /// -> the waveform `[batch, out_channels, frames · total_upsample_factor]`.
    pub fn forward(&self, hidden_states: &Tensor) -> Result<Tensor> {
        self.forward_layout(hidden_states, false)
    }

    /// The same from `[batch, channels, mel_bins, frames]` (the reference's `time_last=True`).
    pub fn forward_time_last(&self, hidden_states: &Tensor) -> Result<Tensor> {
        self.forward_layout(hidden_states, true)
    }

    fn forward_layout(&self, hidden_states: &Tensor, time_last: bool) -> Result<Tensor> {
        let layout = if time_last {
            "[batch, channels, mel_bins, frames]"
        } else {
            "[batch, channels, frames, mel_bins]"
        };
        let in_channels = self.config.in_channels;
        let (b, c, m, t) = match *hidden_states.dims() {
            [b, c, t, m] if !time_last && c * m == in_channels => (b, c, m, t),
            [b, c, m, t] if time_last && c * m == in_channels => (b, c, m, t),
            ref dims => candle_core::bail!(
                "LTX2Vocoder: hidden_states has shape {dims:?}; expected {layout} with channels × mel_bins = {in_channels}"
            ),
        };
        let x = hidden_states
            .to_device(&self.device)?
            .to_dtype(self.dtype)?;
        let x = if time_last { x } else { x.transpose(2, 3)? };
        let mut x = self
            .conv_in
            .forward(&x.contiguous()?.reshape((b, c * m, t))?)?;
        for (upsampler, blocks) in self.upsamplers.iter().zip(&self.resnets) {
            if let Some(slope) = self.pre_upsample_slope {
                x = candle_nn::ops::leaky_relu(&x, slope)?;
            }
            x = upsampler.forward(&x)?;
            let mut sum = blocks[0].forward(&x)?;
            for block in &blocks[1..] {
                sum = (sum + block.forward(&x)?)?;
            }
            x = (sum / blocks.len() as f64)?;
        }
        let x = self.conv_out.forward(&self.act_out.forward(&x)?)?;
        match self.final_act {
            FinalActivation::Tanh => x.tanh(),
            FinalActivation::Clamp => x.clamp(-1f32, 1f32),
            FinalActivation::Identity => Ok(x),
        }
    }
}

/// `config.json` of an `LTX2VocoderWithBWE`: the first generator's fields, the bandwidth
/// extender's as `bwe_*`, the mel STFT between them and the two sampling rates.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct LTX2VocoderWithBWEConfig {
    pub in_channels: usize,
    pub hidden_channels: usize,
    pub out_channels: usize,
    pub upsample_kernel_sizes: Vec<usize>,
    pub upsample_factors: Vec<usize>,
    pub resnet_kernel_sizes: Vec<usize>,
    pub resnet_dilations: Vec<Vec<usize>>,
    pub act_fn: String,
    pub leaky_relu_negative_slope: f64,
    pub antialias: bool,
    pub antialias_ratio: usize,
    pub antialias_kernel_size: usize,
    pub final_act_fn: Option<String>,
    pub final_bias: bool,
    pub bwe_in_channels: usize,
    pub bwe_hidden_channels: usize,
    pub bwe_out_channels: usize,
    pub bwe_upsample_kernel_sizes: Vec<usize>,
    pub bwe_upsample_factors: Vec<usize>,
    pub bwe_resnet_kernel_sizes: Vec<usize>,
    pub bwe_resnet_dilations: Vec<Vec<usize>>,
    pub bwe_act_fn: String,
    pub bwe_leaky_relu_negative_slope: f64,
    pub bwe_antialias: bool,
    pub bwe_antialias_ratio: usize,
    pub bwe_antialias_kernel_size: usize,
    pub bwe_final_act_fn: Option<String>,
    pub bwe_final_bias: bool,
    pub filter_length: usize,
    pub hop_length: usize,
    pub window_length: usize,
    pub num_mel_channels: usize,
    pub input_sampling_rate: usize,
    pub output_sampling_rate: usize,
}

impl Default for LTX2VocoderWithBWEConfig {
    fn default() -> Self {
        let dilations = vec![vec![1, 3, 5]; 3];
        Self {
            in_channels: 128,
            hidden_channels: 1536,
            out_channels: 2,
            upsample_kernel_sizes: vec![11, 4, 4, 4, 4, 4],
            upsample_factors: vec![5, 2, 2, 2, 2, 2],
            resnet_kernel_sizes: vec![3, 7, 11],
            resnet_dilations: dilations.clone(),
            act_fn: "snakebeta".into(),
            leaky_relu_negative_slope: 0.1,
            antialias: true,
            antialias_ratio: 2,
            antialias_kernel_size: 12,
            final_act_fn: None,
            final_bias: false,
            bwe_in_channels: 128,
            bwe_hidden_channels: 512,
            bwe_out_channels: 2,
            bwe_upsample_kernel_sizes: vec![12, 11, 4, 4, 4],
            bwe_upsample_factors: vec![6, 5, 2, 2, 2],
            bwe_resnet_kernel_sizes: vec![3, 7, 11],
            bwe_resnet_dilations: dilations,
            bwe_act_fn: "snakebeta".into(),
            bwe_leaky_relu_negative_slope: 0.1,
            bwe_antialias: true,
            bwe_antialias_ratio: 2,
            bwe_antialias_kernel_size: 12,
            bwe_final_act_fn: None,
            bwe_final_bias: false,
            filter_length: 512,
            hop_length: 80,
            window_length: 512,
            num_mel_channels: 64,
            input_sampling_rate: 16000,
            output_sampling_rate: 48000,
        }
    }
}

impl LTX2VocoderWithBWEConfig {
    /// The first generator's config (its output rate is the input rate of the extension).
    pub fn vocoder(&self) -> LTX2VocoderConfig {
        LTX2VocoderConfig {
            in_channels: self.in_channels,
            hidden_channels: self.hidden_channels,
            out_channels: self.out_channels,
            upsample_kernel_sizes: self.upsample_kernel_sizes.clone(),
            upsample_factors: self.upsample_factors.clone(),
            resnet_kernel_sizes: self.resnet_kernel_sizes.clone(),
            resnet_dilations: self.resnet_dilations.clone(),
            act_fn: self.act_fn.clone(),
            leaky_relu_negative_slope: self.leaky_relu_negative_slope,
            antialias: self.antialias,
            antialias_ratio: self.antialias_ratio,
            antialias_kernel_size: self.antialias_kernel_size,
            final_act_fn: self.final_act_fn.clone(),
            final_bias: self.final_bias,
            output_sampling_rate: self.input_sampling_rate,
        }
    }

    /// The bandwidth extender's config.
    pub fn bwe_generator(&self) -> LTX2VocoderConfig {
        LTX2VocoderConfig {
            in_channels: self.bwe_in_channels,
            hidden_channels: self.bwe_hidden_channels,
            out_channels: self.bwe_out_channels,
            upsample_kernel_sizes: self.bwe_upsample_kernel_sizes.clone(),
            upsample_factors: self.bwe_upsample_factors.clone(),
            resnet_kernel_sizes: self.bwe_resnet_kernel_sizes.clone(),
            resnet_dilations: self.bwe_resnet_dilations.clone(),
            act_fn: self.bwe_act_fn.clone(),
            leaky_relu_negative_slope: self.bwe_leaky_relu_negative_slope,
            antialias: self.bwe_antialias,
            antialias_ratio: self.bwe_antialias_ratio,
            antialias_kernel_size: self.bwe_antialias_kernel_size,
            final_act_fn: self.bwe_final_act_fn.clone(),
            final_bias: self.bwe_final_bias,
            output_sampling_rate: self.output_sampling_rate,
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        self.vocoder().validate()?;
        self.bwe_generator()
            .validate()
            .map_err(|reason| format!("bwe_{reason}"))?;
        if self.hop_length == 0 || self.filter_length == 0 {
            return Err(format!(
                "hop_length {} and filter_length {} must be positive",
                self.hop_length, self.filter_length
            ));
        }
        if self.input_sampling_rate == 0 || self.output_sampling_rate < self.input_sampling_rate {
            return Err(format!(
                "output_sampling_rate {} must be at least input_sampling_rate {} (> 0)",
                self.output_sampling_rate, self.input_sampling_rate
            ));
        }
        Ok(())
    }
}

/// `MelSTFT`: a causal log-mel spectrogram from the checkpoint's DFT-times-Hann bases and mel
/// filterbank.
struct MelStft {
    /// `[2·freqs, 1, filter_length]`: real then imaginary parts.
    forward_basis: Tensor,
    /// `[mel_channels, freqs]`.
    mel_basis: Tensor,
    hop_length: usize,
    window_length: usize,
}

impl MelStft {
    fn new(config: &LTX2VocoderWithBWEConfig, vb: VarBuilder) -> Result<Self> {
        let freqs = config.filter_length / 2 + 1;
        Ok(Self {
            forward_basis: vb
                .pp("stft_fn")
                .get((2 * freqs, 1, config.filter_length), "forward_basis")?,
            mel_basis: vb.get((config.num_mel_channels, freqs), "mel_basis")?,
            hop_length: config.hop_length,
            window_length: config.window_length,
        })
    }

    /// `[N, samples]` -> `log(max(mel, 1e-5))` `[N, mel_channels, frames]`, left-padded so each
    /// frame sees only the past; magnitudes and the mel projection in f32.
    fn log_mel(&self, waveform: &Tensor) -> Result<Tensor> {
        let left_pad = self.window_length.saturating_sub(self.hop_length);
        let x = pad1d(&waveform.unsqueeze(1)?, left_pad, 0, PaddingMode::Zeros)?;
        let spec = x
            .conv1d(&self.forward_basis, 0, self.hop_length, 1, 1)?
            .to_dtype(DType::F32)?;
        let freqs = spec.dim(1)? / 2;
        let real = spec.narrow(1, 0, freqs)?;
        let imag = spec.narrow(1, freqs, freqs)?;
        let magnitude = (real.sqr()? + imag.sqr()?)?.sqrt()?;
        let mel = self
            .mel_basis
            .to_dtype(DType::F32)?
            .broadcast_matmul(&magnitude)?;
        mel.clamp(1e-5f32, f32::INFINITY)?
            .log()?
            .to_dtype(waveform.dtype())
    }
}

pub struct LTX2VocoderWithBWE {
    vocoder: LTX2Vocoder,
    bwe_generator: LTX2Vocoder,
    mel_stft: MelStft,
    resampler: UpSample1d,
    config: LTX2VocoderWithBWEConfig,
}

impl LTX2VocoderWithBWE {
    pub fn new(config: &LTX2VocoderWithBWEConfig, vb: VarBuilder) -> Result<Self> {
        config.validate().map_err(candle_core::Error::Msg)?;
        let ratio = config.output_sampling_rate / config.input_sampling_rate;
        Ok(Self {
            vocoder: LTX2Vocoder::new(&config.vocoder(), vb.pp("vocoder"))?,
            bwe_generator: LTX2Vocoder::new(&config.bwe_generator(), vb.pp("bwe_generator"))?,
            mel_stft: MelStft::new(config, vb.pp("mel_stft"))?,
            resampler: UpSample1d::hann(ratio, vb.dtype(), vb.device())?,
            config: config.clone(),
        })
    }

    /// Reads `dir/config.json` and the memory-mapped weights of a `vocoder` folder.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        use anyhow::Context;
        let config = crate::loader::read_checked_config(dir, LTX2VocoderWithBWEConfig::validate)?;
        let vb = crate::loader::open_weights(dir, dtype, device)?;
        Self::new(&config, vb)
            .with_context(|| format!("loading LTX2VocoderWithBWE from {}", dir.display()))
    }

    pub fn config(&self) -> &LTX2VocoderWithBWEConfig {
        &self.config
    }

    /// Samples per second of the waveform it makes.
    pub fn output_sampling_rate(&self) -> usize {
        self.config.output_sampling_rate
    }

    /// A mel spectrogram `[batch, channels, frames, mel_bins]` -> the waveform
    /// `[batch, out_channels, samples]` at the output rate, clamped to [-1, 1].
    pub fn forward(&self, mel_spec: &Tensor) -> Result<Tensor> {
        let x = self.vocoder.forward(mel_spec)?;
        let (b, c, samples) = x.dims3()?;
        // Whole hops, so the mel frames cover the waveform exactly.
        let hop = self.config.hop_length;
        let x = pad1d(
            &x,
            0,
            samples.next_multiple_of(hop) - samples,
            PaddingMode::Zeros,
        )?;
        let padded = x.dim(2)?;
        let mel = self.mel_stft.log_mel(&x.reshape((b * c, padded))?)?;
        let (_, mels, frames) = mel.dims3()?;
        let residual = self
            .bwe_generator
            .forward_time_last(&mel.reshape((b, c, mels, frames))?)?;
        let skip = self.resampler.forward(&x)?;
        if residual.dims() != skip.dims() {
            candle_core::bail!(
                "LTX2VocoderWithBWE: the bandwidth extension makes {:?} but the resampled waveform is {:?}; hop_length {hop} × the rate ratio must equal the product of bwe_upsample_factors",
                residual.dims(),
                skip.dims()
            );
        }
        let waveform = (residual + skip)?.clamp(-1f32, 1f32)?;
        let output_samples =
            samples * self.config.output_sampling_rate / self.config.input_sampling_rate;
        waveform.narrow(2, 0, output_samples)
    }
}

/// Whichever vocoder a pipeline's `vocoder/` folder holds, by its config's `_class_name`; an
/// LTX-2 checkpoint file's is an `LTX2Vocoder`.
pub enum Vocoder {
    Plain(Box<LTX2Vocoder>),
    WithBwe(Box<LTX2VocoderWithBWE>),
}

impl Vocoder {
    /// From a `vocoder` folder, or an LTX-2 checkpoint file (the class then from the
    /// `vocoder/config.json` beside it, where there is one).
    pub fn load(path: &Path, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        #[derive(serde::Deserialize)]
        struct Header {
            #[serde(rename = "_class_name")]
            class_name: String,
        }
        let config = match path.parent() {
            Some(dir) if path.is_file() => dir.join("vocoder").join("config.json"),
            _ => path.join("config.json"),
        };
        let header: Header = if path.is_file() && !config.is_file() {
            Header {
                class_name: "LTX2Vocoder".into(),
            }
        } else {
            crate::loader::read_config(&config)?
        };
        let dir = path;
        Ok(match header.class_name.as_str() {
            "LTX2Vocoder" => Self::Plain(Box::new(LTX2Vocoder::load(dir, device, dtype)?)),
            "LTX2VocoderWithBWE" => {
                Self::WithBwe(Box::new(LTX2VocoderWithBWE::load(dir, device, dtype)?))
            }
            other => anyhow::bail!(
                "{}: `{other}` is not an LTX-2 vocoder (LTX2Vocoder, LTX2VocoderWithBWE)",
                dir.display()
            ),
        })
    }

    /// A mel spectrogram `[batch, channels, frames, mel_bins]` -> the waveform
    /// `[batch, channels, samples]`.
    pub fn forward(&self, mel: &Tensor) -> Result<Tensor> {
        match self {
            Self::Plain(vocoder) => vocoder.forward(mel),
            Self::WithBwe(vocoder) => vocoder.forward(mel),
        }
    }

    /// Samples per second of the waveform.
    pub fn output_sampling_rate(&self) -> usize {
        match self {
            Self::Plain(vocoder) => vocoder.output_sampling_rate(),
            Self::WithBwe(vocoder) => vocoder.output_sampling_rate(),
        }
    }
}
