//! Jobs that run other jobs as their steps (`render`, the `shoot` review loop): run one job to
//! its end on the queue and read what it returned.

use super::{Job, JobState, NewJob, run_to_end};
use crate::app::App;
use crate::error::{Result, StudioError};
use serde::de::DeserializeOwned;
use std::ops::ControlFlow;
use std::sync::Arc;

/// Hears `(stage, step, total)` of a step; `Break` cancels it.
pub type Progress<'a> = &'a mut (dyn FnMut(&str, u64, u64) -> ControlFlow<()> + Send);

/// Runs one job to its end, relaying its progress as `what: stage`; the job when it
/// succeeded, else an error naming `what` and the job.
pub async fn run_step(
    app: &Arc<App>,
    new: NewJob,
    what: &str,
    progress: Progress<'_>,
) -> Result<Job> {
    let job = run_to_end(app, new, &mut |p| {
        progress(&format!("{what}: {}", p.stage), p.step, p.total)
    })
    .await
    .map_err(|err| match err {
        // Refused at submission: say which step was.
        StudioError::Invalid(m) => StudioError::Invalid(format!("{what}: {m}")),
        StudioError::Refused(m) => StudioError::Refused(format!("{what}: {m}")),
        StudioError::Conflict(m) => StudioError::Conflict(format!("{what}: {m}")),
        other => other.context_internal(what.to_string()),
    })?;
    let failure = match job.state {
        JobState::Succeeded => return Ok(job),
        JobState::Cancelled => {
            return Err(StudioError::Conflict(format!(
                "stopped: {what} (job {}) was cancelled",
                job.id
            )));
        }
        JobState::Interrupted => "was interrupted",
        _ => "failed",
    };
    Err(StudioError::Internal(anyhow::anyhow!(
        "{what} (job {}) {failure}: {}",
        job.id,
        job.error.as_deref().unwrap_or("no error recorded")
    )))
}

/// A succeeded job's result, as the job kind's runner writes it.
pub fn step_result<T: DeserializeOwned>(job: Job) -> Result<T> {
    serde_json::from_value(job.result.unwrap_or_default()).map_err(|e| {
        StudioError::Internal(anyhow::anyhow!(
            "job {} ({}) returned an unexpected result: {e}",
            job.id,
            job.kind
        ))
    })
}
