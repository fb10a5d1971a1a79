//! Flow-matching Euler (diffusers `FlowMatchEulerDiscreteScheduler`): `x += (σ_next − σ)·v`.
//! With a static shift, like the reference, the shift is applied once to the training grid (which
//! sets σ_max/σ_min) and again to the inference schedule. With `use_dynamic_shifting` (the FLUX
//! pipelines) the pipeline gives the sigmas and a `mu` that depends on the image size, and the
//! schedule is their time shift ([`FlowMatchEulerDiscrete::set_sigmas`]). `shift_terminal` (LTX)
//! then stretches the shifted schedule so that its last sigma is that value.

use super::{linspace, reject_enabled, round_f32};
use anyhow::{Result, bail};
use candle_core::{DType, Tensor};

pub struct FlowMatchEulerDiscrete {
    train_steps: usize,
    shift: f64,
    /// `use_dynamic_shifting`: the schedule needs the pipeline's `mu`.
    time_shift: Option<TimeShift>,
    /// `shift_terminal`: the last sigma the shifted schedule is stretched to end at.
    shift_terminal: Option<f64>,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    step_index: usize,
}

/// `time_shift_type`: how `mu` bends the schedule, `e^mu / (e^mu + (1/σ − 1))` or
/// `mu / (mu + (1/σ − 1))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeShift {
    Exponential,
    Linear,
}

impl FlowMatchEulerDiscrete {
    pub fn from_config(config: &serde_json::Value, shift: Option<f64>) -> Result<Self> {
        reject_enabled(
            config,
            &[
                "invert_sigmas",
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "stochastic_sampling",
            ],
        )?;
        let train_steps = config["num_train_timesteps"].as_u64().unwrap_or(1000) as usize;
        if train_steps == 0 {
            bail!("num_train_timesteps must be at least 1");
        }
        let dynamic = config["use_dynamic_shifting"].as_bool().unwrap_or(false);
        let time_shift = match (dynamic, config["time_shift_type"].as_str()) {
            (false, _) => None,
            (true, None | Some("exponential")) => Some(TimeShift::Exponential),
            (true, Some("linear")) => Some(TimeShift::Linear),
            (true, Some(other)) => bail!("unknown time_shift_type {other:?}"),
        };
        let shift_terminal = match config["shift_terminal"].as_f64() {
            Some(t) if t != 0.0 && !(0.0..1.0).contains(&t) => {
                bail!("shift_terminal {t} is outside 0..1")
            }
            Some(t) if t != 0.0 => Some(t),
            _ => None,
        };
        Ok(Self {
            train_steps,
            shift: shift.or(config["shift"].as_f64()).unwrap_or(1.0),
            time_shift,
            shift_terminal,
            timesteps: vec![],
            sigmas: vec![],
            step_index: 0,
        })
    }

    /// Whether the schedule takes the pipeline's `mu` ([`Self::set_sigmas`]).
    pub fn dynamic_shifting(&self) -> bool {
        self.time_shift.is_some()
    }

    /// The schedule of the given sigmas (`set_timesteps(sigmas=..., mu=...)`): time-shifted by
    /// `mu` with dynamic shifting, else shifted by the static shift; both in f32 as numpy
    /// computes them on the reference's f32 array. Timesteps are `σ·T`; a last σ of 0 is added.
    pub fn set_sigmas(&mut self, sigmas: &[f64], mu: Option<f64>) -> Result<()> {
        if sigmas.is_empty() {
            bail!("the sigma schedule is empty");
        }
        let shift = |s: f32| -> Result<f32> {
            Ok(match (self.time_shift, mu) {
                (Some(TimeShift::Exponential), Some(mu)) => {
                    let e = mu.exp() as f32;
                    e / (e + (1.0 / s - 1.0))
                }
                (Some(TimeShift::Linear), Some(mu)) => {
                    let mu = mu as f32;
                    mu / (mu + (1.0 / s - 1.0))
                }
                (Some(_), None) => bail!("use_dynamic_shifting needs the pipeline's mu"),
                (None, _) => {
                    let shift = self.shift as f32;
                    shift * s / (1.0 + (shift - 1.0) * s)
                }
            })
        };
        let sigmas = sigmas
            .iter()
            .map(|&s| shift(s as f32))
            .collect::<Result<Vec<f32>>>()?;
        let sigmas = self.stretch_to_terminal(sigmas);
        let train = self.train_steps as f32;
        self.timesteps = sigmas.iter().map(|&s| (s * train) as f64).collect();
        self.sigmas = sigmas.into_iter().map(f64::from).collect();
        self.sigmas.push(0.0);
        self.step_index = 0;
        Ok(())
    }

