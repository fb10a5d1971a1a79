//! The plugin job kinds the web UI submits, on the CPU lane: `plan` (script → the storyboard's
//! shots and bible), `expand` (a shot → its prompt, without changing the shot) and `stitch`
//! (chosen takes → one rendered video asset). Each parses its parameters and calls
//! [`super::calls`]; a plugin failure fails the job with the runtime's explanation. A plugin's
//! trap, timeout or limit breach would happen again on a retry, so these jobs get one attempt
//! unless their submitter asks for more (a crash of the studio mid-call marks them
//! interrupted).

use super::calls::{self, Bible, PlanRequest};
use crate::app::App;
use crate::error::{Result, StudioError};
use crate::finishing::{self, Finished};
use crate::jobs::steps::{run_step, step_result};
use crate::jobs::{JobContext, JobRunner, Lane, NewJob};
use crate::projects::get_storyboard;
use crate::shoot::block_on;
use crate::shots::get_shot;
use serde::Deserialize;
use serde_json::{Value, json};
use videosdgx_engine::finishing::finish::{ClipShape, FinishTarget};

fn parse<T: for<'de> Deserialize<'de>>(kind: &str, params: &Value) -> Result<T> {
    serde_json::from_value(params.clone())
        .map_err(|e| StudioError::Invalid(format!("parameters of a {kind} job: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanParams {
    storyboard_id: i64,
    script: String,
    plugin: Option<String>,
    #[serde(default = "yes")]
    title_cards: bool,
    /// Replace shots that have generated takes (refused otherwise).
    #[serde(default)]
    replace: bool,
}

fn yes() -> bool {
    true
}

/// `plan`: runs the planner plugin on a script and writes the storyboard's shots and bible.
pub struct Plan;

impl JobRunner for Plan {
    fn kind(&self) -> &'static str {
        "plan"
    }
    fn lane(&self) -> Lane {
        Lane::Cpu
    }
    fn default_attempts(&self) -> u32 {
        1
    }
    fn check(&self, app: &App, params: &Value) -> Result<()> {
        let p: PlanParams = parse(self.kind(), params)?;
        if p.script.trim().is_empty() {
            return Err(StudioError::Invalid("the script is empty".into()));
        }
        get_storyboard(&app.db, p.storyboard_id)?;
        super::registry::choose(
            &app.db,
            videosdgx_plugin_host::World::Planner,
            p.plugin.as_deref(),
        )?;
        calls::refuse_losing_takes(app, p.storyboard_id, p.replace)
    }
    fn run(&self, _app: &App, ctx: &JobContext, params: &Value) -> Result<Value> {
        let p: PlanParams = parse(self.kind(), params)?;
        let board = get_storyboard(&ctx.app().db, p.storyboard_id)?;
        let request = PlanRequest {
            storyboard_id: p.storyboard_id,
            script: p.script,
            plugin: p.plugin,
            render: Bible::parse(&board.description).render_settings(),
            title_cards: p.title_cards,
            replace: p.replace,
        };
        let outcome = calls::plan(&ctx.app(), Some(ctx.job_id()), &request, &mut |s, i, n| {
            ctx.progress(s, i, n)
        })?;
        Ok(serde_json::to_value(outcome).map_err(anyhow::Error::from)?)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpandParams {
    shot_id: i64,
    plugin: Option<String>,
}

/// `expand`: the expander plugin's prompt and negative prompt for a shot (the shot is left as
/// it is; the user decides whether to use them).
pub struct Expand;

impl JobRunner for Expand {
    fn kind(&self) -> &'static str {
        "expand"
    }
    fn lane(&self) -> Lane {
        Lane::Cpu
    }
    fn default_attempts(&self) -> u32 {
        1
    }
    fn check(&self, app: &App, params: &Value) -> Result<()> {
        let p: ExpandParams = parse(self.kind(), params)?;
        get_shot(&app.db, p.shot_id)?;
        super::registry::choose(
            &app.db,
            videosdgx_plugin_host::World::Expander,
            p.plugin.as_deref(),
        )
        .map(drop)
    }
    fn run(&self, _app: &App, ctx: &JobContext, params: &Value) -> Result<Value> {
        let p: ExpandParams = parse(self.kind(), params)?;
        let app = ctx.app();
        let board = get_storyboard(&app.db, get_shot(&app.db, p.shot_id)?.storyboard_id)?;
        let prompt = calls::expand(
            &app,
            Some(ctx.job_id()),
            p.shot_id,
            p.plugin.as_deref(),
            &Bible::parse(&board.description).render_settings(),
            &mut |s, i, n| ctx.progress(s, i, n),
        )?;
        Ok(json!({
            "shot_id": p.shot_id,
            "prompt": prompt.prompt,
            "negative_prompt": prompt.negative_prompt,
            "keyframe_prompt": prompt.keyframe_prompt,
        }))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StitchParams {
    storyboard_id: i64,
    plugin: Option<String>,
    /// Finish the stitched piece to this target (`4k24`): the delivered file is the finished
    /// one.
    #[serde(default)]
    finish: Option<FinishTarget>,
}

/// `stitch`: the stitcher plugin's edit of the chosen takes, rendered to one MP4 asset, then,
/// with `finish`, finished by a `finish` job on the GPU lane into the delivered asset.
pub struct Stitch;

impl JobRunner for Stitch {
    fn kind(&self) -> &'static str {
        "stitch"
    }
    fn lane(&self) -> Lane {
        Lane::Cpu
    }
    fn default_attempts(&self) -> u32 {
        1
    }
    fn check(&self, app: &App, params: &Value) -> Result<()> {
        let p: StitchParams = parse(self.kind(), params)?;
        let board = get_storyboard(&app.db, p.storyboard_id)?;
        super::registry::choose(
            &app.db,
            videosdgx_plugin_host::World::Stitcher,
            p.plugin.as_deref(),
        )?;
        if let Some(target) = &p.finish {
            // The piece is rendered at the storyboard's size and the models' rate.
            let render = Bible::parse(&board.description).render_settings();
            let profile = calls::model_profile(&render, &calls::video_rules(app, None));
            let piece = ClipShape {
                width: profile.width,
                height: profile.height,
                frames: profile.max_frames as usize,
                fps: f64::from(profile.fps),
            };
            finishing::check_available(app, piece, target)?;
        }
        Ok(())
    }
    fn run(&self, _app: &App, ctx: &JobContext, params: &Value) -> Result<Value> {
        let p: StitchParams = parse(self.kind(), params)?;
        let outcome = calls::stitch(
            &ctx.app(),
            Some(ctx.job_id()),
            p.storyboard_id,
            p.plugin.as_deref(),
            &mut |s, i, n| ctx.progress(s, i, n),
        )?;
        let Some(target) = p.finish else {
            return Ok(json!({
                "storyboard_id": p.storyboard_id,
                "asset_id": outcome.asset.id,
                "plugin": outcome.plugin,
                "timeline": outcome.timeline,
            }));
        };
        let new = NewJob {
            kind: "finish".into(),
            params: json!({ "asset_id": outcome.asset.id, "target": target }),
            max_attempts: None,
            project_id: outcome.asset.project_id,
        };
        let done = block_on(run_step(&ctx.app(), new, "finish", &mut |s, i, n| {
            ctx.progress(s, i, n)
        }))??;
        let finished: Finished = step_result(done)?;
        Ok(json!({
            "storyboard_id": p.storyboard_id,
            "asset_id": finished.asset_id,
            "stitched_asset_id": outcome.asset.id,
            "plugin": outcome.plugin,
            "timeline": outcome.timeline,
            "finish": finished,
        }))
    }
}
