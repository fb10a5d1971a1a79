//! Structured output: generation constrained to a JSON Schema, so that a plugin that asks for JSON
//! always gets a document that parses and validates, whatever the model would have written. The
//! schema becomes a grammar (llguidance), and before each token the grammar masks the logits of
//! every token that could not continue a valid document. It never samples and never runs a model:
//! the generation loop does, keeping the contract mask → sample → accept:
//!
//! ```text
//! let vocab = TokenVocabulary::new(&tokenizer, &eos_ids)?;      // once per tokenizer
//! let mut constraint = JsonConstraint::new(&vocab, &schema)?;   // once per generation
//! while !constraint.is_finished() && tokens.len() < max_tokens {
//!     let mut logits = model.next_logits(&tokens)?;
//!     constraint.mask_logits(&mut logits)?;
//!     let token = sampler.sample(&logits);
//!     constraint.accept(token)?;
//!     tokens.push(token);
//! }
//! constraint.check_complete()?;                                 // Incomplete if the budget ran out
//! ```
//!
//! The output is compact single-line JSON with `", "` and `": "` as separators (the `json.dumps`
//! default, what models write on one line): no other whitespace, since a weak model given free
//! whitespace can spend its whole token budget on it.
//!
//! The schema means what JSON Schema says: an object without `"additionalProperties": false` lets
//! the model add keys of its own. Numbers are bounded only where the schema bounds them
//! (`minimum`/`maximum`): `1e999` is JSON but no f64, and serde_json refuses it, so schemas whose
//! numbers get parsed should bound them. An integer may come out as `-0`, which serde_json reads
//! as the float -0.0.
//!
//! A token budget can end before the document does. [`JsonConstraint::check_complete`] says so
//! with [`ConstraintError::Incomplete`] rather than letting broken JSON through: the caller
//! reports it (or retries with a larger budget); there is no partial-JSON repair.

mod vocabulary;

pub use vocabulary::TokenVocabulary;

use llguidance::Matcher;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::SimpleVob;
use serde_json::{Value, json};

/// Why constrained generation could not go on, or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConstraintError {
    /// The tokenizer cannot be read as a byte vocabulary, or the end-of-sequence ids are wrong.
    #[error("tokenizer vocabulary: {0}")]
    Vocabulary(String),
    /// The schema is malformed, unsatisfiable or uses something the grammar compiler lacks.
    #[error("invalid JSON schema: {0}")]
    InvalidSchema(String),
    #[error("{logits} logits for a vocabulary of {vocab_size} tokens")]
    LogitsTooShort { logits: usize, vocab_size: usize },
    #[error("token {token} is outside the vocabulary ({vocab_size} tokens)")]
    TokenOutOfRange { token: u32, vocab_size: usize },
    #[error("token {token} ({text:?}) cannot continue the JSON here")]
    TokenNotAllowed { token: u32, text: String },
    /// The generation stopped (its token budget spent) before the document was complete; `text`
    /// is what it wrote.
    #[error("the output stopped after {} bytes, before the JSON was complete", text.len())]
    Incomplete { text: String },
    /// The grammar engine failed (llguidance's own error).
    #[error("constrained decoding: {0}")]
    Grammar(String),
}

/// The grammar state of one generation constrained to one schema.
pub struct JsonConstraint {
    vocab: TokenVocabulary,
    matcher: Matcher,
    /// The tokens allowed next, computed once per step (by `mask_logits` or `accept`).
    allowed: Option<SimpleVob>,
    /// Everything accepted so far, for error messages.
    text: Vec<u8>,
}

