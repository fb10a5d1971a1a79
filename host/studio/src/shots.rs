//! Ordered shots of a storyboard, their reference assets, and their takes (generated outputs, one
//! of which may be chosen, each with the reviewer's verdict once reviewed). Positions are always
//! 0..n without gaps.

use crate::db::{Db, now_ms, rfc3339};
use crate::error::{Result, StudioError};
use crate::generation::GenerationLayout;
use crate::projects::get_storyboard;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub const SHOT_STATUSES: &[&str] = &[
    "draft",
    "queued",
    "generating",
    "generated",
    "approved",
    "failed",
];

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Shot {
    pub id: i64,
    pub storyboard_id: i64,
    /// 0-based place in the storyboard.
    pub position: i64,
    pub prompt: String,
    pub negative_prompt: String,
    pub duration_s: f64,
    pub model: Option<String>,
    pub seed: Option<u64>,
    pub camera: String,
    pub transition: String,
    /// Asset ids the shot is conditioned on, in order.
    pub references: Vec<i64>,
    /// One of draft, queued, generating, generated, approved, failed.
    pub status: String,
    pub chosen_take_id: Option<i64>,
    /// The user picked the chosen take (the review loop then never replaces it).
    pub chosen_by_user: bool,
    /// Why the user should look at this shot, e.g. every attempt failed review.
    pub attention: Option<String>,
    /// The still its image-to-video generation starts from (an image asset), if one was made.
    pub keyframe_asset_id: Option<i64>,
    /// What the keyframe shows (the expander's still-image prompt); the shot's prompt when empty.
    pub keyframe_prompt: String,
    pub takes: Vec<Take>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Take {
    pub id: i64,
    pub shot_id: i64,
    pub asset_id: i64,
    pub generation_id: Option<i64>,
    /// The take this one is a finish of (upscaled, interpolated), if it is one.
    pub finished_from: Option<i64>,
    /// The finish target it was made to, e.g. `4k@24`.
    pub finish_target: Option<String>,
    pub created_at: String,
    /// The reviewer's verdict, when the take was reviewed.
    pub review: Option<Review>,
    /// How its generation was laid out across cards, as its generation record says (none
    /// without a record).
    pub layout: Option<GenerationLayout>,
}

/// A reviewer plugin's judgement of one take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Review {
    pub id: i64,
    pub take_id: i64,
    pub plugin_id: String,
    /// `accept` or `retry`.
    pub verdict: String,
    /// From 0 (unusable) to 1 (exactly the shot).
    pub score: f64,
    pub reasons: String,
    pub revised_prompt: Option<String>,
    pub revised_negative_prompt: Option<String>,
    /// 1 for the first attempt of the run that made the take.
    pub attempt: u32,
    pub created_at: String,
}

/// A review to record; see [`add_review`].
#[derive(Debug, Clone)]
pub struct NewReview {
    pub take_id: i64,
    pub plugin_id: String,
    pub accept: bool,
    pub score: f64,
    pub reasons: String,
    pub revised_prompt: Option<String>,
    pub revised_negative_prompt: Option<String>,
    pub attempt: u32,
}

/// Fields of a shot to set; absent fields keep their value (or the default on creation).
/// An empty `model` clears it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShotFields {
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub duration_s: Option<f64>,
    pub model: Option<String>,
    pub seed: Option<u64>,
    pub camera: Option<String>,
    pub transition: Option<String>,
    pub references: Option<Vec<i64>>,
    pub status: Option<String>,
    pub chosen_take_id: Option<i64>,
    pub keyframe_prompt: Option<String>,
}

