//! Counting a request's prompt tokens before it is sent, to price it against budgets.
//!
//! OpenAI models are counted with their own encodings (o200k for the GPT-4o/4.1 and
//! o-series, cl100k for GPT-4, GPT-3.5 and the embedding models), plus OpenAI's documented
//! framing of chat messages (3 tokens a message, 3 to prime the answer). Other providers'
//! tokenizers are not public: their prompts are counted with o200k and scaled (Anthropic
//! ×1.2, Gemini ×1.0), an approximation that errs towards holding a little more budget. An
//! image counts 765 tokens (a 512×512 tile at high detail), tools their JSON's tokens.

use std::sync::OnceLock;

use serde_json::{Map, Value};
use tiktoken::CoreBpe as Tokenizer;

/// Tokens OpenAI counts for an image part at high detail (one 512×512 tile).
pub const IMAGE_TOKENS: u64 = 765;
const PER_MESSAGE: u64 = 3;
const REPLY_PRIMING: u64 = 3;

// Both encodings are compiled in (the crate's `vocab-*` features).
#[allow(clippy::expect_used)]
fn encoding(name: &str) -> &'static Tokenizer {
    tiktoken::get_encoding(name).expect("the encoding is compiled in")
}

fn o200k() -> &'static Tokenizer {
    static T: OnceLock<&'static Tokenizer> = OnceLock::new();
    T.get_or_init(|| encoding("o200k_base"))
}

fn cl100k() -> &'static Tokenizer {
    static T: OnceLock<&'static Tokenizer> = OnceLock::new();
    T.get_or_init(|| encoding("cl100k_base"))
}

/// Loads o200k (the encoding of every current OpenAI model, and the one other providers'
/// prompts are counted with), so the first call does not pay it. cl100k (GPT-4, GPT-3.5,
/// the embedding models) loads when first needed: each encoding holds ~20 MiB.
pub fn warm_up() {
    o200k();
}

/// The tokenizer counting `provider`/`model`, and the factor its counts are scaled by.
fn counter(provider: &str, model: &str) -> (&'static Tokenizer, f64) {
    let m = model.to_ascii_lowercase();
    match provider {
        "openai" if m.starts_with("gpt-4o") || m.starts_with("gpt-4.1") || m.starts_with('o') => {
            (o200k(), 1.0)
        }
        "openai" => (cl100k(), 1.0),
        "anthropic" => (o200k(), 1.2),
        _ => (o200k(), 1.0),
    }
}

/// Tokens of one string for `provider`/`model`.
pub fn count_text(provider: &str, model: &str, text: &str) -> u64 {
    let (t, scale) = counter(provider, model);
    scaled(t.count(text) as u64, scale)
}

fn scaled(n: u64, scale: f64) -> u64 {
    if scale == 1.0 {
        n
    } else {
        (n as f64 * scale).ceil() as u64
    }
}

