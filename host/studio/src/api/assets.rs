//! Routes for the asset library: upload (raw body or multipart), metadata, download with HTTP
//! Range, and search. Upload bodies are streamed to a staging file and counted against the
//! configured limit; they are never held in memory whole.

use super::error::{ApiError, ApiResult, Json, Multipart, Path, Query, is_multipart};
use crate::app::App;
use crate::assets::{self, Asset, NewAsset, SearchHit, SearchQuery, Staged};
use crate::error::{Result, StudioError};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use utoipa::{IntoParams, ToSchema};

type AppState = State<Arc<App>>;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        // The upload handler counts bytes itself against `max_upload_bytes`.
        .route(
            "/api/assets",
            post(upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/assets/search", get(search))
        .route(
            "/api/assets/{id}",
            get(get_asset).patch(update_asset).delete(delete_asset),
        )
        .route("/api/assets/{id}/file", get(download))
}

/// Metadata of an upload, given in the query string (raw body) or as form fields (multipart).
#[derive(Debug, Default, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadMeta {
    /// File name to record (required for raw uploads; multipart uses the part's file name).
    pub name: Option<String>,
    pub project_id: Option<i64>,
    /// Comma-separated tags.
    pub tags: Option<String>,
    pub caption: Option<String>,
}

impl UploadMeta {
    fn set_field(&mut self, field: &str, value: String) -> Result<()> {
        match field {
            "name" => self.name = Some(value),
            "tags" => self.tags = Some(value),
            "caption" => self.caption = Some(value),
            "project_id" => {
                self.project_id = Some(value.trim().parse().map_err(|_| {
                    StudioError::Invalid(format!("project_id {value:?} is not an integer"))
                })?)
            }
            other => {
                return Err(StudioError::Invalid(format!(
                    "unknown form field {other:?}"
                )));
            }
        }
        Ok(())
    }

    fn into_new_asset(self) -> Result<NewAsset> {
        let name = self.name.ok_or_else(|| {
            StudioError::Invalid("a file name is required (`name` query parameter)".into())
        })?;
        let tags: Vec<&str> = self.tags.as_deref().unwrap_or("").split(',').collect();
        Ok(NewAsset {
            name,
            project_id: self.project_id,
            caption: self.caption.unwrap_or_default(),
            tags: assets::normalized_tags(&tags)?,
            ..Default::default()
        })
    }
}

/// Streams chunks from `chunks` into a staging file on a blocking thread.
fn stage_writer(
    app: &Arc<App>,
) -> (
    mpsc::Sender<std::result::Result<Bytes, String>>,
    tokio::task::JoinHandle<Result<Staged>>,
) {
    let (tx, mut rx) = mpsc::channel::<std::result::Result<Bytes, String>>(16);
    let app = app.clone();
    let handle = tokio::task::spawn_blocking(move || {
        let mut staged = app.assets.stage(Some(app.config.max_upload_bytes))?;
        while let Some(chunk) = rx.blocking_recv() {
            let chunk =
                chunk.map_err(|e| StudioError::Invalid(format!("upload interrupted: {e}")))?;
            staged.write(&chunk)?;
        }
        Ok(staged)
    });
    (tx, handle)
}

async fn join_writer(handle: tokio::task::JoinHandle<Result<Staged>>) -> Result<Staged> {
    handle
        .await
        .map_err(|e| StudioError::Internal(anyhow::anyhow!("upload task failed: {e}")))?
}

/// Refuses a body whose declared length is over `limit` before reading any of it.
pub(super) fn refuse_declared_oversize(request: &Request, limit: u64) -> Result<()> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > limit => Err(StudioError::TooLarge { limit }),
        _ => Ok(()),
    }
}

/// Sends `stream` to the writer. When the writer stops early (the upload is too large, the disk
/// is full) the rest of the body is still read and dropped: a client that is still sending then
/// receives the error response, where an unread body would have the connection reset under it.
/// The body is bounded by the upload limit, so the draining is too.
async fn feed<S, E>(tx: &mpsc::Sender<std::result::Result<Bytes, String>>, stream: S)
where
    S: tokio_stream::Stream<Item = std::result::Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let mut stream = std::pin::pin!(stream);
    let mut writing = true;
    while let Some(chunk) = stream.next().await {
        let failed = chunk.is_err();
        if writing && tx.send(chunk.map_err(|e| e.to_string())).await.is_err() {
            writing = false;
        }
        if failed {
            return;
        }
    }
}

