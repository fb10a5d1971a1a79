//! Model families, one folder each, mirroring diffusers' files: a family's transformer, VAE and
//! pipelines. Shared building blocks live in [`crate::models`], [`crate::attention`],
//! [`crate::schedulers`] and [`crate::text`]; a family only composes them. Callers outside the
//! engine reach a family through [`crate::pipelines::Pipeline`], which opens a model directory and
//! dispatches on its `model_index.json`.

pub mod flux;
pub mod flux2;
pub mod ltx2;
pub mod wan;
