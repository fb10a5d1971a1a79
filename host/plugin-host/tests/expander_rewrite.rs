//! The prompt expander with the language model (scripted by `MemoryServices`): with
//! `text-generation` the model rewords only the shot's action and camera, and every character
//! description reaches the prompt verbatim whatever the model writes; without the grant, without
//! a model or with an unusable answer, the prompt is the template's, byte for byte.

mod support;

use std::sync::Arc;
use support::{MemoryServices, TEXT_MODEL, context, load, runtime, wan_profile};
use videosdgx_plugin_host::types::{
    Camera, CameraMove, Character, DialogueLine, Scene, Shot, ShotSize, Storyboard, Style,
    Transition, TransitionKind,
};
use videosdgx_plugin_host::{Capability, Grants, Limits, LogLevel};

const MARA: &str = "a clockmaker in her thirties, sharp face, dark hair tied up with a pencil";
const TOMAS: &str = "a boy of ten, round face, freckles";

/// The template's prompt for [`shot`] on Wan, as the expander wrote it before it could ask a
/// language model.
const TEMPLATE: &str = "Wide shot, slow dolly in: Mara winds the key of the mechanical bird \
     while Tomas watches. Mara: a clockmaker in her thirties, sharp face, dark hair tied up with \
     a pencil. Tomas: a boy of ten, round face, freckles. Mara is talking, whispering, lips \
     moving. Interior, clock shop. night, low-key light, deep shadows, warm tungsten practicals. \
     35mm film still, muted teal and amber palette.";

fn shot() -> Shot {
    Shot {
        id: "s01-01".into(),
        scene_index: 1,
        action: "Mara winds the key of the mechanical bird while Tomas watches".into(),
        character_ids: vec!["mara".into(), "tomas".into()],
        dialogue: vec![DialogueLine {
            character_id: "mara".into(),
            parenthetical: "whispering".into(),
            text: "Fly.".into(),
        }],
        camera: Camera {
            size: ShotSize::Wide,
            movement: CameraMove::DollyIn,
            angle: String::new(),
        },
        frames: 81,
        duration_ms: 5062,
        transition_in: Transition {
            kind: TransitionKind::Cut,
            duration_ms: 0,
        },
    }
}

fn storyboard() -> Storyboard {
    let character = |id: &str, name: &str, description: &str| Character {
        id: id.into(),
        name: name.into(),
        description: description.into(),
    };
    Storyboard {
        title: "The Clockmaker's Bird".into(),
        style: Style {
            look: "35mm film still, muted teal and amber palette".into(),
            lighting: "warm tungsten practicals".into(),
            negative: "cartoon".into(),
        },
        characters: vec![
            character("mara", "Mara", MARA),
            character("tomas", "Tomas", TOMAS),
        ],
        scenes: vec![Scene {
            index: 1,
            heading: "INT. CLOCK SHOP - NIGHT".into(),
            interior: true,
            location: "CLOCK SHOP".into(),
            time_of_day: "NIGHT".into(),
        }],
        shots: vec![shot()],
        opening_title: None,
        closing_title: None,
    }
}

fn answering(reply: Option<&str>) -> Arc<MemoryServices> {
    Arc::new(MemoryServices {
        text_reply: reply.map(str::to_string),
        ..MemoryServices::default()
    })
}

/// The Wan prompt for [`shot`].
async fn expand(grants: Grants, services: &Arc<MemoryServices>) -> String {
    let expander = load("prompt-expander");
    let ctx = context(services.clone(), grants, Limits::default());
    runtime()
        .expand(&expander, &ctx, &shot(), &storyboard(), &wan_profile())
        .await
        .unwrap()
        .prompt
}

fn text_generation() -> Grants {
    Grants::new([Capability::TextGeneration])
}

fn logged(services: &MemoryServices, level: LogLevel) -> Vec<String> {
    let logs = services.logs.lock().unwrap();
    logs.iter()
        .filter(|(l, _)| *l == level)
        .map(|(_, m)| m.clone())
        .collect()
}

