//! Linear-layer weights in NVFP4: 4-bit e2m1 values (0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6), two a
//! byte, an e4m3 scale for each block of 16 values along a row, and one f32 scale for the tensor.
//! Checkpoints store them in three layouts ([`Nvfp4Layout`]); each is read into one form: codes
//! with the even element in the low nibble (`[out, in/2]`), block scales row-major
//! (`[out, in/16]`), the tensor scale as a multiplier. `--quant nvfp4` makes the same form from a
//! bf16 checkpoint at load, as ModelOpt quantizes. The layer is run weight-only: each product
//! dequantizes it, so it holds 9/16 of a byte a weight (0.28× bf16).

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use videosdgx_kernels::reference::{E2M1_MAGNITUDES, NVFP4_BLOCK, nvfp4_dims};

/// The largest e2m1 magnitude.
const E2M1_MAX: f64 = 6.0;

/// How a checkpoint stores an NVFP4 layer; none says it in a key or a shape, so the names beside
/// the weight tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nvfp4Layout {
    /// NVIDIA ModelOpt (`hf_quant_config.json`): `weight` u8 `[out, in/2]`, the even element in
    /// the low nibble; `weight_scale` e4m3 `[out, in/16]`; `weight_scale_2`, the tensor scale.
    ModelOpt,
    /// ComfyUI (each layer's `comfy_quant`, `{"format": "nvfp4"}`): ModelOpt's names, but the even
    /// element in the high nibble, rows and columns zero-padded to multiples of 16, and the block
    /// scales in cuBLAS's swizzled 128×4 tiles ([`unswizzle`]).
    ComfyUi,
    /// LightX2V: low nibble first, swizzled block scales, and the tensor scale's reciprocal
    /// (`weight_global_scale`), or `alpha` and `input_global_scale`, whose product is the scale.
    LightX2v,
}

impl Nvfp4Layout {
    /// The layout of the linear layer under `vb`, if it is stored in NVFP4.
    pub fn of(vb: &VarBuilder) -> Option<Self> {
        Self::from_names(|name| vb.contains_tensor(name))
    }

    /// The layout of a layer that holds the tensors (names after the layer's prefix) for which
    /// `holds` is true, if it is NVFP4.
    pub fn from_names(holds: impl Fn(&str) -> bool) -> Option<Self> {
        if holds("weight_scale_2") {
            Some(if holds("comfy_quant") {
                Self::ComfyUi
            } else {
                Self::ModelOpt
            })
        } else if holds("weight_global_scale") || holds("alpha") {
            Some(Self::LightX2v)
        } else {
            None
        }
    }

    /// Whether the block scales are stored in swizzled tiles ([`unswizzle`]).
    pub fn swizzled(self) -> bool {
        matches!(self, Self::ComfyUi | Self::LightX2v)
    }
}

/// An `[out, in]` weight in NVFP4 (see the module's doc for the form).
#[derive(Debug, Clone)]
pub struct Nvfp4Weight {
    /// u8 `[out, in/2]`.
    packed: Tensor,
    /// e4m3 `[out, in/16]`.
    block_scales: Tensor,
    /// f32 `[]`.
    global: Tensor,
    dims: [usize; 2],
}

impl Nvfp4Weight {
    /// The internal form's parts; shapes and dtypes are checked.
    pub fn new(packed: Tensor, block_scales: Tensor, global: &Tensor) -> Result<Self> {
        let (rows, cols) = nvfp4_dims(&packed, &block_scales)?;
        if global.elem_count() != 1 {
            candle_core::bail!(
                "an NVFP4 weight has one tensor scale, not {} tensor scales",
                global.elem_count()
            );
        }
        let global = global
            .to_dtype(DType::F32)?
            .flatten_all()?
            .reshape(())?
            .to_device(packed.device())?;
        Ok(Self {
            packed,
            block_scales,
            global,
            dims: [rows, cols],
        })
    }

