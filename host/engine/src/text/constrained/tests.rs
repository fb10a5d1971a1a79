//! The constraint driven by random logits, the stand-in for a model whose own output is garbage:
//! whatever it samples, the decoded text must parse and validate against the schema. Tokenizers:
//! tests/fixtures/tokenizers, made by tests/fixtures/make_constrained_fixtures.py.

use super::*;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use std::path::PathBuf;
use tokenizers::Tokenizer;

/// A tiny tokenizer fixture and its vocabulary, with the ends of turn as end-of-sequence tokens.
struct Fixture {
    tokenizer: Tokenizer,
    vocab: TokenVocabulary,
}

fn fixture(name: &str) -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tokenizers")
        .join(name)
        .join("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&path).unwrap();
    let eos: Vec<u32> = ["<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<eos>"]
        .iter()
        .filter_map(|t| tokenizer.token_to_id(t))
        .collect();
    let vocab = TokenVocabulary::new(&tokenizer, &eos).unwrap();
    Fixture { tokenizer, vocab }
}

fn both_fixtures() -> [Fixture; 2] {
    [fixture("bytelevel-bpe"), fixture("byte-fallback-bpe")]
}

/// The model's padded logits: longer than the vocabulary, as real checkpoints are.
const LOGIT_PADDING: usize = 13;

/// Runs the generation loop (mask → sample → accept) with uniformly random logits and greedy
/// sampling, for at most `budget` tokens; returns the decoded text.
fn generate(
    fx: &Fixture,
    schema: &Value,
    seed: u64,
    budget: usize,
) -> Result<String, ConstraintError> {
    let mut constraint = JsonConstraint::new(&fx.vocab, schema)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut logits = vec![0.0f32; fx.vocab.len() + LOGIT_PADDING];
    let mut tokens = Vec::new();
    while !constraint.is_finished() && tokens.len() < budget {
        for logit in &mut logits {
            *logit = rng.next_u32() as f32;
        }
        constraint.mask_logits(&mut logits)?;
        let (token, best) = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap();
        assert!(best.is_finite(), "the mask left no token");
        constraint.accept(token as u32)?;
        tokens.push(token as u32);
    }
    constraint.check_complete()?;
    Ok(fx.tokenizer.decode(&tokens, true).unwrap())
}

/// Generates with many seeds and checks every output against the schema.
fn assert_always_valid(schema: &Value, seeds: u64) {
    for fx in both_fixtures() {
        for seed in 0..seeds {
            let text = generate(&fx, schema, seed, 2000)
                .unwrap_or_else(|err| panic!("seed {seed}: {err}"));
            let value: Value = serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("seed {seed}: {err} in {text}"));
            if let Err(err) = validate(&value, schema, schema) {
                panic!("seed {seed}: {err} in {text}");
            }
        }
    }
}

/// The subset of JSON Schema the tests use, checked independently of llguidance.
fn validate(value: &Value, schema: &Value, root: &Value) -> Result<(), String> {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let target = reference
            .strip_prefix('#')
            .and_then(|pointer| root.pointer(pointer))
            .ok_or_else(|| format!("unresolved {reference}"))?;
        return validate(value, target, root);
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        return Err(format!("{value} is not one of {options:?}"));
    }
    let number = |key: &str| schema.get(key).and_then(Value::as_f64);
    match schema.get("type").and_then(Value::as_str) {
        None => {}
        Some("object") => {
            let object = value
                .as_object()
                .ok_or(format!("{value} is not an object"))?;
            let properties = schema.get("properties").and_then(Value::as_object);
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = name.as_str().unwrap();
                if !object.contains_key(name) {
                    return Err(format!("{value} lacks {name}"));
                }
            }
            for (name, item) in object {
                match properties.and_then(|p| p.get(name)) {
                    Some(property) => validate(item, property, root)?,
                    None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                        return Err(format!("{value} has the unknown property {name}"));
                    }
                    None => {}
                }
            }
        }
        Some("array") => {
            let items = value.as_array().ok_or(format!("{value} is not an array"))?;
            let count = items.len() as f64;
            if number("minItems").is_some_and(|min| count < min)
                || number("maxItems").is_some_and(|max| count > max)
            {
                return Err(format!("{value} has {count} items"));
            }
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    validate(item, item_schema, root)?;
                }
            }
        }
        Some("string") => {
            let text = value.as_str().ok_or(format!("{value} is not a string"))?;
            let chars = text.chars().count() as f64;
            if number("minLength").is_some_and(|min| chars < min)
                || number("maxLength").is_some_and(|max| chars > max)
            {
                return Err(format!("{value} has {chars} characters"));
            }
        }
        Some(kind @ ("number" | "integer")) => {
            let x = value.as_f64().ok_or(format!("{value} is not a number"))?;
            // JSON Schema's integer is any number without a fraction: `-0` is one (serde_json
            // reads it as the float -0.0).
            if kind == "integer" && x.fract() != 0.0 {
                return Err(format!("{value} is not an integer"));
            }
            if number("minimum").is_some_and(|min| x < min)
                || number("maximum").is_some_and(|max| x > max)
            {
                return Err(format!("{value} is out of range"));
            }
        }
        Some("boolean") if value.is_boolean() => {}
        Some(other) => return Err(format!("{value} is not of type {other}")),
    }
    Ok(())
}

