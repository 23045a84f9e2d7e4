//! Messages between gateways and the session service (JSON over NATS request/reply, on the
//! subjects of [`crate::subjects::Subjects::service_op`] and
//! [`crate::subjects::Subjects::connection`]). Never seen by clients or downstream.
//!
//! Data counts: a gateway connection counts the samples it accepts for a session and reports
//! its CUMULATIVE count (`accepted`: every sample this connection accepted for that session,
//! not a delta) in batches ([`ActivityRequest`]), with its end or disconnect request, and in
//! its answer to a [`ConnEvent::Revoke`]. The store keeps, per (session, owner connection),
//! the MAXIMUM reported `accepted`, and dataCount = the sum of those maxima. Reports are
//! therefore idempotent: they may be repeated, reordered or race with an end without a sample
//! being lost or counted twice. The session service revokes the owning connection before it
//! ends a session on anyone else's behalf, so the final dataCount includes every accepted sample.

use crate::codes::ErrorCode;
use crate::events::SessionEndedEvent;
use serde::{Deserialize, Serialize};

/// Reply envelope of every session-service endpoint: `{"ok":{..}}` or `{"error":{..}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply<T> {
    Ok(T),
    Error(ServiceError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceError {
    pub code: ErrorCode,
    pub message: String,
    /// The session the error is about (e.g. the active one for SESSION_ALREADY_ACTIVE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

impl ServiceError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ServiceError {
            code,
            message: message.into(),
            session_id: None,
        }
    }

    pub fn with_session(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }
}

/// Samples one connection accepted for one session, cumulative (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CountReport {
    pub session_id: String,
    /// Cumulative samples accepted by the reporting connection for this session.
    pub accepted: u64,
}

/// `<p>.internal.session.start`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartRequest {
    pub device_id: String,
    /// Always set: the client's requestId, or one the gateway made for its own retries.
    pub request_id: String,
    /// Connection subject of the requesting connection; it becomes the owner.
    pub owner: String,
    pub gateway_id: String,
    /// Legacy clients: activate this provisional id (from `device_registered`) instead of
    /// issuing a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt_session_id: Option<String>,
    /// The requester's own current session with its cumulative count: ended as `replaced`
    /// without a revoke round trip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<CountReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartOk {
    pub session_id: String,
    pub device_id: String,
    pub started_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_session_id: Option<String>,
}

/// `<p>.internal.session.end`: the client's `session_end`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndRequest {
    pub device_id: String,
    /// `None`: the device's active session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub owner: String,
    /// Cumulative count of the requesting connection, for the session it names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<CountReport>,
}

/// Reply to [`EndRequest`]: the final figures (the same ones again for a repeated end).
pub type EndOk = SessionEndedEvent;

/// `<p>.internal.session.claim`: a connection of the device uses a session it does not hold
/// (resume after a reconnect, or hand-over). On success it becomes the owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRequest {
    pub device_id: String,
    pub session_id: String,
    pub owner: String,
    pub gateway_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimOk {
    pub session_id: String,
    pub started_at: i64,
    /// Samples counted so far (all owners): the base of the new owner's running count.
    pub data_count: u64,
}

/// `<p>.internal.session.disconnect`: a connection closed while holding a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DisconnectRequest {
    pub device_id: String,
    pub session_id: String,
    pub owner: String,
    /// Cumulative samples this connection accepted for the session.
    pub accepted: u64,
    /// The gateway closed this connection itself while draining (longer grace applies).
    #[serde(default)]
    pub drained: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectOutcome {
    /// The session ended `disconnected` now.
    Ended,
    /// The session waits for the grace period to be resumed.
    Grace,
    /// Another connection holds the session (or it ended already): nothing changed.
    NotOwner,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisconnectOk {
    pub outcome: DisconnectOutcome,
}

/// `<p>.internal.session.activity`: batched counts; refreshes idle deadlines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityRequest {
    pub device_id: String,
    pub owner: String,
    pub reports: Vec<CountReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityOk {
    /// Sessions of the request that are no longer active (their counts were not applied).
    #[serde(default)]
    pub inactive: Vec<String>,
}

/// `<p>.internal.session.heartbeat`: a gateway is alive. Sent at start and every third of
/// `AMR_GATEWAY_LOST_AFTER`; a gateway silent for longer has its sessions ended `gateway_lost`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatRequest {
    pub gateway_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatOk {}

/// Pushed by the session service to one connection's subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ConnEvent {
    /// Stop accepting data for this session now and answer [`RevokeReply`] with the
    /// connection's cumulative count for it (0 if it never used it). Sent as a request.
    #[serde(rename_all = "camelCase")]
    Revoke { session_id: String },
    /// The session ended on someone else's behalf (replaced, idle): tell the client.
    SessionEnded(SessionEndedEvent),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevokeReply {
    pub session_id: String,
    /// Cumulative samples the revoked connection accepted for the session.
    pub accepted: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_envelope_shape() {
        let r: Reply<ActivityOk> = Reply::Ok(ActivityOk { inactive: vec![] });
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"ok":{"inactive":[]}}"#
        );
        let e: Reply<ActivityOk> = Reply::Error(ServiceError::new(ErrorCode::NoActiveSession, "x"));
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"error":{"code":"NO_ACTIVE_SESSION","message":"x"}}"#
        );
        let hb: Reply<HeartbeatOk> = Reply::Ok(HeartbeatOk {});
        assert_eq!(serde_json::to_string(&hb).unwrap(), r#"{"ok":{}}"#);
        let req = HeartbeatRequest {
            gateway_id: "gw-1".into(),
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"gatewayId":"gw-1"}"#
        );
        let ev = ConnEvent::Revoke {
            session_id: "s".into(),
        };
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"event":"revoke","sessionId":"s"}"#
        );
    }
}
