// Wan's 3-D rotary position embedding: x [B, L, H, D] bf16 -> y (same shape, contiguous or not)
// with L = frames * height * width tokens in (f, h, w) order. The head dim splits into a frame part
// of t_dim, then height and width parts of hw_dim each; pair j = (x[2j], x[2j+1]) of a part of
// size n at position p rotates by angle p * theta^(-2i/n), i being the pair's index in the part:
//   out[2j] = x[2j] cos - x[2j+1] sin,   out[2j+1] = x[2j] sin + x[2j+1] cos
// One thread per (token, 8-element chunk): it computes the chunk's 4 angles once (fp32, exact
// integer positions, accurate sincosf) and applies them to that chunk of every head with 16-byte
// loads and stores. Strides and the base must be 16-byte aligned; D a multiple of 8.

__device__ __forceinline__ u32 rotate(u32 pair, float c, float s) {
    const float a = __uint_as_float(pair << 16), b = __uint_as_float(pair & 0xffff0000u);
    return pack_bf16(a * c - b * s, a * s + b * c);
}

extern "C" __global__ void rope3d_bf16(const bf16_t *__restrict__ x, bf16_t *__restrict__ y, int seq, int heads,
                                       int d, int grid_h, int grid_w, int t_dim, int hw_dim, float log2_theta,
                                       long long x_sb, long long x_sl, long long x_sh, long long y_sb, long long y_sl,
                                       long long y_sh) {
    const int chunks = d / 8;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)seq * chunks) return;
    const int b = blockIdx.y;
    const int l = idx / chunks, chunk = idx % chunks;
    const int f_pos = l / (grid_h * grid_w), h_pos = (l / grid_w) % grid_h, w_pos = l % grid_w;

    float cs[4], sn[4];
#pragma unroll
    for (int p = 0; p < 4; ++p)
        rope_sincos(chunk * 4 + p, f_pos, h_pos, w_pos, t_dim, hw_dim, log2_theta, &sn[p], &cs[p]);

    const bf16_t *xr = x + b * x_sb + l * x_sl + chunk * 8;
    bf16_t *yr = y + b * y_sb + l * y_sl + chunk * 8;
#pragma unroll 4
    for (int h = 0; h < heads; ++h) {
        const uint4 v = *reinterpret_cast<const uint4 *>(xr + h * x_sh);
        *reinterpret_cast<uint4 *>(yr + h * y_sh) =
            make_uint4(rotate(v.x, cs[0], sn[0]), rotate(v.y, cs[1], sn[1]), rotate(v.z, cs[2], sn[2]), rotate(v.w, cs[3], sn[3]));
    }
}

// Rotary embedding from tables, optionally after a per-head RMS norm: the q/k path of FLUX-style
// attention (`norm_q`/`norm_k` over each head of dim D, then `apply_rotary_emb` with interleaved
// pairs). x [B, L, H, D] bf16 with any 16-byte aligned token/head strides (a view into a fused
// projection), weight fp32 [D] (null: no affine), cos/sin fp32 [L, D/2]; y [B, L, H, D] contiguous.
// One warp per (token, head); lane i owns elements [8i, 8i + 8) for D <= 256 (a multiple of 8).
// y = rope(x * rsqrt(mean(x^2) + eps) * weight) when `norm`, else rope(x); fp32, rounded once.
extern "C" __global__ void __launch_bounds__(256) rms_norm_rope_bf16(
    const bf16_t *__restrict__ x, bf16_t *__restrict__ y, const float *__restrict__ weight,
    const float *__restrict__ cos_t, const float *__restrict__ sin_t, long long vectors, int seq, int heads, int d,
    long long x_sb, long long x_sl, long long x_sh, int norm, float eps) {
    const long long vec = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (vec >= vectors) return;  // whole warps leave together
    const int h = vec % heads;
    const long long token = vec / heads;
    const int l = token % seq;
    const long long b = token / seq;
    const bool live = lane * 8 < d;
    float v[8];
    float ss = 0.f;
    if (live) {
        unpack8(*reinterpret_cast<const uint4 *>(x + b * x_sb + l * x_sl + h * x_sh + lane * 8), v);
#pragma unroll
        for (int e = 0; e < 8; ++e) ss += v[e] * v[e];
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    if (!live) return;
    const float r = norm ? rsqrtf(ss / d + eps) : 1.f;
    const float *cs = cos_t + (long long)l * (d / 2) + lane * 4;
    const float *sn = sin_t + (long long)l * (d / 2) + lane * 4;
    u32 out[4];
#pragma unroll
    for (int p = 0; p < 4; ++p) {
        float a = v[2 * p] * r, c = v[2 * p + 1] * r;
        if (weight) {
            a *= weight[lane * 8 + 2 * p];
            c *= weight[lane * 8 + 2 * p + 1];
        }
        out[p] = pack_bf16(a * cs[p] - c * sn[p], a * sn[p] + c * cs[p]);
    }
    *reinterpret_cast<uint4 *>(y + vec * d + lane * 8) = make_uint4(out[0], out[1], out[2], out[3]);
}
