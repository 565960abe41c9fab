//! The model catalog and its parameter rules (seed 003 "Auto-configuration"): what each
//! model is (provider, family, generation, context window, largest answer) and which chat
//! parameters it takes. Reasoning models take `reasoning_effort` and
//! `max_completion_tokens` and refuse sampling parameters such as `temperature`; classic
//! models the reverse. [`configure`] adapts a request to its model where the meaning is the
//! same (`max_tokens` ↔ `max_completion_tokens`, `system` ↔ `developer`, text parts ↔ a
//! string) and refuses, before any provider is called, what has no equivalent.
//!
//! Names resolve like prices do: a dated snapshot (`gpt-4o-2024-08-06`) is its base model.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::pricing::strip_snapshot_suffix;

/// Seed 003's generations: the reasoning-era models ("new") and the ones before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Generation {
    New,
    Legacy,
}

/// What a model does, which decides the parameters it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Thinks before answering: `reasoning_effort`, no sampling parameters.
    Reasoning,
    /// A classic chat model: sampling parameters, no `reasoning_effort`.
    Chat,
    /// Turns text into vectors (`/v1/embeddings`).
    Embedding,
}

/// One model of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Lower case: `openai`, `anthropic`, `google`, or a tenant's own provider name.
    pub provider: String,
    pub model: String,
    pub family: String,
    pub generation: Generation,
    pub kind: ModelKind,
    /// Prompt plus answer, tokens. 0: unknown (not checked).
    pub context_window: u32,
    /// Largest answer, tokens. 0: unknown (not checked).
    pub max_output: u32,
    /// Takes image parts in messages.
    #[serde(default)]
    pub vision: bool,
    /// Takes `tools` (function calling).
    #[serde(default)]
    pub tools: bool,
}

/// The parameters a model requires, refuses and accepts (seed 003 `model_requirements`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Requirements {
    pub required: Vec<&'static str>,
    pub forbidden: Vec<&'static str>,
    pub optional: Vec<&'static str>,
}

/// Sampling parameters reasoning models refuse.
const SAMPLING: [&str; 7] = [
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
];

/// The `reasoning_effort` values OpenAI's reasoning models take.
pub const REASONING_EFFORTS: [&str; 3] = ["low", "medium", "high"];
/// What the gateway sends when a reasoning model's request names no effort.
pub const DEFAULT_REASONING_EFFORT: &str = "medium";

impl ModelSpec {
    pub fn requirements(&self) -> Requirements {
        let common = ["stop", "seed", "user", "stream", "stream_options", "n"];
        match self.kind {
            ModelKind::Reasoning => Requirements {
                required: vec!["reasoning_effort"],
                forbidden: SAMPLING.to_vec(),
                optional: with_tools(
                    self.tools,
                    ["max_completion_tokens", "response_format"]
                        .into_iter()
                        .chain(common)
                        .collect(),
                ),
            },
            ModelKind::Chat => Requirements {
                required: vec![],
                forbidden: vec!["reasoning_effort"],
                optional: with_tools(
                    self.tools,
                    ["max_tokens", "max_completion_tokens", "response_format"]
                        .into_iter()
                        .chain(SAMPLING)
                        .chain(common)
                        .collect(),
                ),
            },
            ModelKind::Embedding => Requirements {
                required: vec!["input"],
                forbidden: vec!["messages", "tools", "reasoning_effort"],
                optional: vec!["dimensions", "encoding_format", "user"],
            },
        }
    }

    /// What seed 003 suggests using instead of a refused parameter.
    pub fn suggested_params(&self) -> Vec<&'static str> {
        match self.kind {
            ModelKind::Reasoning => vec!["reasoning_effort", "max_completion_tokens"],
            ModelKind::Chat => vec!["temperature", "max_tokens"],
            ModelKind::Embedding => vec!["input"],
        }
    }

    /// A model a tenant routes to on its own provider without describing it: taken as a
    /// classic chat model whose limits are unknown (nothing is checked against them).
    pub fn unknown(provider: &str, model: &str) -> Self {
        Self {
            provider: provider.to_owned(),
            model: model.to_owned(),
            family: model.to_owned(),
            generation: Generation::Legacy,
            kind: ModelKind::Chat,
            context_window: 0,
            max_output: 0,
            vision: true,
            tools: true,
        }
    }
}

