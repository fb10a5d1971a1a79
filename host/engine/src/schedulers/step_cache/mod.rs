//! Step caching: skipping a transformer's work on denoising steps where it would change little,
//! reusing what it added the last time it ran. Off unless a generation asks for it with a
//! [`CacheSpec`] (`teacache:0.2`, `magcache`, `easycache:0.05`).
//!
//! Each method decides per model call (one guidance branch of one step) whether to compute or
//! reuse, exactly as its published reference does:
//!
//! - **TeaCache** ([`teacache`]): the relative L1 change of the time embedding since the branch's
//!   previous step, rescaled by a checkpoint's calibrated polynomial, accumulated until it reaches
//!   the threshold. Reuses the blocks' residual (blocks output minus blocks input).
//! - **MagCache** ([`magcache`]): a checkpoint's calibrated table of residual magnitude ratios per
//!   step; the accumulated error `|1 - product of ratios|` since the last computed step must stay
//!   under the threshold, with at most `K` steps skipped in a row. Reuses the blocks' residual.
//! - **EasyCache** ([`easycache`]): no calibration; the transformation rate `k` (output change over
//!   input change between the last two computed steps) predicts the output change from the input
//!   change; the cond branch decides for the step and the uncond branch follows. Reuses the whole
//!   model's residual (output minus latent input).
//!
//! One [`StepCache`] serves one model (a Wan 2.2 expert has its own) over its guidance branches,
//! each branch with its own state as in the references. A family plugs in by splitting its
//! transformer into embedding, blocks and head (see [`CacheScope`]) and giving the signal the
//! method reads ([`StepCache::reuse`]).

mod easycache;
mod magcache;
mod tables;
mod teacache;

use anyhow::{Context, Result, bail};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A caching method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMethod {
    TeaCache,
    MagCache,
    EasyCache,
}

impl CacheMethod {
    pub const ALL: [CacheMethod; 3] = [Self::TeaCache, Self::MagCache, Self::EasyCache];

    pub fn name(self) -> &'static str {
        match self {
            Self::TeaCache => "teacache",
            Self::MagCache => "magcache",
            Self::EasyCache => "easycache",
        }
    }

    /// The threshold the reference script uses when none is given: TeaCache4Wan2.1's
    /// `--teacache_thresh 0.2`, MagCache4Wan2.1's `--magcache_thresh 0.12`, EasyCache's `--thresh 0.05`.
    pub fn default_threshold(self) -> f64 {
        match self {
            Self::TeaCache => teacache::DEFAULT_THRESHOLD,
            Self::MagCache => magcache::DEFAULT_THRESHOLD,
            Self::EasyCache => easycache::DEFAULT_THRESHOLD,
        }
    }

    /// What the method skips on a reused call.
    pub fn scope(self) -> CacheScope {
        match self {
            Self::TeaCache | Self::MagCache => CacheScope::Blocks,
            Self::EasyCache => CacheScope::Model,
        }
    }
}

/// What a reused call skips, and so which residual is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheScope {
    /// The transformer blocks: the embedding and the head still run; the residual is the blocks'
    /// output minus their input. The signal of [`StepCache::reuse`] is the time embedding
    /// (TeaCache; MagCache reads only its table).
    Blocks,
    /// The whole model call: the residual is the model's output minus its latent input, which is
    /// also the signal.
    Model,
}

/// A method and its threshold: what a generation asks for. Written `METHOD[:THRESHOLD]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CacheSpec {
    pub method: CacheMethod,
    pub threshold: f64,
}

impl CacheSpec {
    /// The method with its published default threshold.
    pub fn new(method: CacheMethod) -> Self {
        Self {
            method,
            threshold: method.default_threshold(),
        }
    }

    /// A threshold must be a positive finite number (zero would never skip).
    pub fn check(&self) -> Result<()> {
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            bail!(
                "the {} threshold must be a positive number, got {}",
                self.method.name(),
                self.threshold
            );
        }
        Ok(())
    }
}

