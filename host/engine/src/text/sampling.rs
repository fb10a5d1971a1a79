//! Choosing the next token from a step's logits, as transformers' `generate` does: the
//! repetition penalty, then (when sampling) temperature, top-k and top-p, then a draw from the
//! softmax, or the argmax when not sampling. The draw comes from a seeded ChaCha20 stream, so a
//! seed gives the same tokens on every run and platform. It works on host memory only (the
//! caller copies a step's logits off the device) and never sees the model.

use anyhow::{Result, bail, ensure};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// How to pick tokens; `GenerationConfig::sampling_params` fills it from the model's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// false: greedy (argmax after the repetition penalty), the rest but the penalty unused.
    pub do_sample: bool,
    /// Logits are divided by it; must be > 0 when sampling.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (ties with the last kept one too); 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; in [0, 1].
    pub top_p: f32,
    /// > 1 discourages tokens already in the prompt or the output; 1 leaves logits alone.
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl SamplingParams {
    /// `do_sample=False` with no repetition penalty: the highest logit each step.
    pub fn greedy() -> SamplingParams {
        SamplingParams {
            do_sample: false,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0,
            "repetition_penalty must be a positive number, got {}",
            self.repetition_penalty
        );
        if self.do_sample {
            ensure!(
                self.temperature.is_finite() && self.temperature > 0.0,
                "temperature must be a positive number when sampling, got {} (use do_sample=false for greedy)",
                self.temperature
            );
            ensure!(
                (0.0..=1.0).contains(&self.top_p),
                "top_p must lie in [0, 1], got {}",
                self.top_p
            );
        }
        Ok(())
    }
}

/// Picks tokens one step at a time, carrying the random stream between steps.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha20Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Sampler> {
        params.validate()?;
        Ok(Sampler {
            params,
            rng: ChaCha20Rng::seed_from_u64(params.seed),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token given this step's `logits` (one per vocabulary entry) and `seen`, the
    /// prompt and the tokens generated so far. Masks (constrained decoding) belong in `logits`
    /// already, as -inf, so that top-k and top-p choose among allowed tokens only.
    pub fn next_token(&mut self, logits: &[f32], seen: &[u32]) -> Result<u32> {
        ensure!(!logits.is_empty(), "no logits to sample from");
        let mut scores = logits.to_vec();
        apply_repetition_penalty(&mut scores, seen, self.params.repetition_penalty)?;
        if !self.params.do_sample {
            return argmax(&scores);
        }
        apply_temperature(&mut scores, self.params.temperature);
        apply_top_k(&mut scores, self.params.top_k);
        apply_top_p(&mut scores, self.params.top_p);
        let weights = softmax(&scores)?;
        Ok(draw(&weights, uniform(&mut self.rng)))
    }
}

/// transformers' `RepetitionPenaltyLogitsProcessor`: each distinct seen token's logit is divided
/// by the penalty when positive and multiplied by it when negative, once however often it was seen.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) -> Result<()> {
    if penalty == 1.0 {
        return Ok(());
    }
    let mut distinct = seen.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    for token in distinct {
        let Some(logit) = logits.get_mut(token as usize) else {
            bail!(
                "seen token {token} lies outside the vocabulary of {} logits",
                logits.len()
            );
        };
        *logit = if *logit < 0.0 {
            *logit * penalty
        } else {
            *logit / penalty
        };
    }
    Ok(())
}

/// transformers' `TemperatureLogitsWarper`.
pub fn apply_temperature(logits: &mut [f32], temperature: f32) {
    if temperature != 1.0 {
        logits.iter_mut().for_each(|logit| *logit /= temperature);
    }
}

/// transformers' `TopKLogitsWarper`: every logit below the k-th largest becomes -inf, so tokens
/// tied with the k-th stay. 0, or k at least the vocabulary, keeps everything.
pub fn apply_top_k(logits: &mut [f32], top_k: usize) {
    if top_k == 0 || top_k >= logits.len() {
        return;
    }
    let mut sorted = logits.to_vec();
    let (_, kth, _) = sorted.select_nth_unstable_by(top_k - 1, |a, b| b.total_cmp(a));
    let threshold = *kth;
    for logit in logits.iter_mut() {
        if *logit < threshold {
            *logit = f32::NEG_INFINITY;
        }
    }
}

/// transformers' `TopPLogitsWarper`: with tokens sorted from least to most likely, those whose
/// cumulative probability is at most 1 - top_p become -inf; the most likely always stays.
pub fn apply_top_p(logits: &mut [f32], top_p: f32) {
    if top_p >= 1.0 {
        return;
    }
    // Tokens already at -inf carry no probability and stay removed, so only the rest are sorted.
    let mut order: Vec<usize> = (0..logits.len())
        .filter(|&i| logits[i] > f32::NEG_INFINITY)
        .collect();
    order.sort_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(a.cmp(&b)));
    let Some(max) = order.last().map(|&i| logits[i]) else {
        return;
    };
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| libm::exp(f64::from(logits[i] - max)))
        .collect();
    let total: f64 = weights.iter().sum();
    let limit = 1.0 - f64::from(top_p);
    let mut cumulative = 0.0;
    // The last (most likely) token is never removed.
    for (&i, weight) in order[..order.len() - 1].iter().zip(&weights) {
        cumulative += weight / total;
        if cumulative > limit {
            break;
        }
        logits[i] = f32::NEG_INFINITY;
    }
}

