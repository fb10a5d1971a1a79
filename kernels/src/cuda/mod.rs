//! CUDA entry points: load each kernel module for the GPU present (NVRTC CUBIN, disk-cached),
//! check the inputs, and launch on candle's stream as custom ops. Every load is logged with the
//! kernel's name and architecture, so a run's log says which kernel did the work.

mod attention_fp8;
#[cfg(feature = "cudnn")]
mod conv;
mod gemm;
mod image;
mod nvrtc;
pub use attention_fp8::{attention_fp8, attention_fp8_supported};
#[cfg(feature = "cudnn")]
pub use conv::{frame_conv, image_conv_nhwc};
pub use image::{scatter_channels, warp};

use crate::spec::{
    CausalMask, ChannelDivisor, FramePadding, NormKind, NormSpec, RopeGrid, RotaryPairs, SpatialPad,
};
use crate::targets::{
    self, AttentionVariant, GEMM, LAYOUT, NORM, QUANT, ROPE, Source, attention_variant,
    causal_attention_variant,
};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute_enum;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
    LaunchConfig, PushKernelArg, SyncOnDrop, result as driver,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, DeviceId};
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, InplaceOp2, Layout, Result, Shape,
    Storage, Tensor, bail,
};
use half::bf16;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

pub use nvrtc::cache_dir as kernel_cache_dir;

/// The kernel [`attention`] would run for a query like `q` (its device, dtype and head dim), or
/// `None` when it has none: not on CUDA, not bf16, or an unsupported head dim.
pub fn attention_kernel_for(q: &Tensor) -> Result<Option<&'static str>> {
    let Device::Cuda(dev) = q.device() else {
        return Ok(None);
    };
    if q.dtype() != DType::BF16 {
        return Ok(None);
    }
    Ok(attention_variant(q.dim(candle_core::D::Minus1)?, compute_capability(dev)?).map(|v| v.name))
}

static POISON: AtomicBool = AtomicBool::new(false);

/// Checks only: fill every kernel output with NaN before the kernel runs, so an element the
/// kernel fails to write shows up. Costs one memset per call.
#[doc(hidden)]
pub fn set_poison_outputs(on: bool) {
    POISON.store(on, Ordering::Relaxed);
}

type ModuleKey = (DeviceId, &'static str);
fn modules() -> &'static Mutex<HashMap<ModuleKey, Arc<CudaModule>>> {
    static MODULES: OnceLock<Mutex<HashMap<ModuleKey, Arc<CudaModule>>>> = OnceLock::new();
    MODULES.get_or_init(Default::default)
}

/// The GPU's compute capability, asked of the driver once per device (every attention and FP8
/// product dispatches on it).
fn compute_capability(dev: &CudaDevice) -> Result<(i32, i32)> {
    static KNOWN: OnceLock<Mutex<HashMap<DeviceId, (i32, i32)>>> = OnceLock::new();
    let known = KNOWN.get_or_init(Default::default);
    if let Some(cc) = known.lock().expect("capabilities poisoned").get(&dev.id()) {
        return Ok(*cc);
    }
    let cc = dev
        .cuda_stream()
        .context()
        .compute_capability()
        .map_err(driver_err("compute capability"))?;
    known
        .lock()
        .expect("capabilities poisoned")
        .insert(dev.id(), cc);
    Ok(cc)
}

/// The NVRTC target for `src` on this GPU (see [`targets::arch`]).
fn arch(dev: &CudaDevice, src: &Source) -> Result<String> {
    targets::arch(compute_capability(dev)?, src).map_err(candle_core::Error::Msg)
}

fn driver_err<E: std::fmt::Debug>(what: &'static str) -> impl FnOnce(E) -> candle_core::Error {
    move |e| candle_core::Error::Msg(format!("CUDA {what}: {e:?}"))
}

/// How long getting one module's CUBIN took and whether NVRTC ran.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CompileReport {
    pub module: &'static str,
    pub arch: String,
    pub compiled: bool,
    pub ms: f64,
}

fn load(
    dev: &CudaDevice,
    src: &'static Source,
) -> Result<(Arc<CudaModule>, Option<CompileReport>)> {
    let mut map = modules().lock().expect("module map poisoned");
    if let Some(m) = map.get(&(dev.id(), src.name)) {
        return Ok((m.clone(), None));
    }
    let arch = arch(dev, src)?;
    let (cubin, origin) = nvrtc::cubin(src.name, src.code, &arch, &nvrtc::cache_dir())?;
    let module = dev
        .cuda_stream()
        .context()
        .load_module(Ptx::from_binary(cubin))
        .map_err(driver_err("module load"))?;
    let report = report(src, arch, origin);
    tracing::info!(
        "kernels: module {} for {} {} in {:.1} ms",
        report.module,
        report.arch,
        if report.compiled {
            "compiled by NVRTC"
        } else {
            "loaded from cache"
        },
        report.ms
    );
    map.insert((dev.id(), src.name), module.clone());
    Ok((module, Some(report)))
}

/// The kernel `name` of module `src`; its first use on a device is logged, so the log of any run
/// names every kernel that did work in it.
fn function(dev: &CudaDevice, src: &'static Source, name: &'static str) -> Result<CudaFunction> {
    type Functions = Mutex<HashMap<(DeviceId, &'static str), CudaFunction>>;
    static FUNCTIONS: OnceLock<Functions> = OnceLock::new();
    let functions = FUNCTIONS.get_or_init(Default::default);
    if let Some(f) = functions
        .lock()
        .expect("function map poisoned")
        .get(&(dev.id(), name))
    {
        return Ok(f.clone());
    }
    let (module, _) = load(dev, src)?;
    let f = module
        .load_function(name)
        .map_err(driver_err("function lookup"))?;
    tracing::info!(
        "kernels: running {name} ({}) on {}",
        src.name,
        arch(dev, src)?
    );
    functions
        .lock()
        .expect("function map poisoned")
        .insert((dev.id(), name), f.clone());
    Ok(f)
}

/// The modules this GPU can run.
fn sources_for(dev: &CudaDevice) -> Result<impl Iterator<Item = &'static Source>> {
    Ok(targets::sources_for(compute_capability(dev)?))
}

/// Compiles every module this GPU can run into `cache` (or reads it from there) without loading
/// it: NVRTC's cost, cold with an empty `cache`, cached with a filled one.
pub fn compile_report(device: &Device, cache: &std::path::Path) -> Result<Vec<CompileReport>> {
    let Device::Cuda(dev) = device else {
        bail!("compile_report needs a CUDA device, got {device:?}")
    };
    compile_for(compute_capability(dev)?, cache)
}

/// Compiles every module a GPU of capability `cc` runs, for its architecture, into `cache`
/// (or reads it from there). NVRTC needs no such GPU: this is how the kernels are checked for
/// cards that are not present (GB10's sm_121).
pub fn compile_for(cc: targets::Capability, cache: &std::path::Path) -> Result<Vec<CompileReport>> {
    targets::sources_for(cc)
        .map(|src| {
            let arch = targets::arch(cc, src).map_err(candle_core::Error::Msg)?;
            let (_, origin) = nvrtc::cubin(src.name, src.code, &arch, cache)?;
            Ok(report(src, arch, origin))
        })
        .collect()
}

fn report(src: &Source, arch: String, origin: nvrtc::Origin) -> CompileReport {
    match origin {
        nvrtc::Origin::Compiled { ms } => CompileReport {
            module: src.name,
            arch,
            compiled: true,
            ms,
        },
        nvrtc::Origin::Cached { ms } => CompileReport {
            module: src.name,
            arch,
            compiled: false,
            ms,
        },
    }
}

/// Loads (compiling if not cached) every kernel module this GPU can run; returns one report per
/// module newly loaded in this process.
pub fn compile_all(device: &Device) -> Result<Vec<CompileReport>> {
    let Device::Cuda(dev) = device else {
        bail!("compile_all needs a CUDA device, got {device:?}")
    };
    let mut reports = Vec::new();
    for src in sources_for(dev)? {
        if let (_, Some(r)) = load(dev, src)? {
            reports.push(r);
        }
    }
    Ok(reports)
}

/// Device address of a `T` operand's first element, with the guard that orders its use.
fn typed_ptr<'a, T: CudaDType + 'static>(
    s: &'a CudaStorage,
    l: &Layout,
    stream: &'a CudaStream,
) -> Result<(u64, SyncOnDrop<'a>)> {
    let slice = s.as_cuda_slice::<T>()?;
    let (ptr, sync) = slice.device_ptr(stream);
    Ok((ptr + (size_of::<T>() * l.start_offset()) as u64, sync))
}

/// Allocates the output and poisons it when checks asked for that.
fn output<T: DeviceRepr>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    // SAFETY: every element is written by the kernel that follows (the GPU checks prove it by
    // poisoning first).
    let mut out = unsafe { dev.alloc::<T>(len) }?;
    if POISON.load(Ordering::Relaxed) {
        let stream = dev.cuda_stream();
        let (ptr, _sync) = out.device_ptr_mut(&stream);
        // SAFETY: ptr covers len T allocated on this stream; all-ones bytes are a NaN in bf16
        // and f32.
        unsafe { driver::memset_d8_async(ptr, 0xff, len * size_of::<T>(), stream.cu_stream()) }
            .map_err(driver_err("memset"))?;
    }
    Ok(out)
}

/// Element strides of a `[B, L, H, D]` operand, checked for what cp.async needs.
fn strides_bl_h(l: &Layout, what: &str) -> Result<[i64; 3]> {
    let st = l.stride();
    if st.len() != 4 || st[3] != 1 {
        bail!("fused attention: {what} must have a contiguous last dim, strides {st:?}");
    }
    if !l.start_offset().is_multiple_of(8) || st[..3].iter().any(|s| !s.is_multiple_of(8)) {
        bail!(
            "fused attention: {what} offset/strides must be multiples of 8 elements (16 bytes), got {} / {st:?}",
            l.start_offset()
        );
    }
    Ok([st[0] as i64, st[1] as i64, st[2] as i64])
}

/// A TMA tensor map (CUtensorMap: 128 opaque bytes), passed to the kernel by value.
#[repr(C, align(128))]
struct TensorMap([u64; 16]);

// SAFETY: plain bytes the driver reads as a kernel parameter.
unsafe impl DeviceRepr for TensorMap {}

impl TensorMap {
    /// Describes bf16 `[B, L, H, D]` at `ptr` (element strides `[sb, sl, sh]`, D contiguous) as
    /// dims (D, H, L, B) read in boxes of 64 x 1 x 128 x 1 with 128-byte swizzle, the tile half
    /// that attention_tma.cu expects; out-of-range rows read as zeros.
    fn bhld(ptr: u64, [b, l, h, d]: [usize; 4], [sb, sl, sh]: [i64; 3]) -> Result<Self> {
        Self::tiled(
            ptr,
            TensorMapElement::Bf16,
            [d, h, l, b],
            [sh as u64 * 2, sl as u64 * 2, sb as u64 * 2],
            [64, 1, 128, 1],
        )
    }

