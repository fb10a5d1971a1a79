//! Image processors (`preprocessor_config.json`) that turn an RGB image into the `pixel_values` of
//! an image encoder: `CLIPImageProcessor` (Wan's CLIP) as transformers' PIL backend does, and
//! `Gemma3ImageProcessor` (Gemma 3's SigLIP) as its torchvision backend does by default. Both share
//! one resize (the two-pass fixed-point convolution, horizontal then vertical, rounding to 8 bits
//! after each pass, which Pillow and torch's uint8 antialiased kernel both use; they differ only
//! in the weights' fixed-point precision, see [`Backend`]) and one rescale/normalize. Bit-exact
//! with the reference on 8-bit images. Never decodes files: callers pass decoded RGB.

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
            image_std: vec![0.268_629_54, 0.261_302_6, 0.275_777_1],
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

/// Which reference's arithmetic to reproduce: the resize's fixed-point weights and the order of
/// the rescale/normalize operations differ between transformers' two backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The PIL backend: Pillow's 22-bit weights; `x * rescale_factor` in f64, then
    /// `(x - mean) / std` in f32.
    Pillow,
    /// The torchvision backend on a CPU with AVX2, whose uint8 bilinear/bicubic resize is torch's
    /// antialiased kernel: int16 weights, as many fraction bits (at most 22) as keep the largest
    /// weight below 2^15; rescale fused into normalize: `(x - mean / rescale_factor) /
    /// (std / rescale_factor)` in f32.
    Torchvision,
}

/// Fixed-point precision of Pillow's 8-bit resampling.
const PILLOW_PRECISION_BITS: u32 = 32 - 8 - 2;

/// One pass of the resize: the weights' fraction bits and, per output index, the first input
/// index and the integer weights (Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc`, or
/// torch's `_compute_indices_int16_weights_aa`).
struct Coefficients {
    precision: u32,
    taps: Vec<(usize, Vec<i32>)>,
}

