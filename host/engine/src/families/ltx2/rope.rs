//! `LTX2AudioVideoRotaryPosEmbed` and the two ways of applying it (`apply_interleaved_rotary_emb`,
//! `apply_split_rotary_emb`), following diffusers' `models/transformers/transformer_ltx2.py`, and
//! the text connectors' `LTX2RotaryPosEmbed1d` (`pipelines/ltx2/connectors.py`), which shares
//! their frequencies and layouts over plain token indices.
//!
//! Positions are patch boundaries `[start, end)` in pixel (video: frames in seconds, rows,
//! columns) or audio (seconds) space; the RoPE angle of a token on an axis is its midpoint as a
//! fraction of the axis' maximum, mapped to [-1, 1], times `theta^linspace(0, 1) · π/2`. The
//! coordinates and the `[-1, 1]` fractions are computed on the host in f32 with the reference's
//! operation order (bit for bit); the angles and their cos/sin are f32 tensor ops on the device.

use crate::models::RmsNorm;
use crate::models::rope::apply_interleaved;
use candle_core::{DType, Device, Result, Tensor};
use videosdgx_kernels::RotaryPairs;

/// `rope_type`: how the rotated pairs are laid out in a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeType {
    /// Adjacent channels `(2j, 2j + 1)` of the whole projection form a pair.
    Interleaved,
    /// Within each head, channel `j` pairs with channel `j + head_dim / 2`.
    Split,
}

impl RopeType {
    /// The `rope_type` config value, or the reason it is refused.
    pub fn from_name(name: &str) -> std::result::Result<Self, String> {
        match name {
            "interleaved" => Ok(Self::Interleaved),
            "split" => Ok(Self::Split),
            other => Err(format!(
                "rope_type `{other}` is not supported; choose `interleaved` or `split`"
            )),
        }
    }
}

/// Patch boundaries of `[batch, axes, tokens, 2]` f32 values (`video_coords` / `audio_coords`).
#[derive(Debug, Clone, PartialEq)]
pub struct Coords {
    pub batch: usize,
    pub axes: usize,
    pub tokens: usize,
    pub values: Vec<f32>,
}

impl Coords {
    /// From a `[B, axes, tokens, 2]` tensor of any numeric dtype.
    pub fn from_tensor(t: &Tensor, name: &str) -> Result<Self> {
        let (batch, axes, tokens, two) = t.dims4().map_err(|_| {
            candle_core::Error::msg(format!(
                "{name} must have shape [batch, axes, tokens, 2], got {:?}",
                t.dims()
            ))
        })?;
        if two != 2 {
            candle_core::bail!(
                "{name} must have shape [batch, axes, tokens, 2] ([start, end) per patch), got {:?}",
                t.dims()
            );
        }
        Ok(Self {
            batch,
            axes,
            tokens,
            values: t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
        })
    }

    fn at(&self, b: usize, axis: usize, token: usize, end: usize) -> f32 {
        self.values[((b * self.axes + axis) * self.tokens + token) * 2 + end]
    }

    /// The first `n` axes (`video_coords[:, 0:n]`).
    pub fn leading_axes(&self, n: usize) -> Self {
        let per_axis = self.tokens * 2;
        let values = (0..self.batch)
            .flat_map(|b| {
                let start = b * self.axes * per_axis;
                self.values[start..start + n * per_axis].iter().copied()
            })
            .collect();
        Self {
            batch: self.batch,
            axes: n,
            tokens: self.tokens,
            values,
        }
    }

    /// The same coordinates for every sample of a batch of `batch` (from a batch of one).
    pub fn repeat_batch(&self, batch: usize) -> Self {
        assert_eq!(
            self.batch, 1,
            "repeat_batch takes the coordinates of one sample"
        );
        Self {
            batch,
            values: self.values.repeat(batch),
            ..self.clone()
        }
    }

    /// `torch.cat([self, other], dim=2)`: `other`'s tokens after these, axis by axis.
    pub fn append_tokens(&self, other: &Coords) -> Self {
        assert_eq!(
            (self.batch, self.axes),
            (other.batch, other.axes),
            "appended coordinates must have the same batch and axes"
        );
        let (mine, theirs) = (self.tokens * 2, other.tokens * 2);
        let values = self
            .values
            .chunks_exact(mine)
            .zip(other.values.chunks_exact(theirs))
            .flat_map(|(a, b)| a.iter().chain(b).copied())
            .collect();
        Self {
            tokens: self.tokens + other.tokens,
            values,
            ..self.clone()
        }
    }

