//! `LTX2Pipeline` (diffusers `pipelines/ltx2/pipeline_ltx2.py`): text to video with its sound.
//! The prompt's Gemma 3 hidden states (every layer, stacked) pass the text connectors; video and
//! audio latents are denoised together by the audio-video transformer, each stream with its own
//! flow-Euler schedule over the same sigmas; guidance is computed on the denoised estimates (x0):
//! classifier-free, spatio-temporal (a pass with some blocks' self-attention skipped), modality
//! isolation (a pass without the audio-video cross-attention), then rescaled. The video VAE
//! decodes the pictures, the audio VAE a mel spectrogram, and the vocoder the waveform.
//!
//! With a start image it is `LTX2ImageToVideoPipeline` (`pipeline_ltx2_image2video.py`): the image,
//! resized as its `VideoProcessor` does (PIL bilinear to the requested size, no crop) and encoded
//! by the video VAE, becomes the first latent frame, whose tokens get timestep 0 and keep their
//! values through every scheduler step; the rest of the loop is the text-to-video one. The
//! reference re-compresses the image through H.264 first (`image_crf`, CRF 33 for Gemma 3
//! checkpoints); this port does not, as the reference does with `image_crf=0`.
//!
//! With frame conditions it is `LTX2ConditionPipeline` (`pipeline_ltx2_condition.py`, see
//! [`super::condition`]): a condition at latent frame 0 replaces the first tokens, later ones are
//! appended to the sequence with their own positions, and every token carries its condition's
//! strength in the conditioning mask. Image-to-video is the special case of one image at frame 0
//! with strength 1, and runs through the same mask: a token's timestep is the step's times
//! `1 − mask`, and its denoised estimate is blended with the clean latents by the mask.
//!
//! An LTX-2 checkpoint file (`ltx-2-19b-dev.safetensors`) dropped into the pipeline folder
//! replaces the transformer's, the VAEs' and the vocoder's weights (their folders then need only
//! their config.json), as diffusers' `from_single_file` takes the rest from the hub's folder.

use super::audio_vae::AutoencoderKLLTX2Audio;
use super::condition::{self, Clip, ConditionPixels, PatchGeometry, keyframe_coords};
use super::connectors::{LTX2TextConnectors, PaddingSide, stack_text_encoder_hidden_states};
use super::rope::Coords;
use super::transformer::{
    LTX2TransformerConfig, LTX2TransformerInputs, LTX2VideoTransformer3DModel, Positions,
};
use super::video_vae::{AutoencoderKLLTX2Video, AutoencoderKLLTX2VideoConfig};
use super::vocoder::Vocoder;
use crate::finishing::resample::Resampler;
use crate::fused::profile::section;
use crate::image_processor::pil_bilinear;
use crate::loader::{pipeline_component, read_config, read_pipeline_index, single_file};
use crate::parallel::{SequenceSplit, Split, SplitSupport, split_tokens_only};
use crate::pipelines::{
    GenerateInputs, GenerateParams, GeneratedVideo, Progress, SizeRefused, Stage, StartImage,
    VideoSize, initial_noise,
};
use crate::schedulers::FlowMatchEulerDiscrete;
use crate::schedulers::linspace;
use crate::text::decoder::HiddenStates;
use crate::text::model::LanguageModel;
use crate::tokenizer::PromptTokenizer;
use crate::video::Audio;
use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device, Tensor};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// Tokens per prompt (`max_sequence_length`).
const MAX_SEQUENCE_LENGTH: usize = 1024;
/// The frame rate when the request names none (`frame_rate`).
pub const DEFAULT_FPS: f64 = 24.0;
/// `pipelines/ltx2/utils.py`'s `DISTILLED_SIGMA_VALUES`: the 8-step schedule of the distilled model.
pub const DISTILLED_SIGMAS: [f64; 8] = [
    1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875,
];

/// Gemma 3 and its tokenizer; the model is loaded when a prompt needs encoding and released
/// after, unless asked to stay.
struct GemmaText {
    dir: PathBuf,
    tokenizer: PromptTokenizer,
    encoder: Option<LanguageModel>,
}

pub struct LTX2Pipeline {
    name: String,
    /// An `LTX2ImageToVideoPipeline` folder, which needs a start image; an `LTX2Pipeline` one
    /// (the same weights) makes video from text, or from a start image when given one.
    image_to_video: bool,
    transformer: LTX2VideoTransformer3DModel,
    connectors: LTX2TextConnectors,
    vae: AutoencoderKLLTX2Video,
    audio_vae: AutoencoderKLLTX2Audio,
    vocoder: Vocoder,
    scheduler_config: serde_json::Value,
    text: Option<GemmaText>,
    keep_text_encoder: bool,
    /// The LoRA files applied to the transformer, kept mapped between generations.
    lora_files: Vec<std::sync::Arc<crate::lora::LoraFile>>,
    device: Device,
    dtype: DType,
    /// This rank's part when one generation is split across cards.
    split: Split,
}

/// The models of a pipeline built in memory ([`LTX2Pipeline::from_parts`]).
pub struct LTX2Parts {
    pub transformer: LTX2VideoTransformer3DModel,
    pub connectors: LTX2TextConnectors,
    pub vae: AutoencoderKLLTX2Video,
    pub audio_vae: AutoencoderKLLTX2Audio,
    pub vocoder: Vocoder,
    /// `scheduler/scheduler_config.json`.
    pub scheduler_config: serde_json::Value,
    /// What errors call the pipeline.
    pub name: String,
}

/// One stream's latents and schedule.
struct Stream {
    latents: Tensor,
    scheduler: FlowMatchEulerDiscrete,
}

/// The video stream: its packed latents, then the tokens of conditions appended after the grid's.
struct VideoStream {
    stream: Stream,
    /// How the tokens hold to given frames, when a start image or conditions give some.
    conditioning: Option<Conditioning>,
    /// The positions of every token when conditions append some; the grid's alone otherwise.
    coords: Option<Coords>,
    /// The tokens of the latent grid, which the appended ones follow.
    grid_tokens: usize,
}

/// `conditioning_mask` and `clean_latents`: per token, how firmly it keeps given latents, from 0
/// (denoised freely) to 1 (kept), `[1, tokens]`, and those latents (zeros where none),
/// `[1, tokens, C]`. A token's timestep is the step's scaled by `1 − mask`, and its denoised
/// estimate is blended with the clean latents by the mask.
struct Conditioning {
    mask: Tensor,
    clean: Tensor,
}

