//! Sessions over one kept-open WebSocket connection: the client team's checklist
//! (client-request.md), lifecycle events, conflict policies, racing starts, requestId retries
//! and the rules of `session_end` (protocol.md sections 3 and 10). Every test runs in both modes
//! (`both_modes!`) except those that need two gateways (distributed only); lifecycle subjects
//! are checked in distributed mode, the events themselves in both.

use amr_proto::events::SessionState;
use amr_proto::server::{ServerMessage, SessionCreated, SessionEnded};
use amr_proto::subjects::{EVENT_CREATED, EVENT_ENDED};
use amr_proto::{ids, EndReason, ErrorCode};
use amr_tests::checks::assert_error;
use amr_tests::jetstream::LifecycleEvent;
use amr_tests::wait::absence_window;
use amr_tests::{both_modes, msg, unique_device, Mode, Stack};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

fn is_ended_of(m: &ServerMessage, session: &str) -> bool {
    matches!(m, ServerMessage::SessionEnded(e) if e.session_id == session)
}

fn is_created(m: &ServerMessage) -> bool {
    matches!(m, ServerMessage::SessionCreated(_))
}

/// Checklist: register (no sessionId for 1.1.0) -> start -> data -> end -> start again on the
/// SAME connection gives a new id.
async fn checklist_normal_flow_on_one_connection(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let events = stack.events().await;
    let dev = unique_device("AMR");
    let mut c = stack.client(0).await;

    c.send_json(&msg::register(&dev, Some(msg::CLIENT_VERSION)))
        .await;
    let (m, raw) = c.recv_with_text().await;
    let ServerMessage::DeviceRegistered(reg) = m else {
        panic!("expected device_registered, got {raw}");
    };
    assert_eq!(reg.device_id, dev);
    let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert!(
        raw.get("sessionId").is_none_or(|v| v.is_null()),
        "a 1.1.0 client must get no sessionId in device_registered (protocol.md 6): {raw}"
    );

    let s1 = c.start(&dev).await;
    assert!(
        ids::is_valid_session_id(&s1.session_id),
        "invalid session id {}",
        s1.session_id
    );
    assert_eq!(s1.replaced_session_id, None, "nothing to replace yet");
    c.send_data(&dev, &s1.session_id, 5).await;
    let e1 = c.end(&dev, &s1.session_id).await;
    assert_eq!(e1.reason, EndReason::ClientRequest);
    assert_eq!(e1.data_count, 5, "dataCount counts every accepted sample");
    assert!(e1.started_at <= e1.ended_at, "{e1:?}");

    let s2 = c.start(&dev).await;
    assert!(ids::is_valid_session_id(&s2.session_id));
    assert_ne!(s2.session_id, s1.session_id, "a new session needs a new id");
    assert_eq!(
        s2.replaced_session_id, None,
        "the previous session had ended: nothing was replaced"
    );
    c.send_data(&dev, &s2.session_id, 3).await;
    let e2 = c.end(&dev, &s2.session_id).await;
    assert_eq!((e2.reason, e2.data_count), (EndReason::ClientRequest, 3));

    // The record and the event tell the same figures as the client's session_ended.
    let r1 = stack
        .get_session(&s1.session_id)
        .await
        .expect("record of s1");
    assert_eq!(r1.state, SessionState::Ended);
    assert_eq!(r1.reason, Some(EndReason::ClientRequest));
    assert_eq!(r1.data_count, 5);
    assert_eq!(r1.device_id, dev);
    assert_eq!(r1.started_at, e1.started_at);
    assert_eq!(r1.ended_at, Some(e1.ended_at));
    let ev = events.wait_ended(&s1.session_id).await;
    assert_eq!(
        (ev.reason, ev.data_count, ev.started_at, ev.ended_at),
        (e1.reason, e1.data_count, e1.started_at, e1.ended_at)
    );

    // Data landed per session.
    assert_eq!(stack.wait_stored_count(&dev, &s1.session_id, 5).await, 5);
    assert_eq!(stack.wait_stored_count(&dev, &s2.session_id, 3).await, 3);
}
both_modes!(checklist_normal_flow_on_one_connection);

