//! The convolutions of the image and video models (upscalers, RIFE, the image VAEs, the video
//! VAEs and latent upsamplers): `nn.Conv2d` with "same" padding (`kernel / 2`, or any other) and
//! any stride, the `nn.ConvTranspose2d(kernel 4, stride 2, padding 1)` RIFE upsamples with, and
//! `nn.Conv3d` over frames-major video with torch's spatial padding modes. All run through the
//! engine's convolution dispatch point (`fused::frame_conv`: cuDNN with the bias added in place
//! where the `cudnn` feature covers the input, candle's conv2d otherwise), so every model gets the
//! fast path from one place.

use crate::fused::profile::section;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use videosdgx_kernels::{Epilogue, FrameConv, FramePadding, SpatialPad};

/// The dtype candle convolves `x` in: f32 for half-precision tensors on the CPU, where candle
/// has no half-precision convolution (the result is rounded back to the dtype of `x`), else its
/// own.
pub(crate) fn conv_dtype(x: &Tensor) -> DType {
    if x.device().is_cpu() && matches!(x.dtype(), DType::BF16 | DType::F16) {
        DType::F32
    } else {
        x.dtype()
    }
}

/// `x [B, C, H, W]` as channels-last `[B, H, W, C]` (packed), the layout the image models'
/// narrow layers convolve in: cuDNN's NHWC kernels run 32-64-channel layers about 1.75x faster
/// than NCHW (H100, 2026-12-07), which is where `torch.compile`'s lead on them comes from.
pub fn to_channels_last(x: &Tensor) -> Result<Tensor> {
    section("layout", x.device(), || {
        x.permute((0, 2, 3, 1))?.contiguous()
    })
}

/// `pixel_shuffle(y, r)` of channels-last `y [B, H, W, C·r²]`: NCHW `[B, C, H·r, W·r]`, where
/// output pixel (h·r + i, w·r + j) of channel c is input channel c·r² + i·r + j.
pub fn pixel_shuffle_channels_last(y: &Tensor, r: usize) -> Result<Tensor> {
    let (b, h, w, channels) = y.dims4()?;
    let c = channels / (r * r);
    section("pixel shuffle", y.device(), || {
        y.reshape((b, h, w, c, r, r))?
            .permute((0, 3, 1, 4, 2, 5))?
            .contiguous()?
            .reshape((b, c, h * r, w * r))
    })
}

/// `nn.Conv2d(in, out, kernel, stride, padding=kernel // 2)`.
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    stride: usize,
    /// The weight as `[out, kh, kw, in]` and the bias (zeros when there is none), made at the
    /// first channels-last call.
    channels_last: std::sync::OnceLock<(Tensor, Tensor)>,
}

impl Conv2d {
    /// Reads `weight` [out, in, k, k] and, when `bias`, `bias` [out] under `vb`.
    pub fn load(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = vb.get((out_channels, in_channels, kernel, kernel), "weight")?;
        let bias = bias.then(|| vb.get(out_channels, "bias")).transpose()?;
        Ok(Self::new(weight, bias, kernel / 2, stride))
    }

