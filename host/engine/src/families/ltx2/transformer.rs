//! `LTX2VideoTransformer3DModel`: the LTX-2 audio-video diffusion transformer, following
//! diffusers' `models/transformers/transformer_ltx2.py`. Two token streams, video and audio, run
//! through the same blocks; each block holds per-stream self-attention and text cross-attention,
//! audio-to-video and video-to-audio cross-attention, and per-stream feed-forwards, all modulated
//! by AdaLN-single parameters from the timestep (`LTX2AdaLayerNormSingle`) plus per-block tables.
//! The LTX-2.3 options (gated attention, prompt cross-attention modulation, `sigma`), per-token
//! timesteps (image-to-video), explicit coordinates, spatio-temporal guidance (`perturbed_attn`)
//! and modality isolation are supported. Attention goes through [`crate::attention`].

use super::rope::{Coords, LTX2AudioVideoRotaryPosEmbed, RopeType, RotaryEmb};
use crate::attention::{attention, attention_with_bias};
use crate::fused::profile::section;
use crate::loader::single_file::{self, OriginalLayout};
use crate::lora::{Adaptable, LoraError, LoraState, Visitor, Weight};
use crate::models::embeddings::{TimestepEmbedding, timestep_features};
use crate::models::feed_forward::FeedForward;
use crate::models::{
    Activation, LayerNorm, Linear, RmsNorm, gated_residual, linear, linear_forward,
};
use crate::parallel::{SequenceParallel, SequenceSplit};
use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The reference config (`transformer/config.json`), field names as in diffusers'
/// `LTX2VideoTransformer3DModel.__init__`; missing fields take the reference defaults (LTX-2 19B).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct LTX2TransformerConfig {
    pub in_channels: usize,
    pub out_channels: Option<usize>,
    pub patch_size: usize,
    pub patch_size_t: usize,
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub cross_attention_dim: usize,
    pub vae_scale_factors: Vec<usize>,
    pub pos_embed_max_pos: usize,
    pub base_height: usize,
    pub base_width: usize,
    pub gated_attn: bool,
    pub cross_attn_mod: bool,
    pub audio_in_channels: usize,
    pub audio_out_channels: Option<usize>,
    pub audio_patch_size: usize,
    pub audio_patch_size_t: usize,
    pub audio_num_attention_heads: usize,
    pub audio_attention_head_dim: usize,
    pub audio_cross_attention_dim: usize,
    pub audio_scale_factor: usize,
    pub audio_pos_embed_max_pos: usize,
    pub audio_sampling_rate: usize,
    pub audio_hop_length: usize,
    pub audio_gated_attn: bool,
    pub audio_cross_attn_mod: bool,
    pub num_layers: usize,
    pub activation_fn: String,
    pub qk_norm: String,
    pub norm_elementwise_affine: bool,
    pub norm_eps: f64,
    pub caption_channels: usize,
    pub attention_bias: bool,
    pub attention_out_bias: bool,
    pub rope_theta: f64,
    pub rope_double_precision: bool,
    pub causal_offset: i64,
    pub timestep_scale_multiplier: f64,
    pub cross_attn_timestep_scale_multiplier: f64,
    pub rope_type: String,
    pub use_prompt_embeddings: bool,
    pub perturbed_attn: bool,
    pub ff_bias: bool,
    pub audio_ff_bias: bool,
    pub use_prompt_adaln_single: bool,
    pub use_keyframes_abs_pos_embedding: bool,
}

impl Default for LTX2TransformerConfig {
    fn default() -> Self {
        Self {
            in_channels: 128,
            out_channels: Some(128),
            patch_size: 1,
            patch_size_t: 1,
            num_attention_heads: 32,
            attention_head_dim: 128,
            cross_attention_dim: 4096,
            vae_scale_factors: vec![8, 32, 32],
            pos_embed_max_pos: 20,
            base_height: 2048,
            base_width: 2048,
            gated_attn: false,
            cross_attn_mod: false,
            audio_in_channels: 128,
            audio_out_channels: Some(128),
            audio_patch_size: 1,
            audio_patch_size_t: 1,
            audio_num_attention_heads: 32,
            audio_attention_head_dim: 64,
            audio_cross_attention_dim: 2048,
            audio_scale_factor: 4,
            audio_pos_embed_max_pos: 20,
            audio_sampling_rate: 16000,
            audio_hop_length: 160,
            audio_gated_attn: false,
            audio_cross_attn_mod: false,
            num_layers: 48,
            activation_fn: "gelu-approximate".into(),
            qk_norm: "rms_norm_across_heads".into(),
            norm_elementwise_affine: false,
            norm_eps: 1e-6,
            caption_channels: 3840,
            attention_bias: true,
            attention_out_bias: true,
            rope_theta: 10000.0,
            rope_double_precision: true,
            causal_offset: 1,
            timestep_scale_multiplier: 1000.0,
            cross_attn_timestep_scale_multiplier: 1000.0,
            rope_type: "interleaved".into(),
            use_prompt_embeddings: true,
            perturbed_attn: false,
            ff_bias: true,
            audio_ff_bias: true,
            use_prompt_adaln_single: true,
            use_keyframes_abs_pos_embedding: false,
        }
    }
}

impl LTX2TransformerConfig {
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn audio_inner_dim(&self) -> usize {
        self.audio_num_attention_heads * self.audio_attention_head_dim
    }

    /// `out_channels or in_channels`.
    pub fn out_channels(&self) -> usize {
        self.out_channels
            .filter(|&c| c > 0)
            .unwrap_or(self.in_channels)
    }

    /// `audio_out_channels or audio_in_channels`.
    pub fn audio_out_channels(&self) -> usize {
        self.audio_out_channels
            .filter(|&c| c > 0)
            .unwrap_or(self.audio_in_channels)
    }

    /// `cross_attn_mod or audio_cross_attn_mod` (LTX-2.3).
    fn prompt_modulation(&self) -> bool {
        self.cross_attn_mod || self.audio_cross_attn_mod
    }

    /// A config from a stranger's checkpoint must fail here, by field, not deep in a forward.
    fn validate(&self) -> Result<()> {
        if self.qk_norm != "rms_norm_across_heads" {
            candle_core::bail!(
                "qk_norm {:?}: only \"rms_norm_across_heads\" is supported",
                self.qk_norm
            );
        }
        if self.activation_fn != "gelu-approximate" {
            candle_core::bail!(
                "activation_fn {:?}: only \"gelu-approximate\" is supported",
                self.activation_fn
            );
        }
        let rope_type = RopeType::from_name(&self.rope_type).map_err(candle_core::Error::Msg)?;
        let (dim, audio_dim) = (self.inner_dim(), self.audio_inner_dim());
        if dim == 0 || audio_dim == 0 || self.num_layers == 0 {
            candle_core::bail!(
                "num_attention_heads x attention_head_dim ({dim}), audio_num_attention_heads x audio_attention_head_dim ({audio_dim}) and num_layers must be positive"
            );
        }
        if self.vae_scale_factors.len() != 3 {
            candle_core::bail!(
                "vae_scale_factors must hold 3 factors (frames, height, width), got {:?}",
                self.vae_scale_factors
            );
        }
        let positive = [
            ("patch_size", self.patch_size),
            ("patch_size_t", self.patch_size_t),
            ("audio_patch_size_t", self.audio_patch_size_t),
            ("pos_embed_max_pos", self.pos_embed_max_pos),
            ("audio_pos_embed_max_pos", self.audio_pos_embed_max_pos),
            ("base_height", self.base_height),
            ("base_width", self.base_width),
            ("audio_sampling_rate", self.audio_sampling_rate),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            candle_core::bail!("{name} must be positive");
        }
        // The audio-video cross-attention RoPE has width `audio_cross_attention_dim` and rotates
        // projections of the audio attention's width.
        if self.audio_cross_attention_dim != audio_dim {
            candle_core::bail!(
                "audio_cross_attention_dim {} must equal audio_num_attention_heads x audio_attention_head_dim = {audio_dim}: the audio-video cross-attention RoPE has that width",
                self.audio_cross_attention_dim
            );
        }
        if self.use_prompt_embeddings {
            if self.cross_attention_dim != dim || self.audio_cross_attention_dim != audio_dim {
                candle_core::bail!(
                    "use_prompt_embeddings projects the prompt to the streams' widths ({dim}, {audio_dim}), so cross_attention_dim {} and audio_cross_attention_dim {} must equal them",
                    self.cross_attention_dim,
                    self.audio_cross_attention_dim
                );
            }
        } else if self.prompt_modulation() && self.cross_attention_dim != dim {
            candle_core::bail!(
                "cross_attn_mod modulates the prompt by a table of the video width {dim}, so cross_attention_dim {} must equal it",
                self.cross_attention_dim
            );
        }
        let even = [
            ("video", dim, self.num_attention_heads),
            ("audio", audio_dim, self.audio_num_attention_heads),
            (
                "audio-video cross",
                self.audio_cross_attention_dim,
                self.num_attention_heads,
            ),
            (
                "video-audio cross",
                self.audio_cross_attention_dim,
                self.audio_num_attention_heads,
            ),
        ];
        for (what, width, heads) in even {
            let split_ok = rope_type == RopeType::Interleaved || (width / 2).is_multiple_of(heads);
            if !width.is_multiple_of(2) || !split_ok {
                candle_core::bail!(
                    "the {what} RoPE of width {width} cannot be laid out as {:?} over {heads} heads",
                    self.rope_type
                );
            }
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            candle_core::bail!("rope_theta must be positive, got {}", self.rope_theta);
        }
        if self.timestep_scale_multiplier == 0.0 {
            candle_core::bail!("timestep_scale_multiplier must not be 0");
        }
        Ok(())
    }
}