/// Checklist: many sessions created and ended over one kept-open connection.
async fn twenty_sessions_on_one_connection(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let dev = unique_device("AMR");
    let mut c = stack.registered_client(0, &dev).await;
    let mut ids_seen = HashSet::new();
    let mut counts = HashMap::new();
    for i in 0..20u64 {
        let s = c.start(&dev).await;
        assert!(ids::is_valid_session_id(&s.session_id));
        assert!(
            ids_seen.insert(s.session_id.clone()),
            "id reused: {}",
            s.session_id
        );
        let n = i % 4;
        c.send_data(&dev, &s.session_id, n).await;
        let e = c.end(&dev, &s.session_id).await;
        assert_eq!(
            (e.reason, e.data_count),
            (EndReason::ClientRequest, n),
            "session #{i}"
        );
        counts.insert(s.session_id, n);
    }
    c.ping().await;
    let records = stack.list_sessions(&dev, None).await;
    assert_eq!(records.len(), 20, "{records:?}");
    for r in &records {
        assert_eq!(r.state, SessionState::Ended, "{r:?}");
        assert_eq!(r.reason, Some(EndReason::ClientRequest), "{r:?}");
        assert_eq!(Some(&r.data_count), counts.get(&r.session_id), "{r:?}");
    }
    assert!(
        stack
            .list_sessions(&dev, Some(SessionState::Active))
            .await
            .is_empty(),
        "no session may stay active"
    );
}
both_modes!(twenty_sessions_on_one_connection);

/// Checklist: a consecutive session_start auto-ends the previous session; the requester gets no
/// session_ended for it (protocol.md 3), and the replaced session's dataCount is exact.
async fn consecutive_start_replaces_the_previous_session(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let events = stack.events().await;
    let dev = unique_device("AMR");
    let mut c = stack.registered_client(0, &dev).await;

    let s1 = c.start(&dev).await.session_id;
    c.send_data(&dev, &s1, 3).await;
    let created2 = c.start(&dev).await;
    let s2 = created2.session_id.clone();
    assert_ne!(s1, s2);
    assert_eq!(created2.replaced_session_id.as_deref(), Some(s1.as_str()));
    c.send_data(&dev, &s2, 2).await;

    c.send_json(&msg::session_end(&dev, Some(&s2))).await;
    let e2 = c
        .recv_where("session_ended of the second session", |m| {
            is_ended_of(m, &s2)
        })
        .await;
    let before = c.take_pending();
    assert!(
        !before.iter().any(|m| is_ended_of(m, &s1)),
        "the requester must get no session_ended for the session it replaced: {before:?}"
    );
    let ServerMessage::SessionEnded(e2) = e2 else {
        unreachable!()
    };
    assert_eq!((e2.reason, e2.data_count), (EndReason::ClientRequest, 2));
    // Nothing else pending for s1 either (the pong is the next message).
    c.ping().await;

    let ended1 = events.wait_ended(&s1).await;
    assert_eq!(ended1.reason, EndReason::Replaced);
    assert_eq!(
        ended1.data_count, 3,
        "dataCount of the replaced session is exact"
    );
    let created_ev = events.wait_created(&s2).await;
    assert_eq!(created_ev.replaced_session_id.as_deref(), Some(s1.as_str()));
    let r1 = stack.get_session(&s1).await.expect("record of s1");
    assert_eq!(
        (r1.state, r1.reason, r1.data_count),
        (SessionState::Ended, Some(EndReason::Replaced), 3)
    );
    assert_eq!(stack.wait_stored_count(&dev, &s1, 3).await, 3);
    assert_eq!(stack.wait_stored_count(&dev, &s2, 2).await, 2);
}
both_modes!(consecutive_start_replaces_the_previous_session);

