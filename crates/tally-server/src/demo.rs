//! Demo data: a tenant with projects, tracked users and 30 days of realistic events, loaded
//! through the same service path as real traffic, so a newcomer sees data at once.

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tally_core::activity::{Project, UserProfile};
use tally_core::auth::{Role, Scope};
use tally_core::enrich::{write_city_database, CityNetwork};
use tally_core::event::EventInput;
use tally_core::time::{MICROS_PER_DAY, MICROS_PER_SEC};
use tally_core::TenantId;

use crate::AppState;
use tally_access::tenancy::NewAccount;

const DEMO_SETTING: &str = "demo.tenant_id";
/// The demo's tenant ids while a load is under way.
const LOADING_SETTING: &str = "demo.loading";
const DEMO_EMAIL: &str = "demo@tally.local";
pub const DEMO_DAYS: i64 = 30;
const EVENTS_PER_DAY: i64 = 400;

const PROJECTS: [(&str, &str); 3] = [
    ("gestion-client", "Gestion Client"),
    ("e-commerce", "E-commerce"),
    ("support-desk", "Support Desk"),
];
const USERS: [(&str, &str, &str); 8] = [
    ("Ada Lovelace", "ada@demo.example", "OWNER"),
    ("Alan Turing", "alan@demo.example", "MEMBER"),
    ("Grace Hopper", "grace@demo.example", "MEMBER"),
    ("Edsger Dijkstra", "edsger@demo.example", "MEMBER"),
    ("Barbara Liskov", "barbara@demo.example", "ADMIN"),
    ("Ken Thompson", "ken@demo.example", "MEMBER"),
    ("Margaret Hamilton", "margaret@demo.example", "VIEWER"),
    ("Donald Knuth", "donald@demo.example", "MEMBER"),
];
const AGENTS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
];
const PAGES: [&str; 4] = ["/dashboard", "/clients", "/orders", "/reports"];
const FEATURES: [&str; 3] = ["ai_summary", "bulk_export", "smart_search"];
const ACTIONS: [&str; 6] = [
    "client_created",
    "client_updated",
    "invoice_sent",
    "order_placed",
    "ticket_closed",
    "report_exported",
];

/// The demo's GeoIP database: invented assignments of public address ranges to cities,
/// written into the data dir when no database is configured, so the demo's map fills.
pub const DEMO_CITIES: [CityNetwork<'static>; 10] = [
    CityNetwork {
        network: "81.2.69.0/24",
        city: "Paris",
        country_code: "FR",
        country: "France",
        latitude: 48.8566,
        longitude: 2.3522,
    },
    CityNetwork {
        network: "82.64.0.0/16",
        city: "Lyon",
        country_code: "FR",
        country: "France",
        latitude: 45.764,
        longitude: 4.8357,
    },
    CityNetwork {
        network: "87.128.0.0/16",
        city: "Berlin",
        country_code: "DE",
        country: "Germany",
        latitude: 52.52,
        longitude: 13.405,
    },
    CityNetwork {
        network: "86.128.0.0/16",
        city: "London",
        country_code: "GB",
        country: "United Kingdom",
        latitude: 51.5072,
        longitude: -0.1276,
    },
    CityNetwork {
        network: "83.160.0.0/16",
        city: "Amsterdam",
        country_code: "NL",
        country: "Netherlands",
        latitude: 52.3676,
        longitude: 4.9041,
    },
    CityNetwork {
        network: "88.12.0.0/16",
        city: "Madrid",
        country_code: "ES",
        country: "Spain",
        latitude: 40.4168,
        longitude: -3.7038,
    },
    CityNetwork {
        network: "24.48.0.0/16",
        city: "Montréal",
        country_code: "CA",
        country: "Canada",
        latitude: 45.5019,
        longitude: -73.5674,
    },
    CityNetwork {
        network: "73.162.0.0/16",
        city: "San Francisco",
        country_code: "US",
        country: "United States",
        latitude: 37.7749,
        longitude: -122.4194,
    },
    CityNetwork {
        network: "100.8.0.0/16",
        city: "New York",
        country_code: "US",
        country: "United States",
        latitude: 40.7128,
        longitude: -74.006,
    },
    CityNetwork {
        network: "126.0.0.0/16",
        city: "Tokyo",
        country_code: "JP",
        country: "Japan",
        latitude: 35.6762,
        longitude: 139.6503,
    },
];

