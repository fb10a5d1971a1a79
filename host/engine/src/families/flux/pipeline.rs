//! FLUX.1 image generation as diffusers' `FluxPipeline` ([dev] with the guidance embedding,
//! [schnell] without) and `FluxKontextPipeline` (editing one image) run it: CLIP-L's pooled
//! output and T5's hidden states as the conditioning, noise on the latent grid packed into 2x2
//! patches with position ids `(0, y, x)`, the flow-Euler schedule `linspace(1, 1/n, n)` shifted by
//! the `mu` of the token count (`calculate_shift`), and the VAE's `scaling_factor` /
//! `shift_factor`. Kontext encodes the image to edit (auto-resized to the preferred Kontext
//! resolution of its aspect ratio), packs it and appends it to the generated tokens with ids
//! `(1, y, x)`; only the generated tokens are denoised and decoded.
//!
//! Unlike the reference, Kontext generates at the requested size instead of rescaling it to
//! `max_area` (1024² pixels): callers choose the size.

use super::transformer::{FluxTransformer2DModel, FluxTransformerConfig};
use crate::image_processor::pil_lanczos;
use crate::loader::{pipeline_component as component, read_config, read_pipeline_index};
use crate::lora::{LoraFile, LoraMode, LoraSpec};
use crate::models::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use crate::models::clip_text::CLIPTextModel;
use crate::models::t5::T5EncoderModel;
use crate::parallel::{SequenceSplit, Split, SplitSupport, split_tokens_only};
use crate::pipelines::{
    GenerateInputs, GenerateParams, GeneratedVideo, ImageInput, Progress, SizeRefused, Stage,
    VideoSize, image_size, initial_noise, no_frames,
};
use crate::schedulers::{FlowMatchEulerDiscrete, linspace};
use crate::tokenizer::PromptTokenizer;
use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// T5 tokens per prompt: the pipelines' `max_sequence_length` default (the published [schnell]
/// examples pass 256; `model_index.json` may say so with a `max_sequence_length` entry).
const MAX_SEQUENCE_LENGTH: usize = 512;
/// CLIP tokens per prompt when the tokenizer config names no `model_max_length`.
const CLIP_MAX_LENGTH: usize = 77;
/// The (width, height) Kontext was trained at, `PREFERRED_KONTEXT_RESOLUTIONS`.
const KONTEXT_RESOLUTIONS: [(u32, u32); 17] = [
    (672, 1568),
    (688, 1504),
    (720, 1456),
    (752, 1392),
    (800, 1328),
    (832, 1248),
    (880, 1184),
    (944, 1104),
    (1024, 1024),
    (1104, 944),
    (1184, 880),
    (1248, 832),
    (1328, 800),
    (1392, 752),
    (1456, 720),
    (1504, 688),
    (1568, 672),
];

/// The prompt side: CLIP-L for the pooled embedding, T5 for the token states. The encoders are
/// dropped between generations when asked to and reloaded from their folders.
struct FluxText {
    clip_tokenizer: PromptTokenizer,
    clip_max_length: usize,
    t5_tokenizer: PromptTokenizer,
    clip: Option<CLIPTextModel>,
    t5: Option<T5EncoderModel>,
    clip_dir: PathBuf,
    t5_dir: PathBuf,
}

/// A prompt's conditioning: T5's `prompt_embeds` `[1, L, joint_attention_dim]` and CLIP's
/// `pooled_prompt_embeds` `[1, pooled_projection_dim]`.
pub struct PromptEmbeds {
    pub prompt_embeds: Tensor,
    pub pooled_prompt_embeds: Tensor,
}

pub struct FluxPipeline {
    name: String,
    device: Device,
    dtype: DType,
    /// `FluxKontextPipeline`: the first reference image is the image to edit.
    kontext: bool,
    text: FluxText,
    keep_text_encoder: bool,
    transformer: FluxTransformer2DModel,
    vae: AutoencoderKL,
    scheduler_config: serde_json::Value,
    /// T5 tokens per prompt unless a generation asks for another length.
    max_sequence_length: usize,
    /// The LoRA files applied now, kept open for the next generation that names them.
    lora_files: Vec<Arc<LoraFile>>,
    /// This rank's part when one generation is split across cards.
    split: Split,
}

