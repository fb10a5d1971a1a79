//! `CLIPVisionModel`, the image encoder of Wan 2.1 I2V / FLF2V, in the transformers layout
//! (`models/clip/modeling_clip.py`). The Wan pipelines condition on `hidden_states[-2]`, the output
//! of the second-to-last encoder layer, which [`CLIPVisionModel::image_embeds`] returns without
//! running the last layer. Image preprocessing lives in [`crate::image_processor`].

use super::LayerNorm;
use super::vit::{EncoderDims, EncoderLayer, PatchEmbedding, encoder_layers};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::path::Path;

/// The reference config (`image_encoder/config.json`), field names as in `CLIPVisionConfig`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct CLIPVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl Default for CLIPVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

/// Outputs of a full [`CLIPVisionModel::forward`].
pub struct CLIPVisionOutput {
    /// `[B, 1 + patches, hidden]`: output of the last encoder layer.
    pub last_hidden_state: Tensor,
    /// `hidden_states[-2]`: output of the second-to-last layer (the embeddings after
    /// `pre_layrnorm` for a one-layer model). This is what the Wan pipelines use.
    pub penultimate_hidden_state: Tensor,
    /// `post_layernorm` of the class token, `[B, hidden]`.
    pub pooler_output: Tensor,
}

pub struct CLIPVisionModel {
    class_embedding: Tensor,
    patch_embedding: PatchEmbedding,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    config: CLIPVisionConfig,
}

impl CLIPVisionModel {
    pub fn new(cfg: &CLIPVisionConfig, vb: VarBuilder) -> Result<Self> {
        // Checkpoints saved by transformers 4 prefix every key with `vision_model.`.
        let vb = if vb.contains_tensor("vision_model.embeddings.class_embedding") {
            vb.pp("vision_model")
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
        let d = cfg.hidden_size;
        let emb = vb.pp("embeddings");
        let patch_embedding = PatchEmbedding::new(
            cfg.num_channels,
            d,
            cfg.image_size,
            cfg.patch_size,
            false,
            emb.pp("patch_embedding"),
        )?;
        let positions = patch_embedding.num_patches() + 1;
        Ok(Self {
            class_embedding: emb.get(d, "class_embedding")?,
            position_embedding: emb.pp("position_embedding").get((positions, d), "weight")?,
            patch_embedding,
            pre_layrnorm: LayerNorm::new(d, cfg.layer_norm_eps, true, vb.pp("pre_layrnorm"))?,
            layers: encoder_layers(&dims, cfg.num_hidden_layers, vb.pp("encoder"))?,
            post_layernorm: LayerNorm::new(d, cfg.layer_norm_eps, true, vb.pp("post_layernorm"))?,
            config: cfg.clone(),
        })
    }

    /// Reads `dir/config.json` and the memory-mapped weights of an `image_encoder` folder.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        use anyhow::Context;
        let cfg: CLIPVisionConfig = crate::loader::read_config(&dir.join("config.json"))?;
        let vb = crate::loader::open_weights(dir, dtype, device)?;
        Self::new(&cfg, vb)
            .with_context(|| format!("loading CLIPVisionModel from {}", dir.display()))
    }

    pub fn config(&self) -> &CLIPVisionConfig {
        &self.config
    }

    /// Patch + class + position embeddings followed by `pre_layrnorm`.
    fn embed(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let patches = self.patch_embedding.forward(pixel_values)?;
        let b = patches.dim(0)?;
        let d = self.config.hidden_size;
        let class = self.class_embedding.reshape((1, 1, d))?.repeat((b, 1, 1))?;
        let x = Tensor::cat(&[class, patches], 1)?
            .broadcast_add(&self.position_embedding.unsqueeze(0)?)?;
        self.pre_layrnorm.forward(&x)
    }

    /// Runs every layer; returns the last and penultimate hidden states and the pooled output.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<CLIPVisionOutput> {
        let mut x = self.embed(pixel_values)?;
        let mut penultimate = x.clone();
        for layer in &self.layers {
            penultimate = x;
            x = layer.forward(&penultimate)?;
        }
        let pooled = self
            .post_layernorm
            .forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?;
        Ok(CLIPVisionOutput {
            last_hidden_state: x,
            penultimate_hidden_state: penultimate,
            pooler_output: pooled,
        })
    }

    /// `hidden_states[-2]` (`[B, 1 + patches, hidden]`), the image conditioning of Wan I2V; the
    /// last layer is skipped since its output is unused.
    pub fn image_embeds(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let mut x = self.embed(pixel_values)?;
        let keep = self.layers.len().saturating_sub(1);
        for layer in &self.layers[..keep] {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }
}
