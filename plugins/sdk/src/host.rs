//! The host's APIs, as plain functions. Each one is capability-checked and audited by the
//! host; a call without the grant returns [`PluginError::Denied`](crate::types::PluginError).

pub use crate::bindings::videosdgx::plugin::{assets, generation, media, project, text, vision};
use crate::bindings::videosdgx::plugin::{log as host_log, progress as host_progress};

/// Writes an info line to the host log, tagged with this plugin's id.
pub fn info(message: &str) {
    host_log::write(host_log::Level::Info, message);
}

/// Writes a warning to the host log.
pub fn warn(message: &str) {
    host_log::write(host_log::Level::Warn, message);
}

/// Writes a debug line to the host log.
pub fn debug(message: &str) {
    host_log::write(host_log::Level::Debug, message);
}

/// Reports `done` of `total` units of work for the current call.
pub fn progress(done: u32, total: u32, message: &str) {
    host_progress::report(done, total, message);
}
