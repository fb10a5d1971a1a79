//! `LTX2LatentUpsamplePipeline` (diffusers `pipelines/ltx2/pipeline_ltx2_latent_upsample.py`) and
//! the two-stage generation it serves (the published two-stage example of diffusers'
//! `docs/source/en/api/pipelines/ltx2.md`): stage 1 makes video and audio latents at a fraction of
//! the size, the latent upsampler enlarges the video latents, and stage 2 re-noises both to the
//! first sigma of `STAGE_2_DISTILLED_SIGMA_VALUES` and denoises them on that distilled schedule at
//! the full size before decoding.
//!
//! The upsample pipeline takes latents (the reference's `video=` input, which VAE-encodes
//! pictures first, is not supported) and returns them enlarged or decoded.

use super::latent_upsampler::{
    LTX2LatentUpsamplerModel, adain_filter_latent, tone_map_latents, unpack_latents,
};
use super::pipeline::LTX2Pipeline;
use super::video_vae::AutoencoderKLLTX2Video;
use crate::loader::{pipeline_component, read_pipeline_index};
use crate::pipelines::{GenerateInputs, GenerateParams, GeneratedVideo, GuidanceTerms, Progress};
use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device, Tensor};
use std::ops::ControlFlow;
use std::path::Path;

/// `pipelines/ltx2/utils.py`'s `STAGE_2_DISTILLED_SIGMA_VALUES`: the refinement's schedule.
pub const STAGE_2_DISTILLED_SIGMAS: [f64; 3] = [0.909375, 0.725, 0.421875];

/// The call's options besides the latents, with the reference's names and defaults.
#[derive(Debug, Clone, Default)]
pub struct UpsampleParams {
    /// Whether the given latents are normalised (the transformer's space): they are
    /// denormalised with the VAE's statistics first.
    pub latents_normalized: bool,
    /// Blend towards the input's per-channel statistics (`adain_filter_latent`; off at 0).
    pub adain_factor: f64,
    /// Sigmoid compression of large latent values, in [0, 1] (off at 0).
    pub tone_map_compression_ratio: f64,
    /// For packed latents `[B, S, D]`: the input video's frames, height and width in pixels
    /// and the transformer's patch sizes (`spatial_patch_size`, `temporal_patch_size`).
    pub packed: Option<PackedLatents>,
}

/// The geometry of packed token latents.
#[derive(Debug, Clone, Copy)]
pub struct PackedLatents {
    pub num_frames: usize,
    pub height: usize,
    pub width: usize,
    pub spatial_patch_size: usize,
    pub temporal_patch_size: usize,
}

pub struct LTX2LatentUpsamplePipeline {
    name: String,
    /// The video VAE: its statistics for normalised inputs and its decoder. Absent when loaded
    /// from a bare upsampler folder (the video pipeline's VAE serves then).
    vae: Option<AutoencoderKLLTX2Video>,
    latent_upsampler: LTX2LatentUpsamplerModel,
}

impl LTX2LatentUpsamplePipeline {
    /// Both components, refusing an upsampler made for other latents than the VAE's.
    pub fn new(
        vae: Option<AutoencoderKLLTX2Video>,
        latent_upsampler: LTX2LatentUpsamplerModel,
        name: String,
    ) -> Result<Self> {
        if let Some(vae) = &vae {
            check_channels(&latent_upsampler, vae.config().latent_channels, &name)?;
        }
        Ok(Self {
            name,
            vae,
            latent_upsampler,
        })
    }

