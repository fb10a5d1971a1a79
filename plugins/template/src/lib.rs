//! Template plugin: copy this crate to start a new plugin. It is a real (if simple) planner:
//! every paragraph of the brief becomes one shot of the longest clip the model allows.

use videosdgx_plugin_sdk::types::{
    Camera, CameraMove, PlanInput, PluginError, Scene, Shot, ShotSize, Storyboard,
};
use videosdgx_plugin_sdk::{Planner, frames, host};

struct Template;

impl Planner for Template {
    fn plan(input: PlanInput) -> Result<Storyboard, PluginError> {
        let paragraphs: Vec<&str> = input
            .script
            .split("\n\n")
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if paragraphs.is_empty() {
            return Err(PluginError::InvalidInput("the brief is empty".into()));
        }
        let model = &input.settings.model;
        let frames = frames::longest(model);
        let shots = paragraphs
            .iter()
            .enumerate()
            .map(|(i, text)| {
                host::progress(i as u32 + 1, paragraphs.len() as u32, "planning");
                Shot {
                    id: format!("s01-{:02}", i + 1),
                    scene_index: 1,
                    action: text.replace('\n', " "),
                    character_ids: Vec::new(),
                    dialogue: Vec::new(),
                    camera: Camera {
                        size: ShotSize::Medium,
                        movement: CameraMove::Fixed,
                        angle: String::new(),
                    },
                    frames,
                    duration_ms: frames::duration_ms(frames, model),
                    transition_in: input.settings.shot_transition,
                }
            })
            .collect();
        host::info(&format!("planned {} shots", paragraphs.len()));
        Ok(Storyboard {
            title: input.settings.title.clone(),
            style: input.settings.style,
            characters: input.settings.characters,
            scenes: vec![Scene {
                index: 1,
                heading: String::new(),
                interior: false,
                location: String::new(),
                time_of_day: String::new(),
            }],
            shots,
            opening_title: None,
            closing_title: None,
        })
    }
}

videosdgx_plugin_sdk::export_planner!(Template);
