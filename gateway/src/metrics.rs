//! Every Prometheus series of the gateway: names live here once (README's metrics table and
//! `deploy/grafana/amr-bridge.json` use exactly these), with small recording helpers.
//!
//! Labels are `&'static str` of bounded sets (message types, error codes, ops, causes): never a
//! device or session id. The per-message series keep cached handles, so the sensor path does
//! no key hashing or allocation for them.

use amr_proto::server::ServerMessage;
use metrics::{Counter, Gauge};
use std::sync::OnceLock;

/// Open WebSocket connections (gauge).
pub const CONNECTIONS: &str = "amr_gateway_connections";
/// Connections upgraded to WebSocket (counter).
pub const CONNECTIONS_OPENED: &str = "amr_gateway_connections_opened_total";
/// Connections closed or dropped, by `cause` (counter).
pub const CONNECTIONS_CLOSED: &str = "amr_gateway_connections_closed_total";
/// Connections known to the control-event registry (gauge, set at scrape).
pub const CONNECTIONS_REGISTERED: &str = "amr_gateway_connections_registered";
/// Client messages received, by `type` (counter; `invalid` and `binary` for unparsable ones).
pub const MESSAGES_IN: &str = "amr_gateway_messages_in_total";
/// Server messages sent, by `type` (counter).
pub const MESSAGES_OUT: &str = "amr_gateway_messages_out_total";
/// Error messages sent to clients, by `code` (counter).
pub const ERRORS: &str = "amr_gateway_errors_total";
/// Session operations, by `op` and `result` (`ok`, `error`, `unavailable`) (counter).
pub const SESSION_OPS: &str = "amr_gateway_session_ops_total";
/// Full round trip of a session operation seen by the gateway, by `op` (histogram).
pub const SESSION_OP_DURATION: &str = "amr_gateway_session_op_duration_seconds";
/// Sensor samples accepted (counter).
pub const SENSOR_SAMPLES: &str = "amr_gateway_sensor_samples_total";
/// JetStream publishes that were not stored (counter).
pub const PUBLISH_FAILURES: &str = "amr_gateway_publish_failures_total";
/// JetStream publish to ack latency of `seq` messages (histogram).
pub const JETSTREAM_ACK_DURATION: &str = "amr_gateway_jetstream_ack_duration_seconds";
/// JetStream publishes awaiting their ack (gauge).
pub const PUBLISHES_IN_FLIGHT: &str = "amr_gateway_publishes_in_flight";
/// 1 while the NATS connection is up (gauge).
pub const NATS_CONNECTED: &str = "amr_gateway_nats_connected";
/// 1 once the gateway drains (gauge).
pub const DRAINING: &str = "amr_gateway_draining";
/// Heartbeats to the session service that failed (counter).
pub const HEARTBEAT_FAILURES: &str = "amr_gateway_heartbeat_failures_total";

/// WebSocket upgrades refused before any socket was created, by `cause` (`origin`,
/// `gateway_full`, `too_many_from_ip`) (counter).
pub const UPGRADES_REFUSED: &str = "amr_gateway_upgrades_refused_total";
/// Client messages refused by the per-connection rate limit (counter).
pub const RATE_LIMITED: &str = "amr_gateway_rate_limited_total";
/// Times a connection reached its in-flight publish bound and stopped being read (counter).
pub const INFLIGHT_BOUND_REACHED: &str = "amr_gateway_inflight_bound_reached_total";

/// `cause` label values of [`CONNECTIONS_CLOSED`].
pub mod cause {
    pub const CLIENT_CLOSED: &str = "client_closed";
    pub const SOCKET_ERROR: &str = "socket_error";
    pub const SILENT: &str = "silent";
    pub const TOO_LARGE: &str = "too_large";
    pub const DRAINED: &str = "drained";
    pub const HANDSHAKE_TIMEOUT: &str = "handshake_timeout";
    pub const HANDSHAKE_FAILED: &str = "handshake_failed";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const WRITE_STALLED: &str = "write_stalled";
}

