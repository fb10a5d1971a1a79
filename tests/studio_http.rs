//! The studio HTTP API over real loopback HTTP against a real `videosdgx serve` process and a real
//! SQLite file: resources, search, downloads, job events, and every kind of bad input and fault.

#[path = "support/models.rs"]
mod models;
#[path = "support/studio.rs"]
mod studio;

use serde_json::{Value, json};
use studio::{png, start, start_with};

fn new_project(s: &studio::Server, name: &str) -> i64 {
    let r = s.post("/api/projects", &json!({ "name": name }));
    assert_eq!(r.status, 201, "{}", r.json());
    r.json()["id"].as_i64().unwrap()
}

#[test]
fn health_answers_and_openapi_documents_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    let health = s.get("/api/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    let doc = s.get("/api/openapi.json").json();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/health",
        "/api/projects/{id}",
        "/api/storyboards/{id}/shots/order",
        "/api/assets",
        "/api/assets/{id}/file",
        "/api/assets/search",
        "/api/jobs/{id}/cancel",
        "/api/jobs/{id}/events",
        "/api/gpus",
    ] {
        assert!(paths.contains_key(p), "openapi lacks {p}");
    }
    assert!(doc["components"]["schemas"]["Shot"].is_object());
}

#[test]
fn projects_storyboards_and_shots_round_trip_with_reorder() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    let project = new_project(&s, "Trailer");
    let r = s.patch(
        &format!("/api/projects/{project}"),
        &json!({ "name": "Teaser" }),
    );
    assert_eq!(r.json()["name"], "Teaser");
    let board = s.post(
        &format!("/api/projects/{project}/storyboards"),
        &json!({ "title": "Act 1" }),
    );
    assert_eq!(board.status, 201);
    let board = board.json()["id"].as_i64().unwrap();
    let shots: Vec<i64> = ["dawn", "noon", "dusk"]
        .iter()
        .map(|p| {
            let r = s.post(
                &format!("/api/storyboards/{board}/shots"),
                &json!({ "prompt": p, "duration_s": 4.0, "seed": 7, "camera": "dolly in" }),
            );
            assert_eq!(r.status, 201, "{}", r.json());
            r.json()["id"].as_i64().unwrap()
        })
        .collect();
    let r = s.put(
        &format!("/api/storyboards/{board}/shots/order"),
        &json!({ "order": [shots[2], shots[0], shots[1]] }),
    );
    assert_eq!(r.status, 200, "{}", r.json());
    let prompts: Vec<Value> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["prompt"].clone())
        .collect();
    assert_eq!(prompts, [json!("dusk"), json!("dawn"), json!("noon")]);
    let r = s.patch(
        &format!("/api/shots/{}", shots[0]),
        &json!({ "status": "approved" }),
    );
    assert_eq!(r.json()["status"], "approved");
    assert_eq!(r.json()["camera"], "dolly in");
    assert_eq!(s.delete(&format!("/api/shots/{}", shots[2])).status, 204);
    let listed = s.get(&format!("/api/storyboards/{board}/shots")).json();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[0]["position"], 0);
    assert_eq!(s.delete(&format!("/api/projects/{project}")).status, 204);
    assert_eq!(s.get(&format!("/api/storyboards/{board}")).status, 404);
}

#[test]
fn uploaded_assets_are_searchable_and_download_with_range() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    let project = new_project(&s, "p");
    let fox = png(1, 32);
    let r = s.upload(
        &format!(
            "name=fox.png&project_id={project}&tags=Fox,Winter&caption=a%20red%20fox%20in%20snow"
        ),
        &fox,
    );
    assert_eq!(r.status, 201, "{}", r.json());
    let asset = r.json();
    assert_eq!(asset["kind"], "image");
    assert_eq!(asset["tags"], json!(["fox", "winter"]));
    assert_eq!(asset["width"], 32);
    let id = asset["id"].as_i64().unwrap();
    // Same bytes again: the existing asset, not a copy.
    let again = s.upload(&format!("name=copy.png&project_id={project}"), &fox);
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["id"], id);
    s.upload("name=whale.png&caption=a%20blue%20whale", &png(2, 32));

    let hits = s
        .get(&format!(
            "/api/assets/search?q=fox&kind=image&project_id={project}"
        ))
        .json();
    assert_eq!(hits.as_array().unwrap().len(), 1);
    assert_eq!(hits[0]["id"], id);
    assert!(hits[0]["score"].as_f64().unwrap() > 0.0);
    let none = s.get("/api/assets/search?q=fox&tags=sea").json();
    assert_eq!(none.as_array().unwrap().len(), 0);
    let everything = s.get("/api/assets/search?limit=1&offset=1").json();
    assert_eq!(everything.as_array().unwrap().len(), 1, "paging");
    let future = s.get("/api/assets/search?q=fox&since=2999-01-01").json();
    assert_eq!(future.as_array().unwrap().len(), 0, "date filter");

    let whole = s.get(&format!("/api/assets/{id}/file"));
    assert_eq!(whole.status, 200);
    assert_eq!(whole.bytes, fox);
    assert_eq!(whole.header("content-type"), Some("image/png"));
    let part = s.get_with(&format!("/api/assets/{id}/file"), ("range", "bytes=8-15"));
    assert_eq!(part.status, 206);
    assert_eq!(part.bytes, fox[8..16]);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 8-15/{}", fox.len()).as_str())
    );
    let past_end = s.get_with(
        &format!("/api/assets/{id}/file"),
        ("range", "bytes=999999-"),
    );
    assert_eq!(past_end.status, 416);
}

