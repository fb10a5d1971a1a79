//! Routes for plugins: list, inspect a component before installing it (what it asks for),
//! install with the capabilities the user granted, enable/disable, uninstall, and the audit log
//! of their host calls. Components arrive as multipart forms (`component` + `manifest` files).

use super::error::{ApiError, ApiResult, Json, Multipart, Path, Query};
use crate::app::App;
use crate::error::StudioError;
use crate::plugins::registry::{self, AuditRecord, Inspection, InstalledPlugin};
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, patch, post};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};
use videosdgx_plugin_host::Capability;

/// Largest upload of a component and its manifest.
pub const COMPONENT_LIMIT: usize = 64 << 20;

type AppState = State<Arc<App>>;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/plugins", get(list_plugins).post(install_plugin))
        .route("/api/plugins/inspect", post(inspect_plugin))
        .route("/api/plugins/audit", get(audit_log))
        .route(
            "/api/plugins/{id}",
            patch(update_plugin).delete(uninstall_plugin),
        )
        .layer(DefaultBodyLimit::max(COMPONENT_LIMIT))
}

/// A plugin upload: the component, its manifest and (for install) the granted capabilities.
struct Upload {
    component: Vec<u8>,
    manifest: String,
    grants: Vec<Capability>,
}

async fn read_upload(Multipart(mut form): Multipart) -> Result<Upload, ApiError> {
    let (mut component, mut manifest, mut grants) = (None, None, Vec::new());
    while let Some(field) = form.next_field().await? {
        let name = field.name().unwrap_or_default().to_owned();
        let bytes = field.bytes().await?;
        match name.as_str() {
            "component" => component = Some(bytes.to_vec()),
            "manifest" => {
                manifest =
                    Some(String::from_utf8(bytes.to_vec()).map_err(|_| {
                        StudioError::Invalid("the manifest is not UTF-8 text".into())
                    })?)
            }
            "grant" => {
                let text = String::from_utf8_lossy(&bytes);
                grants.push(text.parse::<Capability>().map_err(StudioError::Invalid)?);
            }
            other => {
                return Err(StudioError::Invalid(format!(
                    "unexpected form field `{other}`; expected component, manifest and grant"
                ))
                .into());
            }
        }
    }
    Ok(Upload {
        component: component.ok_or_else(|| {
            StudioError::Invalid("the form has no `component` file (the .wasm)".into())
        })?,
        manifest: manifest.ok_or_else(|| {
            StudioError::Invalid("the form has no `manifest` file (plugin.toml)".into())
        })?,
        grants,
    })
}

#[utoipa::path(get, path = "/api/plugins", tag = "plugins",
    responses((status = 200, body = [InstalledPlugin])))]
pub async fn list_plugins(State(app): AppState) -> ApiResult<Json<Vec<InstalledPlugin>>> {
    Ok(Json(app.blocking(|a| registry::list(&a.db)).await?))
}

#[utoipa::path(post, path = "/api/plugins/inspect", tag = "plugins",
    request_body(content = String, content_type = "multipart/form-data",
        description = "`component` (the .wasm) and `manifest` (plugin.toml) files"),
    responses((status = 200, body = Inspection, description = "what the plugin is and asks for; nothing is installed"),
        (status = 422, body = super::error::ErrorBody, description = "the manifest or component is refused")))]
pub async fn inspect_plugin(State(app): AppState, form: Multipart) -> ApiResult<Json<Inspection>> {
    let upload = read_upload(form).await?;
    let (_, inspection) = app
        .blocking(move |a| {
            registry::inspect(&a.db, &a.plugins, &upload.manifest, &upload.component)
        })
        .await?;
    Ok(Json(inspection))
}

#[utoipa::path(post, path = "/api/plugins", tag = "plugins",
    request_body(content = String, content_type = "multipart/form-data",
        description = "`component` and `manifest` files, and one `grant` field per capability granted; \
            every requested capability not granted is refused"),
    responses((status = 201, body = InstalledPlugin),
        (status = 409, body = super::error::ErrorBody, description = "already installed"),
        (status = 422, body = super::error::ErrorBody, description = "refused: the message says why")))]
pub async fn install_plugin(
    State(app): AppState,
    form: Multipart,
) -> ApiResult<(StatusCode, Json<InstalledPlugin>)> {
    let upload = read_upload(form).await?;
    let installed = app
        .blocking(move |a| {
            let manifest = videosdgx_plugin_host::Manifest::parse(&upload.manifest)
                .map_err(|e| StudioError::Invalid(e.to_string()))?;
            if let Some(stray) = upload
                .grants
                .iter()
                .find(|c| !manifest.capabilities.contains(c))
            {
                return Err(StudioError::Invalid(format!(
                    "`{stray}` is not requested by plugin `{}`",
                    manifest.id
                )));
            }
            registry::install(
                &a.db,
                &a.plugins,
                &upload.manifest,
                &upload.component,
                |c| upload.grants.contains(&c),
            )
        })
        .await?;
    Ok((StatusCode::CREATED, Json(installed)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginUpdate {
    pub enabled: bool,
}

#[utoipa::path(patch, path = "/api/plugins/{id}", tag = "plugins", params(("id" = String, Path)),
    request_body = PluginUpdate,
    responses((status = 200, body = InstalledPlugin), (status = 404, body = super::error::ErrorBody)))]
pub async fn update_plugin(
    State(app): AppState,
    Path(id): Path<String>,
    Json(update): Json<PluginUpdate>,
) -> ApiResult<Json<InstalledPlugin>> {
    Ok(Json(
        app.blocking(move |a| registry::set_enabled(&a.db, &id, update.enabled))
            .await?,
    ))
}

#[utoipa::path(delete, path = "/api/plugins/{id}", tag = "plugins", params(("id" = String, Path)),
    responses((status = 204, description = "uninstalled; its audit records are kept"),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn uninstall_plugin(
    State(app): AppState,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    app.blocking(move |a| registry::uninstall(&a.db, &a.plugins, &id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Only this plugin's calls (empty: all plugins).
    pub plugin_id: Option<String>,
    /// At most this many, newest first (default 100, at most 10000).
    pub limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    pub entries: Vec<AuditRecord>,
}

#[utoipa::path(get, path = "/api/plugins/audit", tag = "plugins", params(AuditParams),
    responses((status = 200, body = AuditPage)))]
pub async fn audit_log(
    State(app): AppState,
    Query(params): Query<AuditParams>,
) -> ApiResult<Json<AuditPage>> {
    let limit = params.limit.unwrap_or(100).min(10_000);
    let plugin = params.plugin_id.filter(|p| !p.is_empty());
    let entries = app
        .blocking(move |a| registry::audit(&a.db, plugin.as_deref(), limit))
        .await?;
    Ok(Json(AuditPage { entries }))
}
