//! Scene-cut detection between consecutive frames, so that interpolation never blends two shots
//! (`interpolate::FramePlan::hold_across_cuts`).
//!
//! Two cheap luma measures, both blind to motion in their own way:
//! - the luma histogram (32 bins) distance, ½·Σ|p − q| in [0, 1]: what share of the pixels changed
//!   brightness class. Motion (panning, a moving gradient) reshuffles pixels but keeps the
//!   histogram.
//! - the coarse layout distance: the mean absolute difference of the 16×16 grid of block means,
//!   in [0, 1]. Averaging over blocks removes noise and fine texture, so small displacements
//!   barely change it.
//!
//! A cut changes both; motion, noise and grain change at most one, and little. The score is the
//! geometric mean of the two (a soft "and"; the layout scaled by 4, so that a change of a quarter
//! of the range counts fully), and a cut is a score at or above the threshold. On the tests'
//! synthetic clips, motion scores at most 0.10 and cuts at least 0.40; the default threshold is
//! 0.25.

use image::RgbImage;

const BINS: usize = 32;
const GRID: usize = 16;

/// Cut detection with a tunable threshold; `Default` is the one `is_scene_cut` uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SceneCutDetector {
    /// Score at or above which two frames are in different shots, in (0, 1].
    pub threshold: f32,
}

impl Default for SceneCutDetector {
    fn default() -> Self {
        Self { threshold: 0.25 }
    }
}

/// What is compared of one frame.
struct Signature {
    histogram: [f32; BINS],
    grid: [f32; GRID * GRID],
}

impl Signature {
    fn of(image: &RgbImage) -> Self {
        let (w, h) = (image.width() as usize, image.height() as usize);
        let mut histogram = [0f32; BINS];
        let mut sums = [0f32; GRID * GRID];
        let mut counts = [0u32; GRID * GRID];
        for (x, y, pixel) in image.enumerate_pixels() {
            let [r, g, b] = pixel.0.map(f32::from);
            // BT.601 luma, as the video's Y plane would have it.
            let luma = 0.299 * r + 0.587 * g + 0.114 * b;
            histogram[((luma as usize) * BINS / 256).min(BINS - 1)] += 1.0;
            let cell = (y as usize * GRID / h) * GRID + x as usize * GRID / w;
            sums[cell] += luma;
            counts[cell] += 1;
        }
        let pixels = (w * h).max(1) as f32;
        histogram.iter_mut().for_each(|bin| *bin /= pixels);
        let mut grid = [0f32; GRID * GRID];
        for ((mean, sum), count) in grid.iter_mut().zip(sums).zip(counts) {
            // Frames smaller than the grid leave cells empty; those compare equal (0).
            *mean = if count > 0 {
                sum / count as f32 / 255.0
            } else {
                0.0
            };
        }
        Self { histogram, grid }
    }
}

impl SceneCutDetector {
    /// The cut score in [0, 1]: √(histogram distance × min(1, 4 × layout distance)).
    pub fn score(&self, a: &RgbImage, b: &RgbImage) -> f32 {
        let (a, b) = (Signature::of(a), Signature::of(b));
        let histogram: f32 = a
            .histogram
            .iter()
            .zip(&b.histogram)
            .map(|(p, q)| (p - q).abs())
            .sum::<f32>()
            / 2.0;
        let layout: f32 = a
            .grid
            .iter()
            .zip(&b.grid)
            .map(|(p, q)| (p - q).abs())
            .sum::<f32>()
            / (GRID * GRID) as f32;
        (histogram * (4.0 * layout).min(1.0)).sqrt()
    }

    /// Whether `a` and `b` are in different shots. Frames of different sizes always are.
    pub fn is_cut(&self, a: &RgbImage, b: &RgbImage) -> bool {
        a.dimensions() != b.dimensions() || self.score(a, b) >= self.threshold
    }
}

