//! NATS header names on the sensor messages downstream reads (protocol.md section 8).

pub const DEVICE_ID: &str = "Amr-Device-Id";
pub const SESSION_ID: &str = "Amr-Session-Id";
/// Gateway receive time, Unix ms.
pub const RECEIVED_AT: &str = "Amr-Received-At";
/// Id of the gateway replica that accepted the message.
pub const GATEWAY: &str = "Amr-Gateway";
/// The client's `seq`, when it sent one.
pub const SEQ: &str = "Amr-Seq";
/// The session's running sample count including this message: the last message of a
/// session's subject tells its exact dataCount even when its gateway died.
pub const DATA_COUNT: &str = "Amr-Data-Count";
/// `sensor_data` or `sensor_batch`.
pub const MESSAGE_TYPE: &str = "Amr-Message-Type";
/// JetStream de-duplication id: `<sessionId>:<seq>` on sensor data,
/// `<sessionId>:created|ended` on lifecycle events.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// `Nats-Msg-Id` of a sensor message that carried `seq`.
pub fn sensor_msg_id(session_id: &str, seq: u64) -> String {
    format!("{session_id}:{seq}")
}

/// `Nats-Msg-Id` of a lifecycle event (`created` or `ended`).
pub fn lifecycle_msg_id(session_id: &str, event: &str) -> String {
    format!("{session_id}:{event}")
}
