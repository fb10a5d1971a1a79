//! A planner that asks the host's image model for a still, for the host's tests. The script is
//! `REFERENCES PROMPT`: comma-separated image asset ids (`-` for none), then the prompt. The new
//! asset's id comes back as the storyboard's title, with one placeholder shot (a plan needs one).
//! Never install this outside tests.

use videosdgx_plugin_sdk::types::{
    Camera, CameraMove, GenerationRequest, PlanInput, PluginError, Scene, Shot, ShotSize,
    Storyboard, Style, Transition, TransitionKind,
};
use videosdgx_plugin_sdk::{Planner, host};

struct ImageProbe;

impl Planner for ImageProbe {
    fn plan(input: PlanInput) -> Result<Storyboard, PluginError> {
        let (references, prompt) = input.script.split_once(' ').unwrap_or(("-", &input.script));
        let references: Vec<String> = match references {
            "-" => Vec::new(),
            ids => ids.split(',').map(str::to_string).collect(),
        };
        let request = GenerationRequest {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            width: 64,
            height: 64,
            frames: 1,
            steps: Some(2),
            guidance: Some(1.0),
            seed: 11,
        };
        let asset = host::generation::image(&request, &references)?;
        Ok(storyboard(asset.id))
    }
}

videosdgx_plugin_sdk::export_planner!(ImageProbe);

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
            action: "The image.".into(),
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
