//! `LTX2TextConnectors`, following diffusers' `pipelines/ltx2/connectors.py`: what turns Gemma 3's
//! stacked hidden states into the video and audio text embeddings of the LTX-2 transformer. The
//! per-layer hidden states are normalised (LTX-2.0: masked mean/range per layer, then one shared
//! projection; LTX-2.3: per-token RMS norm, then one projection per modality), and each modality
//! runs its own small 1-D transformer whose padding is replaced by learnable registers.
//!
//! The pipeline's own step before the connectors, stacking the text encoder's hidden states on a
//! last axis and flattening it (`_get_gemma_prompt_embeds`), is
//! [`stack_text_encoder_hidden_states`]; the normalisations are public for it as well.
//! As in the reference, the blocks use the transformer's `LTX2Attention` and the 1-D RoPE of
//! [`super::rope`].

use super::rope::{LTX2RotaryPosEmbed1d, RopeType, RotaryEmb};
use super::transformer::{AttnArgs, LTX2Attention};
use crate::models::feed_forward::FeedForward;
use crate::models::{Activation, Linear, RmsNorm, linear, linear_forward, rms_normalize};
use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::path::Path;

/// The reference config (`connectors/config.json`), field names and defaults as
/// `LTX2TextConnectors.__init__` (LTX-2.0 with Gemma-3-12B).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct LTX2TextConnectorsConfig {
    /// The text encoder's hidden size.
    pub caption_channels: usize,
    /// How many stacked hidden states (the text encoder's layers + its embeddings).
    pub text_proj_in_factor: usize,
    pub video_connector_num_attention_heads: usize,
    pub video_connector_attention_head_dim: usize,
    pub video_connector_num_layers: usize,
    /// `null`: no registers; the connector attends with the padding mask instead.
    pub video_connector_num_learnable_registers: Option<usize>,
    pub video_gated_attn: bool,
    pub audio_connector_num_attention_heads: usize,
    pub audio_connector_attention_head_dim: usize,
    pub audio_connector_num_layers: usize,
    pub audio_connector_num_learnable_registers: Option<usize>,
    pub audio_gated_attn: bool,
    pub connector_rope_base_seq_len: usize,
    pub rope_theta: f64,
    /// Whether the RoPE frequencies are computed in f64 before rounding to f32.
    pub rope_double_precision: bool,
    /// Stored by the reference and never read by its forward; accepted for that reason.
    pub causal_temporal_positioning: bool,
    /// `interleaved` or `split`.
    pub rope_type: String,
    /// LTX-2.3: per-token RMS norm and one projection per modality.
    pub per_modality_projections: bool,
    pub video_hidden_dim: usize,
    pub audio_hidden_dim: usize,
    pub proj_bias: bool,
}

impl Default for LTX2TextConnectorsConfig {
    fn default() -> Self {
        Self {
            caption_channels: 3840,
            text_proj_in_factor: 49,
            video_connector_num_attention_heads: 30,
            video_connector_attention_head_dim: 128,
            video_connector_num_layers: 2,
            video_connector_num_learnable_registers: Some(128),
            video_gated_attn: false,
            audio_connector_num_attention_heads: 30,
            audio_connector_attention_head_dim: 128,
            audio_connector_num_layers: 2,
            audio_connector_num_learnable_registers: Some(128),
            audio_gated_attn: false,
            connector_rope_base_seq_len: 4096,
            rope_theta: 10000.0,
            rope_double_precision: true,
            causal_temporal_positioning: false,
            rope_type: "interleaved".into(),
            per_modality_projections: false,
            video_hidden_dim: 4096,
            audio_hidden_dim: 2048,
            proj_bias: false,
        }
    }
}

/// The settings of one modality's `LTX2ConnectorTransformer1d`.
struct ConnectorConfig {
    name: &'static str,
    heads: usize,
    head_dim: usize,
    layers: usize,
    registers: Option<usize>,
    gated: bool,
    /// The width of the projected text features it receives.
    input_dim: usize,
}

impl ConnectorConfig {
    fn inner_dim(&self) -> usize {
        self.heads * self.head_dim
    }
}

