//! Headless storyboard-to-video, what `videosdgx render` runs: plan the script into a new
//! storyboard with the planner plugin, expand every shot's prompt with the expander plugin
//! (written into the shot), generate every shot on the engine (recorded as generations and
//! takes), stitch the takes with the stitcher plugin, and copy the rendered MP4 out. Every step
//! goes through the same studio operations the web UI's jobs use; nothing here is CLI-specific.

use crate::app::App;
use crate::error::{Result, StudioError};
use crate::generation::RenderSettings;
use crate::plugins::calls::{self, PlanRequest};
use crate::plugins::registry;
use crate::projects;
use crate::shots::{self, ShotFields};
use serde::Serialize;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use videosdgx_plugin_host::World;

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
    pub timeline: videosdgx_plugin_host::types::Timeline,
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

/// Runs the whole pipeline; `progress(stage, step, total)` hears every step (`Break` stops).
pub fn render(
    app: &Arc<App>,
    request: &RenderRequest,
    progress: &mut dyn FnMut(&str, u64, u64) -> ControlFlow<()>,
) -> Result<RenderReport> {
    request.render.check()?;
    // Refuse before anything is written when a step could not run.
    for world in [World::Planner, World::Expander, World::Stitcher] {
        registry::choose(&app.db, world, None)?;
    }
    let title = script_title(&request.script).unwrap_or_else(|| "Untitled".into());
    let project = project_named(app, request.project.as_deref().unwrap_or(&title))?;
    let board = projects::create_storyboard(&app.db, project.id, &title, "")?;

    let plan = calls::plan(
        app,
        None,
        &PlanRequest {
            storyboard_id: board.id,
            script: request.script.clone(),
            plugin: None,
            render: request.render.clone(),
            title_cards: true,
        },
        &mut |stage, step, total| progress(&format!("plan: {stage}"), step, total),
    )?;
    let count = plan.shot_ids.len() as u64;

    for (index, &shot_id) in plan.shot_ids.iter().enumerate() {
        let expanded = calls::expand(app, None, shot_id, None, &request.render, &mut |_, _, _| {
            progress("expand", index as u64, count)
        })?;
        let fields = ShotFields {
            prompt: Some(expanded.prompt),
            negative_prompt: Some(expanded.negative_prompt),
            model: request.model.clone(),
            ..Default::default()
        };
        shots::update_shot(&app.db, shot_id, &fields)?;
    }
    let _ = progress("expand", count, count);

    let mut rendered = Vec::new();
    for (index, &shot_id) in plan.shot_ids.iter().enumerate() {
        let stage = format!("shot {}/{count}", index + 1);
        let output = app.generator.generate_shot(
            app,
            None,
            shot_id,
            &request.render,
            &mut |what, step, total| progress(&format!("{stage}: {what}"), step, total),
        )?;
        rendered.push(RenderedShot {
            shot_id,
            prompt: output.params.prompt.clone(),
            negative_prompt: output.params.negative_prompt.clone(),
            asset_id: output.asset.id,
            generation_id: output.generation_id,
            frames: output.params.frames,
            seed: output.params.seed,
        });
    }

    let stitched = calls::stitch(app, None, board.id, None, &mut |what, step, total| {
        progress(&format!("stitch: {what}"), step, total)
    })?;
    let source = app.assets.file_of(&stitched.asset);
    copy_out(&source, &request.out)?;
    let info = videosdgx_engine::video::probe(&request.out)
        .map_err(|e| StudioError::Internal(e.context("probing the final video")))?;
    Ok(RenderReport {
        project_id: project.id,
        storyboard_id: board.id,
        title,
        shots: rendered,
        asset_id: stitched.asset.id,
        out: request.out.clone(),
        width: info.width,
        height: info.height,
        frames: info.frames,
        fps: info.fps,
        duration_s: info.duration,
        timeline: stitched.timeline,
    })
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
