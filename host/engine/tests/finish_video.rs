//! The streaming finish on the CPU with the tiny upscaler and RIFE fixtures: a clip with a hard
//! cut in the middle is retimed x2, upscaled, fitted into a wider frame and encoded; the output
//! has the target's size, rate and frame count, black bars, no frame blended across the cut, and
//! the source's sound.
//! Bad requests fail before anything is written.

use candle_core::{DType, Device};
use image::{Rgb, RgbImage};
use serde_json::json;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use videosdgx_engine::finishing::finish::{
    FinishCancelled, FinishModels, FinishSpec, FinishTarget, finish_video,
};
use videosdgx_engine::video::{Audio, Mp4Reader, Mp4Writer, probe, read_mp4, write_mp4};

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/finishing")
        .join(path)
}

/// The tiny x2 upscaler and the tiny RIFE flownet of tests/fixtures/finishing.
fn spec(target: &str) -> FinishSpec {
    FinishSpec {
        upscaler: Some(fixture(UPSCALER)),
        interpolator: Some(fixture(RIFE)),
        tile: None,
        ..FinishSpec::new(target.parse().unwrap())
    }
}

/// A RealESRGAN Compact x2 with spandrel's random weights, and a RIFE 4.6 flownet.pkl (f16,
/// weights from a name hash): real architectures at test size.
const UPSCALER: &str = "upscalers/compact_x2/model.safetensors";
const RIFE: &str = "rife/4.6/flownet.pkl";

/// Source frames 48x32: three warm frames with a slowly moving bar, then a hard cut to three
/// cold ones, so an in-between frame across the cut would be a visible mix of both.
fn cut_clip() -> Vec<RgbImage> {
    (0..6)
        .map(|f| {
            let warm = f < 3;
            RgbImage::from_fn(48, 32, |x, _| {
                let bar = (x as usize).abs_diff(10 + f * 2) < 3;
                match (warm, bar) {
                    (_, true) => Rgb([250, 250, 250]),
                    (true, false) => Rgb([220, 60, 30]),
                    (false, false) => Rgb([30, 60, 220]),
                }
            })
        })
        .collect()
}

fn mean(frame: &RgbImage, rows: std::ops::Range<u32>, cols: std::ops::Range<u32>) -> [f64; 3] {
    let mut sum = [0f64; 3];
    let mut count = 0f64;
    for y in rows {
        for x in cols.clone() {
            let p = frame.get_pixel(x, y);
            for c in 0..3 {
                sum[c] += f64::from(p[c]);
            }
            count += 1.0;
        }
    }
    sum.map(|s| s / count)
}

