//! `videosdgx worker --join URL --token TOKEN`: lends this machine's cards to a studio on
//! another. The worker registers its cards over the studio's API, then a thread per card polls
//! for that card's generation tasks and runs each with the studio's own card code
//! (`Gpus::generate`, the pipeline kept resident between tasks), reporting progress (a refusal
//! means the job was cancelled or moved: the task stops) and sending the output and its
//! parameters back. The studio records the output; the worker keeps no state but its models.
//! A model it lacks is pulled from the studio's `/api/hub` with `models pull`'s code. A heartbeat
//! keeps the registration alive; when the studio no longer knows the worker (it restarted, or
//! dropped a silent worker) it registers again.

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use videosdgx_engine::hub::{Hub, PullProgress, PullSource};
use videosdgx_studio::generation::{is_cancelled, is_sha256};
use videosdgx_studio::gpu::{CardSet, Gpus};
use videosdgx_studio::models;
use videosdgx_studio::workers::{
    Assignment, Registered, Registration, TaskOutcome, TaskProgress, VERSION,
};

/// How long a call whose studio went away waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often an output that does not get through is sent before its task is failed.
const UPLOAD_TRIES: u32 = 5;
/// A call without a body.
const NO_BODY: Option<&()> = None;
/// How often progress is sent while a stage goes on (a new stage is sent at once).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The studio's URL, e.g. http://studio.local:7860.
    #[arg(long, value_name = "URL")]
    pub join: String,
    /// The studio's access token (printed by `videosdgx serve` at its first start on a network
    /// address, or by `videosdgx auth reset-token` there); not needed by a studio on loopback
    /// without --require-auth.
    #[arg(long, env = "VIDEOSDGX_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The name the studio shows this worker's cards under (`NAME/cuda:0`); default: the host
    /// name.
    #[arg(long)]
    pub name: Option<String>,
    /// Where a model this worker lacks comes from: the studio (its installed copy), or the
    /// hub the studio pulled it from (HF_ENDPOINT and HF_TOKEN, as `models pull`), at the
    /// same commit.
    #[arg(long, value_enum, default_value_t = ModelsFrom::Studio)]
    pub models_from: ModelsFrom,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelsFrom {
    Studio,
    Hub,
}

/// A studio's API, with the token.
struct Studio {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// A studio's answer: its status and body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).context("the studio's answer is not what a worker reads")
    }

    /// The message of the API's `{"error": {"code", "message"}}`, else the body.
    fn error(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| {
                Some(format!(
                    "{} ({})",
                    v["error"]["message"].as_str()?,
                    v["error"]["code"].as_str()?
                ))
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned())
    }
}

impl Studio {
    fn new(url: &str, token: Option<String>) -> Result<Studio> {
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) || base.len() < 9 {
            bail!("--join {url}: give the studio's URL, e.g. http://studio.local:7860");
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .into();
        Ok(Studio { base, token, agent })
    }

    /// Calls `path` with `body` as JSON, if any.
    fn call(&self, method: &str, path: &str, body: Option<&impl Serialize>) -> Result<Answer> {
        let url = format!("{}{path}", self.base);
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = match body {
            Some(body) => self.agent.run(
                request
                    .header("content-type", "application/json")
                    .body(serde_json::to_vec(body)?)?,
            ),
            None => self.agent.run(request.body(())?),
        };
        self.answer(response)
    }

    fn answer(
        &self,
        response: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Answer> {
        let response =
            response.with_context(|| format!("cannot reach the studio at {}", self.base))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .with_config()
            .limit(16 << 20)
            .read_to_vec()
            .with_context(|| format!("the studio at {} broke off its answer", self.base))?;
        Ok(Answer { status, body })
    }

    /// GETs `path`, whatever its status, for a body read as it comes.
    fn get(&self, path: &str) -> Result<ureq::http::Response<ureq::Body>> {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request
            .call()
            .with_context(|| format!("cannot reach the studio at {}", self.base))
    }

    /// Sends the file at `path` as the body of a PUT.
    fn put_file(&self, path: &str, file: &Path) -> Result<Answer> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .agent
            .put(&url)
            .header("content-type", "application/octet-stream");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let file =
            std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        self.answer(request.send(file))
    }
}

