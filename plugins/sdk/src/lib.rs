//! The VideosDGX plugin SDK: typed access to the host's APIs, one trait per plugin kind
//! and a macro that exports an implementation as a WebAssembly component.
//!
//! ```ignore
//! use videosdgx_plugin_sdk::{Planner, types::*};
//! struct MyPlanner;
//! impl Planner for MyPlanner {
//!     fn plan(input: PlanInput) -> Result<Storyboard, PluginError> { todo!() }
//! }
//! videosdgx_plugin_sdk::export_planner!(MyPlanner);
//! ```
//!
//! Everything a plugin does outside its own memory goes through [`host`]; the host checks
//! each call against the capabilities the user granted. This crate never performs I/O itself.

#[doc(hidden)]
pub use wit_bindgen;

/// Raw bindings of the host imports (`videosdgx:plugin@0.2.0`, world `host`).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/v0.2.0",
        world: "host",
        generate_unused_types: true,
        additional_derives: [PartialEq],
    });
}

pub mod frames;
pub mod host;

pub use bindings::videosdgx::plugin::types;
use types::{
    GeneratedClip, ModelProfile, PlanInput, PluginError, Shot, ShotPrompt, StitchResult,
    Storyboard, Take, TakeReview,
};

/// The WIT package version this SDK builds against: `api-version` in a plugin's plugin.toml.
pub const API_VERSION: &str = "0.2.0";

/// Turns a script or brief into a storyboard (world `planner`).
pub trait Planner {
    fn plan(input: PlanInput) -> Result<Storyboard, PluginError>;
}

/// Turns one shot, in the context of its storyboard, into a model-ready prompt (world `expander`).
pub trait Expander {
    fn expand(
        shot: Shot,
        storyboard: Storyboard,
        model: ModelProfile,
    ) -> Result<ShotPrompt, PluginError>;
}

/// Turns generated clips into a rendered edit (world `stitcher`).
pub trait Stitcher {
    fn stitch(
        storyboard: Storyboard,
        clips: Vec<GeneratedClip>,
        output_name: String,
    ) -> Result<StitchResult, PluginError>;
}

/// Judges one generated take against the shot it was made for (world `reviewer`).
pub trait Reviewer {
    fn review(
        shot: Shot,
        prompt: ShotPrompt,
        take: Take,
        storyboard: Storyboard,
    ) -> Result<TakeReview, PluginError>;
}

include!(concat!(env!("OUT_DIR"), "/export_macros.rs"));
