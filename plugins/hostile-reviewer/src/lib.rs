//! A deliberately misbehaving reviewer for the host's tests. The first word of the prompt picks
//! the misbehaviour; each one must end with a clear error (or a refused review) while the host
//! keeps serving and loses nothing. Never install this outside tests.

use std::hint::black_box;
use videosdgx_plugin_sdk::types::{
    PluginError, Shot, ShotPrompt, Storyboard, Take, TakeReview, Verdict,
};
use videosdgx_plugin_sdk::{Reviewer, host};

struct HostileReviewer;

impl Reviewer for HostileReviewer {
    fn review(
        _shot: Shot,
        prompt: ShotPrompt,
        take: Take,
        _storyboard: Storyboard,
    ) -> Result<TakeReview, PluginError> {
        match prompt.prompt.split_whitespace().next().unwrap_or("") {
            // Never returns: the fuel and guest-time limits must end it.
            "loop" => {
                let mut x = 0u64;
                loop {
                    x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            // A 100 MB reason: inside the plugin's memory cap, far over what a review may hold.
            "huge-reason" => Ok(review(Verdict::Accept, 0.5, "x".repeat(100 << 20))),
            // Asks the vision model without the `vision` grant: the host must deny it.
            "vision-ungranted" => {
                host::vision::describe(&take.asset_id, "what is in this take?")?;
                Err(PluginError::Failed(
                    "vision.describe ran without the `vision` grant".into(),
                ))
            }
            "nan-score" => Ok(review(Verdict::Accept, f32::NAN, "no idea".into())),
            // Never satisfied: the host's attempt limit must end the loop.
            "always-retry" => Ok(TakeReview {
                revised_prompt: Some(format!("always-retry attempt {}", take.attempt + 1)),
                ..review(
                    Verdict::Retry,
                    0.1 * take.attempt as f32,
                    "never good enough".into(),
                )
            }),
            other => Err(PluginError::InvalidInput(format!(
                "unknown misbehaviour `{other}`"
            ))),
        }
    }
}

videosdgx_plugin_sdk::export_reviewer!(HostileReviewer);

fn review(verdict: Verdict, score: f32, reasons: String) -> TakeReview {
    TakeReview {
        verdict,
        score,
        reasons,
        revised_prompt: None,
        revised_negative_prompt: None,
    }
}
