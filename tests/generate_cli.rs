//! `videosdgx generate` end to end on the tiny Wan pipeline (tests/fixtures/tiny-wan-t2v): the
//! saved tensor matches diffusers, the MP4 carries the generation record, bad input exits with
//! one readable line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// An output path for runs that must fail before writing (never `/dev/null`: outputs are renamed
/// onto their destination).
fn discard() -> String {
    std::env::temp_dir()
        .join(format!(
            "videosdgx-generate-cli-{}.safetensors",
            std::process::id()
        ))
        .to_str()
        .unwrap()
        .to_string()
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-wan-t2v")
}

/// Runs `generate` on the tiny pipeline (32x32, 4 steps, guidance 5) with `frames` and `extra`.
fn generate(frames: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "--prompt",
        "a cat walks  on the grass",
        "--negative-prompt",
        "blurry, low quality",
    ];
    args.extend_from_slice(extra);
    generate_without_prompt(frames, &args)
}

/// [`generate`] with no prompt of its own: `extra` gives one, or embeddings.
fn generate_without_prompt(frames: &str, extra: &[&str]) -> Output {
    let dir = fixtures();
    Command::new(env!("CARGO_BIN_EXE_videosdgx"))
        .args(["generate", "--model", dir.to_str().unwrap()])
        .args(["--height", "32", "--width", "32", "--frames", frames])
        .args(["--steps", "4", "--guidance", "5.0", "--seed", "0"])
        .args(extra)
        .output()
        .unwrap()
}

fn video(path: &Path) -> candle_core::Tensor {
    let mut map = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
    map.remove("video").expect("key `video`")
}

