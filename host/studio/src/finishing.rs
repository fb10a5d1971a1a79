//! Finishing in the studio: the `finish` job (GPU lane) turns a take, or any video asset of a
//! project (a stitched piece), into the delivered file — retimed with RIFE, upscaled with an
//! upscaler model, fitted to the target size and encoded ([`videosdgx_engine::finishing::finish`]).
//! A finished take is a new take of the same shot, recorded like a generation: the generation
//! record (kind `finish`) and the MP4's embedded metadata hold the target, the source, the
//! models' file names and SHA-256 and the engine version. Finishing models are single files
//! under `DATA/models/finishing/`; what each one is (upscaler architecture and scale, RIFE
//! version) is read from its keys.

use crate::app::App;
use crate::assets::{Asset, MediaKind, NewAsset, get_asset};
use crate::db::now_ms;
use crate::error::{Result, StudioError};
use crate::jobs::{JobContext, JobRunner, Lane};
use crate::models::models_dir;
use crate::shots::{self, Take};
use candle_core::{DType, Device};
use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use utoipa::ToSchema;
use videosdgx_engine::finishing::Kind;
use videosdgx_engine::finishing::finish::{
    ClipShape, FinishCancelled, FinishPlan, FinishSpec, FinishTarget, finish_video,
};
use videosdgx_engine::finishing::interpolate::Rife;
use videosdgx_engine::finishing::upscale::Upscaler;
use videosdgx_engine::loader::StateDict;
use videosdgx_engine::pipelines::Cancelled;
use videosdgx_engine::video;

/// Upscale in tiles of this many pixels a side: a 720p frame through a x4 model whole would
/// need gigabytes of activations; tiles bound that whatever the source.
pub const DEFAULT_TILE: usize = 512;

/// What to install when no upscaler is there.
pub const NO_UPSCALER: &str = "no upscaler is installed: put a Real-ESRGAN, Compact or SwinIR \
state dict in DATA/models/finishing/ (e.g. RealESRGAN_x4plus.pth or realesr-general-x4v3.pth \
from github.com/xinntao/Real-ESRGAN/releases; docs/finishing.md lists more)";
/// What to install when no RIFE flownet is there.
pub const NO_INTERPOLATOR: &str = "no RIFE flownet is installed: put a RIFE v4.x flownet.pkl \
(from the train_log of a Practical-RIFE v4 release, github.com/hzwer/Practical-RIFE) in \
DATA/models/finishing/ (docs/finishing.md)";

/// Where finishing models live: single files, any name.
pub fn finishing_dir(data_dir: &Path) -> PathBuf {
    models_dir(data_dir).join("finishing")
}

/// What a file under `models/finishing/` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FinishingKind {
    Upscaler,
    Interpolator,
    /// Neither loads: `error` says why.
    Unusable,
}

/// One file under `models/finishing/`, as its keys describe it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FinishingModel {
    /// The file name: what a finish job's `upscaler` / `interpolator` names.
    pub file: String,
    pub kind: FinishingKind,
    /// `ESRGAN`, `Compact`, `SwinIR`, ... for upscalers.
    pub architecture: Option<String>,
    /// Upscaling factor.
    pub scale: Option<usize>,
    /// RIFE version for flownets.
    pub version: Option<String>,
    pub size_bytes: u64,
    /// Why the file is unusable.
    pub error: Option<String>,
    #[serde(skip)]
    pub path: PathBuf,
}

/// Reads what `path` is: its keys tell the kind, and loading it on the CPU checks the weights.
fn describe(path: &Path) -> Result<FinishingModel> {
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut model = FinishingModel {
        file,
        kind: FinishingKind::Unusable,
        architecture: None,
        scale: None,
        version: None,
        size_bytes: std::fs::metadata(path)?.len(),
        error: None,
        path: path.to_path_buf(),
    };
    let loaded = StateDict::open(path)
        .map_err(anyhow::Error::from)
        .and_then(|dict| match Kind::detect(&dict)? {
            Kind::Upscaler(_) => {
                let upscaler = Upscaler::from_state_dict(&dict, &Device::Cpu, DType::F32)?;
                model.kind = FinishingKind::Upscaler;
                model.architecture = Some(upscaler.architecture().to_string());
                model.scale = Some(upscaler.scale());
                Ok(())
            }
            Kind::Interpolator => {
                let rife = Rife::from_state_dict(&dict, &Device::Cpu, DType::F32)?;
                model.kind = FinishingKind::Interpolator;
                model.architecture = Some("RIFE".into());
                model.version = Some(rife.version().to_string());
                Ok(())
            }
        });
    if let Err(e) = loaded {
        model.kind = FinishingKind::Unusable;
        model.error = Some(format!("{e:#}"));
    }
    Ok(model)
}

