//! The memory store: the shared conformance suite (`store/conformance.rs`), then what only
//! this store has (its clock-driven purge, `restore`, concurrent callers in one process).

use super::*;
use crate::machine::{self, Decision};
use crate::store::conformance::{self, conformance_tests, start, start_req, Inspect};
use amr_proto::internal::{CountReport, EndRequest};
use std::sync::atomic::Ordering;

const RETENTION_MS: i64 = 3_600_000;

async fn make(retention: Duration) -> ((), MemoryStore) {
    ((), MemoryStore::new(retention, conformance::IDLE_TIMEOUT))
}

conformance_tests!(make);

fn store() -> MemoryStore {
    MemoryStore::new(
        Duration::from_millis(RETENTION_MS as u64),
        conformance::IDLE_TIMEOUT,
    )
}

impl MemoryStore {
    /// Lets `ms` pass on the store's clock.
    fn advance(&self, ms: i64) {
        self.skew.fetch_add(ms, Ordering::Relaxed);
    }

    fn ttl(&self, expires_at: Option<i64>) -> Option<i64> {
        expires_at.map(|at| at - self.now())
    }
}

impl Inspect for MemoryStore {
    async fn scheduled(&self, session_id: &str) -> Option<i64> {
        self.locked().0.deadlines.score(session_id)
    }

    async fn record_ttl(&self, session_id: &str) -> Option<i64> {
        let (state, now) = self.locked();
        state.row(session_id, now)?;
        self.ttl(state.rows.get(session_id)?.expires_at)
    }

    async fn request_ttl(&self, device_id: &str, request_id: &str) -> Option<i64> {
        let (state, now) = self.locked();
        state.request(device_id, request_id, now)?;
        let key = (device_id.to_string(), request_id.to_string());
        self.ttl(Some(state.requests.get(&key)?.expires_at))
    }

    async fn drop_record(&self, session_id: &str) {
        self.locked().0.delete_row(session_id);
    }

    async fn device_index_len(&self, device_id: &str) -> usize {
        self.locked()
            .0
            .by_device
            .get(device_id)
            .map_or(0, ZSet::len)
    }

    async fn gateway_score(&self, gateway_id: &str) -> Option<i64> {
        self.locked().0.gateways.score(gateway_id)
    }
}

/// Starts and ends a session of `device` (owner `o1`, request `r1`); its id.
async fn ended_session(s: &MemoryStore, device: &str, now: i64) -> String {
    let id = start(s, &start_req(device, "r1", "o1"), now).await;
    let q = SnapshotQuery {
        session_ids: vec![id.clone()],
        ..SnapshotQuery::default()
    };
    let snap = s.snapshot(&q).await.unwrap();
    let end = EndRequest {
        device_id: device.into(),
        session_id: Some(id.clone()),
        owner: "o1".into(),
        count: Some(CountReport {
            session_id: id.clone(),
            accepted: 4,
        }),
    };
    let Decision::Commit { plan, .. } = machine::end(&snap, &end, &[], now + 1) else {
        panic!()
    };
    assert_eq!(s.commit(&plan).await.unwrap(), CommitOutcome::Committed);
    id
}

fn list(device: Option<&str>) -> ListQuery {
    ListQuery {
        device_id: device.map(String::from),
        state: None,
        limit: 100,
        cursor: None,
    }
}

#[tokio::test]
async fn request_memory_lasts_60_seconds() {
    let s = store();
    let req = start_req("M1", "r1", "o1");
    let first = start(&s, &req, 1_000).await;
    let q = SnapshotQuery {
        device_id: Some("M1".into()),
        request_id: Some("r1".into()),
        session_ids: vec![],
    };
    s.advance(REQUEST_MEMORY_MS - 1_000);
    assert_eq!(
        s.snapshot(&q).await.unwrap().by_request.as_deref(),
        Some(first.as_str())
    );
    s.advance(1_000);
    assert_eq!(s.snapshot(&q).await.unwrap().by_request, None);
    {
        let state = s.lock();
        assert!(state.requests.is_empty() && state.request_expiry.is_empty());
    }
    // Remembered again: a new 60 s from now (the old expiry is not left behind).
    let second = start(&s, &req, 2_000).await;
    assert_ne!(first, second);
    assert_eq!(s.lock().request_expiry.len(), 1);
    let ttl = s.request_ttl("M1", "r1").await.unwrap();
    assert!(ttl > REQUEST_MEMORY_MS - 1_000 && ttl <= REQUEST_MEMORY_MS);
}

