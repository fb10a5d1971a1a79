//! The API's error response `{"error": {"code", "message"}}` and extractors that turn axum's own
//! rejections (bad JSON, wrong types, bad path or query values, malformed multipart forms,
//! bodies over the limit, a missing content type) into that same shape. Handlers use these
//! extractors, never axum's, so no rejection reaches a client as plain text.

use crate::error::StudioError;
use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// Body of every error response.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable (e.g. `not_found`, `malformed_json`, `storage_full`).
    pub code: String,
    /// Readable explanation naming what is wrong.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<StudioError> for ApiError {
    fn from(err: StudioError) -> Self {
        let status = match &err {
            StudioError::NotFound { .. } => StatusCode::NOT_FOUND,
            StudioError::Invalid(_) | StudioError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            StudioError::NotMedia(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            StudioError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            StudioError::StorageFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            StudioError::DatabaseBusy | StudioError::ReadOnly(_) => StatusCode::SERVICE_UNAVAILABLE,
            StudioError::Conflict(_) => StatusCode::CONFLICT,
            StudioError::SchemaTooNew { .. } | StudioError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        if status.is_server_error() {
            tracing::error!("request failed: {err:#}");
        }
        ApiError::new(status, err.code(), format!("{err:#}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

/// The answer to a body over the route's limit (`DefaultBodyLimit`), whichever extractor read it.
fn body_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "the request body is larger than this endpoint accepts",
    )
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let message = rejection.body_text();
        match rejection {
            JsonRejection::JsonDataError(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
            }
            JsonRejection::JsonSyntaxError(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", message)
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a request with `Content-Type: application/json`",
            ),
            _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => body_too_large(),
            _ => ApiError::new(rejection.status(), "bad_request", message),
        }
    }
}

impl From<MultipartRejection> for ApiError {
    fn from(_: MultipartRejection) -> Self {
        // Its one cause: the Content-Type has no usable `boundary` parameter.
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_multipart",
            "the `multipart/form-data` Content-Type names no boundary",
        )
    }
}

impl From<MultipartError> for ApiError {
    fn from(err: MultipartError) -> Self {
        if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return body_too_large();
        }
        // A body that stops mid-form is the client's fault (axum calls it a 500).
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_multipart",
            format!("malformed multipart form: {}", err.body_text()),
        )
    }
}

/// `axum::Json` whose rejections use the API error shape.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T> FromRequest<S> for Json<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
{
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Ok(Json(axum::Json::<T>::from_request(req, state).await?.0))
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` whose rejections use the API error shape.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T> FromRequestParts<S> for Path<T>
where
    axum::extract::Path<T>: FromRequestParts<S, Rejection = PathRejection>,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(p) => Ok(Path(p.0)),
            Err(r) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_path",
                r.body_text(),
            )),
        }
    }
}

/// `axum::extract::Query` whose rejections use the API error shape.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T> FromRequestParts<S> for Query<T>
where
    axum::extract::Query<T>: FromRequestParts<S, Rejection = QueryRejection>,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(q) => Ok(Query(q.0)),
            Err(r) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                r.body_text(),
            )),
        }
    }
}

/// `axum::extract::Multipart` whose rejections use the API error shape: a request that is not
/// `multipart/form-data` at all is 415, one without a boundary 400. Errors while reading fields
/// convert with `?` (413 past the body limit, 400 for a malformed form).
pub struct Multipart(pub axum::extract::Multipart);

impl<S: Send + Sync> FromRequest<S> for Multipart {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let multipart = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_multipart);
        if !multipart {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a `multipart/form-data` request",
            ));
        }
        Ok(Multipart(
            axum::extract::Multipart::from_request(req, state).await?,
        ))
    }
}

/// Whether a Content-Type value names `multipart/form-data` (any case, any parameters).
pub fn is_multipart(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("multipart/form-data"))
}

pub type ApiResult<T> = Result<T, ApiError>;
