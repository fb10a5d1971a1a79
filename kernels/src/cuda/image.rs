//! The image models' per-pixel kernels (image.cu): the convolutions' epilogue (see
//! `conv.rs`), the channel scatter of dense blocks and the backward warp of optical-flow nets.

use super::{driver_err, function, output, tensor_ptr, typed_ptr};
use crate::spec::{Activation, ChannelSlot, Epilogue};
use crate::targets::IMAGE;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::{
    CpuStorage, CustomOp2, DType, InplaceOp2, Layout, Result, Shape, Tensor, WithDType, bail,
};
use half::bf16;

/// Where a convolution's output keeps its channels.
pub(super) enum Channels {
    /// Planes of this many pixels, plane `i` of channel `i % o` (NCHW).
    Planes(usize),
    /// Every pixel's channels side by side (NHWC).
    Last,
}

/// Finishes a convolution's output in place (`conv_epilogue_*`): `y` (device pointer) holds
/// `elements` values of `o` channels laid out as `channels` say; `bias` is `[o]`. The residual
/// and the PReLU slopes come from `epilogue` (checked against the output by the caller,
/// [`Epilogue::check`]), all of dtype `T`.
pub(super) fn conv_epilogue<T: CudaDType + DeviceRepr + WithDType>(
    dev: &CudaDevice,
    (y, bias): (u64, u64),
    epilogue: &Epilogue,
    elements: usize,
    o: usize,
    channels: Channels,
) -> Result<()> {
    if elements == 0 {
        return Ok(());
    }
    let hw = match channels {
        Channels::Planes(hw) => hw,
        Channels::Last => 0,
    };
    let planes = elements.checked_div(hw).unwrap_or(0);
    if planes > i32::MAX as usize || hw > i32::MAX as usize {
        bail!("conv epilogue: {planes} planes of {hw} pixels exceed 32-bit indexing");
    }
    let stream = dev.cuda_stream();
    let residual = epilogue
        .residual
        .as_ref()
        .map(|r| operand::<T>(r, "residual"))
        .transpose()?;
    let (act, slope, slopes) = match &epilogue.activation {
        Activation::None => (0i32, 0f32, None),
        Activation::LeakyRelu(slope) => (1, *slope, None),
        Activation::PRelu(slopes) => (2, 0.0, Some(operand::<T>(slopes, "PReLU slopes")?)),
    };
    let residual = residual
        .as_ref()
        .map(|r| tensor_ptr::<T>(r, &stream, "conv epilogue: residual"))
        .transpose()?;
    let slopes = slopes
        .as_ref()
        .map(|s| tensor_ptr::<T>(s, &stream, "conv epilogue: PReLU slopes"))
        .transpose()?;
    let (residual_ptr, slopes_ptr) = (
        residual.as_ref().map_or(0, |r| r.0),
        slopes.as_ref().map_or(0, |s| s.0),
    );
    // Channels last, bf16 goes 8 channels to a thread with 16-byte accesses where it can.
    let chunks = elements / 8;
    let by_eight = T::DTYPE == DType::BF16
        && o.is_multiple_of(8)
        && chunks <= i32::MAX as usize
        && y.is_multiple_of(16)
        && residual_ptr.is_multiple_of(16);
    let kernel = match (T::DTYPE, channels) {
        (DType::BF16, Channels::Planes(_)) => "conv_epilogue_bf16",
        (DType::F32, Channels::Planes(_)) => "conv_epilogue_f32",
        (DType::BF16, Channels::Last) if by_eight => "conv_epilogue_last_bf16x8",
        (DType::BF16, Channels::Last) => "conv_epilogue_last_bf16",
        (DType::F32, Channels::Last) => "conv_epilogue_last_f32",
        (dtype, _) => bail!("conv epilogue runs on bf16 or f32, got {dtype:?}"),
    };
    let func = function(dev, &IMAGE, kernel)?;
    let (o32, c8, chunks32) = (o as i32, (o / 8) as i32, chunks as i32);
    let (hw32, planes32, elements64) = (hw as i32, planes as i32, elements as i64);
    let mut launch = stream.launch_builder(&func);
    launch
        .arg(&y)
        .arg(&bias)
        .arg(&residual_ptr)
        .arg(&slopes_ptr)
        .arg(&act)
        .arg(&slope);
    let grid_stride = |threads: usize| LaunchConfig {
        grid_dim: (threads.div_ceil(256).min(1 << 20) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let cfg = if hw > 0 {
        launch.arg(&o32).arg(&hw32).arg(&planes32);
        LaunchConfig {
            grid_dim: (hw.div_ceil(256) as u32, planes.min(65_535) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    } else if kernel == "conv_epilogue_last_bf16x8" {
        launch.arg(&c8).arg(&chunks32);
        grid_stride(chunks)
    } else {
        launch.arg(&o32).arg(&elements64);
        grid_stride(elements)
    };
    // SAFETY: arguments match conv_epilogue_* in image.cu; y holds `elements` values of T, bias
    // o, the residual (when given) y's count and the slopes o (checked by the caller); a null
    // pointer stands for an absent term.
    unsafe { launch.launch(cfg) }.map_err(driver_err("conv epilogue launch"))?;
    Ok(())
}

/// A contiguous epilogue operand of dtype `T`, with its storage held.
fn operand<'a, T: WithDType>(
    t: &'a Tensor,
    what: &str,
) -> Result<(candle_core::StorageRef<'a>, &'a Layout)> {
    if !t.is_contiguous() || t.dtype() != T::DTYPE {
        bail!(
            "conv epilogue: the {what} must be contiguous {:?}",
            T::DTYPE
        );
    }
    Ok(t.storage_and_layout())
}

/// `image [B, C, H, W]` (bf16 or f32, contiguous) warped by `flow` (f32 `[B, 2, H, W]`).
struct Warp;

impl CustomOp2 for Warp {
    fn name(&self) -> &'static str {
        "warp"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("warp runs on CUDA only; reference::warp is the CPU version")
    }

    fn cuda_fwd(
        &self,
        is: &CudaStorage,
        il: &Layout,
        fs: &CudaStorage,
        fl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        if !il.is_contiguous() || !fl.is_contiguous() || fs.dtype() != DType::F32 {
            bail!("warp: image and f32 flow must be contiguous");
        }
        match is.dtype() {
            DType::BF16 => launch::<bf16>(is, il, fs, fl, "warp_bf16"),
            DType::F32 => launch::<f32>(is, il, fs, fl, "warp_f32"),
            dtype => bail!("warp runs on bf16 or f32 images, got {dtype:?}"),
        }
    }
}

fn launch<T: CudaDType + DeviceRepr + 'static>(
    is: &CudaStorage,
    il: &Layout,
    fs: &CudaStorage,
    fl: &Layout,
    kernel: &'static str,
) -> Result<(CudaStorage, Shape)> {
    let (b, c, h, w) = il.shape().dims4()?;
    let dev = is.device().clone();
    let mut out = output::<T>(&dev, b * c * h * w)?;
    let pixels = b * h * w;
    if pixels > 0 && c > 0 {
        let func = function(&dev, &IMAGE, kernel)?;
        let stream = dev.cuda_stream();
        let (image, _ig) = typed_ptr::<T>(is, il, &stream)?;
        let (flow, _fg) = typed_ptr::<f32>(fs, fl, &stream)?;
        let (c32, h32, w32, pixels64) = (c as i32, h as i32, w as i32, pixels as i64);
        let cfg = LaunchConfig {
            grid_dim: (pixels.div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(&func);
        launch
            .arg(&image)
            .arg(&flow)
            .arg(&mut out)
            .arg(&c32)
            .arg(&h32)
            .arg(&w32)
            .arg(&pixels64);
        // SAFETY: arguments match warp_* in image.cu; image and out hold B·C·H·W elements and
        // flow B·2·H·W, all contiguous (checked above and by `warp`).
        unsafe { launch.launch(cfg) }.map_err(driver_err("warp launch"))?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev),
        Shape::from((b, c, h, w)),
    ))
}

/// `reference::warp` on CUDA: `image [B, C, H, W]` (bf16 or f32) warped by `flow [B, 2, H, W]`
/// (any float dtype, used in f32), in the image's dtype.
pub fn warp(image: &Tensor, flow: &Tensor) -> Result<Tensor> {
    crate::reference::check_warp_flow(image, flow)?;
    let (_, _, h, w) = image.dims4()?;
    if h * w > i32::MAX as usize {
        bail!("warp: {h}x{w} frames are too large for 32-bit pixel offsets");
    }
    image
        .contiguous()?
        .apply_op2_no_bwd(&flow.to_dtype(DType::F32)?.contiguous()?, &Warp)
}

/// Copies a channels-last part into its [`ChannelSlot`]s of a flat buffer (`scatter_channels_16b`).
struct ScatterChannels {
    slots: Vec<ChannelSlot>,
    pixels: usize,
    channels: usize,
}

impl InplaceOp2 for ScatterChannels {
    fn name(&self) -> &'static str {
        "scatter-channels"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        bail!("scatter channels runs on CUDA only; reference::scatter_channels is the CPU version")
    }

    fn cuda_fwd(
        &self,
        ds: &mut CudaStorage,
        dl: &Layout,
        ps: &CudaStorage,
        pl: &Layout,
    ) -> Result<()> {
        match ps.dtype() {
            DType::BF16 => self.launch::<bf16>(ds, dl, ps, pl),
            DType::F32 => self.launch::<f32>(ds, dl, ps, pl),
            dtype => bail!("scatter channels runs on bf16 or f32, got {dtype:?}"),
        }
    }
}

