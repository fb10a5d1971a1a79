//! Prompt text to the embeddings the transformer attends to: the reference's prompt cleaning, the
//! pipeline's tokenizer (padded to `MAX_SEQUENCE_LENGTH`) and the UMT5 encoder, with the padding
//! positions zeroed as the Wan pipelines do. Never decides guidance or which prompts to encode.

use crate::models::t5::T5EncoderModel;
use crate::tokenizer::{EncodedPrompt, PromptTokenizer};
use anyhow::Result;
use candle_core::{DType, Device, Tensor};

/// Tokens per prompt, the Wan pipelines' `max_sequence_length` default.
pub const MAX_SEQUENCE_LENGTH: usize = 512;

/// The reference's `prompt_clean`: HTML entities decoded twice, whitespace runs collapsed to one
/// space, ends trimmed. (ftfy's mojibake repair, optional in the reference, is not applied.)
pub fn clean_prompt(text: &str) -> String {
    let once = html_escape::decode_html_entities(text);
    let twice = html_escape::decode_html_entities(&once);
    twice.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `[1, MAX_SEQUENCE_LENGTH, d_model]` embeddings of `text`, zero past its last token.
pub fn encode_prompt(
    tokenizer: &PromptTokenizer,
    encoder: &T5EncoderModel,
    text: &str,
    device: &Device,
) -> Result<Tensor> {
    let encoded = tokenizer.encode(&clean_prompt(text), MAX_SEQUENCE_LENGTH)?;
    encode_tokens(encoder, &encoded, device)
}

/// `[1, L, d_model]` f32 embeddings of already tokenised text (`L` its padded length), zero past
/// its last real token: what the transformer attends to.
pub fn encode_tokens(
    encoder: &T5EncoderModel,
    encoded: &EncodedPrompt,
    device: &Device,
) -> Result<Tensor> {
    let len = encoded.input_ids.len();
    let ids = Tensor::from_vec(encoded.input_ids.clone(), (1, len), device)?;
    let mask = Tensor::from_vec(encoded.attention_mask.clone(), (1, len), device)?;
    let hidden = encoder.forward(&ids, &mask)?;
    let keep = encoded.len();
    let keep_mask: Vec<f32> = (0..len).map(|i| if i < keep { 1.0 } else { 0.0 }).collect();
    let keep_mask = Tensor::from_vec(keep_mask, (1, len, 1), device)?.to_dtype(hidden.dtype())?;
    Ok(hidden.broadcast_mul(&keep_mask)?.to_dtype(DType::F32)?)
}

#[cfg(test)]
mod tests {
    use super::clean_prompt;

    #[test]
    fn cleaning_collapses_whitespace_and_decodes_entities_twice() {
        assert_eq!(clean_prompt("  a  cat\n\twalks "), "a cat walks");
        assert_eq!(clean_prompt("fish &amp;amp; chips"), "fish & chips");
    }
}
