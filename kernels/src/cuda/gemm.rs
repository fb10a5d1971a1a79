//! GEMMs on cuBLASLt with fused epilogues (bias, tanh GELU, a residual as C with beta 1): bf16
//! operands, or float8 (e4m3) operands each scaled per row (the activations per token, the weight
//! per output channel: cuBLASLt's outer-vector scaling), always with a bf16 output.
//!
//! cuBLASLt's heuristic ranks its algorithms without running them, and its first pick can be far
//! from the best for some epilogues (the FFN's GELU: 1.81 ms against 1.20 for the same GEMM with
//! a bias only). So the first call of each shape and epilogue times the heuristic's candidates on
//! the real operands and keeps the fastest (logged); later calls reuse it. A GEMM that reads its
//! output (beta 1) is not timed, since each trial would add into it: it takes the first pick.

use super::driver_err;
use candle_core::cuda_backend::cudarc::cublaslt::{result, sys};
use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtrMut};
use candle_core::cuda_backend::{CudaDevice, DeviceId};
use candle_core::{Result, bail};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

/// Candidates timed per shape; cuBLASLt rarely returns more than a handful that differ.
const CANDIDATES: usize = 16;
/// cuBLASLt's recommended workspace on Hopper.
const WORKSPACE_BYTES: usize = 32 << 20;

/// `d[rows, n] = x[rows, k] w[n, k]^T (+ bias[n]) (then GELU) (+ d when accumulate)`, row-major,
/// every operand on one device and given by its device address; `d`, the bias and the residual
/// bf16.
pub(super) struct Gemm {
    pub rows: usize,
    pub n: usize,
    pub k: usize,
    pub x: u64,
    pub w: u64,
    pub operands: Operands,
    pub d: u64,
    pub bias: Option<u64>,
    pub gelu: bool,
    /// `d` holds a residual to add (beta 1).
    pub accumulate: bool,
}

/// What `x` and `w` hold.
#[derive(Clone, Copy)]
pub(super) enum Operands {
    Bf16,
    /// e4m3, the product of row `r` of x and row `c` of w multiplied by `x_scale[r] · w_scale[c]`
    /// (f32 vectors of `rows` and `n` elements).
    Fp8 {
        x_scale: u64,
        w_scale: u64,
    },
    /// e4m3 without scales: the caller scales the bf16 product.
    Fp8Unscaled,
}

impl Operands {
    /// Tells the operand kinds apart in the tuned algorithms' keys.
    fn kind(self) -> u8 {
        match self {
            Operands::Bf16 => 0,
            Operands::Fp8 { .. } => 1,
            Operands::Fp8Unscaled => 2,
        }
    }
}

/// A cuBLASLt handle and its workspace on one device.
struct Lt {
    handle: sys::cublasLtHandle_t,
    workspace: Mutex<CudaSlice<u8>>,
}

// SAFETY: cuBLASLt handles may be used from any thread; calls on one handle are serialised by the
// workspace lock, which every matmul holds while it is enqueued.
unsafe impl Send for Lt {}
unsafe impl Sync for Lt {}

impl Drop for Lt {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `create_handle` and is destroyed once, here.
        let _ = unsafe { result::destroy_handle(self.handle) };
    }
}

/// What identifies a tuned algorithm.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    device: DeviceId,
    rows: usize,
    n: usize,
    k: usize,
    epilogue: u32,
    accumulate: bool,
    operands: u8,
}

fn lt(dev: &CudaDevice) -> Result<Arc<Lt>> {
    static HANDLES: OnceLock<Mutex<HashMap<DeviceId, Arc<Lt>>>> = OnceLock::new();
    let mut handles = HANDLES
        .get_or_init(Default::default)
        .lock()
        .expect("cublasLt handles poisoned");
    if let Some(h) = handles.get(&dev.id()) {
        return Ok(h.clone());
    }
    dev.cuda_stream()
        .context()
        .bind_to_thread()
        .map_err(driver_err("bind context"))?;
    let handle = result::create_handle().map_err(driver_err("cublasLt handle"))?;
    // SAFETY: cuBLASLt only ever writes the workspace.
    let workspace = unsafe { dev.alloc::<u8>(WORKSPACE_BYTES) }?;
    let h = Arc::new(Lt {
        handle,
        workspace: Mutex::new(workspace),
    });
    tracing::info!(
        "kernels: running cublasLt matmuls with fused bias/GELU/residual epilogues, algorithms timed per shape"
    );
    handles.insert(dev.id(), h.clone());
    Ok(h)
}

