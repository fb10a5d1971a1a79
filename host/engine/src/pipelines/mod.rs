//! The one entry point to generation: [`Pipeline::open`] reads a model directory's
//! `model_index.json`, dispatches on its `_class_name` to the family that implements it
//! ([`crate::families`]) and says what the model can do ([`Capabilities`]); every family takes the
//! same request ([`GenerateParams`]) and reports progress and cancellation the same way. Callers
//! (the studio, the CLI) never name a family.
//!
//! [`GenerateParams`] is the reproducible record of a generation (it is embedded in the output).
//! The initial noise comes from the CPU generator documented in [`noise`], so a seed gives the same
//! output on the CPU and the GPU. This module orchestrates models; it never writes files.

mod noise;

pub use crate::models::quant::Quant;
pub use noise::initial_noise;

pub use crate::attention::AttentionPrecision;
use crate::families::flux::pipeline::FluxPipeline;
use crate::families::flux2::pipeline::Flux2Pipeline;
use crate::families::ltx2::pipeline::{DEFAULT_FPS, LTX2Pipeline, start_image_rule};
use crate::families::wan::WanPipeline;
use crate::loader::read_pipeline_index;
use crate::parallel::SplitSupport;
use anyhow::bail;
use candle_core::{DType, Device};
use std::ops::ControlFlow;
use std::path::Path;

use crate::lora::{Adaptable, LoraMode, LoraSpec};
use crate::schedulers::SchedulerKind;
use crate::schedulers::step_cache::{CacheReport, CacheSpec};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Everything that determines a generated video (with the model directory and dtype).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerateParams {
    pub prompt: String,
    #[serde(default)]
    pub negative_prompt: String,
    pub height: usize,
    pub width: usize,
    /// Pixel frames; must be `temporal_scale * k + 1` (81, 49, 33, 17, 5, ...).
    pub frames: usize,
    pub steps: usize,
    /// Classifier-free guidance scale; guidance is on when it is above 1.
    pub guidance: f64,
    /// Guidance of the low-noise expert (`transformer_2`) of Wan 2.2; defaults to `guidance`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_2: Option<f64>,
    pub seed: u64,
    /// First frame for image-to-video.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_image: Option<ImageInput>,
    /// Last frame (first+last-frame checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_image: Option<ImageInput>,
    /// Overrides the scheduler config's shift (3.0 suits 480p, 5.0 suits 720p).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_shift: Option<f64>,
    /// Overrides the pipeline's scheduler class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<SchedulerKind>,
    /// The training-grid timesteps to denoise at, instead of `steps` evenly spaced ones: the
    /// schedule a step-distilled model was trained on (LightX2V's `denoising_step_list`, e.g.
    /// `[1000, 750, 500, 250]`; flow-Euler only, its length must equal `steps`). See
    /// [`crate::presets`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denoising_steps: Option<Vec<u32>>,
    /// LoRAs applied to the transformer(s), in order, each with its strength(s).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<LoraSpec>,
    /// How the LoRAs are applied (merged into the weights unless asked otherwise).
    #[serde(default, skip_serializing_if = "is_merge")]
    pub lora_mode: LoraMode,
    /// LoRAs added for the refinement alone, after `loras`: LTX-2's two-stage generation
    /// ([`crate::families::ltx2::latent_upsample_pipeline::generate_two_stage`]) refines a dev
    /// checkpoint with its distilled LoRA, as the published workflow does. Only the two-stage
    /// generation reads them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refine_loras: Vec<LoraSpec>,
    /// Step caching (TeaCache, MagCache, EasyCache) and its threshold; off when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,
    /// The format the pipeline's transformer weights were quantized to at load
    /// ([`Pipeline::quantize`]; `None`: as the checkpoint stores them). Set by whoever loaded the
    /// pipeline, for the record; `generate` does not quantize.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant: Option<Quant>,
    /// The arithmetic the transformers' self-attention was set to
    /// ([`Pipeline::set_attention_precision`]), for the record likewise.
    #[serde(default, skip_serializing_if = "AttentionPrecision::is_exact")]
    pub attention: AttentionPrecision,
    /// Reference images an image model conditions on (FLUX.2's multi-reference editing: a
    /// character sheet, a previous keyframe).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<ImageInput>,
    /// FLUX.1: T5 tokens per prompt (`max_sequence_length`; 512 unless `model_index.json` says
    /// otherwise; the published [schnell] examples use 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sequence_length: Option<usize>,
    /// FLUX.1: `true_cfg_scale`, classifier-free guidance with the negative prompt on top of the
    /// embedded guidance (off unless above 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub true_cfg_scale: Option<f64>,
    /// LTX-2: the frame rate the video is made for and played at (`frame_rate`; 24 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fps: Option<f64>,
    /// The noise levels to denoise at, one per step, instead of `steps` evenly spaced ones
    /// (LTX-2's distilled schedule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigmas: Option<Vec<f64>>,
    /// LTX-2: how much fresh noise is mixed into given latents before denoising them
    /// (`noise_scale`; the refinement stage of the two-stage generation starts from its first
    /// sigma). 0 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_scale: Option<f64>,
    /// LTX-2: guidance beyond `guidance` (audio's own scale, spatio-temporal and modality
    /// guidance, rescale); all off when absent.
    #[serde(default, skip_serializing_if = "GuidanceTerms::is_default")]
    pub guidance_terms: GuidanceTerms,
    /// LTX-2: images or clips the video is conditioned on at chosen latent frames
    /// (`LTX2ConditionPipeline`): keyframes anywhere in the clip, or frames to continue from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<FrameCondition>,
}

