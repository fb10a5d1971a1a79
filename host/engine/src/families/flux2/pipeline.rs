//! FLUX.2 image generation, as diffusers' `Flux2KleinPipeline` ([klein] 4B/9B, distilled or
//! base) and `Flux2Pipeline` ([dev], guidance-distilled) run it: the prompt's Qwen3 hidden states
//! of layers 9/18/27 side by side as the text tokens, noise on the 2x2-patchified latent grid,
//! reference images encoded, normalised by the VAE's BatchNorm statistics and appended as extra
//! tokens with their own time coordinate (multi-reference editing), the flow-Euler schedule
//! time-shifted by the empirical `mu` of the image size, classifier-free guidance for the base
//! [klein] models and the guidance embedding for [dev].

use super::transformer::{Flux2Transformer2DModel, Flux2TransformerConfig};
use super::vae::{AutoencoderKLFlux2, AutoencoderKLFlux2Config};
use crate::loader::{pipeline_component as component, read_config, read_pipeline_index};
use crate::lora::LoraFile;
use crate::parallel::{SequenceSplit, Split, SplitSupport, split_tokens_only};
use crate::pipelines::{
    GenerateInputs, GenerateParams, GeneratedVideo, ImageInput, Progress, SizeRefused, Stage,
    VideoSize, image_size, initial_noise, no_frames,
};
use crate::schedulers::{FlowMatchEulerDiscrete, linspace};
use crate::text::chat_template::{ChatMessage, ChatTemplate};
use crate::text::decoder::HiddenStates;
use crate::text::model::LanguageModel;
use crate::tokenizer::PromptTokenizer;
use anyhow::{Context, Result, bail};
use candle_core::{D, DType, Device, Tensor};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Tokens per prompt (`max_sequence_length` of the pipelines).
const MAX_SEQUENCE_LENGTH: usize = 512;
/// The Qwen3 layers whose hidden states [klein] reads (`text_encoder_out_layers`).
const KLEIN_TEXT_LAYERS: [usize; 3] = [9, 18, 27];
/// Reference images above this many pixels are scaled down to it first, as the pipelines do.
const MAX_REFERENCE_AREA: u32 = 1024 * 1024;
/// The time coordinate of reference image `i` is `REFERENCE_TIME_STEP * (i + 1)`.
const REFERENCE_TIME_STEP: u32 = 10;

/// Which pipeline the checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// `Flux2KleinPipeline`: classifier-free guidance unless `is_distilled`.
    Klein { distilled: bool },
    /// `Flux2Pipeline`: the guidance scale goes into the transformer's guidance embedding.
    Dev,
}

/// The prompt side of a [klein] pipeline: tokenizer, chat template and the Qwen3 model, which is
/// dropped between generations when asked to and reloaded from `dir`.
struct QwenText {
    tokenizer: PromptTokenizer,
    template: ChatTemplate,
    encoder: Option<LanguageModel>,
    dir: PathBuf,
}

/// The models of a pipeline already in memory: what [`Flux2Pipeline::from_parts`] takes
/// ([`Flux2Pipeline::load`] reads them from a directory). Without a text encoder every
/// generation brings its prompt embeddings.
pub struct Flux2Parts {
    pub transformer: Flux2Transformer2DModel,
    pub vae: AutoencoderKLFlux2,
    /// `scheduler_config.json`; each generation builds its scheduler from it.
    pub scheduler_config: serde_json::Value,
    /// Names the pipeline in error messages.
    pub name: String,
}

pub struct Flux2Pipeline {
    name: String,
    device: Device,
    dtype: DType,
    variant: Variant,
    /// `None` for [dev], whose Mistral 3 text encoder is not implemented: it takes prompt
    /// embeddings.
    text: Option<QwenText>,
    keep_text_encoder: bool,
    transformer: Flux2Transformer2DModel,
    vae: AutoencoderKLFlux2,
    scheduler_config: serde_json::Value,
    /// LoRA files opened by earlier generations, reused while they stay chosen.
    lora_files: Vec<Arc<LoraFile>>,
    /// This rank's part when one generation is split across cards.
    split: Split,
}

