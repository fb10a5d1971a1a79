//! Generation pipelines: the Wan family's text-to-video, image-to-video (start frame, and first +
//! last frame where the checkpoint supports it), Wan 2.2's two experts and TI2V, with classifier-free
//! guidance, per-step progress and cancellation between steps.
//!
//! [`GenerateParams`] is the reproducible record of a generation (it is embedded in the output MP4).
//! The initial noise comes from the CPU generator documented in [`noise`], so a seed gives the same
//! video on the CPU and the GPU. This module orchestrates models; it never writes files.

mod noise;
mod prompt;
mod wan;

pub use noise::initial_noise;
pub use prompt::{MAX_SEQUENCE_LENGTH, clean_prompt, encode_tokens};
pub use wan::{GenerateInputs, StartImage, TextSide, WanParts, WanPipeline};

use crate::lora::{LoraMode, LoraSpec};
use crate::schedulers::SchedulerKind;
use crate::schedulers::step_cache::{CacheReport, CacheSpec};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Everything that determines a generated video (with the model directory and dtype).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Step caching (TeaCache, MagCache, EasyCache) and its threshold; off when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,
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

/// The callback asked to stop; returned (inside `anyhow::Error`) by `WanPipeline::generate`.
/// Test with `err.downcast_ref::<Cancelled>()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("generation cancelled")]
pub struct Cancelled;

pub struct GeneratedVideo {
    /// f32 `[frames, height, width, 3]` in [0, 1] on the CPU: the reference's `output_type="np"`.
    pub frames: Tensor,
    pub fps: u32,
    /// f32 `[1, C, T, H/s, W/s]` the VAE decoded, on the generating device (before the clamp that
    /// bounds `frames`, so a diverged run shows here).
    pub latents: Tensor,
    /// The LoRAs applied, as the parameters gave them, each with its file's SHA-256.
    pub loras: Vec<LoraSpec>,
    /// With [`GenerateParams::cache`]: the steps each guidance branch computed and skipped.
    pub cache: Option<CacheReport>,
}