impl GenerateParams {
    /// The size asked for, which the generation's tokens follow from.
    pub fn size(&self) -> VideoSize {
        VideoSize {
            height: self.height,
            width: self.width,
            frames: self.frames,
        }
    }
}

/// A generation's size in pixels and frames (one for an image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoSize {
    pub height: usize,
    pub width: usize,
    pub frames: usize,
}

impl VideoSize {
    /// Whether the height and the width are positive multiples of these.
    pub(crate) fn sides_are_multiples(&self, of_height: usize, of_width: usize) -> bool {
        self.height != 0
            && self.height.is_multiple_of(of_height)
            && self.width != 0
            && self.width.is_multiple_of(of_width)
    }

    /// Whether the frame count is `step·k + 1`: what a VAE compressing time `step`-fold decodes.
    pub(crate) fn frames_are_step_plus_one(&self, step: usize) -> bool {
        self.frames != 0 && (self.frames - 1).is_multiple_of(step)
    }
}

/// A size the model cannot make: its sides or frame count break the model's rule, which the
/// message names. The same rule refuses it from the configs ([`Pipeline::inspect_size`]) and at
/// generation; nothing about the run causes it, so another attempt is refused alike. Generation
/// returns it inside `anyhow::Error` (test with `err.downcast_ref::<SizeRefused>()`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SizeRefused(pub(crate) String);

/// Whether `e` is the engine refusing the request itself ([`SizeRefused`], or a split the model
/// cannot take, [`crate::parallel::SplitRefused`]): another attempt, on any card, is refused alike.
pub fn is_refusal(e: &anyhow::Error) -> bool {
    e.downcast_ref::<SizeRefused>().is_some()
        || e.downcast_ref::<crate::parallel::SplitRefused>().is_some()
}

/// One conditioning item of an audio-video model (the reference's `LTX2VideoCondition`, without
/// the H.264 re-compression it applies to single images by default, as with its `crf=0`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameCondition {
    pub frames: ConditionFrames,
    /// The latent frame the condition starts at (`index`): 0 replaces the first frames; k > 0 is
    /// pixel frame (k − 1)·r + 1 for the VAE's temporal ratio r; negative counts from the end
    /// (−1 is the last latent frame).
    #[serde(default)]
    pub index: i64,
    /// How firmly the frames hold, from 0 (a loose guide) to 1 (kept as given).
    #[serde(default = "full_strength")]
    pub strength: f64,
}

fn full_strength() -> f64 {
    1.0
}

impl std::str::FromStr for FrameCondition {
    type Err = String;

    /// `FILE[:INDEX[:STRENGTH]]`: an image, or an `.mp4` whose frames are used, at latent frame
    /// INDEX (0 by default) with STRENGTH (1 by default). A path that itself holds a colon is
    /// taken whole unless what follows it reads as numbers.
    fn from_str(s: &str) -> Result<Self, String> {
        let int = |v: &str| v.trim().parse::<i64>().ok();
        let float = |v: &str| v.trim().parse::<f64>().ok().filter(|v| v.is_finite());
        let with_strength = s.rsplit_once(':').and_then(|(rest, strength)| {
            let (path, index) = rest.rsplit_once(':')?;
            Some((path, int(index)?, float(strength)?))
        });
        let with_index = || {
            let (path, index) = s.rsplit_once(':')?;
            Some((path, int(index)?, 1.0))
        };
        let (path, index, strength) = with_strength.or_else(with_index).unwrap_or((s, 0, 1.0));
        if path.is_empty() {
            return Err(format!("`{s}`: expected FILE[:INDEX[:STRENGTH]]"));
        }
        let path = PathBuf::from(path);
        let is_video = path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("mp4"));
        let frames = if is_video {
            ConditionFrames::Video { video: path }
        } else {
            ConditionFrames::Images(vec![ImageInput::Path(path)])
        };
        Ok(Self {
            frames,
            index,
            strength,
        })
    }
}

/// The pictures of a [`FrameCondition`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConditionFrames {
    /// Every frame of an MP4 (as many as fit the clip from the condition's position are used).
    Video { video: PathBuf },
    /// One image (a keyframe) or consecutive frames.
    Images(Vec<ImageInput>),
}

impl ConditionFrames {
    /// The first `limit` frames (or all, if fewer) as 8-bit RGB; an MP4 is decoded only that far.
    pub fn load_rgb(&self, limit: usize) -> anyhow::Result<Vec<image::RgbImage>> {
        use anyhow::Context;
        match self {
            ConditionFrames::Video { video } => crate::video::Mp4Reader::open(video)?
                .frames_from(0)?
                .take(limit)
                .collect::<anyhow::Result<Vec<_>>>()
                .with_context(|| format!("decoding video {}", video.display())),
            ConditionFrames::Images(images) => images
                .iter()
                .take(limit)
                .map(ImageInput::load_rgb)
                .collect(),
        }
    }
}

