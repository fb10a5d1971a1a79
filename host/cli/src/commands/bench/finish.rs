//! `bench encode` and `bench finish`: the finishing path's speed on this machine, CPU or GPU.
//! `encode` pushes synthetic frames (a moving gradient under grain) through the H.264 MP4 writer at a
//! finish target's size and rate; `finish` runs the streaming finish on a clip with the given
//! models and prints the time of each stage. Both write only the output they are given (or a
//! temporary file, removed).

use clap::Args;
use image::{Rgb, RgbImage};
use serde::Serialize;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;
use videosdgx_engine::finishing::finish::{
    FinishModels, FinishSpec, FinishTarget, RateTarget, finish_video,
};
use videosdgx_engine::video::{BackgroundMp4Writer, Mp4Writer, level_name, probe, target_bitrate};

#[derive(Args, Debug)]
pub struct EncodeArgs {
    /// A finish target naming a size and a frame rate, e.g. `4k24` (docs/finishing.md).
    #[arg(long, default_value = "4k24")]
    pub target: FinishTarget,
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u32).range(1..))]
    pub frames: u32,
    /// Encode the frames as one clip, runs of keyframe groups on every core (how a generation's
    /// MP4 is written), instead of as they stream in to a coding thread that gathers them into
    /// groups (how `finish` writes).
    #[arg(long)]
    pub whole_clip: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct FinishArgs {
    /// The clip to finish (an MP4 this studio can read).
    pub input: PathBuf,
    #[arg(long)]
    pub target: FinishTarget,
    /// Upscaler state dict (Real-ESRGAN, Compact, SwinIR).
    #[arg(long)]
    pub upscaler: Option<PathBuf>,
    /// RIFE v4.x flownet.
    #[arg(long)]
    pub rife: Option<PathBuf>,
    /// Upscale in tiles of this many pixels a side.
    #[arg(long)]
    pub tile: Option<usize>,
    /// Where the finished MP4 goes; a temporary file (removed) when absent.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct EncodeReport {
    width: u32,
    height: u32,
    fps: u32,
    frames: u32,
    whole_clip: bool,
    level: &'static str,
    target_mbit_s: f64,
    measured_mbit_s: f64,
    encode_fps: f64,
    seconds: f64,
}

pub fn encode(args: &EncodeArgs) -> anyhow::Result<()> {
    let (Some(size), Some(RateTarget::Fps(fps))) = (args.target.size, args.target.rate) else {
        anyhow::bail!(
            "`bench encode` needs a target with a size and a frame rate, such as 4k24 or 1080p30"
        );
    };
    let (width, height) = (size.width, size.height);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("encode.mp4");
    // Frames are made before timing: only the writer (RGB->YUV, H.264, spooling) is measured.
    // A moving gradient under fine grain, which generated video has and which costs bits.
    let frames: Vec<RgbImage> = (0..8u32)
        .map(|f| {
            RgbImage::from_fn(width, height, |x, y| {
                let shift = x + f * 24;
                let grain = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503) ^ f)
                    .wrapping_mul(2_246_822_519)
                    >> 28;
                let base = [(shift % 256) as u8, ((y + shift / 3) % 256) as u8, 90];
                Rgb(base.map(|c| c.saturating_add(grain as u8)))
            })
        })
        .collect();
    let clip: Vec<RgbImage> = match args.whole_clip {
        true => frames
            .iter()
            .cycle()
            .take(args.frames as usize)
            .cloned()
            .collect(),
        false => Vec::new(),
    };
    let started = Instant::now();
    let writer = Mp4Writer::create(&path, width, height, fps)?;
    if args.whole_clip {
        let mut writer = writer;
        writer.push_all(&clip)?;
        writer.finish(&serde_json::Value::Null)?;
    } else {
        let mut writer = BackgroundMp4Writer::start(writer)?;
        for frame in frames.iter().cycle().take(args.frames as usize) {
            writer.push(frame.clone())?;
        }
        writer.finish(&serde_json::Value::Null)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&path)?.len() as f64;
    let report = EncodeReport {
        width,
        height,
        fps,
        frames: args.frames,
        whole_clip: args.whole_clip,
        level: level_name(width, height, fps)?,
        target_mbit_s: f64::from(target_bitrate(width, height, fps)) / 1e6,
        measured_mbit_s: bytes * 8.0 / (f64::from(args.frames) / f64::from(fps)) / 1e6,
        encode_fps: f64::from(args.frames) / seconds,
        seconds,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "encode {}x{} @ {} fps, level {}: {:.2} frames/s ({} frames in {:.1} s), \
             {:.1} Mbit/s (target {:.1})",
            report.width,
            report.height,
            report.fps,
            report.level,
            report.encode_fps,
            report.frames,
            report.seconds,
            report.measured_mbit_s,
            report.target_mbit_s
        );
    }
    Ok(())
}

pub fn finish(args: &FinishArgs) -> anyhow::Result<()> {
    let device = candle_core::Device::cuda_if_available(0)?;
    let dtype = if device.is_cuda() {
        candle_core::DType::BF16
    } else {
        candle_core::DType::F32
    };
    let spec = FinishSpec {
        upscaler: args.upscaler.clone(),
        interpolator: args.rife.clone(),
        tile: args.tile,
        ..FinishSpec::new(args.target)
    };
    let loading = Instant::now();
    let models = FinishModels::load(&spec, &device, dtype)?;
    let load_s = loading.elapsed().as_secs_f64();
    let dir = tempfile::tempdir()?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| dir.path().join("finished.mp4"));
    let report = finish_video(
        &args.input,
        &out,
        &spec,
        &models,
        &serde_json::Value::Null,
        &device,
        &mut |_| ControlFlow::Continue(()),
    )?;
    let info = probe(&out)?;
    let t = &report.timings;
    if args.json {
        let json = serde_json::json!({
            "device": format!("{device:?}"),
            "load_s": load_s,
            "report": report,
            "output_mbit_s": std::fs::metadata(&out)?.len() as f64 * 8.0 / info.duration / 1e6,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!(
            "finish {} -> {}x{} @ {} fps, {} frames on {:?} in {:.2} s ({:.2} frames/s; models loaded in {:.2} s)",
            args.input.display(),
            info.width,
            info.height,
            report.plan.fps,
            report.frames,
            device,
            t.total_s,
            report.frames as f64 / t.total_s,
            load_s
        );
        println!(
            "  decode {:.2} s, interpolate {:.2} s, upscale {:.2} s, resize {:.2} s, encode {:.2} s",
            t.decode_s, t.interpolate_s, t.upscale_s, t.resize_s, t.encode_s
        );
    }
    Ok(())
}
