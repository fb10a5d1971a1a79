//! Which installed model does what. Models live under `<data>/models/` (`models pull`, or
//! folders copied there); the engine tells from their configs alone what a pipeline makes and
//! takes (`Pipeline::inspect`), so a model's kind decides where it may be used: a shot's
//! `model` names a video model, keyframes and character looks use an image model, text requests
//! the language model.

use crate::error::{Result, StudioError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use utoipa::ToSchema;
use videosdgx_engine::hub::{self, LocalModel, ModelKind};
use videosdgx_engine::pipelines::{Output, References, StartImage};

/// Where pulled and copied model directories live, under the data directory.
pub fn models_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("models")
}

/// The installed models, of every kind.
pub fn list_models(data_dir: &Path) -> Result<Vec<LocalModel>> {
    Ok(hub::list(&models_dir(data_dir))?)
}

/// What a model is for, as the studio shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A pipeline that makes videos: what a shot's `model` names.
    Video,
    /// A pipeline that makes stills: keyframes, character looks, plugins' `generation.image`.
    Image,
    /// A language model: the studio's text and vision requests.
    Language,
    /// A pipeline the engine cannot run, or a folder that is no model.
    Other,
}

impl Role {
    pub fn of(model: &LocalModel) -> Role {
        match (model.kind, model.capabilities.map(|c| c.output)) {
            (ModelKind::Pipeline, Some(Output::Video { .. })) => Role::Video,
            (ModelKind::Pipeline, Some(Output::Image)) => Role::Image,
            (ModelKind::Language, _) => Role::Language,
            _ => Role::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Video => "video",
            Role::Image => "image",
            Role::Language => "language",
            Role::Other => "other",
        }
    }
}

fn models_of(data_dir: &Path, role: Role) -> Result<Vec<LocalModel>> {
    let mut models = list_models(data_dir)?;
    models.retain(|m| Role::of(m) == role);
    Ok(models)
}

/// The installed models that generate video: what a shot's `model` may name.
pub fn video_models(data_dir: &Path) -> Result<Vec<LocalModel>> {
    models_of(data_dir, Role::Video)
}

/// The installed models that generate images.
pub fn image_models(data_dir: &Path) -> Result<Vec<LocalModel>> {
    models_of(data_dir, Role::Image)
}

/// The directory of installed video model `name`.
pub fn video_model_dir(data_dir: &Path, name: &str) -> Result<PathBuf> {
    let models = video_models(data_dir)?;
    if let Some(model) = models.iter().find(|m| m.name == name) {
        return Ok(model.path.clone());
    }
    let installed: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    Err(StudioError::Invalid(format!(
        "model `{name}` is not installed (installed: {}); pull it with `videosdgx models pull {name}`",
        if installed.is_empty() {
            "none".to_string()
        } else {
            installed.join(", ")
        }
    )))
}

/// The video model a generation of `wanted` would use: `wanted` when it is installed, else the
/// only installed video model. For callers that refuse before queueing work (`render`).
pub fn resolve_model(data_dir: &Path, wanted: Option<&str>) -> Result<String> {
    match wanted.filter(|m| !m.is_empty()) {
        Some(name) => video_model_dir(data_dir, name).map(|_| name.to_string()),
        None => only_video_model(data_dir, "no model was named and"),
    }
}

/// The one installed video model; `why` starts the error when several are.
pub fn only_video_model(data_dir: &Path, why: &str) -> Result<String> {
    match video_models(data_dir)?.as_slice() {
        [only] => Ok(only.name.clone()),
        [] => Err(StudioError::Invalid(
            "no video model is installed; pull one with `videosdgx models pull Wan-AI/Wan2.1-T2V-1.3B-Diffusers`"
                .into(),
        )),
        several => Err(StudioError::Invalid(format!(
            "{why} several are installed ({}): choose one",
            several
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// What to install when no image model is.
pub const NO_IMAGE_MODEL: &str = "no image model is installed; pull one with `videosdgx models pull black-forest-labs/FLUX.2-klein-4B`";

/// The image model keyframes, looks and plugins' images use: `wanted` when given, else FLUX.2
/// [klein] when one is installed (distilled for few steps, made for reference editing), else the
/// first by name that generates from text alone (FLUX.1 Kontext only edits an image).
pub fn image_model(data_dir: &Path, wanted: Option<&str>) -> Result<LocalModel> {
    let models = image_models(data_dir)?;
    if let Some(name) = wanted.filter(|n| !n.is_empty()) {
        return models
            .iter()
            .find(|m| m.name == name)
            .cloned()
            .ok_or_else(|| {
                let installed: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
                StudioError::Invalid(format!(
                    "image model `{name}` is not installed (image models installed: {})",
                    if installed.is_empty() {
                        "none".to_string()
                    } else {
                        installed.join(", ")
                    }
                ))
            });
    }
    let klein = models
        .iter()
        .position(|m| m.pipeline_class.as_deref() == Some("Flux2KleinPipeline"));
    let from_text = models.iter().position(|m| {
        m.capabilities
            .is_none_or(|c| c.references != References::EditOne)
    });
    match klein.or(from_text).or((!models.is_empty()).then_some(0)) {
        Some(index) => Ok(models[index].clone()),
        None => Err(StudioError::Invalid(NO_IMAGE_MODEL.into())),
    }
}

/// Whether a video model may start from a keyframe.
pub fn takes_start_image(model: &LocalModel) -> bool {
    model
        .capabilities
        .is_some_and(|c| c.start_image != StartImage::Unsupported)
}

/// Whether keyframes can be made and used: an image model and an image-to-video model are
/// installed. A project's keyframes setting defaults to this.
pub fn keyframes_possible(data_dir: &Path) -> Result<bool> {
    Ok(
        !image_models(data_dir)?.is_empty()
            && video_models(data_dir)?.iter().any(takes_start_image),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(data_dir: &Path, fixture: &str) {
        crate::generation::install_fixture_model(data_dir, fixture);
    }

    #[test]
    fn a_models_kind_decides_its_role() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!keyframes_possible(dir.path()).unwrap());
        let err = image_model(dir.path(), None).unwrap_err().to_string();
        assert_eq!(err, NO_IMAGE_MODEL);

        install(dir.path(), "tiny-wan-t2v");
        install(dir.path(), "tiny-flux2-klein");
        let names = |models: Vec<LocalModel>| -> Vec<String> {
            models.into_iter().map(|m| m.name).collect()
        };
        assert_eq!(names(video_models(dir.path()).unwrap()), ["tiny-wan-t2v"]);
        assert_eq!(
            names(image_models(dir.path()).unwrap()),
            ["tiny-flux2-klein"]
        );
        assert_eq!(
            image_model(dir.path(), None).unwrap().name,
            "tiny-flux2-klein"
        );
        let err = image_model(dir.path(), Some("tiny-wan-t2v")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image model `tiny-wan-t2v` is not installed (image models installed: tiny-flux2-klein)"
        );
        // A text-to-video model cannot start from a keyframe.
        assert!(!keyframes_possible(dir.path()).unwrap());
        let err = resolve_model(dir.path(), Some("tiny-flux2-klein")).unwrap_err();
        assert!(
            err.to_string()
                .contains("is not installed (installed: tiny-wan-t2v)"),
            "{err}"
        );

        install(dir.path(), "tiny-wan-i2v");
        assert!(keyframes_possible(dir.path()).unwrap());
    }
}
