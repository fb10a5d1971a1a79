//! Generating a shot's video: the shot's model is looked up among the installed ones, the shot
//! becomes the engine's `GenerateParams`, the Wan pipeline runs on the GPU lane, and the output
//! is recorded as an asset, a generation record (every parameter needed to reproduce it) and a
//! take of the shot. The pipeline stays resident on the GPU lane ([`crate::gpu`]) for the next
//! shot until a job needs another model.

use crate::app::App;
use crate::assets::{Asset, MediaKind, NewAsset, get_asset};
use crate::db::{Db, now_ms, rfc3339};
use crate::error::{Result, StudioError};
use crate::gpu::{Generated, Gpus};
use crate::jobs::{JobContext, JobRunner, Lane};
use crate::loras::{self, AppliedLora};
use crate::models;
use crate::shots::{self, Shot, ShotFields};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use utoipa::ToSchema;
use videosdgx_engine::lora::LoraSpec;
use videosdgx_engine::parallel::{Layout, RankTime, SplitGeneration, generate_split_on};
use videosdgx_engine::pipelines::{
    AttentionPrecision, Cancelled, GenerateParams, GeneratedVideo, ImageInput, Pipeline, Progress,
    Quant, Stage, StartImage, VideoSize,
};
use videosdgx_engine::schedulers::step_cache::CacheSpec;

/// The model a shot is generated with: its own, else the only installed video model.
fn shot_model(data_dir: &Path, shot: &Shot) -> Result<String> {
    if let Some(model) = shot.model.as_deref().filter(|m| !m.is_empty()) {
        return Ok(model.to_string());
    }
    models::only_video_model(
        data_dir,
        &format!("shot {} has no model and", shot.position + 1),
    )
}

/// A recorded generation: what produced an output, enough to produce it again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Generation {
    pub id: i64,
    pub job_id: Option<i64>,
    pub shot_id: Option<i64>,
    pub asset_id: Option<i64>,
    pub model: String,
    /// `generate` (a model made it from a prompt) or `finish` (another video upscaled and
    /// retimed; `params` holds the finish).
    pub kind: String,
    /// The engine's parameters (prompt, size, frames, steps, guidance, seed, ...), or the
    /// finish's (target, source, models and their SHA-256).
    #[schema(value_type = Object)]
    pub params: Value,
    pub engine_version: String,
    /// The LoRAs applied, with where each was chosen (project, character, shot).
    pub loras: Vec<AppliedLora>,
    /// How it was laid out across cards.
    pub layout: GenerationLayout,
    pub created_at: String,
}

/// How a generation was laid out across the studio's cards: how it was computed, which `params`
/// (what it computed) leave out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GenerationLayout {
    /// The cards it ran on at once (the render setting; 1: one card).
    pub split_cards: usize,
    /// Whether half of them computed the unconditional guidance branch.
    pub cfg_parallel: bool,
    /// Each card's time when it was split, in rank order: `device` (the card), `seconds` (its
    /// pipeline's loading excluded) and `exchange` (`exchanges` and the `ms` they took); empty on
    /// one card.
    #[schema(value_type = Vec<Object>)]
    pub ranks: Vec<RankTime>,
}

impl GenerationLayout {
    /// The layout of a generation split by `split` (`None`: on one card) whose ranks took `ranks`.
    fn of(split: Option<Layout>, ranks: Vec<RankTime>) -> Self {
        GenerationLayout {
            split_cards: split.map_or(1, |layout| layout.ranks()),
            cfg_parallel: split.is_some_and(|layout| layout.cfg),
            ranks,
        }
    }

    /// Read from a row holding the `generations` columns `split_cards`, `cfg_parallel`, `ranks`.
    pub(crate) fn from_row(row: &rusqlite::Row) -> rusqlite::Result<Self> {
        let ranks: String = row.get("ranks")?;
        Ok(GenerationLayout {
            split_cards: row.get::<_, i64>("split_cards")? as usize,
            cfg_parallel: row.get("cfg_parallel")?,
            ranks: serde_json::from_str(&ranks).unwrap_or_default(),
        })
    }
}

pub fn get_generation(db: &Db, id: i64) -> Result<Generation> {
    db.with(|c| {
        c.query_row("SELECT * FROM generations WHERE id = ?1", [id], |row| {
            let params: String = row.get("params")?;
            let loras: String = row.get("loras")?;
            Ok(Generation {
                id: row.get("id")?,
                job_id: row.get("job_id")?,
                shot_id: row.get("shot_id")?,
                asset_id: row.get("asset_id")?,
                model: row.get("model")?,
                kind: row.get("kind")?,
                params: serde_json::from_str(&params).unwrap_or(Value::String(params)),
                engine_version: row.get("engine_version")?,
                loras: serde_json::from_str(&loras).unwrap_or_default(),
                layout: GenerationLayout::from_row(row)?,
                created_at: rfc3339(row.get("created_at")?),
            })
        })
        .optional()?
        .ok_or_else(|| StudioError::not_found("generation", id))
    })
}

/// How to render: size, denoising steps and guidance, with the Wan pipelines' defaults.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RenderSettings {
    pub height: usize,
    pub width: usize,
    pub steps: usize,
    /// Classifier-free guidance scale (off at 1 or below).
    pub guidance: f64,
    /// A named schedule for a distilled model (`wan2.1-distill-4step`, ...), which sets the
    /// steps, shift and guidance itself (`videosdgx_engine::presets`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Step caching, `METHOD[:THRESHOLD]` (`teacache`, `magcache`, `easycache`; the method's
    /// published threshold when none is given): skips transformer evaluations whose output
    /// barely changes (`videosdgx_engine::schedulers::step_cache`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// The video model's block weights kept in this format (`fp8`: about half the memory,
    /// `nvfp4`: 0.28×; the engine's `--quant`); as loaded when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "fp8")]
    pub quant: Option<Quant>,
    /// The video model's self-attention in float8 (`fp8`: Wan on Hopper GPUs, both attention
    /// products at twice the bf16 rate; the 14B forward's output moves about 1%); exact when
    /// absent.
    #[serde(default, skip_serializing_if = "AttentionPrecision::is_exact")]
    #[schema(value_type = Option<String>, example = "fp8")]
    pub attention: AttentionPrecision,
    /// How many of the studio's own cards one generation is split across (sequence parallel:
    /// each card holds the pipeline and a share of the tokens; `videosdgx_engine::parallel`);
    /// 1 runs it on one card. Workers' cards take no part.
    #[serde(skip_serializing_if = "is_one")]
    #[schema(minimum = 1, example = 2)]
    pub split_cards: usize,
    /// With a split, half of its cards compute the unconditional guidance branch (CFG parallel,
    /// Wan models with guidance above 1): an even `split_cards`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cfg_parallel: bool,
    /// The installed image model that makes keyframes and character looks; FLUX.2 [klein] when
    /// absent ([`crate::models::image_model`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_model: Option<String>,
}

impl Default for RenderSettings {
    fn default() -> Self {
        RenderSettings {
            height: 480,
            width: 832,
            steps: 50,
            guidance: 5.0,
            preset: None,
            cache: None,
            quant: None,
            attention: AttentionPrecision::Exact,
            split_cards: 1,
            cfg_parallel: false,
            image_model: None,
        }
    }
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// Upper bounds that keep a typo from queueing a job no GPU can finish.
const MAX_SIDE: usize = 2048;
const MAX_STEPS: usize = 200;
/// Longest prompt a job may carry (the text encoders read far less).
const MAX_PROMPT_BYTES: usize = 64 << 10;

impl RenderSettings {
    /// The parsed `cache` setting.
    pub fn cache_spec(&self) -> Result<Option<CacheSpec>> {
        self.cache
            .as_deref()
            .map(|text| {
                text.parse::<CacheSpec>()
                    .map_err(|e| StudioError::Invalid(format!("cache: {e}")))
            })
            .transpose()
    }

    /// How one generation is split across cards (`None`: on one card), refused as the engine
    /// refuses it (no cards, CFG parallel on an odd count). Whether the studio has the cards and
    /// the model takes the layout is [`crate::gpu::Gpus::check_split`]'s.
    pub fn split(&self) -> Result<Option<Layout>> {
        if self.split_cards == 1 && !self.cfg_parallel {
            return Ok(None);
        }
        Layout::new(self.split_cards, self.cfg_parallel)
            .map(Some)
            .map_err(|e| StudioError::Invalid(format!("split_cards: {e}")))
    }

