//! FLUX.1 against the reference on the tiny random fixtures of
//! tests/fixtures/make_flux1_fixtures.py, f32 on the CPU: the components (`CLIPTextModel`,
//! `T5EncoderModel` in both feed-forward forms, `FluxTransformer2DModel` [dev] / [schnell] / odd)
//! within 1e-4, and the `FluxPipeline` / `FluxKontextPipeline` runs within 1e-3
//! (tests/fixtures/TOLERANCES.md).

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use videosdgx_engine::families::flux::pipeline::FluxPipeline;
use videosdgx_engine::families::flux::transformer::FluxTransformer2DModel;
use videosdgx_engine::models::clip_text::CLIPTextModel;
use videosdgx_engine::models::relative_error;
use videosdgx_engine::models::t5::T5EncoderModel;
use videosdgx_engine::pipelines::{
    Capabilities, GenerateInputs, GenerateParams, ImageInput, Output, Pipeline, Progress,
    References, StartImage,
};

const COMPONENT_TOLERANCE: f64 = 1e-4;
const PIPELINE_TOLERANCE: f64 = 1e-3;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn component(name: &str) -> PathBuf {
    fixtures().join("components").join(name)
}

fn tensors(name: &str, file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(component(name).join(file), &Device::Cpu).unwrap()
}

fn assert_close(what: &str, got: &Tensor, expected: &Tensor, tolerance: f64) {
    assert_eq!(got.dims(), expected.dims(), "{what}: shape");
    let err = relative_error(got, expected).unwrap();
    eprintln!("{what}: relative error {err:e}");
    assert!(
        err <= tolerance,
        "{what}: relative error {err:e} > {tolerance:e}"
    );
}

fn check_clip(name: &str) {
    let model =
        CLIPTextModel::load(&component(name).join("model"), &Device::Cpu, DType::F32).unwrap();
    let inputs = tensors(name, "inputs.safetensors");
    let expected = tensors(name, "outputs.safetensors");
    let out = model.forward(&inputs["input_ids"]).unwrap();
    for (key, got) in [
        ("last_hidden_state", &out.last_hidden_state),
        ("pooler_output", &out.pooler_output),
    ] {
        assert_close(
            &format!("{name}/{key}"),
            got,
            &expected[key],
            COMPONENT_TOLERANCE,
        );
    }
}

#[test]
fn clip_text_model_pooling_at_the_highest_id_matches_transformers() {
    check_clip("clip_text");
}

#[test]
fn clip_text_model_pooling_at_the_first_eos_matches_transformers() {
    check_clip("clip_text_eos");
}

