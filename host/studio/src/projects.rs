//! Projects and their storyboards: creation, listing, renaming, deletion. Deleting a project
//! removes its storyboards and shots but keeps its assets in the library (unassigned).

use crate::db::{Db, now_ms, rfc3339};
use crate::error::{Result, StudioError};
use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Project {
    pub id: i64,
    pub name: String,
    /// How many takes the review loop makes of a shot at most (1 to 10).
    pub max_attempts: u32,
    /// Whether shots start from keyframes (character looks, then a still per shot, then
    /// image-to-video); `None`: when an image model and an image-to-video model are installed.
    pub keyframes: Option<bool>,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub updated_at: String,
}

/// Fields of a project to change; absent ones keep their value.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectFields {
    pub name: Option<String>,
    pub max_attempts: Option<u32>,
    pub keyframes: Option<bool>,
}

pub const MAX_ATTEMPTS: std::ops::RangeInclusive<u32> = 1..=10;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Storyboard {
    pub id: i64,
    pub project_id: i64,
    pub title: String,
    pub description: String,
    pub created_at: String,
    pub updated_at: String,
}

fn project_from_row(row: &Row) -> rusqlite::Result<Project> {
    Ok(Project {
        id: row.get("id")?,
        name: row.get("name")?,
        max_attempts: row.get("max_attempts")?,
        keyframes: row.get("keyframes")?,
        created_at: rfc3339(row.get("created_at")?),
        updated_at: rfc3339(row.get("updated_at")?),
    })
}

fn storyboard_from_row(row: &Row) -> rusqlite::Result<Storyboard> {
    Ok(Storyboard {
        id: row.get("id")?,
        project_id: row.get("project_id")?,
        title: row.get("title")?,
        description: row.get("description")?,
        created_at: rfc3339(row.get("created_at")?),
        updated_at: rfc3339(row.get("updated_at")?),
    })
}

/// Trims and checks a user-facing name.
pub(crate) fn checked_name(what: &str, name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(StudioError::Invalid(format!(
            "{what} must be 1 to 200 characters without control characters"
        )));
    }
    Ok(name.to_owned())
}

pub fn create_project(db: &Db, name: &str) -> Result<Project> {
    let name = checked_name("project name", name)?;
    let now = now_ms();
    db.with(|c| {
        Ok(c.query_row(
            "INSERT INTO projects (name, created_at, updated_at) VALUES (?1, ?2, ?2) RETURNING *",
            params![name, now],
            project_from_row,
        )?)
    })
}

pub fn list_projects(db: &Db) -> Result<Vec<Project>> {
    db.with(|c| {
        let mut stmt = c.prepare("SELECT * FROM projects ORDER BY id")?;
        let rows = stmt.query_map([], project_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    })
}

pub fn get_project(db: &Db, id: i64) -> Result<Project> {
    db.with(|c| {
        c.query_row(
            "SELECT * FROM projects WHERE id = ?1",
            [id],
            project_from_row,
        )
        .optional()?
        .ok_or_else(|| StudioError::not_found("project", id))
    })
}

pub fn update_project(db: &Db, id: i64, fields: &ProjectFields) -> Result<Project> {
    let name = match &fields.name {
        Some(name) => Some(checked_name("project name", name)?),
        None => None,
    };
    if let Some(n) = fields.max_attempts
        && !MAX_ATTEMPTS.contains(&n)
    {
        return Err(StudioError::Invalid(format!(
            "max_attempts must be between {} and {}, got {n}",
            MAX_ATTEMPTS.start(),
            MAX_ATTEMPTS.end()
        )));
    }
    db.with(|c| {
        c.query_row(
            "UPDATE projects SET name = coalesce(?2, name),
                 max_attempts = coalesce(?3, max_attempts), updated_at = ?4,
                 keyframes = coalesce(?5, keyframes)
             WHERE id = ?1 RETURNING *",
            params![id, name, fields.max_attempts, now_ms(), fields.keyframes],
            project_from_row,
        )
        .optional()?
        .ok_or_else(|| StudioError::not_found("project", id))
    })
}

pub fn delete_project(db: &Db, id: i64) -> Result<()> {
    let deleted = db.with(|c| Ok(c.execute("DELETE FROM projects WHERE id = ?1", [id])?))?;
    if deleted == 0 {
        return Err(StudioError::not_found("project", id));
    }
    Ok(())
}

pub fn create_storyboard(
    db: &Db,
    project_id: i64,
    title: &str,
    description: &str,
) -> Result<Storyboard> {
    let title = checked_name("storyboard title", title)?;
    get_project(db, project_id)?;
    let now = now_ms();
    db.with(|c| {
        Ok(c.query_row(
            "INSERT INTO storyboards (project_id, title, description, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?4) RETURNING *",
            params![project_id, title, description, now],
            storyboard_from_row,
        )?)
    })
}

pub fn list_storyboards(db: &Db, project_id: i64) -> Result<Vec<Storyboard>> {
    get_project(db, project_id)?;
    db.with(|c| {
        let mut stmt = c.prepare("SELECT * FROM storyboards WHERE project_id = ?1 ORDER BY id")?;
        let rows = stmt.query_map([project_id], storyboard_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    })
}

pub fn get_storyboard(db: &Db, id: i64) -> Result<Storyboard> {
    db.with(|c| {
        c.query_row(
            "SELECT * FROM storyboards WHERE id = ?1",
            [id],
            storyboard_from_row,
        )
        .optional()?
        .ok_or_else(|| StudioError::not_found("storyboard", id))
    })
}

pub fn update_storyboard(
    db: &Db,
    id: i64,
    title: Option<&str>,
    description: Option<&str>,
) -> Result<Storyboard> {
    let current = get_storyboard(db, id)?;
    let title = match title {
        Some(t) => checked_name("storyboard title", t)?,
        None => current.title,
    };
    let description = description.map_or(current.description, str::to_owned);
    db.with(|c| {
        Ok(c.query_row(
            "UPDATE storyboards SET title = ?2, description = ?3, updated_at = ?4
             WHERE id = ?1 RETURNING *",
            params![id, title, description, now_ms()],
            storyboard_from_row,
        )?)
    })
}

pub fn delete_storyboard(db: &Db, id: i64) -> Result<()> {
    let deleted = db.with(|c| Ok(c.execute("DELETE FROM storyboards WHERE id = ?1", [id])?))?;
    if deleted == 0 {
        return Err(StudioError::not_found("storyboard", id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleting_a_project_removes_its_storyboards() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("s.db")).unwrap();
        let p = create_project(&db, "  Trailer ").unwrap();
        assert_eq!(p.name, "Trailer");
        let s = create_storyboard(&db, p.id, "Act 1", "").unwrap();
        delete_project(&db, p.id).unwrap();
        assert!(matches!(
            get_storyboard(&db, s.id),
            Err(StudioError::NotFound { .. })
        ));
        assert!(matches!(
            delete_project(&db, p.id),
            Err(StudioError::NotFound { .. })
        ));
    }

    #[test]
    fn blank_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("s.db")).unwrap();
        assert!(matches!(
            create_project(&db, "  "),
            Err(StudioError::Invalid(_))
        ));
    }
}
