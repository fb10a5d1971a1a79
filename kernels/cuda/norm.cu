// Fused normalisation with adaptive modulation, one warp per row, fp32 math, one rounding.
//
//   mode 0 (LayerNorm): n = (x - mean) * rsqrt(var + eps)
//   mode 1 (RMSNorm):   n = x * rsqrt(mean(x^2) + eps)
//   y = (n * weight + bias) * (1 + scale) + shift
//   then, in the _rope kernels, each head's pairs of y rotated by Wan's 3-D RoPE (rope.cu) at the
//   row's token (rows are rope_seq tokens per batch item in (f, h, w) order of a grid_h x grid_w
//   frame): the q/k path of Wan's self-attention (RMS norm across heads, then RoPE) in one pass.
//   rope_head_dim divides 256, so a lane's chunks (lane + 32 i) * 8 all sit at the same place in
//   their heads and share 4 angles, computed once per row. The other kernels carry no RoPE code.
//
// weight/bias ([D], fp32) and scale/shift (fp32) are optional (null). scale/shift hold one row
// per `mod_rows_per` input rows: with x [B, L, D] and scale [B, D] pass L (Wan 2.1's per-sample
// timestep modulation); with scale [B, L, D] pass 1 (Wan 2.2's per-token modulation).
// x and y are bf16 [rows, D] with row strides in elements, 16-byte aligned; D a multiple of 8. The
// row stays in registers (one read, one write): D at most 32 lanes x 8 x MAX_CHUNKS, one kernel
// for D <= 2048 and one for D <= 6144, so narrow rows do not pay for wide ones' registers.

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

// 8 consecutive fp32 terms starting at p[j] (16-byte aligned: j is a multiple of 8).
__device__ __forceinline__ void load8(const float *p, int j, float (&t)[8]) {
    const float4 a = *reinterpret_cast<const float4 *>(p + j), b = *reinterpret_cast<const float4 *>(p + j + 4);
    t[0] = a.x; t[1] = a.y; t[2] = a.z; t[3] = a.w; t[4] = b.x; t[5] = b.y; t[6] = b.z; t[7] = b.w;
}

template <int MAX_CHUNKS, bool ROPE>  // 16-byte chunks per lane
__device__ __forceinline__ void modulated_norm(const bf16_t *__restrict__ x, bf16_t *__restrict__ y,
                                               const float *__restrict__ weight, const float *__restrict__ bias,
                                               const float *__restrict__ scale, const float *__restrict__ shift,
                                               int rows, int d, long long x_stride, long long y_stride,
                                               int mod_rows_per, int mode, float eps, int rope_head_dim,
                                               int rope_seq, int grid_h, int grid_w, int t_dim, int hw_dim,
                                               float log2_theta) {
    const int lane = threadIdx.x % 32;
    const long long r = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    const int chunks = d / 8;
    const bf16_t *xr = x + r * x_stride;

    uint4 v[MAX_CHUNKS];
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < MAX_CHUNKS; ++i) {
        const int c = lane + 32 * i;
        if (c < chunks) {
            v[i] = *reinterpret_cast<const uint4 *>(xr + c * 8);
            float f[8];
            unpack8(v[i], f);
#pragma unroll
            for (int e = 0; e < 8; ++e) sum += f[e];
        }
    }
    const float mean = mode == 0 ? warp_sum(sum) / d : 0.f;
    float sumsq = 0.f;
#pragma unroll
    for (int i = 0; i < MAX_CHUNKS; ++i) {
        if (lane + 32 * i < chunks) {
            float f[8];
            unpack8(v[i], f);
#pragma unroll
            for (int e = 0; e < 8; ++e) sumsq += (f[e] - mean) * (f[e] - mean);
        }
    }
    const float rstd = rsqrtf(warp_sum(sumsq) / d + eps);

    const long long m = r / mod_rows_per;
    const float *sc = scale ? scale + m * d : nullptr;
    const float *sh = shift ? shift + m * d : nullptr;
    bf16_t *yr = y + r * y_stride;
    float rope_sin[4], rope_cos[4];
    if (ROPE) {
        const int l = r % rope_seq;
        const int pair = (lane * 8 % rope_head_dim) / 2;
#pragma unroll
        for (int p = 0; p < 4; ++p)
            rope_sincos(pair + p, l / (grid_h * grid_w), (l / grid_w) % grid_h, l % grid_w, t_dim, hw_dim,
                        log2_theta, &rope_sin[p], &rope_cos[p]);
    }
