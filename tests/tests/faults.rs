//! The failure model of architecture.md ("what tests must show") where the contract fixes the
//! observable behaviour: Redis or NATS down -> SERVICE_UNAVAILABLE, never a hang, data of
//! active sessions keeps flowing / acked data is kept; a killed session-service replica loses
//! nothing; SIGTERM drains a gateway with close 1012 and a reconnecting client resumes its
//! session (protocol.md sections 5 and 7).

use amr_proto::events::SessionState;
use amr_proto::server::ServerMessage;
use amr_proto::{EndReason, ErrorCode};
use amr_tests::checks::assert_error;
use amr_tests::client::WsClient;
use amr_tests::wait::wait_until;
use amr_tests::{msg, unique_device, Stack, WAIT_TIMEOUT};
use std::time::Duration;

/// Prints a measured recovery time (run with `--nocapture` to collect them; README's failure
/// model table quotes them). Never asserted: machines are noisy.
fn report(what: &str, since: std::time::Instant) {
    eprintln!("RECOVERY {what}: {} ms", since.elapsed().as_millis());
}

/// Sends session_start until it succeeds (each failure must be a prompt SERVICE_UNAVAILABLE).
async fn start_when_available(c: &mut WsClient, dev: &str) -> String {
    let deadline = std::time::Instant::now() + WAIT_TIMEOUT * 2;
    loop {
        c.send_json(&msg::session_start(dev)).await;
        match c.recv_non_ack().await {
            ServerMessage::SessionCreated(s) => return s.session_id,
            ServerMessage::Error(e) => {
                assert_eq!(e.error_code, ErrorCode::ServiceUnavailable, "{e:?}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "session_start never succeeded again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Redis down: session_start fails fast with SERVICE_UNAVAILABLE; sensor data of the session
/// already active keeps flowing (acked); after Redis is back, starts work again.
#[tokio::test]
async fn redis_down_fails_session_ops_fast_and_data_keeps_flowing() {
    let mut stack = Stack::start().await;
    let dev = unique_device("FAULT");
    let mut c = stack.registered_client(0, &dev).await;
    let s = c.start(&dev).await.session_id;
    c.send_data_acked(&dev, &s, 1, 3).await;

    stack.redis_mut().kill();
    let other_dev = unique_device("FAULT2");
    let mut o = stack.registered_client(0, &other_dev).await;
    let asked = std::time::Instant::now();
    o.send_json(&msg::session_start(&other_dev)).await;
    // recv is bounded: an answer at all proves "never a hang".
    let e = o.recv_error().await;
    report(
        "redis down: session_start answered SERVICE_UNAVAILABLE after",
        asked,
    );
    assert_error(&e, ErrorCode::ServiceUnavailable, Some("session_start"));
    o.ping().await;

    // Data of the active session needs no Redis.
    c.send_data_acked(&dev, &s, 4, 5).await;
    assert_eq!(stack.stored_count(&dev, &s).await, 8);

    // The service reports not-ready while its store is unreachable, ready again after.
    let readyz = format!("{}/readyz", stack.service_http_url(0));
    wait_until(
        "session service /readyz 503 without Redis",
        WAIT_TIMEOUT,
        || async { amr_tests::http::get(&readyz).await.status == 503 },
    )
    .await;
    stack.redis_mut().restart().await;
    let back = std::time::Instant::now();
    start_when_available(&mut o, &other_dev).await;
    report("redis restarted: first session_start succeeded after", back);
    wait_until(
        "session service /readyz 200 with Redis back",
        WAIT_TIMEOUT,
        || async { amr_tests::http::get(&readyz).await.status == 200 },
    )
    .await;
}

/// NATS restart: the gateway keeps the WebSocket open, answers SERVICE_UNAVAILABLE while NATS is
/// away (never hangs), reconnects; data acked before the restart is still stored.
#[tokio::test]
async fn nats_restart_keeps_websockets_and_acked_data() {
    let mut stack = Stack::start().await;
    let dev = unique_device("FAULT");
    let mut c = stack.registered_client(0, &dev).await;
    let s = c.start(&dev).await.session_id;
    c.send_data_acked(&dev, &s, 1, 10).await;

    stack.nats_mut().stop();
    c.send_json(&msg::session_start(&dev)).await;
    let e = c.recv_error().await;
    assert_error(&e, ErrorCode::ServiceUnavailable, Some("session_start"));
    c.ping().await;

    stack.nats_mut().restart().await;
    let back = std::time::Instant::now();
    // The same WebSocket works again once the product reconnected.
    let s2 = start_when_available(&mut c, &dev).await;
    report(
        "nats restarted: first session_start on the same WebSocket after",
        back,
    );
    c.send_data_acked(&dev, &s2, 1, 2).await;
    assert_eq!(
        stack.stored_count(&dev, &s).await,
        10,
        "acked data survives a NATS restart"
    );
    assert_eq!(stack.stored_count(&dev, &s2).await, 2);
}

/// kill -9 of one of two session-service replicas: sessions keep starting and ending, none lost
/// or doubled.
#[tokio::test]
async fn killing_a_session_service_replica_loses_nothing() {
    let mut stack = Stack::builder().services(2).start().await;
    let dev = unique_device("FAULT");
    let mut c = stack.registered_client(0, &dev).await;
    let s = c.start(&dev).await.session_id;
    c.send_data_acked(&dev, &s, 1, 2).await;
    stack.kill_service(0);
    let killed = std::time::Instant::now();
    let e = c.end(&dev, &s).await;
    report(
        "session-service replica killed: next session_end answered after",
        killed,
    );
    assert_eq!((e.reason, e.data_count), (EndReason::ClientRequest, 2));
    let mut ids = vec![s];
    for i in 0..10u64 {
        let s = c.start(&dev).await.session_id;
        c.send_data_acked(&dev, &s, 1, i % 3 + 1).await;
        let e = c.end(&dev, &s).await;
        assert_eq!(e.data_count, i % 3 + 1);
        ids.push(s);
    }
    let api = stack.service_http_url(1);
    let url = format!("{api}/api/sessions?deviceId={dev}");
    let r = amr_tests::http::get(&url).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let page: amr_proto::events::SessionPage = serde_json::from_str(&r.body).unwrap();
    assert_eq!(page.sessions.len(), ids.len(), "no session lost or doubled");
    assert!(page
        .sessions
        .iter()
        .all(|r| r.state == SessionState::Ended && r.reason == Some(EndReason::ClientRequest)));
}

/// SIGTERM: the gateway closes its connections with 1012 and exits; a client that reconnects
/// (to a gateway on the same address) within the drain grace resumes its session: not split,
/// with an exact dataCount.
async fn sigterm_drain_then_resume(fixed_gateway_ids: bool) {
    let mut b = Stack::builder().gateway_env("AMR_DRAIN_TIMEOUT", "5s");
    if fixed_gateway_ids {
        b = b.fixed_gateway_ids();
    }
    let mut stack = b.start().await;
    let events = stack.events().await;
    let dev = unique_device("DRAIN");
    let mut c = stack.registered_client(0, &dev).await;
    let s = c.start(&dev).await.session_id;
    c.send_data_acked(&dev, &s, 1, 4).await;

    stack.term_gateway(0);
    let termed = std::time::Instant::now();
    let (close, _errors) = c.expect_close().await;
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), 1012, "{close:?}");
    assert!(
        stack
            .wait_gateway_exit(0, Duration::from_secs(20))
            .is_some(),
        "the gateway exits after draining"
    );
    report("SIGTERM: gateway drained (1012) and exited after", termed);
    stack.restart_gateway(0).await;

    let mut c = stack.registered_client(0, &dev).await;
    c.send_data_acked(&dev, &s, 5, 3).await;
    let e = c.end(&dev, &s).await;
    assert_eq!(
        (e.reason, e.data_count),
        (EndReason::ClientRequest, 7),
        "the drained session resumed, not split, and counts every sample"
    );
    assert_eq!(events.wait_ended(&s).await.data_count, 7);
    assert_eq!(events.ended(&s).len(), 1);
    assert_eq!(stack.stored_count(&dev, &s).await, 7);
}

/// The restarted gateway picks a new id (a Deployment pod).
#[tokio::test]
async fn sigterm_drains_with_1012_and_the_session_resumes_after_reconnect() {
    sigterm_drain_then_resume(false).await;
}

/// The restarted gateway keeps its configured AMR_GATEWAY_ID (a StatefulSet pod, a bench PC).
#[tokio::test]
async fn sigterm_drain_and_resume_with_a_fixed_gateway_id() {
    sigterm_drain_then_resume(true).await;
}

/// kill -9 of a gateway: the sessions it held end `gateway_lost` (contract bound: 30 s by
/// default) with an exact dataCount; sessions on the other gateway are untouched.
#[tokio::test]
async fn killed_gateway_sessions_end_gateway_lost() {
    let mut stack = Stack::builder().gateways(2).start().await;
    let events = stack.events().await;
    let (lost_dev, kept_dev) = (unique_device("LOST"), unique_device("KEPT"));
    let mut lost = stack.registered_client(1, &lost_dev).await;
    let mut kept = stack.registered_client(0, &kept_dev).await;
    let ls = lost.start(&lost_dev).await.session_id;
    lost.send_data_acked(&lost_dev, &ls, 1, 3).await;
    let ks = kept.start(&kept_dev).await.session_id;
    kept.send_data_acked(&kept_dev, &ks, 1, 2).await;

    stack.kill_gateway(1);
    let killed = std::time::Instant::now();
    // The contract's default bound is 30 s; wait a little longer than that.
    let ended = amr_tests::wait::wait_for(
        "the ended event of the lost gateway's session",
        Duration::from_secs(45),
        || async { events.ended(&ls).into_iter().next().map(|(_, e)| e) },
    )
    .await;
    report(
        "gateway killed: its session ended gateway_lost after",
        killed,
    );
    assert_eq!(ended.reason, EndReason::GatewayLost, "{ended:?}");
    assert_eq!(
        ended.data_count, 3,
        "exact dataCount (count what the stream holds)"
    );
    let rec = stack.get_session(&ls).await.expect("record");
    assert_eq!(
        (rec.state, rec.reason, rec.data_count),
        (SessionState::Ended, Some(EndReason::GatewayLost), 3)
    );
    let kept_rec = stack.get_session(&ks).await.expect("record");
    assert_eq!(kept_rec.state, SessionState::Active, "{kept_rec:?}");
    kept.send_data_acked(&kept_dev, &ks, 3, 1).await;
    let e = kept.end(&kept_dev, &ks).await;
    assert_eq!((e.reason, e.data_count), (EndReason::ClientRequest, 3));
}

/// Idle ends happen exactly once even with two session-service replicas sweeping.
#[tokio::test]
async fn idle_ends_exactly_once_with_two_sweeping_replicas() {
    let stack = Stack::builder()
        .services(2)
        .env("AMR_SESSION_IDLE_TIMEOUT", "1s")
        .start()
        .await;
    let events = stack.events().await;
    let mut sessions = Vec::new();
    let mut clients = Vec::new();
    for i in 0..6 {
        let dev = unique_device(&format!("IDLE{i}"));
        let mut c = stack.registered_client(0, &dev).await;
        let s = c.start(&dev).await.session_id;
        c.send_data_acked(&dev, &s, 1, 2).await;
        sessions.push(s);
        clients.push(c);
    }
    for (c, s) in clients.iter_mut().zip(&sessions) {
        let ended = c.recv_ended().await;
        assert_eq!(&ended.session_id, s);
        assert_eq!(
            (ended.reason, ended.data_count),
            (EndReason::IdleTimeout, 2)
        );
    }
    for s in &sessions {
        events.wait_ended(s).await;
    }
    // A second end by the other replica would show as a second event.
    amr_tests::wait::absence_window(Duration::from_secs(2)).await;
    for s in &sessions {
        assert_eq!(events.ended(s).len(), 1, "exactly one ended event for {s}");
    }
}

/// kill -9 of a session-service replica DURING a stream of starts and ends from several
/// devices: every request is answered (created/ended, or SERVICE_UNAVAILABLE within the
/// request timeout, never a hang), and no session is doubled or left behind: the gateway
/// re-sends a request that died with the replica, with the same requestId.
#[tokio::test]
async fn killing_a_session_service_replica_mid_stream_answers_every_request() {
    let mut stack = Stack::builder().services(2).start().await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let dev = unique_device(&format!("MID{i}"));
        let mut c = stack.registered_client(0, &dev).await;
        tasks.push(tokio::spawn(async move {
            let mut created = Vec::new();
            for _ in 0..25 {
                c.send_json(&msg::session_start(&dev)).await;
                let sid = match c.recv_non_ack().await {
                    ServerMessage::SessionCreated(s) => s.session_id,
                    ServerMessage::Error(e) => {
                        assert_eq!(e.error_code, ErrorCode::ServiceUnavailable, "{e:?}");
                        continue;
                    }
                    other => panic!("unexpected {other:?}"),
                };
                created.push(sid.clone());
                loop {
                    c.send_json(&msg::session_end(&dev, Some(&sid))).await;
                    match c.recv_non_ack().await {
                        ServerMessage::SessionEnded(e) => {
                            assert_eq!(e.session_id, sid);
                            break;
                        }
                        ServerMessage::Error(e) => {
                            assert_eq!(e.error_code, ErrorCode::ServiceUnavailable, "{e:?}")
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            (dev, created)
        }));
    }
    // Let the stream get going, then kill one replica in the middle of it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.kill_service(0);
    let killed = std::time::Instant::now();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("client task"));
    }
    report(
        "session-service replica killed mid-stream: all clients done after",
        killed,
    );
    let api = stack.service_http_url(1);
    for (dev, created) in results {
        let r = amr_tests::http::get(&format!("{api}/api/sessions?deviceId={dev}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let all = serde_json::from_str::<amr_proto::events::SessionPage>(&r.body)
            .expect("a session page")
            .sessions;
        assert_eq!(
            all.len(),
            created.len(),
            "{dev}: one stored session per session_created, none doubled by a retry"
        );
        assert!(
            all.iter()
                .all(|r| r.state == SessionState::Ended && created.contains(&r.session_id)),
            "{dev}: {all:?}"
        );
    }
}

/// SIGTERM to one of two gateways: the client reconnects to the OTHER gateway within the drain
/// grace and keeps sending with its sessionId: the same session continues (not split), with an
/// exact dataCount.
#[tokio::test]
async fn sigterm_drain_then_resume_on_the_other_gateway() {
    let mut stack = Stack::builder()
        .gateways(2)
        .gateway_env("AMR_DRAIN_TIMEOUT", "5s")
        .start()
        .await;
    let events = stack.events().await;
    let dev = unique_device("DRAIN2");
    let mut c = stack.registered_client(0, &dev).await;
    let s = c.start(&dev).await.session_id;
    c.send_data_acked(&dev, &s, 1, 4).await;

    stack.term_gateway(0);
    let (close, _errors) = c.expect_close().await;
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), 1012, "{close:?}");

    let mut c = stack.registered_client(1, &dev).await;
    c.send_data_acked(&dev, &s, 5, 3).await;
    let e = c.end(&dev, &s).await;
    assert_eq!(
        (e.reason, e.data_count),
        (EndReason::ClientRequest, 7),
        "the drained session resumed on the other gateway, not split"
    );
    assert_eq!(events.wait_ended(&s).await.data_count, 7);
    assert_eq!(stack.stored_count(&dev, &s).await, 7);
    assert!(
        stack
            .wait_gateway_exit(0, Duration::from_secs(20))
            .is_some(),
        "the drained gateway exits"
    );
}
