//! Hostile plugins: each misbehaviour ends its own call with a clear error, the runtime keeps
//! serving other calls (proved by a well-behaved call after each), and nothing reaches the
//! host that the user did not grant.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{MemoryServices, context, guests, input, load, runtime};
use videosdgx_plugin_host::{
    CallError, Capability, Grants, Limits, Manifest, PluginError, PluginRuntime,
};

fn hostile_grants() -> Grants {
    Grants::new([
        Capability::TextGeneration,
        Capability::AssetsRead,
        Capability::Media,
        Capability::ProjectRead,
    ])
}

/// Runs one misbehaviour, then proves the runtime still serves a normal call.
async fn misbehave(
    script: &str,
    limits: Limits,
) -> (Result<String, CallError>, Arc<MemoryServices>) {
    let plugin = load("hostile");
    let services = Arc::new(MemoryServices::default());
    let ctx = context(services.clone(), hostile_grants(), limits);
    let result = runtime()
        .plan(&plugin, &ctx, &input(script))
        .await
        .map(|b| b.title);
    let healthy = runtime()
        .plan(&plugin, &ctx, &input("echo still serving"))
        .await
        .expect("runtime still serves");
    assert_eq!(healthy.title, "echo still serving");
    (result, services)
}

#[tokio::test]
async fn infinite_loop_is_stopped_by_the_time_budget() {
    let limits = Limits {
        guest_time: Duration::from_millis(300),
        fuel: u64::MAX,
        ..Limits::default()
    };
    let started = Instant::now();
    let (result, _) = misbehave("loop", limits).await;
    let err = result.unwrap_err();
    assert!(matches!(err, CallError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("ran out of time"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn infinite_loop_is_stopped_by_fuel() {
    let limits = Limits {
        fuel: 50_000_000,
        guest_time: Duration::from_secs(60),
        ..Limits::default()
    };
    let (result, _) = misbehave("loop", limits).await;
    let err = result.unwrap_err();
    assert!(matches!(err, CallError::OutOfFuel { .. }), "{err}");
    assert!(err.to_string().contains("ran out of fuel"), "{err}");
}

#[tokio::test]
async fn allocating_without_end_hits_the_memory_limit() {
    let limits = Limits {
        memory_bytes: 64 << 20,
        ..Limits::default()
    };
    let (result, _) = misbehave("allocate", limits).await;
    let err = result.unwrap_err();
    assert!(
        matches!(err, CallError::MemoryLimit { limit_mib: 64, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("memory limit of 64 MiB"), "{err}");
}

#[tokio::test]
async fn runaway_recursion_is_a_stack_overflow() {
    let (result, _) = misbehave("recurse", Limits::default()).await;
    let err = result.unwrap_err();
    assert!(matches!(err, CallError::StackOverflow { .. }), "{err}");
}

#[tokio::test]
async fn a_trap_is_reported_as_a_crash() {
    let (result, _) = misbehave("trap", Limits::default()).await;
    let err = result.unwrap_err();
    assert!(matches!(err, CallError::Crashed { .. }), "{err}");
    assert!(
        err.to_string().contains("plugin `hostile` crashed"),
        "{err}"
    );
}

#[tokio::test]
async fn a_multi_gigabyte_string_is_refused_before_the_host_allocates_it() {
    let (result, _) = misbehave("huge-string", Limits::default()).await;
    let err = result.unwrap_err();
    assert!(matches!(err, CallError::Crashed { .. }), "{err}");
    assert!(err.to_string().contains("out of bounds"), "{err}");
}

#[tokio::test]
async fn an_ungranted_capability_is_denied_and_audited() {
    let (result, services) = misbehave("ungranted", Limits::default()).await;
    let err = result.unwrap_err();
    assert_eq!(
        err.plugin_error(),
        Some(&PluginError::Denied("generate".into())),
        "{err}"
    );
    let audit = services.audit.lock().unwrap();
    let entry = audit
        .iter()
        .find(|e| e.function == "generation.text-to-video")
        .expect("audited");
    assert!(!entry.allowed);
    assert_eq!(entry.capability, Some(Capability::Generate));
}

#[tokio::test]
async fn upscaling_without_the_media_grant_is_denied_and_audited() {
    let plugin = load("hostile");
    let services = Arc::new(MemoryServices::default());
    services.add_video(
        "1",
        videosdgx_plugin_host::types::ClipInfo {
            width: 832,
            height: 480,
            frames: 33,
            fps: 16,
            duration_ms: 2062,
            audio: None,
        },
    );
    let grants = Grants::new([Capability::TextGeneration, Capability::ProjectRead]);
    let ctx = context(services.clone(), grants, Limits::default());
    let err = runtime()
        .plan(&plugin, &ctx, &input("upscale-ungranted"))
        .await
        .unwrap_err();
    assert_eq!(
        err.plugin_error(),
        Some(&PluginError::Denied("media".into())),
        "{err}"
    );
    let audit = services.audit.lock().unwrap();
    let entry = audit
        .iter()
        .find(|e| e.function == "media.upscale")
        .expect("audited");
    assert!(!entry.allowed);
    assert_eq!(entry.capability, Some(Capability::Media));
    // Nothing was made.
    assert_eq!(services.assets.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn files_cannot_be_read_or_written() {
    let (result, _) = misbehave("files", Limits::default()).await;
    let err = result.unwrap_err();
    let Some(PluginError::Failed(message)) = err.plugin_error() else {
        panic!("{err}")
    };
    assert!(message.contains("filesystem refused"), "{message}");
    assert!(!std::path::Path::new("escape.txt").exists());
}

#[tokio::test]
async fn sockets_cannot_be_opened() {
    let (result, _) = misbehave("sockets", Limits::default()).await;
    let err = result.unwrap_err();
    let Some(PluginError::Failed(message)) = err.plugin_error() else {
        panic!("{err}")
    };
    assert!(message.contains("network refused"), "{message}");
}

#[tokio::test]
async fn invalid_ids_get_errors_from_every_host_api() {
    let (result, services) = misbehave("invalid-ids", Limits::default()).await;
    let err = result.unwrap_err();
    let Some(PluginError::NotFound(answers)) = err.plugin_error() else {
        panic!("{err}")
    };
    assert!(answers.contains("asset `no-such-asset`"), "{answers}");
    assert!(answers.contains("must not be a path"), "{answers}");
    assert!(answers.contains("not printable"), "{answers}");
    // Every call was audited, none reached a document or asset.
    assert_eq!(services.audit.lock().unwrap().len(), 4);
    assert!(services.documents.lock().unwrap().is_empty());
}

#[tokio::test]
async fn time_inside_host_calls_does_not_count_against_the_plugin() {
    let plugin = load("hostile");
    let services = Arc::new(MemoryServices {
        text_delay: Duration::from_millis(250),
        text_reply: Some("slept".into()),
        ..MemoryServices::default()
    });
    let limits = Limits {
        guest_time: Duration::from_millis(200),
        ..Limits::default()
    };
    let ctx = context(services, hostile_grants(), limits);
    // Four host calls of 250 ms each: a second of wall time, far over the 200 ms budget.
    let started = Instant::now();
    let board = runtime()
        .plan(&plugin, &ctx, &input("slow-host"))
        .await
        .expect("host time is not guest time");
    assert_eq!(board.title, "slept");
    assert!(started.elapsed() >= Duration::from_millis(1000));
}

#[tokio::test]
async fn a_spinning_plugin_does_not_block_other_plugins() {
    let spinner = load("hostile");
    let other = load("hostile");
    let services = Arc::new(MemoryServices::default());
    let slow = context(
        services.clone(),
        hostile_grants(),
        Limits {
            guest_time: Duration::from_secs(2),
            fuel: u64::MAX,
            ..Limits::default()
        },
    );
    let fast = context(services, hostile_grants(), Limits::default());
    let spin_input = input("loop");
    let spin = runtime().plan(&spinner, &slow, &spin_input);
    let echo = async {
        let started = Instant::now();
        let board = runtime()
            .plan(&other, &fast, &input("echo quick"))
            .await
            .unwrap();
        (board.title, started.elapsed())
    };
    // One thread: the spinner must yield at its epoch deadlines for the echo to run.
    let (spun, (title, took)) = tokio::join!(spin, echo);
    assert!(matches!(spun, Err(CallError::Timeout { .. })));
    assert_eq!(title, "echo quick");
    assert!(
        took < Duration::from_secs(1),
        "echo waited {took:?} behind the spinner"
    );
}

#[tokio::test]
async fn every_call_starts_from_the_plugins_initial_state() {
    // The pooling allocator reuses memory slots; what a call wrote must never reach the next.
    let plugin = load("hostile");
    let ctx = context(
        Arc::new(MemoryServices::default()),
        hostile_grants(),
        Limits::default(),
    );
    for _ in 0..3 {
        let board = runtime()
            .plan(&plugin, &ctx, &input("remember"))
            .await
            .unwrap();
        assert_eq!(board.title, "call 1, found 0 bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_beyond_the_concurrent_limit_is_refused_and_the_pool_recovers() {
    // A runtime of its own, so that filling its pool cannot disturb other tests.
    let runtime = Arc::new(PluginRuntime::new(None).unwrap());
    let manifest = Manifest::parse(&guests::manifest_text("hostile")).unwrap();
    let plugin = Arc::new(
        runtime
            .load(manifest, &guests::component("hostile"))
            .unwrap(),
    );
    let limits = Limits {
        guest_time: Duration::from_secs(30),
        fuel: u64::MAX,
        ..Limits::default()
    };
    let ctx = Arc::new(context(
        Arc::new(MemoryServices::default()),
        hostile_grants(),
        limits,
    ));
    let mut spinners = tokio::task::JoinSet::new();
    for _ in 0..PluginRuntime::MAX_CONCURRENT_CALLS {
        let (runtime, plugin, ctx) = (runtime.clone(), plugin.clone(), ctx.clone());
        spinners.spawn(async move { runtime.plan(&plugin, &ctx, &input("loop")).await });
    }
    // Every spinner has its instance once the pool refuses the next call.
    let started = Instant::now();
    let refused = loop {
        match runtime
            .plan(&plugin, &ctx, &input("echo one too many"))
            .await
        {
            Err(err) => break err,
            Ok(_) => {
                assert!(started.elapsed() < Duration::from_secs(20), "never refused");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(
        matches!(refused, CallError::Busy { running: 64, .. }),
        "{refused}"
    );
    assert_eq!(
        refused.to_string(),
        "plugin `hostile` was not started: 64 plugin calls are already running; try again when one ends"
    );

    spinners.abort_all();
    while spinners.join_next().await.is_some() {}
    let board = runtime
        .plan(&plugin, &ctx, &input("echo after"))
        .await
        .expect("the slots came back");
    assert_eq!(board.title, "echo after");
}

#[tokio::test]
async fn bad_volumes_are_refused_naming_the_clip_or_soundtrack() {
    let plugin = load("hostile");
    let services = Arc::new(MemoryServices::default());
    services.add_video(
        "clip",
        videosdgx_plugin_host::types::ClipInfo {
            width: 64,
            height: 48,
            frames: 8,
            fps: 8,
            duration_ms: 1000,
            audio: None,
        },
    );
    let grants = Grants::new([Capability::Render]);
    let ctx = context(services.clone(), grants, Limits::default());
    let err = runtime()
        .plan(&plugin, &ctx, &input("bad-volumes clip"))
        .await
        .unwrap_err();
    let Some(PluginError::InvalidInput(answers)) = err.plugin_error() else {
        panic!("{err}")
    };
    for volume in ["NaN", "inf", "-0.5", "4.5"] {
        assert!(
            answers.contains(&format!(
                "timeline item 0 (clip `clip` of shot `shot-at-{volume}`): volume {volume} is not a gain from 0 to 4"
            )),
            "{answers}"
        );
    }
    assert!(
        answers.contains("the soundtrack (`music`): volume -1 is not a gain from 0 to 4"),
        "{answers}"
    );
    // Only the extremes reached the renderer.
    let rendered = services.rendered.lock().unwrap();
    let volumes: Vec<(f32, Option<f32>)> = rendered
        .iter()
        .map(|t| match &t.items[0] {
            videosdgx_plugin_host::types::TimelineItem::Clip(c) => {
                (c.volume, t.soundtrack.as_ref().map(|s| s.volume))
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(volumes, [(0.0, None), (4.0, Some(4.0))]);
}
