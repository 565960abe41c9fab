//! A local stand-in for LLM providers, for the gateway's tests and benchmark (DESIGN: real
//! parts, fake only what is outside our control). It speaks three wire formats on one
//! port: OpenAI at `/v1` (chat completions, embeddings, models), Anthropic's Messages API
//! at `/anthropic/v1`, and Gemini's generateContent at `/gemini/v1beta`, streaming
//! included. What it does is scripted: latency before the first byte, the answer's
//! length, failures to give next (any status, with `Retry-After`), truncated streams. It
//! keeps the requests it received so tests can check what the gateway sent.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use serde_json::{json, Value};

/// The API key the fake accepts unless told otherwise.
pub const KEY: &str = "fake-provider-key-0123456789";

/// A failure to give instead of an answer.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub message: String,
}

/// What the fake does.
#[derive(Debug, Clone)]
pub struct Script {
    /// Delay before the first byte of every answer.
    pub latency_ms: u64,
    /// Delay between stream chunks.
    pub chunk_delay_ms: u64,
    /// Words in every answer (fewer when the request's `max_tokens` or
    /// `max_completion_tokens` is lower: one word a token).
    pub answer_words: usize,
    /// Answers failures in order before answering normally again.
    pub failures: VecDeque<Failure>,
    /// Streams stop half-way, without their end or usage.
    pub truncate_streams: bool,
    /// OpenAI streams omit the usage chunk even when asked for it.
    pub omit_stream_usage: bool,
    pub key: String,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            chunk_delay_ms: 0,
            answer_words: 5,
            failures: VecDeque::new(),
            truncate_streams: false,
            omit_stream_usage: false,
            key: KEY.to_owned(),
        }
    }
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Default)]
struct Shared {
    script: Mutex<Script>,
    received: Mutex<VecDeque<Received>>,
}

