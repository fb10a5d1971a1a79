//! Wan 2.1 / 2.2 (diffusers `transformer_wan.py`, `autoencoder_kl_wan.py`, `pipelines/wan/`):
//! text-to-video, image-to-video, first+last frame, the two-expert A14B and TI2V-5B layouts.

pub mod pipeline;
pub mod prompt;
pub mod transformer;
pub mod vae;

pub use pipeline::{TextSide, WanParts, WanPipeline};