/// Whether consecutive frames `a` and `b` are in different shots (the default detector).
pub fn is_scene_cut(a: &RgbImage, b: &RgbImage) -> bool {
    SceneCutDetector::default().is_cut(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    const W: u32 = 160;
    const H: u32 = 96;

    /// Deterministic noise (a hash of the position), so that panning it is well defined.
    fn noise(x: u32, y: u32, seed: u32) -> u8 {
        let mut h = x.wrapping_mul(0x9E37_79B1) ^ y.wrapping_mul(0x85EB_CA6B) ^ seed;
        h ^= h >> 15;
        h = h.wrapping_mul(0x2C1B_3C6D);
        h ^= h >> 12;
        h as u8
    }

    fn panning_noise(offset: u32, seed: u32) -> RgbImage {
        RgbImage::from_fn(W, H, |x, y| {
            let v = noise(x + offset, y, seed);
            Rgb([v, v / 2 + 64, 255 - v])
        })
    }

    /// A diagonal gradient with a bright square, both moving right by `offset`.
    fn moving_gradient(offset: u32) -> RgbImage {
        RgbImage::from_fn(W, H, |x, y| {
            let v = ((x + offset + y) * 255 / (W + H)) as u8;
            let square = (x + 200 - offset) % 200 < 24 && (30..54).contains(&y);
            if square {
                Rgb([250, 250, 240])
            } else {
                Rgb([v, v, v / 2])
            }
        })
    }

    /// A dark shot: a vignette-like radial ramp.
    fn dark_room() -> RgbImage {
        RgbImage::from_fn(W, H, |x, y| {
            let dx = x as f32 - W as f32 / 2.0;
            let dy = y as f32 - H as f32 / 2.0;
            let v = (90.0 - (dx * dx + dy * dy).sqrt() * 0.8).max(5.0) as u8;
            Rgb([v, v, v + 10])
        })
    }

    #[test]
    fn motion_is_not_a_cut() {
        for step in [1, 3, 8] {
            assert!(
                !is_scene_cut(&panning_noise(0, 7), &panning_noise(step, 7)),
                "noise panned by {step}: score {}",
                SceneCutDetector::default().score(&panning_noise(0, 7), &panning_noise(step, 7))
            );
            assert!(
                !is_scene_cut(&moving_gradient(0), &moving_gradient(step)),
                "gradient moved by {step}: score {}",
                SceneCutDetector::default().score(&moving_gradient(0), &moving_gradient(step))
            );
        }
        // Fresh grain every frame (same scene, new noise) is no cut either.
        assert!(!is_scene_cut(&panning_noise(0, 1), &panning_noise(0, 2)));
        let same = dark_room();
        assert_eq!(SceneCutDetector::default().score(&same, &same), 0.0);
    }

    #[test]
    fn a_change_of_shot_is_a_cut() {
        let detector = SceneCutDetector::default();
        for (name, a, b) in [
            ("noise -> dark room", panning_noise(0, 7), dark_room()),
            ("gradient -> dark room", moving_gradient(0), dark_room()),
            ("dark room -> gradient", dark_room(), moving_gradient(40)),
            ("gradient -> noise", moving_gradient(0), panning_noise(0, 3)),
        ] {
            assert!(
                detector.is_cut(&a, &b),
                "{name}: score {}",
                detector.score(&a, &b)
            );
        }
        // Frames of another size belong to another clip.
        assert!(is_scene_cut(&dark_room(), &RgbImage::new(W / 2, H)));
    }

    #[test]
    fn the_threshold_is_the_dial() {
        let (a, b) = (moving_gradient(0), moving_gradient(8));
        let score = SceneCutDetector::default().score(&a, &b);
        assert!(score > 0.0);
        assert!(SceneCutDetector { threshold: score }.is_cut(&a, &b));
        assert!(
            !SceneCutDetector {
                threshold: score + 1e-3
            }
            .is_cut(&a, &b)
        );
    }
}
