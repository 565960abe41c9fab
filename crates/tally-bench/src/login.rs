//! Ingestion latency while someone floods the login endpoint: password hashing is slow on
//! purpose, and must not take the CPU from ingestion. Three phases against one server:
//! idle, a flood from one address (throttled per IP), and the worst case, a flood with a
//! new address and a new e-mail per attempt, so every attempt reaches password hashing
//! (the server trusts `X-Forwarded-For` for this run).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::load::{bench_tenant, event_json, open_loop, print_stats, stats};
use crate::server::Server;

#[derive(Clone, Copy)]
enum Flood {
    OneAddress,
    EveryAttemptNew,
}

/// `flood_rate` login attempts per second are offered open loop (a password-guessing
/// botnet does not wait for answers); the original finding was 80 per second.
pub async fn login_flood(rate: u64, seconds: u64, flood_rate: u64) -> anyhow::Result<()> {
    println!(
        "== single-event track at {rate} req/s during a login flood of {flood_rate} attempts/s (budget: p50 ≤ 2× idle)"
    );
    let (dir, _, key) = bench_tenant("ingest")?;
    let config = dir.path().join("bench.toml");
    std::fs::write(&config, "[limits]\ntrust_forwarded_for = true\n")?;
    let data = dir.path().to_path_buf();
    let server = Server::start_with(&data, &["--config", config.to_str().unwrap_or_default()])?;
    let base = server.base.clone();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let track = |client: reqwest::Client| {
        let rng = Mutex::new(StdRng::seed_from_u64(7));
        let url = format!("{base}/api/v1/insights/track/");
        let key = key.clone();
        move |i: u64| {
            let body = {
                let mut r = rng.lock().unwrap_or_else(|e| e.into_inner());
                event_json(&mut r, i, &chrono::Utc::now().to_rfc3339())
            };
            client
                .post(&url)
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body(body)
        }
    };
    let (idle, _) = open_loop(&client, rate, seconds, track(client.clone())).await?;
    let idle = stats(idle);
    print_stats("track, idle", &idle);
    for (label, flood) in [
        ("track, flood from one address", Flood::OneAddress),
        ("track, flood reaching argon2", Flood::EveryAttemptNew),
    ] {
        let stop = Arc::new(AtomicBool::new(false));
        let statuses: Arc<Mutex<BTreeMap<u16, u64>>> = Arc::default();
        let flooder = {
            let (stop, statuses, base) = (stop.clone(), statuses.clone(), base.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut rng = StdRng::seed_from_u64(100);
                let interval = std::time::Duration::from_nanos(1_000_000_000 / flood_rate.max(1));
                let mut next = tokio::time::Instant::now();
                let mut inflight = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    next += interval;
                    tokio::time::sleep_until(next).await;
                    let (email, ip) = match flood {
                        Flood::OneAddress => {
                            ("admin@tally.local".to_owned(), "203.0.113.7".to_owned())
                        }
                        Flood::EveryAttemptNew => (
                            format!("user{}@example.com", rng.gen::<u32>()),
                            format!(
                                "10.{}.{}.{}",
                                rng.gen::<u8>(),
                                rng.gen::<u8>(),
                                rng.gen::<u8>()
                            ),
                        ),
                    };
                    let req = client
                        .post(format!("{base}/api/v1/auth/login"))
                        .header("x-forwarded-for", ip)
                        .json(&serde_json::json!({"email": email, "password": "wrong password"}));
                    let statuses = statuses.clone();
                    inflight.push(tokio::spawn(async move {
                        let code = req.send().await.map(|r| r.status().as_u16()).unwrap_or(0);
                        *statuses
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(code)
                            .or_default() += 1;
                    }));
                }
                for t in inflight {
                    let _ = t.await;
                }
            })
        };
        let (lat, _) = open_loop(&client, rate, seconds, track(client.clone())).await?;
        stop.store(true, Ordering::Relaxed);
        flooder.await?;
        let s = stats(lat);
        print_stats(label, &s);
        let statuses = statuses.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let attempts: u64 = statuses.values().sum();
        println!(
            "    login attempts {attempts} ({:.0}/s), answers {statuses:?}; p50 ratio to idle {:.2}",
            attempts as f64 / seconds as f64,
            s.p50 / idle.p50
        );
    }
    server.stop();
    Ok(())
}
