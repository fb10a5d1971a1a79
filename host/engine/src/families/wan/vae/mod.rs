//! `AutoencoderKLWan`: the Wan 2.1 video VAE and its Wan 2.2 variant (TI2V-5B: `is_residual`,
//! `patch_size` 2, z_dim 48), read from a diffusers component folder (`config.json` +
//! safetensors). Sizes come from the config only.
//!
//! Encoding walks the video in chunks (the first frame, then 4 frames at a time) and decoding one
//! latent frame at a time, carrying a causal temporal cache between chunks as the reference does, so
//! that an 81-frame video never holds every activation at once. Public tensors use the diffusers
//! layout `[batch, channels, frames, height, width]`; this module never touches noise or schedules.

mod coder;
mod layers;

use crate::models::pixel_shuffle::{patchify, unpatchify};
use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use coder::{Decoder, Encoder};
use layers::{CausalConv3d, FeatCache};
use serde::Deserialize;
use std::path::Path;

/// Frames the reference encodes per chunk after the first frame.
const ENCODE_CHUNK: usize = 4;

/// `config.json` of an `AutoencoderKLWan` (defaults are the reference's).
#[derive(Debug, Clone, Deserialize)]
pub struct WanVaeConfig {
    #[serde(default = "default_base_dim")]
    pub base_dim: usize,
    #[serde(default)]
    pub decoder_base_dim: Option<usize>,
    #[serde(default = "default_z_dim")]
    pub z_dim: usize,
    #[serde(default = "default_dim_mult")]
    pub dim_mult: Vec<usize>,
    #[serde(default = "default_num_res_blocks")]
    pub num_res_blocks: usize,
    #[serde(default)]
    pub attn_scales: Vec<f64>,
    #[serde(default = "default_temperal_downsample")]
    pub temperal_downsample: Vec<bool>,
    pub latents_mean: Vec<f64>,
    pub latents_std: Vec<f64>,
    #[serde(default)]
    pub is_residual: bool,
    #[serde(default = "default_channels")]
    pub in_channels: usize,
    #[serde(default = "default_channels")]
    pub out_channels: usize,
    #[serde(default)]
    pub patch_size: Option<usize>,
    #[serde(default)]
    pub scale_factor_temporal: Option<usize>,
    #[serde(default)]
    pub scale_factor_spatial: Option<usize>,
}

fn default_base_dim() -> usize {
    96
}
fn default_z_dim() -> usize {
    16
}
fn default_dim_mult() -> Vec<usize> {
    vec![1, 2, 4, 4]
}
fn default_num_res_blocks() -> usize {
    2
}
fn default_temperal_downsample() -> Vec<bool> {
    vec![false, true, true]
}
fn default_channels() -> usize {
    3
}

impl WanVaeConfig {
    /// Pixel frames per latent frame (after the first).
    pub fn temporal_scale(&self) -> usize {
        self.scale_factor_temporal.unwrap_or(4)
    }

    /// Pixels per latent pixel along height and width (patchification included).
    pub fn spatial_scale(&self) -> usize {
        self.scale_factor_spatial.unwrap_or(8)
    }

    fn patch(&self) -> usize {
        self.patch_size.unwrap_or(1)
    }

    /// Channels of the images the VAE encodes (the config counts them after patchification).
    pub fn image_channels(&self) -> usize {
        self.in_channels / (self.patch() * self.patch())
    }

    fn validate(&self) -> Result<()> {
        if self.dim_mult.is_empty() {
            bail!("dim_mult is empty");
        }
        if self.latents_mean.len() != self.z_dim || self.latents_std.len() != self.z_dim {
            bail!(
                "latents_mean/latents_std have {}/{} entries, z_dim is {}",
                self.latents_mean.len(),
                self.latents_std.len(),
                self.z_dim
            );
        }
        if self.patch_size == Some(0) {
            bail!("patch_size is 0");
        }
        Ok(())
    }
}

pub struct AutoencoderKLWan {
    config: WanVaeConfig,
    encoder: Encoder,
    quant_conv: CausalConv3d,
    post_quant_conv: CausalConv3d,
    decoder: Decoder,
    device: Device,
    dtype: DType,
}