impl Flux2Pipeline {
    /// Loads the pipeline directory `dir` (weights memory-mapped).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let index = read_pipeline_index(dir)?;
        let variant = match index.class_name.as_str() {
            "Flux2KleinPipeline" => Variant::Klein {
                distilled: index
                    .settings
                    .get("is_distilled")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false),
            },
            "Flux2Pipeline" => Variant::Dev,
            other => bail!("{}: {other} is not a FLUX.2 pipeline", dir.display()),
        };
        let text = match variant {
            Variant::Klein { .. } => {
                let tokenizer_dir = component(dir, "tokenizer")?;
                let encoder_dir = component(dir, "text_encoder")?;
                let template = ChatTemplate::from_dir(&tokenizer_dir)?.with_context(|| {
                    format!("{}: the tokenizer has no chat template", dir.display())
                })?;
                Some(QwenText {
                    tokenizer: PromptTokenizer::from_dir(&tokenizer_dir)?,
                    template,
                    encoder: Some(LanguageModel::load(&encoder_dir, device, dtype)?),
                    dir: encoder_dir,
                })
            }
            Variant::Dev => None,
        };
        Ok(Self {
            name: dir.display().to_string(),
            device: device.clone(),
            dtype,
            variant,
            text,
            keep_text_encoder: true,
            transformer: Flux2Transformer2DModel::load(
                &component(dir, "transformer")?,
                device,
                dtype,
            )?,
            vae: AutoencoderKLFlux2::load(&component(dir, "vae")?, device, dtype)?,
            scheduler_config: read_config(
                &component(dir, "scheduler")?.join("scheduler_config.json"),
            )?,
            lora_files: Vec::new(),
            split: Split::default(),
        })
    }

    /// A pipeline over models in memory, with no text encoder: a distilled [klein] when the
    /// transformer has no guidance embedding, else [dev].
    pub fn from_parts(parts: Flux2Parts, device: &Device, dtype: DType) -> Self {
        let variant = if parts.transformer.config().guidance_embeds {
            Variant::Dev
        } else {
            Variant::Klein { distilled: true }
        };
        Self {
            name: parts.name,
            device: device.clone(),
            dtype,
            variant,
            text: None,
            keep_text_encoder: true,
            transformer: parts.transformer,
            vae: parts.vae,
            scheduler_config: parts.scheduler_config,
            lora_files: Vec::new(),
            split: Split::default(),
        }
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

    /// [`Flux2Pipeline::split_support`] of the pipeline in `dir`, from its configs alone.
    pub fn inspect_split(dir: &Path, size: VideoSize) -> Result<SplitSupport> {
        let transformer: Flux2TransformerConfig =
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
        let vae: AutoencoderKLFlux2Config =
            read_config(&component(dir, "vae")?.join("config.json"))?;
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

    pub fn generate(
        &mut self,
        params: &GenerateParams,
        inputs: GenerateInputs,
        on_progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<GeneratedVideo> {
        let mut report = crate::pipelines::reporter(on_progress);
        let (grid_h, grid_w) = self.check(params)?;
        let loras = crate::lora::apply_specs(
            &self.name,
            &mut self.transformer,
            &params.loras,
            &mut self.lora_files,
            params.lora_mode,
        )?;
        let cfg =
            matches!(self.variant, Variant::Klein { distilled: false }) && params.guidance > 1.0;

        report(Stage::EncodingPrompt, 0, 1)?;
        let prompt_embeds = match inputs.prompt_embeds {
            Some(embeds) => embeds,
            None => self.prompt_embeds(&params.prompt)?,
        };
        let negative_embeds = match (cfg, inputs.negative_prompt_embeds) {
            (false, _) => None,
            (true, Some(embeds)) => Some(embeds),
            (true, None) => Some(self.prompt_embeds(&params.negative_prompt)?),
        };
        if !self.keep_text_encoder
            && let Some(text) = &mut self.text
        {
            text.encoder = None;
        }
        let prompt_embeds = prompt_embeds
            .to_device(&self.device)?
            .to_dtype(self.dtype)?;
        let negative_embeds = negative_embeds
            .map(|e| e.to_device(&self.device)?.to_dtype(self.dtype))
            .transpose()?;
        let prompt_ids = text_ids(prompt_embeds.dim(1)?, &self.device)?;
        let negative_text_ids = negative_embeds
            .as_ref()
            .map(|e| text_ids(e.dim(1)?, &self.device))
            .transpose()?;

        let channels = self.transformer.config().in_channels;
        let noise_shape = (1, channels, grid_h, grid_w);
        let latents = match inputs.latents {
            Some(latents) => {
                if latents.dims() != [1, channels, grid_h, grid_w] {
                    bail!(
                        "--latents must be [1, {channels}, {grid_h}, {grid_w}] for {}x{}, got {:?}",
                        params.width,
                        params.height,
                        latents.dims()
                    );
                }
                latents.to_device(&self.device)?
            }
            None => initial_noise(params.seed, noise_shape, &self.device)?,
        };
        let mut latents = pack(&latents.to_dtype(self.dtype)?)?;
        let image_ids = grid_ids(0, grid_h, grid_w, &self.device)?;
        let tokens = grid_h * grid_w;

        let (reference_tokens, reference_ids) = self.encode_references(&params.references)?;
        let all_ids = match &reference_ids {
            Some(ids) => Tensor::cat(&[&image_ids, ids], 0)?,
            None => image_ids,
        };
        report(Stage::EncodingPrompt, 1, 1)?;

        let mut scheduler = FlowMatchEulerDiscrete::from_config(&self.scheduler_config, None)
            .with_context(|| format!("{}: scheduler", self.name))?;
        let sigmas = linspace(1.0, 1.0 / params.steps as f64, params.steps);
        scheduler.set_sigmas(&sigmas, Some(empirical_mu(tokens, params.steps)))?;
        let guidance = match self.variant {
            Variant::Dev => Some(Tensor::full(params.guidance as f32, 1, &self.device)?),
            Variant::Klein { .. } => None,
        };
        let timesteps = scheduler.timesteps().to_vec();
        report(Stage::Denoising, 0, timesteps.len())?;
        for (i, t) in timesteps.iter().enumerate() {
            // The pipeline rounds the timestep to the latents' dtype before dividing by 1000.
            let timestep =
                (Tensor::full(*t as f32, 1, &self.device)?.to_dtype(self.dtype)? / 1000.0)?;
            let input = match &reference_tokens {
                Some(refs) => Tensor::cat(&[&latents, refs], 1)?,
                None => latents.clone(),
            };
            let predict = |embeds: &Tensor, ids: &Tensor| -> Result<Tensor> {
                let out = self.transformer.forward(
                    &input,
                    embeds,
                    &timestep,
                    &all_ids,
                    ids,
                    guidance.as_ref(),
                )?;
                Ok(out.narrow(1, 0, tokens)?)
            };
            let mut noise_pred = predict(&prompt_embeds, &prompt_ids)?;
            if let (Some(negative), Some(ids)) = (&negative_embeds, &negative_text_ids) {
                let negative_pred = predict(negative, ids)?;
                noise_pred =
                    (&negative_pred + ((noise_pred - &negative_pred)? * params.guidance)?)?;
            }
            latents = scheduler.step(&noise_pred, &latents)?;
            report(Stage::Denoising, i + 1, timesteps.len())?;
        }

        report(Stage::Decoding, 0, 1)?;
        let latents = unpack(&latents, grid_h, grid_w)?;
        let z = self
            .vae
            .unpatchify_latents(&self.vae.denormalize_latents(&latents)?)?;
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

    /// The patchified latent grid of a valid request, or why the request is not one.
    fn check(&self, params: &GenerateParams) -> Result<(usize, usize)> {
        let grid =
            crate::pipelines::image_grid(&self.name, params, pixels_per_token(self.vae.config()))?;
        if params.cache.is_some() {
            bail!("{}: step caching is implemented for Wan only", self.name);
        }
        Ok(grid)
    }

    /// `[1, 512, 3 * hidden]`: the chat-formatted prompt's hidden states of layers 9, 18 and 27,
    /// concatenated per token (`_get_qwen3_prompt_embeds`).
    pub fn prompt_embeds(&mut self, prompt: &str) -> Result<Tensor> {
        let Some(text) = &mut self.text else {
            bail!(
                "{}: FLUX.2 [dev]'s Mistral 3 text encoder is not supported yet; give prompt embeddings",
                self.name
            );
        };
        let mut extra = serde_json::Map::new();
        extra.insert("enable_thinking".into(), false.into());
        let formatted = text
            .template
            .render(&[ChatMessage::text("user", prompt)], true, &extra)?;
        let encoded = text.tokenizer.encode(&formatted, MAX_SEQUENCE_LENGTH)?;
        let encoder = match &mut text.encoder {
            Some(encoder) => encoder,
            None => text
                .encoder
                .insert(LanguageModel::load(&text.dir, &self.device, self.dtype)?),
        };
        let layers = encoder.decoder().config().num_hidden_layers();
        if let Some(missing) = KLEIN_TEXT_LAYERS.iter().find(|&&l| l > layers) {
            bail!(
                "{}: the text encoder has {layers} layers; FLUX.2 [klein] reads the hidden states of layer {missing}",
                self.name
            );
        }
        let len = encoded.input_ids.len();
        let ids = Tensor::from_vec(encoded.input_ids, (1, len), &self.device)?;
        let mask = Tensor::from_vec(encoded.attention_mask, (1, len), &self.device)?;
        let hidden = encoder.hidden_states(
            &ids,
            &mask,
            HiddenStates::Layers(KLEIN_TEXT_LAYERS.to_vec()),
        )?;
        Ok(Tensor::cat(&hidden, D::Minus1)?)
    }

    /// The reference images as latent tokens `[1, N, C]` and their position ids `[N, 4]`:
    /// each scaled down to 1024² pixels at most, center-cropped to whole tokens, encoded (the
    /// posterior mode), patchified and normalised, at time coordinate 10, 20, ...
    fn encode_references(
        &self,
        references: &[ImageInput],
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if references.is_empty() {
            return Ok((None, None));
        }
        let unit = pixels_per_token(self.vae.config()) as u32;
        let mut tokens = Vec::new();
        let mut ids = Vec::new();
        for (i, reference) in references.iter().enumerate() {
            let image = reference_image(&reference.load_rgb()?, unit)
                .with_context(|| format!("reference image {}", i + 1))?;
            let (w, h) = image.dimensions();
            let pixels =
                Tensor::from_vec(image.into_raw(), (h as usize, w as usize, 3), &self.device)?
                    .to_dtype(DType::F32)?
                    .permute((2, 0, 1))?
                    .unsqueeze(0)?;
            let pixels = ((pixels / 127.5)? - 1.0)?.to_dtype(self.dtype)?;
            let latents = self
                .vae
                .normalize_latents(&self.vae.patchify_latents(&self.vae.encode(&pixels)?)?)?;
            let (_, _, gh, gw) = latents.dims4()?;
            tokens.push(pack(&latents.to_dtype(self.dtype)?)?);
            ids.push(grid_ids(
                REFERENCE_TIME_STEP * (i as u32 + 1),
                gh,
                gw,
                &self.device,
            )?);
        }
        Ok((Some(Tensor::cat(&tokens, 1)?), Some(Tensor::cat(&ids, 0)?)))
    }
}

/// A reference image as the pipelines prepare it: at most [`MAX_REFERENCE_AREA`] pixels
/// (Lanczos), then center-cropped to multiples of `unit` (`Flux2ImageProcessor`).
fn reference_image(image: &image::RgbImage, unit: u32) -> Result<image::RgbImage> {
    let (w, h) = image.dimensions();
    // `check_image_input`: images must be at least 64 pixels a side, at most 8:1.
    if w < 64 || h < 64 {
        bail!("the image is {w}x{h}; both sides must be at least 64 pixels");
    }
    if w.max(h) > 8 * w.min(h) {
        bail!("the image is {w}x{h}; its aspect ratio must be at most 8:1");
    }
    let image = if w * h > MAX_REFERENCE_AREA {
        let scale = (MAX_REFERENCE_AREA as f64 / (w as f64 * h as f64)).sqrt();
        let (sw, sh) = ((w as f64 * scale) as u32, (h as f64 * scale) as u32);
        image::imageops::resize(image, sw, sh, image::imageops::FilterType::Lanczos3)
    } else {
        image.clone()
    };
    let (w, h) = image.dimensions();
    let (cw, ch) = (w / unit * unit, h / unit * unit);
    Ok(image::imageops::crop_imm(&image, (w - cw) / 2, (h - ch) / 2, cw, ch).to_image())
}

/// `compute_empirical_mu` of the FLUX.2 pipelines: the time shift fitted to the image's token
/// count and the number of steps.
fn empirical_mu(image_seq_len: usize, steps: usize) -> f64 {
    let (a1, b1) = (8.73809524e-05, 1.89833333);
    let (a2, b2) = (0.00016927, 0.45666666);
    let len = image_seq_len as f64;
    if image_seq_len > 4300 {
        return a2 * len + b2;
    }
    let m_200 = a2 * len + b2;
    let m_10 = a1 * len + b1;
    let a = (m_200 - m_10) / 190.0;
    let b = m_200 - 200.0 * a;
    a * steps as f64 + b
}

/// Pixels per patchified latent token under the VAE of `vae`: its downsampling
/// (`vae_scale_factor`) times the 2x2 patch.
fn pixels_per_token(vae: &AutoencoderKLFlux2Config) -> usize {
    2 << vae.block_out_channels.len().saturating_sub(1)
}

/// The image tokens of a generation of `size`: its patchified latent grid, the reference images'
/// tokens come after these.
fn image_tokens(vae: &AutoencoderKLFlux2Config, size: VideoSize) -> usize {
    let unit = pixels_per_token(vae);
    (size.height / unit) * (size.width / unit)
}

/// `[B, C, H, W]` → `[B, H·W, C]`.
fn pack(latents: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = latents.dims4()?;
    Ok(latents
        .reshape((b, c, h * w))?
        .transpose(1, 2)?
        .contiguous()?)
}

/// `[B, H·W, C]` → `[B, C, H, W]`: the tokens of a plain grid, in the order [`grid_ids`] made.
fn unpack(tokens: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, _, c) = tokens.dims3()?;
    Ok(tokens.transpose(1, 2)?.reshape((b, c, h, w))?)
}

/// Position ids `(t, y, x, 0)` of an `h`x`w` token grid, row-major: `[h·w, 4]`.
pub fn grid_ids(t: u32, h: usize, w: usize, device: &Device) -> Result<Tensor> {
    let ids: Vec<f32> = (0..h)
        .flat_map(|y| (0..w).flat_map(move |x| [t as f32, y as f32, x as f32, 0.0]))
        .collect();
    Ok(Tensor::from_vec(ids, (h * w, 4), device)?)
}

/// Position ids `(0, 0, 0, l)` of `len` text tokens: `[len, 4]`.
pub fn text_ids(len: usize, device: &Device) -> Result<Tensor> {
    let ids: Vec<f32> = (0..len).flat_map(|l| [0.0, 0.0, 0.0, l as f32]).collect();
    Ok(Tensor::from_vec(ids, (len, 4), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empirical_mu_matches_the_reference() {
        // diffusers' compute_empirical_mu at 1024² (4,096 tokens) and 512²-ish sizes.
        for (tokens, steps, mu) in [
            (4096, 4, 2.291179894115571),
            (4096, 50, 2.0233511571292637),
            (1024, 28, 1.8591765771805644),
        ] {
            assert!(
                (empirical_mu(tokens, steps) - mu).abs() < 1e-12,
                "{tokens} {steps}"
            );
        }
        assert!((empirical_mu(5000, 50) - (0.00016927 * 5000.0 + 0.45666666)).abs() < 1e-12);
    }

    #[test]
    fn pack_and_unpack_are_inverse_on_the_grid_order() -> Result<()> {
        let x = Tensor::arange(0f32, 24.0, &Device::Cpu)?.reshape((1, 2, 3, 4))?;
        let tokens = pack(&x)?;
        assert_eq!(tokens.dims(), [1, 12, 2]);
        // Token 5 is row 1, column 1 of the grid; its ids say so.
        assert_eq!(tokens.get(0)?.get(5)?.to_vec1::<f32>()?, [5.0, 17.0]);
        assert_eq!(
            grid_ids(0, 3, 4, &Device::Cpu)?.get(5)?.to_vec1::<f32>()?,
            [0.0, 1.0, 1.0, 0.0]
        );
        assert_eq!(
            unpack(&tokens, 3, 4)?.flatten_all()?.to_vec1::<f32>()?,
            x.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }

    #[test]
    fn references_are_checked_and_cropped_to_whole_tokens() {
        let small = image::RgbImage::new(40, 80);
        assert!(
            reference_image(&small, 16)
                .unwrap_err()
                .to_string()
                .contains("at least 64")
        );
        let thin = image::RgbImage::new(64, 1000);
        assert!(
            reference_image(&thin, 16)
                .unwrap_err()
                .to_string()
                .contains("8:1")
        );
        let odd = image::RgbImage::new(70, 66);
        assert_eq!(reference_image(&odd, 4).unwrap().dimensions(), (68, 64));
        let big = image::RgbImage::new(2048, 1024);
        let (w, h) = reference_image(&big, 16).unwrap().dimensions();
        assert!(
            w * h <= MAX_REFERENCE_AREA && w % 16 == 0 && h % 16 == 0,
            "{w}x{h}"
        );
    }
}
