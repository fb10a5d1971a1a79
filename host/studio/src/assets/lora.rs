//! LoRA files in the library: a `.safetensors` file is imported as a `lora` asset only when the
//! engine reads it as one ([`LoraFile::open`]: a valid header and LoRA tensors grouped by module).
//! What the file is (key format, modules, the family its keys name, and so which of the
//! studio's models it adapts) is recorded with the asset.

use crate::error::{Result, StudioError};
use serde::{Deserialize, Serialize};
use std::path::Path;
use utoipa::ToSchema;
use videosdgx_engine::lora::LoraFile;

pub const MIME: &str = "application/x-safetensors";

/// Families whose LoRAs adapt an image model (looks and keyframes); every other LoRA adapts the
/// video model of the shots. These are [`LoraFile::family`]'s names.
const IMAGE_FAMILIES: &[&str] = &[
    "FLUX.1 or FLUX.2",
    "Qwen-Image",
    "Stable Diffusion / SDXL (UNet)",
];

/// Which of the studio's models a LoRA adapts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LoraTarget {
    /// The video model a shot is generated with.
    Video,
    /// The image model that makes character looks and keyframes.
    Image,
}

/// What a LoRA asset is, read from its keys at import.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LoraInfo {
    /// Key convention: `kohya`, `comfy_ui` or `diffusers`.
    pub format: String,
    /// Modules (layers) it adapts.
    pub modules: usize,
    /// The model family its keys name (`Wan`, `FLUX.1 or FLUX.2`, `LTX-2`, ...), when they tell.
    pub family: Option<String>,
    /// The studio model it applies to: image-model families adapt looks and keyframes, the
    /// others the shots' video model.
    pub target: LoraTarget,
}

/// Whether `name` is imported as a LoRA (by its extension: safetensors has no magic bytes).
pub fn is_lora_name(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".safetensors")
}

/// Reads the file at `path` (named `name` in messages) as a LoRA, or refuses it with
/// [`StudioError::NotMedia`] saying why.
pub fn probe(path: &Path, name: &str) -> Result<LoraInfo> {
    // The engine's messages name the staging file; the user knows the file by its name.
    let refuse = |why: String| {
        let why = why.replace(&path.display().to_string(), name);
        StudioError::NotMedia(format!("{name}: not a LoRA file: {why}"))
    };
    let file = LoraFile::open(path).map_err(|e| refuse(e.to_string()))?;
    if file.module_count() == 0 {
        return Err(refuse(
            "it holds no LoRA tensors (`….lora_down.weight`/`lora_up.weight`, \
             `lora_A`/`lora_B`, `.diff`); is it a model checkpoint?"
                .into(),
        ));
    }
    let format = serde_json::to_value(file.format())
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let family = file.family();
    Ok(LoraInfo {
        format,
        modules: file.module_count(),
        family: family.map(str::to_string),
        target: if family.is_some_and(|f| IMAGE_FAMILIES.contains(&f)) {
            LoraTarget::Image
        } else {
            LoraTarget::Video
        },
    })
}

/// A LoRA file of a hub repository to pull into the library.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HubLora {
    /// `org/name` of the repository.
    pub repo_id: String,
    /// The file's path in the repository (a `.safetensors` LoRA).
    pub file: String,
    /// Branch, tag or commit; `main` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

impl HubLora {
    /// The library name: the file's own name.
    fn name(&self) -> Result<String> {
        let name = self.file.rsplit('/').next().unwrap_or_default();
        if !is_lora_name(name) {
            return Err(StudioError::Invalid(format!(
                "{}: a LoRA is a `.safetensors` file",
                self.file
            )));
        }
        Ok(name.to_string())
    }
}

/// Downloads `wanted` through `hub` (into the models' hub cache under `data_dir`, where a cut
/// download resumes) and imports it as a LoRA asset, checked like an upload. Without a caption
/// of its own the asset's says where it came from (repository, file, commit).
pub fn pull(
    library: &super::AssetLibrary,
    db: &crate::db::Db,
    data_dir: &Path,
    hub: &videosdgx_engine::hub::Hub,
    wanted: &HubLora,
    meta: super::NewAsset,
    progress: &mut dyn FnMut(&videosdgx_engine::hub::PullProgress),
) -> Result<(super::Asset, bool)> {
    let name = wanted.name()?;
    let models = crate::models::models_dir(data_dir);
    let (path, source) = hub
        .pull_file(
            &wanted.repo_id,
            wanted.revision.as_deref(),
            &wanted.file,
            &models,
            progress,
        )
        .map_err(|e| StudioError::Invalid(format!("pulling {name}: {e:#}")))?;
    let caption = if meta.caption.trim().is_empty() {
        format!(
            "{} {} at {} ({})",
            source.repo_id, wanted.file, source.commit, source.endpoint
        )
    } else {
        meta.caption
    };
    let meta = super::NewAsset {
        name,
        caption,
        ..meta
    };
    library.import_file(db, &path, &meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(rel: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(rel)
    }

    #[test]
    fn wan_and_flux_loras_are_told_apart() {
        let wan = probe(&fixture("lora/kohya.safetensors"), "k.safetensors").unwrap();
        assert_eq!(
            (wan.format.as_str(), wan.family.as_deref(), wan.target),
            ("kohya", Some("Wan"), LoraTarget::Video)
        );
        assert!(wan.modules > 0);
        let comfy = probe(&fixture("lora/comfy.safetensors"), "c.safetensors").unwrap();
        assert_eq!(
            (comfy.format.as_str(), comfy.target),
            ("comfy_ui", LoraTarget::Video)
        );
        let flux = probe(
            &fixture("components/flux2-klein-tiny/lora/peft.safetensors"),
            "f.safetensors",
        )
        .unwrap();
        assert_eq!(
            (flux.family.as_deref(), flux.target),
            (Some("FLUX.1 or FLUX.2"), LoraTarget::Image)
        );
    }

    #[test]
    fn non_loras_are_refused_by_name_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(fixture("lora/kohya.safetensors")).unwrap();
        let truncated = dir.path().join("stage-1");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        let err = probe(&truncated, "cut.safetensors")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cut.safetensors: not a LoRA file:"),
            "{err}"
        );
        assert!(!err.contains("stage-1"), "{err}");

        let text = dir.path().join("stage-2");
        std::fs::write(&text, b"hello, I am not tensors").unwrap();
        let err = probe(&text, "notes.safetensors").unwrap_err();
        assert!(matches!(err, StudioError::NotMedia(_)), "{err}");

        // A checkpoint of plain weights is a safetensors file but no LoRA.
        let model = fixture("lora/inputs_t2v.safetensors");
        let err = probe(&model, "model.safetensors").unwrap_err().to_string();
        assert!(err.contains("holds no LoRA tensors"), "{err}");
    }
}
