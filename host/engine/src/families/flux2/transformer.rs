//! `Flux2Transformer2DModel`: the FLUX.2 [dev] and [klein] diffusion transformer, following
//! diffusers' `models/transformers/transformer_flux2.py`: double-stream blocks (image and text
//! tokens with their own weights meeting in one joint attention, text first), then single-stream
//! "parallel" blocks over the concatenated sequence, all modulated by one time (and guidance)
//! embedding shared across the blocks. This is the plain forward that `Flux2Pipeline` and
//! `Flux2KleinPipeline` call; the reference-image KV cache (`kv_cache_mode`) is not implemented.
//! Dimensions come only from the config. Attention goes through [`crate::attention`].

use crate::fused::profile::section;
use crate::loader::single_file::{self, OriginalLayout, SingleFile};
use crate::lora::{Adaptable, LoraError, LoraState, Visitor, Weight};
use crate::models::embeddings::{TimestepEmbedding, timestep_features};
use crate::models::joint_attention::{
    JointAttention, JointSplit, PosEmbed, Rope, StreamTail, joint_attention, position_rows,
    split_heads,
};
use crate::models::normalization::AdaLayerNormContinuous;
use crate::models::{LayerNorm, Linear, RmsNorm, clip_f16, gated_residual, linear, linear_forward};
use crate::parallel::{SequenceParallel, SequenceSplit};
use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;

/// The reference config (`transformer/config.json`), field names as in diffusers'
/// `Flux2Transformer2DModel.__init__`; missing fields take the reference defaults (FLUX.2 [dev]).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct Flux2TransformerConfig {
    pub patch_size: usize,
    pub in_channels: usize,
    pub out_channels: Option<usize>,
    /// Double-stream blocks.
    pub num_layers: usize,
    /// Single-stream blocks.
    pub num_single_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    /// Width of `encoder_hidden_states` (the text encoder's stacked hidden states).
    pub joint_attention_dim: usize,
    pub timestep_guidance_channels: usize,
    pub mlp_ratio: f64,
    /// Rotary dims of the (t, h, w, l) position axes; they must sum to `attention_head_dim`.
    pub axes_dims_rope: Vec<usize>,
    pub rope_theta: f64,
    pub eps: f64,
    /// Whether the model embeds a guidance scale ([dev]; [klein] has none).
    pub guidance_embeds: bool,
}

impl Default for Flux2TransformerConfig {
    fn default() -> Self {
        Self {
            patch_size: 1,
            in_channels: 128,
            out_channels: None,
            num_layers: 8,
            num_single_layers: 48,
            attention_head_dim: 128,
            num_attention_heads: 48,
            joint_attention_dim: 15360,
            timestep_guidance_channels: 256,
            mlp_ratio: 3.0,
            axes_dims_rope: vec![32; 4],
            rope_theta: 2000.0,
            eps: 1e-6,
            guidance_embeds: true,
        }
    }
}

impl Flux2TransformerConfig {
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// `out_channels or in_channels`, as the reference resolves it.
    pub fn out_channels(&self) -> usize {
        self.out_channels
            .filter(|&c| c > 0)
            .unwrap_or(self.in_channels)
    }

    /// `int(dim * mlp_ratio)`: the hidden width of every SwiGLU MLP.
    fn mlp_hidden_dim(&self) -> usize {
        (self.inner_dim() as f64 * self.mlp_ratio) as usize
    }

    /// A config from a stranger's checkpoint must fail here, by field, not deep in a forward.
    fn validate(&self) -> Result<()> {
        let heads = self.num_attention_heads;
        let head_dim = self.attention_head_dim;
        if heads == 0 || head_dim == 0 || heads.checked_mul(head_dim).is_none() {
            candle_core::bail!(
                "num_attention_heads {heads} with attention_head_dim {head_dim} gives no usable model width"
            );
        }
        let axes = &self.axes_dims_rope;
        if axes.is_empty()
            || axes.iter().any(|d| *d == 0 || !d.is_multiple_of(2))
            || axes.iter().sum::<usize>() != head_dim
        {
            candle_core::bail!(
                "axes_dims_rope {axes:?} must be positive even dims summing to attention_head_dim {head_dim}"
            );
        }
        if self.patch_size == 0
            || self.in_channels == 0
            || self.joint_attention_dim == 0
            || self.timestep_guidance_channels == 0
        {
            candle_core::bail!(
                "patch_size, in_channels, joint_attention_dim and timestep_guidance_channels must be positive"
            );
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) || self.mlp_hidden_dim() == 0 {
            candle_core::bail!("mlp_ratio {} gives no MLP hidden width", self.mlp_ratio);
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            candle_core::bail!("rope_theta must be positive, got {}", self.rope_theta);
        }
        Ok(())
    }
}

