//! Routes for the studio's language model: which one answers text requests, and choosing
//! another among the installed ones.

use super::error::{ApiResult, Json};
use crate::app::App;
use crate::language::{self, LanguageModel};
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Deserialize;
use std::sync::Arc;
use utoipa::ToSchema;
use videosdgx_engine::pipelines::Quant;

type AppState = State<Arc<App>>;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route(
        "/api/language-model",
        get(get_language_model).put(choose_language_model),
    )
}

/// The configured language model: the chosen one, else the smallest installed. 422 names what
/// to install when there is none.
#[utoipa::path(get, path = "/api/language-model", tag = "generation",
    responses((status = 200, body = LanguageModel), (status = 422, body = super::error::ErrorBody)))]
pub async fn get_language_model(State(app): AppState) -> ApiResult<Json<LanguageModel>> {
    Ok(Json(app.blocking(language::configured).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChooseLanguageModel {
    /// An installed language model's name, e.g. `Qwen/Qwen3-4B`.
    pub name: String,
    /// The format its decoder is quantized to when it loads (`fp8`, `nvfp4`); as stored when
    /// absent.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "nvfp4")]
    pub quant: Option<Quant>,
}

/// Chooses the language model (persisted). 422 when `name` is not an installed language model.
#[utoipa::path(put, path = "/api/language-model", tag = "generation",
    request_body = ChooseLanguageModel,
    responses((status = 200, body = LanguageModel), (status = 422, body = super::error::ErrorBody)))]
pub async fn choose_language_model(
    State(app): AppState,
    Json(body): Json<ChooseLanguageModel>,
) -> ApiResult<Json<LanguageModel>> {
    Ok(Json(
        app.blocking(move |a| language::choose(a, &body.name, body.quant))
            .await?,
    ))
}
