//! A conversation with a language model folder, as a user of local models expects it: the
//! model's own chat template and tokenizer, its generation defaults unless the request overrides
//! them, images placed where the conversation shows them (Gemma 3: each `<start_of_image>`
//! becomes the soft-token block its processor writes), text streamed as it is produced with stop
//! strings never shown in part, an optional JSON Schema the answer must satisfy, and a stop
//! between tokens whenever the caller says so.

use super::chat_template::{ChatMessage, ChatTemplate};
use super::constrained::{JsonConstraint, TokenVocabulary};
use super::generation::{FinishReason, NextToken, Prompts, StopAt, generate};
use super::generation_config::GenerationConfig;
use super::model::{LanguageModel, LanguageModelConfig};
use super::sampling::{Sampler, SamplingParams};
use super::stop::StopStrings;
use crate::image_processor::Gemma3ImageProcessor;
use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tokenizers::Tokenizer;

/// How to answer; `None` fields take the model's `generation_config.json` defaults.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct ChatOptions {
    /// New tokens at most (the model's default budget when `None`, at least 1).
    pub max_tokens: Option<usize>,
    /// 0 means greedy decoding.
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    /// The same seed and request give the same answer on every run.
    pub seed: u64,
    /// The answer ends before the first of these.
    pub stop: Vec<String>,
    /// The answer must be JSON valid under this schema.
    pub json_schema: Option<serde_json::Value>,
    /// The template's own variables (Qwen3's `enable_thinking`).
    pub template_variables: serde_json::Map<String, serde_json::Value>,
}

/// What came back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChatReply {
    pub text: String,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub finish: FinishReason,
}

/// The image side of a Gemma 3 folder: its processor and the prompt block of one image.
struct ImageInput {
    processor: Gemma3ImageProcessor,
    /// `<start_of_image>`, which the chat template writes where an image goes.
    boi_token: String,
    /// What the processor writes in its place: blank lines, the boi token, the soft image
    /// tokens, the end-of-image token, blank lines.
    block: String,
}

/// A model folder ready to chat.
pub struct ChatModel {
    dir: PathBuf,
    model: LanguageModel,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    defaults: GenerationConfig,
    images: Option<ImageInput>,
    /// Built on the first constrained request (a pass over the whole vocabulary).
    vocabulary: OnceLock<TokenVocabulary>,
}

impl ChatModel {
    /// Keeps the language model's decoder projections in `quant` ([`LanguageModel::quantize`]).
    pub fn quantize(&mut self, quant: crate::models::quant::Quant) -> candle_core::Result<usize> {
        self.model.quantize(quant)
    }