    /// Reads the `[out_dim, in_dim]` layer under `vb` from `layout`.
    pub fn load(
        layout: Nvfp4Layout,
        in_dim: usize,
        out_dim: usize,
        vb: &VarBuilder,
    ) -> Result<Self> {
        let (half, blocks) = (in_dim / 2, in_dim / NVFP4_BLOCK);
        if !in_dim.is_multiple_of(NVFP4_BLOCK) {
            candle_core::bail!("NVFP4 needs an input width that is a multiple of 16, not {in_dim}");
        }
        let scalar = |name: &str| vb.get_unchecked_dtype(name, DType::F32);
        let device = vb.device().clone();
        // The layouts with padding, swizzling or swapped nibbles are rearranged on the CPU, where
        // every dtype can be permuted, and made contiguous there (candle has no CUDA copy kernel
        // for float8); ModelOpt's loads as it is.
        let cpu = vb.clone().set_device(Device::Cpu);
        let on = |t: &Tensor| t.contiguous()?.to_device(&device);
        let padded = |name, dtype| -> Result<Tensor> {
            let t = cpu.get_unchecked_dtype(name, dtype)?;
            let (rows, cols) = t.dims2()?;
            if rows < out_dim || cols < half {
                candle_core::bail!("{name}: {:?} holds less than [{out_dim}, {half}]", t.dims());
            }
            t.narrow(0, 0, out_dim)?.narrow(1, 0, half)
        };
        let (packed, block_scales, global) = match layout {
            Nvfp4Layout::ModelOpt => (
                vb.get_with_hints_dtype(
                    (out_dim, half),
                    "weight",
                    candle_nn::Init::Const(0.),
                    DType::U8,
                )?,
                vb.get_with_hints_dtype(
                    (out_dim, blocks),
                    "weight_scale",
                    candle_nn::Init::Const(0.),
                    DType::F8E4M3,
                )?,
                scalar("weight_scale_2")?,
            ),
            Nvfp4Layout::ComfyUi => (
                on(&swap_nibbles(&padded("weight", DType::U8)?)?)?,
                on(&unswizzle(
                    &cpu.get_unchecked_dtype("weight_scale", DType::F8E4M3)?,
                    out_dim,
                    blocks,
                )?)?,
                scalar("weight_scale_2")?,
            ),
            Nvfp4Layout::LightX2v => {
                let global = if vb.contains_tensor("weight_global_scale") {
                    scalar("weight_global_scale")?.recip()?
                } else {
                    (scalar("alpha")? * scalar("input_global_scale")?)?
                };
                (
                    on(&padded("weight", DType::U8)?)?,
                    on(&unswizzle(
                        &cpu.get_unchecked_dtype("weight_scale", DType::F8E4M3)?,
                        out_dim,
                        blocks,
                    )?)?,
                    global,
                )
            }
        };
        Self::new(packed.contiguous()?, block_scales.contiguous()?, &global)
    }

    /// Quantizes `w` (`[out, in]`, any float dtype, `in` a multiple of 16) as ModelOpt does: the
    /// tensor scale maps the largest magnitude to 6 · 448; each block's e4m3 scale maps its
    /// largest magnitude to 6; values round to the nearest e2m1 value, ties to even, saturating
    /// at ±6. A block whose scale rounds to 0 stores zeros.
    pub fn quantize(w: &Tensor) -> Result<Self> {
        let (rows, cols) = w.dims2()?;
        if !cols.is_multiple_of(NVFP4_BLOCK) {
            candle_core::bail!("NVFP4 needs an input width that is a multiple of 16, not {cols}");
        }
        let w = w
            .to_dtype(DType::F32)?
            .reshape((rows, cols / NVFP4_BLOCK, NVFP4_BLOCK))?;
        let amax = w.abs()?.max_keepdim(D::Minus1)?.squeeze(D::Minus1)?;
        let tensor_amax = amax.max_all()?;
        // A true division, as ModelOpt's: `t / c` in candle multiplies by the reciprocal.
        let largest = Tensor::new((E2M1_MAX * 448.0) as f32, w.device())?;
        let global = tensor_amax
            .eq(0f64)?
            .where_cond(&tensor_amax.ones_like()?, &tensor_amax.div(&largest)?)?;
        // block_amax / (6 · global), rounded to e4m3 (saturating at 448).
        let block_scales = crate::fused::fp8_quantize(&amax, &(&global * E2M1_MAX)?.reshape(1)?)?;
        let one = Tensor::ones((), DType::F32, w.device())?;
        let scale = crate::fused::fp8_dequantize(&block_scales, &one, DType::F32)?
            .broadcast_mul(&global)?;
        let scale = scale.eq(0f64)?.where_cond(&scale.ones_like()?, &scale)?;
        let x = w.broadcast_div(&scale.unsqueeze(D::Minus1)?)?;
        let codes = round_to_e2m1(&x)?.reshape((rows, cols / 2, 2))?;
        let packed = (codes.narrow(2, 0, 1)? + (codes.narrow(2, 1, 1)? * 16.0)?)?
            .squeeze(2)?
            .to_dtype(DType::U8)?;
        Self::new(packed, block_scales, &global)
    }

