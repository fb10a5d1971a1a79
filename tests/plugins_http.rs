//! Plugins over the studio's real HTTP API against a real `videosdgx serve`: inspect and install
//! with a capability refused, the refused capability denied and audited when used, the planner
//! and expander jobs the web UI runs, hostile plugins failing only their own jobs, and a
//! plugin's clip volumes and soundtrack checked and rendered.

#[path = "support/guests.rs"]
mod guests;
#[path = "support/models.rs"]
mod models;
#[path = "support/studio.rs"]
mod studio;

use models::install_tiny_model;
use serde_json::{Value, json};
use studio::{Server, start};

/// A multipart form with the plugin crate's component and manifest, and `grants`.
fn form(name: &str, grants: &[&str]) -> Vec<u8> {
    studio::plugin_form(
        &guests::component(name),
        &guests::manifest_text(name),
        grants,
    )
}

fn install(s: &Server, name: &str, grants: &[&str]) -> Value {
    let r = s.post_multipart(
        "/api/plugins",
        studio::PLUGIN_FORM_BOUNDARY,
        &form(name, grants),
    );
    assert_eq!(r.status, 201, "{}", r.json());
    r.json()
}

/// The plugins a data directory starts with.
const FIRST_PARTY: [&str; 4] = [
    "prompt-expander",
    "reviewer",
    "shot-stitcher",
    "storyboard-planner",
];

fn installed_ids(s: &Server) -> Vec<String> {
    let list = s.get("/api/plugins").json();
    list.as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect()
}

fn clockmaker_script() -> String {
    std::fs::read_to_string(guests::repo_root().join("projects/clockmaker/script.md")).unwrap()
}

#[test]
fn inspect_installs_nothing_and_a_refused_capability_is_denied_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    let (project, board) = s.storyboard("Clockmaker");

    let inspected = s.post_multipart(
        "/api/plugins/inspect",
        studio::PLUGIN_FORM_BOUNDARY,
        &form("hostile", &[]),
    );
    assert_eq!(inspected.status, 200, "{}", inspected.json());
    let inspected = inspected.json();
    assert_eq!(inspected["id"], "hostile");
    assert_eq!(inspected["world"], "planner");
    assert_eq!(
        inspected["capabilities"],
        json!([
            "text-generation",
            "assets:read",
            "media",
            "render",
            "project:read"
        ])
    );
    assert_eq!(
        inspected["explanations"]["text-generation"],
        "ask the local language model for text"
    );
    assert_eq!(installed_ids(&s), FIRST_PARTY);

    let installed = install(&s, "hostile", &["assets:read", "media", "project:read"]);
    assert_eq!(installed["denied"], json!(["render", "text-generation"]));
    assert_eq!(
        installed["granted"],
        json!(["assets:read", "media", "project:read"])
    );
    let again = s.post_multipart(
        "/api/plugins",
        studio::PLUGIN_FORM_BOUNDARY,
        &form("hostile", &[]),
    );
    assert_eq!(again.status, 409);
    let stray = s.post_multipart(
        "/api/plugins",
        studio::PLUGIN_FORM_BOUNDARY,
        &form("template", &["generate"]),
    );
    assert_eq!(stray.status, 422);
    assert!(
        stray.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`generate` is not requested by plugin `template`")
    );

    // `slow-host` asks for text generation, which was refused.
    let job = s.run_job(
        "plan",
        json!({ "storyboard_id": board, "script": "slow-host", "plugin": "hostile" }),
        project,
    );
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains(
            "plugin `hostile` returned an error: capability `text-generation` not granted"
        ),
        "{error}"
    );

    let audit = s
        .get("/api/plugins/audit?plugin_id=hostile&limit=10")
        .json();
    let entries = audit["entries"].as_array().unwrap();
    let denied = entries
        .iter()
        .find(|e| e["function"] == "text.complete")
        .unwrap_or_else(|| panic!("no text.complete in {audit}"));
    assert_eq!(denied["allowed"], false);
    assert_eq!(denied["capability"], "text-generation");
    assert_eq!(denied["job_id"], job["id"]);
    assert_eq!(denied["plugin_id"], "hostile");
    assert!(denied["at_ms"].as_i64().unwrap() > 0);

    // Disabled plugins are refused at submission; uninstalling keeps the audit log.
    let r = s.patch("/api/plugins/hostile", &json!({ "enabled": false }));
    assert_eq!(r.json()["enabled"], false);
    let r = s.post(
        "/api/jobs",
        &json!({ "kind": "plan", "params": { "storyboard_id": board, "script": "echo", "plugin": "hostile" } }),
    );
    assert_eq!(r.status, 422, "{}", r.json());
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disabled")
    );
    assert_eq!(s.delete("/api/plugins/hostile").status, 204);
    assert_eq!(s.delete("/api/plugins/hostile").status, 404);
    assert_eq!(installed_ids(&s), FIRST_PARTY);
    let kept = s.get("/api/plugins/audit").json();
    assert!(
        kept["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["function"] == "text.complete"),
        "{kept}"
    );
    s.stop();
}

