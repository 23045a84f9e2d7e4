//! Legacy v1.0 clients: one session per connection through a provisional sessionId in
//! device_registered (protocol.md section 6 and section 10). Every test runs in both modes.

use amr_proto::events::SessionState;
use amr_proto::server::ServerMessage;
use amr_proto::{ids, EndReason};
use amr_tests::wait::absence_window;
use amr_tests::{both_modes, msg, unique_device, Mode, Stack};
use std::time::Duration;

/// No clientVersion: device_registered carries a provisional sessionId; data with it (or with
/// no sessionId) lands under that id; closing ends it `disconnected` with the exact dataCount.
async fn legacy_client_session_lives_with_its_connection(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let events = stack.events().await;
    let dev = unique_device("OLD");
    let mut c = stack.client(0).await;
    let reg = c.register_legacy(&dev).await;
    let p = reg
        .session_id
        .expect("a legacy client gets a provisional sessionId in device_registered");
    assert!(ids::is_valid_session_id(&p), "{p}");

    let mut texts = c.send_data(&dev, &p, 3).await;
    texts.push(
        c.send_json(&msg::sensor_data(&dev, None, None, msg::sample(7)))
            .await,
    );
    texts.push(
        c.send_json(&msg::sensor_data(&dev, None, None, msg::sample(8)))
            .await,
    );
    texts.push(
        c.send_json(&msg::sensor_batch(&dev, Some(&p), None, 3))
            .await,
    );
    // 3 + 2 + 3 samples.
    assert_eq!(stack.wait_stored_count(&dev, &p, 6).await, 6);
    let rec = stack
        .wait_session(&p, "active", |r| r.state == SessionState::Active)
        .await;
    assert_eq!(rec.device_id, dev);
    c.close().await;

    let ended = events.wait_ended(&p).await;
    assert_eq!(ended.reason, EndReason::Disconnected);
    assert_eq!(ended.data_count, 8, "exact dataCount of the legacy session");
    let rec = stack
        .wait_session(&p, "ended", |r| r.state == SessionState::Ended)
        .await;
    assert_eq!(
        (rec.reason, rec.data_count),
        (Some(EndReason::Disconnected), 8)
    );
    assert_eq!(events.created(&p).len(), 1);
    let payloads = stack.stored_payloads(&dev, &p).await;
    let expected: Vec<String> = texts.iter().map(|t| stack.expected_payload(t)).collect();
    assert_eq!(payloads, expected);
}
both_modes!(legacy_client_session_lives_with_its_connection);

/// A clientVersion below 1.1.0 is a legacy client too.
async fn client_version_1_0_is_legacy(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let dev = unique_device("OLD");
    let mut c = stack.client(0).await;
    let reg = c.register(&dev, "1.0.0").await;
    assert!(
        reg.session_id
            .as_deref()
            .is_some_and(ids::is_valid_session_id),
        "{reg:?}"
    );
}
both_modes!(client_version_1_0_is_legacy);

/// A legacy connection that sends session_start instead gets a NEW id; the provisional id
/// never appears anywhere (no record, no event, no data).
async fn session_start_on_a_legacy_connection_drops_the_provisional_id(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let events = stack.events().await;
    let dev = unique_device("OLD");
    let mut c = stack.client(0).await;
    let p = c
        .register_legacy(&dev)
        .await
        .session_id
        .expect("provisional id");
    let created = c.start(&dev).await;
    let s = created.session_id.clone();
    assert_ne!(s, p, "session_start issues a new id");
    assert_eq!(
        created.replaced_session_id, None,
        "the provisional id was never a session: nothing was replaced"
    );
    c.send_data(&dev, &s, 2).await;
    // Data without sessionId now belongs to the started session.
    c.send_json(&msg::sensor_data(&dev, None, None, msg::sample(3)))
        .await;
    let e = c.end(&dev, &s).await;
    assert_eq!(e.data_count, 3);
    c.close().await;
    events.wait_ended(&s).await;
    absence_window(Duration::from_millis(700)).await;

    assert_eq!(
        stack.get_session(&p).await,
        None,
        "no record of the provisional id"
    );
    let all = stack.list_sessions(&dev, None).await;
    assert_eq!(
        all.iter()
            .map(|r| r.session_id.as_str())
            .collect::<Vec<_>>(),
        vec![s.as_str()]
    );
    assert!(
        events.for_session(&p).is_empty(),
        "{:?}",
        events.for_session(&p)
    );
    assert_eq!(stack.stored_count(&dev, &p).await, 0);
    let ended = events.ended(&s);
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].1.reason, EndReason::ClientRequest);
}
both_modes!(session_start_on_a_legacy_connection_drops_the_provisional_id);

/// A legacy connection that closes without ever sending data leaves no session at all.
async fn legacy_connection_closed_without_data_leaves_no_session(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let events = stack.events().await;
    let dev = unique_device("OLD");
    let mut c = stack.client(0).await;
    let p = c
        .register_legacy(&dev)
        .await
        .session_id
        .expect("provisional id");
    c.ping().await;
    c.close().await;
    // Another legacy connection that drops TCP without a close frame.
    let mut c2 = stack.client(0).await;
    let p2 = c2
        .register_legacy(&dev)
        .await
        .session_id
        .expect("provisional id");
    assert_ne!(p, p2);
    c2.abort();

    // A later session of the same device, as an ordering hint for anything pending.
    let mut n = stack.registered_client(0, &dev).await;
    let s = n.start(&dev).await.session_id;
    n.end(&dev, &s).await;
    events.wait_ended(&s).await;
    absence_window(Duration::from_millis(700)).await;

    for id in [&p, &p2] {
        assert_eq!(stack.get_session(id).await, None, "no record of {id}");
        assert!(events.for_session(id).is_empty(), "no event of {id}");
    }
    let all = stack.list_sessions(&dev, None).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].session_id, s);
    let pending = n.take_pending();
    assert!(
        !pending
            .iter()
            .any(|m| matches!(m, ServerMessage::SessionEnded(_))),
        "{pending:?}"
    );
}
both_modes!(legacy_connection_closed_without_data_leaves_no_session);
