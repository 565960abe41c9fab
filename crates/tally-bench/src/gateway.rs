//! The LLM gateway's overhead (DESIGN: p99 < 1 ms at 1,000 req/s with recording, budgets
//! and rate limits on; RSS < 100 MB): the fake provider answering at a fixed latency is
//! driven at a fixed rate directly and through tally in the same run, with the same
//! realistic requests (prompts of 500–4,000 tokens, answers of 100–500 tokens), and the
//! difference of the latency percentiles is the overhead. The two paths take turns a second
//! at a time (`SLICE`), so a slow stretch of the host falls on both alike; `--sequential`
//! runs one after the other instead. Streams are measured by their
//! time to first token, direct and through tally.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::load::{bench_tenant, open_loop_split, print_memory, print_stats, stats, Stats};
use crate::server::Server;

/// Real text to cut prompts from: this repository's own documentation (prose, tables,
/// code and command lines), so the tokenizer on the path sees a real vocabulary.
const CORPUS: &[&str] = &[
    include_str!("../../../README.md"),
    include_str!("../../../ARCHITECTURE.md"),
    include_str!("../../../docs/api.md"),
    include_str!("../../../docs/benchmarks.md"),
    include_str!("../../../docs/events.md"),
    include_str!("../../../docs/numbers.md"),
    include_str!("../../../docs/seed-coverage.md"),
];

/// `n` requests with prompts of 500–4,000 tokens (o200k, the model's encoding: slices of
/// the corpus at random places) and answer limits of 100–500 tokens. Returns the requests
/// and their prompts' token counts.
fn requests(n: usize, stream: bool) -> anyhow::Result<(Vec<Value>, Vec<usize>)> {
    let mut rng = StdRng::seed_from_u64(11);
    let corpus = CORPUS.join("\n\n");
    let o200k = tiktoken::get_encoding("o200k_base")
        .ok_or_else(|| anyhow::anyhow!("o200k is not compiled in"))?;
    let mut counts = Vec::with_capacity(n);
    let bodies = (0..n)
        .map(|_| {
            let tokens = rng.gen_range(500..=4000);
            // About four bytes a token; the count below is the real one.
            let len = (tokens * 4).min(corpus.len() - 1);
            let mut from = rng.gen_range(0..corpus.len() - len);
            while !corpus.is_char_boundary(from) {
                from -= 1;
            }
            let cut = |len: usize| {
                let mut to = (from + len).min(corpus.len());
                while !corpus.is_char_boundary(to) {
                    to -= 1;
                }
                &corpus[from..to]
            };
            let mut text = cut(len);
            let mut count = o200k.count(text);
            if count > tokens {
                // Tables and code take more tokens a byte: cut again to the target.
                text = cut(len * tokens / count);
                count = o200k.count(text);
            }
            counts.push(count);
            let mut body = json!({
                "model": "gpt-4o",
                "max_tokens": rng.gen_range(100..=500),
                "user": format!("user-{}", rng.gen_range(0..50)),
                "messages": [
                    {"role": "system", "content": "You are a concise analyst. Summarise the documentation you are given."},
                    {"role": "user", "content": text},
                ],
            });
            if stream {
                body["stream"] = json!(true);
                body["stream_options"] = json!({"include_usage": true});
            }
            body
        })
        .collect();
    Ok((bodies, counts))
}

/// How long each path has the load to itself before the other takes its turn.
const SLICE: Duration = Duration::from_secs(1);

/// Whether call `i` of a run of both paths at `rate` a second, `calls` each, goes through
/// tally: by turns of `SLICE`, or with `sequential` the first half direct and the rest
/// through tally.
fn through_turn(i: u64, rate: u64, calls: u64, sequential: bool) -> bool {
    if sequential {
        return i >= calls;
    }
    let per_slice = (rate * SLICE.as_millis() as u64 / 1000).max(1);
    !(i / per_slice).is_multiple_of(2)
}

/// `bodies` as JSON, written once and kept for the run, so the load generator's own work
/// stays off both sides of the comparison.
fn encode_once(bodies: &[Value]) -> Vec<&'static [u8]> {
    bodies
        .iter()
        .map(|b| &*Box::leak(serde_json::to_vec(b).unwrap_or_default().into_boxed_slice()))
        .collect()
}

