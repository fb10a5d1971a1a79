//! Studio service: the project database (source of truth), the asset library and its derived
//! search index, the persistent job queue, and the HTTP API over them.

pub mod auth;
pub mod web;
