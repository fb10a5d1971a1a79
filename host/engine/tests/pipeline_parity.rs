//! The whole Wan text-to-video pipeline (4 UniPC steps, guidance 5) against diffusers' `WanPipeline`
//! on the tiny random pipeline tests/fixtures/tiny-wan-t2v, f32 on the CPU: from fixed latents and
//! prompt embeddings, and from prompt text through the tokenizer and UMT5; likewise the I2V, FLF2V,
//! Wan 2.2 two-expert and TI2V-5B layouts on their tiny fixtures. Also the pipeline's
//! contract: progress per step, cancellation, seeds, input errors, and a pipeline built from models
//! already in memory (no text encoder: prompt embeddings only).

use candle_core::{DType, Device, Tensor};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use videosdgx_engine::families::wan::transformer::{WanTransformer3DModel, WanTransformerConfig};
use videosdgx_engine::families::wan::vae::{AutoencoderKLWan, WanVaeConfig};
use videosdgx_engine::families::wan::{WanParts, WanPipeline};
use videosdgx_engine::loader::{open_weights, read_config};
use videosdgx_engine::pipelines::{
    Cancelled, GenerateInputs, GenerateParams, ImageInput, Progress, Stage,
};

/// Relative error allowed for a whole pipeline run in f32 (tests/fixtures/TOLERANCES.md).
const TOLERANCE: f64 = 1e-3;

fn pipeline_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-wan-t2v")
}

fn reference(file: &str, key: &str) -> Tensor {
    let path = pipeline_dir().join("reference").join(file);
    let mut map = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    map.remove(key)
        .unwrap_or_else(|| panic!("{file} has no {key}"))
}

fn rel_err(out: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(out.dims(), reference.dims(), "shape");
    let diff = (out - reference)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let norm = reference
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    (diff as f64 / norm as f64).sqrt()
}

fn params() -> GenerateParams {
    let call: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(pipeline_dir().join("reference/call.json")).unwrap(),
    )
    .unwrap();
    GenerateParams {
        prompt: call["prompt"].as_str().unwrap().into(),
        negative_prompt: call["negative_prompt"].as_str().unwrap().into(),
        height: call["height"].as_u64().unwrap() as usize,
        width: call["width"].as_u64().unwrap() as usize,
        frames: call["num_frames"].as_u64().unwrap() as usize,
        steps: call["num_inference_steps"].as_u64().unwrap() as usize,
        guidance: call["guidance_scale"].as_f64().unwrap(),
        seed: 0,
        ..Default::default()
    }
}

fn load() -> WanPipeline {
    WanPipeline::load(&pipeline_dir(), &Device::Cpu, DType::F32).unwrap()
}

fn quiet(_: &Progress) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

#[test]
fn t2v_from_latents_and_prompt_embeds_matches_diffusers() {
    let inputs = GenerateInputs {
        latents: Some(reference("latents.safetensors", "latents")),
        prompt_embeds: Some(reference("prompt_embeds.safetensors", "prompt_embeds")),
        negative_prompt_embeds: Some(reference(
            "negative_prompt_embeds.safetensors",
            "negative_prompt_embeds",
        )),
        ..Default::default()
    };
    let video = load().generate_with(&params(), inputs, &mut quiet).unwrap();
    let err = rel_err(
        &video.frames,
        &reference("video_from_embeds.safetensors", "video"),
    );
    assert!(err <= TOLERANCE, "relative error {err:e}");
}

#[test]
fn t2v_from_prompt_text_through_tokenizer_and_umt5_matches_diffusers() {
    let inputs = GenerateInputs {
        latents: Some(reference("latents.safetensors", "latents")),
        ..Default::default()
    };
    let mut pipeline = load();
    pipeline.keep_text_encoder(false);
    let video = pipeline
        .generate_with(&params(), inputs, &mut quiet)
        .unwrap();
    assert!(
        !pipeline.text_encoder_loaded(),
        "the text encoder was dropped after encoding"
    );
    let err = rel_err(
        &video.frames,
        &reference("video_from_prompt.safetensors", "video"),
    );
    assert!(err <= TOLERANCE, "relative error {err:e}");
}

/// The t2v fixture's transformer, VAE and scheduler built in memory from VarBuilders over its
/// weights, without the prompt side: what the GPU benchmark does with random weights.
fn parts_without_text() -> WanParts {
    let dir = pipeline_dir();
    let weights = |name: &str, dtype| open_weights(&dir.join(name), dtype, &Device::Cpu).unwrap();
    let config = |path: &str| -> serde_json::Value { read_config(&dir.join(path)).unwrap() };
    let transformer_config: WanTransformerConfig =
        serde_json::from_value(config("transformer/config.json")).unwrap();
    let vae_config: WanVaeConfig = serde_json::from_value(config("vae/config.json")).unwrap();
    WanParts {
        transformer: WanTransformer3DModel::new(
            &transformer_config,
            weights("transformer", DType::F32),
        )
        .unwrap(),
        transformer_2: None,
        image_encoder: None,
        vae: AutoencoderKLWan::new(weights("vae", DType::F32), vae_config).unwrap(),
        scheduler_config: config("scheduler/scheduler_config.json"),
        expand_timesteps: false,
        text: None,
        name: "in-memory tiny t2v".into(),
    }
}

