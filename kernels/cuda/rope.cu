// Wan's 3-D rotary position embedding applied in place of a copy: x [B, L, H, D] bf16 with
// L = frames * height * width tokens in (f, h, w) order. The head dim splits into a frame part
// of t_dim, then height and width parts of hw_dim each; pair j = (x[2j], x[2j+1]) of a part of
// size n at position p rotates by angle p * theta^(-2i/n), i being the pair's index in the part:
//   out[2j] = x[2j] cos - x[2j+1] sin,   out[2j+1] = x[2j] sin + x[2j+1] cos
// One thread per pair; angles in fp32 from the exact integer positions (no cos/sin table).

typedef unsigned short bf16_t;
typedef unsigned int u32;

__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

extern "C" __global__ void rope3d_bf16(const bf16_t *__restrict__ x, bf16_t *__restrict__ y, int seq, int heads,
                                       int d, int grid_h, int grid_w, int t_dim, int hw_dim, float log2_theta,
                                       long long x_sb, long long x_sl, long long x_sh, long long y_sb, long long y_sl,
                                       long long y_sh) {
    const int pairs = d / 2;
    const long long per_batch = (long long)seq * heads * pairs;
    const long long local = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (local >= per_batch) return;
    const int b = blockIdx.y;
    const int j = local % pairs;
    const int h = (local / pairs) % heads;
    const int l = local / ((long long)pairs * heads);

    int pos, i, n;
    if (2 * j < t_dim) {
        pos = l / (grid_h * grid_w); i = j; n = t_dim;
    } else if (2 * j < t_dim + hw_dim) {
        pos = (l / grid_w) % grid_h; i = j - t_dim / 2; n = hw_dim;
    } else {
        pos = l % grid_w; i = j - (t_dim + hw_dim) / 2; n = hw_dim;
    }
    const float freq = exp2f(-(2.f * i / n) * log2_theta);
    float s, c;
    sincosf(pos * freq, &s, &c);

    const u32 raw = *reinterpret_cast<const u32 *>(x + b * x_sb + l * x_sl + h * x_sh + 2 * j);
    const float a = __uint_as_float(raw << 16), bb = __uint_as_float(raw & 0xffff0000u);
    *reinterpret_cast<u32 *>(y + b * y_sb + l * y_sl + h * y_sh + 2 * j) = pack_bf16(a * c - bb * s, a * s + bb * c);
}
