"""Device-side check and timing of kernels/cuda/attention.cu against torch SDPA, same process.

Run on the GPU machine (PyTorch + CuPy are preinstalled there):
    python3 kernels/bench/attention_vs_sdpa.py [path/to/kernels/cuda]
Correctness: fresh random inputs per case, output poisoned with NaN first, relative error
||out - ref|| / ||ref|| against fp32 SDPA on the upcast inputs. Timing: CUDA events, median of
20 after warm-up, useful FLOPs 4 * B * H * Lq * Lk * D. Writes $OUT/attention_vs_sdpa.json.
"""

import json
import os
import sys

import cupy
import numpy as np
import torch

CUDA_DIR = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "cuda")
# name: (source, head_dim, warps, block_m, shared bytes)
VARIANTS = {
    "attention_mma_d128_w8_n64": ("attention.cu", 128, 8, 128, (128 * 128 + 4 * 64 * 128) * 2),
    "attention_mma_d64_w8_n64": ("attention.cu", 64, 8, 128, (128 * 64 + 4 * 64 * 64) * 2),
    "attention_wgmma_tma_d128": ("attention_tma.cu", 128, 12, 128, 7 * 128 * 128 * 2 + 1024 + 7 * 8),
}
dev = torch.device("cuda")
cc = torch.cuda.get_device_capability()


def nvrtc_cubin(path, arch):
    """Compile like the Rust side does (NVRTC, exact arch, CUBIN) and return the .cubin path."""
    import ctypes
    import glob

    cands = glob.glob("/usr/local/cuda*/targets/x86_64-linux/lib/libnvrtc.so.13") + glob.glob("/usr/local/cuda*/lib64/libnvrtc.so.13")
    lib = ctypes.CDLL(cands[0])
    prog = ctypes.c_void_p()
    # As the Rust side compiles it: common.cuh, then the .cu file.
    src = open(os.path.join(os.path.dirname(path), "common.cuh"), "rb").read() + open(path, "rb").read()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, os.path.basename(path).encode(), 0, None, None) == 0
    opts = [f"--gpu-architecture={arch}".encode(), b"-std=c++17"]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    if rc:
        raise RuntimeError(log.value.decode())
    lib.nvrtcGetCUBINSize(prog, ctypes.byref(n))
    buf = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetCUBIN(prog, buf)
    out = f"/tmp/{os.path.basename(path)}.{arch}.cubin"
    open(out, "wb").write(buf.raw)
    return out


# ONLY=prefix keeps the variants whose name starts with it (run risky ones in their own process).
VARIANTS = {k: v for k, v in VARIANTS.items() if k.startswith(os.environ.get("ONLY", ""))}
arch = f"sm_{cc[0]}{cc[1]}"
MODULES = {"attention.cu": cupy.RawModule(path=nvrtc_cubin(os.path.join(CUDA_DIR, "attention.cu"), arch))}
TMA = {}
if cc == (9, 0) and any(v[0] == "attention_tma.cu" for v in VARIANTS.values()):
    import ctypes

    from cuda.bindings import driver as cu

    cu.cuInit(0)
    torch.zeros(1, device=dev)  # PyTorch's primary context, current on this thread
    err, ctx = cu.cuCtxGetCurrent()
    if int(ctx) == 0:
        _, ctx = cu.cuDevicePrimaryCtxRetain(torch.cuda.current_device())
        cu.cuCtxSetCurrent(ctx)
    err, tma_mod = cu.cuModuleLoad(nvrtc_cubin(os.path.join(CUDA_DIR, "attention_tma.cu"), "sm_90a").encode())
    assert err == cu.CUresult.CUDA_SUCCESS, err
    MODULES["attention_tma.cu"] = None

    def tensor_map(t):
        """[B, L, H, D] bf16 as dims (D, H, L, B), 64 x 1 x 128 x 1 boxes, 128-byte swizzle."""
        b, l, h, d = t.shape
        err, tmap = cu.cuTensorMapEncodeTiled(
            cu.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, cu.cuuint32_t(4), t.data_ptr(),
            [cu.cuuint64_t(x) for x in (d, h, l, b)],
            [cu.cuuint64_t(x) for x in (t.stride(2) * 2, t.stride(1) * 2, t.stride(0) * 2)],
            [cu.cuuint32_t(x) for x in (64, 1, 128, 1)], [cu.cuuint32_t(1)] * 4,
            cu.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE, cu.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_128B,
            cu.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            cu.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)
        assert err == cu.CUresult.CUDA_SUCCESS, err
        return (ctypes.c_ubyte * 128).from_buffer_copy(ctypes.string_at(tmap.getPtr(), 128))

    def launch_tma(name, q, k, v, o, scale):
        _, d, _, bm, smem = VARIANTS[name]
        err, fn = cu.cuModuleGetFunction(tma_mod, name.encode())
        assert err == cu.CUresult.CUDA_SUCCESS, err
        cu.cuFuncSetAttribute(fn, cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem)
        b, lq, h, _ = q.shape
        # keep the maps alive with the launch
        args = [tensor_map(q), tensor_map(k), tensor_map(v), ctypes.c_void_p(o.data_ptr()), ctypes.c_int(lq),
                ctypes.c_int(k.shape[1]), ctypes.c_longlong(o.stride(0)), ctypes.c_longlong(o.stride(1)),
                ctypes.c_longlong(o.stride(2)), ctypes.c_float(scale * 1.4426950408889634)]
        ptrs = (ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args])
        TMA["keep"] = (args, ptrs)
        err, = cu.cuLaunchKernel(fn, (lq + bm - 1) // bm, h, b, 384, 1, 1, smem,
                                 torch.cuda.current_stream().cuda_stream, ctypes.addressof(ptrs), 0)
        assert err == cu.CUresult.CUDA_SUCCESS, err
