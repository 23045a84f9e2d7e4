//! Parsing and validation cost per client message type (issue 9, benchmark 4).
//!
//! `cargo bench -p amr-proto --bench parse`. The sensor messages are the hot path: the parser
//! must only walk the envelope and borrow the payload, so their cost should stay close to the
//! cost of validating the JSON bytes once.

use amr_proto::client;
use amr_proto::ids;
use amr_proto::server::{Ack, ErrorMessage, ServerMessage};
use amr_proto::ErrorCode;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;

const SESSION: &str = "session_0190a1b2c3d47e8f9a0b1c2d3e4f5a6b";

/// A `sensor_data` of about 200 bytes, the size the ingest benchmark uses.
fn sensor_data(seq: Option<u64>) -> String {
    let seq = seq.map(|s| format!(",\"seq\":{s}")).unwrap_or_default();
    format!(
        "{{\"type\":\"sensor_data\",\"deviceId\":\"amr-0042\",\"sessionId\":\"{SESSION}\"{seq},\
         \"timestamp\":1764150000123,\"sensorType\":\"imu\",\
         \"data\":{{\"ax\":0.0123,\"ay\":-0.0456,\"az\":9.8061,\"gx\":0.001,\"gy\":-0.002,\"gz\":0.0003}}}}"
    )
}

fn sensor_batch(samples: usize) -> String {
    let sample = r#"{"timestamp":1764150000123,"data":{"ax":0.0123,"ay":-0.0456,"az":9.8061}}"#;
    let samples = vec![sample; samples].join(",");
    format!(
        "{{\"type\":\"sensor_batch\",\"deviceId\":\"amr-0042\",\"sessionId\":\"{SESSION}\",\"seq\":7,\
         \"sensorType\":\"imu\",\"samples\":[{samples}]}}"
    )
}

fn messages() -> Vec<(&'static str, String)> {
    vec![
        (
            "device_register",
            r#"{"type":"device_register","deviceId":"amr-0042","timestamp":1764150000000,"clientVersion":"1.2.0"}"#
                .to_owned(),
        ),
        (
            "session_start",
            r#"{"type":"session_start","deviceId":"amr-0042","requestId":"r-1764150000000-1"}"#.to_owned(),
        ),
        (
            "session_end",
            format!(r#"{{"type":"session_end","deviceId":"amr-0042","sessionId":"{SESSION}"}}"#),
        ),
        ("sensor_data", sensor_data(None)),
        ("sensor_data_seq", sensor_data(Some(123_456))),
        ("sensor_batch_10", sensor_batch(10)),
        ("sensor_batch_100", sensor_batch(100)),
        ("ping", r#"{"type":"ping","timestamp":1764150000000}"#.to_owned()),
        // Refusals must be cheap too: a flood of bad input is answered, not amplified.
        ("invalid_json", r#"{"type":"sensor_data","deviceId":"amr-0042""#.to_owned()),
        ("unknown_type", r#"{"type":"teleport","deviceId":"amr-0042"}"#.to_owned()),
        (
            "bad_device_id",
            r#"{"type":"sensor_data","deviceId":"amr.>","data":{"x":1}}"#.to_owned(),
        ),
    ]
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for (name, text) in messages() {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                // Both outcomes are work the gateway does per frame.
                let parsed = client::parse(black_box(&text));
                black_box(parsed.is_ok())
            })
        });
    }
    group.finish();
}

fn validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate");
    group.bench_function("device_id", |b| {
        b.iter(|| ids::is_valid_device_id(black_box("amr-0042_factory-3")))
    });
    group.bench_function("session_id", |b| {
        b.iter(|| ids::is_valid_session_id(black_box(SESSION)))
    });
    group.bench_function("request_id", |b| {
        b.iter(|| ids::is_valid_request_id(black_box("r-1764150000000-1")))
    });
    group.finish();
}

fn serialize(c: &mut Criterion) {
    let mut group = c.benchmark_group("serialize");
    group.bench_function("ack", |b| {
        b.iter_batched(
            || {
                ServerMessage::Ack(Ack {
                    session_id: SESSION.to_owned(),
                    seq: 123_456,
                })
            },
            |m| black_box(m.to_json()),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("error", |b| {
        b.iter_batched(
            || ServerMessage::Error(ErrorMessage::new(ErrorCode::SessionNotActive, "not active")),
            |m| black_box(m.to_json()),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, parse, validate, serialize);
criterion_main!(benches);
