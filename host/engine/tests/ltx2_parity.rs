//! Parity of the LTX-2 components with diffusers 0.42.1 on the tiny seeded fixtures made by
//! tests/fixtures/make_ltx2_*_fixtures.py: f32 on the CPU, relative error ‖out − ref‖ / ‖ref‖ at
//! most 1e-4 per component (tests/fixtures/components/TOLERANCES.md). One test binary for the
//! family, one module per component.

#[path = "ltx2/audio.rs"]
mod audio;
#[path = "ltx2/condition.rs"]
mod condition;
#[path = "ltx2/connectors.rs"]
mod connectors;
#[path = "ltx2/image_to_video.rs"]
mod image_to_video;
#[path = "ltx2/latent_upsampler.rs"]
mod latent_upsampler;
#[path = "ltx2/pipeline.rs"]
mod pipeline;
#[path = "ltx2/single_file.rs"]
mod single_file;
#[path = "ltx2/transformer.rs"]
mod transformer;
#[path = "ltx2/two_stage.rs"]
mod two_stage;
#[path = "ltx2/video_vae.rs"]
mod video_vae;
