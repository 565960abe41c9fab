//! Tracked events (seed 001 "Tracking d'Événements"): the wire shape, the validation rules
//! and the validated record that storage saves.
//!
//! Choices where the seed is silent (see `docs/events.md`):
//! - `user_id` and `project_id` may be given at the top level or inside `properties`
//!   (top level wins); they are lifted out of `properties` into their own columns.
//! - `timestamp` may be given at the top level or, as the seed's JavaScript client does,
//!   inside `properties`. Without one, the server's receive time is used.
//! - A client-supplied `id` makes retries idempotent: the same `id` with the same
//!   `timestamp` is stored once.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::{codes, FieldError};
use crate::time::{self, MICROS_PER_SEC};

/// The six event types of seed 001.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    UserAction,
    SystemEvent,
    ApiCall,
    PageView,
    FeatureUsage,
    ErrorOccurred,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::UserAction,
        EventType::SystemEvent,
        EventType::ApiCall,
        EventType::PageView,
        EventType::FeatureUsage,
        EventType::ErrorOccurred,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::UserAction => "user_action",
            EventType::SystemEvent => "system_event",
            EventType::ApiCall => "api_call",
            EventType::PageView => "page_view",
            EventType::FeatureUsage => "feature_usage",
            EventType::ErrorOccurred => "error_occurred",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Compact code used in storage.
    pub fn code(self) -> i64 {
        match self {
            EventType::UserAction => 1,
            EventType::SystemEvent => 2,
            EventType::ApiCall => 3,
            EventType::PageView => 4,
            EventType::FeatureUsage => 5,
            EventType::ErrorOccurred => 6,
        }
    }

    pub fn from_code(code: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.code() == code)
    }

    /// Property names of which at least one must be present, per type. `page_view` also
    /// accepts `context.page`.
    fn required_any(self) -> &'static [&'static str] {
        match self {
            EventType::PageView => &["page"],
            EventType::ApiCall => &["endpoint", "url"],
            EventType::ErrorOccurred => &["error_message", "message", "error_type"],
            EventType::UserAction | EventType::SystemEvent | EventType::FeatureUsage => &[],
        }
    }
}

/// One event as clients send it. Every field is kept as raw JSON so that validation can
/// name the exact field and choose the seed's error code.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    pub id: Option<Value>,
    pub event_type: Option<Value>,
    pub event_name: Option<Value>,
    pub properties: Option<Value>,
    pub timestamp: Option<Value>,
    pub context: Option<Value>,
    pub user_id: Option<Value>,
    pub project_id: Option<Value>,
}

/// Limits applied to every event. Configurable; the defaults suit product analytics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EventLimits {
    pub max_name_len: usize,
    pub max_id_len: usize,
    pub max_properties: usize,
    pub max_key_len: usize,
    pub max_string_len: usize,
    /// Serialized size of `properties` plus `context`.
    pub max_payload_bytes: usize,
    pub max_depth: usize,
    /// How far in the future a client timestamp may be (clock skew).
    pub max_future_skew_secs: i64,
}

impl Default for EventLimits {
    fn default() -> Self {
        Self {
            max_name_len: 200,
            max_id_len: 128,
            max_properties: 200,
            max_key_len: 128,
            max_string_len: 8_192,
            max_payload_bytes: 32 * 1024,
            max_depth: 8,
            max_future_skew_secs: 300,
        }
    }
}

/// Earliest accepted client timestamp: 2000-01-01T00:00:00Z.
pub const MIN_TIMESTAMP_MICROS: i64 = 946_684_800 * MICROS_PER_SEC;

/// A validated event, before enrichment.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent {
    pub client_id: Option<String>,
    pub event_type: EventType,
    pub event_name: String,
    pub user_id: Option<String>,
    pub project_id: Option<String>,
    /// Event time (client's if given, else receive time), UTC microseconds.
    pub timestamp: i64,
    pub timestamp_provided: bool,
    pub properties: Map<String, Value>,
    pub context: Map<String, Value>,
}

/// A validated and enriched event, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub tracking_id: Uuid,
    pub client_id: Option<String>,
    /// Idempotency key time: the client timestamp when it sent one, else 0.
    pub dedup_ts: i64,
    pub event_type: EventType,
    pub event_name: String,
    pub user_id: Option<String>,
    pub project_id: Option<String>,
    pub timestamp: i64,
    pub received_at: i64,
    /// JSON object text.
    pub properties: String,
    /// JSON object text: the client's context plus derived browser/os/device fields.
    pub context: String,
    /// JSON object text: geo location and device fingerprint.
    pub enriched: String,
}

