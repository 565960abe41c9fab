//! LLM prices and exact cost computation (seeds 000 and 003).
//!
//! Money is an integer number of nano-dollars (1e-9 USD) held in an `i128`: sums are exact
//! and cannot overflow for any amount tally accepts (one record is at most
//! [`MAX_RECORD_COST`]), and rounding happens only at the edge, to 6 decimals in every money
//! field (`docs/numbers.md`). Prices are per
//! million tokens and carry the date they apply from, so a price change never rewrites the
//! cost of past calls: a call is priced with the entry in force on its day.

use std::fmt;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// An amount of money in nano-dollars. `i128`: a sum of `i64`-sized amounts never
/// overflows (2^64 of them would be needed), so money arithmetic neither saturates nor
/// wraps; storage keeps `i64` per row and converts with a checked conversion.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Nanos(pub i128);

pub const NANOS_PER_USD: i128 = 1_000_000_000;

/// The largest cost one usage record may carry (reported or computed): $1,000,000. Anything
/// larger is a unit mistake, and the bound keeps every stored rollup row far from `i64`.
pub const MAX_RECORD_COST: Nanos = Nanos(1_000_000 * NANOS_PER_USD);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a dollar amount with at most 9 decimals")]
pub struct MoneyParseError(String);

impl Nanos {
    pub const ZERO: Nanos = Nanos(0);

    /// Parses a decimal dollar amount exactly ("2.50", "0.075", "15").
    pub fn parse_usd(s: &str) -> Result<Self, MoneyParseError> {
        let err = || MoneyParseError(s.chars().take(40).collect());
        let t = s.trim();
        let (neg, t) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
        if whole.is_empty() && frac.is_empty()
            || !whole.chars().all(|c| c.is_ascii_digit())
            || !frac.chars().all(|c| c.is_ascii_digit())
            || frac.len() > 9
        {
            return Err(err());
        }
        if whole.len() > 20 {
            return Err(err());
        }
        let whole: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| err())?
        };
        let frac_nanos: i128 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<9}").parse().map_err(|_| err())?
        };
        let v = whole
            .checked_mul(NANOS_PER_USD)
            .and_then(|w| w.checked_add(frac_nanos))
            .ok_or_else(err)?;
        Ok(Nanos(if neg { -v } else { v }))
    }

    /// A dollar amount given in JSON as a decimal string (`"2.50"`, exact) or a number
    /// (`2.5`, `1e-4`: a binary float, so rounded to the nearest nano-dollar).
    pub fn parse_usd_json(v: &serde_json::Value) -> Result<Self, MoneyParseError> {
        match v {
            serde_json::Value::String(s) => Self::parse_usd(s),
            serde_json::Value::Number(n) => match crate::number::integer(n) {
                Some(i) => i
                    .checked_mul(NANOS_PER_USD)
                    .map(Nanos)
                    .ok_or_else(|| MoneyParseError(n.to_string())),
                None => match n.as_f64().filter(|f| f.is_finite() && f.abs() < 1e18) {
                    Some(f) => Self::parse_usd(&format!("{f:.9}")),
                    None => Err(MoneyParseError(n.to_string())),
                },
            },
            other => Err(MoneyParseError(
                other.to_string().chars().take(40).collect(),
            )),
        }
    }

    /// Dollars rounded half away from zero to `decimals` (≤ 9) places, as a JSON-friendly
    /// float. Only for display: never feed it back into sums.
    pub fn usd_rounded(self, decimals: u32) -> f64 {
        let decimals = decimals.min(9);
        let unit = 10i128.pow(9 - decimals);
        let q = div_round_half_away(self.0, unit);
        q as f64 / 10f64.powi(decimals as i32)
    }

    /// Dollars rounded to the 6 decimals of every money field.
    pub fn usd(self) -> f64 {
        self.usd_rounded(MONEY_DECIMALS)
    }

    /// The stored form of one row's amount; `None` when it does not fit a 64-bit column.
    pub fn to_i64(self) -> Option<i64> {
        i64::try_from(self.0).ok()
    }
}

/// Decimals of every money field in answers (DESIGN: rounding only at the edge).
pub const MONEY_DECIMALS: u32 = 6;

impl std::ops::Add for Nanos {
    type Output = Nanos;
    /// Exact: operands are sums of amounts bounded far below `i128`'s range.
    fn add(self, o: Nanos) -> Nanos {
        Nanos(self.0 + o.0)
    }
}

