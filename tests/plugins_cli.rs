//! `videosdgx plugins ...` end to end: install with grants decided on the command line,
//! list/show/disable/enable/uninstall, and the install-time refusals a user can meet.

#[path = "support/guests.rs"]
mod guests;

use std::path::Path;
use std::process::{Command, Output};

fn videosdgx(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_videosdgx"))
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .expect("running videosdgx")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "unexpectedly succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Writes `plugin.wasm` and `plugin.toml` for the plugin crate `name`, with the manifest
/// edited by `edit`.
fn stage(dir: &Path, name: &str, edit: impl Fn(String) -> String) -> (String, String) {
    let wasm = dir.join(format!("{name}.wasm"));
    let toml = dir.join(format!("{name}.toml"));
    std::fs::write(&wasm, guests::component(name)).unwrap();
    std::fs::write(&toml, edit(guests::manifest_text(name))).unwrap();
    (wasm.display().to_string(), toml.display().to_string())
}

#[test]
fn install_list_show_disable_enable_uninstall() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (wasm, toml) = stage(tmp.path(), "template", |m| {
        m.replace("capabilities = []", "capabilities = [\"text-generation\"]")
    });
    let out = stdout(&videosdgx(
        &data,
        &[
            "plugins",
            "install",
            &wasm,
            "--manifest",
            &toml,
            "--grant",
            "text-generation",
        ],
    ));
    assert!(
        out.lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>()
                == [
                    "text-generation",
                    "ask",
                    "the",
                    "local",
                    "language",
                    "model",
                    "for",
                    "text"
                ]),
        "{out}"
    );
    assert!(out.contains("installed template"), "{out}");

    let list: serde_json::Value =
        serde_json::from_str(&stdout(&videosdgx(&data, &["plugins", "list", "--json"]))).unwrap();
    let list: Vec<&serde_json::Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["id"] == "template")
        .collect();
    assert_eq!(list[0]["first_party"], false);
    assert_eq!(list[0]["world"], "planner");
    assert_eq!(list[0]["granted"], serde_json::json!(["text-generation"]));
    assert_eq!(list[0]["enabled"], true);
    // The studio database holds the plugin; its component is stored by content.
    let sha = list[0]["component_sha256"].as_str().unwrap().to_string();
    let component = data.join("plugins").join(format!("{sha}.wasm"));
    assert_eq!(
        std::fs::read(&component).unwrap(),
        std::fs::read(&wasm).unwrap()
    );

    let shown = stdout(&videosdgx(&data, &["plugins", "disable", "template"]));
    assert_eq!(shown.trim(), "disabled template");
    let show: serde_json::Value = serde_json::from_str(&stdout(&videosdgx(
        &data,
        &["plugins", "show", "template", "--json"],
    )))
    .unwrap();
    assert_eq!(show["enabled"], false);
    stdout(&videosdgx(&data, &["plugins", "enable", "template"]));

    let again = stderr(&videosdgx(
        &data,
        &["plugins", "install", &wasm, "--manifest", &toml],
    ));
    assert!(again.contains("already installed"), "{again}");

    stdout(&videosdgx(&data, &["plugins", "uninstall", "template"]));
    assert!(!stdout(&videosdgx(&data, &["plugins", "list"])).contains("template"));
    assert!(
        !component.exists(),
        "the component file went with the plugin"
    );
    let gone = stderr(&videosdgx(&data, &["plugins", "show", "template"]));
    assert_eq!(gone.trim(), "error: plugin `template` not found");
}

#[test]
fn without_a_terminal_unanswered_capabilities_are_denied() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (wasm, toml) = stage(tmp.path(), "shot-stitcher", |m| {
        m.replace("id = \"shot-stitcher\"", "id = \"my-stitcher\"")
    });
    stdout(&videosdgx(
        &data,
        &["plugins", "install", &wasm, "--manifest", &toml],
    ));
    let show: serde_json::Value = serde_json::from_str(&stdout(&videosdgx(
        &data,
        &["plugins", "show", "my-stitcher", "--json"],
    )))
    .unwrap();
    assert_eq!(show["granted"], serde_json::json!([]));
    assert_eq!(show["denied"], serde_json::json!(["render"]));
}

