//! MP4/PNG I/O as the studio uses it: round trips, the stream shape browsers need, the embedded
//! generation record, and clear errors for files and frames that are not usable.

use image::{Rgb, RgbImage};
use serde_json::json;
use std::path::Path;
use videosdgx_engine::video::{
    Audio, BackgroundMp4Writer, Mp4Reader, Mp4Writer, extract_frame, extract_last_frame,
    frames_from_tensor, frames_to_tensor, pictures_to_frames, probe, read_mp4, write_mp4,
    write_png_frames,
};

/// A gradient with a square that moves one step per frame, so frames differ and motion is coded.
fn moving_frames(count: usize, width: u32, height: u32) -> Vec<RgbImage> {
    (0..count)
        .map(|f| {
            RgbImage::from_fn(width, height, |x, y| {
                let inside = (x as usize).wrapping_sub(f * 2) < 12 && (8..20).contains(&y);
                if inside {
                    Rgb([250, 240, 30])
                } else {
                    Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 100])
                }
            })
        })
        .collect()
}

fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    let total: u64 = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    total as f64 / a.as_raw().len() as f64
}

fn error_text(err: anyhow::Error) -> String {
    format!("{err:#}")
}

#[test]
fn mp4_round_trip_keeps_frames_rate_and_generation_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    let frames = moving_frames(20, 96, 64);
    let record = json!({"prompt": "a red fox in snow", "seed": 42, "steps": 4, "guidance": 5.0});
    write_mp4(&path, &frames, 16, &record).unwrap();

    let video = read_mp4(&path).unwrap();
    assert_eq!(video.frames.len(), 20);
    assert_eq!(video.fps, 16.0);
    assert_eq!(video.metadata, record);
    for (original, decoded) in frames.iter().zip(&video.frames) {
        assert_eq!(decoded.dimensions(), (96, 64));
        let error = mean_abs_diff(original, decoded);
        assert!(
            error < 6.0,
            "lossy coding drifted too far: mean abs error {error}"
        );
    }
}

#[test]
fn frames_coded_on_all_cores_make_the_stream_one_encoder_makes() {
    let dir = tempfile::tempdir().unwrap();
    // 8 fps: a keyframe every 16 frames, so 70 frames are 5 groups of pictures.
    let frames = moving_frames(70, 96, 64);
    let one_by_one = dir.path().join("one_by_one.mp4");
    let mut writer = Mp4Writer::create(&one_by_one, 96, 64, 8).unwrap();
    for frame in &frames {
        writer.push(frame).unwrap();
    }
    writer.finish(&json!(null)).unwrap();
    // Starting mid-group, then pushing on: the group in progress, runs of whole groups on
    // threads, and the last run's encoder carrying on.
    let mixed = dir.path().join("mixed.mp4");
    let mut writer = Mp4Writer::create(&mixed, 96, 64, 8).unwrap();
    for frame in &frames[..5] {
        writer.push(frame).unwrap();
    }
    writer.push_all(&frames[5..60]).unwrap();
    for frame in &frames[60..] {
        writer.push(frame).unwrap();
    }
    writer.finish(&json!(null)).unwrap();
    let all_at_once = dir.path().join("all_at_once.mp4");
    write_mp4(&all_at_once, &frames, 8, &json!(null)).unwrap();

    for path in [&one_by_one, &mixed, &all_at_once] {
        let reader = Mp4Reader::open(path).unwrap();
        assert_eq!(reader.keyframes(), vec![0, 16, 32, 48, 64], "{path:?}");
        let video = read_mp4(path).unwrap();
        assert_eq!(video.frames.len(), 70);
        for (i, (original, decoded)) in frames.iter().zip(&video.frames).enumerate() {
            let error = mean_abs_diff(original, decoded);
            assert!(error < 6.0, "{path:?} frame {i}: mean abs error {error}");
        }
    }
}

