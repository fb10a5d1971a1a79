//! The `reviewer` world (API 0.2.0): the first-party reviewer shows the vision model frames of a
//! take and turns its answer into a review; hostile reviewers (one that never returns, one that
//! returns a 100 MB reason, one that asks for `vision` without the grant, one with a NaN score)
//! end with a clear error and the runtime keeps serving; and plugins built against 0.1.0 (a
//! planner, a stitcher) still load and work beside them, with 0.1.0's records (no sound fields).

mod support;

use std::sync::Arc;
use std::time::Duration;
use support::{MemoryServices, context, input, load, runtime};
use videosdgx_plugin_host::types::{
    Camera, CameraMove, Character, ClipInfo, GeneratedClip, Shot, ShotPrompt, ShotSize, Storyboard,
    Style, Take, TakeReview, TimelineItem, TitleCard, Transition, TransitionKind, Verdict,
};
use videosdgx_plugin_host::{CallError, Capability, Grants, Limits, Manifest, World};

const MARA: &str = "a woman in her 30s, short grey hair, oil-stained blue apron";

fn services(reply: &str) -> Arc<MemoryServices> {
    let services = MemoryServices {
        text_reply: Some(reply.into()),
        ..MemoryServices::default()
    };
    services.add_video(
        "take-1",
        ClipInfo {
            width: 64,
            height: 32,
            frames: 33,
            fps: 16,
            duration_ms: 2062,
            audio: None,
        },
    );
    Arc::new(services)
}

fn shot() -> Shot {
    Shot {
        id: "s01-01".into(),
        scene_index: 0,
        action: "Mara winds the brass clock.".into(),
        character_ids: vec!["mara".into()],
        dialogue: Vec::new(),
        camera: Camera {
            size: ShotSize::Medium,
            movement: CameraMove::Fixed,
            angle: String::new(),
        },
        frames: 33,
        duration_ms: 2062,
        transition_in: Transition {
            kind: TransitionKind::Cut,
            duration_ms: 0,
        },
    }
}

fn storyboard() -> Storyboard {
    Storyboard {
        title: "Clockwork".into(),
        style: Style {
            look: String::new(),
            lighting: String::new(),
            negative: String::new(),
        },
        characters: vec![Character {
            id: "mara".into(),
            name: "MARA".into(),
            description: MARA.into(),
        }],
        scenes: Vec::new(),
        shots: vec![shot()],
        opening_title: None,
        closing_title: None,
    }
}

fn take(attempt: u32) -> Take {
    Take {
        asset_id: "take-1".into(),
        seed: 7,
        attempt,
        info: ClipInfo {
            width: 64,
            height: 32,
            frames: 33,
            fps: 16,
            duration_ms: 2062,
            audio: None,
        },
    }
}

async fn review(
    plugin: &str,
    prompt: &str,
    grants: Grants,
    limits: Limits,
    services: &Arc<MemoryServices>,
) -> Result<TakeReview, CallError> {
    let plugin = load(plugin);
    let prompt = ShotPrompt {
        shot_id: "s01-01".into(),
        prompt: prompt.into(),
        negative_prompt: "blurry".into(),
        keyframe_prompt: String::new(),
    };
    let ctx = context(services.clone(), grants, limits);
    runtime()
        .review(&plugin, &ctx, &shot(), &prompt, &take(1), &storyboard())
        .await
}

fn reviewer_grants() -> Grants {
    Grants::new([Capability::Media, Capability::Vision])
}

#[tokio::test]
async fn the_reviewer_shows_the_model_three_frames_and_asks_again_with_the_descriptions_kept() {
    let revised = format!("Medium shot of MARA, {MARA}, winding a brass clock with both hands.");
    let answer = serde_json::json!({
        "shows_the_shot": false,
        "score": 0.25,
        "problems": ["extra fingers on the left hand", "clock melts into the table"],
        "revised_prompt": revised,
    });
    let services = services(&answer.to_string());
    let prompt = format!("Mara winds a brass clock. MARA is {MARA}.");
    let review = review(
        "reviewer",
        &prompt,
        reviewer_grants(),
        Limits::default(),
        &services,
    )
    .await
    .unwrap();
    assert_eq!(review.verdict, Verdict::Retry);
    assert_eq!(review.score, 0.25);
    assert_eq!(
        review.reasons,
        "extra fingers on the left hand; clock melts into the table."
    );
    assert_eq!(review.revised_prompt.as_deref(), Some(revised.as_str()));
    assert_eq!(
        review.revised_negative_prompt.as_deref(),
        Some("blurry, extra fingers on the left hand, clock melts into the table")
    );

    let chats = services.chats.lock().unwrap();
    let [messages] = chats.as_slice() else {
        panic!("one chat expected, got {}", chats.len())
    };
    let images = &messages.last().unwrap().images;
    assert_eq!(
        images,
        &["take-1-frame-5", "take-1-frame-16", "take-1-frame-27"]
    );
    assert!(messages.last().unwrap().text.contains(MARA));
    drop(chats);
    let calls = services.audit_functions();
    assert_eq!(
        calls,
        [
            ("media.extract-frame".to_string(), true),
            ("media.extract-frame".to_string(), true),
            ("media.extract-frame".to_string(), true),
            ("text.chat".to_string(), true),
        ]
    );
}

