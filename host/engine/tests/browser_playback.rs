//! Plays written MP4s in headless Chromium (the browser the studio's web UI targets): a file
//! must load, report its duration and size, seek and show the right picture after the seek, and
//! play and decode its FLAC sound track. The pages run through tests/web/page-result.mjs
//! (playwright-core), which waits for them in real time.
//! Prerequisites (installed by tests/run.sh): /usr/bin/chromium (or `VDGX_CHROMIUM`), node, and
//! `npm ci` in tests/web/.

#[path = "../../../tests/web_support/page.rs"]
mod page;

use image::{Rgb, RgbImage};
use page::run_page;
use videosdgx_engine::video::{Audio, Mp4Writer, write_mp4};

const PAGE: &str = r#"<video id="v" src="clip.mp4" muted preload="auto"></video><canvas id="c"></canvas>
<script>
const v = document.getElementById("v");
v.addEventListener("error", () => done({ error: v.error && v.error.code, message: v.error && v.error.message }));
v.addEventListener("loadeddata", () => { v.currentTime = 1.2; });
// A loaded machine may present the frame at the new position a little after `seeked`: the
// picture is sampled until it is the blue half, for at most 20 tries 50 ms apart, and the last
// sample is reported whatever it shows.
function sample(tries) {
  const c = document.getElementById("c");
  c.width = v.videoWidth; c.height = v.videoHeight;
  const g = c.getContext("2d");
  g.drawImage(v, 0, 0);
  const pixel = Array.from(g.getImageData(c.width >> 1, c.height >> 1, 1, 1).data.slice(0, 3));
  if (!(pixel[2] > 150 && pixel[0] < 80) && tries > 1) {
    setTimeout(() => sample(tries - 1), 50);
    return;
  }
  done({ readyState: v.readyState, duration: v.duration, width: v.videoWidth, height: v.videoHeight,
         currentTime: v.currentTime, pixel, canPlay: v.canPlayType('video/mp4; codecs="avc1.42C01E"') });
}
v.addEventListener("seeked", () => sample(20));
</script>"#;

#[test]
fn headless_chromium_loads_seeks_and_shows_the_mp4() {
    let dir = tempfile::tempdir().unwrap();
    // One second of red, then one second of blue, at 16 fps.
    let frames: Vec<RgbImage> = (0..32)
        .map(|i| {
            RgbImage::from_pixel(
                160,
                96,
                Rgb(if i < 16 { [220, 20, 20] } else { [20, 20, 220] }),
            )
        })
        .collect();
    write_mp4(
        &dir.path().join("clip.mp4"),
        &frames,
        16,
        &serde_json::json!({"prompt": "test"}),
    )
    .unwrap();
    let result = run_page(dir.path(), PAGE);
    eprintln!("chromium: {result}");
    assert!(
        result.get("error").is_none(),
        "Chromium could not play the file: {result}"
    );
    assert!(result["readyState"].as_u64().unwrap() >= 2, "{result}");
    assert!(
        (result["duration"].as_f64().unwrap() - 2.0).abs() < 0.01,
        "{result}"
    );
    assert_eq!(
        (result["width"].as_u64(), result["height"].as_u64()),
        (Some(160), Some(96))
    );
    assert_eq!(result["canPlay"], "probably");
    let pixel: Vec<u64> = result["pixel"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(
        pixel[2] > 150 && pixel[0] < 80,
        "after seeking to 1.2 s the picture is blue: {pixel:?}"
    );
}

/// Loads `html` as `index.html` beside the files in `dir` and returns the object the page
/// reports as the text of its `#result` element.
const AUDIO_PAGE: &str = r#"<video id="v" src="clip.mp4" muted preload="auto"></video>
<script>
const v = document.getElementById("v");
v.addEventListener("error", () => done({ error: v.error && v.error.code, message: v.error && v.error.message }));
// The media element plays the file with its sound track, and Web Audio decodes that track.
v.addEventListener("loadeddata", async () => {
  try {
    await v.play();
    await new Promise((resolve) => setTimeout(resolve, 600));
    const decodedByElement = v.webkitAudioDecodedByteCount;
    const bytes = await (await fetch("clip.mp4")).arrayBuffer();
    const audio = await new OfflineAudioContext(2, 48000, 48000).decodeAudioData(bytes);
    const left = audio.getChannelData(0);
    // Zero crossings over the first second give the tone's frequency.
    let crossings = 0, peak = 0;
    for (let i = 1; i < audio.sampleRate; i++) {
      if ((left[i - 1] < 0) !== (left[i] < 0)) crossings++;
      peak = Math.max(peak, Math.abs(left[i]));
    }
    done({ duration: v.duration, decodedByElement, audioDuration: audio.duration,
           channels: audio.numberOfChannels, frequency: crossings / 2, peak });
  } catch (err) {
    done({ error: String(err) });
  }
});
</script>"#;

#[test]
fn headless_chromium_plays_and_decodes_the_flac_sound_track() {
    let dir = tempfile::tempdir().unwrap();
    // Two seconds of pictures and of a 440 Hz stereo tone at half amplitude, 24 kHz (LTX-2's rate).
    let rate = 24_000;
    let samples = (0..2 * rate)
        .flat_map(|i| {
            let s = 0.5 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / rate as f32).sin();
            [s, s]
        })
        .collect();
    let mut writer = Mp4Writer::create(&dir.path().join("clip.mp4"), 160, 96, 16).unwrap();
    for _ in 0..32 {
        writer
            .push(&RgbImage::from_pixel(160, 96, Rgb([40, 160, 40])))
            .unwrap();
    }
    writer.set_audio(Audio::new(rate, 2, samples).unwrap());
    writer.finish(&serde_json::json!(null)).unwrap();

    let result = run_page(dir.path(), AUDIO_PAGE);
    eprintln!("chromium: {result}");
    assert!(
        result.get("error").is_none(),
        "Chromium could not play the file: {result}"
    );
    assert!(
        (result["duration"].as_f64().unwrap() - 2.0).abs() < 0.01,
        "{result}"
    );
    assert!(
        result["decodedByElement"].as_u64().unwrap() > 0,
        "the video element decoded no sound: {result}"
    );
    // Web Audio resamples to its context's 48 kHz; the tone and its level survive.
    assert!(
        (result["audioDuration"].as_f64().unwrap() - 2.0).abs() < 0.01,
        "{result}"
    );
    assert_eq!(result["channels"], 2, "{result}");
    assert!(
        (result["frequency"].as_f64().unwrap() - 440.0).abs() <= 2.0,
        "{result}"
    );
    assert!(
        (result["peak"].as_f64().unwrap() - 0.5).abs() < 0.02,
        "{result}"
    );
}