    fn new(weight: Tensor, bias: Option<Tensor>, padding: usize, stride: usize) -> Self {
        Self {
            weight,
            bias,
            padding,
            stride,
            channels_last: std::sync::OnceLock::new(),
        }
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    /// The same convolution with `padding` zeros on every side instead of `kernel / 2` (diffusers'
    /// `Downsample2D` pads asymmetrically itself, then convolves with none).
    pub fn with_padding(self, padding: usize) -> Self {
        Self { padding, ..self }
    }

    /// The same convolution with its output multiplied by `factor` (folded into the weights).
    pub fn scaled(self, factor: f64) -> Result<Self> {
        Ok(Self::new(
            (self.weight * factor)?,
            self.bias.map(|b| b * factor).transpose()?,
            self.padding,
            self.stride,
        ))
    }

    /// The same convolution with output channel `o` multiplied by `factor[o]`, folded into the
    /// weights; `factor` has one value per output channel in any shape (RIFE's `beta` is
    /// [1, out, 1, 1]).
    pub fn scaled_per_channel(self, factor: &Tensor) -> Result<Self> {
        let factor = factor.to_dtype(self.weight.dtype())?.flatten_all()?;
        let per_channel = factor.reshape((factor.elem_count(), 1, 1, 1))?;
        Ok(Self::new(
            self.weight.broadcast_mul(&per_channel)?,
            self.bias.map(|b| b.broadcast_mul(&factor)).transpose()?,
            self.padding,
            self.stride,
        ))
    }

    /// The convolution of channels-last images `x [B, H, W, C]` finished by `epilogue` (its
    /// residual `[B, H', W', O]`), returning `[B, H', W', O]`: cuDNN's NHWC kernels on CUDA, which
    /// run the upscalers' narrow layers far faster than NCHW.
    pub fn forward_channels_last(&self, x: &Tensor, epilogue: &Epilogue) -> Result<Tensor> {
        let (weight, bias) = match self.channels_last.get() {
            Some(operands) => operands,
            None => {
                let weight = self.weight.permute((0, 2, 3, 1))?.contiguous()?;
                let bias = match &self.bias {
                    Some(bias) => bias.clone(),
                    None => Tensor::zeros(weight.dim(0)?, weight.dtype(), weight.device())?,
                };
                self.channels_last.get_or_init(|| (weight, bias))
            }
        };
        let spec = FrameConv {
            taps: 1,
            stride_t: 1,
            pad: self.padding,
            stride: self.stride,
        };
        section("conv2d", x.device(), || {
            crate::fused::image_conv_nhwc(x, weight, bias, spec, epilogue)
        })
    }

    /// The convolution of `x [B, C, H, W]` finished by `epilogue` (its residual `[B, O, H', W']`):
    /// one pass over the output for the bias, the residual and the activation on CUDA.
    pub fn forward_with(&self, x: &Tensor, epilogue: &Epilogue) -> Result<Tensor> {
        let Some(bias) = &self.bias else {
            if !epilogue.is_bias_only() {
                candle_core::bail!("a convolution without bias takes no activation or residual");
            }
            let dtype = conv_dtype(x);
            return x
                .to_dtype(dtype)?
                .conv2d(
                    &self.weight.to_dtype(dtype)?,
                    self.padding,
                    self.stride,
                    1,
                    1,
                )?
                .to_dtype(x.dtype());
        };
        let spec = FrameConv {
            taps: 1,
            stride_t: 1,
            pad: self.padding,
            stride: self.stride,
        };
        // The frames-major layout has one frame per image: [B, 1, C, H, W].
        let epilogue = Epilogue {
            residual: epilogue
                .residual
                .as_ref()
                .map(|r| r.unsqueeze(1))
                .transpose()?,
            activation: epilogue.activation.clone(),
        };
        section("conv2d", x.device(), || {
            crate::fused::frame_conv(&x.unsqueeze(1)?, &self.weight, bias, spec, &epilogue)?
                .squeeze(1)
        })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, &Epilogue::default())
    }
}

/// `nn.ConvTranspose2d(in, out, kernel_size=4, stride=2, padding=1)`, computed as a 3x3
/// convolution to `4·out` channels followed by a 2x pixel shuffle (the sub-pixel form: each of
/// the four output phases reads a 2x2 window of the kernel). Exact, and it runs on the same
/// convolution path as every other layer instead of a direct transposed kernel.
pub struct ConvTranspose2d {
    conv: Conv2d,
}

impl ConvTranspose2d {
    /// Reads the transposed layout `weight` [in, out, 4, 4] and `bias` [out] under `vb`.
    pub fn load(vb: VarBuilder, in_channels: usize, out_channels: usize) -> Result<Self> {
        let weight = vb.get((in_channels, out_channels, 4, 4), "weight")?;
        let bias = vb.get(out_channels, "bias")?;
        Ok(Self {
            conv: Conv2d::new(
                sub_pixel_weight(&weight)?,
                Some(bias.unsqueeze(1)?.repeat((1, 4))?.flatten_all()?),
                1,
                1,
            ),
        })
    }
}

impl ConvTranspose2d {
    /// `pixel_shuffle(conv_transpose(x), r)` of channels-last `x [B, H, W, C]`, returned as NCHW
    /// `[B, out / r², 2rH, 2rW]` in one copy (RIFE's blocks shuffle the transposed convolution's
    /// output again; r = 1 is the plain transposed convolution). The sub-pixel convolution's
    /// channel `(m·r² + p·r + q)·4 + 2a + b` at (i, j) lands on output row `2ri + ra + p`, column
    /// `2rj + rb + q` of channel m.
    pub fn forward_channels_last(&self, x: &Tensor, r: usize) -> Result<Tensor> {
        let y = self.conv.forward_channels_last(x, &Epilogue::default())?;
        let (b, h, w, channels) = y.dims4()?;
        let m = channels / (4 * r * r);
        section("pixel shuffle", x.device(), || {
            y.reshape(vec![b, h, w, m, r, r, 2, 2])?
                .permute(vec![0, 3, 1, 6, 4, 2, 7, 5])?
                .contiguous()?
                .reshape((b, m, 2 * r * h, 2 * r * w))
        })
    }
}

impl Module for ConvTranspose2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.conv.forward(x)?;
        section("pixel shuffle", x.device(), || {
            candle_nn::ops::pixel_shuffle(&y, 2)
        })
    }
}

