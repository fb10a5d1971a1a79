//! `bench ltx2`: LTX-2 19B at the published configs with random bf16 weights: one transformer
//! forward over the video and its sound (batch 1, 1,024 text tokens per stream, the clip's latent
//! tokens), the video VAE decode, or a whole distilled 8-step generation through the engine's own
//! [`LTX2Pipeline`] from prompt embeddings (the text connectors, the steps, the video and audio
//! decodes, the vocoder and the copy to the host; Gemma 3 is `bench llm`'s business). The
//! generation is timed once after an untimed run of the same size.

use super::{
    MemoryPeak, ProfileSection, RandomWeights, max_abs, profiled, time_generation, time_ms,
};
use crate::commands::bench::configs::ltx2_19b;
use crate::commands::bench::{Ltx2Args, ModelComponent};
use anyhow::Context;
use candle_core::cuda_backend::cudarc::driver::CudaContext;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use videosdgx_engine::families::ltx2::audio_vae::AutoencoderKLLTX2Audio;
use videosdgx_engine::families::ltx2::connectors::LTX2TextConnectors;
use videosdgx_engine::families::ltx2::pipeline::{DISTILLED_SIGMAS, LTX2Parts, LTX2Pipeline};
use videosdgx_engine::families::ltx2::transformer::{
    LTX2TransformerInputs, LTX2VideoTransformer3DModel, Positions,
};
use videosdgx_engine::families::ltx2::video_vae::AutoencoderKLLTX2Video;
use videosdgx_engine::families::ltx2::vocoder::{LTX2Vocoder, Vocoder};
use videosdgx_engine::pipelines::{GenerateInputs, GenerateParams};

/// Tokens per prompt (the pipeline pads every prompt to 1,024).
const TEXT_TOKENS: usize = 1024;
/// Real tokens of the benchmark's prompt (left-padded, as the pipeline's tokenizer pads).
const PROMPT_TOKENS: usize = 128;
const FPS: f64 = 24.0;
/// Gemma 3 12B's hidden size and its hidden states (embeddings and 48 layers), stacked.
const GEMMA_HIDDEN: usize = 3840;
const GEMMA_STATES: usize = 49;

#[derive(Serialize)]
struct Report {
    gpu: String,
    component: ModelComponent,
    height: usize,
    width: usize,
    frames: usize,
    /// Video and audio latent tokens the transformer sees.
    video_tokens: usize,
    audio_tokens: usize,
    /// Median milliseconds of one call (transformer, VAE), or of the whole generation.
    ms: f64,
    /// The generation's stages: median step, decode (video, audio, vocoder, copy to the host).
    #[serde(skip_serializing_if = "Option::is_none")]
    step_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decode_ms: Option<f64>,
    /// max |x| of the output (finite random weights give a finite output).
    output_max_abs: f32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    profile: Vec<ProfileSection>,
    peak_gib: f64,
    params_b: f64,
}

fn config<T: DeserializeOwned>(value: serde_json::Value, what: &str) -> anyhow::Result<T> {
    serde_json::from_value(value).with_context(|| format!("the LTX-2 19B {what} config"))
}

