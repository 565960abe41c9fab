//! AI usage benchmarks: ingestion throughput over HTTP, and the latency of every AI
//! analytics endpoint with millions of usage records stored (budget p95 < 20 ms).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_core::pricing::{default_catalog, TokenUsage};
use tally_core::time::{rfc3339, to_datetime, Clock, SystemClock, MICROS_PER_DAY};
use tally_core::usage::{CallStatus, CostSource, UsageRecord};
use tally_core::TenantId;
use tally_store::{SqliteConfig, StoreConfig, Stores};

use crate::load::{
    bench_tenant, fresh_server, print_memory, print_stats, sequential_baseline, stats,
};
use crate::server::Server;

/// (provider, model, weight, mean input tokens, mean output tokens, mean latency ms)
const MODELS: [(&str, &str, u32, u64, u64, f64); 6] = [
    ("openai", "gpt-4o", 30, 1200, 350, 1400.0),
    ("openai", "gpt-4o-mini", 30, 900, 250, 700.0),
    ("openai", "o3", 5, 2500, 1500, 9000.0),
    ("anthropic", "claude-sonnet-4", 20, 1500, 500, 1800.0),
    ("anthropic", "claude-3-5-haiku", 10, 800, 200, 600.0),
    ("google", "gemini-2.5-flash", 5, 1000, 300, 800.0),
];
const USERS: u32 = 5000;
const CALLS_PER_CONVERSATION: u64 = 20;

fn pick_model(rng: &mut StdRng) -> (&'static str, &'static str, u64, u64, f64) {
    let total: u32 = MODELS.iter().map(|m| m.2).sum();
    let mut p = rng.gen_range(0..total);
    for m in MODELS {
        if p < m.2 {
            return (m.0, m.1, m.3, m.4, m.5);
        }
        p -= m.2;
    }
    let m = MODELS[0];
    (m.0, m.1, m.3, m.4, m.5)
}

fn usage_json(rng: &mut StdRng, id: u64, ts: &str) -> String {
    let (provider, model, input, output, latency) = pick_model(rng);
    format!(
        r#"{{"id":"bench-{id}","provider":"{provider}","model":"{model}","user_id":"user-{u}","conversation_id":"conv-{c}","input_tokens":{i},"output_tokens":{o},"latency_ms":{l:.1},"time_to_first_token_ms":{t:.1},"quality_score":{q:.1},"timestamp":"{ts}","metadata":{{"feature":"chat"}}}}"#,
        u = rng.gen_range(0..USERS),
        c = id / CALLS_PER_CONVERSATION,
        i = rng.gen_range(input / 2..input * 2),
        o = rng.gen_range(output / 2..output * 2),
        l = latency * rng.gen_range(0.5..2.0),
        t = latency * 0.2,
        q = rng.gen_range(6.0..10.0),
    )
}

