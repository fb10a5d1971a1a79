//! Workers: `videosdgx worker --join URL` processes on other machines that lend the studio their
//! cards. A worker registers its cards ([`Workers::register`]); each becomes a card of the
//! studio's [`crate::gpu::Gpus`] (`worker-name/cuda:0`) with a lane worker of its own, so the
//! queue's scheduling, progress, retries and card records treat it like any other. The
//! studio's database stays the one record of jobs: a worker holds no job, only the
//! [`GenerationTask`] its card was handed, and sends back the output (an MP4, a still's PNG)
//! and the engine's parameters,
//! which the studio records as it records its own cards' outputs.
//!
//! A card's task is offered in its mailbox; the worker's poll for that card picks it up, its
//! progress goes to the job, the output is uploaded, then the outcome is reported. Every call of a
//! worker counts as a sign of life; one silent for longer than the lease is gone: its cards
//! leave, the task its card ran fails (the queue retries the job on another card), and anything
//! it sends later about that task is refused, so nothing is recorded twice.

use crate::error::{Result, StudioError};
use crate::generation::GenerationTask;
use crate::gpu::Report;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};
use utoipa::ToSchema;
use videosdgx_engine::hub::{PullSource, SOURCE_FILE};
use videosdgx_engine::pipelines::{Cancelled, GenerateParams, Quant};

/// How often a card waiting for its worker checks that the worker still answers and that the
/// job still wants the result.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// How often the last progress is passed on to the job when the worker sends none (so a cancel
/// of the job is seen while the worker loads a model).
const RELAY_EVERY: Duration = Duration::from_secs(1);

/// What a worker sends to join.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Shown in card names (`spark-2/cuda:0`); a worker registering under a name already
    /// registered replaces that registration (a worker that restarted).
    pub name: String,
    /// The worker's cards, as `--gpus` names them there (`cuda:0`, `cpu`).
    pub cards: Vec<String>,
    /// The worker's VideosDGX version: it must be the studio's ([`VERSION`]), so that both
    /// read a task alike.
    pub version: String,
}

/// The version a worker must run.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The studio's answer to a registration.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    /// What the worker's later calls name (`/api/workers/{id}/...`).
    pub id: String,
    /// A worker silent for longer than this is dropped (its running task is retried elsewhere).
    pub lease_ms: u64,
    /// How often the worker should show it is alive (a third of the lease).
    pub heartbeat_ms: u64,
    /// The longest a poll for a task waits before it answers `204 No Content`.
    pub poll_ms: u64,
}

/// A task handed to a worker's card.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Assignment {
    /// What the worker names in the task's progress, upload and outcome.
    pub task_id: String,
    #[schema(value_type = Object)]
    pub task: GenerationTask,
    /// Where the studio's copy of the task's model was pulled from (none for a folder copied
    /// there by hand): a worker that pulls models from the hub pulls that commit.
    #[schema(value_type = Option<Object>)]
    pub source: Option<PullSource>,
}

/// A task's progress, as the worker reports it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskProgress {
    pub stage: String,
    pub step: u64,
    pub total: u64,
}

/// How a task ended on the worker.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskOutcome {
    /// The output was uploaded; these are the engine's parameters it was made with.
    Succeeded {
        #[schema(value_type = Object)]
        params: Box<GenerateParams>,
    },
    /// The task failed there: retried elsewhere unless `refused`, which says the engine refused
    /// the request itself (a size or a split the model cannot take), as every card would.
    Failed {
        error: String,
        #[serde(default)]
        refused: bool,
    },
}

/// What a card waiting for its worker hears.
enum TaskEvent {
    Progress(TaskProgress),
    Succeeded(Box<GenerateParams>),
    Failed { error: String, refused: bool },
}

/// A worker's signs of life.
struct Presence {
    name: String,
    lease: Duration,
    last_seen: Mutex<Instant>,
    /// Set once the worker was silent past its lease, replaced or left: it never comes back.
    gone: AtomicBool,
    /// It said it was leaving (a worker that stops), rather than fall silent.
    left: AtomicBool,
}

impl Presence {
    fn alive(&self) -> bool {
        if self.gone.load(Ordering::Relaxed) {
            return false;
        }
        if lock(&self.last_seen).elapsed() > self.lease {
            self.gone.store(true, Ordering::Relaxed);
            tracing::warn!(worker = %self.name, "a worker stopped answering: its cards leave");
            return false;
        }
        true
    }
}

