//! AMR Bridge in one process.
//!
//! Without `AMR_NATS_URL` it runs embedded: the gateway and the session state machine in one
//! process, sessions in memory (same state machine, same store semantics as Redis), sensor data
//! in NDJSON files. With `AMR_NATS_URL` (and `AMR_REDIS_URL`) it runs the distributed gateway
//! and session service together in one process instead.
//!
//! It owns only the wiring and the embedded implementations (file sink, session index); it
//! must never hold session logic of its own.

pub mod file_sink;
