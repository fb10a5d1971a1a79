//! Which keys each query may attend to, as transformers' `masking_utils` builds it: causal,
//! optionally within a sliding window, with padded keys masked, and with the tokens of one image
//! attending to each other in both directions (Gemma 3). Masks are additive (0 or the dtype's
//! most negative finite value, like transformers' eager attention), so a query whose keys are all
//! masked averages them instead of producing NaN.

use candle_core::{DType, Device, Result, Tensor};
use videosdgx_kernels::CausalMask;

/// The padding, positions and image blocks of a batch of sequences, for every token so far.
#[derive(Debug, Clone)]
pub struct AttentionLayout {
    /// `[B][L]`: whether the token is real (not padding).
    real: Vec<Vec<bool>>,
    /// `[B][L]`: rotary position of each token.
    positions: Vec<Vec<u32>>,
    /// `[B][L]`: the image a token belongs to (its tokens see each other), `-1` for text.
    blocks: Option<Vec<Vec<i64>>>,
}

impl AttentionLayout {
    /// As `model(input_ids, attention_mask)` sees a batch: positions `0..L` whatever the padding.
    /// `attention_mask` is `[B][L]` of 0/1.
    pub fn for_forward(attention_mask: &[Vec<u32>]) -> Result<Self> {
        let real = Self::check(attention_mask)?;
        let positions = real
            .iter()
            .map(|row| (0..row.len() as u32).collect())
            .collect();
        Ok(Self {
            real,
            positions,
            blocks: None,
        })
    }

    /// As `generate` numbers a left-padded batch: positions count real tokens (`cumsum - 1`),
    /// padding at position 0.
    pub fn for_generation(attention_mask: &[Vec<u32>]) -> Result<Self> {
        let real = Self::check(attention_mask)?;
        let positions = real
            .iter()
            .map(|row| {
                let mut seen = 0u32;
                row.iter()
                    .map(|&r| {
                        if r {
                            seen += 1;
                            seen - 1
                        } else {
                            0
                        }
                    })
                    .collect()
            })
            .collect();
        Ok(Self {
            real,
            positions,
            blocks: None,
        })
    }

    fn check(attention_mask: &[Vec<u32>]) -> Result<Vec<Vec<bool>>> {
        let len = attention_mask.first().map_or(0, Vec::len);
        if len == 0 || attention_mask.iter().any(|row| row.len() != len) {
            candle_core::bail!("attention_mask must be [batch, tokens] with at least one token");
        }
        Ok(attention_mask
            .iter()
            .map(|row| row.iter().map(|&m| m != 0).collect())
            .collect())
    }

    /// Marks image tokens (`token_type_ids == 1`): consecutive image tokens form one block.
    pub fn with_image_blocks(mut self, token_type_ids: &[Vec<u32>]) -> Result<Self> {
        if token_type_ids.len() != self.batch()
            || token_type_ids.iter().any(|row| row.len() != self.len())
        {
            candle_core::bail!("token_type_ids must have the shape of input_ids");
        }
        let blocks = token_type_ids
            .iter()
            .map(|row| {
                let mut group = -1i64;
                let mut previous_image = false;
                row.iter()
                    .map(|&t| {
                        let image = t == 1;
                        if image && !previous_image {
                            group += 1;
                        }
                        previous_image = image;
                        if image { group } else { -1 }
                    })
                    .collect()
            })
            .collect();
        self.blocks = Some(blocks);
        Ok(self)
    }

    pub fn batch(&self) -> usize {
        self.real.len()
    }