/// diffusers' `RMSNorm` of the blocks: a learned scale only with `norm_elementwise_affine`.
struct BlockRmsNorm {
    weight: Option<Tensor>,
    eps: f64,
    /// The checkpoint name of `weight`.
    name: String,
}

impl BlockRmsNorm {
    fn new(dim: usize, eps: f64, affine: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: affine.then(|| vb.get(dim, "weight")).transpose()?,
            eps,
            name: format!("{}.weight", vb.prefix()),
        })
    }

    fn visit_weights(&mut self, f: &mut Visitor<'_>) -> std::result::Result<(), LoraError> {
        match &mut self.weight {
            Some(tensor) => f(Weight::Tensor {
                name: self.name.clone(),
                tensor,
            }),
            None => Ok(()),
        }
    }

    /// The norm in f32 (times the scale), then `* (1 + scale) + shift` where given; returns the
    /// dtype of `x`.
    fn forward(&self, x: &Tensor, shift_scale: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
        section("norm.modulate", x.device(), || self.norm(x, shift_scale))
    }

    fn norm(&self, x: &Tensor, shift_scale: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
        let (shift, scale) = shift_scale.unzip();
        let fused = crate::fused::modulated_norm(
            x,
            crate::fused::Norm::Rms,
            self.eps,
            crate::fused::Modulation {
                weight: self.weight.as_ref(),
                scale,
                shift,
                ..Default::default()
            },
        )?;
        if let Some(y) = fused {
            return Ok(y);
        }
        let x32 = x.to_dtype(DType::F32)?;
        let variance = x32.sqr()?.mean_keepdim(D::Minus1)?;
        let mut y = x32.broadcast_div(&(variance + self.eps)?.sqrt()?)?;
        if let Some(weight) = &self.weight {
            y = y.broadcast_mul(&weight.to_dtype(DType::F32)?)?;
        }
        if let (Some(shift), Some(scale)) = (shift, scale) {
            y = y.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)?;
        }
        y.to_dtype(x.dtype())
    }
}

/// `x * (1 + scale) + shift` in f32, in the dtype of `x`.
fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    section("modulate", x.device(), || {
        x.to_dtype(DType::F32)?
            .broadcast_mul(&(scale + 1.0)?)?
            .broadcast_add(shift)?
            .to_dtype(x.dtype())
    })
}

/// `x + y · gate`, timed as its own section of the profile.
fn gated(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    section("residual.gated", x.device(), || gated_residual(x, y, gate))
}

/// `get_mod_params`: `table[None, None] + temb.reshape(B, T, n, dim)`, unbound into `n` tensors
/// of `[B, T, dim]` in f32. `temb` is `[B, T, n * dim]`.
fn mod_params(table: &Tensor, temb: &Tensor) -> Result<Vec<Tensor>> {
    let (n, dim) = table.dims2()?;
    let (b, t, _) = temb.dims3()?;
    let values = temb
        .to_dtype(DType::F32)?
        .reshape((b, t, n, dim))?
        .broadcast_add(&table.to_dtype(DType::F32)?.reshape((1, 1, n, dim))?)?;
    (0..n).map(|i| values.narrow(2, i, 1)?.squeeze(2)).collect()
}

/// `LTX2AdaLayerNormSingle` (without additional conditions): the `Timesteps(256)` features
/// through `TimestepEmbedding`, and `linear(silu(embedded))` holding `num_mod_params` sets.
struct LTX2AdaLayerNormSingle {
    timestep_embedder: TimestepEmbedding,
    linear: Linear,
}

impl LTX2AdaLayerNormSingle {
    fn new(dim: usize, num_mod_params: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            timestep_embedder: TimestepEmbedding::new(
                256,
                dim,
                true,
                vb.pp("emb").pp("timestep_embedder"),
            )?,
            linear: linear(dim, num_mod_params * dim, true, vb.pp("linear"))?,
        })
    }

    fn visit_weights(&mut self, f: &mut Visitor<'_>) -> std::result::Result<(), LoraError> {
        self.timestep_embedder.visit_weights(f)?;
        f(Weight::Linear(&mut self.linear))
    }

    /// `timestep` of `batch · T` values; returns the modulation `[batch, T, n · dim]` and the
    /// embedded timestep `[batch, T, dim]`, in `dtype`.
    fn forward(&self, timestep: &Tensor, batch: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
        let features = timestep_features(&timestep.flatten_all()?, 256)?.to_dtype(dtype)?;
        let embedded = self.timestep_embedder.forward(&features)?;
        let params = linear_forward(&self.linear, &embedded.silu()?, None)?;
        let view = |t: Tensor| {
            let width = t.dim(1)?;
            t.reshape((batch, (), width))
        };
        Ok((view(params)?, view(embedded)?))
    }
}

/// `PixArtAlphaTextProjection` (`gelu_tanh`): `linear_2(gelu(linear_1(caption)))`.
struct PixArtAlphaTextProjection {
    linear_1: Linear,
    linear_2: Linear,
}

impl PixArtAlphaTextProjection {
    fn new(in_features: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear_1: linear(in_features, hidden, true, vb.pp("linear_1"))?,
            linear_2: linear(hidden, hidden, true, vb.pp("linear_2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = linear_forward(&self.linear_1, x, None)?.gelu()?;
        linear_forward(&self.linear_2, &h, None)
    }
}

/// Spatio-temporal guidance of one block's self-attention (`LTX2PerturbedAttnProcessor`):
/// `mask` `[B, 1, 1]` is 0 where the attention is replaced by its values, 1 where it runs.
pub(super) struct Perturbation<'a> {
    mask: &'a Tensor,
    all_perturbed: bool,
}

/// `LTX2Attention`: projections, RMS norm of q and k across the heads, RoPE of q and k (each its
/// own), attention, optional per-head gates, output projection. The text connectors' blocks use it
/// too.
pub(super) struct LTX2Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    to_gate_logits: Option<Linear>,
    heads: usize,
}

/// The arguments of one attention call besides its input.
#[derive(Default, Clone, Copy)]
pub(super) struct AttnArgs<'a> {
    pub(super) encoder_hidden_states: Option<&'a Tensor>,
    /// Additive bias broadcasting to `[B, heads, Lq, Lk]`.
    pub(super) attention_mask: Option<&'a Tensor>,
    pub(super) query_rotary_emb: Option<&'a RotaryEmb>,
    pub(super) key_rotary_emb: Option<&'a RotaryEmb>,
    /// Self-attention over a sequence split across ranks, of this many tokens in all: the
    /// all-to-all trades this rank's tokens for a share of the heads around the attention.
    pub(super) sequence: Option<(&'a SequenceParallel, usize)>,
}