/// The files under `models/finishing/`, by name, hidden files and folders left out.
fn finishing_files(data_dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = finishing_dir(data_dir);
    let mut files = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                let hidden = entry.file_name().to_string_lossy().starts_with('.');
                if entry.file_type()?.is_file() && !hidden {
                    files.push(entry.path());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    files.sort();
    Ok(files)
}

/// Every finishing model installed, with what it is (`models list`).
pub fn list_finishing_models(data_dir: &Path) -> Result<Vec<FinishingModel>> {
    finishing_files(data_dir)?
        .iter()
        .map(|path| describe(path))
        .collect()
}

/// The model of `kind` a finish uses: the file named, else the first installed by name.
fn choose(data_dir: &Path, kind: FinishingKind, named: Option<&str>) -> Result<FinishingModel> {
    let what = match kind {
        FinishingKind::Upscaler => "an upscaler",
        _ => "a RIFE flownet",
    };
    if let Some(name) = named {
        let path = finishing_dir(data_dir).join(name);
        if name.contains(['/', '\\']) || name.starts_with('.') || !path.is_file() {
            let installed = finishing_files(data_dir)?
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect::<Vec<_>>();
            return Err(StudioError::Invalid(format!(
                "finishing model `{name}` is not in models/finishing/ (installed: {})",
                if installed.is_empty() {
                    "none".into()
                } else {
                    installed.join(", ")
                }
            )));
        }
        let model = describe(&path)?;
        return match model.kind {
            k if k == kind => Ok(model),
            FinishingKind::Unusable => Err(StudioError::Invalid(format!(
                "finishing model `{name}` cannot be used: {}",
                model.error.unwrap_or_default()
            ))),
            _ => Err(StudioError::Invalid(format!(
                "finishing model `{name}` is not {what}"
            ))),
        };
    }
    for path in finishing_files(data_dir)? {
        let model = describe(&path)?;
        if model.kind == kind {
            return Ok(model);
        }
    }
    Err(StudioError::Invalid(
        match kind {
            FinishingKind::Upscaler => NO_UPSCALER,
            _ => NO_INTERPOLATOR,
        }
        .into(),
    ))
}

/// Parameters of a `finish` job: a take (finished into a new take of its shot) or a video asset
/// (finished into a new asset of its project), and the target.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FinishParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub take_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_id: Option<i64>,
    /// `4k24`, `1080p30`, `x2`, `1920x1080@24` (docs/finishing.md).
    #[schema(value_type = String)]
    pub target: FinishTarget,
    /// An upscaler's file name under models/finishing/; the first installed when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upscaler: Option<String>,
    /// A RIFE flownet's file name under models/finishing/; the first installed when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpolator: Option<String>,
    /// Upscaler tile size in pixels (64 to 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tile: Option<usize>,
}

/// A finish with its source and models found.
struct Resolved {
    asset: Asset,
    take: Option<Take>,
    source: ClipShape,
    spec: FinishSpec,
    upscaler: Option<FinishingModel>,
    interpolator: Option<FinishingModel>,
}

impl FinishParams {
    fn parse(params: &Value) -> Result<FinishParams> {
        let parsed: FinishParams = serde_json::from_value(params.clone())
            .map_err(|e| StudioError::Invalid(format!("parameters of a finish job: {e}")))?;
        if parsed.take_id.is_some() == parsed.asset_id.is_some() {
            return Err(StudioError::Invalid(
                "a finish job names either a take_id or an asset_id".into(),
            ));
        }
        if let Some(tile) = parsed.tile
            && !(64..=4096).contains(&tile)
        {
            return Err(StudioError::Invalid(format!(
                "tile must be 64 to 4096 pixels, got {tile}"
            )));
        }
        Ok(parsed)
    }

