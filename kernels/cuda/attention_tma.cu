// Fused multi-head attention forward for Hopper (sm_90a only), the FlashAttention-3 structure:
// bf16 in/out, fp32 accumulation, non-causal, head dim 128. Same contract as attention.cu:
// q [B, Lq, H, 128], k/v [B, Lk, H, 128], o [B, Lq, H, 128], last dim contiguous; q/k/v arrive as
// TMA tensor maps over (D, H, L, B), so any 16-byte-aligned strides work and rows past the end of
// a sequence load as zeros.
//
// A block is three warpgroups and owns 128 query rows of one (batch, head):
//   warpgroup 0, one thread: the producer. It copies Q once and each 128-key K/V tile with the
//     bulk tensor copy engine into a 3-stage ring, each stage's "full" mbarrier counting bytes.
//   warpgroups 1 and 2: consumers, 64 query rows each. Per key tile t a consumer issues
//     S_t = Q K_t^T (m64n128k16 x 8, both operands in shared memory) and right behind it
//     O += P_{t-1} V_{t-1} (A = P from registers, B = V MN-major), then does the online softmax of
//     S_t while that second product runs; it then frees stage t-1 ("empty" mbarrier). The two
//     consumers take turns issuing (named barriers 1 and 2), so one's softmax overlaps the other's
//     products. setmaxnreg moves registers from the producer to the consumers.
// Tiles sit in the 128-byte-swizzled layout wgmma reads and TMA writes: a 128-element row is two
// 64-element halves (128 bytes each), all rows' first halves then all rows' second halves; in each
// 1024-byte group of 8 rows the 16-byte chunk c of row r sits at chunk c ^ r.
//
// The float8 kernel (attention_fp8_wgmma_tma_d128) is the same body on e4m3 operands: a row is one
// 128-byte half, both products are k32, V arrives transposed ([B, H, 128, L]: float8 wgmma reads
// no MN-major operand), and q, k and v carry scales (quant.cu) that the softmax and the output
// apply.

#define NEG_INF (__int_as_float(0xff800000))

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }

__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Shared-memory matrix descriptor, 128-byte swizzle: start address, leading and stride byte
// offsets, all in 16-byte units.
__device__ __forceinline__ unsigned long long smem_desc(u32 addr, u32 lbo, u32 sbo) {
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | ((unsigned long long)(lbo >> 4) << 16) |
           ((unsigned long long)(sbo >> 4) << 32) | (1ull << 62);
}

// The 64 fp32 accumulators of an m64n128 wgmma, as asm operands %0..%63.
#define ACC_REGS "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}"
#define ACC_OPERANDS(d) "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// d (+)= A(smem desc) * B(smem desc), m64n128, both operands K-major: k16 on bf16, k32 on e4m3.
template <bool FP8>
__device__ __forceinline__ void wgmma_ss_n128(float (&d)[64], unsigned long long da, unsigned long long db, int accumulate) {
    if constexpr (FP8)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 " ACC_REGS ", %64, %65, p, 1, 1;\n}\n"
                     : ACC_OPERANDS(d)
                     : "l"(da), "l"(db), "r"(accumulate));
    else
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " ACC_REGS ", %64, %65, p, 1, 1, 0, 0;\n}\n"
                     : ACC_OPERANDS(d)
                     : "l"(da), "l"(db), "r"(accumulate));
}

// d (+)= A(registers) * B(smem desc), m64n128. bf16: k16, B MN-major (transposed); e4m3: k32, B
// K-major (float8 wgmma reads no transposed operand).
template <bool FP8>
__device__ __forceinline__ void wgmma_rs_n128(float (&d)[64], const u32 (&a)[4], unsigned long long db, int accumulate) {
    if constexpr (FP8)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 " ACC_REGS ", {%64,%65,%66,%67}, %68, p, 1, 1;\n}\n"
                     : ACC_OPERANDS(d)
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate));
    else
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " ACC_REGS ", {%64,%65,%66,%67}, %68, p, 1, 1, 1;\n}\n"
                     : ACC_OPERANDS(d)
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate));
}