/// A task offered to a card, until the card's work ends.
struct Offer {
    id: String,
    task: GenerationTask,
    source: Option<PullSource>,
    events: mpsc::Sender<TaskEvent>,
    /// Where the uploaded MP4 goes.
    out: PathBuf,
}

/// A worker's card, as the studio's [`crate::gpu::Gpus`] holds it.
pub struct RemoteCard {
    presence: Arc<Presence>,
    label: String,
    mailbox: Mutex<Option<Offer>>,
    offered: tokio::sync::Notify,
    /// The model and weights of the last task that succeeded there: its pipeline is resident.
    resident: Mutex<Option<(PathBuf, Option<Quant>)>>,
}

impl RemoteCard {
    /// `worker-name/cuda:0`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether its worker still answers.
    pub fn alive(&self) -> bool {
        self.presence.alive()
    }

    /// Whether its worker holds the pipeline of `dir` in `quant` (`None`: nothing yet).
    pub fn holds(&self, dir: &Path, quant: Option<Quant>) -> Option<bool> {
        lock(&self.resident)
            .as_ref()
            .map(|(d, q)| d == dir && *q == quant)
    }

    /// Runs `task` (model installed in the studio's `dir`) on this card's worker and has its output
    /// uploaded to `out`; `report` gets the worker's progress and may stop the task.
    pub fn run(
        &self,
        dir: &Path,
        task: &GenerationTask,
        out: &Path,
        report: Report,
    ) -> Result<GenerateParams> {
        let (events, heard) = mpsc::channel();
        let id = random_id();
        let source = std::fs::read(dir.join(SOURCE_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        *lock(&self.mailbox) = Some(Offer {
            id: id.clone(),
            task: task.clone(),
            source,
            events,
            out: out.to_path_buf(),
        });
        self.offered.notify_one();
        let outcome = self.follow(&heard, report);
        // Withdrawn whatever the outcome: later calls about it are refused.
        let mut mailbox = lock(&self.mailbox);
        if mailbox.as_ref().is_some_and(|o| o.id == id) {
            *mailbox = None;
        }
        drop(mailbox);
        if outcome.is_ok() {
            *lock(&self.resident) = Some((dir.to_path_buf(), task.render.quant));
        } else {
            let _ = std::fs::remove_file(out);
        }
        outcome
    }

    fn follow(&self, heard: &mpsc::Receiver<TaskEvent>, report: Report) -> Result<GenerateParams> {
        let cancelled = || Err(StudioError::Internal(anyhow::Error::new(Cancelled)));
        let mut last = TaskProgress {
            stage: format!("sent to {}", self.label),
            step: 0,
            total: 1,
        };
        let mut relayed = Instant::now();
        if report(&last.stage, 0, 1).is_break() {
            return cancelled();
        }
        loop {
            match heard.recv_timeout(CHECK_EVERY) {
                Ok(TaskEvent::Progress(progress)) => {
                    relayed = Instant::now();
                    if report(&progress.stage, progress.step, progress.total).is_break() {
                        return cancelled();
                    }
                    last = progress;
                }
                Ok(TaskEvent::Succeeded(params)) => return Ok(*params),
                Ok(TaskEvent::Failed { error, refused }) => {
                    let error = format!("on {}: {error}", self.label);
                    return Err(if refused {
                        StudioError::Refused(error)
                    } else {
                        StudioError::Internal(anyhow::anyhow!(error))
                    });
                }
                Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {
                    if !self.alive() {
                        return Err(StudioError::Internal(anyhow::anyhow!(
                            "worker `{}` {} while {} ran this generation",
                            self.presence.name,
                            if self.presence.left.load(Ordering::Relaxed) {
                                "left"
                            } else {
                                "stopped answering"
                            },
                            self.label
                        )));
                    }
                    if relayed.elapsed() >= RELAY_EVERY {
                        relayed = Instant::now();
                        if report(&last.stage, last.step, last.total).is_break() {
                            return cancelled();
                        }
                    }
                }
            }
        }
    }

    /// The offer named `task_id`, if this card still runs it.
    fn offer(&self, task_id: &str) -> Result<MutexGuard<'_, Option<Offer>>> {
        let mailbox = lock(&self.mailbox);
        if mailbox.as_ref().is_some_and(|o| o.id == task_id) {
            Ok(mailbox)
        } else {
            Err(withdrawn(task_id))
        }
    }
}

fn withdrawn(task_id: &str) -> StudioError {
    StudioError::Conflict(format!(
        "task {task_id} is no longer this worker's: its job was cancelled, or given to another \
         card after the worker went silent; drop it"
    ))
}

/// A registered worker.
struct RemoteWorker {
    presence: Arc<Presence>,
    cards: Vec<Arc<RemoteCard>>,
}

/// The workers that joined this studio, by id.
pub struct Workers {
    lease: Duration,
    registered: Mutex<HashMap<String, RemoteWorker>>,
}

impl Workers {
    pub fn new(lease: Duration) -> Workers {
        Workers {
            lease,
            registered: Mutex::new(HashMap::new()),
        }
    }

