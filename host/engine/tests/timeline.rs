//! Timeline rendering as the shot stitcher uses it: segment placement, transitions, title cards,
//! trims, frame-rate and size adaptation, and refusal of timelines that cannot render.

use image::{Rgb, RgbImage};
use serde_json::json;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use videosdgx_engine::video::timeline::{
    Clip, Music, RenderCancelled, RenderProgress, Segment, SegmentSpan, Time, Timeline, TitleCard,
    Transition, render, validate,
};
use videosdgx_engine::video::{Audio, Mp4Reader, Mp4Writer, probe, read_mp4, write_mp4};

const W: u32 = 64;
const H: u32 = 48;
const RED: [u8; 3] = [220, 30, 30];
const BLUE: [u8; 3] = [30, 30, 220];

fn solid_clip(
    dir: &Path,
    name: &str,
    color: [u8; 3],
    frames: usize,
    fps: u32,
    size: (u32, u32),
) -> PathBuf {
    let path = dir.join(name);
    let frame = RgbImage::from_pixel(size.0, size.1, Rgb(color));
    write_mp4(&path, &vec![frame; frames], fps, &json!({"clip": name})).unwrap();
    path
}

/// Frame i is uniformly grey at level 10 * i, so a decoded frame tells which source frame it was.
fn counting_clip(dir: &Path, frames: usize, fps: u32) -> PathBuf {
    let path = dir.join("counting.mp4");
    let frames: Vec<_> = (0..frames)
        .map(|i| RgbImage::from_pixel(W, H, Rgb([(10 * i) as u8; 3])))
        .collect();
    write_mp4(&path, &frames, fps, &json!(null)).unwrap();
    path
}

fn source_index(frame: &RgbImage) -> usize {
    (mean(frame)[1] / 10.0).round() as usize
}

fn mean(frame: &RgbImage) -> [f64; 3] {
    let mut sum = [0.0; 3];
    for pixel in frame.pixels() {
        for c in 0..3 {
            sum[c] += f64::from(pixel[c]);
        }
    }
    let n = f64::from(frame.width() * frame.height());
    sum.map(|s| s / n)
}

fn close(actual: [f64; 3], expected: [f64; 3], tolerance: f64) -> bool {
    actual
        .iter()
        .zip(expected)
        .all(|(a, e)| (a - e).abs() <= tolerance)
}

fn clip(path: &Path) -> Segment {
    Segment::Clip(Clip {
        path: path.to_path_buf(),
        trim_in: None,
        trim_out: None,
        volume: 1.0,
    })
}

fn timeline(segments: Vec<Segment>, transitions: Vec<Transition>) -> Timeline {
    Timeline {
        width: W,
        height: H,
        fps: 8,
        segments,
        transitions,
        metadata: json!({"project": "test"}),
        music: None,
    }
}

fn render_quietly(
    timeline: &Timeline,
    out: &Path,
) -> anyhow::Result<videosdgx_engine::video::timeline::RenderReport> {
    render(timeline, out, &mut |_| ControlFlow::Continue(()))
}