/// `Flux2SwiGLU`: `silu(x[..., :half]) * x[..., half:]`.
fn swiglu(x: &Tensor) -> Result<Tensor> {
    if let Some(y) = crate::fused::swiglu(x)? {
        return Ok(y);
    }
    let half = x.dim(D::Minus1)? / 2;
    x.narrow(D::Minus1, 0, half)?
        .silu()?
        .mul(&x.narrow(D::Minus1, half, half)?)
}

/// `Flux2TimestepGuidanceEmbeddings`: `Timesteps` features of the timestep (and guidance) through
/// bias-free `TimestepEmbedding` MLPs, summed.
struct Flux2TimestepGuidanceEmbeddings {
    channels: usize,
    timestep_embedder: TimestepEmbedding,
    guidance_embedder: Option<TimestepEmbedding>,
}

impl Flux2TimestepGuidanceEmbeddings {
    fn new(cfg: &Flux2TransformerConfig, vb: VarBuilder) -> Result<Self> {
        let (channels, dim) = (cfg.timestep_guidance_channels, cfg.inner_dim());
        Ok(Self {
            channels,
            timestep_embedder: TimestepEmbedding::new(
                channels,
                dim,
                false,
                vb.pp("timestep_embedder"),
            )?,
            guidance_embedder: if cfg.guidance_embeds {
                Some(TimestepEmbedding::new(
                    channels,
                    dim,
                    false,
                    vb.pp("guidance_embedder"),
                )?)
            } else {
                None
            },
        })
    }

    fn visit_weights(&mut self, f: &mut Visitor<'_>) -> std::result::Result<(), LoraError> {
        self.timestep_embedder.visit_weights(f)?;
        match &mut self.guidance_embedder {
            Some(embedder) => embedder.visit_weights(f),
            None => Ok(()),
        }
    }

    /// `timestep` and `guidance` already scaled by 1000, in the model's dtype; returns `[B, dim]`.
    /// As in the reference, a guidance the model has no embedder for is ignored.
    fn forward(&self, timestep: &Tensor, guidance: Option<&Tensor>) -> Result<Tensor> {
        let embed = |embedder: &TimestepEmbedding, t: &Tensor| {
            embedder.forward(&timestep_features(t, self.channels)?.to_dtype(t.dtype())?)
        };
        let temb = embed(&self.timestep_embedder, timestep)?;
        match (&self.guidance_embedder, guidance) {
            (Some(embedder), Some(guidance)) => temb.broadcast_add(&embed(embedder, guidance)?),
            _ => Ok(temb),
        }
    }
}

/// `Flux2Modulation`: `linear(silu(temb))`, split into `sets` triples of (shift, scale, gate).
struct Flux2Modulation {
    linear: Linear,
    sets: usize,
}

impl Flux2Modulation {
    fn new(dim: usize, sets: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear: linear(dim, dim * 3 * sets, false, vb.pp("linear"))?,
            sets,
        })
    }

    /// `Flux2Modulation.forward` then `split`: `3 * sets` tensors of `[B, 1, dim]`, in f32 for
    /// the modulated norms and gated residuals.
    fn forward(&self, temb: &Tensor) -> Result<Vec<Tensor>> {
        let params = linear_forward(&self.linear, &temb.silu()?, None)?.to_dtype(DType::F32)?;
        let (b, width) = params.dims2()?;
        let dim = width / (3 * self.sets);
        (0..3 * self.sets)
            .map(|i| params.narrow(1, i * dim, dim)?.reshape((b, 1, dim)))
            .collect()
    }
}

/// `Flux2FeedForward`: bias-free SwiGLU MLP (`linear_in` to twice the hidden width, `linear_out`).
struct Flux2FeedForward {
    linear_in: Linear,
    linear_out: Linear,
}

