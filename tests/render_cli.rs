//! `videosdgx render` end to end on the CPU on a fresh data directory holding only the tiny
//! random Wan model (tests/fixtures/tiny-wan-t2v; the first-party plugins come with it), a two-shot
//! screenplay planned, expanded, generated and stitched into one MP4 whose length is what the
//! stitcher's edit says, with every step run and recorded as a job of the studio's queue and
//! every shot's generation recorded in the studio database; Ctrl-C cancels the running job.

#[path = "support/models.rs"]
mod models;

use models::install_tiny_model;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const SCRIPT: &str = "\
# Paper Boats

## EXT. CANAL - DAY

WIDE SHOT: MARA kneels at the edge of the canal and sets a paper boat on the water.

CLOSE ON the paper boat as it drifts away under the bridge.
";

fn videosdgx(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_videosdgx"))
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .expect("running videosdgx")
}

fn succeeded(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A data dir (inside the returned temp dir) with only the tiny model: the first-party plugins
/// come with the binary.
fn studio_with_model() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    install_tiny_model(&data, "tiny-wan-t2v");
    (tmp, data)
}

/// `videosdgx render SCRIPT --out OUT` at `size` x `size` pixels, to be spawned by the caller.
fn render_command(
    data: &Path,
    script: &Path,
    out: &Path,
    size: &str,
    steps: &str,
    guidance: &str,
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_videosdgx"));
    command
        .arg("--data")
        .arg(data)
        .arg("render")
        .arg(script)
        .arg("--out")
        .arg(out)
        .args([
            "--height",
            size,
            "--width",
            size,
            "--steps",
            steps,
            "--guidance",
            guidance,
        ]);
    command
}

/// Frames a duration in milliseconds takes at `fps`.
fn frames(ms: &Value, fps: f64) -> i64 {
    (ms.as_f64().unwrap() / 1000.0 * fps).round() as i64
}

