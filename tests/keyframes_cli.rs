//! Keyframes end to end on the CPU with the tiny random models: a project whose two shots share
//! a character renders through a character look (FLUX.2 [klein]) → a keyframe per shot
//! conditioned on that look → image-to-video from each keyframe (Wan 2.1 I2V) → stitch, every
//! asset recorded with its generation record; a project that asks for keyframes without an
//! image model installed is refused before anything is written; a plugin's `generation.image`
//! (the image probe, API 0.2.0) with and without references, and its bad inputs; looks refused
//! at submission (no image model, an unknown character).

#[path = "support/guests.rs"]
mod guests;
#[path = "support/models.rs"]
mod models;
#[path = "support/studio.rs"]
mod studio;

use models::install_tiny_model;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};
use studio::Server;

const SCRIPT: &str = "\
# Paper Boats

## EXT. CANAL - DAY

WIDE SHOT: MARA (30s, short grey hair, blue raincoat) kneels at the canal and sets a paper boat on the water.

CLOSE ON MARA as she watches the boat drift away under the bridge.
";

fn videosdgx(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_videosdgx"))
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .expect("running videosdgx")
}

fn render(data: &Path, script: &Path, out: &Path) -> Output {
    videosdgx(
        data,
        &[
            "render",
            script.to_str().unwrap(),
            "--project",
            "Boats",
            "--out",
            out.to_str().unwrap(),
            // FLUX.2 takes references of 64 pixels a side or more.
            "--height",
            "64",
            "--width",
            "64",
            "--steps",
            "2",
            "--guidance",
            "1",
            "--json",
        ],
    )
}

/// The embedded record of a PNG asset.
fn png_record(db: &rusqlite::Connection, data: &Path, asset: i64) -> Value {
    let sha: String = db
        .query_row("SELECT sha256 FROM assets WHERE id = ?1", [asset], |r| {
            r.get(0)
        })
        .unwrap();
    let file = data.join("assets").join(&sha[..2]).join(&sha);
    videosdgx_engine::video::read_png_metadata(&file).unwrap()
}

fn recorded_params(db: &rusqlite::Connection, generation: i64) -> (String, Value) {
    db.query_row(
        "SELECT model, params FROM generations WHERE id = ?1",
        [generation],
        |r| Ok((r.get(0)?, r.get::<_, String>(1)?)),
    )
    .map(|(model, params)| (model, serde_json::from_str(&params).unwrap()))
    .unwrap()
}