#[test]
fn pipeline_from_parts_runs_on_prompt_embeds_like_diffusers() {
    let mut pipeline =
        WanPipeline::from_parts(parts_without_text(), &Device::Cpu, DType::F32).unwrap();
    let inputs = GenerateInputs {
        latents: Some(reference("latents.safetensors", "latents")),
        prompt_embeds: Some(reference("prompt_embeds.safetensors", "prompt_embeds")),
        negative_prompt_embeds: Some(reference(
            "negative_prompt_embeds.safetensors",
            "negative_prompt_embeds",
        )),
        ..Default::default()
    };
    let video = pipeline
        .generate_with(&params(), inputs, &mut quiet)
        .unwrap();
    let err = rel_err(
        &video.frames,
        &reference("video_from_embeds.safetensors", "video"),
    );
    assert!(err <= TOLERANCE, "relative error {err:e}");
    assert_eq!(video.latents.dims(), [1, 4, 2, 4, 4]);
}

#[test]
fn pipeline_without_text_encoder_refuses_a_generation_lacking_prompt_embeds() {
    let mut pipeline =
        WanPipeline::from_parts(parts_without_text(), &Device::Cpu, DType::F32).unwrap();
    assert!(!pipeline.text_encoder_loaded());
    let err = pipeline
        .generate(&params(), &mut quiet)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("in-memory tiny t2v: this pipeline has no text encoder")
            && err.contains("negative prompt embeddings"),
        "{err}"
    );
    // Guidance on: the prompt embeddings alone are not enough.
    let inputs = GenerateInputs {
        prompt_embeds: Some(reference("prompt_embeds.safetensors", "prompt_embeds")),
        ..Default::default()
    };
    let err = pipeline
        .generate_with(&params(), inputs, &mut quiet)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no text encoder"), "{err}");
}

#[test]
fn pipeline_from_parts_refuses_an_unknown_scheduler_class() {
    let mut parts = parts_without_text();
    parts.scheduler_config["_class_name"] = "DDIMScheduler".into();
    let err = WanPipeline::from_parts(parts, &Device::Cpu, DType::F32)
        .err()
        .unwrap();
    let err = format!("{err:#}");
    assert!(
        err.contains("scheduler_config.json") && err.contains("\"DDIMScheduler\""),
        "{err}"
    );
}

#[test]
fn progress_reports_every_step_and_a_break_cancels_between_steps() {
    let mut pipeline = load();
    let mut seen = Vec::new();
    let video = pipeline
        .generate(&params(), &mut |p: &Progress| {
            seen.push(*p);
            ControlFlow::Continue(())
        })
        .unwrap();
    let steps: Vec<usize> = seen
        .iter()
        .filter(|p| p.stage == Stage::Denoising)
        .map(|p| p.step)
        .collect();
    assert_eq!(steps, [0, 1, 2, 3, 4]);
    assert_eq!(seen.last().unwrap().stage, Stage::Decoding);
    assert_eq!(video.frames.dims(), [5, 32, 32, 3]);

    let mut denoised = 0;
    let err = pipeline
        .generate(&params(), &mut |p: &Progress| {
            if p.stage == Stage::Denoising && p.step == 2 {
                return ControlFlow::Break(());
            }
            denoised += (p.stage == Stage::Denoising) as usize;
            ControlFlow::Continue(())
        })
        .err()
        .expect("cancelled");
    assert!(err.downcast_ref::<Cancelled>().is_some(), "{err:#}");
    assert_eq!(denoised, 2);
}

#[test]
fn the_same_seed_gives_the_same_video_and_another_seed_another() {
    let mut pipeline = load();
    let mut p = params();
    p.steps = 2;
    let a = pipeline.generate(&p, &mut quiet).unwrap().frames;
    let b = pipeline.generate(&p, &mut quiet).unwrap().frames;
    p.seed = 1;
    let c = pipeline.generate(&p, &mut quiet).unwrap().frames;
    assert_eq!(rel_err(&a, &b), 0.0);
    assert!(rel_err(&a, &c) > 1e-3);
}

#[test]
fn bad_sizes_and_latents_get_clear_errors() {
    let mut pipeline = load();
    let mut p = params();
    p.frames = 6;
    let err = pipeline.generate(&p, &mut quiet).err().unwrap().to_string();
    assert!(
        err.contains("frames must be 4k+1") && err.contains("got 6"),
        "{err}"
    );

    let mut p = params();
    p.width = 40;
    let err = pipeline.generate(&p, &mut quiet).err().unwrap().to_string();
    assert!(
        err.contains("multiples of 16") && err.contains("40x32"),
        "{err}"
    );

    let inputs = GenerateInputs {
        latents: Some(Tensor::zeros((1, 4, 3, 4, 4), DType::F32, &Device::Cpu).unwrap()),
        ..Default::default()
    };
    let err = pipeline
        .generate_with(&params(), inputs, &mut quiet)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("[1, 4, 3, 4, 4]") && err.contains("[1, 4, 2, 4, 4]"),
        "{err}"
    );
}

