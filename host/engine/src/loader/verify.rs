//! `verify`: checks a pipeline (or one component) folder without running anything. The expected
//! tensors are exactly those the model's constructor asks for when built from the folder's config
//! (recorded by a backend that hands out zero-stride placeholders, so nothing is allocated); they
//! are compared with the safetensors headers for names, shapes and dtypes. Never reads tensor data.

use super::single_file::{OriginalLayout, SingleFile};
use super::{Checkpoint, ComponentClass, LoadError, component_class, read_pipeline_index};
use crate::families::wan::{transformer as wan_transformer, vae};
use crate::families::{flux, flux2, ltx2};
use crate::models::{autoencoder_kl, clip_text, clip_vision, t5};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::{SimpleBackend, VarBuilder};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A tensor whose stored shape differs from what the config implies.
#[derive(Debug, Clone, Serialize)]
pub struct ShapeProblem {
    pub tensor: String,
    pub file: PathBuf,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
}

/// What `verify` found in one component folder.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentReport {
    /// Folder name (`transformer`, `text_encoder`, ...).
    pub name: String,
    /// Reference class name from `model_index.json` or the component config.
    pub class_name: String,
    /// Tensors stored in the component's safetensors files.
    pub tensors: usize,
    /// Tensors the config implies that the weights lack.
    pub missing: Vec<String>,
    /// Stored tensors the model never uses.
    pub unexpected: Vec<String>,
    pub shape_mismatches: Vec<ShapeProblem>,
    /// Tensors stored in a non-floating-point dtype, as `name (dtype, file)`.
    pub bad_dtypes: Vec<String>,
    /// Unreadable files or configs (each names its file).
    pub errors: Vec<String>,
}

impl ComponentReport {
    fn new(name: &str, class_name: &str) -> Self {
        Self {
            name: name.to_string(),
            class_name: class_name.to_string(),
            tensors: 0,
            missing: Vec::new(),
            unexpected: Vec::new(),
            shape_mismatches: Vec::new(),
            bad_dtypes: Vec::new(),
            errors: Vec::new(),
        }
    }

    pub fn is_ok(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.shape_mismatches.is_empty()
            && self.bad_dtypes.is_empty()
            && self.errors.is_empty()
    }
}

/// The result of [`verify`].
#[derive(Debug, Clone, Serialize)]
pub struct VerificationReport {
    pub dir: PathBuf,
    /// The pipeline class when `dir` holds a `model_index.json`.
    pub pipeline_class: Option<String>,
    pub components: Vec<ComponentReport>,
}

impl VerificationReport {
    pub fn is_ok(&self) -> bool {
        self.components.iter().all(ComponentReport::is_ok)
    }
}

/// Verifies a pipeline folder (every component in `model_index.json`) or a single component
/// folder. Problems inside the checkpoint are collected in the report; the `Err` case is only
/// for a folder that cannot be identified at all (no `model_index.json` and no readable config,
/// or an unknown class).
pub fn verify(dir: &Path) -> Result<VerificationReport, LoadError> {
    if dir.join("model_index.json").is_file() {
        let index = read_pipeline_index(dir)?;
        // An LTX-2 checkpoint file in the folder holds the weights of the components it maps.
        let checkpoint = super::single_file::checkpoint_in(dir)?;
        let components = index
            .components
            .iter()
            .map(|c| {
                let sub = dir.join(&c.name);
                let weights = checkpoint
                    .as_deref()
                    .filter(|_| OriginalLayout::for_ltx2_class(&c.class_name).is_some());
                match ComponentClass::from_class_name(&c.class_name) {
                    Some(class) => verify_component(&sub, &c.name, &c.class_name, class, weights),
                    None => {
                        let mut report = ComponentReport::new(&c.name, &c.class_name);
                        report.errors.push(
                            LoadError::UnknownClass {
                                class: c.class_name.clone(),
                                path: dir.join("model_index.json"),
                            }
                            .to_string(),
                        );
                        report
                    }
                }
            })
            .collect();
        return Ok(VerificationReport {
            dir: dir.to_path_buf(),
            pipeline_class: Some(index.class_name),
            components,
        });
    }
    let (class, class_name) = component_class(dir)?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(VerificationReport {
        dir: dir.to_path_buf(),
        pipeline_class: None,
        components: vec![verify_component(dir, &name, &class_name, class, None)],
    })
}

