//! The language model's wording of a shot's action and camera for one model family. The model
//! is shown the shot (action, camera, who is on screen by name, and for LTX-2 the dialogue)
//! and answers `{"action", "camera"}` under a JSON Schema. It is never shown character
//! descriptions, setting, lighting or look, and nothing it writes replaces them: the template
//! adds them verbatim. Greedy decoding with a fixed seed, so the same shot and model give the
//! same prompt.

use crate::{Family, Parts};
use serde::Deserialize;
use videosdgx_plugin_sdk::host::{self, text};
use videosdgx_plugin_sdk::types::{PluginError, Shot, Storyboard};

/// Longest action and camera taken from the model, in characters; a longer answer is not a
/// rewording but a model gone astray.
const MAX_ACTION_CHARS: usize = 600;
const MAX_CAMERA_CHARS: usize = 200;
/// Twice both fields at their longest (about 4 characters a token): room for the JSON around
/// them and for words that take several tokens.
const ANSWER_TOKENS: u32 = 400;

const INSTRUCTIONS: &str = "You adapt one shot of a storyboard to the wording a video or image \
     generation model responds to. Rewrite two things only: the action (what happens on screen) \
     and the camera (how the shot is framed). Refer to characters by name only and never \
     describe their appearance, age or clothing: their descriptions are added to the prompt \
     separately, word for word. Do not mention the setting, the lighting or the visual style \
     either; they are added separately too. Keep to what the shot says happens: add concrete \
     visible detail, but no new characters or events. Answer only with the JSON asked for.";

/// The action and camera wording the model proposed, checked by [`read`].
#[derive(Debug, PartialEq, Deserialize)]
pub(crate) struct Rewrite {
    pub action: String,
    pub camera: String,
}

/// The model's rewrite of `parts`' action and camera for `family`, or `None` to keep the
/// template's wording: without the `text-generation` grant or a language model (logged at info
/// level), or when the answer is unusable (a warning). Only a cancellation is an error, so a
/// cancelled expansion stops rather than carrying on without the model.
pub(crate) fn ask(
    shot: &Shot,
    storyboard: &Storyboard,
    parts: &Parts,
    family: Family,
    family_name: &str,
) -> Result<Option<Rewrite>, PluginError> {
    let options = text::ChatOptions {
        max_tokens: ANSWER_TOKENS,
        temperature: 0.0,
        seed: 0,
        stop: Vec::new(),
        json_schema: Some(schema()),
    };
    let reply = match text::chat(
        &messages(shot, storyboard, parts, family, family_name),
        &options,
    ) {
        Ok(reply) => reply,
        Err(PluginError::Cancelled) => return Err(PluginError::Cancelled),
        Err(err) => {
            let why = match err {
                PluginError::Denied(_) => "`text-generation` is not granted".to_string(),
                other => format!("the language model did not answer: {other}"),
            };
            host::info(&format!(
                "shot {}: the template's own wording ({why})",
                shot.id
            ));
            return Ok(None);
        }
    };
    match read(&reply.text) {
        Ok(rewrite) => Ok(Some(rewrite)),
        Err(why) => {
            host::warn(&format!(
                "shot {}: the template's own wording, since the rewrite by the language model \
                 `{}` {why}",
                shot.id, reply.model
            ));
            Ok(None)
        }
    }
}

/// What the answer must be: both fields, non-empty and bounded.
fn schema() -> String {
    serde_json::json!({
        "type": "object",
        "properties": {
            "action": {"type": "string", "minLength": 1, "maxLength": MAX_ACTION_CHARS},
            "camera": {"type": "string", "minLength": 1, "maxLength": MAX_CAMERA_CHARS},
        },
        "required": ["action", "camera"],
        "additionalProperties": false,
    })
    .to_string()
}

