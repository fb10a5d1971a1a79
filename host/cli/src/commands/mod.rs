//! Command-line surface. One module per command group; each parses its own arguments
//! and calls the library crates, printing records as text or, with `--json`, as JSON.

pub mod bench;
mod models;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "videosdgx", version, about = "Local AI video studio")]
pub struct Cli {
    /// Data directory (database, assets, models, caches).
    #[arg(long, global = true, env = "VIDEOSDGX_DATA")]
    pub data: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Measure GPU speed: Wan transformer forwards and the fused kernels (CUDA builds only).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Download and list model pipelines.
    #[command(subcommand)]
    Models(models::ModelsCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Bench(cmd) => bench::run(cmd),
        Command::Models(command) => models::run(command, &data_dir(cli.data)?),
    }
}

/// `--data`/`VIDEOSDGX_DATA`, else `$XDG_DATA_HOME/videosdgx` or `~/.local/share/videosdgx`.
fn data_dir(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir);
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("videosdgx"));
    }
    let home = std::env::var_os("HOME").ok_or_else(|| {
        anyhow::anyhow!("no data directory: pass --data DIR or set VIDEOSDGX_DATA")
    })?;
    Ok(PathBuf::from(home).join(".local/share/videosdgx"))
}
