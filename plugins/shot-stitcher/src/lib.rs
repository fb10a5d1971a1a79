//! shot-stitcher: generated clips plus their storyboard to a finished edit. Clips are put in
//! storyboard order, trimmed to the planned length, entered through the planned transition
//! (shortened when a clip is too short to hold it), framed by the storyboard's title cards,
//! and the host renders the timeline to an MP4 (capability `render`) at the highest frame rate
//! among the clips, with each clip's sound at its generated level.

use videosdgx_plugin_sdk::types::{
    GeneratedClip, PluginError, StitchResult, Storyboard, Timeline, TimelineClip, TimelineItem,
    Transition, TransitionKind,
};
use videosdgx_plugin_sdk::{Stitcher, host};

struct ShotStitcher;

impl Stitcher for ShotStitcher {
    fn stitch(
        storyboard: Storyboard,
        clips: Vec<GeneratedClip>,
        output_name: String,
    ) -> Result<StitchResult, PluginError> {
        let timeline = timeline(&storyboard, &clips)?;
        host::progress(0, 1, "rendering the final video");
        let output = host::media::render_timeline(&timeline, &output_name)?;
        host::progress(1, 1, "rendered");
        host::info(&format!(
            "rendered {} shots into {}",
            clips.len(),
            output.id
        ));
        Ok(StitchResult { timeline, output })
    }
}

videosdgx_plugin_sdk::export_stitcher!(ShotStitcher);

fn timeline(storyboard: &Storyboard, clips: &[GeneratedClip]) -> Result<Timeline, PluginError> {
    check_clips(storyboard, clips)?;
    let first = clips
        .first()
        .ok_or_else(|| PluginError::InvalidInput("no clips to stitch".into()))?;
    let (width, height) = (first.info.width, first.info.height);
    for clip in clips {
        if (clip.info.width, clip.info.height) != (width, height) {
            return Err(PluginError::InvalidInput(format!(
                "clip for shot `{}` is {}x{} but the first clip is {width}x{height}",
                clip.shot_id, clip.info.width, clip.info.height
            )));
        }
    }
    // Models make different rates (Wan 16 fps, LTX-2 24): the edit plays at the highest, and
    // the host shows each frame of a slower clip for as long as it lasts.
    let fps = clips
        .iter()
        .map(|c| c.info.fps)
        .max()
        .unwrap_or(first.info.fps);
    let mut items = Vec::new();
    if let Some(title) = &storyboard.opening_title {
        items.push(TimelineItem::Title(title.clone()));
    }
    let mut previous_ms: Option<u32> = None;
    for shot in &storyboard.shots {
        let clip = clips
            .iter()
            .find(|c| c.shot_id == shot.id)
            .expect("checked above");
        let duration_ms = shot.duration_ms.min(clip.info.duration_ms).max(1);
        let transition_in = fit_transition(shot.transition_in, previous_ms, duration_ms);
        items.push(TimelineItem::Clip(TimelineClip {
            asset_id: clip.asset_id.clone(),
            shot_id: shot.id.clone(),
            trim_start_ms: 0,
            duration_ms,
            transition_in,
            // The clip's sound as generated; the host mixes silence under a silent clip.
            volume: 1.0,
        }));
        previous_ms = Some(duration_ms);
    }
    if let Some(title) = &storyboard.closing_title {
        items.push(TimelineItem::Title(title.clone()));
    }
    Ok(Timeline {
        width,
        height,
        fps,
        items,
        soundtrack: None,
    })
}

/// Exactly one clip per shot, and no clip for a shot the storyboard lacks.
fn check_clips(storyboard: &Storyboard, clips: &[GeneratedClip]) -> Result<(), PluginError> {
    for shot in &storyboard.shots {
        match clips.iter().filter(|c| c.shot_id == shot.id).count() {
            0 => {
                return Err(PluginError::InvalidInput(format!(
                    "no clip was generated for shot `{}`",
                    shot.id
                )));
            }
            1 => {}
            n => {
                return Err(PluginError::InvalidInput(format!(
                    "{n} clips for shot `{}`; expected one",
                    shot.id
                )));
            }
        }
    }
    if let Some(stray) = clips
        .iter()
        .find(|c| !storyboard.shots.iter().any(|s| s.id == c.shot_id))
    {
        return Err(PluginError::InvalidInput(format!(
            "clip `{}` is for shot `{}`, which is not in the storyboard",
            stray.asset_id, stray.shot_id
        )));
    }
    Ok(())
}

/// A transition may take at most half of either clip it joins; the first clip (or one after
/// a title card) has nothing to blend with and fades in from black or cuts.
fn fit_transition(planned: Transition, previous_ms: Option<u32>, duration_ms: u32) -> Transition {
    if planned.kind == TransitionKind::Cut {
        return Transition {
            kind: TransitionKind::Cut,
            duration_ms: 0,
        };
    }
    let room = previous_ms.map_or(duration_ms / 2, |prev| prev.min(duration_ms) / 2);
    let duration_ms = planned.duration_ms.min(room);
    if duration_ms == 0 {
        return Transition {
            kind: TransitionKind::Cut,
            duration_ms: 0,
        };
    }
    let kind = if previous_ms.is_none() {
        TransitionKind::FadeThroughBlack
    } else {
        planned.kind
    };
    Transition { kind, duration_ms }
}
