//! GPU checks (feature `cuda`, run on a machine with an NVIDIA GPU): every kernel against its CPU
//! reference on fresh random inputs (the seed is printed so a failure can be replayed with
//! `VIDEOSDGX_CHECK_SEED`), with outputs poisoned with NaN first so an unwritten element fails.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, IndexOp, Tensor};
use videosdgx_kernels::{
    CausalMask, ChannelDivisor, FramePadding, NormKind, NormRope, NormSpec, RopeGrid, RotaryPairs,
    SpatialPad, reference,
};

fn gpu() -> Device {
    videosdgx_kernels::set_poison_outputs(true);
    let dev = Device::new_cuda(0).expect("the GPU checks need a CUDA device");
    let seed = std::env::var("VIDEOSDGX_CHECK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64
        });
    eprintln!("VIDEOSDGX_CHECK_SEED={seed}");
    dev.set_seed(seed).unwrap();
    dev
}

fn randn(shape: &[usize], dev: &Device) -> Tensor {
    Tensor::randn(0f32, 1f32, shape, dev)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap()
}

/// Every element of `t` in f32, on the CPU (exact for e4m3, bf16 and f32).
fn values(t: &Tensor) -> Vec<f32> {
    cpu(t)
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// ||got - want|| / ||want|| in f32 on the CPU; NaN anywhere in `got` fails.
fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    let got = got
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let want = want
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    assert_eq!(got.dims(), want.dims());
    let values = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(
        values.iter().all(|v| v.is_finite()),
        "output has unwritten (NaN) or non-finite elements"
    );
    let diff = (got - &want)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .sqrt();
    diff / want
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .sqrt()
}

fn cpu(t: &Tensor) -> Tensor {
    t.to_device(&Device::Cpu).unwrap()
}

#[test]
fn attention_matches_reference_on_self_and_cross_shapes() {
    let dev = gpu();
    // (batch, q_len, kv_len, heads, head_dim): ragged lengths, Wan's short text cross-attention,
    // both head dims.
    for (b, lq, lk, h, d) in [
        (2, 1000, 777, 3, 128),
        (1, 300, 512, 2, 128),
        (1, 2100, 2100, 2, 128),
        (1, 1500, 1037, 4, 64),
    ] {
        let (q, k, v) = (
            randn(&[b, lq, h, d], &dev),
            randn(&[b, lk, h, d], &dev),
            randn(&[b, lk, h, d], &dev),
        );
        let scale = (d as f32).powf(-0.5);
        let got = videosdgx_kernels::attention(&q, &k, &v, scale).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let want = reference::attention(&cpu(&q), &cpu(&k), &cpu(&v), scale).unwrap();
        let err = rel_err(&got, &want);
        assert!(err < 1e-2, "[{b},{lq},{lk},{h},{d}] rel err {err}");
    }
}

#[test]
fn attention_reads_strided_views_of_a_fused_qkv_projection() {
    let dev = gpu();
    let (b, l, h, d) = (1, 700, 4, 128);
    // [B, L, 3, H, D] as a fused QKV linear would give it; q/k/v are views with no copy.
    let qkv = randn(&[b, l, 3, h, d], &dev);
    let (q, k, v) = (
        qkv.i((.., .., 0)).unwrap(),
        qkv.i((.., .., 1)).unwrap(),
        qkv.i((.., .., 2)).unwrap(),
    );
    assert!(!q.is_contiguous());
    let got = videosdgx_kernels::attention(&q, &k, &v, 0.1).unwrap();
    let want = reference::attention(&cpu(&q), &cpu(&k), &cpu(&v), 0.1).unwrap();
    let err = rel_err(&got, &want);
    assert!(err < 1e-2, "rel err {err}");
}

#[test]
fn fp8_attention_matches_reference_on_its_float8_operands() {
    let dev = gpu();
    // (batch, q_len, kv_len, heads, logit gain): ragged lengths, a partial last key tile and a
    // key count that is not a multiple of 16, flat (gain 1) and peaked (gain 4) softmaxes as
    // trained models have, and a key channel with a large offset (K's per-tile scale).
    for (b, lq, lk, h, gain) in [
        (1, 2100, 2100, 2, 1.0),
        (2, 1000, 777, 3, 4.0),
        (1, 300, 130, 2, 4.0),
    ] {
        let q = (randn(&[b, lq, h, 128], &dev).to_dtype(DType::F32).unwrap() * gain)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let k = randn(&[b, lk, h, 128], &dev);
        let offset = Tensor::full(6f32, (b, lk, h, 1), &dev)
            .unwrap()
            .pad_with_zeros(3, 5, 122)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let k = (k + offset).unwrap();
        let v = randn(&[b, lk, h, 128], &dev);
        let scale = 128f32.powf(-0.5);
        let what = format!("[{b},{lq},{lk},{h}] gain {gain}");
        let got = videosdgx_kernels::attention_fp8(&q, &k, &v, scale).unwrap();
        assert_eq!((got.dims(), got.dtype()), (q.dims(), DType::BF16), "{what}");
        let (q8, k8, v8) = reference::attention_fp8_operands(&cpu(&q), &cpu(&k), &cpu(&v)).unwrap();
        let err = rel_err(&got, &reference::attention(&q8, &k8, &v8, scale).unwrap());
        let exact = rel_err(
            &got,
            &reference::attention(&cpu(&q), &cpu(&k), &cpu(&v), scale).unwrap(),
        );
        eprintln!("{what}: rel err {err} against its float8 operands, {exact} against bf16's");
        // Against attention over its own float8 operands, what remains is the probabilities' e4m3
        // rounding (H100: 2.5e-2 flat, 0.8e-2 peaked). Against the exact attention the operands'
        // rounding adds to it, the more the sharper the softmax (H100: 5.5e-2 flat, 9.5e-2
        // peaked on these random inputs; 1.2e-2 on the 14B forward after 40 blocks).
        assert!(err < 4e-2, "{what}: rel err {err}");
        assert!(
            exact < 0.15,
            "{what}: rel err against the exact attention {exact}"
        );
    }
}

#[test]
fn fp8_attention_reads_strided_views_and_refuses_other_head_dims() {
    let dev = gpu();
    let (b, l, h) = (1, 700, 4);
    let qkv = randn(&[b, l, 3, h, 128], &dev);
    let (q, k, v) = (
        qkv.i((.., .., 0)).unwrap(),
        qkv.i((.., .., 1)).unwrap(),
        qkv.i((.., .., 2)).unwrap(),
    );
    let got = videosdgx_kernels::attention_fp8(&q, &k, &v, 0.1).unwrap();
    let (q8, k8, v8) = reference::attention_fp8_operands(&cpu(&q), &cpu(&k), &cpu(&v)).unwrap();
    let err = rel_err(&got, &reference::attention(&q8, &k8, &v8, 0.1).unwrap());
    assert!(err < 4e-2, "rel err {err}");
    let x = randn(&[1, 64, 2, 64], &dev);
    let err = videosdgx_kernels::attention_fp8(&x, &x, &x, 0.1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("head dim 128"), "{err}");
    let none = Tensor::zeros((1, 0, 4, 128), DType::BF16, &dev).unwrap();
    for attention in [
        videosdgx_kernels::attention,
        videosdgx_kernels::attention_fp8,
    ] {
        let err = attention(&none, &k, &v, 0.1).unwrap_err().to_string();
        assert!(err.contains("need tokens"), "{err}");
    }
}