#[tokio::test]
async fn an_answer_that_is_not_the_verdict_counts_as_accept_with_a_note() {
    let services = services("the take looks lovely");
    let review = review(
        "reviewer",
        "Mara winds a clock.",
        reviewer_grants(),
        Limits::default(),
        &services,
    )
    .await
    .unwrap();
    assert_eq!(review.verdict, Verdict::Accept);
    assert!(
        review.reasons.starts_with("Not reviewed"),
        "{}",
        review.reasons
    );
}

#[tokio::test]
async fn the_reviewer_without_the_vision_grant_is_denied() {
    let services = services("{}");
    let err = review(
        "reviewer",
        "Mara winds a clock.",
        Grants::new([Capability::Media, Capability::TextGeneration]),
        Limits::default(),
        &services,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("capability `vision` not granted"),
        "{err}"
    );
}

#[tokio::test]
async fn hostile_reviewers_end_with_clear_errors_and_the_runtime_keeps_serving() {
    let services = services("{}");
    let limits = Limits {
        guest_time: Duration::from_millis(300),
        ..Limits::default()
    };
    let grants = || Grants::new([Capability::Media]);

    let err = review("hostile-reviewer", "loop", grants(), limits, &services)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::Timeout { .. } | CallError::OutOfFuel { .. }),
        "{err}"
    );

    // Writing 100 MiB takes longer than the loop's 300 ms on a busy machine: the default budget.
    let err = review(
        "hostile-reviewer",
        "huge-reason",
        grants(),
        Limits::default(),
        &services,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), "plugin_bad_output", "{err}");
    assert!(
        err.to_string()
            .contains("reasons is 104857600 bytes; a review holds at most 16384"),
        "{err}"
    );

    let err = review("hostile-reviewer", "nan-score", grants(), limits, &services)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("score NaN is not between 0 and 1"),
        "{err}"
    );

    let err = review(
        "hostile-reviewer",
        "vision-ungranted",
        grants(),
        limits,
        &services,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("capability `vision` not granted"),
        "{err}"
    );
    let denied = services
        .audit_functions()
        .into_iter()
        .filter(|(f, allowed)| f == "vision.describe" && !allowed)
        .count();
    assert_eq!(denied, 1, "the denied call is audited");

    // Still serving: a well-behaved call right after.
    let review = review(
        "hostile-reviewer",
        "always-retry",
        grants(),
        Limits::default(),
        &services,
    )
    .await
    .unwrap();
    assert_eq!(review.verdict, Verdict::Retry);
    assert_eq!(
        review.revised_prompt.as_deref(),
        Some("always-retry attempt 2")
    );
}

#[tokio::test]
async fn a_reviewer_is_not_a_planner_and_the_reviewer_world_needs_api_0_2() {
    let plugin = load("reviewer");
    let ctx = context(services("{}"), reviewer_grants(), Limits::default());
    let err = runtime()
        .plan(&plugin, &ctx, &input("echo"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::WrongWorld {
                actual: World::Reviewer,
                wanted: World::Planner,
                ..
            }
        ),
        "{err}"
    );
    let text = support::guests::manifest_text("reviewer")
        .replace("api-version = \"0.2.0\"", "api-version = \"0.1.0\"");
    let err = Manifest::parse(&text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "world `reviewer` exists from API 0.2.0 on; the plugin says api-version = 0.1.0"
    );
}