/// A running fake; it stops when the runtime does.
#[derive(Clone)]
pub struct FakeProvider {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FakeProvider {
    /// Starts on a free loopback port.
    pub async fn start(script: Script) -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), script).await
    }

    pub async fn start_on(addr: SocketAddr, script: Script) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            script: Mutex::new(script),
            received: Mutex::default(),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(openai_chat))
            .route("/v1/embeddings", post(openai_embeddings))
            .route("/v1/models", get(openai_models))
            .route("/anthropic/v1/messages", post(anthropic_messages))
            .route("/anthropic/v1/models", get(anthropic_models))
            .route("/gemini/v1beta/models/{action}", post(gemini))
            .route("/gemini/v1beta/models", get(gemini_models))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared })
    }

    pub fn openai_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn anthropic_url(&self) -> String {
        format!("http://{}/anthropic/v1", self.addr)
    }

    pub fn gemini_url(&self) -> String {
        format!("http://{}/gemini/v1beta", self.addr)
    }

    /// Changes the script.
    pub fn script(&self, f: impl FnOnce(&mut Script)) {
        f(&mut lock(&self.shared.script));
    }

    /// Queues failures to answer next.
    pub fn fail_next(&self, failures: impl IntoIterator<Item = Failure>) {
        lock(&self.shared.script).failures.extend(failures);
    }

    /// The requests received so far.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.received).iter().cloned().collect()
    }

    pub fn clear_received(&self) {
        lock(&self.shared.received).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wire {
    Openai,
    Anthropic,
    Gemini,
}

/// Requests kept for [`FakeProvider::received`] (the latest ones), so a benchmark's
/// thousands of requests do not pile up.
pub const MAX_RECEIVED: usize = 1_000;

/// Sleeps `d` to within tens of microseconds. Tokio's timers fire on whole milliseconds,
/// which would round every answer's latency up to the next millisecond tick, and make a
/// gateway's sub-millisecond overhead look like 0 or 1 ms depending on where calls fall
/// between ticks. A blocking-pool thread's sleep does not round.
async fn precise_sleep(d: Duration) {
    if d.is_zero() {
        return;
    }
    let _ = tokio::task::spawn_blocking(move || std::thread::sleep(d)).await;
}

/// The script's answer to one request: fail (with the provider's error format) or go on.
async fn begin(
    s: &Shared,
    wire: Wire,
    path: &str,
    headers: &HeaderMap,
    body: &Value,
) -> Result<Script, Response> {
    {
        let mut received = lock(&s.received);
        if received.len() >= MAX_RECEIVED {
            received.pop_front();
        }
        received.push_back(Received {
            path: path.to_owned(),
            headers: headers.clone(),
            body: body.clone(),
        });
    }
    let (script, failure) = {
        let mut sc = lock(&s.script);
        let f = sc.failures.pop_front();
        (sc.clone(), f)
    };
    let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or("");
    let authorised = match wire {
        Wire::Openai => header("authorization") == format!("Bearer {}", script.key),
        Wire::Anthropic => header("x-api-key") == script.key,
        Wire::Gemini => header("x-goog-api-key") == script.key,
    };
    precise_sleep(Duration::from_millis(script.latency_ms)).await;
    if !authorised {
        return Err(error(wire, 401, None, "invalid api key"));
    }
    if let Some(f) = failure {
        return Err(error(wire, f.status, f.retry_after, &f.message));
    }
    Ok(script)
}

fn error(wire: Wire, status: u16, retry_after: Option<u64>, message: &str) -> Response {
    let kind = match status {
        401 => "authentication_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    };
    let body = match wire {
        Wire::Openai => {
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
        }
        Wire::Anthropic => {
            json!({"type": "error", "error": {"type": if status == 529 { "overloaded_error" } else { kind }, "message": message}})
        }
        Wire::Gemini => {
            json!({"error": {"code": status, "message": message, "status": match status {
            401 => "UNAUTHENTICATED", 429 => "RESOURCE_EXHAUSTED", 400 => "INVALID_ARGUMENT", _ => "UNAVAILABLE" }}})
        }
    };
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response();
    if let Some(s) = retry_after {
        if let Ok(v) = s.to_string().parse() {
            r.headers_mut().insert("retry-after", v);
        }
    }
    r
}

/// The words of the answer: `word0 word1 …`, as many as the script says, at most the
/// request's token limit.
fn answer_words(n: usize, body: &Value) -> Vec<String> {
    let limit = ["max_completion_tokens", "max_tokens", "maxOutputTokens"]
        .iter()
        .find_map(|k| {
            body.get(*k)
                .or_else(|| body.pointer(&format!("/generationConfig/{k}")))
                .and_then(Value::as_u64)
        })
        .map_or(n, |m| n.min(m as usize));
    (0..limit).map(|i| format!("word{i} ")).collect()
}

/// A rough prompt size: 1 token per 4 characters of message text.
fn prompt_tokens(messages: Option<&Value>) -> u64 {
    let text: usize = messages
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|m| match m.get("content").or_else(|| m.get("parts")) {
            Some(Value::String(s)) => s.len(),
            Some(v) => v.to_string().len(),
            None => 0,
        })
        .sum();
    (text as u64 / 4).max(1)
}

/// The first offered tool's name, when the answer should call it.
fn tool_to_call(body: &Value, wire: Wire) -> Option<String> {
    let tools = body.get("tools")?.as_array()?;
    let first = tools.first()?;
    let name = match wire {
        Wire::Openai => first.pointer("/function/name"),
        Wire::Anthropic => first.get("name"),
        Wire::Gemini => first.pointer("/functionDeclarations/0/name"),
    }?;
    let last_is_user = match wire {
        Wire::Gemini => body
            .get("contents")
            .and_then(Value::as_array)
            .and_then(|c| c.last())
            .and_then(|m| m.pointer("/parts/0/functionResponse"))
            .is_none(),
        _ => {
            body.get("messages")
                .and_then(Value::as_array)
                .and_then(|m| m.last())
                .and_then(|m| m.get("role"))
                .and_then(Value::as_str)
                == Some("user")
                && !body
                    .get("messages")
                    .and_then(Value::as_array)
                    .and_then(|m| m.last())
                    .and_then(|m| m.get("content"))
                    .is_some_and(|c| c.to_string().contains("tool_result"))
        }
    };
    last_is_user.then(|| name.as_str().unwrap_or("tool").to_owned())
}

fn sse_body(events: Vec<String>, delay_ms: u64) -> Response {
    let stream = futures_util::stream::unfold(events.into_iter(), move |mut it| async move {
        let next = it.next()?;
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(next)), it))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn truncate(mut events: Vec<String>, script: &Script) -> Vec<String> {
    if script.truncate_streams {
        let keep = (events.len() / 2).max(1);
        events.truncate(keep);
    }
    events
}

async fn openai_chat(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let script = match begin(&s, Wire::Openai, "/v1/chat/completions", &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("model")
        .to_owned();
    let prompt = prompt_tokens(body.get("messages"));
    let words = answer_words(script.answer_words, &body);
    let completion = words.len() as u64;
    let tool = tool_to_call(&body, Wire::Openai);
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion, "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0}});
    let id = "chatcmpl-fake";
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        let chunk = |delta: Value, finish: Value| {
            format!(
                "data: {}\n\n",
                json!({"id": id, "object": "chat.completion.chunk", "created": 1,
                "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            )
        };
        let mut events = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        match &tool {
            Some(name) => {
                events.push(chunk(
                    json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                    "function": {"name": name, "arguments": ""}}]}),
                    Value::Null,
                ));
                events.push(chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"q\":\"x\"}"}}]}), Value::Null));
                events.push(chunk(json!({}), json!("tool_calls")));
            }
            None => {
                for w in &words {
                    events.push(chunk(json!({"content": w}), Value::Null));
                }
                events.push(chunk(json!({}), json!("stop")));
            }
        }
        let wants_usage = body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true);
        if wants_usage && !script.omit_stream_usage {
            events.push(format!(
                "data: {}\n\n",
                json!({"id": id, "object": "chat.completion.chunk",
                "created": 1, "model": model, "choices": [], "usage": usage})
            ));
        }
        events.push("data: [DONE]\n\n".into());
        return sse_body(truncate(events, &script), script.chunk_delay_ms);
    }
    let message = match &tool {
        Some(name) => json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
            "type": "function", "function": {"name": name, "arguments": "{\"q\":\"x\"}"}}]}),
        None => json!({"role": "assistant", "content": words.concat()}),
    };
    let n = body.get("n").and_then(Value::as_u64).unwrap_or(1);
    let choices: Vec<Value> = (0..n)
        .map(|i| json!({"index": i, "message": message, "finish_reason": if tool.is_some() { "tool_calls" } else { "stop" }}))
        .collect();
    axum::Json(
        json!({"id": id, "object": "chat.completion", "created": 1, "model": model,
        "choices": choices, "usage": usage}),
    )
    .into_response()
}

