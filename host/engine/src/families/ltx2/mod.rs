//! LTX-2 (diffusers `transformer_ltx2.py`, `autoencoder_kl_ltx2.py`, `autoencoder_kl_ltx2_audio.py`,
//! `pipelines/ltx2/`): one model for video and its sound.

pub mod audio_vae;
pub mod condition;
pub mod connectors;
pub mod latent_upsample_pipeline;
pub mod latent_upsampler;
pub mod pipeline;
pub mod rope;
pub mod transformer;
pub mod video_vae;
pub mod vocoder;
