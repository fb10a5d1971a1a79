//! LTX-2's two-stage generation against diffusers on tests/fixtures/tiny-ltx2 and
//! tests/fixtures/tiny-ltx2-upsampler (made by tests/fixtures/make_ltx2_two_stage_fixtures.py):
//! stage 1 at half size, `LTX2LatentUpsamplePipeline`, stage 2 re-noised with the noise the
//! reference drew and refined on the distilled sigmas; each stage's output within 1e-3, the
//! upsample pipeline's own options, and the refusals.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use videosdgx_engine::families::ltx2::latent_upsample_pipeline::{
    LTX2LatentUpsamplePipeline, UpsampleParams, generate_two_stage,
};
use videosdgx_engine::families::ltx2::latent_upsampler::{
    LTX2LatentUpsamplerConfig, LTX2LatentUpsamplerModel,
};
use videosdgx_engine::families::ltx2::pipeline::LTX2Pipeline;
use videosdgx_engine::families::ltx2::video_vae::AutoencoderKLLTX2Video;
use videosdgx_engine::models::relative_error;
use videosdgx_engine::pipelines::{GenerateInputs, GenerateParams, GuidanceTerms};

const TOLERANCE: f64 = 1e-3;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn upsampler_dir() -> PathBuf {
    fixtures().join("tiny-ltx2-upsampler")
}

fn load(path: PathBuf) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn reference() -> HashMap<String, Tensor> {
    load(upsampler_dir().join("reference/two_stage.safetensors"))
}

fn close(what: &str, got: &Tensor, expected: &Tensor) {
    assert_eq!(got.dims(), expected.dims(), "{what}");
    let expected = expected.to_dtype(DType::F32).unwrap();
    let err = relative_error(&got.to_device(&Device::Cpu).unwrap(), &expected).unwrap();
    eprintln!("{what}: relative error {err:e}");
    assert!(err <= TOLERANCE, "{what}: relative error {err:e}");
}

/// The final video's request with stage 1's guidance (plain classifier-free, scale 3).
fn params() -> GenerateParams {
    let mut params: GenerateParams = serde_json::from_value(serde_json::json!({
        "prompt": "", "height": 64, "width": 64, "frames": 5, "steps": 2, "guidance": 3.0,
        "seed": 0, "fps": 24.0,
    }))
    .unwrap();
    params.guidance_terms = GuidanceTerms {
        audio_guidance_scale: Some(3.0),
        ..Default::default()
    };
    params
}

/// Prompt embeddings of tiny-ltx2 and the given tensors of the reference run.
fn inputs(latents: bool, noise: bool) -> GenerateInputs {
    let mut prompt = load(fixtures().join("tiny-ltx2/reference/prompt_embeds.safetensors"));
    let mut negative =
        load(fixtures().join("tiny-ltx2/reference/negative_prompt_embeds.safetensors"));
    let mut reference = reference();
    let mut take = |key: &str, wanted: bool| wanted.then(|| reference.remove(key).unwrap());
    GenerateInputs {
        latents: take("latents", latents),
        audio_latents: take("audio_latents", latents),
        noise: take("noise", noise),
        audio_noise: take("audio_noise", noise),
        prompt_embeds: prompt.remove("prompt_embeds"),
        prompt_attention_mask: prompt.remove("prompt_attention_mask"),
        negative_prompt_embeds: negative.remove("negative_prompt_embeds"),
        negative_prompt_attention_mask: negative.remove("negative_prompt_attention_mask"),
        ..Default::default()
    }
}

fn pipeline() -> LTX2Pipeline {
    LTX2Pipeline::load(&fixtures().join("tiny-ltx2"), &Device::Cpu, DType::F32).unwrap()
}

fn upsampler() -> LTX2LatentUpsamplePipeline {
    LTX2LatentUpsamplePipeline::load(&upsampler_dir(), &Device::Cpu, DType::F32).unwrap()
}

