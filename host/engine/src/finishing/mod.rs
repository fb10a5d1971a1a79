//! Finishing: what turns a generator's 480p/720p clip at 16–24 fps into the delivered piece.
//! Upscalers and RIFE frame interpolation are loaded from the bare state dicts users download
//! (`loader::StateDict`), their architecture read from the keys as spandrel does.

pub mod interpolate;
pub mod resample;
pub mod scene_cut;