constexpr int D = 128;
constexpr int BM = 128;
constexpr int BN = 128;
constexpr int STAGES = 3;
constexpr int THREADS = 384;
__device__ __forceinline__ void mbar_init(u32 bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(u32 bar, int parity) {
    asm volatile("{\n .reg .pred P1;\n WAIT:\n mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
                 " @P1 bra DONE;\n bra WAIT;\n DONE:\n}\n" ::"r"(bar),
                 "r"(parity)
                 : "memory");
}
// Named barriers 1 and 2 between the two consumer warpgroups (id 0 is __syncthreads).
template <int ID> __device__ __forceinline__ void bar_sync_imm() { asm volatile("bar.sync %0, 256;\n" ::"n"(ID) : "memory"); }
template <int ID> __device__ __forceinline__ void bar_arrive_imm() { asm volatile("bar.arrive %0, 256;\n" ::"n"(ID) : "memory"); }


// A CUtensorMap, opaque: 128 bytes, passed by value as a __grid_constant__ kernel parameter.
struct __align__(64) TensorMap {
    unsigned long long words[16];
};

__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes) {
    asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n" ::"r"(bar), "r"(bytes)
                 : "memory");
}

// One box of a 4-D tensor map (coordinates innermost first) into shared memory, 128-byte swizzled.
__device__ __forceinline__ void tma_load(u32 dst, const TensorMap *map, int c0, int c1, int c2, int c3, u32 bar) {
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
        "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
        : "memory");
}

// 128 tokens of one (batch, head) of [B, L, H, D] (dims (D, H, L, B)): bf16 as two boxes of 64
// head-dim elements (a 128-byte row each), float8 as one box of 128.
template <bool FP8>
__device__ __forceinline__ void tma_load_tile(u32 tile, const TensorMap *map, int row, int head, int batch, u32 bar) {
    tma_load(tile, map, 0, head, row, batch, bar);
    if constexpr (!FP8) tma_load(tile + 128 * 128, map, 64, head, row, batch, bar);
}

// Four floats as e4m3 bytes (saturated, rounded to nearest even), x0 in the lowest byte.
__device__ __forceinline__ u32 pack_e4m3x4(float x0, float x1, float x2, float x3) {
    unsigned short lo, hi;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(lo) : "f"(x1), "f"(x0));
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(hi) : "f"(x3), "f"(x2));
    return (u32)lo | ((u32)hi << 16);
}


// Scales of the float8 operands (quant.cu): Q one a token, K one a 128-key tile of a head, V one a
// channel of a head; all f32.
struct Fp8Scales {
    const float *q;  // [B, Lq, H]
    const float *k;  // [B, H, ceil(Lk / 128)]
    const float *v;  // [B, H, 128]
};

// P is kept as e4m3 at 2^8 times its value (at most 256 of e4m3's 448), so that probabilities
// down to 2^-17 stay representable; the row sums carry the same factor, which cancels.
constexpr float FP8_P_LOG2_SCALE = 8.f;

