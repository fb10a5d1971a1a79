//! `WanPipeline`: one pipeline directory (diffusers layout) of the Wan family, run end to end.
//!
//! What the directory holds decides the mode: a transformer whose `in_channels` equals the VAE's
//! `z_dim` denoises from text alone (T2V, and TI2V when `expand_timesteps` is set, which can also
//! take a start image); a larger `in_channels` takes the VAE-encoded conditioning video plus its
//! frame mask (I2V), and an `image_dim` adds the CLIP image embedding. With `boundary_ratio` and a
//! `transformer_2`, the second expert takes over below `boundary_ratio * num_train_timesteps`.
//! The VAE always runs in f32 (as the reference's examples load it); the other models in `dtype`.
//!
//! [`WanPipeline::load`] reads a directory into [`WanParts`]; [`WanPipeline::from_parts`] takes
//! models already in memory (the GPU benchmark's random weights). A pipeline without a
//! [`TextSide`] runs only on prompt embeddings given in [`GenerateInputs`]. The LoRAs of
//! [`GenerateParams::loras`] are applied to the transformer(s) before each generation
//! ([`WanPipeline::set_loras`]; nothing is done when they are the ones applied already). With
//! [`GenerateParams::cache`], each transformer (each Wan 2.2 expert) gets a [`StepCache`] whose
//! guidance branches keep their own state, and the output reports the steps each branch computed.
//! This module never writes files.

use super::prompt::encode_prompt;
use super::transformer::{WanTransformer3DModel, WanTransformerConfig};
use super::vae::{AutoencoderKLWan, WanVaeConfig};
use crate::attention::AttentionPrecision;
use crate::image_processor::CLIPImageProcessor;
use crate::loader::{
    PipelineIndex, pipeline_component as component, read_config, read_pipeline_index,
};
use crate::lora::{Adaptable, Lora, LoraFile, LoraMode, LoraSpec};
use crate::models::clip_vision::CLIPVisionModel;
use crate::models::t5::T5EncoderModel;
use crate::parallel::{SequenceSplit, Split, SplitSupport, check_cfg_parallel, exchange_guidance};
use crate::pipelines::{
    GenerateInputs, GenerateParams, GeneratedVideo, ImageInput, Progress, SizeRefused, Stage,
    StartImage, VideoSize, initial_noise,
};
use crate::schedulers::Scheduler;
use crate::schedulers::step_cache::{
    CacheMethod, CacheReport, CacheScope, Calibration, StepCache, Wan21Checkpoint,
};
use crate::tokenizer::PromptTokenizer;
use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Frames per second of Wan's training videos, and of the written MP4.
pub const WAN_FPS: u32 = 16;

/// The prompt side of a pipeline: its tokenizer and UMT5 encoder. The encoder can be dropped
/// between generations (see [`WanPipeline::keep_text_encoder`]) and is then reloaded from `encoder_dir`.
pub struct TextSide {
    pub tokenizer: PromptTokenizer,
    /// `None` until first needed, or after being dropped.
    pub encoder: Option<T5EncoderModel>,
    /// The `text_encoder` folder the encoder is (re)loaded from.
    pub encoder_dir: PathBuf,
}

impl TextSide {
    /// Reads the `tokenizer/` and `text_encoder/` folders of the pipeline directory `dir`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let encoder_dir = component(dir, "text_encoder")?;
        Ok(Self {
            tokenizer: PromptTokenizer::from_dir(&component(dir, "tokenizer")?)?,
            encoder: Some(T5EncoderModel::load(&encoder_dir, device, dtype)?),
            encoder_dir,
        })
    }
}

/// The models of a pipeline already in memory, and the settings that tie them together: what
/// [`WanPipeline::from_parts`] takes ([`WanPipeline::load`] reads them from a directory).
pub struct WanParts {
    pub transformer: WanTransformer3DModel,
    /// Wan 2.2's low-noise expert and its `boundary_ratio`: it denoises the timesteps below
    /// `boundary_ratio * num_train_timesteps`.
    pub transformer_2: Option<(WanTransformer3DModel, f64)>,
    /// The CLIP image encoder of image-to-video checkpoints whose transformer has an `image_dim`.
    pub image_encoder: Option<(CLIPImageProcessor, CLIPVisionModel)>,
    pub vae: AutoencoderKLWan,
    /// `scheduler_config.json`; each generation builds its [`Scheduler`] from it.
    pub scheduler_config: serde_json::Value,
    /// Wan 2.2 TI2V's per-token timesteps (`expand_timesteps` of `model_index.json`).
    pub expand_timesteps: bool,
    /// `None`: every generation must bring its prompt embeddings ([`GenerateInputs`]).
    pub text: Option<TextSide>,
    /// Names the pipeline in error messages (its directory when loaded from one).
    pub name: String,
}

