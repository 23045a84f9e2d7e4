//! Error codes (protocol.md section 7) and session end reasons (section 3).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Every `errorCode` the server may send. The wire form is the SCREAMING_SNAKE_CASE name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidMessage,
    UnknownType,
    InvalidDeviceId,
    Unauthorized,
    NotRegistered,
    DeviceMismatch,
    SessionAlreadyActive,
    SessionNotFound,
    SessionNotActive,
    NoActiveSession,
    MessageTooLarge,
    RateLimited,
    ServiceUnavailable,
    InternalError,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::InvalidMessage,
        ErrorCode::UnknownType,
        ErrorCode::InvalidDeviceId,
        ErrorCode::Unauthorized,
        ErrorCode::NotRegistered,
        ErrorCode::DeviceMismatch,
        ErrorCode::SessionAlreadyActive,
        ErrorCode::SessionNotFound,
        ErrorCode::SessionNotActive,
        ErrorCode::NoActiveSession,
        ErrorCode::MessageTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::ServiceUnavailable,
        ErrorCode::InternalError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidMessage => "INVALID_MESSAGE",
            ErrorCode::UnknownType => "UNKNOWN_TYPE",
            ErrorCode::InvalidDeviceId => "INVALID_DEVICE_ID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::NotRegistered => "NOT_REGISTERED",
            ErrorCode::DeviceMismatch => "DEVICE_MISMATCH",
            ErrorCode::SessionAlreadyActive => "SESSION_ALREADY_ACTIVE",
            ErrorCode::SessionNotFound => "SESSION_NOT_FOUND",
            ErrorCode::SessionNotActive => "SESSION_NOT_ACTIVE",
            ErrorCode::NoActiveSession => "NO_ACTIVE_SESSION",
            ErrorCode::MessageTooLarge => "MESSAGE_TOO_LARGE",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            ErrorCode::InternalError => "INTERNAL_ERROR",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The client sent `session_end`.
    ClientRequest,
    /// A newer `session_start` for the same device took over.
    Replaced,
    /// No accepted sensor data for the idle timeout.
    IdleTimeout,
    /// The connection holding the session closed or went silent.
    Disconnected,
    /// The gateway holding the session stopped heart-beating.
    GatewayLost,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::ClientRequest => "client_request",
            EndReason::Replaced => "replaced",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::Disconnected => "disconnected",
            EndReason::GatewayLost => "gateway_lost",
        }
    }

    pub fn parse(s: &str) -> Option<EndReason> {
        [
            EndReason::ClientRequest,
            EndReason::Replaced,
            EndReason::IdleTimeout,
            EndReason::Disconnected,
            EndReason::GatewayLost,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_wire_names_match_serde() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn end_reason_round_trips() {
        for r in [
            EndReason::ClientRequest,
            EndReason::Replaced,
            EndReason::IdleTimeout,
            EndReason::Disconnected,
            EndReason::GatewayLost,
        ] {
            assert_eq!(EndReason::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
    }
}
