//! LoRA on the tiny Wan transformers: every file convention against diffusers (or, for what diffusers
//! does not read, the fixture script's PyTorch merge), merged and at run time, and the rules a user
//! relies on: strengths, switching, several at once, and errors that name what is wrong.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use videosdgx_engine::families::wan::transformer::WanTransformer3DModel;
use videosdgx_engine::loader::Checkpoint;
use videosdgx_engine::lora::{
    Adaptable, Lora, LoraError, LoraFile, LoraFormat, LoraMode, LoraSpec, Weight,
};
use videosdgx_engine::models::relative_error;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn t2v_dir() -> PathBuf {
    fixtures().join("tiny-wan-t2v/transformer")
}

fn load(dir: &Path) -> WanTransformer3DModel {
    WanTransformer3DModel::load(dir, &Device::Cpu, DType::F32).unwrap()
}

fn lora(path: &Path, strength: f64) -> Lora {
    Lora {
        file: Arc::new(LoraFile::open(path).unwrap()),
        strength,
    }
}

fn forward(model: &WanTransformer3DModel, inputs: &Path) -> Tensor {
    let t = candle_core::safetensors::load(inputs, &Device::Cpu).unwrap();
    model
        .forward(
            &t["hidden_states"],
            &t["timestep"],
            &t["encoder_hidden_states"],
            t.get("encoder_hidden_states_image"),
        )
        .unwrap()
}

fn t2v_inputs() -> PathBuf {
    fixtures().join("lora/inputs_t2v.safetensors")
}

fn reference(case: &str, key: &str) -> Tensor {
    let path = fixtures().join(format!("lora/reference/{case}.safetensors"));
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()[key].clone()
}

/// Every value, for comparisons that must be exact.
fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    relative_error(a, b).unwrap()
}

/// Writes a LoRA file of random tensors with the given keys and shapes.
fn write_lora(dir: &Path, name: &str, keys: &[(&str, &[usize])]) -> PathBuf {
    let tensors: HashMap<String, Tensor> = keys
        .iter()
        .map(|(key, shape)| {
            let t = Tensor::randn(0f32, 0.1, *shape, &Device::Cpu).unwrap();
            (key.to_string(), t)
        })
        .collect();
    let path = dir.join(name);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    model: String,
    inputs: String,
    loras: Vec<CaseLora>,
    reference: String,
}

