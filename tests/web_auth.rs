//! Remote-access authentication over real HTTP against a real `videosdgx serve` process: a
//! server bound to a non-loopback address demands its access token (bearer or session cookie
//! plus CSRF token), a loopback server stays password-free, sessions survive a restart, and
//! resetting the token locks old credentials out.

#[path = "web_support/mod.rs"]
mod web_support;

use serde_json::Value;
use web_support::{Server, agent, binary};

fn body(mut response: ureq::http::Response<ureq::Body>) -> String {
    response.body_mut().read_to_string().unwrap_or_default()
}

fn error_code(text: &str) -> String {
    serde_json::from_str::<Value>(text).map_or(String::new(), |v| {
        v["error"]["code"].as_str().unwrap_or_default().to_owned()
    })
}

#[test]
fn non_loopback_server_requires_the_access_token_and_csrf_on_cookie_writes() {
    let data = tempfile::tempdir().unwrap();
    // Bound to every interface; the test only talks to it over loopback.
    let server = Server::start(data.path(), &["--host", "0.0.0.0"]);
    let token = server
        .printed_token()
        .expect("the first start on a non-loopback address prints the access token");
    let stored = std::fs::read_to_string(data.path().join("auth/token.json")).unwrap();
    assert!(
        !stored.contains(&token["vdgx_".len()..]),
        "the token is stored only hashed"
    );
    let http = agent();
    let url = |p: &str| format!("{}{p}", server.base);

    // Anonymous: 401 everywhere except health and the sign-in page.
    let r = http.get(url("/api/projects")).call().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(&body(r)), "unauthorized");
    let r = http.get(url("/")).call().unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        body(r).contains("Access token"),
        "page loads get the sign-in page"
    );
    assert_eq!(http.get(url("/api/health")).call().unwrap().status(), 200);

    // API clients: the bearer token.
    let r = http
        .get(url("/api/projects"))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(url("/api/projects"))
        .header("Authorization", "Bearer vdgx_0000")
        .call()
        .unwrap();
    assert_eq!(r.status(), 401);

    // Browsers: the login exchange.
    let r = http
        .post(url("/api/auth/login"))
        .send_json(serde_json::json!({ "token": "vdgx_wrong" }))
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(&body(r)), "invalid_token");
    let r = http
        .post(url("/api/auth/login"))
        .send_json(serde_json::json!({ "token": token }))
        .unwrap();
    assert_eq!(r.status(), 200);
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let csrf = serde_json::from_str::<Value>(&body(r)).unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let r = http
        .get(url("/api/projects"))
        .header("Cookie", &cookie)
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(url("/api/projects"))
        .header("Cookie", &cookie)
        .send_json(serde_json::json!({ "name": "No CSRF" }))
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(&body(r)), "csrf_failed");
    let r = http
        .post(url("/api/projects"))
        .header("Cookie", &cookie)
        .header("X-CSRF-Token", &csrf)
        .send_json(serde_json::json!({ "name": "Signed in" }))
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let r = http
        .post(url("/api/projects"))
        .header("Cookie", &cookie)
        .header("X-CSRF-Token", &csrf)
        .header("Origin", "http://evil.example")
        .send_json(serde_json::json!({ "name": "Cross-site" }))
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(&body(r)), "cross_origin");

    // A restart keeps the session and prints no new token.
    server.stop();
    let server = Server::start(data.path(), &["--host", "0.0.0.0"]);
    assert_eq!(server.printed_token(), None, "the token is shown only once");
    let url = |p: &str| format!("{}{p}", server.base);
    let r = http
        .get(url("/api/projects"))
        .header("Cookie", &cookie)
        .call()
        .unwrap();
    assert_eq!(r.status(), 200, "sessions survive a restart");
    server.stop();

    // Resetting the token ends old sessions and the old token.
    let out = std::process::Command::new(binary())
        .arg("--data")
        .arg(data.path())
        .args(["auth", "reset-token", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_token = serde_json::from_slice::<Value>(&out.stdout).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_token, token);
    let server = Server::start(data.path(), &["--host", "0.0.0.0"]);
    let url = |p: &str| format!("{}{p}", server.base);
    let r = http
        .get(url("/api/projects"))
        .header("Cookie", &cookie)
        .call()
        .unwrap();
    assert_eq!(r.status(), 401, "old sessions end with a token reset");
    let old = format!("Bearer {token}");
    let r = http
        .get(url("/api/projects"))
        .header("Authorization", &old)
        .call()
        .unwrap();
    assert_eq!(r.status(), 401);
    let new = format!("Bearer {new_token}");
    let r = http
        .get(url("/api/projects"))
        .header("Authorization", &new)
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn loopback_server_is_password_free_unless_auth_is_required() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    assert_eq!(server.printed_token(), None);
    let http = agent();
    let r = http
        .get(format!("{}/api/projects", server.base))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(format!("{}/", server.base)).call().unwrap();
    assert_eq!(r.status(), 200);
    assert!(body(r).contains("/app/main.js"), "the studio page itself");
    server.stop();

    let server = Server::start(data.path(), &["--require-auth"]);
    assert!(server.printed_token().is_some());
    let r = http
        .get(format!("{}/api/projects", server.base))
        .call()
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// `POST /api/auth/login` sent over a connection from `source` (a loopback address), so that
/// one test machine can be several clients. Returns status, `Retry-After` and body.
fn login_from(server: &Server, source: &str, token: &str) -> (u16, Option<u64>, String) {
    use std::io::{Read, Write};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let server_addr = format!("127.0.0.1:{}", server.port).parse().unwrap();
        socket
            .connect(server_addr)
            .await
            .unwrap()
            .into_std()
            .unwrap()
    });
    stream.set_nonblocking(false).unwrap();
    let body = serde_json::json!({ "token": token }).to_string();
    let mut stream = stream;
    write!(
        stream,
        "POST /api/auth/login HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server.port,
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let retry_after = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after: ")
                .map(str::to_owned)
        })
        .map(|v| v.trim().parse().unwrap());
    (status, retry_after, body.to_owned())
}

#[test]
fn failed_logins_are_rate_limited_per_client_and_others_still_sign_in() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &["--host", "0.0.0.0"]);
    let token = server.printed_token().unwrap();
    for attempt in 1..=10 {
        let (status, _, body) = login_from(&server, "127.0.0.2", "vdgx_guess");
        assert_eq!(status, 401, "attempt {attempt}: {body}");
    }
    let (status, retry_after, body) = login_from(&server, "127.0.0.2", "vdgx_guess");
    assert_eq!(status, 429, "{body}");
    assert_eq!(error_code(&body), "too_many_attempts");
    assert!(
        retry_after.is_some_and(|s| (1..=60).contains(&s)),
        "{retry_after:?}"
    );
    let (status, _, body) = login_from(&server, "127.0.0.2", &token);
    assert_eq!(status, 429, "the right token waits too: {body}");
    // Another client is not held back by the guesser.
    let (status, _, body) = login_from(&server, "127.0.0.3", &token);
    assert_eq!(status, 200, "{body}");
    let r = agent()
        .post(format!("{}/api/auth/login", server.base))
        .send_json(serde_json::json!({ "token": token }))
        .unwrap();
    assert_eq!(r.status(), 200);
}
