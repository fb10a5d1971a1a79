//! `SiglipVisionModel`, the vision tower of Gemma 3, in the transformers layout
//! (`models/siglip/modeling_siglip.py`): patch embedding, learned position embedding, the encoder
//! layers CLIP shares ([`crate::models`]' ViT layer), `post_layernorm` -> `last_hidden_state`.
//! Gemma 3 runs it without the attention-pooling head (`vision_use_head: false`), and so does this
//! module: a config asking for the head is refused rather than silently run without it. It never
//! preprocesses images ([`crate::image_processor`] does) nor touches the language model.

use crate::models::LayerNorm;
use crate::models::vit::{EncoderDims, EncoderLayer, PatchEmbedding, encoder_layers};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::path::Path;

/// The reference config (`vision_config` of a Gemma 3 `config.json`), field names and defaults as
/// in `SiglipVisionConfig`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct SiglipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    /// `SiglipMultiheadAttentionPoolingHead` on top; Gemma 3 sets it false, which this module needs.
    pub vision_use_head: bool,
}

impl Default for SiglipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 16,
            hidden_act: "gelu_pytorch_tanh".into(),
            layer_norm_eps: 1e-6,
            vision_use_head: true,
        }
    }
}

/// `embeddings`: patch embedding (a conv with bias) plus one learned position per patch.
struct SiglipVisionEmbeddings {
    patch_embedding: PatchEmbedding,
    position_embedding: Tensor,
}

impl SiglipVisionEmbeddings {
    fn new(cfg: &SiglipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let patch_embedding = PatchEmbedding::new(
            cfg.num_channels,
            cfg.hidden_size,
            cfg.image_size,
            cfg.patch_size,
            true,
            vb.pp("patch_embedding"),
        )?;
        let positions = patch_embedding.num_patches();
        Ok(Self {
            position_embedding: vb
                .pp("position_embedding")
                .get((positions, cfg.hidden_size), "weight")?,
            patch_embedding,
        })
    }

    fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.patch_embedding
            .forward(pixel_values)?
            .broadcast_add(&self.position_embedding.unsqueeze(0)?)
    }
}

pub struct SiglipVisionModel {
    embeddings: SiglipVisionEmbeddings,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    config: SiglipVisionConfig,
}

impl SiglipVisionModel {
    /// `vb` sits where the tower's `embeddings.…`, `encoder.…` and `post_layernorm.…` keys start
    /// (`vision_tower.vision_model` in a published Gemma 3 checkpoint, see
    /// [`super::gemma3_vision::gemma3_prefixes`]).
    pub fn new(cfg: &SiglipVisionConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.vision_use_head {
            candle_core::bail!(
                "vision_use_head is true: the SigLIP attention-pooling head is not supported \
                 (Gemma 3 checkpoints set vision_use_head false)"
            );
        }
        let dims = EncoderDims::new(
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_attention_heads,
            cfg.layer_norm_eps,
            &cfg.hidden_act,
        )?;
        Ok(Self {
            embeddings: SiglipVisionEmbeddings::new(cfg, vb.pp("embeddings"))?,
            layers: encoder_layers(&dims, cfg.num_hidden_layers, vb.pp("encoder"))?,
            post_layernorm: LayerNorm::new(
                cfg.hidden_size,
                cfg.layer_norm_eps,
                true,
                vb.pp("post_layernorm"),
            )?,
            config: cfg.clone(),
        })
    }

    /// Reads a standalone `SiglipVisionModel` folder (`config.json` + safetensors), in either
    /// layout transformers writes: keys at the root (transformers 5) or under `vision_model.` (4).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        use anyhow::Context;
        let cfg: SiglipVisionConfig = crate::loader::read_config(&dir.join("config.json"))?;
        let vb = crate::loader::open_weights(dir, dtype, device)?;
        let vb = if vb.contains_tensor("vision_model.embeddings.patch_embedding.weight") {
            vb.pp("vision_model")
        } else {
            vb
        };
        Self::new(&cfg, vb)
            .with_context(|| format!("loading SiglipVisionModel from {}", dir.display()))
    }

    pub fn config(&self) -> &SiglipVisionConfig {
        &self.config
    }

    /// `last_hidden_state` `[B, (image_size / patch_size)^2, hidden_size]` of `pixel_values`
    /// `[B, num_channels, image_size, image_size]`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let mut x = self.embeddings.forward(pixel_values)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        self.post_layernorm.forward(&x)
    }
}