#[test]
fn segments_land_where_transitions_put_them() {
    let dir = tempfile::tempdir().unwrap();
    let red = solid_clip(dir.path(), "red.mp4", RED, 16, 8, (W, H));
    let blue = solid_clip(dir.path(), "blue.mp4", BLUE, 16, 8, (W, H));
    let title = Segment::Title(TitleCard {
        text: "Act Two".into(),
        duration: Time::Seconds(1.0),
        background: [0, 0, 0],
        color: [255, 255, 255],
    });
    let timeline = timeline(
        vec![clip(&red), title, clip(&blue)],
        vec![
            Transition::Crossfade {
                duration: Time::Frames(4),
            },
            Transition::Cut,
        ],
    );
    let out = dir.path().join("edit.mp4");
    let report = render_quietly(&timeline, &out).unwrap();

    assert_eq!(
        report.segments,
        [
            SegmentSpan {
                start_frame: 0,
                frames: 16
            },
            SegmentSpan {
                start_frame: 12,
                frames: 8
            },
            SegmentSpan {
                start_frame: 20,
                frames: 16
            },
        ]
    );
    assert_eq!(report.frames, 36);
    assert_eq!(report.duration, 4.5);
    assert_eq!(
        validate(&timeline).unwrap(),
        report,
        "validation plans the same edit without rendering"
    );

    let info = probe(&out).unwrap();
    assert_eq!(
        (info.width, info.height, info.frames, info.fps),
        (W, H, 36, 8.0)
    );
    assert_eq!(
        info.metadata["timeline"]["metadata"],
        json!({"project": "test"})
    );
    let frames = read_mp4(&out).unwrap().frames;
    assert!(close(mean(&frames[5]), RED.map(f64::from), 6.0));
    assert!(close(mean(&frames[30]), BLUE.map(f64::from), 6.0));
}

#[test]
fn crossfade_frames_blend_both_sources() {
    let dir = tempfile::tempdir().unwrap();
    let red = solid_clip(dir.path(), "red.mp4", RED, 16, 8, (W, H));
    let blue = solid_clip(dir.path(), "blue.mp4", BLUE, 16, 8, (W, H));
    let timeline = timeline(
        vec![clip(&red), clip(&blue)],
        vec![Transition::Crossfade {
            duration: Time::Frames(4),
        }],
    );
    let out = dir.path().join("crossfade.mp4");
    assert_eq!(render_quietly(&timeline, &out).unwrap().frames, 28);

    let frames = read_mp4(&out).unwrap().frames;
    for k in 0..4 {
        let t = (k + 1) as f64 / 5.0;
        let expected: [f64; 3] =
            std::array::from_fn(|c| f64::from(RED[c]) * (1.0 - t) + f64::from(BLUE[c]) * t);
        let actual = mean(&frames[12 + k]);
        assert!(
            close(actual, expected, 8.0),
            "crossfade frame {k}: {actual:?} vs {expected:?}"
        );
    }
}

#[test]
fn fade_through_black_reaches_black_between_segments() {
    let dir = tempfile::tempdir().unwrap();
    let red = solid_clip(dir.path(), "red.mp4", RED, 16, 8, (W, H));
    let blue = solid_clip(dir.path(), "blue.mp4", BLUE, 16, 8, (W, H));
    let timeline = timeline(
        vec![clip(&red), clip(&blue)],
        vec![Transition::FadeThroughBlack {
            duration: Time::Frames(6),
        }],
    );
    let out = dir.path().join("dip.mp4");
    assert_eq!(
        render_quietly(&timeline, &out).unwrap().frames,
        32,
        "a dip to black does not overlap"
    );

    let frames = read_mp4(&out).unwrap().frames;
    assert!(
        close(mean(&frames[12]), RED.map(f64::from), 6.0),
        "before the fade"
    );
    let brightness: Vec<f64> = frames[12..20]
        .iter()
        .map(|f| mean(f).iter().sum::<f64>())
        .collect();
    assert!(
        brightness[1] < brightness[0] && brightness[2] < brightness[1],
        "fading out: {brightness:?}"
    );
    assert!(
        close(mean(&frames[15]), [0.0; 3], 3.0),
        "last red frame is black: {:?}",
        mean(&frames[15])
    );
    assert!(
        close(mean(&frames[16]), [0.0; 3], 3.0),
        "first blue frame is black: {:?}",
        mean(&frames[16])
    );
    assert!(
        brightness[6] > brightness[5] && brightness[7] > brightness[6],
        "fading in: {brightness:?}"
    );
    assert!(
        close(mean(&frames[20]), BLUE.map(f64::from), 6.0),
        "after the fade"
    );
}

