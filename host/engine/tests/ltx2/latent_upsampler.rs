//! `LTX2LatentUpsamplerModel` (3-D with the rational resampler, 2-D with res blocks, temporal) and
//! the steps of `LTX2LatentUpsamplePipeline` around it, against diffusers.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use videosdgx_engine::families::ltx2::latent_upsampler::{
    BlurDownsample, LTX2LatentUpsamplerModel, adain_filter_latent, denormalize_latents,
    normalize_latents, tone_map_latents, unpack_latents,
};
use videosdgx_engine::models::conv::{pixel_shuffle_3d, pixel_shuffle_temporal};
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

fn model(name: &str) -> LTX2LatentUpsamplerModel {
    LTX2LatentUpsamplerModel::load(&fixture(name).join("model"), &Device::Cpu, DType::F32).unwrap()
}

fn check(name: &str) {
    let inputs = tensors(name, "inputs.safetensors");
    let expected = &tensors(name, "outputs.safetensors")["sample"];
    let sample = model(name).forward(&inputs["hidden_states"]).unwrap();
    assert_close(name, &sample, expected);
}

#[test]
fn latent_upsampler_3d_with_the_rational_resampler_matches_diffusers() {
    check("ltx2-upsampler-3d");
}

#[test]
fn latent_upsampler_2d_with_res_blocks_and_pixel_shuffle_matches_diffusers() {
    check("ltx2-upsampler-2d");
}

#[test]
fn temporal_latent_upsampler_matches_diffusers() {
    check("ltx2-upsampler-temporal");
}

#[test]
fn latent_upsampler_rejects_latents_of_the_wrong_shape_by_name() {
    let upsampler = model("ltx2-upsampler-3d");
    let wrong = Tensor::zeros((1, 3, 2, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let err = upsampler.forward(&wrong).unwrap_err().to_string();
    assert!(
        err.contains("hidden_states")
            && err.contains("[1, 3, 2, 4, 4]")
            && err.contains("in_channels = 4"),
        "{err}"
    );
    let flat = Tensor::zeros((1, 4, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let err = upsampler.forward(&flat).unwrap_err().to_string();
    assert!(err.contains("[1, 4, 4, 4]"), "{err}");
}

#[test]
fn latent_upsampler_refuses_an_unsupported_scale_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture("ltx2-upsampler-3d").join("model");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config["rational_spatial_scale"] = serde_json::json!(3.0);
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        dir.join("diffusion_pytorch_model.safetensors"),
        tmp.path().join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let err = LTX2LatentUpsamplerModel::load(tmp.path(), &Device::Cpu, DType::F32)
        .err()
        .expect("the scale must be refused");
    let err = format!("{err:#}");
    assert!(
        err.contains("config.json") && err.contains("rational_spatial_scale 3"),
        "{err}"
    );
}

#[test]
fn the_upsample_pipeline_steps_match_diffusers() {
    let name = "ltx2-upsampler-functions";
    let inputs = tensors(name, "inputs.safetensors");
    let expected = tensors(name, "outputs.safetensors");
    let scalar = |key: &str| f64::from(inputs[key].to_scalar::<f32>().unwrap());
    let latents = &inputs["latents"];
    let (mean, std) = (&inputs["latents_mean"], &inputs["latents_std"]);
    let scaling = scalar("scaling_factor");

    let adain = adain_filter_latent(
        latents,
        &inputs["reference_latents"],
        scalar("adain_factor"),
    )
    .unwrap();
    assert_close("adain", &adain, &expected["adain"]);
    let tone = tone_map_latents(latents, scalar("tone_map_compression")).unwrap();
    assert_close("tone_map", &tone, &expected["tone_map"]);
    let denormalized = denormalize_latents(latents, mean, std, scaling).unwrap();
    assert_close("denormalized", &denormalized, &expected["denormalized"]);
    let normalized = normalize_latents(latents, mean, std, scaling).unwrap();
    assert_close("normalized", &normalized, &expected["normalized"]);
    let unpacked = unpack_latents(&inputs["packed"], 2, 3, 2, 2, 1).unwrap();
    assert_close("unpacked", &unpacked, &expected["unpacked"]);

    let frames = &inputs["frames"];
    for (key, stride, frame) in [("blur2", 2, 0), ("blur4", 4, 1)] {
        let blur = BlurDownsample::binomial(stride, &Device::Cpu).unwrap();
        let got = blur.forward(&frames.narrow(2, frame, 1).unwrap().squeeze(2).unwrap());
        assert_close(key, &got.unwrap(), &expected[key]);
    }
    let shuffled = pixel_shuffle_3d(&inputs["shuffle3d"], [2, 2, 2]).unwrap();
    assert_close("shuffle3d", &shuffled, &expected["shuffle3d"]);
    let shuffled = pixel_shuffle_temporal(&inputs["shuffle1d"], 3).unwrap();
    assert_close("shuffle1d", &shuffled, &expected["shuffle1d"]);

    let err = denormalize_latents(latents, &mean.narrow(0, 0, 3).unwrap(), std, 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[3]") && err.contains("4 channels"), "{err}");
}
