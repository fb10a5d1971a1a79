//! A fake Hugging Face hub for the pull tests: a real HTTP server on 127.0.0.1 that answers the
//! way the hub does for the calls hf-hub makes: `GET /api/models/{repo}/revision/{rev}` (file
//! listing + commit) and `GET /{repo}/resolve/{rev}/{file}` with `Range`, answering 206 with
//! `Content-Range`, `ETag`/`X-Linked-Etag` and `X-Repo-Commit`, and 401/404 with `X-Error-Code`
//! for missing repositories and files. It can cut a download off halfway to show that the next
//! pull resumes with a range request. Shared by the engine's `hub` tests and the studio's.
#![allow(dead_code)] // each test file uses a different part of this helper

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub const REPO: &str = "acme/tiny-wan";
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
pub const WEIGHTS: &str = "transformer/diffusion_pytorch_model.safetensors";

pub struct FakeFile {
    pub body: Vec<u8>,
    /// Large files live in LFS: the hub sends their SHA-256 as `X-Linked-Etag`.
    pub lfs: bool,
}

#[derive(Default)]
pub struct HubState {
    pub files: BTreeMap<String, FakeFile>,
    /// Listed in the repo but answering 404 (a file deleted between listing and download).
    pub vanished: Vec<String>,
    /// (path, Range header) of every request.
    pub requests: Vec<(String, Option<String>)>,
    pub cut_next_weights_download: AtomicBool,
}

pub struct HubServer {
    pub endpoint: String,
    pub state: Arc<Mutex<HubState>>,
}

impl HubServer {
    pub fn start(state: HubState) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(state));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                // One request per connection (`Connection: close`), like a simple origin.
                let _ = serve(stream, &shared);
            }
        });
        Self { endpoint, state }
    }

    pub fn requests_for(&self, path_suffix: &str) -> Vec<Option<String>> {
        let state = self.state.lock().unwrap();
        state
            .requests
            .iter()
            .filter(|(p, _)| p.ends_with(path_suffix))
            .map(|(_, r)| r.clone())
            .collect()
    }
}

fn serve(stream: TcpStream, state: &Mutex<HubState>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.trim_end().split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_string());
        }
    }
    let mut state = state.lock().unwrap();
    state.requests.push((path.clone(), range.clone()));
    let mut out = stream;
    let api_prefix = format!("/api/models/{REPO}/revision/");
    let resolve_prefix = format!("/{REPO}/resolve/");
    if let Some(revision) = path.strip_prefix(&api_prefix) {
        if revision != "main" && revision != COMMIT {
            return respond(
                &mut out,
                "404 Not Found",
                &[("X-Error-Code", "RevisionNotFound")],
                b"{\"error\":\"Invalid rev id\"}",
            );
        }
        let siblings: Vec<_> = state
            .files
            .keys()
            .chain(&state.vanished)
            .map(|name| serde_json::json!({ "rfilename": name }))
            .collect();
        let body =
            serde_json::json!({ "id": REPO, "sha": COMMIT, "siblings": siblings }).to_string();
        return respond(
            &mut out,
            "200 OK",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
    }
    if path.starts_with("/api/models/") {
        // The hub answers 401 for repositories that do not exist (or that it hides).
        return respond(
            &mut out,
            "401 Unauthorized",
            &[("X-Error-Code", "RepoNotFound")],
            b"{\"error\":\"Repository not found\"}",
        );
    }
    let Some(rest) = path.strip_prefix(&resolve_prefix) else {
        return respond(
            &mut out,
            "401 Unauthorized",
            &[("X-Error-Code", "RepoNotFound")],
            b"",
        );
    };
    let (_revision, file) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(entry) = state.files.get(file) else {
        return respond(
            &mut out,
            "404 Not Found",
            &[("X-Error-Code", "EntryNotFound")],
            b"Entry not found",
        );
    };
    let total = entry.body.len();
    let start: usize = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let end = match range
        .as_deref()
        .and_then(|r| r.split('-').nth(1))
        .filter(|e| !e.is_empty())
    {
        Some(end) => end.parse::<usize>().unwrap().min(total - 1),
        None => total - 1,
    };
    let sha256 = format!("{:x}", Sha256::digest(&entry.body));
    let etag = format!("\"{}\"", if entry.lfs { &sha256 } else { &sha256[..40] });
    let content_range = format!("bytes {start}-{end}/{total}");
    let mut headers = vec![
        ("ETag", etag.clone()),
        ("X-Repo-Commit", COMMIT.to_string()),
        ("Content-Range", content_range),
    ];
    if entry.lfs {
        headers.push(("X-Linked-Etag", etag));
        headers.push(("X-Linked-Size", total.to_string()));
    }
    let body = entry.body[start..=end].to_vec();
    let is_full_download = file == WEIGHTS && range.as_deref() != Some("bytes=0-0");
    let cut = is_full_download
        && state
            .cut_next_weights_download
            .swap(false, Ordering::SeqCst);
    drop(state);
    let header_refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    if cut {
        // Announce the whole body, send half, hang up: a dropped connection mid-download.
        write_head(&mut out, "206 Partial Content", &header_refs, body.len())?;
        out.write_all(&body[..body.len() / 2])?;
        out.flush()?;
        return out.shutdown(std::net::Shutdown::Both);
    }
    respond(&mut out, "206 Partial Content", &header_refs, &body)
}

fn write_head(
    out: &mut TcpStream,
    status: &str,
    headers: &[(&str, &str)],
    length: usize,
) -> std::io::Result<()> {
    let mut head =
        format!("HTTP/1.1 {status}\r\nContent-Length: {length}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())
}

fn respond(
    out: &mut TcpStream,
    status: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    write_head(out, status, headers, body.len())?;
    out.write_all(body)?;
    out.flush()
}
