//! Attention on float8 operands (SageAttention's idea on Hopper's FP8 wgmma): Q, K and V are
//! quantized to e4m3 (Q a scale per token, K per 128-key tile, V per channel; quant.cu), both
//! products run at twice the bf16 rate, and the softmax and the output stay in fp32/bf16
//! (attention_tma.cu's `attention_fp8_wgmma_tma_d128`).

use super::{
    QUANT, TensorMap, TensorMapElement, check_attention_operands, compute_capability, driver_err,
    fp8_quantize_rows, function, output, strides_bl_h, typed_ptr,
};
use crate::targets::{ATTENTION_FP8_TMA_D128, ATTENTION_TMA, HOPPER};
use candle_core::cuda_backend::CudaStorage;
use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute_enum;
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};
use candle_core::{Result, Shape, Storage, Tensor, bail};
use half::bf16;

/// Keys a tile of the attention kernel (and of K's scales).
const TILE: usize = 128;

/// Whether [`attention_fp8`] runs on `device`: a Hopper GPU (sm_90).
pub fn attention_fp8_supported(device: &candle_core::Device) -> Result<bool> {
    match device {
        candle_core::Device::Cuda(dev) => Ok(compute_capability(dev)? == HOPPER),
        _ => Ok(false),
    }
}

