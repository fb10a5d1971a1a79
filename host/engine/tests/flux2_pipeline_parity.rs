//! The FLUX.2 [klein] pipeline against diffusers' `Flux2KleinPipeline` on the tiny random pipeline
//! of tests/fixtures/make_flux2_pipeline_fixtures.py (Qwen3 text encoder, 4 steps, 32x48), f32 on
//! the CPU: text to image without and with classifier-free guidance, and with two reference
//! images (one center-cropped), all from the prompt text and fixed latents.

use candle_core::{DType, Device, Tensor};
use std::ops::ControlFlow;
use std::path::PathBuf;
use videosdgx_engine::families::flux2::pipeline::Flux2Pipeline;
use videosdgx_engine::models::relative_error;
use videosdgx_engine::pipelines::{
    Capabilities, GenerateInputs, GenerateParams, ImageInput, Output, Pipeline, Progress,
    References, StartImage,
};

/// Relative error allowed for a whole pipeline run in f32 (tests/fixtures/TOLERANCES.md).
const TOLERANCE: f64 = 1e-3;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-flux2-klein")
}

fn reference(name: &str, key: &str) -> Tensor {
    let path = fixture().join("reference").join(name);
    let mut map = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    map.remove(key)
        .unwrap_or_else(|| panic!("{name} has no {key}"))
}

fn params(guidance: f64, references: Vec<ImageInput>) -> GenerateParams {
    GenerateParams {
        prompt: "a red fox in the snow".into(),
        height: 32,
        width: 48,
        frames: 1,
        steps: 4,
        guidance,
        seed: 0,
        references,
        ..Default::default()
    }
}

fn quiet(_: &Progress) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

fn generate(pipeline: &mut Pipeline, params: &GenerateParams) -> Tensor {
    let inputs = GenerateInputs {
        latents: Some(reference("latents.safetensors", "latents")),
        ..Default::default()
    };
    let out = pipeline.generate(params, inputs, &mut quiet).unwrap();
    assert_eq!(out.frames.dims(), [1, 32, 48, 3]);
    out.frames.squeeze(0).unwrap()
}

fn open() -> Pipeline {
    Pipeline::open(&fixture(), &Device::Cpu, DType::F32).unwrap()
}

fn check(image: &Tensor, name: &str) {
    let err = relative_error(image, &reference(name, "image")).unwrap();
    eprintln!("{name}: relative error {err:e}");
    assert!(err <= TOLERANCE, "{name}: relative error {err:e}");
}

#[test]
fn the_qwen3_prompt_embeddings_match_diffusers() {
    let mut pipeline = Flux2Pipeline::load(&fixture(), &Device::Cpu, DType::F32).unwrap();
    for (prompt, file) in [
        ("a red fox in the snow", "prompt_embeds.safetensors"),
        ("", "negative_prompt_embeds.safetensors"),
    ] {
        let embeds = pipeline.prompt_embeds(prompt).unwrap();
        let err = relative_error(&embeds, &reference(file, "prompt_embeds")).unwrap();
        eprintln!("{file}: relative error {err:e}");
        // One component (the text encoder) in f32: tests/fixtures/TOLERANCES.md.
        assert!(err <= 1e-4, "{file}: relative error {err:e}");
    }
}

#[test]
fn klein_is_an_image_model_that_takes_references() {
    assert_eq!(
        open().capabilities(),
        Capabilities {
            output: Output::Image,
            start_image: StartImage::Unsupported,
            references: References::Optional,
        }
    );
}

#[test]
fn a_request_without_steps_runs_the_checkpoints_call_defaults() {
    // The fixture is a base [klein] (classifier-free guidance); a distilled one runs 4 steps
    // without guidance; Wan its pipeline's 50 steps at guidance 5.
    let defaults = Pipeline::call_defaults(&fixture()).unwrap();
    assert_eq!((defaults.steps, defaults.guidance), (50, 4.0));
    let distilled = tempfile::tempdir().unwrap();
    std::fs::write(
        distilled.path().join("model_index.json"),
        r#"{"_class_name": "Flux2KleinPipeline", "is_distilled": true}"#,
    )
    .unwrap();
    let defaults = Pipeline::call_defaults(distilled.path()).unwrap();
    assert_eq!((defaults.steps, defaults.guidance), (4, 1.0));
    let wan = fixture().join("../tiny-wan-t2v");
    let defaults = Pipeline::call_defaults(&wan).unwrap();
    assert_eq!((defaults.steps, defaults.guidance), (50, 5.0));
}

#[test]
fn text_to_image_matches_diffusers() {
    let mut pipeline = open();
    check(
        &generate(&mut pipeline, &params(1.0, vec![])),
        "text_to_image.safetensors",
    );
    // The base model runs the negative branch when guidance is above 1.
    check(
        &generate(&mut pipeline, &params(4.0, vec![])),
        "text_to_image_cfg.safetensors",
    );
}

#[test]
fn reference_images_condition_like_diffusers() {
    let refs = (0..2)
        .map(|i| ImageInput::Path(fixture().join(format!("reference/reference_{i}.png"))))
        .collect();
    check(
        &generate(&mut open(), &params(1.0, refs)),
        "references.safetensors",
    );
}

#[test]
fn prompt_embeddings_stand_in_for_the_prompt() {
    let mut pipeline = open();
    pipeline.keep_text_encoder(false);
    let inputs = GenerateInputs {
        latents: Some(reference("latents.safetensors", "latents")),
        prompt_embeds: Some(reference("prompt_embeds.safetensors", "prompt_embeds")),
        negative_prompt_embeds: Some(reference(
            "negative_prompt_embeds.safetensors",
            "prompt_embeds",
        )),
        ..Default::default()
    };
    let mut request = params(4.0, vec![]);
    request.prompt = "ignored".into();
    let out = pipeline.generate(&request, inputs, &mut quiet).unwrap();
    check(
        &out.frames.squeeze(0).unwrap(),
        "text_to_image_cfg.safetensors",
    );
}

/// The error of a generation that must fail, with its causes.
fn refusal(pipeline: &mut Pipeline, params: &GenerateParams, inputs: GenerateInputs) -> String {
    match pipeline.generate(params, inputs, &mut quiet) {
        Ok(_) => panic!("the request was accepted"),
        Err(err) => format!("{err:#}"),
    }
}

#[test]
fn bad_requests_are_refused_with_a_reason() {
    let mut pipeline = open();
    let mut odd = params(1.0, vec![]);
    odd.width = 50;
    let err = refusal(&mut pipeline, &odd, Default::default());
    assert!(err.contains("multiples of 4"), "{err}");

    let mut video = params(1.0, vec![]);
    video.frames = 5;
    let err = refusal(&mut pipeline, &video, Default::default());
    assert!(err.contains("one frame"), "{err}");

    let tiny = ImageInput::Rgb {
        width: 8,
        height: 8,
        pixels: vec![0; 8 * 8 * 3],
    };
    let err = refusal(&mut pipeline, &params(1.0, vec![tiny]), Default::default());
    assert!(err.contains("at least 64"), "{err}");

    let inputs = GenerateInputs {
        latents: Some(Tensor::zeros((1, 16, 4, 4), DType::F32, &Device::Cpu).unwrap()),
        ..Default::default()
    };
    let err = refusal(&mut pipeline, &params(1.0, vec![]), inputs);
    assert!(err.contains("[1, 16, 8, 12]"), "{err}");
}