#[test]
fn attention_refuses_what_it_has_no_kernel_for() {
    let dev = gpu();
    let x = randn(&[1, 64, 2, 96], &dev);
    let err = videosdgx_kernels::attention(&x, &x, &x, 0.1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("head_dim 96 not supported"), "{err}");
    let x = Tensor::zeros((1, 64, 2, 128), DType::F32, &dev).unwrap();
    let err = videosdgx_kernels::attention(&x, &x, &x, 0.1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("must be bf16"), "{err}");
}

#[test]
fn causal_attention_matches_reference_for_prompts_caches_padding_and_windows() {
    let dev = gpu();
    // (batch, new queries, keys, heads, key/value heads, head_dim, window, left padding of the
    // first sequence): a Qwen3 prompt, decoding one token after a cache, a chunk after a cache,
    // a padded batch with a sliding window at Gemma 3's head dim, and head_dim 64.
    for (b, lq, lk, h, kv, d, window, pad) in [
        (1, 1000, 1000, 8, 2, 128, None, 0),
        (1, 1, 777, 8, 2, 128, None, 0),
        (1, 300, 1000, 4, 4, 128, None, 0),
        (2, 333, 333, 4, 2, 256, Some(100), 37),
        (2, 129, 200, 6, 3, 64, Some(64), 90),
    ] {
        // Keys and values as a KV cache holds them, [B, Hkv, capacity, D], cut to the keys so far
        // and viewed as [B, Lk, Hkv, D]: strided, as the decoder passes them.
        let cache = |dev: &Device| {
            randn(&[b, kv, lk + 64, d], dev)
                .narrow(2, 0, lk)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
        };
        let (q, k, v) = (randn(&[b, lq, h, d], &dev), cache(&dev), cache(&dev));
        let mask = CausalMask {
            offset: lk - lq,
            window,
            real_keys: (pad > 0).then(|| vec![(pad, lk - 1), (0, lk - 1)]),
        };
        let scale = (d as f32).powf(-0.5);
        let got = videosdgx_kernels::causal_attention(&q, &k, &v, scale, &mask).unwrap();
        assert_eq!(got.dims(), [b, lq, h, d]);
        let want = reference::causal_attention(&cpu(&q), &cpu(&k), &cpu(&v), scale, &mask).unwrap();
        let err = rel_err(&got, &want);
        assert!(
            err < 1e-2,
            "[{b},{lq},{lk},{h}/{kv},{d}] window {window:?} pad {pad}: rel err {err}"
        );
    }
}

#[test]
fn causal_attention_refuses_what_it_has_no_kernel_for() {
    let dev = gpu();
    let x = randn(&[1, 64, 2, 96], &dev);
    let err = videosdgx_kernels::causal_attention(&x, &x, &x, 0.1, &CausalMask::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("head_dim 96 not supported"), "{err}");
    let (q, kv) = (randn(&[1, 8, 3, 64], &dev), randn(&[1, 8, 2, 64], &dev));
    let err = videosdgx_kernels::causal_attention(&q, &kv, &kv, 0.1, &CausalMask::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("shapes disagree"), "{err}");
}

#[test]
fn modulated_norm_matches_reference_for_wan_norms() {
    let dev = gpu();
    let f32_randn = |shape: &[usize]| Tensor::randn(0f32, 1f32, shape, &dev).unwrap();
    // norm1/norm3 of Wan 2.1 1.3B: LayerNorm without affine, per-sample scale/shift.
    let x = randn(&[2, 777, 1536], &dev);
    let spec = NormSpec {
        scale: Some(f32_randn(&[2, 1536])),
        shift: Some(f32_randn(&[2, 1536])),
        ..NormSpec::new(NormKind::Layer, 1e-6)
    };
    // Wan 2.2 TI2V: per-token modulation, width 3072.
    let x22 = randn(&[1, 300, 3072], &dev);
    let spec22 = NormSpec {
        scale: Some(f32_randn(&[1, 300, 3072])),
        shift: Some(f32_randn(&[1, 300, 3072])),
        ..NormSpec::new(NormKind::Layer, 1e-6)
    };
    // norm2 (affine LayerNorm) and the q/k RMSNorm across heads of the 14B (width 5120).
    let x14 = randn(&[1, 100, 5120], &dev);
    let affine = NormSpec {
        weight: Some(f32_randn(&[5120])),
        bias: Some(f32_randn(&[5120])),
        ..NormSpec::new(NormKind::Layer, 1e-6)
    };
    let rms = NormSpec {
        weight: Some(f32_randn(&[5120])),
        ..NormSpec::new(NormKind::Rms, 1e-6)
    };
    for (x, spec) in [(&x, &spec), (&x22, &spec22), (&x14, &affine), (&x14, &rms)] {
        let got = videosdgx_kernels::modulated_norm(x, spec).unwrap();
        let cpu_spec = NormSpec {
            weight: spec.weight.as_ref().map(cpu),
            bias: spec.bias.as_ref().map(cpu),
            scale: spec.scale.as_ref().map(cpu),
            shift: spec.shift.as_ref().map(cpu),
            ..spec.clone()
        };
        let want = reference::modulated_norm(&cpu(x), &cpu_spec).unwrap();
        let err = rel_err(&got, &want);
        assert!(err < 1e-2, "{:?} {:?} rel err {err}", x.dims(), spec.kind);
    }
}

#[test]
fn rms_norm_with_rope_matches_reference_for_wan_self_attention() {
    let dev = gpu();
    let grid = RopeGrid {
        frames: 3,
        height: 6,
        width: 10,
    };
    // q/k of the 1.3B (12 heads) and the 14B (40 heads), two batch items.
    for heads in [12, 40] {
        let d = heads * 128;
        let x = randn(&[2, grid.tokens(), d], &dev);
        let spec = NormSpec {
            weight: Some(Tensor::randn(1f32, 0.1f32, d, &dev).unwrap()),
            rope: Some(NormRope {
                grid,
                head_dim: 128,
                theta: 10_000.0,
            }),
            ..NormSpec::new(NormKind::Rms, 1e-6)
        };
        let got = videosdgx_kernels::modulated_norm(&x, &spec).unwrap();
        let cpu_spec = NormSpec {
            weight: spec.weight.as_ref().map(cpu),
            ..spec.clone()
        };
        let want = reference::modulated_norm(&cpu(&x), &cpu_spec).unwrap();
        let err = rel_err(&got, &want);
        eprintln!("rms norm + rope, {heads} heads: rel err {err:.2e}");
        assert!(err < 1e-2, "rms norm + rope, {heads} heads: rel err {err}");
    }
}

