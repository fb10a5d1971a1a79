//! The streaming finish: a generated clip becomes the delivered file in one pass over its
//! frames. Source frames are decoded as they are needed (a window of two is kept: the pair an
//! in-between frame is drawn from), new frames are interpolated with RIFE where the frame plan
//! asks for them (never across a scene cut: the nearer source frame is repeated there), batches
//! of frames are upscaled with the model, resized on the device to fit the target keeping their
//! aspect (black bars where it differs) and encoded as they come. Memory is bounded by one batch
//! at the output size, never the whole clip.
//!
//! Targets are what users type (`4k24`, `1080p30`, `x2`, `1920x1080@24`); the grammar is
//! [`FinishTarget`]'s and docs/finishing.md's.

use super::interpolate::{PlannedFrame, Retime, Rife, plan_frames};
use super::scene_cut::is_scene_cut;
use super::upscale::Upscaler;
use crate::video::{BackgroundMp4Writer, Mp4Reader, Mp4Writer, check_encodable_size, level_name};
use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Named output sizes, landscape; a portrait source gets them turned (2160x3840 for `4k`).
const NAMED_SIZES: [(&str, u32, u32); 5] = [
    ("4k", 3840, 2160),
    ("2160p", 3840, 2160),
    ("1440p", 2560, 1440),
    ("1080p", 1920, 1080),
    ("720p", 1280, 720),
];
/// Output frame rates a target may ask for; the MP4 writer's clock counts whole frames per second.
const MAX_FPS: u32 = 120;
/// Most a target may multiply the frame rate by: beyond 8 RIFE invents most of the picture.
const MAX_MULTIPLE: u32 = 8;
/// Frames upscaled per model call: enough to keep a GPU busy, few enough that a 4K batch
/// (4 x 3 x 3840 x 2160 f32, about 400 MB) fits beside the model.
const BATCH_FRAMES: usize = 4;

const ACCEPTED: &str = "a size (4k, 2160p, 1440p, 1080p, 720p or WIDTHxHEIGHT such as 1920x1080), \
optionally followed by a frame rate (4k24, 1080p30, 1920x1080@24) or a multiple of the \
source's rate (4kx2, 1920x1080@x2); or a rate alone (x2, @24)";

/// How the output's frame rate is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateTarget {
    /// Frames per second, whole numbers 1..=120.
    Fps(u32),
    /// The source's rate times this (2..=8).
    Multiple(u32),
}

/// What a finish delivers: a size, a frame rate, or both (what is not named stays the
/// source's).
///
/// Grammar (case-insensitive, spaces ignored):
/// ```text
/// target := size [ "@" rate ] | named-size ( fps | "x" n ) | "x" n | "@" rate
/// size   := "4k" | "2160p" | "1440p" | "1080p" | "720p" | width "x" height
/// rate   := fps | "x" n
/// ```
/// `fps` is a whole number from 1 to 120, `n` from 2 to 8, width and height even and at most
/// 3840x2160 (H.264's limit).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FinishTarget {
    /// Width and height; `None` keeps the source's size.
    pub size: Option<TargetSize>,
    /// `None` keeps the source's frame rate.
    pub rate: Option<RateTarget>,
}

/// An output size, and whether it was named (named sizes follow the source's orientation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetSize {
    pub width: u32,
    pub height: u32,
    /// `4k`, `1080p`, ... as typed; `None` for an exact `WxH`.
    pub named: Option<&'static str>,
}

impl TargetSize {
    /// The size for a source of `width`x`height`: a named size turned for portrait sources.
    pub fn for_source(&self, width: u32, height: u32) -> (u32, u32) {
        if self.named.is_some() && height > width {
            (self.height, self.width)
        } else {
            (self.width, self.height)
        }
    }
}

