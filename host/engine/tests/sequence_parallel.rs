//! One generation split across ranks (crate::parallel) gives what the unsplit one gives: the Wan,
//! LTX-2, FLUX.1 and FLUX.2 transformers under Ulysses sequence parallel on 2 to 4 CPU ranks (even
//! and uneven token shares), and the pipelines under sequence parallel, CFG parallel and both. f32 on the CPU: the split changes only the order of a few sums, so 1e-5 relative.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use videosdgx_engine::families::flux::transformer::FluxTransformer2DModel;
use videosdgx_engine::families::flux2::transformer::Flux2Transformer2DModel;
use videosdgx_engine::families::ltx2::transformer::{
    LTX2TransformerInputs, LTX2VideoTransformer3DModel,
};
use videosdgx_engine::families::wan::pipeline::WanPipeline;
use videosdgx_engine::families::wan::transformer::WanTransformer3DModel;
use videosdgx_engine::models::relative_error;
use videosdgx_engine::parallel::{
    Layout, SequenceSplit, SplitGeneration, SplitRefused, generate_split, generate_split_on,
    run_ranks,
};
use videosdgx_engine::pipelines::{
    GenerateInputs, GenerateParams, GeneratedVideo, GuidanceTerms, Pipeline, Progress,
};
use videosdgx_engine::schedulers::step_cache::CacheSpec;

const TOLERANCE: f64 = 1e-5;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn component(name: &str) -> PathBuf {
    fixtures().join("components").join(name)
}

fn inputs(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(component(name).join("inputs.safetensors"), &Device::Cpu)
        .unwrap()
}

fn load(name: &str) -> WanTransformer3DModel {
    WanTransformer3DModel::load(&component(name).join("model"), &Device::Cpu, DType::F32).unwrap()
}

fn forward(
    model: &WanTransformer3DModel,
    inputs: &HashMap<String, Tensor>,
) -> candle_core::Result<Tensor> {
    model.forward(
        &inputs["hidden_states"],
        &inputs["timestep"],
        &inputs["encoder_hidden_states"],
        inputs.get("encoder_hidden_states_image"),
    )
}

/// The outputs of `forward` on the model `load` gives, on `ranks` CPU ranks (every rank's)
/// against one.
fn check_split<M: SequenceSplit>(
    what: &str,
    ranks: usize,
    load: impl Fn() -> anyhow::Result<M> + Sync,
    forward: impl Fn(&M) -> candle_core::Result<Vec<Tensor>> + Sync,
) {
    let whole = forward(&load().unwrap()).unwrap();
    let devices = vec![Device::Cpu; ranks];
    let outputs = run_ranks(Layout::new(ranks, false).unwrap(), &devices, |rank| {
        let mut model = load()?;
        model.set_sequence_parallel(rank.split.sequence)?;
        Ok(forward(&model)?)
    })
    .unwrap();
    for (rank, outputs) in outputs.iter().enumerate() {
        for (i, (got, want)) in outputs.iter().zip(&whole).enumerate() {
            assert_eq!(got.dims(), want.dims(), "{what}, output {i}, rank {rank}");
            let err = relative_error(got, want).unwrap();
            assert!(
                err <= TOLERANCE,
                "{what}, output {i}, rank {rank} of {ranks}: relative error {err:e}"
            );
        }
    }
}

/// The Wan transformer `name` on `inputs`, split over `ranks`.
fn check_wan(name: &str, inputs: &HashMap<String, Tensor>, ranks: usize) {
    let load = || Ok(load(name));
    check_split(name, ranks, load, |model| Ok(vec![forward(model, inputs)?]));
}

#[test]
fn the_split_transformer_matches_the_whole_one_for_every_wan_variant() {
    // Text-to-video; image-to-video with the CLIP branch; first and last frame with the image
    // position embedding and a temporal patch; Wan 2.2 with one timestep per token.
    for name in ["wan_t2v", "wan_i2v", "wan_flf2v", "wan22_ti2v"] {
        check_wan(name, &inputs(name), 2);
    }
    // Four heads over four ranks: one head each.
    check_wan("wan_i2v", &inputs("wan_i2v"), 4);
}

