//! A LoRA file as users download it: one memory-mapped safetensors file whose keys are grouped by
//! the module they adapt. Three key conventions are in circulation, and one file may mix their
//! suffixes:
//!
//! - kohya-ss / musubi-tuner: `lora_unet_<module path, dots as underscores>.lora_down.weight`,
//!   `.lora_up.weight`, `.alpha`;
//! - diffusers / PEFT: `[transformer.]<module path>.lora_A.weight`, `.lora_B.weight` (and
//!   `.lora_B.bias`), alpha from `.alpha` keys or the `lora_adapter_metadata` header diffusers
//!   writes;
//! - ComfyUI / LightX2V: `diffusion_model.<module path>.lora_down.weight` / `.lora_up.weight`
//!   (or `lora_A` / `lora_B`), `.alpha`, and full deltas: `.diff` (of `<module>.weight`),
//!   `.diff_b` (of `<module>.bias`), `.diff_m` (of `<module>.modulation`).
//!
//! Nothing here knows a model: matching module paths to weights is [`super::apply`]'s work.

use super::LoraError;
use crate::loader::Checkpoint;
use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The key convention of a LoRA file, detected from its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraFormat {
    /// `lora_unet_…` keys (kohya-ss, musubi-tuner).
    Kohya,
    /// `diffusion_model.…` keys (ComfyUI, LightX2V, the original Wan release's names).
    ComfyUi,
    /// Anything else: diffusers / PEFT keys, with or without a `transformer.` prefix.
    Diffusers,
}

impl std::fmt::Display for LoraFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Kohya => "kohya",
            Self::ComfyUi => "ComfyUI/LightX2V",
            Self::Diffusers => "diffusers/PEFT",
        })
    }
}

/// What one tensor contributes to its module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Down,
    Up,
    UpBias,
    Alpha,
    Diff,
    DiffBias,
    DiffModulation,
}

/// Key suffixes, longest first where one ends another (`.diff_b` before `.diff`).
const SUFFIXES: &[(&str, Part)] = &[
    (".lora_down.weight", Part::Down),
    (".lora_A.weight", Part::Down),
    (".lora_up.weight", Part::Up),
    (".lora_B.weight", Part::Up),
    (".lora_B.bias", Part::UpBias),
    (".alpha", Part::Alpha),
    (".diff_b", Part::DiffBias),
    (".diff_m", Part::DiffModulation),
    (".diff", Part::Diff),
];

/// Prefixes removed before a module path is matched; `true` marks kohya's underscore form.
const PREFIXES: &[(&str, bool)] = &[
    ("lora_unet_", true),
    ("diffusion_model.", false),
    ("transformer.", false),
    ("base_model.model.", false),
];

/// The tensors a file holds for one module, by key.
#[derive(Debug, Default)]
pub(crate) struct LoraModule {
    /// The module path as the file spells it, prefix removed (`blocks.0.self_attn.q`, or
    /// kohya's `blocks_0_self_attn_q`).
    pub path: String,
    /// Kohya's form: the path's dots are underscores.
    pub underscored: bool,
    pub down: Option<String>,
    pub up: Option<String>,
    pub up_bias: Option<String>,
    pub alpha: Option<String>,
    pub diff: Option<String>,
    pub diff_bias: Option<String>,
    pub diff_modulation: Option<String>,
}

/// The `lora_adapter_metadata` header of files diffusers saves: PEFT's `lora_alpha`, and per-module
/// alphas in `alpha_pattern`.
#[derive(Debug, Clone, PartialEq)]
struct PeftAlphas {
    lora_alpha: f64,
    /// `(module path or path suffix, alpha)`.
    pattern: Vec<(String, f64)>,
    /// rsLoRA scales by `alpha / sqrt(rank)`.
    rslora: bool,
}

/// A LoRA file, mapped; tensors are read from the mapping each time a model is adapted.
pub struct LoraFile {
    path: PathBuf,
    checkpoint: Checkpoint,
    format: LoraFormat,
    modules: Vec<LoraModule>,
    /// Keys with none of the known suffixes.
    unknown: Vec<String>,
    peft: Option<PeftAlphas>,
    sha256: OnceLock<String>,
}

impl std::fmt::Debug for LoraFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraFile")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("modules", &self.modules.len())
            .finish()
    }
}

