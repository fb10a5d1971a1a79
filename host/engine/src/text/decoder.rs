//! The decoder-only transformer that Qwen3 and Gemma 3 share (transformers'
//! `modeling_qwen3.py` and `modeling_gemma3.py` side by side): token embeddings, layers of
//! RMS-normed self-attention with grouped key/value heads, query/key norms and rotary positions
//! (full or sliding-window), a gated MLP, a final norm and the language-model head. Each family's
//! file turns its config into a [`DecoderConfig`] and names its checkpoint prefixes; nothing here
//! knows a family or reads files.

use super::cache::DecoderCache;
use super::mask::AttentionLayout;
use crate::fused::profile::section;
use crate::models::quant::Quant;
use crate::models::{Activation, Linear, RmsNorm, linear, linear_forward};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use videosdgx_kernels::CausalMask;

/// Which keys a layer's queries see, in the form its attention path takes.
enum KeyMask {
    /// Additive `[B, 1, T, L]` scores (0 or the dtype's minimum), for the portable path.
    Additive(Tensor),
    /// The fused kernel's causal rule ([`crate::attention::causal_attention`]).
    Causal(CausalMask),
}

/// Where the norms sit around each sub-layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormPlacement {
    /// Llama/Qwen: `h + attn(norm(h))`, then `h + mlp(post_attention_layernorm(h))`.
    Pre,
    /// Gemma 2/3: every sub-layer is normed before and after (`post_attention_layernorm`,
    /// `pre_feedforward_layernorm`, `post_feedforward_layernorm`).
    Sandwich,
}

/// How an RMS norm's learned weight scales the normalised value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormScale {
    /// Llama/Qwen: `x * weight`.
    Weight,
    /// Gemma: `x * (1 + weight)`.
    OnePlusWeight,
}

/// Rotary position embedding of one attention kind, as transformers' `rope_parameters` give it.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeParams {
    pub theta: f64,
    /// `rope_type: "linear"` divides positions by this factor; 1 for `default`.
    pub linear_factor: f64,
}

/// What one layer's self-attention sees.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerAttention {
    /// Keys more than this many positions behind the query are masked (`sliding_attention`).
    pub sliding_window: Option<usize>,
    pub rope: RopeParams,
}

/// The shape and numerics of a decoder, whatever family's config it came from.
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub hidden_act: Activation,
    pub attention_bias: bool,
    /// Softmax scale of the attention scores.
    pub attention_scale: f64,
    pub final_logit_softcapping: Option<f64>,
    pub norm_scale: NormScale,
    pub norm_placement: NormPlacement,
    /// Gemma multiplies the embeddings by `sqrt(hidden_size)`, rounded to the weights' dtype.
    pub embedding_scale: Option<f64>,
    pub tie_word_embeddings: bool,
    /// One entry per layer.
    pub layers: Vec<LayerAttention>,
}

impl DecoderConfig {
    pub fn num_hidden_layers(&self) -> usize {
        self.layers.len()
    }

    /// Checks the relations the layers rely on, so that a bad config fails at load with a reason
    /// rather than as a shape error mid-forward.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.num_attention_heads == 0 || self.num_key_value_heads == 0 {
            return Err("num_attention_heads and num_key_value_heads must be positive".into());
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim
            ));
        }
        if self.layers.is_empty() {
            return Err("the model has no layers".into());
        }
        Ok(())
    }
}

fn rms_norm(dim: usize, cfg: &DecoderConfig, vb: VarBuilder) -> Result<RmsNorm> {
    match cfg.norm_scale {
        NormScale::Weight => RmsNorm::new(dim, cfg.rms_norm_eps, vb),
        NormScale::OnePlusWeight => RmsNorm::gemma(dim, cfg.rms_norm_eps, vb),
    }
}

/// `cos` and `sin` of every position of a batch for one rotary embedding: `[B, T, head_dim / 2]`.
struct RotaryEmbedding {
    inv_freq: Vec<f32>,
}

impl RotaryEmbedding {
    fn new(params: &RopeParams, head_dim: usize) -> Self {
        // transformers computes inv_freq in f32 from an int64 arange; the linear factor divides it.
        let inv_freq = (0..head_dim / 2)
            .map(|i| {
                let exponent = (2 * i) as f32 / head_dim as f32;
                1.0 / (params.theta as f32).powf(exponent) / params.linear_factor as f32
            })
            .collect();
        Self { inv_freq }
    }

