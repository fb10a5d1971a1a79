//! `bench llm`: a language model at a preset's published size with random bf16 weights, run as
//! `videosdgx chat` runs it: one prefill over `--prompt-tokens` random tokens, then
//! `--new-tokens` greedy decoding steps through the KV cache (no early stop), and the text-encoder
//! call the image and video pipelines make (every hidden state of `--encode-tokens` tokens).
//!
//! Times are wall clock between device synchronisations (each decoding step copies its logits
//! to the host, which synchronises); the roofline is the bytes of weights one decoding step reads
//! over the device-to-device copy bandwidth measured in the same process.

use super::{MemoryPeak, RandomWeights, time_ms};
use crate::commands::bench::LlmArgs;
use crate::commands::bench::configs::llm_config;
use anyhow::Context;
use candle_core::cuda_backend::cudarc::driver::CudaContext;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use videosdgx_engine::text::decoder::HiddenStates;
use videosdgx_engine::text::generation::{Prompts, StopAt, generate};
use videosdgx_engine::text::model::LanguageModel;
use videosdgx_engine::text::sampling::{Sampler, SamplingParams};

#[derive(Serialize)]
struct LlmReport {
    gpu: String,
    preset: String,
    params_b: f64,
    prompt_tokens: usize,
    new_tokens: usize,
    prefill_ms: f64,
    prefill_tokens_per_s: f64,
    /// Median over the decoding steps.
    decode_ms_per_token: f64,
    decode_tokens_per_s: f64,
    /// Device-to-device memcpy, read plus write bytes over time.
    copy_gb_per_s: f64,
    /// Weight bytes one decoding step reads (every parameter; a tied head reads the embeddings).
    weight_gb_per_token: f64,
    roofline_tokens_per_s: f64,
    roofline_fraction: f64,
    encode_tokens: usize,
    /// Every hidden state of one prompt (median).
    encode_ms: f64,
    peak_gib: f64,
    /// With --profile: synchronised milliseconds per section of the prefill, and of one
    /// decoding step (the mean of 8).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    prefill_profile: Vec<Section>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    decode_profile: Vec<Section>,
}

#[derive(Serialize)]
struct Section {
    section: &'static str,
    ms: f64,
}

/// Synchronised time per section of one generation of `new_tokens` tokens.
fn profile(
    model: &LanguageModel,
    prompt: &[u32],
    stop: &StopAt,
    new_tokens: usize,
    dev: &Device,
) -> anyhow::Result<Vec<(&'static str, f64)>> {
    use videosdgx_engine::fused::profile;
    profile::enable(true);
    let result = run_once(
        model,
        prompt,
        &StopAt {
            max_new_tokens: new_tokens,
            ..stop.clone()
        },
        dev,
    );
    let sections = profile::report()
        .into_iter()
        .map(|(name, ms, _)| (name, ms))
        .collect();
    profile::enable(false);
    result.map(|_| sections)
}

