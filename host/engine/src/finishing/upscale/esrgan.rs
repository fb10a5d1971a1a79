//! ESRGAN's RRDBNet (spandrel's `ESRGAN` architecture): the original ESRGAN, BSRGAN/RealSR,
//! Real-ESRGAN and ESRGAN+ checkpoints. Spandrel renames every key layout to the old one; here
//! each layout names its own tensors ([`Layout`]), so that errors quote the file's keys.
//!
//! ```text
//! [pixel_unshuffle] → conv_first → (+ RRDB × nb → trunk conv) → (nearest ×2 → conv → lrelu) × n
//!   → hr conv → lrelu → conv_last
//! ```

use super::layers::upsample_nearest_channels_last;
use super::{Network, Padding, dim, expect_rgb, seq_len};
use crate::finishing::section;
use crate::loader::StateDict;
use crate::models::conv::{Conv2d, to_channels_last};
use anyhow::{Result, bail};
use candle_core::Tensor;
use candle_nn::VarBuilder;
use videosdgx_kernels::{ChannelSlot, Epilogue};

const SLOPE: f32 = 0.2;
/// Each dense block and each RRDB adds its output scaled by this to its input.
const RESIDUAL_SCALE: f64 = 0.2;

/// The key layouts spandrel's detector accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Original ESRGAN and ESRGAN+: `model.0`, `model.1.sub.N.RDBM.convK.0`, `model.3`, …
    Old,
    /// BasicSR / Real-ESRGAN: `conv_first`, `body.N.rdbM.convK`, `conv_body`, `conv_up1`, …
    BasicSr,
    /// BSRGAN / RealSR: `conv_first`, `RRDB_trunk.N.RDBM.convK`, `trunk_conv`, `upconv1`, …
    Bsrgan,
}

impl Layout {
    fn detect(dict: &StateDict) -> Option<Self> {
        let all = |keys: &[&str]| keys.iter().all(|k| dict.contains(k));
        if all(&["model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight"])
            || all(&["model.0.weight", "model.1.sub.0.RDB1.conv1x1.weight"])
        {
            Some(Self::Old)
        } else if all(&[
            "conv_first.weight",
            "body.0.rdb1.conv1.weight",
            "conv_body.weight",
            "conv_last.weight",
        ]) {
            Some(Self::BasicSr)
        } else if all(&[
            "conv_first.weight",
            "RRDB_trunk.0.RDB1.conv1.weight",
            "trunk_conv.weight",
            "conv_last.weight",
        ]) {
            Some(Self::Bsrgan)
        } else {
            None
        }
    }

