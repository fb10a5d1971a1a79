//! Runs a local HTML page in headless Chromium through tests/web/page-result.mjs (playwright-core,
//! waiting in real time) and returns the JSON the page reports by calling `done(result)`.
//! Prerequisites (installed by tests/run.sh): /usr/bin/chromium (or `VDGX_CHROMIUM`), node, and
//! `npm ci` in tests/web/.

use std::path::{Path, PathBuf};
use std::process::Command;

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("tests/web/page-result.mjs").exists())
        .expect("the repository's tests/web")
        .join("tests/web")
}

/// Defined for every page: writes the result as JSON into `#result`, which page-result.mjs waits for.
const DONE: &str = r#"function done(result) {
  const out = document.createElement("pre");
  out.id = "result";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
}"#;

/// Writes the body `html` (after a `done(result)` function) as `dir/index.html`, beside the files
/// it loads, and runs it.
pub fn run_page(dir: &Path, html: &str) -> serde_json::Value {
    let chromium = std::env::var("VDGX_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run tests/run.sh (it installs Debian's chromium) or apt-get install chromium"
    );
    let web = web_dir();
    assert!(
        web.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run tests/run.sh, or `npm ci` in {}",
        web.display()
    );
    let page = dir.join("index.html");
    std::fs::write(
        &page,
        format!("<!doctype html>\n<script>{DONE}</script>\n{html}"),
    )
    .unwrap();
    let output = Command::new("node")
        .arg(web.join("page-result.mjs"))
        .arg(&page)
        .output()
        .expect("cannot run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the page did not report:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|err| panic!("{err}: {stdout}"))
}