impl FromStr for FinishTarget {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        let typed: String = text
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        let unknown = || anyhow::anyhow!("unknown finish target `{text}`: use {ACCEPTED}");
        if typed.is_empty() {
            bail!("the finish target is empty: use {ACCEPTED}");
        }
        let (size_text, rate_text) = match typed.split_once('@') {
            Some((size, rate)) => (size, Some(rate)),
            None => (typed.as_str(), None),
        };
        let (size, rate) = if size_text.is_empty() {
            (None, rate_text)
        } else if let Some(rest) = size_text.strip_prefix('x')
            && rate_text.is_none()
            && !rest.contains('x')
        {
            (None, Some(size_text))
        } else if let Some((name, width, height)) = NAMED_SIZES
            .iter()
            .find(|(name, _, _)| size_text.starts_with(name))
        {
            let rest = &size_text[name.len()..];
            let rate = match (rest.is_empty(), rate_text) {
                (true, rate) => rate,
                (false, None) => Some(rest),
                (false, Some(_)) => return Err(unknown()),
            };
            let size = TargetSize {
                width: *width,
                height: *height,
                named: Some(name),
            };
            (Some(size), rate)
        } else {
            let (width, height) = size_text.split_once('x').ok_or_else(unknown)?;
            let parse = |n: &str| n.parse::<u32>().map_err(|_| unknown());
            let (width, height) = (parse(width)?, parse(height)?);
            // One message, not a context chain: serde shows only the outermost line.
            check_encodable_size(width, height)
                .map_err(|e| anyhow::anyhow!("finish target `{text}`: {e}"))?;
            let size = TargetSize {
                width,
                height,
                named: None,
            };
            (Some(size), rate_text)
        };
        let rate = rate.map(|r| parse_rate(text, r)).transpose()?;
        if size.is_none() && rate.is_none() {
            return Err(unknown());
        }
        Ok(FinishTarget { size, rate })
    }
}

fn parse_rate(text: &str, rate: &str) -> Result<RateTarget> {
    if let Some(multiple) = rate.strip_prefix('x') {
        let n: u32 = multiple.parse().map_err(|_| {
            anyhow::anyhow!(
                "finish target `{text}`: `x{multiple}` is not a multiple: use x2 to x{MAX_MULTIPLE}"
            )
        })?;
        ensure!(
            (2..=MAX_MULTIPLE).contains(&n),
            "finish target `{text}`: the frame rate can be multiplied by 2 to {MAX_MULTIPLE}, not {n}"
        );
        return Ok(RateTarget::Multiple(n));
    }
    let fps = rate.strip_suffix("fps").unwrap_or(rate);
    let fps: u32 = fps.parse().map_err(|_| {
        anyhow::anyhow!(
            "unknown finish target `{text}`: `{rate}` is not a frame rate; use {ACCEPTED}"
        )
    })?;
    ensure!(
        (1..=MAX_FPS).contains(&fps),
        "finish target `{text}`: the frame rate must be 1 to {MAX_FPS} fps, not {fps}"
    );
    Ok(RateTarget::Fps(fps))
}

impl TryFrom<String> for FinishTarget {
    type Error = anyhow::Error;

    fn try_from(text: String) -> Result<Self> {
        text.parse()
    }
}

impl From<FinishTarget> for String {
    fn from(target: FinishTarget) -> String {
        target.to_string()
    }
}

impl fmt::Display for FinishTarget {
    /// The canonical spelling, which parses back to the same target.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.size {
            Some(TargetSize {
                named: Some(name), ..
            }) => f.write_str(name)?,
            Some(size) => write!(f, "{}x{}", size.width, size.height)?,
            None => {}
        }
        match self.rate {
            Some(RateTarget::Fps(fps)) => write!(f, "@{fps}"),
            Some(RateTarget::Multiple(n)) if self.size.is_none() => write!(f, "x{n}"),
            Some(RateTarget::Multiple(n)) => write!(f, "@x{n}"),
            None => Ok(()),
        }
    }
}

/// A finish to run: the target and the model files that reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinishSpec {
    pub target: FinishTarget,
    /// An upscaler state dict (ESRGAN, Real-ESRGAN, Compact, SwinIR); needed when the output
    /// is larger than the source.
    pub upscaler: Option<PathBuf>,
    /// A RIFE v4.x flownet; needed when the frame rate rises.
    pub interpolator: Option<PathBuf>,
    /// Upscale in tiles of this many pixels a side (bounds the model's memory); whole frames
    /// when absent.
    pub tile: Option<usize>,
}

impl FinishSpec {
    pub fn new(target: FinishTarget) -> FinishSpec {
        FinishSpec {
            target,
            upscaler: None,
            interpolator: None,
            tile: None,
        }
    }
}

