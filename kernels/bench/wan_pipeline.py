"""The whole Wan 2.1 T2V pipeline on random weights, ours against diffusers' WanPipeline on one GPU.

    python3 wan_pipeline.py prepare DIR [--layout wan2.1-1.3b|tiny] [--height 480 --width 832 --frames 81]
        [--text-from tests/fixtures/tiny-wan-t2v]
    python3 wan_pipeline.py anchor DIR [--steps 50] [--device cuda|cpu] [--dtype bf16|f32]
    python3 wan_pipeline.py compare DIR [--ours-log FILE]

prepare writes a diffusers pipeline directory (WanPipeline.save_pretrained: bf16 safetensors, model_index.json):
a transformer of the published Wan 2.1 1.3B config with diffusers' default random init (as
shared/bench/diffusers_wan.py), the default AutoencoderKLWan (random), the UniPC scheduler as the Wan
checkpoints configure it, and the tiny tokenizer/text encoder of tests/fixtures/tiny-wan-t2v (loaded, never
run: the prompts come as embeddings). Beside them, one tensor per file: prompt_embeds.safetensors and
negative_prompt_embeds.safetensors ([1, 512, text_dim]) and latents.safetensors (f32 [1, 16, T, H/8, W/8]),
all seeded. `--layout tiny` is the same structure at toy width, to check the script on a CPU.

anchor runs WanPipeline on them (transformer bf16, VAE f32 as the diffusers Wan examples load it, guidance 5,
output_type "np") after one untimed 2-step warm-up call at the same size, which takes the lazy init (cuDNN and
cuBLAS handles, autotuning, the allocator's growth) and during which device memory in use is sampled as
kernels/bench/reference_memory.py samples it (max_memory_allocated spans both calls). Timings are wall clock
around synchronized CUDA work: per-step from callback_on_step_end timestamps, decode_s from the last step to the
returned frames. Prints JSON and writes anchor.json and the video (safetensors key `video`, f32
[frames, height, width, 3] in [0, 1], the layout `videosdgx generate --save-tensor` writes) to
DIR/anchor.safetensors.

compare reads DIR/ours.safetensors and DIR/anchor.safetensors and prints their relative difference; with
--ours-log (our generate's stderr, each line prefixed with $EPOCHREALTIME) it adds our per-step and decode times.

Checked on the CPU (diffusers 0.42.1, torch 2.15 CPU, our debug build): video rel L2 ours vs anchor 5.7e-7 in
f32 (tiny, 32x48, 9 frames, 6 steps), 1.1e-6 in f32 (1.3B layout, 32x32, 5 frames, 2 steps), 1.9e-3 with the
transformer in bf16 (tiny).
"""

import argparse
import json
import shutil
import statistics
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tiny-wan-t2v"
LAYOUTS = {
    "wan2.1-1.3b": dict(
        transformer=dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30, text_dim=4096),
        vae=dict(),
    ),
    "tiny": dict(
        transformer=dict(num_attention_heads=2, attention_head_dim=16, ffn_dim=64, num_layers=2, text_dim=64),
        vae=dict(base_dim=16),
    ),
}
# UniPCMultistepScheduler as the Wan 2.1 diffusers checkpoints configure it (same as the tiny fixture).
SCHEDULER = dict(
    prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000,
    solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero",
    timestep_spacing="linspace", disable_corrector=[],
)
UMT5_STD, PROMPT_TOKENS = 0.2, 24  # UMT5-XXL output scale; WanPipeline zeroes the padding past the prompt
GIB = 2**30


