//! Prompt tokenisation with the pipeline's own `tokenizer.json` (the `tokenizers` crate), padded and
//! truncated the way the Wan pipelines call the T5 tokenizer (`padding="max_length"`,
//! `truncation=True`, `add_special_tokens=True`). Never downloads anything and never cleans text
//! (prompt cleaning is the pipeline's business).

use anyhow::{Context, Result};
use std::path::Path;
use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// Token ids and attention mask of one prompt, both `max_length` long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPrompt {
    pub input_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
}

impl EncodedPrompt {
    /// Number of real (non-padding) tokens, `mask.gt(0).sum()` in the pipeline.
    pub fn len(&self) -> usize {
        self.attention_mask.iter().filter(|&&m| m > 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A tokenizer read from a pipeline's `tokenizer` folder.
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    pad_id: u32,
    pad_token: String,
}

impl PromptTokenizer {
    /// Reads `dir/tokenizer.json`; the padding token is the one `tokenizer_config.json` names
    /// (`<pad>` if it names none).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&path)
            .map_err(|err| anyhow::anyhow!("cannot read {}: {err}", path.display()))?;
        let config_path = dir.join("tokenizer_config.json");
        let pad_token = if config_path.is_file() {
            let config: serde_json::Value = crate::loader::read_config(&config_path)?;
            match config.get("pad_token") {
                Some(serde_json::Value::String(token)) => token.clone(),
                Some(serde_json::Value::Object(token)) => token
                    .get("content")
                    .and_then(|c| c.as_str())
                    .unwrap_or("<pad>")
                    .to_string(),
                _ => "<pad>".to_string(),
            }
        } else {
            "<pad>".to_string()
        };
        let pad_id = tokenizer.token_to_id(&pad_token).with_context(|| {
            format!(
                "{}: padding token `{pad_token}` is not in the vocabulary",
                path.display()
            )
        })?;
        Ok(Self {
            tokenizer,
            pad_id,
            pad_token,
        })
    }

    /// Tokenises `text` with special tokens, truncated and right-padded to `max_length`.
    pub fn encode(&self, text: &str, max_length: usize) -> Result<EncodedPrompt> {
        let mut tokenizer = self.tokenizer.clone();
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|err| anyhow::anyhow!("tokenizer truncation: {err}"))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: PaddingDirection::Right,
            pad_id: self.pad_id,
            pad_token: self.pad_token.clone(),
            ..Default::default()
        }));
        let encoding = tokenizer
            .encode(text, true)
            .map_err(|err| anyhow::anyhow!("cannot tokenize prompt: {err}"))?;
        Ok(EncodedPrompt {
            input_ids: encoding.get_ids().to_vec(),
            attention_mask: encoding.get_attention_mask().to_vec(),
        })
    }
}