/// The guidance options of an audio-video model, named after the reference pipeline's arguments.
/// `None` takes the default the reference's `--guidance G`-only call means: the audio stream
/// guided like the video, no spatio-temporal or modality guidance, no rescale.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuidanceTerms {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_guidance_scale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stg_scale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_stg_scale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modality_scale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_modality_scale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_rescale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_guidance_rescale: Option<f64>,
    /// The blocks whose self-attention spatio-temporal guidance skips (the reference's `[28]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spatio_temporal_guidance_blocks: Option<Vec<usize>>,
}

/// One stream's guidance: classifier-free, spatio-temporal and modality scales and the rescale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamGuidance {
    pub cfg: f64,
    pub stg: f64,
    pub modality: f64,
    pub rescale: f64,
}

/// [`GuidanceTerms`] with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioVideoGuidance {
    pub video: StreamGuidance,
    pub audio: StreamGuidance,
    pub stg_blocks: Vec<usize>,
}

impl GuidanceTerms {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The terms with `guidance` as the video's classifier-free scale, each audio term following
    /// its video term unless set.
    pub fn resolve(&self, guidance: f64) -> AudioVideoGuidance {
        let video = StreamGuidance {
            cfg: guidance,
            stg: self.stg_scale.unwrap_or(0.0),
            modality: self.modality_scale.unwrap_or(1.0),
            rescale: self.guidance_rescale.unwrap_or(0.0),
        };
        AudioVideoGuidance {
            audio: StreamGuidance {
                cfg: self.audio_guidance_scale.unwrap_or(video.cfg),
                stg: self.audio_stg_scale.unwrap_or(video.stg),
                modality: self.audio_modality_scale.unwrap_or(video.modality),
                rescale: self.audio_guidance_rescale.unwrap_or(video.rescale),
            },
            video,
            stg_blocks: self
                .spatio_temporal_guidance_blocks
                .clone()
                .unwrap_or_else(|| vec![28]),
        }
    }
}

impl AudioVideoGuidance {
    /// `do_classifier_free_guidance`.
    pub fn classifier_free(&self) -> bool {
        self.video.cfg > 1.0 || self.audio.cfg > 1.0
    }

    /// `do_spatio_temporal_guidance`.
    pub fn spatio_temporal(&self) -> bool {
        self.video.stg > 0.0 || self.audio.stg > 0.0
    }

    /// `do_modality_isolation_guidance`.
    pub fn modality_isolation(&self) -> bool {
        self.video.modality > 1.0 || self.audio.modality > 1.0
    }
}

fn is_merge(mode: &LoraMode) -> bool {
    *mode == LoraMode::Merge
}

/// An input image: a file (PNG or JPEG) or RGB pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImageInput {
    Path(PathBuf),
    Rgb {
        width: u32,
        height: u32,
        /// `width * height * 3` bytes, row-major RGB.
        pixels: Vec<u8>,
    },
}

impl ImageInput {
    /// The image as 8-bit RGB, whatever the file's colour type.
    pub fn load_rgb(&self) -> anyhow::Result<image::RgbImage> {
        use anyhow::Context;
        match self {
            // The format comes from the content: the studio's asset files have no extension.
            ImageInput::Path(path) => Ok(image::ImageReader::open(path)
                .and_then(|reader| reader.with_guessed_format())
                .map_err(image::ImageError::IoError)
                .and_then(|reader| reader.decode())
                .with_context(|| format!("reading the image {}", path.display()))?
                .to_rgb8()),
            ImageInput::Rgb {
                width,
                height,
                pixels,
            } => image::RgbImage::from_raw(*width, *height, pixels.clone()).with_context(|| {
                format!(
                    "an RGB image of {width}x{height} needs {} bytes, got {}",
                    width * height * 3,
                    pixels.len()
                )
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    LoadingModel,
    EncodingPrompt,
    Denoising,
    Decoding,
    Writing,
}

/// Reported to the caller's callback; `step` of `total` within `stage` is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub stage: Stage,
    pub step: usize,
    pub total: usize,
}

/// Zero frames of the requested size: what a rank of a split generation returns when another
/// rank decodes.
pub(crate) fn no_frames(params: &GenerateParams) -> candle_core::Result<Tensor> {
    Tensor::zeros(
        (0, params.height, params.width, 3),
        DType::F32,
        &Device::Cpu,
    )
}

/// The callback asked to stop; returned (inside `anyhow::Error`) by [`Pipeline::generate`].
/// Test with `err.downcast_ref::<Cancelled>()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("generation cancelled")]
pub struct Cancelled;

pub struct GeneratedVideo {
    /// f32 `[frames, height, width, 3]` in [0, 1] on the CPU: the reference's `output_type="np"`.
    pub frames: Tensor,
    /// 0 for an image.
    pub fps: u32,
    /// f32 `[1, C, T, H/s, W/s]` the VAE decoded, on the generating device (before the clamp that
    /// bounds `frames`, so a diverged run shows here).
    pub latents: Tensor,
    /// The LoRAs applied, as the parameters gave them, each with its file's SHA-256.
    pub loras: Vec<LoraSpec>,
    /// With [`GenerateParams::cache`]: the steps each guidance branch computed and skipped.
    pub cache: Option<CacheReport>,
    /// The sound of an audio-video model: the vocoder's waveform.
    pub audio: Option<crate::video::Audio>,
    /// f32 `[1, C, L, M]` audio latents the audio VAE decoded (audio-video models).
    pub audio_latents: Option<Tensor>,
}

/// Tensors that replace what a generation would compute (reproduction and testing).
#[derive(Clone, Default)]
pub struct GenerateInputs {
    /// Initial noise `[1, C, T, H/s, W/s]` instead of the seeded draw (LTX-2 with a start image:
    /// the noise of the frames after the image's).
    pub latents: Option<Tensor>,
    /// `[1, L, text_dim]` instead of encoding `prompt`.
    pub prompt_embeds: Option<Tensor>,
    /// `[1, L, text_dim]` instead of encoding `negative_prompt`.
    pub negative_prompt_embeds: Option<Tensor>,
    /// `[1, L]`: which of `prompt_embeds`' tokens are real (LTX-2 needs it with its embeddings).
    pub prompt_attention_mask: Option<Tensor>,
    /// `[1, L]`, the mask of `negative_prompt_embeds`.
    pub negative_prompt_attention_mask: Option<Tensor>,
    /// LTX-2: the audio latents `[1, C, L, M]` instead of the seeded draw.
    pub audio_latents: Option<Tensor>,
    /// LTX-2: the noise `noise_scale` mixes into the given `latents` (`[1, C, T, H/s, W/s]`),
    /// instead of the seeded draw.
    pub noise: Option<Tensor>,
    /// LTX-2: the noise `noise_scale` mixes into the given `audio_latents` (`[1, C, L, M]`).
    pub audio_noise: Option<Tensor>,
    /// FLUX.1's pooled CLIP embedding `[1, pooled_dim]`, given with `prompt_embeds`.
    pub pooled_prompt_embeds: Option<Tensor>,
    /// FLUX.1's pooled CLIP embedding of the negative prompt, given with
    /// `negative_prompt_embeds`.
    pub negative_pooled_prompt_embeds: Option<Tensor>,
}

/// What a checkpoint does with a start image (image-to-video).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartImage {
    /// Image-to-video checkpoints.
    Required,
    /// Wan 2.2 TI2V: text-to-video, or image-to-video when given one.
    Optional,
    /// Text-to-video checkpoints.
    Unsupported,
}

/// `on_progress` as the fallible step reporter every pipeline's loop calls: a `Break` becomes the
/// [`Cancelled`] error.
pub(crate) fn reporter(
    on_progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
) -> impl FnMut(Stage, usize, usize) -> anyhow::Result<()> + '_ {
    move |stage, step, total| match on_progress(&Progress { stage, step, total }) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(anyhow::Error::new(Cancelled)),
    }
}

