//! Chat templates against transformers: every conversation of
//! tests/fixtures/chat_templates/expected.json (made by make_chat_template_fixtures.py with the
//! real Qwen3 and Gemma 3 templates) must render byte for byte as `apply_chat_template` did,
//! and bad templates or inputs must fail saying which file and what went wrong.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use videosdgx_engine::text::chat_template::{ChatMessage, ChatTemplate};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/chat_templates")
}

#[derive(Deserialize)]
struct Expected {
    cases: Vec<Case>,
    errors: Vec<ErrorCase>,
}

#[derive(Deserialize)]
struct Case {
    model: String,
    title: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    extra: serde_json::Map<String, serde_json::Value>,
    rendered: String,
}

#[derive(Deserialize)]
struct ErrorCase {
    model: String,
    messages: Vec<ChatMessage>,
    message: String,
}

fn expected() -> Expected {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn template(model: &str) -> ChatTemplate {
    ChatTemplate::from_dir(&fixtures().join(format!("{model}-tokenizer")))
        .unwrap()
        .unwrap_or_else(|| panic!("{model}-tokenizer has no chat template"))
}

fn no_extra() -> serde_json::Map<String, serde_json::Value> {
    serde_json::Map::new()
}

#[test]
fn renders_as_transformers_byte_for_byte() {
    let expected = expected();
    assert!(expected.cases.len() >= 10);
    let (qwen3, gemma3) = (template("qwen3"), template("gemma3"));
    let mut mismatches = Vec::new();
    for case in &expected.cases {
        let template = if case.model == "qwen3" {
            &qwen3
        } else {
            &gemma3
        };
        let rendered = template
            .render(&case.messages, case.add_generation_prompt, &case.extra)
            .unwrap_or_else(|err| panic!("{} / {}: {err:#}", case.model, case.title));
        if rendered != case.rendered {
            mismatches.push(format!(
                "{} / {}:\n  expected {:?}\n  rendered {:?}",
                case.model, case.title, case.rendered, rendered
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn the_fixture_templates_are_the_committed_ones() {
    for model in ["qwen3", "gemma3"] {
        let saved = std::fs::read_to_string(
            fixtures().join(format!("{model}-tokenizer/chat_template.jinja")),
        );
        let source = std::fs::read_to_string(fixtures().join(format!("{model}.jinja")));
        assert_eq!(
            saved.unwrap(),
            source.unwrap(),
            "{model}: run make_chat_template_fixtures.py"
        );
    }
}

#[test]
fn raise_exception_gives_the_templates_message() {
    for case in expected().errors {
        let template = template(&case.model);
        let err = template
            .render(&case.messages, true, &no_extra())
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(&case.message), "{text}");
        assert!(text.contains("chat_template.jinja"), "{text}");
    }
}

fn model_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[test]
fn a_malformed_template_names_its_file_and_line() {
    let dir = model_dir(&[(
        "chat_template.jinja",
        "{% for m in messages %}\n{{ m.content }\n",
    )]);
    let err = ChatTemplate::from_dir(dir.path())
        .err()
        .expect("a syntax error");
    let text = format!("{err:#}");
    assert!(text.contains("chat_template.jinja"), "{text}");
    assert!(text.contains("syntax error"), "{text}");
    assert!(text.contains(":2"), "the line is named: {text}");
}

#[test]
fn tokenizer_config_templates_and_special_tokens() {
    // A list of named templates: `default` is used; AddedToken objects give their content.
    let config = r#"{
        "bos_token": {"__type": "AddedToken", "content": "<s>", "special": true},
        "eos_token": "</s>", "unk_token": null, "image_token": "<img>",
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}{{ image_token }}{{ unk_token is defined }}"}
        ]}"#;
    let dir = model_dir(&[("tokenizer_config.json", config)]);
    let template = ChatTemplate::from_dir(dir.path()).unwrap().unwrap();
    assert!(
        template
            .origin()
            .ends_with("tokenizer_config.json (chat_template)")
    );
    let rendered = template
        .render(&[ChatMessage::text("user", "hi")], false, &no_extra())
        .unwrap();
    // Booleans print as Python prints them.
    assert_eq!(rendered, "<s>[user] hi</s><img>False");

    let dir = model_dir(&[(
        "tokenizer_config.json",
        r#"{"chat_template": [{"name": "a", "template": "x"}, {"name": "b", "template": "y"}]}"#,
    )]);
    let err = format!("{:#}", ChatTemplate::from_dir(dir.path()).err().unwrap());
    assert!(
        err.contains("tokenizer_config.json") && err.contains("default"),
        "{err}"
    );

    let dir = model_dir(&[("tokenizer_config.json", r#"{"eos_token": "</s>"}"#)]);
    assert!(ChatTemplate::from_dir(dir.path()).unwrap().is_none());

    let dir = model_dir(&[("tokenizer_config.json", "{not json")]);
    let err = format!("{:#}", ChatTemplate::from_dir(dir.path()).err().unwrap());
    assert!(err.contains("tokenizer_config.json"), "{err}");
}

#[test]
fn chat_template_jinja_wins_over_tokenizer_config() {
    let dir = model_dir(&[
        ("chat_template.jinja", "jinja {{ eos_token }}\n"),
        (
            "tokenizer_config.json",
            r#"{"eos_token": "</s>", "chat_template": "config"}"#,
        ),
    ]);
    let template = ChatTemplate::from_dir(dir.path()).unwrap().unwrap();
    // Like Jinja2, one trailing newline of the template is dropped.
    let rendered = template
        .render(&[ChatMessage::text("user", "x")], false, &no_extra())
        .unwrap();
    assert_eq!(rendered, "jinja </s>");
}

#[test]
fn tojson_writes_what_pythons_json_dumps_writes() {
    let source = concat!(
        "{{ messages[0].content | tojson }}|{{ data | tojson }}|{{ data | tojson(indent=2) }}|",
        "{{ data | tojson(separators=(',', ':'), sort_keys=true) }}|{{ floats | tojson }}",
    );
    let template = ChatTemplate::new(source.into(), "inline", Default::default()).unwrap();
    let extra = serde_json::json!({
        "data": {"b": [1, "<é>", null, true], "a": {}},
        "floats": [1.0, 0.5, 1e-5, 1e16, 123456789.25, -0.0, 2.5e-300],
    });
    let rendered = template
        .render(
            &[ChatMessage::text("user", "tab\t\"quote\" \u{1} 🎬")],
            false,
            extra.as_object().unwrap(),
        )
        .unwrap();
    // What Python printed for the same values: keys in insertion order unless sorted.
    let expected = concat!(
        r#""tab\t\"quote\" \u0001 🎬"|{"b": [1, "<é>", null, true], "a": {}}|"#,
        "{\n  \"b\": [\n    1,\n    \"<é>\",\n    null,\n    true\n  ],\n  \"a\": {}\n}|",
        r#"{"a":{},"b":[1,"<é>",null,true]}|[1.0, 0.5, 1e-05, 1e+16, 123456789.25, -0.0, 2.5e-300]"#,
    );
    assert_eq!(rendered, expected);
}

#[test]
fn python_string_methods_strip_pythons_whitespace() {
    let source = "{{ messages[0].content.strip() }}|{{ messages[0].content.lstrip() }}|{{ messages[0].content.rstrip(' ') }}";
    let template = ChatTemplate::new(source.into(), "inline", Default::default()).unwrap();
    let rendered = template
        .render(
            &[ChatMessage::text("user", "\u{1c} abc \u{1c} ")],
            false,
            &no_extra(),
        )
        .unwrap();
    // What Python's str methods give (U+001C is whitespace to them, not to Rust).
    assert_eq!(rendered, "abc|abc \u{1c} |\u{1c} abc \u{1c}");
}

#[test]
fn bad_inputs_are_refused() {
    let template = template("qwen3");
    let err = template.render(&[], true, &no_extra()).unwrap_err();
    assert!(err.to_string().contains("empty conversation"), "{err}");
    let extra = serde_json::json!({"messages": []});
    let err = template
        .render(
            &[ChatMessage::text("user", "x")],
            true,
            extra.as_object().unwrap(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("`messages`"), "{err}");
    // Content parts of an unknown type are a JSON error, not a silent drop.
    let parsed: Result<ChatMessage, _> =
        serde_json::from_str(r#"{"role": "user", "content": [{"type": "audio"}]}"#);
    assert!(parsed.is_err());
}
