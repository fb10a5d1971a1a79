"""The reference VAE decode's GPU memory measured the way `videosdgx bench wan --component vae`
measures ours: device memory in use (total - free from cudaMemGetInfo, so the CUDA context and the
caching allocator's reserve count), sampled every millisecond during one decode after a warm-up,
next to PyTorch's own allocator peaks. Same shapes as shared/bench/diffusers_wan.py's `vae`.

    python3 vae_memory.py        # needs torch with CUDA and diffusers
"""

import json
import threading
import time

import torch
from diffusers import AutoencoderKLWan

dev = "cuda"
vae = AutoencoderKLWan().to(dev, torch.bfloat16).eval()
z = torch.randn(1, 16, 21, 60, 104, device=dev, dtype=torch.bfloat16)

with torch.no_grad():
    vae.decode(z)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            free, total = torch.cuda.mem_get_info()
            peak[0] = max(peak[0], total - free)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    vae.decode(z)
    torch.cuda.synchronize()
    stop.set()
    sampler.join()

gib = 2**30
print(json.dumps({
    "gpu": torch.cuda.get_device_name(),
    "device_in_use_peak_gib": peak[0] / gib,
    "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / gib,
    "max_memory_reserved_gib": torch.cuda.max_memory_reserved() / gib,
}, indent=1))
