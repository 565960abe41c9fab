//! The providers' wire formats, each translated to and from OpenAI's chat completions:
//! the request sent upstream, the answer, the streaming chunks, the usage and the errors.
//! OpenAI and OpenAI-compatible servers take the request nearly as it is; Anthropic's
//! Messages API and Gemini's generateContent are translated both ways.

pub mod anthropic;
pub mod google;
pub mod openai;

use serde_json::{json, Map, Value};
use tally_core::credential::ProviderKind;

/// What one call used, as the provider reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    /// Of the prompt, read from the provider's cache.
    pub cached: u64,
    /// Of the completion, spent thinking.
    pub reasoning: u64,
}

impl Tokens {
    /// OpenAI's `usage` object.
    pub fn to_openai(self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "prompt_tokens_details": {"cached_tokens": self.cached},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning},
        })
    }

    /// From OpenAI's `usage` object.
    pub fn from_openai(u: &Value) -> Option<Self> {
        let n = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
        u.as_object()?;
        Some(Self {
            prompt: n(u.get("prompt_tokens")),
            completion: n(u.get("completion_tokens")),
            cached: n(u.pointer("/prompt_tokens_details/cached_tokens")),
            reasoning: n(u.pointer("/completion_tokens_details/reasoning_tokens")),
        })
    }
}

/// Where and how to call one deployment of a model.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub kind: ProviderKind,
    /// Without a trailing slash.
    pub base_url: &'a str,
    pub secret: &'a str,
    /// The model name the provider knows.
    pub model: &'a str,
}

/// A provider's refusal, in OpenAI's error terms.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamError {
    pub status: u16,
    pub message: String,
    /// OpenAI's error `type`.
    pub kind: String,
    pub code: Option<String>,
    pub param: Option<String>,
}

