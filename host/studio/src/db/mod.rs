//! The project database: one SQLite file, the source of truth for projects, shots, assets,
//! generations, jobs and plugins. Opens with WAL and foreign keys, applies migrations, and hands
//! out its connection under a lock. It must never hold derived state (the search index is rebuilt
//! from here, not the other way round).

mod migrations;

pub use migrations::{MIGRATIONS, SCHEMA_VERSION};

use crate::error::{Result, StudioError};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// How long a statement waits for another connection's lock before reporting `DatabaseBusy`.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Db {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl Db {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    /// A read-only file opens for reading when its schema is current; writes then fail with
    /// [`StudioError::ReadOnly`].
    pub fn open(path: &Path) -> Result<Db> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(|e| open_error(path, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        let read_only = conn.is_readonly(rusqlite::MAIN_DB)?;
        if !read_only {
            // WAL lets readers (API, CLI) proceed while the job queue writes.
            let mode: String =
                conn.pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(%mode, "database did not switch to WAL");
            }
            conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        migrations::apply(&conn, path, read_only)?;
        Ok(Db {
            path: path.to_owned(),
            conn: Mutex::new(conn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection. Keep `f` short: every other caller waits for it.
    pub fn with<R>(&self, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&conn)
    }

    /// Runs `f` inside one transaction, committed when `f` succeeds.
    pub fn transaction<R>(&self, f: impl FnOnce(&rusqlite::Transaction) -> Result<R>) -> Result<R> {
        let mut conn = self
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

fn open_error(path: &Path, err: rusqlite::Error) -> StudioError {
    match StudioError::from(err) {
        StudioError::Internal(e) => {
            StudioError::Internal(e.context(format!("cannot open database {}", path.display())))
        }
        other => other,
    }
}

/// Milliseconds since the Unix epoch, the unit of every timestamp column.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// RFC 3339 (UTC) form of a timestamp column, as the API and CLI show it.
pub fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Parses an RFC 3339 time or a plain `YYYY-MM-DD` date (midnight UTC) into milliseconds.
pub fn parse_time(text: &str) -> Result<i64> {
    use time::format_description::well_known::Rfc3339;
    let parsed = time::OffsetDateTime::parse(text, &Rfc3339).or_else(|_| {
        time::Date::parse(
            text,
            time::macros::format_description!("[year]-[month]-[day]"),
        )
        .map(|d| d.midnight().assume_utc())
    });
    match parsed {
        Ok(t) => Ok(i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)),
        Err(_) => Err(StudioError::Invalid(format!(
            "cannot read time {text:?}: expected RFC 3339 (2026-01-31T12:00:00Z) or a date (2026-01-31)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_database_gets_current_schema_with_wal_and_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("studio.db")).unwrap();
        db.with(|c| {
            let version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
            assert_eq!(version, SCHEMA_VERSION);
            let mode: String = c.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
            assert_eq!(mode, "wal");
            let fk: bool = c.pragma_query_value(None, "foreign_keys", |r| r.get(0))?;
            assert!(fk);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn older_database_is_upgraded_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("studio.db");
        {
            // A database as the first release left it: only migration 1 applied.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO projects (name, created_at, updated_at) VALUES ('kept', 1, 1)",
                [],
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        db.with(|c| {
            let version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
            assert_eq!(version, SCHEMA_VERSION);
            let name: String = c.query_row("SELECT name FROM projects", [], |r| r.get(0))?;
            assert_eq!(name, "kept");
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn the_lora_kind_rebuilds_assets_without_touching_what_refers_to_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("studio.db");
        {
            // Version 7, with a take of a shot and its generation record naming an asset.
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "foreign_keys", true).unwrap();
            for sql in &MIGRATIONS[..7] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 7).unwrap();
            conn.execute_batch(
                "INSERT INTO projects (id, name, created_at, updated_at) VALUES (1, 'p', 1, 1);
                 INSERT INTO storyboards (id, project_id, title, created_at, updated_at)
                     VALUES (1, 1, 's', 1, 1);
                 INSERT INTO shots (id, storyboard_id, position, created_at, updated_at)
                     VALUES (1, 1, 0, 1, 1);
                 INSERT INTO assets (id, sha256, kind, mime, size_bytes, original_name,
                     project_id, created_at)
                     VALUES (5, printf('%064d', 5), 'video', 'video/mp4', 9, 't.mp4', 1, 1);
                 INSERT INTO generations (id, shot_id, asset_id, model, params, engine_version,
                     created_at) VALUES (3, 1, 5, 'm', '{}', 'v', 1);
                 INSERT INTO takes (id, shot_id, asset_id, generation_id, created_at)
                     VALUES (2, 1, 5, 3, 1);",
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        db.with(|c| {
            let take: (i64, i64) = c.query_row(
                "SELECT asset_id, generation_id FROM takes WHERE id = 2",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            assert_eq!(take, (5, 3), "dropping the old table fired no ON DELETE");
            let generation: Option<i64> =
                c.query_row("SELECT asset_id FROM generations WHERE id = 3", [], |r| {
                    r.get(0)
                })?;
            assert_eq!(generation, Some(5));
            let fk: bool = c.pragma_query_value(None, "foreign_keys", |r| r.get(0))?;
            assert!(fk, "foreign keys are back on after migrating");
            // The new kind is accepted, and the foreign keys still point at the new table.
            c.execute(
                "INSERT INTO assets (sha256, kind, mime, size_bytes, original_name, created_at)
                 VALUES (printf('%064d', 6), 'lora', 'application/x-safetensors', 9, 'l.safetensors', 1)",
                [],
            )?;
            assert!(
                c.execute(
                    "INSERT INTO takes (shot_id, asset_id, created_at) VALUES (1, 99, 1)",
                    []
                )
                .is_err()
            );
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn generations_of_an_older_database_get_the_layout_their_jobs_ran_with() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("studio.db");
        {
            // Version 9: a split generate job, a one-card one, and a finish without a job.
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..9] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 9).unwrap();
            let ranks = r#"[{"rank":0,"device":"cuda:0","seconds":2.5,"exchange":{"exchanges":9,"ms":40.0}},
                            {"rank":1,"device":"cuda:1","seconds":2.4,"exchange":{"exchanges":9,"ms":41.0}}]"#;
            conn.execute(
                "INSERT INTO jobs (id, kind, lane, params, state, result, created_at) VALUES
                     (1, 'generate', 'gpu',
                      '{\"shot_id\": 1, \"render\": {\"split_cards\": 2, \"cfg_parallel\": true}}',
                      'succeeded', json_object('generation_id', 1, 'ranks', json(?1)), 1),
                     (2, 'generate', 'gpu', '{\"shot_id\": 1}', 'succeeded',
                      '{\"generation_id\": 2}', 1)",
                [ranks],
            )
            .unwrap();
            conn.execute_batch(
                "INSERT INTO generations (id, job_id, model, params, engine_version, created_at)
                     VALUES (1, 1, 'm', '{}', 'v', 1), (2, 2, 'm', '{}', 'v', 1);
                 INSERT INTO generations (id, model, params, engine_version, created_at, kind)
                     VALUES (3, 'm', '{}', 'v', 1, 'finish');",
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let layouts = db
            .with(|c| {
                let mut stmt = c.prepare(
                    "SELECT split_cards, cfg_parallel, json_array_length(ranks),
                            json_extract(ranks, '$[1].device')
                     FROM generations ORDER BY id",
                )?;
                let rows =
                    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
                Ok(rows.collect::<rusqlite::Result<Vec<(i64, bool, i64, Option<String>)>>>()?)
            })
            .unwrap();
        assert_eq!(
            layouts,
            [
                (2, true, 2, Some("cuda:1".into())),
                (1, false, 0, None),
                (1, false, 0, None)
            ]
        );
    }

    #[test]
    fn newer_database_is_refused_with_versions_in_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("studio.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 7)
            .unwrap();
        let err = Db::open(&path).err().expect("newer schema must be refused");
        let message = err.to_string();
        assert!(matches!(err, StudioError::SchemaTooNew { .. }), "{message}");
        assert!(message.contains(&format!("schema version {}", SCHEMA_VERSION + 7)));
        assert!(message.contains("upgrade VideosDGX"));
    }

    #[test]
    fn parse_time_accepts_dates_and_rfc3339() {
        assert_eq!(parse_time("1970-01-02").unwrap(), 86_400_000);
        assert_eq!(parse_time("1970-01-01T00:00:01Z").unwrap(), 1000);
        assert!(parse_time("yesterday").is_err());
    }
}
