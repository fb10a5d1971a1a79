//! A stitcher built against API 0.1.0 (wit/v0.1.0, no SDK), for the host's tests: the host must
//! keep serving stitchers of older API versions, whose `clip-info` has no `audio` and whose
//! `timeline-clip` has no `volume`. It cuts the clips together in the order given, each for its
//! whole length, after the storyboard's opening title, and renders the timeline.

wit_bindgen::generate!({
    path: "../../wit/v0.1.0",
    world: "stitcher",
});

use exports::videosdgx::plugin::stitching::Guest;
use videosdgx::plugin::media;
use videosdgx::plugin::types::{
    GeneratedClip, PluginError, StitchResult, Storyboard, Timeline, TimelineClip, TimelineItem,
    Transition, TransitionKind,
};

struct Legacy;

impl Guest for Legacy {
    fn stitch(
        storyboard: Storyboard,
        clips: Vec<GeneratedClip>,
        output_name: String,
    ) -> Result<StitchResult, PluginError> {
        let first = clips
            .first()
            .ok_or_else(|| PluginError::InvalidInput("no clips to stitch".into()))?;
        let mut items: Vec<TimelineItem> = storyboard
            .opening_title
            .into_iter()
            .map(TimelineItem::Title)
            .collect();
        items.extend(clips.iter().map(|clip| {
            TimelineItem::Clip(TimelineClip {
                asset_id: clip.asset_id.clone(),
                shot_id: clip.shot_id.clone(),
                trim_start_ms: 0,
                duration_ms: clip.info.duration_ms,
                transition_in: Transition {
                    kind: TransitionKind::Cut,
                    duration_ms: 0,
                },
            })
        }));
        let timeline = Timeline {
            width: first.info.width,
            height: first.info.height,
            fps: first.info.fps,
            items,
        };
        let output = media::render_timeline(&timeline, &output_name)?;
        Ok(StitchResult { timeline, output })
    }
}

export!(Legacy);