/// The sizes an image model whose latent token covers `unit` pixels a side makes: one frame,
/// sides positive multiples of `unit`. The rule of every image family. Its messages name no
/// model or folder: the studio returns them to API clients under the model's own name.
pub(crate) fn image_size(size: VideoSize, unit: usize) -> Result<(), SizeRefused> {
    if !size.sides_are_multiples(unit, unit) {
        return Err(SizeRefused(format!(
            "height and width must be positive multiples of {unit} for this model, got {}x{}",
            size.width, size.height
        )));
    }
    if size.frames != 1 {
        return Err(SizeRefused(format!(
            "an image model makes one frame, not {}",
            size.frames
        )));
    }
    Ok(())
}

/// The token grid (`height / unit`, `width / unit`) of a valid image request to the model `name`
/// whose latent token covers `unit` pixels a side, or why the request is not one: what every
/// image family checks before its own rules.
pub(crate) fn image_grid(
    name: &str,
    params: &GenerateParams,
    unit: usize,
) -> anyhow::Result<(usize, usize)> {
    image_size(params.size(), unit)?;
    if params.steps == 0 {
        bail!("steps must be at least 1");
    }
    if params.start_image.is_some() || params.end_image.is_some() {
        bail!("{name}: an image model takes reference images (--image), not start or end frames");
    }
    Ok((params.height / unit, params.width / unit))
}

/// What a pipeline makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Output {
    Video { fps: u32 },
    Image,
}

/// What a model can do: what the studio asks instead of naming a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub output: Output,
    /// Whether a generation needs, may take, or cannot take a start image.
    pub start_image: StartImage,
    /// What an image model does with [`GenerateParams::references`] (records written before
    /// it existed read as unsupported).
    #[serde(default)]
    pub references: References,
}

/// What plans for a video model are fitted to ([`Pipeline::video_rules`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VideoRules {
    /// The family the prompt writers word prompts for: `wan2.1`, `wan2.2`, `ltx2`.
    pub family: String,
    pub fps: u32,
    /// Frame counts are `frame_step · k + 1` (the VAE's temporal compression).
    pub frame_step: u32,
    /// The longest clip the model makes, in frames.
    pub max_frames: u32,
}

impl VideoRules {
    /// Wan 2.1's rules: what the studio assumes when no video model can be named.
    pub fn wan() -> Self {
        Self {
            family: "wan2.1".into(),
            fps: crate::families::wan::pipeline::WAN_FPS,
            frame_step: 4,
            max_frames: 81,
        }
    }
}

/// A checkpoint's default denoising steps and guidance ([`Pipeline::call_defaults`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CallDefaults {
    pub steps: usize,
    pub guidance: f64,
}

/// What a checkpoint does with reference images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum References {
    /// Video models and plain text-to-image models.
    #[default]
    Unsupported,
    /// FLUX.2: any number of references the generation conditions on.
    Optional,
    /// FLUX.1 Kontext: exactly one, the image to edit.
    EditOne,
}

