//! The persistent job queue. Jobs are rows in the database; a job kind maps to a [`JobRunner`];
//! a worker per card drains the GPU lane (one generation per card at a time) while CPU workers
//! run alongside. A job's record names the card it ran on.
//! Progress is persisted and broadcast as [`JobEvent`]s. A job found `running` at start was cut
//! off by a crash: it is re-queued, or marked interrupted once its attempts are spent. Nothing
//! here knows what a job does; runners live in [`runners`].

pub mod journal;
pub mod runners;
pub mod steps;

use crate::app::App;
use crate::db::{Db, now_ms, rfc3339};
use crate::error::{Result, StudioError};
use crate::workers::RemoteCard;
use journal::{Journal, Numbered};
use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, broadcast};
use utoipa::ToSchema;

/// How often idle workers look for jobs queued by another process (e.g. `jobs retry`).
const POLL: Duration = Duration::from_secs(1);
/// How often a running job's progress is written to the database and its cancel flag re-read.
const PERSIST_EVERY: Duration = Duration::from_millis(200);
/// How often [`run_to_end`] hands on the latest progress when no report came.
const RELAY_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    /// One job per card at a time: a generation has a card to itself.
    Gpu,
    Cpu,
}

impl Lane {
    fn as_str(self) -> &'static str {
        match self {
            Lane::Gpu => "gpu",
            Lane::Cpu => "cpu",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// The process died while it ran and its attempts are spent.
    Interrupted,
}

impl JobState {
    fn parse(s: &str) -> JobState {
        match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => Self::Interrupted,
        }
    }

    pub fn is_finished(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

/// Where a running job is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct JobProgress {
    /// What the job is doing now (e.g. "denoising", "importing").
    pub stage: String,
    /// Steps done in this stage, of `total`.
    pub step: u64,
    pub total: u64,
    /// Estimated seconds left in this stage, from its pace so far.
    pub eta_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub lane: Lane,
    #[schema(value_type = Object)]
    pub params: Value,
    pub state: JobState,
    pub attempts: u32,
    pub max_attempts: u32,
    pub cancel_requested: bool,
    pub progress: Option<JobProgress>,
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub error: Option<String>,
    pub project_id: Option<i64>,
    /// The card the job last ran on (`cuda:1`), for jobs that used one.
    pub card: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// A job's change of state or progress, as streamed to clients.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEvent {
    State {
        job_id: i64,
        state: JobState,
        attempts: u32,
        error: Option<String>,
    },
    Progress {
        job_id: i64,
        progress: JobProgress,
        /// The card the job holds now, if any.
        card: Option<String>,
    },
}

impl JobEvent {
    pub fn job_id(&self) -> i64 {
        match self {
            JobEvent::State { job_id, .. } | JobEvent::Progress { job_id, .. } => *job_id,
        }
    }
}

/// What a client asks to run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    pub kind: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Value,
    /// Attempts before the job is failed (default: the kind's; 3 for most, 1 for plugin
    /// jobs, whose failures are deterministic).
    pub max_attempts: Option<u32>,
    pub project_id: Option<i64>,
}

fn job_from_row(row: &Row) -> rusqlite::Result<Job> {
    let json = |col: &str| -> rusqlite::Result<Option<Value>> {
        Ok(row
            .get::<_, Option<String>>(col)?
            .and_then(|s| serde_json::from_str(&s).ok()))
    };
    let lane: String = row.get("lane")?;
    let state: String = row.get("state")?;
    Ok(Job {
        id: row.get("id")?,
        kind: row.get("kind")?,
        lane: if lane == "gpu" { Lane::Gpu } else { Lane::Cpu },
        params: json("params")?.unwrap_or(Value::Null),
        state: JobState::parse(&state),
        attempts: row.get("attempts")?,
        max_attempts: row.get("max_attempts")?,
        cancel_requested: row.get("cancel_requested")?,
        progress: json("progress")?.and_then(|v| serde_json::from_value(v).ok()),
        result: json("result")?,
        error: row.get("error")?,
        project_id: row.get("project_id")?,
        card: row.get("card")?,
        created_at: rfc3339(row.get("created_at")?),
        started_at: row.get::<_, Option<i64>>("started_at")?.map(rfc3339),
        finished_at: row.get::<_, Option<i64>>("finished_at")?.map(rfc3339),
    })
}