    /// Registers a worker and returns its id and the cards it lends, to be added to the
    /// studio's ([`crate::gpu::Gpus::join`]) with a lane worker each. A registration under a
    /// name already registered replaces it: the old one's cards leave, their tasks are retried.
    pub fn register(
        &self,
        registration: &Registration,
    ) -> Result<(Registered, Vec<Arc<RemoteCard>>)> {
        let name = registration.name.trim();
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(StudioError::Invalid(format!(
                "worker name {:?}: 1 to 64 letters, digits, '-', '_' or '.'",
                registration.name
            )));
        }
        if registration.cards.is_empty() || registration.cards.len() > 64 {
            return Err(StudioError::Invalid("a worker lends 1 to 64 cards".into()));
        }
        for card in &registration.cards {
            if card.is_empty()
                || card.len() > 32
                || !card
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '#' | '-' | '_'))
            {
                return Err(StudioError::Invalid(format!(
                    "card {card:?}: name cards as --gpus does (`cuda:0`, `cpu`, `cpu#1`)"
                )));
            }
        }
        let presence = Arc::new(Presence {
            name: name.to_string(),
            lease: self.lease,
            last_seen: Mutex::new(Instant::now()),
            gone: AtomicBool::new(false),
            left: AtomicBool::new(false),
        });
        let cards: Vec<Arc<RemoteCard>> = registration
            .cards
            .iter()
            .map(|card| {
                Arc::new(RemoteCard {
                    presence: presence.clone(),
                    label: format!("{name}/{card}"),
                    mailbox: Mutex::new(None),
                    offered: tokio::sync::Notify::new(),
                    resident: Mutex::new(None),
                })
            })
            .collect();
        let id = random_id();
        let mut registered = lock(&self.registered);
        registered.retain(|_, worker| {
            let replaced = worker.presence.name == name;
            if replaced {
                worker.presence.gone.store(true, Ordering::Relaxed);
                tracing::info!(
                    worker = name,
                    "a worker registered again: its old cards leave"
                );
            }
            !replaced && worker.presence.alive()
        });
        registered.insert(
            id.clone(),
            RemoteWorker {
                presence,
                cards: cards.clone(),
            },
        );
        tracing::info!(worker = name, cards = ?registration.cards, "a worker joined");
        let lease_ms = self.lease.as_millis() as u64;
        Ok((
            Registered {
                id,
                lease_ms,
                heartbeat_ms: lease_ms / 3,
                poll_ms: lease_ms / 3,
            },
            cards,
        ))
    }

    /// Worker `id`, now seen alive; unknown (never registered, dropped, or from before the
    /// studio restarted) is `not_found`, which tells the worker to register again.
    fn seen(&self, id: &str) -> Result<Vec<Arc<RemoteCard>>> {
        let registered = lock(&self.registered);
        let worker = registered
            .get(id)
            .filter(|w| w.presence.alive())
            .ok_or_else(|| StudioError::not_found("worker", id))?;
        *lock(&worker.presence.last_seen) = Instant::now();
        Ok(worker.cards.clone())
    }

    fn card(&self, id: &str, card: usize) -> Result<Arc<RemoteCard>> {
        let cards = self.seen(id)?;
        let count = cards.len();
        cards.into_iter().nth(card).ok_or_else(|| {
            StudioError::Invalid(format!(
                "worker {id} lent {count} cards; there is no card {card}"
            ))
        })
    }

    /// Worker `id` leaves (it is stopping): its cards leave now, and the task each ran goes
    /// back to the queue without waiting for the lease.
    pub fn leave(&self, id: &str) -> Result<()> {
        let worker = lock(&self.registered)
            .remove(id)
            .filter(|w| w.presence.alive())
            .ok_or_else(|| StudioError::not_found("worker", id))?;
        worker.presence.left.store(true, Ordering::Relaxed);
        worker.presence.gone.store(true, Ordering::Relaxed);
        tracing::info!(worker = %worker.presence.name, "a worker left: its cards leave");
        Ok(())
    }

    /// A sign of life from worker `id`.
    pub fn heartbeat(&self, id: &str) -> Result<()> {
        self.seen(id).map(drop)
    }

    /// The task of card `card` of worker `id`, waiting up to `wait` for one. A card's poller
    /// asks only when it runs nothing, so a task it was already given is given again: the
    /// answer that carried it was lost (a poll cut off), and the task would otherwise wait for
    /// a worker that never got it.
    pub async fn next_task(
        &self,
        id: &str,
        card: usize,
        wait: Duration,
    ) -> Result<Option<Assignment>> {
        let card = self.card(id, card)?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = card.offered.notified();
            if let Some(offer) = lock(&card.mailbox).as_ref() {
                return Ok(Some(Assignment {
                    task_id: offer.id.clone(),
                    task: offer.task.clone(),
                    source: offer.source.clone(),
                }));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(None);
            }
        }
    }

    /// Passes a task's progress on to its job; refused when the task is no longer the card's
    /// (its job was cancelled, or the worker was dropped): the worker should stop it.
    pub fn progress(&self, id: &str, task_id: &str, progress: TaskProgress) -> Result<()> {
        let cards = self.seen(id)?;
        let card = find_task(&cards, task_id)?;
        let mailbox = card.offer(task_id)?;
        let offer = mailbox.as_ref().expect("checked by offer");
        // The card's work ended meanwhile when nobody listens any more.
        offer
            .events
            .send(TaskEvent::Progress(progress))
            .map_err(|_| withdrawn(task_id))
    }

    /// Where the output of task `task_id` is to be written, while the task is the card's.
    pub fn upload_target(&self, id: &str, task_id: &str) -> Result<PathBuf> {
        let cards = self.seen(id)?;
        let card = find_task(&cards, task_id)?;
        let mailbox = card.offer(task_id)?;
        Ok(mailbox.as_ref().expect("checked by offer").out.clone())
    }

    /// Ends task `task_id` with the worker's outcome; a success needs the output uploaded first.
    pub fn finish(&self, id: &str, task_id: &str, outcome: TaskOutcome) -> Result<()> {
        let cards = self.seen(id)?;
        let card = find_task(&cards, task_id)?;
        let mut mailbox = card.offer(task_id)?;
        let event = match outcome {
            TaskOutcome::Succeeded { params } => {
                let out = &mailbox.as_ref().expect("checked by offer").out;
                if !out.is_file() {
                    return Err(StudioError::Invalid(format!(
                        "task {task_id} succeeded, but its output was not uploaded: PUT it to \
                         /api/workers/{id}/tasks/{task_id}/output first"
                    )));
                }
                TaskEvent::Succeeded(params)
            }
            TaskOutcome::Failed { error, refused } => TaskEvent::Failed { error, refused },
        };
        let offer = mailbox.take().expect("checked by offer");
        offer.events.send(event).map_err(|_| withdrawn(task_id))
    }

    /// The studio's file named `sha256` that task `task_id` names (its start frame, a LoRA),
    /// while the task is the card's: nothing else is served this way.
    pub fn task_file(&self, id: &str, task_id: &str, sha256: &str) -> Result<PathBuf> {
        let cards = self.seen(id)?;
        let card = find_task(&cards, task_id)?;
        let mailbox = card.offer(task_id)?;
        let offer = mailbox.as_ref().expect("checked by offer");
        offer
            .task
            .files()
            .into_iter()
            .find(|path| path.file_name().is_some_and(|n| n == sha256))
            .map(Path::to_path_buf)
            .ok_or_else(|| StudioError::NotFound {
                what: "file",
                id: format!("{sha256} of task {task_id}"),
            })
    }

    /// Whether worker `id`'s task `task_id` is still its card's (for an upload that just ended).
    pub fn still_running(&self, id: &str, task_id: &str) -> Result<()> {
        let cards = self.seen(id)?;
        find_task(&cards, task_id).map(drop)
    }
}

