//! HTTP side endpoints: `/healthz` (alive), `/readyz` (NATS connected and not draining),
//! `/metrics` (Prometheus text).

use crate::Shared;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::Arc;
use std::time::Duration;

/// Installs the process-wide Prometheus recorder once; later calls (two components in one
/// process) share it. `_seconds` histograms are rendered as real histograms (buckets), not
/// summaries, so they aggregate across replicas.
pub fn install_metrics() -> Result<PrometheusHandle, crate::BoxError> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            amr_telemetry::LATENCY_BUCKETS,
        )?
        .install_recorder()?;
    let handle = HANDLE.get_or_init(|| handle).clone();
    crate::metrics::describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

#[derive(Clone)]
struct HttpState {
    shared: Arc<Shared>,
    metrics: PrometheusHandle,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    metrics: PrometheusHandle,
    extra_routes: Router,
) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(HttpState { shared, metrics })
        .merge(extra_routes);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "http server stopped");
    }
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    if state.shared.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining");
    }
    match state.shared.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn render_metrics(State(state): State<HttpState>) -> String {
    metrics::gauge!(crate::metrics::CONNECTIONS_REGISTERED).set(state.shared.registry.len() as f64);
    state.metrics.render()
}
