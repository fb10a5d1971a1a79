//! `AutoencoderKLFlux2` (`models/autoencoders/autoencoder_kl_flux2.py`): the encoder and decoder
//! of [`crate::models::autoencoder_kl`] plus the running statistics of a BatchNorm over the
//! 2x2-patchified latents, which the FLUX.2 pipelines standardise the transformer's latents with.
//! `encode`/`decode` are the model's own methods (no patchify, no statistics); the pipeline's
//! latent steps are [`AutoencoderKLFlux2::patchify_latents`], `normalize_latents` and their
//! inverses, as `Flux2KleinPipeline` spells them.

use crate::loader::LoadError;
use crate::models::autoencoder_kl::{CoderConfig, KlCoders, read_coder_config};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::path::Path;

/// `config.json` of an `AutoencoderKLFlux2`, field names and defaults as the reference's
/// constructor.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct AutoencoderKLFlux2Config {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    /// The decoder's widths when they differ from the encoder's.
    pub decoder_block_out_channels: Option<Vec<usize>>,
    pub layers_per_block: usize,
    pub act_fn: String,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
    /// Added to the running variance before its square root, as the pipeline does.
    pub batch_norm_eps: f64,
    /// `[height, width]` of the patches the BatchNorm's channels count.
    pub patch_size: Vec<usize>,
}

impl Default for AutoencoderKLFlux2Config {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into(); 4],
            up_block_types: vec!["UpDecoderBlock2D".into(); 4],
            block_out_channels: vec![128, 256, 512, 512],
            decoder_block_out_channels: None,
            layers_per_block: 2,
            act_fn: "silu".into(),
            latent_channels: 32,
            norm_num_groups: 32,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
            batch_norm_eps: 1e-4,
            patch_size: vec![2, 2],
        }
    }
}

impl AutoencoderKLFlux2Config {
    fn coder_config(&self) -> CoderConfig<'_> {
        CoderConfig {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            latent_channels: self.latent_channels,
            down_block_types: &self.down_block_types,
            up_block_types: &self.up_block_types,
            block_out_channels: &self.block_out_channels,
            decoder_block_out_channels: self
                .decoder_block_out_channels
                .as_deref()
                .unwrap_or(&self.block_out_channels),
            layers_per_block: self.layers_per_block,
            act_fn: &self.act_fn,
            norm_num_groups: self.norm_num_groups,
            mid_block_add_attention: self.mid_block_add_attention,
            use_quant_conv: self.use_quant_conv,
            use_post_quant_conv: self.use_post_quant_conv,
        }
    }

    /// `(height, width)` of a patch.
    fn patch(&self) -> std::result::Result<(usize, usize), String> {
        match self.patch_size[..] {
            [ph, pw] if ph > 0 && pw > 0 => Ok((ph, pw)),
            _ => Err(format!(
                "patch_size {:?} is not [height, width] of positive sizes",
                self.patch_size
            )),
        }
    }
}

pub struct AutoencoderKLFlux2 {
    coders: KlCoders,
    /// `bn.running_mean` and `sqrt(bn.running_var + batch_norm_eps)`, `[1, C, 1, 1]` over the
    /// patchified channels, in the model's dtype (as the reference's buffers are).
    latents_mean: Tensor,
    latents_std: Tensor,
    patch: (usize, usize),
    config: AutoencoderKLFlux2Config,
}

impl AutoencoderKLFlux2 {
    pub fn new(config: &AutoencoderKLFlux2Config, vb: VarBuilder) -> Result<Self> {
        let patch = config.patch().map_err(candle_core::Error::Msg)?;
        let channels = patch.0 * patch.1 * config.latent_channels;
        let bn = vb.pp("bn");
        let as_channels = |t: Tensor| t.reshape((1, channels, 1, 1));
        let running_var = bn.get(channels, "running_var")?;
        Ok(Self {
            coders: KlCoders::new(&config.coder_config(), vb)?,
            latents_mean: as_channels(bn.get(channels, "running_mean")?)?,
            latents_std: as_channels((running_var + config.batch_norm_eps)?.sqrt()?)?,
            patch,
            config: config.clone(),
        })
    }

    /// Reads `dir/config.json` and the memory-mapped weights of a `vae` folder.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        use anyhow::Context;
        let config = read_coder_config(dir, AutoencoderKLFlux2Config::coder_config)?;
        if let Err(reason) = config.patch() {
            let path = dir.join("config.json");
            return Err(LoadError::BadConfig { path, reason }.into());
        }
        let vb = crate::loader::open_weights(dir, dtype, device)?;
        Self::new(&config, vb)
            .with_context(|| format!("loading AutoencoderKLFlux2 from {}", dir.display()))
    }

    pub fn config(&self) -> &AutoencoderKLFlux2Config {
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

    /// Latents `[b, latent_channels, h, w]` (unpatchified, de-standardised) to the image
    /// `[b, out_channels, H, W]`, not clamped.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.coders.decode(latents)
    }

    /// `[b, c, h, w]` -> `[b, c·ph·pw, h/ph, w/pw]`, each channel's patch laid out row-major in
    /// consecutive channels (`_patchify_latents`).
    pub fn patchify_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let (ph, pw) = self.patch;
        let (b, c, h, w) = latents.dims4()?;
        if !h.is_multiple_of(ph) || !w.is_multiple_of(pw) {
            candle_core::bail!(
                "patchify_latents: latents of shape {:?} do not split into {ph}x{pw} patches",
                latents.dims()
            );
        }
        latents
            .reshape(vec![b, c, h / ph, ph, w / pw, pw])?
            .permute([0, 1, 3, 5, 2, 4])?
            .contiguous()?
            .reshape((b, c * ph * pw, h / ph, w / pw))
    }

    /// Inverse of [`Self::patchify_latents`] (`_unpatchify_latents`).
    pub fn unpatchify_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let (ph, pw) = self.patch;
        let (b, c, h, w) = latents.dims4()?;
        if !c.is_multiple_of(ph * pw) {
            candle_core::bail!(
                "unpatchify_latents: latents of shape {:?} do not hold {ph}x{pw} patches",
                latents.dims()
            );
        }
        latents
            .reshape(vec![b, c / (ph * pw), ph, pw, h, w])?
            .permute([0, 1, 4, 2, 5, 3])?
            .contiguous()?
            .reshape((b, c / (ph * pw), h * ph, w * pw))
    }

    /// The BatchNorm's statistics in the dtype and on the device of `latents`, after checking
    /// that `latents` is patchified.
    fn stats(&self, latents: &Tensor, what: &str) -> Result<(Tensor, Tensor)> {
        let channels = self.latents_mean.elem_count();
        match latents.dims() {
            &[_, c, _, _] if c == channels => {}
            dims => candle_core::bail!(
                "{what}: latents have shape {dims:?}; the patchified latents are [batch, {channels}, height, width]"
            ),
        }
        let cast = |t: &Tensor| t.to_device(latents.device())?.to_dtype(latents.dtype());
        Ok((cast(&self.latents_mean)?, cast(&self.latents_std)?))
    }

    /// Patchified posterior latents -> the standardised latents the transformer works on.
    pub fn normalize_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let (mean, std) = self.stats(latents, "normalize_latents")?;
        latents.broadcast_sub(&mean)?.broadcast_div(&std)
    }

    /// Standardised latents -> patchified latents (then [`Self::unpatchify_latents`] and
    /// [`Self::decode`]).
    pub fn denormalize_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let (mean, std) = self.stats(latents, "denormalize_latents")?;
        latents.broadcast_mul(&std)?.broadcast_add(&mean)
    }
}
