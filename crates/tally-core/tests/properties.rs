//! Property tests for the parsers of untrusted input: whatever JSON arrives, validation
//! returns a result (never panics) and every refusal names a field with a stable code.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure report

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tally_core::event::{validate, EventInput, EventLimits};
use tally_core::sensitive::{luhn_valid, scan};

const NOW: i64 = 1_705_761_000_000_000;
const CODES: [&str; 4] = [
    "INSIGHTS_001",
    "INSIGHTS_002",
    "VALIDATION_ERROR",
    "INVALID_TIMESTAMP",
];

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        prop_oneof![
            Just("user_action"),
            Just("page_view"),
            Just("api_call"),
            Just("error_occurred")
        ]
        .prop_map(Value::from),
        Just(Value::from("2024-01-20T14:30:00Z")),
        Just(Value::from("81.2.69.160")),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn arb_event() -> impl Strategy<Value = Value> {
    let field = |name: &'static str| {
        prop_oneof![Just(None), arb_json().prop_map(Some)].prop_map(move |v| (name, v))
    };
    (
        field("id"),
        field("event_type"),
        field("event_name"),
        field("properties"),
        field("timestamp"),
        field("context"),
        field("user_id"),
        field("project_id"),
    )
        .prop_map(|fields| {
            let (a, b, c, d, e, f, g, h) = fields;
            let mut m = Map::new();
            for (k, v) in [a, b, c, d, e, f, g, h] {
                if let Some(v) = v {
                    m.insert(k.to_owned(), v);
                }
            }
            Value::Object(m)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn validation_never_panics_and_refusals_name_a_field(raw in arb_event()) {
        let input: EventInput = serde_json::from_value(raw).unwrap();
        match validate(input, &EventLimits::default(), NOW) {
            Ok(e) => {
                prop_assert!(!e.event_name.is_empty());
                prop_assert!(!e.properties.contains_key("user_id"));
                prop_assert!(!e.properties.contains_key("project_id"));
            }
            Err(err) => {
                prop_assert!(CODES.contains(&err.code), "unexpected code {}", err.code);
                prop_assert!(!err.field.is_empty());
                prop_assert!(!err.message.is_empty());
            }
        }
    }

    #[test]
    fn valid_core_fields_always_pass(name in "[a-zA-Z_]{1,50}", user in any::<u32>(), props in prop::collection::btree_map("[a-z]{1,8}", any::<i32>(), 0..10)) {
        let mut properties: Map<String, Value> = props.into_iter().map(|(k, v)| (k, json!(v))).collect();
        properties.insert("user_id".into(), json!(user));
        let input: EventInput = serde_json::from_value(json!({
            "event_type": "user_action", "event_name": name, "properties": properties
        })).unwrap();
        let e = validate(input, &EventLimits::default(), NOW).unwrap();
        prop_assert_eq!(e.user_id, Some(user.to_string()));
        prop_assert_eq!(e.timestamp, NOW);
    }

    #[test]
    fn luhn_detects_every_single_digit_change(digits in "[0-9]{12,18}") {
        // Append the check digit that makes the number valid, then corrupt one digit.
        let check = (0..10u32).find(|d| luhn_valid(&format!("{digits}{d}"))).unwrap();
        let valid = format!("{digits}{check}");
        prop_assert!(luhn_valid(&valid));
        let mut bytes = valid.into_bytes();
        bytes[0] = b'0' + ((bytes[0] - b'0' + 1) % 10);
        prop_assert!(!luhn_valid(std::str::from_utf8(&bytes).unwrap()));
    }

    #[test]
    fn scanning_never_panics_and_never_echoes_values(raw in arb_json()) {
        if let Value::Object(m) = raw {
            for f in scan("properties", &m) {
                prop_assert!(f.field.starts_with("properties."));
            }
        }
    }
}

mod money {
    use proptest::prelude::*;
    use tally_core::pricing::{default_catalog, Nanos, TokenUsage, MAX_RECORD_COST};

    fn usage() -> impl Strategy<Value = TokenUsage> {
        (0u64..5_000_000, 0u64..5_000_000, 0u64..6_000_000).prop_map(|(input, output, cached)| {
            TokenUsage {
                input,
                output,
                cached_input: cached,
                reasoning: 0,
            }
        })
    }

    proptest! {
        #[test]
        fn dollar_text_round_trips_exactly(n in -10i128.pow(20)..10i128.pow(20)) {
            let text = Nanos(n).to_string();
            prop_assert_eq!(Nanos::parse_usd(&text).unwrap(), Nanos(n));
        }

        /// Money sums neither saturate nor wrap: any number of amounts up to the largest a
        /// record may carry adds up exactly, in any grouping, past `i64`'s range.
        #[test]
        fn money_sums_are_exact_past_sixty_four_bits(
            amounts in prop::collection::vec(0i128..=MAX_RECORD_COST.0, 1..50),
            copies in 1i128..20_000,
            split in 0usize..50,
        ) {
            let one_pass: Nanos = amounts.iter().map(|a| Nanos(*a)).sum();
            let split = split.min(amounts.len());
            let (left, right) = amounts.split_at(split);
            let grouped = left.iter().map(|a| Nanos(*a)).sum::<Nanos>()
                + right.iter().map(|a| Nanos(*a)).sum::<Nanos>();
            prop_assert_eq!(one_pass, grouped);
            // `copies` of the batch, added one by one, equal the product computed directly.
            let mut total = Nanos::ZERO;
            for _ in 0..copies.min(200) {
                total += one_pass;
            }
            prop_assert_eq!(total.0, one_pass.0 * copies.min(200));
            let big = Nanos(i128::from(i64::MAX)) + Nanos(i128::from(i64::MAX));
            prop_assert_eq!(big.0, 2 * i128::from(i64::MAX));
            prop_assert!(big.to_i64().is_none(), "a 64-bit column refuses it instead of wrapping");
            // The 6-decimal edge rounding of a sum is the sum's exact value to 1e-6 dollars.
            let usd = Nanos(one_pass.0 * copies).usd();
            let exact = (one_pass.0 * copies) as f64 / 1e9;
            prop_assert!((usd - exact).abs() <= exact * 1e-15 + 5e-7, "{usd} vs {exact}");
        }

        /// Splitting a call's tokens in two changes the total by at most one rounding step
        /// per part, and cost never decreases with more tokens.
        #[test]
        fn cost_is_additive_within_rounding_and_monotonic(a in usage(), b in usage()) {
            let catalog = default_catalog();
            let day = chrono::NaiveDate::from_ymd_opt(2025, 8, 1).unwrap();
            for (provider, model) in [("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4"), ("google", "gemini-1.5-flash")] {
                let p = catalog.lookup(provider, model, day).unwrap();
                let a = TokenUsage { cached_input: a.cached_input.min(a.input), ..a };
                let b = TokenUsage { cached_input: b.cached_input.min(b.input), ..b };
                let sum = TokenUsage {
                    input: a.input + b.input,
                    output: a.output + b.output,
                    cached_input: a.cached_input + b.cached_input,
                    reasoning: 0,
                };
                let split = p.cost(&a).0 + p.cost(&b).0;
                prop_assert!((p.cost(&sum).0 - split).abs() <= 1);
                prop_assert!(p.cost(&sum) >= p.cost(&a));
            }
        }
    }
}

mod usage_records {
    use super::arb_json;
    use proptest::prelude::*;
    use serde_json::{Map, Value};
    use tally_core::pricing::{default_catalog, Nanos};
    use tally_core::usage::{validate_usage, UsageInput};

    const FIELDS: [&str; 12] = [
        "provider",
        "model",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "reasoning_tokens",
        "latency_ms",
        "time_to_first_token_ms",
        "status",
        "cost_usd",
        "timestamp",
        "user_id",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn usage_validation_never_panics_and_costs_are_non_negative(values in prop::collection::vec(arb_json(), FIELDS.len())) {
            let mut m = Map::new();
            m.insert("provider".into(), Value::from("openai"));
            m.insert("model".into(), Value::from("gpt-4o"));
            for (k, v) in FIELDS.iter().zip(values) {
                if !v.is_null() {
                    m.insert((*k).into(), v);
                }
            }
            let input: UsageInput = serde_json::from_value(Value::Object(m)).unwrap();
            match validate_usage(input, &default_catalog(), 1_754_006_400_000_000, 300) {
                Ok(r) => {
                    prop_assert!(r.cost >= Nanos::ZERO);
                    prop_assert!(r.tokens.cached_input <= r.tokens.input);
                }
                Err(e) => prop_assert!(!e.field.is_empty() && !e.message.is_empty()),
            }
        }
    }
}
