//! The attention entry point every model calls.
//!
//! `attention(q, k, v)` is the ONE function that scaled dot-product attention goes through, so that a
//! fused GPU kernel can replace it in one place. The portable implementation here is chunked over
//! queries: it never materialises the full `Lq x Lk` score matrix of a long video sequence at once,
//! and it computes scores and softmax in f32 whatever the input dtype (as PyTorch's SDPA does).
//! This module must never hold model weights or know which model calls it.

use candle_core::{D, DType, Device, Result, Tensor};
use videosdgx_kernels::CausalMask;

/// Upper bound on the f32 score block of one query chunk (bytes). 256 MiB keeps a 1.3B Wan forward
/// at 33x256x256 within a few chunks without dominating peak memory.
const SCORE_BLOCK_BYTES: usize = 256 << 20;

/// Scaled dot-product attention, softmax scale `1/sqrt(head_dim)`, no mask.
///
/// `q`: `[batch, q_len, heads, head_dim]`, `k`/`v`: `[batch, kv_len, heads, head_dim]`;
/// returns `[batch, q_len, heads, head_dim]` in the dtype of `q`. With the `cuda` feature, bf16
/// inputs on a GPU run the fused kernel of `videosdgx_kernels` (its first use is logged by name);
/// CUDA inputs no kernel covers log a warning once and take the portable path.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let head_dim = q.dim(D::Minus1)?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    #[cfg(feature = "cuda")]
    if let Some(out) = fused_attention(q, k, v, scale)? {
        return Ok(out);
    }
    chunked_attention(q, k, v, None, scale, SCORE_BLOCK_BYTES)
}

/// The arithmetic a model's self-attention runs in (`--attention`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionPrecision {
    /// The inputs' own dtype (bf16 on a GPU), probabilities in bf16.
    #[default]
    Exact,
    /// q, k and v quantized to float8 e4m3 (q a scale per token, k per 128 keys, v per channel),
    /// probabilities in e4m3: both products at twice the bf16 rate on Hopper
    /// ([`videosdgx_kernels::attention_fp8`]); the Wan 2.1 14B forward's output moves 1.2e-2 (H100,
    /// random weights).
    Fp8,
}

impl AttentionPrecision {
    pub fn is_exact(&self) -> bool {
        *self == AttentionPrecision::Exact
    }
}

/// [`attention`] in `precision`. Float8 runs where its kernel does (bf16 on a Hopper GPU, head
/// dim 128, the `cuda` feature); elsewhere the exact attention runs, with one warning per process.
pub fn attention_in(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    precision: AttentionPrecision,
) -> Result<Tensor> {
    if precision == AttentionPrecision::Fp8 {
        #[cfg(feature = "cuda")]
        if fp8_kernel_runs(q, k, v)? {
            let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
            return videosdgx_kernels::attention_fp8(q, k, v, scale as f32);
        }
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                "attention: float8 runs on Hopper GPUs at head dim 128 in bf16; {:?} {:?} at head dim {:?} takes exact attention",
                q.device().location(),
                q.dtype(),
                q.dim(D::Minus1).ok()
            )
        });
    }
    attention(q, k, v)
}

/// Whether float8 attention runs on `device` in `dtype` (the `cuda` feature, bf16 on a Hopper
/// GPU, `attention` not in `VIDEOSDGX_UNFUSED`), for a model whose head dim is 128.
pub fn fp8_available(device: &Device, dtype: DType) -> bool {
    #[cfg(feature = "cuda")]
    if dtype == DType::BF16 && !crate::fused::disabled("attention") {
        return videosdgx_kernels::attention_fp8_supported(device).unwrap_or(false);
    }
    let _ = (device, dtype);
    false
}

/// Whether the float8 kernel takes these operands: [`fp8_available`] at head dim 128.
#[cfg(feature = "cuda")]
fn fp8_kernel_runs(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<bool> {
    let bf16 = [q, k, v].iter().all(|t| t.dtype() == DType::BF16);
    Ok(bf16 && q.dim(D::Minus1)? == 128 && fp8_available(q.device(), q.dtype()))
}

/// The fused kernel's result when one covers these inputs; `None` otherwise, with one warning per
/// process when the inputs are on CUDA, so the slow path on a GPU is never silent.
#[cfg(feature = "cuda")]
fn fused_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    if !q.device().is_cuda() || crate::fused::disabled("attention") {
        return Ok(None);
    }
    let same_dtype = k.dtype() == q.dtype() && v.dtype() == q.dtype();
    if same_dtype && videosdgx_kernels::attention_kernel_for(q)?.is_some() {
        return videosdgx_kernels::attention(q, k, v, scale as f32).map(Some);
    }
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            "attention: no fused kernel for {:?}/{:?}/{:?} with head_dim {:?}; portable chunked path on CUDA (slow)",
            q.dtype(),
            k.dtype(),
            v.dtype(),
            q.dim(D::Minus1).ok()
        )
    });
    Ok(None)
}