#[test]
fn gated_residual_matches_reference_per_sample_and_per_token() {
    let dev = gpu();
    let (x, y) = (randn(&[2, 777, 1536], &dev), randn(&[2, 777, 1536], &dev));
    for gate in [
        Tensor::randn(0f32, 1f32, (2, 1536), &dev).unwrap(),
        Tensor::randn(0f32, 1f32, (2, 777, 1536), &dev).unwrap(),
    ] {
        let got = videosdgx_kernels::gated_residual(&x, &y, &gate).unwrap();
        let want = reference::gated_residual(&cpu(&x), &cpu(&y), &cpu(&gate)).unwrap();
        let err = rel_err(&got, &want);
        assert!(err < 1e-2, "gate {:?} rel err {err}", gate.dims());
    }
}

#[test]
fn rope3d_matches_reference_on_a_wan_grid() {
    let dev = gpu();
    let grid = RopeGrid {
        frames: 3,
        height: 6,
        width: 10,
    };
    let x = randn(&[2, grid.tokens(), 12, 128], &dev);
    let got = videosdgx_kernels::rope3d(&x, grid, 10_000.0).unwrap();
    let want = reference::rope3d(&cpu(&x), grid, 10_000.0).unwrap();
    let err = rel_err(&got, &want);
    assert!(err < 1e-2, "rel err {err}");
    // A view with a row stride (q out of a fused projection) gives the same result.
    let wide = randn(&[1, grid.tokens(), 24, 128], &dev);
    let view = wide.narrow(2, 12, 12).unwrap();
    let got = videosdgx_kernels::rope3d(&view, grid, 10_000.0).unwrap();
    let want = reference::rope3d(&cpu(&view), grid, 10_000.0).unwrap();
    let err = rel_err(&got, &want);
    assert!(err < 1e-2, "strided rel err {err}");
}

#[test]
fn linear_with_fused_bias_and_gelu_matches_reference() {
    let dev = gpu();
    // Wan's q/k/v/out and FFN shapes at a reduced token count, a ragged row count, no bias.
    for (rows, k, n, bias, gelu) in [
        (1000, 1536, 1536, true, false),
        (777, 1536, 8960, true, true),
        (300, 8960, 1536, true, false),
        (123, 256, 512, false, false),
    ] {
        let x = randn(&[1, rows, k], &dev);
        let w = (randn(&[n, k], &dev).to_dtype(DType::F32).unwrap() * (k as f64).powf(-0.5))
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let b = bias.then(|| randn(&[n], &dev));
        let got = videosdgx_kernels::linear(&x, &w, b.as_ref(), gelu).unwrap();
        assert_eq!(got.dims(), [1, rows, n]);
        let want =
            reference::linear(&cpu(&x), &cpu(&w), b.as_ref().map(cpu).as_ref(), gelu).unwrap();
        let err = rel_err(&got, &want);
        eprintln!("linear {rows}x{k}x{n} bias {bias} gelu {gelu}: rel err {err:.2e}");
        assert!(err < 1e-2, "linear {rows}x{k}x{n}: rel err {err}");
    }
    // The residual enters the epilogue (cross-attention's output projection plus x).
    let (x, w, b, r) = (
        randn(&[1, 500, 1536], &dev),
        (randn(&[1536, 1536], &dev).to_dtype(DType::F32).unwrap() * (1536f64).powf(-0.5))
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap(),
        randn(&[1536], &dev),
        randn(&[1, 500, 1536], &dev),
    );
    let got = videosdgx_kernels::linear_residual(&x, &w, Some(&b), &r).unwrap();
    let want = (reference::linear(&cpu(&x), &cpu(&w), Some(&cpu(&b)), false).unwrap()
        + cpu(&r).to_dtype(DType::F32).unwrap())
    .unwrap();
    let err = rel_err(&got, &want);
    eprintln!("linear + residual 500x1536x1536: rel err {err:.2e}");
    assert!(err < 1e-2, "linear + residual: rel err {err}");
}

#[test]
fn channel_rms_norm_matches_reference_on_vae_layouts() {
    let dev = gpu();
    // [b, t, c, h, w] with the channel dim 2 (the VAE's causal blocks), [n, c, h, w] with 1;
    // Wan's L2 divisor and LTX-2's RMS one.
    let (l2, rms) = (ChannelDivisor::L2, ChannelDivisor::Rms { eps: 1e-8 });
    for (shape, channel_dim, divisor, silu) in [
        (vec![1, 4, 96, 24, 40], 2, l2, true),
        (vec![1, 2, 384, 6, 8], 2, l2, false),
        // Wan 2.2's decoder: many channels, few pixels (the channels split over 32 threads).
        (vec![1, 2, 1024, 30, 52], 2, l2, true),
        (vec![3, 384, 10, 8], 1, l2, false),
        // LTX-2's decoder: its first and last widths.
        (vec![1, 3, 1024, 16, 24], 2, rms, true),
        (vec![1, 5, 128, 32, 48], 2, rms, false),
    ] {
        let x = randn(&shape, &dev);
        let c = shape[channel_dim];
        let scale = Tensor::randn(1f32, 0.1f32, c, &dev).unwrap();
        let want = reference::channel_rms_norm(&cpu(&x), &cpu(&scale), channel_dim, divisor, silu)
            .unwrap();
        // bf16 rounds the output once; f32 differs from the reference only in summation order.
        for (dtype, bound) in [(DType::BF16, 1e-2), (DType::F32, 1e-5)] {
            let x = x.to_dtype(dtype).unwrap();
            let got = videosdgx_kernels::channel_rms_norm(&x, &scale, channel_dim, divisor, silu)
                .unwrap();
            let err = rel_err(&got, &want);
            eprintln!(
                "channel norm {dtype:?} {shape:?} dim {channel_dim} {divisor:?} silu {silu}: rel err {err:.2e}"
            );
            assert!(
                err < bound,
                "channel norm {dtype:?} {shape:?}: rel err {err}"
            );
        }
    }
}