impl NewEvent {
    /// Bytes this event occupies in storage, including its index entries; used for the
    /// dry-run's storage estimate and tenant storage accounting.
    pub fn estimated_storage_bytes(&self) -> usize {
        const ROW_OVERHEAD: usize = 64;
        const INDEX_ENTRY: usize = 40;
        let text = self.event_name.len()
            + self.properties.len()
            + self.context.len()
            + self.enriched.len()
            + self.client_id.as_ref().map_or(0, String::len)
            + self.user_id.as_ref().map_or(0, String::len)
            + self.project_id.as_ref().map_or(0, String::len);
        let indexes = 5 + usize::from(self.client_id.is_some());
        ROW_OVERHEAD + 16 + text + indexes * INDEX_ENTRY
    }
}

/// Validates one event. `received_at` is the server's receive time (microseconds).
pub fn validate(
    input: EventInput,
    limits: &EventLimits,
    received_at: i64,
) -> Result<ValidEvent, FieldError> {
    let event_type = match input.event_type {
        None | Some(Value::Null) => {
            return Err(FieldError::new(
                codes::MISSING_REQUIRED,
                "event_type",
                "event_type is required",
            ))
        }
        Some(Value::String(s)) => EventType::parse(&s).ok_or_else(|| {
            FieldError::new(
                codes::INVALID_EVENT_TYPE,
                "event_type",
                format!(
                    "invalid event type '{}'; expected one of {}",
                    truncate(&s, 64),
                    EventType::ALL.map(EventType::as_str).join(", ")
                ),
            )
        })?,
        Some(_) => {
            return Err(FieldError::new(
                codes::INVALID_EVENT_TYPE,
                "event_type",
                "event_type must be a string",
            ))
        }
    };

    let event_name = match input.event_name {
        None | Some(Value::Null) => {
            return Err(FieldError::new(
                codes::MISSING_REQUIRED,
                "event_name",
                "event_name is required",
            ))
        }
        Some(Value::String(s)) => {
            let trimmed = s.trim();
            if trimmed.is_empty() {
                return Err(FieldError::new(
                    codes::MISSING_REQUIRED,
                    "event_name",
                    "event_name must not be empty",
                ));
            }
            check_text("event_name", &s, limits.max_name_len)?;
            trimmed.to_owned()
        }
        Some(_) => return Err(FieldError::invalid("event_name", "must be a string")),
    };

    let client_id = match input.id {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            if s.is_empty() {
                return Err(FieldError::invalid("id", "must not be empty"));
            }
            check_text("id", &s, limits.max_id_len)?;
            Some(s)
        }
        Some(_) => return Err(FieldError::invalid("id", "must be a string")),
    };

    let mut properties = object_field("properties", input.properties)?;
    let context = object_field("context", input.context)?;

    let user_id = lift_identifier("user_id", input.user_id, &mut properties, limits)?;
    let project_id = lift_identifier("project_id", input.project_id, &mut properties, limits)?;

    // The seed's JavaScript client puts the timestamp inside `properties`; used only when
    // it parses, since there it is the client's free-form data.
    let top = match input.timestamp {
        None | Some(Value::Null) => match properties.get("timestamp") {
            Some(Value::String(s)) if time::parse_rfc3339(s).is_some() => {
                Some(Value::String(s.clone()))
            }
            _ => None,
        },
        other => other,
    };
    let (timestamp, timestamp_provided) =
        client_timestamp(top, received_at, limits.max_future_skew_secs)?;

    if properties.len() > limits.max_properties {
        return Err(FieldError::invalid(
            "properties",
            format!("has more than {} keys", limits.max_properties),
        ));
    }
    check_tree("properties", &properties, limits, 1)?;
    check_tree("context", &context, limits, 1)?;
    check_context(&context)?;

    let required = event_type.required_any();
    if !required.is_empty() {
        let present = required.iter().any(|k| non_empty(properties.get(*k)))
            || (event_type == EventType::PageView && non_empty(context.get("page")));
        if !present {
            return Err(FieldError::new(
                codes::MISSING_REQUIRED,
                format!("properties.{}", required[0]),
                format!(
                    "{} events require properties.{}",
                    event_type.as_str(),
                    required.join(" or properties.")
                ),
            ));
        }
    }

    Ok(ValidEvent {
        client_id,
        event_type,
        event_name,
        user_id,
        project_id,
        timestamp,
        timestamp_provided,
        properties,
        context,
    })
}