async fn openai_embeddings(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Err(r) = begin(&s, Wire::Openai, "/v1/embeddings", &headers, &body).await {
        return r;
    }
    let inputs = match body.get("input") {
        Some(Value::Array(a)) => a.len(),
        _ => 1,
    };
    let tokens = body
        .get("input")
        .map(|v| v.to_string().len() as u64 / 4)
        .unwrap_or(1)
        .max(1);
    let data: Vec<Value> = (0..inputs)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}))
        .collect();
    axum::Json(
        json!({"object": "list", "data": data, "model": body.get("model"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
    )
    .into_response()
}

async fn openai_models(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = begin(&s, Wire::Openai, "/v1/models", &headers, &Value::Null).await {
        return r;
    }
    axum::Json(json!({"object": "list", "data": [{"id": "gpt-4o", "object": "model"}, {"id": "o3", "object": "model"}]})).into_response()
}

async fn anthropic_messages(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let script = match begin(
        &s,
        Wire::Anthropic,
        "/anthropic/v1/messages",
        &headers,
        &body,
    )
    .await
    {
        Ok(x) => x,
        Err(r) => return r,
    };
    if body.get("max_tokens").and_then(Value::as_u64).is_none() {
        return error(Wire::Anthropic, 400, None, "max_tokens: Field required");
    }
    let prompt = prompt_tokens(body.get("messages"));
    let words = answer_words(script.answer_words, &body);
    let tool = tool_to_call(&body, Wire::Anthropic);
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        let ev = |name: &str, v: Value| format!("event: {name}\ndata: {v}\n\n");
        let mut events = vec![ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_fake",
            "role": "assistant", "usage": {"input_tokens": prompt, "output_tokens": 1}}}),
        )];
        match &tool {
            Some(name) => {
                events.push(ev("content_block_start", json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "tool_use", "id": "toolu_1", "name": name, "input": {}}})));
                events.push(ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": "{\"q\":\"x\"}"}}),
                ));
            }
            None => {
                events.push(ev(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
                ));
                for w in &words {
                    events.push(ev(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": w}}),
                    ));
                }
            }
        }
        events.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        events.push(ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason":
            if tool.is_some() { "tool_use" } else { "end_turn" }}, "usage": {"output_tokens": words.len()}})));
        events.push(ev("message_stop", json!({"type": "message_stop"})));
        return sse_body(truncate(events, &script), script.chunk_delay_ms);
    }
    let content = match &tool {
        Some(name) => {
            json!([{"type": "tool_use", "id": "toolu_1", "name": name, "input": {"q": "x"}}])
        }
        None => json!([{"type": "text", "text": words.concat()}]),
    };
    axum::Json(json!({"id": "msg_fake", "type": "message", "role": "assistant", "content": content,
        "model": body.get("model"), "stop_reason": if tool.is_some() { "tool_use" } else { "end_turn" },
        "usage": {"input_tokens": prompt, "output_tokens": words.len()}}))
    .into_response()
}

