//! Single-image super-resolution models, loaded from the bare state dicts users download, their
//! architecture and sizes read from the keys and shapes as spandrel 0.4.2 reads them: ESRGAN
//! (RRDBNet, every key layout spandrel accepts, Real-ESRGAN's pixel-unshuffle inputs),
//! RealESRGAN Compact (SRVGGNetCompact) and SwinIR. [`Upscaler::upscale`] returns what spandrel's
//! `ImageModelDescriptor` returns: the input padded to the model's size requirements, the network,
//! the output clamped to [0, 1] and cropped back to `scale ×` the input.

mod compact;
mod esrgan;
mod layers;
mod swinir;

use crate::loader::StateDict;
use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, IndexOp, Tensor};
use std::path::{Path, PathBuf};

/// The architectures known here, by spandrel's names, in the order spandrel tries them.
pub const ARCHITECTURES: [&str; 3] = ["RealESRGAN Compact", "SwinIR", "ESRGAN"];

/// Context added around each tile is the network's receptive field, capped at this many input
/// pixels per side: real models reach hundreds of pixels (23 RRDB blocks are 347 convolutions)
/// whose far edge barely matters, while the tiny fixtures are covered exactly.
const MAX_OVERLAP: usize = 32;

/// Input pixels (tiles × padded tile area) one forward takes, about eight 256-pixel tiles: several
/// tiles per call keep a GPU busy, and the bound keeps activation memory independent of the frame
/// size (a ×4 model holds 16× this many pixels per feature map after upsampling).
const TILE_BATCH_PIXELS: usize = 1 << 19;

/// Which network a state dict holds, detected from its keys as spandrel does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Esrgan,
    Compact,
    SwinIr,
}

impl Architecture {
    /// The first architecture whose keys the state dict has, in spandrel's registry order.
    pub fn detect(dict: &StateDict) -> Option<Self> {
        if compact::detect(dict) {
            Some(Self::Compact)
        } else if swinir::detect(dict) {
            Some(Self::SwinIr)
        } else if esrgan::detect(dict) {
            Some(Self::Esrgan)
        } else {
            None
        }
    }

    /// Spandrel's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Esrgan => "ESRGAN",
            Self::Compact => "RealESRGAN Compact",
            Self::SwinIr => "SwinIR",
        }
    }
}

/// How an input is padded before the network: spandrel's `SizeRequirements` (reflect, then
/// replicate beyond what reflection reaches) and the network's own reflect padding to a multiple
/// (SwinIR's window).
#[derive(Debug, Clone, Copy)]
struct Padding {
    minimum: usize,
    multiple_of: usize,
    window: usize,
}

impl Padding {
    const NONE: Self = Self {
        minimum: 0,
        multiple_of: 1,
        window: 1,
    };
}

/// What [`Upscaler`] needs of a network.
trait Network: Send + Sync {
    /// The network on an input already padded as [`Network::padding`] asks.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    fn padding(&self) -> Padding;
    /// How far (input pixels) an output pixel sees, over-estimated.
    fn receptive_radius(&self) -> usize;
    fn scale(&self) -> usize;
}

/// An upscaling model, ready to run on one device in one dtype.
pub struct Upscaler {
    net: Box<dyn Network>,
    architecture: Architecture,
    path: PathBuf,
    device: Device,
    dtype: DType,
}