#pragma unroll
    for (int i = 0; i < MAX_CHUNKS; ++i) {
        const int c = lane + 32 * i;
        if (c < chunks) {
            const int j = c * 8;
            float n[8], t[8];
            unpack8(v[i], n);
#pragma unroll
            for (int e = 0; e < 8; ++e) n[e] = (n[e] - mean) * rstd;
            if (weight) { load8(weight, j, t); for (int e = 0; e < 8; ++e) n[e] *= t[e]; }
            if (bias) { load8(bias, j, t); for (int e = 0; e < 8; ++e) n[e] += t[e]; }
            if (sc) { load8(sc, j, t); for (int e = 0; e < 8; ++e) n[e] *= 1.f + t[e]; }
            if (sh) { load8(sh, j, t); for (int e = 0; e < 8; ++e) n[e] += t[e]; }
            if (ROPE) {
#pragma unroll
                for (int p = 0; p < 4; ++p) {
                    const float a = n[2 * p], b = n[2 * p + 1];
                    n[2 * p] = a * rope_cos[p] - b * rope_sin[p];
                    n[2 * p + 1] = a * rope_sin[p] + b * rope_cos[p];
                }
            }
            *reinterpret_cast<uint4 *>(yr + j) =
                make_uint4(pack_bf16(n[0], n[1]), pack_bf16(n[2], n[3]), pack_bf16(n[4], n[5]), pack_bf16(n[6], n[7]));
        }
    }
}

#define NORM_KERNEL(NAME, MAX_CHUNKS, ROPE)                                                                         \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                                   \
        const bf16_t *x, bf16_t *y, const float *weight, const float *bias, const float *scale,              \
        const float *shift, int rows, int d, long long x_stride, long long y_stride, int mod_rows_per,       \
        int mode, float eps, int rope_head_dim, int rope_seq, int grid_h, int grid_w, int t_dim, int hw_dim, \
        float log2_theta) {                                                                                   \
        modulated_norm<MAX_CHUNKS, ROPE>(x, y, weight, bias, scale, shift, rows, d, x_stride, y_stride, mod_rows_per, \
                                   mode, eps, rope_head_dim, rope_seq, grid_h, grid_w, t_dim, hw_dim,        \
                                   log2_theta);                                                               \
    }

NORM_KERNEL(modulated_norm_bf16_d2048, 8, false)
NORM_KERNEL(modulated_norm_bf16_d6144, 24, false)
NORM_KERNEL(modulated_norm_rope_bf16_d2048, 8, true)
NORM_KERNEL(modulated_norm_rope_bf16_d6144, 24, true)

