//! The aarch64 build of `videosdgx` (scripts/cross-aarch64.sh) run under qemu-user beside the
//! native x86-64 build on the tiny fixtures: `--version`, `model forward` of the tiny Wan
//! transformer and a tiny pipeline `generate` from prompt text. Both builds must agree tensor by
//! tensor and each must match the committed PyTorch references (TOLERANCES.md).
//!
//! Ignored in a plain `cargo test`: it needs the cross build. tests/run.sh runs
//! `scripts/cross-aarch64.sh cargo test -p videosdgx --test aarch64_qemu -- --ignored`, which
//! builds the aarch64 binary and names it in `VIDEOSDGX_AARCH64_BIN`.

use candle_core::{Device, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// aarch64 against x86-64: NEON and AVX kernels may sum in a different order, so not bit-exact
/// in general; far tighter than the reference tolerances.
const CROSS_ARCH: f64 = 1e-5;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The aarch64 binary under the runner cargo uses for the target (the script sets both).
fn aarch64() -> Command {
    const HOW: &str = "run it through scripts/cross-aarch64.sh, which builds the aarch64 binary";
    let bin = std::env::var_os("VIDEOSDGX_AARCH64_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("VIDEOSDGX_AARCH64_BIN is not set: {HOW}"));
    assert!(
        bin.is_file(),
        "VIDEOSDGX_AARCH64_BIN={} does not exist: {HOW}",
        bin.display()
    );
    let runner =
        std::env::var("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER").unwrap_or_else(|_| {
            panic!("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER is not set: {HOW}")
        });
    let mut runner = runner.split_whitespace();
    let mut command = Command::new(runner.next().expect("an empty runner"));
    command.args(runner).arg(bin);
    command
}

fn x86_64() -> Command {
    Command::new(env!("CARGO_BIN_EXE_videosdgx"))
}

/// Runs `args` with `--out`-style `out_flag` pointing into `dir`, on both builds; returns the
/// outputs (aarch64 first) and the files written, failing with the stderr of a build that failed.
fn both(args: &[&OsStr], out_flag: Option<&str>, dir: &Path) -> [(Output, PathBuf); 2] {
    [("aarch64", aarch64()), ("x86-64", x86_64())].map(|(arch, mut command)| {
        let file = dir.join(format!("{arch}.safetensors"));
        command.args(args);
        if let Some(flag) = out_flag {
            command.arg(flag).arg(&file);
        }
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{arch}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (out, file)
    })
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// The largest elementwise difference, to report how far from bit-exact the builds are.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.flatten_all().unwrap(), b.flatten_all().unwrap());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Every tensor of the two builds' outputs agrees within [`CROSS_ARCH`], and the `checked` ones
/// with `reference` within `tolerance`.
fn compare(what: &str, arm: &Path, x86: &Path, reference: &Path, checked: &[&str], tolerance: f64) {
    let (arm, x86, reference) = (load(arm), load(x86), load(reference));
    let keys: BTreeSet<&String> = x86.keys().collect();
    assert_eq!(
        arm.keys().collect::<BTreeSet<_>>(),
        keys,
        "{what}: the builds wrote different tensors"
    );
    for key in keys {
        let (a, x) = (&arm[key], &x86[key]);
        assert_eq!(a.dims(), x.dims(), "{what}/{key}: shapes differ");
        let err = videosdgx_engine::models::relative_error(a, x).unwrap();
        let max = max_abs_diff(a, x);
        eprintln!("{what}/{key}: aarch64 vs x86-64 relative error {err:e}, max |diff| {max:e}");
        assert!(err <= CROSS_ARCH, "{what}/{key}: aarch64 vs x86-64 {err:e}");
        if checked.contains(&key.as_str()) {
            let expected = &reference[key];
            for (arch, got) in [("aarch64", a), ("x86-64", x)] {
                let err = videosdgx_engine::models::relative_error(got, expected).unwrap();
                eprintln!("{what}/{key}: {arch} vs reference {err:e}");
                assert!(
                    err <= tolerance,
                    "{what}/{key}: {arch} vs reference {err:e}"
                );
            }
        }
    }
    for key in checked {
        assert!(x86.contains_key(*key), "{what}: no `{key}` in the output");
    }
}

#[test]
#[ignore = "needs the aarch64 cross build; tests/run.sh builds it (scripts/cross-aarch64.sh) and runs this"]
fn version_is_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let [(arm, _), (x86, _)] = both(&["--version".as_ref()], None, tmp.path());
    let (arm, x86) = (
        String::from_utf8_lossy(&arm.stdout),
        String::from_utf8_lossy(&x86.stdout),
    );
    assert_eq!(arm, x86);
    assert!(x86.starts_with("videosdgx "), "{x86}");
}

#[test]
#[ignore = "needs the aarch64 cross build; tests/run.sh builds it (scripts/cross-aarch64.sh) and runs this"]
fn model_forward_of_the_tiny_wan_transformer_agrees() {
    let fixture = fixtures().join("components/wan_t2v");
    let (model, inputs) = (fixture.join("model"), fixture.join("inputs.safetensors"));
    let tmp = tempfile::tempdir().unwrap();
    let args = [
        "model".as_ref(),
        "forward".as_ref(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--inputs".as_ref(),
        inputs.as_os_str(),
    ];
    let [(_, arm), (_, x86)] = both(&args, Some("--out"), tmp.path());
    // components/TOLERANCES.md: the transformer within 1e-4 of diffusers in f32.
    let reference = fixture.join("outputs.safetensors");
    compare(
        "model forward wan_t2v",
        &arm,
        &x86,
        &reference,
        &["sample"],
        1e-4,
    );
}

#[test]
#[ignore = "needs the aarch64 cross build; tests/run.sh builds it (scripts/cross-aarch64.sh) and runs this"]
fn generate_on_the_tiny_pipeline_agrees() {
    // The whole pipeline from prompt text (tokenizer, UMT5, 4 UniPC steps with guidance, VAE)
    // on diffusers' fixed latents: reference/video_from_prompt, as host/engine's parity test.
    let pipeline = fixtures().join("tiny-wan-t2v");
    let reference = pipeline.join("reference");
    let latents = reference.join("latents.safetensors");
    let tmp = tempfile::tempdir().unwrap();
    let mut args: Vec<&OsStr> = ["generate", "--device", "cpu", "--model"]
        .map(OsStr::new)
        .to_vec();
    args.push(pipeline.as_os_str());
    args.extend(
        [
            "--prompt",
            "a cat walks  on the grass",
            "--negative-prompt",
            "blurry, low quality",
            "--height",
            "32",
            "--width",
            "32",
            "--frames",
            "5",
            "--steps",
            "4",
            "--guidance",
            "5.0",
            "--seed",
            "0",
            "--latents",
        ]
        .map(OsStr::new),
    );
    args.push(latents.as_os_str());
    let [(_, arm), (_, x86)] = both(&args, Some("--save-tensor"), tmp.path());
    // TOLERANCES.md: the whole pipeline within 1e-3 of diffusers in f32.
    let reference = reference.join("video_from_prompt.safetensors");
    compare(
        "generate tiny-wan-t2v",
        &arm,
        &x86,
        &reference,
        &["video"],
        1e-3,
    );
}