/// Work of one job kind. `run` is blocking (it runs on a blocking thread) and should call
/// [`JobContext::progress`] often; when that returns `Break` it should stop and return an error.
pub trait JobRunner: Send + Sync {
    fn kind(&self) -> &'static str;
    fn lane(&self) -> Lane;
    /// Attempts a job of this kind gets unless its submitter says otherwise. Kinds whose
    /// failures repeat on every run (a plugin's trap or limit breach) should say 1.
    fn default_attempts(&self) -> u32 {
        3
    }
    /// Refuses bad parameters at submission, before a row is written.
    fn check(&self, app: &App, params: &Value) -> Result<()>;
    fn run(&self, app: &App, ctx: &JobContext, params: &Value) -> Result<Value>;
}

/// A running job's handle on the queue: progress reporting and cancellation.
pub struct JobContext {
    app: Arc<App>,
    job_id: i64,
    cancel: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    events: Arc<Journal>,
    pace: Mutex<Pace>,
}

struct Pace {
    stage: String,
    stage_started: Instant,
    last_persist: Option<Instant>,
}

impl JobContext {
    pub fn job_id(&self) -> i64 {
        self.job_id
    }

    /// The studio, owned: for work that hands it to something that outlives a borrow (plugin
    /// host services).
    pub fn app(&self) -> std::sync::Arc<App> {
        self.app.clone()
    }

    /// True once the job was cancelled or the server is shutting down.
    pub fn should_stop(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.stopping.load(Ordering::Relaxed)
    }

