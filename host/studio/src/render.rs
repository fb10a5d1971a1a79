//! Headless storyboard-to-video, what `videosdgx render` runs: plan the script (or brief) into a
//! new storyboard with the planner plugin, expand every shot's prompt with the expander plugin
//! (written into the shot), when the project uses keyframes make a look of every character on
//! screen that has none chosen and a keyframe of every shot ([`crate::keyframes`]), shoot every
//! shot (generate from its keyframe, review, regenerate: [`crate::shoot`];
//! recorded as generations, takes and reviews), stitch the chosen takes with the stitcher
//! plugin, and copy the rendered MP4 out. Looks, keyframes and shots each run as many at a time
//! as there are cards. Every step is a job of the kind the web UI submits
//! (`plan`, `expand`, `look`, `keyframe`, `shoot`, `stitch`), run by the job queue's workers in this process and
//! recorded like any other; nothing here is CLI-specific and nothing here does a step's work
//! itself. With `finish` the stitch step finishes the piece (a `finish` job on the GPU lane:
//! upscaled, retimed, re-encoded) and the finished file is what is delivered.

use crate::app::App;
use crate::assets::get_asset;
use crate::error::{Result, StudioError};
use crate::finishing::{self, Finished};
use crate::generation::{Length, RenderSettings};
use crate::jobs::NewJob;
use crate::jobs::steps::{run_step, step_result};
use crate::keyframes::{self, KeyframeOutcome, LookOutcome};
use crate::plugins::calls::PlanOutcome;
use crate::plugins::registry;
use crate::projects::{self, ProjectFields};
use crate::server::{QueueWorkers, ServerLock};
use crate::shoot::{self, Attempt, ShootOutcome};
use crate::shots::{self, ShotFields};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use videosdgx_engine::finishing::finish::{ClipShape, FinishTarget};
use videosdgx_plugin_host::World;
use videosdgx_plugin_host::types::Timeline;

/// Hears `(stage, step, total)` of every job of a render; `Break` cancels the running job.
pub use crate::jobs::steps::Progress;

/// What to render.
#[derive(Debug, Clone)]
pub struct RenderRequest {
    /// A Markdown screenplay, or a brief for the planner to turn into one.
    pub script: String,
    /// The project to add the storyboard to (created when missing); the script's title when
    /// absent.
    pub project: Option<String>,
    /// An installed model's name; the only installed model when absent.
    pub model: Option<String>,
    pub render: RenderSettings,
    /// Takes per shot at most (the project's limit); the project's own when absent.
    pub max_attempts: Option<u32>,
    /// Where the final MP4 is written.
    pub out: PathBuf,
    /// Finish the stitched piece to this target (`4k24`) before delivering it.
    pub finish: Option<FinishTarget>,
}

/// One shot of a render: its chosen take, and every attempt the review loop made.
#[derive(Debug, Clone, Serialize)]
pub struct RenderedShot {
    pub shot_id: i64,
    /// The `shoot` job that made its takes.
    pub job_id: i64,
    /// The chosen take: what the stitch shows.
    pub take_id: i64,
    pub prompt: String,
    pub negative_prompt: String,
    pub asset_id: i64,
    pub generation_id: i64,
    pub frames: usize,
    pub seed: u64,
    /// Every take generated, in order, with its review.
    pub attempts: Vec<Attempt>,
    /// Why this shot needs the user's attention (every attempt failed review).
    pub attention: Option<String>,
    /// How its review ended early (a failing reviewer), if it did.
    pub review_note: Option<String>,
    /// The keyframe its takes started from, when the render made keyframes.
    pub keyframe: Option<KeyframeOutcome>,
}

/// What `render` did, for the terminal and `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct RenderReport {
    pub project_id: i64,
    pub storyboard_id: i64,
    pub title: String,
    pub shots: Vec<RenderedShot>,
    /// Why takes went unreviewed (no reviewer, or no language model that sees images).
    pub review_note: Option<String>,
    /// The character looks made for the shots' keyframes (one per character on screen that had
    /// no chosen look).
    pub looks: Vec<LookOutcome>,
    /// Why shots did not start from keyframes, when they did not.
    pub keyframes_note: Option<String>,
    /// The delivered video in the asset library (the finished piece when finishing).
    pub asset_id: i64,
    /// The finish of the stitched piece, when asked for.
    pub finish: Option<Finished>,
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