#[test]
fn malformed_json_wrong_types_and_unknown_fields_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    let r = s.send_raw_json("POST", "/api/projects", "{\"name\": ");
    assert_eq!((r.status, r.error_code().as_str()), (400, "malformed_json"));
    let r = s.post("/api/projects", &json!({ "name": 42 }));
    assert_eq!((r.status, r.error_code().as_str()), (422, "invalid"));
    let r = s.post("/api/projects", &json!({ "name": "x", "owner": "me" }));
    assert_eq!(r.status, 422, "unknown field");
    let r = s.post("/api/projects", &json!({ "name": "   " }));
    assert_eq!((r.status, r.error_code().as_str()), (422, "invalid"));
    let project = new_project(&s, "p");
    let board = s
        .post(&format!("/api/projects/{project}/storyboards"), &json!({}))
        .json()["id"]
        .as_i64()
        .unwrap();
    let r = s.post(
        &format!("/api/storyboards/{board}/shots"),
        &json!({ "duration_s": "long" }),
    );
    assert_eq!(r.status, 422);
    let r = s.post(
        &format!("/api/storyboards/{board}/shots"),
        &json!({ "duration_s": -1.0 }),
    );
    assert_eq!(r.status, 422);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("duration_s")
    );
    let r = s.post("/api/jobs", &json!({ "kind": "mine.bitcoin" }));
    assert_eq!(r.status, 422);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("assets.reindex")
    );
    // Nothing half-made was stored.
    assert_eq!(s.get("/api/projects").json().as_array().unwrap().len(), 1);
    assert!(
        s.get(&format!("/api/storyboards/{board}/shots"))
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn unknown_ids_and_routes_are_404_and_bad_ids_400() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    for path in [
        "/api/projects/999",
        "/api/storyboards/999",
        "/api/shots/999",
        "/api/assets/999",
        "/api/assets/999/file",
        "/api/jobs/999",
        "/api/no-such-thing",
    ] {
        let r = s.get(path);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (404, "not_found"),
            "{path}"
        );
    }
    let r = s.get("/api/projects/999");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("project 999")
    );
    let r = s.get("/api/projects/abc");
    assert_eq!(r.status, 400);
    r.error_code();
    assert_eq!(s.post("/api/jobs/999/cancel", &json!({})).status, 404);
}

#[test]
fn oversized_uploads_are_refused_with_413_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), &["--max-upload-bytes", "50000"], |_| {});
    let big = png(3, 256); // ~200 KB of noise
    assert!(big.len() > 50_000);
    let r = s.upload("name=big.png", &big);
    assert_eq!((r.status, r.error_code().as_str()), (413, "too_large"));
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("50000")
    );
    let ok = s.upload("name=small.png", &png(4, 16));
    assert_eq!(ok.status, 201);
    assert_eq!(
        s.get("/api/assets/search").json().as_array().unwrap().len(),
        1
    );
    let staging = std::fs::read_dir(dir.path().join("assets/tmp"))
        .unwrap()
        .count();
    assert_eq!(staging, 0, "no partial file left behind");
}

#[test]
fn files_that_are_not_media_are_refused_with_415() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    let r = s.upload(
        "name=notes.png",
        b"just some text pretending to be a picture",
    );
    assert_eq!((r.status, r.error_code().as_str()), (415, "not_media"));
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("notes.png")
    );
    let mut truncated = png(5, 64);
    truncated.truncate(40);
    let r = s.upload("name=cut.png", &truncated);
    assert_eq!(r.status, 415);
    assert!(
        s.get("/api/assets/search")
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn path_tricks_in_file_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    for name in [
        "..%2F..%2Fetc%2Fpasswd.png",
        "..",
        "a%2Fb.png",
        "C%3A%5Cx.png",
    ] {
        let r = s.upload(&format!("name={name}"), &png(6, 8));
        assert_eq!(r.status, 422, "{name}: {}", r.json());
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("plain file name")
        );
    }
    assert!(
        s.get("/api/assets/search")
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(!dir.path().parent().unwrap().join("etc").exists());
}

