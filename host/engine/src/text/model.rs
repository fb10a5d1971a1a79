//! One entry point for every language model: reads a transformers model folder, dispatches on
//! `architectures` in `config.json`, and runs the decoder (with the vision tower where the
//! checkpoint has one). Callers never name a family.

use super::decoder::{Decoder, DecoderOutput, HiddenStates, Logits};
use super::gemma3::{self, Gemma3Config, Gemma3TextConfig};
use super::gemma3_vision::Gemma3Vision;
use super::mask::AttentionLayout;
use super::qwen3::{self, Qwen3Config};
use crate::loader::{LoadError, read_config};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use std::path::Path;

/// The model classes this module loads, by transformers' names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Architecture {
    Qwen3ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3ForConditionalGeneration,
}

impl Architecture {
    pub const KNOWN: &'static [&'static str] = &[
        "Qwen3ForCausalLM",
        "Gemma3ForCausalLM",
        "Gemma3ForConditionalGeneration",
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "Qwen3ForCausalLM" => Self::Qwen3ForCausalLM,
            "Gemma3ForCausalLM" => Self::Gemma3ForCausalLM,
            "Gemma3ForConditionalGeneration" => Self::Gemma3ForConditionalGeneration,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Qwen3ForCausalLM => "Qwen3ForCausalLM",
            Self::Gemma3ForCausalLM => "Gemma3ForCausalLM",
            Self::Gemma3ForConditionalGeneration => "Gemma3ForConditionalGeneration",
        }
    }
}

/// A model's `config.json`, parsed as its architecture's config.
#[derive(Debug, Clone)]
pub enum LanguageModelConfig {
    Qwen3(Qwen3Config),
    Gemma3Text(Gemma3TextConfig),
    Gemma3(Gemma3Config),
}

impl LanguageModelConfig {
    /// Reads `dir/config.json`; the architecture is the first of `architectures`.
    pub fn read(dir: &Path) -> std::result::Result<Self, LoadError> {
        let path = dir.join("config.json");
        let raw: serde_json::Value = read_config(&path)?;
        let name = raw
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .ok_or_else(|| LoadError::BadConfig {
                path: path.clone(),
                reason: "no `architectures`".into(),
            })?;
        let architecture = Architecture::from_name(name).ok_or_else(|| LoadError::BadConfig {
            path: path.clone(),
            reason: format!(
                "unknown architecture `{name}`; this engine knows {}",
                Architecture::KNOWN.join(", ")
            ),
        })?;
        let parse_error = |source| LoadError::Config {
            path: path.clone(),
            source,
        };
        Ok(match architecture {
            Architecture::Qwen3ForCausalLM => {
                Self::Qwen3(serde_json::from_value(raw).map_err(parse_error)?)
            }
            Architecture::Gemma3ForCausalLM => {
                Self::Gemma3Text(serde_json::from_value(raw).map_err(parse_error)?)
            }
            Architecture::Gemma3ForConditionalGeneration => {
                Self::Gemma3(serde_json::from_value(raw).map_err(parse_error)?)
            }
        })
    }

    pub fn architecture(&self) -> Architecture {
        match self {
            Self::Qwen3(_) => Architecture::Qwen3ForCausalLM,
            Self::Gemma3Text(_) => Architecture::Gemma3ForCausalLM,
            Self::Gemma3(_) => Architecture::Gemma3ForConditionalGeneration,
        }
    }
}

/// What a forward reads: token ids and mask `[B, T]`, and for Gemma 3 with images the pixel
/// values `[images, 3, H, W]` and which tokens are image tokens.
pub struct ModelInput<'a> {
    pub input_ids: &'a Tensor,
    pub attention_mask: Option<&'a Tensor>,
    pub pixel_values: Option<&'a Tensor>,
    pub token_type_ids: Option<&'a Tensor>,
}

pub struct LanguageModel {
    architecture: Architecture,
    decoder: Decoder,
    /// Gemma 3's vision tower and projector, and the token its soft image tokens replace.
    vision: Option<(Gemma3Vision, u32)>,
}

impl LanguageModel {
    /// Builds the model from its config over `vb` (the checkpoint's root).
    pub fn new(config: &LanguageModelConfig, vb: VarBuilder) -> anyhow::Result<Self> {
        let architecture = config.architecture();
        let text = |cfg: std::result::Result<_, String>| cfg.map_err(anyhow::Error::msg);
        let (decoder, vision) = match config {
            LanguageModelConfig::Qwen3(cfg) => (
                qwen3::qwen3_for_causal_lm(text(cfg.decoder_config())?, vb)?,
                None,
            ),
            LanguageModelConfig::Gemma3Text(cfg) => (
                gemma3::gemma3_for_causal_lm(text(cfg.decoder_config())?, vb)?,
                None,
            ),
            LanguageModelConfig::Gemma3(cfg) => (
                gemma3::gemma3_language_model(text(cfg.text_config.decoder_config())?, vb.clone())?,
                Some((Gemma3Vision::new(cfg, vb)?, cfg.image_token_index)),
            ),
        };
        Ok(Self {
            architecture,
            decoder,
            vision,
        })
    }

