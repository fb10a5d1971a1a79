//! MagCache's rule for Wan 2.1, as `magcache_forward` of `MagCache4Wan2.1/magcache_generate.py` in
//! Zehong-Ma/MagCache (commit e1862e09110943638562513e0128c3c7f790540a): the calls (cond and uncond
//! alternating, `cnt`) before `int(num_calls * retention_ratio)` always compute; after, each branch
//! multiplies its accumulated ratio by the table's entry for the call, adds `|1 - ratio|` to its
//! error, and reuses while the error stays under the threshold and at most `K` steps were skipped
//! since it last computed. Tables of another length are resampled per branch by `nearest_interp`.
//! Where the reference would reuse a residual it has not stored yet (a branch's first call after the
//! retention, or a Wan 2.2 expert's first step), the branch computes, as diffusers' port does.

use anyhow::{Result, bail};

/// `--magcache_thresh` of the reference script.
pub(super) const DEFAULT_THRESHOLD: f64 = 0.12;
/// `--magcache_K`: the most consecutive skipped steps.
const MAX_SKIPPED: usize = 2;
/// `--retention_ratio`: the share of calls that always compute.
const RETENTION_RATIO: f64 = 0.2;

#[derive(Clone, Copy)]
struct Branch {
    ratio: f64,
    skipped: usize,
    error: f64,
}

impl Branch {
    const RESET: Self = Self {
        ratio: 1.0,
        skipped: 0,
        error: 0.0,
    };
}

pub(super) struct MagCache {
    threshold: f64,
    /// Per branch, one ratio per step.
    ratios: Vec<Vec<f64>>,
    retention_calls: usize,
    branches: Vec<Branch>,
}

/// The reference's `nearest_interp` (numpy): `src[round(arange(n) * (len - 1) / (n - 1))]`, rounding
/// half to even.
pub(super) fn nearest_interp(src: &[f64], target: usize) -> Vec<f64> {
    if target == 1 {
        return vec![src[src.len() - 1]];
    }
    let scale = (src.len() - 1) as f64 / (target - 1) as f64;
    (0..target)
        .map(|i| src[(i as f64 * scale).round_ties_even() as usize])
        .collect()
}

impl MagCache {
    pub(super) fn new(
        threshold: f64,
        table: &[f64],
        steps: usize,
        branches: usize,
    ) -> Result<Self> {
        if table.len() < 2 || !table.len().is_multiple_of(2) {
            bail!(
                "MagCache magnitude ratios must come in cond/uncond pairs, got {} values",
                table.len()
            );
        }
        let ratios = (0..branches)
            .map(|b| {
                let own: Vec<f64> = table.iter().skip(b).step_by(2).copied().collect();
                if table.len() == 2 * steps {
                    own
                } else {
                    nearest_interp(&own, steps)
                }
            })
            .collect();
        Ok(Self {
            threshold,
            ratios,
            // `int(self.num_steps * self.retention_ratio)`, truncating as Python's int() does.
            retention_calls: ((steps * branches) as f64 * RETENTION_RATIO) as usize,
            branches: vec![Branch::RESET; branches],
        })
    }

    pub(super) fn reuse(&mut self, step: usize, branch: usize, has_residual: bool) -> bool {
        let calls = self.branches.len();
        if step * calls + branch < self.retention_calls {
            return false;
        }
        let state = &mut self.branches[branch];
        state.ratio *= self.ratios[branch][step];
        state.skipped += 1;
        state.error += (1.0 - state.ratio).abs();
        let reuse = state.error < self.threshold && state.skipped <= MAX_SKIPPED && has_residual;
        if !reuse {
            *state = Branch::RESET;
        }
        reuse
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_interp_matches_numpy() {
        // np.round(np.arange(4) * 9/3) = [0, 3, 6, 9]; np.round(np.arange(3) * 1.5) = [0, 2, 3]
        // (1.5 rounds to 2, half to even); n = 1 takes the last.
        let src: Vec<f64> = (0..10).map(|i| i as f64).collect();
        assert_eq!(nearest_interp(&src, 4), [0.0, 3.0, 6.0, 9.0]);
        assert_eq!(nearest_interp(&src[..4], 3), [0.0, 2.0, 3.0]);
        assert_eq!(nearest_interp(&src[..5], 5), [0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(nearest_interp(&src, 1), [9.0]);
        // 2.5 rounds down to even.
        assert_eq!(nearest_interp(&src[..6], 3), [0.0, 2.0, 5.0]);
    }

    /// 5 steps, both branches, table given per step (no resampling): cond ratios 1, 0.99, 0.98,
    /// 0.99, 1.0; uncond 1, 0.9, 0.9, 0.9, 0.9. Retention int(10 * 0.2) = 2 calls: step 0 computes.
    /// cond: step 1 err 0.01 (skip), step 2 ratio 0.9702 err 0.0398 (skip), step 3 is the third
    /// in a row (K = 2: compute, reset), step 4 err 0 (skip). uncond: err 0.1 > 0.05 at every step.
    #[test]
    fn accumulates_ratio_error_and_caps_consecutive_skips() {
        let cond = [1.0, 0.99, 0.98, 0.99, 1.0];
        let uncond = [1.0, 0.9, 0.9, 0.9, 0.9];
        let table: Vec<f64> = cond
            .iter()
            .zip(&uncond)
            .flat_map(|(&c, &u)| [c, u])
            .collect();
        let mut mag = MagCache::new(0.05, &table, 5, 2).unwrap();
        let mut decisions = vec![];
        for step in 0..5 {
            for branch in 0..2 {
                decisions.push(mag.reuse(step, branch, true));
            }
        }
        assert_eq!(
            decisions,
            [
                false, false, true, false, true, false, false, false, true, false
            ]
        );
    }

    #[test]
    fn retention_counts_calls_and_missing_residuals_compute() {
        // 8 steps, 2 branches: int(16 * 0.2) = 3 calls retained, so uncond step 1 may skip
        // before cond step 1 may.
        let table = vec![1.0; 16];
        let mut mag = MagCache::new(0.1, &table, 8, 2).unwrap();
        assert!(!mag.reuse(1, 0, true));
        assert!(mag.reuse(1, 1, true));
        assert!(!mag.reuse(2, 0, false), "no residual: compute");
        assert!(MagCache::new(0.1, &[1.0; 3], 8, 2).is_err());
    }
}
