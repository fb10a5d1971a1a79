//! [`FrameConv`] on cuDNN. In the frames-major `[B, T, C, H, W]` layout the `taps` frames one
//! output frame reads are one contiguous `[taps * C, H, W]` image, so each output frame can be a
//! single-image 2-D convolution read in place: no gathering copy, no partial sums, one rounding
//! (f32 accumulation), and a small workspace, which lets cuDNN use its fast precomputed-index
//! GEMM at full resolution. (A single call over all frames would need a descriptor whose images
//! overlap, for which cuDNN offers no algorithm.) That is how short clips go ([`FrameLayout`]).
//! Long clips may copy the windows of a batch of output frames side by side first (one strided 2-D
//! copy per tap) and convolve the batch in one call: the same arithmetic, in far fewer and larger
//! calls (H100, 2026-12-07: the LTX-2 video VAE's frame convolutions 368 → 257 ms, its decode
//! 385 → 295 ms, 1.4 GiB more memory in use). `VIDEOSDGX_CONV_GATHER=0` keeps every call in place.
//! With one tap the windows do not overlap, and frames go to cuDNN in batches read in place (a
//! strided descriptor: the images are `stride_t` frames apart): the image models (upscalers,
//! RIFE) call it that way, on many small images.
//! The algorithm for each shape is measured once with `cudnnFindConvolutionForwardAlgorithmEx`
//! and logged; the bias goes in with one `cudnnAddTensor` over the whole output, or, with an
//! activation or a residual ([`Epilogue`]), in one pass of our own that applies them too.

use super::{output, typed_ptr};
use crate::spec::{Epilogue, FrameConv};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::{result, sys};
use candle_core::cuda_backend::cudarc::driver::sys::{
    CUDA_MEMCPY2D, CUmemorytype, cuMemcpy2DAsync_v2,
};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, DeviceId};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};
use half::bf16;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Mutex, OnceLock};

/// Workspace the algorithm search may hand to cuDNN, in multiples of the input image's bytes (at
/// least [`MIN_FIND_WORKSPACE`]); algorithms that want more are not tried. The fast
/// precomputed-index GEMM asks for 1.3x the image at 288 channels and 4.5x at 1024 (Wan 2.2's
/// decoder), and at 2x and 64 MiB it was refused there, leaving the plain implicit GEMM at 10-30x
/// its time; the explicit GEMM's im2col (9x for a 3x3 kernel) stays out of reach.
const FIND_WORKSPACE_PER_INPUT: usize = 8;
const MIN_FIND_WORKSPACE: usize = 256 << 20;

/// Input bytes of one cuDNN call over a batch of frames (see `FrameConvOp::calls`).
const BATCH_INPUT_BYTES: usize = 64 << 20;
/// The same for images, one frame per item (the image models' convolutions, read in place): they
/// go several to a call (cuDNN's NCHW kernels run one 480x832 frame of 64 channels at about half
/// their rate over four; H100, 2026-12-07). A clip's frames (the video VAEs) keep the smaller
/// budget, which bounds cuDNN's workspace beside a loaded video model.
const IMAGE_BATCH_INPUT_BYTES: usize = 1 << 30;

/// The algorithms the search may pick: the GEMM family. FFT and Winograd are left out: on tiny
/// shapes timing noise sometimes picked them, and then a frame other than the one searched on was
/// refused (`CUDNN_STATUS_BAD_PARAM`, seen on H100); at the VAE's real sizes the implicit GEMMs win.
/// `VIDEOSDGX_CONV_WINOGRAD=1` lets the Winograd algorithms compete too (the A/B of the benchmarks).
fn algorithms() -> &'static [sys::cudnnConvolutionFwdAlgo_t] {
    use sys::cudnnConvolutionFwdAlgo_t::*;
    static ALGORITHMS: OnceLock<Vec<sys::cudnnConvolutionFwdAlgo_t>> = OnceLock::new();
    ALGORITHMS.get_or_init(|| {
        let mut algorithms = vec![
            CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
            CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
            CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
        ];
        if std::env::var("VIDEOSDGX_CONV_WINOGRAD").as_deref() == Ok("1") {
            algorithms.extend([
                CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
                CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
            ]);
        }
        algorithms
    })
}

