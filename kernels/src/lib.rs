//! Fused kernels for the generation engine: CUDA C++ sources in `kernels/cuda`, compiled at run
//! time with NVRTC for the exact GPU present (cached on disk by source hash and architecture) and
//! exposed as candle ops, plus CPU references that define what each kernel must compute.
//!
//! The references are always built and run in CI; the CUDA side exists only with the `cuda`
//! feature. Nothing here silently falls back: a CUDA entry point either runs its kernel or
//! returns an error saying why it cannot (dtype, head dim, layout), and the caller decides.

pub mod reference;
mod spec;
pub mod targets;

#[cfg(feature = "cuda")]
mod cuda;

pub use spec::{
    Activation, CausalMask, ChannelDivisor, ChannelSlot, Epilogue, FrameConv, FramePadding,
    NormKind, NormRope, NormSpec, RopeGrid, RotaryPairs, SpatialPad,
};

#[cfg(feature = "cuda")]
pub use cuda::{
    CompileReport, attention, attention_fp8, attention_fp8_supported, attention_kernel_for,
    causal_attention, channel_rms_norm, channel_rms_norm_into, compile_all, compile_for,
    compile_report, fp8_dequantize, fp8_linear_supported, fp8_quantize, fp8_quantize_rows,
    gated_residual, group_norm, kernel_cache_dir, linear, linear_fp8, linear_fp8_mma_sync,
    linear_residual, modulated_norm, nvfp4_dequantize, pad_frames, rms_norm_rope, rms_norm_rotary,
    rope_tables, rope3d, scatter_channels, set_poison_outputs, swiglu, warp,
};
#[cfg(feature = "cudnn")]
pub use cuda::{frame_conv, image_conv_nhwc};
