//! Command-line surface. One module per command group; each parses its own arguments
//! and calls the library crates, printing records as text or, with `--json`, as JSON.

mod assets;
mod auth;
pub mod bench;
mod generate;
mod jobs;
pub mod model;
mod models;
mod plugins;
mod project;
mod render;
mod serve;
mod text;
mod worker;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::path::{Path, PathBuf};
use videosdgx_studio::gpu::CardSet;
use videosdgx_studio::{App, StudioConfig};

#[derive(Parser, Debug)]
#[command(name = "videosdgx", version, about = "Local AI video studio")]
pub struct Cli {
    /// Data directory (database, assets, models, caches). Default: the user's data directory
    /// (e.g. ~/.local/share/videosdgx).
    #[arg(long, global = true, env = "VIDEOSDGX_DATA")]
    pub data: Option<PathBuf>,
    /// The cards jobs run on, one generation per card at a time: `all` (every CUDA device, else
    /// the CPU), CUDA ordinals (`0,1`, `cuda:1`), CPU lanes (`cpu`, once per lane), or, for
    /// `serve`, `none` (generations run on workers' cards only).
    #[arg(long, global = true, env = "VIDEOSDGX_GPUS")]
    pub gpus: Option<CardSet>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the studio server (HTTP API and job queue) until SIGINT/SIGTERM.
    Serve(serve::ServeArgs),
    /// Lend this machine's cards (--gpus) to a studio on another: run its generations here.
    Worker(worker::WorkerArgs),
    /// Create, list, show, rename and delete projects.
    #[command(subcommand)]
    Project(project::ProjectCommand),
    /// Import, search and reindex the asset library.
    #[command(subcommand)]
    Assets(assets::AssetsCommand),
    /// Inspect, cancel and retry queued jobs.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Measure speed: Wan transformer forwards and the fused kernels (CUDA builds only), H.264
    /// encoding and the finish (any build).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Manage the access token for remote (non-loopback) access to `serve`.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Download, list and verify model pipelines.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Install, inspect and manage sandboxed plugins.
    Plugins(plugins::PluginsArgs),
    /// Run single model components (parity checks, debugging).
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Generate a video with a Wan pipeline directory.
    Generate(Box<generate::GenerateArgs>),
    /// Ask a language model (streams its answer; --image to show it pictures, --json-schema for
    /// structured output).
    Chat(Box<text::ChatArgs>),
    /// Continue token ids with a language model (transformers' `generate`), ids in and out.
    GenerateText(Box<text::GenerateTextArgs>),
    /// Turn a screenplay into a finished video: plan, expand, generate each shot, stitch.
    Render(Box<render::RenderArgs>),
}

impl Cli {
    /// The log level when `RUST_LOG` is unset: `render` prints its own progress, so the job
    /// queue's per-job log lines would only interleave with it.
    pub fn default_log_level(&self) -> &'static str {
        match self.command {
            Command::Render(_) => "warn",
            _ => "info",
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let data = data_dir(cli.data)?;
    let mut studio = StudioConfig::new(data.clone());
    if let Some(gpus) = cli.gpus {
        studio.gpus = gpus;
    }
    match cli.command {
        Command::Serve(args) => serve::run(studio, args),
        Command::Worker(args) => worker::run(data, studio.gpus, args),
        Command::Project(cmd) => project::run(&open(studio)?, cmd),
        Command::Assets(cmd) => assets::run(&open(studio)?, cmd),
        Command::Jobs(cmd) => jobs::run(&open(studio)?, cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Auth(cmd) => auth::run(&data, cmd),
        Command::Models(command) => models::run(command, data),
        Command::Plugins(args) => plugins::run(args, &open(studio)?),
        Command::Model(command) => model::run(command),
        Command::Generate(args) => generate::run(*args),
        Command::Render(args) => {
            // No worker joins a render: its generations need a card of this machine's.
            anyhow::ensure!(
                !studio.gpus.cards().is_empty(),
                "render runs its generations on this machine's cards: --gpus none leaves it none"
            );
            render::run(open(studio)?, *args)
        }
        Command::GenerateText(args) => text::generate_text(&args),
        Command::Chat(args) => text::chat(&args),
    }
}

/// `--data`, else `$VIDEOSDGX_DATA`, else `<XDG data dir>/videosdgx`.
pub fn data_dir(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match explicit {
        Some(dir) => Ok(dir),
        None => dirs::data_dir()
            .map(|d| d.join("videosdgx"))
            .context("no data directory: pass --data DIR or set VIDEOSDGX_DATA"),
    }
}

/// Opens the studio's data directory for a one-shot command.
pub fn open(config: StudioConfig) -> anyhow::Result<App> {
    let shown = config.data_dir.display().to_string();
    App::open(config).with_context(|| format!("cannot open studio data in {shown}"))
}

/// `--json` for commands that print records.
#[derive(Args, Debug, Clone, Copy)]
pub struct Output {
    /// Print records as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Output {
    /// Prints `value` as pretty JSON, or as the text `text` makes of it.
    pub fn print<T: Serialize>(
        self,
        value: &T,
        text: impl FnOnce(&T) -> String,
    ) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
        } else {
            let text = text(value);
            if !text.is_empty() {
                println!("{text}");
            }
        }
        Ok(())
    }
}

/// Refuses an output path that exists and is not a regular file. Outputs are written beside the
/// destination and renamed onto it (so a failure never leaves half a file), which would replace a
/// device such as `/dev/null` with a regular file.
pub(crate) fn check_output(path: &Path, flag: &str) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.is_file() => anyhow::bail!(
            "{flag}: {} exists and is not a regular file; outputs replace files, give a file path",
            path.display()
        ),
        _ => Ok(()),
    }
}