#[test]
fn frames_coded_on_a_thread_of_their_own_make_the_same_stream() {
    let dir = tempfile::tempdir().unwrap();
    // 8 fps: a keyframe every 16 frames; 70 frames are batches of whole groups and a rest.
    let frames = moving_frames(70, 96, 64);
    let path = dir.path().join("background.mp4");
    let mut writer =
        BackgroundMp4Writer::start(Mp4Writer::create(&path, 96, 64, 8).unwrap()).unwrap();
    for frame in &frames {
        writer.push(frame.clone()).unwrap();
    }
    assert!(
        !path.exists(),
        "nothing appears before the file is finished"
    );
    let record = json!({"finish": "4k24"});
    writer.finish(&record).unwrap();
    let reader = Mp4Reader::open(&path).unwrap();
    assert_eq!(reader.keyframes(), vec![0, 16, 32, 48, 64]);
    let video = read_mp4(&path).unwrap();
    assert_eq!((video.frames.len(), &video.metadata), (70, &record));
    for (i, (original, decoded)) in frames.iter().zip(&video.frames).enumerate() {
        let error = mean_abs_diff(original, decoded);
        assert!(error < 6.0, "frame {i}: mean abs error {error}");
    }

    // A frame the coder refuses is reported (at a later push, or at the end), and an abandoned
    // writer leaves no file.
    let broken = dir.path().join("broken.mp4");
    let mut writer =
        BackgroundMp4Writer::start(Mp4Writer::create(&broken, 96, 64, 8).unwrap()).unwrap();
    writer.push(frames[0].clone()).unwrap();
    let pushed = (0..40).try_for_each(|_| writer.push(RgbImage::new(32, 32)));
    let err = match pushed {
        Err(e) => e,
        Ok(()) => writer.finish(&json!(null)).unwrap_err(),
    };
    assert!(error_text(err).contains("frame 1"), "names the frame");
    assert!(!broken.exists());
    let abandoned = dir.path().join("abandoned.mp4");
    let mut writer =
        BackgroundMp4Writer::start(Mp4Writer::create(&abandoned, 96, 64, 8).unwrap()).unwrap();
    for frame in &frames[..20] {
        writer.push(frame.clone()).unwrap();
    }
    drop(writer);
    assert!(!abandoned.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file is left"
    );
}

#[test]
fn decoded_pictures_become_frames_bit_for_bit_as_the_tensor_ops_make_them() {
    use candle_core::{DType, Device, Tensor};
    for dtype in [DType::BF16, DType::F32] {
        // Beyond [-1, 1] too, so the clamp matters.
        let pictures = Tensor::randn(0f32, 0.9, (3, 5, 6, 10), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let got = pictures_to_frames(&pictures).unwrap();
        assert_eq!((got.dims(), got.dtype()), (&[5, 6, 10, 3][..], DType::F32));
        let want = ((pictures
            .permute((1, 2, 3, 0))
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            / 2.0)
            .unwrap()
            + 0.5)
            .unwrap()
            .clamp(0f32, 1f32)
            .unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v.into_iter().map(f32::to_bits).collect()
        };
        assert_eq!(bits(&got), bits(&want), "{dtype:?}");
    }
    let err = pictures_to_frames(&Tensor::zeros((3, 4, 4), DType::F32, &Device::Cpu).unwrap())
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("[channels, frames, height, width]"),
        "{err:#}"
    );
}

#[test]
fn output_is_faststart_constrained_baseline_h264() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    write_mp4(&path, &moving_frames(8, 64, 48), 8, &json!({})).unwrap();

    let bytes = std::fs::read(&path).unwrap();
    let mut order = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let size = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        order.push(String::from_utf8_lossy(&bytes[at + 4..at + 8]).to_string());
        assert!(size >= 8, "box size {size} at {at}");
        at += size;
    }
    assert_eq!(at, bytes.len(), "top-level boxes must tile the file");
    assert_eq!(
        order,
        ["ftyp", "moov", "mdat"],
        "moov must precede mdat for progressive playback"
    );

    let info = probe(&path).unwrap();
    // profile_idc 66 (baseline) with constraint_set1 (constrained baseline): plays everywhere.
    assert!(info.codec.starts_with("avc1.42"), "codec {}", info.codec);
    assert!(
        bytes.windows(4).any(|w| w == b"avcC"),
        "avc1 sample entry carries avcC"
    );
}

#[test]
fn probe_reads_size_length_and_record_from_the_container() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    write_mp4(&path, &moving_frames(24, 64, 48), 12, &json!({"seed": 7})).unwrap();

    let info = probe(&path).unwrap();
    assert_eq!((info.width, info.height, info.frames), (64, 48, 24));
    assert_eq!(info.fps, 12.0);
    assert!((info.duration - 2.0).abs() < 1e-9);
    assert_eq!(info.metadata, json!({"seed": 7}));
}

