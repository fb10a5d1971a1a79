//! `bench wan --component pipeline`: one text-to-video generation as `videosdgx generate` runs it,
//! at a preset's full published size with random weights: the UMT5-XXL text encoder on the prompt
//! and the negative prompt, `--steps` UniPC steps with classifier-free guidance through the engine's
//! own [`WanPipeline`] (built from the in-memory models), the f32 VAE decode, and the MP4 written.
//!
//! Stage times are wall clock between device synchronisations (in the pipeline's progress callback
//! for the steps); the step time is the median over the steps of the one timed run, which follows
//! one untimed 2-step run of the same pipeline (NVRTC, cuDNN and cuBLAS lazy init). This module
//! never duplicates the pipeline's loop: it only times it.

use super::{MemoryPeak, RandomWeights, max_abs};
use crate::commands::bench::configs::{
    pipeline_settings, transformer_config, umt5_xxl, unipc_config,
};
use crate::commands::bench::{Component, Preset, WanArgs};
use anyhow::Context;
use candle_core::cuda_backend::cudarc::driver::CudaContext;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use videosdgx_engine::families::wan::prompt::{MAX_SEQUENCE_LENGTH, encode_tokens};
use videosdgx_engine::families::wan::transformer::WanTransformer3DModel;
use videosdgx_engine::families::wan::vae::AutoencoderKLWan;
use videosdgx_engine::families::wan::{WanParts, WanPipeline};
use videosdgx_engine::models::t5::T5EncoderModel;
use videosdgx_engine::pipelines::{GenerateInputs, GenerateParams, Progress, Stage};
use videosdgx_engine::tokenizer::EncodedPrompt;

/// Real tokens of the prompt and of the negative prompt, a long prompt's length; the rest of the
/// 512 is padding (the encoder runs on all 512 either way, as the pipeline's does).
const PROMPT_TOKENS: usize = 96;
const NEGATIVE_PROMPT_TOKENS: usize = 128;
const GUIDANCE: f64 = 5.0;
const WARMUP_STEPS: usize = 2;

/// `len` real random token ids (never the padding id 0), padded to [`MAX_SEQUENCE_LENGTH`].
fn random_tokens(len: usize, vocab: usize) -> anyhow::Result<EncodedPrompt> {
    let ids = Tensor::rand(1f32, vocab as f32, len, &Device::Cpu)?
        .to_dtype(DType::U32)?
        .to_vec1::<u32>()?;
    let pad = MAX_SEQUENCE_LENGTH - len;
    Ok(EncodedPrompt {
        input_ids: ids.into_iter().chain(std::iter::repeat_n(0, pad)).collect(),
        attention_mask: std::iter::repeat_n(1, len)
            .chain(std::iter::repeat_n(0, pad))
            .collect(),
    })
}

#[derive(Serialize)]
struct PipelineReport {
    gpu: String,
    preset: Preset,
    component: Component,
    height: usize,
    width: usize,
    frames: usize,
    steps: usize,
    guidance: f64,
    /// The distilled schedule (--schedule), the weights' format (--quant) and float8 attention
    /// (--attention), where given.
    #[serde(skip_serializing_if = "Option::is_none")]
    schedule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quant: Option<videosdgx_engine::pipelines::Quant>,
    #[serde(skip_serializing_if = "videosdgx_engine::pipelines::AttentionPrecision::is_exact")]
    attention: videosdgx_engine::pipelines::AttentionPrecision,
    /// UMT5-XXL on the prompt and the negative prompt (the negative one only under guidance).
    text_encode_ms: f64,
    /// Median of the timed run's steps (two transformer forwards and the UniPC update each).
    step_ms: f64,
    denoise_ms: f64,
    /// The f32 VAE decode and the frames' copy to the host.
    decode_ms: f64,
    /// The frames encoded (H.264) and written as an MP4, as `generate --out` writes it.
    mp4_ms: f64,
    /// Text encoding, the pipeline call (denoising, decoding) and the MP4.
    total_ms: f64,
    /// max |x| of the denoised latents and of the frames (finite random weights, finite video).
    latents_max_abs: f32,
    output_max_abs: f32,
    /// Device memory in use over the warm-up and the timed run (see MemoryPeak).
    peak_gib: f64,
    /// Text encoder, transformer and VAE.
    params_b: f64,
}

/// Wall-clock milliseconds of one run's stages.
struct Timings {
    text_encode_ms: f64,
    step_ms: Vec<f64>,
    denoise_ms: f64,
    decode_ms: f64,
    mp4_ms: f64,
    total_ms: f64,
    latents_max_abs: f32,
    output_max_abs: f32,
}

fn ms_between(a: Instant, b: Instant) -> f64 {
    b.duration_since(a).as_secs_f64() * 1e3
}