def prepare(a):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    layout = LAYOUTS[a.layout]
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), in_channels=16, out_channels=16, freq_dim=256, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, **layout["transformer"],
    ).to(torch.bfloat16)
    vae = AutoencoderKLWan(**layout["vae"]).to(torch.bfloat16)
    out, text_from = Path(a.dir), Path(a.text_from)
    shutil.rmtree(out, ignore_errors=True)
    WanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae,
                scheduler=UniPCMultistepScheduler(**SCHEDULER)).save_pretrained(out, safe_serialization=True)
    # The prompt side is copied verbatim (loaded by both pipelines, never run: the prompts come as embeddings).
    index, text_index = (json.loads((d / "model_index.json").read_text()) for d in (out, text_from))
    for part in ("tokenizer", "text_encoder"):
        shutil.copytree(text_from / part, out / part)
        index[part] = text_index[part]
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    g = torch.Generator().manual_seed(1)
    text_dim = layout["transformer"]["text_dim"]
    for name in ("prompt_embeds", "negative_prompt_embeds"):
        embeds = torch.zeros(1, 512, text_dim)
        embeds[:, :PROMPT_TOKENS] = torch.randn(1, PROMPT_TOKENS, text_dim, generator=g) * UMT5_STD
        save_file({name: embeds}, out / f"{name}.safetensors")
    shape = (1, 16, (a.frames - 1) // 4 + 1, a.height // 8, a.width // 8)
    save_file({"latents": torch.randn(shape, generator=g)}, out / "latents.safetensors")
    (out / "size.json").write_text(json.dumps(dict(height=a.height, width=a.width, frames=a.frames)))
    print(json.dumps(dict(dir=str(out), layout=a.layout, latents=shape,
                          transformer_params_b=sum(p.numel() for p in transformer.parameters()) / 1e9)))


def anchor(a):
    from diffusers import AutoencoderKLWan, WanPipeline

    d, dev = Path(a.dir), a.device
    cuda = dev.startswith("cuda")
    size = json.loads((d / "size.json").read_text())
    vae = AutoencoderKLWan.from_pretrained(d, subfolder="vae", torch_dtype=torch.float32)
    dtype = dict(bf16=torch.bfloat16, f32=torch.float32)[a.dtype]
    pipe = WanPipeline.from_pretrained(d, vae=vae, torch_dtype=dtype).to(dev)
    inputs = {k: load_file(d / f"{k}.safetensors")[k].to(dev, torch.float32 if k == "latents" else dtype)
              for k in ("latents", "prompt_embeds", "negative_prompt_embeds")}
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    stamps = []

    def on_step(_pipe, _i, _t, kwargs):
        sync()
        stamps.append(time.perf_counter())
        return kwargs

    def call(steps):
        stamps.clear()
        sync()
        start = time.perf_counter()
        video = pipe(height=size["height"], width=size["width"], num_frames=size["frames"], **inputs,
                     num_inference_steps=steps, guidance_scale=5.0, output_type="np",
                     callback_on_step_end=on_step).frames[0]
        sync()
        return start, time.perf_counter(), torch.from_numpy(video).float()

    peak, stop = [0], threading.Event()

    def sample():  # device memory in use, as kernels/bench/reference_memory.py measures it
        while not stop.is_set():
            free, total = torch.cuda.mem_get_info()
            peak[0] = max(peak[0], total - free)
            time.sleep(0.001)

    # Device memory is sampled in the warm-up (same shapes, so the same peak) to keep the sampler thread's GIL
    # traffic out of the timed call.
    if cuda:
        sampler = threading.Thread(target=sample)
        sampler.start()
    call(2)
    if cuda:
        stop.set()
        sampler.join()
    start, end, video = call(a.steps)
    step_s = [b - a_ for a_, b in zip([start] + stamps[:-1], stamps)]
    save_file({"video": video.contiguous()}, d / "anchor.safetensors")
    res = dict(
        gpu=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__, dtype=a.dtype,
        steps=a.steps, **size, total_s=end - start, denoise_s=stamps[-1] - start,
        per_step_s=statistics.median(step_s), first_step_s=step_s[0], decode_s=end - stamps[-1],
        video_mean=video.mean().item(), video_std=video.std().item(),
    )
    if cuda:
        res.update(max_memory_allocated_gib=torch.cuda.max_memory_allocated() / GIB,
                   device_in_use_peak_gib=peak[0] / GIB)
    print(json.dumps(res, indent=1))
    (d / "anchor.json").write_text(json.dumps(res, indent=1))


def ours_times(log):
    """Per-step and decode seconds from our generate's progress lines ("<epoch> Denoising 3/50")."""
    marks = {}
    for line in Path(log).read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in ("Denoising", "Decoding"):
            marks[(parts[1], int(parts[2].split("/")[0]))] = float(parts[0])
    ticks = sorted(v for (stage, _), v in marks.items() if stage == "Denoising")
    steps = [b - a for a, b in zip(ticks, ticks[1:])]
    return dict(denoise_s=ticks[-1] - ticks[0], per_step_s=statistics.median(steps), first_step_s=steps[0],
                decode_s=marks[("Decoding", 1)] - marks[("Decoding", 0)])


def compare(a):
    d = Path(a.dir)
    ours, ref = load_file(d / "ours.safetensors")["video"], load_file(d / "anchor.safetensors")["video"]
    if ours.shape != ref.shape:
        raise SystemExit(f"shapes differ: ours {tuple(ours.shape)}, anchor {tuple(ref.shape)}")
    diff = (ours - ref).float()
    res = dict(shape=list(ours.shape), rel_l2=(diff.norm() / ref.norm()).item(), max_abs=diff.abs().max().item(),
               mean_abs=diff.abs().mean().item(), ours_mean=ours.mean().item(), ours_std=ours.std().item(),
               anchor_mean=ref.mean().item(), anchor_std=ref.std().item())
    if a.ours_log:
        res["ours"] = ours_times(a.ours_log)
        anchor_json = d / "anchor.json"
        if anchor_json.exists():
            ref_t = json.loads(anchor_json.read_text())
            res["anchor"] = {k: ref_t[k] for k in ("denoise_s", "per_step_s", "first_step_s", "decode_s")}
            res["per_step_ratio_ours_over_anchor"] = res["ours"]["per_step_s"] / ref_t["per_step_s"]
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("prepare")
    s.add_argument("dir")
    s.add_argument("--layout", choices=LAYOUTS, default="wan2.1-1.3b")
    s.add_argument("--height", type=int, default=480)
    s.add_argument("--width", type=int, default=832)
    s.add_argument("--frames", type=int, default=81)
    s.add_argument("--text-from", default=FIXTURE, help="pipeline dir whose tokenizer/text_encoder to copy")
    s = sub.add_parser("anchor")
    s.add_argument("dir")
    s.add_argument("--steps", type=int, default=50)
    s.add_argument("--device", default="cuda")
    s.add_argument("--dtype", choices=("bf16", "f32"), default="bf16", help="transformer dtype (the VAE runs in f32)")
    s = sub.add_parser("compare")
    s.add_argument("dir")
    s.add_argument("--ours-log")
    a = p.parse_args()
    torch.set_grad_enabled(False)
    dict(prepare=prepare, anchor=anchor, compare=compare)[a.cmd](a)