/// A title for a brief: its first line, cut at a word within 60 characters.
fn brief_title(brief: &str) -> String {
    let line = brief
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("Untitled");
    let mut title = String::new();
    for word in line.split_whitespace() {
        if title.len() + word.len() >= 60 {
            break;
        }
        if !title.is_empty() {
            title.push(' ');
        }
        title.push_str(word);
    }
    if title.is_empty() {
        line.chars().take(60).collect()
    } else {
        title
    }
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
    let model = crate::models::resolve_model(app.data_dir(), request.model.as_deref())?;
    let dir = crate::models::video_model_dir(app.data_dir(), &model)?;
    // The shots' lengths are planned later (each shot's job is checked with its own): the
    // shortest clip has the fewest tokens, and one frame is a length every model makes.
    let size = request.render.check_size(&model, &dir, Length::Frames(1))?;
    app.gpus.check_split(&request.render, &model, &dir, size)?;
    let keyframes = keyframes_plan(app, request, &model)?;
    if let Some(target) = &request.finish {
        let rules = crate::plugins::calls::video_rules(app, Some(&model));
        let profile = crate::plugins::calls::model_profile(&request.render, &rules);
        let piece = ClipShape {
            width: profile.width,
            height: profile.height,
            frames: profile.max_frames as usize,
            fps: f64::from(profile.fps),
        };
        finishing::check_available(app, piece, target)?;
    }
    let lock = ServerLock::acquire(app.data_dir())?;
    let workers = QueueWorkers::start(app, lock).await?;
    let outcome = render_on_queue(app, request, keyframes, progress).await;
    workers.stop().await;
    outcome
}

/// Whether the render makes keyframes (`Ok`), or why not (`Err`): the project's setting (on by
/// default when an image model and an image-to-video model are installed), and whether the
/// render's model starts from an image. A project that asks for keyframes without an image model
/// installed is refused.
fn keyframes_plan(
    app: &App,
    request: &RenderRequest,
    model: &str,
) -> Result<std::result::Result<(), String>> {
    let title = script_title(&request.script).unwrap_or_else(|| brief_title(&request.script));
    let name = request.project.as_deref().unwrap_or(&title);
    let wanted = match projects::list_projects(&app.db)?
        .into_iter()
        .find(|p| p.name == name)
    {
        Some(project) => keyframes::enabled(app, &project)?,
        None => crate::models::keyframes_possible(app.data_dir())?,
    };
    if !wanted {
        return Ok(Err(
            "keyframes are off (the project's setting, or no image model and image-to-video model installed)"
                .into(),
        ));
    }
    crate::models::image_model(app.data_dir(), request.render.image_model.as_deref())?;
    let video = crate::models::video_models(app.data_dir())?
        .into_iter()
        .find(|m| m.name == model);
    if !video.as_ref().is_some_and(crate::models::takes_start_image) {
        return Ok(Err(format!(
            "keyframes are not used: `{model}` is a text-to-video model"
        )));
    }
    Ok(Ok(()))
}

