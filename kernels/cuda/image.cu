// Per-pixel kernels of the image models (upscalers, RIFE).

__device__ __forceinline__ float load_float(const float *p) { return *p; }
__device__ __forceinline__ float load_float(const bf16_t *p) { return bf16_to_float(*p); }
__device__ __forceinline__ void store_float(float *p, float v) { *p = v; }
__device__ __forceinline__ void store_float(bf16_t *p, float v) { *p = float_to_bf16(v); }

// The activation of the epilogues below: act 0: none, 1: LeakyReLU(slope), 2: PReLU(slopes[ch]).
template <typename T>
__device__ __forceinline__ float activate(float v, int act, float slope, const T *__restrict__ slopes, int ch) {
    if (act == 1) v = v >= 0.f ? v : v * slope;
    if (act == 2) v = v >= 0.f ? v : v * load_float(slopes + ch);
    return v;
}

// Element i of channel ch finished in place: act(y + bias[ch] + residual[i]).
template <typename T>
__device__ __forceinline__ void finish_element(T *__restrict__ y, const T *__restrict__ bias,
                                               const T *__restrict__ residual, const T *__restrict__ slopes,
                                               int act, float slope, int ch, long long i) {
    float v = load_float(y + i) + load_float(bias + ch);
    if (residual) v += load_float(residual + i);
    store_float(y + i, activate(v, act, slope, slopes, ch));
}

// conv_epilogue: a convolution's output y [planes = N·C, HW] (contiguous) finished in place:
// y = act(y + bias[c] + residual), the residual (null for none) in y's layout, act 0: none,
// 1: LeakyReLU(slope), 2: PReLU(slopes[c]). f32 arithmetic, rounded once. Grid x over a plane's
// pixels, grid y over the planes (looping past the grid's 65,535): no division per pixel.
template <typename T>
__device__ __forceinline__ void conv_epilogue(T *__restrict__ y, const T *__restrict__ bias,
                                              const T *__restrict__ residual, const T *__restrict__ slopes, int act,
                                              float slope, int c, int hw, int planes) {
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= hw) return;
    for (int plane = blockIdx.y; plane < planes; plane += gridDim.y)
        finish_element(y, bias, residual, slopes, act, slope, plane % c, (long long)plane * hw + p);
}

extern "C" __global__ void conv_epilogue_bf16(bf16_t *y, const bf16_t *bias, const bf16_t *residual,
                                              const bf16_t *slopes, int act, float slope, int c, int hw, int planes) {
    conv_epilogue<bf16_t>(y, bias, residual, slopes, act, slope, c, hw, planes);
}

extern "C" __global__ void conv_epilogue_f32(float *y, const float *bias, const float *residual, const float *slopes,
                                             int act, float slope, int c, int hw, int planes) {
    conv_epilogue<float>(y, bias, residual, slopes, act, slope, c, hw, planes);
}

// conv_epilogue_last: the same for channels-last output y [pixels, C]: channel i % C. Grid-stride
// over the elements.
template <typename T>
__device__ __forceinline__ void conv_epilogue_last(T *__restrict__ y, const T *__restrict__ bias,
                                                   const T *__restrict__ residual, const T *__restrict__ slopes,
                                                   int act, float slope, int c, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        finish_element(y, bias, residual, slopes, act, slope, (int)(i % c), i);
}

extern "C" __global__ void conv_epilogue_last_bf16(bf16_t *y, const bf16_t *bias, const bf16_t *residual,
                                                   const bf16_t *slopes, int act, float slope, int c, long long n) {
    conv_epilogue_last<bf16_t>(y, bias, residual, slopes, act, slope, c, n);
}

extern "C" __global__ void conv_epilogue_last_f32(float *y, const float *bias, const float *residual,
                                                  const float *slopes, int act, float slope, int c, long long n) {
    conv_epilogue_last<float>(y, bias, residual, slopes, act, slope, c, n);
}

// scatter_channels: copies a channels-last part src [pixels, c16] (in 16-byte units) into `slots`
// (1 to 4) channels-last images of the same pixels, wider than the part: slot k's copy of pixel p
// starts at dk + p * pk (the part's channel offset folded into dk). Real-ESRGAN's dense blocks
// give every convolution its own packed input, and each output joins all the later ones in one
// pass, read once. Grid-stride over the part's 16-byte units.
extern "C" __global__ void scatter_channels_16b(const uint4 *__restrict__ src, long long pixels, int c16, int slots,
                                                uint4 *d0, long long p0, uint4 *d1, long long p1, uint4 *d2,
                                                long long p2, uint4 *d3, long long p3) {
    const long long n = pixels * c16;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const long long p = i / c16;
        const long long v = i - p * c16;
        const uint4 x = src[i];
        d0[p * p0 + v] = x;
        if (slots > 1) d1[p * p1 + v] = x;
        if (slots > 2) d2[p * p2 + v] = x;
        if (slots > 3) d3[p * p3 + v] = x;
    }
}

// conv_epilogue_last_bf16x8: conv_epilogue_last for bf16 with C a multiple of 8 (C8 = C / 8):
// each thread finishes 8 channels of one pixel with 16-byte loads and stores (y and the residual
// 16-byte aligned), and indexes in 32 bits (fewer than 2^31 chunks, checked by the host).
extern "C" __global__ void conv_epilogue_last_bf16x8(bf16_t *y, const bf16_t *bias, const bf16_t *residual,
                                                     const bf16_t *slopes, int act, float slope, int c8, int chunks) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < chunks; i += gridDim.x * blockDim.x) {
        const int ch = (i % c8) * 8;
        uint4 *yv = reinterpret_cast<uint4 *>(y) + i;
        float v[8], r[8];
        unpack8(*yv, v);
        if (residual) unpack8(reinterpret_cast<const uint4 *>(residual)[i], r);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            float x = v[k] + bf16_to_float(bias[ch + k]);
            if (residual) x += r[k];
            v[k] = activate(x, act, slope, slopes, ch + k);
        }
        *yv = make_uint4(pack_bf16(v[0], v[1]), pack_bf16(v[2], v[3]), pack_bf16(v[4], v[5]), pack_bf16(v[6], v[7]));
    }
}

// warp: the backward warp of optical-flow nets (RIFE's warplayer, `F.grid_sample` bilinear with
// border padding and align_corners=True): out[b, ch, y, x] = img[b, ch] sampled bilinearly at
// (x + flow[b, 0, y, x], y + flow[b, 1, y, x]), the sample point clamped into the image. img and
// out [B, C, H, W] contiguous, flow f32 [B, 2, H, W]; arithmetic in f32 as reference::warp, rounded
// once. One thread per output pixel: the weights and the four neighbours' offsets are computed
// once and serve every channel, and neighbouring threads read neighbouring pixels.

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