impl LoraFile {
    /// Maps `path`, validates its safetensors header and groups its keys by module.
    pub fn open(path: &Path) -> Result<Self, LoraError> {
        let checkpoint = Checkpoint::open_file(path)?;
        let mut modules: BTreeMap<(String, bool), LoraModule> = BTreeMap::new();
        let mut unknown = Vec::new();
        let mut format = LoraFormat::Diffusers;
        for (key, _) in checkpoint.tensors() {
            let (rest, underscored) = match PREFIXES.iter().find(|(p, _)| key.starts_with(p)) {
                Some((prefix, underscored)) => {
                    match *prefix {
                        "lora_unet_" => format = LoraFormat::Kohya,
                        "diffusion_model." if format != LoraFormat::Kohya => {
                            format = LoraFormat::ComfyUi
                        }
                        _ => {}
                    }
                    (&key[prefix.len()..], *underscored)
                }
                None => (key, false),
            };
            let Some((module, part)) = SUFFIXES
                .iter()
                .find_map(|(suffix, part)| rest.strip_suffix(suffix).map(|m| (m, *part)))
            else {
                unknown.push(key.to_string());
                continue;
            };
            let entry = modules
                .entry((module.to_string(), underscored))
                .or_insert_with(|| LoraModule {
                    path: module.to_string(),
                    underscored,
                    ..Default::default()
                });
            let slot = match part {
                Part::Down => &mut entry.down,
                Part::Up => &mut entry.up,
                Part::UpBias => &mut entry.up_bias,
                Part::Alpha => &mut entry.alpha,
                Part::Diff => &mut entry.diff,
                Part::DiffBias => &mut entry.diff_bias,
                Part::DiffModulation => &mut entry.diff_modulation,
            };
            if let Some(first) = slot.replace(key.to_string()) {
                return Err(LoraError::Unsupported {
                    path: path.to_path_buf(),
                    reason: format!("`{first}` and `{key}` give the same tensor of one module"),
                });
            }
        }
        let peft = peft_alphas(path, checkpoint.file_metadata(0))?;
        Ok(Self {
            path: path.to_path_buf(),
            checkpoint,
            format,
            modules: modules.into_values().collect(),
            unknown,
            peft,
            sha256: OnceLock::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> LoraFormat {
        self.format
    }

    /// How many modules (layers) the file adapts; 0 for a safetensors file that holds no LoRA
    /// tensor at all.
    pub fn module_count(&self) -> usize {
        self.modules.len()
    }

    /// The model family the keys name, where they tell it (a hint for a library, not a check:
    /// applying the file is what proves it fits): one of [`looks_like`]'s names, or `Wan` for
    /// the `blocks.N` layout of Wan's attention and feed-forward layers.
    pub fn family(&self) -> Option<&'static str> {
        let keys: Vec<&str> = self.keys().collect();
        looks_like(keys.iter().copied()).or_else(|| {
            self.modules
                .iter()
                .any(|m| {
                    let path = m.path.replace('_', ".");
                    path.starts_with("blocks.")
                        && ["self.attn", "cross.attn", "attn1", "attn2", "ffn"]
                            .iter()
                            .any(|layer| path.contains(layer))
                })
                .then_some("Wan")
        })
    }

    /// SHA-256 of the file's bytes (hex), computed on first use.
    pub fn sha256(&self) -> Result<&str, LoraError> {
        if let Some(digest) = self.sha256.get() {
            return Ok(digest);
        }
        let io = |source| {
            LoraError::Load(crate::loader::LoadError::Io {
                path: self.path.clone(),
                source,
            })
        };
        let mut file = std::fs::File::open(&self.path).map_err(io)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let digest = format!("{:x}", hasher.finalize());
        Ok(self.sha256.get_or_init(|| digest))
    }

    pub(crate) fn modules(&self) -> &[LoraModule] {
        &self.modules
    }

    /// Keys that are no LoRA tensor kind this engine knows.
    pub(crate) fn unknown_keys(&self) -> &[String] {
        &self.unknown
    }

    /// Every key of the file.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.checkpoint.tensors().map(|(key, _)| key)
    }

    pub(crate) fn shape(&self, key: &str) -> &[usize] {
        &self
            .checkpoint
            .entry(key)
            .expect("keys come from this file")
            .shape
    }

    pub(crate) fn tensor(
        &self,
        key: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor, LoraError> {
        Ok(self.checkpoint.load(key, None, dtype, device)?)
    }

    /// The alpha of `module`'s low-rank pair: its `.alpha` tensor, else the PEFT header's;
    /// `None` when the file gives none (the scale is then the strength alone). `rank` is the
    /// pair's rank, for rsLoRA's `alpha / sqrt(rank)` given as an equivalent alpha.
    pub(crate) fn alpha(&self, module: &LoraModule, rank: usize) -> Result<Option<f64>, LoraError> {
        if let Some(key) = &module.alpha {
            let values = self
                .tensor(key, DType::F64, &Device::Cpu)?
                .flatten_all()
                .and_then(|t| t.to_vec1::<f64>())
                .map_err(|source| LoraError::Tensor {
                    path: self.path.clone(),
                    source,
                })?;
            return match values.as_slice() {
                [alpha] => Ok(Some(*alpha)),
                _ => Err(LoraError::Unsupported {
                    path: self.path.clone(),
                    reason: format!("`{key}` must hold one value, it holds {}", values.len()),
                }),
            };
        }
        Ok(self.peft.as_ref().map(|peft| {
            let alpha = peft
                .pattern
                .iter()
                .find(|(pattern, _)| {
                    module.path == *pattern || module.path.ends_with(&format!(".{pattern}"))
                })
                .map_or(peft.lora_alpha, |(_, alpha)| *alpha);
            if peft.rslora {
                alpha * (rank as f64).sqrt()
            } else {
                alpha
            }
        }))
    }
}

/// Reads diffusers' `lora_adapter_metadata` header (a PEFT `LoraConfig` as JSON, its keys
/// prefixed by the component, `transformer.`, when a pipeline saved it).
fn peft_alphas(
    path: &Path,
    metadata: &std::collections::HashMap<String, String>,
) -> Result<Option<PeftAlphas>, LoraError> {
    let Some(raw) = metadata.get("lora_adapter_metadata") else {
        return Ok(None);
    };
    let bad = |reason: String| LoraError::Unsupported {
        path: path.to_path_buf(),
        reason: format!("lora_adapter_metadata: {reason}"),
    };
    let config: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(raw).map_err(|err| bad(err.to_string()))?;
    let field = |name: &str| {
        config
            .get(name)
            .or_else(|| config.get(&format!("transformer.{name}")))
    };
    if field("use_dora").and_then(|v| v.as_bool()) == Some(true) {
        return Err(bad("DoRA adapters are not supported".into()));
    }
    let Some(lora_alpha) = field("lora_alpha").and_then(|v| v.as_f64()) else {
        return Ok(None);
    };
    let pattern = match field("alpha_pattern") {
        Some(serde_json::Value::Object(map)) => map
            .iter()
            .map(|(k, v)| {
                v.as_f64()
                    .map(|alpha| (k.clone(), alpha))
                    .ok_or_else(|| bad(format!("alpha_pattern `{k}` is not a number")))
            })
            .collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    Ok(Some(PeftAlphas {
        lora_alpha,
        pattern,
        rslora: field("use_rslora").and_then(|v| v.as_bool()) == Some(true),
    }))
}

/// What a file that adapts none of a model's weights seems to be made for, from its keys.
pub(crate) fn looks_like<'a>(keys: impl Iterator<Item = &'a str> + Clone) -> Option<&'static str> {
    const MARKERS: &[(&[&str], &str)] = &[
        (&["individual_token_refiner", "txt_in."], "HunyuanVideo"),
        (
            &[
                "double_blocks",
                "single_blocks",
                "single_transformer_blocks",
            ],
            "FLUX.1 or FLUX.2",
        ),
        (&["audio_attn", "audio_ff", "av_ca_"], "LTX-2"),
        (
            &["adaln_single", "patchify_proj", "caption_projection"],
            "LTX-Video",
        ),
        (&["img_mlp", "txt_mlp", "img_mod"], "Qwen-Image"),
        (
            &[
                "down_blocks",
                "up_blocks",
                "mid_block",
                "input_blocks",
                "output_blocks",
                "middle_block",
            ],
            "Stable Diffusion / SDXL (UNet)",
        ),
        (&["lora_te", "text_encoder", "text_model"], "a text encoder"),
        // Diffusers' name for the blocks of most other DiTs.
        (
            &["transformer_blocks"],
            "LTX-Video, SD3, CogVideoX or another DiT",
        ),
    ];
    MARKERS.iter().find_map(|(markers, name)| {
        keys.clone()
            .any(|key| markers.iter().any(|m| key.contains(m)))
            .then_some(*name)
    })
}