#[test]
fn generate_params_round_trip_through_json() {
    let p = params();
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(serde_json::from_str::<GenerateParams>(&json).unwrap(), p);
}

fn i2v_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-wan-i2v")
}

#[test]
fn i2v_with_clip_embedding_and_first_frame_condition_matches_diffusers() {
    let reference_path = i2v_dir().join("reference");
    let mut t =
        candle_core::safetensors::load(reference_path.join("i2v.safetensors"), &Device::Cpu)
            .unwrap();
    let inputs = GenerateInputs {
        latents: t.remove("latents"),
        prompt_embeds: t.remove("prompt_embeds"),
        negative_prompt_embeds: t.remove("negative_prompt_embeds"),
        ..Default::default()
    };
    let mut p = params();
    p.start_image = Some(ImageInput::Path(reference_path.join("start.png")));
    let mut pipeline = WanPipeline::load(&i2v_dir(), &Device::Cpu, DType::F32).unwrap();
    let video = pipeline.generate_with(&p, inputs, &mut quiet).unwrap();
    let err = rel_err(&video.frames, &t["video"]);
    assert!(err <= TOLERANCE, "relative error {err:e}");
}

#[test]
fn i2v_checkpoint_without_a_start_image_is_refused() {
    let mut pipeline = WanPipeline::load(&i2v_dir(), &Device::Cpu, DType::F32).unwrap();
    let err = pipeline
        .generate(&params(), &mut quiet)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("image-to-video checkpoint; give a start image"),
        "{err}"
    );
}

#[test]
fn wan22_two_experts_switch_at_the_boundary_with_their_own_guidance_like_diffusers() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny-wan22-two-experts");
    let inputs = GenerateInputs {
        latents: Some(reference("latents.safetensors", "latents")),
        prompt_embeds: Some(reference("prompt_embeds.safetensors", "prompt_embeds")),
        negative_prompt_embeds: Some(reference(
            "negative_prompt_embeds.safetensors",
            "negative_prompt_embeds",
        )),
        ..Default::default()
    };
    let mut p = params();
    p.guidance_2 = Some(3.0);
    let mut pipeline = WanPipeline::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let video = pipeline.generate_with(&p, inputs, &mut quiet).unwrap();
    let mut map =
        candle_core::safetensors::load(dir.join("reference/video.safetensors"), &Device::Cpu)
            .unwrap();
    let err = rel_err(&video.frames, &map.remove("video").unwrap());
    assert!(err <= TOLERANCE, "relative error {err:e}");
}

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// Runs the pipeline in `dir` from the latents and embeddings stored in `inputs`.
fn run_from_inputs(dir: &Path, inputs: &Path, p: &GenerateParams) -> Tensor {
    let mut t = candle_core::safetensors::load(inputs, &Device::Cpu).unwrap();
    let inputs = GenerateInputs {
        latents: t.remove("latents"),
        prompt_embeds: t.remove("prompt_embeds"),
        negative_prompt_embeds: t.remove("negative_prompt_embeds"),
        ..Default::default()
    };
    let mut pipeline = WanPipeline::load(dir, &Device::Cpu, DType::F32).unwrap();
    pipeline
        .generate_with(p, inputs, &mut quiet)
        .unwrap()
        .frames
}

fn stored_video(path: &Path) -> Tensor {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .remove("video")
        .unwrap()
}

#[test]
fn flf2v_first_and_last_frame_match_diffusers() {
    let dir = fixture_dir("tiny-wan-flf2v");
    let reference = dir.join("reference");
    let mut p = params();
    p.start_image = Some(ImageInput::Path(reference.join("first.png")));
    p.end_image = Some(ImageInput::Path(reference.join("last.png")));
    let video = run_from_inputs(&dir, &reference.join("flf2v.safetensors"), &p);
    let err = rel_err(&video, &stored_video(&reference.join("flf2v.safetensors")));
    assert!(err <= TOLERANCE, "relative error {err:e}");
}

#[test]
fn wan22_ti2v_text_to_video_and_image_to_video_match_diffusers() {
    let dir = fixture_dir("tiny-wan22-ti2v");
    let reference = dir.join("reference");
    let mut p = params();
    (p.height, p.width) = (64, 64);
    let inputs = reference.join("t2v.safetensors");
    let video = run_from_inputs(&dir, &inputs, &p);
    let err = rel_err(&video, &stored_video(&inputs));
    assert!(err <= TOLERANCE, "text-to-video: relative error {err:e}");

    p.start_image = Some(ImageInput::Path(reference.join("start.png")));
    let video = run_from_inputs(&dir, &inputs, &p);
    let err = rel_err(&video, &stored_video(&reference.join("i2v.safetensors")));
    assert!(err <= TOLERANCE, "image-to-video: relative error {err:e}");
}
