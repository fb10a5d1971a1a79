//! The studio's language model against a real `videosdgx` (server and CLI) and a real data
//! directory with the tiny Qwen3 and Gemma 3 fixtures copied under `DATA/models/`: `models
//! list` and `models use-llm`, plugin calls (`text.complete`, `text.chat` with a JSON Schema,
//! `vision.describe`) answered by the model as `chat` jobs on the GPU lane, with progress and
//! cancellation, and clear errors when no model (or no model that sees) is installed.

#[path = "support/guests.rs"]
mod guests;
#[path = "support/models.rs"]
mod models;
#[path = "support/studio.rs"]
mod studio;

use models::{install_as, install_tiny_model};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use studio::{Server, start};

const QWEN: &str = "Qwen/Qwen3-tiny";
const GEMMA: &str = "google/gemma3-tiny";

fn install_qwen(data: &Path) {
    install_as(data, "text/qwen3/model", QWEN);
}

fn install_gemma(data: &Path) {
    install_as(data, "text/gemma3_vlm_chat/model", GEMMA);
}

fn videosdgx(data: &Path, args: &[&str]) -> Output {
    Command::new(studio::BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .expect("running videosdgx")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    assert!(!out.status.success(), "unexpectedly succeeded");
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Installs the language probe (API 0.2.0) with `text-generation` and `vision` granted.
fn install_probe(s: &Server) {
    let r = s.install_plugin(
        &guests::component("language-probe"),
        &guests::manifest_text("language-probe"),
        &["text-generation", "vision"],
    );
    assert_eq!(r.status, 201, "{}", r.json());
}

/// Submits a `plan` job of the probe with `script`; returns its id.
fn ask(s: &Server, (project, board): (i64, i64), script: &str) -> i64 {
    let r = s.post(
        "/api/jobs",
        &json!({ "kind": "plan", "project_id": project,
                 "params": { "storyboard_id": board, "script": script, "plugin": "language-probe" } }),
    );
    assert_eq!(r.status, 201, "{}", r.json());
    r.json()["id"].as_i64().unwrap()
}

fn finished(s: &Server, id: i64) -> Value {
    s.wait_job(id, "finished", |job| {
        matches!(
            job["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        )
    })
}

/// The plan job's answer (the storyboard title the probe returns), after it succeeded.
fn answer(s: &Server, board: (i64, i64), script: &str) -> String {
    let job = finished(s, ask(s, board, script));
    assert_eq!(job["state"], "succeeded", "{script}: {job}");
    job["result"]["title"].as_str().unwrap().to_string()
}

/// The plan job's error, after it failed.
fn failure(s: &Server, board: (i64, i64), script: &str) -> String {
    let job = finished(s, ask(s, board, script));
    assert_eq!(job["state"], "failed", "{script}: {job}");
    job["error"].as_str().unwrap().to_string()
}

fn chat_jobs(s: &Server) -> Vec<Value> {
    let jobs = s.get("/api/jobs?limit=1000").json();
    jobs.as_array()
        .unwrap()
        .iter()
        .filter(|j| j["kind"] == "chat")
        .cloned()
        .collect()
}

#[test]
fn models_list_shows_language_models_and_the_chosen_one() {
    let data = tempfile::tempdir().unwrap();
    let listed = stdout(&videosdgx(data.path(), &["models", "list"]));
    assert!(listed.contains("no models in"), "{listed}");

    install_tiny_model(data.path(), "tiny-wan-t2v");
    install_tiny_model(data.path(), "tiny-wan-i2v");
    install_tiny_model(data.path(), "tiny-flux2-klein");
    install_qwen(data.path());
    install_gemma(data.path());
    let listed = stdout(&videosdgx(data.path(), &["models", "list"]));
    let line = |name: &str| {
        listed
            .lines()
            .find(|l| l.starts_with(&format!("{name}\t")))
            .unwrap_or_else(|| panic!("{name} not listed: {listed}"))
            .to_string()
    };
    assert!(line(QWEN).contains("\tlanguage\t"), "{listed}");
    assert!(line(QWEN).contains("\tQwen3ForCausalLM"), "{listed}");
    assert!(
        line(GEMMA).contains("\tGemma3ForConditionalGeneration"),
        "{listed}"
    );
    // A pipeline's kind is what it makes, and the line says what it takes.
    assert!(line("tiny-wan-t2v").contains("\tvideo\t"), "{listed}");
    assert!(
        line("tiny-wan-t2v").ends_with("\tWanPipeline\ttext -> video (16 fps)"),
        "{listed}"
    );
    assert!(
        line("tiny-wan-i2v").ends_with("\tstart image, text -> video (16 fps)"),
        "{listed}"
    );
    assert!(line("tiny-flux2-klein").contains("\timage\t"), "{listed}");
    assert!(
        line("tiny-flux2-klein").ends_with("\tFlux2KleinPipeline\ttext, reference images -> image"),
        "{listed}"
    );
    // The Gemma 3 fixture is the smaller on disk: the default until one is chosen.
    assert!(
        listed.contains(&format!("language model: {GEMMA} (the smallest installed")),
        "{listed}"
    );

    let chosen = stdout(&videosdgx(data.path(), &["models", "use-llm", QWEN]));
    assert_eq!(
        chosen.trim(),
        format!("language model: {QWEN} (Qwen3ForCausalLM)")
    );
    let listed = stdout(&videosdgx(data.path(), &["models", "list", "--json"]));
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["language_model"]["name"], QWEN);
    assert_eq!(listed["language_model"]["chosen_by"], "setting");
    assert_eq!(listed["language_model"]["sees_images"], false);
    assert_eq!(listed["models"].as_array().unwrap().len(), 5);
    let flux = &listed["models"][2];
    assert_eq!(flux["name"], "tiny-flux2-klein");
    assert_eq!(flux["capabilities"]["output"]["kind"], "image");

    let err = stderr(&videosdgx(
        data.path(),
        &["models", "use-llm", "tiny-wan-t2v"],
    ));
    assert!(
        err.contains("`tiny-wan-t2v` is not a language model"),
        "{err}"
    );
    let err = stderr(&videosdgx(
        data.path(),
        &["models", "use-llm", "Qwen/Qwen3-4B"],
    ));
    assert!(
        err.contains(&format!(
            "`Qwen/Qwen3-4B` is not an installed model (installed language models: {QWEN}, {GEMMA})"
        )),
        "{err}"
    );
    // A refused choice kept the one made before.
    let listed = stdout(&videosdgx(data.path(), &["models", "list"]));
    assert!(
        listed.contains(&format!("language model: {QWEN} (chosen")),
        "{listed}"
    );

    // Its decoder quantized when it loads; choosing it again without --quant clears that.
    let chosen = stdout(&videosdgx(
        data.path(),
        &["models", "use-llm", QWEN, "--quant", "nvfp4"],
    ));
    assert_eq!(
        chosen.trim(),
        format!("language model: {QWEN} (Qwen3ForCausalLM), weights in NVFP4")
    );
    let listed = stdout(&videosdgx(data.path(), &["models", "list", "--json"]));
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["language_model"]["quant"], "nvfp4");
    stdout(&videosdgx(data.path(), &["models", "use-llm", QWEN]));
    let listed = stdout(&videosdgx(data.path(), &["models", "list", "--json"]));
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["language_model"]["quant"], Value::Null);
}

#[test]
fn the_language_model_is_shown_and_chosen_over_http() {
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path());
    let r = s.get("/api/language-model");
    assert_eq!(r.status, 422);
    assert!(
        r.json()["error"]["message"].as_str().unwrap().contains(
            "no language model is installed; pull one with `videosdgx models pull Qwen/Qwen3-4B`"
        ),
        "{}",
        r.json()
    );
    install_qwen(data.path());
    install_gemma(data.path());
    let r = s.get("/api/language-model").json();
    assert_eq!(
        (r["name"].as_str(), r["chosen_by"].as_str()),
        (Some(GEMMA), Some("default"))
    );
    assert_eq!(r["sees_images"], true);
    let r = s.put("/api/language-model", &json!({ "name": QWEN }));
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(s.get("/api/language-model").json()["name"], QWEN);
    let r = s.put("/api/language-model", &json!({ "name": "missing/model" }));
    assert_eq!(r.status, 422);
    let r = s.put(
        "/api/language-model",
        &json!({ "name": QWEN, "quant": "int3" }),
    );
    assert_eq!(r.status, 422, "an unknown format: {}", r.json());
    // Quantized when it loads, and it answers so.
    let r = s.put(
        "/api/language-model",
        &json!({ "name": QWEN, "quant": "nvfp4" }),
    );
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(s.get("/api/language-model").json()["quant"], "nvfp4");
    install_probe(&s);
    let board = s.storyboard("Harbour");
    let text = answer(&s, board, "complete Write one line about a harbour.");
    assert!(!text.is_empty());
    let models = s.get("/api/models").json();
    let qwen = models
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == QWEN)
        .unwrap();
    assert_eq!(
        (qwen["kind"].as_str(), qwen["architecture"].as_str()),
        (Some("language"), Some("Qwen3ForCausalLM"))
    );
    let doc = s.get("/api/openapi.json").json();
    assert!(
        doc["paths"]["/api/language-model"]["put"].is_object(),
        "{doc}"
    );
}

