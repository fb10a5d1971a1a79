//! SwinIR (spandrel's `SwinIR` architecture): a shallow convolution, residual Swin Transformer
//! blocks (RSTB: window attention with relative position bias, every second block on windows
//! shifted by half a window, then a convolution), and one of four reconstructions.
//!
//! ```text
//! x → (x − mean)·img_range → conv_first ─┬→ patch norm → RSTB × n → norm → conv_after_body ─(+)→
//!   pixelshuffle:        conv → lrelu(0.01) → (conv → shuffle)… → conv_last
//!   pixelshuffledirect:  conv → shuffle
//!   nearest+conv:        conv → lrelu(0.01) → (nearest ×2 → conv → lrelu)… → conv_hr → lrelu → conv_last
//!   none:                x + conv_last(…)
//! → ·/img_range + mean
//! ```
//!
//! The input is reflect-padded to a multiple of the window beforehand ([`super::Upscaler`]), as
//! SwinIR's `check_image_size` does.

use super::layers::{per_channel, upsample_nearest};
use super::{Network, Padding, dim, expect_rgb, seq_len};
use crate::loader::StateDict;
use crate::models::conv::Conv2d;
use crate::models::{LayerNorm, Linear, linear, linear_forward};
use anyhow::{Result, bail};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use videosdgx_kernels::Epilogue;

const RGB_MEAN: [f32; 3] = [0.4488, 0.4371, 0.4040];
const LN_EPS: f64 = 1e-5;
/// Score given to pairs of tokens that a shifted window joins across the image border.
const MASKED: f32 = -100.0;
/// `nn.LeakyReLU()`'s default slope, after `conv_before_upsample`.
const SLOPE_BEFORE_UPSAMPLE: f32 = 0.01;
const SLOPE: f32 = 0.2;

pub(super) fn detect(dict: &StateDict) -> bool {
    let block = "layers.0.residual_group.blocks.0";
    // HAT and Swin2SR have these keys too; spandrel tries them first and knows them by
    // `relative_position_index_SA` and `patch_embed.proj` (neither is supported here).
    let other =
        dict.contains("relative_position_index_SA") || dict.contains("patch_embed.proj.weight");
    !other
        && dict.contains(&format!("{block}.norm1.weight"))
        && (dict.contains("conv_first.weight") || dict.contains("conv_first.1.weight"))
        && dict.contains(&format!("{block}.mlp.fc1.bias"))
        && dict.contains(&format!("{block}.attn.relative_position_index"))
}

/// `conv` (`1conv`) or `conv.0`, LeakyReLU, `conv.2` (1×1), LeakyReLU, `conv.4` (`3conv`).
enum ResiConv {
    One(Conv2d),
    Three([Conv2d; 3]),
}

impl ResiConv {
    fn load(vb: VarBuilder, three: bool, dim: usize) -> Result<Self> {
        Ok(if three {
            Self::Three([
                Conv2d::load(vb.pp("0"), dim, dim / 4, 3, 1, true)?,
                Conv2d::load(vb.pp("2"), dim / 4, dim / 4, 1, 1, true)?,
                Conv2d::load(vb.pp("4"), dim / 4, dim, 3, 1, true)?,
            ])
        } else {
            Self::One(Conv2d::load(vb, dim, dim, 3, 1, true)?)
        })
    }

    fn radius(&self) -> usize {
        match self {
            Self::One(_) => 1,
            Self::Three(_) => 2,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::One(conv) => conv.forward(x)?,
            Self::Three([a, b, c]) => {
                let x = a.forward_with(x, &Epilogue::leaky_relu(SLOPE))?;
                let x = b.forward_with(&x, &Epilogue::leaky_relu(SLOPE))?;
                c.forward(&x)?
            }
        })
    }
}

struct WindowAttention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    /// The relative position bias gathered for one window, `[1, heads, N, N]`.
    bias: Tensor,
}