impl LTX2Attention {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        query_dim: usize,
        heads: usize,
        dim_head: usize,
        cross_attention_dim: Option<usize>,
        bias: bool,
        out_bias: bool,
        gated: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let inner = heads * dim_head;
        let kv_dim = cross_attention_dim.unwrap_or(query_dim);
        Ok(Self {
            to_q: linear(query_dim, inner, bias, vb.pp("to_q"))?,
            to_k: linear(kv_dim, inner, bias, vb.pp("to_k"))?,
            to_v: linear(kv_dim, inner, bias, vb.pp("to_v"))?,
            to_out: linear(inner, query_dim, out_bias, vb.pp("to_out").pp(0))?,
            // The attention's norms keep their own eps (1e-6): the blocks never pass `norm_eps`.
            norm_q: RmsNorm::new(inner, 1e-6, vb.pp("norm_q"))?,
            norm_k: RmsNorm::new(inner, 1e-6, vb.pp("norm_k"))?,
            to_gate_logits: if gated {
                Some(linear(query_dim, heads, true, vb.pp("to_gate_logits"))?)
            } else {
                None
            },
            heads,
        })
    }

    fn visit_weights(&mut self, f: &mut Visitor<'_>) -> std::result::Result<(), LoraError> {
        for layer in [
            &mut self.to_q,
            &mut self.to_k,
            &mut self.to_v,
            &mut self.to_out,
        ] {
            f(Weight::Linear(layer))?;
        }
        if let Some(gate) = &mut self.to_gate_logits {
            f(Weight::Linear(gate))?;
        }
        self.norm_q.visit_weights(f)?;
        self.norm_k.visit_weights(f)
    }

    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, width) = x.dims3()?;
        x.reshape((b, l, self.heads, width / self.heads))
    }

    pub(super) fn forward(
        &self,
        x: &Tensor,
        args: AttnArgs<'_>,
        perturbation: Option<&Perturbation<'_>>,
    ) -> Result<Tensor> {
        let dev = x.device();
        let context = args.encoder_hidden_states.unwrap_or(x);
        let value = section("attn.qkv", dev, || {
            linear_forward(&self.to_v, context, None)
        })?;
        let hidden = if perturbation.is_some_and(|p| p.all_perturbed) {
            value
        } else {
            let (q, k) = section("attn.qkv", dev, || {
                Ok((
                    linear_forward(&self.to_q, x, None)?,
                    linear_forward(&self.to_k, context, None)?,
                ))
            })?;
            let (q, k) = section("attn.qk_norm_rope", dev, || match args.query_rotary_emb {
                Some(q_rope) => Ok((
                    q_rope.apply_normed(&q, &self.norm_q)?,
                    args.key_rotary_emb
                        .unwrap_or(q_rope)
                        .apply_normed(&k, &self.norm_k)?,
                )),
                None => Ok((self.norm_q.forward(&q)?, self.norm_k.forward(&k)?)),
            })?;
            let (mut q, mut k, mut v) = (
                self.split_heads(&q)?,
                self.split_heads(&k)?,
                self.split_heads(&value)?,
            );
            if let Some((sp, tokens)) = args.sequence {
                (q, k, v) = section("sequence.all_to_all", dev, || {
                    Ok((
                        sp.heads_to_sequence(&q, tokens)?,
                        sp.heads_to_sequence(&k, tokens)?,
                        sp.heads_to_sequence(&v, tokens)?,
                    ))
                })?;
            }
            let mut out = section("attn.core", dev, || match args.attention_mask {
                Some(bias) => {
                    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
                    attention_with_bias(&q, &k, &v, bias, scale)
                }
                None => attention(&q, &k, &v),
            })?;
            if let Some((sp, _)) = args.sequence {
                out = section("sequence.all_to_all", dev, || sp.sequence_to_heads(&out))?;
            }
            let out = out.flatten_from(2)?;
            match perturbation {
                // `torch.lerp(value, hidden, mask)`.
                Some(p) => {
                    let mask = p.mask.to_dtype(DType::F32)?;
                    let v32 = value.to_dtype(DType::F32)?;
                    (&v32 + (out.to_dtype(DType::F32)? - &v32)?.broadcast_mul(&mask)?)?
                        .to_dtype(out.dtype())?
                }
                None => out,
            }
        };
        let hidden = match &self.to_gate_logits {
            Some(gate) => {
                // `2 * sigmoid(logits)` per head: zero logits give gates of 1.
                let logits = linear_forward(gate, x, None)?.to_dtype(DType::F32)?;
                let gates = (candle_nn::ops::sigmoid(&logits)? * 2.0)?.unsqueeze(D::Minus1)?;
                let heads = self.split_heads(&hidden)?.to_dtype(DType::F32)?;
                heads
                    .broadcast_mul(&gates)?
                    .flatten_from(2)?
                    .to_dtype(hidden.dtype())?
            }
            None => hidden,
        };
        section("attn.out", dev, || {
            linear_forward(&self.to_out, &hidden, None)
        })
    }
}

/// Everything a block reads besides the two streams and its own weights.
struct BlockInputs<'a> {
    encoder_hidden_states: &'a Tensor,
    audio_encoder_hidden_states: &'a Tensor,
    temb: &'a Tensor,
    temb_audio: &'a Tensor,
    temb_ca_scale_shift: &'a Tensor,
    temb_ca_audio_scale_shift: &'a Tensor,
    temb_ca_gate: &'a Tensor,
    temb_ca_audio_gate: &'a Tensor,
    temb_prompt: Option<&'a Tensor>,
    temb_prompt_audio: Option<&'a Tensor>,
    video_rotary_emb: &'a RotaryEmb,
    audio_rotary_emb: &'a RotaryEmb,
    ca_video_rotary_emb: &'a RotaryEmb,
    /// The cross-attention tables of every video token, which video-to-audio attention reads as
    /// keys (`ca_video_rotary_emb` holds this rank's under sequence parallel).
    ca_video_key_rotary_emb: &'a RotaryEmb,
    ca_audio_rotary_emb: &'a RotaryEmb,
    /// This rank's sequence group and the video tokens in all, when the video is split.
    sequence: Option<(&'a SequenceParallel, usize)>,
    encoder_attention_mask: Option<&'a Tensor>,
    audio_encoder_attention_mask: Option<&'a Tensor>,
    /// The video self-attention's additive bias.
    self_attention_mask: Option<&'a Tensor>,
    use_a2v_cross_attention: bool,
    use_v2a_cross_attention: bool,
}

/// `LTX2VideoTransformerBlock`.
struct LTX2VideoTransformerBlock {
    norm1: BlockRmsNorm,
    audio_norm1: BlockRmsNorm,
    norm2: BlockRmsNorm,
    audio_norm2: BlockRmsNorm,
    audio_to_video_norm: BlockRmsNorm,
    video_to_audio_norm: BlockRmsNorm,
    norm3: BlockRmsNorm,
    audio_norm3: BlockRmsNorm,
    attn1: LTX2Attention,
    audio_attn1: LTX2Attention,
    attn2: LTX2Attention,
    audio_attn2: LTX2Attention,
    audio_to_video_attn: LTX2Attention,
    video_to_audio_attn: LTX2Attention,
    ff: FeedForward,
    audio_ff: FeedForward,
    scale_shift_table: Tensor,
    audio_scale_shift_table: Tensor,
    /// `prompt_scale_shift_table` and `audio_prompt_scale_shift_table` (`cross_attn_adaln`).
    prompt_scale_shift_tables: Option<(Tensor, Tensor)>,
    video_a2v_cross_attn_scale_shift_table: Tensor,
    audio_a2v_cross_attn_scale_shift_table: Tensor,
    video_cross_attn_adaln: bool,
    audio_cross_attn_adaln: bool,
    perturbed_attn: bool,
}

impl LTX2VideoTransformerBlock {
    fn new(cfg: &LTX2TransformerConfig, vb: VarBuilder) -> Result<Self> {
        let (dim, audio_dim) = (cfg.inner_dim(), cfg.audio_inner_dim());
        let (heads, head_dim) = (cfg.num_attention_heads, cfg.attention_head_dim);
        let (audio_heads, audio_head_dim) =
            (cfg.audio_num_attention_heads, cfg.audio_attention_head_dim);
        let (bias, out_bias) = (cfg.attention_bias, cfg.attention_out_bias);
        let (video_gated, audio_gated) = (cfg.gated_attn, cfg.audio_gated_attn);
        let attn = |q_dim, heads, head_dim, kv_dim, gated, name: &str| {
            LTX2Attention::new(
                q_dim,
                heads,
                head_dim,
                kv_dim,
                bias,
                out_bias,
                gated,
                vb.pp(name),
            )
        };
        let ff = |dim, bias, name: &str| {
            FeedForward::with_bias(dim, 4 * dim, dim, Activation::GeluTanh, bias, vb.pp(name))
        };
        let video_mod = if cfg.cross_attn_mod { 9 } else { 6 };
        let audio_mod = if cfg.audio_cross_attn_mod { 9 } else { 6 };
        let norm = |dim, name: &str| {
            BlockRmsNorm::new(dim, cfg.norm_eps, cfg.norm_elementwise_affine, vb.pp(name))
        };
        Ok(Self {
            norm1: norm(dim, "norm1")?,
            audio_norm1: norm(audio_dim, "audio_norm1")?,
            norm2: norm(dim, "norm2")?,
            audio_norm2: norm(audio_dim, "audio_norm2")?,
            audio_to_video_norm: norm(dim, "audio_to_video_norm")?,
            video_to_audio_norm: norm(audio_dim, "video_to_audio_norm")?,
            norm3: norm(dim, "norm3")?,
            audio_norm3: norm(audio_dim, "audio_norm3")?,
            attn1: attn(dim, heads, head_dim, None, video_gated, "attn1")?,
            audio_attn1: attn(
                audio_dim,
                audio_heads,
                audio_head_dim,
                None,
                audio_gated,
                "audio_attn1",
            )?,
            attn2: attn(
                dim,
                heads,
                head_dim,
                Some(cfg.cross_attention_dim),
                video_gated,
                "attn2",
            )?,
            audio_attn2: attn(
                audio_dim,
                audio_heads,
                audio_head_dim,
                Some(cfg.audio_cross_attention_dim),
                audio_gated,
                "audio_attn2",
            )?,
            audio_to_video_attn: attn(
                dim,
                audio_heads,
                audio_head_dim,
                Some(audio_dim),
                video_gated,
                "audio_to_video_attn",
            )?,
            video_to_audio_attn: attn(
                audio_dim,
                audio_heads,
                audio_head_dim,
                Some(dim),
                audio_gated,
                "video_to_audio_attn",
            )?,
            ff: ff(dim, cfg.ff_bias, "ff")?,
            audio_ff: ff(audio_dim, cfg.audio_ff_bias, "audio_ff")?,
            scale_shift_table: vb.get((video_mod, dim), "scale_shift_table")?,
            audio_scale_shift_table: vb.get((audio_mod, audio_dim), "audio_scale_shift_table")?,
            prompt_scale_shift_tables: if cfg.prompt_modulation() {
                Some((
                    vb.get((2, dim), "prompt_scale_shift_table")?,
                    vb.get((2, audio_dim), "audio_prompt_scale_shift_table")?,
                ))
            } else {
                None
            },
            video_a2v_cross_attn_scale_shift_table: vb
                .get((5, dim), "video_a2v_cross_attn_scale_shift_table")?,
            audio_a2v_cross_attn_scale_shift_table: vb
                .get((5, audio_dim), "audio_a2v_cross_attn_scale_shift_table")?,
            video_cross_attn_adaln: cfg.cross_attn_mod,
            audio_cross_attn_adaln: cfg.audio_cross_attn_mod,
            perturbed_attn: cfg.perturbed_attn,
        })
    }

