//! `WanTransformer3DModel`: the Wan 2.1 / 2.2 diffusion transformer (T2V, I2V with the CLIP image
//! branch, FLF2V image position embedding, TI2V per-token timesteps), following diffusers'
//! `models/transformers/transformer_wan.py` line by line. Dimensions come only from the config.
//! Attention goes through [`crate::attention`]; this file must never implement attention itself.

use crate::attention::{AttentionPrecision, attention, attention_in};
use crate::fused::profile::section;
use crate::loader::single_file::{self, OriginalLayout, SingleFile};
use crate::lora::{Adaptable, LoraError, LoraState, Visitor, Weight};
use crate::models::embeddings::{TimestepEmbedding, timestep_features};
use crate::models::feed_forward::FeedForward;
use crate::models::rope::{apply_interleaved, rope_tables};
use crate::models::{
    Activation, LayerNorm, Linear, RmsNorm, gated_residual, linear, linear_forward,
};
use crate::parallel::{SequenceParallel, SequenceSplit};
use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;

/// The reference config (`transformer/config.json`), field names as in diffusers'
/// `WanTransformer3DModel.__init__`; missing fields take the reference defaults.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct WanTransformerConfig {
    pub patch_size: Vec<usize>,
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub in_channels: usize,
    pub out_channels: Option<usize>,
    pub text_dim: usize,
    pub freq_dim: usize,
    pub ffn_dim: usize,
    pub num_layers: usize,
    pub cross_attn_norm: bool,
    pub qk_norm: Option<String>,
    pub eps: f64,
    /// CLIP image-embedding width of I2V checkpoints (`None` for T2V).
    pub image_dim: Option<usize>,
    /// Input width of the extra image key/value projections in cross-attention (I2V).
    pub added_kv_proj_dim: Option<usize>,
    pub rope_max_seq_len: usize,
    /// Learned position embedding over the two stacked image embeddings (FLF2V).
    pub pos_embed_seq_len: Option<usize>,
}

impl Default for WanTransformerConfig {
    fn default() -> Self {
        Self {
            patch_size: vec![1, 2, 2],
            num_attention_heads: 40,
            attention_head_dim: 128,
            in_channels: 16,
            out_channels: Some(16),
            text_dim: 4096,
            freq_dim: 256,
            ffn_dim: 13824,
            num_layers: 40,
            cross_attn_norm: true,
            qk_norm: Some("rms_norm_across_heads".into()),
            eps: 1e-6,
            image_dim: None,
            added_kv_proj_dim: None,
            rope_max_seq_len: 1024,
            pos_embed_seq_len: None,
        }
    }
}

impl WanTransformerConfig {
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// `out_channels or in_channels`, as the reference resolves it.
    pub fn out_channels(&self) -> usize {
        self.out_channels
            .filter(|&c| c > 0)
            .unwrap_or(self.in_channels)
    }

    fn patch(&self) -> Result<(usize, usize, usize)> {
        match self.patch_size.as_slice() {
            &[t, h, w] if t > 0 && h > 0 && w > 0 => Ok((t, h, w)),
            other => {
                candle_core::bail!("patch_size must be three positive integers, got {other:?}")
            }
        }
    }

    /// Rotary split of one head: `h_dim = w_dim = 2 * (head_dim // 6)`, the rest for time.
    fn rope_dims(&self) -> [usize; 3] {
        let hw = 2 * (self.attention_head_dim / 6);
        [self.attention_head_dim - 2 * hw, hw, hw]
    }
}

/// 3-D rotary embedding of one token grid. The portable path uses `cos`/`sin` tables of shape
/// `[tokens, head_dim / 2]` (f32, one angle per interleaved pair), built on first use; the fused
/// kernel (CUDA bf16) computes the same angles itself and never needs them.
struct RotaryTables {
    dims: [usize; 3],
    grid: [usize; 3],
    device: Device,
    tables: std::cell::OnceCell<(Tensor, Tensor)>,
}

impl RotaryTables {
    fn new(dims: [usize; 3], grid: [usize; 3], device: &Device) -> Self {
        Self {
            dims,
            grid,
            device: device.clone(),
            tables: std::cell::OnceCell::new(),
        }
    }

    fn tables(&self) -> Result<&(Tensor, Tensor)> {
        if let Some(t) = self.tables.get() {
            return Ok(t);
        }
        let t = Self::build(self.dims, self.grid, &self.device)?;
        Ok(self.tables.get_or_init(|| t))
    }

    /// Angles in f64 then cast to f32, as `WanRotaryPosEmbed` computes them (theta 10000), for
    /// the tokens of the grid in (frame, row, column) order.
    fn build(dims: [usize; 3], grid: [usize; 3], device: &Device) -> Result<(Tensor, Tensor)> {
        let mut positions = Vec::with_capacity(grid.iter().product::<usize>() * 3);
        for f in 0..grid[0] {
            for h in 0..grid[1] {
                for w in 0..grid[2] {
                    positions.extend([f as f64, h as f64, w as f64]);
                }
            }
        }
        rope_tables(&positions, &dims, 10000.0, device)
    }

