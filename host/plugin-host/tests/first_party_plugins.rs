//! The first-party plugins, run through the real runtime on the example project's script:
//! planner → expander → stitcher, checking what a user would see in the storyboard, the
//! prompts and the edit.

mod support;

use std::sync::Arc;
use support::{MemoryServices, context, guests, load, runtime, wan_profile};
use videosdgx_plugin_host::types::{
    CameraMove, Character, ClipInfo, GeneratedClip, PlanInput, ProjectSettings, ShotSize,
    Storyboard, Style, TimelineItem, Transition, TransitionKind,
};
use videosdgx_plugin_host::{Capability, Grants, Limits, PluginError};

const MARA: &str = "a clockmaker in her thirties, sharp face, dark hair tied up with a pencil";
const TOMAS: &str = "a boy of ten, round face, freckles";

fn settings() -> ProjectSettings {
    ProjectSettings {
        title: String::new(),
        style: Style {
            look: "35mm film still, muted teal and amber palette".into(),
            lighting: "warm tungsten practicals".into(),
            negative: "cartoon, plastic skin".into(),
        },
        characters: vec![
            Character {
                id: "mara".into(),
                name: "Mara".into(),
                description: MARA.into(),
            },
            Character {
                id: "tomas".into(),
                name: "Tomas".into(),
                description: TOMAS.into(),
            },
        ],
        model: wan_profile(),
        shot_transition: Transition {
            kind: TransitionKind::Cut,
            duration_ms: 0,
        },
        scene_transition: Transition {
            kind: TransitionKind::Crossfade,
            duration_ms: 600,
        },
        title_cards: true,
    }
}

fn clockmaker_script() -> String {
    std::fs::read_to_string(guests::repo_root().join("projects/clockmaker/script.md")).unwrap()
}

async fn plan(
    script: &str,
    grants: Grants,
    services: Arc<MemoryServices>,
) -> Result<Storyboard, videosdgx_plugin_host::CallError> {
    let planner = load("storyboard-planner");
    let ctx = context(services, grants, Limits::default());
    runtime()
        .plan(
            &planner,
            &ctx,
            &PlanInput {
                script: script.into(),
                settings: settings(),
            },
        )
        .await
}

#[tokio::test]
async fn planner_turns_the_screenplay_into_scenes_shots_and_characters() {
    let board = plan(&clockmaker_script(), Grants::default(), Arc::default())
        .await
        .unwrap();
    assert_eq!(board.title, "The Clockmaker's Bird");
    let headings: Vec<_> = board
        .scenes
        .iter()
        .map(|s| (s.interior, s.location.as_str(), s.time_of_day.as_str()))
        .collect();
    assert_eq!(
        headings,
        [(true, "CLOCK SHOP", "NIGHT"), (false, "ROOFTOP", "DAWN")]
    );
    // Every shot fits Wan: 4k+1 frames, at most 81 (5 s at 16 fps).
    for shot in &board.shots {
        assert!(
            shot.frames <= 81 && shot.frames % 4 == 1,
            "shot {} has {} frames",
            shot.id,
            shot.frames
        );
        assert_eq!(shot.duration_ms, shot.frames * 1000 / 16);
    }
    let ids: Vec<_> = board.shots.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        ["s01-01", "s01-02", "s01-03", "s02-01", "s02-02", "s02-03"]
    );
    // The establishing shot is wide, the script's CLOSE ON is honoured, PUSH IN dollies.
    assert_eq!(board.shots[0].camera.size, ShotSize::Wide);
    assert_eq!(board.shots[1].camera.size, ShotSize::CloseUp);
    assert_eq!(board.shots[3].camera.size, ShotSize::Wide);
    assert_eq!(board.shots[5].camera.movement, CameraMove::DollyIn);
    // Dialogue lands on the shot it follows, with its parenthetical.
    let whisper = &board.shots[1].dialogue[0];
    assert_eq!(
        (
            whisper.character_id.as_str(),
            whisper.parenthetical.as_str()
        ),
        ("mara", "whispering")
    );
    assert_eq!(board.shots[2].dialogue[0].character_id, "tomas");
    // Characters keep their bible descriptions and are tracked per shot.
    assert_eq!(board.characters.len(), 2);
    assert_eq!(board.characters[0].description, MARA);
    assert_eq!(board.shots[3].character_ids, ["mara", "tomas"]);
    // DISSOLVE TO: crossfades into scene two; shots inside a scene cut.
    assert_eq!(board.shots[3].transition_in.kind, TransitionKind::Crossfade);
    assert_eq!(board.shots[4].transition_in.kind, TransitionKind::Cut);
    assert_eq!(
        board.opening_title.as_ref().map(|t| t.text.as_str()),
        Some("The Clockmaker's Bird")
    );
}

