//! The asset library: validated media files stored by content hash, their metadata rows, and the
//! search index derived from those rows. Imports go stage -> validate -> store -> row -> index, so
//! a failure at any step leaves what was stored before untouched.

pub mod lora;
pub mod media;
pub mod search;
pub mod store;

pub use lora::{LoraInfo, LoraTarget};
pub use media::{MediaInfo, MediaKind};
pub use search::{SearchIndex, SearchQuery};
pub use store::{BlobStore, Finished, Staged};

use crate::db::{Db, now_ms, rfc3339};
use crate::error::{Result, StudioError};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Asset {
    pub id: i64,
    pub sha256: String,
    pub kind: MediaKind,
    pub mime: String,
    pub size_bytes: u64,
    pub original_name: String,
    pub project_id: Option<i64>,
    pub caption: String,
    pub tags: Vec<String>,
    /// The prompt that generated it, if generated.
    pub prompt: String,
    pub model: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// What a `lora` asset is (format, modules, family, the model it adapts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraInfo>,
    /// RFC 3339, UTC.
    pub created_at: String,
    #[serde(skip)]
    pub created_ms: i64,
}

/// Metadata given with an import.
#[derive(Debug, Clone, Default)]
pub struct NewAsset {
    pub name: String,
    pub project_id: Option<i64>,
    pub caption: String,
    pub tags: Vec<String>,
    pub prompt: String,
    pub model: Option<String>,
}

/// A search result: the asset and its relevance (higher is better).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SearchHit {
    pub score: f32,
    #[serde(flatten)]
    pub asset: Asset,
}

fn asset_from_row(row: &Row) -> rusqlite::Result<Asset> {
    let kind: String = row.get("kind")?;
    let tags: String = row.get("tags")?;
    let created_ms: i64 = row.get("created_at")?;
    let lora: Option<String> = row.get("lora")?;
    Ok(Asset {
        id: row.get("id")?,
        sha256: row.get("sha256")?,
        kind: kind.parse().unwrap_or(MediaKind::Image),
        mime: row.get("mime")?,
        size_bytes: row.get::<_, i64>("size_bytes")? as u64,
        original_name: row.get("original_name")?,
        project_id: row.get("project_id")?,
        caption: row.get("caption")?,
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        prompt: row.get("prompt")?,
        model: row.get("model")?,
        width: row.get("width")?,
        height: row.get("height")?,
        lora: lora.and_then(|l| serde_json::from_str(&l).ok()),
        created_at: rfc3339(created_ms),
        created_ms,
    })
}

/// Refuses names that try to act as paths. Names are only labels (files are stored by hash), but
/// they end up in downloads and exports, so `../x`, `a/b`, `C:\x` and control characters are out.
pub fn checked_file_name(name: &str) -> Result<String> {
    let trimmed = name.trim();
    let bad = trimmed.is_empty()
        || trimmed == "."
        || trimmed == ".."
        || trimmed.contains(['/', '\\', ':'])
        || trimmed.chars().any(char::is_control)
        || trimmed.len() > 255;
    if bad {
        return Err(StudioError::Invalid(format!(
            "file name {name:?} is not a plain file name (no paths, '..', ':' or control characters; \
             at most 255 bytes)"
        )));
    }
    Ok(trimmed.to_owned())
}

