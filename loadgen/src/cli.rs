//! Command-line flags of `amr-loadgen`.

use clap::Parser;
use std::time::Duration;

/// Parses `30s`, `500ms`, `2m` (humantime).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration '{s}': {e}"))
}

fn parse_watch(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PID, got '{s}'"))?;
    let pid = pid
        .parse::<u32>()
        .map_err(|e| format!("invalid pid in '{s}': {e}"))?;
    if name.is_empty() {
        return Err(format!("empty name in '{s}'"));
    }
    Ok((name.to_owned(), pid))
}

fn parse_prefix(s: &str) -> Result<String, String> {
    // Device ids are `<prefix>-<index>`: the prefix must keep them valid (1-64 of [A-Za-z0-9_-]).
    if !s.is_empty() && s.len() <= 48 && amr_proto::ids::is_valid_device_id(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "invalid device prefix '{s}': 1-48 characters of [A-Za-z0-9_-]"
        ))
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("invalid rate '{s}': {e}"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("rate must be a finite number >= 0, got '{s}'"))
    }
}

/// What each simulated device does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The app's loop: session_start, sensor data for --session-secs (or
    /// --messages-per-session) at --rate, session_end, --pause, again.
    Cycle,
    /// Start/end churn without data (session start latency benchmark): session_start,
    /// session_end right after session_created, --pause, again.
    Sessions,
    /// One long session per device, data pipelined as fast as --rate allows (0: unlimited),
    /// ended when the run ends (throughput benchmark).
    Ingest,
    /// Connect, register, hold the connection until the run ends (memory benchmark).
    Idle,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Cycle => "cycle",
            Mode::Sessions => "sessions",
            Mode::Ingest => "ingest",
            Mode::Idle => "idle",
        }
    }
}

/// Simulates AMR devices against an AMR Bridge gateway (or a baseline server speaking the same
/// protocol). Only loopback targets are accepted.
#[derive(Debug, Clone, Parser)]
#[command(name = "amr-loadgen", version, about)]
pub struct Args {
    /// WebSocket URL of the server (ws:// only; host must be a loopback address or localhost).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// What each device does.
    #[arg(long, value_enum, default_value_t = Mode::Cycle)]
    pub mode: Mode,
    /// Number of simulated devices, one WebSocket connection each.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub devices: usize,
    /// Length of the measured window (after the connection ramp and the warm-up).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Time between the end of the connection ramp and the start of measuring. Latencies and
    /// rates are measured only in the window; totals (errors, mismatches) cover the whole run.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// New connections per second during the ramp-up (0: all at once).
    #[arg(long, default_value_t = 1000.0, value_parser = parse_rate)]
    pub connect_rate: f64,
    /// Sensor messages per second per device (0: unlimited, pipelined).
    #[arg(long, default_value_t = 10.0, value_parser = parse_rate)]
    pub rate: f64,
    /// Length of one session in cycle mode, in seconds of streaming.
    #[arg(long, default_value_t = 10.0, value_parser = parse_rate)]
    pub session_secs: f64,
    /// Cycle mode: end a session after this many sensor messages instead of --session-secs.
    #[arg(long)]
    pub messages_per_session: Option<u64>,
    /// Pause between session_ended and the next session_start (cycle and sessions modes).
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub pause: Duration,
    /// Samples per message: 1 sends `sensor_data`, N > 1 sends `sensor_batch` of N samples.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
    /// Number the sensor messages (`seq`), count acks and measure publish->ack latency.
    #[arg(long)]
    pub seq: bool,
    /// Size of one `sensor_data` message in bytes, the whole JSON text (padded). With --batch N
    /// each sample is padded so the batch is about N times this size.
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    /// With --seq: at most this many messages sent and not yet acked per device (a client's
    /// resend buffer); sending waits for acks when it is full. 0: no bound (the socket buffers
    /// then hold a backlog the server works off after the run).
    #[arg(long, default_value_t = 1024)]
    pub max_unacked: u64,
    /// Unlimited rate: messages written before each flush.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub pipeline: u32,
    /// How long to wait for session_created / session_ended before counting a timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub reply_timeout: Duration,
    /// With --seq: after the last message of a session, how long to wait for the remaining acks
    /// before sending session_end.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub ack_drain: Duration,
    /// TCP connect + WebSocket handshake timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Reconnection attempts per device after a failed connect or a dropped connection.
    #[arg(long, default_value_t = 2)]
    pub connect_retries: u32,
    /// Device ids are `<prefix>-<index>` (index zero-padded to 6 digits).
    #[arg(long, default_value = "lg", value_parser = parse_prefix)]
    pub device_prefix: String,
    /// `clientVersion` announced in device_register.
    #[arg(long, default_value = "1.1.0")]
    pub client_version: String,
    /// Bind the client side of connections to 127.0.0.1 .. 127.0.0.N round-robin (IPv4 loopback
    /// targets only), to go beyond one address's ephemeral ports. 1 lets the kernel choose.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub source_ips: u8,
    /// PID of the server under test: report its RSS (before, after the ramp, at the end, per
    /// connection) and its CPU time in the measured window (per message, per session).
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// More processes to report CPU time and RSS of, as NAME=PID (repeatable), e.g.
    /// `--watch-pid nats=1234 --watch-pid session-service=1240`.
    #[arg(long = "watch-pid", value_parser = parse_watch)]
    pub watch: Vec<(String, u32)>,
    /// Worker threads of the load tool's runtime (default: the number of cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the final report as one JSON object on stdout (progress stays on stderr).
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// A free-form label copied into the report (for scripts).
    #[arg(long)]
    pub label: Option<String>,
}