/// `POST /api/v1/ai/usage` throughput: batches of `batch` records from `connections`
/// clients for `seconds`, each answered after its commit.
pub async fn ingest(seconds: u64, connections: usize, batch: usize) -> anyhow::Result<()> {
    println!("== AI usage ingestion: batches of {batch}, {connections} connections, {seconds}s");
    let f = fresh_server().await?;
    let base = f.server.base.clone();
    let next = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (base, key, next, acked) = (base.clone(), f.key.clone(), next.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut rng = StdRng::seed_from_u64(c as u64);
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let ts = chrono::Utc::now().to_rfc3339();
                let records: Vec<String> = (0..batch)
                    .map(|_| usage_json(&mut rng, next.fetch_add(1, Ordering::Relaxed), &ts))
                    .collect();
                let body = format!(r#"{{"records":[{}]}}"#, records.join(","));
                let t0 = Instant::now();
                let resp = client
                    .post(format!("{base}/api/v1/ai/usage"))
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(resp.status() == 201, "ingest: {}", resp.status());
                resp.bytes().await?;
                latencies.push(t0.elapsed().as_micros() as u64);
                acked.fetch_add(batch as u64, Ordering::Relaxed);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = acked.load(Ordering::Relaxed);
    println!(
        "  {n} records acknowledged in {elapsed:.1}s: {:.0} records/s",
        n as f64 / elapsed
    );
    print_stats("POST /ai/usage batch latency", &stats(all));
    f.server.stop();
    Ok(())
}

/// A stored record at `ts` (priced like the server would).
fn record(
    rng: &mut StdRng,
    i: u64,
    ts: i64,
    catalog: &tally_core::pricing::PriceCatalog,
) -> UsageRecord {
    let (provider, model, input, output, latency) = pick_model(rng);
    let failed = rng.gen_bool(0.02);
    let tokens = TokenUsage {
        input: rng.gen_range(input / 2..input * 2),
        output: if failed {
            0
        } else {
            rng.gen_range(output / 2..output * 2)
        },
        cached_input: 0,
        reasoning: 0,
    };
    let day = to_datetime(ts).date_naive();
    let cost = catalog
        .lookup(provider, model, day)
        .map(|p| p.cost(&tokens))
        .unwrap_or_default();
    let latency = latency * rng.gen_range(0.5..2.0);
    UsageRecord {
        client_id: None,
        user_id: Some(format!("user-{}", rng.gen_range(0..USERS))),
        conversation_id: Some(format!("conv-{}", i / CALLS_PER_CONVERSATION)),
        job_id: None,
        api_key_id: None,
        provider: provider.into(),
        model: model.into(),
        tokens,
        latency_ms: Some(latency),
        time_to_first_token_ms: Some(latency * 0.2),
        status: if failed {
            CallStatus::Error
        } else {
            CallStatus::Success
        },
        error_type: failed.then(|| "rate_limited".into()),
        quality_score: Some(rng.gen_range(6.0..10.0)),
        cost,
        cost_source: CostSource::Catalog,
        timestamp: ts,
        timestamp_provided: true,
        received_at: ts,
        metadata: r#"{"feature":"chat"}"#.into(),
    }
}

/// Loads `n` records spread over 30 days through the store, then measures every AI
/// analytics endpoint against `GET /healthz` on the same server.
pub async fn reads(n: u64, queries: usize) -> anyhow::Result<()> {
    println!("== AI analytics with {n} usage records over 30 days (budget p95 < 20 ms)");
    let (dir, tenant_s, key) = bench_tenant("ingest,read,admin")?;
    let tenant: TenantId = tenant_s.parse().context("tenant id")?;
    let load_start = Instant::now();
    {
        let stores = Stores::open(StoreConfig::Sqlite(SqliteConfig::new(
            dir.path().join("tally.db"),
        )))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let store = stores.usage.clone();
        let catalog = default_catalog();
        let now = SystemClock.now_micros();
        let start = now - 30 * MICROS_PER_DAY;
        let step = (30 * MICROS_PER_DAY) / n.max(1) as i64;
        let mut rng = StdRng::seed_from_u64(7);
        let chunk = 10_000u64;
        let mut i = 0;
        // In time order, as calls arrive; one chunk is built while the previous commits.
        let mut pending: Option<tokio::task::JoinHandle<anyhow::Result<()>>> = None;
        while i < n {
            let len = chunk.min(n - i);
            let records: Vec<UsageRecord> = (i..i + len)
                .map(|k| record(&mut rng, k, start + k as i64 * step, &catalog))
                .collect();
            if let Some(p) = pending.take() {
                p.await??;
            }
            let store = store.clone();
            pending = Some(tokio::spawn(async move {
                store
                    .insert_usage(tenant, records.into())
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok(())
            }));
            i += len;
        }
        if let Some(p) = pending {
            p.await??;
        }
        tokio::task::spawn_blocking(move || stores.shutdown()).await?;
    }
    let load = load_start.elapsed();
    println!(
        "  loaded in {:.1}s ({:.0} records/s through the store writer, rollups included)",
        load.as_secs_f64(),
        n as f64 / load.as_secs_f64()
    );

    let server = Server::start(dir.path())?;
    let client = reqwest::Client::new();
    let base = server.base.clone();
    let admin_token = {
        let r: serde_json::Value = client
            .post(format!("{base}/api/v1/auth/login"))
            .json(&serde_json::json!({"email": "admin@tally.local", "password": "bench admin password"}))
            .send()
            .await?
            .json()
            .await?;
        r["access_token"]
            .as_str()
            .or_else(|| r["token"].as_str())
            .context("admin login")?
            .to_owned()
    };
    let config = client
        .post(format!("{base}/api/v1/ai/quotas/config"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"quotas": [
            {"metric": "cost_usd", "window": "day", "limit": "500"},
            {"metric": "cost_usd", "window": "month", "limit": "10000"},
            {"metric": "tokens", "window": "day", "limit": 100000000, "provider": "openai", "model": "o3"},
            {"metric": "requests", "window": "day", "limit": 1000, "user_id": "user-7"}
        ]}))
        .send()
        .await?;
    anyhow::ensure!(config.status() == 200, "quota config: {}", config.status());
    let recent_conv = format!("conv-{}", (n - 1) / CALLS_PER_CONVERSATION);
    let week_ago = rfc3339(SystemClock.now_micros() - 7 * MICROS_PER_DAY);

    type Req = Box<dyn Fn(&reqwest::Client, &mut StdRng) -> reqwest::RequestBuilder>;
    let get = |path: String, admin: bool| -> Req {
        let (base, token) = (
            base.clone(),
            if admin {
                admin_token.clone()
            } else {
                key.clone()
            },
        );
        Box::new(move |c, _| c.get(format!("{base}{path}")).bearer_auth(&token))
    };
    let post = |path: String, body: serde_json::Value| -> Req {
        let (base, token) = (base.clone(), key.clone());
        Box::new(move |c, _| {
            c.post(format!("{base}{path}"))
                .bearer_auth(&token)
                .json(&body)
        })
    };
    let t = &tenant_s;
    let kinds: Vec<(String, Req)> = vec![
        ("GET stats last_7d".to_owned(), get(format!("/api/v1/ai/stats/{t}?period=last_7d"), false)),
        ("GET stats last_30d".to_owned(), get(format!("/api/v1/ai/stats/{t}?period=last_30d"), false)),
        ("GET costs last_30d".into(), get("/api/v1/ai/costs?period=last_30d".into(), false)),
        ("GET costs last_24h".into(), get("/api/v1/ai/costs?period=last_24h".into(), false)),
        ("GET costs/{conversation}".into(), get(format!("/api/v1/ai/costs/{recent_conv}"), false)),
        ("GET performance last_30d".into(), get("/api/v1/ai/performance?period=last_30d".into(), false)),
        ("GET performance/realtime".into(), get("/api/v1/ai/performance/realtime".into(), false)),
        ("GET dashboard last_30d".into(), get(format!("/api/v1/ai/dashboard/{t}?period=last_30d"), false)),
        ("GET usage (admin) last_30d".into(), get("/api/v1/ai/usage?period=last_30d".into(), true)),
        ("GET usage/dashboard".into(), get("/api/v1/ai/usage/dashboard?days=30".into(), false)),
        ("GET usage/model_comparison".into(), get("/api/v1/ai/usage/model_comparison?models=o3,gpt-4o,gpt-4o-mini&days=30".into(), false)),
        ("GET usage/cost_breakdown".into(), get("/api/v1/ai/usage/cost_breakdown?model=o3&days=30".into(), false)),
        ("GET usage/efficiency".into(), get("/api/v1/ai/usage/efficiency?days=30".into(), false)),
        ("GET usage/trends".into(), get("/api/v1/ai/usage/trends?days=30".into(), false)),
        ("GET usage/records page 1".into(), get("/api/v1/ai/usage/records?page_size=50".into(), false)),
        ("GET usage/records filtered".into(), get(format!("/api/v1/ai/usage/records?created_at__gte={}&total_cost__gte=0.01&model_name__in=o3,gpt-4o", week_ago.replace('+', "%2B")), false)),
        ("GET quotas".into(), get("/api/v1/ai/quotas".into(), false)),
        ("POST quotas/test".into(), post("/api/v1/ai/quotas/test".into(), serde_json::json!({"provider": "openai", "model": "o3", "user_id": "user-7", "input_tokens": 5000, "output_tokens": 2000}))),
        ("POST stats export (csv)".into(), post(format!("/api/v1/ai/stats/{t}/export"), serde_json::json!({"format": "csv", "period": "last_30d"}))),
        ("POST costs export (json)".into(), post("/api/v1/ai/costs/export".into(), serde_json::json!({"format": "json", "period": "last_30d"}))),
        ("POST performance export".into(), post("/api/v1/ai/performance/export".into(), serde_json::json!({"format": "csv", "period": "last_30d"}))),
        ("POST usage export (admin)".into(), {
            let (base, token) = (base.clone(), admin_token.clone());
            Box::new(move |c, _| c.post(format!("{base}/api/v1/ai/usage/export")).bearer_auth(&token).json(&serde_json::json!({"format": "csv", "period": "last_30d"})))
        }),
    ];
    let mut rng = StdRng::seed_from_u64(5);
    // Warm the page cache as a running server would be.
    for (label, req) in &kinds {
        for _ in 0..5 {
            let resp = req(&client, &mut rng).send().await?;
            anyhow::ensure!(resp.status() == 200, "{label}: {}", resp.status());
            resp.bytes().await?;
        }
    }
    let per_kind = queries.div_ceil(kinds.len()).max(20);
    let mut results: Vec<Vec<u64>> = vec![Vec::new(); kinds.len()];
    for _ in 0..per_kind {
        for (k, (label, req)) in kinds.iter().enumerate() {
            let t0 = Instant::now();
            let resp = req(&client, &mut rng).send().await?;
            anyhow::ensure!(resp.status() == 200, "{label}: {}", resp.status());
            resp.bytes().await?;
            results[k].push(t0.elapsed().as_micros() as u64);
        }
    }
    let health = sequential_baseline(&client, &base, per_kind.max(200)).await?;
    for (k, v) in results.into_iter().enumerate() {
        print_stats(&kinds[k].0, &stats(v));
    }
    print_stats("baseline GET /healthz", &stats(health));
    print_memory(&server);
    server.stop();
    Ok(())
}
