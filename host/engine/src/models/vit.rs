//! The parts CLIP's and SigLIP's vision towers and CLIP's text tower share (transformers'
//! `CLIPEncoderLayer` and `SiglipEncoderLayer` are the same pre-norm layer; the text tower runs it
//! with a causal mask; the vision towers embed patches with a stride-`patch` conv): one
//! implementation, so the towers cannot drift apart. Holds no model-specific logic (class
//! tokens, position embeddings and final norms stay in each model) and never reads files.

use super::{Activation, LayerNorm, Linear, linear};
use crate::attention::{attention, attention_with_bias};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// The dimensions of one encoder layer, read from either model's config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EncoderDims {
    pub(crate) hidden_size: usize,
    pub(crate) intermediate_size: usize,
    pub(crate) num_attention_heads: usize,
    pub(crate) layer_norm_eps: f64,
    pub(crate) act: Activation,
}

impl EncoderDims {
    /// Validates what the reference checks at construction: a known `hidden_act` and whole heads.
    pub(crate) fn new(
        hidden_size: usize,
        intermediate_size: usize,
        num_attention_heads: usize,
        layer_norm_eps: f64,
        hidden_act: &str,
    ) -> Result<Self> {
        let act = Activation::from_name(hidden_act).ok_or_else(|| {
            candle_core::Error::Msg(format!("unsupported hidden_act `{hidden_act}`"))
        })?;
        if num_attention_heads == 0 || !hidden_size.is_multiple_of(num_attention_heads) {
            candle_core::bail!(
                "hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}"
            );
        }
        Ok(Self {
            hidden_size,
            intermediate_size,
            num_attention_heads,
            layer_norm_eps,
            act,
        })
    }
}

/// `self_attn`: bidirectional multi-head attention with biased q/k/v/out projections.
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl Attention {
    fn new(dims: &EncoderDims, vb: VarBuilder) -> Result<Self> {
        let d = dims.hidden_size;
        Ok(Self {
            q_proj: linear(d, d, true, vb.pp("q_proj"))?,
            k_proj: linear(d, d, true, vb.pp("k_proj"))?,
            v_proj: linear(d, d, true, vb.pp("v_proj"))?,
            out_proj: linear(d, d, true, vb.pp("out_proj"))?,
            heads: dims.num_attention_heads,
        })
    }

    /// `mask`: an additive f32 score bias (the text tower's causal mask), or none.
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let head_dim = d / self.heads;
        let shape = (b, l, self.heads, head_dim);
        let q = self.q_proj.forward(x)?.reshape(shape)?;
        let k = self.k_proj.forward(x)?.reshape(shape)?;
        let v = self.v_proj.forward(x)?.reshape(shape)?;
        let out = match mask {
            Some(mask) => attention_with_bias(&q, &k, &v, mask, 1.0 / (head_dim as f64).sqrt())?,
            None => attention(&q, &k, &v)?,
        };
        self.out_proj.forward(&out.flatten_from(2)?)
    }
}

/// `encoder.layers.{i}`: `x + self_attn(layer_norm1(x))`, then `x + mlp(layer_norm2(x))`.
pub(crate) struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl EncoderLayer {
    pub(crate) fn new(dims: &EncoderDims, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (dims.hidden_size, dims.layer_norm_eps);
        Ok(Self {
            layer_norm1: LayerNorm::new(d, eps, true, vb.pp("layer_norm1"))?,
            self_attn: Attention::new(dims, vb.pp("self_attn"))?,
            layer_norm2: LayerNorm::new(d, eps, true, vb.pp("layer_norm2"))?,
            fc1: linear(d, dims.intermediate_size, true, vb.pp("mlp").pp("fc1"))?,
            fc2: linear(dims.intermediate_size, d, true, vb.pp("mlp").pp("fc2"))?,
            act: dims.act,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_masked(x, None)
    }

    /// [`Self::forward`] with an additive attention score bias (`[B or 1, heads or 1, L, L]`).
    pub(crate) fn forward_masked(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let x = (x + self
            .self_attn
            .forward(&self.layer_norm1.forward(x)?, mask)?)?;
        let h = self.fc1.forward(&self.layer_norm2.forward(&x)?)?;
        let h = self.fc2.forward(&self.act.apply(&h)?)?;
        x + h
    }
}

/// `encoder.layers.0 .. num_hidden_layers`, built under `vb` = the model's `encoder`.
pub(crate) fn encoder_layers(
    dims: &EncoderDims,
    num_hidden_layers: usize,
    vb: VarBuilder,
) -> Result<Vec<EncoderLayer>> {
    (0..num_hidden_layers)
        .map(|i| EncoderLayer::new(dims, vb.pp("layers").pp(i)))
        .collect()
}

/// `embeddings.patch_embedding`: `Conv2d(num_channels, hidden, kernel = stride = patch)` over a
/// square image of `image_size`, computed as one matmul over the flattened patches.
pub(crate) struct PatchEmbedding {
    weight: Tensor,
    bias: Option<Tensor>,
    num_channels: usize,
    image_size: usize,
    patch_size: usize,
}

impl PatchEmbedding {
    pub(crate) fn new(
        num_channels: usize,
        hidden_size: usize,
        image_size: usize,
        patch_size: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        if patch_size == 0 || !image_size.is_multiple_of(patch_size) {
            candle_core::bail!(
                "image_size {image_size} is not a multiple of patch_size {patch_size}"
            );
        }
        let p = patch_size;
        Ok(Self {
            weight: vb
                .get((hidden_size, num_channels, p, p), "weight")?
                .flatten_from(1)?,
            bias: if bias {
                Some(vb.get(hidden_size, "bias")?)
            } else {
                None
            },
            num_channels,
            image_size,
            patch_size,
        })
    }

    /// Patches per image, `(image_size / patch_size)^2`.
    pub(crate) fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// `[B, C, S, S]` pixels -> `[B, patches, hidden]` in row-major patch order, in the weights'
    /// dtype (the reference casts `pixel_values` to the conv's dtype).
    pub(crate) fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (size, p, c) = (self.image_size, self.patch_size, self.num_channels);
        let shape_ok =
            matches!(pixel_values.dims(), &[_, ch, h, w] if (ch, h, w) == (c, size, size));
        if !shape_ok {
            candle_core::bail!(
                "pixel_values has shape {:?}, the image encoder expects [B, {c}, {size}, {size}]",
                pixel_values.dims()
            );
        }
        let b = pixel_values.dim(0)?;
        let g = size / p;
        let patches = pixel_values
            .to_dtype(self.weight.dtype())?
            .reshape(vec![b, c, g, p, g, p])?
            .permute([0, 2, 4, 1, 3, 5])?
            .reshape((b, g * g, c * p * p))?;
        let x = patches.broadcast_matmul(&self.weight.t()?)?;
        match &self.bias {
            Some(bias) => x.broadcast_add(bias),
            None => Ok(x),
        }
    }
}
