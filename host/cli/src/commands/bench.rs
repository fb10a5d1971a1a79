//! `videosdgx bench`: GPU throughput of the engine and its fused kernels on random data of the
//! published shapes, timed with CUDA events (median after warm-up). `bench wan --component pipeline`
//! instead times a whole generation through the engine's `WanPipeline` (module `gpu::pipeline`), in
//! wall clock between device synchronisations. Reports only what was measured in this process on
//! this GPU; it never loads model files or writes anything. `bench upscale` and `bench interpolate`
//! (module `frames`, any build) time a finishing model's state dict on a clip of random frames;
//! `bench encode` and `bench finish` (module `finish`, any build) time H.264 encoding at a finish
//! target and the streaming finish of a clip, stage by stage.
//!
//! Useful FLOPs of attention: 4·B·H·Lq·Lk·Dh; of the elementwise kernels none are counted, their
//! rate is bytes in and out over time.

mod configs;
mod finish;
mod frames;

use clap::builder::TypedValueParser;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// One call of a Wan component at a preset's full published config with random weights.
    Wan(WanArgs),
    /// FLUX.1 or FLUX.2 at a preset's published size with random weights: the transformer, the
    /// VAE decode, or (FLUX.2) a whole generation from prompt embeddings.
    Flux(FluxArgs),
    /// LTX-2 19B at 768x512, 121 frames, with random weights: the transformer over the video and
    /// its sound, the video VAE decode, or a whole distilled 8-step generation from prompt
    /// embeddings.
    Ltx2(Ltx2Args),
    /// One Wan transformer call on one card, then split across several (Ulysses sequence
    /// parallel, with --cfg also CFG parallel): times, the ratio, per-rank exchange time, and the
    /// split output's error against the one-card output.
    Split(SplitArgs),
    /// The fused kernels at Wan 2.1 shapes (attention, modulated norm, RoPE) and NVRTC compile time.
    Kernels(KernelArgs),
    /// A language model at a preset's published size with random weights: prefill, greedy
    /// decoding through the KV cache, and the text-encoder call (every hidden state).
    Llm(LlmArgs),
    /// An upscaler state dict on a clip of random frames (every frame, in batches).
    Upscale(frames::FramesArgs),
    /// A RIFE flownet on a clip of random frames: x2, the frame between each pair of neighbours.
    Interpolate(frames::FramesArgs),
    /// H.264 encoding speed and bit rate at a finish target's size and rate (`4k24`), on the CPU.
    Encode(finish::EncodeArgs),
    /// The streaming finish of a clip (decode, RIFE, upscale, resize, encode), time per stage.
    Finish(finish::FinishArgs),
}

/// Language models whose published configs `bench llm` builds.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LlmPreset {
    #[value(name = "qwen3-4b")]
    Qwen3_4b,
    #[value(name = "qwen3-8b")]
    Qwen3_8b,
    #[value(name = "gemma3-4b")]
    Gemma3_4b,
    #[value(name = "gemma3-12b")]
    Gemma3_12b,
}

impl LlmPreset {
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // the GPU bench reports it
    pub fn name(self) -> &'static str {
        match self {
            Self::Qwen3_4b => "qwen3-4b",
            Self::Qwen3_8b => "qwen3-8b",
            Self::Gemma3_4b => "gemma3-4b",
            Self::Gemma3_12b => "gemma3-12b",
        }
    }
}

#[derive(Args, Debug)]
pub struct LlmArgs {
    #[arg(long, value_enum, default_value = "qwen3-4b")]
    pub preset: LlmPreset,
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..).map(|v| v as usize))]
    pub prompt_tokens: usize,
    /// Decoding steps after the prefill (at least 2: the step time is their median).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(2..).map(|v| v as usize))]
    pub new_tokens: usize,
    /// Prompt length of the text-encoder call.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..).map(|v| v as usize))]
    pub encode_tokens: usize,
    /// After timing, run the prefill and 8 decoding steps once more with the device synchronised
    /// around each section (summed over the layers) and report where the time goes.
    #[arg(long)]
    pub profile: bool,
    #[arg(long)]
    pub json: bool,
}

/// FLUX transformers whose published configs `bench flux` builds.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum FluxPreset {
    /// FLUX.1 [dev] 12B: 19 double and 38 single blocks of width 3072, T5-XXL text, guidance.
    #[value(name = "flux1-dev")]
    Flux1Dev,
    /// FLUX.1 [schnell]: [dev] without the guidance embedding.
    #[value(name = "flux1-schnell")]
    Flux1Schnell,
    /// FLUX.2 [klein] 4B: 5 double and 20 single blocks of width 3072, Qwen3-4B text (7680).
    #[value(name = "flux2-klein-4b")]
    Flux2Klein4b,
    /// FLUX.2 [dev] 32B: 8 double and 48 single blocks of width 6144, Mistral text (15360).
    #[value(name = "flux2-dev")]
    Flux2Dev,
}