#[test]
fn render_plans_generates_and_stitches_a_screenplay_into_one_mp4() {
    let (tmp, data) = studio_with_model();
    let script = tmp.path().join("paper-boats.md");
    std::fs::write(&script, SCRIPT).unwrap();
    let out = tmp.path().join("final/paper-boats.mp4");

    let output = videosdgx(
        &data,
        &[
            "render",
            script.to_str().unwrap(),
            "--project",
            "Boats",
            "--out",
            out.to_str().unwrap(),
            "--height",
            "32",
            "--width",
            "32",
            "--steps",
            "2",
            "--guidance",
            "1",
            "--model",
            "tiny-wan-t2v",
            "--json",
        ],
    );
    let progress = String::from_utf8_lossy(&output.stderr).to_string();
    let report: Value = serde_json::from_str(&succeeded(output)).unwrap();
    for stage in [
        "plan:",
        "expand",
        "shot 1/2: attempt 1/1: generating: denoising",
        "shot 2/2",
        "stitch:",
    ] {
        assert!(
            progress.contains(stage),
            "no `{stage}` in progress:\n{progress}"
        );
    }

    // Without a language model that sees, takes go unreviewed: one attempt each, said once.
    let note = report["review_note"].as_str().unwrap();
    assert!(
        note.starts_with("reviews are off: no language model is installed"),
        "{note}"
    );

    // Two shots, each generated from its expanded prompt at 4k+1 frames.
    let shots = report["shots"].as_array().unwrap();
    assert_eq!(shots.len(), 2, "{report}");
    for shot in shots {
        assert_eq!(shot["frames"].as_i64().unwrap() % 4, 1, "{shot}");
        let prompt = shot["prompt"].as_str().unwrap();
        assert!(prompt.contains("Exterior, canal"), "{prompt}");
    }

    // The file on disk is the stitched edit: a title card, then both shots joined by a cut.
    let info = videosdgx_engine::video::probe(&out).unwrap();
    assert_eq!((info.width, info.height), (32, 32));
    let timeline = &report["timeline"];
    let items = timeline["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{timeline}");
    assert_eq!(items[0]["Title"]["text"], "Paper Boats");
    let fps = timeline["fps"].as_f64().unwrap();
    let mut expected = 0;
    for item in items {
        let (body, kind) = match (item.get("Clip"), item.get("Title")) {
            (Some(clip), _) => (clip, clip["transition_in"]["kind"].as_str().unwrap()),
            (None, Some(title)) => (title, "Cut"),
            _ => panic!("unknown timeline item {item}"),
        };
        assert_ne!(kind, "Crossfade", "one scene: nothing overlaps");
        expected += frames(&body["duration_ms"], fps);
    }
    assert_eq!(info.frames as i64, expected, "{timeline}");
    assert_eq!(report["frames"].as_i64().unwrap(), expected);

    // Every shot has its generation record and take; the final video is a project asset.
    let db = rusqlite::Connection::open(data.join("studio.db")).unwrap();
    for shot in shots {
        let (model, asset): (String, i64) = db
            .query_row(
                "SELECT model, asset_id FROM generations WHERE id = ?1 AND shot_id = ?2",
                [shot["generation_id"].as_i64(), shot["shot_id"].as_i64()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(model, "tiny-wan-t2v");
        assert_eq!(Some(asset), shot["asset_id"].as_i64());
        let chosen: Option<i64> = db
            .query_row(
                "SELECT takes.asset_id FROM shots JOIN takes ON takes.id = shots.chosen_take_id
                 WHERE shots.id = ?1",
                [shot["shot_id"].as_i64()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(chosen, Some(asset));
    }
    let (kind, project): (String, String) = db
        .query_row(
            "SELECT assets.kind, projects.name FROM assets JOIN projects ON projects.id = assets.project_id
             WHERE assets.id = ?1",
            [report["asset_id"].as_i64()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((kind.as_str(), project.as_str()), ("video", "Boats"));

    // Every step ran on the job queue as the job kinds the web UI submits, each once.
    let mut stmt = db
        .prepare("SELECT kind, state, attempts FROM jobs ORDER BY id")
        .unwrap();
    let jobs: Vec<(String, String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let kinds: Vec<&str> = jobs.iter().map(|j| j.0.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "plan", "expand", "expand", "shoot", "generate", "shoot", "generate", "stitch"
        ]
    );
    assert!(
        jobs.iter().all(|j| (j.1.as_str(), j.2) == ("succeeded", 1)),
        "{jobs:?}"
    );
    for shot in shots {
        let job: i64 = db
            .query_row(
                "SELECT job_id FROM generations WHERE id = ?1",
                [shot["generation_id"].as_i64()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(Some(job), shot["attempts"][0]["job_id"].as_i64(), "{shot}");
        assert_eq!(shot["attempts"].as_array().unwrap().len(), 1, "{shot}");
        assert!(shot["attempts"][0]["review"].is_null(), "{shot}");
        assert!(shot["attention"].is_null(), "{shot}");
    }
}

#[test]
fn a_render_on_two_cards_records_the_card_of_every_generation() {
    let (tmp, data) = studio_with_model();
    let script = tmp.path().join("paper-boats.md");
    std::fs::write(&script, SCRIPT).unwrap();
    let out = tmp.path().join("paper-boats.mp4");
    let mut render = render_command(&data, &script, &out, "32", "2", "1");
    let output = render
        .args(["--gpus", "cpu,cpu", "--json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_str(&succeeded(output)).unwrap();
    assert_eq!(report["shots"].as_array().unwrap().len(), 2, "{report}");

    // Generations name the lane they ran on; jobs that held no card name none.
    let jobs = jobs_and_cards(&data);
    let mut kinds: Vec<&str> = jobs.iter().map(|j| j.0.as_str()).collect();
    kinds[3..7].sort();
    assert_eq!(
        kinds,
        [
            "plan", "expand", "expand", "generate", "generate", "shoot", "shoot", "stitch"
        ]
    );
    for (kind, card) in &jobs {
        match kind.as_str() {
            "generate" => assert!(
                matches!(card.as_deref(), Some("cpu#0" | "cpu#1")),
                "{jobs:?}"
            ),
            _ => assert_eq!(card, &None, "{jobs:?}"),
        }
    }

    // Cards that are not there are refused before anything is queued.
    let output = videosdgx(
        &data,
        &["--gpus", "cuda:7", "render", script.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("no CUDA device 7"), "{err}");
    assert_eq!(jobs_and_cards(&data).len(), 8);
}

#[test]
fn a_render_split_across_two_cards_runs_each_generation_on_both() {
    let (tmp, data) = studio_with_model();
    let script = tmp.path().join("paper-boats.md");
    std::fs::write(&script, SCRIPT).unwrap();
    let out = tmp.path().join("paper-boats.mp4");
    // More cards than the studio has are refused before anything is queued.
    let output = render_command(&data, &script, &out, "32", "2", "1")
        .args(["--gpus", "cpu,cpu", "--split-cards", "3"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("split_cards: 3 cards for one generation, and the studio has 2 of its own"),
        "{err}"
    );
    // So are layouts the model cannot take: the tiny model has two heads, and without guidance
    // (--guidance 1 here) there is no unconditional pass to put on other cards.
    for (gpus, split, expected) in [
        (
            "cpu,cpu,cpu",
            &["--split-cards", "3"][..],
            "`tiny-wan-t2v` cannot be split across 3 cards: 2 attention heads cannot be split \
             across 3 ranks",
        ),
        (
            "cpu,cpu",
            &["--split-cards", "2", "--cfg-parallel"][..],
            "`tiny-wan-t2v` cannot be split across 2 cards with CFG parallel: CFG parallel \
             needs guidance",
        ),
    ] {
        let output = render_command(&data, &script, &out, "32", "2", "1")
            .args(["--gpus", gpus])
            .args(split)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && err.contains(expected), "{err}");
    }
    assert!(jobs_and_cards(&data).is_empty(), "nothing is queued");

    let output = render_command(&data, &script, &out, "32", "2", "1")
        .args(["--gpus", "cpu,cpu", "--split-cards", "2", "--json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_str(&succeeded(output)).unwrap();
    assert_eq!(report["shots"].as_array().unwrap().len(), 2, "{report}");
    let generations: Vec<Option<String>> = jobs_and_cards(&data)
        .into_iter()
        .filter(|(kind, _)| kind == "generate")
        .map(|(_, card)| card)
        .collect();
    assert_eq!(generations, vec![Some("cpu#0+cpu#1".to_string()); 2]);
}

/// Every job's kind and the card(s) it ran on, in the order they were queued.
fn jobs_and_cards(data: &Path) -> Vec<(String, Option<String>)> {
    let db = rusqlite::Connection::open(data.join("studio.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT kind, card FROM jobs ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn ctrl_c_cancels_the_running_generation_job_and_fails_the_render() {
    let (tmp, data) = studio_with_model();
    let script = tmp.path().join("paper-boats.md");
    std::fs::write(&script, SCRIPT).unwrap();
    let out = tmp.path().join("never.mp4");
    // Enough denoising steps that the interrupt lands mid-generation.
    let mut child = render_command(&data, &script, &out, "64", "200", "5")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the render ended before generating:\n{seen}"
        );
        seen.push_str(&line);
        if line.starts_with("shot 1/2: attempt 1/1: generating: denoising") {
            break;
        }
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    stderr.read_to_string(&mut seen).unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "{seen}");
    assert!(
        seen.contains("error: stopped: shot 1/2 (job 4) was cancelled"),
        "{seen}"
    );
    assert!(!out.exists());

    // The shot's job and the generation it waited for are recorded as cancelled, the shot is
    // left a draft without a take, and nothing after them ran.
    let db = rusqlite::Connection::open(data.join("studio.db")).unwrap();
    for (id, kind) in [(4, "shoot"), (5, "generate")] {
        let (found, state): (String, String) = db
            .query_row("SELECT kind, state FROM jobs WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((found.as_str(), state.as_str()), (kind, "cancelled"));
    }
    let later: i64 = db
        .query_row("SELECT count(*) FROM jobs WHERE id > 5", [], |r| r.get(0))
        .unwrap();
    assert_eq!(later, 0);
    let (status, takes): (String, i64) = db
        .query_row(
            "SELECT status, (SELECT count(*) FROM takes) FROM shots ORDER BY id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((status.as_str(), takes), ("draft", 0));
}

#[test]
fn render_refuses_a_missing_model_or_a_running_server_before_queueing_anything() {
    let (tmp, data) = studio_with_model();
    let script = tmp.path().join("s.md");
    std::fs::write(&script, SCRIPT).unwrap();
    let jobs = || -> i64 {
        let db = rusqlite::Connection::open(data.join("studio.db")).unwrap();
        db.query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
            .unwrap()
    };

    let out = videosdgx(
        &data,
        &["render", script.to_str().unwrap(), "--model", "nope"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model `nope` is not installed (installed: tiny-wan-t2v)"),
        "{err}"
    );
    assert_eq!(jobs(), 0);

    // A server holds the queue's lock: render does not run its jobs beside it.
    let lock = std::fs::File::create(data.join("serve.lock")).unwrap();
    lock.try_lock().unwrap();
    let out = videosdgx(&data, &["render", script.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "another `videosdgx serve` or `videosdgx render` is already running the jobs of"
        ),
        "{err}"
    );
    assert_eq!(jobs(), 0);
}

#[test]
fn a_failed_generation_job_ends_the_render_with_an_error_naming_the_shot() {
    let (tmp, data) = studio_with_model();
    let weights = data.join("models/tiny-wan-t2v/transformer/diffusion_pytorch_model.safetensors");
    std::fs::write(&weights, b"not safetensors").unwrap();
    let script = tmp.path().join("s.md");
    std::fs::write(&script, SCRIPT).unwrap();
    let out = tmp.path().join("s.mp4");

    let output = videosdgx(
        &data,
        &[
            "render",
            script.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--height",
            "32",
            "--width",
            "32",
            "--steps",
            "2",
        ],
    );
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains(
            "error: shot 1/2 (job 4) failed: attempt 1/1: generating (job 5) failed: loading \
             model `tiny-wan-t2v`"
        ),
        "{err}"
    );
    assert!(!out.exists());
    // The job used its attempts, its error is recorded, the shot says it failed, and the
    // render went no further.
    let db = rusqlite::Connection::open(data.join("studio.db")).unwrap();
    let (state, attempts, error): (String, i64, String) = db
        .query_row(
            "SELECT state, attempts, error FROM jobs WHERE id = 5",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((state.as_str(), attempts), ("failed", 3));
    assert!(error.contains("loading model"), "{error}");
    let (later, status): (i64, String) = db
        .query_row(
            "SELECT (SELECT count(*) FROM jobs WHERE id > 5), status FROM shots ORDER BY id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((later, status.as_str()), (0, "failed"));
}

#[test]
fn render_finishes_when_its_stderr_is_closed() {
    let (tmp, data) = studio_with_model();
    let script = tmp.path().join("s.md");
    std::fs::write(&script, SCRIPT).unwrap();
    let out = tmp.path().join("s.mp4");
    // As under `2>&1 | head`: every write to stderr fails. The job workers log (info level)
    // and must not die of it, or the render would wait for its next job forever.
    let mut child = render_command(&data, &script, &out, "32", "2", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the render hung with its stderr closed");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(out.exists());
}

#[test]
fn render_without_a_planner_says_what_to_install() {
    let (tmp, data) = studio_with_model();
    let script = tmp.path().join("s.md");
    std::fs::write(&script, SCRIPT).unwrap();
    succeeded(videosdgx(
        &data,
        &["plugins", "uninstall", "storyboard-planner"],
    ));
    let out = videosdgx(&data, &["render", script.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no enabled planner plugin is installed"),
        "{err}"
    );
}

#[test]
fn an_example_project_renders_on_a_fresh_data_directory_with_a_distill_preset() {
    let (tmp, data) = studio_with_model();
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../projects/aurora-headphones");
    let out = tmp.path().join("aurora.mp4");
    let output = render_command(&data, &project, &out, "32", "2", "1")
        .args([
            "--model",
            "tiny-wan-t2v",
            "--json",
            "--preset",
            "wan2.1-distill-4step",
        ])
        .output()
        .unwrap();
    let report: Value = serde_json::from_str(&succeeded(output)).unwrap();
    assert!(report["shots"].as_array().unwrap().len() >= 2, "{report}");
    let info = videosdgx_engine::video::probe(&out).unwrap();
    assert_eq!(info.frames as i64, report["frames"].as_i64().unwrap());
    // Every shot ran the distilled schedule, and its generation record says so.
    let db = rusqlite::Connection::open(data.join("studio.db")).unwrap();
    let mut records = db.prepare("SELECT params FROM generations").unwrap();
    for params in records.query_map([], |r| r.get::<_, String>(0)).unwrap() {
        let params: Value = serde_json::from_str(&params.unwrap()).unwrap();
        assert_eq!(
            params["denoising_steps"],
            serde_json::json!([1000, 750, 500, 250])
        );
        assert_eq!(
            (params["steps"].as_u64(), params["guidance"].as_f64()),
            (Some(4), Some(1.0))
        );
    }
}

#[test]
fn an_ltx2_render_delivers_a_piece_with_continuous_sound() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    install_tiny_model(&data, "tiny-ltx2");
    let script = tmp.path().join("paper-boats.md");
    std::fs::write(&script, SCRIPT).unwrap();
    let out = tmp.path().join("boats.mp4");
    let output = render_command(&data, &script, &out, "32", "2", "3")
        .args(["--model", "tiny-ltx2", "--json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_str(&succeeded(output)).unwrap();
    assert_eq!(report["shots"].as_array().unwrap().len(), 2, "{report}");
    // The stitcher planned at LTX-2's rate, and every take and the piece carry sound as long as
    // their pictures.
    let mut piece = videosdgx_engine::video::Mp4Reader::open(&out).unwrap();
    assert_eq!(piece.fps, 24.0);
    let seconds = piece.duration_s;
    let sound = piece.read_audio().unwrap().expect("the piece has sound");
    assert!(
        (sound.duration_s() - seconds).abs() < 0.05,
        "{} vs {seconds}",
        sound.duration_s()
    );
    // In 50 ms windows: silence under the 2.5 s title card, sound everywhere after it.
    let window = usize::from(sound.channels) * sound.sample_rate as usize / 20;
    let silent: Vec<bool> = sound
        .samples
        .chunks(window)
        .map(|chunk| chunk.iter().all(|s| *s == 0.0))
        .collect();
    let title = &piece.metadata["timeline"]["segments"][0];
    assert_eq!(title["kind"], "title", "{}", piece.metadata);
    let title_windows = (title["duration"]["seconds"].as_f64().unwrap() * 20.0).round() as usize;
    assert!(silent[..title_windows].iter().all(|s| *s), "{silent:?}");
    assert!(
        !silent[title_windows..].iter().any(|s| *s),
        "a gap in the shots' sound: {silent:?}"
    );
}

/// Copies the tiny Compact x2 upscaler and RIFE 4.6 flownet of tests/fixtures/finishing into
/// `<data>/models/finishing/`, as a user drops downloaded files there.
fn install_finishing_models(data: &Path) {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/finishing");
    let dir = data.join("models/finishing");
    std::fs::create_dir_all(&dir).unwrap();
    for (fixture, name) in [
        (
            "upscalers/compact_x2/model.safetensors",
            "realesr-compact-x2.safetensors",
        ),
        ("rife/4.6/flownet.pkl", "flownet.pkl"),
    ] {
        std::fs::copy(fixtures.join(fixture), dir.join(name)).unwrap();
    }
}

#[test]
fn render_finish_delivers_the_stitched_piece_at_4k24() {
    let (tmp, data) = studio_with_model();
    let script = tmp.path().join("paper-boats.md");
    std::fs::write(&script, SCRIPT).unwrap();
    let out = tmp.path().join("paper-boats-4k.mp4");
    let args = |finish: &str| {
        vec![
            "render".to_string(),
            script.to_str().unwrap().into(),
            "--out".into(),
            out.to_str().unwrap().into(),
            "--height".into(),
            "32".into(),
            "--width".into(),
            "32".into(),
            "--steps".into(),
            "2".into(),
            "--guidance".into(),
            "1".into(),
            "--finish".into(),
            finish.into(),
            "--json".into(),
        ]
    };
    let run = |finish: &str| {
        let args = args(finish);
        videosdgx(&data, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // Without finishing models, or with a target no encoder takes, nothing is queued.
    for (finish, expected) in [
        ("4k24", "no upscaler is installed: put a Real-ESRGAN"),
        ("16k", "unknown finish target `16k`"),
    ] {
        let output = run(finish);
        assert!(!output.status.success());
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(err.contains(expected), "{finish}: {err}");
    }
    let db = rusqlite::Connection::open(data.join("studio.db")).unwrap();
    let jobs: i64 = db
        .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(jobs, 0);

    install_finishing_models(&data);
    let report: Value = serde_json::from_str(&succeeded(run("4k24"))).unwrap();
    let info = videosdgx_engine::video::probe(&out).unwrap();
    assert_eq!((info.width, info.height), (3840, 2160));
    assert_eq!(info.fps, 24.0);
    assert_eq!(info.codec, "avc1.42C033", "4K24 is H.264 level 5.1");
    assert_eq!(
        (report["width"].as_u64(), report["height"].as_u64()),
        (Some(3840), Some(2160))
    );
    let finish = &report["finish"];
    assert_eq!(finish["target"], "4k@24");
    assert_eq!(report["asset_id"], finish["asset_id"]);
    // The stitched 16 fps piece of N frames becomes floor((N - 1) * 24 / 16) + 1 frames.
    let stitched: i64 = db
        .query_row(
            "SELECT json_extract(params, '$.source.frames') FROM generations WHERE kind = 'finish'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(info.frames as i64, (stitched - 1) * 24 / 16 + 1);
    assert_eq!(finish["frames"].as_i64(), Some(info.frames as i64));
    assert_eq!(
        info.metadata["finish"]["upscaler"]["file"],
        "realesr-compact-x2.safetensors"
    );
    assert_eq!(info.metadata["finish"]["interpolator"]["version"], "4.6");

    // The finish ran as its own job on the GPU lane after the stitch.
    let mut stmt = db
        .prepare("SELECT kind, lane, state FROM jobs ORDER BY id DESC LIMIT 2")
        .unwrap();
    let last: Vec<(String, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        last,
        [
            ("finish".into(), "gpu".into(), "succeeded".into()),
            ("stitch".into(), "cpu".into(), "succeeded".into())
        ]
    );
}
