//! FLUX.2: its image VAE (and, later, its transformer and pipelines).

pub mod vae;