/// Reads a provider's error body (any of the three formats) at `status`.
pub fn upstream_error(status: u16, body: &[u8]) -> UpstreamError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    // OpenAI: {"error":{"message","type","param","code"}}; Anthropic: {"type":"error",
    // "error":{"type","message"}}; Gemini: {"error":{"code","message","status"}}.
    let e = v
        .get("error")
        .or_else(|| v.as_array()?.first()?.get("error"));
    let text = |k: &str| {
        e.and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let message = text("message").unwrap_or_else(|| {
        let s = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
        if s.trim().is_empty() {
            format!("the provider answered {status}")
        } else {
            s
        }
    });
    let kind = text("type")
        .or_else(|| text("status").map(|s| s.to_ascii_lowercase()))
        .unwrap_or_else(|| default_kind(status).to_owned());
    let code = e.and_then(|e| e.get("code")).and_then(|c| match c {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    UpstreamError {
        status,
        message,
        kind: normalise_kind(&kind, status),
        code,
        param: text("param"),
    }
}

fn default_kind(status: u16) -> &'static str {
    match status {
        400 | 404 | 409 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        _ => "api_error",
    }
}

/// Anthropic's and Gemini's error types, as OpenAI's.
fn normalise_kind(kind: &str, status: u16) -> String {
    match kind {
        "invalid_request_error"
        | "invalid_argument"
        | "failed_precondition"
        | "not_found_error"
        | "not_found"
        | "request_too_large" => "invalid_request_error".into(),
        "authentication_error" | "unauthenticated" => "authentication_error".into(),
        "permission_error" | "permission_denied" => "permission_error".into(),
        "rate_limit_error" | "resource_exhausted" => "rate_limit_error".into(),
        "insufficient_quota" => "insufficient_quota".into(),
        "overloaded_error" | "unavailable" | "internal" | "api_error" | "server_error" => {
            "api_error".into()
        }
        _ => default_kind(status).into(),
    }
}

/// The request to send upstream for an OpenAI-format chat `body` (already configured for
/// its model), as `(url, headers, JSON body)`.
pub fn chat_request(
    t: &Target<'_>,
    body: &Map<String, Value>,
    stream: bool,
) -> (String, Vec<(&'static str, String)>, Vec<u8>) {
    let written = |(url, headers, v): (String, Vec<(&'static str, String)>, Value)| {
        // A tree of JSON values always serialises.
        (url, headers, serde_json::to_vec(&v).unwrap_or_default())
    };
    match t.kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => openai::request(t, body, stream),
        ProviderKind::Anthropic => written(anthropic::request(t, body, stream)),
        ProviderKind::Google => written(google::request(t, body, stream)),
    }
}

/// A provider's non-streaming answer as OpenAI's, with its usage.
pub fn chat_response(
    kind: ProviderKind,
    model: &str,
    id: &str,
    created: i64,
    v: Value,
) -> Result<(Value, Tokens), String> {
    match kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => openai::response(v),
        ProviderKind::Anthropic => anthropic::response(model, id, created, v),
        ProviderKind::Google => google::response(model, id, created, v),
    }
}

/// Turns a provider's stream events into OpenAI chunks.
pub enum Translator {
    Openai(openai::StreamState),
    Anthropic(anthropic::StreamState),
    Google(google::StreamState),
}

/// What one upstream event gave.
#[derive(Debug, Default)]
pub struct Translated {
    /// OpenAI `chat.completion.chunk` objects to send on (usage chunks excluded).
    pub chunks: Vec<Value>,
    /// Chunks already written as JSON (OpenAI's own, passed on), sent after `chunks`.
    pub raw: Vec<Vec<u8>>,
    /// The text and tool-call arguments of all these chunks, for counting when no usage
    /// comes.
    pub text: String,
    /// Usage the provider reported, when this event carried it.
    pub usage: Option<Tokens>,
    /// The provider reported an error inside the stream.
    pub error: Option<UpstreamError>,
    /// The provider said the stream is over.
    pub done: bool,
}

impl Translated {
    /// Adds a chunk to send, its text and tool-call arguments to `text`.
    pub fn push(&mut self, chunk: Value) {
        fn items(v: Option<&Value>) -> impl Iterator<Item = &Value> {
            v.and_then(Value::as_array).into_iter().flatten()
        }
        for choice in items(chunk.get("choices")) {
            if let Some(s) = choice.pointer("/delta/content").and_then(Value::as_str) {
                self.text.push_str(s);
            }
            for call in items(choice.pointer("/delta/tool_calls")) {
                if let Some(a) = call.pointer("/function/arguments").and_then(Value::as_str) {
                    self.text.push_str(a);
                }
            }
        }
        self.chunks.push(chunk);
    }
}

impl Translator {
    pub fn new(kind: ProviderKind, model: &str, id: &str, created: i64) -> Self {
        match kind {
            ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
                Self::Openai(openai::StreamState::new(model))
            }
            ProviderKind::Anthropic => {
                Self::Anthropic(anthropic::StreamState::new(model, id, created))
            }
            ProviderKind::Google => Self::Google(google::StreamState::new(model, id, created)),
        }
    }

    /// One SSE event's `data`.
    pub fn event(&mut self, data: &str) -> Translated {
        match self {
            Self::Openai(s) => s.event(data),
            Self::Anthropic(s) => s.event(data),
            Self::Google(s) => s.event(data),
        }
    }
}

/// OpenAI's `finish_reason` for a provider's stop reason.
pub fn finish_reason(reason: &str) -> &'static str {
    match reason {
        "max_tokens" | "MAX_TOKENS" | "length" => "length",
        "tool_use" | "tool_calls" => "tool_calls",
        "SAFETY" | "RECITATION" | "PROHIBITED_CONTENT" | "BLOCKLIST" | "SPII"
        | "content_filter" | "refusal" => "content_filter",
        _ => "stop",
    }
}

/// An OpenAI chunk with one choice delta.
pub fn chunk(id: &str, created: i64, model: &str, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })
}

/// The text of an OpenAI message's content: a string, or its text parts joined.
pub fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// `data:image/png;base64,AAAA` → `("image/png", "AAAA")`.
pub fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (mime, data) = rest.split_once(";base64,")?;
    Some((mime, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_of_each_format_read_as_openai_errors() {
        let o = upstream_error(
            400,
            br#"{"error":{"message":"bad","type":"invalid_request_error","param":"messages","code":"x"}}"#,
        );
        assert_eq!(
            (o.kind.as_str(), o.param.as_deref(), o.code.as_deref()),
            ("invalid_request_error", Some("messages"), Some("x"))
        );
        let a = upstream_error(
            529,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(
            (a.kind.as_str(), a.message.as_str()),
            ("api_error", "Overloaded")
        );
        let g = upstream_error(
            429,
            br#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}"#,
        );
        assert_eq!(
            (g.kind.as_str(), g.code.as_deref()),
            ("rate_limit_error", Some("429"))
        );
        let raw = upstream_error(502, b"<html>bad gateway</html>");
        assert_eq!(raw.kind, "api_error");
        assert!(raw.message.contains("bad gateway"));
    }
}