impl FluxPipeline {
    /// Loads the pipeline directory `dir` (weights memory-mapped).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let index = read_pipeline_index(dir)?;
        let kontext = match index.class_name.as_str() {
            "FluxPipeline" => false,
            "FluxKontextPipeline" => true,
            other => bail!("{}: {other} is not a FLUX.1 pipeline", dir.display()),
        };
        let tokenizer_dir = component(dir, "tokenizer")?;
        let tokenizer_config: serde_json::Value =
            read_config(&tokenizer_dir.join("tokenizer_config.json"))?;
        let clip_dir = component(dir, "text_encoder")?;
        let t5_dir = component(dir, "text_encoder_2")?;
        let text = FluxText {
            clip_tokenizer: PromptTokenizer::clip_from_dir(&tokenizer_dir)?,
            clip_max_length: tokenizer_config["model_max_length"]
                .as_u64()
                .map_or(CLIP_MAX_LENGTH, |n| n as usize),
            t5_tokenizer: PromptTokenizer::from_dir(&component(dir, "tokenizer_2")?)?,
            clip: Some(CLIPTextModel::load(&clip_dir, device, dtype)?),
            t5: Some(T5EncoderModel::load(&t5_dir, device, dtype)?),
            clip_dir,
            t5_dir,
        };
        Ok(Self {
            name: dir.display().to_string(),
            device: device.clone(),
            dtype,
            kontext,
            text,
            keep_text_encoder: true,
            transformer: FluxTransformer2DModel::load(
                &component(dir, "transformer")?,
                device,
                dtype,
            )?,
            vae: AutoencoderKL::load(&component(dir, "vae")?, device, dtype)?,
            scheduler_config: read_config(
                &component(dir, "scheduler")?.join("scheduler_config.json"),
            )?,
            max_sequence_length: index
                .settings
                .get("max_sequence_length")
                .and_then(|v| v.as_u64())
                .map_or(MAX_SEQUENCE_LENGTH, |n| n as usize),
            lora_files: Vec::new(),
            split: Split::default(),
        })
    }

    /// Whether this is `FluxKontextPipeline` (it needs an image to edit).
    pub fn is_kontext(&self) -> bool {
        self.kontext
    }

    /// Makes this pipeline one rank of a generation split across cards ([`crate::parallel`]):
    /// the image's tokens are shared; the first rank decodes the image, the others return its
    /// latents and zero frames.
    pub fn set_split(&mut self, split: Split) -> Result<()> {
        self.split = split_tokens_only(&self.name, &mut self.transformer, split)?;
        Ok(())
    }

    /// What a split of a generation of `size` can share out: the heads of the joint attention
    /// and the image tokens (the text stays whole).
    pub fn split_support(&self, size: VideoSize) -> SplitSupport {
        SplitSupport::tokens_only(
            self.transformer.split_heads(),
            image_tokens(self.vae.config(), size),
        )
    }

    /// [`FluxPipeline::split_support`] of the pipeline in `dir`, from its configs alone.
    pub fn inspect_split(dir: &Path, size: VideoSize) -> Result<SplitSupport> {
        let transformer: FluxTransformerConfig =
            read_config(&component(dir, "transformer")?.join("config.json"))?;
        let vae = read_config(&component(dir, "vae")?.join("config.json"))?;
        Ok(SplitSupport::tokens_only(
            transformer.num_attention_heads,
            image_tokens(&vae, size),
        ))
    }

    /// The sizes the pipeline in `dir` makes ([`crate::pipelines::image_size`] for its VAE), from
    /// its configs alone.
    pub fn inspect_size(dir: &Path, size: VideoSize) -> Result<Result<(), SizeRefused>> {
        let vae: AutoencoderKLConfig = read_config(&component(dir, "vae")?.join("config.json"))?;
        Ok(image_size(size, pixels_per_token(&vae)))
    }

    /// The denoising transformer.
    pub(crate) fn transformer(&mut self) -> &mut dyn crate::lora::Adaptable {
        &mut self.transformer
    }

    /// The card it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// See [`crate::pipelines::Pipeline::keep_text_encoder`].
    pub fn keep_text_encoder(&mut self, keep: bool) {
        self.keep_text_encoder = keep;
    }

    /// Applies `specs` to the transformer, replacing the LoRAs applied before. Returns the specs
    /// with each file's SHA-256; a spec that names one must match it.
    pub fn set_loras(&mut self, specs: &[LoraSpec], mode: LoraMode) -> Result<Vec<LoraSpec>> {
        crate::lora::apply_specs(
            &self.name,
            &mut self.transformer,
            specs,
            &mut self.lora_files,
            mode,
        )
    }

    pub fn generate(
        &mut self,
        params: &GenerateParams,
        inputs: GenerateInputs,
        on_progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<GeneratedVideo> {
        let mut report = crate::pipelines::reporter(on_progress);
        let (grid_h, grid_w) = self.check(params)?;
        let loras = self.set_loras(&params.loras, params.lora_mode)?;
        let max_length = params
            .max_sequence_length
            .unwrap_or(self.max_sequence_length);
        // `true_cfg_scale`: above 1 with a negative prompt, a second (negative) prediction per
        // step, extrapolated away from (on top of [dev]'s embedded guidance).
        let true_cfg_scale = params.true_cfg_scale.unwrap_or(1.0);
        let true_cfg = true_cfg_scale > 1.0
            && (!params.negative_prompt.is_empty()
                || (inputs.negative_prompt_embeds.is_some()
                    && inputs.negative_pooled_prompt_embeds.is_some()));

        report(Stage::EncodingPrompt, 0, 1)?;
        let positive = self.embeds(
            &params.prompt,
            max_length,
            inputs.prompt_embeds,
            inputs.pooled_prompt_embeds,
            "",
        )?;
        let negative = if true_cfg {
            Some(self.embeds(
                &params.negative_prompt,
                max_length,
                inputs.negative_prompt_embeds,
                inputs.negative_pooled_prompt_embeds,
                "negative ",
            )?)
        } else {
            None
        };
        if !self.keep_text_encoder {
            self.text.clip = None;
            self.text.t5 = None;
        }

        // 2x2-packed noise on the latent grid, as `prepare_latents` draws and packs it.
        let channels = self.transformer.config().in_channels / 4;
        let (latent_h, latent_w) = (2 * grid_h, 2 * grid_w);
        let latents = match inputs.latents {
            Some(latents) => {
                if latents.dims() != [1, channels, latent_h, latent_w] {
                    bail!(
                        "--latents must be [1, {channels}, {latent_h}, {latent_w}] for {}x{}, got {:?}",
                        params.width,
                        params.height,
                        latents.dims()
                    );
                }
                latents.to_device(&self.device)?
            }
            None => initial_noise(params.seed, (1, channels, latent_h, latent_w), &self.device)?,
        };
        let mut latents = pack(&latents.to_dtype(self.dtype)?)?;
        let tokens = grid_h * grid_w;
        let mut ids = grid_ids(0, grid_h, grid_w, &self.device)?;
        // Kontext: the image to edit, appended after the generated tokens.
        let image_tokens = if self.kontext {
            let (tokens, image_ids) = self.encode_image(&params.references[0])?;
            ids = Tensor::cat(&[&ids, &image_ids], 0)?;
            Some(tokens)
        } else {
            None
        };
        report(Stage::EncodingPrompt, 1, 1)?;

        let mut scheduler = FlowMatchEulerDiscrete::from_config(&self.scheduler_config, None)
            .with_context(|| format!("{}: scheduler", self.name))?;
        let sigmas = linspace(1.0, 1.0 / params.steps as f64, params.steps);
        scheduler.set_sigmas(
            &sigmas,
            Some(calculate_shift(&self.scheduler_config, tokens)),
        )?;
        let guidance = if self.transformer.config().guidance_embeds {
            Some(Tensor::full(params.guidance as f32, 1, &self.device)?)
        } else {
            None
        };
        let timesteps = scheduler.timesteps().to_vec();
        report(Stage::Denoising, 0, timesteps.len())?;
        for (i, t) in timesteps.iter().enumerate() {
            // The pipeline rounds the timestep to the latents' dtype before dividing by 1000.
            let timestep =
                (Tensor::full(*t as f32, 1, &self.device)?.to_dtype(self.dtype)? / 1000.0)?;
            let input = match &image_tokens {
                Some(image) => Tensor::cat(&[&latents, image], 1)?,
                None => latents.clone(),
            };
            let predict = |embeds: &PromptEmbeds| -> Result<Tensor> {
                let text_ids =
                    Tensor::zeros((embeds.prompt_embeds.dim(1)?, 3), DType::F32, &self.device)?;
                let out = self.transformer.forward(
                    &input,
                    &embeds.prompt_embeds,
                    &embeds.pooled_prompt_embeds,
                    &timestep,
                    &ids,
                    &text_ids,
                    guidance.as_ref(),
                )?;
                Ok(out.narrow(1, 0, tokens)?)
            };
            let mut noise_pred = predict(&positive)?;
            if let Some(negative) = &negative {
                let negative_pred = predict(negative)?;
                noise_pred = (&negative_pred + ((noise_pred - &negative_pred)? * true_cfg_scale)?)?;
            }
            latents = scheduler.step(&noise_pred, &latents)?;
            report(Stage::Denoising, i + 1, timesteps.len())?;
        }

        report(Stage::Decoding, 0, 1)?;
        let vae = self.vae.config();
        let z = ((unpack(&latents, grid_h, grid_w)? / vae.scaling_factor)?
            + vae.shift_factor.unwrap_or(0.0))?;
        let frames = match self.split.leads() {
            // [3, H, W] as one frame.
            true => {
                let image = self.vae.decode(&z)?;
                crate::video::pictures_to_frames(&image.squeeze(0)?.unsqueeze(1)?)?
            }
            false => no_frames(params)?,
        };
        report(Stage::Decoding, 1, 1)?;
        Ok(GeneratedVideo {
            frames,
            fps: 0,
            latents: z.to_dtype(DType::F32)?,
            loras,
            cache: None,
            audio: None,
            audio_latents: None,
        })
    }

    /// The packed token grid of a valid request, or why the request is not one.
    fn check(&self, params: &GenerateParams) -> Result<(usize, usize)> {
        let grid =
            crate::pipelines::image_grid(&self.name, params, pixels_per_token(self.vae.config()))?;
        match (self.kontext, params.references.len()) {
            (true, 0) => bail!(
                "{}: FLUX.1 Kontext edits an image: give the image to edit (--image)",
                self.name
            ),
            (true, 1) | (false, 0) => {}
            (true, n) => bail!("{}: FLUX.1 Kontext edits one image, got {n}", self.name),
            (false, _) => bail!(
                "{}: FluxPipeline takes no reference images (FluxKontextPipeline edits one)",
                self.name
            ),
        }
        if params.cache.is_some() {
            bail!("{}: step caching is implemented for Wan only", self.name);
        }
        if let Some(n) = params.max_sequence_length
            && !(1..=MAX_SEQUENCE_LENGTH).contains(&n)
        {
            bail!("max_sequence_length must be 1 to {MAX_SEQUENCE_LENGTH}, got {n}");
        }
        Ok(grid)
    }

    /// Given embeddings (both or neither) or the prompt's, on the device in the model's dtype.
    fn embeds(
        &mut self,
        prompt: &str,
        max_length: usize,
        embeds: Option<Tensor>,
        pooled: Option<Tensor>,
        which: &str,
    ) -> Result<PromptEmbeds> {
        let embeds = match (embeds, pooled) {
            (Some(prompt_embeds), Some(pooled_prompt_embeds)) => PromptEmbeds {
                prompt_embeds,
                pooled_prompt_embeds,
            },
            (None, None) => self.encode(prompt, max_length)?,
            _ => bail!(
                "{}: FLUX.1 takes {which}prompt embeddings together with their pooled embeddings (--{}prompt-embeds and --{}pooled-prompt-embeds)",
                self.name,
                which.replace(' ', "-"),
                which.replace(' ', "-")
            ),
        };
        let cfg = self.transformer.config();
        let (pooled_dim, text_dim) = (cfg.pooled_projection_dim, cfg.joint_attention_dim);
        if !matches!(*embeds.prompt_embeds.dims(), [1, _, d] if d == text_dim) {
            bail!(
                "{which}prompt embeddings must be [1, tokens, {text_dim}], got {:?}",
                embeds.prompt_embeds.dims()
            );
        }
        if embeds.pooled_prompt_embeds.dims() != [1, pooled_dim] {
            bail!(
                "{which}pooled prompt embeddings must be [1, {pooled_dim}], got {:?}",
                embeds.pooled_prompt_embeds.dims()
            );
        }
        let to = |t: Tensor| t.to_device(&self.device)?.to_dtype(self.dtype);
        Ok(PromptEmbeds {
            prompt_embeds: to(embeds.prompt_embeds)?,
            pooled_prompt_embeds: to(embeds.pooled_prompt_embeds)?,
        })
    }

    /// `encode_prompt`: CLIP's pooled output of the prompt padded to `model_max_length`, and
    /// T5's hidden states of the prompt padded to the pipeline's `max_sequence_length` (no
    /// attention mask, as the pipelines call it).
    pub fn encode_prompt(&mut self, prompt: &str) -> Result<PromptEmbeds> {
        self.encode(prompt, self.max_sequence_length)
    }

    fn encode(&mut self, prompt: &str, max_length: usize) -> Result<PromptEmbeds> {
        let text = &mut self.text;
        let clip_ids = text.clip_tokenizer.encode(prompt, text.clip_max_length)?;
        let t5_ids = text.t5_tokenizer.encode(prompt, max_length)?;
        let clip = match &mut text.clip {
            Some(clip) => clip,
            None => text.clip.insert(CLIPTextModel::load(
                &text.clip_dir,
                &self.device,
                self.dtype,
            )?),
        };
        let len = clip_ids.input_ids.len();
        let ids = Tensor::from_vec(clip_ids.input_ids, (1, len), &self.device)?;
        let pooled_prompt_embeds = clip.forward(&ids)?.pooler_output;
        let t5 = match &mut text.t5 {
            Some(t5) => t5,
            None => text.t5.insert(T5EncoderModel::load(
                &text.t5_dir,
                &self.device,
                self.dtype,
            )?),
        };
        let len = t5_ids.input_ids.len();
        let ids = Tensor::from_vec(t5_ids.input_ids, (1, len), &self.device)?;
        let prompt_embeds = t5.forward(&ids, &Tensor::ones((1, len), DType::U32, &self.device)?)?;
        Ok(PromptEmbeds {
            prompt_embeds: prompt_embeds.to_dtype(self.dtype)?,
            pooled_prompt_embeds,
        })
    }

    /// The image to edit as packed latent tokens `[1, N, 4C]` and their ids `(1, y, x)`: resized
    /// (Lanczos) to the preferred Kontext resolution of its aspect ratio, encoded (the posterior
    /// mode), shifted and scaled as the pipeline's `_encode_vae_image` does.
    fn encode_image(&self, image: &ImageInput) -> Result<(Tensor, Tensor)> {
        let image = image.load_rgb().context("the image to edit")?;
        let unit = pixels_per_token(self.vae.config()) as u32;
        let (width, height) = kontext_size(image.dimensions(), unit)
            .with_context(|| format!("{}: the image to edit", self.name))?;
        let image = pil_lanczos(&image, width, height);
        let pixels = Tensor::from_vec(
            image.into_raw(),
            (height as usize, width as usize, 3),
            &self.device,
        )?
        .to_dtype(DType::F32)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?;
        // `pil_to_numpy` (/ 255) then `normalize` (2x - 1), in f32.
        let pixels = (((pixels / 255.0)? * 2.0)? - 1.0)?.to_dtype(self.dtype)?;
        let vae = self.vae.config();
        let latents =
            ((self.vae.encode(&pixels)? - vae.shift_factor.unwrap_or(0.0))? * vae.scaling_factor)?;
        let (_, _, h, w) = latents.dims4()?;
        Ok((pack(&latents)?, grid_ids(1, h / 2, w / 2, &self.device)?))
    }
}