/// Exactly one `created` and one `ended` event per session on `<p>.session.<dev>.created|ended`
/// (embedded: one line each in `sessions.ndjson`), with the fields of protocol.md section 10,
/// for every way a session ends.
async fn lifecycle_events_exactly_once_with_contract_fields(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let events = stack.events().await;
    let subjects = stack.subjects();
    let (dev_a, dev_b) = (unique_device("EVA"), unique_device("EVB"));
    let mut a = stack.registered_client(0, &dev_a).await;
    let mut b = stack.registered_client(0, &dev_b).await;

    // s1: client_request with 2 samples.
    let s1 = a.start(&dev_a).await.session_id;
    a.send_data(&dev_a, &s1, 2).await;
    let e1 = a.end(&dev_a, &s1).await;
    // s2 replaced by s3 after 1 sample; s3 ends when the connection closes, 4 samples.
    let s2 = a.start(&dev_a).await.session_id;
    a.send_data(&dev_a, &s2, 1).await;
    let s3 = a.start(&dev_a).await.session_id;
    a.send_data(&dev_a, &s3, 4).await;
    a.close().await;
    // s4 of another device: no data.
    let s4 = b.start(&dev_b).await.session_id;
    let e4 = b.end(&dev_b, &s4).await;

    let expected = [
        (&s1, &dev_a, EndReason::ClientRequest, 2u64, None),
        (&s2, &dev_a, EndReason::Replaced, 1, None),
        (&s3, &dev_a, EndReason::Disconnected, 4, Some(&s2)),
        (&s4, &dev_b, EndReason::ClientRequest, 0, None),
    ];
    for (s, _, _, _, _) in &expected {
        events.wait_ended(s).await;
    }
    // Duplicates would show up now: give them the time to (absence check).
    absence_window(Duration::from_millis(700)).await;

    for (s, dev, reason, count, replaced) in expected {
        let created = events.created(s);
        let ended = events.ended(s);
        assert_eq!(
            created.len(),
            1,
            "exactly one created event for {s}: {created:?}"
        );
        assert_eq!(ended.len(), 1, "exactly one ended event for {s}: {ended:?}");
        let (c_subject, c) = &created[0];
        let (e_subject, e) = &ended[0];
        if mode == Mode::Distributed {
            assert_eq!(c_subject, &subjects.session_event(dev, EVENT_CREATED));
            assert_eq!(e_subject, &subjects.session_event(dev, EVENT_ENDED));
        }
        assert_eq!((&c.device_id, &e.device_id), (dev, dev));
        assert_eq!(
            c.replaced_session_id.as_ref(),
            replaced,
            "replacedSessionId of {s}"
        );
        assert_eq!(c.started_at, e.started_at, "startedAt of {s}");
        assert!(e.started_at <= e.ended_at, "{e:?}");
        assert_eq!((e.reason, e.data_count), (reason, count), "{s}");
    }
    // The client's session_ended and the events tell the same figures.
    for (client_view, s) in [(&e1, &s1), (&e4, &s4)] {
        let (_, e) = &events.ended(s)[0];
        assert_eq!(
            (e.started_at, e.ended_at, e.data_count, e.reason),
            (
                client_view.started_at,
                client_view.ended_at,
                client_view.data_count,
                client_view.reason
            )
        );
    }
    // Nothing on the lifecycle subjects (in the index) but contract events.
    let others: Vec<LifecycleEvent> = events
        .all()
        .into_iter()
        .filter(|e| matches!(e, LifecycleEvent::Other { .. }))
        .collect();
    assert!(
        others.is_empty(),
        "messages outside the contract on <p>.session.>: {others:?}"
    );
}
both_modes!(lifecycle_events_exactly_once_with_contract_fields);

async fn replace_from_another_connection(stack: &Stack, gw_a: usize, gw_b: usize) {
    let events = stack.events().await;
    let dev = unique_device("AMR");
    let mut a = stack.registered_client(gw_a, &dev).await;
    let mut b = stack.registered_client(gw_b, &dev).await;
    let s1 = a.start(&dev).await.session_id;
    // Acked: the gateway accepted all 3 before the other connection's start (data without seq
    // could still be unread in the socket when the start arrives, and then be refused).
    a.send_data_acked(&dev, &s1, 1, 3).await;

    let created = b.start(&dev).await;
    let s2 = created.session_id.clone();
    assert_eq!(created.replaced_session_id.as_deref(), Some(s1.as_str()));

    // The old connection is told, with the exact figures.
    let ended = a.recv_ended().await;
    assert_eq!(ended.session_id, s1);
    assert_eq!(ended.reason, EndReason::Replaced);
    assert_eq!(ended.data_count, 3);
    assert!(ended.started_at <= ended.ended_at);
    let ev = events.wait_ended(&s1).await;
    assert_eq!(
        (ev.reason, ev.data_count, ev.ended_at),
        (EndReason::Replaced, 3, ended.ended_at)
    );

    // The requester gets no session_ended for s1.
    b.send_data(&dev, &s2, 1).await;
    b.send_json(&msg::session_end(&dev, Some(&s2))).await;
    b.recv_where("session_ended of s2", |m| is_ended_of(m, &s2))
        .await;
    let pending = b.take_pending();
    assert!(
        !pending.iter().any(|m| is_ended_of(m, &s1)),
        "the requester got session_ended for the session it replaced: {pending:?}"
    );
    b.ping().await;
    a.ping().await;
}

