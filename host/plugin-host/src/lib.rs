//! Plugin runtime: loads WebAssembly components, enforces limits and capability grants,
//! and reaches the studio only through the [`HostServices`] trait it defines. It never
//! touches the database, files or network on a plugin's behalf except through that trait.
//!
//! Flow: [`Manifest::parse`] the plugin.toml, [`PluginRuntime::load`] the component (checked
//! against the manifest, compiled once and cached), then call [`PluginRuntime::plan`],
//! [`expand`](PluginRuntime::expand), [`stitch`](PluginRuntime::stitch) or
//! [`review`](PluginRuntime::review) with a
//! [`CallContext`] holding the user's [`Grants`] and the per-call [`Limits`].

pub mod api;
pub mod capability;
pub mod error;
pub mod limits;
pub mod manifest;
pub mod runtime;
pub mod services;
mod state;
mod wit;

pub use api::ApiVersion;
pub use capability::{Capability, Grants};
pub use error::{CallError, LoadError};
pub use limits::Limits;
pub use manifest::{Manifest, World};
pub use runtime::{CallContext, Plugin, PluginRuntime};
pub use services::{AuditEntry, HostServices, LogLevel};

pub use types::PluginError;
/// The records of `text.chat`, newest WIT version.
pub use wit::latest::text::{ChatMessage, ChatOptions, ChatReply, FinishReason};
/// The plugin API's data types (storyboard, shot, timeline...), newest WIT version.
pub use wit::latest::types;