    fn visit_weights(&mut self, f: &mut Visitor<'_>) -> std::result::Result<(), LoraError> {
        for attn in [
            &mut self.attn1,
            &mut self.audio_attn1,
            &mut self.attn2,
            &mut self.audio_attn2,
            &mut self.audio_to_video_attn,
            &mut self.video_to_audio_attn,
        ] {
            attn.visit_weights(f)?;
        }
        for norm in [
            &mut self.norm1,
            &mut self.audio_norm1,
            &mut self.norm2,
            &mut self.audio_norm2,
            &mut self.audio_to_video_norm,
            &mut self.video_to_audio_norm,
            &mut self.norm3,
            &mut self.audio_norm3,
        ] {
            norm.visit_weights(f)?;
        }
        self.ff.visit_weights(f)?;
        self.audio_ff.visit_weights(f)
    }

    /// The prompt's `(shift, scale)` for the text cross-attention keys and values: the per-layer
    /// table plus the prompt AdaLN of `sigma` where the model has one.
    fn prompt_kv_params(table: &Tensor, temb_prompt: Option<&Tensor>) -> Result<Vec<Tensor>> {
        match temb_prompt {
            Some(temb) => mod_params(table, temb),
            None => {
                let table = table.to_dtype(DType::F32)?;
                (0..2)
                    .map(|i| table.narrow(0, i, 1)?.unsqueeze(0))
                    .collect()
            }
        }
    }

    fn forward(
        &self,
        hidden_states: &Tensor,
        audio_hidden_states: &Tensor,
        inputs: &BlockInputs<'_>,
        perturbation: Option<&Perturbation<'_>>,
    ) -> Result<(Tensor, Tensor)> {
        let mut x = hidden_states.clone();
        let mut ax = audio_hidden_states.clone();
        // Only the perturbed processor reads the guidance mask.
        let perturbation = perturbation.filter(|_| self.perturbed_attn);

        // 1. Self-attention of each stream.
        let video_ada = mod_params(&self.scale_shift_table, inputs.temb)?;
        let [
            shift_msa,
            scale_msa,
            gate_msa,
            shift_mlp,
            scale_mlp,
            gate_mlp,
        ] = &video_ada[..6]
        else {
            unreachable!("six video modulation parameters")
        };
        let norm = self.norm1.forward(&x, Some((shift_msa, scale_msa)))?;
        let self_args = |emb| AttnArgs {
            query_rotary_emb: Some(emb),
            ..Default::default()
        };
        let video_self_args = AttnArgs {
            attention_mask: inputs.self_attention_mask,
            sequence: inputs.sequence,
            ..self_args(inputs.video_rotary_emb)
        };
        let attn = self.attn1.forward(&norm, video_self_args, perturbation)?;
        x = gated(&x, &attn, gate_msa)?;

        let audio_ada = mod_params(&self.audio_scale_shift_table, inputs.temb_audio)?;
        let [
            audio_shift_msa,
            audio_scale_msa,
            audio_gate_msa,
            audio_shift_mlp,
            audio_scale_mlp,
            audio_gate_mlp,
        ] = &audio_ada[..6]
        else {
            unreachable!("six audio modulation parameters")
        };
        let norm = self
            .audio_norm1
            .forward(&ax, Some((audio_shift_msa, audio_scale_msa)))?;
        let attn =
            self.audio_attn1
                .forward(&norm, self_args(inputs.audio_rotary_emb), perturbation)?;
        ax = gated(&ax, &attn, audio_gate_msa)?;

        // 2. Text cross-attention of each stream, the prompt modulated where the model says so.
        let (mut context, mut audio_context) = (
            inputs.encoder_hidden_states.clone(),
            inputs.audio_encoder_hidden_states.clone(),
        );
        if let Some((table, audio_table)) = &self.prompt_scale_shift_tables {
            let kv = Self::prompt_kv_params(table, inputs.temb_prompt)?;
            context = modulate(&context, &kv[0], &kv[1])?;
            let kv = Self::prompt_kv_params(audio_table, inputs.temb_prompt_audio)?;
            audio_context = modulate(&audio_context, &kv[0], &kv[1])?;
        }
        let text_q = self.video_cross_attn_adaln.then(|| &video_ada[6..9]);
        let norm = self.norm2.forward(&x, text_q.map(|p| (&p[0], &p[1])))?;
        let attn = self.attn2.forward(
            &norm,
            AttnArgs {
                encoder_hidden_states: Some(&context),
                attention_mask: inputs.encoder_attention_mask,
                ..Default::default()
            },
            None,
        )?;
        x = match text_q {
            Some(p) => gated(&x, &attn, &p[2])?,
            None => (&x + attn)?,
        };

        let audio_text_q = self.audio_cross_attn_adaln.then(|| &audio_ada[6..9]);
        let norm = self
            .audio_norm2
            .forward(&ax, audio_text_q.map(|p| (&p[0], &p[1])))?;
        let attn = self.audio_attn2.forward(
            &norm,
            AttnArgs {
                encoder_hidden_states: Some(&audio_context),
                attention_mask: inputs.audio_encoder_attention_mask,
                ..Default::default()
            },
            None,
        )?;
        ax = match audio_text_q {
            Some(p) => gated(&ax, &attn, &p[2])?,
            None => (&ax + attn)?,
        };

        // 3. Audio-to-video and video-to-audio cross-attention.
        if inputs.use_a2v_cross_attention || inputs.use_v2a_cross_attention {
            let table = &self.video_a2v_cross_attn_scale_shift_table;
            let video_ca = mod_params(&table.narrow(0, 0, 4)?, inputs.temb_ca_scale_shift)?;
            let a2v_gate = mod_params(&table.narrow(0, 4, 1)?, inputs.temb_ca_gate)?;
            let table = &self.audio_a2v_cross_attn_scale_shift_table;
            let audio_ca = mod_params(&table.narrow(0, 0, 4)?, inputs.temb_ca_audio_scale_shift)?;
            let v2a_gate = mod_params(&table.narrow(0, 4, 1)?, inputs.temb_ca_audio_gate)?;
            // Each list: a2v scale, a2v shift, v2a scale, v2a shift. Both streams are normed
            // (and modulated) from their values before either attention adds to them.
            let (x_in, ax_in) = (x.clone(), ax.clone());
            let modulated = |norm: &BlockRmsNorm, x: &Tensor, params: &[Tensor], first: usize| {
                norm.forward(x, Some((&params[first + 1], &params[first])))
            };

            if inputs.use_a2v_cross_attention {
                let video_norm_a2v = modulated(&self.audio_to_video_norm, &x_in, &video_ca, 0)?;
                let audio_norm_a2v = modulated(&self.video_to_audio_norm, &ax_in, &audio_ca, 0)?;
                let attn = self.audio_to_video_attn.forward(
                    &video_norm_a2v,
                    AttnArgs {
                        encoder_hidden_states: Some(&audio_norm_a2v),
                        query_rotary_emb: Some(inputs.ca_video_rotary_emb),
                        key_rotary_emb: Some(inputs.ca_audio_rotary_emb),
                        ..Default::default()
                    },
                    None,
                )?;
                x = gated(&x, &attn, &a2v_gate[0])?;
            }
            if inputs.use_v2a_cross_attention {
                let mut video_norm_v2a = modulated(&self.audio_to_video_norm, &x_in, &video_ca, 2)?;
                // The audio attends to every video token: a split video is gathered first.
                if let Some((sp, tokens)) = inputs.sequence {
                    video_norm_v2a = section("sequence.gather", x.device(), || {
                        sp.gather(&video_norm_v2a, tokens)
                    })?;
                }
                let audio_norm_v2a = modulated(&self.video_to_audio_norm, &ax_in, &audio_ca, 2)?;
                let attn = self.video_to_audio_attn.forward(
                    &audio_norm_v2a,
                    AttnArgs {
                        encoder_hidden_states: Some(&video_norm_v2a),
                        query_rotary_emb: Some(inputs.ca_audio_rotary_emb),
                        key_rotary_emb: Some(inputs.ca_video_key_rotary_emb),
                        ..Default::default()
                    },
                    None,
                )?;
                ax = gated(&ax, &attn, &v2a_gate[0])?;
            }
        }

        // 4. Feed-forwards.
        let norm = self.norm3.forward(&x, Some((shift_mlp, scale_mlp)))?;
        x = gated(&x, &self.ff.forward(&norm)?, gate_mlp)?;
        let norm = self
            .audio_norm3
            .forward(&ax, Some((audio_shift_mlp, audio_scale_mlp)))?;
        ax = gated(&ax, &self.audio_ff.forward(&norm)?, audio_gate_mlp)?;
        Ok((x, ax))
    }
}