/// LTX-2 makes video with sound, at the requested frame rate (24 unless asked), from text or
/// from a start image (which an `LTX2ImageToVideoPipeline` folder needs).
fn ltx2_capabilities(start_image: StartImage) -> Capabilities {
    Capabilities {
        output: Output::Video {
            fps: DEFAULT_FPS as u32,
        },
        start_image,
        references: References::Unsupported,
    }
}

/// The family of the pipeline a `model_index.json` names: the one place its `_class_name` is
/// mapped, so that every config-only question and loading agree on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Wan,
    Flux,
    Flux2,
    Ltx2,
}

impl Family {
    fn of(dir: &Path, index: &crate::loader::PipelineIndex) -> anyhow::Result<Self> {
        Ok(match index.class_name.as_str() {
            "WanPipeline" | "WanImageToVideoPipeline" => Self::Wan,
            "FluxPipeline" | "FluxKontextPipeline" => Self::Flux,
            "Flux2KleinPipeline" | "Flux2Pipeline" => Self::Flux2,
            "LTX2Pipeline" | "LTX2ImageToVideoPipeline" => Self::Ltx2,
            other => bail!(
                "{}: `{other}` pipelines are not supported (supported: {})",
                dir.display(),
                Pipeline::CLASSES.join(", ")
            ),
        })
    }
}

/// A model directory's pipeline, whatever its family.
pub enum Pipeline {
    Wan(Box<WanPipeline>),
    Flux(Box<FluxPipeline>),
    Flux2(Box<Flux2Pipeline>),
    Ltx2(Box<LTX2Pipeline>),
}

impl Pipeline {
    /// The `_class_name`s of `model_index.json` that [`Pipeline::open`] knows.
    pub const CLASSES: &[&str] = &[
        "WanPipeline",
        "WanImageToVideoPipeline",
        "FluxPipeline",
        "FluxKontextPipeline",
        "Flux2KleinPipeline",
        "Flux2Pipeline",
        "LTX2Pipeline",
        "LTX2ImageToVideoPipeline",
    ];

    /// Loads the pipeline in `dir` (weights memory-mapped), chosen by its `model_index.json`.
    pub fn open(dir: &Path, device: &Device, dtype: DType) -> anyhow::Result<Pipeline> {
        Ok(match Family::of(dir, &read_pipeline_index(dir)?)? {
            Family::Wan => Pipeline::Wan(Box::new(WanPipeline::load(dir, device, dtype)?)),
            Family::Flux => Pipeline::Flux(Box::new(FluxPipeline::load(dir, device, dtype)?)),
            Family::Flux2 => Pipeline::Flux2(Box::new(Flux2Pipeline::load(dir, device, dtype)?)),
            Family::Ltx2 => Pipeline::Ltx2(Box::new(LTX2Pipeline::load(dir, device, dtype)?)),
        })
    }

    /// The steps and guidance the reference pipeline's call uses by default for the checkpoint in
    /// `dir` (from `model_index.json` and the transformer config): what a request that names
    /// neither should run. The distilled FLUX.2 [klein] and FLUX.1 [schnell] take 4 steps without
    /// guidance; the others their pipeline's defaults.
    pub fn call_defaults(dir: &Path) -> anyhow::Result<CallDefaults> {
        let index = read_pipeline_index(dir)?;
        let setting = |key: &str| index.settings.get(key).and_then(|v| v.as_bool());
        let (steps, guidance) = match Family::of(dir, &index)? {
            Family::Wan => (50, 5.0),
            Family::Flux2
                if index.class_name == "Flux2KleinPipeline"
                    && setting("is_distilled") == Some(true) =>
            {
                (4, 1.0)
            }
            Family::Flux2 => (50, 4.0),
            Family::Ltx2 => (30, 3.0),
            Family::Flux => {
                let config: serde_json::Value =
                    crate::loader::read_config(&dir.join("transformer").join("config.json"))?;
                match config["guidance_embeds"].as_bool() {
                    // [schnell]: timestep-distilled, no guidance embedding.
                    Some(false) | None => (4, 0.0),
                    Some(true) => (28, 3.5),
                }
            }
        };
        Ok(CallDefaults { steps, guidance })
    }

    /// The family, frame rate and frame-count rule of the video model in `dir` (`None` for an
    /// image model), from its configs alone.
    pub fn video_rules(dir: &Path) -> anyhow::Result<Option<VideoRules>> {
        let index = read_pipeline_index(dir)?;
        let vae_config =
            || crate::loader::pipeline_component(dir, "vae").map(|d| d.join("config.json"));
        Ok(match Family::of(dir, &index).ok() {
            Some(Family::Wan) => {
                let vae: crate::families::wan::vae::WanVaeConfig =
                    crate::loader::read_config(&vae_config()?)?;
                let two_experts = index.component("transformer_2").is_some();
                Some(VideoRules {
                    family: if two_experts { "wan2.2" } else { "wan2.1" }.into(),
                    frame_step: vae.temporal_scale() as u32,
                    ..VideoRules::wan()
                })
            }
            Some(Family::Ltx2) => {
                let vae: crate::families::ltx2::video_vae::AutoencoderKLLTX2VideoConfig =
                    crate::loader::read_config(&vae_config()?)?;
                Some(VideoRules {
                    family: "ltx2".into(),
                    fps: DEFAULT_FPS as u32,
                    frame_step: vae.temporal_compression_ratio() as u32,
                    // About ten seconds at 24 fps.
                    max_frames: 257,
                })
            }
            _ => None,
        })
    }

