//! The cards jobs run on and the model each one holds. A card is a CUDA device (bf16) or, where
//! there is none, a CPU lane (f32); `--gpus` chooses them, every CUDA device by default. Each card
//! keeps one resident model at a time: a generation pipeline, a language model or a pair of
//! finishing models (upscaler, RIFE). Work that needs a model takes a free card, preferring one
//! that already holds that model (no reload), then an empty one, then any (whose model is
//! released first, logged, so two models never share a card's memory). With every card busy it
//! waits, reporting `waiting for a GPU` so that it can be cancelled meanwhile. A card is held for
//! the whole run, which also serialises the plugins' own generations with the GPU lane's jobs on
//! that card. Nothing else in the studio loads a model.
//!
//! Workers on other machines (`videosdgx worker --join`, [`crate::workers`]) add their cards
//! here while they answer: a generation ([`GenerationTask::runs_anywhere`]: a video, a look, a
//! keyframe) may take one of them like any other card; the language model and finishing run on
//! the studio's own.
//!
//! A generation split across cards ([`RenderSettings::split_cards`]) takes that many of the
//! studio's own cards at once, never some of them: two split generations can never each hold
//! part of what the other waits for. While one waits, no single piece of work takes a studio
//! card, so cards freed one by one gather for it instead of going to later work.

use crate::error::{Result, StudioError};
use crate::generation::{GenerationTask, RenderSettings};
use crate::workers::RemoteCard;
use anyhow::Context;
use candle_core::{DType, Device};
use serde::Serialize;
use std::collections::VecDeque;
use std::fmt;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::Duration;
use utoipa::ToSchema;
use videosdgx_engine::finishing::finish::{FinishModels, FinishSpec};
use videosdgx_engine::parallel::{Layout, RankTime, SplitGeneration, check_layout, on_every_card};
use videosdgx_engine::pipelines::{Cancelled, GenerateParams, Pipeline, Quant, VideoSize};
use videosdgx_engine::text::chat::ChatModel;

/// Receives `(stage, step, total)`; `Break` stops the work.
pub type Report<'a> = &'a mut dyn FnMut(&str, u64, u64) -> ControlFlow<()>;

/// How often work waiting for a card reports, so that a cancel reaches it.
const WAIT_REPORT: Duration = Duration::from_millis(250);

/// A device the studio runs models on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Card {
    Cuda(usize),
    Cpu,
}

impl fmt::Display for Card {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Card::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
            Card::Cpu => f.write_str("cpu"),
        }
    }
}

/// The cards of `--gpus`: `all` (every CUDA device this build sees, else one CPU lane), a comma
/// list of CUDA ordinals (`0`, `cuda:1`) and CPU lanes (`cpu`, once per lane), or `none` (a
/// studio whose generations all run on workers' cards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardSet(Vec<Card>);

impl CardSet {
    /// Every CUDA device, else one CPU lane.
    pub fn all() -> CardSet {
        match cuda_devices() {
            0 => CardSet(vec![Card::Cpu]),
            n => CardSet((0..n).map(Card::Cuda).collect()),
        }
    }

    pub fn cards(&self) -> &[Card] {
        &self.0
    }

    /// Refuses CUDA ordinals this machine does not have.
    pub fn check(&self) -> Result<()> {
        let present = cuda_devices();
        for card in &self.0 {
            if let Card::Cuda(ordinal) = card
                && *ordinal >= present
            {
                return Err(StudioError::Invalid(format!(
                    "no CUDA device {ordinal}: this machine has {present}{}",
                    if cfg!(feature = "cuda") {
                        ""
                    } else {
                        " (this build has no CUDA)"
                    }
                )));
            }
        }
        Ok(())
    }
}

impl Default for CardSet {
    fn default() -> Self {
        Self::all()
    }
}

impl FromStr for CardSet {
    type Err = String;

    fn from_str(spec: &str) -> std::result::Result<CardSet, String> {
        let spec = spec.trim();
        match spec {
            "all" => return Ok(CardSet::all()),
            "none" => return Ok(CardSet(Vec::new())),
            _ => {}
        }
        let mut cards = Vec::new();
        for item in spec.split(',').map(str::trim) {
            let card = match item {
                "cpu" => Card::Cpu,
                _ => item
                    .strip_prefix("cuda:")
                    .unwrap_or(item)
                    .parse()
                    .map(Card::Cuda)
                    .map_err(|_| {
                        format!(
                            "`{item}` is not a card: write `all`, `none`, `0,1`, `cuda:0` or `cpu`"
                        )
                    })?,
            };
            if card != Card::Cpu && cards.contains(&card) {
                return Err(format!("{card} is named twice"));
            }
            cards.push(card);
        }
        Ok(CardSet(cards))
    }
}

/// CUDA devices the driver reports; none without CUDA in the build or a driver.
fn cuda_devices() -> usize {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::CudaContext;
        CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
    }
    #[cfg(not(feature = "cuda"))]
    0
}

/// What a piece of work needs resident on its card.
#[derive(Clone, Copy)]
enum Wanted<'a> {
    Generation(&'a Path, Option<Quant>),
    Language(&'a Path, Option<Quant>),
    Finishing(&'a (Option<PathBuf>, Option<PathBuf>)),
}

enum Resident {
    // Boxed: both structs are kilobytes large, and the slot holds one at a time.
    Generation {
        dir: PathBuf,
        quant: Option<Quant>,
        pipeline: Box<Pipeline>,
    },
    Language {
        dir: PathBuf,
        quant: Option<Quant>,
        model: Box<ChatModel>,
    },
    /// The upscaler and interpolator files of a finish, loaded together.
    Finishing {
        files: (Option<PathBuf>, Option<PathBuf>),
        models: Box<FinishModels>,
    },
}

impl Resident {
    fn dir(&self) -> &Path {
        match self {
            Resident::Generation { dir, .. } | Resident::Language { dir, .. } => dir,
            Resident::Finishing { files, .. } => files
                .0
                .as_deref()
                .or(files.1.as_deref())
                .unwrap_or(Path::new("finishing")),
        }
    }

    fn is(&self, wanted: Wanted) -> bool {
        match (self, wanted) {
            (Resident::Generation { dir, quant, .. }, Wanted::Generation(d, q))
            | (Resident::Language { dir, quant, .. }, Wanted::Language(d, q)) => {
                dir == d && *quant == q
            }
            (Resident::Finishing { files, .. }, Wanted::Finishing(f)) => files == f,
            _ => false,
        }
    }
}

/// One card and its resident model.
struct CardModel {
    card: Card,
    label: String,
    /// Opened at first use: a one-shot command that runs no model opens no device.
    device: OnceLock<Device>,
    dtype: DType,
    resident: Mutex<Option<Resident>>,
    /// What the card holds, by folder name, for [`Gpus::states`]: the resident model itself is
    /// locked while it runs.
    holding: Mutex<Option<String>>,
    /// A worker's card: it runs generation tasks on that worker, whose pipeline stays resident
    /// there (`resident` stays empty).
    remote: Option<Arc<RemoteCard>>,
}

impl CardModel {
    /// A worker's card is there while its worker answers.
    fn alive(&self) -> bool {
        self.remote.as_ref().is_none_or(|r| r.alive())
    }

    /// Whether the card holds `wanted` (`Some(false)`: it holds another model; `None`: none).
    fn holds(&self, wanted: Wanted) -> Option<bool> {
        if let (Some(remote), Wanted::Generation(dir, quant)) = (&self.remote, wanted) {
            return remote.holds(dir, quant);
        }
        self.resident
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|r| r.is(wanted))
    }

    fn device(&self) -> Result<&Device> {
        if let Some(device) = self.device.get() {
            return Ok(device);
        }
        let device = match self.card {
            Card::Cuda(ordinal) => Device::new_cuda(ordinal).map_err(|e| {
                StudioError::Internal(anyhow::anyhow!("cannot open {}: {e}", self.card))
            })?,
            Card::Cpu => Device::Cpu,
        };
        Ok(self.device.get_or_init(|| device))
    }
}

/// Who holds a card.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    Free,
    /// Held for the job with this id, or for work outside any job.
    Held(Option<i64>),
}