#[test]
fn first_party_plugins_come_installed_and_stay_as_the_user_leaves_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let list = |data: &Path| -> Vec<serde_json::Value> {
        let out = stdout(&videosdgx(data, &["plugins", "list", "--json"]));
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let fresh = list(&data);
    let ids: Vec<&str> = fresh.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "prompt-expander",
            "reviewer",
            "shot-stitcher",
            "storyboard-planner"
        ]
    );
    for plugin in &fresh {
        assert_eq!(plugin["first_party"], true, "{plugin}");
        assert_eq!(plugin["enabled"], true, "{plugin}");
        assert_eq!(plugin["granted"], plugin["capabilities"], "{plugin}");
    }
    let text = stdout(&videosdgx(&data, &["plugins", "list"]));
    assert!(
        text.lines()
            .any(|l| l.starts_with("reviewer") && l.contains("first-party")),
        "{text}"
    );

    // What the user did survives the next start.
    stdout(&videosdgx(&data, &["plugins", "disable", "reviewer"]));
    stdout(&videosdgx(
        &data,
        &["plugins", "uninstall", "shot-stitcher"],
    ));
    let after = list(&data);
    assert!(
        after.iter().all(|p| p["id"] != "shot-stitcher"),
        "{after:?}"
    );
    let reviewer = after.iter().find(|p| p["id"] == "reviewer").unwrap();
    assert_eq!(reviewer["enabled"], false);

    // A data directory from an older binary (another component under the planner's name) is
    // upgraded to this binary's component, and stays disabled if the user disabled it.
    let planner_sha = after
        .iter()
        .find(|p| p["id"] == "storyboard-planner")
        .unwrap()["component_sha256"]
        .clone();
    let db = rusqlite::Connection::open(data.join("studio.db")).unwrap();
    db.execute(
        "UPDATE plugins SET enabled = 0, component_sha256 =
             (SELECT component_sha256 FROM plugins WHERE id = 'prompt-expander')
         WHERE id = 'storyboard-planner'",
        [],
    )
    .unwrap();
    drop(db);
    let upgraded = list(&data);
    let planner = upgraded
        .iter()
        .find(|p| p["id"] == "storyboard-planner")
        .unwrap();
    assert_eq!(planner["component_sha256"], planner_sha);
    assert_eq!(planner["enabled"], false);
    assert!(upgraded.iter().all(|p| p["id"] != "shot-stitcher"));
}

#[test]
fn install_refuses_what_the_host_cannot_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let refuse = |name: &str, edit: &dyn Fn(String) -> String| {
        let (wasm, toml) = stage(tmp.path(), name, edit);
        stderr(&videosdgx(
            &data,
            &["plugins", "install", &wasm, "--manifest", &toml],
        ))
    };
    let err = refuse("template", &|m| {
        m.replace("world = \"planner\"", "world = \"renderer\"")
    });
    assert!(err.contains("unknown world `renderer`"), "{err}");
    let err = refuse("template", &|m| {
        m.replace("api-version = \"0.2.0\"", "api-version = \"0.2.7\"")
    });
    assert!(err.contains("newer than this host's 0.2.0"), "{err}");
    let err = refuse("template", &|m| {
        m.replace("api-version = \"0.2.0\"", "api-version = \"2.0.0\"")
    });
    assert!(err.contains("does not support"), "{err}");
    let err = refuse("template", &|m| {
        m.replace("world = \"planner\"", "world = \"expander\"")
    });
    assert!(
        err.contains("must export `videosdgx:plugin/expansion@0.2.0`"),
        "{err}"
    );
    assert!(err.contains("(a planner)"), "{err}");
    let err = refuse("template", &|m| {
        m.replace("capabilities = []", "capabilities = [\"root\"]")
    });
    assert!(err.contains("unknown capability `root`"), "{err}");
    let (_, toml) = stage(tmp.path(), "template", |m| m);
    let not_wasm = tmp.path().join("notes.wasm");
    std::fs::write(&not_wasm, b"hello").unwrap();
    let err = stderr(&videosdgx(
        &data,
        &[
            "plugins",
            "install",
            not_wasm.to_str().unwrap(),
            "--manifest",
            &toml,
        ],
    ));
    assert!(err.contains("not a WebAssembly component"), "{err}");
    let (wasm, toml) = stage(tmp.path(), "template", |m| m);
    let err = stderr(&videosdgx(
        &data,
        &[
            "plugins",
            "install",
            &wasm,
            "--manifest",
            &toml,
            "--grant",
            "generate",
        ],
    ));
    assert!(
        err.contains("`generate` is not requested by plugin `template`"),
        "{err}"
    );
    // Nothing was installed by any refused attempt: only the first-party plugins are there.
    let list: serde_json::Value =
        serde_json::from_str(&stdout(&videosdgx(&data, &["plugins", "list", "--json"]))).unwrap();
    let list = list.as_array().unwrap();
    assert!(list.iter().all(|p| p["first_party"] == true), "{list:?}");
}