    pub fn len(&self) -> usize {
        self.real[0].len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends one real text token to every sequence, at the position after its last one.
    pub fn push_token(&mut self) {
        for (real, positions) in self.real.iter_mut().zip(&mut self.positions) {
            let next = positions.last().map_or(0, |p| p + 1);
            real.push(true);
            positions.push(next);
        }
        if let Some(blocks) = &mut self.blocks {
            for row in blocks {
                row.push(-1);
            }
        }
    }

    /// Rotary positions of the `len` tokens from `start` on, per sequence.
    pub fn positions(&self, start: usize, len: usize) -> Vec<Vec<u32>> {
        self.positions
            .iter()
            .map(|row| row[start..start + len].to_vec())
            .collect()
    }

    /// The same rule as [`additive_mask`](Self::additive_mask) for the queries `start..` as the
    /// fused kernel takes it, where it can say it: no image blocks, and each sequence's real
    /// tokens one run (left or right padding). `None` otherwise.
    pub fn causal_mask(&self, start: usize, sliding_window: Option<usize>) -> Option<CausalMask> {
        if self.blocks.is_some() {
            return None;
        }
        let runs = self
            .real
            .iter()
            .map(|row| {
                let first = row.iter().position(|&r| r)?;
                let last = row.iter().rposition(|&r| r)?;
                row[first..=last]
                    .iter()
                    .all(|&r| r)
                    .then_some((first, last))
            })
            .collect::<Option<Vec<_>>>()?;
        let all_real = runs
            .iter()
            .all(|&(first, last)| first == 0 && last + 1 == self.len());
        Some(CausalMask {
            offset: start,
            window: sliding_window,
            real_keys: (!all_real).then_some(runs),
        })
    }

    /// The additive mask `[B, 1, len, start + len]` in `dtype` of the queries
    /// `start..start + len` over every key so far, causal and within `sliding_window` when given.
    pub fn additive_mask(
        &self,
        start: usize,
        len: usize,
        sliding_window: Option<usize>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        // `torch.finfo(dtype).min`: f32's minimum would round to -inf in bf16, and a row of -inf
        // turns into NaN in the softmax.
        let masked = match dtype {
            DType::BF16 => -3.389_531_4e38,
            DType::F16 => -65_504.0,
            _ => f32::MIN,
        };
        let keys = start + len;
        let mut values = Vec::with_capacity(self.batch() * len * keys);
        for b in 0..self.batch() {
            for q in start..keys {
                for kv in 0..keys {
                    let same_image = self
                        .blocks
                        .as_ref()
                        .is_some_and(|blocks| blocks[b][q] >= 0 && blocks[b][q] == blocks[b][kv]);
                    let visible = (kv <= q || same_image)
                        && sliding_window.is_none_or(|w| kv + w > q)
                        && self.real[b][kv];
                    values.push(if visible { 0.0 } else { masked });
                }
            }
        }
        Tensor::from_vec(values, (self.batch(), 1, len, keys), device)?.to_dtype(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visible(layout: &AttentionLayout, window: Option<usize>) -> Vec<Vec<bool>> {
        let mask = layout
            .additive_mask(0, layout.len(), window, DType::F32, &Device::Cpu)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .get(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        mask.iter()
            .map(|row| row.iter().map(|&v| v == 0.0).collect())
            .collect()
    }

    #[test]
    fn sliding_window_keeps_the_last_w_keys_and_padding_is_never_seen() {
        let layout = AttentionLayout::for_forward(&[vec![0, 1, 1, 1, 1]]).unwrap();
        let seen = visible(&layout, Some(2));
        assert_eq!(seen[4], vec![false, false, false, true, true]);
        assert_eq!(seen[2], vec![false, true, true, false, false]);
        // The padded query sees nothing (an all-masked row).
        assert_eq!(seen[0], vec![false; 5]);
    }

    #[test]
    fn the_kernels_causal_mask_sees_what_the_additive_mask_sees() {
        for (mask, start) in [
            (vec![vec![1, 1, 1, 1, 1, 1]], 0),
            (vec![vec![0, 0, 1, 1, 1, 1], vec![1, 1, 1, 1, 1, 1]], 0),
            (vec![vec![1, 1, 1, 1, 0, 0]], 0),
            (vec![vec![0, 0, 0, 1, 1, 1], vec![0, 1, 1, 1, 1, 1]], 2),
        ] {
            let layout = AttentionLayout::for_forward(&mask).unwrap();
            let len = layout.len() - start;
            for window in [None, Some(1), Some(3)] {
                let causal = layout.causal_mask(start, window).unwrap();
                let additive = layout
                    .additive_mask(start, len, window, DType::F32, &Device::Cpu)
                    .unwrap()
                    .squeeze(1)
                    .unwrap()
                    .to_vec3::<f32>()
                    .unwrap();
                for (b, rows) in additive.iter().enumerate() {
                    for (row, keys) in rows.iter().enumerate() {
                        let seen: Vec<bool> = keys.iter().map(|&v| v == 0.0).collect();
                        let want = match causal.visible(b, row, layout.len()) {
                            Some((lo, hi)) => {
                                (0..layout.len()).map(|k| (lo..=hi).contains(&k)).collect()
                            }
                            None => vec![false; layout.len()],
                        };
                        assert_eq!(
                            seen, want,
                            "{mask:?} from {start}, window {window:?}, row {b}/{row}"
                        );
                    }
                }
            }
        }
        // Holes in the padding and image blocks need the additive mask.
        let holes = AttentionLayout::for_forward(&[vec![1, 0, 1]]).unwrap();
        assert!(holes.causal_mask(0, None).is_none());
        let images = AttentionLayout::for_forward(&[vec![1; 3]])
            .unwrap()
            .with_image_blocks(&[vec![0, 1, 1]])
            .unwrap();
        assert!(images.causal_mask(0, None).is_none());
    }

    #[test]
    fn image_tokens_see_their_whole_image_but_not_later_images() {
        let layout = AttentionLayout::for_forward(&[vec![1; 6]])
            .unwrap()
            .with_image_blocks(&[vec![0, 1, 1, 0, 1, 1]])
            .unwrap();
        let seen = visible(&layout, None);
        assert_eq!(seen[1], vec![true, true, true, false, false, false]);
        assert_eq!(seen[4], vec![true, true, true, true, true, true]);
        assert_eq!(seen[3], vec![true, true, true, true, false, false]);
    }

    #[test]
    fn generation_positions_count_real_tokens() {
        let mut layout =
            AttentionLayout::for_generation(&[vec![0, 0, 1, 1], vec![1, 1, 1, 1]]).unwrap();
        layout.push_token();
        assert_eq!(
            layout.positions(0, 5),
            vec![vec![0, 0, 0, 1, 2], vec![0, 1, 2, 3, 4]]
        );
    }
}
