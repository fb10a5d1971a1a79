//! `videosdgx models`: pull diffusers pipelines and language models from the Hugging Face hub
//! into the data directory, list what is installed, choose the studio's language model, and
//! verify a folder's tensors against its configs.

use anyhow::Result;
use clap::Subcommand;
use std::io::Write;
use std::path::PathBuf;
use videosdgx_engine::hub::{self, LocalModel, ModelKind, PullProgress};
use videosdgx_engine::pipelines::{Output, References, StartImage};
use videosdgx_studio::StudioConfig;
use videosdgx_studio::finishing::{self, FinishingKind, FinishingModel};
use videosdgx_studio::language::{self, ChosenBy};
use videosdgx_studio::models::Role;

/// The finishing models (upscalers, RIFE) under `models/finishing/`, and what to install when
/// one kind is missing.
fn print_finishing(data: &std::path::Path, models: &[FinishingModel]) {
    println!(
        "finishing models ({}):",
        finishing::finishing_dir(data).display()
    );
    for model in models {
        let what = match model.kind {
            FinishingKind::Upscaler => format!(
                "upscaler\t{} x{}",
                model.architecture.as_deref().unwrap_or("-"),
                model.scale.unwrap_or(1)
            ),
            FinishingKind::Interpolator => format!(
                "interpolator\tRIFE {}",
                model.version.as_deref().unwrap_or("-")
            ),
            FinishingKind::Unusable => {
                format!("unusable\t{}", model.error.as_deref().unwrap_or("-"))
            }
        };
        println!("  {}\t{what}\t{}", model.file, human_size(model.size_bytes));
    }
    if !models.iter().any(|m| m.kind == FinishingKind::Upscaler) {
        println!("  {}", finishing::NO_UPSCALER);
    }
    if !models.iter().any(|m| m.kind == FinishingKind::Interpolator) {
        println!("  {}", finishing::NO_INTERPOLATOR);
    }
}

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// Download a pipeline or language model repository (resumable) into
    /// <data>/models/<repo-id>. Honours HF_ENDPOINT and HF_TOKEN.
    Pull {
        /// Repository id, e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers or Qwen/Qwen3-4B.
        repo_id: String,
        /// Branch, tag or commit (default: main).
        #[arg(long)]
        revision: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List installed models with their kinds, sizes and classes, the language model the
    /// studio uses, and the finishing models (upscalers, RIFE) in <data>/models/finishing.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Choose the installed language model that answers the studio's text requests (kept in
    /// the studio's settings; default: the smallest installed Qwen3 or Gemma 3).
    UseLlm {
        /// An installed language model's name, as `models list` shows it.
        name: String,
        /// Keep its decoder layers' projections in this format, quantized when it loads (fp8:
        /// about half the memory of bf16, nvfp4: 0.28×); as stored without it.
        #[arg(long, value_enum)]
        quant: Option<super::model::QuantArg>,
    },
    /// Check every tensor of a pipeline or component folder against its config
    /// (names, shapes, dtypes); exits non-zero when anything is wrong.
    Verify {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// What a pipeline takes and makes, for `models list`.
fn takes(model: &LocalModel) -> String {
    let Some(capabilities) = model.capabilities else {
        return "not supported by this engine".into();
    };
    match (capabilities.output, capabilities.start_image) {
        (Output::Image, _) => match capabilities.references {
            References::Optional => "text, reference images -> image".into(),
            References::EditOne => "image to edit, text -> image".into(),
            References::Unsupported => "text -> image".into(),
        },
        (Output::Video { fps }, StartImage::Required) => {
            format!("start image, text -> video ({fps} fps)")
        }
        (Output::Video { fps }, StartImage::Optional) => {
            format!("text, optional start image -> video ({fps} fps)")
        }
        (Output::Video { fps }, StartImage::Unsupported) => format!("text -> video ({fps} fps)"),
    }
}

pub fn run(command: ModelsCommand, data: PathBuf) -> Result<()> {
    let models_dir = data.join("models");
    match command {
        ModelsCommand::Pull {
            repo_id,
            revision,
            json,
        } => {
            let mut reporter = PullReporter::default();
            let dir = hub::pull(&repo_id, revision.as_deref(), &models_dir, &mut |p| {
                reporter.update(p)
            })?;
            if json {
                println!("{}", serde_json::json!({ "repo_id": repo_id, "path": dir }));
            } else {
                println!("{}", dir.display());
            }
        }
        ModelsCommand::List { json } => {
            let app = super::open(StudioConfig::new(data.clone()))?;
            let models = hub::list(&models_dir)?;
            // No language model installed is not an error when listing.
            let language = language::configured(&app).ok();
            let finishing_models = finishing::list_finishing_models(&data)?;
            if json {
                let listing = serde_json::json!({
                    "models": models,
                    "language_model": language,
                    "finishing": finishing_models,
                });
                println!("{}", serde_json::to_string_pretty(&listing)?);
            } else if models.is_empty() {
                println!(
                    "no models in {} (try `videosdgx models pull REPO_ID`)",
                    models_dir.display()
                );
            } else {
                for model in &models {
                    let role = Role::of(model);
                    let (class, details) = match model.kind {
                        ModelKind::Pipeline => {
                            (model.pipeline_class.as_deref().unwrap_or("-"), takes(model))
                        }
                        ModelKind::Language => {
                            (model.architecture.as_deref().unwrap_or("-"), String::new())
                        }
                        ModelKind::Other => ("-", String::new()),
                    };
                    println!(
                        "{}\t{}\t{}\t{class}\t{details}",
                        model.name,
                        role.name(),
                        human_size(model.size_bytes)
                    );
                }
                match &language {
                    Some(chosen) => println!(
                        "language model: {}{} ({})",
                        chosen.name,
                        chosen
                            .quant
                            .map(|quant| format!(", weights in {quant}"))
                            .unwrap_or_default(),
                        match chosen.chosen_by {
                            ChosenBy::Setting => "chosen with `models use-llm`",
                            ChosenBy::Default =>
                                "the smallest installed; choose with `models use-llm`",
                        }
                    ),
                    None => println!(
                        "language model: none installed (try `videosdgx models pull {}`)",
                        language::SUGGESTED
                    ),
                }
            }
            if !json {
                print_finishing(&data, &finishing_models);
            }
        }
        ModelsCommand::UseLlm { name, quant } => {
            let chosen = language::choose(
                &super::open(StudioConfig::new(data))?,
                &name,
                quant.map(Into::into),
            )?;
            match chosen.quant {
                Some(quant) => println!(
                    "language model: {} ({}), weights in {quant}",
                    chosen.name, chosen.architecture
                ),
                None => println!("language model: {} ({})", chosen.name, chosen.architecture),
            }
        }
        ModelsCommand::Verify { dir, json } => {
            let report = videosdgx_engine::loader::verify(&dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for component in &report.components {
                    let status = if component.is_ok() { "ok" } else { "FAILED" };
                    println!(
                        "{}\t{}\t{} tensors\t{status}",
                        component.name, component.class_name, component.tensors
                    );
                    for problem in component
                        .missing
                        .iter()
                        .map(|t| format!("missing {t}"))
                        .chain(
                            component
                                .unexpected
                                .iter()
                                .map(|t| format!("unexpected {t}")),
                        )
                    {
                        println!("  {problem}");
                    }
                    for mismatch in &component.shape_mismatches {
                        println!(
                            "  {} in {}: expected {:?}, found {:?}",
                            mismatch.tensor,
                            mismatch.file.display(),
                            mismatch.expected,
                            mismatch.found
                        );
                    }
                    for problem in component.bad_dtypes.iter().chain(&component.errors) {
                        println!("  {problem}");
                    }
                }
            }
            anyhow::ensure!(report.is_ok(), "{} failed verification", dir.display());
        }
    }
    Ok(())
}

/// One stderr line per file, updated in place at most every percent.
#[derive(Default)]
struct PullReporter {
    shown: Option<(PathBuf, u64)>,
}

impl PullReporter {
    fn update(&mut self, progress: &PullProgress) {
        let percent = (progress.bytes * 100)
            .checked_div(progress.file_size)
            .unwrap_or(100);
        let key = (PathBuf::from(progress.file), percent);
        if self.shown.as_ref() == Some(&key) {
            return;
        }
        self.shown = Some(key);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r[{}/{}] {} {percent:>3}% of {}",
            progress.file_index + 1,
            progress.files,
            progress.file,
            human_size(progress.file_size)
        );
        if progress.bytes >= progress.file_size {
            let _ = writeln!(err);
        }
    }
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
