//! Shared by the studio integration tests: runs a real `videosdgx serve` process on loopback
//! against a data directory and talks HTTP to it.
#![allow(dead_code)] // each test file uses a different part of this helper

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_videosdgx");

pub struct Server {
    pub child: Child,
    pub base: String,
    pub data: PathBuf,
    agent: ureq::Agent,
    /// Sent as `Authorization: Bearer` with every request (a `--require-auth` studio).
    token: Option<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `videosdgx --data DATA serve` with `extra` arguments; `tweak` may adjust the command
/// (e.g. resource limits) before it is spawned.
pub fn start_with(data: &Path, extra: &[&str], tweak: impl FnOnce(&mut Command)) -> Server {
    start_program(Path::new(BIN), data, extra, tweak)
}

/// [`start_with`] running the binary at `program` (a copy another user can reach).
pub fn start_program(
    program: &Path,
    data: &Path,
    extra: &[&str],
    tweak: impl FnOnce(&mut Command),
) -> Server {
    start_on(program, free_port(), data, extra, tweak)
}

/// [`start_program`] on `port` (a studio restarted where its clients know it).
pub fn start_on(
    program: &Path,
    port: u16,
    data: &Path,
    extra: &[&str],
    tweak: impl FnOnce(&mut Command),
) -> Server {
    let mut cmd = Command::new(program);
    cmd.arg("--data")
        .arg(data)
        .args(["serve", "--port", &port.to_string()])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    tweak(&mut cmd);
    let mut child = cmd.spawn().expect("spawn videosdgx serve");
    // Keep the server's log on the test's stderr (shown when a test fails).
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[serve] {line}");
        }
    });
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        data: data.to_owned(),
        agent,
        token: None,
    };
    server.wait_ready();
    server
}

pub fn start(data: &Path) -> Server {
    start_with(data, &[], |_| {})
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub bytes: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.bytes)
            )
        })
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Asserts the API error shape and returns its code.
    pub fn error_code(&self) -> String {
        let body = self.json();
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "error without a message: {body}");
        body["error"]["code"]
            .as_str()
            .expect("error.code")
            .to_owned()
    }
}

fn reply(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let response = result.expect("HTTP request failed");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let bytes = response
        .into_body()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .expect("read body");
    Reply {
        status,
        headers,
        bytes,
    }
}

/// GET on a fresh connection (usable from another thread), reading the body to its end.
pub fn fetch(url: &str) -> Reply {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    reply(agent.get(url).call())
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `token` with every later request.
    pub fn with_token(mut self, token: &str) -> Server {
        self.token = Some(token.to_owned());
        self
    }

    fn authorized<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = self.agent.get(self.url("/api/health")).call()
                && r.status() == 200
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not answer /api/health within 60 s");
    }

    pub fn get(&self, path: &str) -> Reply {
        reply(self.authorized(self.agent.get(self.url(path))).call())
    }

    pub fn get_with(&self, path: &str, header: (&str, &str)) -> Reply {
        reply(
            self.agent
                .get(self.url(path))
                .header(header.0, header.1)
                .call(),
        )
    }

    pub fn delete(&self, path: &str) -> Reply {
        reply(self.authorized(self.agent.delete(self.url(path))).call())
    }

    /// Sends `body` with any method and headers, exactly as given (no Content-Type is added).
    pub fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        reply(self.agent.run(request.body(body.to_vec()).unwrap()))
    }

    /// Sends `body` as text with `Content-Type: application/json` (so malformed JSON can be sent).
    pub fn send_raw_json(&self, method: &str, path: &str, body: &str) -> Reply {
        let url = self.url(path);
        let req = match method {
            "POST" => self.agent.post(url),
            "PATCH" => self.agent.patch(url),
            "PUT" => self.agent.put(url),
            other => panic!("unsupported method {other}"),
        };
        reply(
            self.authorized(req)
                .header("content-type", "application/json")
                .send(body),
        )
    }

    pub fn post(&self, path: &str, body: &Value) -> Reply {
        self.send_raw_json("POST", path, &body.to_string())
    }

    pub fn patch(&self, path: &str, body: &Value) -> Reply {
        self.send_raw_json("PATCH", path, &body.to_string())
    }

    pub fn put(&self, path: &str, body: &Value) -> Reply {
        self.send_raw_json("PUT", path, &body.to_string())
    }

    /// Uploads `bytes` as a raw body; `query` carries name, project_id, tags, caption.
    pub fn upload(&self, query: &str, bytes: &[u8]) -> Reply {
        reply(
            self.authorized(self.agent.post(self.url(&format!("/api/assets?{query}"))))
                .header("content-type", "application/octet-stream")
                .send(bytes),
        )
    }

    pub fn upload_multipart(&self, boundary: &str, body: &[u8]) -> Reply {
        self.post_multipart("/api/assets", boundary, body)
    }

    pub fn post_multipart(&self, path: &str, boundary: &str, body: &[u8]) -> Reply {
        reply(
            self.authorized(self.agent.post(self.url(path)))
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .send(body),
        )
    }

    /// Installs a plugin through `POST /api/plugins` with `grants` granted.
    pub fn install_plugin(&self, component: &[u8], manifest: &str, grants: &[&str]) -> Reply {
        let body = plugin_form(component, manifest, grants);
        self.post_multipart("/api/plugins", PLUGIN_FORM_BOUNDARY, &body)
    }

    /// A project named `name` with one storyboard: (project id, storyboard id).
    pub fn storyboard(&self, name: &str) -> (i64, i64) {
        let id = |reply: Reply| reply.json()["id"].as_i64().expect("an id");
        let project = id(self.post("/api/projects", &serde_json::json!({ "name": name })));
        let board = id(self.post(
            &format!("/api/projects/{project}/storyboards"),
            &serde_json::json!({ "title": "Act 1" }),
        ));
        (project, board)
    }

    /// Submits a job of `kind` for `project` and waits until it succeeded or failed.
    pub fn run_job(&self, kind: &str, params: Value, project: i64) -> Value {
        let r = self.post(
            "/api/jobs",
            &serde_json::json!({ "kind": kind, "params": params, "project_id": project }),
        );
        assert_eq!(r.status, 201, "{}", r.json());
        let id = r.json()["id"].as_i64().unwrap();
        self.wait_job(id, "finished", |job| {
            matches!(job["state"].as_str(), Some("succeeded" | "failed"))
        })
    }

    /// Polls job `id` until `done` accepts it.
    pub fn wait_job(&self, id: i64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let job = self.get(&format!("/api/jobs/{id}")).json();
            if done(&job) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never got {what}: {job}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "server exited with {status}");
    }

    pub fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// A live Server-Sent Events stream: events arrive on `events`; `close` hangs up (as a browser