fn rel_err(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let diff = (a - b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let norm = b
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    (diff as f64 / norm as f64).sqrt()
}

#[test]
fn generate_from_reference_latents_and_embeds_saves_the_diffusers_video() {
    let tmp = tempfile::tempdir().unwrap();
    let tensor = tmp.path().join("video.safetensors");
    let reference = fixtures().join("reference");
    let arg = |name: &str| reference.join(name).to_str().unwrap().to_string();
    let (latents, embeds, negative) = (
        arg("latents.safetensors"),
        arg("prompt_embeds.safetensors"),
        arg("negative_prompt_embeds.safetensors"),
    );
    let out = generate(
        "5",
        &[
            "--latents",
            &latents,
            "--prompt-embeds",
            &embeds,
            "--negative-prompt-embeds",
            &negative,
            "--save-tensor",
            tensor.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Denoising 4/4"),
        "progress on stderr: {stderr}"
    );
    let err = rel_err(
        &video(&tensor),
        &video(&reference.join("video_from_embeds.safetensors")),
    );
    assert!(err <= 1e-3, "relative error {err:e}");
}

#[test]
fn a_generation_split_across_cpu_lanes_saves_the_diffusers_video() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = fixtures().join("reference");
    let arg = |name: &str| reference.join(name).to_str().unwrap().to_string();
    let (latents, embeds, negative) = (
        arg("latents.safetensors"),
        arg("prompt_embeds.safetensors"),
        arg("negative_prompt_embeds.safetensors"),
    );
    // Tokens split two ways; the guidance branches on two lanes; both on four.
    for (devices, cfg) in [
        ("cpu,cpu", false),
        ("cpu,cpu", true),
        ("cpu,cpu,cpu,cpu", true),
    ] {
        let tensor = tmp.path().join(format!("{devices}-{cfg}.safetensors"));
        let mut extra = vec![
            "--latents",
            &latents,
            "--prompt-embeds",
            &embeds,
            "--negative-prompt-embeds",
            &negative,
            "--device",
            devices,
            "--save-tensor",
            tensor.to_str().unwrap(),
            "--json",
        ];
        if cfg {
            extra.push("--cfg-parallel");
        }
        let out = generate("5", &extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{devices} {cfg}: {stderr}");
        // One rank reports: each step once.
        assert_eq!(stderr.matches("Denoising 4/4").count(), 1, "{stderr}");
        // The record gives every rank's time and exchanges.
        let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let ranks = record["ranks"].as_array().unwrap();
        assert_eq!(ranks.len(), devices.split(',').count(), "{record}");
        for rank in ranks {
            assert_eq!(rank["device"], "cpu");
            assert!(
                rank["exchange"]["exchanges"].as_u64().unwrap() > 4,
                "{rank}"
            );
            assert!(rank["seconds"].as_f64().unwrap() > 0.0, "{rank}");
        }
        let err = rel_err(
            &video(&tensor),
            &video(&reference.join("video_from_embeds.safetensors")),
        );
        assert!(err <= 1e-3, "{devices} {cfg}: relative error {err:e}");
    }
}

#[test]
fn splits_the_model_or_the_cards_cannot_take_are_refused_in_one_line() {
    let discard = discard();
    let out = generate(
        "5",
        &[
            "--device",
            "cpu,cpu,cpu",
            "--cfg-parallel",
            "--save-tensor",
            &discard,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("CFG parallel") && stderr.contains("even"),
        "{stderr}"
    );
    // The tiny model has two heads.
    let out = generate("5", &["--device", "cpu,cpu,cpu", "--save-tensor", &discard]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("2 attention heads cannot be split across 3 ranks"),
        "{stderr}"
    );
    let out = generate_image(&[
        "--device",
        "cpu,cpu",
        "--cfg-parallel",
        "--save-tensor",
        &discard,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CFG parallel is for Wan models"),
        "{stderr}"
    );
}

#[test]
fn float8_attention_where_it_cannot_run_says_so_and_the_record_keeps_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let tensor = tmp.path().join("video.safetensors");
    let plain = tmp.path().join("plain.safetensors");
    let out = generate(
        "5",
        &[
            "--attention",
            "fp8",
            "--save-tensor",
            tensor.to_str().unwrap(),
            "--json",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "--attention fp8: float8 attention runs for Wan models in bf16 on Hopper GPUs"
        ),
        "{stderr}"
    );
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(record["params"].get("attention").is_none(), "{record}");
    // What ran is the exact attention.
    assert!(
        generate("5", &["--save-tensor", plain.to_str().unwrap()])
            .status
            .success()
    );
    assert_eq!(rel_err(&video(&tensor), &video(&plain)), 0.0);
}

#[test]
fn generate_writes_an_mp4_with_the_generation_record() {
    let tmp = tempfile::tempdir().unwrap();
    let mp4 = tmp.path().join("clip.mp4");
    let out = generate("5", &["--out", mp4.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["frames"], 5);
    // Every stage is timed, and the stages account for the whole run.
    let stages = record["stage_seconds"].as_object().unwrap();
    let names: Vec<&str> = stages.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "Decoding",
            "Denoising",
            "EncodingPrompt",
            "LoadingModel",
            "Writing"
        ]
    );
    let sum: f64 = stages.values().map(|s| s.as_f64().unwrap()).sum();
    let total = record["seconds"].as_f64().unwrap();
    assert!(
        sum <= total && sum > 0.9 * total,
        "stages {sum} s of {total} s"
    );
    let decoded = videosdgx_engine::video::read_mp4(&mp4).unwrap();
    assert_eq!(decoded.frames.len(), 5);
    assert_eq!(decoded.metadata["generate"]["seed"], 0);
    assert_eq!(
        decoded.metadata["generate"]["prompt"],
        "a cat walks  on the grass"
    );
}

#[test]
fn frames_that_are_not_4k_plus_1_fail_with_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let tensor = tmp.path().join("video.safetensors");
    let out = generate("6", &["--save-tensor", tensor.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("error:") && last.contains("frames must be 4k+1"),
        "{stderr}"
    );
    assert!(!tensor.exists());
}

#[test]
fn latents_of_the_wrong_shape_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let latents = tmp.path().join("latents.safetensors");
    let zeros = candle_core::Tensor::zeros(
        (1, 4, 3, 4, 4),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("x".to_string(), zeros)]),
        &latents,
    )
    .unwrap();
    let tensor = tmp.path().join("video.safetensors");
    let out = generate(
        "5",
        &[
            "--latents",
            latents.to_str().unwrap(),
            "--save-tensor",
            tensor.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("latents have shape [1, 4, 3, 4, 4]"),
        "{stderr}"
    );
}

