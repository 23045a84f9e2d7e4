//! Configuration: every option is a flag and an environment variable.

use crate::machine::{ConflictPolicy, Settings};
use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;

/// Session service of AMR Bridge: owns every decision about sessions; state in Redis.
#[derive(Debug, Clone, Parser)]
#[command(name = "amr-session-service", version)]
pub struct Config {
    /// NATS server URL.
    #[arg(long, env = "AMR_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Redis URL (the only place session state lives).
    #[arg(long, env = "AMR_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Address of the HTTP side endpoints (/healthz, /readyz, /metrics, /api/sessions).
    #[arg(long, env = "AMR_HTTP_LISTEN", default_value = "0.0.0.0:9091")]
    pub http_listen: SocketAddr,

    /// Prefix of every NATS subject and Redis key (dot-separated tokens of [A-Za-z0-9_-]).
    #[arg(long, env = "AMR_SUBJECT_PREFIX", default_value = "amr", value_parser = parse_prefix)]
    pub subject_prefix: String,

    /// What a start does when the device already has an active session.
    #[arg(long, env = "AMR_CONFLICT_POLICY", value_enum, default_value_t = Policy::Replace)]
    pub conflict_policy: Policy,

    /// A session without accepted data for this long ends `idle_timeout` (e.g. 30m, 2s, 500ms).
    #[arg(long, env = "AMR_SESSION_IDLE_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pub session_idle_timeout: Duration,

    /// How long ended sessions stay queryable.
    #[arg(long, env = "AMR_SESSION_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub session_retention: Duration,

    /// How long a session whose connection closed waits to be resumed before it ends
    /// `disconnected` (0s: it ends at once).
    #[arg(long, env = "AMR_DISCONNECT_GRACE", default_value = "0s", value_parser = parse_duration)]
    pub disconnect_grace: Duration,

    /// The least grace of a session whose connection a draining gateway closed.
    #[arg(long, env = "AMR_DRAIN_GRACE", default_value = "60s", value_parser = parse_duration)]
    pub drain_grace: Duration,

    /// Bound of every request this service serves, and of each call it makes.
    #[arg(long, env = "AMR_REQUEST_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// A gateway that sent no heartbeat for this long is lost: the sessions its connections
    /// held end `gateway_lost` within this bound (give the gateways the same value).
    #[arg(long, env = "AMR_GATEWAY_LOST_AFTER", default_value = "30s", value_parser = parse_lost_after)]
    pub gateway_lost_after: Duration,

    /// Retention (max age) of the AMR_SESSIONS lifecycle-event stream.
    #[arg(long, env = "AMR_SESSIONS_MAX_AGE", default_value = "30d", value_parser = parse_duration)]
    pub sessions_max_age: Duration,

    /// Log format.
    #[arg(long, env = "AMR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Policy {
    Replace,
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The one place durations are parsed: humantime (`500ms`, `2s`, `30m`, `7d`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// `AMR_GATEWAY_LOST_AFTER`: a duration of at least 100 ms (heartbeats go every third of it).
pub fn parse_lost_after(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < MIN_LOST_AFTER {
        return Err(format!("{s:?} is too short: at least {MIN_LOST_AFTER:?}"));
    }
    Ok(d)
}

/// Shortest `AMR_GATEWAY_LOST_AFTER` accepted.
pub const MIN_LOST_AFTER: Duration = Duration::from_millis(100);

fn parse_prefix(s: &str) -> Result<String, String> {
    if amr_proto::subjects::is_valid_prefix(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid prefix {s:?}: dot-separated tokens of [A-Za-z0-9_-] expected"
        ))
    }
}

/// A duration in whole milliseconds (the unit of every stored time), saturating.
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Config {
    /// What the state machine needs of the configuration.
    pub fn settings(&self) -> Settings {
        Settings {
            policy: match self.conflict_policy {
                Policy::Replace => ConflictPolicy::Replace,
                Policy::Reject => ConflictPolicy::Reject,
            },
            idle_timeout_ms: millis(self.session_idle_timeout),
            disconnect_grace_ms: millis(self.disconnect_grace),
            drain_grace_ms: millis(self.drain_grace),
            subjects: amr_proto::subjects::Subjects::new(self.subject_prefix.clone()),
        }
    }

    /// How often the sweeper looks for due deadlines: a quarter of the shortest wait it
    /// enforces, between 50 ms and 1 s.
    pub fn sweep_interval(&self) -> Duration {
        let quarter =
            |d: Duration| (d / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        [
            self.session_idle_timeout,
            self.disconnect_grace,
            self.drain_grace,
        ]
        .into_iter()
        .filter(|d| !d.is_zero())
        .map(quarter)
        .min()
        .unwrap_or(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_durations() {
        let c = Config::try_parse_from(["amr-session-service"]).unwrap();
        assert_eq!(c.session_idle_timeout, Duration::from_secs(1800));
        assert_eq!(c.session_retention, Duration::from_secs(7 * 86400));
        assert_eq!(c.disconnect_grace, Duration::ZERO);
        assert_eq!(c.conflict_policy, Policy::Replace);
        assert_eq!(c.sweep_interval(), Duration::from_secs(1));
        assert_eq!(c.gateway_lost_after, Duration::from_secs(30));
        let c = Config::try_parse_from([
            "x",
            "--session-idle-timeout",
            "2s",
            "--conflict-policy",
            "reject",
            "--request-timeout",
            "500ms",
        ])
        .unwrap();
        assert_eq!(c.sweep_interval(), Duration::from_millis(500));
        assert_eq!(c.request_timeout, Duration::from_millis(500));
        assert_eq!(c.settings().policy, ConflictPolicy::Reject);
        assert!(Config::try_parse_from(["x", "--subject-prefix", "a..b"]).is_err());
        assert!(Config::try_parse_from(["x", "--session-idle-timeout", "soon"]).is_err());
        assert!(Config::try_parse_from(["x", "--gateway-lost-after", "0s"]).is_err());
        let c = Config::try_parse_from(["x", "--gateway-lost-after", "3s"]).unwrap();
        assert_eq!(c.gateway_lost_after, Duration::from_secs(3));
    }
}