/// The file name of the demo GeoIP database in the data dir.
pub const DEMO_GEOIP_FILE: &str = "demo-geoip.mmdb";

/// Writes the demo GeoIP database to `path`.
pub fn write_geoip(path: &std::path::Path) -> anyhow::Result<()> {
    write_city_database(path, &DEMO_CITIES)
        .with_context(|| format!("failed to write the demo GeoIP database {}", path.display()))
}

/// An address inside a city's network.
fn city_address(rng: &mut StdRng, city: &CityNetwork<'_>) -> String {
    let base = city.network.split('/').next().unwrap_or("81.2.69.0");
    let octets: Vec<&str> = base.split('.').collect();
    match city.network.ends_with("/24") {
        true => format!(
            "{}.{}.{}.{}",
            octets[0],
            octets[1],
            octets[2],
            rng.gen_range(1..255)
        ),
        false => format!(
            "{}.{}.{}.{}",
            octets[0],
            octets[1],
            rng.gen_range(0..256),
            rng.gen_range(1..255)
        ),
    }
}

/// Loads the demo tenant unless it exists. Returns what to tell the person who asked.
///
/// Idempotent and resumable: the ids of the tenants about to be made are recorded before
/// anything is created (`demo.loading`), and the demo counts as loaded only once
/// `demo.tenant_id` is written at the very end. A load cut short (a `kill -9`) is found at
/// the next start, its tenants are deleted through the deletion path, and the load starts
/// over; a loaded demo is reused with a fresh password and key, so the credentials printed
/// always work.
pub async fn seed(state: &AppState) -> anyhow::Result<String> {
    let stores = &state.stores;
    let e = |e: tally_access::AccessError| anyhow::anyhow!("{e}");
    let mut notes = String::new();
    if let Some(unfinished) = stores.identity.get_setting(LOADING_SETTING).await? {
        for id in unfinished
            .split(',')
            .filter_map(|s| s.parse::<TenantId>().ok())
        {
            if stores.identity.get_tenant(id).await?.is_some() {
                stores.deletion.delete_tenant(id).await?;
            }
        }
        stores.identity.put_setting(LOADING_SETTING, None).await?;
        notes.push_str("removed an unfinished demo load; loading it again\n");
    }
    if let Some(id) = stores.identity.get_setting(DEMO_SETTING).await? {
        match id.parse::<TenantId>() {
            Ok(tenant) if stores.identity.get_tenant(tenant).await?.is_some() => {
                let (password, key) = fresh_credentials(state, tenant).await?;
                return Ok(format!(
                    "demo data already loaded (tenant {tenant}); new credentials:\n  log in:  {DEMO_EMAIL} / {password}\n  API key: {key}"
                ));
            }
            // The demo tenant was deleted since: load it again.
            _ => stores.identity.put_setting(DEMO_SETTING, None).await?,
        }
    }
    let ids = [
        TenantId::generate(),
        TenantId::generate(),
        TenantId::generate(),
    ];
    let recorded: Vec<String> = ids.iter().map(ToString::to_string).collect();
    stores
        .identity
        .put_setting(LOADING_SETTING, Some(&recorded.join(",")))
        .await?;
    let tenant = state
        .access
        .create_tenant_as(ids[0], "Demo Company", None)
        .await
        .map_err(e)?;
    let password = tally_core::auth::generate_password();
    state
        .access
        .create_account(NewAccount {
            tenant_id: tenant.id,
            email: DEMO_EMAIL,
            password: &password,
            role: Role::Owner,
        })
        .await
        .map_err(e)?;
    let key = demo_key(state, tenant.id).await?;
    let events = load_events(state, tenant.id).await?;
    let quotas = load_quotas(state, tenant.id).await?;
    let mut calls = load_ai_usage(state, tenant.id, 1).await?;
    // Two more tenants, so cross-tenant admin views have something to compare.
    for (i, name) in ["Acme Robotics", "Globex Retail"].into_iter().enumerate() {
        let other = state
            .access
            .create_tenant_as(ids[1 + i], name, None)
            .await
            .map_err(e)?;
        calls += load_ai_usage(state, other.id, 2 + i as u64).await?;
    }
    // Loaded, and no longer loading, in one transaction.
    stores
        .identity
        .put_settings(vec![
            (DEMO_SETTING.to_owned(), Some(tenant.id.to_string())),
            (LOADING_SETTING.to_owned(), None),
        ])
        .await?;
    Ok(format!(
        "{notes}loaded demo tenant {} with {events} events over {DEMO_DAYS} days and {calls} AI calls over {AI_DAYS} days (3 tenants) and {quotas} quotas\n  log in:  {DEMO_EMAIL} / {password}\n  API key: {key}",
        tenant.id
    ))
}