#[test]
fn clip_text_model_rejects_sequences_longer_than_its_positions() {
    let model = CLIPTextModel::load(
        &component("clip_text").join("model"),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let ids = Tensor::zeros((1, 21), DType::I64, &Device::Cpu).unwrap();
    let err = model.forward(&ids).err().unwrap().to_string();
    assert!(
        err.contains("21 tokens") && err.contains("max_position_embeddings"),
        "{err}"
    );
    let ids = Tensor::full(64i64, (1, 3), &Device::Cpu).unwrap();
    let err = model.forward(&ids).err().unwrap().to_string();
    assert!(
        err.contains("token 64") && err.contains("vocabulary"),
        "{err}"
    );
}

fn check_t5(name: &str) {
    let model =
        T5EncoderModel::load(&component(name).join("model"), &Device::Cpu, DType::F32).unwrap();
    let inputs = tensors(name, "inputs.safetensors");
    let expected = &tensors(name, "outputs.safetensors")["last_hidden_state"];
    let hidden = model
        .forward(&inputs["input_ids"], &inputs["attention_mask"])
        .unwrap();
    assert_close(name, &hidden, expected, COMPONENT_TOLERANCE);
}

#[test]
fn t5_v1_1_encoder_with_the_first_layers_shared_position_bias_matches_transformers() {
    check_t5("t5");
}

#[test]
fn original_t5_encoder_with_relu_feed_forward_matches_transformers() {
    check_t5("t5_relu");
}

fn flux_model(name: &str) -> FluxTransformer2DModel {
    FluxTransformer2DModel::load(&component(name).join("model"), &Device::Cpu, DType::F32).unwrap()
}

fn flux_forward(
    model: &FluxTransformer2DModel,
    inputs: &HashMap<String, Tensor>,
) -> candle_core::Result<Tensor> {
    model.forward(
        &inputs["hidden_states"],
        &inputs["encoder_hidden_states"],
        &inputs["pooled_projections"],
        &inputs["timestep"],
        &inputs["img_ids"],
        &inputs["txt_ids"],
        inputs.get("guidance"),
    )
}

fn check_flux(name: &str) {
    let model = flux_model(name);
    let inputs = tensors(name, "inputs.safetensors");
    let expected = &tensors(name, "outputs.safetensors")["sample"];
    let sample = flux_forward(&model, &inputs).unwrap();
    assert_close(name, &sample, expected, COMPONENT_TOLERANCE);
}

#[test]
fn flux1_dev_transformer_with_guidance_embedding_matches_diffusers() {
    check_flux("flux1-dev-tiny");
}

#[test]
fn flux1_schnell_transformer_with_batched_ids_matches_diffusers() {
    check_flux("flux1-schnell-tiny");
}

#[test]
fn flux1_transformer_with_unequal_rope_axes_and_kontext_ids_matches_diffusers() {
    check_flux("flux1-odd");
}

#[test]
fn flux1_transformer_rejects_bad_inputs_by_name() {
    let model = flux_model("flux1-dev-tiny");
    let inputs = tensors("flux1-dev-tiny", "inputs.safetensors");
    let with = |name: &str, tensor: Option<Tensor>| {
        let mut inputs = inputs.clone();
        match tensor {
            Some(tensor) => inputs.insert(name.to_string(), tensor),
            None => inputs.remove(name),
        };
        flux_forward(&model, &inputs).unwrap_err().to_string()
    };
    let zeros = |shape: &[usize]| Some(Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap());
    let err = with("pooled_projections", zeros(&[1, 7]));
    assert!(
        err.contains("pooled_projections") && err.contains("[1, 7]"),
        "{err}"
    );
    let err = with("hidden_states", zeros(&[1, 12, 15]));
    assert!(
        err.contains("hidden_states") && err.contains("in_channels"),
        "{err}"
    );
    let err = with("img_ids", zeros(&[11, 3]));
    assert!(err.contains("img_ids") && err.contains("[11, 3]"), "{err}");
    let err = with("guidance", None);
    assert!(err.contains("guidance"), "{err}");
}

fn pipeline_dir(name: &str) -> PathBuf {
    fixtures().join(name)
}

fn reference(pipeline: &str, file: &str, key: &str) -> Tensor {
    let path = pipeline_dir(pipeline).join("reference").join(file);
    let mut map = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    map.remove(key)
        .unwrap_or_else(|| panic!("{file} has no {key}"))
}

fn params(prompt: &str, guidance: f64, references: Vec<ImageInput>) -> GenerateParams {
    GenerateParams {
        prompt: prompt.into(),
        height: 32,
        width: 48,
        frames: 1,
        steps: 4,
        guidance,
        seed: 0,
        references,
        ..Default::default()
    }
}

fn quiet(_: &Progress) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

/// Runs `params` from the fixture's latents; returns `[H, W, 3]`.
fn generate(pipeline: &mut Pipeline, name: &str, params: &GenerateParams) -> Tensor {
    let inputs = GenerateInputs {
        latents: Some(reference(name, "latents.safetensors", "latents")),
        ..Default::default()
    };
    let out = pipeline.generate(params, inputs, &mut quiet).unwrap();
    assert_eq!(out.frames.dims(), [1, 32, 48, 3]);
    out.frames.squeeze(0).unwrap()
}

fn open(name: &str) -> Pipeline {
    Pipeline::open(&pipeline_dir(name), &Device::Cpu, DType::F32).unwrap()
}

const PROMPT: &str = "a red car drives along a mountain road at night";

#[test]
fn flux1_dev_prompt_embeddings_match_diffusers() {
    let mut pipeline =
        FluxPipeline::load(&pipeline_dir("tiny-flux1-dev"), &Device::Cpu, DType::F32).unwrap();
    let embeds = pipeline.encode_prompt(PROMPT).unwrap();
    for (key, got) in [
        ("prompt_embeds", &embeds.prompt_embeds),
        ("pooled_prompt_embeds", &embeds.pooled_prompt_embeds),
    ] {
        let expected = reference("tiny-flux1-dev", "prompt_embeds.safetensors", key);
        assert_close(key, got, &expected, COMPONENT_TOLERANCE);
    }
}

#[test]
fn flux1_dev_text_to_image_matches_diffusers() {
    let mut pipeline = open("tiny-flux1-dev");
    assert_eq!(
        pipeline.capabilities(),
        Capabilities {
            output: Output::Image,
            start_image: StartImage::Unsupported,
            references: References::Unsupported,
        }
    );
    for (prompt, name) in [
        (PROMPT, "text_to_image"),
        ("waves crash on a rocky beach", "other_prompt"),
    ] {
        let image = generate(
            &mut pipeline,
            "tiny-flux1-dev",
            &params(prompt, 3.5, Vec::new()),
        );
        let expected = reference("tiny-flux1-dev", &format!("{name}.safetensors"), "image");
        assert_close(name, &image, &expected, PIPELINE_TOLERANCE);
    }
}

#[test]
fn flux1_dev_with_true_cfg_and_a_negative_prompt_matches_diffusers() {
    let mut pipeline =
        FluxPipeline::load(&pipeline_dir("tiny-flux1-dev"), &Device::Cpu, DType::F32).unwrap();
    let mut params = params(PROMPT, 3.5, Vec::new());
    params.negative_prompt = "low quality, blurry".into();
    params.true_cfg_scale = Some(4.0);
    let inputs = GenerateInputs {
        latents: Some(reference(
            "tiny-flux1-dev",
            "latents.safetensors",
            "latents",
        )),
        ..Default::default()
    };
    let out = pipeline.generate(&params, inputs, &mut quiet).unwrap();
    let expected = reference("tiny-flux1-dev", "true_cfg.safetensors", "image");
    assert_close(
        "true_cfg",
        &out.frames.squeeze(0).unwrap(),
        &expected,
        PIPELINE_TOLERANCE,
    );
}

#[test]
fn flux1_dev_from_given_prompt_embeddings_matches_diffusers() {
    let mut pipeline = open("tiny-flux1-dev");
    let embeds = |key| reference("tiny-flux1-dev", "prompt_embeds.safetensors", key);
    let inputs = GenerateInputs {
        latents: Some(reference(
            "tiny-flux1-dev",
            "latents.safetensors",
            "latents",
        )),
        prompt_embeds: Some(embeds("prompt_embeds")),
        pooled_prompt_embeds: Some(embeds("pooled_prompt_embeds")),
        ..Default::default()
    };
    let out = pipeline
        .generate(&params("", 3.5, Vec::new()), inputs, &mut quiet)
        .unwrap();
    let expected = reference("tiny-flux1-dev", "text_to_image.safetensors", "image");
    assert_close(
        "embeds",
        &out.frames.squeeze(0).unwrap(),
        &expected,
        PIPELINE_TOLERANCE,
    );
    // The T5 states alone are not enough.
    let inputs = GenerateInputs {
        prompt_embeds: Some(embeds("prompt_embeds")),
        ..Default::default()
    };
    let err = pipeline
        .generate(&params("", 3.5, Vec::new()), inputs, &mut quiet)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("pooled"), "{err}");
}

