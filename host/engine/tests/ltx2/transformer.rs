//! `LTX2VideoTransformer3DModel` against diffusers on the fixtures of
//! tests/fixtures/make_ltx2_transformer_fixtures.py: interleaved float64 RoPE with padded masks
//! (LTX-2.0), split float32 RoPE with the LTX-2.3 options, odd sizes and per-token timesteps,
//! spatio-temporal guidance with explicit per-sample coordinates and keyframe tokens, and modality
//! isolation.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use videosdgx_engine::families::ltx2::transformer::{
    LTX2TransformerInputs, LTX2VideoTransformer3DModel,
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

fn load(name: &str) -> LTX2VideoTransformer3DModel {
    LTX2VideoTransformer3DModel::load(&fixture(name).join("model"), &Device::Cpu, DType::F32)
        .unwrap()
}

fn check(name: &str) {
    let model = load(name);
    let inputs = tensors(name, "inputs.safetensors");
    let expected = tensors(name, "outputs.safetensors");
    let (sample, audio_sample) = model
        .forward(&LTX2TransformerInputs::from_named(&inputs).unwrap())
        .unwrap();
    for (key, got) in [("sample", &sample), ("audio_sample", &audio_sample)] {
        let want = &expected[key];
        assert_eq!(got.dims(), want.dims(), "{name}/{key}: shape");
        let err = relative_error(got, want).unwrap();
        eprintln!("{name}/{key}: relative error {err:e}");
        assert!(err <= TOLERANCE, "{name}/{key}: relative error {err:e}");
    }
}

#[test]
fn ltx2_transformer_interleaved_rope_with_padded_masks_matches_diffusers() {
    check("ltx2-transformer-interleaved");
}

#[test]
fn ltx2_transformer_split_rope_with_ltx23_options_matches_diffusers() {
    check("ltx2-transformer-split");
}

#[test]
fn ltx2_transformer_guidance_with_explicit_coords_and_keyframes_matches_diffusers() {
    check("ltx2-transformer-guidance");
}

#[test]
fn ltx2_transformer_isolated_modalities_with_every_block_perturbed_matches_diffusers() {
    check("ltx2-transformer-isolated");
}

#[test]
fn ltx2_transformer_rejects_hidden_states_that_do_not_fill_the_grid() {
    let name = "ltx2-transformer-interleaved";
    let model = load(name);
    let mut inputs = tensors(name, "inputs.safetensors");
    // 2 x 3 x 4 latents make 24 tokens; drop one.
    let hidden = inputs["hidden_states"].narrow(1, 0, 23).unwrap();
    inputs.insert("hidden_states".into(), hidden);
    let err = model
        .forward(&LTX2TransformerInputs::from_named(&inputs).unwrap())
        .expect_err("23 tokens cannot fill 2 x 3 x 4 latents")
        .to_string();
    assert!(
        err.contains("hidden_states has 23 tokens") && err.contains("24 patches"),
        "{err}"
    );

    inputs.remove("audio_hidden_states");
    let err = LTX2TransformerInputs::from_named(&inputs)
        .err()
        .expect("audio_hidden_states is required")
        .to_string();
    assert!(err.contains("`audio_hidden_states`"), "{err}");
}
