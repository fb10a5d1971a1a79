//! LoRAs in the studio over real HTTP against `videosdgx serve` with the tiny random Wan 2.1
//! text-to-video pipeline, on the CPU: LoRA files imported as `lora` assets (and refused when
//! they are none, with nothing stored), found by name; chosen per project, per bible character
//! and per shot, the more specific choice of one asset winning; a shot generated with them
//! records each (asset, strengths, SHA-256, where it was chosen) in the DB and the MP4 and
//! differs from the same shot without them; a LoRA that does not fit the model fails the job
//! naming the LoRA and loses no take, and one of another family is refused at submission; a chosen LoRA cannot be deleted; the CLI's `assets add`
//! and `project loras`; LoRAs pulled from a hub repository (a local fake hub) by the CLI and by
//! an `assets.pull_lora` job.

#[path = "support/fake_hub.rs"]
mod fake_hub;
#[path = "support/models.rs"]
mod models;
#[path = "support/studio.rs"]
mod studio;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use studio::Server;

const SCRIPT: &str = "\
# Paper Boats

## EXT. CANAL - DAY

WIDE SHOT: MARA (30s, short grey hair, blue raincoat) kneels at the canal and sets a paper boat on the water.

A paper boat drifts under the bridge.
";

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(rel)
}

fn upload(s: &Server, name: &str, bytes: &[u8]) -> studio::Reply {
    s.upload(&format!("name={name}"), bytes)
}

/// Imports fixture `rel` as `name`; the new asset.
fn import(s: &Server, rel: &str, name: &str) -> Value {
    let r = upload(s, name, &std::fs::read(fixture(rel)).unwrap());
    assert_eq!(r.status, 201, "{}", r.json());
    r.json()
}

fn sha256(rel: &str) -> String {
    videosdgx_engine::lora::LoraFile::open(&fixture(rel))
        .unwrap()
        .sha256()
        .unwrap()
        .to_string()
}

fn put_loras(s: &Server, path: &str, loras: Value) -> Value {
    let r = s.put(path, &loras);
    assert_eq!(r.status, 200, "{path}: {}", r.json());
    r.json()
}

/// Generates shot `shot` with seed 7 at the tiny size; the finished job.
fn generate(s: &Server, project: i64, shot: i64) -> Value {
    s.run_job(
        "generate",
        json!({ "shot_id": shot, "seed": 7,
                "render": { "height": 32, "width": 32, "steps": 2, "guidance": 3.0 } }),
        project,
    )
}

fn asset_file(data: &Path, sha: &str) -> PathBuf {
    data.join("assets").join(&sha[..2]).join(sha)
}

