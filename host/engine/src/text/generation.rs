//! Autoregressive generation as transformers' `generate` runs it: one prefill over the (left-
//! padded) prompts, then one token per step through the KV cache, sized once for the prompt plus
//! the token budget. A sequence ends at an end-of-turn token and is padded from then on; the
//! caller chooses each token (greedy, sampled, grammar-constrained) and may stop between tokens.

use super::decoder::{HiddenStates, Logits};
use super::mask::AttentionLayout;
use super::model::LanguageModel;
use super::sampling::Sampler;
use anyhow::{Result, bail};
use candle_core::{DType, Device, Tensor};
use std::ops::ControlFlow;

/// Chooses the next token of one sequence from its logits (`[vocab]`, f32).
pub trait NextToken {
    /// `sequence` is the batch row, `history` every token of that row so far (prompt included).
    fn choose(&mut self, sequence: usize, logits: &[f32], history: &[u32]) -> Result<u32>;
}

/// One sampler for the whole batch (its random stream runs across the rows, as one
/// `torch.multinomial` call over the batch draws them).
impl NextToken for Sampler {
    fn choose(&mut self, _: usize, logits: &[f32], history: &[u32]) -> Result<u32> {
        self.next_token(logits, history)
    }
}

/// The prompts of one generation, left-padded to one length.
pub struct Prompts {
    pub input_ids: Vec<Vec<u32>>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<Vec<u32>>,
    /// Gemma 3 with images: `[images, 3, H, W]` and which prompt tokens are image tokens.
    pub pixel_values: Option<Tensor>,
    pub token_type_ids: Option<Vec<Vec<u32>>>,
}

impl Prompts {
    /// One unpadded prompt.
    pub fn single(input_ids: Vec<u32>) -> Self {
        let mask = vec![1; input_ids.len()];
        Self {
            input_ids: vec![input_ids],
            attention_mask: vec![mask],
            pixel_values: None,
            token_type_ids: None,
        }
    }
}

/// When generation stops.
#[derive(Debug, Clone)]
pub struct StopAt {
    pub max_new_tokens: usize,
    /// End-of-turn tokens: a sequence that produces one is finished.
    pub eos_token_ids: Vec<u32>,
    /// Written after a sequence has finished while others go on.
    pub pad_token_id: u32,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Every sequence produced an end-of-turn token.
    EndOfTurn,
    /// The token budget ran out.
    MaxTokens,
    /// The caller stopped it between tokens (cancellation).
    Stopped,
    /// A stop string appeared (chat).
    StopString,
}

/// The prompts followed by the generated tokens (`sequences` of transformers), and why it ended.
#[derive(Debug, Clone)]
pub struct Generated {
    pub sequences: Vec<Vec<u32>>,
    pub prompt_len: usize,
    pub finish: FinishReason,
}

/// Generates up to `stop.max_new_tokens` tokens for every prompt. After each step
/// `on_step(new_tokens)` sees the token each sequence got (padding for finished ones) and may
/// stop the generation.
pub fn generate(
    model: &LanguageModel,
    prompts: &Prompts,
    stop: &StopAt,
    chooser: &mut dyn NextToken,
    on_step: &mut dyn FnMut(&[u32]) -> ControlFlow<()>,
) -> Result<Generated> {
    let decoder = model.decoder();
    let device = decoder.device().clone();
    let batch = prompts.input_ids.len();
    let prompt_len = prompts.input_ids.first().map_or(0, Vec::len);
    if batch == 0 || prompt_len == 0 || prompts.input_ids.iter().any(|r| r.len() != prompt_len) {
        bail!("prompts must be non-empty and padded to one length");
    }
    let mut layout = AttentionLayout::for_generation(&prompts.attention_mask)?;
    if layout.batch() != batch || layout.len() != prompt_len {
        bail!("the attention mask does not match the prompts' shape");
    }
    if let Some(types) = &prompts.token_type_ids {
        layout = layout.with_image_blocks(types)?;
    }
    let mut cache = decoder.new_cache(prompt_len + stop.max_new_tokens);
    let mut sequences = prompts.input_ids.clone();
    let mut finished = vec![false; batch];
    let ids = ids_tensor(&prompts.input_ids, &device)?;
    let mut embeds = model.embed(&ids, prompts.pixel_values.as_ref())?;
    let mut finish = FinishReason::MaxTokens;
    for _ in 0..stop.max_new_tokens {
        let out = decoder.forward(
            &embeds,
            &layout,
            Some(&mut cache),
            &HiddenStates::None,
            Logits::Last,
        )?;
        let logits = out
            .logits
            .expect("the head runs when asked for the last position")
            .squeeze(1)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?;
        let mut step = Vec::with_capacity(batch);
        for (row, row_logits) in logits.iter().enumerate() {
            let token = if finished[row] {
                stop.pad_token_id
            } else {
                let token = chooser.choose(row, row_logits, &sequences[row])?;
                finished[row] = stop.eos_token_ids.contains(&token);
                token
            };
            sequences[row].push(token);
            step.push(token);
        }
        let stopped = on_step(&step).is_break();
        if finished.iter().all(|&f| f) {
            finish = FinishReason::EndOfTurn;
            break;
        }
        if stopped {
            finish = FinishReason::Stopped;
            break;
        }
        layout.push_token();
        embeds = decoder.embed(&ids_tensor(
            &step.iter().map(|&t| vec![t]).collect::<Vec<_>>(),
            &device,
        )?)?;
    }
    Ok(Generated {
        sequences,
        prompt_len,
        finish,
    })
}

fn ids_tensor(rows: &[Vec<u32>], device: &Device) -> candle_core::Result<Tensor> {
    let (b, t) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, t), device)
}
