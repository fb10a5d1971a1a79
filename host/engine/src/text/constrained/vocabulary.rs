//! The tokenizer's vocabulary as llguidance sees it: for every token id, the exact bytes it writes
//! into the output, with special and added tokens marked so that a grammar can never write them.
//! Reads `tokenizer.json`'s two layouts our models use: GPT-2 byte-level BPE (Qwen3) and
//! SentencePiece-style pieces with `▁` for a space and `<0xNN>` byte tokens (Gemma 3).

use super::ConstraintError;
use llguidance::ParserFactory;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokenizers::{DecoderWrapper, Tokenizer};

/// A tokenizer's vocabulary prepared for constrained sampling: built once per tokenizer (it walks
/// the whole vocabulary), then shared by every [`super::JsonConstraint`]; cloning is cheap.
#[derive(Clone)]
pub struct TokenVocabulary {
    factory: Arc<ParserFactory>,
}

impl TokenVocabulary {
    /// `eos_token_ids` are the tokens that end a generation (Qwen3: `<|im_end|>` and
    /// `<|endoftext|>`; Gemma 3: `<end_of_turn>` and `<eos>`): the constraint allows them once the
    /// JSON is complete, and only then.
    pub fn new(tokenizer: &Tokenizer, eos_token_ids: &[u32]) -> Result<Self, ConstraintError> {
        let words = token_bytes(tokenizer)?;
        let vocab_size = words.len();
        let Some(&first_eos) = eos_token_ids.first() else {
            return Err(ConstraintError::Vocabulary(
                "no end-of-sequence token given".into(),
            ));
        };
        if let Some(&eos) = eos_token_ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(ConstraintError::Vocabulary(format!(
                "end-of-sequence token {eos} is outside the vocabulary ({vocab_size} tokens)"
            )));
        }
        let info = TokRxInfo::new(vocab_size as u32, first_eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(eos_token_ids);
        let env: TokEnv = Arc::new(TrieEnv { trie });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|err| ConstraintError::Vocabulary(err.to_string()))?;
        // llguidance logs to stderr by default; grammar warnings go through tracing instead.
        factory.quiet();
        Ok(Self {
            factory: Arc::new(factory),
        })
    }

    /// Number of token ids, the length of the masks; a model's logits may be longer (padded).
    pub fn len(&self) -> usize {
        self.trie().vocab_size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes `token` writes into the output; `None` for special and added tokens (which the
    /// grammar never writes) and for ids outside the vocabulary. A byte token for 0xFF reads as
    /// special too (the trie marks special tokens with that byte), harmless since UTF-8 never
    /// contains it.
    pub fn token_bytes(&self, token: u32) -> Option<&[u8]> {
        let trie = self.trie();
        ((token as usize) < trie.vocab_size() && !trie.is_special_token(token))
            .then(|| trie.token(token))
    }

    /// A token as text for messages: what it writes, or a special token's name.
    pub(super) fn describe(&self, token: u32) -> String {
        let bytes = self.trie().token(token);
        let bytes = bytes
            .strip_prefix(&[TokTrie::SPECIAL_TOKEN_MARKER])
            .unwrap_or(bytes);
        String::from_utf8_lossy(bytes).into_owned()
    }

    pub(super) fn factory(&self) -> &ParserFactory {
        &self.factory
    }

    pub(super) fn trie(&self) -> &TokTrie {
        self.factory.tok_env().tok_trie()
    }
}

/// llguidance's view of the tokenizer. It only asks to tokenize text when it forces tokens, which
/// the sampling loop never lets it do (every token is sampled), so the tokenization is declared
/// non-canonical and the trie's greedy tokenizer stands in for the real one.
struct TrieEnv {
    trie: TokTrie,
}

impl TokenizerEnv for TrieEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }

    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// How a tokenizer's decoder turns a token's string into bytes.
enum PieceEncoding {
    /// GPT-2's byte-to-unicode table: every byte is one printable character.
    ByteLevel(HashMap<char, u8>),
    /// `▁` is a space, `<0xNN>` is the byte NN, any other piece is its own UTF-8.
    SentencePiece,
}

const SENTENCEPIECE_SPACE: char = '▁';

