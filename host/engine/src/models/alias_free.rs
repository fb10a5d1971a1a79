//! BigVGAN's alias-free pieces as diffusers writes them in `pipelines/ltx2/vocoder.py`: the
//! Kaiser-windowed sinc low-pass filter, `UpSample1d` (Kaiser, or the Hann-windowed sinc of a
//! resampler), `DownSample1d` and the `SnakeBeta` activation. Every filter is depthwise and the
//! same for all channels, so channels are folded into the batch and convolved with one `[1, 1, K]`
//! kernel instead of a grouped convolution.

use super::conv1d::{PaddingMode, pad1d};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use std::f64::consts::PI;

/// The modified Bessel function of the first kind, order 0 (`torch.i0`), by its power series.
fn bessel_i0(x: f64) -> f64 {
    let quarter = x * x / 4.0;
    let (mut term, mut sum, mut k) = (1.0f64, 1.0f64, 1.0f64);
    while term > sum * 1e-17 {
        term *= quarter / (k * k);
        sum += term;
        k += 1.0;
    }
    sum
}

/// `torch.kaiser_window(length, periodic=False, beta=beta)`.
fn kaiser_window(length: usize, beta: f64) -> Vec<f64> {
    if length == 1 {
        return vec![1.0];
    }
    let alpha = (length - 1) as f64 / 2.0;
    (0..length)
        .map(|n| {
            let r = (n as f64 - alpha) / alpha;
            bessel_i0(beta * (1.0 - r * r).max(0.0).sqrt()) / bessel_i0(beta)
        })
        .collect()
}

/// `kaiser_sinc_filter1d`: a Kaiser-windowed sinc low-pass of `kernel_size` taps at `cutoff`
/// (relative to the sampling rate), normalised to sum 1.
pub fn kaiser_sinc_filter1d(cutoff: f64, half_width: f64, kernel_size: usize) -> Vec<f64> {
    let delta_f = 4.0 * half_width;
    let half_size = kernel_size / 2;
    let amplitude = 2.285 * (half_size as f64 - 1.0) * PI * delta_f + 7.95;
    let beta = if amplitude > 50.0 {
        0.1102 * (amplitude - 8.7)
    } else if amplitude >= 21.0 {
        0.5842 * (amplitude - 21.0).powf(0.4) + 0.07886 * (amplitude - 21.0)
    } else {
        0.0
    };
    let window = kaiser_window(kernel_size, beta);
    let even = kernel_size.is_multiple_of(2);
    let time = |n: usize| {
        if even {
            n as f64 - half_size as f64 + 0.5
        } else {
            n as f64 - half_size as f64
        }
    };
    if cutoff == 0.0 {
        return vec![0.0; kernel_size];
    }
    let filter: Vec<f64> = (0..kernel_size)
        .map(|n| {
            let t = 2.0 * cutoff * time(n);
            let sinc = if t == 0.0 {
                1.0
            } else {
                (PI * t).sin() / PI / t
            };
            2.0 * cutoff * window[n] * sinc
        })
        .collect();
    let sum: f64 = filter.iter().sum();
    filter.into_iter().map(|v| v / sum).collect()
}

/// The `filter` buffer `[1, 1, kernel]` under `vb` where the checkpoint stores it (the reference
/// loads it from there), else `computed` as the reference's constructor makes it.
fn filter_buffer(vb: &VarBuilder, computed: &[f64]) -> Result<Tensor> {
    let kernel = computed.len();
    if vb.contains_tensor("filter") {
        return vb.get((1, 1, kernel), "filter");
    }
    let values: Vec<f32> = computed.iter().map(|&v| v as f32).collect();
    Tensor::from_vec(values, (1, 1, kernel), vb.device())?.to_dtype(vb.dtype())
}

/// `[B, C, T]` -> `[B·C, 1, T]` and the `(B, C)` to fold back.
fn fold_channels(x: &Tensor) -> Result<(Tensor, usize, usize)> {
    let (b, c, t) = x.dims3()?;
    Ok((x.reshape((b * c, 1, t))?, b, c))
}