#[tokio::test]
async fn planner_splits_long_shots_to_the_model_frame_limit() {
    let speech = "word ".repeat(40);
    let script = format!("## INT. HALL - DAY\n\nMARA stands.\n\nMARA\n{speech}\n");
    let board = plan(&script, Grants::default(), Arc::default())
        .await
        .unwrap();
    // 40 words at 2.5 words/s is 16.8 s: four shots of at most 81 frames.
    assert_eq!(board.shots.len(), 4, "{:#?}", board.shots);
    assert!(
        board
            .shots
            .iter()
            .all(|s| s.frames <= 81 && s.frames % 4 == 1)
    );
    assert_eq!(board.shots[1].transition_in.kind, TransitionKind::Cut);
}

#[tokio::test]
async fn planner_refines_actions_with_the_text_model_only_when_granted() {
    let services = Arc::new(MemoryServices {
        text_reply: Some("A lamplit workshop full of clocks.".into()),
        ..Default::default()
    });
    let refined = plan(
        &clockmaker_script(),
        Grants::new([Capability::TextGeneration]),
        services.clone(),
    )
    .await
    .unwrap();
    assert!(
        refined
            .shots
            .iter()
            .all(|s| s.action == "A lamplit workshop full of clocks.")
    );
    let denied = Arc::new(MemoryServices {
        text_reply: Some("never used".into()),
        ..Default::default()
    });
    let plain = plan(&clockmaker_script(), Grants::default(), denied.clone())
        .await
        .unwrap();
    assert!(
        plain.shots[0]
            .action
            .starts_with("Shelves of ticking clocks")
    );
    assert_eq!(
        denied.audit_functions(),
        [("text.complete".to_string(), false)]
    );
}

#[tokio::test]
async fn planner_rejects_an_empty_script_with_a_clear_error() {
    let err = plan("# Only a title\n", Grants::default(), Arc::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err.plugin_error(), Some(PluginError::InvalidInput(m)) if m.contains("no action or dialogue")),
        "{err}"
    );
}

#[tokio::test]
async fn expander_keeps_characters_identical_across_shots() {
    let board = plan(&clockmaker_script(), Grants::default(), Arc::default())
        .await
        .unwrap();
    let expander = load("prompt-expander");
    let ctx = context(Arc::default(), Grants::default(), Limits::default());
    let mut prompts = Vec::new();
    for shot in &board.shots {
        prompts.push(
            runtime()
                .expand(&expander, &ctx, shot, &board, &wan_profile())
                .await
                .unwrap(),
        );
    }
    for (shot, prompt) in board.shots.iter().zip(&prompts) {
        assert_eq!(prompt.shot_id, shot.id);
        assert_eq!(
            prompt.prompt.contains(MARA),
            shot.character_ids.contains(&"mara".to_string()),
            "{}",
            prompt.prompt
        );
        assert_eq!(
            prompt.prompt.contains(TOMAS),
            shot.character_ids.contains(&"tomas".to_string()),
            "{}",
            prompt.prompt
        );
        assert!(prompt.prompt.contains("35mm film still"));
        assert!(prompt.negative_prompt.contains("cartoon, plastic skin"));
        assert!(
            prompt.negative_prompt.contains("overexposed"),
            "Wan negative defaults"
        );
    }
    assert!(
        prompts[0].prompt.starts_with("Wide shot, slow dolly in:"),
        "{}",
        prompts[0].prompt
    );
    assert!(prompts[0].prompt.contains("Interior, clock shop"));
    assert!(prompts[0].prompt.contains("night, low-key light"));
    assert!(prompts[3].prompt.contains("dawn, soft pink and gold light"));
}

