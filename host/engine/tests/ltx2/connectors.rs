//! `LTX2TextConnectors` (LTX-2.0 and LTX-2.3 layouts, padded batches of 2) and the normalisations
//! of the stacked text-encoder hidden states, against diffusers.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use videosdgx_engine::families::ltx2::connectors::{
    LTX2TextConnectors, PaddingSide, per_layer_masked_mean_norm, per_token_rms_norm,
    stack_text_encoder_hidden_states,
};
use videosdgx_engine::models::relative_error;

const TOLERANCE: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/components")
        .join(name)
}

fn tensors(name: &str, file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join(file), &Device::Cpu).unwrap()
}

fn assert_close(what: &str, got: &Tensor, expected: &Tensor) {
    assert_eq!(got.dims(), expected.dims(), "{what}: shape");
    let err = relative_error(got, expected).unwrap();
    eprintln!("{what}: relative error {err:e}");
    assert!(
        err <= TOLERANCE,
        "{what}: relative error {err:e} > {TOLERANCE:e}"
    );
}

fn model(name: &str) -> LTX2TextConnectors {
    LTX2TextConnectors::load(&fixture(name).join("model"), &Device::Cpu, DType::F32).unwrap()
}

fn check(name: &str) {
    let inputs = tensors(name, "inputs.safetensors");
    let expected = tensors(name, "outputs.safetensors");
    let out = model(name)
        .forward(
            &inputs["text_encoder_hidden_states"],
            &inputs["attention_mask"],
            PaddingSide::Left,
            8.0,
        )
        .unwrap();
    assert_close(
        &format!("{name}/video_text_embedding"),
        &out.video_text_embedding,
        &expected["video_text_embedding"],
    );
    assert_close(
        &format!("{name}/audio_text_embedding"),
        &out.audio_text_embedding,
        &expected["audio_text_embedding"],
    );
    assert_eq!(out.attention_mask.dtype(), DType::I64);
    assert_eq!(
        out.attention_mask.to_vec2::<i64>().unwrap(),
        expected["attention_mask"].to_vec2::<i64>().unwrap(),
        "{name}/attention_mask"
    );
}

#[test]
fn ltx2_0_connectors_with_registers_and_left_padding_match_diffusers() {
    check("ltx2-connectors-v20");
}

#[test]
fn ltx2_3_connectors_with_split_rope_gates_and_a_masked_audio_connector_match_diffusers() {
    check("ltx2-connectors-v23");
}

#[test]
fn the_stacked_hidden_state_normalisations_match_diffusers() {
    let name = "ltx2-connectors-functions";
    let inputs = tensors(name, "inputs.safetensors");
    let expected = tensors(name, "outputs.safetensors");
    let hidden = &inputs["text_hidden_states"];
    let lengths = &inputs["sequence_lengths"];
    for (key, side, scale) in [
        ("masked_mean_norm_left", PaddingSide::Left, 8.0),
        ("masked_mean_norm_right", PaddingSide::Right, 5.0),
    ] {
        let got = per_layer_masked_mean_norm(hidden, lengths, side, scale, 1e-6).unwrap();
        assert_close(key, &got, &expected[key]);
    }
    let got = per_token_rms_norm(hidden, 1e-6).unwrap();
    assert_close("per_token_rms_norm", &got, &expected["per_token_rms_norm"]);
    let layers: Vec<Tensor> = (0..3)
        .map(|i| inputs[&format!("hidden_states.{i}")].clone())
        .collect();
    let packed = stack_text_encoder_hidden_states(&layers).unwrap();
    assert_close("packed", &packed, &expected["packed"]);
}

#[test]
fn connectors_reject_inputs_of_the_wrong_shape_by_name() {
    let name = "ltx2-connectors-v20";
    let connectors = model(name);
    let inputs = tensors(name, "inputs.safetensors");
    let run = |hidden: &Tensor, mask: &Tensor| {
        connectors
            .forward(hidden, mask, PaddingSide::Left, 8.0)
            .err()
            .expect("the forward must fail")
            .to_string()
    };
    let mask = &inputs["attention_mask"];
    let narrow = Tensor::zeros((2, 8, 40), DType::F32, &Device::Cpu).unwrap();
    let err = run(&narrow, mask);
    assert!(
        err.contains("text_encoder_hidden_states")
            && err.contains("[2, 8, 40]")
            && err.contains("[batch, seq, 48]"),
        "{err}"
    );
    let hidden = &inputs["text_encoder_hidden_states"];
    let err = run(hidden, &mask.narrow(1, 0, 6).unwrap());
    assert!(
        err.contains("attention_mask") && err.contains("[2, 6]") && err.contains("[2, 8]"),
        "{err}"
    );
    let err = run(
        &hidden.narrow(1, 0, 6).unwrap(),
        &mask.narrow(1, 0, 6).unwrap(),
    );
    assert!(
        err.contains("sequence length 6") && err.contains("learnable registers 4"),
        "{err}"
    );
    let soft = (mask.to_dtype(DType::F32).unwrap() * 0.5).unwrap();
    let err = run(hidden, &soft);
    assert!(err.contains("attention_mask must hold only 0"), "{err}");
}

#[test]
fn connectors_refuse_a_config_the_reference_cannot_run_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture("ltx2-connectors-v20").join("model");
    for (field, value, expected) in [
        (
            "rope_type",
            serde_json::json!("rotated"),
            "rope_type `rotated`",
        ),
        (
            "caption_channels",
            serde_json::json!(24),
            "caption_channels (24)",
        ),
    ] {
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        config[field] = value;
        std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
        std::fs::copy(
            dir.join("diffusion_pytorch_model.safetensors"),
            tmp.path().join("diffusion_pytorch_model.safetensors"),
        )
        .unwrap();
        let err = LTX2TextConnectors::load(tmp.path(), &Device::Cpu, DType::F32)
            .err()
            .expect("the config must be refused");
        let err = format!("{err:#}");
        assert!(
            err.contains("config.json") && err.contains(expected),
            "{err}"
        );
    }
}