    /// Whether every sample of the batch holds the same coordinates (then one table serves all).
    fn shared_across_batch(&self) -> bool {
        let per_sample = self.axes * self.tokens * 2;
        self.values
            .chunks_exact(per_sample)
            .all(|c| c == &self.values[..per_sample])
    }
}

/// `torch.linspace(0, 1, steps)` in f32, with its two-sided evaluation.
fn linspace_f32(steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![0.0];
    }
    let step = 1.0f32 / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                step * i as f32
            } else {
                1.0 - step * (steps - 1 - i) as f32
            }
        })
        .collect()
}

/// `torch.linspace(0, 1, steps)` in f64.
fn linspace_f64(steps: usize) -> Vec<f64> {
    if steps == 1 {
        return vec![0.0];
    }
    let step = 1.0f64 / (steps - 1) as f64;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                step * i as f64
            } else {
                1.0 - step * (steps - 1 - i) as f64
            }
        })
        .collect()
}

/// The cos/sin tables of one rotary embedding: `[batch' · tokens, dim / 2]` f32, one angle per
/// rotated pair (the reference's interleaved tables repeat each twice), `batch'` 1 when every
/// sample shares its positions.
#[derive(Debug, Clone)]
pub struct RotaryEmb {
    cos: Tensor,
    sin: Tensor,
    batch: usize,
    tokens: usize,
    rope_type: RopeType,
    /// The heads the split layout is cut into (`num_attention_heads` of the embedding).
    heads: usize,
}

impl RotaryEmb {
    /// Rotates `x` (`[B, tokens, dim]`, the projection before it is split into heads), in f32;
    /// returns the dtype of `x`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        self.check(x)?;
        let (b, l, d) = x.dims3()?;
        let half = d / 2;
        match self.rope_type {
            RopeType::Interleaved => {
                // Pairs never straddle a head, so each head is a row of its own with its slice of
                // the table: rows of head width, which the fused rotary kernel takes.
                let chunks = if d.is_multiple_of(2 * self.heads) {
                    self.heads
                } else {
                    1
                };
                let width = d / chunks;
                let shape = if self.batch == 1 {
                    (b, l * chunks, 1, width)
                } else {
                    (1, b * l * chunks, 1, width)
                };
                let rows = self.batch * l * chunks;
                let cos = self.cos.reshape((rows, width / 2))?;
                let sin = self.sin.reshape((rows, width / 2))?;
                apply_interleaved(&x.reshape(shape)?, &cos, &sin)?.reshape((b, l, d))
            }
            RopeType::Split => {
                let (h, r) = (self.heads, half / self.heads);
                let x32 = x.to_dtype(DType::F32)?.reshape((b, l, h, 2, r))?;
                let x1 = x32.narrow(3, 0, 1)?;
                let x2 = x32.narrow(3, 1, 1)?;
                let cos = self.cos.reshape((self.batch, l, h, 1, r))?;
                let sin = self.sin.reshape((self.batch, l, h, 1, r))?;
                let first = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
                let second = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
                Tensor::cat(&[first, second], 3)?
                    .reshape((b, l, d))?
                    .to_dtype(x.dtype())
            }
        }
    }

    /// `apply(norm.forward(x))`: the attention's q/k path (the norm across heads, then this
    /// rotation), as one fused kernel where one covers it.
    pub(crate) fn apply_normed(&self, x: &Tensor, norm: &RmsNorm) -> Result<Tensor> {
        self.check(x)?;
        let pairs = match self.rope_type {
            RopeType::Interleaved => RotaryPairs::Interleaved,
            RopeType::Split => RotaryPairs::Split {
                head_dim: x.dim(2)? / self.heads,
            },
        };
        match norm.forward_rotary(x, &self.cos, &self.sin, pairs)? {
            Some(y) => Ok(y),
            None => self.apply(&norm.forward(x)?),
        }
    }

    /// The tables of the tokens in `range` alone (a rank's share of a split sequence).
    pub(crate) fn tokens(&self, range: std::ops::Range<usize>) -> Result<RotaryEmb> {
        let half = self.cos.dim(1)?;
        let rows = |t: &Tensor| {
            t.reshape((self.batch, self.tokens, half))?
                .narrow(1, range.start, range.len())?
                .reshape((self.batch * range.len(), half))
        };
        Ok(RotaryEmb {
            cos: rows(&self.cos)?,
            sin: rows(&self.sin)?,
            tokens: range.len(),
            ..self.clone()
        })
    }

    /// Checks that these tables fit the projection `x` `[B, tokens, dim]`.
    fn check(&self, x: &Tensor) -> Result<()> {
        let (b, l, d) = x.dims3()?;
        let half = self.cos.dim(1)?;
        if l != self.tokens || d != 2 * half || (self.batch != 1 && self.batch != b) {
            candle_core::bail!(
                "rotary tables for {} tokens of width {} (batch {}) do not fit a projection of shape {:?}",
                self.tokens,
                2 * half,
                self.batch,
                x.dims()
            );
        }
        Ok(())
    }
}