template <bool FP8>
__device__ __forceinline__ void attention_tma_body(const TensorMap *tq, const TensorMap *tk, const TensorMap *tv,
                                                   bf16_t *__restrict__ o, int lq, int lk, long long o_sb,
                                                   long long o_sl, long long o_sh, float scale_log2, Fp8Scales sc) {
    // One 128-row tile: 128 x 128 bf16 (32 KiB, two 128-byte halves a row) or e4m3 (16 KiB).
    constexpr int TILE_BYTES = 128 * D * (FP8 ? 1 : 2);
    // The k of one wgmma, and the P fragments of a 128-key tile.
    constexpr int KSTEP = FP8 ? 32 : 16;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const u32 base = (smem_addr(smem_raw) + 1023) & ~1023u;
    const u32 qs = base;
    const u32 ks = base + TILE_BYTES;                  // [STAGES]
    const u32 vs = base + (1 + STAGES) * TILE_BYTES;   // [STAGES]
    const u32 bars = base + (1 + 2 * STAGES) * TILE_BYTES;
    const u32 q_full = bars;
    auto full = [&](int s) { return bars + 8 + 8 * s; };
    auto empty = [&](int s) { return bars + 8 + 8 * STAGES + 8 * s; };

    const int wg = threadIdx.x / 128;
    const int n_tiles = (lk + BN - 1) / BN;
    const int m0 = blockIdx.x * BM;
    const int h = blockIdx.y, b = blockIdx.z;
    const int bh = b * gridDim.y + h;

    if (threadIdx.x == 0) {
        mbar_init(q_full, 1);
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(full(s), 1);
            mbar_init(empty(s), 256);
        }
        // Make the initialised barriers visible to the copy engine.
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (wg == 0) {
        // Producer: one thread issues every copy; rows past the end arrive as zeros.
        asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n");
        if (threadIdx.x == 0) {
            mbar_expect_tx(q_full, TILE_BYTES);
            tma_load_tile<FP8>(qs, tq, m0, h, b, q_full);
            for (int t = 0; t < n_tiles; ++t) {
                const int stage = t % STAGES;
                if (t >= STAGES) mbar_wait(empty(stage), ((t / STAGES) + 1) & 1);
                mbar_expect_tx(full(stage), 2 * TILE_BYTES);
                tma_load_tile<FP8>(ks + stage * TILE_BYTES, tk, t * BN, h, b, full(stage));
                // float8 V arrives transposed, [B, H, D, L] (dims (L, D, H, B)): 128 keys of 128 rows.
                if constexpr (FP8) tma_load(vs + stage * TILE_BYTES, tv, t * BN, 0, h, b, full(stage));
                else tma_load_tile<FP8>(vs + stage * TILE_BYTES, tv, t * BN, h, b, full(stage));
            }
        }
    } else {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n");
        const int c = wg - 1;  // consumer: query rows c*64 .. c*64+63
        const int warp_in_wg = (threadIdx.x / 32) % 4;
        const int lane = threadIdx.x % 32;
        const int g = lane >> 2, tig = lane & 3;
        const int row0 = m0 + c * 64 + warp_in_wg * 16 + g;  // this thread's rows: row0, row0 + 8
        if (c == 1) bar_arrive_imm<1>();  // consumer 0 issues first

        float acc[64];
#pragma unroll
        for (int i = 0; i < 64; ++i) acc[i] = 0.f;
        float row_max[2] = {NEG_INF, NEG_INF};
        float row_sum[2] = {0.f, 0.f};
        // float8: each query row's scale folded into the exponent's factor.
        float row_scale[2] = {scale_log2, scale_log2};
        if constexpr (FP8) {
#pragma unroll
            for (int r = 0; r < 2; ++r)
                if (row0 + 8 * r < lq) row_scale[r] *= sc.q[((long long)b * lq + row0 + 8 * r) * gridDim.y + h];
        }
        u32 pa[BN / KSTEP][4];

        mbar_wait(q_full, 0);
        for (int t = 0; t < n_tiles; ++t) {
            const int stage = t % STAGES;
            mbar_wait(full(stage), (t / STAGES) & 1);
            const u32 kt = ks + stage * TILE_BYTES;
            const u32 vprev = vs + ((t + STAGES - 1) % STAGES) * TILE_BYTES;

            float s[64];
            // float8: P_{t-1} V_{t-1} goes to a fresh accumulator that is added to O in fp32 (the
            // tensor cores add float8 products at reduced precision; a whole sequence of them
            // would drift).
            float pv[FP8 ? 64 : 1];
            if (c == 0) bar_sync_imm<1>();
            else bar_sync_imm<2>();
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < D / KSTEP; ++kk) {
                // 32 bytes a k step; bf16 rows continue in the second 128-byte half.
                const u32 koff = (kk >> 2) * 128 * 128 + (kk & 3) * 32;
                wgmma_ss_n128<FP8>(s, smem_desc(qs + c * 64 * 128 + koff, 16, 1024), smem_desc(kt + koff, 16, 1024), kk > 0);
            }
            wgmma_commit();
            // Always two groups (the second empty on the first tile), so one wait<1> covers S.
            if (t > 0) {
#pragma unroll
                for (int j = 0; j < BN / KSTEP; ++j) {
                    if constexpr (FP8) wgmma_rs_n128<true>(pv, pa[j], smem_desc(vprev + j * 32, 16, 1024), j > 0);
                    else wgmma_rs_n128<false>(acc, pa[j], smem_desc(vprev + j * 16 * 128, 128 * 128, 1024), 1);
                }
            }
            wgmma_commit();
            if (c == 0) bar_arrive_imm<2>();
            else bar_arrive_imm<1>();
            asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");

            const int k0 = t * BN;
            if (k0 + BN > lk) {
#pragma unroll
                for (int nt = 0; nt < BN / 8; ++nt) {
                    int col = k0 + nt * 8 + tig * 2;
                    if (col >= lk) { s[nt * 4 + 0] = NEG_INF; s[nt * 4 + 2] = NEG_INF; }
                    if (col + 1 >= lk) { s[nt * 4 + 1] = NEG_INF; s[nt * 4 + 3] = NEG_INF; }
                }
            }
            const float tile_scale = FP8 ? sc.k[(long long)bh * n_tiles + t] : 1.f;
            float alpha[2];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const float factor = row_scale[r] * tile_scale;
                float mx = NEG_INF;
#pragma unroll
                for (int nt = 0; nt < BN / 8; ++nt)
                    mx = fmaxf(mx, fmaxf(s[nt * 4 + 2 * r], s[nt * 4 + 2 * r + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
                float new_max = fmaxf(row_max[r], mx * factor);
                float base_max = new_max == NEG_INF ? 0.f : new_max;
                alpha[r] = fast_exp2(row_max[r] - base_max);
                row_max[r] = new_max;
                if constexpr (FP8) base_max -= FP8_P_LOG2_SCALE;
                float sum = 0.f;
#pragma unroll
                for (int nt = 0; nt < BN / 8; ++nt) {
                    s[nt * 4 + 2 * r] = fast_exp2(s[nt * 4 + 2 * r] * factor - base_max);
                    s[nt * 4 + 2 * r + 1] = fast_exp2(s[nt * 4 + 2 * r + 1] * factor - base_max);
                    sum += s[nt * 4 + 2 * r] + s[nt * 4 + 2 * r + 1];
                }
                row_sum[r] = row_sum[r] * alpha[r] + sum;
            }
            // O (with P_{t-1} V_{t-1} in it) is ours again: release that stage, rescale.
            wgmma_wait0();
            if (t > 0) mbar_arrive(empty((t - 1) % STAGES));
#pragma unroll
            for (int dt = 0; dt < D / 8; ++dt) {
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    if constexpr (FP8) acc[dt * 4 + i] = t > 0 ? acc[dt * 4 + i] + pv[dt * 4 + i] : acc[dt * 4 + i];
                    acc[dt * 4 + i] *= alpha[i / 2];
                }
            }
#pragma unroll
            for (int j = 0; j < BN / KSTEP; ++j) {
                if constexpr (FP8) {
                    // The thread's own columns (4j + n) * 8 + 2 tig + {0, 1}, n = 0..3, fill the k32
                    // fragment in order: key slot p of each 16 holds key (p % 4 / 2) * 8 + p / 4 * 2
                    // + p % 2, the order quantize_attention_v_e4m3 writes V's keys in.
                    pa[j][0] = pack_e4m3x4(s[(4 * j) * 4 + 0], s[(4 * j) * 4 + 1], s[(4 * j + 1) * 4 + 0], s[(4 * j + 1) * 4 + 1]);
                    pa[j][1] = pack_e4m3x4(s[(4 * j) * 4 + 2], s[(4 * j) * 4 + 3], s[(4 * j + 1) * 4 + 2], s[(4 * j + 1) * 4 + 3]);
                    pa[j][2] = pack_e4m3x4(s[(4 * j + 2) * 4 + 0], s[(4 * j + 2) * 4 + 1], s[(4 * j + 3) * 4 + 0], s[(4 * j + 3) * 4 + 1]);
                    pa[j][3] = pack_e4m3x4(s[(4 * j + 2) * 4 + 2], s[(4 * j + 2) * 4 + 3], s[(4 * j + 3) * 4 + 2], s[(4 * j + 3) * 4 + 3]);
                } else {
                    pa[j][0] = pack_bf16(s[(2 * j) * 4 + 0], s[(2 * j) * 4 + 1]);
                    pa[j][1] = pack_bf16(s[(2 * j) * 4 + 2], s[(2 * j) * 4 + 3]);
                    pa[j][2] = pack_bf16(s[(2 * j + 1) * 4 + 0], s[(2 * j + 1) * 4 + 1]);
                    pa[j][3] = pack_bf16(s[(2 * j + 1) * 4 + 2], s[(2 * j + 1) * 4 + 3]);
                }
            }
        }
        // The last tile's P V, then balance the turn barrier consumer 1 arrived on last.
        const u32 vlast = vs + ((n_tiles - 1) % STAGES) * TILE_BYTES;
        {
            float pv[FP8 ? 64 : 1];
            wgmma_fence();
#pragma unroll
            for (int j = 0; j < BN / KSTEP; ++j) {
                if constexpr (FP8) wgmma_rs_n128<true>(pv, pa[j], smem_desc(vlast + j * 32, 16, 1024), j > 0);
                else wgmma_rs_n128<false>(acc, pa[j], smem_desc(vlast + j * 16 * 128, 128 * 128, 1024), 1);
            }
            wgmma_commit();
            wgmma_wait0();
            if constexpr (FP8) {
#pragma unroll
                for (int i = 0; i < 64; ++i) acc[i] += pv[i];
            }
        }
        if (c == 0) bar_sync_imm<1>();

        bf16_t *ob = o + b * o_sb + h * o_sh;
        // float8: V's channel scales (this thread's columns dt * 8 + 2 tig + {0, 1}).
        float2 vsc[FP8 ? D / 8 : 1];
        if constexpr (FP8) {
#pragma unroll
            for (int dt = 0; dt < D / 8; ++dt)
                vsc[dt] = *reinterpret_cast<const float2 *>(sc.v + (long long)bh * D + dt * 8 + tig * 2);
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float l = row_sum[r];
            l += __shfl_xor_sync(0xffffffff, l, 1);
            l += __shfl_xor_sync(0xffffffff, l, 2);
            float inv = l > 0.f ? 1.f / l : 0.f;
            int row = row0 + r * 8;
            if (row < lq) {
                bf16_t *dst = ob + (long long)row * o_sl + tig * 2;
#pragma unroll
                for (int dt = 0; dt < D / 8; ++dt) {
                    float x0 = acc[dt * 4 + 2 * r] * inv, x1 = acc[dt * 4 + 2 * r + 1] * inv;
                    if constexpr (FP8) { x0 *= vsc[dt].x; x1 *= vsc[dt].y; }
                    *reinterpret_cast<u32 *>(dst + dt * 8) = pack_bf16(x0, x1);
                }
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(THREADS, 1)
    attention_wgmma_tma_d128(const __grid_constant__ TensorMap tq, const __grid_constant__ TensorMap tk,
                             const __grid_constant__ TensorMap tv, bf16_t *__restrict__ o, int lq, int lk,
                             long long o_sb, long long o_sl, long long o_sh, float scale_log2) {
    attention_tma_body<false>(&tq, &tk, &tv, o, lq, lk, o_sb, o_sl, o_sh, scale_log2, Fp8Scales{});
}

// The same attention on float8 operands (quant.cu): q/k e4m3 [B, L, H, 128], v
// e4m3 transposed [B, H, 128, Lk padded to 16] with its keys in the P fragment's order; output bf16.
extern "C" __global__ void __launch_bounds__(THREADS, 1)
    attention_fp8_wgmma_tma_d128(const __grid_constant__ TensorMap tq, const __grid_constant__ TensorMap tk,
                                 const __grid_constant__ TensorMap tv, bf16_t *__restrict__ o, int lq, int lk,
                                 long long o_sb, long long o_sl, long long o_sh, float scale_log2,
                                 const float *q_scale, const float *k_scale, const float *v_scale) {
    attention_tma_body<true>(&tq, &tk, &tv, o, lq, lk, o_sb, o_sl, o_sh, scale_log2,
                             Fp8Scales{q_scale, k_scale, v_scale});
}
