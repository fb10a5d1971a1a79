//! Bindings of `videosdgx:plugin@0.1.0` (wit/v0.1.0). Every interface but `text` is the same
//! in 0.2.0 or a subset of it (0.2.0's `media` adds `upscale` and `interpolate`, which a 0.1.0
//! component cannot import), so those reuse the newest bindings' types and host traits,
//! registered under their 0.1.0 names: a 0.1.0 plugin is served by exactly the code that serves
//! a 0.2.0 one. Only 0.1.0's `text` (which has no `chat`) has bindings of its own.

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
            "videosdgx:plugin/generation": crate::wit::latest::generation,
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
            "videosdgx:plugin/types": crate::wit::latest::types,
            "videosdgx:plugin/log": crate::wit::latest::log,
            "videosdgx:plugin/progress": crate::wit::latest::progress,
            "videosdgx:plugin/project": crate::wit::latest::project,
            "videosdgx:plugin/assets": crate::wit::latest::assets,
            "videosdgx:plugin/generation": crate::wit::latest::generation,
            "videosdgx:plugin/text": super::planner::videosdgx::plugin::text,
            "videosdgx:plugin/media": crate::wit::latest::media,
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
            "videosdgx:plugin/types": crate::wit::latest::types,
            "videosdgx:plugin/log": crate::wit::latest::log,
            "videosdgx:plugin/progress": crate::wit::latest::progress,
            "videosdgx:plugin/project": crate::wit::latest::project,
            "videosdgx:plugin/assets": crate::wit::latest::assets,
            "videosdgx:plugin/generation": crate::wit::latest::generation,
            "videosdgx:plugin/text": super::planner::videosdgx::plugin::text,
            "videosdgx:plugin/media": crate::wit::latest::media,
        },
    });
}

/// 0.1.0's `text` interface (`complete` only), for `state.rs` to implement.
pub use planner::videosdgx::plugin::text;

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
    latest::generation::add_to_linker_instance::<_, Data>(
        &mut linker.instance(&name("generation"))?,
        state,
    )?;
    latest::media::add_to_linker_instance::<_, Data>(&mut linker.instance(&name("media"))?, state)?;
    text::add_to_linker::<_, Data>(&mut linker, state)?;
    Ok(linker)
}

super::bound_worlds!();