/// What the target family's prompts are like, and so how to word the two fields.
fn guide(family: Family) -> &'static str {
    match family {
        Family::Wan => {
            "The target is Wan 2.x, which follows one flowing paragraph of concrete visual \
             detail. `action`: present tense, the subject and exactly what they do, step by \
             step, in one or two sentences. `camera`: the shot size and the camera's movement, \
             e.g. `Medium close-up, slow dolly in`."
        }
        Family::Flux => {
            "The target is FLUX, which makes a single still image. `action`: one frozen moment \
             in present tense (pose, expression, gesture, what is held), with no motion or \
             change over time: no walking, turning, starting or camera movement. `camera`: \
             composition and lens, never a movement, e.g. `Close-up, 85mm lens, shallow depth \
             of field, subject on the left third`."
        }
        Family::Ltx => {
            "The target is LTX-2, which follows one chronological paragraph in present tense \
             describing movement and sound. `action`: what happens in the order it happens, the \
             sounds heard, and every spoken line quoted exactly with who says it and how, e.g. \
             `Mara leans in and whispers, \"It still ticks.\" A clock chimes behind her.` \
             `camera`: the shot size and the camera's movement, e.g. `Wide shot, the camera \
             slowly pushes in`."
        }
        Family::Generic => {
            "`action`: one sentence of concrete visible detail in present tense. `camera`: the \
             shot size and the camera's movement."
        }
    }
}

/// The request: instructions for the family, then the shot as the template worded it.
fn messages(
    shot: &Shot,
    storyboard: &Storyboard,
    parts: &Parts,
    family: Family,
    family_name: &str,
) -> Vec<text::ChatMessage> {
    let name = |id: &str| {
        storyboard
            .characters
            .iter()
            .find(|c| c.id == id)
            .map_or(id.to_string(), |c| c.name.clone())
    };
    let on_screen: Vec<String> = shot.character_ids.iter().map(|id| name(id)).collect();
    let mut user = format!(
        "Target model family: {family_name}\nAction: {}\nCamera: {}\nOn screen: {}\n",
        parts.action,
        parts.camera.trim_end_matches(':'),
        if on_screen.is_empty() {
            "no recurring character".to_string()
        } else {
            on_screen.join(", ")
        }
    );
    // Only LTX-2 prompts quote what is said; to the others, words are text on screen.
    if family == Family::Ltx {
        for line in &shot.dialogue {
            let how = line.parenthetical.trim();
            let how = if how.is_empty() {
                String::new()
            } else {
                format!(" ({how})")
            };
            user += &format!(
                "{}{how} says: \"{}\"\n",
                name(&line.character_id),
                line.text.trim()
            );
        }
    }
    let turn = |role: &str, text: String| text::ChatMessage {
        role: role.into(),
        text,
        images: Vec::new(),
    };
    vec![
        turn("system", format!("{INSTRUCTIONS} {}", guide(family))),
        turn("user", user),
    ]
}