fn edit_image() -> ImageInput {
    ImageInput::Path(pipeline_dir("tiny-flux1-kontext").join("reference/image.png"))
}

#[test]
fn flux1_kontext_editing_an_auto_resized_image_matches_diffusers() {
    let mut pipeline = open("tiny-flux1-kontext");
    assert_eq!(pipeline.capabilities().references, References::EditOne);
    // What listing installed models reads from the configs alone says the same.
    for name in ["tiny-flux1-kontext", "tiny-flux1-dev"] {
        assert_eq!(
            Pipeline::inspect(&pipeline_dir(name)).unwrap(),
            open(name).capabilities(),
            "{name}"
        );
    }
    let image = generate(
        &mut pipeline,
        "tiny-flux1-kontext",
        &params("make the car blue", 2.5, vec![edit_image()]),
    );
    let expected = reference("tiny-flux1-kontext", "edit.safetensors", "image");
    assert_close("edit", &image, &expected, PIPELINE_TOLERANCE);
}

#[test]
fn flux1_pipelines_reject_missing_or_extra_images() {
    let mut kontext = open("tiny-flux1-kontext");
    let err = kontext
        .generate(
            &params("edit", 2.5, Vec::new()),
            GenerateInputs::default(),
            &mut quiet,
        )
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("Kontext") && err.contains("--image"), "{err}");
    let two = vec![edit_image(), edit_image()];
    let err = kontext
        .generate(
            &params("edit", 2.5, two),
            GenerateInputs::default(),
            &mut quiet,
        )
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("one image"), "{err}");
    let mut dev = open("tiny-flux1-dev");
    let err = dev
        .generate(
            &params("x", 3.5, vec![edit_image()]),
            GenerateInputs::default(),
            &mut quiet,
        )
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no reference images"), "{err}");
    let mut long = params("x", 3.5, Vec::new());
    long.max_sequence_length = Some(513);
    let err = dev
        .generate(&long, GenerateInputs::default(), &mut quiet)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("max_sequence_length"), "{err}");
    let mut odd = params("x", 3.5, Vec::new());
    odd.width = 40;
    let err = dev
        .generate(&odd, GenerateInputs::default(), &mut quiet)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("multiples of 16"), "{err}");
}