fn cudnn_err(what: &'static str) -> impl FnOnce(result::CudnnError) -> candle_core::Error {
    move |e| candle_core::Error::Msg(format!("cuDNN {what}: {e:?}"))
}

/// A cuDNN handle bound to one thread (cuDNN handles are not thread-safe).
struct Handle(sys::cudnnHandle_t);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreate and dropped once.
        let _ = unsafe { result::destroy_handle(self.0) };
    }
}

thread_local! {
    static HANDLES: RefCell<HashMap<DeviceId, Handle>> = RefCell::new(HashMap::new());
}

/// This thread's handle for `dev`, set to the device's stream.
fn handle(dev: &CudaDevice) -> Result<sys::cudnnHandle_t> {
    let stream = dev.cuda_stream();
    HANDLES.with(|handles| {
        let mut handles = handles.borrow_mut();
        let handle = match handles.get(&dev.id()) {
            Some(h) => h.0,
            None => {
                stream
                    .context()
                    .bind_to_thread()
                    .map_err(super::driver_err("bind context"))?;
                let h = result::create_handle().map_err(cudnn_err("create handle"))?;
                handles.insert(dev.id(), Handle(h));
                h
            }
        };
        // SAFETY: the handle is live and the stream belongs to this device.
        unsafe { result::set_stream(handle, stream.cu_stream() as *mut _) }
            .map_err(cudnn_err("set stream"))?;
        Ok(handle)
    })
}

struct TensorDesc(sys::cudnnTensorDescriptor_t);

impl TensorDesc {
    fn new(dtype: sys::cudnnDataType_t, dims: [usize; 4], strides: [usize; 4]) -> Result<Self> {
        let desc =
            Self(result::create_tensor_descriptor().map_err(cudnn_err("tensor descriptor"))?);
        let (dims, strides) = (dims.map(|d| d as i32), strides.map(|s| s as i32));
        // SAFETY: a fresh descriptor and four dims/strides.
        unsafe {
            result::set_tensornd_descriptor(desc.0, dtype, 4, dims.as_ptr(), strides.as_ptr())
        }
        .map_err(cudnn_err("tensor descriptor"))?;
        Ok(desc)
    }

    fn packed(dtype: sys::cudnnDataType_t, dims: [usize; 4]) -> Result<Self> {
        let [_, c, h, w] = dims;
        Self::new(dtype, dims, [c * h * w, h * w, w, 1])
    }
}

impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created above, destroyed once.
        let _ = unsafe { result::destroy_tensor_descriptor(self.0) };
    }
}

struct FilterDesc(sys::cudnnFilterDescriptor_t);

impl FilterDesc {
    /// `dims` as [K, C, kh, kw] whatever the memory order: `[K, C, kh, kw]`, or `[K, kh, kw, C]`
    /// when `channels_last`.
    fn new(dtype: sys::cudnnDataType_t, dims: [usize; 4], channels_last: bool) -> Result<Self> {
        let desc =
            Self(result::create_filter_descriptor().map_err(cudnn_err("filter descriptor"))?);
        let [k, c, h, w] = dims.map(|d| d as i32);
        let format = if channels_last {
            sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC
        } else {
            sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW
        };
        // SAFETY: a fresh descriptor.
        unsafe { result::set_filter4d_descriptor(desc.0, dtype, format, [k, c, h, w]) }
            .map_err(cudnn_err("filter descriptor"))?;
        Ok(desc)
    }
}

impl Drop for FilterDesc {
    fn drop(&mut self) {
        // SAFETY: created above, destroyed once.
        let _ = unsafe { result::destroy_filter_descriptor(self.0) };
    }
}

struct ConvDesc(sys::cudnnConvolutionDescriptor_t);

impl ConvDesc {
    fn new(pad: usize, stride: usize, math: sys::cudnnMathType_t) -> Result<Self> {
        let desc =
            Self(result::create_convolution_descriptor().map_err(cudnn_err("conv descriptor"))?);
        let (pad, stride) = (pad as i32, stride as i32);
        // SAFETY: a fresh descriptor. Accumulation in f32.
        unsafe {
            result::set_convolution2d_descriptor(
                desc.0,
                pad,
                pad,
                stride,
                stride,
                1,
                1,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            )
        }
        .map_err(cudnn_err("conv descriptor"))?;
        // SAFETY: as above.
        unsafe { result::set_convolution_math_type(desc.0, math) }
            .map_err(cudnn_err("conv math type"))?;
        Ok(desc)
    }
}