fn verify_component(
    dir: &Path,
    name: &str,
    class_name: &str,
    class: ComponentClass,
    weights: Option<&Path>,
) -> ComponentReport {
    let mut report = ComponentReport::new(name, class_name);
    if !dir.is_dir() {
        report.errors.push(
            LoadError::MissingFile {
                path: dir.to_path_buf(),
            }
            .to_string(),
        );
        return report;
    }
    match class {
        ComponentClass::Tokenizer => {
            // transformers rebuilds a CLIP tokenizer from its vocabulary (FLUX.1's ships no
            // `tokenizer.json`), as the pipelines do.
            let tokenizer = if class_name.starts_with("CLIPTokenizer") {
                crate::tokenizer::PromptTokenizer::clip_from_dir(dir)
            } else {
                crate::tokenizer::PromptTokenizer::from_dir(dir)
            };
            if let Err(err) = tokenizer {
                report.errors.push(format!("{err:#}"));
            }
        }
        ComponentClass::Scheduler | ComponentClass::ImageProcessor => {
            let file = if class == ComponentClass::Scheduler {
                "scheduler_config.json"
            } else {
                "preprocessor_config.json"
            };
            if let Err(err) = super::read_config::<serde_json::Value>(&dir.join(file)) {
                report.errors.push(err.to_string());
            }
        }
        _ => check_weights(dir, class_name, class, weights, &mut report),
    }
    report
}

/// `weights`: an LTX-2 checkpoint file holding the component, else the folder's weights.
fn check_weights(
    dir: &Path,
    class_name: &str,
    class: ComponentClass,
    weights: Option<&Path>,
    report: &mut ComponentReport,
) {
    let opened = match weights {
        Some(file) => Checkpoint::open_file(file),
        None => Checkpoint::open(dir),
    };
    let checkpoint = match opened {
        Ok(checkpoint) => Arc::new(checkpoint),
        Err(err) => {
            report.errors.push(err.to_string());
            return;
        }
    };
    report.tensors = checkpoint.tensors().count();
    // A single file in the original release's names (a downloaded `flux1-dev.safetensors` in
    // `transformer/`) is compared through the names it maps to.
    // An LTX-2 checkpoint is compared through the component of it the class reads.
    let detected = SingleFile::detect(checkpoint.clone()).and_then(|original| match original {
        Some(file) if file.layout() == OriginalLayout::Ltx2 => {
            match OriginalLayout::for_ltx2_class(class_name) {
                Some(layout) => file.component(layout).map(Some),
                None => Err(LoadError::BadConfig {
                    path: file.path().to_path_buf(),
                    reason: format!("an LTX-2 checkpoint holds no {class_name}"),
                }),
            }
        }
        other => Ok(other),
    });
    let original = match detected {
        Ok(original) => original.map(Arc::new),
        Err(err) => {
            report.errors.push(err.to_string());
            return;
        }
    };

    let stored: BTreeSet<String> = checkpoint
        .tensors()
        .map(|(n, _)| n.to_string())
        .filter(|n| original.as_ref().is_none_or(|file| file.holds(n)))
        .collect();
    let recorder = Recorder {
        checkpoint: checkpoint.clone(),
        original: original.clone(),
        requested: Mutex::new(BTreeMap::new()),
    };
    let requested = match build_with(dir, class, recorder) {
        Ok(requested) => requested,
        Err(err) => {
            report.errors.push(format!("{err:#}"));
            return;
        }
    };
    // The stored tensors read, with the dtype the model asked for.
    let mut used = BTreeMap::new();
    for (tensor, (expected, dtype)) in &requested {
        let found = match &original {
            Some(file) => file
                .mapped(tensor)
                .map(|(key, shape)| (format!("{key} (as {tensor})"), key, shape)),
            None => checkpoint
                .entry(tensor)
                .map(|entry| (tensor.clone(), tensor.clone(), entry.shape.clone())),
        };
        match found {
            None => report.missing.push(tensor.clone()),
            Some((shown, key, shape)) => {
                if shape != *expected {
                    let file = checkpoint.entry(&key).map_or(0, |entry| entry.file);
                    report.shape_mismatches.push(ShapeProblem {
                        tensor: shown,
                        file: checkpoint.file_path(file).to_path_buf(),
                        expected: expected.clone(),
                        found: shape,
                    });
                }
                used.insert(key, *dtype);
            }
        }
    }
    // Floats convert to whatever the model computes in; other dtypes (NVFP4's packed codes) only
    // serve a model that reads them as they are.
    for (tensor, entry) in checkpoint.tensors() {
        let stored = DType::try_from(entry.dtype).ok();
        let readable = stored.is_some_and(|dt| dt.is_float() || used.get(tensor) == Some(&dt));
        if !readable && !ignorable(class, tensor) {
            report.bad_dtypes.push(format!(
                "{tensor} ({}, {})",
                entry.dtype,
                checkpoint.file_path(entry.file).display()
            ));
        }
    }
    report.unexpected = stored
        .into_iter()
        .filter(|t| !used.contains_key(t) && !ignorable(class, t))
        .collect();
}

