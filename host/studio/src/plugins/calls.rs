//! The four things plugins do for a storyboard, as studio operations: plan a script into its
//! shots and bible, expand one shot into a model-ready prompt, review a generated take, and
//! stitch the chosen takes into one rendered video. Each turns studio rows into the plugin API's records, runs the chosen
//! plugin in the sandbox on a private executor (relaying its progress, stopping it on request)
//! and writes what came back. A plugin that traps or breaches a limit fails the operation with
//! the runtime's explanation; nothing else is affected.

use super::registry;
use super::services::{CallMonitor, StudioServices, clip_info};
use crate::app::App;
use crate::assets::{Asset, get_asset};
use crate::error::{Result, StudioError};
use crate::generation::RenderSettings;
use crate::projects::{self, get_storyboard};
use crate::shots::{self, ShotFields};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;
use videosdgx_engine::pipelines::{Pipeline, VideoRules};
use videosdgx_plugin_host::types::{
    Camera, CameraMove, Character, GeneratedClip, ModelProfile, PlanInput, ProjectSettings, Scene,
    Shot, ShotPrompt, ShotSize, Storyboard, Style, Take, TakeReview, Timeline, Transition,
    TransitionKind,
};
use videosdgx_plugin_host::{CallContext, CallError, Limits, World};

/// Receives `(stage, step, total)`; `Break` stops the plugin call.
pub type Report<'a> = &'a mut dyn FnMut(&str, u64, u64) -> ControlFlow<()>;

/// Default durations of the transitions a shot's `transition` names.
const CROSSFADE_MS: u32 = 600;
const FADE_MS: u32 = 800;
/// How often a running call's progress is relayed (and a stop request noticed).
const RELAY_EVERY: Duration = Duration::from_millis(250);

/// What plans are fitted to: the video model's family, rate and frame rule at the size
/// generation will use.
pub fn model_profile(render: &RenderSettings, rules: &VideoRules) -> ModelProfile {
    ModelProfile {
        family: rules.family.clone(),
        width: render.width as u32,
        height: render.height as u32,
        fps: rules.fps,
        max_frames: rules.max_frames,
        frame_step: rules.frame_step,
    }
}

/// The rules of the video model `model` names (else the only one installed); Wan 2.1's when
/// none can be named, so planning works before any model is installed.
pub fn video_rules(app: &App, model: Option<&str>) -> VideoRules {
    crate::models::resolve_model(app.data_dir(), model)
        .and_then(|name| crate::models::video_model_dir(app.data_dir(), &name))
        .ok()
        .and_then(|dir| Pipeline::video_rules(&dir).ok().flatten())
        .unwrap_or_else(VideoRules::wan)
}