#[tokio::test]
async fn expander_refuses_a_shot_with_an_unknown_character() {
    let mut board = plan(&clockmaker_script(), Grants::default(), Arc::default())
        .await
        .unwrap();
    board.shots[0].character_ids.push("ghost".into());
    let expander = load("prompt-expander");
    let ctx = context(Arc::default(), Grants::default(), Limits::default());
    let err = runtime()
        .expand(&expander, &ctx, &board.shots[0], &board, &wan_profile())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("character `ghost`"), "{err}");
}

fn clips_for(board: &Storyboard, services: &MemoryServices) -> Vec<GeneratedClip> {
    board
        .shots
        .iter()
        .map(|shot| {
            let info = ClipInfo {
                width: 832,
                height: 480,
                frames: shot.frames,
                fps: 16,
                duration_ms: shot.duration_ms,
                audio: None,
            };
            let asset_id = format!("clip-{}", shot.id);
            services.add_video(&asset_id, info);
            GeneratedClip {
                shot_id: shot.id.clone(),
                asset_id,
                info,
            }
        })
        .rev() // arrival order does not matter
        .collect()
}

#[tokio::test]
async fn stitcher_orders_clips_applies_transitions_and_renders() {
    let board = plan(&clockmaker_script(), Grants::default(), Arc::default())
        .await
        .unwrap();
    let services = Arc::new(MemoryServices::default());
    let clips = clips_for(&board, &services);
    let stitcher = load("shot-stitcher");
    let ctx = context(
        services.clone(),
        Grants::new([Capability::Render]),
        Limits::default(),
    );
    let result = runtime()
        .stitch(&stitcher, &ctx, &board, &clips, "final.mp4")
        .await
        .unwrap();
    assert_eq!(result.output.name, "final.mp4");
    let items = &result.timeline.items;
    assert!(matches!(&items[0], TimelineItem::Title(t) if t.text == "The Clockmaker's Bird"));
    let clips: Vec<_> = items
        .iter()
        .filter_map(|i| match i {
            TimelineItem::Clip(c) => Some(c),
            _ => None,
        })
        .collect();
    let order: Vec<_> = clips.iter().map(|c| c.shot_id.as_str()).collect();
    assert_eq!(
        order,
        board
            .shots
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>()
    );
    // After the title card the first shot fades in; the scene change crossfades.
    assert_eq!(
        clips[0].transition_in.kind,
        TransitionKind::FadeThroughBlack
    );
    assert_eq!(
        clips[3].transition_in,
        Transition {
            kind: TransitionKind::Crossfade,
            duration_ms: 600
        }
    );
    assert_eq!(clips[1].transition_in.kind, TransitionKind::Cut);
    assert!(
        clips.iter().all(|c| c.volume == 1.0),
        "every clip's sound as generated"
    );
    assert_eq!(result.timeline.soundtrack, None);
    assert_eq!(services.rendered.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn stitcher_needs_the_render_grant_and_a_clip_for_every_shot() {
    let board = plan(&clockmaker_script(), Grants::default(), Arc::default())
        .await
        .unwrap();
    let services = Arc::new(MemoryServices::default());
    let mut clips = clips_for(&board, &services);
    let stitcher = load("shot-stitcher");
    let ungranted = context(services.clone(), Grants::default(), Limits::default());
    let err = runtime()
        .stitch(&stitcher, &ungranted, &board, &clips, "final.mp4")
        .await
        .unwrap_err();
    assert_eq!(
        err.plugin_error(),
        Some(&PluginError::Denied("render".into()))
    );
    clips.remove(0);
    let granted = context(
        services,
        Grants::new([Capability::Render]),
        Limits::default(),
    );
    let err = runtime()
        .stitch(&stitcher, &granted, &board, &clips, "final.mp4")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("no clip was generated for shot `s02-03`"),
        "{err}"
    );
}
