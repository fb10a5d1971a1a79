//! Studio-wide settings the user chose, stored in the `settings` table (one text value per
//! key) so they survive restarts. Callers own the meaning of their key and its default.

use crate::db::{Db, now_ms};
use crate::error::Result;
use rusqlite::{OptionalExtension, params};

pub fn get(db: &Db, key: &str) -> Result<Option<String>> {
    db.with(|c| {
        Ok(
            c.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?,
        )
    })
}

pub fn set(db: &Db, key: &str, value: &str) -> Result<()> {
    set_all(db, &[(key, Some(value))])
}

/// Sets (`Some`) or clears (`None`) several keys in one transaction: settings that only make
/// sense together never show half a change.
pub fn set_all(db: &Db, values: &[(&str, Option<&str>)]) -> Result<()> {
    db.with(|c| {
        let tx = c.unchecked_transaction()?;
        for (key, value) in values {
            match value {
                Some(value) => tx.execute(
                    "INSERT INTO settings (key, value, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    params![key, value, now_ms()],
                )?,
                None => tx.execute("DELETE FROM settings WHERE key = ?1", [key])?,
            };
        }
        tx.commit()?;
        Ok(())
    })
}