/// The loaded models of a [`FinishSpec`].
#[derive(Default)]
pub struct FinishModels {
    pub upscaler: Option<Upscaler>,
    pub interpolator: Option<Rife>,
}

impl FinishModels {
    /// Loads the spec's model files onto `device` in `dtype` (bf16 on CUDA).
    pub fn load(spec: &FinishSpec, device: &Device, dtype: DType) -> Result<FinishModels> {
        let upscaler = spec
            .upscaler
            .as_deref()
            .map(|path| {
                Upscaler::load(path, device, dtype)
                    .with_context(|| format!("loading upscaler {}", path.display()))
            })
            .transpose()?;
        let interpolator = spec
            .interpolator
            .as_deref()
            .map(|path| {
                Rife::load(path, device, dtype)
                    .with_context(|| format!("loading RIFE flownet {}", path.display()))
            })
            .transpose()?;
        Ok(FinishModels {
            upscaler,
            interpolator,
        })
    }
}

/// A source clip as the plan sees it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClipShape {
    pub width: u32,
    pub height: u32,
    pub frames: usize,
    pub fps: f64,
}

/// What a finish will do to a clip, decided before any frame is decoded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FinishPlan {
    pub source: ClipShape,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// The picture inside the frame: the source scaled to fit, keeping its aspect.
    pub content_width: u32,
    pub content_height: u32,
    /// Whether the picture grows (the upscaler runs).
    pub upscale: bool,
    /// Every output frame, in order.
    #[serde(skip)]
    pub frames: Vec<PlannedFrame>,
}

impl FinishPlan {
    pub fn new(source: ClipShape, target: &FinishTarget) -> Result<FinishPlan> {
        ensure!(source.frames > 0, "the source clip has no frames");
        ensure!(
            source.fps.is_finite() && source.fps > 0.0,
            "the source clip's frame rate is {}",
            source.fps
        );
        let (width, height) = match target.size {
            Some(size) => size.for_source(source.width, source.height),
            None => (source.width, source.height),
        };
        let retime = match target.rate {
            Some(RateTarget::Fps(fps)) if f64::from(fps) != source.fps.round() => {
                Some(Retime::Fps(f64::from(fps)))
            }
            Some(RateTarget::Multiple(n)) => Some(Retime::Multiple(n)),
            _ => None,
        };
        let (frames, fps) = match retime {
            Some(retime) => {
                let plan = plan_frames(source.frames, source.fps, retime)?;
                (plan.frames, plan.fps)
            }
            None => (
                (0..source.frames).map(PlannedFrame::Source).collect(),
                source.fps,
            ),
        };
        let fps = fps.round() as u32;
        ensure!(
            (1..=MAX_FPS).contains(&fps),
            "the output would run at {fps} fps; at most {MAX_FPS} fps can be written"
        );
        check_encodable_size(width, height)?;
        level_name(width, height, fps)?;
        let (content_width, content_height) =
            fit_inside(source.width, source.height, width, height);
        Ok(FinishPlan {
            source,
            width,
            height,
            fps,
            content_width,
            content_height,
            upscale: content_width > source.width || content_height > source.height,
            frames,
        })
    }

    /// Whether any output frame is drawn between two source frames (RIFE runs).
    pub fn interpolates(&self) -> bool {
        self.frames
            .iter()
            .any(|f| matches!(f, PlannedFrame::Between { .. }))
    }

    /// An error naming what is missing when `models` cannot carry out this plan.
    pub fn check_models(&self, has_upscaler: bool, has_interpolator: bool) -> Result<()> {
        ensure!(
            !self.upscale || has_upscaler,
            "finishing {}x{} to {}x{} needs an upscaler model (Real-ESRGAN, Compact or SwinIR) \
             under models/finishing/",
            self.source.width,
            self.source.height,
            self.width,
            self.height
        );
        ensure!(
            !self.interpolates() || has_interpolator,
            "finishing {} fps to {} fps needs a RIFE flownet (v4.x) under models/finishing/",
            self.source.fps,
            self.fps
        );
        Ok(())
    }
}

