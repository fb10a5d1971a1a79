//! FLUX.1 ([dev], [schnell], Kontext), mirroring diffusers' `transformer_flux.py` and
//! `pipelines/flux/`. The VAE is the shared [`crate::models::autoencoder_kl::AutoencoderKL`]; the
//! text encoders are [`crate::models::clip_text`] and [`crate::models::t5`].

pub mod pipeline;
pub mod transformer;