/// Where the tokens of a stream sit: the latent grid the pipeline's default path derives the
/// coordinates from, or the coordinates themselves (`video_coords` / `audio_coords`).
#[derive(Debug, Clone)]
pub enum Positions {
    Video {
        num_frames: usize,
        height: usize,
        width: usize,
        fps: f32,
    },
    Audio {
        num_frames: usize,
    },
    Coords(Coords),
}

/// The arguments of [`LTX2VideoTransformer3DModel::forward`], named as the reference's.
pub struct LTX2TransformerInputs<'a> {
    /// `[B, video tokens, in_channels]`, packed latents.
    pub hidden_states: &'a Tensor,
    /// `[B, audio tokens, audio_in_channels]`.
    pub audio_hidden_states: &'a Tensor,
    /// `[B, text tokens, caption_channels]` (or `cross_attention_dim` without caption projection).
    pub encoder_hidden_states: &'a Tensor,
    pub audio_encoder_hidden_states: &'a Tensor,
    /// `[B]` or per video token `[B, video tokens]`, already scaled (`sigma · 1000`).
    pub timestep: &'a Tensor,
    /// `[B]` or `[B, audio tokens]`; `timestep` when absent.
    pub audio_timestep: Option<&'a Tensor>,
    /// `[B]`: the prompt AdaLN's input (LTX-2.3) and the cross timestep.
    pub sigma: Option<&'a Tensor>,
    /// `[B]`; `sigma` when absent.
    pub audio_sigma: Option<&'a Tensor>,
    /// `[B, text tokens]` multiplicative (1 keep, 0 pad), or an additive `[B, 1 or Lq, text]`.
    pub encoder_attention_mask: Option<&'a Tensor>,
    pub audio_encoder_attention_mask: Option<&'a Tensor>,
    /// `[B, video tokens, video tokens]` multiplicative (1 full attention, 0 masked, values
    /// between weaken it): the video self-attention's mask (IC-LoRA reference tokens).
    pub video_self_attention_mask: Option<&'a Tensor>,
    /// [`Positions::Video`] or video coordinates `[B, 3, tokens, 2]`.
    pub video_positions: Positions,
    /// [`Positions::Audio`] or audio coordinates `[B, 1, tokens, 2]`.
    pub audio_positions: Positions,
    /// Turns the audio-video cross-attention off in every block (modality guidance).
    pub isolate_modalities: bool,
    /// Blocks whose self-attention spatio-temporal guidance shortcuts (with `perturbed_attn`).
    pub spatio_temporal_guidance_blocks: Vec<usize>,
    /// `[B]` or `[B, 1, 1]`: 0 where the guidance perturbs a sample; all perturbed when absent.
    pub perturbation_mask: Option<&'a Tensor>,
    /// Modulate the cross-modal attention by the other stream's sigma (LTX-2.3).
    pub use_cross_timestep: bool,
    /// `[B, video tokens, 1]`: non-zero on tokens that get `keyframes_abs_pos_embedding`.
    pub video_keyframes_mask: Option<&'a Tensor>,
}

impl<'a> LTX2TransformerInputs<'a> {
    /// The inputs from tensors named as the reference's `forward` arguments (the `model forward`
    /// contract): the integers `num_frames`, `height`, `width`, `audio_num_frames`, the float `fps`
    /// (24 when absent) and the flags `use_cross_timestep`, `isolate_modalities` as one-element
    /// tensors of any numeric dtype, `spatio_temporal_guidance_blocks` as a list of indices;
    /// `video_coords` / `audio_coords` replace the grid sizes.
    pub fn from_named(tensors: &'a HashMap<String, Tensor>) -> Result<Self> {
        let required = |name: &str| {
            tensors.get(name).ok_or_else(|| {
                candle_core::Error::msg(format!(
                    "missing input tensor `{name}` (LTX2VideoTransformer3DModel)"
                ))
            })
        };
        let scalar = |name: &str| -> Result<Option<f64>> {
            let Some(t) = tensors.get(name) else {
                return Ok(None);
            };
            match t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?[..] {
                [v] => Ok(Some(v)),
                _ => candle_core::bail!(
                    "input `{name}` must hold one value, got shape {:?}",
                    t.dims()
                ),
            }
        };
        let count = |name: &str| -> Result<usize> {
            match scalar(name)? {
                Some(v) if v >= 0.0 && v.fract() == 0.0 => Ok(v as usize),
                Some(v) => candle_core::bail!("input `{name}` must be a count, got {v}"),
                None => candle_core::bail!(
                    "missing input tensor `{name}` (LTX2VideoTransformer3DModel; or give the coordinates)"
                ),
            }
        };
        let flag =
            |name: &str| Ok::<_, candle_core::Error>(scalar(name)?.is_some_and(|v| v != 0.0));
        let video_positions = match tensors.get("video_coords") {
            Some(c) => Positions::Coords(Coords::from_tensor(c, "video_coords")?),
            None => Positions::Video {
                num_frames: count("num_frames")?,
                height: count("height")?,
                width: count("width")?,
                fps: scalar("fps")?.unwrap_or(24.0) as f32,
            },
        };
        let audio_positions = match tensors.get("audio_coords") {
            Some(c) => Positions::Coords(Coords::from_tensor(c, "audio_coords")?),
            None => Positions::Audio {
                num_frames: count("audio_num_frames")?,
            },
        };
        let spatio_temporal_guidance_blocks = match tensors.get("spatio_temporal_guidance_blocks") {
            Some(t) => t
                .flatten_all()?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?
                .into_iter()
                .map(|v| v as usize)
                .collect(),
            None => Vec::new(),
        };
        Ok(Self {
            hidden_states: required("hidden_states")?,
            audio_hidden_states: required("audio_hidden_states")?,
            encoder_hidden_states: required("encoder_hidden_states")?,
            audio_encoder_hidden_states: required("audio_encoder_hidden_states")?,
            timestep: required("timestep")?,
            audio_timestep: tensors.get("audio_timestep"),
            sigma: tensors.get("sigma"),
            audio_sigma: tensors.get("audio_sigma"),
            encoder_attention_mask: tensors.get("encoder_attention_mask"),
            audio_encoder_attention_mask: tensors.get("audio_encoder_attention_mask"),
            video_self_attention_mask: tensors.get("video_self_attention_mask"),
            video_positions,
            audio_positions,
            isolate_modalities: flag("isolate_modalities")?,
            spatio_temporal_guidance_blocks,
            perturbation_mask: tensors.get("perturbation_mask"),
            use_cross_timestep: flag("use_cross_timestep")?,
            video_keyframes_mask: tensors.get("video_keyframes_mask"),
        })
    }
}