/// `LTX2AudioVideoRotaryPosEmbed`: the coordinates of a modality's tokens and their tables.
#[derive(Debug, Clone)]
pub struct LTX2AudioVideoRotaryPosEmbed {
    pub dim: usize,
    pub patch_size: usize,
    pub patch_size_t: usize,
    /// `base_num_frames` (and for video `base_height`, `base_width`): the maximum position of
    /// each axis.
    pub max_positions: Vec<usize>,
    pub sampling_rate: usize,
    pub hop_length: usize,
    /// VAE scale factors (video: frames, rows, columns; audio: one, the mel frames per latent).
    pub scale_factors: Vec<usize>,
    pub theta: f64,
    pub causal_offset: i64,
    pub double_precision: bool,
    pub rope_type: RopeType,
    pub num_attention_heads: usize,
}

impl LTX2AudioVideoRotaryPosEmbed {
    /// `prepare_video_coords`: `[batch, 3, tokens, 2]` pixel-space bounds of the latent patches
    /// over `num_frames x height x width` latents, frames in seconds at `fps`.
    pub fn prepare_video_coords(
        &self,
        batch: usize,
        num_frames: usize,
        height: usize,
        width: usize,
        fps: f32,
    ) -> Coords {
        let (pt, p) = (self.patch_size_t, self.patch_size);
        let grid = |n: usize, step: usize| (0..n).step_by(step).map(|v| v as f32).collect();
        let (gf, gh, gw): (Vec<f32>, Vec<f32>, Vec<f32>) =
            (grid(num_frames, pt), grid(height, p), grid(width, p));
        let tokens = gf.len() * gh.len() * gw.len();
        let [sf, sh, sw] = [0, 1, 2].map(|i| self.scale_factors[i] as f32);
        let mut axes: [Vec<f32>; 3] = std::array::from_fn(|_| Vec::with_capacity(tokens * 2));
        for &f in &gf {
            for &h in &gh {
                for &w in &gw {
                    // The patch's start, then its end.
                    for delta in [0.0f32, 1.0] {
                        let frame = (f + delta * pt as f32) * sf;
                        let frame = ((frame + self.causal_offset as f32) - sf).max(0.0) / fps;
                        axes[0].push(frame);
                        axes[1].push((h + delta * p as f32) * sh);
                        axes[2].push((w + delta * p as f32) * sw);
                    }
                }
            }
        }
        let sample: Vec<f32> = axes.concat();
        Coords {
            batch,
            axes: 3,
            tokens,
            values: sample.repeat(batch),
        }
    }

    /// `prepare_audio_coords` (shift 0): `[batch, 1, tokens, 2]` bounds in seconds of the
    /// `num_frames` audio latents.
    pub fn prepare_audio_coords(&self, batch: usize, num_frames: usize) -> Coords {
        let pt = self.patch_size_t;
        let sf = self.scale_factors[0] as f32;
        let seconds = |latent: f32| {
            let mel = ((latent * sf + self.causal_offset as f32) - sf).max(0.0);
            mel * self.hop_length as f32 / self.sampling_rate as f32
        };
        let mut sample = Vec::new();
        for f in (0..num_frames).step_by(pt).map(|v| v as f32) {
            sample.push(seconds(f));
            sample.push(seconds(f + pt as f32));
        }
        Coords {
            batch,
            axes: 1,
            tokens: sample.len() / 2,
            values: sample.repeat(batch),
        }
    }