#[utoipa::path(post, path = "/api/assets", tag = "assets", params(UploadMeta),
    request_body(content = Vec<u8>, description = "the file as the raw body, or multipart/form-data \
        with a `file` part and optional `project_id`, `tags`, `caption` fields; a `.safetensors` file \
        is imported as a LoRA (kind `lora`) when the engine reads it as one",
        content_type = "application/octet-stream"),
    responses(
        (status = 201, body = Asset, description = "stored"),
        (status = 200, body = Asset, description = "the same content was already in the project"),
        (status = 413, body = super::error::ErrorBody), (status = 415, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody), (status = 507, body = super::error::ErrorBody)))]
pub async fn upload(
    State(app): AppState,
    Query(mut meta): Query<UploadMeta>,
    request: Request,
) -> ApiResult<(StatusCode, Json<Asset>)> {
    let limit = app.config.max_upload_bytes;
    refuse_declared_oversize(&request, limit)?;
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_multipart);
    let staged = if multipart {
        let Multipart(mut form) = Multipart::from_request(request, &()).await?;
        let mut staged = None;
        while let Some(field) = form.next_field().await? {
            let field_name = field.name().unwrap_or_default().to_owned();
            if field_name == "file" {
                if meta.name.is_none() {
                    meta.name = field.file_name().map(str::to_owned);
                }
                let (tx, handle) = stage_writer(&app);
                feed(&tx, field).await;
                drop(tx);
                staged = Some(join_writer(handle).await?);
            } else {
                let value = field.text().await?;
                meta.set_field(&field_name, value)?;
            }
        }
        staged.ok_or_else(|| StudioError::Invalid("multipart upload has no `file` part".into()))?
    } else {
        let (tx, handle) = stage_writer(&app);
        feed(&tx, request.into_body().into_data_stream()).await;
        drop(tx);
        join_writer(handle).await?
    };
    let new_asset = meta.into_new_asset()?;
    let (asset, created) = app
        .blocking(move |a| a.assets.import_staged(&a.db, staged, &new_asset))
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(asset)))
}

#[utoipa::path(get, path = "/api/assets/{id}", tag = "assets", params(("id" = i64, Path)),
    responses((status = 200, body = Asset), (status = 404, body = super::error::ErrorBody)))]
pub async fn get_asset(State(app): AppState, Path(id): Path<i64>) -> ApiResult<Json<Asset>> {
    Ok(Json(
        app.blocking(move |a| assets::get_asset(&a.db, id)).await?,
    ))
}

/// Caption and tags to set; absent fields are kept.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssetMetadata {
    pub caption: Option<String>,
    pub tags: Option<Vec<String>>,
}

#[utoipa::path(patch, path = "/api/assets/{id}", tag = "assets", params(("id" = i64, Path)),
    request_body = AssetMetadata,
    responses((status = 200, body = Asset), (status = 404, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)))]
pub async fn update_asset(
    State(app): AppState,
    Path(id): Path<i64>,
    Json(meta): Json<AssetMetadata>,
) -> ApiResult<Json<Asset>> {
    Ok(Json(
        app.blocking(move |a| {
            a.assets
                .update_metadata(&a.db, id, meta.caption.as_deref(), meta.tags.as_deref())
        })
        .await?,
    ))
}

#[utoipa::path(delete, path = "/api/assets/{id}", tag = "assets", params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody, description = "in use (a chosen LoRA, a \
            take, a reference, a keyframe, a look); the message says where")))]