/// The LTX-2 audio-video diffusion transformer.
pub struct LTX2VideoTransformer3DModel {
    config: LTX2TransformerConfig,
    proj_in: Linear,
    audio_proj_in: Linear,
    keyframes_abs_pos_embedding: Option<Tensor>,
    caption_projection: Option<PixArtAlphaTextProjection>,
    audio_caption_projection: Option<PixArtAlphaTextProjection>,
    time_embed: LTX2AdaLayerNormSingle,
    audio_time_embed: LTX2AdaLayerNormSingle,
    av_cross_attn_video_scale_shift: LTX2AdaLayerNormSingle,
    av_cross_attn_audio_scale_shift: LTX2AdaLayerNormSingle,
    av_cross_attn_video_a2v_gate: LTX2AdaLayerNormSingle,
    av_cross_attn_audio_v2a_gate: LTX2AdaLayerNormSingle,
    scale_shift_table: Tensor,
    audio_scale_shift_table: Tensor,
    /// `prompt_adaln` and `audio_prompt_adaln` (LTX-2.3 with `use_prompt_adaln_single`).
    prompt_adaln: Option<(LTX2AdaLayerNormSingle, LTX2AdaLayerNormSingle)>,
    rope: LTX2AudioVideoRotaryPosEmbed,
    audio_rope: LTX2AudioVideoRotaryPosEmbed,
    cross_attn_rope: LTX2AudioVideoRotaryPosEmbed,
    cross_attn_audio_rope: LTX2AudioVideoRotaryPosEmbed,
    transformer_blocks: Vec<LTX2VideoTransformerBlock>,
    norm_out: LayerNorm,
    proj_out: Linear,
    audio_norm_out: LayerNorm,
    audio_proj_out: Linear,
    dtype: DType,
    lora: LoraState,
    /// This rank's sequence group when one generation is split across cards.
    sequence: Option<Arc<SequenceParallel>>,
}

impl LTX2VideoTransformer3DModel {
    pub fn new(cfg: &LTX2TransformerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (dim, audio_dim) = (cfg.inner_dim(), cfg.audio_inner_dim());
        let rope_type = RopeType::from_name(&cfg.rope_type).map_err(candle_core::Error::Msg)?;
        let ada = |dim, n, name: &str| LTX2AdaLayerNormSingle::new(dim, n, vb.pp(name));
        let rope = |dim, max_positions, scale_factors, heads, patch: (usize, usize)| {
            LTX2AudioVideoRotaryPosEmbed {
                dim,
                patch_size: patch.0,
                patch_size_t: patch.1,
                max_positions,
                sampling_rate: cfg.audio_sampling_rate,
                hop_length: cfg.audio_hop_length,
                scale_factors,
                theta: cfg.rope_theta,
                causal_offset: cfg.causal_offset,
                double_precision: cfg.rope_double_precision,
                rope_type,
                num_attention_heads: heads,
            }
        };
        let video_patch = (cfg.patch_size, cfg.patch_size_t);
        let audio_patch = (cfg.audio_patch_size, cfg.audio_patch_size_t);
        let cross_max = cfg.pos_embed_max_pos.max(cfg.audio_pos_embed_max_pos);
        let caption = |hidden, name: &str| {
            cfg.use_prompt_embeddings
                .then(|| PixArtAlphaTextProjection::new(cfg.caption_channels, hidden, vb.pp(name)))
                .transpose()
        };
        Ok(Self {
            proj_in: linear(cfg.in_channels, dim, true, vb.pp("proj_in"))?,
            audio_proj_in: linear(
                cfg.audio_in_channels,
                audio_dim,
                true,
                vb.pp("audio_proj_in"),
            )?,
            keyframes_abs_pos_embedding: cfg
                .use_keyframes_abs_pos_embedding
                .then(|| vb.get((1, dim), "keyframes_abs_pos_embedding"))
                .transpose()?,
            caption_projection: caption(dim, "caption_projection")?,
            audio_caption_projection: caption(audio_dim, "audio_caption_projection")?,
            time_embed: ada(dim, if cfg.cross_attn_mod { 9 } else { 6 }, "time_embed")?,
            audio_time_embed: ada(
                audio_dim,
                if cfg.audio_cross_attn_mod { 9 } else { 6 },
                "audio_time_embed",
            )?,
            av_cross_attn_video_scale_shift: ada(dim, 4, "av_cross_attn_video_scale_shift")?,
            av_cross_attn_audio_scale_shift: ada(audio_dim, 4, "av_cross_attn_audio_scale_shift")?,
            av_cross_attn_video_a2v_gate: ada(dim, 1, "av_cross_attn_video_a2v_gate")?,
            av_cross_attn_audio_v2a_gate: ada(audio_dim, 1, "av_cross_attn_audio_v2a_gate")?,
            scale_shift_table: vb.get((2, dim), "scale_shift_table")?,
            audio_scale_shift_table: vb.get((2, audio_dim), "audio_scale_shift_table")?,
            prompt_adaln: if cfg.prompt_modulation() && cfg.use_prompt_adaln_single {
                Some((
                    ada(dim, 2, "prompt_adaln")?,
                    ada(audio_dim, 2, "audio_prompt_adaln")?,
                ))
            } else {
                None
            },
            rope: rope(
                dim,
                vec![cfg.pos_embed_max_pos, cfg.base_height, cfg.base_width],
                cfg.vae_scale_factors.clone(),
                cfg.num_attention_heads,
                video_patch,
            ),
            audio_rope: rope(
                audio_dim,
                vec![cfg.audio_pos_embed_max_pos],
                vec![cfg.audio_scale_factor],
                cfg.audio_num_attention_heads,
                audio_patch,
            ),
            // The cross-attention embeddings see only the time axis; their scale factors are the
            // reference's defaults, unused by their tables.
            cross_attn_rope: rope(
                cfg.audio_cross_attention_dim,
                vec![cross_max, cfg.base_height, cfg.base_width],
                vec![8, 32, 32],
                cfg.num_attention_heads,
                video_patch,
            ),
            cross_attn_audio_rope: rope(
                cfg.audio_cross_attention_dim,
                vec![cross_max],
                vec![8, 32, 32],
                cfg.audio_num_attention_heads,
                audio_patch,
            ),
            transformer_blocks: (0..cfg.num_layers)
                .map(|i| LTX2VideoTransformerBlock::new(cfg, vb.pp("transformer_blocks").pp(i)))
                .collect::<Result<_>>()?,
            norm_out: LayerNorm::new(dim, 1e-6, false, vb.pp("norm_out"))?,
            proj_out: linear(dim, cfg.out_channels(), true, vb.pp("proj_out"))?,
            audio_norm_out: LayerNorm::new(audio_dim, 1e-6, false, vb.pp("audio_norm_out"))?,
            audio_proj_out: linear(
                audio_dim,
                cfg.audio_out_channels(),
                true,
                vb.pp("audio_proj_out"),
            )?,
            dtype: vb.dtype(),
            config: cfg.clone(),
            lora: LoraState::default(),
            sequence: None,
        })
    }

    /// Reads a `transformer` folder: `config.json` and the memory-mapped safetensors (one file or
    /// shards with an index), which stay mapped for LoRAs to restore the weights they change; or
    /// the transformer of an LTX-2 checkpoint (`ltx-2-19b-dev.safetensors`; see
    /// [`crate::loader::single_file`]).
    pub fn load(path: &Path, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        let builder = single_file::Builder {
            layout: OriginalLayout::Ltx2Transformer,
            infer: |_| Ok(LTX2TransformerConfig::default()),
            check: |_| Ok(()),
            build: Self::new,
        };
        let (mut model, checkpoint) = single_file::load_model(path, builder, dtype, device)?;
        if let Some(checkpoint) = checkpoint {
            model.lora = LoraState::from_checkpoint(checkpoint);
        }
        Ok(model)
    }

    pub fn config(&self) -> &LTX2TransformerConfig {
        &self.config
    }

    /// The dtype of the activations (the dtype the model was loaded in).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The video RoPE (its `prepare_video_coords` gives the pipeline's coordinates).
    pub fn rope(&self) -> &LTX2AudioVideoRotaryPosEmbed {
        &self.rope
    }

    /// The audio RoPE (its `prepare_audio_coords` gives the pipeline's coordinates).
    pub fn audio_rope(&self) -> &LTX2AudioVideoRotaryPosEmbed {
        &self.audio_rope
    }

