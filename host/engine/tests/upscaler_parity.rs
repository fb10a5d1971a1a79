//! Upscalers (`finishing::upscale`) against spandrel 0.4.2: tiny random ESRGAN, RealESRGAN
//! Compact and SwinIR state dicts from tests/fixtures/make_upscaler_fixtures.py, f32 on the CPU;
//! tiled against untiled; detection; and the errors for files and inputs it cannot take.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use videosdgx_engine::finishing::upscale::Upscaler;
use videosdgx_engine::models::relative_error;

/// Relative error allowed in f32 (tests/fixtures/TOLERANCES.md), and between tiled and whole.
const TOLERANCE: f64 = 1e-4;

/// Each fixture with the architecture and scale spandrel reports for it.
const FIXTURES: [(&str, &str, usize); 11] = [
    ("esrgan_x4", "ESRGAN", 4),
    ("esrgan_old_x2", "ESRGAN", 2),
    ("esrgan_plus_x1", "ESRGAN", 1),
    ("realesrgan_x2plus", "ESRGAN", 2),
    ("realesrgan_x1_bsrgan", "ESRGAN", 1),
    ("compact_x4", "RealESRGAN Compact", 4),
    ("compact_x2", "RealESRGAN Compact", 2),
    ("swinir_pixelshuffle_x2", "SwinIR", 2),
    ("swinir_direct_x3_3conv", "SwinIR", 3),
    ("swinir_nearest_x4", "SwinIR", 4),
    ("swinir_denoise_w7", "SwinIR", 1),
];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/finishing/upscalers")
        .join(name)
}

/// The fixture's weights: `model.safetensors`, or `model.pth` for the PyTorch-zip one.
fn model_file(name: &str) -> PathBuf {
    let dir = fixture(name);
    let safetensors = dir.join("model.safetensors");
    if safetensors.exists() {
        safetensors
    } else {
        dir.join("model.pth")
    }
}

fn image(name: &str, file: &str) -> Tensor {
    let mut tensors =
        candle_core::safetensors::load(fixture(name).join(file), &Device::Cpu).unwrap();
    tensors.remove("image").unwrap()
}

fn load(name: &str) -> Upscaler {
    Upscaler::load(&model_file(name), &Device::Cpu, DType::F32)
        .unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

fn error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    relative_error(a, b).unwrap()
}

#[test]
fn every_fixture_is_detected_and_matches_spandrel() {
    for (name, architecture, scale) in FIXTURES {
        let model = load(name);
        assert_eq!(model.architecture(), architecture, "{name}");
        assert_eq!(model.scale(), scale, "{name}");
        let out = model
            .upscale(&image(name, "inputs.safetensors"), None)
            .unwrap();
        let err = error(&out, &image(name, "outputs.safetensors"));
        println!("{name}: relative error {err:.2e}");
        assert!(err <= TOLERANCE, "{name}: relative error {err:e}");
    }
}