impl LTX2Pipeline {
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let index = read_pipeline_index(dir)?;
        let component = |name: &str| pipeline_component(dir, name);
        // `text_encoder: [null, null]`: a folder that runs from prompt embeddings only.
        let text = match index.component("text_encoder") {
            Some(_) => {
                let encoder_dir = component("text_encoder")?;
                Some(GemmaText {
                    tokenizer: PromptTokenizer::from_dir(&component("tokenizer")?)?,
                    encoder: Some(LanguageModel::load(&encoder_dir, device, dtype)?),
                    dir: encoder_dir,
                })
            }
            None => None,
        };
        // An LTX-2 checkpoint file in the folder gives the transformer, the VAEs and the vocoder,
        // whose folders then need only their config.json.
        let checkpoint = single_file::checkpoint_in(dir)?;
        let weights = |name: &str| match &checkpoint {
            Some(file) => Ok(file.clone()),
            None => component(name),
        };
        let parts = LTX2Parts {
            transformer: LTX2VideoTransformer3DModel::load(
                &weights("transformer")?,
                device,
                dtype,
            )?,
            connectors: LTX2TextConnectors::load(&component("connectors")?, device, dtype)?,
            vae: AutoencoderKLLTX2Video::load(&weights("vae")?, device, dtype)?,
            audio_vae: AutoencoderKLLTX2Audio::load(&weights("audio_vae")?, device, dtype)?,
            vocoder: Vocoder::load(&weights("vocoder")?, device, dtype)?,
            scheduler_config: read_config(&component("scheduler")?.join("scheduler_config.json"))?,
            name: dir.display().to_string(),
        };
        let mut pipeline = Self::from_parts(parts, device, dtype);
        pipeline.image_to_video = index.class_name == "LTX2ImageToVideoPipeline";
        pipeline.text = text;
        Ok(pipeline)
    }

    /// A pipeline of models already in memory, without a text encoder (it runs from prompt
    /// embeddings), as `LTX2Pipeline`.
    pub fn from_parts(parts: LTX2Parts, device: &Device, dtype: DType) -> Self {
        Self {
            name: parts.name,
            image_to_video: false,
            transformer: parts.transformer,
            connectors: parts.connectors,
            vae: parts.vae,
            audio_vae: parts.audio_vae,
            vocoder: parts.vocoder,
            scheduler_config: parts.scheduler_config,
            text: None,
            keep_text_encoder: false,
            lora_files: Vec::new(),
            device: device.clone(),
            dtype,
            split: Split::default(),
        }
    }

    /// Makes this pipeline one rank of a generation split across cards ([`crate::parallel`]):
    /// the video's tokens are shared (the guidance passes stay one batch on every rank); the first
    /// rank decodes the video and its sound, the others return the latents and zero frames.
    pub fn set_split(&mut self, split: Split) -> Result<()> {
        self.split = split_tokens_only(&self.name, &mut self.transformer, split)?;
        Ok(())
    }

    /// What a split of a generation of `size` can share out: the video's heads and tokens (the
    /// guidance passes are one batch; the audio runs whole on every rank).
    pub fn split_support(&self, size: VideoSize) -> SplitSupport {
        SplitSupport::tokens_only(
            self.transformer.split_heads(),
            video_tokens(self.transformer.config(), self.vae.config(), size),
        )
    }

    /// [`LTX2Pipeline::split_support`] of the pipeline in `dir`, from its configs alone.
    pub fn inspect_split(dir: &Path, size: VideoSize) -> Result<SplitSupport> {
        let config = dir.join("transformer").join("config.json");
        // Without one, loading takes the original checkpoint for the published model, as here.
        let transformer = if config.is_file() {
            read_config(&config)?
        } else {
            LTX2TransformerConfig::default()
        };
        let vae = read_config(&pipeline_component(dir, "vae")?.join("config.json"))?;
        Ok(SplitSupport::tokens_only(
            transformer.num_attention_heads,
            video_tokens(&transformer, &vae, size),
        ))
    }

    /// The denoising transformer.
    pub(crate) fn transformer(&mut self) -> &mut dyn crate::lora::Adaptable {
        &mut self.transformer
    }

    /// The card it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Keeps the text encoder loaded between generations (the studio's lane keeps one pipeline
    /// resident; the CLI releases it after encoding to make room for the transformer).
    pub fn keep_text_encoder(&mut self, keep: bool) {
        self.keep_text_encoder = keep;
    }

    pub fn has_text_encoder(&self) -> bool {
        self.text.is_some()
    }

    /// Whether a generation needs a start image: an `LTX2ImageToVideoPipeline` folder does; an
    /// `LTX2Pipeline` folder takes one when given (both classes load the same components).
    pub fn start_image(&self) -> StartImage {
        start_image_rule(self.image_to_video)
    }

    /// The `8k+1` frame count closest to `seconds` at the default frame rate.
    pub fn frames_for(&self, seconds: f64) -> usize {
        frames_for(self.vae.config(), seconds)
    }

    /// [`LTX2Pipeline::frames_for`] of the pipeline in `dir`, from its VAE's config alone.
    pub fn inspect_frames_for(dir: &Path, seconds: f64) -> Result<usize> {
        let vae = read_config(&pipeline_component(dir, "vae")?.join("config.json"))?;
        Ok(frames_for(&vae, seconds))
    }

    /// [`size_rule`] of the pipeline in `dir`, from its VAE's config alone.
    pub fn inspect_size(dir: &Path, size: VideoSize) -> Result<Result<(), SizeRefused>> {
        let vae = read_config(&pipeline_component(dir, "vae")?.join("config.json"))?;
        Ok(size_rule(&vae, size))
    }

    /// Latent frames per pixel frame step (`vae_temporal_compression_ratio`).
    pub fn temporal_ratio(&self) -> usize {
        self.vae.config().temporal_compression_ratio()
    }

    /// Pixels per latent a side (`vae_spatial_compression_ratio`).
    pub fn spatial_ratio(&self) -> usize {
        self.vae.config().spatial_compression_ratio()
    }

    pub fn generate(
        &mut self,
        params: &GenerateParams,
        inputs: GenerateInputs,
        on_progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<GeneratedVideo> {
        self.run(params, inputs, on_progress, true)
    }

    /// `output_type="latent"`: the denoised video `[1, C, F, H, W]` and audio `[1, C, L, M]`
    /// latents, denormalised, without decoding them.
    pub fn generate_latents(
        &mut self,
        params: &GenerateParams,
        inputs: GenerateInputs,
        on_progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<(Tensor, Tensor)> {
        let out = self.run(params, inputs, on_progress, false)?;
        let audio_latents = out.audio_latents.context("LTX-2 makes audio latents")?;
        Ok((out.latents, audio_latents))
    }

    /// The scheduler's config (`scheduler/scheduler_config.json`).
    pub fn scheduler_config(&self) -> &serde_json::Value {
        &self.scheduler_config
    }

    /// Swaps in another scheduler config (the two-stage refinement's), returning the previous one.
    pub fn replace_scheduler_config(&mut self, config: serde_json::Value) -> serde_json::Value {
        std::mem::replace(&mut self.scheduler_config, config)
    }

    /// The video VAE's latent channels.
    pub fn latent_channels(&self) -> usize {
        self.vae.config().latent_channels
    }

    fn run(
        &mut self,
        params: &GenerateParams,
        inputs: GenerateInputs,
        on_progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
        decode: bool,
    ) -> Result<GeneratedVideo> {
        let mut report = crate::pipelines::reporter(on_progress);
        self.check(params)?;
        let conditions = self.preprocess_conditions(params)?;
        let loras = crate::lora::apply_specs(
            &self.name,
            &mut self.transformer,
            &params.loras,
            &mut self.lora_files,
            params.lora_mode,
        )?;
        let guidance = params.guidance_terms.resolve(params.guidance);
        let fps = params.fps.unwrap_or(DEFAULT_FPS);
        let cfg = guidance.classifier_free();

        report(Stage::EncodingPrompt, 0, 1)?;
        let (prompt_embeds, prompt_mask) = match inputs.prompt_embeds {
            Some(embeds) => (
                embeds,
                embeddings_mask(inputs.prompt_attention_mask, "prompt_attention_mask")?,
            ),
            None => self.prompt_embeds(&params.prompt)?,
        };
        let negative = match (cfg, inputs.negative_prompt_embeds) {
            (false, _) => None,
            (true, Some(embeds)) => Some((
                embeds,
                embeddings_mask(
                    inputs.negative_prompt_attention_mask,
                    "negative_prompt_attention_mask",
                )?,
            )),
            (true, None) => Some(self.prompt_embeds(&params.negative_prompt)?),
        };
        if !self.keep_text_encoder
            && let Some(text) = &mut self.text
        {
            text.encoder = None;
        }
        // The unconditional batch first, as the reference concatenates them.
        let (embeds, mask) = match &negative {
            Some((negative, negative_mask)) => (
                cat_batches(negative, &prompt_embeds, "prompt embeddings")?,
                cat_batches(negative_mask, &prompt_mask, "prompt attention masks")?,
            ),
            None => (prompt_embeds.clone(), prompt_mask.clone()),
        };
        let text = self
            .connectors
            .forward(
                &embeds.to_device(&self.device)?.to_dtype(self.dtype)?,
                &mask.to_device(&self.device)?,
                PaddingSide::Left,
                8.0,
            )
            .context("the text connectors")?;
        report(Stage::EncodingPrompt, 1, 1)?;

        let shape = self.latent_shape(params)?;
        let VideoStream {
            stream: mut video,
            conditioning,
            coords: video_coords,
            grid_tokens,
        } = self.video_stream(params, shape, conditions, inputs.latents, inputs.noise, fps)?;
        let audio_frames = self.audio_frames(params.frames, fps);
        let mut audio = self.audio_stream(
            params,
            audio_frames,
            video.latents.dim(1)?,
            inputs.audio_latents,
            inputs.audio_noise,
        )?;
        let steps = video.scheduler.timesteps().to_vec();

        let (_, _, frames, height, width) = shape;
        let video_positions = Positions::Video {
            num_frames: frames,
            height,
            width,
            fps: fps as f32,
        };
        let audio_positions = Positions::Audio {
            num_frames: audio_frames,
        };
        let (cond_video_text, cond_audio_text, cond_mask) = if cfg {
            (
                text.video_text_embedding.narrow(0, 1, 1)?,
                text.audio_text_embedding.narrow(0, 1, 1)?,
                text.attention_mask.narrow(0, 1, 1)?,
            )
        } else {
            (
                text.video_text_embedding.clone(),
                text.audio_text_embedding.clone(),
                text.attention_mask.clone(),
            )
        };

        report(Stage::Denoising, 0, steps.len())?;
        for (i, t) in steps.iter().enumerate() {
            let sigma = video.scheduler.sigmas()[i];
            let to_x0 = |stream: &Stream, velocity: &Tensor| -> Result<Tensor> {
                Ok((&stream.latents - (velocity.to_dtype(DType::F32)? * sigma)?)?)
            };
            // One transformer pass over `batch` copies of the latents.
            let predict = |batch: usize,
                           video_text: &Tensor,
                           audio_text: &Tensor,
                           mask: &Tensor,
                           isolate_modalities: bool,
                           stg_blocks: Vec<usize>|
             -> Result<(Tensor, Tensor)> {
                let repeat = |x: &Tensor| -> Result<Tensor> {
                    Ok(Tensor::cat(&vec![x; batch], 0)?.to_dtype(self.dtype)?)
                };
                let (hidden, audio_hidden) = (repeat(&video.latents)?, repeat(&audio.latents)?);
                let timestep = Tensor::full(*t as f32, batch, &self.device)?;
                // Conditioned: `timestep · (1 − conditioning_mask)` per video token, so given
                // frames are seen as clean; the audio keeps the step's timestep.
                let video_timestep = match &conditioning {
                    Some(Conditioning { mask, .. }) => Some(
                        ((mask.ones_like()? - mask)? * *t)?
                            .broadcast_as((batch, mask.dim(1)?))?
                            .contiguous()?,
                    ),
                    None => None,
                };
                let video_positions = match &video_coords {
                    Some(coords) => Positions::Coords(coords.repeat_batch(batch)),
                    None => video_positions.clone(),
                };
                let inputs = LTX2TransformerInputs {
                    hidden_states: &hidden,
                    audio_hidden_states: &audio_hidden,
                    encoder_hidden_states: video_text,
                    audio_encoder_hidden_states: audio_text,
                    timestep: video_timestep.as_ref().unwrap_or(&timestep),
                    audio_timestep: video_timestep.as_ref().map(|_| &timestep),
                    sigma: Some(&timestep),
                    audio_sigma: None,
                    encoder_attention_mask: Some(mask),
                    audio_encoder_attention_mask: Some(mask),
                    video_positions,
                    audio_positions: audio_positions.clone(),
                    isolate_modalities,
                    spatio_temporal_guidance_blocks: stg_blocks,
                    perturbation_mask: None,
                    use_cross_timestep: true,
                    video_keyframes_mask: None,
                    video_self_attention_mask: None,
                };
                Ok(self.transformer.forward(&inputs)?)
            };
            let batch = if cfg { 2 } else { 1 };
            let (video_out, audio_out) = predict(
                batch,
                &text.video_text_embedding,
                &text.audio_text_embedding,
                &text.attention_mask,
                false,
                Vec::new(),
            )?;
            let (video_x0, audio_x0, mut video_delta, mut audio_delta) = if cfg {
                let video_uncond = to_x0(&video, &video_out.narrow(0, 0, 1)?)?;
                let video_cond = to_x0(&video, &video_out.narrow(0, 1, 1)?)?;
                let audio_uncond = to_x0(&audio, &audio_out.narrow(0, 0, 1)?)?;
                let audio_cond = to_x0(&audio, &audio_out.narrow(0, 1, 1)?)?;
                let video_delta = ((&video_cond - video_uncond)? * (guidance.video.cfg - 1.0))?;
                let audio_delta = ((&audio_cond - audio_uncond)? * (guidance.audio.cfg - 1.0))?;
                (video_cond, audio_cond, video_delta, audio_delta)
            } else {
                let video_x0 = to_x0(&video, &video_out)?;
                let audio_x0 = to_x0(&audio, &audio_out)?;
                let (video_zero, audio_zero) = (video_x0.zeros_like()?, audio_x0.zeros_like()?);
                (video_x0, audio_x0, video_zero, audio_zero)
            };
            if guidance.spatio_temporal() {
                let (video_stg, audio_stg) = predict(
                    1,
                    &cond_video_text,
                    &cond_audio_text,
                    &cond_mask,
                    false,
                    guidance.stg_blocks.clone(),
                )?;
                let video_stg = to_x0(&video, &video_stg)?;
                let audio_stg = to_x0(&audio, &audio_stg)?;
                video_delta = (video_delta + ((&video_x0 - video_stg)? * guidance.video.stg)?)?;
                audio_delta = (audio_delta + ((&audio_x0 - audio_stg)? * guidance.audio.stg)?)?;
            }
            if guidance.modality_isolation() {
                let (video_alone, audio_alone) = predict(
                    1,
                    &cond_video_text,
                    &cond_audio_text,
                    &cond_mask,
                    true,
                    Vec::new(),
                )?;
                let video_alone = to_x0(&video, &video_alone)?;
                let audio_alone = to_x0(&audio, &audio_alone)?;
                video_delta = (video_delta
                    + ((&video_x0 - video_alone)? * (guidance.video.modality - 1.0))?)?;
                audio_delta = (audio_delta
                    + ((&audio_x0 - audio_alone)? * (guidance.audio.modality - 1.0))?)?;
            }
            let guided = |x0: &Tensor, delta: Tensor, rescale: f64| -> Result<Tensor> {
                let guided = (x0 + delta)?;
                if rescale > 0.0 {
                    rescale_noise_cfg(&guided, x0, rescale)
                } else {
                    Ok(guided)
                }
            };
            let mut video_guided = guided(&video_x0, video_delta, guidance.video.rescale)?;
            let audio_guided = guided(&audio_x0, audio_delta, guidance.audio.rescale)?;
            if let Some(Conditioning { mask, clean }) = &conditioning {
                // `x0 · (1 − mask) + clean · mask`: a fully kept token's velocity is then 0 and
                // the Euler step leaves it as it is (the image-to-video reference instead steps
                // only the frames after the first: the same values).
                let keep = mask.unsqueeze(2)?;
                video_guided = (video_guided.broadcast_mul(&(keep.ones_like()? - &keep)?)?
                    + clean.broadcast_mul(&keep)?)?;
            }
            for (stream, x0) in [(&mut video, video_guided), (&mut audio, audio_guided)] {
                // Back to a velocity for the Euler step: (x − x0) / σ.
                let velocity = ((&stream.latents - x0)? / sigma)?;
                stream.latents = stream.scheduler.step(&velocity, &stream.latents)?;
            }
            report(Stage::Denoising, i + 1, steps.len())?;
        }

        report(Stage::Decoding, 0, 2)?;
        let (p, pt) = self.patch_sizes();
        // The appended conditions' tokens go; the grid's are the video.
        let latents = video.latents.narrow(1, 0, grid_tokens)?;
        let latents = unpack_latents(&latents, frames / pt, height / p, width / p, p, pt)?;
        let scaling = self.vae.config().scaling_factor;
        let latents = self.vae.denormalize_latents(&latents, scaling)?;
        let audio_latents = self.audio_vae.denormalize_latents(&audio.latents)?;
        let mel_bins = self.audio_vae.latent_mel_bins()?;
        let audio_latents = AutoencoderKLLTX2Audio::unpack_latents(&audio_latents, mel_bins)?;
        if !decode || !self.split.leads() {
            if decode {
                // The first rank decodes; the others report alike, as split ranks must.
                report(Stage::Decoding, 1, 2)?;
                report(Stage::Decoding, 2, 2)?;
            }
            // No pictures: zero frames of the size the VAE would make.
            let spatial = self.spatial_ratio();
            return Ok(GeneratedVideo {
                frames: Tensor::zeros(
                    (0, height * spatial, width * spatial, 3),
                    DType::F32,
                    &Device::Cpu,
                )?,
                fps: fps.round() as u32,
                latents: latents.to_dtype(DType::F32)?,
                audio: None,
                audio_latents: Some(audio_latents.to_dtype(DType::F32)?),
                loras,
                cache: None,
            });
        }
        let timestep_conditioning = self.vae.config().timestep_conditioning;
        // `decode_timestep` and `decode_noise_scale` at the reference's default, 0.
        let decode_timestep = timestep_conditioning
            .then(|| Tensor::zeros(1, self.dtype, &self.device))
            .transpose()?;
        let dev = &self.device;
        let pictures = section("decode.video_vae", dev, || {
            self.vae
                .decode(&latents.to_dtype(self.dtype)?, decode_timestep.as_ref())
        })?;
        let frames = section("decode.frames_to_host", dev, || {
            crate::video::pictures_to_frames(&pictures.squeeze(0)?)
                .map_err(candle_core::Error::wrap)
        })?;
        report(Stage::Decoding, 1, 2)?;
        let mel = section("decode.audio_vae", dev, || {
            self.audio_vae.decode(&audio_latents.to_dtype(self.dtype)?)
        })?;
        let waveform = section("decode.vocoder", dev, || self.vocoder.forward(&mel))?;
        let sound = Audio::from_tensor(
            &waveform.squeeze(0)?.to_device(&Device::Cpu)?,
            self.vocoder.output_sampling_rate() as u32,
        )
        .context("the vocoder's waveform")?;
        report(Stage::Decoding, 2, 2)?;
        Ok(GeneratedVideo {
            frames,
            fps: fps.round() as u32,
            latents: latents.to_dtype(DType::F32)?,
            audio: Some(sound),
            audio_latents: Some(audio_latents.to_dtype(DType::F32)?),
            loras,
            cache: None,
        })
    }

    /// Refuses requests the model cannot make, naming the rule.
    fn check(&self, params: &GenerateParams) -> Result<()> {
        size_rule(self.vae.config(), params.size())?;
        if params.steps == 0 {
            bail!("steps must be at least 1");
        }
        if let Some(fps) = params.fps
            && !(fps.is_finite() && fps > 0.0)
        {
            bail!("the frame rate must be positive, got {fps}");
        }
        if let Some(scale) = params.noise_scale
            && !(0.0..=1.0).contains(&scale)
        {
            bail!(
                "noise_scale interpolates between the latents and noise: it must be in [0, 1], got {scale}"
            );
        }
        if let Some(sigmas) = &params.sigmas
            && sigmas.len() != params.steps
        {
            bail!(
                "{} sigmas for {} steps: give one sigma per step",
                sigmas.len(),
                params.steps
            );
        }
        if self.image_to_video && params.start_image.is_none() && params.conditions.is_empty() {
            bail!(
                "{}: this is an image-to-video checkpoint (LTX2ImageToVideoPipeline); give a start image (--image)",
                self.name
            );
        }
        if !params.conditions.is_empty() {
            if params.start_image.is_some() {
                bail!(
                    "{}: a start image and frame conditions together: give the image as a condition at latent frame 0 instead",
                    self.name
                );
            }
            if self.patch_sizes() != (1, 1) {
                // The conditioning mask is one value per token only for 1x1x1 patches.
                bail!(
                    "{}: frame conditions need transformer patch sizes of 1, got patch_size {} and patch_size_t {}",
                    self.name,
                    self.patch_sizes().0,
                    self.patch_sizes().1
                );
            }
            let clip = self.clip(params);
            for (i, condition) in params.conditions.iter().enumerate() {
                condition::check(condition, &clip)
                    .with_context(|| format!("condition {}", i + 1))?;
            }
        }
        if params.end_image.is_some() {
            bail!(
                "{}: LTX-2 conditions on a start image only, not an end image",
                self.name
            );
        }
        if params.start_image.is_some() && self.patch_sizes() != (1, 1) {
            // The reference's conditioning mask is one value per token only for 1x1x1 patches.
            bail!(
                "{}: image-to-video needs transformer patch sizes of 1, got patch_size {} and patch_size_t {}",
                self.name,
                self.patch_sizes().0,
                self.patch_sizes().1
            );
        }
        if !params.references.is_empty() {
            bail!("{}: a video model takes no reference images", self.name);
        }
        if params.cache.is_some() {
            bail!("{}: step caching is implemented for Wan only", self.name);
        }
        let blocks = self.transformer.config().num_layers;
        let guidance = params.guidance_terms.resolve(params.guidance);
        if let Some(block) = guidance
            .stg_blocks
            .iter()
            .find(|b| guidance.spatio_temporal() && **b >= blocks)
        {
            bail!(
                "spatio-temporal guidance block {block} does not exist: the transformer has {blocks} blocks"
            );
        }
        Ok(())
    }

    fn patch_sizes(&self) -> (usize, usize) {
        let config = self.transformer.config();
        (config.patch_size, config.patch_size_t)
    }

    /// `[1, C, F, H, W]` of the video latents.
    fn latent_shape(&self, params: &GenerateParams) -> Result<(usize, usize, usize, usize, usize)> {
        let channels = self.vae.config().latent_channels;
        ensure!(
            channels == self.transformer.config().in_channels,
            "{}: the VAE has {channels} latent channels but the transformer takes {}",
            self.name,
            self.transformer.config().in_channels
        );
        let (frames, height, width) = latent_grid(self.vae.config(), params.size());
        Ok((1, channels, frames, height, width))
    }

    /// Audio latent frames for `frames` pixel frames at `fps`: as long as the video.
    fn audio_frames(&self, frames: usize, fps: f64) -> usize {
        let per_second = self.audio_vae.sample_rate() as f64
            / self.audio_vae.mel_hop_length() as f64
            / self.audio_vae.temporal_compression_ratio() as f64;
        (frames as f64 / fps * per_second).round() as usize
    }

    /// The sigmas of a request (its own, or `steps` evenly spaced from 1) and the schedule's
    /// `mu` for `tokens` video tokens.
    fn scheduler(&self, params: &GenerateParams, tokens: usize) -> Result<FlowMatchEulerDiscrete> {
        let mut scheduler = FlowMatchEulerDiscrete::from_config(&self.scheduler_config, None)
            .with_context(|| format!("{}: scheduler", self.name))?;
        let sigmas = match &params.sigmas {
            Some(sigmas) => sigmas.clone(),
            None => linspace(1.0, 1.0 / params.steps as f64, params.steps),
        };
        let setting =
            |key: &str, default: f64| self.scheduler_config[key].as_f64().unwrap_or(default);
        let mu = calculate_shift(
            tokens,
            setting("base_image_seq_len", 1024.0),
            setting("max_image_seq_len", 4096.0),
            setting("base_shift", 0.95),
            setting("max_shift", 2.05),
        );
        scheduler.set_sigmas(&sigmas, Some(mu))?;
        Ok(scheduler)
    }

    /// The packed, normalised video latents. From text: the given `[1, C, F, H, W]` ones
    /// (normalised, as the reference's `latents`) or seeded noise. With a start image
    /// (`prepare_latents` of the image-to-video pipeline): the image's latents as the first frame,
    /// the rest noise, the given `[1, C, F, H, W]` tensor or the seeded draw (the reference's
    /// `randn_tensor`; its `latents` argument skips the image and is not what this takes). With
    /// frame conditions: see [`Self::conditioned_latents`].
    fn video_stream(
        &self,
        params: &GenerateParams,
        shape: (usize, usize, usize, usize, usize),
        conditions: Vec<ConditionPixels>,
        given: Option<Tensor>,
        noise: Option<Tensor>,
        fps: f64,
    ) -> Result<VideoStream> {
        let given = given
            .map(|latents| {
                let expected = [shape.0, shape.1, shape.2, shape.3, shape.4];
                ensure!(
                    latents.dims() == expected,
                    "--latents must be {expected:?} for {} frames of {}x{}, got {:?}",
                    params.frames,
                    params.width,
                    params.height,
                    latents.dims()
                );
                Ok(latents.to_device(&self.device)?.to_dtype(DType::F32)?)
            })
            .transpose()?;
        let patches = self.patch_sizes();
        let grid_tokens = video_tokens(self.transformer.config(), self.vae.config(), params.size());
        let (latents, conditioning, coords) = if let Some(image) = &params.start_image {
            ensure!(
                params.noise_scale.is_none() && noise.is_none(),
                "noise_scale re-noises the given latents of a text-to-video run; image-to-video takes none"
            );
            let image = image.load_rgb().context("the start image")?;
            let noise = match given {
                Some(noise) => noise,
                None => initial_noise(params.seed, shape, &self.device)?,
            };
            let (latents, mask) = self.image_latents(&image, params, noise)?;
            let latents = pack_latents(&latents, patches)?;
            // The first frame's tokens hold the image exactly.
            let clean = latents.broadcast_mul(&mask.unsqueeze(2)?)?;
            (latents, Some(Conditioning { mask, clean }), None)
        } else if !conditions.is_empty() {
            let (latents, conditioning, coords) =
                self.conditioned_latents(params, shape, conditions, given, noise, fps)?;
            (latents, Some(conditioning), coords)
        } else {
            let noised = given.is_some();
            let latents = match given {
                Some(latents) => self
                    .vae
                    .normalize_latents(&latents, self.vae.config().scaling_factor)?,
                None => initial_noise(params.seed, shape, &self.device)?,
            };
            let mut latents = pack_latents(&latents, patches)?;
            let expected = [shape.0, shape.1, shape.2, shape.3, shape.4];
            let scale = noise_scale(params);
            if let Some(noise) =
                self.noise(scale, noised, noise, &expected, "noise", params.seed)?
            {
                latents = create_noised_state(&latents, &pack_latents(&noise, patches)?, scale)?;
            }
            (latents, None, None)
        };
        let scheduler = self.scheduler(params, latents.dim(1)?)?;
        Ok(VideoStream {
            stream: Stream { latents, scheduler },
            conditioning,
            coords,
            grid_tokens,
        })
    }

    /// `prepare_latents` of `LTX2ConditionPipeline`: the grid's tokens from the given
    /// `[1, C, F, H, W]` latents (normalised) or zeros; a condition at latent frame 0 replaces
    /// the first tokens, later ones are appended with their positions; then each token is noised
    /// by `noise_scale · (1 − mask)` with `noise`, `[1, tokens, C]` over every token (appended ones
    /// included), given or drawn from the seed. Returns the latents, the conditioning and, when
    /// tokens were appended, the positions of all of them.
    fn conditioned_latents(
        &self,
        params: &GenerateParams,
        shape: (usize, usize, usize, usize, usize),
        conditions: Vec<ConditionPixels>,
        given: Option<Tensor>,
        noise: Option<Tensor>,
        fps: f64,
    ) -> Result<(Tensor, Conditioning, Option<Coords>)> {
        let (_, channels, frames, height, width) = shape;
        let patches = self.patch_sizes();
        let base = match given {
            Some(latents) => self
                .vae
                .normalize_latents(&latents, self.vae.config().scaling_factor)?,
            None => Tensor::zeros(shape, DType::F32, &self.device)?,
        };
        let mut latents = pack_latents(&base, patches)?;
        let grid_tokens = latents.dim(1)?;
        let mut clean = latents.zeros_like()?;
        let mut mask = vec![0f32; grid_tokens];
        let mut appended = Vec::new();
        let mut coords = None::<Coords>;
        let clip = self.clip(params);
        for condition in conditions {
            let encoded = self
                .vae
                .encode(&condition.pixels.to_dtype(self.dtype)?)
                .with_context(|| {
                    format!(
                        "encoding the condition at latent frame {}",
                        condition.latent_index
                    )
                })?
                .to_dtype(DType::F32)?;
            let encoded = self.vae.normalize_latents(&encoded, 1.0)?;
            let (_, _, cond_frames, cond_height, cond_width) = encoded.dims5()?;
            ensure!(
                (cond_height, cond_width) == (height, width),
                "{}: the VAE encoded a {}x{} condition to a {cond_width}x{cond_height} latent grid, not {width}x{height}",
                self.name,
                params.width,
                params.height
            );
            let tokens = pack_latents(&encoded, patches)?;
            let n = tokens.dim(1)?;
            let strength = condition.strength as f32;
            if condition.latent_index == 0 {
                ensure!(
                    cond_frames <= frames,
                    "{}: a condition of {cond_frames} latent frames does not fit {frames}",
                    self.name
                );
                let rest = grid_tokens - n;
                latents = Tensor::cat(&[&tokens, &latents.narrow(1, n, rest)?], 1)?;
                clean = Tensor::cat(&[&tokens, &clean.narrow(1, n, rest)?], 1)?;
                mask[..n].fill(strength);
            } else {
                let pixel_frame = clip.pixel_frame(condition.latent_index);
                let keyframe = keyframe_coords(
                    (cond_frames, cond_height, cond_width),
                    pixel_frame,
                    condition.frames()?,
                    fps as f32,
                    self.patch_geometry(),
                );
                let base = match coords.take() {
                    Some(coords) => coords,
                    None => self
                        .transformer
                        .rope()
                        .prepare_video_coords(1, frames, height, width, fps as f32),
                };
                coords = Some(base.append_tokens(&keyframe));
                mask.extend(std::iter::repeat_n(strength, n));
                appended.push(tokens);
            }
        }
        if !appended.is_empty() {
            let appended = Tensor::cat(&appended, 1)?;
            latents = Tensor::cat(&[&latents, &appended], 1)?;
            clean = Tensor::cat(&[&clean, &appended], 1)?;
        }
        let tokens = latents.dim(1)?;
        let mask = Tensor::from_vec(mask, (1, tokens), &self.device)?;
        let expected = [1, tokens, channels];
        let noise = match noise {
            Some(noise) => {
                ensure!(
                    noise.dims() == expected,
                    "with frame conditions the noise covers every token, the conditions' appended ones too: it must be {expected:?}, got {:?}",
                    noise.dims()
                );
                noise.to_device(&self.device)?.to_dtype(DType::F32)?
            }
            None => initial_noise(params.seed, expected.as_slice(), &self.device)?,
        };
        // A token is noised to `noise_scale` where it is free, less as it holds to a condition.
        let scaled = ((mask.ones_like()? - &mask)? * noise_scale(params))?.unsqueeze(2)?;
        let latents = (noise.broadcast_mul(&scaled)?
            + latents.broadcast_mul(&(scaled.ones_like()? - &scaled)?)?)?;
        Ok((latents, Conditioning { mask, clean }, coords))
    }

    /// The request's clip, as the frame conditions see it.
    fn clip(&self, params: &GenerateParams) -> Clip {
        Clip {
            frames: params.frames,
            height: params.height,
            width: params.width,
            temporal_ratio: self.temporal_ratio(),
        }
    }

    /// `preprocess_conditions`: the request's conditions read and prepared for the VAE (before
    /// any model runs, so that a bad file is reported at once).
    fn preprocess_conditions(&self, params: &GenerateParams) -> Result<Vec<ConditionPixels>> {
        let resampler = Resampler::default();
        let clip = self.clip(params);
        params
            .conditions
            .iter()
            .enumerate()
            .map(|(i, condition)| {
                condition::preprocess(condition, &clip, &resampler, &self.device)
                    .with_context(|| format!("condition {}", i + 1))
            })
            .collect()
    }

    /// Where the transformer's patches and the VAE's ratios put a latent token in pixel space.
    fn patch_geometry(&self) -> PatchGeometry {
        let (patch_size, patch_size_t) = self.patch_sizes();
        PatchGeometry {
            patch_size,
            patch_size_t,
            temporal_ratio: self.temporal_ratio(),
            spatial_ratio: self.spatial_ratio(),
        }
    }

    /// The image-to-video `prepare_latents`: the start image resized to the request (PIL
    /// bilinear), encoded (the posterior mode), normalised with scaling factor 1 and put in the
    /// first latent frame of `noise` `[1, C, F, H, W]`; with the packed conditioning mask.
    fn image_latents(
        &self,
        image: &image::RgbImage,
        params: &GenerateParams,
        noise: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (width, height) = (params.width as u32, params.height as u32);
        let image = if image.dimensions() == (width, height) {
            image.clone()
        } else {
            pil_bilinear(image, width, height)
        };
        let (h, w) = (params.height, params.width);
        // `pil_to_numpy` (/ 255) then `normalize` (2x − 1), in f32.
        let pixels = Tensor::from_vec(image.into_raw(), (h, w, 3), &self.device)?
            .to_dtype(DType::F32)?
            .permute((2, 0, 1))?;
        let pixels = (((pixels / 255.0)? * 2.0)? - 1.0)?.reshape((1, 3, 1, h, w))?;
        let encoded = self
            .vae
            .encode(&pixels.to_dtype(self.dtype)?)
            .context("encoding the start image")?
            .to_dtype(DType::F32)?;
        let encoded = self.vae.normalize_latents(&encoded, 1.0)?;
        let (_, _, frames, lh, lw) = noise.dims5()?;
        ensure!(
            encoded.dims()[3..] == [lh, lw],
            "{}: the VAE encoded the {w}x{h} start image to a {:?} latent grid, not {lh}x{lw}",
            self.name,
            &encoded.dims()[3..]
        );
        let init = encoded.repeat((1, 1, frames, 1, 1))?;
        let mut mask = vec![0f32; frames * lh * lw];
        mask[..lh * lw].fill(1.0);
        let mask = Tensor::from_vec(mask, (1, 1, frames, lh, lw), &self.device)?;
        // `init · mask + noise · (1 − mask)`, as the reference interpolates.
        let latents =
            (init.broadcast_mul(&mask)? + noise.broadcast_mul(&(mask.ones_like()? - &mask)?)?)?;
        let mask = pack_latents(&mask, self.patch_sizes())?.squeeze(2)?;
        Ok((latents, mask))
    }

    /// The packed, normalised audio latents: the given `[1, C, L, M]` ones (noised by
    /// `noise_scale`) or seeded noise (drawn after the video's, from the seed + 1). Its schedule
    /// is the video's, for `video_tokens` tokens (the reference deep-copies the scheduler).
    fn audio_stream(
        &self,
        params: &GenerateParams,
        frames: usize,
        video_tokens: usize,
        given: Option<Tensor>,
        noise: Option<Tensor>,
    ) -> Result<Stream> {
        let noised = given.is_some();
        let channels = self.audio_vae.config().latent_channels;
        let mel_bins = self.audio_vae.latent_mel_bins()?;
        let shape = (1, channels, frames, mel_bins);
        let latents = match given {
            Some(latents) => {
                let expected = [1, channels, frames, mel_bins];
                ensure!(
                    latents.dims() == expected,
                    "--audio-latents must be {expected:?} for {} frames, got {:?}",
                    params.frames,
                    latents.dims()
                );
                let packed = AutoencoderKLLTX2Audio::pack_latents(
                    &latents.to_device(&self.device)?.to_dtype(DType::F32)?,
                )?;
                self.audio_vae.normalize_latents(&packed)?
            }
            None => AutoencoderKLLTX2Audio::pack_latents(&initial_noise(
                params.seed.wrapping_add(1),
                shape,
                &self.device,
            )?)?,
        };
        let expected = [1, channels, frames, mel_bins];
        let seed = params.seed.wrapping_add(1);
        let scale = noise_scale(params);
        let latents = match self.noise(scale, noised, noise, &expected, "audio noise", seed)? {
            Some(noise) => create_noised_state(
                &latents,
                &AutoencoderKLLTX2Audio::pack_latents(&noise)?,
                scale,
            )?,
            None => latents,
        };
        let scheduler = self.scheduler(params, video_tokens)?;
        Ok(Stream { latents, scheduler })
    }

    /// The noise `_create_noised_state` mixes into given latents of shape `expected`: the given
    /// one or drawn from `seed`; none without given latents or at a `noise_scale` of 0.
    fn noise(
        &self,
        noise_scale: f64,
        latents_given: bool,
        noise: Option<Tensor>,
        expected: &[usize],
        what: &str,
        seed: u64,
    ) -> Result<Option<Tensor>> {
        if !latents_given {
            ensure!(
                noise.is_none(),
                "the {what} re-noises given latents: give them too"
            );
            return Ok(None);
        }
        if noise_scale == 0.0 {
            return Ok(None);
        }
        Ok(Some(match noise {
            Some(noise) => {
                ensure!(
                    noise.dims() == expected,
                    "the {what} must be {expected:?} like the latents, got {:?}",
                    noise.dims()
                );
                noise.to_device(&self.device)?.to_dtype(DType::F32)?
            }
            None => initial_noise(seed, expected, &self.device)?,
        }))
    }

    /// `_get_gemma_prompt_embeds`: the prompt left-padded to 1024 tokens, every hidden state of
    /// Gemma 3 stacked and flattened to `[1, 1024, hidden · (layers + 1)]`, with its mask.
    pub fn prompt_embeds(&mut self, prompt: &str) -> Result<(Tensor, Tensor)> {
        let Some(text) = &mut self.text else {
            bail!(
                "{}: this pipeline has no text encoder; give prompt embeddings (--prompt-embeds)",
                self.name
            );
        };
        let encoded = text
            .tokenizer
            .encode_left_padded(prompt.trim(), MAX_SEQUENCE_LENGTH)?;
        let encoder = match &mut text.encoder {
            Some(encoder) => encoder,
            None => text
                .encoder
                .insert(LanguageModel::load(&text.dir, &self.device, self.dtype)?),
        };
        let len = encoded.input_ids.len();
        let ids = Tensor::from_vec(encoded.input_ids, (1, len), &self.device)?;
        let mask = Tensor::from_vec(encoded.attention_mask, (1, len), &self.device)?;
        let hidden = encoder.hidden_states(&ids, &mask, HiddenStates::All)?;
        Ok((stack_text_encoder_hidden_states(&hidden)?, mask))
    }
}

/// [`LTX2Pipeline::start_image`] of a folder, from its `model_index.json` class alone.
pub fn start_image_rule(image_to_video: bool) -> StartImage {
    if image_to_video {
        StartImage::Required
    } else {
        StartImage::Optional
    }
}

/// The sizes an LTX-2 model with the VAE of `vae` makes: sides multiples of its spatial ratio and
/// at least 32 (the reference pipeline's rule), `ratio·k + 1` frames for its temporal ratio.
fn size_rule(vae: &AutoencoderKLLTX2VideoConfig, size: VideoSize) -> Result<(), SizeRefused> {
    let spatial = vae.spatial_compression_ratio().max(32);
    let temporal = vae.temporal_compression_ratio();
    if !size.sides_are_multiples(spatial, spatial) {
        return Err(SizeRefused(format!(
            "height and width must be positive multiples of {spatial}, got {}x{}",
            size.width, size.height
        )));
    }
    if !size.frames_are_step_plus_one(temporal) {
        return Err(SizeRefused(format!(
            "LTX-2 makes {temporal}k+1 frames (9, 17, ..., 121), not {}",
            size.frames
        )));
    }
    Ok(())
}

/// The `8k+1` frame count (for the VAE of `vae`'s ratio) closest to `seconds` at the default
/// frame rate.
fn frames_for(vae: &AutoencoderKLLTX2VideoConfig, seconds: f64) -> usize {
    let step = vae.temporal_compression_ratio();
    let k = (seconds * DEFAULT_FPS / step as f64).round().max(1.0) as usize;
    k * step + 1
}

/// The latent frames, height and width of a generation of `size` under the VAE of `vae`.
fn latent_grid(vae: &AutoencoderKLLTX2VideoConfig, size: VideoSize) -> (usize, usize, usize) {
    let spatial = vae.spatial_compression_ratio();
    (
        size.frames.saturating_sub(1) / vae.temporal_compression_ratio() + 1,
        size.height / spatial,
        size.width / spatial,
    )
}

/// The video tokens of a generation of `size`: its latent grid in the transformer's patches, the
/// tokens conditions append to come after them (and a split shares out all of them).
fn video_tokens(
    transformer: &LTX2TransformerConfig,
    vae: &AutoencoderKLLTX2VideoConfig,
    size: VideoSize,
) -> usize {
    let (frames, height, width) = latent_grid(vae, size);
    let (p, pt) = (transformer.patch_size, transformer.patch_size_t);
    (frames / pt) * (height / p) * (width / p)
}

/// The attention mask given with prompt embeddings, which LTX-2 cannot do without.
fn embeddings_mask(mask: Option<Tensor>, name: &str) -> Result<Tensor> {
    mask.with_context(|| {
        format!("prompt embeddings need their attention mask (`{name}` in the file)")
    })
}

/// `torch.cat([a, b], 0)` of two single-batch tensors, refusing different shapes by name.
fn cat_batches(a: &Tensor, b: &Tensor, what: &str) -> Result<Tensor> {
    ensure!(
        a.dims()[1..] == b.dims()[1..],
        "the negative and positive {what} differ in shape: {:?} and {:?}",
        a.dims(),
        b.dims()
    );
    Ok(Tensor::cat(&[a, b], 0)?)
}

/// `_create_noised_state`: `noise_scale · noise + (1 − noise_scale) · latents`.
fn create_noised_state(latents: &Tensor, noise: &Tensor, noise_scale: f64) -> Result<Tensor> {
    Ok(((noise * noise_scale)? + (latents * (1.0 - noise_scale))?)?)
}

/// How much noise mixes into given latents: the request's `noise_scale`, else none from text or
/// an image, and with frame conditions what `LTX2ConditionPipeline` infers, the first sigma or 1.
fn noise_scale(params: &GenerateParams) -> f64 {
    match (params.noise_scale, &params.sigmas) {
        (Some(scale), _) => scale,
        (None, _) if params.conditions.is_empty() => 0.0,
        (None, Some(sigmas)) if !sigmas.is_empty() => sigmas[0],
        (None, _) => 1.0,
    }
}

/// `calculate_shift`: `mu` grows linearly with the token count between the configured ends.
fn calculate_shift(tokens: usize, base_len: f64, max_len: f64, base: f64, max: f64) -> f64 {
    let slope = (max - base) / (max_len - base_len);
    tokens as f64 * slope + (base - slope * base_len)
}

/// `_pack_latents`: `[B, C, F, H, W]` to tokens `[B, F/pt · H/p · W/p, C · pt · p · p]`.
fn pack_latents(latents: &Tensor, (p, pt): (usize, usize)) -> Result<Tensor> {
    let (b, c, f, h, w) = latents.dims5()?;
    let (f, h, w) = (f / pt, h / p, w / p);
    Ok(latents
        .reshape(vec![b, c, f, pt, h, p, w, p])?
        .permute(vec![0, 2, 4, 6, 1, 3, 5, 7])?
        .reshape((b, f * h * w, c * pt * p * p))?)
}

/// `_unpack_latents`: token latents `[B, F·H·W, C·pt·p·p]` back to `[B, C, F·pt, H·p, W·p]` for
/// `num_frames` × `height` × `width` tokens of `patch_size_t` × `patch_size`², the inverse of
/// [`pack_latents`].
pub fn unpack_latents(
    latents: &Tensor,
    num_frames: usize,
    height: usize,
    width: usize,
    patch_size: usize,
    patch_size_t: usize,
) -> candle_core::Result<Tensor> {
    let (b, tokens, features) = latents.dims3()?;
    let patch = patch_size_t * patch_size * patch_size;
    if tokens != num_frames * height * width || patch == 0 || !features.is_multiple_of(patch) {
        candle_core::bail!(
            "unpack_latents: latents of shape {:?} are not {num_frames}x{height}x{width} tokens of channels x {patch_size_t}x{patch_size}x{patch_size} patches",
            latents.dims()
        );
    }
    let c = features / patch;
    let (p, pt) = (patch_size, patch_size_t);
    latents
        .reshape(vec![b, num_frames, height, width, c, pt, p, p])?
        .permute([0, 4, 1, 5, 2, 6, 3, 7])?
        .contiguous()?
        .reshape((b, c, num_frames * pt, height * p, width * p))
}

/// `rescale_noise_cfg`: the guided estimate's standard deviation pulled towards the conditional
/// one's by `rescale` (Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed").
fn rescale_noise_cfg(guided: &Tensor, conditional: &Tensor, rescale: f64) -> Result<Tensor> {
    let std = |x: &Tensor| -> Result<Tensor> {
        let flat = x.flatten_from(1)?;
        let n = flat.dim(1)? as f64;
        let centred = flat.broadcast_sub(&flat.mean_keepdim(1)?)?;
        // torch.std's default: the unbiased estimate.
        Ok((centred.sqr()?.sum_keepdim(1)? / (n - 1.0))?.sqrt()?)
    };
    let ratio = std(conditional)?.broadcast_div(&std(guided)?)?;
    let ratio = ratio.reshape(
        std::iter::once(guided.dim(0)?)
            .chain(std::iter::repeat_n(1, guided.rank() - 1))
            .collect::<Vec<_>>(),
    )?;
    let rescaled = guided.broadcast_mul(&ratio)?;
    Ok(((rescaled * rescale)? + (guided * (1.0 - rescale))?)?)
}
