//! `ChatModel` on the tiny random chat models of tests/fixtures/make_llm_fixtures.py: the prompt
//! ids and greedy answers of transformers' `apply_chat_template` + `generate` (Qwen3, and Gemma 3
//! looking at an image through its processor), streaming, stop strings, cancellation, seeded
//! sampling, and JSON-Schema-constrained answers from a model whose own output is garbage.

use candle_core::{DType, Device};
use std::ops::ControlFlow;
use std::path::PathBuf;
use videosdgx_engine::text::chat::{ChatModel, ChatOptions};
use videosdgx_engine::text::chat_template::{ChatMessage, MessageContent};
use videosdgx_engine::text::generation::FinishReason;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/text")
        .join(name)
}

fn load(name: &str) -> ChatModel {
    ChatModel::load(&fixture(name).join("model"), &Device::Cpu, DType::F32).unwrap()
}

fn ask(text: &str) -> Vec<ChatMessage> {
    vec![ChatMessage::text("user", text)]
}

fn greedy(max_tokens: usize) -> ChatOptions {
    ChatOptions {
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ..ChatOptions::default()
    }
}

fn has_image(messages: &[ChatMessage]) -> bool {
    messages.iter().any(|m| match &m.content {
        MessageContent::Parts(parts) => parts
            .iter()
            .any(|p| matches!(p, videosdgx_engine::text::chat_template::ContentPart::Image)),
        MessageContent::Text(_) => false,
    })
}

/// Prompt ids and greedy answers against the reference, for every recorded conversation.
fn check_reference(name: &str) {
    let model = load(name);
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(name).join("chat_reference.json")).unwrap(),
    )
    .unwrap();
    let max_tokens = reference["max_new_tokens"].as_u64().unwrap() as usize;
    let image = image::open(fixture(name).join("image.png"))
        .map(|i| i.to_rgb8())
        .ok();
    for case in reference["cases"].as_array().unwrap() {
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let images: Vec<_> = if has_image(&messages) {
            vec![image.clone().expect("the fixture has image.png")]
        } else {
            Vec::new()
        };
        let options = greedy(max_tokens);
        let prompt = model.prompt_ids(&messages, images.len(), &options).unwrap();
        let expected_prompt: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
        assert_eq!(prompt, expected_prompt, "{name}: prompt ids");
        let reply = model
            .chat(&messages, &images, &options, &mut |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
        let answer: Vec<u32> = serde_json::from_value(case["answer_ids"].clone()).unwrap();
        assert_eq!(reply.prompt_tokens, expected_prompt.len());
        let expected_text = tokenizer(name).decode(&answer, true).unwrap();
        assert_eq!(reply.text, expected_text, "{name}: greedy answer");
    }
}

fn tokenizer(name: &str) -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_file(fixture(name).join("model/tokenizer.json")).unwrap()
}

#[test]
fn qwen3_chat_matches_transformers_prompt_and_greedy_answer() {
    check_reference("qwen3");
}

#[test]
fn gemma3_looks_at_an_image_as_its_processor_prepares_it() {
    check_reference("gemma3_vlm_chat");
}