async fn render_on_queue(
    app: &Arc<App>,
    request: &RenderRequest,
    keyframes: std::result::Result<(), String>,
    progress: Progress<'_>,
) -> Result<RenderReport> {
    let title = script_title(&request.script).unwrap_or_else(|| brief_title(&request.script));
    let project = project_named(app, request.project.as_deref().unwrap_or(&title))?;
    // The plan, expand and stitch jobs read the render settings from the storyboard's bible,
    // as they do for a storyboard the web UI made.
    let bible = json!({ "render": request.render });
    let board = projects::create_storyboard(&app.db, project.id, &title, &bible.to_string())?;
    if let Some(max_attempts) = request.max_attempts {
        let fields = ProjectFields {
            max_attempts: Some(max_attempts),
            ..Default::default()
        };
        projects::update_project(&app.db, project.id, &fields)?;
    }
    let review_note = shoot::reviews_off(app, None);
    let job = |kind: &str, params: Value| NewJob {
        kind: kind.into(),
        params,
        max_attempts: None,
        project_id: Some(project.id),
    };

    let params =
        json!({ "storyboard_id": board.id, "script": request.script, "title_cards": true });
    let plan: PlanOutcome =
        step_result(run_step(app, job("plan", params), "plan", progress).await?)?;
    let count = plan.shot_ids.len();

    for (index, &shot_id) in plan.shot_ids.iter().enumerate() {
        let what = format!("expand {}/{count}", index + 1);
        let params = json!({ "shot_id": shot_id });
        let expanded: Expanded =
            step_result(run_step(app, job("expand", params), &what, progress).await?)?;
        let fields = ShotFields {
            prompt: Some(expanded.prompt),
            negative_prompt: Some(expanded.negative_prompt),
            keyframe_prompt: Some(expanded.keyframe_prompt),
            model: request.model.clone(),
            ..Default::default()
        };
        shots::update_shot(&app.db, shot_id, &fields)?;
    }

    // Keyframes: a look per character on screen (unless one is chosen already), then a still
    // per shot from the chosen looks; each shot's takes start from its still.
    let mut looks = Vec::new();
    let mut stills = vec![None; count];
    if keyframes.is_ok() {
        let mut on_screen: Vec<String> = Vec::new();
        for &shot_id in &plan.shot_ids {
            for character in crate::plugins::calls::shot_characters(app, shot_id)? {
                if !on_screen.contains(&character.id) {
                    on_screen.push(character.id);
                }
            }
        }
        let chosen: Vec<String> = keyframes::list_looks(&app.db, board.id)?
            .into_iter()
            .filter(|l| l.chosen)
            .map(|l| l.character_id)
            .collect();
        let steps = on_screen
            .iter()
            .filter(|c| !chosen.contains(c))
            .map(|character| {
                let params = json!({
                    "storyboard_id": board.id, "character_id": character, "render": request.render,
                });
                (job("look", params), format!("look of {character}"))
            });
        for made in run_together(app, steps.collect(), progress).await? {
            looks.push(step_result(made)?);
        }
        let steps = plan.shot_ids.iter().enumerate().map(|(index, &shot_id)| {
            let params = json!({ "shot_id": shot_id, "render": request.render });
            (
                job("keyframe", params),
                format!("keyframe {}/{count}", index + 1),
            )
        });
        for (still, made) in stills
            .iter_mut()
            .zip(run_together(app, steps.collect(), progress).await?)
        {
            *still = Some(step_result::<KeyframeOutcome>(made)?);
        }
    }

    let steps = plan.shot_ids.iter().enumerate().map(|(index, &shot_id)| {
        let params = json!({ "shot_id": shot_id, "render": request.render });
        (job("shoot", params), format!("shot {}/{count}", index + 1))
    });
    let shoots = run_together(app, steps.collect(), progress).await?;
    let mut rendered = Vec::new();
    for ((index, &shot_id), done) in plan.shot_ids.iter().enumerate().zip(shoots) {
        let what = format!("shot {}/{count}", index + 1);
        let job_id = done.id;
        let shot: ShootOutcome = step_result(done)?;
        let chosen = shot
            .attempts
            .iter()
            .find(|a| Some(a.take_id) == shot.chosen_take_id)
            .or(shot.attempts.last())
            .ok_or_else(|| StudioError::Internal(anyhow::anyhow!("{what} made no take")))?;
        rendered.push(RenderedShot {
            shot_id,
            job_id,
            take_id: chosen.take_id,
            prompt: chosen.prompt.clone(),
            negative_prompt: chosen.negative_prompt.clone(),
            asset_id: chosen.asset_id,
            generation_id: chosen.generation_id,
            frames: chosen.frames,
            seed: chosen.seed,
            attention: shot.attention.clone(),
            review_note: shot.review_note.filter(|_| review_note.is_none()),
            attempts: shot.attempts,
            keyframe: stills[index].take(),
        });
    }

    let mut params = json!({ "storyboard_id": board.id });
    if let Some(target) = &request.finish {
        params["finish"] = json!(target);
    }
    let stitched: Stitched =
        step_result(run_step(app, job("stitch", params), "stitch", progress).await?)?;
    let asset = get_asset(&app.db, stitched.asset_id)?;
    copy_out(&app.assets.file_of(&asset), &request.out)?;
    let info = videosdgx_engine::video::probe(&request.out)
        .map_err(|e| StudioError::Internal(e.context("probing the final video")))?;
    Ok(RenderReport {
        project_id: project.id,
        storyboard_id: board.id,
        title,
        shots: rendered,
        review_note,
        looks,
        keyframes_note: keyframes.err(),
        asset_id: asset.id,
        finish: stitched.finish,
        out: request.out.clone(),
        width: info.width,
        height: info.height,
        frames: info.frames,
        fps: info.fps,
        duration_s: info.duration,
        timeline: stitched.timeline,
    })
}

/// Runs independent steps as many at a time as there are cards, so that the queue spreads them
/// over the cards (one after the other on one card, as the one card would run them anyway), and
/// returns their jobs in order. The first to fail stops the render; dropping the steps still
/// running cancels their jobs.
async fn run_together(
    app: &Arc<App>,
    steps: Vec<(NewJob, String)>,
    progress: Progress<'_>,
) -> Result<Vec<crate::jobs::Job>> {
    let progress = std::sync::Mutex::new(progress);
    let heard = &progress;
    stream::iter(steps)
        .map(|(new, what)| async move {
            let mut relay = |stage: &str, step, total| {
                (heard.lock().unwrap_or_else(|p| p.into_inner()))(stage, step, total)
            };
            run_step(app, new, &what, &mut relay).await
        })
        .buffered(app.gpus.len().max(1))
        .try_collect()
        .await
}

/// What an `expand` job returns.
#[derive(Deserialize)]
struct Expanded {
    prompt: String,
    negative_prompt: String,
    keyframe_prompt: String,
}

/// What a `stitch` job returns.
#[derive(Deserialize)]
struct Stitched {
    asset_id: i64,
    timeline: Timeline,
    finish: Option<Finished>,
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