    /// Reads the model, `tokenizer.json`, the chat template, `generation_config.json` and, for
    /// models that see, `preprocessor_config.json`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let model = LanguageModel::load(dir, device, dtype)?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|err| anyhow::anyhow!("cannot read {}: {err}", tokenizer_path.display()))?;
        let template = ChatTemplate::from_dir(dir)?.with_context(|| {
            format!(
                "{} has no chat template (chat_template.jinja or tokenizer_config.json's \
                 chat_template): it is not a chat model",
                dir.display()
            )
        })?;
        let defaults = GenerationConfig::from_dir(dir)?;
        let images = match LanguageModelConfig::read(dir)? {
            LanguageModelConfig::Gemma3(cfg) => {
                let token = |id: u32, what: &str| {
                    tokenizer.id_to_token(id).with_context(|| {
                        format!(
                            "{}: the {what} token {id} is not in tokenizer.json",
                            dir.display()
                        )
                    })
                };
                let boi_token = token(cfg.boi_token_index, "start-of-image")?;
                let block = format!(
                    "\n\n{boi_token}{}{}\n\n",
                    token(cfg.image_token_index, "image")?.repeat(cfg.mm_tokens_per_image),
                    token(cfg.eoi_token_index, "end-of-image")?
                );
                Some(ImageInput {
                    processor: Gemma3ImageProcessor::from_dir(dir)?,
                    boi_token,
                    block,
                })
            }
            _ => None,
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            model,
            tokenizer,
            template,
            defaults,
            images,
            vocabulary: OnceLock::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the model can look at images.
    pub fn sees_images(&self) -> bool {
        self.images.is_some()
    }

    /// The prompt's token ids as the template and tokenizer make them, with the images' soft
    /// tokens in place.
    pub fn prompt_ids(
        &self,
        messages: &[ChatMessage],
        images: usize,
        options: &ChatOptions,
    ) -> Result<Vec<u32>> {
        let mut prompt = self
            .template
            .render(messages, true, &options.template_variables)?;
        match &self.images {
            Some(input) => {
                let marked = prompt.matches(input.boi_token.as_str()).count();
                if marked != images {
                    bail!("the conversation shows {marked} images but {images} were given");
                }
                prompt = prompt.replace(input.boi_token.as_str(), &input.block);
            }
            None if images > 0 => bail!("{} does not take images", self.dir.display()),
            None => {}
        }
        // The template writes the special tokens itself (`<bos>`), as apply_chat_template's
        // tokenization does.
        let encoding = self
            .tokenizer
            .encode(prompt.as_str(), false)
            .map_err(|err| anyhow::anyhow!("cannot tokenize the prompt: {err}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Answers the conversation. `on_text` sees each new piece of the answer as it is produced
    /// and may stop the generation (the reply then ends with `FinishReason::Stopped`).
    pub fn chat(
        &self,
        messages: &[ChatMessage],
        images: &[RgbImage],
        options: &ChatOptions,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<ChatReply> {
        let input_ids = self.prompt_ids(messages, images.len(), options)?;
        let prompt_tokens = input_ids.len();
        let device = self.model.decoder().device().clone();
        let mut prompts = Prompts::single(input_ids);
        if let (Some(input), false) = (&self.images, images.is_empty()) {
            let pixels = images
                .iter()
                .map(|image| input.processor.preprocess(image, &device))
                .collect::<Result<Vec<_>>>()?;
            prompts.pixel_values = Some(Tensor::cat(&pixels, 0)?);
            let image_token = self
                .model
                .image_token_id()
                .expect("a model that sees has one");
            prompts.token_type_ids = Some(vec![
                prompts.input_ids[0]
                    .iter()
                    .map(|&id| u32::from(id == image_token))
                    .collect(),
            ]);
        }
        let eos = self.defaults.end_of_turn_ids.clone();
        if eos.is_empty() {
            bail!(
                "{}: no end-of-turn token in generation_config.json or config.json",
                self.dir.display()
            );
        }
        let stop = StopAt {
            max_new_tokens: options
                .max_tokens
                .unwrap_or_else(|| self.defaults.max_new_tokens_after(prompt_tokens))
                .max(1),
            pad_token_id: eos[0],
            eos_token_ids: eos.clone(),
        };
        let constraint = match &options.json_schema {
            Some(schema) => {
                let vocabulary = match self.vocabulary.get() {
                    Some(vocabulary) => vocabulary,
                    None => {
                        let built = TokenVocabulary::new(&self.tokenizer, &eos)?;
                        self.vocabulary.get_or_init(|| built)
                    }
                };
                Some(JsonConstraint::new(vocabulary, schema)?)
            }
            None => None,
        };
        let mut chooser = Chooser {
            sampler: Sampler::new(self.sampling(options))?,
            constraint,
        };

        let stop_strings = StopStrings::new(options.stop.iter().cloned())?;
        let mut stream = TextStream::new(&self.tokenizer, &stop_strings, &eos);
        let mut stream_error = None;
        let generated = generate(&self.model, &prompts, &stop, &mut chooser, &mut |step| {
            match stream.push(step[0]) {
                Ok(Some(piece)) => on_text(&piece)?,
                Ok(None) => {}
                Err(err) => {
                    stream_error = Some(err);
                    return ControlFlow::Break(());
                }
            }
            if stream.stopped {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        if let Some(err) = stream_error {
            return Err(err);
        }
        let finish = if stream.stopped {
            FinishReason::StopString
        } else {
            generated.finish
        };
        let (text, held_back) = stream.finish();
        if !held_back.is_empty() {
            // A partial stop string that never completed is part of the answer after all.
            let _ = on_text(&held_back);
        }
        if let Some(constraint) = &mut chooser.constraint
            && finish != FinishReason::Stopped
        {
            constraint.check_complete()?;
        }
        Ok(ChatReply {
            text,
            prompt_tokens,
            generated_tokens: generated.sequences[0].len() - generated.prompt_len,
            finish,
        })
    }

    /// The request's sampling over the model's defaults; temperature 0 is greedy.
    fn sampling(&self, options: &ChatOptions) -> SamplingParams {
        let mut params = self.defaults.sampling_params(options.seed);
        if let Some(t) = options.temperature {
            params.do_sample = t > 0.0;
            if t > 0.0 {
                params.temperature = t;
            }
        }
        params.top_k = options.top_k.unwrap_or(params.top_k);
        params.top_p = options.top_p.unwrap_or(params.top_p);
        params.repetition_penalty = options
            .repetition_penalty
            .unwrap_or(params.repetition_penalty);
        params
    }
}

/// The request's sampler, under its JSON Schema where it has one: mask, sample, accept.
struct Chooser {
    sampler: Sampler,
    constraint: Option<JsonConstraint>,
}

impl NextToken for Chooser {
    fn choose(&mut self, _: usize, logits: &[f32], history: &[u32]) -> Result<u32> {
        let Some(constraint) = &mut self.constraint else {
            return self.sampler.next_token(logits, history);
        };
        let mut logits = logits.to_vec();
        constraint.mask_logits(&mut logits)?;
        let token = self.sampler.next_token(&logits, history)?;
        constraint.accept(token)?;
        Ok(token)
    }
}

/// The answer's text as its tokens arrive: decoded whole each time (a token may complete a
/// character another began), with what could still become a stop string or an unfinished
/// character held back.
struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    stop: &'a StopStrings,
    eos: &'a [u32],
    tokens: Vec<u32>,
    text: String,
    shown: usize,
    stopped: bool,
}

impl<'a> TextStream<'a> {
    fn new(tokenizer: &'a Tokenizer, stop: &'a StopStrings, eos: &'a [u32]) -> Self {
        Self {
            tokenizer,
            stop,
            eos,
            tokens: Vec::new(),
            text: String::new(),
            shown: 0,
            stopped: false,
        }
    }

    /// Adds a token; returns the text that is now safe to show.
    fn push(&mut self, token: u32) -> Result<Option<String>> {
        if self.stopped || self.eos.contains(&token) {
            return Ok(None);
        }
        self.tokens.push(token);
        self.text = self
            .tokenizer
            .decode(&self.tokens, true)
            .map_err(|err| anyhow::anyhow!("cannot decode the answer: {err}"))?;
        if let Some(found) = self.stop.find(&self.text) {
            self.text.truncate(found.cut);
            self.stopped = true;
        }
        let mut safe = self.text.len();
        if !self.stopped {
            safe -= self.stop.holdback(&self.text);
            // An unfinished UTF-8 sequence decodes as U+FFFD until its last byte arrives.
            if self.text[..safe].ends_with('\u{FFFD}') {
                safe -= '\u{FFFD}'.len_utf8();
            }
        }
        if safe <= self.shown {
            return Ok(None);
        }
        let piece = self.text[self.shown..safe].to_string();
        self.shown = safe;
        Ok(Some(piece))
    }

    /// The whole answer, and the part of it not shown yet.
    fn finish(self) -> (String, String) {
        let rest = self.text[self.shown..].to_string();
        (self.text, rest)
    }
}
