//! Language-model parity against transformers on the tiny random models of
//! tests/fixtures/make_llm_fixtures.py: logits and every hidden state within 1e-4 relative error
//! in f32 on the CPU, greedy generation token for token, and readable errors for bad inputs.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use videosdgx_engine::models::relative_error;
use videosdgx_engine::text::decoder::{HiddenStates, Logits};
use videosdgx_engine::text::generation::{Prompts, StopAt, generate};
use videosdgx_engine::text::model::{LanguageModel, ModelInput};
use videosdgx_engine::text::sampling::{Sampler, SamplingParams};

const VISION_FIXTURES: &[&str] = &["gemma3_vlm", "gemma3_vlm_hub_layout"];
const TEXT_FIXTURES: &[&str] = &[
    "qwen3",
    // ModelOpt's NVFP4 export of it (tests/fixtures/make_nvfp4_fixtures.py), run weight-only.
    "qwen3_nvfp4",
    "qwen3_sliding",
    "gemma3_text",
    "gemma3_text_softcap",
    // Head dims 64 and 256, which the fused causal attention kernel takes on a GPU.
    "qwen3_hd64",
    "gemma3_text_hd256",
];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/text")
        .join(name)
}

fn tensors(name: &str, file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join(file), &Device::Cpu).unwrap()
}

fn load(name: &str) -> LanguageModel {
    LanguageModel::load(&fixture(name).join("model"), &Device::Cpu, DType::F32).unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|v| v as u32).collect())
        .collect()
}

fn check_forward(name: &str) {
    let model = load(name);
    let inputs = tensors(name, "forward_inputs.safetensors");
    let expected = tensors(name, "forward_outputs.safetensors");
    let input = ModelInput {
        input_ids: &inputs["input_ids"],
        attention_mask: inputs.get("attention_mask"),
        pixel_values: inputs.get("pixel_values"),
        token_type_ids: inputs.get("token_type_ids"),
    };
    let out = model
        .forward(&input, &HiddenStates::All, Logits::All)
        .unwrap();
    let err = relative_error(out.logits.as_ref().unwrap(), &expected["logits"]).unwrap();
    assert!(err <= 1e-4, "{name}: logits relative error {err:e}");
    let hidden = Tensor::stack(&out.hidden_states, 0).unwrap();
    assert_eq!(hidden.dims(), expected["hidden_states"].dims(), "{name}");
    for i in 0..hidden.dim(0).unwrap() {
        let err = relative_error(
            &hidden.get(i).unwrap(),
            &expected["hidden_states"].get(i).unwrap(),
        )
        .unwrap();
        assert!(
            err <= 1e-4,
            "{name}: hidden state {i} relative error {err:e}"
        );
    }
}

#[test]
fn text_models_match_transformers_logits_and_hidden_states() {
    for name in TEXT_FIXTURES {
        check_forward(name);
    }
}

#[test]
fn gemma3_with_images_matches_transformers_in_both_checkpoint_layouts() {
    for name in VISION_FIXTURES {
        check_forward(name);
    }
}

#[test]
fn image_tokens_without_pixels_or_of_another_count_are_refused() {
    let name = "gemma3_vlm";
    let model = load(name);
    let inputs = tensors(name, "forward_inputs.safetensors");
    let without_pixels = ModelInput {
        input_ids: &inputs["input_ids"],
        attention_mask: inputs.get("attention_mask"),
        pixel_values: None,
        token_type_ids: inputs.get("token_type_ids"),
    };
    let err = model
        .forward(&without_pixels, &HiddenStates::None, Logits::All)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no pixel_values"), "{err}");
    let one_image = inputs["pixel_values"].narrow(0, 0, 1).unwrap();
    let too_few = ModelInput {
        pixel_values: Some(&one_image),
        ..without_pixels
    };
    let err = model
        .forward(&too_few, &HiddenStates::None, Logits::All)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("do not match"), "{err}");
}

#[test]
fn chosen_hidden_states_equal_the_full_forward_and_stop_early() {
    let name = "gemma3_text";
    let model = load(name);
    let inputs = tensors(name, "forward_inputs.safetensors");
    let expected = tensors(name, "forward_outputs.safetensors");
    let layers = vec![2, 4];
    let got = model
        .hidden_states(
            &inputs["input_ids"],
            &inputs["attention_mask"],
            HiddenStates::Layers(layers.clone()),
        )
        .unwrap();
    assert_eq!(got.len(), layers.len());
    for (state, &i) in got.iter().zip(&layers) {
        let err = relative_error(state, &expected["hidden_states"].get(i).unwrap()).unwrap();
        assert!(err <= 1e-4, "hidden state {i}: relative error {err:e}");
    }
}

