//! Plays a written MP4 in headless Chromium (the browser the studio's web UI targets): the file
//! must load, report its duration and size, seek, and show the right picture after the seek.
//! Needs a `chromium` binary (Debian: `apt-get install chromium`) or `CHROMIUM=/path`; without
//! one the test reports that it did not run.

use image::{Rgb, RgbImage};
use std::path::PathBuf;
use std::process::Command;
use videosdgx_engine::video::write_mp4;

fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| {
            ["chromium", "chromium-browser", "google-chrome"].map(|name| dir.join(name))
        })
        .find(|candidate| candidate.is_file())
}

const PAGE: &str = r#"<!doctype html>
<video id="v" src="clip.mp4" muted preload="auto"></video><canvas id="c"></canvas>
<script>
const v = document.getElementById("v");
function done(result) {
  const out = document.createElement("pre");
  out.id = "result";
  out.textContent = "RESULT " + JSON.stringify(result) + " END";
  document.body.appendChild(out);
}
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
    let Some(chromium) = chromium() else {
        eprintln!(
            "headless_chromium_loads_seeks_and_shows_the_mp4: not run, no chromium binary found"
        );
        return;
    };
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
    let page = dir.path().join("index.html");
    std::fs::write(&page, PAGE).unwrap();

    // Chromium's virtual time can run out before a loaded machine's media pipeline reports; a
    // page that never reported is run again (twice at most) before the test gives up on it.
    let mut attempts = Vec::new();
    let result = loop {
        let output = Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--allow-file-access-from-files",
                "--autoplay-policy=no-user-gesture-required",
                "--virtual-time-budget=10000",
                "--dump-dom",
            ])
            .arg(format!("file://{}", page.display()))
            .output()
            .unwrap();
        let dom = String::from_utf8_lossy(&output.stdout).to_string();
        // The page's own script also contains the marker: the result element is the last one,
        // and it holds an object (the script's text between the markers does not).
        let reported = dom
            .rsplit("RESULT ")
            .next()
            .and_then(|rest| rest.split(" END").next())
            .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
            .filter(serde_json::Value::is_object);
        if let Some(result) = reported {
            break result;
        }
        attempts.push(format!(
            "{dom}\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
        assert!(
            attempts.len() < 3,
            "the page never reported, in 3 runs: {}",
            attempts.join("\n---\n")
        );
    };
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
