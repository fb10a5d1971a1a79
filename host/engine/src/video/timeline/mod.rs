//! Timeline rendering for the shot stitcher: clips (trimmed, resampled to the output frame rate,
//! letterboxed to the output size) and title cards, joined by cuts, crossfades or fades through
//! black, encoded into one MP4 with the clips' sound mixed under the same edit, over optional
//! music (`sound.rs`).
//! Frames stream through: one clip is decoded at a time and only the frames a crossfade
//! overlaps are held, so memory does not grow with the length of the output.

mod sound;
mod text;

use super::h264::check_encodable_size;
use super::{Mp4Reader, Mp4Writer};
use anyhow::{Context, Result, ensure};
use image::{Rgb, RgbImage, imageops};
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// An edit: segments in order, with `transitions[i]` joining `segments[i]` and `segments[i + 1]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub segments: Vec<Segment>,
    #[serde(default)]
    pub transitions: Vec<Transition>,
    /// Embedded in the output next to the timeline itself (e.g. the storyboard it came from).
    #[serde(default)]
    pub metadata: serde_json::Value,
    /// Sound under the whole piece (a music bed), mixed with the clips' own.
    #[serde(default)]
    pub music: Option<Music>,
}

/// A WAV file played from the start of the piece under every segment, looped when shorter
/// than the piece and cut at its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Music {
    pub path: PathBuf,
    /// Gain, as a clip's volume.
    #[serde(default = "unity")]
    pub volume: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Segment {
    Clip(Clip),
    Title(TitleCard),
}

/// A video file, optionally trimmed. Frame trims count the source's own frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clip {
    pub path: PathBuf,
    /// First frame/time kept; the start when absent.
    #[serde(default)]
    pub trim_in: Option<Time>,
    /// Where the kept part ends (exclusive); the end when absent.
    #[serde(default)]
    pub trim_out: Option<Time>,
    /// Gain on the clip's sound: 1 as recorded, 0 muted, at most [`MAX_VOLUME`].
    #[serde(default = "unity")]
    pub volume: f32,
}

fn unity() -> f32 {
    1.0
}

/// Highest gain on a clip's or the music's sound (+12 dB).
pub const MAX_VOLUME: f32 = 4.0;

/// Whether `volume` is a gain the mixer takes: finite, from 0 to [`MAX_VOLUME`].
fn check_volume(volume: f32) -> Result<()> {
    ensure!(
        volume.is_finite() && (0.0..=MAX_VOLUME).contains(&volume),
        "volume {volume} is outside 0..{MAX_VOLUME}"
    );
    Ok(())
}

/// Centred, wrapped text on a solid background.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TitleCard {
    pub text: String,
    /// Frames count at the timeline's frame rate.
    pub duration: Time,
    #[serde(default = "black")]
    pub background: [u8; 3],
    #[serde(default = "white")]
    pub color: [u8; 3],
}

fn black() -> [u8; 3] {
    [0, 0, 0]
}

fn white() -> [u8; 3] {
    [255, 255, 255]
}

