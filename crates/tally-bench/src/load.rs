//! The three measured paths. Every figure is printed beside a baseline taken in the same
//! run on the same server, because these machines are noisy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_core::event::{EventType, NewEvent};
use tally_core::time::{Clock, SystemClock, MICROS_PER_DAY};
use tally_core::TenantId;
use tally_store::{SqliteConfig, StoreConfig, Stores};

use crate::server::{admin, Server};

const UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const PAGES: [&str; 5] = [
    "/dashboard",
    "/clients",
    "/clients/new",
    "/orders",
    "/reports",
];

/// One realistic event (~450 bytes of JSON) with a unique client id.
pub fn event_json(rng: &mut StdRng, id: u64, ts: &str) -> String {
    let user = rng.gen_range(1..5000);
    let project = rng.gen_range(1..20);
    let page = PAGES[rng.gen_range(0..PAGES.len())];
    format!(
        r#"{{"id":"bench-{id}","event_type":"page_view","event_name":"dashboard_viewed","timestamp":"{ts}","properties":{{"user_id":{user},"project_id":"project-{project}","page":"{page}","duration_seconds":{d},"session_id":"session-{user}-{s}","source":"web_app"}},"context":{{"ip_address":"81.2.69.{ip}","user_agent":"{UA}","page":"{page}","referrer":"/clients"}}}}"#,
        d = rng.gen_range(1..600),
        s = id / 50,
        ip = rng.gen_range(1..250),
    )
}

fn batch_body(rng: &mut StdRng, next_id: &AtomicU64, n: usize) -> String {
    let ts = chrono::Utc::now().to_rfc3339();
    let mut events = Vec::with_capacity(n);
    for _ in 0..n {
        events.push(event_json(
            rng,
            next_id.fetch_add(1, Ordering::Relaxed),
            &ts,
        ));
    }
    format!(r#"{{"events":[{}]}}"#, events.join(","))
}

/// `n` sequential `GET /healthz` latencies (µs): the baseline of sequential read benches.
pub async fn sequential_baseline(
    client: &reqwest::Client,
    base: &str,
    n: usize,
) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        client
            .get(format!("{base}/healthz"))
            .send()
            .await?
            .bytes()
            .await?;
        out.push(t0.elapsed().as_micros() as u64);
    }
    Ok(out)
}

/// Prints the server's current and peak memory.
pub fn print_memory(server: &Server) {
    let (rss, peak) = server.memory_mb();
    println!("  server memory                      rss={rss:.0} MiB peak={peak:.0} MiB");
}

pub struct Stats {
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// Percentiles of latencies given in microseconds, reported in milliseconds.
pub fn stats(mut v: Vec<u64>) -> Stats {
    v.sort_unstable();
    let at = |q: f64| {
        if v.is_empty() {
            return 0.0;
        }
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i] as f64 / 1000.0
    };
    Stats {
        n: v.len(),
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        max: at(1.0),
    }
}

pub fn print_stats(label: &str, s: &Stats) {
    println!(
        "  {label:<34} n={:<7} p50={:>7.3} ms  p95={:>7.3} ms  p99={:>7.3} ms  max={:>8.3} ms",
        s.n, s.p50, s.p95, s.p99, s.max
    );
}

pub struct Fixture {
    _dir: tempfile::TempDir,
    pub server: Server,
    pub key: String,
}

/// A fresh data dir (under `TALLY_BENCH_DIR`) with one tenant and a key of `scopes`.
pub fn bench_tenant(scopes: &str) -> anyhow::Result<(tempfile::TempDir, String, String)> {
    let dir =
        tempfile::tempdir_in(std::env::var("TALLY_BENCH_DIR").unwrap_or_else(|_| ".".into()))?;
    let tenant = admin(dir.path(), &["tenant", "create", "--name", "bench"])?;
    let key = admin(
        dir.path(),
        &[
            "key", "create", "--tenant", &tenant, "--name", "bench", "--scopes", scopes,
        ],
    )?;
    Ok((dir, tenant, key))
}

/// A fresh data dir with a tenant, an ingest+read key, and the server started on it.
pub async fn fresh_server() -> anyhow::Result<Fixture> {
    let (dir, _, key) = bench_tenant("ingest,read")?;
    let server = Server::start(dir.path())?;
    Ok(Fixture {
        _dir: dir,
        server,
        key,
    })
}

