//! Headless storyboard-to-video, what `videosdgx render` runs: plan the script into a new
//! storyboard with the planner plugin, expand every shot's prompt with the expander plugin
//! (written into the shot), generate every shot on the engine (recorded as generations and
//! takes), stitch the takes with the stitcher plugin, and copy the rendered MP4 out. Every step
//! is a job of the kind the web UI submits (`plan`, `expand`, `generate`, `stitch`), run by the
//! job queue's workers in this process and recorded like any other; nothing here is
//! CLI-specific and nothing here does a step's work itself.

use crate::app::App;
use crate::assets::get_asset;
use crate::error::{Result, StudioError};
use crate::generation::{self, RenderSettings};
use crate::jobs::{self, Job, JobState, NewJob};
use crate::plugins::calls::PlanOutcome;
use crate::plugins::registry;
use crate::projects;
use crate::server::{QueueWorkers, ServerLock};
use crate::shots::{self, ShotFields};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use videosdgx_engine::pipelines::GenerateParams;
use videosdgx_plugin_host::World;
use videosdgx_plugin_host::types::Timeline;

/// Hears `(stage, step, total)` of every job of a render; `Break` cancels the running job.
pub type Progress<'a> = &'a mut (dyn FnMut(&str, u64, u64) -> ControlFlow<()> + Send);

/// What to render.
#[derive(Debug, Clone)]
pub struct RenderRequest {
    /// Markdown screenplay.
    pub script: String,
    /// The project to add the storyboard to (created when missing); the script's title when
    /// absent.
    pub project: Option<String>,
    /// An installed model's name; the only installed model when absent.
    pub model: Option<String>,
    pub render: RenderSettings,
    /// Where the final MP4 is written.
    pub out: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct RenderedShot {
    pub shot_id: i64,
    /// The `generate` job that made it.
    pub job_id: i64,
    pub prompt: String,
    pub negative_prompt: String,
    pub asset_id: i64,
    pub generation_id: i64,
    pub frames: usize,
    pub seed: u64,
}

/// What `render` did, for the terminal and `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct RenderReport {
    pub project_id: i64,
    pub storyboard_id: i64,
    pub title: String,
    pub shots: Vec<RenderedShot>,
    /// The stitched video in the asset library.
    pub asset_id: i64,
    pub out: PathBuf,
    pub width: u32,
    pub height: u32,
    pub frames: usize,
    pub fps: f64,
    pub duration_s: f64,
    /// The stitcher's edit list.
    pub timeline: Timeline,
}

/// `# Title` of a Markdown screenplay, if it has one.
fn script_title(script: &str) -> Option<String> {
    script
        .lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix("# "))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

fn project_named(app: &App, name: &str) -> Result<projects::Project> {
    let existing = projects::list_projects(&app.db)?
        .into_iter()
        .find(|p| p.name == name);
    match existing {
        Some(project) => Ok(project),
        None => projects::create_project(&app.db, name),
    }
}

/// Runs the whole pipeline as jobs on the queue, with the queue's workers running in this
/// process for the length of the render (so no `serve` may be running on the same data
/// directory; jobs queued before run first, in order). `progress(stage, step, total)` hears
/// every job's progress; `Break` cancels the running job and ends the render with an error.
pub async fn render(
    app: &Arc<App>,
    request: &RenderRequest,
    progress: Progress<'_>,
) -> Result<RenderReport> {
    request.render.check()?;
    // Refuse before anything is written when a step could not run.
    for world in [World::Planner, World::Expander, World::Stitcher] {
        registry::choose(&app.db, world, None)?;
    }
    generation::resolve_model(app.data_dir(), request.model.as_deref())?;
    let lock = ServerLock::acquire(app.data_dir())?;
    let workers = QueueWorkers::start(app, lock).await?;
    let outcome = render_on_queue(app, request, progress).await;
    workers.stop().await;
    outcome
}

