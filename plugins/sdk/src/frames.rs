//! Frame arithmetic for generation models: clip lengths must fit the model's maximum and
//! its frame rule (`frame_step * k + 1`, e.g. 81 frames at 16 fps for Wan).

use crate::types::ModelProfile;

/// The valid frame count closest to `duration_ms`, clamped to `[shortest, max_frames]`.
pub fn frames_for(duration_ms: u32, model: &ModelProfile) -> u32 {
    let step = model.frame_step.max(1);
    let wanted = (u64::from(duration_ms) * u64::from(model.fps) + 500) / 1000;
    let k = ((wanted.saturating_sub(1) + u64::from(step) / 2) / u64::from(step)).max(1);
    let frames = (k * u64::from(step) + 1) as u32;
    frames.min(longest(model)).max(shortest(model))
}

/// The longest valid frame count the model accepts.
pub fn longest(model: &ModelProfile) -> u32 {
    let step = model.frame_step.max(1);
    let max = model.max_frames.max(1);
    (max - 1) / step * step + 1
}

/// The shortest valid clip worth generating (one frame step past the first frame).
pub fn shortest(model: &ModelProfile) -> u32 {
    (model.frame_step.max(1) + 1).min(longest(model))
}

/// Duration of `frames` frames in milliseconds.
pub fn duration_ms(frames: u32, model: &ModelProfile) -> u32 {
    (u64::from(frames) * 1000 / u64::from(model.fps.max(1))) as u32
}
