//! diffusers' 2-D KL autoencoder (`models/autoencoders/autoencoder_kl.py`, `vae.py`): the image
//! VAE of FLUX.1 (`AutoencoderKL`), whose encoder and decoder FLUX.2's `AutoencoderKLFlux2`
//! reuses ([`crate::families::flux2::vae`]). Sizes come from the config only;
//! the only block types are the ones these VAEs are built from (`DownEncoderBlock2D`,
//! `UpDecoderBlock2D`), and any other is refused by name at load.
//!
//! Tensors are `[batch, channels, height, width]`. `encode` returns the posterior mode (the mean
//! half of the moments, as `latent_dist.mode()`), `decode` what `vae.decode(z).sample` returns:
//! not clamped, and before any scaling or shift (the pipelines apply those).

use super::Activation;
use super::GroupNorm;
use super::conv::Conv2d;
use super::{Linear, linear};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::path::Path;

/// `resnet_eps`, which `Encoder` and `Decoder` fix for every norm they build.
const NORM_EPS: f64 = 1e-6;

/// `config.json` of an `AutoencoderKL`, field names and defaults as the reference's constructor.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct AutoencoderKLConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: String,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    /// Latents are multiplied by this (after subtracting `shift_factor`) for the denoiser.
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    pub latents_mean: Option<Vec<f64>>,
    pub latents_std: Option<Vec<f64>>,
    /// Whether the reference runs this VAE in f32 even in a half-precision pipeline.
    pub force_upcast: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl Default for AutoencoderKLConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl AutoencoderKLConfig {
    fn coder_config(&self) -> CoderConfig<'_> {
        CoderConfig {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            latent_channels: self.latent_channels,
            down_block_types: &self.down_block_types,
            up_block_types: &self.up_block_types,
            block_out_channels: &self.block_out_channels,
            decoder_block_out_channels: &self.block_out_channels,
            layers_per_block: self.layers_per_block,
            act_fn: &self.act_fn,
            norm_num_groups: self.norm_num_groups,
            mid_block_add_attention: self.mid_block_add_attention,
            use_quant_conv: self.use_quant_conv,
            use_post_quant_conv: self.use_post_quant_conv,
        }
    }
}

/// The constructor arguments of the encoder, decoder and quant convs, which every 2-D KL
/// autoencoder config carries under the same names.
pub(crate) struct CoderConfig<'a> {
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    pub down_block_types: &'a [String],
    pub up_block_types: &'a [String],
    pub block_out_channels: &'a [usize],
    /// `block_out_channels` unless the config gives the decoder its own widths.
    pub decoder_block_out_channels: &'a [usize],
    pub layers_per_block: usize,
    pub act_fn: &'a str,
    pub norm_num_groups: usize,
    pub mid_block_add_attention: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
}

impl CoderConfig<'_> {
    /// The resnets' activation; an error names any option this engine does not build.
    fn validate(&self) -> std::result::Result<Activation, String> {
        let blocks = [
            (
                "down_block_types",
                self.down_block_types,
                "DownEncoderBlock2D",
                self.block_out_channels,
            ),
            (
                "up_block_types",
                self.up_block_types,
                "UpDecoderBlock2D",
                self.decoder_block_out_channels,
            ),
        ];
        for (field, types, supported, widths) in blocks {
            if let Some(other) = types.iter().find(|t| *t != supported) {
                return Err(format!(
                    "unsupported block type `{other}` in {field} (only {supported} is supported)"
                ));
            }
            if widths.is_empty() || types.len() != widths.len() {
                return Err(format!(
                    "{field} has {} entries for {} block widths; there must be one block per width",
                    types.len(),
                    widths.len()
                ));
            }
        }
        let groups = self.norm_num_groups;
        let mut widths = self
            .block_out_channels
            .iter()
            .chain(self.decoder_block_out_channels);
        if let Some(width) = widths.find(|&&w| w == 0 || groups == 0 || !w.is_multiple_of(groups)) {
            return Err(format!(
                "block widths must be positive multiples of norm_num_groups {groups}; {width} is not"
            ));
        }
        if self.in_channels == 0 || self.out_channels == 0 || self.latent_channels == 0 {
            return Err("in_channels, out_channels and latent_channels must be positive".into());
        }
        // The names diffusers' `get_activation` maps (but `mish`).
        match self.act_fn {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu" => Ok(Activation::Gelu),
            "relu" => Ok(Activation::Relu),
            other => Err(format!(
                "unsupported act_fn `{other}` (supported: silu, swish, gelu, relu)"
            )),
        }
    }
}

