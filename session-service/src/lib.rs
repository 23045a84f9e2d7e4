//! Session service of AMR Bridge.
//!
//! It owns every decision about sessions: start (idempotent per requestId, replace or reject
//! the active one), end, claim (resume, hand-over), disconnect (end or grace), activity
//! (exact counts, idle deadlines), gateway heartbeats, and the ends nobody asked for (idle
//! timeout, disconnect grace, gateway lost). Gateways ask over NATS (NATS Services API, queue
//! group, so any replica serves any request); the service revokes and notifies gateway
//! connections on their own subjects and publishes the `created`/`ended` lifecycle events.
//!
//! It must never touch sensor data payloads (it only reads the count header of a session's
//! last sensor message when a gateway cannot answer), never talk WebSocket, and never keep
//! session state in memory across requests: Redis is the only state, changed by atomic Lua
//! scripts, so replicas can come and go (and die) freely.
//!
//! Layout: [`machine`] (the pure state machine), [`store`] (its storage interface) and
//! [`redis_store`], [`engine`] (runs decisions: snapshot, revoke, commit, effects; a start
//! on a clean device commits on a guessed snapshot that the commit's guards check),
//! [`owners`] (revoke/push to connections), [`events`] (lifecycle events), [`service`]
//! (NATS endpoints), [`sweeper`] (deadlines, lost gateways), [`http`] (health, metrics,
//! records), [`config`].

pub mod config;
pub mod engine;
pub mod events;
#[cfg(test)]
mod fakes;
pub mod http;
pub mod machine;
pub mod memory_store;
pub mod metrics;
pub mod owners;
pub mod redis_store;
pub mod service;
pub mod store;
pub mod sweeper;

use crate::config::{Config, LogFormat};
use crate::engine::Engine;
use crate::events::Events;
use crate::owners::Owners;
use crate::redis_store::RedisStore;
use amr_proto::keys::Keys;
use amr_proto::subjects::Subjects;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{error, info, warn};

/// Pause between connection attempts at start-up.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Initialises logging and tracing (see `amr_telemetry::init`); keep the result and shut it
/// down at exit so buffered spans are exported.
pub fn init_telemetry(format: LogFormat) -> amr_telemetry::Telemetry {
    let format = match format {
        LogFormat::Json => amr_telemetry::Format::Json,
        LogFormat::Text => amr_telemetry::Format::Text,
    };
    amr_telemetry::init("amr-session-service", format)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
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
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Retries `attempt` until it succeeds (logging each failure).
async fn until_ok<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    loop {
        match attempt().await {
            Ok(v) => {
                info!("connected to {what}");
                return v;
            }
            Err(e) => {
                warn!(error = %e, "{what} not reachable yet; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

async fn connect_nats(config: &Config) -> async_nats::Client {
    let timeout = config.request_timeout;
    until_ok("NATS", || {
        async_nats::ConnectOptions::new()
            .name("amr-session-service")
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            .event_callback(|event| async move {
                info!(%event, "nats connection event");
            })
            .connect(config.nats_url.clone())
    })
    .await
}

async fn connect_redis(config: &Config, keys: &Keys) -> RedisStore {
    until_ok("Redis", || {
        RedisStore::connect(
            &config.redis_url,
            keys.clone(),
            config.session_retention,
            config.session_idle_timeout,
            config.request_timeout,
        )
    })
    .await
}

/// Runs the service until SIGTERM/SIGINT: connect (retrying), serve, then stop taking
/// requests and finish the in-flight ones.
pub async fn run(config: Config) -> Result<(), String> {
    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            amr_telemetry::LATENCY_BUCKETS,
        )
        .and_then(|b| b.install_recorder())
        .map_err(|e| format!("metrics recorder: {e}"))?;
    serve(config, metrics, shutdown_signal()).await
}

/// Like [`run`], with the process's metrics recorder and the shutdown trigger given (so that
/// `amr-bridge` can run it beside a gateway in one process).
pub async fn serve(
    config: Config,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    crate::metrics::describe();
    let (draining_tx, draining) = watch::channel(false);
    let signal = shutdown;
    tokio::pin!(signal);

    let subjects = Subjects::new(config.subject_prefix.clone());
    let keys = Keys::new(config.subject_prefix.clone());
    let connected = async {
        let nats = connect_nats(&config).await;
        let store = connect_redis(&config, &keys).await;
        let events = Events::new(nats.clone(), subjects.clone(), config.request_timeout);
        until_ok("the AMR_SESSIONS stream", || {
            events.ensure_stream(config.sessions_max_age)
        })
        .await;
        (nats, store, events)
    };
    let (nats, store, events) = tokio::select! {
        c = connected => c,
        _ = &mut signal => {
            info!("stopped before start-up completed");
            return Ok(());
        }
    };

    // A revocation (and its stream fallback) gets a quarter of the request budget each: a
    // hung owner then still leaves time to commit and answer within one attempt of the
    // gateway, which re-sends a request after half the budget.
    let owners = Owners::new(nats.clone(), subjects.clone(), config.request_timeout / 4);
    let engine = Arc::new(Engine::new(
        store.clone(),
        Arc::new(owners),
        Arc::new(events),
        config.settings(),
    ));

    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.http_listen))?;
    let app = http::router(http::AppState {
        store: store.clone(),
        nats: nats.clone(),
        metrics: metrics.clone(),
        draining: draining.clone(),
    });
    let mut http_stop = draining.clone();
    let http_task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|d| *d).await;
            })
            .await;
        if let Err(e) = served {
            error!(error = %e, "http server failed");
        }
    });
    let upkeep = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            metrics.run_upkeep();
        }
    });
    info!(listen = %config.http_listen, "http endpoints started");

    let lease = (config.request_timeout * 4).max(Duration::from_secs(5));
    let sweeper = tokio::spawn(sweeper::run(
        engine.clone(),
        config.sweep_interval(),
        lease,
        Some(sweeper::LostGateways {
            after: config.gateway_lost_after,
        }),
        draining.clone(),
    ));

    let handle = service::start(&nats, engine, &subjects, config.request_timeout)
        .await
        .map_err(|e| format!("cannot start the NATS service: {e}"))?;

    signal.await;
    info!("shutting down: no new requests");
    let _ = draining_tx.send(true);
    ::metrics::gauge!(crate::metrics::DRAINING).set(1.0);
    handle.shutdown(config.request_timeout * 2).await;
    let _ = sweeper.await;
    upkeep.abort();
    let _ = tokio::time::timeout(Duration::from_secs(2), http_task).await;
    if tokio::time::timeout(Duration::from_secs(2), nats.flush())
        .await
        .is_err()
    {
        warn!("nats flush timed out at shutdown");
    }
    info!("stopped");
    Ok(())
}