    fn conv_first(self) -> &'static str {
        match self {
            Self::Old => "model.0",
            Self::BasicSr | Self::Bsrgan => "conv_first",
        }
    }

    /// The blocks' common prefix (`{blocks}.N.…`).
    fn blocks(self) -> &'static str {
        match self {
            Self::Old => "model.1.sub",
            Self::BasicSr => "body",
            Self::Bsrgan => "RRDB_trunk",
        }
    }

    /// Convolution `conv` (1..=5) of dense block `rdb` (1..=3) of RRDB `block`.
    fn rdb_conv(self, block: usize, rdb: usize, conv: usize) -> String {
        let blocks = self.blocks();
        match self {
            Self::Old => format!("{blocks}.{block}.RDB{rdb}.conv{conv}.0"),
            Self::BasicSr => format!("{blocks}.{block}.rdb{rdb}.conv{conv}"),
            Self::Bsrgan => format!("{blocks}.{block}.RDB{rdb}.conv{conv}"),
        }
    }

    /// ESRGAN+'s extra 1×1 convolution, which only the old layout carries.
    fn conv1x1(self, block: usize, rdb: usize) -> Option<String> {
        (self == Self::Old).then(|| format!("{}.{block}.RDB{rdb}.conv1x1", self.blocks()))
    }

    fn trunk_conv(self, blocks: usize) -> String {
        match self {
            Self::Old => format!("model.1.sub.{blocks}"),
            Self::BasicSr => "conv_body".into(),
            Self::Bsrgan => "trunk_conv".into(),
        }
    }

    /// The number of ×2 upsampling stages: spandrel reads the old layout's sequence length
    /// (`model.0`, `model.1`, 3 modules per stage, then 4) and the highest `upconvN`/`conv_upN`
    /// of the others.
    fn upsample_stages(self, dict: &StateDict) -> usize {
        match self {
            Self::Old => seq_len(dict, "model").saturating_sub(5) / 3,
            Self::BasicSr | Self::Bsrgan => dict
                .keys()
                .iter()
                .filter_map(|k| {
                    let rest = k
                        .strip_prefix("upconv")
                        .or_else(|| k.strip_prefix("conv_up"))?;
                    let (digit, kind) = rest.split_at_checked(1)?;
                    matches!(kind, ".weight" | ".bias").then(|| digit.parse::<usize>().ok())?
                })
                .max()
                .unwrap_or(0),
        }
    }

    /// Upsampling convolution `stage` (1-based). The new layouts are read under either name.
    fn up_conv(self, dict: &StateDict, stage: usize) -> String {
        match self {
            Self::Old => format!("model.{}", 3 * stage),
            Self::BasicSr | Self::Bsrgan => {
                either(dict, format!("conv_up{stage}"), format!("upconv{stage}"))
            }
        }
    }

    fn hr_conv(self, dict: &StateDict, stages: usize) -> String {
        match self {
            Self::Old => format!("model.{}", 3 * stages + 2),
            Self::BasicSr | Self::Bsrgan => either(dict, "conv_hr".into(), "HRconv".into()),
        }
    }

    fn conv_last(self, stages: usize) -> String {
        match self {
            Self::Old => format!("model.{}", 3 * stages + 4),
            Self::BasicSr | Self::Bsrgan => "conv_last".into(),
        }
    }
}

/// `preferred` when the file has its weight, else `other` (whose absence the loader reports).
fn either(dict: &StateDict, preferred: String, other: String) -> String {
    if dict.contains(&format!("{preferred}.weight")) {
        preferred
    } else {
        other
    }
}

pub(super) fn detect(dict: &StateDict) -> bool {
    Layout::detect(dict).is_some()
}

/// Residual dense block: five convolutions, each fed every earlier output.
struct DenseBlock {
    convs: [Conv2d; 4],
    /// Its output is scaled by [`RESIDUAL_SCALE`]; the factor is folded into the weights.
    conv5: Conv2d,
    /// ESRGAN+: a 1×1 path from the input added to the second output, and that output added to
    /// the fourth.
    conv1x1: Option<Conv2d>,
}

impl DenseBlock {
    /// Channels last. Convolution k reads the block's input and outputs 1..k side by side on the
    /// channels ([`DenseInputs`]).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [conv1, conv2, conv3, conv4] = &self.convs;
        let leaky = Epilogue::leaky_relu(SLOPE);
        let mut inputs = DenseInputs::new(x, conv1.out_channels())?;
        inputs.append(x)?;
        let x1 = conv1.forward_channels_last(x, &leaky)?;
        let mut x2 = conv2.forward_channels_last(&inputs.append(&x1)?, &leaky)?;
        if let Some(conv1x1) = &self.conv1x1 {
            x2 = (x2 + conv1x1.forward_channels_last(x, &Epilogue::default())?)?;
        }
        let x3 = conv3.forward_channels_last(&inputs.append(&x2)?, &leaky)?;
        let mut x4 = conv4.forward_channels_last(&inputs.append(&x3)?, &leaky)?;
        if self.conv1x1.is_some() {
            x4 = (x4 + &x2)?;
        }
        Ok(self
            .conv5
            .forward_channels_last(&inputs.append(&x4)?, &Epilogue::default().with_residual(x))?)
    }
}

