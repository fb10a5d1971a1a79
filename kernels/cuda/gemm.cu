// FP8 products (sm_89 and newer): a GEMM for GPUs whose cuBLASLt has no FP8 matmul (GB10's sm_121
// above all), and the epilogue of cuBLASLt's unscaled one (scale_product_bf16, at the end).
//
// gemm_e4m3_rowscaled, on mma.sync: out[m, n] = epilogue(x_scale[m] * w_scale[n] * sum_k x[m, k] w[n, k]), m16n8k32
// e4m3 products accumulated in f32. x [M, K] and w [N, K] are e4m3 with K contiguous, K a multiple
// of 16; the epilogue adds bias[n] and then applies GELU (tanh), or adds what `out` holds (the
// residual, `accumulate`), and rounds to bf16.
//
// A block computes 128 x 128 outputs with 8 warps (2 x 4, 64 x 32 each), walking K 64 bytes a
// stage through two cp.async stages (zero-filled past M, N and K). Shared rows are padded to 80
// bytes, so the fragments' 32-bit loads (8 rows x 4 threads a warp) fall in 32 distinct banks.

#define GEMM_BM 128
#define GEMM_BN 128
#define GEMM_BK 64
#define GEMM_ROW 80

// 128 rows x 64 bytes of `src` (rows `row0`.., bytes `k0`..) into `dst`, two 16-byte chunks a thread.
__device__ __forceinline__ void load_tile(unsigned char *dst, const unsigned char *src, long long rows, long long row0,
                                          long long k, long long k0) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int c = threadIdx.x + i * 256, r = c >> 2, col = (c & 3) * 16;
        const bool in = row0 + r < rows && k0 + col < k;
        cp_async16(smem_addr(dst + r * GEMM_ROW + col), in ? src + (row0 + r) * k + k0 + col : src, in ? 16 : 0);
    }
}

__device__ __forceinline__ u32 load32(const unsigned char *p) { return *reinterpret_cast<const u32 *>(p); }

