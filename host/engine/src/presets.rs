//! Named generation presets: a scheduler, its shift, the timesteps and the guidance that belong
//! together, as published for a model family, so that `--preset NAME` sets them in one go.
//!
//! The step-distilled ones are LightX2V's 4-step Wan distillations (full models and LoRAs on the
//! base models): Euler on shifted sigmas with shift 5 at training timesteps
//! `[1000, 750, 500, 250]` (`configs/distill/*_4step*.json`, `denoising_step_list`), guidance off
//! (classifier-free guidance is distilled in). For Wan 2.2's two experts the switch falls after
//! two steps at both published boundaries (0.875 text-to-video, 0.9 image-to-video: timesteps
//! 1000 and 937.5 lie above), LightX2V's `boundary_step_index` 2.

use crate::pipelines::GenerateParams;
use crate::schedulers::SchedulerKind;

/// What a preset sets.
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    pub description: &'static str,
    pub scheduler: SchedulerKind,
    pub flow_shift: f64,
    pub denoising_steps: &'static [u32],
    pub guidance: f64,
}

const LIGHTX2V_4STEP: [u32; 4] = [1000, 750, 500, 250];

pub const PRESETS: [Preset; 2] = [
    Preset {
        name: "wan2.1-distill-4step",
        description: "Wan 2.1 with LightX2V's 4-step distillation (model or LoRA): 4 Euler steps, \
                      shift 5, no guidance",
        scheduler: SchedulerKind::FlowEuler,
        flow_shift: 5.0,
        denoising_steps: &LIGHTX2V_4STEP,
        guidance: 1.0,
    },
    Preset {
        name: "wan2.2-distill-4step",
        description: "Wan 2.2 A14B with LightX2V's 4-step distillation (model or LoRA): 4 Euler \
                      steps, shift 5, no guidance, two steps per expert",
        scheduler: SchedulerKind::FlowEuler,
        flow_shift: 5.0,
        denoising_steps: &LIGHTX2V_4STEP,
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
        params.scheduler = Some(self.scheduler);
        params.flow_shift = Some(self.flow_shift);
        params.steps = self.denoising_steps.len();
        params.denoising_steps = Some(self.denoising_steps.to_vec());
        params.guidance = self.guidance;
        params.guidance_2 = None;
    }
}
