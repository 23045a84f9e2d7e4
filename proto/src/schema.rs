//! JSON Schemas of the contract (feature `schema`), committed under `proto/schema/`.
//!
//! Server messages, lifecycle events, session records and the code enums derive their schemas
//! from the very types the services serialise. Client messages are read by a hand-written
//! envelope parser ([`crate::client::parse`]), so their schemas come from the schema-only
//! structs below, which mirror what that parser accepts; `proto/tests/schema.rs` replays
//! examples through both so that the two cannot drift apart.
//!
//! The schemas are JSON Schema draft-07 with every sub-schema inlined (no `$ref` inside a
//! file), the dialect AsyncAPI 3.0 documents use by default. Client messages allow unknown
//! properties (the server ignores them); server messages and events list every property they
//! can carry (`additionalProperties: false`): a client should still ignore unknown ones, so
//! that a later server version may add fields.

use crate::client::types;
use crate::codes::{EndReason, ErrorCode};
use crate::events::{SessionCreatedEvent, SessionEndedEvent, SessionPage, SessionRecord};
use crate::headers;
use crate::ids::{DEVICE_ID_PATTERN, REQUEST_ID_PATTERN, SESSION_ID_PATTERN};
use crate::server::{Ack, DeviceRegistered, ErrorMessage, Pong, SessionCreated, SessionEnded};
use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

/// Wire names of the server message types (the `type` tag serde derives from
/// [`crate::server::ServerMessage`]'s variants; the schema test checks they agree).
pub mod server_types {
    pub const DEVICE_REGISTERED: &str = "device_registered";
    pub const SESSION_CREATED: &str = "session_created";
    pub const SESSION_ENDED: &str = "session_ended";
    pub const ACK: &str = "ack";
    pub const PONG: &str = "pong";
    pub const ERROR: &str = "error";
}

/// `device_register`: binds one deviceId to the connection. A client that announces no
/// `clientVersion` >= 1.1 is treated as legacy (v1.0) and gets a provisional sessionId.
#[derive(JsonSchema)]
#[schemars(rename_all = "camelCase")]
#[allow(dead_code)]
struct DeviceRegister {
    #[schemars(regex(pattern = DEVICE_ID_PATTERN))]
    device_id: String,
    /// Client clock, Unix epoch milliseconds (informative).
    timestamp: Option<i64>,
    /// App version, e.g. `1.1.0`; >= 1.1 means session-aware.
    client_version: Option<String>,
    /// Signed token (JWT) when authentication is on.
    token: Option<String>,
}

/// `session_start`: asks for a new session of the registered device.
#[derive(JsonSchema)]
#[schemars(rename_all = "camelCase")]
#[allow(dead_code)]
struct SessionStart {
    /// Optional: must equal the registered deviceId when present.
    #[schemars(regex(pattern = DEVICE_ID_PATTERN))]
    device_id: Option<String>,
    /// Client clock, Unix epoch milliseconds (informative).
    timestamp: Option<i64>,
    /// Idempotency key: a retry with the same requestId within 60 s gets the same session.
    #[schemars(regex(pattern = REQUEST_ID_PATTERN))]
    request_id: Option<String>,
}

/// `session_end`: ends the named session, or the device's active one when sessionId is absent.
#[derive(JsonSchema)]
#[schemars(rename_all = "camelCase")]
#[allow(dead_code)]
struct SessionEnd {
    /// Optional: must equal the registered deviceId when present.
    #[schemars(regex(pattern = DEVICE_ID_PATTERN))]
    device_id: Option<String>,
    /// The session to end; absent or null: the device's active session.
    session_id: Option<String>,
    /// Client clock, Unix epoch milliseconds (informative).
    timestamp: Option<i64>,
}

/// `sensor_data`: one sample, forwarded verbatim to `amr.sensor.<deviceId>.<sessionId>`.
#[derive(JsonSchema)]
#[schemars(rename_all = "camelCase")]
#[allow(dead_code)]
struct SensorData {
    /// Optional: must equal the registered deviceId when present.
    #[schemars(regex(pattern = DEVICE_ID_PATTERN))]
    device_id: Option<String>,
    /// The active session; absent or null: the connection's current session.
    session_id: Option<String>,
    /// Client clock, Unix epoch milliseconds (informative).
    timestamp: Option<i64>,
    /// Any JSON object (IMU, vibration, battery, ...), never changed by the server.
    data: Map<String, Value>,
    /// Reliability: a positive integer increasing within the session; asks for an `ack`.
    #[schemars(range(min = 1))]
    seq: Option<u64>,
}

/// One sample of a `sensor_batch`. The server only requires an object; this is its usual shape.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct Sample {
    /// Client clock of the sample, Unix epoch milliseconds.
    timestamp: Option<i64>,
    /// Any JSON object.
    data: Option<Map<String, Value>>,
}