impl Upscaler {
    /// Reads the state dict at `path` (safetensors or a PyTorch checkpoint) and builds the
    /// network its keys describe, in `dtype` on `device`.
    pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let dict = StateDict::open(path)?;
        Self::from_state_dict(&dict, device, dtype)
    }

    /// The network an opened state dict describes (the file is read once when the caller
    /// detected the kind of model first).
    pub fn from_state_dict(dict: &StateDict, device: &Device, dtype: DType) -> Result<Self> {
        let path = dict.path();
        let Some(architecture) = Architecture::detect(dict) else {
            bail!(
                "{}: not an upscaler this build knows; its keys match none of {}",
                path.display(),
                ARCHITECTURES.join(", ")
            );
        };
        let vb = dict.var_builder(dtype, device);
        let net = match architecture {
            Architecture::Esrgan => {
                esrgan::Esrgan::load(dict, vb).map(|n| Box::new(n) as Box<dyn Network>)
            }
            Architecture::Compact => compact::Compact::load(dict, vb).map(|n| Box::new(n) as _),
            Architecture::SwinIr => swinir::SwinIr::load(dict, vb).map(|n| Box::new(n) as _),
        }
        .with_context(|| format!("loading {} from {}", architecture.name(), path.display()))?;
        Ok(Self {
            net,
            architecture,
            path: path.to_path_buf(),
            device: device.clone(),
            dtype,
        })
    }

    /// Spandrel's architecture name: `ESRGAN`, `RealESRGAN Compact` or `SwinIR`.
    pub fn architecture(&self) -> &'static str {
        self.architecture.name()
    }

    /// Output size over input size (1 for restoration models).
    pub fn scale(&self) -> usize {
        self.net.scale()
    }

    /// Upscales `image`, f32 `[B, 3, H, W]` in [0, 1] on any device, to f32
    /// `[B, 3, H·scale, W·scale]` on the model's device: what spandrel's `ImageModelDescriptor`
    /// returns for it. With `tile = Some(n)` the frame goes through in tiles of `n × n` input
    /// pixels (rounded up to the model's alignment), each with the receptive field around it (at
    /// most 32 pixels a side) and centre-cropped, several tiles per forward; memory
    /// then depends on the tile, not the frame.
    pub fn upscale(&self, image: &Tensor, tile: Option<usize>) -> Result<Tensor> {
        let (_, channels, h, w) = image.dims4().ok().unwrap_or_default();
        if image.rank() != 4 || channels != 3 || h == 0 || w == 0 {
            bail!(
                "{}: the upscaler takes an RGB image [batch, 3, height, width], got {:?}",
                self.path.display(),
                image.dims()
            );
        }
        if tile == Some(0) {
            bail!("a tile must be at least one pixel");
        }
        let x = image.to_device(&self.device)?.to_dtype(self.dtype)?;
        let x = self.pad(&x)?;
        let y = match tile {
            Some(tile) => self.tiled(&x, tile)?,
            None => self.net.forward(&x)?,
        };
        let scale = self.scale();
        Ok(super::section("output", &y, || {
            // Bounds made on the device: candle's scalar clamp uploads them, which drains the
            // stream once per call.
            let y = y.narrow(2, 0, h * scale)?.narrow(3, 0, w * scale)?;
            super::resample::clamp(&y, 0.0, 1.0)?.to_dtype(DType::F32)
        })?)
    }

    fn pad(&self, x: &Tensor) -> Result<Tensor> {
        let p = self.net.padding();
        let (_, _, h, w) = x.dims4()?;
        let target = |size: usize| size.max(p.minimum).next_multiple_of(p.multiple_of);
        let x = layers::pad_reflect_then_replicate(x, target(h) - h, target(w) - w)?;
        let (_, _, h, w) = x.dims4()?;
        let to_window = |size: usize| size.next_multiple_of(p.window) - size;
        Ok(layers::pad_reflect_then_replicate(
            &x,
            to_window(h),
            to_window(w),
        )?)
    }

    /// The network over `x` (already padded) in tiles; see [`Self::upscale`].
    fn tiled(&self, x: &Tensor, tile: usize) -> Result<Tensor> {
        let (batch, _, h, w) = x.dims4()?;
        let p = self.net.padding();
        // Tiles start on the grid the padded frame is aligned to, so each sees the same
        // pixel-unshuffle cells and attention windows as the whole frame.
        let align = lcm(p.multiple_of, p.window);
        let tile = tile.next_multiple_of(align);
        let overlap = self
            .net
            .receptive_radius()
            .min(MAX_OVERLAP)
            .next_multiple_of(align);
        let rows = spans(h, tile, overlap);
        let cols = spans(w, tile, overlap);
        let (box_h, box_w) = (rows[0].box_len, cols[0].box_len);
        let scale = self.scale();

        let (n_rows, n_cols) = (rows.len(), cols.len());
        let jobs: Vec<(usize, usize, usize)> = (0..batch)
            .flat_map(|b| (0..n_rows).flat_map(move |r| (0..n_cols).map(move |c| (b, r, c))))
            .collect();
        let per_forward = (TILE_BATCH_PIXELS / (box_h * box_w)).max(1);
        let mut cores = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(per_forward) {
            let boxes = chunk
                .iter()
                .map(|&(b, r, c)| {
                    x.i(b..b + 1)?.narrow(2, rows[r].box_start, box_h)?.narrow(
                        3,
                        cols[c].box_start,
                        box_w,
                    )
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let out = self.net.forward(&Tensor::cat(&boxes, 0)?)?;
            for (i, &(_, r, c)) in chunk.iter().enumerate() {
                let (row, col) = (&rows[r], &cols[c]);
                // Copied out, so that the chunk's boxes are freed before the next forward.
                cores.push(
                    out.i(i..i + 1)?
                        .narrow(2, (row.start - row.box_start) * scale, row.len * scale)?
                        .narrow(3, (col.start - col.box_start) * scale, col.len * scale)?
                        .contiguous()?,
                );
            }
        }
        // `jobs` is batch-major, then row, then column: stitch columns, rows, then the batch.
        let stitched_rows = cores
            .chunks(cols.len())
            .map(|row| Tensor::cat(row, 3))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let images = stitched_rows
            .chunks(rows.len())
            .map(|image| Tensor::cat(image, 2))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&images, 0)?)
    }
}