/// The size Kontext encodes an image of `(width, height)` pixels at: the aspect ratio of the
/// image cut down to multiples of `unit` (`get_default_height_width`), the preferred resolution
/// closest to it (ties to the smaller width), cut down to multiples of `unit`.
fn kontext_size((width, height): (u32, u32), unit: u32) -> Result<(u32, u32)> {
    let (w, h) = (width - width % unit, height - height % unit);
    if w == 0 || h == 0 {
        bail!("the image is {width}x{height}; both sides must be at least {unit} pixels");
    }
    let aspect = f64::from(w) / f64::from(h);
    let (_, w, h) = KONTEXT_RESOLUTIONS
        .iter()
        .map(|&(w, h)| ((aspect - f64::from(w) / f64::from(h)).abs(), w, h))
        .min_by(|a, b| a.partial_cmp(b).expect("finite aspect ratios"))
        .expect("the table is not empty");
    Ok((w / unit * unit, h / unit * unit))
}

/// `calculate_shift` of the image's token count with the scheduler config's
/// `base_image_seq_len` / `max_image_seq_len` / `base_shift` / `max_shift` (reference defaults
/// 256, 4096, 0.5, 1.15).
fn calculate_shift(config: &serde_json::Value, image_seq_len: usize) -> f64 {
    let get = |key: &str, default: f64| config[key].as_f64().unwrap_or(default);
    let (base_len, max_len) = (
        get("base_image_seq_len", 256.0),
        get("max_image_seq_len", 4096.0),
    );
    let (base_shift, max_shift) = (get("base_shift", 0.5), get("max_shift", 1.15));
    let m = (max_shift - base_shift) / (max_len - base_len);
    let b = base_shift - m * base_len;
    image_seq_len as f64 * m + b
}

