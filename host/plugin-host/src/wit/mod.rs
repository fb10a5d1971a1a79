//! Bindings of every WIT version this host speaks, side by side (one module per version,
//! generated from wit/vX.Y.Z), and the dispatch from a loaded plugin to its version's module.
//! The host's own code (services, runtime) uses only the `latest` types; older modules share
//! them wherever their interfaces did not change.

pub mod v0_1_0;
pub mod v0_2_0;

/// The newest WIT version; its types are the host's vocabulary.
pub use v0_2_0 as latest;

use crate::api::ApiVersion;
use crate::manifest::World;
use crate::state::PluginState;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};

/// The interfaces a component built against `api` may import.
pub(crate) fn imports(api: ApiVersion) -> &'static [&'static str] {
    match api {
        ApiVersion::V0_1 => v0_1_0::IMPORTS,
        ApiVersion::V0_2 => v0_2_0::IMPORTS,
    }
}

/// A plugin's component, pre-linked against its version's imports.
pub(crate) enum Bound {
    V0_1(v0_1_0::Bound),
    V0_2(v0_2_0::Bound),
    /// The `reviewer` world, from 0.2.0 on (the manifest check refuses older ones).
    Reviewer(v0_2_0::BoundReviewer),
}

/// A linker per version with its host imports, plus bare WASI.
pub(crate) struct Linkers {
    v0_1: Linker<PluginState>,
    v0_2: Linker<PluginState>,
}

impl Linkers {
    pub fn new(engine: &Engine) -> wasmtime::Result<Linkers> {
        Ok(Linkers {
            v0_1: v0_1_0::linker(engine)?,
            v0_2: v0_2_0::linker(engine)?,
        })
    }

    pub fn bind(
        &self,
        api: ApiVersion,
        world: World,
        component: &Component,
    ) -> wasmtime::Result<Bound> {
        Ok(match (api, world) {
            (ApiVersion::V0_1, World::Reviewer) => {
                return Err(wasmtime::Error::msg("API 0.1.0 has no reviewer world"));
            }
            (ApiVersion::V0_1, _) => Bound::V0_1(v0_1_0::Bound::new(&self.v0_1, world, component)?),
            (ApiVersion::V0_2, World::Reviewer) => {
                Bound::Reviewer(v0_2_0::BoundReviewer::new(&self.v0_2, component)?)
            }
            (ApiVersion::V0_2, _) => Bound::V0_2(v0_2_0::Bound::new(&self.v0_2, world, component)?),
        })
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
            Bound::V0_2(bound) => bound.plan(store, input).await,
            Bound::Reviewer(_) => Err(not_a(World::Reviewer, World::Planner)),
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
            Bound::V0_2(bound) => bound.expand(store, shot, storyboard, model).await,
            Bound::Reviewer(_) => Err(not_a(World::Reviewer, World::Expander)),
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
            Bound::V0_2(bound) => bound.stitch(store, storyboard, clips, output_name).await,
            Bound::Reviewer(_) => Err(not_a(World::Reviewer, World::Stitcher)),
        }
    }

    pub async fn review(
        &self,
        store: &mut Store<PluginState>,
        shot: &latest::types::Shot,
        prompt: &latest::types::ShotPrompt,
        take: &latest::types::Take,
        storyboard: &latest::types::Storyboard,
    ) -> wasmtime::Result<Result<latest::types::TakeReview, latest::types::PluginError>> {
        match self {
            Bound::Reviewer(bound) => bound.review(store, shot, prompt, take, storyboard).await,
            // The runtime checks the world before calling; this is the same check, kept local.
            _ => Err(wasmtime::Error::msg("this plugin is not a reviewer")),
        }
    }
}

fn not_a(have: World, wanted: World) -> wasmtime::Error {
    wasmtime::Error::msg(format!("this plugin is a {have}, not a {wanted}"))
}

/// The pre-instantiated worlds that every version has (modules `planner`, `expander` and
/// `stitcher` in the calling module) and the call into the planner's export, which is the same
/// in every version, with the `latest` types. Each version calls the other exports itself.
macro_rules! bound_worlds {
    () => {
        pub(crate) enum Bound {
            Planner(planner::PlannerPre<PluginState>),
            Expander(expander::ExpanderPre<PluginState>),
            Stitcher(stitcher::StitcherPre<PluginState>),
        }

        impl Bound {
            pub fn new(
                linker: &Linker<PluginState>,
                world: crate::manifest::World,
                component: &wasmtime::component::Component,
            ) -> wasmtime::Result<Bound> {
                use crate::manifest::World;
                let pre = linker.instantiate_pre(component)?;
                Ok(match world {
                    World::Planner => Bound::Planner(planner::PlannerPre::new(pre)?),
                    World::Expander => Bound::Expander(expander::ExpanderPre::new(pre)?),
                    World::Stitcher => Bound::Stitcher(stitcher::StitcherPre::new(pre)?),
                    World::Reviewer => {
                        return Err(wasmtime::Error::msg("reviewers are bound by Linkers::bind"));
                    }
                })
            }

            fn wrong_world(&self, wanted: crate::manifest::World) -> wasmtime::Error {
                use crate::manifest::World;
                let have = match self {
                    Bound::Planner(_) => World::Planner,
                    Bound::Expander(_) => World::Expander,
                    Bound::Stitcher(_) => World::Stitcher,
                };
                wasmtime::Error::msg(format!("this plugin is a {have}, not a {wanted}"))
            }

            pub async fn plan(
                &self,
                store: &mut wasmtime::Store<PluginState>,
                input: &crate::wit::latest::types::PlanInput,
            ) -> wasmtime::Result<
                Result<
                    crate::wit::latest::types::Storyboard,
                    crate::wit::latest::types::PluginError,
                >,
            > {
                let Bound::Planner(pre) = self else {
                    return Err(self.wrong_world(crate::manifest::World::Planner));
                };
                let instance = pre.instantiate_async(&mut *store).await?;
                instance
                    .videosdgx_plugin_planning()
                    .call_plan(&mut *store, input)
                    .await
            }
        }
    };
}
pub(crate) use bound_worlds;