    /// Rotates interleaved pairs of `x` (`[B, L, H, D]`) in f32; returns the input dtype.
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = crate::fused::rope3d(x, self.grid)? {
            return Ok(y);
        }
        let (cos, sin) = self.tables()?;
        apply_interleaved(x, cos, sin)
    }
}

/// Text context length the reference hard-codes when splitting image tokens off the
/// cross-attention context (`WanAttnProcessor`: "512 is the context length of the text encoder").
const TEXT_CONTEXT_LEN: usize = 512;

/// Extra key/value projections of I2V cross-attention over the CLIP image tokens.
struct AddedKv {
    add_k_proj: Linear,
    add_v_proj: Linear,
    norm_added_k: RmsNorm,
}

/// `WanAttention` with `WanAttnProcessor`.
struct WanAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    added_kv: Option<AddedKv>,
    heads: usize,
    /// What the self-attention's scores and probabilities are computed in.
    precision: AttentionPrecision,
}

impl WanAttention {
    fn new(
        dim: usize,
        heads: usize,
        eps: f64,
        added_kv_proj_dim: Option<usize>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let inner = dim / heads * heads;
        let added_kv = match added_kv_proj_dim {
            Some(added) => Some(AddedKv {
                add_k_proj: linear(added, inner, true, vb.pp("add_k_proj"))?,
                add_v_proj: linear(added, inner, true, vb.pp("add_v_proj"))?,
                norm_added_k: RmsNorm::new(inner, eps, vb.pp("norm_added_k"))?,
            }),
            None => None,
        };
        Ok(Self {
            to_q: linear(dim, inner, true, vb.pp("to_q"))?,
            to_k: linear(dim, inner, true, vb.pp("to_k"))?,
            to_v: linear(dim, inner, true, vb.pp("to_v"))?,
            to_out: linear(inner, dim, true, vb.pp("to_out").pp(0))?,
            norm_q: RmsNorm::new(inner, eps, vb.pp("norm_q"))?,
            norm_k: RmsNorm::new(inner, eps, vb.pp("norm_k"))?,
            added_kv,
            heads,
            precision: AttentionPrecision::default(),
        })
    }

