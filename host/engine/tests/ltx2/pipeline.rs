//! `LTX2Pipeline` against diffusers on tests/fixtures/tiny-ltx2 (made by
//! tests/fixtures/make_ltx2_pipeline_fixtures.py): text-to-video with sound from prompt
//! embeddings and fixed latents, under plain classifier-free guidance, the distilled sigmas and
//! every guidance term; the pictures, the waveform and both denoised latents within 1e-3.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use videosdgx_engine::families::ltx2::pipeline::LTX2Pipeline;
use videosdgx_engine::models::relative_error;
use videosdgx_engine::pipelines::{GenerateInputs, GenerateParams, GeneratedVideo, GuidanceTerms};

const TOLERANCE: f64 = 1e-3;

pub(super) fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-ltx2")
}

pub(super) fn reference(file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join("reference").join(file), &Device::Cpu).unwrap()
}

/// The request a reference run's arguments (reference/<run>.json) describe.
pub(super) fn params(run: &str) -> GenerateParams {
    let args: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture().join(format!("reference/{run}.json"))).unwrap(),
    )
    .unwrap();
    let number = |key: &str| args[key].as_f64();
    let mut params: GenerateParams = serde_json::from_value(serde_json::json!({
        "prompt": "", "height": args["height"], "width": args["width"],
        "frames": args["num_frames"], "steps": args["num_inference_steps"],
        "guidance": args["guidance_scale"], "seed": 0, "fps": args["frame_rate"],
        "sigmas": args.get("sigmas"),
    }))
    .unwrap();
    params.guidance_terms = GuidanceTerms {
        audio_guidance_scale: number("audio_guidance_scale"),
        stg_scale: number("stg_scale"),
        audio_stg_scale: number("audio_stg_scale"),
        modality_scale: number("modality_scale"),
        audio_modality_scale: number("audio_modality_scale"),
        guidance_rescale: number("guidance_rescale"),
        audio_guidance_rescale: number("audio_guidance_rescale"),
        spatio_temporal_guidance_blocks: args
            .get("spatio_temporal_guidance_blocks")
            .map(|b| serde_json::from_value(b.clone()).unwrap()),
    };
    params
}

pub(super) fn inputs() -> GenerateInputs {
    let mut prompt = reference("prompt_embeds.safetensors");
    let mut negative = reference("negative_prompt_embeds.safetensors");
    GenerateInputs {
        latents: reference("latents.safetensors").remove("latents"),
        audio_latents: reference("audio_latents.safetensors").remove("audio_latents"),
        prompt_embeds: prompt.remove("prompt_embeds"),
        prompt_attention_mask: prompt.remove("prompt_attention_mask"),
        negative_prompt_embeds: negative.remove("negative_prompt_embeds"),
        negative_prompt_attention_mask: negative.remove("negative_prompt_attention_mask"),
        ..Default::default()
    }
}

fn check(run: &str) {
    check_at(&fixture(), run);
}