    /// The weight in `dtype`.
    pub fn dequantize(&self, dtype: DType) -> Result<Tensor> {
        crate::fused::nvfp4_dequantize(&self.packed, &self.block_scales, &self.global, dtype)
    }

    /// `[out, in]`.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// u8 `[out, in/2]`, the even element in the low nibble.
    pub fn packed(&self) -> &Tensor {
        &self.packed
    }

    /// e4m3 `[out, in/16]`.
    pub fn block_scales(&self) -> &Tensor {
        &self.block_scales
    }

    /// f32 `[]`.
    pub fn global(&self) -> &Tensor {
        &self.global
    }
}

/// The e2m1 code (as f32, 0 to 15) nearest `x`: the magnitude's code counts the midpoints below
/// it, a tie going to the even code (the midpoints 0.75, 1.75 and 3.5 round up, the others
/// down); the sign is bit 8.
fn round_to_e2m1(x: &Tensor) -> Result<Tensor> {
    let a = x.abs()?;
    let mut code = a.zeros_like()?;
    for pair in E2M1_MAGNITUDES.windows(2) {
        let (low, high) = (f64::from(pair[0]), f64::from(pair[1]));
        let midpoint = (low + high) / 2.0;
        // The tie goes up when the upper neighbour's code is even, i.e. the lower one's is odd.
        let lower_code_is_odd = E2M1_MAGNITUDES.iter().position(|&m| m == pair[0]).unwrap() % 2;
        let above = if lower_code_is_odd == 1 {
            a.ge(midpoint)?
        } else {
            a.gt(midpoint)?
        };
        code = (code + above.to_dtype(DType::F32)?)?;
    }
    code + (x.lt(0f64)?.to_dtype(DType::F32)? * 8.0)?
}

/// Swaps the two codes of each byte (ComfyUI keeps the even element in the high nibble).
fn swap_nibbles(packed: &Tensor) -> Result<Tensor> {
    let table: Vec<u8> = (0..=255u8).map(|b| b.rotate_left(4)).collect();
    let table = Tensor::from_vec(table, 256, packed.device())?;
    let shape = packed.shape().clone();
    table
        .index_select(&packed.flatten_all()?.to_dtype(DType::U32)?, 0)?
        .reshape(shape)
}

/// The first `rows × cols` block scales of `swizzled`, stored as cuBLAS's block-scaled GEMMs read
/// them (ComfyUI's and LightX2V's layout, torchao's `to_blocked`): the `[R, C]` matrix padded to
/// multiples of 128 rows and 4 columns, cut into 128×4 tiles stored one after another in row
/// order, each tile holding element `(r, c)` at `(r % 32)·16 + (r / 32)·4 + c`.
pub fn unswizzle(swizzled: &Tensor, rows: usize, cols: usize) -> Result<Tensor> {
    let (padded_rows, padded_cols) = (rows.div_ceil(128) * 128, cols.div_ceil(4) * 4);
    if swizzled.elem_count() != padded_rows * padded_cols {
        candle_core::bail!(
            "swizzled block scales for [{rows}, {cols}] hold [{padded_rows}, {padded_cols}] \
             values, not {:?}",
            swizzled.dims()
        );
    }
    swizzled
        .flatten_all()?
        .reshape((padded_rows / 128, padded_cols / 4, 32, 4, 4))?
        .permute((0, 3, 2, 1, 4))?
        .reshape((padded_rows, padded_cols))?
        .narrow(0, 0, rows)?
        .narrow(1, 0, cols)
}

