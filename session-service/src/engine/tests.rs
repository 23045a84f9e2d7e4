//! The engine's start paths on the memory store: the one-round-trip start of a device without
//! a session, and what happens when its guess is wrong.

use super::*;
use crate::fakes::{setup, FakeConnections, Recorded};
use crate::memory_store::MemoryStore;
use crate::store::ListQuery;
use amr_proto::events::SessionState;
use amr_proto::internal::{CountReport, EndRequest, StartRequest};
use amr_proto::subjects::Subjects;
use amr_proto::EndReason;

const GATEWAY: &str = "gw1";

fn engine() -> (
    Arc<Engine<MemoryStore>>,
    Arc<FakeConnections>,
    Arc<Recorded>,
) {
    let s = setup(&[GATEWAY], None);
    (s.engine, s.conns, s.events)
}

fn owner(connection: &str) -> String {
    Subjects::default().connection(GATEWAY, connection)
}

/// A start from a connection that holds no session (the clean-device guess applies).
fn clean_start(device: &str, request: &str, connection: &str) -> StartRequest {
    StartRequest {
        device_id: device.into(),
        request_id: request.into(),
        owner: owner(connection),
        gateway_id: GATEWAY.into(),
        adopt_session_id: None,
        current: None,
    }
}

async fn sessions_of(engine: &Engine<MemoryStore>, device: &str) -> Vec<(String, SessionState)> {
    let page = engine
        .store()
        .list(&ListQuery {
            device_id: Some(device.into()),
            state: None,
            limit: 100,
            cursor: None,
        })
        .await
        .unwrap();
    page.sessions
        .into_iter()
        .map(|s| (s.session_id, s.state))
        .collect()
}

#[tokio::test]
async fn start_end_start_creates_one_session_each_time() {
    let (engine, conns, events) = engine();
    let first = engine.start(&clean_start("D1", "r1", "c1")).await.unwrap();
    assert_eq!(first.replaced_session_id, None);
    let end = EndRequest {
        device_id: "D1".into(),
        session_id: Some(first.session_id.clone()),
        owner: owner("c1"),
        count: Some(CountReport {
            session_id: first.session_id.clone(),
            accepted: 3,
        }),
    };
    let ended = engine.end(&end).await.unwrap();
    assert_eq!(ended.reason, EndReason::ClientRequest);
    assert_eq!(ended.data_count, 3);

    let second = engine.start(&clean_start("D1", "r2", "c1")).await.unwrap();
    assert_ne!(second.session_id, first.session_id);
    assert_eq!(second.replaced_session_id, None);
    let mut listed = sessions_of(&engine, "D1").await;
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected = vec![
        (first.session_id.clone(), SessionState::Ended),
        (second.session_id.clone(), SessionState::Active),
    ];
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(listed, expected);
    assert_eq!(events.created.lock().unwrap().len(), 2);
    assert!(
        conns.revoked.lock().unwrap().is_empty(),
        "nothing to revoke"
    );
}

/// The guess is wrong when another connection holds a session: that session is replaced as
/// by any start (its holder revoked first), exactly once.
#[tokio::test]
async fn a_wrong_guess_still_replaces_the_active_session() {
    let (engine, conns, events) = engine();
    let first = engine.start(&clean_start("D2", "r1", "c1")).await.unwrap();
    let second = engine.start(&clean_start("D2", "r2", "c2")).await.unwrap();
    assert_ne!(second.session_id, first.session_id);
    assert_eq!(
        second.replaced_session_id.as_deref(),
        Some(first.session_id.as_str())
    );
    assert_eq!(
        *conns.revoked.lock().unwrap(),
        vec![first.session_id.clone()]
    );
    let ended = events.ended.lock().unwrap().clone();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].session_id, first.session_id);
    assert_eq!(ended[0].reason, EndReason::Replaced);
    assert_eq!(events.created.lock().unwrap().len(), 2);
}

/// A retried start gets the first answer even when the device has no active session any
/// more (its session ended between the attempts): the request memory, not the active
/// pointer, refutes the guess.
#[tokio::test]
async fn a_retry_after_the_end_gets_the_first_answer() {
    let (engine, _conns, events) = engine();
    let first = engine.start(&clean_start("D3", "r1", "c1")).await.unwrap();
    let end = EndRequest {
        device_id: "D3".into(),
        session_id: Some(first.session_id.clone()),
        owner: owner("c1"),
        count: None,
    };
    engine.end(&end).await.unwrap();

    let retried = engine.start(&clean_start("D3", "r1", "c2")).await.unwrap();
    assert_eq!(retried, first, "the same answer as the first attempt");
    assert_eq!(
        sessions_of(&engine, "D3").await.len(),
        1,
        "no second session"
    );
    assert_eq!(events.created.lock().unwrap().len(), 1);
}
