//! `hop-latency`: the round trips the session path is made of, measured by themselves on this
//! machine, so that the session-start figures can be read against their floor.
//!
//! At a fixed rate (paced, one at a time): a NATS request/reply between two connections of this
//! process (the gateway -> session service hop and back), and a Redis `PING` (one store round
//! trip). Reports p50/p90/p99/p99.9/max in microseconds (hdrhistogram), as text or `--json`.
//! Only loopback URLs are accepted.

use amr_loadgen::target::require_loopback;
use clap::Parser;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Round trips of NATS request/reply and Redis PING, paced.
#[derive(Debug, Parser)]
#[command(name = "hop-latency", version, about)]
struct Args {
    /// NATS server (loopback only).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Redis server (loopback only).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Round trips per second, of each kind.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Measuring time.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

const SUBJECT: &str = "hop-latency.echo";
/// Any single round trip longer than this is an error, not a sample.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hop-latency: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<(), String> {
    require_loopback(&args.nats)?;
    require_loopback(&args.redis)?;
    if args.rate == 0 {
        return Err("--rate must be at least 1".into());
    }
    let responder = async_nats::connect(&args.nats)
        .await
        .map_err(|e| format!("nats: {e}"))?;
    let mut requests = responder
        .subscribe(SUBJECT)
        .await
        .map_err(|e| format!("nats subscribe: {e}"))?;
    let echo = responder.clone();
    tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            if let Some(reply) = m.reply {
                let _ = echo.publish(reply, m.payload).await;
            }
        }
    });
    let requester = async_nats::connect(&args.nats)
        .await
        .map_err(|e| format!("nats: {e}"))?;
    let redis = redis::Client::open(args.redis.as_str()).map_err(|e| format!("redis: {e}"))?;
    let mut store = redis::aio::ConnectionManager::new(redis)
        .await
        .map_err(|e| format!("redis: {e}"))?;
    // The responder's subscription is live once a request gets through.
    for _ in 0..50 {
        if requester.request(SUBJECT, "w".into()).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut nats_us = histogram()?;
    let mut redis_us = histogram()?;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = Instant::now() + args.duration;
    while Instant::now() < end {
        tick.tick().await;
        let t = Instant::now();
        tokio::time::timeout(CALL_TIMEOUT, requester.request(SUBJECT, "x".into()))
            .await
            .map_err(|_| "a NATS request timed out".to_string())?
            .map_err(|e| format!("nats request: {e}"))?;
        record(&mut nats_us, t.elapsed());
        let t = Instant::now();
        let ping = redis::cmd("PING");
        tokio::time::timeout(CALL_TIMEOUT, ping.query_async::<String>(&mut store))
            .await
            .map_err(|_| "a Redis PING timed out".to_string())?
            .map_err(|e| format!("redis: {e}"))?;
        record(&mut redis_us, t.elapsed());
    }
    let report = json!({
        "rate_per_sec": args.rate,
        "duration_secs": args.duration.as_secs_f64(),
        "nats_request_reply_us": summary(&nats_us),
        "redis_ping_us": summary(&redis_us),
    });
    if args.json {
        println!("{report}");
    } else {
        for (name, h) in [("NATS request/reply", &nats_us), ("Redis PING", &redis_us)] {
            println!(
                "{name}: n={} p50={} p90={} p99={} p99.9={} max={} us",
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            );
        }
    }
    Ok(())
}

fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
}

fn summary(h: &Histogram<u64>) -> serde_json::Value {
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.5),
        "p90": h.value_at_quantile(0.9),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
    })
}
