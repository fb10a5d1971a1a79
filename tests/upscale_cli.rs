//! End-to-end: `videosdgx model forward --model FILE` on the committed upscaler fixtures
//! (tests/fixtures/finishing/upscalers): the architecture is read from the state dict, the
//! output matches spandrel whole and in tiles, and files it cannot take fail with one line.

#[path = "support/model_forward.rs"]
mod model_forward;
use model_forward::{forward, one_error_line};

use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/finishing/upscalers")
        .join(name)
}

fn image(path: &Path) -> Tensor {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()["image"].clone()
}

/// Runs `model forward --json` on fixture `name` and checks the record and the output.
fn check(name: &str, model_file: &str, extra: &[&str], architecture: &str, scale: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");
    let args: Vec<&str> = ["--json"].iter().chain(extra).copied().collect();
    let result = forward(
        &fixture(name).join(model_file),
        &fixture(name).join("inputs.safetensors"),
        &out,
        &args,
    );
    assert!(
        result.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    let record: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(record["architecture"], architecture, "{name}");
    assert_eq!(record["scale"], scale, "{name}");
    assert_eq!(record["outputs"][0]["name"], "image", "{name}");
    let expected = image(&fixture(name).join("outputs.safetensors"));
    let got = image(&out);
    assert_eq!(got.dims(), expected.dims(), "{name}");
    let err = videosdgx_engine::models::relative_error(&got, &expected).unwrap();
    assert!(err <= 1e-4, "{name} {extra:?}: relative error {err:e}");
}

#[test]
fn model_forward_detects_each_upscaler_and_matches_spandrel() {
    check("esrgan_x4", "model.safetensors", &[], "ESRGAN", 4);
    check("realesrgan_x2plus", "model.pth", &[], "ESRGAN", 2);
    check(
        "compact_x2",
        "model.safetensors",
        &[],
        "RealESRGAN Compact",
        2,
    );
    check(
        "swinir_direct_x3_3conv",
        "model.safetensors",
        &[],
        "SwinIR",
        3,
    );
}

#[test]
fn model_forward_in_tiles_matches_the_whole_frame() {
    // Compact's tile boxes (5 pixels and 4 around) lie inside its 14 x 17 frame; the others'
    // cover it, batched.
    let compact = "RealESRGAN Compact";
    check(
        "compact_x4",
        "model.safetensors",
        &["--tile", "5"],
        compact,
        4,
    );
    check(
        "esrgan_x4",
        "model.safetensors",
        &["--tile", "4"],
        "ESRGAN",
        4,
    );
    check(
        "swinir_pixelshuffle_x2",
        "model.safetensors",
        &["--tile", "4"],
        "SwinIR",
        2,
    );
}

#[test]
fn model_forward_on_a_file_it_cannot_take_names_it_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = fixture("compact_x2").join("inputs.safetensors");
    let out = tmp.path().join("out.safetensors");

    let garbage = tmp.path().join("4x_broken.pth");
    std::fs::write(&garbage, b"PK\x03\x04 truncated").unwrap();
    let line = one_error_line(&forward(&garbage, &inputs, &out, &[]));
    assert!(line.contains("4x_broken.pth"), "{line}");

    // A state dict of no known architecture: the inputs file is one.
    let line = one_error_line(&forward(&inputs, &inputs, &out, &[]));
    for needle in [
        "inputs.safetensors",
        "ESRGAN",
        "RealESRGAN Compact",
        "SwinIR",
    ] {
        assert!(line.contains(needle), "{needle} not in {line}");
    }

    // The right model with inputs that lack `image`.
    let model = fixture("compact_x2").join("model.safetensors");
    let line = one_error_line(&forward(&model, &model, &out, &[]));
    assert!(line.contains("no tensor `image`"), "{line}");
    assert!(!out.exists());
}