    /// What the pipeline in `dir` can do, from `model_index.json` and the component configs
    /// alone (no weights are read): what listing installed models needs.
    pub fn inspect(dir: &Path) -> anyhow::Result<Capabilities> {
        let index = read_pipeline_index(dir)?;
        Ok(match Family::of(dir, &index)? {
            Family::Wan => Capabilities {
                output: Output::Video {
                    fps: crate::families::wan::pipeline::WAN_FPS,
                },
                start_image: WanPipeline::inspect_start_image(dir, &index)?,
                references: References::Unsupported,
            },
            Family::Flux => Capabilities {
                output: Output::Image,
                start_image: StartImage::Unsupported,
                references: if index.class_name == "FluxKontextPipeline" {
                    References::EditOne
                } else {
                    References::Unsupported
                },
            },
            Family::Flux2 => Capabilities {
                output: Output::Image,
                start_image: StartImage::Unsupported,
                references: References::Optional,
            },
            Family::Ltx2 => ltx2_capabilities(start_image_rule(
                index.class_name == "LTX2ImageToVideoPipeline",
            )),
        })
    }

    pub fn capabilities(&self) -> Capabilities {
        match self {
            Pipeline::Wan(wan) => Capabilities {
                output: Output::Video { fps: wan.fps() },
                start_image: wan.start_image(),
                references: References::Unsupported,
            },
            Pipeline::Flux(flux) => Capabilities {
                output: Output::Image,
                start_image: StartImage::Unsupported,
                references: if flux.is_kontext() {
                    References::EditOne
                } else {
                    References::Unsupported
                },
            },
            Pipeline::Flux2(_) => Capabilities {
                output: Output::Image,
                start_image: StartImage::Unsupported,
                references: References::Optional,
            },
            Pipeline::Ltx2(ltx) => ltx2_capabilities(ltx.start_image()),
        }
    }

    /// The frame count closest to `seconds` that the model generates (1 for an image model).
    pub fn frames_for(&self, seconds: f64) -> usize {
        match self {
            Pipeline::Wan(wan) => wan.frames_for(seconds),
            Pipeline::Ltx2(ltx) => ltx.frames_for(seconds),
            Pipeline::Flux(_) | Pipeline::Flux2(_) => 1,
        }
    }

    /// [`Pipeline::frames_for`] of the pipeline in `dir`, from its configs alone.
    pub fn inspect_frames_for(dir: &Path, seconds: f64) -> anyhow::Result<usize> {
        match Family::of(dir, &read_pipeline_index(dir)?)? {
            Family::Wan => WanPipeline::inspect_frames_for(dir, seconds),
            Family::Ltx2 => LTX2Pipeline::inspect_frames_for(dir, seconds),
            Family::Flux | Family::Flux2 => Ok(1),
        }
    }

    /// Keeps the linear layers of the transformers' blocks in `quant` (`--quant fp8`: about half
    /// their bf16 memory; `nvfp4`: 0.28×; each product dequantizing its layer). LoRAs then join
    /// those layers as side paths. Returns how many layers were quantized.
    pub fn quantize(&mut self, quant: Quant) -> anyhow::Result<usize> {
        let transformers: Vec<&mut dyn Adaptable> = match self {
            Pipeline::Wan(wan) => wan.transformers(),
            Pipeline::Flux(flux) => vec![flux.transformer()],
            Pipeline::Flux2(flux) => vec![flux.transformer()],
            Pipeline::Ltx2(ltx) => vec![ltx.transformer()],
        };
        let mut layers = 0;
        for model in transformers {
            layers += crate::models::quant::quantize_blocks(model, quant)?;
        }
        Ok(layers)
    }

    /// Runs the transformers' self-attention in `precision` (`--attention fp8`) where it runs (the
    /// Wan family on a Hopper GPU in bf16) and exactly elsewhere; returns the precision its
    /// transformers now run in, which the record should carry.
    pub fn set_attention_precision(&mut self, precision: AttentionPrecision) -> AttentionPrecision {
        match self {
            Pipeline::Wan(wan) => wan.set_attention_precision(precision),
            _ => {
                if !precision.is_exact() {
                    tracing::warn!(
                        "attention {precision:?}: built for the Wan family only; exact attention runs"
                    );
                }
                AttentionPrecision::Exact
            }
        }
    }

    /// What a split of this pipeline's generation of `size` can share out
    /// ([`crate::parallel::check_layout`]).
    pub fn split_support(&self, size: VideoSize) -> SplitSupport {
        match self {
            Pipeline::Wan(wan) => wan.split_support(size),
            Pipeline::Ltx2(ltx) => ltx.split_support(size),
            Pipeline::Flux(flux) => flux.split_support(size),
            Pipeline::Flux2(flux) => flux.split_support(size),
        }
    }