/// Registers with the studio; the errors a person can act on say what to do.
fn register(studio: &Studio, registration: &Registration) -> Result<Registered> {
    let answer = studio.call("POST", "/api/workers", Some(registration))?;
    match answer.status {
        201 => answer.json(),
        401 => bail!(
            "the studio at {} refused the access token{}: {}",
            studio.base,
            if studio.token.is_none() {
                " (none was given: pass --token or set VIDEOSDGX_TOKEN)"
            } else {
                ""
            },
            answer.error()
        ),
        404 => bail!(
            "{} answers, but not as a VideosDGX studio that takes workers: {}",
            studio.base,
            answer.error()
        ),
        _ => bail!(
            "the studio at {} refused this worker: {}",
            studio.base,
            answer.error()
        ),
    }
}

/// The current registration, replaced when the studio asks for a new one.
struct Session {
    registered: RwLock<Registered>,
}

impl Session {
    fn id(&self) -> String {
        self.registered
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .id
            .clone()
    }
}

pub fn run(data: PathBuf, cards: CardSet, args: WorkerArgs) -> Result<()> {
    cards.check()?;
    if cards.cards().is_empty() {
        bail!("a worker lends at least one card: --gpus all, 0,1, cuda:0 or cpu");
    }
    let studio = Arc::new(Studio::new(&args.join, args.token)?);
    let name = match args.name {
        Some(name) => name,
        None => host_name(),
    };
    // Each card is a set of its own, so that a card's thread runs its tasks on that card.
    let mut labels = Vec::new();
    let mut lanes = Vec::new();
    let gpus = Gpus::open(&cards)?;
    for (card, state) in cards.cards().iter().zip(gpus.states()) {
        labels.push(state.card);
        lanes.push(Gpus::open(
            &card.to_string().parse().map_err(anyhow::Error::msg)?,
        )?);
    }
    drop(gpus);
    let registration = Registration {
        name: name.clone(),
        cards: labels.clone(),
        version: VERSION.into(),
    };
    let registered = register(&studio, &registration)?;
    eprintln!(
        "joined the studio at {} as `{name}` with {}",
        studio.base,
        labels.join(", ")
    );
    let session = Arc::new(Session {
        registered: RwLock::new(registered),
    });
    for (index, lane) in lanes.into_iter().enumerate() {
        let (studio, session, data) = (studio.clone(), session.clone(), data.clone());
        std::thread::Builder::new()
            .name(format!("card-{index}"))
            .spawn(move || {
                let card = Lane {
                    models_from: args.models_from,
                    studio: &studio,
                    session: &session,
                    index,
                    gpus: &lane,
                    data: &data,
                };
                card.serve()
            })?;
    }
    let stop = stop_signal()?;
    loop {
        let heartbeat = {
            let registered = session.registered.read().unwrap_or_else(|p| p.into_inner());
            Duration::from_millis(registered.heartbeat_ms.max(100))
        };
        if stop.recv_timeout(heartbeat).is_ok() {
            // Leaving hands a running generation back at once, rather than after the lease.
            let path = format!("/api/workers/{}", session.id());
            match studio.call("DELETE", &path, NO_BODY) {
                Ok(answer) if answer.status == 204 => eprintln!("left the studio"),
                Ok(answer) => eprintln!("leaving the studio: {}", answer.error()),
                Err(e) => eprintln!("leaving the studio: {e:#}"),
            }
            return Ok(());
        }
        let path = format!("/api/workers/{}/heartbeat", session.id());
        match studio.call("POST", &path, NO_BODY) {
            Ok(answer) if answer.status == 204 => {}
            Ok(answer) if answer.status == 404 => {
                // The studio restarted or dropped this worker: join again.
                match register(&studio, &registration) {
                    Ok(registered) => {
                        tracing::info!("registered again with the studio");
                        *session
                            .registered
                            .write()
                            .unwrap_or_else(|p| p.into_inner()) = registered;
                    }
                    Err(e) => tracing::warn!("cannot register again: {e:#}"),
                }
            }
            Ok(answer) => tracing::warn!("heartbeat refused: {}", answer.error()),
            Err(e) => tracing::warn!("{e:#}"),
        }
    }
}

