//! Language and vision-language models in the transformers layout (Qwen3, Gemma 3 with its SigLIP
//! vision tower): one decoder shared by every family, text generation with a KV cache, sampling,
//! chat templates and JSON-Schema-constrained output, and the hidden states that image and video
//! pipelines use as prompt embeddings. Like the rest of the engine it never touches the studio.

pub mod cache;
pub mod chat;
pub mod chat_template;
pub mod config;
pub mod constrained;
pub mod decoder;
pub mod gemma3;
pub mod gemma3_vision;
pub mod generation;
pub mod generation_config;
pub mod mask;
pub mod model;
pub mod qwen3;
pub mod sampling;
pub mod siglip;
pub mod stop;