impl AutoencoderKLWan {
    /// Loads a VAE component folder, memory-mapping its weights.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?;
        let config: WanVaeConfig = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", config_path.display()))?;
        let vb = crate::loader::open_weights(dir, dtype, device)?;
        Self::new(vb, config).with_context(|| format!("loading the VAE in {}", dir.display()))
    }

    pub fn new(vb: VarBuilder, config: WanVaeConfig) -> Result<Self> {
        config.validate()?;
        let z2 = 2 * config.z_dim;
        let one = (1, 1, 1);
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), &config, config.in_channels)?,
            quant_conv: CausalConv3d::new(vb.pp("quant_conv"), z2, z2, one, 1, (0, 0))?,
            post_quant_conv: CausalConv3d::new(
                vb.pp("post_quant_conv"),
                config.z_dim,
                config.z_dim,
                one,
                1,
                (0, 0),
            )?,
            decoder: Decoder::new(vb.pp("decoder"), &config, config.out_channels)?,
            device: vb.device().clone(),
            dtype: vb.dtype(),
            config,
        })
    }

    pub fn config(&self) -> &WanVaeConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Encodes `video` `[b, c, frames, h, w]` in [-1, 1] to the posterior mode `[b, z, t, h/s, w/s]`.
    pub fn encode(&self, video: &Tensor) -> Result<Tensor> {
        let (_, c, f, h, w) = video.dims5()?;
        let p = self.config.patch();
        if c != self.config.image_channels() {
            bail!(
                "VAE encode: input has {c} channels, the VAE takes {}",
                self.config.image_channels()
            );
        }
        if !h.is_multiple_of(p) || !w.is_multiple_of(p) {
            bail!("VAE encode: height {h} and width {w} must be divisible by the patch size {p}");
        }
        let x = video
            .to_device(&self.device)?
            .to_dtype(self.dtype)?
            .permute((0, 2, 1, 3, 4))?;
        let x = patchify(&x, p)?;
        let mut cache = FeatCache::default();
        let mut chunks = Vec::new();
        let mut start = 0;
        // The reference encodes 1 + 4k frames; frames past the last full chunk are dropped as there.
        while start < f {
            let len = if start == 0 { 1 } else { ENCODE_CHUNK };
            if start + len > f {
                break;
            }
            cache.start_chunk();
            chunks.push(
                self.encoder
                    .forward(&x.narrow(1, start, len)?, &mut cache)?,
            );
            start += len;
        }
        let moments = self.quant_conv.forward(&Tensor::cat(&chunks, 1)?, None)?;
        Ok(moments
            .narrow(2, 0, self.config.z_dim)?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?)
    }

    /// Decodes latents `[b, z, t, h, w]` (already de-normalised) to video `[b, c, frames, H, W]`
    /// in [-1, 1] (clamped as the reference does), one latent frame at a time.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let (_, z, t, _, _) = latents.dims5()?;
        if z != self.config.z_dim {
            bail!(
                "VAE decode: latents have {z} channels, the VAE's z_dim is {}",
                self.config.z_dim
            );
        }
        let x = latents
            .to_device(&self.device)?
            .to_dtype(self.dtype)?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?;
        let x = self.post_quant_conv.forward(&x, None)?;
        let mut cache = FeatCache::default();
        let mut chunks = Vec::with_capacity(t);
        for i in 0..t {
            cache.start_chunk();
            let chunk = self
                .decoder
                .forward(&x.narrow(1, i, 1)?, &mut cache, i == 0)?;
            // Finished chunk by chunk, so the whole video is copied once (by the cat), not thrice.
            chunks.push(
                unpatchify(&chunk, self.config.patch())?
                    .clamp(-1f32, 1f32)?
                    .permute((0, 2, 1, 3, 4))?
                    .contiguous()?,
            );
        }
        Ok(Tensor::cat(&chunks, 2)?)
    }

    fn latent_stats(&self, like: &Tensor) -> Result<(Tensor, Tensor)> {
        let z = self.config.z_dim;
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let mean = Tensor::from_vec(
            f32s(&self.config.latents_mean),
            (1, z, 1, 1, 1),
            like.device(),
        )?;
        // The reference multiplies by 1/std in f32 rather than dividing; keep its rounding.
        let inv_std: Vec<f32> = f32s(&self.config.latents_std)
            .iter()
            .map(|s| 1.0 / s)
            .collect();
        let inv_std = Tensor::from_vec(inv_std, (1, z, 1, 1, 1), like.device())?;
        Ok((
            mean.to_dtype(like.dtype())?,
            inv_std.to_dtype(like.dtype())?,
        ))
    }

    /// Posterior latents -> the standardised latents the transformer works on.
    pub fn normalize_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let (mean, inv_std) = self.latent_stats(latents)?;
        Ok(latents.broadcast_sub(&mean)?.broadcast_mul(&inv_std)?)
    }

    /// Standardised latents -> what `decode` takes.
    pub fn denormalize_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let (mean, inv_std) = self.latent_stats(latents)?;
        Ok(latents.broadcast_div(&inv_std)?.broadcast_add(&mean)?)
    }
}
