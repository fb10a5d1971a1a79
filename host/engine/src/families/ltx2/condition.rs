//! The frame conditions of `LTX2ConditionPipeline` (diffusers
//! `pipelines/ltx2/pipeline_ltx2_condition.py`): images or clips placed at latent frames of the
//! video, for keyframes anywhere in a shot and for continuing from a previous shot's last frames.
//!
//! A condition's frames are scaled to cover the request and centre-cropped
//! (`preprocess_conditions`: `F.interpolate` bilinear, no antialiasing), cut to what fits from
//! their position (`trim_conditioning_sequence`) and encoded by the video VAE. One at latent frame
//! 0 replaces the first frames' tokens; one at a later frame is appended to the token sequence with
//! positions of its own (`_prepare_keyframe_coords`), so that it guides the clip without taking a
//! frame's place. The pipeline turns each token's strength into its timestep and into the weight
//! of the clean latents in the denoised estimate.

use super::rope::Coords;
use crate::finishing::resample::Resampler;
use crate::pipelines::FrameCondition;
use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device, Tensor};

/// What a request asks of the video, as the conditions need it.
#[derive(Debug, Clone, Copy)]
pub struct Clip {
    /// Pixel frames (`8k + 1`-like: `r·k + 1` for the VAE's temporal ratio `r`).
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    /// Pixel frames per latent frame after the first (`vae_temporal_compression_ratio`).
    pub temporal_ratio: usize,
}

impl Clip {
    pub fn latent_frames(&self) -> usize {
        (self.frames - 1) / self.temporal_ratio + 1
    }

    /// A condition's `index` as a latent frame of the clip: negative ones count from the end.
    pub fn latent_index(&self, index: i64) -> Result<usize> {
        let latent_frames = self.latent_frames() as i64;
        let latent = index.rem_euclid(latent_frames);
        // The reference skips such a condition with a warning; a request that loses a keyframe
        // silently is not what its author meant.
        ensure!(
            index < latent_frames,
            "a condition at latent frame {index} is past the end of {} frames ({latent_frames} latent frames: 0 to {}, or -1 for the last)",
            self.frames,
            latent_frames - 1
        );
        Ok(latent as usize)
    }

    /// The first pixel frame of latent frame `latent_index` (`(index − 1)·r + 1`, 0 for the first).
    pub fn pixel_frame(&self, latent_index: usize) -> usize {
        (latent_index * self.temporal_ratio + 1).saturating_sub(self.temporal_ratio)
    }
}

/// One condition's pictures, ready for the VAE.
pub struct ConditionPixels {
    /// `[1, 3, F, H, W]` in [-1, 1], `F` trimmed to fit the clip from `latent_index`.
    pub pixels: Tensor,
    pub latent_index: usize,
    pub strength: f64,
}

impl ConditionPixels {
    /// Pixel frames of the condition (after trimming).
    pub fn frames(&self) -> Result<usize> {
        Ok(self.pixels.dim(2)?)
    }
}

/// Refuses a condition the clip cannot take, before any picture is read.
pub fn check(condition: &FrameCondition, clip: &Clip) -> Result<()> {
    ensure!(
        (0.0..=1.0).contains(&condition.strength),
        "a condition's strength runs from 0 (a loose guide) to 1 (kept as given), got {}",
        condition.strength
    );
    clip.latent_index(condition.index)?;
    Ok(())
}

/// `preprocess_conditions` for one condition ([`check`]ed): the frames that fit from its position
/// read, scaled to cover `clip`'s size, centre-cropped, trimmed to whole latent frames and mapped
/// to [-1, 1], in f32 on `device`.
pub fn preprocess(
    condition: &FrameCondition,
    clip: &Clip,
    resampler: &Resampler,
    device: &Device,
) -> Result<ConditionPixels> {
    let latent_index = clip.latent_index(condition.index)?;
    let start = clip.pixel_frame(latent_index);
    let images = condition.frames.load_rgb(clip.frames - start)?;
    let Some(first) = images.first() else {
        bail!("a condition needs at least one frame");
    };
    let (src_w, src_h) = first.dimensions();
    if let Some((i, other)) = images
        .iter()
        .enumerate()
        .find(|(_, image)| image.dimensions() != (src_w, src_h))
    {
        bail!(
            "the frames of a condition must share one size: frame 0 is {src_w}x{src_h}, frame {i} is {}x{}",
            other.width(),
            other.height()
        );
    }
    let frames = trim_conditioning_sequence(images.len(), clip.frames - start, clip.temporal_ratio);
    let (src_w, src_h) = (src_w as usize, src_h as usize);
    let raw: Vec<u8> = images[..frames]
        .iter()
        .flat_map(|image| image.as_raw().iter().copied())
        .collect();
    let pixels = Tensor::from_vec(raw, (frames, src_h, src_w, 3), device)?
        .to_dtype(DType::F32)?
        .permute((0, 3, 1, 2))?;

    // Scale so that the picture covers the request, then crop its middle.
    let (height, width) = (clip.height, clip.width);
    let scale = (height as f64 / src_h as f64).max(width as f64 / src_w as f64);
    let (new_h, new_w) = (
        (src_h as f64 * scale).ceil() as usize,
        (src_w as f64 * scale).ceil() as usize,
    );
    let pixels = resampler
        .resize_bilinear(&pixels, new_h, new_w)
        .context("resizing a condition's frames")?;
    let (top, left) = ((new_h - height) / 2, (new_w - width) / 2);
    let pixels = pixels.narrow(2, top, height)?.narrow(3, left, width)?;
    let pixels = ((pixels / 127.5)? - 1.0)?
        .permute((1, 0, 2, 3))?
        .unsqueeze(0)?
        .contiguous()?;
    Ok(ConditionPixels {
        pixels,
        latent_index,
        strength: condition.strength,
    })
}