#[test]
fn group_norm_matches_reference_on_image_vae_layouts() {
    let dev = gpu();
    // [n, c, h, w] of the FLUX VAEs' decoder (32 groups), rows longer than one statistics block,
    // a non-zero mean (the f64 sums must not cancel), and a tiny group count.
    for (shape, groups, silu) in [
        (vec![1, 128, 96, 80], 32, true),
        (vec![2, 512, 16, 24], 32, false),
        (vec![1, 64, 200, 136], 4, true),
        (vec![3, 12, 8, 8], 3, false),
    ] {
        let x = randn(&shape, &dev).affine(3.0, 2.0).unwrap();
        let c = shape[1];
        let weight = Tensor::randn(1f32, 0.2f32, c, &dev).unwrap();
        let bias = Tensor::randn(0f32, 0.2f32, c, &dev).unwrap();
        let want = reference::group_norm(&cpu(&x), &cpu(&weight), &cpu(&bias), groups, 1e-6, silu)
            .unwrap();
        for (dtype, bound) in [(DType::BF16, 1e-2), (DType::F32, 1e-5)] {
            let x = x.to_dtype(dtype).unwrap();
            let got =
                videosdgx_kernels::group_norm(&x, &weight, &bias, groups, 1e-6, silu).unwrap();
            assert_eq!(got.dtype(), dtype);
            let err = rel_err(&got, &want);
            eprintln!(
                "group norm {dtype:?} {shape:?} groups {groups} silu {silu}: rel err {err:.2e}"
            );
            assert!(err < bound, "group norm {dtype:?} {shape:?}: rel err {err}");
        }
    }
    let odd = randn(&[1, 8, 3, 5], &dev);
    let (w, b) = (
        Tensor::ones(8, DType::F32, &dev).unwrap(),
        Tensor::zeros(8, DType::F32, &dev).unwrap(),
    );
    let err = videosdgx_kernels::group_norm(&odd, &w, &b, 3, 1e-6, false).unwrap_err();
    assert!(
        err.to_string().contains("3 groups do not divide 8"),
        "{err}"
    );
}

#[test]
fn rotary_tables_with_and_without_the_head_norm_match_reference() {
    let dev = gpu();
    // FLUX's q/k: a view into a fused projection (token stride wider than the heads), two
    // batches, and head dims 128 and 64.
    for (b, l, h, d, extra) in [
        (1, 300, 24, 128, 9216),
        (2, 77, 4, 64, 0),
        (1, 8, 3, 256, 256),
    ] {
        let fused = randn(&[b, l, (h * d + extra) / d, d], &dev);
        let x = fused.narrow(2, 0, h).unwrap();
        let angles = Tensor::rand(-3f32, 3f32, (l, d / 2), &dev).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let weight = Tensor::randn(1f32, 0.2f32, d, &dev).unwrap();
        let want =
            reference::rms_norm_rope(&cpu(&x), Some(&cpu(&weight)), &cpu(&cos), &cpu(&sin), 1e-6)
                .unwrap();
        let got = videosdgx_kernels::rms_norm_rope(&x, Some(&weight), &cos, &sin, 1e-6).unwrap();
        let err = rel_err(&got, &want);
        eprintln!("rms_norm_rope {b}x{l}x{h}x{d}: rel err {err:.2e}");
        assert!(err < 1e-2, "rms_norm_rope {b}x{l}x{h}x{d}: rel err {err}");
        let want = reference::rope_tables(&cpu(&x), &cpu(&cos), &cpu(&sin)).unwrap();
        let got = videosdgx_kernels::rope_tables(&x, &cos, &sin).unwrap();
        let err = rel_err(&got, &want);
        eprintln!("rope_tables {b}x{l}x{h}x{d}: rel err {err:.2e}");
        assert!(err < 1e-2, "rope_tables {b}x{l}x{h}x{d}: rel err {err}");
    }
    let x = randn(&[1, 4, 2, 64], &dev);
    let short = Tensor::zeros((3, 32), DType::F32, &dev).unwrap();
    let err = videosdgx_kernels::rope_tables(&x, &short, &short).unwrap_err();
    assert!(err.to_string().contains("do not fit 4 tokens"), "{err}");
}

#[test]
fn rms_norm_rotary_matches_reference_for_both_layouts() {
    let dev = gpu();
    // LTX-2's q/k rows: video (32 heads of 128), audio (32 of 64), a connector's 30 heads of 128
    // as a view into a wider projection, per-sample tables, and a short interleaved row.
    for (b, l, d, extra, pairs, per_sample) in [
        (
            1,
            1536,
            4096,
            0,
            RotaryPairs::Split { head_dim: 128 },
            false,
        ),
        (2, 126, 2048, 0, RotaryPairs::Split { head_dim: 64 }, true),
        (
            1,
            300,
            3840,
            256,
            RotaryPairs::Split { head_dim: 128 },
            false,
        ),
        (3, 10, 512, 16, RotaryPairs::Interleaved, true),
    ] {
        let wide = randn(&[b, l, d + extra], &dev);
        let x = wide.narrow(2, extra, d).unwrap();
        let table_rows = if per_sample { b * l } else { l };
        let angles = Tensor::rand(-3f32, 3f32, (table_rows, d / 2), &dev).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let weight = Tensor::randn(1f32, 0.2f32, d, &dev).unwrap();
        let want = reference::rms_norm_rotary(
            &cpu(&x),
            Some(&cpu(&weight)),
            1e-6,
            &cpu(&cos),
            &cpu(&sin),
            pairs,
        )
        .unwrap();
        let got =
            videosdgx_kernels::rms_norm_rotary(&x, Some(&weight), 1e-6, &cos, &sin, pairs).unwrap();
        let err = rel_err(&got, &want);
        eprintln!("rms_norm_rotary {b}x{l}x{d} {pairs:?}: rel err {err:.2e}");
        assert!(
            err < 1e-2,
            "rms_norm_rotary {b}x{l}x{d} {pairs:?}: rel err {err}"
        );
    }
    let x = randn(&[1, 4, 96], &dev);
    let table = Tensor::zeros((4, 48), DType::F32, &dev).unwrap();
    let err = videosdgx_kernels::rms_norm_rotary(
        &x,
        None,
        1e-6,
        &table,
        &table,
        RotaryPairs::Split { head_dim: 24 },
    )
    .unwrap_err();
    assert!(err.to_string().contains("multiple of 16"), "{err}");
}

