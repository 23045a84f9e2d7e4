//! Property tests over client message parsing (the fuzz target that runs in CI with a bounded
//! number of cases): arbitrary bytes, arbitrary JSON values, and mutations of valid messages.
//! Parsing never panics; every input is either a valid message or an error with the code the
//! precedence rules of protocol.md section 10 give, and that error is a valid server message.
//! No accepted deviceId can carry a character that means something in a NATS subject.

use amr_proto::client::{self, types, ClientMessage};
use amr_proto::server::{ErrorMessage, ServerMessage};
use amr_proto::{ids, ErrorCode};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const KNOWN_TYPES: [&str; 6] = [
    types::DEVICE_REGISTER,
    types::SESSION_START,
    types::SESSION_END,
    types::SENSOR_DATA,
    types::SENSOR_BATCH,
    types::PING,
];

fn config() -> ProptestConfig {
    // Bounded so that `cargo test` stays fast; raise with PROPTEST_CASES for a longer run.
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Parses and checks the invariants every answer must hold; returns the result's code.
fn check(text: &str) -> Result<ClientMessage<'_>, ErrorCode> {
    match client::parse(text) {
        Ok(msg) => {
            if let Some(d) = msg.device_id() {
                assert!(ids::is_valid_device_id(d), "accepted deviceId {d:?}");
                assert!(!d.contains(['.', '*', '>', ' ', '\t', '\r', '\n']));
            }
            Ok(msg)
        }
        Err(e) => {
            assert!(
                matches!(
                    e.code,
                    ErrorCode::InvalidMessage | ErrorCode::UnknownType | ErrorCode::InvalidDeviceId
                ),
                "parsing gave {:?}",
                e.code
            );
            // The error the gateway builds from it is a valid server message.
            let mut out = ErrorMessage::new(e.code, e.message.clone());
            out.ref_type = e.ref_type.clone();
            out.device_id = e.device_id.clone();
            out.request_id = e.request_id.clone();
            let json = ServerMessage::Error(out).to_json();
            let back: ServerMessage = serde_json::from_str(&json).expect("error is valid JSON");
            assert!(matches!(back, ServerMessage::Error(ref b) if b.error_code == e.code));
            if let Some(r) = &e.ref_type {
                assert!(KNOWN_TYPES.contains(&r.as_str()), "ref {r:?}");
            }
            Err(e.code)
        }
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
        prop::sample::select(vec!["a.b", "*", ">", "a b", "ü", "AMR-1", "session_x"])
            .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "type",
                    "deviceId",
                    "sessionId",
                    "timestamp",
                    "data",
                    "samples",
                    "seq",
                    "requestId",
                    "clientVersion",
                    "token",
                    "x",
                ])
                .prop_map(str::to_owned),
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn valid_messages() -> Vec<Value> {
    let s = ids::new_session_id();
    vec![
        json!({"type": "device_register", "deviceId": "AMR-1", "timestamp": 1, "clientVersion": "1.1.0"}),
        json!({"type": "device_register", "deviceId": "AMR-1", "token": "a.b.c"}),
        json!({"type": "session_start", "deviceId": "AMR-1", "timestamp": 1, "requestId": "r-1"}),
        json!({"type": "session_end", "deviceId": "AMR-1", "sessionId": s, "timestamp": 1}),
        json!({"type": "sensor_data", "deviceId": "AMR-1", "sessionId": s, "timestamp": 1, "seq": 3, "data": {"imu": [1, 2]}}),
        json!({"type": "sensor_batch", "deviceId": "AMR-1", "sessionId": s, "samples": [{"timestamp": 1, "data": {}}]}),
        json!({"type": "ping"}),
    ]
}