    /// [`Pipeline::split_support`] of the pipeline in `dir`, from its configs alone (no weights
    /// are read): what a split is checked against before it is queued.
    pub fn inspect_split(dir: &Path, size: VideoSize) -> anyhow::Result<SplitSupport> {
        let index = read_pipeline_index(dir)?;
        match Family::of(dir, &index)? {
            Family::Wan => WanPipeline::inspect_split(dir, &index, size),
            Family::Flux => FluxPipeline::inspect_split(dir, size),
            Family::Flux2 => Flux2Pipeline::inspect_split(dir, size),
            Family::Ltx2 => LTX2Pipeline::inspect_split(dir, size),
        }
    }

    /// Whether the pipeline in `dir` makes a generation of `size` (its family's rule: sides and
    /// frame count), from its configs alone (no weights are read): what a generation is checked
    /// against before it is queued, refused as generating it would be. The outer error is
    /// reading the configs; the inner one the model's refusal.
    pub fn inspect_size(dir: &Path, size: VideoSize) -> anyhow::Result<Result<(), SizeRefused>> {
        match Family::of(dir, &read_pipeline_index(dir)?)? {
            Family::Wan => WanPipeline::inspect_size(dir, size),
            Family::Flux => FluxPipeline::inspect_size(dir, size),
            Family::Flux2 => Flux2Pipeline::inspect_size(dir, size),
            Family::Ltx2 => LTX2Pipeline::inspect_size(dir, size),
        }
    }

    /// Makes this pipeline one rank of a generation split across cards ([`crate::parallel`]).
    pub fn set_split(&mut self, split: crate::parallel::Split) -> anyhow::Result<()> {
        match self {
            Pipeline::Wan(wan) => wan.set_split(split),
            Pipeline::Ltx2(ltx) => ltx.set_split(split),
            Pipeline::Flux(flux) => flux.set_split(split),
            Pipeline::Flux2(flux) => flux.set_split(split),
        }
    }

    /// Makes this pipeline whole again after a split generation: it then generates alone on its
    /// card, as a freshly opened one does.
    pub fn clear_split(&mut self) {
        // Without groups nothing is checked: running whole is never refused.
        self.set_split(crate::parallel::Split::default())
            .expect("a pipeline runs whole");
    }

    /// The card this pipeline runs on.
    pub fn device(&self) -> &Device {
        match self {
            Pipeline::Wan(wan) => wan.device(),
            Pipeline::Ltx2(ltx) => ltx.device(),
            Pipeline::Flux(flux) => flux.device(),
            Pipeline::Flux2(flux) => flux.device(),
        }
    }

    /// Keeps the text encoder in memory between generations (the default), or drops it after
    /// encoding so the denoiser has the memory to itself.
    pub fn keep_text_encoder(&mut self, keep: bool) {
        match self {
            Pipeline::Wan(wan) => wan.keep_text_encoder(keep),
            Pipeline::Flux(flux) => flux.keep_text_encoder(keep),
            Pipeline::Flux2(flux) => flux.keep_text_encoder(keep),
            Pipeline::Ltx2(ltx) => ltx.keep_text_encoder(keep),
        }
    }

    /// Runs one generation; `inputs` replace the seeded noise or the prompt encoding.
    pub fn generate(
        &mut self,
        params: &GenerateParams,
        inputs: GenerateInputs,
        on_progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
    ) -> anyhow::Result<GeneratedVideo> {
        if !matches!(self, Pipeline::Flux(_)) {
            if params.max_sequence_length.is_some() {
                bail!(
                    "max_sequence_length is a FLUX.1 setting; this pipeline's prompt length is fixed"
                );
            }
            if params.true_cfg_scale.is_some() {
                bail!("true_cfg_scale is a FLUX.1 setting; this pipeline's guidance is `guidance`");
            }
        }
        if !matches!(self, Pipeline::Ltx2(_)) {
            if params.fps.is_some() {
                bail!("the frame rate is an LTX-2 setting; this model's rate is fixed");
            }
            if params.sigmas.is_some() {
                bail!(
                    "a sigma schedule is an LTX-2 setting; this pipeline takes steps (and presets)"
                );
            }
            if !params.guidance_terms.is_default() {
                bail!(
                    "audio, spatio-temporal and modality guidance are LTX-2 settings; this pipeline's guidance is `guidance`"
                );
            }
            if inputs.audio_latents.is_some() {
                bail!("audio latents are for an audio-video model (LTX-2)");
            }
            if params.noise_scale.is_some()
                || inputs.noise.is_some()
                || inputs.audio_noise.is_some()
            {
                bail!("noise_scale (re-noising given latents) is an LTX-2 setting");
            }
        }
        match self {
            Pipeline::Wan(wan) => wan.generate_with(params, inputs, on_progress),
            Pipeline::Flux(flux) => flux.generate(params, inputs, on_progress),
            Pipeline::Flux2(flux) => flux.generate(params, inputs, on_progress),
            Pipeline::Ltx2(ltx) => ltx.generate(params, inputs, on_progress),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_rules_name_the_family_rate_and_frame_step() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let rules = |name: &str| Pipeline::video_rules(&fixtures.join(name)).unwrap();
        assert_eq!(rules("tiny-wan-t2v"), Some(VideoRules::wan()));
        assert_eq!(rules("tiny-wan22-two-experts").unwrap().family, "wan2.2");
        let ltx = rules("tiny-ltx2").unwrap();
        // The tiny VAE compresses time 4x (the published one 8x).
        assert_eq!(
            (ltx.family.as_str(), ltx.fps, ltx.frame_step),
            ("ltx2", 24, 4)
        );
        assert_eq!(rules("tiny-flux2-klein"), None);

        // The image-to-video folder of the same model plans by the same rules (its configs only).
        let i2v = tempfile::tempdir().unwrap();
        let index = std::fs::read_to_string(fixtures.join("tiny-ltx2/model_index.json")).unwrap();
        std::fs::write(
            i2v.path().join("model_index.json"),
            index.replace("\"LTX2Pipeline\"", "\"LTX2ImageToVideoPipeline\""),
        )
        .unwrap();
        std::fs::create_dir(i2v.path().join("vae")).unwrap();
        std::fs::copy(
            fixtures.join("tiny-ltx2/vae/config.json"),
            i2v.path().join("vae/config.json"),
        )
        .unwrap();
        assert_eq!(Pipeline::video_rules(i2v.path()).unwrap(), Some(ltx));
    }

    #[test]
    fn inspecting_the_configs_says_what_loading_says() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        for (name, output, start_image) in [
            (
                "tiny-wan-t2v",
                Output::Video { fps: 16 },
                StartImage::Unsupported,
            ),
            (
                "tiny-wan-i2v",
                Output::Video { fps: 16 },
                StartImage::Required,
            ),
            (
                "tiny-wan22-ti2v",
                Output::Video { fps: 16 },
                StartImage::Optional,
            ),
            ("tiny-flux2-klein", Output::Image, StartImage::Unsupported),
            ("tiny-ltx2", Output::Video { fps: 24 }, StartImage::Optional),
        ] {
            let dir = fixtures.join(name);
            let inspected = Pipeline::inspect(&dir).unwrap();
            assert_eq!(
                (inspected.output, inspected.start_image),
                (output, start_image),
                "{name}"
            );
            let loaded = Pipeline::open(&dir, &Device::Cpu, DType::F32).unwrap();
            assert_eq!(loaded.capabilities(), inspected, "{name}");
        }
    }

