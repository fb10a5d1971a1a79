//! The sound path after the transformer: `AutoencoderKLLTX2Audio` (decode, encode, the pipeline's
//! latent statistics), `LTX2Vocoder` and `LTX2VocoderWithBWE`, against the fixtures of
//! tests/fixtures/make_ltx2_audio_fixtures.py.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use videosdgx_engine::families::ltx2::audio_vae::AutoencoderKLLTX2Audio;
use videosdgx_engine::families::ltx2::vocoder::{LTX2Vocoder, LTX2VocoderWithBWE};
use videosdgx_engine::models::relative_error;

const TOLERANCE: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/components")
        .join(name)
}

fn tensors(dir: &Path, file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join(file), &Device::Cpu).unwrap()
}

fn assert_close(name: &str, got: &Tensor, expected: &Tensor) {
    assert_eq!(got.dims(), expected.dims(), "{name}: shape");
    let err = relative_error(got, expected).unwrap();
    eprintln!("{name}: relative error {err:.3e}");
    assert!(err <= TOLERANCE, "{name}: relative error {err:e}");
}

fn audio_vae(name: &str) -> AutoencoderKLLTX2Audio {
    AutoencoderKLLTX2Audio::load(&fixture(name).join("model"), &Device::Cpu, DType::F32).unwrap()
}

fn check_audio_vae(name: &str) {
    let vae = audio_vae(name);
    let dir = fixture(name);
    let inputs = tensors(&dir, "inputs.safetensors");
    let outputs = tensors(&dir, "outputs.safetensors");
    let sample = vae.decode(&inputs["latents"]).unwrap();
    assert_close(&format!("{name} decode"), &sample, &outputs["sample"]);
    let latents = vae.encode(&inputs["sample"]).unwrap();
    assert_close(&format!("{name} encode"), &latents, &outputs["latents"]);
    if let Some(packed) = inputs.get("packed") {
        let denormalized = vae.denormalize_latents(packed).unwrap();
        assert_close(
            &format!("{name} denormalize"),
            &denormalized,
            &outputs["denormalized"],
        );
        let back = vae.normalize_latents(&denormalized).unwrap();
        assert!(relative_error(&back, packed).unwrap() < 1e-6);
        // Packing is the inverse of unpacking at the latents' mel bins.
        let mel_bins = vae.latent_mel_bins().unwrap();
        let unpacked = AutoencoderKLLTX2Audio::unpack_latents(packed, mel_bins).unwrap();
        assert_eq!(unpacked.dims(), inputs["latents"].dims());
        let repacked = AutoencoderKLLTX2Audio::pack_latents(&unpacked).unwrap();
        assert_eq!(relative_error(&repacked, packed).unwrap(), 0.0);
    }
}

#[test]
fn audio_vae_height_causal_with_attention_matches_diffusers() {
    check_audio_vae("ltx2-audio-vae-causal");
    let vae = audio_vae("ltx2-audio-vae-causal");
    assert_eq!(vae.latent_mel_bins().unwrap(), 4);
    assert_eq!(vae.sample_rate(), 16000);
    assert!((vae.latents_per_second() - 25.0).abs() < 1e-12);
}

#[test]
fn audio_vae_width_causal_without_double_z_pads_the_mel_bins_like_diffusers() {
    check_audio_vae("ltx2-audio-vae-width");
}

#[test]
fn audio_vae_without_causality_matches_diffusers() {
    check_audio_vae("ltx2-audio-vae-none");
}

#[test]
fn audio_vae_width_compatibility_without_mel_bins_matches_diffusers() {
    check_audio_vae("ltx2-audio-vae-compat");
    assert!(
        audio_vae("ltx2-audio-vae-compat")
            .latent_mel_bins()
            .is_err()
    );
}

fn check_vocoder(name: &str, forward: impl Fn(&Tensor) -> candle_core::Result<Tensor>) {
    let dir = fixture(name);
    let sample = forward(&tensors(&dir, "inputs.safetensors")["hidden_states"]).unwrap();
    assert_close(
        name,
        &sample,
        &tensors(&dir, "outputs.safetensors")["sample"],
    );
}

fn vocoder(name: &str) -> LTX2Vocoder {
    LTX2Vocoder::load(&fixture(name).join("model"), &Device::Cpu, DType::F32).unwrap()
}

#[test]
fn vocoder_with_leaky_relu_matches_diffusers() {
    let model = vocoder("ltx2-vocoder-leaky");
    assert_eq!(model.output_sampling_rate(), 12000);
    assert_eq!(model.total_upsample_factor(), 12);
    check_vocoder("ltx2-vocoder-leaky", |x| model.forward(x));
}

#[test]
fn vocoder_with_anti_aliased_snake_matches_diffusers() {
    let model = vocoder("ltx2-vocoder-snake");
    check_vocoder("ltx2-vocoder-snake", |x| model.forward(x));
}

