//! `amr-bridge` configuration: every gateway option (flattened), plus what the session state
//! machine and the embedded mode need. The same `AMR_*` variables as the two services.

use amr_gateway::config::{Config as GatewayConfig, LogFormat as GatewayLogFormat};
use amr_session_service::config::{
    parse_duration, Config as SessionConfig, LogFormat as SessionLogFormat, Policy,
};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// AMR Bridge in one process: embedded (no NATS/Redis; data in files) unless AMR_NATS_URL is set.
#[derive(Debug, Clone, Parser)]
#[command(name = "amr-bridge", version, about)]
pub struct BridgeConfig {
    #[command(flatten)]
    pub gateway: GatewayConfig,
    /// Embedded mode: directory of the sensor data files and the session index.
    #[arg(long, env = "AMR_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Distributed mode: Redis URL of the session store.
    #[arg(long, env = "AMR_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Distributed mode: HTTP side endpoints of the session service part.
    #[arg(long, env = "AMR_SERVICE_HTTP_LISTEN", default_value = "0.0.0.0:9091")]
    pub service_http_listen: SocketAddr,
    /// What a start does when the device already has an active session.
    #[arg(long, env = "AMR_CONFLICT_POLICY", value_enum, default_value_t = Policy::Replace)]
    pub conflict_policy: Policy,
    /// How long ended sessions stay queryable.
    #[arg(long, env = "AMR_SESSION_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub session_retention: Duration,
    /// How long a session whose connection closed waits to be resumed.
    #[arg(long, env = "AMR_DISCONNECT_GRACE", default_value = "0s", value_parser = parse_duration)]
    pub disconnect_grace: Duration,
    /// The least grace of a session whose connection was closed by a drain.
    #[arg(long, env = "AMR_DRAIN_GRACE", default_value = "60s", value_parser = parse_duration)]
    pub drain_grace: Duration,
    /// Distributed mode: retention of the AMR_SESSIONS stream.
    #[arg(long, env = "AMR_SESSIONS_MAX_AGE", default_value = "30d", value_parser = parse_duration)]
    pub sessions_max_age: Duration,
}

impl BridgeConfig {
    /// The session service's configuration, sharing the gateway's common settings.
    pub fn session(&self) -> SessionConfig {
        let g = &self.gateway;
        SessionConfig {
            nats_url: g.nats_url.clone(),
            redis_url: self.redis_url.clone(),
            http_listen: self.service_http_listen,
            subject_prefix: g.subject_prefix.clone(),
            conflict_policy: self.conflict_policy,
            session_idle_timeout: g.session_idle_timeout,
            session_retention: self.session_retention,
            disconnect_grace: self.disconnect_grace,
            drain_grace: self.drain_grace,
            request_timeout: g.request_timeout,
            gateway_lost_after: g.gateway_lost_after,
            sessions_max_age: self.sessions_max_age,
            log_format: match g.log_format {
                GatewayLogFormat::Text => SessionLogFormat::Text,
                GatewayLogFormat::Json => SessionLogFormat::Json,
            },
        }
    }

    pub fn gateway(&self) -> GatewayConfig {
        self.gateway.clone()
    }
}
