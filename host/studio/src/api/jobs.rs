//! Routes for the job queue: submit, list, get, cancel, retry, and Server-Sent Event streams of
//! job state changes and progress.

use super::error::{ApiResult, Json, Path, Query};
use crate::app::App;
use crate::jobs::{self, Job, JobEvent, JobState, NewJob};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use utoipa::IntoParams;

type AppState = State<Arc<App>>;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/jobs", get(list_jobs).post(submit_job))
        .route("/api/jobs/events", get(all_events))
        .route("/api/jobs/{id}", get(get_job))
        .route("/api/jobs/{id}/cancel", post(cancel_job))
        .route("/api/jobs/{id}/retry", post(retry_job))
        .route("/api/jobs/{id}/events", get(job_events))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// At most this many, newest first (default 100).
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/jobs", tag = "jobs", params(ListParams),
    responses((status = 200, body = [Job], description = "newest first")))]
pub async fn list_jobs(
    State(app): AppState,
    Query(params): Query<ListParams>,
) -> ApiResult<Json<Vec<Job>>> {
    let limit = params.limit.unwrap_or(100);
    Ok(Json(
        app.blocking(move |a| jobs::list_jobs(&a.db, params.state, limit))
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/jobs", tag = "jobs", request_body = NewJob,
    responses((status = 201, body = Job), (status = 422, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody,
            description = "the job would undo work: a `plan` of a storyboard whose shots have \
                generated takes, without `\"replace\": true` in its params")))]
pub async fn submit_job(
    State(app): AppState,
    Json(new): Json<NewJob>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let job = app.blocking(move |a| a.jobs.submit(a, &new)).await?;
    Ok((StatusCode::CREATED, Json(job)))
}

#[utoipa::path(get, path = "/api/jobs/{id}", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, body = Job), (status = 404, body = super::error::ErrorBody)))]
pub async fn get_job(State(app): AppState, Path(id): Path<i64>) -> ApiResult<Json<Job>> {
    Ok(Json(app.blocking(move |a| jobs::get_job(&a.db, id)).await?))
}

#[utoipa::path(post, path = "/api/jobs/{id}/cancel", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, body = Job, description = "cancelled, or asked to stop if running"),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
pub async fn cancel_job(State(app): AppState, Path(id): Path<i64>) -> ApiResult<Json<Job>> {
    Ok(Json(app.blocking(move |a| a.jobs.cancel(&a.db, id)).await?))
}

#[utoipa::path(post, path = "/api/jobs/{id}/retry", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, body = Job), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)))]
pub async fn retry_job(State(app): AppState, Path(id): Path<i64>) -> ApiResult<Json<Job>> {
    Ok(Json(app.blocking(move |a| a.jobs.retry(&a.db, id)).await?))
}

fn sse_event(event: &JobEvent) -> Event {
    let name = match event {
        JobEvent::State { .. } => "state",
        JobEvent::Progress { .. } => "progress",
    };
    Event::default()
        .event(name)
        .json_data(event)
        .unwrap_or_else(|_| Event::default().comment("unserializable event"))
}

/// Forwards job events to a client stream, starting with `first`: only those of `job` when
/// given (ending after it finishes), all otherwise. Ends when the server shuts down.
/// `receiver` must be subscribed before `first` was read, so that no change is missed.
fn event_stream(
    app: Arc<App>,
    mut receiver: tokio::sync::broadcast::Receiver<JobEvent>,
    job: Option<i64>,
    first: Option<JobEvent>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut closing = app.jobs.closing();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut next = first;
        loop {
            if let Some(event) = next.take() {
                let finished = job.is_some()
                    && matches!(&event, JobEvent::State { state, .. } if state.is_finished());
                if tx.send(event).await.is_err() || finished {
                    return;
                }
            }
            let received = tokio::select! {
                received = receiver.recv() => received,
                _ = closing.wait_for(|closing| *closing) => return,
            };
            match received {
                Ok(e) if job.is_none_or(|id| e.job_id() == id) => next = Some(e),
                Ok(_) => {}
                // Missed events: the row says where the job is now.
                Err(RecvError::Lagged(_)) => {
                    if let Some(id) = job {
                        match app.blocking(move |a| jobs::get_job(&a.db, id)).await {
                            Ok(row) => next = Some(state_event(&row)),
                            Err(_) => return,
                        }
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    ReceiverStream::new(rx).map(|e| Ok(sse_event(&e)))
}

#[utoipa::path(get, path = "/api/jobs/events", tag = "jobs",
    responses((status = 200, content_type = "text/event-stream", body = JobEvent,
        description = "`state` and `progress` events of every job")))]
pub async fn all_events(
    State(app): AppState,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = app.jobs.subscribe();
    Sse::new(event_stream(app, receiver, None, None)).keep_alive(KeepAlive::default())
}

#[utoipa::path(get, path = "/api/jobs/{id}/events", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, content_type = "text/event-stream", body = JobEvent,
        description = "the job's current state, then its events; ends when the job finishes"),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn job_events(
    State(app): AppState,
    Path(id): Path<i64>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let receiver = app.jobs.subscribe();
    let job = app.blocking(move |a| jobs::get_job(&a.db, id)).await?;
    let stream = event_stream(app, receiver, Some(id), Some(state_event(&job)));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn state_event(job: &Job) -> JobEvent {
    JobEvent::State {
        job_id: job.id,
        state: job.state,
        attempts: job.attempts,
        error: job.error.clone(),
    }
}
