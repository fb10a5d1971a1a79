//! Broken checkpoints give errors that name the file and tensor at fault, never a panic; and
//! `verify` reports problems tensor by tensor. Each test copies a fixture into a temp dir and
//! damages it the way a user's download can be damaged.

use candle_core::{DType, Device};
use std::path::{Path, PathBuf};
use videosdgx_engine::families::wan::transformer::WanTransformer3DModel;
use videosdgx_engine::loader::{self, LoadError};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/components")
        .join(name)
}

/// Copies a fixture's component folder into a fresh temp dir and returns (guard, folder).
fn copy_component(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(fixture(name).join("model")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    (tmp, dst)
}

fn load_error(dir: &Path) -> String {
    match WanTransformer3DModel::load(dir, &Device::Cpu, DType::F32) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(err) => format!("{err:#}"),
    }
}

#[test]
fn truncated_safetensors_header_names_the_file() {
    let (_tmp, dir) = copy_component("wan_i2v");
    let file = dir.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..100]).unwrap();
    let msg = load_error(&dir);
    assert!(msg.contains("diffusion_pytorch_model.safetensors"), "{msg}");
    assert!(msg.contains("safetensors header"), "{msg}");
}

#[test]
fn truncated_tensor_data_names_the_file() {
    let (_tmp, dir) = copy_component("wan_i2v");
    let file = dir.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 64]).unwrap();
    let msg = load_error(&dir);
    assert!(msg.contains("diffusion_pytorch_model.safetensors"), "{msg}");
    assert!(msg.contains("not fully covered"), "{msg}");
}

