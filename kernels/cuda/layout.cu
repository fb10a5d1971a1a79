// Data movement for frames-major video, and resampling for images.
//
// pad_frames: x [B, T, C, H, W] (contiguous) into y [B, before + T + after, C, H + 2 pad, W + 2 pad]
// in one pass: time padded by repeating the first and last frames (the causal convolutions'
// padding), space by `mode` as torch.nn.functional.pad: 0 zeros, 1 replicate, 2 reflect (mirrored
// without repeating the edge; pad < H and W). One block row per output plane (batch item, frame,
// channel) in grid x, its pixels over grid y in 256-thread blocks: 32-bit index math per pixel.

__device__ __forceinline__ int pad_source(int i, int n, int mode) {
    if (i >= 0 && i < n) return i;
    if (mode == 0) return -1;
    if (mode == 1) return i < 0 ? 0 : n - 1;
    return i < 0 ? -i : 2 * (n - 1) - i;
}

template <typename T>
__device__ __forceinline__ void pad_frames(const T *__restrict__ x, T *__restrict__ y, int t, int c, int h, int w,
                                           int before, int t_out, int pad, int mode) {
    const int ho = h + 2 * pad, wo = w + 2 * pad;
    const int p = blockIdx.y * blockDim.x + threadIdx.x;
    if (p >= ho * wo) return;
    const long long plane = blockIdx.x;
    const int ch = plane % c;
    const long long tf = plane / c;
    const int f = tf % t_out;
    const long long item = tf / t_out;
    const int src_f = min(max(f - before, 0), t - 1);
    const int i = pad_source(p / wo - pad, h, mode), j = pad_source(p % wo - pad, w, mode);
    T v = T(0);
    if (i >= 0 && j >= 0) v = x[((item * t + src_f) * c + ch) * (long long)h * w + (long long)i * w + j];
    y[plane * (long long)ho * wo + p] = v;
}

extern "C" __global__ void pad_frames_bf16(const bf16_t *x, bf16_t *y, int t, int c, int h, int w, int before,
                                           int t_out, int pad, int mode) {
    pad_frames<bf16_t>(x, y, t, c, h, w, before, t_out, pad, mode);
}

extern "C" __global__ void pad_frames_f32(const float *x, float *y, int t, int c, int h, int w, int before, int t_out,
                                          int pad, int mode) {
    pad_frames<float>(x, y, t, c, h, w, before, t_out, pad, mode);
}

// warp: the backward warp of optical-flow nets (RIFE's warplayer, `F.grid_sample` bilinear with
// border padding and align_corners=True): out[b, ch, y, x] = img[b, ch] sampled bilinearly at
// (x + flow[b, 0, y, x], y + flow[b, 1, y, x]), the sample point clamped into the image. img and
// out [B, C, H, W] contiguous, flow f32 [B, 2, H, W]; arithmetic in f32 as reference::warp, rounded
// once. One thread per output pixel: the weights and the four neighbours' offsets are computed
// once and serve every channel, and neighbouring threads read neighbouring pixels.
__device__ __forceinline__ float load_float(const float *p) { return *p; }
__device__ __forceinline__ float load_float(const bf16_t *p) { return bf16_to_float(*p); }
__device__ __forceinline__ void store_float(float *p, float v) { *p = v; }
__device__ __forceinline__ void store_float(bf16_t *p, float v) { *p = float_to_bf16(v); }

template <typename T>
__device__ __forceinline__ void warp(const T *__restrict__ img, const float *__restrict__ flow, T *__restrict__ out,
                                     int c, int h, int w, long long pixels) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= pixels) return;
    const long long hw = (long long)h * w;
    const long long b = i / hw;
    const int p = (int)(i - b * hw);
    const int y = p / w, x = p - y * w;
    const float *f = flow + b * 2 * hw;
    const float sx = fminf(fmaxf(f[p] + (float)x, 0.f), (float)(w - 1));
    const float sy = fminf(fmaxf(f[hw + p] + (float)y, 0.f), (float)(h - 1));
    const float x0 = floorf(sx), y0 = floorf(sy);
    const float fx = sx - x0, fy = sy - y0, gx = 1.f - fx, gy = 1.f - fy;
    const float w00 = gx * gy, w01 = fx * gy, w10 = gx * fy, w11 = fx * fy;
    // At the last row or column the upper neighbour has weight 0; clamping keeps it in range.
    const int c0 = (int)x0, r0 = (int)y0, c1 = min(c0 + 1, w - 1), r1 = min(r0 + 1, h - 1);
    const int o00 = r0 * w + c0, o01 = r0 * w + c1, o10 = r1 * w + c0, o11 = r1 * w + c1;
    const T *src = img + b * c * hw;
    T *dst = out + b * c * hw + p;
    for (int ch = 0; ch < c; ++ch, src += hw, dst += hw) {
        float v = load_float(src + o00) * w00;
        v += load_float(src + o01) * w01;
        v += load_float(src + o10) * w10;
        v += load_float(src + o11) * w11;
        store_float(dst, v);
    }
}

extern "C" __global__ void warp_bf16(const bf16_t *img, const float *flow, bf16_t *out, int c, int h, int w,
                                     long long pixels) {
    warp<bf16_t>(img, flow, out, c, h, w, pixels);
}

extern "C" __global__ void warp_f32(const float *img, const float *flow, float *out, int c, int h, int w,
                                    long long pixels) {
    warp<float>(img, flow, out, c, h, w, pixels);
}