/// Stored tensors the reference also ignores when loading.
fn ignorable(class: ComponentClass, tensor: &str) -> bool {
    // ComfyUI's per-layer quantization metadata (JSON bytes), read by no model, and quantized
    // layers' activation scales, which weight-only products do not read.
    if tensor.ends_with(".comfy_quant") || tensor.ends_with(".input_scale") {
        return true;
    }
    match class {
        // `_keys_to_ignore_on_load_unexpected = ["norm_added_q"]`
        ComponentClass::WanTransformer3DModel => tensor.contains("norm_added_q"),
        // The embedding is tied to `shared.weight`; checkpoints may store both names.
        ComponentClass::UMT5EncoderModel | ComponentClass::T5EncoderModel => {
            tensor == "encoder.embed_tokens.weight"
        }
        // A non-persistent buffer that older checkpoints saved.
        ComponentClass::CLIPVisionModel | ComponentClass::CLIPTextModel => {
            tensor.ends_with("embeddings.position_ids")
        }
        // The BatchNorm's (int64) step counter, which inference never reads.
        ComponentClass::AutoencoderKLFlux2 => tensor == "bn.num_batches_tracked",
        // The inverse STFT basis, a persistent buffer that the forward pass never reads.
        ComponentClass::LTX2VocoderWithBWE => tensor == "mel_stft.stft_fn.inverse_basis",
        _ => false,
    }
}

