//! Builds the first-party plugins (plugins/, a wasm32-wasip2 workspace) so that the studio
//! embeds them: `cargo build` of the host is the only step. The components go to
//! `<target>/plugins-wasm`, shared with the test suite's guest build (tests/support/guests.rs),
//! and are copied into `OUT_DIR` for `include_bytes!`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

/// The plugin crates that come with the binary (see `plugins::first_party`).
const FIRST_PARTY: [&str; 4] = [
    "storyboard-planner",
    "prompt-expander",
    "shot-stitcher",
    "reviewer",
];
const TARGET: &str = "wasm32-wasip2";

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../..");
    let root = root.canonicalize().expect("the repository root");
    let plugins = root.join("plugins");
    for path in ["Cargo.toml", "Cargo.lock", "sdk"]
        .iter()
        .map(|p| plugins.join(p))
        .chain(FIRST_PARTY.iter().map(|p| plugins.join(p)))
        .chain([root.join("wit")])
    {
        println!("cargo:rerun-if-changed={}", path.display());
    }

    ensure_target();
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let target_dir = shared_target_dir(&out);
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--manifest-path")
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    for name in FIRST_PARTY {
        build.args(["-p", name]);
    }
    // The host build's flags and target are for the host, not for the guests.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
    ] {
        build.env_remove(var);
    }
    let status = build.status().expect("running cargo to build the plugins");
    assert!(
        status.success(),
        "building the first-party plugins failed ({status})"
    );
    for name in FIRST_PARTY {
        let file = format!("{}.wasm", name.replace('-', "_"));
        let built = target_dir.join(TARGET).join("release").join(&file);
        fs::copy(&built, out.join(&file))
            .unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
    }
}

/// `<target>/plugins-wasm`: `OUT_DIR` is `<target>[/<triple>]/<profile>/build/<crate>/out`.
/// The components do not depend on the host's target, so a cross build (`--target`, e.g.
/// scripts/cross-aarch64.sh) shares the native build's directory instead of building them again.
fn shared_target_dir(out: &Path) -> PathBuf {
    let Some(mut target) = out.ancestors().nth(4) else {
        return out.join("plugins-wasm");
    };
    let triple = env::var("TARGET").expect("cargo sets TARGET for build scripts");
    if target.file_name() == Some(OsStr::new(&triple)) {
        target = target.parent().unwrap_or(target);
    }
    target.join("plugins-wasm")
}

/// rustup installs rust-toolchain.toml's toolchain but not its targets when the toolchain is
/// already there; add the guests' target (idempotent) or say in one line what to run.
fn ensure_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = |root: &Path| root.join("lib/rustlib").join(TARGET).exists();
    if sysroot.as_deref().is_some_and(installed) {
        return;
    }
    let mut add = Command::new("rustup");
    add.args(["target", "add", TARGET]);
    if let Ok(toolchain) = env::var("RUSTUP_TOOLCHAIN") {
        add.args(["--toolchain", &toolchain]);
    }
    if !add.status().is_ok_and(|s| s.success()) {
        panic!(
            "the first-party plugins need the `{TARGET}` target: run `rustup target add {TARGET}`"
        );
    }
}
