//! `FluxTransformer2DModel`: the FLUX.1 [dev] / [schnell] / Kontext diffusion transformer,
//! following diffusers' `models/transformers/transformer_flux.py`: double-stream blocks (image and
//! text tokens with their own weights and per-block `AdaLayerNormZero` modulation, meeting in one
//! joint attention, text first), then single-stream blocks over the concatenated sequence
//! (attention and a GELU MLP side by side), all conditioned on the timestep, the pooled CLIP
//! embedding and, for [dev], the guidance scale. IP-adapter and ControlNet residuals are not
//! implemented. Dimensions come only from the config. Attention goes through [`crate::attention`].

use crate::fused::profile::section;
use crate::loader::single_file::{self, OriginalLayout, SingleFile};
use crate::lora::{Adaptable, LoraError, LoraState, Visitor, Weight};
use crate::models::embeddings::{TimestepEmbedding, timestep_features};
use crate::models::feed_forward::FeedForward;
use crate::models::joint_attention::{
    HeadProjections, JointAttention, JointSplit, PosEmbed, Rope, StreamTail, joint_attention,
    position_rows,
};
use crate::models::normalization::{AdaLayerNormContinuous, AdaLayerNormZero};
use crate::models::{
    Activation, LayerNorm, Linear, clip_f16, gated_residual, linear, linear_forward,
};
use crate::parallel::{SequenceParallel, SequenceSplit};
use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;

/// `FluxPosEmbed(theta=10000, ...)`: FLUX.1 fixes the rotary base.
const ROPE_THETA: f64 = 10000.0;
/// `Timesteps(num_channels=256)` of the combined embeddings.
const TIME_CHANNELS: usize = 256;
/// The eps of every norm of the blocks and of `norm_out`.
const EPS: f64 = 1e-6;

/// The reference config (`transformer/config.json`), field names as in diffusers'
/// `FluxTransformer2DModel.__init__`; missing fields take the reference defaults.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct FluxTransformerConfig {
    pub patch_size: usize,
    pub in_channels: usize,
    pub out_channels: Option<usize>,
    /// Double-stream blocks.
    pub num_layers: usize,
    /// Single-stream blocks.
    pub num_single_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    /// Width of `encoder_hidden_states` (the T5 hidden states).
    pub joint_attention_dim: usize,
    /// Width of `pooled_projections` (CLIP's pooled output).
    pub pooled_projection_dim: usize,
    /// Whether the model embeds a guidance scale ([dev], Kontext; [schnell] has none).
    pub guidance_embeds: bool,
    /// Rotary dims of the position axes; they must sum to `attention_head_dim`.
    pub axes_dims_rope: Vec<usize>,
}

impl Default for FluxTransformerConfig {
    fn default() -> Self {
        Self {
            patch_size: 1,
            in_channels: 64,
            out_channels: None,
            num_layers: 19,
            num_single_layers: 38,
            attention_head_dim: 128,
            num_attention_heads: 24,
            joint_attention_dim: 4096,
            pooled_projection_dim: 768,
            guidance_embeds: false,
            axes_dims_rope: vec![16, 56, 56],
        }
    }
}

impl FluxTransformerConfig {
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// `out_channels or in_channels`, as the reference resolves it.
    pub fn out_channels(&self) -> usize {
        self.out_channels
            .filter(|&c| c > 0)
            .unwrap_or(self.in_channels)
    }

    /// A config from a stranger's checkpoint must fail here, by field, not deep in a forward.
    fn validate(&self) -> Result<()> {
        let (heads, head_dim) = (self.num_attention_heads, self.attention_head_dim);
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
            || self.pooled_projection_dim == 0
        {
            candle_core::bail!(
                "patch_size, in_channels, joint_attention_dim and pooled_projection_dim must be positive"
            );
        }
        Ok(())
    }
}