/// One tile along one axis: the core it contributes `[start, start + len)` and the box the
/// network sees, `[box_start, box_start + box_len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: usize,
    len: usize,
    box_start: usize,
    box_len: usize,
}

/// Tiles of `tile` over `size` pixels, each box extending `overlap` beyond its core. Every box
/// has the same length (shifted inwards at the edges, where the frame's own border is the true
/// edge), so that all tiles batch together; starts stay multiples of `tile` and `overlap`.
fn spans(size: usize, tile: usize, overlap: usize) -> Vec<Span> {
    let box_len = (tile + 2 * overlap).min(size);
    (0..size)
        .step_by(tile)
        .map(|start| Span {
            start,
            len: tile.min(size - start),
            box_start: start.saturating_sub(overlap).min(size - box_len),
            box_len,
        })
        .collect()
}

fn lcm(a: usize, b: usize) -> usize {
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    a / gcd(a, b) * b
}

/// The length of a `prefix.N.…` sequence of modules (spandrel's `get_seq_len`).
fn seq_len(dict: &StateDict, prefix: &str) -> usize {
    let prefix = format!("{prefix}.");
    dict.keys()
        .iter()
        .filter_map(|k| {
            k.strip_prefix(&prefix)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

/// Dimension `axis` of tensor `name`, or an error naming the file and the tensor.
fn dim(dict: &StateDict, name: &str, axis: usize) -> Result<usize> {
    let shape = dict.shape(name)?;
    shape.get(axis).copied().with_context(|| {
        format!(
            "{}: tensor `{name}` has shape {shape:?}, expected at least {} dimensions",
            dict.path().display(),
            axis + 1
        )
    })
}

/// Fails unless the model maps RGB to RGB, the only images the studio has.
fn expect_rgb(dict: &StateDict, in_channels: usize, out_channels: usize) -> Result<()> {
    if in_channels != 3 || out_channels != 3 {
        bail!(
            "{}: the model maps {in_channels} channels to {out_channels}; only RGB models (3 to 3) are supported",
            dict.path().display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_the_axis_once_with_equal_boxes() {
        for (size, tile, overlap) in [(60, 8, 20), (10, 16, 4), (64, 16, 0), (23, 4, 3)] {
            let spans = spans(size, tile, overlap);
            let mut next = 0;
            for s in &spans {
                assert_eq!(s.start, next);
                assert_eq!(s.box_len, spans[0].box_len);
                assert!(s.box_start + s.box_len <= size);
                // The core keeps `overlap` of context on each side the frame does not end.
                assert!(s.box_start == 0 || s.start - s.box_start >= overlap);
                let (end, box_end) = (s.start + s.len, s.box_start + s.box_len);
                assert!(box_end == size || box_end - end >= overlap);
                next = end;
            }
            assert_eq!(next, size);
        }
    }

    #[test]
    fn lcm_of_alignments() {
        assert_eq!(lcm(4, 8), 8);
        assert_eq!(lcm(1, 7), 7);
        assert_eq!(lcm(4, 7), 28);
    }
}
