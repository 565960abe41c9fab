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
    stores
        .identity
        .init_setting(DEMO_SETTING, &tenant.id.to_string())
        .await?;
    Ok(format!(
        "loaded demo tenant {} with {events} events over {DEMO_DAYS} days\n  log in:  {DEMO_EMAIL} / {password}\n  API key: {key}",
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