/// The index of the largest logit, the lowest one among ties (as `torch.argmax`).
fn argmax(logits: &[f32]) -> Result<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &logit) in logits.iter().enumerate() {
        ensure!(!logit.is_nan(), "logit {i} is NaN");
        if best.is_none_or(|(_, top)| logit > top) {
            best = Some((i, logit));
        }
    }
    let (index, _) = best.expect("logits are not empty");
    Ok(index as u32)
}

/// Unnormalised softmax weights (exp(logit - max)) in f64; `libm` so they are the same bits on
/// every platform.
fn softmax(logits: &[f32]) -> Result<Vec<f64>> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    ensure!(
        max > f32::NEG_INFINITY,
        "every token is masked out (all logits are -inf)"
    );
    ensure!(
        !max.is_nan() && max.is_finite(),
        "logits are not finite (max {max})"
    );
    Ok(logits
        .iter()
        .map(|&logit| libm::exp(f64::from(logit - max)))
        .collect())
}

/// A uniform number in [0, 1) from the top 53 bits of the next 64 of the stream.
fn uniform(rng: &mut ChaCha20Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// The token whose share of the weights covers `u`, walking them in vocabulary order.
fn draw(weights: &[f64], u: f64) -> u32 {
    let total: f64 = weights.iter().sum();
    let target = u * total;
    let mut cumulative = 0.0;
    let mut last_possible = 0;
    for (i, &weight) in weights.iter().enumerate() {
        if weight > 0.0 {
            cumulative += weight;
            last_possible = i;
            if target < cumulative {
                return i as u32;
            }
        }
    }
    // Rounding can leave the target just past the sum: the last token with weight takes it.
    last_possible as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

    fn params(do_sample: bool) -> SamplingParams {
        SamplingParams {
            do_sample,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 7,
        }
    }

    #[test]
    fn repetition_penalty_divides_positive_multiplies_negative_once() {
        let mut logits = vec![2.0, -2.0, 1.0, 0.0];
        apply_repetition_penalty(&mut logits, &[0, 1, 1, 0, 3], 2.0).unwrap();
        assert_eq!(logits, vec![1.0, -4.0, 1.0, 0.0]);
    }

    #[test]
    fn repetition_penalty_rejects_a_token_outside_the_vocabulary() {
        let err = apply_repetition_penalty(&mut [0.0; 4], &[4], 1.2).unwrap_err();
        assert!(err.to_string().contains("seen token 4"), "{err}");
    }

    #[test]
    fn top_k_keeps_ties_with_the_kth() {
        let mut logits = vec![1.0, 3.0, 2.0, 2.0, 0.5];
        apply_top_k(&mut logits, 2);
        assert_eq!(logits, vec![NEG, 3.0, 2.0, 2.0, NEG]);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities 0.5, 0.25, 0.125, 0.125: p = 0.7 needs the two best.
        let ln = |p: f32| p.ln();
        let mut logits = vec![ln(0.125), ln(0.5), ln(0.125), ln(0.25)];
        apply_top_p(&mut logits, 0.7);
        assert_eq!(logits[0], NEG);
        assert_eq!(logits[2], NEG);
        assert!(logits[1].is_finite() && logits[3].is_finite());
    }

    #[test]
    fn tiny_top_p_keeps_only_the_best() {
        let mut logits = vec![0.1, 0.3, 0.2, -1.0];
        apply_top_p(&mut logits, 1e-6);
        assert_eq!(logits, vec![NEG, 0.3, NEG, NEG]);
        let mut sampler = Sampler::new(SamplingParams {
            top_p: 0.0,
            ..params(true)
        })
        .unwrap();
        for _ in 0..20 {
            assert_eq!(sampler.next_token(&[0.1, 0.3, 0.2, -1.0], &[]).unwrap(), 1);
        }
    }

    #[test]
    fn greedy_takes_the_lowest_index_among_ties_after_the_penalty() {
        let mut sampler = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..params(false)
        })
        .unwrap();
        assert_eq!(sampler.next_token(&[1.0, 3.0, 3.0, 2.0], &[]).unwrap(), 1);
        // The penalty halves token 1 and 2: 3 is now the best.
        assert_eq!(
            sampler.next_token(&[1.0, 3.0, 3.0, 2.0], &[1, 2]).unwrap(),
            3
        );
    }

    #[test]
    fn top_k_one_equals_greedy() {
        let logits: Vec<f32> = (0..64).map(|i| ((i * 37) % 64) as f32 * 0.1).collect();
        let greedy = Sampler::new(params(false))
            .unwrap()
            .next_token(&logits, &[])
            .unwrap();
        let mut sampler = Sampler::new(SamplingParams {
            top_k: 1,
            temperature: 1.7,
            ..params(true)
        })
        .unwrap();
        for _ in 0..20 {
            assert_eq!(sampler.next_token(&logits, &[]).unwrap(), greedy);
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens() {
        let logits: Vec<f32> = (0..32).map(|i| (i as f32 * 0.7).sin()).collect();
        let run = |seed| {
            let mut sampler = Sampler::new(SamplingParams {
                seed,
                top_k: 20,
                top_p: 0.95,
                temperature: 0.8,
                ..params(true)
            })
            .unwrap();
            (0..32)
                .map(|_| sampler.next_token(&logits, &[]).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
        // The ChaCha20 stream is specified, so these tokens are the same on every platform.
        assert_eq!(
            run(42)[..8],
            [19, 12, 2, 3, 3, 11, 29, 13],
            "the seeded stream changed"
        );
    }

    #[test]
    fn draws_follow_the_probabilities() {
        // Probabilities 0.1, 0.2, 0.7: counts over many draws come close.
        let logits = [0.1f32.ln(), 0.2f32.ln(), 0.7f32.ln()];
        let mut sampler = Sampler::new(params(true)).unwrap();
        let mut counts = [0usize; 3];
        for _ in 0..10_000 {
            counts[sampler.next_token(&logits, &[]).unwrap() as usize] += 1;
        }
        for (count, p) in counts.iter().zip([0.1, 0.2, 0.7]) {
            assert!((*count as f64 / 10_000.0 - p).abs() < 0.02, "{counts:?}");
        }
    }

    #[test]
    fn masked_tokens_are_never_drawn_and_all_masked_is_an_error() {
        let mut sampler = Sampler::new(params(true)).unwrap();
        for _ in 0..50 {
            assert_eq!(sampler.next_token(&[NEG, 0.0, NEG], &[]).unwrap(), 1);
        }
        let err = sampler.next_token(&[NEG, NEG], &[]).unwrap_err();
        assert!(err.to_string().contains("masked"), "{err}");
    }

    /// transformers' processors on random logits (make_chat_template_fixtures.py), stage by stage.
    #[test]
    fn processors_match_transformers() {
        let fixture: serde_json::Value = serde_json::from_str(include_str!(
            "../../../../tests/fixtures/chat_templates/logits_processors.json"
        ))
        .unwrap();
        let floats = |value: &serde_json::Value| -> Vec<f32> {
            let row = value.as_array().unwrap();
            row.iter()
                .map(|v| v.as_f64().map_or(NEG, |v| v as f32))
                .collect()
        };
        let cases = fixture["cases"].as_array().unwrap();
        assert!(cases.len() >= 5);
        for (n, case) in cases.iter().enumerate() {
            let param = |name: &str| case[name].as_f64().unwrap() as f32;
            let seen: Vec<u32> = case["seen"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let mut scores = floats(&case["logits"]);
            let check = |stage: &str, scores: &[f32]| {
                let expected = floats(&case["after"][stage]);
                for (i, (got, want)) in scores.iter().zip(&expected).enumerate() {
                    let same = if want.is_finite() {
                        (got - want).abs() <= 1e-5
                    } else {
                        got == want
                    };
                    assert!(
                        same,
                        "case {n}, after {stage}, token {i}: {got} vs transformers' {want}"
                    );
                }
            };
            apply_repetition_penalty(&mut scores, &seen, param("repetition_penalty")).unwrap();
            check("repetition_penalty", &scores);
            assert_eq!(
                argmax(&scores).unwrap(),
                case["greedy"].as_u64().unwrap() as u32
            );
            apply_temperature(&mut scores, param("temperature"));
            check("temperature", &scores);
            apply_top_k(&mut scores, case["top_k"].as_u64().unwrap() as usize);
            check("top_k", &scores);
            apply_top_p(&mut scores, param("top_p"));
            check("top_p", &scores);
        }
    }

    #[test]
    fn bad_params_are_refused() {
        let zero_temperature = SamplingParams {
            temperature: 0.0,
            ..params(true)
        };
        let err = Sampler::new(zero_temperature).err().unwrap();
        assert!(err.to_string().contains("temperature"), "{err}");
        assert!(
            Sampler::new(SamplingParams {
                top_p: 1.5,
                ..params(true)
            })
            .is_err()
        );
        assert!(
            Sampler::new(SamplingParams {
                repetition_penalty: 0.0,
                ..params(false)
            })
            .is_err()
        );
        // Greedy ignores the temperature, as transformers does.
        assert!(
            Sampler::new(SamplingParams {
                temperature: 0.0,
                ..params(false)
            })
            .is_ok()
        );
    }
}