fn storyboard_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Storyboard",
        "description": "Annotations as plugins write them: the grammar ignores them.",
        "type": "object",
        "properties": {
            "shots": {
                "description": "In screen order.",
                "type": "array",
                "minItems": 1,
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {
                        "title": {"type": "string", "maxLength": 24},
                        "prompt": {"type": "string", "minLength": 1, "maxLength": 60},
                        "duration": {"type": "number", "minimum": 0.5, "maximum": 12},
                        "characters": {
                            "type": "array",
                            "maxItems": 3,
                            "items": {"type": "string", "maxLength": 16}
                        },
                        "camera": {"enum": ["wide", "close", "dolly", "static"]}
                    },
                    "required": ["title", "prompt", "duration", "characters", "camera"],
                    "additionalProperties": false
                }
            }
        },
        "required": ["shots"],
        "additionalProperties": false
    })
}

#[test]
fn vocabulary_bytes_are_what_the_tokenizer_decodes() {
    for fx in both_fixtures() {
        let added = fx.tokenizer.get_added_tokens_decoder();
        assert_eq!(fx.vocab.len(), fx.tokenizer.get_vocab_size(true));
        for token in 0..fx.vocab.len() as u32 {
            let decoded = fx.tokenizer.decode(&[token], false).unwrap();
            match fx.vocab.token_bytes(token) {
                // Partial UTF-8 (a lone byte token) decodes to U+FFFD, as the lossy view does.
                Some(bytes) => assert_eq!(String::from_utf8_lossy(bytes), decoded, "token {token}"),
                None if added.contains_key(&token) => {}
                // The byte token for 0xFF, which the trie reads as special.
                None => assert_eq!(decoded, "\u{FFFD}", "token {token}"),
            }
        }
        for token in added.keys() {
            assert_eq!(fx.vocab.token_bytes(*token), None, "added token {token}");
        }
        assert_eq!(fx.vocab.token_bytes(fx.vocab.len() as u32), None);
    }
}

#[test]
fn byte_level_space_and_fallback_bytes_read_exactly() {
    let [byte_level, byte_fallback] = both_fixtures();
    let id = |fx: &Fixture, piece: &str| fx.tokenizer.token_to_id(piece).unwrap();
    assert_eq!(
        byte_level.vocab.token_bytes(id(&byte_level, "Ġ\"")),
        Some(&b" \""[..])
    );
    assert_eq!(
        byte_level.vocab.token_bytes(id(&byte_level, "Ã")),
        Some(&[0xC3][..])
    );
    // `<think>` is added but not special in the tokenizer: the grammar must still never write it.
    assert_eq!(
        byte_level.vocab.token_bytes(id(&byte_level, "<think>")),
        None
    );
    assert_eq!(
        byte_fallback.vocab.token_bytes(id(&byte_fallback, "▁\"c")),
        Some(&b" \"c"[..])
    );
    assert_eq!(
        byte_fallback
            .vocab
            .token_bytes(id(&byte_fallback, "<0xE6>")),
        Some(&[0xE6][..])
    );
}

#[test]
fn storyboards_from_random_logits_always_validate() {
    assert_always_valid(&storyboard_schema(), 24);
}

#[test]
fn nested_refs_enums_and_integer_ranges_always_validate() {
    let schema = json!({
        "$defs": {
            "character": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 12},
                    "age": {"type": "integer", "minimum": 7, "maximum": 77},
                    "mood": {"$ref": "#/$defs/mood"}
                },
                "required": ["name", "age", "mood"],
                "additionalProperties": false
            },
            "mood": {"type": "string", "enum": ["calm", "storm", "dawn"]}
        },
        "type": "object",
        "properties": {
            "lead": {"$ref": "#/$defs/character"},
            "extras": {"type": "array", "maxItems": 2, "items": {"$ref": "#/$defs/character"}},
            "frames": {"type": "integer", "minimum": -3, "maximum": 120},
            "loop": {"type": "boolean"}
        },
        "required": ["lead", "frames", "loop"],
        "additionalProperties": false
    });
    assert_always_valid(&schema, 24);
}

#[test]
fn any_json_parses_when_complete_and_says_so_when_not() {
    for schema in [json!(true), json!({})] {
        for fx in both_fixtures() {
            let mut complete = 0;
            for seed in 0..8 {
                match generate(&fx, &schema, seed, 64) {
                    // Syntax only: an unbounded number may exceed f64 (the module says so).
                    Ok(text) => {
                        serde_json::from_str::<serde::de::IgnoredAny>(&text)
                            .unwrap_or_else(|err| panic!("seed {seed}: {err} in {text}"));
                        complete += 1;
                    }
                    Err(ConstraintError::Incomplete { .. }) => {}
                    Err(err) => panic!("seed {seed}: {err}"),
                }
            }
            assert!(complete > 0, "no seed finished a document");
        }
    }
}