pub struct WanPipeline {
    name: String,
    device: Device,
    dtype: DType,
    text: Option<TextSide>,
    keep_text_encoder: bool,
    transformer: WanTransformer3DModel,
    transformer_2: Option<(WanTransformer3DModel, f64)>,
    image_encoder: Option<(CLIPImageProcessor, CLIPVisionModel)>,
    vae: AutoencoderKLWan,
    scheduler_config: serde_json::Value,
    expand_timesteps: bool,
    /// The LoRA files applied now, kept mapped so that a change of strengths reads no header
    /// again.
    lora_files: Vec<Arc<LoraFile>>,
    /// TeaCache/MagCache tables from `transformer/step_cache.json`, which take precedence over the
    /// published ones (see [`WanPipeline::calibration`]).
    calibration: Option<Calibration>,
    /// This rank's part when one generation is split across cards.
    split: Split,
}

/// A transformer that takes more channels than the VAE's latents takes the encoded start image
/// with them (image-to-video); Wan 2.2 TI2V's per-token timesteps let a text-to-video
/// transformer start from an image too.
fn start_image_rule(in_channels: usize, z_dim: usize, expand_timesteps: bool) -> StartImage {
    if in_channels != z_dim {
        StartImage::Required
    } else if expand_timesteps {
        StartImage::Optional
    } else {
        StartImage::Unsupported
    }
}

/// The frame count the VAE of `vae` takes closest to `seconds` (at least one latent step).
fn frames_for(vae: &WanVaeConfig, seconds: f64) -> usize {
    let ts = vae.temporal_scale();
    let steps = (seconds.max(0.0) * WAN_FPS as f64 / ts as f64).round() as usize;
    ts * steps.max(1) + 1
}

/// The latent frames, height and width of a generation of `size` under the VAE of `vae`.
fn latent_size(vae: &WanVaeConfig, size: VideoSize) -> (usize, usize, usize) {
    let (ts, ss) = (vae.temporal_scale(), vae.spatial_scale());
    (
        size.frames.saturating_sub(1) / ts + 1,
        size.height / ss,
        size.width / ss,
    )
}

/// The sizes a Wan model makes: `ts·k + 1` frames for the VAE's temporal scale `ts`, sides
/// multiples of its spatial scale times the transformer's patch (a token is a whole patch of
/// latents).
fn size_rule(
    transformer: &WanTransformerConfig,
    vae: &WanVaeConfig,
    size: VideoSize,
) -> Result<(), SizeRefused> {
    let (ts, ss) = (vae.temporal_scale(), vae.spatial_scale());
    let (ph, pw) = (transformer.patch_size[1], transformer.patch_size[2]);
    if !size.frames_are_step_plus_one(ts) {
        return Err(SizeRefused(format!(
            "frames must be {ts}k+1 (e.g. {}, {}), got {}",
            ts + 1,
            4 * ts + 1,
            size.frames
        )));
    }
    if !size.sides_are_multiples(ss * ph, ss * pw) {
        return Err(SizeRefused(format!(
            "height and width must be positive multiples of {} (VAE scale {ss} x patch {ph}x{pw}), got {}x{}",
            ss * ph.max(pw),
            size.width,
            size.height
        )));
    }
    Ok(())
}

/// The patch tokens of a generation of `size`: its latents cut into the transformer's patches,
/// the sequence the transformer attends over (and a split shares out).
fn patch_tokens(transformer: &WanTransformerConfig, vae: &WanVaeConfig, size: VideoSize) -> usize {
    let (frames, height, width) = latent_size(vae, size);
    let patch = &transformer.patch_size;
    (frames / patch[0]) * (height / patch[1]) * (width / patch[2])
}

