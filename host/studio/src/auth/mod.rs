//! Remote access control for the whole HTTP surface (API and UI).
//!
//! On loopback the studio stays password-free; bound to any other address (or with
//! `require_auth`) every request needs either `Authorization: Bearer <access token>` or the
//! HttpOnly, SameSite=Strict session cookie that `POST /api/auth/login` hands out in exchange
//! for the token. Cookie-authenticated writes must also carry the session's CSRF token in
//! `X-CSRF-Token`. In every mode, browser writes from another origin are refused, and a
//! loopback server answers only to loopback host names (no DNS rebinding). This module decides
//! who may call; it never looks at what the call does.

mod limit;
mod store;

use limit::{LoginLimiter, MAX_FAILURES};
pub use store::{CredentialStore, SESSION_LIFETIME, TOKEN_PREFIX};

use crate::web;
use anyhow::Result;
use axum::{
    Json, Router,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;

/// Name of the browser session cookie.
pub const SESSION_COOKIE: &str = "vdgx_session";
/// Header carrying the CSRF token on cookie-authenticated writes.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The access policy of one running server.
#[derive(Clone)]
pub struct Auth {
    store: Arc<CredentialStore>,
    required: bool,
    failed_logins: Arc<LoginLimiter>,
}

/// What [`Auth::for_bind`] decided, for `serve` to tell the user.
pub struct AuthSetup {
    pub auth: Auth,
    /// Set when this start created the access token: print it once, it is never shown again.
    pub new_token: Option<String>,
}

/// Whether a server bound to `bind` must authenticate its callers.
pub fn auth_required_for(bind: IpAddr, require_auth: bool) -> bool {
    require_auth || !bind.is_loopback()
}

impl Auth {
    /// The policy for a server bound to `bind`; creates the access token on the first start
    /// that needs one.
    pub fn for_bind(data_dir: &Path, bind: IpAddr, require_auth: bool) -> Result<AuthSetup> {
        let store = CredentialStore::open(data_dir)?;
        let required = auth_required_for(bind, require_auth);
        let new_token = if required && !store.has_token() {
            Some(store.create_token()?)
        } else {
            None
        };
        Ok(AuthSetup {
            auth: Auth {
                store: Arc::new(store),
                required,
                failed_logins: Arc::default(),
            },
            new_token,
        })
    }

    pub fn required(&self) -> bool {
        self.required
    }
}

/// Prints a newly created access token to stderr, the one time it is shown.
pub fn announce_new_token(token: &str) {
    eprintln!(
        "\n  Remote access needs this access token (shown only this once; \
         `videosdgx auth reset-token` makes a new one):\n\n    {token}\n"
    );
}

/// Replaces the access token (ending all sessions) and returns the new one.
pub fn reset_token(data_dir: &Path) -> Result<String> {
    CredentialStore::open(data_dir)?.create_token()
}

/// Adds the `/api/auth/*` routes to `router` and puts every route behind the access policy.
/// A method a route does not serve answers 405 in the API's error shape (set here, once every
/// route is known, and inside the policy).
pub fn protect(router: Router, auth: Auth) -> Router {
    let auth_routes = Router::new()
        .route("/api/auth/session", get(session))
        .route("/api/auth/login", post(login))
        .route("/api/auth/logout", post(logout))
        .with_state(auth.clone());
    router
        .merge(auth_routes)
        .method_not_allowed_fallback(crate::api::method_not_allowed)
        .layer(middleware::from_fn_with_state(auth, guard))
}

/// The peer address of the connection, when the server was started with connect info.
#[derive(Clone, Copy)]
struct Client(Option<IpAddr>);

/// Who is calling, as established by [`guard`] and seen by the auth handlers.
#[derive(Clone)]
enum Caller {
    /// Auth is not required on this server.
    Local,
    Bearer,
    Session {
        cookie_value: String,
        csrf_token: String,
    },
    Anonymous,
}

async fn guard(State(auth): State<Auth>, mut request: Request, next: Next) -> Response {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    request.extensions_mut().insert(Client(client));
    let headers = request.headers();
    let writes = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if writes && !same_origin(headers) {
        return json_error(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "requests that change data must come from the studio's own pages",
        );
    }
    if !auth.required {
        if !host_is_loopback(headers) {
            return json_error(
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                "this studio serves loopback only; restart it with --host to allow remote access",
            );
        }
        request.extensions_mut().insert(Caller::Local);
        return next.run(request).await;
    }
    let caller = identify(&auth, headers);
    let path = request.uri().path().to_owned();
    let public = path == "/api/health"
        || path == "/api/auth/login"
        || path == "/api/auth/session"
        || web::is_login_asset(path.trim_start_matches('/'));
    match &caller {
        Caller::Anonymous if !public => {
            return if !path.starts_with("/api/") && request.method() == Method::GET {
                web::login_page(StatusCode::UNAUTHORIZED)
            } else {
                json_error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "sign in first: send the access token as 'Authorization: Bearer …' or log in at /login",
                )
            };
        }
        Caller::Session { csrf_token, .. } if writes && !public => {
            let sent = request
                .headers()
                .get(CSRF_HEADER)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            if !bool::from(sent.ct_eq(csrf_token.as_bytes())) {
                return json_error(
                    StatusCode::FORBIDDEN,
                    "csrf_failed",
                    "missing or wrong X-CSRF-Token header; reload the page and try again",
                );
            }
        }
        _ => {}
    }
    request.extensions_mut().insert(caller);
    let mut response = next.run(request).await;
    if path.starts_with("/api/auth/") {
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn identify(auth: &Auth, headers: &HeaderMap) -> Caller {
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return if auth.store.verify_token(token) {
            Caller::Bearer
        } else {
            Caller::Anonymous
        };
    }
    cookie(headers, SESSION_COOKIE)
        .and_then(|value| {
            auth.store
                .session_csrf(&value)
                .map(|csrf_token| Caller::Session {
                    cookie_value: value,
                    csrf_token,
                })
        })
        .unwrap_or(Caller::Anonymous)
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A browser write is same-origin when its `Origin` names the host it was sent to; clients
/// that send no `Origin` (curl, scripts) are not browsers carrying ambient credentials.
fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(origin) => {
            let origin_host = origin.split_once("://").map(|(_, rest)| rest);
            origin_host.is_some() && origin_host == host
        }
        None => headers
            .get("sec-fetch-site")
            .is_none_or(|v| v.as_bytes() != b"cross-site"),
    }
}