/// The largest `width`x`height` scaled uniformly inside `max_width`x`max_height`, in even
/// pixels (4:2:0 needs them even) and at least 2x2.
fn fit_inside(width: u32, height: u32, max_width: u32, max_height: u32) -> (u32, u32) {
    let scale =
        (f64::from(max_width) / f64::from(width)).min(f64::from(max_height) / f64::from(height));
    let even = |v: f64, max: u32| (((v / 2.0).round() as u32) * 2).clamp(2, max);
    (
        even(f64::from(width) * scale, max_width),
        even(f64::from(height) * scale, max_height),
    )
}

/// Seconds spent in each stage of a finish, for the bench and the job's result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageTimings {
    pub decode_s: f64,
    pub interpolate_s: f64,
    pub upscale_s: f64,
    pub resize_s: f64,
    /// Time the finish waited for the H.264 coder, which codes on threads of its own while the
    /// next frames are made (the last groups after the last frame).
    pub encode_s: f64,
    pub total_s: f64,
}

/// What a finish made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FinishReport {
    #[serde(flatten)]
    pub plan: FinishPlan,
    pub frames: usize,
    /// The upscaler's architecture and scale, when it ran.
    pub upscaler: Option<String>,
    /// The RIFE version, when it ran.
    pub interpolator: Option<String>,
    /// Frames drawn by RIFE.
    pub interpolated: usize,
    /// In-between frames that fell on a scene cut and repeat the nearer source frame instead.
    pub held_at_cuts: usize,
    pub timings: StageTimings,
}

/// Where a finish is: `frame` of `total` output frames made and handed to the coder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FinishProgress {
    pub frame: usize,
    pub total: usize,
}

/// A finish stopped by its progress callback; nothing was written.
#[derive(Debug, thiserror::Error)]
#[error("finishing was cancelled")]
pub struct FinishCancelled;

