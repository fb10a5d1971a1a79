//! TeaCache's rule for Wan 2.1, as `teacache_forward` of `eval/magcache/experiments/Wan2.1_EVAL/
//! wan_teacache.py` in Zehong-Ma/MagCache (commit c53e4a869fbe255856ef0c4b21e8120d39c012b1; the
//! TeaCache4Wan2.1 rule with `use_ret_steps = False`): per branch, the relative L1 change of the
//! time embedding `e` since the branch's previous call, rescaled by the checkpoint's polynomial and
//! accumulated (f64, as numpy does); the branch reuses while the sum stays under the threshold.
//! The first and last steps always compute (`ret_steps = 1*2`, `cutoff_steps = steps*2 - 2` in
//! calls of both branches).

use super::mean_abs;
use anyhow::Result;
use candle_core::Tensor;

/// `--teacache_thresh` of the reference script.
pub(super) const DEFAULT_THRESHOLD: f64 = 0.2;

#[derive(Default)]
struct Branch {
    accumulated: f64,
    /// The modulated input of the branch's previous call (`previous_e0_even` / `_odd`).
    previous: Option<Tensor>,
}

pub(super) struct TeaCache {
    threshold: f64,
    coefficients: Vec<f64>,
    steps: usize,
    branches: Vec<Branch>,
}

impl TeaCache {
    pub(super) fn new(
        threshold: f64,
        coefficients: Vec<f64>,
        steps: usize,
        branches: usize,
    ) -> Self {
        Self {
            threshold,
            coefficients,
            steps,
            branches: (0..branches).map(|_| Branch::default()).collect(),
        }
    }

    /// `np.poly1d(coefficients)(x)`: Horner's rule from zero, in f64.
    fn rescale(&self, x: f64) -> f64 {
        self.coefficients.iter().fold(0.0, |y, c| y * x + c)
    }

    pub(super) fn reuse(
        &mut self,
        step: usize,
        branch: usize,
        modulated: &Tensor,
        has_residual: bool,
    ) -> Result<bool> {
        let edge = step == 0 || step + 1 >= self.steps;
        let rescaled = match &self.branches[branch].previous {
            Some(previous) if !edge && has_residual => {
                // `(inp - prev).abs().mean() / prev.abs().mean()` in f32, then `.item()`.
                let rel = mean_abs(modulated, Some(previous))? / mean_abs(previous, None)?;
                Some(self.rescale(rel as f64))
            }
            _ => None,
        };
        let threshold = self.threshold;
        let state = &mut self.branches[branch];
        let reuse = match rescaled {
            None => false,
            Some(r) => {
                state.accumulated += r;
                state.accumulated < threshold
            }
        };
        if !reuse {
            state.accumulated = 0.0;
        }
        state.previous = Some(modulated.clone());
        Ok(reuse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn signal(v: f32) -> Tensor {
        Tensor::new(&[v, -v], &Device::Cpu).unwrap()
    }

    #[test]
    fn rescale_is_numpy_poly1d() {
        let tea = TeaCache::new(0.2, vec![2.0, -3.0, 0.5], 4, 1);
        // 2x^2 - 3x + 0.5 at 0.25
        assert_eq!(tea.rescale(0.25), 2.0 * 0.0625 - 0.75 + 0.5);
    }

    /// Identity rescale; signals 1, 1.1, 1.21, 1.5, 1.5, 1.5 (relative changes 0.1, 0.1, ~0.24, 0, 0)
    /// over 6 steps, threshold 0.15: step 1 accumulates 0.1 (reuse), step 2 reaches 0.2 (compute,
    /// reset), step 3 adds 0.2397 (compute), step 4 adds 0 (reuse), step 5 is the last (compute).
    #[test]
    fn accumulates_relative_change_and_resets_when_computing() {
        let mut tea = TeaCache::new(0.15, vec![1.0, 0.0], 6, 1);
        let decisions: Vec<bool> = [1.0f32, 1.1, 1.21, 1.5, 1.5, 1.5]
            .iter()
            .enumerate()
            .map(|(step, &v)| tea.reuse(step, 0, &signal(v), true).unwrap())
            .collect();
        assert_eq!(decisions, [false, true, false, false, true, false]);
    }

    #[test]
    fn branches_keep_their_own_state_and_a_missing_residual_computes() {
        let mut tea = TeaCache::new(0.5, vec![1.0, 0.0], 4, 2);
        for branch in 0..2 {
            assert!(!tea.reuse(0, branch, &signal(1.0), true).unwrap());
        }
        // cond changes little, uncond a lot.
        assert!(tea.reuse(1, 0, &signal(1.1), true).unwrap());
        assert!(!tea.reuse(1, 1, &signal(3.0), true).unwrap());
        // No residual yet (e.g. a second expert's first step): compute.
        assert!(!tea.reuse(2, 0, &signal(1.1), false).unwrap());
    }
}
