//! Fused kernels: CUDA C++ sources in `kernels/cuda`, compiled with NVRTC for the GPU present,
//! and CPU references that define what each kernel must compute.
