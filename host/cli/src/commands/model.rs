//! `videosdgx model ...`: run one model component on tensors from a safetensors file, for parity
//! checks against the reference and for debugging checkpoints. The component is chosen by the class
//! its config names; nothing here knows any model's dimensions.

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use clap::{Args, Subcommand, ValueEnum};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use videosdgx_engine::families::flux::transformer::FluxTransformer2DModel;
use videosdgx_engine::families::flux2::transformer::Flux2Transformer2DModel;
use videosdgx_engine::families::flux2::vae::AutoencoderKLFlux2;
use videosdgx_engine::families::ltx2::audio_vae::AutoencoderKLLTX2Audio;
use videosdgx_engine::families::ltx2::connectors::{LTX2TextConnectors, PaddingSide};
use videosdgx_engine::families::ltx2::latent_upsampler::LTX2LatentUpsamplerModel;
use videosdgx_engine::families::ltx2::transformer::{
    LTX2TransformerInputs, LTX2VideoTransformer3DModel,
};
use videosdgx_engine::families::ltx2::video_vae::AutoencoderKLLTX2Video;
use videosdgx_engine::families::ltx2::vocoder::{LTX2Vocoder, LTX2VocoderWithBWE};
use videosdgx_engine::families::wan::transformer::WanTransformer3DModel;
use videosdgx_engine::families::wan::vae::AutoencoderKLWan;
use videosdgx_engine::finishing::{self, interpolate::Rife, upscale::Upscaler};
use videosdgx_engine::loader::single_file::{self, OriginalLayout};
use videosdgx_engine::loader::{ComponentClass, StateDict, component_class};
use videosdgx_engine::lora::{Adaptable, Lora, LoraFile, LoraMode, LoraSpec};
use videosdgx_engine::models::quant::quantize_blocks;
use videosdgx_engine::models::{
    autoencoder_kl::AutoencoderKL, clip_text::CLIPTextModel, clip_vision::CLIPVisionModel,
    t5::T5EncoderModel,
};
use videosdgx_engine::pipelines::{AttentionPrecision, Quant};
use videosdgx_engine::text::decoder::{HiddenStates, Logits};
use videosdgx_engine::text::model::{LanguageModel, ModelInput};

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Run one component forward: inputs and outputs are named tensors in safetensors files.
    ///
    /// WanTransformer3DModel: hidden_states, timestep, encoder_hidden_states
    /// [, encoder_hidden_states_image] -> sample. Flux2Transformer2DModel: hidden_states,
    /// encoder_hidden_states, timestep (t / 1000, as the pipelines pass it), img_ids, txt_ids (f32
    /// or integer) [, guidance] -> sample. FluxTransformer2DModel: the same plus
    /// pooled_projections (ids [L, 3]). LTX2VideoTransformer3DModel: hidden_states,
    /// audio_hidden_states, encoder_hidden_states, audio_encoder_hidden_states, timestep ([B] or
    /// [B, tokens]), num_frames, height, width, audio_num_frames (one-element tensors) [, fps
    /// (24), audio_timestep, sigma, audio_sigma, encoder_attention_mask,
    /// audio_encoder_attention_mask, video_coords, audio_coords, use_cross_timestep,
    /// isolate_modalities, spatio_temporal_guidance_blocks, perturbation_mask,
    /// video_keyframes_mask, video_self_attention_mask] -> sample, audio_sample. UMT5EncoderModel, T5EncoderModel: input_ids,
    /// attention_mask -> last_hidden_state. CLIPTextModel: input_ids -> last_hidden_state,
    /// pooler_output. CLIPVisionModel: pixel_values -> last_hidden_state,
    /// penultimate_hidden_state, pooler_output. AutoencoderKLWan, AutoencoderKL,
    /// AutoencoderKLFlux2, AutoencoderKLLTX2Video, AutoencoderKLLTX2Audio: latents [, timestep for
    /// a timestep-conditioned LTX-2 decoder] -> sample (decode; the image and LTX-2 VAEs' sample is
    /// not clamped; the audio VAE's is a mel spectrogram), or with --method encode: sample ->
    /// latents (posterior mode, unnormalised). LTX2Vocoder, LTX2VocoderWithBWE: hidden_states (mel
    /// spectrogram [B, C, frames, mel_bins]) -> sample (waveform [B, channels, samples]).
    /// Qwen3ForCausalLM,
    /// Gemma3ForCausalLM, Gemma3ForConditionalGeneration: input_ids, attention_mask
    /// [, pixel_values, token_type_ids] -> logits [, hidden_states with --hidden-states].
    /// LTX2TextConnectors: text_encoder_hidden_states ([B, L, channels, layers] or packed
    /// [B, L, channels * layers]), attention_mask [B, L] -> video_text_embedding,
    /// audio_text_embedding, attention_mask (left padding, scale factor 8: the reference's
    /// defaults). LTX2LatentUpsamplerModel: hidden_states [B, C, F, H, W] -> sample.
    ///
    /// A FILE instead of a folder is a FLUX.1 or FLUX.2 transformer or FLUX.1's VAE in the
    /// original release's names (`flux1-dev.safetensors`, `flux2-dev.safetensors`,
    /// `ae.safetensors`: config read from the shapes), an LTX-2 checkpoint
    /// (`ltx-2-19b-dev.safetensors`, `-distilled`, `-fp8`) with --component naming the part to
    /// run (each part's config from `<part>/config.json` of a diffusers LTX-2 folder the file
    /// lies in, else the published model's), LTX-2's spatial upscaler
    /// (`ltx-2-spatial-upscaler-x2-1.0.safetensors`), or a
    /// bare state dict (safetensors or a PyTorch .pth), its
    /// architecture read from the keys as spandrel does. Upscalers (ESRGAN, RealESRGAN Compact,
    /// SwinIR): image [B, 3, H, W] in [0, 1] -> image [B, 3, H*scale, W*scale], in tiles with
    /// --tile.
    Forward(ForwardArgs),
}

