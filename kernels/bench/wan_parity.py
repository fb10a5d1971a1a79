# Full-size parity of our Wan transformer forward on the GPU (bf16, fused kernels) against diffusers'
# WanTransformer3DModel with the same random weights and inputs.
#
#   python3 wan_parity.py prepare DIR [LAYERS]   # weights (bf16) + inputs + references into DIR
#   videosdgx model forward --model DIR/transformer --inputs DIR/inputs.safetensors \
#       --out DIR/ours.safetensors --device cuda --dtype bf16
#   python3 wan_parity.py compare DIR            # errors as JSON (also DIR/parity.json)
#
# Weights: diffusers' own initialisation, then every norm weight 1 + 0.1 N(0,1) and norm bias
# 0.1 N(0,1) so the affine and qk-norm terms are exercised; the model is rounded to bf16 once and
# both references use exactly those bf16 values: `ref32` runs them in fp32 (TF32 off), `ref16` in
# bf16 as diffusers would. Inputs are fresh N(0,1) draws rounded to bf16 (seed printed).
import json, os, sys, time
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file, load_file

CFG = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
           out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
           cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)


def prepare(d, layers):
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    t0 = time.time()
    m = WanTransformer3DModel(**{**CFG, "num_layers": layers})
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif "norm" in name and name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    m = m.to(torch.bfloat16)
    m.save_pretrained(os.path.join(d, "transformer"), safe_serialization=True)
    x = torch.randn(1, 16, 21, 60, 104).bfloat16()
    e = torch.randn(1, 512, 4096).bfloat16()
    t = torch.tensor([500.0])
    save_file({"hidden_states": x.float(), "timestep": t, "encoder_hidden_states": e.float()},
              os.path.join(d, "inputs.safetensors"))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    refs = {}
    with torch.no_grad():
        m = m.cuda()
        refs["ref16"] = m(hidden_states=x.cuda(), timestep=t.cuda(), encoder_hidden_states=e.cuda(),
                          return_dict=False)[0].float().cpu()
        m = m.float()
        refs["ref32"] = m(hidden_states=x.float().cuda(), timestep=t.cuda(),
                          encoder_hidden_states=e.float().cuda(), return_dict=False)[0].cpu()
    save_file(refs, os.path.join(d, "refs.safetensors"))
    print(json.dumps(dict(seed=seed, layers=layers, prepare_s=time.time() - t0)), flush=True)


def errs(a, b):
    a, b = a.double(), b.double()
    return dict(rel=((a - b).norm() / b.norm()).item(), max_abs=(a - b).abs().max().item(),
                ref_max_abs=b.abs().max().item(), finite=bool(torch.isfinite(a).all()))


def compare(d):
    refs = load_file(os.path.join(d, "refs.safetensors"))
    ours = load_file(os.path.join(d, "ours.safetensors"))["sample"]
    res = {"ours_vs_ref32": errs(ours, refs["ref32"]),
           "diffusers_bf16_vs_ref32": errs(refs["ref16"], refs["ref32"]),
           "ours_vs_diffusers_bf16": errs(ours, refs["ref16"])}
    print(json.dumps(res, indent=1))
    json.dump(res, open(os.path.join(d, "parity.json"), "w"), indent=1)


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 30)
    else:
        compare(sys.argv[2])