/// `CombinedTimestepGuidanceTextProjEmbeddings` ([dev]) or `CombinedTimestepTextProjEmbeddings`
/// ([schnell]): `Timesteps` features of the timestep (and guidance) through `TimestepEmbedding`
/// MLPs, plus the pooled text embedding through `PixArtAlphaTextProjection` (linear, SiLU,
/// linear: the same layers as a `TimestepEmbedding`).
struct CombinedEmbeddings {
    timestep_embedder: TimestepEmbedding,
    guidance_embedder: Option<TimestepEmbedding>,
    text_embedder: TimestepEmbedding,
}

impl CombinedEmbeddings {
    fn new(cfg: &FluxTransformerConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.inner_dim();
        let mlp = |name: &str| TimestepEmbedding::new(TIME_CHANNELS, dim, true, vb.pp(name));
        Ok(Self {
            timestep_embedder: mlp("timestep_embedder")?,
            guidance_embedder: cfg
                .guidance_embeds
                .then(|| mlp("guidance_embedder"))
                .transpose()?,
            text_embedder: TimestepEmbedding::new(
                cfg.pooled_projection_dim,
                dim,
                true,
                vb.pp("text_embedder"),
            )?,
        })
    }

    fn visit_weights(&mut self, f: &mut Visitor<'_>) -> std::result::Result<(), LoraError> {
        self.timestep_embedder.visit_weights(f)?;
        if let Some(embedder) = &mut self.guidance_embedder {
            embedder.visit_weights(f)?;
        }
        self.text_embedder.visit_weights(f)
    }

    /// `timestep` and `guidance` already scaled by 1000 in the model's dtype; `pooled` `[B,
    /// pooled_projection_dim]`. Returns `temb`, `[B, dim]`.
    fn forward(
        &self,
        timestep: &Tensor,
        guidance: Option<&Tensor>,
        pooled: &Tensor,
    ) -> Result<Tensor> {
        let embed = |embedder: &TimestepEmbedding, t: &Tensor| {
            embedder.forward(&timestep_features(t, TIME_CHANNELS)?.to_dtype(pooled.dtype())?)
        };
        let mut temb = embed(&self.timestep_embedder, timestep)?;
        if let (Some(embedder), Some(guidance)) = (&self.guidance_embedder, guidance) {
            temb = temb.broadcast_add(&embed(embedder, guidance)?)?;
        }
        temb.broadcast_add(&self.text_embedder.forward(pooled)?)
    }
}

/// `FluxTransformerBlock`: one double-stream block.
struct FluxTransformerBlock {
    norm1: AdaLayerNormZero,
    norm1_context: AdaLayerNormZero,
    /// `FluxAttention` with `added_kv_proj_dim`: the joint attention with biases.
    attn: JointAttention,
    norm2: LayerNorm,
    ff: FeedForward,
    norm2_context: LayerNorm,
    ff_context: FeedForward,
}

impl FluxTransformerBlock {
    fn new(cfg: &FluxTransformerConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.inner_dim();
        let ff =
            |name: &str| FeedForward::new(dim, 4 * dim, dim, Activation::GeluTanh, vb.pp(name));
        Ok(Self {
            norm1: AdaLayerNormZero::new(dim, 6, vb.pp("norm1"))?,
            norm1_context: AdaLayerNormZero::new(dim, 6, vb.pp("norm1_context"))?,
            attn: JointAttention::new(dim, cfg.attention_head_dim, EPS, true, vb.pp("attn"))?,
            norm2: LayerNorm::new(dim, EPS, false, vb.pp("norm2"))?,
            ff: ff("ff")?,
            norm2_context: LayerNorm::new(dim, EPS, false, vb.pp("norm2_context"))?,
            ff_context: ff("ff_context")?,
        })
    }

    fn visit_weights(&mut self, f: &mut Visitor<'_>) -> std::result::Result<(), LoraError> {
        self.norm1.visit_weights(f)?;
        self.norm1_context.visit_weights(f)?;
        self.attn.visit_weights(f)?;
        self.ff.visit_weights(f)?;
        self.ff_context.visit_weights(f)
    }

