//! `videosdgx jobs ...`: the persistent job queue, seen from the command line. A running server
//! picks up cancels and retries made here.

use super::Output;
use clap::Subcommand;
use videosdgx_studio::App;
use videosdgx_studio::jobs::{self, Job, JobState};

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List {
        /// Only jobs in this state.
        #[arg(long, value_parser = parse_state)]
        state: Option<JobState>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        out: Output,
    },
    /// Show one job with its parameters, progress, result or error.
    Show {
        id: i64,
        #[command(flatten)]
        out: Output,
    },
    /// Cancel a queued job, or ask a running one to stop.
    Cancel {
        id: i64,
        #[command(flatten)]
        out: Output,
    },
    /// Queue a failed, cancelled or interrupted job again.
    Retry {
        id: i64,
        #[command(flatten)]
        out: Output,
    },
}

fn parse_state(s: &str) -> Result<JobState, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
        format!("{s:?} is not one of queued, running, succeeded, failed, cancelled, interrupted")
    })
}

fn line(j: &Job) -> String {
    let state = serde_json::to_value(j.state).unwrap_or_default();
    let mut progress = j
        .progress
        .as_ref()
        .map(|p| format!("{} {}/{}", p.stage, p.step, p.total))
        .unwrap_or_default();
    if let Some(card) = &j.card {
        progress = format!("{progress} on {card}").trim_start().to_string();
    }
    format!(
        "{}\t{}\t{}\tattempt {}/{}\t{}\t{}",
        j.id,
        j.kind,
        state.as_str().unwrap_or(""),
        j.attempts,
        j.max_attempts,
        progress,
        j.error.as_deref().unwrap_or("")
    )
}

pub fn run(app: &App, cmd: JobsCommand) -> anyhow::Result<()> {
    match cmd {
        JobsCommand::List { state, limit, out } => out
            .print(&jobs::list_jobs(&app.db, state, limit)?, |js| {
                js.iter().map(line).collect::<Vec<_>>().join("\n")
            }),
        JobsCommand::Show { id, out } => out.print(&jobs::get_job(&app.db, id)?, |j| {
            format!(
                "{}\nparams: {}\nresult: {}",
                line(j),
                j.params,
                j.result.as_ref().map(|r| r.to_string()).unwrap_or_default()
            )
        }),
        JobsCommand::Cancel { id, out } => out.print(&app.jobs.cancel(&app.db, id)?, line),
        JobsCommand::Retry { id, out } => out.print(&app.jobs.retry(&app.db, id)?, line),
    }
}