    /// The size of a generation of `frames` with these settings.
    pub fn size(&self, frames: usize) -> VideoSize {
        VideoSize {
            height: self.height,
            width: self.width,
            frames,
        }
    }

    /// The guidance scale a generation with these settings runs at: its preset's when it names
    /// one, else `guidance`.
    pub fn run_guidance(&self) -> Result<f64> {
        match &self.preset {
            Some(name) => Ok(videosdgx_engine::presets::preset(name)
                .map_err(|e| StudioError::Invalid(e.to_string()))?
                .guidance),
            None => Ok(self.guidance),
        }
    }

    /// Refuses for good a size the model `model` in `dir` cannot make `length` long: the engine's
    /// rule for its family over its configs ([`Pipeline::inspect_size`], no weights), checked
    /// before a generation is queued and before it takes a card, so that a size no attempt can
    /// make is not retried. Returns the size it checked, which a split is checked at
    /// ([`crate::gpu::Gpus::check_split`]).
    pub fn check_size(&self, model: &str, dir: &Path, length: Length) -> Result<VideoSize> {
        let reading =
            |e: anyhow::Error| StudioError::Internal(e.context(format!("reading model `{model}`")));
        let size = self.size(length.frames(dir).map_err(reading)?);
        Pipeline::inspect_size(dir, size)
            .map_err(reading)?
            .map_err(|refused| {
                StudioError::Refused(format!("`{model}` cannot make it: {refused}"))
            })?;
        Ok(size)
    }

    pub fn check(&self) -> Result<()> {
        self.split()?;
        if let Some(name) = &self.preset {
            videosdgx_engine::presets::preset(name)
                .map_err(|e| StudioError::Invalid(e.to_string()))?;
        }
        self.cache_spec()?;
        if self.height > MAX_SIDE || self.width > MAX_SIDE {
            return Err(StudioError::Invalid(format!(
                "{}x{} is larger than the {MAX_SIDE}x{MAX_SIDE} the studio renders",
                self.width, self.height
            )));
        }
        if self.steps == 0 || self.steps > MAX_STEPS {
            return Err(StudioError::Invalid(format!(
                "steps must be between 1 and {MAX_STEPS}, got {}",
                self.steps
            )));
        }
        if !self.guidance.is_finite() || self.guidance < 0.0 {
            return Err(StudioError::Invalid(format!(
                "guidance must be a finite number >= 0, got {}",
                self.guidance
            )));
        }
        Ok(())
    }
}

/// How long a video is: a duration (rounded to the model's frame grid) or a frame count.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Length {
    Seconds(f64),
    Frames(usize),
}

impl Length {
    /// The frames of a generation this long with the model in `dir`, from its configs (as
    /// [`GenerationTask::params`] has them from the loaded pipeline).
    pub fn frames(self, dir: &Path) -> anyhow::Result<usize> {
        match self {
            Length::Seconds(seconds) => Pipeline::inspect_frames_for(dir, seconds),
            Length::Frames(frames) => Ok(frames),
        }
    }
}

/// One video to generate and record.
#[derive(Debug, Clone)]
pub struct VideoRequest {
    pub project_id: Option<i64>,
    /// The shot it becomes a take of, if any.
    pub shot_id: Option<i64>,
    /// An installed model's name.
    pub model: String,
    pub prompt: String,
    pub negative_prompt: String,
    pub length: Length,
    /// A random seed is drawn (and recorded) when absent.
    pub seed: Option<u64>,
    /// Asset ids; the first image is the start frame of image-to-video models.
    pub references: Vec<i64>,
    /// Refuse a model that cannot start from an image, rather than leave the image out.
    pub start_frame_required: bool,
    pub render: RenderSettings,
    /// The LoRAs to apply ([`crate::loras`]), recorded with the output.
    pub loras: Vec<AppliedLora>,
}

/// A recorded output.
#[derive(Debug, Clone, Serialize)]
pub struct VideoOutput {
    pub asset: Asset,
    pub generation_id: i64,
    pub take_id: Option<i64>,
    pub params: GenerateParams,
    pub loras: Vec<AppliedLora>,
    /// Each card's time when the generation was split across cards.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ranks: Vec<RankTime>,
}

/// Runs generation pipelines on the studio's cards.
pub struct Generator {
    pub(crate) gpus: Arc<Gpus>,
}

impl Generator {
    pub fn new(gpus: Arc<Gpus>) -> Generator {
        Generator { gpus }
    }

    /// Generates a shot as a new take, keeping the shot's status current.
    pub fn generate_shot(
        &self,
        app: &App,
        job_id: Option<i64>,
        wanted: &GenerateShot,
        on_progress: &mut dyn FnMut(&str, u64, u64) -> ControlFlow<()>,
    ) -> Result<VideoOutput> {
        let shot = shots::get_shot(&app.db, wanted.shot_id)?;
        let project_id = project_of_shot(&app.db, shot.id)?;
        let continuation = if wanted.continue_previous {
            Some(previous_last_frame(app, project_id, &shot)?)
        } else {
            None
        };
        let request = VideoRequest {
            project_id: Some(project_id),
            shot_id: Some(shot.id),
            model: shot_model(app.data_dir(), &shot)?,
            prompt: wanted.prompt.clone().unwrap_or_else(|| shot.prompt.clone()),
            negative_prompt: wanted
                .negative_prompt
                .clone()
                .unwrap_or_else(|| shot.negative_prompt.clone()),
            length: Length::Seconds(shot.duration_s),
            seed: wanted.seed.or(shot.seed),
            // The previous shot's last frame when continuing, else the keyframe when the shot has
            // one, is the start frame (`start_image` takes the first image; a text-to-video model
            // takes none).
            references: continuation
                .into_iter()
                .chain(shot.keyframe_asset_id)
                .chain(shot.references.iter().copied())
                .collect(),
            start_frame_required: continuation.is_some(),
            render: wanted.render.clone(),
            loras: loras::for_shot(app, shot.id, crate::assets::LoraTarget::Video)?,
        };
        set_status(&app.db, shot.id, "generating")?;
        let outcome = self.generate_video(app, job_id, &request, on_progress);
        let status = match &outcome {
            Ok(_) => "generated",
            Err(e) if is_cancelled(e) && shot.takes.is_empty() => "draft",
            Err(e) if is_cancelled(e) => "generated",
            Err(_) => "failed",
        };
        set_status(&app.db, shot.id, status)?;
        outcome
    }

    /// Generates one video and records it (asset, generation record, take when for a shot).
    pub fn generate_video(
        &self,
        app: &App,
        job_id: Option<i64>,
        request: &VideoRequest,
        on_progress: &mut dyn FnMut(&str, u64, u64) -> ControlFlow<()>,
    ) -> Result<VideoOutput> {
        request.render.check()?;
        let dir = models::video_model_dir(app.data_dir(), &request.model)?;
        let (generated, path) = self.render(app, job_id, &dir, request, on_progress)?;
        let recorded = record(app, job_id, request, generated, &path);
        let _ = std::fs::remove_file(&path);
        recorded
    }

