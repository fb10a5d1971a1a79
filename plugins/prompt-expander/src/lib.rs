//! prompt-expander: one shot plus its storyboard to the final prompt a video model sees.
//! Characters are described with the same words, in the same order, in every shot they
//! appear in (that is what keeps faces and costumes stable across independently generated
//! clips); camera, setting, lighting and style follow in a model-specific template, and the
//! negative prompt joins the model's usual defects with the project's own. Deterministic.

use videosdgx_plugin_sdk::types::{
    CameraMove, ModelProfile, PluginError, Scene, Shot, ShotPrompt, ShotSize, Storyboard,
};
use videosdgx_plugin_sdk::{Expander, host};

/// Defects every video model is told to avoid.
const COMMON_NEGATIVE: &str = "blurry, low quality, jpeg artifacts, watermark, text, subtitles, \
     logo, deformed hands, extra fingers, distorted face, duplicate people, static frame, flicker";
/// Wan 2.x responds to its training captions' vocabulary for over-processed footage.
const WAN_NEGATIVE: &str = "overexposed, oversaturated, worst quality, messy background, \
     many people in the background, walking backwards, still picture";

struct PromptExpander;

impl Expander for PromptExpander {
    fn expand(
        shot: Shot,
        storyboard: Storyboard,
        model: ModelProfile,
    ) -> Result<ShotPrompt, PluginError> {
        let scene = storyboard
            .scenes
            .iter()
            .find(|s| s.index == shot.scene_index)
            .ok_or_else(|| {
                PluginError::InvalidInput(format!(
                    "shot `{}` refers to scene {}, which the storyboard does not have",
                    shot.id, shot.scene_index
                ))
            })?;
        let cast = cast(&shot, &storyboard)?;
        let parts = Parts {
            camera: camera_phrase(&shot),
            action: sentence(&shot.action),
            cast,
            speech: speech(&shot, &storyboard),
            setting: setting(scene),
            look: storyboard.style.look.trim().to_string(),
            lighting: lighting(scene, &storyboard.style.lighting),
        };
        let prompt = match family(&model) {
            Family::Wan => parts.wan(),
            Family::Generic => parts.generic(),
        };
        let mut negative = vec![COMMON_NEGATIVE];
        if family(&model) == Family::Wan {
            negative.push(WAN_NEGATIVE);
        }
        if !storyboard.style.negative.trim().is_empty() {
            negative.push(storyboard.style.negative.trim());
        }
        host::debug(&format!("expanded shot {}", shot.id));
        Ok(ShotPrompt {
            shot_id: shot.id,
            prompt,
            negative_prompt: negative.join(", "),
        })
    }
}

videosdgx_plugin_sdk::export_expander!(PromptExpander);

#[derive(PartialEq)]
enum Family {
    Wan,
    Generic,
}

fn family(model: &ModelProfile) -> Family {
    if model.family.to_lowercase().starts_with("wan") {
        Family::Wan
    } else {
        Family::Generic
    }
}

struct Parts {
    camera: String,
    action: String,
    cast: Vec<String>,
    speech: String,
    setting: String,
    look: String,
    lighting: String,
}

impl Parts {
    /// Wan follows long natural-language captions: camera first, then subject and action,
    /// then who is who, then place, light and look.
    fn wan(&self) -> String {
        let mut out = vec![format!("{} {}", self.camera, self.action)];
        if !self.cast.is_empty() {
            out.push(self.cast.join(" "));
        }
        out.extend([
            self.speech.clone(),
            self.setting.clone(),
            self.lighting.clone(),
            self.look.clone(),
        ]);
        join_sentences(&out)
    }

