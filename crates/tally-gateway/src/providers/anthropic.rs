//! Anthropic's Messages API, translated from and to OpenAI's chat completions.
//!
//! System and developer messages become `system`; text and image parts become content
//! blocks (image URLs as `url` sources, data URLs as `base64`); assistant tool calls become
//! `tool_use` blocks and tool messages `tool_result` blocks; `max_tokens` is required by
//! Anthropic, so the request's limit (or the model's largest answer) is sent. JSON mode
//! has no Anthropic parameter: it is asked for in the system prompt.

use serde_json::{json, Map, Value};

use super::{
    chunk, content_text, data_url, finish_reason, upstream_error, Target, Tokens, Translated,
};

pub const API_VERSION: &str = "2023-06-01";
/// Sent as `max_tokens` when the request gives none and the model's limit is unknown.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

pub fn request(
    t: &Target<'_>,
    body: &Map<String, Value>,
    stream: bool,
) -> (String, Vec<(&'static str, String)>, Value) {
    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for m in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        match role {
            "system" | "developer" => system.push(content_text(m.get("content"))),
            "tool" => push(
                &mut messages,
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": m.get("tool_call_id").cloned().unwrap_or(Value::Null),
                    "content": content_text(m.get("content")),
                })],
            ),
            "assistant" => {
                let mut blocks = blocks(m.get("content"));
                for call in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let args = call
                        .pointer("/function/arguments")
                        .and_then(Value::as_str)
                        .and_then(|a| serde_json::from_str::<Value>(a).ok())
                        .unwrap_or_else(|| json!({}));
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call.get("id").cloned().unwrap_or(Value::Null),
                        "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
                        "input": args,
                    }));
                }
                push(&mut messages, "assistant", blocks);
            }
            _ => push(&mut messages, "user", blocks(m.get("content"))),
        }
    }
    if body
        .get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t == "json_object" || t == "json_schema")
    {
        let mut ask = "Answer with one JSON object and nothing else.".to_owned();
        if let Some(schema) = body
            .get("response_format")
            .and_then(|f| f.pointer("/json_schema/schema"))
        {
            ask.push_str(&format!(" It must match this JSON schema: {schema}"));
        }
        system.push(ask);
    }
    let max_tokens = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let mut o = Map::new();
    o.insert("model".into(), Value::String(t.model.to_owned()));
    o.insert("messages".into(), Value::Array(messages));
    o.insert("max_tokens".into(), Value::from(max_tokens));
    if !system.is_empty() {
        o.insert("system".into(), Value::String(system.join("\n\n")));
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "top_p")] {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            o.insert(to.into(), v.clone());
        }
    }
    match body.get("stop") {
        Some(Value::String(s)) => {
            o.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            o.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .filter_map(|t| t.get("function"))
            .map(|f| {
                json!({
                    "name": f.get("name").cloned().unwrap_or(Value::Null),
                    "description": f.get("description").cloned().unwrap_or(json!("")),
                    "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"})),
                })
            })
            .collect();
        o.insert("tools".into(), Value::Array(tools));
        let choice = match body.get("tool_choice") {
            Some(Value::String(s)) if s == "required" => Some(json!({"type": "any"})),
            Some(Value::String(s)) if s == "none" => Some(json!({"type": "none"})),
            Some(Value::Object(c)) => c
                .get("function")
                .and_then(|f| f.get("name"))
                .map(|n| json!({"type": "tool", "name": n})),
            _ => None,
        };
        if let Some(c) = choice {
            o.insert("tool_choice".into(), c);
        }
    }
    if let Some(user) = body.get("user").and_then(Value::as_str) {
        o.insert("metadata".into(), json!({"user_id": user}));
    }
    if stream {
        o.insert("stream".into(), Value::Bool(true));
    }
    (
        format!("{}/messages", t.base_url.trim_end_matches('/')),
        vec![
            ("x-api-key", t.secret.to_owned()),
            ("anthropic-version", API_VERSION.to_owned()),
        ],
        Value::Object(o),
    )
}

/// Anthropic wants user and assistant turns to alternate: consecutive turns of the same
/// role (a tool result after a user message, say) are merged.
fn push(messages: &mut Vec<Value>, role: &str, blocks: Vec<Value>) {
    if let Some(last) = messages.last_mut() {
        if last.get("role").and_then(Value::as_str) == Some(role) {
            if let Some(Value::Array(content)) = last.get_mut("content") {
                content.extend(blocks);
                return;
            }
        }
    }
    messages.push(json!({"role": role, "content": blocks}));
}

fn blocks(content: Option<&Value>) -> Vec<Value> {
    match content {
        Some(Value::String(s)) if !s.is_empty() => vec![json!({"type": "text", "text": s})],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => Some(json!({"type": "text", "text": p.get("text")?})),
                Some("image_url") => {
                    let url = p.pointer("/image_url/url").and_then(Value::as_str)?;
                    Some(match data_url(url) {
                        Some((mime, data)) => json!({"type": "image", "source":
                            {"type": "base64", "media_type": mime, "data": data}}),
                        None => json!({"type": "image", "source": {"type": "url", "url": url}}),
                    })
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn tokens(u: &Value) -> Tokens {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("cache_read_input_tokens");
    Tokens {
        prompt: n("input_tokens") + cached + n("cache_creation_input_tokens"),
        completion: n("output_tokens"),
        cached,
        reasoning: 0,
    }
}

pub fn response(model: &str, id: &str, created: i64, v: Value) -> Result<(Value, Tokens), String> {
    let content = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or("the provider's answer has no content")?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in content {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => calls.push(json!({
                "id": b.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": b.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": b.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                },
            })),
            _ => {}
        }
    }
    let usage = v.get("usage").map(tokens).unwrap_or_default();
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let reason = v
        .get("stop_reason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    Ok((
        json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(reason)}],
            "usage": usage.to_openai(),
        }),
        usage,
    ))
}