    /// Reports step `step` of `total` in `stage`; returns `Break` when the job should stop.
    pub fn progress(&self, stage: &str, step: u64, total: u64) -> ControlFlow<()> {
        let mut pace = self.pace.lock().unwrap_or_else(|p| p.into_inner());
        if pace.stage != stage {
            pace.stage = stage.to_owned();
            pace.stage_started = Instant::now();
        }
        let elapsed = pace.stage_started.elapsed().as_secs_f64();
        let eta_s =
            (step > 0 && total >= step).then(|| elapsed / step as f64 * (total - step) as f64);
        let progress = JobProgress {
            stage: stage.to_owned(),
            step,
            total,
            eta_s,
        };
        let due = pace
            .last_persist
            .is_none_or(|t| t.elapsed() >= PERSIST_EVERY)
            || step == total;
        let card = self.app.gpus.card_of(self.job_id);
        if due {
            pace.last_persist = Some(Instant::now());
            let json = serde_json::to_string(&progress).expect("progress serializes");
            // Persisting doubles as the check for a cancel requested by another process.
            let cancelled = self.app.db.with(|c| {
                Ok(c.query_row(
                    "UPDATE jobs SET progress = ?2, card = ifnull(?3, card) WHERE id = ?1
                     RETURNING cancel_requested",
                    params![self.job_id, json, card],
                    |r| r.get::<_, bool>(0),
                )?)
            });
            match cancelled {
                Ok(true) => self.cancel.store(true, Ordering::Relaxed),
                Ok(false) => {}
                Err(e) => tracing::warn!(job = self.job_id, "cannot persist progress: {e}"),
            }
        }
        self.events.publish(JobEvent::Progress {
            job_id: self.job_id,
            progress,
            card,
        });
        if self.should_stop() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

pub struct JobQueue {
    runners: HashMap<&'static str, Arc<dyn JobRunner>>,
    events: Arc<Journal>,
    wake: HashMap<Lane, Notify>,
    running: Mutex<HashMap<i64, Arc<AtomicBool>>>,
    stopping: Arc<AtomicBool>,
    stopped: Notify,
    closing: tokio::sync::watch::Sender<bool>,
    /// The lane workers of workers' cards, started as they join: waited for at stop.
    joined: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl JobQueue {
    pub fn new(runners: Vec<Arc<dyn JobRunner>>) -> JobQueue {
        JobQueue {
            runners: runners.into_iter().map(|r| (r.kind(), r)).collect(),
            events: Arc::new(Journal::new()),
            wake: [(Lane::Gpu, Notify::new()), (Lane::Cpu, Notify::new())].into(),
            running: Mutex::new(HashMap::new()),
            stopping: Arc::new(AtomicBool::new(false)),
            stopped: Notify::new(),
            closing: tokio::sync::watch::channel(false).0,
            joined: Mutex::new(Vec::new()),
        }
    }

    pub fn kinds(&self) -> Vec<&'static str> {
        let mut kinds: Vec<_> = self.runners.keys().copied().collect();
        kinds.sort_unstable();
        kinds
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Numbered> {
        self.events.subscribe()
    }

    /// The numbered journal of events, for clients that reconnect (`Last-Event-ID`).
    pub fn journal(&self) -> &Journal {
        &self.events
    }

    /// Becomes `true` when the queue stops; event streams end then so shutdown is not held up.
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    fn announce(&self, job: &Job) {
        self.events.publish(JobEvent::State {
            job_id: job.id,
            state: job.state,
            attempts: job.attempts,
            error: job.error.clone(),
        });
    }

    pub fn submit(&self, app: &App, new: &NewJob) -> Result<Job> {
        let runner = self.runners.get(new.kind.as_str()).ok_or_else(|| {
            StudioError::Invalid(format!(
                "unknown job kind {:?}; known kinds: {}",
                new.kind,
                self.kinds().join(", ")
            ))
        })?;
        let max_attempts = new
            .max_attempts
            .unwrap_or_else(|| runner.default_attempts());
        if !(1..=100).contains(&max_attempts) {
            return Err(StudioError::Invalid("max_attempts must be 1 to 100".into()));
        }
        if let Some(project) = new.project_id {
            crate::projects::get_project(&app.db, project)?;
        }
        runner.check(app, &new.params)?;
        let job = app.db.with(|c| {
            Ok(c.query_row(
                "INSERT INTO jobs (kind, lane, params, state, max_attempts, project_id, created_at)
                 VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6) RETURNING *",
                params![
                    new.kind,
                    runner.lane().as_str(),
                    new.params.to_string(),
                    max_attempts,
                    new.project_id,
                    now_ms()
                ],
                job_from_row,
            )?)
        })?;
        self.announce(&job);
        self.wake[&runner.lane()].notify_one();
        Ok(job)
    }

    /// Cancels a queued job at once; asks a running one to stop at its next progress report.
    pub fn cancel(&self, db: &Db, id: i64) -> Result<Job> {
        let job = db.with(|c| {
            Ok(c.query_row(
                "UPDATE jobs SET
                    cancel_requested = 1,
                    state = CASE state WHEN 'queued' THEN 'cancelled' ELSE state END,
                    finished_at = CASE state WHEN 'queued' THEN ?2 ELSE finished_at END
                 WHERE id = ?1 AND state IN ('queued', 'running') RETURNING *",
                params![id, now_ms()],
                job_from_row,
            )
            .optional()?)
        })?;
        let Some(job) = job else {
            let job = get_job(db, id)?;
            return Err(StudioError::Conflict(format!(
                "job {id} is already {}",
                serde_json::to_value(job.state)
                    .expect("state serializes")
                    .as_str()
                    .unwrap_or("")
            )));
        };
        if let Some(flag) = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            flag.store(true, Ordering::Relaxed);
        }
        self.announce(&job);
        Ok(job)
    }

    /// Queues a finished job that did not succeed again, with a fresh set of attempts.
    pub fn retry(&self, db: &Db, id: i64) -> Result<Job> {
        let job = db.with(|c| {
            Ok(c.query_row(
                "UPDATE jobs SET state = 'queued', attempts = 0, cancel_requested = 0, error = NULL,
                    result = NULL, progress = NULL, started_at = NULL, finished_at = NULL
                 WHERE id = ?1 AND state IN ('failed', 'cancelled', 'interrupted') RETURNING *",
                [id],
                job_from_row,
            )
            .optional()?)
        })?;
        let Some(job) = job else {
            let job = get_job(db, id)?;
            return Err(StudioError::Conflict(format!(
                "job {id} is {:?}; only failed, cancelled or interrupted jobs can be retried",
                job.state
            )));
        };
        self.announce(&job);
        self.wake[&job.lane].notify_one();
        Ok(job)
    }

    /// Puts jobs left `running` by a process that died back in the queue (or marks them
    /// interrupted when their attempts are spent). Call once, before workers start.
    pub fn recover(&self, db: &Db) -> Result<Vec<Job>> {
        let jobs = db.with(|c| {
            // A read-only database must still open for reading: write only when there is work.
            let running: bool = c.query_row(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'running')",
                [],
                |r| r.get(0),
            )?;
            if !running {
                return Ok(Vec::new());
            }
            let mut stmt = c.prepare(
                "UPDATE jobs SET
                    state = CASE WHEN attempts >= max_attempts THEN 'interrupted' ELSE 'queued' END,
                    finished_at = CASE WHEN attempts >= max_attempts THEN ?1 ELSE NULL END,
                    error = 'the studio stopped while attempt ' || attempts || ' was running'
                 WHERE state = 'running' RETURNING *",
            )?;
            let rows = stmt.query_map([now_ms()], job_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })?;
        for job in &jobs {
            tracing::warn!(job = job.id, state = ?job.state, "recovered a job cut off by a restart");
        }
        Ok(jobs)
    }

    /// Starts the lane workers: one per card for the GPU lane, `cpu_workers` for the CPU lane.
    pub fn start(app: &Arc<App>, cpu_workers: usize) -> Vec<tokio::task::JoinHandle<()>> {
        let mut lanes = vec![Lane::Gpu; app.gpus.len()];
        lanes.extend(std::iter::repeat_n(Lane::Cpu, cpu_workers.max(1)));
        lanes
            .into_iter()
            .map(|lane| tokio::spawn(worker(app.clone(), lane, None)))
            .collect()
    }

    /// Adds a GPU-lane worker for each of `cards` (a worker's, just joined), which ends when
    /// its card leaves: the lane keeps a worker per card there is.
    pub fn start_for(app: &Arc<App>, cards: &[Arc<RemoteCard>]) {
        let mut joined = app.jobs.joined.lock().unwrap_or_else(|p| p.into_inner());
        joined.retain(|handle| !handle.is_finished());
        for card in cards {
            joined.push(tokio::spawn(worker(
                app.clone(),
                Lane::Gpu,
                Some(card.clone()),
            )));
        }
    }

    /// The lane workers of workers' cards, to wait for after [`JobQueue::stop`].
    pub fn joined_workers(&self) -> Vec<tokio::task::JoinHandle<()>> {
        std::mem::take(&mut *self.joined.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Asks workers to stop: running jobs stop at their next progress report and go back to the
    /// queue (the attempt is not counted), to resume at the next start.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.closing.send_replace(true);
        self.stopped.notify_waiters();
        for notify in self.wake.values() {
            notify.notify_waiters();
        }
    }

    fn claim(&self, db: &Db, lane: Lane) -> Result<Option<Job>> {
        db.with(|c| {
            Ok(c.query_row(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?2,
                    progress = NULL
                 WHERE id = (SELECT id FROM jobs WHERE state = 'queued' AND lane = ?1 ORDER BY id LIMIT 1)
                 RETURNING *",
                params![lane.as_str(), now_ms()],
                job_from_row,
            )
            .optional()?)
        })
    }

    /// Records how a run ended and returns the job as stored.
    fn finish(&self, db: &Db, job: &Job, outcome: Result<Value>, cancelled: bool) -> Result<Job> {
        let now = now_ms();
        let stopping = self.stopping.load(Ordering::Relaxed);
        let text = match &outcome {
            Ok(v) => v.to_string(),
            Err(e) if cancelled => format!("cancelled: {e}"),
            Err(e) => format!("{e:#}"),
        };
        let finished = db.with(|c| {
            let stored = match (&outcome, cancelled, stopping) {
                (Ok(_), _, _) => c.query_row(
                    "UPDATE jobs SET state = 'succeeded', result = ?2, error = NULL, finished_at = ?3
                     WHERE id = ?1 RETURNING *",
                    params![job.id, text, now],
                    job_from_row,
                ),
                (Err(_), true, _) => c.query_row(
                    "UPDATE jobs SET state = 'cancelled', error = ?2, finished_at = ?3
                     WHERE id = ?1 RETURNING *",
                    params![job.id, text, now],
                    job_from_row,
                ),
                // Shutdown is not the job's fault: give the attempt back.
                (Err(_), false, true) => c.query_row(
                    "UPDATE jobs SET state = 'queued', attempts = attempts - 1, error = ?2,
                        started_at = NULL
                     WHERE id = ?1 RETURNING *",
                    params![job.id, format!("stopped by shutdown: {text}")],
                    job_from_row,
                ),
                // Another attempt would be refused alike: the attempts left are not spent on it.
                (Err(e), false, false) if e.is_permanent() => c.query_row(
                    "UPDATE jobs SET state = 'failed', error = ?2, finished_at = ?3
                     WHERE id = ?1 RETURNING *",
                    params![job.id, text, now],
                    job_from_row,
                ),
                (Err(_), false, false) => c.query_row(
                    "UPDATE jobs SET
                        state = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
                        error = ?2,
                        finished_at = CASE WHEN attempts >= max_attempts THEN ?3 ELSE NULL END
                     WHERE id = ?1 RETURNING *",
                    params![job.id, text, now],
                    job_from_row,
                ),
            };
            Ok(stored?)
        })?;
        self.announce(&finished);
        if finished.state == JobState::Queued {
            // Back in the queue for another attempt: a worker that is free takes it now.
            self.wake[&finished.lane].notify_one();
        }
        Ok(finished)
    }
}

/// Submits `new` to this process's running queue and waits for it to finish, handing
/// `progress` the job's latest progress on every report and at least every
/// [`RELAY_EVERY`]; when `progress` says `Break` the job is cancelled (and still awaited, so
/// that it ends in a recorded state). Returns the job as finally stored, in any final state.
/// Dropped before the end (its caller was stopped), it cancels the job: nobody waits for it.
pub async fn run_to_end(
    app: &Arc<App>,
    new: NewJob,
    progress: &mut (dyn FnMut(&JobProgress) -> ControlFlow<()> + Send),
) -> Result<Job> {
    // Subscribed before submitting, so no event of the job is missed.
    let mut events = app.jobs.subscribe();
    let id = app.blocking(move |a| a.jobs.submit(a, &new)).await?.id;
    let mut abandoned = CancelOnDrop {
        app: app.clone(),
        id: Some(id),
    };
    let mut latest = JobProgress {
        stage: "queued".into(),
        step: 0,
        total: 1,
        eta_s: None,
    };
    // The first tick only after a period: "queued" is reported only for a job that waits.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + RELAY_EVERY, RELAY_EVERY);
    let mut cancelling = false;
    loop {
        tokio::select! {
            event = events.recv() => match event.map(|e| e.event) {
                Ok(JobEvent::Progress { job_id, progress, .. }) if job_id == id => latest = progress,
                Ok(JobEvent::State { job_id, state, .. }) if job_id == id && state.is_finished() => {
                    break;
                }
                Ok(_) => continue,
                // Missed events: the tick reads the stored job.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = tick.tick() => {
                let job = app.blocking(move |a| get_job(&a.db, id)).await?;
                if job.state.is_finished() {
                    break;
                }
            }
        }
        if !cancelling && progress(&latest).is_break() {
            cancelling = true;
            match app.blocking(move |a| a.jobs.cancel(&a.db, id)).await {
                // It finished meanwhile: what it ended as is returned below.
                Ok(_) | Err(StudioError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    abandoned.id = None;
    app.blocking(move |a| get_job(&a.db, id)).await
}

/// Cancels job `id` when dropped, unless it was disarmed (`id` taken) first.
struct CancelOnDrop {
    app: Arc<App>,
    id: Option<i64>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            match self.app.jobs.cancel(&self.app.db, id) {
                Ok(_) | Err(StudioError::Conflict(_)) => {}
                Err(e) => tracing::warn!(job = id, "cannot cancel an abandoned job: {e}"),
            }
        }
    }
}

pub fn get_job(db: &Db, id: i64) -> Result<Job> {
    db.with(|c| {
        c.query_row("SELECT * FROM jobs WHERE id = ?1", [id], job_from_row)
            .optional()?
            .ok_or_else(|| StudioError::not_found("job", id))
    })
}

/// Jobs newest first, optionally only those in `state`.
pub fn list_jobs(db: &Db, state: Option<JobState>, limit: u32) -> Result<Vec<Job>> {
    let state = state.map(|s| serde_json::to_value(s).expect("state serializes"));
    let state = state.as_ref().and_then(Value::as_str);
    db.with(|c| {
        let mut stmt = c.prepare(
            "SELECT * FROM jobs WHERE ?1 IS NULL OR state = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![state, limit], job_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    })
}

/// Runs the jobs of `lane`, one at a time; the worker of a worker's `card` ends when it leaves.
async fn worker(app: Arc<App>, lane: Lane, card: Option<Arc<RemoteCard>>) {
    let queue = &app.jobs;
    while !queue.stopping.load(Ordering::Relaxed) && card.as_ref().is_none_or(|c| c.alive()) {
        let claimed = {
            let app = app.clone();
            tokio::task::spawn_blocking(move || app.jobs.claim(&app.db, lane)).await
        };
        match claimed {
            Ok(Ok(Some(job))) => run_job(&app, job).await,
            Ok(Ok(None)) => {
                tokio::select! {
                    _ = queue.wake[&lane].notified() => {}
                    _ = queue.stopped.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(?lane, "cannot claim a job: {e}");
                tokio::time::sleep(POLL).await;
            }
            Err(e) => {
                tracing::error!(?lane, "job worker task failed: {e}");
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

async fn run_job(app: &Arc<App>, job: Job) {
    let queue = &app.jobs;
    queue.announce(&job);
    let cancel = Arc::new(AtomicBool::new(job.cancel_requested));
    queue
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(job.id, cancel.clone());
    tracing::info!(job = job.id, kind = %job.kind, attempt = job.attempts, "job started");
    let task_app = app.clone();
    let task_job = job.clone();
    let ctx = JobContext {
        app: app.clone(),
        job_id: job.id,
        cancel: cancel.clone(),
        stopping: queue.stopping.clone(),
        events: queue.events.clone(),
        pace: Mutex::new(Pace {
            stage: String::new(),
            stage_started: Instant::now(),
            last_persist: None,
        }),
    };
    let outcome = tokio::task::spawn_blocking(move || {
        let runner = task_app.jobs.runners.get(task_job.kind.as_str()).cloned();
        match runner {
            Some(runner) => runner.run(&task_app, &ctx, &task_job.params),
            None => Err(StudioError::Invalid(format!(
                "no runner for job kind {:?} in this build",
                task_job.kind
            ))),
        }
    })
    .await
    .unwrap_or_else(|panic| {
        Err(StudioError::Internal(anyhow::anyhow!(
            "job panicked: {panic}"
        )))
    });
    queue
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&job.id);
    let cancelled = cancel.load(Ordering::Relaxed);
    let app2 = app.clone();
    let stored =
        tokio::task::spawn_blocking(move || app2.jobs.finish(&app2.db, &job, outcome, cancelled))
            .await;
    match stored {
        Ok(Ok(job)) => tracing::info!(job = job.id, state = ?job.state, "job ended"),
        Ok(Err(e)) => tracing::error!("cannot record the end of a job: {e}"),
        Err(e) => tracing::error!("cannot record the end of a job: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::StudioConfig;

    /// Fails with `failure` until its `succeed_on` attempt; counts the attempts it saw.
    struct Flaky {
        succeed_on: u32,
        failure: fn(String) -> StudioError,
        seen: std::sync::atomic::AtomicU32,
    }

    impl JobRunner for Flaky {
        fn kind(&self) -> &'static str {
            "test.flaky"
        }
        fn lane(&self) -> Lane {
            Lane::Gpu
        }
        fn check(&self, _app: &App, _params: &Value) -> Result<()> {
            Ok(())
        }
        fn run(&self, _app: &App, ctx: &JobContext, _params: &Value) -> Result<Value> {
            let attempt = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
            let _ = ctx.progress("working", 1, 2);
            if attempt < self.succeed_on {
                return Err((self.failure)(format!("attempt {attempt} failed")));
            }
            Ok(serde_json::json!({ "attempt": attempt }))
        }
    }

    async fn run_until_finished(
        succeed_on: u32,
        failure: fn(String) -> StudioError,
        max_attempts: u32,
    ) -> (Job, Vec<JobEvent>) {
        let dir = tempfile::tempdir().unwrap();
        let flaky = Arc::new(Flaky {
            succeed_on,
            failure,
            seen: Default::default(),
        });
        let app = Arc::new(
            App::open_with_runners(
                StudioConfig::new(dir.path()),
                vec![flaky as Arc<dyn JobRunner>],
            )
            .unwrap(),
        );
        let mut events = app.jobs.subscribe();
        let workers = JobQueue::start(&app, 1);
        let new = NewJob {
            kind: "test.flaky".into(),
            params: Value::Null,
            max_attempts: Some(max_attempts),
            project_id: None,
        };
        let id = app.jobs.submit(&app, &new).unwrap().id;
        let mut seen = Vec::new();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
                .await
                .expect("job finished in time")
                .unwrap()
                .event;
            let finished = matches!(&event, JobEvent::State { state, .. } if state.is_finished());
            seen.push(event);
            if finished {
                break;
            }
        }
        app.jobs.stop();
        for w in workers {
            w.await.unwrap();
        }
        (get_job(&app.db, id).unwrap(), seen)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failing_job_is_retried_then_succeeds() {
        let (job, events) = run_until_finished(2, StudioError::Invalid, 3).await;
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(job.attempts, 2);
        assert_eq!(job.result.unwrap()["attempt"], 2);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, JobEvent::Progress { progress, .. }
            if progress.stage == "working" && progress.step == 1 && progress.total == 2))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn job_failing_every_attempt_fails_at_its_limit_with_the_error() {
        let (job, _) = run_until_finished(u32::MAX, StudioError::Invalid, 2).await;
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.attempts, 2);
        assert_eq!(job.error.as_deref(), Some("attempt 2 failed"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refusal_fails_the_job_at_once_with_attempts_left() {
        let (job, _) = run_until_finished(2, StudioError::Refused, 3).await;
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.attempts, 1, "not retried");
        assert_eq!(job.error.as_deref(), Some("attempt 1 failed"));
    }

    /// Reports progress until told to stop.
    struct UntilStopped;

    impl JobRunner for UntilStopped {
        fn kind(&self) -> &'static str {
            "test.until_stopped"
        }
        fn lane(&self) -> Lane {
            Lane::Cpu
        }
        fn check(&self, _app: &App, _params: &Value) -> Result<()> {
            Ok(())
        }
        fn run(&self, _app: &App, ctx: &JobContext, _params: &Value) -> Result<Value> {
            for step in 0.. {
                if ctx.progress("spinning", step, 1_000_000).is_break() {
                    return Err(StudioError::Invalid(format!("stopped at step {step}")));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            unreachable!()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_to_end_relays_progress_and_break_cancels_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let app = Arc::new(
            App::open_with_runners(
                StudioConfig::new(dir.path()),
                vec![Arc::new(UntilStopped) as Arc<dyn JobRunner>],
            )
            .unwrap(),
        );
        let workers = JobQueue::start(&app, 1);
        let new = NewJob {
            kind: "test.until_stopped".into(),
            params: Value::Null,
            max_attempts: None,
            project_id: None,
        };
        let mut reports = Vec::new();
        let job = run_to_end(&app, new, &mut |p| {
            reports.push(p.clone());
            if p.stage == "spinning" && p.step >= 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await
        .unwrap();
        assert_eq!(job.state, JobState::Cancelled, "{job:?}");
        assert_eq!(job.attempts, 1);
        assert!(job.error.unwrap().starts_with("cancelled: stopped at step"));
        assert!(reports.iter().any(|p| p.stage == "spinning" && p.step >= 3));
        app.jobs.stop();
        for w in workers {
            w.await.unwrap();
        }
    }

    /// Holds the tiny language model on a card and waits there, up to a minute, until as many
    /// jobs as `together` are inside theirs.
    struct MeetOnACard {
        together: usize,
        inside: std::sync::Mutex<usize>,
        arrived: std::sync::Condvar,
    }

    impl JobRunner for MeetOnACard {
        fn kind(&self) -> &'static str {
            "test.meet_on_a_card"
        }
        fn lane(&self) -> Lane {
            Lane::Gpu
        }
        fn check(&self, _app: &App, _params: &Value) -> Result<()> {
            Ok(())
        }
        fn run(&self, app: &App, ctx: &JobContext, _params: &Value) -> Result<Value> {
            let qwen = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/text/qwen3/model");
            app.gpus.with_language(
                Some(ctx.job_id()),
                "qwen",
                &qwen,
                None,
                &mut |stage, step, total| ctx.progress(stage, step, total),
                |_, _| {
                    let mut inside = self.inside.lock().unwrap();
                    *inside += 1;
                    self.arrived.notify_all();
                    let (inside, waited) = self
                        .arrived
                        .wait_timeout_while(inside, Duration::from_secs(60), |n| *n < self.together)
                        .unwrap();
                    if waited.timed_out() {
                        return Err(StudioError::Conflict(format!("only {} came", *inside)));
                    }
                    Ok(Value::Null)
                },
            )
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_card_runs_a_job_at_once_and_the_record_names_the_card() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StudioConfig::new(dir.path());
        config.gpus = "cpu,cpu".parse().unwrap();
        let meet = MeetOnACard {
            together: 2,
            inside: Default::default(),
            arrived: Default::default(),
        };
        let app = Arc::new(
            App::open_with_runners(config, vec![Arc::new(meet) as Arc<dyn JobRunner>]).unwrap(),
        );
        // One CPU worker: the GPU lane's two are what run the jobs side by side.
        let workers = JobQueue::start(&app, 1);
        let new = NewJob {
            kind: "test.meet_on_a_card".into(),
            params: Value::Null,
            max_attempts: Some(1),
            project_id: None,
        };
        let both = futures_util::future::join_all((0..2).map(|_| async {
            run_to_end(&app, new.clone(), &mut |_| ControlFlow::Continue(())).await
        }))
        .await;
        let mut cards = Vec::new();
        for job in both {
            let job = job.unwrap();
            assert_eq!(job.state, JobState::Succeeded, "{job:?}");
            cards.push(job.card.unwrap());
        }
        cards.sort();
        assert_eq!(cards, ["cpu#0", "cpu#1"]);
        app.jobs.stop();
        for w in workers {
            w.await.unwrap();
        }
    }

    #[test]
    fn running_jobs_are_requeued_or_interrupted_at_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let app = App::open(StudioConfig::new(dir.path())).unwrap();
        let insert = |attempts: u32, max: u32| -> i64 {
            app.db
                .with(|c| {
                    Ok(c.query_row(
                        "INSERT INTO jobs (kind, lane, params, state, attempts, max_attempts, created_at)
                         VALUES ('assets.reindex', 'cpu', '{}', 'running', ?1, ?2, 0) RETURNING id",
                        params![attempts, max],
                        |r| r.get(0),
                    )?)
                })
                .unwrap()
        };
        let again = insert(1, 3);
        let spent = insert(3, 3);
        app.jobs.recover(&app.db).unwrap();
        assert_eq!(get_job(&app.db, again).unwrap().state, JobState::Queued);
        let spent = get_job(&app.db, spent).unwrap();
        assert_eq!(spent.state, JobState::Interrupted);
        assert!(spent.error.unwrap().contains("stopped while attempt 3"));
    }
}