/// Reads and validates `dir/config.json`; every error names the file.
pub(crate) fn read_coder_config<T: serde::de::DeserializeOwned>(
    dir: &Path,
    coder_config: impl FnOnce(&T) -> CoderConfig<'_>,
) -> std::result::Result<T, crate::loader::LoadError> {
    let path = dir.join("config.json");
    let config: T = crate::loader::read_config(&path)?;
    coder_config(&config)
        .validate()
        .map_err(|reason| crate::loader::LoadError::BadConfig { path, reason })?;
    Ok(config)
}

/// `ResnetBlock2D` without a time embedding: norm, act, conv, norm, act, conv, plus the input
/// (through a 1x1 conv when the width changes).
struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    act: Activation,
}

impl ResnetBlock {
    fn new(
        in_channels: usize,
        out_channels: usize,
        groups: usize,
        act: Activation,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(in_channels, groups, NORM_EPS, vb.pp("norm1"))?,
            conv1: Conv2d::load(vb.pp("conv1"), in_channels, out_channels, 3, 1, true)?,
            norm2: GroupNorm::new(out_channels, groups, NORM_EPS, vb.pp("norm2"))?,
            conv2: Conv2d::load(vb.pp("conv2"), out_channels, out_channels, 3, 1, true)?,
            conv_shortcut: (in_channels != out_channels)
                .then(|| {
                    Conv2d::load(
                        vb.pp("conv_shortcut"),
                        in_channels,
                        out_channels,
                        1,
                        1,
                        true,
                    )
                })
                .transpose()?,
            act,
        })
    }

    /// `norm -> act`, with SiLU (the VAEs' activation) fused into the norm.
    fn norm_act(&self, norm: &GroupNorm, x: &Tensor) -> Result<Tensor> {
        match self.act {
            Activation::Silu => norm.forward_silu(x),
            act => act.apply(&norm.forward(x)?),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv1.forward(&self.norm_act(&self.norm1, x)?)?;
        h = self.conv2.forward(&self.norm_act(&self.norm2, &h)?)?;
        match &self.conv_shortcut {
            Some(conv) => conv.forward(x)? + h,
            None => x + h,
        }
    }
}

/// The mid-block `Attention`: group norm, one head as wide as the channels over every pixel, the
/// output projection and the residual.
struct SpatialAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl SpatialAttention {
    fn new(channels: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        // Checkpoints of diffusers' deprecated `AttentionBlock` name the projections `query`,
        // `key`, `value` and `proj_attn`; diffusers renames them at load, and so does this.
        let [q, k, v, out] = if vb.contains_tensor("query.weight") {
            ["query", "key", "value", "proj_attn"]
        } else {
            ["to_q", "to_k", "to_v", "to_out.0"]
        };
        let projection = |name| linear(channels, channels, true, vb.pp(name));
        Ok(Self {
            group_norm: GroupNorm::new(channels, groups, NORM_EPS, vb.pp("group_norm"))?,
            to_q: projection(q)?,
            to_k: projection(k)?,
            to_v: projection(v)?,
            to_out: projection(out)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        // [b, c, h, w] -> [b, h*w, c]: the pixels are the tokens.
        let tokens = self
            .group_norm
            .forward(x)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let head = |layer: &Linear| layer.forward(&tokens)?.reshape((b, h * w, 1, c));
        let attended = crate::attention::attention(
            &head(&self.to_q)?,
            &head(&self.to_k)?,
            &head(&self.to_v)?,
        )?
        .reshape((b, h * w, c))?;
        let out = self.to_out.forward(&attended)?;
        out.transpose(1, 2)?.reshape((b, c, h, w))? + x
    }
}

/// `UNetMidBlock2D` as the VAEs build it: resnet, optional attention, resnet.
struct MidBlock {
    first: ResnetBlock,
    attention: Option<SpatialAttention>,
    second: ResnetBlock,
}

impl MidBlock {
    fn new(
        channels: usize,
        groups: usize,
        act: Activation,
        add_attention: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            first: ResnetBlock::new(channels, channels, groups, act, vb.pp("resnets.0"))?,
            attention: add_attention
                .then(|| SpatialAttention::new(channels, groups, vb.pp("attentions.0")))
                .transpose()?,
            second: ResnetBlock::new(channels, channels, groups, act, vb.pp("resnets.1"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.first.forward(x)?;
        if let Some(attention) = &self.attention {
            x = attention.forward(&x)?;
        }
        self.second.forward(&x)
    }
}

/// How a down or up block changes the resolution after its resnets.
enum Resample {
    /// `Downsample2D(padding=0)`: one zero row and column at the bottom and right, then a 3x3
    /// stride-2 convolution.
    Down(Conv2d),
    /// `Upsample2D`: nearest-neighbour 2x, then a 3x3 convolution.
    Up(Conv2d),
}

impl Resample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Down(conv) => conv.forward(&x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?),
            Self::Up(conv) => {
                let (_, _, h, w) = x.dims4()?;
                conv.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)
            }
        }
    }
}

