//! The 2-D image VAEs (`AutoencoderKL`, `AutoencoderKLFlux2`) and FLUX.2's latent steps against
//! diffusers: tiny random VAEs from tests/fixtures/make_image_vae_fixtures.py, f32 on the CPU.

use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use videosdgx_engine::families::flux2::vae::AutoencoderKLFlux2;
use videosdgx_engine::models::autoencoder_kl::AutoencoderKL;
use videosdgx_engine::models::relative_error;

/// Relative error allowed for a VAE in f32 (tests/fixtures/TOLERANCES.md).
const TOLERANCE: f64 = 1e-4;
/// The latent helpers only reshape and standardise.
const HELPER_TOLERANCE: f64 = 1e-5;

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

fn assert_close(name: &str, got: &Tensor, expected: &Tensor, tolerance: f64) {
    assert_eq!(got.dims(), expected.dims(), "{name}: shape");
    let err = relative_error(got, expected).unwrap();
    eprintln!("{name}: relative error {err:.3e}");
    assert!(err <= tolerance, "{name}: relative error {err:e}");
}

/// Encodes `encode_in` and decodes `decode_in` of fixture `name` with `encode`/`decode`.
fn check(
    name: &str,
    encode: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    decode: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) {
    let dir = fixture(name);
    let latents = encode(&tensor(&dir, "encode_in.safetensors", "sample")).unwrap();
    let expected = tensor(&dir, "encode_out.safetensors", "latents");
    assert_close(&format!("{name} encode"), &latents, &expected, TOLERANCE);
    let sample = decode(&tensor(&dir, "decode_in.safetensors", "latents")).unwrap();
    let expected = tensor(&dir, "decode_out.safetensors", "sample");
    assert_close(&format!("{name} decode"), &sample, &expected, TOLERANCE);
}

fn kl(name: &str) -> AutoencoderKL {
    AutoencoderKL::load(&fixture(name), &Device::Cpu, DType::F32).unwrap()
}

fn flux2() -> AutoencoderKLFlux2 {
    AutoencoderKLFlux2::load(&fixture("flux2-tiny"), &Device::Cpu, DType::F32).unwrap()
}

#[test]
fn kl_tiny_encodes_and_decodes_like_diffusers() {
    let vae = kl("kl-tiny");
    assert_eq!(vae.config().shift_factor, Some(0.1159));
    check("kl-tiny", |x| vae.encode(x), |z| vae.decode(z));
}

#[test]
fn kl_odd_three_blocks_without_quant_convs_or_attention_match_diffusers() {
    let vae = kl("kl-odd");
    check("kl-odd", |x| vae.encode(x), |z| vae.decode(z));
}

#[test]
fn attention_weights_under_the_deprecated_names_load_too() {
    let renamed = tempfile::tempdir().unwrap();
    let source = fixture("kl-tiny");
    std::fs::copy(
        source.join("config.json"),
        renamed.path().join("config.json"),
    )
    .unwrap();
    let weights = candle_core::safetensors::load(
        source.join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let weights: std::collections::HashMap<String, Tensor> = weights
        .into_iter()
        .map(|(name, tensor)| {
            let name = name
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            (name, tensor)
        })
        .collect();
    assert!(weights.contains_key("encoder.mid_block.attentions.0.query.weight"));
    candle_core::safetensors::save(
        &weights,
        renamed.path().join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let vae = AutoencoderKL::load(renamed.path(), &Device::Cpu, DType::F32).unwrap();
    check("kl-tiny", |x| vae.encode(x), |z| vae.decode(z));
}

#[test]
fn flux2_tiny_encodes_and_decodes_like_diffusers() {
    let vae = flux2();
    check("flux2-tiny", |x| vae.encode(x), |z| vae.decode(z));
}

#[test]
fn flux2_latent_helpers_match_the_pipeline() {
    let vae = flux2();
    let dir = fixture("flux2-tiny");
    let helpers = |key| tensor(&dir, "latent_helpers.safetensors", key);
    let normalized = vae
        .normalize_latents(&vae.patchify_latents(&helpers("encoded")).unwrap())
        .unwrap();
    assert_close(
        "flux2-tiny patchify+normalize",
        &normalized,
        &helpers("patchified_normalized"),
        HELPER_TOLERANCE,
    );
    let restored = vae
        .unpatchify_latents(&vae.denormalize_latents(&helpers("normalized_in")).unwrap())
        .unwrap();
    assert_close(
        "flux2-tiny denormalize+unpatchify",
        &restored,
        &helpers("unpatchified_denormalized"),
        HELPER_TOLERANCE,
    );
}

#[test]
fn the_fixtures_verify_clean() {
    for name in ["kl-tiny", "kl-odd", "flux2-tiny"] {
        let report = videosdgx_engine::loader::verify(&fixture(name)).unwrap();
        assert!(report.is_ok(), "{name}: {report:#?}");
    }
}

/// A copy of fixture `name` with its config edited by `edit`.
fn edited_fixture(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let config_path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&config_path, config.to_string()).unwrap();
    dir
}

#[test]
fn an_unknown_block_type_is_refused_naming_the_file_and_the_type() {
    let dir = edited_fixture("kl-tiny", |config| {
        config["up_block_types"][1] = "AttnUpDecoderBlock2D".into();
    });
    let err = format!(
        "{:#}",
        AutoencoderKL::load(dir.path(), &Device::Cpu, DType::F32)
            .err()
            .unwrap()
    );
    assert!(
        err.contains(&dir.path().join("config.json").display().to_string())
            && err.contains("`AttnUpDecoderBlock2D`")
            && err.contains("up_block_types"),
        "{err}"
    );
}

#[test]
fn a_config_whose_groups_do_not_divide_a_width_is_refused() {
    let dir = edited_fixture("flux2-tiny", |config| {
        config["norm_num_groups"] = 3.into();
    });
    let err = format!(
        "{:#}",
        AutoencoderKLFlux2::load(dir.path(), &Device::Cpu, DType::F32)
            .err()
            .unwrap()
    );
    assert!(
        err.contains("config.json") && err.contains("norm_num_groups 3"),
        "{err}"
    );
}

#[test]
fn wrong_shaped_inputs_are_refused_naming_the_shape() {
    let vae = kl("kl-tiny");
    let latents = Tensor::zeros((1, 5, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let err = vae.decode(&latents).unwrap_err().to_string();
    assert!(
        err.contains("[1, 5, 8, 8]") && err.contains("[batch, 4, height, width]"),
        "{err}"
    );
    let sample = Tensor::zeros((3, 16, 16), DType::F32, &Device::Cpu).unwrap();
    let err = vae.encode(&sample).unwrap_err().to_string();
    assert!(err.contains("[3, 16, 16]"), "{err}");

    let vae = flux2();
    let unpatchified = Tensor::zeros((1, 4, 16, 12), DType::F32, &Device::Cpu).unwrap();
    let err = vae
        .normalize_latents(&unpatchified)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[1, 4, 16, 12]"), "{err}");
    let odd = Tensor::zeros((1, 4, 15, 12), DType::F32, &Device::Cpu).unwrap();
    let err = vae.patchify_latents(&odd).unwrap_err().to_string();
    assert!(err.contains("[1, 4, 15, 12]"), "{err}");
}
