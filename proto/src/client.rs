//! Messages from a client (the AMR app) to the gateway, and their validation.
//!
//! Parsing follows the precedence of protocol.md section 10: not JSON / not an object /
//! `type` missing -> `INVALID_MESSAGE`; unknown `type` -> `UNKNOWN_TYPE`; a field of the wrong
//! JSON type -> `INVALID_MESSAGE`; bad deviceId syntax -> `INVALID_DEVICE_ID`. Registration and
//! session rules come after, in the gateway.
//!
//! Sensor payloads are never copied: the parser only looks at the envelope fields, and the
//! gateway forwards the client's original bytes.

use crate::codes::ErrorCode;
use crate::ids;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Wire names of the client message types.
pub mod types {
    pub const DEVICE_REGISTER: &str = "device_register";
    pub const SESSION_START: &str = "session_start";
    pub const SESSION_END: &str = "session_end";
    pub const SENSOR_DATA: &str = "sensor_data";
    pub const SENSOR_BATCH: &str = "sensor_batch";
    pub const PING: &str = "ping";
}

/// Which of the two sensor message shapes a [`SensorMessage`] came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SensorKind {
    Data,
    Batch,
}

impl SensorKind {
    pub fn wire_type(self) -> &'static str {
        match self {
            SensorKind::Data => types::SENSOR_DATA,
            SensorKind::Batch => types::SENSOR_BATCH,
        }
    }
}

/// `sensor_data` or `sensor_batch`, reduced to what routing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensorMessage<'a> {
    pub kind: SensorKind,
    pub device_id: Option<Cow<'a, str>>,
    /// Absent or `null` both mean "the connection's current session".
    pub session_id: Option<Cow<'a, str>>,
    pub seq: Option<u64>,
    /// Samples carried: 1 for `sensor_data`, `samples.len()` for `sensor_batch`.
    pub samples: u64,
}

/// A validated client message. `device_id` is `None` when the client left it out; the gateway
/// then uses the connection's registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage<'a> {
    DeviceRegister {
        device_id: Cow<'a, str>,
        client_version: Option<Cow<'a, str>>,
        token: Option<Cow<'a, str>>,
    },
    SessionStart {
        device_id: Option<Cow<'a, str>>,
        request_id: Option<Cow<'a, str>>,
    },
    SessionEnd {
        device_id: Option<Cow<'a, str>>,
        session_id: Option<Cow<'a, str>>,
    },
    Sensor(SensorMessage<'a>),
    Ping,
}

impl ClientMessage<'_> {
    pub fn wire_type(&self) -> &'static str {
        match self {
            ClientMessage::DeviceRegister { .. } => types::DEVICE_REGISTER,
            ClientMessage::SessionStart { .. } => types::SESSION_START,
            ClientMessage::SessionEnd { .. } => types::SESSION_END,
            ClientMessage::Sensor(s) => s.kind.wire_type(),
            ClientMessage::Ping => types::PING,
        }
    }

    pub fn device_id(&self) -> Option<&str> {
        match self {
            ClientMessage::DeviceRegister { device_id, .. } => Some(device_id),
            ClientMessage::SessionStart { device_id, .. }
            | ClientMessage::SessionEnd { device_id, .. } => device_id.as_deref(),
            ClientMessage::Sensor(s) => s.device_id.as_deref(),
            ClientMessage::Ping => None,
        }
    }
}

/// Why a frame was refused, ready to become an `error` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub code: ErrorCode,
    pub message: String,
    /// The `type` of the offending message, when it could be read (the error's `ref`).
    pub ref_type: Option<String>,
    /// The deviceId the message carried, when it could be read.
    pub device_id: Option<String>,
    pub request_id: Option<String>,
}

impl ParseError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ParseError {
            code,
            message: message.into(),
            ref_type: None,
            device_id: None,
            request_id: None,
        }
    }
}

/// Every field any client message may carry, each kept raw so that reading the envelope never
/// fails on a field's type (the precedence rules need `type` first) and never copies `data`.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(rename = "deviceId", borrow)]
    device_id: Option<&'a RawValue>,
    #[serde(rename = "sessionId", borrow)]
    session_id: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    samples: Option<&'a RawValue>,
    #[serde(borrow)]
    seq: Option<&'a RawValue>,
    #[serde(rename = "requestId", borrow)]
    request_id: Option<&'a RawValue>,
    #[serde(rename = "clientVersion", borrow)]
    client_version: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<&'a RawValue>,
}

/// A field of the wrong JSON type.
struct WrongType(&'static str, &'static str);