#[test]
fn loras_are_imported_chosen_applied_and_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    models::install_tiny_model(&data, "tiny-wan-t2v");
    let s = studio::start(&data);

    // Import: what the file is, recorded; files that are no LoRA refused by name, nothing stored.
    let kohya = import(&s, "lora/kohya.safetensors", "mara-kohya.safetensors");
    assert_eq!(kohya["kind"], "lora");
    assert_eq!(kohya["lora"]["format"], "kohya");
    assert_eq!(kohya["lora"]["family"], "Wan");
    assert_eq!(kohya["lora"]["target"], "video");
    assert!(kohya["lora"]["modules"].as_u64().unwrap() > 0);
    let bytes = std::fs::read(fixture("lora/kohya.safetensors")).unwrap();
    assert_eq!(kohya["sha256"], sha256("lora/kohya.safetensors").as_str());
    assert_eq!(kohya["size_bytes"], bytes.len() as u64);
    let comfy = import(&s, "lora/comfy.safetensors", "canal-style.safetensors");
    let peft = import(&s, "lora/peft_bare.safetensors", "paper-boat.safetensors");
    let grain = import(&s, "lora/comfy_diff.safetensors", "film-grain.safetensors");
    let flux = import(
        &s,
        "components/flux2-klein-tiny/lora/peft.safetensors",
        "flux-look.safetensors",
    );
    assert_eq!(flux["lora"]["target"], "image");

    let truncated = upload(&s, "cut.safetensors", &bytes[..bytes.len() / 2]);
    assert_eq!(truncated.status, 415, "{}", truncated.json());
    assert_eq!(truncated.error_code(), "not_media");
    let message = truncated.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.starts_with("cut.safetensors: not a LoRA file:"),
        "{message}"
    );
    let weights = upload(
        &s,
        "weights.safetensors",
        &std::fs::read(fixture("lora/inputs_t2v.safetensors")).unwrap(),
    );
    assert_eq!(weights.status, 415);
    assert!(
        weights.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("holds no LoRA tensors"),
        "{}",
        weights.json()
    );
    let loras = s.get("/api/assets/search?kind=lora&limit=100").json();
    assert_eq!(loras.as_array().unwrap().len(), 5, "{loras}");
    // Found by name, like other assets by prompt or caption.
    let hits = s.get("/api/assets/search?q=paper%20boat").json();
    assert_eq!(hits[0]["id"], peft["id"], "{hits}");

    // A project planned from a script: its bible has Mara, its first shot shows her.
    let (project, board) = s.storyboard("Boats");
    let plan = s.run_job(
        "plan",
        json!({ "storyboard_id": board, "script": SCRIPT }),
        project,
    );
    assert_eq!(plan["state"], "succeeded", "{plan}");
    let shots = s.get(&format!("/api/storyboards/{board}/shots")).json();
    let shot = shots[0]["id"].as_i64().unwrap();
    let r = s.patch(
        &format!("/api/shots/{shot}"),
        &json!({ "duration_s": 0.25 }),
    );
    assert_eq!(r.status, 200, "{}", r.json());

    // Without LoRAs first: the reference the LoRAs must change.
    let plain = generate(&s, project, shot);
    assert_eq!(plain["state"], "succeeded", "{plain}");
    let plain_asset = s
        .get(&format!("/api/assets/{}", plain["result"]["asset_id"]))
        .json();

    // Project, character and shot choices; the shot turns the project's LoRA down.
    let id = |v: &Value| v["id"].as_i64().unwrap();
    put_loras(
        &s,
        &format!("/api/projects/{project}/loras"),
        json!([{ "asset_id": id(&kohya), "strength": 0.5 },
               { "asset_id": id(&grain), "strength": 0.6 },
               { "asset_id": id(&flux) }]),
    );
    let listed = put_loras(
        &s,
        &format!("/api/storyboards/{board}/characters/mara/loras"),
        json!([{ "asset_id": id(&comfy), "strength": 0.7 }]),
    );
    assert_eq!(listed[0]["name"], "canal-style.safetensors");
    put_loras(
        &s,
        &format!("/api/shots/{shot}/loras"),
        json!([{ "asset_id": id(&peft), "strength": 0.4 },
               { "asset_id": id(&kohya), "strength": 0.25 }]),
    );
    let r = s.put(
        &format!("/api/storyboards/{board}/characters/bob/loras"),
        &json!([{ "asset_id": id(&comfy) }]),
    );
    assert_eq!(r.status, 422, "{}", r.json());
    let r = s.put(
        &format!("/api/shots/{shot}/loras"),
        &json!([{ "asset_id": plain["result"]["asset_id"] }]),
    );
    assert_eq!(r.status, 422);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a LoRA"),
        "{}",
        r.json()
    );

    // What the shot applies: the project's, the character's, then the shot's; the project's
    // kohya is replaced by the shot's choice of it, and the FLUX LoRA is for the image model.
    let applied = s.get(&format!("/api/shots/{shot}/loras/applied")).json();
    let summary: Vec<(i64, f64, &str)> = applied
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["asset_id"].as_i64().unwrap(),
                l["strength"].as_f64().unwrap(),
                l["from"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (id(&grain), 0.6, "project"),
            (id(&comfy), 0.7, "character:mara"),
            (id(&peft), 0.4, "shot"),
            (id(&kohya), 0.25, "shot"),
        ]
    );
    let keyframe = s
        .get(&format!("/api/shots/{shot}/loras/applied?target=image"))
        .json();
    assert_eq!(keyframe[0]["asset_id"], flux["id"], "{keyframe}");

    // Generated with them: recorded in the DB and the MP4, and the video differs.
    let with = generate(&s, project, shot);
    assert_eq!(with["state"], "succeeded", "{with}");
    let generation = s
        .get(&format!(
            "/api/generations/{}",
            with["result"]["generation_id"]
        ))
        .json();
    assert_eq!(generation["loras"], applied, "{generation}");
    let specs = generation["params"]["loras"].as_array().unwrap();
    assert_eq!(specs.len(), 4);
    assert_eq!(specs[3]["strength"], 0.25);
    assert_eq!(specs[3]["sha256"], kohya["sha256"]);
    let asset = s
        .get(&format!("/api/assets/{}", with["result"]["asset_id"]))
        .json();
    let mp4 =
        videosdgx_engine::video::read_mp4(&asset_file(&data, asset["sha256"].as_str().unwrap()))
            .unwrap();
    assert_eq!(mp4.metadata["loras"], applied);
    // Pixels, not files (the files differ by their records alone).
    let plain_mp4 = videosdgx_engine::video::read_mp4(&asset_file(
        &data,
        plain_asset["sha256"].as_str().unwrap(),
    ))
    .unwrap();
    assert_eq!(plain_mp4.frames.len(), mp4.frames.len());
    assert_ne!(plain_mp4.frames, mp4.frames, "the LoRAs change the video");

    // A LoRA for another model (Wan image-to-video's, wider) fails the job naming it; the shot
    // keeps its takes.
    let i2v = import(&s, "lora/comfy_i2v.safetensors", "i2v-only.safetensors");
    put_loras(
        &s,
        &format!("/api/shots/{shot}/loras"),
        json!([{ "asset_id": id(&i2v) }]),
    );
    let failed = generate(&s, project, shot);
    assert_eq!(failed["state"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("LoRA asset {} \"i2v-only.safetensors\"", id(&i2v)))
            && error.contains("does not fit"),
        "{error}"
    );
    // A LoRA of another family is refused when the job is submitted, named, nothing queued.
    let ltx = import(
        &s,
        "components/ltx2-transformer-interleaved/lora/peft.safetensors",
        "ltx-style.safetensors",
    );
    assert_eq!(ltx["lora"]["family"], "LTX-2");
    put_loras(
        &s,
        &format!("/api/shots/{shot}/loras"),
        json!([{ "asset_id": id(&ltx) }]),
    );
    let refused = s.post(
        "/api/jobs",
        &json!({ "kind": "generate", "project_id": project,
                 "params": { "shot_id": shot, "render": { "height": 32, "width": 32, "steps": 2 } } }),
    );
    assert_eq!(refused.status, 422, "{}", refused.json());
    let error = refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains(&format!(
            "LoRA asset {} \"ltx-style.safetensors\" (chosen for the shot) is for LTX-2",
            id(&ltx)
        )) && error.contains("is Wan"),
        "{error}"
    );
    let takes = s.get(&format!("/api/shots/{shot}")).json()["takes"].clone();
    assert_eq!(takes.as_array().unwrap().len(), 2, "{takes}");

    // A chosen LoRA cannot be deleted; once no longer chosen, it can.
    let r = s.delete(&format!("/api/assets/{}", id(&kohya)));
    assert_eq!(r.status, 409, "{}", r.json());
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains(&format!("project {project}")) && message.contains("mara-kohya"),
        "{message}"
    );
    put_loras(&s, &format!("/api/projects/{project}/loras"), json!([]));
    let r = s.delete(&format!("/api/assets/{}", id(&kohya)));
    assert_eq!(r.status, 204);
    assert_eq!(s.get(&format!("/api/assets/{}", id(&kohya))).status, 404);
    assert!(!asset_file(&data, kohya["sha256"].as_str().unwrap()).exists());
    // The take made with it keeps its record.
    let generation = s
        .get(&format!(
            "/api/generations/{}",
            with["result"]["generation_id"]
        ))
        .json();
    assert_eq!(generation["loras"][3]["name"], "mara-kohya.safetensors");
    s.stop();

    // The command line: import, and the project's LoRAs.
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_videosdgx"))
            .arg("--data")
            .arg(&data)
            .args(args)
            .output()
            .unwrap()
    };
    let bad = tmp.path().join("notes.safetensors");
    std::fs::write(&bad, b"not tensors").unwrap();
    let out = cli(&["assets", "add", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("notes.safetensors: not a LoRA file"), "{err}");
    let out = cli(&[
        "assets",
        "add",
        fixture("lora/kohya.safetensors").to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["kind"], "lora");
    let choice = format!("{}:0.8", again["id"]);
    let out = cli(&["project", "loras", &project.to_string(), &choice, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["strength"], 0.8);
    assert_eq!(listed[0]["name"], "kohya.safetensors");
}

#[test]
fn loras_are_pulled_from_a_hub_into_the_library() {
    let mut state = fake_hub::HubState::default();
    let lora = std::fs::read(fixture("lora/comfy.safetensors")).unwrap();
    for (file, body) in [
        ("loras/canal.safetensors", lora.clone()),
        ("loras/readme.safetensors", b"# not tensors".to_vec()),
        (
            "loras/peft.safetensors",
            std::fs::read(fixture("lora/peft.safetensors")).unwrap(),
        ),
    ] {
        state
            .files
            .insert(file.to_string(), fake_hub::FakeFile { body, lfs: true });
    }
    let hub = fake_hub::HubServer::start(state);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_videosdgx"))
            .arg("--data")
            .arg(&data)
            .args(args)
            .env("HF_ENDPOINT", &hub.endpoint)
            .env_remove("HF_TOKEN")
            .output()
            .unwrap()
    };

    let out = cli(&[
        "assets",
        "pull-lora",
        fake_hub::REPO,
        "loras/canal.safetensors",
        "--tags",
        "style",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let asset: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(asset["kind"], "lora");
    assert_eq!(asset["original_name"], "canal.safetensors");
    assert_eq!(asset["sha256"], sha256("lora/comfy.safetensors").as_str());
    assert_eq!(asset["lora"]["format"], "comfy_ui");
    let caption = asset["caption"].as_str().unwrap();
    assert!(
        caption.contains(fake_hub::REPO) && caption.contains(fake_hub::COMMIT),
        "{caption}"
    );

    // Not a LoRA, or not there: refused by name, nothing stored.
    let out = cli(&[
        "assets",
        "pull-lora",
        fake_hub::REPO,
        "loras/readme.safetensors",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("readme.safetensors: not a LoRA file"), "{err}");
    let out = cli(&[
        "assets",
        "pull-lora",
        fake_hub::REPO,
        "loras/gone.safetensors",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no file loras/gone.safetensors"), "{err}");
    let out = cli(&["assets", "search", "--kind", "lora", "--json"]);
    let hits: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hits.as_array().unwrap().len(), 1, "{hits}");

    // The same through the server's job queue.
    let s = studio::start_with(&data, &[], |cmd| {
        cmd.env("HF_ENDPOINT", &hub.endpoint);
    });
    let (project, _) = s.storyboard("Canal");
    let job = s.run_job(
        "assets.pull_lora",
        json!({ "repo_id": fake_hub::REPO, "file": "loras/peft.safetensors",
                "project_id": project }),
        project,
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    let pulled = &job["result"]["asset"];
    assert_eq!(
        (pulled["kind"].as_str(), pulled["project_id"].as_i64()),
        (Some("lora"), Some(project))
    );
    let job = s.run_job(
        "assets.pull_lora",
        json!({ "repo_id": fake_hub::REPO, "file": "notes.txt" }),
        project,
    );
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("a LoRA is a `.safetensors` file"),
        "{job}"
    );
}