#[test]
fn the_split_ltx2_transformer_matches_the_whole_one_video_and_sound() {
    // LTX-2.0's interleaved RoPE with padded masks; LTX-2.3's split RoPE, gates and prompt
    // modulation with per-token timesteps; keyframes with explicit coordinates and
    // spatio-temporal guidance; isolated modalities.
    for name in [
        "ltx2-transformer-interleaved",
        "ltx2-transformer-split",
        "ltx2-transformer-guidance",
        "ltx2-transformer-isolated",
    ] {
        let load = || {
            LTX2VideoTransformer3DModel::load(
                &component(name).join("model"),
                &Device::Cpu,
                DType::F32,
            )
        };
        let inputs = inputs(name);
        check_split(name, 2, load, |model| {
            let (sample, audio) = model.forward(&LTX2TransformerInputs::from_named(&inputs)?)?;
            Ok(vec![sample, audio])
        });
    }
}

#[test]
fn the_split_flux_transformers_match_the_whole_ones() {
    // FLUX.1 [dev] with guidance; FLUX.2 [klein] (batch of 2, per-sample ids) and [dev] (9 image
    // tokens: shares of 5 and 4).
    let inputs1 = inputs("flux1-dev-tiny");
    check_split(
        "flux1-dev-tiny",
        2,
        || {
            FluxTransformer2DModel::load(
                &component("flux1-dev-tiny").join("model"),
                &Device::Cpu,
                DType::F32,
            )
        },
        |model| {
            Ok(vec![model.forward(
                &inputs1["hidden_states"],
                &inputs1["encoder_hidden_states"],
                &inputs1["pooled_projections"],
                &inputs1["timestep"],
                &inputs1["img_ids"],
                &inputs1["txt_ids"],
                inputs1.get("guidance"),
            )?])
        },
    );
    for name in ["flux2-klein-tiny", "flux2-dev-tiny"] {
        let inputs = inputs(name);
        check_split(
            name,
            2,
            || {
                Flux2Transformer2DModel::load(
                    &component(name).join("model"),
                    &Device::Cpu,
                    DType::F32,
                )
            },
            |model| {
                Ok(vec![model.forward(
                    &inputs["hidden_states"],
                    &inputs["encoder_hidden_states"],
                    &inputs["timestep"],
                    &inputs["img_ids"],
                    &inputs["txt_ids"],
                    inputs.get("guidance"),
                )?])
            },
        );
    }
}

/// The pipeline in `dir` on one CPU lane, then split across two (its progress to `on_progress`).
fn whole_and_split(
    dir: &std::path::Path,
    params: &GenerateParams,
    inputs: GenerateInputs,
    on_progress: &mut (dyn FnMut(&Progress) -> ControlFlow<()> + Send),
) -> (GeneratedVideo, SplitGeneration) {
    let whole = Pipeline::open(dir, &Device::Cpu, DType::F32)
        .unwrap()
        .generate(params, inputs.clone(), &mut quiet)
        .unwrap();
    let split = generate_split(
        dir,
        DType::F32,
        Layout::new(2, false).unwrap(),
        &[Device::Cpu, Device::Cpu],
        |_| Ok(()),
        params,
        inputs,
        on_progress,
    )
    .unwrap();
    (whole, split)
}

#[test]
fn a_split_flux2_generation_gives_the_unsplit_image() {
    let dir = fixtures().join("tiny-flux2-klein");
    let params: GenerateParams = serde_json::from_value(serde_json::json!({
        "prompt": "a red fox in the snow", "height": 32, "width": 48, "frames": 1,
        "steps": 3, "guidance": 1.0, "seed": 3,
    }))
    .unwrap();
    let (whole, split) = whole_and_split(&dir, &params, GenerateInputs::default(), &mut quiet);
    let err = relative_error(&split.video.frames, &whole.frames).unwrap();
    assert!(err <= TOLERANCE, "relative error {err:e}");
}

#[test]
fn uneven_token_shares_give_the_same_output() {
    // 3 x 3 x 3 = 27 patch tokens: shares of 14 and 13.
    let mut odd = inputs("wan_t2v");
    odd.insert(
        "hidden_states".into(),
        Tensor::randn(0f32, 1., (1, 4, 3, 6, 6), &Device::Cpu).unwrap(),
    );
    check_wan("wan_t2v", &odd, 2);
    // 1 x 1 x 5 = 5 patch tokens over four ranks: 2, 1, 1, 1.
    let mut few = inputs("wan_i2v");
    few.insert(
        "hidden_states".into(),
        Tensor::randn(0f32, 1., (2, 6, 1, 2, 10), &Device::Cpu).unwrap(),
    );
    check_wan("wan_i2v", &few, 4);
}

