//! Chat templates: turns a conversation into the prompt text exactly as transformers 5's
//! `tokenizer.apply_chat_template(messages, tokenize=False, ...)` renders it, byte for byte, so
//! that a model sees the prompt it was trained on. The template is the model's own Jinja text,
//! read from where transformers reads it; the Jinja environment reproduces transformers' one
//! (block trimming, its `tojson`, `raise_exception`, `strftime_now`, the special tokens as
//! variables). It never tokenizes and never alters what the messages say.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

/// One turn of a conversation, as the studio sends it (JSON) and as the template sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// "system", "user", "assistant" or "tool"; templates decide what each means.
    pub role: String,
    pub content: MessageContent,
    /// Any other field a template may read (`reasoning_content`, `tool_calls`, `name`, ...).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ChatMessage {
    /// A message whose content is plain text.
    pub fn text(role: impl Into<String>, text: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: MessageContent::Text(text.into()),
            extra: serde_json::Map::new(),
        }
    }
}

/// A message's content: a string, or a list of parts for multimodal templates (Gemma 3's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a multimodal message, as `{"type": "text", "text": ...}` or `{"type": "image"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ContentPart {
    Text {
        text: String,
    },
    /// Where an image goes; the template writes the model's image marker there, and the
    /// caller feeds the pixels to the vision tower separately.
    Image,
}

/// A model's chat template, compiled, with the special tokens its tokenizer config names.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template came from, for errors ("/models/x/chat_template.jinja").
    origin: String,
    /// `bos_token`, `eos_token`, ... as transformers' `special_tokens_map` gives them to templates.
    special_tokens: BTreeMap<String, String>,
}

/// The template's name inside the environment; errors print it with the line number.
const TEMPLATE_NAME: &str = "chat_template";

/// The names transformers passes itself; `extra` must not shadow them.
const RESERVED_VARIABLES: [&str; 2] = ["messages", "add_generation_prompt"];

/// transformers' `SPECIAL_TOKENS_ATTRIBUTES`: read from the tokenizer config whatever their name.
const NAMED_SPECIAL_TOKENS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

impl ChatTemplate {
    /// The chat template of the model in `dir`, looked up where transformers looks:
    /// `chat_template.jinja`, then `tokenizer_config.json`'s `chat_template` (a string, or a list
    /// of `{name, template}` of which `default` is used), then a processor's `chat_template.json`.
    /// `None` when the model has none (a base model). Special tokens come from
    /// `tokenizer_config.json` when it exists.
    pub fn from_dir(dir: &Path) -> Result<Option<ChatTemplate>> {
        let config_path = dir.join("tokenizer_config.json");
        let tokenizer_config = if config_path.is_file() {
            Some(read_json(&config_path)?)
        } else {
            None
        };
        let special_tokens = match &tokenizer_config {
            Some(config) => special_tokens(config),
            None => BTreeMap::new(),
        };

        let jinja_path = dir.join("chat_template.jinja");
        if jinja_path.is_file() {
            let source = std::fs::read_to_string(&jinja_path)
                .with_context(|| format!("reading {}", jinja_path.display()))?;
            let origin = jinja_path.display().to_string();
            return ChatTemplate::new(source, origin, special_tokens).map(Some);
        }
        if let Some(config) = &tokenizer_config
            && let Some(entry) = config.get("chat_template").filter(|v| !v.is_null())
        {
            let source = default_template(entry)
                .with_context(|| format!("reading chat_template in {}", config_path.display()))?;
            let origin = format!("{} (chat_template)", config_path.display());
            return ChatTemplate::new(source, origin, special_tokens).map(Some);
        }
        let processor_path = dir.join("chat_template.json");
        if processor_path.is_file() {
            let config = read_json(&processor_path)?;
            let Some(source) = config.get("chat_template").and_then(|v| v.as_str()) else {
                bail!(
                    "{} has no \"chat_template\" string",
                    processor_path.display()
                );
            };
            let origin = format!("{} (chat_template)", processor_path.display());
            return ChatTemplate::new(source.to_owned(), origin, special_tokens).map(Some);
        }
        Ok(None)
    }