impl std::str::FromStr for CacheSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (name, threshold) = match s.split_once(':') {
            Some((name, threshold)) => (name, Some(threshold)),
            None => (s, None),
        };
        let name = name.trim().to_ascii_lowercase();
        let Some(method) = CacheMethod::ALL.into_iter().find(|m| m.name() == name) else {
            bail!(
                "unknown cache method {name:?} in {s:?}: expected METHOD[:THRESHOLD] with METHOD one of teacache, magcache, easycache"
            );
        };
        let spec = match threshold {
            None => Self::new(method),
            Some(t) => Self {
                method,
                threshold: t
                    .trim()
                    .parse()
                    .with_context(|| format!("cache threshold {t:?} in {s:?} is not a number"))?,
            },
        };
        spec.check()?;
        Ok(spec)
    }
}

impl std::fmt::Display for CacheSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.method.name(), self.threshold)
    }
}

/// A checkpoint's calibrated tables: built in for the published checkpoints ([`Calibration::wan21`]),
/// or read from a `step_cache.json` beside a transformer's config ([`Calibration::load`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// TeaCache's rescaling polynomial, highest degree first (`np.poly1d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacache_coefficients: Option<Vec<f64>>,
    /// MagCache's magnitude ratios, cond and uncond interleaved, one pair per step of the
    /// calibration run (resampled to other step counts as the reference does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mag_ratios: Option<Vec<f64>>,
}

/// The Wan 2.1 checkpoints the references calibrated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wan21Checkpoint {
    T2v1_3B,
    T2v14B,
    I2v14B480P,
    I2v14B720P,
}

impl Calibration {
    /// The published tables of a Wan 2.1 checkpoint.
    pub fn wan21(checkpoint: Wan21Checkpoint) -> Self {
        let (tea, mag): (&[f64], &[f64]) = match checkpoint {
            Wan21Checkpoint::T2v1_3B => (&tables::TEA_T2V_1_3B, &tables::MAG_T2V_1_3B),
            Wan21Checkpoint::T2v14B => (&tables::TEA_T2V_14B, &tables::MAG_T2V_14B),
            Wan21Checkpoint::I2v14B480P => (&tables::TEA_I2V_480P, &tables::MAG_I2V_480P),
            Wan21Checkpoint::I2v14B720P => (&tables::TEA_I2V_720P, &tables::MAG_I2V_720P),
        };
        Self {
            teacache_coefficients: Some(tea.to_vec()),
            mag_ratios: Some(mag.to_vec()),
        }
    }

    /// Reads `dir/step_cache.json` when there is one.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("step_cache.json");
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let calibration =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(Some(calibration))
    }
}

/// The steps one generation computed and skipped, per guidance branch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchSteps {
    pub cond: Vec<usize>,
    /// Empty when guidance is off.
    #[serde(default)]
    pub uncond: Vec<usize>,
}

impl BranchSteps {
    fn push(&mut self, branch: usize, step: usize) {
        match branch {
            0 => self.cond.push(step),
            _ => self.uncond.push(step),
        }
    }

    pub fn len(&self) -> usize {
        self.cond.len() + self.uncond.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What caching did in one generation: the record's `cache` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheReport {
    pub method: CacheMethod,
    pub threshold: f64,
    /// Denoising steps (0-based) each branch computed.
    pub computed: BranchSteps,
    /// Denoising steps each branch reused its residual on.
    pub skipped: BranchSteps,
}

impl CacheReport {
    /// The record of `caches` (one per model), steps in order.
    pub fn merge(spec: CacheSpec, caches: &[StepCache]) -> Self {
        let mut report = Self {
            method: spec.method,
            threshold: spec.threshold,
            computed: BranchSteps::default(),
            skipped: BranchSteps::default(),
        };
        let mut calls: Vec<_> = caches.iter().flat_map(|c| c.calls.iter()).collect();
        calls.sort_by_key(|c| (c.step, c.branch));
        for call in calls {
            let steps = if call.computed {
                &mut report.computed
            } else {
                &mut report.skipped
            };
            steps.push(call.branch, call.step);
        }
        report
    }
}

/// One decision, for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Call {
    step: usize,
    branch: usize,
    computed: bool,
}

enum Rule {
    Tea(teacache::TeaCache),
    Mag(magcache::MagCache),
    Easy(easycache::EasyCache),
}