#[tokio::test]
async fn ended_records_expire_and_are_purged_with_their_index_entries() {
    let s = store();
    let gone = ended_session(&s, "M2", 1_000).await;
    let live = start(&s, &start_req("M2", "r2", "o1"), 2_000).await;
    let other = ended_session(&s, "M3", 3_000).await;
    assert_eq!(s.list(&list(None)).await.unwrap().sessions.len(), 3);

    s.advance(RETENTION_MS - 1_000);
    assert!(s.get(&gone).await.unwrap().is_some());
    s.advance(1_000);
    // Past its expiry it does not exist for any read, purged or not yet.
    assert!(s.lock().row(&gone, s.now()).is_none());
    assert!(s.get(&gone).await.unwrap().is_none());
    {
        let state = s.lock();
        assert!(!state.rows.contains_key(&gone));
        assert!(state.row_expiry.is_empty());
        assert_eq!(state.all.len(), 1, "only the active one is left");
        assert!(!state.by_device.contains_key("M3"));
        assert_eq!(state.by_device.get("M2").map(ZSet::len), Some(1));
    }
    assert!(s.get(&other).await.unwrap().is_none());
    // Active rows never expire.
    s.advance(10 * RETENTION_MS);
    let page = s.list(&list(None)).await.unwrap();
    assert_eq!(page.sessions.len(), 1);
    assert_eq!(page.sessions[0].session_id, live);
}

#[tokio::test]
async fn a_write_resets_the_expiry_of_an_ended_row() {
    let s = store();
    let id = ended_session(&s, "M4", 1_000).await;
    s.advance(RETENTION_MS / 2);
    // Rewriting the ended row (here: unchanged but for its version) starts the retention
    // again, as `PEXPIRE` does.
    let mut row = s.get(&id).await.unwrap().unwrap();
    row.version += 1;
    let plan = Plan {
        guards: vec![],
        writes: vec![Write::Put(row)],
        effects: vec![],
    };
    assert_eq!(s.commit(&plan).await.unwrap(), CommitOutcome::Committed);
    assert_eq!(s.lock().row_expiry.len(), 1);
    s.advance(RETENTION_MS / 2 + 1);
    assert!(s.get(&id).await.unwrap().is_some());
    s.advance(RETENTION_MS / 2);
    assert!(s.get(&id).await.unwrap().is_none());
}

#[tokio::test]
async fn a_zero_retention_drops_ended_rows_at_once() {
    let s = MemoryStore::new(Duration::ZERO, conformance::IDLE_TIMEOUT);
    let id = ended_session(&s, "M5", 1_000).await;
    assert!(s.get(&id).await.unwrap().is_none());
    // The index entries written with it go with the next listing.
    assert!(s.list(&list(Some("M5"))).await.unwrap().sessions.is_empty());
    assert_eq!(s.device_index_len("M5").await, 0);
    assert_eq!(s.lock().all.len(), 0);
}

fn record(session_id: &str, device_id: &str, started_at: i64, ended_at: i64) -> SessionRecord {
    SessionRecord {
        session_id: session_id.into(),
        device_id: device_id.into(),
        state: SessionState::Ended,
        started_at,
        ended_at: Some(ended_at),
        reason: Some(EndReason::IdleTimeout),
        data_count: 42,
    }
}

