//! The studio service as one value: configuration, database, asset library and job queue. The
//! HTTP API, the CLI and plugins all go through it; it knows nothing of HTTP.

use crate::assets::AssetLibrary;
use crate::db::Db;
use crate::error::{Result, StudioError};
use crate::generation::{GenerateRunner, Generator};
use crate::gpu::{CardSet, Gpus};
use crate::jobs::{JobQueue, JobRunner, runners};
use crate::plugins::Plugins;
use crate::workers::Workers;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct StudioConfig {
    pub data_dir: PathBuf,
    /// Largest accepted upload, in bytes.
    pub max_upload_bytes: u64,
    /// Demand sign-in even on loopback (it is always demanded on other addresses).
    pub require_auth: bool,
    /// The cards jobs run on (`--gpus`).
    pub gpus: CardSet,
    /// How long a worker may stay silent before its cards leave and its task is retried.
    pub worker_lease: Duration,
}

impl StudioConfig {
    pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 4 * 1024 * 1024 * 1024;
    pub const DEFAULT_WORKER_LEASE: Duration = Duration::from_secs(15);

    pub fn new(data_dir: impl Into<PathBuf>) -> StudioConfig {
        StudioConfig {
            data_dir: data_dir.into(),
            max_upload_bytes: Self::DEFAULT_MAX_UPLOAD_BYTES,
            require_auth: false,
            gpus: CardSet::all(),
            worker_lease: Self::DEFAULT_WORKER_LEASE,
        }
    }
}

pub struct App {
    pub config: StudioConfig,
    pub db: Db,
    pub assets: AssetLibrary,
    pub jobs: JobQueue,
    /// The cards and the model each holds, shared by generation, finishing and the language
    /// model: the GPU lane runs a job per card.
    pub gpus: Arc<Gpus>,
    pub generator: Generator,
    pub plugins: Plugins,
    /// Workers on other machines lending their cards ([`crate::workers`]).
    pub workers: Workers,
}

impl App {
    /// Opens (creating) the data directory: `studio.db`, `assets/`, `index/`, and the
    /// first-party plugins installed or upgraded.
    pub fn open(config: StudioConfig) -> Result<App> {
        Self::open_with_runners(config, default_runners())
    }

    pub fn open_with_runners(
        config: StudioConfig,
        runners: Vec<Arc<dyn JobRunner>>,
    ) -> Result<App> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|e| {
            StudioError::from(e)
                .context_internal(format!("cannot create data directory {}", dir.display()))
        })?;
        let db = Db::open(&dir.join("studio.db"))?;
        let assets = AssetLibrary::open(dir, &db)?;
        let plugins = Plugins::new(dir);
        crate::plugins::first_party::sync(&db, &plugins)?;
        let gpus = Arc::new(Gpus::open(&config.gpus)?);
        Ok(App {
            workers: Workers::new(config.worker_lease),
            config,
            db,
            assets,
            jobs: JobQueue::new(runners),
            generator: Generator::new(gpus.clone()),
            gpus,
            plugins,
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// A new file name under `<data>/tmp` for a job's output before it becomes an asset, e.g.
    /// `generation-1f2e….mp4`.
    pub fn scratch_file(&self, what: &str, ext: &str) -> Result<PathBuf> {
        let dir = self.scratch_dir();
        std::fs::create_dir_all(&dir)?;
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(|e| StudioError::Internal(e.into()))?;
        Ok(dir.join(format!("{what}-{}.{ext}", hex::encode(bytes))))
    }

    /// Removes what jobs cut off by a crash left in `<data>/tmp`. Only jobs write there, and
    /// they run only under the queue's lock: call it holding that lock, before any worker runs.
    pub fn clear_scratch(&self) -> Result<()> {
        match std::fs::remove_dir_all(self.scratch_dir()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn scratch_dir(&self) -> PathBuf {
        self.data_dir().join("tmp")
    }

    /// Runs blocking service code (SQLite, file I/O) off the async workers.
    pub async fn blocking<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&App) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let app = self.clone();
        tokio::task::spawn_blocking(move || f(&app))
            .await
            .map_err(|e| StudioError::Internal(anyhow::anyhow!("service task failed: {e}")))?
    }
}

/// The job kinds every build can run.
pub fn default_runners() -> Vec<Arc<dyn JobRunner>> {
    vec![
        Arc::new(runners::Reindex),
        Arc::new(runners::ImportFolder),
        Arc::new(runners::PullLora),
        Arc::new(GenerateRunner),
        Arc::new(crate::keyframes::LookRunner),
        Arc::new(crate::keyframes::KeyframeRunner),
        Arc::new(crate::finishing::FinishRunner),
        Arc::new(crate::shoot::ShootRunner),
        Arc::new(crate::language::ChatRunner),
        Arc::new(crate::plugins::runners::Plan),
        Arc::new(crate::plugins::runners::Expand),
        Arc::new(crate::plugins::runners::Stitch),
    ]
}