    fn cos_sin(
        &self,
        positions: &[Vec<u32>],
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let (b, t, half) = (positions.len(), positions[0].len(), self.inv_freq.len());
        let mut angles = Vec::with_capacity(b * t * half);
        for row in positions {
            for &p in row {
                angles.extend(self.inv_freq.iter().map(|f| p as f32 * f));
            }
        }
        let angles = Tensor::from_vec(angles, (b, t, half), device)?;
        Ok((
            angles.cos()?.to_dtype(dtype)?,
            angles.sin()?.to_dtype(dtype)?,
        ))
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    fn new(cfg: &DecoderConfig, qk_norm: bool, vb: VarBuilder) -> Result<Self> {
        let (h, kv, d) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let bias = cfg.attention_bias;
        let (q_norm, k_norm) = if qk_norm {
            (
                Some(rms_norm(d, cfg, vb.pp("q_norm"))?),
                Some(rms_norm(d, cfg, vb.pp("k_norm"))?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            q_proj: linear(cfg.hidden_size, h * d, bias, vb.pp("q_proj"))?,
            k_proj: linear(cfg.hidden_size, kv * d, bias, vb.pp("k_proj"))?,
            v_proj: linear(cfg.hidden_size, kv * d, bias, vb.pp("v_proj"))?,
            o_proj: linear(h * d, cfg.hidden_size, bias, vb.pp("o_proj"))?,
            q_norm,
            k_norm,
            heads: h,
            kv_heads: kv,
            head_dim: d,
            scale: cfg.attention_scale,
        })
    }

    /// `x`: `[B, T, hidden]`; `mask`: which of the cached and new keys each query sees;
    /// `residual` is added to the output projection (in its epilogue where fused).
    fn forward(
        &self,
        x: &Tensor,
        cos_sin: &(Tensor, Tensor),
        mask: &KeyMask,
        cache: Option<&mut candle_nn::kv_cache::KvCache>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let d = self.head_dim;
        let dev = x.device();
        // `[B, T, heads, D]`, rotated in that layout, then viewed as `[B, heads, T, D]`: at one
        // token (decoding) the view is already contiguous, so nothing is copied.
        let project = |layer: &Linear, heads: usize, norm: &Option<RmsNorm>| -> Result<Tensor> {
            let y = linear_forward(layer, x, None)?;
            let y = match norm {
                // Normed per head: rows of head_dim, the rank-3 layout the fused kernel takes.
                Some(norm) => norm.forward(&y.reshape((b, t * heads, d))?)?,
                None => y,
            };
            y.reshape((b, t, heads, d))
        };
        let (cos, sin) = cos_sin;
        let heads_first = |y: Tensor| y.transpose(1, 2)?.contiguous();
        // q stays `[B, T, heads, D]`, the layout the fused kernel reads; k and v go to the cache
        // as `[B, kv_heads, T, D]`.
        let (q, k, v) = section("attn.qkv+norm+rope", dev, || {
            let q = candle_nn::rotary_emb::rope_thd(
                &project(&self.q_proj, self.heads, &self.q_norm)?,
                cos,
                sin,
            )?;
            let k = candle_nn::rotary_emb::rope_thd(
                &project(&self.k_proj, self.kv_heads, &self.k_norm)?,
                cos,
                sin,
            )?;
            let v = project(&self.v_proj, self.kv_heads, &None)?;
            Ok((q, heads_first(k)?, heads_first(v)?))
        })?;
        let (k, v) = match cache {
            Some(cache) => section("attn.cache", dev, || cache.append(&k, &v))?,
            None => (k, v),
        };
        let out = section("attn.scores+softmax", dev, || match mask {
            KeyMask::Causal(mask) => crate::attention::causal_attention(
                &q,
                &k.transpose(1, 2)?,
                &v.transpose(1, 2)?,
                self.scale,
                mask,
            ),
            KeyMask::Additive(mask) => self.attend(&heads_first(q)?, &k, &v, mask)?.transpose(1, 2),
        })?;
        section("attn.out", dev, || {
            let out = out.reshape((b, t, self.heads * d))?;
            linear_forward(&self.o_proj, &out, residual)
        })
    }

    /// Grouped-query attention without repeating keys: the query heads that share a key/value
    /// head are stacked along the query axis, so each key is read once per group.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, h, t, d) = q.dims4()?;
        let l = k.dim(2)?;
        let groups = h / self.kv_heads;
        let q = q.reshape((b, self.kv_heads, groups * t, d))?;
        // Scores in the model's dtype, as the reference's eager attention keeps them (candle's
        // CUDA softmax accumulates in f32, as the reference's upcast softmax does).
        let scores = (q.matmul(&k.t()?)? * self.scale)?
            .reshape((b, self.kv_heads, groups, t, l))?
            .broadcast_add(&mask.unsqueeze(1)?)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.reshape((
            b,
            self.kv_heads,
            groups * t,
            l,
        ))?;
        probs.matmul(v)?.reshape((b, h, t, d))
    }
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl Mlp {
    fn new(cfg: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: linear(h, i, false, vb.pp("gate_proj"))?,
            up_proj: linear(h, i, false, vb.pp("up_proj"))?,
            down_proj: linear(i, h, false, vb.pp("down_proj"))?,
            act: cfg.hidden_act,
        })
    }

