//! The agentic loop end to end on the CPU, through the real binary, the real queue, the
//! first-party plugins that come with it and tiny random models (tests/fixtures: the Wan
//! text-to-video pipeline, Gemma 3 with its vision tower, Qwen3): every take is reviewed by the
//! vision model and kept with its review, the attempt limit holds, the best take is chosen unless
//! the user chose one, shots whose every attempt failed are marked, hostile reviewers end the
//! loop without losing a take, and a brief the model cannot plan is a clear error.

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
use studio::{Server, start};

const SCRIPT: &str = "\
# Paper Boats

## EXT. CANAL - DAY

WIDE SHOT: MARA (30s, short grey hair, blue raincoat) kneels at the canal and sets a paper boat on the water.

CLOSE ON the paper boat as it drifts away under the bridge.
";

const GEMMA: &str = "google/gemma3-tiny";
const QWEN: &str = "Qwen/Qwen3-tiny";

fn videosdgx(data: &Path, args: &[&str]) -> Output {
    Command::new(studio::BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .expect("running videosdgx")
}

fn render(data: &Path, script: &[&str], extra: &[&str]) -> Output {
    let tiny = [
        "--height",
        "32",
        "--width",
        "32",
        "--steps",
        "2",
        "--guidance",
        "1",
    ];
    let args: Vec<&str> = ["render"]
        .iter()
        .chain(script)
        .chain(&tiny)
        .chain(extra)
        .copied()
        .collect();
    videosdgx(data, &args)
}

fn succeeded(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn failed(out: Output) -> String {
    assert!(!out.status.success(), "unexpectedly succeeded");
    String::from_utf8(out.stderr).unwrap()
}

fn count(db: &rusqlite::Connection, sql: &str) -> i64 {
    db.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn render_reviews_every_take_with_the_vision_model_and_keeps_them_all() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    install_tiny_model(&data, "tiny-wan-t2v");
    install_as(&data, "text/gemma3_vlm_chat/model", GEMMA);
    let script = tmp.path().join("boats.md");
    std::fs::write(&script, SCRIPT).unwrap();
    let out = tmp.path().join("boats.mp4");
    let report = succeeded(render(
        &data,
        &[script.to_str().unwrap()],
        &[
            "--out",
            out.to_str().unwrap(),
            "--max-attempts",
            "2",
            "--json",
        ],
    ));
    let report: Value = serde_json::from_str(&report).unwrap();
    assert!(report["review_note"].is_null(), "{report}");
    assert!(out.exists());

    let db = rusqlite::Connection::open(data.join("studio.db")).unwrap();
    let mut attempts_made = 0;
    for shot in report["shots"].as_array().unwrap() {
        let attempts = shot["attempts"].as_array().unwrap();
        assert!((1..=2).contains(&attempts.len()), "{shot}");
        assert!(shot["review_note"].is_null(), "{shot}");
        attempts_made += attempts.len() as i64;
        for (i, attempt) in attempts.iter().enumerate() {
            let review = &attempt["review"];
            assert_eq!(review["plugin_id"], "reviewer", "{attempt}");
            assert_eq!(review["attempt"], i + 1);
            let score = review["score"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&score), "{review}");
            // Only the last attempt may be accepted: an accepted take ends the loop.
            if review["verdict"] == "accept" {
                assert_eq!(i + 1, attempts.len(), "{shot}");
            }
        }
        let accepted = attempts.iter().any(|a| a["review"]["verdict"] == "accept");
        // A shot whose takes all failed used every attempt and is marked.
        assert_eq!(shot["attention"].is_null(), accepted, "{shot}");
        if !accepted {
            assert_eq!(attempts.len(), 2, "{shot}");
        }
        let chosen: i64 = db
            .query_row(
                "SELECT chosen_take_id FROM shots WHERE id = ?1",
                [shot["shot_id"].as_i64()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(Some(chosen), shot["take_id"].as_i64(), "{shot}");
    }
    // Every take is kept with its review, and each review asked the vision model.
    assert_eq!(count(&db, "SELECT count(*) FROM takes"), attempts_made);
    assert_eq!(
        count(&db, "SELECT count(*) FROM take_reviews"),
        attempts_made
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM audit_log
             WHERE plugin_id = 'reviewer' AND call = 'text.chat' AND outcome != 'denied'"
        ),
        attempts_made
    );
    // Takes of different shots have different names in the library.
    let names: Vec<String> = db
        .prepare(
            "SELECT a.original_name FROM takes t JOIN assets a ON a.id = t.asset_id ORDER BY t.id",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        names[0].starts_with("paper-boats-shot-1-take-1"),
        "{names:?}"
    );
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "{names:?}");
}

/// A server with the tiny Wan model, the tiny vision model and the hostile reviewer, and one
/// shot whose prompt picks the reviewer's misbehaviour: (server, project id, shot id).
fn hostile_studio(dir: &Path) -> (Server, i64, i64) {
    install_tiny_model(dir, "tiny-wan-t2v");
    install_as(dir, "text/gemma3_vlm_chat/model", GEMMA);
    let s = start(dir);
    let r = s.install_plugin(
        &guests::component("hostile-reviewer"),
        &guests::manifest_text("hostile-reviewer"),
        &["media"],
    );
    assert_eq!(r.status, 201, "{}", r.json());
    let (project, board) = s.storyboard("Hostile");
    let shot = s
        .post(
            &format!("/api/storyboards/{board}/shots"),
            &json!({ "prompt": "always-retry a paper boat", "duration_s": 0.3 }),
        )
        .json()["id"]
        .as_i64()
        .unwrap();
    (s, project, shot)
}

fn shoot(s: &Server, project: i64, shot: i64) -> Value {
    let r = s.post(
        "/api/jobs",
        &json!({ "kind": "shoot", "project_id": project, "params": {
            "shot_id": shot, "reviewer": "hostile-reviewer",
            "render": { "height": 32, "width": 32, "steps": 2, "guidance": 1.0 } } }),
    );
    assert_eq!(r.status, 201, "{}", r.json());
    let id = r.json()["id"].as_i64().unwrap();
    s.wait_job(id, "finished", |job| {
        matches!(job["state"].as_str(), Some("succeeded" | "failed"))
    })
}

#[test]
fn the_attempt_limit_holds_and_the_users_choice_stands() {
    let dir = tempfile::tempdir().unwrap();
    let (s, project, shot) = hostile_studio(dir.path());
    let r = s.patch(
        &format!("/api/projects/{project}"),
        &json!({ "max_attempts": 11 }),
    );
    assert_eq!(r.status, 422, "{}", r.json());
    let r = s.patch(
        &format!("/api/projects/{project}"),
        &json!({ "max_attempts": 3 }),
    );
    assert_eq!(r.json()["max_attempts"], 3);

    let job = shoot(&s, project, shot);
    assert_eq!(job["state"], "succeeded", "{job}");
    let result = &job["result"];
    let attempts = result["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{result}");
    // Each retry used the reviewer's revised prompt and a new seed.
    assert_eq!(attempts[1]["prompt"], "always-retry attempt 2");
    assert_ne!(attempts[0]["seed"], attempts[1]["seed"]);
    let last = attempts[2]["take_id"].clone();
    assert_eq!(
        result["chosen_take_id"], last,
        "the best score (0.3) is chosen"
    );
    let attention = result["attention"].as_str().unwrap();
    assert!(
        attention.starts_with("All 3 takes failed review"),
        "{attention}"
    );

    let got = s.get(&format!("/api/shots/{shot}")).json();
    assert_eq!(got["attention"], attention);
    let takes = got["takes"].as_array().unwrap();
    assert_eq!(takes.len(), 3);
    assert!(
        takes.iter().all(|t| t["review"]["verdict"] == "retry"),
        "{got}"
    );

    // The user picks the first take: it stays chosen through another run of the loop.
    let first = takes[0]["id"].as_i64().unwrap();
    let picked = s.patch(
        &format!("/api/shots/{shot}"),
        &json!({ "chosen_take_id": first }),
    );
    assert_eq!(picked.json()["chosen_by_user"], true);
    assert!(picked.json()["attention"].is_null());
    let again = shoot(&s, project, shot);
    assert_eq!(again["result"]["chosen_take_id"], first, "{again}");
    assert!(again["result"]["attention"].is_null());
    assert_eq!(
        s.get(&format!("/api/shots/{shot}")).json()["takes"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    s.stop();
}

#[test]
fn hostile_reviewers_end_the_loop_and_lose_no_take() {
    let dir = tempfile::tempdir().unwrap();
    let (s, project, shot) = hostile_studio(dir.path());
    for (prompt, expected) in [
        ("loop forever", "plugin `hostile-reviewer` ran out of"),
        (
            "huge-reason",
            "reasons is 104857600 bytes; a review holds at most 16384",
        ),
        ("vision-ungranted", "capability `vision` not granted"),
        ("nan-score", "score NaN is not between 0 and 1"),
    ] {
        let r = s.patch(&format!("/api/shots/{shot}"), &json!({ "prompt": prompt }));
        assert_eq!(r.status, 200);
        let takes_before = s.get(&format!("/api/shots/{shot}")).json()["takes"]
            .as_array()
            .unwrap()
            .len();
        let job = shoot(&s, project, shot);
        assert_eq!(job["state"], "succeeded", "{prompt}: {job}");
        let note = job["result"]["review_note"].as_str().unwrap();
        assert!(
            note.starts_with("the take was kept unreviewed") && note.contains(expected),
            "{prompt}: {note}"
        );
        let takes = s.get(&format!("/api/shots/{shot}")).json()["takes"].clone();
        let takes = takes.as_array().unwrap();
        assert_eq!(takes.len(), takes_before + 1, "{prompt}");
        assert!(takes.last().unwrap()["review"].is_null());
    }
    // The denied vision call is in the audit log.
    let audit = s
        .get("/api/plugins/audit?plugin_id=hostile-reviewer")
        .json();
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["function"] == "vision.describe" && e["allowed"] == false),
        "{audit}"
    );
    s.stop();
}

#[test]
fn a_brief_needs_a_language_model_and_one_that_writes_no_plan_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    install_tiny_model(&data, "tiny-wan-t2v");
    let brief = "a 30-second ad for noise-cancelling headphones, two scenes, one character";

    let err = failed(render(&data, &["--brief", brief], &[]));
    assert!(err.contains("storyboard-planner"), "{err}");
    assert!(err.contains("needs a language model"), "{err}");

    // The tiny random model writes nonsense: the error names the plugin and the model, and
    // the same brief gives the same answer.
    install_as(&data, "text/qwen3/model", QWEN);
    let err = failed(render(&data, &["--brief", brief], &[]));
    assert!(err.contains("storyboard-planner"), "{err}");
    assert!(err.contains(QWEN), "{err}");
    // The same error but for the job's id.
    let error_line = |err: &str| {
        let line = err.lines().find(|l| l.starts_with("error:")).unwrap();
        line[line.find(") failed").unwrap()..].to_string()
    };
    let again = failed(render(&data, &["--brief", brief], &[]));
    assert_eq!(error_line(&again), error_line(&err));
}