/// Anthropic's stream events (`message_start`, `content_block_start`,
/// `content_block_delta`, `message_delta`, `message_stop`, `error`) as OpenAI chunks.
#[derive(Debug)]
pub struct StreamState {
    model: String,
    id: String,
    created: i64,
    usage: Tokens,
    /// Content block index → tool call index, for tool-use blocks.
    tools: Vec<(u64, usize)>,
}

impl StreamState {
    pub fn new(model: &str, id: &str, created: i64) -> Self {
        Self {
            model: model.to_owned(),
            id: id.to_owned(),
            created,
            usage: Tokens::default(),
            tools: Vec::new(),
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        chunk(&self.id, self.created, &self.model, delta, finish)
    }

    pub fn event(&mut self, data: &str) -> Translated {
        let mut out = Translated::default();
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return out;
        };
        match v.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                if let Some(u) = v.pointer("/message/usage") {
                    self.usage = tokens(u);
                }
                out.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
            }
            Some("content_block_start") => {
                let block = v.get("content_block");
                if block.and_then(|b| b.get("type")).and_then(Value::as_str) == Some("tool_use") {
                    let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let call = self.tools.len();
                    self.tools.push((index, call));
                    out.push(self.chunk(
                        json!({"tool_calls": [{
                            "index": call,
                            "id": block.and_then(|b| b.get("id")).cloned().unwrap_or(Value::Null),
                            "type": "function",
                            "function": {"name": block.and_then(|b| b.get("name")).cloned().unwrap_or(Value::Null), "arguments": ""},
                        }]}),
                        None,
                    ));
                }
            }
            Some("content_block_delta") => {
                let d = v.get("delta");
                match d.and_then(|d| d.get("type")).and_then(Value::as_str) {
                    Some("text_delta") => {
                        let text = d.and_then(|d| d.get("text")).cloned().unwrap_or(json!(""));
                        out.push(self.chunk(json!({"content": text}), None));
                    }
                    Some("input_json_delta") => {
                        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                        if let Some((_, call)) = self.tools.iter().find(|(i, _)| *i == index) {
                            let part = d
                                .and_then(|d| d.get("partial_json"))
                                .cloned()
                                .unwrap_or(json!(""));
                            out.push(self.chunk(
                                json!({"tool_calls": [{"index": call, "function": {"arguments": part}}]}),
                                None,
                            ));
                        }
                    }
                    _ => {}
                }
            }
            Some("message_delta") => {
                if let Some(n) = v.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    self.usage.completion = n;
                }
                if let Some(reason) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    out.push(self.chunk(json!({}), Some(finish_reason(reason))));
                }
            }
            Some("message_stop") => {
                out.usage = Some(self.usage);
                out.done = true;
            }
            Some("error") => {
                out.error = Some(upstream_error(500, data.as_bytes()));
            }
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target<'static> {
        Target {
            kind: tally_core::credential::ProviderKind::Anthropic,
            base_url: "http://127.0.0.1:1/v1",
            secret: "k",
            model: "claude-sonnet-4",
        }
    }

    #[test]
    fn requests_translate_roles_tools_and_images() {
        let body = json!({
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "look", "arguments": "{\"q\":1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "a cat"}
            ],
            "tools": [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "stop": "END",
            "temperature": 0.5
        });
        let (url, headers, out) = request(&target(), body.as_object().unwrap(), false);
        assert_eq!(url, "http://127.0.0.1:1/v1/messages");
        assert!(headers.iter().any(|(h, v)| *h == "x-api-key" && v == "k"));
        assert_eq!(out["system"], "be brief");
        assert_eq!(out["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(out["messages"][0]["content"][1]["source"]["type"], "base64");
        assert_eq!(out["messages"][1]["content"][0]["type"], "tool_use");
        assert_eq!(out["messages"][1]["content"][0]["input"]["q"], 1);
        assert_eq!(out["messages"][2]["content"][0]["type"], "tool_result");
        assert_eq!(out["tools"][0]["input_schema"]["type"], "object");
        assert_eq!(out["tool_choice"]["type"], "any");
        assert_eq!(out["stop_sequences"][0], "END");
        assert_eq!(out["temperature"], 0.5);
    }

    #[test]
    fn answers_and_streams_translate_back() {
        let (v, usage) = response(
            "claude-sonnet-4",
            "id1",
            1,
            json!({"content": [{"type": "text", "text": "hi"}, {"type": "tool_use", "id": "t",
                "name": "f", "input": {"a": 1}}], "stop_reason": "tool_use",
                "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 2}}),
        )
        .unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!((usage.prompt, usage.completion, usage.cached), (12, 5, 2));

        let mut s = StreamState::new("claude-sonnet-4", "id1", 1);
        let events = [
            r#"{"type":"message_start","message":{"usage":{"input_tokens":7,"output_tokens":1}}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":3}}"#,
            r#"{"type":"message_stop"}"#,
        ];
        let out: Vec<Translated> = events.iter().map(|e| s.event(e)).collect();
        assert_eq!(out[1].chunks[0]["choices"][0]["delta"]["content"], "Hel");
        assert_eq!(out[2].chunks[0]["choices"][0]["finish_reason"], "stop");
        assert!(out[3].done);
        assert_eq!(out[3].usage.map(|u| (u.prompt, u.completion)), Some((7, 3)));
    }
}
