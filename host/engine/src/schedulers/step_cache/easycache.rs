//! EasyCache's rule, as `easycache_forward_` of `EasyCache4Wan2.2/easycache_generate.py` in
//! H-EmbodVis/EasyCache (commit 3149a412d08331bf41907d3f1548d36608ef7a0d; the same rule as
//! EasyCache4Wan2.1): the cond call decides for its step and the uncond call follows. The first
//! `ret_steps` (7) steps and the last step compute. After, the predicted output change
//! `k * mean|x - x_prev| / mean|out_last|` (x the latent input, `out_last` the cond output of the
//! last computed step) accumulates (f32, as the reference's tensors do); the step reuses while the
//! sum stays under the threshold. `k`, the transformation rate, is the cond output change over the
//! input change between the last two computed steps. A reused call returns its input plus the
//! branch's last `output - input`.

use super::mean_abs;
use anyhow::Result;
use candle_core::Tensor;

/// `--thresh` of the reference script.
pub(super) const DEFAULT_THRESHOLD: f64 = 0.05;
/// `--ret_steps`: warm-up steps that always compute.
const WARMUP_STEPS: usize = 7;

pub(super) struct EasyCache {
    threshold: f32,
    steps: usize,
    /// `should_calc_current_pair`.
    compute_step: bool,
    accumulated: f32,
    k: Option<f32>,
    /// Cond inputs: of the previous call, and of the last computed call before the current one.
    previous_input: Option<Tensor>,
    computed_input: Option<Tensor>,
    /// Cond output of the last computed call.
    previous_output: Option<Tensor>,
}

impl EasyCache {
    pub(super) fn new(threshold: f64, steps: usize) -> Self {
        Self {
            threshold: threshold as f32,
            steps,
            compute_step: true,
            accumulated: 0.0,
            k: None,
            previous_input: None,
            computed_input: None,
            previous_output: None,
        }
    }

    pub(super) fn reuse(
        &mut self,
        step: usize,
        branch: usize,
        input: &Tensor,
        has_residual: bool,
    ) -> Result<bool> {
        if branch == 0 {
            self.compute_step = if step < WARMUP_STEPS || step + 1 >= self.steps {
                self.accumulated = 0.0;
                true
            } else {
                match (&self.previous_input, &self.previous_output, self.k) {
                    (Some(previous), Some(output), Some(k)) => {
                        let input_change = mean_abs(input, Some(previous))?;
                        self.accumulated += k * (input_change / mean_abs(output, None)?);
                        if self.accumulated < self.threshold {
                            false
                        } else {
                            self.accumulated = 0.0;
                            true
                        }
                    }
                    // No rate yet: compute, keeping the sum as the reference does.
                    _ => true,
                }
            };
            self.previous_input = Some(input.clone());
        }
        Ok(!self.compute_step && has_residual)
    }

    /// After a computed call: the new rate from the cond outputs.
    pub(super) fn computed(&mut self, branch: usize, output: &Tensor) -> Result<()> {
        if branch != 0 {
            return Ok(());
        }
        if let (Some(previous), Some(input), Some(before)) = (
            &self.previous_output,
            &self.previous_input,
            &self.computed_input,
        ) {
            self.k = Some(mean_abs(output, Some(previous))? / mean_abs(input, Some(before))?);
        }
        self.computed_input = self.previous_input.clone();
        self.previous_output = Some(output.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: f32) -> Tensor {
        Tensor::new(&[v, v], &Device::Cpu).unwrap()
    }

    /// Ten steps, cond only. Inputs x_i = 10 - i, outputs out_i = 2 x_i while computed, so
    /// k = |Δout| / |Δx| = 2 once two steps were computed. Steps 0-6 warm up. Step 7: change 1,
    /// |out_last| = 2 * 4 = 8, predicted 2 * 1 / 8 = 0.25 < 0.3: reuse. Step 8: 0.25 more = 0.5:
    /// compute (reset). Step 9 is the last: compute.
    #[test]
    fn predicts_output_change_from_input_change() {
        let mut easy = EasyCache::new(0.3, 10);
        let mut decisions = vec![];
        for step in 0..10 {
            let x = 10.0 - step as f32;
            let reuse = easy.reuse(step, 0, &t(x), step > 0).unwrap();
            if !reuse {
                easy.computed(0, &t(2.0 * x)).unwrap();
            }
            decisions.push(reuse);
        }
        assert_eq!(easy.k, Some(2.0));
        let skipped: Vec<usize> = (0..10).filter(|&i| decisions[i]).collect();
        assert_eq!(skipped, [7]);
    }

    #[test]
    fn uncond_follows_the_cond_decision() {
        let mut easy = EasyCache::new(10.0, 10);
        for step in 0..8 {
            let x = t(10.0 - step as f32);
            let cond = easy.reuse(step, 0, &x, true).unwrap();
            let uncond = easy.reuse(step, 1, &x, true).unwrap();
            assert_eq!(cond, uncond, "step {step}");
            if !cond {
                easy.computed(0, &x).unwrap();
            }
            assert_eq!(cond, step == 7, "step {step}");
        }
        // A branch without a residual computes even when its step is skipped.
        assert!(!easy.reuse(8, 1, &t(1.0), false).unwrap());
    }
}
