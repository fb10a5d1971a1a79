#!/usr/bin/env python3
"""The reference for `videosdgx bench llm`: transformers' own model and `generate` at a preset's
published config with random bf16 weights on one GPU, measured as ours is measured.

- prefill: one forward over `--prompt-tokens` random tokens into a fresh cache (median of 5);
- decode: `generate(do_sample=False, min_new_tokens=N, max_new_tokens=N)` minus a one-token
  `generate`, over N - 1 steps (median of 3);
- encode: every hidden state of `--encode-tokens` tokens (`output_hidden_states=True`), what a
  pipeline's text encoder calls (median of 5);
- copy: device-to-device bandwidth of a 1 GiB copy, read plus write.

With --compile, `generate` runs over a static cache, which makes transformers compile its decoding
forward (`torch.compile`, CUDA graphs: its own `CompileConfig`), the documented fast path;
compilation happens in the warm-up. Prefill and encode stay eager.

Run: python3 kernels/bench/llm_reference.py --preset qwen3-4b [--compile]
"""

import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Qwen3Config, Qwen3ForCausalLM

# The published configs (Qwen/Qwen3-4B and -8B config.json; google/gemma-3-4b-it and -12b-it's
# text_config), as host/cli/src/commands/bench/configs.rs builds them.
PRESETS = {
    "qwen3-4b": (Qwen3ForCausalLM, Qwen3Config, dict(hidden_size=2560, intermediate_size=9728, tie_word_embeddings=True)),
    "qwen3-8b": (Qwen3ForCausalLM, Qwen3Config, dict(hidden_size=4096, intermediate_size=12288, tie_word_embeddings=False)),
    "gemma3-4b": (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8, num_key_value_heads=4),
    ),
    "gemma3-12b": (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        dict(hidden_size=3840, intermediate_size=15360, num_hidden_layers=48, num_attention_heads=16, num_key_value_heads=8),
    ),
}
QWEN3 = dict(
    vocab_size=151936,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
    max_position_embeddings=40960,
)
GEMMA3 = dict(
    vocab_size=262208,
    head_dim=256,
    sliding_window=1024,
    query_pre_attn_scalar=256,
    rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        "full_attention": {"rope_type": "linear", "rope_theta": 1_000_000.0, "factor": 8.0},
    },
    max_position_embeddings=131072,
)


def build(preset):
    model_class, config_class, own = PRESETS[preset]
    base = QWEN3 if config_class is Qwen3Config else GEMMA3
    config = config_class(**{**base, **own})
    torch.manual_seed(0)
    with torch.device("cuda"):
        torch.set_default_dtype(torch.bfloat16)
        model = model_class(config).eval()
        torch.set_default_dtype(torch.float32)
    params = sum(p.numel() for p in model.parameters())
    return model, params


def timed(f, reps):
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        f()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def copy_bandwidth():
    x = torch.randn(1 << 28, device="cuda")
    y = torch.empty_like(x)
    y.copy_(x)
    ms = timed(lambda: y.copy_(x), 10)
    return 2 * x.numel() * 4 / ms / 1e6


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", choices=sorted(PRESETS), default="qwen3-4b")
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--encode-tokens", type=int, default=512)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    model, params = build(args.preset)
    vocab = model.config.vocab_size
    gen = torch.Generator(device="cuda").manual_seed(1)
    prompt = torch.randint(0, vocab, (1, args.prompt_tokens), device="cuda", generator=gen)
    encode_ids = torch.randint(0, vocab, (1, args.encode_tokens), device="cuda", generator=gen)
    # No early stop: every run produces exactly the tokens asked for.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    if args.compile:
        model.generation_config.cache_implementation = "static"

    def generate(n):
        with torch.no_grad():
            return model.generate(prompt, do_sample=False, min_new_tokens=n, max_new_tokens=n)

    started = time.perf_counter()
    generate(args.new_tokens)
    generate(args.new_tokens)
    warmup_s = time.perf_counter() - started

    with torch.no_grad():
        prefill_ms = timed(lambda: generate(1), 5)
        total_ms = timed(lambda: generate(args.new_tokens), 3)
        encode_ms = timed(lambda: model.model(encode_ids, output_hidden_states=True), 5)
    decode_ms = (total_ms - prefill_ms) / (args.new_tokens - 1)
    copy = copy_bandwidth()
    weight_gb = params * 2 / 1e9
    report = {
        "gpu": torch.cuda.get_device_name(0),
        "preset": args.preset,
        "compiled": args.compile,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "params_b": params / 1e9,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "prefill_ms": prefill_ms,
        "prefill_tokens_per_s": args.prompt_tokens / prefill_ms * 1e3,
        "decode_ms_per_token": decode_ms,
        "decode_tokens_per_s": 1e3 / decode_ms,
        "copy_gb_per_s": copy,
        "roofline_fraction": (1e3 / decode_ms) / (copy / weight_gb),
        "encode_tokens": args.encode_tokens,
        "encode_ms": encode_ms,
        "warmup_s": warmup_s,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