    /// A folder with `model_index.json` of class `LTX2LatentUpsamplePipeline` (`vae/` and
    /// `latent_upsampler/`), or an `LTX2LatentUpsamplerModel` folder alone (`config.json` and
    /// weights, as `Lightricks/LTX-2`'s `latent_upsampler/` subfolder).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let name = dir.display().to_string();
        if !dir.join("model_index.json").is_file() {
            let upsampler = LTX2LatentUpsamplerModel::load(dir, device, dtype)?;
            return Self::new(None, upsampler, name);
        }
        let index = read_pipeline_index(dir)?;
        ensure!(
            index.class_name == "LTX2LatentUpsamplePipeline",
            "{name}: an upsampler folder is an `LTX2LatentUpsamplePipeline` or a `latent_upsampler` folder, not a `{}`",
            index.class_name
        );
        let vae = match index.component("vae") {
            Some(_) => Some(AutoencoderKLLTX2Video::load(
                &pipeline_component(dir, "vae")?,
                device,
                dtype,
            )?),
            None => None,
        };
        let upsampler = LTX2LatentUpsamplerModel::load(
            &pipeline_component(dir, "latent_upsampler")?,
            device,
            dtype,
        )?;
        Self::new(vae, upsampler, name)
    }

    pub fn latent_upsampler(&self) -> &LTX2LatentUpsamplerModel {
        &self.latent_upsampler
    }

    /// `__call__(latents=..., output_type="latent")`: the enlarged latents `[B, C, F', H', W']`,
    /// denormalised (the VAE's space), in f32.
    pub fn upsample(&self, latents: &Tensor, params: &UpsampleParams) -> Result<Tensor> {
        ensure!(
            (0.0..=1.0).contains(&params.tone_map_compression_ratio),
            "`tone_map_compression_ratio` must be in the range [0, 1], got {}",
            params.tone_map_compression_ratio
        );
        let latents = match (latents.rank(), params.packed) {
            (5, _) => latents.clone(),
            (3, Some(packed)) => {
                let (temporal, spatial) = self.compression_ratios();
                unpack_latents(
                    latents,
                    (packed.num_frames - 1) / temporal + 1,
                    packed.height / spatial,
                    packed.width / spatial,
                    packed.spatial_patch_size,
                    packed.temporal_patch_size,
                )?
            }
            (3, None) => bail!(
                "{}: packed latents {:?} need the video's frames, height, width and patch sizes",
                self.name,
                latents.dims()
            ),
            _ => bail!(
                "{}: latents must be [B, C, F, H, W] or packed [B, S, D], got {:?}",
                self.name,
                latents.dims()
            ),
        };
        let latents = latents.to_dtype(DType::F32)?;
        let latents = if params.latents_normalized {
            let vae = self.vae("latents_normalized")?;
            vae.denormalize_latents(
                &latents.to_device(vae.latents_mean().device())?,
                vae.config().scaling_factor,
            )?
        } else {
            latents
        };
        let channels = self.latent_upsampler.config().in_channels;
        ensure!(
            latents.dim(1)? == channels,
            "{}: the latent upsampler takes {channels} latent channels, the latents have {} ({:?})",
            self.name,
            latents.dim(1)?,
            latents.dims()
        );
        let upsampled = self
            .latent_upsampler
            .forward(&latents)?
            .to_dtype(DType::F32)?;
        let upsampled = if params.adain_factor > 0.0 {
            adain_filter_latent(&upsampled, &latents, params.adain_factor)?
        } else {
            upsampled
        };
        Ok(if params.tone_map_compression_ratio > 0.0 {
            tone_map_latents(&upsampled, params.tone_map_compression_ratio)?
        } else {
            upsampled
        })
    }

    /// `__call__(latents=..., output_type="np")`: the enlarged latents decoded by the VAE (at
    /// the reference's default `decode_timestep` 0), f32 `[F, H, W, 3]` in [0, 1] on the CPU.
    pub fn upsample_and_decode(&self, latents: &Tensor, params: &UpsampleParams) -> Result<Tensor> {
        let upsampled = self.upsample(latents, params)?;
        let vae = self.vae("decoding")?;
        ensure!(
            upsampled.dim(0)? == 1,
            "{}: decoding takes one video, got a batch of {}",
            self.name,
            upsampled.dim(0)?
        );
        let timestep = vae
            .config()
            .timestep_conditioning
            .then(|| Tensor::zeros(1, vae.dtype(), vae.latents_mean().device()))
            .transpose()?;
        let pictures = vae.decode(
            &upsampled
                .to_device(vae.latents_mean().device())?
                .to_dtype(vae.dtype())?,
            timestep.as_ref(),
        )?;
        crate::video::pictures_to_frames(&pictures.squeeze(0)?)
    }

    /// (`vae_temporal_compression_ratio`, `vae_spatial_compression_ratio`): the VAE's, or the
    /// reference's 8 and 32 without one.
    fn compression_ratios(&self) -> (usize, usize) {
        self.vae.as_ref().map_or((8, 32), |vae| {
            (
                vae.config().temporal_compression_ratio(),
                vae.config().spatial_compression_ratio(),
            )
        })
    }

    fn vae(&self, what: &str) -> Result<&AutoencoderKLLTX2Video> {
        self.vae.as_ref().with_context(|| {
            format!(
                "{}: {what} needs the video VAE, and this upsampler folder has none (load an LTX2LatentUpsamplePipeline folder)",
                self.name
            )
        })
    }
}

/// Refuses an upsampler whose `in_channels` are not the VAE's latent channels, naming both.
fn check_channels(
    upsampler: &LTX2LatentUpsamplerModel,
    vae_channels: usize,
    name: &str,
) -> Result<()> {
    let channels = upsampler.config().in_channels;
    ensure!(
        channels == vae_channels,
        "{name}: the latent upsampler takes {channels} latent channels (in_channels) but the video VAE makes {vae_channels} (latent_channels)"
    );
    Ok(())
}

