//! A model's generation defaults, read from `generation_config.json` the way transformers 5
//! reads them (its global defaults for whatever the file leaves out or sets to null; the token
//! ids from `config.json` when there is no such file), and the tokens that end a turn. It only
//! reads configuration and never decides anything the caller overrides.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

use super::sampling::SamplingParams;

/// The generation settings a model ships with.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` of generation_config.json (an int or a list there).
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    pub do_sample: bool,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub repetition_penalty: f32,
    /// Tokens to generate at most; when unset, `max_length` bounds prompt and output together.
    pub max_new_tokens: Option<usize>,
    pub max_length: usize,
    /// Every token that ends the model's turn: `eos_token_ids`, then config.json's
    /// `eos_token_id` where it names others (instruct models often list only one of them there).
    pub end_of_turn_ids: Vec<u32>,
}

/// transformers' `GenerationConfig._get_default_generation_params`, for the fields read here.
impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            bos_token_id: None,
            eos_token_ids: Vec::new(),
            pad_token_id: None,
            do_sample: false,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            repetition_penalty: 1.0,
            max_new_tokens: None,
            max_length: 20,
            end_of_turn_ids: Vec::new(),
        }
    }
}

/// The fields as the files spell them; null is the same as absent.
#[derive(Debug, Default, Deserialize)]
struct RawGenerationConfig {
    bos_token_id: Option<u32>,
    eos_token_id: Option<TokenIds>,
    pad_token_id: Option<u32>,
    do_sample: Option<bool>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    repetition_penalty: Option<f32>,
    max_new_tokens: Option<usize>,
    max_length: Option<usize>,
    /// A multimodal model's config.json keeps the language model's ids here.
    text_config: Option<Box<RawGenerationConfig>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

impl RawGenerationConfig {
    fn read(path: &Path) -> Result<Option<RawGenerationConfig>> {
        if !path.is_file() {
            return Ok(None);
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", path.display()))
            .map(Some)
    }

    /// The eos ids at the top level, else in `text_config`.
    fn eos_token_ids(&self) -> Vec<u32> {
        match (&self.eos_token_id, &self.text_config) {
            (Some(ids), _) => ids.to_vec(),
            (None, Some(text)) => text.eos_token_ids(),
            (None, None) => Vec::new(),
        }
    }
}

impl GenerationConfig {
    /// The defaults of the model in `dir`: `generation_config.json` when it exists, otherwise
    /// the token ids of `config.json` (as `GenerationConfig.from_model_config`) and transformers'
    /// defaults. A file that exists but does not parse is an error naming it.
    pub fn from_dir(dir: &Path) -> Result<GenerationConfig> {
        let model = RawGenerationConfig::read(&dir.join("config.json"))?.unwrap_or_default();
        let generation = match RawGenerationConfig::read(&dir.join("generation_config.json"))? {
            Some(generation) => generation,
            None => {
                let text = model.text_config.as_deref();
                RawGenerationConfig {
                    bos_token_id: model.bos_token_id.or(text.and_then(|t| t.bos_token_id)),
                    eos_token_id: Some(TokenIds::Many(model.eos_token_ids())),
                    pad_token_id: model.pad_token_id.or(text.and_then(|t| t.pad_token_id)),
                    ..RawGenerationConfig::default()
                }
            }
        };
        let defaults = GenerationConfig::default();
        let eos_token_ids = generation.eos_token_ids();
        let mut end_of_turn_ids = eos_token_ids.clone();
        for id in model.eos_token_ids() {
            if !end_of_turn_ids.contains(&id) {
                end_of_turn_ids.push(id);
            }
        }
        Ok(GenerationConfig {
            bos_token_id: generation.bos_token_id,
            eos_token_ids,
            pad_token_id: generation.pad_token_id,
            do_sample: generation.do_sample.unwrap_or(defaults.do_sample),
            temperature: generation.temperature.unwrap_or(defaults.temperature),
            top_k: generation.top_k.unwrap_or(defaults.top_k),
            top_p: generation.top_p.unwrap_or(defaults.top_p),
            repetition_penalty: generation
                .repetition_penalty
                .unwrap_or(defaults.repetition_penalty),
            max_new_tokens: generation.max_new_tokens,
            max_length: generation.max_length.unwrap_or(defaults.max_length),
            end_of_turn_ids,
        })
    }

