//! The CPU references against independent scalar loops written from the definitions (Wan's
//! math as diffusers' transformer_wan.py states it), plus the errors bad input must give.

use candle_core::{Device, Tensor};
use videosdgx_kernels::{
    Activation, CausalMask, ChannelDivisor, ChannelSlot, Epilogue, FrameConv, FramePadding,
    NormKind, NormRope, NormSpec, RopeGrid, RotaryPairs, SpatialPad, reference,
};

/// Deterministic values in [-2, 2) (xorshift), so failures reproduce.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn tensor(shape: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(values(shape.iter().product(), seed), shape, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn attention_matches_scalar_softmax_loop() {
    let (b, lq, lk, h, d) = (2, 5, 7, 3, 8);
    let (q, k, v) = (
        tensor(&[b, lq, h, d], 1),
        tensor(&[b, lk, h, d], 2),
        tensor(&[b, lk, h, d], 3),
    );
    let scale = 0.35f32;
    let got = reference::attention(&q, &k, &v, scale).unwrap();
    assert_eq!(got.dims(), [b, lq, h, d]);
    let (qv, kv, vv) = (
        q.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        k.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    let at =
        |l: usize, len: usize, bi: usize, hi: usize, di: usize| ((bi * len + l) * h + hi) * d + di;
    let mut want = vec![0f32; b * lq * h * d];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..lq {
                let scores: Vec<f64> = (0..lk)
                    .map(|j| {
                        (0..d)
                            .map(|e| {
                                f64::from(qv[at(i, lq, bi, hi, e)])
                                    * f64::from(kv[at(j, lk, bi, hi, e)])
                            })
                            .sum::<f64>()
                            * f64::from(scale)
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = w.iter().sum();
                for e in 0..d {
                    let o: f64 = (0..lk)
                        .map(|j| w[j] / z * f64::from(vv[at(j, lk, bi, hi, e)]))
                        .sum();
                    want[at(i, lq, bi, hi, e)] = o as f32;
                }
            }
        }
    }
    assert!(max_abs_diff(&got.flatten_all().unwrap().to_vec1::<f32>().unwrap(), &want) < 1e-5);
}