#[derive(Args, Debug)]
pub struct ForwardArgs {
    /// Component folder (config.json + safetensors weights), or a finishing model's state-dict
    /// file.
    #[arg(long)]
    pub model: PathBuf,
    /// Safetensors file with the named input tensors.
    #[arg(long)]
    pub inputs: PathBuf,
    /// Safetensors file to write the outputs to (f32).
    #[arg(long)]
    pub out: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Dtype the weights and activations run in.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// For VAEs (AutoencoderKLWan, AutoencoderKL, AutoencoderKLFlux2, AutoencoderKLLTX2Video,
    /// AutoencoderKLLTX2Audio):
    /// decode latents (default) or encode a sample.
    #[arg(long, value_enum, default_value_t = Method::Decode)]
    pub method: Method,
    /// For language models: also write `hidden_states`, every layer's output stacked as
    /// [layers + 1, B, T, hidden] (transformers' `output_hidden_states=True`).
    #[arg(long)]
    pub hidden_states: bool,
    /// For diffusion transformers: a LoRA applied before the forward, FILE[:STRENGTH] (strength
    /// 1 by default). Repeatable; kohya, diffusers/PEFT and ComfyUI/LightX2V files.
    #[arg(long = "lora", value_name = "FILE[:STRENGTH]")]
    pub loras: Vec<LoraSpec>,
    /// Merge the LoRAs into the weights, or run them as low-rank side paths of the linear layers.
    #[arg(long, value_enum, default_value_t = LoraModeArg::Merge)]
    pub lora_mode: LoraModeArg,
    /// For diffusion transformers and language models: keep the linear layers of the blocks (the
    /// decoder layers' projections) in this format, quantized at load (a quantized checkpoint's
    /// layers stay so without it).
    #[arg(long, value_enum)]
    pub quant: Option<QuantArg>,
    /// For upscalers: run in tiles of N x N input pixels (batched, overlapping by the model's
    /// receptive field, at most 32 pixels) instead of the whole frame at once.
    #[arg(long, value_name = "N")]
    pub tile: Option<usize>,
    /// For an LTX-2 checkpoint file: the component to run.
    #[arg(long, value_enum)]
    pub component: Option<Ltx2Component>,
    /// Print the written outputs as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The components of an LTX-2 checkpoint file.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ltx2Component {
    Transformer,
    Vae,
    #[value(name = "audio_vae")]
    AudioVae,
    Vocoder,
    Connectors,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum LoraModeArg {
    Merge,
    Runtime,
}

impl From<LoraModeArg> for LoraMode {
    fn from(mode: LoraModeArg) -> LoraMode {
        match mode {
            LoraModeArg::Merge => LoraMode::Merge,
            LoraModeArg::Runtime => LoraMode::Runtime,
        }
    }
}

/// Weight formats a transformer can be quantized to at load.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantArg {
    /// float8 e4m3, one scale per output channel.
    Fp8,
    /// 4-bit e2m1, an e4m3 scale per 16 values and one per tensor (weight-only on Hopper).
    Nvfp4,
}

