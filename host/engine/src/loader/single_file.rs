//! Single-file checkpoints in the original release's key names, read as diffusers'
//! `from_single_file` converts them (`loaders/single_file_utils.py`): the FLUX.1 transformer
//! (`flux1-dev.safetensors`, `flux1-schnell.safetensors`:
//! `convert_flux_transformer_checkpoint_to_diffusers`) and the FLUX.2 one (`flux2-dev.safetensors`:
//! `convert_flux2_transformer_checkpoint_to_diffusers`), and the latent-diffusion VAE layout of
//! FLUX.1's `ae.safetensors` (`convert_ldm_vae_checkpoint`). Nothing is converted up front: a
//! `VarBuilder` backend answers each diffusers name with the original tensor it comes from (a
//! fused q/k/v projection split by rows, the output norm's shift/scale halves swapped, a 1x1
//! convolution read as a linear layer), so the
//! file is read once, as for a diffusers folder. Files carry no config: the dimensions are read
//! from the tensor shapes, and a `config.json` beside the weights (a pipeline's `transformer/`
//! folder holding the single file) takes precedence.
//!
//! LTX-2's checkpoints (`ltx-2-19b-dev.safetensors`, `-distilled`, their `-fp8` variants) hold
//! several components under prefixes, read as `convert_ltx2_transformer_to_diffusers`,
//! `convert_ltx2_vae_to_diffusers`, `convert_ltx2_audio_vae_to_diffusers` and the vocoder renames
//! of diffusers' `scripts/convert_ltx2_to_diffusers.py` map them; a component's config is the
//! `<subfolder>/config.json` of a diffusers LTX-2 folder the file lies in (as `from_single_file`
//! takes it from the hub's `Lightricks/LTX-2`), else the reference's defaults, which are the
//! published model's. The `-fp8` files store float8 (e4m3) weights with a per-tensor
//! `weight_scale` (and an `input_scale` for the fp8 matmul kernels): each is dequantized on its
//! own at load, so memory stays at the loaded model's size.

use super::{Checkpoint, LoadError};
use crate::families::flux::transformer::FluxTransformerConfig;
use crate::families::flux2::transformer::Flux2TransformerConfig;
use crate::families::wan::transformer::WanTransformerConfig;
use crate::models::autoencoder_kl::AutoencoderKLConfig;
use crate::models::nvfp4::{self, Nvfp4Layout};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::{SimpleBackend, VarBuilder};
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use videosdgx_kernels::reference::NVFP4_BLOCK;

/// The quantized weights' scales beside them: float8 (`-fp8` files; ComfyUI's `scale_weight`) and
/// NVFP4 (ModelOpt's and ComfyUI's `weight_scale_2`, LightX2V's global scales; its `alpha` is
/// dropped by the Wan layout alone, where no parameter has that name).
const SCALE_SUFFIXES: [&str; 6] = [
    ".input_scale",
    ".weight_scale",
    ".scale_weight",
    ".weight_scale_2",
    ".weight_global_scale",
    ".input_global_scale",
];

/// The original layouts this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginalLayout {
    /// Black Forest Labs' FLUX.1 transformer (`double_blocks.N.img_attn.qkv`, `vector_in`, ...).
    Flux1Transformer,
    /// Black Forest Labs' FLUX.2 transformer (`double_stream_modulation_img`, no `vector_in`).
    Flux2Transformer,
    /// The latent-diffusion `AutoencoderKL` (`encoder.down.N.block.M`, `mid.attn_1`), as FLUX.1's
    /// `ae.safetensors` and Stable Diffusion checkpoints have it.
    LdmVae,
    /// A whole LTX-2 checkpoint: the transformer (`model.diffusion_model.`), the video VAE
    /// (`vae.`), the audio VAE (`audio_vae.`) and the vocoder (`vocoder.`); each is read as one
    /// of the `Ltx2*` layouts below ([`SingleFile::component`]).
    Ltx2,
    Ltx2Transformer,
    Ltx2VideoVae,
    Ltx2AudioVae,
    Ltx2Vocoder,
    /// `ltx-2-spatial-upscaler-x2-1.0.safetensors`: diffusers' own names, no prefix.
    Ltx2LatentUpsampler,
    /// The Wan 2.1/2.2 release's transformer (`blocks.N.self_attn.q`, `head.head`), as the
    /// Comfy-Org repackaged files, Kijai's scaled FP8 files (`scale_weight`, a `scaled_fp8`
    /// marker) and LightX2V's FP8 files (`weight_scale` per channel) keep it.
    WanTransformer,
}

impl OriginalLayout {
    /// The diffusers class the layout converts to.
    pub fn class_name(self) -> &'static str {
        match self {
            Self::Flux1Transformer => "FluxTransformer2DModel",
            Self::Flux2Transformer => "Flux2Transformer2DModel",
            Self::LdmVae => "AutoencoderKL",
            Self::Ltx2 => "LTX2Pipeline",
            Self::Ltx2Transformer => "LTX2VideoTransformer3DModel",
            Self::Ltx2VideoVae => "AutoencoderKLLTX2Video",
            Self::Ltx2AudioVae => "AutoencoderKLLTX2Audio",
            Self::Ltx2Vocoder => "LTX2Vocoder",
            Self::Ltx2LatentUpsampler => "LTX2LatentUpsamplerModel",
            Self::WanTransformer => "WanTransformer3DModel",
        }
    }

    /// The prefix of an LTX-2 component in the checkpoint and its diffusers subfolder (where
    /// its config is); `None` for layouts that are not a component of an LTX-2 checkpoint.
    pub fn ltx2_component(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::Ltx2Transformer => Some(("model.diffusion_model.", "transformer")),
            Self::Ltx2VideoVae => Some(("vae.", "vae")),
            Self::Ltx2AudioVae => Some(("audio_vae.", "audio_vae")),
            Self::Ltx2Vocoder => Some(("vocoder.", "vocoder")),
            _ => None,
        }
    }

    /// The component layout of an LTX-2 checkpoint that the diffusers class `class_name` reads.
    pub fn for_ltx2_class(class_name: &str) -> Option<Self> {
        [
            Self::Ltx2Transformer,
            Self::Ltx2VideoVae,
            Self::Ltx2AudioVae,
            Self::Ltx2Vocoder,
        ]
        .into_iter()
        .find(|layout| layout.class_name() == class_name)
    }

    /// Tensors of the file the component's conversion drops: the text connectors inside the
    /// transformer's prefix (diffusers reads them as `LTX2TextConnectors`), the VAE statistics
    /// that have no diffusers buffer, the quantized weights' scales (read with their weights) and
    /// ComfyUI's quantization markers (`scaled_fp8`, each layer's `comfy_quant`).
    fn dropped(self, key: &str) -> bool {
        SCALE_SUFFIXES.iter().any(|scale| key.ends_with(scale))
            || key.ends_with("scaled_fp8")
            || key.ends_with(".comfy_quant")
            || match self {
                Self::Ltx2Transformer => {
                    key.contains("video_embeddings_connector")
                        || key.contains("audio_embeddings_connector")
                }
                Self::Ltx2VideoVae | Self::Ltx2AudioVae => {
                    key.contains("per_channel_statistics.channel")
                        || key.contains("per_channel_statistics.mean-of-stds")
                }
                Self::WanTransformer => key.ends_with(".alpha"),
                _ => false,
            }
    }
}

