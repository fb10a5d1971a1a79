//! Engine targets: what a downloaded checkpoint brings (safetensors headers, shard indexes,
//! model and scheduler configs, LoRA files) and the MP4 reader. Each writes the input where the engine
//! expects a file and calls the engine's own entry point; errors are fine, panics are not.

use crate::driver::Run;
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use videosdgx_engine::families::wan::transformer::{WanTransformer3DModel, WanTransformerConfig};
use videosdgx_engine::families::wan::vae::WanVaeConfig;
use videosdgx_engine::loader::{self, Checkpoint};
use videosdgx_engine::lora::{Adaptable, Lora, LoraFile, LoraMode};
use videosdgx_engine::models::{clip_vision::CLIPVisionConfig, t5::T5Config};
use videosdgx_engine::schedulers::{Scheduler, SchedulerKind};
use videosdgx_engine::text::model::LanguageModelConfig;
use videosdgx_engine::video::Mp4Reader;

pub const JSON_TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"[[]]",
    b"{\"\":{}}",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b"-",
    b"1e999",
    b"[0,18446744073709551615]",
    b"\"F16\"",
    b"\"BF16\"",
    b"\"I64\"",
    b"\"shape\"",
    b"\"data_offsets\"",
    b"\"dtype\"",
    b"\"__metadata__\"",
    b"\"weight_map\"",
    b"\"_class_name\"",
    b"\"architectures\"",
];

/// Copies fixture files into a fresh folder that lives as long as the returned guard.
fn folder_with(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    for (name, fixture) in files {
        std::fs::copy(fixtures.join(fixture), dir.path().join(name)).unwrap();
    }
    let path = dir.path().to_owned();
    (dir, path)
}

/// A single `model.safetensors`: header validation, then every tensor read as a model would.
pub fn safetensors() -> Run {
    let (guard, dir) = folder_with(&[]);
    Box::new(move |input| {
        let _ = &guard;
        std::fs::write(dir.join("model.safetensors"), input).unwrap();
        if let Ok(checkpoint) = Checkpoint::open(&dir) {
            let names: Vec<String> = checkpoint.tensors().map(|(n, _)| n.to_owned()).collect();
            for name in names {
                let _ = checkpoint.load(&name, None, DType::F32, &Device::Cpu);
            }
        }
    })
}

/// A shard index over two real shards of the tiny Wan transformer.
pub fn safetensors_index() -> Run {
    let shards = "components/wan_t2v/model";
    let (guard, dir) = folder_with(&[
        (
            "diffusion_pytorch_model-00001-of-00004.safetensors",
            &format!("{shards}/diffusion_pytorch_model-00001-of-00004.safetensors"),
        ),
        (
            "diffusion_pytorch_model-00003-of-00004.safetensors",
            &format!("{shards}/diffusion_pytorch_model-00003-of-00004.safetensors"),
        ),
    ]);
    Box::new(move |input| {
        let _ = &guard;
        std::fs::write(
            dir.join("diffusion_pytorch_model.safetensors.index.json"),
            input,
        )
        .unwrap();
        if let Ok(checkpoint) = Checkpoint::open(&dir) {
            let names: Vec<String> = checkpoint.tensors().map(|(n, _)| n.to_owned()).collect();
            for name in names {
                let _ = checkpoint.load(&name, None, DType::F32, &Device::Cpu);
            }
        }
    })
}

/// `config.json` and `model_index.json` as every loader reads them, and a Wan transformer
/// built from the config over the tiny real checkpoint (shapes come from the config).
pub fn model_config() -> Run {
    let (guard, dir) = folder_with(&[(
        "diffusion_pytorch_model.safetensors",
        "tiny-wan-t2v/transformer/diffusion_pytorch_model.safetensors",
    )]);
    Box::new(move |input| {
        let _ = &guard;
        let config = dir.join("config.json");
        std::fs::write(&config, input).unwrap();
        std::fs::write(dir.join("model_index.json"), input).unwrap();
        let _ = loader::component_class(&dir);
        let _ = loader::read_pipeline_index(&dir);
        let _ = loader::read_config::<T5Config>(&config);
        let _ = loader::read_config::<CLIPVisionConfig>(&config);
        let _ = loader::read_config::<WanVaeConfig>(&config);
        if let Ok(language) = LanguageModelConfig::read(&dir) {
            let _ = match &language {
                LanguageModelConfig::Qwen3(c) => c.decoder_config(),
                LanguageModelConfig::Gemma3Text(c) => c.decoder_config(),
                LanguageModelConfig::Gemma3(c) => c.text_config.decoder_config(),
            };
        }
        if loader::read_config::<WanTransformerConfig>(&config).is_ok() {
            let _ = WanTransformer3DModel::load(&dir, &Device::Cpu, DType::F32);
        }
    })
}

/// A LoRA file as users download them: its keys grouped and matched to the tiny Wan
/// transformer's weights, then applied merged and as side paths (and taken off again).
pub fn lora() -> Run {
    let (guard, dir) = folder_with(&[]);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let mut model = WanTransformer3DModel::load(
        &fixtures.join("tiny-wan-t2v/transformer"),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    Box::new(move |input| {
        let _ = &guard;
        let path = dir.join("lora.safetensors");
        std::fs::write(&path, input).unwrap();
        let Ok(file) = LoraFile::open(&path) else {
            return;
        };
        let loras = [Lora {
            file: Arc::new(file),
            strength: 0.8,
        }];
        for mode in [LoraMode::Merge, LoraMode::Runtime] {
            let _ = model.set_loras(&loras, mode);
            model.set_loras(&[], mode).unwrap();
        }
    })
}

/// `scheduler_config.json`: both schedulers, as configured and swapped, over a few step counts.
pub fn scheduler_config() -> Run {
    Box::new(|input| {
        let Ok(config) = serde_json::from_slice::<serde_json::Value>(input) else {
            return;
        };
        for kind in [
            None,
            Some(SchedulerKind::Unipc),
            Some(SchedulerKind::FlowEuler),
        ] {
            if let Ok(mut scheduler) = Scheduler::from_config(&config, kind, None) {
                for steps in [1, 4, 50] {
                    let _ = scheduler.set_timesteps(steps);
                }
            }
        }
    })
}

/// The MP4 reader: container, sample tables, then the first frames through the decoder.
pub fn mp4() -> Run {
    let (guard, dir) = folder_with(&[]);
    let path = dir.join("clip.mp4");
    Box::new(move |input| {
        let _ = &guard;
        std::fs::write(&path, input).unwrap();
        if let Ok(mut reader) = Mp4Reader::open(&path)
            && let Ok(frames) = reader.frames_from(0)
        {
            for frame in frames.take(3) {
                if frame.is_err() {
                    break;
                }
            }
        }
    })
}
