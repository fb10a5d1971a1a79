//! The model the GPU lane holds. One model is resident at a time, a generation pipeline, a language
//! model or a pair of finishing models (upscaler, RIFE), on the device every GPU job uses (CUDA in bf16 when built with `cuda` and a GPU is
//! present, else the CPU in f32). A job that needs the resident model reuses it; a job that
//! needs another one releases it first (logged), so two models never share the accelerator's
//! memory. Holding the lock while a model runs also serialises the plugins' own generations
//! with the GPU lane's jobs. Nothing else in the studio loads a model.

use crate::error::{Result, StudioError};
use candle_core::{DType, Device};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use videosdgx_engine::finishing::finish::{FinishModels, FinishSpec};
use videosdgx_engine::pipelines::{Cancelled, Pipeline, Quant};
use videosdgx_engine::text::chat::ChatModel;

/// Receives `(stage, step, total)`; `Break` stops the work.
pub type Report<'a> = &'a mut dyn FnMut(&str, u64, u64) -> ControlFlow<()>;

pub struct GpuModel {
    device: Device,
    dtype: DType,
    resident: Mutex<Option<Resident>>,
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
}

impl GpuModel {
    pub fn new() -> GpuModel {
        let device = Device::cuda_if_available(0).unwrap_or(Device::Cpu);
        let dtype = if device.is_cuda() {
            DType::BF16
        } else {
            DType::F32
        };
        GpuModel {
            device,
            dtype,
            resident: Mutex::new(None),
        }
    }

    /// Runs `f` on the generation pipeline of installed model `name` (in `dir`) with its
    /// transformers' weights in `quant` (as loaded when `None`), loading it first (reported as
    /// stage `loading model`, which may stop it) unless it is resident so. A quantized pipeline
    /// is reloaded for a job that wants other weights. `f` gets `report` back for its own
    /// progress.
    pub fn with_pipeline<R>(
        &self,
        name: &str,
        dir: &Path,
        quant: Option<Quant>,
        report: Report,
        f: impl FnOnce(&mut Pipeline, Report) -> Result<R>,
    ) -> Result<R> {
        let mut resident = self.lock();
        let loaded = |r: &Option<Resident>| matches!(r, Some(Resident::Generation { dir: d, quant: q, .. }) if d == dir && *q == quant);
        if !loaded(&resident) {
            release(&mut resident, name);
            loading(report, "loading model")?;
            let open = || {
                let mut pipeline = Pipeline::open(dir, &self.device, self.dtype)?;
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
        match resident.as_mut() {
            Some(Resident::Generation { pipeline, .. }) => f(pipeline, report),
            _ => unreachable!("made resident above"),
        }
    }

    /// Runs `f` on the language model `name` (in `dir`) with its decoder's weights in `quant`
    /// (as loaded when `None`), as [`GpuModel::with_pipeline`] does (stage `loading language
    /// model`).
    pub fn with_language<R>(
        &self,
        name: &str,
        dir: &Path,
        quant: Option<Quant>,
        report: Report,
        f: impl FnOnce(&ChatModel, Report) -> Result<R>,
    ) -> Result<R> {
        let mut resident = self.lock();
        if !matches!(&*resident, Some(Resident::Language { dir: d, quant: q, .. }) if d == dir && *q == quant)
        {
            release(&mut resident, name);
            loading(report, "loading language model")?;
            let open = || {
                let mut model = ChatModel::load(dir, &self.device, self.dtype)?;
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
        match resident.as_ref() {
            Some(Resident::Language { model, .. }) => f(model, report),
            _ => unreachable!("made resident above"),
        }
    }

    /// Runs `f` on the finishing models `spec` names (loaded as [`GpuModel::with_pipeline`]
    /// does, stage `loading finishing models`), with the device frames go to.
    pub fn with_finishing<R>(
        &self,
        spec: &FinishSpec,
        report: Report,
        f: impl FnOnce(&FinishModels, &Device, Report) -> Result<R>,
    ) -> Result<R> {
        let mut resident = self.lock();
        let files = (spec.upscaler.clone(), spec.interpolator.clone());
        if !matches!(&*resident, Some(Resident::Finishing { files: f, .. }) if *f == files) {
            release(&mut resident, "finishing models");
            loading(report, "loading finishing models")?;
            let models = FinishModels::load(spec, &self.device, self.dtype)
                .map_err(|e| StudioError::Invalid(format!("{e:#}")))?;
            *resident = Some(Resident::Finishing {
                files,
                models: Box::new(models),
            });
        }
        match resident.as_ref() {
            Some(Resident::Finishing { models, .. }) => f(models, &self.device, report),
            _ => unreachable!("made resident above"),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Resident>> {
        self.resident.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for GpuModel {
    fn default() -> Self {
        Self::new()
    }
}

/// Reports a load about to start; a stop asked for here stops before the slow part.
fn loading(report: Report, stage: &str) -> Result<()> {
    match report(stage, 0, 1) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(StudioError::Internal(anyhow::Error::new(Cancelled))),
    }
}

/// Frees the resident model before `next` is loaded: the device holds one model at a time.
fn release(resident: &mut Option<Resident>, next: &str) {
    if let Some(old) = resident.take() {
        tracing::info!(
            released = %old.dir().display(),
            loading = next,
            "the GPU lane holds one model at a time: releasing the resident one"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(path)
    }

    #[test]
    fn the_resident_model_is_reused_and_released_only_for_another() {
        let gpu = GpuModel::new();
        let (wan, qwen) = (fixture("tiny-wan-t2v"), fixture("text/qwen3/model"));
        let mut loads = Vec::new();
        let mut report = |stage: &str, _: u64, _: u64| {
            loads.push(stage.to_string());
            ControlFlow::Continue(())
        };
        for _ in 0..2 {
            gpu.with_language("qwen", &qwen, None, &mut report, |model, _| {
                assert!(!model.sees_images());
                Ok(())
            })
            .unwrap();
        }
        gpu.with_pipeline("wan", &wan, None, &mut report, |_, _| Ok(()))
            .unwrap();
        gpu.with_language("qwen", &qwen, None, &mut report, |_, _| Ok(()))
            .unwrap();
        // Other weights are another model: reloaded, then reused.
        for _ in 0..2 {
            gpu.with_language(
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
        let gpu = GpuModel::new();
        let err = gpu
            .with_language(
                "qwen",
                &fixture("text/qwen3/model"),
                None,
                &mut |_, _, _| ControlFlow::Break(()),
                |_, _| Ok(()),
            )
            .unwrap_err();
        assert!(crate::generation::is_cancelled(&err), "{err}");
        assert!(gpu.lock().is_none());
    }
}