#[test]
fn fp8_attention_operands_scale_q_per_token_k_per_tile_and_v_per_channel() {
    use candle_core::{DType, IndexOp};
    // Two key tiles (the second partial); one large key in the second tile and one large value
    // channel must coarsen only their own tile and channel.
    let (b, lk, h, d) = (1, 130, 2, 8);
    let q = tensor(&[b, 5, h, d], 1);
    let k = tensor(&[b, lk, h, d], 2);
    let k = k
        .slice_assign(
            &[0..1, 129..130, 0..1, 0..1],
            &Tensor::full(900f32, (1, 1, 1, 1), &Device::Cpu).unwrap(),
        )
        .unwrap();
    let v = tensor(&[b, lk, h, d], 3);
    let v = v
        .slice_assign(
            &[0..1, 7..8, 1..2, 3..4],
            &Tensor::full(-700f32, (1, 1, 1, 1), &Device::Cpu).unwrap(),
        )
        .unwrap();
    let (q8, k8, v8) = reference::attention_fp8_operands(&q, &k, &v).unwrap();
    assert_eq!(
        (q8.dims(), k8.dims(), v8.dims()),
        (q.dims(), k.dims(), v.dims())
    );

    // The e4m3 round trip of `x` at one scale, element by element.
    let round_trip = |x: &Tensor, scale: f32| -> Vec<f32> {
        let flat = x.flatten_all().unwrap().unsqueeze(0).unwrap();
        let scale_t = Tensor::new(scale, &Device::Cpu).unwrap();
        let q = reference::fp8_quantize(&flat, &scale_t).unwrap();
        reference::fp8_dequantize(&q, &scale_t, DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let absmax = |x: &Tensor| -> f32 {
        x.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let flat = |x: Tensor| -> Vec<f32> { x.flatten_all().unwrap().to_vec1().unwrap() };
    // K's first tile of head 0 has its own scale; the large key is alone in the second.
    let tile0 = k.i((.., 0..128, 0..1, ..)).unwrap();
    assert_eq!(
        flat(k8.i((.., 0..128, 0..1, ..)).unwrap()),
        round_trip(&tile0, absmax(&tile0) * (1.0 / 448.0))
    );
    let large = flat(k8.i((.., 129..130, 0..1, 0..1)).unwrap())[0];
    assert!(
        (large - 900.0).abs() < 1e-3,
        "the largest key maps to 448 x its scale: {large}"
    );
    // V's channel 3 of head 1 is coarse; channel 2 of the same head is not.
    let channel =
        |x: &Tensor, head: usize, c: usize| x.i((.., .., head..head + 1, c..c + 1)).unwrap();
    for c in [2, 3] {
        let want = channel(&v, 1, c);
        assert_eq!(
            flat(channel(&v8, 1, c)),
            round_trip(&want, absmax(&want) * (1.0 / 448.0)),
            "channel {c}"
        );
    }
    // Q: each token and head its own scale.
    let token = q.i((.., 3..4, 1..2, ..)).unwrap();
    assert_eq!(
        flat(q8.i((.., 3..4, 1..2, ..)).unwrap()),
        round_trip(&token, absmax(&token) * (1.0 / 448.0))
    );
    // Rounding error within e4m3's half step (2^-4 relative) on every normal value.
    let (x, y) = (flat(v.clone()), flat(v8));
    for (x, y) in x.iter().zip(&y) {
        assert!(
            (x - y).abs() <= x.abs() / 16.0 + 700.0 / 448.0 * 2f32.powi(-9),
            "{x} -> {y}"
        );
    }
}

#[test]
fn attention_over_one_key_returns_that_keys_value() {
    let (q, k, v) = (
        tensor(&[1, 4, 2, 8], 4),
        tensor(&[1, 1, 2, 8], 5),
        tensor(&[1, 1, 2, 8], 6),
    );
    let got = reference::attention(&q, &k, &v, 1.0).unwrap();
    let want = v.broadcast_as((1, 4, 2, 8)).unwrap().contiguous().unwrap();
    let diff = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-6, "{diff}");
}

#[test]
fn attention_rejects_mismatched_head_counts() {
    let err = reference::attention(
        &tensor(&[1, 4, 2, 8], 1),
        &tensor(&[1, 4, 3, 8], 2),
        &tensor(&[1, 4, 3, 8], 3),
        1.0,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("shapes disagree"), "{err}");
}

#[test]
fn causal_attention_matches_a_masked_scalar_loop_with_grouped_heads() {
    // Two sequences of 9 keys, the first left-padded by 5 (as generation pads a batch), 6 new
    // queries after 3 cached keys (the first two of the padded sequence see no key), 6 query
    // heads over 2 key/value heads, with and without a window.
    let (b, lq, lk, h, kv_heads, d) = (2, 6, 9, 6, 2, 8);
    let real = |seq: usize, key: usize| seq == 1 || key >= 5;
    let (q, k, v) = (
        tensor(&[b, lq, h, d], 7),
        tensor(&[b, lk, kv_heads, d], 8),
        tensor(&[b, lk, kv_heads, d], 9),
    );
    let (qv, kv, vv) = (
        q.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        k.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    let scale = 0.3f32;
    for window in [None, Some(3)] {
        let mask = CausalMask {
            offset: lk - lq,
            window,
            real_keys: Some(vec![(5, lk - 1), (0, lk - 1)]),
        };
        let got = reference::causal_attention(&q, &k, &v, scale, &mask).unwrap();
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut want = vec![0f32; b * lq * h * d];
        for seq in 0..b {
            for head in 0..h {
                let kv_head = head / (h / kv_heads);
                for i in 0..lq {
                    let position = lk - lq + i;
                    // transformers' masking_utils: causal, within the window, real keys only.
                    let seen = |j: usize| {
                        j <= position && window.is_none_or(|w| j + w > position) && real(seq, j)
                    };
                    let qi = |e| f64::from(qv[((seq * lq + i) * h + head) * d + e]);
                    let kj = |j, e| ((seq * lk + j) * kv_heads + kv_head) * d + e;
                    let scores: Vec<f64> = (0..lk)
                        .map(|j| (0..d).map(|e| qi(e) * f64::from(kv[kj(j, e)])).sum::<f64>())
                        .collect();
                    let any = (0..lk).any(seen);
                    let w: Vec<f64> = (0..lk)
                        .map(|j| match (any, seen(j)) {
                            (false, _) => 1.0,
                            (true, true) => (scores[j] * f64::from(scale)).exp(),
                            (true, false) => 0.0,
                        })
                        .collect();
                    let z: f64 = w.iter().sum();
                    for e in 0..d {
                        let o: f64 = (0..lk).map(|j| w[j] / z * f64::from(vv[kj(j, e)])).sum();
                        want[((seq * lq + i) * h + head) * d + e] = o as f32;
                    }
                }
            }
        }
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-5, "window {window:?}: {diff}");
    }
}

#[test]
fn causal_masks_that_do_not_fit_are_refused() {
    let x = tensor(&[1, 4, 2, 8], 1);
    let refused = |mask: CausalMask| {
        reference::causal_attention(&x, &x, &x, 1.0, &mask)
            .unwrap_err()
            .to_string()
    };
    let err = refused(CausalMask {
        offset: 1,
        ..Default::default()
    });
    assert!(err.contains("need 5 keys, got 4"), "{err}");
    let err = refused(CausalMask {
        window: Some(0),
        ..Default::default()
    });
    assert!(err.contains("at least one key"), "{err}");
    let err = refused(CausalMask {
        real_keys: Some(vec![(2, 4)]),
        ..Default::default()
    });
    assert!(err.contains("real keys 2..=4 do not lie in 0..4"), "{err}");
    let err = reference::causal_attention(
        &x,
        &tensor(&[1, 4, 3, 8], 2),
        &x,
        1.0,
        &CausalMask::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("shapes disagree"), "{err}");
}

/// Scalar LayerNorm/RMSNorm + affine + modulation for one row.
fn norm_row(
    x: &[f32],
    kind: NormKind,
    eps: f64,
    w: &[f32],
    bias: &[f32],
    scale: &[f32],
    shift: &[f32],
) -> Vec<f32> {
    let n = x.len() as f64;
    let mean = if kind == NormKind::Layer {
        x.iter().map(|&v| f64::from(v)).sum::<f64>() / n
    } else {
        0.0
    };
    let var = x
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let rstd = 1.0 / (var + eps).sqrt();
    (0..x.len())
        .map(|j| {
            (((f64::from(x[j]) - mean) * rstd * f64::from(w[j]) + f64::from(bias[j]))
                * (1.0 + f64::from(scale[j]))
                + f64::from(shift[j])) as f32
        })
        .collect()
}

#[test]
fn layer_norm_with_per_sample_modulation_matches_scalar_loop() {
    let (b, l, d) = (2, 3, 16);
    let x = tensor(&[b, l, d], 7);
    let (w, bias, scale, shift) = (
        tensor(&[d], 8),
        tensor(&[d], 9),
        tensor(&[b, d], 10),
        tensor(&[b, d], 11),
    );
    let spec = NormSpec {
        weight: Some(w.clone()),
        bias: Some(bias.clone()),
        scale: Some(scale.clone()),
        shift: Some(shift.clone()),
        ..NormSpec::new(NormKind::Layer, 1e-6)
    };
    let got = reference::modulated_norm(&x, &spec)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (wv, bv) = (w.to_vec1::<f32>().unwrap(), bias.to_vec1::<f32>().unwrap());
    let (sc, sh) = (
        scale.to_vec2::<f32>().unwrap(),
        shift.to_vec2::<f32>().unwrap(),
    );
    let mut want = Vec::new();
    for bi in 0..b {
        for li in 0..l {
            let row = &xv[(bi * l + li) * d..][..d];
            want.extend(norm_row(
                row,
                NormKind::Layer,
                1e-6,
                &wv,
                &bv,
                &sc[bi],
                &sh[bi],
            ));
        }
    }
    assert!(max_abs_diff(&got, &want) < 1e-5);
}

#[test]
fn rms_norm_with_per_token_modulation_uses_each_tokens_row() {
    let (b, l, d) = (1, 4, 8);
    let x = tensor(&[b, l, d], 12);
    let (scale, shift) = (tensor(&[b, l, d], 13), tensor(&[b, l, d], 14));
    let spec = NormSpec {
        scale: Some(scale.clone()),
        shift: Some(shift.clone()),
        ..NormSpec::new(NormKind::Rms, 1e-5)
    };
    let got = reference::modulated_norm(&x, &spec)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (sc, sh) = (
        scale.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        shift.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    let ones = vec![1f32; d];
    let zeros = vec![0f32; d];
    let mut want = Vec::new();
    for li in 0..l {
        want.extend(norm_row(
            &xv[li * d..][..d],
            NormKind::Rms,
            1e-5,
            &ones,
            &zeros,
            &sc[li * d..][..d],
            &sh[li * d..][..d],
        ));
    }
    assert!(max_abs_diff(&got, &want) < 1e-5);
}

#[test]
fn norm_rejects_modulation_of_the_wrong_shape() {
    let spec = NormSpec {
        scale: Some(tensor(&[2, 15], 1)),
        ..NormSpec::new(NormKind::Layer, 1e-6)
    };
    let err = reference::modulated_norm(&tensor(&[2, 3, 16], 2), &spec)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("norm scale must be [2, 16] or [2, 3, 16]"),
        "{err}"
    );
}

#[test]
fn rope_rotates_each_pair_by_its_axis_angle() {
    // head_dim 12: height and width parts of 2 * (12 / 6) = 4, the frame part 12 - 8 = 4.
    let grid = RopeGrid {
        frames: 2,
        height: 3,
        width: 4,
    };
    let (h, d, theta) = (2, 12, 10_000.0f64);
    let x = tensor(&[1, grid.tokens(), h, d], 15);
    let got = reference::rope3d(&x, grid, theta)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut want = vec![0f32; xv.len()];
    for f in 0..grid.frames {
        for y in 0..grid.height {
            for w in 0..grid.width {
                let l = (f * grid.height + y) * grid.width + w;
                for hi in 0..h {
                    for j in 0..d / 2 {
                        // Pairs 0-1 follow the frame, 2-3 the row, 4-5 the column, each part
                        // with frequencies theta^(-2i/4), i = 0, 1.
                        let (pos, i) = [(f, 0), (f, 1), (y, 0), (y, 1), (w, 0), (w, 1)][j];
                        let angle = pos as f64 * theta.powf(-(2.0 * i as f64) / 4.0);
                        let base = (l * h + hi) * d + 2 * j;
                        let (a, b) = (f64::from(xv[base]), f64::from(xv[base + 1]));
                        want[base] = (a * angle.cos() - b * angle.sin()) as f32;
                        want[base + 1] = (a * angle.sin() + b * angle.cos()) as f32;
                    }
                }
            }
        }
    }
    assert!(max_abs_diff(&got, &want) < 1e-5);
}

#[test]
fn rms_norm_with_rope_rotates_each_normalised_head() {
    // Wan's self-attention q path: RMS norm across the heads with a weight, then each head's RoPE.
    // head_dim 64 splits into a frame part of 24 and height and width parts of 20 each.
    let grid = RopeGrid {
        frames: 2,
        height: 3,
        width: 4,
    };
    let (heads, hd, theta, eps) = (2, 64, 10_000.0f64, 1e-6);
    let d = heads * hd;
    let x = tensor(&[1, grid.tokens(), d], 21);
    let w = values(d, 22);
    let spec = NormSpec {
        weight: Some(Tensor::new(w.as_slice(), &Device::Cpu).unwrap()),
        rope: Some(NormRope {
            grid,
            head_dim: hd,
            theta,
        }),
        ..NormSpec::new(NormKind::Rms, eps)
    };
    let got = reference::modulated_norm(&x, &spec)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let zeros = vec![0f32; d];
    let mut want = Vec::with_capacity(xv.len());
    for (l, row) in xv.chunks(d).enumerate() {
        let n = norm_row(row, NormKind::Rms, eps, &w, &zeros, &zeros, &zeros);
        let (f, y, x) = (
            l / (grid.height * grid.width),
            (l / grid.width) % grid.height,
            l % grid.width,
        );
        for head in n.chunks(hd) {
            for (j, pair) in head.chunks(2).enumerate() {
                // Pairs 0-11 follow the frame (part of 24), 12-21 the row, 22-31 the column
                // (parts of 20), each with frequencies theta^(-2i/part).
                let (pos, i, part) = match j {
                    0..12 => (f, j, 24.0),
                    12..22 => (y, j - 12, 20.0),
                    _ => (x, j - 22, 20.0),
                };
                let angle = pos as f64 * theta.powf(-(2.0 * i as f64) / part);
                let (a, b) = (f64::from(pair[0]), f64::from(pair[1]));
                want.push((a * angle.cos() - b * angle.sin()) as f32);
                want.push((a * angle.sin() + b * angle.cos()) as f32);
            }
        }
    }
    let diff = max_abs_diff(&got, &want);
    assert!(diff < 1e-4, "max abs diff {diff}");
}

#[test]
fn rms_norm_rotary_normalises_whole_rows_then_rotates_each_layouts_pairs() {
    // LTX-2's q/k: the RMS norm across all heads, then pairs by table entry: (2p, 2p + 1)
    // interleaved, or a head's i-th value with its (i + head_dim/2)-th in the split layout. Two
    // samples with a table each (B·L rows), as conditioned tokens have.
    let (b, l, heads, hd, eps) = (2, 3, 2, 8, 1e-6);
    let d = heads * hd;
    let x = tensor(&[b, l, d], 31);
    let w = values(d, 32);
    let angles = values(b * l * d / 2, 33);
    let table = |f: fn(f32) -> f32| {
        let v: Vec<f32> = angles.iter().map(|&a| f(a)).collect();
        Tensor::from_vec(v, (b * l, d / 2), &Device::Cpu).unwrap()
    };
    let (cos, sin) = (table(f32::cos), table(f32::sin));
    let weight = Tensor::new(w.as_slice(), &Device::Cpu).unwrap();
    let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let zeros = vec![0f32; d];
    for pairs in [
        RotaryPairs::Interleaved,
        RotaryPairs::Split { head_dim: hd },
    ] {
        let got = reference::rms_norm_rotary(&x, Some(&weight), eps, &cos, &sin, pairs)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut want = vec![0f32; xv.len()];
        for (r, row) in xv.chunks(d).enumerate() {
            let n = norm_row(row, NormKind::Rms, eps, &w, &zeros, &zeros, &zeros);
            for p in 0..d / 2 {
                let (i, j) = match pairs {
                    RotaryPairs::Interleaved => (2 * p, 2 * p + 1),
                    RotaryPairs::Split { head_dim } => {
                        let (head, k) = (p / (head_dim / 2), p % (head_dim / 2));
                        (head * head_dim + k, head * head_dim + k + head_dim / 2)
                    }
                };
                let angle = angles[r * d / 2 + p];
                let (c, s) = (angle.cos(), angle.sin());
                want[r * d + i] = n[i] * c - n[j] * s;
                want[r * d + j] = n[j] * c + n[i] * s;
            }
        }
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-5, "{pairs:?}: max abs diff {diff}");
    }
    // Tables for one sample serve both; tables of another length are refused.
    let one = |t: &Tensor| t.narrow(0, 0, l).unwrap();
    let pairs = RotaryPairs::Split { head_dim: hd };
    let shared = reference::rms_norm_rotary(&x, None, eps, &one(&cos), &one(&sin), pairs).unwrap();
    assert_eq!(shared.dims(), [b, l, d]);
    let short = cos.narrow(0, 0, 4).unwrap();
    let err = reference::rms_norm_rotary(&x, None, eps, &short, &short, pairs).unwrap_err();
    assert!(err.to_string().contains("do not fit rows"), "{err}");
    let odd = RotaryPairs::Split { head_dim: 6 };
    let err = reference::rms_norm_rotary(&x, None, eps, &cos, &sin, odd).unwrap_err();
    assert!(err.to_string().contains("head_dim 6"), "{err}");
}

#[test]
fn norm_rope_rejects_heads_that_do_not_tile_the_row() {
    let grid = RopeGrid {
        frames: 1,
        height: 2,
        width: 2,
    };
    let spec = NormSpec {
        rope: Some(NormRope {
            grid,
            head_dim: 16,
            theta: 10_000.0,
        }),
        ..NormSpec::new(NormKind::Rms, 1e-6)
    };
    let err = reference::modulated_norm(&tensor(&[1, 4, 40], 3), &spec)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("must be a multiple of 8 dividing 256 and the norm dim 40"),
        "{err}"
    );
    let err = reference::modulated_norm(&tensor(&[1, 5, 32], 3), &spec)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has 4 tokens but the norm input has 5"),
        "{err}"
    );
}

