//! The review loop, what the `shoot` job runs for one shot: generate a take (a `generate` job
//! on the GPU lane), have the reviewer plugin judge it with the vision model, and while it asks
//! for another, generate again with its revised prompt and a new seed, up to the project's
//! attempt limit. Every take is kept with its review (a review never deletes anything); the
//! best-scoring take becomes the chosen one unless the user chose one; a shot whose every
//! attempt failed review is marked for the user's attention. Without an enabled reviewer, or
//! without a language model that sees images, the shot is generated once and the result says
//! why it went unreviewed.

use crate::app::App;
use crate::error::{Result, StudioError};
use crate::generation::{GenerateShot, RenderSettings};
use crate::jobs::steps::{Progress, run_step, step_result};
use crate::jobs::{JobContext, JobRunner, Lane, NewJob};
use crate::language;
use crate::plugins::calls::{self, TakeToReview};
use crate::plugins::registry;
use crate::projects::{get_project, get_storyboard};
use crate::shots::{self, NewReview, Review};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;
use utoipa::ToSchema;
use videosdgx_engine::pipelines::GenerateParams;
use videosdgx_plugin_host::World;
use videosdgx_plugin_host::types::Verdict;

/// Parameters of a `shoot` job.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShootShot {
    pub shot_id: i64,
    #[serde(default)]
    pub render: RenderSettings,
    /// The reviewer plugin; the only enabled one (or the first-party `reviewer`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewer: Option<String>,
    /// Every attempt starts from the last frame of the previous shot's take
    /// ([`GenerateShot::continue_previous`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_previous: bool,
}

/// One generated take of the loop.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    pub attempt: u32,
    pub job_id: i64,
    pub take_id: i64,
    pub asset_id: i64,
    pub generation_id: i64,
    pub seed: u64,
    pub frames: usize,
    pub prompt: String,
    pub negative_prompt: String,
    pub review: Option<Review>,
}

/// What a `shoot` job returns.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ShootOutcome {
    pub shot_id: i64,
    pub attempts: Vec<Attempt>,
    pub chosen_take_id: Option<i64>,
    /// Why the shot needs the user's attention (every attempt failed review).
    pub attention: Option<String>,
    /// Why the takes went unreviewed, or how the review ended early.
    pub review_note: Option<String>,
}

/// What a `generate` job returns.
#[derive(Deserialize)]
struct Generated {
    take_id: i64,
    asset_id: i64,
    generation_id: i64,
    params: GenerateParams,
}

/// Why takes cannot be reviewed now, if they cannot: no enabled reviewer, or no language model
/// that sees images.
pub fn reviews_off(app: &App, reviewer: Option<&str>) -> Option<String> {
    if let Err(e) = registry::choose(&app.db, World::Reviewer, reviewer) {
        return Some(format!("reviews are off: {e}"));
    }
    match language::configured(app).and_then(|m| m.check_sees_images()) {
        Ok(()) => None,
        Err(e) => Some(format!("reviews are off: {e}")),
    }
}

