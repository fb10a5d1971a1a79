//! The T5 encoders in the transformers layout: `T5EncoderModel` (`models/t5/modeling_t5.py`,
//! FLUX.1's T5-XXL v1.1 with gated-GELU feed-forwards, or the original T5 with ReLU ones) and
//! `UMT5EncoderModel` (`models/umt5/modeling_umt5.py`, the Wan text encoder). One implementation:
//! the two differ only in where the relative position bias lives, which the config's `model_type`
//! says (T5: the first layer owns it and every layer adds that same bias; UMT5: every layer owns
//! its own). The residual stream is kept in f32: the references keep `wo` in f32
//! (`_keep_in_fp32_modules`), which promotes the stream to f32 after the first feed-forward when
//! running in half precision.

use super::{Activation, Linear, apply_linear, linear};
use crate::attention::attention_with_bias;
use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::path::Path;

/// The reference config (`text_encoder/config.json`), field names as in `T5Config` and
/// `UMT5Config` (the same fields); missing fields take `UMT5Config`'s defaults.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct T5Config {
    /// `t5` or `umt5`: whether only the first layer (T5) or every layer (UMT5) owns a relative
    /// position bias.
    pub model_type: String,
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    /// `gated-<act>` or `<act>`; `gated-gelu` means the tanh GELU (`gelu_new`).
    pub feed_forward_proj: String,
}

impl Default for T5Config {
    fn default() -> Self {
        Self {
            model_type: "umt5".into(),
            vocab_size: 250112,
            d_model: 512,
            d_kv: 64,
            d_ff: 1024,
            num_layers: 8,
            num_heads: 6,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "gated-gelu".into(),
        }
    }
}

impl T5Config {
    /// Whether every layer owns a relative position bias (UMT5), not only the first (T5).
    fn bias_per_layer(&self) -> Result<bool> {
        match self.model_type.as_str() {
            "umt5" => Ok(true),
            "t5" => Ok(false),
            other => candle_core::bail!("model_type `{other}` is neither t5 nor umt5"),
        }
    }

    /// `(is_gated_act, dense_act_fn)` as `UMT5Config.__post_init__` derives them.
    fn feed_forward(&self) -> Result<(bool, Activation)> {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let (gated, act) = match parts.as_slice() {
            ["gated", "gelu"] => (true, "gelu_new"),
            ["gated", act] => (true, *act),
            [act] => (false, *act),
            _ => candle_core::bail!("invalid feed_forward_proj `{}`", self.feed_forward_proj),
        };
        let act = Activation::from_name(act).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "unsupported activation `{act}` in feed_forward_proj"
            ))
        })?;
        Ok((gated, act))
    }
}

/// T5-style RMS norm: variance in f32, result cast to the weight's dtype, then scaled.
struct T5LayerNorm {
    weight: Tensor,
    eps: f64,
}

impl T5LayerNorm {
    fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        let variance = x.sqr()?.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_div(&(variance + self.eps)?.sqrt()?)?;
        // Scaled in f32 and rounded once (the reference rounds before scaling too): in bf16 this
        // keeps the encoder within 2e-2 of f32 where the reference's own bf16 run is not.
        x.broadcast_mul(&self.weight.to_dtype(DType::F32)?)?
            .to_dtype(self.weight.dtype())
    }
}

/// Self-attention with a relative position bias (this layer's, or the first layer's in T5); no
/// softmax scaling (folded into the weights, as in T5).
struct T5Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// `None` in T5's layers after the first (`has_relative_attention_bias=False`).
    relative_attention_bias: Option<Tensor>,
    num_heads: usize,
    d_kv: usize,
    num_buckets: usize,
    max_distance: usize,
}

impl T5Attention {
    fn new(cfg: &T5Config, has_bias: bool, vb: VarBuilder) -> Result<Self> {
        let inner = cfg.num_heads * cfg.d_kv;
        Ok(Self {
            q: linear(cfg.d_model, inner, false, vb.pp("q"))?,
            k: linear(cfg.d_model, inner, false, vb.pp("k"))?,
            v: linear(cfg.d_model, inner, false, vb.pp("v"))?,
            o: linear(inner, cfg.d_model, false, vb.pp("o"))?,
            relative_attention_bias: if has_bias {
                Some(vb.pp("relative_attention_bias").get(
                    (cfg.relative_attention_num_buckets, cfg.num_heads),
                    "weight",
                )?)
            } else {
                None
            },
            num_heads: cfg.num_heads,
            d_kv: cfg.d_kv,
            num_buckets: cfg.relative_attention_num_buckets,
            max_distance: cfg.relative_attention_max_distance,
        })
    }

