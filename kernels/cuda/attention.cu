// Fused multi-head attention forward, FlashAttention-2 style on mma.sync (sm_80 and later:
// H100/H200 sm_90, GB10 sm_121). bf16 in and out, fp32 accumulation and softmax. Non-causal for
// the diffusion transformers; the causal variant serves language models (below).
//
// Layout: q [B, Lq, H, D], k/v [B, Lk, H, D], o [B, Lq, H, D]; the last dimension is contiguous,
// the other three are strided (element strides), so views cut from a fused QKV projection work.
// One block owns BM = 16 * WARPS query rows of one (batch, head); each warp owns 16 rows and
// walks the keys in tiles of BN, keeping Q in registers, K/V tiles in shared memory
// (double-buffered with cp.async), and an online softmax (running max and sum per row).
//
// Self-contained: no CUDA headers, so NVRTC needs no include path. bf16 is moved as raw
// 16-bit words; conversion and the matrix ops are inline PTX.

#define NEG_INF (__int_as_float(0xff800000))

__device__ __forceinline__ void ldmatrix_x4(u32 addr, u32 &r0, u32 &r1, u32 &r2, u32 &r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32 addr, u32 &r0, u32 &r1, u32 &r2, u32 &r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

// d += a * b for one 16x8x16 tile (A row-major, B column-major), fp32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Packs two floats into bf16x2 (round to nearest even), lo in the low half.
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Shared-memory tiles are rows of D bf16 split into 16-byte chunks; chunk c of row r is stored
// at chunk c ^ (r & 7), so the 8 rows an ldmatrix reads land in 8 different bank groups.
template <int D> __device__ __forceinline__ int swz(int row, int chunk) {
    return row * D + ((chunk ^ (row & 7)) << 3);
}

// Loads ROWS rows (starting at token row0) of one head into a swizzled tile; rows past
// `rows_valid` are zero-filled.
template <int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile(bf16_t *tile, const bf16_t *base, long long row_stride,
                                          int row0, int rows_valid) {
    constexpr int CHUNKS = D / 8;
    constexpr int TOTAL = ROWS * CHUNKS;
    static_assert(TOTAL % THREADS == 0, "tile must split evenly over the block");
#pragma unroll
    for (int i = 0; i < TOTAL / THREADS; ++i) {
        int idx = threadIdx.x + i * THREADS;
        int r = idx / CHUNKS, c = idx % CHUNKS;
        int row = row0 + r;
        bool ok = row < rows_valid;
        const bf16_t *src = base + (ok ? (long long)row * row_stride + c * 8 : 0);
        cp_async16(smem_addr(tile + swz<D>(r, c)), src, ok ? 16 : 0);
    }
}

// CAUSAL: the attention of a language model. Query head h reads key/value head h / groups
// (grouped-query attention); query row i sits at sequence position q_pos0 + i (q_pos0 keys are
// cached before it) and sees the keys [lo, hi] with hi = min(position, last real key) and
// lo = max(first real key, position - window + 1) (window 0: none). key_range holds each
// sequence's first and last real key ([B][2], null when every key is real). A row that sees no
// key averages every key, as the reference's additive mask of the dtype's minimum makes it do.
// A block visits only the key tiles its rows see.
template <int D, int WARPS, int BN, bool CAUSAL>
__device__ __forceinline__ void attention_fwd(const bf16_t *__restrict__ q, const bf16_t *__restrict__ k,
                                              const bf16_t *__restrict__ v, bf16_t *__restrict__ o,
                                              int lq, int lk, long long q_sb, long long q_sl, long long q_sh,
                                              long long k_sb, long long k_sl, long long k_sh, long long v_sb,
                                              long long v_sl, long long v_sh, long long o_sb, long long o_sl,
                                              long long o_sh, float scale_log2, int groups, int q_pos0,
                                              int window, const int *__restrict__ key_range) {
    constexpr int BM = 16 * WARPS;
    constexpr int THREADS = 32 * WARPS;
    constexpr int KSTEPS = D / 16;   // k-steps over the head dim for S = Q K^T
    constexpr int NTILES = BN / 8;   // n8 tiles of S
    constexpr int DTILES = D / 8;    // n8 tiles of O

    extern __shared__ __align__(128) bf16_t smem[];
    bf16_t *qs = smem;
    bf16_t *ks = qs + BM * D;  // [2][BN][D]
    bf16_t *vs = ks + 2 * BN * D; // [2][BN][D]

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, tig = lane & 3;
    const int m0 = blockIdx.x * BM;
    const int h = blockIdx.y, b = blockIdx.z;

    const bf16_t *qb = q + b * q_sb + h * q_sh;
    const bf16_t *kb = k + b * k_sb + (h / groups) * k_sh;
    const bf16_t *vb = v + b * v_sb + (h / groups) * v_sh;
    bf16_t *ob = o + b * o_sb + h * o_sh;

    // The keys each of this thread's two rows sees, and the key tiles the block visits.
    int key_lo[2] = {0, 0}, key_hi[2] = {lk - 1, lk - 1};
    bool sees_none[2] = {false, false};
    int t_begin = 0, t_end = (lk + BN - 1) / BN;
    if (CAUSAL) {
        __shared__ int block_lo, block_hi;
        if (threadIdx.x == 0) {
            block_lo = lk;
            block_hi = -1;
        }
        __syncthreads();
        const int first = key_range ? key_range[2 * b] : 0;
        const int last = key_range ? key_range[2 * b + 1] : lk - 1;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = m0 + warp * 16 + g + r * 8;
            const int pos = q_pos0 + row;
            const int hi = min(pos, last);
            const int lo = window > 0 ? max(first, pos - window + 1) : first;
            sees_none[r] = lo > hi;
            key_lo[r] = sees_none[r] ? 0 : lo;
            key_hi[r] = sees_none[r] ? lk - 1 : hi;
            if (row < lq && tig == 0) {
                atomicMin(&block_lo, key_lo[r]);
                atomicMax(&block_hi, key_hi[r]);
            }
        }
        __syncthreads();
        t_begin = block_lo / BN;
        t_end = block_hi / BN + 1;
    }

    load_tile<D, BM, THREADS>(qs, qb, q_sl, m0, lq);
    cp_async_commit();
    load_tile<D, BN, THREADS>(ks, kb, k_sl, t_begin * BN, lk);
    load_tile<D, BN, THREADS>(vs, vb, v_sl, t_begin * BN, lk);
    cp_async_commit();

    cp_async_wait<1>();
    __syncthreads();

    // Q fragments for this warp's 16 rows, all k-steps, kept in registers.
    u32 qf[KSTEPS][4];
#pragma unroll
    for (int kk = 0; kk < KSTEPS; ++kk) {
        int row = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        int chunk = kk * 2 + (lane >> 4);
        ldmatrix_x4(smem_addr(qs + swz<D>(row, chunk)), qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3]);
    }

    float acc[DTILES][4];