impl Drop for ConvDesc {
    fn drop(&mut self) {
        // SAFETY: created above, destroyed once.
        let _ = unsafe { result::destroy_convolution_descriptor(self.0) };
    }
}

/// The algorithm measured fastest for one convolution shape, and the workspace it needs.
#[derive(Clone, Copy)]
struct Plan {
    algo: sys::cudnnConvolutionFwdAlgo_t,
    workspace: usize,
}

/// Everything that decides cuDNN's choice: data type, images per call, window channels, the
/// elements between images, size, output channels, kernel size, padding, stride and whether the
/// channels are last.
type PlanKey = (DeviceId, [usize; 12]);

fn plans() -> &'static Mutex<HashMap<PlanKey, Plan>> {
    static PLANS: OnceLock<Mutex<HashMap<PlanKey, Plan>>> = OnceLock::new();
    PLANS.get_or_init(Default::default)
}

/// The device's workspace, grown when a plan needs more; one stream, so reuse is ordered.
fn workspaces() -> &'static Mutex<HashMap<DeviceId, CudaSlice<u8>>> {
    static WORKSPACES: OnceLock<Mutex<HashMap<DeviceId, CudaSlice<u8>>>> = OnceLock::new();
    WORKSPACES.get_or_init(Default::default)
}

struct Descriptors {
    x: TensorDesc,
    w: FilterDesc,
    conv: ConvDesc,
    y: TensorDesc,
}

/// Runs every algorithm cuDNN offers for these descriptors on the real operands and keeps the
/// fastest of [`algorithms`] that succeeded. The search's scratch is as large as the hungriest algorithm within
/// `limit` bytes asks for, and is freed afterwards.
fn find_plan(
    dev: &CudaDevice,
    handle: sys::cudnnHandle_t,
    d: &Descriptors,
    (x, w, y): (u64, u64, u64),
    limit: usize,
    what: &str,
) -> Result<Plan> {
    let stream = dev.cuda_stream();
    let scratch_bytes = algorithms()
        .iter()
        .filter_map(|&algo| {
            // SAFETY: live handle and descriptors; algorithms that do not apply return an error.
            unsafe {
                result::get_convolution_forward_workspace_size(
                    handle, d.x.0, d.w.0, d.conv.0, d.y.0, algo,
                )
            }
            .ok()
        })
        .filter(|&bytes| bytes <= limit)
        .max()
        .unwrap_or(0);
    // SAFETY: scratch for the search only; cuDNN writes before it reads.
    let mut scratch = unsafe { stream.alloc::<u8>(scratch_bytes.max(1)) }
        .map_err(super::driver_err("conv search workspace"))?;
    let (scratch_ptr, _guard) = scratch.device_ptr_mut(&stream);
    const ALGOS: usize = sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_COUNT as usize;
    // SAFETY: plain C structs that cuDNN fills.
    let mut found: [sys::cudnnConvolutionFwdAlgoPerf_t; ALGOS] = unsafe { std::mem::zeroed() };
    let mut count = 0;
    // SAFETY: descriptors describe the operands at x, w, y; the workspace has scratch_bytes bytes.
    unsafe {
        sys::cudnnFindConvolutionForwardAlgorithmEx(
            handle,
            d.x.0,
            x as *const c_void,
            d.w.0,
            w as *const c_void,
            d.conv.0,
            d.y.0,
            y as *mut c_void,
            ALGOS as i32,
            &mut count,
            found.as_mut_ptr(),
            scratch_ptr as *mut c_void,
            scratch_bytes,
        )
        .result()
    }
    .map_err(cudnn_err("algorithm search"))?;
    // Results come sorted by time.
    let best = found[..count as usize].iter().find(|p| {
        p.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
            && p.memory <= scratch_bytes
            && algorithms().contains(&p.algo)
    });
    let Some(best) = best else {
        bail!("cuDNN has no algorithm for the convolution {what}")
    };
    tracing::info!(
        "cuDNN conv {what}: {:?} ({:.3} ms, workspace {} MiB, of {count} tried)",
        best.algo,
        best.time,
        best.memory >> 20
    );
    Ok(Plan {
        algo: best.algo,
        workspace: best.memory,
    })
}

