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

__device__ __forceinline__ bf16_t float_to_bf16(float x) {
    bf16_t r;
    asm("cvt.rn.bf16.f32 %0, %1;\n" : "=h"(r) : "f"(x));
    return r;
}

__device__ __forceinline__ float bf16_to_float(bf16_t x) { return __uint_as_float(((u32)x) << 16); }

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
