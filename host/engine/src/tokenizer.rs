//! Prompt tokenisation with the pipeline's own `tokenizer.json` (the `tokenizers` crate), padded and
//! truncated the way the Wan pipelines call the T5 tokenizer (`padding="max_length"`,
//! `truncation=True`, `add_special_tokens=True`). Never downloads anything and never cleans text
//! (prompt cleaning is the pipeline's business).

use anyhow::{Context, Result};
use std::path::Path;
use std::str::FromStr;
use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// `CLIPTokenizer`'s word regex: the special tokens, English contractions, letter runs, single
/// digits and runs of other non-space characters.
const CLIP_WORDS: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The BPE vocabulary (a JSON object) and merges (a JSON array of pairs) of a CLIP tokenizer
/// folder: from `tokenizer.json`'s model, else from `vocab.json` and `merges.txt`.
fn clip_vocab_and_merges(dir: &Path) -> Result<(serde_json::Value, serde_json::Value)> {
    let tokenizer_json = dir.join("tokenizer.json");
    if tokenizer_json.is_file() {
        let mut file: serde_json::Value = crate::loader::read_config(&tokenizer_json)?;
        let model = file["model"].take();
        if model["type"] != "BPE" || !model["vocab"].is_object() {
            anyhow::bail!(
                "{}: a CLIP tokenizer must hold a BPE model",
                tokenizer_json.display()
            );
        }
        return Ok((model["vocab"].clone(), model["merges"].clone()));
    }
    let vocab: serde_json::Value = crate::loader::read_config(&dir.join("vocab.json"))?;
    let merges_path = dir.join("merges.txt");
    let merges = std::fs::read_to_string(&merges_path)
        .with_context(|| format!("cannot read {}", merges_path.display()))?;
    let merges: Vec<serde_json::Value> = merges
        .lines()
        .filter(|line| !line.starts_with("#version") && !line.trim().is_empty())
        .map(|line| {
            let (a, b) = line
                .split_once(' ')
                .with_context(|| format!("{}: malformed merge `{line}`", merges_path.display()))?;
            Ok(serde_json::json!([a, b]))
        })
        .collect::<Result<_>>()?;
    Ok((vocab, serde_json::Value::Array(merges)))
}

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

    /// A CLIP tokenizer (FLUX.1's `tokenizer/`) as transformers 5's `CLIPTokenizer` builds it:
    /// whatever pipeline a `tokenizer.json` describes, only its BPE vocabulary and merges are kept
    /// (or those of `vocab.json` and `merges.txt`, all the published FLUX.1 folders have), under
    /// CLIP's normalizer (NFC, whitespace runs to one space, lowercase), pre-tokenizer (CLIP's
    /// word regex, then byte-level), `</w>` word ends and `<|startoftext|> … <|endoftext|>`.
    pub fn clip_from_dir(dir: &Path) -> Result<Self> {
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = if config_path.is_file() {
            crate::loader::read_config(&config_path)?
        } else {
            serde_json::Value::Null
        };
        let special = |key: &str, default: &str| match &config[key] {
            serde_json::Value::String(token) => token.clone(),
            serde_json::Value::Object(token) => token
                .get("content")
                .and_then(|c| c.as_str())
                .unwrap_or(default)
                .to_string(),
            _ => default.to_string(),
        };
        let (bos, eos) = (
            special("bos_token", "<|startoftext|>"),
            special("eos_token", "<|endoftext|>"),
        );
        let (unk, pad) = (
            special("unk_token", "<|endoftext|>"),
            special("pad_token", "<|endoftext|>"),
        );
        let (vocab, merges) = clip_vocab_and_merges(dir)?;
        let id = |token: &str| {
            vocab
                .get(token)
                .and_then(|id| id.as_u64())
                .with_context(|| format!("{}: the CLIP vocabulary has no `{token}`", dir.display()))
        };
        let added: Vec<serde_json::Value> = [&bos, &eos, &unk, &pad]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|token| {
                Ok(serde_json::json!({
                    "id": id(token)?, "content": token, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true
                }))
            })
            .collect::<Result<_>>()?;
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
                {"type": "Lowercase"}
            ]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": CLIP_WORDS}, "behavior": "Removed", "invert": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
            ]},
            "post_processor": {
                "type": "RobertaProcessing", "sep": [eos, id(&eos)?], "cls": [bos, id(&bos)?],
                "trim_offsets": false, "add_prefix_space": false
            },
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": "",
                "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": false, "vocab": vocab, "merges": merges
            }
        });
        let tokenizer = Tokenizer::from_str(&json.to_string()).map_err(|err| {
            anyhow::anyhow!("{}: cannot build the CLIP tokenizer: {err}", dir.display())
        })?;
        Ok(Self {
            pad_id: id(&pad)? as u32,
            pad_token: pad,
            tokenizer,
        })
    }

    /// Tokenises `text` with special tokens, truncated and right-padded to `max_length`.
    pub fn encode(&self, text: &str, max_length: usize) -> Result<EncodedPrompt> {
        self.encode_padded(text, max_length, PaddingDirection::Right)
    }

    /// [`Self::encode`] with the padding in front, as chat-style tokenizers (Gemma's for LTX-2)
    /// pad.
    pub fn encode_left_padded(&self, text: &str, max_length: usize) -> Result<EncodedPrompt> {
        self.encode_padded(text, max_length, PaddingDirection::Left)
    }

    fn encode_padded(
        &self,
        text: &str,
        max_length: usize,
        direction: PaddingDirection,
    ) -> Result<EncodedPrompt> {
        let mut tokenizer = self.tokenizer.clone();
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|err| anyhow::anyhow!("tokenizer truncation: {err}"))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction,
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
