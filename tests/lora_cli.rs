//! `--lora` on the command line, as the hidden checks use it: `model forward` merges (or, with
//! `--lora-mode runtime`, adds side paths) before the forward and matches diffusers; `generate`
//! applies a strength per expert of a Wan 2.2 pipeline and records each LoRA with its SHA-256.
//! Wrong input fails with one readable line.

use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use videosdgx_engine::lora::LoraFile;
use videosdgx_engine::models::relative_error;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn fixture(rel: &str) -> String {
    fixtures().join(rel).to_str().unwrap().to_string()
}

fn videosdgx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_videosdgx"))
        .args(args)
        .output()
        .unwrap()
}

fn tensor(path: &Path, key: &str) -> Tensor {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()[key].clone()
}

fn succeeded(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The one line a failed command prints.
fn failure(out: &Output) -> String {
    assert!(!out.status.success(), "the command should have failed");
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

fn forward(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "model".to_string(),
        "forward".into(),
        "--model".into(),
        fixture("tiny-wan-t2v/transformer"),
        "--inputs".into(),
        fixture("lora/inputs_t2v.safetensors"),
        "--out".into(),
        out.to_str().unwrap().into(),
        "--json".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    videosdgx(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn model_forward_with_two_loras_matches_diffusers_merged_and_at_run_time() {
    let tmp = tempfile::tempdir().unwrap();
    let kohya = format!("{}:0.5", fixture("lora/kohya.safetensors"));
    let comfy = format!("{}:-0.6", fixture("lora/comfy.safetensors"));
    let reference = fixtures().join("lora/reference/two_loras.safetensors");

    let merged = tmp.path().join("merged.safetensors");
    let record = succeeded(&forward(&merged, &["--lora", &kohya, "--lora", &comfy]));
    let err = relative_error(&tensor(&merged, "sample"), &tensor(&reference, "fused")).unwrap();
    assert!(err <= 1e-4, "merged: relative error {err:e}");

    let loras = record["loras"].as_array().unwrap();
    assert_eq!(loras.len(), 2);
    assert_eq!(loras[0]["strength"], 0.5);
    assert_eq!(loras[0]["format"], "kohya");
    assert_eq!(loras[1]["strength"], -0.6);
    assert_eq!(loras[1]["format"], "comfy_ui");
    let sha = LoraFile::open(&fixtures().join("lora/kohya.safetensors"))
        .unwrap()
        .sha256()
        .unwrap()
        .to_string();
    assert_eq!(loras[0]["sha256"], sha.as_str());

    let runtime = tmp.path().join("runtime.safetensors");
    succeeded(&forward(
        &runtime,
        &["--lora", &kohya, "--lora", &comfy, "--lora-mode", "runtime"],
    ));
    let runtime = tensor(&runtime, "sample");
    let err = relative_error(&runtime, &tensor(&reference, "unfused")).unwrap();
    assert!(err <= 1e-4, "runtime: relative error {err:e}");
    let err = relative_error(&runtime, &tensor(&merged, "sample")).unwrap();
    assert!(
        err <= 1e-4,
        "runtime against merged: relative error {err:e}"
    );
}

#[test]
fn model_forward_of_flux2_with_a_peft_lora_matches_diffusers_merged_and_at_run_time() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixtures().join("components/flux2-klein-tiny");
    let reference = dir.join("lora/reference.safetensors");
    let (model, inputs) = (
        fixture("components/flux2-klein-tiny/model"),
        fixture("components/flux2-klein-tiny/inputs.safetensors"),
    );
    // Saved by Flux2KleinPipeline.save_lora_weights (`transformer.` keys), and the same bare.
    for file in ["peft", "peft_bare"] {
        let lora = format!(
            "{}:0.8",
            dir.join(format!("lora/{file}.safetensors")).display()
        );
        for (mode, key) in [("merge", "fused"), ("runtime", "unfused")] {
            let out = tmp.path().join(format!("{file}-{mode}.safetensors"));
            let args = [
                "model",
                "forward",
                "--model",
                &model,
                "--inputs",
                &inputs,
                "--out",
                out.to_str().unwrap(),
                "--json",
                "--lora",
                &lora,
                "--lora-mode",
                mode,
            ];
            let record = succeeded(&videosdgx(&args));
            assert_eq!(record["loras"][0]["format"], "diffusers", "{file}");
            let err = relative_error(&tensor(&out, "sample"), &tensor(&reference, key)).unwrap();
            assert!(err <= 1e-4, "{file} {mode}: relative error {err:e}");
        }
    }
}

#[test]
fn model_forward_of_ltx2_with_a_peft_lora_matches_diffusers_merged_and_at_run_time() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixtures().join("components/ltx2-transformer-interleaved");
    let reference = dir.join("lora/reference.safetensors");
    let lora = format!("{}:0.8", dir.join("lora/peft.safetensors").display());
    for (mode, prefix) in [("merge", "fused"), ("runtime", "unfused")] {
        let out = tmp.path().join(format!("{mode}.safetensors"));
        let args = [
            "model",
            "forward",
            "--model",
            &fixture("components/ltx2-transformer-interleaved/model"),
            "--inputs",
            &fixture("components/ltx2-transformer-interleaved/inputs.safetensors"),
            "--out",
            out.to_str().unwrap(),
            "--json",
            "--lora",
            &lora,
            "--lora-mode",
            mode,
        ];
        let record = succeeded(&videosdgx(&args));
        assert_eq!(record["loras"][0]["format"], "diffusers");
        for key in ["sample", "audio_sample"] {
            let expected = tensor(&reference, &format!("{prefix}_{key}"));
            let err = relative_error(&tensor(&out, key), &expected).unwrap();
            assert!(err <= 1e-4, "{mode} {key}: relative error {err:e}");
        }
    }
}

#[test]
fn model_forward_strength_defaults_to_one() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");
    let record = succeeded(&forward(
        &out,
        &["--lora", &fixture("lora/kohya.safetensors")],
    ));
    assert_eq!(record["loras"][0]["strength"], 1.0);
    let reference = fixtures().join("lora/reference/kohya.safetensors");
    let err = relative_error(&tensor(&out, "sample"), &tensor(&reference, "fused")).unwrap();
    assert!(err <= 1e-4, "relative error {err:e}");
}

#[test]
fn model_forward_refuses_what_a_lora_cannot_do() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");

    // A text encoder takes no LoRA.
    let result = videosdgx(&[
        "model",
        "forward",
        "--model",
        &fixture("components/umt5/model"),
        "--inputs",
        &fixture("components/umt5/inputs.safetensors"),
        "--out",
        out.to_str().unwrap(),
        "--lora",
        &fixture("lora/kohya.safetensors"),
    ]);
    let line = failure(&result);
    assert!(line.contains("UMT5EncoderModel takes no LoRA"), "{line}");

    // One component, one strength.
    let line = failure(&forward(
        &out,
        &[
            "--lora",
            &format!("{}:1,0.5", fixture("lora/kohya.safetensors")),
        ],
    ));
    assert!(
        line.contains("HIGH,LOW strengths are for two-expert pipelines"),
        "{line}"
    );

    // A LoRA made for another model of the family (wider, with an image branch).
    let line = failure(&forward(
        &out,
        &["--lora", &fixture("lora/comfy_i2v.safetensors")],
    ));
    assert!(
        line.contains("`diffusion_model.blocks.0.self_attn.k.lora_A.weight` has shape [4, 32]")
            && line.contains("weight `blocks.0.attn1.to_k.weight` of shape [16, 16]"),
        "{line}"
    );
    assert!(
        !out.exists(),
        "no output is written when the LoRA is refused"
    );
}