// GELU's tanh form; the hardware tanh (2^-11 relative error) is far below bf16's rounding step.
__device__ __forceinline__ float gelu_tanh(float v) {
    float t;
    asm("tanh.approx.f32 %0, %1;\n" : "=f"(t) : "f"(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    return 0.5f * v * (1.f + t);
}

extern "C" __global__ void __launch_bounds__(256)
    gemm_e4m3_rowscaled(const unsigned char *__restrict__ x, const float *__restrict__ x_scale,
                        const unsigned char *__restrict__ w, const float *__restrict__ w_scale,
                        const bf16_t *__restrict__ bias, bf16_t *out, long long m, long long n, long long k, int gelu,
                        int accumulate) {
    __shared__ __align__(16) unsigned char a_tiles[2][GEMM_BM * GEMM_ROW];
    __shared__ __align__(16) unsigned char b_tiles[2][GEMM_BN * GEMM_ROW];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int warp_m = (warp >> 2) * 64, warp_n = (warp & 3) * 32;
    const long long m0 = (long long)blockIdx.y * GEMM_BM, n0 = (long long)blockIdx.x * GEMM_BN;

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

    const long long tiles = (k + GEMM_BK - 1) / GEMM_BK;
    load_tile(a_tiles[0], x, m, m0, k, 0);
    load_tile(b_tiles[0], w, n, n0, k, 0);
    cp_async_commit();
    for (long long kt = 0; kt < tiles; ++kt) {
        const int stage = kt & 1;
        if (kt + 1 < tiles) {
            load_tile(a_tiles[stage ^ 1], x, m, m0, k, (kt + 1) * GEMM_BK);
            load_tile(b_tiles[stage ^ 1], w, n, n0, k, (kt + 1) * GEMM_BK);
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const unsigned char *as = a_tiles[stage], *bs = b_tiles[stage];
#pragma unroll
        for (int ks = 0; ks < GEMM_BK; ks += 32) {
            u32 a[4][4], b[4][2];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const unsigned char *r0 = as + (warp_m + i * 16 + g) * GEMM_ROW + ks + t * 4;
                const unsigned char *r8 = r0 + 8 * GEMM_ROW;
                a[i][0] = load32(r0);
                a[i][1] = load32(r8);
                a[i][2] = load32(r0 + 16);
                a[i][3] = load32(r8 + 16);
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const unsigned char *col = bs + (warp_n + j * 8 + g) * GEMM_ROW + ks + t * 4;
                b[j][0] = load32(col);
                b[j][1] = load32(col + 16);
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, "
                                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                                 : "+f"(acc[i][j][0]), "+f"(acc[i][j][1]), "+f"(acc[i][j][2]), "+f"(acc[i][j][3])
                                 : "r"(a[i][0]), "r"(a[i][1]), "r"(a[i][2]), "r"(a[i][3]), "r"(b[j][0]),
                                   "r"(b[j][1]));
        }
        __syncthreads();
    }

    // Each thread holds, per 16 x 8 tile, rows g and g + 8 at columns 2t and 2t + 1.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const long long row = m0 + warp_m + i * 16 + g + half * 8;
            if (row >= m) continue;
            const float rs = x_scale[row];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const long long col = n0 + warp_n + j * 8 + 2 * t;
                if (col >= n) continue; // n is even: col + 1 < n too
                float v[2];
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    v[e] = acc[i][j][half * 2 + e] * rs * w_scale[col + e];
                    if (bias) v[e] += bf16_to_float(bias[col + e]);
                    if (gelu) v[e] = gelu_tanh(v[e]);
                }
                u32 *dst = reinterpret_cast<u32 *>(out + row * n + col);
                if (accumulate) {
                    const u32 old = *dst;
                    v[0] += __uint_as_float(old << 16);
                    v[1] += __uint_as_float(old & 0xffff0000u);
                }
                *dst = pack_bf16(v[0], v[1]);
            }
        }
    }
}

// scale_product_bf16: the epilogue of an FP8 GEMM that ran without scales (cuBLASLt's plain e4m3
// matmul into bf16, where it has none with per-row scales), in place on d [m, n]:
// d[r, c] = act(d[r, c] * x_scale[r] * w_scale[c] + bias[c]) + residual[r, c], where act is GELU
// (tanh) when `gelu`, and bias and residual are optional (null). A thread owns eight columns (16
// bytes of a row; n a multiple of 8), reads their weight scales and bias once, and walks the rows
// blockIdx.y, + gridDim.y, ...: no division per element, and the loads of a warp are one 512-byte
// run of a row.
extern "C" __global__ void scale_product_bf16(bf16_t *d, const float *__restrict__ x_scale,
                                              const float *__restrict__ w_scale, const bf16_t *__restrict__ bias,
                                              const bf16_t *__restrict__ residual, long long m, long long n,
                                              int gelu) {
    const long long c = (blockIdx.x * (long long)blockDim.x + threadIdx.x) * 8;
    if (c >= n) return;
    float ws[8], b[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        ws[j] = w_scale[c + j];
        b[j] = bias ? bf16_to_float(bias[c + j]) : 0.f;
    }
    for (long long r = blockIdx.y; r < m; r += gridDim.y) {
        uint4 *chunk = reinterpret_cast<uint4 *>(d + r * n + c);
        float v[8];
        unpack8(*chunk, v);
        const float rs = x_scale[r];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            v[j] = v[j] * rs * ws[j] + b[j];
            if (gelu) v[j] = gelu_tanh(v[j]);
            if (residual) v[j] += bf16_to_float(residual[r * n + c + j]);
        }
        *chunk = make_uint4(pack_bf16(v[0], v[1]), pack_bf16(v[2], v[3]), pack_bf16(v[4], v[5]), pack_bf16(v[6], v[7]));
    }
}
