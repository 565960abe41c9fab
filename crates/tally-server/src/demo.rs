//! Demo data: a tenant with projects, tracked users and 30 days of realistic events, loaded
//! through the same service path as real traffic, so a newcomer sees data at once.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tally_core::activity::{Project, UserProfile};
use tally_core::auth::{Role, Scope};
use tally_core::event::EventInput;
use tally_core::time::{now_micros, MICROS_PER_DAY, MICROS_PER_SEC};
use tally_core::TenantId;

use crate::service::tenancy::{self, NewAccount};
use crate::AppState;

const DEMO_SETTING: &str = "demo.tenant_id";
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

/// Loads the demo tenant unless it exists. Returns what to tell the person who asked.
pub async fn seed(state: &AppState) -> anyhow::Result<String> {
    let stores = &state.stores;
    if let Some(id) = stores.identity.get_setting(DEMO_SETTING).await? {
        return Ok(format!(
            "demo data already loaded (tenant {id}); log in as {DEMO_EMAIL} with the password printed when it was created"
        ));
    }
    let e = |e: crate::error::ApiError| anyhow::anyhow!("{e}");
    let tenant = tenancy::create_tenant(stores, "Demo Company", None)
        .await
        .map_err(e)?;
    let password = tally_core::auth::generate_password();
    tenancy::create_account(
        stores,
        NewAccount {
            tenant_id: tenant.id,
            email: DEMO_EMAIL,
            password: &password,
            role: Role::Owner,
        },
    )
    .await
    .map_err(e)?;
    let (_, key) = tenancy::create_api_key(
        stores,
        tenant.id,
        "demo",
        [Scope::Ingest, Scope::Read].into(),
    )
    .await
    .map_err(e)?;
    let events = load_events(state, tenant.id).await?;
    let quotas = load_quotas(state, tenant.id).await?;
    let mut calls = load_ai_usage(state, tenant.id, 1).await?;
    // Two more tenants, so cross-tenant admin views have something to compare.
    for (i, name) in ["Acme Robotics", "Globex Retail"].into_iter().enumerate() {
        let other = tenancy::create_tenant(stores, name, None)
            .await
            .map_err(e)?;
        calls += load_ai_usage(state, other.id, 2 + i as u64).await?;
    }
    stores
        .identity
        .init_setting(DEMO_SETTING, &tenant.id.to_string())
        .await?;
    Ok(format!(
        "loaded demo tenant {} with {events} events over {DEMO_DAYS} days and {calls} AI calls over {AI_DAYS} days (3 tenants) and {quotas} quotas\n  log in:  {DEMO_EMAIL} / {password}\n  API key: {key}",
        tenant.id
    ))
}

async fn load_events(state: &AppState, tenant: TenantId) -> anyhow::Result<usize> {
    let now = now_micros();
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
        batch.push(Ok(demo_event(&mut rng, ts, i)));
        if batch.len() == 500 || i + 1 == total {
            let outcomes = state
                .insights
                .track(tenant, std::mem::take(&mut batch), None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            stored += outcomes
                .iter()
                .filter(|o| matches!(o, crate::service::insights::TrackOutcome::Accepted(_)))
                .count();
        }
    }
    Ok(stored)
}

pub const AI_DAYS: i64 = 90;

/// (provider, model, weight, typical input tokens, typical output tokens, median latency ms)
const AI_MODELS: [(&str, &str, u32, u64, u64, f64); 6] = [
    ("openai", "gpt-4o", 30, 1_800, 120, 1_400.0),
    ("openai", "gpt-4o-mini", 30, 1_200, 250, 700.0),
    ("openai", "o3", 5, 3_000, 2_500, 9_000.0),
    ("anthropic", "claude-sonnet-4", 20, 2_500, 600, 2_200.0),
    ("anthropic", "claude-3-5-haiku", 10, 900, 200, 600.0),
    ("google", "gemini-2.5-flash", 5, 1_500, 400, 800.0),
];