impl PieceEncoding {
    fn of(tokenizer: &Tokenizer) -> Result<Self, ConstraintError> {
        fn contains(decoder: &DecoderWrapper, wanted: &dyn Fn(&DecoderWrapper) -> bool) -> bool {
            match decoder {
                DecoderWrapper::Sequence(sequence) => sequence
                    .get_decoders()
                    .iter()
                    .any(|inner| contains(inner, wanted)),
                other => wanted(other),
            }
        }
        let decoder = tokenizer
            .get_decoder()
            .ok_or_else(|| ConstraintError::Vocabulary("the tokenizer has no decoder".into()))?;
        if contains(decoder, &|d| matches!(d, DecoderWrapper::ByteLevel(_))) {
            Ok(Self::ByteLevel(byte_level_chars()))
        } else if contains(decoder, &|d| {
            matches!(
                d,
                DecoderWrapper::ByteFallback(_) | DecoderWrapper::Metaspace(_)
            )
        }) {
            Ok(Self::SentencePiece)
        } else {
            Err(ConstraintError::Vocabulary(format!(
                "unsupported tokenizer decoder (neither byte-level nor SentencePiece-style): {decoder:?}"
            )))
        }
    }

    fn bytes(&self, piece: &str) -> Result<Vec<u8>, ConstraintError> {
        match self {
            Self::ByteLevel(chars) => piece
                .chars()
                .map(|c| {
                    chars.get(&c).copied().ok_or_else(|| {
                        ConstraintError::Vocabulary(format!(
                            "token {piece:?} has a character outside the byte-level alphabet: {c:?}"
                        ))
                    })
                })
                .collect(),
            Self::SentencePiece => Ok(match byte_token(piece) {
                Some(byte) => vec![byte],
                None => piece.replace(SENTENCEPIECE_SPACE, " ").into_bytes(),
            }),
        }
    }
}

/// `<0xNN>` → NN: SentencePiece's byte-fallback tokens.
fn byte_token(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The inverse of GPT-2's `bytes_to_unicode`: printable Latin-1 bytes stand for themselves, the
/// other 68 bytes (controls, space, soft hyphen…) take the characters from U+0100 on, in order.
fn byte_level_chars() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0x100u32;
    (0..=255u8)
        .map(|byte| {
            if printable(byte) {
                (char::from(byte), byte)
            } else {
                let c = char::from_u32(next).expect("U+0100..U+0143 are characters");
                next += 1;
                (c, byte)
            }
        })
        .collect()
}

/// Every token id's bytes, indexed by id; added tokens (special or not: `<think>` is a plain added
/// token in Qwen3) become special-marked names, so the grammar writes only the model's own pieces.
/// Ids no token uses stay empty, which the trie never offers.
fn token_bytes(tokenizer: &Tokenizer) -> Result<Vec<Vec<u8>>, ConstraintError> {
    let vocab = tokenizer.get_vocab(true);
    let size = vocab.values().max().map_or(0, |&max| max as usize + 1);
    let added: HashSet<u32> = tokenizer.get_added_tokens_decoder().into_keys().collect();
    let encoding = PieceEncoding::of(tokenizer)?;
    let mut words = vec![Vec::new(); size];
    for (piece, id) in vocab {
        words[id as usize] = if added.contains(&id) {
            let mut marked = vec![TokTrie::SPECIAL_TOKEN_MARKER];
            marked.extend_from_slice(piece.as_bytes());
            marked
        } else {
            encoding.bytes(&piece)?
        };
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_covers_every_byte_once() {
        let chars = byte_level_chars();
        assert_eq!(chars.len(), 256);
        let bytes: HashSet<u8> = chars.values().copied().collect();
        assert_eq!(bytes.len(), 256);
        assert_eq!(chars[&'Ġ'], b' ');
        assert_eq!(chars[&'Ċ'], b'\n');
        assert_eq!(chars[&'a'], b'a');
    }

    #[test]
    fn byte_tokens_parse_only_in_their_exact_form() {
        assert_eq!(byte_token("<0x0A>"), Some(b'\n'));
        assert_eq!(byte_token("<0xFF>"), Some(0xFF));
        assert_eq!(byte_token("<0xZZ>"), None);
        assert_eq!(byte_token("<0x0AB>"), None);
        assert_eq!(byte_token("<0x+A>"), None);
        assert_eq!(byte_token("0x0A"), None);
    }
}