impl FluxPreset {
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // the GPU bench reports it
    pub fn name(self) -> &'static str {
        match self {
            Self::Flux1Dev => "flux1-dev",
            Self::Flux1Schnell => "flux1-schnell",
            Self::Flux2Klein4b => "flux2-klein-4b",
            Self::Flux2Dev => "flux2-dev",
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelComponent {
    /// One transformer forward.
    Transformer,
    /// The VAE decoding the image's or the clip's latents.
    Vae,
    /// A whole generation from prompt embeddings: the steps and the decode.
    Pipeline,
}

/// How `bench flux` and `bench ltx2` time a component and report.
#[derive(Args, Debug)]
pub struct ModelTiming {
    /// Timed repetitions of the transformer or the VAE (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(3..))]
    pub reps: u32,
    #[arg(long, default_value_t = 2)]
    pub warmup: u32,
    /// After timing the transformer, run it once more with the device synchronised around each
    /// section (summed over the blocks) and report where the time goes.
    #[arg(long)]
    pub profile: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct Ltx2Args {
    #[arg(long, value_enum, default_value = "transformer")]
    pub component: ModelComponent,
    #[arg(long, default_value_t = 512)]
    pub height: usize,
    #[arg(long, default_value_t = 768)]
    pub width: usize,
    /// Pixel frames, 8k+1.
    #[arg(long, default_value_t = 121)]
    pub frames: usize,
    #[command(flatten)]
    pub timing: ModelTiming,
}

#[derive(Args, Debug)]
pub struct FluxArgs {
    #[arg(long, value_enum, default_value = "flux2-klein-4b")]
    pub preset: FluxPreset,
    #[arg(long, default_value_t = 1024)]
    pub height: usize,
    #[arg(long, default_value_t = 1024)]
    pub width: usize,
    #[arg(long, value_enum, default_value = "transformer")]
    pub component: ModelComponent,
    /// Denoising steps of the pipeline component (4: the distilled [klein] models).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(2..).map(|v| v as usize))]
    pub steps: usize,
    #[command(flatten)]
    pub timing: ModelTiming,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
pub enum Preset {
    #[value(name = "wan2.1-1.3b")]
    #[serde(rename = "wan2.1-1.3b")]
    Wan21_1_3b,
    #[value(name = "wan2.1-14b")]
    #[serde(rename = "wan2.1-14b")]
    Wan21_14b,
    #[value(name = "wan2.2-5b")]
    #[serde(rename = "wan2.2-5b")]
    Wan22_5b,
}

/// The dimensions of a preset's published transformer config.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WanShape {
    pub heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub layers: usize,
    pub in_channels: usize,
    /// Spatial downsampling of the VAE (8 for Wan 2.1, 16 for Wan 2.2's high-compression VAE).
    pub vae_stride: usize,
}

impl Preset {
    pub fn shape(self) -> WanShape {
        match self {
            Preset::Wan21_1_3b => WanShape {
                heads: 12,
                head_dim: 128,
                ffn_dim: 8960,
                layers: 30,
                in_channels: 16,
                vae_stride: 8,
            },
            Preset::Wan21_14b => WanShape {
                heads: 40,
                head_dim: 128,
                ffn_dim: 13824,
                layers: 40,
                in_channels: 16,
                vae_stride: 8,
            },
            Preset::Wan22_5b => WanShape {
                heads: 24,
                head_dim: 128,
                ffn_dim: 14336,
                layers: 30,
                in_channels: 48,
                vae_stride: 16,
            },
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    /// One transformer forward (one denoising step, batch 1, 512 text tokens).
    Transformer,
    /// The preset's VAE decoding the clip's latents in bf16 (Wan 2.1's for 1.3B and 14B, as the
    /// reference anchor times it; Wan 2.2's high-compression VAE for 5B).
    Vae,
    /// The whole text-to-video generation: UMT5-XXL on the prompt and the negative prompt,
    /// `--steps` UniPC steps with guidance 5 (two transformer forwards each), the f32 VAE decode.
    Pipeline,
}

/// Useful FLOPs of one transformer forward over `tokens` latent tokens with 512 text tokens, the
/// reference anchor's formula: per layer the q/k/v/out and FFN GEMMs, self-attention
/// (4·L²·dim), cross-attention's q/out and k/v GEMMs, and cross-attention (4·L·512·dim).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // the GPU bench and the tests use it
pub fn transformer_flops(shape: &WanShape, tokens: usize) -> f64 {
    let (l, d, f, text) = (
        tokens as f64,
        (shape.heads * shape.head_dim) as f64,
        shape.ffn_dim as f64,
        512f64,
    );
    shape.layers as f64
        * (2.0 * l * (4.0 * d * d + 2.0 * d * f)
            + 4.0 * l * l * d
            + 2.0 * l * 2.0 * d * d
            + 2.0 * text * 2.0 * d * d
            + 4.0 * l * text * d)
}

#[derive(Args, Debug)]
pub struct WanArgs {
    #[arg(long, value_enum, default_value = "wan2.1-1.3b")]
    pub preset: Preset,
    #[arg(long, default_value_t = 480)]
    pub height: usize,
    #[arg(long, default_value_t = 832)]
    pub width: usize,
    #[arg(long, default_value_t = 81)]
    pub frames: usize,
    #[arg(long, value_enum, default_value = "transformer")]
    pub component: Component,
    /// Timed repetitions of the transformer or VAE (the median is reported); at least 5. The
    /// pipeline runs once timed (after a 2-step warm-up): its step time is the median over its steps.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(5..))]
    pub reps: u32,
    /// Denoising steps of the pipeline component; at least 5.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(5..))]
    pub steps: u32,
    #[arg(long, default_value_t = 2)]
    pub warmup: u32,
    /// After timing, run the component once more with the device synchronised around each
    /// section (transformer block parts, VAE layer kinds) and report where the time goes.
    #[arg(long)]
    pub profile: bool,
    /// Keep the transformer blocks' linear layers in this format (quantized after building).
    /// The transformer component also reports its output's relative error against the bf16
    /// forward of the same weights.
    #[arg(long, value_enum)]
    pub quant: Option<super::model::QuantArg>,
    /// Self-attention in float8 (`fp8`); the transformer component then also reports the
    /// output's relative error against the exact forward.
    #[arg(long, value_enum, default_value_t = super::model::AttentionArg::Exact)]
    pub attention: super::model::AttentionArg,
    /// Pipeline: run a distilled model's schedule (`wan2.1-distill-4step`, ...: its steps, shift
    /// and guidance) instead of --steps with guidance 5.
    #[arg(long)]
    pub schedule: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SplitArgs {
    #[arg(long, value_enum, default_value = "wan2.1-14b")]
    pub preset: Preset,
    #[arg(long, default_value_t = 480)]
    pub height: usize,
    #[arg(long, default_value_t = 832)]
    pub width: usize,
    #[arg(long, default_value_t = 81)]
    pub frames: usize,
    /// The CUDA cards to split across, e.g. `0,1` (default: every card).
    #[arg(long, value_delimiter = ',')]
    pub cards: Vec<usize>,
    /// Time one guided step (the conditional and the unconditional call), with half the cards on
    /// each branch (CFG parallel) and the rest of the split over the tokens.
    #[arg(long)]
    pub cfg: bool,
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(3..))]
    pub reps: u32,
    #[arg(long, default_value_t = 2)]
    pub warmup: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct KernelArgs {
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(5..))]
    pub reps: u32,
    /// Only compile every kernel module with NVRTC for this compute capability (`sm_121`, `121`
    /// or `12.1`: GB10), whether or not such a GPU is present, and report; no timing.
    #[arg(long, value_parser = parse_capability)]
    pub compile_for: Option<videosdgx_kernels::targets::Capability>,
    #[arg(long)]
    pub json: bool,
}

fn parse_capability(text: &str) -> Result<videosdgx_kernels::targets::Capability, String> {
    videosdgx_kernels::targets::parse_capability(text)
}

/// The latent token grid the transformer sees: VAE-compressed, then patched by (1, 2, 2).
pub fn token_grid(
    shape: &WanShape,
    height: usize,
    width: usize,
    frames: usize,
) -> anyhow::Result<(usize, usize, usize)> {
    let cell = shape.vae_stride * 2;
    if !height.is_multiple_of(cell) || !width.is_multiple_of(cell) {
        anyhow::bail!(
            "height and width must be multiples of {cell} for this preset, got {height}x{width}"
        );
    }
    if frames == 0 || !(frames - 1).is_multiple_of(4) {
        anyhow::bail!("frames must be 4k+1 (the VAE compresses time by 4), got {frames}");
    }
    Ok(((frames - 1) / 4 + 1, height / cell, width / cell))
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match &cmd {
        BenchCommand::Upscale(args) => return frames::upscale(args),
        BenchCommand::Interpolate(args) => return frames::interpolate(args),
        BenchCommand::Encode(args) => return finish::encode(args),
        BenchCommand::Finish(args) => return finish::finish(args),
        _ => {}
    }
    #[cfg(feature = "cuda")]
    {
        match cmd {
            BenchCommand::Wan(args) => gpu::wan(&args),
            BenchCommand::Flux(args) => {
                let (dev, ctx) = gpu::cuda()?;
                gpu::flux::bench(&args, &dev, &ctx)
            }
            BenchCommand::Ltx2(args) => {
                let (dev, ctx) = gpu::cuda()?;
                gpu::ltx2::bench(&args, &dev, &ctx)
            }
            BenchCommand::Kernels(args) => gpu::kernels(&args),
            BenchCommand::Split(args) => gpu::split::bench(&args),
            BenchCommand::Llm(args) => gpu::llm(&args),
            BenchCommand::Upscale(_)
            | BenchCommand::Interpolate(_)
            | BenchCommand::Encode(_)
            | BenchCommand::Finish(_) => unreachable!("run above"),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        // Sizes the preset cannot take are refused first, as the GPU build would.
        if let BenchCommand::Wan(args) = &cmd {
            token_grid(&args.preset.shape(), args.height, args.width, args.frames)?;
        }
        anyhow::bail!(
            "this videosdgx was built without CUDA; build the GPU binary with scripts/build-cuda.sh"
        )
    }
}

/// One call of `f` with the engine's section profiler on: synchronised wall time per section.
fn profiled(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Vec<ProfileSection>> {
    use videosdgx_engine::fused::profile;
    profile::enable(true);
    let result = f();
    let sections = profile::report()
        .into_iter()
        .map(|(section, ms, calls)| ProfileSection {
            section: section.into(),
            ms,
            calls,
        })
        .collect();
    profile::enable(false);
    result.map(|()| sections)
}

#[derive(Serialize)]
struct ProfileSection {
    section: String,
    ms: f64,
    calls: usize,
}

#[cfg(feature = "cuda")]
mod gpu {
    pub(super) mod flux;
    mod llm;
    pub(super) mod ltx2;
    mod pipeline;
    pub(super) mod split;

    use super::configs::{self, transformer_config};
    use super::*;
    use anyhow::Context;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaContext, result as driver, sys::CUevent_flags,
    };
    use candle_core::{DType, Device, Shape, Tensor};
    use candle_nn::var_builder::{SimpleBackend, VarBuilder};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use videosdgx_engine::families::wan::transformer::WanTransformer3DModel;
    use videosdgx_engine::families::wan::vae::AutoencoderKLWan;
    use videosdgx_kernels::{NormKind, NormSpec, RopeGrid};

    pub(super) fn cuda() -> anyhow::Result<(Device, Arc<CudaContext>)> {
        let dev = Device::new_cuda(0).context("no CUDA device")?;
        let Device::Cuda(cd) = &dev else {
            unreachable!()
        };
        let ctx = cd.cuda_stream().context().clone();
        Ok((dev, ctx))
    }

    /// Median milliseconds of `reps` runs of `f` after `warmup`, between CUDA events on candle's stream.
    fn time_ms(
        dev: &Device,
        warmup: u32,
        reps: u32,
        mut f: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<f64> {
        let Device::Cuda(cd) = dev else {
            anyhow::bail!("timing needs a CUDA device")
        };
        let stream = cd.cuda_stream();
        for _ in 0..warmup {
            f()?;
        }
        stream.synchronize()?;
        let mut times = Vec::with_capacity(reps as usize);
        for _ in 0..reps {
            let start = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
            f()?;
            let end = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
            end.synchronize()?;
            times.push(f64::from(start.elapsed_ms(&end)?));
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }

    /// max |x| of a benchmark's output, which finite random weights keep finite.
    fn max_abs(t: &Tensor) -> anyhow::Result<f32> {
        let m = t
            .to_dtype(DType::F32)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        anyhow::ensure!(m.is_finite(), "the output is not finite (max |x| = {m})");
        Ok(m)
    }

    /// What one timed generation measured.
    struct GenerationTiming {
        /// The whole call, wall clock between device synchronisations.
        ms: f64,
        /// The median step and the decode, from the progress reports (the device synchronised
        /// at each).
        step_ms: f64,
        decode_ms: f64,
        output: Tensor,
    }

    /// Times one call of `generate` (given the progress callback to pass on) after an untimed
    /// one of the same size, which pays for kernel compilation and algorithm searches.
    fn time_generation(
        dev: &Device,
        mut generate: impl FnMut(
            &mut dyn FnMut(&videosdgx_engine::pipelines::Progress) -> std::ops::ControlFlow<()>,
        ) -> anyhow::Result<Tensor>,
    ) -> anyhow::Result<GenerationTiming> {
        use std::ops::ControlFlow;
        use std::time::Instant;
        use videosdgx_engine::pipelines::{Progress, Stage};
        let mut run = || -> anyhow::Result<(f64, Vec<Instant>, Vec<Instant>, Tensor)> {
            let (mut steps, mut decode) = (Vec::new(), Vec::new());
            dev.synchronize()?;
            let start = Instant::now();
            let output = generate(&mut |p: &Progress| {
                if dev.synchronize().is_err() {
                    return ControlFlow::Break(());
                }
                tracing::info!("{:?} {}/{}", p.stage, p.step, p.total);
                match p.stage {
                    Stage::Denoising => steps.push(Instant::now()),
                    Stage::Decoding => decode.push(Instant::now()),
                    _ => {}
                }
                ControlFlow::Continue(())
            })?;
            Ok((start.elapsed().as_secs_f64() * 1e3, steps, decode, output))
        };
        run().context("the warm-up run")?;
        let (ms, steps, decode, output) = run()?;
        let between = |a: &Instant, b: &Instant| b.duration_since(*a).as_secs_f64() * 1e3;
        let mut step_ms: Vec<f64> = steps.windows(2).map(|w| between(&w[0], &w[1])).collect();
        step_ms.sort_by(f64::total_cmp);
        let (Some(decode_start), Some(decode_end), Some(step)) = (
            decode.first(),
            decode.last(),
            step_ms.get(step_ms.len() / 2),
        ) else {
            anyhow::bail!("the pipeline reported no steps or no decoding");
        };
        Ok(GenerationTiming {
            ms,
            step_ms: *step,
            decode_ms: between(decode_start, decode_end),
            output,
        })
    }

    /// Samples device memory in use (cuMemGetInfo) every millisecond while alive; the peak
    /// includes the CUDA context and candle's memory pool, so it bounds allocator-level peaks
    /// (PyTorch's max_memory_allocated) from above.
    struct MemoryPeak {
        stop: Arc<AtomicBool>,
        peak: Arc<AtomicUsize>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl MemoryPeak {
        fn start(ctx: &Arc<CudaContext>) -> Self {
            let (stop, peak) = (
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicUsize::new(0)),
            );
            let (s, p, ctx) = (stop.clone(), peak.clone(), ctx.clone());
            let thread = std::thread::spawn(move || {
                if ctx.bind_to_thread().is_err() {
                    return;
                }
                while !s.load(Ordering::Relaxed) {
                    if let Ok((free, total)) = driver::mem_get_info() {
                        p.fetch_max(total - free, Ordering::Relaxed);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            });
            Self {
                stop,
                peak,
                thread: Some(thread),
            }
        }

        fn finish(mut self) -> f64 {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
            self.peak.load(Ordering::Relaxed) as f64 / (1u64 << 30) as f64
        }
    }

    /// Random weights created on the device as each tensor is asked for: N(0, 1/fan_in) for
    /// matrices, N(0, 0.02) for vectors (plus 1 for norm scales), so activations stay finite.
    /// Counts the parameters it hands out. Seeded, each tensor's values are instead a hash of its
    /// name and index (uniform, of the same mean and variance), the same on every card.
    struct RandomWeights {
        params: Arc<AtomicUsize>,
        seeded: bool,
    }

    impl RandomWeights {
        /// A builder of random `dtype` weights on `dev`, counting them into `params`.
        fn var_builder(
            params: &Arc<AtomicUsize>,
            dtype: DType,
            dev: &Device,
        ) -> VarBuilder<'static> {
            Self {
                params: params.clone(),
                seeded: false,
            }
            .into_builder(dtype, dev)
        }

        fn into_builder(self, dtype: DType, dev: &Device) -> VarBuilder<'static> {
            VarBuilder::from_backend(Box::new(self), dtype, dev.clone())
        }

        /// `mean + std * u` with `u` uniform of unit variance: the fraction of
        /// `sin(i * φ + seed) * 43758.5453` (a shader hash), `seed` from the tensor's name.
        fn hashed(
            s: &Shape,
            name: &str,
            mean: f32,
            std: f32,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            let seed = name.bytes().fold(0x811c_9dc5u32, |h, b| {
                (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
            });
            // The element index as row * cols + col: two short ranges cross to the device, not
            // one as long as the tensor.
            let rows = s.dims().first().copied().unwrap_or(1).max(1);
            let cols = s.elem_count() / rows;
            let range = |n: usize| Tensor::arange(0u32, n as u32, dev)?.to_dtype(DType::F32);
            let i = (range(rows)?.reshape((rows, 1))? * cols as f64)?
                .broadcast_add(&range(cols)?.reshape((1, cols))?)?;
            let x = (i.affine(0.618_034, f64::from(seed % 10_007))?.sin()? * 43_758.545_3)?;
            let unit = (x.sub(&x.floor()?)? - 0.5)?;
            (unit * f64::from(std * 12f32.sqrt()))?
                .affine(1.0, f64::from(mean))?
                .reshape(s)
        }
    }

    impl SimpleBackend for RandomWeights {
        fn get(
            &self,
            s: Shape,
            name: &str,
            _: candle_nn::Init,
            dtype: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            self.params.fetch_add(s.elem_count(), Ordering::Relaxed);
            let dims = s.dims();
            let (mean, std) = if dims.len() >= 2 {
                let fan_in: usize = dims[1..].iter().product();
                (0f32, (fan_in as f32).powf(-0.5))
            } else {
                // Norm scales and BatchNorm variances near 1 (a variance must stay positive).
                let mean = if (name.contains("norm") && name.ends_with("weight"))
                    || name.ends_with("running_var")
                {
                    1f32
                } else {
                    0f32
                };
                (mean, 0.02f32)
            };
            let t = match self.seeded {
                true => Self::hashed(&s, name, mean, std, dev)?,
                false => Tensor::randn(mean, std, s, dev)?,
            };
            t.to_dtype(dtype)
        }

        fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
            candle_core::bail!("random weights need the shape of {name}")
        }

        /// Every tensor a model asks for, but none of the names that mark a quantized layer (FP8
        /// scales, the NVFP4 layouts' scales and markers): the random models are dense (the
        /// transformer's `--quant` quantizes them after building).
        fn contains_tensor(&self, name: &str) -> bool {
            const QUANTIZED: [&str; 7] = [
                "weight_scale",
                "scale_weight",
                "weight_scale_2",
                "comfy_quant",
                "weight_global_scale",
                "input_global_scale",
                "alpha",
            ];
            !QUANTIZED.contains(&name.rsplit('.').next().unwrap_or(name))
        }
    }

    fn preset_name(preset: Preset) -> String {
        preset
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }

    #[derive(Serialize)]
    struct WanReport {
        gpu: String,
        preset: Preset,
        component: Component,
        height: usize,
        width: usize,
        frames: usize,
        /// Median milliseconds of one call of the component.
        ms: f64,
        /// Useful TFLOP/s where the component has a FLOP count (the transformer).
        tflops: Option<f64>,
        /// max |output| of the last timed call (finite random weights give a finite output).
        output_max_abs: Option<f32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        quant: Option<videosdgx_engine::pipelines::Quant>,
        #[serde(skip_serializing_if = "videosdgx_engine::pipelines::AttentionPrecision::is_exact")]
        attention: videosdgx_engine::pipelines::AttentionPrecision,
        /// With --quant or --attention fp8: ‖out − out_bf16‖ / ‖out_bf16‖ on the same weights and
        /// inputs.
        #[serde(skip_serializing_if = "Option::is_none")]
        error_vs_bf16: Option<f64>,
        /// With --quant: the same error after each block, in order (the bf16 and the quantized
        /// blocks on the same embedded inputs).
        #[serde(skip_serializing_if = "Option::is_none")]
        block_errors_vs_bf16: Option<Vec<f64>>,
        /// With --quant: the blocks' linear weights in GiB, in bf16 and as quantized.
        #[serde(skip_serializing_if = "Option::is_none")]
        block_weights_gib: Option<(f64, f64)>,
        /// With --profile: synchronised wall time per section, summed over the layers.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        profile: Vec<ProfileSection>,
        peak_gib: f64,
        params_b: f64,
        reps: u32,
    }

    pub fn wan(args: &WanArgs) -> anyhow::Result<()> {
        let (dev, ctx) = cuda()?;
        let shape = args.preset.shape();
        let (f, h, w) = token_grid(&shape, args.height, args.width, args.frames)?;
        let params = Arc::new(AtomicUsize::new(0));
        let vb = RandomWeights::var_builder(&params, DType::BF16, &dev);
        let mut profile = Vec::new();
        let mut output_max_abs = None;
        let mut error_vs_bf16 = None;
        let mut block_errors_vs_bf16 = None;
        let mut block_weights_gib = None;
        let block_weights = |model: &mut WanTransformer3DModel| {
            videosdgx_engine::models::quant::block_weight_bytes(model)
                .map(|bytes| bytes as f64 / (1u64 << 30) as f64)
        };
        if args.quant.is_some() && args.component == Component::Vae {
            anyhow::bail!("--quant: the VAE is not quantized");
        }
        if args.attention != Default::default() && args.component == Component::Vae {
            anyhow::bail!("--attention: float8 attention is the transformer's");
        }
        if args.schedule.is_some() && args.component != Component::Pipeline {
            anyhow::bail!("--schedule: a schedule is for the pipeline component");
        }
        let (ms, peak_gib) = match args.component {
            Component::Transformer => {
                let mut model = WanTransformer3DModel::new(&transformer_config(&shape), vb)
                    .context("building the transformer")?;
                let latents =
                    Tensor::randn(0f32, 1f32, (1, shape.in_channels, f, h * 2, w * 2), &dev)?
                        .to_dtype(DType::BF16)?;
                let timestep = Tensor::new(&[500f32], &dev)?;
                let text =
                    Tensor::randn(0f32, 1f32, (1, 512, 4096), &dev)?.to_dtype(DType::BF16)?;
                let attention =
                    videosdgx_engine::pipelines::AttentionPrecision::from(args.attention);
                let approximated = args.quant.is_some() || attention != Default::default();
                let dense_out = if approximated {
                    // The bf16 forward, keeping every block's output, then the same blocks
                    // quantized (and in float8 attention) on the same inputs: the error after
                    // each block.
                    let embedded = model.embed(&latents, &timestep, &text, None)?;
                    let mut dense_blocks = Vec::new();
                    let x = model.blocks_inspected(&embedded, &mut |_, x| {
                        dense_blocks.push(x.clone());
                        Ok(())
                    })?;
                    let out = model.head(&embedded, &x)?;
                    if let Some(quant) = args.quant {
                        let dense_bytes = block_weights(&mut model)?;
                        videosdgx_engine::models::quant::quantize_blocks(&mut model, quant.into())?;
                        block_weights_gib = Some((dense_bytes, block_weights(&mut model)?));
                    }
                    model.set_attention_precision(attention);
                    let mut errors = Vec::new();
                    model.blocks_inspected(&embedded, &mut |i, x| {
                        errors.push(videosdgx_engine::models::relative_error(
                            x,
                            &dense_blocks[i],
                        )?);
                        Ok(())
                    })?;
                    block_errors_vs_bf16 = Some(errors);
                    dev.synchronize()?;
                    Some(out)
                } else {
                    None
                };
                let peak = MemoryPeak::start(&ctx);
                let mut out = None;
                let ms = time_ms(&dev, args.warmup, args.reps, || {
                    out = Some(model.forward(&latents, &timestep, &text, None)?);
                    Ok(())
                })?;
                let peak = peak.finish();
                if let (Some(out), Some(dense)) = (&out, &dense_out) {
                    error_vs_bf16 = Some(videosdgx_engine::models::relative_error(out, dense)?);
                }
                if let Some(out) = out {
                    output_max_abs = Some(
                        out.to_dtype(DType::F32)?
                            .abs()?
                            .max_all()?
                            .to_scalar::<f32>()?,
                    );
                }
                if args.profile {
                    profile = profiled(|| {
                        model.forward(&latents, &timestep, &text, None)?;
                        Ok(())
                    })?;
                }
                (ms, peak)
            }
            Component::Vae => {
                let config = configs::pipeline_settings(args.preset)?.vae;
                let z = config.z_dim;
                let vae = AutoencoderKLWan::new(vb, config).context("building the VAE")?;
                let latents = Tensor::randn(0f32, 1f32, (1, z, f, h * 2, w * 2), &dev)?
                    .to_dtype(DType::BF16)?;
                let peak = MemoryPeak::start(&ctx);
                let ms = time_ms(&dev, 1, args.reps, || {
                    vae.decode(&latents)?;
                    Ok(())
                })?;
                let peak = peak.finish();
                if args.profile {
                    profile = profiled(|| {
                        vae.decode(&latents)?;
                        Ok(())
                    })?;
                }
                (ms, peak)
            }
            Component::Pipeline => return pipeline::bench(args, &dev, &ctx),
        };
        let report = WanReport {
            gpu: ctx.name()?,
            preset: args.preset,
            component: args.component,
            height: args.height,
            width: args.width,
            frames: args.frames,
            ms,
            tflops: (args.component == Component::Transformer)
                .then(|| transformer_flops(&shape, f * h * w) / ms / 1e9),
            output_max_abs,
            quant: args.quant.map(Into::into),
            attention: args.attention.into(),
            error_vs_bf16,
            block_errors_vs_bf16,
            block_weights_gib,
            profile,
            peak_gib,
            params_b: params.load(Ordering::Relaxed) as f64 / 1e9,
            reps: args.reps,
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "{} {} on {}: {:.1} ms (median of {}){}, peak {:.1} GiB, {:.2}B params",
                preset_name(report.preset),
                serde_json::to_value(report.component)?
                    .as_str()
                    .unwrap_or_default(),
                report.gpu,
                report.ms,
                report.reps,
                report
                    .tflops
                    .map(|t| format!(", {t:.0} TFLOP/s"))
                    .unwrap_or_default(),
                report.peak_gib,
                report.params_b
            );
            for p in &report.profile {
                println!("  {:<20} {:>9.2} ms  ({} calls)", p.section, p.ms, p.calls);
            }
        }
        Ok(())
    }

    #[derive(Serialize)]
    struct KernelTiming {
        kernel: String,
        shape: String,
        ms: f64,
        tflops: Option<f64>,
        gbps: Option<f64>,
    }

    #[derive(Serialize)]
    struct KernelsReport {
        gpu: String,
        /// The GPU shares the host's memory (GB10): loads then release the file's pages.
        shares_host_memory: bool,
        compile: Vec<videosdgx_kernels::CompileReport>,
        compile_cached: Vec<videosdgx_kernels::CompileReport>,
        timings: Vec<KernelTiming>,
    }

    pub fn llm(args: &LlmArgs) -> anyhow::Result<()> {
        let (dev, ctx) = cuda()?;
        llm::bench(args, &dev, &ctx)
    }

    pub fn kernels(args: &KernelArgs) -> anyhow::Result<()> {
        if let Some(cc) = args.compile_for {
            let cache = tempfile::tempdir()?;
            let compiled = videosdgx_kernels::compile_for(cc, cache.path())?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&compiled)?);
            } else {
                for c in &compiled {
                    println!(
                        "{:<16} {:<8} compiled by NVRTC in {:.0} ms",
                        c.module, c.arch, c.ms
                    );
                }
            }
            return Ok(());
        }
        let (dev, ctx) = cuda()?;
        // Cold: an empty cache directory; cached: the same directory again.
        let cache = tempfile::tempdir()?;
        let compile = videosdgx_kernels::compile_report(&dev, cache.path())?;
        let compile_cached = videosdgx_kernels::compile_report(&dev, cache.path())?;

        let bf16 = |shape: &[usize]| -> anyhow::Result<Tensor> {
            Ok(Tensor::randn(0f32, 1f32, shape, &dev)?.to_dtype(DType::BF16)?)
        };
        let (l, heads, d) = (32760usize, 12usize, 128usize);
        let q = bf16(&[1, l, heads, d])?;
        let k = bf16(&[1, l, heads, d])?;
        let v = bf16(&[1, l, heads, d])?;
        let kt = bf16(&[1, 512, heads, d])?;
        let vt = bf16(&[1, 512, heads, d])?;
        let scale = (d as f32).powf(-0.5);
        let name = videosdgx_kernels::attention_kernel_for(&q)?
            .context("no fused attention kernel for this GPU")?;
        let mut timings = Vec::new();
        let ms = time_ms(&dev, 3, args.reps, || {
            videosdgx_kernels::attention(&q, &k, &v, scale)?;
            Ok(())
        })?;
        timings.push(KernelTiming {
            kernel: name.into(),
            shape: format!("self 1x{heads}x{l}x{d}"),
            ms,
            tflops: Some(4.0 * (l * l * d * heads) as f64 / ms / 1e9),
            gbps: None,
        });
        if name == videosdgx_kernels::targets::ATTENTION_TMA_D128.name {
            // Float8 attention, its operands' quantization included.
            let ms = time_ms(&dev, 3, args.reps, || {
                videosdgx_kernels::attention_fp8(&q, &k, &v, scale)?;
                Ok(())
            })?;
            timings.push(KernelTiming {
                kernel: format!(
                    "{} + quantize",
                    videosdgx_kernels::targets::ATTENTION_FP8_TMA_D128.name
                ),
                shape: format!("self 1x{heads}x{l}x{d}"),
                ms,
                tflops: Some(4.0 * (l * l * d * heads) as f64 / ms / 1e9),
                gbps: None,
            });
        }
        let ms = time_ms(&dev, 3, args.reps, || {
            videosdgx_kernels::attention(&q, &kt, &vt, scale)?;
            Ok(())
        })?;
        timings.push(KernelTiming {
            kernel: name.into(),
            shape: format!("cross 1x{heads}x{l}x512x{d}"),
            ms,
            tflops: Some(4.0 * (l * 512 * d * heads) as f64 / ms / 1e9),
            gbps: None,
        });

        let width = heads * d;
        let x = bf16(&[1, l, width])?;
        let modulation = || Tensor::randn(0f32, 0.1f32, (1, width), &dev);
        let spec = NormSpec {
            scale: Some(modulation()?),
            shift: Some(modulation()?),
            ..NormSpec::new(NormKind::Layer, 1e-6)
        };
        let ms = time_ms(&dev, 3, args.reps, || {
            videosdgx_kernels::modulated_norm(&x, &spec)?;
            Ok(())
        })?;
        // bf16 in and out: the bytes it must move.
        let bytes = (2 * 2 * l * width) as f64;
        timings.push(KernelTiming {
            kernel: "modulated_norm_bf16".into(),
            shape: format!("layer 1x{l}x{width}"),
            ms,
            tflops: None,
            gbps: Some(bytes / ms / 1e6),
        });

        let grid = RopeGrid {
            frames: 21,
            height: 30,
            width: 52,
        };
        let ms = time_ms(&dev, 3, args.reps, || {
            videosdgx_kernels::rope3d(&q, grid, 10_000.0)?;
            Ok(())
        })?;
        let bytes = (2 * 2 * l * heads * d) as f64;
        timings.push(KernelTiming {
            kernel: "rope3d_bf16".into(),
            shape: format!("1x{l}x{heads}x{d}"),
            ms,
            tflops: None,
            gbps: Some(bytes / ms / 1e6),
        });

        // The 14B FFN's up-projection (32,760 tokens x 5,120 -> 13,824, bias and GELU): bf16,
        // and FP8 per token and channel through each FP8 GEMM, plus the activations' quantization.
        let (k, n) = (5120usize, 13824usize);
        let x = bf16(&[1, l, k])?;
        let w = (bf16(&[n, k])?.to_dtype(DType::F32)? * (k as f64).powf(-0.5))?;
        let bias = bf16(&[n])?;
        let flops = 2.0 * (l * k * n) as f64;
        let gemm_shape = format!("{l}x{k}x{n} bias+gelu");
        let w_bf16 = w.to_dtype(DType::BF16)?;
        let ms = time_ms(&dev, 3, args.reps, || {
            videosdgx_kernels::linear(&x, &w_bf16, Some(&bias), true)?;
            Ok(())
        })?;
        timings.push(KernelTiming {
            kernel: "linear_bf16_cublaslt".into(),
            shape: gemm_shape.clone(),
            ms,
            tflops: Some(flops / ms / 1e9),
            gbps: None,
        });
        if videosdgx_kernels::fp8_linear_supported(&dev)? {
            let w_scale = videosdgx_kernels::reference::fp8_row_scales(&w)?;
            let wq = videosdgx_kernels::fp8_quantize(&w, &w_scale)?;
            let ms = time_ms(&dev, 3, args.reps, || {
                videosdgx_kernels::fp8_quantize_rows(&x)?;
                Ok(())
            })?;
            timings.push(KernelTiming {
                kernel: "quantize_rows_e4m3_bf16".into(),
                shape: format!("1x{l}x{k}"),
                ms,
                tflops: None,
                gbps: Some((3 * l * k) as f64 / ms / 1e6),
            });
            let (xq, x_scale) = videosdgx_kernels::fp8_quantize_rows(&x)?;
            let fp8_gemms: [(&str, fn(_, _, _, _, _, _, _) -> _); 2] = [
                ("linear_fp8", videosdgx_kernels::linear_fp8),
                (
                    "linear_fp8_mma_sync",
                    videosdgx_kernels::linear_fp8_mma_sync,
                ),
            ];
            for (kernel, gemm) in fp8_gemms {
                let ms = time_ms(&dev, 3, args.reps, || {
                    gemm(&xq, &x_scale, &wq, &w_scale, Some(&bias), true, None)?;
                    Ok(())
                })?;
                timings.push(KernelTiming {
                    kernel: kernel.into(),
                    shape: gemm_shape.clone(),
                    ms,
                    tflops: Some(flops / ms / 1e9),
                    gbps: None,
                });
            }
        }

        let report = KernelsReport {
            gpu: ctx.name()?,
            shares_host_memory: videosdgx_engine::loader::memory::shares_host_memory(&dev),
            compile,
            compile_cached,
            timings,
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "{} ({} memory)",
                report.gpu,
                if report.shares_host_memory {
                    "shares the host's"
                } else {
                    "its own"
                }
            );
            for (cold, warm) in report.compile.iter().zip(&report.compile_cached) {
                println!(
                    "  NVRTC {:<16} {:<7} cold {:>8.1} ms, cached {:>6.1} ms",
                    cold.module, cold.arch, cold.ms, warm.ms
                );
            }
            for t in &report.timings {
                let rate = match (t.tflops, t.gbps) {
                    (Some(tf), _) => format!("{tf:.0} TFLOP/s"),
                    (_, Some(gb)) => format!("{gb:.0} GB/s"),
                    _ => String::new(),
                };
                println!(
                    "  {:<28} {:<28} {:>8.3} ms  {rate}",
                    t.kernel, t.shape, t.ms
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wan21_480p_81_frames_is_a_21x30x52_token_grid() {
        let (f, h, w) = token_grid(&Preset::Wan21_1_3b.shape(), 480, 832, 81).unwrap();
        assert_eq!((f, h, w), (21, 30, 52));
    }

    #[test]
    fn transformer_flops_match_the_anchor_figure() {
        // 283 TFLOP for the 1.3B forward at 480p/81f (docs/PERFORMANCE.md).
        let tflop = transformer_flops(&Preset::Wan21_1_3b.shape(), 21 * 30 * 52) / 1e12;
        assert!((tflop - 283.0).abs() < 1.0, "{tflop}");
    }

    #[test]
    fn wan22_uses_its_16x_vae_grid() {
        let (f, h, w) = token_grid(&Preset::Wan22_5b.shape(), 480, 832, 81).unwrap();
        assert_eq!((f, h, w), (21, 15, 26));
    }

    #[test]
    fn sizes_the_vae_cannot_encode_are_refused() {
        let err = token_grid(&Preset::Wan21_1_3b.shape(), 481, 832, 81)
            .unwrap_err()
            .to_string();
        assert!(err.contains("multiples of 16"), "{err}");
        let err = token_grid(&Preset::Wan21_1_3b.shape(), 480, 832, 80)
            .unwrap_err()
            .to_string();
        assert!(err.contains("4k+1"), "{err}");
    }
}
