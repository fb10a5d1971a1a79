//! `CLIPTextModel`, FLUX.1's CLIP-L text encoder, in the transformers layout
//! (`models/clip/modeling_clip.py`): token plus learned position embeddings, the pre-norm encoder
//! layers the vision tower also uses ([`super::vit`]) under a causal mask, the final layer norm,
//! and `pooler_output`, the final state at the end-of-text token. FLUX.1 conditions on the pooled
//! output only.

use super::LayerNorm;
use super::vit::{EncoderDims, EncoderLayer, encoder_layers};
use candle_core::{DType, Device, IndexOp, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::path::Path;

/// The reference config (`text_encoder/config.json`), field names as in `CLIPTextConfig`;
/// missing fields take its defaults.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct CLIPTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    /// 2 in configs written before transformers#24773 (FLUX.1's): the pooled token is then the
    /// highest id of each sequence (CLIP's vocabulary ends with `<|endoftext|>`); otherwise the
    /// first position holding this id.
    pub eos_token_id: u32,
}

impl Default for CLIPTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
        }
    }
}

/// Outputs of [`CLIPTextModel::forward`].
pub struct CLIPTextOutput {
    /// `[B, L, hidden]`, after the final layer norm.
    pub last_hidden_state: Tensor,
    /// `[B, hidden]`: `last_hidden_state` at each sequence's end-of-text token.
    pub pooler_output: Tensor,
}

pub struct CLIPTextModel {
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    config: CLIPTextConfig,
}

impl CLIPTextModel {
    pub fn new(cfg: &CLIPTextConfig, vb: VarBuilder) -> Result<Self> {
        // Checkpoints saved by transformers 4 (the published FLUX.1 ones) prefix every key with
        // `text_model.`.
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        let dims = EncoderDims::new(
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_attention_heads,
            cfg.layer_norm_eps,
            &cfg.hidden_act,
        )?;
        let (d, emb) = (cfg.hidden_size, vb.pp("embeddings"));
        Ok(Self {
            token_embedding: emb
                .pp("token_embedding")
                .get((cfg.vocab_size, d), "weight")?,
            position_embedding: emb
                .pp("position_embedding")
                .get((cfg.max_position_embeddings, d), "weight")?,
            layers: encoder_layers(&dims, cfg.num_hidden_layers, vb.pp("encoder"))?,
            final_layer_norm: LayerNorm::new(
                d,
                cfg.layer_norm_eps,
                true,
                vb.pp("final_layer_norm"),
            )?,
            config: cfg.clone(),
        })
    }

    /// Reads `dir/config.json` and the memory-mapped weights of a `text_encoder` folder.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        use anyhow::Context;
        let cfg: CLIPTextConfig = crate::loader::read_config(&dir.join("config.json"))?;
        let vb = crate::loader::open_weights(dir, dtype, device)?;
        Self::new(&cfg, vb).with_context(|| format!("loading CLIPTextModel from {}", dir.display()))
    }

    pub fn config(&self) -> &CLIPTextConfig {
        &self.config
    }

    /// `input_ids` `[B, L]` (integer, `L` at most `max_position_embeddings`) to the final hidden
    /// states and the pooled output, in the model's dtype. Like the pipelines, no padding mask:
    /// the causal mask keeps the tokens before the end-of-text token from seeing the padding.
    pub fn forward(&self, input_ids: &Tensor) -> Result<CLIPTextOutput> {
        let cfg = &self.config;
        let (b, len) = input_ids.dims2().map_err(|_| {
            candle_core::Error::msg(format!(
                "input_ids must have shape [batch, tokens], got {:?}",
                input_ids.dims()
            ))
        })?;
        if len == 0 || len > cfg.max_position_embeddings {
            candle_core::bail!(
                "input_ids holds {len} tokens; CLIPTextModel takes 1 to {} (max_position_embeddings)",
                cfg.max_position_embeddings
            );
        }
        let ids: Vec<u32> = input_ids
            .to_dtype(DType::I64)?
            .flatten_all()?
            .to_vec1::<i64>()?
            .into_iter()
            .map(|id| {
                u32::try_from(id)
                    .ok()
                    .filter(|&id| (id as usize) < cfg.vocab_size)
                    .ok_or_else(|| {
                        candle_core::Error::msg(format!(
                            "input_ids contains token {id}, outside the vocabulary of {}",
                            cfg.vocab_size
                        ))
                    })
            })
            .collect::<Result<_>>()?;
        let device = self.token_embedding.device();
        let tokens = Tensor::from_vec(ids.clone(), b * len, device)?;
        let mut x = self
            .token_embedding
            .index_select(&tokens, 0)?
            .reshape((b, len, cfg.hidden_size))?
            .broadcast_add(&self.position_embedding.narrow(0, 0, len)?.unsqueeze(0)?)?;
        let mask = causal_mask(len, device)?;
        for layer in &self.layers {
            x = layer.forward_masked(&x, Some(&mask))?;
        }
        let last_hidden_state = self.final_layer_norm.forward(&x)?;
        let pooled = ids
            .chunks_exact(len)
            .enumerate()
            .map(|(i, row)| last_hidden_state.i((i, pooled_position(row, cfg.eos_token_id))))
            .collect::<Result<Vec<_>>>()?;
        Ok(CLIPTextOutput {
            pooler_output: Tensor::stack(&pooled, 0)?,
            last_hidden_state,
        })
    }
}

/// `[1, 1, L, L]` additive f32 mask: 0 on and below the diagonal, the most negative f32 above
/// (transformers' causal mask).
fn causal_mask(len: usize, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..len)
        .flat_map(|q| (0..len).map(move |k| if k > q { f32::MIN } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (1, 1, len, len), device)
}

/// The position of a sequence's pooled token, as transformers 5 picks it: with `eos_token_id`
/// 2 the (first) highest id, else the first position holding `eos_token_id` (0 when none does,
/// as `argmax` of all zeros gives).
fn pooled_position(ids: &[u32], eos_token_id: u32) -> usize {
    let position = if eos_token_id == 2 {
        let max = ids.iter().copied().max().unwrap_or(0);
        ids.iter().position(|&id| id == max)
    } else {
        ids.iter().position(|&id| id == eos_token_id)
    };
    position.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pooled_token_follows_the_eos_rule_of_the_config() {
        // eos_token_id 2: the first highest id, whatever the EOS id is.
        assert_eq!(pooled_position(&[5, 9, 3, 9], 2), 1);
        // Otherwise the first EOS, even with higher ids after it; none gives 0.
        assert_eq!(pooled_position(&[5, 7, 40, 7], 7), 1);
        assert_eq!(pooled_position(&[5, 6], 7), 0);
    }
}