fn coefficients(in_size: usize, out_size: usize, filter: Filter, backend: Backend) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let normalized: Vec<(usize, Vec<f64>)> = (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let inverse_scale = 1.0 / filter_scale;
            let weights: Vec<f64> = (xmin..xmax)
                .map(|x| filter.weight((x as f64 - center + 0.5) * inverse_scale))
                .collect();
            let total: f64 = weights.iter().sum();
            let weights = weights
                .iter()
                .map(|w| if total != 0.0 { w / total } else { *w })
                .collect();
            (xmin, weights)
        })
        .collect();
    let precision = match backend {
        Backend::Pillow => PILLOW_PRECISION_BITS,
        Backend::Torchvision => {
            let w_max = normalized
                .iter()
                .flat_map(|(_, w)| w.iter().copied())
                .fold(f64::NEG_INFINITY, f64::max);
            (0..PILLOW_PRECISION_BITS)
                .find(|p| (0.5 + w_max * (1u32 << (p + 1)) as f64) as i64 >= 1 << 15)
                .unwrap_or(PILLOW_PRECISION_BITS)
        }
    };
    let taps = normalized
        .into_iter()
        .map(|(xmin, weights)| {
            let fixed = weights
                .iter()
                .map(|w| {
                    let scaled = w * (1u32 << precision) as f64;
                    (if scaled < 0.0 {
                        scaled - 0.5
                    } else {
                        scaled + 0.5
                    }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect();
    Coefficients { precision, taps }
}

/// Rounds a fixed-point accumulator to 8 bits, saturating.
fn clip8(acc: i32, precision: u32) -> u8 {
    (acc >> precision).clamp(0, 255) as u8
}

/// Pillow's `Image.resize(size, Image.LANCZOS)` of an RGB image, bit-exact: how diffusers'
/// `VaeImageProcessor` (default `resample="lanczos"`) resizes the images pipelines encode.
pub(crate) fn pil_lanczos(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize(image, width, height, Filter::Lanczos, Backend::Pillow)
}

/// Pillow's `Image.resize(size, Image.BILINEAR)` of an RGB image, bit-exact: how
/// `VideoProcessor(resample="bilinear")` resizes LTX-2's start image.
pub(crate) fn pil_bilinear(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize(image, width, height, Filter::Bilinear, Backend::Pillow)
}

/// `Image.resize` / torch's uint8 antialiased `interpolate` for RGB: horizontal pass then
/// vertical pass, each rounded to 8 bits; a dimension that keeps its size is not resampled.
fn resize(image: &RgbImage, width: u32, height: u32, filter: Filter, backend: Backend) -> RgbImage {
    let (w0, h0) = image.dimensions();
    let mut current = image.clone();
    if width != w0 {
        let c = coefficients(w0 as usize, width as usize, filter, backend);
        let mut out = RgbImage::new(width, h0);
        for y in 0..h0 {
            for (x, (start, weights)) in c.taps.iter().enumerate() {
                for ch in 0..3 {
                    let mut acc: i32 = 1 << (c.precision - 1);
                    for (i, w) in weights.iter().enumerate() {
                        acc += current.get_pixel((start + i) as u32, y)[ch] as i32 * w;
                    }
                    out.get_pixel_mut(x as u32, y)[ch] = clip8(acc, c.precision);
                }
            }
        }
        current = out;
    }
    if height != h0 {
        let c = coefficients(h0 as usize, height as usize, filter, backend);
        let mut out = RgbImage::new(width, height);
        for (y, (start, weights)) in c.taps.iter().enumerate() {
            for x in 0..width {
                for ch in 0..3 {
                    let mut acc: i32 = 1 << (c.precision - 1);
                    for (i, w) in weights.iter().enumerate() {
                        acc += current.get_pixel(x, (start + i) as u32)[ch] as i32 * w;
                    }
                    out.get_pixel_mut(x, y as u32)[ch] = clip8(acc, c.precision);
                }
            }
        }
        current = out;
    }
    current
}

/// The rescale and normalize steps, in the operation order of either backend.
#[derive(Debug, Clone)]
struct PixelScaling {
    rescale_factor: Option<f64>,
    mean_std: Option<([f32; 3], [f32; 3])>,
    backend: Backend,
}

impl PixelScaling {
    fn new(
        do_rescale: bool,
        rescale_factor: f64,
        do_normalize: bool,
        image_mean: &[f32],
        image_std: &[f32],
        backend: Backend,
    ) -> Result<Self> {
        let (Ok(mean), Ok(std)) = (
            <[f32; 3]>::try_from(image_mean),
            <[f32; 3]>::try_from(image_std),
        ) else {
            bail!("image_mean and image_std must have 3 values");
        };
        Ok(Self {
            rescale_factor: do_rescale.then_some(rescale_factor),
            mean_std: do_normalize.then_some((mean, std)),
            backend,
        })
    }

    /// The value of channel `c` for one 8-bit sample.
    fn value(&self, v: u8, c: usize) -> f32 {
        match (self.backend, self.rescale_factor, self.mean_std) {
            (Backend::Torchvision, Some(factor), Some((mean, std))) => {
                let inverse = (1.0 / factor) as f32;
                (v as f32 - mean[c] * inverse) / (std[c] * inverse)
            }
            (Backend::Torchvision, Some(factor), None) => v as f32 * factor as f32,
            (_, rescale, mean_std) => {
                let x = match rescale {
                    Some(factor) => (v as f64 * factor) as f32,
                    None => v as f32,
                };
                match mean_std {
                    Some((mean, std)) => (x - mean[c]) / std[c],
                    None => x,
                }
            }
        }
    }

    /// `[1, 3, H, W]` f32 planes of `image`.
    fn pixel_values(&self, image: &RgbImage, device: &Device) -> Result<Tensor> {
        let (w, h) = image.dimensions();
        let plane = (w * h) as usize;
        let mut data = vec![0f32; 3 * plane];
        for (i, pixel) in image.pixels().enumerate() {
            for c in 0..3 {
                data[c * plane + i] = self.value(pixel[c], c);
            }
        }
        Ok(Tensor::from_vec(
            data,
            (1, 3, h as usize, w as usize),
            device,
        )?)
    }
}

/// The image preprocessing of the CLIP image encoder.
pub struct CLIPImageProcessor {
    config: CLIPImageProcessorConfig,
    filter: Filter,
    scaling: PixelScaling,
}

impl CLIPImageProcessor {
    pub fn new(config: CLIPImageProcessorConfig) -> Result<Self> {
        let filter = Filter::from_pil(config.resample)?;
        let scaling = PixelScaling::new(
            config.do_rescale,
            config.rescale_factor,
            config.do_normalize,
            &config.image_mean,
            &config.image_std,
            Backend::Pillow,
        )?;
        Ok(Self {
            config,
            filter,
            scaling,
        })
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
                image = resize(&image, w, h, self.filter, Backend::Pillow);
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
        self.scaling.pixel_values(&image, device)
    }
}

/// The reference config, field names and defaults as in `Gemma3ImageProcessor`. The published
/// configs write `null` for the pan-and-scan settings, which means "off".
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Gemma3ImageProcessorConfig {
    pub do_resize: bool,
    pub size: SizeSpec,
    /// PIL resampling filter id: 1 Lanczos, 2 bilinear, 3 bicubic.
    pub resample: u32,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: Vec<f32>,
    pub image_std: Vec<f32>,
    pub do_pan_and_scan: Option<bool>,
}

impl Default for Gemma3ImageProcessorConfig {
    fn default() -> Self {
        Self {
            do_resize: true,
            size: SizeSpec {
                height: Some(224),
                width: Some(224),
                ..Default::default()
            },
            resample: 2,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: vec![0.5; 3],
            image_std: vec![0.5; 3],
            do_pan_and_scan: None,
        }
    }
}

/// The image preprocessing of Gemma 3's vision tower: resize to `size` (no crop), rescale,
/// normalize; one image in, one `[1, 3, height, width]` out.
pub struct Gemma3ImageProcessor {
    config: Gemma3ImageProcessorConfig,
    filter: Filter,
    backend: Backend,
    scaling: PixelScaling,
}

impl Gemma3ImageProcessor {
    /// Matches the torchvision backend, which `AutoImageProcessor` picks whenever torchvision is
    /// installed; [`Self::with_backend`] selects the PIL one.
    pub fn new(config: Gemma3ImageProcessorConfig) -> Result<Self> {
        Self::with_backend(config, Backend::Torchvision)
    }

    pub fn with_backend(config: Gemma3ImageProcessorConfig, backend: Backend) -> Result<Self> {
        if config.do_pan_and_scan == Some(true) {
            // Pan and scan adds crops of wide images, each with its own image tokens and a prompt
            // the processor rewrites; running without it would silently change the model's input.
            bail!("do_pan_and_scan is true, but Gemma 3 pan-and-scan is not supported");
        }
        let filter = Filter::from_pil(config.resample)?;
        if backend == Backend::Torchvision && matches!(filter, Filter::Lanczos) {
            bail!("resample 1 (Lanczos) is only reproduced for the PIL backend");
        }
        if config.do_resize && (config.size.height.is_none() || config.size.width.is_none()) {
            bail!("Gemma 3 preprocessor size needs `height` and `width`");
        }
        let scaling = PixelScaling::new(
            config.do_rescale,
            config.rescale_factor,
            config.do_normalize,
            &config.image_mean,
            &config.image_std,
            backend,
        )?;
        Ok(Self {
            config,
            filter,
            backend,
            scaling,
        })
    }

    /// Reads `dir/preprocessor_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        // Published checkpoints ship `preprocessor_config.json`; transformers 5 saves a processor
        // as `processor_config.json` with the image processor's settings under `image_processor`.
        let path = dir.join("preprocessor_config.json");
        let (config, path) = if path.is_file() {
            (crate::loader::read_config(&path)?, path)
        } else {
            #[derive(Deserialize)]
            struct ProcessorConfig {
                image_processor: Gemma3ImageProcessorConfig,
            }
            let path = dir.join("processor_config.json");
            if !path.is_file() {
                bail!(
                    "{} has no preprocessor_config.json or processor_config.json",
                    dir.display()
                );
            }
            let config: ProcessorConfig = crate::loader::read_config(&path)?;
            (config.image_processor, path)
        };
        Self::new(config).map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))
    }

    /// `pixel_values` `[1, 3, height, width]` (f32) for one RGB image.
    pub fn preprocess(&self, image: &RgbImage, device: &Device) -> Result<Tensor> {
        if image.width() == 0 || image.height() == 0 {
            bail!("cannot preprocess an empty image");
        }
        let size = &self.config.size;
        let image = match (self.config.do_resize, size.width, size.height) {
            (true, Some(w), Some(h)) if (w, h) != image.dimensions() => {
                resize(image, w, h, self.filter, self.backend)
            }
            _ => image.clone(),
        };
        self.scaling.pixel_values(&image, device)
    }
}