#[test]
fn pad_frames_matches_reference_exactly() {
    let dev = gpu();
    // LTX-2's decoder convs (non-causal: a frame each side, reflect), a causal one (two frames in
    // front, replicate), Wan-style zeros; a copy is exact in both dtypes.
    for (shape, before, after, pad, mode) in [
        ([1, 16, 64, 18, 26], 1, 1, 1, SpatialPad::Reflect),
        ([2, 5, 24, 7, 9], 2, 0, 1, SpatialPad::Replicate),
        ([1, 3, 8, 5, 6], 0, 0, 2, SpatialPad::Zeros),
    ] {
        let padding = FramePadding {
            before,
            after,
            pad,
            mode,
        };
        for dtype in [DType::BF16, DType::F32] {
            let x = randn(&shape, &dev).to_dtype(dtype).unwrap();
            let want = reference::pad_frames(&cpu(&x), padding).unwrap();
            let got = videosdgx_kernels::pad_frames(&x, padding).unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff = (cpu(&got).to_dtype(DType::F32).unwrap()
                - want.to_dtype(DType::F32).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
            assert_eq!(diff, 0.0, "pad_frames {shape:?} {padding:?} {dtype:?}");
        }
    }
}

#[test]
fn warp_matches_reference() {
    let dev = gpu();
    // RIFE's sizes (both frames with their features, batched; 4.25 pads 480 to 512) and odd ones;
    // flows of several pixels, many running off the border.
    for (b, c, h, w) in [(16, 7, 512, 832), (3, 3, 17, 29), (1, 1, 1, 5)] {
        // bf16 values in f32, so that both dtypes warp the same image.
        let image = randn(&[b, c, h, w], &dev).to_dtype(DType::F32).unwrap();
        let flow = (randn(&[b, 2, h, w], &dev) * 8.0).unwrap();
        let want = reference::warp(&cpu(&image), &cpu(&flow)).unwrap();
        for (dtype, bound) in [(DType::F32, 1e-5), (DType::BF16, 1e-2)] {
            let got = videosdgx_kernels::warp(&image.to_dtype(dtype).unwrap(), &flow).unwrap();
            assert_eq!((got.dims(), got.dtype()), (want.dims(), dtype));
            let err = rel_err(&got, &want);
            eprintln!("warp {b}x{c}x{h}x{w} {dtype:?}: rel err {err:.2e}");
            assert!(err < bound, "warp {b}x{c}x{h}x{w} {dtype:?}: rel err {err}");
        }
    }
}

#[test]
fn swiglu_matches_reference_on_a_view_of_a_fused_projection() {
    let dev = gpu();
    for (rows, half, before) in [(4608, 9216, 9216), (3, 16, 0), (1000, 24, 8)] {
        let fused = randn(&[rows, before + 2 * half], &dev);
        let x = fused.narrow(1, before, 2 * half).unwrap();
        let want = reference::swiglu(&cpu(&x)).unwrap();
        let got = videosdgx_kernels::swiglu(&x).unwrap();
        assert_eq!(got.dims(), [rows, half]);
        let err = rel_err(&got, &want);
        eprintln!("swiglu {rows}x{half} (offset {before}): rel err {err:.2e}");
        assert!(err < 1e-2, "swiglu {rows}x{half}: rel err {err}");
    }
}

#[test]
fn channel_rms_norm_into_writes_only_its_view() {
    let dev = gpu();
    // The VAE's use: 4 frames normalised into a 6-frame buffer behind 2 cached frames.
    let (cached, shape) = (2, [1, 4, 96, 24, 40]);
    let x = randn(&shape, &dev);
    let scale = Tensor::randn(1f32, 0.1f32, 96, &dev).unwrap();
    let want =
        reference::channel_rms_norm(&cpu(&x), &cpu(&scale), 2, ChannelDivisor::L2, true).unwrap();
    for (dtype, bound) in [(DType::BF16, 1e-2), (DType::F32, 1e-5)] {
        let buffer = randn(&[1, cached + 4, 96, 24, 40], &dev)
            .to_dtype(dtype)
            .unwrap();
        let before = cpu(&buffer);
        let view = buffer.narrow(1, cached, 4).unwrap();
        videosdgx_kernels::channel_rms_norm_into(
            &view,
            &x.to_dtype(dtype).unwrap(),
            &scale,
            2,
            ChannelDivisor::L2,
            true,
        )
        .unwrap();
        let err = rel_err(&buffer.narrow(1, cached, 4).unwrap(), &want);
        eprintln!("channel norm into a view, {dtype:?}: rel err {err:.2e}");
        assert!(err < bound, "channel norm into {dtype:?}: rel err {err}");
        let f32_front = |t: &Tensor| {
            t.narrow(1, 0, cached)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        };
        let diff = (f32_front(&cpu(&buffer)) - f32_front(&before))
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "the cached frames in front of the view changed");
    }
    // A view that is not contiguous (the frames of two batch items) is refused.
    let buffer = randn(&[2, 6, 96, 24, 40], &dev);
    let err = videosdgx_kernels::channel_rms_norm_into(
        &buffer.narrow(1, 2, 4).unwrap(),
        &randn(&[2, 4, 96, 24, 40], &dev),
        &scale,
        2,
        ChannelDivisor::L2,
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("contiguous view"), "{err}");
}

#[cfg(feature = "cudnn")]
#[test]
fn frame_conv_matches_reference_on_vae_convolutions() {
    use videosdgx_kernels::{Epilogue, FrameConv};
    let dev = gpu();
    // The decoder's causal 3x3x3 conv with its cache frames, its temporal upsampler (3x1x1), a
    // stride-2 2-D downsampler and a 1x1 shortcut, at odd sizes; two batch items. Then clips long
    // enough to go one call per tap: LTX-2's decoder conv (in f32, 12 output frames are a batch
    // of 10 and a last one of 2), and a temporal stride of 2 over two items.
    for (shape, o, k, spec) in [
        (
            [1, 14, 64, 128, 192],
            64,
            3,
            FrameConv {
                taps: 3,
                stride_t: 1,
                pad: 1,
                stride: 1,
            },
        ),
        (
            [2, 15, 32, 20, 24],
            48,
            3,
            FrameConv {
                taps: 3,
                stride_t: 2,
                pad: 1,
                stride: 1,
            },
        ),
        (
            [1, 6, 96, 40, 52],
            96,
            3,
            FrameConv {
                taps: 3,
                stride_t: 1,
                pad: 1,
                stride: 1,
            },
        ),
        (
            [2, 4, 64, 18, 22],
            128,
            1,
            FrameConv {
                taps: 3,
                stride_t: 1,
                pad: 0,
                stride: 1,
            },
        ),
        (
            [1, 5, 32, 24, 30],
            32,
            1,
            FrameConv {
                taps: 3,
                stride_t: 2,
                pad: 0,
                stride: 1,
            },
        ),
        (
            [1, 3, 48, 33, 41],
            48,
            3,
            FrameConv {
                taps: 1,
                stride_t: 1,
                pad: 0,
                stride: 2,
            },
        ),
        (
            [2, 2, 192, 16, 16],
            96,
            1,
            FrameConv {
                taps: 1,
                stride_t: 1,
                pad: 0,
                stride: 1,
            },
        ),
    ] {
        let c = shape[2];
        let x = randn(&shape, &dev);
        let w = (randn(&[o, spec.taps * c, k, k], &dev)
            * (1.0 / ((spec.taps * c * k * k) as f64).sqrt()))
        .unwrap();
        let bias = randn(&[o], &dev);
        let f32_cpu = |t: &Tensor| cpu(t).to_dtype(DType::F32).unwrap();
        let bias_only = Epilogue::default();
        let want = reference::frame_conv(
            &f32_cpu(&x),
            &f32_cpu(&w),
            &f32_cpu(&bias),
            spec,
            &bias_only,
        )
        .unwrap();
        // bf16 rounds operands and output; f32 runs on TF32 tensor cores (10-bit mantissa).
        for (dtype, bound) in [(DType::BF16, 1e-2), (DType::F32, 2e-3)] {
            let [x, w, bias] = [&x, &w, &bias].map(|t| t.to_dtype(dtype).unwrap());
            let got = videosdgx_kernels::frame_conv(&x, &w, &bias, spec, &bias_only).unwrap();
            let err = rel_err(&got, &want);
            eprintln!("frame conv {dtype:?} {shape:?} -> {o}, k {k}, {spec:?}: rel err {err:.2e}");
            assert!(
                err < bound,
                "frame conv {dtype:?} {shape:?} {spec:?}: rel err {err}"
            );
        }
    }
}

