//! Benchmarks of DESIGN.md's budgets against the real server: this binary starts the
//! release `tally` binary on a fresh data dir, drives it over loopback HTTP, and prints
//! medians and tails next to a baseline measured in the same run.
//!
//! ```text
//! cargo build --release -p tally -p tally-bench
//! target/release/tally-bench ingest        # durable batch ingestion throughput
//! target/release/tally-bench track         # single-event latency at a fixed 1,000 req/s
//! target/release/tally-bench activities    # activity listing p95 over 10M stored events
//! target/release/tally-bench ai-ingest     # AI usage ingestion throughput
//! target/release/tally-bench ai-reads      # every AI analytics endpoint over 10M usage records
//! target/release/tally-bench login-flood   # track latency idle and during a login flood
//! target/release/tally-bench gateway       # LLM gateway overhead against the fake provider
//! target/release/tally-bench all
//! ```

mod ai;
mod gateway;
mod load;
mod login;
mod server;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "tally benchmarks (real server, loopback HTTP)")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Durable batch ingestion: batches of 100 realistic events, N concurrent clients.
    Ingest {
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        batch: usize,
    },
    /// Single-event track latency at a fixed request rate (open loop).
    Track {
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// Activity listing latency with many stored events.
    Activities {
        #[arg(long, default_value_t = 10_000_000)]
        events: usize,
        #[arg(long, default_value_t = 2000)]
        queries: usize,
    },
    /// AI usage ingestion (`POST /api/v1/ai/usage`) throughput.
    AiIngest {
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        batch: usize,
    },
    /// Every AI analytics endpoint with many stored usage records.
    AiReads {
        #[arg(long, default_value_t = 10_000_000)]
        records: u64,
        #[arg(long, default_value_t = 2000)]
        queries: usize,
    },
    /// Single-event track latency idle and during a login flood.
    LoginFlood {
        #[arg(long, default_value_t = 200)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Login attempts per second, offered open loop.
        #[arg(long, default_value_t = 1000)]
        flood_rate: u64,
    },
    /// LLM gateway overhead: the fake provider directly and through tally, same run.
    Gateway {
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// The fake provider's latency before its first byte.
        #[arg(long, default_value_t = 50)]
        latency_ms: u64,
        /// Let the server, the load generator and the fake provider share every core (by
        /// default the server has the last core to itself, the other two the rest).
        #[arg(long)]
        shared_cores: bool,
        /// Run the direct calls first and the calls through tally after, as the figures
        /// before 2026-12-03's fifth session were taken (by default they take turns).
        #[arg(long)]
        sequential: bool,
    },
    /// Everything above with defaults.
    All,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.command {
            Bench::Ingest {
                seconds,
                connections,
                batch,
            } => load::ingest(seconds, connections, batch).await,
            Bench::Track { rate, seconds } => load::track(rate, seconds).await,
            Bench::Activities { events, queries } => load::activities(events, queries).await,
            Bench::AiIngest {
                seconds,
                connections,
                batch,
            } => ai::ingest(seconds, connections, batch).await,
            Bench::AiReads { records, queries } => ai::reads(records, queries).await,
            Bench::LoginFlood {
                rate,
                seconds,
                flood_rate,
            } => login::login_flood(rate, seconds, flood_rate).await,
            Bench::Gateway {
                rate,
                seconds,
                latency_ms,
                shared_cores,
                sequential,
            } => gateway::gateway(rate, seconds, latency_ms, !shared_cores, sequential).await,
            Bench::All => {
                load::ingest(20, 8, 100).await?;
                load::track(1000, 20).await?;
                load::activities(10_000_000, 2000).await?;
                ai::ingest(20, 8, 100).await?;
                ai::reads(10_000_000, 2000).await?;
                login::login_flood(200, 10, 1000).await?;
                gateway::gateway(1000, 20, 50, false, false).await
            }
        }
    })
}
