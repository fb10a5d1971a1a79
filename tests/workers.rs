//! Workers on other machines, on one machine: a real `videosdgx serve --gpus none
//! --require-auth` on loopback and real `videosdgx worker --join` processes with CPU cards and
//! data directories of their own. A worker generates a shot whose video lands in the studio
//! (pulling the model it lacks from the studio, or from the hub the studio pulled it from), an
//! image-to-video shot with a LoRA runs on a
//! worker that fetches both files from the studio, two workers run two jobs at once, a worker
//! SIGKILLed mid-job leaves the job to the other one with nothing recorded twice, and the
//! protocol refuses what it must: a wrong token, another version, a late result, a path out of a
//! model's folder.

#[path = "support/fake_hub.rs"]
mod fake_hub;
#[path = "support/models.rs"]
mod models;
#[path = "support/studio.rs"]
mod studio;

use models::install_tiny_model;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use studio::{BIN, Server, start_with};

/// A new access token for the studio in `data`, before it starts.
fn token(data: &Path) -> String {
    let out = Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(["auth", "reset-token", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A studio with no card of its own and the tiny Wan model, demanding the token, whose
/// workers are dropped after `lease` seconds of silence.
fn studio(data: &Path, lease: &str) -> (Server, String) {
    install_tiny_model(data, "tiny-wan-t2v");
    let token = token(data);
    let server = start_with(data, &studio_args(lease), |_| {}).with_token(&token);
    (server, token)
}

fn studio_args(lease: &str) -> [&str; 5] {
    ["--gpus", "none", "--require-auth", "--worker-lease", lease]
}

/// A `videosdgx worker` process; killed when dropped.
struct Worker {
    child: Child,
    /// What it logged so far.
    log: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    fn start(server: &Server, token: &str, name: &str, data: &Path) -> Worker {
        Worker::start_with(server, token, name, data, &[], &[])
    }

    /// [`Worker::start`] with `extra` arguments and `env` set.
    fn start_with(
        server: &Server,
        token: &str,
        name: &str,
        data: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Worker {
        let mut child = Command::new(BIN)
            .arg("--data")
            .arg(data)
            .args(["--gpus", gpus(extra)])
            .args(["worker", "--join", &server.base, "--token", token])
            .args(["--name", name])
            .args(worker_args(extra))
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let prefix = format!("[{name}]");
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{prefix} {line}");
                kept.lock().unwrap().push(line);
            }
        });
        let worker = Worker { child, log };
        let lent = gpus(extra).split(',').count();
        wait_for(server, &format!("the cards of {name}"), |s| {
            let prefix = format!("{name}/cpu");
            cards(s)
                .iter()
                .filter(|c| c["card"].as_str().unwrap().starts_with(&prefix))
                .count()
                == lent
        });
        worker
    }

    /// How many lines it logged that contain `text`.
    fn logged(&self, text: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(text))
            .count()
    }

    fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "worker exited with {status}");
    }
}

/// The cards a worker started with `extra` lends: `--gpus G` among them, else one CPU lane.
fn gpus<'a>(extra: &[&'a str]) -> &'a str {
    extra
        .windows(2)
        .find(|pair| pair[0] == "--gpus")
        .map_or("cpu", |pair| pair[1])
}

/// `extra` without its `--gpus` (a global argument, given before the subcommand).
fn worker_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = Vec::new();
    let mut rest = extra.iter();
    while let Some(&arg) = rest.next() {
        if arg == "--gpus" {
            rest.next();
        } else {
            args.push(arg);
        }
    }
    args
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cards(server: &Server) -> Vec<Value> {
    let reply = server.get("/api/gpus");
    assert_eq!(reply.status, 200);
    reply.json().as_array().unwrap().clone()
}

