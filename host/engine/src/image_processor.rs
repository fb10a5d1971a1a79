//! `CLIPImageProcessor` (`image_processor/preprocessor_config.json`): turns an RGB image into the
//! `pixel_values` the CLIP image encoder takes, as transformers' PIL backend does: resize (Pillow's
//! two-pass fixed-point convolution, horizontal then vertical, rounding to 8 bits after each pass),
//! center crop, rescale, normalize. Bit-exact with Pillow on 8-bit images. Never decodes files.

use anyhow::{Result, bail};
use candle_core::{Device, Tensor};
use image::RgbImage;
use serde::Deserialize;
use std::path::Path;

/// `size` / `crop_size` entries of the config.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SizeSpec {
    pub shortest_edge: Option<u32>,
    pub height: Option<u32>,
    pub width: Option<u32>,
}

/// The reference config, field names as in `CLIPImageProcessor`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct CLIPImageProcessorConfig {
    pub do_resize: bool,
    pub size: SizeSpec,
    /// PIL resampling filter id: 1 Lanczos, 2 bilinear, 3 bicubic.
    pub resample: u32,
    pub do_center_crop: bool,
    pub crop_size: SizeSpec,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: Vec<f32>,
    pub image_std: Vec<f32>,
}

impl Default for CLIPImageProcessorConfig {
    fn default() -> Self {
        Self {
            do_resize: true,
            size: SizeSpec {
                shortest_edge: Some(224),
                ..Default::default()
            },
            resample: 3,
            do_center_crop: true,
            crop_size: SizeSpec {
                height: Some(224),
                width: Some(224),
                ..Default::default()
            },
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: vec![0.481_454_66, 0.457_827_5, 0.408_210_73],
            // CLIP's constants digit for digit, as the reference config writes them.
            #[allow(clippy::excessive_precision)]
            image_std: vec![0.268_629_54, 0.261_302_58, 0.275_777_1],
        }
    }
}

/// Pillow's resampling filters: (support, kernel).
#[derive(Debug, Clone, Copy)]
enum Filter {
    Bilinear,
    Bicubic,
    Lanczos,
}

impl Filter {
    fn from_pil(id: u32) -> Result<Self> {
        Ok(match id {
            1 => Self::Lanczos,
            2 => Self::Bilinear,
            3 => Self::Bicubic,
            other => bail!(
                "unsupported resample filter {other} (supported: 1 Lanczos, 2 bilinear, 3 bicubic)"
            ),
        })
    }