else:
    VARIANTS = {k: v for k, v in VARIANTS.items() if v[0] in MODULES}


def launch(name, q, k, v, o, scale):
    src, d, warps, bm, smem = VARIANTS[name]
    if src == "attention_tma.cu":
        return launch_tma(name, q, k, v, o, scale)
    fn = MODULES[src].get_function(name)
    fn.max_dynamic_shared_size_bytes = smem
    b, lq, h, _ = q.shape
    lk = k.shape[1]
    args = [np.uint64(t.data_ptr()) for t in (q, k, v, o)] + [np.int32(lq), np.int32(lk)]
    for t in (q, k, v, o):
        args += [np.int64(t.stride(0)), np.int64(t.stride(1)), np.int64(t.stride(2))]
    args.append(np.float32(scale * 1.4426950408889634))
    fn(((lq + bm - 1) // bm, h, b), (32 * warps,), tuple(args), shared_mem=smem)


def ev_time(fn, warm=3, reps=20):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def check(name, b, lq, lk, h, d):
    q = torch.randn(b, lq, h, d, device=dev, dtype=torch.bfloat16)
    k = torch.randn(b, lk, h, d, device=dev, dtype=torch.bfloat16)
    v = torch.randn(b, lk, h, d, device=dev, dtype=torch.bfloat16)
    o = torch.full_like(q, float("nan"))
    scale = d**-0.5
    launch(name, q, k, v, o, scale)
    torch.cuda.synchronize()
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.float().transpose(1, 2), k.float().transpose(1, 2), v.float().transpose(1, 2)
    ).transpose(1, 2)
    finite = bool(torch.isfinite(o).all())
    err = float((o.float() - ref).norm() / ref.norm())
    return dict(kernel=name, shape=[b, lq, lk, h, d], rel_err=err, all_written=finite, ok=finite and err < 1e-2)


res = {"gpu": torch.cuda.get_device_name(), "cc": list(cc), "torch": torch.__version__, "checks": [], "timing": {}}
if os.environ.get("PROFILE"):
    # One launch per variant at the Wan shape, for a profiler wrapped around this script.
    L, H, D = 32760, 12, 128
    q = torch.randn(1, L, H, D, device=dev, dtype=torch.bfloat16)
    for name in VARIANTS:
        launch(name, q, q, q, torch.empty_like(q), D**-0.5)
    torch.cuda.synchronize()
    sys.exit(0)
for name, (_, d, _, _, _) in VARIANTS.items():
    for b, lq, lk, h in ((1, 4096, 4096, 4), (2, 1000, 777, 3), (1, 300, 512, 2), (1, 32760, 512, 12)):
        r = check(name, b, lq, lk, h, d)
        res["checks"].append(r)
        print(r, flush=True)

L, H, D = 32760, 12, 128
flops = 4 * L * L * D * H
q = torch.randn(1, L, H, D, device=dev, dtype=torch.bfloat16)
k = torch.randn_like(q)
v = torch.randn_like(q)
o = torch.empty_like(q)
qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

ms = ev_time(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt))
res["timing"]["sdpa_default"] = dict(ms=ms, tflops=flops / ms / 1e9)
with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
    ms = ev_time(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt))
res["timing"]["sdpa_flash2"] = dict(ms=ms, tflops=flops / ms / 1e9)
for name, (_, d, _, _, _) in VARIANTS.items():
    if d != D:
        continue
    ms = ev_time(lambda: launch(name, q, k, v, o, D**-0.5))
    res["timing"][name] = dict(ms=ms, tflops=flops / ms / 1e9)
# cross-attention shape of Wan 1.3B: 32760 queries, 512 text tokens
kc = torch.randn(1, 512, H, D, device=dev, dtype=torch.bfloat16)
vc = torch.randn_like(kc)
cflops = 4 * L * 512 * D * H
for name in VARIANTS:
    if VARIANTS[name][1] == D:
        ms = ev_time(lambda: launch(name, q, kc, vc, o, D**-0.5))
        res["timing"]["cross_" + name] = dict(ms=ms, tflops=cflops / ms / 1e9)
kct, vct = (t.transpose(1, 2).contiguous() for t in (kc, vc))
ms = ev_time(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kct, vct))
res["timing"]["cross_sdpa_default"] = dict(ms=ms, tflops=cflops / ms / 1e9)

print(json.dumps(res["timing"], indent=1))
print("all checks ok:", all(c["ok"] for c in res["checks"]))
out = os.environ.get("OUT", "/tmp")
json.dump(res, open(os.path.join(out, f"attention_vs_sdpa{os.environ.get('ONLY', '')}.json"), "w"), indent=1)