impl Flux2FeedForward {
    fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear_in: linear(dim, 2 * hidden, false, vb.pp("linear_in"))?,
            linear_out: linear(hidden, dim, false, vb.pp("linear_out"))?,
        })
    }

    fn visit_weights(&mut self, f: &mut Visitor<'_>) -> std::result::Result<(), LoraError> {
        f(Weight::Linear(&mut self.linear_in))?;
        f(Weight::Linear(&mut self.linear_out))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dev = x.device();
        let h = section("ffn.in", dev, || linear_forward(&self.linear_in, x, None))?;
        let h = section("ffn.act", dev, || swiglu(&h))?;
        section("ffn.out", dev, || {
            linear_forward(&self.linear_out, &h, None)
        })
    }
}

/// `Flux2TransformerBlock`: one double-stream block.
struct Flux2TransformerBlock {
    norm1: LayerNorm,
    norm1_context: LayerNorm,
    /// `Flux2Attention`: the joint attention without biases.
    attn: JointAttention,
    norm2: LayerNorm,
    ff: Flux2FeedForward,
    norm2_context: LayerNorm,
    ff_context: Flux2FeedForward,
}

impl Flux2TransformerBlock {
    fn new(cfg: &Flux2TransformerConfig, vb: VarBuilder) -> Result<Self> {
        let (dim, hidden, eps) = (cfg.inner_dim(), cfg.mlp_hidden_dim(), cfg.eps);
        let norm = |name: &str| LayerNorm::new(dim, eps, false, vb.pp(name));
        Ok(Self {
            norm1: norm("norm1")?,
            norm1_context: norm("norm1_context")?,
            attn: JointAttention::new(dim, cfg.attention_head_dim, eps, false, vb.pp("attn"))?,
            norm2: norm("norm2")?,
            ff: Flux2FeedForward::new(dim, hidden, vb.pp("ff"))?,
            norm2_context: norm("norm2_context")?,
            ff_context: Flux2FeedForward::new(dim, hidden, vb.pp("ff_context"))?,
        })
    }

    fn visit_weights(&mut self, f: &mut Visitor<'_>) -> std::result::Result<(), LoraError> {
        self.attn.visit_weights(f)?;
        self.ff.visit_weights(f)?;
        self.ff_context.visit_weights(f)
    }

    /// `mod_img` / `mod_txt`: the six (shift, scale, gate) × (attention, MLP) tensors of each
    /// stream. Returns the new `(context, x)`, as the reference orders them.
    fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        mod_img: &[Tensor],
        mod_txt: &[Tensor],
        rope: &Rope,
        split: Option<&JointSplit<'_>>,
    ) -> Result<(Tensor, Tensor)> {
        let dev = x.device();
        let [
            shift_msa,
            scale_msa,
            gate_msa,
            shift_mlp,
            scale_mlp,
            gate_mlp,
        ] = mod_img
        else {
            candle_core::bail!("double-stream image modulation must hold 6 tensors");
        };
        let [
            c_shift_msa,
            c_scale_msa,
            c_gate_msa,
            c_shift_mlp,
            c_scale_mlp,
            c_gate_mlp,
        ] = mod_txt
        else {
            candle_core::bail!("double-stream text modulation must hold 6 tensors");
        };

        let (normed, normed_context) = section("norm1.modulate", dev, || {
            Ok((
                self.norm1.forward_modulated(x, shift_msa, scale_msa)?,
                self.norm1_context
                    .forward_modulated(context, c_shift_msa, c_scale_msa)?,
            ))
        })?;
        let (attn, context_attn) = self.attn.forward(&normed, &normed_context, rope, split)?;

        let image = StreamTail {
            gate_msa,
            shift_mlp,
            scale_mlp,
            gate_mlp,
        };
        let x = image.apply(x, &attn, &self.norm2, |h| self.ff.forward(h))?;
        let text = StreamTail {
            gate_msa: c_gate_msa,
            shift_mlp: c_shift_mlp,
            scale_mlp: c_scale_mlp,
            gate_mlp: c_gate_mlp,
        };
        let context = text.apply(context, &context_attn, &self.norm2_context, |h| {
            self.ff_context.forward(h)
        })?;
        Ok((clip_f16(context)?, x))
    }
}

/// `Flux2ParallelSelfAttention` with `Flux2ParallelSelfAttnProcessor`: one fused projection to
/// q, k, v and the SwiGLU MLP input, attention and MLP side by side, one output projection over
/// their concatenation.
struct Flux2ParallelSelfAttention {
    to_qkv_mlp_proj: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    to_out: Linear,
    head_dim: usize,
}