/// Pixels per packed latent token side under the VAE of `vae`: its downsampling times the 2x2
/// patch.
fn pixels_per_token(vae: &AutoencoderKLConfig) -> usize {
    2 << vae.block_out_channels.len().saturating_sub(1)
}

/// The image tokens of a generation of `size`: its packed latent grid, the tokens the image to
/// edit (Kontext) appends come after these.
fn image_tokens(vae: &AutoencoderKLConfig, size: VideoSize) -> usize {
    let unit = pixels_per_token(vae);
    (size.height / unit) * (size.width / unit)
}

/// `_pack_latents`: `[B, C, H, W]` → `[B, (H/2)·(W/2), 4C]`, each token a 2x2 patch.
fn pack(latents: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = latents.dims4()?;
    Ok(latents
        .reshape(vec![b, c, h / 2, 2, w / 2, 2])?
        .permute([0, 2, 4, 1, 3, 5])?
        .reshape((b, (h / 2) * (w / 2), c * 4))?)
}

/// `_unpack_latents`: `[B, h·w, 4C]` of an `h`x`w` token grid → `[B, C, 2h, 2w]`.
fn unpack(tokens: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, _, c4) = tokens.dims3()?;
    let c = c4 / 4;
    Ok(tokens
        .reshape(vec![b, h, w, c, 2, 2])?
        .permute([0, 3, 1, 4, 2, 5])?
        .reshape((b, c, 2 * h, 2 * w))?)
}

