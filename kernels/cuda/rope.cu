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