    /// Tag-style prompt for models trained on short captions.
    fn generic(&self) -> String {
        let mut out = vec![self.action.trim_end_matches('.').to_string()];
        out.extend(
            self.cast
                .iter()
                .map(|c| c.trim_end_matches('.').to_string()),
        );
        out.extend([
            self.camera.trim_end_matches('.').to_lowercase(),
            self.setting.clone(),
            self.lighting.clone(),
        ]);
        out.push(self.look.clone());
        out.retain(|p| !p.trim().is_empty());
        out.iter()
            .map(|p| p.trim().trim_end_matches('.'))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `Mara, a woman in her 30s with ... .` for each character on screen, in bible order.
fn cast(shot: &Shot, storyboard: &Storyboard) -> Result<Vec<String>, PluginError> {
    for id in &shot.character_ids {
        if !storyboard.characters.iter().any(|c| &c.id == id) {
            return Err(PluginError::InvalidInput(format!(
                "shot `{}` shows character `{id}`, who is not in the storyboard's characters",
                shot.id
            )));
        }
    }
    Ok(storyboard
        .characters
        .iter()
        .filter(|c| shot.character_ids.contains(&c.id))
        .map(|c| {
            let description = c.description.trim().trim_end_matches('.');
            if description.is_empty() {
                format!("{}.", c.name)
            } else {
                format!("{}: {description}.", c.name)
            }
        })
        .collect())
}

fn speech(shot: &Shot, storyboard: &Storyboard) -> String {
    shot.dialogue
        .iter()
        .map(|line| {
            let name = storyboard
                .characters
                .iter()
                .find(|c| c.id == line.character_id)
                .map_or(line.character_id.as_str(), |c| c.name.as_str());
            if line.parenthetical.is_empty() {
                format!("{name} is talking, lips moving.")
            } else {
                format!(
                    "{name} is talking, {}, lips moving.",
                    line.parenthetical.trim()
                )
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn camera_phrase(shot: &Shot) -> String {
    let size = match shot.camera.size {
        ShotSize::ExtremeWide => "Extreme wide establishing shot",
        ShotSize::Wide => "Wide shot",
        ShotSize::Medium => "Medium shot",
        ShotSize::MediumCloseUp => "Medium close-up",
        ShotSize::CloseUp => "Close-up",
        ShotSize::ExtremeCloseUp => "Extreme close-up",
        ShotSize::Insert => "Insert shot, detail",
    };
    let movement = match shot.camera.movement {
        CameraMove::Fixed => "locked-off camera",
        CameraMove::PanLeft => "the camera pans slowly left",
        CameraMove::PanRight => "the camera pans slowly right",
        CameraMove::TiltUp => "the camera tilts up",
        CameraMove::TiltDown => "the camera tilts down",
        CameraMove::DollyIn => "slow dolly in",
        CameraMove::DollyOut => "slow dolly out",
        CameraMove::Tracking => "smooth tracking shot following the subject",
        CameraMove::Handheld => "handheld camera, subtle shake",
        CameraMove::CraneUp => "the camera cranes up",
        CameraMove::Orbit => "the camera orbits the subject",
    };
    let angle = shot.camera.angle.trim();
    if angle.is_empty() {
        format!("{size}, {movement}:")
    } else {
        format!("{size}, {angle}, {movement}:")
    }
}

fn setting(scene: &Scene) -> String {
    if scene.location.trim().is_empty() {
        return String::new();
    }
    let side = if scene.interior {
        "Interior"
    } else {
        "Exterior"
    };
    format!("{side}, {}", scene.location.trim().to_lowercase())
}

/// Time of day decides the light unless the style names its own.
fn lighting(scene: &Scene, style_lighting: &str) -> String {
    let time = scene.time_of_day.to_uppercase();
    let natural = if time.contains("NIGHT") {
        "night, low-key light, deep shadows"
    } else if time.contains("DAWN") || time.contains("SUNRISE") {
        "dawn, soft pink and gold light"
    } else if time.contains("DUSK") || time.contains("SUNSET") || time.contains("EVENING") {
        "golden hour, long warm shadows"
    } else if time.contains("DAY") || time.contains("MORNING") || time.contains("NOON") {
        "daylight"
    } else {
        ""
    };
    [natural, style_lighting.trim()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

fn sentence(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() || text.ends_with(['.', '!', '?']) {
        text.to_string()
    } else {
        format!("{text}.")
    }
}

fn join_sentences(parts: &[String]) -> String {
    parts
        .iter()
        .map(|p| sentence(p))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
