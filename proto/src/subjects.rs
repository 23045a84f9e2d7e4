//! NATS subjects and JetStream stream names, under a configurable prefix (default `amr`).
//!
//! Public (downstream) subjects:
//! - `<p>.sensor.<deviceId>.<sessionId>`: accepted sensor messages (stream `AMR_SENSOR`).
//! - `<p>.session.<deviceId>.created|ended`: lifecycle events (stream `AMR_SESSIONS`).
//!
//! Internal subjects, between gateways and the session service, all under `<p>.internal.`:
//! - `<p>.internal.session.<op>`: session-service endpoints (NATS Services API, queue group).
//! - `<p>.internal.gw.<gatewayId>.<connId>`: events pushed to one connection of one gateway.

pub const DEFAULT_PREFIX: &str = "amr";
pub const SENSOR_STREAM: &str = "AMR_SENSOR";
pub const SESSIONS_STREAM: &str = "AMR_SESSIONS";
/// Name of the session service in the NATS Services API (`$SRV.INFO.amr-session`).
pub const SERVICE_NAME: &str = "amr-session";

pub const EVENT_CREATED: &str = "created";
pub const EVENT_ENDED: &str = "ended";

/// Session-service endpoints.
pub mod ops {
    pub const START: &str = "start";
    pub const END: &str = "end";
    pub const CLAIM: &str = "claim";
    pub const DISCONNECT: &str = "disconnect";
    pub const ACTIVITY: &str = "activity";
    /// A gateway's periodic sign of life (see `internal::HeartbeatRequest`).
    pub const HEARTBEAT: &str = "heartbeat";
    pub const ALL: [&str; 6] = [START, END, CLAIM, DISCONNECT, ACTIVITY, HEARTBEAT];
}

/// Subject builder for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Subjects::new(DEFAULT_PREFIX)
    }
}

/// True when `prefix` is one or more dot-separated tokens of `[A-Za-z0-9_-]`.
pub fn is_valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

impl Subjects {
    pub fn new(prefix: impl Into<String>) -> Self {
        Subjects {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn sensor(&self, device_id: &str, session_id: &str) -> String {
        format!("{}.sensor.{device_id}.{session_id}", self.prefix)
    }

    /// Filter of the `AMR_SENSOR` stream.
    pub fn sensor_all(&self) -> String {
        format!("{}.sensor.>", self.prefix)
    }

    pub fn session_event(&self, device_id: &str, event: &str) -> String {
        format!("{}.session.{device_id}.{event}", self.prefix)
    }

    /// Filter of the `AMR_SESSIONS` stream.
    pub fn session_all(&self) -> String {
        format!("{}.session.>", self.prefix)
    }

    /// Group of the session-service endpoints; an endpoint's subject is `<group>.<op>`.
    pub fn service_group(&self) -> String {
        format!("{}.internal.session", self.prefix)
    }

    pub fn service_op(&self, op: &str) -> String {
        format!("{}.{op}", self.service_group())
    }

    /// Subject of one connection: pushed events and revocations for it arrive here.
    pub fn connection(&self, gateway_id: &str, conn_id: &str) -> String {
        format!("{}.internal.gw.{gateway_id}.{conn_id}", self.prefix)
    }

    /// Wildcard a gateway subscribes to for all its connections.
    pub fn gateway_all(&self, gateway_id: &str) -> String {
        format!("{}.internal.gw.{gateway_id}.>", self.prefix)
    }

    /// The connection id of a subject built by [`Subjects::connection`].
    pub fn conn_id_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject.rsplit('.').next()
    }

    /// The gateway id inside a connection subject.
    pub fn gateway_of<'a>(&self, connection_subject: &'a str) -> Option<&'a str> {
        let rest = connection_subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".internal.gw.")?;
        rest.split('.').next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        let s = Subjects::default();
        assert_eq!(
            s.sensor("AMR_001", "session_1"),
            "amr.sensor.AMR_001.session_1"
        );
        assert_eq!(
            s.session_event("AMR_001", EVENT_ENDED),
            "amr.session.AMR_001.ended"
        );
        assert_eq!(s.service_op(ops::START), "amr.internal.session.start");
        let c = s.connection("gw-1", "c7");
        assert_eq!(s.conn_id_of(&c), Some("c7"));
        assert_eq!(s.gateway_of(&c), Some("gw-1"));
        assert!(is_valid_prefix("amr"));
        assert!(is_valid_prefix("plant1.amr"));
        assert!(!is_valid_prefix("a..b"));
        assert!(!is_valid_prefix("a.*"));
    }
}