/// `UpSample1d`: replicate-padded transposed convolution with a low-pass filter, `ratio` times as
/// many samples out.
#[derive(Debug, Clone)]
pub struct UpSample1d {
    ratio: usize,
    filter: Tensor,
    pad: usize,
    pad_left: usize,
    pad_right: usize,
}

impl UpSample1d {
    /// `window_type="kaiser"` (BigVGAN's default): `kernel_size` taps at cutoff `0.5 / ratio`;
    /// the filter read from `vb` where the checkpoint stores it.
    pub fn kaiser(ratio: usize, kernel_size: usize, vb: &VarBuilder) -> Result<Self> {
        if ratio == 0 || kernel_size < ratio {
            candle_core::bail!(
                "UpSample1d {}: kernel size {kernel_size} must be at least the ratio {ratio} (> 0)",
                vb.prefix()
            );
        }
        let r = ratio as f64;
        let computed = kaiser_sinc_filter1d(0.5 / r, 0.6 / r, kernel_size);
        let pad = kernel_size / ratio - 1;
        Ok(Self {
            ratio,
            filter: filter_buffer(vb, &computed)?,
            pad,
            pad_left: pad * ratio + (kernel_size - ratio) / 2,
            pad_right: pad * ratio + (kernel_size - ratio).div_ceil(2),
        })
    }

    /// `window_type="hann"`: the Hann-windowed sinc (rolloff 0.99, 6 zero crossings) of the
    /// bandwidth extender's resampler, a non-persistent buffer computed here.
    pub fn hann(ratio: usize, dtype: DType, device: &Device) -> Result<Self> {
        if ratio == 0 {
            candle_core::bail!("UpSample1d: the resampling ratio must be positive");
        }
        let rolloff: f64 = 0.99;
        let lowpass_filter_width: f64 = 6.0;
        let width = (lowpass_filter_width / rolloff).ceil() as usize;
        let kernel_size = 2 * width * ratio + 1;
        let values: Vec<f32> = (0..kernel_size)
            .map(|n| {
                let t = (n as f64 / ratio as f64 - width as f64) * rolloff;
                let clamped = t.clamp(-lowpass_filter_width, lowpass_filter_width);
                let window = (clamped * PI / lowpass_filter_width / 2.0).cos().powi(2);
                let sinc = if t == 0.0 {
                    1.0
                } else {
                    (PI * t).sin() / (PI * t)
                };
                (sinc * window * rolloff / ratio as f64) as f32
            })
            .collect();
        Ok(Self {
            ratio,
            filter: Tensor::from_vec(values, (1, 1, kernel_size), device)?.to_dtype(dtype)?,
            pad: width,
            pad_left: 2 * width * ratio,
            pad_right: kernel_size - ratio,
        })
    }

    /// `[B, C, T]` -> `[B, C, T·ratio]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (x, b, c) = fold_channels(x)?;
        let x = pad1d(&x, self.pad, self.pad, PaddingMode::Replicate)?;
        let filter = self.filter.to_dtype(x.dtype())?;
        let y = (x.conv_transpose1d(&filter, 0, 0, self.ratio, 1, 1)? * self.ratio as f64)?;
        let len = y.dim(2)? - self.pad_left - self.pad_right;
        y.narrow(2, self.pad_left, len)?.reshape((b, c, len))
    }
}

/// `DownSample1d`: replicate-padded low-pass filter, keeping every `ratio`-th sample.
#[derive(Debug, Clone)]
pub struct DownSample1d {
    ratio: usize,
    filter: Tensor,
    pad_left: usize,
    pad_right: usize,
}