impl WindowAttention {
    fn load(vb: VarBuilder, dim: usize, window: usize, dtype: DType) -> Result<Self> {
        let span = 2 * window - 1;
        let table_name = "relative_position_bias_table";
        let heads = vb.get_unchecked(table_name)?.dim(1)?;
        if heads == 0 || !dim.is_multiple_of(heads) {
            bail!(
                "{}: {heads} heads do not divide {dim} channels",
                vb.prefix()
            );
        }
        let table = vb.get((span * span, heads), table_name)?;
        // Index of the table row for each (query, key) pair of a window, as the reference's
        // `relative_position_index` buffer holds it.
        let n = window * window;
        let index: Vec<u32> = (0..n * n)
            .map(|pair| {
                let (i, j) = (pair / n, pair % n);
                let dy = i / window + window - 1 - j / window;
                let dx = i % window + window - 1 - j % window;
                (dy * span + dx) as u32
            })
            .collect();
        let index = Tensor::from_vec(index, n * n, table.device())?;
        let bias = table
            .index_select(&index, 0)?
            .reshape((n, n, heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .contiguous()?
            .to_dtype(dtype)?;
        Ok(Self {
            qkv: linear(dim, 3 * dim, true, vb.pp("qkv"))?,
            proj: linear(dim, dim, true, vb.pp("proj"))?,
            heads,
            bias,
        })
    }

    /// `x [B·nW, N, C]`; `mask [nW, N, N]` for shifted windows.
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (windows, n, c) = x.dims3()?;
        let head_dim = c / self.heads;
        let qkv = linear_forward(&self.qkv, x, None)?
            .reshape((windows, n, 3, self.heads, head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let scale = (head_dim as f64).powf(-0.5);
        let q = (qkv.get(0)? * scale)?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let mut attn = q.matmul(&k.t()?)?.broadcast_add(&self.bias)?;
        if let Some(mask) = mask {
            let masks = mask.dim(0)?;
            attn = attn
                .reshape((windows / masks, masks, self.heads, n, n))?
                .broadcast_add(&mask.unsqueeze(1)?.unsqueeze(0)?)?
                .reshape((windows, self.heads, n, n))?;
        }
        let attn = candle_nn::ops::softmax_last_dim(&attn)?;
        let out = attn.matmul(&v)?.transpose(1, 2)?.reshape((windows, n, c))?;
        Ok(linear_forward(&self.proj, &out, None)?)
    }
}

struct SwinBlock {
    norm1: LayerNorm,
    attn: WindowAttention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    window: usize,
    shift: usize,
}

impl SwinBlock {
    /// `x [B, H·W, C]` over an `h × w` grid (multiples of the window); `mask` is that of
    /// [`shift_mask`], present whenever a block shifts.
    fn forward(&self, x: &Tensor, (h, w): (usize, usize), mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, _, c) = x.dims3()?;
        let ws = self.window;
        let mut y = self.norm1.forward(x)?.reshape((b, h, w, c))?;
        if self.shift > 0 {
            let s = -(self.shift as i32);
            y = y.roll(s, 1)?.roll(s, 2)?;
        }
        let windows = y
            .reshape((b, h / ws, ws, w / ws, ws, c))?
            .permute((0, 1, 3, 2, 4, 5))?
            .reshape((b * (h / ws) * (w / ws), ws * ws, c))?;
        let mask = mask.filter(|_| self.shift > 0);
        let y = self
            .attn
            .forward(&windows, mask)?
            .reshape((b, h / ws, w / ws, ws, ws, c))?
            .permute((0, 1, 3, 2, 4, 5))?
            .reshape((b, h, w, c))?;
        let y = if self.shift > 0 {
            let s = self.shift as i32;
            y.roll(s, 1)?.roll(s, 2)?
        } else {
            y
        };
        let x = (x + y.reshape((b, h * w, c))?)?;
        let hidden = linear_forward(&self.fc1, &self.norm2.forward(&x)?, None)?.gelu_erf()?;
        Ok(linear_forward(&self.fc2, &hidden, Some(&x))?)
    }
}

/// Residual Swin Transformer block: Swin blocks, a convolution on the image, plus the input.
struct Rstb {
    blocks: Vec<SwinBlock>,
    conv: ResiConv,
}

impl Rstb {
    fn forward(&self, x: &Tensor, size: (usize, usize), mask: Option<&Tensor>) -> Result<Tensor> {
        let mut y = x.clone();
        for block in &self.blocks {
            y = block.forward(&y, size, mask)?;
        }
        let y = self.conv.forward(&unembed(&y, size)?)?;
        Ok((embed(&y)? + x)?)
    }
}

/// `[B, C, H, W]` → `[B, H·W, C]` (PatchEmbed with patch size 1).
fn embed(x: &Tensor) -> Result<Tensor> {
    Ok(x.flatten_from(2)?.transpose(1, 2)?)
}

/// `[B, H·W, C]` → `[B, C, H, W]`.
fn unembed(x: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
    let (b, _, c) = x.dims3()?;
    Ok(x.transpose(1, 2)?.reshape((b, c, h, w))?)
}

enum Reconstruction {
    PixelShuffle {
        before: Conv2d,
        /// Each convolution and the pixel shuffle factor after it.
        upsample: Vec<(Conv2d, usize)>,
        conv_last: Conv2d,
    },
    PixelShuffleDirect {
        conv: Conv2d,
        scale: usize,
    },
    NearestConv {
        before: Conv2d,
        /// One per ×2 step.
        up: Vec<Conv2d>,
        hr: Conv2d,
        conv_last: Conv2d,
    },
    /// Restoration at ×1: the output is the input plus `conv_last` of the features.
    Residual {
        conv_last: Conv2d,
    },
}

impl Reconstruction {
    fn load(
        dict: &StateDict,
        vb: &VarBuilder,
        embed_dim: usize,
        out_channels: usize,
    ) -> Result<Self> {
        let conv = |name: &str, i: usize, o: usize| Conv2d::load(vb.pp(name), i, o, 3, 1, true);
        Ok(if dict.contains("conv_before_upsample.0.weight") {
            let num_feat = dim(dict, "conv_before_upsample.0.weight", 0)?;
            let before = conv("conv_before_upsample.0", embed_dim, num_feat)?;
            let conv_last = conv("conv_last", num_feat, out_channels)?;
            if dict.contains("conv_up1.weight") {
                // Spandrel counts the `conv_up*` weights: one ×2 step each.
                let steps = dict
                    .keys()
                    .iter()
                    .filter(|k| k.contains("conv_up") && !k.contains("bias"))
                    .count();
                Self::NearestConv {
                    before,
                    up: (1..=steps)
                        .map(|i| conv(&format!("conv_up{i}"), num_feat, num_feat))
                        .collect::<candle_core::Result<_>>()?,
                    hr: conv("conv_hr", num_feat, num_feat)?,
                    conv_last,
                }
            } else {
                // Spandrel's `get_pixelshuffle_params`: `upsample.0`, `.2`, … until one is missing.
                let mut upsample = Vec::new();
                while dict.contains(&format!("upsample.{}.weight", 2 * upsample.len())) {
                    let name = format!("upsample.{}", 2 * upsample.len());
                    let factor = (dim(dict, &format!("{name}.weight"), 0)? / num_feat).isqrt();
                    upsample.push((conv(&name, num_feat, num_feat * factor * factor)?, factor));
                }
                Self::PixelShuffle {
                    before,
                    upsample,
                    conv_last,
                }
            }
        } else if dict.contains("upsample.0.weight") {
            let scale = (dim(dict, "upsample.0.bias", 0)? / out_channels).isqrt();
            Self::PixelShuffleDirect {
                conv: conv("upsample.0", embed_dim, out_channels * scale * scale)?,
                scale,
            }
        } else {
            Self::Residual {
                conv_last: conv("conv_last", embed_dim, out_channels)?,
            }
        })
    }

    fn scale(&self) -> usize {
        match self {
            Self::PixelShuffle { upsample, .. } => upsample.iter().map(|(_, f)| f).product(),
            Self::PixelShuffleDirect { scale, .. } => *scale,
            Self::NearestConv { up, .. } => 1 << up.len(),
            Self::Residual { .. } => 1,
        }
    }

    /// Convolutions after the body, each counted as a full input pixel.
    fn convs(&self) -> usize {
        match self {
            Self::PixelShuffle { upsample, .. } => upsample.len() + 2,
            Self::PixelShuffleDirect { .. } => 1,
            Self::NearestConv { up, .. } => up.len() + 3,
            Self::Residual { .. } => 1,
        }
    }
}

pub(super) struct SwinIr {
    conv_first: Conv2d,
    patch_norm: LayerNorm,
    layers: Vec<Rstb>,
    norm: LayerNorm,
    conv_after_body: ResiConv,
    reconstruction: Reconstruction,
    /// `[1, 3, 1, 1]`
    mean: Tensor,
    img_range: f64,
    window: usize,
}

impl SwinIr {
    pub(super) fn load(dict: &StateDict, vb: VarBuilder) -> Result<Self> {
        if dict.contains("conv_first.1.weight") {
            bail!(
                "{}: SwinIR with a pixel-unshuffled input (`conv_first.1`) is not supported",
                dict.path().display()
            );
        }
        let embed_dim = dim(dict, "conv_first.weight", 0)?;
        let in_channels = dim(dict, "conv_first.weight", 1)?;
        let out_channels = if dict.contains("conv_last.weight") {
            dim(dict, "conv_last.weight", 0)?
        } else {
            in_channels
        };
        expect_rgb(dict, in_channels, out_channels)?;
        let first_block = "layers.0.residual_group.blocks.0";
        let window = dim(
            dict,
            &format!("{first_block}.attn.relative_position_index"),
            0,
        )?
        .isqrt();
        if window == 0 {
            bail!(
                "{}: `{first_block}.attn.relative_position_index` is empty",
                dict.path().display()
            );
        }
        // The training resolution, from the stored mask of the first shifted block; windows
        // only shift when it is larger than one window.
        let img_size = match dict.shape("layers.0.residual_group.blocks.1.attn_mask") {
            Ok(shape) => shape[0].isqrt() * window,
            Err(_) => 64,
        };
        let shift = if img_size <= window { 0 } else { window / 2 };
        let three_conv = !dict.contains("conv_after_body.weight");
        let dtype = vb.dtype();

        let layers = (0..seq_len(dict, "layers"))
            .map(|i| {
                let group = vb.pp(format!("layers.{i}"));
                let blocks_prefix = format!("layers.{i}.residual_group.blocks");
                let blocks = (0..seq_len(dict, &blocks_prefix))
                    .map(|j| {
                        let vb = group.pp(format!("residual_group.blocks.{j}"));
                        let hidden = dim(dict, &format!("{blocks_prefix}.{j}.mlp.fc1.bias"), 0)?;
                        Ok(SwinBlock {
                            norm1: LayerNorm::new(embed_dim, LN_EPS, true, vb.pp("norm1"))?,
                            attn: WindowAttention::load(vb.pp("attn"), embed_dim, window, dtype)?,
                            norm2: LayerNorm::new(embed_dim, LN_EPS, true, vb.pp("norm2"))?,
                            fc1: linear(embed_dim, hidden, true, vb.pp("mlp.fc1"))?,
                            fc2: linear(hidden, embed_dim, true, vb.pp("mlp.fc2"))?,
                            window,
                            shift: if j % 2 == 1 { shift } else { 0 },
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Rstb {
                    blocks,
                    conv: ResiConv::load(group.pp("conv"), three_conv, embed_dim)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        Ok(Self {
            conv_first: Conv2d::load(vb.pp("conv_first"), in_channels, embed_dim, 3, 1, true)?,
            patch_norm: LayerNorm::new(embed_dim, LN_EPS, true, vb.pp("patch_embed.norm"))?,
            layers,
            norm: LayerNorm::new(embed_dim, LN_EPS, true, vb.pp("norm"))?,
            conv_after_body: ResiConv::load(vb.pp("conv_after_body"), three_conv, embed_dim)?,
            reconstruction: Reconstruction::load(dict, &vb, embed_dim, out_channels)?,
            mean: per_channel(&RGB_MEAN, dtype, vb.device())?,
            // Spandrel's rule: the JPEG models are the only ones with window 7, and use 0..255.
            img_range: if window == 7 { 255.0 } else { 1.0 },
            window,
        })
    }

    /// The body: patch norm, the RSTBs, the final norm, on `x [B, C, H, W]`.
    fn features(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let shifted = self
            .layers
            .iter()
            .flat_map(|l| &l.blocks)
            .any(|b| b.shift > 0);
        let mask = shifted
            .then(|| shift_mask(h, w, self.window, x.dtype(), x.device()))
            .transpose()?;
        let mut tokens = self.patch_norm.forward(&embed(x)?)?;
        for layer in &self.layers {
            tokens = layer.forward(&tokens, (h, w), mask.as_ref())?;
        }
        unembed(&self.norm.forward(&tokens)?, (h, w))
    }
}

impl Network for SwinIr {
    fn scale(&self) -> usize {
        self.reconstruction.scale()
    }

    /// Spandrel asks for 16 pixels; the network pads to a multiple of its window.
    fn padding(&self) -> Padding {
        Padding {
            minimum: 16,
            multiple_of: 1,
            window: self.window,
        }
    }

    /// A window per Swin block (attention mixes a whole window), a pixel per 3×3 convolution.
    fn receptive_radius(&self) -> usize {
        let body: usize = self
            .layers
            .iter()
            .map(|layer| layer.blocks.len() * self.window + layer.conv.radius())
            .sum();
        1 + body + self.conv_after_body.radius() + self.reconstruction.convs()
    }

    /// `x`: `[B, 3, H, W]` with `H` and `W` multiples of the window.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x.broadcast_sub(&self.mean)? * self.img_range)?;
        let first = self.conv_first.forward(&x)?;
        let body = (self.conv_after_body.forward(&self.features(&first)?)? + &first)?;
        let y = match &self.reconstruction {
            Reconstruction::PixelShuffle {
                before,
                upsample,
                conv_last,
            } => {
                let mut y =
                    before.forward_with(&body, &Epilogue::leaky_relu(SLOPE_BEFORE_UPSAMPLE))?;
                for (conv, factor) in upsample {
                    y = candle_nn::ops::pixel_shuffle(&conv.forward(&y)?, *factor)?;
                }
                conv_last.forward(&y)?
            }
            Reconstruction::PixelShuffleDirect { conv, scale } => {
                candle_nn::ops::pixel_shuffle(&conv.forward(&body)?, *scale)?
            }
            Reconstruction::NearestConv {
                before,
                up,
                hr,
                conv_last,
            } => {
                let mut y =
                    before.forward_with(&body, &Epilogue::leaky_relu(SLOPE_BEFORE_UPSAMPLE))?;
                for conv in up {
                    y =
                        conv.forward_with(&upsample_nearest(&y, 2)?, &Epilogue::leaky_relu(SLOPE))?;
                }
                conv_last.forward(&hr.forward_with(&y, &Epilogue::leaky_relu(SLOPE))?)?
            }
            Reconstruction::Residual { conv_last } => (&x + conv_last.forward(&body)?)?,
        };
        Ok((y / self.img_range)?.broadcast_add(&self.mean)?)
    }
}

/// The attention mask of the shifted windows over an `h × w` grid, `[nW, N, N]`: after the
/// roll by half a window, the last row and column of windows join pixels from opposite borders;
/// pairs from different regions are masked (SwinIR's `calculate_mask`).
fn shift_mask(h: usize, w: usize, window: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let shift = window / 2;
    let region = |i: usize, size: usize| {
        if i < size - window {
            0
        } else if i < size - shift {
            1
        } else {
            2
        }
    };
    let (rows, cols, n) = (h / window, w / window, window * window);
    let mut mask = Vec::with_capacity(rows * cols * n * n);
    for r in 0..rows {
        for c in 0..cols {
            let id = |p: usize| {
                let (y, x) = (r * window + p / window, c * window + p % window);
                region(y, h) * 3 + region(x, w)
            };
            let ids: Vec<usize> = (0..n).map(id).collect();
            for &a in &ids {
                mask.extend(ids.iter().map(|&b| if a == b { 0.0 } else { MASKED }));
            }
        }
    }
    Ok(Tensor::from_vec(mask, (rows * cols, n, n), device)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_mask_separates_wrapped_regions_only_in_the_last_windows() {
        let mask = shift_mask(8, 8, 4, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(mask.dims(), [4, 16, 16]);
        let sums: Vec<f32> = mask.sum((1, 2)).unwrap().to_vec1().unwrap();
        // The top-left window holds one region; the bottom-right one four of 4 pixels each.
        assert_eq!(sums[0], 0.0);
        assert_eq!(sums[3], MASKED * (16 * 16 - 4 * 16) as f32);
    }
}