impl WanPipeline {
    /// Loads every component of the pipeline directory `dir` (weights memory-mapped).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let index = read_pipeline_index(dir)?;
        let setting = |key: &str| index.settings.get(key).cloned().unwrap_or_default();
        let has = |name: &str| index.component(name).is_some();
        let transformer_dir = component(dir, "transformer")?;
        let transformer = WanTransformer3DModel::load(&transformer_dir, device, dtype)?;
        let transformer_2 = match (has("transformer_2"), setting("boundary_ratio").as_f64()) {
            (true, Some(ratio)) => Some((
                WanTransformer3DModel::load(&component(dir, "transformer_2")?, device, dtype)?,
                ratio,
            )),
            (false, None) => None,
            _ => bail!(
                "{}: boundary_ratio and transformer_2 must be set together (model_index.json)",
                dir.display()
            ),
        };
        let image_encoder = if has("image_encoder") {
            Some((
                CLIPImageProcessor::from_dir(&component(dir, "image_processor")?)?,
                CLIPVisionModel::load(&component(dir, "image_encoder")?, device, dtype)?,
            ))
        } else {
            None
        };
        let scheduler_config =
            read_config(&component(dir, "scheduler")?.join("scheduler_config.json"))?;
        let mut pipeline = Self::from_parts(
            WanParts {
                transformer,
                transformer_2,
                image_encoder,
                vae: AutoencoderKLWan::load(&component(dir, "vae")?, device, DType::F32)?,
                scheduler_config,
                expand_timesteps: setting("expand_timesteps").as_bool().unwrap_or(false),
                text: Some(TextSide::load(dir, device, dtype)?),
                name: dir.display().to_string(),
            },
            device,
            dtype,
        )?;
        pipeline.calibration = Calibration::load(&transformer_dir)?;
        Ok(pipeline)
    }

    /// A pipeline over models already in memory. `dtype` is the one the text and image encoders
    /// run in (the VAE keeps its own); the scheduler config must name a supported scheduler.
    pub fn from_parts(parts: WanParts, device: &Device, dtype: DType) -> Result<Self> {
        Scheduler::from_config(&parts.scheduler_config, None, None)
            .with_context(|| format!("{}: scheduler/scheduler_config.json", parts.name))?;
        Ok(Self {
            name: parts.name,
            device: device.clone(),
            dtype,
            text: parts.text,
            keep_text_encoder: true,
            transformer: parts.transformer,
            transformer_2: parts.transformer_2,
            image_encoder: parts.image_encoder,
            vae: parts.vae,
            scheduler_config: parts.scheduler_config,
            expand_timesteps: parts.expand_timesteps,
            lora_files: Vec::new(),
            calibration: None,
            split: Split::default(),
        })
    }

    /// Applies `specs` to the transformer(s), replacing the LoRAs applied before: `strength` to
    /// `transformer` and `strength_2` (else `strength`) to Wan 2.2's low-noise `transformer_2`.
    /// Returns the specs with each file's SHA-256; a spec that names one must match it.
    pub fn set_loras(&mut self, specs: &[LoraSpec], mode: LoraMode) -> Result<Vec<LoraSpec>> {
        if self.transformer_2.is_none()
            && let Some(spec) = specs.iter().find(|spec| spec.strength_2.is_some())
        {
            bail!(
                "{}: `{}` gives two strengths (HIGH,LOW), but this pipeline has one transformer",
                self.name,
                spec.path.display()
            );
        }
        let (files, resolved) = crate::lora::resolve_specs(specs, &self.lora_files)?;
        let with = |strength: fn(&LoraSpec) -> f64| -> Vec<Lora> {
            files
                .iter()
                .zip(specs)
                .map(|(file, spec)| Lora {
                    file: file.clone(),
                    strength: strength(spec),
                })
                .collect()
        };
        self.transformer
            .set_loras(&with(|s| s.strength), mode)
            .context("transformer")?;
        if let Some((expert, _)) = &mut self.transformer_2 {
            expert
                .set_loras(&with(|s| s.strength_2.unwrap_or(s.strength)), mode)
                .context("transformer_2")?;
        }
        self.lora_files = files;
        Ok(resolved)
    }

    /// The denoising transformer and Wan 2.2's second expert.
    pub(crate) fn transformers(&mut self) -> Vec<&mut dyn Adaptable> {
        let mut models: Vec<&mut dyn Adaptable> = vec![&mut self.transformer];
        if let Some((expert, _)) = &mut self.transformer_2 {
            models.push(expert);
        }
        models
    }

    /// Runs the transformers' self-attention in `precision` where it can run
    /// ([`crate::attention::fp8_available`] for float8; exact elsewhere); returns the precision
    /// they now run in.
    pub fn set_attention_precision(&mut self, precision: AttentionPrecision) -> AttentionPrecision {
        let runs = match precision {
            AttentionPrecision::Fp8
                if !crate::attention::fp8_available(&self.device, self.dtype) =>
            {
                tracing::warn!(
                    "attention fp8: runs in bf16 on Hopper GPUs; exact attention runs here"
                );
                AttentionPrecision::Exact
            }
            precision => precision,
        };
        self.transformer.set_attention_precision(runs);
        if let Some((expert, _)) = &mut self.transformer_2 {
            expert.set_attention_precision(runs);
        }
        runs
    }

    /// The card it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// With `false`, the text encoder is dropped from memory once a generation's prompts are
    /// encoded (and reloaded from disk by the next generation that needs it).
    pub fn keep_text_encoder(&mut self, keep: bool) {
        self.keep_text_encoder = keep;
    }

    pub fn text_encoder_loaded(&self) -> bool {
        self.text
            .as_ref()
            .is_some_and(|text| text.encoder.is_some())
    }

    /// Frames per second of the videos this pipeline generates.
    pub fn fps(&self) -> u32 {
        WAN_FPS
    }

    /// The frame count (`4k+1` for the Wan VAEs, at least one latent step) closest to `seconds`.
    pub fn frames_for(&self, seconds: f64) -> usize {
        frames_for(self.vae.config(), seconds)
    }

    /// [`WanPipeline::frames_for`] of the pipeline in `dir`, from its VAE's config alone.
    pub fn inspect_frames_for(dir: &Path, seconds: f64) -> Result<usize> {
        let vae: WanVaeConfig = read_config(&component(dir, "vae")?.join("config.json"))?;
        Ok(frames_for(&vae, seconds))
    }

    /// Whether a generation needs, may take, or cannot take a start image.
    pub fn start_image(&self) -> StartImage {
        start_image_rule(
            self.transformer.config().in_channels,
            self.vae.config().z_dim,
            self.expand_timesteps,
        )
    }

    /// [`WanPipeline::start_image`] of the pipeline in `dir`, from its configs alone.
    pub fn inspect_start_image(dir: &Path, index: &PipelineIndex) -> Result<StartImage> {
        let transformer: WanTransformerConfig =
            read_config(&component(dir, "transformer")?.join("config.json"))?;
        let vae: WanVaeConfig = read_config(&component(dir, "vae")?.join("config.json"))?;
        let expand_timesteps = index
            .settings
            .get("expand_timesteps")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        Ok(start_image_rule(
            transformer.in_channels,
            vae.z_dim,
            expand_timesteps,
        ))
    }

    /// The TeaCache/MagCache tables of this checkpoint: `transformer/step_cache.json` when the
    /// pipeline has one, else the published tables of the Wan 2.1 checkpoint its transformer config
    /// describes ([`wan21_checkpoint`]). Wan 2.2 and other checkpoints have no published tables:
    /// an error says so.
    pub fn calibration(&self) -> Result<Calibration> {
        if let Some(calibration) = &self.calibration {
            return Ok(calibration.clone());
        }
        let wan21 = self.transformer_2.is_none() && !self.expand_timesteps;
        let checkpoint = if wan21 {
            wan21_checkpoint(self.transformer.config(), &self.name)?
        } else {
            None
        };
        match checkpoint {
            Some(checkpoint) => Ok(Calibration::wan21(checkpoint)),
            None => bail!(
                "{}: TeaCache and MagCache need a table calibrated for the checkpoint, published only for Wan 2.1 T2V-1.3B, T2V-14B and I2V-14B 480P/720P; give transformer/step_cache.json or use easycache",
                self.name
            ),
        }
    }

    /// One [`StepCache`] per transformer for a generation of `steps` steps, or none.
    fn step_caches(
        &self,
        params: &GenerateParams,
        steps: usize,
        branches: usize,
    ) -> Result<Vec<StepCache>> {
        let Some(spec) = params.cache else {
            return Ok(Vec::new());
        };
        let calibration = match spec.method {
            CacheMethod::EasyCache => None,
            CacheMethod::TeaCache | CacheMethod::MagCache => Some(self.calibration()?),
        };
        let experts = 1 + usize::from(self.transformer_2.is_some());
        (0..experts)
            .map(|_| StepCache::new(spec, steps, branches, calibration.as_ref()))
            .collect::<Result<_>>()
            .with_context(|| format!("{}: cache {spec}", self.name))
    }

    pub fn generate(
        &mut self,
        params: &GenerateParams,
        on_progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<GeneratedVideo> {
        self.generate_with(params, GenerateInputs::default(), on_progress)
    }

    /// Makes this pipeline one rank of a generation split across cards ([`crate::parallel`]):
    /// every rank runs the same generation with the same parameters; the first rank decodes the
    /// video, the others return its latents and zero frames.
    pub fn set_split(&mut self, split: Split) -> Result<()> {
        self.transformer
            .set_sequence_parallel(split.sequence.clone())
            .with_context(|| format!("{}: transformer", self.name))?;
        if let Some((expert, _)) = &mut self.transformer_2 {
            expert
                .set_sequence_parallel(split.sequence.clone())
                .with_context(|| format!("{}: transformer_2", self.name))?;
        }
        self.split = split;
        Ok(())
    }

    /// What a split of a generation of `size` can share out: the heads of each expert and the
    /// patch tokens; the guidance branches are passes of their own.
    pub fn split_support(&self, size: VideoSize) -> SplitSupport {
        let experts =
            std::iter::once(&self.transformer).chain(self.transformer_2.iter().map(|(t, _)| t));
        SplitSupport {
            heads: experts.map(SequenceSplit::split_heads).collect(),
            cfg_parallel: true,
            tokens: patch_tokens(self.transformer.config(), self.vae.config(), size),
        }
    }

    /// [`WanPipeline::split_support`] of the pipeline in `dir`, from its configs alone.
    pub fn inspect_split(
        dir: &Path,
        index: &PipelineIndex,
        size: VideoSize,
    ) -> Result<SplitSupport> {
        let experts = std::iter::once("transformer")
            .chain(index.component("transformer_2").map(|_| "transformer_2"));
        let configs = experts
            .map(|name| Ok(read_config(&component(dir, name)?.join("config.json"))?))
            .collect::<Result<Vec<WanTransformerConfig>>>()?;
        let vae: WanVaeConfig = read_config(&component(dir, "vae")?.join("config.json"))?;
        Ok(SplitSupport {
            heads: configs.iter().map(|c| c.num_attention_heads).collect(),
            cfg_parallel: true,
            tokens: patch_tokens(&configs[0], &vae, size),
        })
    }

    /// [`size_rule`] of the pipeline in `dir`, from its configs alone.
    pub fn inspect_size(dir: &Path, size: VideoSize) -> Result<Result<(), SizeRefused>> {
        let transformer: WanTransformerConfig =
            read_config(&component(dir, "transformer")?.join("config.json"))?;
        let vae: WanVaeConfig = read_config(&component(dir, "vae")?.join("config.json"))?;
        Ok(size_rule(&transformer, &vae, size))
    }

    /// The latent frames, height and width of a valid request, or why the request is not one.
    fn check_size(&self, params: &GenerateParams) -> Result<(usize, usize, usize)> {
        let vae = self.vae.config();
        size_rule(self.transformer.config(), vae, params.size())?;
        if params.steps == 0 {
            bail!("steps must be at least 1");
        }
        Ok(latent_size(vae, params.size()))
    }

    fn prompt_embeds(&mut self, prompt: &str) -> Result<Tensor> {
        let Some(text) = &mut self.text else {
            bail!("{}: this pipeline has no text encoder", self.name);
        };
        let encoder = match &mut text.encoder {
            Some(encoder) => encoder,
            None => text.encoder.insert(T5EncoderModel::load(
                &text.encoder_dir,
                &self.device,
                self.dtype,
            )?),
        };
        encode_prompt(&text.tokenizer, encoder, prompt, &self.device)
    }

    /// Like [`Self::generate`], with tensors replacing the seeded noise or the prompt encoding.
    pub fn generate_with(
        &mut self,
        params: &GenerateParams,
        inputs: GenerateInputs,
        on_progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<GeneratedVideo> {
        let mut report = crate::pipelines::reporter(on_progress);
        let (lat_t, lat_h, lat_w) = self.check_size(params)?;
        let loras = self.set_loras(&params.loras, params.lora_mode)?;
        let z_dim = self.vae.config().z_dim;
        let in_channels = self.transformer.config().in_channels;
        let image_conditioned = in_channels != z_dim;
        if image_conditioned && params.start_image.is_none() {
            bail!(
                "{}: this is an image-to-video checkpoint; give a start image",
                self.name
            );
        }
        if !image_conditioned && !self.expand_timesteps && params.start_image.is_some() {
            bail!(
                "{}: this text-to-video checkpoint cannot take a start image",
                self.name
            );
        }
        if params.end_image.is_some() && (params.start_image.is_none() || !image_conditioned) {
            bail!("an end image needs a start image and an image-to-video checkpoint");
        }
        let guidance_on = params.guidance > 1.0;
        let missing_embeds = inputs.prompt_embeds.is_none()
            || (guidance_on && inputs.negative_prompt_embeds.is_none());
        if self.text.is_none() && missing_embeds {
            bail!(
                "{}: this pipeline has no text encoder; give the prompt embeddings{}",
                self.name,
                if guidance_on {
                    " and, with guidance on, the negative prompt embeddings"
                } else {
                    ""
                }
            );
        }

        // 1. Prompts.
        report(Stage::EncodingPrompt, 0, 1)?;
        let prompt_embeds = match inputs.prompt_embeds {
            Some(t) => t,
            None => self.prompt_embeds(&params.prompt)?,
        };
        let negative_embeds = match (guidance_on, inputs.negative_prompt_embeds) {
            (false, _) => None,
            (true, Some(t)) => Some(t),
            (true, None) => Some(self.prompt_embeds(&params.negative_prompt)?),
        };
        if !self.keep_text_encoder
            && let Some(text) = &mut self.text
        {
            text.encoder = None;
        }
        let text_dtype = self.transformer.dtype();
        let prompt_embeds = prompt_embeds
            .to_device(&self.device)?
            .to_dtype(text_dtype)?;
        let negative_embeds = negative_embeds
            .map(|t| t.to_device(&self.device)?.to_dtype(text_dtype))
            .transpose()?;
        report(Stage::EncodingPrompt, 1, 1)?;

        // 2. Image conditioning.
        let start = params
            .start_image
            .as_ref()
            .map(ImageInput::load_rgb)
            .transpose()?;
        let end = params
            .end_image
            .as_ref()
            .map(ImageInput::load_rgb)
            .transpose()?;
        let image_embeds = match (&self.image_encoder, &start) {
            (Some((processor, encoder)), Some(start))
                if self.transformer.config().image_dim.is_some() =>
            {
                let mut pixels = vec![processor.preprocess(start, &self.device)?];
                if let Some(end) = &end {
                    pixels.push(processor.preprocess(end, &self.device)?);
                }
                let pixels = Tensor::cat(&pixels, 0)?.to_dtype(self.dtype)?;
                Some(encoder.image_embeds(&pixels)?.to_dtype(text_dtype)?)
            }
            _ => None,
        };
        let condition = match &start {
            None => None,
            Some(start) => Some(self.image_condition(params, start, end.as_ref(), lat_t)?),
        };

        // 3. Noise and schedule.
        let noise_channels = if image_conditioned {
            z_dim
        } else {
            in_channels
        };
        let shape = (1, noise_channels, lat_t, lat_h, lat_w);
        let mut latents = match inputs.latents {
            Some(t) => {
                if t.dims() != [1, noise_channels, lat_t, lat_h, lat_w] {
                    bail!(
                        "latents have shape {:?}; {}x{} px, {} frames needs [1, {noise_channels}, {lat_t}, {lat_h}, {lat_w}]",
                        t.dims(),
                        params.width,
                        params.height,
                        params.frames
                    );
                }
                t.to_device(&self.device)?.to_dtype(DType::F32)?
            }
            None => initial_noise(params.seed, shape, &self.device)?,
        };
        let mut scheduler =
            Scheduler::from_config(&self.scheduler_config, params.scheduler, params.flow_shift)?;
        match &params.denoising_steps {
            Some(list) if list.len() != params.steps => bail!(
                "{} denoising timesteps were given for {} steps",
                list.len(),
                params.steps
            ),
            Some(list) => scheduler.set_timestep_list(list)?,
            None => scheduler.set_timesteps(params.steps)?,
        }
        let boundary = self
            .transformer_2
            .as_ref()
            .map(|(_, ratio)| ratio * scheduler.num_train_timesteps() as f64);
        let timesteps = scheduler.timesteps().to_vec();
        let branches = 1 + usize::from(negative_embeds.is_some());
        // Under CFG parallel, the pair this rank computes one guidance branch of (its rank).
        let cfg_pair = self.split.cfg.clone();
        if cfg_pair.is_some() {
            check_cfg_parallel(true, params.guidance, params.cache.is_some())
                .with_context(|| self.name.clone())?;
        }
        let mut caches = self.step_caches(params, timesteps.len(), branches)?;

        // 4. Denoising.
        report(Stage::Denoising, 0, timesteps.len())?;
        for (i, &t) in timesteps.iter().enumerate() {
            let low_noise = boundary.is_some_and(|b| t < b);
            let (model, guidance, expert) = match (&self.transformer_2, low_noise) {
                (Some((expert, _)), true) => {
                    (expert, params.guidance_2.unwrap_or(params.guidance), 1)
                }
                _ => (&self.transformer, params.guidance, 0),
            };
            let mut cache = caches.get_mut(expert);
            let (input, timestep) = self.model_input(&latents, condition.as_ref(), t)?;
            let input = input.to_dtype(text_dtype)?;
            let call = |text| ModelCall {
                input: &input,
                timestep: &timestep,
                text,
                image: image_embeds.as_ref(),
            };
            let prediction = match (&negative_embeds, &cfg_pair) {
                (Some(negative), Some(pair)) => {
                    let branch = pair.rank();
                    let text = if branch == 0 {
                        &prompt_embeds
                    } else {
                        negative
                    };
                    let mine = predict(model, None, i, branch, call(text))?;
                    let (cond, uncond) = exchange_guidance(pair.as_ref(), &mine)?;
                    (&uncond + ((cond - &uncond)? * guidance)?)?
                }
                (Some(negative), ..) => {
                    let cond = predict(model, cache.as_deref_mut(), i, 0, call(&prompt_embeds))?;
                    let uncond = predict(model, cache, i, 1, call(negative))?;
                    (&uncond + ((cond - &uncond)? * guidance)?)?
                }
                (None, ..) => predict(model, cache, i, 0, call(&prompt_embeds))?,
            };
            latents = scheduler.step(&prediction.to_dtype(DType::F32)?, &latents)?;
            report(Stage::Denoising, i + 1, timesteps.len())?;
        }
        if self.expand_timesteps
            && let Some(Condition::FirstFrame { latent, mask }) = &condition
        {
            latents = blend_first_frame(&latents, latent, mask)?;
        }

        // 5. Decoding (once, on the first rank of a split generation).
        report(Stage::Decoding, 0, 1)?;
        let frames = if self.split.leads() {
            let video = self.vae.decode(&self.vae.denormalize_latents(&latents)?)?;
            crate::video::pictures_to_frames(&video.squeeze(0)?)?
        } else {
            crate::pipelines::no_frames(params)?
        };
        report(Stage::Decoding, 1, 1)?;
        Ok(GeneratedVideo {
            frames,
            fps: WAN_FPS,
            latents,
            loras,
            cache: params.cache.map(|spec| CacheReport::merge(spec, &caches)),
            audio: None,
            audio_latents: None,
        })
    }

    /// What the transformer sees at timestep `t`, and the timestep tensor it takes.
    fn model_input(
        &self,
        latents: &Tensor,
        condition: Option<&Condition>,
        t: f64,
    ) -> Result<(Tensor, Tensor)> {
        let scalar = Tensor::new(&[t as f32], &self.device)?;
        Ok(match condition {
            Some(Condition::Channels(c)) => (Tensor::cat(&[latents, c], 1)?, scalar),
            Some(Condition::FirstFrame { latent, mask }) => (
                blend_first_frame(latents, latent, mask)?,
                self.token_timesteps(mask, t)?,
            ),
            None if self.expand_timesteps => {
                let mask = latents.narrow(1, 0, 1)?.ones_like()?;
                (latents.clone(), self.token_timesteps(&mask, t)?)
            }
            None => (latents.clone(), scalar),
        })
    }

    /// TI2V's per-token timesteps: `t` times the frame mask, one value per transformer patch.
    fn token_timesteps(&self, mask: &Tensor, t: f64) -> Result<Tensor> {
        let patch = &self.transformer.config().patch_size;
        let (_, _, f, h, w) = mask.dims5()?;
        let rows: Vec<u32> = (0..h).step_by(patch[1]).map(|i| i as u32).collect();
        let cols: Vec<u32> = (0..w).step_by(patch[2]).map(|i| i as u32).collect();
        let picked = mask
            .squeeze(0)?
            .squeeze(0)?
            .index_select(&Tensor::new(rows.as_slice(), mask.device())?, 1)?
            .index_select(&Tensor::new(cols.as_slice(), mask.device())?, 2)?;
        let (_, hp, wp) = picked.dims3()?;
        Ok((picked.reshape((1, f * hp * wp))? * t)?)
    }

    /// The VAE-encoded conditioning of an image-to-video run.
    fn image_condition(
        &self,
        params: &GenerateParams,
        start: &image::RgbImage,
        end: Option<&image::RgbImage>,
        lat_t: usize,
    ) -> Result<Condition> {
        let (h, w) = (params.height, params.width);
        let first = image_tensor(start, h, w, &self.device)?;
        let vae = &self.vae;
        if self.expand_timesteps {
            let latent = vae.normalize_latents(&vae.encode(&first)?)?;
            let (_, _, _, lh, lw) = latent.dims5()?;
            let mut mask = vec![1f32; lat_t * lh * lw];
            mask[..lh * lw].fill(0.0);
            let mask = Tensor::from_vec(mask, (1, 1, lat_t, lh, lw), &self.device)?;
            return Ok(Condition::FirstFrame { latent, mask });
        }
        let f = params.frames;
        let middle = if end.is_some() { f - 2 } else { f - 1 };
        let mut parts = vec![first.clone()];
        if middle > 0 {
            parts.push(Tensor::zeros(
                (1, 3, middle, h, w),
                DType::F32,
                &self.device,
            )?);
        }
        if let Some(end) = end {
            parts.push(image_tensor(end, h, w, &self.device)?);
        }
        let latent = vae.normalize_latents(&vae.encode(&Tensor::cat(&parts, 2)?)?)?;
        let (_, _, _, lh, lw) = latent.dims5()?;
        // Per pixel frame: 1 where the frame is given; the first frame counts `temporal_scale` times so
        // the mask folds into `temporal_scale` channels per latent frame.
        let ts = vae.config().temporal_scale();
        let mut given = vec![0f32; f + ts - 1];
        given[..ts].fill(1.0);
        if end.is_some() {
            given[f + ts - 2] = 1.0;
        }
        let mask = Tensor::from_vec(given, (1, lat_t, ts, 1, 1), &self.device)?
            .broadcast_as((1, lat_t, ts, lh, lw))?
            .transpose(1, 2)?
            .contiguous()?;
        Ok(Condition::Channels(Tensor::cat(&[mask, latent], 1)?))
    }
}

/// The Wan 2.1 checkpoint a transformer config describes, for its published step-cache tables
/// (the references pick them by checkpoint directory name): 1536 wide with 30 layers is T2V-1.3B,
/// 5120 wide with 40 layers T2V-14B, 36 input channels with a 1280-wide image branch I2V-14B,
/// 480P or 720P as the last component of `name` (the pipeline directory) says, in any case.
fn wan21_checkpoint(c: &WanTransformerConfig, name: &str) -> Result<Option<Wan21Checkpoint>> {
    let folder = Path::new(name)
        .file_name()
        .map_or(name.to_string(), |n| n.to_string_lossy().into_owned())
        .to_ascii_uppercase();
    let shape = (
        c.in_channels,
        c.image_dim,
        c.pos_embed_seq_len,
        c.inner_dim(),
        c.num_layers,
    );
    Ok(match shape {
        (16, None, None, 1536, 30) => Some(Wan21Checkpoint::T2v1_3B),
        (16, None, None, 5120, 40) => Some(Wan21Checkpoint::T2v14B),
        (36, Some(1280), None, 5120, 40) if folder.contains("720P") => {
            Some(Wan21Checkpoint::I2v14B720P)
        }
        (36, Some(1280), None, 5120, 40) if folder.contains("480P") => {
            Some(Wan21Checkpoint::I2v14B480P)
        }
        (36, Some(1280), None, 5120, 40) => bail!(
            "{name}: a Wan 2.1 I2V-14B checkpoint whose folder name says neither 480P nor 720P, which picks its step-cache table"
        ),
        _ => None,
    })
}

/// The inputs of one transformer call.
struct ModelCall<'a> {
    input: &'a Tensor,
    timestep: &'a Tensor,
    text: &'a Tensor,
    image: Option<&'a Tensor>,
}