pub fn bench(args: &LlmArgs, dev: &Device, ctx: &Arc<CudaContext>) -> anyhow::Result<()> {
    let params = Arc::new(AtomicUsize::new(0));
    let vb = RandomWeights::var_builder(&params, DType::BF16, dev);
    let config = llm_config(args.preset);
    let model = LanguageModel::new(&config, vb).context("building the model")?;
    let params = params.load(Ordering::Relaxed);
    let vocab = model.decoder().config().vocab_size as u32;

    // Seeded random prompt tokens.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_id = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % u64::from(vocab)) as u32
    };
    let prompt: Vec<u32> = (0..args.prompt_tokens).map(|_| next_id()).collect();
    let stop = StopAt {
        max_new_tokens: args.new_tokens,
        eos_token_ids: Vec::new(),
        pad_token_id: 0,
    };

    let copy_gb_per_s = copy_bandwidth(dev)?;
    let peak = MemoryPeak::start(ctx);
    // Warm-up: kernels compiled, GEMM shapes tuned, pools filled.
    run_once(
        &model,
        &prompt,
        &StopAt {
            max_new_tokens: 4,
            ..stop.clone()
        },
        dev,
    )?;
    let (prefill_ms, mut steps) = run_once(&model, &prompt, &stop, dev)?;
    steps.sort_by(f64::total_cmp);
    let decode_ms_per_token = steps[steps.len() / 2];

    let encode_ids: Vec<u32> = (0..args.encode_tokens).map(|_| next_id()).collect();
    let ids = Tensor::from_vec(encode_ids, (1, args.encode_tokens), dev)?;
    let mask = Tensor::ones((1, args.encode_tokens), DType::U32, dev)?;
    let encode_ms = time_ms(dev, 1, 5, || {
        model.hidden_states(&ids, &mask, HiddenStates::All)?;
        Ok(())
    })?;
    let peak_gib = peak.finish();
    let (mut prefill_profile, mut decode_profile) = (Vec::new(), Vec::new());
    if args.profile {
        const STEPS: usize = 8;
        let prefill = profile(&model, &prompt, &stop, 1, dev)?;
        let with_steps = profile(&model, &prompt, &stop, 1 + STEPS, dev)?;
        for (section, ms) in &with_steps {
            let before = prefill
                .iter()
                .find(|(s, _)| s == section)
                .map_or(0.0, |(_, ms)| *ms);
            prefill_profile.push(Section {
                section,
                ms: before,
            });
            decode_profile.push(Section {
                section,
                ms: (ms - before) / STEPS as f64,
            });
        }
    }

    let weight_gb_per_token = params as f64 * 2.0 / 1e9;
    let roofline_tokens_per_s = copy_gb_per_s / weight_gb_per_token;
    let decode_tokens_per_s = 1e3 / decode_ms_per_token;
    let report = LlmReport {
        gpu: ctx.name()?,
        preset: args.preset.name().into(),
        params_b: params as f64 / 1e9,
        prompt_tokens: args.prompt_tokens,
        new_tokens: args.new_tokens,
        prefill_ms,
        prefill_tokens_per_s: args.prompt_tokens as f64 / prefill_ms * 1e3,
        decode_ms_per_token,
        decode_tokens_per_s,
        copy_gb_per_s,
        weight_gb_per_token,
        roofline_tokens_per_s,
        roofline_fraction: decode_tokens_per_s / roofline_tokens_per_s,
        encode_tokens: args.encode_tokens,
        encode_ms,
        peak_gib,
        prefill_profile,
        decode_profile,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} on {}: prefill {} tokens {:.1} ms ({:.0} tok/s); decode {:.2} ms/token ({:.1} tok/s, {:.0}% of the {:.0} tok/s roofline at {:.0} GB/s); encode {} tokens {:.1} ms; peak {:.1} GiB",
            report.preset,
            report.gpu,
            report.prompt_tokens,
            report.prefill_ms,
            report.prefill_tokens_per_s,
            report.decode_ms_per_token,
            report.decode_tokens_per_s,
            report.roofline_fraction * 100.0,
            report.roofline_tokens_per_s,
            report.copy_gb_per_s,
            report.encode_tokens,
            report.encode_ms,
            report.peak_gib
        );
        for (prefill, decode) in report.prefill_profile.iter().zip(&report.decode_profile) {
            println!(
                "  {:<22} prefill {:>8.2} ms  decode step {:>6.3} ms",
                prefill.section, prefill.ms, decode.ms
            );
        }
    }
    Ok(())
}

/// One generation; returns the prefill time and each decoding step's time (ms).
fn run_once(
    model: &LanguageModel,
    prompt: &[u32],
    stop: &StopAt,
    dev: &Device,
) -> anyhow::Result<(f64, Vec<f64>)> {
    dev.synchronize()?;
    let started = Instant::now();
    let mut last = started;
    let mut prefill_ms = None;
    let mut steps = Vec::with_capacity(stop.max_new_tokens);
    generate(
        model,
        &Prompts::single(prompt.to_vec()),
        stop,
        &mut Sampler::new(SamplingParams::greedy())?,
        &mut |_| {
            let now = Instant::now();
            let ms = (now - last).as_secs_f64() * 1e3;
            match prefill_ms {
                None => prefill_ms = Some(ms),
                Some(_) => steps.push(ms),
            }
            last = now;
            ControlFlow::Continue(())
        },
    )?;
    let prefill_ms = prefill_ms.context("no token was generated")?;
    if steps.is_empty() {
        steps.push(prefill_ms);
    }
    Ok((prefill_ms, steps))
}

/// GB/s of a device-to-device `cuMemcpy` of 1 GiB (read and write counted), what the reference
/// measures with `Tensor.copy_`.
fn copy_bandwidth(dev: &Device) -> anyhow::Result<f64> {
    let Device::Cuda(cuda) = dev else {
        anyhow::bail!("the copy bandwidth needs a CUDA device")
    };
    let stream = cuda.cuda_stream();
    let bytes = 1usize << 30;
    let src = stream.alloc_zeros::<u8>(bytes)?;
    let mut dst = stream.alloc_zeros::<u8>(bytes)?;
    let ms = time_ms(dev, 2, 10, || {
        stream.memcpy_dtod(&src, &mut dst)?;
        Ok(())
    })?;
    Ok(2.0 * bytes as f64 / ms / 1e6)
}