/// A FLUX.1 transformer in Black Forest Labs' names (`flux1-dev.safetensors`) in a folder beside
/// the diffusers config (a pipeline's `transformer/` holding the downloaded file).
#[test]
fn flux1_original_single_file_in_a_folder_with_its_config_matches_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = component("flux1-dev-tiny");
    std::fs::copy(
        fixture.join("model/config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    std::fs::copy(
        fixture.join("original.safetensors"),
        tmp.path().join("flux1-dev.safetensors"),
    )
    .unwrap();
    let model = FluxTransformer2DModel::load(tmp.path(), &Device::Cpu, DType::F32).unwrap();
    let sample = flux_forward(&model, &tensors("flux1-dev-tiny", "inputs.safetensors")).unwrap();
    let expected = &tensors("flux1-dev-tiny", "outputs.safetensors")["sample"];
    assert_close(
        "flux1-dev-tiny/original",
        &sample,
        expected,
        COMPONENT_TOLERANCE,
    );
}

/// A bare FLUX.1 file: the config comes from the shapes (rotary axes 16/56/56 scaled to the head
/// dim of 32).
#[test]
fn flux1_bare_single_file_infers_its_config_and_matches_diffusers() {
    let file = component("flux1-single-file").join("flux1-tiny.safetensors");
    let model = FluxTransformer2DModel::load(&file, &Device::Cpu, DType::F32).unwrap();
    let cfg = model.config();
    assert_eq!(cfg.axes_dims_rope, [4, 14, 14]);
    assert!(!cfg.guidance_embeds);
    assert_eq!((cfg.num_layers, cfg.num_single_layers), (1, 1));
    let sample = flux_forward(&model, &tensors("flux1-single-file", "inputs.safetensors")).unwrap();
    let expected = &tensors("flux1-single-file", "outputs.safetensors")["sample"];
    assert_close("flux1-single-file", &sample, expected, COMPONENT_TOLERANCE);
}