/// The model's answer as a rewrite on one line, the camera without closing punctuation (the
/// template adds its own), or why it cannot be used: not the JSON asked for, a field empty, or
/// a field too long.
fn read(answer: &str) -> Result<Rewrite, String> {
    let rewrite: Rewrite = serde_json::from_str(answer.trim())
        .map_err(|e| format!("is not the JSON asked for ({e})"))?;
    let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let camera = one_line(&rewrite.camera);
    let rewrite = Rewrite {
        action: one_line(&rewrite.action),
        camera: camera
            .trim_end_matches(|c: char| matches!(c, '.' | ',' | ';' | ':') || c.is_whitespace())
            .to_string(),
    };
    if rewrite.action.is_empty() || rewrite.camera.is_empty() {
        return Err("has an empty action or camera".into());
    }
    let (action, camera) = (
        rewrite.action.chars().count(),
        rewrite.camera.chars().count(),
    );
    if action > MAX_ACTION_CHARS || camera > MAX_CAMERA_CHARS {
        return Err(format!(
            "is too long ({action} characters of action, {camera} of camera; at most \
             {MAX_ACTION_CHARS} and {MAX_CAMERA_CHARS})"
        ));
    }
    Ok(rewrite)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{MARA, TOMAS, parts, shot, storyboard};

    fn request(family: Family, family_name: &str) -> (String, String) {
        let messages = messages(&shot(), &storyboard(), &parts(), family, family_name);
        let [system, user] = messages.as_slice() else {
            panic!("two turns expected, got {}", messages.len())
        };
        assert_eq!(
            (system.role.as_str(), user.role.as_str()),
            ("system", "user")
        );
        (system.text.clone(), user.text.clone())
    }

    #[test]
    fn each_family_is_asked_for_its_own_wording() {
        let (wan, _) = request(Family::Wan, "wan2.1");
        assert!(
            wan.contains("Wan 2.x") && wan.contains("one flowing paragraph"),
            "{wan}"
        );
        let (flux, _) = request(Family::Flux, "flux.1-dev");
        assert!(
            flux.contains("single still image") && flux.contains("never a movement"),
            "{flux}"
        );
        let (ltx, _) = request(Family::Ltx, "ltx-2");
        assert!(
            ltx.contains("chronological") && ltx.contains("sounds") && ltx.contains("quoted"),
            "{ltx}"
        );
        for system in [wan, flux, ltx] {
            assert!(system.starts_with(INSTRUCTIONS));
        }
    }

    #[test]
    fn the_model_sees_the_shot_and_names_but_never_a_description() {
        let (_, user) = request(Family::Wan, "wan2.1");
        assert_eq!(
            user,
            "Target model family: wan2.1\n\
             Action: Mara lifts the brass clock to the light.\n\
             Camera: Close-up, low angle, slow dolly in\n\
             On screen: Tomas, Mara\n"
        );
        for family in [Family::Wan, Family::Flux, Family::Ltx, Family::Generic] {
            let (system, user) = request(family, "any");
            for description in [MARA, TOMAS] {
                assert!(!system.contains(description) && !user.contains(description));
            }
        }
    }

    #[test]
    fn only_ltx_is_shown_the_dialogue_to_quote() {
        let (_, ltx) = request(Family::Ltx, "ltx-2");
        assert!(
            ltx.ends_with("Mara (whispering) says: \"It still ticks.\"\n"),
            "{ltx}"
        );
        for family in [Family::Wan, Family::Flux, Family::Generic] {
            assert!(!request(family, "any").1.contains("It still ticks"));
        }
    }

    #[test]
    fn the_schema_bounds_both_fields() {
        let schema: serde_json::Value = serde_json::from_str(&schema()).unwrap();
        assert_eq!(schema["required"], serde_json::json!(["action", "camera"]));
        assert_eq!(
            schema["properties"]["action"]["maxLength"],
            MAX_ACTION_CHARS
        );
        assert_eq!(
            schema["properties"]["camera"]["maxLength"],
            MAX_CAMERA_CHARS
        );
        assert_eq!(schema["additionalProperties"], false);
    }

    #[test]
    fn a_rewrite_is_read_onto_one_line() {
        let answer =
            r#"{"action": " Mara raises\nthe clock  slowly. ", "camera": "Close-up,\tdolly in :"}"#;
        assert_eq!(
            read(answer),
            Ok(Rewrite {
                action: "Mara raises the clock slowly.".into(),
                camera: "Close-up, dolly in".into(),
            })
        );
        let longest = serde_json::json!({"action": "a".repeat(MAX_ACTION_CHARS), "camera": "c"});
        assert!(read(&longest.to_string()).is_ok());
    }

    #[test]
    fn unusable_answers_are_refused() {
        let too_long_action = serde_json::json!({
            "action": "é".repeat(MAX_ACTION_CHARS + 1),
            "camera": "Close-up",
        });
        let too_long_camera = serde_json::json!({
            "action": "Mara waits.",
            "camera": "c".repeat(MAX_CAMERA_CHARS + 1),
        });
        for answer in [
            String::new(),
            "Mara raises the clock.".into(),
            "{\"action\": \"Mara raises".into(),
            "{}".into(),
            r#"{"action": "Mara raises the clock."}"#.into(),
            r#"{"action": " \n ", "camera": "Close-up"}"#.into(),
            r#"{"action": "Mara raises the clock.", "camera": ""}"#.into(),
            r#"{"action": "Mara raises the clock.", "camera": " :. "}"#.into(),
            too_long_action.to_string(),
            too_long_camera.to_string(),
        ] {
            assert!(read(&answer).is_err(), "{answer:?} was accepted");
        }
    }
}
