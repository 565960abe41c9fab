//! OpenAI and OpenAI-compatible servers (vLLM, Ollama, Azure-style deployments): the
//! request goes as the client sent it (configured for its model), with the usage asked
//! for on streams.

use std::borrow::Cow;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
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

/// The request for `body` as JSON: the client's members written straight from its parsed
/// tree (no copy of it is made), with the gateway's changes laid over them.
pub fn request(
    t: &Target<'_>,
    body: &Map<String, Value>,
    stream: bool,
) -> (String, Vec<(&'static str, String)>, Vec<u8>) {
    let mut set: Vec<(&str, Value)> = vec![("model", Value::String(t.model.to_owned()))];
    let mut drop: Vec<&str> = Vec::new();
    if stream {
        set.push(("stream", Value::Bool(true)));
        // Usage is always asked for: the gateway records it. The client gets the usage
        // chunk only if it asked.
        set.push(("stream_options", serde_json::json!({"include_usage": true})));
    } else {
        drop.extend(["stream", "stream_options"]);
    }
    let mut headers = vec![("authorization", format!("Bearer {}", t.secret))];
    if t.kind == ProviderKind::OpenaiCompatible {
        // Servers that predate max_completion_tokens take max_tokens.
        if !body.contains_key("max_tokens") {
            if let Some(v) = body.get("max_completion_tokens") {
                drop.push("max_completion_tokens");
                set.push(("max_tokens", v.clone()));
            }
        }
        // Azure-style deployments read the key from `api-key`.
        headers.push(("api-key", t.secret.to_owned()));
    }
    let overlay = Overlay {
        base: body,
        set: &set,
        drop: &drop,
    };
    (
        endpoint(t.base_url, "chat/completions"),
        headers,
        // A tree of JSON values always serialises.
        serde_json::to_vec(&overlay).unwrap_or_default(),
    )
}

/// `base` with the members of `set` replacing or added to its own and those of `drop`
/// left out, as one JSON object.
struct Overlay<'a> {
    base: &'a Map<String, Value>,
    set: &'a [(&'a str, Value)],
    drop: &'a [&'a str],
}

impl Serialize for Overlay<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (k, v) in self.base {
            let k = k.as_str();
            if !self.drop.contains(&k) && !self.set.iter().any(|(n, _)| *n == k) {
                map.serialize_entry(k, v)?;
            }
        }
        for (k, v) in self.set {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
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

/// An OpenAI stream's chunks, passed on with the model named as the client knows it and
/// the usage taken out (the gateway sends its own usage chunk, when the client asked).
///
/// A chunk is read at its top level only: the other members are copied as the provider
/// wrote them, and only the choices' deltas are read, for the text to count when no usage
/// comes. A chunk this cannot read (a server's own shape) takes the general path: parsed
/// whole, renamed, written again.
#[derive(Debug, Default)]
pub struct StreamState {
    model: String,
}

/// A JSON object's members in their order, each value as the provider wrote it.
struct RawObject<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for RawObject<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Members<'a> {
            type Value = RawObject<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut members = Vec::with_capacity(8);
                while let Some(Key(k)) = map.next_key()? {
                    members.push((k, map.next_value::<&RawValue>()?));
                }
                Ok(RawObject(members))
            }
        }
        d.deserialize_map(Members(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

/// What a chunk's choices say that the gateway reads: the text and tool-call arguments.
#[derive(Deserialize)]
struct ChoiceView<'a> {
    #[serde(borrow, default)]
    delta: Option<DeltaView<'a>>,
}

#[derive(Deserialize)]
struct DeltaView<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallView<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallView<'a> {
    #[serde(borrow, default)]
    function: Option<FunctionView<'a>>,
}

#[derive(Deserialize)]
struct FunctionView<'a> {
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

impl StreamState {
    /// Chunks are passed on naming `model`.
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_owned(),
        }
    }

    pub fn event(&mut self, data: &str) -> Translated {
        let mut out = Translated::default();
        if data.trim() == "[DONE]" {
            out.done = true;
            return out;
        }
        if self.pass_on(data, &mut out).is_none() {
            self.general(data, &mut out);
        }
        out
    }

    /// The fast path: `None` when the chunk is not one it reads (nothing was written).
    fn pass_on(&self, data: &str, out: &mut Translated) -> Option<()> {
        let RawObject(members) = serde_json::from_str(data).ok()?;
        let mut choices = None;
        for (k, v) in &members {
            match k.as_ref() {
                // Errors and usage are rare: the general path has them.
                "error" => return None,
                "usage" if v.get() != "null" => return None,
                "choices" => choices = Some(*v),
                _ => {}
            }
        }
        let choices: Vec<ChoiceView<'_>> = serde_json::from_str(choices?.get()).ok()?;
        if choices.is_empty() {
            return Some(());
        }
        for delta in choices.iter().filter_map(|c| c.delta.as_ref()) {
            if let Some(c) = &delta.content {
                out.text.push_str(c);
            }
            for call in delta.tool_calls.iter().flatten() {
                if let Some(a) = call.function.as_ref().and_then(|f| f.arguments.as_ref()) {
                    out.text.push_str(a);
                }
            }
        }
        let mut json = Vec::with_capacity(data.len() + self.model.len() + 8);
        json.push(b'{');
        let mut named = false;
        for (k, v) in &members {
            if k == "usage" {
                continue;
            }
            if json.len() > 1 {
                json.push(b',');
            }
            push_json_str(&mut json, k);
            json.push(b':');
            if k == "model" {
                push_json_str(&mut json, &self.model);
                named = true;
            } else {
                json.extend_from_slice(v.get().as_bytes());
            }
        }
        if !named {
            json.extend_from_slice(b",\"model\":");
            push_json_str(&mut json, &self.model);
        }
        json.push(b'}');
        out.raw.push(json);
        Some(())
    }

    /// Any other chunk: parsed whole, the usage taken out, the model renamed.
    fn general(&self, data: &str, out: &mut Translated) {
        let Ok(mut v) = serde_json::from_str::<Value>(data) else {
            return;
        };
        if v.get("error").is_some() {
            out.error = Some(upstream_error(500, data.as_bytes()));
            return;
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
            v["model"] = Value::String(self.model.clone());
            out.push(v);
        }
    }
}