    fn visit_weights(&mut self, f: &mut Visitor<'_>) -> std::result::Result<(), LoraError> {
        for linear in [
            &mut self.to_q,
            &mut self.to_k,
            &mut self.to_v,
            &mut self.to_out,
        ] {
            f(Weight::Linear(linear))?;
        }
        self.norm_q.visit_weights(f)?;
        self.norm_k.visit_weights(f)?;
        if let Some(added) = &mut self.added_kv {
            f(Weight::Linear(&mut added.add_k_proj))?;
            f(Weight::Linear(&mut added.add_v_proj))?;
            added.norm_added_k.visit_weights(f)?;
        }
        Ok(())
    }

    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, inner) = x.dims3()?;
        x.reshape((b, l, self.heads, inner / self.heads))
    }

    /// `norm(x)` split into heads, then rotated when `rope` is given: one fused pass where a
    /// kernel covers it.
    fn norm_heads(
        &self,
        norm: &RmsNorm,
        x: &Tensor,
        rope: Option<&RotaryTables>,
    ) -> Result<Tensor> {
        let head_dim = x.dim(D::Minus1)? / self.heads;
        if let Some(rope) = rope
            && let Some(y) = norm.forward_rope(x, rope.grid, head_dim)?
        {
            return self.split_heads(&y);
        }
        let y = self.split_heads(&norm.forward(x)?)?;
        match rope {
            Some(rope) => rope.apply(&y),
            None => Ok(y),
        }
    }

    /// Self-attention when `context` is `None` (with rotary tables), cross-attention otherwise;
    /// with `residual`, returns `residual + attention` (one fused epilogue on CUDA bf16). Under
    /// sequence parallel, `x` holds this rank's tokens and self-attention trades them for heads.
    fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        rope: Option<&RotaryTables>,
        sequence: Option<&SequenceParallel>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut context = context.unwrap_or(x).clone();
        let mut image_context = None;
        if self.added_kv.is_some() {
            // Python slicing of `[:, :n - 512]` / `[:, n - 512:]`, including its negative-index
            // behaviour when the context is shorter than the text length.
            let n = context.dim(1)?;
            let split = if n >= TEXT_CONTEXT_LEN {
                n - TEXT_CONTEXT_LEN
            } else {
                n.saturating_sub(TEXT_CONTEXT_LEN - n)
            };
            image_context = Some(context.narrow(1, 0, split)?);
            context = context.narrow(1, split, n - split)?;
        }

        let dev = x.device();
        let names = if rope.is_some() {
            [
                "self.qkv",
                "self.qk_norm+rope",
                "self.attention",
                "self.out",
            ]
        } else {
            ["cross.qkv", "cross.qk_norm", "cross.attention", "cross.out"]
        };
        let (q, k, v) = section(names[0], dev, || {
            Ok((
                linear_forward(&self.to_q, x, None)?,
                linear_forward(&self.to_k, &context, None)?,
                linear_forward(&self.to_v, &context, None)?,
            ))
        })?;
        // Split, the rotation waits for the whole sequence: after the norm, which spans heads.
        let rope_now = rope.filter(|_| sequence.is_none());
        let (q, k) = section(names[1], dev, || {
            Ok((
                self.norm_heads(&self.norm_q, &q, rope_now)?,
                self.norm_heads(&self.norm_k, &k, rope_now)?,
            ))
        })?;
        let v = self.split_heads(&v)?;
        let (q, k, v) = match (sequence, rope) {
            (Some(sp), Some(rope)) => section("sequence.all_to_all", dev, || {
                let tokens = rope.grid.iter().product();
                let q = sp.heads_to_sequence(&q, tokens)?;
                let k = sp.heads_to_sequence(&k, tokens)?;
                let v = sp.heads_to_sequence(&v, tokens)?;
                Ok((rope.apply(&q)?, rope.apply(&k)?, v))
            })?,
            _ => (q, k, v),
        };

        let image_out = match (&self.added_kv, image_context) {
            (Some(added), Some(image)) if image.dim(1)? > 0 => {
                let k_img = added
                    .norm_added_k
                    .forward(&added.add_k_proj.forward(&image)?)?;
                let v_img = added.add_v_proj.forward(&image)?;
                let k_img = self.split_heads(&k_img)?;
                let v_img = self.split_heads(&v_img)?;
                Some(attention(&q, &k_img, &v_img)?.flatten_from(2)?)
            }
            _ => None,
        };

        let mut out = section(names[2], dev, || match rope {
            Some(_) => attention_in(&q, &k, &v, self.precision),
            None => attention(&q, &k, &v),
        })?;
        if let (Some(sp), Some(_)) = (sequence, rope) {
            out = section("sequence.all_to_all", dev, || sp.sequence_to_heads(&out))?;
        }
        let mut out = out.flatten_from(2)?;
        if let Some(image_out) = image_out {
            out = (out + image_out)?;
        }
        section(names[3], dev, || match residual {
            None => linear_forward(&self.to_out, &out, None),
            Some(r) => match crate::fused::linear(&self.to_out, &out, false, Some(r))? {
                Some(y) => Ok(y),
                None => r + self.to_out.forward(&out)?,
            },
        })
    }
}

/// Adds a learned `[1, n, dim]` table to the time embedding in f32 and splits the sum into `n`
/// tensors of `[B, S, dim]` (`S` is 1 for one timestep per sample). `temb` is `[B, S, n * dim]`
/// (one slice per table row, in the blocks) or `[B, S, dim]` (shared by all rows, at the output).
fn modulation(table: &Tensor, temb: &Tensor, n: usize) -> Result<Vec<Tensor>> {
    let (b, s, width) = temb.dims3()?;
    let dim = table.dim(D::Minus1)?;
    let temb = temb
        .to_dtype(DType::F32)?
        .reshape((b, s, width / dim, dim))?;
    let table = table.to_dtype(DType::F32)?.reshape((1, 1, n, dim))?;
    let sum = temb.broadcast_add(&table)?;
    (0..n).map(|i| sum.narrow(2, i, 1)?.squeeze(2)).collect()
}

/// `norm(x) * (1 + scale) + shift` in f32, cast back to the dtype of `x`.
fn modulate(norm: &LayerNorm, x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    norm.forward_modulated(x, shift, scale)
}

/// `WanTransformerBlock`.
struct WanTransformerBlock {
    norm1: LayerNorm,
    attn1: WanAttention,
    attn2: WanAttention,
    norm2: Option<LayerNorm>,
    ffn: FeedForward,
    norm3: LayerNorm,
    /// `[1, 6, dim]`, kept in f32 (`_keep_in_fp32_modules`).
    scale_shift_table: Tensor,
}