/// Builds the component's model from its config over `recorder` and returns every tensor (name
/// and shape) the constructor asked for.
fn build_with(
    dir: &Path,
    class: ComponentClass,
    recorder: Recorder,
) -> anyhow::Result<BTreeMap<String, (Vec<usize>, DType)>> {
    let recorder = std::sync::Arc::new(recorder);
    let vb = VarBuilder::from_backend(
        Box::new(SharedRecorder(recorder.clone())),
        DType::F32,
        Device::Cpu,
    );
    let config = dir.join("config.json");
    match class {
        ComponentClass::WanTransformer3DModel => {
            let cfg: wan_transformer::WanTransformerConfig = super::read_config(&config)?;
            wan_transformer::WanTransformer3DModel::new(&cfg, vb)?;
        }
        ComponentClass::Flux2Transformer2DModel => {
            let cfg: flux2::transformer::Flux2TransformerConfig = super::read_config(&config)?;
            flux2::transformer::Flux2Transformer2DModel::new(&cfg, vb)?;
        }
        ComponentClass::FluxTransformer2DModel => {
            let cfg: flux::transformer::FluxTransformerConfig = super::read_config(&config)?;
            flux::transformer::FluxTransformer2DModel::new(&cfg, vb)?;
        }
        ComponentClass::LTX2VideoTransformer3DModel => {
            let cfg: ltx2::transformer::LTX2TransformerConfig = super::read_config(&config)?;
            ltx2::transformer::LTX2VideoTransformer3DModel::new(&cfg, vb)?;
        }
        ComponentClass::UMT5EncoderModel | ComponentClass::T5EncoderModel => {
            let cfg: t5::T5Config = super::read_config(&config)?;
            t5::T5EncoderModel::new(&cfg, vb)?;
        }
        ComponentClass::CLIPTextModel => {
            let cfg: clip_text::CLIPTextConfig = super::read_config(&config)?;
            clip_text::CLIPTextModel::new(&cfg, vb)?;
        }
        ComponentClass::CLIPVisionModel => {
            let cfg: clip_vision::CLIPVisionConfig = super::read_config(&config)?;
            clip_vision::CLIPVisionModel::new(&cfg, vb)?;
        }
        ComponentClass::AutoencoderKLWan => {
            let cfg: vae::WanVaeConfig = super::read_config(&config)?;
            vae::AutoencoderKLWan::new(vb, cfg)?;
        }
        ComponentClass::AutoencoderKL => {
            let cfg: autoencoder_kl::AutoencoderKLConfig = super::read_config(&config)?;
            autoencoder_kl::AutoencoderKL::new(&cfg, vb)?;
        }
        ComponentClass::AutoencoderKLFlux2 => {
            let cfg: flux2::vae::AutoencoderKLFlux2Config = super::read_config(&config)?;
            flux2::vae::AutoencoderKLFlux2::new(&cfg, vb)?;
        }
        ComponentClass::LTX2TextConnectors => {
            let cfg: ltx2::connectors::LTX2TextConnectorsConfig = super::read_config(&config)?;
            ltx2::connectors::LTX2TextConnectors::new(&cfg, vb)?;
        }
        ComponentClass::LTX2LatentUpsamplerModel => {
            let cfg: ltx2::latent_upsampler::LTX2LatentUpsamplerConfig =
                super::read_config(&config)?;
            ltx2::latent_upsampler::LTX2LatentUpsamplerModel::new(&cfg, vb)?;
        }
        ComponentClass::AutoencoderKLLTX2Video => {
            let cfg: ltx2::video_vae::AutoencoderKLLTX2VideoConfig = super::read_config(&config)?;
            ltx2::video_vae::AutoencoderKLLTX2Video::new(&cfg, vb)?;
        }
        ComponentClass::AutoencoderKLLTX2Audio => {
            let cfg: ltx2::audio_vae::AutoencoderKLLTX2AudioConfig = super::read_config(&config)?;
            ltx2::audio_vae::AutoencoderKLLTX2Audio::new(&cfg, vb)?;
        }
        ComponentClass::LTX2Vocoder => {
            let cfg: ltx2::vocoder::LTX2VocoderConfig = super::read_config(&config)?;
            ltx2::vocoder::LTX2Vocoder::new(&cfg, vb)?;
        }
        ComponentClass::LTX2VocoderWithBWE => {
            let cfg: ltx2::vocoder::LTX2VocoderWithBWEConfig = super::read_config(&config)?;
            ltx2::vocoder::LTX2VocoderWithBWE::new(&cfg, vb)?;
        }
        ComponentClass::LanguageModel(_) => {
            let cfg = crate::text::model::LanguageModelConfig::read(dir)?;
            crate::text::model::LanguageModel::new(&cfg, vb)?;
        }
        ComponentClass::Tokenizer | ComponentClass::Scheduler | ComponentClass::ImageProcessor => {}
    }
    Ok(std::mem::take(
        &mut *recorder.requested.lock().expect("recorder lock"),
    ))
}

/// A backend that records requests instead of reading data. It answers `contains_tensor` from
/// the real checkpoint so constructors pick the same optional layouts they would when loading.
struct Recorder {
    checkpoint: Arc<Checkpoint>,
    /// The stored file in the original names, if it is one: `contains_tensor` answers through it.
    original: Option<Arc<SingleFile>>,
    /// Each tensor asked for: its shape and dtype.
    requested: Mutex<BTreeMap<String, (Vec<usize>, DType)>>,
}

struct SharedRecorder(std::sync::Arc<Recorder>);

impl SimpleBackend for SharedRecorder {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .requested
            .lock()
            .expect("recorder lock")
            .insert(name.to_string(), (shape.dims().to_vec(), dtype));
        // A zero-stride view: the right shape, one element of memory.
        Tensor::zeros((), dtype, device)?.broadcast_as(shape)
    }

    /// A tensor whose shape the model takes as stored (an FP8 weight's scale): the stored
    /// shape, so only its presence is checked.
    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let stored = match &self.0.original {
            Some(file) => file.mapped(name).map(|(_, shape)| shape),
            None => self
                .0
                .checkpoint
                .entry(name)
                .map(|entry| entry.shape.clone()),
        };
        let Some(shape) = stored else {
            candle_core::bail!("tensor `{name}` is missing");
        };
        self.get(
            shape.into(),
            name,
            candle_nn::Init::Const(0.),
            dtype,
            device,
        )
    }

    fn contains_tensor(&self, name: &str) -> bool {
        match &self.0.original {
            Some(file) => file.contains(name),
            None => self.0.checkpoint.contains(name),
        }
    }
}
