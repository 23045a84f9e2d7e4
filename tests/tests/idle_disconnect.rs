//! Ends the client did not ask for (protocol.md section 5): idle timeout, disconnect (close
//! frame or dropped TCP), and hand-over to another connection of the same device. Every test
//! runs in both modes.

use amr_proto::events::SessionState;
use amr_proto::server::ServerMessage;
use amr_proto::EndReason;
use amr_tests::wait::absence_window;
use amr_tests::{both_modes, msg, unique_device, Mode, Stack};
use std::time::Duration;

async fn idle_stack(mode: Mode) -> Stack {
    // Gateway and service must agree on the timeout (the gateway scales its activity reports).
    Stack::builder()
        .mode(mode)
        .env("AMR_SESSION_IDLE_TIMEOUT", "2s")
        .start()
        .await
}

/// No data for the idle timeout: session_ended `idle_timeout` is pushed to the still-connected
/// client; exactly one `ended` event; exact dataCount.
async fn idle_session_ends_and_the_client_is_told(mode: Mode) {
    let stack = idle_stack(mode).await;
    let events = stack.events().await;
    let dev = unique_device("IDLE");
    let mut c = stack.registered_client(0, &dev).await;

    // A session with no data at all.
    let s1 = c.start(&dev).await.session_id;
    let e1 = c.recv_ended().await;
    assert_eq!(e1.session_id, s1);
    assert_eq!((e1.reason, e1.data_count), (EndReason::IdleTimeout, 0));
    assert!(e1.started_at <= e1.ended_at);

    // A session whose data stopped.
    let s2 = c.start(&dev).await.session_id;
    c.send_data(&dev, &s2, 3).await;
    let e2 = c.recv_ended().await;
    assert_eq!(e2.session_id, s2);
    assert_eq!((e2.reason, e2.data_count), (EndReason::IdleTimeout, 3));

    for (s, count) in [(&s1, 0), (&s2, 3)] {
        let ev = events.wait_ended(s).await;
        assert_eq!((ev.reason, ev.data_count), (EndReason::IdleTimeout, count));
        let rec = stack.get_session(s).await.expect("record");
        assert_eq!(
            (rec.state, rec.reason, rec.data_count),
            (SessionState::Ended, Some(EndReason::IdleTimeout), count)
        );
    }
    absence_window(Duration::from_millis(700)).await;
    assert_eq!(events.ended(&s1).len(), 1, "exactly one ended event");
    assert_eq!(events.ended(&s2).len(), 1, "exactly one ended event");
    // Ending it again reports the idle end (idempotent end), the connection is fine.
    let again = c.end(&dev, &s1).await;
    assert_eq!(again.reason, EndReason::IdleTimeout);
    c.ping().await;
}
both_modes!(idle_session_ends_and_the_client_is_told);

/// Data every ~300 ms for ~6 s (three idle timeouts): the session is never ended for idleness.
async fn session_with_data_flowing_is_not_ended_for_idleness(mode: Mode) {
    let stack = idle_stack(mode).await;
    let events = stack.events().await;
    let dev = unique_device("BUSY");
    let mut c = stack.registered_client(0, &dev).await;
    let s = c.start(&dev).await.session_id;
    for i in 0..20u64 {
        c.send_json(&msg::sensor_data(&dev, Some(&s), None, msg::sample(i)))
            .await;
        // Paces the flow AND checks that nothing (no session_ended) comes meanwhile.
        c.expect_no_message_for(Duration::from_millis(300)).await;
    }
    let rec = stack.get_session(&s).await.expect("record");
    assert_eq!(rec.state, SessionState::Active, "{rec:?}");
    assert!(events.ended(&s).is_empty(), "{:?}", events.ended(&s));
    let e = c.end(&dev, &s).await;
    assert_eq!((e.reason, e.data_count), (EndReason::ClientRequest, 20));
}
both_modes!(session_with_data_flowing_is_not_ended_for_idleness);

/// Closing the socket with a close frame ends the session `disconnected`, exact dataCount.
async fn close_frame_ends_the_session_disconnected(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let events = stack.events().await;
    let dev = unique_device("GONE");
    let mut c = stack.registered_client(0, &dev).await;
    let s = c.start(&dev).await.session_id;
    c.send_data(&dev, &s, 4).await;
    c.close().await;
    let ev = events.wait_ended(&s).await;
    assert_eq!((ev.reason, ev.data_count), (EndReason::Disconnected, 4));
    let rec = stack
        .wait_session(&s, "ended", |r| r.state == SessionState::Ended)
        .await;
    assert_eq!(
        (rec.reason, rec.data_count),
        (Some(EndReason::Disconnected), 4)
    );
    assert_eq!(stack.stored_count(&dev, &s).await, 4);
}
both_modes!(close_frame_ends_the_session_disconnected);