/// Runs one plugin call to its end on a private executor, relaying the progress its host
/// calls report to `report` and stopping it when `report` says so.
fn drive<T>(
    label: &str,
    monitor: &CallMonitor,
    report: Report,
    call: impl Future<Output = std::result::Result<T, CallError>>,
) -> Result<T> {
    let stopped = || StudioError::Internal(anyhow::anyhow!("{label} was stopped"));
    if report(label, 0, 1).is_break() {
        return Err(stopped());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let outcome = runtime.block_on(async {
        let mut call = std::pin::pin!(call);
        let mut tick = tokio::time::interval(RELAY_EVERY);
        let mut last = (label.to_string(), 0, 1);
        loop {
            tokio::select! {
                outcome = &mut call => {
                    return outcome.map_err(|e| StudioError::Internal(anyhow::anyhow!("{e}")));
                }
                _ = tick.tick() => {
                    if let Some(latest) = monitor.take() {
                        last = latest;
                    }
                    if report(&last.0, last.1, last.2).is_break() {
                        // Host work for the plugin (a generation, a render) sees this and ends.
                        monitor.request_stop();
                        return Err(stopped());
                    }
                }
            }
        }
    })?;
    let _ = report(label, 1, 1);
    Ok(outcome)
}

/// Loads plugin `id` and prepares its call context for `project_id`.
fn prepare(
    app: &Arc<App>,
    id: &str,
    project_id: i64,
    job_id: Option<i64>,
) -> Result<(
    Arc<videosdgx_plugin_host::Plugin>,
    CallContext,
    Arc<CallMonitor>,
)> {
    let (plugin, grants) = registry::load(&app.db, &app.plugins, id)?;
    let monitor = Arc::new(CallMonitor::default());
    let services = StudioServices::new(app.clone(), project_id, job_id, monitor.clone());
    let ctx = CallContext {
        services: Arc::new(services),
        grants,
        limits: Limits::default(),
    };
    Ok((plugin, ctx, monitor))
}

/// The bible a storyboard keeps in its description (the web UI edits it): the style and the
/// characters the planner and expander use. A plain-text description is the storyboard's
/// description, not its look: it is kept under `description`, as the web UI keeps it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Bible {
    #[serde(default)]
    pub style: BibleStyle,
    #[serde(default)]
    pub characters: Vec<BibleCharacter>,
    /// What else the bible holds (the web UI's render settings), kept as it is.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BibleStyle {
    #[serde(default)]
    pub look: String,
    #[serde(default)]
    pub lighting: String,
    #[serde(default)]
    pub negative: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BibleCharacter {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
}

impl Bible {
    pub fn parse(description: &str) -> Bible {
        if description.trim().is_empty() {
            return Bible::default();
        }
        serde_json::from_str(description).unwrap_or_else(|_| Bible {
            rest: [("description".into(), description.into())]
                .into_iter()
                .collect(),
            ..Default::default()
        })
    }

    /// The render settings the web UI keeps in the bible; the defaults where it has none.
    pub fn render_settings(&self) -> RenderSettings {
        self.rest
            .get("render")
            .and_then(|r| serde_json::from_value(r.clone()).ok())
            .unwrap_or_default()
    }

    fn style(&self) -> Style {
        Style {
            look: self.style.look.clone(),
            lighting: self.style.lighting.clone(),
            negative: self.style.negative.clone(),
        }
    }

    pub fn characters(&self) -> Vec<Character> {
        self.characters
            .iter()
            .filter(|c| !c.name.trim().is_empty() || !c.id.trim().is_empty())
            .map(|c| Character {
                id: if c.id.trim().is_empty() {
                    character_id(&c.name)
                } else {
                    c.id.clone()
                },
                name: c.name.clone(),
                description: c.description.clone(),
            })
            .collect()
    }
}

/// `Old Mara` → `old-mara`, as the web UI derives ids.
fn character_id(name: &str) -> String {
    name.to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// What the planner returned for a storyboard, kept as a project document so that expansion and
/// stitching see scenes, dialogue and title cards: the plan, and which studio shot came from
/// which planned shot.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PlanRecord {
    storyboard: Storyboard,
    /// Studio shot id → planned shot id.
    shots: BTreeMap<i64, String>,
}

fn plan_document(storyboard_id: i64) -> String {
    format!("storyboard-{storyboard_id}.plan.json")
}

fn read_plan(app: &App, project_id: i64, storyboard_id: i64) -> Result<Option<PlanRecord>> {
    let text: Option<String> = app.db.with(|c| {
        Ok(c.query_row(
            "SELECT content FROM project_documents WHERE project_id = ?1 AND name = ?2",
            params![project_id, plan_document(storyboard_id)],
            |r| r.get(0),
        )
        .optional()?)
    })?;
    // A document a plugin overwrote with something else is ignored, not fatal.
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

/// Parameters of a planning run.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    pub storyboard_id: i64,
    pub script: String,
    /// The planner to use; the enabled one when absent.
    pub plugin: Option<String>,
    pub render: RenderSettings,
    /// Add opening/closing title cards when the script has a title.
    pub title_cards: bool,
    /// Replace shots that already have generated takes (see [`refuse_losing_takes`]).
    pub replace: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanOutcome {
    pub plugin: String,
    pub storyboard_id: i64,
    /// The studio shots written, in order.
    pub shot_ids: Vec<i64>,
    pub title: String,
    pub scenes: usize,
    pub characters: usize,
}

/// Refuses (as a conflict) to re-plan a storyboard whose shots have generated takes unless
/// `replace`: re-planning replaces the shots, and with them the takes' place in the
/// storyboard. Even when replaced, the takes' videos and generation records stay in the
/// asset library; a plan never deletes an asset.
pub fn refuse_losing_takes(app: &App, storyboard_id: i64, replace: bool) -> Result<()> {
    if replace {
        return Ok(());
    }
    let with_takes: Vec<String> = shots::list_shots(&app.db, storyboard_id)?
        .iter()
        .filter(|s| !s.takes.is_empty())
        .map(|s| (s.position + 1).to_string())
        .collect();
    if with_takes.is_empty() {
        return Ok(());
    }
    Err(StudioError::Conflict(format!(
        "storyboard {storyboard_id} already has generated takes (shot {}); planning it again \
         would replace its shots. Plan into a new storyboard, or ask to replace them \
         (`replace: true`); their videos stay in the asset library",
        with_takes.join(", ")
    )))
}

/// Plans `request.script` with the planner plugin and replaces the storyboard's shots with the
/// plan (refused when they have takes, unless `request.replace`); characters and style go into
/// the storyboard's bible (characters already there keep the descriptions the user wrote).
pub fn plan(
    app: &Arc<App>,
    job_id: Option<i64>,
    request: &PlanRequest,
    report: Report,
) -> Result<PlanOutcome> {
    if request.script.trim().is_empty() {
        return Err(StudioError::Invalid("the script is empty".into()));
    }
    let board = get_storyboard(&app.db, request.storyboard_id)?;
    let id = registry::choose(&app.db, World::Planner, request.plugin.as_deref())?;
    refuse_losing_takes(app, board.id, request.replace)?;
    let bible = Bible::parse(&board.description);
    let scene_transition = Transition {
        kind: TransitionKind::Crossfade,
        duration_ms: CROSSFADE_MS,
    };
    let input = PlanInput {
        script: request.script.clone(),
        settings: ProjectSettings {
            title: String::new(),
            style: bible.style(),
            characters: bible.characters(),
            model: model_profile(&request.render, &video_rules(app, None)),
            shot_transition: Transition {
                kind: TransitionKind::Cut,
                duration_ms: 0,
            },
            scene_transition,
            title_cards: request.title_cards,
        },
    };
    let (plugin, ctx, monitor) = prepare(app, &id, board.project_id, job_id)?;
    let runtime = app.plugins.runtime()?;
    let planned = drive(
        &format!("planning with `{id}`"),
        &monitor,
        report,
        runtime.plan(&plugin, &ctx, &input),
    )?;
    if planned.shots.is_empty() {
        return Err(StudioError::Invalid(format!(
            "planner `{id}` found no shots in the script"
        )));
    }
    // Takes may have been generated while the plugin ran.
    refuse_losing_takes(app, board.id, request.replace)?;
    let shot_ids = write_plan(app, &board, &bible, &planned)?;
    Ok(PlanOutcome {
        plugin: id,
        storyboard_id: board.id,
        shot_ids,
        title: planned.title.clone(),
        scenes: planned.scenes.len(),
        characters: planned.characters.len(),
    })
}

/// Replaces the storyboard's shots with the planned ones and merges the planned characters
/// and style into its bible, in one transaction; then records the plan.
fn write_plan(
    app: &App,
    board: &projects::Storyboard,
    bible: &Bible,
    planned: &Storyboard,
) -> Result<Vec<i64>> {
    let mut merged = bible.clone();
    for character in &planned.characters {
        if !merged
            .characters
            .iter()
            .any(|c| c.id == character.id || c.name.eq_ignore_ascii_case(&character.name))
        {
            merged.characters.push(BibleCharacter {
                id: character.id.clone(),
                name: character.name.clone(),
                description: character.description.clone(),
            });
        }
    }
    for (mine, theirs) in [
        (&mut merged.style.look, &planned.style.look),
        (&mut merged.style.lighting, &planned.style.lighting),
        (&mut merged.style.negative, &planned.style.negative),
    ] {
        if mine.trim().is_empty() {
            *mine = theirs.clone();
        }
    }
    let description = serde_json::to_string(&merged).map_err(anyhow::Error::from)?;
    let old: Vec<i64> = shots::list_shots(&app.db, board.id)?
        .iter()
        .map(|s| s.id)
        .collect();
    let mut ids = BTreeMap::new();
    let mut shot_ids = Vec::new();
    // Shots are written through the shots module (its checks and ordering) after the old ones
    // go; a failure part-way leaves the new shots written so far, never a mix with the old.
    // A deleted shot's takes go with it; their assets and generation records stay.
    for id in old {
        shots::delete_shot(&app.db, id)?;
    }
    for shot in &planned.shots {
        let fields = ShotFields {
            prompt: Some(shot.action.clone()),
            duration_s: Some(f64::from(shot.duration_ms.max(1)) / 1000.0),
            camera: Some(camera_text(&shot.camera)),
            transition: Some(transition_text(shot.transition_in.kind).to_string()),
            ..Default::default()
        };
        let created = shots::create_shot(&app.db, board.id, &fields)?;
        ids.insert(created.id, shot.id.clone());
        shot_ids.push(created.id);
    }
    projects::update_storyboard(&app.db, board.id, None, Some(&description))?;
    let record = PlanRecord {
        storyboard: planned.clone(),
        shots: ids,
    };
    super::services::write_document(
        app,
        board.project_id,
        &plan_document(board.id),
        &serde_json::to_string(&record).map_err(anyhow::Error::from)?,
    )?;
    Ok(shot_ids)
}

fn transition_text(kind: TransitionKind) -> &'static str {
    match kind {
        TransitionKind::Cut => "cut",
        TransitionKind::Crossfade => "crossfade",
        TransitionKind::FadeThroughBlack => "fade-through-black",
    }
}

const SIZES: [(ShotSize, &str); 7] = [
    (ShotSize::ExtremeWide, "extreme wide shot"),
    (ShotSize::ExtremeCloseUp, "extreme close-up"),
    (ShotSize::MediumCloseUp, "medium close-up"),
    (ShotSize::CloseUp, "close-up"),
    (ShotSize::Medium, "medium shot"),
    (ShotSize::Wide, "wide shot"),
    (ShotSize::Insert, "insert shot"),
];

const MOVES: [(CameraMove, &str); 11] = [
    (CameraMove::Fixed, "static"),
    (CameraMove::PanLeft, "pan left"),
    (CameraMove::PanRight, "pan right"),
    (CameraMove::TiltUp, "tilt up"),
    (CameraMove::TiltDown, "tilt down"),
    (CameraMove::DollyIn, "dolly in"),
    (CameraMove::DollyOut, "dolly out"),
    (CameraMove::Tracking, "tracking shot"),
    (CameraMove::Handheld, "handheld"),
    (CameraMove::CraneUp, "crane up"),
    (CameraMove::Orbit, "orbit"),
];

/// `wide shot, dolly in, low angle`: the shot's camera field, readable and parsed back.
fn camera_text(camera: &Camera) -> String {
    let size = SIZES.iter().find(|(s, _)| *s == camera.size).map(|p| p.1);
    let movement = MOVES
        .iter()
        .find(|(m, _)| *m == camera.movement)
        .map(|p| p.1);
    [size, movement, Some(camera.angle.trim())]
        .into_iter()
        .flatten()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads a camera field (as written by [`camera_text`] or typed by a user); what it does not
/// mention keeps `base`.
fn parse_camera(text: &str, base: &Camera) -> Camera {
    let lower = text.to_lowercase().replace("close up", "close-up");
    let size = SIZES
        .iter()
        .find(|(_, words)| lower.contains(words.trim_end_matches(" shot")))
        .map_or(base.size, |p| p.0);
    let movement = MOVES
        .iter()
        .find(|(_, words)| lower.contains(words.trim_end_matches(" shot")))
        .map_or(base.movement, |p| p.0);
    Camera {
        size,
        movement,
        angle: base.angle.clone(),
    }
}

/// The storyboard as plugins see it, rebuilt from the studio: the shots in their current order
/// with their current camera, transition and length, the bible's style and characters, and what
/// only the plan knows (scenes, dialogue, who is on screen, title cards).
fn storyboard_for_plugins(
    app: &App,
    storyboard_id: i64,
    profile: &ModelProfile,
) -> Result<(Storyboard, Vec<(i64, String)>)> {
    let board = get_storyboard(&app.db, storyboard_id)?;
    let bible = Bible::parse(&board.description);
    let characters = bible.characters();
    let plan = read_plan(app, board.project_id, storyboard_id)?;
    let studio_shots = shots::list_shots(&app.db, storyboard_id)?;
    if studio_shots.is_empty() {
        return Err(StudioError::Invalid(format!(
            "storyboard {storyboard_id} has no shots"
        )));
    }
    let mut scenes = plan
        .as_ref()
        .map(|p| p.storyboard.scenes.clone())
        .unwrap_or_default();
    let mut shots_out = Vec::new();
    let mut ids = Vec::new();
    for studio in &studio_shots {
        let planned = plan.as_ref().and_then(|p| {
            let id = p.shots.get(&studio.id)?;
            p.storyboard.shots.iter().find(|s| &s.id == id)
        });
        let base = planned.cloned().unwrap_or_else(|| Shot {
            id: format!("shot-{}", studio.id),
            scene_index: scenes.first().map_or(1, |s| s.index),
            action: studio.prompt.clone(),
            character_ids: Vec::new(),
            dialogue: Vec::new(),
            camera: Camera {
                size: ShotSize::Medium,
                movement: CameraMove::Fixed,
                angle: String::new(),
            },
            frames: 0,
            duration_ms: 0,
            transition_in: Transition {
                kind: TransitionKind::Cut,
                duration_ms: 0,
            },
        });
        let kind = match studio.transition.as_str() {
            "crossfade" => TransitionKind::Crossfade,
            "fade-through-black" | "fade" => TransitionKind::FadeThroughBlack,
            _ => TransitionKind::Cut,
        };
        let duration_ms = match kind {
            TransitionKind::Cut => 0,
            _ if base.transition_in.kind == kind && base.transition_in.duration_ms > 0 => {
                base.transition_in.duration_ms
            }
            TransitionKind::Crossfade => CROSSFADE_MS,
            TransitionKind::FadeThroughBlack => FADE_MS,
        };
        let frames = fit_frames(studio.duration_s, profile);
        if !scenes.iter().any(|s| s.index == base.scene_index) {
            scenes.push(Scene {
                index: base.scene_index,
                heading: String::new(),
                interior: true,
                location: String::new(),
                time_of_day: String::new(),
            });
        }
        ids.push((studio.id, base.id.clone()));
        shots_out.push(Shot {
            camera: parse_camera(&studio.camera, &base.camera),
            character_ids: base
                .character_ids
                .iter()
                .filter(|id| characters.iter().any(|c| &c.id == *id))
                .cloned()
                .collect(),
            frames,
            duration_ms: frames * 1000 / profile.fps,
            transition_in: Transition { kind, duration_ms },
            ..base
        });
    }
    let planned = plan.map(|p| p.storyboard);
    Ok((
        Storyboard {
            title: planned
                .as_ref()
                .map_or_else(|| board.title.clone(), |p| p.title.clone()),
            style: bible.style(),
            characters,
            scenes,
            shots: shots_out,
            opening_title: planned.as_ref().and_then(|p| p.opening_title.clone()),
            closing_title: planned.and_then(|p| p.closing_title),
        },
        ids,
    ))
}

/// The bible's characters on screen in shot `shot_id` (as the plan placed them), which its
/// keyframe shows.
pub fn shot_characters(app: &App, shot_id: i64) -> Result<Vec<Character>> {
    let shot = shots::get_shot(&app.db, shot_id)?;
    let board = get_storyboard(&app.db, shot.storyboard_id)?;
    let profile = model_profile(
        &Bible::parse(&board.description).render_settings(),
        &video_rules(app, shot.model.as_deref()),
    );
    let (storyboard, ids) = storyboard_for_plugins(app, board.id, &profile)?;
    let planned = ids
        .iter()
        .zip(&storyboard.shots)
        .find(|((studio, _), _)| *studio == shot_id)
        .map(|(_, shot)| shot.character_ids.clone())
        .unwrap_or_default();
    Ok(storyboard
        .characters
        .into_iter()
        .filter(|c| planned.contains(&c.id))
        .collect())
}

/// The model's frame count closest to `seconds` (`step·k + 1`, at most `max_frames`).
fn fit_frames(seconds: f64, profile: &ModelProfile) -> u32 {
    let step = profile.frame_step.max(1);
    let k = (seconds.max(0.0) * f64::from(profile.fps) / f64::from(step)).round() as u32;
    let longest = profile.max_frames.saturating_sub(1) / step;
    step * k.clamp(1, longest.max(1)) + 1
}

/// Expands shot `shot_id` into a prompt with the expander plugin; the shot is not changed.
pub fn expand(
    app: &Arc<App>,
    job_id: Option<i64>,
    shot_id: i64,
    plugin: Option<&str>,
    render: &RenderSettings,
    report: Report,
) -> Result<ShotPrompt> {
    let shot = shots::get_shot(&app.db, shot_id)?;
    let board = get_storyboard(&app.db, shot.storyboard_id)?;
    let id = registry::choose(&app.db, World::Expander, plugin)?;
    let profile = model_profile(render, &video_rules(app, shot.model.as_deref()));
    let (storyboard, ids) = storyboard_for_plugins(app, board.id, &profile)?;
    let index = ids
        .iter()
        .position(|(studio, _)| *studio == shot_id)
        .expect("the shot is in its storyboard");
    let (plugin, ctx, monitor) = prepare(app, &id, board.project_id, job_id)?;
    let runtime = app.plugins.runtime()?;
    drive(
        &format!("expanding with `{id}`"),
        &monitor,
        report,
        runtime.expand(
            &plugin,
            &ctx,
            &storyboard.shots[index],
            &storyboard,
            &profile,
        ),
    )
}

/// A take to review: what it is and what it was generated from.
#[derive(Debug, Clone)]
pub struct TakeToReview {
    pub shot_id: i64,
    pub asset_id: i64,
    pub seed: u64,
    /// 1 for the first attempt of the run.
    pub attempt: u32,
    pub prompt: String,
    pub negative_prompt: String,
}

/// Reviews a take of a shot with reviewer plugin `id`, which looks at the take through the
/// host's media and vision calls.
pub fn review(
    app: &Arc<App>,
    job_id: Option<i64>,
    id: &str,
    take: &TakeToReview,
    render: &RenderSettings,
    report: Report,
) -> Result<TakeReview> {
    let shot = shots::get_shot(&app.db, take.shot_id)?;
    let board = get_storyboard(&app.db, shot.storyboard_id)?;
    let profile = model_profile(render, &video_rules(app, shot.model.as_deref()));
    let (storyboard, ids) = storyboard_for_plugins(app, board.id, &profile)?;
    let index = ids
        .iter()
        .position(|(studio, _)| *studio == shot.id)
        .expect("the shot is in its storyboard");
    let asset = get_asset(&app.db, take.asset_id)?;
    let info = videosdgx_engine::video::probe(&app.assets.file_of(&asset))
        .map_err(|e| StudioError::Internal(e.context(format!("probing asset {}", asset.id))))?;
    let prompt = ShotPrompt {
        shot_id: storyboard.shots[index].id.clone(),
        prompt: take.prompt.clone(),
        negative_prompt: take.negative_prompt.clone(),
        keyframe_prompt: shot.keyframe_prompt.clone(),
    };
    let take = Take {
        asset_id: asset.id.to_string(),
        seed: take.seed,
        attempt: take.attempt,
        info: clip_info(&info),
    };
    let (plugin, ctx, monitor) = prepare(app, id, board.project_id, job_id)?;
    let runtime = app.plugins.runtime()?;
    drive(
        &format!("reviewing with `{id}`"),
        &monitor,
        report,
        runtime.review(
            &plugin,
            &ctx,
            &storyboard.shots[index],
            &prompt,
            &take,
            &storyboard,
        ),
    )
}

#[derive(Debug, Clone, Serialize)]
pub struct StitchOutcome {
    pub plugin: String,
    pub asset: Asset,
    /// The edit the stitcher decided, as the plugin API describes it.
    pub timeline: Timeline,
}

/// Stitches the chosen take of every shot of the storyboard with the stitcher plugin, which
/// asks the host to render the edit; returns the rendered video asset.
pub fn stitch(
    app: &Arc<App>,
    job_id: Option<i64>,
    storyboard_id: i64,
    plugin: Option<&str>,
    report: Report,
) -> Result<StitchOutcome> {
    let board = get_storyboard(&app.db, storyboard_id)?;
    let id = registry::choose(&app.db, World::Stitcher, plugin)?;
    let studio_shots = shots::list_shots(&app.db, storyboard_id)?;
    let mut clips = Vec::new();
    let mut first_fps = None;
    for shot in &studio_shots {
        let take_id = shot.chosen_take_id.ok_or_else(|| {
            StudioError::Invalid(format!(
                "shot {} has no chosen take: generate it (or pick a take) before stitching",
                shot.position + 1
            ))
        })?;
        let take = shot
            .takes
            .iter()
            .find(|t| t.id == take_id)
            .ok_or_else(|| StudioError::not_found("take", take_id))?;
        let asset = get_asset(&app.db, take.asset_id)?;
        let info = videosdgx_engine::video::probe(&app.assets.file_of(&asset))
            .map_err(|e| StudioError::Internal(e.context(format!("probing asset {}", asset.id))))?;
        first_fps.get_or_insert(info.fps.round() as u32);
        clips.push((shot.id, asset.id, clip_info(&info)));
    }
    let fps = first_fps
        .ok_or_else(|| StudioError::Invalid(format!("storyboard {storyboard_id} has no shots")))?;
    let render = RenderSettings::default();
    let profile = ModelProfile {
        fps,
        ..model_profile(&render, &video_rules(app, None))
    };
    let (storyboard, ids) = storyboard_for_plugins(app, storyboard_id, &profile)?;
    let clips: Vec<GeneratedClip> = clips
        .into_iter()
        .zip(&ids)
        .map(|((_, asset_id, info), (_, planned_id))| GeneratedClip {
            shot_id: planned_id.clone(),
            asset_id: asset_id.to_string(),
            info,
        })
        .collect();
    let name = format!("{}-final.mp4", file_stem(&board.title));
    let (plugin, ctx, monitor) = prepare(app, &id, board.project_id, job_id)?;
    let runtime = app.plugins.runtime()?;
    let result = drive(
        &format!("stitching with `{id}`"),
        &monitor,
        report,
        runtime.stitch(&plugin, &ctx, &storyboard, &clips, &name),
    )?;
    let asset_id: i64 = result.output.id.parse().map_err(|_| {
        StudioError::Internal(anyhow::anyhow!(
            "stitcher `{id}` returned `{}`, which is not an asset the host rendered",
            result.output.id
        ))
    })?;
    let asset = get_asset(&app.db, asset_id)?;
    if asset.project_id != Some(board.project_id) {
        return Err(StudioError::Internal(anyhow::anyhow!(
            "stitcher `{id}` returned asset {asset_id}, which is not of this project"
        )));
    }
    Ok(StitchOutcome {
        plugin: id,
        asset,
        timeline: result.timeline,
    })
}

/// A file-name-safe form of a title: `The Clockmaker's Bird` → `the-clockmaker-s-bird`.
pub fn file_stem(title: &str) -> String {
    let stem = character_id(title);
    if stem.is_empty() {
        "storyboard".into()
    } else {
        stem
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_text_reads_back_as_the_same_camera() {
        for (size, _) in SIZES {
            for (movement, _) in MOVES {
                let camera = Camera {
                    size,
                    movement,
                    angle: "low angle".into(),
                };
                let neutral = Camera {
                    size: ShotSize::Insert,
                    movement: CameraMove::Orbit,
                    angle: "low angle".into(),
                };
                assert_eq!(parse_camera(&camera_text(&camera), &neutral), camera);
            }
        }
    }

    #[test]
    fn a_typed_camera_overrides_only_what_it_names() {
        let base = Camera {
            size: ShotSize::Wide,
            movement: CameraMove::Fixed,
            angle: String::new(),
        };
        let camera = parse_camera("slow Dolly In", &base);
        assert_eq!(
            (camera.size, camera.movement),
            (ShotSize::Wide, CameraMove::DollyIn)
        );
        let camera = parse_camera("close up", &base);
        assert_eq!(camera.size, ShotSize::CloseUp);
    }

    #[test]
    fn frames_follow_the_wan_rule_and_cap() {
        let profile = model_profile(&RenderSettings::default(), &VideoRules::wan());
        assert_eq!(fit_frames(5.0, &profile), 81);
        assert_eq!(fit_frames(60.0, &profile), 81);
        assert_eq!(fit_frames(0.0, &profile), 5);
        assert_eq!(fit_frames(2.0, &profile), 33);
    }

    #[test]
    fn bible_reads_json_or_plain_text() {
        let text = r#"{"style":{"look":"noir"},"characters":[{"name":"Old Mara"}],"render":{"width":64,"height":32,"steps":3,"guidance":1.0}}"#;
        let bible = Bible::parse(text);
        assert_eq!(bible.style.look, "noir");
        assert_eq!(bible.render_settings().width, 64);
        let again: serde_json::Value = serde_json::to_value(&bible).unwrap();
        assert_eq!(
            again["render"]["steps"], 3,
            "unknown keys survive a rewrite"
        );
        assert_eq!(bible.characters()[0].id, "old-mara");
        let plain = Bible::parse("A short about boats");
        assert_eq!(
            plain.style,
            BibleStyle::default(),
            "a description is not a look"
        );
        assert_eq!(plain.rest["description"], "A short about boats");
    }
}
