//! A whole generation split across cards: every rank opens the pipeline on its card and runs the
//! same generation on its share; the first rank's video is the result. Progress reaches the caller
//! from the first rank, and every report is also where the ranks agree whether to stop, so a
//! cancel stops all of them at the same step. Each rank's time, and the part of it spent
//! exchanging, come back with the video.

use super::{CommTime, Layout, agree_to_stop, run_ranks};
use crate::pipelines::{GenerateInputs, GenerateParams, GeneratedVideo, Pipeline, Progress};
use anyhow::{Context, Result};
use candle_core::{DType, Device, DeviceLocation};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// A split generation's video (the first rank's) and what each rank spent.
pub struct SplitGeneration {
    pub video: GeneratedVideo,
    pub ranks: Vec<RankTime>,
}

/// One rank's wall time (its pipeline's loading excluded) and its exchanges.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RankTime {
    pub rank: usize,
    pub device: String,
    pub seconds: f64,
    pub exchange: CommTime,
}

/// Generates with the pipeline in `dir` split over `devices` by `layout`; `prepare` readies each
/// rank's pipeline before it joins (quantization, dropping the text encoder).
#[allow(clippy::too_many_arguments)]
pub fn generate_split(
    dir: &Path,
    dtype: DType,
    layout: Layout,
    devices: &[Device],
    prepare: impl Fn(&mut Pipeline) -> Result<()> + Sync,
    params: &GenerateParams,
    inputs: GenerateInputs,
    on_progress: &mut (dyn FnMut(&Progress) -> ControlFlow<()> + Send),
) -> Result<SplitGeneration> {
    let on_progress = Mutex::new(on_progress);
    let ranks = run_ranks(layout, devices, |rank| {
        let mut pipeline = Pipeline::open(dir, &rank.device, dtype)?;
        prepare(&mut pipeline)?;
        let world = rank
            .split
            .world
            .clone()
            .context("a split has a world group")?;
        let leads = rank.split.leads();
        let split = rank.split.clone();
        pipeline.set_split(rank.split)?;
        let start = Instant::now();
        let mut report = |p: &Progress| {
            let stop = leads && on_progress.lock().unwrap_or_else(|e| e.into_inner())(p).is_break();
            match agree_to_stop(world.as_ref(), stop, &rank.device) {
                Ok(false) => ControlFlow::Continue(()),
                Ok(true) | Err(_) => ControlFlow::Break(()),
            }
        };
        let video = pipeline.generate(params, inputs.clone(), &mut report)?;
        let time = RankTime {
            rank: rank.rank,
            device: match rank.device.location() {
                DeviceLocation::Cpu => "cpu".into(),
                DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
                other => format!("{other:?}"),
            },
            seconds: start.elapsed().as_secs_f64(),
            exchange: split.exchange_time()?,
        };
        Ok((video, time))
    })?;
    let (mut videos, ranks): (Vec<_>, Vec<_>) = ranks.into_iter().unzip();
    Ok(SplitGeneration {
        video: videos.swap_remove(0),
        ranks,
    })
}