fn with_tools(tools: bool, mut optional: Vec<&'static str>) -> Vec<&'static str> {
    if tools {
        optional.extend(["tools", "tool_choice", "parallel_tool_calls"]);
    }
    optional
}

/// The provider a bare model name belongs to, from its name.
pub fn provider_of(model: &str) -> Option<&'static str> {
    let m = model.to_ascii_lowercase();
    let starts = |p: &str| m.starts_with(p);
    if starts("claude-") {
        Some("anthropic")
    } else if starts("gemini-") {
        Some("google")
    } else if starts("gpt-")
        || starts("o1")
        || starts("o3")
        || starts("o4")
        || starts("text-embedding-")
        || starts("chatgpt-")
    {
        Some("openai")
    } else {
        None
    }
}

/// The shipped catalog, and a tenant's additions or replacements.
#[derive(Debug, Clone)]
pub struct ModelCatalog {
    defaults: Vec<ModelSpec>,
    overrides: Vec<ModelSpec>,
}

impl Default for ModelCatalog {
    fn default() -> Self {
        Self {
            defaults: default_models(),
            overrides: Vec::new(),
        }
    }
}

impl ModelCatalog {
    /// The shipped catalog with `overrides` in front: an override of the same provider and
    /// model replaces the shipped entry.
    pub fn with_overrides(&self, overrides: Vec<ModelSpec>) -> Self {
        Self {
            defaults: self.defaults.clone(),
            overrides,
        }
    }

    /// The spec `provider`/`model` resolves to: the exact name, else its base model.
    pub fn lookup(&self, provider: &str, model: &str) -> Option<&ModelSpec> {
        let provider = provider.to_ascii_lowercase();
        let mut name = model.trim().to_ascii_lowercase();
        loop {
            let found = self
                .overrides
                .iter()
                .chain(&self.defaults)
                .find(|s| s.provider == provider && s.model == name);
            if found.is_some() {
                return found;
            }
            name = strip_snapshot_suffix(&name)?.to_owned();
        }
    }

    /// Every model, overrides first, without the shipped entries they replace.
    pub fn all(&self) -> Vec<&ModelSpec> {
        let mut out: Vec<&ModelSpec> = self.overrides.iter().collect();
        for d in &self.defaults {
            if !self
                .overrides
                .iter()
                .any(|o| o.provider == d.provider && o.model == d.model)
            {
                out.push(d);
            }
        }
        out
    }
}