/// A client-sent `timestamp` (RFC 3339, not before 2000, at most `max_future_skew_secs`
/// ahead of the receive time), or the receive time when absent. Returns the time in
/// microseconds and whether the client provided it. Shared by events and usage records.
pub fn client_timestamp(
    value: Option<Value>,
    received_at: i64,
    max_future_skew_secs: i64,
) -> Result<(i64, bool), FieldError> {
    let invalid = |msg: String| FieldError::new(codes::INVALID_TIMESTAMP, "timestamp", msg);
    let t = match value {
        None | Some(Value::Null) => return Ok((received_at, false)),
        Some(Value::String(s)) => time::parse_rfc3339(&s).ok_or_else(|| {
            invalid("must be an RFC 3339 date-time, e.g. 2024-01-20T14:30:00Z".into())
        })?,
        Some(_) => return Err(invalid("must be an RFC 3339 date-time string".into())),
    };
    if t > received_at + max_future_skew_secs * MICROS_PER_SEC {
        return Err(invalid(format!(
            "is more than {max_future_skew_secs} seconds in the future"
        )));
    }
    if t < MIN_TIMESTAMP_MICROS {
        return Err(invalid("is before 2000-01-01T00:00:00Z".into()));
    }
    Ok((t, true))
}

/// Checks the serialized size of an event's free-form parts.
pub fn check_payload_size(
    properties: &str,
    context: &str,
    limits: &EventLimits,
) -> Result<(), FieldError> {
    if properties.len() + context.len() > limits.max_payload_bytes {
        return Err(FieldError::invalid(
            "properties",
            format!(
                "properties and context together exceed {} bytes",
                limits.max_payload_bytes
            ),
        ));
    }
    Ok(())
}

fn non_empty(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(_) => true,
    }
}

fn object_field(name: &str, v: Option<Value>) -> Result<Map<String, Value>, FieldError> {
    match v {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(FieldError::invalid(name, "must be a JSON object")),
    }
}

/// Takes an identifier from the top level or from `properties`, removing it from the
/// latter. Integers are kept as their decimal text.
fn lift_identifier(
    name: &str,
    top: Option<Value>,
    properties: &mut Map<String, Value>,
    limits: &EventLimits,
) -> Result<Option<String>, FieldError> {
    let from_props = properties.remove(name);
    let (field, value) = match top {
        Some(v) if !v.is_null() => (name.to_owned(), v),
        _ => match from_props {
            Some(v) => (format!("properties.{name}"), v),
            None => return Ok(None),
        },
    };
    match value {
        Value::Null => Ok(None),
        Value::String(s) => {
            if s.is_empty() {
                return Err(FieldError::invalid(field, "must not be empty"));
            }
            check_text(&field, &s, limits.max_id_len)?;
            Ok(Some(s))
        }
        Value::Number(n) if crate::number::integer(&n).is_some() => Ok(crate::number::id_text(&n)),
        _ => Err(FieldError::invalid(field, "must be a string or an integer")),
    }
}