#[test]
fn hostile_plugins_fail_their_jobs_and_the_studio_keeps_planning() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    let (project, board) = s.storyboard("Clockmaker");
    install(&s, "hostile", &["assets:read", "media", "project:read"]);

    for (script, expected) in [
        ("trap", "plugin `hostile` crashed"),
        ("allocate", "plugin `hostile` exceeded its memory limit"),
        ("huge-string", "plugin `hostile` crashed"),
        ("invalid-ids", "NotFound(\"asset `no-such-asset`\")"),
    ] {
        let job = s.run_job(
            "plan",
            json!({ "storyboard_id": board, "script": script, "plugin": "hostile" }),
            project,
        );
        assert_eq!(job["state"], "failed", "{script}: {job}");
        // A plugin's failure is deterministic: it is not retried.
        assert_eq!(
            (job["attempts"].as_i64(), job["max_attempts"].as_i64()),
            (Some(1), Some(1)),
            "{job}"
        );
        let error = job["error"].as_str().unwrap();
        assert!(error.contains(expected), "{script}: {error}");
        assert_eq!(s.get("/api/health").json()["status"], "ok");
    }
    // Nothing a failed plan did reached the storyboard.
    let shots = s.get(&format!("/api/storyboards/{board}/shots")).json();
    assert_eq!(shots, json!([]));

    // With two planners enabled and none named, the first-party one plans.
    let job = s.run_job(
        "plan",
        json!({ "storyboard_id": board, "script": clockmaker_script() }),
        project,
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["plugin"], "storyboard-planner");
    let shots = s.get(&format!("/api/storyboards/{board}/shots")).json();
    let shots = shots.as_array().unwrap();
    assert_eq!(shots.len(), 6);
    assert_eq!(shots[3]["transition"], "crossfade");
    assert!(shots[0]["camera"].as_str().unwrap().contains("wide shot"));
    assert!((shots[0]["duration_s"].as_f64().unwrap() * 16.0).round() as i64 % 4 == 1);
    let boards = s
        .get(&format!("/api/projects/{project}/storyboards"))
        .json();
    let bible: Value = serde_json::from_str(boards[0]["description"].as_str().unwrap()).unwrap();
    let names: Vec<&str> = bible["characters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Mara", "Tomas"]);

    // The bible the user edits is what the expander uses; the shot itself is not changed.
    let mut bible = bible;
    bible["characters"][0]["description"] = json!("a clockmaker with a brass loupe");
    bible["style"]["look"] = json!("35mm film still");
    s.patch(
        &format!("/api/storyboards/{board}"),
        &json!({ "description": bible.to_string() }),
    );
    let shot = &shots[1];
    let job = s.run_job("expand", json!({ "shot_id": shot["id"] }), project);
    assert_eq!(job["state"], "succeeded", "{job}");
    let prompt = job["result"]["prompt"].as_str().unwrap();
    assert!(
        prompt.contains("a clockmaker with a brass loupe"),
        "{prompt}"
    );
    assert!(prompt.contains("35mm film still"), "{prompt}");
    assert!(
        !job["result"]["negative_prompt"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    let after = s.get(&format!("/api/shots/{}", shot["id"])).json();
    assert_eq!(after["prompt"], shot["prompt"]);
    s.stop();
}

#[test]
fn plugin_job_cut_off_by_a_crash_is_interrupted_not_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    let (project, board) = s.storyboard("Clockmaker");
    install(&s, "hostile", &["assets:read", "media", "project:read"]);
    let r = s.post(
        "/api/jobs",
        &json!({ "kind": "plan", "params": { "storyboard_id": board, "script": "loop", "plugin": "hostile" },
                 "project_id": project }),
    );
    assert_eq!(r.status, 201, "{}", r.json());
    let id = r.json()["id"].as_i64().unwrap();
    s.wait_job(id, "to run", |job| job["state"] == "running");
    s.sigkill();

    let s = start(dir.path());
    let job = s.get(&format!("/api/jobs/{id}")).json();
    assert_eq!(job["state"], "interrupted", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("stopped while attempt 1"),
        "{job}"
    );
    s.stop();
}

