//! Redis key layout of the session store, under a configurable prefix (default `amr`).
//!
//! - `<p>:session:<sessionId>`: hash with the [`field`]s below; expires `retention` after the end.
//! - `<p>:device:<deviceId>:active`: the device's active sessionId (at most one).
//! - `<p>:device:<deviceId>:sessions`: sorted set of the device's sessionIds by start time.
//! - `<p>:device:<deviceId>:request:<requestId>`: sessionId created for a requestId (60 s).
//! - `<p>:sessions`: sorted set of every sessionId by start time (listing, pagination).
//! - `<p>:deadlines`: sorted set of active sessionIds by the time they end unless refreshed
//!   (idle timeout, or disconnect grace); swept by every session-service replica.
//! - `<p>:gateways`: sorted set of gateway ids by last heartbeat (or by the end of a sweeper's
//!   lease on a gateway found silent).
//! - `<p>:gateway:<gatewayId>:sessions`: set of the sessions a gateway's connections hold
//!   (active, with an owner); kept by the store with every row it writes.

/// Field names of the session hash.
pub mod field {
    pub const DEVICE_ID: &str = "deviceId";
    pub const STATE: &str = "state";
    pub const STARTED_AT: &str = "startedAt";
    pub const ENDED_AT: &str = "endedAt";
    pub const REASON: &str = "reason";
    pub const DATA_COUNT: &str = "dataCount";
    /// Connection subject of the connection holding the session ("" when detached).
    pub const OWNER: &str = "owner";
    pub const GATEWAY: &str = "gateway";
    pub const REPLACED: &str = "replacedSessionId";
    /// Reason the session ends with when its deadline passes (`idle_timeout` or `disconnected`).
    pub const PENDING_REASON: &str = "pendingReason";
    /// When the session ends unless refreshed (Unix ms); mirrors its score in `deadlines`.
    pub const DEADLINE: &str = "deadline";
    /// Monotonic version, bumped by every change (compare-and-set).
    pub const VERSION: &str = "version";
    /// Prefix of the per-connection count fields, see [`accepted`].
    pub const ACCEPTED_PREFIX: &str = "accepted:";

    /// Field holding the highest cumulative `accepted` the connection `owner` (its subject)
    /// reported for the session; `dataCount` is the sum of these fields.
    pub fn accepted(owner: &str) -> String {
        format!("{ACCEPTED_PREFIX}{owner}")
    }
}

pub const DEFAULT_PREFIX: &str = "amr";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new(DEFAULT_PREFIX)
    }
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    pub fn session(&self, session_id: &str) -> String {
        format!("{}:session:{session_id}", self.prefix)
    }

    pub fn active(&self, device_id: &str) -> String {
        format!("{}:device:{device_id}:active", self.prefix)
    }

    pub fn device_sessions(&self, device_id: &str) -> String {
        format!("{}:device:{device_id}:sessions", self.prefix)
    }

    pub fn request(&self, device_id: &str, request_id: &str) -> String {
        format!("{}:device:{device_id}:request:{request_id}", self.prefix)
    }

    pub fn all_sessions(&self) -> String {
        format!("{}:sessions", self.prefix)
    }

    pub fn deadlines(&self) -> String {
        format!("{}:deadlines", self.prefix)
    }

    pub fn gateways(&self) -> String {
        format!("{}:gateways", self.prefix)
    }

    pub fn gateway_sessions(&self, gateway_id: &str) -> String {
        format!("{}:gateway:{gateway_id}:sessions", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_keys() {
        let k = Keys::default();
        assert_eq!(k.gateways(), "amr:gateways");
        assert_eq!(k.gateway_sessions("gw-1"), "amr:gateway:gw-1:sessions");
    }
}