#[test]
fn rope_splits_head_dim_128_as_wan_does() {
    assert_eq!(RopeGrid::split(128), (44, 42));
    assert_eq!(RopeGrid::split(64), (24, 20));
}

#[test]
fn rope_rejects_a_grid_that_does_not_cover_the_sequence() {
    let grid = RopeGrid {
        frames: 2,
        height: 3,
        width: 4,
    };
    let err = reference::rope3d(&tensor(&[1, 23, 2, 12], 1), grid, 10_000.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("has 24 tokens but the input has 23"), "{err}");
}

#[test]
fn gated_residual_adds_the_gated_branch_per_sample() {
    let (x, y, gate) = (
        tensor(&[2, 3, 8], 16),
        tensor(&[2, 3, 8], 17),
        tensor(&[2, 8], 18),
    );
    let got = reference::gated_residual(&x, &y, &gate)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let (xv, yv, gv) = (
        x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        gate.to_vec2::<f32>().unwrap(),
    );
    let want: Vec<f32> = (0..xv.len())
        .map(|i| xv[i] + yv[i] * gv[i / 24][i % 8])
        .collect();
    assert!(max_abs_diff(&got, &want) < 1e-6);
}

#[test]
fn gated_residual_rejects_a_gate_of_another_width() {
    let err = reference::gated_residual(
        &tensor(&[1, 3, 8], 1),
        &tensor(&[1, 3, 8], 2),
        &tensor(&[1, 7], 3),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("gate must be [1, 8] or [1, 3, 8]"), "{err}");
}

