//! Real-ESRGAN's SRVGGNetCompact (spandrel's `RealESRGAN Compact`): a plain stack of 3×3
//! convolutions with PReLU at the input resolution, one pixel shuffle, and the nearest-upsampled
//! input added so that the network only learns the residual.
//!
//! ```text
//! body.0 conv → body.1 prelu → (conv → prelu) × num_conv → body.last conv → pixel_shuffle
//!   + nearest(x)
//! ```

use super::layers::upsample_nearest;
use super::{Network, Padding, dim, expect_rgb, seq_len};
use crate::finishing::section;
use crate::loader::StateDict;
use crate::models::conv::{Conv2d, pixel_shuffle_channels_last, to_channels_last};
use anyhow::{Result, bail};
use candle_core::Tensor;
use candle_nn::VarBuilder;
use videosdgx_kernels::{Activation, Epilogue};

pub(super) fn detect(dict: &StateDict) -> bool {
    dict.contains("body.0.weight") && dict.contains("body.1.weight")
}

pub(super) struct Compact {
    /// Each convolution before the last with its PReLU slopes (`[1, C, 1, 1]`).
    /// Each convolution with its PReLU.
    body: Vec<(Conv2d, Epilogue)>,
    conv_last: Conv2d,
    scale: usize,
}

impl Compact {
    pub(super) fn load(dict: &StateDict, vb: VarBuilder) -> Result<Self> {
        let last = seq_len(dict, "body").saturating_sub(1);
        let in_channels = dim(dict, "body.0.weight", 1)?;
        let num_feat = dim(dict, "body.0.weight", 0)?;
        let num_conv = last.saturating_sub(2) / 2;
        let (scale, out_channels) = scale_and_output_channels(
            dim(dict, &format!("body.{last}.bias"), 0)?,
            in_channels,
        )
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{}: `body.{last}` has no (scale, channels) with scale² × channels = its outputs",
                dict.path().display()
            )
        })?;
        expect_rgb(dict, in_channels, out_channels)?;
        if last != 2 * num_conv + 2 {
            bail!(
                "{}: `body` ends at index {last}; a compact network has an even count of conv/PReLU pairs before its last conv",
                dict.path().display()
            );
        }
        let body = (0..=num_conv)
            .map(|i| {
                let conv = Conv2d::load(
                    vb.pp(format!("body.{}", 2 * i)),
                    if i == 0 { in_channels } else { num_feat },
                    num_feat,
                    3,
                    1,
                    true,
                )?;
                let slopes = vb
                    .pp(format!("body.{}", 2 * i + 1))
                    .get(num_feat, "weight")?;
                Ok((conv, Epilogue::activation(Activation::PRelu(slopes))))
            })
            .collect::<Result<Vec<_>>>()?;
        let conv_last = Conv2d::load(
            vb.pp(format!("body.{last}")),
            num_feat,
            out_channels * scale * scale,
            3,
            1,
            true,
        )?;
        Ok(Self {
            body,
            conv_last,
            scale,
        })
    }
}

impl Network for Compact {
    fn scale(&self) -> usize {
        self.scale
    }

    /// Spandrel has no size requirements for it.
    fn padding(&self) -> Padding {
        Padding::NONE
    }

    /// One pixel per convolution; the pixel shuffle and the nearest base add none.
    fn receptive_radius(&self) -> usize {
        self.body.len() + 1
    }

    /// Channels last through the body (cuDNN's NHWC kernels run these 64-channel layers about
    /// 1.75x faster than NCHW); the pixel shuffle reads the last layer's channels-last output.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut out = to_channels_last(x)?;
        for (conv, prelu) in &self.body {
            out = conv.forward_channels_last(&out, prelu)?;
        }
        let out = self
            .conv_last
            .forward_channels_last(&out, &Epilogue::default())?;
        let out = pixel_shuffle_channels_last(&out, self.scale)?;
        let base = upsample_nearest(x, self.scale)?;
        Ok(section("residual", x, || out + base)?)
    }
}

/// Spandrel's `get_scale_and_output_channels`: the pixel shuffle's input channels are
/// `scale² × out`, with `out` tried as the input channels, then 3, 4 and 1.
fn scale_and_output_channels(channels: usize, in_channels: usize) -> Option<(usize, usize)> {
    [in_channels, 3, 4, 1].into_iter().find_map(|out| {
        if out == 0 || !channels.is_multiple_of(out) {
            return None;
        }
        let squared = channels / out;
        let scale = squared.isqrt();
        (scale * scale == squared).then_some((scale, out))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn scale_and_channels_from_the_pixel_shuffle_width() {
        assert_eq!(super::scale_and_output_channels(48, 3), Some((4, 3)));
        assert_eq!(super::scale_and_output_channels(12, 3), Some((2, 3)));
        assert_eq!(super::scale_and_output_channels(3, 3), Some((1, 3)));
        assert_eq!(super::scale_and_output_channels(64, 3), Some((4, 4)));
    }
}