#[test]
fn extract_frame_seeks_from_a_keyframe_and_matches_full_decode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    // 8 fps with a keyframe every 2 s: frame 21 decodes from the keyframe at 16.
    write_mp4(&path, &moving_frames(30, 64, 48), 8, &json!(null)).unwrap();
    let all = read_mp4(&path).unwrap().frames;

    assert_eq!(extract_frame(&path, 21).unwrap(), all[21]);
    assert_eq!(extract_frame(&path, 0).unwrap(), all[0]);
    assert_eq!(extract_last_frame(&path).unwrap(), all[29]);
    let err = error_text(extract_frame(&path, 30).unwrap_err());
    assert!(
        err.contains("frame 30 is out of range") && err.contains("30 frames"),
        "{err}"
    );
}

#[test]
fn odd_frame_size_is_refused_naming_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.mp4");
    let err = error_text(write_mp4(&path, &moving_frames(2, 65, 48), 8, &json!({})).unwrap_err());
    assert!(err.contains("65x48") && err.contains("even"), "{err}");
    assert!(!path.exists());
}

#[test]
fn mismatched_frame_sizes_are_refused_naming_the_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.mp4");
    let mut frames = moving_frames(3, 64, 48);
    frames.push(RgbImage::new(32, 32));
    let err = error_text(write_mp4(&path, &frames, 8, &json!({})).unwrap_err());
    assert!(
        err.contains("frame 3 is 32x32") && err.contains("64x48"),
        "{err}"
    );
    let err = error_text(write_mp4(&path, &[], 8, &json!({})).unwrap_err());
    assert!(err.contains("at least one frame"), "{err}");
}

#[test]
fn failed_write_keeps_the_previous_file_and_leaves_no_temporaries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    write_mp4(&path, &moving_frames(4, 64, 48), 8, &json!({"take": 1})).unwrap();
    let before = std::fs::read(&path).unwrap();

    let mut frames = moving_frames(4, 64, 48);
    frames[2] = RgbImage::new(64, 32);
    assert!(write_mp4(&path, &frames, 8, &json!({"take": 2})).is_err());

    assert_eq!(std::fs::read(&path).unwrap(), before);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["clip.mp4"]);
}

fn write_sample(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("good.mp4");
    write_mp4(&path, &moving_frames(10, 64, 48), 8, &json!({"seed": 1})).unwrap();
    path
}

#[test]
fn truncated_mp4_is_reported_as_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(write_sample(dir.path())).unwrap();
    for keep in [bytes.len() / 2, 200, 12] {
        let path = dir.path().join(format!("cut-{keep}.mp4"));
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let err = error_text(read_mp4(&path).unwrap_err());
        assert!(
            err.contains("truncated") && err.contains(&format!("cut-{keep}.mp4")),
            "{keep}: {err}"
        );
    }
}

#[test]
fn non_mp4_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.mp4");
    std::fs::write(&path, "INT. KITCHEN - NIGHT\nA kettle whistles.\n").unwrap();
    let err = error_text(probe(&path).unwrap_err());
    assert!(
        err.contains("not an MP4 file") && err.contains("notes.mp4"),
        "{err}"
    );

    let empty = dir.path().join("empty.mp4");
    std::fs::write(&empty, "").unwrap();
    let err = error_text(read_mp4(&empty).unwrap_err());
    assert!(err.contains("no moov box"), "{err}");
}

#[test]
fn mp4_without_a_video_track_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(write_sample(dir.path())).unwrap();
    // Relabel the only track's handler as audio: hdlr is fourcc, version/flags, pre_defined, type.
    let handlers: Vec<usize> = bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"hdlr")
        .map(|(i, _)| i + 12)
        .collect();
    let at = *handlers
        .iter()
        .find(|&&at| &bytes[at..at + 4] == b"vide")
        .unwrap();
    bytes[at..at + 4].copy_from_slice(b"soun");
    let path = dir.path().join("audio-only.mp4");
    std::fs::write(&path, &bytes).unwrap();
    let err = error_text(read_mp4(&path).unwrap_err());
    assert!(err.contains("no video track"), "{err}");
}

#[test]
fn corrupt_sample_data_errors_instead_of_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(write_sample(dir.path())).unwrap();
    let mdat = bytes.windows(4).position(|w| w == b"mdat").unwrap() + 4;
    // Break the first NAL length prefix so it points past its sample.
    bytes[mdat..mdat + 4].copy_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
    let path = dir.path().join("garbled.mp4");
    std::fs::write(&path, &bytes).unwrap();
    let err = error_text(read_mp4(&path).unwrap_err());
    assert!(err.contains("frame 0") && err.contains("overruns"), "{err}");
}