    /// Bidirectional bucket of `memory - query`, in the f32 arithmetic the reference uses.
    fn bucket(&self, relative_position: i64) -> u32 {
        let num_buckets = (self.num_buckets / 2) as i64;
        let mut bucket = if relative_position > 0 {
            num_buckets
        } else {
            0
        };
        let distance = relative_position.abs();
        let max_exact = num_buckets / 2;
        if distance < max_exact {
            bucket += distance;
        } else {
            let log_range = ((self.max_distance as f64) / (max_exact as f64)).ln() as f32;
            let ratio = (distance as f32 / max_exact as f32).ln() / log_range
                * (num_buckets - max_exact) as f32;
            bucket += (max_exact + ratio as i64).min(num_buckets - 1);
        }
        bucket as u32
    }

    /// `[1, heads, len, len]` bias in f32, for a layer that owns one.
    fn position_bias(&self, len: usize, device: &Device) -> Result<Option<Tensor>> {
        let Some(table) = &self.relative_attention_bias else {
            return Ok(None);
        };
        let buckets: Vec<u32> = (0..len as i64)
            .flat_map(|query| (0..len as i64).map(move |memory| (query, memory)))
            .map(|(query, memory)| self.bucket(memory - query))
            .collect();
        let buckets = Tensor::from_vec(buckets, len * len, device)?;
        table
            .to_dtype(DType::F32)?
            .index_select(&buckets, 0)?
            .reshape((len, len, self.num_heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)
            .map(Some)
    }

    /// `bias`: the position bias plus the padding mask, `[B, heads, len, len]` in f32.
    fn forward(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (b, len, _) = x.dims3()?;
        let shape = (b, len, self.num_heads, self.d_kv);
        let q = self.q.forward(x)?.reshape(shape)?;
        let k = self.k.forward(x)?.reshape(shape)?;
        let v = self.v.forward(x)?.reshape(shape)?;
        let out = attention_with_bias(&q, &k, &v, bias, 1.0)?;
        self.o.forward(&out.flatten_from(2)?)
    }
}

/// `T5DenseGatedActDense` or `T5DenseActDense`; `wo` is kept in f32.
struct FeedForward {
    wi_0: Linear,
    wi_1: Option<Linear>,
    wo: Linear,
    act: Activation,
}

impl FeedForward {
    fn new(cfg: &T5Config, vb: VarBuilder) -> Result<Self> {
        let (gated, act) = cfg.feed_forward()?;
        let wo = linear(
            cfg.d_ff,
            cfg.d_model,
            false,
            vb.to_dtype(DType::F32).pp("wo"),
        )?;
        Ok(if gated {
            Self {
                wi_0: linear(cfg.d_model, cfg.d_ff, false, vb.pp("wi_0"))?,
                wi_1: Some(linear(cfg.d_model, cfg.d_ff, false, vb.pp("wi_1"))?),
                wo,
                act,
            }
        } else {
            Self {
                wi_0: linear(cfg.d_model, cfg.d_ff, false, vb.pp("wi"))?,
                wi_1: None,
                wo,
                act,
            }
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.act.apply(&self.wi_0.forward(x)?)?;
        if let Some(wi_1) = &self.wi_1 {
            // The gate product goes to the f32 `wo` unrounded.
            h = (h.to_dtype(DType::F32)? * wi_1.forward(x)?.to_dtype(DType::F32)?)?;
        }
        apply_linear(&self.wo, &h)
    }
}

/// `T5Block` of the encoder: self-attention then feed-forward, each pre-normed and residual.
struct T5Block {
    attn_norm: T5LayerNorm,
    attention: T5Attention,
    ff_norm: T5LayerNorm,
    ff: FeedForward,
}

impl T5Block {
    fn new(cfg: &T5Config, has_bias: bool, vb: VarBuilder) -> Result<Self> {
        let attn = vb.pp("layer").pp(0);
        let ff = vb.pp("layer").pp(1);
        Ok(Self {
            attn_norm: T5LayerNorm::new(
                cfg.d_model,
                cfg.layer_norm_epsilon,
                attn.pp("layer_norm"),
            )?,
            attention: T5Attention::new(cfg, has_bias, attn.pp("SelfAttention"))?,
            ff_norm: T5LayerNorm::new(cfg.d_model, cfg.layer_norm_epsilon, ff.pp("layer_norm"))?,
            ff: FeedForward::new(cfg, ff.pp("DenseReluDense"))?,
        })
    }

    /// `x` is the f32 residual stream, `bias` the position bias plus the padding mask.
    fn forward(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let h = self.attention.forward(&self.attn_norm.forward(x)?, bias)?;
        let x = (x + h.to_dtype(DType::F32)?)?;
        let h = self.ff.forward(&self.ff_norm.forward(&x)?)?;
        x + h.to_dtype(DType::F32)?
    }
}

/// The T5 / UMT5 encoder stack with its token embedding.
pub struct T5EncoderModel {
    embed_tokens: Tensor,
    blocks: Vec<T5Block>,
    final_layer_norm: T5LayerNorm,
    config: T5Config,
}

impl T5EncoderModel {
    pub fn new(cfg: &T5Config, vb: VarBuilder) -> Result<Self> {
        let per_layer = cfg.bias_per_layer()?;
        // The encoder embedding is tied to `shared`; checkpoints store one name or both.
        let embed_name = if vb.contains_tensor("shared.weight")
            || !vb.contains_tensor("encoder.embed_tokens.weight")
        {
            "shared.weight"
        } else {
            "encoder.embed_tokens.weight"
        };
        let embed_tokens = vb.get((cfg.vocab_size, cfg.d_model), embed_name)?;
        let encoder = vb.pp("encoder");
        let blocks = (0..cfg.num_layers)
            .map(|i| T5Block::new(cfg, per_layer || i == 0, encoder.pp("block").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed_tokens,
            blocks,
            final_layer_norm: T5LayerNorm::new(
                cfg.d_model,
                cfg.layer_norm_epsilon,
                encoder.pp("final_layer_norm"),
            )?,
            config: cfg.clone(),
        })
    }

    /// Reads `dir/config.json` and the memory-mapped weights of a `text_encoder` folder.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        use anyhow::Context;
        let cfg: T5Config = crate::loader::read_config(&dir.join("config.json"))?;
        let vb = crate::loader::open_weights(dir, dtype, device)?;
        Self::new(&cfg, vb).with_context(|| {
            format!(
                "loading the {} encoder from {}",
                cfg.model_type,
                dir.display()
            )
        })
    }

    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// `input_ids` `[B, L]` (integer) and `attention_mask` `[B, L]` (1 = token, 0 = padding) to
    /// `last_hidden_state` `[B, L, d_model]` in the model's dtype.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (b, len) = input_ids.dims2()?;
        if attention_mask.dims() != [b, len] {
            candle_core::bail!(
                "attention_mask has shape {:?}, input_ids has {:?}",
                attention_mask.dims(),
                input_ids.dims()
            );
        }
        let ids = input_ids.to_dtype(DType::U32)?.flatten_all()?;
        let max_id = ids.max(0)?.to_scalar::<u32>()?;
        if max_id as usize >= self.config.vocab_size {
            candle_core::bail!(
                "input_ids contains token {max_id}, outside the vocabulary of {}",
                self.config.vocab_size
            );
        }
        let mut x = self
            .embed_tokens
            .index_select(&ids, 0)?
            .reshape((b, len, self.config.d_model))?
            .to_dtype(DType::F32)?;
        // Padding keys get the most negative f32, as transformers' additive masks do.
        let keep = attention_mask.to_dtype(DType::F32)?.ne(0f32)?;
        let mask_bias = keep
            .where_cond(
                &Tensor::zeros((b, len), DType::F32, x.device())?,
                &Tensor::full(f32::MIN, (b, len), x.device())?,
            )?
            .reshape((b, 1, 1, len))?;
        // Block 0 always owns a bias; T5's later blocks reuse it (mask included).
        let mut bias = None;
        for block in &self.blocks {
            if let Some(own) = block.attention.position_bias(len, x.device())? {
                bias = Some(own.broadcast_add(&mask_bias)?);
            }
            let Some(bias) = &bias else {
                candle_core::bail!("the first T5 block has no relative position bias");
            };
            x = block.forward(&x, bias)?;
        }
        self.final_layer_norm.forward(&x)
    }
}
