//! Google Gemini's generateContent, translated from and to OpenAI's chat completions.
//!
//! System and developer messages become `systemInstruction`; assistant turns are `model`
//! turns; text parts are `text`, data URLs `inlineData` and other image URLs `fileData`;
//! tool calls are `functionCall` parts and tool messages `functionResponse` parts (named
//! after the call they answer); JSON mode is `responseMimeType: application/json`.
//! Streams use `:streamGenerateContent?alt=sse`.

use serde_json::{json, Map, Value};

use super::{
    chunk, content_text, data_url, finish_reason, upstream_error, Target, Tokens, Translated,
};

pub fn request(
    t: &Target<'_>,
    body: &Map<String, Value>,
    stream: bool,
) -> (String, Vec<(&'static str, String)>, Value) {
    let mut system = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    // Tool call id → function name, for the tool messages that answer them.
    let mut call_names: Vec<(Value, Value)> = Vec::new();
    for m in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match m.get("role").and_then(Value::as_str).unwrap_or("user") {
            "system" | "developer" => {
                system.push(json!({"text": content_text(m.get("content"))}));
            }
            "assistant" => {
                let mut parts = parts(m.get("content"));
                for call in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let name = call
                        .pointer("/function/name")
                        .cloned()
                        .unwrap_or(Value::Null);
                    call_names.push((call.get("id").cloned().unwrap_or(Value::Null), name.clone()));
                    let args = call
                        .pointer("/function/arguments")
                        .and_then(Value::as_str)
                        .and_then(|a| serde_json::from_str::<Value>(a).ok())
                        .unwrap_or_else(|| json!({}));
                    parts.push(json!({"functionCall": {"name": name, "args": args}}));
                }
                push(&mut contents, "model", parts);
            }
            "tool" => {
                let id = m.get("tool_call_id").cloned().unwrap_or(Value::Null);
                let name = call_names
                    .iter()
                    .find(|(i, _)| *i == id)
                    .map(|(_, n)| n.clone())
                    .unwrap_or(Value::Null);
                let text = content_text(m.get("content"));
                let response = serde_json::from_str::<Value>(&text)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({"result": text}));
                push(
                    &mut contents,
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                );
            }
            _ => push(&mut contents, "user", parts(m.get("content"))),
        }
    }
    let mut config = Map::new();
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("seed", "seed"),
    ] {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            config.insert(to.into(), v.clone());
        }
    }
    if let Some(n) = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .filter(|v| !v.is_null())
    {
        config.insert("maxOutputTokens".into(), n.clone());
    }
    match body.get("stop") {
        Some(Value::String(s)) => {
            config.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            config.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(format) = body.get("response_format") {
        match format.get("type").and_then(Value::as_str) {
            Some("json_object") => {
                config.insert("responseMimeType".into(), json!("application/json"));
            }
            Some("json_schema") => {
                config.insert("responseMimeType".into(), json!("application/json"));
                if let Some(schema) = format.pointer("/json_schema/schema") {
                    config.insert("responseJsonSchema".into(), schema.clone());
                }
            }
            _ => {}
        }
    }
    let mut out = Map::new();
    out.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({"parts": system}));
    }
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        let decls: Vec<Value> = tools
            .iter()
            .filter_map(|t| t.get("function"))
            .map(|f| {
                let mut d = json!({"name": f.get("name").cloned().unwrap_or(Value::Null)});
                if let Some(desc) = f.get("description") {
                    d["description"] = desc.clone();
                }
                if let Some(p) = f.get("parameters") {
                    d["parameters"] = p.clone();
                }
                d
            })
            .collect();
        out.insert("tools".into(), json!([{"functionDeclarations": decls}]));
        let mode = match body.get("tool_choice") {
            Some(Value::String(s)) if s == "required" => Some(json!({"mode": "ANY"})),
            Some(Value::String(s)) if s == "none" => Some(json!({"mode": "NONE"})),
            Some(Value::Object(c)) => c
                .get("function")
                .and_then(|f| f.get("name"))
                .map(|n| json!({"mode": "ANY", "allowedFunctionNames": [n]})),
            _ => None,
        };
        if let Some(m) = mode {
            out.insert("toolConfig".into(), json!({"functionCallingConfig": m}));
        }
    }
    let base = t.base_url.trim_end_matches('/');
    let url = if stream {
        format!("{base}/models/{}:streamGenerateContent?alt=sse", t.model)
    } else {
        format!("{base}/models/{}:generateContent", t.model)
    };
    (
        url,
        vec![("x-goog-api-key", t.secret.to_owned())],
        Value::Object(out),
    )
}

fn push(contents: &mut Vec<Value>, role: &str, parts: Vec<Value>) {
    if let Some(last) = contents.last_mut() {
        if last.get("role").and_then(Value::as_str) == Some(role) {
            if let Some(Value::Array(p)) = last.get_mut("parts") {
                p.extend(parts);
                return;
            }
        }
    }
    contents.push(json!({"role": role, "parts": parts}));
}

