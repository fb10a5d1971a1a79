//! The timeline's sound: each clip's track, trimmed with the clip, resampled to one rate and
//! mixed under the same edit as the pictures. Clips without sound and title cards are silence;
//! crossfades are equal-gain ramps over the overlap, fades through black fade the sound too.
//! The timeline's music, when it has some, plays under everything from the first frame, looped.

use super::{PlannedSegment, PlannedSource, RenderReport, Timeline, check_volume};
use crate::video::{Audio, Mp4Reader};
use anyhow::{Context, Result, ensure};

/// The timeline's music, read and checked; `None` when it has none.
pub(super) fn load_music(timeline: &Timeline) -> Result<Option<Audio>> {
    let Some(music) = &timeline.music else {
        return Ok(None);
    };
    let context = || format!("music {}", music.path.display());
    check_volume(music.volume).with_context(context)?;
    let audio = Audio::read_wav(&music.path).with_context(context)?;
    ensure!(
        audio.frames() > 0,
        "music {} is empty",
        music.path.display()
    );
    Ok(Some(audio))
}

/// The output's rate and channels: the highest among the clips with sound and the music, `None`
/// when nothing has sound.
pub(super) fn output_format(plan: &[PlannedSegment], music: Option<&Audio>) -> Option<(u32, u16)> {
    plan.iter()
        .filter_map(|segment| match segment.source {
            PlannedSource::Clip { sound, .. } => sound,
            PlannedSource::Title(_) => None,
        })
        .chain(music.map(|m| (m.sample_rate, m.channels)))
        .reduce(|(rate, channels), (r, c)| (rate.max(r), channels.max(c)))
}

/// Mixes the sound of every segment where `report` placed it, over the music; `None` when
/// nothing has sound.
pub(super) fn mix(
    timeline: &Timeline,
    plan: &[PlannedSegment],
    report: &RenderReport,
    music: Option<&Audio>,
) -> Result<Option<Audio>> {
    let Some((rate, channels)) = output_format(plan, music) else {
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
    if let (Some(music), Some(bed)) = (music, &timeline.music) {
        let music = music
            .resampled(rate)
            .and_then(|m| m.with_channels(channels))
            .with_context(|| format!("music {}", bed.path.display()))?;
        // Looped: output sample i plays music sample i modulo its length.
        for (o, s) in out.samples.iter_mut().zip(music.samples.iter().cycle()) {
            *o += bed.volume * s;
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
