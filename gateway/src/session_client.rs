//! Requests from the gateway to the session service, bounded in time and retried.
//!
//! Every operation is idempotent on the service side (starts carry a requestId, counts are
//! cumulative), so a request that got no answer is simply sent again until the request timeout
//! runs out; then the caller answers `SERVICE_UNAVAILABLE`. Nothing here ever waits unbounded.

use amr_proto::internal::{
    ActivityOk, ActivityRequest, ClaimOk, ClaimRequest, DisconnectOk, DisconnectRequest, EndOk,
    EndRequest, Reply, ServiceError, StartOk, StartRequest,
};
use amr_proto::subjects::{ops, Subjects};
use amr_proto::ErrorCode;
use async_nats::{Client, RequestErrorKind};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use tokio::time::Instant;

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

    pub async fn start(&self, req: &StartRequest) -> Result<StartOk, ServiceError> {
        self.call(ops::START, req).await
    }

    pub async fn end(&self, req: &EndRequest) -> Result<EndOk, ServiceError> {
        self.call(ops::END, req).await
    }

    pub async fn claim(&self, req: &ClaimRequest) -> Result<ClaimOk, ServiceError> {
        self.call(ops::CLAIM, req).await
    }

    pub async fn disconnect(&self, req: &DisconnectRequest) -> Result<DisconnectOk, ServiceError> {
        self.call(ops::DISCONNECT, req).await
    }

    pub async fn activity(&self, req: &ActivityRequest) -> Result<ActivityOk, ServiceError> {
        self.call(ops::ACTIVITY, req).await
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        op: &str,
        req: &Req,
    ) -> Result<Resp, ServiceError> {
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
        metrics::histogram!("amr_gateway_session_op_duration_seconds", "op" => op.to_owned())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("amr_gateway_session_ops_total", "op" => op.to_owned(), "result" => outcome)
            .increment(1);
        result
    }
}

fn unavailable(op: &str, why: &str) -> ServiceError {
    ServiceError::new(
        ErrorCode::ServiceUnavailable,
        format!("session service unavailable ({op}: {why})"),
    )
}
