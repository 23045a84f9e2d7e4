//! The NATS Services API face of the engine: one endpoint per `subjects::ops` name, in the
//! queue group of the service, JSON requests of `amr_proto::internal`, `Reply<T>` answers.
//!
//! Each request runs in a `session_op` span parented on the gateway's `traceparent` header,
//! so one trace goes from the client's message through the gateway to Redis and back.

use crate::engine::Engine;
use crate::store::SessionStore;
use amr_proto::internal::{
    ActivityRequest, ClaimRequest, DisconnectRequest, EndRequest, HeartbeatRequest, Reply,
    ServiceError, StartRequest,
};
use amr_proto::subjects::{ops, Subjects, SERVICE_NAME};
use amr_proto::ErrorCode;
use async_nats::service::ServiceExt;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::field::Empty;
use tracing::{debug, info, warn, Instrument, Span};

/// Requests handled at once by one replica; more wait in the subscription.
pub const MAX_IN_FLIGHT: usize = 512;

/// The running endpoints; [`ServiceHandle::shutdown`] stops taking requests and lets the
/// in-flight ones finish.
pub struct ServiceHandle {
    service: async_nats::service::Service,
    stop: watch::Sender<bool>,
    loops: JoinSet<()>,
    in_flight: Arc<Semaphore>,
}

