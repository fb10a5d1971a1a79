//! A whole generation split across cards: every rank runs the same generation with the pipeline
//! on its card, on its share; the first rank's video is the result. Progress reaches the caller
//! from the first rank, and every report is also where the ranks agree whether to stop, so a
//! cancel stops all of them at the same step. Each rank's time, and the part of it spent
//! exchanging, come back with the video.

use super::{CommTime, Layout, RankContext, agree_to_stop, check_layout, on_every_card, run_ranks};
use crate::pipelines::{GenerateInputs, GenerateParams, GeneratedVideo, Pipeline, Progress};
use anyhow::{Context, Result};
use candle_core::{DType, Device, DeviceLocation};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Mutex, mpsc};
use std::time::Instant;

/// A split generation's video (the first rank's) and what each rank spent.
pub struct SplitGeneration {
    pub video: GeneratedVideo,
    pub ranks: Vec<RankTime>,
}

/// One rank's wall time (its pipeline's loading excluded) and its exchanges.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RankTime {
    pub rank: usize,
    pub device: String,
    pub seconds: f64,
    pub exchange: CommTime,
}

/// Generates with the pipeline in `dir` split over `devices` by `layout`: refuses a layout the
/// model's configs cannot take for the requested size, opens the pipeline on every card at once, readies each with
/// `prepare` (quantization, dropping the text encoder), then runs [`generate_split_on`].
#[allow(clippy::too_many_arguments)]
pub fn generate_split(
    dir: &Path,
    dtype: DType,
    layout: Layout,
    devices: &[Device],
    prepare: impl Fn(&mut Pipeline) -> Result<()> + Sync,
    params: &GenerateParams,
    inputs: GenerateInputs,
    on_progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
) -> Result<SplitGeneration> {
    let model = Pipeline::inspect_split(dir, params.size())?;
    check_layout(layout, &model, params.guidance, params.cache.is_some())?;
    let mut pipelines = on_every_card(devices.iter().collect(), |_, device| {
        let mut pipeline = Pipeline::open(dir, device, dtype)?;
        prepare(&mut pipeline)?;
        Ok(pipeline)
    })?;
    generate_split_on(
        pipelines.iter_mut().collect(),
        layout,
        params,
        inputs,
        on_progress,
    )
}

/// Generates on pipelines that are already open, rank `r` on `pipelines[r]` (on its card), split
/// by `layout`; a layout the model cannot take is refused ([`super::SplitRefused`]) before any
/// rank joins. Each pipeline is a rank only for this call: whatever the outcome, it runs whole
/// again afterwards (the studio keeps them resident for the next generation). `on_progress` runs
/// on the caller's thread, while the ranks wait for its answer.
pub fn generate_split_on(
    pipelines: Vec<&mut Pipeline>,
    layout: Layout,
    params: &GenerateParams,
    inputs: GenerateInputs,
    on_progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
) -> Result<SplitGeneration> {
    if let Some(first) = pipelines.first() {
        check_layout(
            layout,
            &first.split_support(params.size()),
            params.guidance,
            params.cache.is_some(),
        )?;
    }
    let devices: Vec<Device> = pipelines.iter().map(|p| p.device().clone()).collect();
    // One lock per rank, each taken by its rank's thread only.
    let pipelines: Vec<Mutex<&mut Pipeline>> = pipelines.into_iter().map(Mutex::new).collect();
    let ranks = std::thread::scope(|s| {
        // Made here, so that a panicking `on_progress` drops `answer` and the ranks stop.
        let (progress, reports) = mpsc::channel::<Progress>();
        let (answer, answers) = mpsc::channel::<ControlFlow<()>>();
        let ranks = s.spawn(move || {
            // Only the first rank asks, and waits for the answer before it goes on.
            let answers = Mutex::new(answers);
            let ask = |p: &Progress| {
                if progress.send(*p).is_err() {
                    return ControlFlow::Break(());
                }
                let answers = answers.lock().unwrap_or_else(|e| e.into_inner());
                answers.recv().unwrap_or(ControlFlow::Break(()))
            };
            run_ranks(layout, &devices, |rank| {
                let mut pipeline = pipelines[rank.rank]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let outcome = run_rank(&mut pipeline, rank, params, inputs.clone(), &ask);
                pipeline.clear_split();
                outcome
            })
        });
        // Ends when the ranks have ended (and dropped `progress`).
        for report in reports {
            let _ = answer.send(on_progress(&report));
        }
        ranks
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the ranks panicked")))
    })?;
    let (mut videos, ranks): (Vec<_>, Vec<_>) = ranks.into_iter().unzip();
    Ok(SplitGeneration {
        video: videos.swap_remove(0),
        ranks,
    })
}

/// One rank's part: its pipeline joins the split, generates, and reports through the first rank.
fn run_rank(
    pipeline: &mut Pipeline,
    rank: RankContext,
    params: &GenerateParams,
    inputs: GenerateInputs,
    ask: &(dyn Fn(&Progress) -> ControlFlow<()> + Sync),
) -> Result<(GeneratedVideo, RankTime)> {
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
        let stop = leads && ask(p).is_break();
        match agree_to_stop(world.as_ref(), stop, &rank.device) {
            Ok(false) => ControlFlow::Continue(()),
            Ok(true) | Err(_) => ControlFlow::Break(()),
        }
    };
    let video = pipeline.generate(params, inputs, &mut report)?;
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
}
