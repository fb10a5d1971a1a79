//! Generating a still: the installed image model ([`crate::models::image_model`]) runs on a
//! card's resident pipeline (the studio's, or a worker's: a still is a [`GenerationTask`] too),
//! conditioned on reference images (a character's look, a previous keyframe); the PNG carries its generation record (as a video's MP4 does) and is imported as
//! an asset with its record in `generations`, together with what the caller records about it (a
//! character's look, a shot's keyframe) in one transaction: a crash leaves all or nothing.

use crate::app::App;
use crate::assets::{Asset, MediaKind, NewAsset, get_asset};
use crate::db::now_ms;
use crate::error::{Result, StudioError};
use crate::generation::{GenerationTask, Generator, Length, RenderSettings, random_seed};
use crate::loras::{self, AppliedLora};
use crate::models;
use rusqlite::{Transaction, params};
use serde::Serialize;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use videosdgx_engine::hub::LocalModel;
use videosdgx_engine::pipelines::GenerateParams;

/// One image to generate and record.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    pub project_id: i64,
    /// The shot it is made for (a keyframe), recorded with its generation.
    pub shot_id: Option<i64>,
    /// The library name of the PNG.
    pub name: String,
    pub tags: Vec<String>,
    pub prompt: String,
    pub negative_prompt: String,
    /// A random seed is drawn (and recorded) when absent.
    pub seed: Option<u64>,
    /// Image asset ids of the project the model conditions on, in order.
    pub references: Vec<i64>,
    pub width: usize,
    pub height: usize,
    /// The model's own defaults when absent (4 steps without guidance for the distilled FLUX.2
    /// [klein], its pipeline's call defaults otherwise: `Pipeline::call_defaults`).
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    /// An installed image model's name; FLUX.2 [klein] (or the only one) when absent.
    pub model: Option<String>,
    /// The LoRAs to apply ([`crate::loras`]), recorded with the image.
    pub loras: Vec<AppliedLora>,
}

/// A recorded image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageOutput {
    pub asset: Asset,
    pub generation_id: i64,
    pub model: String,
    pub params: GenerateParams,
}

/// The files of `references`, each an image asset of project `project_id`.
pub fn reference_images(app: &App, project_id: i64, references: &[i64]) -> Result<Vec<PathBuf>> {
    references
        .iter()
        .map(|&id| {
            let asset = get_asset(&app.db, id)?;
            if asset.project_id != Some(project_id) {
                return Err(StudioError::Invalid(format!(
                    "reference asset {id} is not an asset of this project"
                )));
            }
            if asset.kind != MediaKind::Image {
                return Err(StudioError::Invalid(format!(
                    "reference asset {id} is a {} asset, not an image",
                    asset.kind.as_str()
                )));
            }
            Ok(app.assets.file_of(&asset))
        })
        .collect()
}

impl Generator {
    /// Generates `request` with the installed image model and records it; `then` writes what
    /// the caller records about the new asset (given its generation id) in the same transaction.
    pub fn generate_image<T>(
        &self,
        app: &App,
        job_id: Option<i64>,
        request: &ImageRequest,
        on_progress: &mut dyn FnMut(&str, u64, u64) -> ControlFlow<()>,
        then: impl FnOnce(&Transaction, &Asset, i64) -> Result<T>,
    ) -> Result<(ImageOutput, T)> {
        let model = models::image_model(app.data_dir(), request.model.as_deref())?;
        let references = reference_images(app, request.project_id, &request.references)?;
        let (params, path) =
            self.render_image(app, job_id, &model, request, references, on_progress)?;
        let recorded = record(app, job_id, &model.name, request, &params, &path, then);
        let _ = std::fs::remove_file(&path);
        let (asset, generation_id, then) = recorded?;
        Ok((
            ImageOutput {
                asset,
                generation_id,
                model: model.name,
                params,
            },
            then,
        ))
    }

    fn render_image(
        &self,
        app: &App,
        job_id: Option<i64>,
        model: &LocalModel,
        request: &ImageRequest,
        references: Vec<PathBuf>,
        on_progress: &mut dyn FnMut(&str, u64, u64) -> ControlFlow<()>,
    ) -> Result<(GenerateParams, PathBuf)> {
        let (name, dir) = (&model.name, &model.path);
        let defaults = videosdgx_engine::pipelines::Pipeline::call_defaults(dir)
            .map_err(|e| StudioError::Invalid(format!("image model `{name}`: {e:#}")))?;
        let task = GenerationTask {
            model: name.clone(),
            prompt: request.prompt.clone(),
            negative_prompt: request.negative_prompt.clone(),
            length: Length::Frames(1),
            seed: request.seed.unwrap_or_else(random_seed),
            render: RenderSettings {
                height: request.height,
                width: request.width,
                steps: request.steps.unwrap_or(defaults.steps),
                guidance: request.guidance.unwrap_or(defaults.guidance),
                ..RenderSettings::default()
            },
            start_image: None,
            references,
            loras: request.loras.iter().map(|l| l.spec(app)).collect(),
            applied_loras: request.loras.clone(),
            still: true,
            local_files: HashMap::new(),
        };
        let path = app.scratch_file("image", "png")?;
        match self.gpus.generate(job_id, dir, &task, &path, on_progress) {
            Ok(generated) => Ok((generated.params, path)),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(loras::explain(app, &request.loras, e))
            }
        }
    }
}

/// Imports the PNG, then writes its generation record and `then`'s records in one transaction.
fn record<T>(
    app: &App,
    job_id: Option<i64>,
    model: &str,
    request: &ImageRequest,
    params: &GenerateParams,
    path: &Path,
    then: impl FnOnce(&Transaction, &Asset, i64) -> Result<T>,
) -> Result<(Asset, i64, T)> {
    let meta = NewAsset {
        name: request.name.clone(),
        project_id: Some(request.project_id),
        caption: String::new(),
        tags: request.tags.clone(),
        prompt: params.prompt.clone(),
        model: Some(model.to_string()),
    };
    let params_json = serde_json::to_string(params).map_err(anyhow::Error::from)?;
    let loras_json = serde_json::to_string(&request.loras).map_err(anyhow::Error::from)?;
    let (asset, (generation_id, then)) =
        app.assets
            .import_file_recording(&app.db, path, &meta, |tx, asset| {
                let generation_id: i64 = tx.query_row(
                    "INSERT INTO generations (job_id, shot_id, asset_id, model, params, engine_version, created_at, loras)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
                    params![
                        job_id,
                        request.shot_id,
                        asset.id,
                        model,
                        params_json,
                        videosdgx_engine::VERSION,
                        now_ms(),
                        loras_json
                    ],
                    |r| r.get(0),
                )?;
                Ok((generation_id, then(tx, asset, generation_id)?))
            })?;
    Ok((asset, generation_id, then))
}
