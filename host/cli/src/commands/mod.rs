//! Command-line surface. One module per command group; each parses its own arguments
//! and calls the library crates, printing records as text or, with `--json`, as JSON.

pub mod model;

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
    /// Run single model components (parity checks, debugging).
    #[command(subcommand)]
    Model(model::ModelCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Model(command) => model::run(command),
    }
}