/// `trim_conditioning_sequence`: as many of `frames` as fit in the `room` frames left, cut to
/// `r·k + 1` frames (what the causal VAE encodes to whole latent frames).
fn trim_conditioning_sequence(frames: usize, room: usize, temporal_ratio: usize) -> usize {
    let frames = frames.min(room);
    (frames - 1) / temporal_ratio * temporal_ratio + 1
}

/// The patch sizes and VAE ratios that place a latent token in pixel space.
#[derive(Debug, Clone, Copy)]
pub struct PatchGeometry {
    pub patch_size: usize,
    pub patch_size_t: usize,
    pub temporal_ratio: usize,
    pub spatial_ratio: usize,
}

/// `_prepare_keyframe_coords`: `[1, 3, tokens, 2]` patch bounds of a condition of
/// `latent_frames × latent_height × latent_width` appended at `pixel_frame`, frames in seconds
/// at `fps`. Unlike the grid's, the frames are not shifted for the causal first frame, and a
/// single-frame keyframe spans one pixel frame, `[pixel_frame, pixel_frame + 1)`.
pub fn keyframe_coords(
    (latent_frames, latent_height, latent_width): (usize, usize, usize),
    pixel_frame: usize,
    pixel_frames: usize,
    fps: f32,
    geometry: PatchGeometry,
) -> Coords {
    let (pt, p) = (geometry.patch_size_t, geometry.patch_size);
    let grid = |n: usize, step: usize| (0..n).step_by(step).map(|v| v as f32).collect::<Vec<_>>();
    let (gf, gh, gw) = (
        grid(latent_frames, pt),
        grid(latent_height, p),
        grid(latent_width, p),
    );
    let tokens = gf.len() * gh.len() * gw.len();
    let (st, ss) = (
        geometry.temporal_ratio as f32,
        geometry.spatial_ratio as f32,
    );
    let mut axes: [Vec<f32>; 3] = std::array::from_fn(|_| Vec::with_capacity(tokens * 2));
    for &f in &gf {
        for &h in &gh {
            for &w in &gw {
                let start = f * st + pixel_frame as f32;
                let end = if pixel_frames == 1 {
                    start + 1.0
                } else {
                    (f + pt as f32) * st + pixel_frame as f32
                };
                axes[0].extend([start / fps, end / fps]);
                axes[1].extend([h * ss, (h + p as f32) * ss]);
                axes[2].extend([w * ss, (w + p as f32) * ss]);
            }
        }
    }
    Coords {
        batch: 1,
        axes: 3,
        tokens,
        values: axes.concat(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIP: Clip = Clip {
        frames: 17,
        height: 32,
        width: 32,
        temporal_ratio: 4,
    };

    #[test]
    fn indices_count_latent_frames_and_negative_ones_from_the_end() {
        assert_eq!(CLIP.latent_frames(), 5);
        assert_eq!(CLIP.latent_index(0).unwrap(), 0);
        assert_eq!(CLIP.latent_index(-1).unwrap(), 4);
        assert_eq!(CLIP.latent_index(-5).unwrap(), 0);
        let err = CLIP.latent_index(5).unwrap_err().to_string();
        assert!(
            err.contains("past the end") && err.contains("0 to 4"),
            "{err}"
        );
        assert_eq!(
            (0..5).map(|i| CLIP.pixel_frame(i)).collect::<Vec<_>>(),
            [0, 1, 5, 9, 13]
        );
    }

    #[test]
    fn sequences_are_trimmed_to_whole_latent_frames_that_fit() {
        assert_eq!(trim_conditioning_sequence(1, 17, 4), 1);
        assert_eq!(trim_conditioning_sequence(8, 17, 4), 5);
        assert_eq!(trim_conditioning_sequence(30, 16, 4), 13);
        assert_eq!(trim_conditioning_sequence(9, 4, 4), 1);
    }

    #[test]
    fn a_single_frame_keyframe_spans_one_pixel_frame() {
        let geometry = PatchGeometry {
            patch_size: 1,
            patch_size_t: 1,
            temporal_ratio: 8,
            spatial_ratio: 32,
        };
        let coords = keyframe_coords((1, 1, 2), 9, 1, 24.0, geometry);
        assert_eq!((coords.batch, coords.axes, coords.tokens), (1, 3, 2));
        let frames = [9.0 / 24.0, 10.0 / 24.0];
        assert_eq!(
            coords.values,
            [
                frames,
                frames, // two tokens, frame axis
                [0.0, 32.0],
                [0.0, 32.0], // rows
                [0.0, 32.0],
                [32.0, 64.0], // columns
            ]
            .concat()
        );
        let clip = keyframe_coords((2, 1, 1), 1, 9, 24.0, geometry);
        assert_eq!(
            clip.values[..4],
            [1.0 / 24.0, 9.0 / 24.0, 9.0 / 24.0, 17.0 / 24.0]
        );
    }
}
