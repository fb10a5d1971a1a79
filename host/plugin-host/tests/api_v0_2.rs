//! API 0.2.0 beside 0.1.0: a 0.2.0 plugin reaches `text.chat` and `vision.describe` under their
//! capabilities, with every call audited; oversized or malformed chat requests from a hostile
//! plugin end with a clear `invalid-input` before any host service runs, and the runtime keeps
//! serving. (tests/reviewers.rs shows a plugin built against 0.1.0 still working.)

mod support;

use std::sync::Arc;
use support::{MemoryServices, context, input, load, runtime};
use videosdgx_plugin_host::types::{AudioInfo, ClipInfo};
use videosdgx_plugin_host::{Capability, Grants, Limits};

fn services() -> Arc<MemoryServices> {
    let services = MemoryServices {
        text_reply: Some("{\"name\": \"Mara\"}".into()),
        ..MemoryServices::default()
    };
    services.add_video(
        "7",
        ClipInfo {
            width: 32,
            height: 32,
            frames: 9,
            fps: 16,
            duration_ms: 562,
            audio: None,
        },
    );
    Arc::new(services)
}

async fn ask(
    script: &str,
    grants: Grants,
    services: &Arc<MemoryServices>,
) -> Result<String, String> {
    let plugin = load("language-probe");
    let ctx = context(services.clone(), grants, Limits::default());
    runtime()
        .plan(&plugin, &ctx, &input(script))
        .await
        .map(|board| board.title)
        .map_err(|e| e.to_string())
}

fn all() -> Grants {
    Grants::new([Capability::TextGeneration, Capability::Vision])
}

#[tokio::test]
async fn a_plugin_built_against_0_2_chats_and_describes_through_the_host() {
    let services = services();
    let answer = ask("chat-json who is it?", all(), &services).await.unwrap();
    assert_eq!(answer, "{\"name\": \"Mara\"}");
    let answer = ask("describe 7 what happens?", all(), &services)
        .await
        .unwrap();
    assert_eq!(answer, "{\"name\": \"Mara\"}");
    let err = ask("describe 8 what happens?", all(), &services)
        .await
        .unwrap_err();
    assert!(err.contains("not found: asset `8`"), "{err}");
    assert_eq!(
        services.audit_functions(),
        [
            ("text.chat".to_string(), true),
            ("vision.describe".to_string(), true),
            ("vision.describe".to_string(), true),
        ]
    );
}

#[tokio::test]
async fn vision_needs_its_own_capability() {
    let services = services();
    let grants = Grants::new([Capability::TextGeneration]);
    let err = ask("describe 7 what?", grants, &services)
        .await
        .unwrap_err();
    assert!(err.contains("capability `vision` not granted"), "{err}");
    let audit = services.audit.lock().unwrap();
    assert_eq!(audit[0].capability, Some(Capability::Vision));
    assert!(!audit[0].allowed);
}

#[tokio::test]
async fn hostile_chat_requests_get_clear_errors_and_the_host_keeps_serving() {
    let services = services();
    for (script, expected) in [
        ("chat-huge", "bytes exceed the 33554432 byte limit per call"),
        ("chat-many", "text.chat: 1000 messages; send 1 to 256"),
        (
            "chat-bad-schema hi",
            "text.chat: the JSON Schema is not JSON: key must be a string",
        ),
    ] {
        let err = ask(script, all(), &services).await.unwrap_err();
        assert!(err.contains(expected), "{script}: {err}");
        assert!(err.contains("invalid input"), "{script}: {err}");
    }
    // Nothing reached the host's services, and every refusal is in the audit log.
    {
        let audit = services.audit.lock().unwrap();
        assert_eq!(audit.len(), 3);
        assert!(
            audit
                .iter()
                .all(|e| e.function == "text.chat" && e.error.is_some())
        );
    }
    assert_eq!(
        ask("complete hello", all(), &services).await.unwrap(),
        "{\"name\": \"Mara\"}"
    );
}

#[tokio::test]
async fn manifests_at_0_2_load_and_newer_minor_versions_are_refused() {
    let manifest = |version: &str| {
        format!(
            "id = \"p\"\nname = \"P\"\nversion = \"1.0.0\"\napi-version = \"{version}\"\nworld = \"planner\"\ncapabilities = [\"vision\"]\n"
        )
    };
    let parsed = videosdgx_plugin_host::Manifest::parse(&manifest("0.2.0")).unwrap();
    assert_eq!(parsed.api(), videosdgx_plugin_host::ApiVersion::V0_2);
    let err = videosdgx_plugin_host::Manifest::parse(&manifest("0.2.1")).unwrap_err();
    assert!(
        err.to_string().contains("newer than this host's 0.2.0"),
        "{err}"
    );
}

#[tokio::test]
async fn a_plugin_built_against_0_2_sees_whether_a_clip_has_sound() {
    let services = services();
    services.add_video(
        "talk",
        ClipInfo {
            width: 32,
            height: 32,
            frames: 25,
            fps: 24,
            duration_ms: 1042,
            audio: Some(AudioInfo {
                sample_rate: 24_000,
                channels: 2,
            }),
        },
    );
    let grants = || Grants::new([Capability::Media]);
    let answer = ask("probe-sound talk", grants(), &services).await.unwrap();
    assert_eq!(answer, "24000 Hz, 2 channels");
    let answer = ask("probe-sound 7", grants(), &services).await.unwrap();
    assert_eq!(answer, "silent");
}