fn wait_for(server: &Server, what: &str, done: impl Fn(&Server) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done(server) {
        assert!(Instant::now() < deadline, "never saw {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A shot of the tiny model in a new project: (project, shot).
fn shot(server: &Server, name: &str) -> (i64, i64) {
    let (project, board) = server.storyboard(name);
    let shot = server.post(
        &format!("/api/storyboards/{board}/shots"),
        &json!({ "prompt": "a paper boat on a canal", "duration_s": 0.25, "model": "tiny-wan-t2v" }),
    );
    assert_eq!(shot.status, 201, "{}", shot.json());
    (project, shot.json()["id"].as_i64().unwrap())
}

/// Submits the generation of `shot` at `size`x`size` in `steps` steps: the job's id.
fn generate(server: &Server, project: i64, shot: i64, size: u32, steps: u32) -> i64 {
    let reply = server.post(
        "/api/jobs",
        &json!({ "kind": "generate", "project_id": project, "params": { "shot_id": shot,
                 "render": { "height": size, "width": size, "steps": steps, "guidance": 3.0 } } }),
    );
    assert_eq!(reply.status, 201, "{}", reply.json());
    reply.json()["id"].as_i64().unwrap()
}

fn finished(server: &Server, job: i64) -> Value {
    server.wait_job(job, "finished", |j| {
        matches!(
            j["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        )
    })
}

/// POSTs `body` with `token`, not the server's: (status, JSON answer).
fn post_with_token(url: &str, token: &str, body: &Value) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut answer = agent
        .post(url)
        .header("authorization", format!("Bearer {token}"))
        .send_json(body)
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.body_mut().read_json().unwrap())
}

/// The studio's database, read directly.
fn db(data: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(data.join("studio.db")).unwrap()
}

fn count(data: &Path, sql: &str) -> i64 {
    db(data).query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn a_worker_generates_a_shot_for_a_studio_without_cards_with_the_model_pulled_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, token) = studio(&tmp.path().join("studio"), "15");
    assert!(cards(&server).is_empty(), "--gpus none: no card of its own");
    let worker_data = tmp.path().join("worker");
    let _worker = Worker::start(&server, &token, "spark-2", &worker_data);
    assert!(
        !worker_data.join("models/tiny-wan-t2v").exists(),
        "the worker starts without the model"
    );

    let (project, shot) = shot(&server, "Canal");
    let job = finished(&server, generate(&server, project, shot, 32, 2));
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["card"], "spark-2/cpu");
    // The worker pulled the model from the studio, whole and with its files' checksums.
    let pulled = worker_data.join("models/tiny-wan-t2v");
    for file in [
        "model_index.json",
        "transformer/diffusion_pytorch_model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(pulled.join(file)).unwrap(),
            std::fs::read(server.data.join("models/tiny-wan-t2v").join(file)).unwrap(),
            "{file}"
        );
    }
    // The video is the studio's: an asset, a take of the shot with its generation record.
    let asset = job["result"]["asset_id"].as_i64().unwrap();
    let video = server.get(&format!("/api/assets/{asset}/file"));
    assert_eq!(video.status, 200);
    assert_eq!(&video.bytes[4..8], b"ftyp", "an MP4");
    let generation = server.get(&format!(
        "/api/generations/{}",
        job["result"]["generation_id"]
    ));
    assert_eq!(generation.json()["model"], "tiny-wan-t2v");
    assert_eq!(generation.json()["params"]["steps"], 2);
    let taken = server.get(&format!("/api/shots/{shot}")).json();
    assert_eq!(taken["takes"].as_array().unwrap().len(), 1, "{taken}");
    assert_eq!(taken["status"], "generated");
    // The card keeps the model: the next generation loads nothing.
    assert_eq!(cards(&server)[0]["model"], "tiny-wan-t2v");
    let second = finished(&server, generate(&server, project, shot, 32, 2));
    assert_eq!(second["state"], "succeeded", "{second}");
    assert_eq!(count(&server.data, "SELECT count(*) FROM takes"), 2);

    // A studio that stops is not held up by the worker's poll; restarted, it knows no worker
    // until the worker, told so, registers again.
    let port: u16 = server.base.rsplit(':').next().unwrap().parse().unwrap();
    let data = server.data.clone();
    let stopping = Instant::now();
    server.stop();
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "stopping took {:?}",
        stopping.elapsed()
    );
    let server = studio::start_on(Path::new(BIN), port, &data, &studio_args("15"), |_| {})
        .with_token(&token);
    wait_for(&server, "the worker registered again", |s| {
        cards(s).iter().any(|c| c["card"] == "spark-2/cpu")
    });
    let third = finished(&server, generate(&server, project, shot, 32, 2));
    assert_eq!(third["state"], "succeeded", "{third}");
    assert_eq!(third["card"], "spark-2/cpu");
}

/// A fixture file's bytes.
fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(rel),
    )
    .unwrap()
}

/// A 32x32 PNG.
fn png() -> Vec<u8> {
    let image = image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 8, y as u8 * 8, 90]));
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    bytes.into_inner()
}