fn parts(content: Option<&Value>) -> Vec<Value> {
    match content {
        Some(Value::String(s)) if !s.is_empty() => vec![json!({"text": s})],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => Some(json!({"text": p.get("text")?})),
                Some("image_url") => {
                    let url = p.pointer("/image_url/url").and_then(Value::as_str)?;
                    Some(match data_url(url) {
                        Some((mime, data)) => {
                            json!({"inlineData": {"mimeType": mime, "data": data}})
                        }
                        None => json!({"fileData": {"fileUri": url, "mimeType": guess_mime(url)}}),
                    })
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn guess_mime(url: &str) -> &'static str {
    let u = url.to_ascii_lowercase();
    if u.ends_with(".png") {
        "image/png"
    } else if u.ends_with(".webp") {
        "image/webp"
    } else if u.ends_with(".gif") {
        "image/gif"
    } else {
        "image/jpeg"
    }
}

fn tokens(u: &Value) -> Tokens {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let reasoning = n("thoughtsTokenCount");
    Tokens {
        prompt: n("promptTokenCount"),
        completion: n("candidatesTokenCount") + reasoning,
        cached: n("cachedContentTokenCount"),
        reasoning,
    }
}

/// The text and tool calls of a candidate's parts.
fn candidate_parts(c: &Value, call_base: usize, id: &str) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for p in c
        .pointer("/content/parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if p.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(f) = p.get("functionCall") {
            calls.push(json!({
                "index": call_base + calls.len(),
                "id": format!("call_{id}_{}", call_base + calls.len()),
                "type": "function",
                "function": {
                    "name": f.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": f.get("args").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                },
            }));
        }
    }
    (text, calls)
}

pub fn response(model: &str, id: &str, created: i64, v: Value) -> Result<(Value, Tokens), String> {
    let candidates = v
        .get("candidates")
        .and_then(Value::as_array)
        .ok_or("the provider's answer has no candidates")?;
    let choices: Vec<Value> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (text, mut calls) = candidate_parts(c, 0, id);
            for call in &mut calls {
                if let Some(o) = call.as_object_mut() {
                    o.remove("index");
                }
            }
            let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
            let mut reason = finish_reason(c.get("finishReason").and_then(Value::as_str).unwrap_or("STOP"));
            if !calls.is_empty() {
                message["tool_calls"] = Value::Array(calls);
                reason = "tool_calls";
            }
            json!({"index": i, "message": message, "finish_reason": reason})
        })
        .collect();
    let usage = v.get("usageMetadata").map(tokens).unwrap_or_default();
    Ok((
        json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": choices,
            "usage": usage.to_openai(),
        }),
        usage,
    ))
}

/// Gemini streams whole `GenerateContentResponse` objects, each with the newest text.
#[derive(Debug)]
pub struct StreamState {
    model: String,
    id: String,
    created: i64,
    started: bool,
    calls: usize,
}

impl StreamState {
    pub fn new(model: &str, id: &str, created: i64) -> Self {
        Self {
            model: model.to_owned(),
            id: id.to_owned(),
            created,
            started: false,
            calls: 0,
        }
    }

    pub fn event(&mut self, data: &str) -> Translated {
        let mut out = Translated::default();
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return out;
        };
        if v.get("error").is_some() {
            out.error = Some(upstream_error(500, data.as_bytes()));
            return out;
        }
        if let Some(c) = v.get("candidates").and_then(|c| c.get(0)) {
            let (text, calls) = candidate_parts(c, self.calls, &self.id);
            let mut delta = Map::new();
            if !self.started {
                delta.insert("role".into(), json!("assistant"));
                self.started = true;
            }
            if !text.is_empty() {
                delta.insert("content".into(), Value::String(text));
            }
            self.calls += calls.len();
            let had_calls = !calls.is_empty();
            if had_calls {
                delta.insert("tool_calls".into(), Value::Array(calls));
            }
            if !delta.is_empty() {
                out.push(chunk(
                    &self.id,
                    self.created,
                    &self.model,
                    Value::Object(delta),
                    None,
                ));
            }
            if let Some(r) = c.get("finishReason").and_then(Value::as_str) {
                let reason = if self.calls > 0 {
                    "tool_calls"
                } else {
                    finish_reason(r)
                };
                out.push(chunk(
                    &self.id,
                    self.created,
                    &self.model,
                    json!({}),
                    Some(reason),
                ));
                out.done = true;
            }
        }
        if let Some(u) = v.get("usageMetadata") {
            out.usage = Some(tokens(u));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_translate() {
        let t = Target {
            kind: tally_core::credential::ProviderKind::Google,
            base_url: "http://127.0.0.1:1/v1beta",
            secret: "g",
            model: "gemini-2.5-flash",
        };
        let body = json!({
            "messages": [{"role": "developer", "content": "terse"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c", "content": "{\"ok\":true}"}],
            "max_tokens": 50, "response_format": {"type": "json_object"}
        });
        let (url, _, out) = request(&t, body.as_object().unwrap(), true);
        assert_eq!(
            url,
            "http://127.0.0.1:1/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(out["systemInstruction"]["parts"][0]["text"], "terse");
        assert_eq!(out["contents"][1]["role"], "model");
        assert_eq!(
            out["contents"][2]["parts"][0]["functionResponse"]["name"],
            "f"
        );
        assert_eq!(out["generationConfig"]["maxOutputTokens"], 50);
        assert_eq!(
            out["generationConfig"]["responseMimeType"],
            "application/json"
        );

        let (v, u) = response(
            "gemini-2.5-flash",
            "x",
            1,
            json!({"candidates": [{"content": {"parts": [{"text": "yo"}]}, "finishReason": "MAX_TOKENS"}],
                "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2, "thoughtsTokenCount": 3}}),
        )
        .unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "yo");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!((u.prompt, u.completion, u.reasoning), (4, 5, 3));
    }
}
