"""cuDNN 3x3 convolutions as the upscalers run them (bf16, 4 frames of 480x832), in PyTorch's NCHW
and channels-last (NHWC) layouts, with and without cuDNN's autotuner: which layout the engine's
convolutions should use. Median of CUDA-event timings after warm-up; TFLOP/s of the useful work.

    python3 conv_layouts.py [--batch 4] [--height 480] [--width 832]
"""

import argparse
import json

import torch
import torch.nn.functional as F


def time_ms(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    args = parser.parse_args()
    b, h, w = args.batch, args.height, args.width
    # (in, out): Real-ESRGAN x4plus's dense block (64 features, growth 32) and its trunk; the
    # compact net's body and last layer; RIFE-sized layers.
    shapes = [(64, 32), (96, 32), (128, 32), (160, 32), (192, 64), (64, 64), (3, 64), (64, 48)]
    for benchmark in (False, True):
        torch.backends.cudnn.benchmark = benchmark
        for cin, cout in shapes:
            x = torch.randn(b, cin, h, w, device="cuda", dtype=torch.bfloat16)
            weight = torch.randn(cout, cin, 3, 3, device="cuda", dtype=torch.bfloat16) * 0.05
            bias = torch.randn(cout, device="cuda", dtype=torch.bfloat16)
            flops = 2 * b * h * w * cin * cout * 9
            row = {"in": cin, "out": cout, "benchmark": benchmark}
            for layout, fmt in (("nchw", torch.contiguous_format), ("nhwc", torch.channels_last)):
                xs, ws = x.contiguous(memory_format=fmt), weight.contiguous(memory_format=fmt)
                ms = time_ms(lambda: F.conv2d(xs, ws, bias, padding=1))
                row[layout + "_ms"] = round(ms, 4)
                row[layout + "_tflops"] = round(flops / ms / 1e9, 1)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
