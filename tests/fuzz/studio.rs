//! Studio targets: the media sniffing every upload goes through (then a decode as the language
//! model's image input does it), every JSON request type, and whole requests driven through the
//! real router in process (`tower::ServiceExt::oneshot`), JSON routes and multipart uploads.
//! A route may refuse anything, but never with a 500 and never outside the error shape.

use crate::driver::Run;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use std::sync::Arc;
use tower::ServiceExt;
use videosdgx_studio::api::{assets, jobs, language, plugins};
use videosdgx_studio::app::{App, StudioConfig};
use videosdgx_studio::auth::Auth;
use videosdgx_studio::{projects, shots};

pub const HTTP_TOKENS: &[&[u8]] = &[
    b"\n",
    b"\r\n",
    b"\n\n",
    b"content-type: application/json\n",
    b"content-type: multipart/form-data; boundary=b\n",
    b"content-type: multipart/form-data\n",
    b"content-length: 0\n",
    b"range: bytes=0-\n",
    b"origin: http://evil.example\n",
    b"/api/projects/1",
    b"/api/storyboards/1/shots",
    b"/api/shots/1",
    b"/api/assets/1",
    b"/api/jobs/1",
    b"/api/plugins/hostile",
    b"/api/workers/",
    b"/cards/0/next",
    b"/tasks/",
    b"/api/hub/",
    b"/resolve/main/",
    b"/revision/main",
    b"?limit=",
    b"%00",
    b"%2e%2e/",
    b"GET ",
    b"POST ",
    b"PATCH ",
    b"PUT ",
    b"DELETE ",
    b"--b\r\n",
    b"--b--\r\n",
    b"Content-Disposition: form-data; name=\"file\"; filename=\"",
    b"Content-Disposition: form-data; name=\"grant\"\r\n\r\n",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b"null",
    b"\"kind\"",
    b"\"params\"",
    b"\"plan\"",
    b"\"generate\"",
    b"\"chat\"",
];

pub const MEDIA_TOKENS: &[&[u8]] = &[
    b"\x89PNG\r\n\x1a\n",
    b"IHDR",
    b"IDAT",
    b"IEND\xaeB`\x82",
    b"\xff\xd8\xff\xe0",
    b"\xff\xd9",
    b"RIFF",
    b"WEBPVP8 ",
    b"WAVEfmt ",
    b"data",
    b"ftypisom",
    b"moov",
    b"mdat",
    b"\x1a\x45\xdf\xa3",
    b"\x18\x53\x80\x67",
    b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f",
];

/// Probes the input as an upload would be, then decodes an accepted image.
pub fn media() -> Run {
    let dir = tempfile::tempdir().unwrap();
    Box::new(move |input| {
        let path = dir.path().join("upload");
        std::fs::write(&path, input).unwrap();
        let Ok(info) = videosdgx_studio::assets::media::probe(&path, "upload") else {
            return;
        };
        if info.kind == videosdgx_studio::assets::media::MediaKind::Image
            && let Ok(reader) =
                image::ImageReader::open(&path).and_then(|r| r.with_guessed_format())
            && let Ok(image) = reader.decode()
        {
            let _ = image.to_rgb8();
        }
    })
}

/// Every request body and query type the API reads, deserialized from the same bytes.
pub fn api_bodies() -> Run {
    fn json<T: serde::de::DeserializeOwned>(input: &[u8]) {
        let _ = serde_json::from_slice::<T>(input);
    }
    fn query<T: serde::de::DeserializeOwned>(input: &[u8]) {
        let _ = serde_urlencoded::from_bytes::<T>(input);
    }
    Box::new(|input| {
        json::<projects::ProjectFields>(input);
        json::<videosdgx_studio::api::projects::ProjectName>(input);
        json::<videosdgx_studio::api::projects::StoryboardFields>(input);
        json::<videosdgx_studio::api::projects::ShotOrder>(input);
        json::<shots::ShotFields>(input);
        json::<assets::AssetMetadata>(input);
        json::<videosdgx_studio::jobs::NewJob>(input);
        json::<language::ChooseLanguageModel>(input);
        json::<plugins::PluginUpdate>(input);
        query::<assets::UploadMeta>(input);
        query::<assets::SearchParams>(input);
        query::<jobs::ListParams>(input);
        query::<plugins::AuditParams>(input);
    })
}