    /// `forward`: the cos/sin tables of `coords`.
    pub fn forward(&self, coords: &Coords, device: &Device) -> Result<RotaryEmb> {
        let axes = coords.axes;
        if axes == 0 || axes > self.max_positions.len() {
            candle_core::bail!(
                "rotary coordinates with {axes} axes; this embedding has {} position axes",
                self.max_positions.len()
            );
        }
        let batch = if coords.shared_across_batch() {
            1
        } else {
            coords.batch
        };
        // The midpoint of each patch as a fraction of the axis, mapped to [-1, 1]:
        // `(coords_start + coords_end) / 2.0 / max_positions[i]`, then `grid * 2 - 1`.
        let mut grid = Vec::with_capacity(batch * coords.tokens * axes);
        for b in 0..batch {
            for t in 0..coords.tokens {
                for a in 0..axes {
                    let mid = (coords.at(b, a, t, 0) + coords.at(b, a, t, 1)) / 2.0;
                    grid.push((mid / self.max_positions[a] as f32) * 2.0 - 1.0);
                }
            }
        }
        Frequencies {
            dim: self.dim,
            theta: self.theta,
            double_precision: self.double_precision,
            rope_type: self.rope_type,
            heads: self.num_attention_heads,
        }
        .tables(grid, batch, coords.tokens, axes, device)
    }
}

/// `LTX2RotaryPosEmbed1d`: token `i` at `i / base_seq_len` mapped to [-1, 1], one axis over the
/// whole width.
#[derive(Debug, Clone)]
pub struct LTX2RotaryPosEmbed1d {
    pub dim: usize,
    pub base_seq_len: usize,
    pub theta: f64,
    pub double_precision: bool,
    pub rope_type: RopeType,
    pub num_attention_heads: usize,
}

impl LTX2RotaryPosEmbed1d {
    /// `forward`: the tables of `pos` tokens, shared by every sample of the batch.
    pub fn forward(&self, pos: usize, device: &Device) -> Result<RotaryEmb> {
        let base = self.base_seq_len as f32;
        let grid = (0..pos).map(|i| (i as f32 / base) * 2.0 - 1.0).collect();
        Frequencies {
            dim: self.dim,
            theta: self.theta,
            double_precision: self.double_precision,
            rope_type: self.rope_type,
            heads: self.num_attention_heads,
        }
        .tables(grid, 1, pos, 1, device)
    }
}

/// What both embeddings share once positions are in [-1, 1]: the rotated width, the frequencies
/// `theta^linspace(0, 1) · π/2` and the layout of the pairs.
struct Frequencies {
    dim: usize,
    theta: f64,
    double_precision: bool,
    rope_type: RopeType,
    heads: usize,
}

impl Frequencies {
    /// The tables of `grid`: `batch · tokens` rows of `axes` positions each.
    fn tables(
        &self,
        grid: Vec<f32>,
        batch: usize,
        tokens: usize,
        axes: usize,
        device: &Device,
    ) -> Result<RotaryEmb> {
        let steps = self.dim / (2 * axes);
        let freqs: Vec<f32> = if self.double_precision {
            linspace_f64(steps)
                .into_iter()
                .map(|e| (self.theta.powf(e) * std::f64::consts::PI / 2.0) as f32)
                .collect()
        } else {
            let theta = self.theta as f32;
            linspace_f32(steps)
                .into_iter()
                .map(|e| theta.powf(e) * (std::f64::consts::PI / 2.0) as f32)
                .collect()
        };
        let rows = batch * tokens;
        let grid = Tensor::from_vec(grid, (rows, 1, axes), device)?;
        let freqs = Tensor::from_vec(freqs, (1, steps, 1), device)?;
        // [rows, steps, axes] flattened: frequency-major, axis-minor, as the reference's
        // `transpose(-1, -2).flatten(2)`.
        let angles = grid.broadcast_mul(&freqs)?.reshape((rows, steps * axes))?;
        let (mut cos, mut sin) = (angles.cos()?, angles.sin()?);
        // Pairs past the frequencies are padded at the front with the identity rotation.
        let pad = self.dim / 2 - steps * axes;
        if pad > 0 {
            cos = Tensor::cat(&[Tensor::ones((rows, pad), DType::F32, device)?, cos], 1)?;
            sin = Tensor::cat(&[Tensor::zeros((rows, pad), DType::F32, device)?, sin], 1)?;
        }
        Ok(RotaryEmb {
            cos,
            sin,
            batch,
            tokens,
            rope_type: self.rope_type,
            heads: self.heads,
        })
    }
}
