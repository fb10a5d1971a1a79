//! `hub::pull`/`hub::list` against a real HTTP server on 127.0.0.1 that answers the way the
//! Hugging Face hub does for the calls hf-hub makes: `GET /api/models/{repo}/revision/{rev}`
//! (file listing + commit) and `GET /{repo}/resolve/{rev}/{file}` with `Range`, answering 206
//! with `Content-Range`, `ETag`/`X-Linked-Etag` and `X-Repo-Commit`, and 401/404 with
//! `X-Error-Code` for missing repositories and files. It can cut a download off halfway to show
//! that the next pull resumes with a range request.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use videosdgx_engine::hub::{Hub, ModelKind, PullProgress, list};

const REPO: &str = "acme/tiny-wan";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const WEIGHTS: &str = "transformer/diffusion_pytorch_model.safetensors";

struct FakeFile {
    body: Vec<u8>,
    /// Large files live in LFS: the hub sends their SHA-256 as `X-Linked-Etag`.
    lfs: bool,
}

#[derive(Default)]
struct HubState {
    files: BTreeMap<String, FakeFile>,
    /// Listed in the repo but answering 404 (a file deleted between listing and download).
    vanished: Vec<String>,
    /// (path, Range header) of every request.
    requests: Vec<(String, Option<String>)>,
    cut_next_weights_download: AtomicBool,
}

struct HubServer {
    endpoint: String,
    state: Arc<Mutex<HubState>>,
}