/// tab that goes away).
pub struct SseStream {
    pub events: std::sync::mpsc::Receiver<SseEvent>,
    socket: std::net::TcpStream,
}

impl SseStream {
    pub fn next(&self, within: Duration) -> Option<SseEvent> {
        self.events.recv_timeout(within).ok()
    }

    pub fn close(self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

impl Server {
    /// Opens `path` as an event stream, sending `Last-Event-ID` when given. HTTP/1.0, so the
    /// body is the plain event stream until the connection closes.
    pub fn sse(&self, path: &str, last_event_id: Option<&str>) -> SseStream {
        use std::io::Write;
        let address = self.base.trim_start_matches("http://");
        let mut socket = std::net::TcpStream::connect(address).unwrap();
        let mut request =
            format!("GET {path} HTTP/1.0\r\nHost: {address}\r\nAccept: text/event-stream\r\n");
        if let Some(id) = last_event_id {
            request += &format!("Last-Event-ID: {id}\r\n");
        }
        request += "\r\n";
        socket.write_all(request.as_bytes()).unwrap();
        let mut lines = BufReader::new(socket.try_clone().unwrap()).lines();
        let status = lines.next().unwrap().unwrap();
        assert!(status.contains(" 200 "), "{path}: {status}");
        for line in lines.by_ref() {
            if line.unwrap().is_empty() {
                break;
            }
        }
        let (sender, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut event = SseEvent {
                id: None,
                event: String::new(),
                data: String::new(),
            };
            for line in lines.map_while(Result::ok) {
                if line.is_empty() {
                    if !event.event.is_empty() || !event.data.is_empty() {
                        let done = std::mem::replace(
                            &mut event,
                            SseEvent {
                                id: None,
                                event: String::new(),
                                data: String::new(),
                            },
                        );
                        if sender.send(done).is_err() {
                            return;
                        }
                    }
                } else if let Some(v) = line.strip_prefix("id:") {
                    event.id = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("event:") {
                    event.event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    event.data += v.trim();
                }
            }
        });
        SseStream { events, socket }
    }
}

pub const PLUGIN_FORM_BOUNDARY: &str = "vdgx-plugin-form";

/// The multipart form `POST /api/plugins` takes: a component, its manifest and the grants.
pub fn plugin_form(component: &[u8], manifest: &str, grants: &[&str]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut part = |field: &str, filename: Option<&str>, bytes: &[u8]| {
        body.extend_from_slice(format!("--{PLUGIN_FORM_BOUNDARY}\r\n").as_bytes());
        let disposition = match filename {
            Some(f) => format!("form-data; name=\"{field}\"; filename=\"{f}\""),
            None => format!("form-data; name=\"{field}\""),
        };
        body.extend_from_slice(format!("Content-Disposition: {disposition}\r\n\r\n").as_bytes());
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    };
    part("component", Some("plugin.wasm"), component);
    part("manifest", Some("plugin.toml"), manifest.as_bytes());
    for grant in grants {
        part("grant", None, grant.as_bytes());
    }
    body.extend_from_slice(format!("--{PLUGIN_FORM_BOUNDARY}--\r\n").as_bytes());
    body
}

/// A small PNG whose pixels depend on `seed`, so each seed is distinct content.
pub fn png(seed: u32, size: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(size, size, |x, y| {
        let v = seed
            .wrapping_mul(2_654_435_761)
            .wrapping_add(x * 31 + y * 17);
        image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}
