//! The HTTP API under `/api`: one router per resource, merged here, plus the OpenAPI document
//! generated from the handlers' annotations. Handlers are thin: they parse, call the service
//! layer ([`App`]) and map its errors with [`error::ApiError`].

pub mod assets;
pub mod error;
pub mod generation;
pub mod hub;
pub mod jobs;
pub mod language;
pub mod looks;
pub mod loras;
pub mod plugins;
pub mod projects;
pub mod workers;

use crate::app::App;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::get;
use error::{ApiError, ApiResult, Json};
use serde::Serialize;
use std::sync::Arc;
use utoipa::{OpenApi, ToSchema};

/// Largest JSON request body.
pub const JSON_BODY_LIMIT: usize = 1024 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "VideosDGX studio API",
        description = "Projects, storyboards, shots, assets and jobs."
    ),
    paths(
        health,
        projects::list_projects,
        projects::create_project,
        projects::get_project,
        projects::update_project,
        projects::delete_project,
        projects::list_storyboards,
        projects::create_storyboard,
        projects::get_storyboard,
        projects::update_storyboard,
        projects::delete_storyboard,
        projects::list_shots,
        projects::create_shot,
        projects::reorder_shots,
        projects::get_shot,
        projects::update_shot,
        projects::delete_shot,
        assets::upload,
        assets::get_asset,
        assets::update_asset,
        assets::delete_asset,
        assets::download,
        assets::search,
        jobs::list_jobs,
        jobs::submit_job,
        jobs::get_job,
        jobs::cancel_job,
        jobs::retry_job,
        jobs::all_events,
        jobs::job_events,
        jobs::list_gpus,
        generation::list_models,
        generation::list_presets,
        generation::get_generation,
        generation::list_finishing_models,
        language::get_language_model,
        language::choose_language_model,
        looks::list_looks,
        looks::update_look,
        loras::project_loras,
        loras::set_project_loras,
        loras::character_loras,
        loras::set_character_loras,
        loras::shot_loras,
        loras::set_shot_loras,
        loras::applied_loras,
        plugins::list_plugins,
        plugins::inspect_plugin,
        plugins::install_plugin,
        plugins::update_plugin,
        plugins::uninstall_plugin,
        plugins::audit_log,
        workers::register,
        workers::leave,
        workers::heartbeat,
        workers::next_task,
        workers::progress,
        workers::task_file,
        workers::upload_output,
        workers::outcome,
        hub::hub,
    ),
    components(schemas(error::ErrorBody, crate::jobs::JobEvent))
)]
pub struct ApiDoc;

/// Every `/api` route, without state. Other routers (plugins, web UI) are merged beside it in
/// [`crate::server::router`].
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/health", get(health))
        .route("/api/openapi.json", get(openapi))
        .merge(projects::routes())
        .merge(assets::routes())
        .merge(jobs::routes())
        .merge(generation::routes())
        .merge(language::routes())
        .merge(looks::routes())
        .merge(loras::routes())
        .merge(workers::routes())
        .merge(hub::routes())
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        // Components are larger than JSON bodies: merged after the JSON limit, with their own.
        .merge(plugins::routes())
}

/// Unknown `/api` paths answer in the API's error shape.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API endpoint")
}

/// A known path called with a method it does not serve (axum keeps the `Allow` header).
pub async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("this endpoint does not accept {method}; the Allow header lists what it does"),
    )
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
    pub schema_version: i64,
    pub job_kinds: Vec<&'static str>,
}

#[utoipa::path(get, path = "/api/health", tag = "studio",
    responses((status = 200, body = Health), (status = 503, body = error::ErrorBody)))]
pub async fn health(State(app): State<Arc<App>>) -> ApiResult<Json<Health>> {
    // A trivial query proves the database answers.
    app.blocking(|a| {
        a.db.with(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
    })
    .await?;
    Ok(Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        schema_version: crate::db::SCHEMA_VERSION,
        job_kinds: app.jobs.kinds(),
    }))
}

async fn openapi() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}
