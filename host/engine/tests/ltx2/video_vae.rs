//! `AutoencoderKLLTX2Video` against diffusers: the fixtures of
//! tests/fixtures/make_ltx2_video_vae_fixtures.py (decode of odd latent sizes, encode of 1 + 8k
//! frames, two layouts, tiled and framewise decoding and encoding).

use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use videosdgx_engine::families::ltx2::video_vae::{
    AutoencoderKLLTX2Video, AutoencoderKLLTX2VideoConfig, Tiling,
};
use videosdgx_engine::models::relative_error;

/// Relative error allowed in f32 (tests/fixtures/components/TOLERANCES.md).
const TOLERANCE: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/components")
        .join(name)
}

fn tensors(dir: &Path, file: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join(file), &Device::Cpu).unwrap()
}

fn load(name: &str) -> AutoencoderKLLTX2Video {
    AutoencoderKLLTX2Video::load(&fixture(name).join("model"), &Device::Cpu, DType::F32).unwrap()
}

fn assert_close(what: &str, got: &Tensor, expected: &Tensor) {
    assert_eq!(got.dims(), expected.dims(), "{what}: shape");
    let err = relative_error(got, expected).unwrap();
    eprintln!("{what}: relative error {err:.3e}");
    assert!(err <= TOLERANCE, "{what}: relative error {err:e}");
}

/// Decodes `{prefix}inputs` and compares with `{prefix}outputs`.
fn check_decode(vae: &AutoencoderKLLTX2Video, name: &str, prefix: &str) {
    let dir = fixture(name);
    let inputs = tensors(&dir, &format!("{prefix}inputs.safetensors"));
    let sample = vae
        .decode(&inputs["latents"], inputs.get("timestep"))
        .unwrap();
    let expected = &tensors(&dir, &format!("{prefix}outputs.safetensors"))["sample"];
    assert_close(&format!("{name} {prefix}decode"), &sample, expected);
}

/// Encodes `{prefix}encode_inputs` and compares with `{prefix}encode_outputs`.
fn check_encode(vae: &AutoencoderKLLTX2Video, name: &str, prefix: &str) -> Tensor {
    let dir = fixture(name);
    let sample = &tensors(&dir, &format!("{prefix}encode_inputs.safetensors"))["sample"];
    let latents = vae.encode(sample).unwrap();
    let expected = tensors(&dir, &format!("{prefix}encode_outputs.safetensors"));
    assert_close(
        &format!("{name} {prefix}encode"),
        &latents,
        &expected["latents"],
    );
    latents
}

#[test]
fn ltx2_video_vae_tiny_decodes_and_encodes_like_diffusers() {
    let name = "ltx2-video-vae-tiny";
    let vae = load(name);
    assert_eq!(vae.config().spatial_compression_ratio(), 8);
    assert_eq!(vae.config().temporal_compression_ratio(), 4);
    check_decode(&vae, name, "");
    let latents = check_encode(&vae, name, "");
    // The pipeline's standardisation with the checkpoint's statistics.
    let normalized = vae
        .normalize_latents(&latents, vae.config().scaling_factor)
        .unwrap();
    let expected = &tensors(&fixture(name), "encode_outputs.safetensors")["normalized"];
    assert_close(&format!("{name} normalize_latents"), &normalized, expected);
    let back = vae
        .denormalize_latents(&normalized, vae.config().scaling_factor)
        .unwrap();
    assert_close(&format!("{name} denormalize_latents"), &back, &latents);
}

#[test]
fn ltx2_video_vae_odd_timestep_conditioned_causal_decoder_matches_diffusers() {
    let name = "ltx2-video-vae-odd";
    let vae = load(name);
    check_decode(&vae, name, "");
    check_encode(&vae, name, "");
    // Without the timestep it needs, decoding says so.
    let latents = &tensors(&fixture(name), "inputs.safetensors")["latents"];
    let err = vae.decode(latents, None).unwrap_err().to_string();
    assert!(err.contains("timestep"), "{err}");
}

#[test]
fn ltx2_video_vae_tiled_and_framewise_match_diffusers() {
    let name = "ltx2-video-vae-tiled";
    let mut vae = load(name);
    let text = std::fs::read_to_string(fixture(name).join("tiling.json")).unwrap();
    let tiling: Tiling = serde_json::from_str(&text).unwrap();
    vae.enable_tiling(tiling);
    check_decode(&vae, name, "");
    check_encode(&vae, name, "");
    vae.enable_framewise_decoding();
    check_decode(&vae, name, "framewise_");
    check_encode(&vae, name, "framewise_");
}

#[test]
fn ltx2_video_vae_latents_of_the_wrong_width_name_the_shape() {
    let vae = load("ltx2-video-vae-tiny");
    let latents = Tensor::zeros((1, 5, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let err = vae.decode(&latents, None).unwrap_err().to_string();
    assert!(
        err.contains("[1, 5, 2, 3, 3]") && err.contains("[batch, 4, frames, height, width]"),
        "{err}"
    );
    let sample = Tensor::zeros((1, 4, 9, 16, 16), DType::F32, &Device::Cpu).unwrap();
    let err = vae.encode(&sample).unwrap_err().to_string();
    assert!(err.contains("[1, 4, 9, 16, 16]"), "{err}");
}

#[test]
fn ltx2_video_vae_missing_tensor_and_unsupported_options_are_named() {
    let source = fixture("ltx2-video-vae-tiny").join("model");
    // A checkpoint without one tensor names it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(source.join("config.json"), dir.path().join("config.json")).unwrap();
    let mut weights = tensors(&source, "diffusion_pytorch_model.safetensors");
    weights.remove("decoder.conv_out.conv.bias").unwrap();
    candle_core::safetensors::save(
        &weights,
        dir.path().join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let err = format!(
        "{:#}",
        AutoencoderKLLTX2Video::load(dir.path(), &Device::Cpu, DType::F32)
            .err()
            .unwrap()
    );
    assert!(err.contains("decoder.conv_out.conv.bias"), "{err}");
    // Noise injection draws from torch's generator: refused by name.
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap())
            .unwrap();
    config["decoder_inject_noise"] = serde_json::json!(true);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = format!(
        "{:#}",
        AutoencoderKLLTX2Video::load(dir.path(), &Device::Cpu, DType::F32)
            .err()
            .unwrap()
    );
    assert!(err.contains("decoder_inject_noise"), "{err}");
}

#[test]
fn ltx2_video_vae_published_layout_compresses_32x_and_8x() {
    // The reference's defaults (the published LTX-2 blocks) at a sixteenth of the widths.
    let defaults = AutoencoderKLLTX2VideoConfig::default();
    let config = AutoencoderKLLTX2VideoConfig {
        latent_channels: defaults.latent_channels / 16,
        block_out_channels: defaults.block_out_channels.iter().map(|c| c / 16).collect(),
        decoder_block_out_channels: defaults
            .decoder_block_out_channels
            .iter()
            .map(|c| c / 16)
            .collect(),
        ..defaults
    };
    let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
    let vae = AutoencoderKLLTX2Video::new(&config, vb).unwrap();
    let sample = Tensor::zeros((1, 3, 9, 64, 64), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(vae.encode(&sample).unwrap().dims(), [1, 8, 2, 2, 2]);
    let latents = Tensor::zeros((1, 8, 2, 2, 3), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        vae.decode(&latents, None).unwrap().dims(),
        [1, 3, 9, 64, 96]
    );
}
