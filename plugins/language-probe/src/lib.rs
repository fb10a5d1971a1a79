//! A planner built against API 0.2.0 that asks the host's language model (or probes a video's
//! sound), for the host's tests: the script's first word picks the call, the rest is its argument, and the answer
//! comes back as the storyboard's title (with one placeholder shot, since a plan needs one). Some calls are hostile on purpose (oversized or
//! malformed requests) and must end with a clear error. Never install this outside tests.

wit_bindgen::generate!({
    path: "../../wit/v0.2.0",
    world: "planner",
});

use exports::videosdgx::plugin::planning::Guest;
use videosdgx::plugin::text::{self, ChatMessage, ChatOptions, ChatReply};
use videosdgx::plugin::types::{
    Camera, CameraMove, PlanInput, PluginError, Scene, Shot, ShotSize, Storyboard, Style,
    Transition, TransitionKind,
};
use videosdgx::plugin::{media, vision};

/// What `chat-json` asks for.
const SCHEMA: &str = r#"{"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}}, "required": ["name"], "additionalProperties": false}"#;

struct Probe;

impl Guest for Probe {
    fn plan(input: PlanInput) -> Result<Storyboard, PluginError> {
        let (call, argument) = input
            .script
            .split_once(' ')
            .unwrap_or((input.script.as_str(), ""));
        let answer = match call {
            "complete" => text::complete(argument, 16)?,
            // Asks again and again until a call fails (cancelling its job ends it).
            "complete-until-cancelled" => loop {
                text::complete(argument, 64)?;
            },
            "chat-json" => chat(vec![user(argument)], Some(SCHEMA))?.text,
            "describe" => {
                let (asset, question) = argument.split_once(' ').unwrap_or((argument, ""));
                vision::describe(asset, question)?
            }
            "probe-sound" => match media::probe(argument)?.audio {
                Some(audio) => format!("{} Hz, {} channels", audio.sample_rate, audio.channels),
                None => "silent".into(),
            },
            "chat-huge" => chat(vec![user(&"x".repeat(40 << 20))], None)?.text,
            "chat-many" => chat((0..1000).map(|_| user("hi")).collect(), None)?.text,
            "chat-bad-schema" => chat(vec![user(argument)], Some("{not json"))?.text,
            "chat-wrong-schema" => chat(vec![user(argument)], Some(r#"{"type": 12}"#))?.text,
            other => return Err(PluginError::InvalidInput(format!("unknown call `{other}`"))),
        };
        Ok(storyboard(answer))
    }
}

export!(Probe);

fn user(text: &str) -> ChatMessage {
    ChatMessage {
        role: "user".into(),
        text: text.into(),
        images: Vec::new(),
    }
}

/// Greedy, at most 60 tokens, optionally under a JSON Schema.
fn chat(messages: Vec<ChatMessage>, json_schema: Option<&str>) -> Result<ChatReply, PluginError> {
    text::chat(
        &messages,
        &ChatOptions {
            max_tokens: 60,
            temperature: 0.0,
            seed: 0,
            stop: Vec::new(),
            json_schema: json_schema.map(str::to_string),
        },
    )
}

fn storyboard(title: String) -> Storyboard {
    Storyboard {
        title,
        style: Style {
            look: String::new(),
            lighting: String::new(),
            negative: String::new(),
        },
        characters: Vec::new(),
        scenes: vec![Scene {
            index: 0,
            heading: "INT. PROBE - DAY".into(),
            interior: true,
            location: "PROBE".into(),
            time_of_day: "DAY".into(),
        }],
        shots: vec![Shot {
            id: "s01-01".into(),
            scene_index: 0,
            action: "The answer.".into(),
            character_ids: Vec::new(),
            dialogue: Vec::new(),
            camera: Camera {
                size: ShotSize::Wide,
                movement: CameraMove::Fixed,
                angle: String::new(),
            },
            frames: 17,
            duration_ms: 1000,
            transition_in: Transition {
                kind: TransitionKind::Cut,
                duration_ms: 0,
            },
        }],
        opening_title: None,
        closing_title: None,
    }
}
