//! Studio service: the project database (source of truth), the asset library and its derived
//! search index, the persistent job queue, and the HTTP API over them.

pub mod api;
pub mod app;
pub mod assets;
pub mod auth;
pub mod db;
pub mod error;
pub mod finishing;
pub mod generation;
pub mod gpu;
pub mod images;
pub mod jobs;
pub mod keyframes;
pub mod language;
pub mod loras;
pub mod models;
pub mod plugins;
pub mod projects;
pub mod render;
pub mod server;
pub mod settings;
pub mod shoot;
pub mod shots;
pub mod web;
pub mod workers;

pub use app::{App, StudioConfig};
pub use error::{Result, StudioError};
