//! Generation engine: loads diffusers checkpoints and runs their model families on candle (CPU or
//! CUDA): language models, video and image diffusion, finishing.
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
pub mod parallel;
pub mod pipelines;
pub mod presets;
pub mod schedulers;
pub mod text;
pub mod tokenizer;
pub mod video;

/// Recorded with every generation, so that an output names the engine that made it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