/// Generates two shots, sees every card busy at once, and returns the cards they ran on.
fn two_jobs_at_once(server: &Server) -> Vec<String> {
    let jobs: Vec<i64> = ["One", "Two"]
        .map(|name| {
            let (project, shot) = shot(server, name);
            generate(server, project, shot, 64, 60)
        })
        .into();
    wait_for(server, "every card busy", |s| {
        cards(s).iter().all(|c| c["busy"] == true)
    });
    let mut ran_on: Vec<String> = jobs
        .iter()
        .map(|&job| {
            let job = finished(server, job);
            assert_eq!(job["state"], "succeeded", "{job}");
            job["card"].as_str().unwrap().to_string()
        })
        .collect();
    ran_on.sort();
    ran_on
}

#[test]
fn a_worker_fetches_the_start_frame_and_loras_a_task_names_from_the_studio() {
    let tmp = tempfile::tempdir().unwrap();
    let studio_data = tmp.path().join("studio");
    install_tiny_model(&studio_data, "tiny-wan-i2v");
    let (server, token) = studio(&studio_data, "15");
    let worker_data = tmp.path().join("worker");
    let _worker = Worker::start(&server, &token, "spark-2", &worker_data);

    let (project, board) = server.storyboard("Canal");
    let created = |reply: studio::Reply| {
        assert!(matches!(reply.status, 200 | 201), "{}", reply.json());
        reply.json()
    };
    let new_shot = |model: &str, references: Value| {
        created(server.post(
            &format!("/api/storyboards/{board}/shots"),
            &json!({ "prompt": "a paper boat drifts away", "duration_s": 0.25,
                     "model": model, "references": references }),
        ))["id"]
            .as_i64()
            .unwrap()
    };
    let choose = |shot: i64, lora: &Value| {
        created(server.put(
            &format!("/api/shots/{shot}/loras"),
            &json!([{ "asset_id": lora["id"] }]),
        ))
    };
    let start = created(server.upload(&format!("name=start.png&project_id={project}"), &png()));
    let style = created(server.upload(
        &format!("name=canal-style.safetensors&project_id={project}"),
        &fixture("lora/kohya.safetensors"),
    ));
    let image_to_video = new_shot("tiny-wan-i2v", json!([start["id"]]));
    let with_lora = new_shot("tiny-wan-t2v", json!([]));
    choose(with_lora, &style);
    let studio_path = |asset: &Value| {
        let sha = asset["sha256"].as_str().unwrap();
        server.data.join("assets").join(&sha[..2]).join(sha)
    };
    for (shot, asset) in [(image_to_video, &start), (with_lora, &style)] {
        let job = finished(&server, generate(&server, project, shot, 32, 2));
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(job["card"], "spark-2/cpu");
        // The worker fetched the file the task named, checked by its SHA-256.
        let sha = asset["sha256"].as_str().unwrap();
        assert_eq!(
            std::fs::read(worker_data.join("worker-files").join(sha)).unwrap(),
            std::fs::read(studio_path(asset)).unwrap()
        );
        // The record names the studio's file, not the worker's copy.
        let generation = server
            .get(&format!(
                "/api/generations/{}",
                job["result"]["generation_id"]
            ))
            .json();
        let recorded = if shot == image_to_video {
            &generation["params"]["start_image"]
        } else {
            &generation["params"]["loras"][0]["path"]
        };
        assert_eq!(
            recorded.as_str(),
            studio_path(asset).to_str(),
            "{generation}"
        );
    }
    // A LoRA that does not fit fails the job by its name, as on the studio's own cards.
    let misfit = created(server.upload(
        &format!("name=i2v-only.safetensors&project_id={project}"),
        &fixture("lora/comfy_i2v.safetensors"),
    ));
    choose(image_to_video, &misfit);
    let reply = server.post(
        "/api/jobs",
        &json!({ "kind": "generate", "project_id": project, "max_attempts": 1,
                 "params": { "shot_id": image_to_video,
                             "render": { "height": 32, "width": 32, "steps": 2 } } }),
    );
    let job = finished(&server, reply.json()["id"].as_i64().unwrap());
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "LoRA asset {} \"i2v-only.safetensors\"",
            misfit["id"]
        )),
        "{error}"
    );
}

