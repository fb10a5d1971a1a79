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

// An activation scale: max|x| * (1/448) (multiplied, as the CPU reference computes it), 1 for all
// zeros.
__device__ __forceinline__ float e4m3_scale_of(float absmax) {
    return absmax == 0.f ? 1.f : __fmul_rn(absmax, 1.f / 448.f);
}

// Eight values as e4m3 bytes of x / s (IEEE division), the first in the lowest byte.
__device__ __forceinline__ uint2 quantize8_e4m3(const float (&f)[8], float s) {
    u32 w[2] = {0, 0};
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i / 4] |= (u32)float_to_e4m3(__fdiv_rn(f[i], s)) << (8 * (i % 4));
    return make_uint2(w[0], w[1]);
}

// The largest `m` of the block's threads (blockDim.x a multiple of 32), through `partial` (32
// floats of shared memory, free to reuse when this returns).
__device__ __forceinline__ float block_max(float m, float *partial) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = m;
    __syncthreads();
    m = 0.f;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) m = fmaxf(m, partial[w]);
    __syncthreads();
    return m;
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
        const float s = e4m3_scale_of(block_max(m, partial));
        if (threadIdx.x == 0) scale[row] = s;
        uint2 *qr = reinterpret_cast<uint2 *>(q + row * cols);
        for (long long c = threadIdx.x; c < chunks; c += blockDim.x) {
            float f[8];
            unpack8(xr[c], f);
            qr[c] = quantize8_e4m3(f, s);
        }
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

// The float8 operands of attention_fp8_wgmma_tma_d128 (attention_tma.cu), from bf16 [B, L, H, 128]
// views (element strides sb, sl, sh; the head dim contiguous). Q goes through
// quantize_rows_e4m3_bf16 (a scale a token); the scales here are e4m3_scale_of's too.
constexpr int ATT_D = 128, ATT_TILE = 128;

// K: one scale per 128-key tile of a (batch, head), written to scale [B, H, tiles]; q is [B, L, H,
// 128] contiguous. Grid (tiles, H, B), 256 threads: thread t covers 8-element chunk t % 16 of rows
// t / 16 + 16 i.
extern "C" __global__ void quantize_attention_k_e4m3(const bf16_t *__restrict__ x, long long sb, long long sl,
                                                     long long sh, int len, unsigned char *__restrict__ q,
                                                     float *__restrict__ scale) {
    __shared__ float partial[32];
    const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z, heads = gridDim.y;
    const int chunk = threadIdx.x % 16, first = threadIdx.x / 16;
    const bf16_t *xb = x + b * sb + h * sh + chunk * 8;
    float m = 0.f;
    for (int r = first; r < ATT_TILE; r += 16) {
        const int row = tile * ATT_TILE + r;
        if (row >= len) break;
        float f[8];
        unpack8(*reinterpret_cast<const uint4 *>(xb + row * sl), f);
#pragma unroll
        for (int i = 0; i < 8; ++i) m = fmaxf(m, fabsf(f[i]));
    }
    const float s = e4m3_scale_of(block_max(m, partial));
    if (threadIdx.x == 0) scale[(b * heads + h) * (long long)gridDim.x + tile] = s;
    for (int r = first; r < ATT_TILE; r += 16) {
        const int row = tile * ATT_TILE + r;
        if (row >= len) break;
        float f[8];
        unpack8(*reinterpret_cast<const uint4 *>(xb + row * sl), f);
        *reinterpret_cast<uint2 *>(q + (((long long)b * len + row) * heads + h) * ATT_D + chunk * 8) = quantize8_e4m3(f, s);
    }
}

// V's largest magnitude per (batch, head, channel) into vmax [B, H, 128] (f32 bits, zeroed
// before; non-negative floats order as their bits). Grid (tiles, H, B), one thread a channel.
extern "C" __global__ void attention_v_channel_max(const bf16_t *__restrict__ x, long long sb, long long sl,
                                                   long long sh, int len, unsigned int *__restrict__ vmax) {
    const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z, d = threadIdx.x;
    const bf16_t *xb = x + b * sb + h * sh + d;
    float m = 0.f;
    const int end = min(len, (tile + 1) * ATT_TILE);
    for (int row = tile * ATT_TILE; row < end; ++row) m = fmaxf(m, fabsf(bf16_to_float(xb[row * sl])));
    atomicMax(vmax + (b * gridDim.y + h) * ATT_D + d, __float_as_uint(m));
}

// V with one scale a channel (written to scale [B, H, 128]), transposed to vt [B, H, 128, padded]
// (padded = len rounded up to 16): in each 16 keys, slot p holds key (p % 4 / 2) * 8 + p / 4 * 2 +
// p % 2, the order in which the attention kernel's P fragments hold their keys; keys past len are
// zeros. Grid (padded / 128 rounded up, H, B), one thread a channel, 16 keys a store.
extern "C" __global__ void quantize_attention_v_e4m3(const bf16_t *__restrict__ x, long long sb, long long sl,
                                                     long long sh, int len, int padded,
                                                     const unsigned int *__restrict__ vmax,
                                                     float *__restrict__ scale, unsigned char *__restrict__ vt) {
    const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z, d = threadIdx.x;
    const long long bhd = (b * gridDim.y + h) * (long long)ATT_D + d;
    const float s = e4m3_scale_of(__uint_as_float(vmax[bhd]));
    if (tile == 0) scale[bhd] = s;
    const bf16_t *xb = x + b * sb + h * sh + d;
    const int end = min(padded, (tile + 1) * ATT_TILE);
    for (int group = tile * ATT_TILE; group < end; group += 16) {
        u32 w[4] = {0, 0, 0, 0};
#pragma unroll
        for (int p = 0; p < 16; ++p) {
            const int key = group + (p % 4 / 2) * 8 + p / 4 * 2 + p % 2;
            const float v = key < len ? bf16_to_float(xb[key * sl]) : 0.f;
            w[p / 4] |= (u32)float_to_e4m3(__fdiv_rn(v, s)) << (8 * (p % 4));
        }
        *reinterpret_cast<uint4 *>(vt + bhd * padded + group) = make_uint4(w[0], w[1], w[2], w[3]);
    }
}