/// Finishes `input` into `output` (an H.264 MP4 carrying `metadata`). `progress` hears every
/// frame handed to the coder; `Break` stops the finish at the end of the batch, with [`FinishCancelled`].
/// The output appears complete or not at all (the writer renames a finished temporary file).
pub fn finish_video(
    input: &Path,
    output: &Path,
    spec: &FinishSpec,
    models: &FinishModels,
    metadata: &serde_json::Value,
    device: &Device,
    progress: &mut dyn FnMut(FinishProgress) -> ControlFlow<()>,
) -> Result<FinishReport> {
    let started = Instant::now();
    let mut reader = Mp4Reader::open(input)?;
    let source = ClipShape {
        width: reader.width,
        height: reader.height,
        frames: reader.frame_count(),
        fps: reader.fps,
    };
    let plan = FinishPlan::new(source, &spec.target)?;
    plan.check_models(models.upscaler.is_some(), models.interpolator.is_some())?;
    let upscaler = models.upscaler.as_ref().filter(|_| plan.upscale);
    let mut stages = Stages::new(device);
    let mut writer = Mp4Writer::create(output, plan.width, plan.height, plan.fps)?;
    // Finishing changes pictures, never time: the sound is carried over as it is.
    if let Some(sound) = reader.read_audio().context("the source's sound track")? {
        writer.set_audio(sound);
    }
    let mut writer = BackgroundMp4Writer::start(writer)?;
    let mut window = SourceWindow::new(reader.frames_from(0)?, device);
    let mut report = FinishReport {
        upscaler: upscaler.map(|u| format!("{} x{}", u.architecture(), u.scale())),
        interpolator: None,
        interpolated: 0,
        held_at_cuts: 0,
        frames: 0,
        timings: StageTimings::default(),
        plan: plan.clone(),
    };
    let total = plan.frames.len();
    let mut stop = false;
    for batch in plan.frames.chunks(BATCH_FRAMES) {
        let pictures = batch_pictures(
            batch,
            &mut window,
            models.interpolator.as_ref(),
            &mut stages,
            &mut report,
        )?;
        let pictures = match upscaler {
            Some(upscaler) => stages.time(Stage::Upscale, || {
                upscaler
                    .upscale(&pictures, spec.tile)
                    .context("upscaling a batch of frames")
            })?,
            None => pictures,
        };
        let frames = stages.time(Stage::Resize, || to_frames(&pictures, &plan))?;
        for frame in frames {
            stages.time(Stage::Encode, || writer.push(frame))?;
            report.frames += 1;
            let at = FinishProgress {
                frame: report.frames,
                total,
            };
            stop |= progress(at).is_break();
        }
        if stop {
            return Err(FinishCancelled.into());
        }
    }
    stages.time(Stage::Encode, || writer.finish(metadata))?;
    report.interpolator = models
        .interpolator
        .as_ref()
        .filter(|_| report.interpolated > 0)
        .map(|rife| format!("RIFE {}", rife.version()));
    report.timings = stages.timings;
    report.timings.decode_s = window.decode_time.as_secs_f64();
    report.timings.total_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The pictures of a batch of planned frames at the source size, `[B, 3, H, W]` f32 on the
/// device. Every in-between frame of the batch goes through RIFE in one call, each at its own
/// timestep; the source frames they need are held by their tensors, since the window moves on.
fn batch_pictures(
    batch: &[PlannedFrame],
    window: &mut SourceWindow<'_>,
    interpolator: Option<&Rife>,
    stages: &mut Stages,
    report: &mut FinishReport,
) -> Result<Tensor> {
    let mut pictures: Vec<Option<Tensor>> = Vec::with_capacity(batch.len());
    // (slot in the batch, left frame, right frame, timestep)
    let mut blends = Vec::new();
    for planned in batch {
        match *planned {
            PlannedFrame::Source(index) => pictures.push(Some(window.tensor(index)?)),
            PlannedFrame::Between { left, t } => {
                window.load_through(left + 1)?;
                // A blend across a cut is a double exposure of two shots: hold the nearer frame
                // (as `FramePlan::hold_across_cuts` does; cuts are found as frames stream in).
                if window.cut_after(left)? {
                    report.held_at_cuts += 1;
                    pictures.push(Some(window.tensor(if t <= 0.5 {
                        left
                    } else {
                        left + 1
                    })?));
                } else {
                    blends.push((
                        pictures.len(),
                        window.tensor(left)?,
                        window.tensor(left + 1)?,
                        t,
                    ));
                    pictures.push(None);
                }
            }
        }
    }
    if !blends.is_empty() {
        let rife = interpolator.context("the plan draws new frames but no RIFE model is loaded")?;
        let lefts: Vec<&Tensor> = blends.iter().map(|(_, a, _, _)| a).collect();
        let rights: Vec<&Tensor> = blends.iter().map(|(_, _, b, _)| b).collect();
        let timesteps: Vec<f32> = blends.iter().map(|(_, _, _, t)| *t).collect();
        let drawn = stages.time(Stage::Interpolate, || {
            rife.interpolate_each(
                &Tensor::cat(&lefts, 0)?,
                &Tensor::cat(&rights, 0)?,
                &timesteps,
            )
            .context("interpolating frames")
        })?;
        for (row, (slot, ..)) in blends.iter().enumerate() {
            pictures[*slot] = Some(drawn.narrow(0, row, 1)?);
        }
        report.interpolated += blends.len();
    }
    let pictures: Vec<Tensor> = pictures.into_iter().flatten().collect();
    Ok(Tensor::cat(&pictures, 0)?)
}

/// Output pictures `[B, 3, h, w]` in [0, 1] resized on the device to the plan's content size,
/// quantised there (a quarter of the bytes cross to the host, already interleaved), then framed
/// with black bars to the output size by row copies on the host.
fn to_frames(pictures: &Tensor, plan: &FinishPlan) -> Result<Vec<RgbImage>> {
    let (batch, _, height, width) = pictures.dims4()?;
    let (content_w, content_h) = (plan.content_width as usize, plan.content_height as usize);
    let pictures = if (width, height) == (content_w, content_h) {
        pictures.clone()
    } else {
        pictures.upsample_bilinear2d(content_h, content_w, false)?
    };
    // Every stage keeps values in [0, 1] (the upscaler clamps, RIFE blends convexly, bilinear
    // interpolates), so x * 255 + 0.5 truncated is the rounded byte without a clamp pass.
    let bytes = pictures
        .affine(255.0, 0.5)?
        .to_dtype(DType::U8)?
        .permute((0, 2, 3, 1))?
        .contiguous()?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<u8>()?;
    let (out_w, out_h) = (plan.width as usize, plan.height as usize);
    let (left, top) = ((out_w - content_w) / 2, (out_h - content_h) / 2);
    let row = content_w * 3;
    Ok(bytes
        .chunks_exact(content_h * row)
        .take(batch)
        .map(|content| {
            let mut frame = vec![0u8; out_w * out_h * 3];
            for (y, source) in content.chunks_exact(row).enumerate() {
                let start = ((top + y) * out_w + left) * 3;
                frame[start..start + row].copy_from_slice(source);
            }
            RgbImage::from_raw(out_w as u32, out_h as u32, frame).expect("sized from the plan")
        })
        .collect())
}

/// The decoded source frames a finish still needs: frames are decoded in order as the plan
/// reaches them and dropped once it has moved past, so two are held at most.
struct SourceWindow<'a> {
    frames: crate::video::FrameIter<'a>,
    device: Device,
    /// Index of the first held frame.
    first: usize,
    held: VecDeque<HeldFrame>,
    decode_time: Duration,
}