fn arb_valid() -> impl Strategy<Value = Map<String, Value>> {
    prop::sample::select(valid_messages()).prop_map(|v| match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = check(&text);
    }

    #[test]
    fn arbitrary_text(text in ".{0,256}") {
        let r = check(&text);
        if !text.trim_start().starts_with('{') {
            prop_assert_eq!(r.err(), Some(ErrorCode::InvalidMessage));
        }
    }

    #[test]
    fn arbitrary_json(v in arb_json()) {
        let text = v.to_string();
        let r = check(&text);
        // Not an object, or no string type: INVALID_MESSAGE; a string type nobody knows:
        // UNKNOWN_TYPE.
        match v.as_object().map(|o| o.get("type")) {
            None | Some(None) => prop_assert_eq!(r.err(), Some(ErrorCode::InvalidMessage)),
            Some(Some(Value::String(t))) if !KNOWN_TYPES.contains(&t.as_str()) => {
                prop_assert_eq!(r.err(), Some(ErrorCode::UnknownType))
            }
            Some(Some(Value::String(_))) => {}
            Some(Some(_)) => prop_assert_eq!(r.err(), Some(ErrorCode::InvalidMessage)),
        }
    }

    #[test]
    fn device_id_mutations(mut m in arb_valid(), id in prop_oneof![
        ".{0,80}",
        "[A-Za-z0-9_-]{1,64}",
        "[A-Za-z0-9_.*> -]{1,70}",
        Just("x".repeat(10_000)),
    ]) {
        if m.get("type") == Some(&json!("ping")) {
            return Ok(());
        }
        m.insert("deviceId".into(), Value::String(id.clone()));
        let text = Value::Object(m).to_string();
        match check(&text) {
            Ok(msg) => {
                prop_assert!(ids::is_valid_device_id(&id));
                prop_assert_eq!(msg.device_id(), Some(id.as_str()));
            }
            Err(code) => {
                prop_assert!(!ids::is_valid_device_id(&id));
                prop_assert_eq!(code, ErrorCode::InvalidDeviceId);
            }
        }
    }

    #[test]
    fn field_type_mutations(mut m in arb_valid(), field in prop::sample::select(vec![
        "deviceId", "sessionId", "timestamp", "seq", "requestId", "clientVersion", "token",
    ]), v in arb_json()) {
        let kind = m.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
        m.insert(field.into(), v.clone());
        if v.is_null() {
            // `null` means absent (protocol.md section 10): no claim about the result.
            let _ = check(&Value::Object(m).to_string());
            return Ok(());
        }
        let text = Value::Object(m).to_string();
        let r = check(&text).map(|_| ()).err();
        // A non-string where a string belongs is INVALID_MESSAGE for every type that reads it.
        let string_field = matches!(field, "deviceId" | "sessionId" | "requestId" | "clientVersion" | "token");
        let reads = match (kind.as_str(), field) {
            // Every type, ping included, checks these two.
            (_, "timestamp") | (_, "deviceId") => true,
            ("device_register", f) => f == "clientVersion" || f == "token",
            ("session_start", f) => f == "requestId",
            ("session_end", f) => f == "sessionId",
            ("sensor_data" | "sensor_batch", f) => f == "sessionId" || f == "seq",
            _ => false,
        };
        if reads && string_field && !v.is_string() {
            prop_assert_eq!(r, Some(ErrorCode::InvalidMessage));
        }
        if reads && field == "timestamp" && !(v.is_i64() || v.is_u64() && v.as_u64().is_some_and(|n| n <= i64::MAX as u64)) {
            prop_assert_eq!(r, Some(ErrorCode::InvalidMessage));
        }
        if reads && field == "seq" {
            let ok = v.as_u64().is_some_and(|n| n >= 1);
            prop_assert_eq!(r.is_none(), ok, "seq {}", v);
        }
    }

    #[test]
    fn unknown_types(mut m in arb_valid(), t in ".{0,100}") {
        prop_assume!(!KNOWN_TYPES.contains(&t.as_str()));
        m.insert("type".into(), Value::String(t));
        prop_assert_eq!(check(&Value::Object(m).to_string()).err(), Some(ErrorCode::UnknownType));
    }

    #[test]
    fn deep_nesting_and_huge_numbers(mut m in arb_valid(), depth in 1usize..3000, digits in 1usize..500) {
        // Deep nesting inside data: accepted when serde_json's recursion bound allows it,
        // otherwise INVALID_MESSAGE; never a stack overflow.
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        m.insert("data".into(), json!({}));
        let base = Value::Object(m.clone()).to_string();
        let text = base.replacen("\"data\":{}", &format!("\"data\":{{\"n\":{nested}}}"), 1);
        let r = check(&text);
        if r.is_err() {
            prop_assert_eq!(r.err(), Some(ErrorCode::InvalidMessage));
        }
        let big = "9".repeat(digits);
        let text = base.replacen("\"data\":{}", &format!("\"data\":{{}},\"x\":{big}"), 1);
        let _ = check(&text);
        let text = Value::Object(m).to_string().replacen('{', &format!("{{\"timestamp\":{big}e999,"), 1);
        let _ = check(&text);
    }
}

#[test]
fn every_valid_message_parses() {
    for v in valid_messages() {
        assert!(check(&v.to_string()).is_ok(), "{v}");
    }
}
