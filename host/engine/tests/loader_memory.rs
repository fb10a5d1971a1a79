//! Loading onto memory the host shares (the CPU here; GB10's integrated GPU on a DGX Spark)
//! drops each tensor's file pages from the page cache once the tensor is copied, so a loaded
//! model is held once, not twice; the policy follows the device.

use candle_core::{DType, Device};
use std::path::Path;
use videosdgx_engine::loader::Checkpoint;
use videosdgx_engine::loader::memory::{FileCache, shares_host_memory};

/// The fraction of `path`'s pages in the page cache, by `mincore` on a fresh mapping (mapping
/// faults nothing in).
fn resident(path: &Path) -> f64 {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: read-only mapping of a file no one writes during the test.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let page = 4096;
    let pages = map.len().div_ceil(page);
    let mut flags = vec![0u8; pages];
    // SAFETY: `flags` has one byte per page of the mapping.
    let rc = unsafe { libc::mincore(map.as_ptr() as *mut _, map.len(), flags.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    flags.iter().filter(|f| **f & 1 == 1).count() as f64 / pages as f64
}

#[test]
fn the_cpu_shares_host_memory_so_loading_releases_the_file_pages() {
    assert!(shares_host_memory(&Device::Cpu));
    assert_eq!(FileCache::for_device(&Device::Cpu), FileCache::Release);

    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("model.safetensors");
    let values: Vec<f32> = (0..4 << 20).map(|i| (i % 977) as f32 * 0.5).collect();
    let weight = candle_core::Tensor::from_vec(values, (4096, 1024), &Device::Cpu).unwrap();
    let tensors = std::collections::HashMap::from([("weight", weight.clone())]);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    std::fs::File::open(&path).unwrap().sync_all().unwrap();
    // Read it once, as a first load would: the pages are cached and clean.
    std::fs::read(&path).unwrap();
    assert!(resident(&path) > 0.9, "{}", resident(&path));

    let checkpoint = Checkpoint::open(dir.path()).unwrap();
    let loaded = checkpoint
        .load("weight", None, DType::F32, &Device::Cpu)
        .unwrap();
    assert_eq!(
        loaded.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        weight.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    let after = resident(&path);
    assert!(
        after < 0.1,
        "{after} of the file is still cached beside its copy"
    );
}
