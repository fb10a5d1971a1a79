// Build script of VideosDGX's build of candle-kernels 0.11.1 (scripts/build-cuda.sh swaps it in
// with a cargo `patch`). Same element-wise PTX as upstream; the GGUF-quantized and MoE matmul
// kernels that upstream compiles into a static `libmoe.a` (15 heavy nvcc compilations, most of a
// CUDA build on a small machine) are replaced by stubs that abort with a message: VideosDGX runs
// no GGUF or MoE model. `VIDEOSDGX_CANDLE_PTX_DIR` may point at PTX an earlier identical build
// produced (same CUDA 13.0 nvcc and CUDA_COMPUTE_CAP) to skip recompiling it.
use cudaforge::{KernelBuilder, Result};
use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<()> {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src");
    println!("cargo::rerun-if-env-changed=VIDEOSDGX_CANDLE_PTX_DIR");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());

    match env::var_os("VIDEOSDGX_CANDLE_PTX_DIR") {
        Some(dir) => {
            for entry in std::fs::read_dir(&dir).expect("VIDEOSDGX_CANDLE_PTX_DIR is readable") {
                let path = entry.unwrap().path();
                if matches!(path.extension().and_then(|e| e.to_str()), Some("ptx" | "rs")) {
                    std::fs::copy(&path, out_dir.join(path.file_name().unwrap())).unwrap();
                }
            }
        }
        None => {
            let bindings = KernelBuilder::new()
                .source_dir("src")
                .exclude(&["moe_*.cu", "mmvq_gguf.cu", "mmq_*.cu"])
                .arg("--expt-relaxed-constexpr")
                .arg("-std=c++17")
                .arg("-O3")
                .build_ptx()?;
            bindings.write(out_dir.join("ptx.rs"))?;
        }
    }

    // One aborting stub per function src/ffi.rs declares.
    let ffi = std::fs::read_to_string("src/ffi.rs").unwrap();
    let mut stub = String::from("#include <stdio.h>\n#include <stdlib.h>\n");
    for line in ffi.lines() {
        if let Some(rest) = line.trim().strip_prefix("pub fn ") {
            let name = rest.split('(').next().unwrap();
            stub.push_str(&format!(
                "void {name}(void) {{ fprintf(stderr, \"candle-kernels: {name} is not built in VideosDGX (no GGUF/MoE kernels)\\n\"); abort(); }}\n"
            ));
        }
    }
    let c = out_dir.join("moe_stub.c");
    let o = out_dir.join("moe_stub.o");
    std::fs::write(&c, stub).unwrap();
    // The stub goes into the target's binary: in a cross build (scripts/build-cuda.sh 121 on
    // x86-64) the target's compiler and archiver, named as the cc crate reads them.
    let target = env::var("TARGET").unwrap().replace('-', "_");
    let tool = |name: &str, default: &str| {
        println!("cargo::rerun-if-env-changed={name}_{target}");
        env::var(format!("{name}_{target}"))
            .or_else(|_| env::var(name))
            .unwrap_or_else(|_| default.into())
    };
    assert!(Command::new(tool("CC", "cc")).args(["-c", "-fPIC", "-O2", "-o"]).arg(&o).arg(&c).status().unwrap().success());
    let lib = out_dir.join("libmoe.a");
    let _ = std::fs::remove_file(&lib);
    assert!(Command::new(tool("AR", "ar")).arg("rcs").arg(&lib).arg(&o).status().unwrap().success());
    println!("cargo:rustc-link-search={}", out_dir.display());
    println!("cargo:rustc-link-lib=static=moe");
    Ok(())
}
