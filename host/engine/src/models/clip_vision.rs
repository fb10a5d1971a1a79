//! `CLIPVisionModel`, the image encoder of Wan 2.1 I2V / FLF2V, in the transformers layout
//! (`models/clip/modeling_clip.py`). The Wan pipelines condition on `hidden_states[-2]`, the output
//! of the second-to-last encoder layer, which [`CLIPVisionModel::image_embeds`] returns without
//! running the last layer. Image preprocessing lives in [`crate::image_processor`].

use super::{Activation, LayerNorm, linear};
use crate::attention::attention;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
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

struct CLIPAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl CLIPAttention {
    fn new(cfg: &CLIPVisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            q_proj: linear(d, d, true, vb.pp("q_proj"))?,
            k_proj: linear(d, d, true, vb.pp("k_proj"))?,
            v_proj: linear(d, d, true, vb.pp("v_proj"))?,
            out_proj: linear(d, d, true, vb.pp("out_proj"))?,
            heads: cfg.num_attention_heads,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let shape = (b, l, self.heads, d / self.heads);
        let q = self.q_proj.forward(x)?.reshape(shape)?;
        let k = self.k_proj.forward(x)?.reshape(shape)?;
        let v = self.v_proj.forward(x)?.reshape(shape)?;
        self.out_proj
            .forward(&attention(&q, &k, &v)?.flatten_from(2)?)
    }
}

struct CLIPEncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: CLIPAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl CLIPEncoderLayer {
    fn new(cfg: &CLIPVisionConfig, act: Activation, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            layer_norm1: LayerNorm::new(d, eps, true, vb.pp("layer_norm1"))?,
            self_attn: CLIPAttention::new(cfg, vb.pp("self_attn"))?,
            layer_norm2: LayerNorm::new(d, eps, true, vb.pp("layer_norm2"))?,
            fc1: linear(d, cfg.intermediate_size, true, vb.pp("mlp").pp("fc1"))?,
            fc2: linear(cfg.intermediate_size, d, true, vb.pp("mlp").pp("fc2"))?,
            act,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.self_attn.forward(&self.layer_norm1.forward(x)?)?)?;
        let h = self.fc1.forward(&self.layer_norm2.forward(&x)?)?;
        let h = self.fc2.forward(&self.act.apply(&h)?)?;
        x + h
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
    patch_weight: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<CLIPEncoderLayer>,
    post_layernorm: LayerNorm,
    config: CLIPVisionConfig,
    dtype: DType,
}

impl CLIPVisionModel {
    pub fn new(cfg: &CLIPVisionConfig, vb: VarBuilder) -> Result<Self> {
        // Checkpoints saved by transformers 4 prefix every key with `vision_model.`.
        let vb = if vb.contains_tensor("vision_model.embeddings.class_embedding") {
            vb.pp("vision_model")
        } else {
            vb
        };
        let act = Activation::from_name(&cfg.hidden_act).ok_or_else(|| {
            candle_core::Error::Msg(format!("unsupported hidden_act `{}`", cfg.hidden_act))
        })?;
        if cfg.patch_size == 0 || !cfg.image_size.is_multiple_of(cfg.patch_size) {
            candle_core::bail!(
                "image_size {} is not a multiple of patch_size {}",
                cfg.image_size,
                cfg.patch_size
            );
        }
        let d = cfg.hidden_size;
        let p = cfg.patch_size;
        let positions = (cfg.image_size / p).pow(2) + 1;
        let emb = vb.pp("embeddings");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| CLIPEncoderLayer::new(cfg, act, vb.pp("encoder").pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            class_embedding: emb.get(d, "class_embedding")?,
            patch_weight: emb
                .pp("patch_embedding")
                .get((d, cfg.num_channels, p, p), "weight")?,
            position_embedding: emb.pp("position_embedding").get((positions, d), "weight")?,
            pre_layrnorm: LayerNorm::new(d, cfg.layer_norm_eps, true, vb.pp("pre_layrnorm"))?,
            layers,
            post_layernorm: LayerNorm::new(d, cfg.layer_norm_eps, true, vb.pp("post_layernorm"))?,
            config: cfg.clone(),
            dtype: vb.dtype(),
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
        let (b, c, h, w) = pixel_values.dims4()?;
        let (size, p) = (self.config.image_size, self.config.patch_size);
        if (c, h, w) != (self.config.num_channels, size, size) {
            candle_core::bail!(
                "pixel_values has shape {:?}, the image encoder expects [B, {}, {size}, {size}]",
                pixel_values.dims(),
                self.config.num_channels
            );
        }
        let (gh, gw) = (h / p, w / p);
        let d = self.config.hidden_size;
        let patches = pixel_values
            .to_dtype(self.dtype)?
            .reshape(vec![b, c, gh, p, gw, p])?
            .permute([0, 2, 4, 1, 3, 5])?
            .reshape((b, gh * gw, c * p * p))?;
        let patches = patches.broadcast_matmul(&self.patch_weight.flatten_from(1)?.t()?)?;
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