    /// Returns the new `(context, x)`, as the reference orders them.
    fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        temb: &Tensor,
        rope: &Rope,
        split: Option<&JointSplit<'_>>,
    ) -> Result<(Tensor, Tensor)> {
        let dev = x.device();
        let (normed, modulation) = section("norm1.modulate", dev, || self.norm1.forward(x, temb))?;
        let [gate_msa, shift_mlp, scale_mlp, gate_mlp] = &modulation[..] else {
            candle_core::bail!("AdaLayerNormZero must give 6 chunks");
        };
        let (normed_context, modulation) = section("norm1.modulate", dev, || {
            self.norm1_context.forward(context, temb)
        })?;
        let [c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp] = &modulation[..] else {
            candle_core::bail!("AdaLayerNormZero must give 6 chunks");
        };
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

/// `FluxSingleTransformerBlock`: attention (`FluxAttention(pre_only=True)`: q/k/v and their norms,
/// no output projection) and a tanh-GELU MLP side by side over `[text, image]`, one `proj_out`
/// over their concatenation, gated by `AdaLayerNormZeroSingle`.
struct FluxSingleTransformerBlock {
    norm: AdaLayerNormZero,
    proj_mlp: Linear,
    proj_out: Linear,
    attn: HeadProjections,
}

impl FluxSingleTransformerBlock {
    fn new(cfg: &FluxTransformerConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.inner_dim();
        // `mlp_ratio` 4.0, fixed by the model.
        let hidden = 4 * dim;
        Ok(Self {
            norm: AdaLayerNormZero::new(dim, 3, vb.pp("norm"))?,
            proj_mlp: linear(dim, hidden, true, vb.pp("proj_mlp"))?,
            proj_out: linear(dim + hidden, dim, true, vb.pp("proj_out"))?,
            attn: HeadProjections::image(dim, cfg.attention_head_dim, EPS, true, &vb.pp("attn"))?,
        })
    }

    fn visit_weights(&mut self, f: &mut Visitor<'_>) -> std::result::Result<(), LoraError> {
        self.norm.visit_weights(f)?;
        f(Weight::Linear(&mut self.proj_mlp))?;
        f(Weight::Linear(&mut self.proj_out))?;
        self.attn.visit_weights(f)
    }

    fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        rope: &Rope,
        split: Option<&JointSplit<'_>>,
    ) -> Result<Tensor> {
        let dev = x.device();
        let (normed, modulation) = section("norm.modulate", dev, || self.norm.forward(x, temb))?;
        let [gate] = &modulation[..] else {
            candle_core::bail!("AdaLayerNormZeroSingle must give 3 chunks");
        };
        let mlp = section("single.mlp", dev, || {
            Activation::GeluTanh.apply(&linear_forward(&self.proj_mlp, &normed, None)?)
        })?;
        let [q, k, v] = self.attn.forward_rotated(&normed, rope)?;
        let out = joint_attention(&q, &k, &v, split)?.flatten_from(2)?;
        let h = section("single.out", dev, || {
            linear_forward(&self.proj_out, &Tensor::cat(&[out, mlp], D::Minus1)?, None)
        })?;
        clip_f16(section("residual.gated", dev, || {
            gated_residual(x, &h, gate)
        })?)
    }
}

/// The FLUX.1 diffusion transformer.
pub struct FluxTransformer2DModel {
    config: FluxTransformerConfig,
    /// `FluxPosEmbed`.
    pos_embed: PosEmbed,
    time_text_embed: CombinedEmbeddings,
    context_embedder: Linear,
    x_embedder: Linear,
    transformer_blocks: Vec<FluxTransformerBlock>,
    single_transformer_blocks: Vec<FluxSingleTransformerBlock>,
    norm_out: AdaLayerNormContinuous,
    proj_out: Linear,
    dtype: DType,
    lora: LoraState,
    /// This rank's sequence group when one generation is split across cards.
    sequence: Option<Arc<SequenceParallel>>,
}