async fn anthropic_models(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = begin(
        &s,
        Wire::Anthropic,
        "/anthropic/v1/models",
        &headers,
        &Value::Null,
    )
    .await
    {
        return r;
    }
    axum::Json(json!({"data": [{"id": "claude-sonnet-4-20250514", "type": "model"}]}))
        .into_response()
}

async fn gemini(
    State(s): State<Arc<Shared>>,
    Path(action): Path<String>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let path = format!("/gemini/v1beta/models/{action}");
    let script = match begin(&s, Wire::Gemini, &path, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let streaming = action.ends_with(":streamGenerateContent");
    let prompt = prompt_tokens(body.get("contents"));
    let words = answer_words(script.answer_words, &body);
    let tool = tool_to_call(&body, Wire::Gemini);
    let usage = json!({"promptTokenCount": prompt, "candidatesTokenCount": words.len(),
        "totalTokenCount": prompt + words.len() as u64});
    if streaming {
        let mut events: Vec<String> = Vec::new();
        match &tool {
            Some(name) => events.push(format!("data: {}\n\n", json!({"candidates": [{"content": {"role": "model",
                "parts": [{"functionCall": {"name": name, "args": {"q": "x"}}}]}, "finishReason": "STOP"}],
                "usageMetadata": usage}))),
            None => {
                let last = words.len().saturating_sub(1);
                for (i, w) in words.iter().enumerate() {
                    let mut c = json!({"content": {"role": "model", "parts": [{"text": w}]}});
                    let mut chunk = json!({"candidates": [c.clone()]});
                    if i == last {
                        c["finishReason"] = json!("STOP");
                        chunk = json!({"candidates": [c], "usageMetadata": usage});
                    }
                    events.push(format!("data: {chunk}\n\n"));
                }
            }
        }
        return sse_body(truncate(events, &script), script.chunk_delay_ms);
    }
    let parts = match &tool {
        Some(name) => json!([{"functionCall": {"name": name, "args": {"q": "x"}}}]),
        None => json!([{"text": words.concat()}]),
    };
    axum::Json(json!({"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP"}],
        "usageMetadata": usage}))
    .into_response()
}

async fn gemini_models(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = begin(
        &s,
        Wire::Gemini,
        "/gemini/v1beta/models",
        &headers,
        &Value::Null,
    )
    .await
    {
        return r;
    }
    axum::Json(json!({"models": [{"name": "models/gemini-2.5-flash"}]})).into_response()
}