/// How one segment hands over to the next. Frame durations count at the timeline's frame rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Transition {
    Cut,
    /// The last `duration` frames of one segment blend into the first of the next (they overlap).
    Crossfade {
        duration: Time,
    },
    /// The first segment fades out to black over the first half of `duration`, the next fades
    /// in from black over the second half; nothing overlaps.
    FadeThroughBlack {
        duration: Time,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Time {
    Frames(u64),
    Seconds(f64),
}

impl Time {
    fn seconds(self, fps: f64) -> f64 {
        match self {
            Time::Frames(frames) => frames as f64 / fps,
            Time::Seconds(seconds) => seconds,
        }
    }

    fn frames(self, fps: u32) -> usize {
        match self {
            Time::Frames(frames) => frames as usize,
            Time::Seconds(seconds) => (seconds * f64::from(fps)).round().max(0.0) as usize,
        }
    }
}

/// Where each segment landed in the output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentSpan {
    pub start_frame: usize,
    pub frames: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenderReport {
    pub frames: usize,
    pub fps: u32,
    /// Seconds.
    pub duration: f64,
    pub segments: Vec<SegmentSpan>,
    /// The sound track's sample rate; `None` when neither a clip nor music has sound (the
    /// output is silent).
    pub sample_rate: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderProgress {
    /// Output frames encoded so far.
    pub frame: usize,
    pub total: usize,
    /// Index of the segment being decoded.
    pub segment: usize,
}

/// Returned (inside the `anyhow::Error`) when the progress callback asked to stop.
#[derive(Debug, thiserror::Error)]
#[error("rendering was cancelled")]
pub struct RenderCancelled;

/// A segment resolved against its source: how many output frames it yields and from where.
struct PlannedSegment {
    frames: usize,
    source: PlannedSource,
    /// Frames at the start blended with the previous segment's tail.
    crossfade_in: usize,
    crossfade_out: usize,
    fade_in: usize,
    fade_out: usize,
}

enum PlannedSource {
    Clip {
        path: PathBuf,
        start_s: f64,
        source_fps: f64,
        source_frames: usize,
        /// The clip's sound track (rate, channels) and the gain on it.
        sound: Option<(u32, u16)>,
        volume: f32,
    },
    Title(TitleCard),
}

/// Renders `timeline` to an MP4 at `out` (written atomically) and reports where segments landed.
pub fn render(
    timeline: &Timeline,
    out: &Path,
    progress: &mut dyn FnMut(&RenderProgress) -> ControlFlow<()>,
) -> Result<RenderReport> {
    let plan = plan(timeline)?;
    let music = sound::load_music(timeline)?;
    let report = report(timeline, &plan, music.as_ref());
    let mut writer = Mp4Writer::create(out, timeline.width, timeline.height, timeline.fps)?;
    if let Some(mix) =
        sound::mix(timeline, &plan, &report, music.as_ref()).context("mixing the sound")?
    {
        writer.set_audio(mix);
    }
    let mut held: Vec<RgbImage> = Vec::new();
    for (index, segment) in plan.iter().enumerate() {
        let mut next_held = Vec::with_capacity(segment.crossfade_out);
        let mut k = 0;
        let mut sink = |mut frame: RgbImage| -> Result<()> {
            if k < segment.fade_in {
                scale(&mut frame, k as f32 / segment.fade_in as f32);
            }
            let fade_start = segment.frames - segment.fade_out;
            if k >= fade_start {
                scale(
                    &mut frame,
                    1.0 - (k - fade_start + 1) as f32 / segment.fade_out as f32,
                );
            }
            if k < segment.crossfade_in {
                let t = (k + 1) as f32 / (segment.crossfade_in + 1) as f32;
                frame = blend(&held[k], &frame, t);
            }
            if k >= segment.frames - segment.crossfade_out {
                next_held.push(frame);
            } else {
                writer.push(&frame)?;
                let step = RenderProgress {
                    frame: writer.frames_written(),
                    total: report.frames,
                    segment: index,
                };
                if progress(&step).is_break() {
                    return Err(RenderCancelled.into());
                }
            }
            k += 1;
            Ok(())
        };
        produce(segment, timeline, &mut sink)
            .with_context(|| format!("rendering segment {index}"))?;
        held = next_held;
    }
    ensure!(
        held.is_empty(),
        "the last segment cannot end in a crossfade"
    );
    ensure!(
        writer.frames_written() == report.frames,
        "rendered {} frames but planned {}",
        writer.frames_written(),
        report.frames
    );
    let metadata = serde_json::json!({ "timeline": timeline });
    writer
        .finish(&metadata)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(report)
}

fn plan(timeline: &Timeline) -> Result<Vec<PlannedSegment>> {
    check_encodable_size(timeline.width, timeline.height).context("timeline output size")?;
    ensure!(
        timeline.fps > 0,
        "timeline frame rate must be at least 1 fps"
    );
    ensure!(
        !timeline.segments.is_empty(),
        "the timeline has no segments"
    );
    ensure!(
        timeline.transitions.len() + 1 == timeline.segments.len(),
        "{} segments need {} transitions between them, got {}",
        timeline.segments.len(),
        timeline.segments.len() - 1,
        timeline.transitions.len()
    );
    let mut plan = timeline
        .segments
        .iter()
        .enumerate()
        .map(|(index, segment)| {
            plan_segment(segment, timeline.fps).with_context(|| format!("segment {index}"))
        })
        .collect::<Result<Vec<_>>>()?;
    for (index, transition) in timeline.transitions.iter().enumerate() {
        match *transition {
            Transition::Cut => {}
            Transition::Crossfade { duration } => {
                let frames = duration.frames(timeline.fps);
                ensure!(
                    frames > 0,
                    "transition {index}: a crossfade needs at least one frame"
                );
                plan[index].crossfade_out = frames;
                plan[index + 1].crossfade_in = frames;
            }
            Transition::FadeThroughBlack { duration } => {
                let frames = duration.frames(timeline.fps);
                ensure!(
                    frames >= 2,
                    "transition {index}: a fade through black needs at least two frames"
                );
                plan[index].fade_out = frames.div_ceil(2);
                plan[index + 1].fade_in = frames / 2;
            }
        }
    }
    for (index, segment) in plan.iter().enumerate() {
        let head = segment.crossfade_in.max(segment.fade_in);
        let tail = segment.crossfade_out.max(segment.fade_out);
        ensure!(
            head + tail <= segment.frames,
            "segment {index} is {} frames long, too short for its transitions ({head} frames in, {tail} out)",
            segment.frames
        );
    }
    Ok(plan)
}

fn plan_segment(segment: &Segment, fps: u32) -> Result<PlannedSegment> {
    let (frames, source) = match segment {
        Segment::Title(card) => {
            let frames = card.duration.frames(fps);
            ensure!(frames > 0, "title card {:?} has no duration", card.text);
            (frames, PlannedSource::Title(card.clone()))
        }
        Segment::Clip(clip) => {
            let reader = Mp4Reader::open(&clip.path)?;
            check_volume(clip.volume).with_context(|| format!("clip {}", clip.path.display()))?;
            let source_fps = reader.fps;
            let length_s = reader.frame_count() as f64 / source_fps;
            let start_s = clip.trim_in.map_or(0.0, |t| t.seconds(source_fps));
            let end_s = clip.trim_out.map_or(length_s, |t| t.seconds(source_fps));
            // Half a source frame of slack absorbs rounding in seconds-based trims.
            let slack = 0.5 / source_fps;
            ensure!(
                start_s >= 0.0 && start_s < end_s && end_s <= length_s + slack,
                "clip {}: trim {start_s:.3}s..{end_s:.3}s is outside the clip's 0..{length_s:.3}s",
                clip.path.display()
            );
            let frames = ((end_s.min(length_s) - start_s) * f64::from(fps))
                .round()
                .max(1.0) as usize;
            (
                frames,
                PlannedSource::Clip {
                    path: clip.path.clone(),
                    start_s,
                    source_fps,
                    source_frames: reader.frame_count(),
                    sound: reader.audio.as_ref().map(|a| (a.sample_rate, a.channels)),
                    volume: clip.volume,
                },
            )
        }
    };
    Ok(PlannedSegment {
        frames,
        source,
        crossfade_in: 0,
        crossfade_out: 0,
        fade_in: 0,
        fade_out: 0,
    })
}

fn report(
    timeline: &Timeline,
    plan: &[PlannedSegment],
    music: Option<&super::Audio>,
) -> RenderReport {
    let mut segments = Vec::with_capacity(plan.len());
    let mut start = 0;
    for segment in plan {
        start -= segment.crossfade_in;
        segments.push(SegmentSpan {
            start_frame: start,
            frames: segment.frames,
        });
        start += segment.frames;
    }
    RenderReport {
        frames: start,
        fps: timeline.fps,
        duration: start as f64 / f64::from(timeline.fps),
        segments,
        sample_rate: sound::output_format(plan, music).map(|(rate, _)| rate),
    }
}

/// Feeds `segment.frames` output-sized frames to `sink`, decoding a clip front to back once.
fn produce(
    segment: &PlannedSegment,
    timeline: &Timeline,
    sink: &mut dyn FnMut(RgbImage) -> Result<()>,
) -> Result<()> {
    let (width, height) = (timeline.width, timeline.height);
    match &segment.source {
        PlannedSource::Title(card) => {
            let frame = text::title_card(card, width, height);
            for _ in 0..segment.frames {
                sink(frame.clone())?;
            }
        }
        PlannedSource::Clip {
            path,
            start_s,
            source_fps,
            source_frames,
            ..
        } => {
            // Output frame k shows the source frame on screen at start + k / fps.
            let source_index = |k: usize| {
                let t = start_s + k as f64 / f64::from(timeline.fps);
                ((t * source_fps + 1e-6).floor() as usize).min(source_frames - 1)
            };
            let mut reader = Mp4Reader::open(path)?;
            let first = source_index(0);
            let mut decoded = reader.frames_from(first)?;
            let mut current: Option<(usize, RgbImage)> = None;
            for k in 0..segment.frames {
                let wanted = source_index(k);
                while current.as_ref().is_none_or(|(i, _)| *i < wanted) {
                    let index = current.as_ref().map_or(first, |(i, _)| i + 1);
                    let frame = decoded.next().with_context(|| {
                        format!("{} ended before frame {index}", path.display())
                    })??;
                    current = Some((index, fit(frame, width, height)));
                }
                let (_, frame) = current.as_ref().expect("decoded above");
                sink(frame.clone())?;
            }
        }
    }
    Ok(())
}

/// Scales to fit inside `width`x`height` keeping the aspect ratio, centred on black bars.
fn fit(frame: RgbImage, width: u32, height: u32) -> RgbImage {
    if frame.dimensions() == (width, height) {
        return frame;
    }
    let scale = f64::min(
        f64::from(width) / f64::from(frame.width()),
        f64::from(height) / f64::from(frame.height()),
    );
    let scaled_w = ((f64::from(frame.width()) * scale).round() as u32).clamp(1, width);
    let scaled_h = ((f64::from(frame.height()) * scale).round() as u32).clamp(1, height);
    let scaled = imageops::resize(&frame, scaled_w, scaled_h, imageops::FilterType::CatmullRom);
    let mut canvas = RgbImage::from_pixel(width, height, Rgb([0, 0, 0]));
    imageops::replace(
        &mut canvas,
        &scaled,
        i64::from((width - scaled_w) / 2),
        i64::from((height - scaled_h) / 2),
    );
    canvas
}

/// Multiplies every channel by `factor` (towards black at 0).
fn scale(frame: &mut RgbImage, factor: f32) {
    for value in frame.iter_mut() {
        *value = (f32::from(*value) * factor).round() as u8;
    }
}

/// `from * (1 - t) + to * t`, per channel.
fn blend(from: &RgbImage, to: &RgbImage, t: f32) -> RgbImage {
    let mut out = to.clone();
    for (value, (a, b)) in out.iter_mut().zip(from.iter().zip(to.iter())) {
        *value = (f32::from(*a) * (1.0 - t) + f32::from(*b) * t).round() as u8;
    }
    out
}

/// Fails on timelines that cannot render, without decoding anything but clip headers.
pub fn validate(timeline: &Timeline) -> Result<RenderReport> {
    let plan = plan(timeline)?;
    let music = sound::load_music(timeline)?;
    Ok(report(timeline, &plan, music.as_ref()))
}