/// Lowercases, trims and de-duplicates tags; refuses tags that cannot round-trip a comma list.
pub fn normalized_tags<S: AsRef<str>>(tags: &[S]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for tag in tags {
        let tag = tag.as_ref().trim().to_lowercase();
        if tag.is_empty() {
            continue;
        }
        if tag.len() > 64 || tag.contains(',') || tag.chars().any(char::is_control) {
            return Err(StudioError::Invalid(format!(
                "tag {tag:?} must be at most 64 bytes without commas or control characters"
            )));
        }
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    Ok(out)
}

pub struct AssetLibrary {
    store: BlobStore,
    index: SearchIndex,
}

impl AssetLibrary {
    /// Opens the blob store under `<data>/assets` and the index under `<data>/index`, rebuilding
    /// the index from `db` when it is new, damaged or does not match the database.
    pub fn open(data_dir: &Path, db: &Db) -> Result<AssetLibrary> {
        let store = BlobStore::open(&data_dir.join("assets"))?;
        let (index, fresh) = SearchIndex::open_or_create(&data_dir.join("index"))?;
        let library = AssetLibrary { store, index };
        let rows: i64 =
            db.with(|c| Ok(c.query_row("SELECT count(*) FROM assets", [], |r| r.get(0))?))?;
        if fresh || library.index.num_docs() != rows as u64 {
            let count = library.reindex(db)?;
            tracing::info!(count, "rebuilt the asset search index from the database");
        }
        Ok(library)
    }

    /// Rebuilds the search index from the database; returns the number of assets indexed.
    pub fn reindex(&self, db: &Db) -> Result<u64> {
        let assets = db.with(|c| {
            let mut stmt = c.prepare("SELECT * FROM assets ORDER BY id")?;
            let rows = stmt.query_map([], asset_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })?;
        self.index.rebuild(assets.into_iter().map(Ok))
    }

    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    pub fn index(&self) -> &SearchIndex {
        &self.index
    }

    /// Where the bytes of `asset` are.
    pub fn file_of(&self, asset: &Asset) -> PathBuf {
        self.store.path_of(&asset.sha256)
    }

    /// Stages a new upload of at most `limit` bytes.
    pub fn stage(&self, limit: Option<u64>) -> Result<Staged> {
        self.store.stage(limit)
    }

    /// Validates and stores a staged file and records it. Returns the asset and whether it is new
    /// (the same content imported again into the same project returns the existing asset).
    pub fn import_staged(&self, db: &Db, staged: Staged, meta: &NewAsset) -> Result<(Asset, bool)> {
        let (asset, created) = self.import_unindexed(db, staged, meta)?;
        if created {
            self.index.upsert(std::slice::from_ref(&asset))?;
        }
        Ok((asset, created))
    }

    /// Imports the file at `path` (its bytes are copied; the original is left alone).
    pub fn import_file(&self, db: &Db, path: &Path, meta: &NewAsset) -> Result<(Asset, bool)> {
        let staged = self.stage_file(path)?;
        self.import_staged(db, staged, meta)
    }

    fn stage_file(&self, path: &Path) -> Result<Staged> {
        let file = std::fs::File::open(path)
            .map_err(|e| StudioError::Invalid(format!("cannot read {}: {e}", path.display())))?;
        let mut staged = self.stage(None)?;
        staged.write_from(file)?;
        Ok(staged)
    }

    /// Imports several files with one index commit. Files that are not media are reported, not
    /// fatal; `on_file` sees each outcome (for progress and cancellation) and may stop the batch.
    pub fn import_many(
        &self,
        db: &Db,
        files: &[(PathBuf, NewAsset)],
        mut on_file: impl FnMut(usize, &Result<(Asset, bool)>) -> std::ops::ControlFlow<()>,
    ) -> Result<Vec<Result<(Asset, bool)>>> {
        let mut outcomes = Vec::with_capacity(files.len());
        let mut new_assets = Vec::new();
        for (i, (path, meta)) in files.iter().enumerate() {
            let outcome = self
                .stage_file(path)
                .and_then(|staged| self.import_unindexed(db, staged, meta));
            if let Ok((asset, true)) = &outcome {
                new_assets.push(asset.clone());
            }
            // Storage and database faults stop the batch; per-file content problems do not.
            if matches!(
                &outcome,
                Err(StudioError::StorageFull(_)
                    | StudioError::DatabaseBusy
                    | StudioError::ReadOnly(_))
            ) {
                self.index.upsert(&new_assets)?;
                return Err(outcome.expect_err("matched an error"));
            }
            let flow = on_file(i, &outcome);
            outcomes.push(outcome);
            if flow.is_break() {
                break;
            }
        }
        self.index.upsert(&new_assets)?;
        Ok(outcomes)
    }

    /// Imports the file at `path` and writes what `then` records about the asset (a generation
    /// and a take) in the same transaction as the asset's row: a crash leaves both or neither.
    pub fn import_file_recording<T>(
        &self,
        db: &Db,
        path: &Path,
        meta: &NewAsset,
        then: impl FnOnce(&rusqlite::Transaction, &Asset) -> Result<T>,
    ) -> Result<(Asset, T)> {
        let staged = self.stage_file(path)?;
        let (asset, created, recorded) = self.import_unindexed_with(db, staged, meta, then)?;
        if created {
            self.index.upsert(std::slice::from_ref(&asset))?;
        }
        Ok((asset, recorded))
    }

    fn import_unindexed(&self, db: &Db, staged: Staged, meta: &NewAsset) -> Result<(Asset, bool)> {
        let (asset, created, ()) = self.import_unindexed_with(db, staged, meta, |_, _| Ok(()))?;
        Ok((asset, created))
    }

    /// The blob is stored first, then the row and `then`'s records in one transaction: a crash
    /// in between leaves an unreferenced blob, never a row without its file.
    fn import_unindexed_with<T>(
        &self,
        db: &Db,
        staged: Staged,
        meta: &NewAsset,
        then: impl FnOnce(&rusqlite::Transaction, &Asset) -> Result<T>,
    ) -> Result<(Asset, bool, T)> {
        let name = checked_file_name(&meta.name)?;
        let tags = normalized_tags(&meta.tags)?;
        let finished = staged.finish()?;
        let (info, lora) = if lora::is_lora_name(&name) {
            let lora = lora::probe(finished.path(), &name)?;
            let info = MediaInfo {
                kind: MediaKind::Lora,
                mime: lora::MIME,
                width: None,
                height: None,
            };
            (
                info,
                Some(serde_json::to_string(&lora).map_err(anyhow::Error::from)?),
            )
        } else {
            (media::probe(finished.path(), &name)?, None)
        };
        if let Some(project) = meta.project_id {
            crate::projects::get_project(db, project)?;
        }
        let sha256 = finished.sha256.clone();
        let len = finished.len;
        if db
            .with(|c| find_by_content(c, &sha256, meta.project_id))?
            .is_none()
        {
            self.store.commit(finished)?;
        }
        db.transaction(|c| {
            if let Some(existing) = find_by_content(c, &sha256, meta.project_id)? {
                let recorded = then(c, &existing)?;
                return Ok((existing, false, recorded));
            }
            let asset = c.query_row(
                "INSERT INTO assets (sha256, kind, mime, size_bytes, original_name, project_id,
                     caption, tags, prompt, model, width, height, created_at, lora)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) RETURNING *",
                params![
                    sha256,
                    info.kind.as_str(),
                    info.mime,
                    len as i64,
                    name,
                    meta.project_id,
                    meta.caption.trim(),
                    serde_json::to_string(&tags).expect("strings serialize"),
                    meta.prompt,
                    meta.model,
                    info.width,
                    info.height,
                    now_ms(),
                    lora,
                ],
                asset_from_row,
            )?;
            let recorded = then(c, &asset)?;
            Ok((asset, true, recorded))
        })
    }

    /// Replaces the caption and/or tags of asset `id` and reindexes it (the web UI's
    /// "tag and caption"); absent values are kept.
    pub fn update_metadata(
        &self,
        db: &Db,
        id: i64,
        caption: Option<&str>,
        tags: Option<&[String]>,
    ) -> Result<Asset> {
        let current = get_asset(db, id)?;
        let caption = caption.map_or(current.caption, |c| c.trim().to_owned());
        if caption.chars().count() > 2000 {
            return Err(StudioError::Invalid(
                "caption must be at most 2000 characters".into(),
            ));
        }
        let tags = match tags {
            Some(tags) => normalized_tags(tags)?,
            None => current.tags,
        };
        let tags_json = serde_json::to_string(&tags).map_err(anyhow::Error::from)?;
        let asset = db.with(|c| {
            Ok(c.query_row(
                "UPDATE assets SET caption = ?2, tags = ?3 WHERE id = ?1 RETURNING *",
                params![id, caption, tags_json],
                asset_from_row,
            )?)
        })?;
        self.index.upsert(std::slice::from_ref(&asset))?;
        Ok(asset)
    }

    /// Deletes asset `id`: its row, its index entry, and its file when no other asset has the
    /// same content. Refused (as a conflict, saying where) while anything uses it: a LoRA chosen
    /// for a project, character or shot, a take, a shot's reference or keyframe, a look. Its
    /// generation records stay (their `asset_id` becomes null).
    pub fn delete(&self, db: &Db, id: i64) -> Result<()> {
        let asset = db.transaction(|tx| {
            let asset = tx
                .query_row("SELECT * FROM assets WHERE id = ?1", [id], asset_from_row)
                .optional()?
                .ok_or_else(|| StudioError::not_found("asset", id))?;
            let mut uses = crate::loras::uses(tx, id)?;
            for (what, sql) in [
                ("a take", "SELECT count(*) FROM takes WHERE asset_id = ?1"),
                (
                    "a shot's reference",
                    "SELECT count(*) FROM shot_references WHERE asset_id = ?1",
                ),
                (
                    "a shot's keyframe",
                    "SELECT count(*) FROM shots WHERE keyframe_asset_id = ?1",
                ),
                (
                    "a character's look",
                    "SELECT count(*) FROM character_looks WHERE asset_id = ?1",
                ),
            ] {
                let count: i64 = tx.query_row(sql, [id], |r| r.get(0))?;
                if count > 0 {
                    uses.push(what.to_string());
                }
            }
            if !uses.is_empty() {
                let how = if asset.kind == MediaKind::Lora {
                    "remove it from their LoRAs first"
                } else {
                    "it stays in the library"
                };
                return Err(StudioError::Conflict(format!(
                    "asset {id} ({}) is in use by {}: {how}",
                    asset.original_name,
                    uses.join(", ")
                )));
            }
            tx.execute("DELETE FROM assets WHERE id = ?1", [id])?;
            Ok(asset)
        })?;
        self.index.remove(id)?;
        let shared: bool = db.with(|c| {
            Ok(c.query_row(
                "SELECT EXISTS (SELECT 1 FROM assets WHERE sha256 = ?1)",
                [&asset.sha256],
                |r| r.get(0),
            )?)
        })?;
        if !shared {
            self.store.remove(&asset.sha256)?;
        }
        Ok(())
    }

    /// Assets matching `q`, best first.
    pub fn search(&self, db: &Db, q: &SearchQuery) -> Result<Vec<SearchHit>> {
        let hits = self.index.search(q)?;
        db.with(|c| {
            let mut stmt = c.prepare_cached("SELECT * FROM assets WHERE id = ?1")?;
            let mut out = Vec::with_capacity(hits.len());
            for (id, score) in hits {
                // An index entry for a row that no longer exists is skipped, not an error.
                if let Some(asset) = stmt.query_row([id], asset_from_row).optional()? {
                    out.push(SearchHit { score, asset });
                }
            }
            Ok(out)
        })
    }
}

