//! Browser end-to-end test of the web UI: starts real `videosdgx serve` processes with
//! temporary data directories (one on loopback, one requiring sign-in, one whose shots are
//! reviewed) and runs
//! tests/web/e2e.mjs, which drives the real UI in Debian's headless Chromium through
//! playwright-core. Screenshots of the main screens land in tests/web/screenshots/.
//! Prerequisites (installed by tests/run.sh): /usr/bin/chromium, node, and
//! `npm ci` in tests/web/.

#[path = "support/guests.rs"]
mod guests;
#[path = "support/models.rs"]
mod models;
#[path = "web_support/page.rs"]
mod page;
#[path = "support/studio.rs"]
mod studio;
#[path = "web_support/mod.rs"]
mod web_support;

use models::{install_as, install_tiny_model};
use std::path::{Path, PathBuf};
use std::process::Command;
use web_support::Server;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn check_prerequisites(web_dir: &Path) {
    let chromium = std::env::var("VDGX_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run tests/run.sh (it installs Debian's chromium) or apt-get install chromium"
    );
    assert!(
        web_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run tests/run.sh, or `npm ci` in {}",
        web_dir.display()
    );
}

/// Runs `videosdgx --data DATA ARGS…`, which must succeed.
fn videosdgx(data: &Path, args: &[&str]) {
    let output = Command::new(web_support::binary())
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .expect("cannot run videosdgx");
    assert!(
        output.status.success(),
        "videosdgx {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A data directory whose shots get reviewed: the tiny video model, the tiny Gemma 3 that sees
/// images (reviews need one), and the test reviewer that asks for another take whenever the
/// prompt starts with `always-retry`, as the only enabled reviewer. Its verdicts are fixed, so
/// the UI's scores, reasons and attention can be asserted exactly.
fn reviewed_studio(data: &Path, fixtures: &Path) {
    install_tiny_model(data, "tiny-wan-t2v");
    install_as(data, "text/gemma3_vlm_chat/model", "google/gemma3-tiny");
    let reviewer = "hostile-reviewer";
    let component = fixtures.join(format!("{reviewer}.wasm"));
    let manifest = fixtures.join(format!("{reviewer}.toml"));
    std::fs::write(&component, guests::component(reviewer)).unwrap();
    std::fs::write(&manifest, guests::manifest_text(reviewer)).unwrap();
    videosdgx(
        data,
        &[
            "plugins",
            "install",
            component.to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
            "--deny",
            "media",
        ],
    );
    videosdgx(data, &["plugins", "disable", "reviewer"]);
}

/// A small PNG to upload, so the test needs no binary fixture.
/// The tiny Compact x2 upscaler and RIFE 4.6 flownet, dropped into `models/finishing/`.
fn install_finishing_models(data: &Path) {
    let fixtures = repo_root().join("tests/fixtures/finishing");
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

fn write_reference_png(dir: &Path) {
    let image = image::RgbImage::from_fn(64, 36, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 7) as u8, 160])
    });
    image.save(dir.join("reference.png")).unwrap();
}

