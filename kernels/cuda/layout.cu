// Data movement for frames-major video.
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
