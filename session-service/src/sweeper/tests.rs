//! The gateway-loss sweep end to end on the memory store, with connections and lifecycle
//! events faked: which sessions end, with which count, how often, and what stays.

use super::*;
use crate::fakes::setup;
use crate::memory_store::MemoryStore;
use amr_proto::events::SessionState;
use amr_proto::internal::{ActivityRequest, CountReport, HeartbeatRequest, StartRequest};
use amr_proto::subjects::Subjects;
use amr_proto::EndReason;

const LOST: LostGateways = LostGateways {
    after: Duration::from_millis(600),
};

/// Starts a session of `device` held by connection c1 of `gateway`; its id.
async fn start_on(engine: &Engine<MemoryStore>, device: &str, gateway: &str) -> String {
    let req = StartRequest {
        device_id: device.into(),
        request_id: "r1".into(),
        owner: Subjects::default().connection(gateway, "c1"),
        gateway_id: gateway.into(),
        adopt_session_id: None,
        current: None,
    };
    engine.start(&req).await.unwrap().session_id
}

/// Runs `replicas` sweepers until `done` holds (at most 5 s), then a little longer.
async fn sweep_until<F: Fn() -> bool>(engine: &Arc<Engine<MemoryStore>>, replicas: usize, done: F) {
    let (stop_tx, stop) = watch::channel(false);
    let mut sweepers = JoinSet::new();
    for _ in 0..replicas {
        sweepers.spawn(run(
            engine.clone(),
            Duration::from_millis(50),
            Duration::from_secs(5),
            Some(LOST),
            stop.clone(),
        ));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(LOST.interval() * 4).await;
    let _ = stop_tx.send(true);
    while sweepers.join_next().await.is_some() {}
}

#[test]
fn silence_and_interval_fit_in_the_bound() {
    let lost = LostGateways {
        after: Duration::from_secs(30),
    };
    assert_eq!(lost.silence(), Duration::from_secs(25));
    assert_eq!(lost.interval(), Duration::from_secs(1));
    // Heartbeats go every third of the bound: one may be missed with margin.
    assert!(lost.silence() > lost.after / 3 * 2);
    for after in [
        Duration::from_secs(2),
        Duration::from_secs(30),
        Duration::from_secs(600),
    ] {
        let lost = LostGateways { after };
        assert!(lost.silence() + lost.interval() < after, "{after:?}");
    }
}

#[tokio::test]
async fn sessions_of_a_dead_gateway_end_once_with_the_stream_count() {
    let s = setup(&["gw-live"], Some(5));
    let engine = &s.engine;
    let dead = start_on(engine, "DEV_DEAD", "gw-dead").await;
    let dead2 = start_on(engine, "DEV_DEAD2", "gw-dead").await;
    let live = start_on(engine, "DEV_LIVE", "gw-live").await;
    // Two samples were reported before the death; the stream holds five.
    let report = ActivityRequest {
        device_id: "DEV_DEAD".into(),
        owner: Subjects::default().connection("gw-dead", "c1"),
        reports: vec![CountReport {
            session_id: dead.clone(),
            accepted: 2,
        }],
    };
    engine.activity(&report).await.unwrap();
    // A gateway that left without sessions is only forgotten.
    engine
        .heartbeat(&HeartbeatRequest {
            gateway_id: "gw-gone".into(),
        })
        .await
        .unwrap();
    // The live gateway keeps heartbeating; the dead one stopped at its first session.
    let beat = {
        let engine = engine.clone();
        tokio::spawn(async move {
            loop {
                let hb = HeartbeatRequest {
                    gateway_id: "gw-live".into(),
                };
                let _ = engine.heartbeat(&hb).await;
                tokio::time::sleep(LOST.after / 3).await;
            }
        })
    };
    // Three replicas sweep at once: still one end per session.
    let ended = |id: &str| {
        s.events
            .ended
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.session_id == id)
            .count()
    };
    let began = tokio::time::Instant::now();
    sweep_until(engine, 3, || ended(&dead) == 1 && ended(&dead2) == 1).await;
    beat.abort();
    assert!(
        began.elapsed() < LOST.after * 3,
        "ended within the bound (plus the sweepers' start-up wait)"
    );

    for id in [&dead, &dead2] {
        assert_eq!(ended(id), 1, "exactly one ended event for {id}");
        let row = engine.store().get(id).await.unwrap().unwrap();
        let rec = row.record();
        assert_eq!(
            (rec.state, rec.reason, rec.data_count),
            (SessionState::Ended, Some(EndReason::GatewayLost), 5)
        );
    }
    let events = s.events.ended.lock().unwrap().clone();
    assert!(events
        .iter()
        .all(|e| e.reason == EndReason::GatewayLost && e.data_count == 5));
    assert_eq!(ended(&live), 0);
    let live_row = engine.store().get(&live).await.unwrap().unwrap();
    assert!(live_row.is_active(), "a live gateway keeps its sessions");
    assert!(
        !s.conns.revoked.lock().unwrap().contains(&live),
        "a heartbeating gateway's connections are left alone"
    );
    assert!(
        s.conns.pushed.lock().unwrap().is_empty(),
        "nothing pushed to the dead"
    );
    // The dead and the departed gateways are forgotten once they hold nothing.
    let store = engine.store();
    assert!(store.gateway_sessions("gw-dead").await.unwrap().is_empty());
    let silent = store.silent_gateways(i64::MAX, 10).await.unwrap();
    assert_eq!(silent, vec!["gw-live".to_string()]);
}

#[tokio::test]
async fn a_silent_gateway_whose_connections_answer_keeps_its_sessions() {
    let s = setup(&["gw-mute"], Some(5));
    let engine = &s.engine;
    let a = start_on(engine, "DEV_A", "gw-mute").await;
    let b = start_on(engine, "DEV_B", "gw-mute").await;
    let before = amr_proto::now_ms();
    sweep_until(engine, 1, || !s.conns.revoked.lock().unwrap().is_empty()).await;
    assert!(s.events.ended.lock().unwrap().is_empty());
    for id in [&a, &b] {
        assert!(engine.store().get(id).await.unwrap().unwrap().is_active());
    }
    // The answer counts as a heartbeat: it is not revoked again at every tick.
    let store = engine.store();
    let silent = store.silent_gateways(before - 1, 10).await.unwrap();
    assert!(silent.is_empty(), "{silent:?}");
    assert!(s.conns.revoked.lock().unwrap().len() <= 2);
    assert_eq!(store.gateway_sessions("gw-mute").await.unwrap().len(), 2);
}

#[tokio::test]
async fn without_a_stream_count_nothing_ends_yet() {
    let s = setup(&[], None);
    let engine = &s.engine;
    let a = start_on(engine, "DEV_A", "gw-dead").await;
    sweep_until(engine, 1, || !s.conns.revoked.lock().unwrap().is_empty()).await;
    assert!(s.events.ended.lock().unwrap().is_empty());
    assert!(engine.store().get(&a).await.unwrap().unwrap().is_active());
    // Kept for another try after the lease.
    assert_eq!(
        engine.store().gateway_sessions("gw-dead").await.unwrap(),
        vec![a]
    );
}