fn host_is_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The studio's stable error shape: `{"error": {"code": "...", "message": "..."}}`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, Json(body)).into_response()
}

#[derive(Serialize)]
struct SessionInfo {
    auth_required: bool,
    authenticated: bool,
    /// Send back as `X-CSRF-Token` on writes; absent when the session needs none.
    csrf_token: Option<String>,
}

async fn session(
    State(auth): State<Auth>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Json<SessionInfo> {
    Json(SessionInfo {
        auth_required: auth.required,
        authenticated: !matches!(caller, Caller::Anonymous),
        csrf_token: match caller {
            Caller::Session { csrf_token, .. } => Some(csrf_token),
            _ => None,
        },
    })
}

#[derive(Deserialize)]
struct LoginRequest {
    token: String,
}

async fn login(
    State(auth): State<Auth>,
    axum::Extension(Client(client)): axum::Extension<Client>,
    crate::api::error::Json(LoginRequest { token }): crate::api::error::Json<LoginRequest>,
) -> Response {
    if !auth.required {
        return Json(SessionInfo {
            auth_required: false,
            authenticated: true,
            csrf_token: None,
        })
        .into_response();
    }
    if let Some(wait) = auth.failed_logins.blocked_for(client, Instant::now()) {
        let seconds = wait.as_secs() + 1;
        let mut response = json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            &format!(
                "{MAX_FAILURES} wrong access tokens within a minute from this address; \
                 try again in {seconds} s"
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        return response;
    }
    if !auth.store.verify_token(&token) {
        auth.failed_logins.record_failure(client, Instant::now());
        // Slows down guessing; a 256-bit token cannot be guessed anyway.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        return json_error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "that access token is not valid (it was printed when the server first started; \
             `videosdgx auth reset-token` makes a new one)",
        );
    }
    auth.failed_logins.record_success(client);
    match auth.store.create_session() {
        Ok(session) => {
            let cookie = format!(
                "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
                session.cookie_value,
                SESSION_LIFETIME.as_secs()
            );
            let mut response = Json(SessionInfo {
                auth_required: true,
                authenticated: true,
                csrf_token: Some(session.csrf_token),
            })
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, v);
            }
            response
        }
        Err(err) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "session_store",
            &format!("cannot store the session: {err:#}"),
        ),
    }
}

async fn logout(
    State(auth): State<Auth>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Response {
    if let Caller::Session { cookie_value, .. } = caller
        && let Err(err) = auth.store.end_session(&cookie_value)
    {
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "session_store",
            &format!("cannot end the session: {err:#}"),
        );
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        ))
        .expect("static cookie header"),
    );
    response
}

#[cfg(test)]
mod tests;