struct HeldFrame {
    image: RgbImage,
    tensor: Tensor,
    /// Whether a scene cut lies between this frame and the next, once known.
    cut_after: Option<bool>,
}

impl<'a> SourceWindow<'a> {
    fn new(frames: crate::video::FrameIter<'a>, device: &Device) -> Self {
        SourceWindow {
            frames,
            device: device.clone(),
            first: 0,
            held: VecDeque::new(),
            decode_time: Duration::ZERO,
        }
    }

    /// Decodes up to frame `index` and drops the frames before `index - 1`.
    fn load_through(&mut self, index: usize) -> Result<()> {
        while self.first + self.held.len() <= index {
            let started = Instant::now();
            let next = self.first + self.held.len();
            let image = self
                .frames
                .next()
                .with_context(|| format!("the source clip ended before frame {next}"))??;
            let (w, h) = image.dimensions();
            let tensor = Tensor::from_vec(
                image.as_raw().clone(),
                (h as usize, w as usize, 3),
                &self.device,
            )?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .to_dtype(DType::F32)?;
            let tensor = (tensor / 255.0)?;
            self.held.push_back(HeldFrame {
                image,
                tensor,
                cut_after: None,
            });
            self.decode_time += started.elapsed();
        }
        while self.first + 1 < index && !self.held.is_empty() {
            self.held.pop_front();
            self.first += 1;
        }
        Ok(())
    }

    fn held(&mut self, index: usize) -> Result<&mut HeldFrame> {
        self.load_through(index)?;
        ensure!(
            index >= self.first,
            "frame {index} was needed after the finish had moved past it"
        );
        Ok(&mut self.held[index - self.first])
    }

    fn tensor(&mut self, index: usize) -> Result<Tensor> {
        Ok(self.held(index)?.tensor.clone())
    }

    fn cut_after(&mut self, left: usize) -> Result<bool> {
        self.load_through(left + 1)?;
        let offset = left - self.first;
        if let Some(cut) = self.held[offset].cut_after {
            return Ok(cut);
        }
        let cut = is_scene_cut(&self.held[offset].image, &self.held[offset + 1].image);
        self.held[offset].cut_after = Some(cut);
        Ok(cut)
    }
}

#[derive(Clone, Copy)]
enum Stage {
    Interpolate,
    Upscale,
    Resize,
    Encode,
}

/// Wall-clock time per stage, with the device synchronised after each so that queued kernels
/// are charged to the stage that launched them.
struct Stages {
    device: Device,
    timings: StageTimings,
}

impl Stages {
    fn new(device: &Device) -> Stages {
        Stages {
            device: device.clone(),
            timings: StageTimings::default(),
        }
    }

