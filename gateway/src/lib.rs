//! AMR Bridge gateway: the stateless WebSocket edge.
//!
//! It owns WebSocket termination, parsing and validation of client messages, the
//! connection's registered device and current session (a cache of what the session service
//! decided), forwarding sensor data straight to NATS, pings, and draining on shutdown.
//!
//! It must never decide anything about sessions (the session service does), never touch Redis,
//! never make a per-message round trip on the sensor-data path, and never keep anything that
//! must survive the process.

pub mod acks;
pub mod auth;
pub mod backend;
pub mod config;
pub mod connection;
pub mod deadline;
pub mod forward;
pub mod http;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod registry;
pub mod session_client;
pub mod streams;

use amr_proto::subjects::Subjects;
use backend::{Readiness, SensorSink, SessionApi};
use config::Config;
use registry::Registry;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// What every connection task shares.
pub struct Shared {
    pub config: Config,
    pub subjects: Subjects,
    /// This process's id in internal subjects and session requests (see [`instance_id`]).
    pub gateway_id: String,
    pub sessions: Arc<dyn SessionApi>,
    pub sink: Arc<dyn SensorSink>,
    pub readiness: Arc<dyn Readiness>,
    pub registry: Arc<Registry>,
    /// Becomes true on shutdown: connections close with 1012.
    pub drain: watch::Receiver<bool>,
    pub draining: AtomicBool,
    /// `None` when `AMR_AUTH_MODE=none`.
    pub auth: Option<auth::Authenticator>,
    pub conn_limits: Arc<limits::ConnLimits>,
    pub origins: limits::Origins,
}

impl Shared {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The parts a gateway is assembled from (NATS-backed, or in-process in embedded mode).
pub struct Backend {
    /// See [`instance_id`].
    pub gateway_id: String,
    pub registry: Arc<Registry>,
    pub sessions: Arc<dyn SessionApi>,
    pub sink: Arc<dyn SensorSink>,
    pub readiness: Arc<dyn Readiness>,
    /// Extra HTTP routes served on the gateway's HTTP port (the session API in embedded mode).
    pub extra_routes: axum::Router,
}

/// A random gateway id, unless configured.
pub fn gateway_id(config: &Config) -> String {
    config
        .gateway_id
        .clone()
        .unwrap_or_else(|| format!("gw-{}", random_hex(12)))
}

/// The id of this gateway process in internal subjects, in its sessions' records and in its
/// heartbeats: a configured `AMR_GATEWAY_ID` plus a per-process suffix. A replica restarted
/// under the same id (a StatefulSet pod, a bench PC) is then never taken for its predecessor:
/// the predecessor's sessions still end `gateway_lost`, and the two processes' connection
/// subjects (and so their per-connection counts) never collide.
pub fn instance_id(gateway_id: &str, config: &Config) -> String {
    match config.gateway_id {
        Some(_) => format!("{gateway_id}-{}", random_hex(8)),
        // Random already.
        None => gateway_id.to_owned(),
    }
}

fn random_hex(len: usize) -> String {
    let mut hex = uuid::Uuid::new_v4().simple().to_string();
    hex.truncate(len);
    hex
}

/// Serves WebSocket and HTTP until `shutdown` resolves, then drains: readiness turns 503, new
/// connections are refused, existing ones close with 1012 and report their sessions, and this
/// returns once they are gone or `AMR_DRAIN_TIMEOUT` passed.
pub async fn serve(
    config: Config,
    backend: Backend,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BoxError> {
    let prometheus = http::install_metrics()?;
    let auth = auth::Authenticator::from_config(&config)?;
    let (drain_tx, drain_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        subjects: Subjects::new(config.subject_prefix.clone()),
        gateway_id: backend.gateway_id.clone(),
        sessions: backend.sessions,
        sink: backend.sink,
        readiness: backend.readiness,
        registry: backend.registry,
        config: config.clone(),
        drain: drain_rx,
        draining: AtomicBool::new(false),
        auth,
        conn_limits: limits::ConnLimits::new(config.max_connections, config.max_conns_per_ip),
        origins: limits::Origins::parse(&config.allowed_origins),
    });
    let http_listener = tokio::net::TcpListener::bind(config.http_listen).await?;
    tokio::spawn(http::serve(
        http_listener,
        shared.clone(),
        prometheus,
        backend.extra_routes,
    ));
    let ws_listener = tokio::net::TcpListener::bind(config.ws_listen).await?;
    tracing::info!(gateway = %shared.gateway_id, ws = %config.ws_listen, path = %config.ws_path, http = %config.http_listen, "gateway ready");
    let accept = tokio::spawn(listener::accept_loop(ws_listener, shared.clone()));

    shutdown.await;
    tracing::info!("draining: refusing new connections, closing existing ones with 1012");
    shared.draining.store(true, Ordering::Relaxed);
    ::metrics::gauge!(metrics::DRAINING).set(1.0);
    accept.abort();
    let _ = drain_tx.send(true);
    let deadline = tokio::time::Instant::now() + config.drain_timeout;
    while !shared.registry.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tracing::info!(left = shared.registry.len(), "gateway stopped");
    Ok(())
}

/// The NATS-backed parts of a gateway.
pub async fn nats_backend(config: &Config) -> Result<(Backend, async_nats::Client), BoxError> {
    // Before connecting: the connection-state gauge is set from the first NATS event on.
    http::install_metrics()?;
    let name = gateway_id(config);
    let gateway_id = instance_id(&name, config);
    let subjects = Subjects::new(config.subject_prefix.clone());
    let registry = Arc::new(Registry::default());
    let nats = connect_nats(config, &gateway_id, registry.clone()).await?;
    let up = nats.connection_state() == async_nats::connection::State::Connected;
    ::metrics::gauge!(metrics::NATS_CONNECTED).set(if up { 1.0 } else { 0.0 });
    streams::ensure_sensor_stream(&nats, config, &subjects).await;
    tokio::spawn({
        let (nats, subjects, gateway_id, registry) = (
            nats.clone(),
            subjects.clone(),
            gateway_id.clone(),
            registry.clone(),
        );
        async move {
            if let Err(e) = registry::dispatch(nats, subjects, gateway_id, registry).await {
                tracing::error!(error = %e, "cannot subscribe to connection events");
            }
        }
    });
    let sessions = Arc::new(session_client::SessionClient::new(
        nats.clone(),
        subjects.clone(),
        config.request_timeout,
    ));
    tokio::spawn(heartbeats(
        sessions.clone(),
        gateway_id.clone(),
        config.heartbeat_interval(),
    ));
    let backend = Backend {
        sessions,
        // Downstream sees the configured name (`Amr-Gateway`).
        sink: Arc::new(forward::Forwarder::new(nats.clone(), config, name)),
        readiness: Arc::new(NatsReadiness(nats.clone())),
        registry,
        gateway_id,
        extra_routes: axum::Router::new(),
    };
    Ok((backend, nats))
}

/// Runs the distributed gateway (NATS) until SIGTERM/SIGINT, then drains.
pub async fn run(config: Config) -> Result<(), BoxError> {
    let (backend, nats) = nats_backend(&config).await?;
    serve(config, backend, shutdown_signal()).await?;
    if let Err(e) = nats.flush().await {
        tracing::warn!(error = %e, "flush on exit failed");
    }
    Ok(())
}

struct NatsReadiness(async_nats::Client);

impl Readiness for NatsReadiness {
    fn check(&self) -> Result<(), &'static str> {
        match self.0.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err("nats not connected"),
        }
    }
}