/// Who holds each card, and the split generations waiting for theirs.
#[derive(Debug, Clone, PartialEq)]
struct Slots {
    held: Vec<Slot>,
    /// The tickets of split generations waiting for cards, oldest first: the first takes its
    /// cards once enough are free; while any waits, single work takes no studio card.
    splits: VecDeque<u64>,
    next_ticket: u64,
}

/// What a piece of work takes.
#[derive(Clone, Copy)]
enum Need {
    /// One card; a worker's too when the work runs `anywhere`.
    One { anywhere: bool },
    /// This many of the studio's own cards, for one split generation.
    Split(usize),
}

/// A split generation's place among those waiting for cards; leaving it (cards taken, stopped,
/// refused) lets the next one, or single work, go on.
struct SplitTurn<'a> {
    gpus: &'a Gpus,
    ticket: u64,
}

impl Drop for SplitTurn<'_> {
    fn drop(&mut self) {
        self.gpus.lock_slots().splits.retain(|t| *t != self.ticket);
        self.gpus.freed.notify_all();
    }
}

/// What a generation ran with: the engine's parameters and, when it was split across cards, how
/// and each card's time (rank order; `device` is the card's name).
#[derive(Debug)]
pub struct Generated {
    pub params: GenerateParams,
    pub split: Option<Layout>,
    pub ranks: Vec<RankTime>,
}

/// The studio's cards and who holds each.
pub struct Gpus {
    /// The studio's own cards, then workers' cards in the order they joined (a card that left
    /// keeps its place, unused: indexes stay valid). Locked after `slots` when both are.
    cards: RwLock<Vec<Arc<CardModel>>>,
    slots: Mutex<Slots>,
    freed: Condvar,
}

/// A card as the API shows it: what it holds and what it runs now.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct CardState {
    /// `cuda:1`, or `cpu` (`cpu#0`, `cpu#1` for several CPU lanes); a worker's card is named
    /// after its worker (`spark-2/cuda:0`).
    pub card: String,
    /// The model loaded on it (its folder's name), if any.
    pub model: Option<String>,
    /// Whether work holds it now.
    pub busy: bool,
    /// The job that work runs for (none for a plugin's call outside a job).
    pub job_id: Option<i64>,
}

impl Gpus {
    /// The cards of `set`, each opened when first used.
    pub fn open(set: &CardSet) -> Result<Gpus> {
        set.check()?;
        let cpu_lanes = set.cards().iter().filter(|c| **c == Card::Cpu).count();
        let mut cpu_lane = 0;
        let cards: Vec<Arc<CardModel>> = set
            .cards()
            .iter()
            .map(|&card| {
                let (label, dtype) = match card {
                    Card::Cuda(_) => (card.to_string(), DType::BF16),
                    Card::Cpu if cpu_lanes == 1 => (card.to_string(), DType::F32),
                    Card::Cpu => {
                        cpu_lane += 1;
                        (format!("cpu#{}", cpu_lane - 1), DType::F32)
                    }
                };
                Arc::new(CardModel {
                    card,
                    label,
                    device: OnceLock::new(),
                    dtype,
                    resident: Mutex::new(None),
                    holding: Mutex::new(None),
                    remote: None,
                })
            })
            .collect();
        Ok(Gpus {
            slots: Mutex::new(Slots {
                held: vec![Slot::Free; cards.len()],
                splits: VecDeque::new(),
                next_ticket: 0,
            }),
            cards: RwLock::new(cards),
            freed: Condvar::new(),
        })
    }

    /// Adds a worker's cards; each is used while its worker answers.
    pub fn join(&self, remote: &[Arc<RemoteCard>]) {
        let mut slots = self.lock_slots();
        let mut cards = self.cards.write().unwrap_or_else(|p| p.into_inner());
        for card in remote {
            cards.push(Arc::new(CardModel {
                card: Card::Cpu,
                label: card.label().to_string(),
                device: OnceLock::new(),
                dtype: DType::F32,
                resident: Mutex::new(None),
                holding: Mutex::new(None),
                remote: Some(card.clone()),
            }));
            slots.held.push(Slot::Free);
        }
        drop((slots, cards));
        // Work waiting for a card may take one of these.
        self.freed.notify_all();
    }

