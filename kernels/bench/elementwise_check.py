"""Device-side check and timing of kernels/cuda/norm.cu and rope.cu against PyTorch, same process.

    python3 kernels/bench/elementwise_check.py [path/to/kernels/cuda]
Fresh random inputs, outputs poisoned with NaN, relative error against fp32 PyTorch written from
diffusers' transformer_wan.py (FP32LayerNorm modulation; WanRotaryPosEmbed + apply_rotary_emb).
"""

import json
import os
import sys

import cupy
import numpy as np
import torch

CUDA_DIR = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "cuda")
dev = torch.device("cuda")
opts = ("-std=c++17",)


def source(name):
    """A kernel module as the Rust side compiles it: common.cuh, then the .cu file."""
    return "".join(open(os.path.join(CUDA_DIR, f)).read() for f in ("common.cuh", name))


norm = cupy.RawModule(code=source("norm.cu"), backend="nvrtc", options=opts)
rope = cupy.RawModule(code=source("rope.cu"), backend="nvrtc", options=opts)
ptr = lambda t: np.uint64(t.data_ptr() if t is not None else 0)  # noqa: E731


def rel(a, b):
    assert torch.isfinite(a).all(), "unwritten or non-finite output"
    return float((a.float() - b).norm() / b.norm())


def ev_time(fn, reps=50):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return sorted(ts)[len(ts) // 2]


def modulated_norm(x, scale, shift, weight=None, bias=None, mode=0, eps=1e-6):
    b, l, d = x.shape
    y = torch.full_like(x, float("nan"))
    per = l if scale is not None and scale.dim() == 2 else 1
    norm.get_function("modulated_norm_bf16_d2048" if d <= 2048 else "modulated_norm_bf16_d6144")(
        ((b * l + 7) // 8,), (256,),
        (ptr(x), ptr(y), ptr(weight), ptr(bias), ptr(scale), ptr(shift), np.int32(b * l), np.int32(d),
         np.int64(x.stride(1)), np.int64(d), np.int32(per), np.int32(mode), np.float32(eps),
         *[np.int32(0)] * 6, np.float32(0)))  # RoPE stage off (rope_head_dim 0)
    return y


def rope3d(x, grid, theta=10000.0):
    b, l, h, d = x.shape
    y = torch.full_like(x, float("nan"))
    hw = 2 * (d // 6)
    t_dim = d - 2 * hw
    chunks = l * d // 8
    rope.get_function("rope3d_bf16")(
        ((chunks + 255) // 256, b), (256,),
        (ptr(x), ptr(y), np.int32(l), np.int32(h), np.int32(d), np.int32(grid[1]), np.int32(grid[2]),
         np.int32(t_dim), np.int32(hw), np.float32(np.log2(theta)), np.int64(x.stride(0)), np.int64(x.stride(1)),
         np.int64(x.stride(2)), np.int64(y.stride(0)), np.int64(y.stride(1)), np.int64(y.stride(2))))
    return y


def rope_reference(x, grid, theta=10000.0):
    """diffusers: per-axis freqs theta^(-2i/n) in float64, cos/sin repeat-interleaved, pairs rotated."""
    b, l, h, d = x.shape
    hw = 2 * (d // 6)
    dims = [d - 2 * hw, hw, hw]
    angles = []
    for axis, n in enumerate(dims):
        freqs = 1.0 / theta ** (torch.arange(0, n, 2, dtype=torch.float64, device=dev) / n)
        pos = torch.arange(grid[axis], dtype=torch.float64, device=dev)
        angles.append(torch.outer(pos, freqs))
    f, hh, ww = grid
    ang = torch.cat([
        angles[0][:, None, None, :].expand(f, hh, ww, -1),
        angles[1][None, :, None, :].expand(f, hh, ww, -1),
        angles[2][None, None, :, :].expand(f, hh, ww, -1)], dim=-1).reshape(1, l, 1, d // 2)
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x.double().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.empty(b, l, h, d, dtype=torch.float64, device=dev)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.float()


res = {"gpu": torch.cuda.get_device_name(), "checks": [], "timing": {}}
F = torch.nn.functional
for (b, l, d, per_token) in ((2, 777, 1536, False), (1, 300, 3072, True), (1, 32760, 1536, False)):
    x = torch.randn(b, l, d, device=dev).bfloat16()
    shape = (b, l, d) if per_token else (b, d)
    scale, shift = torch.randn(shape, device=dev), torch.randn(shape, device=dev)
    y = modulated_norm(x, scale, shift)
    s_, h_ = (scale, shift) if per_token else (scale[:, None], shift[:, None])
    ref = F.layer_norm(x.float(), (d,), eps=1e-6) * (1 + s_) + h_
    res["checks"].append(dict(kernel="modulated_norm layer", shape=[b, l, d], per_token=per_token, rel_err=rel(y, ref)))
w = torch.randn(5120, device=dev)
x = torch.randn(1, 100, 5120, device=dev).bfloat16()
y = modulated_norm(x, None, None, weight=w, mode=1)
ref = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6) * w
res["checks"].append(dict(kernel="modulated_norm rms", shape=[1, 100, 5120], rel_err=rel(y, ref)))
for grid, h in (((3, 6, 10), 12), ((21, 30, 52), 12)):
    l = grid[0] * grid[1] * grid[2]
    wide = torch.randn(1, l, 2 * h, 128, device=dev).bfloat16()
    x = wide[:, :, h:]  # a strided view
    y = rope3d(x, grid)
    res["checks"].append(dict(kernel="rope3d", grid=grid, rel_err=rel(y, rope_reference(x, grid))))

for per_token in (False, True):
    x, y = torch.randn(2, 777, 1536, device=dev).bfloat16(), torch.randn(2, 777, 1536, device=dev).bfloat16()
    g = torch.randn((2, 777, 1536) if per_token else (2, 1536), device=dev)
    out = torch.full_like(x, float("nan"))
    norm.get_function("gated_residual_bf16")(
        ((2 * 777 * 1536 // 8 + 255) // 256,), (256,),
        (ptr(x), ptr(y), ptr(g), ptr(out), np.int64(2 * 777), np.int32(1536), np.int32(1 if per_token else 777)))
    ref = x.float() + y.float() * (g if per_token else g[:, None])
    res["checks"].append(dict(kernel="gated_residual", per_token=per_token, rel_err=rel(out, ref)))

x = torch.randn(1, 32760, 1536, device=dev).bfloat16()
sc, sh = torch.randn(1, 1536, device=dev), torch.randn(1, 1536, device=dev)
ms = ev_time(lambda: modulated_norm(x, sc, sh))
res["timing"]["modulated_norm 1x32760x1536"] = dict(ms=ms, gbps=2 * 2 * x.numel() / ms / 1e6)
ms = ev_time(lambda: (F.layer_norm(x.float(), (1536,), eps=1e-6) * (1 + sc) + sh).bfloat16())
res["timing"]["torch layer_norm+modulate (as diffusers)"] = dict(ms=ms)
q = torch.randn(1, 32760, 12, 128, device=dev).bfloat16()
ms = ev_time(lambda: rope3d(q, (21, 30, 52)))
res["timing"]["rope3d 1x32760x12x128"] = dict(ms=ms, gbps=2 * 2 * q.numel() / ms / 1e6)
for c in res["checks"]:
    c["ok"] = c["rel_err"] < 1e-2
    print(c)
print(json.dumps(res["timing"], indent=1))
print("all checks ok:", all(c["ok"] for c in res["checks"]))
json.dump(res, open(os.path.join(os.environ.get("OUT", "/tmp"), "elementwise_check.json"), "w"), indent=1)