/// The caching state of one model over one generation: its branches' decisions and residuals.
///
/// Per model call, in the order the pipeline makes them (branch 0 = cond, then 1 = uncond, step
/// by step): [`Self::reuse`] decides; on reuse, [`Self::apply`] gives the output; otherwise the
/// caller computes and hands the input and output to [`Self::computed`].
pub struct StepCache {
    spec: CacheSpec,
    rule: Rule,
    /// Per branch, what its last computed call added to its input.
    residuals: Vec<Option<Tensor>>,
    calls: Vec<Call>,
}

impl StepCache {
    /// A cache for `steps` denoising steps of `branches` (1 without guidance, 2 with) model calls.
    /// TeaCache and MagCache need `calibration` (an error names what is missing).
    pub fn new(
        spec: CacheSpec,
        steps: usize,
        branches: usize,
        calibration: Option<&Calibration>,
    ) -> Result<Self> {
        spec.check()?;
        if steps == 0 || !(1..=2).contains(&branches) {
            bail!("a step cache needs at least one step and one or two guidance branches");
        }
        let rule = match spec.method {
            CacheMethod::TeaCache => {
                let Some(coefficients) = calibration.and_then(|c| c.teacache_coefficients.clone())
                else {
                    bail!("no TeaCache coefficients for this checkpoint");
                };
                Rule::Tea(teacache::TeaCache::new(
                    spec.threshold,
                    coefficients,
                    steps,
                    branches,
                ))
            }
            CacheMethod::MagCache => {
                let Some(ratios) = calibration.and_then(|c| c.mag_ratios.as_deref()) else {
                    bail!("no MagCache magnitude ratios for this checkpoint");
                };
                Rule::Mag(magcache::MagCache::new(
                    spec.threshold,
                    ratios,
                    steps,
                    branches,
                )?)
            }
            CacheMethod::EasyCache => Rule::Easy(easycache::EasyCache::new(spec.threshold, steps)),
        };
        Ok(Self {
            spec,
            rule,
            residuals: vec![None; branches],
            calls: Vec::new(),
        })
    }

    pub fn spec(&self) -> CacheSpec {
        self.spec
    }

    pub fn scope(&self) -> CacheScope {
        self.spec.method.scope()
    }

    /// Whether `branch` reuses its residual at `step`. `signal` is what the method reads (see
    /// [`CacheScope`]): the time embedding for [`CacheScope::Blocks`], the latent input for
    /// [`CacheScope::Model`]. A branch with no residual yet always computes.
    pub fn reuse(&mut self, step: usize, branch: usize, signal: &Tensor) -> Result<bool> {
        let has_residual = self.residuals[branch].is_some();
        let reuse = match &mut self.rule {
            Rule::Tea(rule) => rule.reuse(step, branch, signal, has_residual)?,
            Rule::Mag(rule) => rule.reuse(step, branch, has_residual),
            Rule::Easy(rule) => rule.reuse(step, branch, signal, has_residual)?,
        };
        self.calls.push(Call {
            step,
            branch,
            computed: !reuse,
        });
        Ok(reuse)
    }

    /// `input` plus `branch`'s stored residual: the output of a reused call.
    pub fn apply(&self, branch: usize, input: &Tensor) -> Result<Tensor> {
        let residual = self.residuals[branch]
            .as_ref()
            .context("no residual stored for this branch")?;
        Ok(input.add(residual)?)
    }

    /// Records a computed call: stores `output - input` for `branch`.
    pub fn computed(&mut self, branch: usize, input: &Tensor, output: &Tensor) -> Result<()> {
        if let Rule::Easy(rule) = &mut self.rule {
            rule.computed(branch, output)?;
        }
        self.residuals[branch] = Some(output.sub(input)?);
        Ok(())
    }
}