#[tokio::test]
async fn restore_imports_ended_sessions() {
    let s = store();
    let now = now_ms();
    let live = start(&s, &start_req("R1", "r1", "o1"), now).await;
    let (old, older) = (ids::new_session_id(), ids::new_session_id());
    let rec = record(&old, "R1", now - 5_000, now - 1_000);
    assert_eq!(s.restore(rec.clone()), Ok(Restored::Inserted));
    assert_eq!(
        s.restore(record(&older, "R1", now - 9_000, now - 8_000)),
        Ok(Restored::Inserted)
    );

    // Read back exactly as recorded; listed newest first with the live session.
    let got = s.get(&old).await.unwrap().unwrap();
    assert_eq!(got.record(), rec);
    assert_eq!(got.ended_event().map(|e| e.data_count), Some(42));
    let page = s.list(&list(Some("R1"))).await.unwrap();
    let listed: Vec<&str> = page
        .sessions
        .iter()
        .map(|r| r.session_id.as_str())
        .collect();
    assert_eq!(listed, vec![live.as_str(), old.as_str(), older.as_str()]);
    assert_eq!(s.list(&list(None)).await.unwrap().sessions.len(), 3);
    let ended_only = ListQuery {
        state: Some(SessionState::Ended),
        ..list(Some("R1"))
    };
    assert_eq!(s.list(&ended_only).await.unwrap().sessions.len(), 2);
    // Never scheduled, never the active one.
    assert_eq!(s.scheduled(&old).await, None);
    let snap = s
        .snapshot(&SnapshotQuery {
            device_id: Some("R1".into()),
            ..SnapshotQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(snap.active.as_deref(), Some(live.as_str()));

    // It behaves as any ended session: an end answers its figures again, reports are
    // refused.
    let end = EndRequest {
        device_id: "R1".into(),
        session_id: Some(old.clone()),
        owner: "o9".into(),
        count: None,
    };
    let snap = s
        .snapshot(&SnapshotQuery {
            session_ids: vec![old.clone()],
            ..SnapshotQuery::default()
        })
        .await
        .unwrap();
    let Decision::Done(event) = machine::end(&snap, &end, &[], now) else {
        panic!()
    };
    assert_eq!((event.ended_at, event.data_count), (now - 1_000, 42));
    let report = ActivityRequest {
        device_id: "R1".into(),
        owner: "o9".into(),
        reports: vec![CountReport {
            session_id: old.clone(),
            accepted: 1,
        }],
    };
    assert_eq!(s.activity(&report, now).await.unwrap(), vec![old.clone()]);

    // Importing it again keeps what the store holds.
    let mut changed = rec.clone();
    changed.data_count = 1;
    assert_eq!(s.restore(changed), Ok(Restored::Present));
    assert_eq!(s.get(&old).await.unwrap().unwrap().data_count, 42);
}

#[tokio::test]
async fn restored_sessions_expire_retention_after_their_end() {
    let s = store();
    let now = now_ms();
    let id = ids::new_session_id();
    assert_eq!(
        s.restore(record(&id, "R2", now - 20_000, now - 10_000)),
        Ok(Restored::Inserted)
    );
    let ttl = s.record_ttl(&id).await.unwrap();
    assert!(ttl <= RETENTION_MS - 10_000 && ttl > RETENTION_MS - 20_000);
    s.advance(RETENTION_MS - 10_000);
    assert!(s.get(&id).await.unwrap().is_none());
    assert_eq!(s.device_index_len("R2").await, 0);

    // Already past its retention: not imported at all.
    let stale = ids::new_session_id();
    let at = s.now() - RETENTION_MS;
    assert_eq!(
        s.restore(record(&stale, "R2", at - 1, at)),
        Ok(Restored::Expired)
    );
    assert!(s.lock().rows.is_empty());
    // An end stamped in the future still gets no more than the retention from now.
    let future = ids::new_session_id();
    let now = s.now();
    assert_eq!(
        s.restore(record(&future, "R2", now, now + 1_000_000)),
        Ok(Restored::Inserted)
    );
    assert!(s.record_ttl(&future).await.unwrap() <= RETENTION_MS);
}

#[tokio::test]
async fn restore_refuses_what_is_not_an_ended_session() {
    let s = store();
    let id = ids::new_session_id();
    let now = now_ms();
    let mut active = record(&id, "R3", now, now);
    active.state = SessionState::Active;
    assert_eq!(s.restore(active), Err(RestoreError::NotEnded(id.clone())));
    let mut no_end = record(&id, "R3", now, now);
    no_end.ended_at = None;
    assert_eq!(s.restore(no_end), Err(RestoreError::NotEnded(id.clone())));
    let mut no_reason = record(&id, "R3", now, now);
    no_reason.reason = None;
    assert_eq!(
        s.restore(no_reason),
        Err(RestoreError::NotEnded(id.clone()))
    );
    assert_eq!(
        s.restore(record("bogus", "R3", now, now)),
        Err(RestoreError::InvalidId("bogus".into()))
    );
    assert_eq!(
        s.restore(record(&id, "no spaces", now, now)),
        Err(RestoreError::InvalidId(id.clone()))
    );
    assert!(s.lock().rows.is_empty());
    assert_eq!(s.lock().all.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_see_atomic_reports_and_commits() {
    let s = store();
    let id = start(&s, &start_req("C1", "r1", "o1"), 1_000).await;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..8 {
        let (s, id) = (s.clone(), id.clone());
        tasks.spawn(async move {
            for n in 1..=200 {
                let req = ActivityRequest {
                    device_id: "C1".into(),
                    owner: format!("c{c}"),
                    reports: vec![CountReport {
                        session_id: id.clone(),
                        accepted: n,
                    }],
                };
                assert!(s.activity(&req, 2_000).await.unwrap().is_empty());
                tokio::task::yield_now().await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let row = s.get(&id).await.unwrap().unwrap();
    assert_eq!((row.data_count, row.version), (8 * 200, 1 + 8 * 200));

    // Eight plans from the same snapshot: exactly one commits.
    let q = SnapshotQuery {
        session_ids: vec![id.clone()],
        ..SnapshotQuery::default()
    };
    let snap = s.snapshot(&q).await.unwrap();
    let end = EndRequest {
        device_id: "C1".into(),
        session_id: Some(id.clone()),
        owner: "o1".into(),
        count: None,
    };
    let Decision::Commit { plan, .. } = machine::end(&snap, &end, &[], 3_000) else {
        panic!()
    };
    let mut commits = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (s, plan) = (s.clone(), plan.clone());
        commits.spawn(async move { s.commit(&plan).await.unwrap() });
    }
    let mut committed = 0;
    while let Some(outcome) = commits.join_next().await {
        if outcome.unwrap() == CommitOutcome::Committed {
            committed += 1;
        }
    }
    assert_eq!(committed, 1);
    assert!(!s.get(&id).await.unwrap().unwrap().is_active());
}

#[test]
fn sorted_sets_order_and_range_as_redis_does() {
    let mut z = ZSet::default();
    for (m, s) in [
        ("b", 2),
        ("a", 2),
        ("c", 1),
        ("d", i64::MAX),
        ("e", i64::MIN),
    ] {
        z.add(m, s);
    }
    z.add("c", 3); // moved
    assert_eq!(z.len(), 5);
    assert_eq!(z.range_up_to(2, 10), vec!["e", "a", "b"]);
    assert_eq!(z.range_up_to(i64::MAX, 10), vec!["e", "a", "b", "c", "d"]);
    let rev = |max, offset, count| -> Vec<String> {
        z.rev_range(max, offset, count)
            .into_iter()
            .map(|(m, _)| m)
            .collect()
    };
    assert_eq!(rev(None, 0, 10), vec!["d", "c", "b", "a", "e"]);
    assert_eq!(rev(Some(2), 0, 10), vec!["b", "a", "e"]);
    assert_eq!(rev(Some(2), 1, 1), vec!["a"]);
    assert_eq!(rev(Some(i64::MAX), 0, 1), vec!["d"]);
    assert_eq!(rev(Some(i64::MIN), 0, 10), vec!["e"]);
    z.remove("a");
    z.remove("zz");
    assert_eq!(z.score("b"), Some(2));
    assert_eq!(z.score("a"), None);
    assert_eq!(z.order.len(), 4);
}