#[test]
fn title_card_draws_centred_text() {
    let dir = tempfile::tempdir().unwrap();
    let card = TitleCard {
        text: "The Lighthouse Keeper".into(),
        duration: Time::Frames(4),
        background: [20, 20, 60],
        color: [255, 255, 255],
    };
    let timeline = Timeline {
        width: 320,
        height: 180,
        fps: 8,
        segments: vec![Segment::Title(card)],
        transitions: vec![],
        metadata: json!(null),
        music: None,
    };
    let out = dir.path().join("title.mp4");
    render_quietly(&timeline, &out).unwrap();

    let frame = &read_mp4(&out).unwrap().frames[0];
    let text_pixels: Vec<(u32, u32)> = frame
        .enumerate_pixels()
        .filter(|(_, _, p)| p[0] > 150 && p[1] > 150)
        .map(|(x, y, _)| (x, y))
        .collect();
    assert!(
        text_pixels.len() > 500,
        "only {} text pixels",
        text_pixels.len()
    );
    let (min_x, max_x) = (
        text_pixels.iter().map(|p| p.0).min().unwrap(),
        text_pixels.iter().map(|p| p.0).max().unwrap(),
    );
    let (min_y, max_y) = (
        text_pixels.iter().map(|p| p.1).min().unwrap(),
        text_pixels.iter().map(|p| p.1).max().unwrap(),
    );
    assert!(
        ((min_x + max_x) as i64 - 320).abs() <= 12,
        "horizontally centred: {min_x}..{max_x}"
    );
    assert!(
        ((min_y + max_y) as i64 - 180).abs() <= 24,
        "vertically centred: {min_y}..{max_y}"
    );
    assert!(
        min_x >= 24 && max_x <= 296,
        "text stays inside the margins: {min_x}..{max_x}"
    );
    assert!(close(
        mean(&RgbImage::from_fn(8, 8, |x, y| *frame.get_pixel(x, y))),
        [20.0, 20.0, 60.0],
        6.0
    ));
}

#[test]
fn long_title_wraps_onto_several_lines() {
    let dir = tempfile::tempdir().unwrap();
    let card = TitleCard {
        text:
            "Chapter three, in which the keeper finally climbs the stairs and lights the lamp again"
                .into(),
        duration: Time::Frames(2),
        background: [0, 0, 0],
        color: [255, 255, 255],
    };
    let timeline = Timeline {
        width: 320,
        height: 180,
        fps: 8,
        segments: vec![Segment::Title(card)],
        transitions: vec![],
        metadata: json!(null),
        music: None,
    };
    let out = dir.path().join("title.mp4");
    render_quietly(&timeline, &out).unwrap();
    let frame = &read_mp4(&out).unwrap().frames[0];
    let rows_with_text: Vec<bool> = (0..180)
        .map(|y| (0..320).any(|x| frame.get_pixel(x, y)[0] > 150))
        .collect();
    let bands = rows_with_text.windows(2).filter(|w| !w[0] && w[1]).count();
    assert!(bands >= 2, "expected several lines of text, found {bands}");
    let columns_with_text: Vec<u32> = (0..320)
        .filter(|&x| (0..180).any(|y| frame.get_pixel(x, y)[0] > 150))
        .collect();
    assert!(
        columns_with_text[0] >= 24 && *columns_with_text.last().unwrap() <= 296,
        "wrapped inside the margins"
    );
}

#[test]
fn trims_in_frames_and_seconds_select_the_source_frames() {
    let dir = tempfile::tempdir().unwrap();
    let counting = counting_clip(dir.path(), 20, 8);
    let trimmed = |trim_in, trim_out| {
        Segment::Clip(Clip {
            path: counting.clone(),
            trim_in,
            trim_out,
            volume: 1.0,
        })
    };
    let timeline = timeline(
        vec![
            trimmed(Some(Time::Frames(4)), Some(Time::Frames(10))),
            trimmed(Some(Time::Seconds(1.5)), None),
        ],
        vec![Transition::Cut],
    );
    let out = dir.path().join("trimmed.mp4");
    let report = render_quietly(&timeline, &out).unwrap();
    assert_eq!(report.frames, 6 + 8);

    let shown: Vec<usize> = read_mp4(&out)
        .unwrap()
        .frames
        .iter()
        .map(source_index)
        .collect();
    assert_eq!(shown, [4, 5, 6, 7, 8, 9, 12, 13, 14, 15, 16, 17, 18, 19]);
}