/// Receives once SIGINT or SIGTERM arrives.
fn stop_signal() -> Result<std::sync::mpsc::Receiver<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal listener")?;
    let (stop, stopped) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(videosdgx_studio::server::shutdown_signal());
            let _ = stop.send(());
        })?;
    Ok(stopped)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "worker".into())
}

/// One of this worker's cards, serving its tasks.
struct Lane<'a> {
    models_from: ModelsFrom,
    studio: &'a Studio,
    session: &'a Session,
    index: usize,
    gpus: &'a Gpus,
    data: &'a Path,
}

impl Lane<'_> {
    fn serve(&self) -> ! {
        loop {
            let id = self.session.id();
            let path = format!("/api/workers/{id}/cards/{}/next", self.index);
            match self.studio.call("POST", &path, NO_BODY) {
                Ok(answer) if answer.status == 200 => match answer.json::<Assignment>() {
                    Ok(assignment) => self.run(&id, assignment),
                    Err(e) => tracing::warn!("{e:#}"),
                },
                Ok(answer) if answer.status == 204 => {}
                // Unknown worker: the heartbeat registers again; wait for it.
                Ok(answer) => {
                    tracing::debug!("poll refused: {}", answer.error());
                    std::thread::sleep(RETRY_AFTER);
                }
                Err(e) => {
                    tracing::warn!("{e:#}");
                    std::thread::sleep(RETRY_AFTER);
                }
            }
        }
    }

    fn run(&self, id: &str, assignment: Assignment) {
        let task_path = format!("/api/workers/{id}/tasks/{}", assignment.task_id);
        let mut progress = Progress {
            studio: self.studio,
            path: format!("{task_path}/progress"),
            stage: String::new(),
            sent: Instant::now(),
        };
        let out = self.data.join("tmp").join(format!(
            "worker-{}.{}",
            assignment.task_id,
            if assignment.task.still { "png" } else { "mp4" }
        ));
        // A panic fails the task like an error: the card's thread lives on, and the studio,
        // which hears this worker's heartbeats, is told rather than left waiting.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.generate(id, assignment.clone(), &out, &mut progress)
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or(panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            Err(anyhow::anyhow!("the generation panicked: {what}"))
        });
        // The studio waits for this task's end while this worker answers: a report it did not
        // get is sent again until it answers (it drops a worker gone silent, answering 404).
        let until_answered = |send: &dyn Fn() -> Result<Answer>| loop {
            match send() {
                Ok(answer) => return answer,
                Err(e) => {
                    tracing::warn!(task = %assignment.task_id, "{e:#}; trying again");
                    std::thread::sleep(RETRY_AFTER);
                }
            }
        };
        let reply = match outcome {
            // Asked first: a task withdrawn meanwhile is not uploaded.
            Ok(_) if progress.send("uploading", 0, 1).is_break() => {
                let _ = std::fs::remove_file(&out);
                return;
            }
            Ok(params) => match self.upload(&format!("{task_path}/output"), &out) {
                Ok(answer) if answer.status == 204 => until_answered(&|| {
                    self.studio.call(
                        "POST",
                        &format!("{task_path}/outcome"),
                        Some(&TaskOutcome::Succeeded {
                            params: Box::new(params.clone()),
                        }),
                    )
                }),
                // The task is gone (withdrawn, or this worker dropped): nothing to report.
                Ok(answer) if matches!(answer.status, 404 | 409) => answer,
                // Refused (too large) or not sent: the task fails, to be retried elsewhere.
                refused => {
                    let error = match refused {
                        Ok(answer) => format!("the studio refused the output: {}", answer.error()),
                        Err(e) => format!("cannot send the output to the studio: {e:#}"),
                    };
                    let failed = TaskOutcome::Failed {
                        error,
                        refused: false,
                    };
                    until_answered(&|| {
                        self.studio
                            .call("POST", &format!("{task_path}/outcome"), Some(&failed))
                    })
                }
            },
            Err(e) if is_stop(&e) => {
                tracing::info!(task = %assignment.task_id, "stopped: the studio withdrew the task");
                let _ = std::fs::remove_file(&out);
                return;
            }
            Err(e) => {
                tracing::warn!(task = %assignment.task_id, "failed: {e:#}");
                let failed = TaskOutcome::Failed {
                    error: format!("{e:#}"),
                    refused: videosdgx_engine::pipelines::is_refusal(&e),
                };
                until_answered(&|| {
                    self.studio
                        .call("POST", &format!("{task_path}/outcome"), Some(&failed))
                })
            }
        };
        let _ = std::fs::remove_file(&out);
        if reply.status == 204 {
            tracing::info!(task = %assignment.task_id, "task ended and reported");
        } else {
            tracing::warn!(task = %assignment.task_id, "the studio refused the result: {}", reply.error());
        }
    }

    /// PUTs the output at `file` to `path`, trying again a few times when it does not get
    /// through (a refusal answered before the body was sent may reach this end as a reset).
    fn upload(&self, path: &str, file: &Path) -> Result<Answer> {
        let mut tries = 1;
        loop {
            match self.studio.put_file(path, file) {
                Err(e) if tries < UPLOAD_TRIES => {
                    tracing::warn!("{e:#}; trying again");
                    tries += 1;
                    std::thread::sleep(RETRY_AFTER);
                }
                sent => return sent,
            }
        }
    }

    fn generate(
        &self,
        id: &str,
        assignment: Assignment,
        out: &Path,
        progress: &mut Progress,
    ) -> Result<videosdgx_engine::pipelines::GenerateParams> {
        let mut task = assignment.task;
        let mut report = |stage: &str, step: u64, total: u64| progress.send(stage, step, total);
        let dir = self.model_dir(&task.model, assignment.source.as_ref(), &mut report)?;
        let files: Vec<PathBuf> = task.files().into_iter().map(Path::to_path_buf).collect();
        for file in files {
            let local = self.fetch(id, &assignment.task_id, &file)?;
            task.local_files.insert(file, local);
        }
        std::fs::create_dir_all(out.parent().expect("under tmp"))?;
        match self.gpus.generate(None, &dir, &task, out, &mut report) {
            Ok(generated) => Ok(generated.params),
            Err(e) if is_cancelled(&e) => Err(e.into()),
            // The studio names its files in errors (a LoRA that does not fit, by its asset):
            // its paths, not this worker's copies.
            Err(e) => {
                let mut message = format!("{e:#}");
                for (studio, local) in &task.local_files {
                    message = message
                        .replace(&local.display().to_string(), &studio.display().to_string());
                }
                bail!(message)
            }
        }
    }

    /// A copy of the studio's file `path` that the task names (a start frame, a reference image,
    /// a LoRA), kept under `DATA/worker-files/` by the SHA-256 it is named by, fetched once and
    /// checked.
    fn fetch(&self, id: &str, task_id: &str, path: &Path) -> Result<PathBuf> {
        let sha256 = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| is_sha256(n))
            .with_context(|| format!("the task names {}, not a stored file", path.display()))?;
        let local = self.data.join("worker-files").join(sha256);
        if local.is_file() {
            return Ok(local);
        }
        std::fs::create_dir_all(local.parent().expect("under worker-files"))?;
        let request = format!("/api/workers/{id}/tasks/{task_id}/files/{sha256}");
        let response = self.studio.get(&request)?;
        if response.status() != 200 {
            let status = response.status().as_u16();
            let answer = self.studio.answer(Ok(response))?;
            bail!(
                "fetching file {sha256} of the task: HTTP {status}: {}",
                answer.error()
            );
        }
        // Named by the task too: cards and workers sharing this data directory never write the
        // same partial file.
        let part = local.with_extension(format!("{task_id}.part"));
        let mut hashing = Hashing {
            file: std::fs::File::create(&part)
                .with_context(|| format!("creating {}", part.display()))?,
            hasher: Sha256::new(),
        };
        std::io::copy(&mut response.into_body().into_reader(), &mut hashing)
            .with_context(|| format!("fetching file {sha256} of the task"))?;
        let actual = hex::encode(hashing.hasher.finalize());
        if actual != sha256 {
            let _ = std::fs::remove_file(&part);
            bail!("file {sha256} of the task arrived corrupt (SHA-256 {actual})");
        }
        hashing.file.sync_all()?;
        std::fs::rename(&part, &local)?;
        Ok(local)
    }

    /// The folder of installed model `name`: this worker's, else pulled from the studio
    /// or from the hub the studio's copy came from (`source`).
    fn model_dir(
        &self,
        name: &str,
        source: Option<&PullSource>,
        report: &mut dyn FnMut(&str, u64, u64) -> ControlFlow<()>,
    ) -> Result<PathBuf> {
        // One pull at a time, whichever card or worker process on this data directory asks:
        // a model wanted twice is installed once (`File::lock` holds until the file closes).
        let models_dir = models::models_dir(self.data);
        std::fs::create_dir_all(&models_dir)?;
        let lock = models_dir.join(".worker-pull.lock");
        let _one_pull = std::fs::File::create(&lock)
            .and_then(|file| file.lock().map(|()| file))
            .with_context(|| format!("locking {}", lock.display()))?;
        if let Some(dir) = self.installed(name)? {
            return Ok(dir);
        }
        let (hub, repo_id, revision) = match (self.models_from, source) {
            (ModelsFrom::Studio, _) => (
                Hub::new(format!("{}/api/hub", self.studio.base))
                    .with_token(self.studio.token.clone()),
                name,
                None,
            ),
            (ModelsFrom::Hub, Some(source)) => (
                Hub::from_env(),
                source.repo_id.as_str(),
                Some(source.commit.as_str()),
            ),
            (ModelsFrom::Hub, None) => bail!(
                "model `{name}` was copied into the studio, not pulled from a hub: start the \
                 worker with --models-from studio, or copy it into {}",
                models::models_dir(self.data).display()
            ),
        };
        tracing::info!(model = name, from = ?self.models_from, "pulling the model");
        let mut stopped = false;
        let pulled = hub.pull(repo_id, revision, &models_dir, &mut |p: &PullProgress| {
            stopped |= report("pulling model", p.bytes, p.file_size.max(1)).is_break();
        });
        if stopped {
            bail!(Stopped);
        }
        pulled.with_context(|| format!("pulling model `{name}`"))?;
        self.installed(name)?.with_context(|| {
            format!("model `{name}` was pulled, but is not a model folder of this worker's")
        })
    }

    /// The folder of this worker's installed model `name` (a video or an image model).
    fn installed(&self, name: &str) -> Result<Option<PathBuf>> {
        Ok(models::list_models(self.data)?
            .into_iter()
            .find(|model| model.name == name)
            .map(|model| model.path))
    }
}

