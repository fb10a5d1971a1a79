//! The `chat` job kind (GPU lane): one request to the studio's language model. A turn's images
//! are asset ids: an image is shown as is, a video as a few evenly spaced frames. Progress is
//! the answer's length in tokens against its budget; a cancel stops between tokens. Requests
//! are checked at submission, so a bad one is refused before it waits for the GPU.

use super::{LanguageModel, configured};
use crate::app::App;
use crate::assets::{MediaKind, get_asset};
use crate::error::{Result, StudioError};
use crate::jobs::{JobContext, JobRunner, Lane};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use videosdgx_engine::pipelines::Cancelled;
use videosdgx_engine::text::chat::ChatOptions;
use videosdgx_engine::text::chat_template::{ChatMessage, ContentPart, MessageContent};
use videosdgx_engine::text::generation::FinishReason;
use videosdgx_engine::video;

/// Longest answer one request may ask for.
pub const MAX_TOKENS: u32 = 8192;
/// Bounds that keep one request from occupying the GPU lane with work nobody can read.
const MAX_TURNS: usize = 256;
const MAX_IMAGES: usize = 16;
const MAX_STOP_STRINGS: usize = 16;
/// Frames a video is shown as.
const VIDEO_FRAMES: usize = 4;
const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// Parameters of a `chat` job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    pub messages: Vec<ChatTurn>,
    #[serde(default)]
    pub options: ChatSettings,
}

/// One turn of the conversation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatTurn {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub text: String,
    /// Image or video asset ids shown with this turn.
    #[serde(default)]
    pub images: Vec<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ChatSettings {
    /// New tokens at most, 1 to 8192.
    pub max_tokens: u32,
    /// 0 is greedy; the model's own default when absent.
    pub temperature: Option<f32>,
    pub seed: u64,
    /// The answer ends before the first of these.
    pub stop: Vec<String>,
    /// A JSON Schema (an object) the answer must satisfy.
    #[schema(value_type = Option<Object>)]
    pub json_schema: Option<Value>,
}

impl Default for ChatSettings {
    fn default() -> Self {
        ChatSettings {
            max_tokens: 512,
            temperature: None,
            seed: 0,
            stop: Vec::new(),
            json_schema: None,
        }
    }
}

/// Why an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    EndOfTurn,
    MaxTokens,
    StopString,
}

/// A `chat` job's result.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatAnswer {
    /// The language model that answered.
    pub model: String,
    pub text: String,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub finish: Finish,
}

impl ChatRequest {
    fn parse(params: &Value) -> Result<ChatRequest> {
        serde_json::from_value(params.clone())
            .map_err(|e| StudioError::Invalid(format!("parameters of a chat job: {e}")))
    }

    /// Refuses what the model could not answer well or at all, naming the field.
    fn check(&self, app: &App, model: &LanguageModel) -> Result<()> {
        let invalid = |why: String| Err(StudioError::Invalid(why));
        if self.messages.is_empty() || self.messages.len() > MAX_TURNS {
            return invalid(format!("a chat needs 1 to {MAX_TURNS} messages"));
        }
        if let Some(turn) = self
            .messages
            .iter()
            .find(|t| !ROLES.contains(&t.role.as_str()))
        {
            return invalid(format!(
                "message role `{}` is not one of {}",
                turn.role,
                ROLES.join(", ")
            ));
        }
        let options = &self.options;
        if !(1..=MAX_TOKENS).contains(&options.max_tokens) {
            return invalid(format!(
                "max_tokens must be 1 to {MAX_TOKENS}, got {}",
                options.max_tokens
            ));
        }
        if let Some(t) = options.temperature.filter(|t| !t.is_finite() || *t < 0.0) {
            return invalid(format!("temperature must be a finite number >= 0, got {t}"));
        }
        if options.stop.len() > MAX_STOP_STRINGS || options.stop.iter().any(String::is_empty) {
            return invalid(format!(
                "stop takes at most {MAX_STOP_STRINGS} non-empty strings"
            ));
        }
        if options.json_schema.as_ref().is_some_and(|s| !s.is_object()) {
            return invalid("json_schema must be a JSON Schema object".into());
        }
        let mut shown = 0;
        for id in self.messages.iter().flat_map(|t| &t.images) {
            shown += match get_asset(&app.db, *id)?.kind {
                MediaKind::Image => 1,
                MediaKind::Video => VIDEO_FRAMES,
                kind @ (MediaKind::Audio | MediaKind::Lora) => {
                    return invalid(format!(
                        "asset {id} is {}, not an image or a video",
                        if kind == MediaKind::Audio {
                            "audio"
                        } else {
                            "a LoRA"
                        }
                    ));
                }
            };
        }
        if shown > MAX_IMAGES {
            return invalid(format!(
                "the messages show {shown} images (a video counts {VIDEO_FRAMES}); at most {MAX_IMAGES}"
            ));
        }
        if shown > 0 {
            model.check_sees_images()?;
        }
        Ok(())
    }

