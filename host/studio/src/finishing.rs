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
use crate::generation::models_dir;
use crate::jobs::{JobContext, JobRunner, Lane};
use crate::shots::{self, Take};
use candle_core::{DType, Device};
use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use utoipa::ToSchema;
use videosdgx_engine::finishing::finish::{
    ClipShape, FinishCancelled, FinishPlan, FinishSpec, FinishTarget, finish_video,
};
use videosdgx_engine::finishing::interpolate::Rife;
use videosdgx_engine::finishing::upscale::Upscaler;
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

/// Reads what `path` is by loading it on the CPU (an upscaler first, then a flownet).
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
    let upscaler = match Upscaler::load(path, &Device::Cpu, DType::F32) {
        Ok(upscaler) => {
            model.kind = FinishingKind::Upscaler;
            model.architecture = Some(upscaler.architecture().to_string());
            model.scale = Some(upscaler.scale());
            return Ok(model);
        }
        Err(e) => e,
    };
    match Rife::load(path, &Device::Cpu, DType::F32) {
        Ok(rife) => {
            model.kind = FinishingKind::Interpolator;
            model.architecture = Some("RIFE".into());
            model.version = Some(rife.version().to_string());
        }
        Err(rife) => {
            model.error = Some(format!(
                "neither an upscaler ({upscaler:#}) nor a RIFE flownet ({rife:#})"
            ));
        }
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
    let outcome = app
        .gpu
        .with_finishing(&resolved.spec, on_progress, |models, device, report| {
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
        });
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
