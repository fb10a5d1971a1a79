//! Routes for the job queue: submit, list, get, cancel, retry, Server-Sent Event streams of job
//! state changes and progress, and the cards the GPU lane runs on.

use super::error::{ApiResult, Json, Path, Query};
use crate::app::App;
use crate::gpu::CardState;
use crate::jobs::journal::{Missed, Numbered};
use crate::jobs::{self, Job, JobEvent, JobState, NewJob};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
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
        .route("/api/gpus", get(list_gpus))
}

/// The cards GPU-lane jobs run on (`--gpus`): what each holds and the job it runs now.
#[utoipa::path(get, path = "/api/gpus", tag = "jobs",
    responses((status = 200, body = [CardState])))]
pub async fn list_gpus(State(app): AppState) -> Json<Vec<CardState>> {
    Json(app.gpus.states())
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
    responses((status = 201, body = Job),
        (status = 422, body = super::error::ErrorBody,
            description = "bad parameters (`invalid`), or work the model or the studio's cards \
                can never run as asked (`refused`: a `split_cards`/`cfg_parallel` layout the \
                model's heads or guidance, or the studio's own cards, cannot take)"),
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

/// One message of an event stream.
enum Outgoing {
    /// A journal event: sent with its id, so that a reconnecting client can resume after it.
    Numbered(Numbered),
    /// A job's state read from its row (the start of a job's stream, or after a gap).
    Current(JobEvent),
    /// The client missed more events than the journal keeps: it must reload what it shows.
    Reset,
}

fn sse_event(app: &App, outgoing: &Outgoing) -> Event {
    let event = match outgoing {
        Outgoing::Reset => {
            return Event::default().event("reset").data(r#"{"type":"reset"}"#);
        }
        Outgoing::Numbered(numbered) => &numbered.event,
        Outgoing::Current(event) => event,
    };
    let name = match event {
        JobEvent::State { .. } => "state",
        JobEvent::Progress { .. } => "progress",
    };
    let sse = Event::default()
        .event(name)
        .json_data(event)
        .unwrap_or_else(|_| Event::default().comment("unserializable event"));
    match outgoing {
        Outgoing::Numbered(numbered) => sse.id(app.jobs.journal().id(numbered.n)),
        _ => sse,
    }
}

/// The `Last-Event-ID` a reconnecting EventSource sends.
fn last_event_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Forwards job events to a client stream: only those of `job` when given (starting with its
/// current state and ending after it finishes), all otherwise. A client resuming after
/// `last_id` first gets the events it missed, in order, or `reset` when it missed too many.
/// Ends when the server shuts down.
fn event_stream(
    app: Arc<App>,
    job: Option<i64>,
    last_id: Option<String>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut closing = app.jobs.closing();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let stream_app = app.clone();
    tokio::spawn(async move {
        let journal = app.jobs.journal();
        let (mut receiver, missed, head) = journal.resume(last_id.as_deref());
        let wanted = |e: &JobEvent| job.is_none_or(|id| e.job_id() == id);
        let finishes = |e: &JobEvent| {
            job.is_some() && matches!(e, JobEvent::State { state, .. } if state.is_finished())
        };
        // The row is read after subscribing, so no change is missed in between.
        let current = |app: Arc<App>| async move {
            match job {
                Some(id) => app
                    .blocking(move |a| jobs::get_job(&a.db, id))
                    .await
                    .ok()
                    .map(|row| Outgoing::Current(state_event(&row))),
                None => None,
            }
        };
        let mut backlog: Vec<Outgoing> = Vec::new();
        // The journal's events up to `seen` are dealt with (sent, or not this stream's): the
        // missed ones follow it; a new or reset client is current as of subscribing.
        let mut seen = head;
        match missed {
            Missed::Events(events) if last_id.is_some() => {
                seen = events.first().map_or(head, |e| e.n - 1);
                backlog.extend(events.into_iter().map(Outgoing::Numbered));
            }
            Missed::Events(_) => backlog.extend(current(app.clone()).await),
            Missed::Gap => {
                backlog.push(Outgoing::Reset);
                backlog.extend(current(app.clone()).await);
            }
        }
        loop {
            for outgoing in backlog.drain(..) {
                let event = match &outgoing {
                    Outgoing::Numbered(n) if n.n <= seen => continue,
                    Outgoing::Numbered(n) => {
                        seen = n.n;
                        if !wanted(&n.event) {
                            continue;
                        }
                        Some(&n.event)
                    }
                    Outgoing::Current(event) => Some(event),
                    Outgoing::Reset => None,
                };
                let done = event.is_some_and(finishes);
                if tx.send(outgoing).await.is_err() || done {
                    return;
                }
            }
            let received = tokio::select! {
                received = receiver.recv() => received,
                _ = closing.wait_for(|closing| *closing) => return,
            };
            match received {
                Ok(numbered) => backlog.push(Outgoing::Numbered(numbered)),
                // The broadcast ran ahead of this client: the journal has what it missed.
                Err(RecvError::Lagged(_)) => match journal.since(&journal.id(seen)) {
                    Missed::Events(events) => {
                        backlog.extend(events.into_iter().map(Outgoing::Numbered))
                    }
                    Missed::Gap => {
                        backlog.push(Outgoing::Reset);
                        backlog.extend(current(app.clone()).await);
                    }
                },
                Err(RecvError::Closed) => return,
            }
        }
    });
    ReceiverStream::new(rx).map(move |e| Ok(sse_event(&stream_app, &e)))
}

#[utoipa::path(get, path = "/api/jobs/events", tag = "jobs",
    responses((status = 200, content_type = "text/event-stream", body = JobEvent,
        description = "`state` and `progress` events of every job, each with an id; sent \
            `Last-Event-ID`, the stream first replays the events after it, or sends `reset` \
            when they are no longer kept")))]
pub async fn all_events(
    State(app): AppState,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    Sse::new(event_stream(app, None, last_event_id(&headers))).keep_alive(KeepAlive::default())
}

#[utoipa::path(get, path = "/api/jobs/{id}/events", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, content_type = "text/event-stream", body = JobEvent,
        description = "the job's current state, then its events; ends when the job finishes"),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn job_events(
    State(app): AppState,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    app.blocking(move |a| jobs::get_job(&a.db, id)).await?;
    let stream = event_stream(app, Some(id), last_event_id(&headers));
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
