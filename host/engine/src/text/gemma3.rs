//! Gemma 3 (transformers' `models/gemma3`): `Gemma3ForCausalLM`, the text-only 1B, and the
//! language side of `Gemma3ForConditionalGeneration` (4B/12B/27B). The shared decoder with
//! `x * (1 + weight)` norms around every sub-layer, embeddings scaled by `sqrt(hidden_size)`,
//! query/key norms, `query_pre_attn_scalar` as the attention scale, and five sliding-window layers
//! (local rotary base) to every global one (global base, optionally linearly scaled). The config's
//! `attn_logit_softcapping` is read by the reference but never applied, so it is not here. LTX-2
//! encodes its prompts with every hidden state of the 12B.

use super::config::{RopeEntry, RopeParameters, layer_types};
use super::decoder::{Decoder, DecoderConfig, LayerAttention, NormPlacement, NormScale};
use super::siglip::SiglipVisionConfig;
use crate::models::Activation;
use candle_core::Result;
use candle_nn::VarBuilder;
use serde::Deserialize;

/// The text config (`config.json` of the 1B, `text_config` of the multimodal models), field
/// names and defaults as in `Gemma3TextConfig`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Gemma3TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub hidden_activation: String,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    pub rope_parameters: Option<RopeParameters>,
    /// Older files: the global layers' base and scaling, and the local layers' base.
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<RopeEntry>,
    pub rope_local_base_freq: Option<f64>,
    pub attention_bias: bool,
    pub query_pre_attn_scalar: f64,
    pub sliding_window: Option<usize>,
    pub sliding_window_pattern: usize,
    pub layer_types: Option<Vec<String>>,
    pub final_logit_softcapping: Option<f64>,
    pub use_bidirectional_attention: bool,
}

impl Default for Gemma3TextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 262_208,
            hidden_size: 2304,
            intermediate_size: 9216,
            num_hidden_layers: 26,
            num_attention_heads: 8,
            num_key_value_heads: 4,
            head_dim: 256,
            hidden_activation: "gelu_pytorch_tanh".into(),
            rms_norm_eps: 1e-6,
            tie_word_embeddings: true,
            rope_parameters: None,
            rope_theta: None,
            rope_scaling: None,
            rope_local_base_freq: None,
            attention_bias: false,
            query_pre_attn_scalar: 256.0,
            sliding_window: Some(4096),
            sliding_window_pattern: 6,
            layer_types: None,
            final_logit_softcapping: None,
            use_bidirectional_attention: false,
        }
    }
}

impl Gemma3TextConfig {
    pub fn decoder_config(&self) -> std::result::Result<DecoderConfig, String> {
        if self.use_bidirectional_attention {
            return Err("use_bidirectional_attention (embedding models) is not supported".into());
        }
        let pattern = self.sliding_window_pattern.max(1);
        let layer_types = layer_types(self.layer_types.as_deref(), self.num_hidden_layers, |i| {
            if (i + 1) % pattern != 0 {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })?;
        let layers = layer_types
            .iter()
            .map(|kind| {
                let (entry, theta, sliding_window) = match kind.as_str() {
                    "full_attention" => (
                        self.rope_scaling.clone(),
                        self.rope_theta.unwrap_or(1_000_000.0),
                        None,
                    ),
                    "sliding_attention" => (
                        None,
                        self.rope_local_base_freq.unwrap_or(10_000.0),
                        Some(
                            self.sliding_window
                                .ok_or("a sliding_attention layer needs sliding_window")?,
                        ),
                    ),
                    other => return Err(format!("unknown layer type `{other}`")),
                };
                let entry = match &self.rope_parameters {
                    Some(parameters) => parameters.entry(kind),
                    None => entry,
                };
                Ok(LayerAttention {
                    sliding_window,
                    rope: entry.unwrap_or_default().resolve(theta)?,
                })
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        Ok(DecoderConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            rms_norm_eps: self.rms_norm_eps,
            hidden_act: Activation::from_name(&self.hidden_activation).ok_or_else(|| {
                format!("unsupported hidden_activation `{}`", self.hidden_activation)
            })?,
            attention_bias: self.attention_bias,
            attention_scale: self.query_pre_attn_scalar.powf(-0.5),
            final_logit_softcapping: self.final_logit_softcapping,
            norm_scale: NormScale::OnePlusWeight,
            norm_placement: NormPlacement::Sandwich,
            embedding_scale: Some((self.hidden_size as f64).sqrt()),
            tie_word_embeddings: self.tie_word_embeddings,
            layers,
        })
    }
}

/// `Gemma3ForCausalLM`'s layout: `model.*`, `lm_head` (tied by default).
pub fn gemma3_for_causal_lm(cfg: DecoderConfig, vb: VarBuilder) -> Result<Decoder> {
    Decoder::new(cfg, true, vb.pp("model"), vb.pp("lm_head"))
}

/// The multimodal config (`Gemma3Config`): the text model, the SigLIP tower and how images
/// enter the prompt.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Gemma3Config {
    pub text_config: Gemma3TextConfig,
    pub vision_config: SiglipVisionConfig,
    pub mm_tokens_per_image: usize,
    #[serde(alias = "boi_token_id")]
    pub boi_token_index: u32,
    #[serde(alias = "eoi_token_id")]
    pub eoi_token_index: u32,
    #[serde(alias = "image_token_id")]
    pub image_token_index: u32,
}

impl Default for Gemma3Config {
    fn default() -> Self {
        Self {
            text_config: Gemma3TextConfig::default(),
            vision_config: SiglipVisionConfig::default(),
            mm_tokens_per_image: 256,
            boi_token_index: 255_999,
            eoi_token_index: 256_000,
            image_token_index: 262_144,
        }
    }
}

/// The language model of a `Gemma3ForConditionalGeneration` checkpoint, at the prefix
/// [`super::gemma3_vision::gemma3_prefixes`] found; the head sits beside it where untied.
pub fn gemma3_language_model(cfg: DecoderConfig, vb: VarBuilder) -> Result<Decoder> {
    let prefix =
        super::gemma3_vision::gemma3_prefixes(|key| vb.contains_tensor(key))?.language_model;
    let lm_head = match prefix.strip_suffix(".model") {
        Some(outer) => vb.pp(outer).pp("lm_head"),
        None => vb.pp("lm_head"),
    };
    Decoder::new(cfg, true, vb.pp(prefix), lm_head)
}
