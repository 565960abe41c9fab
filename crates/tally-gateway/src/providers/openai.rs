//! OpenAI and OpenAI-compatible servers (vLLM, Ollama, Azure-style deployments): the
//! request goes as the client sent it (configured for its model), with the usage asked
//! for on streams.

use serde_json::{Map, Value};
use tally_core::credential::ProviderKind;

use super::{upstream_error, Target, Tokens, Translated};

/// `base/chat/completions`, keeping a query the base URL carries (`?api-version=…`).
pub fn endpoint(base_url: &str, path: &str) -> String {
    match base_url.split_once('?') {
        Some((base, query)) => format!("{}/{path}?{query}", base.trim_end_matches('/')),
        None => format!("{}/{path}", base_url.trim_end_matches('/')),
    }
}

pub fn request(
    t: &Target<'_>,
    body: &Map<String, Value>,
    stream: bool,
) -> (String, Vec<(&'static str, String)>, Value) {
    let mut b = body.clone();
    b.insert("model".into(), Value::String(t.model.to_owned()));
    if stream {
        b.insert("stream".into(), Value::Bool(true));
        // Usage is always asked for: the gateway records it. The client gets the usage
        // chunk only if it asked.
        b.insert(
            "stream_options".into(),
            serde_json::json!({"include_usage": true}),
        );
    } else {
        b.remove("stream");
        b.remove("stream_options");
    }
    let mut headers = vec![("authorization", format!("Bearer {}", t.secret))];
    if t.kind == ProviderKind::OpenaiCompatible {
        // Servers that predate max_completion_tokens take max_tokens.
        if !b.contains_key("max_tokens") {
            if let Some(v) = b.remove("max_completion_tokens") {
                b.insert("max_tokens".into(), v);
            }
        }
        // Azure-style deployments read the key from `api-key`.
        headers.push(("api-key", t.secret.to_owned()));
    }
    (
        endpoint(t.base_url, "chat/completions"),
        headers,
        Value::Object(b),
    )
}

pub fn response(v: Value) -> Result<(Value, Tokens), String> {
    if !v.get("choices").is_some_and(Value::is_array) {
        return Err("the provider's answer has no choices".into());
    }
    let tokens = v
        .get("usage")
        .and_then(Tokens::from_openai)
        .unwrap_or_default();
    Ok((v, tokens))
}

#[derive(Debug, Default)]
pub struct StreamState;

impl StreamState {
    pub fn event(&mut self, data: &str) -> Translated {
        let mut out = Translated::default();
        if data.trim() == "[DONE]" {
            out.done = true;
            return out;
        }
        let Ok(mut v) = serde_json::from_str::<Value>(data) else {
            return out;
        };
        if v.get("error").is_some() {
            out.error = Some(upstream_error(500, data.as_bytes()));
            return out;
        }
        if let Some(obj) = v.as_object_mut() {
            if let Some(u) = obj.remove("usage").filter(|u| !u.is_null()) {
                out.usage = Tokens::from_openai(&u);
            }
        }
        if v.get("choices")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty())
        {
            out.chunks.push(v);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_a_query() {
        assert_eq!(
            endpoint("http://h/v1/", "chat/completions"),
            "http://h/v1/chat/completions"
        );
        assert_eq!(
            endpoint(
                "https://x/openai/deployments/d?api-version=2024-10-21",
                "chat/completions"
            ),
            "https://x/openai/deployments/d/chat/completions?api-version=2024-10-21"
        );
    }

    #[test]
    fn usage_chunks_are_kept_apart() {
        let mut s = StreamState;
        let t = s.event(r#"{"id":"1","choices":[{"index":0,"delta":{"content":"hi"}}]}"#);
        assert_eq!(t.chunks.len(), 1);
        let t =
            s.event(r#"{"id":"1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#);
        assert!(t.chunks.is_empty());
        assert_eq!(t.usage.map(|u| (u.prompt, u.completion)), Some((3, 1)));
        assert!(s.event("[DONE]").done);
    }
}
