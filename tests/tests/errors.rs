//! Every reachable error code, with the precedence of protocol.md section 10 and `ref` = the
//! type of the offending message; the connection stays open except for MESSAGE_TOO_LARGE
//! (close 1009). Every test runs in both modes.

use amr_proto::client::types;
use amr_proto::{EndReason, ErrorCode};
use amr_tests::checks::assert_error;
use amr_tests::{both_modes, msg, unique_device, Mode, Stack};
use serde_json::json;

/// Not JSON, not an object, no type, type not a string, a field of the wrong type, a binary
/// frame: INVALID_MESSAGE, and the connection stays open (a ping still gets a pong).
async fn invalid_messages_keep_the_connection_open(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let dev = unique_device("AMR");
    let mut c = stack.client(0).await;
    let no_ref: [&str; 7] = [
        "not json",
        "{\"type\":\"ping\"",
        "[1,2]",
        "\"device_register\"",
        "{\"deviceId\":\"A\"}",
        "{\"type\":5}",
        "{\"type\":null,\"deviceId\":\"A\"}",
    ];
    for text in no_ref {
        c.send_text(text).await;
        let e = c.recv_error().await;
        assert_error(&e, ErrorCode::InvalidMessage, None);
        c.ping().await;
    }
    // Wrong field types on known types: ref names the type. Unregistered connection: the
    // malformed message wins over NOT_REGISTERED.
    let wrong_fields = [
        (
            json!({"type": types::SESSION_START, "deviceId": 123}),
            types::SESSION_START,
        ),
        (
            json!({"type": types::DEVICE_REGISTER, "deviceId": ["A"]}),
            types::DEVICE_REGISTER,
        ),
        (
            json!({"type": types::DEVICE_REGISTER}),
            types::DEVICE_REGISTER,
        ),
        (
            json!({"type": types::DEVICE_REGISTER, "deviceId": dev, "timestamp": "now"}),
            types::DEVICE_REGISTER,
        ),
        (
            json!({"type": types::SENSOR_DATA, "deviceId": dev, "data": 5}),
            types::SENSOR_DATA,
        ),
        (
            json!({"type": types::SENSOR_BATCH, "deviceId": dev, "samples": {}}),
            types::SENSOR_BATCH,
        ),
        (
            json!({"type": types::SESSION_END, "deviceId": dev, "sessionId": 7}),
            types::SESSION_END,
        ),
    ];
    for (v, kind) in &wrong_fields {
        c.send_json(v).await;
        let e = c.recv_error().await;
        assert_error(&e, ErrorCode::InvalidMessage, Some(kind));
        c.ping().await;
    }
    c.send_binary(b"{\"type\":\"ping\"}".to_vec()).await;
    let e = c.recv_error().await;
    assert_error(&e, ErrorCode::InvalidMessage, None);
    c.ping().await;

    // The same on a registered connection with an active session; the session is unharmed.
    c.register(&dev, msg::CLIENT_VERSION).await;
    let sid = c.start(&dev).await.session_id;
    c.send_text("{oops").await;
    assert_error(&c.recv_error().await, ErrorCode::InvalidMessage, None);
    c.send_json(
        &json!({"type": types::SENSOR_DATA, "deviceId": dev, "sessionId": sid, "data": [1]}),
    )
    .await;
    assert_error(
        &c.recv_error().await,
        ErrorCode::InvalidMessage,
        Some(types::SENSOR_DATA),
    );
    c.send_binary(vec![0, 1, 2]).await;
    assert_error(&c.recv_error().await, ErrorCode::InvalidMessage, None);
    c.send_data(&dev, &sid, 1).await;
    let e = c.end(&dev, &sid).await;
    assert_eq!(e.data_count, 1, "malformed messages are not counted");
}
both_modes!(invalid_messages_keep_the_connection_open);

/// An unknown type: UNKNOWN_TYPE, even when other fields are malformed too.
async fn unknown_type(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let mut c = stack.client(0).await;
    for v in [
        json!({"type": "hello"}),
        json!({"type": "nope", "deviceId": 123}),
        json!({"type": "SESSION_START", "deviceId": "A"}),
    ] {
        c.send_json(&v).await;
        assert_error(&c.recv_error().await, ErrorCode::UnknownType, None);
        c.ping().await;
    }
}
both_modes!(unknown_type);