#pragma unroll
    for (int i = 0; i < DTILES; ++i)
        acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
    float row_max[2] = {NEG_INF, NEG_INF};
    float row_sum[2] = {0.f, 0.f};

    for (int t = t_begin; t < t_end; ++t) {
        const int buf = (t - t_begin) & 1;
        if (t + 1 < t_end) {
            load_tile<D, BN, THREADS>(ks + (buf ^ 1) * BN * D, kb, k_sl, (t + 1) * BN, lk);
            load_tile<D, BN, THREADS>(vs + (buf ^ 1) * BN * D, vb, v_sl, (t + 1) * BN, lk);
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();

        const bf16_t *kt = ks + buf * BN * D;
        const bf16_t *vt = vs + buf * BN * D;

        // S = Q K^T for 16 rows x BN keys.
        float s[NTILES][4];
#pragma unroll
        for (int nt = 0; nt < NTILES; ++nt)
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk += 2) {
#pragma unroll
            for (int nt = 0; nt < NTILES; ++nt) {
                u32 b0, b1, b2, b3;
                int row = nt * 8 + (lane & 7);
                int chunk = kk * 2 + (lane >> 3);
                ldmatrix_x4(smem_addr(kt + swz<D>(row, chunk)), b0, b1, b2, b3);
                mma_bf16(s[nt], qf[kk], b0, b1);
                mma_bf16(s[nt], qf[kk + 1], b2, b3);
            }
        }

        // Keys a row does not see, and keys past the end of the sequence, take no weight.
        const int k0 = t * BN;
        if (CAUSAL) {
#pragma unroll
            for (int nt = 0; nt < NTILES; ++nt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int r = e >> 1, col = k0 + nt * 8 + tig * 2 + (e & 1);
                    const bool seen = col >= key_lo[r] && col <= key_hi[r];
                    s[nt][e] = seen ? (sees_none[r] ? 0.f : s[nt][e]) : NEG_INF;
                }
            }
        } else if (k0 + BN > lk) {
#pragma unroll
            for (int nt = 0; nt < NTILES; ++nt) {
                int col = k0 + nt * 8 + tig * 2;
                if (col >= lk) { s[nt][0] = NEG_INF; s[nt][2] = NEG_INF; }
                if (col + 1 >= lk) { s[nt][1] = NEG_INF; s[nt][3] = NEG_INF; }
            }
        }

        // Online softmax in base 2 with the scale folded in.
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float mx = NEG_INF;
#pragma unroll
            for (int nt = 0; nt < NTILES; ++nt)
                mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
            float new_max = fmaxf(row_max[r], mx * scale_log2);
            // A row with every key masked so far keeps max -inf; subtract 0 to avoid inf - inf.
            float base = new_max == NEG_INF ? 0.f : new_max;
            float alpha = fast_exp2(row_max[r] - base);
            row_max[r] = new_max;
            float sum = 0.f;
