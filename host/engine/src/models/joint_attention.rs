//! The joint (MM-DiT) attention of the FLUX transformers, shared by FLUX.1
//! (`transformer_flux.py`: `FluxAttention`, `FluxPosEmbed`) and FLUX.2 (`transformer_flux2.py`:
//! `Flux2Attention`, `Flux2PosEmbed`), which differ only in whether the projections have biases:
//! image and text tokens get their own q/k/v projections and per-head RMS q/k norms, attention
//! runs over `[text, image]` with rotary tables of per-token position ids, and the result splits
//! back into the two streams. Attention goes through [`crate::attention`].

use super::rope::{apply_interleaved, rope_tables};
use super::{LayerNorm, Linear, RmsNorm, gated_residual, linear, linear_forward};
use crate::attention::attention;
use crate::fused::profile::section;
use crate::lora::{LoraError, Visitor, Weight};
use crate::parallel::SequenceParallel;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use std::ops::Range;

/// Splits the last dim of `x` into heads of `head_dim`: `[B, L, H * D]` to `[B, L, H, D]`.
pub(crate) fn split_heads(x: &Tensor, head_dim: usize) -> Result<Tensor> {
    let (b, l, inner) = x.dims3()?;
    x.reshape((b, l, inner / head_dim, head_dim))
}

/// `torch.nn.RMSNorm(head_dim)` of each head of `x` (`[B, L, H, D]`), run over `[B, L * H, D]`
/// so the fused norm kernel takes it.
pub(crate) fn norm_heads(norm: &RmsNorm, x: &Tensor) -> Result<Tensor> {
    let (b, l, h, d) = x.dims4()?;
    norm.forward(&x.reshape((b, l * h, d))?)?
        .reshape((b, l, h, d))
}

/// `FluxPosEmbed` / `Flux2PosEmbed`: the rotary `cos`/`sin` tables (`[L, head_dim / 2]`, one
/// angle per interleaved pair) of a sequence of position ids, one axis per column.
pub(crate) struct PosEmbed {
    pub(crate) axes_dim: Vec<usize>,
    pub(crate) theta: f64,
}

impl PosEmbed {
    /// `ids` are `[L, axes]` rows (f32 after `ids.float()`, as the references read them) of each
    /// sequence in order, one table over all of them (`torch.cat` of the ids).
    pub(crate) fn forward(&self, ids: &[&[f32]], device: &Device) -> Result<Rope> {
        let axes = self.axes_dim.len();
        let positions: Vec<f64> = ids
            .iter()
            .flat_map(|rows| rows.chunks_exact(axes).flatten())
            .map(|&p| f64::from(p))
            .collect();
        let (cos, sin) = rope_tables(&positions, &self.axes_dim, self.theta, device)?;
        Ok(Rope { cos, sin })
    }
}

/// The position ids `ids` (`[L, n]` or `[B, L, n]`, any numeric dtype) of the `len` tokens of
/// `tokens`, as f32 rows of the first `axes` columns. Like the references, a batch of ids uses
/// its first row (the pipelines give every sample the same ids) and extra columns are ignored.
pub(crate) fn position_rows(
    ids: &Tensor,
    name: &str,
    tokens: &str,
    len: usize,
    axes: usize,
) -> Result<Vec<f32>> {
    let fits = match *ids.dims() {
        [rows, cols] => rows == len && cols >= axes,
        [batch, rows, cols] => batch > 0 && rows == len && cols >= axes,
        _ => false,
    };
    if !fits {
        candle_core::bail!(
            "{name} has shape {:?}; it must hold one row of {axes} positions per token of {tokens} ({len} tokens): [{len}, {axes}] or [batch, {len}, {axes}]",
            ids.dims()
        );
    }
    let ids = if ids.rank() == 3 {
        ids.get(0)?
    } else {
        ids.clone()
    };
    ids.narrow(1, 0, axes)?
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()
}