#[tokio::test]
async fn the_models_action_and_camera_replace_only_the_templates() {
    let services = answering(Some(
        r#"{"action": "Mara turns the tiny brass key as Tomas leans in, holding his breath", "camera": "Medium close-up, slow push in"}"#,
    ));
    let prompt = expand(text_generation(), &services).await;
    let rewritten = "Medium close-up, slow push in: Mara turns the tiny brass key as Tomas leans \
                     in, holding his breath. ";
    let template = "Wide shot, slow dolly in: Mara winds the key of the mechanical bird while \
                    Tomas watches. ";
    assert!(prompt.starts_with(rewritten), "{prompt}");
    // Everything after the action is the template's: descriptions, speech, setting, light, look.
    assert_eq!(
        prompt.strip_prefix(rewritten),
        TEMPLATE.strip_prefix(template)
    );
    assert!(
        prompt.contains(&format!("Mara: {MARA}.")) && prompt.contains(&format!("Tomas: {TOMAS}."))
    );

    let options = services.chat_options.lock().unwrap().clone();
    let [options] = options.as_slice() else {
        panic!("one chat expected, got {}", options.len())
    };
    assert_eq!((options.temperature, options.seed), (0.0, 0));
    assert!(
        options
            .json_schema
            .as_deref()
            .unwrap()
            .contains("\"camera\"")
    );
    // The model is told the family and shown who is on screen, never how they look.
    let chats = services.chats.lock().unwrap();
    let request: String = chats[0].iter().map(|m| m.text.as_str()).collect();
    assert!(request.contains("Wan 2.x") && request.contains("On screen: Mara, Tomas"));
    assert!(!request.contains(MARA) && !request.contains(TOMAS));
}

#[tokio::test]
async fn a_rewrite_that_redescribes_a_character_cannot_change_the_description() {
    let services = answering(Some(
        r#"{"action": "Mara, a tall blonde man, winds the bird while Tomas, an old woman, watches", "camera": "Close-up"}"#,
    ));
    let prompt = expand(text_generation(), &services).await;
    assert!(
        prompt.starts_with("Close-up: Mara, a tall blonde man,"),
        "{prompt}"
    );
    assert!(prompt.contains(&format!("Mara: {MARA}.")), "{prompt}");
    assert!(prompt.contains(&format!("Tomas: {TOMAS}.")), "{prompt}");
}

#[tokio::test]
async fn without_the_grant_the_prompt_is_the_templates_byte_for_byte() {
    let services = answering(Some(r#"{"action": "never used", "camera": "never used"}"#));
    assert_eq!(expand(Grants::default(), &services).await, TEMPLATE);
    assert_eq!(
        services.audit_functions(),
        [("text.chat".to_string(), false)]
    );
    let info = logged(&services, LogLevel::Info);
    assert_eq!(info.len(), 1, "{info:?}");
    assert!(
        info[0].contains("`text-generation` is not granted"),
        "{info:?}"
    );
}

#[tokio::test]
async fn without_a_model_or_with_an_unusable_answer_the_prompt_is_the_templates() {
    let no_model = answering(None);
    assert_eq!(expand(text_generation(), &no_model).await, TEMPLATE);
    let info = logged(&no_model, LogLevel::Info);
    assert!(
        info.len() == 1 && info[0].contains("no text model in this test host"),
        "{info:?}"
    );

    let too_long = format!(
        r#"{{"action": "{}", "camera": "Close-up"}}"#,
        "Mara winds. ".repeat(60)
    );
    for answer in [
        "Sure! Mara winds the key.",
        r#"{"action": "", "camera": "Close-up"}"#,
        too_long.as_str(),
    ] {
        let services = answering(Some(answer));
        assert_eq!(
            expand(text_generation(), &services).await,
            TEMPLATE,
            "{answer}"
        );
        let warnings = logged(&services, LogLevel::Warn);
        assert!(
            warnings.len() == 1 && warnings[0].contains(&format!("language model `{TEXT_MODEL}`")),
            "{answer}: {warnings:?}"
        );
    }
}
