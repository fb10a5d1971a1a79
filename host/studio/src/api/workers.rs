//! Routes of workers on other machines (`videosdgx worker --join`, [`crate::workers`]): join,
//! signs of life, a card's next task, a task's files, progress, output and outcome. Behind the
//! same access token as every other route.

use super::error::{ApiError, ApiResult, Json, Path};
use crate::app::App;
use crate::error::StudioError;
use crate::jobs::JobQueue;
use crate::workers::{Assignment, Registered, Registration, TaskOutcome, TaskProgress, VERSION};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;

type AppState = State<Arc<App>>;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/workers", post(register))
        .route("/api/workers/{id}", delete(leave))
        .route("/api/workers/{id}/heartbeat", post(heartbeat))
        .route("/api/workers/{id}/cards/{card}/next", post(next_task))
        .route("/api/workers/{id}/tasks/{task}/progress", post(progress))
        .route(
            "/api/workers/{id}/tasks/{task}/files/{sha256}",
            get(task_file),
        )
        // The upload handler counts bytes itself against `max_upload_bytes`.
        .route(
            "/api/workers/{id}/tasks/{task}/output",
            put(upload_output).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/workers/{id}/tasks/{task}/outcome", post(outcome))
}

/// Joins a worker: its cards become the studio's (named `NAME/CARD`) until it goes silent for
/// longer than the lease.
#[utoipa::path(post, path = "/api/workers", tag = "workers", request_body = Registration,
    responses((status = 201, body = Registered),
        (status = 409, body = super::error::ErrorBody, description = "the worker runs another \
            VideosDGX version (`incompatible_version`)"),
        (status = 422, body = super::error::ErrorBody)))]
pub async fn register(
    State(app): AppState,
    Json(registration): Json<Registration>,
) -> ApiResult<(StatusCode, Json<Registered>)> {
    if registration.version != VERSION {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "incompatible_version",
            format!(
                "the worker runs VideosDGX {}, the studio {VERSION}: run the same version on both \
                 machines",
                registration.version
            ),
        ));
    }
    let (registered, cards) = app.workers.register(&registration)?;
    app.gpus.join(&cards);
    JobQueue::start_for(&app, &cards);
    Ok((StatusCode::CREATED, Json(registered)))
}

/// The worker leaves (it is stopping): its cards leave at once and the generation each ran is
/// retried on another card.
#[utoipa::path(delete, path = "/api/workers/{id}", tag = "workers",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
pub async fn leave(State(app): AppState, Path(id): Path<String>) -> ApiResult<StatusCode> {
    app.workers.leave(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A sign of life (every call of a worker counts as one).
#[utoipa::path(post, path = "/api/workers/{id}/heartbeat", tag = "workers",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody,
        description = "unknown worker (dropped, or the studio restarted): register again")))]