#[test]
fn fewer_tokens_than_ranks_are_refused_by_name() {
    // 1 x 1 x 3 = 3 patch tokens over four ranks.
    let mut few = inputs("wan_i2v");
    few.insert(
        "hidden_states".into(),
        Tensor::randn(0f32, 1., (2, 6, 1, 2, 6), &Device::Cpu).unwrap(),
    );
    let devices = vec![Device::Cpu; 4];
    let err = run_ranks(Layout::new(4, false).unwrap(), &devices, |rank| {
        let mut model = load("wan_i2v");
        model.set_sequence_parallel(rank.split.sequence)?;
        forward(&model, &few)?;
        Ok(())
    })
    .unwrap_err();
    // Found where the transformer shards them, the refusal still says what it is, so that a
    // caller does not try again.
    assert_eq!(
        err.downcast_ref::<SplitRefused>(),
        Some(&SplitRefused::Tokens {
            tokens: 3,
            ranks: 4
        })
    );
    let err = format!("{err:#}");
    assert!(
        err.contains("this size has 3 tokens, fewer than the 4 ranks"),
        "{err}"
    );
}

#[test]
fn a_size_with_fewer_tokens_than_ranks_is_refused_by_the_ranks_of_a_pipeline() {
    // 16x16 pixels, one frame: a single 2x2 patch of the 8x VAE's latents.
    let one_token = GenerateParams {
        height: 16,
        width: 16,
        frames: 1,
        ..params()
    };
    let err = generate_on_ranks(Layout::new(2, false).unwrap(), &one_token).unwrap_err();
    assert_eq!(
        err.downcast_ref::<SplitRefused>(),
        Some(&SplitRefused::Tokens {
            tokens: 1,
            ranks: 2
        }),
        "{err:#}"
    );
}

#[test]
fn a_head_count_the_ranks_cannot_share_is_refused_by_name() {
    let devices = vec![Device::Cpu; 3];
    let err = run_ranks(Layout::new(3, false).unwrap(), &devices, |rank| {
        let mut model = load("wan_t2v");
        model.set_sequence_parallel(rank.split.sequence)?;
        Ok(())
    })
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("2 attention heads cannot be split across 3 ranks")
            && err.contains("takes 1, 2 ranks"),
        "{err}"
    );
}

fn quiet(_: &Progress) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

fn params() -> GenerateParams {
    serde_json::from_value(serde_json::json!({
        "prompt": "a cat walks on the grass", "negative_prompt": "blurry",
        "height": 32, "width": 48, "frames": 5, "steps": 3, "guidance": 5.0, "seed": 7,
    }))
    .unwrap()
}

/// Generates with `params` on the ranks of `layout`: every rank's (frames, latents).
fn generate_on_ranks(
    layout: Layout,
    params: &GenerateParams,
) -> anyhow::Result<Vec<(Tensor, Tensor)>> {
    let devices = vec![Device::Cpu; layout.ranks()];
    run_ranks(layout, &devices, |rank| {
        let mut pipeline =
            WanPipeline::load(&fixtures().join("tiny-wan-t2v"), &rank.device, DType::F32)?;
        pipeline.set_split(rank.split)?;
        let video = pipeline.generate(params, &mut quiet)?;
        Ok((video.frames, video.latents))
    })
}

#[test]
fn a_split_generation_gives_the_unsplit_video_under_every_layout() {
    let p = params();
    let mut whole =
        WanPipeline::load(&fixtures().join("tiny-wan-t2v"), &Device::Cpu, DType::F32).unwrap();
    let expected = whole.generate(&p, &mut quiet).unwrap();
    for (ranks, cfg) in [(2, false), (3, false), (2, true), (4, true)] {
        let layout = Layout::new(ranks, cfg).unwrap();
        if layout.ulysses == 3 {
            // The tiny model has two heads: three-way Ulysses is refused (tested above).
            continue;
        }
        let outputs = generate_on_ranks(layout, &p).unwrap();
        let (frames, latents) = &outputs[0];
        let err = relative_error(frames, &expected.frames).unwrap();
        assert!(
            err <= TOLERANCE,
            "{layout:?}: frames, relative error {err:e}"
        );
        for (rank, (frames, rank_latents)) in outputs.iter().enumerate().skip(1) {
            assert_eq!(
                frames.dim(0).unwrap(),
                0,
                "{layout:?}: rank {rank} decodes nothing"
            );
            let err = relative_error(rank_latents, latents).unwrap();
            assert_eq!(err, 0.0, "{layout:?}: rank {rank} has other latents");
        }
    }
}