#[test]
fn linear_with_bias_and_tanh_gelu_matches_scalar_loop() {
    let (rows, k, n) = (3, 5, 4);
    let (x, w, b) = (
        tensor(&[1, rows, k], 11),
        tensor(&[n, k], 12),
        tensor(&[n], 13),
    );
    let got = reference::linear(&x, &w, Some(&b), true).unwrap();
    assert_eq!(got.dims(), [1, rows, n]);
    let (xv, wv, bv) = (values(rows * k, 11), values(n * k, 12), values(n, 13));
    let mut want = Vec::new();
    for r in 0..rows {
        for j in 0..n {
            let y: f32 = (0..k).map(|i| xv[r * k + i] * wv[j * k + i]).sum::<f32>() + bv[j];
            // GELU, tanh approximation (PyTorch's approximate="tanh").
            let c = (2.0f32 / std::f32::consts::PI).sqrt();
            want.push(0.5 * y * (1.0 + (c * (y + 0.044715 * y * y * y)).tanh()));
        }
    }
    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(max_abs_diff(&got, &want) < 1e-4, "{got:?} vs {want:?}");
    let plain = reference::linear(&x, &w, None, false).unwrap();
    assert_eq!(plain.dims(), [1, rows, n]);
}

/// The causal 3-D convolution a [`FrameConv`] stands for, from its definition: output frame `j`
/// reads frames `j * stride_t + tap` (tap-major channels in the weight), zero-padded spatially.
fn frame_conv_loop(x: &Tensor, w: &Tensor, bias: &Tensor, spec: FrameConv) -> Vec<f32> {
    let (b, t, c, h, wd) = x.dims5().unwrap();
    let (_, _, kh, kw) = w.dims4().unwrap();
    let (t_out, h_out, w_out) = (
        spec.out_frames(t).unwrap(),
        spec.out_size(h, kh).unwrap(),
        spec.out_size(wd, kw).unwrap(),
    );
    let (xv, wv, bv) = (
        x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        bias.to_vec1::<f32>().unwrap(),
    );
    let mut out = Vec::new();
    for bi in 0..b {
        for j in 0..t_out {
            for (oc, &b0) in bv.iter().enumerate() {
                for y in 0..h_out {
                    for xo in 0..w_out {
                        let mut acc = b0;
                        for tap in 0..spec.taps {
                            let frame = j * spec.stride_t + tap;
                            for ci in 0..c {
                                for ky in 0..kh {
                                    for kx in 0..kw {
                                        let iy =
                                            (y * spec.stride + ky) as isize - spec.pad as isize;
                                        let ix =
                                            (xo * spec.stride + kx) as isize - spec.pad as isize;
                                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize
                                        {
                                            continue;
                                        }
                                        let xi = (((bi * t + frame) * c + ci) * h + iy as usize)
                                            * wd
                                            + ix as usize;
                                        let wi = ((oc * spec.taps * c + tap * c + ci) * kh + ky)
                                            * kw
                                            + kx;
                                        acc += xv[xi] * wv[wi];
                                    }
                                }
                            }
                        }
                        out.push(acc);
                    }
                }
            }
        }
    }
    out
}