/// The inputs of a dense block's convolutions 2 to 5, each its own packed channels-last image in
/// one buffer (cuDNN's NHWC kernels take no channel prefix of a wider image): convolution k reads
/// the block's input and outputs 1 to k - 1. Each part is written once into every input that
/// reads it, in one pass.
struct DenseInputs {
    buffer: Tensor,
    /// Where each input starts in the buffer, and its channels.
    inputs: [(usize, usize); 4],
    /// `[B, H, W]`.
    pixels: (usize, usize, usize),
    written: usize,
}

impl DenseInputs {
    fn new(x: &Tensor, growth: usize) -> Result<Self> {
        let (b, h, w, c) = x.dims4()?;
        let area = b * h * w;
        let mut start = 0;
        let inputs = [1, 2, 3, 4].map(|k| {
            let input = (start, c + k * growth);
            start += area * input.1;
            input
        });
        // SAFETY: every input's channels are written (`append`) before its convolution reads it.
        let buffer = unsafe { Tensor::empty(start, x.dtype(), x.device())? };
        Ok(Self {
            buffer,
            inputs,
            pixels: (b, h, w),
            written: 0,
        })
    }

    /// Writes `part` beside the channels so far into every input that reads it; returns the
    /// channels so far as one packed image (the input they complete, or the first part itself).
    fn append(&mut self, part: &Tensor) -> Result<Tensor> {
        let slots: Vec<ChannelSlot> = self
            .inputs
            .iter()
            .filter(|&&(_, channels)| channels > self.written)
            .map(|&(start, pitch)| ChannelSlot {
                start,
                pitch,
                offset: self.written,
            })
            .collect();
        section("concat", part, || {
            crate::fused::scatter_channels(&self.buffer, part, &slots)
        })?;
        self.written += part.dim(3)?;
        let (b, h, w) = self.pixels;
        Ok(
            match self.inputs.iter().find(|&&(_, c)| c == self.written) {
                Some(&(start, c)) => self
                    .buffer
                    .narrow(0, start, b * h * w * c)?
                    .reshape((b, h, w, c))?,
                None => part.clone(),
            },
        )
    }
}

/// Residual in residual dense block: three dense blocks and a scaled skip.
struct Rrdb([DenseBlock; 3]);

impl Rrdb {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut out = x.clone();
        for block in &self.0 {
            out = block.forward(&out)?;
        }
        Ok(section("residual", x, || (out * RESIDUAL_SCALE)? + x)?)
    }
}

pub(super) struct Esrgan {
    /// Real-ESRGAN x2/x1: the input is pixel-unshuffled by this factor first.
    shuffle: Option<usize>,
    conv_first: Conv2d,
    blocks: Vec<Rrdb>,
    trunk_conv: Conv2d,
    up_convs: Vec<Conv2d>,
    hr_conv: Conv2d,
    conv_last: Conv2d,
    scale: usize,
}