#[test]
fn malformed_header_json_names_the_file() {
    let (_tmp, dir) = copy_component("wan_i2v");
    let file = dir.join("diffusion_pytorch_model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[8] = b'#';
    std::fs::write(&file, &bytes).unwrap();
    let msg = load_error(&dir);
    assert!(msg.contains("diffusion_pytorch_model.safetensors"), "{msg}");
    assert!(msg.contains("invalid JSON in header"), "{msg}");
}

#[test]
fn shape_that_does_not_match_the_config_names_tensor_and_file() {
    let (_tmp, dir) = copy_component("wan_i2v");
    let config_path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["ffn_dim"] = serde_json::json!(48);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let msg = load_error(&dir);
    assert!(msg.contains("`blocks.0.ffn.net.0.proj.weight`"), "{msg}");
    assert!(msg.contains("diffusion_pytorch_model.safetensors"), "{msg}");
    assert!(
        msg.contains("[48, 32]") && msg.contains("[40, 32]"),
        "{msg}"
    );
}

#[test]
fn missing_shard_names_the_shard_and_a_tensor_it_holds() {
    let (_tmp, dir) = copy_component("wan_t2v");
    let shard = dir.join("diffusion_pytorch_model-00002-of-00004.safetensors");
    std::fs::remove_file(&shard).unwrap();
    let msg = load_error(&dir);
    assert!(
        msg.contains("diffusion_pytorch_model-00002-of-00004.safetensors"),
        "{msg}"
    );
    assert!(
        msg.contains("diffusion_pytorch_model.safetensors.index.json"),
        "{msg}"
    );
    assert!(msg.contains("places tensor `"), "{msg}");
}

#[test]
fn missing_tensor_is_named() {
    let (_tmp, dir) = copy_component("wan_t2v");
    let index_path = dir.join("diffusion_pytorch_model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    index["weight_map"]
        .as_object_mut()
        .unwrap()
        .remove("proj_out.bias");
    std::fs::write(&index_path, index.to_string()).unwrap();
    let msg = load_error(&dir);
    assert!(msg.contains("`proj_out.bias` is missing"), "{msg}");
}

#[test]
fn unknown_component_class_names_class_and_config() {
    let (_tmp, dir) = copy_component("wan_t2v");
    let config_path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["_class_name"] = serde_json::json!("HunyuanVideoTransformer3DModel");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = loader::component_class(&dir).unwrap_err();
    assert!(matches!(err, LoadError::UnknownClass { .. }));
    let msg = err.to_string();
    assert!(msg.contains("`HunyuanVideoTransformer3DModel`"), "{msg}");
    assert!(msg.contains("config.json"), "{msg}");
}

/// Found by the `model_config` fuzz target: zero heads divided by zero in the attention layers.
#[test]
fn config_with_zero_or_overflowing_heads_is_an_error() {
    let (_tmp, dir) = copy_component("wan_i2v");
    let config = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    for (heads, head_dim) in [(0, 128), (0, 0), (usize::MAX, 2)] {
        json["num_attention_heads"] = heads.into();
        json["attention_head_dim"] = head_dim.into();
        std::fs::write(&config, json.to_string()).unwrap();
        let msg = load_error(&dir);
        assert!(msg.contains("num_attention_heads"), "{msg}");
    }
}

#[test]
fn missing_config_names_the_file() {
    let (_tmp, dir) = copy_component("wan_t2v");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let msg = load_error(&dir);
    assert!(msg.contains("config.json is missing"), "{msg}");
}

#[test]
fn verify_accepts_an_intact_component() {
    for name in [
        "wan_t2v",
        "wan_i2v",
        "wan_flf2v",
        "wan22_ti2v",
        "umt5",
        "umt5_relu",
        "clip_vision",
    ] {
        let report = loader::verify(&fixture(name).join("model")).unwrap();
        assert!(report.is_ok(), "{name}: {report:#?}");
        assert!(report.components[0].tensors > 0);
    }
}

#[test]
fn verify_reports_shape_mismatches_and_unexpected_tensors() {
    let (_tmp, dir) = copy_component("wan_i2v");
    let config_path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["ffn_dim"] = serde_json::json!(48);
    config["num_layers"] = serde_json::json!(1);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let report = loader::verify(&dir).unwrap();
    let component = &report.components[0];
    assert!(!report.is_ok());
    let mismatched: Vec<&str> = component
        .shape_mismatches
        .iter()
        .map(|m| m.tensor.as_str())
        .collect();
    assert!(
        mismatched.contains(&"blocks.0.ffn.net.0.proj.weight"),
        "{mismatched:?}"
    );
    assert!(
        component
            .unexpected
            .iter()
            .any(|t| t.starts_with("blocks.1.")),
        "{component:#?}"
    );
    assert!(component.missing.is_empty());
}

#[test]
fn verify_of_a_pipeline_checks_every_component() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for (folder, fixture_name) in [
        ("transformer", "wan_t2v"),
        ("text_encoder", "umt5"),
        ("image_encoder", "clip_vision"),
    ] {
        std::fs::create_dir_all(root.join(folder)).unwrap();
        for entry in std::fs::read_dir(fixture(fixture_name).join("model")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), root.join(folder).join(entry.file_name())).unwrap();
        }
    }
    std::fs::create_dir_all(root.join("tokenizer")).unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(
            fixture("umt5").join("tokenizer").join(file),
            root.join("tokenizer").join(file),
        )
        .unwrap();
    }
    // Drop one tensor from the text encoder's only file by pointing the config at more layers.
    let te_config = root.join("text_encoder/config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&te_config).unwrap()).unwrap();
    config["num_layers"] = serde_json::json!(3);
    std::fs::write(&te_config, config.to_string()).unwrap();
    std::fs::write(
        root.join("model_index.json"),
        serde_json::json!({
            "_class_name": "WanImageToVideoPipeline",
            "_diffusers_version": "0.42.1",
            "transformer": ["diffusers", "WanTransformer3DModel"],
            "transformer_2": [null, null],
            "text_encoder": ["transformers", "UMT5EncoderModel"],
            "image_encoder": ["transformers", "CLIPVisionModel"],
            "tokenizer": ["transformers", "T5TokenizerFast"],
            "boundary_ratio": null
        })
        .to_string(),
    )
    .unwrap();
    let report = loader::verify(root).unwrap();
    assert_eq!(
        report.pipeline_class.as_deref(),
        Some("WanImageToVideoPipeline")
    );
    let names: Vec<&str> = report.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    for component in &report.components {
        if component.name == "text_encoder" {
            assert!(
                component
                    .missing
                    .iter()
                    .any(|t| t.starts_with("encoder.block.2.")),
                "{component:#?}"
            );
        } else {
            assert!(component.is_ok(), "{component:#?}");
        }
    }
}

#[test]
fn verify_checks_every_tensor_of_whole_pipelines_vaes_included() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    for name in [
        "tiny-wan-t2v",
        "tiny-wan-i2v",
        "tiny-wan-flf2v",
        "tiny-wan22-two-experts",
        "tiny-wan22-ti2v",
    ] {
        let report = loader::verify(&fixtures.join(name)).unwrap();
        assert!(report.is_ok(), "{name}: {report:#?}");
        let vae = report.components.iter().find(|c| c.name == "vae").unwrap();
        assert!(vae.tensors > 0, "{name}: {vae:#?}");
    }
}

#[test]
fn verify_names_a_vae_tensor_whose_shape_does_not_match_the_config() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let tmp = tempfile::tempdir().unwrap();
    let vae = tmp.path().join("vae");
    std::fs::create_dir_all(&vae).unwrap();
    for entry in std::fs::read_dir(fixtures.join("tiny-wan-t2v/vae")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), vae.join(entry.file_name())).unwrap();
    }
    // A config asking for wider layers than the weights have.
    let config_path = vae.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["base_dim"] = serde_json::json!(config["base_dim"].as_u64().unwrap() * 2);
    std::fs::write(&config_path, config.to_string()).unwrap();

    let report = loader::verify(&vae).unwrap();
    let component = &report.components[0];
    assert!(
        component
            .shape_mismatches
            .iter()
            .any(|p| p.tensor == "encoder.conv_in.weight"),
        "{component:#?}"
    );
}