impl ScatterChannels {
    fn launch<T: CudaDType + DeviceRepr + WithDType>(
        &self,
        ds: &mut CudaStorage,
        dl: &Layout,
        ps: &CudaStorage,
        pl: &Layout,
    ) -> Result<()> {
        const UNIT: usize = 16;
        let elem = size_of::<T>();
        let units = |elements: usize| elements * elem / UNIT;
        let n = self.pixels * units(self.channels);
        if n == 0 {
            return Ok(());
        }
        let dev = ps.device().clone();
        let stream = dev.cuda_stream();
        let (part, _pg) = typed_ptr::<T>(ps, pl, &stream)?;
        let (base, _dg) = ds.as_cuda_slice_mut::<T>()?.device_ptr_mut(&stream);
        let base = base + (elem * dl.start_offset()) as u64;
        // Unused slots repeat the first (never written: `slots` bounds the kernel's loop).
        let slot = |k: usize| self.slots.get(k).unwrap_or(&self.slots[0]);
        let dst = |k: usize| base + (elem * (slot(k).start + slot(k).offset)) as u64;
        let pitch = |k: usize| units(slot(k).pitch) as i64;
        let (dsts, pitches) = ([0, 1, 2, 3].map(dst), [0, 1, 2, 3].map(pitch));
        let (pixels, c16, count) = (
            self.pixels as i64,
            units(self.channels) as i32,
            self.slots.len() as i32,
        );
        let func = function(&dev, &IMAGE, "scatter_channels_16b")?;
        let mut launch = stream.launch_builder(&func);
        launch.arg(&part).arg(&pixels).arg(&c16).arg(&count);
        for k in 0..4 {
            launch.arg(&dsts[k]).arg(&pitches[k]);
        }
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(256).min(1 << 20) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match scatter_channels_16b in image.cu; the part holds `pixels` rows
        // of `channels` and every slot lies inside the buffer ([`ChannelSlot::check`]); all
        // addresses and sizes are whole 16-byte units ([`ChannelSlot::vectorizes`]).
        unsafe { launch.launch(cfg) }.map_err(driver_err("scatter channels launch"))?;
        Ok(())
    }
}

/// `reference::scatter_channels` on CUDA in one pass that reads the part once: `part [.., C]`
/// (bf16 or f32) copied into each slot of the flat `buffer` on the same device. Every copy must
/// move whole 16-byte units between 16-byte-aligned addresses ([`ChannelSlot::vectorizes`]).
pub fn scatter_channels(buffer: &Tensor, part: &Tensor, slots: &[ChannelSlot]) -> Result<()> {
    let (pixels, channels) = ChannelSlot::check(buffer, part, slots)?;
    let elem = part.dtype().size_in_bytes();
    if !part.device().is_cuda()
        || !buffer.is_contiguous()
        || !(buffer.layout().start_offset() * elem).is_multiple_of(16)
        || !ChannelSlot::vectorizes(slots, part, elem)
    {
        bail!(
            "scatter channels: a contiguous part {:?} and slots {slots:?} of whole 16-byte units on CUDA only",
            part.dims()
        );
    }
    buffer.inplace_op2(
        part,
        &ScatterChannels {
            slots: slots.to_vec(),
            pixels,
            channels,
        },
    )
}
