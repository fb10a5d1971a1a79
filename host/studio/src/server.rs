//! Runs the studio: takes the data directory's server lock, recovers jobs cut off by a crash,
//! starts the job workers ([`QueueWorkers`], also what `render` runs its jobs on) and serves
//! HTTP until SIGINT/SIGTERM, then stops gracefully (running jobs go back to the queue).
//! Routers of other parts (plugins, web UI, auth) are merged in [`router`].

use crate::app::App;
use crate::auth::Auth;
use crate::error::{Result, StudioError};
use crate::jobs::JobQueue;
use axum::Router;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// CPU-lane workers beside the GPU lane's one per card, at least. A `shoot` job holds a CPU
/// worker while its takes generate, so there is one more than cards: every card can be fed and
/// plans, prompts and stitches still run.
const CPU_WORKERS: usize = 2;
/// How long shutdown waits for running jobs to reach a stopping point.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The whole HTTP surface: the API and the embedded web UI, behind the access policy.
pub fn router(app: Arc<App>, auth: Auth) -> Router {
    let routes = crate::api::routes()
        .route("/api", axum::routing::any(crate::api::not_found))
        .route("/api/{*rest}", axum::routing::any(crate::api::not_found))
        .with_state(app)
        .merge(crate::web::router());
    crate::auth::protect(routes, auth)
}

/// Holds `<data>/serve.lock` so that two processes never run the same queue.
pub struct ServerLock {
    _file: File,
}

impl ServerLock {
    pub fn acquire(data_dir: &Path) -> Result<ServerLock> {
        let path = data_dir.join("serve.lock");
        let file = File::create(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(ServerLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StudioError::Conflict(format!(
                "another `videosdgx serve` or `videosdgx render` is already running the jobs of {}",
                data_dir.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }
}

/// The job queue at work in this process: the data directory's lock held, jobs and shots cut
/// off by a crash recovered, and the lane workers running until [`QueueWorkers::stop`].
/// `serve` runs one for its lifetime; `render` runs one for the length of a render.
pub struct QueueWorkers {
    app: Arc<App>,
    _lock: ServerLock,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl QueueWorkers {
    pub async fn start(app: &Arc<App>, lock: ServerLock) -> Result<QueueWorkers> {
        app.blocking(|a| a.clear_scratch()).await?;
        let recovered = app.blocking(|a| a.jobs.recover(&a.db)).await?;
        app.blocking(|a| crate::generation::recover_shots(&a.db))
            .await?;
        if !recovered.is_empty() {
            tracing::warn!(
                count = recovered.len(),
                "jobs were cut off by the last stop"
            );
        }
        Ok(QueueWorkers {
            app: app.clone(),
            _lock: lock,
            handles: JobQueue::start(app, CPU_WORKERS.max(app.gpus.len() + 1)),
        })
    }

    /// Stops the workers and waits for them a grace period: running jobs go back to the queue
    /// to resume at the next start.
    pub async fn stop(self) {
        self.app.jobs.stop();
        let joined = self.app.jobs.joined_workers();
        let all = async {
            for handle in self.handles.into_iter().chain(joined) {
                let _ = handle.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_err() {
            tracing::warn!(
                "jobs still running after the grace period; they will be recovered at next start"
            );
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let lock = ServerLock::acquire(app.data_dir())?;
    let auth = Auth::for_bind(
        app.data_dir(),
        listener.local_addr()?.ip(),
        app.config.require_auth,
    )?;
    if let Some(token) = &auth.new_token {
        crate::auth::announce_new_token(token);
    }
    let workers = QueueWorkers::start(&app, lock).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data = %app.data_dir().display(), "studio ready");
    let stopping = app.clone();
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: stopping job workers and event streams");
        // Ends event streams too, so open SSE connections do not hold the server up.
        stopping.jobs.stop();
    };
    // The peer address keys the sign-in rate limit.
    let service = router(app.clone(), auth.auth)
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(StudioError::from)?;
    workers.stop().await;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