    #[test]
    fn the_sizes_a_model_makes_are_read_from_its_configs_as_generating_refuses_them() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let size = |height, width, frames| VideoSize {
            height,
            width,
            frames,
        };
        for (name, frames, sides) in [
            (
                "tiny-wan-t2v",
                5,
                "height and width must be positive multiples of 16 (VAE scale 8 x patch 2x2), got 50x30",
            ),
            (
                "tiny-wan22-ti2v",
                5,
                "height and width must be positive multiples of 32 (VAE scale 16 x patch 2x2), got 50x30",
            ),
            (
                "tiny-ltx2",
                5,
                "height and width must be positive multiples of 32, got 50x30",
            ),
            (
                "tiny-flux1-dev",
                1,
                "height and width must be positive multiples of 16 for this model, got 50x30",
            ),
            (
                "tiny-flux2-klein",
                1,
                "height and width must be positive multiples of 4 for this model, got 50x30",
            ),
        ] {
            let dir = fixtures.join(name);
            let taken = Pipeline::inspect_size(&dir, size(32, 64, frames)).unwrap();
            assert_eq!(taken, Ok(()), "{name}");
            let mut pipeline = Pipeline::open(&dir, &Device::Cpu, DType::F32).unwrap();
            for (bad, expected) in [
                (size(30, 50, frames), sides),
                (size(32, 64, frames + 1), "frame"),
            ] {
                let refused = Pipeline::inspect_size(&dir, bad).unwrap().unwrap_err();
                assert!(refused.to_string().contains(expected), "{name}: {refused}");
                let params = GenerateParams {
                    prompt: "a storm".into(),
                    height: bad.height,
                    width: bad.width,
                    frames: bad.frames,
                    steps: 1,
                    ..Default::default()
                };
                let err = pipeline
                    .generate(&params, Default::default(), &mut |_| {
                        ControlFlow::Continue(())
                    })
                    .err()
                    .expect("refused");
                assert_eq!(err.downcast_ref::<SizeRefused>(), Some(&refused), "{name}");
            }
        }
    }

    #[test]
    fn the_split_a_model_takes_is_read_from_its_configs_as_loading_reads_it() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let size = |frames| VideoSize {
            height: 32,
            width: 48,
            frames,
        };
        // The tokens of 32x48 pixels: Wan's 8x VAE and 2x2 patches, 2 latent frames of 5 (a 2x3
        // grid each); LTX-2's tiny 8x VAE with 1x1 patches (4x6, 2 latent frames); FLUX.1's 16
        // pixels a token, the tiny FLUX.2 VAE's 4.
        for (name, frames, heads, cfg_parallel, tokens) in [
            ("tiny-wan-t2v", 5, vec![2], true, 12),
            ("tiny-wan22-two-experts", 5, vec![2, 2], true, 12),
            ("tiny-ltx2", 5, vec![2], false, 48),
            ("tiny-flux1-dev", 1, vec![2], false, 6),
            ("tiny-flux2-klein", 1, vec![2], false, 96),
        ] {
            let dir = fixtures.join(name);
            let inspected = Pipeline::inspect_split(&dir, size(frames)).unwrap();
            let expected = SplitSupport {
                heads,
                cfg_parallel,
                tokens,
            };
            assert_eq!(inspected, expected, "{name}");
            let loaded = Pipeline::open(&dir, &Device::Cpu, DType::F32).unwrap();
            assert_eq!(loaded.split_support(size(frames)), inspected, "{name}");
        }
    }
}
