//! Character looks and keyframes: what keeps a character the same across independently generated
//! shots. A look is a reference portrait of a bible character made by the image model (the
//! `look` job, GPU lane); a character may have several, like a shot's takes, and the chosen one
//! is what later images use. A shot's keyframe is a still of its first moment (the `keyframe`
//! job): its keyframe prompt (the shot's prompt when the expander wrote none) conditioned on
//! the chosen looks of the characters in the shot; the shot's image-to-video generation starts
//! from it ([`crate::generation`]). Each result is an image asset with its generation record,
//! written with the look or the shot's keyframe in one transaction.

use crate::app::App;
use crate::db::{Db, now_ms, rfc3339};
use crate::error::{Result, StudioError};
use crate::generation::{RenderSettings, random_seed};
use crate::images::{ImageOutput, ImageRequest};
use crate::jobs::{JobContext, JobRunner, Lane};
use crate::models;
use crate::plugins::calls::{Bible, file_stem, shot_characters};
use crate::projects::{self, Project, get_storyboard};
use crate::shots;
use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::ops::ControlFlow;
use utoipa::ToSchema;
use videosdgx_plugin_host::types::Character;

/// A reference portrait of a bible character.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Look {
    pub id: i64,
    pub storyboard_id: i64,
    /// The bible character's id, e.g. `mara`.
    pub character_id: String,
    /// The image asset (tagged `look` and `character:<id>`).
    pub asset_id: i64,
    pub generation_id: Option<i64>,
    /// The look later keyframes use; one per character.
    pub chosen: bool,
    pub created_at: String,
}

fn look_from_row(row: &Row) -> rusqlite::Result<Look> {
    Ok(Look {
        id: row.get("id")?,
        storyboard_id: row.get("storyboard_id")?,
        character_id: row.get("character_id")?,
        asset_id: row.get("asset_id")?,
        generation_id: row.get("generation_id")?,
        chosen: row.get("chosen")?,
        created_at: rfc3339(row.get("created_at")?),
    })
}

/// The looks of a storyboard's characters, oldest first.
pub fn list_looks(db: &Db, storyboard_id: i64) -> Result<Vec<Look>> {
    get_storyboard(db, storyboard_id)?;
    db.with(|c| {
        let mut stmt =
            c.prepare("SELECT * FROM character_looks WHERE storyboard_id = ?1 ORDER BY id")?;
        Ok(stmt
            .query_map([storyboard_id], look_from_row)?
            .collect::<rusqlite::Result<_>>()?)
    })
}

/// Makes look `id` its character's chosen look.
pub fn choose_look(db: &Db, id: i64) -> Result<Look> {
    db.transaction(|tx| {
        let look = tx
            .query_row("SELECT * FROM character_looks WHERE id = ?1", [id], look_from_row)
            .optional()?
            .ok_or_else(|| StudioError::not_found("look", id))?;
        tx.execute(
            "UPDATE character_looks SET chosen = (id = ?3)
             WHERE storyboard_id = ?1 AND character_id = ?2",
            params![look.storyboard_id, look.character_id, id],
        )?;
        Ok(Look {
            chosen: true,
            ..look
        })
    })
}

fn chosen_look(db: &Db, storyboard_id: i64, character_id: &str) -> Result<Option<Look>> {
    db.with(|c| {
        Ok(c.query_row(
            "SELECT * FROM character_looks
             WHERE storyboard_id = ?1 AND character_id = ?2 AND chosen = 1",
            params![storyboard_id, character_id],
            look_from_row,
        )
        .optional()?)
    })
}

/// Whether `project`'s shots start from keyframes: its setting, else whether an image model and
/// an image-to-video model are installed. Switched on without an image model is an error
/// naming what to install.
pub fn enabled(app: &App, project: &Project) -> Result<bool> {
    match project.keyframes {
        Some(true) => models::image_model(app.data_dir()).map(|_| true),
        Some(false) => Ok(false),
        None => models::keyframes_possible(app.data_dir()),
    }
}

/// The bible character `character_id` of storyboard `storyboard_id`.
fn bible_character(app: &App, storyboard_id: i64, character_id: &str) -> Result<Character> {
    let board = get_storyboard(&app.db, storyboard_id)?;
    let characters = Bible::parse(&board.description).characters();
    characters
        .iter()
        .find(|c| c.id == character_id)
        .cloned()
        .ok_or_else(|| {
            let known: Vec<&str> = characters.iter().map(|c| c.id.as_str()).collect();
            StudioError::Invalid(format!(
                "storyboard {storyboard_id}'s bible has no character `{character_id}` (characters: {})",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ))
        })
}