/// One transformer call at `step` for guidance `branch` (0 cond, 1 uncond), through `cache` when
/// there is one: the cache decides whether the blocks (or, for EasyCache, the whole call) run or
/// their stored residual is added instead.
fn predict(
    model: &WanTransformer3DModel,
    cache: Option<&mut StepCache>,
    step: usize,
    branch: usize,
    call: ModelCall,
) -> Result<Tensor> {
    let forward = || model.forward(call.input, call.timestep, call.text, call.image);
    let Some(cache) = cache else {
        return Ok(forward()?);
    };
    match cache.scope() {
        CacheScope::Model => {
            // The residual is taken over the latents alone, without I2V's condition channels, as
            // the reference takes it over `x` before concatenating `y`.
            let latents = call.input.narrow(1, 0, model.config().out_channels())?;
            if cache.reuse(step, branch, &latents)? {
                return cache.apply(branch, &latents);
            }
            let output = forward()?;
            cache.computed(branch, &latents, &output)?;
            Ok(output)
        }
        CacheScope::Blocks => {
            let embedded = model.embed(call.input, call.timestep, call.text, call.image)?;
            let hidden = if cache.reuse(step, branch, &embedded.temb)? {
                cache.apply(branch, &embedded.hidden)?
            } else {
                let hidden = model.blocks(&embedded)?;
                cache.computed(branch, &embedded.hidden, &hidden)?;
                hidden
            };
            Ok(model.head(&embedded, &hidden)?)
        }
    }
}

