//! The 1-D convolutions of the audio models (vocoders): `nn.Conv1d` (stride 1) with any dilation
//! and zero padding (PyTorch's `padding="same"` included, asymmetric for even receptive fields), and
//! `nn.ConvTranspose1d` with its `padding`. Both run on candle's conv1d / conv_transpose1d, so
//! the same code serves the CPU and CUDA.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// How a 1-D signal is extended past its ends (`F.pad`'s `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingMode {
    Zeros,
    /// The edge sample repeated (`"replicate"`).
    Replicate,
}

/// `x` `[..., T]` padded with `left` and `right` samples on the last dimension.
pub fn pad1d(x: &Tensor, left: usize, right: usize, mode: PaddingMode) -> Result<Tensor> {
    if left == 0 && right == 0 {
        return Ok(x.clone());
    }
    let last = x.rank() - 1;
    match mode {
        PaddingMode::Zeros => x.pad_with_zeros(last, left, right),
        PaddingMode::Replicate => x.pad_with_same(last, left, right),
    }
}

/// `nn.Conv1d(in, out, kernel, dilation=dilation)` over `[B, in, T]`, zero padded by
/// `(left, right)` samples.
#[derive(Debug, Clone)]
pub struct Conv1d {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: (usize, usize),
    dilation: usize,
}

impl Conv1d {
    /// Reads `weight` `[out, in, kernel]` and, when `bias`, `bias` `[out]` under `vb`; symmetric
    /// `padding` on both sides.
    pub fn load(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = vb.get((out_channels, in_channels, kernel), "weight")?;
        let bias = bias.then(|| vb.get(out_channels, "bias")).transpose()?;
        Ok(Self {
            weight,
            bias,
            padding: (padding, padding),
            dilation: 1,
        })
    }

    /// The same convolution with `dilation`, padded as PyTorch's `padding="same"` does: the
    /// `dilation·(kernel − 1)` samples split with the smaller half on the left.
    pub fn same(self, dilation: usize) -> Self {
        let kernel = self.weight.dims()[2];
        let total = dilation * (kernel - 1);
        Self {
            padding: (total / 2, total - total / 2),
            dilation,
            ..self
        }
    }
}

impl Module for Conv1d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (left, right) = self.padding;
        let y = if left == right {
            x.conv1d(&self.weight, left, 1, self.dilation, 1)?
        } else {
            pad1d(x, left, right, PaddingMode::Zeros)?.conv1d(
                &self.weight,
                0,
                1,
                self.dilation,
                1,
            )?
        };
        match &self.bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, (), 1))?),
            None => Ok(y),
        }
    }
}

/// `nn.ConvTranspose1d(in, out, kernel, stride, padding)` over `[B, in, T]`: output length
/// `(T − 1)·stride − 2·padding + kernel`.
#[derive(Debug, Clone)]
pub struct ConvTranspose1d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
}

impl ConvTranspose1d {
    /// Reads the transposed layout `weight` `[in, out, kernel]` and `bias` `[out]` under `vb`.
    pub fn load(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        Ok(Self {
            weight: vb.get((in_channels, out_channels, kernel), "weight")?,
            bias: vb.get(out_channels, "bias")?,
            stride,
            padding,
        })
    }
}

impl Module for ConvTranspose1d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Unpadded, then cropped: candle's col2im path (a matmul, on the CPU and CUDA) only
        // covers `padding = 0`; the padded form falls back to a direct loop. One batch item at a
        // time: candle 0.11's CPU col2im mixes batch items up when `in > 1`.
        let items = (0..x.dim(0)?)
            .map(|i| {
                x.narrow(0, i, 1)?
                    .conv_transpose1d(&self.weight, 0, 0, self.stride, 1, 1)
            })
            .collect::<Result<Vec<_>>>()?;
        let y = Tensor::cat(&items, 0)?;
        let len = y.dim(2)? - 2 * self.padding;
        y.narrow(2, self.padding, len)?
            .broadcast_add(&self.bias.reshape((1, (), 1))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    #[test]
    fn the_cropped_transposed_convolution_equals_the_padded_one() {
        let dev = Device::Cpu;
        for (batch, c_in, kernel, stride) in
            [(2, 4, 5, 3), (1, 4, 5, 3), (2, 4, 8, 4), (3, 4, 6, 3)]
        {
            let weight = Tensor::randn(0f32, 1.0, (c_in, 3, kernel), &dev).unwrap();
            let bias = Tensor::zeros(3, DType::F32, &dev).unwrap();
            let padding = (kernel - stride) / 2;
            let x = Tensor::randn(0f32, 1.0, (batch, c_in, 7), &dev).unwrap();
            let expected = x
                .conv_transpose1d(&weight, padding, 0, stride, 1, 1)
                .unwrap();
            let vb = VarBuilder::from_tensors(
                HashMap::from([("weight".into(), weight), ("bias".into(), bias)]),
                DType::F32,
                &dev,
            );
            let conv = ConvTranspose1d::load(vb, c_in, 3, kernel, stride, padding).unwrap();
            let got = conv.forward(&x).unwrap();
            let err = crate::models::relative_error(&got, &expected).unwrap();
            assert!(
                err < 1e-6,
                "{batch} {c_in} {kernel} {stride}: relative error {err:e}"
            );
        }
    }

    #[test]
    fn same_padding_keeps_the_length_for_even_kernels_and_dilations() {
        let dev = Device::Cpu;
        let weight = Tensor::randn(0f32, 1.0, (3, 2, 4), &dev).unwrap();
        let vb = VarBuilder::from_tensors(
            HashMap::from([("weight".to_string(), weight.clone())]),
            DType::F32,
            &dev,
        );
        let conv = Conv1d::load(vb, 2, 3, 4, 0, false).unwrap().same(3);
        let x = Tensor::randn(0f32, 1.0, (1, 2, 11), &dev).unwrap();
        let got = conv.forward(&x).unwrap();
        // 9 padded samples: 4 on the left, 5 on the right.
        let expected = x
            .pad_with_zeros(2, 4, 5)
            .unwrap()
            .conv1d(&weight, 0, 1, 3, 1)
            .unwrap();
        assert_eq!(got.dims(), [1, 3, 11]);
        let err = crate::models::relative_error(&got, &expected).unwrap();
        assert!(err < 1e-6, "relative error {err:e}");
    }
}