    fn render(
        &self,
        app: &App,
        job_id: Option<i64>,
        dir: &Path,
        request: &VideoRequest,
        on_progress: &mut dyn FnMut(&str, u64, u64) -> ControlFlow<()>,
    ) -> Result<(Generated, PathBuf)> {
        // What the model takes is read from its configs: the task is settled before a card is
        // taken, so that any card, the studio's or a worker's, can run it as it is.
        let capabilities = Pipeline::inspect(dir).map_err(|e| {
            StudioError::Internal(e.context(format!("reading model `{}`", request.model)))
        })?;
        let task = GenerationTask {
            model: request.model.clone(),
            prompt: request.prompt.clone(),
            negative_prompt: request.negative_prompt.clone(),
            length: request.length,
            seed: request.seed.unwrap_or_else(random_seed),
            render: request.render.clone(),
            start_image: start_image(
                app,
                &request.references,
                capabilities.start_image,
                request.start_frame_required,
            )?,
            references: Vec::new(),
            loras: request.loras.iter().map(|l| l.spec(app)).collect(),
            applied_loras: request.loras.clone(),
            still: false,
            local_files: HashMap::new(),
        };
        let path = app.scratch_file("generation", "mp4")?;
        let generated = self
            .gpus
            .generate(job_id, dir, &task, &path, on_progress)
            .map_err(|e| loras::explain(app, &request.loras, e));
        match generated {
            Ok(generated) => Ok((generated, path)),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }
}

/// One video generation as a value: what a card runs with the pipeline of `model` resident on
/// it, the studio's own card or a worker's ([`crate::workers`]), which receives it as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationTask {
    /// The installed model's name (its folder under `models/`).
    pub model: String,
    pub prompt: String,
    pub negative_prompt: String,
    pub length: Length,
    pub seed: u64,
    pub render: RenderSettings,
    /// The start frame, a file of the studio's.
    pub start_image: Option<ImageInput>,
    /// Images an image model conditions on (a character's look), files of the studio's.
    pub references: Vec<PathBuf>,
    /// LoRA files of the studio's.
    pub loras: Vec<LoraSpec>,
    /// The LoRAs as the output's embedded record names them.
    pub applied_loras: Vec<AppliedLora>,
    /// A still of an image model, written as a PNG; a video is written as an MP4.
    pub still: bool,
    /// Where this machine keeps the studio's files the task names, when elsewhere: a worker's
    /// copies. The engine reads these; the record keeps the studio's paths.
    #[serde(skip)]
    pub local_files: HashMap<PathBuf, PathBuf>,
}

#[cfg(test)]
impl GenerationTask {
    /// A text-to-video task of `model`: seed 7, no negative prompt, images or LoRAs.
    pub(crate) fn plain(model: &str, prompt: &str, length: Length, render: RenderSettings) -> Self {
        Self {
            model: model.into(),
            prompt: prompt.into(),
            negative_prompt: String::new(),
            length,
            seed: 7,
            render,
            start_image: None,
            references: Vec::new(),
            loras: Vec::new(),
            applied_loras: Vec::new(),
            still: false,
            local_files: HashMap::new(),
        }
    }
}

impl GenerationTask {
    /// The studio's files the task names: its start frame, references and LoRAs.
    pub fn files(&self) -> Vec<&Path> {
        let start = match &self.start_image {
            Some(ImageInput::Path(path)) => Some(path.as_path()),
            _ => None,
        };
        start
            .into_iter()
            .chain(self.references.iter().map(PathBuf::as_path))
            .chain(self.loras.iter().map(|l| l.path.as_path()))
            .collect()
    }

    /// Whether a worker's card may run it: every file it names is a blob of the asset store,
    /// named by its SHA-256, which the worker fetches by that name
    /// ([`crate::workers::Workers::task_file`]) and checks.
    pub fn runs_anywhere(&self) -> bool {
        self.files().iter().all(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_sha256)
        })
    }

    /// `path` where this machine keeps it.
    fn local(&self, path: &Path) -> PathBuf {
        self.local_files
            .get(path)
            .cloned()
            .unwrap_or_else(|| path.to_path_buf())
    }

    /// Runs the task on `pipeline`: the engine's parameters and the video.
    pub fn generate(
        &self,
        pipeline: &mut Pipeline,
        on_progress: &mut dyn FnMut(&str, u64, u64) -> ControlFlow<()>,
    ) -> Result<(GenerateParams, GeneratedVideo)> {
        let (mut params, mut local) = self.params(pipeline)?;
        local.attention = pipeline.set_attention_precision(self.render.attention);
        params.attention = local.attention;
        let video = pipeline
            .generate(&local, Default::default(), &mut reporter(on_progress))
            .map_err(engine_error)?;
        Ok((params, video))
    }

    /// Runs the task split by `layout` across `pipelines`, one per card, each already resident
    /// there: the engine's parameters, the first card's video and every card's time.
    pub fn generate_split(
        &self,
        pipelines: Vec<&mut Pipeline>,
        layout: Layout,
        on_progress: &mut dyn FnMut(&str, u64, u64) -> ControlFlow<()>,
    ) -> Result<(GenerateParams, SplitGeneration)> {
        let (mut params, mut local) = self.params(&*pipelines[0])?;
        let mut pipelines = pipelines;
        for pipeline in &mut pipelines {
            local.attention = pipeline.set_attention_precision(self.render.attention);
        }
        params.attention = local.attention;
        let split = generate_split_on(
            pipelines,
            layout,
            &local,
            Default::default(),
            &mut reporter(on_progress),
        )
        .map_err(engine_error)?;
        Ok((params, split))
    }

    /// The engine's parameters for this task with `pipeline`'s model, and the same naming this
    /// machine's copies of the task's files (what the engine reads; the record keeps the first).
    fn params(&self, pipeline: &Pipeline) -> Result<(GenerateParams, GenerateParams)> {
        let mut params = GenerateParams {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            height: self.render.height,
            width: self.render.width,
            frames: match self.length {
                Length::Seconds(seconds) => pipeline.frames_for(seconds),
                Length::Frames(frames) => frames,
            },
            steps: self.render.steps,
            guidance: self.render.guidance,
            seed: self.seed,
            start_image: self.start_image.clone(),
            loras: self.loras.clone(),
            cache: self.render.cache_spec()?,
            quant: self.render.quant,
            references: self
                .references
                .iter()
                .cloned()
                .map(ImageInput::Path)
                .collect(),
            ..Default::default()
        };
        if let Some(name) = &self.render.preset {
            videosdgx_engine::presets::preset(name)?.apply(&mut params);
        }
        let mut local = params.clone();
        for image in local.start_image.iter_mut().chain(&mut local.references) {
            if let ImageInput::Path(path) = image {
                *path = self.local(path);
            }
        }
        for lora in &mut local.loras {
            lora.path = self.local(&lora.path);
        }
        Ok((params, local))
    }

    /// Writes `video` to `out` as an MP4, or a still's one frame as a PNG, embedding its
    /// generation record (stage `writing`) with how it was laid out across cards (`split`, `None`
    /// on one; each card's time in `ranks`), as the studio's record shows it.
    pub fn write(
        &self,
        params: &GenerateParams,
        video: &GeneratedVideo,
        split: Option<Layout>,
        ranks: &[RankTime],
        out: &Path,
        on_progress: &mut dyn FnMut(&str, u64, u64) -> ControlFlow<()>,
    ) -> Result<()> {
        if on_progress("writing", 0, 1).is_break() {
            return Err(StudioError::Internal(anyhow::Error::new(Cancelled)));
        }
        let frames = videosdgx_engine::video::frames_from_tensor(&video.frames)?;
        let layout = GenerationLayout::of(split, ranks.to_vec());
        let metadata = json!({
            "model": self.model,
            "generate": params,
            "loras": self.applied_loras,
            "layout": layout,
        });
        if self.still {
            let frame = frames
                .first()
                .ok_or_else(|| StudioError::Internal(anyhow::anyhow!("the model made no image")))?;
            videosdgx_engine::video::write_png(out, frame, &metadata)?;
            return Ok(());
        }
        videosdgx_engine::video::write_mp4_with_audio(
            out,
            &frames,
            video.fps,
            video.audio.as_ref(),
            &metadata,
        )?;
        Ok(())
    }
}

/// A generation's error as the studio's: what the engine refuses for the request itself (a
/// split, a size) it refuses on every attempt.
fn engine_error(e: anyhow::Error) -> StudioError {
    if videosdgx_engine::pipelines::is_refusal(&e) {
        StudioError::Refused(format!("{e:#}"))
    } else {
        StudioError::Internal(e)
    }
}

/// The engine's progress as the studio's `(stage, step, total)` reports.
fn reporter(
    on_progress: &mut dyn FnMut(&str, u64, u64) -> ControlFlow<()>,
) -> impl FnMut(&Progress) -> ControlFlow<()> {
    move |p: &Progress| on_progress(stage_name(p.stage), p.step as u64, p.total as u64)
}

/// Shots left `generating` by a process that died mid-generation go back to what their takes
/// say (their job is re-queued or marked interrupted by the queue's own recovery). For start-up,
/// before any worker runs.
pub fn recover_shots(db: &Db) -> Result<usize> {
    db.with(|c| {
        let stuck: bool = c.query_row(
            "SELECT EXISTS (SELECT 1 FROM shots WHERE status = 'generating')",
            [],
            |r| r.get(0),
        )?;
        if !stuck {
            return Ok(0);
        }
        Ok(c.execute(
            "UPDATE shots SET status = CASE
                 WHEN EXISTS (SELECT 1 FROM takes WHERE takes.shot_id = shots.id) THEN 'generated'
                 ELSE 'draft' END
             WHERE status = 'generating'",
            [],
        )?)
    })
}

