//! Command-line surface. One module per command group; each parses its own arguments
//! and calls the library crates, printing records as text or, with `--json`, as JSON.

mod auth;
pub mod bench;

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
    /// Manage the access token for remote (non-loopback) access to `serve`.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
}

/// `--data`, else `$VIDEOSDGX_DATA`.
fn data_dir(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    explicit.ok_or_else(|| anyhow::anyhow!("no data directory: pass --data DIR or set VIDEOSDGX_DATA"))
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Bench(cmd) => bench::run(cmd),
        Command::Auth(cmd) => auth::run(&data_dir(cli.data)?, cmd),
    }
}
