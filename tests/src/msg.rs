//! Client messages as the app sends them (JSON values), built from the contract's type names.
//! Field names are the wire's camelCase names of protocol.md; `timestamp` is the client's clock.

use amr_proto::client::types;
use amr_proto::now_ms;
use serde_json::{json, Value};

/// The session-aware app version the client team ships.
pub const CLIENT_VERSION: &str = "1.1.0";

/// `device_register`; `client_version: None` is a legacy (v1.0) client.
pub fn register(device: &str, client_version: Option<&str>) -> Value {
    let mut v = json!({
        "type": types::DEVICE_REGISTER,
        "deviceId": device,
        "timestamp": now_ms(),
    });
    if let Some(cv) = client_version {
        v["clientVersion"] = json!(cv);
    }
    v
}

pub fn session_start(device: &str) -> Value {
    json!({ "type": types::SESSION_START, "deviceId": device, "timestamp": now_ms() })
}

pub fn session_start_with_request(device: &str, request_id: &str) -> Value {
    json!({
        "type": types::SESSION_START,
        "deviceId": device,
        "timestamp": now_ms(),
        "requestId": request_id,
    })
}

/// `session_end`; `session: None` leaves `sessionId` out (ends the active session).
pub fn session_end(device: &str, session: Option<&str>) -> Value {
    let mut v = json!({ "type": types::SESSION_END, "deviceId": device, "timestamp": now_ms() });
    if let Some(s) = session {
        v["sessionId"] = json!(s);
    }
    v
}

/// `sensor_data`; `session: None` leaves `sessionId` out, `seq: None` leaves `seq` out.
pub fn sensor_data(device: &str, session: Option<&str>, seq: Option<u64>, data: Value) -> Value {
    let mut v = json!({
        "type": types::SENSOR_DATA,
        "deviceId": device,
        "timestamp": now_ms(),
        "data": data,
    });
    if let Some(s) = session {
        v["sessionId"] = json!(s);
    }
    if let Some(n) = seq {
        v["seq"] = json!(n);
    }
    v
}

/// `sensor_batch` of `samples` samples.
pub fn sensor_batch(
    device: &str,
    session: Option<&str>,
    seq: Option<u64>,
    samples: usize,
) -> Value {
    let t = now_ms();
    let list: Vec<Value> = (0..samples)
        .map(|i| json!({ "timestamp": t + i as i64, "data": { "vib": [i, i * 2, i * 3] } }))
        .collect();
    let mut v = json!({ "type": types::SENSOR_BATCH, "deviceId": device, "samples": list });
    if let Some(s) = session {
        v["sessionId"] = json!(s);
    }
    if let Some(n) = seq {
        v["seq"] = json!(n);
    }
    v
}

/// A typical IMU/battery sample.
pub fn sample(i: u64) -> Value {
    json!({ "imu": { "ax": 0.01 * i as f64, "ay": -0.5, "az": 9.81 }, "battery": 87, "i": i })
}

pub fn ping() -> Value {
    json!({ "type": types::PING, "timestamp": now_ms() })
}