    /// A 4-D tensor of `element`s at `ptr`: `dims` innermost first, the outer three dims'
    /// `byte_strides`, read in boxes of `boxes` elements into 128-byte-swizzled shared memory (the
    /// innermost box dim at most 128 bytes); out-of-range elements read as zeros.
    fn tiled(
        ptr: u64,
        element: TensorMapElement,
        dims: [usize; 4],
        byte_strides: [u64; 3],
        boxes: [u32; 4],
    ) -> Result<Self> {
        use candle_core::cuda_backend::cudarc::driver::sys;
        let mut map = TensorMap([0; 16]);
        let dims = dims.map(|d| d as u64);
        let element_strides = [1u32; 4];
        let data_type = match element {
            TensorMapElement::Bf16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            TensorMapElement::Byte => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
        };
        // SAFETY: every array has the rank's length; map is 128 bytes, 128-aligned.
        let rc = unsafe {
            sys::cuTensorMapEncodeTiled(
                (&mut map as *mut TensorMap).cast(),
                data_type,
                4,
                ptr as *mut std::ffi::c_void,
                dims.as_ptr(),
                byte_strides.as_ptr(),
                boxes.as_ptr(),
                element_strides.as_ptr(),
                sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
                sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
        };
        if rc != sys::CUresult::CUDA_SUCCESS {
            bail!(
                "fused attention: cuTensorMapEncodeTiled failed ({rc:?}) for dims {dims:?}, byte strides {byte_strides:?}"
            );
        }
        Ok(map)
    }
}

/// The elements a [`TensorMap`] reads: bf16, or bytes (float8).
enum TensorMapElement {
    Bf16,
    Byte,
}

struct FusedAttention {
    scale: f32,
    variant: &'static AttentionVariant,
    /// The causal kernel's mask and query heads per key/value head.
    causal: Option<(CausalMask, usize)>,
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("fused attention runs on CUDA only; reference::attention is the CPU version")
    }

    fn cuda_fwd(
        &self,
        qs: &CudaStorage,
        ql: &Layout,
        ks: &CudaStorage,
        kl: &Layout,
        vs: &CudaStorage,
        vl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = qs.device().clone();
        let (b, lq, h, d) = ql.shape().dims4()?;
        let lk = kl.shape().dims4()?.1;
        let (qst, kst, vst) = (
            strides_bl_h(ql, "q")?,
            strides_bl_h(kl, "k")?,
            strides_bl_h(vl, "v")?,
        );
        let mut out = output::<bf16>(&dev, b * lq * h * d)?;
        let func = function(&dev, self.variant.source, self.variant.name)?;
        let smem = self.variant.shared_bytes;
        func.set_attribute(
            CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem as i32,
        )
        .map_err(driver_err("shared memory limit"))?;
        let stream = dev.cuda_stream();
        let (q, _qg) = typed_ptr::<bf16>(qs, ql, &stream)?;
        let (k, _kg) = typed_ptr::<bf16>(ks, kl, &stream)?;
        let (v, _vg) = typed_ptr::<bf16>(vs, vl, &stream)?;
        let ost = [(lq * h * d) as i64, (h * d) as i64, d as i64];
        let (lq32, lk32) = (lq as i32, lk as i32);
        let scale_log2 = self.scale * std::f32::consts::LOG2_E;
        let cfg = LaunchConfig {
            grid_dim: (lq.div_ceil(self.variant.block_m) as u32, h as u32, b as u32),
            block_dim: (self.variant.threads, 1, 1),
            shared_mem_bytes: smem,
        };
        if self.variant.tensor_maps {
            let maps = [
                TensorMap::bhld(q, [b, lq, h, d], qst)?,
                TensorMap::bhld(k, [b, lk, h, d], kst)?,
                TensorMap::bhld(v, [b, lk, h, d], vst)?,
            ];
            let mut launch = stream.launch_builder(&func);
            launch
                .arg(&maps[0])
                .arg(&maps[1])
                .arg(&maps[2])
                .arg(&mut out)
                .arg(&lq32)
                .arg(&lk32);
            for s in &ost {
                launch.arg(s);
            }
            launch.arg(&scale_log2);
            // SAFETY: argument list matches attention_wgmma_tma_d128 in attention_tma.cu; the maps
            // describe live tensors that outlive the launch (their guards are held above).
            unsafe { launch.launch(cfg) }.map_err(driver_err("attention launch"))?;
        } else {
            let causal = match &self.causal {
                Some((mask, groups)) => {
                    let ranges = match &mask.real_keys {
                        Some(ranges) => {
                            let flat: Vec<i32> = ranges
                                .iter()
                                .flat_map(|&(first, last)| [first as i32, last as i32])
                                .collect();
                            Some(dev.clone_htod(&flat)?)
                        }
                        None => None,
                    };
                    let window = mask.window.unwrap_or(0) as i32;
                    Some((*groups as i32, mask.offset as i32, window, ranges))
                }
                None => None,
            };
            let no_ranges = 0u64;
            let mut launch = stream.launch_builder(&func);
            launch
                .arg(&q)
                .arg(&k)
                .arg(&v)
                .arg(&mut out)
                .arg(&lq32)
                .arg(&lk32);
            for s in qst.iter().chain(&kst).chain(&vst).chain(&ost) {
                launch.arg(s);
            }
            launch.arg(&scale_log2);
            if let Some((groups, offset, window, ranges)) = &causal {
                launch.arg(groups).arg(offset).arg(window);
                match ranges {
                    Some(ranges) => launch.arg(ranges),
                    None => launch.arg(&no_ranges),
                };
            }
            // SAFETY: argument list matches the kernel signature in attention.cu (the causal
            // kernels take four more); shapes and the mask checked.
            unsafe { launch.launch(cfg) }.map_err(driver_err("attention launch"))?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((b, lq, h, d)),
        ))
    }
}

/// Fused multi-head attention, non-causal: `softmax(q k^T * softmax_scale) v`.
///
/// `q [B, Lq, H, D]`, `k`/`v [B, Lk, H, D]`, all bf16 on one CUDA device, D = 64 or 128, last
/// dim contiguous (other dims may be strided views). Returns bf16 `[B, Lq, H, D]`. Errors,
/// rather than falling back, on anything else. Which kernel runs: [`attention_kernel_for`].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, softmax_scale: f32) -> Result<Tensor> {
    let (dev, d) = check_attention_operands(q, k, v, "fused attention")?;
    let Some(variant) = attention_variant(d, compute_capability(dev)?) else {
        bail!("fused attention: head_dim {d} not supported (64 or 128)");
    };
    q.apply_op3_no_bwd(
        k,
        v,
        &FusedAttention {
            scale: softmax_scale,
            variant,
            causal: None,
        },
    )
}

/// The CUDA device and head dim of non-causal attention operands: `q [B, Lq, H, D]`, `k`/`v
/// [B, Lk, H, D]` with keys, all bf16 on q's CUDA device.
fn check_attention_operands<'a>(
    q: &'a Tensor,
    k: &Tensor,
    v: &Tensor,
    what: &str,
) -> Result<(&'a CudaDevice, usize)> {
    let (b, _, h, d) = q.dims4()?;
    let (kb, lk, kh, kd) = k.dims4()?;
    if (kb, kh, kd) != (b, h, d) || v.dims() != k.dims() {
        bail!(
            "{what}: shapes disagree: q {:?}, k {:?}, v {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if lk == 0 || q.dim(1)? == 0 {
        bail!(
            "{what}: q, k and v need tokens, got q {:?}, k {:?}",
            q.dims(),
            k.dims()
        );
    }
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        if t.dtype() != DType::BF16 {
            bail!("{what}: {name} must be bf16, got {:?}", t.dtype());
        }
        if !t.device().is_cuda() || !t.device().same_device(q.device()) {
            bail!("{what}: {name} must be on the CUDA device of q");
        }
    }
    let Device::Cuda(dev) = q.device() else {
        unreachable!("checked above")
    };
    Ok((dev, d))
}

/// The causal attention of a language model: `softmax(q k^T * softmax_scale + mask) v` with the
/// keys each query sees given by `mask` ([`CausalMask`]), and grouped key/value heads (query head
/// `h` reads key/value head `h / (H / Hkv)`).
///
/// `q [B, Lq, H, D]`, `k`/`v [B, Lk, Hkv, D]` (the keys so far: cached, then new), all bf16 on one
/// CUDA device, D = 64, 128 or 256, last dim contiguous (other dims may be strided views, e.g. a
/// KV cache's). Returns bf16 `[B, Lq, H, D]`. Errors, rather than falling back, on anything else.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    softmax_scale: f32,
    mask: &CausalMask,
) -> Result<Tensor> {
    let groups = mask.check_operands(q, k, v)?;
    let d = q.dim(3)?;
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        if t.dtype() != DType::BF16 {
            bail!("causal attention: {name} must be bf16, got {:?}", t.dtype());
        }
        if !t.device().is_cuda() || !t.device().same_device(q.device()) {
            bail!("causal attention: {name} must be on the CUDA device of q");
        }
    }
    let Some(variant) = causal_attention_variant(d) else {
        bail!("causal attention: head_dim {d} not supported (64, 128 or 256)");
    };
    q.apply_op3_no_bwd(
        k,
        v,
        &FusedAttention {
            scale: softmax_scale,
            variant,
            causal: Some((mask.clone(), groups)),
        },
    )
}

struct ModulatedNorm {
    spec: NormSpec,
    rows_per_mod: usize,
}

/// Device pointer (with its storage guard) of an optional f32 term, 0 when absent.
fn f32_term(t: &Option<Tensor>) -> Result<Option<(candle_core::StorageRef<'_>, usize)>> {
    let Some(t) = t else { return Ok(None) };
    let (storage, layout) = t.storage_and_layout();
    if !layout.is_contiguous() {
        bail!("kernel operands (norm weights, modulation terms, rotary tables) must be contiguous");
    }
    let offset = layout.start_offset();
    Ok(Some((storage, offset)))
}

/// The rows of bf16 `x [B, L, D]` for a one-warp-per-row kernel: one run of `B·L` rows `L`'s
/// stride apart, each contiguous and 16-byte aligned (a single batch may be a narrowed view, e.g.
/// the image tokens of a joint text+image sequence).
fn bf16_rows(xl: &Layout, what: &str) -> Result<usize> {
    let (b, l, _) = xl.shape().dims3()?;
    let st = xl.stride();
    if st[2] != 1
        || (b > 1 && st[0] != st[1] * l)
        || !xl.start_offset().is_multiple_of(8)
        || !st[1].is_multiple_of(8)
    {
        bail!("{what}: x must be rows of contiguous, 16-byte aligned values, strides {st:?}");
    }
    Ok(b * l)
}

