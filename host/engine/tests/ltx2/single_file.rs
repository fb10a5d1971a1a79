//! LTX-2 single-file checkpoints (`ltx-2-19b-dev.safetensors` and its `-fp8` variant) against
//! diffusers: the fixture of tests/fixtures/make_ltx2_single_file_fixtures.py, one file in the
//! original names holding the transformer, the video VAE, the audio VAE and the vocoder, in a
//! folder with each component's `config.json`; detection, the components read through the
//! mapped names (the float8 weights dequantized), and the errors for files that are not LTX-2
//! or lack a component.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use videosdgx_engine::families::ltx2::audio_vae::AutoencoderKLLTX2Audio;
use videosdgx_engine::families::ltx2::transformer::{
    LTX2TransformerInputs, LTX2VideoTransformer3DModel,
};
use videosdgx_engine::families::ltx2::video_vae::AutoencoderKLLTX2Video;
use videosdgx_engine::families::ltx2::vocoder::LTX2Vocoder;
use videosdgx_engine::loader::single_file::{self, OriginalLayout};
use videosdgx_engine::models::relative_error;

/// Relative error allowed in f32 (tests/fixtures/components/TOLERANCES.md).
const TOLERANCE: f64 = 1e-4;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/components/ltx2-single-file")
}

fn checkpoint() -> PathBuf {
    fixture().join("ltx-2-tiny.safetensors")
}

fn tensors(file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join(file), &Device::Cpu).unwrap()
}

fn assert_close(what: &str, got: &Tensor, expected: &Tensor) {
    assert_eq!(got.dims(), expected.dims(), "{what}: shape");
    let err = relative_error(got, expected).unwrap();
    eprintln!("{what}: relative error {err:.3e}");
    assert!(err <= TOLERANCE, "{what}: relative error {err:e}");
}

fn check_transformer(file: &Path, outputs: &str) {
    let model = LTX2VideoTransformer3DModel::load(file, &Device::Cpu, DType::F32).unwrap();
    let inputs = tensors("transformer_inputs.safetensors");
    let (sample, audio_sample) = model
        .forward(&LTX2TransformerInputs::from_named(&inputs).unwrap())
        .unwrap();
    let expected = tensors(outputs);
    assert_close(&format!("{outputs} sample"), &sample, &expected["sample"]);
    assert_close(
        &format!("{outputs} audio_sample"),
        &audio_sample,
        &expected["audio_sample"],
    );
}

#[test]
fn ltx2_single_files_are_detected_by_their_keys() {
    assert_eq!(
        single_file::detect_file(&checkpoint()).unwrap(),
        Some(OriginalLayout::Ltx2)
    );
    assert_eq!(
        single_file::detect_file(&fixture().join("ltx-2-tiny-fp8.safetensors")).unwrap(),
        Some(OriginalLayout::Ltx2)
    );
    let upsampler = fixture().join("../ltx2-upsampler-2d/model");
    let weights = std::fs::read_dir(&upsampler)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|e| e == "safetensors"))
        .unwrap();
    assert_eq!(
        single_file::detect_file(&weights).unwrap(),
        Some(OriginalLayout::Ltx2LatentUpsampler)
    );
    // A diffusers component file is none of the original layouts.
    assert_eq!(
        single_file::detect_file(
            &fixture().join("../ltx2-vocoder-leaky/model/diffusion_pytorch_model.safetensors")
        )
        .unwrap(),
        None
    );
}

#[test]
fn ltx2_single_file_transformer_matches_diffusers() {
    check_transformer(&checkpoint(), "transformer_outputs.safetensors");
}

#[test]
fn ltx2_fp8_single_file_transformer_matches_diffusers_on_the_dequantized_weights() {
    check_transformer(
        &fixture().join("ltx-2-tiny-fp8.safetensors"),
        "transformer_fp8_outputs.safetensors",
    );
}