#[test]
fn frame_conv_matches_the_causal_conv3d_loop() {
    // A kernel-3 causal conv, a temporal stride-2 downsampler, a strided 2-D conv, a 1x1 shortcut.
    for (shape, o, k, spec) in [
        (
            [2, 5, 3, 6, 7],
            4,
            3,
            FrameConv {
                taps: 3,
                stride_t: 1,
                pad: 1,
                stride: 1,
            },
        ),
        (
            [1, 6, 2, 5, 5],
            3,
            1,
            FrameConv {
                taps: 3,
                stride_t: 2,
                pad: 0,
                stride: 1,
            },
        ),
        (
            [1, 3, 4, 7, 6],
            2,
            3,
            FrameConv {
                taps: 1,
                stride_t: 1,
                pad: 0,
                stride: 2,
            },
        ),
        (
            [2, 2, 5, 4, 4],
            6,
            1,
            FrameConv {
                taps: 1,
                stride_t: 1,
                pad: 0,
                stride: 1,
            },
        ),
    ] {
        let x = tensor(&shape, 11);
        let w = tensor(&[o, spec.taps * shape[2], k, k], 12);
        let bias = tensor(&[o], 13);
        let got = reference::frame_conv(&x, &w, &bias, spec, &Epilogue::default()).unwrap();
        let want = frame_conv_loop(&x, &w, &bias, spec);
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-4, "{shape:?} {spec:?}");
    }
}

