//! End-to-end test harness of AMR Bridge.
//!
//! Every test starts its own world, in one of two [`Mode`]s:
//! - distributed: a `nats-server` (JetStream) and a `redis-server` on free loopback ports with
//!   their data in a temporary directory, then the binaries under test (`amr-session-service`,
//!   `amr-gateway`) on free ports;
//! - embedded: one `amr-bridge` process (no NATS, no Redis) on free ports, its data directory
//!   in the stack's temporary directory;
//!
//! and speaks to them exactly as clients and downstream consumers do. Nothing here touches the
//! system services on 4222/6379, so tests run in parallel and leave nothing behind (children are
//! killed on drop, even on panic).
//!
//! - [`servers`]: `NatsServer`, `RedisServer` (start, kill, stop, restart on the same port/data).
//! - [`stack`]: `Stack` = servers + N services + M gateways, or one bridge, built with
//!   [`stack::StackBuilder`]; mode-neutral accessors for stored data, events and records.
//! - [`client`]: `WsClient`, a WebSocket client speaking the wire contract.
//! - [`msg`]: builders of client messages (JSON values).
//! - [`jetstream`]: reading sessions back from `AMR_SENSOR`.
//! - [`files`]: reading the embedded mode's data directory (session NDJSON files, the
//!   `sessions.ndjson` index), and the one-line form the embedded mode stores.
//! - [`events`]: lifecycle events, from core NATS or from `sessions.ndjson`.
//! - [`http`]: a tiny HTTP/1.1 GET client for `/healthz`, `/readyz`, `/metrics`, `/api/sessions`.
//! - [`wait`]: wait-for-condition with a timeout (never a bare sleep as synchronisation).
//! - [`checks`]: shared assertions (error code + `ref`, traceparent shape).
//! - [`process`], [`binaries`]: child processes with captured logs; the product binaries,
//!   built once per test process with cargo so that no test runs a stale binary.
//!
//! Test files (`tests/tests/`): `session_protocol`, `sensor_data`, `errors`, `legacy`,
//! `idle_disconnect`, `http_endpoints` (each test that makes sense in one process runs in both
//! modes, see [`both_modes!`]), `doc_examples` (the examples of `docs/protocol.md`, replayed in
//! both modes and validated against `proto/schema/`), `faults` and `sensor_durability`
//! (distributed only; the latter reads sessions back with the `amr-export` library and binary),
//! `embedded` (embedded only), `hostile` (bad clients, floods, limits and JWT flows while a good
//! client streams; see docs/threat-model.md), `fuzz_connection` (proptest: random message
//! sequences on a real embedded connection; `PROPTEST_CASES` raises its case count), and
//! `harness_smoke` (the harness alone).
//! Debugging: `AMR_TEST_KEEP=1` keeps each stack's directory (logs, stores);
//! `AMR_TEST_RUST_LOG=debug` sets the children's `RUST_LOG` (default `info`).
//!
//! Timeouts here are generous upper bounds for *waiting*; no test asserts on durations.

pub mod binaries;
pub mod checks;
pub mod client;
pub mod events;
pub mod files;
pub mod http;
pub mod jetstream;
pub mod msg;
pub mod process;
pub mod servers;
pub mod stack;
pub mod wait;

pub use client::WsClient;
pub use stack::{Mode, Stack, StackBuilder};

use std::time::Duration;

/// Upper bound for one expected server message.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for a condition that needs several round trips (events, counts, records).
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(15);

/// A device id unique within this test process (tests of one binary share nothing, but unique
/// ids make logs readable and keep any accidental sharing visible).
pub fn unique_device(tag: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{tag}_{}", N.fetch_add(1, Ordering::Relaxed))
}

/// Runs one test body in BOTH modes, so that the two modes cannot drift apart.
///
/// ```ignore
/// async fn session_end_is_idempotent(mode: Mode) {
///     let stack = Stack::start_mode(mode).await;
///     // ...
/// }
/// both_modes!(session_end_is_idempotent);
/// ```
///
/// generates the tests `session_end_is_idempotent::distributed` and
/// `session_end_is_idempotent::embedded` (a module beside the function of the same name), each
/// calling the body with its [`Mode`]. `both_modes!(name, multi_thread)` runs them on a
/// two-worker multi-threaded runtime. Select one mode with `cargo test -p amr-tests embedded`
/// (or `distributed`); the embedded-only suite runs with `--test embedded`.
#[macro_export]
macro_rules! both_modes {
    ($name:ident) => {
        $crate::both_modes!(@gen $name, tokio::test);
    };
    ($name:ident, multi_thread) => {
        $crate::both_modes!(@gen $name, tokio::test(flavor = "multi_thread", worker_threads = 2));
    };
    (@gen $name:ident, $test:meta) => {
        mod $name {
            #[$test]
            async fn distributed() {
                super::$name($crate::Mode::Distributed).await
            }

            #[$test]
            async fn embedded() {
                super::$name($crate::Mode::Embedded).await
            }
        }
    };
}
