//! Bindings of `videosdgx:plugin@0.1.0` (wit/v0.1.0). `log`, `progress`, `project` and
//! `assets` are the same in 0.2.0, so those reuse the newest bindings' types and host traits,
//! registered under their 0.1.0 names: a 0.1.0 plugin is served by exactly the code that serves
//! a 0.2.0 one. 0.1.0's `text` (no `chat`), `generation` (`image` without references) and
//! `media` (no `upscale`/`interpolate`; `clip-info` without `audio`, `timeline-clip` without
//! `volume`, `timeline` without `soundtrack`) have bindings of their own over the same host
//! code. The planner world shares the
//! newest `types` (its records did not change); the expander and stitcher worlds use 0.1.0's
//! own `types` (0.1.0's `shot-prompt` has no keyframe prompt; its clips and timelines have no
//! sound fields), and their values cross to the host's as JSON, or field by field where 0.2.0
//! added a field.

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
            "videosdgx:plugin/media": super::stitcher::videosdgx::plugin::media,
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
            "videosdgx:plugin/types": super::stitcher::videosdgx::plugin::types,
            "videosdgx:plugin/log": crate::wit::latest::log,
            "videosdgx:plugin/progress": crate::wit::latest::progress,
            "videosdgx:plugin/project": crate::wit::latest::project,
            "videosdgx:plugin/assets": crate::wit::latest::assets,
            "videosdgx:plugin/generation": super::planner::videosdgx::plugin::generation,
            "videosdgx:plugin/text": super::planner::videosdgx::plugin::text,
            "videosdgx:plugin/media": super::stitcher::videosdgx::plugin::media,
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
            "videosdgx:plugin/log": crate::wit::latest::log,
            "videosdgx:plugin/progress": crate::wit::latest::progress,
            "videosdgx:plugin/project": crate::wit::latest::project,
            "videosdgx:plugin/assets": crate::wit::latest::assets,
            "videosdgx:plugin/generation": super::planner::videosdgx::plugin::generation,
            "videosdgx:plugin/text": super::planner::videosdgx::plugin::text,
        },
        additional_derives: [serde::Serialize, serde::Deserialize],
    });
}

/// 0.1.0's `text` (`complete` only), `generation` (`image` without references) and `media`
/// (no sound fields, no upscale or interpolate) interfaces, for `state.rs` to implement.
pub use planner::videosdgx::plugin::{generation, text};
pub use stitcher::videosdgx::plugin::media;
/// 0.1.0's own `clip-info` and timeline records, for `state.rs` to convert.
pub use stitcher::videosdgx::plugin::types;

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
    media::add_to_linker::<_, Data>(&mut linker, state)?;
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

    /// A 0.1.0 stitch: its clips carry no sound format, and its timeline's clips play at
    /// volume 1 with no soundtrack.
    pub async fn stitch(
        &self,
        store: &mut wasmtime::Store<PluginState>,
        storyboard: &latest::types::Storyboard,
        clips: &[latest::types::GeneratedClip],
        output_name: &str,
    ) -> wasmtime::Result<Result<latest::types::StitchResult, latest::types::PluginError>> {
        let Bound::Stitcher(pre) = self else {
            return Err(self.wrong_world(crate::manifest::World::Stitcher));
        };
        let clips: Vec<_> = clips
            .iter()
            .map(|clip| types::GeneratedClip {
                shot_id: clip.shot_id.clone(),
                asset_id: clip.asset_id.clone(),
                info: clip_info(clip.info),
            })
            .collect();
        let instance = pre.instantiate_async(&mut *store).await?;
        let stitched = instance
            .videosdgx_plugin_stitching()
            .call_stitch(&mut *store, &convert(storyboard)?, &clips, output_name)
            .await?;
        Ok(match stitched {
            Ok(result) => Ok(latest::types::StitchResult {
                timeline: timeline(result.timeline)?,
                output: convert(&result.output)?,
            }),
            Err(error) => Err(convert(&error)?),
        })
    }
}

/// A host import's answer as 0.1.0's bindings have it (records of the same fields).
pub(crate) fn answer<T: serde::Serialize, U: serde::de::DeserializeOwned>(
    result: Result<T, latest::types::PluginError>,
) -> Result<U, types::PluginError> {
    let failed = |e: wasmtime::Error| types::PluginError::Failed(format!("API 0.1.0 answer: {e}"));
    match result {
        Ok(value) => convert(&value).map_err(failed),
        Err(error) => Err(convert(&error).map_err(failed)?),
    }
}

/// A clip's info as 0.1.0 has it: without its sound format.
pub(crate) fn clip_info(info: latest::types::ClipInfo) -> types::ClipInfo {
    types::ClipInfo {
        width: info.width,
        height: info.height,
        frames: info.frames,
        fps: info.fps,
        duration_ms: info.duration_ms,
    }
}

/// A 0.1.0 timeline as the host's: every clip at volume 1, its sound as generated, and no
/// soundtrack.
pub(crate) fn timeline(timeline: types::Timeline) -> wasmtime::Result<latest::types::Timeline> {
    let items = timeline
        .items
        .into_iter()
        .map(|item| {
            Ok(match item {
                types::TimelineItem::Clip(clip) => {
                    latest::types::TimelineItem::Clip(latest::types::TimelineClip {
                        asset_id: clip.asset_id,
                        shot_id: clip.shot_id,
                        trim_start_ms: clip.trim_start_ms,
                        duration_ms: clip.duration_ms,
                        transition_in: convert(&clip.transition_in)?,
                        volume: 1.0,
                    })
                }
                types::TimelineItem::Title(card) => {
                    latest::types::TimelineItem::Title(convert(&card)?)
                }
            })
        })
        .collect::<wasmtime::Result<Vec<_>>>()?;
    Ok(latest::types::Timeline {
        width: timeline.width,
        height: timeline.height,
        fps: timeline.fps,
        items,
        soundtrack: None,
    })
}