#[test]
fn frame_conv_rejects_a_weight_for_another_window() {
    let spec = FrameConv {
        taps: 3,
        stride_t: 1,
        pad: 1,
        stride: 1,
    };
    let x = tensor(&[1, 4, 2, 5, 5], 1);
    let bias_only = Epilogue::default();
    let weight = tensor(&[3, 2, 3, 3], 2);
    let err = reference::frame_conv(&x, &weight, &tensor(&[3], 3), spec, &bias_only)
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs 6 input channels (3 taps x 2)"), "{err}");
    let err = reference::frame_conv(
        &tensor(&[1, 2, 2, 5, 5], 1),
        &tensor(&[3, 6, 3, 3], 2),
        &tensor(&[3], 3),
        spec,
        &bias_only,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("at least 3 frames, got 2"), "{err}");
}

/// The epilogue as its definition reads, element by element: act(conv + bias + residual).
#[test]
fn frame_conv_epilogue_adds_the_residual_then_activates() {
    let spec = FrameConv {
        taps: 1,
        stride_t: 1,
        pad: 1,
        stride: 1,
    };
    let (x, w, bias) = (
        tensor(&[2, 1, 3, 4, 5], 51),
        tensor(&[4, 3, 3, 3], 52),
        tensor(&[4], 53),
    );
    let plain = reference::frame_conv(&x, &w, &bias, spec, &Epilogue::default()).unwrap();
    let residual = tensor(plain.dims(), 54);
    let slopes = Tensor::new(&[0.1f32, -0.5, 1.5, 0.0], &Device::Cpu).unwrap();
    let sum: Vec<f32> = flat(&(&plain + &residual).unwrap());
    for (activation, slope_of) in [
        (Activation::None, None),
        (Activation::LeakyRelu(0.2), Some([0.2f32; 4])),
        (Activation::PRelu(slopes), Some([0.1, -0.5, 1.5, 0.0])),
    ] {
        let epilogue = Epilogue {
            residual: Some(residual.clone()),
            activation,
        };
        let got = flat(&reference::frame_conv(&x, &w, &bias, spec, &epilogue).unwrap());
        let want: Vec<f32> = sum
            .iter()
            .enumerate()
            .map(|(i, &v)| match slope_of {
                Some(slopes) if v < 0.0 => v * slopes[(i / 20) % 4],
                _ => v,
            })
            .collect();
        assert!(max_abs_diff(&got, &want) < 1e-6, "{epilogue:?}");
    }
    let wrong = Epilogue {
        residual: Some(tensor(&[2, 1, 4, 4, 4], 55)),
        activation: Activation::None,
    };
    let err = reference::frame_conv(&x, &w, &bias, spec, &wrong)
        .unwrap_err()
        .to_string();
    assert!(err.contains("residual"), "{err}");
    let slopes = Tensor::new(&[0.1f32, 0.2], &Device::Cpu).unwrap();
    let err = reference::frame_conv(
        &x,
        &w,
        &bias,
        spec,
        &Epilogue::activation(Activation::PRelu(slopes)),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("2 PReLU slopes for 4 output channels"),
        "{err}"
    );
}

#[test]
fn channel_rms_norm_divides_each_pixels_channels_by_its_divisor() {
    // [b, t, c, h, w] over dim 2: Wan's clamped L2 norm (its scale carries sqrt(C)) and LTX-2's
    // RMS with eps, then SiLU; a pixel of zeros stays zero under both.
    let (c, pixels) = (3, 4);
    let mut xv = values(c * pixels, 41);
    for ch in 0..c {
        xv[ch * pixels] = 0.0;
    }
    let x = Tensor::from_vec(xv.clone(), (1, 1, c, 2, 2), &Device::Cpu).unwrap();
    let sv = values(c, 42);
    let scale = Tensor::new(sv.as_slice(), &Device::Cpu).unwrap();
    let eps = 1e-8;
    for divisor in [ChannelDivisor::L2, ChannelDivisor::Rms { eps }] {
        let got = reference::channel_rms_norm(&x, &scale, 2, divisor, true)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut want = vec![0f32; xv.len()];
        for p in 0..pixels {
            let sum: f64 = (0..c)
                .map(|ch| f64::from(xv[ch * pixels + p]).powi(2))
                .sum();
            let div = match divisor {
                ChannelDivisor::L2 => sum.sqrt().max(1e-12),
                ChannelDivisor::Rms { eps } => (sum / c as f64 + eps).sqrt(),
            };
            for ch in 0..c {
                let y = f64::from(xv[ch * pixels + p]) / div * f64::from(sv[ch]);
                want[ch * pixels + p] = (y / (1.0 + (-y).exp())) as f32;
            }
        }
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-5, "{divisor:?}: max abs diff {diff}");
    }
}