/// `softmax(q k^T * softmax_scale) v` with q, k and v quantized to float8 e4m3 first, as
/// [`crate::reference::attention_fp8_operands`] does on the CPU: the operands of
/// [`super::attention`] (bf16, any 16-byte-aligned strides), head dim 128, on Hopper. Returns bf16
/// `[B, Lq, H, 128]`. Errors, rather than falling back, on anything else.
pub fn attention_fp8(q: &Tensor, k: &Tensor, v: &Tensor, softmax_scale: f32) -> Result<Tensor> {
    let what = "float8 attention";
    let (dev, d) = check_attention_operands(q, k, v, what)?;
    let cc = compute_capability(dev)?;
    if d != 128 || cc != HOPPER {
        bail!(
            "{what}: runs on Hopper (sm_90) at head dim 128, got head dim {d} on sm_{}{}",
            cc.0,
            cc.1
        );
    }
    let (b, lq, h, _) = q.dims4()?;
    let lk = k.dim(1)?;
    let (tiles, padded) = (lk.div_ceil(TILE), lk.next_multiple_of(16));
    let stream = dev.cuda_stream();

    // Q: a scale per token, [B, Lq, H, 128] bytes.
    let (q8, q_scale) = fp8_quantize_rows(q)?;
    let (q8s, q8l) = q8.storage_and_layout();
    let (qss, qsl) = q_scale.storage_and_layout();
    let (Storage::Cuda(q8s), Storage::Cuda(qss)) = (&*q8s, &*qss) else {
        bail!("{what}: quantized q left the GPU");
    };
    let (q8p, _q8g) = typed_ptr::<float8::F8E4M3>(q8s, q8l, &stream)?;
    let (qsp, _qsg) = typed_ptr::<f32>(qss, qsl, &stream)?;

    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (Storage::Cuda(ks), Storage::Cuda(vs)) = (&*ks, &*vs) else {
        bail!("{what}: k and v must be on CUDA");
    };
    let (kst, vst) = (strides_bl_h(kl, "k")?, strides_bl_h(vl, "v")?);
    let (kp, _kg) = typed_ptr::<bf16>(ks, kl, &stream)?;
    let (vp, _vg) = typed_ptr::<bf16>(vs, vl, &stream)?;
    let (lk32, padded32) = (lk as i32, padded as i32);
    let grid = (tiles as u32, h as u32, b as u32);

    // K: a scale per 128-key tile of a head.
    let mut k8 = output::<u8>(dev, b * lk * h * d)?;
    let mut k_scale = output::<f32>(dev, b * h * tiles)?;
    {
        let func = function(dev, &QUANT, "quantize_attention_k_e4m3")?;
        let mut launch = stream.launch_builder(&func);
        launch.arg(&kp).arg(&kst[0]).arg(&kst[1]).arg(&kst[2]);
        launch.arg(&lk32).arg(&mut k8).arg(&mut k_scale);
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match quant.cu's kernel; k8 holds B*Lk*H*128 bytes, k_scale
        // B*H*tiles.
        unsafe { launch.launch(cfg) }.map_err(driver_err("float8 attention: K quantize"))?;
    }

    // V: a scale per channel of a head (its largest magnitude first), transposed to
    // [B, H, 128, padded] in the P fragments' key order.
    let mut v_max = dev.alloc_zeros::<u32>(b * h * d)?;
    let mut vt8 = output::<u8>(dev, b * h * d * padded)?;
    let mut v_scale = output::<f32>(dev, b * h * d)?;
    {
        let func = function(dev, &QUANT, "attention_v_channel_max")?;
        let mut launch = stream.launch_builder(&func);
        launch.arg(&vp).arg(&vst[0]).arg(&vst[1]).arg(&vst[2]);
        launch.arg(&lk32).arg(&mut v_max);
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (d as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match quant.cu's kernel; v_max holds B*H*128 zeroed words.
        unsafe { launch.launch(cfg) }.map_err(driver_err("float8 attention: V maximum"))?;
        let func = function(dev, &QUANT, "quantize_attention_v_e4m3")?;
        let mut launch = stream.launch_builder(&func);
        launch.arg(&vp).arg(&vst[0]).arg(&vst[1]).arg(&vst[2]);
        launch
            .arg(&lk32)
            .arg(&padded32)
            .arg(&v_max)
            .arg(&mut v_scale)
            .arg(&mut vt8);
        let cfg = LaunchConfig {
            grid_dim: (padded.div_ceil(TILE) as u32, h as u32, b as u32),
            block_dim: (d as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match quant.cu's kernel; vt8 holds B*H*128*padded bytes (padded a
        // multiple of 16, so every 16-byte store is aligned), v_scale B*H*128.
        unsafe { launch.launch(cfg) }.map_err(driver_err("float8 attention: V quantize"))?;
    }

    let variant = &ATTENTION_FP8_TMA_D128;
    let mut out = output::<bf16>(dev, b * lq * h * d)?;
    let func = function(dev, &ATTENTION_TMA, variant.name)?;
    func.set_attribute(
        CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        variant.shared_bytes as i32,
    )
    .map_err(driver_err("shared memory limit"))?;
    let (k8p, _k8g) = k8.device_ptr(&stream);
    let (vt8p, _vt8g) = vt8.device_ptr(&stream);
    // q and k: [B, L, H, 128] bytes in tiles of 128 tokens of a head.
    let tokens = |ptr, len: usize| {
        let row = (h * d) as u64;
        TensorMap::tiled(
            ptr,
            TensorMapElement::Byte,
            [d, h, len, b],
            [d as u64, row, len as u64 * row],
            [TILE as u32, 1, TILE as u32, 1],
        )
    };
    let maps = [
        tokens(q8p, lq)?,
        tokens(k8p, lk)?,
        TensorMap::tiled(
            vt8p,
            TensorMapElement::Byte,
            [padded, d, h, b],
            [padded as u64, (d * padded) as u64, (h * d * padded) as u64],
            [TILE as u32, d as u32, 1, 1],
        )?,
    ];
    let ost = [(lq * h * d) as i64, (h * d) as i64, d as i64];
    let (lq32, scale_log2) = (lq as i32, softmax_scale * std::f32::consts::LOG2_E);
    let mut launch = stream.launch_builder(&func);
    launch
        .arg(&maps[0])
        .arg(&maps[1])
        .arg(&maps[2])
        .arg(&mut out);
    launch
        .arg(&lq32)
        .arg(&lk32)
        .arg(&ost[0])
        .arg(&ost[1])
        .arg(&ost[2])
        .arg(&scale_log2);
    launch.arg(&qsp).arg(&k_scale).arg(&v_scale);
    let cfg = LaunchConfig {
        grid_dim: (lq.div_ceil(variant.block_m) as u32, h as u32, b as u32),
        block_dim: (variant.threads, 1, 1),
        shared_mem_bytes: variant.shared_bytes,
    };
    // SAFETY: arguments match attention_fp8_wgmma_tma_d128; the maps describe buffers held until
    // the end of this function, and any later free is ordered after the launch on this stream.
    unsafe { launch.launch(cfg) }.map_err(driver_err("float8 attention launch"))?;
    Ok(Tensor::from_storage(
        Storage::Cuda(CudaStorage::wrap_cuda_slice(out, dev.clone())),
        Shape::from((b, lq, h, d)),
        candle_core::op::BackpropOp::none(),
        false,
    ))
}
