//! Every Prometheus series of the session service: names live here once (README's metrics
//! table and `deploy/grafana/amr-bridge.json` use exactly these). Labels are bounded sets
//! (`op`, `result` = `ok` or an error code, `reason`): never a device or session id.

/// Sessions started (counter).
pub const SESSIONS_STARTED: &str = "amr_sessions_started_total";
/// Sessions ended, by `reason` (counter).
pub const SESSIONS_ENDED: &str = "amr_sessions_ended_total";
/// Sessions active now, counted in Redis at scrape (gauge; the same value on every replica).
pub const SESSIONS_ACTIVE: &str = "amr_sessions_active";
/// Requests answered, by `op` and `result` (counter).
pub const OPS: &str = "amr_session_ops_total";
/// Time to answer a request inside the service, by `op` (histogram).
pub const OP_DURATION: &str = "amr_session_op_duration_seconds";
/// Requests being handled by this replica (gauge).
pub const REQUESTS_IN_FLIGHT: &str = "amr_session_requests_in_flight";
/// Starts decided on the guess that the device had no session and no remembered request, by
/// `outcome`: `committed` (one store round trip) or `conflict` (the guess was wrong; decided
/// again on the real state) (counter).
pub const CLEAN_STARTS: &str = "amr_session_clean_starts_total";
/// Gateways declared lost (their sessions ended `gateway_lost`) (counter).
pub const GATEWAYS_LOST: &str = "amr_gateways_lost_total";
/// 1 while the NATS connection is up (gauge, at scrape).
pub const NATS_CONNECTED: &str = "amr_session_service_nats_connected";
/// 1 while Redis answers a PING (gauge, at scrape).
pub const REDIS_CONNECTED: &str = "amr_session_service_redis_connected";
/// 1 once the service drains (gauge).
pub const DRAINING: &str = "amr_session_service_draining";

/// Declares every series with its help text, so `/metrics` lists them from the start.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(SESSIONS_STARTED, "Sessions started");
    describe_counter!(SESSIONS_ENDED, "Sessions ended, by reason");
    describe_gauge!(SESSIONS_ACTIVE, "Sessions active now (from Redis)");
    describe_counter!(OPS, "Session requests answered, by op and result");
    describe_histogram!(
        OP_DURATION,
        Unit::Seconds,
        "Time to answer a session request inside the service, by op"
    );
    describe_gauge!(REQUESTS_IN_FLIGHT, "Session requests being handled");
    describe_counter!(
        CLEAN_STARTS,
        "Starts decided on the guess of a device without a session, by outcome"
    );
    describe_counter!(GATEWAYS_LOST, "Gateways declared lost");
    describe_gauge!(NATS_CONNECTED, "1 while connected to NATS");
    describe_gauge!(REDIS_CONNECTED, "1 while Redis answers");
    describe_gauge!(DRAINING, "1 while the service drains");
    metrics::counter!(SESSIONS_STARTED).absolute(0);
    metrics::gauge!(REQUESTS_IN_FLIGHT).set(0.0);
    metrics::gauge!(DRAINING).set(0.0);
}

pub fn op(op: &'static str, result: &'static str, elapsed: std::time::Duration) {
    metrics::counter!(OPS, "op" => op, "result" => result).increment(1);
    metrics::histogram!(OP_DURATION, "op" => op).record(elapsed.as_secs_f64());
}