/// One generation: the text encoder on the prompt (and the negative prompt under guidance, as
/// the pipeline encodes it), then the pipeline with their embeddings.
fn generate(
    dev: &Device,
    encoder: &T5EncoderModel,
    pipeline: &mut WanPipeline,
    params: &GenerateParams,
) -> anyhow::Result<Timings> {
    let vocab = encoder.config().vocab_size;
    let (prompt, negative) = (
        random_tokens(PROMPT_TOKENS, vocab)?,
        random_tokens(NEGATIVE_PROMPT_TOKENS, vocab)?,
    );
    dev.synchronize()?;
    let start = Instant::now();
    let prompt_embeds = encode_tokens(encoder, &prompt, dev)?;
    let negative_prompt_embeds = if params.guidance > 1.0 {
        Some(encode_tokens(encoder, &negative, dev)?)
    } else {
        None
    };
    dev.synchronize()?;
    let encoded = Instant::now();

    let mut marks: Vec<(Stage, Instant)> = Vec::new();
    let mut sync_error = None;
    let video = pipeline.generate_with(
        params,
        GenerateInputs {
            latents: None,
            prompt_embeds: Some(prompt_embeds),
            negative_prompt_embeds,
            ..Default::default()
        },
        &mut |p: &Progress| match dev.synchronize() {
            Ok(()) => {
                marks.push((p.stage, Instant::now()));
                ControlFlow::Continue(())
            }
            Err(err) => {
                sync_error = Some(err);
                ControlFlow::Break(())
            }
        },
    );
    if let Some(err) = sync_error {
        return Err(err).context("synchronising the device between steps");
    }
    let video = video?;
    let generated = Instant::now();
    let mp4 = std::env::temp_dir().join(format!("videosdgx-bench-{}.mp4", std::process::id()));
    let frames = videosdgx_engine::video::frames_from_tensor(&video.frames)?;
    videosdgx_engine::video::write_mp4(&mp4, &frames, video.fps, &serde_json::json!({}))?;
    let end = Instant::now();
    std::fs::remove_file(&mp4)?;
    let at = |stage| marks.iter().filter(move |(s, _)| *s == stage).map(|m| m.1);
    let steps: Vec<Instant> = at(Stage::Denoising).collect();
    let decode: Vec<Instant> = at(Stage::Decoding).collect();
    let ([first, .., last], [decode_start, decode_end]) = (steps.as_slice(), decode.as_slice())
    else {
        anyhow::bail!("the pipeline reported no denoising steps or no decoding");
    };
    Ok(Timings {
        text_encode_ms: ms_between(start, encoded),
        step_ms: steps.windows(2).map(|w| ms_between(w[0], w[1])).collect(),
        denoise_ms: ms_between(*first, *last),
        decode_ms: ms_between(*decode_start, *decode_end),
        mp4_ms: ms_between(generated, end),
        total_ms: ms_between(start, end),
        latents_max_abs: max_abs(&video.latents)?,
        output_max_abs: max_abs(&video.frames)?,
    })
}

pub fn bench(args: &WanArgs, dev: &Device, ctx: &Arc<CudaContext>) -> anyhow::Result<()> {
    let shape = args.preset.shape();
    let params = Arc::new(AtomicUsize::new(0));
    let random = |dtype| RandomWeights::var_builder(&params, dtype, dev);
    let settings = pipeline_settings(args.preset)?;
    let encoder = T5EncoderModel::new(&umt5_xxl(), random(DType::BF16))
        .context("building the text encoder")?;
    let mut transformer =
        WanTransformer3DModel::new(&transformer_config(&shape), random(DType::BF16))
            .context("building the transformer")?;
    if let Some(quant) = args.quant {
        videosdgx_engine::models::quant::quantize_blocks(&mut transformer, quant.into())?;
    }
    transformer.set_attention_precision(args.attention.into());
    let vae =
        AutoencoderKLWan::new(random(DType::F32), settings.vae).context("building the VAE")?;
    let mut pipeline = WanPipeline::from_parts(
        WanParts {
            transformer,
            transformer_2: None,
            image_encoder: None,
            vae,
            scheduler_config: unipc_config(settings.flow_shift),
            expand_timesteps: settings.expand_timesteps,
            text: None,
            name: format!("random {}", super::preset_name(args.preset)),
        },
        dev,
        DType::BF16,
    )?;
    let mut call = GenerateParams {
        height: args.height,
        width: args.width,
        frames: args.frames,
        steps: WARMUP_STEPS,
        guidance: GUIDANCE,
        seed: 0,
        quant: args.quant.map(Into::into),
        attention: args.attention.into(),
        ..Default::default()
    };
    let peak = MemoryPeak::start(ctx);
    generate(dev, &encoder, &mut pipeline, &call).context("the warm-up run")?;
    call.steps = args.steps as usize;
    if let Some(name) = &args.schedule {
        videosdgx_engine::presets::preset(name)?.apply(&mut call);
    }
    let timings = generate(dev, &encoder, &mut pipeline, &call);
    let peak_gib = peak.finish();
    let mut t = timings?;
    t.step_ms.sort_by(f64::total_cmp);
    let report = PipelineReport {
        gpu: ctx.name()?,
        preset: args.preset,
        component: Component::Pipeline,
        height: args.height,
        width: args.width,
        frames: args.frames,
        steps: call.steps,
        guidance: call.guidance,
        schedule: args.schedule.clone(),
        quant: call.quant,
        attention: call.attention,
        text_encode_ms: t.text_encode_ms,
        step_ms: t.step_ms[t.step_ms.len() / 2],
        denoise_ms: t.denoise_ms,
        decode_ms: t.decode_ms,
        mp4_ms: t.mp4_ms,
        total_ms: t.total_ms,
        latents_max_abs: t.latents_max_abs,
        output_max_abs: t.output_max_abs,
        peak_gib,
        params_b: params.load(Ordering::Relaxed) as f64 / 1e9,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} pipeline on {}, {}x{}x{}, {} steps, guidance {}: total {:.0} ms = text {:.0} ms + \
             denoise {:.0} ms (step {:.1} ms, median) + decode {:.0} ms + MP4 {:.0} ms; peak {:.1} GiB, \
             {:.2}B params",
            super::preset_name(report.preset),
            report.gpu,
            report.height,
            report.width,
            report.frames,
            report.steps,
            report.guidance,
            report.total_ms,
            report.text_encode_ms,
            report.denoise_ms,
            report.step_ms,
            report.decode_ms,
            report.mp4_ms,
            report.peak_gib,
            report.params_b
        );
    }
    Ok(())
}