#[test]
fn plugin_text_calls_are_answered_by_the_language_model_as_gpu_jobs() {
    let data = tempfile::tempdir().unwrap();
    install_qwen(data.path());
    let s = start(data.path());
    install_probe(&s);
    let board = s.storyboard("Harbour");

    let text = answer(&s, board, "complete Write one line about a harbour.");
    let chat = chat_jobs(&s);
    assert_eq!(chat.len(), 1, "{chat:?}");
    let job = &chat[0];
    assert_eq!(
        (job["state"].as_str(), job["lane"].as_str()),
        (Some("succeeded"), Some("gpu"))
    );
    assert_eq!(job["result"]["model"], QWEN);
    assert_eq!(
        job["result"]["text"],
        text.as_str(),
        "the plugin got the model's text"
    );
    assert!(job["result"]["generated_tokens"].as_u64().unwrap() >= 1);
    assert_eq!(job["params"]["options"]["max_tokens"], 16);

    let text = answer(&s, board, "chat-json Name the harbour master.");
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(
        value["name"].as_str().unwrap().chars().count() <= 8,
        "{value}"
    );
    assert_eq!(value.as_object().unwrap().len(), 1, "{value}");

    // A schema that is JSON but no JSON Schema fails the call clearly; the studio carries on.
    let err = failure(&s, board, "chat-wrong-schema hi");
    assert!(err.contains("the language model's job"), "{err}");
    assert!(
        err.contains("invalid JSON schema: type must be a string"),
        "{err}"
    );
    answer(&s, board, "complete Again.");
}