/// `flux2-dev.safetensors`: the FLUX.2 transformer in Black Forest Labs' names, bare.
#[test]
fn flux2_bare_single_file_matches_diffusers() {
    use videosdgx_engine::families::flux2::transformer::Flux2Transformer2DModel;
    let file = component("flux2-dev-tiny").join("original.safetensors");
    let model = Flux2Transformer2DModel::load(&file, &Device::Cpu, DType::F32).unwrap();
    let inputs = tensors("flux2-dev-tiny", "inputs.safetensors");
    let sample = model
        .forward(
            &inputs["hidden_states"],
            &inputs["encoder_hidden_states"],
            &inputs["timestep"],
            &inputs["img_ids"],
            &inputs["txt_ids"],
            inputs.get("guidance"),
        )
        .unwrap();
    let expected = &tensors("flux2-dev-tiny", "outputs.safetensors")["sample"];
    assert_close(
        "flux2-dev-tiny/original",
        &sample,
        expected,
        COMPONENT_TOLERANCE,
    );
}

#[test]
fn single_files_with_unknown_tensors_or_of_another_model_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let file = component("flux1-single-file").join("flux1-tiny.safetensors");
    let mut weights = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    weights.insert(
        "double_blocks.0.img_attn.lora_up.weight".into(),
        Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
    );
    let extra = tmp.path().join("extra.safetensors");
    candle_core::safetensors::save(&weights, &extra).unwrap();
    let err = format!(
        "{:#}",
        FluxTransformer2DModel::load(&extra, &Device::Cpu, DType::F32)
            .err()
            .unwrap()
    );
    assert!(
        err.contains("double_blocks.0.img_attn.lora_up.weight")
            && err.contains("extra.safetensors"),
        "{err}"
    );

    let flux2 = component("flux2-dev-tiny").join("original.safetensors");
    let err = format!(
        "{:#}",
        FluxTransformer2DModel::load(&flux2, &Device::Cpu, DType::F32)
            .err()
            .unwrap()
    );
    assert!(err.contains("Flux2Transformer2DModel"), "{err}");

    // A truncated file names the tensor it lacks.
    weights.remove("double_blocks.0.img_attn.lora_up.weight");
    weights.remove("single_blocks.0.linear2.weight");
    let short = tmp.path().join("short.safetensors");
    candle_core::safetensors::save(&weights, &short).unwrap();
    let err = format!(
        "{:#}",
        FluxTransformer2DModel::load(&short, &Device::Cpu, DType::F32)
            .err()
            .unwrap()
    );
    assert!(err.contains("single_blocks.0.linear2.weight"), "{err}");
}

fn vae_tensor(name: &str, file: &str, key: &str) -> Tensor {
    let path = fixtures().join("vae").join(name).join(file);
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap()[key].clone()
}

/// FLUX.1's `ae.safetensors` layout (latent-diffusion names, 1x1-convolution attention) of the
/// image VAE fixtures, beside their diffusers config: encode and decode as diffusers.
#[test]
fn ldm_vae_single_files_encode_and_decode_as_diffusers() {
    use videosdgx_engine::models::autoencoder_kl::AutoencoderKL;
    for name in ["kl-tiny", "kl-odd"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = fixtures().join("vae").join(name);
        std::fs::copy(dir.join("config.json"), tmp.path().join("config.json")).unwrap();
        std::fs::copy(
            dir.join("ae.safetensors"),
            tmp.path().join("ae.safetensors"),
        )
        .unwrap();
        let vae = AutoencoderKL::load(tmp.path(), &Device::Cpu, DType::F32).unwrap();
        let latents = vae
            .encode(&vae_tensor(name, "encode_in.safetensors", "sample"))
            .unwrap();
        let expected = vae_tensor(name, "encode_out.safetensors", "latents");
        assert_close(
            &format!("{name}/ae encode"),
            &latents,
            &expected,
            COMPONENT_TOLERANCE,
        );
        let sample = vae
            .decode(&vae_tensor(name, "decode_in.safetensors", "latents"))
            .unwrap();
        let expected = vae_tensor(name, "decode_out.safetensors", "sample");
        assert_close(
            &format!("{name}/ae decode"),
            &sample,
            &expected,
            COMPONENT_TOLERANCE,
        );
    }
}