impl LTX2TextConnectorsConfig {
    /// `caption_channels * text_proj_in_factor`: the width of the packed hidden states.
    pub fn text_encoder_dim(&self) -> usize {
        self.caption_channels * self.text_proj_in_factor
    }

    fn connectors(&self) -> [ConnectorConfig; 2] {
        let (video_in, audio_in) = if self.per_modality_projections {
            (self.video_hidden_dim, self.audio_hidden_dim)
        } else {
            (self.caption_channels, self.caption_channels)
        };
        [
            ConnectorConfig {
                name: "video",
                heads: self.video_connector_num_attention_heads,
                head_dim: self.video_connector_attention_head_dim,
                layers: self.video_connector_num_layers,
                registers: self.video_connector_num_learnable_registers,
                gated: self.video_gated_attn,
                input_dim: video_in,
            },
            ConnectorConfig {
                name: "audio",
                heads: self.audio_connector_num_attention_heads,
                head_dim: self.audio_connector_attention_head_dim,
                layers: self.audio_connector_num_layers,
                registers: self.audio_connector_num_learnable_registers,
                gated: self.audio_gated_attn,
                input_dim: audio_in,
            },
        ]
    }

    /// Every combination the reference could not run fails here, by field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.caption_channels == 0 || self.text_proj_in_factor == 0 {
            return Err(format!(
                "caption_channels ({}) and text_proj_in_factor ({}) must be positive",
                self.caption_channels, self.text_proj_in_factor
            ));
        }
        let rope_type = RopeType::from_name(&self.rope_type)?;
        if self.connector_rope_base_seq_len == 0
            || !(self.rope_theta.is_finite() && self.rope_theta > 0.0)
        {
            return Err(format!(
                "connector_rope_base_seq_len ({}) and rope_theta ({}) must be positive",
                self.connector_rope_base_seq_len, self.rope_theta
            ));
        }
        for c in self.connectors() {
            let name = c.name;
            if c.heads == 0 || c.head_dim == 0 {
                return Err(format!(
                    "{name}_connector_num_attention_heads ({}) and {name}_connector_attention_head_dim ({}) must be positive",
                    c.heads, c.head_dim
                ));
            }
            if c.registers == Some(0) {
                return Err(format!(
                    "{name}_connector_num_learnable_registers must be positive or null, got 0"
                ));
            }
            match rope_type {
                RopeType::Interleaved if !c.inner_dim().is_multiple_of(2) => {
                    return Err(format!(
                        "interleaved RoPE rotates pairs: the {name} connector's width {} (heads x head dim) must be even",
                        c.inner_dim()
                    ));
                }
                RopeType::Split if !c.head_dim.is_multiple_of(2) => {
                    return Err(format!(
                        "split RoPE halves each head: {name}_connector_attention_head_dim ({}) must be even",
                        c.head_dim
                    ));
                }
                _ => {}
            }
            if c.inner_dim() != c.input_dim {
                let source = if self.per_modality_projections {
                    format!("{name}_hidden_dim")
                } else {
                    "caption_channels".to_string()
                };
                return Err(format!(
                    "the {name} connector's width {} ({name}_connector_num_attention_heads x {name}_connector_attention_head_dim) must equal {source} ({})",
                    c.inner_dim(),
                    c.input_dim
                ));
            }
        }
        Ok(())
    }
}

/// The text tokenizer's padding side, which the LTX-2.0 normalisation needs to find the tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingSide {
    Left,
    Right,
}

/// The valid-token mask `[batch, seq]` (1 valid, 0 padding) of sequences of `lengths` tokens.
fn padding_mask(lengths: &[usize], seq_len: usize, side: PaddingSide) -> Vec<u8> {
    let mut mask = Vec::with_capacity(lengths.len() * seq_len);
    for &len in lengths {
        mask.extend((0..seq_len).map(|i| {
            let valid = match side {
                PaddingSide::Right => i < len,
                PaddingSide::Left => i + len >= seq_len,
            };
            u8::from(valid)
        }));
    }
    mask
}