/// Declares every series with its help text, so `/metrics` lists them from the start.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(CONNECTIONS, "Open WebSocket connections");
    describe_counter!(CONNECTIONS_OPENED, "WebSocket connections opened");
    describe_counter!(
        CONNECTIONS_CLOSED,
        "Connections closed or dropped, by cause"
    );
    describe_gauge!(
        CONNECTIONS_REGISTERED,
        "Connections in the control registry"
    );
    describe_counter!(MESSAGES_IN, "Client messages received, by type");
    describe_counter!(MESSAGES_OUT, "Server messages sent, by type");
    describe_counter!(ERRORS, "Error messages sent to clients, by code");
    describe_counter!(SESSION_OPS, "Session operations, by op and result");
    describe_histogram!(
        SESSION_OP_DURATION,
        Unit::Seconds,
        "Session operation round trip (gateway to session service and back), by op"
    );
    describe_counter!(SENSOR_SAMPLES, "Sensor samples accepted");
    describe_counter!(PUBLISH_FAILURES, "JetStream publishes not stored");
    describe_histogram!(
        JETSTREAM_ACK_DURATION,
        Unit::Seconds,
        "JetStream publish to ack latency"
    );
    describe_gauge!(
        PUBLISHES_IN_FLIGHT,
        "JetStream publishes awaiting their ack"
    );
    describe_gauge!(NATS_CONNECTED, "1 while connected to NATS");
    describe_gauge!(DRAINING, "1 while the gateway drains");
    describe_counter!(
        HEARTBEAT_FAILURES,
        "Failed heartbeats to the session service"
    );
    describe_counter!(
        UPGRADES_REFUSED,
        "WebSocket upgrades refused (Origin, connection limits), by cause"
    );
    describe_counter!(RATE_LIMITED, "Client messages refused by the rate limit");
    describe_counter!(
        INFLIGHT_BOUND_REACHED,
        "Times a connection hit its in-flight bound (backpressure)"
    );
    // Present at 0 before the first event.
    metrics::gauge!(CONNECTIONS).set(0.0);
    metrics::gauge!(PUBLISHES_IN_FLIGHT).set(0.0);
    metrics::gauge!(DRAINING).set(0.0);
    metrics::counter!(CONNECTIONS_OPENED).absolute(0);
    metrics::counter!(SENSOR_SAMPLES).absolute(0);
}

/// Cached handles of the per-message series.
struct Hot {
    in_data: Counter,
    in_batch: Counter,
    out_ack: Counter,
    samples: Counter,
    in_flight: Gauge,
}

fn hot() -> &'static Hot {
    static HOT: OnceLock<Hot> = OnceLock::new();
    HOT.get_or_init(|| Hot {
        in_data: metrics::counter!(MESSAGES_IN, "type" => amr_proto::client::types::SENSOR_DATA),
        in_batch: metrics::counter!(MESSAGES_IN, "type" => amr_proto::client::types::SENSOR_BATCH),
        out_ack: metrics::counter!(MESSAGES_OUT, "type" => "ack"),
        samples: metrics::counter!(SENSOR_SAMPLES),
        in_flight: metrics::gauge!(PUBLISHES_IN_FLIGHT),
    })
}

pub fn message_in(kind: &'static str) {
    let h = hot();
    match kind {
        amr_proto::client::types::SENSOR_DATA => h.in_data.increment(1),
        amr_proto::client::types::SENSOR_BATCH => h.in_batch.increment(1),
        _ => metrics::counter!(MESSAGES_IN, "type" => kind).increment(1),
    }
}

pub fn message_out(msg: &ServerMessage) {
    let kind = match msg {
        ServerMessage::Ack(_) => return hot().out_ack.increment(1),
        ServerMessage::DeviceRegistered(_) => "device_registered",
        ServerMessage::SessionCreated(_) => "session_created",
        ServerMessage::SessionEnded(_) => "session_ended",
        ServerMessage::Pong(_) => "pong",
        ServerMessage::Error(_) => "error",
    };
    metrics::counter!(MESSAGES_OUT, "type" => kind).increment(1);
}

pub fn error(code: &'static str) {
    metrics::counter!(ERRORS, "code" => code).increment(1);
}

pub fn samples(n: u64) {
    hot().samples.increment(n);
}

pub fn closed(cause: &'static str) {
    metrics::counter!(CONNECTIONS_CLOSED, "cause" => cause).increment(1);
}

pub fn publish_sent() {
    hot().in_flight.increment(1.0);
}

/// A JetStream publish settled (stored or not) after `elapsed`.
pub fn publish_settled(elapsed: std::time::Duration, stored: bool) {
    hot().in_flight.decrement(1.0);
    metrics::histogram!(JETSTREAM_ACK_DURATION).record(elapsed.as_secs_f64());
    if !stored {
        metrics::counter!(PUBLISH_FAILURES).increment(1);
    }
}

pub fn session_op(op: &'static str, result: &'static str, elapsed: std::time::Duration) {
    metrics::histogram!(SESSION_OP_DURATION, "op" => op).record(elapsed.as_secs_f64());
    metrics::counter!(SESSION_OPS, "op" => op, "result" => result).increment(1);
}