#[test]
fn pipelines_that_ran_a_split_then_generate_alone_as_fresh_ones() {
    let dir = fixtures().join("tiny-wan-t2v");
    let p = params();
    let open = || Pipeline::open(&dir, &Device::Cpu, DType::F32).unwrap();
    let fresh = open()
        .generate(&p, GenerateInputs::default(), &mut quiet)
        .unwrap();
    let mut pipelines = [open(), open()];
    let split = generate_split_on(
        pipelines.iter_mut().collect(),
        Layout::new(2, false).unwrap(),
        &p,
        GenerateInputs::default(),
        &mut quiet,
    )
    .unwrap();
    let err = relative_error(&split.video.frames, &fresh.frames).unwrap();
    assert!(err <= TOLERANCE, "split: relative error {err:e}");
    // A layout the model cannot take is refused before the pipelines become ranks: nothing ran
    // far enough to report.
    let mut unguided = p.clone();
    unguided.guidance = 1.0;
    let mut reports = 0;
    let Err(err) = generate_split_on(
        pipelines.iter_mut().collect(),
        Layout::new(2, true).unwrap(),
        &unguided,
        GenerateInputs::default(),
        &mut |_| {
            reports += 1;
            ControlFlow::Continue(())
        },
    ) else {
        panic!("CFG parallel without guidance ran");
    };
    assert_eq!(
        err.downcast_ref::<SplitRefused>(),
        Some(&SplitRefused::CfgParallelUnguided)
    );
    assert_eq!(reports, 0);
    // A size with fewer tokens than ranks is refused alike (one patch token for two ranks).
    let one_token = GenerateParams {
        height: 16,
        width: 16,
        frames: 1,
        ..p.clone()
    };
    let Err(err) = generate_split_on(
        pipelines.iter_mut().collect(),
        Layout::new(2, false).unwrap(),
        &one_token,
        GenerateInputs::default(),
        &mut |_| {
            reports += 1;
            ControlFlow::Continue(())
        },
    ) else {
        panic!("one token was split across two ranks");
    };
    assert_eq!(
        err.downcast_ref::<SplitRefused>(),
        Some(&SplitRefused::Tokens {
            tokens: 1,
            ranks: 2
        })
    );
    assert_eq!(reports, 0);
    // A split that fails while the ranks run (a frame count the VAE cannot take) leaves them
    // whole.
    let bad_frames = GenerateParams {
        frames: 4,
        ..p.clone()
    };
    let Err(err) = generate_split_on(
        pipelines.iter_mut().collect(),
        Layout::new(2, false).unwrap(),
        &bad_frames,
        GenerateInputs::default(),
        &mut quiet,
    ) else {
        panic!("4 frames were generated");
    };
    assert!(
        format!("{err:#}").contains("frames must be 4k+1"),
        "{err:#}"
    );
    // Both at once: were they still ranks of a split, they would run it together (rank 1
    // decoding nothing) rather than wait for each other forever.
    let p = &p;
    let alone: Vec<GeneratedVideo> = std::thread::scope(|s| {
        let runs: Vec<_> = pipelines
            .iter_mut()
            .map(|pipeline| {
                s.spawn(move || {
                    pipeline
                        .generate(p, GenerateInputs::default(), &mut quiet)
                        .unwrap()
                })
            })
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    for (rank, video) in alone.iter().enumerate() {
        // Rank 1 decoded nothing while split; alone, every pipeline decodes the same video.
        assert_eq!(
            video.frames.dims(),
            fresh.frames.dims(),
            "pipeline of rank {rank}"
        );
        let err = relative_error(&video.frames, &fresh.frames).unwrap();
        assert_eq!(err, 0.0, "pipeline of rank {rank}");
    }
}

#[test]
fn cfg_parallel_without_guidance_or_with_a_step_cache_is_refused() {
    let layout = Layout::new(2, true).unwrap();
    let mut p = params();
    p.guidance = 1.0;
    let err = generate_on_ranks(layout, &p).unwrap_err();
    // The refusal keeps its kind through the ranks, so callers can tell it from a failed run.
    assert_eq!(
        err.downcast_ref::<SplitRefused>(),
        Some(&SplitRefused::CfgParallelUnguided)
    );
    let err = format!("{err:#}");
    assert!(err.contains("CFG parallel needs guidance"), "{err}");
    let mut p = params();
    p.cache = Some("easycache".parse::<CacheSpec>().unwrap());
    let err = format!("{:#}", generate_on_ranks(layout, &p).unwrap_err());
    assert!(
        err.contains("step cache cannot run under CFG parallel"),
        "{err}"
    );
}

#[test]
fn a_step_cache_decides_alike_on_every_rank_of_a_sequence_split() {
    let mut p = params();
    p.steps = 8;
    p.cache = Some("easycache:0.3".parse::<CacheSpec>().unwrap());
    let mut whole =
        WanPipeline::load(&fixtures().join("tiny-wan-t2v"), &Device::Cpu, DType::F32).unwrap();
    let expected = whole.generate(&p, &mut quiet).unwrap();
    let outputs = generate_on_ranks(Layout::new(2, false).unwrap(), &p).unwrap();
    let err = relative_error(&outputs[0].0, &expected.frames).unwrap();
    assert!(err <= TOLERANCE, "relative error {err:e}");
}

#[test]
fn a_split_ltx2_generation_gives_the_unsplit_video_and_sound() {
    // Classifier-free, spatio-temporal and modality guidance, as one batch on every rank.
    let dir = fixtures().join("tiny-ltx2");
    let reference = |file: &str| {
        candle_core::safetensors::load(dir.join("reference").join(file), &Device::Cpu).unwrap()
    };
    let run: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("reference/t2v_all_guidance.json")).unwrap(),
    )
    .unwrap();
    let mut params: GenerateParams = serde_json::from_value(serde_json::json!({
        "prompt": "", "height": run["height"], "width": run["width"],
        "frames": run["num_frames"], "steps": run["num_inference_steps"],
        "guidance": run["guidance_scale"], "seed": 0, "fps": run["frame_rate"],
    }))
    .unwrap();
    params.guidance_terms = serde_json::from_value::<GuidanceTerms>(run.clone()).unwrap();
    let (mut prompt, mut negative) = (
        reference("prompt_embeds.safetensors"),
        reference("negative_prompt_embeds.safetensors"),
    );
    let inputs = GenerateInputs {
        latents: reference("latents.safetensors").remove("latents"),
        audio_latents: reference("audio_latents.safetensors").remove("audio_latents"),
        prompt_embeds: prompt.remove("prompt_embeds"),
        prompt_attention_mask: prompt.remove("prompt_attention_mask"),
        negative_prompt_embeds: negative.remove("negative_prompt_embeds"),
        negative_prompt_attention_mask: negative.remove("negative_prompt_attention_mask"),
        ..Default::default()
    };
    let mut reports = 0;
    let (whole, split) = whole_and_split(&dir, &params, inputs, &mut |_| {
        reports += 1;
        ControlFlow::Continue(())
    });
    assert!(reports > params.steps, "the first rank reports progress");
    assert_eq!(split.ranks.len(), 2);
    for rank in &split.ranks {
        // The video's self-attention trades tokens twice a block, the stop agreement once a
        // report; all within the rank's time.
        assert!(rank.exchange.exchanges > params.steps, "{rank:?}");
        assert!(rank.exchange.ms / 1e3 <= rank.seconds, "{rank:?}");
        assert_eq!(rank.device, "cpu");
    }
    let split = split.video;
    let sound = |v: &GeneratedVideo| v.audio.as_ref().unwrap().to_tensor(&Device::Cpu).unwrap();
    for (what, got, want) in [
        ("video", split.frames.clone(), whole.frames.clone()),
        ("sound", sound(&split), sound(&whole)),
    ] {
        let err = relative_error(&got, &want).unwrap();
        assert!(err <= TOLERANCE, "{what}: relative error {err:e}");
    }
}

#[test]
fn a_cancel_stops_every_rank_of_a_split_generation() {
    let mut p = params();
    p.steps = 6;
    let Err(err) = generate_split(
        &fixtures().join("tiny-wan-t2v"),
        DType::F32,
        Layout::new(2, true).unwrap(),
        &[Device::Cpu, Device::Cpu],
        |_| Ok(()),
        &p,
        GenerateInputs::default(),
        &mut |progress| match progress.step {
            2 => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        },
    ) else {
        panic!("the cancel was not obeyed");
    };
    assert!(
        err.downcast_ref::<videosdgx_engine::pipelines::Cancelled>()
            .is_some(),
        "{err:#}"
    );
}