/// Prompt tokens of an OpenAI-format chat request.
pub fn count_chat(provider: &str, model: &str, body: &Map<String, Value>) -> u64 {
    let (t, scale) = counter(provider, model);
    let mut n: u64 = REPLY_PRIMING;
    for m in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        n += PER_MESSAGE;
        match m.get("content") {
            Some(Value::String(s)) => n += t.count(s) as u64,
            Some(Value::Array(parts)) => {
                for p in parts {
                    match p.get("type").and_then(Value::as_str) {
                        Some("image_url") => n += IMAGE_TOKENS,
                        _ => {
                            if let Some(s) = p.get("text").and_then(Value::as_str) {
                                n += t.count(s) as u64;
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        if let Some(calls) = m.get("tool_calls") {
            n += t.count(&calls.to_string()) as u64;
        }
        if let Some(name) = m.get("name").and_then(Value::as_str) {
            n += 1 + t.count(name) as u64;
        }
    }
    if let Some(tools) = body.get("tools") {
        n += t.count(&tools.to_string()) as u64;
    }
    scaled(n, scale)
}

/// An upper bound of [`count_chat`] without tokenizing: the bytes of the same texts. Every
/// token of OpenAI's encodings stands for at least one byte, so a text never has more
/// tokens than bytes (and the other providers' counts are scaled the same way). Checks
/// that pass with the bound pass with the count, so the gateway counts only when a check
/// is close (`chat::Gateway::prepare`).
pub fn bound_chat(provider: &str, model: &str, body: &Map<String, Value>) -> u64 {
    let (_, scale) = counter(provider, model);
    let len = |s: &str| s.len() as u64;
    let mut n: u64 = REPLY_PRIMING;
    for m in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        n += PER_MESSAGE;
        match m.get("content") {
            Some(Value::String(s)) => n += len(s),
            Some(Value::Array(parts)) => {
                for p in parts {
                    match p.get("type").and_then(Value::as_str) {
                        Some("image_url") => n += IMAGE_TOKENS,
                        _ => {
                            if let Some(s) = p.get("text").and_then(Value::as_str) {
                                n += len(s);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        if let Some(calls) = m.get("tool_calls") {
            n += len(&calls.to_string());
        }
        if let Some(name) = m.get("name").and_then(Value::as_str) {
            n += 1 + len(name);
        }
    }
    if let Some(tools) = body.get("tools") {
        n += len(&tools.to_string());
    }
    scaled(n, scale)
}

/// Input tokens of an embeddings request (`input`: a string or an array of strings).
pub fn count_embedding_input(provider: &str, model: &str, input: &Value) -> u64 {
    match input {
        Value::String(s) => count_text(provider, model, s),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => count_text(provider, model, s),
                // Token id arrays are already tokens.
                Value::Array(ids) => ids.len() as u64,
                Value::Number(_) => 1,
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// Tokens of a streamed answer's text, when the provider reported no usage.
pub fn count_answer(provider: &str, model: &str, text: &str) -> u64 {
    count_text(provider, model, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_match_openais_encodings() {
        // tiktoken o200k_base: "Hello, world!" is 4 tokens.
        assert_eq!(count_text("openai", "gpt-4o", "Hello, world!"), 4);
        assert_eq!(count_text("openai", "gpt-4", "Hello, world!"), 4);
        // Anthropic is counted with o200k and scaled up.
        assert_eq!(
            count_text("anthropic", "claude-sonnet-4", "Hello, world!"),
            5
        );
    }

    /// The bound is never below the count, for every provider's counting, on prose, code,
    /// tables, non-Latin scripts, tools and names.
    #[test]
    fn the_byte_bound_is_never_below_the_count() {
        let texts = [
            include_str!("../../../README.md"),
            include_str!("../../../ARCHITECTURE.md"),
            include_str!("../../../docs/seed-coverage.md"),
            "Les données sont stockées à Zürich — 東京とパリのユーザー 👩‍💻 1234567890 \t\n\n",
            "a",
            "",
        ];
        for text in texts {
            for (provider, model) in [
                ("openai", "gpt-4o"),
                ("openai", "gpt-4"),
                ("anthropic", "claude-sonnet-4"),
                ("google", "gemini-2.5-pro"),
            ] {
                let body = serde_json::json!({
                    "messages": [
                        {"role": "system", "content": "Be brief."},
                        {"role": "user", "name": "ana", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
                        {"role": "assistant", "content": text, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"q\":1}"}}]},
                    ],
                    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
                });
                let body = body.as_object().unwrap();
                let (count, bound) = (
                    count_chat(provider, model, body),
                    bound_chat(provider, model, body),
                );
                assert!(count <= bound, "{provider}/{model}: {count} > {bound}");
            }
        }
        // A long English prompt: about four bytes a token, so the bound is about 4× the count.
        let body = serde_json::json!({"messages": [{"role": "user", "content": texts[0]}]});
        let body = body.as_object().unwrap();
        let ratio = bound_chat("openai", "gpt-4o", body) as f64
            / count_chat("openai", "gpt-4o", body) as f64;
        assert!((2.5..6.0).contains(&ratio), "{ratio}");
    }

    #[test]
    fn counts_agree_with_tiktoken_on_mixed_text() {
        // Prose, numbers, code, CJK, emoji, runs of white space, a special token's text:
        // the counts tiktoken's encodings give (checked against a second implementation,
        // bpe-openai, when the tokenizer was changed).
        let s = "Résumé: the café's Q3 revenue grew 12.5% (€1,234,567) — see `fn main() { println!(\"hi\"); }`.\n\n日本語のテキストも数えます。 Emoji 🚀🔥 and    spaces\t\ttabs.\r\n<|endoftext|> is text here.";
        assert_eq!(count_text("openai", "gpt-4o", s), 67);
        assert_eq!(count_text("openai", "gpt-4", s), 75);
    }

    #[test]
    fn chat_framing_images_and_tools_count() {
        let body = json!({"messages": [
            {"role": "user", "content": "Hello, world!"},
            {"role": "user", "content": [{"type": "text", "text": "Hello, world!"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}
        ]});
        let n = count_chat("openai", "gpt-4o", body.as_object().unwrap());
        assert_eq!(n, REPLY_PRIMING + 2 * PER_MESSAGE + 4 + 4 + IMAGE_TOKENS);
        let with_tools =
            json!({"messages": [], "tools": [{"type": "function", "function": {"name": "f"}}]});
        assert!(count_chat("openai", "gpt-4o", with_tools.as_object().unwrap()) > REPLY_PRIMING);
    }

    #[test]
    fn embedding_inputs_count_strings_and_token_arrays() {
        let v = json!(["Hello, world!", [1, 2, 3]]);
        assert_eq!(
            count_embedding_input("openai", "text-embedding-3-small", &v),
            4 + 3
        );
    }
}