/// `DownEncoderBlock2D` or `UpDecoderBlock2D`: resnets, then the resampling of every block but
/// the last.
struct Block {
    resnets: Vec<ResnetBlock>,
    resample: Option<Resample>,
}

impl Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for resnet in &self.resnets {
            x = resnet.forward(&x)?;
        }
        match &self.resample {
            Some(resample) => resample.forward(&x),
            None => Ok(x),
        }
    }
}

/// `resnets` resnet blocks from `in_channels` to `out_channels` under `vb.resnets.N`.
fn resnets(
    count: usize,
    in_channels: usize,
    out_channels: usize,
    groups: usize,
    act: Activation,
    vb: &VarBuilder,
) -> Result<Vec<ResnetBlock>> {
    (0..count)
        .map(|i| {
            let input = if i == 0 { in_channels } else { out_channels };
            ResnetBlock::new(
                input,
                out_channels,
                groups,
                act,
                vb.pp(format!("resnets.{i}")),
            )
        })
        .collect()
}

/// The group norm, SiLU (whatever `act_fn`) and 3x3 convolution that end both halves.
struct OutputHead {
    norm: GroupNorm,
    conv: Conv2d,
}

impl OutputHead {
    fn new(
        in_channels: usize,
        out_channels: usize,
        groups: usize,
        vb: &VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            norm: GroupNorm::new(in_channels, groups, NORM_EPS, vb.pp("conv_norm_out"))?,
            conv: Conv2d::load(vb.pp("conv_out"), in_channels, out_channels, 3, 1, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(&self.norm.forward_silu(x)?)
    }
}

/// `vae.py`'s `Encoder` with `double_z`: image to the moments (mean and log-variance halves).
struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<Block>,
    mid_block: MidBlock,
    head: OutputHead,
}

impl Encoder {
    fn new(config: &CoderConfig, act: Activation, vb: VarBuilder) -> Result<Self> {
        let widths = config.block_out_channels;
        let groups = config.norm_num_groups;
        let mut in_channels = widths[0];
        let mut down_blocks = Vec::with_capacity(widths.len());
        for (i, &width) in widths.iter().enumerate() {
            let block = vb.pp(format!("down_blocks.{i}"));
            let is_final = i + 1 == widths.len();
            down_blocks.push(Block {
                resnets: resnets(
                    config.layers_per_block,
                    in_channels,
                    width,
                    groups,
                    act,
                    &block,
                )?,
                resample: (!is_final)
                    .then(|| {
                        let conv = Conv2d::load(
                            block.pp("downsamplers.0.conv"),
                            width,
                            width,
                            3,
                            2,
                            true,
                        )?;
                        Ok::<_, candle_core::Error>(Resample::Down(conv.with_padding(0)))
                    })
                    .transpose()?,
            });
            in_channels = width;
        }
        let last = in_channels;
        Ok(Self {
            conv_in: Conv2d::load(vb.pp("conv_in"), config.in_channels, widths[0], 3, 1, true)?,
            down_blocks,
            mid_block: MidBlock::new(
                last,
                groups,
                act,
                config.mid_block_add_attention,
                vb.pp("mid_block"),
            )?,
            head: OutputHead::new(last, 2 * config.latent_channels, groups, &vb)?,
        })
    }

    fn forward(&self, sample: &Tensor) -> Result<Tensor> {
        let mut x = self.conv_in.forward(sample)?;
        for block in &self.down_blocks {
            x = block.forward(&x)?;
        }
        self.head.forward(&self.mid_block.forward(&x)?)
    }
}

/// `vae.py`'s `Decoder` (group norms): latents to the image.
struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<Block>,
    head: OutputHead,
}

impl Decoder {
    fn new(config: &CoderConfig, act: Activation, vb: VarBuilder) -> Result<Self> {
        let widths = config.decoder_block_out_channels;
        let groups = config.norm_num_groups;
        let deepest = widths[widths.len() - 1];
        let mut in_channels = deepest;
        let mut up_blocks = Vec::with_capacity(widths.len());
        for (i, &width) in widths.iter().rev().enumerate() {
            let block = vb.pp(format!("up_blocks.{i}"));
            let is_final = i + 1 == widths.len();
            up_blocks.push(Block {
                resnets: resnets(
                    config.layers_per_block + 1,
                    in_channels,
                    width,
                    groups,
                    act,
                    &block,
                )?,
                resample: (!is_final)
                    .then(|| {
                        Conv2d::load(block.pp("upsamplers.0.conv"), width, width, 3, 1, true)
                            .map(Resample::Up)
                    })
                    .transpose()?,
            });
            in_channels = width;
        }
        Ok(Self {
            conv_in: Conv2d::load(
                vb.pp("conv_in"),
                config.latent_channels,
                deepest,
                3,
                1,
                true,
            )?,
            mid_block: MidBlock::new(
                deepest,
                groups,
                act,
                config.mid_block_add_attention,
                vb.pp("mid_block"),
            )?,
            up_blocks,
            head: OutputHead::new(widths[0], config.out_channels, groups, &vb)?,
        })
    }

