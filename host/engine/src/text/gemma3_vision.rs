//! Gemma 3's eyes (`Gemma3ForConditionalGeneration` in `models/gemma3/modeling_gemma3.py`): the
//! SigLIP vision tower and `Gemma3MultiModalProjector`, which average-pools the patch features to
//! `mm_tokens_per_image` soft tokens and projects them to the language model's width, i.e.
//! `Gemma3Model.get_image_features`. Also tells which key layout a Gemma 3 checkpoint uses. The
//! language model splices these features in place of its image tokens; this module never runs
//! the language model nor builds prompts.

use super::gemma3::Gemma3Config;
use super::siglip::SiglipVisionModel;
use crate::models::RmsNorm;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use std::path::Path;

/// Where each part of a Gemma 3 checkpoint keeps its keys, for `VarBuilder::pp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gemma3Prefixes {
    /// Root of the SigLIP tower's `embeddings.…`, `encoder.…`, `post_layernorm.…`.
    pub vision_tower: &'static str,
    /// Root of `mm_input_projection_weight` and `mm_soft_emb_norm.weight`.
    pub multi_modal_projector: &'static str,
    /// Root of the language model's `embed_tokens.…`, `layers.…`, `norm.…`.
    pub language_model: &'static str,
}

/// Each part's candidate prefixes, probed with a key only that part has: the published
/// google/gemma-3-*-it files first, then what transformers 5 writes (`save_pretrained` drops the
/// tower's `vision_model.`; its in-memory state dict puts everything under `model.`).
const LAYOUTS: [(&str, &str, &[&str]); 3] = [
    (
        "vision tower",
        "embeddings.patch_embedding.weight",
        &[
            "vision_tower.vision_model",
            "vision_tower",
            "model.vision_tower.vision_model",
            "model.vision_tower",
        ],
    ),
    (
        "multi-modal projector",
        "mm_input_projection_weight",
        &["multi_modal_projector", "model.multi_modal_projector"],
    ),
    (
        "language model",
        "embed_tokens.weight",
        &["language_model.model", "model.language_model"],
    ),
];

/// The key layout of a Gemma 3 checkpoint, from a test of which tensor names it holds (e.g.
/// `|k| vb.contains_tensor(k)`). Fails naming the part and the keys looked for when a part is absent.
pub fn gemma3_prefixes(has_key: impl Fn(&str) -> bool) -> Result<Gemma3Prefixes> {
    let mut found = [""; 3];
    for (slot, (part, probe, candidates)) in found.iter_mut().zip(LAYOUTS) {
        *slot = candidates
            .iter()
            .copied()
            .find(|prefix| has_key(&format!("{prefix}.{probe}")))
            .ok_or_else(|| {
                let keys: Vec<String> = candidates
                    .iter()
                    .map(|p| format!("`{p}.{probe}`"))
                    .collect();
                candle_core::Error::Msg(format!(
                    "not a Gemma 3 vision-language checkpoint: no {part} weights (looked for {})",
                    keys.join(", ")
                ))
            })?;
    }
    Ok(Gemma3Prefixes {
        vision_tower: found[0],
        multi_modal_projector: found[1],
        language_model: found[2],
    })
}

pub struct Gemma3MultiModalProjector {
    mm_input_projection_weight: Tensor,
    mm_soft_emb_norm: RmsNorm,
    patches_per_image: usize,
    kernel_size: usize,
}

impl Gemma3MultiModalProjector {
    pub fn new(cfg: &Gemma3Config, vb: VarBuilder) -> Result<Self> {
        let vision = &cfg.vision_config;
        let tokens = cfg.mm_tokens_per_image;
        let patches_per_image = vision.image_size / vision.patch_size.max(1);
        let tokens_per_side = tokens.isqrt();
        // The reference pools with kernel = stride = patches / tokens per side; anything but an
        // exact square tiling would give another token count than the prompt reserves.
        if tokens_per_side * tokens_per_side != tokens
            || !patches_per_image.is_multiple_of(tokens_per_side)
        {
            candle_core::bail!(
                "mm_tokens_per_image {tokens} must be a square whose side divides the \
                 {patches_per_image} patches per side (image_size {} / patch_size {})",
                vision.image_size,
                vision.patch_size
            );
        }
        Ok(Self {
            mm_input_projection_weight: vb.get(
                (vision.hidden_size, cfg.text_config.hidden_size),
                "mm_input_projection_weight",
            )?,
            mm_soft_emb_norm: RmsNorm::gemma(
                vision.hidden_size,
                vision.layer_norm_eps,
                vb.pp("mm_soft_emb_norm"),
            )?,
            patches_per_image,
            kernel_size: patches_per_image / tokens_per_side,
        })
    }

    /// `[B, patches, vision_hidden]` -> `[B, mm_tokens_per_image, text_hidden]`.
    pub fn forward(&self, vision_outputs: &Tensor) -> Result<Tensor> {
        let (b, _, d) = vision_outputs.dims3()?;
        let p = self.patches_per_image;
        let pooled = vision_outputs
            .transpose(1, 2)?
            .reshape((b, d, p, p))?
            .avg_pool2d(self.kernel_size)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let normed = self.mm_soft_emb_norm.forward(&pooled)?;
        normed.broadcast_matmul(&self.mm_input_projection_weight)
    }
}

/// The vision tower and projector of a Gemma 3 checkpoint.
pub struct Gemma3Vision {
    vision_tower: SiglipVisionModel,
    multi_modal_projector: Gemma3MultiModalProjector,
}

impl Gemma3Vision {
    /// `vb` sits at the checkpoint's root; the key layout is found by [`gemma3_prefixes`].
    pub fn new(cfg: &Gemma3Config, vb: VarBuilder) -> Result<Self> {
        let prefixes = gemma3_prefixes(|key| vb.contains_tensor(key))?;
        Ok(Self {
            vision_tower: SiglipVisionModel::new(&cfg.vision_config, vb.pp(prefixes.vision_tower))?,
            multi_modal_projector: Gemma3MultiModalProjector::new(
                cfg,
                vb.pp(prefixes.multi_modal_projector),
            )?,
        })
    }

    /// Reads `dir/config.json` and the memory-mapped weights of a Gemma 3 checkpoint folder.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        use anyhow::Context;
        let cfg: Gemma3Config = crate::loader::read_config(&dir.join("config.json"))?;
        let vb = crate::loader::open_weights(dir, dtype, device)?;
        Self::new(&cfg, vb)
            .with_context(|| format!("loading Gemma 3 vision from {}", dir.display()))
    }

    pub fn vision_tower(&self) -> &SiglipVisionModel {
        &self.vision_tower
    }

    /// `get_image_features(pixel_values).pooler_output`: `[B, mm_tokens_per_image, text_hidden]`
    /// soft tokens for `pixel_values` `[B, 3, image_size, image_size]`, in the weights' dtype.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.multi_modal_projector
            .forward(&self.vision_tower.forward(pixel_values)?)
    }
}
