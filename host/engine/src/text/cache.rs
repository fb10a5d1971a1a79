//! The key/value cache of a decoder: one preallocated buffer per layer for the whole generation
//! (prompt plus the new-token budget), written in place token by token, so decoding never
//! reallocates or copies what was cached.

use candle_nn::kv_cache::KvCache;

pub struct DecoderCache {
    layers: Vec<KvCache>,
    len: usize,
}

impl DecoderCache {
    /// A cache for `layers` layers of up to `capacity` tokens; memory is taken on first use, when
    /// the batch size and dtype are known.
    pub fn new(layers: usize, capacity: usize) -> Self {
        Self {
            // Keys and values are [B, kv_heads, T, head_dim]: the token axis is 2.
            layers: (0..layers).map(|_| KvCache::new(2, capacity)).collect(),
            len: 0,
        }
    }

    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn layer(&mut self, i: usize) -> &mut KvCache {
        &mut self.layers[i]
    }

    pub(crate) fn advance(&mut self, tokens: usize) {
        self.len += tokens;
    }
}