/// The rotary tables of a joint sequence (text tokens, then image tokens).
pub(crate) struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// The tables of the joint sequence one rank of `split` holds: every text token, then its
    /// share of the image tokens (all of them, unsplit).
    pub(crate) fn for_split(self, split: Option<&JointSplit<'_>>) -> Result<Rope> {
        let Some(split) = split else {
            return Ok(self);
        };
        let image = split.image_range();
        let rows = |t: &Tensor| {
            Tensor::cat(
                &[
                    t.narrow(0, 0, split.text_len)?,
                    t.narrow(0, split.text_len + image.start, image.len())?,
                ],
                0,
            )
        };
        Ok(Rope {
            cos: rows(&self.cos)?,
            sin: rows(&self.sin)?,
        })
    }

    pub(crate) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        apply_interleaved(x, &self.cos, &self.sin)
    }

    /// The rotation of `x` `[B, L, H, D]` after `norm` of each head (one pass where fused).
    pub(crate) fn apply_normed(&self, norm: &RmsNorm, x: &Tensor) -> Result<Tensor> {
        match norm.forward_heads_rope(x, &self.cos, &self.sin)? {
            Some(y) => Ok(y),
            None => self.apply(&norm_heads(norm, x)?),
        }
    }
}

/// A FLUX transformer call split across ranks ([`crate::parallel`]): the image tokens are
/// shared out, the text tokens (a few hundred) stay whole on every rank.
#[derive(Clone, Copy)]
pub(crate) struct JointSplit<'a> {
    pub(crate) sequence: &'a SequenceParallel,
    pub(crate) text_len: usize,
    /// The image tokens in all.
    pub(crate) image_len: usize,
}

impl<'a> JointSplit<'a> {
    /// The split of a call with `text_len` and `image_len` tokens, when `sequence` splits it.
    pub(crate) fn new(
        sequence: Option<&'a SequenceParallel>,
        text_len: usize,
        image_len: usize,
    ) -> Option<Self> {
        sequence.map(|sequence| Self {
            sequence,
            text_len,
            image_len,
        })
    }

    fn image_range(&self) -> Range<usize> {
        self.sequence.split(self.image_len)[self.sequence.rank()].clone()
    }

    /// This rank's share of the image tokens `[B, image_len, C]`.
    pub(crate) fn shard_image(&self, x: &Tensor) -> Result<Tensor> {
        self.sequence.shard(x, 1)
    }

    /// Every rank's image tokens `[B, share, C]` joined into `[B, image_len, C]`.
    pub(crate) fn gather_image(&self, x: &Tensor) -> Result<Tensor> {
        section("sequence.gather", x.device(), || {
            self.sequence.gather(x, self.image_len)
        })
    }
}

/// Attention over the rotated joint q/k/v `[B, text + image, H, D]`: whole, or under `split` with
/// this rank's image tokens. Split, the image tokens go through Ulysses' all-to-all (every image
/// token, a share of the heads), the text takes the same heads locally, and the text's output is
/// gathered across the heads again.
pub(crate) fn joint_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    split: Option<&JointSplit<'_>>,
) -> Result<Tensor> {
    let dev = q.device();
    let Some(split) = split else {
        return section("attn.attention", dev, || attention(q, k, v));
    };
    let (sp, text_len) = (split.sequence, split.text_len);
    let heads_share = |t: &Tensor| -> Result<Tensor> {
        let image = t.narrow(1, text_len, t.dim(1)? - text_len)?;
        Tensor::cat(
            &[
                sp.own_heads(&t.narrow(1, 0, text_len)?)?,
                sp.heads_to_sequence(&image, split.image_len)?,
            ],
            1,
        )
    };
    let (q, k, v) = section("sequence.all_to_all", dev, || {
        Ok((heads_share(q)?, heads_share(k)?, heads_share(v)?))
    })?;
    let out = section("attn.attention", dev, || attention(&q, &k, &v))?;
    section("sequence.all_to_all", dev, || {
        Tensor::cat(
            &[
                sp.gather_heads(&out.narrow(1, 0, text_len)?)?,
                sp.sequence_to_heads(&out.narrow(1, text_len, split.image_len)?)?,
            ],
            1,
        )
    })
}

