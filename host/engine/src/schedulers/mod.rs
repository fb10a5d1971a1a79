//! Flow-matching noise schedulers read from a pipeline's `scheduler/scheduler_config.json`:
//! `UniPCMultistepScheduler` with flow sigmas (the Wan pipelines' default) and
//! `FlowMatchEulerDiscreteScheduler`. Both reproduce the reference's timesteps and sigmas (computed in
//! f64 as numpy does, stored rounded to f32 as the reference stores them) and its update rules.
//! A scheduler only does arithmetic on the tensors it is given; it never runs a model. [`step_cache`]
//! decides, step by step, which transformer calls a generation may skip.

mod flow_euler;
pub mod step_cache;
mod unipc;

pub use flow_euler::FlowMatchEulerDiscrete;
pub use unipc::UniPcMultistep;

use anyhow::{Context, Result, bail};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Which scheduler to run, overriding the pipeline's own (see [`Scheduler::load`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SchedulerKind {
    /// `UniPCMultistepScheduler` with flow sigmas.
    Unipc,
    /// `FlowMatchEulerDiscreteScheduler`.
    FlowEuler,
}

pub enum Scheduler {
    UniPc(UniPcMultistep),
    FlowEuler(FlowMatchEulerDiscrete),
}

/// numpy's `linspace(start, stop, num)` bit for bit: `arange * step + start`, last element exact.
pub(crate) fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (stop - start) / (num - 1) as f64;
            let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
            v[num - 1] = stop;
            v
        }
    }
}

/// The reference stores sigmas as f32 tensors.
pub(crate) fn round_f32(x: f64) -> f64 {
    x as f32 as f64
}

impl Scheduler {
    /// Reads `scheduler_config.json` (`path` is the file or the `scheduler/` folder). `kind` swaps in the
    /// other scheduler, keeping `num_train_timesteps` and the shift; `flow_shift` overrides the shift
    /// (`flow_shift` of UniPC, `shift` of flow-Euler).
    pub fn load(path: &Path, kind: Option<SchedulerKind>, flow_shift: Option<f64>) -> Result<Self> {
        let file = if path.is_dir() {
            path.join("scheduler_config.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let config: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        Self::from_config(&config, kind, flow_shift)
            .with_context(|| format!("in {}", file.display()))
    }

    pub fn from_config(
        config: &serde_json::Value,
        kind: Option<SchedulerKind>,
        flow_shift: Option<f64>,
    ) -> Result<Self> {
        let class = config["_class_name"].as_str().unwrap_or("");
        let own = match class {
            "UniPCMultistepScheduler" => SchedulerKind::Unipc,
            "FlowMatchEulerDiscreteScheduler" => SchedulerKind::FlowEuler,
            other => bail!(
                "unsupported scheduler class {other:?} (supported: UniPCMultistepScheduler, FlowMatchEulerDiscreteScheduler)"
            ),
        };
        let train_steps = config["num_train_timesteps"].as_u64().unwrap_or(1000) as usize;
        let shift = flow_shift.or(match own {
            SchedulerKind::Unipc => config["flow_shift"].as_f64(),
            SchedulerKind::FlowEuler => config["shift"].as_f64(),
        });
        let kind = kind.unwrap_or(own);
        Ok(match (kind, kind == own) {
            (SchedulerKind::Unipc, true) => {
                Self::UniPc(UniPcMultistep::from_config(config, shift)?)
            }
            (SchedulerKind::Unipc, false) => Self::UniPc(UniPcMultistep::from_config(
                &serde_json::json!({ "num_train_timesteps": train_steps, "use_flow_sigmas": true,
                    "prediction_type": "flow_prediction" }),
                shift,
            )?),
            (SchedulerKind::FlowEuler, true) => {
                Self::FlowEuler(FlowMatchEulerDiscrete::from_config(config, shift)?)
            }
            (SchedulerKind::FlowEuler, false) => {
                Self::FlowEuler(FlowMatchEulerDiscrete::from_config(
                    &serde_json::json!({ "num_train_timesteps": train_steps }),
                    shift,
                )?)
            }
        })
    }

    /// Prepares a run of `steps` denoising steps and resets the solver state.
    pub fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        if steps == 0 {
            bail!("the number of steps must be at least 1");
        }
        match self {
            Self::UniPc(s) => s.set_timesteps(steps),
            Self::FlowEuler(s) if s.dynamic_shifting() => bail!(
                "this flow-Euler scheduler uses dynamic shifting: its pipeline sets the sigmas and mu"
            ),
            Self::FlowEuler(s) => s.set_timesteps(steps),
        }
        Ok(())
    }

    /// Prepares a run that denoises at the given training-grid timesteps (a step-distilled
    /// model's schedule); flow-Euler only.
    pub fn set_timestep_list(&mut self, timesteps: &[u32]) -> Result<()> {
        match self {
            Self::FlowEuler(s) => s.set_timestep_list(timesteps),
            Self::UniPc(_) => bail!(
                "a denoising timestep list needs the flow-Euler scheduler (UniPC plans its own steps)"
            ),
        }
    }

    /// The timestep the model sees at each step (UniPC's are whole numbers, as in the reference).
    pub fn timesteps(&self) -> &[f64] {
        match self {
            Self::UniPc(s) => s.timesteps(),
            Self::FlowEuler(s) => s.timesteps(),
        }
    }

    /// Noise levels, one per step plus the final one.
    pub fn sigmas(&self) -> &[f64] {
        match self {
            Self::UniPc(s) => s.sigmas(),
            Self::FlowEuler(s) => s.sigmas(),
        }
    }

    pub fn num_train_timesteps(&self) -> usize {
        match self {
            Self::UniPc(s) => s.num_train_timesteps(),
            Self::FlowEuler(s) => s.num_train_timesteps(),
        }
    }

    /// One denoising step: the sample for the next timestep, given the model's (flow) prediction.
    pub fn step(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        match self {
            Self::UniPc(s) => s.step(model_output, sample),
            Self::FlowEuler(s) => s.step(model_output, sample),
        }
    }
}

/// Rejects config options whose behaviour is not implemented, rather than silently ignoring them.
pub(crate) fn reject_enabled(config: &serde_json::Value, keys: &[&str]) -> Result<()> {
    for key in keys {
        let on = match &config[*key] {
            serde_json::Value::Bool(b) => *b,
            serde_json::Value::Null => false,
            _ => true,
        };
        if on {
            bail!("scheduler option {key} is not supported");
        }
    }
    Ok(())
}
