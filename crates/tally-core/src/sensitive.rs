//! Detection of sensitive data in event payloads (emails, payment card numbers, secrets
//! and credentials), used by the tracking dry run to tell integrators what they are about
//! to store.

use std::sync::OnceLock;

use regex::Regex;
use serde::Serialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SensitiveKind {
    Email,
    PaymentCard,
    Jwt,
    ApiKey,
    PrivateKey,
    Password,
}

/// Where sensitive data was found and what kind it looks like. The value itself is never
/// echoed back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SensitiveFinding {
    pub field: String,
    pub kind: SensitiveKind,
}

struct Patterns {
    email: Regex,
    card_candidate: Regex,
    jwt: Regex,
    api_key: Regex,
    private_key: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        // These are literals known to compile; a failure would be a programming error
        // caught by the unit tests below.
        #[allow(clippy::unwrap_used)]
        Patterns {
            email: Regex::new(r"(?i)\b[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}\b").unwrap(),
            card_candidate: Regex::new(r"\b(?:\d[ -]?){12,18}\d\b").unwrap(),
            jwt: Regex::new(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}")
                .unwrap(),
            api_key: Regex::new(
                r"\b(?:sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|xox[abposr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|tly_[a-z0-9]{8}_[A-Za-z0-9]{20,})",
            )
            .unwrap(),
            private_key: Regex::new(r"-----BEGIN (?:[A-Z ]+ )?PRIVATE KEY-----").unwrap(),
        }
    })
}

const SECRET_KEY_NAMES: [&str; 8] = [
    "password",
    "passwd",
    "secret",
    "api_key",
    "apikey",
    "access_token",
    "refresh_token",
    "private_key",
];

/// Scans every string (and key name) under `root` and reports what looks sensitive.
pub fn scan(root: &str, map: &Map<String, Value>) -> Vec<SensitiveFinding> {
    let mut out = Vec::new();
    scan_map(root, map, &mut out);
    out
}

fn scan_map(path: &str, map: &Map<String, Value>, out: &mut Vec<SensitiveFinding>) {
    for (k, v) in map {
        let field = format!("{path}.{k}");
        let key = k.to_ascii_lowercase();
        let secret_name = SECRET_KEY_NAMES
            .iter()
            .any(|n| key == *n || key.ends_with(&format!("_{n}")));
        if secret_name && matches!(v, Value::String(s) if !s.is_empty()) {
            out.push(SensitiveFinding {
                field: field.clone(),
                kind: SensitiveKind::Password,
            });
            continue;
        }
        scan_value(&field, v, out);
    }
}

fn scan_value(path: &str, v: &Value, out: &mut Vec<SensitiveFinding>) {
    match v {
        Value::String(s) => {
            if let Some(kind) = classify(s) {
                out.push(SensitiveFinding {
                    field: path.to_owned(),
                    kind,
                });
            }
        }
        Value::Number(n) => {
            let digits = n.to_string();
            if digits.len() >= 13 && digits.len() <= 19 && luhn_valid(&digits) {
                out.push(SensitiveFinding {
                    field: path.to_owned(),
                    kind: SensitiveKind::PaymentCard,
                });
            }
        }
        Value::Object(m) => scan_map(path, m, out),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                scan_value(&format!("{path}[{i}]"), item, out);
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
}

/// The first kind of sensitive data a string contains, if any.
pub fn classify(s: &str) -> Option<SensitiveKind> {
    let p = patterns();
    if p.private_key.is_match(s) {
        return Some(SensitiveKind::PrivateKey);
    }
    if p.jwt.is_match(s) {
        return Some(SensitiveKind::Jwt);
    }
    if p.api_key.is_match(s) {
        return Some(SensitiveKind::ApiKey);
    }
    if p.email.is_match(s) {
        return Some(SensitiveKind::Email);
    }
    let card = p.card_candidate.find_iter(s).any(|m| {
        let digits: String = m.as_str().chars().filter(char::is_ascii_digit).collect();
        (13..=19).contains(&digits.len()) && luhn_valid(&digits)
    });
    card.then_some(SensitiveKind::PaymentCard)
}

/// Luhn checksum, as used by payment card numbers.
pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, c) in digits.chars().rev().enumerate() {
        let Some(mut d) = c.to_digit(10) else {
            return false;
        };
        if !i.is_multiple_of(2) {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_each_kind_with_its_path() {
        let props = json!({
            "client_email": "newclient@example.com",
            "card": "4111 1111 1111 1111",
            "token": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "nested": {"openai": "sk-proj-abcdefghijklmnopqrstuvwx"},
            "db_password": "hunter2",
            "list": ["fine", "AKIAABCDEFGHIJKLMNOP"],
            "card_number": 4111111111111111u64,
        });
        let found = scan("properties", props.as_object().unwrap());
        let kinds: Vec<_> = found.iter().map(|f| (f.field.as_str(), f.kind)).collect();
        assert!(kinds.contains(&("properties.client_email", SensitiveKind::Email)));
        assert!(kinds.contains(&("properties.card", SensitiveKind::PaymentCard)));
        assert!(kinds.contains(&("properties.token", SensitiveKind::Jwt)));
        assert!(kinds.contains(&("properties.nested.openai", SensitiveKind::ApiKey)));
        assert!(kinds.contains(&("properties.db_password", SensitiveKind::Password)));
        assert!(kinds.contains(&("properties.list[1]", SensitiveKind::ApiKey)));
        assert!(kinds.contains(&("properties.card_number", SensitiveKind::PaymentCard)));
        assert_eq!(found.len(), 7);
    }

    #[test]
    fn ordinary_values_are_clean() {
        let props = json!({"user_id": 999, "test": true, "page": "/dashboard", "order": "1234567890123", "session_id": "550e8400-e29b-41d4-a716-446655440000"});
        assert!(scan("properties", props.as_object().unwrap()).is_empty());
    }

    #[test]
    fn luhn() {
        assert!(luhn_valid("4111111111111111"));
        assert!(luhn_valid("79927398713"));
        assert!(!luhn_valid("4111111111111112"));
        assert!(!luhn_valid(""));
    }
}
