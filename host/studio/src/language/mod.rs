//! The studio's language model: which installed model answers text requests, and the `chat`
//! job kind that runs one request on the GPU lane ([`job`]). The configured model is the one
//! the user chose (the `language_model` setting), else the smallest installed Qwen3 or
//! Gemma 3 by size on disk. A language model is a transformers folder under `models/`, pulled
//! or copied there. Its decoder can be quantized at load (the `language_model_quant` setting,
//! chosen with it).

pub mod job;

pub use job::{ChatAnswer, ChatRequest, ChatRunner, ChatSettings, ChatTurn, Finish};

use crate::app::App;
use crate::error::{Result, StudioError};
use crate::models::list_models;
use crate::settings;
use serde::Serialize;
use std::path::{Path, PathBuf};
use utoipa::ToSchema;
use videosdgx_engine::hub::{LocalModel, ModelKind};
use videosdgx_engine::pipelines::Quant;
use videosdgx_engine::text::model::Architecture;

const SETTING: &str = "language_model";
/// The weight format the chosen model is quantized to at load; absent: as stored.
const QUANT_SETTING: &str = "language_model_quant";
/// What the errors suggest installing.
pub const SUGGESTED: &str = "Qwen/Qwen3-4B";
/// What to install for questions about images.
pub const SUGGESTED_SEEING: &str = "google/gemma-3-4b-it";

/// Why the configured model is the one it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChosenBy {
    /// `videosdgx models use-llm` (or the API) chose it.
    Setting,
    /// Nothing was chosen: the smallest installed language model.
    Default,
}

/// The language model text requests go to.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LanguageModel {
    /// The installed model's name under `models/`, e.g. `Qwen/Qwen3-4B`.
    pub name: String,
    /// `config.json`'s architecture, e.g. `Qwen3ForCausalLM`.
    pub architecture: String,
    /// Whether it can look at images (Gemma 3 4B and larger).
    pub sees_images: bool,
    pub size_bytes: u64,
    pub chosen_by: ChosenBy,
    /// The format its decoder is quantized to at load (`fp8`, `nvfp4`); absent: as stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "nvfp4")]
    pub quant: Option<Quant>,
    #[serde(skip)]
    pub path: PathBuf,
}

impl LanguageModel {
    fn of(model: LocalModel, chosen_by: ChosenBy, quant: Option<Quant>) -> LanguageModel {
        let architecture = model.architecture.unwrap_or_default();
        LanguageModel {
            sees_images: Architecture::from_name(&architecture)
                == Some(Architecture::Gemma3ForConditionalGeneration),
            architecture,
            name: model.name,
            size_bytes: model.size_bytes,
            chosen_by,
            quant,
            path: model.path,
        }
    }

    /// Refuses requests with images unless the model sees them.
    pub fn check_sees_images(&self) -> Result<()> {
        if self.sees_images {
            return Ok(());
        }
        Err(StudioError::Invalid(format!(
            "the language model `{}` ({}) does not see images: questions about images need a \
             Gemma 3 model of 4B or more; pull one with `videosdgx models pull {SUGGESTED_SEEING}` \
             and choose it with `videosdgx models use-llm {SUGGESTED_SEEING}`",
            self.name, self.architecture
        )))
    }
}

/// The installed language models, by name.
pub fn language_models(data_dir: &Path) -> Result<Vec<LocalModel>> {
    let mut models = list_models(data_dir)?;
    models.retain(|m| m.kind == ModelKind::Language);
    Ok(models)
}

/// The model text requests go to; a clear error naming what to install when there is none.
pub fn configured(app: &App) -> Result<LanguageModel> {
    let installed = language_models(app.data_dir())?;
    if let Some(name) = settings::get(&app.db, SETTING)? {
        let quant = match settings::get(&app.db, QUANT_SETTING)? {
            Some(quant) => Some(
                serde_json::from_value(serde_json::Value::String(quant.clone())).map_err(|_| {
                    StudioError::Invalid(format!(
                        "the setting {QUANT_SETTING} holds `{quant}`, not fp8 or nvfp4; choose \
                         again with `videosdgx models use-llm {name}`"
                    ))
                })?,
            ),
            None => None,
        };
        return match installed.into_iter().find(|m| m.name == name) {
            Some(model) => Ok(LanguageModel::of(model, ChosenBy::Setting, quant)),
            None => Err(StudioError::Invalid(format!(
                "the chosen language model `{name}` is no longer installed; pull it again with \
                 `videosdgx models pull {name}` or choose another with `videosdgx models use-llm NAME`"
            ))),
        };
    }
    installed
        .into_iter()
        .min_by_key(|m| (m.size_bytes, m.name.clone()))
        .map(|model| LanguageModel::of(model, ChosenBy::Default, None))
        .ok_or_else(|| {
            StudioError::Invalid(format!(
                "no language model is installed; pull one with `videosdgx models pull {SUGGESTED}` \
                 (or copy a Qwen3 or Gemma 3 folder into {})",
                crate::models::models_dir(app.data_dir()).display()
            ))
        })
}

/// Makes installed language model `name` the configured one, its decoder quantized to `quant`
/// at load (as stored when `None`).
pub fn choose(app: &App, name: &str, quant: Option<Quant>) -> Result<LanguageModel> {
    let all = list_models(app.data_dir())?;
    let Some(model) = all.iter().find(|m| m.name == name) else {
        let installed: Vec<&str> = all
            .iter()
            .filter(|m| m.kind == ModelKind::Language)
            .map(|m| m.name.as_str())
            .collect();
        return Err(StudioError::Invalid(format!(
            "`{name}` is not an installed model (installed language models: {}); pull it with \
             `videosdgx models pull {name}`",
            if installed.is_empty() {
                "none".to_string()
            } else {
                installed.join(", ")
            }
        )));
    };
    if model.kind != ModelKind::Language {
        return Err(StudioError::Invalid(format!(
            "`{name}` is not a language model (its folder has no config.json naming one of {})",
            Architecture::KNOWN.join(", ")
        )));
    }
    let quant_value = quant
        .map(|q| serde_json::to_value(q).map_err(anyhow::Error::from))
        .transpose()?;
    settings::set_all(
        &app.db,
        &[
            (SETTING, Some(name)),
            (QUANT_SETTING, quant_value.as_ref().and_then(|v| v.as_str())),
        ],
    )?;
    tracing::info!(model = name, ?quant, "language model chosen");
    Ok(LanguageModel::of(model.clone(), ChosenBy::Setting, quant))
}