#[test]
fn clips_at_other_frame_rates_keep_their_duration() {
    let dir = tempfile::tempdir().unwrap();
    let counting = counting_clip(dir.path(), 16, 16); // one second at 16 fps
    let out = dir.path().join("resampled.mp4");
    let report = render_quietly(&timeline(vec![clip(&counting)], vec![]), &out).unwrap();
    assert_eq!(report.frames, 8);
    let shown: Vec<usize> = read_mp4(&out)
        .unwrap()
        .frames
        .iter()
        .map(source_index)
        .collect();
    assert_eq!(shown, [0, 2, 4, 6, 8, 10, 12, 14]);
}

#[test]
fn clips_of_other_sizes_are_letterboxed() {
    let dir = tempfile::tempdir().unwrap();
    let portrait = solid_clip(dir.path(), "portrait.mp4", BLUE, 4, 8, (24, 48));
    let out = dir.path().join("boxed.mp4");
    render_quietly(&timeline(vec![clip(&portrait)], vec![]), &out).unwrap();
    let frame = &read_mp4(&out).unwrap().frames[0];
    assert_eq!(frame.dimensions(), (W, H));
    let column = |x: u32| mean(&RgbImage::from_fn(1, H, |_, y| *frame.get_pixel(x, y)));
    assert!(
        close(column(4), [0.0; 3], 4.0),
        "left bar is black: {:?}",
        column(4)
    );
    assert!(
        close(column(59), [0.0; 3], 4.0),
        "right bar is black: {:?}",
        column(59)
    );
    assert!(
        close(column(32), BLUE.map(f64::from), 8.0),
        "picture in the middle: {:?}",
        column(32)
    );
}

#[test]
fn impossible_timelines_are_refused_before_rendering() {
    let dir = tempfile::tempdir().unwrap();
    let red = solid_clip(dir.path(), "red.mp4", RED, 6, 8, (W, H));
    let out = dir.path().join("never.mp4");
    let cases = [
        (
            timeline(vec![clip(&red), clip(&red)], vec![]),
            "2 segments need 1 transitions",
        ),
        (
            timeline(
                vec![clip(&red), clip(&red)],
                vec![Transition::Crossfade {
                    duration: Time::Frames(8),
                }],
            ),
            "too short for its transitions",
        ),
        (
            timeline(
                vec![Segment::Clip(Clip {
                    path: red.clone(),
                    trim_in: Some(Time::Frames(2)),
                    trim_out: Some(Time::Seconds(3.0)),
                    volume: 1.0,
                })],
                vec![],
            ),
            "outside the clip",
        ),
        (
            timeline(vec![clip(&dir.path().join("missing.mp4"))], vec![]),
            "missing.mp4",
        ),
        (
            Timeline {
                width: 63,
                ..timeline(vec![clip(&red)], vec![])
            },
            "63x48",
        ),
        (timeline(vec![], vec![]), "no segments"),
    ];
    for (timeline, expected) in cases {
        let err = format!("{:#}", render_quietly(&timeline, &out).unwrap_err());
        assert!(err.contains(expected), "expected {expected:?} in: {err}");
        assert!(!out.exists());
    }
}

#[test]
fn cancelling_stops_rendering_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let red = solid_clip(dir.path(), "red.mp4", RED, 16, 8, (W, H));
    let out = dir.path().join("cancelled.mp4");
    let mut seen = Vec::new();
    let err = render(
        &timeline(vec![clip(&red)], vec![]),
        &out,
        &mut |p: &RenderProgress| {
            seen.push(p.frame);
            if p.frame == 5 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )
    .unwrap_err();
    assert!(err.downcast_ref::<RenderCancelled>().is_some(), "{err:#}");
    assert_eq!(seen, [1, 2, 3, 4, 5]);
    assert!(!out.exists());
}