impl CustomOp1 for ModulatedNorm {
    fn name(&self) -> &'static str {
        "modulated-norm"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("modulated norm runs on CUDA only; reference::modulated_norm is the CPU version")
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let (b, l, d) = xl.shape().dims3()?;
        let st = xl.stride();
        let rows = bf16_rows(xl, "modulated norm")?;
        let mut out = output::<bf16>(&dev, rows * d)?;
        let func = function(
            &dev,
            &NORM,
            match (d <= 2048, self.spec.rope.is_some()) {
                (true, false) => "modulated_norm_bf16_d2048",
                (false, false) => "modulated_norm_bf16_d6144",
                (true, true) => "modulated_norm_rope_bf16_d2048",
                (false, true) => "modulated_norm_rope_bf16_d6144",
            },
        )?;
        let stream = dev.cuda_stream();
        let (x, _xg) = typed_ptr::<bf16>(xs, xl, &stream)?;
        let mut guards = Vec::new();
        for t in [
            &self.spec.weight,
            &self.spec.bias,
            &self.spec.scale,
            &self.spec.shift,
        ] {
            guards.push(f32_term(t)?);
        }
        let mut ptrs = [0u64; 4];
        let mut syncs = Vec::new();
        for (slot, g) in ptrs.iter_mut().zip(&guards) {
            if let Some((storage, offset)) = g {
                let Storage::Cuda(cs) = &**storage else {
                    bail!("modulated norm: terms must be on the CUDA device")
                };
                let (p, sync) = cs.as_cuda_slice::<f32>()?.device_ptr(&stream);
                *slot = p + 4 * *offset as u64;
                syncs.push(sync);
            }
        }
        let mode = match self.spec.kind {
            NormKind::Layer => 0i32,
            NormKind::Rms => 1i32,
        };
        let (rows32, d32, x_row, y_row, per, eps) = (
            rows as i32,
            d as i32,
            st[1] as i64,
            d as i64,
            self.rows_per_mod as i32,
            self.spec.eps as f32,
        );
        // The kernels without RoPE ignore these; `modulated_norm` validated the RoPE.
        let rope = self.spec.rope.map_or([0i32; 6], |r| {
            let (t_dim, hw_dim) = RopeGrid::split(r.head_dim);
            [
                r.head_dim,
                r.grid.tokens(),
                r.grid.height,
                r.grid.width,
                t_dim,
                hw_dim,
            ]
            .map(|v| v as i32)
        });
        let log2_theta = self.spec.rope.map_or(0.0, |r| r.theta.log2() as f32);
        // One warp per row, eight rows per block.
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(8) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        {
            let mut launch = stream.launch_builder(&func);
            launch.arg(&x).arg(&mut out);
            for p in &ptrs {
                launch.arg(p);
            }
            launch
                .arg(&rows32)
                .arg(&d32)
                .arg(&x_row)
                .arg(&y_row)
                .arg(&per)
                .arg(&mode)
                .arg(&eps);
            for v in &rope {
                launch.arg(v);
            }
            launch.arg(&log2_theta);
            // SAFETY: arguments match the modulated_norm kernels in norm.cu; shapes validated.
            unsafe { launch.launch(cfg) }.map_err(driver_err("norm launch"))?;
        }
        drop(syncs);
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((b, l, d)),
        ))
    }
}

/// The widest row the norm kernel keeps in registers (norm.cu's MAX_CHUNKS x 32 lanes x 8).
const NORM_MAX_DIM: usize = 24 * 32 * 8;

/// Fused norm + affine + modulation (see [`NormSpec`]) of bf16 `x [B, L, D]` on CUDA, computed in
/// f32 and rounded once to bf16. D up to 6144.
pub fn modulated_norm(x: &Tensor, spec: &NormSpec) -> Result<Tensor> {
    let rows_per_mod = spec.validate(x)?;
    let d = x.dim(2)?;
    if d > NORM_MAX_DIM {
        bail!("modulated norm: dim {d} is wider than the kernel's {NORM_MAX_DIM}");
    }
    if x.dtype() != DType::BF16 || !x.device().is_cuda() {
        bail!(
            "modulated norm: x must be bf16 on CUDA, got {:?} on {:?}",
            x.dtype(),
            x.device()
        );
    }
    let f32_on_device = |t: &Option<Tensor>| -> Result<Option<Tensor>> {
        t.as_ref()
            .map(|t| t.to_device(x.device())?.to_dtype(DType::F32)?.contiguous())
            .transpose()
    };
    let spec = NormSpec {
        kind: spec.kind,
        eps: spec.eps,
        weight: f32_on_device(&spec.weight)?,
        bias: f32_on_device(&spec.bias)?,
        scale: f32_on_device(&spec.scale)?,
        shift: f32_on_device(&spec.shift)?,
        rope: spec.rope,
    };
    x.apply_op1_no_bwd(&ModulatedNorm { spec, rows_per_mod })
}

struct GatedResidual {
    gate: Tensor,
    gate_rows_per: usize,
}

impl CustomOp2 for GatedResidual {
    fn name(&self) -> &'static str {
        "gated-residual"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("gated residual runs on CUDA only; reference::gated_residual is the CPU version")
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ys: &CudaStorage,
        yl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let (b, l, d) = xl.shape().dims3()?;
        for (name, layout) in [("x", xl), ("y", yl)] {
            if !layout.is_contiguous() || layout.start_offset() % 8 != 0 {
                bail!("gated residual: {name} must be contiguous and 16-byte aligned");
            }
        }
        let rows = b * l;
        let mut out = output::<bf16>(&dev, rows * d)?;
        let func = function(&dev, &NORM, "gated_residual_bf16")?;
        let stream = dev.cuda_stream();
        let (x, _xg) = typed_ptr::<bf16>(xs, xl, &stream)?;
        let (y, _yg) = typed_ptr::<bf16>(ys, yl, &stream)?;
        let (gate_storage, gate_layout) = self.gate.storage_and_layout();
        let Storage::Cuda(gs) = &*gate_storage else {
            bail!("gated residual: gate must be on the CUDA device")
        };
        let (gate_base, _gg) = gs.as_cuda_slice::<f32>()?.device_ptr(&stream);
        let gate = gate_base + 4 * gate_layout.start_offset() as u64;
        let (rows64, d32, per) = (rows as i64, d as i32, self.gate_rows_per as i32);
        let cfg = LaunchConfig {
            grid_dim: ((rows * d / 8).div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        {
            let mut launch = stream.launch_builder(&func);
            launch
                .arg(&x)
                .arg(&y)
                .arg(&gate)
                .arg(&mut out)
                .arg(&rows64)
                .arg(&d32)
                .arg(&per);
            // SAFETY: arguments match gated_residual_bf16 in norm.cu; shapes validated.
            unsafe { launch.launch(cfg) }.map_err(driver_err("gated residual launch"))?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((b, l, d)),
        ))
    }
}

/// Wan's gated residual `x + y * gate` on CUDA: `x`, `y` bf16 `[B, L, D]` (D a multiple of 8),
/// `gate` `[B, D]` or `[B, L, D]` read as f32; computed in f32, rounded once to bf16.
pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    let gate_rows_per = crate::spec::validate_gated_residual(x, y, gate)?;
    if x.dtype() != DType::BF16 || y.dtype() != DType::BF16 || !x.device().is_cuda() {
        bail!(
            "gated residual: x and y must be bf16 on CUDA, got {:?}/{:?} on {:?}",
            x.dtype(),
            y.dtype(),
            x.device()
        );
    }
    if x.dim(2)? % 8 != 0 {
        bail!(
            "gated residual: dim must be a multiple of 8, got {}",
            x.dim(2)?
        );
    }
    let gate = gate
        .to_device(x.device())?
        .to_dtype(DType::F32)?
        .contiguous()?;
    x.contiguous()?.apply_op2_no_bwd(
        &y.contiguous()?,
        &GatedResidual {
            gate,
            gate_rows_per,
        },
    )
}

struct Rope3d {
    grid: RopeGrid,
    theta: f64,
}

impl CustomOp1 for Rope3d {
    fn name(&self) -> &'static str {
        "rope3d"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("rope3d runs on CUDA only; reference::rope3d is the CPU version")
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let (b, l, h, d) = xl.shape().dims4()?;
        let st = xl.stride();
        if st[3] != 1
            || d % 8 != 0
            || !xl.start_offset().is_multiple_of(8)
            || st[..3].iter().any(|s| s % 8 != 0)
        {
            bail!(
                "rope3d: x must have a contiguous last dim (a multiple of 8) and 16-byte aligned offset/strides, strides {st:?}"
            );
        }
        let mut out = output::<bf16>(&dev, b * l * h * d)?;
        let func = function(&dev, &ROPE, "rope3d_bf16")?;
        let stream = dev.cuda_stream();
        let (x, _xg) = typed_ptr::<bf16>(xs, xl, &stream)?;
        let (t_dim, hw_dim) = RopeGrid::split(d);
        let ints = [l, h, d, self.grid.height, self.grid.width, t_dim, hw_dim].map(|v| v as i32);
        let log2_theta = self.theta.log2() as f32;
        let xst = [st[0] as i64, st[1] as i64, st[2] as i64];
        let ost = [(l * h * d) as i64, (h * d) as i64, d as i64];
        // One thread per (token, 8-element chunk), looping over heads.
        let chunks = l * d / 8;
        let cfg = LaunchConfig {
            grid_dim: (chunks.div_ceil(256) as u32, b as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        {
            let mut launch = stream.launch_builder(&func);
            launch.arg(&x).arg(&mut out);
            for i in &ints {
                launch.arg(i);
            }
            launch.arg(&log2_theta);
            for s in xst.iter().chain(&ost) {
                launch.arg(s);
            }
            // SAFETY: arguments match rope3d_bf16 in rope.cu; shapes validated.
            unsafe { launch.launch(cfg) }.map_err(driver_err("rope launch"))?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((b, l, h, d)),
        ))
    }
}

/// Wan's 3-D RoPE (see `reference::rope3d`) on bf16 `x [B, L, H, D]` on CUDA; returns a new
/// bf16 tensor. Angles come from exact integer positions in f32.
pub fn rope3d(x: &Tensor, grid: RopeGrid, theta: f64) -> Result<Tensor> {
    grid.validate(x)?;
    if x.dtype() != DType::BF16 || !x.device().is_cuda() {
        bail!(
            "rope3d: x must be bf16 on CUDA, got {:?} on {:?}",
            x.dtype(),
            x.device()
        );
    }
    x.apply_op1_no_bwd(&Rope3d { grid, theta })
}

struct LinearLt {
    bias: Option<Tensor>,
    gelu: bool,
    /// Added to the product in the epilogue (`beta = 1`): same shape as the output.
    residual: Option<Tensor>,
    /// With FP8 operands: their scales and the kernel that multiplies them.
    fp8: Option<Fp8Operands>,
}

/// FP8 operands' f32 scales, one per row of x and one per output channel.
struct Fp8Operands {
    x_scale: Tensor,
    w_scale: Tensor,
    kernel: Fp8Kernel,
}

/// What multiplies FP8 operands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fp8Kernel {
    /// cuBLASLt with outer-vector scales and the epilogue.
    CublasLtScaled,
    /// cuBLASLt's plain e4m3 matmul into bf16, then gemm.cu's `scale_product_bf16` for the scales
    /// and the epilogue (Hopper's cuBLASLt has no outer-vector scales).
    CublasLtThenScale,
    /// gemm.cu's `mma.sync` kernel (every GPU from Ada on; GB10).
    MmaSync,
}