// RMS norm across a whole row of heads, then the rotary embedding of the row's pairs from tables:
// LTX-2's q/k path (`rms_norm_across_heads`, then `apply_split_rotary_emb` or the interleaved one)
// in one pass. x bf16 [rows, D] with row stride x_stride (16-byte aligned), weight fp32 [D] (null:
// none), cos/sin fp32 [table_rows, D/2] (row r reads table row r % table_rows); y [rows, D]
// contiguous. Pair p of a row rotates by table entry p: it is (x[2p], x[2p+1]) when split_half is
// 0 (interleaved), else (x[2hs + i], x[2hs + i + s]) with p = hs + i, s = split_half (the split
// layout: each head's first half pairs with its second). Lane chunk c holds pairs [8c, 8c + 8),
// two 16-byte runs of the row (s a multiple of 8 keeps a chunk inside one head), so the whole row
// stays in registers: D at most 32 lanes x 16 x MAX_CHUNKS. fp32, rounded once.
template <int MAX_CHUNKS>
__device__ __forceinline__ void rms_norm_rotary(const bf16_t *__restrict__ x, bf16_t *__restrict__ y,
                                                const float *__restrict__ weight, const float *__restrict__ cos_t,
                                                const float *__restrict__ sin_t, long long rows, int d,
                                                long long x_stride, long long table_rows, int split_half,
                                                float eps) {
    const int lane = threadIdx.x % 32;
    const long long r = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    const int chunks = d / 16;
    const bf16_t *xr = x + r * x_stride;
    // The offsets of chunk c's two runs: its first and second members of each pair.
    auto runs = [&](int c, int &a, int &b) {
        if (split_half) {
            const int p = 8 * c, head = p / split_half;
            a = 2 * split_half * head + p % split_half;
            b = a + split_half;
        } else {
            a = 16 * c;
            b = a + 8;
        }
    };
    uint4 lo[MAX_CHUNKS], hi[MAX_CHUNKS];
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < MAX_CHUNKS; ++i) {
        const int c = lane + 32 * i;
        if (c < chunks) {
            int a, b;
            runs(c, a, b);
            lo[i] = *reinterpret_cast<const uint4 *>(xr + a);
            hi[i] = *reinterpret_cast<const uint4 *>(xr + b);
            float f[8], g[8];
            unpack8(lo[i], f);
            unpack8(hi[i], g);
#pragma unroll
            for (int e = 0; e < 8; ++e) ss += f[e] * f[e] + g[e] * g[e];
        }
    }
    const float rstd = rsqrtf(warp_sum(ss) / d + eps);
    const float *cs_row = cos_t + (r % table_rows) * (d / 2);
    const float *sn_row = sin_t + (r % table_rows) * (d / 2);
    bf16_t *yr = y + r * d;
#pragma unroll
    for (int i = 0; i < MAX_CHUNKS; ++i) {
        const int c = lane + 32 * i;
        if (c < chunks) {
            int a, b;
            runs(c, a, b);
            float f[8], g[8], t[8], cs[8], sn[8];
            unpack8(lo[i], f);
            unpack8(hi[i], g);
#pragma unroll
            for (int e = 0; e < 8; ++e) { f[e] *= rstd; g[e] *= rstd; }
            if (weight) {
                load8(weight, a, t);
                for (int e = 0; e < 8; ++e) f[e] *= t[e];
                load8(weight, b, t);
                for (int e = 0; e < 8; ++e) g[e] *= t[e];
            }
            load8(cs_row, 8 * c, cs);
            load8(sn_row, 8 * c, sn);
            if (split_half) {
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    const float u = f[e], v = g[e];
                    f[e] = u * cs[e] - v * sn[e];
                    g[e] = v * cs[e] + u * sn[e];
                }
            } else {
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    float u = f[2 * q], v = f[2 * q + 1];
                    f[2 * q] = u * cs[q] - v * sn[q];
                    f[2 * q + 1] = u * sn[q] + v * cs[q];
                    u = g[2 * q], v = g[2 * q + 1];
                    g[2 * q] = u * cs[q + 4] - v * sn[q + 4];
                    g[2 * q + 1] = u * sn[q + 4] + v * cs[q + 4];
                }
            }
            *reinterpret_cast<uint4 *>(yr + a) =
                make_uint4(pack_bf16(f[0], f[1]), pack_bf16(f[2], f[3]), pack_bf16(f[4], f[5]), pack_bf16(f[6], f[7]));
            *reinterpret_cast<uint4 *>(yr + b) =
                make_uint4(pack_bf16(g[0], g[1]), pack_bf16(g[2], g[3]), pack_bf16(g[4], g[5]), pack_bf16(g[6], g[7]));
        }
    }
}

#define NORM_ROTARY_KERNEL(NAME, MAX_CHUNKS)                                                                     \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                                   \
        const bf16_t *x, bf16_t *y, const float *weight, const float *cos_t, const float *sin_t, long long rows, \
        int d, long long x_stride, long long table_rows, int split_half, float eps) {                         \
        rms_norm_rotary<MAX_CHUNKS>(x, y, weight, cos_t, sin_t, rows, d, x_stride, table_rows, split_half, eps); \
    }