#[test]
fn a_spent_budget_is_an_explicit_incomplete_error() {
    let [fx, _] = both_fixtures();
    match generate(&fx, &storyboard_schema(), 0, 3) {
        Err(ConstraintError::Incomplete { text }) => assert!(text.starts_with('{'), "{text}"),
        other => panic!("expected Incomplete, got {other:?}"),
    }
}

#[test]
fn end_of_sequence_only_when_the_document_is_complete() {
    let [fx, _] = both_fixtures();
    let eos = fx.tokenizer.token_to_id("<|im_end|>").unwrap();
    let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": false});
    let mut constraint = JsonConstraint::new(&fx.vocab, &schema).unwrap();
    let mut logits = vec![0.0; fx.vocab.len() + LOGIT_PADDING];
    constraint.mask_logits(&mut logits).unwrap();
    assert_eq!(logits[eos as usize], f32::NEG_INFINITY);
    assert!(
        logits[fx.vocab.len()..]
            .iter()
            .all(|l| *l == f32::NEG_INFINITY)
    );
    assert!(matches!(
        constraint.accept(eos),
        Err(ConstraintError::TokenNotAllowed { .. })
    ));

    for token in fx
        .tokenizer
        .encode("{\"ok\": true}", false)
        .unwrap()
        .get_ids()
    {
        assert!(!constraint.is_finished());
        constraint.accept(*token).unwrap();
    }
    assert!(constraint.is_finished());
    constraint.check_complete().unwrap();
    let mut logits = vec![0.0; fx.vocab.len()];
    constraint.mask_logits(&mut logits).unwrap();
    let allowed: Vec<usize> = (0..logits.len()).filter(|&t| logits[t] == 0.0).collect();
    let mut eos_ids = vec![
        eos as usize,
        fx.tokenizer.token_to_id("<|endoftext|>").unwrap() as usize,
    ];
    eos_ids.sort();
    assert_eq!(allowed, eos_ids);
    constraint.accept(eos).unwrap();
}

#[test]
fn tokens_outside_the_mask_or_the_vocabulary_are_refused() {
    let [fx, _] = both_fixtures();
    let mut constraint = JsonConstraint::new(&fx.vocab, &storyboard_schema()).unwrap();
    let size = fx.vocab.len() as u32;
    let err = constraint.accept(size + 5).unwrap_err();
    assert!(
        matches!(err, ConstraintError::TokenOutOfRange { token, .. } if token == size + 5),
        "{err}"
    );

    let title = fx.tokenizer.token_to_id("title").unwrap();
    let err = constraint.accept(title).unwrap_err();
    assert!(err.to_string().contains("\"title\""), "{err}");
    let special = fx.tokenizer.token_to_id("<|im_start|>").unwrap();
    assert!(matches!(
        constraint.accept(special),
        Err(ConstraintError::TokenNotAllowed { .. })
    ));

    // A refused token leaves the constraint usable.
    let open = fx.tokenizer.token_to_id("{\"").unwrap();
    constraint.accept(open).unwrap();

    let err = constraint.mask_logits(&mut [0.0; 10]).unwrap_err();
    assert!(
        matches!(err, ConstraintError::LogitsTooShort { logits: 10, .. }),
        "{err}"
    );
}

#[test]
fn bad_schemas_are_clear_errors() {
    let [fx, _] = both_fixtures();
    for (schema, expected) in [
        (json!({"type": "strin"}), "strin"),
        (
            json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}),
            "missing",
        ),
        (
            json!({"type": "integer", "minimum": 5, "maximum": 1}),
            "minimum",
        ),
        (json!(false), "false"),
        (json!(42), "42"),
    ] {
        match JsonConstraint::new(&fx.vocab, &schema) {
            Err(err @ ConstraintError::InvalidSchema(_)) => {
                assert!(err.to_string().contains(expected), "{schema}: {err}")
            }
            Err(err) => panic!("{schema}: expected InvalidSchema, got {err}"),
            Ok(_) => panic!("{schema}: accepted"),
        }
    }
}

#[test]
fn vocabulary_needs_valid_end_of_sequence_tokens() {
    let [fx, _] = both_fixtures();
    for eos in [&[][..], &[100_000][..]] {
        match TokenVocabulary::new(&fx.tokenizer, eos) {
            Err(ConstraintError::Vocabulary(_)) => {}
            Err(err) => panic!("{eos:?}: {err}"),
            Ok(_) => panic!("{eos:?}: accepted"),
        }
    }
}

#[test]
fn vocabularies_are_shared_and_constraints_move_between_threads() {
    fn shared<T: Send + Sync>() {}
    fn movable<T: Send>() {}
    shared::<TokenVocabulary>();
    movable::<JsonConstraint>();
}