/// Which rows of the original tensor a diffusers tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Whole,
    /// Rows `[i·d, (i+1)·d)` of a fused projection (`d` the model width).
    Rows(usize),
    /// Rows `[i·d, end)`: the MLP input after q, k, v in FLUX.1's `linear1`.
    RowsFrom(usize),
    /// `swap_scale_shift`: the two halves of the rows exchanged.
    SwapHalves,
    /// `conv_attn_to_linear`: a 1x1 convolution's kernel as a linear weight.
    Squeeze,
}

/// An opened checkpoint in one of the original layouts.
pub struct SingleFile {
    checkpoint: Arc<Checkpoint>,
    layout: OriginalLayout,
    /// `model.diffusion_model.` (`first_stage_model.`, `vae.` for a VAE) where the file keeps
    /// the training wrapper's prefix.
    prefix: &'static str,
    /// The model width (`img_in.weight` rows), by which fused projections split.
    width: usize,
    /// A VAE's decoder up blocks, which the original numbers from the bottom (LTX-2's video
    /// VAE: its original decoder blocks, the mid block and the upsamplers counted).
    up_blocks: usize,
    /// LTX-2's video VAE: the original encoder blocks (the downsamplers and the mid block
    /// counted), the last being the mid block.
    down_blocks: usize,
}

/// Where a component's weights come from.
pub enum Weights {
    /// Diffusers names.
    Diffusers(Arc<Checkpoint>),
    /// Original names, mapped.
    Original(SingleFile),
}

/// Opens the weights at `path`: a component folder, or one safetensors file, in either naming.
pub fn open(path: &Path) -> Result<Weights, LoadError> {
    let checkpoint = Arc::new(if path.is_file() {
        Checkpoint::open_file(path)?
    } else {
        Checkpoint::open(path)?
    });
    Ok(match SingleFile::detect(checkpoint.clone())? {
        Some(file) => Weights::Original(file),
        None => Weights::Diffusers(checkpoint),
    })
}

