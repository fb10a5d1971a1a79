#!/usr/bin/env python3
"""Writes a Wan 2.1 T2V 1.3B transformer with the published config and random bf16 weights
(sharded like the hub checkpoints, with an index) plus forward inputs for 33 frames at 256x256,
for the CPU memory/speed measurement in docs/PERFORMANCE.md.

Usage: make_wan21_1p3b_random.py OUT_DIR
Tensor names and shapes come from diffusers' own module built on the meta device (no memory).
"""

import json
import math
import sys
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

# transformer/config.json of Wan-AI/Wan2.1-T2V-1.3B-Diffusers
CONFIG = {
    "_class_name": "WanTransformer3DModel",
    "added_kv_proj_dim": None,
    "attention_head_dim": 128,
    "cross_attn_norm": True,
    "eps": 1e-06,
    "ffn_dim": 8960,
    "freq_dim": 256,
    "image_dim": None,
    "in_channels": 16,
    "num_attention_heads": 12,
    "num_layers": 30,
    "out_channels": 16,
    "patch_size": [1, 2, 2],
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 1024,
    "text_dim": 4096,
}
SHARD_BYTES = 1 << 30


def main(out: Path) -> None:
    model_dir = out / "transformer"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(CONFIG, indent=2))
    with torch.device("meta"):
        model = WanTransformer3DModel(**{k: v for k, v in CONFIG.items() if not k.startswith("_")})
    gen = torch.Generator().manual_seed(0)
    shards, current, size = [], {}, 0
    for name, p in model.state_dict().items():
        if p.dim() >= 2:
            t = torch.randn(p.shape, generator=gen) / math.sqrt(math.prod(p.shape[1:]))
        else:
            t = torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if name.endswith("norm_q.weight")
                                                              or name.endswith("norm_k.weight")
                                                              or "norm2.weight" in name else 0.0)
        current[name] = t.to(torch.bfloat16)
        size += current[name].numel() * 2
        if size >= SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
    if current:
        shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(model_dir / file))
        weight_map.update({name: file for name in shard})
    (model_dir / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    # 33 frames at 256x256 -> Wan VAE latents of 9 x 32 x 32 (4x temporal, 8x spatial).
    save_file({
        "hidden_states": torch.randn(1, 16, 9, 32, 32, generator=gen),
        "timestep": torch.tensor([999.0]),
        "encoder_hidden_states": torch.randn(1, 512, 4096, generator=gen),
    }, str(out / "inputs.safetensors"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