fn find_by_content(c: &Connection, sha256: &str, project: Option<i64>) -> Result<Option<Asset>> {
    Ok(c.query_row(
        "SELECT * FROM assets WHERE sha256 = ?1 AND ifnull(project_id, 0) = ifnull(?2, 0)",
        params![sha256, project],
        asset_from_row,
    )
    .optional()?)
}

pub fn get_asset(db: &Db, id: i64) -> Result<Asset> {
    db.with(|c| {
        c.query_row("SELECT * FROM assets WHERE id = ?1", [id], asset_from_row)
            .optional()?
            .ok_or_else(|| StudioError::not_found("asset", id))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn png(seed: u8) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_pixel(4, 3, image::Rgb([seed, 1, 2]))
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    fn library() -> (tempfile::TempDir, Db, AssetLibrary) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("studio.db")).unwrap();
        let lib = AssetLibrary::open(dir.path(), &db).unwrap();
        (dir, db, lib)
    }

    fn add(lib: &AssetLibrary, db: &Db, bytes: &[u8], meta: NewAsset) -> Result<(Asset, bool)> {
        let mut staged = lib.stage(None)?;
        staged.write(bytes)?;
        lib.import_staged(db, staged, &meta)
    }

    fn meta(name: &str, caption: &str, tags: &[&str]) -> NewAsset {
        NewAsset {
            name: name.into(),
            caption: caption.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn same_content_twice_is_one_asset() {
        let (_d, db, lib) = library();
        let (a, new_a) = add(&lib, &db, &png(1), meta("a.png", "", &[])).unwrap();
        let (b, new_b) = add(&lib, &db, &png(1), meta("b.png", "", &[])).unwrap();
        assert!(new_a && !new_b);
        assert_eq!(a.id, b.id);
        assert_eq!(std::fs::read(lib.file_of(&a)).unwrap(), png(1));
    }

    #[test]
    fn search_ranks_matches_and_applies_tag_filter() {
        let (_d, db, lib) = library();
        add(
            &lib,
            &db,
            &png(1),
            meta("1.png", "a red fox in snow", &["fox", "winter"]),
        )
        .unwrap();
        add(&lib, &db, &png(2), meta("2.png", "a fox", &["fox"])).unwrap();
        add(&lib, &db, &png(3), meta("3.png", "a blue whale", &["sea"])).unwrap();
        let q = |text: &str, tags: &[&str]| SearchQuery {
            text: text.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            limit: 10,
            ..Default::default()
        };
        let hits = lib.search(&db, &q("fox", &[])).unwrap();
        assert_eq!(hits.len(), 2);
        assert_eq!(
            hits[0].asset.original_name, "2.png",
            "shorter caption ranks first"
        );
        let hits = lib.search(&db, &q("fox", &["winter"])).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].asset.original_name, "1.png");
    }

    #[test]
    fn corrupt_index_is_rebuilt_at_open() {
        let (dir, db, lib) = library();
        add(&lib, &db, &png(1), meta("1.png", "kept caption", &[])).unwrap();
        drop(lib);
        std::fs::write(dir.path().join("index/meta.json"), b"{ not json").unwrap();
        let lib = AssetLibrary::open(dir.path(), &db).unwrap();
        let q = SearchQuery {
            text: "kept".into(),
            limit: 5,
            ..Default::default()
        };
        assert_eq!(lib.search(&db, &q).unwrap().len(), 1);
    }

    #[test]
    fn path_tricks_in_names_are_refused() {
        for name in ["../x.png", "a/b.png", "..", "C:\\x.png", "x\0.png", ""] {
            assert!(checked_file_name(name).is_err(), "{name:?}");
        }
        assert_eq!(checked_file_name(" shot 1.png ").unwrap(), "shot 1.png");
    }
}
