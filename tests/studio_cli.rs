//! The CLI contract scripts rely on: `--json` records, readable one-line errors, non-zero exits.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_videosdgx");

fn run(data: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run videosdgx")
}

fn json(data: &Path, args: &[&str]) -> Value {
    let out = run(data, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// One line on stderr starting `error:`, and a failing exit status.
fn error_line(data: &Path, args: &[&str]) -> String {
    let out = run(data, args);
    assert!(!out.status.success(), "{args:?} should fail");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in {stderr:?}"));
    line.to_owned()
}

fn png(dir: &Path, name: &str, shade: u8) -> std::path::PathBuf {
    let path = dir.join(name);
    image::RgbImage::from_pixel(8, 8, image::Rgb([shade, 10, 20]))
        .save(&path)
        .unwrap();
    path
}

#[test]
fn project_create_assets_add_and_search_print_json_records() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let project = json(&data, &["project", "create", "Trailer", "--json"]);
    let id = project["id"].as_i64().unwrap();
    assert_eq!(project["name"], "Trailer");
    let pid = id.to_string();

    let fox = png(dir.path(), "fox.png", 1);
    let asset = json(
        &data,
        &[
            "assets",
            "add",
            fox.to_str().unwrap(),
            "--project",
            &pid,
            "--tags",
            "fox,snow",
            "--caption",
            "a red fox",
            "--json",
        ],
    );
    assert!(asset["id"].as_i64().is_some());
    assert_eq!(asset["sha256"].as_str().unwrap().len(), 64);
    let owl = png(dir.path(), "owl.png", 2);
    json(
        &data,
        &[
            "assets",
            "add",
            owl.to_str().unwrap(),
            "--caption",
            "an owl at night",
            "--json",
        ],
    );

    let hits = json(
        &data,
        &[
            "assets",
            "search",
            "fox",
            "--kind",
            "image",
            "--project",
            &pid,
            "--json",
        ],
    );
    let hits = hits.as_array().unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["id"], asset["id"]);
    let all = json(&data, &["assets", "search", "", "--json"]);
    assert_eq!(all.as_array().unwrap().len(), 2);
    let tagged = json(
        &data,
        &["assets", "search", "fox", "--tag", "snow", "--json"],
    );
    assert_eq!(tagged.as_array().unwrap().len(), 1);

    let listed = json(&data, &["project", "list", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let renamed = json(&data, &["project", "rename", &pid, "Teaser", "--json"]);
    assert_eq!(renamed["name"], "Teaser");
    assert_eq!(
        json(&data, &["project", "show", &pid, "--json"])["name"],
        "Teaser"
    );
}

#[test]
fn reindex_rebuilds_a_deleted_index_from_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = png(dir.path(), "a.png", 3);
    json(
        &data,
        &[
            "assets",
            "add",
            file.to_str().unwrap(),
            "--caption",
            "lighthouse",
            "--json",
        ],
    );
    std::fs::remove_dir_all(data.join("index")).unwrap();
    let out = json(&data, &["assets", "reindex", "--json"]);
    assert_eq!(out["indexed"], 1);
    let hits = json(&data, &["assets", "search", "lighthouse", "--json"]);
    assert_eq!(hits.as_array().unwrap().len(), 1);
}

#[test]
fn bad_input_exits_non_zero_with_one_readable_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not an image").unwrap();
    let line = error_line(&data, &["assets", "add", text.to_str().unwrap()]);
    assert!(
        line.contains("notes.png") && line.contains("not an image"),
        "{line}"
    );
    let line = error_line(&data, &["assets", "add", "/no/such/file.png"]);
    assert!(line.contains("/no/such/file.png"), "{line}");
    let line = error_line(&data, &["project", "show", "42"]);
    assert!(line.contains("project 42 not found"), "{line}");
    let line = error_line(&data, &["jobs", "cancel", "7"]);
    assert!(line.contains("job 7 not found"), "{line}");
    let line = error_line(&data, &["assets", "search", "x", "--since", "last tuesday"]);
    assert!(line.contains("last tuesday"), "{line}");
    let line = error_line(&data, &["project", "create", "   "]);
    assert!(line.contains("project name"), "{line}");
}

#[test]
fn database_from_a_newer_version_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    json(&data, &["project", "create", "p", "--json"]);
    let conn = rusqlite::Connection::open(data.join("studio.db")).unwrap();
    conn.pragma_update(None, "user_version", 999).unwrap();
    drop(conn);
    let line = error_line(&data, &["project", "list"]);
    assert!(
        line.contains("schema version 999") && line.contains("upgrade VideosDGX"),
        "{line}"
    );
}

#[test]
fn jobs_list_show_cancel_and_retry_work_on_queued_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    json(&data, &["project", "list", "--json"]);
    // No server is running: a job submitted by a client waits in the queue.
    let conn = rusqlite::Connection::open(data.join("studio.db")).unwrap();
    conn.execute(
        "INSERT INTO jobs (kind, lane, params, state, created_at) VALUES ('assets.reindex', 'cpu', '{}', 'queued', 0)",
        [],
    )
    .unwrap();
    drop(conn);
    let listed = json(&data, &["jobs", "list", "--json"]);
    let id = listed[0]["id"].as_i64().unwrap().to_string();
    assert_eq!(
        json(&data, &["jobs", "show", &id, "--json"])["state"],
        "queued"
    );
    assert_eq!(
        json(&data, &["jobs", "cancel", &id, "--json"])["state"],
        "cancelled"
    );
    let line = error_line(&data, &["jobs", "cancel", &id]);
    assert!(line.contains("already cancelled"), "{line}");
    assert_eq!(
        json(&data, &["jobs", "retry", &id, "--json"])["state"],
        "queued"
    );
}