enum Condition {
    /// Wan 2.1/2.2 I2V: frame mask and VAE latents, concatenated to the noise along channels.
    Channels(Tensor),
    /// TI2V: the first latent frame is replaced by the image's latent (mask 0 there, 1 elsewhere).
    FirstFrame { latent: Tensor, mask: Tensor },
}

fn blend_first_frame(latents: &Tensor, latent: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let keep = mask.broadcast_as(latents.shape())?;
    let given = (keep.ones_like()? - &keep)?.broadcast_mul(latent)?;
    Ok((given + keep.mul(latents)?)?)
}

/// `[1, 3, 1, h, w]` in [-1, 1], resized (Lanczos3) when the image is not already `w`x`h`.
fn image_tensor(img: &image::RgbImage, h: usize, w: usize, device: &Device) -> Result<Tensor> {
    let img = if img.dimensions() != (w as u32, h as u32) {
        image::imageops::resize(
            img,
            w as u32,
            h as u32,
            image::imageops::FilterType::Lanczos3,
        )
    } else {
        img.clone()
    };
    let t = Tensor::from_vec(img.into_raw(), (h, w, 3), device)?
        .to_dtype(DType::F32)?
        .permute((2, 0, 1))?;
    Ok(((t / 127.5)? - 1.0)?.reshape((1, 3, 1, h, w))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published diffusers configs' dimensions (Wan-AI/Wan2.1-*-Diffusers).
    fn config(
        in_channels: usize,
        image_dim: Option<usize>,
        heads: usize,
        layers: usize,
    ) -> WanTransformerConfig {
        WanTransformerConfig {
            in_channels,
            image_dim,
            num_attention_heads: heads,
            attention_head_dim: 128,
            num_layers: layers,
            ..Default::default()
        }
    }

    #[test]
    fn wan21_checkpoints_are_told_apart_by_config_and_folder_name() {
        let pick = |c: &WanTransformerConfig, name: &str| wan21_checkpoint(c, name).unwrap();
        let t2v_small = config(16, None, 12, 30);
        let t2v = config(16, None, 40, 40);
        let i2v = config(36, Some(1280), 40, 40);
        assert_eq!(pick(&t2v_small, "m"), Some(Wan21Checkpoint::T2v1_3B));
        assert_eq!(pick(&t2v, "m"), Some(Wan21Checkpoint::T2v14B));
        assert_eq!(
            pick(&i2v, "/models/Wan2.1-I2V-14B-480P-Diffusers"),
            Some(Wan21Checkpoint::I2v14B480P)
        );
        assert_eq!(
            pick(&i2v, "/models/480p/wan2.1-i2v-14b-720p/"),
            Some(Wan21Checkpoint::I2v14B720P),
            "the folder's own name decides"
        );
        let err = wan21_checkpoint(&i2v, "/models/i2v")
            .unwrap_err()
            .to_string();
        assert!(err.contains("neither 480P nor 720P"), "{err}");
        // FLF2V (learned image position embedding), TI2V-5B and anything else: no table.
        let flf2v = WanTransformerConfig {
            pos_embed_seq_len: Some(514),
            ..i2v.clone()
        };
        assert_eq!(pick(&flf2v, "Wan2.1-FLF2V-14B-720P"), None);
        assert_eq!(pick(&config(48, None, 24, 30), "Wan2.2-TI2V-5B"), None);
        assert_eq!(pick(&config(4, None, 2, 2), "tiny"), None);
    }
}
