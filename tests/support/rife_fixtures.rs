//! The RIFE fixtures of tests/fixtures/finishing/rife (make_rife_fixtures.py): each version's
//! flownet is either committed (`flownet.pkl`) or rebuilt here from `flownet.json` with the
//! script's weight generator, bit for bit, so that eight IFNets cost no repository space.
#![allow(dead_code)] // each test file uses a different part of this helper

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/finishing/rife")
}

/// VERSIONS.json's `versions`: version -> its record.
pub fn versions() -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(dir().join("VERSIONS.json")).unwrap();
    let listing: serde_json::Value = serde_json::from_str(&text).unwrap();
    listing["versions"].as_object().unwrap().clone()
}

pub fn load(version: &str, file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join(version).join(file), &Device::Cpu).unwrap()
}

/// The flownet file of `version`: the committed one, or one generated into `scratch`.
pub fn flownet(version: &str, scratch: &Path) -> PathBuf {
    let committed = dir().join(version).join("flownet.pkl");
    if committed.exists() {
        return committed;
    }
    let keys: Vec<(String, Vec<usize>)> = serde_json::from_str(
        &std::fs::read_to_string(dir().join(version).join("flownet.json")).unwrap(),
    )
    .unwrap();
    let path = scratch.join(format!("flownet-{version}.safetensors"));
    write_generated(&keys, &path);
    path
}

/// Writes the generated weights of `keys` ([name, shape], names as in the file).
pub fn write_generated(keys: &[(String, Vec<usize>)], path: &Path) {
    let tensors: HashMap<String, Tensor> = keys
        .iter()
        .map(|(name, shape)| {
            let values = generated(name, shape);
            (
                name.clone(),
                Tensor::from_vec(values, shape.as_slice(), &Device::Cpu).unwrap(),
            )
        })
        .collect();
    candle_core::safetensors::save(&tensors, path).unwrap();
}

fn fnv1a32(name: &str) -> u32 {
    name.bytes().fold(0x811C_9DC5, |h: u32, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// make_rife_fixtures.py's `generated_tensor`.
fn generated(name: &str, shape: &[usize]) -> Vec<f32> {
    let seed = fnv1a32(name);
    let n: usize = shape.iter().product();
    let scale = if name.ends_with(".beta") {
        0.25
    } else if shape.len() == 1 {
        0.0625
    } else {
        let k = shape[2] * shape[3];
        let transposed =
            name.ends_with("lastconv.0.weight") || name.ends_with("encode.cnn3.weight");
        let fan_in = if transposed {
            shape[0] * k / 4
        } else {
            shape[1] * k
        };
        let mut e = 0;
        while 4usize.pow(e) < fan_in {
            e += 1;
        }
        1.0 / 2f32.powi(e as i32)
    };
    let offset = if name.ends_with(".beta") { 1.0 } else { 0.0 };
    (0..n)
        .map(|i| {
            let mut h = (i as u32).wrapping_mul(0x9E37_79B1).wrapping_add(seed);
            h ^= h >> 16;
            h = h.wrapping_mul(0x85EB_CA6B);
            h ^= h >> 13;
            h = h.wrapping_mul(0xC2B2_AE35);
            h ^= h >> 16;
            let v = (h >> 8) as f32 * 2f32.powi(-23) - 1.0;
            offset + v * scale
        })
        .collect()
}