#[test]
fn multipart_upload_takes_fields_and_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    let project = new_project(&s, "p");
    let boundary = "XyZzY";
    let mut body = Vec::new();
    for (name, value) in [("project_id", project.to_string()), ("tags", "a,b".into())] {
        body.extend(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .bytes(),
        );
    }
    body.extend(format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"shot.png\"\r\n\
         Content-Type: image/png\r\n\r\n"
    ).bytes());
    body.extend(png(7, 16));
    body.extend(format!("\r\n--{boundary}--\r\n").bytes());
    let r = s.upload_multipart(boundary, &body);
    assert_eq!(r.status, 201, "{}", r.json());
    assert_eq!(r.json()["original_name"], "shot.png");
    assert_eq!(r.json()["project_id"], project);
    assert_eq!(r.json()["tags"], json!(["a", "b"]));
}

#[test]
fn jobs_run_stream_events_and_cannot_be_cancelled_twice() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    s.upload("name=a.png&caption=hello", &png(8, 8));
    let r = s.post("/api/jobs", &json!({ "kind": "assets.reindex" }));
    assert_eq!(r.status, 201, "{}", r.json());
    let id = r.json()["id"].as_i64().unwrap();
    let job = s.wait_job(id, "success", |j| j["state"] == "succeeded");
    assert_eq!(job["result"]["indexed"], 1);
    assert_eq!(job["attempts"], 1);
    // The event stream of a finished job says so and ends.
    let events = s.get(&format!("/api/jobs/{id}/events"));
    assert_eq!(events.header("content-type"), Some("text/event-stream"));
    let text = String::from_utf8(events.bytes).unwrap();
    assert!(text.contains("event: state"), "{text}");
    assert!(text.contains("\"state\":\"succeeded\""), "{text}");
    let r = s.post(&format!("/api/jobs/{id}/cancel"), &json!({}));
    assert_eq!((r.status, r.error_code().as_str()), (409, "conflict"));
    let listed = s.get("/api/jobs?state=succeeded").json();
    assert_eq!(listed[0]["id"], id);
}

#[test]
fn the_cards_of_the_gpu_lane_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), &["--gpus", "cpu,cpu"], |_| {});
    let cards = s.get("/api/gpus");
    assert_eq!(cards.status, 200);
    let free = |card: &str| json!({ "card": card, "model": null, "busy": false, "job_id": null });
    assert_eq!(cards.json(), json!([free("cpu#0"), free("cpu#1")]));
}