impl WanTransformerBlock {
    fn new(cfg: &WanTransformerConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.inner_dim();
        let heads = cfg.num_attention_heads;
        let fp32 = vb.to_dtype(DType::F32);
        Ok(Self {
            norm1: LayerNorm::new(dim, cfg.eps, false, vb.pp("norm1"))?,
            attn1: WanAttention::new(dim, heads, cfg.eps, None, vb.pp("attn1"))?,
            attn2: WanAttention::new(dim, heads, cfg.eps, cfg.added_kv_proj_dim, vb.pp("attn2"))?,
            norm2: if cfg.cross_attn_norm {
                Some(LayerNorm::new(dim, cfg.eps, true, fp32.pp("norm2"))?)
            } else {
                None
            },
            ffn: FeedForward::new(dim, cfg.ffn_dim, dim, Activation::GeluTanh, vb.pp("ffn"))?,
            norm3: LayerNorm::new(dim, cfg.eps, false, vb.pp("norm3"))?,
            scale_shift_table: fp32.get((1, 6, dim), "scale_shift_table")?,
        })
    }

    /// `prefix` is the block's checkpoint path (`blocks.N`).
    fn visit_weights(
        &mut self,
        prefix: &str,
        f: &mut Visitor<'_>,
    ) -> std::result::Result<(), LoraError> {
        self.norm1.visit_weights(f)?;
        self.attn1.visit_weights(f)?;
        self.attn2.visit_weights(f)?;
        if let Some(norm) = &mut self.norm2 {
            norm.visit_weights(f)?;
        }
        self.ffn.visit_weights(f)?;
        self.norm3.visit_weights(f)?;
        f(Weight::Tensor {
            name: format!("{prefix}.scale_shift_table"),
            tensor: &mut self.scale_shift_table,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        timestep_proj: &Tensor,
        rope: &RotaryTables,
        sequence: Option<&SequenceParallel>,
    ) -> Result<Tensor> {
        let dev = x.device();
        let m = section("modulation", dev, || {
            modulation(&self.scale_shift_table, timestep_proj, 6)
        })?;
        let (shift_msa, scale_msa, gate_msa) = (&m[0], &m[1], &m[2]);
        let (c_shift_msa, c_scale_msa, c_gate_msa) = (&m[3], &m[4], &m[5]);

        // 1. Self-attention
        let normed = section("norm1.modulate", dev, || {
            modulate(&self.norm1, x, shift_msa, scale_msa)
        })?;
        let attn = self
            .attn1
            .forward(&normed, None, Some(rope), sequence, None)?;
        let x = section("residual1.gated", dev, || {
            gated_residual(x, &attn, gate_msa)
        })?;

        // 2. Cross-attention
        let normed = section("norm2", dev, || match &self.norm2 {
            Some(norm) => norm.forward(&x),
            None => Ok(x.clone()),
        })?;
        // The residual add rides in the output projection's epilogue.
        let x = self
            .attn2
            .forward(&normed, Some(context), None, None, Some(&x))?;

        // 3. Feed-forward
        let normed = section("norm3.modulate", dev, || {
            modulate(&self.norm3, &x, c_shift_msa, c_scale_msa)
        })?;
        let ff = self.ffn.forward(&normed)?;
        section("residual3.gated", dev, || {
            gated_residual(&x, &ff, c_gate_msa)
        })
    }
}

/// `WanImageEmbedding`: CLIP hidden states to the transformer width.
struct WanImageEmbedding {
    norm1: LayerNorm,
    ff: FeedForward,
    norm2: LayerNorm,
    pos_embed: Option<Tensor>,
}

impl WanImageEmbedding {
    fn new(
        in_dim: usize,
        out_dim: usize,
        pos_embed_seq_len: Option<usize>,
        vb: VarBuilder,
    ) -> Result<Self> {
        // FP32LayerNorm with nn.LayerNorm defaults (eps 1e-5, affine); weights kept in f32.
        let fp32 = vb.to_dtype(DType::F32);
        Ok(Self {
            norm1: LayerNorm::new(in_dim, 1e-5, true, fp32.pp("norm1"))?,
            ff: FeedForward::new(in_dim, in_dim, out_dim, Activation::Gelu, vb.pp("ff"))?,
            norm2: LayerNorm::new(out_dim, 1e-5, true, fp32.pp("norm2"))?,
            pos_embed: match pos_embed_seq_len {
                Some(len) => Some(vb.get((1, len, in_dim), "pos_embed")?),
                None => None,
            },
        })
    }

    fn visit_weights(&mut self, f: &mut Visitor<'_>) -> std::result::Result<(), LoraError> {
        self.norm1.visit_weights(f)?;
        self.ff.visit_weights(f)?;
        self.norm2.visit_weights(f)?;
        if let Some(pos_embed) = &mut self.pos_embed {
            f(Weight::Tensor {
                name: "condition_embedder.image_embedder.pos_embed".into(),
                tensor: pos_embed,
            })?;
        }
        Ok(())
    }

    fn forward(&self, image: &Tensor) -> Result<Tensor> {
        let mut image = image.clone();
        if let Some(pos_embed) = &self.pos_embed {
            // First and last frame embeddings are stacked into one sequence of twice the length.
            let (_, seq, dim) = image.dims3()?;
            image = image
                .reshape(((), 2 * seq, dim))?
                .broadcast_add(&pos_embed.to_dtype(image.dtype())?)?;
        }
        let x = self.norm1.forward(&image)?;
        let x = self.ff.forward(&x)?;
        self.norm2.forward(&x)
    }
}

/// `WanTimeTextImageEmbedding`.
struct ConditionEmbedder {
    freq_dim: usize,
    time_embedder: TimestepEmbedding,
    time_proj: Linear,
    text_linear_1: Linear,
    text_linear_2: Linear,
    image_embedder: Option<WanImageEmbedding>,
}

impl ConditionEmbedder {
    fn new(cfg: &WanTransformerConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.inner_dim();
        // `time_embedder` is in `_keep_in_fp32_modules`.
        let time = vb.pp("time_embedder").to_dtype(DType::F32);
        let text = vb.pp("text_embedder");
        Ok(Self {
            freq_dim: cfg.freq_dim,
            time_embedder: TimestepEmbedding::new(cfg.freq_dim, dim, true, time)?,
            time_proj: linear(dim, 6 * dim, true, vb.pp("time_proj"))?,
            text_linear_1: linear(cfg.text_dim, dim, true, text.pp("linear_1"))?,
            text_linear_2: linear(dim, dim, true, text.pp("linear_2"))?,
            image_embedder: match cfg.image_dim {
                Some(image_dim) => Some(WanImageEmbedding::new(
                    image_dim,
                    dim,
                    cfg.pos_embed_seq_len,
                    vb.pp("image_embedder"),
                )?),
                None => None,
            },
        })
    }

    fn visit_weights(&mut self, f: &mut Visitor<'_>) -> std::result::Result<(), LoraError> {
        self.time_embedder.visit_weights(f)?;
        for linear in [
            &mut self.time_proj,
            &mut self.text_linear_1,
            &mut self.text_linear_2,
        ] {
            f(Weight::Linear(linear))?;
        }
        match &mut self.image_embedder {
            Some(embedder) => embedder.visit_weights(f),
            None => Ok(()),
        }
    }

    /// Returns `(temb [B,S,dim], timestep_proj [B,S,6*dim], text context, image context)`.
    fn forward(
        &self,
        timestep: &Tensor,
        text: &Tensor,
        image: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor, Tensor, Option<Tensor>)> {
        let dtype = text.dtype();
        let features = timestep_features(timestep, self.freq_dim)?;
        let temb = self.time_embedder.forward(&features)?.to_dtype(dtype)?;
        let timestep_proj = self.time_proj.forward(&temb.silu()?)?;
        let text = self.text_linear_1.forward(text)?.gelu()?;
        let text = self.text_linear_2.forward(&text)?;
        let image = match (&self.image_embedder, image) {
            (Some(embedder), Some(image)) => Some(embedder.forward(image)?),
            (None, Some(_)) => candle_core::bail!(
                "encoder_hidden_states_image was given but this transformer has no image branch (image_dim is null)"
            ),
            _ => None,
        };
        Ok((temb, timestep_proj, text, image))
    }
}

/// The Wan diffusion transformer.
pub struct WanTransformer3DModel {
    config: WanTransformerConfig,
    /// Conv3d with kernel = stride = patch, applied as a matmul over flattened patches.
    patch_weight: Tensor,
    patch_bias: Tensor,
    condition_embedder: ConditionEmbedder,
    blocks: Vec<WanTransformerBlock>,
    norm_out: LayerNorm,
    proj_out: Linear,
    /// `[1, 2, dim]`, kept in f32.
    scale_shift_table: Tensor,
    dtype: DType,
    lora: LoraState,
    /// This rank's sequence group when one generation is split across cards.
    sequence: Option<Arc<SequenceParallel>>,
}

impl WanTransformer3DModel {
    pub fn new(cfg: &WanTransformerConfig, vb: VarBuilder) -> Result<Self> {
        let (pt, ph, pw) = cfg.patch()?;
        // A config from a stranger's checkpoint must fail here, not divide by zero or overflow.
        if cfg.num_attention_heads == 0
            || cfg
                .num_attention_heads
                .checked_mul(cfg.attention_head_dim)
                .is_none()
        {
            candle_core::bail!(
                "num_attention_heads {} with attention_head_dim {} gives no usable model width",
                cfg.num_attention_heads,
                cfg.attention_head_dim
            );
        }
        let dim = cfg.inner_dim();
        let [t_dim, h_dim, _] = cfg.rope_dims();
        if !cfg.attention_head_dim.is_multiple_of(2) || !t_dim.is_multiple_of(2) || h_dim == 0 {
            candle_core::bail!(
                "attention_head_dim {} cannot be split into even temporal/height/width rotary parts",
                cfg.attention_head_dim
            );
        }
        let blocks = (0..cfg.num_layers)
            .map(|i| WanTransformerBlock::new(cfg, vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let patch = vb.pp("patch_embedding");
        Ok(Self {
            patch_weight: patch.get((dim, cfg.in_channels, pt, ph, pw), "weight")?,
            patch_bias: patch.get(dim, "bias")?,
            condition_embedder: ConditionEmbedder::new(cfg, vb.pp("condition_embedder"))?,
            blocks,
            norm_out: LayerNorm::new(dim, cfg.eps, false, vb.pp("norm_out"))?,
            proj_out: linear(
                dim,
                cfg.out_channels() * pt * ph * pw,
                true,
                vb.pp("proj_out"),
            )?,
            scale_shift_table: vb
                .to_dtype(DType::F32)
                .get((1, 2, dim), "scale_shift_table")?,
            dtype: vb.dtype(),
            config: cfg.clone(),
            lora: LoraState::default(),
            sequence: None,
        })
    }

    /// Reads `path/config.json` and the memory-mapped weights of a `transformer` folder (which
    /// stay mapped: LoRAs restore the weights they change from them), or a single file in the
    /// Wan release's names (ComfyUI's and LightX2V's downloads, FP8 ones included; see
    /// [`crate::loader::single_file`]).
    pub fn load(path: &Path, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        let builder = single_file::Builder {
            layout: OriginalLayout::WanTransformer,
            infer: SingleFile::wan_config,
            check: |_| Ok(()),
            build: Self::new,
        };
        let (mut model, checkpoint) = single_file::load_model(path, builder, dtype, device)?;
        if let Some(checkpoint) = checkpoint {
            model.lora = LoraState::from_checkpoint(checkpoint);
        }
        Ok(model)
    }

    /// Runs every block's self-attention in `precision` (the text cross-attention, 512 keys, stays
    /// exact).
    pub fn set_attention_precision(&mut self, precision: AttentionPrecision) {
        for block in &mut self.blocks {
            block.attn1.precision = precision;
        }
    }

    pub fn config(&self) -> &WanTransformerConfig {
        &self.config
    }

    /// The dtype of the activations (the dtype the model was loaded in).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `[B, C, F, H, W]` latents to `[B, L, dim]` patch tokens.
    fn patchify(&self, x: &Tensor, grid: [usize; 3]) -> Result<Tensor> {
        let (pt, ph, pw) = self.config.patch()?;
        let [f, h, w] = grid;
        let (b, c, ..) = x.dims5()?;
        let x = x
            .narrow(2, 0, f * pt)?
            .narrow(3, 0, h * ph)?
            .narrow(4, 0, w * pw)?
            .reshape(vec![b, c, f, pt, h, ph, w, pw])?
            .permute([0, 2, 4, 6, 1, 3, 5, 7])?
            .reshape((b, f * h * w, c * pt * ph * pw))?;
        let weight = self.patch_weight.flatten_from(1)?;
        x.broadcast_matmul(&weight.t()?)?
            .broadcast_add(&self.patch_bias)
    }

    /// `[B, L, C * pt * ph * pw]` back to `[B, C, F, H, W]`.
    fn unpatchify(&self, x: &Tensor, grid: [usize; 3]) -> Result<Tensor> {
        let (pt, ph, pw) = self.config.patch()?;
        let [f, h, w] = grid;
        let b = x.dim(0)?;
        let c = self.config.out_channels();
        x.reshape(vec![b, f, h, w, pt, ph, pw, c])?
            .permute([0, 7, 1, 4, 2, 5, 3, 6])?
            .reshape((b, c, f * pt, h * ph, w * pw))
    }

    /// Predicts the flow for `hidden_states` (`[B, C, F, H, W]`) at `timestep` (`[B]`, or `[B, L]`
    /// with one timestep per patch token as Wan 2.2 TI2V uses), conditioned on text embeddings
    /// (`[B, L_text, text_dim]`) and, for I2V, CLIP image embeddings (`[B, L_img, image_dim]`).
    /// Returns `[B, out_channels, F, H, W]` in the model's dtype.
    pub fn forward(
        &self,
        hidden_states: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        encoder_hidden_states_image: Option<&Tensor>,
    ) -> Result<Tensor> {
        let embedded = self.embed(
            hidden_states,
            timestep,
            encoder_hidden_states,
            encoder_hidden_states_image,
        )?;
        let x = self.blocks(&embedded)?;
        self.head(&embedded, &x)
    }

    /// The first part of [`Self::forward`]: patch tokens, time embedding and context. A step cache
    /// then runs [`Self::blocks`] or reuses their residual, and [`Self::head`] finishes.
    pub fn embed(
        &self,
        hidden_states: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        encoder_hidden_states_image: Option<&Tensor>,
    ) -> Result<WanEmbedded> {
        let (pt, ph, pw) = self.config.patch()?;
        let (batch, channels, frames, height, width) = hidden_states.dims5()?;
        if channels != self.config.in_channels {
            candle_core::bail!(
                "hidden_states has {channels} channels, the transformer expects in_channels = {}",
                self.config.in_channels
            );
        }
        let grid = [frames / pt, height / ph, width / pw];
        let tokens = grid.iter().product::<usize>();
        let device = hidden_states.device();

        let rope = RotaryTables::new(self.config.rope_dims(), grid, device);
        let x = self.patchify(&hidden_states.to_dtype(self.dtype)?, grid)?;

        // One timestep per sample ([B], or [1] shared by the batch) or per token ([B, L]); all
        // become [B or 1, S] and broadcast over the batch.
        let timestep = match timestep.rank() {
            0 => timestep.reshape((1, 1))?,
            1 if timestep.dim(0)? == batch || timestep.dim(0)? == 1 => {
                timestep.reshape((timestep.dim(0)?, 1))?
            }
            2 if timestep.dim(1)? == tokens => timestep.clone(),
            _ => candle_core::bail!(
                "timestep must have shape [{batch}] or [{batch}, {tokens}], got {:?}",
                timestep.dims()
            ),
        };
        let text = encoder_hidden_states.to_dtype(self.dtype)?;
        let image = encoder_hidden_states_image
            .map(|t| t.to_dtype(self.dtype))
            .transpose()?;
        let (temb, timestep_proj, text, image) =
            self.condition_embedder
                .forward(&timestep, &text, image.as_ref())?;
        let context = match image {
            Some(image) => Tensor::cat(&[image, text], 1)?,
            None => text,
        };
        let mut embedded = WanEmbedded {
            hidden: x,
            temb,
            timestep_proj,
            context,
            rope,
            grid,
            sequence: self.sequence.clone(),
        };
        // Each rank keeps its tokens (and their timesteps); `temb` stays whole, as the step
        // caches read it and every rank must decide alike.
        embedded.hidden = embedded.local_tokens(&embedded.hidden)?;
        embedded.timestep_proj = embedded.local_tokens(&embedded.timestep_proj)?;
        Ok(embedded)
    }

    /// The transformer blocks over the embedded tokens: `[B, L, dim]`.
    pub fn blocks(&self, embedded: &WanEmbedded) -> Result<Tensor> {
        self.blocks_inspected(embedded, &mut |_, _| Ok(()))
    }

    /// [`Self::blocks`], handing each block's output to `inspect` with the block's index (how the
    /// FP8 and NVFP4 benchmarks follow the error through the depth).
    pub fn blocks_inspected(
        &self,
        embedded: &WanEmbedded,
        inspect: &mut dyn FnMut(usize, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let mut x = embedded.hidden.clone();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(
                &x,
                &embedded.context,
                &embedded.timestep_proj,
                &embedded.rope,
                embedded.sequence.as_deref(),
            )?;
            inspect(i, &x)?;
        }
        Ok(x)
    }

    /// The output norm, projection and unpatchify of the blocks' output `x`.
    pub fn head(&self, embedded: &WanEmbedded, x: &Tensor) -> Result<Tensor> {
        let m = modulation(&self.scale_shift_table, &embedded.temb, 2)?;
        let (shift, scale) = (embedded.local_tokens(&m[0])?, embedded.local_tokens(&m[1])?);
        let x = modulate(&self.norm_out, x, &shift, &scale)?;
        let mut x = self.proj_out.forward(&x)?;
        if let Some(sp) = &embedded.sequence {
            let tokens = embedded.grid.iter().product();
            x = section("sequence.gather", x.device(), || sp.gather(&x, tokens))?;
        }
        self.unpatchify(&x, embedded.grid)
    }
}

/// What [`WanTransformer3DModel::embed`] computes once per call for the blocks and the head.
pub struct WanEmbedded {
    /// Patch tokens entering the first block, `[B, L, dim]` (this rank's share of them under
    /// sequence parallel).
    pub hidden: Tensor,
    /// The time embedding `[B, S, dim]` (the original Wan's `e`), which TeaCache watches; in the
    /// model's dtype, as diffusers keeps it (the original keeps it in f32).
    pub temb: Tensor,
    timestep_proj: Tensor,
    context: Tensor,
    rope: RotaryTables,
    grid: [usize; 3],
    sequence: Option<Arc<SequenceParallel>>,
}

impl WanEmbedded {
    /// This rank's share of a per-token `[B, L, …]` tensor under sequence parallel; a tensor with
    /// one row per sample, or any tensor of an unsplit call, as it is.
    fn local_tokens(&self, t: &Tensor) -> Result<Tensor> {
        match &self.sequence {
            Some(sp) if t.dim(1)? == self.grid.iter().product::<usize>() => sp.shard(t, 1),
            _ => Ok(t.clone()),
        }
    }
}

/// Splits the tokens.
impl SequenceSplit for WanTransformer3DModel {
    fn split_heads(&self) -> usize {
        self.config.num_attention_heads
    }

    fn sequence_slot(&mut self) -> &mut Option<Arc<SequenceParallel>> {
        &mut self.sequence
    }
}

impl Adaptable for WanTransformer3DModel {
    fn class_name(&self) -> &'static str {
        "WanTransformer3DModel"
    }

    fn visit_weights(&mut self, f: &mut Visitor<'_>) -> std::result::Result<(), LoraError> {
        f(Weight::Tensor {
            name: "patch_embedding.weight".into(),
            tensor: &mut self.patch_weight,
        })?;
        f(Weight::Tensor {
            name: "patch_embedding.bias".into(),
            tensor: &mut self.patch_bias,
        })?;
        self.condition_embedder.visit_weights(f)?;
        for (i, block) in self.blocks.iter_mut().enumerate() {
            block.visit_weights(&format!("blocks.{i}"), f)?;
        }
        self.norm_out.visit_weights(f)?;
        f(Weight::Linear(&mut self.proj_out))?;
        f(Weight::Tensor {
            name: "scale_shift_table".into(),
            tensor: &mut self.scale_shift_table,
        })
    }

    fn aliases(&self, name: &str) -> Vec<String> {
        original_name(name).into_iter().collect()
    }

    fn lora_state(&mut self) -> &mut LoraState {
        &mut self.lora
    }
}

/// The name the original Wan release gives the diffusers weight `name`, as ComfyUI, LightX2V
/// and musubi-tuner LoRAs spell it: the inverse of diffusers' `TRANSFORMER_KEYS_RENAME_DICT`
/// (`scripts/convert_wan_to_diffusers.py`). `None` where both releases agree.
pub(crate) fn original_name(name: &str) -> Option<String> {
    const TOP: &[(&str, &str)] = &[
        (
            "condition_embedder.time_embedder.linear_1.",
            "time_embedding.0.",
        ),
        (
            "condition_embedder.time_embedder.linear_2.",
            "time_embedding.2.",
        ),
        (
            "condition_embedder.text_embedder.linear_1.",
            "text_embedding.0.",
        ),
        (
            "condition_embedder.text_embedder.linear_2.",
            "text_embedding.2.",
        ),
        ("condition_embedder.time_proj.", "time_projection.1."),
        (
            "condition_embedder.image_embedder.norm1.",
            "img_emb.proj.0.",
        ),
        (
            "condition_embedder.image_embedder.ff.net.0.proj.",
            "img_emb.proj.1.",
        ),
        (
            "condition_embedder.image_embedder.ff.net.2.",
            "img_emb.proj.3.",
        ),
        (
            "condition_embedder.image_embedder.norm2.",
            "img_emb.proj.4.",
        ),
        (
            "condition_embedder.image_embedder.pos_embed",
            "img_emb.emb_pos",
        ),
        ("proj_out.", "head.head."),
        ("scale_shift_table", "head.modulation"),
    ];
    // Inside `blocks.N.`; the original calls the norms norm1, norm3 (cross-attention), norm2.
    const BLOCK: &[(&str, &str)] = &[
        ("attn1.to_q.", "self_attn.q."),
        ("attn1.to_k.", "self_attn.k."),
        ("attn1.to_v.", "self_attn.v."),
        ("attn1.to_out.0.", "self_attn.o."),
        ("attn1.norm_q.", "self_attn.norm_q."),
        ("attn1.norm_k.", "self_attn.norm_k."),
        ("attn2.to_q.", "cross_attn.q."),
        ("attn2.to_k.", "cross_attn.k."),
        ("attn2.to_v.", "cross_attn.v."),
        ("attn2.to_out.0.", "cross_attn.o."),
        ("attn2.norm_q.", "cross_attn.norm_q."),
        ("attn2.norm_k.", "cross_attn.norm_k."),
        ("attn2.add_k_proj.", "cross_attn.k_img."),
        ("attn2.add_v_proj.", "cross_attn.v_img."),
        ("attn2.norm_added_k.", "cross_attn.norm_k_img."),
        ("ffn.net.0.proj.", "ffn.0."),
        ("ffn.net.2.", "ffn.2."),
        ("norm2.", "norm3."),
        ("scale_shift_table", "modulation"),
    ];
    let rename = |table: &[(&str, &str)], name: &str| {
        table.iter().find_map(|(ours, theirs)| {
            name.strip_prefix(ours)
                .map(|rest| format!("{theirs}{rest}"))
        })
    };
    if let Some(rest) = name.strip_prefix("blocks.") {
        let (index, inner) = rest.split_once('.')?;
        return rename(BLOCK, inner).map(|inner| format!("blocks.{index}.{inner}"));
    }
    rename(TOP, name)
}
