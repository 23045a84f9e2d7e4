//! [`SessionApi`] over NATS: requests from the gateway to the session service, bounded in
//! time and retried.
//!
//! Every operation is idempotent on the service side (starts carry a requestId, counts are
//! cumulative), so a request that got no answer is simply sent again until the request timeout
//! runs out; then the caller answers `SERVICE_UNAVAILABLE`. Nothing here ever waits unbounded.
//!
//! Each operation is a `session_op` span whose W3C trace context travels in the request's
//! `traceparent` header: the session service parents its own span on it.

use crate::backend::{ServiceResult, SessionApi};
use amr_proto::internal::{
    ActivityOk, ActivityRequest, ClaimOk, ClaimRequest, DisconnectOk, DisconnectRequest, EndOk,
    EndRequest, HeartbeatOk, HeartbeatRequest, Reply, ServiceError, StartOk, StartRequest,
};
use amr_proto::subjects::{ops, Subjects};
use amr_proto::ErrorCode;
use async_nats::{Client, RequestErrorKind};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// Pause between attempts when no service replica answered at all.
const NO_RESPONDERS_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Clone)]
pub struct SessionClient {
    nats: Client,
    subjects: Subjects,
    timeout: Duration,
}

impl SessionClient {
    pub fn new(nats: Client, subjects: Subjects, timeout: Duration) -> Self {
        SessionClient {
            nats,
            subjects,
            timeout,
        }
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        op: &'static str,
        req: &Req,
    ) -> Result<Resp, ServiceError> {
        // Heartbeats are periodic: a trace each would drown the useful ones (debug only).
        let span = if op == ops::HEARTBEAT {
            tracing::debug_span!(
                "session_op",
                otel.name = op,
                otel.kind = "client",
                op,
                result = tracing::field::Empty,
                traceId = tracing::field::Empty,
            )
        } else {
            tracing::info_span!(
                "session_op",
                otel.name = op,
                otel.kind = "client",
                op,
                result = tracing::field::Empty,
                traceId = tracing::field::Empty,
            )
        };
        amr_telemetry::record_trace_id(&span);
        self.call_in(op, req, &span).instrument(span.clone()).await
    }

    async fn call_in<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        op: &'static str,
        req: &Req,
        span: &tracing::Span,
    ) -> Result<Resp, ServiceError> {
        let mut headers = async_nats::HeaderMap::new();
        amr_telemetry::inject(span, &mut headers);
        let payload = serde_json::to_vec(req).map_err(|e| {
            ServiceError::new(
                ErrorCode::InternalError,
                format!("cannot encode request: {e}"),
            )
        })?;
        let subject = self.subjects.service_op(op);
        let deadline = Instant::now() + self.timeout;
        // Two attempts fit in the bound: a request lost with a dying replica is re-sent to a
        // live one while the client still waits.
        let attempt_timeout = (self.timeout / 2).max(Duration::from_millis(100));
        let started = std::time::Instant::now();
        let result = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break Err(unavailable(op, "no answer within the request timeout"));
            }
            let request = async_nats::Request::new()
                .headers(headers.clone())
                .payload(payload.clone().into())
                .timeout(Some(attempt_timeout.min(remaining)));
            match self.nats.send_request(subject.clone(), request).await {
                Ok(msg) => {
                    break match serde_json::from_slice::<Reply<Resp>>(&msg.payload) {
                        Ok(Reply::Ok(v)) => Ok(v),
                        Ok(Reply::Error(e)) => Err(e),
                        Err(e) => Err(ServiceError::new(
                            ErrorCode::InternalError,
                            format!("malformed reply from the session service: {e}"),
                        )),
                    }
                }
                Err(e) => match e.kind() {
                    RequestErrorKind::NoResponders => {
                        tokio::time::sleep(NO_RESPONDERS_BACKOFF.min(remaining)).await;
                    }
                    RequestErrorKind::TimedOut => {}
                    RequestErrorKind::InvalidSubject | RequestErrorKind::MaxPayloadExceeded => {
                        break Err(ServiceError::new(
                            ErrorCode::InternalError,
                            format!("session request refused by NATS: {e}"),
                        ));
                    }
                    RequestErrorKind::Other => {
                        tracing::debug!(op, error = %e, "session request failed; retrying");
                        tokio::time::sleep(NO_RESPONDERS_BACKOFF.min(remaining)).await;
                    }
                },
            }
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) if e.code == ErrorCode::ServiceUnavailable => "unavailable",
            Err(_) => "error",
        };
        span.record("result", outcome);
        crate::metrics::session_op(op, outcome, started.elapsed());
        result
    }
}

impl SessionClient {
    /// Tells the session service that this gateway is alive (distributed mode only: in one
    /// process the gateway cannot be lost apart from its sessions).
    pub async fn heartbeat(&self, gateway_id: &str) -> ServiceResult<HeartbeatOk> {
        let req = HeartbeatRequest {
            gateway_id: gateway_id.to_owned(),
        };
        self.call(ops::HEARTBEAT, &req).await
    }
}

impl SessionApi for SessionClient {
    fn start<'a>(&'a self, req: &'a StartRequest) -> BoxFuture<'a, ServiceResult<StartOk>> {
        self.call(ops::START, req).boxed()
    }

    fn end<'a>(&'a self, req: &'a EndRequest) -> BoxFuture<'a, ServiceResult<EndOk>> {
        self.call(ops::END, req).boxed()
    }

    fn claim<'a>(&'a self, req: &'a ClaimRequest) -> BoxFuture<'a, ServiceResult<ClaimOk>> {
        self.call(ops::CLAIM, req).boxed()
    }

    fn disconnect<'a>(
        &'a self,
        req: &'a DisconnectRequest,
    ) -> BoxFuture<'a, ServiceResult<DisconnectOk>> {
        self.call(ops::DISCONNECT, req).boxed()
    }

    fn activity<'a>(
        &'a self,
        req: &'a ActivityRequest,
    ) -> BoxFuture<'a, ServiceResult<ActivityOk>> {
        self.call(ops::ACTIVITY, req).boxed()
    }
}

fn unavailable(op: &str, why: &str) -> ServiceError {
    ServiceError::new(
        ErrorCode::ServiceUnavailable,
        format!("session service unavailable ({op}: {why})"),
    )
}