#[test]
fn openapi_documents_the_plugin_routes() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    let doc = s.get("/api/openapi.json").json();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/plugins",
        "/api/plugins/inspect",
        "/api/plugins/{id}",
        "/api/plugins/audit",
    ] {
        assert!(paths.contains_key(p), "openapi lacks {p}");
    }
    assert!(doc["components"]["schemas"]["InstalledPlugin"].is_object());
    s.stop();
}

#[test]
fn stitch_job_renders_the_chosen_takes_into_one_project_video() {
    let dir = tempfile::tempdir().unwrap();
    install_tiny_model(dir.path(), "tiny-wan-t2v");
    let s = start(dir.path());
    let (project, board) = s.storyboard("Clockmaker");
    let script = "# Boats\n\n## EXT. CANAL - DAY\n\nMARA sets a paper boat on the water.\n\nCLOSE ON the boat drifting away.\n";
    let job = s.run_job(
        "plan",
        json!({ "storyboard_id": board, "script": script }),
        project,
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    let early = s.run_job("stitch", json!({ "storyboard_id": board }), project);
    assert_eq!(early["state"], "failed");
    assert!(
        early["error"]
            .as_str()
            .unwrap()
            .contains("shot 1 has no chosen take"),
        "{early}"
    );
    let shots = s.get(&format!("/api/storyboards/{board}/shots")).json();
    for shot in shots.as_array().unwrap() {
        let render = json!({ "height": 32, "width": 32, "steps": 2, "guidance": 1.0 });
        let job = s.run_job(
            "generate",
            json!({ "shot_id": shot["id"], "render": render }),
            project,
        );
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    let job = s.run_job("stitch", json!({ "storyboard_id": board }), project);
    assert_eq!(job["state"], "succeeded", "{job}");
    let asset = s
        .get(&format!("/api/assets/{}", job["result"]["asset_id"]))
        .json();
    assert_eq!(asset["kind"], "video");
    assert_eq!(asset["project_id"], project);
    let items = job["result"]["timeline"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "title card and two clips: {items:?}");
    let clips: Vec<_> = items.iter().filter_map(|item| item.get("Clip")).collect();
    assert_eq!(clips.len(), 2, "{items:?}");
    for clip in clips {
        assert_eq!(
            clip["volume"], 1.0,
            "the stitcher keeps each clip's sound: {clip}"
        );
    }
    let audit = s.get("/api/plugins/audit?plugin_id=shot-stitcher").json();
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["function"] == "media.render-timeline" && e["error"].is_null()),
        "{audit}"
    );

    // Planning again would replace shots that have takes: refused unless asked for.
    let takes: Vec<i64> = s
        .get(&format!("/api/storyboards/{board}/shots"))
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|shot| shot["takes"][0]["asset_id"].as_i64().unwrap())
        .collect();
    let again = json!({ "storyboard_id": board, "script": script });
    let r = s.post(
        "/api/jobs",
        &json!({ "kind": "plan", "params": again, "project_id": project }),
    );
    assert_eq!(r.status, 409, "{}", r.json());
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("already has generated takes (shot 1, 2)") && message.contains("replace"),
        "{message}"
    );
    let mut replace = again.clone();
    replace["replace"] = json!(true);
    let job = s.run_job("plan", replace, project);
    assert_eq!(job["state"], "succeeded", "{job}");
    let shots = s.get(&format!("/api/storyboards/{board}/shots")).json();
    assert!(
        shots
            .as_array()
            .unwrap()
            .iter()
            .all(|shot| shot["takes"] == json!([]))
    );
    for asset in takes {
        let r = s.get(&format!("/api/assets/{asset}"));
        assert_eq!(r.status, 200, "take asset {asset} is still in the library");
    }
    s.stop();
}