#[test]
fn timeline_json_is_the_plugin_facing_shape() {
    let parsed: Timeline = serde_json::from_value(json!({
        "width": 832, "height": 480, "fps": 16,
        "segments": [
            {"kind": "title", "text": "Scene 1", "duration": {"seconds": 1.5}},
            {"kind": "clip", "path": "/clips/a.mp4", "trim_in": {"frames": 3}},
        ],
        "transitions": [{"kind": "fade_through_black", "duration": {"frames": 8}}],
    }))
    .unwrap();
    assert_eq!(parsed.segments.len(), 2);
    assert_eq!(
        parsed.transitions,
        [Transition::FadeThroughBlack {
            duration: Time::Frames(8)
        }]
    );
    match &parsed.segments[0] {
        Segment::Title(card) => {
            assert_eq!((card.background, card.color), ([0, 0, 0], [255, 255, 255]))
        }
        other => panic!("expected a title card, got {other:?}"),
    }
}

/// A clip of `frames` solid frames at 8 fps with a tone of `hz` at `rate` Hz (`channels` channels).
fn speaking_clip(dir: &Path, name: &str, frames: usize, tone: (f32, u32, u16)) -> PathBuf {
    let (hz, rate, channels) = tone;
    let path = dir.join(name);
    let mut writer = Mp4Writer::create(&path, W, H, 8).unwrap();
    for _ in 0..frames {
        writer.push(&RgbImage::from_pixel(W, H, Rgb(RED))).unwrap();
    }
    let samples = (0..frames * rate as usize / 8)
        .flat_map(|i| {
            let s = 0.5 * (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin();
            std::iter::repeat_n(s, usize::from(channels))
        })
        .collect();
    writer.set_audio(Audio::new(rate, channels, samples).unwrap());
    writer.finish(&json!(null)).unwrap();
    path
}

/// RMS level and zero-crossing frequency of the left channel over `seconds`.
fn level_and_pitch(audio: &Audio, seconds: (f64, f64)) -> (f32, f32) {
    let rate = f64::from(audio.sample_rate);
    let c = usize::from(audio.channels);
    let left: Vec<f32> = audio.samples
        [(seconds.0 * rate) as usize * c..(seconds.1 * rate) as usize * c]
        .iter()
        .step_by(c)
        .copied()
        .collect();
    let rms = (left.iter().map(|s| s * s).sum::<f32>() / left.len() as f32).sqrt();
    let crossings = left
        .windows(2)
        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
        .count();
    (rms, crossings as f32 / 2.0 / (seconds.1 - seconds.0) as f32)
}

#[test]
fn the_sound_follows_the_edit_silence_under_silent_clips_and_titles() {
    let dir = tempfile::tempdir().unwrap();
    // 2 s at 440 Hz (24 kHz stereo), crossfaded (1 s) into 2 s at 1000 Hz (16 kHz mono), a cut to a
    // silent 1 s clip, a fade through black (1 s) to a 1 s title card.
    let a = speaking_clip(dir.path(), "a.mp4", 16, (440.0, 24_000, 2));
    let b = speaking_clip(dir.path(), "b.mp4", 16, (1000.0, 16_000, 1));
    let silent = solid_clip(dir.path(), "silent.mp4", BLUE, 8, 8, (W, H));
    let title = Segment::Title(TitleCard {
        text: "The end".into(),
        duration: Time::Frames(8),
        background: [0, 0, 0],
        color: [255, 255, 255],
    });
    let out = dir.path().join("piece.mp4");
    let report = render_quietly(
        &timeline(
            vec![clip(&a), clip(&b), clip(&silent), title],
            vec![
                Transition::Crossfade {
                    duration: Time::Frames(8),
                },
                Transition::Cut,
                Transition::FadeThroughBlack {
                    duration: Time::Frames(8),
                },
            ],
        ),
        &out,
    )
    .unwrap();
    assert_eq!(report.sample_rate, Some(24_000));
    assert_eq!(report.frames, 40);
    let mut reader = Mp4Reader::open(&out).unwrap();
    let sound = reader.read_audio().unwrap().expect("a sound track");
    assert_eq!((sound.sample_rate, sound.channels), (24_000, 2));
    assert_eq!(sound.frames(), 5 * 24_000, "as long as the pictures");

    // A alone, then both (equal-gain ramps), then B alone at its own pitch (resampled, on both
    // channels), then silence under the silent clip and the title.
    let (rms, pitch) = level_and_pitch(&sound, (0.0, 0.9));
    assert!(
        (rms - 0.354).abs() < 0.01 && (pitch - 440.0).abs() < 3.0,
        "{rms} {pitch}"
    );
    let (rms, pitch) = level_and_pitch(&sound, (2.05, 2.95));
    assert!(
        (rms - 0.354).abs() < 0.01 && (pitch - 1000.0).abs() < 3.0,
        "{rms} {pitch}"
    );
    let right_b = sound.samples[2 * 60_000 + 1];
    assert_eq!(
        right_b,
        sound.samples[2 * 60_000],
        "mono is copied to both channels"
    );
    let (rms, _) = level_and_pitch(&sound, (1.45, 1.55));
    assert!(
        rms > 0.2 && rms < 0.45,
        "both at half gain mid-crossfade: {rms}"
    );
    let (rms, _) = level_and_pitch(&sound, (3.0, 5.0));
    assert_eq!(rms, 0.0);
}

#[test]
fn muted_and_silent_timelines_and_volumes_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let a = speaking_clip(dir.path(), "a.mp4", 8, (440.0, 24_000, 2));
    let silent = solid_clip(dir.path(), "silent.mp4", BLUE, 8, 8, (W, H));

    // Only silent clips: no sound track at all, as before sound existed.
    let out = dir.path().join("silent-piece.mp4");
    let report = render_quietly(&timeline(vec![clip(&silent)], vec![]), &out).unwrap();
    assert_eq!(report.sample_rate, None);
    assert!(Mp4Reader::open(&out).unwrap().audio.is_none());

    // A muted clip keeps a (silent) track; a volume outside 0..4 is refused before rendering.
    let muted = |volume| {
        Segment::Clip(Clip {
            path: a.clone(),
            trim_in: None,
            trim_out: None,
            volume,
        })
    };
    let out = dir.path().join("muted.mp4");
    render_quietly(&timeline(vec![muted(0.0)], vec![]), &out).unwrap();
    let sound = Mp4Reader::open(&out)
        .unwrap()
        .read_audio()
        .unwrap()
        .unwrap();
    assert!(sound.samples.iter().all(|s| *s == 0.0));
    let err = format!(
        "{:#}",
        validate(&timeline(vec![muted(f32::NAN)], vec![])).unwrap_err()
    );
    assert!(err.contains("volume NaN is outside 0..4"), "{err}");
}