/// The device address of `t`, a tensor on `stream`'s CUDA device, read as `T`.
fn tensor_ptr<'a, T: CudaDType + 'static>(
    t: &'a (candle_core::StorageRef<'_>, &Layout),
    stream: &'a CudaStream,
    what: &str,
) -> Result<(u64, SyncOnDrop<'a>)> {
    let Storage::Cuda(cs) = &*t.0 else {
        bail!("{what} must be on the CUDA device")
    };
    typed_ptr::<T>(cs, t.1, stream)
}

impl CustomOp2 for LinearLt {
    fn name(&self) -> &'static str {
        "linear-bias-act"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("linear runs on CUDA only; reference::linear is the CPU version")
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let (n, k) = wl.shape().dims2()?;
        if !xl.is_contiguous() || !wl.is_contiguous() {
            bail!("linear: x and weight must be contiguous");
        }
        let m = xl.shape().elem_count() / k;
        let mut out = output::<bf16>(&dev, m * n)?;
        let stream = dev.cuda_stream();
        let kernel = self.fp8.as_ref().map(|f| f.kernel);
        // The residual enters as the GEMM's C (beta 1), except after an unscaled FP8 product,
        // where the scaling pass adds it.
        if let Some(residual) = &self.residual
            && kernel != Some(Fp8Kernel::CublasLtThenScale)
        {
            let (storage, layout) = residual.storage_and_layout();
            let Storage::Cuda(cs) = &*storage else {
                bail!("linear: residual must be on the CUDA device")
            };
            let start = layout.start_offset();
            let src = cs.as_cuda_slice::<bf16>()?.slice(start..start + m * n);
            stream
                .memcpy_dtod(&src, &mut out)
                .map_err(driver_err("residual copy"))?;
        }
        let bias = self.bias.as_ref().map(|b| b.storage_and_layout());
        let bias = bias
            .as_ref()
            .map(|b| tensor_ptr::<bf16>(b, &stream, "linear: bias"))
            .transpose()?;
        let scales = self.fp8.as_ref().map(|f| {
            (
                f.x_scale.storage_and_layout(),
                f.w_scale.storage_and_layout(),
            )
        });
        let scales = scales
            .as_ref()
            .map(|(x, w)| {
                Ok::<_, candle_core::Error>((
                    tensor_ptr::<f32>(x, &stream, "linear: x's scales")?,
                    tensor_ptr::<f32>(w, &stream, "linear: the weight's scales")?,
                ))
            })
            .transpose()?;
        let ((x, _xg), (w, _wg), operands) = match &scales {
            None => (
                typed_ptr::<bf16>(xs, xl, &stream)?,
                typed_ptr::<bf16>(ws, wl, &stream)?,
                gemm::Operands::Bf16,
            ),
            Some(((x_scale, _), (w_scale, _))) => (
                typed_ptr::<float8::F8E4M3>(xs, xl, &stream)?,
                typed_ptr::<float8::F8E4M3>(ws, wl, &stream)?,
                gemm::Operands::Fp8 {
                    x_scale: *x_scale,
                    w_scale: *w_scale,
                },
            ),
        };
        if let (Some(Fp8Kernel::MmaSync), gemm::Operands::Fp8 { x_scale, w_scale }) =
            (kernel, operands)
        {
            let func = function(&dev, &GEMM, "gemm_e4m3_rowscaled")?;
            let bias = bias.as_ref().map_or(0, |(p, _)| *p);
            let (m64, n64, k64) = (m as i64, n as i64, k as i64);
            let (gelu, accumulate) = (self.gelu as i32, self.residual.is_some() as i32);
            let mut launch = stream.launch_builder(&func);
            launch
                .arg(&x)
                .arg(&x_scale)
                .arg(&w)
                .arg(&w_scale)
                .arg(&bias)
                .arg(&mut out)
                .arg(&m64)
                .arg(&n64)
                .arg(&k64)
                .arg(&gelu)
                .arg(&accumulate);
            let cfg = LaunchConfig {
                grid_dim: (n.div_ceil(128) as u32, m.div_ceil(128) as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            if m * n > 0 {
                // SAFETY: arguments match gemm.cu's kernel: x m x k and w n x k e4m3 (k a
                // multiple of 16), m and n f32 scales, bias n bf16 or null, out m x n bf16
                // holding the residual when accumulating; the guards outlive the launch.
                unsafe { launch.launch(cfg) }.map_err(driver_err("FP8 GEMM launch"))?;
            }
        } else if let (
            Some(Fp8Kernel::CublasLtThenScale),
            gemm::Operands::Fp8 { x_scale, w_scale },
        ) = (kernel, operands)
        {
            let (d, out_guard) = out.device_ptr_mut(&stream);
            let gemm = gemm::Gemm {
                rows: m,
                n,
                k,
                x,
                w,
                operands: gemm::Operands::Fp8Unscaled,
                d,
                bias: None,
                gelu: false,
                accumulate: false,
            };
            // SAFETY: x is m x k and w n x k e4m3, out m x n bf16, all on this device (shapes
            // checked by `linear_impl`), and their guards outlive the enqueued GEMM's inputs.
            unsafe { gemm::gemm(&dev, &gemm) }?;
            drop(out_guard);
            let residual = self.residual.as_ref().map(|r| r.storage_and_layout());
            let residual = residual
                .as_ref()
                .map(|r| tensor_ptr::<bf16>(r, &stream, "linear: residual"))
                .transpose()?;
            let func = function(&dev, &GEMM, "scale_product_bf16")?;
            let bias = bias.as_ref().map_or(0, |(p, _)| *p);
            let residual = residual.as_ref().map_or(0, |(p, _)| *p);
            let (m64, n64, gelu) = (m as i64, n as i64, self.gelu as i32);
            let mut launch = stream.launch_builder(&func);
            launch
                .arg(&mut out)
                .arg(&x_scale)
                .arg(&w_scale)
                .arg(&bias)
                .arg(&residual)
                .arg(&m64)
                .arg(&n64)
                .arg(&gelu);
            if m * n > 0 {
                // SAFETY: arguments match gemm.cu's kernel: out m x n bf16 (n a multiple of 16),
                // m and n f32 scales, bias n and residual m x n bf16 or null; the guards outlive
                // the launch.
                // Threads across a row's 8-column chunks, blocks down the rows (2,048 at once).
                let cfg = LaunchConfig {
                    grid_dim: ((n / 8).div_ceil(256) as u32, m.min(2048) as u32, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                unsafe { launch.launch(cfg) }.map_err(driver_err("FP8 scaling launch"))?;
            }
        } else {
            let (d, out_guard) = out.device_ptr_mut(&stream);
            let gemm = gemm::Gemm {
                rows: m,
                n,
                k,
                x,
                w,
                operands,
                d,
                bias: bias.as_ref().map(|(p, _)| *p),
                gelu: self.gelu,
                accumulate: self.residual.is_some(),
            };
            // SAFETY: x is m x k, w is n x k (bf16, or e4m3 with m and n f32 scales), out is
            // m x n and bias n, bf16, all on this device (shapes checked by `linear_impl`), and
            // their guards outlive the enqueued GEMM's inputs.
            unsafe { gemm::gemm(&dev, &gemm) }?;
            drop(out_guard);
        }
        let mut dims = xl.shape().dims().to_vec();
        *dims.last_mut().expect("x has a last dim") = n;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(dims)))
    }
}

/// `y = x w^T + bias`, optionally followed by GELU (tanh approximation), as one cuBLASLt matmul
/// with a fused epilogue: `x [.., K]`, `weight [N, K]`, `bias [N]`, all bf16 on one CUDA device;
/// accumulates in f32 and rounds once to bf16. Errors on anything else.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, gelu: bool) -> Result<Tensor> {
    linear_impl(x, weight, bias, gelu, None, None)
}

/// `residual + x w^T + bias` as one cuBLASLt matmul (the residual enters as C with beta 1):
/// `residual` bf16 of the output's shape; otherwise as [`linear`].
pub fn linear_residual(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: &Tensor,
) -> Result<Tensor> {
    linear_impl(x, weight, bias, false, Some(residual), None)
}

/// [`linear`] (with `residual` as in [`linear_residual`]) on FP8 operands: `x` e4m3 `[.., K]`
/// with `x_scale` f32, one per row of x (as [`fp8_quantize_rows`] makes them), `weight` e4m3
/// `[N, K]` with `w_scale` f32, one or one per output channel; the product of row `r` and channel
/// `c` is multiplied by `x_scale[r] · w_scale[c]` in f32 before the epilogue; bias, residual and
/// output bf16. `K` and `N` multiples of 16. Runs on cuBLASLt with outer-vector scales where it
/// has such a GEMM with this epilogue, else on cuBLASLt's plain FP8 matmul followed by a scaling
/// pass (Hopper), else on gemm.cu's `mma.sync` kernel (GB10); errors where
/// [`fp8_linear_supported`] says no.
pub fn linear_fp8(
    x: &Tensor,
    x_scale: &Tensor,
    weight: &Tensor,
    w_scale: &Tensor,
    bias: Option<&Tensor>,
    gelu: bool,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let Device::Cuda(dev) = x.device() else {
        bail!("linear_fp8: x must be on CUDA, got {:?}", x.device());
    };
    let kernel = if gemm::fp8_supported(dev, true, bias.is_some(), gelu)? {
        Fp8Kernel::CublasLtScaled
    } else if gemm::fp8_supported(dev, false, false, false)? {
        Fp8Kernel::CublasLtThenScale
    } else {
        Fp8Kernel::MmaSync
    };
    linear_fp8_on(kernel, x, x_scale, weight, w_scale, bias, gelu, residual)
}

/// [`linear_fp8`] on gemm.cu's `mma.sync` kernel whatever the GPU (the checks and benchmarks
/// compare it with cuBLASLt on Hopper).
#[doc(hidden)]
pub fn linear_fp8_mma_sync(
    x: &Tensor,
    x_scale: &Tensor,
    weight: &Tensor,
    w_scale: &Tensor,
    bias: Option<&Tensor>,
    gelu: bool,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    linear_fp8_on(
        Fp8Kernel::MmaSync,
        x,
        x_scale,
        weight,
        w_scale,
        bias,
        gelu,
        residual,
    )
}