/// The q/k/v projections of one stream with their per-head RMS q/k norms (`to_q`, `to_k`,
/// `to_v`, `norm_q`, `norm_k` of the image stream; `add_*_proj`, `norm_added_*` of the text one).
pub(crate) struct HeadProjections {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    head_dim: usize,
}

impl HeadProjections {
    /// The image stream's projections (`to_q`, ..., `norm_k` under `vb`).
    pub(crate) fn image(
        dim: usize,
        head_dim: usize,
        eps: f64,
        bias: bool,
        vb: &VarBuilder,
    ) -> Result<Self> {
        Self::new(
            dim,
            head_dim,
            eps,
            bias,
            vb,
            ["to_q", "to_k", "to_v", "norm_q", "norm_k"],
        )
    }

    /// The text stream's projections (`add_q_proj`, ..., `norm_added_k` under `vb`).
    fn text(dim: usize, head_dim: usize, eps: f64, bias: bool, vb: &VarBuilder) -> Result<Self> {
        Self::new(
            dim,
            head_dim,
            eps,
            bias,
            vb,
            [
                "add_q_proj",
                "add_k_proj",
                "add_v_proj",
                "norm_added_q",
                "norm_added_k",
            ],
        )
    }

    fn new(
        dim: usize,
        head_dim: usize,
        eps: f64,
        bias: bool,
        vb: &VarBuilder,
        [q, k, v, nq, nk]: [&str; 5],
    ) -> Result<Self> {
        Ok(Self {
            to_q: linear(dim, dim, bias, vb.pp(q))?,
            to_k: linear(dim, dim, bias, vb.pp(k))?,
            to_v: linear(dim, dim, bias, vb.pp(v))?,
            norm_q: RmsNorm::new(head_dim, eps, vb.pp(nq))?,
            norm_k: RmsNorm::new(head_dim, eps, vb.pp(nk))?,
            head_dim,
        })
    }

    pub(crate) fn visit_weights(
        &mut self,
        f: &mut Visitor<'_>,
    ) -> std::result::Result<(), LoraError> {
        for linear in [&mut self.to_q, &mut self.to_k, &mut self.to_v] {
            f(Weight::Linear(linear))?;
        }
        self.norm_q.visit_weights(f)?;
        self.norm_k.visit_weights(f)
    }

    /// `(q, k, v)` of `x`, split into heads.
    fn project(&self, x: &Tensor) -> Result<[Tensor; 3]> {
        let (q, k, v) = section("attn.qkv", x.device(), || {
            Ok((
                linear_forward(&self.to_q, x, None)?,
                linear_forward(&self.to_k, x, None)?,
                linear_forward(&self.to_v, x, None)?,
            ))
        })?;
        Ok([
            split_heads(&q, self.head_dim)?,
            split_heads(&k, self.head_dim)?,
            split_heads(&v, self.head_dim)?,
        ])
    }

    /// `(q, k, v)` of a whole sequence `x` whose rotary tables are `rope`: q and k normed and
    /// rotated (one pass where fused).
    pub(crate) fn forward_rotated(&self, x: &Tensor, rope: &Rope) -> Result<[Tensor; 3]> {
        let [q, k, v] = self.project(x)?;
        let (q, k) = section("attn.qk_norm+rope", x.device(), || {
            Ok((
                rope.apply_normed(&self.norm_q, &q)?,
                rope.apply_normed(&self.norm_k, &k)?,
            ))
        })?;
        Ok([q, k, v])
    }

    /// `(q, k, v)` of `x`, split into heads, with q and k normed (not yet rotated: the joint
    /// attention rotates the concatenated streams).
    fn forward(&self, x: &Tensor) -> Result<[Tensor; 3]> {
        let dev = x.device();
        let [q, k, v] = self.project(x)?;
        let (q, k) = section("attn.qk_norm", dev, || {
            Ok((norm_heads(&self.norm_q, &q)?, norm_heads(&self.norm_k, &k)?))
        })?;
        Ok([q, k, v])
    }
}

