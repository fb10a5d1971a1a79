//! Named generation presets: a scheduler, its shift, the timesteps and the guidance that belong
//! together, as published for a model family, so that `--preset NAME` sets them in one go.
//!
//! The step-distilled ones are LightX2V's 4-step Wan distillations (full models and LoRAs on the
//! base models): Euler on shifted sigmas with shift 5 at training timesteps
//! `[1000, 750, 500, 250]` (`configs/distill/*_4step*.json`, `denoising_step_list`), guidance off
//! (classifier-free guidance is distilled in). For Wan 2.2's two experts the switch falls after
//! two steps at both published boundaries (0.875 text-to-video, 0.9 image-to-video: timesteps
//! 1000 and 937.5 lie above), LightX2V's `boundary_step_index` 2.
//!
//! LTX-2's distilled checkpoint runs the 8 sigmas of diffusers' `pipelines/ltx2/utils.py`
//! (`DISTILLED_SIGMA_VALUES`, from Lightricks' `ltx-pipelines`), without guidance.

use crate::families::ltx2::pipeline::DISTILLED_SIGMAS;
use crate::pipelines::GenerateParams;
use crate::schedulers::SchedulerKind;

/// What a preset sets.
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    pub description: &'static str,
    pub schedule: Schedule,
    pub guidance: f64,
}

/// How a preset's steps are placed.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Training timesteps on a shifted flow-Euler schedule (LightX2V's `denoising_step_list`).
    Timesteps {
        scheduler: SchedulerKind,
        flow_shift: f64,
        list: &'static [u32],
    },
    /// Noise levels handed to the pipeline's own scheduler as they are.
    Sigmas(&'static [f64]),
}

const LIGHTX2V_4STEP: Schedule = Schedule::Timesteps {
    scheduler: SchedulerKind::FlowEuler,
    flow_shift: 5.0,
    list: &[1000, 750, 500, 250],
};

pub const PRESETS: [Preset; 3] = [
    Preset {
        name: "wan2.1-distill-4step",
        description: "Wan 2.1 with LightX2V's 4-step distillation (model or LoRA): 4 Euler steps, \
                      shift 5, no guidance",
        schedule: LIGHTX2V_4STEP,
        guidance: 1.0,
    },
    Preset {
        name: "wan2.2-distill-4step",
        description: "Wan 2.2 A14B with LightX2V's 4-step distillation (model or LoRA): 4 Euler \
                      steps, shift 5, no guidance, two steps per expert",
        schedule: LIGHTX2V_4STEP,
        guidance: 1.0,
    },
    Preset {
        name: "ltx2-distilled-8step",
        description: "LTX-2 distilled: the 8 published sigmas, no guidance",
        schedule: Schedule::Sigmas(&DISTILLED_SIGMAS),
        guidance: 1.0,
    },
];

/// The preset called `name`; the error lists the known ones.
pub fn preset(name: &str) -> anyhow::Result<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
        let known: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        anyhow::anyhow!("unknown preset `{name}` (known: {})", known.join(", "))
    })
}

impl Preset {
    /// `params` with this preset's schedule and guidance.
    pub fn apply(&self, params: &mut GenerateParams) {
        match &self.schedule {
            Schedule::Timesteps {
                scheduler,
                flow_shift,
                list,
            } => {
                params.scheduler = Some(*scheduler);
                params.flow_shift = Some(*flow_shift);
                params.denoising_steps = Some(list.to_vec());
            }
            Schedule::Sigmas(sigmas) => params.sigmas = Some(sigmas.to_vec()),
        }
        params.steps = self.steps();
        params.guidance = self.guidance;
        params.guidance_2 = None;
    }

    /// Denoising steps.
    pub fn steps(&self) -> usize {
        match &self.schedule {
            Schedule::Timesteps { list, .. } => list.len(),
            Schedule::Sigmas(sigmas) => sigmas.len(),
        }
    }
}
