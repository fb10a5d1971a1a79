// Shared by every kernel source: each module is compiled as this header followed by its .cu file
// (kernels/src/cuda/mod.rs), since NVRTC compiles a single string without include paths.

typedef unsigned short bf16_t;
typedef unsigned int u32;

// Two floats rounded to nearest into a bf16 pair, `lo` in the low half.
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// Shared-memory address of a generic pointer into shared memory.
__device__ __forceinline__ u32 smem_addr(const void *p) {
    u32 r;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
    return r;
}

// 16-byte global->shared copy; src_bytes = 0 fills the destination with zeros.
__device__ __forceinline__ void cp_async16(u32 dst, const void *src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ float bf16_to_float(bf16_t x) { return __uint_as_float(((u32)x) << 16); }

// A float rounded to nearest bf16.
__device__ __forceinline__ bf16_t float_to_bf16(float x) {
    bf16_t r;
    asm("cvt.rn.bf16.f32 %0, %1;\n" : "=h"(r) : "f"(x));
    return r;
}

// Eight packed bf16 values (16 bytes) as floats, in order.
__device__ __forceinline__ void unpack8(const uint4 &raw, float (&f)[8]) {
    const u32 w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}

// Wan's 3-D RoPE angle of pair `j` of a head (elements 2j, 2j+1) for the token at (f, h, w): the
// head dim splits into a frame part of t_dim, then height and width parts of hw_dim each; pair i of
// a part of size n at position p rotates by p * theta^(-2i/n). fp32 with exact integer positions
// and accurate sincosf.
__device__ __forceinline__ void rope_sincos(int j, int f_pos, int h_pos, int w_pos, int t_dim, int hw_dim,
                                            float log2_theta, float *sn, float *cs) {
    int pos, i, n;
    if (2 * j < t_dim) {
        pos = f_pos; i = j; n = t_dim;
    } else if (2 * j < t_dim + hw_dim) {
        pos = h_pos; i = j - t_dim / 2; n = hw_dim;
    } else {
        pos = w_pos; i = j - (t_dim + hw_dim) / 2; n = hw_dim;
    }
    sincosf(pos * exp2f(-(2.f * i / n) * log2_theta), sn, cs);
}