/// `sensor_batch`: many samples in one message (one downstream message; each sample counts in
/// dataCount).
#[derive(JsonSchema)]
#[schemars(rename_all = "camelCase")]
#[allow(dead_code)]
struct SensorBatch {
    /// Optional: must equal the registered deviceId when present.
    #[schemars(regex(pattern = DEVICE_ID_PATTERN))]
    device_id: Option<String>,
    /// The active session; absent or null: the connection's current session.
    session_id: Option<String>,
    /// Client clock, Unix epoch milliseconds (informative).
    timestamp: Option<i64>,
    /// At least one sample.
    #[schemars(length(min = 1))]
    samples: Vec<Sample>,
    /// Reliability: a positive integer increasing within the session; asks for an `ack`.
    #[schemars(range(min = 1))]
    seq: Option<u64>,
}

/// `ping`: application-level liveness check, answered with `pong`.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct Ping {
    /// Client clock, Unix epoch milliseconds (informative).
    timestamp: Option<i64>,
}

/// One committed schema file: its path under `proto/schema/` and its content.
pub struct SchemaFile {
    pub path: String,
    pub schema: Value,
}

/// The schema of `T` where an absent `Option` may also be sent as `null` (client messages, whose
/// parser takes `null` as absent; session records, which serialise `None` as `null`).
fn generate<T: JsonSchema>() -> Value {
    generate_with::<T>(true)
}

/// The schema of `T` where an `Option` is either absent or a value: the server's messages and
/// events skip `None` fields, they never send `null`.
fn generate_skipping_none<T: JsonSchema>() -> Value {
    generate_with::<T>(false)
}

fn generate_with<T: JsonSchema>(option_null: bool) -> Value {
    let mut settings = SchemaSettings::draft07();
    settings.inline_subschemas = true;
    let schema = settings.into_generator().into_root_schema_for::<T>();
    let mut schema = serde_json::to_value(schema).unwrap_or(Value::Null);
    if !option_null {
        drop_null_of_optional(&mut schema);
    }
    schema
}

/// Removes `null` from the `type` of every optional top-level property.
fn drop_null_of_optional(schema: &mut Value) {
    let required: Vec<Value> = schema
        .get("required")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    for (name, prop) in props.iter_mut() {
        if required.contains(&json!(name)) {
            continue;
        }
        if let Some(Value::Array(types)) = prop.get("type") {
            let kept: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
            let new = match kept.as_slice() {
                [one] => one.clone(),
                _ => Value::Array(kept),
            };
            prop["type"] = new;
        }
    }
}

/// Adds the `type` tag (a constant) as the first required property, as serde's internally
/// tagged representation puts it on the wire.
fn tagged(mut schema: Value, tag: &str, description: &str) -> Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("title".into(), json!(tag));
        obj.insert("description".into(), json!(description));
        let props = obj
            .entry("properties")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut with_type = Map::new();
        with_type.insert("type".into(), json!({ "type": "string", "const": tag }));
        with_type.extend(props);
        obj.insert("properties".into(), Value::Object(with_type));
        let mut required = vec![json!("type")];
        if let Some(Value::Array(r)) = obj.get("required") {
            required.extend(r.iter().cloned());
        }
        obj.insert("required".into(), Value::Array(required));
    }
    schema
}

fn titled(mut schema: Value, title: &str, description: &str) -> Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("title".into(), json!(title));
        obj.insert("description".into(), json!(description));
    }
    schema
}

/// Headers of every message on `amr.sensor.<deviceId>.<sessionId>` (NATS header values are
/// strings).
fn sensor_headers() -> Value {
    let digits = json!({ "type": "string", "pattern": "^[0-9]+$" });
    let props = [
        (
            headers::DEVICE_ID,
            json!({ "type": "string", "pattern": DEVICE_ID_PATTERN, "description": "The device that sent the message." }),
            true,
        ),
        (
            headers::SESSION_ID,
            json!({ "type": "string", "pattern": SESSION_ID_PATTERN, "description": "The session the message belongs to." }),
            true,
        ),
        (
            headers::RECEIVED_AT,
            with_description(
                digits.clone(),
                "Gateway receive time, Unix epoch milliseconds.",
            ),
            true,
        ),
        (
            headers::GATEWAY,
            json!({ "type": "string", "description": "Id of the gateway replica that accepted the message." }),
            true,
        ),
        (
            headers::MESSAGE_TYPE,
            json!({ "type": "string", "enum": [types::SENSOR_DATA, types::SENSOR_BATCH], "description": "The client message type of the payload." }),
            true,
        ),
        (
            headers::DATA_COUNT,
            with_description(
                digits.clone(),
                "The session's running sample count including this message.",
            ),
            true,
        ),
        (
            headers::TRACEPARENT,
            json!({ "type": "string", "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$", "description": "W3C trace context of the message's path through the gateway." }),
            true,
        ),
        (
            headers::SEQ,
            with_description(digits, "The client's seq, when it sent one."),
            false,
        ),
        (
            headers::NATS_MSG_ID,
            json!({ "type": "string", "pattern": "^session_[0-9a-fA-F]{32}:[0-9]+$", "description": "JetStream de-duplication id `<sessionId>:<seq>`, when the client sent seq." }),
            false,
        ),
    ];
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (name, schema, is_required) in props {
        properties.insert(name.to_owned(), schema);
        if is_required {
            required.push(json!(name));
        }
    }
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "SensorHeaders",
        "description": "NATS headers of every message on amr.sensor.<deviceId>.<sessionId>; the payload is the client's sensor_data or sensor_batch JSON, verbatim.",
        "type": "object",
        "properties": properties,
        "required": required,
    })
}