/// A studio on a fresh data directory with project, storyboard, shot and asset 1, and a
/// function that sends one request through its whole router and checks the answer. The
/// `api_routes` and `multipart` targets share it; their corpora differ.
pub fn router() -> Run {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let app = Arc::new(App::open(StudioConfig::new(dir.path())).unwrap());
    let auth = Auth::for_bind(dir.path(), "127.0.0.1".parse().unwrap(), false).unwrap();
    let router = videosdgx_studio::server::router(app, auth.auth);
    let setup = [
        ("POST /api/projects", r#"{"name": "p"}"#.as_bytes().to_vec()),
        (
            "POST /api/projects/1/storyboards",
            br#"{"title": "s"}"#.to_vec(),
        ),
        (
            "POST /api/storyboards/1/shots",
            br#"{"prompt": "x"}"#.to_vec(),
        ),
    ];
    for (line, body) in setup {
        let mut input = format!("{line}\ncontent-type: application/json\n\n").into_bytes();
        input.extend_from_slice(&body);
        let request = parse_request(&input).unwrap();
        let response = runtime.block_on(router.clone().oneshot(request)).unwrap();
        assert!(
            response.status().is_success(),
            "{line}: {}",
            response.status()
        );
    }
    let png = include_bytes!("corpus/media/png-4x4");
    let upload = Request::post("/api/assets?name=a.png&project_id=1")
        .body(Body::from(&png[..]))
        .unwrap();
    let response = runtime.block_on(router.clone().oneshot(upload)).unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    Box::new(move |input| {
        let _ = &dir;
        let Some(request) = parse_request(input) else {
            return;
        };
        let line = format!("{} {}", request.method(), request.uri());
        let response = runtime.block_on(router.clone().oneshot(request)).unwrap();
        let status = response.status();
        let streaming = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if streaming {
            return;
        }
        let body = runtime
            .block_on(axum::body::to_bytes(response.into_body(), 64 << 20))
            .unwrap();
        assert!(
            status != StatusCode::INTERNAL_SERVER_ERROR,
            "{line} answered 500: {}",
            String::from_utf8_lossy(&body)
        );
        if status.is_client_error() || status.is_server_error() {
            let shape = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .filter(|v| {
                    v["error"]["code"].is_string()
                        && v["error"]["message"]
                            .as_str()
                            .is_some_and(|m| !m.is_empty())
                });
            assert!(
                shape.is_some(),
                "{line} answered {status} outside the error shape: {}",
                String::from_utf8_lossy(&body)
            );
        }
    })
}

/// `METHOD PATH`, header lines, an empty line, then the body (bytes as they are; none without
/// the empty line). Bytes a URI
/// cannot hold are percent-encoded and header lines `http` refuses are dropped, so that most
/// mutations still reach the router.
fn parse_request(input: &[u8]) -> Option<Request<Body>> {
    let split = input
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(input.len());
    let head = String::from_utf8_lossy(&input[..split]);
    let mut lines = head.lines();
    let (method, path) = lines.next()?.split_once(' ')?;
    let uri: String = path
        .bytes()
        .map(|b| {
            if b.is_ascii_graphic() && b != b'#' {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let mut request = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).ok()?)
        .uri(uri)
        .body(Body::from(
            input.get(split + 2..).unwrap_or_default().to_vec(),
        ))
        .ok()?;
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes())
            && let Ok(value) = HeaderValue::from_str(value.trim())
        {
            request.headers_mut().append(name, value);
        }
    }
    Some(request)
}
