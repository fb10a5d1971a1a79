//! prompt-expander: one shot plus its storyboard to the final prompt a video model sees.
//! Characters are described with the same words, in the same order, in every shot they
//! appear in (that is what keeps faces and costumes stable across independently generated
//! clips); camera, setting, lighting and style follow in a model-specific template, and the
//! negative prompt joins the model's usual defects with the project's own. LTX-2, which makes the
//! sound with the pictures, hears every spoken line quoted with who says it and how, and the
//! sound of the place.
//!
//! With `text-generation` the language model rewrites only the action sentence and the camera
//! phrase in the words the target model family responds to (`rewrite`); the template still
//! assembles the prompt, so character descriptions, setting, lighting and look are never the
//! model's to change. Without the grant, without a model or with an unusable answer, the
//! template's own wording is used: the prompt is then deterministic.
//!
//! The keyframe prompt describes the shot's first moment as a still (the start frame of
//! image-to-video): the framing without camera movement, the template's action, the cast
//! verbatim, place, light and look; it is always the template's.

mod rewrite;

use rewrite::Rewrite;
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
        let mut parts = Parts {
            camera: camera_phrase(&shot),
            action: sentence(&shot.action),
            cast,
            speech: speech(&shot, &storyboard),
            said: said(&shot, &storyboard),
            setting: setting(scene),
            look: storyboard.style.look.trim().to_string(),
            lighting: lighting(scene, &storyboard.style.lighting),
            ambience: ambience(scene),
        };
        let keyframe_prompt = parts.keyframe(framing(shot.camera.size));
        let family = family(&model);
        if let Some(rewrite) = rewrite::ask(&shot, &storyboard, &parts, family, &model.family)? {
            parts.apply(rewrite);
        }
        let prompt = match family {
            Family::Wan => parts.wan(),
            Family::Ltx => parts.ltx(),
            Family::Flux | Family::Generic => parts.generic(),
        };
        let mut negative = vec![COMMON_NEGATIVE];
        if family == Family::Wan {
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
            keyframe_prompt,
        })
    }
}

videosdgx_plugin_sdk::export_expander!(PromptExpander);

/// Model families whose prompts are worded differently: Wan and LTX-2 have templates of their
/// own, FLUX shares the generic one and differs in what the language model is asked to write.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Family {
    Wan,
    Flux,
    Ltx,
    Generic,
}

fn family(model: &ModelProfile) -> Family {
    let name = model.family.to_lowercase();
    if name.starts_with("wan") {
        Family::Wan
    } else if name.starts_with("flux") {
        Family::Flux
    } else if name.starts_with("ltx") {
        Family::Ltx
    } else {
        Family::Generic
    }
}

struct Parts {
    camera: String,
    action: String,
    cast: Vec<String>,
    speech: String,
    /// Each spoken line, quoted with who says it and how (for LTX-2, which speaks them).
    said: Vec<SpokenLine>,
    setting: String,
    look: String,
    lighting: String,
    /// The sound of the place (for LTX-2, which makes it).
    ambience: String,
}

struct SpokenLine {
    text: String,
    /// `Mara says, whispering: "It still ticks."`
    sentence: String,
}

impl Parts {
    /// The language model's action and camera in place of the template's, in the template's
    /// shapes: the action a sentence, the camera a phrase ending in a colon.
    fn apply(&mut self, rewrite: Rewrite) {
        self.action = sentence(&rewrite.action);
        self.camera = format!("{}:", rewrite.camera);
    }

    /// Wan follows long natural-language captions: camera first, then subject and action,
    /// then who is who, then place, light and look.
    fn wan(&self) -> String {
        self.paragraph([self.speech.clone()], "")
    }

    /// LTX-2 makes the sound with the pictures and follows one chronological paragraph: Wan's,
    /// with every line quoted with who says it and how, and the sound of the place last. A
    /// rewritten action may quote the lines itself; those are not said twice.
    fn ltx(&self) -> String {
        let said = self
            .said
            .iter()
            .filter(|line| !self.action.contains(&line.text))
            .map(|line| line.sentence.clone());
        self.paragraph(said, &self.ambience)
    }

