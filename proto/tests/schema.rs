//! The committed JSON Schemas (`proto/schema/`) are what the code generates, and they accept
//! exactly what the client parser accepts.
//!
//! `AMR_UPDATE_SCHEMAS=1 cargo test -p amr-proto --features schema --test schema` rewrites the
//! committed files after a change of the contract.

use amr_proto::client;
use amr_proto::schema::{self, server_types};
use amr_proto::server::*;
use amr_proto::{EndReason, ErrorCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schema")
}

fn committed_files(dir: &Path, base: &Path, out: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            committed_files(&p, base, out);
        } else if p.extension().is_some_and(|x| x == "json") {
            if let Ok(rel) = p.strip_prefix(base) {
                out.insert(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
}

#[test]
fn committed_schemas_match_the_code() {
    let dir = schema_dir();
    let update = std::env::var("AMR_UPDATE_SCHEMAS").is_ok_and(|v| v == "1");
    let generated = schema::all();
    let mut problems = Vec::new();
    for f in &generated {
        let path = dir.join(&f.path);
        let text = schema::to_text(&f.schema);
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(old) if old == text => {}
            Ok(_) => problems.push(format!("{} differs from the code", f.path)),
            Err(_) => problems.push(format!("{} is missing", f.path)),
        }
    }
    let expected: BTreeSet<String> = generated.iter().map(|f| f.path.clone()).collect();
    let mut present = BTreeSet::new();
    committed_files(&dir, &dir, &mut present);
    for stale in present.difference(&expected) {
        if update {
            std::fs::remove_file(dir.join(stale)).unwrap();
        } else {
            problems.push(format!("{stale} is committed but no longer generated"));
        }
    }
    assert!(
        problems.is_empty(),
        "proto/schema/ is out of date:\n  {}\nRegenerate with: AMR_UPDATE_SCHEMAS=1 cargo test -p amr-proto --features schema --test schema",
        problems.join("\n  ")
    );
}

fn validator(path: &str) -> jsonschema::Validator {
    let f = schema::all()
        .into_iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("no schema {path}"));
    jsonschema::validator_for(&f.schema).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn client_validator(text: &str) -> Option<jsonschema::Validator> {
    let v: Value = serde_json::from_str(text).ok()?;
    let t = v.get("type")?.as_str()?;
    let known = [
        client::types::DEVICE_REGISTER,
        client::types::SESSION_START,
        client::types::SESSION_END,
        client::types::SENSOR_DATA,
        client::types::SENSOR_BATCH,
        client::types::PING,
    ];
    known
        .contains(&t)
        .then(|| validator(&format!("client/{t}.json")))
}

const ACCEPTED: &[&str] = &[
    r#"{"type":"device_register","deviceId":"AMR_001","timestamp":1703123456789,"clientVersion":"1.1.0"}"#,
    r#"{"type":"device_register","deviceId":"AMR-001","token":"a.b.c"}"#,
    r#"{"type":"device_register","deviceId":"A","clientVersion":null,"extra":{"x":1}}"#,
    r#"{"type":"session_start","deviceId":"AMR_001","timestamp":1703123456789}"#,
    r#"{"type":"session_start","requestId":"req-1:a.b"}"#,
    r#"{"type":"session_start","deviceId":null,"requestId":null}"#,
    r#"{"type":"session_end","deviceId":"AMR_001","sessionId":"session_abc123","timestamp":1703123456789}"#,
    r#"{"type":"session_end"}"#,
    r#"{"type":"sensor_data","deviceId":"AMR_001","sessionId":"session_abc","timestamp":1,"data":{"imu":[1,2,3]}}"#,
    r#"{"type":"sensor_data","sessionId":null,"data":{},"seq":1}"#,
    r#"{"type":"sensor_data","data":{"a":{"b":[null,true,"x"]}},"seq":18446744073709551615}"#,
    r#"{"type":"sensor_batch","deviceId":"A","sessionId":"s","seq":7,"samples":[{"timestamp":1,"data":{}},{"timestamp":2,"data":{"v":1}}]}"#,
    r#"{"type":"sensor_batch","samples":[{}]}"#,
    r#"{"type":"ping","timestamp":5}"#,
    r#"{"type":"ping"}"#,
];

const REJECTED: &[&str] = &[
    r#"{"type":"device_register"}"#,
    r#"{"type":"device_register","deviceId":null}"#,
    r#"{"type":"device_register","deviceId":123}"#,
    r#"{"type":"device_register","deviceId":"a.b"}"#,
    r#"{"type":"device_register","deviceId":""}"#,
    r#"{"type":"device_register","deviceId":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
    r#"{"type":"device_register","deviceId":"A","clientVersion":1}"#,
    r#"{"type":"device_register","deviceId":"A","token":false}"#,
    r#"{"type":"session_start","deviceId":"A","timestamp":"x"}"#,
    r#"{"type":"session_start","deviceId":"A","requestId":"a b"}"#,
    r#"{"type":"session_start","requestId":""}"#,
    r#"{"type":"session_end","sessionId":5}"#,
    r#"{"type":"sensor_data","deviceId":"A"}"#,
    r#"{"type":"sensor_data","data":5}"#,
    r#"{"type":"sensor_data","data":[1]}"#,
    r#"{"type":"sensor_data","data":null}"#,
    r#"{"type":"sensor_data","data":{},"seq":0}"#,
    r#"{"type":"sensor_data","data":{},"seq":-1}"#,
    r#"{"type":"sensor_data","data":{},"seq":"1"}"#,
    r#"{"type":"sensor_data","data":{},"sessionId":1}"#,
    r#"{"type":"sensor_batch","samples":[]}"#,
    r#"{"type":"sensor_batch","samples":[1]}"#,
    r#"{"type":"sensor_batch","samples":{}}"#,
    r#"{"type":"sensor_batch"}"#,
    r#"{"type":"ping","timestamp":"now"}"#,
];

#[test]
fn schemas_accept_what_the_parser_accepts() {
    for text in ACCEPTED {
        if let Err(e) = client::parse(text) {
            panic!("parser refuses {text}: {e:?}");
        }
        let v = client_validator(text).expect("a known type");
        let value: Value = serde_json::from_str(text).unwrap();
        if let Err(e) = v.validate(&value) {
            panic!("schema refuses {text}: {e}");
        }
    }
}

#[test]
fn schemas_refuse_what_the_parser_refuses() {
    for text in REJECTED {
        assert!(client::parse(text).is_err(), "parser accepts {text}");
        let v = client_validator(text).expect("a known type");
        let value: Value = serde_json::from_str(text).unwrap();
        assert!(!v.is_valid(&value), "schema accepts {text}");
    }
}

fn sid() -> String {
    amr_proto::ids::new_session_id()
}

fn server_examples() -> Vec<ServerMessage> {
    let mut err = ErrorMessage::new(ErrorCode::SessionNotActive, "not forwarded");
    err.device_id = Some("AMR_001".into());
    err.session_id = Some("session_abc".into());
    err.ref_type = Some(client::types::SENSOR_DATA.into());
    err.request_id = Some("r1".into());
    err.count = Some(3);
    vec![
        ServerMessage::DeviceRegistered(DeviceRegistered {
            device_id: "AMR_001".into(),
            timestamp: 1,
            session_id: None,
        }),
        ServerMessage::DeviceRegistered(DeviceRegistered {
            device_id: "AMR_001".into(),
            timestamp: 1,
            session_id: Some(sid()),
        }),
        ServerMessage::SessionCreated(SessionCreated {
            session_id: sid(),
            device_id: "AMR_001".into(),
            timestamp: 1,
            replaced_session_id: Some(sid()),
            request_id: Some("r1".into()),
        }),
        ServerMessage::SessionEnded(SessionEnded {
            session_id: sid(),
            device_id: "AMR_001".into(),
            timestamp: 3,
            reason: EndReason::GatewayLost,
            started_at: 1,
            ended_at: 2,
            data_count: 42,
        }),
        ServerMessage::Ack(Ack {
            session_id: sid(),
            seq: 9,
        }),
        ServerMessage::Pong(Pong { timestamp: 1 }),
        ServerMessage::Error(ErrorMessage::new(ErrorCode::InternalError, "x")),
        ServerMessage::Error(err),
    ]
}

#[test]
fn server_messages_validate_and_tags_agree() {
    let tags = [
        server_types::DEVICE_REGISTERED,
        server_types::SESSION_CREATED,
        server_types::SESSION_ENDED,
        server_types::ACK,
        server_types::PONG,
        server_types::ERROR,
    ];
    let mut seen = BTreeSet::new();
    for m in server_examples() {
        let value: Value = serde_json::from_str(&m.to_json()).unwrap();
        let tag = value["type"].as_str().unwrap().to_owned();
        assert!(
            tags.contains(&tag.as_str()),
            "tag {tag} not in server_types"
        );
        seen.insert(tag.clone());
        let v = validator(&format!("server/{tag}.json"));
        if let Err(e) = v.validate(&value) {
            panic!("schema refuses {value}: {e}");
        }
        // A field the server does not send is outside the schema.
        let mut extra = value.clone();
        extra["surprise"] = json!(1);
        assert!(!v.is_valid(&extra), "schema accepts {extra}");
    }
    assert_eq!(seen.len(), tags.len(), "an example per server message type");
}

#[test]
fn code_schemas_list_every_code() {
    let codes = validator("codes/error_code.json");
    for c in ErrorCode::ALL {
        assert!(codes.is_valid(&json!(c.as_str())), "{c}");
    }
    assert!(!codes.is_valid(&json!("NOPE")));
    let reasons = validator("codes/end_reason.json");
    for r in [
        EndReason::ClientRequest,
        EndReason::Replaced,
        EndReason::IdleTimeout,
        EndReason::Disconnected,
        EndReason::GatewayLost,
    ] {
        assert!(reasons.is_valid(&json!(r.as_str())), "{r}");
    }
}

#[test]
fn sensor_header_schema_names_every_header() {
    let f = schema::all()
        .into_iter()
        .find(|f| f.path == "nats/sensor_headers.json")
        .unwrap();
    for h in [
        amr_proto::headers::DEVICE_ID,
        amr_proto::headers::SESSION_ID,
        amr_proto::headers::RECEIVED_AT,
        amr_proto::headers::GATEWAY,
        amr_proto::headers::SEQ,
        amr_proto::headers::DATA_COUNT,
        amr_proto::headers::MESSAGE_TYPE,
        amr_proto::headers::NATS_MSG_ID,
        amr_proto::headers::TRACEPARENT,
    ] {
        assert!(f.schema["properties"].get(h).is_some(), "{h}");
    }
}
