//! `bench flux`: FLUX.1 or FLUX.2 at a preset's published size with random weights, in bf16: one
//! transformer forward (batch 1, 512 text tokens, the image's latent tokens), the VAE decode, or
//! (FLUX.2) a whole generation through the engine's own [`Flux2Pipeline`] from prompt embeddings
//! (`--steps` flow-Euler steps, the VAE decode and the copy to the host; the text encoder is
//! `bench llm`'s business). The generation is timed once after an untimed run of the same size.

use super::{
    MemoryPeak, ProfileSection, RandomWeights, max_abs, profiled, time_generation, time_ms,
};
use crate::commands::bench::configs::{
    flux1_transformer, flux1_vae, flux2_scheduler, flux2_transformer, flux2_vae,
};
use crate::commands::bench::{FluxArgs, ModelComponent};
use anyhow::Context;
use candle_core::cuda_backend::cudarc::driver::CudaContext;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use videosdgx_engine::families::flux::transformer::FluxTransformer2DModel;
use videosdgx_engine::families::flux2::pipeline::{Flux2Parts, Flux2Pipeline, grid_ids, text_ids};
use videosdgx_engine::families::flux2::transformer::Flux2Transformer2DModel;
use videosdgx_engine::families::flux2::vae::AutoencoderKLFlux2;
use videosdgx_engine::models::autoencoder_kl::AutoencoderKL;
use videosdgx_engine::pipelines::{GenerateInputs, GenerateParams};

/// Text tokens: the pipelines pad every prompt to 512.
const TEXT_TOKENS: usize = 512;
/// Pixels per latent token: the VAE's 8x downsampling and the 2x2 patch.
const PIXELS_PER_TOKEN: usize = 16;

#[derive(Serialize)]
struct Report {
    gpu: String,
    preset: String,
    component: ModelComponent,
    height: usize,
    width: usize,
    /// Median milliseconds of one call (transformer, VAE), or of the whole generation.
    ms: f64,
    /// The generation's stages: median step, decode (with the copy to the host).
    #[serde(skip_serializing_if = "Option::is_none")]
    step_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decode_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<usize>,
    /// max |x| of the output (finite random weights give a finite output).
    output_max_abs: f32,
    /// With --profile: synchronised wall time per section of the transformer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    profile: Vec<ProfileSection>,
    peak_gib: f64,
    params_b: f64,
}

/// Position ids `(0, y, x)` of FLUX.1's image tokens and `(0, 0, 0)` of its text tokens.
fn flux1_ids(gh: usize, gw: usize, dev: &Device) -> anyhow::Result<(Tensor, Tensor)> {
    let image: Vec<f32> = (0..gh)
        .flat_map(|y| (0..gw).flat_map(move |x| [0.0, y as f32, x as f32]))
        .collect();
    Ok((
        Tensor::from_vec(image, (gh * gw, 3), dev)?,
        Tensor::zeros((TEXT_TOKENS, 3), DType::F32, dev)?,
    ))
}