/// The LTX-2 checkpoint file (`ltx-2-19b-dev.safetensors`) at the top of a pipeline folder, which
/// then gives the transformer, the VAEs and the vocoder (their folders need only config.json);
/// `None` where there is none, an error where there are several.
pub fn checkpoint_in(dir: &Path) -> Result<Option<std::path::PathBuf>, LoadError> {
    let io = |source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_file() && detect_file(&path)? == Some(OriginalLayout::Ltx2) {
            found.push(path);
        }
    }
    found.sort();
    match found.len() {
        0 | 1 => Ok(found.pop()),
        _ => Err(LoadError::BadConfig {
            path: dir.to_path_buf(),
            reason: format!(
                "several LTX-2 checkpoint files ({}); keep the one to run",
                found
                    .iter()
                    .filter_map(|p| p.file_name()?.to_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// How [`load_model`] makes a model: the config reader's rules and the constructor.
pub struct Builder<C, M> {
    pub layout: OriginalLayout,
    /// The config a bare original file implies (its shapes).
    pub infer: fn(&SingleFile) -> Result<C, LoadError>,
    /// Checks a config before building, the error naming what is wrong in it.
    pub check: fn(&C) -> Result<(), String>,
    pub build: fn(&C, VarBuilder<'static>) -> candle_core::Result<M>,
}

/// Builds a model of the class `builder.layout` converts to from `path` (a folder or one file)
/// in either naming. The config is `path/config.json` for a folder that has one, else (a bare
/// original file) what `builder.infer` reads from the shapes. Returns the model and, for
/// diffusers weights, the checkpoint that stays mapped for LoRAs to restore from.
pub fn load_model<C: DeserializeOwned, M>(
    path: &Path,
    builder: Builder<C, M>,
    dtype: DType,
    device: &Device,
) -> anyhow::Result<(M, Option<Arc<Checkpoint>>)> {
    use anyhow::Context;
    let layout = builder.layout;
    let context = || format!("loading {} from {}", layout.class_name(), path.display());
    let config = path.join("config.json");
    let config = (path.is_dir() && config.is_file()).then_some(config);
    let checked = |cfg: C, source: &Path| -> Result<C, LoadError> {
        (builder.check)(&cfg).map_err(|reason| LoadError::BadConfig {
            path: source.to_path_buf(),
            reason,
        })?;
        Ok(cfg)
    };
    match open(path)? {
        Weights::Diffusers(_) if path.is_file() => anyhow::bail!(
            "{}: not a single-file checkpoint holding a {} (none of the original layouts' keys); \
             pass the component folder with its config.json instead",
            path.display(),
            layout.class_name()
        ),
        Weights::Diffusers(checkpoint) => {
            let config = config.unwrap_or_else(|| path.join("config.json"));
            let cfg = checked(super::read_config(&config)?, &config)?;
            let vb = checkpoint.clone().shared_var_builder(dtype, device);
            Ok((
                (builder.build)(&cfg, vb).with_context(context)?,
                Some(checkpoint),
            ))
        }
        Weights::Original(file) => {
            let (file, config) = match (file.layout, layout.ltx2_component()) {
                (OriginalLayout::Ltx2, Some((_, subfolder))) => {
                    // A component folder's config, else that of the diffusers LTX-2 folder the
                    // file lies in.
                    let beside = path
                        .parent()
                        .map(|dir| dir.join(subfolder).join("config.json"))
                        .filter(|config| config.is_file());
                    (file.component(layout)?, config.or(beside))
                }
                _ => (file, config),
            };
            if file.layout != layout {
                anyhow::bail!(
                    "{}: the file holds a {} in the original layout, not a {}",
                    file.path().display(),
                    file.layout.class_name(),
                    layout.class_name()
                );
            }
            // Where no config was found for an LTX-2 component, the error says where one goes.
            let hint = match (config.is_none(), layout.ltx2_component()) {
                (true, Some((_, subfolder))) => format!(
                    " (no {subfolder}/config.json beside the file: the published model's config \
                     was assumed; put the file in a diffusers LTX-2 folder for another)"
                ),
                _ => String::new(),
            };
            let cfg = match config {
                Some(config) => checked(super::read_config(&config)?, &config)?,
                None => checked((builder.infer)(&file)?, file.path())?,
            };
            let (vb, used) = file.var_builder(dtype, device);
            let model =
                (builder.build)(&cfg, vb).with_context(|| format!("{}{hint}", context()))?;
            file.check_all_used(&used)?;
            Ok((model, None))
        }
    }
}

/// The original layout of the safetensors file at `path`, from its header alone; `None` for
/// other files (a finishing model's state dict, a PyTorch pickle).
pub fn detect_file(path: &Path) -> Result<Option<OriginalLayout>, LoadError> {
    if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return Ok(None);
    }
    let checkpoint = Arc::new(Checkpoint::open_file(path)?);
    Ok(SingleFile::detect(checkpoint)?.map(|file| file.layout))
}

impl SingleFile {
    /// Recognises an original layout by its marker tensors; `None` for anything else.
    pub fn detect(checkpoint: Arc<Checkpoint>) -> Result<Option<Self>, LoadError> {
        if let Some(layout) = Self::detect_ltx2(&checkpoint) {
            return Ok(Some(Self {
                checkpoint,
                layout,
                prefix: "",
                width: 0,
                up_blocks: 0,
                down_blocks: 0,
            }));
        }
        let prefix = ["model.diffusion_model.", "first_stage_model.", "vae."]
            .into_iter()
            .find(|prefix| {
                [
                    "img_in.weight",
                    "encoder.conv_in.weight",
                    "patch_embedding.weight",
                ]
                .iter()
                .any(|key| checkpoint.entry(&format!("{prefix}{key}")).is_some())
            })
            .unwrap_or("");
        let has = |key: &str| checkpoint.entry(&format!("{prefix}{key}")).is_some();
        let layout = if has("blocks.0.self_attn.q.weight") && has("patch_embedding.weight") {
            OriginalLayout::WanTransformer
        } else if has("double_blocks.0.img_attn.qkv.weight") && has("img_in.weight") {
            if has("vector_in.in_layer.weight") {
                OriginalLayout::Flux1Transformer
            } else if has("double_stream_modulation_img.lin.weight") {
                OriginalLayout::Flux2Transformer
            } else {
                return Ok(None);
            }
        } else if has("encoder.down.0.block.0.conv1.weight")
            && has("decoder.up.0.block.0.conv1.weight")
        {
            OriginalLayout::LdmVae
        } else {
            return Ok(None);
        };
        let mut file = Self {
            checkpoint,
            layout,
            prefix,
            width: 0,
            up_blocks: 0,
            down_blocks: 0,
        };
        match layout {
            OriginalLayout::LdmVae => file.up_blocks = file.count("decoder.up"),
            OriginalLayout::WanTransformer => {}
            _ => file.width = file.shape("img_in.weight")?[0],
        }
        Ok(Some(file))
    }

    /// `CHECKPOINT_KEY_NAMES["ltx2"]` of `infer_diffusers_model_type` for a whole checkpoint;
    /// the latent upsampler by its first and last convolutions and the upsampler between.
    fn detect_ltx2(checkpoint: &Checkpoint) -> Option<OriginalLayout> {
        const LTX2: [&str; 3] = [
            "model.diffusion_model.av_ca_a2v_gate_adaln_single.emb.timestep_embedder.linear_1.weight",
            "vae.per_channel_statistics.mean-of-means",
            "audio_vae.per_channel_statistics.mean-of-means",
        ];
        let has = |key: &str| checkpoint.entry(key).is_some();
        if LTX2.iter().any(|key| has(key)) {
            Some(OriginalLayout::Ltx2)
        } else if has("initial_conv.weight")
            && has("final_conv.weight")
            && checkpoint
                .tensors()
                .any(|(name, _)| name.starts_with("upsampler."))
        {
            Some(OriginalLayout::Ltx2LatentUpsampler)
        } else {
            None
        }
    }

    /// One component of a whole LTX-2 checkpoint, as its own layout; an error naming the file
    /// where it holds no tensor under the component's prefix.
    pub fn component(&self, layout: OriginalLayout) -> Result<Self, LoadError> {
        let Some((prefix, _)) = layout.ltx2_component() else {
            return Err(self.not_a_component(layout, "is not a component of an LTX-2 checkpoint"));
        };
        if self.layout != OriginalLayout::Ltx2 {
            return Err(self.not_a_component(layout, "the file is not an LTX-2 checkpoint"));
        }
        let mut file = Self {
            checkpoint: self.checkpoint.clone(),
            layout,
            prefix,
            width: 0,
            up_blocks: 0,
            down_blocks: 0,
        };
        if file.count_all() == 0 {
            return Err(self.not_a_component(
                layout,
                &format!("the LTX-2 checkpoint holds no tensor under `{prefix}`"),
            ));
        }
        if layout == OriginalLayout::Ltx2VideoVae {
            file.down_blocks = file.count("encoder.down_blocks");
            file.up_blocks = file.count("decoder.up_blocks");
        }
        Ok(file)
    }

    fn not_a_component(&self, layout: OriginalLayout, reason: &str) -> LoadError {
        LoadError::BadConfig {
            path: self.path().to_path_buf(),
            reason: format!("no {} in it: {reason}", layout.class_name()),
        }
    }

    /// Whether the stored tensor `name` belongs to the layout: under its prefix and not one its
    /// conversion drops.
    pub fn holds(&self, name: &str) -> bool {
        name.starts_with(self.prefix) && !self.layout.dropped(name)
    }

    /// How many tensors lie under the prefix.
    fn count_all(&self) -> usize {
        self.checkpoint
            .tensors()
            .filter(|(name, _)| name.starts_with(self.prefix))
            .count()
    }

    pub fn layout(&self) -> OriginalLayout {
        self.layout
    }

    /// The file (the first, for a sharded one), for messages.
    pub fn path(&self) -> &Path {
        self.checkpoint.file_path(0)
    }

    /// A `VarBuilder` serving diffusers names, and a record of the original tensors it read
    /// (for [`Self::check_all_used`]).
    pub fn var_builder(&self, dtype: DType, device: &Device) -> (VarBuilder<'static>, Used) {
        let used = Used(Arc::new(Mutex::new(BTreeSet::new())));
        let backend = Mapped {
            checkpoint: self.checkpoint.clone(),
            layout: self.layout,
            prefix: self.prefix,
            width: self.width,
            up_blocks: self.up_blocks,
            down_blocks: self.down_blocks,
            used: used.clone(),
        };
        (
            VarBuilder::from_backend(Box::new(backend), dtype, device.clone()),
            used,
        )
    }

    /// Whether diffusers' `name` comes from a tensor of the file, or from a marker of its
    /// header ([`Checkpoint::contains`]).
    pub fn contains(&self, name: &str) -> bool {
        source(self.layout, self.prefix, self.blocks(), name)
            .is_some_and(|(key, _)| self.checkpoint.contains(&key))
    }

    /// The stored tensor that diffusers' `name` comes from and the shape `name` has once its
    /// part is taken, from the header alone (what `verify` compares with the config's shapes);
    /// `None` where the file has no such tensor.
    pub fn mapped(&self, name: &str) -> Option<(String, Vec<usize>)> {
        let (key, part) = source(self.layout, self.prefix, self.blocks(), name)?;
        let shape = &self.checkpoint.entry(&key)?.shape;
        // A per-tensor scale serves every part of its weight (as `Mapped::load` reads it).
        if shape.iter().product::<usize>() == 1 && SCALE_SUFFIXES.iter().any(|s| name.ends_with(s))
        {
            return Some((key, shape.clone()));
        }
        let (&stored_rows, rest) = shape.split_first().unwrap_or((&0, &[]));
        // A part of swizzled NVFP4 block scales is cut from the logical rows and tiled again
        // (see `Mapped::load`).
        let tiled = (part != Part::Whole)
            .then(|| swizzled_scales(&self.checkpoint, &key))
            .flatten();
        let rows = tiled.map_or(stored_rows, |(rows, _)| rows);
        let tile = |rows: usize| match tiled {
            Some(_) => rows.div_ceil(128) * 128,
            None => rows,
        };
        let d = self.width;
        let shape = match part {
            Part::Whole | Part::SwapHalves => shape.clone(),
            Part::Rows(_) => [&[tile(d)], rest].concat(),
            Part::RowsFrom(i) => [&[tile(rows.saturating_sub(i * d))], rest].concat(),
            Part::Squeeze => shape.iter().take(2).copied().collect(),
        };
        Some((key, shape))
    }

    /// After a model was built: every tensor of the file must have been read, else the file
    /// holds something the model does not (another variant, a truncated conversion).
    pub fn check_all_used(&self, used: &Used) -> Result<(), LoadError> {
        let used = used.0.lock().map_err(|_| LoadError::Tensor {
            tensor: String::new(),
            file: self.path().to_path_buf(),
            reason: "the record of read tensors is poisoned".into(),
        })?;
        match self
            .checkpoint
            .tensors()
            .map(|(name, _)| name)
            .filter(|name| self.holds(name))
            .find(|name| !used.contains(*name))
        {
            Some(unknown) => Err(LoadError::Tensor {
                tensor: unknown.to_string(),
                file: self
                    .checkpoint
                    .file_path(self.checkpoint.entry(unknown).map_or(0, |e| e.file))
                    .to_path_buf(),
                reason: format!(
                    "not a tensor of a {} in the original layout",
                    self.layout.class_name()
                ),
            }),
            None => Ok(()),
        }
    }

    /// The block counts the layout's names depend on.
    fn blocks(&self) -> Blocks {
        Blocks {
            up: self.up_blocks,
            down: self.down_blocks,
        }
    }

    fn shape(&self, key: &str) -> Result<&[usize], LoadError> {
        let name = format!("{}{key}", self.prefix);
        self.checkpoint
            .entry(&name)
            .map(|entry| entry.shape.as_slice())
            .ok_or_else(|| LoadError::MissingTensor {
                tensor: name,
                dir: self.checkpoint.dir().to_path_buf(),
            })
    }

    /// How many `{group}.N.` blocks the file has.
    fn count(&self, group: &str) -> usize {
        let start = format!("{}{group}.", self.prefix);
        self.checkpoint
            .tensors()
            .filter_map(|(name, _)| name.strip_prefix(&start)?.split('.').next()?.parse().ok())
            .map(|i: usize| i + 1)
            .max()
            .unwrap_or(0)
    }

    fn has(&self, key: &str) -> bool {
        self.checkpoint
            .entry(&format!("{}{key}", self.prefix))
            .is_some()
    }

    /// The head dim, from the q norm's scale.
    fn head_dim(&self) -> Result<usize, LoadError> {
        Ok(self.shape("double_blocks.0.img_attn.norm.query_norm.scale")?[0])
    }

    /// The published models' rotary axes, which the weights do not record, scaled to the head
    /// dim: `axes` of 128.
    fn rope_axes(&self, axes: &[usize]) -> Result<Vec<usize>, LoadError> {
        let head_dim = self.head_dim()?;
        let scaled: Vec<usize> = axes.iter().map(|a| a * head_dim / 128).collect();
        if scaled.iter().any(|a| *a == 0 || a % 2 == 1) || scaled.iter().sum::<usize>() != head_dim
        {
            return Err(LoadError::BadConfig {
                path: self.path().to_path_buf(),
                reason: format!(
                    "the rotary axes of a head dim of {head_dim} cannot be inferred from the weights; put a config.json with axes_dims_rope beside them"
                ),
            });
        }
        Ok(scaled)
    }

    /// The `FluxTransformer2DModel` config the shapes imply (rotary axes 16/56/56 scaled).
    pub fn flux_config(&self) -> Result<FluxTransformerConfig, LoadError> {
        let img_in = self.shape("img_in.weight")?;
        let head_dim = self.head_dim()?;
        Ok(FluxTransformerConfig {
            patch_size: 1,
            in_channels: img_in[1],
            out_channels: Some(self.shape("final_layer.linear.weight")?[0]),
            num_layers: self.count("double_blocks"),
            num_single_layers: self.count("single_blocks"),
            attention_head_dim: head_dim,
            num_attention_heads: self.width / head_dim,
            joint_attention_dim: self.shape("txt_in.weight")?[1],
            pooled_projection_dim: self.shape("vector_in.in_layer.weight")?[1],
            guidance_embeds: self.has("guidance_in.in_layer.weight"),
            axes_dims_rope: self.rope_axes(&[16, 56, 56])?,
        })
    }

    /// The `Flux2Transformer2DModel` config the shapes imply (rotary axes 32/32/32/32 scaled,
    /// the reference's theta and eps).
    pub fn flux2_config(&self) -> Result<Flux2TransformerConfig, LoadError> {
        let img_in = self.shape("img_in.weight")?;
        let head_dim = self.head_dim()?;
        let fused = self.shape("single_blocks.0.linear1.weight")?[0];
        Ok(Flux2TransformerConfig {
            patch_size: 1,
            in_channels: img_in[1],
            out_channels: Some(self.shape("final_layer.linear.weight")?[0]),
            num_layers: self.count("double_blocks"),
            num_single_layers: self.count("single_blocks"),
            attention_head_dim: head_dim,
            num_attention_heads: self.width / head_dim,
            joint_attention_dim: self.shape("txt_in.weight")?[1],
            timestep_guidance_channels: self.shape("time_in.in_layer.weight")?[1],
            mlp_ratio: (fused - 3 * self.width) as f64 / (2 * self.width) as f64,
            axes_dims_rope: self.rope_axes(&[32, 32, 32, 32])?,
            guidance_embeds: self.has("guidance_in.in_layer.weight"),
            ..Flux2TransformerConfig::default()
        })
    }
}

impl SingleFile {
    /// The `WanTransformer3DModel` config the shapes imply. The head dim is not recorded: 128, as
    /// every published Wan model has it; the rest are the release's constants (the rotary
    /// table's length, the norms' eps, q/k norms across the heads).
    pub fn wan_config(&self) -> Result<WanTransformerConfig, LoadError> {
        let patch = self.shape("patch_embedding.weight")?;
        let &[dim, in_channels, ref patch_size @ ..] = patch else {
            return Err(self.bad_shape("patch_embedding.weight", "a 3-D convolution kernel"));
        };
        const HEAD_DIM: usize = 128;
        if dim % HEAD_DIM != 0 {
            return Err(LoadError::BadConfig {
                path: self.path().to_path_buf(),
                reason: format!(
                    "a width of {dim} does not split into heads of {HEAD_DIM}; put a config.json with num_attention_heads beside the file"
                ),
            });
        }
        let patch_size = patch_size.to_vec();
        let patch_volume: usize = patch_size.iter().product();
        let image = self.has("img_emb.proj.0.weight");
        Ok(WanTransformerConfig {
            num_attention_heads: dim / HEAD_DIM,
            attention_head_dim: HEAD_DIM,
            in_channels,
            out_channels: Some(self.shape("head.head.weight")?[0] / patch_volume.max(1)),
            patch_size,
            text_dim: self.shape("text_embedding.0.weight")?[1],
            freq_dim: self.shape("time_embedding.0.weight")?[1],
            ffn_dim: self.shape("blocks.0.ffn.0.weight")?[0],
            num_layers: self.count("blocks"),
            cross_attn_norm: self.has("blocks.0.norm3.weight"),
            image_dim: if image {
                Some(self.shape("img_emb.proj.0.weight")?[0])
            } else {
                None
            },
            added_kv_proj_dim: self.has("blocks.0.cross_attn.k_img.weight").then_some(dim),
            pos_embed_seq_len: if self.has("img_emb.emb_pos") {
                Some(self.shape("img_emb.emb_pos")?[1])
            } else {
                None
            },
            ..WanTransformerConfig::default()
        })
    }

    fn bad_shape(&self, key: &str, expected: &str) -> LoadError {
        LoadError::Tensor {
            tensor: format!("{}{key}", self.prefix),
            file: self.path().to_path_buf(),
            reason: format!("expected {expected}"),
        }
    }

    /// The `AutoencoderKL` config the shapes imply. `norm_num_groups` is not recorded: 32, as
    /// every published VAE of this layout has it. The latent scaling is FLUX.1's (0.3611, shift
    /// 0.1159; what `from_single_file` reads from FLUX.1's VAE config) for 16 latent channels,
    /// else Stable Diffusion's 0.18215.
    pub fn ldm_vae_config(&self) -> Result<AutoencoderKLConfig, LoadError> {
        let blocks = self.count("encoder.down");
        let block_out_channels = (0..blocks)
            .map(|i| Ok(self.shape(&format!("encoder.down.{i}.block.0.conv1.weight"))?[0]))
            .collect::<Result<Vec<_>, LoadError>>()?;
        let latent_channels = self.shape("decoder.conv_in.weight")?[1];
        let flux = latent_channels == 16;
        Ok(AutoencoderKLConfig {
            in_channels: self.shape("encoder.conv_in.weight")?[1],
            out_channels: self.shape("decoder.conv_out.weight")?[0],
            down_block_types: vec!["DownEncoderBlock2D".into(); blocks],
            up_block_types: vec!["UpDecoderBlock2D".into(); blocks],
            block_out_channels,
            layers_per_block: self.count("encoder.down.0.block"),
            latent_channels,
            norm_num_groups: 32,
            scaling_factor: if flux { 0.3611 } else { 0.18215 },
            shift_factor: flux.then_some(0.1159),
            use_quant_conv: self.has("quant_conv.weight"),
            use_post_quant_conv: self.has("post_quant_conv.weight"),
            mid_block_add_attention: self.has("encoder.mid.attn_1.q.weight"),
            ..AutoencoderKLConfig::default()
        })
    }
}

/// The original tensors a [`SingleFile::var_builder`] read.
#[derive(Clone)]
pub struct Used(Arc<Mutex<BTreeSet<String>>>);

struct Mapped {
    checkpoint: Arc<Checkpoint>,
    layout: OriginalLayout,
    prefix: &'static str,
    width: usize,
    up_blocks: usize,
    down_blocks: usize,
    used: Used,
}

/// The original block counts of a VAE (see [`SingleFile`]'s fields).
#[derive(Clone, Copy)]
struct Blocks {
    up: usize,
    down: usize,
}

/// The original tensor (with the file's `prefix`) and part that diffusers' `name` comes from.
fn source(
    layout: OriginalLayout,
    prefix: &str,
    blocks: Blocks,
    name: &str,
) -> Option<(String, Part)> {
    let (key, part) = match layout {
        OriginalLayout::Flux1Transformer => flux1_source(name)?,
        OriginalLayout::Flux2Transformer => flux2_source(name)?,
        OriginalLayout::LdmVae => ldm_vae_source(name, blocks.up)?,
        OriginalLayout::Ltx2 => return None,
        OriginalLayout::Ltx2Transformer => (ltx2_transformer_source(name), Part::Whole),
        OriginalLayout::Ltx2VideoVae => (ltx2_video_vae_source(name, blocks)?, Part::Whole),
        OriginalLayout::Ltx2AudioVae => (ltx2_audio_vae_source(name), Part::Whole),
        OriginalLayout::Ltx2Vocoder => (ltx2_vocoder_source(name), Part::Whole),
        OriginalLayout::Ltx2LatentUpsampler => (name.to_string(), Part::Whole),
        OriginalLayout::WanTransformer => (
            crate::families::wan::transformer::original_name(name)
                .unwrap_or_else(|| name.to_string()),
            Part::Whole,
        ),
    };
    Some((format!("{prefix}{key}"), part))
}

impl Mapped {
    fn source(&self, name: &str) -> Option<(String, Part)> {
        let blocks = Blocks {
            up: self.up_blocks,
            down: self.down_blocks,
        };
        source(self.layout, self.prefix, blocks, name)
    }

    /// Reads `key` in `dtype`. A float8 weight asked for in float8 comes as stored (a linear
    /// layer keeps it so, with its scale); in any other dtype it is multiplied by its
    /// `weight_scale` (the `-fp8` files), in f32 on the CPU, one tensor at a time.
    fn read(&self, key: &str, dtype: DType, device: &Device) -> Result<Tensor, LoadError> {
        let is_f8 = self
            .checkpoint
            .entry(key)
            .is_some_and(|entry| entry.dtype == safetensors::Dtype::F8_E4M3);
        if !is_f8 || dtype == DType::F8E4M3 {
            return self.checkpoint.load(key, None, dtype, device);
        }
        let stem = key.strip_suffix(".weight").unwrap_or(key);
        let file = self.checkpoint.file_path(0).to_path_buf();
        let scale_key = crate::models::fp8::FP8_SCALE_NAMES
            .iter()
            .map(|name| format!("{stem}.{name}"))
            .find(|name| self.checkpoint.entry(name).is_some())
            .ok_or_else(|| LoadError::Tensor {
                tensor: key.to_string(),
                file: file.clone(),
                reason: format!("a float8 weight without its scale `{stem}.weight_scale`"),
            })?;
        let scale = self
            .checkpoint
            .load(&scale_key, None, DType::F32, &Device::Cpu)?;
        for name in [scale_key.clone(), format!("{stem}.input_scale")] {
            if let Ok(mut used) = self.used.0.lock() {
                used.insert(name);
            }
        }
        let weight = self
            .checkpoint
            .load(key, None, DType::F8E4M3, &Device::Cpu)?;
        let dequantize = || {
            let scale = scale.flatten_all()?.reshape(())?;
            weight
                .to_dtype(DType::F32)?
                .broadcast_mul(&scale)?
                .to_dtype(dtype)?
                .to_device(device)
        };
        dequantize().map_err(|err| LoadError::Tensor {
            tensor: key.to_string(),
            file,
            reason: format!("dequantizing with `{scale_key}`: {err}"),
        })
    }

    fn load(
        &self,
        name: &str,
        shape: Option<&Shape>,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let Some((key, part)) = self.source(name) else {
            return Err(candle_core::Error::wrap(LoadError::MissingTensor {
                tensor: name.to_string(),
                dir: self.checkpoint.dir().to_path_buf(),
            }));
        };
        let full = self
            .read(&key, dtype, device)
            .map_err(candle_core::Error::wrap)?;
        if let Ok(mut used) = self.used.0.lock() {
            used.insert(key.clone());
        }
        let d = self.width;
        // A per-tensor scale serves every part of its weight.
        if full.elem_count() == 1 && SCALE_SUFFIXES.iter().any(|s| name.ends_with(s)) {
            return Ok(full);
        }
        // NVFP4 block scales in swizzled tiles: a fused projection's parts are rows of the
        // logical scales, so they are cut from those and tiled again.
        let tiled = (part != Part::Whole)
            .then(|| swizzled_scales(&self.checkpoint, &key))
            .flatten();
        let full = match tiled {
            Some((rows, blocks)) => nvfp4::unswizzle(&full, rows, blocks)?,
            None => full,
        };
        let rows = full.dims().first().copied().unwrap_or(0);
        // Parts are copied out: a view would keep the whole fused tensor alive once per part.
        let tensor = match part {
            Part::Whole => full,
            Part::Rows(i) if (i + 1) * d <= rows => full.narrow(0, i * d, d)?.force_contiguous()?,
            Part::RowsFrom(i) if i * d < rows => {
                full.narrow(0, i * d, rows - i * d)?.force_contiguous()?
            }
            Part::SwapHalves if rows % 2 == 0 => Tensor::cat(
                &[
                    full.narrow(0, rows / 2, rows / 2)?,
                    full.narrow(0, 0, rows / 2)?,
                ],
                0,
            )?,
            Part::Squeeze if full.rank() > 2 => full.flatten_from(1)?,
            Part::Squeeze => full,
            _ => {
                return Err(candle_core::Error::wrap(LoadError::Tensor {
                    tensor: key,
                    file: self.checkpoint.file_path(0).to_path_buf(),
                    reason: format!("{rows} rows do not split into {name} (model width {d})"),
                }));
            }
        };
        let tensor = match tiled {
            Some(_) => nvfp4::swizzle(&tensor)?,
            None => tensor,
        };
        if let Some(shape) = shape
            && tensor.dims() != shape.dims()
        {
            return Err(candle_core::Error::wrap(LoadError::ShapeMismatch {
                tensor: format!("{key} (as {name})"),
                file: self.checkpoint.file_path(0).to_path_buf(),
                expected: shape.dims().to_vec(),
                found: tensor.dims().to_vec(),
            }));
        }
        Ok(tensor)
    }
}

impl SimpleBackend for Mapped {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load(name, Some(&shape), dtype, device)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load(name, None, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.source(name)
            .is_some_and(|(key, _)| self.checkpoint.contains(&key))
    }
}

/// The logical `[rows, blocks]` of `key` if it is an NVFP4 layer's block scales stored in swizzled
/// tiles (ComfyUI's and LightX2V's layouts), read from the layer's packed weight.
fn swizzled_scales(checkpoint: &Checkpoint, key: &str) -> Option<(usize, usize)> {
    let stem = key.strip_suffix(".weight_scale")?;
    let layout = Nvfp4Layout::from_names(|name| checkpoint.contains(&format!("{stem}.{name}")))?;
    let &[rows, half] = checkpoint
        .entry(&format!("{stem}.weight"))?
        .shape
        .as_slice()
    else {
        return None;
    };
    layout.swizzled().then_some((rows, 2 * half / NVFP4_BLOCK))
}

/// `theirs` + the rest of `name` after `ours`, where `name` is `ours` or `ours.*`.
fn rename(table: &[(&str, &str, Part)], name: &str) -> Option<(String, Part)> {
    table.iter().find_map(|&(ours, theirs, part)| {
        let rest = name.strip_prefix(ours)?;
        (rest.is_empty() || rest.starts_with('.')).then(|| (format!("{theirs}{rest}"), part))
    })
}

/// Splits `blocks.N.inner` into `N` and `inner`.
fn block<'a>(name: &'a str, group: &str) -> Option<(&'a str, &'a str)> {
    name.strip_prefix(group)?.strip_prefix('.')?.split_once('.')
}

/// `convert_flux_transformer_checkpoint_to_diffusers`, backwards: the original name of a
/// `FluxTransformer2DModel` tensor.
fn flux1_source(name: &str) -> Option<(String, Part)> {
    use Part::*;
    const TOP: &[(&str, &str, Part)] = &[
        (
            "time_text_embed.timestep_embedder.linear_1",
            "time_in.in_layer",
            Whole,
        ),
        (
            "time_text_embed.timestep_embedder.linear_2",
            "time_in.out_layer",
            Whole,
        ),
        (
            "time_text_embed.guidance_embedder.linear_1",
            "guidance_in.in_layer",
            Whole,
        ),
        (
            "time_text_embed.guidance_embedder.linear_2",
            "guidance_in.out_layer",
            Whole,
        ),
        (
            "time_text_embed.text_embedder.linear_1",
            "vector_in.in_layer",
            Whole,
        ),
        (
            "time_text_embed.text_embedder.linear_2",
            "vector_in.out_layer",
            Whole,
        ),
        ("context_embedder", "txt_in", Whole),
        ("x_embedder", "img_in", Whole),
        (
            "norm_out.linear",
            "final_layer.adaLN_modulation.1",
            SwapHalves,
        ),
        ("proj_out", "final_layer.linear", Whole),
    ];
    const DOUBLE: &[(&str, &str, Part)] = &[
        ("norm1.linear", "img_mod.lin", Whole),
        ("norm1_context.linear", "txt_mod.lin", Whole),
        ("attn.to_q", "img_attn.qkv", Rows(0)),
        ("attn.to_k", "img_attn.qkv", Rows(1)),
        ("attn.to_v", "img_attn.qkv", Rows(2)),
        ("attn.add_q_proj", "txt_attn.qkv", Rows(0)),
        ("attn.add_k_proj", "txt_attn.qkv", Rows(1)),
        ("attn.add_v_proj", "txt_attn.qkv", Rows(2)),
        (
            "attn.norm_q.weight",
            "img_attn.norm.query_norm.scale",
            Whole,
        ),
        ("attn.norm_k.weight", "img_attn.norm.key_norm.scale", Whole),
        (
            "attn.norm_added_q.weight",
            "txt_attn.norm.query_norm.scale",
            Whole,
        ),
        (
            "attn.norm_added_k.weight",
            "txt_attn.norm.key_norm.scale",
            Whole,
        ),
        ("attn.to_out.0", "img_attn.proj", Whole),
        ("attn.to_add_out", "txt_attn.proj", Whole),
        ("ff.net.0.proj", "img_mlp.0", Whole),
        ("ff.net.2", "img_mlp.2", Whole),
        ("ff_context.net.0.proj", "txt_mlp.0", Whole),
        ("ff_context.net.2", "txt_mlp.2", Whole),
    ];
    const SINGLE: &[(&str, &str, Part)] = &[
        ("norm.linear", "modulation.lin", Whole),
        ("attn.to_q", "linear1", Rows(0)),
        ("attn.to_k", "linear1", Rows(1)),
        ("attn.to_v", "linear1", Rows(2)),
        ("proj_mlp", "linear1", RowsFrom(3)),
        ("attn.norm_q.weight", "norm.query_norm.scale", Whole),
        ("attn.norm_k.weight", "norm.key_norm.scale", Whole),
        ("proj_out", "linear2", Whole),
    ];
    if let Some((i, inner)) = block(name, "transformer_blocks") {
        let (key, part) = rename(DOUBLE, inner)?;
        return Some((format!("double_blocks.{i}.{key}"), part));
    }
    if let Some((i, inner)) = block(name, "single_transformer_blocks") {
        let (key, part) = rename(SINGLE, inner)?;
        return Some((format!("single_blocks.{i}.{key}"), part));
    }
    rename(TOP, name)
}

/// `convert_flux2_transformer_checkpoint_to_diffusers`, backwards: the original name of a
/// `Flux2Transformer2DModel` tensor.
fn flux2_source(name: &str) -> Option<(String, Part)> {
    use Part::*;
    const TOP: &[(&str, &str, Part)] = &[
        (
            "time_guidance_embed.timestep_embedder.linear_1",
            "time_in.in_layer",
            Whole,
        ),
        (
            "time_guidance_embed.timestep_embedder.linear_2",
            "time_in.out_layer",
            Whole,
        ),
        (
            "time_guidance_embed.guidance_embedder.linear_1",
            "guidance_in.in_layer",
            Whole,
        ),
        (
            "time_guidance_embed.guidance_embedder.linear_2",
            "guidance_in.out_layer",
            Whole,
        ),
        (
            "double_stream_modulation_img.linear",
            "double_stream_modulation_img.lin",
            Whole,
        ),
        (
            "double_stream_modulation_txt.linear",
            "double_stream_modulation_txt.lin",
            Whole,
        ),
        (
            "single_stream_modulation.linear",
            "single_stream_modulation.lin",
            Whole,
        ),
        ("context_embedder", "txt_in", Whole),
        ("x_embedder", "img_in", Whole),
        (
            "norm_out.linear",
            "final_layer.adaLN_modulation.1",
            SwapHalves,
        ),
        ("proj_out", "final_layer.linear", Whole),
    ];
    const DOUBLE: &[(&str, &str, Part)] = &[
        ("attn.to_q", "img_attn.qkv", Rows(0)),
        ("attn.to_k", "img_attn.qkv", Rows(1)),
        ("attn.to_v", "img_attn.qkv", Rows(2)),
        ("attn.add_q_proj", "txt_attn.qkv", Rows(0)),
        ("attn.add_k_proj", "txt_attn.qkv", Rows(1)),
        ("attn.add_v_proj", "txt_attn.qkv", Rows(2)),
        (
            "attn.norm_q.weight",
            "img_attn.norm.query_norm.scale",
            Whole,
        ),
        ("attn.norm_k.weight", "img_attn.norm.key_norm.scale", Whole),
        (
            "attn.norm_added_q.weight",
            "txt_attn.norm.query_norm.scale",
            Whole,
        ),
        (
            "attn.norm_added_k.weight",
            "txt_attn.norm.key_norm.scale",
            Whole,
        ),
        ("attn.to_out.0", "img_attn.proj", Whole),
        ("attn.to_add_out", "txt_attn.proj", Whole),
        ("ff.linear_in", "img_mlp.0", Whole),
        ("ff.linear_out", "img_mlp.2", Whole),
        ("ff_context.linear_in", "txt_mlp.0", Whole),
        ("ff_context.linear_out", "txt_mlp.2", Whole),
    ];
    const SINGLE: &[(&str, &str, Part)] = &[
        ("attn.to_qkv_mlp_proj", "linear1", Whole),
        ("attn.to_out", "linear2", Whole),
        ("attn.norm_q.weight", "norm.query_norm.scale", Whole),
        ("attn.norm_k.weight", "norm.key_norm.scale", Whole),
    ];
    if let Some((i, inner)) = block(name, "transformer_blocks") {
        let (key, part) = rename(DOUBLE, inner)?;
        return Some((format!("double_blocks.{i}.{key}"), part));
    }
    if let Some((i, inner)) = block(name, "single_transformer_blocks") {
        let (key, part) = rename(SINGLE, inner)?;
        return Some((format!("single_blocks.{i}.{key}"), part));
    }
    rename(TOP, name)
}

/// `convert_ldm_vae_checkpoint`, backwards: the original name of an `AutoencoderKL` tensor
/// (`up_blocks` decoder blocks, which the original numbers from the lowest resolution).
fn ldm_vae_source(name: &str, up_blocks: usize) -> Option<(String, Part)> {
    use Part::*;
    const ATTENTION: &[(&str, &str, Part)] = &[
        ("group_norm", "norm", Whole),
        ("to_q.weight", "q.weight", Squeeze),
        ("to_k.weight", "k.weight", Squeeze),
        ("to_v.weight", "v.weight", Squeeze),
        ("to_out.0.weight", "proj_out.weight", Squeeze),
        ("to_q", "q", Whole),
        ("to_k", "k", Whole),
        ("to_v", "v", Whole),
        ("to_out.0", "proj_out", Whole),
    ];
    let (coder, rest) = name.split_once('.')?;
    match coder {
        "quant_conv" | "post_quant_conv" => return Some((name.to_string(), Whole)),
        "encoder" | "decoder" => {}
        _ => return None,
    }
    let resnet = |leaf: &str| leaf.replace("conv_shortcut", "nin_shortcut");
    let (inner, part) = if let Some(leaf) = rest.strip_prefix("conv_norm_out") {
        (format!("norm_out{leaf}"), Whole)
    } else if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        (rest.to_string(), Whole)
    } else if let Some((i, block_rest)) = block(rest, "down_blocks") {
        if let Some((j, leaf)) = block(block_rest, "resnets") {
            (format!("down.{i}.block.{j}.{}", resnet(leaf)), Whole)
        } else {
            let leaf = block_rest.strip_prefix("downsamplers.0.conv")?;
            (format!("down.{i}.downsample.conv{leaf}"), Whole)
        }
    } else if let Some((i, block_rest)) = block(rest, "up_blocks") {
        let i = up_blocks.checked_sub(1 + i.parse::<usize>().ok()?)?;
        if let Some((j, leaf)) = block(block_rest, "resnets") {
            (format!("up.{i}.block.{j}.{}", resnet(leaf)), Whole)
        } else {
            let leaf = block_rest.strip_prefix("upsamplers.0.conv")?;
            (format!("up.{i}.upsample.conv{leaf}"), Whole)
        }
    } else if let Some((j, leaf)) = block(rest, "mid_block.resnets") {
        let j = j.parse::<usize>().ok()? + 1;
        (format!("mid.block_{j}.{}", resnet(leaf)), Whole)
    } else {
        let inner = rest.strip_prefix("mid_block.attentions.0.")?;
        let (key, part) = rename(ATTENTION, inner)?;
        (format!("mid.attn_1.{key}"), part)
    };
    Some((format!("{coder}.{inner}"), part))
}

/// The name in an LTX-2 checkpoint (its prefix included) of each diffusers tensor `names` of the
/// component `layout` (one of the `Ltx2*` component layouts): what diffusers' conversion maps to
/// that name, to write a component in the original layout. The video VAE's numbering assumes a
/// downsampler (upsampler) after each block, as the conversion does. `None` for other layouts.
pub fn ltx2_checkpoint_names(layout: OriginalLayout, names: &[String]) -> Option<Vec<String>> {
    let (prefix, _) = layout.ltx2_component()?;
    let count = |group: &str| {
        names
            .iter()
            .filter_map(|name| block(name, group)?.0.parse::<usize>().ok())
            .map(|i| 2 * (i + 1) + 1)
            .max()
            .unwrap_or(0)
    };
    let blocks = Blocks {
        up: count("decoder.up_blocks"),
        down: count("encoder.down_blocks"),
    };
    names
        .iter()
        .map(|name| Some(source(layout, prefix, blocks, name)?.0))
        .collect()
}

/// `convert_ltx2_transformer_to_diffusers`, backwards: the original name of an
/// `LTX2VideoTransformer3DModel` tensor.
fn ltx2_transformer_source(name: &str) -> String {
    const TOP: &[(&str, &str, Part)] = &[
        ("time_embed", "adaln_single", Part::Whole),
        ("audio_time_embed", "audio_adaln_single", Part::Whole),
        ("proj_in", "patchify_proj", Part::Whole),
        ("audio_proj_in", "audio_patchify_proj", Part::Whole),
        (
            "av_cross_attn_video_scale_shift",
            "av_ca_video_scale_shift_adaln_single",
            Part::Whole,
        ),
        (
            "av_cross_attn_video_a2v_gate",
            "av_ca_a2v_gate_adaln_single",
            Part::Whole,
        ),
        (
            "av_cross_attn_audio_scale_shift",
            "av_ca_audio_scale_shift_adaln_single",
            Part::Whole,
        ),
        (
            "av_cross_attn_audio_v2a_gate",
            "av_ca_v2a_gate_adaln_single",
            Part::Whole,
        ),
    ];
    // Renamed wherever they occur in a name, as the conversion's `str.replace` does.
    const ANYWHERE: [(&str, &str); 4] = [
        (
            "video_a2v_cross_attn_scale_shift_table",
            "scale_shift_table_a2v_ca_video",
        ),
        (
            "audio_a2v_cross_attn_scale_shift_table",
            "scale_shift_table_a2v_ca_audio",
        ),
        ("norm_q", "q_norm"),
        ("norm_k", "k_norm"),
    ];
    let key = rename(TOP, name).map_or_else(|| name.to_string(), |(key, _)| key);
    ANYWHERE
        .iter()
        .fold(key, |key, (ours, theirs)| key.replace(ours, theirs))
}

/// `convert_ltx2_vae_to_diffusers`, backwards: the original name of an
/// `AutoencoderKLLTX2Video` tensor. The original numbers the encoder's down blocks and
/// downsamplers in one sequence ending with the mid block, and the decoder's mid block,
/// upsamplers and up blocks in one sequence starting with the mid block.
fn ltx2_video_vae_source(name: &str, blocks: Blocks) -> Option<String> {
    match name {
        "latents_mean" => return Some("per_channel_statistics.mean-of-means".into()),
        "latents_std" => return Some("per_channel_statistics.std-of-means".into()),
        _ => {}
    }
    let (coder, rest) = name.split_once('.')?;
    let index = |i: &str, f: fn(usize) -> usize| Some(f(i.parse::<usize>().ok()?));
    let inner = match coder {
        "encoder" => {
            if let Some(leaf) = rest.strip_prefix("mid_block.") {
                format!("down_blocks.{}.{leaf}", blocks.down.checked_sub(1)?)
            } else if let Some((i, leaf)) = block(rest, "down_blocks") {
                match leaf.strip_prefix("downsamplers.0.") {
                    Some(leaf) => format!("down_blocks.{}.{leaf}", index(i, |i| 2 * i + 1)?),
                    None => format!("down_blocks.{}.{leaf}", index(i, |i| 2 * i)?),
                }
            } else {
                rest.to_string()
            }
        }
        "decoder" => {
            if let Some(leaf) = rest.strip_prefix("mid_block.") {
                format!("up_blocks.0.{leaf}")
            } else if let Some((i, leaf)) = block(rest, "up_blocks") {
                match leaf.strip_prefix("upsamplers.0.") {
                    Some(leaf) => format!("up_blocks.{}.{leaf}", index(i, |i| 2 * i + 1)?),
                    None => format!("up_blocks.{}.{leaf}", index(i, |i| 2 * i + 2)?),
                }
            } else {
                rest.to_string()
            }
        }
        _ => return Some(name.to_string()),
    };
    Some(format!(
        "{coder}.{}",
        inner.replace("resnets", "res_blocks")
    ))
}

/// `convert_ltx2_audio_vae_to_diffusers`, backwards: the original name of an
/// `AutoencoderKLLTX2Audio` tensor.
fn ltx2_audio_vae_source(name: &str) -> String {
    match name {
        "latents_mean" => "per_channel_statistics.mean-of-means".into(),
        "latents_std" => "per_channel_statistics.std-of-means".into(),
        _ => name.to_string(),
    }
}

/// The vocoder renames of diffusers' `convert_ltx2_to_diffusers.py`, backwards: the original
/// (HiFi-GAN) name of an `LTX2Vocoder` tensor.
fn ltx2_vocoder_source(name: &str) -> String {
    const RENAMES: [(&str, &str); 4] = [
        ("upsamplers", "ups"),
        ("resnets", "resblocks"),
        ("conv_in", "conv_pre"),
        ("conv_out", "conv_post"),
    ];
    RENAMES
        .iter()
        .fold(name.to_string(), |key, (ours, theirs)| {
            key.replace(ours, theirs)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flux1_names_map_to_the_fused_originals() {
        assert_eq!(
            flux1_source("transformer_blocks.3.attn.add_k_proj.bias"),
            Some(("double_blocks.3.txt_attn.qkv.bias".into(), Part::Rows(1)))
        );
        assert_eq!(
            flux1_source("single_transformer_blocks.0.proj_mlp.weight"),
            Some(("single_blocks.0.linear1.weight".into(), Part::RowsFrom(3)))
        );
        assert_eq!(
            flux1_source("single_transformer_blocks.0.attn.norm_k.weight"),
            Some(("single_blocks.0.norm.key_norm.scale".into(), Part::Whole))
        );
        assert_eq!(
            flux1_source("norm_out.linear.weight"),
            Some((
                "final_layer.adaLN_modulation.1.weight".into(),
                Part::SwapHalves
            ))
        );
        // `proj_out` inside a single block is not the top-level one.
        assert_eq!(
            flux1_source("single_transformer_blocks.2.proj_out.bias"),
            Some(("single_blocks.2.linear2.bias".into(), Part::Whole))
        );
        assert_eq!(
            flux1_source("transformer_blocks.0.attn.to_qkv.weight"),
            None
        );
    }

    #[test]
    fn vae_names_map_to_the_latent_diffusion_originals() {
        assert_eq!(
            ldm_vae_source("decoder.up_blocks.0.resnets.2.conv_shortcut.weight", 4),
            Some((
                "decoder.up.3.block.2.nin_shortcut.weight".into(),
                Part::Whole
            ))
        );
        assert_eq!(
            ldm_vae_source("encoder.mid_block.attentions.0.to_out.0.weight", 4),
            Some(("encoder.mid.attn_1.proj_out.weight".into(), Part::Squeeze))
        );
        assert_eq!(
            ldm_vae_source("encoder.mid_block.attentions.0.to_q.bias", 4),
            Some(("encoder.mid.attn_1.q.bias".into(), Part::Whole))
        );
        assert_eq!(
            ldm_vae_source("decoder.mid_block.resnets.1.norm2.bias", 4),
            Some(("decoder.mid.block_2.norm2.bias".into(), Part::Whole))
        );
        assert_eq!(
            ldm_vae_source("encoder.conv_norm_out.weight", 4),
            Some(("encoder.norm_out.weight".into(), Part::Whole))
        );
        assert_eq!(
            ldm_vae_source("encoder.down_blocks.1.downsamplers.0.conv.bias", 4),
            Some(("encoder.down.1.downsample.conv.bias".into(), Part::Whole))
        );
    }

    #[test]
    fn ltx2_names_map_to_the_originals() {
        assert_eq!(
            ltx2_transformer_source("audio_time_embed.emb.timestep_embedder.linear_1.weight"),
            "audio_adaln_single.emb.timestep_embedder.linear_1.weight"
        );
        assert_eq!(
            ltx2_transformer_source("transformer_blocks.3.audio_to_video_attn.norm_k.weight"),
            "transformer_blocks.3.audio_to_video_attn.k_norm.weight"
        );
        assert_eq!(
            ltx2_transformer_source("transformer_blocks.0.video_a2v_cross_attn_scale_shift_table"),
            "transformer_blocks.0.scale_shift_table_a2v_ca_video"
        );
        let blocks = Blocks { up: 7, down: 9 };
        assert_eq!(
            ltx2_video_vae_source("encoder.mid_block.resnets.1.conv1.conv.weight", blocks),
            Some("encoder.down_blocks.8.res_blocks.1.conv1.conv.weight".into())
        );
        assert_eq!(
            ltx2_video_vae_source(
                "encoder.down_blocks.2.downsamplers.0.conv.conv.bias",
                blocks
            ),
            Some("encoder.down_blocks.5.conv.conv.bias".into())
        );
        assert_eq!(
            ltx2_video_vae_source("decoder.up_blocks.1.resnets.0.conv2.conv.weight", blocks),
            Some("decoder.up_blocks.4.res_blocks.0.conv2.conv.weight".into())
        );
        assert_eq!(
            ltx2_video_vae_source("decoder.up_blocks.0.upsamplers.0.conv.conv.weight", blocks),
            Some("decoder.up_blocks.1.conv.conv.weight".into())
        );
        assert_eq!(
            ltx2_vocoder_source("resnets.4.convs1.0.weight"),
            "resblocks.4.convs1.0.weight"
        );
    }

    #[test]
    fn flux2_names_map_to_the_originals() {
        assert_eq!(
            flux2_source("single_transformer_blocks.1.attn.to_qkv_mlp_proj.weight"),
            Some(("single_blocks.1.linear1.weight".into(), Part::Whole))
        );
        assert_eq!(
            flux2_source("transformer_blocks.0.ff_context.linear_out.weight"),
            Some(("double_blocks.0.txt_mlp.2.weight".into(), Part::Whole))
        );
    }
}