fn check_at(dir: &std::path::Path, run: &str) {
    let mut pipeline = LTX2Pipeline::load(dir, &Device::Cpu, DType::F32).unwrap();
    let out = pipeline
        .generate(&params(run), inputs(), &mut |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(out.fps, 24);
    assert_matches_reference(run, out);
}

/// The pictures, the waveform and both denoised latents of `out` against reference/<run>.
pub(super) fn assert_matches_reference(run: &str, out: GeneratedVideo) {
    let expected = reference(&format!("{run}.safetensors"));
    let audio = out.audio.expect("LTX-2 makes sound");
    assert_eq!((audio.sample_rate, audio.channels), (8000, 2));
    for (key, got) in [
        ("latents", out.latents),
        ("audio_latents", out.audio_latents.unwrap()),
        ("video", out.frames),
        ("audio", audio.to_tensor(&Device::Cpu).unwrap()),
    ] {
        assert_eq!(got.dims(), expected[key].dims(), "{run}/{key}");
        let err = relative_error(&got, &expected[key]).unwrap();
        eprintln!("{run}/{key}: relative error {err:e}");
        assert!(err <= TOLERANCE, "{run}/{key}: relative error {err:e}");
    }
}

#[test]
fn text_to_video_with_sound_under_classifier_free_guidance_matches_diffusers() {
    check("t2v_cfg");
}

#[test]
fn the_distilled_schedule_without_guidance_matches_diffusers() {
    check("t2v_distilled");
}

/// The pipeline folder with the transformer's, the VAEs' and the vocoder's weights in one LTX-2
/// checkpoint file in the original names (their folders keep only config.json).
#[test]
fn a_checkpoint_file_in_the_pipeline_folder_replaces_the_component_weights() {
    use videosdgx_engine::loader::single_file::{OriginalLayout, ltx2_checkpoint_names};
    let tmp = tempfile::tempdir().unwrap();
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    };
    // A folder without a text encoder: the run is from embeddings.
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("model_index.json")).unwrap())
            .unwrap();
    index["text_encoder"] = serde_json::json!([null, null]);
    index["tokenizer"] = serde_json::json!([null, null]);
    std::fs::write(tmp.path().join("model_index.json"), index.to_string()).unwrap();
    copy(
        &fixture().join("scheduler/scheduler_config.json"),
        &tmp.path().join("scheduler/scheduler_config.json"),
    );
    for file in ["config.json", "diffusion_pytorch_model.safetensors"] {
        copy(
            &fixture().join("connectors").join(file),
            &tmp.path().join("connectors").join(file),
        );
    }
    let mut checkpoint = HashMap::new();
    for (folder, layout) in [
        ("transformer", OriginalLayout::Ltx2Transformer),
        ("vae", OriginalLayout::Ltx2VideoVae),
        ("audio_vae", OriginalLayout::Ltx2AudioVae),
        ("vocoder", OriginalLayout::Ltx2Vocoder),
    ] {
        let dir = fixture().join(folder);
        copy(
            &dir.join("config.json"),
            &tmp.path().join(folder).join("config.json"),
        );
        let weights = candle_core::safetensors::load(
            dir.join("diffusion_pytorch_model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let names: Vec<String> = weights.keys().cloned().collect();
        let original = ltx2_checkpoint_names(layout, &names).unwrap();
        for (name, key) in names.iter().zip(original) {
            checkpoint.insert(key, weights[name].clone());
        }
    }
    candle_core::safetensors::save(&checkpoint, tmp.path().join("ltx-2-tiny.safetensors")).unwrap();
    check_at(tmp.path(), "t2v_distilled");
    // `models verify` reads the components through the file too.
    let report = videosdgx_engine::loader::verify(tmp.path()).unwrap();
    assert!(report.is_ok(), "{report:#?}");

    // A second checkpoint file leaves the choice open: refused, naming both.
    std::fs::copy(
        tmp.path().join("ltx-2-tiny.safetensors"),
        tmp.path().join("ltx-2-other.safetensors"),
    )
    .unwrap();
    let err = LTX2Pipeline::load(tmp.path(), &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("ltx-2-other.safetensors") && err.contains("ltx-2-tiny.safetensors"),
        "{err}"
    );
}

#[test]
fn spatio_temporal_modality_guidance_and_rescale_match_diffusers() {
    check("t2v_all_guidance");
}

#[test]
fn text_to_video_from_a_prompt_through_gemma_3_matches_diffusers() {
    let mut pipeline = LTX2Pipeline::load(&fixture(), &Device::Cpu, DType::F32).unwrap();
    let args: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture().join("reference/t2v_prompt.json")).unwrap(),
    )
    .unwrap();
    let params = GenerateParams {
        prompt: args["prompt"].as_str().unwrap().into(),
        negative_prompt: args["negative_prompt"].as_str().unwrap().into(),
        ..params("t2v_prompt")
    };
    let latents = GenerateInputs {
        latents: reference("latents.safetensors").remove("latents"),
        audio_latents: reference("audio_latents.safetensors").remove("audio_latents"),
        ..Default::default()
    };
    let out = pipeline
        .generate(&params, latents, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    let expected = reference("t2v_prompt.safetensors");
    let audio = out.audio.unwrap().to_tensor(&Device::Cpu).unwrap();
    for (key, got) in [("video", out.frames), ("audio", audio)] {
        let err = relative_error(&got, &expected[key]).unwrap();
        eprintln!("t2v_prompt/{key}: relative error {err:e}");
        assert!(err <= TOLERANCE, "t2v_prompt/{key}: relative error {err:e}");
    }
}

/// A copy of the fixture whose `model_index.json` names no text encoder.
fn without_text_encoder() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for name in [
        "transformer",
        "connectors",
        "vae",
        "audio_vae",
        "vocoder",
        "scheduler",
    ] {
        let (from, to) = (fixture().join(name), tmp.path().join(name));
        std::fs::create_dir(&to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("model_index.json")).unwrap())
            .unwrap();
    index["text_encoder"] = serde_json::json!([null, null]);
    index["tokenizer"] = serde_json::json!([null, null]);
    std::fs::write(tmp.path().join("model_index.json"), index.to_string()).unwrap();
    tmp
}

#[test]
fn a_folder_without_a_text_encoder_runs_from_embeddings_only() {
    let dir = without_text_encoder();
    let mut pipeline = LTX2Pipeline::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    assert!(!pipeline.has_text_encoder());
    let out = pipeline
        .generate(&params("t2v_distilled"), inputs(), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    let expected = reference("t2v_distilled.safetensors");
    assert!(relative_error(&out.frames, &expected["video"]).unwrap() <= TOLERANCE);
    let err = pipeline
        .generate(&params("t2v_cfg"), GenerateInputs::default(), &mut |_| {
            ControlFlow::Continue(())
        })
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no text encoder"), "{err}");
}

#[test]
fn requests_ltx2_cannot_make_are_refused_by_rule() {
    let mut pipeline = LTX2Pipeline::load(&fixture(), &Device::Cpu, DType::F32).unwrap();
    let mut run = |params: GenerateParams| {
        pipeline
            .generate(&params, inputs(), &mut |_| ControlFlow::Continue(()))
            .err()
            .expect("refused")
            .to_string()
    };
    let base = params("t2v_cfg");
    let err = run(GenerateParams {
        frames: 10,
        ..base.clone()
    });
    assert!(
        err.contains("4k+1 frames") && err.contains("not 10"),
        "{err}"
    );
    let err = run(GenerateParams {
        width: 48,
        ..base.clone()
    });
    assert!(err.contains("multiples of 32"), "{err}");
    let mut stg = base.clone();
    stg.guidance_terms.stg_scale = Some(1.0);
    let err = run(stg);
    assert!(
        err.contains("block 28 does not exist") && err.contains("2 blocks"),
        "{err}"
    );
    // Embeddings without their mask.
    let mut pipeline = LTX2Pipeline::load(&fixture(), &Device::Cpu, DType::F32).unwrap();
    let unmasked = GenerateInputs {
        prompt_attention_mask: None,
        ..inputs()
    };
    let err = pipeline
        .generate(&base, unmasked, &mut |_| ControlFlow::Continue(()))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("prompt_attention_mask"), "{err}");
}
