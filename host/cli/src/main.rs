//! `videosdgx`: one binary for the studio server and every headless task.

mod commands;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = commands::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cli.default_log_level())),
        )
        .with_writer(std::io::stderr)
        // A closed stderr (`videosdgx render ... 2>&1 | head`) must not panic the thread that
        // logs, which may be a job worker: tracing-subscriber reports its own write errors with
        // `eprintln!`, which panics when stderr is gone.
        .log_internal_errors(false)
        .init();
    match commands::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // One readable line for scripts; the chain says where it came from.
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