/// A new ingest-and-read key for the demo tenant.
async fn demo_key(state: &AppState, tenant: TenantId) -> anyhow::Result<String> {
    let (_, key) = state
        .access
        .create_api_key(tenant, "demo", [Scope::Ingest, Scope::Read].into())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(key)
}

/// A new password for the demo account (ending its sessions) and a new key.
async fn fresh_credentials(state: &AppState, tenant: TenantId) -> anyhow::Result<(String, String)> {
    let stores = &state.stores;
    let account = stores
        .identity
        .find_account_by_email(DEMO_EMAIL)
        .await?
        .filter(|a| a.tenant_id == tenant)
        .ok_or_else(|| anyhow::anyhow!("the demo account {DEMO_EMAIL} no longer exists"))?;
    let password = tally_core::auth::generate_password();
    let hash = state
        .auth
        .hash_password(&password)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    stores
        .identity
        .set_password(tenant, account.id, &hash)
        .await?;
    state.auth.forget_account(account.id);
    Ok((password, demo_key(state, tenant).await?))
}

async fn load_events(state: &AppState, tenant: TenantId) -> anyhow::Result<usize> {
    let now = state.clock.now_micros();
    for (id, name) in PROJECTS {
        state
            .insights
            .upsert_project(
                tenant,
                Project {
                    project_id: id.into(),
                    name: name.into(),
                    organization_name: Some("Demo Company".into()),
                    created_at: now,
                    updated_at: now,
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    for (i, (name, email, role)) in USERS.iter().enumerate() {
        state
            .insights
            .upsert_user(
                tenant,
                UserProfile {
                    user_id: (100 + i).to_string(),
                    email: Some((*email).into()),
                    full_name: Some((*name).into()),
                    role: Some((*role).into()),
                    created_at: now,
                    updated_at: now,
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }

    let mut rng = StdRng::seed_from_u64(42);
    let start = now - DEMO_DAYS * MICROS_PER_DAY;
    let total = (DEMO_DAYS * EVENTS_PER_DAY) as usize;
    let mut stored = 0;
    let mut batch = Vec::with_capacity(500);
    for i in 0..total {
        // Spread over the period, denser during working hours.
        let mut ts = start + rng.gen_range(0..DEMO_DAYS * MICROS_PER_DAY);
        let hour = (ts / (3600 * MICROS_PER_SEC)) % 24;
        if !(8..19).contains(&hour) && rng.gen_bool(0.6) {
            ts -= (hour - 13).signum() * 6 * 3600 * MICROS_PER_SEC;
        }
        let ts = if ts >= now { ts - MICROS_PER_DAY } else { ts };
        // Received a moment after it happened, as a live client would send it.
        let received_at = (ts + rng.gen_range(40_000..900_000)).min(now);
        batch.push((Ok(demo_event(&mut rng, ts, i)), received_at));
        if batch.len() == 500 || i + 1 == total {
            let outcomes = state
                .insights
                .track_received(tenant, std::mem::take(&mut batch), None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            stored += outcomes
                .iter()
                .filter(|o| matches!(o, tally_insights::TrackOutcome::Accepted(_)))
                .count();
        }
    }
    Ok(stored)
}

pub const AI_DAYS: i64 = 90;

/// How one model behaves: traffic share, token sizes, latency and time to first token
/// (medians of log-normal distributions with a long tail), reasoning, and answer quality.
struct ModelProfile {
    provider: &'static str,
    model: &'static str,
    weight: u32,
    input_median: f64,
    output_median: f64,
    latency_median_ms: f64,
    ttft_median_ms: f64,
    /// Share of output tokens spent reasoning: `(min, max)`, or none.
    reasoning: Option<(f64, f64)>,
    quality_mean: f64,
}

const AI_MODELS: [ModelProfile; 6] = [
    ModelProfile {
        provider: "openai",
        model: "gpt-4o",
        weight: 30,
        input_median: 1_800.0,
        output_median: 350.0,
        latency_median_ms: 1_900.0,
        ttft_median_ms: 450.0,
        reasoning: None,
        quality_mean: 8.4,
    },
    ModelProfile {
        provider: "openai",
        model: "gpt-4o-mini",
        weight: 30,
        input_median: 1_200.0,
        output_median: 250.0,
        latency_median_ms: 950.0,
        ttft_median_ms: 300.0,
        reasoning: None,
        quality_mean: 7.4,
    },
    ModelProfile {
        provider: "openai",
        model: "o3",
        weight: 5,
        input_median: 3_000.0,
        output_median: 2_200.0,
        latency_median_ms: 14_000.0,
        ttft_median_ms: 6_500.0,
        reasoning: Some((0.45, 0.85)),
        quality_mean: 9.1,
    },
    ModelProfile {
        provider: "anthropic",
        model: "claude-sonnet-4",
        weight: 20,
        input_median: 2_500.0,
        output_median: 600.0,
        latency_median_ms: 3_200.0,
        ttft_median_ms: 800.0,
        reasoning: None,
        quality_mean: 8.8,
    },
    ModelProfile {
        provider: "anthropic",
        model: "claude-3-5-haiku",
        weight: 10,
        input_median: 900.0,
        output_median: 200.0,
        latency_median_ms: 900.0,
        ttft_median_ms: 350.0,
        reasoning: None,
        quality_mean: 7.6,
    },
    ModelProfile {
        provider: "google",
        model: "gemini-2.5-flash",
        weight: 5,
        input_median: 1_500.0,
        output_median: 400.0,
        latency_median_ms: 1_300.0,
        ttft_median_ms: 400.0,
        reasoning: Some((0.1, 0.4)),
        quality_mean: 8.2,
    },
];

/// Failures as providers report them: (error type, status, weight).
const FAILURES: [(&str, &str, u32); 6] = [
    ("rate_limited", "error", 40),
    ("timeout", "timeout", 20),
    ("server_error", "error", 15),
    ("overloaded", "error", 10),
    ("context_length_exceeded", "error", 10),
    ("content_filter", "error", 5),
];

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A log-normal draw with the given median: most values near it, a long tail above.
fn log_normal(rng: &mut StdRng, median: f64, sigma: f64) -> f64 {
    median * (sigma * normal(rng)).exp()
}

/// Picks by weight.
fn weighted<'a, T>(rng: &mut StdRng, items: &'a [T], weight: impl Fn(&T) -> u32) -> &'a T {
    let total: u32 = items.iter().map(&weight).sum();
    let mut pick = rng.gen_range(0..total.max(1));
    for item in items {
        if pick < weight(item) {
            return item;
        }
        pick -= weight(item);
    }
    &items[0]
}

const HOURS: [i64; 24] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
];

/// How busy an hour of the day is (UTC), relative to the busiest.
const HOURLY_TRAFFIC: [u32; 24] = [
    2, 1, 1, 1, 1, 2, 4, 7, 10, 12, 12, 11, 9, 11, 12, 12, 11, 9, 7, 6, 5, 4, 3, 2,
];

/// Budgets a team would set: a daily and a monthly USD budget, a token cap on the most
/// expensive model, and a per-user request limit.
async fn load_quotas(state: &AppState, tenant: TenantId) -> anyhow::Result<usize> {
    let rules: Vec<tally_core::quota::QuotaInput> = serde_json::from_value(json!([
        {"name": "Daily AI budget", "metric": "cost_usd", "window": "day", "limit": "2.50"},
        {"name": "Monthly AI budget", "metric": "cost_usd", "window": "month", "limit": "60"},
        {"name": "GPT-4o tokens", "metric": "tokens", "window": "day", "limit": 60000,
         "provider": "openai", "model": "gpt-4o", "enforce": false},
        {"name": "Per-user daily calls", "metric": "requests", "window": "day", "limit": 25, "user_id": "101"}
    ]))?;
    let inputs = rules.into_iter().map(Ok).collect();
    let stored = state
        .quotas
        .configure(tenant, inputs)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(stored.len())
}

/// 90 days of LLM calls through the usage service, shaped like real traffic: growth,
/// quieter weekends and nights, log-normal token counts and latencies with long tails,
/// time to first token from its own distribution, reasoning tokens for reasoning models,
/// prompt caching on follow-up turns, per-model answer quality (not every call scored),
/// several kinds of failure, and one afternoon when a provider was degraded.
async fn load_ai_usage(state: &AppState, tenant: TenantId, seed: u64) -> anyhow::Result<usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    let now = state.clock.now_micros();
    let hour = 3_600 * MICROS_PER_SEC;
    let today = now.div_euclid(MICROS_PER_DAY) * MICROS_PER_DAY;
    // Anthropic had a bad afternoon twelve days ago: overloaded, slow.
    let incident = (
        today - 12 * MICROS_PER_DAY + 14 * hour,
        today - 12 * MICROS_PER_DAY + 17 * hour,
    );
    let mut stored = 0;
    let mut batch = Vec::with_capacity(500);
    let mut n = 0u64;
    let mut turns: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    for day in (0..AI_DAYS).rev() {
        let day_start = today - day * MICROS_PER_DAY;
        let weekday = (day_start / MICROS_PER_DAY + 4).rem_euclid(7); // 0 = Sunday
        let weekend = if weekday == 0 || weekday == 6 {
            0.45
        } else {
            1.0
        };
        // Traffic grows about 1 % a day.
        let calls =
            (40.0 * (1.0 + (AI_DAYS - day) as f64 * 0.01) * (0.5 + seed as f64 * 0.25) * weekend)
                as u64;
        for _ in 0..calls {
            n += 1;
            let h = *weighted(&mut rng, &HOURS, |h| HOURLY_TRAFFIC[*h as usize]);
            let mut ts = day_start + h * hour + rng.gen_range(0..hour);
            if ts >= now {
                // Today has usage at any hour: a quarter of the calls still to come today
                // happen in the part of the day that has passed.
                if !rng.gen_bool(0.25) {
                    continue;
                }
                ts = day_start + rng.gen_range(0..(now - day_start).max(1));
            }
            let m = weighted(&mut rng, &AI_MODELS, |m| m.weight);
            let user = 100 + (rng.gen_range(0.0f64..1.0).powi(2) * USERS.len() as f64) as usize;
            let conversation = format!(
                "conv-{user}-{}",
                (now - ts) / MICROS_PER_DAY / 2 * 3 + rng.gen_range(0..3)
            );
            let turn = turns.entry(conversation.clone()).or_insert(0);
            *turn += 1;
            let in_incident = m.provider == "anthropic" && (incident.0..incident.1).contains(&ts);
            let error_rate = match m.provider {
                "openai" => 0.015,
                "anthropic" if in_incident => 0.25,
                "anthropic" => 0.025,
                _ => 0.03,
            };
            let input_tokens =
                log_normal(&mut rng, m.input_median, 0.6).clamp(20.0, 120_000.0) as u64;
            // Follow-up turns reuse the conversation's prefix from the provider's cache.
            let cached_tokens = if *turn > 1 && rng.gen_bool(0.7) {
                (input_tokens as f64 * rng.gen_range(0.3..0.9)) as u64
            } else {
                0
            };
            let mut latency_ms = log_normal(&mut rng, m.latency_median_ms, 0.45);
            if rng.gen_bool(0.02) {
                latency_ms *= rng.gen_range(3.0..8.0); // the long tail users notice
            }
            if in_incident {
                latency_ms *= 2.5;
            }
            let ttft_ms = log_normal(&mut rng, m.ttft_median_ms, 0.4).min(latency_ms * 0.95);
            let cancelled = rng.gen_bool(0.005);
            let failure = rng
                .gen_bool(error_rate)
                .then(|| *weighted(&mut rng, &FAILURES, |f| f.2));
            let (status, error_type, output_tokens, latency_ms) = match failure {
                Some((kind, status, _)) => {
                    let latency = if status == "timeout" {
                        rng.gen_range(30_000.0..60_000.0)
                    } else {
                        log_normal(&mut rng, 350.0, 0.5)
                    };
                    (status, Some(kind), 0, latency)
                }
                None if cancelled => (
                    "cancelled",
                    Some("client_closed"),
                    (log_normal(&mut rng, m.output_median, 0.7) * rng.gen_range(0.05..0.5)) as u64,
                    latency_ms * 0.4,
                ),
                None => (
                    "success",
                    None,
                    log_normal(&mut rng, m.output_median, 0.7).clamp(1.0, 32_000.0) as u64,
                    latency_ms,
                ),
            };
            let reasoning_tokens = match (m.reasoning, status) {
                (Some((lo, hi)), "success") => {
                    (output_tokens as f64 * rng.gen_range(lo..hi)) as u64
                }
                _ => 0,
            };
            let quality = (status == "success" && rng.gen_bool(0.7)).then(|| {
                ((m.quality_mean + 0.7 * normal(&mut rng)).clamp(0.0, 10.0) * 10.0).round() / 10.0
            });
            batch.push(Ok(tally_core::usage::UsageInput {
                id: Some(json!(format!("demo-ai-{seed}-{n}"))),
                user_id: Some(json!(user)),
                conversation_id: Some(json!(conversation)),
                provider: Some(json!(m.provider)),
                model: Some(json!(m.model)),
                input_tokens: Some(json!(input_tokens)),
                output_tokens: Some(json!(output_tokens)),
                cached_tokens: Some(json!(cached_tokens)),
                reasoning_tokens: Some(json!(reasoning_tokens)),
                latency_ms: Some(json!((latency_ms * 10.0).round() / 10.0)),
                time_to_first_token_ms: failure
                    .is_none()
                    .then(|| json!((ttft_ms.min(latency_ms) * 10.0).round() / 10.0)),
                status: Some(json!(status)),
                error_type: error_type.map(|e| json!(e)),
                quality_score: quality.map(|q| json!(q)),
                timestamp: Some(json!(tally_core::time::rfc3339(ts))),
                ..Default::default()
            }));
            if batch.len() == 500 {
                stored += store_usage(state, tenant, std::mem::take(&mut batch)).await?;
            }
        }
    }
    stored += store_usage(state, tenant, batch).await?;
    Ok(stored)
}

async fn store_usage(
    state: &AppState,
    tenant: TenantId,
    batch: Vec<Result<tally_core::usage::UsageInput, tally_core::FieldError>>,
) -> anyhow::Result<usize> {
    if batch.is_empty() {
        return Ok(0);
    }
    let results = state
        .usage
        .ingest(tenant, None, batch)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(results
        .iter()
        .filter(|r| matches!(r, tally_ai::usage::UsageResult::Stored { .. }))
        .count())
}

fn demo_event(rng: &mut StdRng, ts: i64, i: usize) -> EventInput {
    // Skewed activity: the first users are the most active.
    let user = 100 + (rng.gen_range(0.0f64..1.0).powi(2) * USERS.len() as f64) as usize;
    let (project, _) = PROJECTS[rng.gen_range(0..PROJECTS.len())];
    let ts_text = tally_core::time::rfc3339(ts);
    // Each user works from one city; one call in ten comes from somewhere else.
    let city = if rng.gen_bool(0.1) {
        &DEMO_CITIES[rng.gen_range(0..DEMO_CITIES.len())]
    } else {
        &DEMO_CITIES[user % DEMO_CITIES.len()]
    };
    let context = json!({
        "ip_address": city_address(rng, city),
        "user_agent": AGENTS[user % AGENTS.len()],
        "session_id": format!("session-{}-{}", user, ts / (30 * 60 * MICROS_PER_SEC)),
    });
    let roll = rng.gen_range(0..100);
    let (ty, name, properties) = match roll {
        0..=39 => (
            "page_view",
            "page_viewed",
            json!({"page": PAGES[i % PAGES.len()], "duration_seconds": rng.gen_range(3..300)}),
        ),
        40..=74 => (
            "user_action",
            ACTIONS[rng.gen_range(0..ACTIONS.len())],
            json!({"source": "web_app", "client_id": rng.gen_range(1..5000)}),
        ),
        75..=86 => (
            "feature_usage",
            FEATURES[i % FEATURES.len()],
            json!({"feature": "assistant", "duration_ms": rng.gen_range(50..4000)}),
        ),
        87..=95 => (
            "api_call",
            "external_api_called",
            json!({"endpoint": "/v1/payments", "method": "POST", "status_code": 200, "duration_ms": rng.gen_range(20..900)}),
        ),
        _ => (
            "error_occurred",
            "validation_failed",
            json!({"error_message": "invalid VAT number", "error_type": "ValidationError"}),
        ),
    };
    let mut properties = properties;
    if let Some(p) = properties.as_object_mut() {
        p.insert("user_id".into(), json!(user));
        p.insert("project_id".into(), json!(project));
    }
    EventInput {
        id: Some(json!(format!("demo-{i}"))),
        event_type: Some(json!(ty)),
        event_name: Some(json!(name)),
        properties: Some(properties),
        timestamp: Some(json!(ts_text)),
        context: Some(context),
        user_id: None,
        project_id: None,
    }
}
