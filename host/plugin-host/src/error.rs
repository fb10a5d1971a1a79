//! Why a call into a plugin failed, in words a user can act on. The runtime turns every
//! trap, limit breach and refusal into one of these; none of them affects other calls.

use crate::state::describe;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plugin ran and returned an error of its own.
    #[error("plugin `{plugin}` returned an error: {message}", message = describe(.error))]
    Plugin {
        plugin: String,
        error: crate::PluginError,
    },
    #[error(
        "plugin `{plugin}` ran out of time: its own code ran for more than {budget:?} (host calls excluded)"
    )]
    Timeout { plugin: String, budget: Duration },
    #[error("plugin `{plugin}` ran out of fuel: it executed more than {fuel} instructions")]
    OutOfFuel { plugin: String, fuel: u64 },
    #[error(
        "plugin `{plugin}` exceeded its memory limit of {limit_mib} MiB (it asked for {wanted_mib} MiB)"
    )]
    MemoryLimit {
        plugin: String,
        limit_mib: usize,
        wanted_mib: usize,
    },
    #[error("plugin `{plugin}` overflowed its stack (runaway recursion)")]
    StackOverflow { plugin: String },
    /// A trap or a malformed value crossing the boundary (such as a string longer than the
    /// plugin's memory).
    #[error("plugin `{plugin}` crashed: {message}")]
    Crashed { plugin: String, message: String },
    /// The plugin returned a value outside what its world allows (e.g. a review's score).
    #[error("plugin `{plugin}` returned an unusable result: {message}")]
    BadOutput { plugin: String, message: String },
    #[error("plugin `{plugin}` is a {actual}; it cannot be used as a {wanted}")]
    WrongWorld {
        plugin: String,
        actual: crate::World,
        wanted: crate::World,
    },
    #[error("plugin `{plugin}` is disabled")]
    Disabled { plugin: String },
    /// Every slot of the instance pool is taken by running calls.
    #[error(
        "plugin `{plugin}` was not started: {running} plugin calls are already running; try again when one ends"
    )]
    Busy { plugin: String, running: u32 },
}

impl CallError {
    /// The error a plugin returned, when that is what happened.
    pub fn plugin_error(&self) -> Option<&crate::PluginError> {
        match self {
            CallError::Plugin { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Short stable code for job records and the HTTP API.
    pub fn code(&self) -> &'static str {
        match self {
            CallError::Plugin { .. } => "plugin_error",
            CallError::Timeout { .. } => "plugin_timeout",
            CallError::OutOfFuel { .. } => "plugin_out_of_fuel",
            CallError::MemoryLimit { .. } => "plugin_memory_limit",
            CallError::StackOverflow { .. } => "plugin_stack_overflow",
            CallError::Crashed { .. } => "plugin_crashed",
            CallError::BadOutput { .. } => "plugin_bad_output",
            CallError::WrongWorld { .. } => "plugin_wrong_world",
            CallError::Disabled { .. } => "plugin_disabled",
            CallError::Busy { .. } => "plugin_busy",
        }
    }
}

/// Why a component cannot be loaded or installed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    #[error("the file is not a WebAssembly component: {0}")]
    NotAComponent(String),
    #[error("plugin.toml and the component disagree: {0}")]
    Mismatch(String),
    #[error("the component needs imports this host does not provide: {0}")]
    UnsupportedImport(String),
    #[error("could not prepare the component: {0}")]
    Link(String),
    #[error("compiled-component cache at {path}: {message}")]
    Cache { path: String, message: String },
}