#[test]
fn ltx2_single_file_video_vae_matches_diffusers() {
    let vae = AutoencoderKLLTX2Video::load(&checkpoint(), &Device::Cpu, DType::F32).unwrap();
    let sample = vae
        .decode(&tensors("vae_inputs.safetensors")["latents"], None)
        .unwrap();
    assert_close(
        "vae decode",
        &sample,
        &tensors("vae_outputs.safetensors")["sample"],
    );
}

#[test]
fn ltx2_single_file_audio_vae_and_vocoder_match_diffusers() {
    let vae = AutoencoderKLLTX2Audio::load(&checkpoint(), &Device::Cpu, DType::F32).unwrap();
    let sample = vae
        .decode(&tensors("audio_vae_inputs.safetensors")["latents"])
        .unwrap();
    assert_close(
        "audio_vae decode",
        &sample,
        &tensors("audio_vae_outputs.safetensors")["sample"],
    );
    let vocoder = LTX2Vocoder::load(&checkpoint(), &Device::Cpu, DType::F32).unwrap();
    let waveform = vocoder
        .forward(&tensors("vocoder_inputs.safetensors")["hidden_states"])
        .unwrap();
    assert_close(
        "vocoder",
        &waveform,
        &tensors("vocoder_outputs.safetensors")["sample"],
    );
}

#[test]
fn ltx2_single_file_errors_name_the_file_and_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let original = candle_core::safetensors::load(checkpoint(), &Device::Cpu).unwrap();

    // No vocoder in the file.
    let partial: HashMap<String, Tensor> = original
        .iter()
        .filter(|(name, _)| !name.starts_with("vocoder."))
        .map(|(name, t)| (name.clone(), t.clone()))
        .collect();
    let file = dir.path().join("no-vocoder.safetensors");
    candle_core::safetensors::save(&partial, &file).unwrap();
    let err = format!(
        "{:#}",
        LTX2Vocoder::load(&file, &Device::Cpu, DType::F32)
            .err()
            .unwrap()
    );
    assert!(
        err.contains("no-vocoder.safetensors")
            && err.contains("no LTX2Vocoder")
            && err.contains("`vocoder.`"),
        "{err}"
    );

    // A transformer tensor missing: named in its original spelling. The file lies beside the
    // fixture's `transformer/config.json`, as in a diffusers LTX-2 folder.
    std::fs::create_dir(dir.path().join("transformer")).unwrap();
    std::fs::copy(
        fixture().join("transformer/config.json"),
        dir.path().join("transformer/config.json"),
    )
    .unwrap();
    let mut truncated = original.clone();
    truncated.remove("model.diffusion_model.transformer_blocks.1.attn1.q_norm.weight");
    let file = dir.path().join("truncated.safetensors");
    candle_core::safetensors::save(&truncated, &file).unwrap();
    let err = format!(
        "{:#}",
        LTX2VideoTransformer3DModel::load(&file, &Device::Cpu, DType::F32)
            .err()
            .unwrap()
    );
    assert!(
        err.contains("model.diffusion_model.transformer_blocks.1.attn1.q_norm.weight"),
        "{err}"
    );

    // Without configs, the published model's: the shapes then disagree, the error says where
    // the configs go.
    let file = dir.path().join("no-config").join("ltx-2-tiny.safetensors");
    std::fs::create_dir(file.parent().unwrap()).unwrap();
    std::fs::copy(checkpoint(), &file).unwrap();
    let err = format!(
        "{:#}",
        AutoencoderKLLTX2Audio::load(&file, &Device::Cpu, DType::F32)
            .err()
            .unwrap()
    );
    assert!(
        err.contains("audio_vae/config.json") && err.contains("has shape"),
        "{err}"
    );

    // Not an LTX-2 file: a video VAE cannot be read from a vocoder's diffusers weights.
    let err = format!(
        "{:#}",
        AutoencoderKLLTX2Video::load(
            &fixture().join("../ltx2-vocoder-leaky/model/diffusion_pytorch_model.safetensors"),
            &Device::Cpu,
            DType::F32
        )
        .err()
        .unwrap()
    );
    assert!(
        err.contains("diffusion_pytorch_model.safetensors")
            && err.contains("AutoencoderKLLTX2Video"),
        "{err}"
    );
}
