//! `LTX2ImageToVideoPipeline` against diffusers on tests/fixtures/tiny-ltx2 (reference runs made
//! by tests/fixtures/make_ltx2_i2v_fixtures.py): the start image as the first latent frame, from
//! the stored noise, prompt embeddings and audio latents, under CFG and under every guidance term
//! with an image the pipeline resizes; the pictures, the waveform and both denoised latents within
//! 1e-3. Also what the image-to-video folder class (`model_index.json`) requires.

use super::pipeline::{assert_matches_reference, fixture, reference};
use candle_core::{DType, Device};
use std::ops::ControlFlow;
use std::path::Path;
use videosdgx_engine::families::ltx2::pipeline::LTX2Pipeline;
use videosdgx_engine::pipelines::{
    GenerateInputs, GenerateParams, ImageInput, Pipeline, StartImage,
};

/// The request a reference run's arguments (reference/<run>.json) describe, with its image.
fn params(run: &str) -> GenerateParams {
    let args: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture().join(format!("reference/{run}.json"))).unwrap(),
    )
    .unwrap();
    let image = fixture()
        .join("reference")
        .join(args["image"].as_str().unwrap());
    GenerateParams {
        start_image: Some(ImageInput::Path(image)),
        ..super::pipeline::params(run)
    }
}

/// The fixed inputs; `latents` is the noise the image is blended into (the reference's draw).
fn inputs() -> GenerateInputs {
    GenerateInputs {
        latents: reference("i2v_noise.safetensors").remove("noise"),
        ..super::pipeline::inputs()
    }
}

/// A copy of the fixture whose `model_index.json` names `LTX2ImageToVideoPipeline`.
fn image_to_video_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let path = entry.unwrap().path();
        let target = dir.path().join(path.file_name().unwrap());
        if path.is_dir() {
            copy_files(&path, &target);
        }
    }
    let index = std::fs::read_to_string(fixture().join("model_index.json")).unwrap();
    let index = index.replace("\"LTX2Pipeline\"", "\"LTX2ImageToVideoPipeline\"");
    std::fs::write(dir.path().join("model_index.json"), index).unwrap();
    dir
}

fn copy_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

fn check(dir: &Path, run: &str) {
    let mut pipeline = LTX2Pipeline::load(dir, &Device::Cpu, DType::F32).unwrap();
    let out = pipeline
        .generate(&params(run), inputs(), &mut |_| ControlFlow::Continue(()))
        .unwrap();
    assert_matches_reference(run, out);
}

#[test]
fn image_to_video_under_classifier_free_guidance_matches_diffusers() {
    check(image_to_video_folder().path(), "i2v_cfg");
}

#[test]
fn a_start_image_of_another_size_is_resized_as_the_reference_does_under_every_guidance_term() {
    // An `LTX2Pipeline` folder given a start image runs image-to-video too.
    check(&fixture(), "i2v_resized");
}

#[test]
fn the_image_to_video_class_needs_a_start_image_and_says_so() {
    let folder = image_to_video_folder();
    assert_eq!(
        Pipeline::inspect(folder.path()).unwrap().start_image,
        StartImage::Required
    );
    assert_eq!(
        Pipeline::inspect(&fixture()).unwrap().start_image,
        StartImage::Optional
    );
    let mut pipeline = Pipeline::open(folder.path(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(pipeline.capabilities().start_image, StartImage::Required);
    let mut refused = |params: GenerateParams| {
        pipeline
            .generate(&params, inputs(), &mut |_| ControlFlow::Continue(()))
            .map(|_| ())
            .map_err(|err| format!("{err:#}"))
            .expect_err("refused")
    };
    let err = refused(GenerateParams {
        start_image: None,
        ..params("i2v_cfg")
    });
    assert!(
        err.contains("image-to-video checkpoint") && err.contains("--image"),
        "{err}"
    );
    let err = refused(GenerateParams {
        end_image: Some(ImageInput::Path(fixture().join("reference/i2v_frame.png"))),
        ..params("i2v_cfg")
    });
    assert!(err.contains("not an end image"), "{err}");
    let err = refused(GenerateParams {
        start_image: Some(ImageInput::Path(fixture().join("reference/missing.png"))),
        ..params("i2v_cfg")
    });
    assert!(err.contains("missing.png"), "{err}");
}
