//! Every way a request can be refused before a handler runs answers in the API's error shape
//! `{"error": {"code", "message"}}` with a status that says what is wrong: JSON, query, path and
//! multipart extractors, body limits, missing or wrong content types, methods a route does not
//! serve, unknown routes, and ranges outside a file. Over real HTTP against `videosdgx serve`.

#[path = "support/studio.rs"]
mod studio;

use studio::{Reply, png, start};

const JSON: (&str, &str) = ("content-type", "application/json");

/// Asserts the status, the error shape and the code, and that the message says `mentions`.
fn refused(reply: &Reply, status: u16, code: &str, mentions: &str) {
    let body = reply.json();
    assert_eq!(reply.status, status, "{body}");
    assert_eq!(reply.error_code(), code, "{body}");
    assert!(
        reply
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{:?}",
        reply.headers
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(mentions),
        "message {message:?} should mention {mentions:?}"
    );
}

/// A multipart body with one `component` file part, ending after `cut` bytes when given.
fn plugin_form(boundary: &str, cut: Option<usize>) -> Vec<u8> {
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"component\"; \
         filename=\"plugin.wasm\"\r\n\r\n\0asm\r\n--{boundary}--\r\n"
    )
    .into_bytes();
    if let Some(cut) = cut {
        body.truncate(cut);
    }
    body
}

fn multipart(boundary: &str) -> String {
    format!("multipart/form-data; boundary={boundary}")
}

#[test]
fn json_bodies_refuse_bad_syntax_types_and_content_types() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    let r = s.send("POST", "/api/projects", &[JSON], b"{\"name\": ");
    refused(&r, 400, "malformed_json", "EOF");
    let r = s.send("POST", "/api/projects", &[JSON], b"{\"name\": 42}");
    refused(&r, 422, "invalid", "name");
    let r = s.send("POST", "/api/projects", &[JSON], b"[]");
    refused(&r, 422, "invalid", "expected struct");
    let r = s.send("POST", "/api/projects", &[], b"{\"name\": \"x\"}");
    refused(&r, 415, "unsupported_media_type", "application/json");
    let r = s.send(
        "POST",
        "/api/projects",
        &[("content-type", "text/plain")],
        b"{\"name\": \"x\"}",
    );
    refused(&r, 415, "unsupported_media_type", "application/json");
    let r = s.send(
        "PATCH",
        "/api/plugins/storyboard-planner",
        &[("content-type", &multipart("x"))],
        b"{}",
    );
    refused(&r, 415, "unsupported_media_type", "application/json");
    assert!(s.get("/api/projects").json().as_array().unwrap().is_empty());
}

#[test]
fn query_and_path_values_of_the_wrong_type_are_400() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    refused(
        &s.get("/api/assets/search?limit=many"),
        400,
        "bad_query",
        "limit",
    );
    refused(
        &s.get("/api/assets/search?colour=red"),
        400,
        "bad_query",
        "colour",
    );
    refused(&s.get("/api/jobs?state=asleep"), 400, "bad_query", "asleep");
    refused(
        &s.get("/api/plugins/audit?limit=-1"),
        400,
        "bad_query",
        "limit",
    );
    refused(&s.get("/api/assets/abc"), 400, "bad_path", "abc");
    refused(
        &s.get("/api/projects/99999999999999999999"),
        400,
        "bad_path",
        "99999999999999999999",
    );
    refused(&s.get("/api/jobs/1.5/events"), 400, "bad_path", "1.5");
}

#[test]
fn every_multipart_route_refuses_forms_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    for route in ["/api/plugins", "/api/plugins/inspect"] {
        // What a new user tries first: JSON, or no content type at all.
        let r = s.send("POST", route, &[JSON], b"{}");
        refused(&r, 415, "unsupported_media_type", "multipart/form-data");
        let r = s.send("POST", route, &[], b"component");
        refused(&r, 415, "unsupported_media_type", "multipart/form-data");
        let r = s.send(
            "POST",
            route,
            &[("content-type", "multipart/form-data")],
            &plugin_form("b", None),
        );
        refused(&r, 400, "bad_multipart", "boundary");
        let r = s.post_multipart(route, "b", &plugin_form("b", Some(70)));
        refused(&r, 400, "bad_multipart", "incomplete");
        let r = s.post_multipart(route, "b", b"no parts at all");
        refused(&r, 400, "bad_multipart", "malformed");
    }
    // The asset upload takes raw bodies too: only a multipart Content-Type makes it a form.
    let r = s.send(
        "POST",
        "/api/assets",
        &[("content-type", "Multipart/Form-Data")],
        &png(1, 8),
    );
    refused(&r, 400, "bad_multipart", "boundary");
    let r = s.upload_multipart("b", &plugin_form("b", Some(70)));
    refused(&r, 400, "bad_multipart", "incomplete");
    assert!(
        s.get("/api/assets/search")
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn bodies_over_the_limit_are_413() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    // JSON bodies: 1 MiB.
    let name = "a".repeat(1 << 20);
    let r = s.send(
        "POST",
        "/api/projects",
        &[JSON],
        format!("{{\"name\": \"{name}\"}}").as_bytes(),
    );
    refused(&r, 413, "too_large", "larger than");
    // Plugin forms: 64 MiB.
    let mut form =
        b"--b\r\nContent-Disposition: form-data; name=\"component\"; filename=\"p.wasm\"\r\n\r\n"
            .to_vec();
    form.resize(form.len() + (65 << 20), b'x');
    form.extend_from_slice(b"\r\n--b--\r\n");
    refused(
        &s.post_multipart("/api/plugins/inspect", "b", &form),
        413,
        "too_large",
        "larger than",
    );
}

#[test]
fn methods_a_route_does_not_serve_are_405_with_allow() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    for (method, path, allow) in [
        ("DELETE", "/api/health", "GET"),
        ("PUT", "/api/projects", "POST"),
        ("POST", "/api/assets/search", "GET"),
        ("GET", "/api/auth/login", "POST"),
        ("PUT", "/api/plugins/storyboard-planner", "PATCH"),
    ] {
        let r = s.send(method, path, &[], b"");
        refused(&r, 405, "method_not_allowed", method);
        assert!(
            r.header("allow").is_some_and(|v| v.contains(allow)),
            "{method} {path}: {:?}",
            r.headers
        );
    }
}

#[test]
fn unknown_api_routes_are_404_and_pages_refuse_writes() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    for (method, path) in [
        ("GET", "/api/nope"),
        ("POST", "/api/projects/1/nope"),
        ("DELETE", "/api"),
        ("PATCH", "/api/assets/1/file/extra"),
    ] {
        let r = s.send(method, path, &[], b"");
        refused(&r, 404, "not_found", "no such API");
    }
    refused(
        &s.get("/app/no-such-module.js"),
        404,
        "not_found",
        "no-such-module.js",
    );
    // The web UI's files and pages are only read.
    for path in ["/", "/index.html", "/projects/1"] {
        let r = s.send("POST", path, &[], b"");
        refused(&r, 405, "method_not_allowed", "GET");
        assert!(r.header("allow").is_some_and(|v| v.contains("GET")));
    }
}

#[test]
fn ranges_outside_a_file_are_416_with_content_range() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    let image = png(2, 8);
    let id = s.upload("name=dot.png", &image).json()["id"]
        .as_i64()
        .unwrap();
    let r = s.get_with(
        &format!("/api/assets/{id}/file"),
        ("range", "bytes=100000-100010"),
    );
    refused(&r, 416, "range_not_satisfiable", "bytes");
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{}", image.len()).as_str())
    );
}
