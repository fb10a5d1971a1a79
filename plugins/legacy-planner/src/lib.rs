//! A planner built against API 0.1.0 (wit/v0.1.0, no SDK), for the host's tests: the host must
//! keep loading and serving plugins of older API versions. The script's first word picks the
//! call: `echo TEXT` titles the storyboard TEXT, `complete PROMPT` titles it with the language
//! model's answer, `probe ASSET` with the video's size and length, `render ASSET` renders a
//! timeline of that video after a title card and titles it with the output's id, `loop` never
//! returns (the host's limits must end it).

wit_bindgen::generate!({
    path: "../../wit/v0.1.0",
    world: "planner",
});

use exports::videosdgx::plugin::planning::Guest;
use std::hint::black_box;
use videosdgx::plugin::types::{
    PlanInput, PluginError, Storyboard, Style, Timeline, TimelineClip, TimelineItem, TitleCard,
    Transition, TransitionKind,
};
use videosdgx::plugin::{media, text};

struct Legacy;

impl Guest for Legacy {
    fn plan(input: PlanInput) -> Result<Storyboard, PluginError> {
        let (call, argument) = input
            .script
            .split_once(' ')
            .unwrap_or((input.script.as_str(), ""));
        let title = match call {
            "echo" => argument.to_string(),
            "complete" => text::complete(argument, 8)?,
            "probe" => {
                let info = media::probe(argument)?;
                format!("{}x{}, {} ms", info.width, info.height, info.duration_ms)
            }
            "render" => render(argument)?,
            "loop" => {
                let mut x = 0u64;
                loop {
                    x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            other => return Err(PluginError::InvalidInput(format!("unknown call `{other}`"))),
        };
        Ok(Storyboard {
            title,
            style: Style {
                look: String::new(),
                lighting: String::new(),
                negative: String::new(),
            },
            characters: Vec::new(),
            scenes: Vec::new(),
            shots: Vec::new(),
            opening_title: None,
            closing_title: None,
        })
    }
}

export!(Legacy);

/// A title card, then the first second of `asset` faded in.
fn render(asset: &str) -> Result<String, PluginError> {
    let timeline = Timeline {
        width: 64,
        height: 48,
        fps: 8,
        items: vec![
            TimelineItem::Title(TitleCard {
                text: "Legacy".into(),
                duration_ms: 500,
            }),
            TimelineItem::Clip(TimelineClip {
                asset_id: asset.into(),
                shot_id: "s01-01".into(),
                trim_start_ms: 0,
                duration_ms: 1000,
                transition_in: Transition {
                    kind: TransitionKind::FadeThroughBlack,
                    duration_ms: 250,
                },
            }),
        ],
    };
    Ok(media::render_timeline(&timeline, "legacy.mp4")?.id)
}