/// A deterministic image in (0, 1) of any size, for comparisons that need no reference.
fn pattern(shape: (usize, usize, usize, usize)) -> Tensor {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let t = Tensor::arange(0u32, n as u32, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    (t * 0.37)
        .unwrap()
        .sin()
        .unwrap()
        .affine(0.45, 0.5)
        .unwrap()
        .reshape(shape)
        .unwrap()
}

#[test]
fn tiles_whose_overlap_covers_the_receptive_field_match_the_whole_frame() {
    // (fixture, input size in place of the fixture's, tile): each tile box (the tile and the
    // receptive field around it: ESRGAN+ 19 pixels, Compact 4, SwinIR 14 rounded up to its window
    // of 4 like the tile) is smaller than the frame on both axes, so that tile edges fall inside.
    for (name, size, tile) in [
        ("esrgan_plus_x1", Some((1, 3, 52, 52)), 12),
        ("compact_x4", None, 5),
        ("compact_x4", Some((2, 3, 30, 34)), 8),
        ("swinir_direct_x3_3conv", Some((1, 3, 50, 46)), 10),
    ] {
        let model = load(name);
        let input = match size {
            Some(shape) => pattern(shape),
            None => image(name, "inputs.safetensors"),
        };
        let whole = model.upscale(&input, None).unwrap();
        let tiled = model.upscale(&input, Some(tile)).unwrap();
        let err = error(&tiled, &whole);
        println!("{name}: tiled vs whole {err:.2e}");
        assert!(err <= TOLERANCE, "{name} tile {tile}: {err:e}");
        if size.is_none() {
            let err = error(&tiled, &image(name, "outputs.safetensors"));
            assert!(err <= TOLERANCE, "{name} tile {tile} vs spandrel: {err:e}");
        }
    }
}

#[test]
fn tiles_narrower_than_the_receptive_field_stay_close() {
    // Real-ESRGAN x2plus unshuffles by 2: its field (42 pixels) is wider than the largest
    // overlap (32), so tiles may differ a little near their edges, as real models do; on these
    // random weights the far field stays below f32 rounding.
    let name = "realesrgan_x2plus";
    let model = load(name);
    let input = pattern((1, 3, 96, 100));
    let whole = model.upscale(&input, None).unwrap();
    let tiled = model.upscale(&input, Some(24)).unwrap();
    let err = error(&tiled, &whole);
    println!("{name}: tiled vs whole {err:.2e}");
    assert!(err < 1e-2, "{name}: {err:e}");
}

/// Writes `tensors` as a safetensors file named `name` in `dir`.
fn write(dir: &Path, name: &str, tensors: HashMap<String, Tensor>) -> PathBuf {
    let path = dir.join(name);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

fn weights(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(model_file(name), &Device::Cpu).unwrap()
}

fn load_error(path: &Path) -> String {
    format!(
        "{:#}",
        Upscaler::load(path, &Device::Cpu, DType::F32)
            .err()
            .expect("refused")
    )
}

#[test]
fn unknown_and_malformed_state_dicts_are_refused_by_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();

    let unknown = write(
        dir.path(),
        "flownet.safetensors",
        HashMap::from([(
            "block0.conv0.weight".to_string(),
            Tensor::ones((4, 3, 3, 3), DType::F32, &Device::Cpu).unwrap(),
        )]),
    );
    let err = load_error(&unknown);
    for needle in [
        "flownet.safetensors",
        "ESRGAN",
        "RealESRGAN Compact",
        "SwinIR",
    ] {
        assert!(err.contains(needle), "{needle} not in: {err}");
    }

    let mut missing = weights("esrgan_old_x2");
    missing.remove("model.1.sub.0.RDB2.conv3.0.weight").unwrap();
    let path = write(dir.path(), "4x_missing.safetensors", missing);
    let err = load_error(&path);
    for needle in [
        "4x_missing.safetensors",
        "model.1.sub.0.RDB2.conv3.0.weight",
        "ESRGAN",
    ] {
        assert!(err.contains(needle), "{needle} not in: {err}");
    }

    let mut reshaped = weights("compact_x2");
    reshaped.insert(
        "body.2.weight".to_string(),
        Tensor::ones((8, 5, 3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    let path = write(dir.path(), "compact_bad.safetensors", reshaped);
    let err = load_error(&path);
    for needle in [
        "compact_bad.safetensors",
        "body.2.weight",
        "RealESRGAN Compact",
    ] {
        assert!(err.contains(needle), "{needle} not in: {err}");
    }

    // Swin2SR shares SwinIR's keys; spandrel tells it by `patch_embed.proj`, and so does this.
    let mut swin2sr = weights("swinir_denoise_w7");
    swin2sr.insert(
        "patch_embed.proj.weight".to_string(),
        Tensor::ones((8, 8, 1, 1), DType::F32, &Device::Cpu).unwrap(),
    );
    let path = write(dir.path(), "swin2sr.safetensors", swin2sr);
    let err = load_error(&path);
    assert!(
        err.contains("swin2sr.safetensors") && err.contains("match none"),
        "{err}"
    );

    let mut grey = weights("swinir_denoise_w7");
    grey.insert(
        "conv_first.weight".to_string(),
        Tensor::ones((8, 1, 3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    let path = write(dir.path(), "swinir_grey.safetensors", grey);
    let err = load_error(&path);
    assert!(
        err.contains("swinir_grey.safetensors") && err.contains("RGB"),
        "{err}"
    );
}

#[test]
fn inputs_that_are_not_rgb_batches_are_refused() {
    let model = load("compact_x2");
    for shape in [&[1, 4, 8, 8][..], &[3, 8, 8], &[1, 3, 0, 8]] {
        let input = Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
        let err = format!("{:#}", model.upscale(&input, None).unwrap_err());
        assert!(
            err.contains("compact_x2") && err.contains("[batch, 3, height, width]"),
            "{err}"
        );
    }
    let input = image("compact_x2", "inputs.safetensors");
    assert!(model.upscale(&input, Some(0)).is_err());
}