impl Flux2ParallelSelfAttention {
    fn new(cfg: &Flux2TransformerConfig, vb: VarBuilder) -> Result<Self> {
        let (dim, hidden, head_dim) = (
            cfg.inner_dim(),
            cfg.mlp_hidden_dim(),
            cfg.attention_head_dim,
        );
        Ok(Self {
            to_qkv_mlp_proj: linear(dim, 3 * dim + 2 * hidden, false, vb.pp("to_qkv_mlp_proj"))?,
            norm_q: RmsNorm::new(head_dim, cfg.eps, vb.pp("norm_q"))?,
            norm_k: RmsNorm::new(head_dim, cfg.eps, vb.pp("norm_k"))?,
            to_out: linear(dim + hidden, dim, false, vb.pp("to_out"))?,
            head_dim,
        })
    }

    fn visit_weights(&mut self, f: &mut Visitor<'_>) -> std::result::Result<(), LoraError> {
        f(Weight::Linear(&mut self.to_qkv_mlp_proj))?;
        self.norm_q.visit_weights(f)?;
        self.norm_k.visit_weights(f)?;
        f(Weight::Linear(&mut self.to_out))
    }

    fn forward(&self, x: &Tensor, rope: &Rope, split: Option<&JointSplit<'_>>) -> Result<Tensor> {
        let dev = x.device();
        let h = section("single.qkv_mlp", dev, || {
            linear_forward(&self.to_qkv_mlp_proj, x, None)
        })?;
        let dim = self.to_out.dims()[0];
        let mlp_width = h.dim(D::Minus1)? - 3 * dim;
        let part = |i: usize| split_heads(&h.narrow(D::Minus1, i * dim, dim)?, self.head_dim);
        let (q, k) = section("single.qk_norm+rope", dev, || {
            Ok((
                rope.apply_normed(&self.norm_q, &part(0)?)?,
                rope.apply_normed(&self.norm_k, &part(1)?)?,
            ))
        })?;
        let v = part(2)?;
        let out = joint_attention(&q, &k, &v, split)?.flatten_from(2)?;
        let mlp = section("single.mlp_act", dev, || {
            swiglu(&h.narrow(D::Minus1, 3 * dim, mlp_width)?)
        })?;
        section("single.out", dev, || {
            linear_forward(&self.to_out, &Tensor::cat(&[out, mlp], D::Minus1)?, None)
        })
    }
}

/// `Flux2SingleTransformerBlock`: one single-stream block over `[text, image]` tokens.
struct Flux2SingleTransformerBlock {
    norm: LayerNorm,
    attn: Flux2ParallelSelfAttention,
}

impl Flux2SingleTransformerBlock {
    fn new(cfg: &Flux2TransformerConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: LayerNorm::new(cfg.inner_dim(), cfg.eps, false, vb.pp("norm"))?,
            attn: Flux2ParallelSelfAttention::new(cfg, vb.pp("attn"))?,
        })
    }

    /// `modulation`: the block's (shift, scale, gate).
    fn forward(
        &self,
        x: &Tensor,
        modulation: &[Tensor],
        rope: &Rope,
        split: Option<&JointSplit<'_>>,
    ) -> Result<Tensor> {
        let dev = x.device();
        let [shift, scale, gate] = modulation else {
            candle_core::bail!("single-stream modulation must hold 3 tensors");
        };
        let normed = section("norm.modulate", dev, || {
            self.norm.forward_modulated(x, shift, scale)
        })?;
        let attn = self.attn.forward(&normed, rope, split)?;
        clip_f16(section("residual.gated", dev, || {
            gated_residual(x, &attn, gate)
        })?)
    }
}

/// The FLUX.2 diffusion transformer.
pub struct Flux2Transformer2DModel {
    config: Flux2TransformerConfig,
    /// `Flux2PosEmbed`.
    pos_embed: PosEmbed,
    time_guidance_embed: Flux2TimestepGuidanceEmbeddings,
    double_stream_modulation_img: Flux2Modulation,
    double_stream_modulation_txt: Flux2Modulation,
    single_stream_modulation: Flux2Modulation,
    x_embedder: Linear,
    context_embedder: Linear,
    transformer_blocks: Vec<Flux2TransformerBlock>,
    single_transformer_blocks: Vec<Flux2SingleTransformerBlock>,
    norm_out: AdaLayerNormContinuous,
    proj_out: Linear,
    dtype: DType,
    lora: LoraState,
    /// This rank's sequence group when one generation is split across cards.
    sequence: Option<Arc<SequenceParallel>>,
}