/// `_prepare_latent_image_ids`: `(first, y, x)` of an `h`x`w` token grid, row-major, `[h·w, 3]`.
fn grid_ids(first: u32, h: usize, w: usize, device: &Device) -> Result<Tensor> {
    let ids: Vec<f32> = (0..h)
        .flat_map(|y| (0..w).flat_map(move |x| [first as f32, y as f32, x as f32]))
        .collect();
    Ok(Tensor::from_vec(ids, (h * w, 3), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calculate_shift_matches_the_reference() {
        // FLUX.1 [dev]'s scheduler config at 1024² (4096 tokens) and 512² (1024 tokens).
        let config = serde_json::json!({
            "base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15
        });
        assert!((calculate_shift(&config, 4096) - 1.15).abs() < 1e-12);
        assert!((calculate_shift(&config, 1024) - 0.6300000000000001).abs() < 1e-12);
        assert!((calculate_shift(&serde_json::json!({}), 256) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn pack_and_unpack_are_inverse_and_group_2x2_patches() -> Result<()> {
        let x = Tensor::arange(0f32, 48.0, &Device::Cpu)?.reshape((1, 2, 4, 6))?;
        let tokens = pack(&x)?;
        assert_eq!(tokens.dims(), [1, 6, 8]);
        // Token 1 is the patch at rows 0-1, columns 2-3: channel 0 then channel 1.
        assert_eq!(
            tokens.get(0)?.get(1)?.to_vec1::<f32>()?,
            [2.0, 3.0, 8.0, 9.0, 26.0, 27.0, 32.0, 33.0]
        );
        assert_eq!(
            unpack(&tokens, 2, 3)?.flatten_all()?.to_vec1::<f32>()?,
            x.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }

    #[test]
    fn kontext_sizes_follow_the_aspect_ratio_of_the_cut_image() {
        // 80x60 is cut to 80x48 first (multiples of 16): 5:3 gives 1328x800.
        assert_eq!(kontext_size((80, 60), 16).unwrap(), (1328, 800));
        assert_eq!(kontext_size((1024, 1024), 16).unwrap(), (1024, 1024));
        assert_eq!(kontext_size((600, 1200), 16).unwrap(), (720, 1456));
        assert!(kontext_size((10, 100), 16).is_err());
    }
}
