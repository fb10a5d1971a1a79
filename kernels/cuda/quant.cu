// Weights kept in float8 (e4m3, the "fn" variant: no infinities, S.1111.111 is NaN) with an f32
// scale per tensor or per row (output channel).
//
// dequantize_e4m3_*: q [rows, cols] bytes to out = e4m3(q) * scale[row or 0], rounded once.
// quantize_e4m3_*:   w [rows, cols] to q = e4m3(w / scale[row or 0]), rounded to nearest even and
// saturated to +-448, as PyTorch's `(w / scale).clamp(-448, 448).to(torch.float8_e4m3fn)`; the
// division is IEEE (__fdiv_rn) so the bytes match the CPU's. Grid-stride over the elements.

__device__ __forceinline__ float e4m3_to_float(unsigned char b) {
    const int e = (b >> 3) & 15, m = b & 7;
    float v = e == 0 ? m * 0.001953125f : __int_as_float(((e + 120) << 23) | (m << 20));
    if (e == 15 && m == 7) v = __int_as_float(0x7fc00000);
    return (b & 0x80) ? -v : v;
}

__device__ __forceinline__ unsigned char float_to_e4m3(float x) {
    unsigned short pair;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(pair) : "f"(0.f), "f"(x));
    return (unsigned char)(pair & 0xff);
}



template <typename T, typename Store>
__device__ __forceinline__ void dequantize(const unsigned char *__restrict__ q, const float *__restrict__ scale,
                                           int per_row, T *__restrict__ out, long long n, long long cols, Store store) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float s = scale[per_row ? i / cols : 0];
        out[i] = store(e4m3_to_float(q[i]) * s);
    }
}

extern "C" __global__ void dequantize_e4m3_bf16(const unsigned char *q, const float *scale, int per_row, bf16_t *out,
                                                long long n, long long cols) {
    dequantize(q, scale, per_row, out, n, cols, [](float v) { return float_to_bf16(v); });
}

extern "C" __global__ void dequantize_e4m3_f32(const unsigned char *q, const float *scale, int per_row, float *out,
                                               long long n, long long cols) {
    dequantize(q, scale, per_row, out, n, cols, [](float v) { return v; });
}

template <typename T, typename Load>
__device__ __forceinline__ void quantize(const T *__restrict__ w, const float *__restrict__ scale, int per_row,
                                         unsigned char *__restrict__ q, long long n, long long cols, Load load) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float s = scale[per_row ? i / cols : 0];
        q[i] = float_to_e4m3(__fdiv_rn(load(w[i]), s));
    }
}

extern "C" __global__ void quantize_e4m3_bf16(const bf16_t *w, const float *scale, int per_row, unsigned char *q,
                                              long long n, long long cols) {
    quantize(w, scale, per_row, q, n, cols, [](bf16_t v) { return bf16_to_float(v); });
}

extern "C" __global__ void quantize_e4m3_f32(const float *w, const float *scale, int per_row, unsigned char *q,
                                             long long n, long long cols) {
    quantize(w, scale, per_row, q, n, cols, [](float v) { return v; });
}

// quantize_rows_e4m3_bf16: the activations of an FP8 GEMM, one scale a row (token): x [rows, cols]
// bf16 to q = e4m3(x / s) with s = max|x[row]| * (1/448) (1 for an all-zero row), the arithmetic of
// quantize_e4m3_* with that scale, so the bytes match the CPU's. One block a row (grid-stride over
// rows), 16-byte loads (cols a multiple of 8): the row's maximum by a block reduction, then a second
// pass over the row, which L2 still holds.
extern "C" __global__ void quantize_rows_e4m3_bf16(const bf16_t *__restrict__ x, unsigned char *__restrict__ q,
                                                   float *__restrict__ scale, long long rows, long long cols) {
    __shared__ float partial[32];
    const long long chunks = cols / 8;
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const uint4 *xr = reinterpret_cast<const uint4 *>(x + row * cols);
        float m = 0.f;
        for (long long c = threadIdx.x; c < chunks; c += blockDim.x) {
            float f[8];
            unpack8(xr[c], f);
#pragma unroll
            for (int i = 0; i < 8; ++i) m = fmaxf(m, fabsf(f[i]));
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = m;
        __syncthreads();
        m = 0.f;
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) m = fmaxf(m, partial[w]);
        const float s = m == 0.f ? 1.f : __fmul_rn(m, 1.f / 448.f); // as the reference: max * (1/448)
        if (threadIdx.x == 0) scale[row] = s;
        uint2 *qr = reinterpret_cast<uint2 *>(q + row * cols);
        for (long long c = threadIdx.x; c < chunks; c += blockDim.x) {
            float f[8];
            unpack8(xr[c], f);
            u32 b[2] = {0, 0};
#pragma unroll
            for (int i = 0; i < 8; ++i) b[i / 4] |= (u32)float_to_e4m3(__fdiv_rn(f[i], s)) << (8 * (i % 4));
            qr[c] = make_uint2(b[0], b[1]);
        }
        __syncthreads(); // `partial` is reused by the next row
    }
}

// NVFP4 weights: two e2m1 values a byte (element 2k in the low nibble, 2k+1 in the high one, as
// ModelOpt packs them), one e4m3 scale per 16 values of a row, and one f32 scale for the tensor.
//
// dequantize_e2m1_*: q [rows, cols/2] bytes to
// out[r, c] = (e2m1(q[r, c]) * e4m3(block[r, c/16])) * global: the first product is exact in f32,
// so the value is rounded once (twice for bf16). One byte (two outputs) a thread, grid-stride.

// e2m1: sign, two exponent bits (bias 1), one mantissa bit; 0, 0.5, 1, 1.5, 2, 3, 4, 6.
__device__ __forceinline__ float e2m1_to_float(unsigned v) {
    const unsigned e = (v >> 1) & 3, m = v & 1;
    const float mag = e == 0 ? 0.5f * m : __int_as_float(((e + 126) << 23) | (m << 22));
    return (v & 8) ? -mag : mag;
}

template <typename T, typename Store>
__device__ __forceinline__ void dequantize_nvfp4(const unsigned char *__restrict__ q,
                                                 const unsigned char *__restrict__ block,
                                                 const float *__restrict__ global, T *__restrict__ out,
                                                 long long pairs, long long cols, Store store) {
    const float g = *global;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < pairs;
         i += (long long)gridDim.x * blockDim.x) {
        const long long e = 2 * i, row = e / cols, col = e - row * cols;
        const float s = e4m3_to_float(block[row * (cols / 16) + col / 16]);
        const unsigned b = q[i];
        out[e] = store(e2m1_to_float(b & 15) * s * g);
        out[e + 1] = store(e2m1_to_float(b >> 4) * s * g);
    }
}

extern "C" __global__ void dequantize_e2m1_bf16(const unsigned char *q, const unsigned char *block,
                                                const float *global, bf16_t *out, long long pairs, long long cols) {
    dequantize_nvfp4(q, block, global, out, pairs, cols, [](float v) { return float_to_bf16(v); });
}

extern "C" __global__ void dequantize_e2m1_f32(const unsigned char *q, const unsigned char *block,
                                               const float *global, float *out, long long pairs, long long cols) {
    dequantize_nvfp4(q, block, global, out, pairs, cols, [](float v) { return v; });
}
