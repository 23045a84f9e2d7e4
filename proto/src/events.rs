//! Session lifecycle events (published on `<prefix>.session.<deviceId>.created|ended`) and the
//! session record served by `/api/sessions`.

use crate::codes::EndReason;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(deny_unknown_fields))]
#[serde(rename_all = "camelCase")]
pub struct SessionCreatedEvent {
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::ids::SESSION_ID_PATTERN)))]
    pub session_id: String,
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::ids::DEVICE_ID_PATTERN)))]
    pub device_id: String,
    pub started_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::ids::SESSION_ID_PATTERN)))]
    pub replaced_session_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(deny_unknown_fields))]
#[serde(rename_all = "camelCase")]
pub struct SessionEndedEvent {
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::ids::SESSION_ID_PATTERN)))]
    pub session_id: String,
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::ids::DEVICE_ID_PATTERN)))]
    pub device_id: String,
    pub started_at: i64,
    pub ended_at: i64,
    pub reason: EndReason,
    pub data_count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Active,
    Ended,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Active => "active",
            SessionState::Ended => "ended",
        }
    }

    pub fn parse(s: &str) -> Option<SessionState> {
        match s {
            "active" => Some(SessionState::Active),
            "ended" => Some(SessionState::Ended),
            _ => None,
        }
    }
}

/// One session as `/api/sessions` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(deny_unknown_fields))]
#[serde(rename_all = "camelCase")]
pub struct SessionRecord {
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::ids::SESSION_ID_PATTERN)))]
    pub session_id: String,
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::ids::DEVICE_ID_PATTERN)))]
    pub device_id: String,
    pub state: SessionState,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub reason: Option<EndReason>,
    pub data_count: u64,
}

/// `GET /api/sessions` response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(deny_unknown_fields))]
#[serde(rename_all = "camelCase")]
pub struct SessionPage {
    pub sessions: Vec<SessionRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}
