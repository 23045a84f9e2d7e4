//! `amr-export`: reads ONE session back from the `AMR_SENSOR` JetStream stream and writes it as
//! NDJSON (the client's messages verbatim) or CSV (one row per sample, `data` flattened).
//!
//! This crate owns the downstream read path as a tool and a library (the e2e tests use
//! [`reader::SessionReader`] to read sessions back): finding a session's subject, reading it
//! with an ephemeral ordered consumer until the stream holds no more for that subject, and the
//! NDJSON/CSV encodings.
//!
//! It must never write to NATS (no publish, no durable consumer, no stream change): exporting
//! is read-only, and safe to run against production while sessions are recorded.
//!
//! - [`reader`]: finding and reading a session (`SessionReader`, `StoredRecord`).
//! - [`flatten`]: samples of a stored message, flattened to dotted CSV columns.
//! - [`output`]: NDJSON and CSV writers.
//! - [`cli`]: the command-line options and the `run` entry point of the binary.

pub mod cli;
pub mod error;
pub mod flatten;
pub mod output;
pub mod reader;

pub use error::ExportError;
pub use reader::{SessionReader, StoredRecord, Target};