fn string_field<'a>(
    raw: Option<&'a RawValue>,
    name: &'static str,
) -> Result<Option<Cow<'a, str>>, WrongType> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.get();
    if let Ok(s) = serde_json::from_str::<&'a str>(text) {
        return Ok(Some(Cow::Borrowed(s)));
    }
    serde_json::from_str::<String>(text)
        .map(|s| Some(Cow::Owned(s)))
        .map_err(|_| WrongType(name, "a string"))
}

fn integer_field(raw: Option<&RawValue>, name: &'static str) -> Result<Option<i64>, WrongType> {
    let Some(raw) = raw else { return Ok(None) };
    serde_json::from_str::<i64>(raw.get())
        .map(Some)
        .map_err(|_| WrongType(name, "an integer"))
}

fn is_object(raw: &RawValue) -> bool {
    raw.get().starts_with('{')
}

/// Parses one text frame. The returned message borrows from `text`.
pub fn parse(text: &str) -> Result<ClientMessage<'_>, ParseError> {
    let env: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
        ParseError::new(
            ErrorCode::InvalidMessage,
            format!("frame is not a JSON object: {e}"),
        )
    })?;
    let kind = match env.kind {
        Some(raw) => serde_json::from_str::<Cow<'_, str>>(raw.get()).map_err(|_| {
            ParseError::new(ErrorCode::InvalidMessage, "field 'type' must be a string")
        })?,
        None => {
            return Err(ParseError::new(
                ErrorCode::InvalidMessage,
                "field 'type' is missing",
            ))
        }
    };
    let kind: &'static str = match kind.as_ref() {
        types::DEVICE_REGISTER => types::DEVICE_REGISTER,
        types::SESSION_START => types::SESSION_START,
        types::SESSION_END => types::SESSION_END,
        types::SENSOR_DATA => types::SENSOR_DATA,
        types::SENSOR_BATCH => types::SENSOR_BATCH,
        types::PING => types::PING,
        other => {
            let mut shown: String = other.chars().take(64).collect();
            if shown.len() < other.len() {
                shown.push('…');
            }
            return Err(ParseError::new(
                ErrorCode::UnknownType,
                format!("unknown message type '{shown}'"),
            ));
        }
    };
    let with_ref = |mut e: ParseError| {
        e.ref_type = Some(kind.to_owned());
        e
    };
    let msg = typed(kind, &env).map_err(|WrongType(field, expected)| {
        with_ref(ParseError::new(
            ErrorCode::InvalidMessage,
            format!("field '{field}' must be {expected}"),
        ))
    })?;
    if let Some(device_id) = msg.device_id() {
        if !ids::is_valid_device_id(device_id) {
            let mut e = with_ref(ParseError::new(
                ErrorCode::InvalidDeviceId,
                "deviceId must be 1-64 characters of [A-Za-z0-9_-]",
            ));
            e.request_id = request_id_of(&msg);
            return Err(e);
        }
    }
    if let ClientMessage::SessionStart {
        request_id: Some(r),
        device_id,
    } = &msg
    {
        if !ids::is_valid_request_id(r) {
            let mut e = with_ref(ParseError::new(
                ErrorCode::InvalidMessage,
                "requestId must be 1-128 characters of [A-Za-z0-9_.:-]",
            ));
            e.device_id = device_id.as_deref().map(str::to_owned);
            return Err(e);
        }
    }
    Ok(msg)
}

fn request_id_of(msg: &ClientMessage<'_>) -> Option<String> {
    match msg {
        ClientMessage::SessionStart { request_id, .. } => request_id.as_deref().map(str::to_owned),
        _ => None,
    }
}