pub fn bench(args: &Ltx2Args, dev: &Device, ctx: &Arc<CudaContext>) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.height.is_multiple_of(32) && args.width.is_multiple_of(32),
        "height and width must be multiples of 32"
    );
    anyhow::ensure!(
        args.frames > 0 && (args.frames - 1).is_multiple_of(8),
        "frames must be 8k+1 (9, 17, ..., 121)"
    );
    let (latent_frames, latent_h, latent_w) =
        ((args.frames - 1) / 8 + 1, args.height / 32, args.width / 32);
    let video_tokens = latent_frames * latent_h * latent_w;
    // 16 kHz mel frames of hop 160, four per latent: 25 audio latents a second.
    let audio_tokens = (args.frames as f64 / FPS * 25.0).round() as usize;

    let params = Arc::new(AtomicUsize::new(0));
    let vb = RandomWeights::var_builder(&params, DType::BF16, dev);
    let configs = ltx2_19b();
    let bf16 = |shape: &[usize]| -> anyhow::Result<Tensor> {
        Ok(Tensor::randn(0f32, 1f32, shape, dev)?.to_dtype(DType::BF16)?)
    };
    let peak = MemoryPeak::start(ctx);
    let mut profile = Vec::new();
    let (ms, output, stages) = match args.component {
        ModelComponent::Transformer => {
            let model = LTX2VideoTransformer3DModel::new(
                &config(configs.transformer, "transformer")?,
                vb.clone(),
            )
            .context("building the transformer")?;
            let cfg = model.config().clone();
            let hidden = bf16(&[1, video_tokens, cfg.in_channels])?;
            let audio_hidden = bf16(&[1, audio_tokens, cfg.audio_in_channels])?;
            // The connectors' outputs: caption_channels wide where the transformer projects
            // them (LTX-2.0), else already cross_attention_dim.
            let (text_dim, audio_text_dim) = if cfg.use_prompt_embeddings {
                (cfg.caption_channels, cfg.caption_channels)
            } else {
                (cfg.cross_attention_dim, cfg.audio_cross_attention_dim)
            };
            let text = bf16(&[1, TEXT_TOKENS, text_dim])?;
            let audio_text = bf16(&[1, TEXT_TOKENS, audio_text_dim])?;
            // The connectors' mask: every token kept (registers fill the padding).
            let mask = Tensor::ones((1, TEXT_TOKENS), DType::F32, dev)?;
            let timestep = Tensor::new(&[500f32], dev)?;
            let forward = || {
                model.forward(&LTX2TransformerInputs {
                    hidden_states: &hidden,
                    audio_hidden_states: &audio_hidden,
                    encoder_hidden_states: &text,
                    audio_encoder_hidden_states: &audio_text,
                    timestep: &timestep,
                    audio_timestep: None,
                    sigma: Some(&timestep),
                    audio_sigma: None,
                    encoder_attention_mask: Some(&mask),
                    audio_encoder_attention_mask: Some(&mask),
                    video_self_attention_mask: None,
                    video_positions: Positions::Video {
                        num_frames: latent_frames,
                        height: latent_h,
                        width: latent_w,
                        fps: FPS as f32,
                    },
                    audio_positions: Positions::Audio {
                        num_frames: audio_tokens,
                    },
                    isolate_modalities: false,
                    spatio_temporal_guidance_blocks: Vec::new(),
                    perturbation_mask: None,
                    use_cross_timestep: true,
                    video_keyframes_mask: None,
                })
            };
            let mut out = None;
            let ms = time_ms(dev, args.timing.warmup, args.timing.reps, || {
                out = Some(forward()?.0);
                Ok(())
            })?;
            if args.timing.profile {
                profile = profiled(|| {
                    forward()?;
                    Ok(())
                })?;
            }
            (ms, out.context("no timed call")?, None)
        }
        ModelComponent::Vae => {
            let vae = AutoencoderKLLTX2Video::new(&config(configs.vae, "VAE")?, vb.pp("vae"))
                .context("building the VAE")?;
            let z = bf16(&[1, 128, latent_frames, latent_h, latent_w])?;
            let mut out = None;
            let ms = time_ms(dev, 1, args.timing.reps, || {
                out = Some(vae.decode(&z, None)?);
                Ok(())
            })?;
            if args.timing.profile {
                profile = profiled(|| {
                    vae.decode(&z, None)?;
                    Ok(())
                })?;
            }
            (ms, out.context("no timed call")?, None)
        }
        ModelComponent::Pipeline => {
            let built = Instant::now();
            let parts = LTX2Parts {
                transformer: LTX2VideoTransformer3DModel::new(
                    &config(configs.transformer, "transformer")?,
                    vb.pp("transformer"),
                )
                .context("building the transformer")?,
                connectors: LTX2TextConnectors::new(
                    &config(configs.connectors, "connectors")?,
                    vb.pp("connectors"),
                )
                .context("building the connectors")?,
                vae: AutoencoderKLLTX2Video::new(&config(configs.vae, "VAE")?, vb.pp("vae"))
                    .context("building the VAE")?,
                audio_vae: AutoencoderKLLTX2Audio::new(
                    &config(configs.audio_vae, "audio VAE")?,
                    vb.pp("audio_vae"),
                )
                .context("building the audio VAE")?,
                vocoder: Vocoder::Plain(Box::new(
                    LTX2Vocoder::new(&config(configs.vocoder, "vocoder")?, vb.pp("vocoder"))
                        .context("building the vocoder")?,
                )),
                scheduler_config: configs.scheduler,
                name: "random LTX-2 19B".into(),
            };
            dev.synchronize()?;
            tracing::info!(
                "built the pipeline in {:.1} s",
                built.elapsed().as_secs_f64()
            );
            let mut pipeline = LTX2Pipeline::from_parts(parts, dev, DType::BF16);
            let embeds = bf16(&[1, TEXT_TOKENS, GEMMA_HIDDEN * GEMMA_STATES])?;
            let mask: Vec<u32> = (0..TEXT_TOKENS)
                .map(|i| u32::from(i >= TEXT_TOKENS - PROMPT_TOKENS))
                .collect();
            let mask = Tensor::from_vec(mask, (1, TEXT_TOKENS), dev)?;
            let params: GenerateParams = serde_json::from_value(serde_json::json!({
                "prompt": "", "height": args.height, "width": args.width,
                "frames": args.frames, "steps": DISTILLED_SIGMAS.len(), "guidance": 1.0,
                "seed": 0, "fps": FPS, "sigmas": DISTILLED_SIGMAS,
            }))?;
            let mut generate = |on_progress: &mut dyn FnMut(&_) -> _| {
                let inputs = GenerateInputs {
                    prompt_embeds: Some(embeds.clone()),
                    prompt_attention_mask: Some(mask.clone()),
                    ..Default::default()
                };
                Ok(pipeline.generate(&params, inputs, on_progress)?.frames)
            };
            let timing = time_generation(dev, &mut generate)?;
            if args.timing.profile {
                profile = profiled(|| {
                    generate(&mut |_| std::ops::ControlFlow::Continue(()))?;
                    Ok(())
                })?;
            }
            let stages = Some((timing.step_ms, timing.decode_ms));
            (timing.ms, timing.output, stages)
        }
    };
    let peak_gib = peak.finish();
    let report = Report {
        gpu: ctx.name()?,
        component: args.component,
        height: args.height,
        width: args.width,
        frames: args.frames,
        video_tokens,
        audio_tokens,
        ms,
        step_ms: stages.map(|s| s.0),
        decode_ms: stages.map(|s| s.1),
        output_max_abs: max_abs(&output)?,
        profile,
        peak_gib,
        params_b: params.load(Ordering::Relaxed) as f64 / 1e9,
    };
    if args.timing.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "LTX-2 19B {:?} on {}, {}x{}, {} frames: {:.1} ms; peak {:.1} GiB, {:.2}B params",
            report.component,
            report.gpu,
            report.width,
            report.height,
            report.frames,
            report.ms,
            report.peak_gib,
            report.params_b
        );
    }
    Ok(())
}