/// How a multi-tap convolution goes to cuDNN.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FrameLayout {
    /// Each output frame reads its `taps` input frames as one `[taps·C, H, W]` image in place:
    /// one call per output frame. (With one tap, frames go in batches.)
    Windows,
    /// The windows of a batch of output frames are copied side by side into a scratch buffer
    /// (one strided 2-D copy per tap) and go to cuDNN as one call.
    Gathered,
}

impl FrameLayout {
    /// Windows in place for short clips, where a batch would be small (Wan's VAE decodes a few
    /// frames at a time); gathered from twice as many output frames as taps (LTX-2's VAE decodes
    /// every frame at once, and one call per frame leaves the GPU idle on its small, wide layers).
    /// `VIDEOSDGX_CONV_GATHER=0` turns gathering off (the A/B of the benchmarks).
    fn for_frames(spec: FrameConv, t_out: usize) -> Self {
        static GATHER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let gather =
            *GATHER.get_or_init(|| std::env::var("VIDEOSDGX_CONV_GATHER").as_deref() != Ok("0"));
        if gather && spec.taps > 1 && t_out >= 2 * spec.taps {
            Self::Gathered
        } else {
            Self::Windows
        }
    }
}

struct FrameConvOp {
    spec: FrameConv,
    layout: FrameLayout,
    epilogue: Epilogue,
    /// x `[B, T, H, W, C]`, the weight `[O, kh, kw, C]` and the output `[B, T, H', W', O]`
    /// (one tap only): cuDNN's NHWC kernels.
    channels_last: bool,
}

impl CustomOp3 for FrameConvOp {
    fn name(&self) -> &'static str {
        "frame-conv"
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
        bail!("frame conv runs on CUDA only; reference::frame_conv is the CPU version")
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        use sys::cudnnDataType_t::{CUDNN_DATA_BFLOAT16, CUDNN_DATA_FLOAT};
        use sys::cudnnMathType_t::{CUDNN_DEFAULT_MATH, CUDNN_TENSOR_OP_MATH};
        let operands = [(xs, xl), (ws, wl), (bs, bl)];
        match xs.dtype() {
            DType::BF16 => self.run::<bf16>(operands, CUDNN_DATA_BFLOAT16, CUDNN_TENSOR_OP_MATH),
            // cuDNN's default math lets f32 convolutions use TF32 tensor cores, as PyTorch's
            // default (`torch.backends.cudnn.allow_tf32`) does for the reference.
            DType::F32 => self.run::<f32>(operands, CUDNN_DATA_FLOAT, CUDNN_DEFAULT_MATH),
            dtype => bail!("frame conv runs on bf16 or f32, got {dtype:?}"),
        }
    }
}

/// One batch of cuDNN images: `images` windows of `channels` channels, their first frames
/// `frame_step` frames apart, convolved with the `[O, channels, kh, kw]` kernel into `images`
/// packed output frames.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Batch {
    images: usize,
    channels: usize,
    frame_step: usize,
}

/// One call: the batch from input frame `input` (copied side by side into the scratch buffer
/// first when `gather`), written to output frame `output`.
struct Call {
    batch: Batch,
    input: usize,
    output: usize,
    gather: bool,
}