fn algorithms() -> &'static Mutex<HashMap<Key, sys::cublasLtMatmulAlgo_t>> {
    static ALGOS: OnceLock<Mutex<HashMap<Key, sys::cublasLtMatmulAlgo_t>>> = OnceLock::new();
    ALGOS.get_or_init(Default::default)
}

/// The descriptors of one GEMM, destroyed on drop.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    pref: sys::cublasLtMatmulPreference_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created in `Plan::new` and is destroyed once, here.
        unsafe {
            let _ = result::destroy_matmul_pref(self.pref);
            let _ = result::destroy_matrix_layout(self.c);
            let _ = result::destroy_matrix_layout(self.b);
            let _ = result::destroy_matrix_layout(self.a);
            let _ = result::destroy_matmul_desc(self.desc);
        }
    }
}

impl Plan {
    /// Row-major `d[rows, n] = x[rows, k] w[n, k]^T` is column-major `d^T (n x rows) = w^T x^T`:
    /// A = w read transposed (k x n, ld k), B = x (k x rows, ld k), C = D (n x rows, ld n); the
    /// bias runs along C's rows, i.e. along d's last dim. FP8 needs exactly this transposed A and
    /// plain B; A's outer-vector scale runs along C's rows (w's output channels), B's along its
    /// columns (x's rows).
    fn new(g: &Gemm, epilogue: sys::cublasLtEpilogue_t) -> Result<Self> {
        let bf16 = sys::cudaDataType_t::CUDA_R_16BF;
        let input = match g.operands {
            Operands::Bf16 => bf16,
            Operands::Fp8 { .. } | Operands::Fp8Unscaled => sys::cudaDataType_t::CUDA_R_8F_E4M3,
        };
        let (rows, n, k) = (g.rows as u64, g.n as u64, g.k as u64);
        let desc = result::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        )
        .map_err(driver_err("matmul descriptor"))?;
        let mut plan = Plan {
            desc,
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            c: std::ptr::null_mut(),
            pref: std::ptr::null_mut(),
        };
        plan.a =
            result::create_matrix_layout(input, k, n, k as i64).map_err(driver_err("layout"))?;
        plan.b =
            result::create_matrix_layout(input, k, rows, k as i64).map_err(driver_err("layout"))?;
        plan.c =
            result::create_matrix_layout(bf16, n, rows, n as i64).map_err(driver_err("layout"))?;
        plan.pref = result::create_matmul_pref().map_err(driver_err("preference"))?;
        // cublasOperation_t's CUBLAS_OP_T (cuBLASLt's bindings do not carry the enum).
        let transpose = 1i32;
        use sys::cublasLtMatmulDescAttributes_t as Attr;
        // SAFETY: each attribute is given a value of the type cuBLASLt documents for it.
        unsafe {
            set_desc(plan.desc, Attr::CUBLASLT_MATMUL_DESC_TRANSA, &transpose)?;
            set_desc(plan.desc, Attr::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue)?;
            if let Some(bias) = &g.bias {
                set_desc(plan.desc, Attr::CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias)?;
            }
            if let Operands::Fp8 { x_scale, w_scale } = &g.operands {
                let outer =
                    sys::cublasLtMatmulMatrixScale_t::CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
                set_desc(plan.desc, Attr::CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &outer)?;
                set_desc(plan.desc, Attr::CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &outer)?;
                set_desc(
                    plan.desc,
                    Attr::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                    w_scale,
                )?;
                set_desc(
                    plan.desc,
                    Attr::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                    x_scale,
                )?;
            }
            result::set_matmul_pref_attribute(
                plan.pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&WORKSPACE_BYTES) as *const usize as *const c_void,
                size_of::<usize>(),
            )
            .map_err(driver_err("workspace preference"))?;
        }
        Ok(plan)
    }
}