impl FluxTransformer2DModel {
    pub fn new(cfg: &FluxTransformerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let dim = cfg.inner_dim();
        Ok(Self {
            pos_embed: PosEmbed {
                axes_dim: cfg.axes_dims_rope.clone(),
                theta: ROPE_THETA,
            },
            time_text_embed: CombinedEmbeddings::new(cfg, vb.pp("time_text_embed"))?,
            context_embedder: linear(
                cfg.joint_attention_dim,
                dim,
                true,
                vb.pp("context_embedder"),
            )?,
            x_embedder: linear(cfg.in_channels, dim, true, vb.pp("x_embedder"))?,
            transformer_blocks: (0..cfg.num_layers)
                .map(|i| FluxTransformerBlock::new(cfg, vb.pp("transformer_blocks").pp(i)))
                .collect::<Result<_>>()?,
            single_transformer_blocks: (0..cfg.num_single_layers)
                .map(|i| {
                    FluxSingleTransformerBlock::new(cfg, vb.pp("single_transformer_blocks").pp(i))
                })
                .collect::<Result<_>>()?,
            norm_out: AdaLayerNormContinuous::new(dim, EPS, true, vb.pp("norm_out"))?,
            proj_out: linear(
                dim,
                cfg.patch_size * cfg.patch_size * cfg.out_channels(),
                true,
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
    /// original release's names (`flux1-dev.safetensors`; see [`crate::loader::single_file`]).
    pub fn load(path: &Path, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        let builder = single_file::Builder {
            layout: OriginalLayout::Flux1Transformer,
            infer: SingleFile::flux_config,
            check: |_| Ok(()),
            build: Self::new,
        };
        let (mut model, checkpoint) = single_file::load_model(path, builder, dtype, device)?;
        if let Some(checkpoint) = checkpoint {
            model.lora = LoraState::from_checkpoint(checkpoint);
        }
        Ok(model)
    }

    pub fn config(&self) -> &FluxTransformerConfig {
        &self.config
    }

    /// The dtype of the activations (the dtype the model was loaded in).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Predicts the flow of the packed latent tokens `hidden_states` (`[B, L_img, in_channels]`)
    /// at `timestep` (`[B]` or `[1]`, in [0, 1]: the pipelines pass `t / 1000` and the model
    /// scales it back), conditioned on the T5 states `encoder_hidden_states` (`[B, L_txt,
    /// joint_attention_dim]`), CLIP's `pooled_projections` (`[B, pooled_projection_dim]`), the
    /// position ids `img_ids` (`[L_img, 3]`, or `[B, L_img, 3]` as the reference still accepts)
    /// and `txt_ids` (likewise), and for guidance-distilled models the guidance scale `guidance`
    /// (`[B]` or `[1]`). Returns `sample`, `[B, L_img, patch_size² · out_channels]`, in the
    /// model's dtype.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        hidden_states: &Tensor,
        encoder_hidden_states: &Tensor,
        pooled_projections: &Tensor,
        timestep: &Tensor,
        img_ids: &Tensor,
        txt_ids: &Tensor,
        guidance: Option<&Tensor>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (batch, image_len) = match *hidden_states.dims() {
            [b, len, c] if c == cfg.in_channels => (b, len),
            _ => candle_core::bail!(
                "hidden_states must have shape [batch, image tokens, {}] (in_channels), got {:?}",
                cfg.in_channels,
                hidden_states.dims()
            ),
        };
        let text_len = match *encoder_hidden_states.dims() {
            [b, len, width] if b == batch && width == cfg.joint_attention_dim => len,
            _ => candle_core::bail!(
                "encoder_hidden_states must have shape [{batch}, text tokens, {}] (joint_attention_dim), got {:?}",
                cfg.joint_attention_dim,
                encoder_hidden_states.dims()
            ),
        };
        if pooled_projections.dims() != [batch, cfg.pooled_projection_dim] {
            candle_core::bail!(
                "pooled_projections must have shape [{batch}, {}] (pooled_projection_dim), got {:?}",
                cfg.pooled_projection_dim,
                pooled_projections.dims()
            );
        }
        // `timestep.to(dtype) * 1000`, as the reference scales it (after rounding to the dtype).
        let scaled = |t: &Tensor, name: &str| match *t.dims() {
            [n] if n == batch || n == 1 => t.to_dtype(self.dtype)? * 1000.0,
            _ => candle_core::bail!(
                "{name} must have shape [{batch}] or [1], got {:?}",
                t.dims()
            ),
        };
        let timestep = scaled(timestep, "timestep")?;
        let guidance = match (guidance, cfg.guidance_embeds) {
            (Some(g), true) => Some(scaled(g, "guidance")?),
            (None, false) => None,
            (None, true) => candle_core::bail!(
                "this model embeds the guidance scale (guidance_embeds): give `guidance`"
            ),
            (Some(_), false) => candle_core::bail!(
                "this model has no guidance embedder (guidance_embeds is false): drop `guidance`"
            ),
        };

        let axes = cfg.axes_dims_rope.len();
        let image_rows = position_rows(img_ids, "img_ids", "hidden_states", image_len, axes)?;
        let text_rows = position_rows(txt_ids, "txt_ids", "encoder_hidden_states", text_len, axes)?;
        let rope = self
            .pos_embed
            .forward(&[&text_rows, &image_rows], hidden_states.device())?;
        let split = JointSplit::new(self.sequence.as_deref(), text_len, image_len);
        let rope = rope.for_split(split.as_ref())?;

        let mut x = linear_forward(&self.x_embedder, &hidden_states.to_dtype(self.dtype)?, None)?;
        if let Some(split) = &split {
            x = split.shard_image(&x)?;
        }
        let temb = self.time_text_embed.forward(
            &timestep,
            guidance.as_ref(),
            &pooled_projections.to_dtype(self.dtype)?,
        )?;
        let mut context = linear_forward(
            &self.context_embedder,
            &encoder_hidden_states.to_dtype(self.dtype)?,
            None,
        )?;

        for block in &self.transformer_blocks {
            (context, x) = block.forward(&x, &context, &temb, &rope, split.as_ref())?;
        }
        let mut joint = Tensor::cat(&[context, x], 1)?;
        for block in &self.single_transformer_blocks {
            joint = block.forward(&joint, &temb, &rope, split.as_ref())?;
        }
        let x = joint.narrow(1, text_len, joint.dim(1)? - text_len)?;

        let x = self.norm_out.forward(&x, &temb)?;
        let sample = linear_forward(&self.proj_out, &x, None)?;
        match &split {
            Some(split) => split.gather_image(&sample),
            None => Ok(sample),
        }
    }
}

/// Splits the image tokens (the text stays whole on every rank).
impl SequenceSplit for FluxTransformer2DModel {
    fn split_heads(&self) -> usize {
        self.config.num_attention_heads
    }

    fn sequence_slot(&mut self) -> &mut Option<Arc<SequenceParallel>> {
        &mut self.sequence
    }
}

impl Adaptable for FluxTransformer2DModel {
    fn class_name(&self) -> &'static str {
        "FluxTransformer2DModel"
    }

    fn visit_weights(&mut self, f: &mut Visitor<'_>) -> std::result::Result<(), LoraError> {
        self.time_text_embed.visit_weights(f)?;
        f(Weight::Linear(&mut self.context_embedder))?;
        f(Weight::Linear(&mut self.x_embedder))?;
        for block in &mut self.transformer_blocks {
            block.visit_weights(f)?;
        }
        for block in &mut self.single_transformer_blocks {
            block.visit_weights(f)?;
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