/// `torch.stack(hidden_states, dim=-1).flatten(2, 3)`: the text encoder's per-layer hidden states
/// (`[batch, seq, hidden]` each, embeddings first) packed to `[batch, seq, hidden * layers]`, as
/// the pipeline hands them to the connectors.
pub fn stack_text_encoder_hidden_states(hidden_states: &[Tensor]) -> Result<Tensor> {
    let stacked = Tensor::stack(hidden_states, D::Minus1)?;
    let (b, t, c, l) = stacked.dims4()?;
    stacked.reshape((b, t, c * l))
}

/// `per_layer_masked_mean_norm`: each layer of `text_hidden_states` (`[batch, seq, hidden,
/// layers]`) centred on its mean over the valid tokens and divided by their range, times
/// `scale_factor`; padding zeroed. `sequence_lengths` (`[batch]`) counts the valid tokens, found
/// on `padding_side`. Computed in f32; returns `[batch, seq, hidden * layers]` in the input dtype.
pub fn per_layer_masked_mean_norm(
    text_hidden_states: &Tensor,
    sequence_lengths: &Tensor,
    padding_side: PaddingSide,
    scale_factor: f64,
    eps: f64,
) -> Result<Tensor> {
    let (batch, seq_len, hidden, layers) = text_hidden_states.dims4()?;
    let lengths = lengths_of(sequence_lengths, batch, seq_len)?;
    let device = text_hidden_states.device();
    let x = text_hidden_states.to_dtype(DType::F32)?;
    let dims = x.dims().to_vec();
    let shape = dims.as_slice();
    let mask = Tensor::from_vec(
        padding_mask(&lengths, seq_len, padding_side),
        (batch, seq_len, 1, 1),
        device,
    )?
    .broadcast_as(shape)?;
    let filled = |value: f32| Tensor::full(value, shape, device);

    let masked = mask.where_cond(&x, &filled(0.0)?)?;
    let valid_positions: Vec<f32> = lengths
        .iter()
        .map(|&len| (len * hidden) as f32 + eps as f32)
        .collect();
    let valid_positions = Tensor::from_vec(valid_positions, (batch, 1, 1, 1), device)?;
    let mean = masked
        .sum_keepdim(1)?
        .sum_keepdim(2)?
        .broadcast_div(&valid_positions)?;
    let x_min = mask
        .where_cond(&x, &filled(f32::INFINITY)?)?
        .min_keepdim(1)?
        .min_keepdim(2)?;
    let x_max = mask
        .where_cond(&x, &filled(f32::NEG_INFINITY)?)?
        .max_keepdim(1)?
        .max_keepdim(2)?;
    let range = ((x_max - x_min)? + eps)?;
    let normalized = (x.broadcast_sub(&mean)?.broadcast_div(&range)? * scale_factor)?;
    mask.where_cond(&normalized, &filled(0.0)?)?
        .reshape((batch, seq_len, hidden * layers))?
        .to_dtype(text_hidden_states.dtype())
}

/// `per_token_rms_norm`: `x * rsqrt(mean(x², hidden axis) + eps)` of `[batch, seq, hidden,
/// layers]`, each token of each layer on its own, in f32; returns the input dtype.
pub fn per_token_rms_norm(text_encoder_hidden_states: &Tensor, eps: f64) -> Result<Tensor> {
    rms_normalize(text_encoder_hidden_states, 2, eps)?.to_dtype(text_encoder_hidden_states.dtype())
}

/// Token counts of `[batch]` `sequence_lengths`, each at most `seq_len`.
fn lengths_of(sequence_lengths: &Tensor, batch: usize, seq_len: usize) -> Result<Vec<usize>> {
    if sequence_lengths.dims() != [batch] {
        candle_core::bail!(
            "sequence_lengths must have shape [{batch}], got {:?}",
            sequence_lengths.dims()
        );
    }
    let lengths = sequence_lengths.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    lengths
        .into_iter()
        .map(|len| {
            if len < 0.0 || len > seq_len as f64 || len.fract() != 0.0 {
                candle_core::bail!("sequence length {len} is not a token count of 0..={seq_len}");
            }
            Ok(len as usize)
        })
        .collect()
}

/// `LTX2TransformerBlock1d`: pre-norm self-attention and GELU (tanh) feed-forward, residuals.
struct LTX2TransformerBlock1d {
    norm1: RmsNorm,
    attn1: LTX2Attention,
    norm2: RmsNorm,
    ff: FeedForward,
}

