//! Model families: each one's models and pipeline steps that are not shared building blocks.

pub mod flux2;