#[test]
fn each_stage_of_the_two_stage_generation_matches_diffusers() {
    let expected = reference();
    let mut pipeline = pipeline();
    let stage_1 = GenerateParams {
        width: 32,
        height: 32,
        ..params()
    };
    let (latents, audio_latents) = pipeline
        .generate_latents(&stage_1, inputs(true, false), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    close("stage 1 latents", &latents, &expected["stage_1_latents"]);
    close(
        "stage 1 audio latents",
        &audio_latents,
        &expected["stage_1_audio_latents"],
    );
    let upsampled = upsampler()
        .upsample(&expected["stage_1_latents"], &UpsampleParams::default())
        .unwrap();
    close(
        "upsampled latents",
        &upsampled,
        &expected["upsampled_latents"],
    );
}

#[test]
fn the_two_stage_generation_matches_diffusers() {
    let expected = reference();
    let out = generate_two_stage(
        &mut pipeline(),
        &upsampler(),
        &params(),
        inputs(true, true),
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap();
    close("latents", &out.latents, &expected["latents_out"]);
    close(
        "audio latents",
        &out.audio_latents.unwrap(),
        &expected["audio_latents_out"],
    );
    close("video", &out.frames, &expected["video"]);
    let audio = out.audio.unwrap().to_tensor(&Device::Cpu).unwrap();
    close("audio", &audio, &expected["audio"]);
}

#[test]
fn a_refine_lora_applies_to_stage_2_alone_as_diffusers_loads_it() {
    let expected = load(upsampler_dir().join("reference/two_stage_refine_lora.safetensors"));
    let lora = fixtures().join("tiny-ltx2/lora/peft.safetensors");
    let params = GenerateParams {
        refine_loras: vec![format!("{}:0.8", lora.display()).parse().unwrap()],
        ..params()
    };
    let mut pipeline = pipeline();
    let out = generate_two_stage(
        &mut pipeline,
        &upsampler(),
        &params,
        inputs(true, true),
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap();
    close("refined latents", &out.latents, &expected["latents_out"]);
    close(
        "refined audio latents",
        &out.audio_latents.unwrap(),
        &expected["audio_latents_out"],
    );
    assert_eq!(out.loras.len(), 1, "stage 2 applied the refine LoRA");
    assert!(out.loras[0].sha256.is_some());
    // Stage 1 ran without it (the reference's did), and it is gone afterwards: the same
    // pipeline's plain run still matches its reference.
    let plain = generate_two_stage(
        &mut pipeline,
        &upsampler(),
        &self::params(),
        inputs(true, true),
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap();
    close(
        "latents without it",
        &plain.latents,
        &reference()["latents_out"],
    );
}

#[test]
fn the_upsample_pipeline_options_and_decoding_match_diffusers() {
    let expected = load(upsampler_dir().join("reference/upsample_filters.safetensors"));
    let params = UpsampleParams {
        latents_normalized: true,
        adain_factor: 0.5,
        tone_map_compression_ratio: 0.6,
        packed: None,
    };
    let upsampler = upsampler();
    let got = upsampler.upsample(&expected["latents"], &params).unwrap();
    close(
        "filtered upsampled latents",
        &got,
        &expected["upsampled_latents"],
    );
    let video = upsampler
        .upsample_and_decode(&expected["latents"], &params)
        .unwrap();
    close("decoded upsampled video", &video, &expected["video"]);

    // The upsampler folder alone upsamples too, but has no VAE statistics.
    let bare = LTX2LatentUpsamplePipeline::load(
        &upsampler_dir().join("latent_upsampler"),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let reference = reference();
    let got = bare
        .upsample(&reference["stage_1_latents"], &UpsampleParams::default())
        .unwrap();
    close("bare upsampler", &got, &reference["upsampled_latents"]);
    let err = bare
        .upsample(&expected["latents"], &params)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("latents_normalized needs the video VAE"),
        "{err}"
    );
}

#[test]
fn an_upsampler_for_other_latents_is_refused_naming_both_channel_counts() {
    let config = LTX2LatentUpsamplerConfig {
        in_channels: 8,
        mid_channels: 32,
        num_blocks_per_stage: 1,
        ..Default::default()
    };
    let model = || {
        LTX2LatentUpsamplerModel::new(&config, VarBuilder::zeros(DType::F32, &Device::Cpu)).unwrap()
    };
    let vae =
        AutoencoderKLLTX2Video::load(&fixtures().join("tiny-ltx2/vae"), &Device::Cpu, DType::F32)
            .unwrap();
    let err = LTX2LatentUpsamplePipeline::new(Some(vae), model(), "eight".into())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("takes 8 latent channels") && err.contains("makes 4"),
        "{err}"
    );
    let eight = LTX2LatentUpsamplePipeline::new(None, model(), "eight".into()).unwrap();
    let err = generate_two_stage(
        &mut pipeline(),
        &eight,
        &params(),
        inputs(true, true),
        &mut |_| ControlFlow::Continue(()),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("takes 8 latent channels") && err.contains("makes 4"),
        "{err}"
    );
    // Sizes stage 1 cannot halve, and a noise_scale the refinement sets itself.
    let err = generate_two_stage(
        &mut pipeline(),
        &upsampler(),
        &GenerateParams {
            width: 63,
            ..params()
        },
        inputs(true, true),
        &mut |_| ControlFlow::Continue(()),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("divisible by 2"), "{err}");
    let err = generate_two_stage(
        &mut pipeline(),
        &upsampler(),
        &GenerateParams {
            noise_scale: Some(0.5),
            ..params()
        },
        inputs(true, true),
        &mut |_| ControlFlow::Continue(()),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("noise_scale"), "{err}");
}