#pragma unroll
            for (int nt = 0; nt < NTILES; ++nt) {
                s[nt][2 * r] = fast_exp2(s[nt][2 * r] * scale_log2 - base);
                s[nt][2 * r + 1] = fast_exp2(s[nt][2 * r + 1] * scale_log2 - base);
                sum += s[nt][2 * r] + s[nt][2 * r + 1];
            }
            row_sum[r] = row_sum[r] * alpha + sum;
#pragma unroll
            for (int dt = 0; dt < DTILES; ++dt) {
                acc[dt][2 * r] *= alpha;
                acc[dt][2 * r + 1] *= alpha;
            }
        }

        // O += P V: P's accumulator layout is the A-fragment layout of the next mma.
#pragma unroll
        for (int j = 0; j < BN / 16; ++j) {
            u32 pa[4];
            pa[0] = pack_bf16(s[2 * j][0], s[2 * j][1]);
            pa[1] = pack_bf16(s[2 * j][2], s[2 * j][3]);
            pa[2] = pack_bf16(s[2 * j + 1][0], s[2 * j + 1][1]);
            pa[3] = pack_bf16(s[2 * j + 1][2], s[2 * j + 1][3]);
#pragma unroll
            for (int dt = 0; dt < DTILES; dt += 2) {
                u32 b0, b1, b2, b3;
                int row = j * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                int chunk = dt + (lane >> 4);
                ldmatrix_x4_trans(smem_addr(vt + swz<D>(row, chunk)), b0, b1, b2, b3);
                mma_bf16(acc[dt], pa, b0, b1);
                mma_bf16(acc[dt + 1], pa, b2, b3);
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float l = row_sum[r];
        l += __shfl_xor_sync(0xffffffff, l, 1);
        l += __shfl_xor_sync(0xffffffff, l, 2);
        float inv = l > 0.f ? 1.f / l : 0.f;
        int row = m0 + warp * 16 + g + r * 8;
        if (row < lq) {
            bf16_t *dst = ob + (long long)row * o_sl + tig * 2;
#pragma unroll
            for (int dt = 0; dt < DTILES; ++dt)
                *reinterpret_cast<u32 *>(dst + dt * 8) = pack_bf16(acc[dt][2 * r] * inv, acc[dt][2 * r + 1] * inv);
        }
    }
}

#define ATTENTION_KERNEL(NAME, D, WARPS, BN)                                                                  \
    extern "C" __global__ void __launch_bounds__(32 * WARPS, 1)                                              \
        NAME(const bf16_t *q, const bf16_t *k, const bf16_t *v, bf16_t *o, int lq, int lk, long long q_sb,     \
             long long q_sl, long long q_sh, long long k_sb, long long k_sl, long long k_sh, long long v_sb,   \
             long long v_sl, long long v_sh, long long o_sb, long long o_sl, long long o_sh, float scale_log2) { \
        attention_fwd<D, WARPS, BN, false>(q, k, v, o, lq, lk, q_sb, q_sl, q_sh, k_sb, k_sl, k_sh, v_sb, v_sl,  \
                                           v_sh, o_sb, o_sl, o_sh, scale_log2, 1, 0, 0, nullptr);              \
    }

#define CAUSAL_ATTENTION_KERNEL(NAME, D, WARPS, BN)                                                           \
    extern "C" __global__ void __launch_bounds__(32 * WARPS, 1)                                              \
        NAME(const bf16_t *q, const bf16_t *k, const bf16_t *v, bf16_t *o, int lq, int lk, long long q_sb,     \
             long long q_sl, long long q_sh, long long k_sb, long long k_sl, long long k_sh, long long v_sb,   \
             long long v_sl, long long v_sh, long long o_sb, long long o_sl, long long o_sh, float scale_log2, \
             int groups, int q_pos0, int window, const int *key_range) {                                     \
        attention_fwd<D, WARPS, BN, true>(q, k, v, o, lq, lk, q_sb, q_sl, q_sh, k_sb, k_sl, k_sh, v_sb, v_sl,   \
                                          v_sh, o_sb, o_sl, o_sh, scale_log2, groups, q_pos0, window,          \
                                          key_range);                                                        \
    }

// Measured on H200 (kernels/NOTES.md): 8 warps with 64-key tiles beat 4 warps and 128-key tiles.
ATTENTION_KERNEL(attention_mma_d128_w8_n64, 128, 8, 64)
ATTENTION_KERNEL(attention_mma_d64_w8_n64, 64, 8, 64)
CAUSAL_ATTENTION_KERNEL(attention_causal_mma_d128_w8_n64, 128, 8, 64)
CAUSAL_ATTENTION_KERNEL(attention_causal_mma_d64_w8_n64, 64, 8, 64)
// Gemma 3's head dim: half the rows and keys per block keep Q and O in registers and the tiles
// within GB10's 99 KiB of shared memory.
CAUSAL_ATTENTION_KERNEL(attention_causal_mma_d256_w4_n32, 256, 4, 32)