    /// The conversation as the engine takes it: images where their turn shows them.
    fn conversation(&self, app: &App) -> Result<(Vec<ChatMessage>, Vec<RgbImage>)> {
        let mut messages = Vec::with_capacity(self.messages.len());
        let mut images = Vec::new();
        for turn in &self.messages {
            let before = images.len();
            for id in &turn.images {
                images.extend(shown_images(app, *id)?);
            }
            let content = if images.len() == before {
                MessageContent::Text(turn.text.clone())
            } else {
                let mut parts = vec![ContentPart::Image; images.len() - before];
                parts.push(ContentPart::Text {
                    text: turn.text.clone(),
                });
                MessageContent::Parts(parts)
            };
            messages.push(ChatMessage {
                role: turn.role.clone(),
                content,
                extra: Default::default(),
            });
        }
        Ok((messages, images))
    }

    fn engine_options(&self) -> ChatOptions {
        ChatOptions {
            max_tokens: Some(self.options.max_tokens as usize),
            temperature: self.options.temperature,
            seed: self.options.seed,
            stop: self.options.stop.clone(),
            json_schema: self.options.json_schema.clone(),
            ..ChatOptions::default()
        }
    }
}

/// What the model is shown for asset `id`: the image, or frames spread over the video.
fn shown_images(app: &App, id: i64) -> Result<Vec<RgbImage>> {
    let asset = get_asset(&app.db, id)?;
    let path = app.assets.file_of(&asset);
    let unreadable = |e: &dyn std::fmt::Display| {
        StudioError::Invalid(format!("asset {id} cannot be shown to the model: {e}"))
    };
    match asset.kind {
        MediaKind::Image => {
            // Stored files have no extension: the format comes from the content.
            let reader = image::ImageReader::open(&path)
                .and_then(|r| r.with_guessed_format())
                .map_err(|e| unreadable(&e))?;
            Ok(vec![reader.decode().map_err(|e| unreadable(&e))?.to_rgb8()])
        }
        MediaKind::Video => {
            let frames = video::probe(&path).map_err(|e| unreadable(&e))?.frames;
            evenly_spaced(frames, VIDEO_FRAMES)
                .into_iter()
                .map(|index| video::extract_frame(&path, index).map_err(|e| unreadable(&e)))
                .collect()
        }
        MediaKind::Audio => Err(unreadable(&"it is audio")),
        MediaKind::Lora => Err(unreadable(&"it is a LoRA")),
    }
}

/// `count` frame indices from first to last of `frames`, all of them when there are fewer.
fn evenly_spaced(frames: usize, count: usize) -> Vec<usize> {
    if frames <= count {
        return (0..frames).collect();
    }
    (0..count).map(|k| k * (frames - 1) / (count - 1)).collect()
}

/// `chat`: one request to the configured language model, on the GPU lane.
pub struct ChatRunner;

impl JobRunner for ChatRunner {
    fn kind(&self) -> &'static str {
        "chat"
    }
    fn lane(&self) -> Lane {
        Lane::Gpu
    }
    fn default_attempts(&self) -> u32 {
        // The same request fails the same way again (a bad schema, a prompt too long).
        1
    }
    fn check(&self, app: &App, params: &Value) -> Result<()> {
        ChatRequest::parse(params)?.check(app, &configured(app)?)
    }
    fn run(&self, app: &App, ctx: &JobContext, params: &Value) -> Result<Value> {
        let request = ChatRequest::parse(params)?;
        let model = configured(app)?;
        request.check(app, &model)?;
        let (messages, images) = request.conversation(app)?;
        let options = request.engine_options();
        let budget = u64::from(request.options.max_tokens);
        let stopped = || StudioError::Internal(anyhow::Error::new(Cancelled));
        let reply = app.gpus.with_language(
            Some(ctx.job_id()),
            &model.name,
            &model.path,
            model.quant,
            &mut |stage, step, total| ctx.progress(stage, step, total),
            |chat, report| {
                if report("generating", 0, budget).is_break() {
                    return Err(stopped());
                }
                // One report per piece of text, which is one per token but for tokens that
                // complete nothing printable; the reply counts tokens exactly.
                let mut pieces = 0;
                let reply = chat.chat(&messages, &images, &options, &mut |_| {
                    pieces += 1;
                    report("generating", pieces, budget)
                })?;
                Ok(reply)
            },
        )?;
        let finish = match reply.finish {
            FinishReason::EndOfTurn => Finish::EndOfTurn,
            FinishReason::MaxTokens => Finish::MaxTokens,
            FinishReason::StopString => Finish::StopString,
            FinishReason::Stopped => return Err(stopped()),
        };
        let answer = ChatAnswer {
            model: model.name,
            text: reply.text,
            prompt_tokens: reply.prompt_tokens,
            generated_tokens: reply.generated_tokens,
            finish,
        };
        Ok(serde_json::to_value(answer).map_err(anyhow::Error::from)?)
    }
}

#[cfg(test)]
mod tests {
    use super::evenly_spaced;

    #[test]
    fn frames_are_spread_from_first_to_last() {
        assert_eq!(evenly_spaced(81, 4), [0, 26, 53, 80]);
        assert_eq!(evenly_spaced(3, 4), [0, 1, 2]);
        assert_eq!(evenly_spaced(0, 4), Vec::<usize>::new());
    }
}
