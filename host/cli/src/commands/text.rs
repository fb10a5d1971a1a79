//! `videosdgx generate-text` (token ids in, token ids out: the parity contract with
//! transformers' `generate`) and `videosdgx chat` (a conversation with a language model folder,
//! streamed to stdout).

use super::model::{DTypeArg, QuantArg, parse_device};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use std::ops::ControlFlow;
use std::path::PathBuf;
use videosdgx_engine::text::chat::{ChatModel, ChatOptions};
use videosdgx_engine::text::chat_template::{ChatMessage, ContentPart, MessageContent};
use videosdgx_engine::text::generation::{Prompts, StopAt, generate};
use videosdgx_engine::text::generation_config::GenerationConfig;
use videosdgx_engine::text::model::{LanguageModel, token_rows};
use videosdgx_engine::text::sampling::{Sampler, SamplingParams};

#[derive(Args, Debug)]
pub struct GenerateTextArgs {
    /// Model folder in the transformers layout (config.json, safetensors, generation_config.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Safetensors file with `input_ids` (int64 [B, T], left-padded) and optionally
    /// `attention_mask`.
    #[arg(long)]
    pub input_ids: PathBuf,
    #[arg(long)]
    pub max_new_tokens: usize,
    /// Greedy decoding (`do_sample=False`); otherwise sampled with the model's defaults,
    /// overridden by the options below.
    #[arg(long)]
    pub greedy: bool,
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Seed of the sampler (the same seed gives the same tokens on every run).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Safetensors file to write `sequences` (int64 [B, T + new]) to.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// Keep the decoder layers' projections in this format, quantized at load (a quantized
    /// checkpoint's layers stay so without it).
    #[arg(long, value_enum)]
    pub quant: Option<QuantArg>,
}

pub fn generate_text(args: &GenerateTextArgs) -> Result<()> {
    super::check_output(&args.out, "--out")?;
    let device = parse_device(&args.device)?;
    let inputs = candle_core::safetensors::load(&args.input_ids, &Device::Cpu)
        .with_context(|| format!("cannot read {}", args.input_ids.display()))?;
    let input_ids = inputs
        .get("input_ids")
        .with_context(|| format!("{} has no tensor `input_ids`", args.input_ids.display()))?;
    let input_ids = token_rows(input_ids, "input_ids")?;
    let attention_mask = match inputs.get("attention_mask") {
        Some(mask) => token_rows(mask, "attention_mask")?,
        None => input_ids.iter().map(|row| vec![1; row.len()]).collect(),
    };
    let mut model = LanguageModel::load(&args.model, &device, args.dtype.into())?;
    if let Some(quant) = args.quant {
        model.quantize(quant.into())?;
    }
    let defaults = GenerationConfig::from_dir(&args.model)?;
    let stop = StopAt {
        max_new_tokens: args.max_new_tokens,
        eos_token_ids: defaults.eos_token_ids.clone(),
        pad_token_id: defaults
            .pad_token_id
            .or(defaults.eos_token_ids.first().copied())
            .unwrap_or(0),
    };
    let params = if args.greedy {
        SamplingParams::greedy()
    } else {
        let defaults = defaults.sampling_params(args.seed);
        SamplingParams {
            do_sample: true,
            temperature: args.temperature.unwrap_or(defaults.temperature),
            top_k: args.top_k.unwrap_or(defaults.top_k),
            top_p: args.top_p.unwrap_or(defaults.top_p),
            repetition_penalty: args
                .repetition_penalty
                .unwrap_or(defaults.repetition_penalty),
            seed: args.seed,
        }
    };
    let mut sampler = Sampler::new(params)?;
    let prompts = Prompts {
        input_ids,
        attention_mask,
        pixel_values: None,
        token_type_ids: None,
    };
    let generated = generate(&model, &prompts, &stop, &mut sampler, &mut |_| {
        ControlFlow::Continue(())
    })?;
    let (b, t) = (generated.sequences.len(), generated.sequences[0].len());
    let flat: Vec<i64> = generated
        .sequences
        .concat()
        .into_iter()
        .map(i64::from)
        .collect();
    let sequences = Tensor::from_vec(flat, (b, t), &Device::Cpu)?;
    candle_core::safetensors::save(&[("sequences", sequences)].into_iter().collect(), &args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "{} new tokens per sequence ({:?}) -> {}",
        t - generated.prompt_len,
        generated.finish,
        args.out.display()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    /// Model folder in the transformers layout, with tokenizer.json and a chat template.
    #[arg(long)]
    pub model: PathBuf,
    /// What to ask.
    pub question: String,
    /// A system message before the question.
    #[arg(long)]
    pub system: Option<String>,
    /// An image to show the model with the question (models that see: Gemma 3 4B and larger);
    /// repeat for several.
    #[arg(long)]
    pub image: Vec<PathBuf>,
    /// A JSON Schema file the answer must satisfy (the answer is then that JSON).
    #[arg(long)]
    pub json_schema: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// 0 for greedy decoding; the model's default when left out.
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Ends the answer before this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// Keep the decoder layers' projections in this format, quantized at load.
    #[arg(long, value_enum)]
    pub quant: Option<QuantArg>,
    /// Print the reply as one JSON record instead of streaming its text.
    #[arg(long)]
    pub json: bool,
}

pub fn chat(args: &ChatArgs) -> Result<()> {
    use std::io::Write;
    let device = parse_device(&args.device)?;
    let json_schema = match &args.json_schema {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", path.display()))?,
            )
        }
        None => None,
    };
    let images = args
        .image
        .iter()
        .map(|path| {
            Ok(image::open(path)
                .with_context(|| format!("cannot read image {}", path.display()))?
                .to_rgb8())
        })
        .collect::<Result<Vec<_>>>()?;
    let mut model = ChatModel::load(&args.model, &device, args.dtype.into())?;
    if let Some(quant) = args.quant {
        model.quantize(quant.into())?;
    }
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::text("system", system));
    }
    let question = if images.is_empty() {
        MessageContent::Text(args.question.clone())
    } else {
        let mut parts: Vec<ContentPart> = images.iter().map(|_| ContentPart::Image).collect();
        parts.push(ContentPart::Text {
            text: args.question.clone(),
        });
        MessageContent::Parts(parts)
    };
    messages.push(ChatMessage {
        role: "user".into(),
        content: question,
        extra: Default::default(),
    });
    let options = ChatOptions {
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        seed: args.seed,
        stop: args.stop.clone(),
        json_schema,
        ..ChatOptions::default()
    };
    let mut stdout = std::io::stdout().lock();
    let streaming = !args.json;
    let reply = model.chat(&messages, &images, &options, &mut |piece| {
        if streaming {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
        ControlFlow::Continue(())
    })?;
    if args.json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&reply)?)?;
    } else {
        writeln!(stdout)?;
    }
    Ok(())
}
