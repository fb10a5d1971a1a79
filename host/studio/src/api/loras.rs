//! Routes for the LoRAs chosen per project, per bible character and per shot ([`crate::loras`]):
//! each scope's list is read with GET and replaced whole with PUT (an empty list clears it);
//! `GET /api/shots/{id}/loras/applied` shows what a generation of the shot applies after the
//! precedence rule. LoRA assets themselves are imported like other assets (`POST /api/assets`).

use super::error::{ApiResult, Json, Path, Query};
use crate::app::App;
use crate::assets::LoraTarget;
use crate::loras::{self, AppliedLora, ChosenLora, LoraChoice, Scope};
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Deserialize;
use std::sync::Arc;
use utoipa::IntoParams;

type AppState = State<Arc<App>>;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(
            "/api/projects/{id}/loras",
            get(project_loras).put(set_project_loras),
        )
        .route(
            "/api/storyboards/{id}/characters/{character}/loras",
            get(character_loras).put(set_character_loras),
        )
        .route("/api/shots/{id}/loras", get(shot_loras).put(set_shot_loras))
        .route("/api/shots/{id}/loras/applied", get(applied_loras))
}

async fn list(app: Arc<App>, scope: Scope) -> ApiResult<Json<Vec<ChosenLora>>> {
    Ok(Json(
        app.blocking(move |a| loras::list(&a.db, &scope)).await?,
    ))
}

async fn set(
    app: Arc<App>,
    scope: Scope,
    choices: Vec<LoraChoice>,
) -> ApiResult<Json<Vec<ChosenLora>>> {
    Ok(Json(
        app.blocking(move |a| loras::set(&a.db, &scope, &choices))
            .await?,
    ))
}

#[utoipa::path(get, path = "/api/projects/{id}/loras", tag = "loras", params(("id" = i64, Path)),
    responses((status = 200, body = [ChosenLora]), (status = 404, body = super::error::ErrorBody)))]
pub async fn project_loras(
    State(app): AppState,
    Path(id): Path<i64>,
) -> ApiResult<Json<Vec<ChosenLora>>> {
    list(app, Scope::Project(id)).await
}

#[utoipa::path(put, path = "/api/projects/{id}/loras", tag = "loras", params(("id" = i64, Path)),
    request_body = [LoraChoice],
    responses((status = 200, body = [ChosenLora]), (status = 404, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)))]
pub async fn set_project_loras(
    State(app): AppState,
    Path(id): Path<i64>,
    Json(choices): Json<Vec<LoraChoice>>,
) -> ApiResult<Json<Vec<ChosenLora>>> {
    set(app, Scope::Project(id), choices).await
}

#[utoipa::path(get, path = "/api/storyboards/{id}/characters/{character}/loras", tag = "loras",
    params(("id" = i64, Path), ("character" = String, Path, description = "bible character id")),
    responses((status = 200, body = [ChosenLora]), (status = 404, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)))]
pub async fn character_loras(
    State(app): AppState,
    Path((storyboard_id, character_id)): Path<(i64, String)>,
) -> ApiResult<Json<Vec<ChosenLora>>> {
    let scope = Scope::Character {
        storyboard_id,
        character_id,
    };
    list(app, scope).await
}

#[utoipa::path(put, path = "/api/storyboards/{id}/characters/{character}/loras", tag = "loras",
    params(("id" = i64, Path), ("character" = String, Path, description = "bible character id")),
    request_body = [LoraChoice],
    responses((status = 200, body = [ChosenLora]), (status = 404, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)))]
pub async fn set_character_loras(
    State(app): AppState,
    Path((storyboard_id, character_id)): Path<(i64, String)>,
    Json(choices): Json<Vec<LoraChoice>>,
) -> ApiResult<Json<Vec<ChosenLora>>> {
    let scope = Scope::Character {
        storyboard_id,
        character_id,
    };
    set(app, scope, choices).await
}

#[utoipa::path(get, path = "/api/shots/{id}/loras", tag = "loras", params(("id" = i64, Path)),
    responses((status = 200, body = [ChosenLora]), (status = 404, body = super::error::ErrorBody)))]
pub async fn shot_loras(
    State(app): AppState,
    Path(id): Path<i64>,
) -> ApiResult<Json<Vec<ChosenLora>>> {
    list(app, Scope::Shot(id)).await
}

#[utoipa::path(put, path = "/api/shots/{id}/loras", tag = "loras", params(("id" = i64, Path)),
    request_body = [LoraChoice],
    responses((status = 200, body = [ChosenLora]), (status = 404, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)))]
pub async fn set_shot_loras(
    State(app): AppState,
    Path(id): Path<i64>,
    Json(choices): Json<Vec<LoraChoice>>,
) -> ApiResult<Json<Vec<ChosenLora>>> {
    set(app, Scope::Shot(id), choices).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AppliedParams {
    /// `video` (the shot's generation, the default) or `image` (its keyframe).
    pub target: Option<LoraTarget>,
}

#[utoipa::path(get, path = "/api/shots/{id}/loras/applied", tag = "loras",
    params(("id" = i64, Path), AppliedParams),
    responses((status = 200, body = [AppliedLora], description = "project's, characters', shot's; \
        the more specific choice of one asset wins"),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn applied_loras(
    State(app): AppState,
    Path(id): Path<i64>,
    Query(params): Query<AppliedParams>,
) -> ApiResult<Json<Vec<AppliedLora>>> {
    let target = params.target.unwrap_or(LoraTarget::Video);
    Ok(Json(
        app.blocking(move |a| loras::for_shot(a, id, target))
            .await?,
    ))
}
