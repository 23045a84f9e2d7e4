//! `amr-loadgen`: simulates AMR devices (one WebSocket connection each) against an AMR Bridge
//! gateway, or against the baselines of `bench/` that speak the same protocol, and reports
//! latencies, throughput, errors and the server's memory and CPU.
//!
//! Only loopback targets are accepted (see [`target`]).

pub mod cli;
pub mod device;
pub mod msg;
pub mod report;
pub mod stats;
pub mod sys;
pub mod target;
