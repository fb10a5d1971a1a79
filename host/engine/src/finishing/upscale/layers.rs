//! The pieces the upscalers share: activations, upsampling and spandrel's padding.

use crate::finishing::section;
use candle_core::{DType, Result, Tensor};

/// Pads the bottom and right of `x [B, C, H, W]` by `pad_h` and `pad_w` as spandrel's
/// `pad_tensor` does: reflection (which reaches at most `size - 1` pixels), then replication of
/// the last row or column for the rest.
pub(super) fn pad_reflect_then_replicate(x: &Tensor, pad_h: usize, pad_w: usize) -> Result<Tensor> {
    let pad = |x: Tensor, dim: usize, pad: usize| -> Result<Tensor> {
        if pad == 0 {
            return Ok(x);
        }
        let size = x.dim(dim)?;
        let reflect = pad.min(size - 1);
        let index: Vec<u32> = (0..size)
            .chain((0..reflect).map(|i| size - 2 - i))
            .chain(std::iter::repeat_n(size - 1 - reflect, pad - reflect))
            .map(|i| i as u32)
            .collect();
        let index = Tensor::from_vec(index, size + pad, x.device())?;
        x.index_select(&index, dim)
    };
    pad(pad(x.clone(), 2, pad_h)?, 3, pad_w)
}

/// Nearest-neighbour upsampling by an integer factor (`F.interpolate(mode="nearest")`).
pub(super) fn upsample_nearest(x: &Tensor, factor: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    section("upsample", x, || {
        x.upsample_nearest2d(h * factor, w * factor)
    })
}

/// Nearest-neighbour upsampling of channels-last `x [B, H, W, C]` by an integer factor.
pub(super) fn upsample_nearest_channels_last(x: &Tensor, factor: usize) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    section("upsample", x, || {
        x.reshape((b, h, 1, w, 1, c))?
            .broadcast_as((b, h, factor, w, factor, c))?
            .contiguous()?
            .reshape((b, h * factor, w * factor, c))
    })
}

/// A per-channel vector as `[1, C, 1, 1]`, for broadcasting over images.
pub(super) fn per_channel(
    values: &[f32],
    dtype: DType,
    device: &candle_core::Device,
) -> Result<Tensor> {
    Tensor::from_slice(values, (1, values.len(), 1, 1), device)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn channels_last_upsampling_matches_the_nchw_one() {
        let x = Tensor::randn(0f32, 1.0, (2, 8, 3, 5), &Device::Cpu).unwrap();
        let last = crate::models::conv::to_channels_last(&x).unwrap();
        let got = upsample_nearest_channels_last(&last, 3)
            .unwrap()
            .permute((0, 3, 1, 2))
            .unwrap();
        let want = upsample_nearest(&x, 3).unwrap();
        assert_eq!(crate::models::relative_error(&got, &want).unwrap(), 0.0);
    }

    #[test]
    fn padding_reflects_then_replicates_like_spandrel() {
        // torch: F.pad(F.pad(x, (0, 2), "reflect"), (0, 3), "replicate") for x = [0, 1, 2].
        let x = Tensor::new(&[0f32, 1., 2.], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 3))
            .unwrap();
        let y = pad_reflect_then_replicate(&x, 0, 5).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [0., 1., 2., 1., 0., 0., 0., 0.]
        );
    }
}