#[test]
fn prompt_embeddings_stand_in_for_the_prompt() {
    let reference = fixtures().join("reference");
    let out = generate_without_prompt("5", &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--prompt"), "{stderr}");

    let tmp = tempfile::tempdir().unwrap();
    let tensor = tmp.path().join("video.safetensors");
    let file = |name: &str| reference.join(name).to_str().unwrap().to_string();
    let out = generate_without_prompt(
        "5",
        &[
            "--prompt-embeds",
            &file("prompt_embeds.safetensors"),
            "--negative-prompt-embeds",
            &file("negative_prompt_embeds.safetensors"),
            "--save-tensor",
            tensor.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(video(&tensor).dims(), [5, 32, 32, 3]);
}

#[test]
fn a_distill_preset_sets_the_schedule_and_turns_guidance_off() {
    let tmp = tempfile::tempdir().unwrap();
    let mp4 = tmp.path().join("clip.mp4");
    let out = Command::new(env!("CARGO_BIN_EXE_videosdgx"))
        .args(["generate", "--model", fixtures().to_str().unwrap()])
        .args([
            "--prompt", "a cat", "--height", "32", "--width", "32", "--frames", "5",
        ])
        .args(["--seed", "3", "--preset", "wan2.1-distill-4step"])
        .args(["--out", mp4.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record = &videosdgx_engine::video::read_mp4(&mp4).unwrap().metadata["generate"];
    assert_eq!(record["steps"], 4);
    assert_eq!(record["guidance"], 1.0);
    assert_eq!(record["flow_shift"], 5.0);
    assert_eq!(record["scheduler"], "flow-euler");
    assert_eq!(
        record["denoising_steps"],
        serde_json::json!([1000, 750, 500, 250])
    );

    // An unknown preset is named with the known ones; a preset and its own settings conflict.
    let out = generate_without_prompt("5", &["--prompt", "a cat", "--preset", "turbo"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--preset") && err.contains("--steps"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_videosdgx"))
        .args(["generate", "--model", fixtures().to_str().unwrap()])
        .args([
            "--prompt", "a cat", "--height", "32", "--width", "32", "--frames", "5",
        ])
        .args([
            "--seed",
            "3",
            "--preset",
            "turbo",
            "--out",
            mp4.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown preset `turbo` (known: wan2.1-distill-4step, wan2.2-distill-4step, ltx2-distilled-8step)"),
        "{err}"
    );
}

#[test]
fn a_step_cache_reports_the_steps_each_branch_computed_and_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let mp4 = tmp.path().join("clip.mp4");
    let out = generate(
        "5",
        &[
            "--cache",
            "teacache:0.2",
            "--out",
            mp4.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cache = &record["cache"];
    assert_eq!(cache["method"], "teacache");
    assert_eq!(cache["threshold"], 0.2);
    let count = |key: &str| {
        ["cond", "uncond"]
            .iter()
            .map(|b| cache[key][b].as_array().unwrap().len())
            .sum::<usize>()
    };
    // 4 steps x 2 guidance branches, each call either computed or skipped.
    assert_eq!(count("computed") + count("skipped"), 8, "{cache}");
    // TeaCache always computes the first and last steps.
    for branch in ["cond", "uncond"] {
        let computed = &cache["computed"][branch];
        assert_eq!(computed[0], 0, "{cache}");
        assert_eq!(computed.as_array().unwrap().last().unwrap(), 3, "{cache}");
    }
    assert_eq!(
        record["params"]["cache"],
        serde_json::json!({"method": "teacache", "threshold": 0.2})
    );
    // The MP4's generation record carries the spec and the steps.
    let metadata = videosdgx_engine::video::read_mp4(&mp4).unwrap().metadata;
    assert_eq!(metadata["generate"]["cache"], record["params"]["cache"]);
    assert_eq!(metadata["cache"], *cache);
}

#[test]
fn without_a_step_cache_the_record_has_no_cache_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let tensor = tmp.path().join("video.safetensors");
    let out = generate("5", &["--save-tensor", tensor.to_str().unwrap(), "--json"]);
    assert!(out.status.success());
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(record.get("cache").is_none(), "{record}");
    assert!(record["params"].get("cache").is_none(), "{record}");
}

#[test]
fn a_bad_cache_spec_is_refused_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let tensor = tmp.path().join("video.safetensors");
    for (spec, expected) in [
        ("foo", "unknown cache method \"foo\""),
        (
            "teacache:-1",
            "the teacache threshold must be a positive number, got -1",
        ),
        ("magcache:fast", "is not a number"),
    ] {
        let out = generate(
            "5",
            &["--cache", spec, "--save-tensor", tensor.to_str().unwrap()],
        );
        assert!(!out.status.success(), "{spec}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--cache") && stderr.contains(expected),
            "{spec}: {stderr}"
        );
        assert!(!tensor.exists());
    }
}

/// `generate` on the tiny FLUX.2 [klein] pipeline (tests/fixtures/tiny-flux2-klein).
fn generate_image(extra: &[&str]) -> Output {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-flux2-klein");
    let latents = dir.join("reference/latents.safetensors");
    Command::new(env!("CARGO_BIN_EXE_videosdgx"))
        .args(["generate", "--model", dir.to_str().unwrap()])
        .args([
            "--prompt",
            "a red fox in the snow",
            "--height",
            "32",
            "--width",
            "48",
        ])
        .args(["--steps", "4", "--guidance", "1", "--seed", "3"])
        .args(["--latents", latents.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn an_image_model_writes_a_png_with_its_record_and_the_reference_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let (png, tensor) = (
        tmp.path().join("fox.png"),
        tmp.path().join("fox.safetensors"),
    );
    let refs = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny-flux2-klein/reference");
    let (ref0, ref1) = (refs.join("reference_0.png"), refs.join("reference_1.png"));
    let out = generate_image(&[
        "--image",
        ref0.to_str().unwrap(),
        "--image",
        ref1.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
        "--save-tensor",
        tensor.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut saved = candle_core::safetensors::load(&tensor, &candle_core::Device::Cpu).unwrap();
    let image = saved.remove("image").expect("key `image`");
    let mut expected = candle_core::safetensors::load(
        refs.join("references.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let err = rel_err(&image, &expected.remove("image").unwrap());
    assert!(err <= 1e-3, "relative error {err:e}");

    assert_eq!(image::image_dimensions(&png).unwrap(), (48, 32));
    let record = videosdgx_engine::video::read_png_metadata(&png).unwrap();
    assert_eq!(record["generate"]["prompt"], "a red fox in the snow");
    assert_eq!(record["generate"]["seed"], 3);
    assert_eq!(
        record["generate"]["references"].as_array().unwrap().len(),
        2
    );
}

#[test]
fn an_image_model_refuses_frames_and_a_video_model_refuses_two_start_frames() {
    let out = generate_image(&["--frames", "5", "--save-tensor", &discard()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is an image model"), "{stderr}");

    let png = fixtures().join("../tiny-flux2-klein/reference/reference_0.png");
    let png = png.to_str().unwrap();
    let out = generate(
        "5",
        &["--image", png, "--image", png, "--save-tensor", &discard()],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("one start frame"), "{stderr}");
}

/// `generate` on the tiny FLUX.1 pipelines (tests/fixtures/tiny-flux1-dev, tiny-flux1-kontext).
fn generate_flux1(pipeline: &str, prompt: &str, guidance: &str, extra: &[&str]) -> Output {
    let dir = fixtures().join("..").join(pipeline);
    let latents = dir.join("reference/latents.safetensors");
    Command::new(env!("CARGO_BIN_EXE_videosdgx"))
        .args(["generate", "--model", dir.to_str().unwrap()])
        .args(["--prompt", prompt, "--height", "32", "--width", "48"])
        .args(["--steps", "4", "--guidance", guidance, "--seed", "5"])
        .args(["--latents", latents.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn flux1_dev_and_kontext_generate_the_diffusers_images() {
    let tmp = tempfile::tempdir().unwrap();
    let refs = fixtures().join("..");
    let image = refs.join("tiny-flux1-kontext/reference/image.png");
    for (pipeline, prompt, guidance, extra, reference) in [
        (
            "tiny-flux1-dev",
            "a red car drives along a mountain road at night",
            "3.5",
            vec![],
            "text_to_image",
        ),
        (
            "tiny-flux1-dev",
            "a red car drives along a mountain road at night",
            "3.5",
            vec![
                "--negative-prompt",
                "low quality, blurry",
                "--true-cfg",
                "4",
            ],
            "true_cfg",
        ),
        (
            "tiny-flux1-dev",
            "a red car drives along a mountain road at night",
            "3.5",
            vec!["--max-sequence-length", "256"],
            "max_sequence_length_256",
        ),
        (
            "tiny-flux1-kontext",
            "make the car blue",
            "2.5",
            vec!["--image", image.to_str().unwrap()],
            "edit",
        ),
    ] {
        let (png, tensor) = (
            tmp.path().join(format!("{reference}.png")),
            tmp.path().join(format!("{reference}.safetensors")),
        );
        let mut args = extra.clone();
        args.extend(["--out", png.to_str().unwrap()]);
        args.extend(["--save-tensor", tensor.to_str().unwrap()]);
        let out = generate_flux1(pipeline, prompt, guidance, &args);
        assert!(
            out.status.success(),
            "{pipeline}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut saved = candle_core::safetensors::load(&tensor, &candle_core::Device::Cpu).unwrap();
        let mut expected = candle_core::safetensors::load(
            refs.join(pipeline)
                .join(format!("reference/{reference}.safetensors")),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let err = rel_err(
            &saved.remove("image").unwrap(),
            &expected.remove("image").unwrap(),
        );
        assert!(err <= 1e-3, "{pipeline}: relative error {err:e}");
        assert_eq!(image::image_dimensions(&png).unwrap(), (48, 32));
    }
}

#[test]
fn flux1_prompt_embeddings_need_their_pooled_embeddings_and_kontext_needs_an_image() {
    let refs = fixtures().join("../tiny-flux1-dev/reference");
    let tmp = tempfile::tempdir().unwrap();
    let embeds = candle_core::safetensors::load(
        refs.join("prompt_embeds.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let (t5, pooled) = (
        tmp.path().join("t5.safetensors"),
        tmp.path().join("pooled.safetensors"),
    );
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("e".to_string(), embeds["prompt_embeds"].clone())]),
        &t5,
    )
    .unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([(
            "p".to_string(),
            embeds["pooled_prompt_embeds"].clone(),
        )]),
        &pooled,
    )
    .unwrap();
    let tensor = tmp.path().join("out.safetensors");
    let out = generate_flux1(
        "tiny-flux1-dev",
        "ignored",
        "3.5",
        &[
            "--prompt-embeds",
            t5.to_str().unwrap(),
            "--save-tensor",
            tensor.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--pooled-prompt-embeds"), "{stderr}");

    let out = generate_flux1(
        "tiny-flux1-dev",
        "ignored",
        "3.5",
        &[
            "--prompt-embeds",
            t5.to_str().unwrap(),
            "--pooled-prompt-embeds",
            pooled.to_str().unwrap(),
            "--save-tensor",
            tensor.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut saved = candle_core::safetensors::load(&tensor, &candle_core::Device::Cpu).unwrap();
    let mut expected = candle_core::safetensors::load(
        refs.join("text_to_image.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let err = rel_err(
        &saved.remove("image").unwrap(),
        &expected.remove("image").unwrap(),
    );
    assert!(err <= 1e-3, "relative error {err:e}");

    let out = generate_flux1(
        "tiny-flux1-kontext",
        "edit",
        "2.5",
        &["--save-tensor", &discard()],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Kontext") && stderr.contains("--image"),
        "{stderr}"
    );
}

/// `generate` on the tiny LTX-2 pipeline (tests/fixtures/tiny-ltx2, no text encoder) from the
/// reference's embeddings (with their masks) and latents, `frames` frames of 32x32.
fn generate_ltx2(frames: &str, extra: &[&str]) -> Output {
    ltx2_command(
        &fixtures().join("../tiny-ltx2"),
        Some("latents.safetensors"),
        frames,
    )
    .args(extra)
    .output()
    .unwrap()
}

/// `generate --model dir` of 32x32 LTX-2 video from the tiny fixture's reference embeddings,
/// audio latents and, when given, the video latents (or noise) of the reference file `latents`.
fn ltx2_command(dir: &Path, latents: Option<&str>, frames: &str) -> Command {
    let reference = |file: &str| fixtures().join("../tiny-ltx2/reference").join(file);
    let mut command = Command::new(env!("CARGO_BIN_EXE_videosdgx"));
    command
        .args(["generate", "--model", dir.to_str().unwrap()])
        .args([
            "--height", "32", "--width", "32", "--frames", frames, "--seed", "0",
        ])
        .arg("--prompt-embeds")
        .arg(reference("prompt_embeds.safetensors"))
        .arg("--negative-prompt-embeds")
        .arg(reference("negative_prompt_embeds.safetensors"))
        .arg("--audio-latents")
        .arg(reference("audio_latents.safetensors"));
    if let Some(latents) = latents {
        command.arg("--latents").arg(reference(latents));
    }
    command
}

#[test]
fn ltx2_with_a_start_image_makes_the_reference_image_to_video() {
    let tmp = tempfile::tempdir().unwrap();
    let tensor = tmp.path().join("out.safetensors");
    let frame = fixtures().join("../tiny-ltx2/reference/i2v_frame.png");
    // An `LTX2Pipeline` folder given `--image` runs `LTX2ImageToVideoPipeline`; `--latents` is the
    // noise the image's latents are blended into.
    let out = ltx2_command(
        &fixtures().join("../tiny-ltx2"),
        Some("i2v_noise.safetensors"),
        "9",
    )
    .args(["--steps", "3", "--guidance", "3", "--image"])
    .arg(&frame)
    .arg("--save-tensor")
    .arg(&tensor)
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = candle_core::safetensors::load(&tensor, &candle_core::Device::Cpu).unwrap();
    let expected = candle_core::safetensors::load(
        fixtures().join("../tiny-ltx2/reference/i2v_cfg.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(rel_err(&got["video"], &expected["video"]) <= 1e-3);
    let audio = got["audio"].squeeze(0).unwrap();
    assert!(rel_err(&audio, &expected["audio"]) <= 1e-3);

    // An `LTX2ImageToVideoPipeline` folder refuses a request without the image, in one line.
    let folder = tmp.path().join("ltx2-i2v");
    let source = fixtures().join("../tiny-ltx2");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            let target = folder.join(path.file_name().unwrap());
            std::fs::create_dir_all(&target).unwrap();
            for file in std::fs::read_dir(&path).unwrap() {
                let file = file.unwrap().path();
                std::fs::copy(&file, target.join(file.file_name().unwrap())).unwrap();
            }
        }
    }
    let index = std::fs::read_to_string(source.join("model_index.json")).unwrap();
    std::fs::write(
        folder.join("model_index.json"),
        index.replace("\"LTX2Pipeline\"", "\"LTX2ImageToVideoPipeline\""),
    )
    .unwrap();
    let out = ltx2_command(&folder, Some("i2v_noise.safetensors"), "9")
        .args([
            "--steps",
            "3",
            "--guidance",
            "3",
            "--save-tensor",
            &discard(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("image-to-video checkpoint") && stderr.contains("--image"),
        "{stderr}"
    );
}

#[test]
fn ltx2_makes_the_reference_video_and_sound_and_an_mp4_that_carries_both() {
    let tmp = tempfile::tempdir().unwrap();
    let tensor = tmp.path().join("out.safetensors");
    let (mp4, wav) = (tmp.path().join("clip.mp4"), tmp.path().join("sound.wav"));
    let out = generate_ltx2(
        "9",
        &[
            "--steps",
            "3",
            "--guidance",
            "3",
            "--save-tensor",
            tensor.to_str().unwrap(),
            "--out",
            mp4.to_str().unwrap(),
            "--wav",
            wav.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = candle_core::safetensors::load(&tensor, &candle_core::Device::Cpu).unwrap();
    let expected = candle_core::safetensors::load(
        fixtures().join("../tiny-ltx2/reference/t2v_cfg.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(rel_err(&got["video"], &expected["video"]) <= 1e-3);
    // The waveform as the pipeline returns it: [batch, channels, samples].
    let audio = &got["audio"];
    assert_eq!(audio.dims(), &[1, 2, 2640]);
    assert!(rel_err(&audio.squeeze(0).unwrap(), &expected["audio"]) <= 1e-3);

    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["fps"], 24);
    assert_eq!(record["audio"]["sample_rate"], 8000);
    let mut reader = videosdgx_engine::video::Mp4Reader::open(&mp4).unwrap();
    assert_eq!(reader.frame_count(), 9);
    let sound = reader.read_audio().unwrap().expect("a sound track");
    assert_eq!(
        (sound.sample_rate, sound.channels, sound.frames()),
        (8000, 2, 2640)
    );
    let written = videosdgx_engine::video::Audio::read_wav(&wav).unwrap();
    assert_eq!(written.samples.len(), 5280);
}

#[test]
fn ltx2_conditions_on_a_keyframe_and_a_previous_clip_and_records_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (previous, mp4) = (tmp.path().join("previous.mp4"), tmp.path().join("next.mp4"));
    let tensor = tmp.path().join("next.safetensors");
    let keyframe = fixtures().join("../tiny-ltx2/reference/condition_first.png");
    let steps = ["--steps", "3", "--guidance", "3"];
    let out = generate_ltx2(
        "9",
        &[&steps[..], &["--out", previous.to_str().unwrap()]].concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The keyframe opens the clip; the previous clip's frames guide it from latent frame 1.
    let keyframe_arg = format!("{}:0", keyframe.display());
    let clip_arg = format!("{}:1:0.8", previous.display());
    let conditions = ["--condition", &keyframe_arg, "--condition", &clip_arg];
    let out = generate_ltx2(
        "9",
        &[
            &steps[..],
            &conditions,
            &[
                "--out",
                mp4.to_str().unwrap(),
                "--save-tensor",
                tensor.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record = &videosdgx_engine::video::read_mp4(&mp4).unwrap().metadata["generate"];
    assert_eq!(
        record["conditions"],
        serde_json::json!([
            {"frames": [keyframe], "index": 0, "strength": 1.0},
            {"frames": {"video": previous}, "index": 1, "strength": 0.8},
        ])
    );
    // Conditioned, the video is not the text-to-video one of the same seed and latents.
    let got = candle_core::safetensors::load(&tensor, &candle_core::Device::Cpu).unwrap();
    let unconditioned = candle_core::safetensors::load(
        fixtures().join("../tiny-ltx2/reference/t2v_cfg.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(rel_err(&got["video"], &unconditioned["video"]) > 1e-2);

    // A condition past the clip's end is refused in one line, naming it.
    let past_end = format!("{}:3", keyframe.display());
    let out = generate_ltx2(
        "9",
        &[
            &steps[..],
            &["--condition", &past_end, "--save-tensor", &discard()],
        ]
        .concat(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("condition 1") && stderr.contains("past the end"),
        "{stderr}"
    );
}

#[test]
fn ltx2_keyframes_from_the_command_line_match_diffusers() {
    // reference/condition_keyframes: a keyframe opening the clip and a 48x40 one appended at the
    // last latent frame (strength 0.8), from zero latents and the reference's own noise draws.
    let tmp = tempfile::tempdir().unwrap();
    let reference = fixtures().join("../tiny-ltx2/reference");
    let noise = candle_core::safetensors::load(
        reference.join("condition_keyframes_noise.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let one = |key: &str| {
        let path = tmp.path().join(format!("{key}.safetensors"));
        candle_core::safetensors::save(&HashMap::from([(key, noise[key].clone())]), &path).unwrap();
        path
    };
    let (video_noise, audio_noise) = (one("noise"), one("audio_noise"));
    let tensor = tmp.path().join("out.safetensors");
    let first = format!("{}:0", reference.join("condition_first.png").display());
    let last = format!(
        "{}:-1:0.8",
        reference.join("condition_last_48x40.png").display()
    );
    let out = ltx2_command(&fixtures().join("../tiny-ltx2"), None, "9")
        .args(["--steps", "3", "--guidance", "3"])
        .args(["--condition", &first, "--condition", &last])
        .arg("--noise")
        .arg(&video_noise)
        .arg("--audio-noise")
        .arg(&audio_noise)
        .arg("--save-tensor")
        .arg(&tensor)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = candle_core::safetensors::load(&tensor, &candle_core::Device::Cpu).unwrap();
    let expected = candle_core::safetensors::load(
        reference.join("condition_keyframes.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(rel_err(&got["video"], &expected["video"]) <= 1e-3);
    let audio = got["audio"].squeeze(0).unwrap();
    assert!(rel_err(&audio, &expected["audio"]) <= 1e-3);
}

#[test]
fn ltx2_requests_it_cannot_make_fail_in_one_line() {
    let out = generate_ltx2(
        "10",
        &[
            "--steps",
            "3",
            "--guidance",
            "3",
            "--save-tensor",
            &discard(),
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("4k+1 frames"), "{stderr}");
    // An STG block past the last one, and the Wan-only step cache.
    let out = generate_ltx2(
        "9",
        &[
            "--steps",
            "3",
            "--guidance",
            "3",
            "--save-tensor",
            &discard(),
            "--stg-scale",
            "1",
            "--spatio-temporal-guidance-blocks",
            "0,5",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("block 5 does not exist"), "{stderr}");
    let out = generate_ltx2(
        "9",
        &[
            "--preset",
            "ltx2-distilled-8step",
            "--save-tensor",
            &discard(),
            "--cache",
            "teacache",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("step caching is implemented for Wan only"),
        "{stderr}"
    );
}

#[test]
fn the_ltx2_distilled_preset_runs_the_published_sigmas() {
    let tmp = tempfile::tempdir().unwrap();
    let tensor = tmp.path().join("out.safetensors");
    let out = generate_ltx2(
        "9",
        &[
            "--preset",
            "ltx2-distilled-8step",
            "--save-tensor",
            tensor.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = candle_core::safetensors::load(&tensor, &candle_core::Device::Cpu).unwrap();
    let expected = candle_core::safetensors::load(
        fixtures().join("../tiny-ltx2/reference/t2v_distilled.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(rel_err(&got["video"], &expected["video"]) <= 1e-3);
}

/// `generate --model` of a bare LTX-2 checkpoint file says where it goes, in one line.
#[test]
fn generate_from_a_bare_ltx2_checkpoint_file_says_to_pass_its_folder() {
    let file = fixtures().join("../components/ltx2-single-file/ltx-2-tiny.safetensors");
    let out = Command::new(env!("CARGO_BIN_EXE_videosdgx"))
        .args(["generate", "--model", file.to_str().unwrap()])
        .args(["--prompt", "a cat", "--save-tensor", &discard()])
        .args(["--height", "32", "--width", "32", "--seed", "0"])
        .args(["--steps", "2", "--guidance", "3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("LTX-2 checkpoint file") && errors[0].contains("model_index.json"),
        "{stderr}"
    );
}

/// `generate --upsampler`: LTX-2's two-stage generation on tests/fixtures/tiny-ltx2 with the
/// latent upsampler of tests/fixtures/tiny-ltx2-upsampler (seeded noise: the parity with diffusers,
/// which needs the reference's noise, is in the engine's ltx2_parity two_stage tests).
#[test]
fn ltx2_two_stage_generation_makes_the_full_size_video_with_sound() {
    let dir = fixtures().join("../tiny-ltx2");
    let reference = |file: &str| dir.join("reference").join(file);
    let tmp = tempfile::tempdir().unwrap();
    let tensor = tmp.path().join("out.safetensors");
    let run_with = |width: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_videosdgx"))
            .args(["generate", "--model", dir.to_str().unwrap()])
            .arg("--upsampler")
            .arg(fixtures().join("../tiny-ltx2-upsampler"))
            .args([
                "--height", "64", "--width", width, "--frames", "5", "--seed", "3",
            ])
            .args(extra)
            .args(["--steps", "2", "--guidance", "3", "--json"])
            .arg("--prompt-embeds")
            .arg(reference("prompt_embeds.safetensors"))
            .arg("--negative-prompt-embeds")
            .arg(reference("negative_prompt_embeds.safetensors"))
            .arg("--save-tensor")
            .arg(&tensor)
            .output()
            .unwrap()
    };
    let run = |width: &str| run_with(width, &[]);
    let out = run("64");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = candle_core::safetensors::load(&tensor, &candle_core::Device::Cpu).unwrap();
    assert_eq!(got["video"].dims(), &[5, 64, 64, 3]);
    assert_eq!(got["audio"].dims(), &[1, 2, 1360]);
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (record["width"].clone(), record["height"].clone()),
        (64.into(), 64.into())
    );

    let out = run("96");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("multiples of 32"), "{stderr}");

    // A LoRA for the refinement alone is recorded apart from the generation's own.
    let lora = dir.join("lora/peft.safetensors");
    let refine = format!("{}:0.8", lora.display());
    let out = run_with("64", &["--refine-lora", &refine]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let params = &record["params"];
    assert_eq!(params["loras"], serde_json::Value::Null, "{record}");
    assert_eq!(params["refine_loras"][0]["strength"], 0.8, "{record}");
    assert_eq!(
        params["refine_loras"][0]["sha256"].as_str().map(str::len),
        Some(64),
        "{record}"
    );
}

#[test]
fn ltx2_with_a_lora_makes_the_reference_video_and_records_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let tensor = tmp.path().join("out.safetensors");
    let lora = fixtures().join("../tiny-ltx2/lora/peft.safetensors");
    let out = generate_ltx2(
        "9",
        &[
            "--steps",
            "3",
            "--guidance",
            "3",
            "--lora",
            &format!("{}:0.8", lora.display()),
            "--save-tensor",
            tensor.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = video(&tensor);
    let expected = candle_core::safetensors::load(
        fixtures().join("../tiny-ltx2/reference/t2v_cfg_lora.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let err = rel_err(&got, &expected["video"]);
    assert!(err <= 1e-3, "relative error {err:e}");
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let recorded = &record["params"]["loras"][0];
    assert_eq!(recorded["strength"], 0.8);
    assert_eq!(recorded["sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn an_output_that_is_not_a_regular_file_is_refused_before_anything_runs() {
    let out = generate("5", &["--save-tensor", "/dev/null"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--save-tensor: /dev/null exists and is not a regular file"),
        "{stderr}"
    );
    let null = std::fs::symlink_metadata("/dev/null").unwrap();
    assert!(!null.is_file(), "/dev/null is still a device");
}

#[test]
fn quantized_weights_generate_close_to_full_precision_and_the_record_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dense = tmp.path().join("dense.st");
    let mp4 = tmp.path().join("clip.mp4");
    let run = |saved: &Path, extra: &[&str]| {
        let mut args = vec!["--save-tensor", saved.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        let out = generate("5", &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let record = run(&dense, &[]);
    assert_eq!(record["params"]["quant"], serde_json::Value::Null);
    // 3 mantissa bits against 1: NVFP4 strays further.
    for (quant, bound) in [("fp8", 5e-2), ("nvfp4", 2.5e-1)] {
        let saved = tmp.path().join(format!("{quant}.st"));
        let record = run(&saved, &["--quant", quant, "--out", mp4.to_str().unwrap()]);
        assert_eq!(record["params"]["quant"], quant);
        let err = rel_err(&video(&saved), &video(&dense));
        eprintln!("{quant} against f32 weights: relative error {err:e}");
        assert!(
            err > 0.0 && err <= bound,
            "{quant} against f32 weights: relative error {err:e}"
        );
        let decoded = videosdgx_engine::video::read_mp4(&mp4).unwrap();
        assert_eq!(decoded.metadata["generate"]["quant"], quant);
    }
}

#[test]
fn flux2_images_take_loras_merged_or_at_run_time_and_record_them() {
    let tmp = tempfile::tempdir().unwrap();
    let cpu = candle_core::Device::Cpu;
    // A PEFT LoRA on the first double block's query projection (inner width 16).
    let lora = tmp.path().join("style.safetensors");
    let pair = HashMap::from([
        (
            "transformer.transformer_blocks.0.attn.to_q.lora_A.weight".to_string(),
            candle_core::Tensor::randn(0f32, 0.5, (4, 16), &cpu).unwrap(),
        ),
        (
            "transformer.transformer_blocks.0.attn.to_q.lora_B.weight".to_string(),
            candle_core::Tensor::randn(0f32, 0.5, (16, 4), &cpu).unwrap(),
        ),
    ]);
    candle_core::safetensors::save(&pair, &lora).unwrap();
    let run = |name: &str, extra: &[&str]| {
        let saved = tmp.path().join(format!("{name}.safetensors"));
        let mut args = vec!["--save-tensor", saved.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        let out = generate_image(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut tensors = candle_core::safetensors::load(&saved, &cpu).unwrap();
        (tensors.remove("image").unwrap(), record)
    };
    let spec = format!("{}:0.7", lora.display());
    let (plain, _) = run("plain", &[]);
    let (merged, record) = run("merged", &["--lora", &spec]);
    let (runtime, _) = run("runtime", &["--lora", &spec, "--lora-mode", "runtime"]);
    assert!(
        rel_err(&merged, &plain) > 1e-3,
        "the LoRA changes the image"
    );
    let err = rel_err(&runtime, &merged);
    assert!(err <= 1e-4, "run-time against merged: {err:e}");
    let applied = &record["params"]["loras"][0];
    assert_eq!(applied["strength"], 0.7);
    assert_eq!(applied["sha256"].as_str().map(str::len), Some(64));
}