/// The card of `cards` running task `task_id`.
fn find_task<'a>(cards: &'a [Arc<RemoteCard>], task_id: &str) -> Result<&'a Arc<RemoteCard>> {
    cards
        .iter()
        .find(|c| lock(&c.mailbox).as_ref().is_some_and(|o| o.id == task_id))
        .ok_or_else(|| withdrawn(task_id))
}

/// 128 random bits in hex: ids nobody guesses.
fn random_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    hex::encode(bytes)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::{Length, RenderSettings};
    use std::ops::ControlFlow;

    fn task() -> GenerationTask {
        GenerationTask::plain(
            "tiny",
            "a paper boat",
            Length::Frames(1),
            RenderSettings::default(),
        )
    }

    /// Worker `spark-2` with one card, joined to `workers`.
    fn join_spark(workers: &Workers) -> (Registered, Vec<Arc<RemoteCard>>) {
        let registration = Registration {
            name: "spark-2".into(),
            cards: vec!["cuda:0".into()],
            version: VERSION.into(),
        };
        workers.register(&registration).unwrap()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A worker whose engine refused the request itself (a size, a split) fails the generation
    /// for good: every card would refuse it alike, so the queue does not try it elsewhere.
    #[test]
    fn a_refusal_on_a_worker_fails_the_generation_for_good() {
        let workers = Workers::new(Duration::from_secs(600));
        let (registered, cards) = join_spark(&workers);
        let id = registered.id.as_str();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.mp4");
        std::thread::scope(|scope| {
            let running = scope.spawn(|| {
                let mut report = |_: &str, _, _| ControlFlow::Continue(());
                cards[0].run(Path::new("/models/tiny"), &task(), &out, &mut report)
            });
            let offered = runtime()
                .block_on(workers.next_task(id, 0, Duration::from_secs(60)))
                .unwrap()
                .expect("a task");
            let refused = TaskOutcome::Failed {
                error: "height and width must be positive multiples of 16".into(),
                refused: true,
            };
            workers.finish(id, &offered.task_id, refused).unwrap();
            let err = running.join().unwrap().unwrap_err();
            assert!(err.is_permanent(), "{err:?}");
            assert_eq!(
                err.to_string(),
                "on spark-2/cuda:0: height and width must be positive multiples of 16"
            );
        });
    }

    #[test]
    fn a_task_is_offered_until_it_ends_and_refused_after() {
        let workers = Workers::new(Duration::from_secs(600));
        let (registered, cards) = join_spark(&workers);
        let id = registered.id.as_str();
        let runtime = runtime();
        let next = || {
            runtime
                .block_on(workers.next_task(id, 0, Duration::from_secs(60)))
                .unwrap()
                .expect("a task")
        };
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.mp4");
        std::thread::scope(|scope| {
            let card = &cards[0];
            let out = &out;
            let running = scope.spawn(move || {
                let mut stages = Vec::new();
                let mut report = |stage: &str, _, _| {
                    stages.push(stage.to_string());
                    ControlFlow::Continue(())
                };
                let ended = card.run(Path::new("/models/tiny"), &task(), out, &mut report);
                (ended, stages)
            });
            let first = next();
            assert_eq!(first.task.prompt, "a paper boat");
            // The answer that carried it was lost: the card's next poll gets the same task.
            assert_eq!(next().task_id, first.task_id);
            let step = TaskProgress {
                stage: "denoising".into(),
                step: 1,
                total: 2,
            };
            workers.progress(id, &first.task_id, step.clone()).unwrap();
            let failed = TaskOutcome::Failed {
                error: "out of memory".into(),
                refused: false,
            };
            workers.finish(id, &first.task_id, failed.clone()).unwrap();
            let (ended, stages) = running.join().unwrap();
            let err = ended.unwrap_err();
            assert!(!err.is_permanent(), "{err:?}");
            assert_eq!(err.to_string(), "on spark-2/cuda:0: out of memory");
            assert_eq!(stages[..2], ["sent to spark-2/cuda:0", "denoising"]);
            // Whatever comes about it later is refused.
            for refused in [
                workers.progress(id, &first.task_id, step).unwrap_err(),
                workers.finish(id, &first.task_id, failed).unwrap_err(),
                workers.upload_target(id, &first.task_id).unwrap_err(),
            ] {
                assert!(matches!(refused, StudioError::Conflict(_)), "{refused}");
            }
            assert!(
                runtime
                    .block_on(workers.next_task(id, 0, Duration::from_millis(10)))
                    .unwrap()
                    .is_none(),
                "nothing more to do"
            );
        });
    }
}