#[rustfmt::skip]
fn default_models() -> Vec<ModelSpec> {
    use Generation::{Legacy, New};
    use ModelKind::{Chat, Embedding, Reasoning};
    let m = |provider: &str, model: &str, family: &str, generation, kind, context_window, max_output, vision, tools| ModelSpec {
        provider: provider.into(), model: model.into(), family: family.into(), generation, kind,
        context_window, max_output, vision, tools,
    };
    vec![
        m("openai", "gpt-4o",        "gpt-4o",  Legacy, Chat,      128_000,   16_384,  true,  true),
        m("openai", "gpt-4o-mini",   "gpt-4o",  Legacy, Chat,      128_000,   16_384,  true,  true),
        m("openai", "gpt-4-turbo",   "gpt-4",   Legacy, Chat,      128_000,   4_096,   true,  true),
        m("openai", "gpt-4.1",       "gpt-4.1", New,    Chat,      1_047_576, 32_768,  true,  true),
        m("openai", "gpt-4.1-mini",  "gpt-4.1", New,    Chat,      1_047_576, 32_768,  true,  true),
        m("openai", "gpt-4.1-nano",  "gpt-4.1", New,    Chat,      1_047_576, 32_768,  true,  true),
        m("openai", "o1",            "o1",      New,    Reasoning, 200_000,   100_000, true,  true),
        m("openai", "o3",            "o3",      New,    Reasoning, 200_000,   100_000, true,  true),
        m("openai", "o3-mini",       "o3",      New,    Reasoning, 200_000,   100_000, false, true),
        m("openai", "o4-mini",       "o4",      New,    Reasoning, 200_000,   100_000, true,  true),
        m("openai", "text-embedding-3-small", "text-embedding-3", New,    Embedding, 8_191, 0, false, false),
        m("openai", "text-embedding-3-large", "text-embedding-3", New,    Embedding, 8_191, 0, false, false),
        m("openai", "text-embedding-ada-002", "text-embedding",   Legacy, Embedding, 8_191, 0, false, false),
        m("anthropic", "claude-3-5-haiku",  "claude-3.5", Legacy, Chat, 200_000, 8_192,  true, true),
        m("anthropic", "claude-3-5-sonnet", "claude-3.5", Legacy, Chat, 200_000, 8_192,  true, true),
        m("anthropic", "claude-3-7-sonnet", "claude-3.7", Legacy, Chat, 200_000, 64_000, true, true),
        m("anthropic", "claude-sonnet-4",   "claude-4",   New,    Chat, 200_000, 64_000, true, true),
        m("anthropic", "claude-opus-4",     "claude-4",   New,    Chat, 200_000, 32_000, true, true),
        m("google", "gemini-1.5-flash", "gemini-1.5", Legacy, Chat, 1_048_576, 8_192,  true, true),
        m("google", "gemini-1.5-pro",   "gemini-1.5", Legacy, Chat, 2_097_152, 8_192,  true, true),
        m("google", "gemini-2.0-flash", "gemini-2.0", Legacy, Chat, 1_048_576, 8_192,  true, true),
        m("google", "gemini-2.5-flash", "gemini-2.5", New,    Chat, 1_048_576, 65_536, true, true),
        m("google", "gemini-2.5-pro",   "gemini-2.5", New,    Chat, 1_048_576, 65_536, true, true),
    ]
}

/// A request parameter the model cannot take, with what it takes instead: seed 003's
/// `INVALID_PARAMETER_FOR_MODEL` fields.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamViolation {
    pub message: String,
    pub model: String,
    /// The parameter (or message path) refused first: OpenAI's `param`.
    pub param: String,
    pub invalid_params: Vec<String>,
    pub suggested_params: Vec<&'static str>,
    pub requirements: Requirements,
}

