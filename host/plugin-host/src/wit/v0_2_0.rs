//! Bindings of `videosdgx:plugin@0.2.0` (wit/v0.2.0), the newest version, and its host
//! imports. The three worlds share one set of import bindings (generated with the planner
//! world), so one linker serves every plugin kind.

use crate::state::PluginState;
use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

mod planner {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.2.0",
        world: "planner",
        imports: { default: async },
        exports: { default: async },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    });
}

mod expander {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.2.0",
        world: "expander",
        imports: { default: async },
        exports: { default: async },
        with: {
            "videosdgx:plugin/types": super::planner::videosdgx::plugin::types,
            "videosdgx:plugin/log": super::planner::videosdgx::plugin::log,
            "videosdgx:plugin/progress": super::planner::videosdgx::plugin::progress,
            "videosdgx:plugin/project": super::planner::videosdgx::plugin::project,
            "videosdgx:plugin/assets": super::planner::videosdgx::plugin::assets,
            "videosdgx:plugin/generation": super::planner::videosdgx::plugin::generation,
            "videosdgx:plugin/text": super::planner::videosdgx::plugin::text,
            "videosdgx:plugin/vision": super::planner::videosdgx::plugin::vision,
            "videosdgx:plugin/media": super::planner::videosdgx::plugin::media,
        },
    });
}

mod stitcher {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.2.0",
        world: "stitcher",
        imports: { default: async },
        exports: { default: async },
        with: {
            "videosdgx:plugin/types": super::planner::videosdgx::plugin::types,
            "videosdgx:plugin/log": super::planner::videosdgx::plugin::log,
            "videosdgx:plugin/progress": super::planner::videosdgx::plugin::progress,
            "videosdgx:plugin/project": super::planner::videosdgx::plugin::project,
            "videosdgx:plugin/assets": super::planner::videosdgx::plugin::assets,
            "videosdgx:plugin/generation": super::planner::videosdgx::plugin::generation,
            "videosdgx:plugin/text": super::planner::videosdgx::plugin::text,
            "videosdgx:plugin/vision": super::planner::videosdgx::plugin::vision,
            "videosdgx:plugin/media": super::planner::videosdgx::plugin::media,
        },
    });
}

mod reviewer {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.2.0",
        world: "reviewer",
        imports: { default: async },
        exports: { default: async },
        with: {
            "videosdgx:plugin/types": super::planner::videosdgx::plugin::types,
            "videosdgx:plugin/log": super::planner::videosdgx::plugin::log,
            "videosdgx:plugin/progress": super::planner::videosdgx::plugin::progress,
            "videosdgx:plugin/project": super::planner::videosdgx::plugin::project,
            "videosdgx:plugin/assets": super::planner::videosdgx::plugin::assets,
            "videosdgx:plugin/generation": super::planner::videosdgx::plugin::generation,
            "videosdgx:plugin/text": super::planner::videosdgx::plugin::text,
            "videosdgx:plugin/vision": super::planner::videosdgx::plugin::vision,
            "videosdgx:plugin/media": super::planner::videosdgx::plugin::media,
        },
    });
}

/// The host-import interfaces, for `state.rs` to implement.
pub use planner::videosdgx::plugin::{
    assets, generation, log, media, progress, project, text, types, vision,
};

/// The interfaces a 0.2.0 component may import.
pub const IMPORTS: &[&str] = &[
    "types",
    "log",
    "progress",
    "project",
    "assets",
    "generation",
    "text",
    "vision",
    "media",
];

pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<PluginState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    planner::Planner::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |state| {
        state
    })?;
    Ok(linker)
}

super::bound_worlds!();

impl Bound {
    pub async fn expand(
        &self,
        store: &mut wasmtime::Store<PluginState>,
        shot: &types::Shot,
        storyboard: &types::Storyboard,
        model: &types::ModelProfile,
    ) -> wasmtime::Result<Result<types::ShotPrompt, types::PluginError>> {
        let Bound::Expander(pre) = self else {
            return Err(self.wrong_world(crate::manifest::World::Expander));
        };
        let instance = pre.instantiate_async(&mut *store).await?;
        instance
            .videosdgx_plugin_expansion()
            .call_expand(&mut *store, shot, storyboard, model)
            .await
    }

    pub async fn stitch(
        &self,
        store: &mut wasmtime::Store<PluginState>,
        storyboard: &types::Storyboard,
        clips: &[types::GeneratedClip],
        output_name: &str,
    ) -> wasmtime::Result<Result<types::StitchResult, types::PluginError>> {
        let Bound::Stitcher(pre) = self else {
            return Err(self.wrong_world(crate::manifest::World::Stitcher));
        };
        let instance = pre.instantiate_async(&mut *store).await?;
        instance
            .videosdgx_plugin_stitching()
            .call_stitch(&mut *store, storyboard, clips, output_name)
            .await
    }
}

/// A pre-linked `reviewer` component (a world that 0.1.0 does not have).
pub(crate) struct BoundReviewer(reviewer::ReviewerPre<PluginState>);

impl BoundReviewer {
    pub fn new(
        linker: &Linker<PluginState>,
        component: &wasmtime::component::Component,
    ) -> wasmtime::Result<BoundReviewer> {
        Ok(BoundReviewer(reviewer::ReviewerPre::new(
            linker.instantiate_pre(component)?,
        )?))
    }

    pub async fn review(
        &self,
        store: &mut wasmtime::Store<PluginState>,
        shot: &types::Shot,
        prompt: &types::ShotPrompt,
        take: &types::Take,
        storyboard: &types::Storyboard,
    ) -> wasmtime::Result<Result<types::TakeReview, types::PluginError>> {
        let instance = self.0.instantiate_async(&mut *store).await?;
        instance
            .videosdgx_plugin_reviewing()
            .call_review(&mut *store, shot, prompt, take, storyboard)
            .await
    }
}