impl ShotFields {
    fn check(&self) -> Result<()> {
        if let Some(d) = self.duration_s
            && !(d.is_finite() && d > 0.0 && d <= 600.0)
        {
            return Err(StudioError::Invalid(format!(
                "duration_s must be between 0 and 600 seconds, got {d}"
            )));
        }
        if let Some(s) = &self.status
            && !SHOT_STATUSES.contains(&s.as_str())
        {
            return Err(StudioError::Invalid(format!(
                "status {s:?} is not one of {}",
                SHOT_STATUSES.join(", ")
            )));
        }
        if let Some(t) = &self.transition
            && (t.is_empty() || t.len() > 64)
        {
            return Err(StudioError::Invalid(
                "transition must be 1 to 64 characters".into(),
            ));
        }
        if let Some(seed) = self.seed
            && i64::try_from(seed).is_err()
        {
            return Err(StudioError::Invalid(format!(
                "seed {seed} is larger than {}",
                i64::MAX
            )));
        }
        Ok(())
    }
}

/// Takes with their generation's layout columns (null without a record) and their review
/// (`review_*`, null before one): every take is read through it, so each says how it was laid out
/// and what its reviewer said wherever it is returned.
const SELECT_TAKES: &str = "SELECT t.*, g.split_cards, g.cfg_parallel, g.ranks,
         r.id AS review_id, r.take_id AS review_take_id, r.plugin_id AS review_plugin_id,
         r.verdict AS review_verdict, r.score AS review_score, r.reasons AS review_reasons,
         r.revised_prompt AS review_revised_prompt,
         r.revised_negative_prompt AS review_revised_negative_prompt,
         r.attempt AS review_attempt, r.created_at AS review_created_at
     FROM takes t LEFT JOIN generations g ON g.id = t.generation_id
         LEFT JOIN take_reviews r ON r.take_id = t.id";

/// A row of [`SELECT_TAKES`].
fn take_from_row(row: &Row) -> rusqlite::Result<Take> {
    let recorded = row.get::<_, Option<i64>>("split_cards")?.is_some();
    Ok(Take {
        id: row.get("id")?,
        shot_id: row.get("shot_id")?,
        asset_id: row.get("asset_id")?,
        generation_id: row.get("generation_id")?,
        finished_from: row.get("finished_from")?,
        finish_target: row.get("finish_target")?,
        created_at: rfc3339(row.get("created_at")?),
        review: match row.get::<_, Option<i64>>("review_id")? {
            Some(_) => Some(review_from_row(row, "review_")?),
            None => None,
        },
        layout: recorded
            .then(|| GenerationLayout::from_row(row))
            .transpose()?,
    })
}

/// Take `id`, read on `c` (in the caller's transaction, if any).
fn read_take(c: &Connection, id: i64) -> Result<Take> {
    c.query_row(
        &format!("{SELECT_TAKES} WHERE t.id = ?1"),
        [id],
        take_from_row,
    )
    .optional()?
    .ok_or_else(|| StudioError::not_found("take", id))
}

/// A review from `row`'s columns named `prefix` + the table's (`review_` in [`SELECT_TAKES`]).
fn review_from_row(row: &Row, prefix: &str) -> rusqlite::Result<Review> {
    let column = |name: &str| format!("{prefix}{name}");
    Ok(Review {
        id: row.get(&*column("id"))?,
        take_id: row.get(&*column("take_id"))?,
        plugin_id: row.get(&*column("plugin_id"))?,
        verdict: row.get(&*column("verdict"))?,
        score: row.get(&*column("score"))?,
        reasons: row.get(&*column("reasons"))?,
        revised_prompt: row.get(&*column("revised_prompt"))?,
        revised_negative_prompt: row.get(&*column("revised_negative_prompt"))?,
        attempt: row.get(&*column("attempt"))?,
        created_at: rfc3339(row.get(&*column("created_at"))?),
    })
}