    fn resolve(&self, app: &App) -> Result<Resolved> {
        let take = self
            .take_id
            .map(|id| shots::get_take(&app.db, id))
            .transpose()?;
        let asset_id = take.as_ref().map_or(self.asset_id, |t| Some(t.asset_id));
        let asset = get_asset(&app.db, asset_id.expect("parse checked one is given"))?;
        if asset.kind != MediaKind::Video {
            return Err(StudioError::Invalid(format!(
                "asset {} is not a video: only videos are finished",
                asset.id
            )));
        }
        let info = video::probe(&app.assets.file_of(&asset))
            .map_err(|e| StudioError::Invalid(format!("asset {}: {e:#}", asset.id)))?;
        let source = ClipShape {
            width: info.width,
            height: info.height,
            frames: info.frames,
            fps: info.fps,
        };
        let plan = FinishPlan::new(source, &self.target)
            .map_err(|e| StudioError::Invalid(format!("{e:#}")))?;
        let data = app.data_dir();
        let upscaler = plan
            .upscale
            .then(|| choose(data, FinishingKind::Upscaler, self.upscaler.as_deref()))
            .transpose()?;
        let interpolator = plan
            .interpolates()
            .then(|| {
                choose(
                    data,
                    FinishingKind::Interpolator,
                    self.interpolator.as_deref(),
                )
            })
            .transpose()?;
        let spec = FinishSpec {
            upscaler: upscaler.as_ref().map(|m| m.path.clone()),
            interpolator: interpolator.as_ref().map(|m| m.path.clone()),
            tile: Some(self.tile.unwrap_or(DEFAULT_TILE)),
            ..FinishSpec::new(self.target)
        };
        Ok(Resolved {
            asset,
            take,
            source,
            spec,
            upscaler,
            interpolator,
        })
    }
}

/// Whether a finish to `target` of a clip shaped like `source` could run with the models
/// installed; for callers that refuse before queueing work (`render --finish`, a stitch).
pub fn check_available(app: &App, source: ClipShape, target: &FinishTarget) -> Result<()> {
    let plan =
        FinishPlan::new(source, target).map_err(|e| StudioError::Invalid(format!("{e:#}")))?;
    if plan.upscale {
        choose(app.data_dir(), FinishingKind::Upscaler, None)?;
    }
    if plan.interpolates() {
        choose(app.data_dir(), FinishingKind::Interpolator, None)?;
    }
    Ok(())
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// What a finish is recorded as: in the generation record and in the MP4.
fn finish_record(resolved: &Resolved) -> Result<Value> {
    let model = |m: &FinishingModel| -> Result<Value> {
        Ok(json!({
            "file": m.file,
            "sha256": sha256_of(&m.path)?,
            "architecture": m.architecture,
            "scale": m.scale,
            "version": m.version,
        }))
    };
    Ok(json!({
        "target": resolved.spec.target,
        "source": {
            "asset_id": resolved.asset.id,
            "take_id": resolved.take.as_ref().map(|t| t.id),
            "generation_id": resolved.take.as_ref().and_then(|t| t.generation_id),
            "width": resolved.source.width,
            "height": resolved.source.height,
            "frames": resolved.source.frames,
            "fps": resolved.source.fps,
        },
        "upscaler": resolved.upscaler.as_ref().map(model).transpose()?,
        "interpolator": resolved.interpolator.as_ref().map(model).transpose()?,
        "tile": resolved.spec.tile,
        "engine_version": videosdgx_engine::VERSION,
    }))
}

/// The models a finish used, as the generation record's `model` names them.
fn model_names(resolved: &Resolved) -> String {
    let names: Vec<&str> = [&resolved.upscaler, &resolved.interpolator]
        .into_iter()
        .flatten()
        .map(|m| m.file.as_str())
        .collect();
    if names.is_empty() {
        "resize only".into()
    } else {
        names.join(" + ")
    }
}

/// What a `finish` job returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finished {
    pub asset_id: i64,
    pub take_id: Option<i64>,
    pub generation_id: i64,
    pub source_asset_id: i64,
    pub target: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub frames: usize,
    /// The engine's report: models, frames drawn, frames held at cuts, seconds per stage.
    pub report: Value,
}