#[test]
fn a_split_the_model_cannot_take_is_refused_unqueued_and_a_split_take_says_how_it_ran() {
    let dir = tempfile::tempdir().unwrap();
    models::install_tiny_model(dir.path(), "tiny-wan-t2v");
    let s = start_with(dir.path(), &["--gpus", "cpu,cpu"], |_| {});
    let (project, board) = s.storyboard("Split");
    let shot = s.post(
        &format!("/api/storyboards/{board}/shots"),
        &json!({ "prompt": "a lighthouse at dusk", "duration_s": 0.5, "seed": 7 }),
    );
    let shot = shot.json()["id"].as_i64().unwrap();
    let generate = |guidance: f64| {
        let render = json!({
            "height": 32, "width": 32, "steps": 2, "guidance": guidance,
            "split_cards": 2, "cfg_parallel": true,
        });
        json!({ "shot_id": shot, "render": render })
    };
    // The tiny Wan model computes no unconditional pass without guidance.
    let r = s.post(
        "/api/jobs",
        &json!({ "kind": "generate", "params": generate(1.0), "project_id": project }),
    );
    assert_eq!((r.status, r.error_code().as_str()), (422, "refused"));
    assert_eq!(
        r.json()["error"]["message"],
        "`tiny-wan-t2v` cannot be split across 2 cards with CFG parallel: CFG parallel needs \
         guidance (a guidance scale above 1)"
    );
    assert_eq!(s.get("/api/jobs").json(), json!([]), "nothing is queued");

    let job = s.run_job("generate", generate(3.0), project);
    assert_eq!(job["state"], "succeeded", "{job}");
    let generation = s
        .get(&format!(
            "/api/generations/{}",
            job["result"]["generation_id"]
        ))
        .json();
    let layout = &generation["layout"];
    assert_eq!(
        (&layout["split_cards"], &layout["cfg_parallel"]),
        (&json!(2), &json!(true)),
        "{generation}"
    );
    let devices: Vec<&Value> = layout["ranks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["device"])
        .collect();
    assert_eq!(devices, [&json!("cpu#0"), &json!("cpu#1")]);
    assert!(
        generation["params"].get("split_cards").is_none(),
        "{generation}"
    );
    let takes = &s.get(&format!("/api/shots/{shot}")).json()["takes"];
    assert_eq!(&takes[0]["layout"], layout);
}

#[test]
fn a_size_the_model_cannot_make_is_refused_unqueued_naming_the_multiple() {
    let dir = tempfile::tempdir().unwrap();
    models::install_tiny_model(dir.path(), "tiny-wan-t2v");
    let s = start(dir.path());
    let (project, board) = s.storyboard("Size");
    let shot = s.post(
        &format!("/api/storyboards/{board}/shots"),
        &json!({ "prompt": "a lighthouse at dusk", "duration_s": 0.5, "seed": 7 }),
    );
    let params = json!({
        "shot_id": shot.json()["id"],
        "render": { "height": 300, "width": 500, "steps": 2 },
    });
    let r = s.post(
        "/api/jobs",
        &json!({ "kind": "generate", "params": params, "project_id": project }),
    );
    assert_eq!((r.status, r.error_code().as_str()), (422, "refused"));
    assert_eq!(
        r.json()["error"]["message"],
        "`tiny-wan-t2v` cannot make it: height and width must be positive multiples of 16 (VAE \
         scale 8 x patch 2x2), got 500x300"
    );
    assert_eq!(s.get("/api/jobs").json(), json!([]), "nothing is queued");
}

#[test]
fn locked_database_gives_503_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    let kept = new_project(&s, "kept");
    let lock = rusqlite::Connection::open(dir.path().join("studio.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let r = s.post("/api/projects", &json!({ "name": "blocked" }));
    assert_eq!((r.status, r.error_code().as_str()), (503, "database_busy"));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("locked")
    );
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    assert_eq!(
        s.get(&format!("/api/projects/{kept}")).json()["name"],
        "kept"
    );
    new_project(&s, "after");
    assert_eq!(s.get("/api/projects").json().as_array().unwrap().len(), 2);
}

/// RLIMIT_FSIZE makes the kernel refuse writes past the limit with EFBIG, exactly the error a
/// full disk gives a writer (ENOSPC is mapped the same way).
#[test]
fn full_disk_gives_507_and_keeps_stored_assets() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    // Create the database first so the limit only bites on the upload.
    drop(start(dir.path()));
    let s = start_with(dir.path(), &[], |cmd| unsafe {
        cmd.pre_exec(|| {
            // Over the limit, write() fails with EFBIG instead of killing the process.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: 300_000,
                rlim_max: 300_000,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    });
    let small = png(9, 16);
    let r = s.upload("name=small.png", &small);
    assert_eq!(r.status, 201, "{}", r.json());
    let id = r.json()["id"].as_i64().unwrap();
    let big = png(10, 700); // ~800 KB
    let r = s.upload("name=big.png", &big);
    assert_eq!((r.status, r.error_code().as_str()), (507, "storage_full"));
    assert_eq!(s.get(&format!("/api/assets/{id}/file")).bytes, small);
    assert_eq!(
        s.get("/api/assets/search").json().as_array().unwrap().len(),
        1
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("assets/tmp"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(s.get("/api/health").status, 200);
}

/// The database file is made read-only for the server's user (as root, the server runs as
/// `nobody`, since root ignores file modes): reads work, writes get 503 and a clear message.
#[test]
fn read_only_database_serves_reads_and_refuses_writes() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = start(&data);
    let kept = new_project(&s, "kept");
    s.stop();

    let root = unsafe { libc::geteuid() } == 0;
    const NOBODY: u32 = 65534;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    if root {
        for entry in walk(&data) {
            std::os::unix::fs::lchown(&entry, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        std::os::unix::fs::lchown(data.join("studio.db"), Some(0), Some(0)).unwrap();
    }
    std::fs::set_permissions(
        data.join("studio.db"),
        std::fs::Permissions::from_mode(0o444),
    )
    .unwrap();

    // `nobody` may not reach the build's binary (a private CARGO_TARGET_DIR): it runs a copy.
    let program = dir.path().join("videosdgx");
    std::fs::copy(studio::BIN, &program).unwrap();
    let s = studio::start_program(&program, &data, &[], |cmd| {
        if root {
            cmd.uid(NOBODY).gid(NOBODY);
        }
    });
    let r = s.get(&format!("/api/projects/{kept}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"], "kept");
    let r = s.post("/api/projects", &json!({ "name": "new" }));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "database_read_only"),
        "{}",
        r.json()
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("read-only")
    );
    assert_eq!(s.get("/api/projects").json().as_array().unwrap().len(), 1);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_owned()];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