#[test]
fn a_shared_character_renders_through_look_keyframes_and_image_to_video() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    install_tiny_model(&data, "tiny-flux2-klein");
    install_tiny_model(&data, "tiny-wan-i2v");
    let script = tmp.path().join("boats.md");
    std::fs::write(&script, SCRIPT).unwrap();
    let out = tmp.path().join("boats.mp4");

    let output = render(&data, &script, &out);
    let progress = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{progress}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    for stage in ["look of mara", "keyframe 1/2", "keyframe 2/2", "shot 2/2"] {
        assert!(progress.contains(stage), "no `{stage}` in:\n{progress}");
    }
    assert!(report["keyframes_note"].is_null(), "{report}");
    let db = rusqlite::Connection::open(data.join("studio.db")).unwrap();

    // One look for the one character, tagged with it, chosen, its record in the PNG and the DB.
    let looks = report["looks"].as_array().unwrap();
    assert_eq!(looks.len(), 1, "{report}");
    let look = &looks[0]["look"];
    assert_eq!(look["character_id"], "mara");
    assert_eq!(look["chosen"], true);
    let look_asset = look["asset_id"].as_i64().unwrap();
    let (kind, tags): (String, String) = db
        .query_row(
            "SELECT kind, tags FROM assets WHERE id = ?1",
            [look_asset],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(kind, "image");
    assert!(tags.contains("character:mara"), "{tags}");
    let (model, params) = recorded_params(&db, looks[0]["generation_id"].as_i64().unwrap());
    assert_eq!(model, "tiny-flux2-klein");
    assert!(
        params["prompt"].as_str().unwrap().contains("blue raincoat"),
        "{params}"
    );
    assert_eq!(png_record(&db, &data, look_asset)["generate"], params);

    // Each shot: a keyframe conditioned on the look, and a take that started from it.
    let shots = report["shots"].as_array().unwrap();
    assert_eq!(shots.len(), 2, "{report}");
    let look_file = {
        let record = png_record(&db, &data, look_asset);
        assert_eq!(record["model"], "tiny-flux2-klein");
        let sha: String = db
            .query_row(
                "SELECT sha256 FROM assets WHERE id = ?1",
                [look_asset],
                |r| r.get(0),
            )
            .unwrap();
        data.join("assets").join(&sha[..2]).join(&sha)
    };
    for shot in shots {
        let keyframe = &shot["keyframe"];
        let keyframe_asset = keyframe["asset_id"].as_i64().unwrap();
        let (model, params) = recorded_params(&db, keyframe["generation_id"].as_i64().unwrap());
        assert_eq!(model, "tiny-flux2-klein");
        // The expander's keyframe prompt: a still, with the character's description verbatim.
        let prompt = params["prompt"].as_str().unwrap();
        assert!(prompt.starts_with("Still frame, "), "{prompt}");
        assert!(
            prompt.contains("30s, short grey hair, blue raincoat"),
            "{prompt}"
        );
        assert_eq!(params["references"], serde_json::json!([look_file]));
        assert_eq!(png_record(&db, &data, keyframe_asset)["generate"], params);
        let on_shot: Option<i64> = db
            .query_row(
                "SELECT keyframe_asset_id FROM shots WHERE id = ?1",
                [shot["shot_id"].as_i64()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(on_shot, Some(keyframe_asset));

        let (model, take) = recorded_params(&db, shot["generation_id"].as_i64().unwrap());
        assert_eq!(model, "tiny-wan-i2v");
        let sha: String = db
            .query_row(
                "SELECT sha256 FROM assets WHERE id = ?1",
                [keyframe_asset],
                |r| r.get(0),
            )
            .unwrap();
        let keyframe_file = data.join("assets").join(&sha[..2]).join(&sha);
        assert_eq!(
            take["start_image"],
            serde_json::json!(keyframe_file),
            "{take}"
        );
    }

    // The stitched piece is a project video, and every step was a job of the queue.
    let kind: String = db
        .query_row(
            "SELECT kind FROM assets WHERE id = ?1",
            [report["asset_id"].as_i64()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kind, "video");
    assert!(out.is_file());
    let mut stmt = db.prepare("SELECT kind FROM jobs ORDER BY id").unwrap();
    let kinds: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        kinds,
        [
            "plan", "expand", "expand", "look", "keyframe", "keyframe", "shoot", "generate",
            "shoot", "generate", "stitch"
        ]
    );
}

#[test]
fn keyframes_without_an_image_model_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    install_tiny_model(&data, "tiny-wan-i2v");
    let created = videosdgx(&data, &["project", "create", "Boats"]);
    assert!(created.status.success());
    let set = videosdgx(&data, &["project", "keyframes", "1", "on", "--json"]);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let project: Value = serde_json::from_slice(&set.stdout).unwrap();
    assert_eq!(project["keyframes"], true);

    let script = tmp.path().join("boats.md");
    std::fs::write(&script, SCRIPT).unwrap();
    let output = render(&data, &script, &tmp.path().join("boats.mp4"));
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("no image model is installed; pull one with `videosdgx models pull black-forest-labs/FLUX.2-klein-4B`"),
        "{err}"
    );
    let db = rusqlite::Connection::open(data.join("studio.db")).unwrap();
    let (boards, jobs): (i64, i64) = db
        .query_row(
            "SELECT (SELECT count(*) FROM storyboards), (SELECT count(*) FROM jobs)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((boards, jobs), (0, 0));
    let setting: Option<bool> = db
        .query_row("SELECT keyframes FROM projects WHERE id = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(setting, Some(true), "the project keeps its setting");
}

/// Runs the image probe with `script` as a `plan` job; the finished job.
fn probe(s: &Server, project: i64, board: i64, script: &str) -> Value {
    let r = s.post(
        "/api/jobs",
        &json!({ "kind": "plan", "project_id": project,
                 "params": { "storyboard_id": board, "script": script, "plugin": "image-probe" } }),
    );
    assert_eq!(r.status, 201, "{}", r.json());
    s.wait_job(r.json()["id"].as_i64().unwrap(), "finished", |job| {
        matches!(job["state"].as_str(), Some("succeeded" | "failed"))
    })
}

fn failed_with(job: &Value, message: &str) {
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(error.contains(message), "{error}");
}

/// The asset id a probe made (its storyboard title).
fn made(job: &Value) -> i64 {
    assert_eq!(job["state"], "succeeded", "{job}");
    job["result"]["title"].as_str().unwrap().parse().unwrap()
}

#[test]
fn plugins_generate_images_with_references_and_bad_inputs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let s = studio::start(&data);
    let r = s.install_plugin(
        &guests::component("image-probe"),
        &guests::manifest_text("image-probe"),
        &["generate"],
    );
    assert_eq!(r.status, 201, "{}", r.json());
    let (project, board) = s.storyboard("Harbour");
    let db = rusqlite::Connection::open(data.join("studio.db")).unwrap();
    let count = |table: &str| -> i64 {
        db.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };

    // No image model: `invalid-input` naming what to install, and nothing written.
    let job = probe(&s, project, board, "- a lighthouse at dusk");
    failed_with(
        &job,
        "no image model is installed; pull one with `videosdgx models pull black-forest-labs/FLUX.2-klein-4B`",
    );
    assert_eq!((count("assets"), count("generations")), (0, 0));

    // Looks are refused at submission, before a job row exists: without an image model, and
    // for a character the bible does not have.
    let bible =
        json!({ "characters": [{ "id": "mara", "name": "Mara", "description": "a keeper" }] });
    let r = s.patch(
        &format!("/api/storyboards/{board}"),
        &json!({ "description": bible.to_string() }),
    );
    assert_eq!(r.status, 200, "{}", r.json());
    let look = |character: &str| {
        s.post(
            "/api/jobs",
            &json!({ "kind": "look", "project_id": project,
                     "params": { "storyboard_id": board, "character_id": character } }),
        )
    };
    let r = look("mara");
    assert_eq!(r.status, 422, "{}", r.json());
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("no image model is installed"),
        "{}",
        r.json()
    );

    // Installed (copied in while the server runs): a still, then one that references it.
    install_tiny_model(&data, "tiny-flux2-klein");
    let r = look("bob");
    assert_eq!(r.status, 422, "{}", r.json());
    assert_eq!(
        r.json()["error"]["message"],
        format!("storyboard {board}'s bible has no character `bob` (characters: mara)")
    );
    let plain = made(&probe(&s, project, board, "- a lighthouse at dusk"));
    let referenced = made(&probe(
        &s,
        project,
        board,
        &format!("{plain} the same lighthouse at night"),
    ));
    let file_of = |asset: i64| {
        let sha: String = db
            .query_row("SELECT sha256 FROM assets WHERE id = ?1", [asset], |r| {
                r.get(0)
            })
            .unwrap();
        data.join("assets").join(&sha[..2]).join(&sha)
    };
    for (asset, references) in [(plain, json!(null)), (referenced, json!([file_of(plain)]))] {
        let (generation, model, kind): (i64, String, String) = db
            .query_row(
                "SELECT g.id, g.model, a.kind FROM generations g JOIN assets a ON a.id = g.asset_id
                 WHERE a.id = ?1",
                [asset],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            (model.as_str(), kind.as_str()),
            ("tiny-flux2-klein", "image")
        );
        let (_, params) = recorded_params(&db, generation);
        assert_eq!(params["references"], references, "{params}");
        assert_eq!(
            (params["width"].as_i64(), params["seed"].as_i64()),
            (Some(64), Some(11))
        );
        // The record the studio keeps is the one the PNG carries: reproducible from either.
        let embedded = videosdgx_engine::video::read_png_metadata(&file_of(asset)).unwrap();
        assert_eq!(embedded["generate"], params);
        let api = s.get(&format!("/api/generations/{generation}")).json();
        assert_eq!(api["params"], params);
    }

    // A reference that is a video, or not in the project: refused, nothing new written.
    let clip = tmp.path().join("clip.mp4");
    let frames = vec![image::RgbImage::new(64, 64); 5];
    videosdgx_engine::video::write_mp4(&clip, &frames, 16, &json!({})).unwrap();
    let video = s.upload(
        &format!("name=clip.mp4&project_id={project}"),
        &std::fs::read(&clip).unwrap(),
    );
    assert_eq!(video.status, 201, "{}", video.json());
    let video = video.json()["id"].as_i64().unwrap();
    let generations = count("generations");
    let job = probe(&s, project, board, &format!("{video} a lighthouse"));
    failed_with(
        &job,
        &format!("reference `{video}` is a video asset, not an image"),
    );
    let job = probe(&s, project, board, "424242 a lighthouse");
    failed_with(&job, "asset `424242`");
    assert_eq!(count("generations"), generations);
    s.stop();
}