/// Whether `name` is a SHA-256 in lowercase hex, as the asset store names its blobs.
pub fn is_sha256(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `err` is a generation stopped by its progress callback.
pub fn is_cancelled(err: &StudioError) -> bool {
    matches!(err, StudioError::Internal(e) if e.downcast_ref::<Cancelled>().is_some())
}

/// How a generation's stage is shown in a job's progress.
pub(crate) fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::LoadingModel => "loading model",
        Stage::EncodingPrompt => "encoding prompt",
        Stage::Denoising => "denoising",
        Stage::Decoding => "decoding",
        Stage::Writing => "writing",
    }
}

pub(crate) fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    // Seeds stay below 2^53 so that JSON clients (JavaScript numbers) round-trip them exactly.
    u64::from_le_bytes(bytes) >> 11
}

fn project_of_shot(db: &Db, shot_id: i64) -> Result<i64> {
    db.with(|c| {
        Ok(c.query_row(
            "SELECT s.project_id FROM shots JOIN storyboards s ON s.id = shots.storyboard_id
             WHERE shots.id = ?1",
            [shot_id],
            |r| r.get(0),
        )?)
    })
}

fn set_status(db: &Db, shot_id: i64, status: &str) -> Result<()> {
    let fields = ShotFields {
        status: Some(status.to_string()),
        ..Default::default()
    };
    shots::update_shot(db, shot_id, &fields).map(drop)
}

/// The start frame for image-to-video: the first image among `references`; `required` refuses a
/// model that takes none.
fn start_image(
    app: &App,
    references: &[i64],
    wanted: StartImage,
    required: bool,
) -> Result<Option<ImageInput>> {
    if wanted == StartImage::Unsupported {
        if required {
            return Err(StudioError::Invalid(
                "this model cannot start from an image: continuing a shot needs an image-to-video \
                 model (LTX-2, Wan image-to-video)"
                    .into(),
            ));
        }
        return Ok(None);
    }
    for id in references {
        let asset = get_asset(&app.db, *id)?;
        if asset.kind == MediaKind::Image {
            return Ok(Some(ImageInput::Path(app.assets.file_of(&asset))));
        }
    }
    match wanted {
        StartImage::Required => Err(StudioError::Invalid(
            "this is an image-to-video model: attach a reference image as the start frame".into(),
        )),
        _ => Ok(None),
    }
}

/// The last frame of the take before `shot` (the previous shot's chosen take, else its latest),
/// as an image asset of the project: the start frame of a shot that continues it.
fn previous_last_frame(app: &App, project_id: i64, shot: &Shot) -> Result<i64> {
    let previous = shots::list_shots(&app.db, shot.storyboard_id)?
        .into_iter()
        .find(|s| s.position + 1 == shot.position)
        .ok_or_else(|| {
            StudioError::Invalid(format!(
                "shot {} opens its storyboard: there is no previous shot to continue",
                shot.position + 1
            ))
        })?;
    let take = previous
        .chosen_take_id
        .or_else(|| previous.takes.last().map(|t| t.id))
        .ok_or_else(|| {
            StudioError::Invalid(format!(
                "shot {} has no take yet to continue from: generate it first",
                previous.position + 1
            ))
        })?;
    let video = get_asset(&app.db, shots::get_take(&app.db, take)?.asset_id)?;
    let mut reader = videosdgx_engine::video::Mp4Reader::open(&app.assets.file_of(&video))?;
    let last = reader.frame_count().checked_sub(1).ok_or_else(|| {
        StudioError::Invalid(format!(
            "take {take} of shot {} has no frames",
            previous.position + 1
        ))
    })?;
    let frame = reader
        .frames_from(last)?
        .next()
        .ok_or_else(|| anyhow::anyhow!("take {take} ended before its frame {last}"))??;
    let path = app.scratch_file("continuation", "png")?;
    frame
        .save(&path)
        .map_err(|e| StudioError::Internal(anyhow::Error::new(e).context("writing the frame")))?;
    let project = crate::projects::get_project(&app.db, project_id)?;
    let meta = NewAsset {
        name: format!(
            "{}-shot-{}-last-frame.png",
            crate::plugins::calls::file_stem(&project.name),
            previous.position + 1
        ),
        project_id: Some(project_id),
        caption: format!("The last frame of {}", video.original_name),
        tags: vec!["continuation".into()],
        prompt: String::new(),
        model: video.model.clone(),
    };
    let imported = app.assets.import_file(&app.db, &path, &meta);
    let _ = std::fs::remove_file(&path);
    Ok(imported?.0.id)
}

/// The library name of a generated video: `<project>-shot-<n>-take-<k>.mp4` for a shot's take
/// (unique within a project), `<project>-seed-<seed>.mp4` otherwise.
fn output_name(db: &Db, request: &VideoRequest, seed: u64) -> Result<String> {
    let project = match request.project_id {
        Some(id) => crate::plugins::calls::file_stem(&crate::projects::get_project(db, id)?.name),
        None => "generated".into(),
    };
    let Some(shot_id) = request.shot_id else {
        return Ok(format!("{project}-seed-{seed}.mp4"));
    };
    let shot = shots::get_shot(db, shot_id)?;
    Ok(format!(
        "{project}-shot-{}-take-{}.mp4",
        shot.position + 1,
        shot.takes.len() + 1
    ))
}

/// Imports the MP4, then writes the generation record and the take in one transaction.
fn record(
    app: &App,
    job_id: Option<i64>,
    request: &VideoRequest,
    generated: Generated,
    path: &Path,
) -> Result<VideoOutput> {
    let params = &generated.params;
    let meta = NewAsset {
        name: output_name(&app.db, request, params.seed)?,
        project_id: request.project_id,
        caption: String::new(),
        tags: vec!["generated".into()],
        prompt: params.prompt.clone(),
        model: Some(request.model.clone()),
    };
    let params_json = serde_json::to_string(params).map_err(anyhow::Error::from)?;
    let loras_json = serde_json::to_string(&request.loras).map_err(anyhow::Error::from)?;
    let layout = GenerationLayout::of(generated.split, generated.ranks.clone());
    let ranks_json = serde_json::to_string(&layout.ranks).map_err(anyhow::Error::from)?;
    // The asset, its generation record and the take in one transaction: a crash never leaves a
    // generated video that is not a take with its record.
    let (asset, (generation_id, take_id)) =
        app.assets
            .import_file_recording(&app.db, path, &meta, |tx, asset| {
                let generation_id: i64 = tx.query_row(
                    "INSERT INTO generations (job_id, shot_id, asset_id, model, params, engine_version, created_at, loras,
                                              split_cards, cfg_parallel, ranks)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) RETURNING id",
                    params![
                        job_id,
                        request.shot_id,
                        asset.id,
                        request.model,
                        params_json,
                        videosdgx_engine::VERSION,
                        now_ms(),
                        loras_json,
                        layout.split_cards as i64,
                        layout.cfg_parallel,
                        ranks_json
                    ],
                    |r| r.get(0),
                )?;
                let Some(shot_id) = request.shot_id else {
                    return Ok((generation_id, None));
                };
                let take = shots::add_take(tx, shot_id, asset.id, generation_id)?;
                tx.execute(
                    "UPDATE shots SET chosen_take_id = ?2 WHERE id = ?1 AND chosen_take_id IS NULL",
                    params![shot_id, take.id],
                )?;
                Ok((generation_id, Some(take.id)))
            })?;
    Ok(VideoOutput {
        asset,
        generation_id,
        take_id,
        params: generated.params,
        loras: request.loras.clone(),
        ranks: generated.ranks,
    })
}

/// Parameters of a `generate` job: the shot supplies prompt, negative prompt, duration, model,
/// seed and references. A prompt, negative prompt or seed given here replaces the shot's for
/// this take only (the review loop's retries); the shot keeps what the user wrote.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateShot {
    pub shot_id: i64,
    #[serde(default)]
    pub render: RenderSettings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Start from the last frame of the previous shot's chosen take (its latest when none is
    /// chosen), so the cut continues the action: an image-to-video model's start frame, in place
    /// of the shot's keyframe. The frame becomes an image asset, recorded as the take's reference.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_previous: bool,
}

