//! Image resampling that candle lacks, written with tensor ops only so that one implementation runs
//! on the CPU and on CUDA: PyTorch's bilinear `F.interpolate`. Layout NCHW throughout. (The
//! bilinear backward warp that optical-flow nets do with `F.grid_sample` is `fused::warp`, a
//! kernel of its own on CUDA.)
//!
//! A `Resampler` keeps the interpolation matrices per size, on the device that used them: a video resamples the same sizes every frame, and a fresh host-to-device
//! upload per call would make the GPU stream drain each time. For the same reason scalars are
//! made on the device (`Tensor::full`) rather than uploaded.

use candle_core::{D, DType, Device, Result, Tensor};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// What a `Resampler` keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Table {
    /// `interpolation_matrix(len_in, len_out)`: [len_out, len_in].
    Interpolation {
        len_in: usize,
        len_out: usize,
        dtype: DType,
    },
}

/// Bilinear resize with its tables made once per size (see the module).
#[derive(Default)]
pub struct Resampler {
    tables: Mutex<HashMap<Table, Tensor>>,
}

impl Resampler {
    fn table(&self, key: Table, device: &Device) -> Result<Tensor> {
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(table) = tables.get(&key)
            && table.device().same_device(device)
        {
            return Ok(table.clone());
        }
        let table = match key {
            Table::Interpolation {
                len_in,
                len_out,
                dtype,
            } => interpolation_matrix(len_in, len_out, device)?.to_dtype(dtype)?,
        };
        tables.insert(key, table.clone());
        Ok(table)
    }

    /// `F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)` on
    /// [B, C, H, W], any factor up or down (no antialiasing, as PyTorch's default). Separable, so
    /// it is two matmuls with interpolation matrices (at most two non-zero taps a row): exact,
    /// and fast on the GPU. When the size is an exact multiple or divisor of the input, this also
    /// equals `scale_factor=` mode, which derives its sampling ratio from the factor instead.
    ///
    /// Neither pass moves the image: along W the rows of all planes are one [B·C·H, W] matrix
    /// times [W, out_w]; along H one [out_h, H] matrix, broadcast over the planes with a zero
    /// batch stride (no copy), times each [H, out_w] plane.
    pub fn resize_bilinear(&self, x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let matrix = |len_in, len_out| {
            let key = Table::Interpolation {
                len_in,
                len_out,
                dtype: x.dtype(),
            };
            self.table(key, x.device())
        };
        let mut x = x.clone();
        if w != out_w {
            x = x.contiguous()?.broadcast_matmul(&matrix(w, out_w)?.t()?)?;
        }
        if h != out_h {
            x = matrix(h, out_h)?
                .broadcast_as((b, c, out_h, h))?
                .matmul(&x.contiguous()?)?;
        }
        Ok(x)
    }
}

/// The [out, in] matrix of 1-D bilinear interpolation with half-pixel centres, as PyTorch's
/// `upsample_bilinear2d` samples: source = (dst + 0.5) · in/out − 0.5, clamped at 0 below, the
/// upper neighbour clamped to the last sample.
fn interpolation_matrix(len_in: usize, len_out: usize, device: &Device) -> Result<Tensor> {
    let ratio = len_in as f32 / len_out as f32;
    let mut m = vec![0f32; len_out * len_in];
    for dst in 0..len_out {
        let src = ((dst as f32 + 0.5) * ratio - 0.5).max(0.0);
        let i0 = (src as usize).min(len_in - 1);
        let i1 = (i0 + 1).min(len_in - 1);
        let l1 = src - i0 as f32;
        m[dst * len_in + i0] += 1.0 - l1;
        m[dst * len_in + i1] += l1;
    }
    Tensor::from_vec(m, (len_out, len_in), device)
}

/// `x.clamp(lo, hi)` with the bounds made on the device (candle's scalar `clamp` uploads them).
pub fn clamp(x: &Tensor, lo: f32, hi: f32) -> Result<Tensor> {
    let bound = |v: f32| Tensor::full(v, (), x.device())?.to_dtype(x.dtype());
    x.broadcast_maximum(&bound(lo)?)?
        .broadcast_minimum(&bound(hi)?)
}