/// The settings an image of storyboard `storyboard_id` is made with: the job's, else the
/// bible's (a keyframe must have its video's size).
fn settings(app: &App, storyboard_id: i64, given: Option<RenderSettings>) -> Result<RenderSettings> {
    let render = match given {
        Some(render) => render,
        None => Bible::parse(&get_storyboard(&app.db, storyboard_id)?.description).render_settings(),
    };
    render.check()?;
    Ok(render)
}

/// Parameters of a `look` job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MakeLook {
    pub storyboard_id: i64,
    /// A character id of the storyboard's bible.
    pub character_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Size, steps and guidance; the bible's render settings when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub render: Option<RenderSettings>,
}

/// What a `look` job made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LookOutcome {
    pub look: Look,
    pub generation_id: i64,
    pub seed: u64,
    pub prompt: String,
}

/// Makes a reference portrait of a bible character; the character's first look is chosen.
pub fn make_look(
    app: &App,
    job_id: Option<i64>,
    request: &MakeLook,
    on_progress: &mut dyn FnMut(&str, u64, u64) -> ControlFlow<()>,
) -> Result<LookOutcome> {
    let character = bible_character(app, request.storyboard_id, &request.character_id)?;
    let board = get_storyboard(&app.db, request.storyboard_id)?;
    let bible = Bible::parse(&board.description);
    let render = settings(app, board.id, request.render.clone())?;
    let project = projects::get_project(&app.db, board.project_id)?;
    let seed = request.seed.unwrap_or_else(random_seed);
    let prompt = format!(
        "Character reference portrait of {}: {}. {} Head and shoulders, facing the camera, plain neutral background, even soft light.",
        character.name,
        character.description.trim_end_matches('.'),
        bible.style.look
    );
    let image = ImageRequest {
        project_id: project.id,
        shot_id: None,
        name: format!("{}-look-{}-seed-{seed}.png", file_stem(&project.name), character.id),
        tags: vec![
            "generated".into(),
            "look".into(),
            format!("character:{}", character.id),
        ],
        prompt,
        negative_prompt: bible.style.negative.clone(),
        seed: Some(seed),
        references: Vec::new(),
        width: render.width,
        height: render.height,
        steps: render.steps,
        guidance: render.guidance,
    };
    let (output, look) =
        app.generator
            .generate_image(app, job_id, &image, on_progress, |tx, asset, generation_id| {
                Ok(tx.query_row(
                    "INSERT INTO character_looks
                         (storyboard_id, character_id, asset_id, generation_id, chosen, created_at)
                     VALUES (?1, ?2, ?3, ?4, NOT EXISTS (SELECT 1 FROM character_looks
                         WHERE storyboard_id = ?1 AND character_id = ?2 AND chosen = 1), ?5)
                     RETURNING *",
                    params![board.id, character.id, asset.id, generation_id, now_ms()],
                    look_from_row,
                )?)
            })?;
    Ok(LookOutcome {
        look,
        generation_id: output.generation_id,
        seed,
        prompt: output.params.prompt,
    })
}

/// Parameters of a `keyframe` job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MakeKeyframe {
    pub shot_id: i64,
    /// The shot's seed (else a drawn one) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Size, steps and guidance; the bible's render settings when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub render: Option<RenderSettings>,
}

/// What a `keyframe` job made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyframeOutcome {
    pub shot_id: i64,
    pub asset_id: i64,
    pub generation_id: i64,
    pub seed: u64,
    pub prompt: String,
    /// The looks it was conditioned on, one per character in the shot that has a chosen look.
    pub looks: Vec<i64>,
}

fn keyframe_prompt(shot: &shots::Shot) -> Result<String> {
    let prompt = if shot.keyframe_prompt.trim().is_empty() {
        &shot.prompt
    } else {
        &shot.keyframe_prompt
    };
    if prompt.trim().is_empty() {
        return Err(StudioError::Invalid(format!(
            "shot {} has no prompt",
            shot.position + 1
        )));
    }
    Ok(prompt.clone())
}