#[cfg(feature = "cudnn")]
#[test]
fn frame_conv_epilogue_matches_reference() {
    use videosdgx_kernels::{Activation, Epilogue, FrameConv};
    let dev = gpu();
    let spec = FrameConv {
        taps: 1,
        stride_t: 1,
        pad: 1,
        stride: 1,
    };
    // The image models' convolutions: RIFE's ResConv (residual, LeakyReLU), Real-ESRGAN's dense
    // layers (LeakyReLU), the compact net's PReLU; and an odd size.
    for (shape, o) in [
        ([8, 1, 64, 64, 104], 64),
        ([4, 1, 64, 120, 208], 32),
        ([3, 1, 8, 9, 13], 16),
    ] {
        let c = shape[2];
        let x = randn(&shape, &dev);
        let w = (randn(&[o, c, 3, 3], &dev) * (1.0 / ((c * 9) as f64).sqrt())).unwrap();
        let bias = randn(&[o], &dev);
        let residual = randn(&[shape[0], 1, o, shape[3], shape[4]], &dev);
        let slopes = randn(&[o], &dev);
        let f32_cpu = |t: &Tensor| cpu(t).to_dtype(DType::F32).unwrap();
        for activation in [
            Activation::None,
            Activation::LeakyRelu(0.2),
            Activation::PRelu(slopes.clone()),
        ] {
            for with_residual in [false, true] {
                let epilogue = |dtype: DType, on_cpu: bool| Epilogue {
                    residual: with_residual.then(|| {
                        let r = residual.to_dtype(dtype).unwrap();
                        if on_cpu { f32_cpu(&r) } else { r }
                    }),
                    activation: match &activation {
                        Activation::PRelu(s) if on_cpu => Activation::PRelu(f32_cpu(s)),
                        Activation::PRelu(s) => Activation::PRelu(s.to_dtype(dtype).unwrap()),
                        other => other.clone(),
                    },
                };
                let want = reference::frame_conv(
                    &f32_cpu(&x),
                    &f32_cpu(&w),
                    &f32_cpu(&bias),
                    spec,
                    &epilogue(DType::F32, true),
                )
                .unwrap();
                for (dtype, bound) in [(DType::BF16, 1e-2), (DType::F32, 2e-3)] {
                    let [x, w, bias] = [&x, &w, &bias].map(|t| t.to_dtype(dtype).unwrap());
                    let got =
                        videosdgx_kernels::frame_conv(&x, &w, &bias, spec, &epilogue(dtype, false))
                            .unwrap();
                    let err = rel_err(&got, &want);
                    eprintln!(
                        "conv epilogue {dtype:?} {shape:?} -> {o} {activation:?} residual {with_residual}: rel err {err:.2e}"
                    );
                    assert!(
                        err < bound,
                        "conv epilogue {dtype:?} {shape:?}: rel err {err}"
                    );
                }
            }
        }
    }
}

/// Real-ESRGAN's dense blocks convolve the first channels of a larger buffer in place: the same
/// result as the packed copy, frames batched several to a call.
#[cfg(feature = "cudnn")]
#[test]
fn frame_conv_reads_a_channel_prefix_in_place() {
    use videosdgx_kernels::{Epilogue, FrameConv};
    let dev = gpu();
    let spec = FrameConv {
        taps: 1,
        stride_t: 1,
        pad: 1,
        stride: 1,
    };
    let buffer = randn(&[4, 1, 192, 120, 208], &dev);
    let w = (randn(&[32, 96, 3, 3], &dev) * 0.1).unwrap();
    let bias = randn(&[32], &dev);
    let prefix = buffer.narrow(2, 0, 96).unwrap();
    assert!(!prefix.is_contiguous());
    let epilogue = Epilogue::default();
    let packed =
        videosdgx_kernels::frame_conv(&prefix.contiguous().unwrap(), &w, &bias, spec, &epilogue)
            .unwrap();
    let in_place = videosdgx_kernels::frame_conv(&prefix, &w, &bias, spec, &epilogue).unwrap();
    let err = rel_err(&in_place, &packed);
    eprintln!("frame conv of a channel prefix: rel err {err:.2e} against its packed copy");
    assert!(err < 1e-3, "frame conv of a channel prefix: rel err {err}");
}