/// Adapts a chat request (OpenAI's JSON, `model` aside) to `spec` in place and returns the
/// conversions made, each as a short sentence; or refuses it naming every parameter the
/// model cannot take. Nothing is changed when it refuses.
pub fn configure(
    spec: &ModelSpec,
    body: &mut Map<String, Value>,
) -> Result<Vec<String>, Box<ParamViolation>> {
    let mut invalid: Vec<String> = Vec::new();
    let mut why: Vec<String> = Vec::new();
    let reasoning = spec.kind == ModelKind::Reasoning;
    let name = &spec.model;
    if reasoning {
        for p in SAMPLING {
            if body.get(p).is_some_and(|v| !v.is_null()) {
                invalid.push(p.to_owned());
            }
        }
        if !invalid.is_empty() {
            why.push(format!(
                "{} models don't support {}",
                family_label(spec),
                invalid.join(", ")
            ));
        }
        if let (Some(a), Some(b)) = (
            body.get("max_tokens").filter(|v| !v.is_null()),
            body.get("max_completion_tokens").filter(|v| !v.is_null()),
        ) {
            if a != b {
                invalid.push("max_tokens".into());
                why.push(
                    "max_tokens and max_completion_tokens disagree; reasoning models take \
                     max_completion_tokens only"
                        .into(),
                );
            }
        }
        match body.get("reasoning_effort") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if REASONING_EFFORTS.contains(&s.as_str()) => {}
            Some(_) => {
                invalid.push("reasoning_effort".into());
                why.push(format!(
                    "reasoning_effort must be one of {}",
                    REASONING_EFFORTS.join(", ")
                ));
            }
        }
    } else if body.get("reasoning_effort").is_some_and(|v| !v.is_null()) {
        invalid.push("reasoning_effort".into());
        why.push(format!(
            "Model {name} doesn't support reasoning_effort parameter"
        ));
    }
    if !spec.tools {
        for p in ["tools", "tool_choice", "functions"] {
            if body.get(p).is_some_and(|v| !v.is_null()) {
                invalid.push(p.to_owned());
                why.push(format!("Model {name} doesn't support {p}"));
            }
        }
    }
    if !spec.vision {
        if let Some(path) = first_image_part(body) {
            why.push(format!("Model {name} doesn't take images ({path})"));
            invalid.push(path);
        }
    }
    if spec.max_output > 0 {
        for p in ["max_tokens", "max_completion_tokens"] {
            if let Some(n) = body.get(p).and_then(Value::as_u64) {
                if n > u64::from(spec.max_output) {
                    invalid.push(p.to_owned());
                    why.push(format!(
                        "{p} is {n}; {name} answers at most {} tokens",
                        spec.max_output
                    ));
                }
            }
        }
    }
    if !invalid.is_empty() {
        return Err(Box::new(ParamViolation {
            message: why.join("; "),
            model: name.clone(),
            param: invalid[0].clone(),
            invalid_params: invalid,
            suggested_params: spec.suggested_params(),
            requirements: spec.requirements(),
        }));
    }

    let mut changes = Vec::new();
    if reasoning {
        if let Some(v) = body.remove("max_tokens").filter(|v| !v.is_null()) {
            body.insert("max_completion_tokens".into(), v);
            changes.push("max_tokens sent as max_completion_tokens".to_owned());
        }
        if body.get("reasoning_effort").is_none_or(Value::is_null) {
            body.insert(
                "reasoning_effort".into(),
                Value::String(DEFAULT_REASONING_EFFORT.into()),
            );
            changes.push(format!(
                "reasoning_effort set to {DEFAULT_REASONING_EFFORT}"
            ));
        }
    }
    let (from, to) = if reasoning {
        ("system", "developer")
    } else {
        ("developer", "system")
    };
    let mut renamed = false;
    let mut joined = false;
    if let Some(Value::Array(messages)) = body.get_mut("messages") {
        for m in messages.iter_mut().filter_map(Value::as_object_mut) {
            if m.get("role").and_then(Value::as_str) == Some(from) {
                m.insert("role".into(), Value::String(to.into()));
                renamed = true;
            }
            if !spec.vision {
                if let Some(text) = m.get("content").and_then(text_only_parts) {
                    m.insert("content".into(), Value::String(text));
                    joined = true;
                }
            }
        }
    }
    if renamed {
        changes.push(format!("{from} messages sent as {to} messages"));
    }
    if joined {
        changes.push("text parts sent as one string".to_owned());
    }
    Ok(changes)
}

fn family_label(spec: &ModelSpec) -> String {
    spec.family.to_ascii_uppercase()
}

/// The path of the first image part in `messages`, e.g. `messages[1].content[0]`.
fn first_image_part(body: &Map<String, Value>) -> Option<String> {
    let messages = body.get("messages")?.as_array()?;
    for (i, m) in messages.iter().enumerate() {
        if let Some(parts) = m.get("content").and_then(Value::as_array) {
            for (j, p) in parts.iter().enumerate() {
                if p.get("type").and_then(Value::as_str) == Some("image_url") {
                    return Some(format!("messages[{i}].content[{j}]"));
                }
            }
        }
    }
    None
}