/// Runs a finish on the GPU lane's models and records it.
fn run_finish(
    app: &App,
    job_id: Option<i64>,
    params: &FinishParams,
    on_progress: &mut dyn FnMut(&str, u64, u64) -> ControlFlow<()>,
) -> Result<Finished> {
    let resolved = params.resolve(app)?;
    let mut record = finish_record(&resolved)?;
    let source_path = app.assets.file_of(&resolved.asset);
    let out = app.scratch_file("finish", "mp4")?;
    let outcome = app.gpus.with_finishing(
        job_id,
        &resolved.spec,
        on_progress,
        |models, device, report| {
            finish_video(
                &source_path,
                &out,
                &resolved.spec,
                models,
                &json!({ "finish": record }),
                device,
                &mut |p| report("finishing", p.frame as u64, p.total as u64),
            )
            .map_err(|e| {
                if e.downcast_ref::<FinishCancelled>().is_some() {
                    StudioError::Internal(anyhow::Error::new(Cancelled))
                } else {
                    StudioError::Internal(e.context("finishing"))
                }
            })
        },
    );
    let report = match outcome {
        Ok(report) => report,
        Err(e) => {
            let _ = std::fs::remove_file(&out);
            return Err(e);
        }
    };
    record["report"] = serde_json::to_value(&report).map_err(anyhow::Error::from)?;
    let recorded = record_finish(app, job_id, &resolved, &record, &out);
    let _ = std::fs::remove_file(&out);
    let (asset, take_id, generation_id) = recorded?;
    Ok(Finished {
        asset_id: asset.id,
        take_id,
        generation_id,
        source_asset_id: resolved.asset.id,
        target: resolved.spec.target.to_string(),
        width: report.plan.width,
        height: report.plan.height,
        fps: report.plan.fps,
        frames: report.frames,
        report: record["report"].clone(),
    })
}

/// `boats-shot-1-take-1.mp4` finished to `4k@24` is `boats-shot-1-take-1-4k-24.mp4`.
fn finished_name(source: &str, target: &FinishTarget) -> String {
    let stem = source.strip_suffix(".mp4").unwrap_or(source);
    let target: String = target
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("{stem}-{}.mp4", target.trim_matches('-'))
}

/// Imports the finished MP4, then writes its generation record and (for a take) the new take
/// in one transaction, as generations are recorded.
fn record_finish(
    app: &App,
    job_id: Option<i64>,
    resolved: &Resolved,
    record: &Value,
    path: &Path,
) -> Result<(Asset, Option<i64>, i64)> {
    let target = resolved.spec.target.to_string();
    let meta = NewAsset {
        name: finished_name(&resolved.asset.original_name, &resolved.spec.target),
        project_id: resolved.asset.project_id,
        caption: resolved.asset.caption.clone(),
        tags: vec!["finished".into()],
        prompt: resolved.asset.prompt.clone(),
        model: Some(model_names(resolved)),
    };
    let params_json = serde_json::to_string(record).map_err(anyhow::Error::from)?;
    let (asset, (generation_id, take_id)) =
        app.assets
            .import_file_recording(&app.db, path, &meta, |tx, asset| {
                let generation_id: i64 = tx.query_row(
                    "INSERT INTO generations (job_id, shot_id, asset_id, model, params, engine_version, created_at, kind)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'finish') RETURNING id",
                    params![
                        job_id,
                        resolved.take.as_ref().map(|t| t.shot_id),
                        asset.id,
                        model_names(resolved),
                        params_json,
                        videosdgx_engine::VERSION,
                        now_ms()
                    ],
                    |r| r.get(0),
                )?;
                let take = resolved
                    .take
                    .as_ref()
                    .map(|source| {
                        shots::add_finished_take(tx, source, asset.id, generation_id, &target)
                    })
                    .transpose()?;
                Ok((generation_id, take.map(|t| t.id)))
            })?;
    Ok((asset, take_id, generation_id))
}

/// `finish`: a take or a video asset finished to a target, on the GPU lane.
pub struct FinishRunner;