    /// The coordinates of a stream's `tokens` for a batch of `batch`.
    fn coords(
        &self,
        positions: &Positions,
        batch: usize,
        tokens: usize,
        stream: &str,
    ) -> Result<Coords> {
        let coords = match positions {
            Positions::Video {
                num_frames,
                height,
                width,
                fps,
            } => {
                let coords =
                    self.rope
                        .prepare_video_coords(batch, *num_frames, *height, *width, *fps);
                if coords.tokens != tokens {
                    candle_core::bail!(
                        "{stream} has {tokens} tokens, but num_frames x height x width = {num_frames} x {height} x {width} makes {} patches (patch_size {}, patch_size_t {})",
                        coords.tokens,
                        self.config.patch_size,
                        self.config.patch_size_t
                    );
                }
                coords
            }
            Positions::Audio { num_frames } => {
                let coords = self.audio_rope.prepare_audio_coords(batch, *num_frames);
                if coords.tokens != tokens {
                    candle_core::bail!(
                        "{stream} has {tokens} tokens, but audio_num_frames = {num_frames} makes {} patches (audio_patch_size_t {})",
                        coords.tokens,
                        self.config.audio_patch_size_t
                    );
                }
                coords
            }
            Positions::Coords(coords) => {
                if coords.tokens != tokens || coords.batch != batch {
                    candle_core::bail!(
                        "{stream} has shape [{batch}, {tokens}, ..] but its coordinates cover batch {} and {} tokens",
                        coords.batch,
                        coords.tokens
                    );
                }
                coords.clone()
            }
        };
        Ok(coords)
    }

    /// A text mask as the additive bias of the attention: a `[B, L]` 0/1 mask becomes
    /// `(1 - mask) · -10000` `[B, 1, 1, L]`, or none where it keeps every token (the connectors'
    /// masks with registers), so the attention stays on the fused path; a 3-D mask is taken as
    /// that bias already.
    fn attention_bias(
        mask: &Tensor,
        batch: usize,
        text: usize,
        name: &str,
    ) -> Result<Option<Tensor>> {
        match *mask.dims() {
            [b, l] if b == batch && l == text => {
                let keep = mask.to_dtype(DType::F32)?;
                if keep
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .all(|&v| v == 1.0)
                {
                    return Ok(None);
                }
                let bias = ((keep.ones_like()? - keep)? * -10000.0)?;
                Ok(Some(bias.reshape((batch, 1, 1, text))?))
            }
            [b, q, l] if b == batch && l == text => {
                Ok(Some(mask.to_dtype(DType::F32)?.reshape((b, 1, q, l))?))
            }
            _ => candle_core::bail!(
                "{name} must have shape [{batch}, {text}] (1 keep, 0 pad) or an additive [{batch}, queries, {text}], got {:?}",
                mask.dims()
            ),
        }
    }

    /// Checks a timestep-like input holds `batch · T` values with `T` 1 or `tokens`.
    fn check_timestep(t: &Tensor, batch: usize, tokens: usize, name: &str) -> Result<()> {
        let n = t.elem_count();
        if t.dims().first() != Some(&batch) || (n != batch && n != batch * tokens) {
            candle_core::bail!(
                "{name} must have shape [{batch}] or one value per token [{batch}, {tokens}], got {:?}",
                t.dims()
            );
        }
        Ok(())
    }

