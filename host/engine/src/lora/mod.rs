//! LoRA for every model family: reading the files users download (kohya, diffusers/PEFT,
//! ComfyUI/LightX2V; [`file`]), matching their keys to a model's weights, and applying several at
//! once, each with a strength, merged into the weights or as low-rank side paths of the linear
//! layers ([`apply`]).
//!
//! A family takes part by implementing [`Adaptable`]: it lists its weights under their checkpoint
//! names (linear layers name themselves) and says which other names published files use for them
//! (the original release's, for ComfyUI and LightX2V files). Nothing else here knows a family.
//!
//! This module must never apply part of a file silently: a key that matches no weight fails the
//! whole application, by name, before any weight changes. Changing the LoRAs of a model restores
//! the touched weights from the memory-mapped checkpoint (never by subtracting the old delta), so
//! any sequence of changes ends where applying the last set alone would.

mod apply;
mod file;

pub use apply::{Adaptable, Lora, LoraMode, LoraState, Visitor, Weight};
pub use file::{LoraFile, LoraFormat};

use crate::loader::LoadError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// Opens the files `specs` name (reusing those of `opened` with the same path) and checks each
/// against the SHA-256 its spec gives. Returns the files and the specs with their SHA-256 filled
/// in, as a generation records them.
pub fn resolve_specs(
    specs: &[LoraSpec],
    opened: &[Arc<LoraFile>],
) -> anyhow::Result<(Vec<Arc<LoraFile>>, Vec<LoraSpec>)> {
    let mut files = Vec::with_capacity(specs.len());
    let mut resolved = Vec::with_capacity(specs.len());
    for spec in specs {
        let file = match opened.iter().find(|f| f.path() == spec.path) {
            Some(file) => file.clone(),
            None => Arc::new(LoraFile::open(&spec.path)?),
        };
        let sha256 = file.sha256()?.to_string();
        if let Some(expected) = &spec.sha256
            && *expected != sha256
        {
            anyhow::bail!(
                "{}: SHA-256 is {sha256}, but the generation asks for {expected}",
                spec.path.display()
            );
        }
        resolved.push(LoraSpec {
            sha256: Some(sha256),
            ..spec.clone()
        });
        files.push(file);
    }
    Ok((files, resolved))
}

/// Applies `specs` to `model`, the one transformer of the pipeline `name`, in `mode`, replacing
/// what was applied before; `opened` keeps the mapped files between generations. Returns the specs
/// with each file's SHA-256. A spec with a strength per expert (Wan 2.2's two) is refused.
pub fn apply_specs<M: Adaptable>(
    name: &str,
    model: &mut M,
    specs: &[LoraSpec],
    opened: &mut Vec<Arc<LoraFile>>,
    mode: LoraMode,
) -> anyhow::Result<Vec<LoraSpec>> {
    if let Some(spec) = specs.iter().find(|spec| spec.strength_2.is_some()) {
        anyhow::bail!(
            "{name}: `{}` gives two strengths (HIGH,LOW), but this pipeline has one transformer",
            spec.path.display()
        );
    }
    let (files, resolved) = resolve_specs(specs, opened)?;
    let loras: Vec<Lora> = files
        .iter()
        .zip(specs)
        .map(|(file, spec)| Lora {
            file: file.clone(),
            strength: spec.strength,
        })
        .collect();
    anyhow::Context::with_context(model.set_loras(&loras, mode), || {
        format!("{name}: transformer")
    })?;
    *opened = files;
    Ok(resolved)
}

/// Why a LoRA could not be applied. Each variant names the file, and the key or weight at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(
        "{}: {} key(s) match no weight of {class}: {}",
        path.display(), keys.len(), list(keys)
    )]
    Unmatched {
        path: PathBuf,
        class: &'static str,
        keys: Vec<String>,
    },
    #[error(
        "{}: not a LoRA for {class}: none of its {keys} keys names one of its weights; {looks_like}",
        path.display()
    )]
    Foreign {
        path: PathBuf,
        class: &'static str,
        keys: usize,
        /// "its keys look like a LoRA for FLUX.1 (…)", or the first keys when nothing is recognised.
        looks_like: String,
    },
    #[error("{}: `{key}` has no `{missing}` to pair with", path.display())]
    IncompletePair {
        path: PathBuf,
        key: String,
        missing: &'static str,
    },
    #[error(
        "{}: `{}` has shape {:?}, which does not fit {} weight `{}` of shape {:?}",
        .0.path.display(), .0.key, .0.found, .0.class, .0.weight, .0.expected
    )]
    Shape(Box<ShapeMismatch>),
    #[error("{}: {reason}", path.display())]
    Unsupported { path: PathBuf, reason: String },
    #[error("applying {}: {source}", path.display())]
    Tensor {
        path: PathBuf,
        source: candle_core::Error,
    },
}

/// A LoRA tensor that does not fit the weight its key names.
#[derive(Debug)]
pub struct ShapeMismatch {
    pub path: PathBuf,
    pub key: String,
    pub class: &'static str,
    pub weight: String,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
}

/// At most 20 names, then how many more.
fn list(keys: &[String]) -> String {
    let shown: Vec<&str> = keys.iter().take(20).map(String::as_str).collect();
    match keys.len().saturating_sub(shown.len()) {
        0 => shown.join(", "),
        more => format!("{}, and {more} more", shown.join(", ")),
    }
}

/// A LoRA chosen for a generation, as the command line takes it (`FILE[:STRENGTH]`, or
/// `FILE:HIGH,LOW` for the two experts of Wan 2.2) and as the generation record keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    pub path: PathBuf,
    /// Strength (of the high-noise expert, where a pipeline has two).
    pub strength: f64,
    /// Strength of the low-noise expert (`transformer_2`); `None`: the same as `strength`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength_2: Option<f64>,
    /// The file's SHA-256 (hex): filled in when the LoRA is applied; when given, the file must
    /// match it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl std::str::FromStr for LoraSpec {
    type Err = String;

    /// `FILE`, `FILE:STRENGTH` or `FILE:HIGH,LOW`. A path that itself holds a colon is taken
    /// whole unless what follows its last colon reads as strengths.
    fn from_str(s: &str) -> Result<Self, String> {
        let strengths = s.rsplit_once(':').and_then(|(path, tail)| {
            let parse = |v: &str| v.trim().parse::<f64>().ok().filter(|v| v.is_finite());
            let (high, low) = match tail.split_once(',') {
                Some((high, low)) => (parse(high)?, Some(parse(low)?)),
                None => (parse(tail)?, None),
            };
            Some((path, high, low))
        });
        let (path, strength, strength_2) = strengths.unwrap_or((s, 1.0, None));
        if path.is_empty() {
            return Err(format!("`{s}`: expected FILE[:STRENGTH] or FILE:HIGH,LOW"));
        }
        Ok(Self {
            path: PathBuf::from(path),
            strength,
            strength_2,
            sha256: None,
        })
    }
}