impl GenerateShot {
    fn parse(params: &Value) -> Result<GenerateShot> {
        let request: GenerateShot = serde_json::from_value(params.clone())
            .map_err(|e| StudioError::Invalid(format!("parameters of a generate job: {e}")))?;
        request.render.check()?;
        if request
            .prompt
            .as_deref()
            .is_some_and(|p| p.len() > MAX_PROMPT_BYTES)
            || request
                .negative_prompt
                .as_deref()
                .is_some_and(|p| p.len() > MAX_PROMPT_BYTES)
        {
            return Err(StudioError::Invalid(format!(
                "a prompt holds at most {MAX_PROMPT_BYTES} bytes"
            )));
        }
        if let Some(seed) = request.seed
            && i64::try_from(seed).is_err()
        {
            return Err(StudioError::Invalid(format!(
                "seed {seed} is larger than {}",
                i64::MAX
            )));
        }
        Ok(request)
    }

    /// Whether this generation can run: its shot has a prompt (or this one gives it), its
    /// model is installed and makes its size, and the studio's cards and the model take its
    /// split. What the `generate` and `shoot` jobs check at submission.
    pub fn check_runnable(&self, app: &App) -> Result<()> {
        let shot = shots::get_shot(&app.db, self.shot_id)?;
        if self
            .prompt
            .as_deref()
            .unwrap_or(&shot.prompt)
            .trim()
            .is_empty()
        {
            return Err(StudioError::Invalid(format!(
                "shot {} has no prompt",
                shot.position + 1
            )));
        }
        let model = shot_model(app.data_dir(), &shot)?;
        let dir = models::video_model_dir(app.data_dir(), &model)?;
        let length = Length::Seconds(shot.duration_s);
        let size = self.render.check_size(&model, &dir, length)?;
        app.gpus.check_split(&self.render, &model, &dir, size)?;
        let applied = loras::for_shot(app, shot.id, crate::assets::LoraTarget::Video)?;
        loras::check_family(app, &applied, &model, &dir)
    }
}

/// `generate`: one shot's video on the GPU lane.
pub struct GenerateRunner;

impl JobRunner for GenerateRunner {
    fn kind(&self) -> &'static str {
        "generate"
    }
    fn lane(&self) -> Lane {
        Lane::Gpu
    }
    fn check(&self, app: &App, params: &Value) -> Result<()> {
        GenerateShot::parse(params)?.check_runnable(app)
    }
    fn run(&self, app: &App, ctx: &JobContext, params: &Value) -> Result<Value> {
        let request = GenerateShot::parse(params)?;
        let output = app.generator.generate_shot(
            app,
            Some(ctx.job_id()),
            &request,
            &mut |stage, step, total| ctx.progress(stage, step, total),
        )?;
        let mut result = json!({
            "shot_id": request.shot_id,
            "asset_id": output.asset.id,
            "take_id": output.take_id,
            "generation_id": output.generation_id,
            "params": output.params,
            "loras": output.loras,
        });
        if !output.ranks.is_empty() {
            result["ranks"] = json!(output.ranks);
        }
        Ok(result)
    }
}

/// Installs the tiny random Wan text-to-video pipeline of tests/fixtures as model `tiny-wan-t2v`.
#[cfg(test)]
pub(crate) fn install_tiny_model(data_dir: &Path) {
    install_fixture_model(data_dir, "tiny-wan-t2v");
}