/// Whether [`causal_attention`] has a kernel for a language model's attention in `dtype` on
/// `device` at `head_dim`: the `cuda` feature, bf16 on a CUDA device, head dim 64, 128 or 256, and
/// `attention` not in `VIDEOSDGX_UNFUSED`. Elsewhere a language model masks its scores itself.
pub fn causal_kernel_available(device: &Device, dtype: DType, head_dim: usize) -> bool {
    #[cfg(feature = "cuda")]
    if device.is_cuda()
        && dtype == DType::BF16
        && videosdgx_kernels::targets::causal_attention_variant(head_dim).is_some()
    {
        return !crate::fused::disabled("attention");
    }
    let _ = (device, dtype, head_dim);
    false
}

/// A language model's causal attention with grouped key/value heads on the fused kernel, where
/// [`causal_kernel_available`] says it runs: `q [B, Lq, H, D]`, `k`/`v [B, Lk, Hkv, D]` (the keys
/// so far, cached first), the keys each query sees given by `mask`. Returns `[B, Lq, H, D]`.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: &CausalMask,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    return videosdgx_kernels::causal_attention(q, k, v, scale as f32, mask);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (q, k, v, scale, mask);
        candle_core::bail!("causal attention: the fused kernel needs a build with the cuda feature")
    }
}

/// Attention with an additive score bias, for T5-style relative position bias and padding masks.
///
/// Same layouts as [`attention`]; `bias` broadcasts to `[batch, heads, q_len, kv_len]` and is added
/// to `scale * q.k` before the softmax. Text encoders run once per prompt, so this stays portable.
pub fn attention_with_bias(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    chunked_attention(q, k, v, Some(bias), scale, SCORE_BLOCK_BYTES)
}

fn chunked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    scale: f64,
    block_bytes: usize,
) -> Result<Tensor> {
    let (batch, q_len, heads, _) = q.dims4()?;
    let kv_len = k.dim(1)?;
    let out_dtype = q.dtype();
    // [B, H, L, D] in f32: matmuls per head, softmax accumulated in full precision.
    let q = q.transpose(1, 2)?.to_dtype(DType::F32)?.contiguous()?;
    let k_t = k
        .transpose(1, 2)?
        .to_dtype(DType::F32)?
        .transpose(2, 3)?
        .contiguous()?;
    let v = v.transpose(1, 2)?.to_dtype(DType::F32)?.contiguous()?;
    let bias = match bias {
        Some(b) => Some(
            b.to_dtype(DType::F32)?
                .broadcast_as((batch, heads, q_len, kv_len))?,
        ),
        None => None,
    };

    let row_bytes = batch * heads * kv_len * std::mem::size_of::<f32>();
    let chunk = (block_bytes / row_bytes.max(1)).clamp(1, q_len.max(1));
    let mut outputs = Vec::with_capacity(q_len.div_ceil(chunk));
    let mut start = 0;
    while start < q_len {
        let len = chunk.min(q_len - start);
        let q_chunk = q.narrow(2, start, len)?;
        let mut scores = (q_chunk.matmul(&k_t)? * scale)?;
        if let Some(bias) = &bias {
            scores = (scores + bias.narrow(2, start, len)?)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        outputs.push(probs.matmul(&v)?);
        start += len;
    }
    let out = if outputs.len() == 1 {
        outputs.pop().expect("one chunk")
    } else {
        Tensor::cat(&outputs, 2)?
    };
    out.transpose(1, 2)?.contiguous()?.to_dtype(out_dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Plain softmax(q k^T / sqrt(d)) v on [B, H, L, D], the definition the chunked path must meet.
    fn naive(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let d = q.dim(3).unwrap() as f64;
        let (q, k, v) = (
            q.transpose(1, 2).unwrap().contiguous().unwrap(),
            k.transpose(1, 2).unwrap().contiguous().unwrap(),
            v.transpose(1, 2).unwrap().contiguous().unwrap(),
        );
        let s = (q.matmul(&k.t().unwrap()).unwrap() / d.sqrt()).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&s).unwrap();
        p.matmul(&v).unwrap().transpose(1, 2).unwrap()
    }

    #[test]
    fn chunked_attention_matches_full_softmax_attention() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (2, 37, 3, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (2, 11, 3, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (2, 11, 3, 8), &dev).unwrap();
        let expected = naive(&q, &k, &v);
        // A block budget of 5 query rows forces 8 chunks, the last one short.
        let row_bytes = 2 * 3 * 11 * 4;
        let got = chunked_attention(&q, &k, &v, None, 1.0 / 8f64.sqrt(), 5 * row_bytes).unwrap();
        let err = (got - &expected)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(err < 1e-5, "max abs error {err}");
        let zero_bias = Tensor::zeros((1, 3, 37, 11), DType::F32, &dev).unwrap();
        let biased = attention_with_bias(&q, &k, &v, &zero_bias, 1.0 / 8f64.sqrt()).unwrap();
        let err = (biased - expected)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(err < 1e-5, "max abs error with zero bias {err}");
    }
}
