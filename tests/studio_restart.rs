//! Crash and shutdown behaviour of the job queue against a real server process: a job cut off by
//! SIGKILL is found at the next start and re-queued (or marked interrupted when its attempts are
//! spent), SIGTERM stops gracefully, and a running job can be cancelled. Nothing is lost.

#[path = "support/studio.rs"]
mod studio;

use serde_json::{Value, json};
use std::path::Path;
use studio::{png, start};

/// A folder of `n` distinct PNGs (seeds `first..first + n`): importing it takes long enough to
/// interrupt.
fn media_folder(dir: &Path, first: u32, n: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for i in first..first + n {
        std::fs::write(dir.join(format!("frame{i:05}.png")), png(i, 48)).unwrap();
    }
}

fn submit_import(s: &studio::Server, folder: &Path, max_attempts: u32) -> i64 {
    let r = s.post(
        "/api/jobs",
        &json!({ "kind": "assets.import_folder", "params": { "dir": folder }, "max_attempts": max_attempts }),
    );
    assert_eq!(r.status, 201, "{}", r.json());
    r.json()["id"].as_i64().unwrap()
}

fn mid_run(job: &Value) -> bool {
    job["state"] == "running" && job["progress"]["step"].as_u64().unwrap_or(0) >= 5
}

fn count_assets(s: &studio::Server) -> usize {
    let mut total = 0;
    loop {
        let page = s
            .get(&format!("/api/assets/search?limit=1000&offset={total}"))
            .json();
        let n = page.as_array().unwrap().len();
        total += n;
        if n < 1000 {
            return total;
        }
    }
}

#[test]
fn sigkill_mid_job_requeues_it_or_marks_it_interrupted_when_attempts_are_spent() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let folder_a = dir.path().join("a");
    let folder_b = dir.path().join("b");
    media_folder(&folder_a, 0, 1500);
    media_folder(&folder_b, 1500, 1500);

    let s = start(&data);
    let again = submit_import(&s, &folder_a, 3);
    let once = submit_import(&s, &folder_b, 1);
    s.wait_job(again, "to be mid-run", mid_run);
    s.wait_job(once, "to be mid-run", mid_run);
    s.sigkill();

    let s = start(&data);
    let spent = s.get(&format!("/api/jobs/{once}")).json();
    assert_eq!(spent["state"], "interrupted", "{spent}");
    assert!(
        spent["error"]
            .as_str()
            .unwrap()
            .contains("stopped while attempt 1")
    );
    let job = s.wait_job(again, "success", |j| j["state"] == "succeeded");
    assert_eq!(job["attempts"], 2, "{job}");
    let imported = job["result"]["imported"].as_u64().unwrap();
    let existing = job["result"]["existing"].as_u64().unwrap();
    assert_eq!(imported + existing, 1500, "{job}");
    assert!(
        existing >= 5,
        "files imported before the kill were kept: {job}"
    );

    // The interrupted job can be retried and completes; the library has every file once.
    assert_eq!(
        s.post(&format!("/api/jobs/{once}/retry"), &json!({}))
            .status,
        200
    );
    s.wait_job(once, "success", |j| j["state"] == "succeeded");
    assert_eq!(count_assets(&s), 3000);
}

#[test]
fn sigterm_stops_gracefully_and_the_running_job_resumes_at_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let folder = dir.path().join("media");
    media_folder(&folder, 0, 600);
    let mut s = start(&data);
    // An open event stream must not hold up shutdown.
    let events_url = format!("{}/api/jobs/events", s.base);
    let listener = std::thread::spawn(move || studio::fetch(&events_url));
    let id = submit_import(&s, &folder, 1);
    s.wait_job(id, "to be mid-run", mid_run);
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    let status = s.child.wait().unwrap();
    assert!(status.success(), "graceful exit, got {status}");
    drop(s);
    let events = String::from_utf8(listener.join().unwrap().bytes).unwrap();
    assert!(events.contains("event: progress"), "{events}");

    // Shutdown gave the attempt back: a job allowed one attempt still runs to completion.
    let s = start(&data);
    let job = s.wait_job(id, "success", |j| j["state"] == "succeeded");
    assert_eq!(job["attempts"], 1, "{job}");
    assert_eq!(count_assets(&s), 600);
}

#[test]
fn cancelling_a_running_job_stops_it_between_files() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("media");
    media_folder(&folder, 0, 600);
    let s = start(&dir.path().join("data"));
    let id = submit_import(&s, &folder, 3);
    s.wait_job(id, "to be mid-run", mid_run);
    let r = s.post(&format!("/api/jobs/{id}/cancel"), &json!({}));
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["cancel_requested"], true);
    let job = s.wait_job(id, "cancellation", |j| j["state"] == "cancelled");
    assert_eq!(job["attempts"], 1, "a cancelled job is not retried");
    assert!(count_assets(&s) < 600);
}