impl LTX2TransformerBlock1d {
    fn new(c: &ConnectorConfig, vb: VarBuilder) -> Result<Self> {
        let dim = c.inner_dim();
        Ok(Self {
            norm1: RmsNorm::without_affine(dim, 1e-6, vb.device())?,
            attn1: LTX2Attention::new(
                dim,
                c.heads,
                c.head_dim,
                None,
                true,
                true,
                c.gated,
                vb.pp("attn1"),
            )?,
            norm2: RmsNorm::without_affine(dim, 1e-6, vb.device())?,
            ff: FeedForward::new(dim, 4 * dim, dim, Activation::GeluTanh, vb.pp("ff"))?,
        })
    }

    fn forward(&self, x: &Tensor, bias: Option<&Tensor>, rotary: &RotaryEmb) -> Result<Tensor> {
        let args = AttnArgs {
            attention_mask: bias,
            query_rotary_emb: Some(rotary),
            ..Default::default()
        };
        let x = (x + self.attn1.forward(&self.norm1.forward(x)?, args, None)?)?;
        &x + self.ff.forward(&self.norm2.forward(&x)?)?
    }
}

/// `LTX2ConnectorTransformer1d`: one modality's connector.
struct LTX2ConnectorTransformer1d {
    /// `[registers, dim]`.
    learnable_registers: Option<Tensor>,
    rope: LTX2RotaryPosEmbed1d,
    transformer_blocks: Vec<LTX2TransformerBlock1d>,
    norm_out: RmsNorm,
}

/// `attn_mask_binarize_threshold`: additive-mask entries at or above it count as tokens.
const BINARIZE_THRESHOLD: f32 = -9000.0;

impl LTX2ConnectorTransformer1d {
    fn new(cfg: &LTX2TextConnectorsConfig, c: &ConnectorConfig, vb: VarBuilder) -> Result<Self> {
        let dim = c.inner_dim();
        Ok(Self {
            learnable_registers: c
                .registers
                .map(|r| vb.get((r, dim), "learnable_registers"))
                .transpose()?,
            rope: LTX2RotaryPosEmbed1d {
                dim,
                base_seq_len: cfg.connector_rope_base_seq_len,
                theta: cfg.rope_theta,
                double_precision: cfg.rope_double_precision,
                rope_type: RopeType::from_name(&cfg.rope_type).map_err(candle_core::Error::Msg)?,
                num_attention_heads: c.heads,
            },
            transformer_blocks: (0..c.layers)
                .map(|i| LTX2TransformerBlock1d::new(c, vb.pp("transformer_blocks").pp(i)))
                .collect::<Result<_>>()?,
            norm_out: RmsNorm::without_affine(dim, 1e-6, vb.device())?,
        })
    }

    /// `hidden_states` `[batch, seq, dim]` and the additive mask `[batch, 1, 1, seq]` (f32) to the
    /// normalised output and the mask it attended with (all zeros where registers filled the
    /// padding).
    fn forward(&self, hidden_states: &Tensor, attention_mask: &Tensor) -> Result<(Tensor, Tensor)> {
        let seq_len = hidden_states.dim(1)?;
        let (mut x, mask) = match &self.learnable_registers {
            Some(registers) => (
                self.replace_padding(hidden_states, attention_mask, registers)?,
                attention_mask.zeros_like()?,
            ),
            None => (hidden_states.clone(), attention_mask.clone()),
        };
        // Adding the all-zero mask of the register path changes nothing: plain attention then.
        let bias = self.learnable_registers.is_none().then_some(&mask);
        let rotary = self.rope.forward(seq_len, x.device())?;
        for block in &self.transformer_blocks {
            x = block.forward(&x, bias, &rotary)?;
        }
        Ok((self.norm_out.forward(&x)?, mask))
    }