#[test]
fn vision_describe_answers_about_an_image_with_a_model_that_sees() {
    let data = tempfile::tempdir().unwrap();
    install_qwen(data.path());
    install_gemma(data.path());
    let s = start(data.path());
    install_probe(&s);
    let board = s.storyboard("Harbour");
    let image =
        std::fs::read(guests::repo_root().join("tests/fixtures/text/gemma3_vlm_chat/image.png"))
            .unwrap();
    let r = s.upload(&format!("name=image.png&project_id={}", board.0), &image);
    assert!(r.status == 201 || r.status == 200, "{}", r.json());
    let asset = r.json()["id"].as_i64().unwrap();

    // Qwen3 does not see: the error says what to install.
    assert_eq!(
        s.put("/api/language-model", &json!({ "name": QWEN }))
            .status,
        200
    );
    let err = failure(&s, board, &format!("describe {asset} What is shown?"));
    assert!(
        err.contains("does not see images")
            && err.contains("videosdgx models pull google/gemma-3-4b-it"),
        "{err}"
    );

    assert_eq!(
        s.put("/api/language-model", &json!({ "name": GEMMA }))
            .status,
        200
    );
    let text = answer(&s, board, &format!("describe {asset} What is shown?"));
    let chat = chat_jobs(&s);
    let job = chat
        .iter()
        .find(|j| j["state"] == "succeeded")
        .expect("a chat job succeeded");
    assert_eq!(job["result"]["model"], GEMMA);
    assert_eq!(job["result"]["text"], text.as_str());
    assert_eq!(job["params"]["messages"][0]["images"], json!([asset]));

    // Another project's asset is not found.
    let other = s.storyboard("Harbour");
    let err = failure(&s, other, &format!("describe {asset} What is shown?"));
    assert!(
        err.contains(&format!("not found: asset `{asset}`")),
        "{err}"
    );
}