#[test]
fn tensor_frames_round_like_diffusers_and_convert_back() {
    let device = candle_core::Device::Cpu;
    let values = [
        0.0f32,
        0.5,
        1.0,
        0.2,
        -0.3,
        1.7,
        0.499 / 255.0,
        0.501 / 255.0,
        0.25,
        0.75,
        0.3,
        0.9,
    ];
    let tensor = candle_core::Tensor::from_slice(&values, (2, 1, 2, 3), &device).unwrap();
    let frames = frames_from_tensor(&tensor).unwrap();
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].as_raw(), &[0, 128, 255, 51, 0, 255]);
    // Expected values from numpy 2.4: 0.3 * 255 = 76.5 rounds to even (76).
    assert_eq!(frames[1].as_raw(), &[0, 1, 64, 191, 76, 230]);

    let back = frames_to_tensor(&frames, &device).unwrap();
    assert_eq!(back.dims(), &[2, 1, 2, 3]);
    assert_eq!(frames_from_tensor(&back).unwrap(), frames);

    let four_channels =
        candle_core::Tensor::zeros((1, 2, 2, 4), candle_core::DType::F32, &device).unwrap();
    let err = error_text(frames_from_tensor(&four_channels).unwrap_err());
    assert!(err.contains("3 channels"), "{err}");
}

#[test]
fn png_frames_are_written_in_order_and_lossless() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("frames");
    let frames = moving_frames(3, 40, 30);
    let paths = write_png_frames(&out, &frames).unwrap();
    assert_eq!(
        paths,
        (0..3)
            .map(|i| out.join(format!("frame_{i:05}.png")))
            .collect::<Vec<_>>()
    );
    for (path, frame) in paths.iter().zip(&frames) {
        assert_eq!(&image::open(path).unwrap().to_rgb8(), frame);
    }
}

/// 4K is what finishing delivers: 3840x2160 frames go through the writer at level 5.1 and the
/// bit rate the pixel rate asks for, and come back at that size, count and rate.
#[test]
fn a_4k_clip_round_trips_at_level_5_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("uhd.mp4");
    let frames = moving_frames(3, 3840, 2160);
    write_mp4(&path, &frames, 24, &json!({"finish": "4k24"})).unwrap();

    let info = probe(&path).unwrap();
    assert_eq!((info.width, info.height, info.frames), (3840, 2160, 3));
    assert_eq!(info.fps, 24.0);
    // avc1.PPCCLL: constrained baseline (42 C0), level 5.1 (0x33).
    assert_eq!(info.codec, "avc1.42C033");
    let video = read_mp4(&path).unwrap();
    assert_eq!(video.frames.len(), 3);
    for (original, decoded) in frames.iter().zip(&video.frames) {
        assert_eq!(decoded.dimensions(), (3840, 2160));
        let error = mean_abs_diff(original, decoded);
        assert!(error < 6.0, "4K coding drifted: mean abs error {error}");
    }
}

#[test]
fn levels_and_bit_rates_follow_size_and_rate() {
    use videosdgx_engine::video::{check_encodable_size, level_name, target_bitrate};
    assert_eq!(level_name(3840, 2160, 24).unwrap(), "5.1");
    assert_eq!(level_name(3840, 2160, 60).unwrap(), "5.2");
    assert_eq!(level_name(1920, 1080, 24).unwrap(), "4.0");
    assert_eq!(level_name(832, 480, 16).unwrap(), "3.0");
    let err = level_name(3840, 2160, 120).unwrap_err().to_string();
    assert!(err.contains("more than H.264 level 5.2 holds"), "{err}");
    let mbps = |w, h, fps| f64::from(target_bitrate(w, h, fps)) / 1e6;
    assert!(
        (35.0..=45.0).contains(&mbps(3840, 2160, 24)),
        "{}",
        mbps(3840, 2160, 24)
    );
    assert!(
        (8.0..=12.0).contains(&mbps(1920, 1080, 24)),
        "{}",
        mbps(1920, 1080, 24)
    );
    let err = check_encodable_size(15360, 8640).unwrap_err().to_string();
    assert!(
        err.contains("exceeds the H.264 encoder's 3840x2160 limit"),
        "{err}"
    );
}

