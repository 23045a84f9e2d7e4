//! The AMR Bridge contract, in code.
//!
//! This crate owns every name that crosses a process boundary: the WebSocket messages of
//! `docs/protocol.md` (both directions), the error codes and end reasons, the NATS subjects and
//! header names that downstream analytics rely on, the internal gateway <-> session-service
//! messages, the Redis key layout, deviceId validation and sessionId generation.
//!
//! It must never do I/O: no sockets, no clocks beyond [`now_ms`], no configuration loading.
//! Any other crate that needs a subject, a key or an error code asks this crate for it.

pub mod client;
pub mod codes;
pub mod events;
pub mod headers;
pub mod ids;
pub mod internal;
pub mod keys;
#[cfg(feature = "schema")]
pub mod schema;
pub mod server;
pub mod subjects;

pub use codes::{EndReason, ErrorCode};

/// Milliseconds since the Unix epoch, the unit of every `timestamp` on the wire.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