/// replace (default) from ANOTHER connection: the old connection gets session_ended `replaced`.
async fn replace_from_another_connection_tells_the_old_connection(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    replace_from_another_connection(&stack, 0, 0).await;
}
both_modes!(replace_from_another_connection_tells_the_old_connection);

/// The same across gateway replicas (2 gateways, 2 session services).
#[tokio::test]
async fn replace_from_another_gateway_tells_the_old_connection() {
    let stack = Stack::builder().gateways(2).services(2).start().await;
    replace_from_another_connection(&stack, 0, 1).await;
}

/// `reject`: a second start gets SESSION_ALREADY_ACTIVE carrying the active sessionId, from the
/// same connection and from another one; the active session is untouched.
async fn reject_policy_refuses_a_second_start(mode: Mode) {
    let stack = Stack::builder()
        .mode(mode)
        .service_env("AMR_CONFLICT_POLICY", "reject")
        .start()
        .await;
    let dev = unique_device("AMR");
    let mut a = stack.registered_client(0, &dev).await;
    let mut b = stack.registered_client(0, &dev).await;
    let s1 = a.start(&dev).await.session_id;
    a.send_data(&dev, &s1, 2).await;

    for c in [&mut a, &mut b] {
        c.send_json(&msg::session_start(&dev)).await;
        let e = c.recv_error().await;
        assert_error(&e, ErrorCode::SessionAlreadyActive, Some("session_start"));
        assert_eq!(e.session_id.as_deref(), Some(s1.as_str()), "{e:?}");
    }
    let active = stack.list_sessions(&dev, Some(SessionState::Active)).await;
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active[0].session_id, s1);
    assert_eq!(
        stack.list_sessions(&dev, None).await.len(),
        1,
        "no other session exists"
    );

    // The refused starts did not disturb s1: it still takes data and ends with exact figures.
    a.send_data(&dev, &s1, 1).await;
    let e = a.end(&dev, &s1).await;
    assert_eq!((e.reason, e.data_count), (EndReason::ClientRequest, 3));
    // With nothing active, a start succeeds.
    let s2 = b.start(&dev).await;
    assert_eq!(s2.replaced_session_id, None);
}
both_modes!(reject_policy_refuses_a_second_start);