/// `seconds` of a stereo tone: `hz` on the left, twice that on the right, at half amplitude.
fn tone(rate: u32, seconds: f32, hz: f32) -> Audio {
    let frames = (rate as f32 * seconds) as usize;
    let samples = (0..frames)
        .flat_map(|i| {
            let t = i as f32 / rate as f32;
            let wave = |f: f32| 0.5 * (2.0 * std::f32::consts::PI * f * t).sin();
            [wave(hz), wave(2.0 * hz)]
        })
        .collect();
    Audio::new(rate, 2, samples).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn mp4_sound_track_round_trips_through_flac_to_16_bit_precision() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("talking.mp4");
    // 1.3 s of sound (not a whole number of FLAC blocks) under 1 s of pictures.
    let sound = tone(24_000, 1.3, 440.0);
    let mut writer = Mp4Writer::create(&path, 64, 48, 16).unwrap();
    for frame in moving_frames(16, 64, 48) {
        writer.push(&frame).unwrap();
    }
    writer.set_audio(sound.clone());
    writer.finish(&json!({"seed": 3})).unwrap();

    let mut reader = Mp4Reader::open(&path).unwrap();
    let track = reader.audio.as_ref().expect("a sound track");
    assert_eq!(
        (track.codec.as_str(), track.sample_rate, track.channels),
        ("flac", 24_000, 2)
    );
    assert_eq!(track.duration_s, sound.duration_s());
    assert_eq!(reader.frame_count(), 16);
    assert_eq!(reader.metadata, json!({"seed": 3}));
    let decoded = reader.read_audio().unwrap().unwrap();
    assert_eq!(decoded.frames(), sound.frames());
    assert!(max_abs_diff(&decoded.samples, &sound.samples) <= 0.5 / 32768.0);
    // The pictures are unchanged by the sound beside them.
    assert_eq!(read_mp4(&path).unwrap().frames.len(), 16);

    // A silent clip has no sound track.
    let silent = dir.path().join("silent.mp4");
    write_mp4(&silent, &moving_frames(4, 64, 48), 8, &json!(null)).unwrap();
    let mut reader = Mp4Reader::open(&silent).unwrap();
    assert!(reader.audio.is_none());
    assert!(reader.read_audio().unwrap().is_none());
}

#[test]
fn a_truncated_sound_track_is_named_and_the_pictures_still_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    let mut writer = Mp4Writer::create(&path, 64, 48, 8).unwrap();
    for frame in moving_frames(8, 64, 48) {
        writer.push(&frame).unwrap();
    }
    writer.set_audio(tone(16_000, 1.0, 300.0));
    writer.finish(&json!(null)).unwrap();
    // The sound follows the pictures in mdat: cutting the file's tail cuts the sound only.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let err = error_text(Mp4Reader::open(&path).err().expect("refused"));
    assert!(
        err.contains("sound track") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn waveforms_are_checked_and_convert_to_wav_tensors_and_other_rates() {
    let err = error_text(Audio::new(24_000, 2, vec![0.0; 3]).unwrap_err());
    assert!(
        err.contains("3 interleaved samples") && err.contains("2 channels"),
        "{err}"
    );
    let err = error_text(Audio::new(24_000, 1, vec![0.0, f32::NAN]).unwrap_err());
    assert!(err.contains("sample 1 is not a finite number"), "{err}");
    let err = error_text(Audio::new(0, 1, vec![]).unwrap_err());
    assert!(err.contains("sample rate 0"), "{err}");

    let sound = tone(24_000, 0.5, 440.0);
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("sound.wav");
    sound.write_wav(&wav).unwrap();
    assert_eq!(Audio::read_wav(&wav).unwrap(), sound, "float WAV is exact");

    let tensor = sound.to_tensor(&candle_core::Device::Cpu).unwrap();
    assert_eq!(tensor.dims(), &[2, 12_000]);
    assert_eq!(Audio::from_tensor(&tensor, 24_000).unwrap(), sound);

    // Resampling keeps the length in seconds and the tones (against the ideal waveform at the
    // new rate, away from the edges where the filter starts and ends).
    let up = sound.resampled(48_000).unwrap();
    let ideal = tone(48_000, 0.5, 440.0);
    assert_eq!(up.frames(), ideal.frames());
    let middle = |a: &Audio| a.samples[2_000..46_000].to_vec();
    let err = max_abs_diff(&middle(&up), &middle(&ideal));
    assert!(err < 1e-3, "resampled tone off by {err}");
    let mono = sound.with_channels(1).unwrap();
    assert_eq!(mono.channels, 1);
    assert!((mono.samples[100] - (sound.samples[200] + sound.samples[201]) / 2.0).abs() < 1e-7);
    let padded = sound.slice(11_000, 2_000);
    assert_eq!(padded.frames(), 2_000);
    assert!(padded.samples[2_000..].iter().all(|s| *s == 0.0));
}