    fn forward(&self, latents: &Tensor) -> Result<Tensor> {
        let mut x = self.mid_block.forward(&self.conv_in.forward(latents)?)?;
        for block in &self.up_blocks {
            x = block.forward(&x)?;
        }
        self.head.forward(&x)
    }
}

/// What every diffusers 2-D KL autoencoder is made of: the encoder, the decoder and the optional
/// 1x1 quant convs around the latent space.
pub(crate) struct KlCoders {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    in_channels: usize,
    latent_channels: usize,
    device: Device,
    dtype: DType,
}

impl KlCoders {
    pub(crate) fn new(config: &CoderConfig, vb: VarBuilder) -> Result<Self> {
        let act = config.validate().map_err(candle_core::Error::Msg)?;
        let moments = 2 * config.latent_channels;
        let latent = config.latent_channels;
        Ok(Self {
            encoder: Encoder::new(config, act, vb.pp("encoder"))?,
            decoder: Decoder::new(config, act, vb.pp("decoder"))?,
            quant_conv: config
                .use_quant_conv
                .then(|| Conv2d::load(vb.pp("quant_conv"), moments, moments, 1, 1, true))
                .transpose()?,
            post_quant_conv: config
                .use_post_quant_conv
                .then(|| Conv2d::load(vb.pp("post_quant_conv"), latent, latent, 1, 1, true))
                .transpose()?,
            in_channels: config.in_channels,
            latent_channels: latent,
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }

    /// `x` on the model's device and dtype, after checking it is `[batch, channels, h, w]`.
    fn input(&self, x: &Tensor, what: &str, channels: usize) -> Result<Tensor> {
        match x.dims() {
            &[_, c, h, w] if c == channels && h > 0 && w > 0 => {
                x.to_device(&self.device)?.to_dtype(self.dtype)
            }
            dims => candle_core::bail!(
                "{what} has shape {dims:?}; the VAE takes [batch, {channels}, height, width]"
            ),
        }
    }

    /// The posterior mode of `sample` `[b, in_channels, h, w]`: the mean half of
    /// `quant_conv(encoder(sample))`.
    pub(crate) fn encode(&self, sample: &Tensor) -> Result<Tensor> {
        let sample = self.input(sample, "encode: sample", self.in_channels)?;
        let mut moments = self.encoder.forward(&sample)?;
        if let Some(conv) = &self.quant_conv {
            moments = conv.forward(&moments)?;
        }
        moments.narrow(1, 0, self.latent_channels)?.contiguous()
    }

    /// `decoder(post_quant_conv(latents))`, not clamped.
    pub(crate) fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let mut z = self.input(latents, "decode: latents", self.latent_channels)?;
        if let Some(conv) = &self.post_quant_conv {
            z = conv.forward(&z)?;
        }
        self.decoder.forward(&z)
    }
}

/// FLUX.1's image VAE (and any `AutoencoderKL` of `DownEncoderBlock2D`/`UpDecoderBlock2D`).
pub struct AutoencoderKL {
    coders: KlCoders,
    config: AutoencoderKLConfig,
}

impl AutoencoderKL {
    pub fn new(config: &AutoencoderKLConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            coders: KlCoders::new(&config.coder_config(), vb)?,
            config: config.clone(),
        })
    }

    /// Reads a `vae` folder (`config.json` and the memory-mapped weights), or a single file in
    /// the latent-diffusion names (FLUX.1's `ae.safetensors`; see
    /// [`crate::loader::single_file`]).
    pub fn load(path: &Path, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        use crate::loader::single_file::{self, OriginalLayout, SingleFile};
        let builder = single_file::Builder {
            layout: OriginalLayout::LdmVae,
            infer: SingleFile::ldm_vae_config,
            check: |config: &AutoencoderKLConfig| config.coder_config().validate().map(drop),
            build: Self::new,
        };
        let (model, _) = single_file::load_model(path, builder, dtype, device)?;
        Ok(model)
    }

    pub fn config(&self) -> &AutoencoderKLConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.coders.dtype()
    }

    /// `sample` `[b, in_channels, h, w]` (in [-1, 1]) to the posterior mode
    /// `[b, latent_channels, h / 2^(blocks - 1), w / 2^(blocks - 1)]`, in the model's dtype.
    pub fn encode(&self, sample: &Tensor) -> Result<Tensor> {
        self.coders.encode(sample)
    }

    /// Latents `[b, latent_channels, h, w]` (unscaled) to the image `[b, out_channels, H, W]`,
    /// not clamped.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.coders.decode(latents)
    }
}