    /// `residual` is added to the down projection (in its epilogue where fused).
    fn forward(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let dev = x.device();
        let hidden = section("mlp.gate+up", dev, || {
            // Gemma's tanh GELU rides in the gate projection's epilogue where fused.
            let fused_gate = match self.act {
                Activation::GeluTanh => crate::fused::linear(&self.gate_proj, x, true, None)?,
                _ => None,
            };
            let gate = match fused_gate {
                Some(gate) => gate,
                None => self.act.apply(&linear_forward(&self.gate_proj, x, None)?)?,
            };
            gate * linear_forward(&self.up_proj, x, None)?
        })?;
        section("mlp.down", dev, || {
            linear_forward(&self.down_proj, &hidden, residual)
        })
    }
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    /// Sandwich placement only.
    feedforward_norms: Option<(RmsNorm, RmsNorm)>,
    mlp: Mlp,
}

impl DecoderLayer {
    fn new(cfg: &DecoderConfig, qk_norm: bool, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let feedforward_norms = match cfg.norm_placement {
            NormPlacement::Pre => None,
            NormPlacement::Sandwich => Some((
                rms_norm(h, cfg, vb.pp("pre_feedforward_layernorm"))?,
                rms_norm(h, cfg, vb.pp("post_feedforward_layernorm"))?,
            )),
        };
        Ok(Self {
            input_layernorm: rms_norm(h, cfg, vb.pp("input_layernorm"))?,
            self_attn: Attention::new(cfg, qk_norm, vb.pp("self_attn"))?,
            post_attention_layernorm: rms_norm(h, cfg, vb.pp("post_attention_layernorm"))?,
            feedforward_norms,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        cos_sin: &(Tensor, Tensor),
        mask: &KeyMask,
        cache: Option<&mut candle_nn::kv_cache::KvCache>,
    ) -> Result<Tensor> {
        let dev = x.device();
        let norm = |norm: &RmsNorm, x: &Tensor| section("norms", dev, || norm.forward(x));
        let h = norm(&self.input_layernorm, x)?;
        match &self.feedforward_norms {
            // The residual adds ride in the projections' epilogues.
            None => {
                let x = self.self_attn.forward(&h, cos_sin, mask, cache, Some(x))?;
                let h = norm(&self.post_attention_layernorm, &x)?;
                self.mlp.forward(&h, Some(&x))
            }
            // Gemma norms each sub-layer's output before its residual add.
            Some((pre, post)) => {
                let attn = self.self_attn.forward(&h, cos_sin, mask, cache, None)?;
                let x = (x + norm(&self.post_attention_layernorm, &attn)?)?;
                let mlp = self.mlp.forward(&norm(pre, &x)?, None)?;
                x + norm(post, &mlp)?
            }
        }
    }
}

/// Which hidden states a forward keeps, numbered as transformers' `output_hidden_states`:
/// 0 is the embedding output, `i` the output of layer `i - 1`, the last one the final norm's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HiddenStates {
    None,
    All,
    /// Only these indices; layers past the largest are not run.
    Layers(Vec<usize>),
}

/// What a forward returns.
pub struct DecoderOutput {
    /// `[B, T', vocab]` in f32 for the positions asked for; `None` when the forward stopped
    /// early for hidden states.
    pub logits: Option<Tensor>,
    /// The kept hidden states, in index order.
    pub hidden_states: Vec<Tensor>,
}

/// Which positions the language-model head runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Every position (`model forward`).
    All,
    /// The last position only (generation: the head over a large vocabulary dominates prefill
    /// otherwise).
    Last,
    /// None (text encoders).
    Skip,
}

