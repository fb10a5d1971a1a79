//! UniPC multistep solver (predictor UniP + corrector UniC, B(h) variants) on flow sigmas with
//! `flow_prediction`: the diffusers `UniPCMultistepScheduler` configuration the Wan pipelines ship.

use super::{linspace, reject_enabled, round_f32};
use anyhow::{Result, bail};
use candle_core::Tensor;

#[derive(Clone, Copy, PartialEq, Eq)]
enum SolverType {
    Bh1,
    Bh2,
}

pub struct UniPcMultistep {
    train_steps: usize,
    shift: f64,
    solver_order: usize,
    solver_type: SolverType,
    lower_order_final: bool,
    disable_corrector: Vec<usize>,
    final_sigma_min: bool,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    /// Converted (x0) predictions of the last `solver_order` steps, oldest first.
    model_outputs: Vec<Tensor>,
    lower_order_nums: usize,
    this_order: usize,
    last_sample: Option<Tensor>,
    step_index: usize,
}

impl UniPcMultistep {
    pub fn from_config(config: &serde_json::Value, shift: Option<f64>) -> Result<Self> {
        reject_enabled(
            config,
            &[
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "use_dynamic_shifting",
                "thresholding",
                "shift_terminal",
                "solver_p",
                "rescale_betas_zero_snr",
            ],
        )?;
        if config["use_flow_sigmas"].as_bool() != Some(true) {
            bail!("UniPCMultistepScheduler is supported with use_flow_sigmas = true only");
        }
        if config["prediction_type"].as_str() != Some("flow_prediction") {
            bail!(
                "UniPCMultistepScheduler is supported with prediction_type = \"flow_prediction\" only"
            );
        }
        if config["predict_x0"].as_bool() == Some(false) {
            bail!("UniPCMultistepScheduler with flow_prediction needs predict_x0 = true");
        }
        let solver_type = match config["solver_type"].as_str().unwrap_or("bh2") {
            "bh1" => SolverType::Bh1,
            // The reference maps the DPM-Solver names onto bh2.
            "bh2" | "midpoint" | "heun" | "logrho" => SolverType::Bh2,
            other => bail!("unknown UniPC solver_type {other:?}"),
        };
        let final_sigma_min = match config["final_sigmas_type"].as_str().unwrap_or("zero") {
            "zero" => false,
            "sigma_min" => true,
            other => bail!("unknown final_sigmas_type {other:?}"),
        };
        let solver_order = config["solver_order"].as_u64().unwrap_or(2) as usize;
        if solver_order == 0 {
            bail!("solver_order must be at least 1");
        }
        let disable_corrector = config["disable_corrector"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_u64())
                    .map(|v| v as usize)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            train_steps: config["num_train_timesteps"].as_u64().unwrap_or(1000) as usize,
            shift: shift.or(config["flow_shift"].as_f64()).unwrap_or(1.0),
            solver_order,
            solver_type,
            lower_order_final: config["lower_order_final"].as_bool().unwrap_or(true),
            disable_corrector,
            final_sigma_min,
            timesteps: vec![],
            sigmas: vec![],
            model_outputs: vec![],
            lower_order_nums: 0,
            this_order: 0,
            last_sample: None,
            step_index: 0,
        })
    }

    pub fn set_timesteps(&mut self, steps: usize) {
        let n = self.train_steps as f64;
        let mut sigmas = linspace(1.0, 1.0 / n, steps + 1);
        sigmas.pop();
        let shift = self.shift;
        for s in &mut sigmas {
            *s = shift * *s / (1.0 + (shift - 1.0) * *s);
        }
        // The reference nudges a first sigma of exactly 1 so that log(alpha) stays finite.
        if (sigmas[0] - 1.0).abs() < 1e-6 {
            sigmas[0] -= 1e-6;
        }
        // Timesteps are truncated to integers, as the reference's cast to int64 does.
        self.timesteps = sigmas.iter().map(|s| (s * n).trunc()).collect();
        let last = if self.final_sigma_min {
            sigmas[sigmas.len() - 1]
        } else {
            0.0
        };
        sigmas.push(last);
        self.sigmas = sigmas.into_iter().map(round_f32).collect();
        self.model_outputs.clear();
        self.lower_order_nums = 0;
        self.this_order = 0;
        self.last_sample = None;
        self.step_index = 0;
    }

    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.train_steps
    }

    /// `lambda = log(alpha) - log(sigma)` with flow `alpha = 1 - sigma`.
    fn lambda(&self, index: usize) -> f64 {
        let sigma = self.sigmas[index];
        (1.0 - sigma).ln() - sigma.ln()
    }

    pub fn step(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let i = self.step_index;
        if i >= self.timesteps.len() {
            bail!(
                "UniPC: step {i} past the end of a {}-step schedule",
                self.timesteps.len()
            );
        }
        let x0 = (sample - (model_output * self.sigmas[i])?)?;
        let use_corrector =
            i > 0 && !self.disable_corrector.contains(&(i - 1)) && self.last_sample.is_some();
        let sample = match (&self.last_sample, use_corrector) {
            (Some(last), true) => self.corrector(&x0, last, self.this_order)?,
            _ => sample.clone(),
        };
        if self.model_outputs.len() == self.solver_order {
            self.model_outputs.remove(0);
        }
        self.model_outputs.push(x0);
        let mut order = self.solver_order;
        if self.lower_order_final {
            order = order.min(self.timesteps.len() - i);
        }
        self.this_order = order.min(self.lower_order_nums + 1);
        let prev = self.predictor(&sample, self.this_order)?;
        self.last_sample = Some(sample);
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        self.step_index += 1;
        Ok(prev)
    }

    /// The B(h) coefficients shared by predictor and corrector: `(h_phi_1, B_h, R, b)` for `rks`.
    fn coefficients(
        &self,
        h: f64,
        rks: &[f64],
        order: usize,
    ) -> (f64, f64, Vec<Vec<f64>>, Vec<f64>) {
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1.0;
        let b_h = match self.solver_type {
            SolverType::Bh1 => hh,
            SolverType::Bh2 => hh.exp_m1(),
        };
        let mut r = Vec::with_capacity(order);
        let mut b = Vec::with_capacity(order);
        for k in 1..=order {
            r.push(rks.iter().map(|rk| rk.powi(k as i32 - 1)).collect());
            b.push(h_phi_k * factorial / b_h);
            factorial *= (k + 1) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        (h_phi_1, b_h, r, b)
    }

    /// Differences of the older predictions to the newest, scaled by their log-SNR distances.
    /// `offset` is 0 for the predictor and 1 for the corrector (which sees one step later).
    fn history(
        &self,
        order: usize,
        offset: usize,
        lambda_s0: f64,
        h: f64,
    ) -> Result<(Vec<f64>, Vec<Tensor>)> {
        let m = &self.model_outputs;
        let m0 = &m[m.len() - 1];
        let mut rks = Vec::with_capacity(order);
        let mut d1s = Vec::with_capacity(order);
        for k in 1..order {
            let rk = (self.lambda(self.step_index - k - offset) - lambda_s0) / h;
            rks.push(rk);
            d1s.push(((&m[m.len() - 1 - k] - m0)? / rk)?);
        }
        rks.push(1.0);
        Ok((rks, d1s))
    }

    fn predictor(&self, x: &Tensor, order: usize) -> Result<Tensor> {
        let i = self.step_index;
        let (sigma_t, sigma_s0) = (self.sigmas[i + 1], self.sigmas[i]);
        let alpha_t = 1.0 - sigma_t;
        let lambda_s0 = self.lambda(i);
        let h = self.lambda(i + 1) - lambda_s0;
        let (rks, d1s) = self.history(order, 0, lambda_s0, h)?;
        let (h_phi_1, b_h, r, b) = self.coefficients(h, &rks, order);
        let m0 = &self.model_outputs[self.model_outputs.len() - 1];
        let x_t = ((x * (sigma_t / sigma_s0))? - (m0 * (alpha_t * h_phi_1))?)?;
        if d1s.is_empty() {
            return Ok(x_t);
        }
        let rhos = if order == 2 {
            vec![0.5]
        } else {
            let k = order - 1;
            solve(
                r[..k].iter().map(|row| row[..k].to_vec()).collect(),
                b[..k].to_vec(),
            )?
        };
        let res = weighted_sum(&rhos, &d1s)?;
        Ok((x_t - (res * (alpha_t * b_h))?)?)
    }

    fn corrector(&self, model_t: &Tensor, last_sample: &Tensor, order: usize) -> Result<Tensor> {
        let i = self.step_index;
        let (sigma_t, sigma_s0) = (self.sigmas[i], self.sigmas[i - 1]);
        let alpha_t = 1.0 - sigma_t;
        let lambda_s0 = self.lambda(i - 1);
        let h = self.lambda(i) - lambda_s0;
        let (rks, d1s) = self.history(order, 1, lambda_s0, h)?;
        let (h_phi_1, b_h, r, b) = self.coefficients(h, &rks, order);
        let m0 = &self.model_outputs[self.model_outputs.len() - 1];
        let rhos = if order == 1 { vec![0.5] } else { solve(r, b)? };
        let x_t = ((last_sample * (sigma_t / sigma_s0))? - (m0 * (alpha_t * h_phi_1))?)?;
        let d1_t = (model_t - m0)?;
        let last_rho = rhos[rhos.len() - 1];
        let mut corr = (d1_t * last_rho)?;
        if !d1s.is_empty() {
            corr = (corr + weighted_sum(&rhos[..rhos.len() - 1], &d1s)?)?;
        }
        Ok((x_t - (corr * (alpha_t * b_h))?)?)
    }
}

fn weighted_sum(weights: &[f64], tensors: &[Tensor]) -> Result<Tensor> {
    let mut acc = (&tensors[0] * weights[0])?;
    for (w, t) in weights.iter().zip(tensors).skip(1) {
        acc = (acc + (t * *w)?)?;
    }
    Ok(acc)
}

/// Solves the small dense system `a x = b` by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Result<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs()))
            .unwrap_or(col);
        if a[pivot][col] == 0.0 || !a[pivot][col].is_finite() {
            bail!("UniPC: singular coefficient system");
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let pivot_row = a[col].clone();
        for row in col + 1..n {
            let f = a[row][col] / pivot_row[col];
            for (x, p) in a[row].iter_mut().zip(&pivot_row).skip(col) {
                *x -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    Ok(x)
}
