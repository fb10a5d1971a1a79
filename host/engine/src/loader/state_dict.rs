//! Bare state dicts: the single files that upscalers (ESRGAN, SwinIR, ...) and RIFE's flownet are
//! published as, with no config beside them. Their architecture and sizes are read from the keys
//! and shapes, as spandrel does. Both containers users download are read: safetensors, and
//! PyTorch's `torch.save` zip (`.pth`, `.pkl`, `.ckpt`), whose pickle candle reads without
//! running any of it. Wrappers that training tools add are removed: a nested `params_ema` /
//! `params` / `state_dict` dictionary (BasicSR, Real-ESRGAN) and a `module.` prefix
//! (`DataParallel`, as RIFE's `flownet.pkl` has it).

use super::LoadError;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The tensors of one state-dict file, in memory (these files are tens of megabytes).
pub struct StateDict {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

/// Dictionaries that wrap the weights in training checkpoints, tried in this order (BasicSR
/// saves the EMA weights beside the raw ones; the EMA ones are what its inference loads).
const NESTED_KEYS: [&str; 3] = ["params_ema", "params", "state_dict"];

impl StateDict {
    /// Reads `path` (safetensors by its header, else a PyTorch zip checkpoint).
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let bad = |reason: String| LoadError::BadHeader {
            path: path.to_path_buf(),
            reason,
        };
        let mut magic = [0u8; 4];
        {
            use std::io::Read;
            let mut file = std::fs::File::open(path).map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => LoadError::MissingFile {
                    path: path.to_path_buf(),
                },
                _ => LoadError::Io {
                    path: path.to_path_buf(),
                    source,
                },
            })?;
            file.read_exact(&mut magic)
                .map_err(|source| LoadError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
        let tensors: Vec<(String, Tensor)> = if magic == *b"PK\x03\x04" {
            let mut found = None;
            for key in NESTED_KEYS.iter().map(Some).chain([None]) {
                match candle_core::pickle::read_all_with_key(path, key.copied()) {
                    Ok(tensors) if !tensors.is_empty() => {
                        found = Some(tensors);
                        break;
                    }
                    Ok(_) => {}
                    Err(err) if key.is_none() => {
                        return Err(bad(format!("not a PyTorch state dict: {err}")));
                    }
                    Err(_) => {}
                }
            }
            found.ok_or_else(|| bad("the PyTorch checkpoint holds no tensors".into()))?
        } else {
            candle_core::safetensors::load(path, &Device::Cpu)
                .map_err(|err| {
                    bad(format!(
                        "neither safetensors nor a PyTorch checkpoint: {err}"
                    ))
                })?
                .into_iter()
                .collect()
        };
        if tensors.is_empty() {
            return Err(bad("the file holds no tensors".into()));
        }
        let tensors = tensors
            .into_iter()
            .map(|(name, tensor)| {
                let name = name.strip_prefix("module.").unwrap_or(&name).to_string();
                (name, tensor)
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Every key, sorted (for detection code that counts blocks).
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    /// The tensor `name`, or an error naming the file and the tensor.
    pub fn get(&self, name: &str) -> Result<&Tensor, LoadError> {
        self.tensors
            .get(name)
            .ok_or_else(|| LoadError::MissingTensor {
                tensor: name.to_string(),
                dir: self.path.clone(),
            })
    }

    /// The shape of tensor `name`, or an error naming the file and the tensor.
    pub fn shape(&self, name: &str) -> Result<&[usize], LoadError> {
        Ok(self.get(name)?.dims())
    }

    /// A `VarBuilder` over the tensors, converted to `dtype` on `device` as they are fetched; the
    /// models' own loading code then reads like any other.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_tensors(self.tensors.clone(), dtype, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_keys_lose_the_data_parallel_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flownet.safetensors");
        let weight = Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(
            &HashMap::from([("module.block0.conv.weight".to_string(), weight)]),
            &path,
        )
        .unwrap();
        let dict = StateDict::open(&path).unwrap();
        assert_eq!(dict.keys(), ["block0.conv.weight"]);
        assert_eq!(dict.shape("block0.conv.weight").unwrap(), [2, 3]);
        let err = dict.get("block1.conv.weight").unwrap_err().to_string();
        assert!(err.contains("block1.conv.weight") && err.contains("flownet.safetensors"));
    }

    #[test]
    fn garbage_and_empty_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("RealESRGAN_x4plus.pth");
        std::fs::write(&path, b"PK\x03\x04 not really a zip").unwrap();
        let err = StateDict::open(&path).err().unwrap().to_string();
        assert!(err.contains("RealESRGAN_x4plus.pth"), "{err}");
        std::fs::write(&path, b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ").unwrap();
        assert!(StateDict::open(&path).is_err());
        let missing = dir.path().join("missing.pth");
        assert!(matches!(
            StateDict::open(&missing),
            Err(LoadError::MissingFile { .. })
        ));
    }
}