#[allow(clippy::too_many_arguments)]
fn linear_fp8_on(
    kernel: Fp8Kernel,
    x: &Tensor,
    x_scale: &Tensor,
    weight: &Tensor,
    w_scale: &Tensor,
    bias: Option<&Tensor>,
    gelu: bool,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    if !fp8_linear_supported(x.device())? {
        bail!("linear_fp8: FP8 products need a CUDA GPU of compute capability 8.9 or newer");
    }
    let (n, k) = weight.dims2()?;
    let rows = x.elem_count() / k.max(1);
    if x.dtype() != DType::F8E4M3 || weight.dtype() != DType::F8E4M3 {
        bail!(
            "linear_fp8: x and weight must be e4m3, got {:?} and {:?}",
            x.dtype(),
            weight.dtype()
        );
    }
    if !k.is_multiple_of(16) || !n.is_multiple_of(16) {
        bail!("linear_fp8: K ({k}) and N ({n}) must be multiples of 16");
    }
    let w_scale = match w_scale.elem_count() {
        1 => w_scale.flatten_all()?.broadcast_as(n)?,
        c if c == n => w_scale.flatten_all()?,
        c => bail!("linear_fp8: {n} output channels take 1 or {n} scales, not {c}"),
    };
    if x_scale.elem_count() != rows {
        bail!(
            "linear_fp8: x has {rows} rows but {} scales",
            x_scale.elem_count()
        );
    }
    let scales = [x_scale.flatten_all()?, w_scale].map(|s| {
        if s.dtype() != DType::F32 || !s.device().same_device(x.device()) {
            bail!("linear_fp8: scales must be f32 on x's device");
        }
        s.contiguous()
    });
    let [x_scale, w_scale] = scales;
    linear_impl(
        x,
        weight,
        bias,
        gelu,
        residual,
        Some(Fp8Operands {
            x_scale: x_scale?,
            w_scale: w_scale?,
            kernel,
        }),
    )
}

/// Whether [`linear_fp8`] runs on `device`: a CUDA GPU of compute capability 8.9 or newer (FP8
/// `mma.sync`; Hopper's cuBLASLt where it has the GEMM).
pub fn fp8_linear_supported(device: &Device) -> Result<bool> {
    match device {
        Device::Cuda(dev) => Ok(compute_capability(dev)? >= targets::FP8_MMA),
        _ => Ok(false),
    }
}

fn linear_impl(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    gelu: bool,
    residual: Option<&Tensor>,
    fp8: Option<Fp8Operands>,
) -> Result<Tensor> {
    let (n, k) = weight.dims2()?;
    if x.dim(candle_core::D::Minus1)? != k {
        bail!(
            "linear: x {:?} does not match weight {:?}",
            x.dims(),
            weight.dims()
        );
    }
    if let Some(b) = bias
        && b.dims() != [n]
    {
        bail!("linear: bias must be [{n}], got {:?}", b.dims());
    }
    if let Some(r) = residual {
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("x has a last dim") = n;
        if r.dims() != dims.as_slice() {
            bail!(
                "linear: residual {:?} must have the output's shape {dims:?}",
                r.dims()
            );
        }
    }
    let operand_dtype = if fp8.is_some() {
        DType::F8E4M3
    } else {
        DType::BF16
    };
    for (t, dtype) in [
        (Some(x), operand_dtype),
        (Some(weight), operand_dtype),
        (bias, DType::BF16),
        (residual, DType::BF16),
    ] {
        let Some(t) = t else { continue };
        if t.dtype() != dtype || !t.device().is_cuda() || !t.device().same_device(x.device()) {
            bail!(
                "linear: {dtype:?} operands on the CUDA device of x expected, got {:?} on {:?}",
                t.dtype(),
                t.device()
            );
        }
    }
    let bias = bias.map(|b| b.contiguous()).transpose()?;
    let residual = residual.map(|r| r.contiguous()).transpose()?;
    x.contiguous()?.apply_op2_no_bwd(
        &weight.contiguous()?,
        &LinearLt {
            bias,
            gelu,
            residual,
            fp8,
        },
    )
}

struct ChannelNorm {
    scale: Tensor,
    channel_dim: usize,
    divisor: ChannelDivisor,
    silu: bool,
}

impl CustomOp1 for ChannelNorm {
    fn name(&self) -> &'static str {
        "channel-rms-norm"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("channel norm runs on CUDA only; reference::channel_rms_norm is the CPU version")
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        fn run<T: CudaDType + DeviceRepr + 'static>(
            op: &ChannelNorm,
            xs: &CudaStorage,
            xl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let dev = xs.device().clone();
            let mut out = output::<T>(&dev, xl.shape().elem_count())?;
            let stream = dev.cuda_stream();
            let (y, guard) = out.device_ptr_mut(&stream);
            op.launch::<T>(xs, xl, y)?;
            drop(guard);
            Ok((CudaStorage::wrap_cuda_slice(out, dev), xl.shape().clone()))
        }
        match xs.dtype() {
            DType::BF16 => run::<bf16>(self, xs, xl),
            DType::F32 => run::<f32>(self, xs, xl),
            dtype => bail!("channel norm runs on bf16 or f32, got {dtype:?}"),
        }
    }
}

/// Writes the norm of the second operand into the first, a view of the same shape (the VAE writes
/// its convolution input behind the cached frames of the buffer the convolution reads).
impl InplaceOp2 for ChannelNorm {
    fn name(&self) -> &'static str {
        "channel-rms-norm-into"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        bail!("channel norm runs on CUDA only; reference::channel_rms_norm is the CPU version")
    }

    fn cuda_fwd(
        &self,
        ds: &mut CudaStorage,
        dl: &Layout,
        xs: &CudaStorage,
        xl: &Layout,
    ) -> Result<()> {
        fn run<T: CudaDType + DeviceRepr + 'static>(
            op: &ChannelNorm,
            ds: &mut CudaStorage,
            dl: &Layout,
            xs: &CudaStorage,
            xl: &Layout,
        ) -> Result<()> {
            if !dl.is_contiguous() || dl.shape() != xl.shape() {
                bail!(
                    "channel norm: the destination must be a contiguous view of x's shape {:?}, got {:?}",
                    xl.shape(),
                    dl.shape()
                );
            }
            if !dl.start_offset().is_multiple_of(16 / size_of::<T>()) {
                bail!("channel norm: the destination must be 16-byte aligned");
            }
            let stream = xs.device().cuda_stream();
            let (base, _yg) = ds.as_cuda_slice_mut::<T>()?.device_ptr_mut(&stream);
            op.launch::<T>(xs, xl, base + (size_of::<T>() * dl.start_offset()) as u64)
        }
        if ds.dtype() != xs.dtype() {
            bail!(
                "channel norm: destination {:?}, x {:?}",
                ds.dtype(),
                xs.dtype()
            );
        }
        match xs.dtype() {
            DType::BF16 => run::<bf16>(self, ds, dl, xs, xl),
            DType::F32 => run::<f32>(self, ds, dl, xs, xl),
            dtype => bail!("channel norm runs on bf16 or f32, got {dtype:?}"),
        }
    }
}