pub struct Decoder {
    cfg: DecoderConfig,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Tensor,
    rotary: Vec<(RopeParams, RotaryEmbedding)>,
    dtype: DType,
    device: Device,
}

impl Decoder {
    /// Keeps every layer's projections (q, k, v, o, gate, up, down) in `quant` where the format
    /// takes their shape, as ModelOpt's exports keep them; the embeddings, norms and head stay as
    /// loaded. Returns how many layers were quantized.
    pub fn quantize(&mut self, quant: Quant) -> Result<usize> {
        let mut quantized = 0;
        for layer in &mut self.layers {
            let (attn, mlp) = (&mut layer.self_attn, &mut layer.mlp);
            for linear in [
                &mut attn.q_proj,
                &mut attn.k_proj,
                &mut attn.v_proj,
                &mut attn.o_proj,
                &mut mlp.gate_proj,
                &mut mlp.up_proj,
                &mut mlp.down_proj,
            ] {
                quantized += usize::from(linear.quantize(quant)?);
            }
        }
        Ok(quantized)
    }

    /// `model` is positioned at the decoder's prefix (`model.`, `model.language_model.`, ...);
    /// `lm_head` at the head's, unused when the embeddings are tied. `qk_norm`: Qwen3 and
    /// Gemma 3 norm queries and keys per head.
    pub fn new(
        cfg: DecoderConfig,
        qk_norm: bool,
        model: VarBuilder,
        lm_head: VarBuilder,
    ) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let embed_tokens = model
            .pp("embed_tokens")
            .get((cfg.vocab_size, cfg.hidden_size), "weight")?;
        let layers = (0..cfg.num_hidden_layers())
            .map(|i| DecoderLayer::new(&cfg, qk_norm, model.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            lm_head.get((cfg.vocab_size, cfg.hidden_size), "weight")?
        };
        let mut rotary: Vec<(RopeParams, RotaryEmbedding)> = Vec::new();
        for layer in &cfg.layers {
            if !rotary.iter().any(|(p, _)| *p == layer.rope) {
                rotary.push((
                    layer.rope.clone(),
                    RotaryEmbedding::new(&layer.rope, cfg.head_dim),
                ));
            }
        }
        Ok(Self {
            norm: rms_norm(cfg.hidden_size, &cfg, model.pp("norm"))?,
            embed_tokens,
            layers,
            lm_head,
            rotary,
            dtype: model.dtype(),
            device: model.device().clone(),
            cfg,
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Token embeddings `[B, T, hidden]`, scaled where the family scales them.
    pub fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let ids = input_ids.to_dtype(DType::U32)?.flatten_all()?;
        let max = ids.max(0)?.to_scalar::<u32>()? as usize;
        if max >= self.cfg.vocab_size {
            candle_core::bail!(
                "token id {max} is outside the vocabulary of {} tokens",
                self.cfg.vocab_size
            );
        }
        let x = self
            .embed_tokens
            .index_select(&ids, 0)?
            .reshape((b, t, self.cfg.hidden_size))?;
        match self.cfg.embedding_scale {
            // The reference multiplies by the scale cast to the weights' dtype.
            Some(scale) => {
                let scale = Tensor::new(scale as f32, &self.device)?.to_dtype(self.dtype)?;
                x.broadcast_mul(&scale)
            }
            None => Ok(x),
        }
    }

    /// Runs the layers over `embeds` (`[B, T, hidden]`), whose keys extend `cache` (or start a
    /// sequence when there is none), under the masks of `layout`.
    pub fn forward(
        &self,
        embeds: &Tensor,
        layout: &AttentionLayout,
        mut cache: Option<&mut DecoderCache>,
        hidden: &HiddenStates,
        logits: Logits,
    ) -> Result<DecoderOutput> {
        let (b, t, _) = embeds.dims3()?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        if layout.batch() != b || layout.len() != past + t {
            candle_core::bail!(
                "attention mask covers {} sequences of {} tokens, the input has {b} of {} ({past} cached)",
                layout.batch(),
                layout.len(),
                past + t
            );
        }
        let last_needed = match hidden {
            HiddenStates::Layers(ids) if logits == Logits::Skip => {
                ids.iter().copied().max().unwrap_or(0)
            }
            _ => self.layers.len() + 1,
        };
        let keep = |i: usize| match hidden {
            HiddenStates::None => false,
            HiddenStates::All => true,
            HiddenStates::Layers(ids) => ids.contains(&i),
        };
        let windows: Vec<usize> = {
            let mut w: Vec<usize> = self
                .cfg
                .layers
                .iter()
                .filter_map(|l| l.sliding_window)
                .collect();
            w.sort_unstable();
            w.dedup();
            w
        };
        // The fused kernel where it runs and the layout lets it; additive masks otherwise.
        let fused =
            crate::attention::causal_kernel_available(&self.device, self.dtype, self.cfg.head_dim);
        let key_mask = |window: Option<usize>| -> Result<KeyMask> {
            if fused && let Some(mask) = layout.causal_mask(past, window) {
                return Ok(KeyMask::Causal(mask));
            }
            layout
                .additive_mask(past, t, window, self.dtype, &self.device)
                .map(KeyMask::Additive)
        };
        let (cos_sin, full_mask, window_masks) =
            section("rope tables+masks", &self.device, || {
                let positions = layout.positions(past, t);
                let cos_sin = self
                    .rotary
                    .iter()
                    .map(|(_, rope)| rope.cos_sin(&positions, self.dtype, &self.device))
                    .collect::<Result<Vec<_>>>()?;
                let full_mask = key_mask(None)?;
                let window_masks = windows
                    .iter()
                    .map(|&w| key_mask(Some(w)))
                    .collect::<Result<Vec<_>>>()?;
                Ok((cos_sin, full_mask, window_masks))
            })?;

        let mut states = Vec::new();
        let mut x = embeds.to_dtype(self.dtype)?;
        if keep(0) {
            states.push(x.clone());
        }
        for (i, layer) in self.layers.iter().enumerate() {
            if i + 1 > last_needed {
                return Ok(DecoderOutput {
                    logits: None,
                    hidden_states: states,
                });
            }
            let spec = &self.cfg.layers[i];
            let rope = self
                .rotary
                .iter()
                .position(|(p, _)| *p == spec.rope)
                .expect("every layer's rope is built");
            let mask = match spec.sliding_window {
                Some(w) => &window_masks[windows.binary_search(&w).expect("window mask built")],
                None => &full_mask,
            };
            let layer_cache = cache.as_deref_mut().map(|c| c.layer(i));
            x = layer.forward(&x, &cos_sin[rope], mask, layer_cache)?;
            // The last layer's own output is replaced by the final norm's in transformers' list.
            if i + 1 < self.layers.len() && keep(i + 1) {
                states.push(x.clone());
            }
        }
        if let Some(cache) = cache {
            cache.advance(t);
        }
        let x = self.norm.forward(&x)?;
        if keep(self.layers.len()) {
            states.push(x.clone());
        }
        let logits = section("head", &self.device, || {
            Ok(match logits {
                Logits::Skip => None,
                Logits::All => Some(self.head(&x)?),
                Logits::Last => Some(self.head(&x.narrow(1, t - 1, 1)?)?),
            })
        })?;
        Ok(DecoderOutput {
            logits,
            hidden_states: states,
        })
    }

    /// The language-model head in f32, soft-capped where the family caps it.
    fn head(&self, x: &Tensor) -> Result<Tensor> {
        let logits = x
            .broadcast_matmul(&self.lm_head.t()?)?
            .to_dtype(DType::F32)?;
        match self.cfg.final_logit_softcapping {
            Some(cap) => (logits / cap)?.tanh()? * cap,
            None => Ok(logits),
        }
    }

    /// A cache for `batch` sequences of up to `capacity` tokens, allocated on first use.
    pub fn new_cache(&self, capacity: usize) -> DecoderCache {
        DecoderCache::new(self.layers.len(), capacity)
    }
}
