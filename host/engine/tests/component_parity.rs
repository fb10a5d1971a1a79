//! Parity of each model component with the reference (diffusers / transformers) on the tiny seeded
//! fixtures made by tests/fixtures/make_component_fixtures.py: f32 on the CPU, relative error
//! ‖out − ref‖ / ‖ref‖ at most 1e-4 (tests/fixtures/components/TOLERANCES.md).

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use videosdgx_engine::families::wan::transformer::WanTransformer3DModel;
use videosdgx_engine::models::clip_vision::CLIPVisionModel;
use videosdgx_engine::models::relative_error;
use videosdgx_engine::models::umt5::UMT5EncoderModel;
use videosdgx_engine::tokenizer::PromptTokenizer;

const TOLERANCE: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/components")
        .join(name)
}

fn tensors(name: &str, file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join(file), &Device::Cpu).unwrap()
}

fn assert_close(what: &str, got: &Tensor, expected: &Tensor) {
    assert_eq!(got.dims(), expected.dims(), "{what}: shape");
    let err = relative_error(got, expected).unwrap();
    assert!(
        err <= TOLERANCE,
        "{what}: relative error {err:e} > {TOLERANCE:e}"
    );
}

fn check_wan(name: &str) {
    let model = WanTransformer3DModel::load(&fixture(name).join("model"), &Device::Cpu, DType::F32)
        .unwrap();
    let inputs = tensors(name, "inputs.safetensors");
    let expected = &tensors(name, "outputs.safetensors")["sample"];
    let sample = model
        .forward(
            &inputs["hidden_states"],
            &inputs["timestep"],
            &inputs["encoder_hidden_states"],
            inputs.get("encoder_hidden_states_image"),
        )
        .unwrap();
    assert_close(name, &sample, expected);
}

#[test]
fn wan_t2v_transformer_from_sharded_checkpoint_matches_diffusers() {
    check_wan("wan_t2v");
}

#[test]
fn wan_i2v_transformer_with_image_branch_matches_diffusers() {
    check_wan("wan_i2v");
}

#[test]
fn wan_flf2v_transformer_with_image_position_embedding_matches_diffusers() {
    check_wan("wan_flf2v");
}

#[test]
fn wan22_transformer_with_per_token_timesteps_matches_diffusers() {
    check_wan("wan22_ti2v");
}

#[test]
fn umt5_encoder_with_padding_mask_matches_transformers() {
    let model =
        UMT5EncoderModel::load(&fixture("umt5").join("model"), &Device::Cpu, DType::F32).unwrap();
    let inputs = tensors("umt5", "inputs.safetensors");
    let expected = tensors("umt5", "outputs.safetensors");
    let hidden = model
        .forward(&inputs["input_ids"], &inputs["attention_mask"])
        .unwrap();
    assert_close("umt5", &hidden, &expected["last_hidden_state"]);
}

#[test]
fn umt5_encoder_with_relu_feed_forward_matches_transformers() {
    let model = UMT5EncoderModel::load(
        &fixture("umt5_relu").join("model"),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let inputs = tensors("umt5_relu", "inputs.safetensors");
    let expected = tensors("umt5_relu", "outputs.safetensors");
    let hidden = model
        .forward(&inputs["input_ids"], &inputs["attention_mask"])
        .unwrap();
    assert_close("umt5_relu", &hidden, &expected["last_hidden_state"]);
}

#[test]
fn tokenizer_pads_and_truncates_like_transformers() {
    let tokenizer = PromptTokenizer::from_dir(&fixture("umt5").join("tokenizer")).unwrap();
    let prompts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("umt5").join("prompts.json")).unwrap(),
    )
    .unwrap();
    let max_length = prompts["max_length"].as_u64().unwrap() as usize;
    let inputs = tensors("umt5", "inputs.safetensors");
    let outputs = tensors("umt5", "outputs.safetensors");
    let ids = inputs["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    let mask = inputs["attention_mask"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    for (i, prompt) in prompts["prompts"].as_array().unwrap().iter().enumerate() {
        let encoded = tokenizer
            .encode(prompt.as_str().unwrap(), max_length)
            .unwrap();
        assert_eq!(encoded.input_ids, ids[i], "ids of prompt {i}");
        assert_eq!(encoded.attention_mask, mask[i], "mask of prompt {i}");
    }
    let long = tokenizer
        .encode(prompts["long_prompt"].as_str().unwrap(), max_length)
        .unwrap();
    let long_ids = outputs["long_input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    assert_eq!(
        long.input_ids, long_ids[0],
        "truncated prompt keeps the reference's ids"
    );
    assert_eq!(long.len(), max_length);
}

#[test]
fn clip_vision_encoder_hidden_states_match_transformers() {
    let model = CLIPVisionModel::load(
        &fixture("clip_vision").join("model"),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let inputs = tensors("clip_vision", "inputs.safetensors");
    let expected = tensors("clip_vision", "outputs.safetensors");
    let out = model.forward(&inputs["pixel_values"]).unwrap();
    assert_close(
        "last_hidden_state",
        &out.last_hidden_state,
        &expected["last_hidden_state"],
    );
    assert_close(
        "hidden_states[-2]",
        &out.penultimate_hidden_state,
        &expected["penultimate_hidden_state"],
    );
    assert_close(
        "pooler_output",
        &out.pooler_output,
        &expected["pooler_output"],
    );
    let embeds = model.image_embeds(&inputs["pixel_values"]).unwrap();
    assert_close(
        "image_embeds",
        &embeds,
        &expected["penultimate_hidden_state"],
    );
}

#[test]
fn clip_image_preprocessing_matches_transformers_pil_backend_exactly() {
    use videosdgx_engine::image_processor::{CLIPImageProcessor, CLIPImageProcessorConfig};
    let configs: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixture("clip_image_processor").join("configs.json")).unwrap(),
    )
    .unwrap();
    let inputs = tensors("clip_image_processor", "inputs.safetensors");
    let expected = tensors("clip_image_processor", "outputs.safetensors");
    for (case, config) in configs {
        let config: CLIPImageProcessorConfig = serde_json::from_value(config).unwrap();
        let processor = CLIPImageProcessor::new(config).unwrap();
        let pixels = &inputs[&case];
        let (h, w, _) = pixels.dims3().unwrap();
        let raw = pixels.flatten_all().unwrap().to_vec1::<u8>().unwrap();
        let image = image::RgbImage::from_raw(w as u32, h as u32, raw).unwrap();
        let got = processor.preprocess(&image, &Device::Cpu).unwrap();
        assert_eq!(got.dims(), expected[&case].dims(), "{case}: shape");
        let max_abs = (got - &expected[&case])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // Same 8-bit pixels after resizing; only float rounding of rescale/normalize may differ.
        assert!(max_abs < 1e-5, "{case}: max abs difference {max_abs}");
    }
}
