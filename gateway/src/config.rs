//! Gateway configuration: every option is a flag and an `AMR_*` environment variable.

use clap::Parser;
use std::net::SocketAddr;
use std::time::Duration;

/// Parses `30m`, `2s`, `500ms`, `7d` (humantime).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration '{s}': {e}"))
}

/// `AMR_GATEWAY_LOST_AFTER`: at least 100 ms (heartbeats go every third of it).
fn parse_lost_after(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) {
        return Err(format!("'{s}' is too short: at least 100ms"));
    }
    Ok(d)
}

fn parse_prefix(s: &str) -> Result<String, String> {
    if amr_proto::subjects::is_valid_prefix(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "invalid subject prefix '{s}': dot-separated tokens of [A-Za-z0-9_-]"
        ))
    }
}

fn parse_gateway_id(s: &str) -> Result<String, String> {
    if amr_proto::ids::is_valid_device_id(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "invalid gateway id '{s}': 1-64 characters of [A-Za-z0-9_-]"
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `AMR_AUTH_MODE`: whether clients must present a JWT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// No authentication (v1.x apps send no token).
    None,
    /// A valid JWT whose device claim equals the registered deviceId.
    Jwt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StorageKind {
    File,
    Memory,
}

/// AMR Bridge WebSocket gateway.
#[derive(Debug, Clone, Parser)]
#[command(name = "amr-gateway", version, about)]
pub struct Config {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "AMR_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Address the WebSocket listener binds.
    #[arg(long, env = "AMR_WS_LISTEN", default_value = "0.0.0.0:8080")]
    pub ws_listen: SocketAddr,
    /// HTTP path of the WebSocket endpoint.
    #[arg(long, env = "AMR_WS_PATH", default_value = "/ws")]
    pub ws_path: String,
    /// Address of the HTTP side endpoints (/healthz, /readyz, /metrics).
    #[arg(long, env = "AMR_HTTP_LISTEN", default_value = "0.0.0.0:9090")]
    pub http_listen: SocketAddr,
    /// Prefix of every NATS subject.
    #[arg(long, env = "AMR_SUBJECT_PREFIX", default_value = "amr", value_parser = parse_prefix)]
    pub subject_prefix: String,
    /// This replica's id (in `Amr-Gateway` headers and internal subjects); random when unset.
    #[arg(long, env = "AMR_GATEWAY_ID", value_parser = parse_gateway_id)]
    pub gateway_id: Option<String>,
    /// Largest accepted client message, in bytes (fragments reassembled).
    #[arg(long, env = "AMR_MAX_FRAME_BYTES", default_value_t = 65536)]
    pub max_frame_bytes: usize,
    /// Session idle timeout (must match the session service's); activity reports scale with it.
    #[arg(long, env = "AMR_SESSION_IDLE_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pub session_idle_timeout: Duration,
    /// Bound on every session operation, retries included; then SERVICE_UNAVAILABLE.
    #[arg(long, env = "AMR_REQUEST_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// The session service ends the sessions of a gateway silent this long (`gateway_lost`);
    /// heartbeats go every third of it (must match the session service's).
    #[arg(long, env = "AMR_GATEWAY_LOST_AFTER", default_value = "30s", value_parser = parse_lost_after)]
    pub gateway_lost_after: Duration,
    /// Interval of WebSocket pings to each client.
    #[arg(long, env = "AMR_PING_INTERVAL", default_value = "20s", value_parser = parse_duration)]
    pub ping_interval: Duration,
    /// A client silent for this long is gone (abnormal end).
    #[arg(long, env = "AMR_PEER_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub peer_timeout: Duration,
    /// On SIGTERM: how long connections get to close before the process exits.
    #[arg(long, env = "AMR_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Retention (max age) of the AMR_SENSOR stream when the gateway creates it.
    #[arg(long, env = "AMR_SENSOR_MAX_AGE", default_value = "7d", value_parser = parse_duration)]
    pub sensor_max_age: Duration,
    /// Size bound of the AMR_SENSOR stream in bytes (-1: unlimited).
    #[arg(long, env = "AMR_SENSOR_MAX_BYTES", default_value_t = -1, allow_negative_numbers = true)]
    pub sensor_max_bytes: i64,
    /// Replicas of the AMR_SENSOR stream (1 on a single NATS server, 3 on a cluster).
    #[arg(long, env = "AMR_SENSOR_REPLICAS", default_value_t = 1)]
    pub sensor_replicas: usize,
    /// Storage of the AMR_SENSOR stream.
    #[arg(long, env = "AMR_SENSOR_STORAGE", value_enum, default_value = "file")]
    pub sensor_storage: StorageKind,
    /// JetStream de-duplication window of the AMR_SENSOR stream.
    #[arg(long, env = "AMR_SENSOR_DUPLICATE_WINDOW", default_value = "2m", value_parser = parse_duration)]
    pub sensor_duplicate_window: Duration,
    /// Acks for `seq` messages are coalesced: sent at most this long after the data is stored.
    #[arg(long, env = "AMR_ACK_INTERVAL", default_value = "50ms", value_parser = parse_duration)]
    pub ack_interval: Duration,
    /// ... or as soon as this many messages were stored since the last ack.
    #[arg(long, env = "AMR_ACK_EVERY", default_value_t = 256)]
    pub ack_every: u32,
    /// JetStream publishes awaiting their ack, per connection; at the bound the gateway stops
    /// reading that socket (TCP backpressure) instead of buffering.
    #[arg(long, env = "AMR_MAX_INFLIGHT_PER_CONN", default_value_t = 1024)]
    pub max_inflight_per_conn: usize,
    /// JetStream publishes awaiting their ack, for the whole gateway.
    #[arg(long, env = "AMR_MAX_INFLIGHT", default_value_t = 65536)]
    pub max_inflight: usize,
    /// How long a JetStream publish may wait for its ack before it counts as not stored.
    #[arg(long, env = "AMR_PUBLISH_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub publish_timeout: Duration,
    /// Client authentication: `none` or `jwt` (see docs/protocol.md, Authentication).
    #[arg(long, env = "AMR_AUTH_MODE", value_enum, default_value = "none")]
    pub auth_mode: AuthMode,
    /// Shared secret of HS256 tokens (jwt mode).
    #[arg(long, env = "AMR_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
    /// Directory of PEM public keys for RS256/ES256 tokens; a file's name without extension is
    /// its `kid` (several keys: rotation).
    #[arg(long, env = "AMR_JWT_PUBLIC_KEYS_DIR")]
    pub jwt_public_keys_dir: Option<std::path::PathBuf>,
    /// The token claim that must equal the registered deviceId.
    #[arg(long, env = "AMR_JWT_DEVICE_CLAIM", default_value = "sub")]
    pub jwt_device_claim: String,
    /// Clock skew tolerated on `exp`/`nbf`.
    #[arg(long, env = "AMR_JWT_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,
    /// Messages per second one connection may send (token bucket refill; 0 = no limit).
    #[arg(long, env = "AMR_CONN_RATE_LIMIT", default_value_t = 5000)]
    pub conn_rate_limit: u32,
    /// Burst of the per-connection token bucket (0 = no limit).
    #[arg(long, env = "AMR_CONN_RATE_BURST", default_value_t = 10000)]
    pub conn_rate_burst: u32,
    /// A connection refused for rate at least once a second for this long is closed (1008);
    /// 0s = never closed for rate.
    #[arg(long, env = "AMR_RATE_LIMIT_CLOSE_AFTER", default_value = "10s", value_parser = parse_duration)]
    pub rate_limit_close_after: Duration,
    /// Open WebSocket connections per client IP (0 = no limit; a fleet behind NAT shares one).
    #[arg(long, env = "AMR_MAX_CONNS_PER_IP", default_value_t = 0)]
    pub max_conns_per_ip: usize,
    /// Open WebSocket connections of this gateway (over it: HTTP 503 at the upgrade).
    #[arg(long, env = "AMR_MAX_CONNECTIONS", default_value_t = 100000)]
    pub max_connections: usize,
    /// A TCP connection that has not completed the WebSocket upgrade by then is dropped.
    #[arg(long, env = "AMR_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Allowed browser `Origin`s, comma-separated (empty: any). Requests without `Origin`
    /// (robots) are always allowed.
    #[arg(long, env = "AMR_ALLOWED_ORIGINS", default_value = "")]
    pub allowed_origins: String,
    /// A write to a client that does not complete in this long (the client stopped reading)
    /// drops the connection.
    #[arg(long, env = "AMR_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: Duration,
    /// Log format (level by RUST_LOG).
    #[arg(long, env = "AMR_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Config {
    /// How often a connection reports its sample counts: a quarter of the idle timeout, so a
    /// session with data flowing is never ended for idleness, at most every 5 s.
    pub fn activity_interval(&self) -> Duration {
        (self.session_idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
    }

    /// How often the gateway tells the session service it is alive: a third of
    /// `AMR_GATEWAY_LOST_AFTER`, so that a lost heartbeat or two never ends its sessions.
    pub fn heartbeat_interval(&self) -> Duration {
        self.gateway_lost_after / 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_lost_after() {
        let c = Config::try_parse_from(["amr-gateway"]).unwrap();
        assert_eq!(c.gateway_lost_after, Duration::from_secs(30));
        assert_eq!(c.heartbeat_interval(), Duration::from_secs(10));
        let c = Config::try_parse_from(["x", "--gateway-lost-after", "3s"]).unwrap();
        assert_eq!(c.heartbeat_interval(), Duration::from_secs(1));
        assert!(Config::try_parse_from(["x", "--gateway-lost-after", "0s"]).is_err());
        assert!(Config::try_parse_from(["x", "--gateway-lost-after", "soon"]).is_err());
    }

    #[test]
    fn security_defaults() {
        let c = Config::try_parse_from(["amr-gateway"]).unwrap();
        assert_eq!(c.auth_mode, AuthMode::None);
        assert_eq!(c.jwt_device_claim, "sub");
        assert_eq!(c.jwt_leeway, Duration::from_secs(30));
        assert_eq!((c.conn_rate_limit, c.conn_rate_burst), (5000, 10000));
        assert_eq!(c.max_conns_per_ip, 0);
        assert_eq!(c.max_connections, 100000);
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.allowed_origins, "");
        let c = Config::try_parse_from(["x", "--auth-mode", "jwt"]).unwrap();
        assert_eq!(c.auth_mode, AuthMode::Jwt);
        assert!(Config::try_parse_from(["x", "--auth-mode", "basic"]).is_err());
    }
}