/// Dropping TCP without a close frame ends the session `disconnected` too.
async fn dropped_tcp_ends_the_session_disconnected(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let events = stack.events().await;
    let dev = unique_device("GONE");
    let mut c = stack.registered_client(0, &dev).await;
    let s = c.start(&dev).await.session_id;
    c.send_data_acked(&dev, &s, 1, 5).await;
    c.abort();
    let ev = events.wait_ended(&s).await;
    assert_eq!((ev.reason, ev.data_count), (EndReason::Disconnected, 5));
    let rec = stack
        .wait_session(&s, "ended", |r| r.state == SessionState::Ended)
        .await;
    assert_eq!(
        (rec.reason, rec.data_count),
        (Some(EndReason::Disconnected), 5)
    );
}
both_modes!(dropped_tcp_ends_the_session_disconnected);

/// A closing connection with no session ends nothing and publishes nothing.
async fn closing_without_a_session_ends_nothing(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let events = stack.events().await;
    let dev = unique_device("GONE");
    let mut c = stack.registered_client(0, &dev).await;
    let s = c.start(&dev).await.session_id;
    let e = c.end(&dev, &s).await;
    c.close().await;
    events.wait_ended(&s).await;
    absence_window(Duration::from_millis(700)).await;
    let ended = events.ended(&s);
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0].1.reason, EndReason::ClientRequest);
    let rec = stack.get_session(&s).await.expect("record");
    assert_eq!(
        (rec.reason, rec.ended_at),
        (Some(EndReason::ClientRequest), Some(e.ended_at))
    );
}
both_modes!(closing_without_a_session_ends_nothing);

/// Hand-over: another connection of the same device sends data for the session; the session now
/// belongs to it, and the OLD connection's close leaves it active. Its dataCount includes both
/// connections' samples.
async fn old_connection_close_after_handover_leaves_the_session_active(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let events = stack.events().await;
    let dev = unique_device("MOVE");
    let mut old = stack.registered_client(0, &dev).await;
    let s = old.start(&dev).await.session_id;
    old.send_data_acked(&dev, &s, 1, 3).await;

    let mut new = stack.registered_client(0, &dev).await;
    // Acked: the new connection's data for s was accepted (the hand-over happened).
    new.send_data_acked(&dev, &s, 4, 2).await;
    old.close().await;
    // A wrong `disconnected` end would happen now: give it the time (absence check).
    absence_window(Duration::from_millis(1000)).await;
    let rec = stack.get_session(&s).await.expect("record");
    assert_eq!(
        rec.state,
        SessionState::Active,
        "the old connection's close must not end a session another connection took over: {rec:?}"
    );
    assert!(events.ended(&s).is_empty(), "{:?}", events.ended(&s));

    new.send_data_acked(&dev, &s, 6, 1).await;
    let e = new.end(&dev, &s).await;
    assert_eq!((e.reason, e.data_count), (EndReason::ClientRequest, 6));
    assert_eq!(stack.stored_count(&dev, &s).await, 6);
    let pending = new.take_pending();
    assert!(
        !pending
            .iter()
            .any(|m| matches!(m, ServerMessage::SessionEnded(_))),
        "{pending:?}"
    );
}
both_modes!(old_connection_close_after_handover_leaves_the_session_active);

/// After a hand-over the NEW connection's close ends the session `disconnected`, with every
/// sample of both connections counted.
async fn new_connection_close_after_handover_ends_the_session(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let events = stack.events().await;
    let dev = unique_device("MOVE");
    let mut old = stack.registered_client(0, &dev).await;
    let s = old.start(&dev).await.session_id;
    old.send_data_acked(&dev, &s, 1, 2).await;
    let mut new = stack.registered_client(0, &dev).await;
    new.send_data_acked(&dev, &s, 3, 2).await;
    new.close().await;
    let ev = events.wait_ended(&s).await;
    assert_eq!((ev.reason, ev.data_count), (EndReason::Disconnected, 4));
    old.ping().await;
}
both_modes!(new_connection_close_after_handover_ends_the_session);
