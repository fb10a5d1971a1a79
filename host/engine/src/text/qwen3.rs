//! `Qwen3ForCausalLM` (transformers' `models/qwen3`), dense models 0.6B to 8B: the shared
//! decoder with per-head query/key RMS norms, `x * weight` norms, SiLU-gated MLP, and sliding
//! windows on the layers `layer_types` (or `use_sliding_window` + `max_window_layers`) names.
//! FLUX.2 [klein] encodes its prompts with this model's hidden states.

use super::config::{RopeEntry, RopeParameters, layer_types};
use super::decoder::{Decoder, DecoderConfig, LayerAttention, NormPlacement, NormScale};
use crate::models::Activation;
use candle_core::Result;
use candle_nn::VarBuilder;
use serde::Deserialize;

/// The reference config (`config.json`), field names and defaults as in `Qwen3Config`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Qwen3Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: usize,
    pub hidden_act: String,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    pub rope_parameters: Option<RopeParameters>,
    /// Older files: the theta beside `rope_scaling`.
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<RopeEntry>,
    pub attention_bias: bool,
    pub use_sliding_window: bool,
    pub sliding_window: Option<usize>,
    pub max_window_layers: usize,
    pub layer_types: Option<Vec<String>>,
}

impl Default for Qwen3Config {
    fn default() -> Self {
        Self {
            vocab_size: 151_936,
            hidden_size: 4096,
            intermediate_size: 22_016,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: Some(32),
            head_dim: 128,
            hidden_act: "silu".into(),
            rms_norm_eps: 1e-6,
            tie_word_embeddings: false,
            rope_parameters: None,
            rope_theta: None,
            rope_scaling: None,
            attention_bias: false,
            use_sliding_window: false,
            sliding_window: Some(4096),
            max_window_layers: 28,
            layer_types: None,
        }
    }
}

impl Qwen3Config {
    pub fn decoder_config(&self) -> std::result::Result<DecoderConfig, String> {
        let sliding_window = self.sliding_window.filter(|_| self.use_sliding_window);
        let layer_types = layer_types(self.layer_types.as_deref(), self.num_hidden_layers, |i| {
            if sliding_window.is_some() && i >= self.max_window_layers {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })?;
        let theta = self.rope_theta.unwrap_or(10_000.0);
        let layers = layer_types
            .iter()
            .map(|kind| {
                let entry = match &self.rope_parameters {
                    Some(parameters) => parameters.entry(kind).unwrap_or_default(),
                    None => self.rope_scaling.clone().unwrap_or_default(),
                };
                let sliding_window = match kind.as_str() {
                    "full_attention" => None,
                    "sliding_attention" => Some(sliding_window.ok_or(
                        "a sliding_attention layer needs use_sliding_window and sliding_window",
                    )?),
                    other => return Err(format!("unknown layer type `{other}`")),
                };
                Ok(LayerAttention {
                    sliding_window,
                    rope: entry.resolve(theta)?,
                })
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        Ok(DecoderConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self.head_dim,
            rms_norm_eps: self.rms_norm_eps,
            hidden_act: Activation::from_name(&self.hidden_act)
                .ok_or_else(|| format!("unsupported hidden_act `{}`", self.hidden_act))?,
            attention_bias: self.attention_bias,
            attention_scale: (self.head_dim as f64).powf(-0.5),
            final_logit_softcapping: None,
            norm_scale: NormScale::Weight,
            norm_placement: NormPlacement::Pre,
            embedding_scale: None,
            tie_word_embeddings: self.tie_word_embeddings,
            layers,
        })
    }
}

/// Builds the decoder from a checkpoint in the `Qwen3ForCausalLM` layout (`model.*`, `lm_head`).
pub fn qwen3_for_causal_lm(cfg: DecoderConfig, vb: VarBuilder) -> Result<Decoder> {
    Decoder::new(cfg, true, vb.pp("model"), vb.pp("lm_head"))
}