pub async fn start<S: SessionStore>(
    client: &async_nats::Client,
    engine: Arc<Engine<S>>,
    subjects: &Subjects,
    timeout: Duration,
) -> Result<ServiceHandle, async_nats::Error> {
    let service = client
        .service_builder()
        .description("AMR Bridge session service: every decision about sessions")
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await?;
    let group = service.group(subjects.service_group());
    let (stop, stopped) = watch::channel(false);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut loops = JoinSet::new();
    for op in ops::ALL {
        let mut endpoint = group.endpoint(op).await?;
        let engine = engine.clone();
        let in_flight = in_flight.clone();
        let mut stopped = stopped.clone();
        loops.spawn(async move {
            loop {
                let request = tokio::select! {
                    r = endpoint.next() => r,
                    _ = stopped.wait_for(|s| *s) => None,
                };
                let Some(request) = request else { break };
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let engine = engine.clone();
                // Heartbeats are periodic: a trace each would drown the useful ones.
                let span = if op == ops::HEARTBEAT {
                    tracing::debug_span!(
                        "session_op",
                        otel.name = op,
                        otel.kind = "server",
                        op,
                        result = Empty,
                        traceId = Empty,
                    )
                } else {
                    tracing::info_span!(
                        "session_op",
                        otel.name = op,
                        otel.kind = "server",
                        op,
                        result = Empty,
                        deviceId = Empty,
                        sessionId = Empty,
                        traceId = Empty,
                    )
                };
                amr_telemetry::set_parent_from(&span, request.message.headers.as_ref());
                amr_telemetry::record_trace_id(&span);
                tokio::spawn(
                    async move {
                        let in_flight = metrics::gauge!(crate::metrics::REQUESTS_IN_FLIGHT);
                        in_flight.increment(1.0);
                        answer(&engine, op, request, timeout).await;
                        in_flight.decrement(1.0);
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            debug!(op, "endpoint stopped");
        });
    }
    info!(group = %subjects.service_group(), "session service endpoints started");
    Ok(ServiceHandle {
        service,
        stop,
        loops,
        in_flight,
    })
}

impl ServiceHandle {
    /// Stops taking requests, then waits (at most `grace`) for the in-flight ones.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        if let Err(e) = self.service.stop().await {
            warn!(error = %e, "stopping the service");
        }
        while self.loops.join_next().await.is_some() {}
        let all = u32::try_from(MAX_IN_FLIGHT).unwrap_or(u32::MAX);
        match tokio::time::timeout(grace, self.in_flight.acquire_many(all)).await {
            Ok(_) => info!("in-flight requests finished"),
            Err(_) => warn!("in-flight requests still running at shutdown"),
        }
    }
}

/// Handles one request and answers it within `timeout`. Past the deadline the caller gets
/// SERVICE_UNAVAILABLE (and retries idempotently) while the work still runs to its end here,
/// so a committed change always gets its events published. The work runs in this task (not a
/// task of its own): one wake-up less per request on the session-start path.
async fn answer<S: SessionStore>(
    engine: &Engine<S>,
    op: &'static str,
    request: async_nats::service::Request,
    timeout: Duration,
) {
    let began = Instant::now();
    let payload = request.message.payload.clone();
    let work = AssertUnwindSafe(dispatch(engine, op, &payload)).catch_unwind();
    tokio::pin!(work);
    let (answered, late) = match tokio::time::timeout(timeout, &mut work).await {
        Ok(Ok(done)) => (done, false),
        Ok(Err(_panic)) => {
            warn!(op, "request handler panicked");
            (
                error_reply(ServiceError::new(
                    ErrorCode::InternalError,
                    "internal error",
                )),
                false,
            )
        }
        Err(_) => (
            error_reply(ServiceError::new(
                ErrorCode::ServiceUnavailable,
                "the session service did not finish in time",
            )),
            true,
        ),
    };
    let (reply, result) = answered;
    Span::current().record("result", result);
    let elapsed = began.elapsed();
    crate::metrics::op(op, result, elapsed);
    debug!(
        result,
        elapsed_us = elapsed.as_micros() as u64,
        "request answered"
    );
    if let Err(e) = request.respond(Ok(reply)).await {
        warn!(op, error = %e, "could not send reply");
    }
    if late {
        // Whatever it decided is already committed or not; only its effects remain to run.
        if work.await.is_err() {
            warn!(op, "request handler panicked after its deadline");
        }
    }
}

async fn dispatch<S: SessionStore>(
    engine: &Engine<S>,
    op: &'static str,
    payload: &[u8],
) -> (Bytes, &'static str) {
    match op {
        ops::START => match parse::<StartRequest>(payload) {
            Ok(r) => {
                note(&r.device_id, None);
                let started = engine.start(&r).await;
                if let Ok(ok) = &started {
                    Span::current().record("sessionId", ok.session_id.as_str());
                }
                encode(started)
            }
            Err(e) => error_reply(e),
        },
        ops::END => match parse::<EndRequest>(payload) {
            Ok(r) => {
                note(&r.device_id, r.session_id.as_deref());
                encode(engine.end(&r).await)
            }
            Err(e) => error_reply(e),
        },
        ops::CLAIM => match parse::<ClaimRequest>(payload) {
            Ok(r) => {
                note(&r.device_id, Some(&r.session_id));
                encode(engine.claim(&r).await)
            }
            Err(e) => error_reply(e),
        },
        ops::DISCONNECT => match parse::<DisconnectRequest>(payload) {
            Ok(r) => {
                note(&r.device_id, Some(&r.session_id));
                encode(engine.disconnect(&r).await)
            }
            Err(e) => error_reply(e),
        },
        ops::ACTIVITY => match parse::<ActivityRequest>(payload) {
            Ok(r) => {
                note(&r.device_id, None);
                encode(engine.activity(&r).await)
            }
            Err(e) => error_reply(e),
        },
        ops::HEARTBEAT => match parse::<HeartbeatRequest>(payload) {
            Ok(r) => encode(engine.heartbeat(&r).await),
            Err(e) => error_reply(e),
        },
        _ => error_reply(ServiceError::new(
            ErrorCode::UnknownType,
            "unknown operation",
        )),
    }
}

/// Puts the request's ids on its span (and so on its log lines).
fn note(device_id: &str, session_id: Option<&str>) {
    let span = Span::current();
    span.record("deviceId", device_id);
    if let Some(s) = session_id {
        span.record("sessionId", s);
    }
}

fn parse<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ServiceError> {
    serde_json::from_slice(payload).map_err(|e| {
        ServiceError::new(ErrorCode::InvalidMessage, format!("malformed request: {e}"))
    })
}

/// The reply body and the result label of the metrics (`ok` or the error code).
fn encode<T: Serialize>(result: Result<T, ServiceError>) -> (Bytes, &'static str) {
    match result {
        Ok(v) => match serde_json::to_vec(&Reply::<T>::Ok(v)) {
            Ok(body) => (body.into(), "ok"),
            Err(_) => error_reply(ServiceError::new(
                ErrorCode::InternalError,
                "encoding failed",
            )),
        },
        Err(e) => error_reply(e),
    }
}

fn error_reply(e: ServiceError) -> (Bytes, &'static str) {
    let label = e.code.as_str();
    // A reply of plain strings always encodes; the fallback keeps this free of panics.
    let body = serde_json::to_vec(&Reply::<()>::Error(e)).unwrap_or_else(|_| {
        br#"{"error":{"code":"INTERNAL_ERROR","message":"encoding failed"}}"#.to_vec()
    });
    (body.into(), label)
}