impl std::ops::AddAssign for Nanos {
    fn add_assign(&mut self, o: Nanos) {
        self.0 += o.0;
    }
}

impl std::ops::Sub for Nanos {
    type Output = Nanos;
    fn sub(self, o: Nanos) -> Nanos {
        Nanos(self.0 - o.0)
    }
}

impl std::iter::Sum for Nanos {
    fn sum<I: Iterator<Item = Nanos>>(iter: I) -> Nanos {
        iter.fold(Nanos::ZERO, |a, b| a + b)
    }
}

impl From<i64> for Nanos {
    fn from(v: i64) -> Nanos {
        Nanos(i128::from(v))
    }
}

impl fmt::Display for Nanos {
    /// Exact decimal dollars, trailing zeros trimmed ("0.0075").
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let whole = abs / NANOS_PER_USD as u128;
        let frac = abs % NANOS_PER_USD as u128;
        if frac == 0 {
            return write!(f, "{sign}{whole}");
        }
        let frac = format!("{frac:09}");
        write!(f, "{sign}{whole}.{}", frac.trim_end_matches('0'))
    }
}

fn div_round_half_away(n: i128, d: i128) -> i128 {
    let q = n / d;
    let r = n % d;
    if 2 * r.abs() >= d.abs() {
        q + n.signum() * d.signum()
    } else {
        q
    }
}

/// Tokens of one call. `cached_input` is the part of `input` served from the provider's
/// prompt cache; `reasoning` is the part of `output` spent reasoning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    pub reasoning: u64,
}

/// The price of one model from a date on, per million tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPrice {
    pub provider: String,
    pub model: String,
    pub effective_from: NaiveDate,
    pub input_per_mtok: Nanos,
    pub output_per_mtok: Nanos,
    /// Cached input price; `None` bills cached input at the input price.
    pub cached_input_per_mtok: Option<Nanos>,
}

impl ModelPrice {
    /// The exact cost of a call, rounded once (half away from zero) to a nano-dollar.
    /// Cached tokens beyond `input` are treated as all of `input` being cached.
    pub fn cost(&self, usage: &TokenUsage) -> Nanos {
        let cached = usage.cached_input.min(usage.input);
        let uncached = usage.input - cached;
        let cached_price = self.cached_input_per_mtok.unwrap_or(self.input_per_mtok);
        // Tokens are at most 10^9 and prices at most 10^15 nano-dollars per million tokens
        // (validated at ingest), so these products stay far inside i128.
        let total = i128::from(uncached) * self.input_per_mtok.0
            + i128::from(cached) * cached_price.0
            + i128::from(usage.output) * self.output_per_mtok.0;
        Nanos(div_round_half_away(total, 1_000_000))
    }
}

/// Prices in force: a tenant's overrides first, then the shipped defaults. An override
/// applies from its own date on, whatever the defaults do later; before its first date the
/// defaults apply. Either way a call is priced by the entry in force on its day.
#[derive(Debug, Clone, Default)]
pub struct PriceCatalog {
    overrides: Vec<ModelPrice>,
    defaults: Vec<ModelPrice>,
}

fn normalized(mut entries: Vec<ModelPrice>) -> Vec<ModelPrice> {
    for e in &mut entries {
        e.provider = e.provider.to_ascii_lowercase();
        e.model = e.model.to_ascii_lowercase();
    }
    entries
}

impl PriceCatalog {
    pub fn new(defaults: Vec<ModelPrice>) -> Self {
        Self {
            overrides: Vec::new(),
            defaults: normalized(defaults),
        }
    }

    pub fn defaults(&self) -> &[ModelPrice] {
        &self.defaults
    }

    pub fn overrides(&self) -> &[ModelPrice] {
        &self.overrides
    }

    /// This catalog with a tenant's overrides in front.
    pub fn with_overrides(&self, overrides: &[ModelPrice]) -> PriceCatalog {
        PriceCatalog {
            overrides: normalized(overrides.to_vec()),
            defaults: self.defaults.clone(),
        }
    }