#[test]
fn web_ui_end_to_end_in_headless_chromium() {
    let web_dir = repo_root().join("tests/web");
    check_prerequisites(&web_dir);
    let fixtures = tempfile::tempdir().unwrap();
    write_reference_png(fixtures.path());
    std::fs::copy(
        repo_root().join("tests/fixtures/lora/kohya.safetensors"),
        fixtures.path().join("style.safetensors"),
    )
    .unwrap();
    for plugin in ["storyboard-planner", "hostile"] {
        std::fs::write(
            fixtures.path().join(format!("{plugin}.wasm")),
            guests::component(plugin),
        )
        .unwrap();
        std::fs::write(
            fixtures.path().join(format!("{plugin}.toml")),
            guests::manifest_text(plugin),
        )
        .unwrap();
    }

    let data = tempfile::tempdir().unwrap();
    install_tiny_model(data.path(), "tiny-wan-t2v");
    install_tiny_model(data.path(), "tiny-flux2-klein");
    install_finishing_models(data.path());
    let server = Server::start(data.path(), &[]);
    let auth_data = tempfile::tempdir().unwrap();
    let auth_server = Server::start(auth_data.path(), &["--require-auth"]);
    let token = auth_server
        .printed_token()
        .expect("token printed at first start");
    let review_data = tempfile::tempdir().unwrap();
    reviewed_studio(review_data.path(), fixtures.path());
    let review_server = Server::start(review_data.path(), &[]);

    let screenshots = web_dir.join("screenshots");
    let output = Command::new("node")
        .arg(web_dir.join("e2e.mjs"))
        .env("VDGX_BASE", &server.base)
        .env("VDGX_AUTH_BASE", &auth_server.base)
        .env("VDGX_AUTH_TOKEN", &token)
        .env("VDGX_REVIEW_BASE", &review_server.base)
        .env("VDGX_SCREENSHOTS", &screenshots)
        .env("VDGX_FIXTURES", fixtures.path())
        .env("VDGX_MODELS", data.path().join("models"))
        .output()
        .expect("cannot run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        // The error first: CI logs keep the head and the tail of a long message.
        "browser test failed (screenshots in {}):\n{stderr}\n--- steps that passed ---\n{stdout}",
        screenshots.display()
    );
    assert!(stdout.contains("web e2e: all steps passed"));
    for name in [
        "00-sign-in",
        "01-projects",
        "02-storyboard",
        "03-assets",
        "05-jobs",
        "06-review",
        "07-plugin-grants",
        "08-plugins",
        "09-brief-failed",
        "10-takes-reviewed",
        "11-review-attention",
        "12-hostile-storyboard",
        "13-keyframes",
    ] {
        assert!(
            screenshots.join(format!("{name}.png")).exists(),
            "screenshot {name}.png was saved"
        );
    }
}

/// Plays the piece (`piece.mp4` beside it), lets Web Audio decode its sound track at the track's
/// own rate `{RATE}` (no resampling: the samples are the file's), and reports, per window of
/// `{WINDOW}` frames, whether the sound is silent.
const PIECE_PAGE: &str = r#"<video id="v" src="piece.mp4" muted preload="auto"></video>
<script>
const v = document.getElementById("v");
v.addEventListener("error", () => done({ error: v.error && v.error.code, message: v.error && v.error.message }));
v.addEventListener("loadeddata", async () => {
  try {
    await v.play();
    const bytes = await (await fetch("piece.mp4")).arrayBuffer();
    const audio = await new OfflineAudioContext(2, 1, {RATE}).decodeAudioData(bytes);
    const channels = Array.from({ length: audio.numberOfChannels }, (_, c) => audio.getChannelData(c));
    const silent = [];
    for (let start = 0; start < audio.length; start += {WINDOW}) {
      const end = Math.min(start + {WINDOW}, audio.length);
      silent.push(channels.every((samples) => samples.subarray(start, end).every((s) => s === 0)));
    }
    done({ duration: v.duration, audioDuration: audio.duration, sampleRate: audio.sampleRate,
           channels: audio.numberOfChannels, silent });
  } catch (err) {
    done({ error: String(err) });
  }
});
</script>"#;