/// cuDNN's channels-last path against the reference, epilogue included, on the upscalers' shapes.
#[cfg(feature = "cudnn")]
#[test]
fn image_conv_nhwc_matches_reference() {
    use videosdgx_kernels::{Activation, Epilogue, FrameConv};
    let dev = gpu();
    for ([b, h, w, c], o, stride) in [
        ([4, 120, 208, 64], 32, 1),
        ([2, 60, 104, 3], 64, 1),
        ([3, 17, 29, 16], 48, 2),
    ] {
        let spec = FrameConv {
            taps: 1,
            stride_t: 1,
            pad: 1,
            stride,
        };
        let x = randn(&[b, h, w, c], &dev);
        let weight = (randn(&[o, 3, 3, c], &dev) * (1.0 / ((c * 9) as f64).sqrt())).unwrap();
        let bias = randn(&[o], &dev);
        let out = [b, (h - 1) / stride + 1, (w - 1) / stride + 1, o];
        let residual = randn(&out, &dev);
        let slopes = randn(&[o], &dev);
        let f32_cpu = |t: &Tensor| cpu(t).to_dtype(DType::F32).unwrap();
        for (activation, with_residual) in [
            (Activation::None, false),
            (Activation::LeakyRelu(0.2), true),
            (Activation::PRelu(slopes.clone()), false),
        ] {
            let epilogue = |dtype: DType, on_cpu: bool| {
                let cast = |t: &Tensor| {
                    if on_cpu {
                        f32_cpu(t)
                    } else {
                        t.to_dtype(dtype).unwrap()
                    }
                };
                Epilogue {
                    residual: with_residual.then(|| cast(&residual)),
                    activation: match &activation {
                        Activation::PRelu(s) => Activation::PRelu(cast(s)),
                        other => other.clone(),
                    },
                }
            };
            let want = reference::image_conv_nhwc(
                &f32_cpu(&x),
                &f32_cpu(&weight),
                &f32_cpu(&bias),
                spec,
                &epilogue(DType::F32, true),
            )
            .unwrap();
            for (dtype, bound) in [(DType::BF16, 1e-2), (DType::F32, 2e-3)] {
                let [x, weight, bias] = [&x, &weight, &bias].map(|t| t.to_dtype(dtype).unwrap());
                let got = videosdgx_kernels::image_conv_nhwc(
                    &x,
                    &weight,
                    &bias,
                    spec,
                    &epilogue(dtype, false),
                )
                .unwrap();
                assert_eq!(got.dims(), out);
                let err = rel_err(&got, &want);
                eprintln!(
                    "image conv nhwc {dtype:?} {:?} -> {o} stride {stride} {activation:?}: rel err {err:.2e}",
                    [b, h, w, c]
                );
                assert!(err < bound, "image conv nhwc {dtype:?}: rel err {err}");
            }
        }
    }
}

/// The channel scatter (Real-ESRGAN's dense inputs) copies exactly what one `slice_set` per slot
/// does, and leaves the rest of the buffer as it was.
#[test]
fn scatter_channels_matches_reference() {
    use videosdgx_kernels::ChannelSlot;
    let dev = gpu();
    let (pixels, c, growth) = (2 * 60 * 104, 64, 32);
    for dtype in [DType::BF16, DType::F32] {
        let mut start = 0;
        let inputs: Vec<(usize, usize)> = (1..=4)
            .map(|k| {
                let input = (start, c + k * growth);
                start += pixels * input.1;
                input
            })
            .collect();
        let before = randn(&[start], &dev).to_dtype(dtype).unwrap();
        let (ours, want) = (before.copy().unwrap(), before.copy().unwrap());
        let mut written = 0;
        for width in [c, growth, growth, growth, growth] {
            let part = randn(&[2, 60, 104, width], &dev).to_dtype(dtype).unwrap();
            let slots: Vec<ChannelSlot> = inputs
                .iter()
                .filter(|&&(_, pitch)| pitch > written)
                .map(|&(start, pitch)| ChannelSlot {
                    start,
                    pitch,
                    offset: written,
                })
                .collect();
            videosdgx_kernels::scatter_channels(&ours, &part, &slots).unwrap();
            reference::scatter_channels(&want, &part, &slots).unwrap();
            written += width;
        }
        let err = rel_err(&ours, &want);
        eprintln!("scatter channels {dtype:?}: rel err {err:.2e}");
        assert_eq!(err, 0.0, "scatter channels {dtype:?}");
    }
}

#[test]
fn kernel_modules_compile_for_this_gpu() {
    let dev = gpu();
    let reports = videosdgx_kernels::compile_all(&dev).unwrap();
    for r in &reports {
        eprintln!(
            "{} {} compiled={} {:.1} ms",
            r.module, r.arch, r.compiled, r.ms
        );
    }
}

#[test]
fn e4m3_quantize_and_dequantize_match_reference_exactly() {
    let dev = gpu();
    // A 14B projection's shape with a scale per row (--quant fp8), an odd one with one scale
    // from the absolute maximum, and one whose fixed scale saturates most values to ±448.
    for (rows, cols, scale_of) in [(5120, 5120, "rows"), (37, 301, "max"), (3, 7, "fixed")] {
        for dtype in [DType::BF16, DType::F32] {
            let w = (randn(&[rows, cols], &dev).to_dtype(DType::F32).unwrap() * 3.0)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let absolute = w.to_dtype(DType::F32).unwrap().abs().unwrap();
            let scale = match scale_of {
                "rows" => (absolute.max_keepdim(1).unwrap() / 448.0).unwrap(),
                "max" => (absolute.max_all().unwrap() / 448.0).unwrap(),
                _ => Tensor::new(0.001f32, &dev).unwrap(),
            };
            let what = format!("{rows}x{cols} {scale_of} {dtype:?}");
            let q = videosdgx_kernels::fp8_quantize(&w, &scale).unwrap();
            let q_want = reference::fp8_quantize(&cpu(&w), &cpu(&scale)).unwrap();
            assert_eq!(q.dtype(), DType::F8E4M3);
            let got = values(&q);
            assert!(got.iter().all(|v| v.is_finite()), "{what}: unwritten bytes");
            assert_eq!(got, values(&q_want), "{what}: e4m3 bytes");
            let back = videosdgx_kernels::fp8_dequantize(&q, &scale, dtype).unwrap();
            let back_want = reference::fp8_dequantize(&q_want, &cpu(&scale), dtype).unwrap();
            assert_eq!(back.dtype(), dtype);
            assert_eq!(values(&back), values(&back_want), "{what}: dequantized");
        }
    }
}

#[test]
fn fp8_row_quantize_matches_reference_exactly() {
    let dev = gpu();
    // Tokens of a 14B block's widths (the FFN's 13,824 too), a ragged count, an all-zero row.
    for (rows, cols) in [(4096, 5120), (77, 13824), (3, 16)] {
        let x = (randn(&[1, rows, cols], &dev).to_dtype(DType::F32).unwrap() * 5.0)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let x = x
            .slice_assign(
                &[0..1, 1..2, 0..cols],
                &x.i((.., 1..2, ..)).unwrap().zeros_like().unwrap(),
            )
            .unwrap();
        let (q, scale) = videosdgx_kernels::fp8_quantize_rows(&x).unwrap();
        let (q_want, scale_want) = reference::fp8_quantize_rows(&cpu(&x)).unwrap();
        assert_eq!((q.dims(), q.dtype()), (x.dims(), DType::F8E4M3));
        assert_eq!(scale.dims(), [rows]);
        let what = format!("{rows}x{cols}");
        assert_eq!(values(&scale), values(&scale_want), "{what}: scales");
        assert_eq!(
            values(&scale)[1],
            1.0,
            "{what}: an all-zero row keeps scale 1"
        );
        let got = values(&q);
        assert!(got.iter().all(|v| v.is_finite()), "{what}: unwritten bytes");
        assert_eq!(got, values(&q_want), "{what}: e4m3 bytes");
    }
}