/// The text of a content array made only of text parts, joined; `None` otherwise.
pub fn text_only_parts(content: &Value) -> Option<String> {
    let parts = content.as_array()?;
    let mut out = String::new();
    for p in parts {
        if p.get("type").and_then(Value::as_str) != Some("text") {
            return None;
        }
        out.push_str(p.get("text")?.as_str()?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn snapshots_resolve_to_their_base_model() {
        let c = ModelCatalog::default();
        assert_eq!(
            c.lookup("openai", "gpt-4o-2024-08-06").unwrap().model,
            "gpt-4o"
        );
        assert_eq!(
            c.lookup("anthropic", "claude-sonnet-4-20250514")
                .unwrap()
                .model,
            "claude-sonnet-4"
        );
        assert!(c.lookup("openai", "gpt-9").is_none());
        assert!(c.lookup("anthropic", "gpt-4o").is_none());
    }

    #[test]
    fn an_override_replaces_the_shipped_entry() {
        let mut mine = ModelSpec::unknown("openai", "gpt-4o");
        mine.context_window = 1000;
        let c = ModelCatalog::default().with_overrides(vec![mine]);
        assert_eq!(c.lookup("openai", "gpt-4o").unwrap().context_window, 1000);
        assert_eq!(c.all().iter().filter(|s| s.model == "gpt-4o").count(), 1);
    }

    #[test]
    fn temperature_on_o3_is_refused_with_the_seed_fields() {
        let c = ModelCatalog::default();
        let o3 = c.lookup("openai", "o3").unwrap();
        let mut b = body(json!({"messages": [], "temperature": 0.2, "top_p": 1}));
        let before = b.clone();
        let err = configure(o3, &mut b).unwrap_err();
        assert_eq!(err.invalid_params, ["temperature", "top_p"]);
        assert_eq!(
            err.suggested_params,
            ["reasoning_effort", "max_completion_tokens"]
        );
        assert_eq!(err.requirements.required, ["reasoning_effort"]);
        assert!(err.requirements.forbidden.contains(&"temperature"));
        assert!(err.message.contains("O3 models don't support temperature"));
        assert_eq!(b, before, "a refused request is left as it was");
    }

    #[test]
    fn reasoning_effort_on_gpt_4o_is_refused() {
        let c = ModelCatalog::default();
        let mut b = body(json!({"messages": [], "reasoning_effort": "high"}));
        let err = configure(c.lookup("openai", "gpt-4o").unwrap(), &mut b).unwrap_err();
        assert_eq!(err.invalid_params, ["reasoning_effort"]);
        assert_eq!(err.suggested_params, ["temperature", "max_tokens"]);
        assert_eq!(
            err.message,
            "Model gpt-4o doesn't support reasoning_effort parameter"
        );
    }

    #[test]
    fn same_meaning_parameters_are_converted() {
        let c = ModelCatalog::default();
        let mut b = body(json!({
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            "max_tokens": 100
        }));
        let changes = configure(c.lookup("openai", "o3").unwrap(), &mut b).unwrap();
        assert_eq!(b["max_completion_tokens"], 100);
        assert!(b.get("max_tokens").is_none());
        assert_eq!(b["reasoning_effort"], "medium");
        assert_eq!(b["messages"][0]["role"], "developer");
        assert_eq!(changes.len(), 3);

        let mut b = body(json!({"messages": [{"role": "developer", "content": "x"}]}));
        configure(c.lookup("openai", "gpt-4o").unwrap(), &mut b).unwrap();
        assert_eq!(b["messages"][0]["role"], "system");
    }

    #[test]
    fn text_parts_become_a_string_for_models_without_vision_and_images_are_refused() {
        let c = ModelCatalog::default();
        let mini = c.lookup("openai", "o3-mini").unwrap();
        let mut b = body(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}));
        configure(mini, &mut b).unwrap();
        assert_eq!(b["messages"][0]["content"], "ab");
        let mut b = body(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}));
        let err = configure(mini, &mut b).unwrap_err();
        assert_eq!(err.invalid_params, ["messages[0].content[0]"]);
    }

    #[test]
    fn an_answer_longer_than_the_model_gives_is_refused() {
        let c = ModelCatalog::default();
        let mut b = body(json!({"messages": [], "max_tokens": 20000}));
        let err = configure(c.lookup("openai", "gpt-4o").unwrap(), &mut b).unwrap_err();
        assert_eq!(err.param, "max_tokens");
    }

    #[test]
    fn bare_names_route_to_their_provider() {
        assert_eq!(provider_of("claude-sonnet-4"), Some("anthropic"));
        assert_eq!(provider_of("gemini-2.5-pro"), Some("google"));
        assert_eq!(provider_of("o3-mini"), Some("openai"));
        assert_eq!(provider_of("llama3"), None);
    }
}