/// Tells the session service that this gateway is alive, at start and every `interval` (a
/// third of `AMR_GATEWAY_LOST_AFTER`), for the life of the process. Each attempt is bounded by
/// the request timeout; a failed one is simply followed by the next.
async fn heartbeats(
    sessions: Arc<session_client::SessionClient>,
    gateway_id: String,
    interval: std::time::Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match sessions.heartbeat(&gateway_id).await {
            Ok(_) => {
                if failing {
                    tracing::info!(gateway = %gateway_id, "heartbeats reach the session service again");
                }
                failing = false;
            }
            Err(e) => {
                // Logged once per outage: the NATS events already tell the story.
                if !failing {
                    tracing::warn!(gateway = %gateway_id, error = %e.message, "heartbeat failed");
                }
                failing = true;
                ::metrics::counter!(metrics::HEARTBEAT_FAILURES).increment(1);
            }
        }
    }
}

async fn connect_nats(
    config: &Config,
    gateway_id: &str,
    registry: Arc<Registry>,
) -> Result<async_nats::Client, BoxError> {
    // Set at a disconnect, taken at the next connect: only a reconnect re-checks sessions.
    let was_disconnected = Arc::new(AtomicBool::new(false));
    let options = async_nats::ConnectOptions::new()
        .name(format!("amr-gateway {gateway_id}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .request_timeout(Some(config.request_timeout))
        .event_callback(move |event| {
            let (registry, was_disconnected) = (registry.clone(), was_disconnected.clone());
            async move {
                match event {
                    async_nats::Event::Connected => {
                        ::metrics::gauge!(metrics::NATS_CONNECTED).set(1.0);
                        if was_disconnected.swap(false, Ordering::Relaxed) {
                            // Sessions may have ended `gateway_lost` while no heartbeat could
                            // get through, and pushed ends were lost: check them again.
                            let told = registry.recheck_all();
                            tracing::info!(
                                connections = told,
                                "NATS reconnected; every connection re-checks its session"
                            );
                        } else {
                            tracing::info!("NATS connected");
                        }
                    }
                    async_nats::Event::Disconnected => {
                        was_disconnected.store(true, Ordering::Relaxed);
                        ::metrics::gauge!(metrics::NATS_CONNECTED).set(0.0);
                        tracing::warn!("NATS disconnected");
                    }
                    other => tracing::info!(event = %other, "NATS event"),
                }
            }
        });
    Ok(options.connect(config.nats_url.as_str()).await?)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Initialises logging and tracing (see `amr_telemetry::init`): human-readable by default,
/// JSON lines with `AMR_LOG_FORMAT=json`, level by `RUST_LOG` (default `info`), OTLP export
/// when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Keep the result and shut it down at exit.
pub fn init_telemetry(
    default_service: &str,
    format: config::LogFormat,
) -> amr_telemetry::Telemetry {
    let format = match format {
        config::LogFormat::Json => amr_telemetry::Format::Json,
        config::LogFormat::Text => amr_telemetry::Format::Text,
    };
    amr_telemetry::init(default_service, format)
}