#[test]
fn a_worker_makes_a_characters_look_and_a_shots_keyframe() {
    let tmp = tempfile::tempdir().unwrap();
    let studio_data = tmp.path().join("studio");
    install_tiny_model(&studio_data, "tiny-flux2-klein");
    let (server, token) = studio(&studio_data, "15");
    let _worker = Worker::start(&server, &token, "spark-2", &tmp.path().join("worker"));
    let (project, shot) = shot(&server, "Canal");
    let board = server.get(&format!("/api/shots/{shot}")).json()["storyboard_id"].clone();
    let bible =
        json!({ "characters": [{ "id": "mara", "name": "Mara", "description": "a keeper" }] });
    let r = server.patch(
        &format!("/api/storyboards/{board}"),
        &json!({ "description": bible.to_string() }),
    );
    assert_eq!(r.status, 200, "{}", r.json());
    let render = json!({ "height": 32, "width": 32, "steps": 2, "guidance": 1.0 });
    for (kind, params) in [
        (
            "look",
            json!({ "storyboard_id": board, "character_id": "mara", "render": render }),
        ),
        ("keyframe", json!({ "shot_id": shot, "render": render })),
    ] {
        let job = server.run_job(kind, params, project);
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(job["card"], "spark-2/cpu", "{kind}");
        let result = &job["result"];
        let asset = result["asset_id"]
            .as_i64()
            .or(result["look"]["asset_id"].as_i64())
            .unwrap();
        let png = server.get(&format!("/api/assets/{asset}/file"));
        assert!(png.bytes.starts_with(b"\x89PNG"), "{kind}: a PNG");
        let generation = server
            .get(&format!(
                "/api/generations/{}",
                job["result"]["generation_id"]
            ))
            .json();
        assert_eq!(generation["model"], "tiny-flux2-klein", "{kind}");
        assert_eq!(generation["params"]["frames"], 1, "{kind}");
    }
    assert!(
        server.get(&format!("/api/shots/{shot}")).json()["keyframe_asset_id"].is_i64(),
        "the keyframe is the shot's"
    );
}

#[test]
fn a_worker_pulls_a_model_from_the_hub_the_studio_pulled_it_from_at_the_same_commit() {
    // A hub holding the tiny Wan model, which the studio pulls as `models pull` does.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let mut state = fake_hub::HubState::default();
    let model = fixtures.join("tiny-wan-t2v");
    let mut folders = vec![model.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else {
                let name = path
                    .strip_prefix(&model)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let body = std::fs::read(&path).unwrap();
                state
                    .files
                    .insert(name, fake_hub::FakeFile { body, lfs: true });
            }
        }
    }
    let hub = fake_hub::HubServer::start(state);
    let tmp = tempfile::tempdir().unwrap();
    let studio_data = tmp.path().join("studio");
    let pulled = Command::new(BIN)
        .arg("--data")
        .arg(&studio_data)
        .args(["models", "pull", fake_hub::REPO])
        .env("HF_ENDPOINT", &hub.endpoint)
        .env_remove("HF_TOKEN")
        .output()
        .unwrap();
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    let (server, token) = studio(&studio_data, "15");
    let studio_downloads = hub.requests_for("/model_index.json").len();

    let worker_data = tmp.path().join("worker");
    let _worker = Worker::start_with(
        &server,
        &token,
        "spark-2",
        &worker_data,
        &["--models-from", "hub"],
        &[("HF_ENDPOINT", &hub.endpoint)],
    );
    let (project, board) = server.storyboard("Canal");
    let new_shot = |model: &str| {
        server
            .post(
                &format!("/api/storyboards/{board}/shots"),
                &json!({ "prompt": "a paper boat", "duration_s": 0.25, "model": model }),
            )
            .json()["id"]
            .as_i64()
            .unwrap()
    };
    let job = finished(
        &server,
        generate(&server, project, new_shot(fake_hub::REPO), 32, 2),
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["card"], "spark-2/cpu");
    assert!(
        hub.requests_for("/model_index.json").len() > studio_downloads,
        "the worker downloaded from the hub"
    );
    let source: Value = serde_json::from_slice(
        &std::fs::read(
            worker_data
                .join("models")
                .join(fake_hub::REPO)
                .join(".videosdgx-source.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(source["commit"], fake_hub::COMMIT);

    // A model copied into the studio by hand has no hub to come from: the job says so.
    let reply = server.post(
        "/api/jobs",
        &json!({ "kind": "generate", "project_id": project, "max_attempts": 1,
                 "params": { "shot_id": new_shot("tiny-wan-t2v"),
                             "render": { "height": 32, "width": 32, "steps": 2 } } }),
    );
    let job = finished(&server, reply.json()["id"].as_i64().unwrap());
    assert_eq!(job["state"], "failed");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains("copied into the studio, not pulled from a hub"),
        "{error}"
    );
}

/// Two workers on one machine (one per GPU there) share its data directory: both want the
/// model it lacks at once, and it is pulled once.
#[test]
fn two_workers_run_two_jobs_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, token) = studio(&tmp.path().join("studio"), "15");
    let shared = tmp.path().join("machine");
    let workers: Vec<Worker> = ["w1", "w2"]
        .iter()
        .map(|name| Worker::start(&server, &token, name, &shared))
        .collect();
    assert_eq!(two_jobs_at_once(&server), ["w1/cpu", "w2/cpu"]);
    let pulls: usize = workers.iter().map(|w| w.logged("pulling the model")).sum();
    assert_eq!(pulls, 1, "the second found the model the first pulled");
}

