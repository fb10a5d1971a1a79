//! `videosdgx generate`: one video or image from a pipeline directory (any family the engine
//! opens), written as MP4 or PNG (with the generation parameters embedded) and/or as the raw f32
//! tensor the reference returns with `output_type="np"`. Progress goes to stderr; the printed
//! record to stdout. With `--cache`, the record (and the MP4's metadata) lists the steps each
//! guidance branch computed and skipped.

use super::model::{AttentionArg, DTypeArg, LoraModeArg, QuantArg, parse_device};
use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;
use videosdgx_engine::families::ltx2::latent_upsample_pipeline::{
    LTX2LatentUpsamplePipeline, generate_two_stage,
};
use videosdgx_engine::lora::LoraSpec;
use videosdgx_engine::parallel::{Layout, generate_split};
use videosdgx_engine::pipelines::{
    AttentionPrecision, Capabilities, FrameCondition, GenerateInputs, GenerateParams,
    GeneratedVideo, GuidanceTerms, ImageInput, Output, Pipeline, Progress, Quant, Stage,
};
use videosdgx_engine::schedulers::SchedulerKind;
use videosdgx_engine::schedulers::step_cache::CacheSpec;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Pipeline directory (diffusers layout: model_index.json and component folders). For
    /// LTX-2, a downloaded checkpoint (`ltx-2-19b-dev.safetensors`, `-fp8`, `-distilled`) put at
    /// the top of a diffusers LTX-2 folder supplies the transformer's, VAEs' and vocoder's
    /// weights (their folders then need only config.json); pass the folder.
    #[arg(long)]
    pub model: PathBuf,
    /// What to generate; may be left out when --prompt-embeds replaces it.
    #[arg(long, required_unless_present = "prompt_embeds")]
    pub prompt: Option<String>,
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    #[arg(long)]
    pub height: usize,
    #[arg(long)]
    pub width: usize,
    /// Pixel frames, 4k+1 for the Wan VAEs; required for video models (an image model makes
    /// one).
    #[arg(long)]
    pub frames: Option<usize>,
    #[arg(long, required_unless_present = "preset", conflicts_with = "preset")]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (off at 1 or below).
    #[arg(long, required_unless_present = "preset", conflicts_with = "preset")]
    pub guidance: Option<f64>,
    /// Scheduler, shift, timesteps and guidance as published for a distilled model, in one go:
    /// `wan2.1-distill-4step`, `wan2.2-distill-4step` (LightX2V's 4-step models and LoRAs).
    #[arg(long, conflicts_with_all = ["scheduler", "flow_shift", "guidance_2"])]
    pub preset: Option<String>,
    /// Guidance of Wan 2.2's low-noise expert (defaults to --guidance).
    #[arg(long)]
    pub guidance_2: Option<f64>,
    #[arg(long)]
    pub seed: u64,
    /// MP4 (video models) or PNG (image models) to write, the generation parameters embedded.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Initial latents (safetensors, one tensor) instead of the seeded noise (LTX-2 with
    /// `--image`: the noise the image's latents are blended into; with --condition: the video
    /// the conditions are placed in, noised by --noise-scale, 1 by default).
    #[arg(long)]
    pub latents: Option<PathBuf>,
    /// LTX-2: initial audio latents `[1, C, L, M]` (safetensors, one tensor) instead of the
    /// seeded noise.
    #[arg(long)]
    pub audio_latents: Option<PathBuf>,
    /// LTX-2: the noise mixed into --latents (safetensors, one tensor, shaped like them) instead
    /// of the seeded draw; with --condition, the packed noise of every token `[1, tokens, C]`,
    /// the appended keyframes' included (the reference's `randn_tensor` draws).
    #[arg(long, value_name = "FILE")]
    pub noise: Option<PathBuf>,
    /// LTX-2: the noise mixed into --audio-latents `[1, C, L, M]` instead of the seeded draw.
    #[arg(long, value_name = "FILE", requires = "audio_latents")]
    pub audio_noise: Option<PathBuf>,
    /// Prompt embeddings instead of encoding --prompt: a safetensors file with one tensor
    /// `[1, L, text_dim]`, or `prompt_embeds` and `prompt_attention_mask` (LTX-2 needs the mask).
    #[arg(long)]
    pub prompt_embeds: Option<PathBuf>,
    /// Negative prompt embeddings instead of encoding --negative-prompt: one tensor, or
    /// `negative_prompt_embeds` and `negative_prompt_attention_mask`.
    #[arg(long)]
    pub negative_prompt_embeds: Option<PathBuf>,
    /// LTX-2: the frame rate the video is made for and played at (24 by default).
    #[arg(long)]
    pub fps: Option<f64>,
    /// LTX-2: classifier-free guidance of the audio stream (defaults to --guidance).
    #[arg(long, value_name = "SCALE")]
    pub audio_guidance_scale: Option<f64>,
    /// LTX-2: spatio-temporal guidance (a pass with the --spatio-temporal-guidance-blocks'
    /// self-attention skipped; off by default).
    #[arg(long, value_name = "SCALE")]
    pub stg_scale: Option<f64>,
    /// LTX-2: spatio-temporal guidance of the audio stream (defaults to --stg-scale).
    #[arg(long, value_name = "SCALE")]
    pub audio_stg_scale: Option<f64>,
    /// LTX-2: modality guidance (a pass without the audio-video cross-attention; off at 1).
    #[arg(long, value_name = "SCALE")]
    pub modality_scale: Option<f64>,
    /// LTX-2: modality guidance of the audio stream (defaults to --modality-scale).
    #[arg(long, value_name = "SCALE")]
    pub audio_modality_scale: Option<f64>,
    /// LTX-2: rescale of the guided video estimate towards the conditional one's spread (0 off).
    #[arg(long, value_name = "FACTOR")]
    pub guidance_rescale: Option<f64>,
    /// LTX-2: the same for the audio stream (defaults to --guidance-rescale).
    #[arg(long, value_name = "FACTOR")]
    pub audio_guidance_rescale: Option<f64>,
    /// LTX-2: the transformer blocks spatio-temporal guidance perturbs (28 by default).
    #[arg(long, value_delimiter = ',', value_name = "BLOCK,...")]
    pub spatio_temporal_guidance_blocks: Option<Vec<usize>>,
    /// LTX-2: the two-stage generation: stage 1 at the latent upsampler's fraction of --width and
    /// --height (half), the latents enlarged by this upsampler (an `LTX2LatentUpsamplePipeline`
    /// folder or a `latent_upsampler` folder), then refined with the distilled stage-2 sigmas.
    #[arg(long, value_name = "DIR")]
    pub upsampler: Option<PathBuf>,
    /// LTX-2's two-stage generation: a LoRA added for the refinement alone, FILE[:STRENGTH] (1 by
    /// default): the published workflow refines a dev checkpoint with its distilled LoRA
    /// (`ltx-2-19b-distilled-lora-384.safetensors`). Repeatable.
    #[arg(
        long = "refine-lora",
        value_name = "FILE[:STRENGTH]",
        requires = "upsampler"
    )]
    pub refine_loras: Vec<LoraSpec>,
    /// LTX-2: mixes this much fresh noise into --latents/--audio-latents before denoising them
    /// (the reference's `noise_scale`; 0 by default, with --condition the first sigma or 1).
    #[arg(long, value_name = "SCALE", requires = "latents")]
    pub noise_scale: Option<f64>,
    /// An audio-video model's sound as a WAV file (32-bit float).
    #[arg(long, value_name = "FILE.wav")]
    pub wav: Option<PathBuf>,
    /// FLUX.1: T5 tokens per prompt (512 by default; the published [schnell] examples use 256).
    #[arg(long, value_name = "N")]
    pub max_sequence_length: Option<usize>,
    /// FLUX.1: true classifier-free guidance with --negative-prompt at this scale (above 1), on
    /// top of the embedded --guidance (the reference's `true_cfg_scale`).
    #[arg(long, value_name = "SCALE")]
    pub true_cfg: Option<f64>,
    /// FLUX.1: the pooled CLIP embedding (safetensors, one tensor `[1, pooled_dim]`) that goes
    /// with --prompt-embeds (the T5 states).
    #[arg(long, requires = "prompt_embeds")]
    pub pooled_prompt_embeds: Option<PathBuf>,
    /// FLUX.1: the pooled CLIP embedding that goes with --negative-prompt-embeds.
    #[arg(long, requires = "negative_prompt_embeds")]
    pub negative_pooled_prompt_embeds: Option<PathBuf>,
    /// Also write the output as safetensors: key `video`, f32 [frames, height, width, 3] in
    /// [0, 1], or for an image model key `image`, f32 [height, width, 3]; an audio-video model
    /// adds `audio`, the waveform [1, channels, samples] as the pipeline returns it.
    #[arg(long)]
    pub save_tensor: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N`. Several, comma-separated (`cuda:0,cuda:1`), split one
    /// generation across them (Wan models): each card takes a share of the tokens.
    #[arg(long, default_value = "cpu", value_delimiter = ',')]
    pub device: Vec<String>,
    /// With several --device: the conditional and the unconditional pass of classifier-free
    /// guidance on different halves of the cards, the tokens split within each half.
    #[arg(long)]
    pub cfg_parallel: bool,
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// Start frame of an image-to-video model, or a reference image of an image model (FLUX.2:
    /// repeatable, for multi-reference editing; FLUX.1 Kontext: the one image to edit).
    #[arg(long)]
    pub image: Vec<PathBuf>,
    /// LTX-2: frames the video holds to, FILE[:INDEX[:STRENGTH]] (repeatable): an image (a
    /// keyframe) or an MP4 (frames to continue from) at latent frame INDEX (0, the first, by
    /// default; k > 0 is pixel frame 8(k − 1) + 1; −1 the last), as firmly as STRENGTH (1, kept,
    /// by default; lower values guide more loosely).
    #[arg(long = "condition", value_name = "FILE[:INDEX[:STRENGTH]]")]
    pub conditions: Vec<FrameCondition>,
    /// Last frame (first+last-frame checkpoints).
    #[arg(long)]
    pub last_image: Option<PathBuf>,
    /// Overrides the scheduler's flow shift (3.0 suits 480p, 5.0 suits 720p).
    #[arg(long)]
    pub flow_shift: Option<f64>,
    /// Overrides the pipeline's scheduler.
    #[arg(long, value_enum)]
    pub scheduler: Option<SchedulerArg>,
    /// A LoRA applied to the transformer: FILE[:STRENGTH] (strength 1 by default), or
    /// FILE:HIGH,LOW for the two experts of Wan 2.2 A14B. Repeatable.
    #[arg(long = "lora", value_name = "FILE[:STRENGTH]")]
    pub loras: Vec<LoraSpec>,
    /// Merge the LoRAs into the weights, or run them as low-rank side paths of the linear layers.
    #[arg(long, value_enum, default_value_t = LoraModeArg::Merge)]
    pub lora_mode: LoraModeArg,
    /// Keep the linear layers of the transformers' blocks in this format, quantized at load
    /// (fp8: about half the memory of bf16, nvfp4: 0.28×; LoRAs then run as side paths).
    #[arg(long, value_enum)]
    pub quant: Option<QuantArg>,
    /// Compute the transformers' self-attention in float8 (Wan on Hopper: both attention products
    /// at twice the bf16 rate; the 14B forward's output moves about 1%).
    #[arg(long, value_enum, default_value_t = AttentionArg::Exact)]
    pub attention: AttentionArg,
    /// Free the text encoder once the prompts are encoded.
    #[arg(long)]
    pub drop_text_encoder: bool,
    /// Step caching: `teacache`, `magcache` or `easycache`, with an optional threshold
    /// (`teacache:0.08`; defaults 0.2, 0.12, 0.05). Skips transformer work on steps where it would
    /// change little: faster, at some cost in fidelity.
    #[arg(long, value_name = "METHOD[:THRESHOLD]")]
    pub cache: Option<CacheSpec>,
    /// Print the result record as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum SchedulerArg {
    Unipc,
    FlowEuler,
}

/// Prompt embeddings and their mask from `path`: the tensors `{name}` and
/// `{stem}_attention_mask` (`prompt_embeds` + `prompt_attention_mask`, as the reference pipelines
/// name them), or the file's single tensor without a mask.
fn embeddings(path: &Path, flag: &str, name: &str) -> Result<(Tensor, Option<Tensor>)> {
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("{flag}: cannot read {}", path.display()))?;
    let mask_name = format!("{}_attention_mask", name.trim_end_matches("_embeds"));
    match tensors.remove(name) {
        Some(embeds) => Ok((embeds.to_dtype(DType::F32)?, tensors.remove(&mask_name))),
        None if tensors.contains_key(&mask_name) => {
            bail!(
                "{flag}: {} has `{mask_name}` but no `{name}`",
                path.display()
            )
        }
        None => Ok((single_tensor(path, flag)?, None)),
    }
}

/// The single tensor of a safetensors file, named in errors by the flag it came from.
fn single_tensor(path: &Path, flag: &str) -> Result<Tensor> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("{flag}: cannot read {}", path.display()))?;
    let mut values = tensors.into_values();
    match (values.next(), values.next()) {
        (Some(t), None) => Ok(t.to_dtype(DType::F32)?),
        (None, _) => bail!("{flag}: {} holds no tensor", path.display()),
        _ => bail!("{flag}: {} must hold exactly one tensor", path.display()),
    }
}

/// The request `args` make to a model that can do what `capabilities` say.
fn params(args: &GenerateArgs, capabilities: &Capabilities) -> anyhow::Result<GenerateParams> {
    let (frames, start_image, references) = match capabilities.output {
        Output::Image => {
            if args.frames.is_some_and(|f| f != 1) {
                bail!("--frames: {} is an image model", args.model.display());
            }
            let references = args.image.iter().cloned().map(ImageInput::Path).collect();
            (1, None, references)
        }
        Output::Video { .. } => {
            let Some(frames) = args.frames else {
                bail!("--frames is required for a video model");
            };
            let start_image = match args.image.as_slice() {
                [] => None,
                [image] => Some(ImageInput::Path(image.clone())),
                _ => bail!("--image: a video model takes one start frame"),
            };
            (frames, start_image, Vec::new())
        }
    };
    let mut params = GenerateParams {
        prompt: args.prompt.clone().unwrap_or_default(),
        negative_prompt: args.negative_prompt.clone(),
        height: args.height,
        width: args.width,
        frames,
        steps: args.steps.unwrap_or_default(),
        guidance: args.guidance.unwrap_or_default(),
        guidance_2: args.guidance_2,
        seed: args.seed,
        start_image,
        end_image: args.last_image.clone().map(ImageInput::Path),
        flow_shift: args.flow_shift,
        scheduler: args.scheduler.map(|s| match s {
            SchedulerArg::Unipc => SchedulerKind::Unipc,
            SchedulerArg::FlowEuler => SchedulerKind::FlowEuler,
        }),
        loras: args.loras.clone(),
        lora_mode: args.lora_mode.into(),
        refine_loras: args.refine_loras.clone(),
        cache: args.cache,
        quant: args.quant.map(Into::into),
        references,
        max_sequence_length: args.max_sequence_length,
        true_cfg_scale: args.true_cfg,
        fps: args.fps,
        noise_scale: args.noise_scale,
        conditions: args.conditions.clone(),
        guidance_terms: GuidanceTerms {
            audio_guidance_scale: args.audio_guidance_scale,
            stg_scale: args.stg_scale,
            audio_stg_scale: args.audio_stg_scale,
            modality_scale: args.modality_scale,
            audio_modality_scale: args.audio_modality_scale,
            guidance_rescale: args.guidance_rescale,
            audio_guidance_rescale: args.audio_guidance_rescale,
            spatio_temporal_guidance_blocks: args.spatio_temporal_guidance_blocks.clone(),
        },
        ..Default::default()
    };
    if let Some(name) = &args.preset {
        videosdgx_engine::presets::preset(name)?.apply(&mut params);
    }
    Ok(params)
}

/// Wall-clock seconds per stage of a generation, from one stage's first progress report to the
/// next stage's (the GPU work of a stage may finish inside the next one's first moments).
struct StageClock {
    current: Stage,
    since: Instant,
    seconds: Vec<(Stage, f64)>,
}

impl StageClock {
    fn new(first: Stage) -> Self {
        Self {
            current: first,
            since: Instant::now(),
            seconds: Vec::new(),
        }
    }

    fn enter(&mut self, stage: Stage) {
        if stage != self.current {
            self.close();
            self.current = stage;
        }
    }

    fn close(&mut self) {
        let now = Instant::now();
        self.seconds
            .push((self.current, (now - self.since).as_secs_f64()));
        self.since = now;
    }

    /// Seconds by stage: `{"Decoding": s, "Denoising": s, "EncodingPrompt": s, ...}`.
    fn finish(mut self) -> std::collections::BTreeMap<String, f64> {
        self.close();
        let mut by_stage = std::collections::BTreeMap::new();
        for (stage, s) in self.seconds {
            *by_stage.entry(format!("{stage:?}")).or_default() += s;
        }
        by_stage
    }
}

/// The generation on one card: the pipeline's own, or LTX-2's two stages with --upsampler.
fn generate_one_card(
    args: &GenerateArgs,
    pipeline: &mut Pipeline,
    device: &Device,
    params: &GenerateParams,
    inputs: GenerateInputs,
    on_progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
) -> Result<GeneratedVideo> {
    let Some(dir) = &args.upsampler else {
        return pipeline.generate(params, inputs, on_progress);
    };
    let Pipeline::Ltx2(ltx2) = pipeline else {
        bail!(
            "--upsampler: the two-stage generation is LTX-2's; {} is another family",
            args.model.display()
        );
    };
    eprintln!("loading {}", dir.display());
    let upsampler = LTX2LatentUpsamplePipeline::load(dir, device, args.dtype.into())?;
    generate_two_stage(ltx2, &upsampler, params, inputs, on_progress)
}

pub fn run(args: GenerateArgs) -> Result<()> {
    if args.out.is_none() && args.save_tensor.is_none() {
        bail!("nothing to write: give --out VIDEO.mp4 and/or --save-tensor FILE");
    }
    for (path, flag) in [
        (&args.out, "--out"),
        (&args.save_tensor, "--save-tensor"),
        (&args.wav, "--wav"),
    ] {
        if let Some(path) = path {
            super::check_output(path, flag)?;
        }
    }
    // A checkpoint file carries no scheduler, connectors or text encoder: the folder around it does.
    if args.model.is_file()
        && videosdgx_engine::loader::single_file::detect_file(&args.model)?
            == Some(videosdgx_engine::loader::single_file::OriginalLayout::Ltx2)
    {
        bail!(
            "--model {}: an LTX-2 checkpoint file; put it at the top of a diffusers LTX-2 folder (model_index.json, scheduler/, connectors/, text_encoder/, tokenizer/, and config.json in transformer/, vae/, audio_vae/, vocoder/) and pass that folder",
            args.model.display()
        );
    }
    let tensor = |path: &Option<PathBuf>, flag: &str| {
        path.as_deref().map(|p| single_tensor(p, flag)).transpose()
    };
    let (prompt_embeds, prompt_attention_mask) = args
        .prompt_embeds
        .as_deref()
        .map(|p| embeddings(p, "--prompt-embeds", "prompt_embeds"))
        .transpose()?
        .unzip();
    let (negative_prompt_embeds, negative_prompt_attention_mask) = args
        .negative_prompt_embeds
        .as_deref()
        .map(|p| embeddings(p, "--negative-prompt-embeds", "negative_prompt_embeds"))
        .transpose()?
        .unzip();
    let inputs = GenerateInputs {
        latents: tensor(&args.latents, "--latents")?,
        prompt_embeds,
        negative_prompt_embeds,
        prompt_attention_mask: prompt_attention_mask.flatten(),
        negative_prompt_attention_mask: negative_prompt_attention_mask.flatten(),
        audio_latents: tensor(&args.audio_latents, "--audio-latents")?,
        noise: tensor(&args.noise, "--noise")?,
        audio_noise: tensor(&args.audio_noise, "--audio-noise")?,
        pooled_prompt_embeds: tensor(&args.pooled_prompt_embeds, "--pooled-prompt-embeds")?,
        negative_pooled_prompt_embeds: tensor(
            &args.negative_pooled_prompt_embeds,
            "--negative-pooled-prompt-embeds",
        )?,
    };
    let devices = args
        .device
        .iter()
        .map(|spec| parse_device(spec))
        .collect::<Result<Vec<_>>>()?;
    let split = (devices.len() > 1 || args.cfg_parallel)
        .then(|| Layout::new(devices.len(), args.cfg_parallel))
        .transpose()
        .context("--device with --cfg-parallel")?;
    let dtype: DType = args.dtype.into();
    let started = Instant::now();
    let mut stages = StageClock::new(Stage::LoadingModel);
    let mut show = |p: &Progress| {
        eprintln!("{:?} {}/{}", p.stage, p.step, p.total);
        stages.enter(p.stage);
        ControlFlow::Continue(())
    };
    // The attention precision the transformers run in, for the record.
    let attention = std::sync::Mutex::new(AttentionPrecision::Exact);
    let prepare = |pipeline: &mut Pipeline| -> Result<()> {
        pipeline.keep_text_encoder(!args.drop_text_encoder);
        if let Some(quant) = args.quant {
            let layers = pipeline.quantize(quant.into())?;
            eprintln!("{layers} linear layers kept in {}", Quant::from(quant));
        }
        let asked = args.attention.into();
        let applied = pipeline.set_attention_precision(asked);
        *attention.lock().expect("attention record poisoned") = applied;
        if applied != asked {
            eprintln!(
                "--attention fp8: float8 attention runs for Wan models in bf16 on Hopper GPUs; this generation computes attention exactly"
            );
        }
        Ok(())
    };
    eprintln!("loading {}", args.model.display());
    let (capabilities, mut params, video, ranks) = match split {
        Some(layout) => {
            if args.upsampler.is_some() {
                bail!("--upsampler: the two-stage generation runs on one card");
            }
            let capabilities = Pipeline::inspect(&args.model)?;
            let params = params(&args, &capabilities)?;
            let split = generate_split(
                &args.model,
                dtype,
                layout,
                &devices,
                prepare,
                &params,
                inputs,
                &mut show,
            )?;
            (capabilities, params, split.video, Some(split.ranks))
        }
        None => {
            let mut pipeline = Pipeline::open(&args.model, &devices[0], dtype)?;
            prepare(&mut pipeline)?;
            let capabilities = pipeline.capabilities();
            let params = params(&args, &capabilities)?;
            let video = generate_one_card(
                &args,
                &mut pipeline,
                &devices[0],
                &params,
                inputs,
                &mut show,
            )?;
            (capabilities, params, video, None)
        }
    };
    params.attention = *attention.lock().expect("attention record poisoned");
    stages.enter(Stage::Writing);
    // The record names each LoRA by its content too; the last pass's list ends with the
    // refinement's own.
    let (loras, refine_loras) = video
        .loras
        .split_at(params.loras.len().min(video.loras.len()));
    params.loras = loras.to_vec();
    params.refine_loras = refine_loras.to_vec();

    let image = capabilities.output == Output::Image;
    if let Some(path) = &args.save_tensor {
        let (key, tensor) = if image {
            ("image", video.frames.squeeze(0)?)
        } else {
            ("video", video.frames.clone())
        };
        let mut tensors = std::collections::HashMap::from([(key.to_string(), tensor)]);
        if let Some(sound) = &video.audio {
            tensors.insert("audio".into(), sound.to_tensor(&Device::Cpu)?.unsqueeze(0)?);
        }
        candle_core::safetensors::save(&tensors, path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    match (&args.wav, &video.audio) {
        (Some(path), Some(sound)) => sound.write_wav(path)?,
        (Some(_), None) => bail!("--wav: this model makes no sound"),
        (None, _) => {}
    }
    if let Some(path) = &args.out {
        eprintln!("Writing {}", path.display());
        let frames = videosdgx_engine::video::frames_from_tensor(&video.frames)?;
        let mut record = serde_json::json!({ "generate": params, "model": args.model, "dtype": format!("{:?}", args.dtype) });
        if let Some(cache) = &video.cache {
            record["cache"] = serde_json::to_value(cache)?;
        }
        if image {
            videosdgx_engine::video::write_png(path, &frames[0], &record)?;
        } else {
            videosdgx_engine::video::write_mp4_with_audio(
                path,
                &frames,
                video.fps,
                video.audio.as_ref(),
                &record,
            )?;
        }
    }
    let (frames, height, width, _) = video.frames.dims4()?;
    let stage_seconds = stages.finish();
    let mut record = serde_json::json!({
        "out": args.out,
        "tensor": args.save_tensor,
        "frames": frames,
        "height": height,
        "width": width,
        "fps": video.fps,
        "audio": video.audio.as_ref().map(|a| serde_json::json!({
            "sample_rate": a.sample_rate, "channels": a.channels, "seconds": a.duration_s(),
        })),
        "seconds": started.elapsed().as_secs_f64(),
        "stage_seconds": stage_seconds,
        "params": params,
    });
    if let Some(cache) = &video.cache {
        record["cache"] = serde_json::to_value(cache)?;
    }
    if let Some(ranks) = &ranks {
        record["ranks"] = serde_json::to_value(ranks)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        println!(
            "{frames} frames of {width}x{height} in {:.1}s -> {}",
            started.elapsed().as_secs_f64(),
            args.out
                .as_ref()
                .or(args.save_tensor.as_ref())
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    }
    Ok(())
}
