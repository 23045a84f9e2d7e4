//! Messages from the gateway to a client.

use crate::codes::{EndReason, ErrorCode};
use serde::{Deserialize, Serialize};

/// Every message the server sends on the WebSocket. Serialises with the `type` tag of the wire
/// contract; tests and tools deserialise it the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    DeviceRegistered(DeviceRegistered),
    SessionCreated(SessionCreated),
    SessionEnded(SessionEnded),
    Ack(Ack),
    Pong(Pong),
    Error(ErrorMessage),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(deny_unknown_fields))]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistered {
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::ids::DEVICE_ID_PATTERN)))]
    pub device_id: String,
    pub timestamp: i64,
    /// Only for legacy (v1.0) clients: a provisional session that becomes active with the
    /// first sensor data. Session-aware clients ignore it, and never get one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::ids::SESSION_ID_PATTERN)))]
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(deny_unknown_fields))]
#[serde(rename_all = "camelCase")]
pub struct SessionCreated {
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::ids::SESSION_ID_PATTERN)))]
    pub session_id: String,
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::ids::DEVICE_ID_PATTERN)))]
    pub device_id: String,
    pub timestamp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::ids::SESSION_ID_PATTERN)))]
    pub replaced_session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(deny_unknown_fields))]
#[serde(rename_all = "camelCase")]
pub struct SessionEnded {
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::ids::SESSION_ID_PATTERN)))]
    pub session_id: String,
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::ids::DEVICE_ID_PATTERN)))]
    pub device_id: String,
    pub timestamp: i64,
    pub reason: EndReason,
    pub started_at: i64,
    pub ended_at: i64,
    pub data_count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(deny_unknown_fields))]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::ids::SESSION_ID_PATTERN)))]
    pub session_id: String,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(deny_unknown_fields))]
pub struct Pong {
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(deny_unknown_fields))]
#[serde(rename_all = "camelCase")]
pub struct ErrorMessage {
    pub error_code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The `type` of the client message that caused the error.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub ref_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// How many refused messages a coalesced error stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl ErrorMessage {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorMessage {
            error_code: code,
            message: message.into(),
            device_id: None,
            session_id: None,
            ref_type: None,
            request_id: None,
            count: None,
        }
    }
}

impl ServerMessage {
    /// The JSON text of this message. Serialising these plain structs cannot fail.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","errorCode":"INTERNAL_ERROR","message":"serialisation failed"}"#
                .to_owned()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape_matches_the_contract() {
        let m = ServerMessage::SessionCreated(SessionCreated {
            session_id: "session_x".into(),
            device_id: "AMR_001".into(),
            timestamp: 5,
            replaced_session_id: None,
            request_id: None,
        });
        assert_eq!(
            m.to_json(),
            r#"{"type":"session_created","sessionId":"session_x","deviceId":"AMR_001","timestamp":5}"#
        );
        let mut e = ErrorMessage::new(ErrorCode::SessionAlreadyActive, "busy");
        e.ref_type = Some("session_start".into());
        let json = ServerMessage::Error(e).to_json();
        assert_eq!(
            json,
            r#"{"type":"error","errorCode":"SESSION_ALREADY_ACTIVE","message":"busy","ref":"session_start"}"#
        );
        let back: ServerMessage = serde_json::from_str(&json).unwrap();
        assert!(matches!(back, ServerMessage::Error(_)));
    }
}