    /// The price in force on `day` for a model, matching dated snapshot names
    /// (`gpt-4o-2024-08-06`, `claude-3-5-sonnet-20241022`, `…-latest`) to their family.
    pub fn lookup(&self, provider: &str, model: &str, day: NaiveDate) -> Option<&ModelPrice> {
        let provider = provider.to_ascii_lowercase();
        let model = model.trim().to_ascii_lowercase();
        lookup_in(&self.overrides, &provider, &model, day)
            .or_else(|| lookup_in(&self.defaults, &provider, &model, day))
    }
}

fn lookup_in<'a>(
    entries: &'a [ModelPrice],
    provider: &str,
    model: &str,
    day: NaiveDate,
) -> Option<&'a ModelPrice> {
    let mut name = model;
    loop {
        let found = entries
            .iter()
            .filter(|e| e.provider == provider && e.model == name && e.effective_from <= day)
            .max_by_key(|e| e.effective_from);
        if found.is_some() {
            return found;
        }
        name = strip_snapshot_suffix(name)?;
    }
}

/// `gpt-4o-2024-08-06` → `gpt-4o`; `claude-3-5-sonnet-20241022` → `claude-3-5-sonnet`;
/// `gemini-1.5-pro-002` → `gemini-1.5-pro`; `x-latest` → `x`.
pub fn strip_snapshot_suffix(name: &str) -> Option<&str> {
    let (head, last) = name.rsplit_once('-')?;
    let is_date8 = last.len() == 8 && last.chars().all(|c| c.is_ascii_digit());
    let is_version = last.len() == 3 && last.chars().all(|c| c.is_ascii_digit());
    if is_date8 || is_version || last == "latest" || last == "preview" {
        return Some(head);
    }
    // YYYY-MM-DD: three trailing numeric parts.
    let mut parts = name.rsplitn(4, '-');
    let (d, m, y, rest) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let numeric = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_digit());
    (numeric(y, 4) && numeric(m, 2) && numeric(d, 2)).then_some(rest)
}

fn price(
    provider: &str,
    model: &str,
    from: (i32, u32, u32),
    input: &str,
    output: &str,
    cached: Option<&str>,
) -> ModelPrice {
    let usd = |s: &str| Nanos::parse_usd(s).unwrap_or(Nanos::ZERO);
    ModelPrice {
        provider: provider.into(),
        model: model.into(),
        effective_from: NaiveDate::from_ymd_opt(from.0, from.1, from.2).unwrap_or_default(),
        input_per_mtok: usd(input),
        output_per_mtok: usd(output),
        cached_input_per_mtok: cached.map(usd),
    }
}