    /// How many tokens may follow a prompt of `prompt_len`: `max_new_tokens`, else what
    /// `max_length` leaves.
    pub fn max_new_tokens_after(&self, prompt_len: usize) -> usize {
        self.max_new_tokens
            .unwrap_or_else(|| self.max_length.saturating_sub(prompt_len))
    }

    /// The model's sampling defaults with a caller's seed.
    pub fn sampling_params(&self, seed: u64) -> SamplingParams {
        SamplingParams {
            do_sample: self.do_sample,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            seed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn reads_qwen3s_generation_config() {
        // Qwen/Qwen3-0.6B's files (the fields read here).
        let dir = model_dir(&[
            (
                "generation_config.json",
                r#"{"bos_token_id": 151643, "do_sample": true, "eos_token_id": [151645, 151643],
                    "pad_token_id": 151643, "temperature": 0.6, "top_k": 20, "top_p": 0.95,
                    "transformers_version": "4.51.0"}"#,
            ),
            (
                "config.json",
                r#"{"bos_token_id": 151643, "eos_token_id": 151645}"#,
            ),
        ]);
        let config = GenerationConfig::from_dir(dir.path()).unwrap();
        assert_eq!(config.bos_token_id, Some(151643));
        assert_eq!(config.eos_token_ids, vec![151645, 151643]);
        assert_eq!(config.end_of_turn_ids, vec![151645, 151643]);
        assert_eq!(config.pad_token_id, Some(151643));
        assert!(config.do_sample);
        assert_eq!(
            (config.temperature, config.top_k, config.top_p),
            (0.6, 20, 0.95)
        );
        assert_eq!(config.repetition_penalty, 1.0);
        assert_eq!(config.max_new_tokens_after(5), 15);
        let params = config.sampling_params(9);
        assert_eq!((params.top_k, params.seed), (20, 9));
    }

    #[test]
    fn end_of_turn_ids_add_config_jsons_eos() {
        let dir = model_dir(&[
            (
                "generation_config.json",
                r#"{"eos_token_id": 1, "top_k": null, "max_new_tokens": 64}"#,
            ),
            (
                "config.json",
                r#"{"text_config": {"eos_token_id": [1, 106]}}"#,
            ),
        ]);
        let config = GenerationConfig::from_dir(dir.path()).unwrap();
        assert_eq!(config.eos_token_ids, vec![1]);
        assert_eq!(config.end_of_turn_ids, vec![1, 106]);
        // null takes transformers' default.
        assert_eq!(config.top_k, 50);
        assert_eq!(config.max_new_tokens_after(1000), 64);
    }

    #[test]
    fn without_generation_config_the_model_config_gives_the_ids() {
        let dir = model_dir(&[(
            "config.json",
            r#"{"model_type": "gemma3", "text_config": {"bos_token_id": 2, "eos_token_id": [1, 106], "pad_token_id": 0}}"#,
        )]);
        let config = GenerationConfig::from_dir(dir.path()).unwrap();
        assert_eq!(
            config,
            GenerationConfig {
                bos_token_id: Some(2),
                eos_token_ids: vec![1, 106],
                pad_token_id: Some(0),
                end_of_turn_ids: vec![1, 106],
                ..GenerationConfig::default()
            }
        );
    }

    #[test]
    fn a_bad_field_names_the_file() {
        let dir = model_dir(&[("generation_config.json", r#"{"top_k": "many"}"#)]);
        let err = GenerationConfig::from_dir(dir.path()).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("generation_config.json"), "{text}");
        assert!(
            text.contains("top_k") || text.contains("invalid type"),
            "{text}"
        );
    }
}
