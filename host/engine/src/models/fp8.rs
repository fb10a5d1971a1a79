//! Linear-layer weights kept in float8 (e4m3, the "fn" variant without infinities) with a scale,
//! as FP8 checkpoints store them (`weight` e4m3 plus `weight_scale` or ComfyUI's `scale_weight`,
//! per tensor or per output channel) and as `--quant fp8` makes them from a bf16 checkpoint at
//! load (per output channel). The layer holds one byte a weight; the value is `data · scale`.

use candle_core::{DType, Result, Tensor};
pub use videosdgx_kernels::reference::E4M3_MAX;

/// The checkpoint names of an FP8 weight's scale beside it: diffusers-style and LightX2V/LTX-2
/// (`weight_scale`), ComfyUI's scaled FP8 (`scale_weight`).
pub(crate) const FP8_SCALE_NAMES: [&str; 2] = ["weight_scale", "scale_weight"];

/// A `[out, in]` weight in e4m3 and its f32 scale: one value (`[]`) or one per output channel
/// (`[out, 1]`).
#[derive(Debug, Clone)]
pub struct Fp8Weight {
    data: Tensor,
    scale: Tensor,
}

impl Fp8Weight {
    /// `data` (e4m3 `[out, in]`) and its scale (any shape of 1 or `out` elements, any float
    /// dtype).
    pub fn new(data: Tensor, scale: &Tensor) -> Result<Self> {
        if data.dtype() != DType::F8E4M3 || data.rank() != 2 {
            candle_core::bail!(
                "an FP8 weight is a 2-D float8 (e4m3) tensor, not {:?} {:?}",
                data.dtype(),
                data.dims()
            );
        }
        let out = data.dim(0)?;
        let scale = scale.to_dtype(DType::F32)?.to_device(data.device())?;
        let scale = match scale.elem_count() {
            1 => scale.flatten_all()?.reshape(())?,
            n if n == out => scale.reshape((out, 1))?,
            n => candle_core::bail!(
                "an FP8 weight of {out} output channels takes 1 or {out} scales, not {n}"
            ),
        };
        Ok(Self { data, scale })
    }

    /// Quantizes `w` (`[out, in]`, any float dtype) with one scale per output channel: each
    /// row's largest magnitude maps to [`E4M3_MAX`] (an all-zero row keeps scale 1).
    pub fn quantize(w: &Tensor) -> Result<Self> {
        let (data, scale) = crate::fused::fp8_quantize_rows(w)?;
        Self::new(data, &scale)
    }

    /// `data · scale` in `dtype`, computed in f32 and rounded once.
    pub fn dequantize(&self, dtype: DType) -> Result<Tensor> {
        crate::fused::fp8_dequantize(&self.data, &self.scale, dtype)
    }

    /// `[out, in]`.
    pub fn dims(&self) -> &[usize] {
        self.data.dims()
    }

    /// `(out, in)`.
    pub fn dims2(&self) -> Result<(usize, usize)> {
        self.data.dims2()
    }

    pub fn data(&self) -> &Tensor {
        &self.data
    }

    /// f32, `[]` or `[out, 1]`.
    pub fn scale(&self) -> &Tensor {
        &self.scale
    }
}