/// The double-stream joint attention (`FluxAttention` / `Flux2Attention` with `added_kv_proj_dim`,
/// their default processors): projections of both streams, attention over `[text, image]` with
/// the joint rotary tables, output projections `to_out.0` (image) and `to_add_out` (text).
pub(crate) struct JointAttention {
    image: HeadProjections,
    text: HeadProjections,
    to_out: Linear,
    to_add_out: Linear,
}

impl JointAttention {
    /// `bias`: FLUX.1 has biases on every projection, FLUX.2 on none.
    pub(crate) fn new(
        dim: usize,
        head_dim: usize,
        eps: f64,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            image: HeadProjections::image(dim, head_dim, eps, bias, &vb)?,
            text: HeadProjections::text(dim, head_dim, eps, bias, &vb)?,
            to_out: linear(dim, dim, bias, vb.pp("to_out").pp(0))?,
            to_add_out: linear(dim, dim, bias, vb.pp("to_add_out"))?,
        })
    }

    pub(crate) fn visit_weights(
        &mut self,
        f: &mut Visitor<'_>,
    ) -> std::result::Result<(), LoraError> {
        self.image.visit_weights(f)?;
        self.text.visit_weights(f)?;
        f(Weight::Linear(&mut self.to_out))?;
        f(Weight::Linear(&mut self.to_add_out))
    }

    /// Returns the attention outputs of the image stream `x` and the text stream `context` (under
    /// `split`, `x` holds this rank's image tokens and `rope` their tables).
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        rope: &Rope,
        split: Option<&JointSplit<'_>>,
    ) -> Result<(Tensor, Tensor)> {
        let dev = x.device();
        let [q, k, v] = self.image.forward(x)?;
        let [cq, ck, cv] = self.text.forward(context)?;
        let (q, k) = section("attn.rope", dev, || {
            Ok((
                rope.apply(&Tensor::cat(&[cq, q], 1)?)?,
                rope.apply(&Tensor::cat(&[ck, k], 1)?)?,
            ))
        })?;
        let v = Tensor::cat(&[cv, v], 1)?;
        let out = joint_attention(&q, &k, &v, split)?.flatten_from(2)?;
        let text_len = context.dim(1)?;
        let image_len = out.dim(1)? - text_len;
        section("attn.out", dev, || {
            Ok((
                linear_forward(&self.to_out, &out.narrow(1, text_len, image_len)?, None)?,
                linear_forward(&self.to_add_out, &out.narrow(1, 0, text_len)?, None)?,
            ))
        })
    }
}

/// The modulation a double-stream block applies to one stream after its attention: the gate of the
/// attention residual, then the feed-forward's shift, scale and gate.
pub(crate) struct StreamTail<'a> {
    pub gate_msa: &'a Tensor,
    pub shift_mlp: &'a Tensor,
    pub scale_mlp: &'a Tensor,
    pub gate_mlp: &'a Tensor,
}

impl StreamTail<'_> {
    /// `x + gate_msa * attn`, then `+ gate_mlp * ff(norm2(x) * (1 + scale_mlp) + shift_mlp)`: the
    /// rest of an MM-DiT double block for one stream, the same in FLUX.1 and FLUX.2.
    pub(crate) fn apply(
        &self,
        x: &Tensor,
        attn: &Tensor,
        norm2: &LayerNorm,
        ff: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let dev = x.device();
        let x = section("residual.gated", dev, || {
            gated_residual(x, attn, self.gate_msa)
        })?;
        let normed = section("norm2.modulate", dev, || {
            norm2.forward_modulated(&x, self.shift_mlp, self.scale_mlp)
        })?;
        let ff = ff(&normed)?;
        section("residual.gated", dev, || {
            gated_residual(&x, &ff, self.gate_mlp)
        })
    }
}