#[derive(serde::Deserialize)]
struct CaseLora {
    file: String,
    strength: f64,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("lora/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn every_format_matches_the_reference_merged_and_at_run_time() {
    for case in cases() {
        let mut model = load(&fixtures().join(&case.model));
        let inputs = fixtures().join(&case.inputs);
        let base = forward(&model, &inputs);
        let loras: Vec<Lora> = case
            .loras
            .iter()
            .map(|l| lora(&fixtures().join(&l.file), l.strength))
            .collect();
        let refs =
            candle_core::safetensors::load(fixtures().join(&case.reference), &Device::Cpu).unwrap();

        model.set_loras(&loras, LoraMode::Merge).unwrap();
        let merged = forward(&model, &inputs);
        let err = rel(&merged, &refs["fused"]);
        assert!(err <= 1e-4, "{} merged: relative error {err:e}", case.name);
        assert!(
            rel(&base, &refs["fused"]) > 1e-2,
            "{}: the reference must differ from the plain model",
            case.name
        );

        // The same model switched to side paths: the merge is undone from the checkpoint.
        model.set_loras(&loras, LoraMode::Runtime).unwrap();
        let runtime = forward(&model, &inputs);
        let err = rel(&runtime, &refs["unfused"]);
        assert!(
            err <= 1e-4,
            "{} at run time: relative error {err:e}",
            case.name
        );
    }
}

#[test]
fn formats_are_detected_from_the_keys() {
    for (file, format) in [
        ("peft.safetensors", LoraFormat::Diffusers),
        ("peft_bare.safetensors", LoraFormat::Diffusers),
        ("kohya.safetensors", LoraFormat::Kohya),
        ("comfy.safetensors", LoraFormat::ComfyUi),
        ("comfy_diff.safetensors", LoraFormat::ComfyUi),
    ] {
        let file = LoraFile::open(&fixtures().join("lora").join(file)).unwrap();
        assert_eq!(file.format(), format, "{}", file.path().display());
    }
}

#[test]
fn switching_loras_equals_applying_the_new_ones_alone() {
    let mut model = load(&t2v_dir());
    let base = forward(&model, &t2v_inputs());
    let kohya = lora(&fixtures().join("lora/kohya.safetensors"), 1.0);
    let comfy = lora(&fixtures().join("lora/comfy.safetensors"), 0.7);

    model.set_loras(&[kohya], LoraMode::Merge).unwrap();
    model
        .set_loras(std::slice::from_ref(&comfy), LoraMode::Merge)
        .unwrap();
    let switched = forward(&model, &t2v_inputs());
    let mut fresh = load(&t2v_dir());
    fresh.set_loras(&[comfy], LoraMode::Merge).unwrap();
    let alone = forward(&fresh, &t2v_inputs());
    assert_eq!(
        values(&switched),
        values(&alone),
        "switching must rebuild from the originals"
    );

    // No LoRA at all gives the plain model back, bit for bit.
    model.set_loras(&[], LoraMode::Merge).unwrap();
    let restored = forward(&model, &t2v_inputs());
    assert_eq!(values(&restored), values(&base));
}

#[test]
fn a_model_built_in_memory_restores_its_own_originals() {
    let vb = Checkpoint::open(&t2v_dir())
        .unwrap()
        .into_var_builder(DType::F32, &Device::Cpu);
    let config =
        serde_json::from_str(&std::fs::read_to_string(t2v_dir().join("config.json")).unwrap())
            .unwrap();
    let mut model = WanTransformer3DModel::new(&config, vb).unwrap();
    let base = forward(&model, &t2v_inputs());
    let comfy = lora(&fixtures().join("lora/comfy.safetensors"), 0.7);
    model
        .set_loras(
            &[lora(&fixtures().join("lora/kohya.safetensors"), 1.0)],
            LoraMode::Merge,
        )
        .unwrap();
    model.set_loras(&[comfy], LoraMode::Merge).unwrap();
    let err = rel(
        &forward(&model, &t2v_inputs()),
        &reference("comfy", "fused"),
    );
    assert!(err <= 1e-4, "relative error {err:e}");
    model.set_loras(&[], LoraMode::Runtime).unwrap();
    assert_eq!(values(&forward(&model, &t2v_inputs())), values(&base));
}

#[test]
fn strength_zero_changes_nothing() {
    let mut model = load(&t2v_dir());
    let base = forward(&model, &t2v_inputs());
    for mode in [LoraMode::Merge, LoraMode::Runtime] {
        model
            .set_loras(
                &[lora(&fixtures().join("lora/peft.safetensors"), 0.0)],
                mode,
            )
            .unwrap();
        assert_eq!(
            values(&forward(&model, &t2v_inputs())),
            values(&base),
            "{mode:?}"
        );
    }
}

#[test]
fn unmatched_keys_are_reported_by_name_and_nothing_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_lora(
        tmp.path(),
        "partial.safetensors",
        &[
            (
                "diffusion_model.blocks.0.self_attn.q.lora_down.weight",
                &[2, 16],
            ),
            (
                "diffusion_model.blocks.0.self_attn.q.lora_up.weight",
                &[16, 2],
            ),
            (
                "diffusion_model.blocks.7.self_attn.q.lora_down.weight",
                &[2, 16],
            ),
            (
                "diffusion_model.blocks.7.self_attn.q.lora_up.weight",
                &[16, 2],
            ),
            ("diffusion_model.blocks.0.self_attn.x.diff_b", &[16]),
            ("diffusion_model.blocks.0.self_attn.q.dora_scale", &[16, 1]),
        ],
    );
    let mut model = load(&t2v_dir());
    let base = forward(&model, &t2v_inputs());
    let err = model
        .set_loras(&[lora(&path, 1.0)], LoraMode::Merge)
        .unwrap_err();
    match &err {
        LoraError::Unmatched { keys, .. } => assert_eq!(
            keys,
            &[
                "diffusion_model.blocks.0.self_attn.q.dora_scale",
                "diffusion_model.blocks.0.self_attn.x.diff_b",
                "diffusion_model.blocks.7.self_attn.q.lora_down.weight",
                "diffusion_model.blocks.7.self_attn.q.lora_up.weight",
            ]
        ),
        other => panic!("expected Unmatched, got {other}"),
    }
    let message = err.to_string();
    assert!(message.contains("partial.safetensors") && message.contains("WanTransformer3DModel"));
    assert_eq!(values(&forward(&model, &t2v_inputs())), values(&base));
}