/// Installs the tiny random pipeline `name` of tests/fixtures as model `name`.
#[cfg(test)]
pub(crate) fn install_fixture_model(data_dir: &Path, name: &str) {
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() {
                copy_dir(&path, &target);
            } else {
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name);
    copy_dir(&fixture, &models::models_dir(data_dir).join(name));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::StudioConfig;
    use crate::projects::{create_project, create_storyboard};
    use videosdgx_engine::video;

    fn studio() -> (tempfile::TempDir, App) {
        let dir = tempfile::tempdir().unwrap();
        install_tiny_model(dir.path());
        let app = App::open(StudioConfig::new(dir.path())).unwrap();
        (dir, app)
    }

    fn shot(app: &App, fields: ShotFields) -> Shot {
        let project = create_project(&app.db, "p").unwrap();
        let board = create_storyboard(&app.db, project.id, "s", "").unwrap();
        shots::create_shot(&app.db, board.id, &fields).unwrap()
    }

    /// Shot `shot_id` at the tiny size, as the shot says.
    fn of(shot_id: i64) -> GenerateShot {
        GenerateShot {
            shot_id,
            render: tiny(),
            ..Default::default()
        }
    }

    fn tiny() -> RenderSettings {
        RenderSettings {
            height: 32,
            width: 32,
            steps: 2,
            guidance: 3.0,
            ..RenderSettings::default()
        }
    }

    fn prompt(text: &str) -> ShotFields {
        ShotFields {
            prompt: Some(text.into()),
            duration_s: Some(0.5),
            seed: Some(7),
            ..Default::default()
        }
    }

    #[test]
    fn a_shot_becomes_a_recorded_playable_take() {
        let (_dir, app) = studio();
        let shot = shot(&app, prompt("a lighthouse at dusk"));
        let mut stages = Vec::new();
        let out = app
            .generator
            .generate_shot(&app, None, &of(shot.id), &mut |stage, step, total| {
                stages.push((stage.to_string(), step, total));
                ControlFlow::Continue(())
            })
            .unwrap();
        assert!(stages.contains(&("denoising".into(), 2, 2)), "{stages:?}");

        // 0.5 s at 16 fps is 8 frames: the nearest 4k+1 count is 9.
        assert_eq!(out.params.frames, 9);
        assert_eq!(out.params.seed, 7);
        let info = video::probe(&app.assets.file_of(&out.asset)).unwrap();
        assert_eq!((info.width, info.height, info.frames), (32, 32, 9));
        assert_eq!(out.asset.model.as_deref(), Some("tiny-wan-t2v"));

        let shot = shots::get_shot(&app.db, shot.id).unwrap();
        assert_eq!(shot.status, "generated");
        assert_eq!(shot.chosen_take_id, out.take_id);
        let record = get_generation(&app.db, out.generation_id).unwrap();
        let params: GenerateParams = serde_json::from_value(record.params).unwrap();
        assert_eq!(params, out.params, "the record reproduces the output");
    }

    #[test]
    fn an_ltx2_shot_becomes_a_take_with_its_sound() {
        let (dir, app) = studio();
        install_fixture_model(dir.path(), "tiny-ltx2");
        let shot = shot(
            &app,
            ShotFields {
                model: Some("tiny-ltx2".into()),
                ..prompt("a lighthouse keeper says: the storm is coming")
            },
        );
        let out = app
            .generator
            .generate_shot(&app, None, &of(shot.id), &mut |_, _, _| {
                ControlFlow::Continue(())
            })
            .unwrap();
        // 0.5 s at LTX-2's 24 fps is 12 frames: the nearest 4k+1 count is 13.
        assert_eq!(
            (out.params.frames, out.asset.model.as_deref()),
            (13, Some("tiny-ltx2"))
        );
        let mut reader = video::Mp4Reader::open(&app.assets.file_of(&out.asset)).unwrap();
        assert_eq!((reader.frame_count(), reader.fps), (13, 24.0));
        let sound = reader
            .read_audio()
            .unwrap()
            .expect("the take carries its sound");
        assert!(
            (sound.duration_s() - 13.0 / 24.0).abs() < 0.05,
            "{}",
            sound.duration_s()
        );
    }

    #[test]
    fn a_shot_continues_from_the_last_frame_of_the_previous_take() {
        let (dir, app) = studio();
        install_fixture_model(dir.path(), "tiny-ltx2");
        let first = shot(
            &app,
            ShotFields {
                model: Some("tiny-ltx2".into()),
                ..prompt("a keeper climbs the lighthouse stairs")
            },
        );
        let fields = ShotFields {
            model: Some("tiny-ltx2".into()),
            ..prompt("the keeper lights the lamp")
        };
        let second = shots::create_shot(&app.db, first.storyboard_id, &fields).unwrap();
        let continuing = GenerateShot {
            continue_previous: true,
            ..of(second.id)
        };
        let run =
            |wanted: &GenerateShot| {
                app.generator
                    .generate_shot(&app, None, wanted, &mut |_, _, _| ControlFlow::Continue(()))
            };

        // Nothing to continue yet: the first shot has no take, and it has no shot before it.
        let err = run(&continuing).unwrap_err().to_string();
        assert!(err.contains("shot 1 has no take yet"), "{err}");
        let previous = run(&of(first.id)).unwrap();
        let err = run(&GenerateShot {
            continue_previous: true,
            ..of(first.id)
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("shot 1 opens its storyboard"), "{err}");

        let out = run(&continuing).unwrap();
        // The start frame is an image asset of the project holding the previous take's last
        // frame; the take's record names it.
        let frame_id: i64 = app
            .db
            .with(|c| {
                Ok(c.query_row(
                    "SELECT id FROM assets WHERE tags LIKE '%continuation%'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .unwrap();
        let frame = get_asset(&app.db, frame_id).unwrap();
        assert_eq!(
            (frame.kind, frame.original_name.as_str()),
            (MediaKind::Image, "p-shot-1-last-frame.png")
        );
        let record = get_generation(&app.db, out.generation_id).unwrap();
        let recorded: GenerateParams = serde_json::from_value(record.params).unwrap();
        assert_eq!(
            recorded.start_image,
            Some(ImageInput::Path(app.assets.file_of(&frame)))
        );
        let mut reader = video::Mp4Reader::open(&app.assets.file_of(&previous.asset)).unwrap();
        let last = reader.frame_count() - 1;
        let want = reader.frames_from(last).unwrap().next().unwrap().unwrap();
        let got = image::ImageReader::open(app.assets.file_of(&frame))
            .unwrap()
            .with_guessed_format()
            .unwrap()
            .decode()
            .unwrap()
            .to_rgb8();
        assert_eq!(
            got, want,
            "the start frame is the previous take's last frame"
        );

        // A text-to-video model cannot start from it: refused, not ignored.
        let wan = ShotFields {
            model: Some("tiny-wan-t2v".into()),
            ..prompt("the lamp turns")
        };
        let third = shots::create_shot(&app.db, first.storyboard_id, &wan).unwrap();
        let err = run(&GenerateShot {
            continue_previous: true,
            ..of(third.id)
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("cannot start from an image"), "{err}");
    }

    #[test]
    fn plugins_are_told_the_rules_of_the_shot_s_model() {
        let (dir, app) = studio();
        let wan = crate::plugins::calls::video_rules(&app, None);
        assert_eq!(wan.family, "wan2.1", "the only installed model");
        install_fixture_model(dir.path(), "tiny-ltx2");
        let ltx = crate::plugins::calls::video_rules(&app, Some("tiny-ltx2"));
        assert_eq!((ltx.family.as_str(), ltx.fps), ("ltx2", 24));
        // Two models and none named: the studio cannot tell, and plans for Wan 2.1.
        assert_eq!(
            crate::plugins::calls::video_rules(&app, None).family,
            "wan2.1"
        );
    }

    #[test]
    fn fp8_weights_are_chosen_in_the_render_settings_and_recorded() {
        let (_dir, app) = studio();
        let shot = shot(&app, prompt("a lighthouse at dusk"));
        let run = |quant| {
            let request = GenerateShot {
                render: RenderSettings { quant, ..tiny() },
                ..of(shot.id)
            };
            let mut loads = 0;
            let out = app
                .generator
                .generate_shot(&app, None, &request, &mut |stage, _, _| {
                    loads += usize::from(stage == "loading model");
                    ControlFlow::Continue(())
                })
                .unwrap();
            let record = get_generation(&app.db, out.generation_id).unwrap();
            let params: GenerateParams = serde_json::from_value(record.params).unwrap();
            (params.quant, loads)
        };
        assert_eq!(run(Some(Quant::Fp8)), (Some(Quant::Fp8), 1));
        assert_eq!(
            run(Some(Quant::Fp8)),
            (Some(Quant::Fp8), 0),
            "kept resident"
        );
        assert_eq!(run(None), (None, 1), "reloaded without FP8");
        let bad: std::result::Result<RenderSettings, _> = serde_json::from_value(
            json!({ "height": 32, "width": 32, "steps": 2, "guidance": 1.0, "quant": "fp4" }),
        );
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("unknown variant `fp4`")
        );
    }

    #[test]
    fn step_caching_is_chosen_per_generation_and_recorded() {
        let (_dir, app) = studio();
        let shot = shot(&app, prompt("a lighthouse at dusk"));
        let request = GenerateShot {
            render: RenderSettings {
                cache: Some("teacache:0.2".into()),
                ..tiny()
            },
            ..of(shot.id)
        };
        let out = app
            .generator
            .generate_shot(&app, None, &request, &mut |_, _, _| {
                ControlFlow::Continue(())
            })
            .unwrap();
        let expected: CacheSpec = "teacache:0.2".parse().unwrap();
        assert_eq!(out.params.cache, Some(expected));
        let record = get_generation(&app.db, out.generation_id).unwrap();
        let params: GenerateParams = serde_json::from_value(record.params).unwrap();
        assert_eq!(
            params.cache,
            Some(expected),
            "the record says how it was made"
        );
    }

    #[test]
    fn a_shot_lora_takes_a_strength_per_expert_of_wan_2_2() {
        let (dir, app) = studio();
        install_fixture_model(dir.path(), "tiny-wan22-two-experts");
        let lora_file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/lora/kohya.safetensors");
        let meta = NewAsset {
            name: "motion.safetensors".into(),
            ..Default::default()
        };
        let (lora, _) = app.assets.import_file(&app.db, &lora_file, &meta).unwrap();
        let choice: loras::LoraChoice = format!("{}:0.9,0.4", lora.id).parse().unwrap();
        let two = shot(
            &app,
            ShotFields {
                model: Some("tiny-wan22-two-experts".into()),
                ..prompt("a lighthouse at dusk")
            },
        );
        loras::set(
            &app.db,
            &loras::Scope::Shot(two.id),
            std::slice::from_ref(&choice),
        )
        .unwrap();
        let run = |shot_id| {
            app.generator
                .generate_shot(&app, None, &of(shot_id), &mut |_, _, _| {
                    ControlFlow::Continue(())
                })
        };
        let out = run(two.id).unwrap();
        let spec = &out.params.loras[0];
        assert_eq!((spec.strength, spec.strength_2), (0.9, Some(0.4)));
        assert_eq!(spec.sha256.as_deref(), Some(lora.sha256.as_str()));
        let record = get_generation(&app.db, out.generation_id).unwrap();
        assert_eq!(record.loras, out.loras);
        assert_eq!(
            (record.loras[0].strength_2, record.loras[0].from.as_str()),
            (Some(0.4), "shot")
        );

        // One transformer takes one strength: the job fails naming the LoRA, and records nothing.
        let fields = ShotFields {
            model: Some("tiny-wan-t2v".into()),
            ..prompt("fog")
        };
        let one = shots::create_shot(&app.db, two.storyboard_id, &fields).unwrap();
        loras::set(&app.db, &loras::Scope::Shot(one.id), &[choice]).unwrap();
        let err = run(one.id).unwrap_err();
        assert!(matches!(err, StudioError::Invalid(_)), "{err:?}");
        let err = err.to_string();
        assert!(
            err.contains(&format!("LoRA asset {} \"motion.safetensors\"", lora.id))
                && err.contains("gives two strengths (HIGH,LOW)"),
            "{err}"
        );
        let shot = shots::get_shot(&app.db, one.id).unwrap();
        assert_eq!((shot.status.as_str(), shot.takes.len()), ("failed", 0));
    }

    #[test]
    fn a_cancelled_generation_records_nothing_and_leaves_the_shot_a_draft() {
        let (_dir, app) = studio();
        let shot = shot(&app, prompt("waves"));
        let err = app
            .generator
            .generate_shot(&app, None, &of(shot.id), &mut |stage, _, _| {
                if stage == "denoising" {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap_err();
        assert!(is_cancelled(&err), "{err}");
        let shot = shots::get_shot(&app.db, shot.id).unwrap();
        assert_eq!((shot.status.as_str(), shot.takes.len()), ("draft", 0));
        let generations: i64 = app
            .db
            .with(|c| Ok(c.query_row("SELECT count(*) FROM generations", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(generations, 0);
    }

    #[test]
    fn shots_cut_off_mid_generation_are_reset_at_start() {
        let (_dir, app) = studio();
        let shot = shot(&app, prompt("fog"));
        set_status(&app.db, shot.id, "generating").unwrap();
        assert_eq!(recover_shots(&app.db).unwrap(), 1);
        assert_eq!(shots::get_shot(&app.db, shot.id).unwrap().status, "draft");
        assert_eq!(recover_shots(&app.db).unwrap(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shot_split_across_two_cards_is_one_job_on_both_with_each_cards_time() {
        use crate::jobs::{JobQueue, JobState, NewJob, run_to_end};
        let dir = tempfile::tempdir().unwrap();
        install_tiny_model(dir.path());
        let mut config = StudioConfig::new(dir.path());
        config.gpus = "cpu,cpu".parse().unwrap();
        let app = Arc::new(App::open(config).unwrap());
        let shot = shot(&app, prompt("a lighthouse at dusk"));
        let workers = JobQueue::start(&app, 1);
        let render = RenderSettings {
            split_cards: 2,
            ..tiny()
        };
        let new = NewJob {
            kind: "generate".into(),
            params: json!({ "shot_id": shot.id, "render": render }),
            max_attempts: Some(1),
            project_id: None,
        };
        let job = run_to_end(&app, new, &mut |_| ControlFlow::Continue(()))
            .await
            .unwrap();
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        assert_eq!(job.card.as_deref(), Some("cpu#0+cpu#1"));
        let result = job.result.unwrap();
        let ranks: Vec<&str> = result["ranks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["device"].as_str().unwrap())
            .collect();
        assert_eq!(ranks, ["cpu#0", "cpu#1"]);
        assert_eq!(job.params["render"]["split_cards"], 2);
        app.jobs.stop();
        for w in workers {
            w.await.unwrap();
        }
    }

    /// A studio on `cards` CPU lanes with the tiny Wan and LTX-2 models.
    fn studio_on_lanes(cards: usize) -> (tempfile::TempDir, Arc<App>) {
        let dir = tempfile::tempdir().unwrap();
        install_tiny_model(dir.path());
        install_fixture_model(dir.path(), "tiny-ltx2");
        let mut config = StudioConfig::new(dir.path());
        config.gpus = vec!["cpu"; cards].join(",").parse().unwrap();
        let app = Arc::new(App::open(config).unwrap());
        (dir, app)
    }

    #[test]
    fn a_generation_records_how_it_was_laid_out_across_cards_apart_from_its_params() {
        let (_dir, app) = studio_on_lanes(2);
        let shot = shot(
            &app,
            ShotFields {
                model: Some("tiny-wan-t2v".into()),
                ..prompt("a lighthouse at dusk")
            },
        );
        let run = |render: RenderSettings| {
            let request = GenerateShot {
                render,
                ..of(shot.id)
            };
            let out = app
                .generator
                .generate_shot(&app, None, &request, &mut |_, _, _| {
                    ControlFlow::Continue(())
                })
                .unwrap();
            (
                out.clone(),
                get_generation(&app.db, out.generation_id).unwrap(),
            )
        };
        let (whole, one_card) = run(tiny());
        let unsplit = GenerationLayout {
            split_cards: 1,
            cfg_parallel: false,
            ranks: Vec::new(),
        };
        assert_eq!(one_card.layout, unsplit);
        let both = RenderSettings {
            split_cards: 2,
            cfg_parallel: true,
            ..tiny()
        };
        let (split, record) = run(both);
        assert_eq!(record.layout.ranks.len(), split.ranks.len());
        assert_eq!(
            (record.layout.split_cards, record.layout.cfg_parallel),
            (2, true)
        );
        let devices: Vec<&str> = record
            .layout
            .ranks
            .iter()
            .map(|r| r.device.as_str())
            .collect();
        assert_eq!(devices, ["cpu#0", "cpu#1"]);
        assert!(
            record
                .layout
                .ranks
                .iter()
                .all(|r| r.seconds > 0.0 && r.exchange.exchanges > 0),
            "{:?}",
            record.layout.ranks
        );
        // How it was computed is no part of what: the params are the one-card generation's.
        assert_eq!(record.params, one_card.params);
        assert_eq!(split.params, whole.params);
        // The video's embedded record says it as the API does.
        let embedded = |out: &VideoOutput| {
            video::probe(&app.assets.file_of(&out.asset))
                .unwrap()
                .metadata["layout"]
                .clone()
        };
        assert_eq!(embedded(&whole), json!(unsplit));
        assert_eq!(embedded(&split), json!(record.layout));
        // The shot's takes carry their generation's layout, and so does a take read or added
        // alone.
        let takes = shots::get_shot(&app.db, shot.id).unwrap().takes;
        let layouts: Vec<Option<GenerationLayout>> = takes.into_iter().map(|t| t.layout).collect();
        assert_eq!(layouts, [Some(unsplit), Some(record.layout.clone())]);
        let take = shots::get_take(&app.db, split.take_id.unwrap()).unwrap();
        assert_eq!(take.layout.as_ref(), Some(&record.layout));
        let added = app
            .db
            .with(|c| shots::add_take(c, shot.id, split.asset.id, record.id))
            .unwrap();
        assert_eq!(added.layout, Some(record.layout));
        // A reviewed take says what its reviewer said, read alone or with its shot.
        let review = shots::add_review(
            &app.db,
            &shots::NewReview {
                take_id: take.id,
                plugin_id: "critic".into(),
                accept: false,
                score: 0.25,
                reasons: "the storm is missing".into(),
                revised_prompt: Some("a storm at sea".into()),
                revised_negative_prompt: None,
                attempt: 2,
            },
        )
        .unwrap();
        assert_eq!(
            shots::get_take(&app.db, take.id).unwrap().review,
            Some(review.clone())
        );
        let reviews: Vec<Option<shots::Review>> = shots::get_shot(&app.db, shot.id)
            .unwrap()
            .takes
            .into_iter()
            .map(|t| t.review)
            .collect();
        assert_eq!(reviews, [None, Some(review), None]);
    }

    #[test]
    fn splits_the_model_cannot_take_are_refused_at_submission_and_queue_nothing() {
        use crate::jobs::{NewJob, list_jobs};
        let (_dir, app) = studio_on_lanes(3);
        let wan = shot(
            &app,
            ShotFields {
                model: Some("tiny-wan-t2v".into()),
                ..prompt("a storm")
            },
        );
        let ltx = shot(
            &app,
            ShotFields {
                model: Some("tiny-ltx2".into()),
                ..prompt("a storm")
            },
        );
        let guided_split = json!({ "split_cards": 2, "cfg_parallel": true, "guidance": 5.0 });
        for (kind, shot_id, render, expected) in [
            (
                "generate",
                wan.id,
                json!({ "split_cards": 3 }),
                "`tiny-wan-t2v` cannot be split across 3 cards: 2 attention heads cannot be split \
                 across 3 ranks; sequence parallel takes 1, 2 ranks",
            ),
            (
                "generate",
                wan.id,
                json!({ "split_cards": 2, "cfg_parallel": true, "guidance": 1.0 }),
                "`tiny-wan-t2v` cannot be split across 2 cards with CFG parallel: CFG parallel \
                 needs guidance (a guidance scale above 1)",
            ),
            (
                "shoot",
                wan.id,
                json!({ "split_cards": 2, "cfg_parallel": true, "cache": "easycache" }),
                "`tiny-wan-t2v` cannot be split across 2 cards with CFG parallel: a step cache \
                 cannot run under CFG parallel",
            ),
            (
                "generate",
                ltx.id,
                guided_split,
                "`tiny-ltx2` cannot be split across 2 cards with CFG parallel: CFG parallel is \
                 for Wan models",
            ),
        ] {
            let new = NewJob {
                kind: kind.into(),
                params: json!({ "shot_id": shot_id, "render": render }),
                max_attempts: None,
                project_id: None,
            };
            let err = app.jobs.submit(&app, &new).unwrap_err();
            assert_eq!(err.code(), "refused", "{err}");
            assert!(
                err.to_string().starts_with(expected),
                "{kind} {render}: {err}"
            );
        }
        assert!(list_jobs(&app.db, None, 10).unwrap().is_empty());
    }

    /// Submits a `generate` job for `shot` with `render`, moves the shot to `tiny-ltx2` while the
    /// job waits (what was checked at submission no longer holds), and runs the queue until the
    /// job ends.
    async fn generate_after_the_shot_moves_to_ltx2(
        app: &Arc<App>,
        shot: i64,
        render: &RenderSettings,
    ) -> crate::jobs::Job {
        use crate::jobs::{JobQueue, NewJob, get_job};
        let new = NewJob {
            kind: "generate".into(),
            params: json!({ "shot_id": shot, "render": render }),
            max_attempts: None,
            project_id: None,
        };
        let id = app.jobs.submit(app, &new).unwrap().id;
        let ltx = ShotFields {
            model: Some("tiny-ltx2".into()),
            ..Default::default()
        };
        shots::update_shot(&app.db, shot, &ltx).unwrap();
        let workers = JobQueue::start(app, 1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let job = loop {
            let job = get_job(&app.db, id).unwrap();
            if job.state.is_finished() {
                break job;
            }
            assert!(std::time::Instant::now() < deadline, "{job:?}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        app.jobs.stop();
        for w in workers {
            w.await.unwrap();
        }
        job
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_split_refused_when_the_job_runs_fails_it_once_before_taking_a_card() {
        use crate::jobs::JobState;
        let (_dir, app) = studio_on_lanes(2);
        let shot = shot(
            &app,
            ShotFields {
                model: Some("tiny-wan-t2v".into()),
                ..prompt("a lighthouse at dusk")
            },
        );
        let render = RenderSettings {
            split_cards: 2,
            cfg_parallel: true,
            ..tiny()
        };
        // While it waits, the shot moves to a model that batches its guidance passes.
        let job = generate_after_the_shot_moves_to_ltx2(&app, shot.id, &render).await;
        assert_eq!(job.state, JobState::Failed, "{job:?}");
        assert_eq!((job.attempts, job.max_attempts), (1, 3), "not retried");
        let error = job.error.unwrap();
        assert!(
            error.starts_with(
                "`tiny-ltx2` cannot be split across 2 cards with CFG parallel: CFG parallel is \
                 for Wan models"
            ),
            "{error}"
        );
        assert_eq!(job.card, None, "no card was taken");
        let shot = shots::get_shot(&app.db, shot.id).unwrap();
        assert_eq!((shot.status.as_str(), shot.takes.len()), ("failed", 0));
    }

    #[test]
    fn sizes_the_model_cannot_make_are_refused_at_submission_and_queue_nothing() {
        use crate::jobs::{NewJob, list_jobs};
        let (_dir, app) = studio_on_lanes(1);
        let on = |model: &str| {
            let fields = ShotFields {
                model: Some(model.into()),
                ..prompt("a storm")
            };
            shot(&app, fields).id
        };
        let (wan, ltx) = (on("tiny-wan-t2v"), on("tiny-ltx2"));
        for (kind, shot_id, (width, height), expected) in [
            (
                "generate",
                wan,
                (500, 300),
                "`tiny-wan-t2v` cannot make it: height and width must be positive multiples of 16 \
                 (VAE scale 8 x patch 2x2), got 500x300",
            ),
            (
                "shoot",
                wan,
                (500, 300),
                "`tiny-wan-t2v` cannot make it: height and width must be positive multiples of 16",
            ),
            // Wan's 16 is not LTX-2's 32; the message names the model, not its folder.
            (
                "generate",
                ltx,
                (48, 48),
                "`tiny-ltx2` cannot make it: height and width must be positive multiples of 32, \
                 got 48x48",
            ),
        ] {
            let new = NewJob {
                kind: kind.into(),
                params: json!({ "shot_id": shot_id, "render": { "width": width, "height": height } }),
                max_attempts: None,
                project_id: None,
            };
            let err = app.jobs.submit(&app, &new).unwrap_err();
            assert_eq!(err.code(), "refused", "{err}");
            assert!(err.to_string().starts_with(expected), "{kind}: {err}");
        }
        assert!(list_jobs(&app.db, None, 10).unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_size_refused_when_the_job_runs_fails_it_once_before_taking_a_card() {
        use crate::jobs::JobState;
        let (_dir, app) = studio_on_lanes(1);
        let fields = ShotFields {
            model: Some("tiny-wan-t2v".into()),
            ..prompt("a lighthouse at dusk")
        };
        let shot = shot(&app, fields);
        let render = RenderSettings {
            width: 48,
            height: 48,
            ..tiny()
        };
        // While it waits, the shot moves to a model whose sides are multiples of 32.
        let job = generate_after_the_shot_moves_to_ltx2(&app, shot.id, &render).await;
        assert_eq!(job.state, JobState::Failed, "{job:?}");
        assert_eq!((job.attempts, job.max_attempts), (1, 3), "not retried");
        let error = job.error.unwrap();
        assert!(
            error.contains("height and width must be positive multiples of 32, got 48x48"),
            "{error}"
        );
        assert_eq!(job.card, None, "no card was taken");
    }

    #[test]
    fn a_size_the_engine_refuses_fails_for_good() {
        // What the configs cannot tell (a worker's model, say) the engine refuses when it runs.
        let (dir, _app) = studio();
        let model = models::video_model_dir(dir.path(), "tiny-wan-t2v").unwrap();
        let mut pipeline =
            Pipeline::open(&model, &candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
        let render = RenderSettings {
            width: 500,
            height: 300,
            ..tiny()
        };
        let task = GenerationTask::plain("tiny-wan-t2v", "a storm", Length::Frames(5), render);
        let err = task
            .generate(&mut pipeline, &mut |_, _, _| ControlFlow::Continue(()))
            .err()
            .expect("refused");
        assert!(err.is_permanent(), "{err:?}");
        assert!(err.to_string().contains("multiples of 16"), "{err}");
    }

    #[test]
    fn bad_requests_are_refused_before_queueing() {
        let (_dir, app) = studio();
        let missing = shot(
            &app,
            ShotFields {
                model: Some("Wan-AI/Wan2.1-T2V-14B-Diffusers".into()),
                ..prompt("a storm")
            },
        );
        let err = GenerateRunner
            .check(&app, &json!({ "shot_id": missing.id }))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "`Wan-AI/Wan2.1-T2V-14B-Diffusers` is not installed (installed: tiny-wan-t2v)"
            ),
            "{err}"
        );

        let fine = shot(&app, prompt("calm sea"));
        for (params, expected) in [
            (
                json!({ "shot_id": fine.id, "render": { "steps": 0 } }),
                "steps must be between 1 and 200",
            ),
            (
                json!({ "shot_id": fine.id, "render": { "width": 100000 } }),
                "larger than",
            ),
            (
                json!({ "shot_id": fine.id, "render": { "fps": 8 } }),
                "unknown field `fps`",
            ),
            (
                json!({ "shot_id": fine.id, "render": { "cache": "fastcache" } }),
                "cache: unknown cache method \"fastcache\"",
            ),
            (
                json!({ "shot_id": fine.id, "render": { "cache": "teacache:-1" } }),
                "threshold must be a positive number",
            ),
            (json!({ "shot_id": 999 }), "shot 999 not found"),
            // The studio of these tests has one card.
            (
                json!({ "shot_id": fine.id, "render": { "split_cards": 2 } }),
                "split_cards: 2 cards for one generation, and the studio has 1 of its own",
            ),
            (
                json!({ "shot_id": fine.id, "render": { "split_cards": 0 } }),
                "split_cards: 0 ranks cannot run",
            ),
            (
                json!({ "shot_id": fine.id, "render": { "cfg_parallel": true } }),
                "split_cards: 1 ranks cannot run CFG parallel: give a positive, even number",
            ),
        ] {
            let err = GenerateRunner.check(&app, &params).unwrap_err().to_string();
            assert!(err.contains(expected), "{params}: {err}");
        }

        let empty = shot(&app, ShotFields::default());
        let err = GenerateRunner
            .check(&app, &json!({ "shot_id": empty.id }))
            .unwrap_err();
        assert_eq!(err.to_string(), "shot 1 has no prompt");
    }

    #[test]
    fn only_pipelines_are_video_models() {
        let (dir, _app) = studio();
        // A folder with a file that is neither a pipeline nor a language model: not a candidate.
        let stray = models::models_dir(dir.path()).join("<b>notes</b>");
        std::fs::create_dir_all(&stray).unwrap();
        std::fs::write(stray.join("README.md"), "not a model").unwrap();
        assert_eq!(
            models::resolve_model(dir.path(), None).unwrap(),
            "tiny-wan-t2v"
        );
        let err = models::resolve_model(dir.path(), Some("<b>notes</b>")).unwrap_err();
        assert!(err.to_string().contains("is not installed"), "{err}");
    }
}