impl Flux2Transformer2DModel {
    pub fn new(cfg: &Flux2TransformerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let dim = cfg.inner_dim();
        Ok(Self {
            pos_embed: PosEmbed {
                axes_dim: cfg.axes_dims_rope.clone(),
                theta: cfg.rope_theta,
            },
            time_guidance_embed: Flux2TimestepGuidanceEmbeddings::new(
                cfg,
                vb.pp("time_guidance_embed"),
            )?,
            double_stream_modulation_img: Flux2Modulation::new(
                dim,
                2,
                vb.pp("double_stream_modulation_img"),
            )?,
            double_stream_modulation_txt: Flux2Modulation::new(
                dim,
                2,
                vb.pp("double_stream_modulation_txt"),
            )?,
            single_stream_modulation: Flux2Modulation::new(
                dim,
                1,
                vb.pp("single_stream_modulation"),
            )?,
            x_embedder: linear(cfg.in_channels, dim, false, vb.pp("x_embedder"))?,
            context_embedder: linear(
                cfg.joint_attention_dim,
                dim,
                false,
                vb.pp("context_embedder"),
            )?,
            transformer_blocks: (0..cfg.num_layers)
                .map(|i| Flux2TransformerBlock::new(cfg, vb.pp("transformer_blocks").pp(i)))
                .collect::<Result<_>>()?,
            single_transformer_blocks: (0..cfg.num_single_layers)
                .map(|i| {
                    Flux2SingleTransformerBlock::new(cfg, vb.pp("single_transformer_blocks").pp(i))
                })
                .collect::<Result<_>>()?,
            norm_out: AdaLayerNormContinuous::new(dim, cfg.eps, false, vb.pp("norm_out"))?,
            proj_out: linear(
                dim,
                cfg.patch_size * cfg.patch_size * cfg.out_channels(),
                false,
                vb.pp("proj_out"),
            )?,
            dtype: vb.dtype(),
            config: cfg.clone(),
            lora: LoraState::default(),
            sequence: None,
        })
    }

    /// Reads a `transformer` folder (`config.json` and the memory-mapped weights, which stay
    /// mapped: LoRAs restore the weights they change from them), or a single file in the
    /// original release's names (`flux2-dev.safetensors`; see [`crate::loader::single_file`]).
    pub fn load(path: &Path, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        let builder = single_file::Builder {
            layout: OriginalLayout::Flux2Transformer,
            infer: SingleFile::flux2_config,
            check: |_| Ok(()),
            build: Self::new,
        };
        let (mut model, checkpoint) = single_file::load_model(path, builder, dtype, device)?;
        if let Some(checkpoint) = checkpoint {
            model.lora = LoraState::from_checkpoint(checkpoint);
        }
        Ok(model)
    }

    pub fn config(&self) -> &Flux2TransformerConfig {
        &self.config
    }

