//! Bindings of `videosdgx:plugin@0.1.0` (wit/v0.1.0) and its host imports. The three worlds
//! share one set of import bindings (generated with the planner world), so one linker
//! serves every plugin kind.

use crate::manifest::World;
use crate::state::PluginState;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store};

mod planner {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.1.0",
        world: "planner",
        imports: { default: async },
        exports: { default: async },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    });
}

mod expander {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.1.0",
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
            "videosdgx:plugin/media": super::planner::videosdgx::plugin::media,
        },
    });
}

mod stitcher {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.1.0",
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
            "videosdgx:plugin/media": super::planner::videosdgx::plugin::media,
        },
    });
}

/// The host-import interfaces, for `state.rs` to implement.
pub use planner::videosdgx::plugin::{
    assets, generation, log, media, progress, project, text, types,
};

pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<PluginState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    planner::Planner::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |state| {
        state
    })?;
    Ok(linker)
}

pub(crate) enum Bound {
    Planner(planner::PlannerPre<PluginState>),
    Expander(expander::ExpanderPre<PluginState>),
    Stitcher(stitcher::StitcherPre<PluginState>),
}

impl Bound {
    pub fn new(
        linker: &Linker<PluginState>,
        world: World,
        component: &Component,
    ) -> wasmtime::Result<Bound> {
        let pre = linker.instantiate_pre(component)?;
        Ok(match world {
            World::Planner => Bound::Planner(planner::PlannerPre::new(pre)?),
            World::Expander => Bound::Expander(expander::ExpanderPre::new(pre)?),
            World::Stitcher => Bound::Stitcher(stitcher::StitcherPre::new(pre)?),
        })
    }

    fn wrong_world(&self, wanted: World) -> wasmtime::Error {
        let have = match self {
            Bound::Planner(_) => World::Planner,
            Bound::Expander(_) => World::Expander,
            Bound::Stitcher(_) => World::Stitcher,
        };
        wasmtime::Error::msg(format!("this plugin is a {have}, not a {wanted}"))
    }

    pub async fn plan(
        &self,
        store: &mut Store<PluginState>,
        input: &types::PlanInput,
    ) -> wasmtime::Result<Result<types::Storyboard, types::PluginError>> {
        let Bound::Planner(pre) = self else {
            return Err(self.wrong_world(World::Planner));
        };
        let instance = pre.instantiate_async(&mut *store).await?;
        instance
            .videosdgx_plugin_planning()
            .call_plan(&mut *store, input)
            .await
    }

    pub async fn expand(
        &self,
        store: &mut Store<PluginState>,
        shot: &types::Shot,
        storyboard: &types::Storyboard,
        model: &types::ModelProfile,
    ) -> wasmtime::Result<Result<types::ShotPrompt, types::PluginError>> {
        let Bound::Expander(pre) = self else {
            return Err(self.wrong_world(World::Expander));
        };
        let instance = pre.instantiate_async(&mut *store).await?;
        instance
            .videosdgx_plugin_expansion()
            .call_expand(&mut *store, shot, storyboard, model)
            .await
    }

    pub async fn stitch(
        &self,
        store: &mut Store<PluginState>,
        storyboard: &types::Storyboard,
        clips: &[types::GeneratedClip],
        output_name: &str,
    ) -> wasmtime::Result<Result<types::StitchResult, types::PluginError>> {
        let Bound::Stitcher(pre) = self else {
            return Err(self.wrong_world(World::Stitcher));
        };
        let instance = pre.instantiate_async(&mut *store).await?;
        instance
            .videosdgx_plugin_stitching()
            .call_stitch(&mut *store, storyboard, clips, output_name)
            .await
    }
}
