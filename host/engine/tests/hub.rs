//! `hub::pull`/`hub::list` against a real HTTP server on 127.0.0.1 that answers the way the
//! Hugging Face hub does for the calls hf-hub makes: `GET /api/models/{repo}/revision/{rev}`
//! (file listing + commit) and `GET /{repo}/resolve/{rev}/{file}` with `Range`, answering 206
//! with `Content-Range`, `ETag`/`X-Linked-Etag` and `X-Repo-Commit`, and 401/404 with
//! `X-Error-Code` for missing repositories and files. It can cut a download off halfway to show
//! that the next pull resumes with a range request.

#[path = "../../../tests/support/fake_hub.rs"]
mod fake_hub;

use fake_hub::{COMMIT, FakeFile, HubServer, HubState, REPO, WEIGHTS};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::Ordering;
use videosdgx_engine::hub::{Hub, ModelKind, PullProgress, list};

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

#[test]
fn pull_file_fetches_one_file_into_the_cache_once() {
    let mut state = tiny_pipeline();
    let lora = b"not parsed here: any bytes".to_vec();
    state.files.insert(
        "loras/style.safetensors".to_string(),
        FakeFile {
            body: lora.clone(),
            lfs: true,
        },
    );
    let server = HubServer::start(state);
    let models = tempfile::tempdir().unwrap();
    let hub = Hub::new(&server.endpoint);
    let (path, source) = hub
        .pull_file(
            REPO,
            None,
            "loras/style.safetensors",
            models.path(),
            &mut no_progress,
        )
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), lora);
    assert_eq!(
        (source.commit.as_str(), source.files.as_slice()),
        (COMMIT, ["loras/style.safetensors".to_string()].as_slice())
    );
    assert!(
        server.requests_for(WEIGHTS).is_empty(),
        "only the file asked for is downloaded"
    );
    assert!(
        !models.path().join(REPO).exists(),
        "no model directory is made"
    );
    let downloads = server.requests_for("style.safetensors").len();
    hub.pull_file(
        REPO,
        None,
        "loras/style.safetensors",
        models.path(),
        &mut no_progress,
    )
    .unwrap();
    assert_eq!(server.requests_for("style.safetensors").len(), downloads);

    let err = hub
        .pull_file(
            REPO,
            None,
            "loras/none.safetensors",
            models.path(),
            &mut no_progress,
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model repo acme/tiny-wan at main has no file loras/none.safetensors"),
        "{err}"
    );
    let err = hub
        .pull_file(REPO, None, "../escape", models.path(), &mut no_progress)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unsafe file name"), "{err}");
}