    /// The cards there are now (the studio's and those of workers that answer): as many
    /// generations run at once.
    pub fn len(&self) -> usize {
        self.lock_cards().iter().filter(|c| c.alive()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every card there is, what it holds and whom for.
    pub fn states(&self) -> Vec<CardState> {
        let slots = self.lock_slots().held.clone();
        self.lock_cards()
            .iter()
            .zip(slots)
            .filter(|(card, _)| card.alive())
            .map(|(card, slot)| CardState {
                card: card.label.clone(),
                model: card
                    .holding
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
                busy: slot != Slot::Free,
                job_id: match slot {
                    Slot::Held(job) => job,
                    Slot::Free => None,
                },
            })
            .collect()
    }

    /// The card job `job` holds now, by name (`cuda:1`); the cards of a split generation
    /// joined by `+` (`cuda:0+cuda:1`).
    pub fn card_of(&self, job: i64) -> Option<String> {
        let slots = self.lock_slots();
        let cards = self.lock_cards();
        let names: Vec<&str> = (0..slots.held.len())
            .filter(|&i| slots.held[i] == Slot::Held(Some(job)))
            .map(|i| cards[i].label.as_str())
            .collect();
        (!names.is_empty()).then(|| names.join("+"))
    }

    /// How `render` splits one generation of `size` (as [`RenderSettings::check_size`] resolved
    /// it) of installed model `model` (in `dir`) across the studio's own cards (`None`: it runs on one); refused before any card is taken
    /// when the layout is none, and, for good ([`StudioError::Refused`]), when the studio has
    /// fewer cards of its own or the model's configs cannot take it (the engine's
    /// [`videosdgx_engine::parallel::check_layout`]: heads, guidance, step cache, and tokens
    /// enough for every card at this size).
    pub fn check_split(
        &self,
        render: &RenderSettings,
        model: &str,
        dir: &Path,
        size: VideoSize,
    ) -> Result<Option<Layout>> {
        let Some(layout) = render.split()? else {
            return Ok(None);
        };
        let own = self
            .lock_cards()
            .iter()
            .filter(|c| c.remote.is_none())
            .count();
        check_own_cards(layout.ranks(), own)?;
        let support = Pipeline::inspect_split(dir, size)
            .map_err(|e| StudioError::Internal(e.context(format!("reading model `{model}`"))))?;
        check_layout(
            layout,
            &support,
            render.run_guidance()?,
            render.cache.is_some(),
        )
        .map_err(|refused| {
            StudioError::Refused(format!(
                "`{model}` cannot be split across {} cards{}: {refused}",
                layout.ranks(),
                if layout.cfg { " with CFG parallel" } else { "" }
            ))
        })?;
        Ok(Some(layout))
    }

    /// Runs generation `task` with the pipeline of its model (installed in `dir`) on a card
    /// taken for `job`, and writes its output (an MP4, a still's PNG) to `out`. A studio's card
    /// loads the pipeline unless it holds it (stage `loading model`, which may stop it) and is
    /// given back before the output is written; a worker's card runs the whole task on its
    /// worker, which sends the output. A task split across cards takes that many studio cards at
    /// once ([`Gpus::with_split_pipelines`]). A size the model cannot make or a split it cannot
    /// take is refused for good before any card is taken.
    pub fn generate(
        &self,
        job: Option<i64>,
        dir: &Path,
        task: &GenerationTask,
        out: &Path,
        report: Report,
    ) -> Result<Generated> {
        let size = task.render.check_size(&task.model, dir, task.length)?;
        if let Some(layout) = self.check_split(&task.render, &task.model, dir, size)? {
            let (params, SplitGeneration { video, ranks }) = self.with_split_pipelines(
                job,
                &task.model,
                dir,
                task.render.quant,
                layout.ranks(),
                report,
                |pipelines, cards, report| {
                    let (params, mut split) = task.generate_split(pipelines, layout, report)?;
                    // Named as the studio names its cards (two CPU lanes are both `cpu` to it).
                    for (rank, card) in split.ranks.iter_mut().zip(cards) {
                        rank.device = card.clone();
                    }
                    Ok((params, split))
                },
            )?;
            task.write(&params, &video, Some(layout), &ranks, out, report)?;
            return Ok(Generated {
                params,
                split: Some(layout),
                ranks,
            });
        }
        let wanted = Wanted::Generation(dir, task.render.quant);
        let card = self.take(job, wanted, task.runs_anywhere(), report)?;
        if let Some(remote) = card.model().remote.clone() {
            let params = remote.run(dir, task, out, report);
            card.note_remote(&task.model, params.is_ok());
            return params.map(|params| Generated {
                params,
                split: None,
                ranks: Vec::new(),
            });
        }
        let (params, video) = self.on_pipeline(
            card,
            &task.model,
            dir,
            task.render.quant,
            report,
            |pipeline, report| task.generate(pipeline, report),
        )?;
        task.write(&params, &video, None, &[], out, report)?;
        Ok(Generated {
            params,
            split: None,
            ranks: Vec::new(),
        })
    }

    /// [`Gpus::on_pipeline`] on a studio's card taken for `job`: what the tests of residency
    /// run, without a task.
    #[cfg(test)]
    fn with_pipeline<R>(
        &self,
        job: Option<i64>,
        name: &str,
        dir: &Path,
        quant: Option<Quant>,
        report: Report,
        f: impl FnOnce(&mut Pipeline, Report) -> Result<R>,
    ) -> Result<R> {
        let card = self.take(job, Wanted::Generation(dir, quant), false, report)?;
        self.on_pipeline(card, name, dir, quant, report, f)
    }

    /// Runs `f` on the generation pipeline of installed model `name` (in `dir`) with its
    /// transformers' weights in `quant` (as loaded when `None`), on `card` (the studio's),
    /// loading the pipeline first (reported as stage `loading model`, which may stop it) unless
    /// that card holds it so. A quantized pipeline is reloaded for work that wants other weights.
    /// `f` gets `report` back for its own progress.
    fn on_pipeline<R>(
        &self,
        card: Taken,
        name: &str,
        dir: &Path,
        quant: Option<Quant>,
        report: Report,
        f: impl FnOnce(&mut Pipeline, Report) -> Result<R>,
    ) -> Result<R> {
        let wanted = Wanted::Generation(dir, quant);
        let mut resident = card.holding(wanted, name, "loading model", report, || {
            load_generation(card.model(), dir, quant)
                .map_err(|e| StudioError::Internal(e.context(format!("loading model `{name}`"))))
        })?;
        f(resident_pipeline(&mut resident), report)
    }

    /// Runs `f` on the generation pipeline of installed model `name` (in `dir`, in `quant`) made
    /// resident on each of `count` studio cards taken at once for `job` ([`Gpus::on_pipeline`]
    /// for one card); `f` also gets the cards' names, in the pipelines' order. Every card holds
    /// its pipeline before `f` runs: a card that fails to load fails the work with its error,
    /// and every card is given back.
    #[allow(clippy::too_many_arguments)]
    fn with_split_pipelines<R>(
        &self,
        job: Option<i64>,
        name: &str,
        dir: &Path,
        quant: Option<Quant>,
        count: usize,
        report: Report,
        f: impl FnOnce(Vec<&mut Pipeline>, &[String], Report) -> Result<R>,
    ) -> Result<R> {
        let wanted = Wanted::Generation(dir, quant);
        let cards = self.take_cards(job, wanted, Need::Split(count), report)?;
        let names: Vec<String> = cards.iter().map(|c| c.model().label.clone()).collect();
        // Locked after `cards` were taken, so released before they are given back.
        let mut residents: Vec<_> = cards.iter().map(Taken::resident).collect();
        let loads = residents
            .iter()
            .filter(|r| !r.as_ref().is_some_and(|r| r.is(wanted)))
            .count();
        if loads > 0 {
            for resident in &mut residents {
                if !resident.as_ref().is_some_and(|r| r.is(wanted)) {
                    release(resident, name);
                }
            }
            loading(report, "loading model")?;
        }
        // Loaded on every card at once; a card that holds it already returns at once.
        let each: Vec<_> = residents
            .iter_mut()
            .map(|r| &mut **r)
            .zip(cards.iter().map(Taken::model))
            .collect();
        on_every_card(each, |_, (resident, card)| {
            make_resident(card, resident, dir, quant)
                .with_context(|| format!("loading model `{name}` on {}", card.label))
        })?;
        for (card, resident) in cards.iter().zip(&residents) {
            card.note(resident);
        }
        f(
            residents.iter_mut().map(|r| resident_pipeline(r)).collect(),
            &names,
            report,
        )
    }

    /// Runs `f` on the language model `name` (in `dir`) with its decoder's weights in `quant`
    /// (as loaded when `None`), as [`Gpus::with_pipeline`] does (stage `loading language
    /// model`).
    pub fn with_language<R>(
        &self,
        job: Option<i64>,
        name: &str,
        dir: &Path,
        quant: Option<Quant>,
        report: Report,
        f: impl FnOnce(&ChatModel, Report) -> Result<R>,
    ) -> Result<R> {
        let wanted = Wanted::Language(dir, quant);
        let card = self.take(job, wanted, false, report)?;
        let resident = card.holding(wanted, name, "loading language model", report, || {
            let open = || {
                let mut model = ChatModel::load(dir, card.model().device()?, card.model().dtype)?;
                if let Some(quant) = quant {
                    model.quantize(quant)?;
                }
                anyhow::Ok(model)
            };
            let model = open().map_err(|e| {
                StudioError::Internal(e.context(format!("loading language model `{name}`")))
            })?;
            Ok(Resident::Language {
                dir: dir.to_path_buf(),
                quant,
                model: Box::new(model),
            })
        })?;
        match resident.as_ref() {
            Some(Resident::Language { model, .. }) => f(model, report),
            _ => unreachable!("made resident above"),
        }
    }

    /// Runs `f` on the finishing models `spec` names (loaded as [`Gpus::with_pipeline`] does,
    /// stage `loading finishing models`), with the device frames go to.
    pub fn with_finishing<R>(
        &self,
        job: Option<i64>,
        spec: &FinishSpec,
        report: Report,
        f: impl FnOnce(&FinishModels, &Device, Report) -> Result<R>,
    ) -> Result<R> {
        let files = (spec.upscaler.clone(), spec.interpolator.clone());
        let wanted = Wanted::Finishing(&files);
        let card = self.take(job, wanted, false, report)?;
        let (device, dtype) = (card.model().device()?, card.model().dtype);
        let stage = "loading finishing models";
        let resident = card.holding(wanted, "finishing models", stage, report, || {
            let models = FinishModels::load(spec, device, dtype)
                .map_err(|e| StudioError::Invalid(format!("{e:#}")))?;
            Ok(Resident::Finishing {
                files: files.clone(),
                models: Box::new(models),
            })
        })?;
        match resident.as_ref() {
            Some(Resident::Finishing { models, .. }) => f(models, device, report),
            _ => unreachable!("made resident above"),
        }
    }

    /// Takes a free card for `job` ([`Gpus::take_cards`]).
    fn take(
        &self,
        job: Option<i64>,
        wanted: Wanted,
        anywhere: bool,
        report: Report,
    ) -> Result<Taken<'_>> {
        let mut taken = self.take_cards(job, wanted, Need::One { anywhere }, report)?;
        Ok(taken.pop().expect("one card taken"))
    }

    /// Takes the free cards `need` asks for, for `job`, all at once: those holding `wanted`
    /// first, then empty ones, then any; a worker's card only for one piece of work that runs
    /// `anywhere`. Waits while too few are free (or, for work that may go anywhere, while there
    /// is none: a worker may join), reporting `waiting for a GPU` (`waiting for N GPUs`); a stop
    /// asked for then takes none. Split generations take their cards in the order they came,
    /// before any single work takes a studio card.
    fn take_cards(
        &self,
        job: Option<i64>,
        wanted: Wanted,
        need: Need,
        report: Report,
    ) -> Result<Vec<Taken<'_>>> {
        // Declared before `slots`, so dropped after it: leaving the queue locks the slots.
        let mut turn: Option<SplitTurn> = None;
        let mut slots = self.lock_slots();
        loop {
            let cards = self.lock_cards();
            let own = cards.iter().filter(|c| c.remote.is_none()).count();
            let count = match need {
                Need::One { anywhere: false } if own == 0 => {
                    return Err(StudioError::Invalid(
                        "this work runs on the studio's own cards, and it has none (`--gpus \
                         none`): workers' cards run only generations (videos, looks, keyframes)"
                            .into(),
                    ));
                }
                Need::One { .. } => 1,
                Need::Split(count) => {
                    check_own_cards(count, own)?;
                    count
                }
            };
            let first_split = slots.splits.front().copied();
            let may_take = |card: &CardModel| match need {
                Need::One { anywhere } if card.remote.is_some() => anywhere,
                Need::One { .. } => first_split.is_none(),
                Need::Split(_) => {
                    card.remote.is_none()
                        && first_split.is_none_or(|t| turn.as_ref().is_some_and(|m| m.ticket == t))
                }
            };
            // A free card's resident model is locked only here, under `slots`: no one waits.
            let mut free: Vec<usize> = (0..slots.held.len())
                .filter(|&i| slots.held[i] == Slot::Free && cards[i].alive())
                .filter(|&i| may_take(&cards[i]))
                .collect();
            free.sort_by_cached_key(|&i| match cards[i].holds(wanted) {
                Some(true) => 0,
                None => 1,
                Some(false) => 2,
            });
            if free.len() >= count {
                let taken = free[..count]
                    .iter()
                    .map(|&index| {
                        slots.held[index] = Slot::Held(job);
                        Taken {
                            gpus: self,
                            index,
                            card: cards[index].clone(),
                        }
                    })
                    .collect();
                drop((cards, slots));
                return Ok(taken);
            }
            if matches!(need, Need::Split(_)) && turn.is_none() {
                let ticket = slots.next_ticket;
                slots.next_ticket += 1;
                slots.splits.push_back(ticket);
                turn = Some(SplitTurn { gpus: self, ticket });
            }
            drop(cards);
            let seen = slots.clone();
            drop(slots);
            match need {
                Need::One { .. } => loading(report, "waiting for a GPU")?,
                Need::Split(count) => loading(report, &format!("waiting for {count} GPUs"))?,
            }
            slots = self.lock_slots();
            // Unless a card was given back or joined meanwhile, wait for one.
            if *slots == seen {
                slots = self
                    .freed
                    .wait_timeout(slots, WAIT_REPORT)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
    }

    fn lock_cards(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<CardModel>>> {
        self.cards.read().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A card held until dropped.
struct Taken<'a> {
    gpus: &'a Gpus,
    index: usize,
    card: Arc<CardModel>,
}

impl Taken<'_> {
    fn model(&self) -> &CardModel {
        &self.card
    }

    /// Records what a worker's card holds after a task of `model`: its pipeline stays resident
    /// on the worker when the task succeeded.
    fn note_remote(&self, model: &str, succeeded: bool) {
        *self.card.holding.lock().unwrap_or_else(|p| p.into_inner()) =
            succeeded.then(|| model.rsplit('/').next().unwrap_or(model).to_string());
    }

    fn resident(&self) -> MutexGuard<'_, Option<Resident>> {
        self.model()
            .resident
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The card's resident model, made `wanted` (`name`) unless it is already: what the card
    /// held is released, `stage` reported (a stop asked for then loads nothing) and `load` run.
    /// What the card holds is noted either way.
    fn holding(
        &self,
        wanted: Wanted,
        name: &str,
        stage: &str,
        report: Report,
        load: impl FnOnce() -> Result<Resident>,
    ) -> Result<MutexGuard<'_, Option<Resident>>> {
        let mut resident = self.resident();
        if !resident.as_ref().is_some_and(|r| r.is(wanted)) {
            release(&mut resident, name);
            loading(report, stage)?;
            *resident = Some(load()?);
        }
        self.note(&resident);
        Ok(resident)
    }

    /// Records what the card holds, for [`Gpus::states`]: once loaded, and when given back.
    fn note(&self, resident: &Option<Resident>) {
        let name = resident.as_ref().map(|r| {
            r.dir().file_name().map_or_else(
                || r.dir().display().to_string(),
                |n| n.to_string_lossy().into(),
            )
        });
        *self.card.holding.lock().unwrap_or_else(|p| p.into_inner()) = name;
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        // Also after a load that failed or was stopped: the card may hold nothing now.
        if self.card.remote.is_none() {
            self.note(&self.resident());
        }
        self.gpus.lock_slots().held[self.index] = Slot::Free;
        self.gpus.freed.notify_all();
    }
}

/// Refuses a split over more cards than the studio's own: workers' cards take no part in one.
fn check_own_cards(count: usize, own: usize) -> Result<()> {
    if count > own {
        return Err(StudioError::Refused(format!(
            "split_cards: {count} cards for one generation, and the studio has {own} of its own \
             (`--gpus`); workers' cards take no part in a split"
        )));
    }
    Ok(())
}

/// Loads the generation pipeline of `dir` with its transformers' weights in `quant` onto
/// `card`, unless `resident` holds it so (a model it holds otherwise was released first).
fn make_resident(
    card: &CardModel,
    resident: &mut Option<Resident>,
    dir: &Path,
    quant: Option<Quant>,
) -> anyhow::Result<()> {
    if !resident
        .as_ref()
        .is_some_and(|r| r.is(Wanted::Generation(dir, quant)))
    {
        *resident = Some(load_generation(card, dir, quant)?);
    }
    Ok(())
}

/// The generation pipeline in `dir` opened on `card`, its transformers' weights in `quant`.
fn load_generation(card: &CardModel, dir: &Path, quant: Option<Quant>) -> anyhow::Result<Resident> {
    let mut pipeline = Pipeline::open(dir, card.device()?, card.dtype)?;
    if let Some(quant) = quant {
        pipeline.quantize(quant)?;
    }
    Ok(Resident::Generation {
        dir: dir.to_path_buf(),
        quant,
        pipeline: Box::new(pipeline),
    })
}

/// The generation pipeline a card was made to hold ([`make_resident`]).
fn resident_pipeline(resident: &mut Option<Resident>) -> &mut Pipeline {
    match resident {
        Some(Resident::Generation { pipeline, .. }) => pipeline,
        _ => unreachable!("made resident before"),
    }
}

/// Reports a stage before slow or blocking work; a stop asked for here stops before it.
fn loading(report: Report, stage: &str) -> Result<()> {
    match report(stage, 0, 1) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(StudioError::Internal(anyhow::Error::new(Cancelled))),
    }
}

/// Frees the resident model before `next` is loaded: a card holds one model at a time.
fn release(resident: &mut Option<Resident>, next: &str) {
    if let Some(old) = resident.take() {
        tracing::info!(
            released = %old.dir().display(),
            loading = next,
            "a card holds one model at a time: releasing the resident one"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::Length;
    use std::sync::mpsc;

    fn fixture(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(path)
    }

    /// [`Gpus::check_split`] of a generation `length` long of `model` in `dir`, at the size
    /// submission resolves for it.
    fn check_split_for(
        gpus: &Gpus,
        render: &RenderSettings,
        model: &str,
        dir: &Path,
        length: Length,
    ) -> Result<Option<Layout>> {
        gpus.check_split(render, model, dir, render.size(length.frames(dir).unwrap()))
    }

    fn cpu_lanes(n: usize) -> Gpus {
        Gpus::open(&vec!["cpu"; n].join(",").parse().unwrap()).unwrap()
    }

    #[test]
    fn the_resident_model_is_reused_and_released_only_for_another() {
        let gpus = cpu_lanes(1);
        let (wan, qwen) = (fixture("tiny-wan-t2v"), fixture("text/qwen3/model"));
        let mut loads = Vec::new();
        let mut report = |stage: &str, _: u64, _: u64| {
            loads.push(stage.to_string());
            ControlFlow::Continue(())
        };
        for _ in 0..2 {
            gpus.with_language(None, "qwen", &qwen, None, &mut report, |model, _| {
                assert!(!model.sees_images());
                Ok(())
            })
            .unwrap();
        }
        gpus.with_pipeline(None, "wan", &wan, None, &mut report, |_, _| Ok(()))
            .unwrap();
        gpus.with_language(None, "qwen", &qwen, None, &mut report, |_, _| Ok(()))
            .unwrap();
        // Other weights are another model: reloaded, then reused.
        for _ in 0..2 {
            gpus.with_language(
                None,
                "qwen",
                &qwen,
                Some(Quant::Nvfp4),
                &mut report,
                |_, _| Ok(()),
            )
            .unwrap();
        }
        assert_eq!(
            loads,
            [
                "loading language model",
                "loading model",
                "loading language model",
                "loading language model"
            ]
        );
    }

    #[test]
    fn a_stop_before_loading_loads_nothing() {
        let gpus = cpu_lanes(1);
        let err = gpus
            .with_language(
                None,
                "qwen",
                &fixture("text/qwen3/model"),
                None,
                &mut |_, _, _| ControlFlow::Break(()),
                |_, _| Ok(()),
            )
            .unwrap_err();
        assert!(crate::generation::is_cancelled(&err), "{err}");
        assert!(gpus.lock_cards()[0].resident.lock().unwrap().is_none());
        assert_eq!(gpus.lock_slots().held, [Slot::Free]);
    }

    #[test]
    fn work_goes_to_the_card_that_holds_its_model() {
        let gpus = cpu_lanes(2);
        let (wan, qwen) = (fixture("tiny-wan-t2v"), fixture("text/qwen3/model"));
        let mut loads = Vec::new();
        let mut report = |stage: &str, _: u64, _: u64| {
            loads.push(stage.to_string());
            ControlFlow::Continue(())
        };
        let mut cards = Vec::new();
        gpus.with_language(Some(1), "qwen", &qwen, None, &mut report, |_, _| {
            cards.push(gpus.card_of(1).unwrap().to_string());
            Ok(())
        })
        .unwrap();
        gpus.with_pipeline(Some(2), "wan", &wan, None, &mut report, |_, _| {
            cards.push(gpus.card_of(2).unwrap().to_string());
            Ok(())
        })
        .unwrap();
        for job in [3, 4] {
            gpus.with_language(Some(job), "qwen", &qwen, None, &mut report, |_, _| {
                cards.push(gpus.card_of(job).unwrap().to_string());
                Ok(())
            })
            .unwrap();
        }
        gpus.with_pipeline(Some(5), "wan", &wan, None, &mut report, |_, _| {
            cards.push(gpus.card_of(5).unwrap().to_string());
            Ok(())
        })
        .unwrap();
        // Each model was loaded once, on a card of its own, and found there again.
        assert_eq!(loads, ["loading language model", "loading model"]);
        assert_eq!(cards, ["cpu#0", "cpu#1", "cpu#0", "cpu#0", "cpu#1"]);
        assert_eq!(gpus.card_of(5), None, "a card is given back after the work");
    }

    /// Two threads at once each run work holding the language model on some card, in which they
    /// wait (up to `patience`) until both are inside their work; the cards they held.
    fn meet_inside(gpus: &Gpus, patience: Duration) -> Vec<Result<String>> {
        let qwen = fixture("text/qwen3/model");
        // How many are inside now, and whether both ever were at once.
        let (inside, arrived) = (Mutex::new((0, false)), Condvar::new());
        std::thread::scope(|scope| {
            let runs: Vec<_> = [1, 2]
                .map(|job| {
                    let (qwen, inside, arrived) = (&qwen, &inside, &arrived);
                    scope.spawn(move || {
                        let meet = |_: &ChatModel, _: Report| {
                            let mut here = inside.lock().unwrap();
                            here.0 += 1;
                            here.1 |= here.0 == 2;
                            arrived.notify_all();
                            let (mut here, _) = arrived
                                .wait_timeout_while(here, patience, |(_, met)| !*met)
                                .unwrap();
                            here.0 -= 1;
                            if !here.1 {
                                return Err(StudioError::Conflict("alone on the cards".into()));
                            }
                            Ok(gpus.card_of(job).unwrap().to_string())
                        };
                        let mut report = |_: &str, _, _| ControlFlow::Continue(());
                        gpus.with_language(Some(job), "qwen", qwen, None, &mut report, meet)
                    })
                })
                .into_iter()
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        })
    }

    #[test]
    fn two_cards_run_two_pieces_of_work_at_once() {
        let mut cards: Vec<String> = meet_inside(&cpu_lanes(2), Duration::from_secs(60))
            .into_iter()
            .map(Result::unwrap)
            .collect();
        cards.sort();
        assert_eq!(cards, ["cpu#0", "cpu#1"]);
    }

    #[test]
    fn one_card_runs_one_piece_of_work_at_a_time() {
        let runs = meet_inside(&cpu_lanes(1), Duration::from_millis(500));
        // The first run waits inside for the second, which waits for the card: the first gives
        // up and leaves, and only then does the second get in, alone too.
        assert!(runs.iter().all(Result::is_err), "{runs:?}");
    }

    #[test]
    fn work_waiting_for_a_card_says_so_and_can_be_cancelled() {
        let gpus = cpu_lanes(1);
        let qwen = fixture("text/qwen3/model");
        let (inside, entered) = mpsc::channel();
        let (leave, told) = mpsc::channel::<()>();
        std::thread::scope(|scope| {
            let (gpus, qwen) = (&gpus, &qwen);
            let holder = scope.spawn(move || {
                gpus.with_language(
                    Some(1),
                    "qwen",
                    qwen,
                    None,
                    &mut |_, _, _| ControlFlow::Continue(()),
                    |_, _| {
                        inside.send(()).unwrap();
                        told.recv().unwrap();
                        Ok(())
                    },
                )
            });
            entered.recv().unwrap();
            let mut stages = Vec::new();
            let err = gpus
                .with_language(
                    Some(2),
                    "qwen",
                    qwen,
                    None,
                    &mut |stage, _, _| {
                        stages.push(stage.to_string());
                        // Stop at the second report of the wait.
                        if stages.len() == 2 {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    },
                    |_, _| Ok(()),
                )
                .unwrap_err();
            assert!(crate::generation::is_cancelled(&err), "{err}");
            assert_eq!(stages, ["waiting for a GPU", "waiting for a GPU"]);
            leave.send(()).unwrap();
            holder.join().unwrap().unwrap();
        });
        assert_eq!(gpus.lock_slots().held, [Slot::Free]);
    }

    #[test]
    fn cards_say_what_they_hold_and_whom_for() {
        let gpus = cpu_lanes(2);
        let state = |card: &str, model: Option<&str>, job_id: Option<i64>| CardState {
            card: card.into(),
            model: model.map(Into::into),
            busy: job_id.is_some(),
            job_id,
        };
        assert_eq!(
            gpus.states(),
            [state("cpu#0", None, None), state("cpu#1", None, None)]
        );
        let wan = fixture("tiny-wan-t2v");
        let mut report = |_: &str, _, _| ControlFlow::Continue(());
        gpus.with_pipeline(Some(7), "wan", &wan, None, &mut report, |_, _| {
            assert_eq!(
                gpus.states(),
                [
                    state("cpu#0", Some("tiny-wan-t2v"), Some(7)),
                    state("cpu#1", None, None)
                ]
            );
            Ok(())
        })
        .unwrap();
        assert_eq!(gpus.states()[0], state("cpu#0", Some("tiny-wan-t2v"), None));
        // Another model wanted on a card released what it held; a load stopped then leaves the
        // card holding nothing.
        let one = cpu_lanes(1);
        one.with_pipeline(None, "wan", &wan, None, &mut report, |_, _| Ok(()))
            .unwrap();
        assert_eq!(one.states(), [state("cpu", Some("tiny-wan-t2v"), None)]);
        let qwen = fixture("text/qwen3/model");
        let mut stop = |_: &str, _, _| ControlFlow::Break(());
        let err = one
            .with_language(None, "qwen", &qwen, None, &mut stop, |_, _| Ok(()))
            .unwrap_err();
        assert!(crate::generation::is_cancelled(&err), "{err}");
        assert_eq!(one.states(), [state("cpu", None, None)]);
    }

    /// A worker named `name` lending one CPU card, joined to `gpus`.
    fn join_worker(gpus: &Gpus, workers: &crate::workers::Workers, name: &str) {
        let registration = crate::workers::Registration {
            name: name.into(),
            cards: vec!["cpu".into()],
            version: crate::workers::VERSION.into(),
        };
        let (_, cards) = workers.register(&registration).unwrap();
        gpus.join(&cards);
    }

    #[test]
    fn only_generations_that_run_anywhere_take_a_workers_card() {
        let workers = crate::workers::Workers::new(Duration::from_secs(600));
        let gpus = cpu_lanes(1);
        join_worker(&gpus, &workers, "spark-2");
        let names: Vec<String> = gpus.states().into_iter().map(|s| s.card).collect();
        assert_eq!(names, ["cpu", "spark-2/cpu"]);
        // With the studio's card busy, a language model waits for it rather than go to the
        // worker's card.
        let qwen = fixture("text/qwen3/model");
        std::thread::scope(|scope| {
            let (inside, entered) = mpsc::channel();
            let (leave, told) = mpsc::channel::<()>();
            let gpus = &gpus;
            let qwen = &qwen;
            let holder = scope.spawn(move || {
                let mut report = |_: &str, _, _| ControlFlow::Continue(());
                gpus.with_language(Some(1), "qwen", qwen, None, &mut report, |_, _| {
                    inside.send(()).unwrap();
                    told.recv().unwrap();
                    Ok(())
                })
            });
            entered.recv().unwrap();
            let mut stages = Vec::new();
            let mut stop_second = |stage: &str, _, _| {
                stages.push(stage.to_string());
                if stages.len() == 2 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            };
            let err = gpus
                .with_language(Some(2), "qwen", qwen, None, &mut stop_second, |_, _| Ok(()))
                .unwrap_err();
            assert!(crate::generation::is_cancelled(&err), "{err}");
            assert_eq!(stages, ["waiting for a GPU", "waiting for a GPU"]);
            leave.send(()).unwrap();
            holder.join().unwrap().unwrap();
        });
        // A studio without cards of its own refuses such work at once.
        let none = Gpus::open(&"none".parse().unwrap()).unwrap();
        join_worker(&none, &workers, "spark-3");
        let mut report = |_: &str, _, _| ControlFlow::Continue(());
        let err = none
            .with_language(None, "qwen", &qwen, None, &mut report, |_, _| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("runs on the studio's own cards"), "{err}");
    }

    #[test]
    fn a_workers_cards_leave_when_it_goes_silent_or_registers_again() {
        let workers = crate::workers::Workers::new(Duration::from_millis(200));
        let gpus = Gpus::open(&"none".parse().unwrap()).unwrap();
        assert_eq!(gpus.len(), 0);
        join_worker(&gpus, &workers, "spark-2");
        join_worker(&gpus, &workers, "spark-3");
        assert_eq!(gpus.len(), 2);
        // A worker that restarted replaces its old registration.
        join_worker(&gpus, &workers, "spark-2");
        let names: Vec<String> = gpus.states().into_iter().map(|s| s.card).collect();
        assert_eq!(names, ["spark-3/cpu", "spark-2/cpu"]);
        std::thread::sleep(Duration::from_millis(300));
        assert!(gpus.states().is_empty(), "silent past the lease");
        assert_eq!(gpus.len(), 0);
    }

    /// The tiny Wan model's generation, split across `split_cards` of the studio's cards.
    fn tiny_task(split_cards: usize) -> GenerationTask {
        let render = RenderSettings {
            height: 32,
            width: 48,
            steps: 3,
            guidance: 5.0,
            split_cards,
            ..RenderSettings::default()
        };
        GenerationTask {
            negative_prompt: "blurry".into(),
            ..GenerationTask::plain(
                "tiny-wan-t2v",
                "a cat walks on the grass",
                crate::generation::Length::Frames(5),
                render,
            )
        }
    }

    /// How long a test waits for what must happen before it fails rather than hang.
    const PATIENCE: Duration = Duration::from_secs(60);

    fn quiet(_: &str, _: u64, _: u64) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }

    #[test]
    fn a_split_generation_is_the_one_card_generation_and_holds_every_card_it_runs_on() {
        let gpus = cpu_lanes(2);
        let wan = fixture("tiny-wan-t2v");
        let task = tiny_task(2);
        let layout = check_split_for(&gpus, &task.render, &task.model, &wan, task.length)
            .unwrap()
            .expect("a split");
        let (params, whole) = gpus
            .with_pipeline(None, "wan", &wan, None, &mut quiet, |p, r| {
                task.generate(p, r)
            })
            .unwrap();
        let mut while_denoising = None;
        let mut watch = |stage: &str, _, _| {
            if stage == "denoising" && while_denoising.is_none() {
                while_denoising = Some((gpus.card_of(9), gpus.states()));
            }
            ControlFlow::Continue(())
        };
        let (split_params, split) = gpus
            .with_split_pipelines(Some(9), "wan", &wan, None, 2, &mut watch, |p, _, r| {
                task.generate_split(p, layout, r)
            })
            .unwrap();
        assert_eq!(split_params, params);
        let err =
            videosdgx_engine::models::relative_error(&split.video.frames, &whole.frames).unwrap();
        assert!(err <= 1e-5, "relative error {err:e}");
        let held = |card: &str| CardState {
            card: card.into(),
            model: Some("tiny-wan-t2v".into()),
            busy: true,
            job_id: Some(9),
        };
        assert_eq!(
            while_denoising,
            Some((
                Some("cpu#0+cpu#1".to_string()),
                vec![held("cpu#0"), held("cpu#1")]
            ))
        );
        assert_eq!(gpus.card_of(9), None, "every card is given back");
        // Written like any generation, each card's time named after it; both cards hold the
        // pipeline now, so nothing is loaded again.
        let out = tempfile::tempdir().unwrap();
        let out = out.path().join("split.mp4");
        let mut stages = Vec::new();
        let generated = gpus
            .generate(Some(10), &wan, &task, &out, &mut |stage, _, _| {
                stages.push(stage.to_string());
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(generated.params, params);
        let ranks: Vec<&str> = generated.ranks.iter().map(|r| r.device.as_str()).collect();
        assert_eq!(ranks, ["cpu#0", "cpu#1"]);
        assert!(!stages.iter().any(|s| s == "loading model"), "{stages:?}");
        assert!(out.metadata().unwrap().len() > 0);
        assert!(gpus.states().iter().all(|s| !s.busy));
    }

    /// Runs `work` on a thread as job `job`, signalling on `waiting` the first time it waits for
    /// cards.
    fn waiting_signal(
        waiting: mpsc::Sender<i64>,
        job: i64,
    ) -> impl FnMut(&str, u64, u64) -> ControlFlow<()> {
        let mut told = false;
        move |stage: &str, _, _| {
            if stage.starts_with("waiting for") && !told {
                told = true;
                waiting.send(job).unwrap();
            }
            ControlFlow::Continue(())
        }
    }

    #[test]
    fn a_waiting_split_gets_the_freed_cards_before_later_single_work_and_all_finish() {
        let gpus = cpu_lanes(2);
        let wan = fixture("tiny-wan-t2v");
        let order = Mutex::new(Vec::new());
        let (inside, entered) = mpsc::channel();
        let (waiting, waits) = mpsc::channel();
        std::thread::scope(|scope| {
            // Made in the scope: a failing assertion drops `leave`, and the holder leaves.
            let (leave, told) = mpsc::channel::<()>();
            let (gpus, wan, order) = (&gpus, &wan, &order);
            let holder = scope.spawn(move || {
                gpus.with_pipeline(Some(1), "wan", wan, None, &mut quiet, |_, _| {
                    inside.send(()).unwrap();
                    let _ = told.recv();
                    Ok(())
                })
            });
            entered.recv().unwrap();
            let split = |job: i64| {
                let waiting = waiting.clone();
                scope.spawn(move || {
                    let mut report = waiting_signal(waiting, job);
                    gpus.with_split_pipelines(
                        Some(job),
                        "wan",
                        wan,
                        None,
                        2,
                        &mut report,
                        |p, _, _| {
                            assert_eq!(p.len(), 2);
                            order.lock().unwrap().push(job);
                            Ok(())
                        },
                    )
                })
            };
            let first_split = split(2);
            assert_eq!(waits.recv_timeout(PATIENCE).expect("waits for cards"), 2);
            let second_split = split(3);
            assert_eq!(waits.recv_timeout(PATIENCE).expect("waits for cards"), 3);
            let single = {
                let waiting = waiting.clone();
                scope.spawn(move || {
                    let mut report = waiting_signal(waiting, 4);
                    gpus.with_pipeline(Some(4), "wan", wan, None, &mut report, |_, _| {
                        order.lock().unwrap().push(4);
                        Ok(())
                    })
                })
            };
            assert_eq!(waits.recv_timeout(PATIENCE).expect("waits for cards"), 4);
            // The free card is kept for the splits waiting before it.
            assert!(!gpus.states()[1].busy, "{:?}", gpus.states());
            leave.send(()).unwrap();
            for run in [holder, first_split, second_split, single] {
                run.join().unwrap().unwrap();
            }
        });
        assert_eq!(*order.lock().unwrap(), [2, 3, 4]);
        let slots = gpus.lock_slots();
        assert_eq!(
            (slots.held.as_slice(), slots.splits.len()),
            ([Slot::Free; 2].as_slice(), 0)
        );
    }

    #[test]
    fn a_split_stopped_while_waiting_or_running_gives_every_card_back() {
        let gpus = cpu_lanes(2);
        let wan = fixture("tiny-wan-t2v");
        let task = tiny_task(2);
        let (inside, entered) = mpsc::channel();
        std::thread::scope(|scope| {
            // Made in the scope: a failing assertion drops `leave`, and the holder leaves.
            let (leave, told) = mpsc::channel::<()>();
            let (gpus, wan) = (&gpus, &wan);
            let holder = scope.spawn(move || {
                gpus.with_pipeline(Some(1), "wan", wan, None, &mut quiet, |_, _| {
                    inside.send(()).unwrap();
                    let _ = told.recv();
                    Ok(())
                })
            });
            entered.recv().unwrap();
            let mut stages = Vec::new();
            let out = Path::new("never-written.mp4");
            let err = gpus
                .generate(Some(2), wan, &task, out, &mut |stage, _, _| {
                    stages.push(stage.to_string());
                    match stages.len() {
                        2 => ControlFlow::Break(()),
                        _ => ControlFlow::Continue(()),
                    }
                })
                .unwrap_err();
            assert!(crate::generation::is_cancelled(&err), "{err}");
            assert_eq!(stages, ["waiting for 2 GPUs", "waiting for 2 GPUs"]);
            // Single work takes the free card at once: the split no longer waits for it.
            let mut stages = Vec::new();
            gpus.with_pipeline(
                Some(3),
                "wan",
                wan,
                None,
                &mut |stage, _, _| {
                    stages.push(stage.to_string());
                    ControlFlow::Continue(())
                },
                |_, _| Ok(()),
            )
            .unwrap();
            assert_eq!(stages, ["loading model"]);
            leave.send(()).unwrap();
            holder.join().unwrap().unwrap();
        });
        // Stopped mid-denoising: every rank stops, every card is free and keeps its pipeline.
        let out = tempfile::tempdir().unwrap();
        let out = out.path().join("stopped.mp4");
        let err = gpus
            .generate(Some(4), &wan, &task, &out, &mut |stage, step, _| {
                if stage == "denoising" && step >= 1 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap_err();
        assert!(crate::generation::is_cancelled(&err), "{err}");
        assert!(!out.exists());
        let states = gpus.states();
        assert!(
            states
                .iter()
                .all(|s| !s.busy && s.model.as_deref() == Some("tiny-wan-t2v")),
            "{states:?}"
        );
        assert_eq!(gpus.lock_slots().splits.len(), 0);
    }

    #[test]
    fn a_card_that_fails_to_load_fails_the_split_by_name_and_frees_every_card() {
        let data = tempfile::tempdir().unwrap();
        crate::generation::install_fixture_model(data.path(), "tiny-wan-t2v");
        let wan = data.path().join("models/tiny-wan-t2v");
        let gpus = cpu_lanes(2);
        gpus.with_pipeline(None, "wan", &wan, None, &mut quiet, |_, _| Ok(()))
            .unwrap();
        // cpu#0 holds the pipeline; cpu#1 must load it from a folder broken since.
        std::fs::write(
            wan.join("transformer/diffusion_pytorch_model.safetensors"),
            b"not a checkpoint",
        )
        .unwrap();
        let out = data.path().join("out.mp4");
        let err = gpus
            .generate(Some(5), &wan, &tiny_task(2), &out, &mut quiet)
            .unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.starts_with("loading model `tiny-wan-t2v` on cpu#1:"),
            "{message}"
        );
        let states = gpus.states();
        assert!(states.iter().all(|s| !s.busy), "{states:?}");
        assert_eq!(states[0].model.as_deref(), Some("tiny-wan-t2v"));
        assert_eq!(states[1].model, None);
    }

    #[test]
    fn splits_the_studio_cannot_run_are_refused_before_taking_a_card() {
        let workers = crate::workers::Workers::new(Duration::from_secs(600));
        let gpus = cpu_lanes(2);
        let wan = fixture("tiny-wan-t2v");
        // A worker's card is no card of the studio's.
        join_worker(&gpus, &workers, "spark-2");
        let check = |render: &RenderSettings| {
            check_split_for(&gpus, render, "tiny-wan-t2v", &wan, Length::Seconds(5.0))
        };
        let refusal = |split_cards, cfg_parallel| {
            let render = RenderSettings {
                split_cards,
                cfg_parallel,
                ..RenderSettings::default()
            };
            check(&render).unwrap_err().to_string()
        };
        let err = check(&RenderSettings {
            split_cards: 3,
            ..RenderSettings::default()
        })
        .unwrap_err();
        assert!(err.is_permanent(), "{err:?}");
        assert_eq!(
            err.to_string(),
            "split_cards: 3 cards for one generation, and the studio has 2 of its own \
             (`--gpus`); workers' cards take no part in a split"
        );
        assert!(
            refusal(0, false).contains("0 ranks cannot run"),
            "{}",
            refusal(0, false)
        );
        assert!(
            refusal(1, true).contains("even number of cards"),
            "{}",
            refusal(1, true)
        );
        let mut reports = 0;
        let err = gpus
            .generate(
                None,
                &fixture("tiny-wan-t2v"),
                &tiny_task(3),
                Path::new("x.mp4"),
                &mut |_, _, _| {
                    reports += 1;
                    ControlFlow::Continue(())
                },
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("3 cards for one generation"),
            "{err}"
        );
        assert_eq!(reports, 0, "refused before waiting");
        assert!(gpus.states().iter().all(|s| !s.busy));
        let both = RenderSettings {
            split_cards: 2,
            cfg_parallel: true,
            ..RenderSettings::default()
        };
        assert_eq!(check(&both).unwrap(), Some(Layout::new(2, true).unwrap()));
        assert_eq!(check(&RenderSettings::default()).unwrap(), None);
        // What the model's configs cannot take: refused for good, the guidance a preset sets
        // included.
        for (render, expected) in [
            (
                RenderSettings {
                    guidance: 1.0,
                    ..both.clone()
                },
                "CFG parallel needs guidance",
            ),
            (
                RenderSettings {
                    preset: Some("wan2.1-distill-4step".into()),
                    ..both.clone()
                },
                "CFG parallel needs guidance",
            ),
            (
                RenderSettings {
                    cache: Some("teacache".into()),
                    ..both.clone()
                },
                "a step cache cannot run under CFG parallel",
            ),
        ] {
            let err = check(&render).unwrap_err();
            assert!(err.is_permanent(), "{err:?}");
            let err = err.to_string();
            assert!(
                err.starts_with(
                    "`tiny-wan-t2v` cannot be split across 2 cards with CFG parallel: "
                ) && err.contains(expected),
                "{err}"
            );
        }
        let heads = check_split_for(
            &cpu_lanes(3),
            &RenderSettings {
                split_cards: 3,
                ..RenderSettings::default()
            },
            "tiny-wan-t2v",
            &wan,
            Length::Seconds(5.0),
        );
        assert_eq!(
            heads.unwrap_err().to_string(),
            "`tiny-wan-t2v` cannot be split across 3 cards: 2 attention heads cannot be split \
             across 3 ranks; sequence parallel takes 1, 2 ranks"
        );
        // 16x16 pixels make one patch token a latent frame: one frame has one for two cards;
        // a quarter second, rounded to the VAE's 5 frames, has two.
        let small = RenderSettings {
            height: 16,
            width: 16,
            split_cards: 2,
            ..RenderSettings::default()
        };
        let small_split = |length| check_split_for(&gpus, &small, "tiny-wan-t2v", &wan, length);
        let err = small_split(Length::Frames(1)).unwrap_err();
        assert!(err.is_permanent(), "{err:?}");
        assert_eq!(
            err.to_string(),
            "`tiny-wan-t2v` cannot be split across 2 cards: a generation of this size has 1 \
             tokens, fewer than the 2 ranks that would share them: make it larger or split it \
             across fewer cards"
        );
        assert_eq!(
            small_split(Length::Seconds(0.25)).unwrap(),
            Some(Layout::new(2, false).unwrap())
        );
    }

    #[test]
    fn a_split_the_engine_refuses_once_the_cards_are_taken_fails_for_good_and_frees_them() {
        let gpus = cpu_lanes(2);
        let wan = fixture("tiny-wan-t2v");
        let mut task = tiny_task(2);
        task.render.guidance = 1.0;
        // Past the studio's check (as when the model changed after it): the engine's own.
        let Err(err) =
            gpus.with_split_pipelines(Some(4), "wan", &wan, None, 2, &mut quiet, |p, _, r| {
                task.generate_split(p, Layout::new(2, true).unwrap(), r)
            })
        else {
            panic!("CFG parallel without guidance ran");
        };
        assert!(err.is_permanent(), "{err:?}");
        assert!(
            err.to_string().contains("CFG parallel needs guidance"),
            "{err}"
        );
        assert!(gpus.states().iter().all(|s| !s.busy));
    }

    #[test]
    fn card_sets_are_read_from_the_command_line_form() {
        let set = |s: &str| s.parse::<CardSet>();
        assert_eq!(
            set("0, cuda:2").unwrap().cards(),
            [Card::Cuda(0), Card::Cuda(2)]
        );
        assert_eq!(set("cpu,cpu").unwrap().cards(), [Card::Cpu, Card::Cpu]);
        assert_eq!(set("all").unwrap(), CardSet::all());
        assert_eq!(set("0,cuda:0").unwrap_err(), "cuda:0 is named twice");
        assert!(set("gpu1").unwrap_err().contains("`gpu1` is not a card"));
        assert!(set("").is_err());
        assert!(set("none").unwrap().cards().is_empty());
        let missing = set("cuda:64").unwrap().check().unwrap_err().to_string();
        assert!(missing.contains("no CUDA device 64"), "{missing}");
        assert!(Gpus::open(&set("cuda:64").unwrap()).is_err());
    }
}