    /// Compiles `source`; `origin` names it in errors, `special_tokens` become template variables.
    pub fn new(
        source: String,
        origin: impl Into<String>,
        special_tokens: BTreeMap<String, String>,
    ) -> Result<ChatTemplate> {
        let origin = origin.into();
        let mut env = Environment::new();
        // transformers' ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("the default delimiters are valid");
        env.set_syntax(syntax);
        // minijinja would escape by file extension; transformers never escapes.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(python_method);
        env.add_filter("tojson", tojson);
        env.add_filter("trim", python_trim);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|err| {
                anyhow::anyhow!("parsing the chat template {origin}: {}", describe(&err))
            })?;
        Ok(ChatTemplate {
            env,
            origin,
            special_tokens,
        })
    }

    /// Where the template was read from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The prompt for `messages`, as `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=..., **extra)`. `extra` carries the template's own keyword
    /// variables (Qwen3's `enable_thinking`, `tools`, `documents`); they override special tokens.
    /// Object keys keep their order (serde_json with `preserve_order`), as Python dicts do.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        if messages.is_empty() {
            bail!(
                "cannot apply the chat template {} to an empty conversation",
                self.origin
            );
        }
        if let Some(name) = RESERVED_VARIABLES
            .iter()
            .find(|name| extra.contains_key(**name))
        {
            bail!(
                "the chat template variable `{name}` is set by render itself, not by its extra variables"
            );
        }
        let mut context: Vec<(String, Value)> = self
            .special_tokens
            .iter()
            .map(|(name, token)| (name.clone(), Value::from(token.as_str())))
            .collect();
        // Passed explicitly by transformers, so defined (as none) unless given.
        context.push(("tools".into(), Value::from(())));
        context.push(("documents".into(), Value::from(())));
        context.extend(
            extra
                .iter()
                .map(|(name, value)| (name.clone(), json_value(value))),
        );
        let messages: Vec<Value> = messages.iter().map(template_message).collect();
        context.push(("messages".into(), Value::from(messages)));
        context.push((
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        ));
        // Later entries win, as in `{**special_tokens_map, **kwargs}`.
        let context: BTreeMap<String, Value> = context.into_iter().collect();
        let context = Value::from_pairs(context);

        let template = self.env.get_template(TEMPLATE_NAME)?;
        template.render(context).map_err(|err| {
            anyhow::anyhow!(
                "rendering the chat template {}: {}",
                self.origin,
                describe(&err)
            )
        })
    }
}

/// A message as transformers hands it to the template: keys whose value is null dropped, and
/// the reasoning under every name templates read it by (`reasoning_content`, `thinking`).
fn template_message(message: &ChatMessage) -> Value {
    let mut fields: Vec<(String, Value)> = vec![
        ("role".into(), Value::from(message.role.as_str())),
        ("content".into(), json_value(&message.content)),
    ];
    fields.extend(
        message
            .extra
            .iter()
            .filter(|(_, value)| !value.is_null())
            .map(|(name, value)| (name.clone(), json_value(value))),
    );
    let reasoning = ["reasoning_content", "thinking", "reasoning"]
        .iter()
        .find_map(|name| message.extra.get(*name).filter(|value| !value.is_null()));
    if let Some(reasoning) = reasoning {
        // `{"thinking": r, **message, "reasoning_content": r}`
        let reasoning = json_value(reasoning);
        if !message.extra.contains_key("thinking") {
            fields.insert(0, ("thinking".into(), reasoning.clone()));
        }
        match fields
            .iter_mut()
            .find(|(name, _)| name == "reasoning_content")
        {
            Some((_, value)) => *value = reasoning,
            None => fields.push(("reasoning_content".into(), reasoning)),
        }
    }
    Value::from_pairs(fields)
}

