//! Memory-mapped safetensors weights of one component: a single file, or shards listed by a
//! `*.safetensors.index.json`. Headers are validated when the files are opened; tensor data is
//! copied out of the mapping only when a model asks for that tensor, so a checkpoint is read from
//! disk once. This module must never guess shapes: models state them, and a mismatch is an error.

use super::LoadError;
use super::memory::{self, FileCache};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::{SimpleBackend, VarBuilder};
use memmap2::Mmap;
use safetensors::SafeTensors;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where one tensor lives and what its header says about it.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    /// Index into [`Checkpoint::files`].
    pub file: usize,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    /// Byte range inside the mapped file (absolute, header included).
    range: (usize, usize),
}

struct MappedFile {
    path: PathBuf,
    file: File,
    mmap: Mmap,
    /// The header's `__metadata__` (free-form strings).
    metadata: HashMap<String, String>,
}

/// The weights of one component directory, mapped but not yet read.
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<MappedFile>,
    tensors: BTreeMap<String, TensorEntry>,
    /// `LAYER.comfy_quant` for each layer a header's `_quantization_metadata` lists: ComfyUI
    /// turns that header (ModelOpt's single-file export, Black Forest Labs' NVFP4 files) into the
    /// same per-layer markers its own files store as tensors, and so does [`Checkpoint::contains`].
    markers: BTreeSet<String>,
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// A safetensors header's `_quantization_metadata`: `{"layers": {LAYER: {"format": ...}}}`.
#[derive(serde::Deserialize)]
struct QuantizationMetadata {
    layers: BTreeMap<String, serde_json::Value>,
}

