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
