//! LoRAs chosen for generations. A LoRA asset ([`crate::assets::lora`]) is chosen, with a
//! strength (and for Wan 2.2's two experts a second one, for the low-noise expert), for a
//! project (every shot), for a bible character (the shots that show the character, and the
//! character's looks) or for one shot. Choices are rows of `lora_choices`, keyed like the other
//! per-character state (looks): storyboard and character id.
//!
//! What a generation applies: the project's choices, then those of each character the shot
//! shows (in the shot's order), then the shot's own, keeping only the LoRAs that adapt the
//! generation's model (the video model for shots, the image model for looks and keyframes;
//! [`LoraTarget`]). **The same asset chosen twice: the more specific choice wins** (shot over
//! character over project; between two characters of one shot, the later one), replacing the
//! earlier one's strengths, so a shot can turn a project's LoRA down or off (strength 0).
//! Each applied LoRA is recorded with its asset, strengths, SHA-256 and where it came from;
//! the engine checks the file against that SHA-256, so a changed file is refused.
//!
//! A chosen LoRA asset cannot be deleted ([`crate::assets::AssetLibrary::delete`] says where it
//! is chosen): the choices name it, and takes made with it keep naming it in their records.

use crate::app::App;
use crate::assets::{Asset, LoraTarget, MediaKind, get_asset};
use crate::db::Db;
use crate::error::{Result, StudioError};
use crate::plugins::calls::Bible;
use crate::projects::{get_project, get_storyboard};
use crate::shots;
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use std::path::Path;
use utoipa::ToSchema;
use videosdgx_engine::lora::LoraSpec;

/// Strengths beyond this are typos (published LoRAs run between -2 and 2).
const MAX_STRENGTH: f64 = 10.0;
/// At most this many LoRAs per project, character or shot.
const MAX_CHOICES: usize = 16;

/// What one choice is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Project(i64),
    Character {
        storyboard_id: i64,
        character_id: String,
    },
    Shot(i64),
}

/// A LoRA asset chosen with its strength.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraChoice {
    pub asset_id: i64,
    /// 1 when absent.
    #[serde(default = "one")]
    pub strength: f64,
    /// Strength for the low-noise expert of a Wan 2.2 two-expert model (`strength` is the
    /// high-noise one's); the same as `strength` when absent. One-transformer models refuse it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength_2: Option<f64>,
}

fn one() -> f64 {
    1.0
}

impl std::str::FromStr for LoraChoice {
    type Err = StudioError;

    /// `ASSET_ID`, `ASSET_ID:STRENGTH` or `ASSET_ID:HIGH,LOW`, as the command line takes them.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            StudioError::Invalid(format!(
                "`{s}`: expected ASSET_ID[:STRENGTH] or ASSET_ID:HIGH,LOW"
            ))
        };
        let number = |v: &str| v.trim().parse::<f64>().map_err(|_| bad());
        let (id, strengths) = s.split_once(':').unwrap_or((s, "1"));
        let (strength, strength_2) = match strengths.split_once(',') {
            Some((high, low)) => (number(high)?, Some(number(low)?)),
            None => (number(strengths)?, None),
        };
        Ok(LoraChoice {
            asset_id: id.trim().parse().map_err(|_| bad())?,
            strength,
            strength_2,
        })
    }
}

/// A choice as listed: with the asset's name and the model it adapts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChosenLora {
    pub asset_id: i64,
    pub name: String,
    pub strength: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength_2: Option<f64>,
    pub target: LoraTarget,
}

/// A LoRA a generation applied, as its record keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppliedLora {
    pub asset_id: i64,
    pub name: String,
    pub strength: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength_2: Option<f64>,
    pub sha256: String,
    /// Where it was chosen: `project`, `character:<id>` or `shot`.
    pub from: String,
}

impl AppliedLora {
    /// The engine's spec: the asset's stored file, pinned to its SHA-256.
    pub fn spec(&self, app: &App) -> LoraSpec {
        LoraSpec {
            path: app.assets.store().path_of(&self.sha256),
            strength: self.strength,
            strength_2: self.strength_2,
            sha256: Some(self.sha256.clone()),
        }
    }
}

/// The asset `id` if it is a LoRA.
fn lora_asset(db: &Db, id: i64) -> Result<Asset> {
    let asset = get_asset(db, id)?;
    if asset.kind != MediaKind::Lora {
        return Err(StudioError::Invalid(format!(
            "asset {id} ({}) is a {} asset, not a LoRA",
            asset.original_name,
            asset.kind.as_str()
        )));
    }
    Ok(asset)
}

