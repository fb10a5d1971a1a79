//! Reading checkpoints in the diffusers layout users download: a pipeline directory with
//! `model_index.json` and one folder per component, each with its config and safetensors weights.
//!
//! Components are recognised by their class name (`_class_name` in a diffusers config,
//! `architectures` in a transformers one), as diffusers dispatches. Every failure names the file
//! and, where there is one, the tensor. This module never runs a model and never assumes the
//! dimensions of a published checkpoint: shapes come from each component's config.

mod checkpoint;
pub mod memory;
pub mod single_file;
mod state_dict;
mod verify;

pub use checkpoint::{Checkpoint, TensorEntry};
pub use state_dict::StateDict;
pub use verify::{ComponentReport, ShapeProblem, VerificationReport, verify};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// Why a checkpoint could not be read. Each variant names the file, and the tensor where one is
/// at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is missing", path.display())]
    MissingFile { path: PathBuf },
    #[error("cannot parse {}: {source}", path.display())]
    Config {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: {reason}", path.display())]
    BadConfig { path: PathBuf, reason: String },
    #[error("no *.safetensors weights in {}", dir.display())]
    NoWeights { dir: PathBuf },
    #[error("several weight files in {} and no shard index to choose: {}", dir.display(), files.join(", "))]
    AmbiguousWeights { dir: PathBuf, files: Vec<String> },
    #[error("{}: truncated or malformed safetensors header: {reason}", path.display())]
    BadHeader { path: PathBuf, reason: String },
    #[error("{} places tensor `{tensor}` in {}, which does not exist", index.display(), shard.display())]
    MissingShard {
        index: PathBuf,
        shard: PathBuf,
        tensor: String,
    },
    #[error("shard index places tensor `{tensor}` in {}, but that file does not hold it", file.display())]
    TensorNotInShard { tensor: String, file: PathBuf },
    #[error("tensor `{tensor}` is missing from the weights in {}", dir.display())]
    MissingTensor { tensor: String, dir: PathBuf },
    #[error("tensor `{tensor}` in {} has shape {found:?}, but the config implies {expected:?}", file.display())]
    ShapeMismatch {
        tensor: String,
        file: PathBuf,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{tensor}` in {} has dtype {dtype}, expected a floating-point type", file.display())]
    UnsupportedDtype {
        tensor: String,
        file: PathBuf,
        dtype: String,
    },
    #[error("tensor `{tensor}` in {}: {reason}", file.display())]
    Tensor {
        tensor: String,
        file: PathBuf,
        reason: String,
    },
    #[error("unknown component class `{class}` in {}; this engine knows {}", path.display(), ComponentClass::KNOWN.join(", "))]
    UnknownClass { class: String, path: PathBuf },
}

/// The component classes this engine can load, by the reference's class names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ComponentClass {
    WanTransformer3DModel,
    Flux2Transformer2DModel,
    FluxTransformer2DModel,
    /// LTX-2's audio-video diffusion transformer.
    LTX2VideoTransformer3DModel,
    UMT5EncoderModel,
    /// transformers' `T5EncoderModel` (FLUX.1's T5-XXL).
    T5EncoderModel,
    CLIPVisionModel,
    /// transformers' `CLIPTextModel` (FLUX.1's CLIP-L).
    CLIPTextModel,
    AutoencoderKLWan,
    /// The 2-D image VAE of FLUX.1.
    AutoencoderKL,
    /// FLUX.2's image VAE: `AutoencoderKL`'s encoder and decoder plus BatchNorm statistics.
    AutoencoderKLFlux2,
    /// LTX-2's text connectors (Gemma 3 hidden states to the video and audio text embeddings).
    LTX2TextConnectors,
    /// LTX-2's latent upsampler.
    LTX2LatentUpsamplerModel,
    /// LTX-2's causal 3-D video VAE.
    AutoencoderKLLTX2Video,
    /// LTX-2's audio VAE over mel spectrograms.
    AutoencoderKLLTX2Audio,
    /// LTX-2's mel-to-waveform vocoder (saved from `pipelines/ltx2`).
    LTX2Vocoder,
    /// LTX-2.X's vocoder with bandwidth extension.
    LTX2VocoderWithBWE,
    /// A `tokenizers` tokenizer (`tokenizer.json`), whatever the transformers class wrapping it.
    Tokenizer,
    /// A scheduler config (`scheduler_config.json`); the class name says which scheduler.
    Scheduler,
    /// `CLIPImageProcessor` (`preprocessor_config.json`).
    ImageProcessor,
    /// A transformers language model (`Qwen3ForCausalLM`, `Gemma3ForCausalLM`,
    /// `Gemma3ForConditionalGeneration`).
    LanguageModel(crate::text::model::Architecture),
}

impl ComponentClass {
    const KNOWN: &'static [&'static str] = &[
        "WanTransformer3DModel",
        "Flux2Transformer2DModel",
        "FluxTransformer2DModel",
        "LTX2VideoTransformer3DModel",
        "UMT5EncoderModel",
        "T5EncoderModel",
        "CLIPVisionModel",
        "CLIPTextModel",
        "AutoencoderKLWan",
        "AutoencoderKL",
        "AutoencoderKLFlux2",
        "LTX2TextConnectors",
        "LTX2LatentUpsamplerModel",
        "AutoencoderKLLTX2Video",
        "AutoencoderKLLTX2Audio",
        "LTX2Vocoder",
        "LTX2VocoderWithBWE",
        "T5TokenizerFast",
        "T5Tokenizer",
        "AutoTokenizer",
        "CLIPTokenizer",
        "CLIPTokenizerFast",
        "UniPCMultistepScheduler",
        "FlowMatchEulerDiscreteScheduler",
        "CLIPImageProcessor",
        "Qwen3ForCausalLM",
        "Gemma3ForCausalLM",
        "Gemma3ForConditionalGeneration",
    ];

    /// Maps a reference class name to the component kind, as diffusers' loader does.
    pub fn from_class_name(name: &str) -> Option<Self> {
        Some(match name {
            "WanTransformer3DModel" => Self::WanTransformer3DModel,
            "Flux2Transformer2DModel" => Self::Flux2Transformer2DModel,
            "FluxTransformer2DModel" => Self::FluxTransformer2DModel,
            "LTX2VideoTransformer3DModel" => Self::LTX2VideoTransformer3DModel,
            "UMT5EncoderModel" => Self::UMT5EncoderModel,
            "T5EncoderModel" => Self::T5EncoderModel,
            "CLIPVisionModel" => Self::CLIPVisionModel,
            "CLIPTextModel" => Self::CLIPTextModel,
            "AutoencoderKLWan" => Self::AutoencoderKLWan,
            "AutoencoderKL" => Self::AutoencoderKL,
            "AutoencoderKLFlux2" => Self::AutoencoderKLFlux2,
            "LTX2TextConnectors" => Self::LTX2TextConnectors,
            "LTX2LatentUpsamplerModel" => Self::LTX2LatentUpsamplerModel,
            "AutoencoderKLLTX2Video" => Self::AutoencoderKLLTX2Video,
            "AutoencoderKLLTX2Audio" => Self::AutoencoderKLLTX2Audio,
            "LTX2Vocoder" => Self::LTX2Vocoder,
            "LTX2VocoderWithBWE" => Self::LTX2VocoderWithBWE,
            "T5TokenizerFast" | "T5Tokenizer" | "AutoTokenizer" | "CLIPTokenizer"
            | "CLIPTokenizerFast" => Self::Tokenizer,
            "UniPCMultistepScheduler" | "FlowMatchEulerDiscreteScheduler" => Self::Scheduler,
            "CLIPImageProcessor" => Self::ImageProcessor,
            _ => Self::LanguageModel(crate::text::model::Architecture::from_name(name)?),
        })
    }

    /// Whether the component has safetensors weights.
    pub fn has_weights(self) -> bool {
        matches!(
            self,
            Self::WanTransformer3DModel
                | Self::Flux2Transformer2DModel
                | Self::FluxTransformer2DModel
                | Self::LTX2VideoTransformer3DModel
                | Self::UMT5EncoderModel
                | Self::T5EncoderModel
                | Self::CLIPVisionModel
                | Self::CLIPTextModel
                | Self::AutoencoderKLWan
                | Self::AutoencoderKL
                | Self::AutoencoderKLFlux2
                | Self::LTX2TextConnectors
                | Self::LTX2LatentUpsamplerModel
                | Self::AutoencoderKLLTX2Video
                | Self::AutoencoderKLLTX2Audio
                | Self::LTX2Vocoder
                | Self::LTX2VocoderWithBWE
                | Self::LanguageModel(_)
        )
    }
}

/// Reads and deserializes a JSON config, naming the file on failure.
pub fn read_config<T: DeserializeOwned>(path: &Path) -> Result<T, LoadError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(LoadError::MissingFile {
                path: path.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(LoadError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_str(&text).map_err(|source| LoadError::Config {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads `dir/config.json` and runs `validate` on it, naming the file when it refuses.
pub fn read_checked_config<T: DeserializeOwned>(
    dir: &Path,
    validate: impl FnOnce(&T) -> Result<(), String>,
) -> Result<T, LoadError> {
    let path = dir.join("config.json");
    let config: T = read_config(&path)?;
    validate(&config).map_err(|reason| LoadError::BadConfig { path, reason })?;
    Ok(config)
}

/// The class of the component in `dir`, read from whichever config file the folder carries.
pub fn component_class(dir: &Path) -> Result<(ComponentClass, String), LoadError> {
    #[derive(serde::Deserialize)]
    struct Header {
        #[serde(rename = "_class_name")]
        class_name: Option<String>,
        architectures: Option<Vec<String>>,
        tokenizer_class: Option<String>,
        image_processor_type: Option<String>,
    }
    let candidates = [
        "config.json",
        "scheduler_config.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
    ];
    let path = candidates
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| LoadError::MissingFile {
            path: dir.join("config.json"),
        })?;
    let header: Header = read_config(&path)?;
    let class = header
        .class_name
        .or_else(|| header.architectures.and_then(|a| a.into_iter().next()))
        .or(header.tokenizer_class)
        .or(header.image_processor_type)
        .ok_or_else(|| LoadError::BadConfig {
            path: path.clone(),
            reason:
                "no `_class_name`, `architectures`, `tokenizer_class` or `image_processor_type`"
                    .into(),
        })?;
    match ComponentClass::from_class_name(&class) {
        Some(kind) => Ok((kind, class)),
        None => Err(LoadError::UnknownClass { class, path }),
    }
}

/// One entry of `model_index.json`: a component folder and the class diffusers would load there.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PipelineComponent {
    /// Folder name inside the pipeline directory (e.g. `transformer`, `text_encoder`).
    pub name: String,
    /// Library the reference loads it with (`diffusers` or `transformers`).
    pub library: String,
    /// Reference class name.
    pub class_name: String,
}

/// The parsed `model_index.json` of a pipeline directory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PipelineIndex {
    /// Pipeline class (`WanPipeline`, `WanImageToVideoPipeline`, ...).
    pub class_name: String,
    /// Present components, in file order; `null` entries (absent optional parts) are skipped.
    pub components: Vec<PipelineComponent>,
    /// Non-component settings (e.g. `boundary_ratio`, `expand_timesteps`).
    pub settings: serde_json::Map<String, serde_json::Value>,
}

impl PipelineIndex {
    pub fn component(&self, name: &str) -> Option<&PipelineComponent> {
        self.components.iter().find(|c| c.name == name)
    }
}

/// The component folder `name` of the pipeline directory `dir`, or an error naming what is
/// missing.
pub fn pipeline_component(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_dir() {
        anyhow::bail!("{}: the pipeline has no {name}/ folder", dir.display());
    }
    Ok(path)
}

/// Reads `dir/model_index.json`.
pub fn read_pipeline_index(dir: &Path) -> Result<PipelineIndex, LoadError> {
    let path = dir.join("model_index.json");
    let map: serde_json::Map<String, serde_json::Value> = read_config(&path)?;
    let class_name = map
        .get("_class_name")
        .and_then(|v| v.as_str())
        .ok_or_else(|| LoadError::BadConfig {
            path: path.clone(),
            reason: "no `_class_name`".into(),
        })?
        .to_string();
    let mut components = Vec::new();
    let mut settings = serde_json::Map::new();
    for (key, value) in map {
        if key.starts_with('_') {
            continue;
        }
        match value.as_array().map(|a| a.as_slice()) {
            Some(
                [
                    serde_json::Value::String(library),
                    serde_json::Value::String(class),
                ],
            ) => {
                components.push(PipelineComponent {
                    name: key,
                    library: library.clone(),
                    class_name: class.clone(),
                });
            }
            Some([serde_json::Value::Null, serde_json::Value::Null]) => {}
            _ => {
                settings.insert(key, value);
            }
        }
    }
    Ok(PipelineIndex {
        class_name,
        components,
        settings,
    })
}

/// Maps the weights of a component folder and returns a `VarBuilder` over them.
pub fn open_weights(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>, LoadError> {
    Ok(Checkpoint::open(dir)?.into_var_builder(dtype, device))
}