impl FrameConvOp {
    /// The calls that compute every output frame of `b` items of `t` frames of `frame_bytes`.
    fn calls(&self, b: usize, t: usize, c: usize, frame_bytes: usize) -> Result<Vec<Call>> {
        let spec = self.spec;
        let budget = if t == 1 {
            IMAGE_BATCH_INPUT_BYTES
        } else {
            BATCH_INPUT_BYTES
        };
        // A one-tap convolution over every frame maps input frame i to output frame i: the items'
        // frames are one run (the image models' many small images, batched across items).
        let (b, t) = if spec.taps == 1 && spec.stride_t == 1 {
            (1, b * t)
        } else {
            (b, t)
        };
        let t_out = spec.out_frames(t)?;
        let window_bytes = spec.taps * frame_bytes;
        let (per_call, batch, gather) = match self.layout {
            // In place: one tap's windows are frames `stride_t` apart.
            FrameLayout::Windows if spec.taps == 1 => {
                (budget / frame_bytes.max(1), (c, spec.stride_t), false)
            }
            FrameLayout::Windows => (1, (spec.taps * c, spec.stride_t), false),
            // Packed in the scratch buffer.
            FrameLayout::Gathered => (
                BATCH_INPUT_BYTES / window_bytes.max(1),
                (spec.taps * c, spec.taps),
                true,
            ),
        };
        let per_call = per_call.clamp(1, t_out);
        let mut calls = Vec::new();
        for item in 0..b {
            for first in (0..t_out).step_by(per_call) {
                calls.push(Call {
                    batch: Batch {
                        images: per_call.min(t_out - first),
                        channels: batch.0,
                        frame_step: batch.1,
                    },
                    input: item * t + first * spec.stride_t,
                    output: item * t_out + first,
                    gather,
                });
            }
        }
        Ok(calls)
    }