#[test]
fn cancelling_the_language_model_job_stops_the_plugin_call_with_cancelled() {
    let data = tempfile::tempdir().unwrap();
    install_qwen(data.path());
    let s = start(data.path());
    install_probe(&s);
    let board = s.storyboard("Harbour");
    let plan = ask(
        &s,
        board,
        "complete-until-cancelled Tell a long story about a harbour.",
    );

    // The plugin's own job shows the language model's progress while it waits; then one of
    // its chat jobs is caught while it generates, and cancelled. A cancel that lands after the
    // last token lets that job succeed; the probe asks again, so the next one is caught.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut relayed = false;
    let chat = loop {
        assert!(Instant::now() < deadline, "no chat job was caught running");
        let stage = s.get(&format!("/api/jobs/{plan}")).json()["progress"]["stage"].clone();
        relayed |= stage == "language model: generating";
        let running = s.get("/api/jobs?state=running").json();
        let generating = running
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["kind"] == "chat" && j["progress"]["stage"] == "generating")
            .cloned();
        if let (true, Some(job)) = (relayed, generating) {
            assert_eq!(
                job["progress"]["total"], 64,
                "progress counts against the budget"
            );
            let id = job["id"].as_i64().unwrap();
            if s.post(&format!("/api/jobs/{id}/cancel"), &json!({})).status == 200 {
                let chat = finished(&s, id);
                if chat["state"] != "succeeded" {
                    break chat;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(chat["state"], "cancelled", "{chat}");
    let plan = finished(&s, plan);
    assert_eq!(plan["state"], "failed", "{plan}");
    assert!(
        plan["error"]
            .as_str()
            .unwrap()
            .contains("returned an error: cancelled"),
        "{plan}"
    );
}

#[test]
fn without_a_language_model_text_calls_fail_naming_what_to_install() {
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path());
    install_probe(&s);
    let board = s.storyboard("Harbour");
    let err = failure(&s, board, "complete hello");
    assert!(
        err.contains("failed: no language model is installed; pull one with `videosdgx models pull Qwen/Qwen3-4B`"),
        "{err}"
    );
    assert!(chat_jobs(&s).is_empty(), "nothing was queued");
}

#[test]
fn cancelling_the_plugin_job_cancels_the_language_model_job_it_waits_for() {
    let data = tempfile::tempdir().unwrap();
    install_qwen(data.path());
    install_tiny_model(data.path(), "tiny-wan-t2v");
    let s = start(data.path());
    install_probe(&s);
    let board = s.storyboard("Harbour");
    // A long generation holds the GPU lane, so the probe's chat job waits in the queue.
    let shot = s.post(
        &format!("/api/storyboards/{}/shots", board.1),
        &json!({ "prompt": "a storm at sea", "duration_s": 0.5, "model": "tiny-wan-t2v" }),
    );
    let shot = shot.json()["id"].as_i64().unwrap();
    let generate = s.post(
        "/api/jobs",
        &json!({ "kind": "generate", "params": { "shot_id": shot,
                 "render": { "height": 256, "width": 256, "steps": 200, "guidance": 5.0 } } }),
    );
    let generate = generate.json()["id"].as_i64().unwrap();
    s.wait_job(generate, "running", |j| j["state"] == "running");

    let plan = ask(&s, board, "complete Tell a long story.");
    let deadline = Instant::now() + Duration::from_secs(60);
    let chat = loop {
        if let Some(job) = chat_jobs(&s).first() {
            break job["id"].as_i64().unwrap();
        }
        assert!(Instant::now() < deadline, "the probe queued no chat job");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(
        s.get(&format!("/api/jobs/{chat}")).json()["state"],
        "queued"
    );
    assert_eq!(
        s.post(&format!("/api/jobs/{plan}/cancel"), &json!({}))
            .status,
        200
    );
    assert_eq!(finished(&s, plan)["state"], "cancelled");
    // Nobody waits for the chat job any more: it is cancelled before it ever runs.
    let chat = finished(&s, chat);
    assert_eq!(
        (chat["state"].as_str(), chat["started_at"].as_str()),
        (Some("cancelled"), None),
        "{chat}"
    );
    assert_eq!(
        chat_jobs(&s).len(),
        1,
        "the stopped plugin asks nothing more"
    );
    s.post(&format!("/api/jobs/{generate}/cancel"), &json!({}));
}

#[test]
fn vision_describe_shows_a_video_as_evenly_spaced_frames() {
    let data = tempfile::tempdir().unwrap();
    install_gemma(data.path());
    // A real 5-frame clip from the tiny Wan pipeline.
    let clip = data.path().join("clip.mp4");
    let wan = guests::repo_root().join("tests/fixtures/tiny-wan-t2v");
    stdout(&videosdgx(
        data.path(),
        &[
            "generate",
            "--model",
            wan.to_str().unwrap(),
            "--prompt",
            "a harbour at dawn",
            "--height",
            "32",
            "--width",
            "32",
            "--frames",
            "5",
            "--steps",
            "2",
            "--guidance",
            "1",
            "--seed",
            "1",
            "--out",
            clip.to_str().unwrap(),
        ],
    ));
    let s = start(data.path());
    install_probe(&s);
    let board = s.storyboard("Harbour");
    let upload = |name: &str, bytes: &[u8]| {
        let r = s.upload(&format!("name={name}&project_id={}", board.0), bytes);
        assert_eq!(r.status, 201, "{}", r.json());
        r.json()["id"].as_i64().unwrap()
    };
    let video = upload("clip.mp4", &std::fs::read(&clip).unwrap());
    let frame =
        std::fs::read(guests::repo_root().join("tests/fixtures/text/gemma3_vlm_chat/image.png"))
            .unwrap();
    let image = upload("image.png", &frame);

    let prompt_tokens = |asset: i64| {
        answer(&s, board, &format!("describe {asset} What happens?"));
        let chat = chat_jobs(&s);
        let job = chat
            .iter()
            .find(|j| j["params"]["messages"][0]["images"] == json!([asset]))
            .expect("the describe call ran as a chat job");
        assert_eq!(job["state"], "succeeded", "{job}");
        job["result"]["prompt_tokens"].as_u64().unwrap()
    };
    let (one_image, video_frames) = (prompt_tokens(image), prompt_tokens(video));
    // Four frames are shown for the video where one image is shown for the picture: three more
    // image blocks, each at least its 4 soft tokens between `<start_of_image>` and
    // `<end_of_image>`.
    assert!(
        video_frames >= one_image + 3 * 6,
        "{one_image} tokens for an image, {video_frames} for the video"
    );
}