#[test]
fn a_worker_lending_two_cards_runs_two_jobs_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, token) = studio(&tmp.path().join("studio"), "15");
    let data = tmp.path().join("w");
    install_tiny_model(&data, "tiny-wan-t2v");
    let _worker = Worker::start_with(&server, &token, "w", &data, &["--gpus", "cpu,cpu"], &[]);
    assert_eq!(two_jobs_at_once(&server), ["w/cpu#0", "w/cpu#1"]);
}

/// A studio under `dir` with the worker lease `lease`, two workers `w1` and `w2`, and a long
/// generation that `w1` (the first free card: both are empty) is denoising.
fn a_job_denoising_on_w1_of_two(dir: &Path, lease: &str) -> (Server, Vec<Worker>, i64) {
    let (server, token) = studio(&dir.join("studio"), lease);
    let workers = ["w1", "w2"]
        .iter()
        .map(|name| {
            let data = dir.join(name);
            install_tiny_model(&data, "tiny-wan-t2v");
            Worker::start(&server, &token, name, &data)
        })
        .collect();
    let (project, shot) = shot(&server, "Canal");
    let job = generate(&server, project, shot, 64, 200);
    server.wait_job(job, "denoising on w1", |j| {
        j["card"] == "w1/cpu" && j["progress"]["stage"] == "denoising"
    });
    (server, workers, job)
}

#[test]
fn a_worker_killed_mid_job_leaves_the_job_to_another_and_nothing_is_recorded_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, mut workers, job) = a_job_denoising_on_w1_of_two(tmp.path(), "3");
    workers.remove(0).sigkill();

    let job = finished(&server, job);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["card"], "w2/cpu");
    assert_eq!(job["attempts"], 2, "the cut-off attempt, then w2's");
    assert!(
        cards(&server).iter().all(|c| c["card"] != "w1/cpu"),
        "the silent worker's card left"
    );
    // Exactly one output: one asset, one generation record, one take; the database is sound.
    let data = &server.data;
    assert_eq!(count(data, "SELECT count(*) FROM assets"), 1);
    assert_eq!(count(data, "SELECT count(*) FROM generations"), 1);
    assert_eq!(count(data, "SELECT count(*) FROM takes"), 1);
    let integrity: String = db(data)
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
}

#[test]
fn an_output_the_studio_refuses_fails_the_task_rather_than_leave_it_waiting() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("studio");
    install_tiny_model(&data, "tiny-wan-t2v");
    let token = token(&data);
    let mut args = studio_args("15").to_vec();
    args.extend(["--max-upload-bytes", "100"]);
    let server = start_with(&data, &args, |_| {}).with_token(&token);
    let worker_data = tmp.path().join("worker");
    install_tiny_model(&worker_data, "tiny-wan-t2v");
    let _worker = Worker::start(&server, &token, "spark-2", &worker_data);
    let (project, shot) = shot(&server, "Canal");
    let reply = server.post(
        "/api/jobs",
        &json!({ "kind": "generate", "project_id": project, "max_attempts": 1,
                 "params": { "shot_id": shot,
                             "render": { "height": 32, "width": 32, "steps": 2 } } }),
    );
    let job = finished(&server, reply.json()["id"].as_i64().unwrap());
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains("the studio refused the output") || error.contains("cannot send the output"),
        "{error}"
    );
}