    /// The reference's `forward`: the predictions for the video tokens (`[B, video tokens,
    /// out_channels]`) and the audio tokens (`[B, audio tokens, audio_out_channels]`), in the
    /// model's dtype.
    pub fn forward(&self, inputs: &LTX2TransformerInputs<'_>) -> Result<(Tensor, Tensor)> {
        let cfg = &self.config;
        let dtype = self.dtype;
        let shape3 = |t: &Tensor, name: &str, width: usize, what: &str| match *t.dims() {
            [b, l, w] if w == width => Ok((b, l)),
            _ => candle_core::bail!(
                "{name} must have shape [batch, tokens, {width}] ({what}), got {:?}",
                t.dims()
            ),
        };
        let (batch, tokens) = shape3(
            inputs.hidden_states,
            "hidden_states",
            cfg.in_channels,
            "in_channels",
        )?;
        let (audio_batch, audio_tokens) = shape3(
            inputs.audio_hidden_states,
            "audio_hidden_states",
            cfg.audio_in_channels,
            "audio_in_channels",
        )?;
        let (text_width, audio_text_width) = if cfg.use_prompt_embeddings {
            (cfg.caption_channels, cfg.caption_channels)
        } else {
            (cfg.cross_attention_dim, cfg.audio_cross_attention_dim)
        };
        let (text_batch, text) = shape3(
            inputs.encoder_hidden_states,
            "encoder_hidden_states",
            text_width,
            "caption_channels, or cross_attention_dim without caption projection",
        )?;
        let (audio_text_batch, audio_text) = shape3(
            inputs.audio_encoder_hidden_states,
            "audio_encoder_hidden_states",
            audio_text_width,
            "caption_channels, or audio_cross_attention_dim without caption projection",
        )?;
        if [audio_batch, text_batch, audio_text_batch]
            .iter()
            .any(|&b| b != batch)
        {
            candle_core::bail!(
                "hidden_states, audio_hidden_states, encoder_hidden_states and audio_encoder_hidden_states must share one batch size, got {batch}, {audio_batch}, {text_batch}, {audio_text_batch}"
            );
        }
        let timestep = inputs.timestep;
        let audio_timestep = inputs.audio_timestep.unwrap_or(timestep);
        Self::check_timestep(timestep, batch, tokens, "timestep")?;
        Self::check_timestep(audio_timestep, batch, audio_tokens, "audio_timestep")?;
        let sigma = inputs.sigma;
        let audio_sigma = inputs.audio_sigma.or(sigma);
        for (t, name) in [(sigma, "sigma"), (audio_sigma, "audio_sigma")] {
            if let Some(t) = t {
                Self::check_timestep(t, batch, 1, name)?;
            }
        }
        let needs_sigma = |why: &str| -> Result<(&Tensor, &Tensor)> {
            match (sigma, audio_sigma) {
                (Some(s), Some(a)) => Ok((s, a)),
                _ => candle_core::bail!("sigma is required: {why}"),
            }
        };

        let encoder_attention_mask = inputs
            .encoder_attention_mask
            .map(|m| Self::attention_bias(m, batch, text, "encoder_attention_mask"))
            .transpose()?
            .flatten();
        let audio_encoder_attention_mask = inputs
            .audio_encoder_attention_mask
            .map(|m| Self::attention_bias(m, batch, audio_text, "audio_encoder_attention_mask"))
            .transpose()?
            .flatten();
        // `(1 - mask) · -10000`, shape kept: `[B, 1, Lv, Lv]` against the heads.
        let video_self_attention_mask = match inputs.video_self_attention_mask {
            Some(mask) if mask.dims() == [batch, tokens, tokens] => {
                let keep = mask.to_dtype(DType::F32)?;
                Some(((keep.ones_like()? - keep)? * -10000.0)?.unsqueeze(1)?)
            }
            Some(mask) => candle_core::bail!(
                "video_self_attention_mask must have shape [{batch}, {tokens}, {tokens}], got {:?}",
                mask.dims()
            ),
            None => None,
        };

        // 1. RoPE of each stream and of the audio-video cross-attention (time axis only).
        let device = inputs.hidden_states.device();
        let video_coords = self.coords(&inputs.video_positions, batch, tokens, "hidden_states")?;
        let audio_coords = self.coords(
            &inputs.audio_positions,
            batch,
            audio_tokens,
            "audio_hidden_states",
        )?;
        if video_coords.axes != 3 || audio_coords.axes != 1 {
            candle_core::bail!(
                "video_coords must have 3 axes and audio_coords 1, got {} and {}",
                video_coords.axes,
                audio_coords.axes
            );
        }
        let (video_rotary_emb, audio_rotary_emb, ca_video_rotary_emb, ca_audio_rotary_emb) =
            section("rope.tables", device, || {
                Ok((
                    self.rope.forward(&video_coords, device)?,
                    self.audio_rope.forward(&audio_coords, device)?,
                    self.cross_attn_rope
                        .forward(&video_coords.leading_axes(1), device)?,
                    self.cross_attn_audio_rope
                        .forward(&audio_coords.leading_axes(1), device)?,
                ))
            })?;

        // Under sequence parallel this rank keeps its share of the video tokens, of their tables
        // and of anything given per token; video-to-audio attention keeps every token's keys.
        let split = self.sequence.as_deref().map(|sp| (sp, tokens));
        let local = |t: Tensor| -> Result<Tensor> {
            match split {
                Some((sp, _)) if t.rank() >= 2 && t.dim(1)? == tokens => sp.shard(&t, 1),
                _ => Ok(t),
            }
        };
        let ca_video_key_rotary_emb = ca_video_rotary_emb.clone();
        let (video_rotary_emb, ca_video_rotary_emb) = match split {
            Some((sp, _)) => {
                let mine = sp.split(tokens)[sp.rank()].clone();
                (
                    video_rotary_emb.tokens(mine.clone())?,
                    ca_video_rotary_emb.tokens(mine)?,
                )
            }
            None => (video_rotary_emb, ca_video_rotary_emb),
        };

        // 2. Input projections.
        let mut x = linear_forward(&self.proj_in, &inputs.hidden_states.to_dtype(dtype)?, None)?;
        let mut ax = linear_forward(
            &self.audio_proj_in,
            &inputs.audio_hidden_states.to_dtype(dtype)?,
            None,
        )?;
        if let (Some(embedding), Some(mask)) = (
            &self.keyframes_abs_pos_embedding,
            inputs.video_keyframes_mask,
        ) {
            let marker = mask.gt(0.0)?.to_dtype(dtype)?;
            x = (x + marker.broadcast_mul(&embedding.unsqueeze(0)?)?)?;
        }
        let mut x = local(x)?;

        // 3. Timestep embeddings and modulation parameters.
        let gate_scale = cfg.cross_attn_timestep_scale_multiplier / cfg.timestep_scale_multiplier;
        let (temb, embedded_timestep) = self.time_embed.forward(timestep, batch, dtype)?;
        let (temb, embedded_timestep) = (local(temb)?, local(embedded_timestep)?);
        let (temb_audio, audio_embedded_timestep) =
            self.audio_time_embed
                .forward(audio_timestep, batch, dtype)?;
        let (temb_prompt, temb_prompt_audio) = match &self.prompt_adaln {
            Some((prompt, audio_prompt)) => {
                let (s, a) = needs_sigma(
                    "this model modulates the prompt by it (cross_attn_mod with use_prompt_adaln_single)",
                )?;
                (
                    Some(prompt.forward(s, batch, dtype)?.0),
                    Some(audio_prompt.forward(a, batch, dtype)?.0),
                )
            }
            None => (None, None),
        };
        let (video_ca_timestep, audio_ca_timestep) = if inputs.use_cross_timestep {
            let (s, a) = needs_sigma("use_cross_timestep modulates each stream by the other's")?;
            (a, s)
        } else {
            (timestep, audio_timestep)
        };
        let scaled = |t: &Tensor| t.to_dtype(DType::F32)?.affine(gate_scale, 0.0);
        let (temb_ca_scale_shift, _) =
            self.av_cross_attn_video_scale_shift
                .forward(video_ca_timestep, batch, dtype)?;
        let (temb_ca_gate, _) =
            self.av_cross_attn_video_a2v_gate
                .forward(&scaled(video_ca_timestep)?, batch, dtype)?;
        let (temb_ca_scale_shift, temb_ca_gate) =
            (local(temb_ca_scale_shift)?, local(temb_ca_gate)?);
        let (temb_ca_audio_scale_shift, _) =
            self.av_cross_attn_audio_scale_shift
                .forward(audio_ca_timestep, batch, dtype)?;
        let (temb_ca_audio_gate, _) =
            self.av_cross_attn_audio_v2a_gate
                .forward(&scaled(audio_ca_timestep)?, batch, dtype)?;

        // 4. Prompt projections (LTX-2.0).
        let project = |projection: &Option<PixArtAlphaTextProjection>, t: &Tensor| {
            let t = t.to_dtype(dtype)?;
            match projection {
                Some(p) => p.forward(&t),
                None => Ok(t),
            }
        };
        let context = project(&self.caption_projection, inputs.encoder_hidden_states)?;
        let audio_context = project(
            &self.audio_caption_projection,
            inputs.audio_encoder_hidden_states,
        )?;

        // 5. Blocks, spatio-temporal guidance perturbing the self-attention of the chosen ones.
        let perturbation_mask = match inputs.perturbation_mask {
            Some(mask) => {
                if mask.elem_count() != batch {
                    candle_core::bail!(
                        "perturbation_mask must hold one value per sample ([{batch}] or [{batch}, 1, 1]), got {:?}",
                        mask.dims()
                    );
                }
                Some(mask.to_dtype(DType::F32)?.reshape((batch, 1, 1))?)
            }
            None if !inputs.spatio_temporal_guidance_blocks.is_empty() => {
                Some(Tensor::zeros((batch, 1, 1), DType::F32, device)?)
            }
            None => None,
        };
        let perturbation = match &perturbation_mask {
            Some(mask) => Some(Perturbation {
                mask,
                all_perturbed: mask
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .all(|&v| v == 0.0),
            }),
            None => None,
        };
        let block_inputs = BlockInputs {
            encoder_hidden_states: &context,
            audio_encoder_hidden_states: &audio_context,
            temb: &temb,
            temb_audio: &temb_audio,
            temb_ca_scale_shift: &temb_ca_scale_shift,
            temb_ca_audio_scale_shift: &temb_ca_audio_scale_shift,
            temb_ca_gate: &temb_ca_gate,
            temb_ca_audio_gate: &temb_ca_audio_gate,
            temb_prompt: temb_prompt.as_ref(),
            temb_prompt_audio: temb_prompt_audio.as_ref(),
            video_rotary_emb: &video_rotary_emb,
            audio_rotary_emb: &audio_rotary_emb,
            ca_video_rotary_emb: &ca_video_rotary_emb,
            ca_video_key_rotary_emb: &ca_video_key_rotary_emb,
            ca_audio_rotary_emb: &ca_audio_rotary_emb,
            sequence: split,
            encoder_attention_mask: encoder_attention_mask.as_ref(),
            audio_encoder_attention_mask: audio_encoder_attention_mask.as_ref(),
            self_attention_mask: video_self_attention_mask.as_ref(),
            use_a2v_cross_attention: !inputs.isolate_modalities,
            use_v2a_cross_attention: !inputs.isolate_modalities,
        };
        for (i, block) in self.transformer_blocks.iter().enumerate() {
            let block_perturbation = perturbation
                .as_ref()
                .filter(|_| inputs.spatio_temporal_guidance_blocks.contains(&i));
            (x, ax) = block.forward(&x, &ax, &block_inputs, block_perturbation)?;
        }

        // 6. Output layers: shift and scale from the table plus the embedded timestep.
        let output = |x: &Tensor, table: &Tensor, embedded: &Tensor, norm: &LayerNorm, proj| {
            let params = mod_params(table, &embedded.repeat((1, 1, 2))?)?;
            let x = norm.forward_modulated(x, &params[0], &params[1])?;
            linear_forward(proj, &x, None)
        };
        let mut sample = output(
            &x,
            &self.scale_shift_table,
            &embedded_timestep,
            &self.norm_out,
            &self.proj_out,
        )?;
        if let Some((sp, tokens)) = split {
            sample = section("sequence.gather", device, || sp.gather(&sample, tokens))?;
        }
        let audio_sample = output(
            &ax,
            &self.audio_scale_shift_table,
            &audio_embedded_timestep,
            &self.audio_norm_out,
            &self.audio_proj_out,
        )?;
        Ok((sample, audio_sample))
    }
}

/// Splits the video tokens (the audio stream, a few hundred tokens, runs whole on every rank).
impl SequenceSplit for LTX2VideoTransformer3DModel {
    fn split_heads(&self) -> usize {
        self.config.num_attention_heads
    }

    fn sequence_slot(&mut self) -> &mut Option<Arc<SequenceParallel>> {
        &mut self.sequence
    }
}

impl Adaptable for LTX2VideoTransformer3DModel {
    fn class_name(&self) -> &'static str {
        "LTX2VideoTransformer3DModel"
    }

    fn visit_weights(&mut self, f: &mut Visitor<'_>) -> std::result::Result<(), LoraError> {
        f(Weight::Linear(&mut self.proj_in))?;
        f(Weight::Linear(&mut self.audio_proj_in))?;
        for projection in [
            &mut self.caption_projection,
            &mut self.audio_caption_projection,
        ]
        .into_iter()
        .flatten()
        {
            f(Weight::Linear(&mut projection.linear_1))?;
            f(Weight::Linear(&mut projection.linear_2))?;
        }
        for ada in [
            &mut self.time_embed,
            &mut self.audio_time_embed,
            &mut self.av_cross_attn_video_scale_shift,
            &mut self.av_cross_attn_audio_scale_shift,
            &mut self.av_cross_attn_video_a2v_gate,
            &mut self.av_cross_attn_audio_v2a_gate,
        ] {
            ada.visit_weights(f)?;
        }
        if let Some((prompt, audio_prompt)) = &mut self.prompt_adaln {
            prompt.visit_weights(f)?;
            audio_prompt.visit_weights(f)?;
        }
        for block in &mut self.transformer_blocks {
            block.visit_weights(f)?;
        }
        f(Weight::Linear(&mut self.proj_out))?;
        f(Weight::Linear(&mut self.audio_proj_out))
    }

    /// Diffusers / PEFT files name the weights as the checkpoint does.
    fn aliases(&self, _name: &str) -> Vec<String> {
        Vec::new()
    }

    fn lora_state(&mut self) -> &mut LoraState {
        &mut self.lora
    }
}