/// A JSON value (or anything serde can write) as a template value, maps in their order.
fn json_value(value: &impl Serialize) -> Value {
    Value::from(Serde(value))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The template transformers uses when given no name: the string, or the list entry `default`.
fn default_template(entry: &serde_json::Value) -> Result<String> {
    if let Some(source) = entry.as_str() {
        return Ok(source.to_owned());
    }
    let Some(entries) = entry.as_array() else {
        bail!("chat_template is neither a string nor a list of {{name, template}}");
    };
    let mut names = Vec::new();
    for item in entries {
        let (Some(name), Some(source)) = (
            item.get("name").and_then(|v| v.as_str()),
            item.get("template").and_then(|v| v.as_str()),
        ) else {
            bail!("a chat_template list entry lacks a string \"name\" or \"template\": {item}");
        };
        if name == "default" {
            return Ok(source.to_owned());
        }
        names.push(name);
    }
    bail!("several chat templates and none named \"default\" (names: {names:?})")
}

/// transformers' `special_tokens_map` for a tokenizer config: the named special tokens, the
/// model-specific ones (`extra_special_tokens` as a map, and any other `*_token` key), each a
/// string or an AddedToken object (`{"content": ...}`).
fn special_tokens(config: &serde_json::Value) -> BTreeMap<String, String> {
    fn token_text(value: &serde_json::Value) -> Option<&str> {
        value
            .as_str()
            .or_else(|| value.get("content").and_then(|c| c.as_str()))
    }
    let mut tokens = BTreeMap::new();
    let Some(config) = config.as_object() else {
        return tokens;
    };
    for (name, value) in config {
        let is_special = NAMED_SPECIAL_TOKENS.contains(&name.as_str()) || name.ends_with("_token");
        if let Some(text) = token_text(value).filter(|_| is_special) {
            tokens.insert(name.clone(), text.to_owned());
        }
    }
    if let Some(extra) = config
        .get("extra_special_tokens")
        .and_then(|v| v.as_object())
    {
        for (name, value) in extra {
            if let Some(text) = token_text(value) {
                tokens.insert(name.clone(), text.to_owned());
            }
        }
    }
    tokens
}

/// A minijinja error with its cause chain (an error inside a macro or include wraps another).
fn describe(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

/// Python's string and dict methods (`.startswith()`, `.split()`, `.items()`, ...) from
/// minijinja-contrib, with `.strip()`, `.lstrip()` and `.rstrip()` given no argument trimming
/// Python's whitespace, as `trim` does.
fn python_method(
    state: &mut minijinja::State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    if let (Some(text), []) = (value.as_str(), args) {
        match method {
            "strip" => return Ok(Value::from(text.trim_matches(is_python_space))),
            "lstrip" => return Ok(Value::from(text.trim_start_matches(is_python_space))),
            "rstrip" => return Ok(Value::from(text.trim_end_matches(is_python_space))),
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// `raise_exception(message)`: the template refusing its input (Gemma 3: roles must alternate).
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`: Python's `datetime.now().strftime(format)`, in local time.
fn strftime_now(format: String) -> Result<String, Error> {
    let mut text = String::new();
    write!(text, "{}", chrono::Local::now().format(&format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: unsupported format {format:?}"),
        )
    })?;
    Ok(text)
}

/// `trim`: Python's `str.strip()`, whose whitespace also takes in the ASCII separators
/// U+001C..U+001F that Rust's `char::is_whitespace` leaves.
fn python_trim(value: String, chars: Option<String>) -> String {
    match chars {
        Some(chars) => value.trim_matches(|c| chars.contains(c)).to_owned(),
        None => value.trim_matches(is_python_space).to_owned(),
    }
}

fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`, so no HTML escaping and Python's spacing.
fn tojson(value: Value, kwargs: Kwargs) -> Result<String, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;

    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(match v.kind() {
            ValueKind::Number => " ".repeat(usize::try_from(v.clone()).unwrap_or(0)),
            ValueKind::String => v.as_str().unwrap_or_default().to_owned(),
            _ => return Err(invalid("tojson: indent must be an integer or a string")),
        }),
    };
    let (item_separator, key_separator) = match separators.filter(|v| !v.is_none()) {
        Some(pair) => {
            let parts: Vec<Value> = pair.try_iter()?.collect();
            match parts.as_slice() {
                [item, key] if item.as_str().is_some() && key.as_str().is_some() => (
                    item.as_str().unwrap_or_default().to_owned(),
                    key.as_str().unwrap_or_default().to_owned(),
                ),
                _ => return Err(invalid("tojson: separators must be two strings")),
            }
        }
        // Python's defaults: no space before a newline when indenting.
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let dumper = JsonDumper {
        indent,
        item_separator,
        key_separator,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    dumper.dump(&value, 0, &mut out)?;
    Ok(out)
}

fn invalid(message: &str) -> Error {
    Error::new(ErrorKind::InvalidOperation, message.to_owned())
}

/// Python's `json.dumps` over minijinja values.
struct JsonDumper {
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl JsonDumper {
    fn dump(&self, value: &Value, depth: usize, out: &mut String) -> Result<(), Error> {
        match value.kind() {
            ValueKind::Undefined => {
                return Err(invalid("tojson: cannot serialize an undefined value"));
            }
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&python_number(value)),
            ValueKind::String => self.string(value.as_str().unwrap_or_default(), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.container('[', ']', items.len(), depth, out, |i, out| {
                    self.dump(&items[i], depth + 1, out)
                })?;
            }
            ValueKind::Map => {
                let mut entries: Vec<(String, Value)> = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    entries.push((python_key(&key)?, item));
                }
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.container('{', '}', entries.len(), depth, out, |i, out| {
                    self.string(&entries[i].0, out);
                    out.push_str(&self.key_separator);
                    self.dump(&entries[i].1, depth + 1, out)
                })?;
            }
            _ => {
                return Err(invalid(&format!(
                    "tojson: cannot serialize a {}",
                    value.kind()
                )));
            }
        }
        Ok(())
    }

    fn container(
        &self,
        open: char,
        close: char,
        len: usize,
        depth: usize,
        out: &mut String,
        mut item: impl FnMut(usize, &mut String) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(open);
        if len == 0 {
            out.push(close);
            return Ok(());
        }
        for i in 0..len {
            if i > 0 {
                out.push_str(&self.item_separator);
            }
            if let Some(indent) = &self.indent {
                out.push('\n');
                out.push_str(&indent.repeat(depth + 1));
            }
            item(i, out)?;
        }
        if let Some(indent) = &self.indent {
            out.push('\n');
            out.push_str(&indent.repeat(depth));
        }
        out.push(close);
        Ok(())
    }

    fn string(&self, text: &str, out: &mut String) {
        out.push('"');
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// A dict key as `json.dumps` writes it: strings as they are, numbers, booleans and None as text.
fn python_key(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
        ValueKind::Number => Ok(python_number(key)),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_owned()),
        ValueKind::None => Ok("null".to_owned()),
        kind => Err(invalid(&format!(
            "tojson: keys must be str, int, float, bool or None, not {kind}"
        ))),
    }
}

/// A number as Python's `json.dumps` writes it: integers exactly, floats as `float.__repr__`
/// (shortest round-trip digits, exponent form below 1e-4 and from 1e16) and NaN/Infinity bare.
fn python_number(value: &Value) -> String {
    if value.is_integer() {
        // Integers display exactly; only floats need Python's repr.
        return value.to_string();
    }
    python_float_repr(f64::try_from(value.clone()).unwrap_or(f64::NAN))
}

fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    // Rust's `{:e}` gives the shortest round-trip digits, as Python's repr does.
    let scientific = format!("{x:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if (-4..16).contains(&exponent) {
        let plain = format!("{x}");
        if plain.contains('.') {
            plain
        } else {
            format!("{plain}.0")
        }
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    }
}