#[tokio::test]
async fn a_plugin_built_against_0_1_still_loads_plans_and_reaches_the_language_model() {
    let services = services("an answer");
    let plugin = load("legacy-planner");
    assert_eq!(plugin.manifest().api_version.to_string(), "0.1.0");
    let ctx = context(
        services.clone(),
        Grants::new([Capability::TextGeneration]),
        Limits::default(),
    );
    let board = runtime()
        .plan(&plugin, &ctx, &input("echo hello"))
        .await
        .unwrap();
    assert_eq!(board.title, "hello");
    let board = runtime()
        .plan(&plugin, &ctx, &input("complete say hi"))
        .await
        .unwrap();
    assert_eq!(board.title, "an answer");
    let limits = Limits {
        guest_time: Duration::from_millis(300),
        ..Limits::default()
    };
    let ctx = context(services, Grants::new(Vec::new()), limits);
    let err = runtime()
        .plan(&plugin, &ctx, &input("loop"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::Timeout { .. } | CallError::OutOfFuel { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_plugin_built_against_0_1_probes_and_renders_without_the_sound_fields() {
    let services = services("");
    services.add_video(
        "talk",
        ClipInfo {
            width: 64,
            height: 48,
            frames: 25,
            fps: 24,
            duration_ms: 1042,
            audio: Some(videosdgx_plugin_host::types::AudioInfo {
                sample_rate: 24_000,
                channels: 1,
            }),
        },
    );
    let plugin = load("legacy-planner");
    let ctx = context(
        services.clone(),
        Grants::new([Capability::Media, Capability::Render]),
        Limits::default(),
    );
    // 0.1.0's clip-info has no `audio`: the host leaves it out for this plugin.
    let board = runtime()
        .plan(&plugin, &ctx, &input("probe talk"))
        .await
        .unwrap();
    assert_eq!(board.title, "64x48, 1042 ms");
    // 0.1.0's timeline has no `volume`: its clips render at 1, their sound as generated.
    let board = runtime()
        .plan(&plugin, &ctx, &input("render talk"))
        .await
        .unwrap();
    assert_eq!(board.title, "render-1");
    let rendered = services.rendered.lock().unwrap();
    let [timeline] = rendered.as_slice() else {
        panic!("{rendered:?}")
    };
    assert!(matches!(&timeline.items[0], TimelineItem::Title(t) if t.text == "Legacy"));
    let TimelineItem::Clip(clip) = &timeline.items[1] else {
        panic!("{timeline:?}")
    };
    assert_eq!((clip.asset_id.as_str(), clip.volume), ("talk", 1.0));
    assert_eq!(timeline.soundtrack, None);
    assert_eq!(
        clip.transition_in,
        Transition {
            kind: TransitionKind::FadeThroughBlack,
            duration_ms: 250
        }
    );
}

#[tokio::test]
async fn a_stitcher_built_against_0_1_gets_its_clips_and_renders_at_volume_1() {
    let services = services("");
    let talk = ClipInfo {
        width: 64,
        height: 32,
        frames: 25,
        fps: 24,
        duration_ms: 1042,
        audio: Some(videosdgx_plugin_host::types::AudioInfo {
            sample_rate: 48_000,
            channels: 2,
        }),
    };
    services.add_video("talk", talk);
    let clips = [
        GeneratedClip {
            shot_id: "s01-01".into(),
            asset_id: "take-1".into(),
            info: take(1).info,
        },
        GeneratedClip {
            shot_id: "s01-02".into(),
            asset_id: "talk".into(),
            info: talk,
        },
    ];
    let mut board = storyboard();
    board.opening_title = Some(TitleCard {
        text: "Clockwork".into(),
        duration_ms: 1000,
    });
    let plugin = load("legacy-stitcher");
    assert_eq!(plugin.manifest().api_version.to_string(), "0.1.0");
    let ctx = context(
        services.clone(),
        Grants::new([Capability::Render]),
        Limits::default(),
    );
    let result = runtime()
        .stitch(&plugin, &ctx, &board, &clips, "legacy-cut.mp4")
        .await
        .unwrap();
    assert_eq!(result.output.name, "legacy-cut.mp4");
    // The clip with sound crossed without its `audio` (0.1.0 has none) and came back at volume
    // 1, as rendered; the timeline has no soundtrack.
    let rendered = services.rendered.lock().unwrap();
    assert_eq!(rendered.as_slice(), std::slice::from_ref(&result.timeline));
    assert!(matches!(&result.timeline.items[0], TimelineItem::Title(t) if t.text == "Clockwork"));
    let played: Vec<_> = result.timeline.items[1..]
        .iter()
        .map(|item| match item {
            TimelineItem::Clip(c) => (c.asset_id.as_str(), c.duration_ms, c.volume),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(played, [("take-1", 2062, 1.0), ("talk", 1042, 1.0)]);
    assert_eq!(result.timeline.soundtrack, None);
}