#[test]
fn streamed_pieces_make_up_the_answer() {
    let model = load("qwen3");
    let mut streamed = String::new();
    let reply = model
        .chat(&ask("A red fox."), &[], &greedy(24), &mut |piece| {
            streamed.push_str(piece);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert!(!reply.text.is_empty());
    assert_eq!(streamed, reply.text);
    assert_eq!(reply.generated_tokens, 24);
    assert_eq!(reply.finish, FinishReason::MaxTokens);
}

#[test]
fn a_stop_string_ends_the_answer_before_it_and_is_never_streamed() {
    let model = load("qwen3");
    let full = model
        .chat(&ask("A red fox."), &[], &greedy(24), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap()
        .text;
    let chars: Vec<char> = full.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = full.find(&stop).unwrap();
    let mut streamed = String::new();
    let options = ChatOptions {
        stop: vec![stop.clone()],
        ..greedy(24)
    };
    let reply = model
        .chat(&ask("A red fox."), &[], &options, &mut |piece| {
            streamed.push_str(piece);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(reply.text, full[..cut]);
    assert_eq!(streamed, reply.text);
    assert_eq!(reply.finish, FinishReason::StopString);
}

#[test]
fn the_caller_stops_the_answer_between_tokens() {
    let model = load("qwen3");
    let mut pieces = 0;
    let reply = model
        .chat(&ask("A red fox."), &[], &greedy(24), &mut |_| {
            pieces += 1;
            ControlFlow::Break(())
        })
        .unwrap();
    assert_eq!(reply.finish, FinishReason::Stopped);
    assert_eq!(pieces, 1);
    assert!(reply.generated_tokens < 24);
}

#[test]
fn a_seed_gives_the_same_sampled_answer_every_time() {
    let model = load("qwen3");
    let sampled = |seed| {
        let options = ChatOptions {
            max_tokens: Some(16),
            temperature: Some(1.0),
            seed,
            ..ChatOptions::default()
        };
        model
            .chat(&ask("A harbour."), &[], &options, &mut |_| {
                ControlFlow::Continue(())
            })
            .unwrap()
            .text
    };
    assert_eq!(sampled(7), sampled(7));
    assert_ne!(sampled(7), sampled(8));
}

#[test]
fn json_schema_answers_always_parse_and_validate() {
    let model = load("qwen3");
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 12},
            "shots": {
                "type": "array",
                "minItems": 1,
                "maxItems": 2,
                "items": {
                    "type": "object",
                    "properties": {
                        "camera": {"enum": ["pan", "tilt", "static"]},
                        "seconds": {"type": "integer", "minimum": 1, "maximum": 9}
                    },
                    "required": ["camera", "seconds"],
                    "additionalProperties": false
                }
            }
        },
        "required": ["title", "shots"],
        "additionalProperties": false
    });
    for seed in 0..6 {
        let options = ChatOptions {
            max_tokens: Some(200),
            temperature: Some(1.0),
            seed,
            json_schema: Some(schema.clone()),
            ..ChatOptions::default()
        };
        let reply = model
            .chat(&ask("Plan two shots."), &[], &options, &mut |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(&reply.text)
            .unwrap_or_else(|err| panic!("seed {seed}: {err}: {}", reply.text));
        assert!(value["title"].as_str().unwrap().chars().count() <= 12);
        let shots = value["shots"].as_array().unwrap();
        assert!((1..=2).contains(&shots.len()), "{value}");
        for shot in shots {
            assert!(["pan", "tilt", "static"].contains(&shot["camera"].as_str().unwrap()));
            assert!((1..=9).contains(&shot["seconds"].as_i64().unwrap()));
            assert_eq!(shot.as_object().unwrap().len(), 2);
        }
        assert_eq!(reply.finish, FinishReason::EndOfTurn);
    }
}

#[test]
fn a_json_answer_that_runs_out_of_tokens_is_an_error_not_broken_json() {
    let model = load("qwen3");
    let options = ChatOptions {
        max_tokens: Some(3),
        json_schema: Some(serde_json::json!({
            "type": "object",
            "properties": {"prompt": {"type": "string", "minLength": 40}},
            "required": ["prompt"]
        })),
        ..greedy(3)
    };
    let err = model
        .chat(&ask("Write."), &[], &options, &mut |_| {
            ControlFlow::Continue(())
        })
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("before the JSON was complete"), "{err}");
}

#[test]
fn images_for_a_model_that_cannot_see_or_of_another_count_are_refused() {
    let qwen = load("qwen3");
    let picture = image::RgbImage::new(8, 8);
    let err = qwen
        .chat(
            &ask("What is this?"),
            std::slice::from_ref(&picture),
            &greedy(2),
            &mut |_| ControlFlow::Continue(()),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("does not take images"), "{err}");
    let gemma = load("gemma3_vlm_chat");
    let err = gemma
        .chat(&ask("What is this?"), &[picture], &greedy(2), &mut |_| {
            ControlFlow::Continue(())
        })
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("shows 0 images but 1 were given"), "{err}");
}