/// The issue's bar for sound: a piece of two LTX-2 shots (with their sound) and a Wan shot
/// (silent), each generated with its own model over the studio's HTTP API and stitched, plays in
/// Chromium, and its sound track decodes over the piece's whole length: sound under the LTX-2
/// shots, silence under the title card and the Wan shot, window for window as our MP4 reader
/// reads it.
#[test]
fn a_piece_of_ltx2_and_wan_shots_plays_in_chromium_with_continuous_sound() {
    check_prerequisites(&repo_root().join("tests/web"));
    let data = tempfile::tempdir().unwrap();
    install_tiny_model(data.path(), "tiny-ltx2");
    install_tiny_model(data.path(), "tiny-wan-t2v");
    let s = studio::start(data.path());
    let (project, board) = s.storyboard("Boats");
    let run_job = |kind: &str, params: serde_json::Value| {
        let job = s.run_job(kind, params, project);
        assert_eq!(job["state"], "succeeded", "{job}");
        job
    };
    let script = "# Boats\n\n## EXT. CANAL - DAY\n\nMARA sets a paper boat on the water. \"Go on, little one.\"\n\n\
        CLOSE ON the boat drifting away.\n\nWIDE ON the canal at dusk, the boat a speck of white.\n";
    run_job(
        "plan",
        serde_json::json!({ "storyboard_id": board, "script": script }),
    );
    let shots = s.get(&format!("/api/storyboards/{board}/shots")).json();
    let shots = shots.as_array().unwrap();
    assert_eq!(shots.len(), 3, "{shots:?}");
    let models = ["tiny-ltx2", "tiny-wan-t2v", "tiny-ltx2"];
    for (shot, model) in shots.iter().zip(models) {
        let r = s.patch(
            &format!("/api/shots/{}", shot["id"]),
            &serde_json::json!({ "model": model }),
        );
        assert_eq!(r.status, 200, "{}", r.json());
        let render = serde_json::json!({ "height": 32, "width": 32, "steps": 2, "guidance": 1.0 });
        run_job(
            "generate",
            serde_json::json!({ "shot_id": shot["id"], "render": render }),
        );
    }
    let stitched = run_job("stitch", serde_json::json!({ "storyboard_id": board }));
    let piece = s.get(&format!(
        "/api/assets/{}/file",
        stitched["result"]["asset_id"]
    ));
    assert_eq!(piece.status, 200);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("piece.mp4");
    std::fs::write(&file, &piece.bytes).unwrap();
    s.stop();

    // What our reader finds: the piece's length, its sound as long, silent or not per window.
    let mut reader = videosdgx_engine::video::Mp4Reader::open(&file).unwrap();
    let sound = reader.read_audio().unwrap().expect("the piece has sound");
    assert!((sound.duration_s() - reader.duration_s).abs() < 0.05);
    let (rate, channels) = (sound.sample_rate as usize, usize::from(sound.channels));
    let window = rate / 20;
    let silent: Vec<bool> = sound
        .samples
        .chunks(window * channels)
        .map(|chunk| chunk.iter().all(|s| *s == 0.0))
        .collect();
    // Title card, the LTX-2 shot, the Wan shot, the LTX-2 shot: silence, sound, silence, sound
    // (the windows where one segment meets the next may hold either).
    let timeline = &reader.metadata["timeline"];
    // A time of the edit: seconds, or frames at `fps` (the timeline's, or a trimmed clip's own).
    let seconds = |time: &serde_json::Value, fps: f64| match (
        time["seconds"].as_f64(),
        time["frames"].as_f64(),
    ) {
        (Some(seconds), _) => seconds,
        (None, Some(frames)) => frames / fps,
        _ => panic!("not a time: {time}"),
    };
    let fps = timeline["fps"].as_f64().unwrap();
    let segments = timeline["segments"].as_array().unwrap();
    let kinds: Vec<&str> = segments
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["title", "clip", "clip", "clip"], "{timeline}");
    let mut start = 0.0;
    for (i, (segment, heard)) in segments.iter().zip([false, true, false, true]).enumerate() {
        let length = match segment["kind"].as_str() {
            Some("title") => seconds(&segment["duration"], fps),
            _ => {
                let path = Path::new(segment["path"].as_str().unwrap());
                let clip = videosdgx_engine::video::Mp4Reader::open(path).unwrap();
                let trim = |key: &str, or: f64| match &segment[key] {
                    serde_json::Value::Null => or,
                    time => seconds(time, clip.fps),
                };
                trim("trim_out", clip.duration_s) - trim("trim_in", 0.0)
            }
        };
        let end = start + length;
        let inner = (start * 20.0).ceil() as usize + 1..(end * 20.0).floor() as usize - 1;
        assert!(
            silent[inner.clone()].iter().all(|s| *s != heard),
            "segment {i}: windows {inner:?} of {silent:?}"
        );
        // A crossfade overlaps the next segment with this one's end.
        let transition = &timeline["transitions"][i];
        start = match transition["kind"].as_str() {
            Some("crossfade") => end - seconds(&transition["duration"], fps),
            _ => end,
        };
    }

    let html = PIECE_PAGE
        .replace("{RATE}", &rate.to_string())
        .replace("{WINDOW}", &window.to_string());
    let result = page::run_page(dir.path(), &html);
    eprintln!("chromium: {result}");
    assert!(
        result.get("error").is_none(),
        "Chromium could not play the piece: {result}"
    );
    assert!(
        (result["duration"].as_f64().unwrap() - reader.duration_s).abs() < 0.05,
        "{result}"
    );
    assert!(
        (result["audioDuration"].as_f64().unwrap() - sound.duration_s()).abs() < 0.01,
        "{result}"
    );
    assert_eq!(
        (result["sampleRate"].as_u64(), result["channels"].as_u64()),
        (Some(rate as u64), Some(channels as u64))
    );
    let decoded: Vec<bool> = serde_json::from_value(result["silent"].clone()).unwrap();
    assert_eq!(decoded, silent, "Chromium's sound differs from the file's");
}