/// Output row `2i + a` of the transposed convolution reads input rows `i - 1, i, i + 1` through
/// kernel rows `TAPS[a]` (`None`: that row does not contribute), from `2m - 1 + ky = 2i + a`.
const TAPS: [[Option<usize>; 3]; 2] = [[Some(3), Some(1), None], [None, Some(2), Some(0)]];

/// The 3x3 weights [4·out, in, 3, 3] of the sub-pixel form of a transposed [in, out, 4, 4]
/// kernel, output channels ordered as `pixel_shuffle(2)` reads them (`o·4 + 2a + b`).
fn sub_pixel_weight(weight: &Tensor) -> Result<Tensor> {
    let (in_channels, out_channels, _, _) = weight.dims4()?;
    // [out, in, 4, 4]: the (kernel row, kernel column) taps picked per phase below.
    let weight = weight.transpose(0, 1)?.contiguous()?;
    let zero = weight.narrow(2, 0, 1)?.narrow(3, 0, 1)?.zeros_like()?;
    let mut phases = Vec::with_capacity(4);
    for rows in TAPS {
        for cols in TAPS {
            let mut kernel_rows = Vec::with_capacity(3);
            for row in rows {
                let taps = cols
                    .iter()
                    .map(|&col| match (row, col) {
                        (Some(r), Some(c)) => weight.narrow(2, r, 1)?.narrow(3, c, 1),
                        _ => Ok(zero.clone()),
                    })
                    .collect::<Result<Vec<_>>>()?;
                kernel_rows.push(Tensor::cat(&taps, 3)?);
            }
            phases.push(Tensor::cat(&kernel_rows, 2)?); // [out, in, 3, 3]
        }
    }
    // [out, 4, in, 3, 3] -> [out·4, in, 3, 3]
    Tensor::stack(&phases, 1)?.reshape((out_channels * 4, in_channels, 3, 3))
}

/// How `nn.Conv3d`'s `padding_mode` fills the spatial border.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingMode {
    Zeros,
    Reflect,
    Replicate,
}

impl PaddingMode {
    /// By torch's names (`circular` is not supported).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "zeros" => Self::Zeros,
            "reflect" => Self::Reflect,
            "replicate" => Self::Replicate,
            _ => return None,
        })
    }

    fn spatial(self) -> SpatialPad {
        match self {
            Self::Zeros => SpatialPad::Zeros,
            Self::Reflect => SpatialPad::Reflect,
            Self::Replicate => SpatialPad::Replicate,
        }
    }
}

/// `nn.Conv3d(in, out, (kt, k, k), stride=(st, s, s), padding=(0, k / 2, k / 2), padding_mode)`
/// over frames-major video `[B, T, C, H, W]`: time is not padded (callers pad it as their model
/// does).
pub struct Conv3d {
    /// `[out, kt·in, k, k]`: the temporal taps in front of the input channels ([`FrameConv`]).
    weight: Tensor,
    bias: Tensor,
    spec: FrameConv,
    mode: PaddingMode,
    pad: usize,
}

impl Conv3d {
    /// Reads `weight` [out, in, kt, k, k] and `bias` [out] under `vb`.
    pub fn load(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        (kt, k): (usize, usize),
        (stride_t, stride): (usize, usize),
        mode: PaddingMode,
    ) -> Result<Self> {
        let weight = vb
            .get((out_channels, in_channels, kt, k, k), "weight")?
            .permute((0, 2, 1, 3, 4))?
            .reshape((out_channels, kt * in_channels, k, k))?;
        let pad = k / 2;
        Ok(Self {
            weight,
            bias: vb.get(out_channels, "bias")?,
            spec: FrameConv {
                taps: kt,
                stride_t,
                pad: if mode == PaddingMode::Zeros { pad } else { 0 },
                stride,
            },
            mode,
            pad,
        })
    }

    /// Temporal taps of the kernel.
    pub fn kernel_t(&self) -> usize {
        self.spec.taps
    }
}

impl Conv3d {
    /// `forward` of `x` after `before` copies of its first frame and `after` of its last (a
    /// causal convolution's time padding), padded in time and space in one pass.
    pub fn forward_time_padded(&self, x: &Tensor, before: usize, after: usize) -> Result<Tensor> {
        // cuDNN pads zeros itself (`spec.pad`).
        let pad = if self.mode == PaddingMode::Zeros {
            0
        } else {
            self.pad
        };
        let padded;
        let x = if before + after + pad == 0 {
            x
        } else {
            let padding = FramePadding {
                before,
                after,
                pad,
                mode: self.mode.spatial(),
            };
            padded = section("conv.pad", x.device(), || {
                crate::fused::pad_frames(x, padding)
            })?;
            &padded
        };
        section("conv.frames", x.device(), || {
            let dtype = conv_dtype(x);
            if dtype != x.dtype() {
                let up = |t: &Tensor| t.to_dtype(dtype);
                return crate::fused::frame_conv(
                    &up(x)?,
                    &up(&self.weight)?,
                    &up(&self.bias)?,
                    self.spec,
                    &Epilogue::default(),
                )?
                .to_dtype(x.dtype());
            }
            crate::fused::frame_conv(x, &self.weight, &self.bias, self.spec, &Epilogue::default())
        })
    }
}

