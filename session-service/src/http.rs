//! HTTP side endpoints: health, readiness, Prometheus metrics, and the session records.

use crate::engine::store_error;
use crate::store::{ListQuery, SessionStore, StoreError};
use amr_proto::events::SessionState;
use amr_proto::ids;
use amr_proto::internal::{Reply, ServiceError};
use amr_proto::ErrorCode;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::HashMap;
use tokio::sync::watch;

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

#[derive(Clone)]
pub struct AppState<S> {
    pub store: S,
    pub nats: async_nats::Client,
    pub metrics: PrometheusHandle,
    /// True once shutdown began: not ready any more.
    pub draining: watch::Receiver<bool>,
}

pub fn router<S: SessionStore>(state: AppState<S>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz::<S>))
        .route("/metrics", get(render_metrics::<S>))
        .with_state(state.clone())
        .merge(api_routes(state.store))
}

/// The session records API (`/api/sessions`, `/api/sessions/{id}`) over any store; the
/// embedded mode serves it on the gateway's HTTP port.
pub fn api_routes<S: SessionStore>(store: S) -> Router {
    Router::new()
        .route("/api/sessions", get(list::<S>))
        .route("/api/sessions/{id}", get(one::<S>))
        .with_state(store)
}

async fn readyz<S: SessionStore>(State(st): State<AppState<S>>) -> Response {
    let nats_up = st.nats.connection_state() == async_nats::connection::State::Connected;
    if *st.draining.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    if !nats_up {
        return (StatusCode::SERVICE_UNAVAILABLE, "nats not connected").into_response();
    }
    if !st.store.ping().await {
        return (StatusCode::SERVICE_UNAVAILABLE, "redis not answering").into_response();
    }
    (StatusCode::OK, "ready").into_response()
}

async fn render_metrics<S: SessionStore>(State(st): State<AppState<S>>) -> String {
    use crate::metrics as m;
    let nats_up = st.nats.connection_state() == async_nats::connection::State::Connected;
    metrics::gauge!(m::NATS_CONNECTED).set(if nats_up { 1.0 } else { 0.0 });
    let redis_up = st.store.ping().await;
    metrics::gauge!(m::REDIS_CONNECTED).set(if redis_up { 1.0 } else { 0.0 });
    if let Some(n) = st.store.active_count().await {
        metrics::gauge!(m::SESSIONS_ACTIVE).set(n as f64);
    }
    st.metrics.render()
}

fn error(status: StatusCode, e: ServiceError) -> Response {
    (status, Json(Reply::<()>::Error(e))).into_response()
}

fn bad_request(message: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        ServiceError::new(ErrorCode::InvalidMessage, message),
    )
}

fn store_failure(e: StoreError) -> Response {
    let status = match e {
        StoreError::InvalidCursor => StatusCode::BAD_REQUEST,
        StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        StoreError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, store_error(e))
}

/// `?deviceId=&state=active|ended&limit=&cursor=`, validated by hand so that every bad
/// query gets the same JSON 400.
fn list_query(params: &HashMap<String, String>) -> Result<ListQuery, &'static str> {
    let device_id = match params.get("deviceId").filter(|d| !d.is_empty()) {
        Some(d) if ids::is_valid_device_id(d) => Some(d.clone()),
        Some(_) => return Err("invalid deviceId"),
        None => None,
    };
    let state = match params.get("state").filter(|s| !s.is_empty()) {
        Some(s) => Some(SessionState::parse(s).ok_or("state must be active or ended")?),
        None => None,
    };
    let limit = match params.get("limit").filter(|l| !l.is_empty()) {
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => return Err("limit must be 1-1000"),
        },
        None => DEFAULT_LIMIT,
    };
    Ok(ListQuery {
        device_id,
        state,
        limit,
        cursor: params.get("cursor").filter(|c| !c.is_empty()).cloned(),
    })
}

async fn list<S: SessionStore>(
    State(store): State<S>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let query = match list_query(&params) {
        Ok(q) => q,
        Err(message) => return bad_request(message),
    };
    match store.list(&query).await {
        Ok(page) => Json(page).into_response(),
        Err(e) => store_failure(e),
    }
}

async fn one<S: SessionStore>(State(store): State<S>, Path(id): Path<String>) -> Response {
    match store.get(&id).await {
        Ok(Some(s)) => Json(s.record()).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            ServiceError::new(ErrorCode::SessionNotFound, "no such session").with_session(id),
        ),
        Err(e) => store_failure(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<ListQuery, &'static str> {
        list_query(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn list_queries() {
        let d = q(&[]).unwrap();
        assert_eq!(d.limit, DEFAULT_LIMIT);
        assert!(d.device_id.is_none() && d.state.is_none() && d.cursor.is_none());
        let f = q(&[
            ("deviceId", "AMR_1"),
            ("state", "ended"),
            ("limit", "5"),
            ("cursor", "1:x"),
        ])
        .unwrap();
        assert_eq!(f.device_id.as_deref(), Some("AMR_1"));
        assert_eq!(f.state, Some(SessionState::Ended));
        assert_eq!(f.limit, 5);
        for bad in [
            [("deviceId", "a.b")],
            [("state", "gone")],
            [("limit", "0")],
            [("limit", "1001")],
            [("limit", "x")],
        ] {
            assert!(q(&bad).is_err(), "{bad:?}");
        }
        assert_eq!(bad_request("x").status(), StatusCode::BAD_REQUEST);
    }
}
