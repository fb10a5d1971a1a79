//! `videosdgx render SCRIPT.md` (or `--brief "..."`): a screenplay or a brief to a finished MP4
//! without the web UI: plan, expand, shoot every shot (generate, review, regenerate), stitch,
//! each a job on the studio's queue, run in this process. Progress goes to stderr, the report to
//! stdout; Ctrl-C cancels the running job.

use anyhow::Context;
use clap::Args;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use videosdgx_engine::finishing::finish::FinishTarget;
use videosdgx_studio::App;
use videosdgx_studio::generation::RenderSettings;
use videosdgx_studio::render::{RenderReport, RenderRequest, render};

#[derive(Args, Debug)]
pub struct RenderArgs {
    /// The Markdown screenplay, or a folder holding `script.md` (as in projects/).
    #[arg(required_unless_present = "brief", conflicts_with = "brief")]
    pub script: Option<PathBuf>,
    /// A brief instead of a screenplay ("a 30-second ad for headphones, two scenes, one
    /// character"): the planner writes the screenplay with the language model.
    #[arg(long)]
    pub brief: Option<String>,
    /// Takes per shot at most when the reviewer asks for another (the project's limit, 1 to
    /// 10; default 3).
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// The project to add the storyboard to (created if missing); default: the script's title.
    #[arg(long)]
    pub project: Option<String>,
    /// Where to write the final video; default: `<script name>.mp4` in the current folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// An installed model's name (`videosdgx models list`); default: the only one installed.
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, default_value_t = RenderSettings::default().height)]
    pub height: usize,
    #[arg(long, default_value_t = RenderSettings::default().width)]
    pub width: usize,
    /// Denoising steps per shot.
    #[arg(long, default_value_t = RenderSettings::default().steps)]
    pub steps: usize,
    /// Classifier-free guidance scale (off at 1 or below).
    #[arg(long, default_value_t = RenderSettings::default().guidance)]
    pub guidance: f64,
    /// A distilled model's schedule (`wan2.1-distill-4step`, `wan2.2-distill-4step`): sets the
    /// steps, shift and guidance, in place of --steps and --guidance.
    #[arg(long)]
    pub preset: Option<String>,
    /// Step caching for every shot, `METHOD[:THRESHOLD]`: `teacache`, `magcache` or `easycache`
    /// (docs/generation.md, "Step caching").
    #[arg(long)]
    pub cache: Option<String>,
    /// Keep every shot's transformer block weights in this format (`fp8`: about half the
    /// memory; docs/generation.md, "FP8 weights").
    #[arg(long, value_enum)]
    pub quant: Option<super::model::QuantArg>,
    /// The video model's self-attention in float8 (Wan on Hopper GPUs; the 14B forward's output
    /// moves about 1%).
    #[arg(long, value_enum, default_value_t = super::model::AttentionArg::Exact)]
    pub attention: super::model::AttentionArg,
    /// Split each shot's generation across this many of the studio's cards (`--gpus`), which
    /// it takes at once (docs/ARCHITECTURE.md, "Cards and residency").
    #[arg(long, default_value_t = RenderSettings::default().split_cards)]
    pub split_cards: usize,
    /// With --split-cards, half of the cards compute the unconditional guidance branch (Wan
    /// models with guidance above 1; an even --split-cards).
    #[arg(long)]
    pub cfg_parallel: bool,
    /// The installed image model that makes the character looks and keyframes (when the project
    /// uses keyframes); default: FLUX.2 [klein] when installed.
    #[arg(long)]
    pub image_model: Option<String>,
    /// Finish the stitched piece before writing it: a size and/or frame rate such as `4k24`,
    /// `1080p30`, `x2` or `1920x1080@24` (upscaled and interpolated with the models in
    /// DATA/models/finishing/; docs/finishing.md).
    #[arg(long)]
    pub finish: Option<FinishTarget>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(app: App, args: RenderArgs) -> anyhow::Result<()> {
    let (script, out) = match (&args.script, &args.brief) {
        (Some(script), _) => {
            let path = if script.is_dir() {
                script.join("script.md")
            } else {
                script.clone()
            };
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading the script {}", path.display()))?;
            let stem = if script.is_dir() {
                script.file_name()
            } else {
                script.file_stem()
            };
            let out =
                PathBuf::from(stem.unwrap_or_else(|| "render".as_ref())).with_extension("mp4");
            (text, out)
        }
        (None, Some(brief)) => (brief.clone(), PathBuf::from("render.mp4")),
        (None, None) => anyhow::bail!("give a screenplay or --brief"),
    };
    let out = args.out.unwrap_or(out);
    let request = RenderRequest {
        script,
        project: args.project,
        model: args.model,
        render: RenderSettings {
            height: args.height,
            width: args.width,
            steps: args.steps,
            guidance: args.guidance,
            preset: args.preset,
            cache: args.cache,
            quant: args.quant.map(Into::into),
            attention: args.attention.into(),
            split_cards: args.split_cards,
            cfg_parallel: args.cfg_parallel,
            image_model: args.image_model,
        },
        max_attempts: args.max_attempts,
        out,
        finish: args.finish,
    };
    let app = Arc::new(app);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = runtime.block_on(async {
        let interrupted = Arc::new(AtomicBool::new(false));
        tokio::spawn(stop_on_ctrl_c(interrupted.clone()));
        let mut last = String::new();
        render(&app, &request, &mut |stage, step, total| {
            let line = format!("{stage} {step}/{total}");
            if line != last {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{line}");
                last = line;
            }
            if interrupted.load(Ordering::Relaxed) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", summary(&report));
    }
    Ok(())
}

/// The first Ctrl-C cancels the running job (the render then ends with an error, the job
/// recorded as cancelled); a second one quits at once.
async fn stop_on_ctrl_c(interrupted: Arc<AtomicBool>) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    let _ = writeln!(
        std::io::stderr(),
        "stopping: cancelling the running job (Ctrl-C again to quit at once)"
    );
    interrupted.store(true, Ordering::Relaxed);
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(130);
    }
}

fn summary(r: &RenderReport) -> String {
    let mut text = format!(
        "rendered \"{}\": {} shots, {} frames ({:.1} s at {} fps, {}x{})\n",
        r.title,
        r.shots.len(),
        r.frames,
        r.duration_s,
        r.fps,
        r.width,
        r.height
    );
    for made in &r.looks {
        text.push_str(&format!(
            "  look of {}: asset {}, generation {}\n",
            made.look.character_id, made.look.asset_id, made.generation_id
        ));
    }
    for (i, shot) in r.shots.iter().enumerate() {
        text.push_str(&format!(
            "  shot {}: {} frames, seed {}, asset {}, generation {}, job {}\n",
            i + 1,
            shot.frames,
            shot.seed,
            shot.asset_id,
            shot.generation_id,
            shot.job_id
        ));
        if let Some(keyframe) = &shot.keyframe {
            text.push_str(&format!(
                "    started from keyframe asset {} (generation {})\n",
                keyframe.asset_id, keyframe.generation_id
            ));
        }
        for attempt in shot.attempts.iter().filter(|a| a.review.is_some()) {
            let review = attempt.review.as_ref().expect("filtered");
            text.push_str(&format!(
                "    take {} (seed {}): {} {:.2}: {}\n",
                attempt.attempt, attempt.seed, review.verdict, review.score, review.reasons
            ));
        }
        if let Some(why) = &shot.attention {
            text.push_str(&format!("    needs your attention: {why}\n"));
        }
        if let Some(note) = &shot.review_note {
            text.push_str(&format!("    note: {note}\n"));
        }
    }
    for note in r.review_note.iter().chain(&r.keyframes_note) {
        text.push_str(&format!("note: {note}\n"));
    }
    if let Some(finish) = &r.finish {
        text.push_str(&format!(
            "finished to {} ({}x{} at {} fps, {} frames) from asset {}\n",
            finish.target,
            finish.width,
            finish.height,
            finish.fps,
            finish.frames,
            finish.source_asset_id
        ));
    }
    text.push_str(&format!(
        "project {}, storyboard {}, final asset {}\nwrote {}",
        r.project_id,
        r.storyboard_id,
        r.asset_id,
        r.out.display()
    ));
    text
}