/// # Safety
/// `value` must have the type cuBLASLt documents for `attr`.
unsafe fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> Result<()> {
    // SAFETY: per the caller, `value` is what `attr` expects; cuBLASLt copies it.
    unsafe {
        result::set_matmul_desc_attribute(
            desc,
            attr,
            value as *const T as *const c_void,
            size_of::<T>(),
        )
    }
    .map_err(driver_err("matmul attribute"))
}

fn epilogue_of(g: &Gemm) -> sys::cublasLtEpilogue_t {
    use sys::cublasLtEpilogue_t as E;
    match (g.bias.is_some(), g.gelu) {
        (true, true) => E::CUBLASLT_EPILOGUE_GELU_BIAS,
        (true, false) => E::CUBLASLT_EPILOGUE_BIAS,
        (false, true) => E::CUBLASLT_EPILOGUE_GELU,
        (false, false) => E::CUBLASLT_EPILOGUE_DEFAULT,
    }
}

/// Whether cuBLASLt on `dev` has an algorithm for FP8 operands, with outer-vector scales and this
/// epilogue when `scaled` (Hopper may lack it), or plain e4m3 into bf16 otherwise; asked once per
/// device and kind on a small plan.
pub(super) fn fp8_supported(
    dev: &CudaDevice,
    scaled: bool,
    bias: bool,
    gelu: bool,
) -> Result<bool> {
    type Known = Mutex<HashMap<(DeviceId, bool, bool, bool), bool>>;
    static SUPPORTED: OnceLock<Known> = OnceLock::new();
    let mut known = SUPPORTED
        .get_or_init(Default::default)
        .lock()
        .expect("FP8 support poisoned");
    let key = (dev.id(), scaled, bias, gelu);
    if let Some(&supported) = known.get(&key) {
        return Ok(supported);
    }
    let lt = lt(dev)?;
    let probe = Gemm {
        rows: 64,
        n: 64,
        k: 64,
        x: 0,
        w: 0,
        operands: if scaled {
            Operands::Fp8 {
                x_scale: 0,
                w_scale: 0,
            }
        } else {
            Operands::Fp8Unscaled
        },
        d: 0,
        bias: bias.then_some(0),
        gelu,
        accumulate: false,
    };
    let supported = heuristic(&lt, &Plan::new(&probe, epilogue_of(&probe))?, 1).is_ok();
    tracing::info!(
        "kernels: cublasLt FP8 GEMMs {} (bias {bias}, gelu {gelu}): {}",
        if scaled {
            "with per-row scales"
        } else {
            "without scales"
        },
        if supported {
            "available"
        } else {
            "unavailable"
        }
    );
    known.insert(key, supported);
    Ok(supported)
}