    fn run<T: CudaDType + DeviceRepr + candle_core::WithDType>(
        &self,
        [(xs, xl), (ws, wl), (bs, bl)]: [(&CudaStorage, &Layout); 3],
        dtype: sys::cudnnDataType_t,
        math: sys::cudnnMathType_t,
    ) -> Result<(CudaStorage, Shape)> {
        let spec = self.spec;
        let dev = xs.device().clone();
        let channels_last = self.channels_last;
        let (b, t, c, h, w) = match xl.shape().dims5()? {
            (b, t, h, w, c) if channels_last => (b, t, c, h, w),
            dims => dims,
        };
        let (o, kh, kw) = match wl.shape().dims4()? {
            (o, kh, kw, _) if channels_last => (o, kh, kw),
            (o, _, kh, kw) => (o, kh, kw),
        };
        let t_out = spec.out_frames(t)?;
        let (h_out, w_out) = (spec.out_size(h, kh)?, spec.out_size(w, kw)?);
        let (in_frame, out_frame) = (c * h * w, o * h_out * w_out);
        // One-tap frames may lie apart (a channel prefix of a larger buffer); windows of several
        // taps read consecutive frames as one image, so they need them packed.
        let in_stride = match frame_stride(xl) {
            Some(stride) if spec.taps == 1 || stride == in_frame => stride,
            _ => bail!("frame conv: x's frames must be packed (or, for one tap, evenly spaced)"),
        };
        let elem = size_of::<T>();
        let calls = self.calls(b, t, c, elem * in_frame)?;

        let mut out = output::<T>(&dev, b * t_out * out_frame)?;
        let stream = dev.cuda_stream();
        let handle = handle(&dev)?;
        let (x, _xg) = typed_ptr::<T>(xs, xl, &stream)?;
        let (weight, _wg) = typed_ptr::<T>(ws, wl, &stream)?;
        let (bias, _bg) = typed_ptr::<T>(bs, bl, &stream)?;
        let (y, y_guard) = out.device_ptr_mut(&stream);
        let x_at = |frame: usize| x + (elem * frame * in_stride) as u64;
        let y_at = |frame: usize| y + (elem * frame * out_frame) as u64;
        // The gathered windows of the largest batch.
        let window_bytes = elem * spec.taps * in_frame;
        let gathered = calls
            .iter()
            .filter(|call| call.gather)
            .map(|call| call.batch.images * window_bytes)
            .max()
            .unwrap_or(0);
        // SAFETY: scratch that each gathering copy writes in full before the call reads it.
        let mut scratch = unsafe { stream.alloc::<u8>(gathered.max(1)) }
            .map_err(super::driver_err("conv scratch"))?;
        let (scratch, scratch_guard) = scratch.device_ptr_mut(&stream);
        let input_at = |call: &Call| {
            if call.gather {
                scratch
            } else {
                x_at(call.input)
            }
        };

        // Descriptors and plan of each distinct batch (at most two: full and last).
        let mut shapes: Vec<(Batch, Descriptors, Plan, PlanKey)> = Vec::new();
        for call in &calls {
            let batch = call.batch;
            if shapes.iter().any(|(known, ..)| *known == batch) {
                continue;
            }
            let Batch {
                images,
                channels,
                frame_step,
            } = batch;
            let image_stride = frame_step * in_stride;
            let d = Descriptors {
                x: if channels_last {
                    let strides = [image_stride, 1, w * channels, channels];
                    TensorDesc::new(dtype, [images, channels, h, w], strides)?
                } else {
                    let strides = [image_stride, h * w, w, 1];
                    TensorDesc::new(dtype, [images, channels, h, w], strides)?
                },
                w: FilterDesc::new(dtype, [o, channels, kh, kw], channels_last)?,
                conv: ConvDesc::new(spec.pad, spec.stride, math)?,
                y: if channels_last {
                    let strides = [out_frame, 1, w_out * o, o];
                    TensorDesc::new(dtype, [images, o, h_out, w_out], strides)?
                } else {
                    TensorDesc::packed(dtype, [images, o, h_out, w_out])?
                },
            };
            let key = (
                dev.id(),
                [
                    dtype as usize,
                    images,
                    channels,
                    frame_step * in_stride,
                    h,
                    w,
                    o,
                    kh,
                    kw,
                    spec.pad,
                    spec.stride,
                    usize::from(channels_last),
                ],
            );
            let known = plans()
                .lock()
                .expect("conv plans poisoned")
                .get(&key)
                .copied();
            let plan = match known {
                Some(plan) => plan,
                None => {
                    let what = format!(
                        "{images} x [{channels}, {h}, {w}] * [{o}, {channels}, {kh}, {kw}] pad {} stride {}",
                        spec.pad, spec.stride
                    );
                    let limit = (FIND_WORKSPACE_PER_INPUT * elem * images * channels * h * w)
                        .max(MIN_FIND_WORKSPACE);
                    let plan = find_plan(
                        &dev,
                        handle,
                        &d,
                        (input_at(call), weight, y_at(call.output)),
                        limit,
                        &what,
                    )?;
                    plans()
                        .lock()
                        .expect("conv plans poisoned")
                        .insert(key, plan);
                    plan
                }
            };
            shapes.push((batch, d, plan, key));
        }

        let mut workspaces = workspaces().lock().expect("conv workspaces poisoned");
        let needed = shapes.iter().map(|s| s.2.workspace).max().unwrap_or(0);
        if workspaces.get(&dev.id()).is_none_or(|ws| ws.len() < needed) {
            // SAFETY: scratch memory cuDNN writes before reading.
            let ws = unsafe { stream.alloc::<u8>(needed.max(1)) }
                .map_err(super::driver_err("conv workspace"))?;
            workspaces.insert(dev.id(), ws);
        }
        let (workspace, workspace_guard) = workspaces[&dev.id()].device_ptr(&stream);
        let (one, zero) = (1f32, 0f32);
        for call in &calls {
            let shape = shapes
                .iter_mut()
                .find(|(batch, ..)| *batch == call.batch)
                .expect("every call's batch has descriptors");
            let (_, d, plan, key) = shape;
            if call.gather {
                // The batch's windows (`taps` frames from every `stride_t`-th frame) side by side,
                // one strided copy per tap: a copy's rows may not overlap (pitch ≥ width), and
                // consecutive windows share frames when stride_t < taps.
                let frame_bytes = elem * in_frame;
                for tap in 0..spec.taps {
                    // Every field spelled out: the memory-type enums have no zero value.
                    let copy = CUDA_MEMCPY2D {
                        srcXInBytes: 0,
                        srcY: 0,
                        srcMemoryType: CUmemorytype::CU_MEMORYTYPE_DEVICE,
                        srcHost: std::ptr::null(),
                        srcDevice: x_at(call.input + tap),
                        srcArray: std::ptr::null_mut(),
                        srcPitch: spec.stride_t * frame_bytes,
                        dstXInBytes: 0,
                        dstY: 0,
                        dstMemoryType: CUmemorytype::CU_MEMORYTYPE_DEVICE,
                        dstHost: std::ptr::null_mut(),
                        dstDevice: scratch + (tap * frame_bytes) as u64,
                        dstArray: std::ptr::null_mut(),
                        dstPitch: window_bytes,
                        WidthInBytes: frame_bytes,
                        Height: call.batch.images,
                    };
                    // SAFETY: the source rows are frames of x (the windows of output frames in
                    // range), the destination rows lie in the scratch buffer sized for the
                    // largest batch; same stream.
                    unsafe { cuMemcpy2DAsync_v2(&copy, stream.cu_stream()).result() }
                        .map_err(super::driver_err("conv window gather"))?;
                }
            }
            let convolve = |plan: Plan| {
                // SAFETY: the descriptors describe `images` windows from the call's input (in
                // bounds: the calls stay within out_frames) and as many packed output frames from
                // `output`; the workspace holds the plan's bytes (at most `needed`, or none);
                // alpha/beta are f32 as bf16 and f32 data require.
                unsafe {
                    result::convolution_forward(
                        handle,
                        &one as *const f32 as *const c_void,
                        d.x.0,
                        input_at(call) as *const c_void,
                        d.w.0,
                        weight as *const c_void,
                        d.conv.0,
                        plan.algo,
                        workspace as *mut c_void,
                        plan.workspace,
                        &zero as *const f32 as *const c_void,
                        d.y.0,
                        y_at(call.output) as *mut c_void,
                    )
                }
                .map_err(cudnn_err("convolution"))
            };
            if let Err(err) = convolve(*plan) {
                // The search measured the plan on these operands, yet on tiny shapes cuDNN has
                // refused the precomputed-index GEMM at execution (`CUDNN_STATUS_BAD_PARAM`,
                // H100): fall back to the plain implicit GEMM, which needs no workspace and takes
                // every shape, for good.
                let plain = Plan {
                    algo: sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                    workspace: 0,
                };
                if plan.algo == plain.algo {
                    return Err(err);
                }
                tracing::warn!(
                    "cuDNN refused {:?} at execution ({err}); using {:?} for this shape",
                    plan.algo,
                    plain.algo
                );
                plans()
                    .lock()
                    .expect("conv plans poisoned")
                    .insert(*key, plain);
                *plan = plain;
                convolve(plain)?;
            }
        }
        drop(workspace_guard);
        drop(workspaces);
        drop(scratch_guard);
        if self.epilogue.is_bias_only() && !channels_last {
            let one = 1f32;
            let bias_desc = TensorDesc::packed(dtype, [1, o, 1, 1])?;
            let out_desc = TensorDesc::packed(dtype, [b * t_out, o, h_out, w_out])?;
            // SAFETY: bias is [o], broadcast over the packed output; y += bias.
            unsafe {
                sys::cudnnAddTensor(
                    handle,
                    &one as *const f32 as *const c_void,
                    bias_desc.0,
                    bias as *const c_void,
                    &one as *const f32 as *const c_void,
                    out_desc.0,
                    y as *mut c_void,
                )
                .result()
            }
            .map_err(cudnn_err("bias add"))?;
        } else {
            let channels = if channels_last {
                super::image::Channels::Last
            } else {
                super::image::Channels::Planes(h_out * w_out)
            };
            let elements = b * t_out * out_frame;
            super::image::conv_epilogue::<T>(
                &dev,
                (y, bias),
                &self.epilogue,
                elements,
                o,
                channels,
            )?;
        }
        drop(y_guard);
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from_dims(&if channels_last {
                [b, t_out, h_out, w_out, o]
            } else {
                [b, t_out, o, h_out, w_out]
            }),
        ))
    }
}