impl Esrgan {
    pub(super) fn load(dict: &StateDict, vb: VarBuilder) -> Result<Self> {
        let Some(layout) = Layout::detect(dict) else {
            bail!("{}: not an ESRGAN state dict", dict.path().display());
        };
        let first = format!("{}.weight", layout.conv_first());
        let (num_filters, in_channels) = (dim(dict, &first, 0)?, dim(dict, &first, 1)?);
        let growth = dim(dict, &format!("{}.weight", layout.rdb_conv(0, 1, 1)), 0)?;
        // Blocks 0..nb; the old layout's trunk conv follows them in the same sequence.
        let num_blocks = match layout {
            Layout::Old => seq_len(dict, layout.blocks()).saturating_sub(1),
            Layout::BasicSr | Layout::Bsrgan => seq_len(dict, layout.blocks()),
        };
        let stages = layout.upsample_stages(dict);
        let conv_last_name = layout.conv_last(stages);
        let out_channels = dim(dict, &format!("{conv_last_name}.weight"), 0)?;

        // Spandrel's rule: 4× or 16× the output channels in means Real-ESRGAN's pixel unshuffle.
        let shuffle = [2, 4]
            .into_iter()
            .find(|f| in_channels == out_channels * f * f);
        let factor = shuffle.unwrap_or(1);
        expect_rgb(dict, in_channels / (factor * factor), out_channels)?;
        let net_scale = 1 << stages;
        if net_scale < factor {
            bail!(
                "{}: a ×{net_scale} network after a pixel unshuffle by {factor} would shrink the image",
                dict.path().display()
            );
        }

        let conv = |name: &str, i: usize, o: usize| Conv2d::load(vb.pp(name), i, o, 3, 1, true);
        let dense_block = |block: usize, rdb: usize| -> Result<DenseBlock> {
            let name = |c: usize| layout.rdb_conv(block, rdb, c);
            let convs = [
                conv(&name(1), num_filters, growth)?,
                conv(&name(2), num_filters + growth, growth)?,
                conv(&name(3), num_filters + 2 * growth, growth)?,
                conv(&name(4), num_filters + 3 * growth, growth)?,
            ];
            let conv5 =
                conv(&name(5), num_filters + 4 * growth, num_filters)?.scaled(RESIDUAL_SCALE)?;
            let conv1x1 = match layout.conv1x1(block, rdb) {
                Some(name) if dict.contains(&format!("{name}.weight")) => {
                    Some(Conv2d::load(vb.pp(name), num_filters, growth, 1, 1, false)?)
                }
                _ => None,
            };
            Ok(DenseBlock {
                convs,
                conv5,
                conv1x1,
            })
        };
        let blocks = (0..num_blocks)
            .map(|b| {
                Ok(Rrdb([
                    dense_block(b, 1)?,
                    dense_block(b, 2)?,
                    dense_block(b, 3)?,
                ]))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            shuffle,
            conv_first: conv(layout.conv_first(), in_channels, num_filters)?,
            blocks,
            trunk_conv: conv(&layout.trunk_conv(num_blocks), num_filters, num_filters)?,
            up_convs: (1..=stages)
                .map(|s| conv(&layout.up_conv(dict, s), num_filters, num_filters))
                .collect::<candle_core::Result<Vec<_>>>()?,
            hr_conv: conv(&layout.hr_conv(dict, stages), num_filters, num_filters)?,
            conv_last: conv(&conv_last_name, num_filters, out_channels)?,
            scale: net_scale / factor,
        })
    }
}

impl Network for Esrgan {
    fn scale(&self) -> usize {
        self.scale
    }

    /// Spandrel asks for 2 pixels, and a multiple of 4 when the input is pixel-unshuffled.
    fn padding(&self) -> Padding {
        let multiple_of = if self.shuffle.is_some() { 4 } else { 1 };
        Padding {
            minimum: 2usize.next_multiple_of(multiple_of),
            multiple_of,
            window: 1,
        }
    }

    /// One pixel per 3×3 convolution, counted at the network's input resolution (those after
    /// upsampling see less), times the unshuffle factor.
    fn receptive_radius(&self) -> usize {
        let convs = 2 + 15 * self.blocks.len() + self.up_convs.len() + 2;
        convs * self.shuffle.unwrap_or(1)
    }

    /// Channels last from the first convolution's input to the last one's output.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = match self.shuffle {
            Some(factor) => candle_nn::ops::pixel_unshuffle(x, factor)?,
            None => x.clone(),
        };
        let no_epilogue = Epilogue::default();
        let leaky = Epilogue::leaky_relu(SLOPE);
        let features = self
            .conv_first
            .forward_channels_last(&to_channels_last(&x)?, &no_epilogue)?;
        let mut trunk = features.clone();
        for block in &self.blocks {
            trunk = block.forward(&trunk)?;
        }
        let mut x = self
            .trunk_conv
            .forward_channels_last(&trunk, &Epilogue::default().with_residual(&features))?;
        for conv in &self.up_convs {
            x = conv.forward_channels_last(&upsample_nearest_channels_last(&x, 2)?, &leaky)?;
        }
        let x = self.hr_conv.forward_channels_last(&x, &leaky)?;
        let x = self.conv_last.forward_channels_last(&x, &no_epilogue)?;
        Ok(section("layout", &x, || {
            x.permute((0, 3, 1, 2))?.contiguous()
        })?)
    }
}