#[test]
fn a_clip_is_retimed_upscaled_letterboxed_and_never_blended_across_a_cut() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cut.mp4");
    let mut writer = Mp4Writer::create(&input, 48, 32, 8).unwrap();
    for frame in cut_clip() {
        writer.push(&frame).unwrap();
    }
    let sound: Vec<f32> = (0..12_000)
        .map(|i| (i as f32 * 0.05).sin() * 0.25)
        .collect();
    writer.set_audio(Audio::new(16_000, 1, sound).unwrap());
    writer.finish(&json!(null)).unwrap();
    let output = dir.path().join("finished.mp4");
    let spec = spec("128x96@x2");
    let models = FinishModels::load(&spec, &Device::Cpu, DType::F32).unwrap();
    let mut seen = Vec::new();
    let report = finish_video(
        &input,
        &output,
        &spec,
        &models,
        &json!({ "finish": spec }),
        &Device::Cpu,
        &mut |p| {
            seen.push((p.frame, p.total));
            ControlFlow::Continue(())
        },
    )
    .unwrap();

    let info = probe(&output).unwrap();
    assert_eq!((info.width, info.height), (128, 96));
    assert_eq!(info.fps, 16.0);
    assert_eq!(info.frames, report.frames);
    assert_eq!(report.frames, report.plan.frames.len());
    assert_eq!(info.metadata["finish"]["target"], "128x96@x2");
    // Every frame was reported, the last as done.
    assert_eq!(seen.len(), report.frames);
    assert_eq!(seen.last(), Some(&(report.frames, report.frames)));
    // 48x32 (3:2) in 128x96 (4:3): full width, 86 rows of picture, bars above and below.
    assert_eq!(
        (report.plan.content_width, report.plan.content_height),
        (128, 86)
    );
    assert!(report.upscaler.is_some() && report.interpolator.is_some());
    assert!(report.interpolated >= 4, "{report:?}");
    assert_eq!(report.held_at_cuts, 1, "{report:?}");
    for stage in [
        report.timings.decode_s,
        report.timings.upscale_s,
        report.timings.resize_s,
        report.timings.encode_s,
        report.timings.interpolate_s,
    ] {
        assert!(stage > 0.0, "{:?}", report.timings);
    }

    // The sound is carried over unchanged.
    let sound_of = |path: &Path| Mp4Reader::open(path).unwrap().read_audio().unwrap();
    assert_eq!(sound_of(&output), sound_of(&input));
    assert!(sound_of(&output).is_some());

    let frames = read_mp4(&output).unwrap().frames;
    for (index, frame) in frames.iter().enumerate() {
        for bar in [0..4, 92..96] {
            let [r, g, b] = mean(frame, bar.clone(), 0..128);
            assert!(
                r < 8.0 && g < 8.0 && b < 8.0,
                "frame {index}: bar rows {bar:?} are {r:.1},{g:.1},{b:.1}, not black"
            );
        }
        // Away from the bar, a frame is warm or cold, never the purple of a blend.
        let [r, _, b] = mean(frame, 20..76, 100..128);
        let warm = r > 180.0 && b < 70.0;
        let cold = b > 180.0 && r < 70.0;
        assert!(
            warm || cold,
            "frame {index} mixes both shots: red {r:.0}, blue {b:.0}"
        );
    }
}

#[test]
fn bad_requests_fail_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("clip.mp4");
    write_mp4(&input, &cut_clip(), 8, &json!(null)).unwrap();
    let output = dir.path().join("out.mp4");
    let run = |spec: &FinishSpec, models: &FinishModels| {
        finish_video(
            &input,
            &output,
            spec,
            models,
            &json!(null),
            &Device::Cpu,
            &mut |_| ControlFlow::Continue(()),
        )
        .map(drop)
        .map_err(|e| format!("{e:#}"))
    };
    let none = FinishModels::default();
    let err = run(&FinishSpec::new("128x96".parse().unwrap()), &none).unwrap_err();
    assert!(err.contains("needs an upscaler model"), "{err}");
    let err = run(&FinishSpec::new("x2".parse().unwrap()), &none).unwrap_err();
    assert!(err.contains("needs a RIFE flownet"), "{err}");

    let missing = FinishSpec {
        upscaler: Some(dir.path().join("absent.pth")),
        ..FinishSpec::new("128x96".parse().unwrap())
    };
    let err = FinishModels::load(&missing, &Device::Cpu, DType::F32)
        .map(drop)
        .unwrap_err();
    assert!(format!("{err:#}").contains("absent.pth"), "{err:#}");
    let corrupt_path = dir.path().join("corrupt.safetensors");
    std::fs::write(&corrupt_path, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
    let corrupt = FinishSpec {
        upscaler: Some(corrupt_path),
        ..FinishSpec::new("128x96".parse().unwrap())
    };
    assert!(FinishModels::load(&corrupt, &Device::Cpu, DType::F32).is_err());

    let err = "16k".parse::<FinishTarget>().unwrap_err().to_string();
    assert!(err.contains("unknown finish target `16k`"), "{err}");

    // A finish stopped from its progress callback leaves no output and no temporary file.
    let spec = spec("96x64");
    let models = FinishModels::load(&spec, &Device::Cpu, DType::F32).unwrap();
    let err = finish_video(
        &input,
        &output,
        &spec,
        &models,
        &json!(null),
        &Device::Cpu,
        &mut |_| ControlFlow::Break(()),
    )
    .unwrap_err();
    assert!(err.downcast_ref::<FinishCancelled>().is_some(), "{err:#}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| !["clip.mp4", "corrupt.safetensors"].contains(&name.as_str()))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