/// Shipped list prices (USD per million tokens, standard tier, shortest context band),
/// with the date each applies from. Tenants override them through the API.
#[rustfmt::skip]
pub fn default_catalog() -> PriceCatalog {
    PriceCatalog::new(vec![
        // OpenAI. gpt-4o: launch price, then the alias moved to the cheaper 2024-08-06
        // snapshot. Snapshots are priced as their family.
        price("openai", "gpt-4o",            (2024, 5, 13),  "5.00",  "15.00", None),
        price("openai", "gpt-4o",            (2024, 10, 2),  "2.50",  "10.00", Some("1.25")),
        price("openai", "gpt-4o-mini",       (2024, 7, 18),  "0.15",  "0.60",  Some("0.075")),
        price("openai", "gpt-4.1",           (2025, 4, 14),  "2.00",  "8.00",  Some("0.50")),
        price("openai", "gpt-4.1-mini",      (2025, 4, 14),  "0.40",  "1.60",  Some("0.10")),
        price("openai", "gpt-4.1-nano",      (2025, 4, 14),  "0.10",  "0.40",  Some("0.025")),
        price("openai", "o1",                (2024, 12, 17), "15.00", "60.00", Some("7.50")),
        price("openai", "o3",                (2025, 4, 16),  "10.00", "40.00", Some("2.50")),
        price("openai", "o3",                (2025, 6, 10),  "2.00",  "8.00",  Some("0.50")),
        price("openai", "o3-mini",           (2025, 1, 31),  "1.10",  "4.40",  Some("0.55")),
        price("openai", "o4-mini",           (2025, 4, 16),  "1.10",  "4.40",  Some("0.275")),
        // Anthropic (cached = cache reads)
        price("anthropic", "claude-3-5-sonnet", (2024, 6, 20),  "3.00",  "15.00", Some("0.30")),
        price("anthropic", "claude-3-5-haiku",  (2024, 11, 4),  "0.80",  "4.00",  Some("0.08")),
        price("anthropic", "claude-3-7-sonnet", (2025, 2, 24),  "3.00",  "15.00", Some("0.30")),
        price("anthropic", "claude-sonnet-4",   (2025, 5, 22),  "3.00",  "15.00", Some("0.30")),
        price("anthropic", "claude-opus-4",     (2025, 5, 22),  "15.00", "75.00", Some("1.50")),
        // Google (prompts up to 128k/200k tokens)
        price("google", "gemini-1.5-pro",    (2024, 10, 1),  "1.25",  "5.00",  Some("0.3125")),
        price("google", "gemini-1.5-flash",  (2024, 8, 12),  "0.075", "0.30",  Some("0.01875")),
        price("google", "gemini-2.0-flash",  (2025, 2, 5),   "0.10",  "0.40",  Some("0.025")),
        price("google", "gemini-2.5-pro",    (2025, 6, 17),  "1.25",  "10.00", Some("0.31")),
        price("google", "gemini-2.5-flash",  (2025, 6, 17),  "0.30",  "2.50",  Some("0.075")),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn every_shipped_price_parsed() {
        let c = default_catalog();
        assert!(c.defaults().len() >= 21);
        for p in c.defaults() {
            assert!(
                p.input_per_mtok > Nanos::ZERO && p.output_per_mtok > p.input_per_mtok,
                "{p:?}"
            );
            assert!(
                p.cached_input_per_mtok
                    .is_none_or(|c| c > Nanos::ZERO && c < p.input_per_mtok),
                "{p:?}"
            );
            assert!(p.effective_from > day(2024, 1, 1), "{p:?}");
        }
    }

    #[test]
    fn parses_and_prints_exact_dollars() {
        assert_eq!(Nanos::parse_usd("2.50").unwrap(), Nanos(2_500_000_000));
        assert_eq!(Nanos::parse_usd("0.075").unwrap(), Nanos(75_000_000));
        assert_eq!(Nanos::parse_usd("15").unwrap(), Nanos(15 * NANOS_PER_USD));
        assert_eq!(Nanos::parse_usd(".5").unwrap(), Nanos(500_000_000));
        assert_eq!(
            Nanos::parse_usd("-1.000000001").unwrap(),
            Nanos(-1_000_000_001)
        );
        for bad in [
            "",
            ".",
            "1.2.3",
            "abc",
            "1.0000000001",
            "1e3",
            "100000000000000000000000",
        ] {
            assert!(Nanos::parse_usd(bad).is_err(), "{bad}");
        }
        assert_eq!(Nanos(7_500_000).to_string(), "0.0075");
        assert_eq!(Nanos(-1_500_000_000).to_string(), "-1.5");
        assert_eq!(Nanos(3 * NANOS_PER_USD).to_string(), "3");
    }

    #[test]
    fn rounds_only_at_the_edge() {
        let n = Nanos(125_504_999_999); // $125.504999999
        assert_eq!(n.usd_rounded(2), 125.5);
        assert_eq!(n.usd_rounded(6), 125.505);
        assert_eq!(Nanos(5_000_000).usd_rounded(2), 0.01); // half away from zero
        assert_eq!(Nanos(-5_000_000).usd_rounded(2), -0.01);
    }

    #[test]
    fn costs_from_known_prices() {
        let c = default_catalog();
        let gpt4o = c.lookup("openai", "gpt-4o", day(2025, 1, 1)).unwrap();
        // 1,000 in × $2.50/M + 500 out × $10/M = $0.0025 + $0.005
        let u = TokenUsage {
            input: 1000,
            output: 500,
            ..Default::default()
        };
        assert_eq!(gpt4o.cost(&u), Nanos(7_500_000));
        // 400 of the 1,000 input tokens cached at $1.25/M: 600×2.5 + 400×1.25 + 500×10 = 8,000 $/M
        let cached = TokenUsage {
            input: 1000,
            output: 500,
            cached_input: 400,
            reasoning: 0,
        };
        assert_eq!(gpt4o.cost(&cached), Nanos(7_000_000));
        // One token of gpt-4o-mini input: $0.15/M = 150 nano-dollars, exact.
        let mini = c.lookup("openai", "gpt-4o-mini", day(2025, 1, 1)).unwrap();
        assert_eq!(
            mini.cost(&TokenUsage {
                input: 1,
                ..Default::default()
            }),
            Nanos(150)
        );
        // Sub-nano remainders round once: 1 cached token of gemini-1.5-flash = 18.75 → 19.
        let flash = c
            .lookup("google", "gemini-1.5-flash", day(2025, 1, 1))
            .unwrap();
        assert_eq!(
            flash.cost(&TokenUsage {
                input: 1,
                cached_input: 1,
                ..Default::default()
            }),
            Nanos(19)
        );
    }

    #[test]
    fn a_price_change_applies_from_its_date_only() {
        let c = default_catalog();
        let u = TokenUsage {
            input: 1_000_000,
            output: 1_000_000,
            ..Default::default()
        };
        let before = c.lookup("openai", "o3", day(2025, 6, 9)).unwrap().cost(&u);
        let after = c.lookup("openai", "o3", day(2025, 6, 10)).unwrap().cost(&u);
        assert_eq!(before, Nanos(50 * NANOS_PER_USD));
        assert_eq!(after, Nanos(10 * NANOS_PER_USD));
        assert!(
            c.lookup("openai", "o3", day(2025, 1, 1)).is_none(),
            "not priced before release"
        );
    }

    #[test]
    fn snapshot_names_resolve_to_their_family() {
        let c = default_catalog();
        let d = day(2025, 7, 1);
        assert_eq!(
            c.lookup("openai", "gpt-4o-2024-08-06", d).unwrap().model,
            "gpt-4o"
        );
        assert_eq!(
            c.lookup("OpenAI", "GPT-4o-mini-2024-07-18", d)
                .unwrap()
                .model,
            "gpt-4o-mini"
        );
        assert_eq!(
            c.lookup("anthropic", "claude-3-5-sonnet-20241022", d)
                .unwrap()
                .model,
            "claude-3-5-sonnet"
        );
        assert_eq!(
            c.lookup("anthropic", "claude-3-5-haiku-latest", d)
                .unwrap()
                .model,
            "claude-3-5-haiku"
        );
        assert_eq!(
            c.lookup("google", "gemini-1.5-pro-002", d).unwrap().model,
            "gemini-1.5-pro"
        );
        assert!(c.lookup("openai", "gpt-5-turbo", d).is_none());
        assert!(
            c.lookup("anthropic", "gpt-4o", d).is_none(),
            "provider must match"
        );
    }

    #[test]
    fn tenant_overrides_replace_a_model_entirely() {
        let base = default_catalog();
        let negotiated = ModelPrice {
            provider: "OpenAI".into(),
            model: "gpt-4o".into(),
            effective_from: day(2025, 3, 1),
            input_per_mtok: Nanos::parse_usd("2.00").unwrap(),
            output_per_mtok: Nanos::parse_usd("8.00").unwrap(),
            cached_input_per_mtok: None,
        };
        let o3_deal = ModelPrice {
            model: "o3".into(),
            effective_from: day(2025, 5, 1),
            ..negotiated.clone()
        };
        let c = base.with_overrides(&[negotiated, o3_deal]);
        let u = TokenUsage {
            input: 1_000_000,
            cached_input: 1_000_000,
            ..Default::default()
        };
        let p = c
            .lookup("openai", "gpt-4o-2024-08-06", day(2025, 4, 1))
            .unwrap();
        assert_eq!(
            p.cost(&u),
            Nanos(2 * NANOS_PER_USD),
            "cached billed at input price when unset"
        );
        let before = c.lookup("openai", "gpt-4o", day(2025, 1, 1)).unwrap();
        assert_eq!(
            before.input_per_mtok,
            Nanos(2_500_000_000),
            "before the deal, the list price"
        );
        // The deal holds after the list price of o3 dropped on 2025-06-10.
        let later = c.lookup("openai", "o3", day(2025, 7, 1)).unwrap();
        assert_eq!(later.input_per_mtok, Nanos(2 * NANOS_PER_USD));
        assert_eq!(later.output_per_mtok, Nanos(8 * NANOS_PER_USD));
        assert_eq!(
            c.lookup("openai", "o3", day(2025, 4, 20))
                .unwrap()
                .input_per_mtok,
            Nanos(10 * NANOS_PER_USD)
        );
        assert!(
            c.lookup("openai", "gpt-4o-mini", day(2025, 4, 1)).is_some(),
            "others keep defaults"
        );
    }
}