    /// The valid tokens moved to the front in their order, the rest of each row filled with the
    /// registers tiled over the sequence by absolute position.
    fn replace_padding(
        &self,
        hidden_states: &Tensor,
        attention_mask: &Tensor,
        registers: &Tensor,
    ) -> Result<Tensor> {
        let (batch, seq_len, _) = hidden_states.dims3()?;
        let count = registers.dim(0)?;
        if !seq_len.is_multiple_of(count) {
            candle_core::bail!(
                "the text sequence length {seq_len} (hidden states of shape {:?}) must be divisible by the number of learnable registers {count}",
                hidden_states.dims()
            );
        }
        let registers = registers
            .to_dtype(hidden_states.dtype())?
            .repeat((seq_len / count, 1))?;
        let valid = attention_mask
            .ge(BINARIZE_THRESHOLD)?
            .reshape((batch, seq_len))?
            .to_vec2::<u8>()?;
        let device = hidden_states.device();
        let rows = valid
            .iter()
            .enumerate()
            .map(|(b, row)| {
                let tokens: Vec<u32> = (0..seq_len as u32)
                    .filter(|&i| row[i as usize] == 1)
                    .collect();
                let n = tokens.len();
                let mut parts = Vec::with_capacity(2);
                if n > 0 {
                    let index = Tensor::from_vec(tokens, n, device)?;
                    parts.push(hidden_states.get(b)?.index_select(&index, 0)?);
                }
                if n < seq_len {
                    parts.push(registers.narrow(0, n, seq_len - n)?);
                }
                Tensor::cat(&parts, 0)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&rows, 0)
    }
}

/// What the connectors return: the text embeddings of each modality and the mask the transformer
/// attends to them with.
pub struct TextConnectorOutput {
    /// `[batch, seq, video dim]`.
    pub video_text_embedding: Tensor,
    /// `[batch, seq, audio dim]`.
    pub audio_text_embedding: Tensor,
    /// `[batch, seq]` (i64, 1 = attend).
    pub attention_mask: Tensor,
}

/// The feature extractor: the projection of all stacked layers to the connectors' widths.
enum TextProjection {
    /// LTX-2.0: `text_proj_in`, shared by both modalities.
    Shared(Linear),
    /// LTX-2.3: `video_text_proj_in` and `audio_text_proj_in`.
    PerModality { video: Linear, audio: Linear },
}

/// The LTX-2 text connectors.
pub struct LTX2TextConnectors {
    config: LTX2TextConnectorsConfig,
    projection: TextProjection,
    video_connector: LTX2ConnectorTransformer1d,
    audio_connector: LTX2ConnectorTransformer1d,
    dtype: DType,
}

impl LTX2TextConnectors {
    pub fn new(cfg: &LTX2TextConnectorsConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let in_dim = cfg.text_encoder_dim();
        let proj = |out: usize, name: &str| linear(in_dim, out, cfg.proj_bias, vb.pp(name));
        let projection = if cfg.per_modality_projections {
            TextProjection::PerModality {
                video: proj(cfg.video_hidden_dim, "video_text_proj_in")?,
                audio: proj(cfg.audio_hidden_dim, "audio_text_proj_in")?,
            }
        } else {
            TextProjection::Shared(proj(cfg.caption_channels, "text_proj_in")?)
        };
        let [video, audio] = cfg.connectors();
        Ok(Self {
            projection,
            video_connector: LTX2ConnectorTransformer1d::new(
                cfg,
                &video,
                vb.pp("video_connector"),
            )?,
            audio_connector: LTX2ConnectorTransformer1d::new(
                cfg,
                &audio,
                vb.pp("audio_connector"),
            )?,
            dtype: vb.dtype(),
            config: cfg.clone(),
        })
    }

    /// Reads a `connectors` folder (`config.json` and the memory-mapped weights).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        use anyhow::Context;
        let config = crate::loader::read_checked_config(dir, LTX2TextConnectorsConfig::validate)?;
        let vb = crate::loader::open_weights(dir, dtype, device)?;
        Self::new(&config, vb)
            .with_context(|| format!("loading LTX2TextConnectors from {}", dir.display()))
    }