fn with_description(mut schema: Value, description: &str) -> Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("description".into(), json!(description));
    }
    schema
}

fn file(path: &str, schema: Value) -> SchemaFile {
    SchemaFile {
        path: path.to_owned(),
        schema,
    }
}

/// Every schema of the contract, in a stable order.
pub fn all() -> Vec<SchemaFile> {
    use server_types as s;
    vec![
        // Client -> server (WebSocket).
        file(
            "client/device_register.json",
            tagged(
                generate::<DeviceRegister>(),
                types::DEVICE_REGISTER,
                "Binds one deviceId to the connection; answered with device_registered.",
            ),
        ),
        file(
            "client/session_start.json",
            tagged(
                generate::<SessionStart>(),
                types::SESSION_START,
                "Starts a session for the registered device; answered with session_created.",
            ),
        ),
        file(
            "client/session_end.json",
            tagged(
                generate::<SessionEnd>(),
                types::SESSION_END,
                "Ends a session (idempotent); answered with session_ended.",
            ),
        ),
        file(
            "client/sensor_data.json",
            tagged(
                generate::<SensorData>(),
                types::SENSOR_DATA,
                "One sensor sample for the active session; with seq it is acknowledged.",
            ),
        ),
        file(
            "client/sensor_batch.json",
            tagged(
                generate::<SensorBatch>(),
                types::SENSOR_BATCH,
                "Many sensor samples in one message; with seq it is acknowledged.",
            ),
        ),
        file(
            "client/ping.json",
            tagged(
                generate::<Ping>(),
                types::PING,
                "Application-level ping; answered with pong.",
            ),
        ),
        // Server -> client (WebSocket).
        file(
            "server/device_registered.json",
            tagged(
                generate_skipping_none::<DeviceRegistered>(),
                s::DEVICE_REGISTERED,
                "Answer to device_register. sessionId only for legacy (v1.0) clients: a provisional session.",
            ),
        ),
        file(
            "server/session_created.json",
            tagged(
                generate_skipping_none::<SessionCreated>(),
                s::SESSION_CREATED,
                "A new active session; replacedSessionId when it ended the previous one (replace policy).",
            ),
        ),
        file(
            "server/session_ended.json",
            tagged(
                generate_skipping_none::<SessionEnded>(),
                s::SESSION_ENDED,
                "A session of this connection ended (asked for, replaced, idle, ...), with its exact dataCount.",
            ),
        ),
        file(
            "server/ack.json",
            tagged(
                generate_skipping_none::<Ack>(),
                s::ACK,
                "Every seq message of the session up to seq is durably stored (acks are coalesced).",
            ),
        ),
        file(
            "server/pong.json",
            tagged(generate_skipping_none::<Pong>(), s::PONG, "Answer to ping; timestamp is the server's clock."),
        ),
        file(
            "server/error.json",
            tagged(
                generate_skipping_none::<ErrorMessage>(),
                s::ERROR,
                "A refused message. errorCode is the contract, message is for humans; ref is the type of the message that caused it; count is set on coalesced errors.",
            ),
        ),
        // Downstream (NATS).
        file("nats/sensor_headers.json", sensor_headers()),
        file(
            "events/session_created.json",
            titled(
                generate_skipping_none::<SessionCreatedEvent>(),
                "SessionCreatedEvent",
                "Published once per session on amr.session.<deviceId>.created.",
            ),
        ),
        file(
            "events/session_ended.json",
            titled(
                generate_skipping_none::<SessionEndedEvent>(),
                "SessionEndedEvent",
                "Published once per session on amr.session.<deviceId>.ended, with the exact dataCount.",
            ),
        ),
        // Codes.
        file(
            "codes/error_code.json",
            titled(
                generate::<ErrorCode>(),
                "ErrorCode",
                "Every errorCode the server may send.",
            ),
        ),
        file(
            "codes/end_reason.json",
            titled(
                generate::<EndReason>(),
                "EndReason",
                "Why a session ended.",
            ),
        ),
        // HTTP (session records).
        file(
            "http/session_record.json",
            titled(
                generate::<SessionRecord>(),
                "SessionRecord",
                "One session as GET /api/sessions/<sessionId> serves it.",
            ),
        ),
        file(
            "http/session_page.json",
            titled(
                generate::<SessionPage>(),
                "SessionPage",
                "GET /api/sessions response: newest first; nextCursor while more records exist.",
            ),
        ),
    ]
}

/// The committed text of a schema: pretty JSON with a final newline.
pub fn to_text(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
    text.push('\n');
    text
}