fn load_shot(c: &Connection, id: i64) -> Result<Shot> {
    let mut shot = c
        .query_row("SELECT * FROM shots WHERE id = ?1", [id], |row| {
            Ok(Shot {
                id: row.get("id")?,
                storyboard_id: row.get("storyboard_id")?,
                position: row.get("position")?,
                prompt: row.get("prompt")?,
                negative_prompt: row.get("negative_prompt")?,
                duration_s: row.get("duration_s")?,
                model: row.get("model")?,
                seed: row.get::<_, Option<i64>>("seed")?.map(|s| s as u64),
                camera: row.get("camera")?,
                transition: row.get("transition")?,
                references: Vec::new(),
                status: row.get("status")?,
                chosen_take_id: row.get("chosen_take_id")?,
                chosen_by_user: row.get("chosen_by_user")?,
                attention: row.get("attention")?,
                keyframe_asset_id: row.get("keyframe_asset_id")?,
                keyframe_prompt: row.get("keyframe_prompt")?,
                takes: Vec::new(),
                created_at: rfc3339(row.get("created_at")?),
                updated_at: rfc3339(row.get("updated_at")?),
            })
        })
        .optional()?
        .ok_or_else(|| StudioError::not_found("shot", id))?;
    let mut refs = c.prepare_cached(
        "SELECT asset_id FROM shot_references WHERE shot_id = ?1 ORDER BY position",
    )?;
    shot.references = refs
        .query_map([id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut takes = c.prepare_cached(&format!(
        "{SELECT_TAKES} WHERE t.shot_id = ?1 ORDER BY t.id"
    ))?;
    shot.takes = takes
        .query_map([id], take_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(shot)
}

/// Writes `fields` onto shot `id` (inside the caller's transaction).
fn apply_fields(c: &Connection, id: i64, fields: &ShotFields) -> Result<()> {
    let now = now_ms();
    let set = |column: &str, value: &dyn rusqlite::ToSql| -> Result<()> {
        c.execute(
            &format!("UPDATE shots SET {column} = ?2, updated_at = ?3 WHERE id = ?1"),
            params![id, value, now],
        )?;
        Ok(())
    };
    if let Some(v) = &fields.prompt {
        set("prompt", v)?;
    }
    if let Some(v) = &fields.negative_prompt {
        set("negative_prompt", v)?;
    }
    if let Some(v) = fields.duration_s {
        set("duration_s", &v)?;
    }
    if let Some(v) = &fields.model {
        let model = (!v.trim().is_empty()).then(|| v.trim().to_owned());
        set("model", &model)?;
    }
    if let Some(v) = fields.seed {
        set("seed", &(v as i64))?;
    }
    if let Some(v) = &fields.camera {
        set("camera", v)?;
    }
    if let Some(v) = &fields.transition {
        set("transition", v)?;
    }
    if let Some(v) = &fields.status {
        set("status", v)?;
    }
    if let Some(v) = &fields.keyframe_prompt {
        set("keyframe_prompt", v)?;
    }
    if let Some(take) = fields.chosen_take_id {
        let owner: Option<i64> = c
            .query_row("SELECT shot_id FROM takes WHERE id = ?1", [take], |r| {
                r.get(0)
            })
            .optional()?;
        if owner != Some(id) {
            return Err(StudioError::Invalid(format!(
                "take {take} is not a take of shot {id}"
            )));
        }
        set("chosen_take_id", &take)?;
        // The user's choice: the review loop keeps it, and the shot needs no more attention.
        set("chosen_by_user", &true)?;
        set("attention", &None::<String>)?;
    }
    if let Some(refs) = &fields.references {
        c.execute("DELETE FROM shot_references WHERE shot_id = ?1", [id])?;
        for (position, asset) in refs.iter().enumerate() {
            let exists: bool = c.query_row(
                "SELECT EXISTS(SELECT 1 FROM assets WHERE id = ?1)",
                [asset],
                |r| r.get(0),
            )?;
            if !exists {
                return Err(StudioError::Invalid(format!(
                    "reference asset {asset} does not exist"
                )));
            }
            c.execute(
                "INSERT OR IGNORE INTO shot_references (shot_id, asset_id, position) VALUES (?1, ?2, ?3)",
                params![id, asset, position as i64],
            )?;
        }
    }
    Ok(())
}

/// Appends a new shot at the end of the storyboard.
pub fn create_shot(db: &Db, storyboard_id: i64, fields: &ShotFields) -> Result<Shot> {
    fields.check()?;
    get_storyboard(db, storyboard_id)?;
    db.transaction(|tx| {
        let now = now_ms();
        let id: i64 = tx.query_row(
            "INSERT INTO shots (storyboard_id, position, created_at, updated_at)
             VALUES (?1, (SELECT count(*) FROM shots WHERE storyboard_id = ?1), ?2, ?2)
             RETURNING id",
            params![storyboard_id, now],
            |r| r.get(0),
        )?;
        apply_fields(tx, id, fields)?;
        load_shot(tx, id)
    })
}

pub fn get_shot(db: &Db, id: i64) -> Result<Shot> {
    db.with(|c| load_shot(c, id))
}

pub fn list_shots(db: &Db, storyboard_id: i64) -> Result<Vec<Shot>> {
    get_storyboard(db, storyboard_id)?;
    db.with(|c| {
        let mut stmt =
            c.prepare("SELECT id FROM shots WHERE storyboard_id = ?1 ORDER BY position")?;
        let ids: Vec<i64> = stmt
            .query_map([storyboard_id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        ids.into_iter().map(|id| load_shot(c, id)).collect()
    })
}

pub fn update_shot(db: &Db, id: i64, fields: &ShotFields) -> Result<Shot> {
    fields.check()?;
    db.transaction(|tx| {
        load_shot(tx, id)?;
        apply_fields(tx, id, fields)?;
        load_shot(tx, id)
    })
}

/// Deletes a shot and closes the gap it leaves in the order.
pub fn delete_shot(db: &Db, id: i64) -> Result<()> {
    db.transaction(|tx| {
        let shot = load_shot(tx, id)?;
        tx.execute("DELETE FROM shots WHERE id = ?1", [id])?;
        tx.execute(
            "UPDATE shots SET position = position - 1 WHERE storyboard_id = ?1 AND position > ?2",
            params![shot.storyboard_id, shot.position],
        )?;
        Ok(())
    })
}

/// Puts the storyboard's shots in the order given, which must name each of its shots once.
pub fn reorder_shots(db: &Db, storyboard_id: i64, order: &[i64]) -> Result<Vec<Shot>> {
    get_storyboard(db, storyboard_id)?;
    db.transaction(|tx| {
        let mut stmt = tx.prepare("SELECT id FROM shots WHERE storyboard_id = ?1 ORDER BY id")?;
        let mut current: Vec<i64> = stmt
            .query_map([storyboard_id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut wanted = order.to_vec();
        current.sort_unstable();
        wanted.sort_unstable();
        if current != wanted {
            return Err(StudioError::Invalid(format!(
                "the order must list each shot of storyboard {storyboard_id} exactly once \
                 (it has {current:?}, got {order:?})"
            )));
        }
        for (position, id) in order.iter().enumerate() {
            tx.execute(
                "UPDATE shots SET position = ?2 WHERE id = ?1",
                params![id, position as i64],
            )?;
        }
        Ok(())
    })?;
    list_shots(db, storyboard_id)
}

/// Records a generated output as a take of a shot. For the generation runner and plugins:
/// call it inside the transaction that writes the generation record.
pub fn add_take(c: &Connection, shot_id: i64, asset_id: i64, generation_id: i64) -> Result<Take> {
    let id = c.query_row(
        "INSERT INTO takes (shot_id, asset_id, generation_id, created_at) VALUES (?1, ?2, ?3, ?4)
         RETURNING id",
        params![shot_id, asset_id, generation_id, now_ms()],
        |row| row.get(0),
    )?;
    read_take(c, id)
}

/// Records a finish of take `source` as a new take of the same shot.
pub fn add_finished_take(
    c: &Connection,
    source: &Take,
    asset_id: i64,
    generation_id: i64,
    target: &str,
) -> Result<Take> {
    let id = c.query_row(
        "INSERT INTO takes (shot_id, asset_id, generation_id, finished_from, finish_target, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
        params![source.shot_id, asset_id, generation_id, source.id, target, now_ms()],
        |row| row.get(0),
    )?;
    read_take(c, id)
}

/// One take, by id.
pub fn get_take(db: &Db, id: i64) -> Result<Take> {
    db.with(|c| read_take(c, id))
}

/// Records the review of a take (a take is reviewed once).
pub fn add_review(db: &Db, review: &NewReview) -> Result<Review> {
    db.with(|c| {
        Ok(c.query_row(
            "INSERT INTO take_reviews (take_id, plugin_id, verdict, score, reasons, revised_prompt,
                 revised_negative_prompt, attempt, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING *",
            params![
                review.take_id,
                review.plugin_id,
                if review.accept { "accept" } else { "retry" },
                review.score,
                review.reasons,
                review.revised_prompt,
                review.revised_negative_prompt,
                review.attempt,
                now_ms()
            ],
            |row| review_from_row(row, ""),
        )?)
    })
}

/// What the review loop decided for a shot: its chosen take and whether it needs the user's
/// attention. A take the user chose stays chosen and needs none.
pub fn settle(db: &Db, id: i64, best_take: Option<i64>, attention: Option<&str>) -> Result<Shot> {
    db.transaction(|tx| {
        load_shot(tx, id)?;
        tx.execute(
            "UPDATE shots SET attention = CASE WHEN chosen_by_user THEN NULL ELSE ?2 END,
                 updated_at = ?3,
                 chosen_take_id = CASE WHEN chosen_by_user OR ?4 IS NULL THEN chosen_take_id
                                       ELSE ?4 END
             WHERE id = ?1",
            params![id, attention, now_ms(), best_take],
        )?;
        load_shot(tx, id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projects::{create_project, create_storyboard};

    fn board() -> (tempfile::TempDir, Db, i64) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("s.db")).unwrap();
        let p = create_project(&db, "p").unwrap();
        let s = create_storyboard(&db, p.id, "s", "").unwrap();
        (dir, db, s.id)
    }

    fn prompts(db: &Db, board: i64) -> Vec<String> {
        list_shots(db, board)
            .unwrap()
            .into_iter()
            .map(|s| s.prompt)
            .collect()
    }

    #[test]
    fn shots_keep_gapless_order_through_reorder_and_delete() {
        let (_dir, db, board) = board();
        let ids: Vec<i64> = ["a", "b", "c"]
            .iter()
            .map(|p| {
                let fields = ShotFields {
                    prompt: Some(p.to_string()),
                    ..Default::default()
                };
                create_shot(&db, board, &fields).unwrap().id
            })
            .collect();
        reorder_shots(&db, board, &[ids[2], ids[0], ids[1]]).unwrap();
        assert_eq!(prompts(&db, board), ["c", "a", "b"]);
        delete_shot(&db, ids[2]).unwrap();
        let shots = list_shots(&db, board).unwrap();
        assert_eq!(shots.iter().map(|s| s.position).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(prompts(&db, board), ["a", "b"]);
    }

    #[test]
    fn reorder_that_omits_a_shot_is_refused_and_changes_nothing() {
        let (_dir, db, board) = board();
        let a = create_shot(&db, board, &ShotFields::default()).unwrap();
        create_shot(&db, board, &ShotFields::default()).unwrap();
        let err = reorder_shots(&db, board, &[a.id]).unwrap_err();
        assert!(matches!(err, StudioError::Invalid(_)), "{err}");
        assert_eq!(list_shots(&db, board).unwrap()[0].id, a.id);
    }

    #[test]
    fn unknown_status_and_missing_reference_are_refused() {
        let (_dir, db, board) = board();
        let bad = ShotFields {
            status: Some("done".into()),
            ..Default::default()
        };
        assert!(matches!(
            create_shot(&db, board, &bad),
            Err(StudioError::Invalid(_))
        ));
        let bad = ShotFields {
            references: Some(vec![99]),
            ..Default::default()
        };
        assert!(matches!(
            create_shot(&db, board, &bad),
            Err(StudioError::Invalid(_))
        ));
        assert!(
            list_shots(&db, board).unwrap().is_empty(),
            "failed create left no row"
        );
    }
}