/// `mean(|a - b|)` (`mean(|a|)` without `b`) in f32, as the references' torch reductions give it.
fn mean_abs(a: &Tensor, b: Option<&Tensor>) -> Result<f32> {
    let a = a.to_dtype(candle_core::DType::F32)?;
    let x = match b {
        Some(b) => a.sub(&b.to_dtype(candle_core::DType::F32)?)?,
        None => a,
    };
    Ok(x.abs()?.mean_all()?.to_scalar::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_and_without_threshold() {
        let spec: CacheSpec = "teacache:0.08".parse().unwrap();
        assert_eq!(spec.method, CacheMethod::TeaCache);
        assert_eq!(spec.threshold, 0.08);
        let spec: CacheSpec = "MagCache".parse().unwrap();
        assert_eq!((spec.method, spec.threshold), (CacheMethod::MagCache, 0.12));
        let spec: CacheSpec = "easycache".parse().unwrap();
        assert_eq!(spec.threshold, 0.05);
        assert_eq!("teacache".parse::<CacheSpec>().unwrap().threshold, 0.2);
        assert_eq!(spec.to_string(), "easycache:0.05");
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let err = |s: &str| s.parse::<CacheSpec>().unwrap_err().to_string();
        assert!(
            err("foo").contains("unknown cache method \"foo\""),
            "{}",
            err("foo")
        );
        assert!(err("teacache:-1").contains("must be a positive number"));
        assert!(err("teacache:0").contains("must be a positive number"));
        assert!(err("magcache:inf").contains("must be a positive number"));
        assert!(
            format!("{:#}", "easycache:fast".parse::<CacheSpec>().unwrap_err())
                .contains("\"fast\" in \"easycache:fast\" is not a number")
        );
    }

    #[test]
    fn spec_serialises_as_method_and_threshold() {
        let spec: CacheSpec = "magcache:0.1".parse().unwrap();
        let json = serde_json::to_value(spec).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"method": "magcache", "threshold": 0.1})
        );
        assert_eq!(serde_json::from_value::<CacheSpec>(json).unwrap(), spec);
    }

    #[test]
    fn published_tables_have_their_lengths_and_first_entries() {
        let t2v = Calibration::wan21(Wan21Checkpoint::T2v1_3B);
        let ratios = t2v.mag_ratios.unwrap();
        assert_eq!(ratios.len(), 100);
        assert_eq!(&ratios[..4], &[1.0, 1.0, 1.0124, 1.02213]);
        assert_eq!(ratios[99], 0.81939);
        assert_eq!(
            t2v.teacache_coefficients.unwrap(),
            [
                2.39676752e+03,
                -1.31110545e+03,
                2.01331979e+02,
                -8.29855975e+00,
                1.37887774e-01
            ]
        );
        let i2v = Calibration::wan21(Wan21Checkpoint::I2v14B720P);
        assert_eq!(i2v.mag_ratios.unwrap().len(), 80);
        assert_eq!(
            i2v.teacache_coefficients.unwrap()[0],
            -114.36346466,
            "the 720P set"
        );
    }

    #[test]
    fn tea_and_mag_need_a_calibration_easy_does_not() {
        let err = |m| {
            StepCache::new(CacheSpec::new(m), 4, 2, None)
                .err()
                .unwrap()
                .to_string()
        };
        assert!(err(CacheMethod::TeaCache).contains("no TeaCache coefficients"));
        assert!(err(CacheMethod::MagCache).contains("no MagCache magnitude ratios"));
        assert!(StepCache::new(CacheSpec::new(CacheMethod::EasyCache), 4, 2, None).is_ok());
    }

    #[test]
    fn report_lists_steps_per_branch_in_order() {
        let cache = |calls: &[(usize, usize, bool)]| {
            let mut c = StepCache::new(CacheSpec::new(CacheMethod::EasyCache), 4, 2, None).unwrap();
            c.calls = calls
                .iter()
                .map(|&(step, branch, computed)| Call {
                    step,
                    branch,
                    computed,
                })
                .collect();
            c
        };
        // Two experts: the high-noise one ran steps 0-1, the low-noise one steps 2-3.
        let high = cache(&[(0, 0, true), (0, 1, true), (1, 0, false), (1, 1, false)]);
        let low = cache(&[(2, 0, true), (2, 1, true), (3, 0, true), (3, 1, false)]);
        let report = CacheReport::merge(high.spec(), &[low, high]);
        assert_eq!(report.computed.cond, [0, 2, 3]);
        assert_eq!(report.computed.uncond, [0, 2]);
        assert_eq!(report.skipped.cond, [1]);
        assert_eq!(report.skipped.uncond, [1, 3]);
        assert_eq!(report.computed.len() + report.skipped.len(), 8);
    }
}