/// Bad deviceId syntax: INVALID_DEVICE_ID; it wins over NOT_REGISTERED, and loses to a field of
/// the wrong type.
async fn invalid_device_ids(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let mut c = stack.client(0).await;
    let long = "x".repeat(65);
    for bad in [
        "a.b",
        "*",
        ">",
        "a b",
        "a\nb",
        "",
        "amr.sensor.>",
        long.as_str(),
    ] {
        c.send_json(&msg::register(bad, Some(msg::CLIENT_VERSION)))
            .await;
        let e = c.recv_error().await;
        assert_error(&e, ErrorCode::InvalidDeviceId, Some(types::DEVICE_REGISTER));
        // Unregistered + bad id on a session message: the id's syntax wins.
        c.send_json(&msg::session_start(bad)).await;
        assert_error(
            &c.recv_error().await,
            ErrorCode::InvalidDeviceId,
            Some(types::SESSION_START),
        );
    }
    // A wrong field type wins over a bad deviceId.
    c.send_json(&json!({"type": types::SESSION_START, "deviceId": "a.b", "timestamp": "x"}))
        .await;
    assert_error(
        &c.recv_error().await,
        ErrorCode::InvalidMessage,
        Some(types::SESSION_START),
    );
    c.ping().await;
    // The longest valid id is accepted.
    let max = "D".repeat(64);
    c.register(&max, msg::CLIENT_VERSION).await;
    let s = c.start(&max).await;
    c.end(&max, &s.session_id).await;
}
both_modes!(invalid_device_ids);

/// Session and data messages before device_register: NOT_REGISTERED (ref = their type).
async fn not_registered(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let dev = unique_device("AMR");
    let mut c = stack.client(0).await;
    let sid = amr_proto::ids::new_session_id();
    let cases = [
        (msg::session_start(&dev), types::SESSION_START),
        (msg::session_end(&dev, Some(&sid)), types::SESSION_END),
        (msg::session_end(&dev, None), types::SESSION_END),
        (
            msg::sensor_data(&dev, Some(&sid), None, msg::sample(1)),
            types::SENSOR_DATA,
        ),
        (
            msg::sensor_data(&dev, None, None, msg::sample(1)),
            types::SENSOR_DATA,
        ),
        (
            msg::sensor_batch(&dev, Some(&sid), None, 2),
            types::SENSOR_BATCH,
        ),
    ];
    for (v, kind) in &cases {
        c.send_json(v).await;
        assert_error(&c.recv_error().await, ErrorCode::NotRegistered, Some(kind));
    }
    // A ping needs no registration.
    c.ping().await;
    // Nothing was created for the device.
    assert!(stack.list_sessions(&dev, None).await.is_empty());
    c.register(&dev, msg::CLIENT_VERSION).await;
    c.start(&dev).await;
}
both_modes!(not_registered);

/// One deviceId per connection: another one in device_register or in a later message gets
/// DEVICE_MISMATCH (before any session rule); repeating the same register is harmless.
async fn device_mismatch(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let (dev, other) = (unique_device("MINE"), unique_device("OTHER"));
    let mut c = stack.registered_client(0, &dev).await;

    c.send_json(&msg::register(&other, Some(msg::CLIENT_VERSION)))
        .await;
    assert_error(
        &c.recv_error().await,
        ErrorCode::DeviceMismatch,
        Some(types::DEVICE_REGISTER),
    );
    // Repeating the same deviceId is answered again.
    c.register(&dev, msg::CLIENT_VERSION).await;

    // Without a session: mismatch wins over NO_ACTIVE_SESSION / SESSION_NOT_FOUND.
    for (v, kind) in [
        (msg::session_start(&other), types::SESSION_START),
        (msg::session_end(&other, None), types::SESSION_END),
        (
            msg::sensor_data(&other, None, None, msg::sample(1)),
            types::SENSOR_DATA,
        ),
        (
            msg::sensor_batch(&other, None, None, 2),
            types::SENSOR_BATCH,
        ),
    ] {
        c.send_json(&v).await;
        assert_error(&c.recv_error().await, ErrorCode::DeviceMismatch, Some(kind));
    }
    // With a session: data naming it under another deviceId is refused and not stored.
    let sid = c.start(&dev).await.session_id;
    c.send_json(&msg::sensor_data(&other, Some(&sid), None, msg::sample(1)))
        .await;
    assert_error(
        &c.recv_error().await,
        ErrorCode::DeviceMismatch,
        Some(types::SENSOR_DATA),
    );
    c.send_json(&msg::session_end(&other, Some(&sid))).await;
    assert_error(
        &c.recv_error().await,
        ErrorCode::DeviceMismatch,
        Some(types::SESSION_END),
    );
    c.send_data_acked(&dev, &sid, 1, 1).await;
    let e = c.end(&dev, &sid).await;
    assert_eq!((e.reason, e.data_count), (EndReason::ClientRequest, 1));
    assert_eq!(stack.stored_count(&dev, &sid).await, 1);
    assert_eq!(stack.stored_count(&other, &sid).await, 0);
    assert!(stack.list_sessions(&other, None).await.is_empty());
}
both_modes!(device_mismatch);

