//! The job kinds this build can run. Each runner parses its parameters, calls the service layer
//! and reports progress; none of them touches the queue's bookkeeping.

use super::{JobContext, JobRunner, Lane};
use crate::app::App;
use crate::assets::NewAsset;
use crate::error::{Result, StudioError};
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::PathBuf;

fn parse<T: for<'de> Deserialize<'de>>(kind: &str, params: &Value) -> Result<T> {
    let params = if params.is_null() { &json!({}) } else { params };
    serde_json::from_value(params.clone())
        .map_err(|e| StudioError::Invalid(format!("parameters of {kind} job: {e}")))
}

/// `assets.reindex`: rebuilds the search index from the database.
pub struct Reindex;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReindexParams {}

impl JobRunner for Reindex {
    fn kind(&self) -> &'static str {
        "assets.reindex"
    }
    fn lane(&self) -> Lane {
        Lane::Cpu
    }
    fn check(&self, _app: &App, params: &Value) -> Result<()> {
        parse::<ReindexParams>(self.kind(), params).map(drop)
    }
    fn run(&self, app: &App, ctx: &JobContext, _params: &Value) -> Result<Value> {
        let _ = ctx.progress("indexing", 0, 1);
        let indexed = app.assets.reindex(&app.db)?;
        let _ = ctx.progress("indexing", 1, 1);
        Ok(json!({ "indexed": indexed }))
    }
}

/// `assets.import_folder`: imports every media file of a folder on the studio's machine.
/// Files that are not media are listed in the result, not fatal. Re-running after an
/// interruption is safe: content already imported into the project is recognised.
pub struct ImportFolder;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportFolderParams {
    dir: PathBuf,
    project_id: Option<i64>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    caption: String,
}

impl JobRunner for ImportFolder {
    fn kind(&self) -> &'static str {
        "assets.import_folder"
    }
    fn lane(&self) -> Lane {
        Lane::Cpu
    }
    fn check(&self, _app: &App, params: &Value) -> Result<()> {
        let p: ImportFolderParams = parse(self.kind(), params)?;
        if !p.dir.is_dir() {
            return Err(StudioError::Invalid(format!(
                "{} is not a folder on the studio's machine",
                p.dir.display()
            )));
        }
        crate::assets::normalized_tags(&p.tags).map(drop)
    }
    fn run(&self, app: &App, ctx: &JobContext, params: &Value) -> Result<Value> {
        let p: ImportFolderParams = parse(self.kind(), params)?;
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&p.dir)?
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
            .map(|entry| entry.path())
            .collect();
        paths.sort();
        let files: Vec<(PathBuf, NewAsset)> = paths
            .into_iter()
            .map(|path| {
                let meta = NewAsset {
                    name: path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    project_id: p.project_id,
                    caption: p.caption.clone(),
                    tags: p.tags.clone(),
                    ..Default::default()
                };
                (path, meta)
            })
            .collect();
        let total = files.len() as u64;
        let _ = ctx.progress("importing", 0, total);
        let outcomes = app.assets.import_many(&app.db, &files, |i, _| {
            ctx.progress("importing", i as u64 + 1, total)
        })?;
        if ctx.should_stop() {
            return Err(StudioError::Invalid(format!(
                "stopped after {} of {total} files",
                outcomes.len()
            )));
        }
        let (mut imported, mut existing, mut refused) = (0, 0, Vec::new());
        for ((path, _), outcome) in files.iter().zip(&outcomes) {
            match outcome {
                Ok((_, true)) => imported += 1,
                Ok((_, false)) => existing += 1,
                Err(e) => refused.push(json!({ "file": path, "error": e.to_string() })),
            }
        }
        Ok(json!({ "imported": imported, "existing": existing, "refused": refused }))
    }
}

/// `assets.pull_lora`: downloads a LoRA file from a hub repository into the library.
pub struct PullLora;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PullLoraParams {
    repo_id: String,
    file: String,
    revision: Option<String>,
    project_id: Option<i64>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    caption: String,
}

impl JobRunner for PullLora {
    fn kind(&self) -> &'static str {
        "assets.pull_lora"
    }
    fn lane(&self) -> Lane {
        Lane::Cpu
    }
    fn check(&self, _app: &App, params: &Value) -> Result<()> {
        let p: PullLoraParams = parse(self.kind(), params)?;
        crate::assets::normalized_tags(&p.tags).map(drop)
    }
    fn run(&self, app: &App, ctx: &JobContext, params: &Value) -> Result<Value> {
        let p: PullLoraParams = parse(self.kind(), params)?;
        let meta = NewAsset {
            project_id: p.project_id,
            caption: p.caption,
            tags: p.tags,
            ..Default::default()
        };
        let hub = videosdgx_engine::hub::Hub::from_env();
        let wanted = crate::assets::lora::HubLora {
            repo_id: p.repo_id,
            file: p.file,
            revision: p.revision,
        };
        let (asset, created) = crate::assets::lora::pull(
            &app.assets,
            &app.db,
            app.data_dir(),
            &hub,
            &wanted,
            meta,
            &mut |progress| {
                let _ = ctx.progress("downloading", progress.bytes, progress.file_size);
            },
        )?;
        Ok(json!({ "asset_id": asset.id, "created": created, "asset": asset }))
    }
}