/// Two connections of one device send session_start at the same moment, for many rounds:
/// after each round exactly one session of the device is active, the other ended `replaced`.
async fn racing_starts(stack: &Stack, gw_a: usize, gw_b: usize, rounds: usize) {
    let dev = unique_device("RACE");
    let mut a = stack.registered_client(gw_a, &dev).await;
    let mut b = stack.registered_client(gw_b, &dev).await;
    // Which connection created each session, and who replaced what.
    let mut owner: HashMap<String, usize> = HashMap::new();
    let mut replaced_by_conn: Vec<(String, usize)> = Vec::new();
    let mut previous_winner: Option<String> = None;
    // session_ended(replaced) each connection received.
    let mut told: [HashSet<String>; 2] = [HashSet::new(), HashSet::new()];
    for round in 0..rounds {
        let (ma, mb) = (msg::session_start(&dev), msg::session_start(&dev));
        tokio::join!(a.send_json(&ma), b.send_json(&mb));
        let ca = a.recv_where("session_created", is_created).await;
        let cb = b.recv_where("session_created", is_created).await;
        let (ServerMessage::SessionCreated(ca), ServerMessage::SessionCreated(cb)) = (ca, cb)
        else {
            unreachable!()
        };
        assert_ne!(ca.session_id, cb.session_id, "round {round}");
        owner.insert(ca.session_id.clone(), 0);
        owner.insert(cb.session_id.clone(), 1);

        let active = stack.list_sessions(&dev, Some(SessionState::Active)).await;
        assert_eq!(
            active.len(),
            1,
            "round {round}: exactly one active session per device, got {active:?}"
        );
        let winner = active[0].session_id.clone();
        let (w, l): (&SessionCreated, &SessionCreated) = if winner == ca.session_id {
            (&ca, &cb)
        } else if winner == cb.session_id {
            (&cb, &ca)
        } else {
            panic!("round {round}: the active session {winner} is neither {ca:?} nor {cb:?}");
        };
        let loser = l.session_id.clone();
        let rec = stack.get_session(&loser).await.expect("loser's record");
        assert_eq!(
            (rec.state, rec.reason),
            (SessionState::Ended, Some(EndReason::Replaced)),
            "round {round}: the losing session {loser}"
        );
        // The two starts were applied one after the other: the second replaced the first,
        // the first replaced the previous round's winner.
        assert_eq!(
            w.replaced_session_id.as_deref(),
            Some(loser.as_str()),
            "round {round}"
        );
        assert_eq!(l.replaced_session_id, previous_winner, "round {round}");
        let l_conn = owner[&loser];
        if let Some(pw) = &previous_winner {
            replaced_by_conn.push((pw.clone(), l_conn));
        }
        replaced_by_conn.push((loser.clone(), owner[&winner]));
        // The loser's connection is told its session ended `replaced`.
        let lc = if l_conn == 0 { &mut a } else { &mut b };
        let what = format!(
            "round {round}: session_ended(replaced) of the losing session {loser} on connection {l_conn} (winner {winner})"
        );
        let m = lc.recv_where(&what, |m| is_ended_of(m, &loser)).await;
        let ServerMessage::SessionEnded(m) = m else {
            unreachable!()
        };
        assert_eq!(m.reason, EndReason::Replaced, "round {round}");
        told[l_conn].insert(loser.clone());
        previous_winner = Some(winner);
    }
    // Drain both connections and check who was told what: a session replaced by a start of
    // ANOTHER connection is reported to its owner; one replaced by its owner's own start is not.
    let last = previous_winner.expect("rounds > 0");
    let last_conn = owner[&last];
    let lc = if last_conn == 0 { &mut a } else { &mut b };
    lc.send_json(&msg::session_end(&dev, Some(&last))).await;
    lc.recv_where("session_ended of the last winner", |m| {
        is_ended_of(m, &last)
    })
    .await;
    a.sync().await;
    b.sync().await;
    for (i, c) in [&mut a, &mut b].into_iter().enumerate() {
        for m in c.take_pending() {
            if let ServerMessage::SessionEnded(e) = m {
                assert_eq!(e.reason, EndReason::Replaced, "{e:?}");
                assert!(told[i].insert(e.session_id.clone()), "told twice: {e:?}");
            }
        }
    }
    for (session, by_conn) in replaced_by_conn {
        let own = owner[&session];
        if own == by_conn {
            assert!(
                !told[own].contains(&session),
                "connection {own} replaced its own session {session}: it must get no session_ended"
            );
        } else {
            assert!(
                told[own].contains(&session),
                "{session} was replaced from the other connection: its owner must be told"
            );
        }
    }
}

async fn racing_starts_on_one_gateway_leave_exactly_one_active_session(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    racing_starts(&stack, 0, 0, 40).await;
}
both_modes!(racing_starts_on_one_gateway_leave_exactly_one_active_session);

#[tokio::test]
async fn racing_starts_on_two_gateways_leave_exactly_one_active_session() {
    let stack = Stack::builder().gateways(2).services(2).start().await;
    racing_starts(&stack, 0, 1, 40).await;
}

/// A retried session_start with the same requestId returns the same session, never a second
/// one, on the same connection and from another connection (distributed: on another gateway,
/// with two session services; scope: per device, across connections and replicas).
async fn request_id_retry_returns_the_same_session(mode: Mode) {
    let stack = match mode {
        Mode::Distributed => Stack::builder().gateways(2).services(2).start().await,
        Mode::Embedded => Stack::start_mode(mode).await,
    };
    let events = stack.events().await;
    let dev = unique_device("AMR");
    let mut a = stack.registered_client(0, &dev).await;
    let mut b = stack
        .registered_client(stack.gateway_count() - 1, &dev)
        .await;

    let first = a.start_with_request(&dev, "req-1").await;
    let again = a.start_with_request(&dev, "req-1").await;
    assert_eq!(
        again.session_id, first.session_id,
        "same requestId, same session"
    );
    assert_eq!(again.replaced_session_id, first.replaced_session_id);
    let other_conn = b.start_with_request(&dev, "req-1").await;
    assert_eq!(
        other_conn.session_id, first.session_id,
        "requestId scope is the device"
    );

    let sessions = stack.list_sessions(&dev, None).await;
    assert_eq!(sessions.len(), 1, "no second session: {sessions:?}");
    assert_eq!(sessions[0].state, SessionState::Active);
    events.wait_created(&first.session_id).await;

    // A different requestId is a new start (and replaces the first).
    let next = a.start_with_request(&dev, "req-2").await;
    assert_ne!(next.session_id, first.session_id);
    assert_eq!(
        next.replaced_session_id.as_deref(),
        Some(first.session_id.as_str())
    );
    events.wait_created(&next.session_id).await;
    absence_window(Duration::from_millis(500)).await;
    assert_eq!(events.created(&first.session_id).len(), 1);
    let created_for_dev = events
        .all()
        .into_iter()
        .filter(|e| matches!(e, LifecycleEvent::Created { event, .. } if event.device_id == dev))
        .count();
    assert_eq!(created_for_dev, 2, "one created event per session");
    assert_eq!(stack.list_sessions(&dev, None).await.len(), 2);
}
both_modes!(request_id_retry_returns_the_same_session);

