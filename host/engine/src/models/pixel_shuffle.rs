//! Space/time <-> channel rearrangements of frames-major video `[B, T, C, H, W]`, shared by the
//! video VAEs: the spatial patches of the Wan 2.2 and LTX-2 VAEs' first and last layers, and the
//! 3-D pixel (un)shuffle of LTX-2's resamplers (diffusers' unflatten/permute/flatten chains).

use candle_core::{Result, Tensor, bail};

/// `[b, f, c, h, w]` -> `[b, f, c·p·p, h/p, w/p]`, channel order (c, w-offset, h-offset), as the
/// Wan and LTX-2 VAEs patchify their input.
pub(crate) fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    if p == 1 {
        return Ok(x.clone());
    }
    let (b, f, c, h, w) = x.dims5()?;
    if !h.is_multiple_of(p) || !w.is_multiple_of(p) {
        bail!(
            "patchify: height {h} and width {w} of {:?} must be divisible by the patch size {p}",
            x.dims()
        );
    }
    x.reshape(vec![b, f, c, h / p, p, w / p, p])?
        .permute([0, 1, 2, 6, 4, 3, 5])?
        .contiguous()?
        .reshape((b, f, c * p * p, h / p, w / p))
}

/// Inverse of [`patchify`].
pub(crate) fn unpatchify(x: &Tensor, p: usize) -> Result<Tensor> {
    if p == 1 {
        return Ok(x.clone());
    }
    let (b, f, cp, h, w) = x.dims5()?;
    let c = cp / (p * p);
    x.reshape(vec![b, f, c, p, p, h, w])?
        .permute([0, 1, 2, 5, 4, 6, 3])?
        .contiguous()?
        .reshape((b, f, c, h * p, w * p))
}

/// `[b, t, c, h, w]` -> `[b, t/st, c·st·sh·sw, h/sh, w/sw]`, channel order (c, t-offset,
/// h-offset, w-offset).
pub(crate) fn pixel_unshuffle_3d(
    x: &Tensor,
    (st, sh, sw): (usize, usize, usize),
) -> Result<Tensor> {
    let (b, t, c, h, w) = x.dims5()?;
    if !t.is_multiple_of(st) || !h.is_multiple_of(sh) || !w.is_multiple_of(sw) {
        bail!(
            "pixel unshuffle: frames, height and width of {:?} must be divisible by {st}, {sh}, {sw}",
            x.dims()
        );
    }
    x.reshape(vec![b, t / st, st, c, h / sh, sh, w / sw, sw])?
        .permute([0, 1, 3, 2, 5, 7, 4, 6])?
        .contiguous()?
        .reshape((b, t / st, c * st * sh * sw, h / sh, w / sw))
}

/// Inverse of [`pixel_unshuffle_3d`]: `[b, t, c·st·sh·sw, h, w]` -> `[b, t·st, c, h·sh, w·sw]`.
pub fn pixel_shuffle_3d(x: &Tensor, (st, sh, sw): (usize, usize, usize)) -> Result<Tensor> {
    let (b, t, cs, h, w) = x.dims5()?;
    let factor = st * sh * sw;
    if !cs.is_multiple_of(factor) {
        bail!(
            "pixel shuffle: {cs} channels of {:?} do not split into {st}x{sh}x{sw} blocks",
            x.dims()
        );
    }
    let c = cs / factor;
    x.reshape(vec![b, t, c, st, sh, sw, h, w])?
        .permute([0, 1, 3, 2, 6, 4, 7, 5])?
        .contiguous()?
        .reshape((b, t * st, c, h * sh, w * sw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn shuffles_invert_each_other() {
        let x = Tensor::randn(0f32, 1.0, (2, 4, 3, 6, 4), &Device::Cpu).unwrap();
        let down = pixel_unshuffle_3d(&x, (2, 3, 2)).unwrap();
        assert_eq!(down.dims(), [2, 2, 36, 2, 2]);
        let up = pixel_shuffle_3d(&down, (2, 3, 2)).unwrap();
        assert_eq!(crate::models::relative_error(&up, &x).unwrap(), 0.0);
        let patched = patchify(&x, 2).unwrap();
        assert_eq!(patched.dims(), [2, 4, 12, 3, 2]);
        let back = unpatchify(&patched, 2).unwrap();
        assert_eq!(crate::models::relative_error(&back, &x).unwrap(), 0.0);
    }
}
