//! Bindings of `videosdgx:plugin@0.1.0` (wit/v0.1.0). Every interface but `text` and
//! `generation` is the same in 0.2.0 or a subset of it (0.2.0's `media` adds `upscale` and
//! `interpolate`, which a 0.1.0 component cannot import), so those reuse the newest bindings'
//! types and host traits, registered under their 0.1.0 names: a 0.1.0 plugin is served by
//! exactly the code that serves a 0.2.0 one. 0.1.0's `text` (no `chat`) and `generation`
//! (`image` without references) have bindings of their own over the same host code, and the
//! expander world its own types: 0.1.0's `shot-prompt` has no keyframe prompt, so an
//! expansion crosses as JSON (the records are otherwise field for field the same).

use crate::state::PluginState;
use crate::wit::latest;
use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

mod planner {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.1.0",
        world: "planner",
        imports: { default: async },
        exports: { default: async },
        with: {
            "videosdgx:plugin/types": crate::wit::latest::types,
            "videosdgx:plugin/log": crate::wit::latest::log,
            "videosdgx:plugin/progress": crate::wit::latest::progress,
            "videosdgx:plugin/project": crate::wit::latest::project,
            "videosdgx:plugin/assets": crate::wit::latest::assets,
            "videosdgx:plugin/media": crate::wit::latest::media,
        },
    });
}

mod expander {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.1.0",
        world: "expander",
        imports: { default: async },
        exports: { default: async },
        with: {
            "videosdgx:plugin/log": crate::wit::latest::log,
            "videosdgx:plugin/progress": crate::wit::latest::progress,
            "videosdgx:plugin/project": crate::wit::latest::project,
            "videosdgx:plugin/assets": crate::wit::latest::assets,
            "videosdgx:plugin/generation": super::planner::videosdgx::plugin::generation,
            "videosdgx:plugin/text": super::planner::videosdgx::plugin::text,
            "videosdgx:plugin/media": crate::wit::latest::media,
        },
        additional_derives: [serde::Serialize, serde::Deserialize],
    });
}

mod stitcher {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.1.0",
        world: "stitcher",
        imports: { default: async },
        exports: { default: async },
        with: {
            "videosdgx:plugin/types": crate::wit::latest::types,
            "videosdgx:plugin/log": crate::wit::latest::log,
            "videosdgx:plugin/progress": crate::wit::latest::progress,
            "videosdgx:plugin/project": crate::wit::latest::project,
            "videosdgx:plugin/assets": crate::wit::latest::assets,
            "videosdgx:plugin/generation": super::planner::videosdgx::plugin::generation,
            "videosdgx:plugin/text": super::planner::videosdgx::plugin::text,
            "videosdgx:plugin/media": crate::wit::latest::media,
        },
    });
}

/// 0.1.0's `text` (`complete` only) and `generation` (`image` without references) interfaces,
/// for `state.rs` to implement.
pub use planner::videosdgx::plugin::{generation, text};

/// The interfaces a 0.1.0 component may import.
pub const IMPORTS: &[&str] = &[
    "types",
    "log",
    "progress",
    "project",
    "assets",
    "generation",
    "text",
    "media",
];

fn state(state: &mut PluginState) -> &mut PluginState {
    state
}

pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<PluginState>> {
    type Data = HasSelf<PluginState>;
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    // The shared interfaces' generated `add_to_linker` would register their 0.2.0 names.
    let name = |interface: &str| format!("videosdgx:plugin/{interface}@0.1.0");
    latest::types::add_to_linker_instance::<_, Data>(&mut linker.instance(&name("types"))?, state)?;
    latest::log::add_to_linker_instance::<_, Data>(&mut linker.instance(&name("log"))?, state)?;
    latest::progress::add_to_linker_instance::<_, Data>(
        &mut linker.instance(&name("progress"))?,
        state,
    )?;
    latest::project::add_to_linker_instance::<_, Data>(
        &mut linker.instance(&name("project"))?,
        state,
    )?;
    latest::assets::add_to_linker_instance::<_, Data>(
        &mut linker.instance(&name("assets"))?,
        state,
    )?;
    latest::media::add_to_linker_instance::<_, Data>(&mut linker.instance(&name("media"))?, state)?;
    text::add_to_linker::<_, Data>(&mut linker, state)?;
    generation::add_to_linker::<_, Data>(&mut linker, state)?;
    Ok(linker)
}

super::bound_worlds!();

/// A value of one version's bindings as the other's: the records have the same fields.
fn convert<T: serde::Serialize, U: serde::de::DeserializeOwned>(value: &T) -> wasmtime::Result<U> {
    Ok(serde_json::from_value(serde_json::to_value(value)?)?)
}

impl Bound {
    /// A 0.1.0 expansion: its shot prompt has no keyframe prompt (the keyframe uses the prompt).
    pub async fn expand(
        &self,
        store: &mut wasmtime::Store<PluginState>,
        shot: &latest::types::Shot,
        storyboard: &latest::types::Storyboard,
        model: &latest::types::ModelProfile,
    ) -> wasmtime::Result<Result<latest::types::ShotPrompt, latest::types::PluginError>> {
        let Bound::Expander(pre) = self else {
            return Err(self.wrong_world(crate::manifest::World::Expander));
        };
        let instance = pre.instantiate_async(&mut *store).await?;
        let expanded = instance
            .videosdgx_plugin_expansion()
            .call_expand(
                &mut *store,
                &convert(shot)?,
                &convert(storyboard)?,
                &convert(model)?,
            )
            .await?;
        Ok(match expanded {
            Ok(prompt) => Ok(latest::types::ShotPrompt {
                shot_id: prompt.shot_id,
                prompt: prompt.prompt,
                negative_prompt: prompt.negative_prompt,
                keyframe_prompt: String::new(),
            }),
            Err(error) => Err(convert(&error)?),
        })
    }
}
