//! Command-line surface. One module per command group; each parses its own arguments
//! and calls the library crates, printing records as text or, with `--json`, as JSON.

mod plugins;

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
    /// Install, inspect and manage sandboxed plugins.
    Plugins(plugins::PluginsArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let data = cli.data.unwrap_or_else(|| PathBuf::from("videosdgx-data"));
    match cli.command {
        Command::Plugins(args) => plugins::run(args, &data),
    }
}