/// Runs the loop for one shot; `progress` hears `attempt i/n: ...` stages.
pub fn shoot(
    app: &Arc<App>,
    job_id: Option<i64>,
    params: &ShootShot,
    progress: Progress<'_>,
) -> Result<ShootOutcome> {
    let shot = shots::get_shot(&app.db, params.shot_id)?;
    let project = get_project(
        &app.db,
        get_storyboard(&app.db, shot.storyboard_id)?.project_id,
    )?;
    let off = reviews_off(app, params.reviewer.as_deref());
    let reviewer = match off {
        None => Some(registry::choose(
            &app.db,
            World::Reviewer,
            params.reviewer.as_deref(),
        )?),
        Some(_) => None,
    };
    let limit = if reviewer.is_some() {
        project.max_attempts
    } else {
        1
    };
    let mut next = GenerateShot {
        shot_id: shot.id,
        render: params.render.clone(),
        prompt: None,
        negative_prompt: None,
        seed: shot.seed,
        continue_previous: params.continue_previous,
    };
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut review_note = off;
    for attempt in 1..=limit {
        let label = format!("attempt {attempt}/{limit}");
        let new = NewJob {
            kind: "generate".into(),
            params: serde_json::to_value(&next).map_err(anyhow::Error::from)?,
            max_attempts: None,
            project_id: Some(project.id),
        };
        let what = format!("{label}: generating");
        let done = block_on(run_step(app, new, &what, progress))??;
        let job_id_of_take = done.id;
        let generated: Generated = step_result(done)?;
        let mut taken = Attempt {
            attempt,
            job_id: job_id_of_take,
            take_id: generated.take_id,
            asset_id: generated.asset_id,
            generation_id: generated.generation_id,
            seed: generated.params.seed,
            frames: generated.params.frames,
            prompt: generated.params.prompt.clone(),
            negative_prompt: generated.params.negative_prompt.clone(),
            review: None,
        };
        let Some(reviewer) = &reviewer else {
            attempts.push(taken);
            break;
        };
        let take = TakeToReview {
            shot_id: shot.id,
            asset_id: taken.asset_id,
            seed: taken.seed,
            attempt,
            prompt: taken.prompt.clone(),
            negative_prompt: taken.negative_prompt.clone(),
        };
        let mut stopped = false;
        let verdict = calls::review(
            app,
            job_id,
            reviewer,
            &take,
            &params.render,
            &mut |s, i, n| {
                let flow = progress(&format!("{label}: {s}"), i, n);
                stopped |= flow.is_break();
                flow
            },
        );
        let verdict = match verdict {
            Ok(verdict) => verdict,
            Err(e) if stopped => return Err(e),
            // The take is kept; a broken reviewer ends the loop, not the shot's work.
            Err(e) => {
                review_note = Some(format!("the take was kept unreviewed: {e}"));
                attempts.push(taken);
                break;
            }
        };
        let accept = verdict.verdict == Verdict::Accept;
        taken.review = Some(shots::add_review(
            &app.db,
            &NewReview {
                take_id: taken.take_id,
                plugin_id: reviewer.clone(),
                accept,
                score: f64::from(verdict.score),
                reasons: verdict.reasons,
                revised_prompt: verdict.revised_prompt.clone(),
                revised_negative_prompt: verdict.revised_negative_prompt.clone(),
                attempt,
            },
        )?);
        next.prompt = Some(verdict.revised_prompt.unwrap_or(taken.prompt.clone()));
        next.negative_prompt = Some(
            verdict
                .revised_negative_prompt
                .unwrap_or(taken.negative_prompt.clone()),
        );
        next.seed = Some(next_seed(taken.seed));
        attempts.push(taken);
        if accept {
            break;
        }
    }
    let (best, attention) = settle(&attempts);
    let shot = shots::settle(&app.db, shot.id, best, attention.as_deref())?;
    Ok(ShootOutcome {
        shot_id: shot.id,
        attempts,
        chosen_take_id: shot.chosen_take_id,
        attention: shot.attention,
        review_note,
    })
}

/// The take to choose (the accepted one, else the best score, the earliest among equals) and,
/// when no attempt was accepted, why the shot needs attention. Unreviewed takes leave the
/// choice to the generation's own rule (the first take of a shot).
fn settle(attempts: &[Attempt]) -> (Option<i64>, Option<String>) {
    let reviewed: Vec<(&Attempt, &Review)> = attempts
        .iter()
        .filter_map(|a| a.review.as_ref().map(|r| (a, r)))
        .collect();
    if let Some((accepted, _)) = reviewed.iter().find(|(_, r)| r.verdict == "accept") {
        return (Some(accepted.take_id), None);
    }
    let best = reviewed
        .iter()
        .fold(None::<(&Attempt, &Review)>, |best, &(a, r)| match best {
            Some((_, b)) if b.score >= r.score => best,
            _ => Some((a, r)),
        });
    match best {
        None => (None, None),
        Some((attempt, review)) => (
            Some(attempt.take_id),
            Some(format!(
                "{} failed review; the best (attempt {}, score {:.2}) is chosen for now: {}",
                match reviewed.len() {
                    1 => "The only take".to_string(),
                    n => format!("All {n} takes"),
                },
                attempt.attempt,
                review.score,
                review.reasons
            )),
        ),
    }
}