fn figures(e: &SessionEnded) -> (String, EndReason, i64, i64, u64) {
    (
        e.session_id.clone(),
        e.reason,
        e.started_at,
        e.ended_at,
        e.data_count,
    )
}

/// Ending a session that already ended answers session_ended again with the original reason
/// and figures (also from another connection of the device).
async fn session_end_is_idempotent(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let dev = unique_device("AMR");
    let mut a = stack.registered_client(0, &dev).await;
    let s = a.start(&dev).await.session_id;
    a.send_data(&dev, &s, 4).await;
    let e1 = a.end(&dev, &s).await;
    assert_eq!((e1.reason, e1.data_count), (EndReason::ClientRequest, 4));
    let e2 = a.end(&dev, &s).await;
    assert_eq!(figures(&e2), figures(&e1));

    let mut b = stack.registered_client(0, &dev).await;
    let e3 = b.end(&dev, &s).await;
    assert_eq!(figures(&e3), figures(&e1));

    // A replaced session ended twice keeps its original reason too.
    let r1 = a.start(&dev).await.session_id;
    a.send_data(&dev, &r1, 2).await;
    a.start(&dev).await;
    let e = a.end(&dev, &r1).await;
    assert_eq!((e.reason, e.data_count), (EndReason::Replaced, 2));
}
both_modes!(session_end_is_idempotent);

/// session_end without sessionId ends the active session; with none active: NO_ACTIVE_SESSION.
async fn session_end_without_session_id(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let dev = unique_device("AMR");
    let mut c = stack.registered_client(0, &dev).await;

    c.send_json(&msg::session_end(&dev, None)).await;
    let e = c.recv_error().await;
    assert_error(&e, ErrorCode::NoActiveSession, Some("session_end"));

    let s = c.start(&dev).await.session_id;
    c.send_data(&dev, &s, 2).await;
    let ended = c.end_active(&dev).await;
    assert_eq!(ended.session_id, s);
    assert_eq!(
        (ended.reason, ended.data_count),
        (EndReason::ClientRequest, 2)
    );

    c.send_json(&msg::session_end(&dev, None)).await;
    let e = c.recv_error().await;
    assert_error(&e, ErrorCode::NoActiveSession, Some("session_end"));
    c.ping().await;
}
both_modes!(session_end_without_session_id);

/// Unknown sessionId, or one of another device: SESSION_NOT_FOUND, and the other device's
/// session is unaffected.
async fn session_end_of_unknown_or_foreign_session_is_not_found(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let (dev_a, dev_b) = (unique_device("MINE"), unique_device("THEIRS"));
    let mut a = stack.registered_client(0, &dev_a).await;
    let mut b = stack.registered_client(0, &dev_b).await;
    let sb = b.start(&dev_b).await.session_id;
    b.send_data(&dev_b, &sb, 2).await;
    let sa = a.start(&dev_a).await.session_id;

    let unknown = ids::new_session_id();
    for id in [unknown.as_str(), "session_abc123", sb.as_str()] {
        a.send_json(&msg::session_end(&dev_a, Some(id))).await;
        let e = a.recv_error().await;
        assert_error(&e, ErrorCode::SessionNotFound, Some("session_end"));
    }
    a.ping().await;

    // Both sessions are untouched.
    for s in [&sa, &sb] {
        let r = stack.get_session(s).await.expect("record");
        assert_eq!(r.state, SessionState::Active, "{r:?}");
    }
    b.send_data(&dev_b, &sb, 1).await;
    let e = b.end(&dev_b, &sb).await;
    assert_eq!((e.reason, e.data_count), (EndReason::ClientRequest, 3));
    let e = a.end(&dev_a, &sa).await;
    assert_eq!((e.reason, e.data_count), (EndReason::ClientRequest, 0));
}
both_modes!(session_end_of_unknown_or_foreign_session_is_not_found);