/// Budgets a team would set: a daily and a monthly USD budget, a token cap on the most
/// expensive model, and a per-user request limit.
async fn load_quotas(state: &AppState, tenant: TenantId) -> anyhow::Result<usize> {
    let rules: Vec<tally_core::quota::QuotaInput> = serde_json::from_value(json!([
        {"name": "Daily AI budget", "metric": "cost_usd", "window": "day", "limit": "1.50"},
        {"name": "Monthly AI budget", "metric": "cost_usd", "window": "month", "limit": "40"},
        {"name": "GPT-4o tokens", "metric": "tokens", "window": "day", "limit": 60000,
         "provider": "openai", "model": "gpt-4o", "enforce": false},
        {"name": "Per-user daily calls", "metric": "requests", "window": "day", "limit": 25, "user_id": "101"}
    ]))?;
    let inputs = rules.into_iter().map(Ok).collect();
    let stored = state
        .quotas
        .configure(tenant, inputs, now_micros())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(stored.len())
}

/// 90 days of LLM calls through the usage service: growing traffic, a few conversations per
/// user per day, realistic token counts and latencies, and occasional provider errors.
async fn load_ai_usage(state: &AppState, tenant: TenantId, seed: u64) -> anyhow::Result<usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    let now = now_micros();
    let total_weight: u32 = AI_MODELS.iter().map(|m| m.2).sum();
    let mut stored = 0;
    let mut batch = Vec::with_capacity(500);
    let mut n = 0u64;
    for day in (0..AI_DAYS).rev() {
        // Traffic grows about 1 % a day.
        let calls =
            (40.0 * (1.0 + (AI_DAYS - day) as f64 * 0.01) * (0.5 + seed as f64 * 0.25)) as u64;
        for _ in 0..calls {
            n += 1;
            let ts = now - day * MICROS_PER_DAY - rng.gen_range(0..MICROS_PER_DAY);
            let ts = if ts >= now { now - MICROS_PER_SEC } else { ts };
            let mut pick = rng.gen_range(0..total_weight);
            let &(provider, model, _, input, output, latency) = AI_MODELS
                .iter()
                .find(|m| {
                    if pick < m.2 {
                        true
                    } else {
                        pick -= m.2;
                        false
                    }
                })
                .unwrap_or(&AI_MODELS[0]);
            let jitter = |r: &mut StdRng, x: f64| x * r.gen_range(0.4..2.2);
            let failed = rng.gen_bool(0.02);
            let input_tokens = jitter(&mut rng, input as f64) as u64;
            let latency_ms = jitter(&mut rng, latency);
            let user = 100 + rng.gen_range(0..USERS.len());
            batch.push(Ok(tally_core::usage::UsageInput {
                id: Some(json!(format!("demo-ai-{seed}-{n}"))),
                user_id: Some(json!(user)),
                conversation_id: Some(json!(format!(
                    "conv-{user}-{}",
                    (now - ts) / MICROS_PER_DAY / 2
                ))),
                provider: Some(json!(provider)),
                model: Some(json!(model)),
                input_tokens: Some(json!(input_tokens)),
                output_tokens: Some(json!(if failed {
                    0
                } else {
                    jitter(&mut rng, output as f64) as u64
                })),
                cached_tokens: Some(json!(input_tokens / 4)),
                latency_ms: Some(json!(latency_ms)),
                time_to_first_token_ms: Some(json!(latency_ms * 0.2)),
                status: Some(json!(if failed { "error" } else { "success" })),
                error_type: failed.then(|| json!("rate_limited")),
                quality_score: Some(json!(rng.gen_range(6.0..10.0f64))),
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
        .ingest(tenant, batch)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(results
        .iter()
        .filter(|r| matches!(r, crate::service::usage::UsageResult::Stored { .. }))
        .count())
}

fn demo_event(rng: &mut StdRng, ts: i64, i: usize) -> EventInput {
    // Skewed activity: the first users are the most active.
    let user = 100 + (rng.gen_range(0.0f64..1.0).powi(2) * USERS.len() as f64) as usize;
    let (project, _) = PROJECTS[rng.gen_range(0..PROJECTS.len())];
    let ts_text = tally_core::time::rfc3339(ts);
    let context = json!({
        "ip_address": format!("81.2.69.{}", rng.gen_range(1..250)),
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