/// The seed of the next attempt: another image, the same on every run of the loop.
fn next_seed(seed: u64) -> u64 {
    // Below 2^53, as drawn seeds are (JSON clients read them exactly).
    seed.wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        >> 11
}

/// Runs `future` to its end on a runtime of its own: the job runs on a blocking thread, and
/// the plugin calls between steps start runtimes of their own, so none may be entered here.
pub(crate) fn block_on<F: Future>(future: F) -> Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future))
}

/// `shoot`: generate, review and regenerate one shot (CPU lane; its generations are `generate`
/// jobs on the GPU lane, its reviews `chat` jobs there).
pub struct ShootRunner;

impl ShootRunner {
    fn parse(params: &Value) -> Result<ShootShot> {
        serde_json::from_value(params.clone())
            .map_err(|e| StudioError::Invalid(format!("parameters of a shoot job: {e}")))
    }
}

impl JobRunner for ShootRunner {
    fn kind(&self) -> &'static str {
        "shoot"
    }
    fn lane(&self) -> Lane {
        Lane::Cpu
    }
    fn default_attempts(&self) -> u32 {
        1
    }
    fn check(&self, app: &App, params: &Value) -> Result<()> {
        let p = Self::parse(params)?;
        if let Some(id) = &p.reviewer {
            registry::choose(&app.db, World::Reviewer, Some(id))?;
        }
        p.render.check()?;
        GenerateShot {
            shot_id: p.shot_id,
            render: p.render,
            ..Default::default()
        }
        .check_runnable(app)
    }
    fn run(&self, _app: &App, ctx: &JobContext, params: &Value) -> Result<Value> {
        let p = Self::parse(params)?;
        let outcome = shoot(&ctx.app(), Some(ctx.job_id()), &p, &mut |s, i, n| {
            ctx.progress(s, i, n)
        })?;
        Ok(serde_json::to_value(outcome).map_err(anyhow::Error::from)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(n: u32, verdict: &str, score: f64) -> Attempt {
        Attempt {
            attempt: n,
            job_id: n.into(),
            take_id: 100 + i64::from(n),
            asset_id: 0,
            generation_id: 0,
            seed: 0,
            frames: 5,
            prompt: String::new(),
            negative_prompt: String::new(),
            review: Some(Review {
                id: n.into(),
                take_id: 100 + i64::from(n),
                plugin_id: "reviewer".into(),
                verdict: verdict.into(),
                score,
                reasons: format!("reasons {n}"),
                revised_prompt: None,
                revised_negative_prompt: None,
                attempt: n,
                created_at: String::new(),
            }),
        }
    }

    #[test]
    fn the_accepted_take_is_chosen_and_needs_no_attention() {
        let attempts = [attempt(1, "retry", 0.9), attempt(2, "accept", 0.7)];
        assert_eq!(settle(&attempts), (Some(102), None));
    }

    #[test]
    fn without_an_accepted_take_the_best_score_is_chosen_and_the_shot_flagged() {
        let attempts = [
            attempt(1, "retry", 0.2),
            attempt(2, "retry", 0.5),
            attempt(3, "retry", 0.5),
        ];
        let (chosen, attention) = settle(&attempts);
        assert_eq!(chosen, Some(102));
        assert_eq!(
            attention.as_deref(),
            Some(
                "All 3 takes failed review; the best (attempt 2, score 0.50) is chosen for now: \
                 reasons 2"
            )
        );
    }

    #[test]
    fn unreviewed_takes_leave_the_choice_alone() {
        let mut only = attempt(1, "retry", 0.0);
        only.review = None;
        assert_eq!(settle(&[only]), (None, None));
    }

    #[test]
    fn next_seeds_differ_stay_json_safe_and_repeat() {
        let seeds: Vec<u64> = std::iter::successors(Some(7u64), |s| Some(next_seed(*s)))
            .take(5)
            .collect();
        assert_eq!(seeds, {
            let again: Vec<u64> = std::iter::successors(Some(7u64), |s| Some(next_seed(*s)))
                .take(5)
                .collect();
            again
        });
        let mut unique = seeds.clone();
        unique.dedup();
        assert_eq!(unique.len(), 5);
        assert!(seeds.iter().all(|&s| s < 1 << 53));
    }
}