impl ChannelNorm {
    /// Launches `channel_rms_norm_{bf16,f32}` on `x`, writing the contiguous output at device
    /// address `y`. Each thread handles 16 bytes of pixels.
    fn launch<T: CudaDType + DeviceRepr + 'static>(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        y: u64,
    ) -> Result<()> {
        let kernel = match xs.dtype() {
            DType::BF16 => "channel_rms_norm_bf16",
            _ => "channel_rms_norm_f32",
        };
        let per_thread = 16 / size_of::<T>();
        let dev = xs.device();
        let dims = xl.shape().dims();
        let c = dims[self.channel_dim];
        let outer: usize = dims[..self.channel_dim].iter().product();
        let inner: usize = dims[self.channel_dim + 1..].iter().product();
        if !xl.is_contiguous()
            || !xl.start_offset().is_multiple_of(per_thread)
            || !inner.is_multiple_of(per_thread)
        {
            bail!(
                "channel norm: x must be contiguous, 16-byte aligned, with a multiple of {per_thread} pixels"
            );
        }
        let func = function(dev, &NORM, kernel)?;
        let stream = dev.cuda_stream();
        let (x, _xg) = typed_ptr::<T>(xs, xl, &stream)?;
        let (scale_storage, scale_layout) = self.scale.storage_and_layout();
        let Storage::Cuda(ss) = &*scale_storage else {
            bail!("channel norm: scale must be on the CUDA device")
        };
        let (scale_base, _sg) = ss.as_cuda_slice::<f32>()?.device_ptr(&stream);
        let scale = scale_base + 4 * scale_layout.start_offset() as u64;
        // Enough threads to fill an H100 or a GB10 (about 2048 resident per SM): split the channels
        // of each pixel group over `slices` threads when the pixel groups alone are too few.
        const TARGET_THREADS: usize = 1 << 18;
        let groups = outer * inner / per_thread;
        let slices = TARGET_THREADS
            .div_ceil(groups.max(1))
            .next_power_of_two()
            .min(32)
            .min(1 << c.max(1).ilog2());
        if groups == 0 {
            return Ok(());
        }
        // The kernel's eps: 0 for the L2 norm's clamp.
        let eps = match self.divisor {
            ChannelDivisor::L2 => 0f32,
            ChannelDivisor::Rms { eps } => eps as f32,
        };
        let (outer64, c32, inner64, silu, slices32) = (
            outer as i64,
            c as i32,
            inner as i64,
            i32::from(self.silu),
            slices as i32,
        );
        let cfg = LaunchConfig {
            grid_dim: (groups.div_ceil(256 / slices) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(&func);
        launch
            .arg(&x)
            .arg(&y)
            .arg(&scale)
            .arg(&outer64)
            .arg(&c32)
            .arg(&inner64)
            .arg(&eps)
            .arg(&silu)
            .arg(&slices32);
        // SAFETY: arguments match channel_rms_norm_{bf16,f32} in norm.cu; shapes checked, and `y`
        // covers x's elements (a fresh output, or a destination view checked by the caller).
        unsafe { launch.launch(cfg) }.map_err(driver_err("channel norm launch"))?;
        Ok(())
    }

    /// Checks `scale` against `x` and returns the op with `scale` as a flat f32 tensor on x's device.
    fn new(
        x: &Tensor,
        scale: &Tensor,
        channel_dim: usize,
        divisor: ChannelDivisor,
        silu: bool,
    ) -> Result<Self> {
        // NaN is refused too.
        if let ChannelDivisor::Rms { eps } = divisor
            && eps.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        {
            bail!("channel norm: the RMS divisor's eps must be positive, got {eps}");
        }
        let c = x.dim(channel_dim)?;
        if scale.elem_count() != c {
            bail!(
                "channel norm: scale has {} values for {c} channels",
                scale.elem_count()
            );
        }
        if !matches!(x.dtype(), DType::BF16 | DType::F32) || !x.device().is_cuda() {
            bail!(
                "channel norm: x must be bf16 or f32 on CUDA, got {:?} on {:?}",
                x.dtype(),
                x.device()
            );
        }
        let scale = scale
            .to_device(x.device())?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .contiguous()?;
        Ok(Self {
            scale,
            channel_dim,
            divisor,
            silu,
        })
    }
}

/// The VAEs' channel RMS norm on CUDA: `x / divisor * scale` over dim `channel_dim` of bf16 or
/// f32 `x` (contiguous; the dims after it 16 bytes' worth of elements), `scale` `[C]` read as f32,
/// then SiLU when `silu`; computed in f32, rounded once to `x`'s dtype.
pub fn channel_rms_norm(
    x: &Tensor,
    scale: &Tensor,
    channel_dim: usize,
    divisor: ChannelDivisor,
    silu: bool,
) -> Result<Tensor> {
    let op = ChannelNorm::new(x, scale, channel_dim, divisor, silu)?;
    x.contiguous()?.apply_op1_no_bwd(&op)
}

/// [`channel_rms_norm`] written into `dst`, a contiguous 16-byte-aligned view of x's shape and
/// dtype (typically `narrow` of a larger buffer); nothing outside the view is touched.
pub fn channel_rms_norm_into(
    dst: &Tensor,
    x: &Tensor,
    scale: &Tensor,
    channel_dim: usize,
    divisor: ChannelDivisor,
    silu: bool,
) -> Result<()> {
    let op = ChannelNorm::new(x, scale, channel_dim, divisor, silu)?;
    dst.inplace_op2(&x.contiguous()?, &op)
}

/// `torch.nn.GroupNorm` (+ SiLU) as two kernels of norm.cu: per-(batch, group) sums, then the
/// normalisation and per-channel affine.
struct GroupNormOp {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f32,
    silu: bool,
}

impl CustomOp1 for GroupNormOp {
    fn name(&self) -> &'static str {
        "group-norm"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("group norm runs on CUDA only; reference::group_norm is the CPU version")
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        fn run<T: CudaDType + DeviceRepr + 'static>(
            op: &GroupNormOp,
            xs: &CudaStorage,
            xl: &Layout,
            [stats_kernel, apply_kernel]: [&'static str; 2],
        ) -> Result<(CudaStorage, Shape)> {
            let per_thread = 16 / size_of::<T>();
            let dims = xl.shape().dims();
            let (b, c) = (dims[0], dims[1]);
            let pixels: usize = dims[2..].iter().product();
            if !xl.is_contiguous()
                || !xl.start_offset().is_multiple_of(per_thread)
                || !pixels.is_multiple_of(per_thread)
            {
                bail!(
                    "group norm: x must be contiguous, 16-byte aligned, with a multiple of {per_thread} pixels per channel"
                );
            }
            let dev = xs.device().clone();
            let stream = dev.cuda_stream();
            let total = xl.shape().elem_count();
            let rows = b * op.groups;
            let row_len = total / rows.max(1);
            let mut out = output::<T>(&dev, total)?;
            let stats = dev.alloc_zeros::<f64>(2 * rows)?;
            if total == 0 {
                return Ok((CudaStorage::wrap_cuda_slice(out, dev), xl.shape().clone()));
            }
            let (x, _xg) = typed_ptr::<T>(xs, xl, &stream)?;
            let (stats_ptr, _sg) = stats.device_ptr(&stream);
            let row_len64 = row_len as i64;
            let chunks = row_len.div_ceil(GROUP_NORM_CHUNK) as u32;
            let func = function(&dev, &NORM, stats_kernel)?;
            let mut launch = stream.launch_builder(&func);
            launch.arg(&x).arg(&stats_ptr).arg(&row_len64);
            let cfg = LaunchConfig {
                grid_dim: (chunks, rows as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: arguments match group_norm_stats_* in norm.cu; x holds rows * row_len
            // elements and stats 2 * rows zeroed f64.
            unsafe { launch.launch(cfg) }.map_err(driver_err("group norm statistics launch"))?;

            let terms = [&op.weight, &op.bias]
                .map(|t| t.storage_and_layout())
                .map(|(storage, layout)| (storage, layout.start_offset()));
            let mut ptrs = [0u64; 2];
            let mut syncs = Vec::new();
            for (slot, (storage, offset)) in ptrs.iter_mut().zip(&terms) {
                let Storage::Cuda(cs) = &**storage else {
                    bail!("group norm: weight and bias must be on the CUDA device")
                };
                let (p, sync) = cs.as_cuda_slice::<f32>()?.device_ptr(&stream);
                *slot = p + 4 * *offset as u64;
                syncs.push(sync);
            }
            let (y, _yg) = out.device_ptr_mut(&stream);
            let (total64, c32, per_group, pixels64, silu) = (
                total as i64,
                c as i32,
                (c / op.groups) as i32,
                pixels as i64,
                i32::from(op.silu),
            );
            let func = function(&dev, &NORM, apply_kernel)?;
            let mut launch = stream.launch_builder(&func);
            launch
                .arg(&x)
                .arg(&y)
                .arg(&stats_ptr)
                .arg(&ptrs[0])
                .arg(&ptrs[1])
                .arg(&total64)
                .arg(&c32)
                .arg(&per_group)
                .arg(&pixels64)
                .arg(&op.eps)
                .arg(&silu);
            let cfg = LaunchConfig {
                grid_dim: ((total / per_thread).div_ceil(256) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: arguments match group_norm_apply_* in norm.cu; y is a fresh output of
            // x's size, weight and bias hold c f32 each (checked by `group_norm`).
            unsafe { launch.launch(cfg) }.map_err(driver_err("group norm launch"))?;
            drop((_yg, syncs));
            Ok((CudaStorage::wrap_cuda_slice(out, dev), xl.shape().clone()))
        }
        match xs.dtype() {
            DType::BF16 => run::<bf16>(
                self,
                xs,
                xl,
                ["group_norm_stats_bf16", "group_norm_apply_bf16"],
            ),
            DType::F32 => run::<f32>(
                self,
                xs,
                xl,
                ["group_norm_stats_f32", "group_norm_apply_f32"],
            ),
            dtype => bail!("group norm runs on bf16 or f32, got {dtype:?}"),
        }
    }
}

/// Elements of a (batch, group) row one block of the statistics pass sums (`GN_CHUNK`).
const GROUP_NORM_CHUNK: usize = 16384;

/// `torch.nn.GroupNorm(groups, C, eps)` on CUDA over `x` `[B, C, ...]` (bf16 or f32, the pixels
/// of a channel 16 bytes' worth of elements), with `weight`/`bias` `[C]` read as f32, then SiLU
/// when `silu`: statistics in f64 across blocks, the rest in f32, rounded once to `x`'s dtype.
pub fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    if x.rank() < 2 || !matches!(x.dtype(), DType::BF16 | DType::F32) || !x.device().is_cuda() {
        bail!(
            "group norm: x must be [batch, channels, ...] bf16 or f32 on CUDA, got {:?} {:?} on {:?}",
            x.dims(),
            x.dtype(),
            x.device()
        );
    }
    let c = x.dim(1)?;
    if groups == 0 || !c.is_multiple_of(groups) {
        bail!("group norm: {groups} groups do not divide {c} channels");
    }
    let flat = |t: &Tensor, what: &str| -> Result<Tensor> {
        if t.elem_count() != c {
            bail!(
                "group norm: {what} has {} values for {c} channels",
                t.elem_count()
            );
        }
        t.to_device(x.device())?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .contiguous()
    };
    let op = GroupNormOp {
        weight: flat(weight, "weight")?,
        bias: flat(bias, "bias")?,
        groups,
        eps: eps as f32,
        silu,
    };
    x.contiguous()?.apply_op1_no_bwd(&op)
}

/// Table RoPE, after a per-head RMS norm when `norm` (rope.cu `rms_norm_rope_bf16`).
struct NormRopeTables {
    norm: bool,
    weight: Option<Tensor>,
    cos: Tensor,
    sin: Tensor,
    eps: f32,
}

impl CustomOp1 for NormRopeTables {
    fn name(&self) -> &'static str {
        "rms-norm-rope-tables"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("rms_norm_rope runs on CUDA only; reference::rms_norm_rope is the CPU version")
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let (b, l, h, d) = xl.shape().dims4()?;
        let st = xl.stride();
        if st[3] != 1 || !xl.start_offset().is_multiple_of(8) || st[..3].iter().any(|s| s % 8 != 0)
        {
            bail!(
                "rms_norm_rope: x must have a contiguous last dim and 16-byte aligned offset/strides, strides {st:?}"
            );
        }
        let vectors = b * l * h;
        let mut out = output::<bf16>(&dev, vectors * d)?;
        if vectors == 0 {
            return Ok((CudaStorage::wrap_cuda_slice(out, dev), xl.shape().clone()));
        }
        let func = function(&dev, &ROPE, "rms_norm_rope_bf16")?;
        let stream = dev.cuda_stream();
        let (x, _xg) = typed_ptr::<bf16>(xs, xl, &stream)?;
        // Device addresses of the f32 operands: cos, sin, weight (0: none).
        let terms = [
            Some(self.cos.clone()),
            Some(self.sin.clone()),
            self.weight.clone(),
        ];
        let guards = terms.iter().map(f32_term).collect::<Result<Vec<_>>>()?;
        let mut ptrs = [0u64; 3];
        let mut syncs = Vec::new();
        for (slot, g) in ptrs.iter_mut().zip(&guards) {
            if let Some((storage, offset)) = g {
                let Storage::Cuda(cs) = &**storage else {
                    bail!("rms_norm_rope: tables and weight must be on the CUDA device")
                };
                let (p, sync) = cs.as_cuda_slice::<f32>()?.device_ptr(&stream);
                *slot = p + 4 * *offset as u64;
                syncs.push(sync);
            }
        }
        let [cos, sin, weight] = ptrs;
        let (vectors64, seq, heads, d32) = (vectors as i64, l as i32, h as i32, d as i32);
        let xst = [st[0] as i64, st[1] as i64, st[2] as i64];
        let cfg = LaunchConfig {
            // One warp per (token, head).
            grid_dim: ((vectors * 32).div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(&func);
        launch
            .arg(&x)
            .arg(&mut out)
            .arg(&weight)
            .arg(&cos)
            .arg(&sin)
            .arg(&vectors64)
            .arg(&seq)
            .arg(&heads)
            .arg(&d32);
        for s in &xst {
            launch.arg(s);
        }
        let norm = i32::from(self.norm);
        launch.arg(&norm).arg(&self.eps);
        // SAFETY: arguments match rms_norm_rope_bf16 in rope.cu; shapes, strides and tables
        // validated by `rms_norm_rope`.
        unsafe { launch.launch(cfg) }.map_err(driver_err("rms_norm_rope launch"))?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((b, l, h, d)),
        ))
    }
}

/// `torch.nn.RMSNorm(D, eps)` (with `weight` `[D]`, or none) of every head of bf16 `x`
/// `[B, L, H, D]` on CUDA (any 16-byte aligned strides), then the rotary embedding of
/// interleaved pairs by the angles whose `cos`/`sin` are `[L, D / 2]` (`reference::rms_norm_rope`):
/// FLUX's q/k path in one pass; returns a contiguous bf16 tensor.
pub fn rms_norm_rope(
    x: &Tensor,
    weight: Option<&Tensor>,
    cos: &Tensor,
    sin: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    rope_tables_op(x, Some((weight, eps)), cos, sin)
}

/// The rotary embedding of interleaved pairs of bf16 `x` `[B, L, H, D]` on CUDA by the angles
/// whose `cos`/`sin` are `[L, D / 2]` (`reference::rope_tables`, diffusers' `apply_rotary_emb`
/// with `use_real_unbind_dim=-1`); returns a contiguous bf16 tensor.
pub fn rope_tables(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    rope_tables_op(x, None, cos, sin)
}

fn rope_tables_op(
    x: &Tensor,
    norm: Option<(Option<&Tensor>, f64)>,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Tensor> {
    let (_, l, _, d) = x.dims4()?;
    if x.dtype() != DType::BF16 || !x.device().is_cuda() {
        bail!(
            "rotary tables: x must be bf16 on CUDA, got {:?} on {:?}",
            x.dtype(),
            x.device()
        );
    }
    if d % 8 != 0 || d > 256 {
        bail!("rotary tables: head dim {d} must be a multiple of 8 up to 256");
    }
    if cos.dims() != [l, d / 2] || sin.dims() != [l, d / 2] {
        bail!(
            "rotary tables {:?}/{:?} do not fit {l} tokens of head dim {d}",
            cos.dims(),
            sin.dims()
        );
    }
    let (weight, eps) = norm.unwrap_or((None, 0.0));
    if weight.is_some_and(|w| w.elem_count() != d) {
        bail!("rms_norm_rope: the weight must hold {d} values");
    }
    let f32_on = |t: &Tensor| -> Result<Tensor> {
        t.to_device(x.device())?.to_dtype(DType::F32)?.contiguous()
    };
    let op = NormRopeTables {
        norm: norm.is_some(),
        weight: weight.map(|w| f32_on(&w.flatten_all()?)).transpose()?,
        cos: f32_on(cos)?,
        sin: f32_on(sin)?,
        eps: eps as f32,
    };
    x.apply_op1_no_bwd(&op)
}

/// RMS norm of whole rows, then their rotary pairs from tables (norm.cu `rms_norm_rotary_bf16_*`).
struct NormRotaryRows {
    weight: Option<Tensor>,
    cos: Tensor,
    sin: Tensor,
    table_rows: usize,
    /// Half a head in the split layout, 0 for interleaved pairs.
    split_half: usize,
    eps: f32,
}

impl CustomOp1 for NormRotaryRows {
    fn name(&self) -> &'static str {
        "rms-norm-rotary"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("rms_norm_rotary runs on CUDA only; reference::rms_norm_rotary is the CPU version")
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let (b, l, d) = xl.shape().dims3()?;
        let st = xl.stride();
        let rows = bf16_rows(xl, "rms_norm_rotary")?;
        let mut out = output::<bf16>(&dev, rows * d)?;
        if rows == 0 {
            return Ok((CudaStorage::wrap_cuda_slice(out, dev), xl.shape().clone()));
        }
        let kernel = if d <= 2048 {
            "rms_norm_rotary_bf16_d2048"
        } else {
            "rms_norm_rotary_bf16_d6144"
        };
        let func = function(&dev, &NORM, kernel)?;
        let stream = dev.cuda_stream();
        let (x, _xg) = typed_ptr::<bf16>(xs, xl, &stream)?;
        // Device addresses of the f32 operands: cos, sin, weight (0: none).
        let terms = [
            Some(self.cos.clone()),
            Some(self.sin.clone()),
            self.weight.clone(),
        ];
        let guards = terms.iter().map(f32_term).collect::<Result<Vec<_>>>()?;
        let mut ptrs = [0u64; 3];
        let mut syncs = Vec::new();
        for (slot, g) in ptrs.iter_mut().zip(&guards) {
            if let Some((storage, offset)) = g {
                let Storage::Cuda(cs) = &**storage else {
                    bail!("rms_norm_rotary: tables and weight must be on the CUDA device")
                };
                let (p, sync) = cs.as_cuda_slice::<f32>()?.device_ptr(&stream);
                *slot = p + 4 * *offset as u64;
                syncs.push(sync);
            }
        }
        let [cos, sin, weight] = ptrs;
        let (rows64, d32, x_row, table_rows, split_half) = (
            rows as i64,
            d as i32,
            st[1] as i64,
            self.table_rows as i64,
            self.split_half as i32,
        );
        // One warp per row, eight rows per block.
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(8) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(&func);
        launch
            .arg(&x)
            .arg(&mut out)
            .arg(&weight)
            .arg(&cos)
            .arg(&sin)
            .arg(&rows64)
            .arg(&d32)
            .arg(&x_row)
            .arg(&table_rows)
            .arg(&split_half)
            .arg(&self.eps);
        // SAFETY: arguments match rms_norm_rotary_bf16_* in norm.cu; shapes, strides and tables
        // validated by `rms_norm_rotary`.
        unsafe { launch.launch(cfg) }.map_err(driver_err("rms_norm_rotary launch"))?;
        drop(syncs);
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((b, l, d)),
        ))
    }
}