impl Checkpoint {
    /// Maps the weights of `dir`: the shard index if there is one, else its single
    /// `*.safetensors` file (preferring the diffusers/transformers default names).
    pub fn open(dir: &Path) -> Result<Self, LoadError> {
        let listing = std::fs::read_dir(dir).map_err(|source| LoadError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut indexes = Vec::new();
        let mut singles = Vec::new();
        for entry in listing.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".safetensors.index.json") {
                indexes.push(name);
            } else if name.ends_with(".safetensors") {
                singles.push(name);
            }
        }
        indexes.sort();
        singles.sort();
        const DEFAULTS: [&str; 2] = ["diffusion_pytorch_model", "model"];
        let preferred = |names: &[String], suffix: &str| -> Option<String> {
            DEFAULTS
                .iter()
                .map(|stem| format!("{stem}{suffix}"))
                .find(|candidate| names.contains(candidate))
                .or_else(|| (names.len() == 1).then(|| names[0].clone()))
        };
        if let Some(index) = preferred(&indexes, ".safetensors.index.json") {
            return Self::open_sharded(dir, &dir.join(index));
        }
        if let Some(single) = preferred(&singles, ".safetensors") {
            let mut checkpoint = Self {
                dir: dir.to_path_buf(),
                files: Vec::new(),
                tensors: BTreeMap::new(),
                markers: BTreeSet::new(),
            };
            checkpoint.add_file(&dir.join(single), None)?;
            return Ok(checkpoint);
        }
        if indexes.len() + singles.len() > 1 {
            return Err(LoadError::AmbiguousWeights {
                dir: dir.to_path_buf(),
                files: indexes.into_iter().chain(singles).collect(),
            });
        }
        Err(LoadError::NoWeights {
            dir: dir.to_path_buf(),
        })
    }

    /// Maps one safetensors file (a LoRA, a single-file checkpoint).
    pub fn open_file(path: &Path) -> Result<Self, LoadError> {
        let mut checkpoint = Self {
            dir: path.parent().unwrap_or(Path::new("")).to_path_buf(),
            files: Vec::new(),
            tensors: BTreeMap::new(),
            markers: BTreeSet::new(),
        };
        checkpoint.add_file(path, None)?;
        Ok(checkpoint)
    }

    fn open_sharded(dir: &Path, index_path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(index_path).map_err(|source| LoadError::Io {
            path: index_path.to_path_buf(),
            source,
        })?;
        let index: ShardIndex =
            serde_json::from_str(&text).map_err(|source| LoadError::Config {
                path: index_path.to_path_buf(),
                source,
            })?;
        // shard file -> tensors the index places there
        let mut shards: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (tensor, shard) in &index.weight_map {
            shards.entry(shard).or_default().push(tensor);
        }
        let mut checkpoint = Self {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            tensors: BTreeMap::new(),
            markers: BTreeSet::new(),
        };
        for (shard, tensors) in shards {
            let path = dir.join(shard);
            if !path.is_file() {
                return Err(LoadError::MissingShard {
                    index: index_path.to_path_buf(),
                    shard: path,
                    tensor: tensors[0].to_string(),
                });
            }
            checkpoint.add_file(&path, Some(&tensors))?;
        }
        Ok(checkpoint)
    }

    /// Maps `path`, validates its header, and registers its tensors (only `expected` ones, when
    /// an index says which tensors the shard must hold).
    fn add_file(&mut self, path: &Path, expected: Option<&[&str]>) -> Result<(), LoadError> {
        let file = File::open(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: the mapping is read-only; a checkpoint rewritten underneath a running process
        // is outside what any loader can defend against (candle and safetensors map the same way).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|err| LoadError::BadHeader {
                path: path.to_path_buf(),
                reason: err.to_string(),
            })?;
        let data_start = 8 + header_len;
        let file_metadata = metadata.metadata().clone().unwrap_or_default();
        if let Some(listing) = file_metadata.get("_quantization_metadata") {
            let layers = serde_json::from_str::<QuantizationMetadata>(listing).map_err(|err| {
                LoadError::BadHeader {
                    path: path.to_path_buf(),
                    reason: format!("_quantization_metadata: {err}"),
                }
            })?;
            self.markers.extend(
                layers
                    .layers
                    .into_keys()
                    .map(|layer| format!("{layer}.comfy_quant")),
            );
        }
        let infos: HashMap<String, &safetensors::tensor::TensorInfo> = metadata.tensors();
        if let Some(expected) = expected
            && let Some(absent) = expected.iter().find(|name| !infos.contains_key(**name))
        {
            return Err(LoadError::TensorNotInShard {
                tensor: absent.to_string(),
                file: path.to_path_buf(),
            });
        }
        let file_index = self.files.len();
        for (name, info) in infos {
            if expected.is_some_and(|names| !names.contains(&name.as_str())) {
                continue;
            }
            self.tensors.insert(
                name,
                TensorEntry {
                    file: file_index,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: (
                        data_start + info.data_offsets.0,
                        data_start + info.data_offsets.1,
                    ),
                },
            );
        }
        self.files.push(MappedFile {
            path: path.to_path_buf(),
            file,
            mmap,
            metadata: file_metadata,
        });
        Ok(())
    }

    /// The component directory these weights came from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every tensor in the checkpoint, sorted by name.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &TensorEntry)> {
        self.tensors
            .iter()
            .map(|(name, entry)| (name.as_str(), entry))
    }

    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    /// Whether the checkpoint holds tensor `name`, or the header marks it (a layer's
    /// `comfy_quant` listed in `_quantization_metadata`).
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.markers.contains(name)
    }

    /// The file holding tensor entries with `file` index `i`.
    pub fn file_path(&self, i: usize) -> &Path {
        &self.files[i].path
    }

    /// The `__metadata__` strings of the file with index `i`.
    pub fn file_metadata(&self, i: usize) -> &HashMap<String, String> {
        &self.files[i].metadata
    }

    /// Reads one tensor out of the mapping, checking its shape, converting to `dtype` on `device`.
    pub fn load(
        &self,
        name: &str,
        expected: Option<&Shape>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor, LoadError> {
        let entry = self
            .tensors
            .get(name)
            .ok_or_else(|| LoadError::MissingTensor {
                tensor: name.to_string(),
                dir: self.dir.clone(),
            })?;
        let path = &self.files[entry.file].path;
        if let Some(expected) = expected
            && expected.dims() != entry.shape.as_slice()
        {
            return Err(LoadError::ShapeMismatch {
                tensor: name.to_string(),
                file: path.clone(),
                expected: expected.dims().to_vec(),
                found: entry.shape.clone(),
            });
        }
        // Integer tensors (NVFP4's packed codes, ComfyUI's markers) load only as themselves.
        let stored = DType::try_from(entry.dtype)
            .ok()
            .filter(|dt| dt.is_float() || *dt == dtype)
            .ok_or_else(|| LoadError::UnsupportedDtype {
                tensor: name.to_string(),
                file: path.clone(),
                dtype: entry.dtype.to_string(),
            })?;
        let bytes = &self.files[entry.file].mmap[entry.range.0..entry.range.1];
        let candle_err = |err: candle_core::Error| LoadError::Tensor {
            tensor: name.to_string(),
            file: path.clone(),
            reason: err.to_string(),
        };
        // Float8 read as another dtype (a file without scales: scale 1) converts on the CPU:
        // candle's float8 casts do not run on CUDA.
        let tensor = if stored == DType::F8E4M3 && dtype != stored {
            Tensor::from_raw_buffer(bytes, stored, &entry.shape, &Device::Cpu)
                .and_then(|t| t.to_dtype(dtype)?.to_device(device))
        } else {
            Tensor::from_raw_buffer(bytes, stored, &entry.shape, device)
                .and_then(|t| t.to_dtype(dtype))
        }
        .map_err(candle_err)?;
        // The tensor now owns a copy: let the kernel drop the mapped pages so that loading a large
        // checkpoint never holds the file pages and the weights in memory together.
        let mapped = &self.files[entry.file];
        let len = entry.range.1 - entry.range.0;
        #[cfg(unix)]
        // SAFETY: the mapping is read-only and file-backed; dropped pages are re-read from the
        // file if touched again, so no data is lost.
        unsafe {
            let _ = mapped.mmap.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                entry.range.0,
                len,
            );
        }
        // Where the copy shares the host's memory, the page cache's copy goes too.
        if FileCache::for_device(device) == FileCache::Release {
            memory::release(&mapped.file, entry.range.0, len);
        }
        Ok(tensor)
    }

    /// A `VarBuilder` whose every tensor request is served from this checkpoint.
    pub fn into_var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }

    /// Like [`Self::into_var_builder`], for a checkpoint that stays mapped after the model is
    /// built (LoRAs re-read the original weights from it).
    pub fn shared_var_builder(
        self: Arc<Self>,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Shared(self)), dtype, device.clone())
    }
}

struct Shared(Arc<Checkpoint>);

impl SimpleBackend for Shared {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.get(shape, name, init, dtype, device)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.get_unchecked(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_tensor(name)
    }
}

impl SimpleBackend for Checkpoint {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load(name, Some(&shape), dtype, device)
            .map_err(candle_core::Error::wrap)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load(name, None, dtype, device)
            .map_err(candle_core::Error::wrap)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}