/// Enqueues `g` on the device's stream with the shape's tuned algorithm (tuning it on first use).
///
/// # Safety
/// The addresses in `g` must hold the operands it describes on `dev`, alive until the GEMM has
/// run on the device's stream.
pub(super) unsafe fn gemm(dev: &CudaDevice, g: &Gemm) -> Result<()> {
    let lt = lt(dev)?;
    let epilogue = epilogue_of(g);
    let plan = Plan::new(g, epilogue)?;
    let key = Key {
        device: dev.id(),
        rows: g.rows,
        n: g.n,
        k: g.k,
        epilogue: epilogue as u32,
        accumulate: g.accumulate,
        operands: g.operands.kind(),
    };
    let cached = algorithms()
        .lock()
        .expect("algorithms poisoned")
        .get(&key)
        .copied();
    let mut workspace = lt.workspace.lock().expect("cublasLt workspace poisoned");
    let stream = dev.cuda_stream();
    let (ws, _ws_guard) = workspace.device_ptr_mut(&stream);
    let run = |algo: &sys::cublasLtMatmulAlgo_t| -> Result<()> {
        let (alpha, beta) = (1f32, if g.accumulate { 1f32 } else { 0f32 });
        // SAFETY: the plan describes the operands at these addresses (the caller's contract);
        // the workspace is ours while the lock is held.
        unsafe {
            result::matmul(
                lt.handle,
                plan.desc,
                (&alpha) as *const f32 as *const c_void,
                (&beta) as *const f32 as *const c_void,
                g.w as *const c_void,
                plan.a,
                g.x as *const c_void,
                plan.b,
                g.d as *const c_void,
                plan.c,
                g.d as *mut c_void,
                plan.c,
                algo,
                ws as *mut c_void,
                WORKSPACE_BYTES,
                stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(driver_err("cublasLt matmul"))
    };
    let algo = match cached {
        Some(algo) => algo,
        None => {
            let candidates = heuristic(&lt, &plan, if g.accumulate { 1 } else { CANDIDATES })?;
            let algo = if candidates.len() == 1 {
                candidates[0]
            } else {
                fastest(dev, g, &candidates, &run)?
            };
            algorithms()
                .lock()
                .expect("algorithms poisoned")
                .insert(key, algo);
            algo
        }
    };
    run(&algo)
}

/// Up to `count` algorithms cuBLASLt proposes for `plan`, best-ranked first.
fn heuristic(lt: &Lt, plan: &Plan, count: usize) -> Result<Vec<sys::cublasLtMatmulAlgo_t>> {
    let mut results =
        vec![std::mem::MaybeUninit::<sys::cublasLtMatmulHeuristicResult_t>::uninit(); count];
    let mut found = 0i32;
    // SAFETY: `results` has room for `count` entries; cuBLASLt writes `found` of them.
    unsafe {
        sys::cublasLtMatmulAlgoGetHeuristic(
            lt.handle,
            plan.desc,
            plan.a,
            plan.b,
            plan.c,
            plan.c,
            plan.pref,
            count as i32,
            results.as_mut_ptr() as *mut sys::cublasLtMatmulHeuristicResult_t,
            &mut found,
        )
    }
    .result()
    .map_err(driver_err("cublasLt heuristic"))?;
    let algos: Vec<_> = results[..found.max(0) as usize]
        .iter()
        // SAFETY: the first `found` entries were written.
        .map(|r| unsafe { r.assume_init() })
        .filter(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
        .map(|r| r.algo)
        .collect();
    if algos.is_empty() {
        bail!("cublasLt has no algorithm for this GEMM");
    }
    Ok(algos)
}

/// Times each candidate (one warm-up, best of three, CUDA events on the stream) on the real
/// operands and returns the fastest; a candidate that fails to launch is skipped.
fn fastest(
    dev: &CudaDevice,
    g: &Gemm,
    candidates: &[sys::cublasLtMatmulAlgo_t],
    run: &impl Fn(&sys::cublasLtMatmulAlgo_t) -> Result<()>,
) -> Result<sys::cublasLtMatmulAlgo_t> {
    let stream = dev.cuda_stream();
    let event = || {
        stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(driver_err("event"))
    };
    let mut timed = Vec::new();
    for (i, algo) in candidates.iter().enumerate() {
        if run(algo).is_err() {
            continue;
        }
        let mut best = f32::INFINITY;
        for _ in 0..3 {
            let start = event()?;
            run(algo)?;
            let end = event()?;
            end.synchronize().map_err(driver_err("event sync"))?;
            best = best.min(start.elapsed_ms(&end).map_err(driver_err("event time"))?);
        }
        timed.push((best, i));
    }
    let Some(&(ms, i)) = timed.iter().min_by(|a, b| a.0.total_cmp(&b.0)) else {
        bail!("no cublasLt algorithm ran for this GEMM");
    };
    let first = timed.iter().find(|t| t.1 == 0).map_or(f32::NAN, |t| t.0);
    tracing::info!(
        "kernels: cublasLt {}x{}x{} (bias {}, gelu {}, operands {}): candidate {i} of {} at {ms:.3} ms (heuristic's first: {first:.3} ms)",
        g.rows,
        g.n,
        g.k,
        g.bias.is_some(),
        g.gelu,
        ["bf16", "e4m3 scaled", "e4m3"][g.operands.kind() as usize],
        candidates.len()
    );
    Ok(candidates[i])
}
