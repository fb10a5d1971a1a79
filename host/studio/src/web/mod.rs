//! Serves the browser UI: the static files under the repository's `web/` folder, embedded in
//! the binary at build time so that `videosdgx serve` needs nothing else on disk (no Node.js,
//! no CDN). This module only serves bytes; it never reads the database or decides who may
//! see a page (that is [`crate::auth`]'s job, layered around the whole router).

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use rust_embed::{EmbeddedFile, RustEmbed};

#[derive(RustEmbed)]
#[folder = "../../web/"]
struct WebFiles;

/// The page a browser gets for `/` and for any extension-less path (client-side routes).
const INDEX: &str = "index.html";
/// The sign-in page, also served (with status 401) to unauthenticated page loads.
pub const LOGIN: &str = "login.html";

/// Routes serving the embedded UI; merge them after the API routes so `/api/...` wins.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/login", axum::routing::get(login))
        .fallback(axum::routing::get(static_file).fallback(not_a_page_method))
}

/// Pages are only read; any other method answers in the API's error shape.
async fn not_a_page_method() -> Response {
    crate::auth::json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "the studio's pages and files are only read (GET)",
    )
}

async fn login(headers: HeaderMap) -> Response {
    serve(LOGIN, &headers)
}

async fn static_file(uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().trim_start_matches('/');
    if path.starts_with("api/") || path == "api" {
        return crate::auth::json_error(StatusCode::NOT_FOUND, "not_found", "no such API route");
    }
    if path.is_empty() || !path.rsplit('/').next().unwrap_or("").contains('.') {
        return serve(INDEX, &headers);
    }
    serve(path, &headers)
}

/// The embedded login page, for the auth layer's 401 answer to a page navigation.
pub fn login_page(status: StatusCode) -> Response {
    let mut response = serve(LOGIN, &HeaderMap::new());
    *response.status_mut() = status;
    response
}

/// Whether `path` (without leading `/`) names a file of the UI shell that the sign-in page
/// itself needs, and so must load before the visitor is authenticated.
pub fn is_login_asset(path: &str) -> bool {
    matches!(
        path,
        "login" | "login.html" | "app/login.js" | "app/app.css" | "favicon.svg"
    )
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(file) = WebFiles::get(path) else {
        return crate::auth::json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("the studio has no file /{path}"),
        );
    };
    let etag = etag(&file);
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Response::new(Body::from(file.data.into_owned()))
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(file.metadata.mimetype())
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    // Revalidate every time: files are small and an upgraded binary must never run stale JS.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; \
             style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

fn etag(file: &EmbeddedFile) -> String {
    format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..12]))
}

/// Names and sizes of the embedded files, for the page-weight check.
pub fn embedded_files() -> Vec<(String, usize)> {
    WebFiles::iter()
        .filter_map(|name| WebFiles::get(&name).map(|f| (name.to_string(), f.data.len())))
        .collect()
}