    fn time<T>(&mut self, stage: Stage, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let started = Instant::now();
        let value = f()?;
        self.device.synchronize()?;
        let seconds = started.elapsed().as_secs_f64();
        let slot = match stage {
            Stage::Interpolate => &mut self.timings.interpolate_s,
            Stage::Upscale => &mut self.timings.upscale_s,
            Stage::Resize => &mut self.timings.resize_s,
            Stage::Encode => &mut self.timings.encode_s,
        };
        *slot += seconds;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(text: &str) -> FinishTarget {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e:#}"))
    }

    fn error(text: &str) -> String {
        format!("{:#}", text.parse::<FinishTarget>().unwrap_err())
    }

    #[test]
    fn targets_parse_as_typed() {
        let uhd = |rate| FinishTarget {
            size: Some(TargetSize {
                width: 3840,
                height: 2160,
                named: Some("4k"),
            }),
            rate,
        };
        assert_eq!(target("4k24"), uhd(Some(RateTarget::Fps(24))));
        assert_eq!(target("4K"), uhd(None));
        assert_eq!(target(" 4k @ 24 "), uhd(Some(RateTarget::Fps(24))));
        assert_eq!(target("4kx2"), uhd(Some(RateTarget::Multiple(2))));
        let hd = target("1080p30");
        assert_eq!(
            (hd.size.unwrap().width, hd.size.unwrap().height, hd.rate),
            (1920, 1080, Some(RateTarget::Fps(30)))
        );
        assert_eq!(target("720p").size.unwrap().height, 720);
        assert_eq!(target("1440p60").rate, Some(RateTarget::Fps(60)));
        let exact = target("1920x1080@24");
        assert_eq!(exact.size.unwrap().named, None);
        assert_eq!(exact.rate, Some(RateTarget::Fps(24)));
        assert_eq!(
            target("x2"),
            FinishTarget {
                size: None,
                rate: Some(RateTarget::Multiple(2))
            }
        );
        assert_eq!(target("@24fps").rate, Some(RateTarget::Fps(24)));
        assert_eq!(target("1280x720@x3").rate, Some(RateTarget::Multiple(3)));
        for typed in [
            "4k24",
            "4k",
            "x2",
            "1920x1080@24",
            "1280x720@x3",
            "1080p@x2",
            "@30",
        ] {
            let parsed = target(typed);
            assert_eq!(target(&parsed.to_string()), parsed, "{typed} -> {parsed}");
        }
    }

    #[test]
    fn bad_targets_say_what_is_accepted() {
        for (typed, expected) in [
            ("16k", "unknown finish target `16k`: use a size (4k, 2160p"),
            ("", "the finish target is empty"),
            ("4k24x", "`24x` is not a frame rate"),
            ("15360x8640", "exceeds the H.264 encoder's 3840x2160 limit"),
            ("1921x1080", "is odd"),
            ("x1", "multiplied by 2 to 8, not 1"),
            ("x9", "multiplied by 2 to 8, not 9"),
            ("4k500", "1 to 120 fps, not 500"),
            ("4k@24@30", "not a frame rate"),
            ("4k24@30", "unknown finish target"),
            ("fast", "unknown finish target `fast`"),
        ] {
            let err = error(typed);
            assert!(err.contains(expected), "{typed}: {err}");
        }
    }

    fn clip(width: u32, height: u32, frames: usize, fps: f64) -> ClipShape {
        ClipShape {
            width,
            height,
            frames,
            fps,
        }
    }

    #[test]
    fn plans_fit_the_picture_inside_the_target() {
        // 832x480 (26:15) into 16:9: full height, pillarboxed.
        let plan = FinishPlan::new(clip(832, 480, 81, 16.0), &target("4k24")).unwrap();
        assert_eq!((plan.width, plan.height, plan.fps), (3840, 2160, 24));
        assert_eq!((plan.content_width, plan.content_height), (3744, 2160));
        assert!(plan.upscale && plan.interpolates());
        // A portrait clip gets a portrait 4K frame.
        let plan = FinishPlan::new(clip(480, 832, 9, 16.0), &target("4k")).unwrap();
        assert_eq!((plan.width, plan.height, plan.fps), (2160, 3840, 16));
        assert!(!plan.interpolates());
        // Smaller target: no upscaler needed.
        let plan = FinishPlan::new(clip(1920, 1080, 9, 24.0), &target("720p")).unwrap();
        assert!(!plan.upscale);
        plan.check_models(false, false).unwrap();
        let plan = FinishPlan::new(clip(832, 480, 9, 16.0), &target("1080p24")).unwrap();
        let err = plan.check_models(false, true).unwrap_err().to_string();
        assert!(err.contains("needs an upscaler model"), "{err}");
        let err = plan.check_models(true, false).unwrap_err().to_string();
        assert!(err.contains("needs a RIFE flownet"), "{err}");
        let err = FinishPlan::new(clip(832, 480, 9, 24.0), &target("4k@x4"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than H.264 level 5.2 holds"), "{err}");
    }
}