impl Module for Conv3d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_time_padded(x, 0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    #[test]
    fn the_sub_pixel_form_equals_the_transposed_convolution() {
        let dev = Device::Cpu;
        let weight = Tensor::randn(0f32, 1.0, (5, 3, 4, 4), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 3, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 5, 7, 6), &dev).unwrap();
        let expected = x
            .conv_transpose2d(&weight, 1, 0, 2, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, 3, 1, 1)).unwrap())
            .unwrap();
        let vb = VarBuilder::from_tensors(
            HashMap::from([("weight".into(), weight), ("bias".into(), bias)]),
            DType::F32,
            &dev,
        );
        let conv = ConvTranspose2d::load(vb, 5, 3).unwrap();
        let got = conv.forward(&x).unwrap();
        assert_eq!(got.dims(), [2, 3, 14, 12]);
        let err = crate::models::relative_error(&got, &expected).unwrap();
        assert!(err < 1e-6, "relative error {err:e}");

        // Channels last in, NCHW out, with nothing or a pixel shuffle after.
        let last = to_channels_last(&x).unwrap();
        assert_eq!(
            conv.forward_channels_last(&last, 1).unwrap().dims(),
            [2, 3, 14, 12]
        );
        let err =
            crate::models::relative_error(&conv.forward_channels_last(&last, 1).unwrap(), &got);
        assert!(err.unwrap() < 1e-6);
    }

    #[test]
    fn channels_last_layouts_match_their_nchw_forms() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 12, 3, 5), &dev).unwrap();
        let last = to_channels_last(&x).unwrap();
        assert_eq!(last.dims(), [2, 3, 5, 12]);
        let back = last.permute((0, 3, 1, 2)).unwrap();
        assert_eq!(crate::models::relative_error(&back, &x).unwrap(), 0.0);
        let shuffled = pixel_shuffle_channels_last(&last, 2).unwrap();
        let want = candle_nn::ops::pixel_shuffle(&x, 2).unwrap();
        assert_eq!(
            crate::models::relative_error(&shuffled, &want).unwrap(),
            0.0
        );
    }

    #[test]
    fn a_transposed_convolution_then_a_pixel_shuffle_is_one_channels_last_copy() {
        let dev = Device::Cpu;
        // RIFE's lastconv: 4 · 2² output channels of the transposed convolution, then a shuffle by 2.
        let weight = Tensor::randn(0f32, 1.0, (6, 16, 4, 4), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 16, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 6, 5, 7), &dev).unwrap();
        let vb = VarBuilder::from_tensors(
            HashMap::from([("weight".into(), weight), ("bias".into(), bias)]),
            DType::F32,
            &dev,
        );
        let conv = ConvTranspose2d::load(vb, 6, 16).unwrap();
        let want = candle_nn::ops::pixel_shuffle(&conv.forward(&x).unwrap(), 2).unwrap();
        let got = conv
            .forward_channels_last(&to_channels_last(&x).unwrap(), 2)
            .unwrap();
        assert_eq!(got.dims(), [2, 4, 20, 28]);
        let err = crate::models::relative_error(&got, &want).unwrap();
        assert!(err < 1e-6, "relative error {err:e}");
    }

    #[test]
    fn a_folded_scale_equals_scaling_the_output() {
        let dev = Device::Cpu;
        let tensors = HashMap::from([
            (
                "weight".to_string(),
                Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &dev).unwrap(),
            ),
            (
                "bias".to_string(),
                Tensor::randn(0f32, 1.0, 4, &dev).unwrap(),
            ),
        ]);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let conv = Conv2d::load(vb, 3, 4, 3, 2, true).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 3, 9, 8), &dev).unwrap();
        let beta = Tensor::new(&[0.5f32, -1.0, 2.0, 0.25], &dev)
            .unwrap()
            .reshape((1, 4, 1, 1))
            .unwrap();
        let expected = conv.forward(&x).unwrap().broadcast_mul(&beta).unwrap();
        assert_eq!(expected.dims(), [1, 4, 5, 4]);
        let got = conv.scaled_per_channel(&beta).unwrap().forward(&x).unwrap();
        let err = crate::models::relative_error(&got, &expected).unwrap();
        assert!(err < 1e-6, "relative error {err:e}");
    }
}