/// Sends batches for `seconds` from `connections` clients; returns (events acked, elapsed).
/// Where `drive_batches` sends its batches.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    /// `/track/batch/`: stored durably, 201.
    Store,
    /// `/track/test/`: parsed, validated and enriched, never stored, 200.
    DryRun,
}

async fn drive_batches(
    base: &str,
    key: &str,
    seconds: u64,
    connections: usize,
    batch: usize,
    target: Target,
) -> anyhow::Result<(u64, Duration, Vec<u64>)> {
    let (path, expect) = match target {
        Target::Store => (
            "/api/v1/insights/track/batch/",
            reqwest::StatusCode::CREATED,
        ),
        Target::DryRun => ("/api/v1/insights/track/test/", reqwest::StatusCode::OK),
    };
    let client = reqwest::Client::new();
    let acked = Arc::new(AtomicU64::new(0));
    let next_id = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (client, acked, next_id) = (client.clone(), acked.clone(), next_id.clone());
        let (url, key) = (format!("{base}{path}"), key.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(c as u64);
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let mut body = batch_body(&mut rng, &next_id, batch);
                if target == Target::DryRun {
                    body = body.replacen("\"events\"", "\"test_events\"", 1);
                }
                let t0 = Instant::now();
                let resp = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(resp.status() == expect, "status {}", resp.status());
                resp.bytes().await?;
                lat.push(t0.elapsed().as_micros() as u64);
                acked.fetch_add(batch as u64, Ordering::Relaxed);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((acked.load(Ordering::Relaxed), start.elapsed(), all))
}

pub async fn ingest(seconds: u64, connections: usize, batch: usize) -> anyhow::Result<()> {
    println!("== batch ingestion: {connections} connections, {batch} events/batch, {seconds}s, durable ack (budget ≥ 100,000 events/s)");
    let f = fresh_server().await?;
    // Warm-up.
    drive_batches(&f.server.base, &f.key, 2, connections, batch, Target::Store).await?;
    let cpu = f.server.cpu_seconds();
    let (n, elapsed, lat) = drive_batches(
        &f.server.base,
        &f.key,
        seconds,
        connections,
        batch,
        Target::Store,
    )
    .await?;
    let stored_cpu = f.server.cpu_seconds() - cpu;
    let durable = n as f64 / elapsed.as_secs_f64();
    println!(
        "  stored (durable)                   {durable:>10.0} events/s   ({n} events in {:.1}s, {:.1} µs of server CPU per event)",
        elapsed.as_secs_f64(),
        stored_cpu / n.max(1) as f64 * 1e6
    );
    print_stats("batch request latency", &stats(lat));
    // Baseline: the same events through parsing, validation, enrichment (and the dry run's
    // sensitive-data scan), not stored.
    let cpu = f.server.cpu_seconds();
    let (n3, e3, _) = drive_batches(
        &f.server.base,
        &f.key,
        seconds.min(10),
        connections,
        batch,
        Target::DryRun,
    )
    .await?;
    let dry_cpu = f.server.cpu_seconds() - cpu;
    println!(
        "  baseline: dry run, no storage      {:>10.0} events/s   (HTTP + validation + enrichment + scan, {:.1} µs of server CPU per event)",
        n3 as f64 / e3.as_secs_f64(),
        dry_cpu / n3.max(1) as f64 * 1e6
    );
    print_memory(&f.server);
    f.server.stop();
    Ok(())
}

/// Open-loop load: requests are scheduled at a fixed rate and latency is measured from the
/// scheduled time, so a stall is charged to every request it delays.
pub async fn open_loop(
    client: &reqwest::Client,
    rate: u64,
    seconds: u64,
    make: impl Fn(u64) -> reqwest::RequestBuilder,
) -> anyhow::Result<(Vec<u64>, u64)> {
    let mut parts = open_loop_split(client, rate, seconds, 1, |i| (0, make(i))).await?;
    Ok(parts.pop().unwrap_or_default())
}

/// An open loop at `rate` requests a second whose requests belong to `parts` parts: `make`
/// says which part request `i` is in (below `parts`) along with the request. Returns each
/// part's latencies (µs, from the moment the request was due) and error count.
pub async fn open_loop_split(
    client: &reqwest::Client,
    rate: u64,
    seconds: u64,
    parts: usize,
    make: impl Fn(u64) -> (usize, reqwest::RequestBuilder),
) -> anyhow::Result<Vec<(Vec<u64>, u64)>> {
    let parts = parts.max(1);
    let total = rate * seconds;
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let start = Instant::now() + Duration::from_millis(50);
    let mut handles = Vec::with_capacity(total as usize);
    let _ = client;
    for i in 0..total {
        let scheduled = start + interval * i as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        let (part, req) = make(i);
        handles.push(tokio::spawn(async move {
            let resp = req.send().await?;
            let ok = resp.status().is_success();
            resp.bytes().await?;
            anyhow::Ok((
                part.min(parts - 1),
                scheduled.elapsed().as_micros() as u64,
                ok,
            ))
        }));
    }
    let mut out: Vec<(Vec<u64>, u64)> = (0..parts)
        .map(|_| (Vec::with_capacity(handles.len() / parts + 1), 0))
        .collect();
    for h in handles {
        let (part, l, ok) = h.await??;
        let part = &mut out[part];
        part.0.push(l);
        part.1 += u64::from(!ok);
    }
    Ok(out)
}

pub async fn track(rate: u64, seconds: u64) -> anyhow::Result<()> {
    println!("== single-event track at {rate} req/s for {seconds}s, open loop (budget p99 < 5 ms)");
    let f = fresh_server().await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let base = f.server.base.clone();
    // Baseline: the server's cheapest route at the same rate.
    let (health, _) = open_loop(&client, rate, seconds.min(10), |_| {
        client.get(format!("{base}/healthz"))
    })
    .await?;
    let rng = std::sync::Mutex::new(StdRng::seed_from_u64(7));
    let url = format!("{base}/api/v1/insights/track/");
    let (lat, errors) = open_loop(&client, rate, seconds, |i| {
        let body = {
            let mut r = rng.lock().unwrap_or_else(|e| e.into_inner());
            event_json(&mut r, i, &chrono::Utc::now().to_rfc3339())
        };
        client
            .post(&url)
            .bearer_auth(&f.key)
            .header("content-type", "application/json")
            .body(body)
    })
    .await?;
    print_stats("POST /insights/track/ (durable)", &stats(lat));
    print_stats("baseline GET /healthz", &stats(health));
    println!("  errors: {errors}");
    print_memory(&f.server);
    f.server.stop();
    Ok(())
}

/// Loads `n` events spread over 30 days straight through the store's writer (the same
/// group-commit path the API uses, without HTTP), then measures listing queries.
pub async fn activities(n: usize, queries: usize) -> anyhow::Result<()> {
    println!("== activity listing with {n} stored events over 30 days (budget p95 < 20 ms)");
    let (dir, tenant_s, key) = bench_tenant("read")?;
    let tenant: TenantId = tenant_s.parse().context("tenant id")?;
    let load_start = Instant::now();
    {
        let stores = Stores::open(StoreConfig::Sqlite(SqliteConfig::new(
            dir.path().join("tally.db"),
        )))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let store = stores.events.clone();
        let now = SystemClock.now_micros();
        let chunk = 10_000;
        let producers = 2;
        let mut tasks = Vec::new();
        for p in 0..producers {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(p as u64);
                let mut i = p * chunk;
                // In time order, as events arrive, spread evenly over 30 days.
                let start = now - 30 * MICROS_PER_DAY;
                let step = (30 * MICROS_PER_DAY) / n.max(1) as i64;
                while i < n {
                    let len = chunk.min(n - i);
                    let events: Vec<NewEvent> = (0..len)
                        .map(|k| stored_event(&mut rng, start + (i + k) as i64 * step))
                        .collect();
                    store
                        .insert_events(tenant, None, events)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    i += chunk * producers;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        tokio::task::spawn_blocking(move || stores.shutdown()).await?;
    }
    let load = load_start.elapsed();
    println!(
        "  loaded in {:.1}s ({:.0} events/s through the store writer)",
        load.as_secs_f64(),
        n as f64 / load.as_secs_f64()
    );

    let server = Server::start(dir.path())?;
    let client = reqwest::Client::new();
    let base = server.base.clone();
    let today = chrono::Utc::now().date_naive();
    let d = |days: i64| (today - chrono::Duration::days(days)).to_string();
    let mut rng = StdRng::seed_from_u64(99);
    type Q = Box<dyn Fn(&mut StdRng) -> String>;
    let (d1, d7a, d7b) = (d(3), d(10), d(3));
    let kinds: Vec<(&str, Q)> = vec![
        ("no filter", Box::new(|_| String::new())),
        (
            "user_id",
            Box::new(|r| format!("user_id={}", r.gen_range(1..1000))),
        ),
        (
            "project_id",
            Box::new(|r| format!("project_id=project-{}", r.gen_range(1..20))),
        ),
        (
            "event_type (rare)",
            Box::new(|_| "event_type=error_occurred".into()),
        ),
        (
            "one day",
            Box::new(move |_| format!("date_from={d1}&date_to={d1}")),
        ),
        (
            "user_id + 7 days",
            Box::new(move |r| {
                format!(
                    "user_id={}&date_from={d7a}&date_to={d7b}",
                    r.gen_range(1..1000)
                )
            }),
        ),
        (
            "project_id + event_type",
            Box::new(|r| {
                format!(
                    "project_id=project-{}&event_type=user_action",
                    r.gen_range(1..20)
                )
            }),
        ),
        ("page 10, no filter", Box::new(|_| "page=10".into())),
    ];
    // Warm the page cache as a running server would be.
    for (_, q) in &kinds {
        for _ in 0..20 {
            let url = format!("{base}/api/v1/insights/activities/?{}", q(&mut rng));
            client
                .get(&url)
                .bearer_auth(&key)
                .send()
                .await?
                .bytes()
                .await?;
        }
    }
    let mut per_kind: Vec<Vec<u64>> = vec![Vec::new(); kinds.len()];
    let mut all = Vec::new();
    for i in 0..queries {
        let k = i % kinds.len();
        let url = format!(
            "{base}/api/v1/insights/activities/?{}",
            (kinds[k].1)(&mut rng)
        );
        let t0 = Instant::now();
        let resp = client.get(&url).bearer_auth(&key).send().await?;
        anyhow::ensure!(resp.status() == 200, "{url}: {}", resp.status());
        resp.bytes().await?;
        let us = t0.elapsed().as_micros() as u64;
        per_kind[k].push(us);
        all.push(us);
    }
    let health = sequential_baseline(&client, &base, queries.min(500)).await?;
    for (k, v) in per_kind.into_iter().enumerate() {
        print_stats(kinds[k].0, &stats(v));
    }
    print_stats("all listing queries", &stats(all));
    print_stats("baseline GET /healthz", &stats(health));
    print_memory(&server);
    server.stop();
    Ok(())
}

fn stored_event(rng: &mut StdRng, ts: i64) -> NewEvent {
    // Skewed: low user ids are the most active.
    let user = (rng.gen_range(0.0f64..1.0).powi(3) * 1000.0) as u32 + 1;
    let ty = match rng.gen_range(0..100) {
        0..=44 => EventType::PageView,
        45..=79 => EventType::UserAction,
        80..=89 => EventType::FeatureUsage,
        90..=97 => EventType::ApiCall,
        98 => EventType::SystemEvent,
        _ => EventType::ErrorOccurred,
    };
    let page = PAGES[rng.gen_range(0..PAGES.len())];
    NewEvent {
        tracking_id: uuid::Uuid::now_v7(),
        client_id: None,
        dedup_ts: 0,
        event_type: ty,
        event_name: format!("{}_{}", ty.as_str(), rng.gen_range(0..8)),
        user_id: Some(user.to_string()),
        project_id: Some(format!("project-{}", rng.gen_range(1..20))),
        timestamp: ts,
        received_at: ts + 1_000_000,
        properties: format!(
            r#"{{"page":"{page}","duration_seconds":{},"source":"web_app"}}"#,
            rng.gen_range(1..600)
        ),
        context: format!(
            r#"{{"ip_address":"81.2.69.{}","user_agent":"{UA}","page":"{page}","browser":"Chrome","os":"Windows","device_type":"desktop"}}"#,
            rng.gen_range(1..250)
        ),
        enriched: format!(r#"{{"device_fingerprint":"fp-{}"}}"#, uuid::Uuid::new_v4()),
    }
}