/// `x [B, L, D]` (bf16 on CUDA, rows of contiguous 16-byte aligned values) RMS-normalised over
/// each whole row (times `weight` `[D]` when given), then its `pairs` rotated by the tables
/// `cos`/`sin` `[L or B·L, D / 2]` (`reference::rms_norm_rotary`): LTX-2's q/k path (the norm
/// across heads, then the split or interleaved RoPE) in one pass; returns contiguous bf16.
/// D a multiple of 16 up to 6144; a split head a multiple of 16.
pub fn rms_norm_rotary(
    x: &Tensor,
    weight: Option<&Tensor>,
    eps: f64,
    cos: &Tensor,
    sin: &Tensor,
    pairs: RotaryPairs,
) -> Result<Tensor> {
    let table_rows = pairs.check(x, cos, sin)?;
    let d = x.dim(2)?;
    if x.dtype() != DType::BF16 || !x.device().is_cuda() {
        bail!(
            "rms_norm_rotary: x must be bf16 on CUDA, got {:?} on {:?}",
            x.dtype(),
            x.device()
        );
    }
    let split_half = match pairs {
        RotaryPairs::Interleaved => 0,
        RotaryPairs::Split { head_dim } => head_dim / 2,
    };
    // A lane's 8 pairs are two 16-byte runs inside one head.
    if !d.is_multiple_of(16) || d > NORM_MAX_DIM || !split_half.is_multiple_of(8) {
        bail!(
            "rms_norm_rotary: rows of {d} ({pairs:?}) need a width that is a multiple of 16 up to {NORM_MAX_DIM} and split halves of 8k values"
        );
    }
    if weight.is_some_and(|w| w.elem_count() != d) {
        bail!("rms_norm_rotary: the weight must hold {d} values");
    }
    let f32_on = |t: &Tensor| -> Result<Tensor> {
        t.to_device(x.device())?.to_dtype(DType::F32)?.contiguous()
    };
    let op = NormRotaryRows {
        weight: weight.map(|w| f32_on(&w.flatten_all()?)).transpose()?,
        cos: f32_on(cos)?,
        sin: f32_on(sin)?,
        table_rows,
        split_half,
        eps: eps as f32,
    };
    x.apply_op1_no_bwd(&op)
}

/// Frames-major video padded in time and space (layout.cu `pad_frames_*`).
struct PadFrames(FramePadding);

impl CustomOp1 for PadFrames {
    fn name(&self) -> &'static str {
        "pad-frames"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("pad_frames runs on CUDA only; reference::pad_frames is the CPU version")
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        fn run<T: CudaDType + DeviceRepr + 'static>(
            padding: FramePadding,
            xs: &CudaStorage,
            xl: &Layout,
            kernel: &'static str,
        ) -> Result<(CudaStorage, Shape)> {
            if !xl.is_contiguous() {
                bail!("pad_frames: x must be contiguous");
            }
            let (b, t, c, h, w) = xl.shape().dims5()?;
            let [_, t_out, _, ho, wo] = padding.output_shape_of([b, t, c, h, w])?;
            let out_shape = Shape::from_dims(&[b, t_out, c, ho, wo]);
            let dev = xs.device().clone();
            let mut out = output::<T>(&dev, out_shape.elem_count())?;
            let planes = b * t_out * c;
            if planes * ho * wo == 0 {
                return Ok((CudaStorage::wrap_cuda_slice(out, dev), out_shape));
            }
            let pixel_blocks = (ho * wo).div_ceil(256);
            if planes > i32::MAX as usize || pixel_blocks > 65_535 || ho * wo > i32::MAX as usize {
                bail!(
                    "pad_frames: {:?} is too large for the kernel's grid",
                    out_shape.dims()
                );
            }
            let func = function(&dev, &LAYOUT, kernel)?;
            let stream = dev.cuda_stream();
            let (x, _xg) = typed_ptr::<T>(xs, xl, &stream)?;
            let mode = match padding.mode {
                SpatialPad::Zeros => 0i32,
                SpatialPad::Replicate => 1,
                SpatialPad::Reflect => 2,
            };
            let ints = [t, c, h, w, padding.before, t_out, padding.pad].map(|v| v as i32);
            let cfg = LaunchConfig {
                grid_dim: (planes as u32, pixel_blocks as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut launch = stream.launch_builder(&func);
            launch.arg(&x).arg(&mut out);
            for v in &ints {
                launch.arg(v);
            }
            launch.arg(&mode);
            // SAFETY: arguments match pad_frames_* in layout.cu; x is contiguous, the output has
            // the padded shape, and the grid covers it.
            unsafe { launch.launch(cfg) }.map_err(driver_err("pad_frames launch"))?;
            Ok((CudaStorage::wrap_cuda_slice(out, dev), out_shape))
        }
        match xs.dtype() {
            DType::BF16 => run::<bf16>(self.0, xs, xl, "pad_frames_bf16"),
            DType::F32 => run::<f32>(self.0, xs, xl, "pad_frames_f32"),
            dtype => bail!("pad_frames runs on bf16 or f32, got {dtype:?}"),
        }
    }
}

/// Frames-major video `x [B, T, C, H, W]` (bf16 or f32 on CUDA) padded in time and space by
/// `padding` in one pass (`reference::pad_frames`).
pub fn pad_frames(x: &Tensor, padding: FramePadding) -> Result<Tensor> {
    padding.output_shape(x)?;
    x.contiguous()?.apply_op1_no_bwd(&PadFrames(padding))
}

/// SwiGLU over the last dim (norm.cu `swiglu_bf16`).
struct SwiGlu;

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("swiglu runs on CUDA only; reference::swiglu is the CPU version")
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let dims = xl.shape().dims();
        let width = *dims.last().unwrap_or(&0);
        let half = width / 2;
        let rows = xl.shape().elem_count() / width.max(1);
        let st = xl.stride();
        let row_stride = if dims.len() >= 2 {
            st[st.len() - 2]
        } else {
            width
        };
        // Rows must be evenly spaced: every dim before the last collapses into one stride.
        let regular = (0..dims.len().saturating_sub(2))
            .all(|i| dims[i] == 1 || st[i] == st[i + 1] * dims[i + 1]);
        if st[dims.len() - 1] != 1
            || !regular
            || !half.is_multiple_of(8)
            || !row_stride.is_multiple_of(8)
            || !xl.start_offset().is_multiple_of(8)
        {
            bail!(
                "swiglu: x must have a contiguous last dim of 16 * k values and 16-byte aligned rows, shape {dims:?} strides {st:?}"
            );
        }
        let mut out = output::<bf16>(&dev, rows * half)?;
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("rank checked") = half;
        if rows * half == 0 {
            return Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(shape)));
        }
        let func = function(&dev, &NORM, "swiglu_bf16")?;
        let stream = dev.cuda_stream();
        let (x, _xg) = typed_ptr::<bf16>(xs, xl, &stream)?;
        let (rows64, half64, row64) = (rows as i64, half as i64, row_stride as i64);
        let cfg = LaunchConfig {
            grid_dim: ((rows * half / 8).div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(&func);
        launch
            .arg(&x)
            .arg(&mut out)
            .arg(&rows64)
            .arg(&half64)
            .arg(&row64);
        // SAFETY: arguments match swiglu_bf16 in norm.cu; layout checked above.
        unsafe { launch.launch(cfg) }.map_err(driver_err("swiglu launch"))?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(shape)))
    }
}

