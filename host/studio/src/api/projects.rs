//! Routes for projects, storyboards and shots. Handlers only translate HTTP to service calls.

use super::error::{ApiResult, Json, Path};
use crate::app::App;
use crate::projects::{self, Project, ProjectFields, Storyboard};
use crate::shots::{self, Shot, ShotFields};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use serde::Deserialize;
use std::sync::Arc;
use utoipa::ToSchema;

type AppState = State<Arc<App>>;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/projects", get(list_projects).post(create_project))
        .route(
            "/api/projects/{id}",
            get(get_project)
                .patch(update_project)
                .delete(delete_project),
        )
        .route(
            "/api/projects/{id}/storyboards",
            get(list_storyboards).post(create_storyboard),
        )
        .route(
            "/api/storyboards/{id}",
            get(get_storyboard)
                .patch(update_storyboard)
                .delete(delete_storyboard),
        )
        .route(
            "/api/storyboards/{id}/shots",
            get(list_shots).post(create_shot),
        )
        .route("/api/storyboards/{id}/shots/order", put(reorder_shots))
        .route(
            "/api/shots/{id}",
            get(get_shot).patch(update_shot).delete(delete_shot),
        )
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectName {
    pub name: String,
}

#[utoipa::path(get, path = "/api/projects", tag = "projects",
    responses((status = 200, body = [Project])))]
pub async fn list_projects(State(app): AppState) -> ApiResult<Json<Vec<Project>>> {
    Ok(Json(
        app.blocking(|a| projects::list_projects(&a.db)).await?,
    ))
}

#[utoipa::path(post, path = "/api/projects", tag = "projects", request_body = ProjectName,
    responses((status = 201, body = Project), (status = 422, body = super::error::ErrorBody)))]
pub async fn create_project(
    State(app): AppState,
    Json(body): Json<ProjectName>,
) -> ApiResult<(StatusCode, Json<Project>)> {
    let project = app
        .blocking(move |a| projects::create_project(&a.db, &body.name))
        .await?;
    Ok((StatusCode::CREATED, Json(project)))
}

#[utoipa::path(get, path = "/api/projects/{id}", tag = "projects", params(("id" = i64, Path)),
    responses((status = 200, body = Project), (status = 404, body = super::error::ErrorBody)))]
pub async fn get_project(State(app): AppState, Path(id): Path<i64>) -> ApiResult<Json<Project>> {
    Ok(Json(
        app.blocking(move |a| projects::get_project(&a.db, id))
            .await?,
    ))
}

#[utoipa::path(patch, path = "/api/projects/{id}", tag = "projects", params(("id" = i64, Path)),
    request_body = ProjectFields,
    responses((status = 200, body = Project), (status = 404, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)))]
pub async fn update_project(
    State(app): AppState,
    Path(id): Path<i64>,
    Json(body): Json<ProjectFields>,
) -> ApiResult<Json<Project>> {
    Ok(Json(
        app.blocking(move |a| projects::update_project(&a.db, id, &body))
            .await?,
    ))
}

#[utoipa::path(delete, path = "/api/projects/{id}", tag = "projects", params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
pub async fn delete_project(State(app): AppState, Path(id): Path<i64>) -> ApiResult<StatusCode> {
    app.blocking(move |a| projects::delete_project(&a.db, id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StoryboardFields {
    pub title: Option<String>,
    pub description: Option<String>,
}

#[utoipa::path(get, path = "/api/projects/{id}/storyboards", tag = "storyboards",
    params(("id" = i64, Path, description = "project id")),
    responses((status = 200, body = [Storyboard]), (status = 404, body = super::error::ErrorBody)))]
pub async fn list_storyboards(
    State(app): AppState,
    Path(id): Path<i64>,
) -> ApiResult<Json<Vec<Storyboard>>> {
    Ok(Json(
        app.blocking(move |a| projects::list_storyboards(&a.db, id))
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/projects/{id}/storyboards", tag = "storyboards",
    params(("id" = i64, Path, description = "project id")), request_body = StoryboardFields,
    responses((status = 201, body = Storyboard), (status = 404, body = super::error::ErrorBody)))]
pub async fn create_storyboard(
    State(app): AppState,
    Path(id): Path<i64>,
    Json(body): Json<StoryboardFields>,
) -> ApiResult<(StatusCode, Json<Storyboard>)> {
    let board = app
        .blocking(move |a| {
            let title = body.title.as_deref().unwrap_or("Storyboard");
            projects::create_storyboard(&a.db, id, title, body.description.as_deref().unwrap_or(""))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(board)))
}

#[utoipa::path(get, path = "/api/storyboards/{id}", tag = "storyboards", params(("id" = i64, Path)),
    responses((status = 200, body = Storyboard), (status = 404, body = super::error::ErrorBody)))]