/// The inverse of [`unswizzle`]: `[rows, cols]` block scales in swizzled tiles, zero-padded.
pub fn swizzle(logical: &Tensor) -> Result<Tensor> {
    let (rows, cols) = logical.dims2()?;
    let (padded_rows, padded_cols) = (rows.div_ceil(128) * 128, cols.div_ceil(4) * 4);
    logical
        .pad_with_zeros(0, 0, padded_rows - rows)?
        .pad_with_zeros(1, 0, padded_cols - cols)?
        .reshape((padded_rows / 128, 4, 32, padded_cols / 4, 4))?
        // Exchanging the tile-column and in-tile-row axes is its own inverse.
        .permute((0, 3, 2, 1, 4))?
        .reshape((padded_rows, padded_cols))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn values_round_to_the_nearest_code_ties_to_even() {
        let x = Tensor::new(
            &[
                0.0f32, 0.25, 0.26, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.1, 7.0, -0.75, -9.0, -0.1,
            ],
            &Device::Cpu,
        )
        .unwrap();
        // 0.25→0, 0.75→1 (code 2), 1.25→1, 1.75→2 (code 4), 2.5→2, 3.5→4 (code 6), 5→4.
        let want = [
            0.0, 0.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, 7.0, 7.0, 10.0, 15.0, 8.0,
        ];
        assert_eq!(values(&round_to_e2m1(&x).unwrap()), want);
    }

    #[test]
    fn quantized_weights_come_back_within_the_format_step() {
        let w = Tensor::randn(0f32, 1.0, (7, 64), &Device::Cpu).unwrap();
        let q = Nvfp4Weight::quantize(&w).unwrap();
        assert_eq!(q.dims(), [7, 64]);
        assert_eq!(q.packed().dims(), [7, 32]);
        let back = q.dequantize(DType::F32).unwrap();
        // At most half the largest code step (2, between 4 and 6) in units of the block's
        // scale, max|block| / 6, which e4m3 rounds by at most 1/16.
        let blocks = |t: &Tensor| t.reshape((7, 4, 16)).unwrap();
        let err = (blocks(&back) - blocks(&w)).unwrap().abs().unwrap();
        let bound = (blocks(&w).abs().unwrap().max_keepdim(2).unwrap() * (1.0625 / 6.0)).unwrap();
        let over = err.broadcast_gt(&bound).unwrap();
        let over = over.to_dtype(DType::F32).unwrap().sum_all().unwrap();
        assert_eq!(over.to_scalar::<f32>().unwrap(), 0.0);
        // An all-zero weight stays zero.
        let zero =
            Nvfp4Weight::quantize(&Tensor::zeros((2, 16), DType::F32, &Device::Cpu).unwrap())
                .unwrap();
        assert!(
            values(&zero.dequantize(DType::F32).unwrap())
                .iter()
                .all(|&v| v == 0.0)
        );
    }

    #[test]
    fn swizzled_scales_unswizzle_to_rows_and_columns() {
        // Element (r, c) of a [130, 5] matrix holds r·8 + c; swizzle it by the stated formula.
        let (rows, cols) = (130usize, 5usize);
        let (pr, pc) = (256usize, 8usize);
        let mut stored = vec![0f32; pr * pc];
        for r in 0..rows {
            for c in 0..cols {
                let tile = (r / 128) * (pc / 4) + c / 4;
                let offset = tile * 512 + (r % 32) * 16 + ((r % 128) / 32) * 4 + c % 4;
                stored[offset] = (r * 8 + c) as f32;
            }
        }
        let swizzled = Tensor::from_vec(stored, (pr, pc), &Device::Cpu).unwrap();
        let logical = unswizzle(&swizzled, rows, cols).unwrap();
        let want: Vec<f32> = (0..rows)
            .flat_map(|r| (0..cols).map(move |c| (r * 8 + c) as f32))
            .collect();
        assert_eq!(values(&logical), want);
        assert_eq!(
            values(&swizzle(&logical).unwrap()),
            values(&swizzled),
            "swizzle inverts it"
        );
        // In e4m3, as checkpoints store scales.
        let e4m3 = logical.to_dtype(DType::F8E4M3).unwrap();
        let back = unswizzle(&swizzle(&e4m3).unwrap(), rows, cols).unwrap();
        assert_eq!(values(&back), values(&e4m3));
        assert!(unswizzle(&swizzled, 300, 5).is_err(), "too few scales");
    }

    #[test]
    fn nibbles_swap() {
        let t = Tensor::new(&[[0x1fu8, 0xa0]], &Device::Cpu).unwrap();
        let swapped = swap_nibbles(&t).unwrap();
        assert_eq!(swapped.to_vec2::<u8>().unwrap(), [[0xf1, 0x0a]]);
    }
}