/// Refuses a scope that does not exist (a character must be in its storyboard's bible).
fn check_scope(db: &Db, scope: &Scope) -> Result<()> {
    match scope {
        Scope::Project(id) => get_project(db, *id).map(drop),
        Scope::Shot(id) => shots::get_shot(db, *id).map(drop),
        Scope::Character {
            storyboard_id,
            character_id,
        } => {
            let board = get_storyboard(db, *storyboard_id)?;
            let characters = Bible::parse(&board.description).characters();
            if characters.iter().any(|c| &c.id == character_id) {
                return Ok(());
            }
            Err(StudioError::Invalid(format!(
                "storyboard {storyboard_id}'s bible has no character `{character_id}`"
            )))
        }
    }
}

/// `WHERE` clause and parameters selecting `scope`'s rows.
fn scope_sql(scope: &Scope) -> (&'static str, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    match scope {
        Scope::Project(id) => ("project_id = ?1", vec![Value::Integer(*id)]),
        Scope::Shot(id) => ("shot_id = ?1", vec![Value::Integer(*id)]),
        Scope::Character {
            storyboard_id,
            character_id,
        } => (
            "storyboard_id = ?1 AND character_id = ?2",
            vec![
                Value::Integer(*storyboard_id),
                Value::Text(character_id.clone()),
            ],
        ),
    }
}