    /// Reads a transformers model folder (`config.json`, safetensors weights, sharded with an
    /// index or not), memory-mapping the weights.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        use anyhow::Context;
        let config = LanguageModelConfig::read(dir)?;
        let vb = crate::loader::open_weights(dir, dtype, device)?;
        Self::new(&config, vb).with_context(|| {
            format!(
                "loading {} from {}",
                config.architecture().name(),
                dir.display()
            )
        })
    }

    pub fn architecture(&self) -> Architecture {
        self.architecture
    }

    /// Keeps the decoder's projections in `quant` (`--quant`; a vision tower stays as loaded).
    /// Returns how many layers were quantized.
    pub fn quantize(&mut self, quant: crate::models::quant::Quant) -> candle_core::Result<usize> {
        self.decoder.quantize(quant)
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// Whether the model sees images (and which token stands for one soft image token).
    pub fn image_token_id(&self) -> Option<u32> {
        self.vision.as_ref().map(|(_, id)| *id)
    }

    /// The prompt's embeddings, with the image features of `pixel_values` (`[images, 3, H, W]`)
    /// in place of the image tokens, in order, as `inputs_embeds.masked_scatter` places them.
    pub fn embed(&self, input_ids: &Tensor, pixel_values: Option<&Tensor>) -> Result<Tensor> {
        let Some((vision, image_token)) = &self.vision else {
            if pixel_values.is_some() {
                candle_core::bail!("{} does not take images", self.architecture.name());
            }
            return self.decoder.embed(input_ids);
        };
        let ids = token_rows(input_ids, "input_ids")?.concat();
        let (b, t) = input_ids.dims2()?;
        let is_image: Vec<bool> = ids.iter().map(|id| id == image_token).collect();
        // The image token may lie past the embedding table; its rows are replaced anyway.
        let text_ids: Vec<u32> = ids
            .iter()
            .zip(&is_image)
            .map(|(&id, &image)| if image { 0 } else { id })
            .collect();
        let device = self.decoder.device();
        let embeds = self
            .decoder
            .embed(&Tensor::from_vec(text_ids, (b, t), device)?)?;
        let image_tokens = is_image.iter().filter(|&&image| image).count();
        let Some(pixel_values) = pixel_values else {
            if image_tokens > 0 {
                candle_core::bail!(
                    "input_ids hold {image_tokens} image tokens but no pixel_values were given"
                );
            }
            return Ok(embeds);
        };
        let features = vision.image_features(pixel_values)?;
        let (images, per_image, hidden) = features.dims3()?;
        if images * per_image != image_tokens {
            candle_core::bail!(
                "image features and image tokens do not match: {image_tokens} image tokens for \
                 {images} images of {per_image} tokens each"
            );
        }
        // Text rows, then image rows; every position picks its row from the stack.
        let rows = Tensor::cat(
            &[
                embeds.reshape((b * t, hidden))?,
                features
                    .reshape((images * per_image, hidden))?
                    .to_dtype(embeds.dtype())?,
            ],
            0,
        )?;
        let mut next_feature = b * t;
        let order: Vec<u32> = is_image
            .iter()
            .enumerate()
            .map(|(position, &image)| {
                let row = if image { next_feature } else { position };
                next_feature += usize::from(image);
                row as u32
            })
            .collect();
        rows.index_select(&Tensor::from_vec(order, b * t, device)?, 0)?
            .reshape((b, t, hidden))
    }

    /// One forward over a whole batch, as `model(input_ids, attention_mask, ...)` in transformers.
    pub fn forward(
        &self,
        input: &ModelInput,
        hidden: &HiddenStates,
        logits: Logits,
    ) -> Result<DecoderOutput> {
        let ids = token_rows(input.input_ids, "input_ids")?;
        let mask = match input.attention_mask {
            Some(mask) => token_rows(mask, "attention_mask")?,
            None => ids.iter().map(|row| vec![1; row.len()]).collect(),
        };
        let mut layout = AttentionLayout::for_forward(&mask)?;
        if layout.batch() != ids.len() || layout.len() != ids[0].len() {
            candle_core::bail!(
                "attention_mask has shape {:?}, input_ids {:?}",
                input.attention_mask.map(|m| m.dims().to_vec()),
                input.input_ids.dims()
            );
        }
        if let Some(types) = input.token_type_ids {
            layout = layout.with_image_blocks(&token_rows(types, "token_type_ids")?)?;
        }
        let embeds = self.embed(input.input_ids, input.pixel_values)?;
        self.decoder.forward(&embeds, &layout, None, hidden, logits)
    }

    /// The hidden states of the chosen layers (numbered as transformers' `hidden_states`) for a
    /// batch of prompts, stopping after the last one needed: what image and video pipelines use
    /// as prompt embeddings.
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        layers: HiddenStates,
    ) -> Result<Vec<Tensor>> {
        let input = ModelInput {
            input_ids,
            attention_mask: Some(attention_mask),
            pixel_values: None,
            token_type_ids: None,
        };
        Ok(self.forward(&input, &layers, Logits::Skip)?.hidden_states)
    }
}

/// A `[B, T]` integer tensor as rows of u32, refusing other ranks and negative ids by name.
pub fn token_rows(t: &Tensor, name: &str) -> Result<Vec<Vec<u32>>> {
    if t.rank() != 2 {
        candle_core::bail!("{name} must be [batch, tokens], got {:?}", t.dims());
    }
    let values = t
        .to_dtype(DType::I64)?
        .to_device(&Device::Cpu)?
        .to_vec2::<i64>()?;
    values
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|v| {
                    u32::try_from(v).map_err(|_| {
                        candle_core::Error::Msg(format!("{name} holds {v}, not a token id"))
                    })
                })
                .collect()
        })
        .collect()
}