impl JobRunner for FinishRunner {
    fn kind(&self) -> &'static str {
        "finish"
    }
    fn lane(&self) -> Lane {
        Lane::Gpu
    }
    fn check(&self, app: &App, params: &Value) -> Result<()> {
        FinishParams::parse(params)?.resolve(app).map(drop)
    }
    fn run(&self, app: &App, ctx: &JobContext, params: &Value) -> Result<Value> {
        let params = FinishParams::parse(params)?;
        let finished = run_finish(
            app,
            Some(ctx.job_id()),
            &params,
            &mut |stage, step, total| ctx.progress(stage, step, total),
        )?;
        Ok(serde_json::to_value(finished).map_err(anyhow::Error::from)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::StudioConfig;
    use crate::generation::{GenerateShot, RenderSettings, install_tiny_model};
    use crate::jobs::{JobQueue, JobState, NewJob, run_to_end};
    use crate::projects::{create_project, create_storyboard};
    use crate::shots::ShotFields;
    use std::sync::Arc;

    fn fixture(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/finishing")
            .join(path)
    }

    /// The tiny Compact x2 upscaler and RIFE 4.6 flownet, under the names users give them.
    fn install_finishing_models(data: &Path) {
        let dir = finishing_dir(data);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            fixture("upscalers/compact_x2/model.safetensors"),
            dir.join("compact_x2.safetensors"),
        )
        .unwrap();
        std::fs::copy(fixture("rife/4.6/flownet.pkl"), dir.join("flownet.pkl")).unwrap();
    }

    /// A studio with the tiny Wan model and one generated 32x32 take of 9 frames at 16 fps.
    fn studio_with_take() -> (tempfile::TempDir, Arc<App>, Take) {
        let dir = tempfile::tempdir().unwrap();
        install_tiny_model(dir.path());
        let app = Arc::new(App::open(StudioConfig::new(dir.path())).unwrap());
        let project = create_project(&app.db, "Harbour").unwrap();
        let board = create_storyboard(&app.db, project.id, "s", "").unwrap();
        let fields = ShotFields {
            prompt: Some("a lighthouse at dusk".into()),
            duration_s: Some(0.5),
            seed: Some(7),
            ..Default::default()
        };
        let shot = shots::create_shot(&app.db, board.id, &fields).unwrap();
        let request = GenerateShot {
            shot_id: shot.id,
            render: RenderSettings {
                height: 32,
                width: 32,
                steps: 2,
                guidance: 1.0,
                ..RenderSettings::default()
            },
            ..Default::default()
        };
        let output = app
            .generator
            .generate_shot(&app, None, &request, &mut |_, _, _| {
                ControlFlow::Continue(())
            })
            .unwrap();
        let take = shots::get_take(&app.db, output.take_id.unwrap()).unwrap();
        (dir, app, take)
    }

    fn count(app: &App, table: &str) -> i64 {
        app.db
            .with(|c| Ok(c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?))
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_take_is_finished_into_a_new_recorded_take_through_the_queue() {
        let (dir, app, source) = studio_with_take();
        install_finishing_models(dir.path());
        let workers = JobQueue::start(&app, 1);
        let new = NewJob {
            kind: "finish".into(),
            params: json!({ "take_id": source.id, "target": "96x64@x2" }),
            max_attempts: None,
            project_id: None,
        };
        let mut stages = Vec::new();
        let job = run_to_end(&app, new, &mut |p| {
            stages.push(p.stage.clone());
            ControlFlow::Continue(())
        })
        .await
        .unwrap();
        app.jobs.stop();
        for worker in workers {
            worker.await.unwrap();
        }
        assert_eq!(job.state, JobState::Succeeded, "{:?}", job.error);
        assert_eq!(job.lane, Lane::Gpu);
        let finished: Finished = serde_json::from_value(job.result.unwrap()).unwrap();
        // 9 frames at 16 fps, x2: 17 frames at 32 fps; 32x32 upscaled and pillarboxed in 96x64.
        assert_eq!(
            (
                finished.width,
                finished.height,
                finished.fps,
                finished.frames
            ),
            (96, 64, 32, 17)
        );

        let shot = shots::get_shot(&app.db, source.shot_id).unwrap();
        assert_eq!(shot.takes.len(), 2);
        let take = shot
            .takes
            .iter()
            .find(|t| Some(t.id) == finished.take_id)
            .unwrap();
        assert_eq!(take.finished_from, Some(source.id));
        assert_eq!(take.finish_target.as_deref(), Some("96x64@x2"));
        assert_eq!(
            shot.chosen_take_id,
            Some(source.id),
            "the user's choice stays"
        );

        let record =
            crate::generation::get_generation(&app.db, take.generation_id.unwrap()).unwrap();
        assert_eq!(record.kind, "finish");
        assert_eq!(record.model, "compact_x2.safetensors + flownet.pkl");
        assert_eq!(record.engine_version, videosdgx_engine::VERSION);
        let params = &record.params;
        assert_eq!(params["target"], "96x64@x2");
        assert_eq!(params["source"]["take_id"], source.id);
        assert_eq!(
            params["source"]["generation_id"],
            json!(source.generation_id)
        );
        assert_eq!(params["upscaler"]["architecture"], "RealESRGAN Compact");
        assert_eq!(params["upscaler"]["scale"], 2);
        assert_eq!(
            params["upscaler"]["sha256"],
            sha256_of(&fixture("upscalers/compact_x2/model.safetensors")).unwrap()
        );
        assert_eq!(params["interpolator"]["file"], "flownet.pkl");
        assert_eq!(params["interpolator"]["version"], "4.6");
        assert!(params["report"]["timings"]["encode_s"].as_f64().unwrap() > 0.0);

        let asset = get_asset(&app.db, finished.asset_id).unwrap();
        assert_eq!(asset.tags, ["finished"]);
        let info = video::probe(&app.assets.file_of(&asset)).unwrap();
        assert_eq!((info.width, info.height, info.frames), (96, 64, 17));
        assert_eq!(info.fps, 32.0);
        // The MP4 carries the same finish (the record adds only the engine's report).
        let mut embedded = params.clone();
        embedded.as_object_mut().unwrap().remove("report");
        assert_eq!(info.metadata["finish"], embedded);
        assert!(stages.iter().any(|s| s == "finishing"), "{stages:?}");
    }

    #[test]
    fn bad_finishes_are_refused_at_submission_and_lose_nothing() {
        let (dir, app, take) = studio_with_take();
        let before: Vec<i64> = ["takes", "assets", "generations", "jobs"]
            .iter()
            .map(|t| count(&app, t))
            .collect();
        let submit = |params: Value| {
            let new = NewJob {
                kind: "finish".into(),
                params,
                max_attempts: None,
                project_id: None,
            };
            app.jobs.submit(&app, &new).unwrap_err().to_string()
        };
        for (params, expected) in [
            (
                json!({ "take_id": take.id, "target": "16k" }),
                "unknown finish target `16k`",
            ),
            (
                json!({ "take_id": take.id, "target": "15360x8640@24" }),
                "exceeds the H.264 encoder's 3840x2160 limit",
            ),
            (json!({ "take_id": take.id, "target": "4k24" }), NO_UPSCALER),
            (
                json!({ "take_id": take.id, "target": "x2" }),
                NO_INTERPOLATOR,
            ),
            (
                json!({ "take_id": 999, "target": "4k" }),
                "take 999 not found",
            ),
            (json!({ "target": "4k" }), "either a take_id or an asset_id"),
        ] {
            let err = submit(params.clone());
            assert!(err.contains(expected), "{params}: {err}");
        }

        install_finishing_models(dir.path());
        std::fs::write(
            finishing_dir(dir.path()).join("broken.pth"),
            b"PK\x03\x04 not a zip",
        )
        .unwrap();
        // Real safetensors, but tensors of no model.
        std::fs::copy(
            fixture("upscalers/compact_x2/inputs.safetensors"),
            finishing_dir(dir.path()).join("other.safetensors"),
        )
        .unwrap();
        for (params, expected) in [
            (
                json!({ "take_id": take.id, "target": "4k", "upscaler": "nope.pth" }),
                "`nope.pth` is not in models/finishing/ (installed: broken.pth, compact_x2.safetensors, flownet.pkl, other.safetensors)",
            ),
            (
                json!({ "take_id": take.id, "target": "4k", "upscaler": "broken.pth" }),
                "`broken.pth` cannot be used: ",
            ),
            (
                json!({ "take_id": take.id, "target": "4k", "upscaler": "other.safetensors" }),
                "not a finishing model this build knows",
            ),
            (
                json!({ "take_id": take.id, "target": "4k", "upscaler": "flownet.pkl" }),
                "`flownet.pkl` is not an upscaler",
            ),
            (
                json!({ "take_id": take.id, "target": "4k", "upscaler": "../../studio.db" }),
                "is not in models/finishing/",
            ),
            (
                json!({ "take_id": take.id, "target": "4k", "tile": 1 }),
                "tile must be 64 to 4096 pixels",
            ),
        ] {
            let err = submit(params.clone());
            assert!(err.contains(expected), "{params}: {err}");
        }
        let after: Vec<i64> = ["takes", "assets", "generations", "jobs"]
            .iter()
            .map(|t| count(&app, t))
            .collect();
        assert_eq!(before, after);

        let listed = list_finishing_models(dir.path()).unwrap();
        let broken = listed[0].error.as_deref().unwrap();
        assert!(broken.contains("broken.pth"), "{broken}");
        let kinds: Vec<_> = listed
            .iter()
            .map(|m| (m.file.as_str(), m.kind, m.scale, m.version.as_deref()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("broken.pth", FinishingKind::Unusable, None, None),
                (
                    "compact_x2.safetensors",
                    FinishingKind::Upscaler,
                    Some(2),
                    None
                ),
                (
                    "flownet.pkl",
                    FinishingKind::Interpolator,
                    None,
                    Some("4.6")
                ),
                ("other.safetensors", FinishingKind::Unusable, None, None),
            ]
        );
    }
}