impl DownSample1d {
    /// `kernel_size` taps at cutoff `0.5 / ratio`; the filter read from `vb` where the checkpoint
    /// stores it.
    pub fn new(ratio: usize, kernel_size: usize, vb: &VarBuilder) -> Result<Self> {
        if ratio == 0 || kernel_size == 0 {
            candle_core::bail!(
                "DownSample1d {}: ratio {ratio} and kernel size {kernel_size} must be positive",
                vb.prefix()
            );
        }
        let r = ratio as f64;
        let computed = kaiser_sinc_filter1d(0.5 / r, 0.6 / r, kernel_size);
        Ok(Self {
            ratio,
            filter: filter_buffer(vb, &computed)?,
            pad_left: kernel_size / 2 + kernel_size % 2 - 1,
            pad_right: kernel_size / 2,
        })
    }

    /// `[B, C, T]` -> `[B, C, ⌈T / ratio⌉]` (for the kernel sizes of the reference).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (x, b, c) = fold_channels(x)?;
        let x = pad1d(&x, self.pad_left, self.pad_right, PaddingMode::Replicate)?;
        let filter = self.filter.to_dtype(x.dtype())?;
        let y = x.conv1d(&filter, 0, self.ratio, 1, 1)?;
        let len = y.dim(2)?;
        y.reshape((b, c, len))
    }
}

/// `SnakeBeta` with log-scale parameters: `x + sin²(x·e^α) / (e^β + ε)` per channel (`Snake`:
/// `e^α` in both places), computed in f32.
#[derive(Debug, Clone)]
pub struct SnakeBeta {
    /// `e^α`, `[1, C, 1]` f32.
    alpha: Tensor,
    /// `1 / (e^β + ε)` (or of `e^α`), `[1, C, 1]` f32.
    inverse_amplitude: Tensor,
}

impl SnakeBeta {
    /// Reads `alpha` (and `beta` when `use_beta`) `[channels]` under `vb`.
    pub fn new(channels: usize, use_beta: bool, vb: &VarBuilder) -> Result<Self> {
        let exp = |name: &str| -> Result<Tensor> {
            vb.get(channels, name)?
                .to_dtype(DType::F32)?
                .exp()?
                .reshape((1, channels, 1))
        };
        let alpha = exp("alpha")?;
        let amplitude = if use_beta {
            exp("beta")?
        } else {
            alpha.clone()
        };
        Ok(Self {
            alpha,
            inverse_amplitude: (amplitude + 1e-9)?.recip()?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x32 = x.to_dtype(DType::F32)?;
        let wave = x32.broadcast_mul(&self.alpha)?.sin()?.sqr()?;
        (x32 + wave.broadcast_mul(&self.inverse_amplitude)?)?.to_dtype(x.dtype())
    }
}

/// `AntiAliasAct1d` around a Snake: upsample, activate, low-pass and downsample, so the
/// activation's harmonics above the original Nyquist rate do not alias.
#[derive(Debug, Clone)]
pub struct AntiAliasAct1d {
    upsample: UpSample1d,
    act: SnakeBeta,
    downsample: DownSample1d,
}

impl AntiAliasAct1d {
    /// Reads `upsample.filter`, `act.*` and `downsample.filter` under `vb`.
    pub fn new(act: SnakeBeta, ratio: usize, kernel_size: usize, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            upsample: UpSample1d::kaiser(ratio, kernel_size, &vb.pp("upsample"))?,
            act,
            downsample: DownSample1d::new(ratio, kernel_size, &vb.pp("downsample"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.upsample.forward(x)?;
        let x = self.act.forward(&x)?;
        self.downsample.forward(&x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kaiser_filter_matches_torch() {
        // torch: kaiser_sinc_filter1d(0.25, 0.3, 12) from diffusers' vocoder.py.
        let expected = [
            0.002_028_964_7,
            0.009_389_466,
            -0.025_543_462,
            -0.057_657_383,
            0.128_572_58,
            0.443_209_8,
            0.443_209_8,
            0.128_572_58,
            -0.057_657_383,
            -0.025_543_462,
            0.009_389_466,
            0.002_028_964_7,
        ];
        let got = kaiser_sinc_filter1d(0.25, 0.3, 12);
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-6, "{got:?}");
        }
    }
}