pub async fn get_storyboard(
    State(app): AppState,
    Path(id): Path<i64>,
) -> ApiResult<Json<Storyboard>> {
    Ok(Json(
        app.blocking(move |a| projects::get_storyboard(&a.db, id))
            .await?,
    ))
}

#[utoipa::path(patch, path = "/api/storyboards/{id}", tag = "storyboards",
    params(("id" = i64, Path)), request_body = StoryboardFields,
    responses((status = 200, body = Storyboard), (status = 404, body = super::error::ErrorBody)))]
pub async fn update_storyboard(
    State(app): AppState,
    Path(id): Path<i64>,
    Json(body): Json<StoryboardFields>,
) -> ApiResult<Json<Storyboard>> {
    Ok(Json(
        app.blocking(move |a| {
            projects::update_storyboard(
                &a.db,
                id,
                body.title.as_deref(),
                body.description.as_deref(),
            )
        })
        .await?,
    ))
}

#[utoipa::path(delete, path = "/api/storyboards/{id}", tag = "storyboards",
    params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
pub async fn delete_storyboard(State(app): AppState, Path(id): Path<i64>) -> ApiResult<StatusCode> {
    app.blocking(move |a| projects::delete_storyboard(&a.db, id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/storyboards/{id}/shots", tag = "shots",
    params(("id" = i64, Path, description = "storyboard id")),
    responses((status = 200, body = [Shot], description = "in storyboard order"),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn list_shots(State(app): AppState, Path(id): Path<i64>) -> ApiResult<Json<Vec<Shot>>> {
    Ok(Json(
        app.blocking(move |a| shots::list_shots(&a.db, id)).await?,
    ))
}

#[utoipa::path(post, path = "/api/storyboards/{id}/shots", tag = "shots",
    params(("id" = i64, Path, description = "storyboard id")), request_body = ShotFields,
    responses((status = 201, body = Shot, description = "appended at the end"),
        (status = 404, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub async fn create_shot(
    State(app): AppState,
    Path(id): Path<i64>,
    Json(body): Json<ShotFields>,
) -> ApiResult<(StatusCode, Json<Shot>)> {
    let shot = app
        .blocking(move |a| shots::create_shot(&a.db, id, &body))
        .await?;
    Ok((StatusCode::CREATED, Json(shot)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShotOrder {
    /// Every shot id of the storyboard, in the new order.
    pub order: Vec<i64>,
}

#[utoipa::path(put, path = "/api/storyboards/{id}/shots/order", tag = "shots",
    params(("id" = i64, Path, description = "storyboard id")), request_body = ShotOrder,
    responses((status = 200, body = [Shot]), (status = 422, body = super::error::ErrorBody)))]
pub async fn reorder_shots(
    State(app): AppState,
    Path(id): Path<i64>,
    Json(body): Json<ShotOrder>,
) -> ApiResult<Json<Vec<Shot>>> {
    Ok(Json(
        app.blocking(move |a| shots::reorder_shots(&a.db, id, &body.order))
            .await?,
    ))
}

#[utoipa::path(get, path = "/api/shots/{id}", tag = "shots", params(("id" = i64, Path)),
    responses((status = 200, body = Shot), (status = 404, body = super::error::ErrorBody)))]
pub async fn get_shot(State(app): AppState, Path(id): Path<i64>) -> ApiResult<Json<Shot>> {
    Ok(Json(
        app.blocking(move |a| shots::get_shot(&a.db, id)).await?,
    ))
}

#[utoipa::path(patch, path = "/api/shots/{id}", tag = "shots", params(("id" = i64, Path)),
    request_body = ShotFields,
    responses((status = 200, body = Shot), (status = 404, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)))]
pub async fn update_shot(
    State(app): AppState,
    Path(id): Path<i64>,
    Json(body): Json<ShotFields>,
) -> ApiResult<Json<Shot>> {
    Ok(Json(
        app.blocking(move |a| shots::update_shot(&a.db, id, &body))
            .await?,
    ))
}

#[utoipa::path(delete, path = "/api/shots/{id}", tag = "shots", params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
pub async fn delete_shot(State(app): AppState, Path(id): Path<i64>) -> ApiResult<StatusCode> {
    app.blocking(move |a| shots::delete_shot(&a.db, id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
