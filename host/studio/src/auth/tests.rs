use super::*;
use axum::body::{Body, to_bytes};
use axum::http::Request;
use tower::ServiceExt;

fn app(dir: &Path, bind: &str, require_auth: bool) -> (Router, Option<String>) {
    let setup = Auth::for_bind(dir, bind.parse().unwrap(), require_auth).unwrap();
    let api = Router::new()
        .route("/api/health", get(|| async { "ok" }))
        .route(
            "/api/projects",
            get(|| async { "[]" }).post(|| async { "created" }),
        )
        .merge(web::router());
    (protect(api, setup.auth), setup.new_token)
}

async fn call(app: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn req(method: &str, uri: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "studio.lan:7860")
}

#[test]
fn only_loopback_binds_go_without_auth() {
    let cases = [
        ("127.0.0.1", false),
        ("127.0.0.2", false),
        ("::1", false),
        ("0.0.0.0", true),
        ("::", true),
        ("192.168.1.20", true),
    ];
    for (bind, required) in cases {
        assert_eq!(
            auth_required_for(bind.parse().unwrap(), false),
            required,
            "{bind}"
        );
    }
    assert!(auth_required_for("127.0.0.1".parse().unwrap(), true));
}

#[tokio::test]
async fn loopback_server_needs_no_login_and_creates_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let (app, token) = app(dir.path(), "127.0.0.1", false);
    assert!(token.is_none());
    let request = Request::post("/api/projects")
        .header(header::HOST, "127.0.0.1:7860")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, request).await.0, StatusCode::OK);
}

#[tokio::test]
async fn loopback_server_refuses_other_host_names() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = app(dir.path(), "127.0.0.1", false);
    let (status, _, body) = call(
        &app,
        req("GET", "/api/projects").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("host_not_allowed"), "{body}");
    let ok = Request::get("/api/projects")
        .header(header::HOST, "localhost:7860")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, ok).await.0, StatusCode::OK);
}

#[tokio::test]
async fn writes_from_another_origin_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = app(dir.path(), "127.0.0.1", false);
    let request = Request::post("/api/projects")
        .header(header::HOST, "127.0.0.1:7860")
        .header(header::ORIGIN, "https://evil.example")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = call(&app, request).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("cross_origin"), "{body}");
}

#[tokio::test]
async fn remote_server_answers_401_to_anonymous_calls_but_serves_login_page() {
    let dir = tempfile::tempdir().unwrap();
    let (app, token) = app(dir.path(), "0.0.0.0", false);
    assert!(token.unwrap().starts_with(TOKEN_PREFIX));
    let (status, _, body) = call(
        &app,
        req("GET", "/api/projects").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("\"unauthorized\""), "{body}");
    let (status, headers, body) = call(&app, req("GET", "/").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        body.contains("login.js"),
        "the 401 page is the sign-in page"
    );
    let (status, _, _) = call(
        &app,
        req("GET", "/app/app.css").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the sign-in page's stylesheet is public"
    );
    let (status, _, _) = call(
        &app,
        req("GET", "/app/main.js").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(&app, req("GET", "/api/health").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn bearer_token_authenticates_api_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (app, token) = app(dir.path(), "0.0.0.0", false);
    let token = token.unwrap();
    let good = req("POST", "/api/projects")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, good).await.0, StatusCode::OK);
    let bad = req("GET", "/api/projects")
        .header(header::AUTHORIZATION, format!("Bearer {token}x"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, bad).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn login_cookie_is_httponly_strict_and_writes_need_the_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let (app, token) = app(dir.path(), "0.0.0.0", false);
    let token = token.unwrap();

    let wrong = req("POST", "/api/auth/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"token":"vdgx_nope"}"#))
        .unwrap();
    let (status, headers, _) = call(&app, wrong).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.get(header::SET_COOKIE).is_none());

    let login = req("POST", "/api/auth/login")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ORIGIN, "http://studio.lan:7860")
        .body(Body::from(format!(r#"{{"token":"{token}"}}"#)))
        .unwrap();
    let (status, headers, body) = call(&app, login).await;
    assert_eq!(status, StatusCode::OK);
    let set_cookie = headers[header::SET_COOKIE].to_str().unwrap().to_string();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let csrf = serde_json::from_str::<serde_json::Value>(&body).unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_string();

    let read = req("GET", "/api/projects")
        .header(header::COOKIE, &cookie)
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, read).await.0, StatusCode::OK);

    let no_csrf = req("POST", "/api/projects")
        .header(header::COOKIE, &cookie)
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = call(&app, no_csrf).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("csrf_failed"), "{body}");

    let with_csrf = req("POST", "/api/projects")
        .header(header::COOKIE, &cookie)
        .header(CSRF_HEADER, &csrf)
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, with_csrf).await.0, StatusCode::OK);

    let logout = req("POST", "/api/auth/logout")
        .header(header::COOKIE, &cookie)
        .header(CSRF_HEADER, &csrf)
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, logout).await.0, StatusCode::NO_CONTENT);
    let after = req("GET", "/api/projects")
        .header(header::COOKIE, &cookie)
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, after).await.0, StatusCode::UNAUTHORIZED);
}

fn login_from(client: &str, token: &str) -> Request<Body> {
    let mut request = req("POST", "/api/auth/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(format!(r#"{{"token":"{token}"}}"#)))
        .unwrap();
    let addr: std::net::SocketAddr = format!("{client}:50000").parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(addr));
    request
}

#[tokio::test]
async fn failed_logins_are_limited_per_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let (app, token) = app(dir.path(), "0.0.0.0", false);
    let token = token.unwrap();
    for _ in 0..MAX_FAILURES {
        let (status, _, _) = call(&app, login_from("10.1.1.1", "vdgx_guess")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // The guesser is refused even with the right token, and told when to come back.
    let (status, headers, body) = call(&app, login_from("10.1.1.1", &token)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("\"too_many_attempts\""), "{body}");
    let wait: u64 = headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Another address signs in.
    let (status, headers, _) = call(&app, login_from("10.1.1.2", &token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get(header::SET_COOKIE).is_some());
}

/// `verify_token` compares SHA-256 digests with `subtle::ConstantTimeEq`: how long it takes says
/// nothing about how much of a guess was right. Near misses at either end must all fail.
#[test]
fn token_check_accepts_only_the_exact_token() {
    let dir = tempfile::tempdir().unwrap();
    let store = CredentialStore::open(dir.path()).unwrap();
    assert!(!store.verify_token(""), "no token yet: nothing verifies");
    let token = store.create_token().unwrap();
    assert!(store.verify_token(&token));
    assert!(
        store.verify_token(&format!(" {token}\n")),
        "pasted with whitespace"
    );
    let flip = |i: usize| {
        let mut bytes = token.clone().into_bytes();
        bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
        String::from_utf8(bytes).unwrap()
    };
    for candidate in [
        flip(token.len() - 1),
        flip(TOKEN_PREFIX.len()),
        flip(0),
        token[..token.len() - 1].to_owned(),
        format!("{token}0"),
        token.to_uppercase(),
        String::new(),
    ] {
        assert!(!store.verify_token(&candidate), "{candidate:?}");
    }
}