impl JsonConstraint {
    /// Compiles `schema`: any JSON Schema object (properties/required, items/minItems/maxItems,
    /// enum, string lengths, number bounds, `$defs` with local `$ref`…), or `true` / `{}` for any
    /// JSON value.
    pub fn new(vocab: &TokenVocabulary, schema: &Value) -> Result<Self, ConstraintError> {
        let mut schema = match schema {
            Value::Bool(true) => json!({}),
            Value::Bool(false) => {
                return Err(ConstraintError::InvalidSchema(
                    "the schema `false` accepts no document".into(),
                ));
            }
            Value::Object(_) => schema.clone(),
            other => {
                return Err(ConstraintError::InvalidSchema(format!(
                    "a schema is an object or a boolean, not {other}"
                )));
            }
        };
        // llguidance reads its compile options from the schema's `x-guidance` key; the output
        // format is the engine's decision, so this replaces any the plugin wrote.
        schema["x-guidance"] = json!({
            "whitespace_flexible": false,
            "item_separator": ", ",
            "key_separator": ": ",
        });
        let parser = vocab
            .factory()
            .create_parser(TopLevelGrammar::from_json_schema(schema))
            .map_err(|err| ConstraintError::InvalidSchema(err.to_string()))?;
        let mut matcher = Matcher::new(Ok(parser));
        for warning in matcher.grammar_warnings() {
            tracing::warn!("JSON schema: {warning}");
        }
        Ok(Self {
            vocab: vocab.clone(),
            matcher,
            allowed: None,
            text: Vec::new(),
        })
    }

    /// Sets every token that cannot come next to −∞. `logits` may be longer than the vocabulary
    /// (models pad their embedding tables): the padding is never allowed. Once the document is
    /// complete only the end-of-sequence tokens remain.
    pub fn mask_logits(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        let vocab_size = self.vocab.len();
        if logits.len() < vocab_size {
            return Err(ConstraintError::LogitsTooShort {
                logits: logits.len(),
                vocab_size,
            });
        }
        let allowed = self.allowed()?;
        for (token, logit) in logits.iter_mut().enumerate() {
            if token >= vocab_size || !allowed.is_allowed(token as u32) {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advances the grammar by the sampled token, which must be one the mask allowed. After the
    /// document is complete an end-of-sequence token is accepted (and changes nothing).
    pub fn accept(&mut self, token: u32) -> Result<(), ConstraintError> {
        let vocab_size = self.vocab.len();
        if token as usize >= vocab_size {
            return Err(ConstraintError::TokenOutOfRange { token, vocab_size });
        }
        if self.is_finished() && self.vocab.trie().eos_tokens().contains(&token) {
            return Ok(());
        }
        if !self.allowed()?.is_allowed(token) {
            return Err(ConstraintError::TokenNotAllowed {
                token,
                text: self.vocab.describe(token),
            });
        }
        self.matcher.consume_token(token).map_err(grammar_error)?;
        self.allowed = None;
        if let Some(bytes) = self.vocab.token_bytes(token) {
            self.text.extend_from_slice(bytes);
        }
        Ok(())
    }

    /// The document is complete and nothing but end-of-sequence can follow: the loop stops here.
    /// Also true after a grammar failure, which [`Self::check_complete`] then reports.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// For the loop to call when it stops, for whatever reason: `Ok` if the output so far is a
    /// complete document of the schema (finished, or ended where the grammar could end, as a
    /// top-level number can), [`ConstraintError::Incomplete`] otherwise.
    pub fn check_complete(&mut self) -> Result<(), ConstraintError> {
        if let Some(err) = self.matcher.get_error() {
            return Err(ConstraintError::Grammar(err));
        }
        if self.is_finished() || self.matcher.is_accepting().map_err(grammar_error)? {
            Ok(())
        } else {
            Err(ConstraintError::Incomplete {
                text: String::from_utf8_lossy(&self.text).into_owned(),
            })
        }
    }

    fn allowed(&mut self) -> Result<&SimpleVob, ConstraintError> {
        let mask = match self.allowed.take() {
            Some(mask) => mask,
            None => {
                let mask = self.matcher.compute_mask_or_eos().map_err(grammar_error)?;
                if mask.is_zero() {
                    return Err(ConstraintError::Grammar(format!(
                        "no token of the vocabulary can continue {:?}",
                        String::from_utf8_lossy(&self.text)
                    )));
                }
                mask
            }
        };
        Ok(self.allowed.insert(mask))
    }
}

fn grammar_error(err: anyhow::Error) -> ConstraintError {
    ConstraintError::Grammar(err.to_string())
}

#[cfg(test)]
mod tests;