pub async fn delete_asset(State(app): AppState, Path(id): Path<i64>) -> ApiResult<StatusCode> {
    app.blocking(move |a| a.assets.delete(&a.db, id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/assets/{id}/file", tag = "assets", params(("id" = i64, Path)),
    responses((status = 200, description = "the file"), (status = 206, description = "the requested range"),
        (status = 404, body = super::error::ErrorBody),
        (status = 416, body = super::error::ErrorBody, description = "range not satisfiable")))]
pub async fn download(
    State(app): AppState,
    Path(id): Path<i64>,
    request: Request,
) -> ApiResult<Response> {
    let asset = app.blocking(move |a| assets::get_asset(&a.db, id)).await?;
    let path = app.assets.file_of(&asset);
    if !path.is_file() {
        return Err(StudioError::Internal(anyhow::anyhow!(
            "the file of asset {id} ({}) is missing from the store",
            asset.sha256
        ))
        .into());
    }
    // ServeFile implements Range, If-Range and conditional requests.
    let served = tower_http::services::ServeFile::new(&path)
        .try_call(request)
        .await
        .map_err(StudioError::from)?;
    let mut response = served.map(Body::new).into_response();
    if let Some(refusal) = conditional_refusal(&response, asset.size_bytes) {
        return Ok(refusal);
    }
    if response.status().is_success() {
        let headers = response.headers_mut();
        if let Ok(mime) = HeaderValue::from_str(&asset.mime) {
            headers.insert(header::CONTENT_TYPE, mime);
        }
        // The name was checked at import; quotes are still escaped for the header syntax.
        let name = asset.original_name.replace(['"', '\\'], "_");
        if let Ok(value) = HeaderValue::from_str(&format!("inline; filename=\"{name}\"")) {
            headers.insert(header::CONTENT_DISPOSITION, value);
        }
    }
    Ok(response)
}

/// `ServeFile`'s own refusals (a range outside the file, a failed `If-Match`) come with an empty
/// body; they get the API's error shape instead, keeping `Content-Range: bytes */size`.
pub(crate) fn conditional_refusal(response: &Response, size: u64) -> Option<Response> {
    let error = match response.status() {
        StatusCode::RANGE_NOT_SATISFIABLE => ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
            format!("the requested range is not within the file ({size} bytes)"),
        ),
        StatusCode::PRECONDITION_FAILED => ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            "the file does not match the request's If-Match or If-Unmodified-Since",
        ),
        _ => return None,
    };
    let mut refusal = error.into_response();
    if let Some(range) = response.headers().get(header::CONTENT_RANGE) {
        refusal
            .headers_mut()
            .insert(header::CONTENT_RANGE, range.clone());
    }
    Some(refusal)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    /// Words to find in prompt, caption and tags (all must match). Empty: newest first.
    #[serde(default)]
    pub q: String,
    /// image, video, audio or lora.
    pub kind: Option<String>,
    pub project_id: Option<i64>,
    /// Comma-separated tags that must all be present.
    pub tags: Option<String>,
    pub model: Option<String>,
    /// Created at or after (RFC 3339 or YYYY-MM-DD).
    pub since: Option<String>,
    /// Created at or before (RFC 3339 or YYYY-MM-DD).
    pub until: Option<String>,
    /// At most this many hits (default 20, max 1000).
    pub limit: Option<usize>,
    /// Hits to skip, for paging.
    pub offset: Option<usize>,
}

impl SearchParams {
    fn into_query(self) -> Result<SearchQuery> {
        let tags: Vec<&str> = self.tags.as_deref().unwrap_or("").split(',').collect();
        Ok(SearchQuery {
            text: self.q,
            kind: self.kind.as_deref().map(str::parse).transpose()?,
            project_id: self.project_id,
            tags: assets::normalized_tags(&tags)?,
            model: self.model,
            since: self
                .since
                .as_deref()
                .map(crate::db::parse_time)
                .transpose()?,
            until: self
                .until
                .as_deref()
                .map(crate::db::parse_time)
                .transpose()?,
            limit: self.limit.unwrap_or(20),
            offset: self.offset.unwrap_or(0),
        })
    }
}

#[utoipa::path(get, path = "/api/assets/search", tag = "assets", params(SearchParams),
    responses((status = 200, body = [SearchHit], description = "best first"),
        (status = 422, body = super::error::ErrorBody)))]
pub async fn search(
    State(app): AppState,
    Query(params): Query<SearchParams>,
) -> ApiResult<Json<Vec<SearchHit>>> {
    let query = params.into_query()?;
    Ok(Json(
        app.blocking(move |a| a.assets.search(&a.db, &query))
            .await?,
    ))
}