/// Writes a file and hashes what it writes.
struct Hashing {
    file: std::fs::File,
    hasher: Sha256,
}

impl std::io::Write for Hashing {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.file.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The studio withdrew the task while it was pulled (the job was cancelled or moved).
#[derive(Debug)]
struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the studio withdrew the task")
    }
}

impl std::error::Error for Stopped {}

/// Whether `err` is a stop the studio asked for (not a failure to report).
fn is_stop(err: &anyhow::Error) -> bool {
    err.downcast_ref::<Stopped>().is_some()
        || err
            .downcast_ref::<videosdgx_studio::StudioError>()
            .is_some_and(is_cancelled)
}

/// Sends a task's progress to the studio; its refusal stops the task.
struct Progress<'a> {
    studio: &'a Studio,
    path: String,
    stage: String,
    sent: Instant,
}

impl Progress<'_> {
    fn send(&mut self, stage: &str, step: u64, total: u64) -> ControlFlow<()> {
        if stage == self.stage && self.sent.elapsed() < PROGRESS_EVERY && step < total {
            return ControlFlow::Continue(());
        }
        self.stage = stage.to_string();
        self.sent = Instant::now();
        let progress = TaskProgress {
            stage: stage.to_string(),
            step,
            total,
        };
        match self.studio.call("POST", &self.path, Some(&progress)) {
            Ok(answer) if answer.status == 204 => ControlFlow::Continue(()),
            // 409: cancelled or given to another card; 404: this worker was dropped.
            Ok(answer) if matches!(answer.status, 404 | 409) => {
                tracing::info!("the studio stops the task: {}", answer.error());
                ControlFlow::Break(())
            }
            Ok(answer) => {
                tracing::warn!("progress refused: {}", answer.error());
                ControlFlow::Continue(())
            }
            // A studio briefly away: the lease decides, not one lost report.
            Err(e) => {
                tracing::warn!("{e:#}");
                ControlFlow::Continue(())
            }
        }
    }
}