/// Pads [B, C, H, W] with zeros on the bottom and right up to multiples of `multiple`.
pub fn pad_to_multiple(x: &Tensor, multiple: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let pad_h = h.next_multiple_of(multiple) - h;
    let pad_w = w.next_multiple_of(multiple) - w;
    let x = if pad_h > 0 {
        x.pad_with_zeros(D::Minus2, 0, pad_h)?
    } else {
        x.clone()
    };
    if pad_w > 0 {
        x.pad_with_zeros(D::Minus1, 0, pad_w)
    } else {
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(values: &[f32], shape: (usize, usize, usize, usize)) -> Tensor {
        Tensor::from_vec(values.to_vec(), shape, &Device::Cpu).unwrap()
    }

    fn values(x: &Tensor) -> Vec<f32> {
        x.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn resize_up_by_two_matches_pytorch() {
        // F.interpolate(torch.tensor([[[[0., 4.]]]]), size=(1, 4), mode="bilinear")
        // -> [0, 1, 3, 4]: half-pixel centres, edges clamped.
        let x = t(&[0.0, 4.0], (1, 1, 1, 2));
        assert_eq!(
            values(&Resampler::default().resize_bilinear(&x, 1, 4).unwrap()),
            [0.0, 1.0, 3.0, 4.0]
        );
        // Along H the same; a 2x2 up to 4x4 has the outer product of both.
        let x = t(&[0.0, 4.0, 8.0, 12.0], (1, 1, 2, 2));
        let y = Resampler::default().resize_bilinear(&x, 4, 4).unwrap();
        assert_eq!(
            values(&y),
            [
                0., 1., 3., 4., 2., 3., 5., 6., 6., 7., 9., 10., 8., 9., 11., 12.
            ]
        );
    }

    #[test]
    fn resize_down_averages_the_two_middle_samples() {
        // Down by 4: source = 4·dst + 1.5, halfway between samples 1 and 2 of each group.
        let x = t(&[0., 1., 2., 3., 4., 5., 6., 7.], (1, 1, 1, 8));
        assert_eq!(
            values(&Resampler::default().resize_bilinear(&x, 1, 2).unwrap()),
            [1.5, 5.5]
        );
        // Down by 3 (an odd factor): source = 3·dst + 1, exactly sample 1 of each group.
        let x = t(&[0., 1., 2., 3., 4., 5.], (1, 1, 1, 6));
        assert_eq!(
            values(&Resampler::default().resize_bilinear(&x, 1, 2).unwrap()),
            [1.0, 4.0]
        );
        // Non-integer ratio 3 -> 2: sources 0.25 and 1.75.
        let x = t(&[0., 4., 8.], (1, 1, 1, 3));
        assert_eq!(
            values(&Resampler::default().resize_bilinear(&x, 1, 2).unwrap()),
            [1.0, 7.0]
        );
    }

    #[test]
    fn resize_keeps_batch_and_channels_apart() {
        let x = Tensor::arange(0f32, 2. * 3. * 4. * 4., &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 4, 4))
            .unwrap();
        let y = Resampler::default().resize_bilinear(&x, 2, 2).unwrap();
        assert_eq!(y.dims(), [2, 3, 2, 2]);
        // Each 4x4 plane p (values 16p .. 16p + 15) down by 2 samples at 1/2 → 16p + 2.5 + ...
        let got = values(&y);
        for p in 0..6 {
            let base = 16.0 * p as f32;
            assert_eq!(
                got[4 * p..4 * p + 4],
                [base + 2.5, base + 4.5, base + 10.5, base + 12.5]
            );
        }
    }

    #[test]
    fn a_resampler_keeps_its_tables_apart_by_size_and_dtype() {
        let resampler = Resampler::default();
        let x = t(&[0.0, 4.0], (1, 1, 1, 2));
        for _ in 0..2 {
            let up = resampler.resize_bilinear(&x, 1, 4).unwrap();
            assert_eq!(values(&up), [0.0, 1.0, 3.0, 4.0]);
            let x64 = x.to_dtype(DType::F64).unwrap();
            let up = resampler.resize_bilinear(&x64, 1, 3).unwrap();
            let got: Vec<f64> = up.flatten_all().unwrap().to_vec1().unwrap();
            // 2 -> 3: sources 1/6 and 5/6 of the way between the ends, and the clamped 0.
            assert_eq!(up.dtype(), DType::F64);
            assert!((got[1] - 2.0).abs() < 1e-6 && got[0] == 0.0, "{got:?}");
        }
        let image = t(&[10., 20., 30.], (1, 1, 1, 3));
        assert_eq!(values(&clamp(&image, 12.0, 25.0).unwrap()), [12., 20., 25.]);
    }

    #[test]
    fn pad_to_multiple_adds_zeros_bottom_right() {
        let x = Tensor::ones((1, 1, 3, 5), DType::F32, &Device::Cpu).unwrap();
        let y = pad_to_multiple(&x, 4).unwrap();
        assert_eq!(y.dims(), [1, 1, 4, 8]);
        assert_eq!(y.sum_all().unwrap().to_scalar::<f32>().unwrap(), 15.0);
        assert_eq!(pad_to_multiple(&y, 4).unwrap().dims(), [1, 1, 4, 8]);
    }
}