    pub fn config(&self) -> &LTX2TextConnectorsConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The stacked hidden states `text_encoder_hidden_states` (`[batch, seq, caption_channels,
    /// text_proj_in_factor]`, or packed `[batch, seq, caption_channels · text_proj_in_factor]`)
    /// with their `attention_mask` (`[batch, seq]`, 1 token / 0 padding) to the video and audio
    /// text embeddings. `padding_side` and `scale_factor` feed LTX-2.0's normalisation (the
    /// reference's defaults: left, 8).
    pub fn forward(
        &self,
        text_encoder_hidden_states: &Tensor,
        attention_mask: &Tensor,
        padding_side: PaddingSide,
        scale_factor: f64,
    ) -> Result<TextConnectorOutput> {
        let cfg = &self.config;
        let (c, l) = (cfg.caption_channels, cfg.text_proj_in_factor);
        let hidden = match *text_encoder_hidden_states.dims() {
            [b, t, w] if w == c * l => text_encoder_hidden_states.reshape((b, t, c, l))?,
            [_, _, cc, ll] if cc == c && ll == l => text_encoder_hidden_states.clone(),
            _ => candle_core::bail!(
                "text_encoder_hidden_states must have shape [batch, seq, {c}, {l}] or [batch, seq, {}] (caption_channels x text_proj_in_factor), got {:?}",
                c * l,
                text_encoder_hidden_states.dims()
            ),
        };
        let (batch, seq_len, _, _) = hidden.dims4()?;
        let mask = binary_mask(attention_mask, batch, seq_len)?;

        let (video_proj, audio_proj) = match &self.projection {
            TextProjection::PerModality { video, audio } => {
                // LTX-2.3: padding zeroed, norms rescaled to each modality's width.
                let normed = per_token_rms_norm(&hidden, 1e-6)?
                    .to_dtype(DType::F32)?
                    .reshape((batch, seq_len, c * l))?
                    .broadcast_mul(&mask.unsqueeze(D::Minus1)?)?;
                let project = |layer: &Linear, width: usize| -> Result<Tensor> {
                    let scaled = (&normed * (width as f64 / c as f64).sqrt())?;
                    linear_forward(layer, &scaled.to_dtype(self.dtype)?, None)
                };
                (
                    project(video, cfg.video_hidden_dim)?,
                    project(audio, cfg.audio_hidden_dim)?,
                )
            }
            TextProjection::Shared(layer) => {
                // LTX-2.0.
                let lengths = mask.sum(1)?;
                let normed = per_layer_masked_mean_norm(
                    &hidden,
                    &lengths,
                    padding_side,
                    scale_factor,
                    1e-6,
                )?;
                let projected = linear_forward(layer, &normed.to_dtype(self.dtype)?, None)?;
                (projected.clone(), projected)
            }
        };

        // The additive mask: 0 for tokens, the most negative f32 for padding.
        let additive = ((&mask - 1.0)? * f64::from(f32::MAX))?.reshape((batch, 1, 1, seq_len))?;
        let (video, video_mask) = self.video_connector.forward(&video_proj, &additive)?;
        // As the reference: every entry of the connector's mask is below 1e-6, so this keeps all.
        let keep = video_mask.lt(1e-6f32)?.reshape((batch, seq_len))?;
        // From the u8 comparison: CUDA has no i64 -> bf16 cast.
        let video = video.broadcast_mul(&keep.to_dtype(video.dtype())?.unsqueeze(D::Minus1)?)?;
        let binary = keep.to_dtype(DType::I64)?;
        let (audio, _) = self.audio_connector.forward(&audio_proj, &additive)?;
        Ok(TextConnectorOutput {
            video_text_embedding: video,
            audio_text_embedding: audio,
            attention_mask: binary,
        })
    }
}

/// `attention_mask` `[batch, seq]` of 0s and 1s as f32, or an error naming its shape or values.
fn binary_mask(attention_mask: &Tensor, batch: usize, seq_len: usize) -> Result<Tensor> {
    if attention_mask.dims() != [batch, seq_len] {
        candle_core::bail!(
            "attention_mask must have shape [{batch}, {seq_len}] (batch, text tokens of text_encoder_hidden_states), got {:?}",
            attention_mask.dims()
        );
    }
    let mask = attention_mask.to_dtype(DType::F32)?;
    let binary = mask.eq(0f32)?.add(&mask.eq(1f32)?)?;
    if binary.min_all()?.to_scalar::<u8>()? == 0 {
        candle_core::bail!("attention_mask must hold only 0 (padding) and 1 (token)");
    }
    Ok(mask)
}
