//! Routes for character looks: list a storyboard's, choose one. Looks are made by `look` jobs
//! and keyframes by `keyframe` jobs (`POST /api/jobs`); a shot shows its keyframe.

use super::error::{ApiResult, Json, Path};
use crate::app::App;
use crate::keyframes::{self, Look};
use axum::Router;
use axum::extract::State;
use axum::routing::{get, patch};
use serde::Deserialize;
use std::sync::Arc;
use utoipa::ToSchema;

type AppState = State<Arc<App>>;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/storyboards/{id}/looks", get(list_looks))
        .route("/api/looks/{id}", patch(update_look))
}

#[utoipa::path(get, path = "/api/storyboards/{id}/looks", tag = "looks",
    params(("id" = i64, Path)),
    responses((status = 200, body = [Look]), (status = 404, body = super::error::ErrorBody)))]
pub async fn list_looks(State(app): AppState, Path(id): Path<i64>) -> ApiResult<Json<Vec<Look>>> {
    Ok(Json(
        app.blocking(move |a| keyframes::list_looks(&a.db, id))
            .await?,
    ))
}

/// `{"chosen": true}` makes the look its character's chosen one.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LookFields {
    pub chosen: bool,
}

#[utoipa::path(patch, path = "/api/looks/{id}", tag = "looks", params(("id" = i64, Path)),
    request_body = LookFields,
    responses((status = 200, body = Look), (status = 404, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)))]
pub async fn update_look(
    State(app): AppState,
    Path(id): Path<i64>,
    Json(body): Json<LookFields>,
) -> ApiResult<Json<Look>> {
    if !body.chosen {
        return Err(crate::error::StudioError::Invalid(
            "a look is unchosen by choosing another: send {\"chosen\": true} for the one to use"
                .into(),
        )
        .into());
    }
    Ok(Json(
        app.blocking(move |a| keyframes::choose_look(&a.db, id))
            .await?,
    ))
}