#[test]
fn a_lora_for_another_architecture_is_refused_naming_what_it_looks_like() {
    let tmp = tempfile::tempdir().unwrap();
    let flux = write_lora(
        tmp.path(),
        "flux.safetensors",
        &[
            (
                "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight",
                &[4, 32],
            ),
            (
                "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight",
                &[32, 4],
            ),
            (
                "transformer.transformer_blocks.0.attn.add_q_proj.lora_A.weight",
                &[4, 32],
            ),
            (
                "transformer.transformer_blocks.0.attn.add_q_proj.lora_B.weight",
                &[32, 4],
            ),
        ],
    );
    let sdxl = write_lora(
        tmp.path(),
        "sdxl.safetensors",
        &[
            (
                "lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight",
                &[4, 32],
            ),
            (
                "lora_unet_down_blocks_1_attentions_0_proj_in.lora_up.weight",
                &[32, 4],
            ),
            ("lora_unet_down_blocks_1_attentions_0_proj_in.alpha", &[]),
            (
                "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                &[4, 32],
            ),
            (
                "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
                &[32, 4],
            ),
        ],
    );
    let mut model = load(&t2v_dir());
    for (path, looks) in [(flux, "FLUX.1"), (sdxl, "Stable Diffusion")] {
        let err = model
            .set_loras(&[lora(&path, 1.0)], LoraMode::Merge)
            .unwrap_err();
        assert!(matches!(err, LoraError::Foreign { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains(looks) && message.contains("not a LoRA for WanTransformer3DModel"),
            "{message}"
        );
    }
}

#[test]
fn a_shape_mismatch_names_the_key_and_the_weight() {
    let tmp = tempfile::tempdir().unwrap();
    // A LoRA made for a wider model (a 14B LoRA on a 1.3B model, in small).
    let path = write_lora(
        tmp.path(),
        "wide.safetensors",
        &[
            ("lora_unet_blocks_0_self_attn_q.lora_down.weight", &[4, 24]),
            ("lora_unet_blocks_0_self_attn_q.lora_up.weight", &[24, 4]),
        ],
    );
    let err = load(&t2v_dir())
        .set_loras(&[lora(&path, 1.0)], LoraMode::Merge)
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("lora_unet_blocks_0_self_attn_q.lora_down.weight")
            && message.contains("blocks.0.attn1.to_q.weight")
            && message.contains("[16, 16]"),
        "{message}"
    );
}

#[test]
fn a_half_pair_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_lora(
        tmp.path(),
        "half.safetensors",
        &[("blocks.0.attn1.to_q.lora_A.weight", &[4, 16])],
    );
    let err = load(&t2v_dir())
        .set_loras(&[lora(&path, 1.0)], LoraMode::Merge)
        .unwrap_err();
    assert!(
        matches!(&err, LoraError::IncompletePair { key, .. } if key == "blocks.0.attn1.to_q.lora_A.weight"),
        "{err}"
    );
}

#[test]
fn a_malformed_file_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("broken.safetensors");
    std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
    let err = LoraFile::open(&path).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("broken.safetensors") && message.contains("malformed"),
        "{message}"
    );
}

/// The names LoRAs are matched against are the checkpoint's own: every tensor is reachable,
/// once, with its shape, for each layout (text-to-video, the I2V image branch, FLF2V's position
/// embedding), and the original Wan names given as aliases are distinct.
#[test]
fn every_checkpoint_tensor_is_an_adaptable_weight_under_its_own_name() {
    for dir in [
        t2v_dir(),
        fixtures().join("components/wan_i2v/model"),
        fixtures().join("components/wan_flf2v/model"),
    ] {
        let checkpoint = Checkpoint::open(&dir).unwrap();
        let expected: HashMap<String, Vec<usize>> = checkpoint
            .tensors()
            .map(|(name, entry)| (name.to_string(), entry.shape.clone()))
            .collect();
        let mut model = load(&dir);
        let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
        let mut add = |name: String, shape: &[usize]| {
            assert!(
                seen.insert(name.clone(), shape.to_vec()).is_none(),
                "{name} twice"
            );
        };
        model
            .visit_weights(&mut |w| {
                match w {
                    Weight::Linear(linear) => {
                        add(format!("{}.weight", linear.name()), linear.dims());
                        if let Some(bias) = linear.bias() {
                            add(format!("{}.bias", linear.name()), bias.dims());
                        }
                    }
                    Weight::Tensor { name, tensor } => add(name, tensor.dims()),
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, expected, "{}", dir.display());

        let mut aliases: Vec<String> = seen.keys().flat_map(|n| model.aliases(n)).collect();
        let count = aliases.len();
        aliases.sort();
        aliases.dedup();
        assert_eq!(
            aliases.len(),
            count,
            "{}: two weights share an alias",
            dir.display()
        );
        assert!(aliases.iter().all(|a| !seen.contains_key(a)));
    }
}

#[test]
fn specs_read_file_and_strengths() {
    let spec: LoraSpec = "style.safetensors".parse().unwrap();
    assert_eq!((spec.strength, spec.strength_2), (1.0, None));
    let spec: LoraSpec = "/loras/a:b/style.safetensors:0.75".parse().unwrap();
    assert_eq!(spec.path, Path::new("/loras/a:b/style.safetensors"));
    assert_eq!((spec.strength, spec.strength_2), (0.75, None));
    let spec: LoraSpec = "distill.safetensors:1,0.25".parse().unwrap();
    assert_eq!((spec.strength, spec.strength_2), (1.0, Some(0.25)));
    let spec: LoraSpec = "C:/loras/x.safetensors".parse().unwrap();
    assert_eq!(spec.path, Path::new("C:/loras/x.safetensors"));
    assert!(":0.5".parse::<LoraSpec>().is_err());
}