    fn support(self) -> f64 {
        match self {
            Self::Bilinear => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Self::Bilinear => (1.0 - x.abs()).max(0.0),
            Self::Bicubic => {
                // Keys cubic with a = -0.5, as Pillow.
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                let sinc = |x: f64| {
                    if x == 0.0 {
                        1.0
                    } else {
                        let px = x * std::f64::consts::PI;
                        px.sin() / px
                    }
                };
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// Fixed-point precision of Pillow's 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For each output index: first input index and integer weights (Pillow's `precompute_coeffs` and
/// `normalize_coeffs_8bpc`).
fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let inverse_scale = 1.0 / filter_scale;
            let weights: Vec<f64> = (xmin..xmax)
                .map(|x| filter.weight((x as f64 - center + 0.5) * inverse_scale))
                .collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    let scaled = w * (1u32 << PRECISION_BITS) as f64;
                    (if scaled < 0.0 {
                        scaled - 0.5
                    } else {
                        scaled + 0.5
                    }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(acc: i32) -> u8 {
    if acc >= (1 << PRECISION_BITS << 8) {
        255
    } else if acc <= 0 {
        0
    } else {
        (acc >> PRECISION_BITS) as u8
    }
}

/// Pillow's `Image.resize` for RGB: horizontal pass then vertical pass, each rounded to 8 bits.
fn resize(image: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (w0, h0) = image.dimensions();
    let mut current = image.clone();
    if width != w0 {
        let coeffs = coefficients(w0 as usize, width as usize, filter);
        let mut out = RgbImage::new(width, h0);
        for y in 0..h0 {
            for (x, (start, weights)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let mut acc: i32 = 1 << (PRECISION_BITS - 1);
                    for (i, w) in weights.iter().enumerate() {
                        acc += current.get_pixel((start + i) as u32, y)[c] as i32 * w;
                    }
                    out.get_pixel_mut(x as u32, y)[c] = clip8(acc);
                }
            }
        }
        current = out;
    }
    if height != h0 {
        let coeffs = coefficients(h0 as usize, height as usize, filter);
        let mut out = RgbImage::new(width, height);
        for (y, (start, weights)) in coeffs.iter().enumerate() {
            for x in 0..width {
                for c in 0..3 {
                    let mut acc: i32 = 1 << (PRECISION_BITS - 1);
                    for (i, w) in weights.iter().enumerate() {
                        acc += current.get_pixel(x, (start + i) as u32)[c] as i32 * w;
                    }
                    out.get_pixel_mut(x, y as u32)[c] = clip8(acc);
                }
            }
        }
        current = out;
    }
    current
}

/// The image preprocessing of the CLIP image encoder.
pub struct CLIPImageProcessor {
    config: CLIPImageProcessorConfig,
    filter: Filter,
}

impl CLIPImageProcessor {
    pub fn new(config: CLIPImageProcessorConfig) -> Result<Self> {
        if config.image_mean.len() != 3 || config.image_std.len() != 3 {
            bail!("image_mean and image_std must have 3 values");
        }
        let filter = Filter::from_pil(config.resample)?;
        Ok(Self { config, filter })
    }

    /// Reads `dir/preprocessor_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        let config: CLIPImageProcessorConfig = crate::loader::read_config(&path)?;
        Self::new(config).map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))
    }

    /// Output size of the resize step (`get_resize_output_image_size` with `default_to_square=False`).
    fn resized_size(&self, width: u32, height: u32) -> Result<(u32, u32)> {
        let size = &self.config.size;
        Ok(match (size.shortest_edge, size.height, size.width) {
            (Some(short), _, _) => {
                if width <= height {
                    (short, (short as u64 * height as u64 / width as u64) as u32)
                } else {
                    ((short as u64 * width as u64 / height as u64) as u32, short)
                }
            }
            (None, Some(h), Some(w)) => (w, h),
            _ => bail!("preprocessor size needs `shortest_edge` or `height` and `width`"),
        })
    }

    /// `pixel_values` `[1, 3, H, W]` (f32) for one RGB image.
    pub fn preprocess(&self, image: &RgbImage, device: &Device) -> Result<Tensor> {
        if image.width() == 0 || image.height() == 0 {
            bail!("cannot preprocess an empty image");
        }
        let mut image = image.clone();
        if self.config.do_resize {
            let (w, h) = self.resized_size(image.width(), image.height())?;
            if (w, h) != image.dimensions() {
                image = resize(&image, w, h, self.filter);
            }
        }
        if self.config.do_center_crop {
            let (Some(ch), Some(cw)) = (self.config.crop_size.height, self.config.crop_size.width)
            else {
                bail!("crop_size needs `height` and `width`");
            };
            let (w, h) = image.dimensions();
            if cw > w || ch > h {
                bail!("image of {w}x{h} is smaller than the {cw}x{ch} crop");
            }
            image =
                image::imageops::crop_imm(&image, (w - cw) / 2, (h - ch) / 2, cw, ch).to_image();
        }
        let (w, h) = image.dimensions();
        let plane = (w * h) as usize;
        let mut data = vec![0f32; 3 * plane];
        for (i, pixel) in image.pixels().enumerate() {
            for c in 0..3 {
                let mut v = pixel[c] as f64;
                if self.config.do_rescale {
                    v *= self.config.rescale_factor;
                }
                let mut v = v as f32;
                if self.config.do_normalize {
                    v = (v - self.config.image_mean[c]) / self.config.image_std[c];
                }
                data[c * plane + i] = v;
            }
        }
        Ok(Tensor::from_vec(
            data,
            (1, 3, h as usize, w as usize),
            device,
        )?)
    }
}