    /// The dtype of the activations (the dtype the model was loaded in).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Predicts the flow of the packed latent tokens `hidden_states` (`[B, L_img, in_channels]`)
    /// at `timestep` (`[B]` or `[1]`, in [0, 1]: the pipelines pass `t / 1000` and the model
    /// scales it back), conditioned on `encoder_hidden_states` (`[B, L_txt,
    /// joint_attention_dim]`), with the 4-D position ids `img_ids` (`[L_img, 4]` or `[B, L_img,
    /// 4]`) and `txt_ids` (likewise), and for guidance-distilled models ([dev]) the guidance scale
    /// `guidance` (`[B]` or `[1]`). Returns `sample`, `[B, L_img, patch_size² · out_channels]`, in
    /// the model's dtype.
    pub fn forward(
        &self,
        hidden_states: &Tensor,
        encoder_hidden_states: &Tensor,
        timestep: &Tensor,
        img_ids: &Tensor,
        txt_ids: &Tensor,
        guidance: Option<&Tensor>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (batch, image_len, channels) = hidden_states.dims3().map_err(|_| {
            candle_core::Error::msg(format!(
                "hidden_states must have shape [batch, image tokens, {}], got {:?}",
                cfg.in_channels,
                hidden_states.dims()
            ))
        })?;
        if channels != cfg.in_channels {
            candle_core::bail!(
                "hidden_states has shape {:?}: its last dimension must be in_channels = {}",
                hidden_states.dims(),
                cfg.in_channels
            );
        }
        let text_len = match *encoder_hidden_states.dims() {
            [b, len, width] if b == batch && width == cfg.joint_attention_dim => len,
            _ => candle_core::bail!(
                "encoder_hidden_states must have shape [{batch}, text tokens, {}] (joint_attention_dim), got {:?}",
                cfg.joint_attention_dim,
                encoder_hidden_states.dims()
            ),
        };
        // `timestep.to(dtype) * 1000`, as the reference scales it (after rounding to the dtype).
        let scaled = |t: &Tensor, name: &str| match *t.dims() {
            [n] if n == batch || n == 1 => t.to_dtype(self.dtype)? * 1000.0,
            _ => candle_core::bail!(
                "{name} must have shape [{batch}] or [1], got {:?}",
                t.dims()
            ),
        };
        let timestep = scaled(timestep, "timestep")?;
        let guidance = guidance.map(|g| scaled(g, "guidance")).transpose()?;

        let axes = cfg.axes_dims_rope.len();
        let image_rows = position_rows(img_ids, "img_ids", "hidden_states", image_len, axes)?;
        let text_rows = position_rows(txt_ids, "txt_ids", "encoder_hidden_states", text_len, axes)?;
        let device = hidden_states.device();
        let rope = self.pos_embed.forward(&[&text_rows, &image_rows], device)?;
        let split = JointSplit::new(self.sequence.as_deref(), text_len, image_len);
        let rope = rope.for_split(split.as_ref())?;

        // 1. Time (and guidance) embedding and the modulation shared by all blocks.
        let temb = self
            .time_guidance_embed
            .forward(&timestep, guidance.as_ref())?;
        let mod_img = self.double_stream_modulation_img.forward(&temb)?;
        let mod_txt = self.double_stream_modulation_txt.forward(&temb)?;
        let mod_single = self.single_stream_modulation.forward(&temb)?;

        // 2. Input projections.
        let mut x = linear_forward(&self.x_embedder, &hidden_states.to_dtype(self.dtype)?, None)?;
        if let Some(split) = &split {
            x = split.shard_image(&x)?;
        }
        let mut context = linear_forward(
            &self.context_embedder,
            &encoder_hidden_states.to_dtype(self.dtype)?,
            None,
        )?;

        // 3. Double-stream blocks.
        for block in &self.transformer_blocks {
            (context, x) =
                block.forward(&x, &context, &mod_img, &mod_txt, &rope, split.as_ref())?;
        }

        // 4. Single-stream blocks over [text, image].
        let mut joint = Tensor::cat(&[context, x], 1)?;
        for block in &self.single_transformer_blocks {
            joint = block.forward(&joint, &mod_single, &rope, split.as_ref())?;
        }
        let x = joint.narrow(1, text_len, joint.dim(1)? - text_len)?;

        // 5. Output.
        let x = self.norm_out.forward(&x, &temb)?;
        let sample = linear_forward(&self.proj_out, &x, None)?;
        match &split {
            Some(split) => split.gather_image(&sample),
            None => Ok(sample),
        }
    }
}

/// Splits the image tokens (the text stays whole on every rank).
impl SequenceSplit for Flux2Transformer2DModel {
    fn split_heads(&self) -> usize {
        self.config.num_attention_heads
    }

    fn sequence_slot(&mut self) -> &mut Option<Arc<SequenceParallel>> {
        &mut self.sequence
    }
}

impl Adaptable for Flux2Transformer2DModel {
    fn class_name(&self) -> &'static str {
        "Flux2Transformer2DModel"
    }

    fn visit_weights(&mut self, f: &mut Visitor<'_>) -> std::result::Result<(), LoraError> {
        self.time_guidance_embed.visit_weights(f)?;
        for modulation in [
            &mut self.double_stream_modulation_img,
            &mut self.double_stream_modulation_txt,
            &mut self.single_stream_modulation,
        ] {
            f(Weight::Linear(&mut modulation.linear))?;
        }
        f(Weight::Linear(&mut self.x_embedder))?;
        f(Weight::Linear(&mut self.context_embedder))?;
        for block in &mut self.transformer_blocks {
            block.visit_weights(f)?;
        }
        for block in &mut self.single_transformer_blocks {
            block.attn.visit_weights(f)?;
        }
        self.norm_out.visit_weights(f)?;
        f(Weight::Linear(&mut self.proj_out))
    }

    /// Diffusers / PEFT files name the weights as the checkpoint does; the original release's
    /// names (fused q/k/v) have no one-to-one counterpart here.
    fn aliases(&self, _name: &str) -> Vec<String> {
        Vec::new()
    }

    fn lora_state(&mut self) -> &mut LoraState {
        &mut self.lora
    }
}