pub fn bench(args: &FluxArgs, dev: &Device, ctx: &Arc<CudaContext>) -> anyhow::Result<()> {
    if !args.height.is_multiple_of(PIXELS_PER_TOKEN) || !args.width.is_multiple_of(PIXELS_PER_TOKEN)
    {
        anyhow::bail!("height and width must be multiples of {PIXELS_PER_TOKEN}");
    }
    let (gh, gw) = (
        args.height / PIXELS_PER_TOKEN,
        args.width / PIXELS_PER_TOKEN,
    );
    let params = Arc::new(AtomicUsize::new(0));
    let vb = RandomWeights::var_builder(&params, DType::BF16, dev);
    let bf16 = |t: Tensor| t.to_dtype(DType::BF16);
    let peak = MemoryPeak::start(ctx);
    let mut profile = Vec::new();
    let Some(config) = flux2_transformer(args.preset) else {
        // FLUX.1: the transformer and the VAE.
        let (ms, output) = match args.component {
            ModelComponent::Transformer => {
                let config = flux1_transformer(args.preset);
                let model = FluxTransformer2DModel::new(&config, vb.clone())
                    .context("building the transformer")?;
                let hidden = bf16(Tensor::randn(
                    0f32,
                    1f32,
                    (1, gh * gw, config.in_channels),
                    dev,
                )?)?;
                let text = bf16(Tensor::randn(
                    0f32,
                    1f32,
                    (1, TEXT_TOKENS, config.joint_attention_dim),
                    dev,
                )?)?;
                let pooled = bf16(Tensor::randn(
                    0f32,
                    1f32,
                    (1, config.pooled_projection_dim),
                    dev,
                )?)?;
                let timestep = bf16(Tensor::new(&[0.5f32], dev)?)?;
                let guidance = config
                    .guidance_embeds
                    .then(|| bf16(Tensor::new(&[3.5f32], dev)?))
                    .transpose()?;
                let (img_ids, txt_ids) = flux1_ids(gh, gw, dev)?;
                let forward = || {
                    model.forward(
                        &hidden,
                        &text,
                        &pooled,
                        &timestep,
                        &img_ids,
                        &txt_ids,
                        guidance.as_ref(),
                    )
                };
                let mut out = None;
                let ms = time_ms(dev, args.timing.warmup, args.timing.reps, || {
                    out = Some(forward()?);
                    Ok(())
                })?;
                if args.timing.profile {
                    profile = profiled(|| {
                        forward()?;
                        Ok(())
                    })?;
                }
                (ms, out.context("no timed call")?)
            }
            ModelComponent::Vae => {
                let vae =
                    AutoencoderKL::new(&flux1_vae(), vb.pp("vae")).context("building the VAE")?;
                let z = bf16(Tensor::randn(0f32, 1f32, (1, 16, gh * 2, gw * 2), dev)?)?;
                let mut out = None;
                let ms = time_ms(dev, 1, args.timing.reps, || {
                    out = Some(vae.decode(&z)?);
                    Ok(())
                })?;
                (ms, out.context("no timed call")?)
            }
            ModelComponent::Pipeline => anyhow::bail!(
                "bench flux --component pipeline is implemented for the FLUX.2 presets"
            ),
        };
        let measured = Measured {
            ms,
            output,
            stages: None,
            profile,
        };
        return report(args, ctx, &params, peak, measured);
    };
    let (ms, output, stages) = match args.component {
        ModelComponent::Transformer => {
            let model = Flux2Transformer2DModel::new(&config, vb.clone())
                .context("building the transformer")?;
            let hidden = bf16(Tensor::randn(
                0f32,
                1f32,
                (1, gh * gw, config.in_channels),
                dev,
            )?)?;
            let text = bf16(Tensor::randn(
                0f32,
                1f32,
                (1, TEXT_TOKENS, config.joint_attention_dim),
                dev,
            )?)?;
            let timestep = bf16(Tensor::new(&[0.5f32], dev)?)?;
            let guidance = config
                .guidance_embeds
                .then(|| bf16(Tensor::new(&[4f32], dev)?))
                .transpose()?;
            let (img_ids, txt_ids) = (grid_ids(0, gh, gw, dev)?, text_ids(TEXT_TOKENS, dev)?);
            let mut out = None;
            let ms = time_ms(dev, args.timing.warmup, args.timing.reps, || {
                out = Some(model.forward(
                    &hidden,
                    &text,
                    &timestep,
                    &img_ids,
                    &txt_ids,
                    guidance.as_ref(),
                )?);
                Ok(())
            })?;
            if args.timing.profile {
                profile = profiled(|| {
                    let forward = || {
                        let guidance = guidance.as_ref();
                        model.forward(&hidden, &text, &timestep, &img_ids, &txt_ids, guidance)
                    };
                    forward()?;
                    Ok(())
                })?;
            }
            (ms, out.context("no timed call")?, None)
        }
        ModelComponent::Vae => {
            let vae =
                AutoencoderKLFlux2::new(&flux2_vae(), vb.pp("vae")).context("building the VAE")?;
            let z = bf16(Tensor::randn(0f32, 1f32, (1, 32, gh * 2, gw * 2), dev)?)?;
            let mut out = None;
            let ms = time_ms(dev, 1, args.timing.reps, || {
                out = Some(vae.decode(&z)?);
                Ok(())
            })?;
            (ms, out.context("no timed call")?, None)
        }
        ModelComponent::Pipeline => {
            let mut pipeline = Flux2Pipeline::from_parts(
                Flux2Parts {
                    transformer: Flux2Transformer2DModel::new(&config, vb.pp("transformer"))
                        .context("building the transformer")?,
                    vae: AutoencoderKLFlux2::new(&flux2_vae(), vb.pp("vae"))
                        .context("building the VAE")?,
                    scheduler_config: flux2_scheduler(),
                    name: format!("random {}", args.preset.name()),
                },
                dev,
                DType::BF16,
            );
            let embeds = Tensor::randn(
                0f32,
                1f32,
                (1, TEXT_TOKENS, config.joint_attention_dim),
                dev,
            )?;
            let params = GenerateParams {
                height: args.height,
                width: args.width,
                frames: 1,
                steps: args.steps,
                guidance: 4.0,
                seed: 0,
                ..Default::default()
            };
            let timing = time_generation(dev, |on_progress| {
                let inputs = GenerateInputs {
                    prompt_embeds: Some(embeds.clone()),
                    ..Default::default()
                };
                Ok(pipeline.generate(&params, inputs, on_progress)?.frames)
            })?;
            let stages = Some((timing.step_ms, timing.decode_ms));
            (timing.ms, timing.output, stages)
        }
    };
    let measured = Measured {
        ms,
        output,
        stages,
        profile,
    };
    report(args, ctx, &params, peak, measured)
}

/// What one run measured.
struct Measured {
    ms: f64,
    output: Tensor,
    /// The generation's median step and decode.
    stages: Option<(f64, f64)>,
    profile: Vec<ProfileSection>,
}

/// Prints the report of one run.
fn report(
    args: &FluxArgs,
    ctx: &Arc<CudaContext>,
    params: &AtomicUsize,
    peak: MemoryPeak,
    measured: Measured,
) -> anyhow::Result<()> {
    let peak_gib = peak.finish();
    let Measured {
        ms,
        output,
        stages,
        profile,
    } = measured;
    let report = Report {
        gpu: ctx.name()?,
        preset: args.preset.name().into(),
        component: args.component,
        height: args.height,
        width: args.width,
        ms,
        step_ms: stages.map(|s| s.0),
        decode_ms: stages.map(|s| s.1),
        steps: stages.map(|_| args.steps),
        output_max_abs: max_abs(&output)?,
        profile,
        peak_gib,
        params_b: params.load(Ordering::Relaxed) as f64 / 1e9,
    };
    if args.timing.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} {:?} on {}, {}x{}: {:.1} ms; peak {:.1} GiB, {:.2}B params",
            report.preset,
            report.component,
            report.gpu,
            report.height,
            report.width,
            report.ms,
            report.peak_gib,
            report.params_b
        );
    }
    Ok(())
}