NORM_ROTARY_KERNEL(rms_norm_rotary_bf16_d2048, 4)
NORM_ROTARY_KERNEL(rms_norm_rotary_bf16_d6144, 12)

// Gated residual of Wan's blocks: out = x + y * gate in fp32, rounded once to bf16.
// x, y, out: bf16 [rows, D] contiguous; gate: fp32, one row per `gate_rows_per` rows (as scale
// above). One thread per 8 elements, 16-byte accesses; D a multiple of 8.
extern "C" __global__ void gated_residual_bf16(const bf16_t *__restrict__ x, const bf16_t *__restrict__ y,
                                               const float *__restrict__ gate, bf16_t *__restrict__ out,
                                               long long rows, int d, int gate_rows_per) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const int chunks = d / 8;
    if (idx >= rows * chunks) return;
    const long long r = idx / chunks;
    const int j = (idx % chunks) * 8;
    float a[8], b[8], g[8];
    unpack8(*reinterpret_cast<const uint4 *>(x + r * d + j), a);
    unpack8(*reinterpret_cast<const uint4 *>(y + r * d + j), b);
    load8(gate + (r / gate_rows_per) * d, j, g);
#pragma unroll
    for (int e = 0; e < 8; ++e) a[e] += b[e] * g[e];
    *reinterpret_cast<uint4 *>(out + r * d + j) =
        make_uint4(pack_bf16(a[0], a[1]), pack_bf16(a[2], a[3]), pack_bf16(a[4], a[5]), pack_bf16(a[6], a[7]));
}

// 16 bytes of pixels as fp32: 8 bf16 or 4 f32 values, loaded and stored in one access.
template <typename T> struct Pixels16;
template <> struct Pixels16<bf16_t> {
    static constexpr int N = 8;
    __device__ static void load(const bf16_t *p, float (&v)[8]) { unpack8(*reinterpret_cast<const uint4 *>(p), v); }
    __device__ static void store(bf16_t *p, const float (&v)[8]) {
        *reinterpret_cast<uint4 *>(p) =
            make_uint4(pack_bf16(v[0], v[1]), pack_bf16(v[2], v[3]), pack_bf16(v[4], v[5]), pack_bf16(v[6], v[7]));
    }
};
template <> struct Pixels16<float> {
    static constexpr int N = 4;
    __device__ static void load(const float *p, float (&v)[4]) {
        const float4 r = *reinterpret_cast<const float4 *>(p);
        v[0] = r.x; v[1] = r.y; v[2] = r.z; v[3] = r.w;
    }
    __device__ static void store(float *p, const float (&v)[4]) {
        *reinterpret_cast<float4 *>(p) = make_float4(v[0], v[1], v[2], v[3]);
    }
};