/// `s` as a JSON string.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(out, s);
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

    /// The request goes as the client wrote it, with the gateway's changes only.
    #[test]
    fn requests_keep_the_clients_members_with_the_gateways_changes() {
        let body: Map<String, Value> = serde_json::from_str(
            r#"{"model":"openai/gpt-4o","messages":[{"role":"user","content":"hi \"x\""}],"max_completion_tokens":50,"stream":true,"stream_options":{"include_usage":false},"tools":[{"type":"function","function":{"name":"f","parameters":{}}}]}"#,
        )
        .unwrap();
        let t = |kind| Target {
            kind,
            base_url: "http://h/v1",
            secret: "sk-1",
            model: "gpt-4o",
        };
        let (url, headers, bytes) = request(&t(ProviderKind::Openai), &body, false);
        assert_eq!(url, "http://h/v1/chat/completions");
        assert_eq!(headers, [("authorization", "Bearer sk-1".to_owned())]);
        let mut want = body.clone();
        want.insert("model".into(), "gpt-4o".into());
        want.remove("stream");
        want.remove("stream_options");
        assert_eq!(
            serde_json::from_slice::<Map<String, Value>>(&bytes).unwrap(),
            want
        );
        let (_, headers, bytes) = request(&t(ProviderKind::OpenaiCompatible), &body, true);
        assert_eq!(headers[1], ("api-key", "sk-1".to_owned()));
        let sent: Map<String, Value> = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(sent["max_tokens"], 50);
        assert!(!sent.contains_key("max_completion_tokens"));
        assert_eq!(sent["stream"], true);
        assert_eq!(
            sent["stream_options"],
            serde_json::json!({"include_usage": true})
        );
        assert_eq!(
            (sent["messages"].clone(), sent["tools"].clone()),
            (body["messages"].clone(), body["tools"].clone())
        );
        assert_eq!(sent.len(), body.len(), "nothing else is added or lost");
    }

    #[test]
    fn usage_chunks_are_kept_apart() {
        let mut s = StreamState::new("gpt-4o");
        let t = s.event(r#"{"id":"1","choices":[{"index":0,"delta":{"content":"hi"}}]}"#);
        assert_eq!((t.raw.len(), t.text.as_str()), (1, "hi"));
        let t =
            s.event(r#"{"id":"1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#);
        assert!(t.chunks.is_empty() && t.raw.is_empty());
        assert_eq!(t.usage.map(|u| (u.prompt, u.completion)), Some((3, 1)));
        // Usage in a chunk with content: the content goes on, the usage does not.
        let t = s.event(
            r#"{"id":"1","choices":[{"index":0,"delta":{"content":"x"}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
        );
        assert_eq!(t.usage.map(|u| u.completion), Some(2));
        assert_eq!(t.chunks.len(), 1);
        assert!(t.chunks[0].get("usage").is_none());
        assert_eq!(t.chunks[0]["model"], "gpt-4o");
        assert!(s.event("[DONE]").done);
    }

    /// A chunk is passed on as the provider wrote it but for the model's name (and an
    /// empty usage), its text read for counting, escapes and tool calls included.
    #[test]
    fn chunks_pass_on_with_the_clients_model_name() {
        let mut s = StreamState::new("my/gpt-4o");
        let data = r#"{"id":"c1","object":"chat.completion.chunk","created":7,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp","choices":[{"index":0,"delta":{"content":"a \"quoted\" \u00e9 line\n"},"logprobs":null,"finish_reason":null}],"usage":null}"#;
        let t = s.event(data);
        assert!(t.chunks.is_empty() && t.error.is_none() && t.usage.is_none());
        let out = std::str::from_utf8(&t.raw[0]).unwrap();
        assert_eq!(
            out,
            r#"{"id":"c1","object":"chat.completion.chunk","created":7,"model":"my/gpt-4o","system_fingerprint":"fp","choices":[{"index":0,"delta":{"content":"a \"quoted\" \u00e9 line\n"},"logprobs":null,"finish_reason":null}]}"#
        );
        assert_eq!(t.text, "a \"quoted\" é line\n");
        let t = s.event(
            r#"{"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}}]}"#,
        );
        assert_eq!(t.text, r#"{"city":"#);
        let v: Value = serde_json::from_slice(&t.raw[0]).unwrap();
        assert_eq!(v["model"], "my/gpt-4o", "a chunk without a model gets one");
        // A shape the fast path does not read still goes on, renamed.
        let t = s.event(r#"{"id":"c1","choices":[{"index":0,"delta":{"content":[{"type":"text","text":"hi"}]}}]}"#);
        assert_eq!((t.raw.len(), t.chunks.len()), (0, 1));
        assert_eq!(t.chunks[0]["model"], "my/gpt-4o");
        // An error inside the stream is one.
        let t = s.event(r#"{"error":{"message":"overloaded","type":"server_error"}}"#);
        assert_eq!(t.error.map(|e| e.message), Some("overloaded".into()));
        // Not JSON: nothing.
        let t = s.event("{not json");
        assert!(t.raw.is_empty() && t.chunks.is_empty() && t.error.is_none());
    }
}