#[test]
fn greedy_generation_matches_transformers_token_for_token() {
    for name in TEXT_FIXTURES {
        let model = load(name);
        let inputs = tensors(name, "generate_inputs.safetensors");
        let expected = rows(&tensors(name, "generate_outputs.safetensors")["sequences"]);
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(name).join("model/generation_config.json")).unwrap(),
        )
        .unwrap();
        let eos = config["eos_token_id"].as_u64().map(|e| e as u32);
        let prompts = Prompts {
            input_ids: rows(&inputs["input_ids"]),
            attention_mask: rows(&inputs["attention_mask"]),
            pixel_values: None,
            token_type_ids: None,
        };
        let stop = StopAt {
            max_new_tokens: 32,
            eos_token_ids: eos.into_iter().collect(),
            pad_token_id: 0,
        };
        let generated = generate(
            &model,
            &prompts,
            &stop,
            &mut Sampler::new(SamplingParams::greedy()).unwrap(),
            &mut |_| ControlFlow::Continue(()),
        )
        .unwrap();
        assert_eq!(generated.sequences, expected, "{name}");
    }
}

#[test]
fn a_token_outside_the_vocabulary_is_refused_by_name() {
    let model = load("qwen3");
    let ids = Tensor::new(&[[1i64, 5000]], &Device::Cpu).unwrap();
    let input = ModelInput {
        input_ids: &ids,
        attention_mask: None,
        pixel_values: None,
        token_type_ids: None,
    };
    let err = model
        .forward(&input, &HiddenStates::None, Logits::All)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("5000") && err.contains("vocabulary"), "{err}");
}

#[test]
fn a_mask_of_another_shape_is_refused() {
    let model = load("qwen3");
    let ids = Tensor::new(&[[1i64, 2, 3]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1i64, 1]], &Device::Cpu).unwrap();
    let input = ModelInput {
        input_ids: &ids,
        attention_mask: Some(&mask),
        pixel_values: None,
        token_type_ids: None,
    };
    let err = model
        .forward(&input, &HiddenStates::None, Logits::All)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("attention_mask"), "{err}");
}

#[test]
fn a_missing_tensor_names_the_tensor_and_an_unknown_architecture_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("qwen3").join("model");
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    // Drop one tensor from the weights.
    let weights = tmp.path().join("model.safetensors");
    let mut all = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    all.remove("model.layers.1.self_attn.k_norm.weight")
        .unwrap();
    candle_core::safetensors::save(&all, &weights).unwrap();
    let err = format!(
        "{:#}",
        LanguageModel::load(tmp.path(), &Device::Cpu, DType::F32)
            .err()
            .unwrap()
    );
    assert!(
        err.contains("model.layers.1.self_attn.k_norm.weight"),
        "{err}"
    );

    let config = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("Qwen3ForCausalLM", "LlamaForCausalLM");
    std::fs::write(&config, text).unwrap();
    let err = format!(
        "{:#}",
        LanguageModel::load(tmp.path(), &Device::Cpu, DType::F32)
            .err()
            .unwrap()
    );
    assert!(
        err.contains("LlamaForCausalLM") && err.contains("config.json"),
        "{err}"
    );
}

#[test]
fn verify_checks_a_language_model_folder_against_its_config() {
    let report =
        videosdgx_engine::loader::verify(&fixture("gemma3_vlm_hub_layout").join("model")).unwrap();
    let component = &report.components[0];
    assert!(component.is_ok(), "{component:?}");
    assert_eq!(component.class_name, "Gemma3ForConditionalGeneration");

    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("qwen3").join("model")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    // A config that no longer matches the weights: every projection is reported by name.
    let config = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"intermediate_size\": 100", "\"intermediate_size\": 96");
    std::fs::write(&config, text).unwrap();
    let report = videosdgx_engine::loader::verify(tmp.path()).unwrap();
    let problems: Vec<&str> = report.components[0]
        .shape_mismatches
        .iter()
        .map(|p| p.tensor.as_str())
        .collect();
    assert!(
        problems.contains(&"model.layers.0.mlp.gate_proj.weight"),
        "{problems:?}"
    );
}