/// What self-attention is computed in (`--attention`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum AttentionArg {
    /// The model's own dtype.
    #[default]
    Exact,
    /// q, k, v and the probabilities in float8 e4m3 (Hopper; the Wan 14B forward
    /// moves about 1%).
    Fp8,
}

impl From<AttentionArg> for AttentionPrecision {
    fn from(arg: AttentionArg) -> AttentionPrecision {
        match arg {
            AttentionArg::Exact => AttentionPrecision::Exact,
            AttentionArg::Fp8 => AttentionPrecision::Fp8,
        }
    }
}

impl From<QuantArg> for Quant {
    fn from(quant: QuantArg) -> Quant {
        match quant {
            QuantArg::Fp8 => Quant::Fp8,
            QuantArg::Nvfp4 => Quant::Nvfp4,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum DTypeArg {
    F32,
    Bf16,
}

impl From<DTypeArg> for DType {
    fn from(dtype: DTypeArg) -> DType {
        match dtype {
            DTypeArg::F32 => DType::F32,
            DTypeArg::Bf16 => DType::BF16,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Decode,
    Encode,
}

pub fn run(command: ModelCommand) -> Result<()> {
    match command {
        ModelCommand::Forward(args) => forward(&args),
    }
}

/// The class of the part of an LTX-2 checkpoint that --component names.
fn ltx2_component(args: &ForwardArgs) -> Result<(ComponentClass, String)> {
    let layout = match args.component {
        None => bail!(
            "{} is an LTX-2 checkpoint: choose its part with --component transformer|vae|audio_vae|vocoder",
            args.model.display()
        ),
        Some(Ltx2Component::Transformer) => OriginalLayout::Ltx2Transformer,
        Some(Ltx2Component::Vae) => OriginalLayout::Ltx2VideoVae,
        Some(Ltx2Component::AudioVae) => OriginalLayout::Ltx2AudioVae,
        Some(Ltx2Component::Vocoder) => OriginalLayout::Ltx2Vocoder,
        // diffusers' `from_single_file` has no map for them either.
        Some(Ltx2Component::Connectors) => bail!(
            "--component connectors: the text connectors are not read from an LTX-2 checkpoint file (diffusers' from_single_file does not map them); run the connectors/ folder of a diffusers LTX-2 pipeline"
        ),
    };
    let class_name = layout.class_name();
    let class = ComponentClass::from_class_name(class_name).context("an LTX-2 component class")?;
    Ok((class, class_name.to_string()))
}

/// Parses `cpu`, `cuda`, `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    let ordinal = match spec {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .with_context(|| format!("unknown device `{spec}`; use cpu, cuda or cuda:N"))?,
    };
    Device::new_cuda(ordinal).with_context(|| format!("cannot open device `{spec}`"))
}

fn forward(args: &ForwardArgs) -> Result<()> {
    super::check_output(&args.out, "--out")?;
    let device = parse_device(&args.device)?;
    let dtype = args.dtype.into();
    let layout = if args.model.is_file() {
        single_file::detect_file(&args.model)?
    } else {
        None
    };
    if args.component.is_some() && layout != Some(OriginalLayout::Ltx2) {
        bail!(
            "--component: {} is not an LTX-2 checkpoint file (ltx-2-19b-dev.safetensors and the like)",
            args.model.display()
        );
    }
    let (class, class_name) = if args.model.is_file() {
        // A model in its original release's names (`flux1-dev.safetensors`,
        // `ltx-2-19b-dev.safetensors`, `wan2.1_t2v_14B_fp8_scaled.safetensors`), else a finishing
        // model's state dict.
        match layout {
            Some(OriginalLayout::Flux1Transformer) => (
                ComponentClass::FluxTransformer2DModel,
                "FluxTransformer2DModel".to_string(),
            ),
            Some(OriginalLayout::Flux2Transformer) => (
                ComponentClass::Flux2Transformer2DModel,
                "Flux2Transformer2DModel".to_string(),
            ),
            Some(OriginalLayout::LdmVae) => {
                (ComponentClass::AutoencoderKL, "AutoencoderKL".to_string())
            }
            Some(OriginalLayout::Ltx2) => ltx2_component(args)?,
            Some(OriginalLayout::Ltx2LatentUpsampler) => (
                ComponentClass::LTX2LatentUpsamplerModel,
                "LTX2LatentUpsamplerModel".to_string(),
            ),
            Some(OriginalLayout::WanTransformer) => (
                ComponentClass::WanTransformer3DModel,
                "WanTransformer3DModel".to_string(),
            ),
            Some(component) => bail!(
                "{}: a lone {} in the original layout, which this command does not read",
                args.model.display(),
                component.class_name()
            ),
            None => return forward_state_dict(args, &device, dtype),
        }
    } else {
        component_class(&args.model)?
    };
    if args.tile.is_some() {
        bail!(
            "--tile: {class_name} does not run in tiles (upscalers do: a state-dict file as --model)"
        );
    }
    let inputs = read_inputs(&args.inputs, &device)?;
    let input = |name: &str| input(&inputs, &args.inputs, name, &class_name);

    let adaptable = matches!(
        class,
        ComponentClass::WanTransformer3DModel
            | ComponentClass::Flux2Transformer2DModel
            | ComponentClass::FluxTransformer2DModel
            | ComponentClass::LTX2VideoTransformer3DModel
    );
    if !args.loras.is_empty() && !adaptable {
        bail!(
            "--lora: {class_name} takes no LoRA (LoRAs adapt diffusion transformers: WanTransformer3DModel, FluxTransformer2DModel, Flux2Transformer2DModel, LTX2VideoTransformer3DModel)"
        );
    }
    if args.quant.is_some() && !adaptable && !matches!(class, ComponentClass::LanguageModel(_)) {
        bail!(
            "--quant: {class_name} is not quantized (quantization is for diffusion transformers: WanTransformer3DModel, FluxTransformer2DModel, Flux2Transformer2DModel, LTX2VideoTransformer3DModel; and language models)"
        );
    }
    let loras = open_loras(&args.loras)?;

    let started = std::time::Instant::now();
    let outputs: Vec<(&str, Tensor)> = match class {
        ComponentClass::WanTransformer3DModel => {
            let mut model = WanTransformer3DModel::load(&args.model, &device, dtype)?;
            adapt(&mut model, &loras, args)?;
            let sample = model.forward(
                input("hidden_states")?,
                input("timestep")?,
                input("encoder_hidden_states")?,
                inputs.get("encoder_hidden_states_image"),
            )?;
            vec![("sample", sample)]
        }
        ComponentClass::Flux2Transformer2DModel => {
            let mut model = Flux2Transformer2DModel::load(&args.model, &device, dtype)?;
            adapt(&mut model, &loras, args)?;
            let sample = model.forward(
                input("hidden_states")?,
                input("encoder_hidden_states")?,
                input("timestep")?,
                input("img_ids")?,
                input("txt_ids")?,
                inputs.get("guidance"),
            )?;
            vec![("sample", sample)]
        }
        ComponentClass::FluxTransformer2DModel => {
            let mut model = FluxTransformer2DModel::load(&args.model, &device, dtype)?;
            adapt(&mut model, &loras, args)?;
            let sample = model.forward(
                input("hidden_states")?,
                input("encoder_hidden_states")?,
                input("pooled_projections")?,
                input("timestep")?,
                input("img_ids")?,
                input("txt_ids")?,
                inputs.get("guidance"),
            )?;
            vec![("sample", sample)]
        }
        ComponentClass::LTX2VideoTransformer3DModel => {
            for name in [
                "hidden_states",
                "audio_hidden_states",
                "encoder_hidden_states",
                "audio_encoder_hidden_states",
                "timestep",
            ] {
                input(name)?;
            }
            let mut model = LTX2VideoTransformer3DModel::load(&args.model, &device, dtype)?;
            adapt(&mut model, &loras, args)?;
            let (sample, audio_sample) =
                model.forward(&LTX2TransformerInputs::from_named(&inputs)?)?;
            vec![("sample", sample), ("audio_sample", audio_sample)]
        }
        ComponentClass::UMT5EncoderModel | ComponentClass::T5EncoderModel => {
            let model = T5EncoderModel::load(&args.model, &device, dtype)?;
            let hidden = model.forward(input("input_ids")?, input("attention_mask")?)?;
            vec![("last_hidden_state", hidden)]
        }
        ComponentClass::CLIPTextModel => {
            let model = CLIPTextModel::load(&args.model, &device, dtype)?;
            let out = model.forward(input("input_ids")?)?;
            vec![
                ("last_hidden_state", out.last_hidden_state),
                ("pooler_output", out.pooler_output),
            ]
        }
        ComponentClass::CLIPVisionModel => {
            let model = CLIPVisionModel::load(&args.model, &device, dtype)?;
            let out = model.forward(input("pixel_values")?)?;
            vec![
                ("last_hidden_state", out.last_hidden_state),
                ("penultimate_hidden_state", out.penultimate_hidden_state),
                ("pooler_output", out.pooler_output),
            ]
        }
        ComponentClass::AutoencoderKLWan => {
            let vae = AutoencoderKLWan::load(&args.model, &device, dtype)?;
            match args.method {
                Method::Decode => vec![("sample", vae.decode(input("latents")?)?)],
                Method::Encode => vec![("latents", vae.encode(input("sample")?)?)],
            }
        }
        ComponentClass::AutoencoderKL => {
            let vae = AutoencoderKL::load(&args.model, &device, dtype)?;
            match args.method {
                Method::Decode => vec![("sample", vae.decode(input("latents")?)?)],
                Method::Encode => vec![("latents", vae.encode(input("sample")?)?)],
            }
        }
        ComponentClass::AutoencoderKLFlux2 => {
            let vae = AutoencoderKLFlux2::load(&args.model, &device, dtype)?;
            match args.method {
                Method::Decode => vec![("sample", vae.decode(input("latents")?)?)],
                Method::Encode => vec![("latents", vae.encode(input("sample")?)?)],
            }
        }
        ComponentClass::LTX2TextConnectors => {
            let connectors = LTX2TextConnectors::load(&args.model, &device, dtype)?;
            let out = connectors.forward(
                input("text_encoder_hidden_states")?,
                input("attention_mask")?,
                PaddingSide::Left,
                8.0,
            )?;
            vec![
                ("video_text_embedding", out.video_text_embedding),
                ("audio_text_embedding", out.audio_text_embedding),
                ("attention_mask", out.attention_mask),
            ]
        }
        ComponentClass::LTX2LatentUpsamplerModel => {
            let upsampler = LTX2LatentUpsamplerModel::load(&args.model, &device, dtype)?;
            vec![("sample", upsampler.forward(input("hidden_states")?)?)]
        }
        ComponentClass::AutoencoderKLLTX2Video => {
            let vae = AutoencoderKLLTX2Video::load(&args.model, &device, dtype)?;
            match args.method {
                Method::Decode => vec![(
                    "sample",
                    vae.decode(input("latents")?, inputs.get("timestep"))?,
                )],
                Method::Encode => vec![("latents", vae.encode(input("sample")?)?)],
            }
        }
        ComponentClass::AutoencoderKLLTX2Audio => {
            let vae = AutoencoderKLLTX2Audio::load(&args.model, &device, dtype)?;
            match args.method {
                Method::Decode => vec![("sample", vae.decode(input("latents")?)?)],
                Method::Encode => vec![("latents", vae.encode(input("sample")?)?)],
            }
        }
        ComponentClass::LTX2Vocoder => {
            let vocoder = LTX2Vocoder::load(&args.model, &device, dtype)?;
            vec![("sample", vocoder.forward(input("hidden_states")?)?)]
        }
        ComponentClass::LTX2VocoderWithBWE => {
            let vocoder = LTX2VocoderWithBWE::load(&args.model, &device, dtype)?;
            vec![("sample", vocoder.forward(input("hidden_states")?)?)]
        }
        ComponentClass::LanguageModel(_) => {
            let mut model = LanguageModel::load(&args.model, &device, dtype)?;
            if let Some(quant) = args.quant {
                model.quantize(quant.into())?;
            }
            let hidden = if args.hidden_states {
                HiddenStates::All
            } else {
                HiddenStates::None
            };
            let input = ModelInput {
                input_ids: input("input_ids")?,
                attention_mask: inputs.get("attention_mask"),
                pixel_values: inputs.get("pixel_values"),
                token_type_ids: inputs.get("token_type_ids"),
            };
            let out = model.forward(&input, &hidden, Logits::All)?;
            let mut outputs = vec![(
                "logits",
                out.logits.expect("the head runs for all positions"),
            )];
            if args.hidden_states {
                outputs.push(("hidden_states", Tensor::stack(&out.hidden_states, 0)?));
            }
            outputs
        }
        ComponentClass::Tokenizer | ComponentClass::Scheduler | ComponentClass::ImageProcessor => {
            bail!("{}: {class_name} has no forward pass", args.model.display())
        }
    };
    let elapsed = started.elapsed();
    // Hashing the LoRA files is only worth it for the JSON record.
    let details = if args.json {
        let loras = loras
            .iter()
            .map(|lora| {
                Ok(serde_json::json!({
                    "path": lora.file.path(),
                    "sha256": lora.file.sha256()?,
                    "strength": lora.strength,
                    "format": lora.file.format(),
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        serde_json::json!({ "loras": loras })
    } else {
        serde_json::Value::Null
    };
    report(args, &class_name, elapsed, &outputs, details)
}

/// `--model FILE`: a bare state dict, dispatched on the kind of finishing model its keys show.
fn forward_state_dict(args: &ForwardArgs, device: &Device, dtype: DType) -> Result<()> {
    if !args.loras.is_empty() {
        bail!("--lora: LoRAs adapt diffusion transformers (a component folder as --model)");
    }
    let dict = StateDict::open(&args.model)?;
    let kind = finishing::Kind::detect(&dict)?;
    let inputs = read_inputs(&args.inputs, device)?;
    let started = std::time::Instant::now();
    let (name, outputs, details) = match kind {
        finishing::Kind::Upscaler(architecture) => {
            let model = Upscaler::from_state_dict(&dict, device, dtype)?;
            let image = input(&inputs, &args.inputs, "image", architecture.name())?;
            let details = serde_json::json!({
                "architecture": model.architecture(),
                "scale": model.scale(),
                "tile": args.tile,
            });
            let image = model.upscale(image, args.tile)?;
            (
                model.architecture().to_string(),
                vec![("image", image)],
                details,
            )
        }
        finishing::Kind::Interpolator => {
            if args.tile.is_some() {
                bail!("--tile: RIFE does not run in tiles (upscalers do)");
            }
            let rife = Rife::from_state_dict(&dict, device, dtype)?;
            let name = format!("RIFE {}", rife.version());
            let input = |tensor: &str| input(&inputs, &args.inputs, tensor, &name);
            let timestep = input("timestep")?.to_dtype(DType::F32)?.flatten_all()?;
            let [timestep] = timestep.to_vec1::<f32>()?[..] else {
                bail!("`timestep` must hold one value, not {:?}", timestep.dims());
            };
            let image = rife.forward(input("img0")?, input("img1")?, timestep)?;
            let details = serde_json::json!({ "version": rife.version() });
            (name, vec![("image", image)], details)
        }
    };
    report(args, &name, started.elapsed(), &outputs, details)
}

fn read_inputs(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device)
        .with_context(|| format!("cannot read inputs {}", path.display()))
}

/// Input `name` of the inputs file, or an error saying which model needed it.
fn input<'a>(
    inputs: &'a HashMap<String, Tensor>,
    path: &Path,
    name: &str,
    needed_by: &str,
) -> Result<&'a Tensor> {
    inputs.get(name).with_context(|| {
        format!(
            "{} has no tensor `{name}` (needed by {needed_by})",
            path.display()
        )
    })
}

/// Writes the outputs and prints them: one line each, or a JSON record with `details` merged in.
fn report(
    args: &ForwardArgs,
    class_name: &str,
    elapsed: std::time::Duration,
    outputs: &[(&str, Tensor)],
    details: serde_json::Value,
) -> Result<()> {
    write_outputs(&args.out, outputs)?;
    if args.json {
        let mut record = serde_json::json!({
            "class": class_name,
            "out": args.out,
            "seconds": elapsed.as_secs_f64(),
            "outputs": outputs
                .iter()
                .map(|(name, t)| serde_json::json!({ "name": name, "shape": t.dims() }))
                .collect::<Vec<_>>(),
        });
        if let (Some(record), serde_json::Value::Object(details)) =
            (record.as_object_mut(), details)
        {
            record.extend(details);
        }
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        for (name, t) in outputs {
            println!("{name}\t{:?}", t.dims());
        }
        println!(
            "{class_name} forward in {:.2}s -> {}",
            elapsed.as_secs_f64(),
            args.out.display()
        );
    }
    Ok(())
}

/// Quantizes a diffusion transformer as `--quant` asks, then applies the LoRAs.
fn adapt(model: &mut impl Adaptable, loras: &[Lora], args: &ForwardArgs) -> Result<()> {
    if let Some(quant) = args.quant {
        quantize_blocks(model, quant.into())?;
    }
    model.set_loras(loras, args.lora_mode.into())?;
    Ok(())
}

/// Opens each `--lora` file; one component takes one strength per LoRA.
fn open_loras(specs: &[LoraSpec]) -> Result<Vec<Lora>> {
    specs
        .iter()
        .map(|spec| {
            if spec.strength_2.is_some() {
                bail!(
                    "--lora {}: HIGH,LOW strengths are for two-expert pipelines (videosdgx generate); give one strength",
                    spec.path.display()
                );
            }
            Ok(Lora {
                file: Arc::new(LoraFile::open(&spec.path)?),
                strength: spec.strength,
            })
        })
        .collect()
}

fn write_outputs(path: &Path, outputs: &[(&str, Tensor)]) -> Result<()> {
    let tensors = outputs
        .iter()
        .map(|(name, t)| {
            Ok((
                name.to_string(),
                t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
            ))
        })
        .collect::<Result<HashMap<String, Tensor>>>()?;
    candle_core::safetensors::save(&tensors, path)
        .with_context(|| format!("cannot write {}", path.display()))
}