#[test]
fn a_clips_volume_scales_its_sound_and_probe_reports_the_track() {
    let dir = tempfile::tempdir().unwrap();
    let a = speaking_clip(dir.path(), "a.mp4", 8, (440.0, 24_000, 2));
    let silent = solid_clip(dir.path(), "silent.mp4", BLUE, 8, 8, (W, H));
    let at = |volume| {
        Segment::Clip(Clip {
            path: a.clone(),
            trim_in: None,
            trim_out: None,
            volume,
        })
    };
    // The same 1 s tone at full, half and no volume, joined by cuts.
    let out = dir.path().join("levels.mp4");
    render_quietly(
        &timeline(
            vec![at(1.0), at(0.5), at(0.0)],
            vec![Transition::Cut, Transition::Cut],
        ),
        &out,
    )
    .unwrap();
    let sound = Mp4Reader::open(&out)
        .unwrap()
        .read_audio()
        .unwrap()
        .unwrap();
    let (full, _) = level_and_pitch(&sound, (0.05, 0.95));
    let (half, pitch) = level_and_pitch(&sound, (1.05, 1.95));
    let (muted, _) = level_and_pitch(&sound, (2.05, 2.95));
    assert!((full - 0.354).abs() < 0.01, "{full}");
    assert!((half / full - 0.5).abs() < 0.01, "{half} vs {full}");
    assert!(
        (pitch - 440.0).abs() < 3.0,
        "the gain keeps the pitch: {pitch}"
    );
    assert_eq!(muted, 0.0);

    let format = probe(&a).unwrap().audio.expect("a sound track");
    assert_eq!((format.sample_rate, format.channels), (24_000, 2));
    assert_eq!(probe(&silent).unwrap().audio, None);
}