/// The distance in elements between consecutive frames of `x [B, T, C, H, W]` (taken in order
/// over B and T) when every frame is packed, the frames are evenly spaced without overlapping,
/// and every frame starts 16-byte aligned; `None` otherwise. Dims of size 1 may have any stride.
fn frame_stride(l: &Layout) -> Option<usize> {
    let (dims, strides) = (l.dims(), l.stride());
    let [b, t, c, h, w] = dims else { return None };
    let frame = c * h * w;
    let packed = [
        (*c, strides[2], h * w),
        (*h, strides[3], *w),
        (*w, strides[4], 1),
    ]
    .iter()
    .all(|&(n, stride, want)| n == 1 || stride == want);
    let stride = match (*b, *t) {
        (_, t) if t > 1 => strides[1],
        (b, _) if b > 1 => strides[0],
        _ => frame,
    };
    let even = *b == 1 || *t == 1 || strides[0] == t * stride;
    let aligned = (stride.is_multiple_of(8) || b * t == 1) && l.start_offset().is_multiple_of(8);
    (packed && even && stride >= frame && aligned).then_some(stride)
}

/// Refuses operands (x first) that are not all bf16 or all f32 on x's CUDA device.
fn check_operands(what: &str, operands: [&Tensor; 3]) -> Result<()> {
    let x = operands[0];
    if !matches!(x.dtype(), DType::BF16 | DType::F32) {
        bail!("{what} runs on bf16 or f32, got {:?}", x.dtype());
    }
    for t in operands {
        if t.dtype() != x.dtype() || !t.device().is_cuda() || !t.device().same_device(x.device()) {
            bail!(
                "{what}: operands must be {:?} on the CUDA device of x, got {:?} on {:?}",
                x.dtype(),
                t.dtype(),
                t.device()
            );
        }
    }
    Ok(())
}