fn typed<'a>(kind: &'static str, env: &Envelope<'a>) -> Result<ClientMessage<'a>, WrongType> {
    // `timestamp` is informative only, but a wrong type is still a malformed message.
    integer_field(env.timestamp, "timestamp")?;
    let device_id = string_field(env.device_id, "deviceId")?;
    match kind {
        types::DEVICE_REGISTER => Ok(ClientMessage::DeviceRegister {
            device_id: device_id.ok_or(WrongType("deviceId", "a string (it is required)"))?,
            client_version: string_field(env.client_version, "clientVersion")?,
            token: string_field(env.token, "token")?,
        }),
        types::SESSION_START => Ok(ClientMessage::SessionStart {
            device_id,
            request_id: string_field(env.request_id, "requestId")?,
        }),
        types::SESSION_END => Ok(ClientMessage::SessionEnd {
            device_id,
            session_id: string_field(env.session_id, "sessionId")?,
        }),
        types::SENSOR_DATA | types::SENSOR_BATCH => {
            let session_id = string_field(env.session_id, "sessionId")?;
            let seq = match env.seq {
                None => None,
                Some(raw) => match serde_json::from_str::<u64>(raw.get()) {
                    Ok(n) if n >= 1 => Some(n),
                    _ => return Err(WrongType("seq", "a positive integer")),
                },
            };
            let (sensor_kind, samples) = if kind == types::SENSOR_DATA {
                match env.data {
                    Some(d) if is_object(d) => (SensorKind::Data, 1),
                    _ => return Err(WrongType("data", "a JSON object")),
                }
            } else {
                let list: Vec<&RawValue> = env
                    .samples
                    .and_then(|raw| serde_json::from_str(raw.get()).ok())
                    .ok_or(WrongType("samples", "an array of sample objects"))?;
                if list.is_empty() || !list.iter().all(|s| is_object(s)) {
                    return Err(WrongType("samples", "a non-empty array of sample objects"));
                }
                (SensorKind::Batch, list.len() as u64)
            };
            Ok(ClientMessage::Sensor(SensorMessage {
                kind: sensor_kind,
                device_id,
                session_id,
                seq,
                samples,
            }))
        }
        _ => Ok(ClientMessage::Ping),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        parse(text).expect_err(text).code
    }

    #[test]
    fn parses_the_client_teams_examples() {
        let m = parse(r#"{"type":"session_start","deviceId":"AMR_001","timestamp":1703123456789}"#)
            .unwrap();
        assert_eq!(
            m,
            ClientMessage::SessionStart {
                device_id: Some("AMR_001".into()),
                request_id: None
            }
        );
        let m = parse(r#"{"type":"session_end","deviceId":"AMR_001","sessionId":"session_abc123","timestamp":1703123456789}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::SessionEnd {
                device_id: Some("AMR_001".into()),
                session_id: Some("session_abc123".into())
            }
        );
    }

    #[test]
    fn sensor_messages_count_samples() {
        let m = parse(r#"{"type":"sensor_data","deviceId":"A","sessionId":null,"timestamp":1,"data":{"imu":[1,2,3]}}"#).unwrap();
        match m {
            ClientMessage::Sensor(s) => {
                assert_eq!(s.samples, 1);
                assert_eq!(s.session_id, None);
                assert_eq!(s.kind, SensorKind::Data);
            }
            other => panic!("{other:?}"),
        }
        let m = parse(r#"{"type":"sensor_batch","deviceId":"A","sessionId":"s","seq":7,"samples":[{"timestamp":1,"data":{}},{"timestamp":2,"data":{}}]}"#).unwrap();
        match m {
            ClientMessage::Sensor(s) => {
                assert_eq!(s.samples, 2);
                assert_eq!(s.seq, Some(7));
                assert_eq!(s.kind, SensorKind::Batch);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn precedence_of_errors() {
        assert_eq!(code("not json"), ErrorCode::InvalidMessage);
        assert_eq!(code("[1,2]"), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"deviceId":"A"}"#), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"type":5}"#), ErrorCode::InvalidMessage);
        assert_eq!(
            code(r#"{"type":"nope","deviceId":123}"#),
            ErrorCode::UnknownType
        );
        assert_eq!(
            code(r#"{"type":"session_start","deviceId":123}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code(r#"{"type":"session_start","deviceId":"a.b","timestamp":"x"}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code(r#"{"type":"session_start","deviceId":"a.b"}"#),
            ErrorCode::InvalidDeviceId
        );
        assert_eq!(
            code(r#"{"type":"sensor_data","deviceId":"A","data":5}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code(r#"{"type":"sensor_data","deviceId":"A","data":{},"seq":0}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code(r#"{"type":"sensor_batch","deviceId":"A","samples":[]}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code(r#"{"type":"device_register"}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code(r#"{"type":"session_start","deviceId":"A","requestId":"a b"}"#),
            ErrorCode::InvalidMessage
        );
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let m = parse(r#"{"type":"device_register","deviceId":"AMR\u005f001"}"#).unwrap();
        assert_eq!(m.device_id(), Some("AMR_001"));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!(
            r#"{{"type":"sensor_data","deviceId":"A","data":{}{}}}"#,
            "{\"a\":".repeat(100_000),
            "}".repeat(100_000)
        );
        assert_eq!(code(&deep), ErrorCode::InvalidMessage);
    }
}
