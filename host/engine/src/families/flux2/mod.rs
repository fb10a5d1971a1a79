//! FLUX.2 [dev] and [klein] (diffusers `transformer_flux2.py`, `autoencoder_kl_flux2.py`,
//! `pipelines/flux2/`).

pub mod pipeline;
pub mod transformer;
pub mod vae;