/// [`FrameConv`] of `x [B, T, C, H, W]` with `weight [O, taps * C, kh, kw]` and `bias [O]`, all
/// bf16 or all f32 on one CUDA device, through cuDNN (f32 accumulation, rounded once; TF32 tensor
/// cores for f32, as PyTorch allows by default), finished by `epilogue` (its residual and slopes
/// of the same dtype). Frames must be [`FrameConv::frames_aligned`]. Errors on anything else.
pub fn frame_conv(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    spec: FrameConv,
    epilogue: &Epilogue,
) -> Result<Tensor> {
    epilogue.check(&spec.output_shape(x, weight, bias)?, weight.dim(0)?)?;
    if !spec.frames_aligned(x, weight, bias)? {
        bail!(
            "frame conv: input or output frames of {:?} are not 16-byte aligned",
            x.dims()
        );
    }
    check_operands("frame conv", [x, weight, bias])?;
    let layout = FrameLayout::for_frames(spec, spec.out_frames(x.dim(1)?)?);
    // One tap reads frames in place wherever they lie evenly spaced (see `run`).
    let x = match frame_stride(x.layout()) {
        Some(_) if spec.taps == 1 => x.clone(),
        _ => x.contiguous()?,
    };
    x.apply_op3_no_bwd(
        &weight.contiguous()?,
        &bias.contiguous()?,
        &FrameConvOp {
            spec,
            layout,
            epilogue: epilogue.clone(),
            channels_last: false,
        },
    )
}

/// A 2-D convolution of channels-last images: `x [B, H, W, C]` with `weight [O, kh, kw, C]` and
/// `bias [O]` (`spec` one tap: padding and stride), all bf16 or all f32 on one CUDA device, through
/// cuDNN's NHWC kernels, finished by `epilogue` (residual `[B, H', W', O]`); returns
/// `[B, H', W', O]` (`reference::image_conv_nhwc`). Evenly spaced images are read in place.
pub fn image_conv_nhwc(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    spec: FrameConv,
    epilogue: &Epilogue,
) -> Result<Tensor> {
    let [b, h_out, w_out, o] = crate::spec::nhwc_output_shape(x, weight, bias, spec)?;
    epilogue.check(&[b, h_out, w_out, o], o)?;
    check_operands("image conv", [x, weight, bias])?;
    let x = x.unsqueeze(1)?;
    let x = match frame_stride(x.layout()) {
        Some(_) => x,
        None => x.contiguous()?,
    };
    let epilogue = Epilogue {
        residual: epilogue
            .residual
            .as_ref()
            .map(|r| r.contiguous()?.unsqueeze(1))
            .transpose()?,
        activation: epilogue.activation.clone(),
    };
    x.apply_op3_no_bwd(
        &weight.contiguous()?,
        &bias.contiguous()?,
        &FrameConvOp {
            spec,
            layout: FrameLayout::Windows,
            epilogue,
            channels_last: true,
        },
    )?
    .squeeze(1)
}
