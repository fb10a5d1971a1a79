//! `videosdgx assets ...`: import into, search, delete from and reindex the asset library.

use super::Output;
use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use videosdgx_studio::assets::{self, MediaKind, NewAsset, SearchHit, SearchQuery};
use videosdgx_studio::{App, db};

/// What an imported asset is filed under.
#[derive(Args, Debug)]
pub struct Labels {
    /// Project the asset belongs to.
    #[arg(long)]
    project: Option<i64>,
    /// Comma-separated tags.
    #[arg(long, value_delimiter = ',')]
    tags: Vec<String>,
    #[arg(long, default_value = "")]
    caption: String,
}

impl Labels {
    fn asset(self, name: String) -> NewAsset {
        NewAsset {
            name,
            project_id: self.project,
            caption: self.caption,
            tags: self.tags,
            ..Default::default()
        }
    }
}

/// Prints an imported asset, saying when it was in the library already.
fn print_imported(asset: &assets::Asset, created: bool, out: Output) -> anyhow::Result<()> {
    if !created {
        eprintln!("already in the library as asset {}", asset.id);
    }
    out.print(asset, line)
}

#[derive(Subcommand, Debug)]
pub enum AssetsCommand {
    /// Import an image, video or audio file (checked by content), or a LoRA (a `.safetensors`
    /// file the engine reads as one), and print the asset.
    Add {
        file: PathBuf,
        #[command(flatten)]
        labels: Labels,
        #[command(flatten)]
        out: Output,
    },
    /// Show one asset's record.
    Show {
        id: i64,
        #[command(flatten)]
        out: Output,
    },
    /// Search prompt, caption and tags; prints hits best first.
    Search {
        /// Words that must all match; empty lists newest first.
        #[arg(default_value = "")]
        query: String,
        /// image, video, audio or lora.
        #[arg(long)]
        kind: Option<MediaKind>,
        #[arg(long)]
        project: Option<i64>,
        /// Required tag (repeat or comma-separate for several).
        #[arg(long = "tag", value_delimiter = ',')]
        tags: Vec<String>,
        #[arg(long)]
        model: Option<String>,
        /// Created at or after (RFC 3339 or YYYY-MM-DD).
        #[arg(long)]
        since: Option<String>,
        /// Created at or before (RFC 3339 or YYYY-MM-DD).
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long, default_value_t = 0)]
        offset: usize,
        #[command(flatten)]
        out: Output,
    },
    /// Download a LoRA (a `.safetensors` file) from a hub repository (`HF_ENDPOINT`,
    /// `HF_TOKEN` as for `models pull`) and import it; its caption says where it came from.
    PullLora {
        /// `org/name` of the repository.
        repo: String,
        /// The file's path in the repository.
        file: String,
        #[arg(long)]
        revision: Option<String>,
        #[command(flatten)]
        labels: Labels,
        #[command(flatten)]
        out: Output,
    },
    /// Delete an asset (refused while it is in use: a chosen LoRA, a take, a reference, a
    /// keyframe, a look).
    Delete { id: i64 },
    /// Rebuild the search index from the database.
    Reindex {
        #[command(flatten)]
        out: Output,
    },
}

fn line(a: &assets::Asset) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}",
        a.id,
        a.kind.as_str(),
        a.original_name,
        a.tags.join(","),
        a.sha256
    )
}

pub fn run(app: &App, cmd: AssetsCommand) -> anyhow::Result<()> {
    match cmd {
        AssetsCommand::Add { file, labels, out } => {
            let name = file
                .file_name()
                .with_context(|| format!("{} does not name a file", file.display()))?
                .to_string_lossy()
                .into_owned();
            let (asset, created) = app
                .assets
                .import_file(&app.db, &file, &labels.asset(name))
                .with_context(|| format!("cannot import {}", file.display()))?;
            print_imported(&asset, created, out)
        }
        AssetsCommand::Show { id, out } => out.print(&assets::get_asset(&app.db, id)?, line),
        AssetsCommand::Search {
            query,
            kind,
            project,
            tags,
            model,
            since,
            until,
            limit,
            offset,
            out,
        } => {
            let query = SearchQuery {
                text: query,
                kind,
                project_id: project,
                tags: assets::normalized_tags(&tags)?,
                model,
                since: since.as_deref().map(db::parse_time).transpose()?,
                until: until.as_deref().map(db::parse_time).transpose()?,
                limit,
                offset,
            };
            let hits = app.assets.search(&app.db, &query)?;
            out.print(&hits, |hits: &Vec<SearchHit>| {
                hits.iter()
                    .map(|h| format!("{:.3}\t{}", h.score, line(&h.asset)))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        AssetsCommand::PullLora {
            repo,
            file,
            revision,
            labels,
            out,
        } => {
            let wanted = assets::lora::HubLora {
                repo_id: repo,
                file,
                revision,
            };
            let hub = videosdgx_engine::hub::Hub::from_env();
            let (asset, created) = assets::lora::pull(
                &app.assets,
                &app.db,
                app.data_dir(),
                &hub,
                &wanted,
                labels.asset(String::new()),
                &mut |_| {},
            )?;
            print_imported(&asset, created, out)
        }
        AssetsCommand::Delete { id } => {
            app.assets.delete(&app.db, id)?;
            eprintln!("deleted asset {id}");
            Ok(())
        }
        AssetsCommand::Reindex { out } => {
            let indexed = app.assets.reindex(&app.db)?;
            out.print(&serde_json::json!({ "indexed": indexed }), |_| {
                format!("indexed {indexed} assets")
            })
        }
    }
}