    /// Camera and action, the cast, what is said, place, light, look and the sound, as sentences.
    fn paragraph(&self, speech: impl IntoIterator<Item = String>, sound: &str) -> String {
        let mut out = vec![format!("{} {}", self.camera, self.action)];
        out.extend(self.cast.iter().cloned());
        out.extend(speech);
        out.extend([
            self.setting.clone(),
            self.lighting.clone(),
            self.look.clone(),
            sound.to_string(),
        ]);
        join_sentences(&out)
    }

    /// A still of the shot's first moment: no camera movement, no speech.
    fn keyframe(&self, framing: &str) -> String {
        let mut out = vec![format!(
            "Still frame, {}: {}",
            framing.to_lowercase(),
            self.action
        )];
        out.extend(self.cast.iter().cloned());
        out.extend([
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

fn said(shot: &Shot, storyboard: &Storyboard) -> Vec<SpokenLine> {
    shot.dialogue
        .iter()
        .filter(|line| !line.text.trim().is_empty())
        .map(|line| {
            let name = storyboard
                .characters
                .iter()
                .find(|c| c.id == line.character_id)
                .map_or(line.character_id.as_str(), |c| c.name.as_str());
            let text = line.text.trim().to_string();
            let how = line.parenthetical.trim();
            let sentence = if how.is_empty() {
                format!("{name} says: \"{text}\"")
            } else {
                format!("{name} says, {how}: \"{text}\"")
            };
            SpokenLine { text, sentence }
        })
        .collect()
}

/// `Ambient sound of the clock shop, night`: the place heard, for a model that makes sound.
fn ambience(scene: &Scene) -> String {
    let place = scene.location.trim().to_lowercase();
    let time = scene.time_of_day.trim().to_lowercase();
    match (place.is_empty(), time.is_empty()) {
        (true, _) => String::new(),
        (false, true) => format!("Ambient sound of the {place}"),
        (false, false) => format!("Ambient sound of the {place}, {time}"),
    }
}

fn framing(size: ShotSize) -> &'static str {
    match size {
        ShotSize::ExtremeWide => "Extreme wide establishing shot",
        ShotSize::Wide => "Wide shot",
        ShotSize::Medium => "Medium shot",
        ShotSize::MediumCloseUp => "Medium close-up",
        ShotSize::CloseUp => "Close-up",
        ShotSize::ExtremeCloseUp => "Extreme close-up",
        ShotSize::Insert => "Insert shot, detail",
    }
}

fn camera_phrase(shot: &Shot) -> String {
    let size = framing(shot.camera.size);
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
    // A quotation that ends its sentence inside the quotes (`says: "Go."`) ends it.
    let unquoted = text.trim_end_matches(['"', '\u{201d}']);
    if text.is_empty() || unquoted.ends_with(['.', '!', '?']) {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use videosdgx_plugin_sdk::types::{
        Camera, Character, DialogueLine, Style, Transition, TransitionKind,
    };

    pub(crate) const MARA: &str = "a clockmaker in her thirties, dark hair tied up with a pencil";
    pub(crate) const TOMAS: &str = "a boy of ten, round face, freckles";

    pub(crate) fn shot() -> Shot {
        Shot {
            id: "s01-02".into(),
            scene_index: 1,
            action: "Mara lifts the brass clock to the light".into(),
            character_ids: vec!["tomas".into(), "mara".into()],
            dialogue: vec![DialogueLine {
                character_id: "mara".into(),
                parenthetical: "whispering".into(),
                text: "It still ticks.".into(),
            }],
            camera: Camera {
                size: ShotSize::CloseUp,
                movement: CameraMove::DollyIn,
                angle: "low angle".into(),
            },
            frames: 81,
            duration_ms: 5062,
            transition_in: Transition {
                kind: TransitionKind::Cut,
                duration_ms: 0,
            },
        }
    }

    pub(crate) fn storyboard() -> Storyboard {
        let character = |id: &str, name: &str, description: &str| Character {
            id: id.into(),
            name: name.into(),
            description: description.into(),
        };
        Storyboard {
            title: "The Clockmaker's Bird".into(),
            style: Style {
                look: "35mm film still".into(),
                lighting: "warm tungsten practicals".into(),
                negative: String::new(),
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

    /// The template's parts for [`shot`], as `expand` builds them.
    pub(crate) fn parts() -> Parts {
        let (shot, storyboard) = (shot(), storyboard());
        Parts {
            camera: camera_phrase(&shot),
            action: sentence(&shot.action),
            cast: cast(&shot, &storyboard).unwrap(),
            speech: speech(&shot, &storyboard),
            said: said(&shot, &storyboard),
            setting: setting(&storyboard.scenes[0]),
            look: storyboard.style.look.clone(),
            lighting: lighting(&storyboard.scenes[0], &storyboard.style.lighting),
            ambience: ambience(&storyboard.scenes[0]),
        }
    }

    fn profile(family: &str) -> ModelProfile {
        ModelProfile {
            family: family.into(),
            width: 832,
            height: 480,
            fps: 16,
            max_frames: 81,
            frame_step: 4,
        }
    }

    #[test]
    fn the_family_is_read_from_the_start_of_the_profile_name() {
        for (name, expected) in [
            ("wan2.1", Family::Wan),
            ("Wan2.2-TI2V", Family::Wan),
            ("flux.1-dev", Family::Flux),
            ("FLUX.2", Family::Flux),
            ("ltx-2", Family::Ltx),
            ("LTX-Video", Family::Ltx),
            ("hunyuan-video", Family::Generic),
            ("not-flux", Family::Generic),
        ] {
            assert_eq!(family(&profile(name)), expected, "{name}");
        }
    }

    #[test]
    fn a_rewrite_replaces_the_action_and_camera_in_the_templates_shapes() {
        let mut wan = parts();
        wan.apply(Rewrite {
            action: "Mara raises the brass clock toward the lamp, her eyes narrowing".into(),
            camera: "Close-up from below, slow push in".into(),
        });
        assert!(
            wan.wan().starts_with(
                "Close-up from below, slow push in: Mara raises the brass clock toward the \
                 lamp, her eyes narrowing. Mara: "
            ),
            "{}",
            wan.wan()
        );
        assert!(
            wan.generic().starts_with(
                "Mara raises the brass clock toward the lamp, her eyes narrowing, Mara: "
            ),
            "{}",
            wan.generic()
        );
        assert!(
            wan.generic()
                .contains(", close-up from below, slow push in")
        );
    }

    #[test]
    fn ltx2_prompts_quote_each_line_with_who_says_it_and_the_sound_of_the_place() {
        let ltx = parts().ltx();
        assert!(
            ltx.starts_with("Close-up, low angle, slow dolly in: Mara lifts the brass clock"),
            "{ltx}"
        );
        assert!(
            ltx.contains("Mara says, whispering: \"It still ticks.\""),
            "{ltx}"
        );
        assert!(
            !ltx.contains("lips moving") && !ltx.contains(".\"."),
            "{ltx}"
        );
        assert!(
            ltx.ends_with("Ambient sound of the clock shop, night."),
            "{ltx}"
        );
        assert!(ltx.contains(&format!("Mara: {MARA}")), "{ltx}");

        // A rewrite that quotes the line already does not get it twice.
        let mut rewritten = parts();
        rewritten.apply(Rewrite {
            action: "Mara leans in and whispers, \"It still ticks.\" A clock chimes".into(),
            camera: "Close-up, slow push in".into(),
        });
        let ltx = rewritten.ltx();
        assert_eq!(ltx.matches("It still ticks.").count(), 1, "{ltx}");
    }

    #[test]
    fn descriptions_stay_verbatim_whatever_the_rewrite_says() {
        let mut hostile = parts();
        hostile.apply(Rewrite {
            action: "Mara, a tall blonde man, lifts the clock; Tomas is an old woman".into(),
            camera: "Wide shot".into(),
        });
        for prompt in [hostile.wan(), hostile.ltx(), hostile.generic()] {
            assert!(prompt.contains(&format!("Mara: {MARA}")), "{prompt}");
            assert!(prompt.contains(&format!("Tomas: {TOMAS}")), "{prompt}");
        }
    }

    #[test]
    fn the_keyframe_is_a_still_with_the_cast_verbatim() {
        let keyframe = parts().keyframe(framing(ShotSize::CloseUp));
        assert!(
            keyframe.starts_with("Still frame, close-up: Mara lifts the brass clock to the light."),
            "{keyframe}"
        );
        assert!(keyframe.contains(&format!("Mara: {MARA}")), "{keyframe}");
        assert!(keyframe.contains(&format!("Tomas: {TOMAS}")), "{keyframe}");
        for motion in ["dolly", "lips moving", "camera"] {
            assert!(!keyframe.contains(motion), "{motion}: {keyframe}");
        }
    }
}
