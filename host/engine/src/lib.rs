//! Generation engine: loads diffusers checkpoints and runs the Wan family on candle (CPU or CUDA).
//! It never touches the database, the web or plugins: the studio drives it through its public API.

pub mod attention;
pub mod families;
pub mod finishing;
pub mod fused;
pub mod hub;
pub mod image_processor;
pub mod loader;
pub mod lora;
pub mod models;
pub mod pipelines;
pub mod presets;
pub mod schedulers;
pub mod text;
pub mod tokenizer;
pub mod vae;
pub mod video;

/// Recorded with every generation, so that an output names the engine that made it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