#[test]
fn music_loops_under_every_segment_at_its_volume() {
    let dir = tempfile::tempdir().unwrap();
    // 0.75 s of a 300 Hz mono tone at 16 kHz, under a silent 1 s clip and a 1 s title card, with
    // a speaking 1 s clip (24 kHz stereo) in between.
    let wav = dir.path().join("bed.wav");
    let tone: Vec<f32> = (0..12_000)
        .map(|i| 0.5 * (2.0 * std::f32::consts::PI * 300.0 * i as f32 / 16_000.0).sin())
        .collect();
    Audio::new(16_000, 1, tone)
        .unwrap()
        .write_wav(&wav)
        .unwrap();
    let silent = solid_clip(dir.path(), "silent.mp4", BLUE, 8, 8, (W, H));
    let a = speaking_clip(dir.path(), "a.mp4", 8, (440.0, 24_000, 2));
    let title = Segment::Title(TitleCard {
        text: "Fin".into(),
        duration: Time::Frames(8),
        background: [0, 0, 0],
        color: [255, 255, 255],
    });
    let with_music = |volume| Timeline {
        music: Some(Music {
            path: wav.clone(),
            volume,
        }),
        ..timeline(
            vec![clip(&silent), clip(&a), title.clone()],
            vec![Transition::Cut, Transition::Cut],
        )
    };
    let out = dir.path().join("bed.mp4");
    let report = render_quietly(&with_music(0.5), &out).unwrap();
    assert_eq!(report.sample_rate, Some(24_000), "the highest rate wins");
    let sound = Mp4Reader::open(&out)
        .unwrap()
        .read_audio()
        .unwrap()
        .unwrap();
    assert_eq!(sound.frames(), 3 * 24_000, "cut at the piece's end");
    // Under the silent clip: the music alone at half volume (RMS of a 0.5 sine, halved), also
    // past its own 0.75 s, where it loops; the same under the title card.
    for window in [(0.05, 0.7), (0.8, 0.95), (2.05, 2.95)] {
        let (rms, pitch) = level_and_pitch(&sound, window);
        assert!((rms - 0.177).abs() < 0.01, "{window:?}: {rms}");
        assert!((pitch - 300.0).abs() < 8.0, "{window:?}: {pitch}");
    }
    // Under the speaking clip both play: louder than either alone.
    let (rms, _) = level_and_pitch(&sound, (1.05, 1.95));
    assert!(
        (rms - (0.354f32.powi(2) + 0.177f32.powi(2)).sqrt()).abs() < 0.02,
        "{rms}"
    );

    // Music alone gives a silent piece a sound track; a bad volume is refused by name.
    let out = dir.path().join("bed-only.mp4");
    let mut only = with_music(1.0);
    only.segments = vec![clip(&silent)];
    only.transitions = vec![];
    let report = render_quietly(&only, &out).unwrap();
    assert_eq!(report.sample_rate, Some(16_000));
    let err = format!("{:#}", validate(&with_music(4.5)).unwrap_err());
    assert!(
        err.contains("music") && err.contains("volume 4.5 is outside 0..4"),
        "{err}"
    );
}
