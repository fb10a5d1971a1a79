//! The studio under crashes: a storyboard is planned, shot and stitched over HTTP, as the web
//! UI does it, while the server is SIGKILLed at pseudo-random points 20 times and restarted
//! each time. The render still completes, every job ends in a final state, no asset is
//! duplicated or orphaned (a row without its file, a generated video without its generation
//! record and take), no temporary file is left, and SQLite's integrity check passes.

#[path = "support/models.rs"]
mod models;
#[path = "support/studio.rs"]
mod studio;

use models::install_tiny_model;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use studio::{Server, start};

const SCRIPT: &str = "\
# Paper Boats

## EXT. CANAL - DAY

WIDE SHOT: MARA (30s, short grey hair, blue raincoat) kneels at the canal and sets a paper boat on the water.

CLOSE ON the paper boat as it drifts away under the bridge.

MARA watches it go, smiling.
";

const KILLS: u32 = 20;

/// A tiny deterministic generator for the kill points (no dependency, the same run each time).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn jobs(s: &Server) -> Vec<Value> {
    s.get("/api/jobs?limit=1000")
        .json()
        .as_array()
        .unwrap()
        .clone()
}

fn unfinished(job: &Value) -> bool {
    matches!(job["state"].as_str(), Some("queued" | "running"))
}

/// Queues a `shoot` for every shot that has no chosen take and no shoot on the way.
fn shoot_what_is_missing(s: &Server, project: i64, board: i64) -> usize {
    let busy: BTreeSet<i64> = jobs(s)
        .iter()
        .filter(|j| unfinished(j) && matches!(j["kind"].as_str(), Some("shoot" | "generate")))
        .filter_map(|j| j["params"]["shot_id"].as_i64())
        .collect();
    let shots = s.get(&format!("/api/storyboards/{board}/shots")).json();
    let mut queued = 0;
    for shot in shots.as_array().unwrap() {
        let id = shot["id"].as_i64().unwrap();
        if shot["chosen_take_id"].is_null() && !busy.contains(&id) {
            let r = s.post(
                "/api/jobs",
                &json!({ "kind": "shoot", "project_id": project, "params": {
                    "shot_id": id,
                    "render": { "height": 32, "width": 32, "steps": 6, "guidance": 1.0 } } }),
            );
            assert_eq!(r.status, 201, "{}", r.json());
            queued += 1;
        }
    }
    queued
}

fn all_shot(s: &Server, board: i64) -> bool {
    let shots = s.get(&format!("/api/storyboards/{board}/shots")).json();
    shots
        .as_array()
        .unwrap()
        .iter()
        .all(|shot| !shot["chosen_take_id"].is_null())
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_render_survives_twenty_sigkills_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    install_tiny_model(data, "tiny-wan-t2v");
    let mut s = start(data);
    let project = s.post("/api/projects", &json!({ "name": "Boats" })).json()["id"]
        .as_i64()
        .unwrap();
    let board = s
        .post(
            &format!("/api/projects/{project}/storyboards"),
            &json!({ "title": "Boats" }),
        )
        .json()["id"]
        .as_i64()
        .unwrap();
    let plan = s.post(
        "/api/jobs",
        &json!({ "kind": "plan", "project_id": project,
                 "params": { "storyboard_id": board, "script": SCRIPT } }),
    );
    let plan = plan.json()["id"].as_i64().unwrap();
    s.wait_job(plan, "planned", |j| j["state"] == "succeeded");

    let mut rng = Lcg(0x5eed);
    for kill in 0..KILLS {
        shoot_what_is_missing(&s, project, board);
        // Somewhere in the next generation or review: each takes well under a second here.
        std::thread::sleep(Duration::from_millis(20 + rng.below(600)));
        eprintln!("kill {}", kill + 1);
        s.sigkill();
        s = start(data);
        // Jobs cut off are re-queued or interrupted at start; an interrupted shoot is retried.
        for job in jobs(&s) {
            if job["state"] == "interrupted" && job["kind"] == "shoot" {
                let id = job["id"].as_i64().unwrap();
                assert_eq!(
                    s.post(&format!("/api/jobs/{id}/retry"), &json!({})).status,
                    200
                );
            }
        }
    }

    // Left alone, the work finishes.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !all_shot(&s, board) || jobs(&s).iter().any(unfinished) {
        assert!(Instant::now() < deadline, "the render never finished");
        if !jobs(&s).iter().any(unfinished) {
            shoot_what_is_missing(&s, project, board);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let stitch = s.post(
        "/api/jobs",
        &json!({ "kind": "stitch", "project_id": project, "params": { "storyboard_id": board } }),
    );
    let stitch = stitch.json()["id"].as_i64().unwrap();
    let done = s.wait_job(stitch, "stitched", |j| {
        matches!(j["state"].as_str(), Some("succeeded" | "failed"))
    });
    assert_eq!(done["state"], "succeeded", "{done}");
    s.stop();

    // Every job ended; the database is sound.
    let db = rusqlite::Connection::open(data.join("studio.db")).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let open: i64 = db
        .query_row(
            "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(open, 0);

    // No content twice; every row has its file.
    let rows: Vec<(String, String)> = db
        .prepare("SELECT sha256, kind FROM assets")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let hashes: BTreeSet<&str> = rows.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(hashes.len(), rows.len(), "an asset is recorded twice");
    let files: BTreeSet<String> = files_under(&data.join("assets"))
        .iter()
        .filter(|p| !p.starts_with(data.join("assets/tmp")))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // A crash between storing a blob and recording it leaves an unreferenced blob (garbage,
    // never shown); never a row without its file.
    let missing: Vec<&&str> = hashes.iter().filter(|h| !files.contains(**h)).collect();
    assert!(missing.is_empty(), "assets without their file: {missing:?}");
    // Every generated video is a take with its generation record.
    let orphans: i64 = db
        .query_row(
            "SELECT count(*) FROM assets a WHERE a.tags LIKE '%\"generated\"%'
             AND NOT EXISTS (SELECT 1 FROM generations g WHERE g.asset_id = a.id)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(orphans, 0, "a generated video has no generation record");
    assert!(
        files_under(&data.join("tmp")).is_empty(),
        "temporary files were left: {:?}",
        files_under(&data.join("tmp"))
    );
}
