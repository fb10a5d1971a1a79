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
use crate::generation::{Length, RenderSettings, random_seed};
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
            .query_row(
                "SELECT * FROM character_looks WHERE id = ?1",
                [id],
                look_from_row,
            )
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
        Some(true) => models::image_model(app.data_dir(), None).map(|_| true),
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
fn settings(
    app: &App,
    storyboard_id: i64,
    given: Option<RenderSettings>,
) -> Result<RenderSettings> {
    let render = match given {
        Some(render) => render,
        None => {
            Bible::parse(&get_storyboard(&app.db, storyboard_id)?.description).render_settings()
        }
    };
    render.check()?;
    Ok(render)
}

/// Refuses, before a look or keyframe is queued, a render whose image model is not installed or
/// cannot make its size (one frame of it: [`RenderSettings::check_size`]).
fn check_image_model(app: &App, render: &RenderSettings) -> Result<()> {
    let model = models::image_model(app.data_dir(), render.image_model.as_deref())?;
    render
        .check_size(&model.name, &model.path, Length::Frames(1))
        .map(drop)
}

/// A reference portrait's prompt: the character's description verbatim (as every shot's prompt
/// has it), the piece's look, and a plain framing that shows the face.
fn look_prompt(character: &Character, look: &str) -> String {
    let mut parts = vec![format!(
        "Character reference portrait of {}",
        character.name
    )];
    parts.extend(
        [character.description.as_str(), look]
            .into_iter()
            .map(|part| part.trim().trim_end_matches('.'))
            .filter(|part| !part.is_empty())
            .map(str::to_string),
    );
    parts.push(
        "Head and shoulders, facing the camera, plain neutral background, even soft light".into(),
    );
    parts.join(". ") + "."
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
    /// Size, steps and guidance. When absent: the bible's size, and the image model's own
    /// steps and guidance (`Pipeline::call_defaults`).
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
    let prompt = look_prompt(&character, &bible.style.look);
    let image = ImageRequest {
        project_id: project.id,
        shot_id: None,
        name: format!(
            "{}-look-{}-seed-{seed}.png",
            file_stem(&project.name),
            character.id
        ),
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
        // The bible's render settings are the shots' (a video model's); an image model runs at its
        // own defaults unless the request sets them.
        steps: request.render.as_ref().map(|r| r.steps),
        guidance: request.render.as_ref().map(|r| r.guidance),
        model: render.image_model.clone(),
        loras: crate::loras::for_look(app, board.id, &character.id)?,
    };
    let (output, look) = app.generator.generate_image(
        app,
        job_id,
        &image,
        on_progress,
        |tx, asset, generation_id| {
            Ok(tx.query_row(
                "INSERT INTO character_looks
                         (storyboard_id, character_id, asset_id, generation_id, chosen, created_at)
                     VALUES (?1, ?2, ?3, ?4, NOT EXISTS (SELECT 1 FROM character_looks
                         WHERE storyboard_id = ?1 AND character_id = ?2 AND chosen = 1), ?5)
                     RETURNING *",
                params![board.id, character.id, asset.id, generation_id, now_ms()],
                look_from_row,
            )?)
        },
    )?;
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
    /// Size, steps and guidance. When absent: the bible's size, and the image model's own
    /// steps and guidance (`Pipeline::call_defaults`).
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
        // The bible's render settings are the shots' (a video model's); an image model runs at its
        // own defaults unless the request sets them.
        steps: request.render.as_ref().map(|r| r.steps),
        guidance: request.render.as_ref().map(|r| r.guidance),
        model: render.image_model.clone(),
        loras: crate::loras::for_shot(app, shot.id, crate::assets::LoraTarget::Image)?,
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
        let render = settings(app, request.storyboard_id, request.render)?;
        check_image_model(app, &render)
    }
    fn run(&self, app: &App, ctx: &JobContext, params: &Value) -> Result<Value> {
        let request: MakeLook = parse("look", params)?;
        let outcome = make_look(
            app,
            Some(ctx.job_id()),
            &request,
            &mut |stage, step, total| ctx.progress(stage, step, total),
        )?;
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
        let render = settings(app, shot.storyboard_id, request.render)?;
        check_image_model(app, &render)
    }
    fn run(&self, app: &App, ctx: &JobContext, params: &Value) -> Result<Value> {
        let request: MakeKeyframe = parse("keyframe", params)?;
        let outcome = make_keyframe(
            app,
            Some(ctx.job_id()),
            &request,
            &mut |stage, step, total| ctx.progress(stage, step, total),
        )?;
        Ok(json!(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::StudioConfig;
    use crate::generation::{GenerateShot, get_generation, install_fixture_model};
    use crate::projects::{create_project, create_storyboard};
    use crate::shots::ShotFields;
    use videosdgx_engine::pipelines::{GenerateParams, ImageInput};

    const BIBLE: &str = r#"{"style":{"look":"noir"},"characters":[{"id":"mara","name":"Mara","description":"a clockmaker in her sixties, silver bun"}],"render":{"width":32,"height":32,"steps":2,"guidance":3.0}}"#;

    fn studio(models: &[&str]) -> (tempfile::TempDir, App, i64) {
        let dir = tempfile::tempdir().unwrap();
        for model in models {
            install_fixture_model(dir.path(), model);
        }
        let app = App::open(StudioConfig::new(dir.path())).unwrap();
        let project = create_project(&app.db, "Clock").unwrap();
        let board = create_storyboard(&app.db, project.id, "s", BIBLE).unwrap();
        (dir, app, board.id)
    }

    fn go(_: &str, _: u64, _: u64) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }

    fn look_of(board: i64, character: &str) -> Value {
        json!({ "storyboard_id": board, "character_id": character, "seed": 3 })
    }

    #[test]
    fn looks_are_recorded_tagged_images_and_the_first_is_chosen() {
        let (_dir, app, board) = studio(&["tiny-flux2-klein"]);
        let request: MakeLook = parse("look", &look_of(board, "mara")).unwrap();
        let first = make_look(&app, None, &request, &mut go).unwrap();
        let second = make_look(
            &app,
            None,
            &MakeLook {
                seed: Some(4),
                ..request
            },
            &mut go,
        )
        .unwrap();
        assert!(first.look.chosen && !second.look.chosen);
        let asset = crate::assets::get_asset(&app.db, first.look.asset_id).unwrap();
        assert_eq!(asset.kind, crate::assets::MediaKind::Image);
        assert!(
            asset.tags.contains(&"character:mara".to_string()),
            "{:?}",
            asset.tags
        );
        assert_eq!((asset.width, asset.height), (Some(32), Some(32)));
        assert!(first.prompt.contains("silver bun"), "{}", first.prompt);

        // The PNG carries the record the database keeps.
        let embedded =
            videosdgx_engine::video::read_png_metadata(&app.assets.file_of(&asset)).unwrap();
        let record = get_generation(&app.db, first.generation_id).unwrap();
        assert_eq!(record.model, "tiny-flux2-klein");
        assert_eq!(embedded["generate"], record.params);
        assert_eq!(record.asset_id, Some(asset.id));

        let chosen = choose_look(&app.db, second.look.id).unwrap();
        assert!(chosen.chosen);
        let looks = list_looks(&app.db, board).unwrap();
        assert_eq!(
            looks.iter().map(|l| l.chosen).collect::<Vec<_>>(),
            [false, true]
        );
    }

    #[test]
    fn a_character_s_image_lora_adapts_its_looks_and_is_recorded() {
        // FLUX.1 [dev] as the image model: the engine applies LoRAs to its pipeline.
        let (_dir, app, board) = studio(&["tiny-flux1-dev"]);
        let request = MakeLook {
            render: Some(RenderSettings {
                image_model: Some("tiny-flux1-dev".into()),
                ..Bible::parse(BIBLE).render_settings()
            }),
            ..parse("look", &look_of(board, "mara")).unwrap()
        };
        let plain = make_look(&app, None, &request, &mut go).unwrap();
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let lora_file = fixtures.join("lora/flux1_tiny.safetensors");
        let meta = crate::assets::NewAsset {
            name: "mara-face.safetensors".into(),
            ..Default::default()
        };
        let (lora, _) = app.assets.import_file(&app.db, &lora_file, &meta).unwrap();
        // A Wan LoRA chosen for the project adapts the video model, not the looks.
        let wan_file = fixtures.join("lora/kohya.safetensors");
        let (wan, _) = app
            .assets
            .import_file(
                &app.db,
                &wan_file,
                &crate::assets::NewAsset {
                    name: "wan.safetensors".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        let choose = |scope: crate::loras::Scope, asset_id: i64| {
            let choice = crate::loras::LoraChoice {
                asset_id,
                strength: 0.9,
                strength_2: None,
            };
            crate::loras::set(&app.db, &scope, &[choice]).unwrap();
        };
        choose(crate::loras::Scope::Project(1), wan.id);
        choose(
            crate::loras::Scope::Character {
                storyboard_id: board,
                character_id: "mara".into(),
            },
            lora.id,
        );
        let adapted = make_look(&app, None, &request, &mut go).unwrap();
        let record = get_generation(&app.db, adapted.generation_id).unwrap();
        assert_eq!(record.loras.len(), 1, "{:?}", record.loras);
        let applied = &record.loras[0];
        assert_eq!(
            (applied.asset_id, applied.from.as_str(), applied.strength),
            (lora.id, "character:mara", 0.9)
        );
        assert_eq!(applied.sha256, lora.sha256);
        let params: GenerateParams = serde_json::from_value(record.params).unwrap();
        assert_eq!(
            params.loras[0].sha256.as_deref(),
            Some(lora.sha256.as_str())
        );
        let pixels = |look: &LookOutcome| {
            let asset = crate::assets::get_asset(&app.db, look.look.asset_id).unwrap();
            image::ImageReader::open(app.assets.file_of(&asset))
                .and_then(|r| r.with_guessed_format())
                .unwrap()
                .decode()
                .unwrap()
                .to_rgb8()
        };
        assert_ne!(
            pixels(&plain),
            pixels(&adapted),
            "the LoRA changes the look"
        );
    }

    #[test]
    fn bad_look_and_keyframe_requests_are_refused_before_queueing() {
        let (_dir, app, board) = studio(&["tiny-wan-i2v"]);
        let err = LookRunner
            .check(&app, &look_of(board, "mara"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, models::NO_IMAGE_MODEL);
        let err = LookRunner
            .check(&app, &look_of(board, "bob"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!("storyboard {board}'s bible has no character `bob` (characters: mara)")
        );
        let shot = shots::create_shot(&app.db, board, &ShotFields::default()).unwrap();
        let err = KeyframeRunner
            .check(&app, &json!({ "shot_id": shot.id }))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "shot 1 has no prompt");
        assert!(list_looks(&app.db, board).unwrap().is_empty());
    }

    #[test]
    fn looks_and_keyframes_of_a_size_the_image_model_cannot_make_are_refused_before_queueing() {
        let (_dir, app, board) = studio(&["tiny-flux1-dev"]);
        let render = json!({ "width": 40, "height": 40, "steps": 2 });
        let expected = "`tiny-flux1-dev` cannot make it: height and width must be positive \
                        multiples of 16 for this model, got 40x40";
        let mut look = look_of(board, "mara");
        look["render"] = render.clone();
        let err = LookRunner.check(&app, &look).unwrap_err();
        assert_eq!(
            (err.code(), err.to_string().as_str()),
            ("refused", expected)
        );
        let fields = ShotFields {
            prompt: Some("a clock tower at dawn".into()),
            ..ShotFields::default()
        };
        let shot = shots::create_shot(&app.db, board, &fields).unwrap();
        let keyframe = json!({ "shot_id": shot.id, "render": render });
        let err = KeyframeRunner.check(&app, &keyframe).unwrap_err();
        assert_eq!(
            (err.code(), err.to_string().as_str()),
            ("refused", expected)
        );
        // A size it makes passes.
        look["render"] = json!({ "width": 32, "height": 48, "steps": 2 });
        LookRunner.check(&app, &look).unwrap();
    }

    #[test]
    fn a_keyframe_is_the_start_frame_of_the_shots_video() {
        let (_dir, app, board) = studio(&["tiny-flux2-klein", "tiny-wan-i2v"]);
        let project = projects::get_project(&app.db, 1).unwrap();
        assert!(
            enabled(&app, &project).unwrap(),
            "on when both kinds are installed"
        );
        let fields = ShotFields {
            prompt: Some("Mara winds a clock".into()),
            keyframe_prompt: Some("Mara at her bench, a clock in her hands".into()),
            duration_s: Some(0.25),
            seed: Some(5),
            ..Default::default()
        };
        let shot = shots::create_shot(&app.db, board, &fields).unwrap();
        let keyframe = make_keyframe(
            &app,
            None,
            &MakeKeyframe {
                shot_id: shot.id,
                seed: None,
                render: None,
            },
            &mut go,
        )
        .unwrap();
        assert_eq!(keyframe.prompt, "Mara at her bench, a clock in her hands");
        assert_eq!(keyframe.seed, 5);
        let shot = shots::get_shot(&app.db, shot.id).unwrap();
        assert_eq!(shot.keyframe_asset_id, Some(keyframe.asset_id));
        let record = get_generation(&app.db, keyframe.generation_id).unwrap();
        assert_eq!(record.shot_id, Some(shot.id));

        let take = app
            .generator
            .generate_shot(
                &app,
                None,
                &GenerateShot {
                    shot_id: shot.id,
                    render: Bible::parse(BIBLE).render_settings(),
                    ..Default::default()
                },
                &mut go,
            )
            .unwrap();
        let keyframe_file = app
            .assets
            .file_of(&crate::assets::get_asset(&app.db, keyframe.asset_id).unwrap());
        assert_eq!(
            take.params.start_image,
            Some(ImageInput::Path(keyframe_file))
        );
        let recorded: GenerateParams =
            serde_json::from_value(get_generation(&app.db, take.generation_id).unwrap().params)
                .unwrap();
        assert_eq!(recorded, take.params);
    }
}