/// `silu(x[..., :n]) * x[..., n:]` of bf16 `x` `[..., 2n]` on CUDA (rows may be a view with
/// any 16-byte aligned stride, e.g. a slice of a fused projection): FLUX.2's SwiGLU.
pub fn swiglu(x: &Tensor) -> Result<Tensor> {
    if x.dtype() != DType::BF16 || !x.device().is_cuda() || x.rank() == 0 {
        bail!(
            "swiglu: x must be bf16 on CUDA, got {:?} {:?} on {:?}",
            x.dims(),
            x.dtype(),
            x.device()
        );
    }
    x.apply_op1_no_bwd(&SwiGlu)
}

/// 256 threads a block over `n` items for quant.cu's grid-stride loops (at most 524,280 blocks;
/// a thread takes several items beyond that).
fn grid_stride(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 65_535 * 8) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Which way an e4m3 conversion goes (quant.cu).
#[derive(Clone, Copy)]
enum E4m3 {
    /// e4m3 bytes to `dtype` (bf16 or f32), times the scale.
    Dequantize(DType),
    /// bf16 or f32 divided by the scale, to e4m3.
    Quantize,
}

/// `data [rows, cols]` and its f32 scale (one, or one per row) through quant.cu.
struct E4m3Op(E4m3);

impl CustomOp2 for E4m3Op {
    fn name(&self) -> &'static str {
        "e4m3"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("the e4m3 kernels run on CUDA only; reference::fp8_* are the CPU versions")
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ss: &CudaStorage,
        sl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (rows, cols) = xl.shape().dims2()?;
        if !xl.is_contiguous() || !sl.is_contiguous() {
            bail!("e4m3: data and scale must be contiguous");
        }
        let per_row = match sl.shape().elem_count() {
            1 => 0i32,
            n if n == rows => 1,
            n => bail!("e4m3: {rows} rows take 1 or {rows} scales, not {n}"),
        };
        let dev = xs.device().clone();
        let stream = dev.cuda_stream();
        let n = rows * cols;
        let (scale, _sg) = typed_ptr::<f32>(ss, sl, &stream)?;
        let cfg = grid_stride(n);
        let (n64, cols64) = (n as i64, cols as i64);
        macro_rules! launch {
            ($input:ty, $output:ty, $kernel:literal) => {{
                let func = function(&dev, &QUANT, $kernel)?;
                let (x, _xg) = typed_ptr::<$input>(xs, xl, &stream)?;
                let mut out = output::<$output>(&dev, n)?;
                if n > 0 {
                    let mut launch = stream.launch_builder(&func);
                    launch
                        .arg(&x)
                        .arg(&scale)
                        .arg(&per_row)
                        .arg(&mut out)
                        .arg(&n64)
                        .arg(&cols64);
                    // SAFETY: arguments match the kernel in quant.cu; data and output hold
                    // rows * cols elements, the scale 1 or rows.
                    unsafe { launch.launch(cfg) }.map_err(driver_err("e4m3 launch"))?;
                }
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let storage = match (self.0, xs.dtype()) {
            (E4m3::Dequantize(DType::BF16), DType::F8E4M3) => {
                launch!(float8::F8E4M3, bf16, "dequantize_e4m3_bf16")
            }
            (E4m3::Dequantize(DType::F32), DType::F8E4M3) => {
                launch!(float8::F8E4M3, f32, "dequantize_e4m3_f32")
            }
            (E4m3::Quantize, DType::BF16) => launch!(bf16, float8::F8E4M3, "quantize_e4m3_bf16"),
            (E4m3::Quantize, DType::F32) => launch!(f32, float8::F8E4M3, "quantize_e4m3_f32"),
            (E4m3::Dequantize(to), from) => {
                bail!("e4m3: dequantizes float8 to bf16 or f32, not {from:?} to {to:?}")
            }
            (E4m3::Quantize, from) => bail!("e4m3: quantizes bf16 or f32, not {from:?}"),
        };
        Ok((storage, Shape::from((rows, cols))))
    }
}

/// `data` (float8 e4m3 `[rows, cols]` on CUDA) times `scale` (f32, one value or one per row) in
/// `dtype` (bf16 or f32), rounded once (`reference::fp8_dequantize`).
pub fn fp8_dequantize(data: &Tensor, scale: &Tensor, dtype: DType) -> Result<Tensor> {
    data.contiguous()?.apply_op2_no_bwd(
        &scale.to_dtype(DType::F32)?.contiguous()?,
        &E4m3Op(E4m3::Dequantize(dtype)),
    )
}

/// The activations of an FP8 GEMM quantized per row (token): `x` bf16 `[.., cols]` on CUDA, `cols`
/// a multiple of 8, to e4m3 of x's shape and f32 scales, one per row of x (`[rows]`), as
/// `reference::fp8_quantize_rows` (the same bytes), in one kernel.
pub fn fp8_quantize_rows(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let Device::Cuda(dev) = x.device() else {
        bail!("fp8_quantize_rows: x must be on CUDA, got {:?}", x.device());
    };
    let cols = x.dim(candle_core::D::Minus1)?;
    if x.dtype() != DType::BF16 || !cols.is_multiple_of(8) {
        bail!(
            "fp8_quantize_rows: x must be bf16 with rows a multiple of 8 wide, got {:?} {:?}",
            x.dtype(),
            x.dims()
        );
    }
    let rows = x.elem_count() / cols.max(1);
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let Storage::Cuda(xs) = &*storage else {
        bail!("fp8_quantize_rows: x must be on CUDA");
    };
    let stream = dev.cuda_stream();
    let mut q = output::<float8::F8E4M3>(dev, rows * cols)?;
    let mut scale = output::<f32>(dev, rows)?;
    if rows * cols > 0 {
        let func = function(dev, &QUANT, "quantize_rows_e4m3_bf16")?;
        let (xp, _xg) = typed_ptr::<bf16>(xs, layout, &stream)?;
        let (rows64, cols64) = (rows as i64, cols as i64);
        let mut launch = stream.launch_builder(&func);
        launch
            .arg(&xp)
            .arg(&mut q)
            .arg(&mut scale)
            .arg(&rows64)
            .arg(&cols64);
        // A block a row, a thread per 16-byte chunk up to 256: attention's 128-wide rows (a head
        // each) take one warp.
        let threads = (cols / 8).next_power_of_two().clamp(32, 256) as u32;
        let cfg = LaunchConfig {
            grid_dim: (rows.clamp(1, 65_535 * 8) as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match the kernel in quant.cu; x and q hold rows * cols elements
        // (16-byte aligned rows: cols is a multiple of 8), scale rows.
        unsafe { launch.launch(cfg) }.map_err(driver_err("FP8 row quantize launch"))?;
    }
    let wrap = |storage, shape: Shape| {
        Tensor::from_storage(
            Storage::Cuda(storage),
            shape,
            candle_core::op::BackpropOp::none(),
            false,
        )
    };
    Ok((
        wrap(
            CudaStorage::wrap_cuda_slice(q, dev.clone()),
            x.shape().clone(),
        ),
        wrap(
            CudaStorage::wrap_cuda_slice(scale, dev.clone()),
            Shape::from(rows),
        ),
    ))
}

/// An NVFP4 weight (`packed` codes, e4m3 `block_scales`, f32 `global` scale) through quant.cu.
struct Nvfp4Dequantize(DType);

impl CustomOp3 for Nvfp4Dequantize {
    fn name(&self) -> &'static str {
        "nvfp4-dequantize"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("the NVFP4 kernel runs on CUDA only; reference::nvfp4_dequantize is the CPU version")
    }

    fn cuda_fwd(
        &self,
        qs: &CudaStorage,
        ql: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        if !ql.is_contiguous() || !bl.is_contiguous() || gl.shape().elem_count() != 1 {
            bail!("NVFP4: contiguous codes and block scales and one global scale");
        }
        let (rows, cols) = (ql.dims()[0], 2 * ql.dims()[1]);
        let dev = qs.device().clone();
        let stream = dev.cuda_stream();
        let n = rows * cols;
        let pairs = n / 2;
        let (q, _qg) = typed_ptr::<u8>(qs, ql, &stream)?;
        let (block, _bg) = typed_ptr::<float8::F8E4M3>(bs, bl, &stream)?;
        let (global, _gg) = typed_ptr::<f32>(gs, gl, &stream)?;
        let cfg = grid_stride(pairs);
        let (pairs64, cols64) = (pairs as i64, cols as i64);
        macro_rules! launch {
            ($output:ty, $kernel:literal) => {{
                let func = function(&dev, &QUANT, $kernel)?;
                let mut out = output::<$output>(&dev, n)?;
                if n > 0 {
                    let mut launch = stream.launch_builder(&func);
                    launch
                        .arg(&q)
                        .arg(&block)
                        .arg(&global)
                        .arg(&mut out)
                        .arg(&pairs64)
                        .arg(&cols64);
                    // SAFETY: arguments match the kernel in quant.cu; the codes hold rows * cols
                    // / 2 bytes, the block scales rows * cols / 16, the output rows * cols.
                    unsafe { launch.launch(cfg) }.map_err(driver_err("NVFP4 launch"))?;
                }
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let storage = match self.0 {
            DType::BF16 => launch!(bf16, "dequantize_e2m1_bf16"),
            DType::F32 => launch!(f32, "dequantize_e2m1_f32"),
            to => bail!("NVFP4: dequantizes to bf16 or f32, not {to:?}"),
        };
        Ok((storage, Shape::from((rows, cols))))
    }
}

/// An NVFP4 weight (`packed` u8 `[rows, cols/2]` on CUDA, e4m3 `block_scales` `[rows, cols/16]`,
/// f32 scalar `global`) in `dtype` (bf16 or f32) (`reference::nvfp4_dequantize`).
pub fn nvfp4_dequantize(
    packed: &Tensor,
    block_scales: &Tensor,
    global: &Tensor,
    dtype: DType,
) -> Result<Tensor> {
    crate::reference::nvfp4_dims(packed, block_scales)?;
    packed.contiguous()?.apply_op3_no_bwd(
        &block_scales.contiguous()?,
        &global.to_dtype(DType::F32)?.contiguous()?,
        &Nvfp4Dequantize(dtype),
    )
}

/// `w / scale` (bf16 or f32 `[rows, cols]` on CUDA; f32 scale, one value or one per row) in
/// float8 e4m3, rounded to nearest even and saturated to ±448 (`reference::fp8_quantize`).
pub fn fp8_quantize(w: &Tensor, scale: &Tensor) -> Result<Tensor> {
    w.contiguous()?.apply_op2_no_bwd(
        &scale.to_dtype(DType::F32)?.contiguous()?,
        &E4m3Op(E4m3::Quantize),
    )
}
