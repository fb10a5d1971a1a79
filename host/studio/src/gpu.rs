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

use crate::error::{Result, StudioError};
use crate::generation::GenerationTask;
use crate::workers::RemoteCard;
use candle_core::{DType, Device};
use serde::Serialize;
use std::fmt;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::Duration;
use utoipa::ToSchema;
use videosdgx_engine::finishing::finish::{FinishModels, FinishSpec};
use videosdgx_engine::pipelines::{Cancelled, GenerateParams, Pipeline, Quant};
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

/// Who holds each card.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    Free,
    /// Held for the job with this id, or for work outside any job.
    Held(Option<i64>),
}

/// The studio's cards and who holds each.
pub struct Gpus {
    /// The studio's own cards, then workers' cards in the order they joined (a card that left
    /// keeps its place, unused: indexes stay valid). Locked after `slots` when both are.
    cards: RwLock<Vec<Arc<CardModel>>>,
    slots: Mutex<Vec<Slot>>,
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
            slots: Mutex::new(vec![Slot::Free; cards.len()]),
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
            slots.push(Slot::Free);
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
        let slots = self.lock_slots().clone();
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

    /// The card job `job` holds now, by name (`cuda:1`).
    pub fn card_of(&self, job: i64) -> Option<String> {
        let slots = self.lock_slots();
        let index = slots.iter().position(|s| *s == Slot::Held(Some(job)))?;
        Some(self.lock_cards()[index].label.clone())
    }

    /// Runs generation `task` with the pipeline of its model (installed in `dir`) on a card
    /// taken for `job`, and writes its output (an MP4, a still's PNG) to `out`. A studio's card
    /// loads the pipeline unless it holds it (stage `loading model`, which may stop it) and is
    /// given back before the output is written; a worker's card runs the whole task on its
    /// worker, which sends the output.
    pub fn generate(
        &self,
        job: Option<i64>,
        dir: &Path,
        task: &GenerationTask,
        out: &Path,
        report: Report,
    ) -> Result<GenerateParams> {
        let wanted = Wanted::Generation(dir, task.render.quant);
        let card = self.take(job, wanted, task.runs_anywhere(), report)?;
        if let Some(remote) = card.model().remote.clone() {
            let params = remote.run(dir, task, out, report);
            card.note_remote(&task.model, params.is_ok());
            return params;
        }
        let (params, video) = self.on_pipeline(
            card,
            &task.model,
            dir,
            task.render.quant,
            report,
            |pipeline, report| task.generate(pipeline, report),
        )?;
        task.write(&params, &video, out, report)?;
        Ok(params)
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
        let mut resident = card.resident();
        if !resident.as_ref().is_some_and(|r| r.is(wanted)) {
            release(&mut resident, name);
            loading(report, "loading model")?;
            let open = || {
                let mut pipeline = Pipeline::open(dir, card.model().device()?, card.model().dtype)?;
                if let Some(quant) = quant {
                    pipeline.quantize(quant)?;
                }
                anyhow::Ok(pipeline)
            };
            let pipeline = open()
                .map_err(|e| StudioError::Internal(e.context(format!("loading model `{name}`"))))?;
            *resident = Some(Resident::Generation {
                dir: dir.to_path_buf(),
                quant,
                pipeline: Box::new(pipeline),
            });
        }
        card.note(&resident);
        match resident.as_mut() {
            Some(Resident::Generation { pipeline, .. }) => f(pipeline, report),
            _ => unreachable!("made resident above"),
        }
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
        let mut resident = card.resident();
        if !resident.as_ref().is_some_and(|r| r.is(wanted)) {
            release(&mut resident, name);
            loading(report, "loading language model")?;
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
            *resident = Some(Resident::Language {
                dir: dir.to_path_buf(),
                quant,
                model: Box::new(model),
            });
        }
        card.note(&resident);
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
        let mut resident = card.resident();
        if !resident.as_ref().is_some_and(|r| r.is(wanted)) {
            release(&mut resident, "finishing models");
            loading(report, "loading finishing models")?;
            let models = FinishModels::load(spec, device, dtype)
                .map_err(|e| StudioError::Invalid(format!("{e:#}")))?;
            *resident = Some(Resident::Finishing {
                files,
                models: Box::new(models),
            });
        }
        card.note(&resident);
        match resident.as_ref() {
            Some(Resident::Finishing { models, .. }) => f(models, device, report),
            _ => unreachable!("made resident above"),
        }
    }

    /// Takes a free card for `job`: one holding `wanted`, else an empty one, else the first free;
    /// a worker's card only when the work runs `anywhere`. Waits while all are busy (or, for
    /// work that may go anywhere, while there is none: a worker may join), reporting `waiting
    /// for a GPU`; a stop asked for then takes none.
    fn take(
        &self,
        job: Option<i64>,
        wanted: Wanted,
        anywhere: bool,
        report: Report,
    ) -> Result<Taken<'_>> {
        let mut slots = self.lock_slots();
        loop {
            let cards = self.lock_cards();
            if !anywhere && cards.iter().all(|c| c.remote.is_some()) {
                return Err(StudioError::Invalid(
                    "this work runs on the studio's own cards, and it has none (`--gpus none`): \
                     workers' cards run only generations (videos, looks, keyframes)"
                        .into(),
                ));
            }
            // A free card's resident model is locked only here, under `slots`: no one waits.
            let free: Vec<usize> = (0..slots.len())
                .filter(|&i| slots[i] == Slot::Free && cards[i].alive())
                .filter(|&i| anywhere || cards[i].remote.is_none())
                .collect();
            let chosen = free
                .iter()
                .find(|&&i| cards[i].holds(wanted) == Some(true))
                .or_else(|| free.iter().find(|&&i| cards[i].holds(wanted).is_none()))
                .or(free.first());
            if let Some(&index) = chosen {
                slots[index] = Slot::Held(job);
                return Ok(Taken {
                    gpus: self,
                    index,
                    card: cards[index].clone(),
                });
            }
            drop(cards);
            let seen = slots.clone();
            drop(slots);
            loading(report, "waiting for a GPU")?;
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

    fn lock_slots(&self) -> MutexGuard<'_, Vec<Slot>> {
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
        self.gpus.lock_slots()[self.index] = Slot::Free;
        self.gpus.freed.notify_all();
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
    use std::sync::mpsc;

    fn fixture(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(path)
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
        assert_eq!(*gpus.lock_slots(), [Slot::Free]);
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
        assert_eq!(*gpus.lock_slots(), [Slot::Free]);
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