impl HubServer {
    fn start(state: HubState) -> Self {
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

    fn requests_for(&self, path_suffix: &str) -> Vec<Option<String>> {
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

fn tiny_pipeline() -> HubState {
    let model_index = serde_json::json!({
        "_class_name": "WanPipeline",
        "_diffusers_version": "0.35.1",
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": [null, null],
        "vae": ["diffusers", "AutoencoderKLWan"],
    });
    let weights: Vec<u8> = (0..300_000u32)
        .flat_map(|i| (i.wrapping_mul(2_654_435_761)).to_le_bytes())
        .collect();
    let mut files = BTreeMap::new();
    files.insert(
        "model_index.json".to_string(),
        FakeFile {
            body: model_index.to_string().into_bytes(),
            lfs: false,
        },
    );
    files.insert(
        "transformer/config.json".to_string(),
        FakeFile {
            body: b"{\"num_layers\": 2}".to_vec(),
            lfs: false,
        },
    );
    files.insert(
        WEIGHTS.to_string(),
        FakeFile {
            body: weights,
            lfs: true,
        },
    );
    // A format the engine cannot load: skipped because safetensors exist.
    files.insert(
        "transformer/diffusion_pytorch_model.bin".to_string(),
        FakeFile {
            body: vec![0; 64],
            lfs: true,
        },
    );
    files.insert(
        ".gitattributes".to_string(),
        FakeFile {
            body: b"*.safetensors filter=lfs".to_vec(),
            lfs: false,
        },
    );
    HubState {
        files,
        ..HubState::default()
    }
}

fn no_progress(_: &PullProgress) {}

#[test]
fn pull_downloads_a_pipeline_into_the_models_dir() {
    let server = HubServer::start(tiny_pipeline());
    let models = tempfile::tempdir().unwrap();
    let mut last_bytes = BTreeMap::new();
    let dir = Hub::new(&server.endpoint)
        .pull(REPO, None, models.path(), &mut |p: &PullProgress| {
            last_bytes.insert(p.file.to_string(), (p.bytes, p.file_size));
        })
        .unwrap();

    assert_eq!(dir, models.path().join(REPO));
    let state = server.state.lock().unwrap();
    for name in ["model_index.json", "transformer/config.json", WEIGHTS] {
        assert_eq!(
            std::fs::read(dir.join(name)).unwrap(),
            state.files[name].body,
            "{name}"
        );
    }
    drop(state);
    assert!(
        !dir.join("transformer/diffusion_pytorch_model.bin").exists(),
        "unusable .bin skipped"
    );
    assert!(!dir.join(".gitattributes").exists());
    assert!(
        server
            .requests_for("diffusion_pytorch_model.bin")
            .is_empty()
    );
    let (bytes, size) = last_bytes[WEIGHTS];
    assert_eq!(
        (bytes, size),
        (1_200_000, 1_200_000),
        "progress reaches the file size"
    );

    let listed = list(models.path()).unwrap();
    assert_eq!(listed.len(), 1);
    let model = &listed[0];
    assert_eq!(model.name, REPO);
    assert_eq!(model.pipeline_class.as_deref(), Some("WanPipeline"));
    assert_eq!(
        (model.kind, model.architecture.as_deref()),
        (ModelKind::Pipeline, None)
    );
    assert_eq!(model.components["transformer"], "WanTransformer3DModel");
    assert_eq!(model.components["text_encoder"], "UMT5EncoderModel");
    assert!(
        !model.components.contains_key("transformer_2"),
        "null components are absent"
    );
    let source = model.source.as_ref().unwrap();
    assert_eq!(
        (source.commit.as_str(), source.revision.as_str()),
        (COMMIT, "main")
    );
    assert!(model.size_bytes > 1_200_000);

    // Pulling again finds every file in the cache and downloads nothing.
    let downloads_before = server.requests_for(WEIGHTS).len();
    Hub::new(&server.endpoint)
        .pull(REPO, Some(COMMIT), models.path(), &mut no_progress)
        .unwrap();
    assert_eq!(server.requests_for(WEIGHTS).len(), downloads_before);
}

#[test]
fn interrupted_download_resumes_with_a_range_request() {
    let state = tiny_pipeline();
    state
        .cut_next_weights_download
        .store(true, Ordering::SeqCst);
    let server = HubServer::start(state);
    let models = tempfile::tempdir().unwrap();
    let hub = Hub::new(&server.endpoint);

    let err = format!(
        "{:#}",
        hub.pull(REPO, None, models.path(), &mut no_progress)
            .unwrap_err()
    );
    assert!(err.contains(WEIGHTS) && err.contains(REPO), "{err}");
    assert!(
        !models.path().join(REPO).exists(),
        "a failed pull leaves no model directory"
    );

    hub.pull(REPO, None, models.path(), &mut no_progress)
        .unwrap();
    let ranges = server.requests_for(WEIGHTS);
    assert_eq!(
        ranges,
        [
            Some("bytes=0-0".to_string()),
            Some("bytes=0-".to_string()),
            Some("bytes=0-0".to_string()),
            Some("bytes=600000-".to_string()),
        ],
        "the second pull asks only for the missing half"
    );
    let expected = server.state.lock().unwrap().files[WEIGHTS].body.clone();
    assert_eq!(
        std::fs::read(models.path().join(REPO).join(WEIGHTS)).unwrap(),
        expected
    );
}

#[test]
fn missing_repo_revision_or_file_is_a_clear_error() {
    let mut state = tiny_pipeline();
    state.vanished.push("vae/config.json".to_string());
    let server = HubServer::start(state);
    let models = tempfile::tempdir().unwrap();
    let hub = Hub::new(&server.endpoint);

    let err = format!(
        "{:#}",
        hub.pull("acme/no-such-model", None, models.path(), &mut no_progress)
            .unwrap_err()
    );
    assert!(
        err.contains("model repo acme/no-such-model (revision main) not found")
            && err.contains("RepoNotFound"),
        "{err}"
    );

    let err = format!(
        "{:#}",
        hub.pull(REPO, Some("v9"), models.path(), &mut no_progress)
            .unwrap_err()
    );
    assert!(
        err.contains("revision v9") && err.contains("RevisionNotFound"),
        "{err}"
    );

    let err = format!(
        "{:#}",
        hub.pull(REPO, None, models.path(), &mut no_progress)
            .unwrap_err()
    );
    assert!(
        err.contains("file vae/config.json of model repo acme/tiny-wan")
            && err.contains("EntryNotFound"),
        "{err}"
    );

    let err = format!(
        "{:#}",
        hub.pull("../../etc", None, models.path(), &mut no_progress)
            .unwrap_err()
    );
    assert!(err.contains("invalid repo id"), "{err}");
    assert!(list(models.path()).unwrap().is_empty());
}

#[test]
fn unreachable_hub_names_the_endpoint() {
    // Bind then drop a listener: nothing answers on that port.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let models = tempfile::tempdir().unwrap();
    let err = format!(
        "{:#}",
        Hub::new(&endpoint)
            .pull(REPO, None, models.path(), &mut no_progress)
            .unwrap_err()
    );
    assert!(err.contains(&endpoint), "{err}");
}

#[test]
fn hand_copied_language_models_are_listed_with_their_architecture() {
    let models = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/text");
    for (fixture, name) in [
        ("qwen3/model", "Qwen/Qwen3-tiny"),
        ("gemma3_vlm_chat/model", "gemma-tiny"),
    ] {
        let target = models.path().join(name);
        std::fs::create_dir_all(&target).unwrap();
        for entry in std::fs::read_dir(fixtures.join(fixture)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
        }
    }
    // A config.json naming an architecture the engine does not run is no model.
    let stray = models.path().join("bert");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(
        stray.join("config.json"),
        r#"{"architectures": ["BertModel"]}"#,
    )
    .unwrap();
    std::fs::create_dir_all(models.path().join("broken")).unwrap();
    std::fs::write(models.path().join("broken/config.json"), "{not json").unwrap();

    let listed = list(models.path()).unwrap();
    let seen: Vec<(&str, ModelKind, Option<&str>)> = listed
        .iter()
        .map(|m| (m.name.as_str(), m.kind, m.architecture.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            (
                "Qwen/Qwen3-tiny",
                ModelKind::Language,
                Some("Qwen3ForCausalLM")
            ),
            (
                "gemma-tiny",
                ModelKind::Language,
                Some("Gemma3ForConditionalGeneration")
            ),
        ]
    );
    assert!(
        listed
            .iter()
            .all(|m| m.size_bytes > 100_000 && m.pipeline_class.is_none())
    );
}