fn padded_sensor_data(dev: &str, sid: &str, total: usize) -> String {
    let base = msg::sensor_data(dev, Some(sid), None, json!({"pad": ""})).to_string();
    let pad = "p".repeat(total.saturating_sub(base.len()));
    let text = msg::sensor_data(dev, Some(sid), None, json!({ "pad": pad })).to_string();
    assert_eq!(text.len(), total.max(base.len()));
    text
}

/// A message over AMR_MAX_FRAME_BYTES gets MESSAGE_TOO_LARGE and a close with code 1009; one
/// under it is accepted.
async fn message_too_large_closes_with_1009(mode: Mode) {
    let stack = Stack::builder()
        .mode(mode)
        .gateway_env("AMR_MAX_FRAME_BYTES", "4096")
        .start()
        .await;
    let dev = unique_device("AMR");
    let mut c = stack.registered_client(0, &dev).await;
    let sid = c.start(&dev).await.session_id;
    let ok = padded_sensor_data(&dev, &sid, 3000);
    c.send_text(&ok).await;
    let e = c.end(&dev, &sid).await;
    assert_eq!(e.data_count, 1, "a message under the limit is accepted");

    let sid = c.start(&dev).await.session_id;
    c.send_text(&padded_sensor_data(&dev, &sid, 5000)).await;
    let (close, errors) = c.expect_close().await;
    assert_eq!(
        errors.len(),
        1,
        "exactly one error before the close: {errors:?}"
    );
    assert_eq!(
        errors[0].error_code,
        ErrorCode::MessageTooLarge,
        "{errors:?}"
    );
    let close = close.expect("a close frame, not a dropped connection");
    assert_eq!(u16::from(close.code), 1009, "{close:?}");
    assert_eq!(
        stack.stored_count(&dev, &sid).await,
        0,
        "the oversized message is not forwarded"
    );
}
both_modes!(message_too_large_closes_with_1009);

/// The limit applies to a whole message: fragments each under it but together over it get
/// MESSAGE_TOO_LARGE and 1009; a fragmented message under it is reassembled and accepted.
async fn fragmented_message_over_the_limit_closes_with_1009(mode: Mode) {
    let stack = Stack::builder()
        .mode(mode)
        .gateway_env("AMR_MAX_FRAME_BYTES", "4096")
        .start()
        .await;
    let dev = unique_device("AMR");
    let mut c = stack.registered_client(0, &dev).await;
    let sid = c.start(&dev).await.session_id;
    let small = padded_sensor_data(&dev, &sid, 3000);
    c.send_fragmented_text(&small, 3).await;
    let e = c.end(&dev, &sid).await;
    assert_eq!(
        e.data_count, 1,
        "fragments under the limit are one accepted message"
    );
    let stored = stack.stored_payloads(&dev, &sid).await;
    assert_eq!(stored, vec![small], "reassembled verbatim");

    let sid = c.start(&dev).await.session_id;
    // 3 frames of ~2000 bytes: each under 4096, 6000 in total.
    c.send_fragmented_text(&padded_sensor_data(&dev, &sid, 6000), 3)
        .await;
    let (close, errors) = c.expect_close().await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].error_code,
        ErrorCode::MessageTooLarge,
        "{errors:?}"
    );
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), 1009, "{close:?}");
}
both_modes!(fragmented_message_over_the_limit_closes_with_1009);