/// The two-stage generation: `params` describe the final video; stage 1 runs them at the
/// upsampler's fraction of the size, stage 2 refines the enlarged latents with
/// [`STAGE_2_DISTILLED_SIGMAS`] (re-noised to the first, guidance off, the sigmas unshifted as the
/// published example sets the scheduler), with `params.refine_loras` added to `params.loras`
/// (the distilled LoRA of a dev checkpoint), and decodes. The video's `loras` are stage 2's. `inputs.latents`/`audio_latents` replace
/// stage 1's noise and `inputs.noise`/`audio_noise` stage 2's re-noising draw (from the seed + 2
/// and + 3 otherwise).
pub fn generate_two_stage(
    pipeline: &mut LTX2Pipeline,
    upsampler: &LTX2LatentUpsamplePipeline,
    params: &GenerateParams,
    inputs: GenerateInputs,
    on_progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
) -> Result<GeneratedVideo> {
    check_channels(
        &upsampler.latent_upsampler,
        pipeline.latent_channels(),
        &upsampler.name,
    )?;
    let config = upsampler.latent_upsampler.config();
    ensure!(
        !config.temporal_upsample,
        "{}: a temporal latent upsampler; the two-stage generation enlarges height and width",
        upsampler.name
    );
    ensure!(
        params.noise_scale.is_none(),
        "noise_scale: the two-stage generation re-noises stage 2 to its first sigma ({})",
        STAGE_2_DISTILLED_SIGMAS[0]
    );
    let (num, den) = config
        .spatial_scale()
        .map_err(|reason| anyhow::anyhow!("{}: {reason}", upsampler.name))?;
    let stage_size = |size: usize| (size * den).is_multiple_of(num).then(|| size * den / num);
    let (Some(width), Some(height)) = (stage_size(params.width), stage_size(params.height)) else {
        bail!(
            "the two-stage generation makes {}x{} at {den}/{num} of the size first: give a width and height divisible by {num}",
            params.width,
            params.height
        );
    };
    let guidance = params.guidance_terms.resolve(params.guidance);

    // The prompts are encoded once for both stages.
    let (prompt_embeds, prompt_attention_mask) = match inputs.prompt_embeds {
        Some(embeds) => (Some(embeds), inputs.prompt_attention_mask),
        None => {
            let (embeds, mask) = pipeline.prompt_embeds(&params.prompt)?;
            (Some(embeds), Some(mask))
        }
    };
    let (negative_prompt_embeds, negative_prompt_attention_mask) =
        match (guidance.classifier_free(), inputs.negative_prompt_embeds) {
            (_, Some(embeds)) => (Some(embeds), inputs.negative_prompt_attention_mask),
            (true, None) => {
                let (embeds, mask) = pipeline.prompt_embeds(&params.negative_prompt)?;
                (Some(embeds), Some(mask))
            }
            (false, None) => (None, None),
        };

    let stage_1 = GenerateParams {
        width,
        height,
        refine_loras: Vec::new(),
        ..params.clone()
    };
    let (latents, audio_latents) = pipeline
        .generate_latents(
            &stage_1,
            GenerateInputs {
                latents: inputs.latents,
                audio_latents: inputs.audio_latents,
                prompt_embeds: prompt_embeds.clone(),
                prompt_attention_mask: prompt_attention_mask.clone(),
                negative_prompt_embeds,
                negative_prompt_attention_mask,
                ..Default::default()
            },
            on_progress,
        )
        .with_context(|| format!("stage 1 of the two-stage generation, at {width}x{height}"))?;
    let upsampled = upsampler
        .upsample(&latents, &UpsampleParams::default())
        .context("upsampling stage 1's latents")?;

    let stage_2 = GenerateParams {
        steps: STAGE_2_DISTILLED_SIGMAS.len(),
        sigmas: Some(STAGE_2_DISTILLED_SIGMAS.to_vec()),
        noise_scale: Some(STAGE_2_DISTILLED_SIGMAS[0]),
        guidance: 1.0,
        guidance_terms: GuidanceTerms::default(),
        seed: params.seed.wrapping_add(2),
        loras: [params.loras.as_slice(), &params.refine_loras].concat(),
        refine_loras: Vec::new(),
        ..params.clone()
    };
    let mut unshifted = pipeline.scheduler_config().clone();
    unshifted["use_dynamic_shifting"] = false.into();
    unshifted["shift_terminal"] = serde_json::Value::Null;
    let shifted = pipeline.replace_scheduler_config(unshifted);
    let refined = pipeline.generate(
        &stage_2,
        GenerateInputs {
            latents: Some(upsampled),
            audio_latents: Some(audio_latents),
            prompt_embeds,
            prompt_attention_mask,
            noise: inputs.noise,
            audio_noise: inputs.audio_noise,
            ..Default::default()
        },
        on_progress,
    );
    pipeline.replace_scheduler_config(shifted);
    refined.context("stage 2 (the refinement of the upsampled latents)")
}
