//! NVRTC compilation of a kernel source to a CUBIN for one exact architecture, with an on-disk
//! cache keyed by a hash of (source, options, NVRTC version) and the architecture. A cache entry
//! is written to a temporary file and renamed, so a crashed or concurrent writer never leaves a
//! half-written CUBIN under the final name. Never compiles PTX for the driver to JIT.

use candle_core::cuda_backend::cudarc::nvrtc::{result, sys};
use candle_core::{Result, bail};
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the CUBIN came from and what it cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Origin {
    Compiled { ms: f64 },
    Cached { ms: f64 },
}

/// The kernel cache: `$VIDEOSDGX_KERNEL_CACHE`, else `$XDG_CACHE_HOME/videosdgx/kernels`,
/// else `~/.cache/videosdgx/kernels`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VIDEOSDGX_KERNEL_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("videosdgx").join("kernels")
}

fn nvrtc_version() -> Result<(i32, i32)> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters.
    let rc = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    if rc != sys::nvrtcResult::NVRTC_SUCCESS {
        bail!("nvrtcVersion failed: {rc:?}");
    }
    Ok((major, minor))
}

/// FNV-1a, 64 bit: stable across Rust releases, unlike `DefaultHasher`.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The CUBIN of `src` for `arch` (e.g. `sm_90`, `sm_90a`, `sm_121`), from `cache` or compiled.
pub fn cubin(name: &str, src: &str, arch: &str, cache: &Path) -> Result<(Vec<u8>, Origin)> {
    let start = Instant::now();
    // No --use_fast_math: RoPE needs accurate sincosf at large angles; kernels that want
    // approximate maths ask for it explicitly in PTX.
    let options = [
        format!("--gpu-architecture={arch}"),
        "-std=c++17".to_string(),
    ];
    let (major, minor) = nvrtc_version()?;
    let version = format!("nvrtc {major}.{minor}");
    let opts_joined = options.join(" ");
    let key = fnv1a(&[src.as_bytes(), opts_joined.as_bytes(), version.as_bytes()]);
    let path = cache.join(format!("{name}-{arch}-{key:016x}.cubin"));
    if let Ok(bytes) = std::fs::read(&path)
        && !bytes.is_empty()
    {
        return Ok((
            bytes,
            Origin::Cached {
                ms: start.elapsed().as_secs_f64() * 1e3,
            },
        ));
    }
    let bytes = compile(name, src, &options)?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    // A cache we cannot write only costs a recompile next time; say so and go on.
    if let Err(err) = store(&path, &bytes) {
        tracing::warn!("kernel cache {} not written: {err}", path.display());
    }
    Ok((bytes, Origin::Compiled { ms }))
}

fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache entries live in a directory");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap().to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn compile(name: &str, src: &str, options: &[String]) -> Result<Vec<u8>> {
    let c_src = CString::new(src)
        .map_err(|_| candle_core::Error::Msg(format!("{name}: NUL in kernel source")))?;
    let c_name = CString::new(format!("{name}.cu")).expect("kernel names have no NUL");
    let prog = result::create_program(&c_src, Some(&c_name))
        .map_err(|e| candle_core::Error::Msg(format!("{name}: nvrtcCreateProgram: {e:?}")))?;
    let outcome = (|| {
        // SAFETY: prog is a live program; options are valid C strings.
        if let Err(e) = unsafe { result::compile_program(prog, options) } {
            // SAFETY: as above.
            let log = unsafe { result::get_program_log(prog) }.unwrap_or_default();
            // SAFETY: the log is NUL-terminated by NVRTC.
            let log = unsafe { CStr::from_ptr(log.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            bail!("{name}: NVRTC compilation failed ({e:?}) with {options:?}:\n{log}");
        }
        let mut size = 0usize;
        // SAFETY: prog compiled successfully; out-parameter.
        let rc = unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) };
        if rc != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
            bail!(
                "{name}: no CUBIN from NVRTC ({rc:?}); the architecture must be a real one like sm_90"
            );
        }
        let mut bytes = vec![0u8; size];
        // SAFETY: bytes has the size NVRTC reported.
        let rc = unsafe { sys::nvrtcGetCUBIN(prog, bytes.as_mut_ptr().cast()) };
        if rc != sys::nvrtcResult::NVRTC_SUCCESS {
            bail!("{name}: nvrtcGetCUBIN failed: {rc:?}");
        }
        Ok(bytes)
    })();
    // SAFETY: prog is not used after this.
    let _ = unsafe { result::destroy_program(prog) };
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_changes_with_every_part() {
        let a = fnv1a(&[b"src", b"opts"]);
        assert_ne!(a, fnv1a(&[b"src2", b"opts"]));
        assert_ne!(a, fnv1a(&[b"src", b"opts2"]));
        // Part boundaries matter: moving bytes between parts is a different key.
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }
}
