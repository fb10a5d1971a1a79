//! `LTX2ConditionPipeline` against diffusers on tests/fixtures/tiny-ltx2 (reference runs made by
//! tests/fixtures/make_ltx2_condition_fixtures.py): a keyframe replacing the first latent frame
//! with one of another size appended at the last (under classifier-free guidance), and a
//! five-frame clip appended at latent frame 1 to given latents under custom sigmas; the pictures,
//! the waveform and both denoised latents within 1e-3. Then the conditions a request cannot have.

use super::pipeline::{assert_matches_reference, fixture, reference};
use candle_core::{DType, Device};
use std::ops::ControlFlow;
use videosdgx_engine::families::ltx2::pipeline::LTX2Pipeline;
use videosdgx_engine::pipelines::{
    ConditionFrames, FrameCondition, GenerateInputs, GenerateParams, ImageInput,
};

/// The request of reference/<run>.json, with its conditions.
fn params(run: &str) -> GenerateParams {
    let args: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture().join(format!("reference/{run}.json"))).unwrap(),
    )
    .unwrap();
    let conditions = args["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| FrameCondition {
            frames: ConditionFrames::Images(
                c["frames"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|name| {
                        ImageInput::Path(fixture().join("reference").join(name.as_str().unwrap()))
                    })
                    .collect(),
            ),
            index: c["index"].as_i64().unwrap(),
            strength: c["strength"].as_f64().unwrap(),
        })
        .collect();
    GenerateParams {
        conditions,
        ..super::pipeline::params(run)
    }
}

/// The run's stored noise (and given video latents) with the pipeline fixture's embeddings and
/// audio latents.
fn inputs(run: &str) -> GenerateInputs {
    let mut stored = reference(&format!("{run}_noise.safetensors"));
    GenerateInputs {
        noise: stored.remove("noise"),
        audio_noise: stored.remove("audio_noise"),
        latents: stored.remove("latents"),
        ..super::pipeline::inputs()
    }
}

fn generate(params: &GenerateParams, inputs: GenerateInputs) -> anyhow::Result<LTX2Output> {
    let mut pipeline = LTX2Pipeline::load(&fixture(), &Device::Cpu, DType::F32)?;
    pipeline.generate(params, inputs, &mut |_| ControlFlow::Continue(()))
}

type LTX2Output = videosdgx_engine::pipelines::GeneratedVideo;

#[test]
fn a_first_frame_and_an_appended_last_keyframe_match_diffusers_under_guidance() {
    let out = generate(
        &params("condition_keyframes"),
        inputs("condition_keyframes"),
    )
    .unwrap();
    assert_matches_reference("condition_keyframes", out);
}

#[test]
fn a_clip_continued_from_given_latents_under_custom_sigmas_matches_diffusers() {
    let out = generate(&params("condition_clip"), inputs("condition_clip")).unwrap();
    assert_matches_reference("condition_clip", out);
}

#[test]
fn conditions_a_request_cannot_have_are_refused_by_name() {
    let refused = |params: GenerateParams, inputs: GenerateInputs| {
        format!("{:#}", generate(&params, inputs).map(|_| ()).unwrap_err())
    };
    let with = |change: &dyn Fn(&mut FrameCondition)| {
        let mut params = params("condition_keyframes");
        change(&mut params.conditions[1]);
        params
    };
    let keyframes = || inputs("condition_keyframes");

    // 9 frames are 2 latent frames after the first: index 3 is past the end.
    let err = refused(with(&|c| c.index = 3), keyframes());
    assert!(
        err.contains("condition 2") && err.contains("past the end"),
        "{err}"
    );
    let err = refused(with(&|c| c.strength = 1.5), keyframes());
    assert!(err.contains("strength"), "{err}");
    let err = refused(
        with(&|c| c.frames = ConditionFrames::Images(Vec::new())),
        keyframes(),
    );
    assert!(err.contains("at least one frame"), "{err}");
    let err = refused(
        with(&|c| {
            c.frames = ConditionFrames::Images(vec![
                ImageInput::Path(fixture().join("reference/condition_first.png")),
                ImageInput::Path(fixture().join("reference/condition_last_48x40.png")),
            ])
        }),
        keyframes(),
    );
    assert!(err.contains("share one size"), "{err}");
    let err = refused(
        with(&|c| {
            c.frames = ConditionFrames::Video {
                video: fixture().join("reference/missing.mp4"),
            }
        }),
        keyframes(),
    );
    assert!(err.contains("missing.mp4"), "{err}");

    let mut both = params("condition_keyframes");
    both.start_image = Some(ImageInput::Path(
        fixture().join("reference/condition_first.png"),
    ));
    let err = refused(both, keyframes());
    assert!(err.contains("latent frame 0 instead"), "{err}");

    // The noise covers the appended keyframe tokens too.
    let mut short = keyframes();
    short.noise = Some(short.noise.unwrap().narrow(1, 0, 48).unwrap());
    let err = refused(params("condition_keyframes"), short);
    assert!(
        err.contains("appended ones too") && err.contains("[1, 64, 4]"),
        "{err}"
    );
}

#[test]
fn the_command_line_form_reads_file_index_and_strength_from_the_right() {
    let parse = |s: &str| s.parse::<FrameCondition>().unwrap();
    let image = |p: &str| ConditionFrames::Images(vec![ImageInput::Path(p.into())]);
    assert_eq!(
        parse("key.png"),
        FrameCondition {
            frames: image("key.png"),
            index: 0,
            strength: 1.0
        }
    );
    assert_eq!(
        parse("shots/a:b.png:-1:0.8"),
        FrameCondition {
            frames: image("shots/a:b.png"),
            index: -1,
            strength: 0.8
        }
    );
    assert_eq!(parse("key.png:4").index, 4);
    assert_eq!(
        parse("previous.MP4:0").frames,
        ConditionFrames::Video {
            video: "previous.MP4".into()
        }
    );
    assert!(":1".parse::<FrameCondition>().is_err());
}