async fn render_on_queue(
    app: &Arc<App>,
    request: &RenderRequest,
    progress: Progress<'_>,
) -> Result<RenderReport> {
    let title = script_title(&request.script).unwrap_or_else(|| "Untitled".into());
    let project = project_named(app, request.project.as_deref().unwrap_or(&title))?;
    // The plan, expand and stitch jobs read the render settings from the storyboard's bible,
    // as they do for a storyboard the web UI made.
    let bible = json!({ "render": request.render });
    let board = projects::create_storyboard(&app.db, project.id, &title, &bible.to_string())?;
    let job = |kind: &str, params: Value| NewJob {
        kind: kind.into(),
        params,
        max_attempts: None,
        project_id: Some(project.id),
    };

    let params =
        json!({ "storyboard_id": board.id, "script": request.script, "title_cards": true });
    let plan: PlanOutcome = result(run(app, job("plan", params), "plan", progress).await?)?;
    let count = plan.shot_ids.len();

    for (index, &shot_id) in plan.shot_ids.iter().enumerate() {
        let what = format!("expand {}/{count}", index + 1);
        let params = json!({ "shot_id": shot_id });
        let expanded: Expanded = result(run(app, job("expand", params), &what, progress).await?)?;
        let fields = ShotFields {
            prompt: Some(expanded.prompt),
            negative_prompt: Some(expanded.negative_prompt),
            model: request.model.clone(),
            ..Default::default()
        };
        shots::update_shot(&app.db, shot_id, &fields)?;
    }

    let mut rendered = Vec::new();
    for (index, &shot_id) in plan.shot_ids.iter().enumerate() {
        let what = format!("shot {}/{count}", index + 1);
        let params = json!({ "shot_id": shot_id, "render": request.render });
        let done = run(app, job("generate", params), &what, progress).await?;
        let job_id = done.id;
        let generated: Generated = result(done)?;
        rendered.push(RenderedShot {
            shot_id,
            job_id,
            prompt: generated.params.prompt,
            negative_prompt: generated.params.negative_prompt,
            asset_id: generated.asset_id,
            generation_id: generated.generation_id,
            frames: generated.params.frames,
            seed: generated.params.seed,
        });
    }

    let params = json!({ "storyboard_id": board.id });
    let stitched: Stitched = result(run(app, job("stitch", params), "stitch", progress).await?)?;
    let asset = get_asset(&app.db, stitched.asset_id)?;
    copy_out(&app.assets.file_of(&asset), &request.out)?;
    let info = videosdgx_engine::video::probe(&request.out)
        .map_err(|e| StudioError::Internal(e.context("probing the final video")))?;
    Ok(RenderReport {
        project_id: project.id,
        storyboard_id: board.id,
        title,
        shots: rendered,
        asset_id: asset.id,
        out: request.out.clone(),
        width: info.width,
        height: info.height,
        frames: info.frames,
        fps: info.fps,
        duration_s: info.duration,
        timeline: stitched.timeline,
    })
}

/// What an `expand` job returns.
#[derive(Deserialize)]
struct Expanded {
    prompt: String,
    negative_prompt: String,
}

/// What a `generate` job returns.
#[derive(Deserialize)]
struct Generated {
    asset_id: i64,
    generation_id: i64,
    params: GenerateParams,
}

/// What a `stitch` job returns.
#[derive(Deserialize)]
struct Stitched {
    asset_id: i64,
    timeline: Timeline,
}

/// A succeeded job's result, as the job kind's runner writes it.
fn result<T: DeserializeOwned>(job: Job) -> Result<T> {
    serde_json::from_value(job.result.unwrap_or_default()).map_err(|e| {
        StudioError::Internal(anyhow::anyhow!(
            "job {} ({}) returned an unexpected result: {e}",
            job.id,
            job.kind
        ))
    })
}

/// Runs one job to its end, relaying its progress as `what: stage`; the job when it
/// succeeded, else an error naming `what` and the job.
async fn run(app: &Arc<App>, new: NewJob, what: &str, progress: Progress<'_>) -> Result<Job> {
    let job = jobs::run_to_end(app, new, &mut |p| {
        progress(&format!("{what}: {}", p.stage), p.step, p.total)
    })
    .await
    .map_err(|err| match err {
        // Refused at submission: say which step was.
        StudioError::Invalid(m) => StudioError::Invalid(format!("{what}: {m}")),
        StudioError::Conflict(m) => StudioError::Conflict(format!("{what}: {m}")),
        other => other.context_internal(what.to_string()),
    })?;
    let failure = match job.state {
        JobState::Succeeded => return Ok(job),
        JobState::Cancelled => {
            return Err(StudioError::Conflict(format!(
                "render stopped: {what} (job {}) was cancelled",
                job.id
            )));
        }
        JobState::Interrupted => "was interrupted",
        _ => "failed",
    };
    Err(StudioError::Internal(anyhow::anyhow!(
        "{what} (job {}) {failure}: {}",
        job.id,
        job.error.as_deref().unwrap_or("no error recorded")
    )))
}

/// Copies the final video to `out` so that `out` is either absent or complete.
fn copy_out(source: &Path, out: &Path) -> Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let partial = out.with_extension("mp4.partial");
    std::fs::copy(source, &partial)?;
    std::fs::rename(&partial, out)?;
    Ok(())
}