#[test]
fn a_worker_that_stops_hands_its_job_back_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    // A lease far longer than the test: only the worker's leaving can hand the job back.
    let (server, mut workers, job) = a_job_denoising_on_w1_of_two(tmp.path(), "600");
    workers.remove(0).stop();
    assert!(
        cards(&server).iter().all(|c| c["card"] != "w1/cpu"),
        "a worker that left has no cards"
    );
    let job = finished(&server, job);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["card"], "w2/cpu");
    assert_eq!(job["attempts"], 2);
    assert_eq!(count(&server.data, "SELECT count(*) FROM takes"), 1);
}

/// The worker protocol spoken by the test itself, as a worker that misbehaves would.
#[test]
fn the_protocol_refuses_wrong_tokens_other_versions_late_results_and_escaping_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, _token) = studio(&tmp.path().join("studio"), "1");
    let version = server.get("/api/health").json()["version"]
        .as_str()
        .unwrap()
        .to_string();
    let join = |version: &str| {
        server.post(
            "/api/workers",
            &json!({ "name": "ghost", "cards": ["cpu"], "version": version }),
        )
    };

    // A wrong token is refused in the API's error shape, by the worker command too.
    let (status, body) = post_with_token(
        &format!("{}/api/workers", server.base),
        "vdgx_wrong",
        &json!({ "name": "ghost", "cards": ["cpu"], "version": version }),
    );
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    let refused = Command::new(BIN)
        .arg("--data")
        .arg(tmp.path().join("w"))
        .args([
            "--gpus",
            "cpu",
            "worker",
            "--join",
            &server.base,
            "--token",
            "vdgx_wrong",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("refused the access token"), "{said}");
    let nowhere = Command::new(BIN)
        .arg("--data")
        .arg(tmp.path().join("w"))
        .args([
            "--gpus",
            "cpu",
            "worker",
            "--join",
            "http://127.0.0.1:9",
            "--token",
            "t",
        ])
        .output()
        .unwrap();
    assert!(!nowhere.status.success());
    let said = String::from_utf8_lossy(&nowhere.stderr);
    assert!(
        said.contains("cannot reach the studio at http://127.0.0.1:9"),
        "{said}"
    );
    let no_url = Command::new(BIN)
        .arg("--data")
        .arg(tmp.path().join("w"))
        .args(["--gpus", "cpu", "worker", "--join", "studio.local:7860"])
        .output()
        .unwrap();
    assert!(!no_url.status.success());
    let said = String::from_utf8_lossy(&no_url.stderr);
    assert!(
        said.contains("give the studio's URL, e.g. http://"),
        "{said}"
    );

    // Another version is refused, saying so; so are names that are not names.
    let other = join("0.0.1");
    assert_eq!(other.status, 409);
    assert_eq!(other.error_code(), "incompatible_version");
    for (name, card) in [
        ("", "cpu"),
        ("a/b", "cpu"),
        ("ghost", "<b>cpu</b>"),
        ("ghost", ""),
    ] {
        let bad = server.post(
            "/api/workers",
            &json!({ "name": name, "cards": [card], "version": version }),
        );
        assert_eq!(bad.status, 422, "{name:?} {card:?}");
        assert_eq!(bad.error_code(), "invalid");
    }
    assert!(cards(&server).is_empty());

    // A task taken, then silence past the lease: the task goes back to the queue and what the
    // worker sends about it afterwards is refused.
    let joined = join(&version);
    assert_eq!(joined.status, 201, "{}", joined.json());
    let id = joined.json()["id"].as_str().unwrap().to_string();
    let (project, shot) = shot(&server, "Ghost");
    let job = generate(&server, project, shot, 32, 2);
    let task = server.post(&format!("/api/workers/{id}/cards/0/next"), &json!(null));
    assert_eq!(
        task.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&task.bytes)
    );
    let task_id = task.json()["task_id"].as_str().unwrap().to_string();
    assert_eq!(task.json()["task"]["model"], "tiny-wan-t2v");
    let progress = json!({ "stage": "denoising", "step": 1, "total": 2 });
    let reported = server.post(
        &format!("/api/workers/{id}/tasks/{task_id}/progress"),
        &progress,
    );
    assert_eq!(reported.status, 204);
    // Heartbeats keep it alive meanwhile.
    server.wait_job(job, "progress from the worker", |j| {
        let beat = server.post(&format!("/api/workers/{id}/heartbeat"), &json!(null));
        assert_eq!(beat.status, 204);
        j["progress"]["stage"] == "denoising" && j["card"] == "ghost/cpu"
    });
    let queued_again = server.wait_job(job, "queued again", |j| j["state"] == "queued");
    assert!(
        queued_again["error"]
            .as_str()
            .unwrap()
            .contains("worker `ghost` stopped answering"),
        "{queued_again}"
    );
    assert_eq!(queued_again["attempts"], 1);
    for (method, path, body) in [
        (
            "POST",
            format!("/api/workers/{id}/tasks/{task_id}/progress"),
            progress.to_string(),
        ),
        (
            "PUT",
            format!("/api/workers/{id}/tasks/{task_id}/output"),
            // Large: refused before it is read, it is still read, so the answer arrives.
            "not a video".repeat(1 << 20),
        ),
        (
            "POST",
            format!("/api/workers/{id}/tasks/{task_id}/outcome"),
            json!({ "failed": { "error": "late" } }).to_string(),
        ),
    ] {
        let late = server.send(
            method,
            &path,
            &[("content-type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(late.status, 404, "{path}: {}", late.json());
        assert_eq!(late.error_code(), "not_found", "register again");
    }
    assert_eq!(count(&server.data, "SELECT count(*) FROM assets"), 0);
    assert!(cards(&server).is_empty(), "the ghost's card left");
    assert_eq!(server.delete(&format!("/api/workers/{id}")).status, 404);

    // A worker that answers but whose task was cancelled hears it on its next report.
    let joined = join(&version);
    let id = joined.json()["id"].as_str().unwrap().to_string();
    let task = server.post(&format!("/api/workers/{id}/cards/0/next"), &json!(null));
    assert_eq!(task.status, 200);
    let task_id = task.json()["task_id"].as_str().unwrap().to_string();
    assert_eq!(
        server
            .post(&format!("/api/jobs/{job}/cancel"), &json!(null))
            .status,
        200
    );
    // Its reports keep it alive until one is refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    let told = loop {
        let told = server.post(
            &format!("/api/workers/{id}/tasks/{task_id}/progress"),
            &progress,
        );
        if told.status != 204 {
            break told;
        }
        assert!(
            Instant::now() < deadline,
            "the cancel never reached the worker"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(told.status, 409);
    assert_eq!(told.error_code(), "conflict");
    let cancelled = server.wait_job(job, "cancelled", |j| j["state"] == "cancelled");
    assert_eq!(cancelled["attempts"], 2);

    // Model files: served by name from the model's folder, never from outside it.
    let listing = server
        .get("/api/hub/api/models/tiny-wan-t2v/revision/main")
        .json();
    assert!(
        listing["siblings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["rfilename"] == "model_index.json"),
        "{listing}"
    );
    let file = server.get("/api/hub/tiny-wan-t2v/resolve/main/model_index.json");
    assert_eq!(file.status, 200);
    assert_eq!(
        file.bytes,
        std::fs::read(server.data.join("models/tiny-wan-t2v/model_index.json")).unwrap()
    );
    for escape in [
        "/api/hub/tiny-wan-t2v/resolve/main/..%2F..%2Fstudio.db",
        "/api/hub/tiny-wan-t2v/resolve/main/%2E%2E/%2E%2E/studio.db",
        "/api/hub/tiny-wan-t2v/resolve/main/../../studio.db",
    ] {
        let refused = server.get(escape);
        assert!(
            matches!(refused.status, 400 | 404),
            "{escape}: {}",
            refused.status
        );
        assert!(!refused.bytes.starts_with(b"SQLite"), "{escape}");
        let code = refused.error_code();
        assert!(
            code == "bad_path" || code == "not_found",
            "{escape}: {code}"
        );
    }
    let missing = server.get("/api/hub/nope/resolve/main/model_index.json");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "not_found");
    let unauthenticated = studio::fetch(&format!(
        "{}/api/hub/tiny-wan-t2v/resolve/main/model_index.json",
        server.base
    ));
    assert_eq!(unauthenticated.status, 401);
}

#[test]
fn a_render_without_cards_of_its_own_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("script.md");
    std::fs::write(
        &script,
        "# Boats\n\n## EXT. CANAL - DAY\n\nA paper boat drifts.\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--data")
        .arg(tmp.path().join("data"))
        .args(["--gpus", "none", "render"])
        .arg(&script)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("--gpus none leaves it none"), "{said}");
}