fn print_overhead(label: &str, through: &Stats, direct: &Stats) {
    println!(
        "  {label:<34} p50={:>+7.3} ms  p95={:>+7.3} ms  p99={:>+7.3} ms",
        through.p50 - direct.p50,
        through.p95 - direct.p95,
        through.p99 - direct.p99
    );
}

/// Runs `taskset` with `args`: the CPU affinity of a process or of a command to start.
fn taskset(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("taskset")
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("taskset (util-linux) is needed to pin cores: {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "taskset {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `pin_server` (the default; with two cores or more) gives the server the last core to
/// itself and this process (load generator and fake provider) the others, as a gateway
/// deployed apart from its clients and providers would be: the overhead measured is then
/// the server's, not the scheduler's choice among three busy processes. Without it
/// (`--shared-cores`) the three share every core.
pub async fn gateway(
    rate: u64,
    seconds: u64,
    latency_ms: u64,
    pin_server: bool,
    sequential: bool,
) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let pinned = pin_server && cores >= 2;
    println!(
        "== LLM gateway overhead at {rate} req/s for {seconds}s, provider latency {latency_ms} ms, \
         recording + budgets + rate limits on (budget: p99 overhead < 1 ms, RSS < 100 MB)"
    );
    if pinned {
        let last = cores - 1;
        // Every thread of this process, the runtime's included; threads made later inherit.
        taskset(&[
            "-a",
            "-p",
            "-c",
            &format!("0-{}", last - 1),
            &std::process::id().to_string(),
        ])?;
        println!(
            "  cores: server on core {last}, load generator and fake provider on 0-{} \
             (--shared-cores lets the three share every core)",
            last - 1
        );
    } else {
        println!(
            "  cores: all {cores} shared by the server, the load generator and the fake provider \
             (--shared-cores)"
        );
    }
    let fake = tally_fake_provider::FakeProvider::start(tally_fake_provider::Script {
        latency_ms,
        answer_words: 500,
        ..Default::default()
    })
    .await?;
    let (dir, tenant, key) = bench_tenant("gateway,admin")?;
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        "[outbound]\nallow = [\"127.0.0.0/8\"]\nallow_public = false\n",
    )?;
    let server = Server::start_with(
        dir.path(),
        &["--config", config.to_str().unwrap_or_default()],
    )?;
    if pinned {
        taskset(&[
            "-a",
            "-p",
            "-c",
            &(cores - 1).to_string(),
            &server.pid().to_string(),
        ])?;
    }
    let base = server.base.clone();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let post = |path: &str, body: Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(&key)
            .json(&body)
    };
    let r = post(
        "/api/v1/ai/credentials",
        json!({"name": "openai", "api_key": tally_fake_provider::KEY, "base_url": fake.openai_url()}),
    )
    .send()
    .await?;
    anyhow::ensure!(r.status().is_success(), "credential: {}", r.text().await?);
    // Rate limits and a budget that every call is checked against (none refuses).
    let r = client
        .put(format!("{base}/api/v1/ai/gateway/settings"))
        .bearer_auth(&key)
        .json(&json!({"rate_limits": [
            {"scope": "key", "requests_per_minute": 10_000_000, "tokens_per_minute": 2_000_000_000u32},
            {"scope": "tenant", "requests_per_minute": 10_000_000},
            {"scope": "model", "tokens_per_minute": 2_000_000_000u32}]}))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "settings: {}", r.text().await?);
    let r = post(
        "/api/v1/ai/quotas/config",
        json!({"quotas": [
            {"name": "daily", "metric": "cost_usd", "window": "day", "limit": "1000000", "enforce": true},
            {"name": "per-user", "metric": "requests", "window": "day", "limit": 100_000_000, "user_id": "user-1", "enforce": true}]}),
    )
    .send()
    .await?;
    anyhow::ensure!(r.status().is_success(), "quotas: {}", r.text().await?);

    let (bodies, counts) = requests(512, false)?;
    let mut sorted = counts.clone();
    sorted.sort_unstable();
    println!(
        "  prompts: {} distinct, o200k tokens min {} / median {} / max {}",
        sorted.len(),
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    );
    let direct_url = format!("{}/chat/completions", fake.openai_url());
    let through_url = format!("{base}/v1/chat/completions");
    // Warm both paths (connections, the tokenizer, the tenant's state).
    for b in bodies.iter().take(50) {
        client
            .post(&through_url)
            .bearer_auth(&key)
            .json(b)
            .send()
            .await?
            .bytes()
            .await?;
    }
    let encoded = encode_once(&bodies);
    let pick = |i: u64| encoded[(i as usize) % encoded.len()];
    let direct_call = |i: u64| {
        client
            .post(&direct_url)
            .bearer_auth(tally_fake_provider::KEY)
            .header("content-type", "application/json")
            .body(pick(i))
    };
    let through_call = |i: u64| {
        client
            .post(&through_url)
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(pick(i))
    };
    if sequential {
        println!("  order: the direct calls first, then the calls through tally (--sequential)");
    } else {
        println!(
            "  order: direct and through tally take turns, {} ms each, at {rate} req/s",
            SLICE.as_millis()
        );
    }
    let cpu_before = server.cpu_seconds();
    let started = Instant::now();
    let mut parts = open_loop_split(&client, rate, 2 * seconds, 2, |i| {
        if through_turn(i, rate, rate * seconds, sequential) {
            (1, through_call(i))
        } else {
            (0, direct_call(i))
        }
    })
    .await?
    .into_iter();
    let (through, through_errors) = parts.next_back().unwrap_or_default();
    let (direct, direct_errors) = parts.next_back().unwrap_or_default();
    // The server's share of the wall time: its half of the calls.
    let wall = started.elapsed().as_secs_f64() / 2.0;
    let cpu = server.cpu_seconds() - cpu_before;
    let (d, t) = (stats(direct), stats(through));
    print_stats("direct to the provider", &d);
    print_stats("through tally", &t);
    print_overhead("overhead (through − direct)", &t, &d);
    let calls = (rate * seconds) as f64;
    println!(
        "  server CPU                         {:.1} µs per call ({:.0} % of a core over {wall:.1} s of calls)",
        cpu / calls * 1e6,
        cpu / wall * 100.0
    );
    println!("  errors: direct {direct_errors}, through {through_errors}");

    // Streams: time to the first content byte, the two paths taking turns as above.
    let (streams, _) = requests(128, true)?;
    let streams = encode_once(&streams);
    let stream_rate = (rate / 5).max(1);
    let stream_calls = stream_rate * seconds.min(10);
    let interval = Duration::from_nanos(1_000_000_000 / stream_rate);
    let mut handles = Vec::new();
    let start = Instant::now();
    for i in 0..2 * stream_calls {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        let through = through_turn(i, stream_rate, stream_calls, sequential);
        let (url, auth) = if through {
            (&through_url, key.as_str())
        } else {
            (&direct_url, tally_fake_provider::KEY)
        };
        let req = client
            .post(url)
            .bearer_auth(auth)
            .header("content-type", "application/json")
            .body(streams[i as usize % streams.len()]);
        handles.push(tokio::spawn(async move {
            let sent = Instant::now();
            let mut resp = req.send().await?;
            let mut first = None;
            while let Some(chunk) = resp.chunk().await? {
                if first.is_none() && String::from_utf8_lossy(&chunk).contains("\"content\":\"word")
                {
                    first = Some(sent.elapsed().as_micros() as u64);
                }
            }
            anyhow::Ok((through, first))
        }));
    }
    let (mut direct_ttft, mut through_ttft) = (Vec::new(), Vec::new());
    for h in handles {
        match h.await?? {
            (true, Some(l)) => through_ttft.push(l),
            (false, Some(l)) => direct_ttft.push(l),
            (_, None) => {}
        }
    }
    let (d, t) = (stats(direct_ttft), stats(through_ttft));
    println!("  streams at {stream_rate} req/s, time to first token:");
    print_stats("direct to the provider", &d);
    print_stats("through tally", &t);
    print_overhead("overhead (through − direct)", &t, &d);
    print_memory(&server);
    // Every call was recorded: the records are committed within the recording interval.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = client
        .get(format!("{base}/api/v1/ai/stats/{tenant}?period=last_24h"))
        .bearer_auth(&key)
        .send()
        .await?;
    let v: Value = r.json().await.unwrap_or_default();
    println!(
        "  usage records stored: {} (calls made through tally: {})",
        v["total_messages"],
        50 + rate * seconds + stream_calls
    );
    server.stop();
    drop(dir);
    Ok(())
}