#[test]
fn a_plugins_clip_volumes_and_soundtrack_reach_the_rendered_video() {
    use videosdgx_engine::video::{Audio, Mp4Reader, write_mp4};
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    let (project, board) = s.storyboard("Clockmaker");
    // A silent 1 s clip and 0.5 s of a 300 Hz tone (amplitude 0.1) as a WAV asset.
    let clip = dir.path().join("clip.mp4");
    let frames = vec![image::RgbImage::new(64, 48); 8];
    write_mp4(&clip, &frames, 8, &json!({})).unwrap();
    let wav = dir.path().join("bed.wav");
    let tone = (0..8_000)
        .map(|i| 0.1 * (2.0 * std::f32::consts::PI * 300.0 * i as f32 / 16_000.0).sin())
        .collect();
    Audio::new(16_000, 1, tone)
        .unwrap()
        .write_wav(&wav)
        .unwrap();
    let upload = |name: &str, path: &std::path::Path| {
        let r = s.upload(
            &format!("name={name}&project_id={project}"),
            &std::fs::read(path).unwrap(),
        );
        assert_eq!(r.status, 201, "{}", r.json());
        r.json()["id"].as_i64().unwrap()
    };
    let (clip, music) = (upload("clip.mp4", &clip), upload("bed.wav", &wav));
    install(&s, "hostile", &["render"]);
    let bad_volumes = |soundtrack: i64| {
        s.run_job(
            "plan",
            json!({ "storyboard_id": board, "script": format!("bad-volumes {clip} {soundtrack}"),
                    "plugin": "hostile" }),
            project,
        )
    };

    // The bad gains are refused by name; the clip at 0 and then at 4 under the music at 4 render.
    let job = bad_volumes(music);
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "timeline item 0 (clip `{clip}` of shot `shot-at-NaN`): volume NaN is not a gain from 0 to 4"
        )),
        "{error}"
    );
    let rendered: Vec<Value> = s
        .get(&format!(
            "/api/assets/search?kind=video&project_id={project}"
        ))
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["original_name"] == "loud.mp4")
        .cloned()
        .collect();
    assert_eq!(rendered.len(), 2, "{rendered:?}");
    let mut tracks = Vec::new();
    for asset in &rendered {
        let bytes = s.get(&format!("/api/assets/{}/file", asset["id"])).bytes;
        let path = dir.path().join(format!("rendered-{}.mp4", asset["id"]));
        std::fs::write(&path, bytes).unwrap();
        tracks.push(Mp4Reader::open(&path).unwrap().read_audio().unwrap());
    }
    // The silent clip alone has no sound; with the music at 4 the tone is four times louder.
    let sound = match tracks.as_slice() {
        [None, Some(sound)] | [Some(sound), None] => sound,
        other => panic!("expected one silent and one sounding render: {other:?}"),
    };
    assert_eq!(
        (sound.sample_rate, sound.channels, sound.frames()),
        (16_000, 1, 8_000)
    );
    let rms = (sound.samples.iter().map(|s| s * s).sum::<f32>() / 8_000.0).sqrt();
    assert!((rms - 0.4 / 2f32.sqrt()).abs() < 0.01, "{rms}");

    // A soundtrack that is not a WAV audio asset is refused by name.
    let job = bad_volumes(clip);
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "the soundtrack `{clip}` is not a WAV audio asset (video/mp4)"
        )),
        "{error}"
    );
    s.stop();
}
