//! Image resampling kernels (layout.cu): the backward warp of optical-flow nets.

use super::{driver_err, function, output, typed_ptr};
use crate::targets::LAYOUT;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaStorage};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};
use half::bf16;

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
        let func = function(&dev, &LAYOUT, kernel)?;
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
        // SAFETY: arguments match warp_* in layout.cu; image and out hold B·C·H·W elements and
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