pub async fn heartbeat(State(app): AppState, Path(id): Path<String>) -> ApiResult<StatusCode> {
    app.workers.heartbeat(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The next task of one of the worker's cards (0-based, in the order registered), waiting up
/// to `poll_ms` for one.
#[utoipa::path(post, path = "/api/workers/{id}/cards/{card}/next", tag = "workers",
    params(("id" = String, Path), ("card" = usize, Path)),
    responses((status = 200, body = Assignment), (status = 204, description = "no task came"),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn next_task(
    State(app): AppState,
    Path((id, card)): Path<(String, usize)>,
) -> ApiResult<Response> {
    let wait = Duration::from_millis(app.config.worker_lease.as_millis() as u64 / 3);
    // A studio that stops answers at once: a poll must not hold up its shutdown.
    let mut closing = app.jobs.closing();
    let next = tokio::select! {
        next = app.workers.next_task(&id, card, wait) => next?,
        _ = closing.wait_for(|closing| *closing) => None,
    };
    Ok(match next {
        Some(assignment) => Json(assignment).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// A task's progress, shown as its job's.
#[utoipa::path(post, path = "/api/workers/{id}/tasks/{task}/progress", tag = "workers",
    params(("id" = String, Path), ("task" = String, Path)), request_body = TaskProgress,
    responses((status = 204, description = "go on"),
        (status = 409, body = super::error::ErrorBody, description = "stop: the job was \
            cancelled or went to another card"),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn progress(
    State(app): AppState,
    Path((id, task)): Path<(String, String)>,
    Json(progress): Json<TaskProgress>,
) -> ApiResult<StatusCode> {
    app.workers.progress(&id, &task, progress)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A file of the studio's the task names (its start frame, a LoRA), by the SHA-256 its path
/// ends in; `Range` resumes.
#[utoipa::path(get, path = "/api/workers/{id}/tasks/{task}/files/{sha256}", tag = "workers",
    params(("id" = String, Path), ("task" = String, Path), ("sha256" = String, Path)),
    responses((status = 200, description = "the file"), (status = 206),
        (status = 404, body = super::error::ErrorBody, description = "the task names no such \
            file"),
        (status = 409, body = super::error::ErrorBody)))]
pub async fn task_file(
    State(app): AppState,
    Path((id, task, sha256)): Path<(String, String, String)>,
    request: Request,
) -> ApiResult<Response> {
    let path = app.workers.task_file(&id, &task, &sha256)?;
    let served = tower_http::services::ServeFile::new(&path)
        .try_call(request)
        .await
        .map_err(StudioError::from)?;
    Ok(served.map(axum::body::Body::new).into_response())
}

/// The task's output (its MP4, or a still's PNG), as the raw body (at most
/// `--max-upload-bytes`).
#[utoipa::path(put, path = "/api/workers/{id}/tasks/{task}/output", tag = "workers",
    params(("id" = String, Path), ("task" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204), (status = 409, body = super::error::ErrorBody),
        (status = 413, body = super::error::ErrorBody)))]
pub async fn upload_output(
    State(app): AppState,
    Path((id, task)): Path<(String, String)>,
    request: Request,
) -> ApiResult<StatusCode> {
    let limit = app.config.max_upload_bytes;
    super::assets::refuse_declared_oversize(&request, limit)?;
    let out = match app.workers.upload_target(&id, &task) {
        Ok(out) => out,
        Err(refused) => {
            // Read to its end (bounded by the limit) so that the worker, still sending, gets
            // this answer rather than a connection reset it would send the output again after.
            let mut body = request.into_body().into_data_stream();
            let mut read = 0u64;
            while let Some(Ok(chunk)) = body.next().await {
                read += chunk.len() as u64;
                if read > limit {
                    break;
                }
            }
            return Err(refused.into());
        }
    };
    // Written beside its place and renamed: a video cut off never looks whole.
    let part = out.with_extension("part");
    let written = write_body(request, &part, limit).await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(e.into());
    }
    // The task may have gone meanwhile (the worker was dropped): its output is not wanted.
    if let Err(e) = app.workers.still_running(&id, &task) {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(e.into());
    }
    tokio::fs::rename(&part, &out)
        .await
        .map_err(StudioError::from)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn write_body(
    request: Request,
    path: &std::path::Path,
    limit: u64,
) -> Result<(), StudioError> {
    let mut file = tokio::fs::File::create(path).await?;
    let mut body = request.into_body().into_data_stream();
    let mut written = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| StudioError::Invalid(format!("upload interrupted: {e}")))?;
        written += chunk.len() as u64;
        if written > limit {
            return Err(StudioError::TooLarge { limit });
        }
        file.write_all(&chunk).await?;
    }
    file.sync_all().await?;
    Ok(())
}

/// How the task ended: `{"succeeded": {"params": …}}` after its output was uploaded, or
/// `{"failed": {"error": "…"}}`.
#[utoipa::path(post, path = "/api/workers/{id}/tasks/{task}/outcome", tag = "workers",
    params(("id" = String, Path), ("task" = String, Path)), request_body = TaskOutcome,
    responses((status = 204), (status = 409, body = super::error::ErrorBody,
        description = "refused: the task is no longer this worker's (a late result)"),
        (status = 422, body = super::error::ErrorBody)))]
pub async fn outcome(
    State(app): AppState,
    Path((id, task)): Path<(String, String)>,
    Json(outcome): Json<TaskOutcome>,
) -> ApiResult<StatusCode> {
    app.workers.finish(&id, &task, outcome)?;
    Ok(StatusCode::NO_CONTENT)
}
