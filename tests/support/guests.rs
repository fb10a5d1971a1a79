//! Builds the guest plugins (plugins/, a wasm32-wasip2 workspace) once per test process and
//! hands out their components and manifests. Cargo's own lock serialises concurrent test
//! binaries; an up-to-date build costs well under a second.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root.
pub fn repo_root() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !dir.join("plugins").join("Cargo.toml").exists() {
        assert!(
            dir.pop(),
            "no plugins/Cargo.toml above {}",
            env!("CARGO_MANIFEST_DIR")
        );
    }
    dir
}

/// Directory holding the built `<crate_name>.wasm` files.
pub fn wasm_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = repo_root();
        // `<target>/plugins-wasm`, where the studio's build script builds the first-party
        // plugins: the same artefacts serve both.
        let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("CARGO_TARGET_TMPDIR is <target>/tmp")
            .join("plugins-wasm");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(root.join("plugins/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            // The host build's flags are for the host, not for the guests.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .status()
            .expect("running cargo to build the guest plugins");
        assert!(
            status.success(),
            "building the guest plugins failed ({status})"
        );
        target.join("wasm32-wasip2/release")
    })
}

/// The component bytes of the plugin crate `name` (e.g. `storyboard-planner`).
pub fn component(name: &str) -> Vec<u8> {
    let path = wasm_dir().join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The plugin.toml shipped beside the plugin crate `name`.
pub fn manifest_text(name: &str) -> String {
    let path = repo_root().join("plugins").join(name).join("plugin.toml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}