fn read_choices(c: &Connection, scope: &Scope) -> Result<Vec<ChosenLora>> {
    let (filter, values) = scope_sql(scope);
    let mut stmt = c.prepare(&format!(
        "SELECT l.asset_id, l.strength, l.strength_2, a.* FROM lora_choices l
         JOIN assets a ON a.id = l.asset_id WHERE l.{} ORDER BY l.position",
        filter.replace(" AND ", " AND l.")
    ))?;
    let rows = stmt.query_map(rusqlite::params_from_iter(values), |row| {
        let lora: Option<String> = row.get("lora")?;
        let target = lora
            .and_then(|l| serde_json::from_str::<crate::assets::LoraInfo>(&l).ok())
            .map_or(LoraTarget::Video, |l| l.target);
        Ok(ChosenLora {
            asset_id: row.get(0)?,
            strength: row.get(1)?,
            strength_2: row.get(2)?,
            name: row.get("original_name")?,
            target,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The LoRAs chosen for `scope`, in order.
pub fn list(db: &Db, scope: &Scope) -> Result<Vec<ChosenLora>> {
    check_scope(db, scope)?;
    db.with(|c| read_choices(c, scope))
}

/// Replaces the LoRAs chosen for `scope` with `choices` (an empty list clears them; that is
/// allowed for a character no longer in the bible, whose choices would otherwise keep their
/// LoRAs from being deleted).
pub fn set(db: &Db, scope: &Scope, choices: &[LoraChoice]) -> Result<Vec<ChosenLora>> {
    match scope {
        Scope::Character { storyboard_id, .. } if choices.is_empty() => {
            get_storyboard(db, *storyboard_id).map(drop)?
        }
        _ => check_scope(db, scope)?,
    }
    if choices.len() > MAX_CHOICES {
        return Err(StudioError::Invalid(format!(
            "at most {MAX_CHOICES} LoRAs per project, character or shot, got {}",
            choices.len()
        )));
    }
    for (i, choice) in choices.iter().enumerate() {
        lora_asset(db, choice.asset_id)?;
        for strength in std::iter::once(choice.strength).chain(choice.strength_2) {
            if !strength.is_finite() || strength.abs() > MAX_STRENGTH {
                return Err(StudioError::Invalid(format!(
                    "LoRA asset {}: strength must be between -{MAX_STRENGTH} and {MAX_STRENGTH}, \
                     got {strength}",
                    choice.asset_id
                )));
            }
        }
        if choices[..i].iter().any(|c| c.asset_id == choice.asset_id) {
            return Err(StudioError::Invalid(format!(
                "LoRA asset {} is listed twice",
                choice.asset_id
            )));
        }
    }
    db.transaction(|tx| {
        let (filter, values) = scope_sql(scope);
        tx.execute(
            &format!("DELETE FROM lora_choices WHERE {filter}"),
            rusqlite::params_from_iter(values),
        )?;
        let (project, storyboard, character, shot) = match scope {
            Scope::Project(id) => (Some(*id), None, None, None),
            Scope::Shot(id) => (None, None, None, Some(*id)),
            Scope::Character {
                storyboard_id,
                character_id,
            } => (
                None,
                Some(*storyboard_id),
                Some(character_id.as_str()),
                None,
            ),
        };
        for (position, choice) in choices.iter().enumerate() {
            tx.execute(
                "INSERT INTO lora_choices (asset_id, project_id, storyboard_id, character_id,
                     shot_id, position, strength, strength_2)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    choice.asset_id,
                    project,
                    storyboard,
                    character,
                    shot,
                    position as i64,
                    choice.strength,
                    choice.strength_2
                ],
            )?;
        }
        read_choices(tx, scope)
    })
}

/// Where LoRA asset `asset_id` is chosen, as a user reads it (`project 1`, `character `mara`
/// of storyboard 2`, `shot 3 of storyboard 2`); empty when nowhere.
pub(crate) fn uses(c: &Connection, asset_id: i64) -> Result<Vec<String>> {
    let mut stmt = c.prepare(
        "SELECT l.project_id, l.storyboard_id, l.character_id, s.position, s.storyboard_id
         FROM lora_choices l LEFT JOIN shots s ON s.id = l.shot_id
         WHERE l.asset_id = ?1 ORDER BY l.id",
    )?;
    let rows = stmt.query_map([asset_id], |r| {
        let project: Option<i64> = r.get(0)?;
        let board: Option<i64> = r.get(1)?;
        let character: Option<String> = r.get(2)?;
        let shot: Option<(i64, i64)> = r.get::<_, Option<i64>>(3)?.zip(r.get(4)?);
        Ok(match (project, board.zip(character), shot) {
            (Some(p), _, _) => format!("project {p}"),
            (_, Some((b, c)), _) => format!("character `{c}` of storyboard {b}"),
            (_, _, Some((position, b))) => format!("shot {} of storyboard {b}", position + 1),
            _ => "an unknown place".into(),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Appends `chosen` (from `from`) to `applied`, a later choice of the same asset replacing the
/// earlier one; LoRAs for the other model are left out.
fn add(
    db: &Db,
    applied: &mut Vec<AppliedLora>,
    chosen: Vec<ChosenLora>,
    from: &str,
    target: LoraTarget,
) -> Result<()> {
    for choice in chosen.into_iter().filter(|c| c.target == target) {
        let asset = lora_asset(db, choice.asset_id)?;
        applied.retain(|a| a.asset_id != choice.asset_id);
        applied.push(AppliedLora {
            asset_id: asset.id,
            name: asset.original_name,
            strength: choice.strength,
            strength_2: choice.strength_2,
            sha256: asset.sha256,
            from: from.to_string(),
        });
    }
    Ok(())
}

/// What a generation for shot `shot_id` applies to its `target` model: the project's LoRAs,
/// those of the characters the shot shows, the shot's own (the more specific wins).
pub fn for_shot(app: &App, shot_id: i64, target: LoraTarget) -> Result<Vec<AppliedLora>> {
    let shot = shots::get_shot(&app.db, shot_id)?;
    let board = get_storyboard(&app.db, shot.storyboard_id)?;
    let mut applied = Vec::new();
    let project = list(&app.db, &Scope::Project(board.project_id))?;
    add(&app.db, &mut applied, project, "project", target)?;
    for character in crate::plugins::calls::shot_characters(app, shot_id)? {
        let chosen = app.db.with(|c| {
            read_choices(
                c,
                &Scope::Character {
                    storyboard_id: board.id,
                    character_id: character.id.clone(),
                },
            )
        })?;
        let from = format!("character:{}", character.id);
        add(&app.db, &mut applied, chosen, &from, target)?;
    }
    let own = list(&app.db, &Scope::Shot(shot_id))?;
    add(&app.db, &mut applied, own, "shot", target)?;
    Ok(applied)
}

/// What a project's generation that is no shot's (a plugin's) applies to its `target` model:
/// the project's LoRAs.
pub fn for_project(app: &App, project_id: i64, target: LoraTarget) -> Result<Vec<AppliedLora>> {
    let mut applied = Vec::new();
    let project = list(&app.db, &Scope::Project(project_id))?;
    add(&app.db, &mut applied, project, "project", target)?;
    Ok(applied)
}

/// What a look of bible character `character_id` applies to the image model: the project's
/// LoRAs and the character's (the character's wins).
pub fn for_look(app: &App, storyboard_id: i64, character_id: &str) -> Result<Vec<AppliedLora>> {
    let board = get_storyboard(&app.db, storyboard_id)?;
    let mut applied = Vec::new();
    let project = list(&app.db, &Scope::Project(board.project_id))?;
    add(&app.db, &mut applied, project, "project", LoraTarget::Image)?;
    let scope = Scope::Character {
        storyboard_id,
        character_id: character_id.to_string(),
    };
    let chosen = app.db.with(|c| read_choices(c, &scope))?;
    let from = format!("character:{character_id}");
    add(&app.db, &mut applied, chosen, &from, LoraTarget::Image)?;
    Ok(applied)
}

/// Refuses, before a job is queued, a LoRA whose keys name another family than the video model
/// in `dir` (an LTX-2 LoRA on a Wan shot): the engine would refuse it only once the job runs.
/// LoRAs whose family the keys do not tell, and sizes within a family, are left to the engine.
pub fn check_family(app: &App, applied: &[AppliedLora], model: &str, dir: &Path) -> Result<()> {
    let Some(rules) = videosdgx_engine::pipelines::Pipeline::video_rules(dir)
        .map_err(|e| StudioError::Invalid(format!("model `{model}`: {e:#}")))?
    else {
        return Ok(());
    };
    // The LoRA family names (`LoraFile::family`) of the video families.
    let fits = match rules.family.as_str() {
        "wan2.1" | "wan2.2" => "Wan",
        "ltx2" => "LTX-2",
        _ => return Ok(()),
    };
    for lora in applied {
        let asset = get_asset(&app.db, lora.asset_id)?;
        if let Some(family) = asset.lora.and_then(|info| info.family)
            && family != fits
        {
            return Err(StudioError::Invalid(format!(
                "LoRA asset {} \"{}\" (chosen for the {}) is for {family}, but the shot's model `{model}` is {fits}",
                lora.asset_id,
                lora.name,
                match lora.from.as_str() {
                    "project" => "project".to_string(),
                    "shot" => "shot".to_string(),
                    other => other.replace("character:", "character "),
                },
            )));
        }
    }
    Ok(())
}

/// A failed generation's error with each LoRA's stored file named as the user knows it (`LoRA
/// asset 4 "mara.safetensors"`): the engine names files by path, and a LoRA's is its blob's.
/// An error about a LoRA is the request's fault (it does not fit the model), not the studio's.
pub fn explain(app: &App, applied: &[AppliedLora], err: StudioError) -> StudioError {
    let StudioError::Internal(inner) = &err else {
        return err;
    };
    if crate::generation::is_cancelled(&err) {
        return err;
    }
    let mut message = format!("{inner:#}");
    let mut named = false;
    for lora in applied {
        let path = app.assets.store().path_of(&lora.sha256);
        let path = path.display().to_string();
        if message.contains(&path) {
            message = message.replace(
                &path,
                &format!("LoRA asset {} \"{}\"", lora.asset_id, lora.name),
            );
            named = true;
        }
    }
    if named {
        StudioError::Invalid(message)
    } else {
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::StudioConfig;
    use crate::assets::NewAsset;
    use crate::projects::{create_project, create_storyboard};
    use std::str::FromStr;

    #[test]
    fn a_character_removed_from_the_bible_can_still_be_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let app = App::open(StudioConfig::new(dir.path())).unwrap();
        let project = create_project(&app.db, "p").unwrap();
        let bible = r#"{"characters":[{"id":"mara","name":"Mara"}]}"#;
        let board = create_storyboard(&app.db, project.id, "s", bible).unwrap();
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/lora/kohya.safetensors");
        let meta = NewAsset {
            name: "mara.safetensors".into(),
            ..Default::default()
        };
        let (lora, _) = app.assets.import_file(&app.db, &file, &meta).unwrap();
        let mara = Scope::Character {
            storyboard_id: board.id,
            character_id: "mara".into(),
        };
        let choice = LoraChoice::from_str(&format!("{}:0.5", lora.id)).unwrap();
        set(&app.db, &mara, std::slice::from_ref(&choice)).unwrap();
        let uses_of = || app.db.with(|c| uses(c, lora.id)).unwrap();
        assert_eq!(
            uses_of(),
            [format!("character `mara` of storyboard {}", board.id)]
        );

        crate::projects::update_storyboard(&app.db, board.id, None, Some(r#"{"characters":[]}"#))
            .unwrap();
        let err = set(&app.db, &mara, &[choice]).unwrap_err().to_string();
        assert!(err.contains("has no character `mara`"), "{err}");
        set(&app.db, &mara, &[]).unwrap();
        assert!(uses_of().is_empty());
        app.assets.delete(&app.db, lora.id).unwrap();
    }

    #[test]
    fn choices_read_as_the_command_line_gives_them() {
        let plain = LoraChoice::from_str("4").unwrap();
        assert_eq!(
            (plain.asset_id, plain.strength, plain.strength_2),
            (4, 1.0, None)
        );
        let two = LoraChoice::from_str("4:0.8,0.25").unwrap();
        assert_eq!((two.strength, two.strength_2), (0.8, Some(0.25)));
        assert!(LoraChoice::from_str("x:1").is_err());
        assert!(LoraChoice::from_str("4:loud").is_err());
    }
}
