//! AutoencoderKLWan (Wan 2.1 and the Wan 2.2 residual/patchified variant) against diffusers:
//! tiny random VAEs from tests/fixtures/make_pipeline_fixtures.py, f32 on the CPU.

use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use videosdgx_engine::families::wan::vae::AutoencoderKLWan;

/// Relative error allowed for one component in f32 (tests/fixtures/TOLERANCES.md).
const TOLERANCE: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/vae")
        .join(name)
}

fn tensor(dir: &Path, file: &str, key: &str) -> Tensor {
    let mut map = candle_core::safetensors::load(dir.join(file), &Device::Cpu).unwrap();
    map.remove(key)
        .unwrap_or_else(|| panic!("{file} has no {key}"))
}

fn rel_err(out: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(out.dims(), reference.dims(), "shape");
    let diff = (out - reference).unwrap().sqr().unwrap().sum_all().unwrap();
    let norm = reference.sqr().unwrap().sum_all().unwrap();
    (diff.to_scalar::<f32>().unwrap() as f64 / norm.to_scalar::<f32>().unwrap() as f64).sqrt()
}

fn check(name: &str) {
    let dir = fixture(name);
    let vae = AutoencoderKLWan::load(&dir, &Device::Cpu, DType::F32).unwrap();

    let latents = vae
        .encode(&tensor(&dir, "encode_in.safetensors", "sample"))
        .unwrap();
    let err = rel_err(&latents, &tensor(&dir, "encode_out.safetensors", "latents"));
    assert!(err <= TOLERANCE, "{name} encode: relative error {err:e}");

    let video = vae
        .decode(&tensor(&dir, "decode_in.safetensors", "latents"))
        .unwrap();
    let err = rel_err(&video, &tensor(&dir, "decode_out.safetensors", "sample"));
    assert!(err <= TOLERANCE, "{name} decode: relative error {err:e}");
}

#[test]
fn wan21_vae_encodes_and_decodes_like_diffusers() {
    check("wan21");
}

#[test]
fn wan22_residual_patchified_vae_encodes_and_decodes_like_diffusers() {
    check("wan22");
}

#[test]
fn latent_normalisation_round_trips() {
    let vae = AutoencoderKLWan::load(&fixture("wan21"), &Device::Cpu, DType::F32).unwrap();
    let z = Tensor::randn(0f32, 1f32, (1, 4, 2, 3, 3), &Device::Cpu).unwrap();
    let back = vae
        .denormalize_latents(&vae.normalize_latents(&z).unwrap())
        .unwrap();
    assert!(rel_err(&back, &z) < 1e-6);
}

#[test]
fn decode_rejects_latents_with_the_wrong_channel_count() {
    let vae = AutoencoderKLWan::load(&fixture("wan21"), &Device::Cpu, DType::F32).unwrap();
    let z = Tensor::zeros((1, 5, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let err = vae.decode(&z).unwrap_err().to_string();
    assert!(
        err.contains("5 channels") && err.contains("z_dim is 4"),
        "{err}"
    );
}

#[test]
fn missing_weights_name_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("wan21").join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let err = format!(
        "{:#}",
        AutoencoderKLWan::load(dir.path(), &Device::Cpu, DType::F32)
            .err()
            .unwrap()
    );
    assert!(
        err.contains("safetensors") && err.contains(&dir.path().display().to_string()),
        "{err}"
    );
}
