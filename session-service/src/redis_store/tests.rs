//! The Redis store against a real `redis-server` started for each test on a free port in a
//! temporary directory (never the shared one on 6379).

use super::*;
use crate::machine::{self, ConflictPolicy, Decision, Settings};
use amr_proto::internal::{CountReport, EndRequest, StartRequest};
use std::process::{Child, Command, Stdio};

struct RedisProc {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn redis() -> RedisProc {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed for this test");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    RedisProc {
        child,
        port,
        _dir: dir,
    }
}

const RETENTION: Duration = Duration::from_secs(3600);

async fn store(r: &RedisProc) -> RedisStore {
    RedisStore::connect(
        &format!("redis://127.0.0.1:{}", r.port),
        Keys::new("t"),
        RETENTION,
        Duration::from_secs(1),
        Duration::from_secs(2),
    )
    .await
    .unwrap()
}

fn settings() -> Settings {
    Settings {
        policy: ConflictPolicy::Replace,
        idle_timeout_ms: 1_000,
        disconnect_grace_ms: 0,
        drain_grace_ms: 0,
    }
}

fn start_req(device: &str, request: &str, owner: &str) -> StartRequest {
    StartRequest {
        device_id: device.into(),
        request_id: request.into(),
        owner: owner.into(),
        gateway_id: "g".into(),
        adopt_session_id: None,
        current: None,
    }
}

async fn start(s: &RedisStore, req: &StartRequest, now: i64) -> String {
    let q = SnapshotQuery {
        device_id: Some(req.device_id.clone()),
        request_id: Some(req.request_id.clone()),
        session_ids: vec![],
    };
    let snap = s.snapshot(&q).await.unwrap();
    let id = ids::new_session_id();
    match machine::start(&settings(), &snap, req, &[], now, &id) {
        Decision::Commit { plan, reply } => {
            assert_eq!(s.commit(&plan).await.unwrap(), CommitOutcome::Committed);
            reply.session_id
        }
        other => panic!("{other:?}"),
    }
}

async fn raw(r: &RedisProc) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{}", r.port))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn start_end_round_trip_with_guards() {
    let r = redis().await;
    let s = store(&r).await;
    let keys = Keys::new("t");
    let now = 1_000_000;
    let id = start(&s, &start_req("D1", "r1", "o1"), now).await;

    let q = SnapshotQuery {
        device_id: Some("D1".into()),
        request_id: Some("r1".into()),
        session_ids: vec![],
    };
    let snap = s.snapshot(&q).await.unwrap();
    assert_eq!(snap.active.as_deref(), Some(id.as_str()));
    assert_eq!(snap.by_request.as_deref(), Some(id.as_str()));
    let row = snap.session(&id).unwrap().clone();
    assert_eq!(row.phase, Phase::Active { owner: "o1".into() });
    assert_eq!((row.version, row.deadline), (1, now + 1_000));

    let mut c = raw(&r).await;
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(keys.deadlines())
        .arg(&id)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(score, Some((now + 1_000) as f64));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(keys.request("D1", "r1"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 60_000);

    // A plan computed from an old snapshot is refused once the row moved on.
    let end = EndRequest {
        device_id: "D1".into(),
        session_id: Some(id.clone()),
        owner: "o1".into(),
        count: Some(CountReport {
            session_id: id.clone(),
            accepted: 3,
        }),
    };
    let Decision::Commit { plan, reply } = machine::end(&snap, &end, &[], now + 10) else {
        panic!()
    };
    let act = ActivityRequest {
        device_id: "D1".into(),
        owner: "o1".into(),
        reports: vec![CountReport {
            session_id: id.clone(),
            accepted: 2,
        }],
    };
    assert!(s.activity(&act, now + 5).await.unwrap().is_empty());
    assert_eq!(s.commit(&plan).await.unwrap(), CommitOutcome::Conflict);
    assert_eq!(reply.data_count, 3);

    let snap = s.snapshot(&q).await.unwrap();
    let Decision::Commit { plan, reply } = machine::end(&snap, &end, &[], now + 10) else {
        panic!()
    };
    assert_eq!(s.commit(&plan).await.unwrap(), CommitOutcome::Committed);
    // Activity said 2, the end said 3 (cumulative, same connection): 3, not 5.
    assert_eq!(reply.data_count, 3);
    let got = s.get(&id).await.unwrap().unwrap();
    assert_eq!(got.ended_event(), Some(reply));
    let snap = s.snapshot(&q).await.unwrap();
    assert_eq!(snap.active, None);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(keys.session(&id))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= RETENTION.as_millis() as i64);
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(keys.deadlines())
        .arg(&id)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(score, None);
    // Activity for an ended session is refused, and so are ids that name nothing.
    let mut late = act.clone();
    late.reports.push(CountReport {
        session_id: "bogus".into(),
        accepted: 1,
    });
    let mut inactive = s.activity(&late, now + 20).await.unwrap();
    inactive.sort();
    assert_eq!(inactive, vec!["bogus".to_string(), id.clone()]);
    assert_eq!(s.get(&id).await.unwrap().unwrap().data_count, 3);
}