/// A bare `ae.safetensors` carries no config: everything but the group count (32, as published)
/// and the latent scaling comes from the shapes.
#[test]
fn ldm_vae_config_is_read_from_the_shapes() {
    use videosdgx_engine::loader::single_file::{self, OriginalLayout, Weights};
    let file = fixtures().join("vae/kl-odd/ae.safetensors");
    let Weights::Original(original) = single_file::open(&file).unwrap() else {
        panic!("ae.safetensors is in the original layout");
    };
    assert_eq!(original.layout(), OriginalLayout::LdmVae);
    let cfg = original.ldm_vae_config().unwrap();
    let published: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("vae/kl-odd/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        serde_json::json!(cfg.block_out_channels),
        published["block_out_channels"]
    );
    assert_eq!(
        serde_json::json!([cfg.layers_per_block, cfg.latent_channels]),
        serde_json::json!([published["layers_per_block"], published["latent_channels"]])
    );
    assert_eq!(
        (
            cfg.norm_num_groups,
            cfg.mid_block_add_attention,
            cfg.use_quant_conv
        ),
        (32, false, false)
    );
    // Its first widths do not make 32 groups: the load fails by name, not in a forward.
    let err = format!(
        "{:#}",
        videosdgx_engine::models::autoencoder_kl::AutoencoderKL::load(
            &file,
            &Device::Cpu,
            DType::F32
        )
        .err()
        .unwrap()
    );
    assert!(
        err.contains("ae.safetensors") && err.contains("32"),
        "{err}"
    );
}

