//! Running `videosdgx model forward` from the CLI tests, and reading its one-line failures.

use std::path::Path;
use std::process::{Command, Output};

/// `videosdgx model forward --model MODEL --inputs INPUTS --out OUT EXTRA...`.
pub fn forward(model: &Path, inputs: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_videosdgx"))
        .args(["model", "forward", "--model"])
        .arg(model)
        .arg("--inputs")
        .arg(inputs)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// The single `error:` line a failed run printed (asserts it failed, with exactly one).
pub fn one_error_line(output: &Output) -> String {
    assert!(!output.status.success(), "the run succeeded");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0].to_string()
}