#[tokio::test]
async fn activity_keeps_maxima_and_refreshes_the_owners_deadline() {
    let r = redis().await;
    let s = store(&r).await;
    let now = 2_000_000;
    let id = start(&s, &start_req("D2", "r1", "o1"), now).await;
    let report = |owner: &str, accepted| ActivityRequest {
        device_id: "D2".into(),
        owner: owner.into(),
        reports: vec![CountReport {
            session_id: id.clone(),
            accepted,
        }],
    };
    s.activity(&report("o1", 5), now + 100).await.unwrap();
    s.activity(&report("o1", 4), now + 200).await.unwrap();
    s.activity(&report("o2", 2), now + 300).await.unwrap();
    let row = s.get(&id).await.unwrap().unwrap();
    assert_eq!(row.data_count, 7);
    assert_eq!(row.accepted.get("o1"), Some(&5));
    assert_eq!(row.accepted.get("o2"), Some(&2));
    // Only the owner's reports move the idle deadline.
    assert_eq!(row.deadline, now + 200 + 1_000);
    assert_eq!(row.version, 4);
    // Another device's connection cannot touch it.
    let mut foreign = report("o1", 50);
    foreign.device_id = "D3".into();
    assert_eq!(s.activity(&foreign, now).await.unwrap(), vec![id.clone()]);
    assert_eq!(s.get(&id).await.unwrap().unwrap().data_count, 7);
}

#[tokio::test]
async fn sweeper_claims_are_exclusive() {
    let r = redis().await;
    let s = store(&r).await;
    let now = 3_000_000;
    let id = start(&s, &start_req("D4", "r1", "o1"), now).await;
    assert!(s.due(now, 10).await.unwrap().is_empty());
    let later = now + 1_000;
    assert_eq!(s.due(later, 10).await.unwrap(), vec![id.clone()]);
    assert!(s.claim_due(&id, later, 5_000).await.unwrap());
    assert!(
        !s.claim_due(&id, later, 5_000).await.unwrap(),
        "claimed once"
    );
    assert!(s.due(later, 10).await.unwrap().is_empty());
    // After the lease another replica may try again.
    assert!(s.claim_due(&id, later + 5_000, 5_000).await.unwrap());
}

#[tokio::test]
async fn listing_is_newest_first_paginated_filtered_and_trimmed() {
    let r = redis().await;
    let s = store(&r).await;
    let base = 4_000_000;
    let mut started = Vec::new();
    // Seven sessions of D5, two of them with the same start time; each start replaces the
    // previous one (same connection), so only the last is active.
    for (i, t) in [0, 1, 2, 2, 3, 4, 5].into_iter().enumerate() {
        let id = start(&s, &start_req("D5", &format!("r{i}"), "o1"), base + t).await;
        started.push(id);
    }
    start(&s, &start_req("D6", "r1", "o1"), base + 10).await;

    let page = |limit, cursor: Option<String>, state, device: Option<&str>| ListQuery {
        device_id: device.map(String::from),
        state,
        limit,
        cursor,
    };
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let p = s
            .list(&page(2, cursor.clone(), None, Some("D5")))
            .await
            .unwrap();
        assert!(p.sessions.len() <= 2);
        seen.extend(p.sessions.iter().map(|r| r.session_id.clone()));
        match p.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut expected = started.clone();
    expected.sort_by_key(|id| std::cmp::Reverse(id.clone()));
    // Newest first; equal start times in a stable order; nothing twice, nothing missing.
    assert_eq!(seen.len(), 7);
    let mut uniq = seen.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 7);
    assert_eq!(seen.first(), started.last());
    assert_eq!(seen.last(), started.first());

    let active = s
        .list(&page(100, None, Some(SessionState::Active), Some("D5")))
        .await
        .unwrap();
    assert_eq!(active.sessions.len(), 1);
    assert_eq!(Some(&active.sessions[0].session_id), started.last());
    assert_eq!(active.next_cursor, None);
    let ended = s
        .list(&page(100, None, Some(SessionState::Ended), None))
        .await
        .unwrap();
    assert_eq!(ended.sessions.len(), 6);
    let all = s.list(&page(100, None, None, None)).await.unwrap();
    assert_eq!(all.sessions.len(), 8);
    assert_eq!(all.sessions[0].device_id, "D6");

    // An expired record disappears from listings and from the indexes.
    let keys = Keys::new("t");
    let mut c = raw(&r).await;
    let _: () = redis::cmd("DEL")
        .arg(keys.session(&started[0]))
        .query_async(&mut c)
        .await
        .unwrap();
    let all = s.list(&page(100, None, None, Some("D5"))).await.unwrap();
    assert_eq!(all.sessions.len(), 6);
    let left: i64 = redis::cmd("ZCARD")
        .arg(keys.device_sessions("D5"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(left, 6);
    assert!(matches!(
        s.list(&page(10, Some("nonsense".into()), None, None)).await,
        Err(StoreError::InvalidCursor)
    ));
    assert!(s.get("session_nope").await.unwrap().is_none());
    assert!(s.ping().await);
}

#[tokio::test]
async fn a_dead_redis_fails_fast() {
    let r = redis().await;
    let s = store(&r).await;
    drop(r);
    let began = std::time::Instant::now();
    let q = SnapshotQuery {
        device_id: Some("D7".into()),
        ..SnapshotQuery::default()
    };
    assert!(matches!(
        s.snapshot(&q).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(!s.ping().await);
    assert!(began.elapsed() < Duration::from_secs(10));
}