/// FLUX.1's CLIP tokenizer as the published folders ship it (`vocab.json`, `merges.txt`) and as
/// `save_pretrained` writes it (`tokenizer.json`): transformers' `CLIPTokenizer` ids, padded to 77.
#[test]
fn clip_tokenizer_from_vocab_and_merges_or_tokenizer_json_matches_transformers() {
    use videosdgx_engine::tokenizer::PromptTokenizer;
    let dir = component("clip_tokenizer");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("prompts.json")).unwrap()).unwrap();
    for tokenizer in [
        PromptTokenizer::clip_from_dir(&dir).unwrap(),
        PromptTokenizer::clip_from_dir(&pipeline_dir("tiny-flux1-dev").join("tokenizer")).unwrap(),
    ] {
        for (prompt, ids) in expected["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .zip(expected["input_ids"].as_array().unwrap())
        {
            let got = tokenizer.encode(prompt.as_str().unwrap(), 77).unwrap();
            let ids: Vec<u32> = ids
                .as_array()
                .unwrap()
                .iter()
                .map(|id| id.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(got.input_ids, ids, "{prompt}");
        }
    }
}

#[test]
fn the_flux1_pipelines_and_components_verify_clean() {
    for dir in [
        pipeline_dir("tiny-flux1-dev"),
        pipeline_dir("tiny-flux1-kontext"),
        component("clip_text").join("model"),
        component("t5").join("model"),
        component("flux1-odd").join("model"),
    ] {
        let report = videosdgx_engine::loader::verify(&dir).unwrap();
        assert!(report.is_ok(), "{}: {report:#?}", dir.display());
    }
}

/// 256 T5 tokens, as the published [schnell] examples encode.
#[test]
fn flux1_dev_with_256_t5_tokens_matches_diffusers() {
    let mut pipeline = open("tiny-flux1-dev");
    let mut params = params(PROMPT, 3.5, Vec::new());
    params.max_sequence_length = Some(256);
    let image = generate(&mut pipeline, "tiny-flux1-dev", &params);
    let expected = reference(
        "tiny-flux1-dev",
        "max_sequence_length_256.safetensors",
        "image",
    );
    assert_close(
        "max_sequence_length_256",
        &image,
        &expected,
        PIPELINE_TOLERANCE,
    );
}

/// A pipeline folder laid out as the published ones and what users download: `transformer/`
/// and `vae/` holding the single files (`flux1-dev.safetensors`, `ae.safetensors`) beside the
/// diffusers configs, `tokenizer/` holding CLIP's `vocab.json` and `merges.txt` and no
/// `tokenizer.json`. It verifies clean and generates as diffusers.
#[test]
fn a_pipeline_with_single_files_and_a_clip_vocabulary_matches_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    let source = pipeline_dir("tiny-flux1-dev");
    for entry in walk(&source) {
        let relative = entry.strip_prefix(&source).unwrap();
        let weights = relative.extension().is_some_and(|e| e == "safetensors")
            && (relative.starts_with("transformer") || relative.starts_with("vae"));
        if relative.starts_with("reference") || relative.starts_with("tokenizer/") || weights {
            continue;
        }
        let target = tmp.path().join(relative);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&entry, target).unwrap();
    }
    for (file, folder) in [
        ("flux1-dev.safetensors", "transformer"),
        ("ae.safetensors", "vae"),
    ] {
        std::fs::copy(
            source.join("reference").join(file),
            tmp.path().join(folder).join(file),
        )
        .unwrap();
    }
    std::fs::create_dir(tmp.path().join("tokenizer")).unwrap();
    for file in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
        std::fs::copy(
            component("clip_tokenizer").join(file),
            tmp.path().join("tokenizer").join(file),
        )
        .unwrap();
    }
    let report = videosdgx_engine::loader::verify(tmp.path()).unwrap();
    assert!(report.is_ok(), "{report:#?}");
    let mut pipeline = Pipeline::open(tmp.path(), &Device::Cpu, DType::F32).unwrap();
    let image = generate(
        &mut pipeline,
        "tiny-flux1-dev",
        &params(PROMPT, 3.5, Vec::new()),
    );
    let expected = reference("tiny-flux1-dev", "text_to_image.safetensors", "image");
    assert_close("single files", &image, &expected, PIPELINE_TOLERANCE);

    // A shape the config does not imply is reported through the original name.
    let config_path = tmp.path().join("transformer/config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["joint_attention_dim"] = 24.into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let report = videosdgx_engine::loader::verify(tmp.path()).unwrap();
    let transformer = report
        .components
        .iter()
        .find(|c| c.name == "transformer")
        .unwrap();
    assert!(
        transformer
            .shape_mismatches
            .iter()
            .any(|p| p.tensor == "txt_in.weight (as context_embedder.weight)"),
        "{transformer:#?}"
    );
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|entry| {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

/// A diffusers/PEFT LoRA on every kind of linear layer of FLUX.1, merged and as run-time side
/// paths, against diffusers' `fuse_lora` and PEFT layers.
#[test]
fn flux1_transformer_with_a_peft_lora_matches_diffusers() {
    use videosdgx_engine::lora::{Adaptable, Lora, LoraFile, LoraMode};
    let lora = Lora {
        file: std::sync::Arc::new(
            LoraFile::open(&component("flux1-dev-tiny").join("lora/peft.safetensors")).unwrap(),
        ),
        strength: 0.8,
    };
    let mut model = flux_model("flux1-dev-tiny");
    let inputs = tensors("flux1-dev-tiny", "inputs.safetensors");
    let expected = tensors("flux1-dev-tiny", "lora/reference.safetensors");
    for (mode, key) in [(LoraMode::Merge, "fused"), (LoraMode::Runtime, "unfused")] {
        model.set_loras(std::slice::from_ref(&lora), mode).unwrap();
        let sample = flux_forward(&model, &inputs).unwrap();
        assert_close(
            &format!("lora {key}"),
            &sample,
            &expected[key],
            COMPONENT_TOLERANCE,
        );
    }
}

/// [schnell]'s scheduler (static shift 1, no dynamic shifting: `mu` is ignored) in a copy of
/// the [dev] pipeline.
#[test]
fn flux1_with_the_schnell_scheduler_matches_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    let source = pipeline_dir("tiny-flux1-dev");
    for entry in walk(&source) {
        let relative = entry.strip_prefix(&source).unwrap();
        if !relative.starts_with("reference") {
            let target = tmp.path().join(relative);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(&entry, target).unwrap();
        }
    }
    std::fs::copy(
        source.join("reference/schnell_scheduler_config.json"),
        tmp.path().join("scheduler/scheduler_config.json"),
    )
    .unwrap();
    let mut pipeline = Pipeline::open(tmp.path(), &Device::Cpu, DType::F32).unwrap();
    let image = generate(
        &mut pipeline,
        "tiny-flux1-dev",
        &params(PROMPT, 3.5, Vec::new()),
    );
    let expected = reference("tiny-flux1-dev", "schnell_scheduler.safetensors", "image");
    assert_close("schnell_scheduler", &image, &expected, PIPELINE_TOLERANCE);
    let dynamic = reference("tiny-flux1-dev", "text_to_image.safetensors", "image");
    let moved = relative_error(&expected, &dynamic).unwrap();
    assert!(moved > 1e-2, "the schedules differ by only {moved:e}");
}

/// A diffusers/PEFT LoRA at strength 0.8 on the [dev] pipeline, merged and at run time; the
/// generation records it with its SHA-256, and two strengths (HIGH,LOW) are refused.
#[test]
fn flux1_dev_with_a_lora_matches_diffusers() {
    use videosdgx_engine::lora::{LoraMode, LoraSpec};
    let mut pipeline = open("tiny-flux1-dev");
    let file = pipeline_dir("tiny-flux1-dev").join("reference/peft_lora.safetensors");
    let expected = reference("tiny-flux1-dev", "lora.safetensors", "image");
    for mode in [LoraMode::Merge, LoraMode::Runtime] {
        let mut params = params(PROMPT, 3.5, Vec::new());
        params.loras = vec![
            format!("{}:0.8", file.display())
                .parse::<LoraSpec>()
                .unwrap(),
        ];
        params.lora_mode = mode;
        let inputs = GenerateInputs {
            latents: Some(reference(
                "tiny-flux1-dev",
                "latents.safetensors",
                "latents",
            )),
            ..Default::default()
        };
        let out = pipeline.generate(&params, inputs, &mut quiet).unwrap();
        assert_close(
            &format!("lora {mode:?}"),
            &out.frames.squeeze(0).unwrap(),
            &expected,
            PIPELINE_TOLERANCE,
        );
        assert_eq!(out.loras.len(), 1);
        assert_eq!(out.loras[0].sha256.as_ref().map(String::len), Some(64));
    }
    // Without LoRAs the next generation is the plain model again.
    let plain = generate(
        &mut pipeline,
        "tiny-flux1-dev",
        &params(PROMPT, 3.5, Vec::new()),
    );
    let expected = reference("tiny-flux1-dev", "text_to_image.safetensors", "image");
    assert_close("after the lora", &plain, &expected, PIPELINE_TOLERANCE);

    let mut two = params(PROMPT, 3.5, Vec::new());
    two.loras = vec![
        format!("{}:1,0", file.display())
            .parse::<LoraSpec>()
            .unwrap(),
    ];
    let err = pipeline
        .generate(&two, GenerateInputs::default(), &mut quiet)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("two strengths"), "{err}");
}
