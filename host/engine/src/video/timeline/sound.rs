//! The timeline's sound: each clip's track, trimmed with the clip, resampled to one rate and
//! mixed under the same edit as the pictures. Clips without sound and title cards are silence;
//! crossfades are equal-gain ramps over the overlap, fades through black fade the sound too.

use super::{PlannedSegment, PlannedSource, RenderReport, Timeline};
use crate::video::{Audio, Mp4Reader};
use anyhow::{Context, Result};

/// The output's rate and channels: the highest among the clips with sound, `None` when none has.
pub(super) fn output_format(plan: &[PlannedSegment]) -> Option<(u32, u16)> {
    plan.iter()
        .filter_map(|segment| match segment.source {
            PlannedSource::Clip { sound, .. } => sound,
            PlannedSource::Title(_) => None,
        })
        .reduce(|(rate, channels), (r, c)| (rate.max(r), channels.max(c)))
}

/// Mixes the sound of every segment where `report` placed it; `None` when no clip has sound.
pub(super) fn mix(
    timeline: &Timeline,
    plan: &[PlannedSegment],
    report: &RenderReport,
) -> Result<Option<Audio>> {
    let Some((rate, channels)) = output_format(plan) else {
        return Ok(None);
    };
    let fps = f64::from(timeline.fps);
    let to_samples = |frames: usize| (frames as f64 / fps * f64::from(rate)).round() as usize;
    let mut out = Audio::silence(rate, channels, to_samples(report.frames));
    for (index, (segment, span)) in plan.iter().zip(&report.segments).enumerate() {
        let PlannedSource::Clip {
            path,
            start_s,
            sound: Some(_),
            volume,
            ..
        } = &segment.source
        else {
            continue;
        };
        let track = Mp4Reader::open(path)?
            .read_audio()
            .with_context(|| format!("segment {index}: the sound of {}", path.display()))?
            .expect("the plan saw a sound track")
            .resampled(rate)?
            .with_channels(channels)?;
        let start = to_samples(span.start_frame);
        let length = to_samples(segment.frames).min(out.frames() - start);
        let source_start = (start_s * f64::from(rate)).round() as usize;
        let piece = track.slice(source_start, length);
        let gain = Envelope::new(segment, f64::from(rate) / fps);
        let c = usize::from(channels);
        for (i, frame) in piece.samples.chunks_exact(c).enumerate() {
            let g = volume * gain.at(i, length);
            for (o, s) in out.samples[(start + i) * c..][..c].iter_mut().zip(frame) {
                *o += g * s;
            }
        }
    }
    for sample in &mut out.samples {
        *sample = sample.clamp(-1.0, 1.0);
    }
    Ok(Some(out))
}

/// A segment's gain over time, in samples: ramps where the pictures crossfade or fade.
struct Envelope {
    ramp_in: f32,
    ramp_out: f32,
}

impl Envelope {
    fn new(segment: &PlannedSegment, samples_per_frame: f64) -> Self {
        let ramp = |frames: usize| (frames as f64 * samples_per_frame) as f32;
        Self {
            ramp_in: ramp(segment.crossfade_in.max(segment.fade_in)),
            ramp_out: ramp(segment.crossfade_out.max(segment.fade_out)),
        }
    }

    /// Gain of sample `i` of a segment `length` samples long.
    fn at(&self, i: usize, length: usize) -> f32 {
        let from_start = i as f32 + 0.5;
        let to_end = (length - i) as f32 - 0.5;
        let rise = if self.ramp_in > 0.0 {
            (from_start / self.ramp_in).min(1.0)
        } else {
            1.0
        };
        let fall = if self.ramp_out > 0.0 {
            (to_end / self.ramp_out).min(1.0)
        } else {
            1.0
        };
        rise * fall
    }
}