fn check_text(field: &str, s: &str, max: usize) -> Result<(), FieldError> {
    if s.chars().count() > max {
        return Err(FieldError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(FieldError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Checks limits over a JSON tree. Field paths are only built when a rule is broken: this
/// runs for every key of every event.
fn check_tree(
    path: &str,
    map: &Map<String, Value>,
    limits: &EventLimits,
    depth: usize,
) -> Result<(), FieldError> {
    if depth > limits.max_depth {
        return Err(FieldError::invalid(
            path,
            format!("nests deeper than {} levels", limits.max_depth),
        ));
    }
    for (k, v) in map {
        if k.len() > limits.max_key_len {
            return Err(FieldError::invalid(
                format!("{path}.{}", truncate(k, 32)),
                format!("key is longer than {} bytes", limits.max_key_len),
            ));
        }
        check_value(v, limits, depth).map_err(|e| e.under(&format!("{path}.{k}")))?;
    }
    Ok(())
}

/// A broken limit below some value, with the path from that value down (built on the way
/// back up, so only when there is an error).
struct Breach {
    suffix: Vec<String>,
    message: String,
}

impl Breach {
    fn new(message: String) -> Self {
        Self {
            suffix: Vec::new(),
            message,
        }
    }

    fn under(self, path: &str) -> FieldError {
        let mut field = path.to_owned();
        for part in self.suffix.iter().rev() {
            field.push_str(part);
        }
        FieldError::invalid(field, self.message)
    }
}

fn check_value(v: &Value, limits: &EventLimits, depth: usize) -> Result<(), Breach> {
    match v {
        Value::String(s) if s.len() > limits.max_string_len => Err(Breach::new(format!(
            "string is longer than {} bytes",
            limits.max_string_len
        ))),
        Value::Object(m) => {
            if depth + 1 > limits.max_depth {
                return Err(Breach::new(format!(
                    "nests deeper than {} levels",
                    limits.max_depth
                )));
            }
            for (k, item) in m {
                if k.len() > limits.max_key_len {
                    let mut b =
                        Breach::new(format!("key is longer than {} bytes", limits.max_key_len));
                    b.suffix.push(format!(".{}", truncate(k, 32)));
                    return Err(b);
                }
                check_value(item, limits, depth + 1).map_err(|mut b| {
                    b.suffix.push(format!(".{k}"));
                    b
                })?;
            }
            Ok(())
        }
        Value::Array(items) => {
            if depth + 1 > limits.max_depth {
                return Err(Breach::new(format!(
                    "nests deeper than {} levels",
                    limits.max_depth
                )));
            }
            for (i, item) in items.iter().enumerate() {
                check_value(item, limits, depth + 1).map_err(|mut b| {
                    b.suffix.push(format!("[{i}]"));
                    b
                })?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Types of the context fields the enrichment reads.
fn check_context(context: &Map<String, Value>) -> Result<(), FieldError> {
    if let Some(v) = context.get("ip_address") {
        match v {
            Value::Null => {}
            Value::String(s) if s.parse::<IpAddr>().is_ok() => {}
            _ => {
                return Err(FieldError::invalid(
                    "context.ip_address",
                    "must be an IPv4 or IPv6 address",
                ))
            }
        }
    }
    for key in ["user_agent", "page", "referrer", "session_id"] {
        if let Some(v) = context.get(key) {
            if !(v.is_string() || v.is_null()) {
                return Err(FieldError::invalid(
                    format!("context.{key}"),
                    "must be a string",
                ));
            }
        }
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> EventInput {
        serde_json::from_value(v).unwrap()
    }

    const NOW: i64 = 1_705_761_000 * MICROS_PER_SEC; // 2024-01-20T14:30:00Z

    #[test]
    fn seed_example_validates_and_lifts_ids() {
        let e = validate(
            parse(json!({
                "event_type": "user_action",
                "event_name": "client_created",
                "properties": {"user_id": 123, "project_id": "p-1", "client_id": 456},
                "timestamp": "2024-01-20T14:30:00Z",
                "context": {"ip_address": "192.168.1.100", "page": "/clients/new"}
            })),
            &EventLimits::default(),
            NOW,
        )
        .unwrap();
        assert_eq!(e.event_type, EventType::UserAction);
        assert_eq!(e.user_id.as_deref(), Some("123"));
        assert_eq!(e.project_id.as_deref(), Some("p-1"));
        assert!(!e.properties.contains_key("user_id"));
        assert_eq!(e.properties["client_id"], json!(456));
        assert_eq!(e.timestamp, NOW);
        assert!(e.timestamp_provided);
    }

    #[test]
    fn invalid_type_is_insights_001() {
        let err = validate(
            parse(json!({"event_type": "click", "event_name": "x"})),
            &EventLimits::default(),
            NOW,
        )
        .unwrap_err();
        assert_eq!(err.code, "INSIGHTS_001");
        assert_eq!(err.field, "event_type");
    }

    #[test]
    fn missing_name_and_required_properties_are_insights_002() {
        let limits = EventLimits::default();
        let err = validate(parse(json!({"event_type": "user_action"})), &limits, NOW).unwrap_err();
        assert_eq!(
            (err.code, err.field.as_str()),
            ("INSIGHTS_002", "event_name")
        );

        let err = validate(
            parse(json!({"event_type": "page_view", "event_name": "v"})),
            &limits,
            NOW,
        )
        .unwrap_err();
        assert_eq!(
            (err.code, err.field.as_str()),
            ("INSIGHTS_002", "properties.page")
        );

        // context.page satisfies page_view
        validate(
            parse(json!({"event_type": "page_view", "event_name": "v", "context": {"page": "/"}})),
            &limits,
            NOW,
        )
        .unwrap();
        let err = validate(
            parse(json!({"event_type": "api_call", "event_name": "v", "properties": {"endpoint": " "}})),
            &limits,
            NOW,
        )
        .unwrap_err();
        assert_eq!(err.code, "INSIGHTS_002");
    }

    #[test]
    fn timestamps_far_in_future_or_malformed_are_refused() {
        let limits = EventLimits::default();
        let err = validate(
            parse(json!({"event_type": "user_action", "event_name": "x", "timestamp": "2030-01-01T00:00:00Z"})),
            &limits,
            NOW,
        )
        .unwrap_err();
        assert_eq!(
            (err.code, err.field.as_str()),
            ("INVALID_TIMESTAMP", "timestamp")
        );
        let err = validate(
            parse(
                json!({"event_type": "user_action", "event_name": "x", "timestamp": "yesterday"}),
            ),
            &limits,
            NOW,
        )
        .unwrap_err();
        assert_eq!(err.code, "INVALID_TIMESTAMP");
        // within the skew window is fine
        let ok = validate(
            parse(json!({"event_type": "user_action", "event_name": "x", "timestamp": "2024-01-20T14:32:00Z"})),
            &limits,
            NOW,
        )
        .unwrap();
        assert!(ok.timestamp > NOW);
    }

    #[test]
    fn timestamp_inside_properties_is_used_like_the_seed_js_client() {
        let e = validate(
            parse(json!({"event_type": "user_action", "event_name": "x", "properties": {"timestamp": "2024-01-20T10:00:00Z"}})),
            &EventLimits::default(),
            NOW,
        )
        .unwrap();
        assert!(e.timestamp_provided);
        assert_eq!(time::rfc3339(e.timestamp), "2024-01-20T10:00:00Z");
    }

    #[test]
    fn wrong_types_name_the_field() {
        let limits = EventLimits::default();
        let cases = [
            (
                json!({"event_type": "user_action", "event_name": "x", "properties": []}),
                "properties",
            ),
            (
                json!({"event_type": "user_action", "event_name": "x", "user_id": 1.5}),
                "user_id",
            ),
            (
                json!({"event_type": "user_action", "event_name": "x", "properties": {"user_id": {"a": 1}}}),
                "properties.user_id",
            ),
            (
                json!({"event_type": "user_action", "event_name": "x", "context": {"ip_address": "nope"}}),
                "context.ip_address",
            ),
            (
                json!({"event_type": "user_action", "event_name": 5}),
                "event_name",
            ),
            (
                json!({"event_type": "user_action", "event_name": "x", "id": 5}),
                "id",
            ),
        ];
        for (input, field) in cases {
            let err = validate(parse(input), &limits, NOW).unwrap_err();
            assert_eq!(err.field, field);
            assert_eq!(err.code, "VALIDATION_ERROR");
        }
    }

    #[test]
    fn deep_and_long_values_are_limited() {
        let limits = EventLimits {
            max_depth: 2,
            max_string_len: 10,
            ..Default::default()
        };
        let err = validate(
            parse(json!({"event_type": "user_action", "event_name": "x", "properties": {"a": {"b": {"c": 1}}}})),
            &limits,
            NOW,
        )
        .unwrap_err();
        assert_eq!(err.field, "properties.a.b");
        let err = validate(
            parse(json!({"event_type": "user_action", "event_name": "x", "properties": {"s": "0123456789ab"}})),
            &limits,
            NOW,
        )
        .unwrap_err();
        assert_eq!(err.field, "properties.s");
    }

    #[test]
    fn unknown_top_level_fields_are_refused() {
        let r: Result<EventInput, _> =
            serde_json::from_value(json!({"event_type": "user_action", "evnt_name": "x"}));
        assert!(r.is_err());
    }

    #[test]
    fn type_codes_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::from_code(t.code()), Some(t));
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
    }
}