// The VAEs' RMS norms over channels, optionally followed by SiLU: x, y [outer, C, inner] contiguous
// in bf16 or f32 (inner = the pixels after the channel dim, a multiple of 16 bytes' worth), scale
// fp32 [C]. With eps 0, Wan's (F.normalize over dim 1 times scale = sqrt(C) * gamma):
// y = x / max(||x||_C, 1e-12) * scale; with eps > 0, LTX-2's PerChannelRMSNorm:
// y = x * rsqrt(mean_C(x^2) + eps) * scale. SiLU'd when `silu`, in fp32, rounded once. A thread owns 16
// bytes of adjacent pixels and every `slices`-th channel of them: the block's 256 threads are
// `slices` rows of 256 / slices pixel groups, so a warp's loads are coalesced along the pixels, and
// wide, small images (Wan 2.2's 1024 channels at 30 x 52) still fill the GPU. Partial sums of
// squares meet in shared memory; each thread then writes its channels. y may be a view into a
// larger buffer (the VAE writes behind cached frames).
template <typename T>
__device__ __forceinline__ void channel_rms_norm(const T *__restrict__ x, T *__restrict__ y,
                                                 const float *__restrict__ scale, long long outer, int c,
                                                 long long inner, float eps, int silu, int slices) {
    using P = Pixels16<T>;
    constexpr int N = P::N;
    __shared__ float partial[256 * N];
    const int per_block = blockDim.x / slices;  // pixel groups a block covers
    const int slice = threadIdx.x / per_block, g = threadIdx.x % per_block;
    const long long idx = (long long)blockIdx.x * per_block + g;
    const long long groups = inner / N;
    const bool live = idx < outer * groups;  // dead threads still meet at the barrier
    const long long o = live ? idx / groups : 0;
    const long long p = live ? (idx % groups) * N : 0;
    const T *xp = x + o * c * inner + p;
    T *yp = y + o * c * inner + p;
    float ss[N];
#pragma unroll
    for (int e = 0; e < N; ++e) ss[e] = 0.f;
    for (int ch = slice; live && ch < c; ch += slices) {
        float v[N];
        P::load(xp + ch * inner, v);
#pragma unroll
        for (int e = 0; e < N; ++e) ss[e] += v[e] * v[e];
    }
#pragma unroll
    for (int e = 0; e < N; ++e) partial[threadIdx.x * N + e] = ss[e];
    __syncthreads();
#pragma unroll
    for (int e = 0; e < N; ++e) {
        float total = 0.f;
        for (int s = 0; s < slices; ++s) total += partial[(s * per_block + g) * N + e];
        ss[e] = eps > 0.f ? rsqrtf(total / c + eps) : 1.f / fmaxf(sqrtf(total), 1e-12f);
    }
    for (int ch = slice; live && ch < c; ch += slices) {
        float v[N];
        P::load(xp + ch * inner, v);
        const float s = scale[ch];
#pragma unroll
        for (int e = 0; e < N; ++e) {
            v[e] *= ss[e] * s;
            if (silu) v[e] = v[e] / (1.f + __expf(-v[e]));
        }
        P::store(yp + ch * inner, v);
    }
}

extern "C" __global__ void __launch_bounds__(256) channel_rms_norm_bf16(const bf16_t *x, bf16_t *y, const float *scale,
                                                                      long long outer, int c, long long inner,
                                                                      float eps, int silu, int slices) {
    channel_rms_norm<bf16_t>(x, y, scale, outer, c, inner, eps, silu, slices);
}

// The pipelines keep the VAE in f32, as the reference does.
extern "C" __global__ void __launch_bounds__(256) channel_rms_norm_f32(const float *x, float *y, const float *scale,
                                                                     long long outer, int c, long long inner, float eps,
                                                                     int silu, int slices) {
    channel_rms_norm<float>(x, y, scale, outer, c, inner, eps, silu, slices);
}

// GroupNorm over NC[spatial] tensors, as torch.nn.GroupNorm (+ SiLU): a (batch, group) row is the
// contiguous run of its channels' pixels. Pass 1 sums each row's values and squares in chunks of
// GN_CHUNK elements (f32 within a block, f64 across blocks), pass 2 normalises and applies the
// per-channel affine, in f32, rounding once.
#define GN_CHUNK 16384

template <typename T>
__device__ __forceinline__ void group_norm_stats(const T *__restrict__ x, double *__restrict__ stats,
                                                 long long row_len) {
    using P = Pixels16<T>;
    constexpr int N = P::N;
    __shared__ float partial[2][32];
    const long long row = blockIdx.y;
    const long long start = (long long)blockIdx.x * GN_CHUNK;
    const long long end = min(start + GN_CHUNK, row_len);
    const T *xp = x + row * row_len;
    float s = 0.f, ss = 0.f;
    for (long long i = start + (long long)threadIdx.x * N; i < end; i += (long long)blockDim.x * N) {
        float v[N];
        P::load(xp + i, v);
#pragma unroll
        for (int e = 0; e < N; ++e) {
            s += v[e];
            ss += v[e] * v[e];
        }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        s += __shfl_xor_sync(0xffffffffu, s, off);
        ss += __shfl_xor_sync(0xffffffffu, ss, off);
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        partial[0][warp] = s;
        partial[1][warp] = ss;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0, total_sq = 0.0;
        for (int w = 0; w < (int)(blockDim.x / 32); ++w) {
            total += partial[0][w];
            total_sq += partial[1][w];
        }
        atomicAdd(&stats[2 * row], total);
        atomicAdd(&stats[2 * row + 1], total_sq);
    }
}