#[test]
fn pad_frames_repeats_the_end_frames_and_pads_space_like_torch() {
    let x = Tensor::arange(0f32, 12.0, &Device::Cpu)
        .unwrap()
        .reshape((1, 2, 1, 2, 3))
        .unwrap();
    let frames = |mode: SpatialPad| {
        let padding = FramePadding {
            before: 1,
            after: 0,
            pad: 1,
            mode,
        };
        let y = reference::pad_frames(&x, padding).unwrap();
        assert_eq!(y.dims(), [1, 3, 1, 4, 5]);
        let rows = |f: usize| {
            y.narrow(1, f, 1)
                .unwrap()
                .reshape((4, 5))
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        };
        // The repeated first frame is the first frame's padding.
        assert_eq!(rows(0), rows(1));
        rows(2)
    };
    // torch.nn.functional.pad(frame_1, (1, 1, 1, 1), mode="reflect") / "replicate" / zeros.
    assert_eq!(
        frames(SpatialPad::Reflect),
        [
            [10., 9., 10., 11., 10.],
            [7., 6., 7., 8., 7.],
            [10., 9., 10., 11., 10.],
            [7., 6., 7., 8., 7.]
        ]
    );
    assert_eq!(
        frames(SpatialPad::Replicate),
        [
            [6., 6., 7., 8., 8.],
            [6., 6., 7., 8., 8.],
            [9., 9., 10., 11., 11.],
            [9., 9., 10., 11., 11.]
        ]
    );
    assert_eq!(
        frames(SpatialPad::Zeros),
        [
            [0., 0., 0., 0., 0.],
            [0., 6., 7., 8., 0.],
            [0., 9., 10., 11., 0.],
            [0., 0., 0., 0., 0.]
        ]
    );
    let one_row = x.narrow(3, 0, 1).unwrap();
    let reflect = FramePadding {
        before: 0,
        after: 0,
        pad: 1,
        mode: SpatialPad::Reflect,
    };
    let err = reference::pad_frames(&one_row, reflect).unwrap_err();
    assert!(err.to_string().contains("[1, 2, 1, 1, 3]"), "{err}");
}

#[test]
fn fp8_row_quantization_maps_each_rows_largest_magnitude_to_448() {
    // Three tokens of 16: ordinary values, an all-zero row, one large value among small ones.
    let mut rows = values(48, 9);
    rows[16..32].fill(0.0);
    rows[40] = -1000.0;
    let x = Tensor::from_vec(rows.clone(), (1, 3, 16), &Device::Cpu).unwrap();
    let (q, scale) = reference::fp8_quantize_rows(&x).unwrap();
    assert_eq!(q.dims(), [1, 3, 16]);
    let scale = scale.to_vec1::<f32>().unwrap();
    let max = |r: &[f32]| r.iter().fold(0f32, |m, v| m.max(v.abs()));
    let inverse = 1.0 / 448.0;
    assert_eq!(scale, [max(&rows[..16]) * inverse, 1.0, 1000.0 * inverse]);
    let q = q
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(max(&q[..16]), 448.0);
    assert!(q[16..32].iter().all(|v| *v == 0.0));
    assert_eq!(q[40], -448.0);
    // Dequantized, every value is within e4m3's rounding step (3 mantissa bits) of the input.
    for (i, (got, want)) in q.iter().zip(&rows).enumerate() {
        let back = got * scale[i / 16];
        assert!(
            (back - want).abs() <= want.abs() / 16.0 + scale[i / 16] / 512.0,
            "element {i}: {want} came back as {back}"
        );
    }
}

fn planes(data: &[f32], shape: (usize, usize, usize, usize)) -> Tensor {
    Tensor::from_slice(data, shape, &Device::Cpu).unwrap()
}