/// Makes shot `request.shot_id`'s keyframe from its prompt and its characters' chosen looks;
/// the shot's image-to-video generations start from it.
pub fn make_keyframe(
    app: &App,
    job_id: Option<i64>,
    request: &MakeKeyframe,
    on_progress: &mut dyn FnMut(&str, u64, u64) -> ControlFlow<()>,
) -> Result<KeyframeOutcome> {
    let shot = shots::get_shot(&app.db, request.shot_id)?;
    let prompt = keyframe_prompt(&shot)?;
    let board = get_storyboard(&app.db, shot.storyboard_id)?;
    let render = settings(app, board.id, request.render.clone())?;
    let project = projects::get_project(&app.db, board.project_id)?;
    let mut looks = Vec::new();
    for character in shot_characters(app, shot.id)? {
        looks.extend(chosen_look(&app.db, board.id, &character.id)?);
    }
    let seed = request.seed.or(shot.seed).unwrap_or_else(random_seed);
    let image = ImageRequest {
        project_id: project.id,
        shot_id: Some(shot.id),
        name: format!(
            "{}-shot-{}-keyframe-seed-{seed}.png",
            file_stem(&project.name),
            shot.position + 1
        ),
        tags: vec!["generated".into(), "keyframe".into()],
        prompt,
        negative_prompt: shot.negative_prompt.clone(),
        seed: Some(seed),
        references: looks.iter().map(|l| l.asset_id).collect(),
        width: render.width,
        height: render.height,
        steps: render.steps,
        guidance: render.guidance,
    };
    let (output, ()): (ImageOutput, ()) =
        app.generator
            .generate_image(app, job_id, &image, on_progress, |tx, asset, _| {
                tx.execute(
                    "UPDATE shots SET keyframe_asset_id = ?2, updated_at = ?3 WHERE id = ?1",
                    params![shot.id, asset.id, now_ms()],
                )?;
                Ok(())
            })?;
    Ok(KeyframeOutcome {
        shot_id: shot.id,
        asset_id: output.asset.id,
        generation_id: output.generation_id,
        seed,
        prompt: output.params.prompt,
        looks: looks.iter().map(|l| l.id).collect(),
    })
}

fn parse<T: serde::de::DeserializeOwned>(kind: &str, params: &Value) -> Result<T> {
    serde_json::from_value(params.clone())
        .map_err(|e| StudioError::Invalid(format!("parameters of a {kind} job: {e}")))
}

/// `look`: a reference portrait of a bible character, on the GPU lane.
pub struct LookRunner;

impl JobRunner for LookRunner {
    fn kind(&self) -> &'static str {
        "look"
    }
    fn lane(&self) -> Lane {
        Lane::Gpu
    }
    fn check(&self, app: &App, params: &Value) -> Result<()> {
        let request: MakeLook = parse("look", params)?;
        bible_character(app, request.storyboard_id, &request.character_id)?;
        settings(app, request.storyboard_id, request.render)?;
        models::image_model(app.data_dir()).map(drop)
    }
    fn run(&self, app: &App, ctx: &JobContext, params: &Value) -> Result<Value> {
        let request: MakeLook = parse("look", params)?;
        let outcome = make_look(app, Some(ctx.job_id()), &request, &mut |stage, step, total| {
            ctx.progress(stage, step, total)
        })?;
        Ok(json!(outcome))
    }
}

/// `keyframe`: a shot's start frame, on the GPU lane.
pub struct KeyframeRunner;

impl JobRunner for KeyframeRunner {
    fn kind(&self) -> &'static str {
        "keyframe"
    }
    fn lane(&self) -> Lane {
        Lane::Gpu
    }
    fn check(&self, app: &App, params: &Value) -> Result<()> {
        let request: MakeKeyframe = parse("keyframe", params)?;
        let shot = shots::get_shot(&app.db, request.shot_id)?;
        keyframe_prompt(&shot)?;
        settings(app, shot.storyboard_id, request.render)?;
        models::image_model(app.data_dir()).map(drop)
    }
    fn run(&self, app: &App, ctx: &JobContext, params: &Value) -> Result<Value> {
        let request: MakeKeyframe = parse("keyframe", params)?;
        let outcome =
            make_keyframe(app, Some(ctx.job_id()), &request, &mut |stage, step, total| {
                ctx.progress(stage, step, total)
            })?;
        Ok(json!(outcome))
    }
}