template <typename T>
__device__ __forceinline__ void group_norm_apply(const T *__restrict__ x, T *__restrict__ y,
                                                 const double *__restrict__ stats,
                                                 const float *__restrict__ weight,
                                                 const float *__restrict__ bias, long long total, int channels,
                                                 int channels_per_group, long long pixels, float eps,
                                                 int silu) {
    using P = Pixels16<T>;
    constexpr int N = P::N;
    const long long idx = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * N;
    if (idx >= total) return;
    // `pixels` is a multiple of N, so a thread's N values share one channel and one row.
    const long long channel = idx / pixels;  // over batch * channels
    const long long row = channel / channels_per_group;
    const double n = (double)channels_per_group * pixels;
    const double mean = stats[2 * row] / n;
    const double var = fmax(stats[2 * row + 1] / n - mean * mean, 0.0);
    const float m = (float)mean, r = rsqrtf((float)var + eps);
    const int c = (int)(channel % channels);
    const float w = weight[c] * r, b = bias[c] - m * w;
    float v[N];
    P::load(x + idx, v);
#pragma unroll
    for (int e = 0; e < N; ++e) {
        float t = v[e] * w + b;
        if (silu) t = t / (1.f + __expf(-t));
        v[e] = t;
    }
    P::store(y + idx, v);
}

extern "C" __global__ void __launch_bounds__(256) group_norm_stats_bf16(const bf16_t *x, double *stats,
                                                                       long long row_len) {
    group_norm_stats<bf16_t>(x, stats, row_len);
}

extern "C" __global__ void __launch_bounds__(256) group_norm_stats_f32(const float *x, double *stats,
                                                                      long long row_len) {
    group_norm_stats<float>(x, stats, row_len);
}

extern "C" __global__ void __launch_bounds__(256) group_norm_apply_bf16(const bf16_t *x, bf16_t *y,
                                                                       const double *stats, const float *weight,
                                                                       const float *bias, long long total,
                                                                       int channels, int channels_per_group,
                                                                       long long pixels, float eps, int silu) {
    group_norm_apply<bf16_t>(x, y, stats, weight, bias, total, channels, channels_per_group, pixels, eps, silu);
}

extern "C" __global__ void __launch_bounds__(256) group_norm_apply_f32(const float *x, float *y, const double *stats,
                                                                      const float *weight, const float *bias,
                                                                      long long total, int channels,
                                                                      int channels_per_group, long long pixels,
                                                                      float eps, int silu) {
    group_norm_apply<float>(x, y, stats, weight, bias, total, channels, channels_per_group, pixels, eps, silu);
}

// SwiGLU of the gated half-split used by FLUX.2's feed-forwards: x [rows, 2 * half] bf16 with row
// stride x_row (a view into a fused projection), y [rows, half] contiguous,
// y = silu(x[:, :half]) * x[:, half:] in fp32, rounded once. A thread owns 8 adjacent outputs.
extern "C" __global__ void __launch_bounds__(256) swiglu_bf16(const bf16_t *__restrict__ x, bf16_t *__restrict__ y,
                                                              long long rows, long long half, long long x_row) {
    const long long idx = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (idx >= rows * half) return;
    const long long row = idx / half, j = idx % half;
    float g[8], u[8];
    unpack8(*reinterpret_cast<const uint4 *>(x + row * x_row + j), g);
    unpack8(*reinterpret_cast<const uint4 *>(x + row * x_row + half + j), u);
    u32 out[4];
#pragma unroll
    for (int p = 0; p < 4; ++p) {
        const float a = g[2 * p] / (1.f + __expf(-g[2 * p])) * u[2 * p];
        const float b = g[2 * p + 1] / (1.f + __expf(-g[2 * p + 1])) * u[2 * p + 1];
        out[p] = pack_bf16(a, b);
    }
    *reinterpret_cast<uint4 *>(y + idx) = make_uint4(out[0], out[1], out[2], out[3]);
}
