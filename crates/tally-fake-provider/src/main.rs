//! `tally-fake-provider --listen 127.0.0.1:9100 --latency-ms 200`: the fake provider on
//! its own (for the benchmark and for trying the gateway by hand).

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: std::net::SocketAddr,
    /// Time before every answer's first byte.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Words in every answer.
    #[arg(long, default_value_t = 20)]
    answer_words: usize,
    /// The API key it accepts.
    #[arg(long, default_value = tally_fake_provider::KEY)]
    key: String,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let script = tally_fake_provider::Script {
        latency_ms: args.latency_ms,
        answer_words: args.answer_words,
        key: args.key,
        ..Default::default()
    };
    let fake = tally_fake_provider::FakeProvider::start_on(args.listen, script).await?;
    println!("fake provider listening on http://{}", fake.addr);
    println!("  OpenAI:    http://{}/v1", fake.addr);
    println!("  Anthropic: http://{}/anthropic/v1", fake.addr);
    println!("  Gemini:    http://{}/gemini/v1beta", fake.addr);
    std::future::pending::<()>().await;
    Ok(())
}