#[derive(serde::Deserialize)]
struct TwoExperts {
    pipeline: String,
    lora: String,
    high: f64,
    low: f64,
    latents: String,
    prompt_embeds: String,
    negative_prompt_embeds: String,
    height: usize,
    width: usize,
    frames: usize,
    steps: usize,
    guidance: f64,
    guidance_2: f64,
    video: String,
}

#[test]
fn generate_applies_a_strength_per_expert_and_records_the_loras() {
    let run: TwoExperts = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("lora/two_experts.json")).unwrap(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let saved = tmp.path().join("video.safetensors");
    let mp4 = tmp.path().join("video.mp4");
    let lora = format!("{}:{},{}", fixture(&run.lora), run.high, run.low);
    let number = |n: f64| n.to_string();
    let out = videosdgx(&[
        "generate",
        "--model",
        &fixture(&run.pipeline),
        "--latents",
        &fixture(&run.latents),
        "--prompt-embeds",
        &fixture(&run.prompt_embeds),
        "--negative-prompt-embeds",
        &fixture(&run.negative_prompt_embeds),
        "--height",
        &run.height.to_string(),
        "--width",
        &run.width.to_string(),
        "--frames",
        &run.frames.to_string(),
        "--steps",
        &run.steps.to_string(),
        "--guidance",
        &number(run.guidance),
        "--guidance-2",
        &number(run.guidance_2),
        "--seed",
        "0",
        "--lora",
        &lora,
        "--save-tensor",
        saved.to_str().unwrap(),
        "--out",
        mp4.to_str().unwrap(),
        "--json",
    ]);
    let record = succeeded(&out);
    let err = relative_error(
        &tensor(&saved, "video"),
        &tensor(&fixtures().join(&run.video), "video"),
    )
    .unwrap();
    assert!(err <= 1e-3, "relative error {err:e}");

    let lora = &record["params"]["loras"][0];
    assert_eq!(lora["strength"], run.high);
    assert_eq!(lora["strength_2"], run.low);
    let sha = LoraFile::open(&fixtures().join(&run.lora))
        .unwrap()
        .sha256()
        .unwrap()
        .to_string();
    assert_eq!(lora["sha256"], sha.as_str());
    // The MP4 carries the same record.
    let decoded = videosdgx_engine::video::read_mp4(&mp4).unwrap();
    assert_eq!(
        decoded.metadata["generate"]["loras"][0]["sha256"],
        sha.as_str()
    );
}

#[test]
fn generate_refuses_two_strengths_on_a_single_transformer() {
    let tmp = tempfile::tempdir().unwrap();
    let out = videosdgx(&[
        "generate",
        "--model",
        &fixture("tiny-wan-t2v"),
        "--prompt-embeds",
        &fixture("tiny-wan-t2v/reference/prompt_embeds.safetensors"),
        "--height",
        "32",
        "--width",
        "32",
        "--frames",
        "5",
        "--steps",
        "1",
        "--guidance",
        "1",
        "--seed",
        "0",
        "--lora",
        &format!("{}:1,0.5", fixture("lora/kohya.safetensors")),
        "--save-tensor",
        tmp.path().join("v.safetensors").to_str().unwrap(),
    ]);
    let line = failure(&out);
    assert!(
        line.contains("gives two strengths (HIGH,LOW), but this pipeline has one transformer"),
        "{line}"
    );
}