#[test]
fn vocoder_with_plain_snakebeta_matches_diffusers() {
    let model = vocoder("ltx2-vocoder-snakebeta");
    check_vocoder("ltx2-vocoder-snakebeta", |x| model.forward(x));
}

#[test]
fn vocoder_with_bandwidth_extension_matches_diffusers() {
    let dir = fixture("ltx2-vocoder-bwe").join("model");
    let model = LTX2VocoderWithBWE::load(&dir, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(model.output_sampling_rate(), 16000);
    check_vocoder("ltx2-vocoder-bwe", |x| model.forward(x));
}

#[test]
fn inputs_of_the_wrong_shape_are_refused_with_the_shape() {
    let vae = audio_vae("ltx2-audio-vae-causal");
    let latents = Tensor::zeros((1, 3, 5, 4), DType::F32, &Device::Cpu).unwrap();
    let err = vae.decode(&latents).unwrap_err().to_string();
    assert!(
        err.contains("[1, 3, 5, 4]") && err.contains("[batch, 1, frames, mel_bins]"),
        "{err}"
    );
    let sample = Tensor::zeros((1, 5, 16), DType::F32, &Device::Cpu).unwrap();
    let err = vae.encode(&sample).unwrap_err().to_string();
    assert!(err.contains("[1, 5, 16]"), "{err}");
    let packed = Tensor::zeros((1, 5, 6), DType::F32, &Device::Cpu).unwrap();
    let err = vae.normalize_latents(&packed).unwrap_err().to_string();
    assert!(
        err.contains("[1, 5, 6]") && err.contains("[batch, frames, 4]"),
        "{err}"
    );

    let model = vocoder("ltx2-vocoder-leaky");
    let mel = Tensor::zeros((1, 2, 7, 7), DType::F32, &Device::Cpu).unwrap();
    let err = model.forward(&mel).unwrap_err().to_string();
    assert!(
        err.contains("[1, 2, 7, 7]") && err.contains("= 16"),
        "{err}"
    );
}

/// A copy of fixture `name`'s model without tensor `missing`, or with `config` patched.
fn altered(
    name: &str,
    missing: Option<&str>,
    patch: &[(&str, serde_json::Value)],
) -> tempfile::TempDir {
    let source = fixture(name).join("model");
    let dir = tempfile::tempdir().unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap())
            .unwrap();
    for (key, value) in patch {
        config[*key] = value.clone();
    }
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let file = "diffusion_pytorch_model.safetensors";
    let mut weights = tensors(&source, file);
    if let Some(missing) = missing {
        weights.remove(missing).unwrap();
    }
    candle_core::safetensors::save(&weights, dir.path().join(file)).unwrap();
    dir
}

#[test]
fn a_missing_tensor_or_an_unsupported_option_is_named() {
    let dir = altered(
        "ltx2-audio-vae-width",
        Some("decoder.mid.attn_1.q.weight"),
        &[],
    );
    let err = format!(
        "{:#}",
        AutoencoderKLLTX2Audio::load(dir.path(), &Device::Cpu, DType::F32)
            .err()
            .unwrap()
    );
    assert!(err.contains("decoder.mid.attn_1.q.weight"), "{err}");

    let dir = altered(
        "ltx2-audio-vae-causal",
        None,
        &[("norm_type", "group".into())],
    );
    let err = format!(
        "{:#}",
        AutoencoderKLLTX2Audio::load(dir.path(), &Device::Cpu, DType::F32)
            .err()
            .unwrap()
    );
    assert!(
        err.contains("config.json") && err.contains("GroupNorm"),
        "{err}"
    );

    let dir = altered("ltx2-vocoder-leaky", None, &[("antialias", true.into())]);
    let err = format!(
        "{:#}",
        LTX2Vocoder::load(dir.path(), &Device::Cpu, DType::F32)
            .err()
            .unwrap()
    );
    assert!(
        err.contains("config.json") && err.contains("antialias"),
        "{err}"
    );

    let dir = altered(
        "ltx2-vocoder-snake",
        None,
        &[("final_act_fn", "sigmoid".into())],
    );
    let err = format!(
        "{:#}",
        LTX2Vocoder::load(dir.path(), &Device::Cpu, DType::F32)
            .err()
            .unwrap()
    );
    assert!(
        err.contains("final_act_fn") && err.contains("sigmoid"),
        "{err}"
    );
}

#[test]
fn the_fixtures_verify_clean() {
    for name in [
        "ltx2-audio-vae-causal",
        "ltx2-audio-vae-width",
        "ltx2-vocoder-snake",
        "ltx2-vocoder-bwe",
    ] {
        let report = videosdgx_engine::loader::verify(&fixture(name).join("model")).unwrap();
        assert!(report.is_ok(), "{name}: {report:#?}");
    }
}
