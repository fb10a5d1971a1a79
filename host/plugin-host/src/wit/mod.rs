//! Bindings of every WIT version this host speaks, side by side (one module per version,
//! generated from wit/vX.Y.Z), and the dispatch from a loaded plugin to its version's module.
//! The host's own code (services, runtime) uses only the `latest` types; each older module
//! converts at its boundary.

pub mod v0_1_0;

/// The newest WIT version; its types are the host's vocabulary.
pub use v0_1_0 as latest;

use crate::api::ApiVersion;
use crate::manifest::World;
use crate::state::PluginState;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};

/// A plugin's component, pre-linked against its version's imports.
pub(crate) enum Bound {
    V0_1(v0_1_0::Bound),
}

/// A linker with the host imports of every version, plus bare WASI.
pub(crate) struct Linkers {
    v0_1: Linker<PluginState>,
}

impl Linkers {
    pub fn new(engine: &Engine) -> wasmtime::Result<Linkers> {
        Ok(Linkers {
            v0_1: v0_1_0::linker(engine)?,
        })
    }

    pub fn bind(
        &self,
        api: ApiVersion,
        world: World,
        component: &Component,
    ) -> wasmtime::Result<Bound> {
        match api {
            ApiVersion::V0_1 => Ok(Bound::V0_1(v0_1_0::Bound::new(
                &self.v0_1, world, component,
            )?)),
        }
    }
}

impl Bound {
    pub async fn plan(
        &self,
        store: &mut Store<PluginState>,
        input: &latest::types::PlanInput,
    ) -> wasmtime::Result<Result<latest::types::Storyboard, latest::types::PluginError>> {
        match self {
            Bound::V0_1(bound) => bound.plan(store, input).await,
        }
    }

    pub async fn expand(
        &self,
        store: &mut Store<PluginState>,
        shot: &latest::types::Shot,
        storyboard: &latest::types::Storyboard,
        model: &latest::types::ModelProfile,
    ) -> wasmtime::Result<Result<latest::types::ShotPrompt, latest::types::PluginError>> {
        match self {
            Bound::V0_1(bound) => bound.expand(store, shot, storyboard, model).await,
        }
    }

    pub async fn stitch(
        &self,
        store: &mut Store<PluginState>,
        storyboard: &latest::types::Storyboard,
        clips: &[latest::types::GeneratedClip],
        output_name: &str,
    ) -> wasmtime::Result<Result<latest::types::StitchResult, latest::types::PluginError>> {
        match self {
            Bound::V0_1(bound) => bound.stitch(store, storyboard, clips, output_name).await,
        }
    }
}