/// The two FP8 GEMMs: cuBLASLt where the GPU has it (else the same kernel as the second), and
/// gemm.cu's mma.sync kernel.
type Fp8Linear = fn(
    &Tensor,
    &Tensor,
    &Tensor,
    &Tensor,
    Option<&Tensor>,
    bool,
    Option<&Tensor>,
) -> candle_core::Result<Tensor>;
const FP8_LINEARS: [(&str, Fp8Linear); 2] = [
    ("linear_fp8", videosdgx_kernels::linear_fp8),
    ("mma.sync", videosdgx_kernels::linear_fp8_mma_sync),
];

/// `x` (bf16) quantized per row and `w` (f32) per output channel or per tensor, and their product
/// in f32 on the CPU from the same FP8 values.
struct Fp8Case {
    xq: Tensor,
    x_scale: Tensor,
    wq: Tensor,
    w_scale: Tensor,
}

impl Fp8Case {
    fn new(x: &Tensor, w: &Tensor, per_channel: bool) -> Self {
        let w_scale = if per_channel {
            reference::fp8_row_scales(w).unwrap()
        } else {
            (w.abs().unwrap().max_all().unwrap() / reference::E4M3_MAX).unwrap()
        };
        let (xq, x_scale) = videosdgx_kernels::fp8_quantize_rows(x).unwrap();
        let wq = videosdgx_kernels::fp8_quantize(w, &w_scale).unwrap();
        Self {
            xq,
            x_scale,
            wq,
            w_scale,
        }
    }

    fn reference(&self, bias: Option<&Tensor>, gelu: bool) -> Tensor {
        let rows = self.x_scale.elem_count();
        let x_values = reference::fp8_dequantize(
            &cpu(&self.xq).reshape((rows, ())).unwrap(),
            &cpu(&self.x_scale),
            DType::F32,
        )
        .unwrap();
        let w_values =
            reference::fp8_dequantize(&cpu(&self.wq), &cpu(&self.w_scale), DType::F32).unwrap();
        reference::linear(&x_values, &w_values, bias.map(cpu).as_ref(), gelu)
            .unwrap()
            .reshape(
                self.xq
                    .dims()
                    .split_last()
                    .unwrap()
                    .1
                    .iter()
                    .copied()
                    .chain([w_values.dim(0).unwrap()])
                    .collect::<Vec<_>>(),
            )
            .unwrap()
    }
}

#[test]
fn fp8_linear_matches_reference() {
    let dev = gpu();
    if !videosdgx_kernels::fp8_linear_supported(&dev).unwrap() {
        eprintln!("no FP8 products on this GPU: checking that it says so");
        let case = Fp8Case::new(
            &randn(&[64, 256], &dev),
            &randn(&[256, 256], &dev).to_dtype(DType::F32).unwrap(),
            true,
        );
        assert!(
            videosdgx_kernels::linear_fp8(
                &case.xq,
                &case.x_scale,
                &case.wq,
                &case.w_scale,
                None,
                false,
                None
            )
            .is_err()
        );
        return;
    }
    // Wan 14B's projection and FFN shapes at a reduced token count, ragged row and column counts
    // (tiles only partly inside), a K that is not a multiple of the 64-byte stage; weight scales
    // per output channel (--quant fp8) or one per tensor (ComfyUI's scaled FP8).
    for (rows, k, n, bias, gelu, per_channel) in [
        (1000, 5120, 5120, true, false, true),
        (777, 5120, 13824, true, true, true),
        (300, 13824, 5120, true, false, false),
        (123, 272, 528, false, false, true),
    ] {
        let x = randn(&[1, rows, k], &dev);
        let w =
            (randn(&[n, k], &dev).to_dtype(DType::F32).unwrap() * (k as f64).powf(-0.5)).unwrap();
        let b = bias.then(|| randn(&[n], &dev));
        let case = Fp8Case::new(&x, &w, per_channel);
        let want = case.reference(b.as_ref(), gelu);
        for (name, linear) in FP8_LINEARS {
            let got = linear(
                &case.xq,
                &case.x_scale,
                &case.wq,
                &case.w_scale,
                b.as_ref(),
                gelu,
                None,
            )
            .unwrap();
            assert_eq!((got.dims(), got.dtype()), (&[1, rows, n][..], DType::BF16));
            let err = rel_err(&got, &want);
            eprintln!("{name} {rows}x{k}x{n} bias {bias} gelu {gelu}: rel err {err:.2e}");
            assert!(err < 1e-2, "{name} {rows}x{k}x{n}: rel err {err}");
        }
    }
    // The residual enters the epilogue.
    let (x, r) = (randn(&[1, 500, 512], &dev), randn(&[1, 500, 512], &dev));
    let w = (randn(&[512, 512], &dev).to_dtype(DType::F32).unwrap() * (512f64).powf(-0.5)).unwrap();
    let case = Fp8Case::new(&x, &w, true);
    let want = (case.reference(None, false) + cpu(&r).to_dtype(DType::F32).unwrap()).unwrap();
    for (name, linear) in FP8_LINEARS {
        let got = linear(
            &case.xq,
            &case.x_scale,
            &case.wq,
            &case.w_scale,
            None,
            false,
            Some(&r),
        )
        .unwrap();
        let err = rel_err(&got, &want);
        eprintln!("{name} + residual 500x512x512: rel err {err:.2e}");
        assert!(err < 1e-2, "{name} + residual: rel err {err}");
    }
}

#[test]
fn nvfp4_dequantize_matches_reference_exactly() {
    let dev = gpu();
    // Every code byte, block scales over e4m3's range (subnormals included), a 14B projection's
    // shape and a small odd one.
    for (rows, cols) in [(5120, 13824), (3, 48)] {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let codes: Vec<u8> = (0..rows * cols / 2)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 56) as u8
            })
            .collect();
        let packed = Tensor::from_vec(codes, (rows, cols / 2), &Device::Cpu).unwrap();
        let magnitudes = randn(&[rows, cols / 16], &Device::Cpu)
            .to_dtype(DType::F32)
            .unwrap()
            .abs()
            .unwrap();
        let block_scales = reference::fp8_quantize(
            &(magnitudes * 100.0).unwrap(),
            &Tensor::new(1f32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        let global = Tensor::new(0.0137f32, &Device::Cpu).unwrap();
        for dtype in [DType::BF16, DType::F32] {
            let got = videosdgx_kernels::nvfp4_dequantize(
                &packed.to_device(&dev).unwrap(),
                &block_scales.to_device(&dev).unwrap(),
                &global.to_device(&dev).unwrap(),
                dtype,
            )
            .unwrap();
            let want = reference::nvfp4_dequantize(&packed, &block_scales, &global, dtype).unwrap();
            let got = values(&got);
            assert!(
                got.iter().all(|v| v.is_finite()),
                "{rows}x{cols} {dtype:?}: unwritten values"
            );
            assert_eq!(got, values(&want), "{rows}x{cols} {dtype:?}");
        }
    }
}
