//! Parity of each model component with the reference (diffusers / transformers) on the tiny seeded
//! fixtures made by tests/fixtures/make_component_fixtures.py: f32 on the CPU, relative error
//! ‖out − ref‖ / ‖ref‖ at most 1e-4 (tests/fixtures/components/TOLERANCES.md).

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use videosdgx_engine::families::flux2::transformer::Flux2Transformer2DModel;
use videosdgx_engine::families::wan::transformer::WanTransformer3DModel;
use videosdgx_engine::models::clip_vision::CLIPVisionModel;
use videosdgx_engine::models::relative_error;
use videosdgx_engine::models::t5::T5EncoderModel;
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

fn flux2_model(name: &str) -> Flux2Transformer2DModel {
    Flux2Transformer2DModel::load(&fixture(name).join("model"), &Device::Cpu, DType::F32).unwrap()
}

fn flux2_forward(
    model: &Flux2Transformer2DModel,
    inputs: &HashMap<String, Tensor>,
) -> candle_core::Result<Tensor> {
    model.forward(
        &inputs["hidden_states"],
        &inputs["encoder_hidden_states"],
        &inputs["timestep"],
        &inputs["img_ids"],
        &inputs["txt_ids"],
        inputs.get("guidance"),
    )
}

fn check_flux2(name: &str) {
    let model = flux2_model(name);
    let inputs = tensors(name, "inputs.safetensors");
    let expected = &tensors(name, "outputs.safetensors")["sample"];
    let sample = flux2_forward(&model, &inputs).unwrap();
    eprintln!(
        "{name}: relative error {:e}",
        relative_error(&sample, expected).unwrap()
    );
    assert_close(name, &sample, expected);
}

#[test]
fn flux2_klein_transformer_without_guidance_matches_diffusers() {
    check_flux2("flux2-klein-tiny");
}

#[test]
fn flux2_dev_transformer_with_guidance_embedding_matches_diffusers() {
    check_flux2("flux2-dev-tiny");
}

#[test]
fn flux2_transformer_with_unequal_rope_axes_and_reference_image_ids_matches_diffusers() {
    check_flux2("flux2-odd");
}

#[test]
fn flux2_transformer_rejects_inputs_of_the_wrong_shape_by_name() {
    let model = flux2_model("flux2-klein-tiny");
    let inputs = tensors("flux2-klein-tiny", "inputs.safetensors");
    let with = |name: &str, tensor: Tensor| {
        let mut inputs = inputs.clone();
        inputs.insert(name.to_string(), tensor);
        flux2_forward(&model, &inputs).unwrap_err().to_string()
    };
    let wide = Tensor::zeros((2, 6, 9), DType::F32, &Device::Cpu).unwrap();
    let err = with("hidden_states", wide);
    assert!(
        err.contains("hidden_states")
            && err.contains("[2, 6, 9]")
            && err.contains("in_channels = 8"),
        "{err}"
    );
    let short = inputs["img_ids"].narrow(1, 0, 5).unwrap();
    let err = with("img_ids", short);
    assert!(
        err.contains("img_ids")
            && err.contains("[2, 5, 4]")
            && err.contains("hidden_states (6 tokens)"),
        "{err}"
    );
    let narrow = inputs["txt_ids"].narrow(2, 0, 3).unwrap();
    let err = with("txt_ids", narrow);
    assert!(
        err.contains("txt_ids") && err.contains("[2, 5, 3]"),
        "{err}"
    );
    let text = Tensor::zeros((2, 5, 16), DType::F32, &Device::Cpu).unwrap();
    let err = with("encoder_hidden_states", text);
    assert!(
        err.contains("encoder_hidden_states") && err.contains("[2, 5, 16]"),
        "{err}"
    );
    let err = with(
        "timestep",
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    assert!(err.contains("timestep") && err.contains("[3]"), "{err}");
}

#[test]
fn umt5_encoder_with_padding_mask_matches_transformers() {
    let model =
        T5EncoderModel::load(&fixture("umt5").join("model"), &Device::Cpu, DType::F32).unwrap();
    let inputs = tensors("umt5", "inputs.safetensors");
    let expected = tensors("umt5", "outputs.safetensors");
    let hidden = model
        .forward(&inputs["input_ids"], &inputs["attention_mask"])
        .unwrap();
    assert_close("umt5", &hidden, &expected["last_hidden_state"]);
}

#[test]
fn umt5_encoder_with_relu_feed_forward_matches_transformers() {
    let model = T5EncoderModel::load(
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