    /// `stretch_shift_to_terminal`: `1 − (1 − σ) / s` with `s = (1 − σ_last) / (1 − terminal)`,
    /// in f32 as numpy computes it; the schedule unchanged without `shift_terminal`.
    fn stretch_to_terminal(&self, sigmas: Vec<f32>) -> Vec<f32> {
        let (Some(terminal), Some(&last)) = (self.shift_terminal, sigmas.last()) else {
            return sigmas;
        };
        let scale = (1.0 - last) / (1.0 - terminal) as f32;
        sigmas
            .into_iter()
            .map(|s| 1.0 - (1.0 - s) / scale)
            .collect()
    }

    pub fn set_timesteps(&mut self, steps: usize) {
        let n = self.train_steps as f64;
        // σ_max/σ_min: the shifted ends of the training grid, computed in f32 by the reference.
        let shift32 = self.shift as f32;
        let shifted32 = |s: f32| shift32 * s / (1.0 + (shift32 - 1.0) * s);
        let sigma_max = shifted32(1.0) as f64;
        let sigma_min = shifted32(1.0 / self.train_steps as f32) as f64;
        let shift = self.shift;
        let sigmas: Vec<f32> = linspace(sigma_max * n, sigma_min * n, steps)
            .into_iter()
            .map(|t| t / n)
            .map(|s| round_f32(shift * s / (1.0 + (shift - 1.0) * s)) as f32)
            .collect();
        let sigmas: Vec<f64> = self
            .stretch_to_terminal(sigmas)
            .into_iter()
            .map(f64::from)
            .collect();
        self.timesteps = sigmas
            .iter()
            .map(|s| (*s as f32 * n as f32) as f64)
            .collect();
        self.sigmas = sigmas;
        self.sigmas.push(0.0);
        self.step_index = 0;
    }

    /// A step-distilled schedule (LightX2V's `WanStepDistillScheduler`): step `i` is at the
    /// shifted noise level of training timestep `timesteps[i]` (σ = t / T, then the shift, in f32
    /// as the reference computes it), and the last step goes to σ = 0. Timesteps must fall
    /// strictly, within 1..=T.
    pub fn set_timestep_list(&mut self, timesteps: &[u32]) -> Result<()> {
        let train = self.train_steps as u32;
        if timesteps.is_empty() {
            bail!("the denoising timestep list is empty");
        }
        if let Some(t) = timesteps.iter().find(|t| **t == 0 || **t > train) {
            bail!("denoising timestep {t} is outside 1..={train}");
        }
        if timesteps.windows(2).any(|w| w[1] >= w[0]) {
            bail!("denoising timesteps must fall strictly: {timesteps:?}");
        }
        let shift = self.shift as f32;
        self.sigmas = timesteps
            .iter()
            .map(|&t| {
                let s = t as f32 / train as f32;
                (shift * s / (1.0 + (shift - 1.0) * s)) as f64
            })
            .collect();
        self.timesteps = self
            .sigmas
            .iter()
            .map(|s| (*s as f32 * train as f32) as f64)
            .collect();
        self.sigmas.push(0.0);
        self.step_index = 0;
        Ok(())
    }

    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.train_steps
    }

    pub fn step(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let i = self.step_index;
        if i >= self.timesteps.len() {
            bail!(
                "flow-Euler: step {i} past the end of a {}-step schedule",
                self.timesteps.len()
            );
        }
        // The reference upcasts the sample (not the model output) to f32 for the update.
        let dt = (self.sigmas[i + 1] as f32 - self.sigmas[i] as f32) as f64;
        let out_dtype = model_output.dtype();
        let prev = (sample.to_dtype(DType::F32)? + (model_output.to_dtype(DType::F32)? * dt)?)?;
        self.step_index += 1;
        Ok(prev.to_dtype(out_dtype)?)
    }
}
