//! Routes for what generation needs and leaves behind: the installed models (finishing models
//! too) and the recorded generations (every parameter of an output, to reproduce it).

use super::error::{ApiResult, Json, Path};
use crate::app::App;
use crate::finishing::{self, FinishingKind, FinishingModel};
use crate::generation::{self, Generation};
use crate::models::{self, Role};
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::ToSchema;
use videosdgx_engine::hub::ModelKind;
use videosdgx_engine::pipelines::Capabilities;

type AppState = State<Arc<App>>;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/models", get(list_models))
        .route("/api/presets", get(list_presets))
        .route("/api/generations/{id}", get(get_generation))
        .route("/api/finishing/models", get(list_finishing_models))
}

/// The finishing models installed under `models/finishing/`, and what to install for a kind
/// that is missing.
#[derive(Debug, Serialize, ToSchema)]
pub struct FinishingModels {
    pub models: Vec<FinishingModel>,
    /// What to put in `models/finishing/` when no upscaler is there.
    pub upscaler_help: Option<&'static str>,
    /// What to put there when no RIFE flownet is.
    pub interpolator_help: Option<&'static str>,
}

#[utoipa::path(get, path = "/api/finishing/models", tag = "generation",
    responses((status = 200, body = FinishingModels)))]
pub async fn list_finishing_models(State(app): AppState) -> ApiResult<Json<FinishingModels>> {
    let models = app
        .blocking(|a| finishing::list_finishing_models(a.data_dir()))
        .await?;
    let missing = |kind: FinishingKind, help: &'static str| {
        (!models.iter().any(|m| m.kind == kind)).then_some(help)
    };
    Ok(Json(FinishingModels {
        upscaler_help: missing(FinishingKind::Upscaler, finishing::NO_UPSCALER),
        interpolator_help: missing(FinishingKind::Interpolator, finishing::NO_INTERPOLATOR),
        models,
    }))
}

/// A named schedule for distilled models (a render setting's `preset`).
#[derive(Debug, Serialize, ToSchema)]
pub struct PresetInfo {
    pub name: &'static str,
    pub description: &'static str,
    pub steps: usize,
    pub guidance: f64,
}

#[utoipa::path(get, path = "/api/presets", tag = "generation",
    responses((status = 200, body = [PresetInfo])))]
pub async fn list_presets() -> Json<Vec<PresetInfo>> {
    Json(
        videosdgx_engine::presets::PRESETS
            .iter()
            .map(|p| PresetInfo {
                name: p.name,
                description: p.description,
                steps: p.steps(),
                guidance: p.guidance,
            })
            .collect(),
    )
}

/// A model directory under the data directory's `models/`.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstalledModel {
    /// What a shot's `model` field (pipelines) or the language model setting names, e.g.
    /// `Wan-AI/Wan2.1-T2V-1.3B-Diffusers`.
    pub name: String,
    pub size_bytes: u64,
    /// `pipeline`, `language` or `other`.
    #[schema(value_type = String)]
    pub kind: ModelKind,
    /// What it is for: `video` (a shot's model), `image` (keyframes, character looks),
    /// `language` or `other`.
    pub role: Role,
    /// For pipelines the engine runs: what they make (`output`: `{kind: video, fps}` or
    /// `{kind: image}`) and whether they need, may take or cannot take a start image
    /// (`start_image`: `required`, `optional`, `unsupported`).
    #[schema(value_type = Option<Object>)]
    pub capabilities: Option<Capabilities>,
    /// A language model's architecture, e.g. `Qwen3ForCausalLM`.
    pub architecture: Option<String>,
    /// `_class_name` of its `model_index.json`, e.g. `WanPipeline`.
    pub pipeline_class: Option<String>,
    /// Component folder -> class.
    pub components: BTreeMap<String, String>,
    /// The hub repository it was pulled from, if pulled.
    pub repo_id: Option<String>,
}

#[utoipa::path(get, path = "/api/models", tag = "generation",
    responses((status = 200, body = [InstalledModel])))]
pub async fn list_models(State(app): AppState) -> ApiResult<Json<Vec<InstalledModel>>> {
    let models = app.blocking(|a| models::list_models(a.data_dir())).await?;
    Ok(Json(
        models
            .into_iter()
            .map(|m| InstalledModel {
                role: Role::of(&m),
                capabilities: m.capabilities,
                name: m.name,
                size_bytes: m.size_bytes,
                kind: m.kind,
                architecture: m.architecture,
                pipeline_class: m.pipeline_class,
                components: m.components,
                repo_id: m.source.map(|s| s.repo_id),
            })
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/generations/{id}", tag = "generation", params(("id" = i64, Path)),
    responses((status = 200, body = Generation), (status = 404, body = super::error::ErrorBody)))]
pub async fn get_generation(
    State(app): AppState,
    Path(id): Path<i64>,
) -> ApiResult<Json<Generation>> {
    Ok(Json(
        app.blocking(move |a| generation::get_generation(&a.db, id))
            .await?,
    ))
}