fn flat(x: &Tensor) -> Vec<f32> {
    x.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn warp_by_whole_pixels_shifts_and_clamps_at_the_border() {
    // 1x3 image [10, 20, 30]; flow +1 reads the right neighbour, the last pixel clamps.
    let image = planes(&[10., 20., 30.], (1, 1, 1, 3));
    let flow = planes(&[1., 1., 1., 0., 0., 0.], (1, 2, 1, 3));
    assert_eq!(
        flat(&reference::warp(&image, &flow).unwrap()),
        [20., 30., 30.]
    );
    // Flow −5 runs off the left: border padding repeats the first pixel.
    let flow = planes(&[-5., -5., -5., 0., 0., 0.], (1, 2, 1, 3));
    assert_eq!(
        flat(&reference::warp(&image, &flow).unwrap()),
        [10., 10., 10.]
    );
}

#[test]
fn warp_interpolates_bilinearly_in_both_directions() {
    // 2x2 image [[0, 10], [20, 30]], every pixel sampling the centre (0.5, 0.5) of the square:
    // mean 15. Two channels, the second doubled; batch of two with different flows.
    let image = planes(
        &[
            0., 10., 20., 30., 0., 20., 40., 60., 0., 10., 20., 30., 0., 20., 40., 60.,
        ],
        (2, 2, 2, 2),
    );
    let centre = [0.5, -0.5, 0.5, -0.5, 0.5, 0.5, -0.5, -0.5];
    let quarter = [0.25, 0.25, 0.25, 0.25, 0., 0., 0., 0.];
    let flow = planes(&[centre, quarter].concat(), (2, 2, 2, 2));
    let got = flat(&reference::warp(&image, &flow).unwrap());
    assert_eq!(got[..8], [15., 15., 15., 15., 30., 30., 30., 30.]);
    // x + 0.25: 0.75·left + 0.25·right on the first column; the last column clamps.
    assert_eq!(got[8..12], [2.5, 10., 22.5, 30.]);
}

/// `grid_sample(bilinear, border, align_corners=True)` as a scalar loop over PyTorch's
/// normalised coordinates: the grid is the pixel centre plus flow / ((size − 1) / 2), mapped back
/// to pixels and clamped.
#[test]
fn warp_matches_a_scalar_grid_sample_loop_on_random_flows() {
    let (b, c, h, w) = (2, 3, 5, 7);
    let image = tensor(&[b, c, h, w], 41);
    let flow = (tensor(&[b, 2, h, w], 42) * 3.0).unwrap();
    let got = flat(&reference::warp(&image, &flow).unwrap());
    let (img, fl) = (flat(&image), flat(&flow));
    let mut want = vec![0f32; b * c * h * w];
    for n in 0..b {
        for y in 0..h {
            for x in 0..w {
                let at = |ch: usize| ((n * 2 + ch) * h + y) * w + x;
                let unnormalise = |g: f32, size: usize| (g + 1.0) / 2.0 * (size - 1) as f32;
                let gx = 2.0 * x as f32 / (w - 1) as f32 - 1.0 + fl[at(0)] / ((w - 1) as f32 / 2.0);
                let gy = 2.0 * y as f32 / (h - 1) as f32 - 1.0 + fl[at(1)] / ((h - 1) as f32 / 2.0);
                let sx = unnormalise(gx, w).clamp(0.0, (w - 1) as f32);
                let sy = unnormalise(gy, h).clamp(0.0, (h - 1) as f32);
                let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
                let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
                let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
                for ch in 0..c {
                    let p = |yy: usize, xx: usize| img[((n * c + ch) * h + yy) * w + xx];
                    want[((n * c + ch) * h + y) * w + x] = p(y0, x0) * (1.0 - fx) * (1.0 - fy)
                        + p(y0, x1) * fx * (1.0 - fy)
                        + p(y1, x0) * (1.0 - fx) * fy
                        + p(y1, x1) * fx * fy;
                }
            }
        }
    }
    let diff = max_abs_diff(&got, &want);
    assert!(diff < 1e-4, "warp vs grid_sample loop: {diff}");
}

#[test]
fn warp_refuses_a_flow_of_another_size() {
    let image = Tensor::zeros((1, 3, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let flow = Tensor::zeros((1, 2, 4, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = reference::warp(&image, &flow).unwrap_err().to_string();
    assert!(err.contains("flow"), "{err}");
}

/// The channels-last convolution is the NCHW one between transpositions, epilogue included.
#[test]
fn image_conv_nhwc_is_frame_conv_in_channels_last_order() {
    let spec = FrameConv {
        taps: 1,
        stride_t: 1,
        pad: 1,
        stride: 2,
    };
    let (x, w, bias) = (
        tensor(&[2, 5, 7, 6], 61),
        tensor(&[4, 5, 3, 3], 62),
        tensor(&[4], 63),
    );
    let nchw = reference::frame_conv(
        &x.unsqueeze(1).unwrap(),
        &w,
        &bias,
        spec,
        &Epilogue::default(),
    )
    .unwrap()
    .squeeze(1)
    .unwrap();
    let residual = tensor(nchw.dims(), 64);
    let epilogue = Epilogue {
        residual: Some(residual.unsqueeze(1).unwrap()),
        activation: Activation::LeakyRelu(0.2),
    };
    let want = reference::frame_conv(&x.unsqueeze(1).unwrap(), &w, &bias, spec, &epilogue)
        .unwrap()
        .squeeze(1)
        .unwrap()
        .permute((0, 2, 3, 1))
        .unwrap();
    let last = |t: &Tensor| t.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
    let nhwc_epilogue = Epilogue {
        residual: Some(last(&residual)),
        activation: Activation::LeakyRelu(0.2),
    };
    let got =
        reference::image_conv_nhwc(&last(&x), &last(&w), &bias, spec, &nhwc_epilogue).unwrap();
    assert_eq!(got.dims(), [2, 4, 3, 4]);
    assert!(max_abs_diff(&flat(&got), &flat(&want.contiguous().unwrap())) < 1e-6);
    let err = reference::image_conv_nhwc(&last(&x), &w, &bias, spec, &Epilogue::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("do not fit 5 input channels"), "{err}");
}

/// Each slot of the buffer gets the part at its channel offset, and nothing else changes: a
/// dense block's inputs as concatenations.
#[test]
fn scatter_channels_writes_the_part_into_each_slot_only() {
    let (pixels, c) = (6, 4);
    let part = tensor(&[2, 3, c], 1);
    let before = tensor(&[pixels * 12 + pixels * 8 + 3], 2);
    let buffer = before.copy().unwrap();
    let slots = [
        ChannelSlot {
            start: 0,
            pitch: 12,
            offset: 8,
        },
        ChannelSlot {
            start: pixels * 12 + 3,
            pitch: 8,
            offset: 0,
        },
    ];
    reference::scatter_channels(&buffer, &part, &slots).unwrap();
    let got = buffer.to_vec1::<f32>().unwrap();
    let mut want = before.to_vec1::<f32>().unwrap();
    let part = part.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for slot in slots {
        for p in 0..pixels {
            for ch in 0..c {
                want[slot.start + p * slot.pitch + slot.offset + ch] = part[p * c + ch];
            }
        }
    }
    assert_eq!(got, want);

    let too_wide = ChannelSlot {
        start: 0,
        pitch: 12,
        offset: 9,
    };
    let err = reference::scatter_channels(&buffer, &tensor(&[pixels, c], 3), &[too_wide])
        .unwrap_err()
        .to_string();
    assert!(err.contains("do not fit"), "{err}");
    let past_the_end = ChannelSlot {
        start: pixels * 12 + 4,
        pitch: 8,
        offset: 0,
    };
    assert!(
        reference::scatter_channels(&buffer, &tensor(&[pixels, c], 3), &[past_the_end]).is_err()
    );
}
