//! The behaviour every [`SessionStore`] must show, run against each store (Redis in
//! `redis_store/tests.rs`, memory in `memory_store/tests.rs`, both through
//! [`conformance_tests!`]) so that the stores cannot drift apart.

use super::*;
use crate::machine::{
    self, ConflictPolicy, Decision, Guard, Phase, Plan, Session, Settings, Write,
};
use amr_proto::events::SessionState;
use amr_proto::ids;
use amr_proto::internal::{ClaimRequest, CountReport, DisconnectRequest, EndRequest, StartRequest};
use amr_proto::EndReason;
use std::collections::BTreeMap;
use std::time::Duration;

/// Retention of the stores under test, unless a test says otherwise.
pub const RETENTION: Duration = Duration::from_secs(3600);
/// Retention for the test that waits for records to expire (real time, both stores).
pub const SHORT_RETENTION: Duration = Duration::from_millis(400);
/// Idle timeout the stores under test are built with (matches [`settings`]).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// Declares one `#[tokio::test]` per conformance test. `$make(retention).await` must return
/// (whatever has to live as long as the test, the store).
macro_rules! conformance_tests {
    ($make:path) => {
        $crate::store::conformance::conformance_tests!(@one $make, RETENTION, start_end_round_trip_with_guards);
        $crate::store::conformance::conformance_tests!(@one $make, RETENTION, guards_and_writes);
        $crate::store::conformance::conformance_tests!(@one $make, RETENTION, request_guard_checks_the_remembered_answer);
        $crate::store::conformance::conformance_tests!(@one $make, RETENTION, snapshot_reads);
        $crate::store::conformance::conformance_tests!(@one $make, RETENTION, activity_keeps_maxima_and_refreshes_the_owners_deadline);
        $crate::store::conformance::conformance_tests!(@one $make, RETENTION, activity_in_grace_and_after_a_hand_over);
        $crate::store::conformance::conformance_tests!(@one $make, RETENTION, sweeper_claims_are_exclusive);
        $crate::store::conformance::conformance_tests!(@one $make, RETENTION, gateway_index_follows_the_rows);
        $crate::store::conformance::conformance_tests!(@one $make, RETENTION, gateway_schedule_claims_and_forgetting);
        $crate::store::conformance::conformance_tests!(@one $make, RETENTION, listing_is_newest_first_paginated_filtered_and_trimmed);
        $crate::store::conformance::conformance_tests!(@one $make, RETENTION, listing_steps_over_long_runs_of_equal_start_times);
        $crate::store::conformance::conformance_tests!(@one $make, RETENTION, listing_hands_back_a_cursor_after_a_bounded_scan);
        $crate::store::conformance::conformance_tests!(@one $make, SHORT_RETENTION, ended_records_expire_after_the_retention);
    };
    (@one $make:path, $retention:ident, $name:ident) => {
        #[tokio::test]
        async fn $name() {
            let (_keep, store) = $make($crate::store::conformance::$retention).await;
            $crate::store::conformance::$name(&store).await;
        }
    };
}
pub(crate) use conformance_tests;

/// What a test needs to see or do beneath the trait (in Redis: raw commands on the keys).
pub(crate) trait Inspect {
    /// The session's score in the deadline schedule.
    async fn scheduled(&self, session_id: &str) -> Option<i64>;
    /// Milliseconds before the record expires (`None`: no record, or it does not expire).
    async fn record_ttl(&self, session_id: &str) -> Option<i64>;
    /// Milliseconds before the request memory forgets the request.
    async fn request_ttl(&self, device_id: &str, request_id: &str) -> Option<i64>;
    /// Deletes the record as its expiry would, leaving the indexes alone.
    async fn drop_record(&self, session_id: &str);
    /// Entries in the device's listing index.
    async fn device_index_len(&self, device_id: &str) -> usize;
    /// The gateway's score in the gateway schedule.
    async fn gateway_score(&self, gateway_id: &str) -> Option<i64>;
}

pub fn settings() -> Settings {
    Settings {
        policy: ConflictPolicy::Replace,
        idle_timeout_ms: 1_000,
        disconnect_grace_ms: 0,
        drain_grace_ms: 0,
        subjects: amr_proto::subjects::Subjects::default(),
    }
}

pub fn start_req(device: &str, request: &str, owner: &str) -> StartRequest {
    StartRequest {
        device_id: device.into(),
        request_id: request.into(),
        owner: owner.into(),
        gateway_id: "g".into(),
        adopt_session_id: None,
        current: None,
    }
}

/// Starts a session through the state machine; its id.
pub async fn start<S: SessionStore>(s: &S, req: &StartRequest, now: i64) -> String {
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

/// Runs a decision of the machine on a fresh snapshot of `session_ids` and commits it.
async fn decide_and_commit<S: SessionStore, T: std::fmt::Debug>(
    s: &S,
    session_ids: &[&str],
    decide: impl Fn(&Snapshot) -> Decision<T>,
) -> T {
    let q = SnapshotQuery {
        session_ids: session_ids.iter().map(|id| id.to_string()).collect(),
        ..SnapshotQuery::default()
    };
    let snap = s.snapshot(&q).await.unwrap();
    match decide(&snap) {
        Decision::Commit { plan, reply } => {
            assert_eq!(s.commit(&plan).await.unwrap(), CommitOutcome::Committed);
            reply
        }
        other => panic!("{other:?}"),
    }
}

/// A row written directly (not through the machine).
fn row(id: &str, device: &str, phase: Phase, started_at: i64, deadline: i64) -> Session {
    Session {
        session_id: id.into(),
        device_id: device.into(),
        phase,
        started_at,
        data_count: 0,
        accepted: BTreeMap::new(),
        gateway: "g".into(),
        replaced_session_id: None,
        pending_reason: EndReason::IdleTimeout,
        deadline,
        version: 1,
    }
}

fn ended(at: i64) -> Phase {
    Phase::Ended {
        reason: EndReason::ClientRequest,
        ended_at: at,
    }
}

fn active(owner: &str) -> Phase {
    Phase::Active {
        owner: owner.into(),
    }
}

async fn commit<S: SessionStore>(s: &S, guards: Vec<Guard>, writes: Vec<Write>) -> CommitOutcome {
    let plan = Plan {
        guards,
        writes,
        effects: vec![],
    };
    s.commit(&plan).await.unwrap()
}

/// Writes rows without guards, a few hundred per commit.
async fn put_all<S: SessionStore>(s: &S, rows: Vec<Session>) {
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let writes = rows.by_ref().take(500).map(Write::Put).collect();
        assert_eq!(commit(s, vec![], writes).await, CommitOutcome::Committed);
    }
}

fn version(id: &str, v: Option<u64>) -> Guard {
    Guard::Version {
        session_id: id.into(),
        version: v,
    }
}

fn pointer(device: &str, id: Option<&str>) -> Guard {
    Guard::ActivePointer {
        device_id: device.into(),
        session_id: id.map(String::from),
    }
}

fn list_query(
    limit: usize,
    cursor: Option<String>,
    state: Option<SessionState>,
    device: Option<&str>,
) -> ListQuery {
    ListQuery {
        device_id: device.map(String::from),
        state,
        limit,
        cursor,
    }
}

/// Every page of a listing, followed cursor by cursor: the ids, and the number of pages.
async fn list_all<S: SessionStore>(s: &S, mut q: ListQuery) -> (Vec<String>, usize) {
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let p = s.list(&q).await.unwrap();
        pages += 1;
        assert!(p.sessions.len() <= q.limit);
        seen.extend(p.sessions.iter().map(|r| r.session_id.clone()));
        match p.next_cursor {
            Some(c) => {
                assert_ne!(q.cursor.as_ref(), Some(&c), "the cursor must move on");
                q.cursor = Some(c);
            }
            None => return (seen, pages),
        }
    }
}

pub async fn start_end_round_trip_with_guards<S: SessionStore + Inspect>(s: &S) {
    let now = 1_000_000;
    let id = start(s, &start_req("D1", "r1", "o1"), now).await;

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
    assert_eq!(s.scheduled(&id).await, Some(now + 1_000));
    let ttl = s.request_ttl("D1", "r1").await.unwrap();
    assert!(ttl > 0 && ttl <= 60_000);
    // An active record never expires.
    assert_eq!(s.record_ttl(&id).await, None);

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
    let ttl = s.record_ttl(&id).await.unwrap();
    assert!(ttl > 0 && ttl <= RETENTION.as_millis() as i64);
    assert_eq!(s.scheduled(&id).await, None);
    // Activity for an ended session is refused, and so are ids that name nothing (those
    // are listed first).
    let mut late = act.clone();
    late.reports.insert(
        0,
        CountReport {
            session_id: ids::new_session_id(),
            accepted: 1,
        },
    );
    late.reports.push(CountReport {
        session_id: "bogus".into(),
        accepted: 1,
    });
    let inactive = s.activity(&late, now + 20).await.unwrap();
    assert_eq!(
        inactive,
        vec![
            "bogus".to_string(),
            late.reports[0].session_id.clone(),
            id.clone()
        ]
    );
    assert_eq!(s.get(&id).await.unwrap().unwrap().data_count, 3);
}

pub async fn guards_and_writes<S: SessionStore + Inspect>(s: &S) {
    let (a, b) = (ids::new_session_id(), ids::new_session_id());
    let put_a = |v: u64, accepted: &[(&str, u64)]| {
        let mut r = row(&a, "G1", active("o1"), 10, 5_000);
        r.version = v;
        r.accepted = accepted.iter().map(|(c, n)| (c.to_string(), *n)).collect();
        r.data_count = r.accepted.values().sum();
        Write::Put(r)
    };

    // Version: `None` means the row must not exist.
    let created = commit(s, vec![version(&a, None)], vec![put_a(1, &[("c1", 1)])]).await;
    assert_eq!(created, CommitOutcome::Committed);
    let again = commit(s, vec![version(&a, None)], vec![put_a(1, &[])]).await;
    assert_eq!(again, CommitOutcome::Conflict);
    let stale = commit(s, vec![version(&a, Some(2))], vec![put_a(3, &[])]).await;
    assert_eq!(stale, CommitOutcome::Conflict);
    assert_eq!(s.get(&a).await.unwrap().unwrap().version, 1);
    // A Put keeps the connection counts the new row does not name (fields are merged).
    let moved = commit(s, vec![version(&a, Some(1))], vec![put_a(2, &[("c2", 2)])]).await;
    assert_eq!(moved, CommitOutcome::Committed);
    let got = s.get(&a).await.unwrap().unwrap();
    assert_eq!(got.version, 2);
    assert_eq!(got.data_count, 2);
    assert_eq!(
        got.accepted,
        BTreeMap::from([("c1".to_string(), 1), ("c2".to_string(), 2)])
    );
    assert_eq!(s.scheduled(&a).await, Some(5_000));
    assert_eq!(s.record_ttl(&a).await, None);

    // Any failing guard: nothing at all is written.
    let refused = commit(
        s,
        vec![version(&a, Some(2)), pointer("G1", Some(&a))],
        vec![
            Write::Put(row(&b, "G1", active("o1"), 20, 6_000)),
            Write::SetActive {
                device_id: "G1".into(),
                session_id: b.clone(),
            },
        ],
    )
    .await;
    assert_eq!(refused, CommitOutcome::Conflict);
    assert!(s.get(&b).await.unwrap().is_none());
    assert_eq!(s.scheduled(&b).await, None);

    // The active pointer.
    let set = |id: &str| Write::SetActive {
        device_id: "G1".into(),
        session_id: id.into(),
    };
    let clear = |id: &str| Write::ClearActive {
        device_id: "G1".into(),
        session_id: id.into(),
    };
    assert_eq!(
        commit(s, vec![pointer("G1", None)], vec![set(&a)]).await,
        CommitOutcome::Committed
    );
    assert_eq!(
        commit(s, vec![pointer("G1", None)], vec![]).await,
        CommitOutcome::Conflict
    );
    assert_eq!(
        commit(s, vec![pointer("G1", Some(&b))], vec![]).await,
        CommitOutcome::Conflict
    );
    // ClearActive drops the pointer only while it names that session.
    assert_eq!(
        commit(s, vec![pointer("G1", Some(&a))], vec![clear(&b)]).await,
        CommitOutcome::Committed
    );
    assert_eq!(
        commit(s, vec![pointer("G1", Some(&a))], vec![clear(&a)]).await,
        CommitOutcome::Committed
    );
    assert_eq!(
        commit(s, vec![pointer("G1", None)], vec![]).await,
        CommitOutcome::Committed
    );

    // DeadlineDue reads the row's deadline (5 000), not the schedule.
    let due = |now| Guard::DeadlineDue {
        session_id: a.clone(),
        now,
    };
    let schedule = |id: &str, deadline| Write::Schedule {
        session_id: id.into(),
        deadline,
    };
    assert_eq!(
        commit(s, vec![due(4_999)], vec![schedule(&a, 1)]).await,
        CommitOutcome::Conflict
    );
    assert_eq!(
        commit(s, vec![due(5_000)], vec![schedule(&a, 1)]).await,
        CommitOutcome::Committed
    );
    assert_eq!(s.scheduled(&a).await, Some(1));
    assert_eq!(
        commit(s, vec![due(5_000)], vec![]).await,
        CommitOutcome::Committed,
        "the schedule moved, the row did not"
    );
    let missing = Guard::DeadlineDue {
        session_id: b.clone(),
        now: i64::MAX,
    };
    assert_eq!(
        commit(s, vec![missing], vec![]).await,
        CommitOutcome::Conflict
    );
    // Schedule and Unschedule do not look at rows.
    assert_eq!(
        commit(s, vec![], vec![schedule(&b, 7)]).await,
        CommitOutcome::Committed
    );
    assert_eq!(s.due(7, 10).await.unwrap(), vec![a.clone(), b.clone()]);
    let unschedule = Write::Unschedule {
        session_id: b.clone(),
    };
    assert_eq!(
        commit(s, vec![], vec![unschedule]).await,
        CommitOutcome::Committed
    );
    assert_eq!(s.scheduled(&b).await, None);

    // An ended row leaves the schedule and expires; written active again, it stays.
    let mut end_a = row(&a, "G1", ended(100), 10, 5_000);
    end_a.version = 3;
    assert_eq!(
        commit(s, vec![version(&a, Some(2))], vec![Write::Put(end_a)]).await,
        CommitOutcome::Committed
    );
    assert_eq!(s.scheduled(&a).await, None);
    assert!(s.record_ttl(&a).await.is_some());
    let got = s.get(&a).await.unwrap().unwrap();
    assert_eq!(got.phase, ended(100));
    assert_eq!(got.record().ended_at, Some(100));
    let mut back = row(&a, "G1", Phase::Detached, 10, 9_000);
    back.version = 4;
    back.replaced_session_id = Some(b.clone());
    assert_eq!(
        commit(s, vec![version(&a, Some(3))], vec![Write::Put(back)]).await,
        CommitOutcome::Committed
    );
    assert_eq!(s.record_ttl(&a).await, None);
    assert_eq!(s.scheduled(&a).await, Some(9_000));
    let got = s.get(&a).await.unwrap().unwrap();
    assert_eq!(got.phase, Phase::Detached);
    assert_eq!(got.record().ended_at, None);
    assert_eq!(got.replaced_session_id, Some(b.clone()));

    // Empty strings read back as absent: an owner "" is no owner.
    let mut blank = row(&b, "G1", active(""), 30, 9_500);
    blank.replaced_session_id = Some(String::new());
    assert_eq!(
        commit(s, vec![], vec![Write::Put(blank)]).await,
        CommitOutcome::Committed
    );
    let got = s.get(&b).await.unwrap().unwrap();
    assert_eq!(got.phase, Phase::Detached);
    assert_eq!(got.replaced_session_id, None);
}

/// `Guard::Request` holds while the request memory of `(deviceId, requestId)` names that
/// session (`None`: it names none), whatever the active pointer says.
pub async fn request_guard_checks_the_remembered_answer<S: SessionStore + Inspect>(s: &S) {
    let a = ids::new_session_id();
    let request = |request_id: &str, id: Option<&str>| Guard::Request {
        device_id: "Q1".into(),
        request_id: request_id.into(),
        session_id: id.map(String::from),
    };
    assert_eq!(
        commit(s, vec![request("q1", Some(&a))], vec![]).await,
        CommitOutcome::Conflict,
        "nothing remembered yet"
    );
    let remember = Write::RememberRequest {
        device_id: "Q1".into(),
        request_id: "q1".into(),
        session_id: a.clone(),
    };
    assert_eq!(
        commit(s, vec![request("q1", None)], vec![remember.clone()]).await,
        CommitOutcome::Committed
    );
    assert_eq!(
        commit(s, vec![request("q1", None)], vec![remember]).await,
        CommitOutcome::Conflict,
        "a remembered request refutes `None`, and nothing is written"
    );
    assert_eq!(
        commit(s, vec![request("q1", Some(&a))], vec![]).await,
        CommitOutcome::Committed
    );
    assert_eq!(
        commit(s, vec![request("q2", None)], vec![]).await,
        CommitOutcome::Committed,
        "another request of the device is another key"
    );
    assert!(s.request_ttl("Q1", "q1").await.is_some());
}

pub async fn snapshot_reads<S: SessionStore + Inspect>(s: &S) {
    let (a, b, c) = (
        ids::new_session_id(),
        ids::new_session_id(),
        ids::new_session_id(),
    );
    put_all(
        s,
        vec![
            row(&a, "H1", active("o1"), 1, 10),
            row(&b, "H1", ended(5), 2, 10),
        ],
    )
    .await;
    let writes = vec![
        Write::SetActive {
            device_id: "H1".into(),
            session_id: a.clone(),
        },
        Write::RememberRequest {
            device_id: "H1".into(),
            request_id: "q1".into(),
            session_id: b.clone(),
        },
        // A remembered request may name a row that is gone.
        Write::RememberRequest {
            device_id: "H1".into(),
            request_id: "q2".into(),
            session_id: c.clone(),
        },
    ];
    assert_eq!(commit(s, vec![], writes).await, CommitOutcome::Committed);

    let snap = |device: Option<&str>, request: Option<&str>, rows: &[&str]| {
        let q = SnapshotQuery {
            device_id: device.map(String::from),
            request_id: request.map(String::from),
            session_ids: rows.iter().map(|r| r.to_string()).collect(),
        };
        async move { s.snapshot(&q).await.unwrap() }
    };
    let ids_of = |snap: &Snapshot| {
        let mut v: Vec<String> = snap.sessions.iter().map(|s| s.session_id.clone()).collect();
        v.sort();
        v
    };
    let mut ab = vec![a.clone(), b.clone()];
    ab.sort();

    let got = snap(Some("H1"), Some("q1"), &[&a, &b, &c]).await;
    assert_eq!(got.active.as_deref(), Some(a.as_str()));
    assert_eq!(got.by_request.as_deref(), Some(b.as_str()));
    assert_eq!(ids_of(&got), ab, "each row once; absent rows missing");
    let got = snap(Some("H1"), Some("q2"), &[]).await;
    assert_eq!(got.by_request.as_deref(), Some(c.as_str()));
    assert_eq!(ids_of(&got), vec![a.clone()]);
    // Request memory is per device, and needs the device.
    assert_eq!(snap(Some("H2"), Some("q1"), &[]).await, Snapshot::default());
    let got = snap(None, Some("q1"), &[&b]).await;
    assert_eq!((&got.active, &got.by_request), (&None, &None));
    assert_eq!(ids_of(&got), vec![b.clone()]);
    assert_eq!(snap(None, None, &[]).await, Snapshot::default());
    let ttl = s.request_ttl("H1", "q1").await.unwrap();
    assert!(ttl > 0 && ttl <= 60_000);
    assert_eq!(s.request_ttl("H2", "q1").await, None);
}

pub async fn activity_keeps_maxima_and_refreshes_the_owners_deadline<S: SessionStore + Inspect>(
    s: &S,
) {
    let now = 2_000_000;
    let id = start(s, &start_req("D2", "r1", "o1"), now).await;
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
    assert_eq!(s.scheduled(&id).await, Some(now + 200 + 1_000));
    assert_eq!(row.version, 4);
    // Another device's connection cannot touch it.
    let mut foreign = report("o1", 50);
    foreign.device_id = "D3".into();
    assert_eq!(s.activity(&foreign, now).await.unwrap(), vec![id.clone()]);
    assert_eq!(s.get(&id).await.unwrap().unwrap().data_count, 7);
}

pub async fn activity_in_grace_and_after_a_hand_over<S: SessionStore + Inspect>(s: &S) {
    let now = 2_500_000;
    let id = start(s, &start_req("D8", "r1", "o1"), now).await;
    let grace = Settings {
        disconnect_grace_ms: 5_000,
        ..settings()
    };
    let gone = DisconnectRequest {
        device_id: "D8".into(),
        session_id: id.clone(),
        owner: "o1".into(),
        accepted: 1,
        drained: false,
    };
    decide_and_commit(s, &[&id], |snap| {
        machine::disconnect(&grace, snap, &gone, now + 50)
    })
    .await;
    let report = |owner: &str, counts: &[u64]| ActivityRequest {
        device_id: "D8".into(),
        owner: owner.into(),
        reports: counts
            .iter()
            .map(|n| CountReport {
                session_id: id.clone(),
                accepted: *n,
            })
            .collect(),
    };

    // In grace: counts still apply, the grace deadline does not move.
    assert!(s
        .activity(&report("o1", &[3]), now + 100)
        .await
        .unwrap()
        .is_empty());
    let row = s.get(&id).await.unwrap().unwrap();
    assert_eq!(row.phase, Phase::Detached);
    assert_eq!((row.data_count, row.version), (3, 3));
    assert_eq!(row.deadline, now + 50 + 5_000);
    assert_eq!(s.scheduled(&id).await, Some(now + 50 + 5_000));

    // Handed over to o2: the old owner's late reports count but do not refresh it.
    let claim = ClaimRequest {
        device_id: "D8".into(),
        session_id: id.clone(),
        owner: "o2".into(),
        gateway_id: "g2".into(),
    };
    decide_and_commit(s, &[&id], |snap| {
        machine::claim(&settings(), snap, &claim, &[], now + 200)
    })
    .await;
    assert!(s
        .activity(&report("o1", &[5]), now + 300)
        .await
        .unwrap()
        .is_empty());
    let row = s.get(&id).await.unwrap().unwrap();
    assert_eq!((row.data_count, row.deadline), (5, now + 200 + 1_000));
    // Several reports of one session in a batch: each applies in turn.
    assert!(s
        .activity(&report("o2", &[2, 1, 4]), now + 400)
        .await
        .unwrap()
        .is_empty());
    let row = s.get(&id).await.unwrap().unwrap();
    assert_eq!(row.data_count, 9);
    assert_eq!(row.version, 8);
    assert_eq!(row.deadline, now + 400 + 1_000);
    assert_eq!(s.scheduled(&id).await, Some(now + 400 + 1_000));
    assert_eq!(row.gateway, "g2");
    // Only a deadline that waits on idleness moves (whatever the phase says).
    let mut waiting = self::row(&ids::new_session_id(), "D8", active("o3"), 1, 77);
    waiting.pending_reason = EndReason::Disconnected;
    let waiting_id = waiting.session_id.clone();
    put_all(s, vec![waiting]).await;
    let mut own = report("o3", &[6]);
    own.reports[0].session_id = waiting_id.clone();
    assert!(s.activity(&own, now + 450).await.unwrap().is_empty());
    let got = s.get(&waiting_id).await.unwrap().unwrap();
    assert_eq!((got.data_count, got.deadline, got.version), (6, 77, 2));
    assert_eq!(s.scheduled(&waiting_id).await, Some(77));

    // Counts are exact up to 2^53, and capped there.
    s.activity(&report("o2", &[u64::MAX]), now + 500)
        .await
        .unwrap();
    let row = s.get(&id).await.unwrap().unwrap();
    assert_eq!(row.accepted.get("o2"), Some(&(1 << 53)));
    assert_eq!(row.data_count, 5 + (1 << 53));
}

pub async fn sweeper_claims_are_exclusive<S: SessionStore + Inspect>(s: &S) {
    let now = 3_000_000;
    let id = start(s, &start_req("D4", "r1", "o1"), now).await;
    assert!(s.due(now, 10).await.unwrap().is_empty());
    let later = now + 1_000;
    assert_eq!(s.due(later, 10).await.unwrap(), vec![id.clone()]);
    assert!(s.claim_due(&id, later, 5_000).await.unwrap());
    assert!(
        !s.claim_due(&id, later, 5_000).await.unwrap(),
        "claimed once"
    );
    assert!(s.due(later, 10).await.unwrap().is_empty());
    assert_eq!(s.scheduled(&id).await, Some(later + 5_000));
    // After the lease another replica may try again.
    assert!(s.claim_due(&id, later + 5_000, 5_000).await.unwrap());
    // Nothing scheduled: nothing to claim.
    assert!(!s
        .claim_due(&ids::new_session_id(), i64::MAX, 1)
        .await
        .unwrap());

    // Earliest first (equal deadlines by id), at most `limit`.
    let mut rows: Vec<Session> = (0..4)
        .map(|i| row(&ids::new_session_id(), "D4b", active("o"), 1, 100 + i / 2))
        .collect();
    rows.sort_by(|x, y| (x.deadline, &x.session_id).cmp(&(y.deadline, &y.session_id)));
    let expected: Vec<String> = rows.iter().map(|r| r.session_id.clone()).collect();
    put_all(s, rows).await;
    assert_eq!(s.due(101, 10).await.unwrap(), expected);
    assert_eq!(s.due(101, 3).await.unwrap(), expected[..3].to_vec());
    assert_eq!(s.due(100, 10).await.unwrap(), expected[..2].to_vec());
    assert!(s.due(99, 10).await.unwrap().is_empty());
    assert!(s.due(101, 0).await.unwrap().is_empty());
}

pub async fn gateway_index_follows_the_rows<S: SessionStore + Inspect>(s: &S) {
    let now = 6_000_000;
    let held = |gateway: &'static str| async move { s.gateway_sessions(gateway).await.unwrap() };
    let before = amr_proto::now_ms();
    let mut req = start_req("D20", "r1", "o1");
    req.gateway_id = "gA".into();
    let id = start(s, &req, now).await;
    assert_eq!(held("gA").await, vec![id.clone()]);
    assert!(held("g").await.is_empty());
    // A gateway holding a session is in the gateway schedule from then on (from the commit's
    // time, unless a heartbeat put it there before).
    let first_seen = s.gateway_score("gA").await.unwrap();
    assert!(first_seen >= before, "{first_seen} < {before}");
    s.heartbeat("gA", 123).await.unwrap();
    let mut req2 = start_req("D21", "r1", "o9");
    req2.gateway_id = "gA".into();
    let other = start(s, &req2, now).await;
    assert_eq!(
        s.gateway_score("gA").await,
        Some(123),
        "a commit never moves a heartbeat"
    );
    let mut both = vec![id.clone(), other.clone()];
    both.sort();
    assert_eq!(held("gA").await, both);

    // Claimed by a connection of gB: the session moves.
    let claim = |owner: &str, gateway: &str| ClaimRequest {
        device_id: "D20".into(),
        session_id: id.clone(),
        owner: owner.into(),
        gateway_id: gateway.into(),
    };
    let c = claim("o2", "gB");
    let o1_answered = [machine::Revoked {
        session_id: id.clone(),
        owner: "o1".into(),
        count: machine::RevokedCount::Accepted(0),
    }];
    decide_and_commit(s, &[&id], |snap| {
        machine::claim(&settings(), snap, &c, &o1_answered, now + 10)
    })
    .await;
    assert_eq!(held("gA").await, vec![other.clone()]);
    assert_eq!(held("gB").await, vec![id.clone()]);
    // Activity changes no owner.
    let act = ActivityRequest {
        device_id: "D20".into(),
        owner: "o2".into(),
        reports: vec![CountReport {
            session_id: id.clone(),
            accepted: 3,
        }],
    };
    assert!(s.activity(&act, now + 20).await.unwrap().is_empty());
    assert_eq!(held("gB").await, vec![id.clone()]);

    // Detached (in grace): held by nobody, in no set.
    let grace = Settings {
        disconnect_grace_ms: 5_000,
        ..settings()
    };
    let gone = DisconnectRequest {
        device_id: "D20".into(),
        session_id: id.clone(),
        owner: "o2".into(),
        accepted: 3,
        drained: false,
    };
    decide_and_commit(s, &[&id], |snap| {
        machine::disconnect(&grace, snap, &gone, now + 30)
    })
    .await;
    assert!(held("gB").await.is_empty());
    assert_eq!(held("gA").await, vec![other.clone()]);
    // Resumed by a connection of gA: back in gA's set.
    let c = claim("o3", "gA");
    decide_and_commit(s, &[&id], |snap| {
        machine::claim(&settings(), snap, &c, &[], now + 40)
    })
    .await;
    assert_eq!(held("gA").await, both);

    // Replaced by the same connection's new start on gB: the old one leaves, the new enters.
    let mut restart = start_req("D20", "r2", "o3");
    restart.gateway_id = "gB".into();
    let next = start(s, &restart, now + 50).await;
    assert_eq!(held("gA").await, vec![other.clone()]);
    assert_eq!(held("gB").await, vec![next.clone()]);
    // Ended: in no set.
    let end = EndRequest {
        device_id: "D20".into(),
        session_id: Some(next.clone()),
        owner: "o3".into(),
        count: None,
    };
    decide_and_commit(s, &[&next], |snap| machine::end(snap, &end, &[], now + 60)).await;
    assert!(held("gB").await.is_empty());

    // Rows written directly: the index follows the row, whatever wrote it.
    let x = ids::new_session_id();
    let mut r = row(&x, "D22", active("o"), 1, 10);
    r.gateway = "gC".into();
    // A commit refused by a guard changes no index.
    assert_eq!(
        commit(s, vec![version(&x, Some(7))], vec![Write::Put(r.clone())]).await,
        CommitOutcome::Conflict
    );
    assert!(held("gC").await.is_empty());
    assert_eq!(s.gateway_score("gC").await, None);
    let mut blank = r.clone();
    blank.phase = active("");
    put_all(s, vec![blank]).await;
    assert!(held("gC").await.is_empty(), "an owner \"\" holds nothing");
    assert_eq!(s.gateway_score("gC").await, None);
    put_all(s, vec![r.clone()]).await;
    assert_eq!(held("gC").await, vec![x.clone()]);
    let mut moved = r.clone();
    moved.gateway = "gD".into();
    put_all(s, vec![moved.clone()]).await;
    assert!(held("gC").await.is_empty());
    assert_eq!(held("gD").await, vec![x.clone()]);
    moved.phase = ended(20);
    put_all(s, vec![moved]).await;
    assert!(held("gD").await.is_empty());
    assert_eq!(held("gA").await, vec![other]);
}

pub async fn gateway_schedule_claims_and_forgetting<S: SessionStore + Inspect>(s: &S) {
    s.heartbeat("gX", 1_000).await.unwrap();
    s.heartbeat("gY", 2_000).await.unwrap();
    assert!(s.silent_gateways(999, 10).await.unwrap().is_empty());
    assert_eq!(s.silent_gateways(1_000, 10).await.unwrap(), vec!["gX"]);
    assert_eq!(
        s.silent_gateways(5_000, 10).await.unwrap(),
        vec!["gX", "gY"]
    );
    assert_eq!(s.silent_gateways(5_000, 1).await.unwrap(), vec!["gX"]);
    // A later heartbeat replaces an earlier one.
    s.heartbeat("gY", 1_500).await.unwrap();
    assert_eq!(s.gateway_score("gY").await, Some(1_500));

    // One claim per lease; the claim's score is its token.
    assert!(s.claim_gateway("gX", 1_000, 9_000).await.unwrap());
    assert!(
        !s.claim_gateway("gX", 1_000, 9_000).await.unwrap(),
        "claimed once"
    );
    assert_eq!(s.gateway_score("gX").await, Some(9_000));
    assert_eq!(s.silent_gateways(5_000, 10).await.unwrap(), vec!["gY"]);
    assert!(!s.claim_gateway("gY", 1_499, 9_000).await.unwrap());
    assert!(!s.claim_gateway("nobody", i64::MAX, 1).await.unwrap());
    assert_eq!(s.gateway_score("nobody").await, None);

    // Not forgotten while it holds a session.
    let id = ids::new_session_id();
    let mut r = row(&id, "D30", active("o"), 1, 10);
    r.gateway = "gX".into();
    put_all(s, vec![r.clone()]).await;
    assert_eq!(s.gateway_score("gX").await, Some(9_000));
    assert!(!s.forget_gateway("gX", 9_000).await.unwrap());
    assert_eq!(s.gateway_sessions("gX").await.unwrap(), vec![id.clone()]);
    r.phase = ended(5);
    put_all(s, vec![r]).await;
    // Nor with another claim's token, nor after a heartbeat since the claim.
    assert!(!s.forget_gateway("gX", 8_999).await.unwrap());
    s.heartbeat("gX", 9_500).await.unwrap();
    assert!(!s.forget_gateway("gX", 9_000).await.unwrap());
    assert_eq!(s.gateway_score("gX").await, Some(9_500));
    // Claimed again, empty, no heartbeat since: forgotten.
    assert!(s.claim_gateway("gX", 9_500, 20_000).await.unwrap());
    assert!(s.forget_gateway("gX", 20_000).await.unwrap());
    assert_eq!(s.gateway_score("gX").await, None);
    assert!(s.gateway_sessions("gX").await.unwrap().is_empty());
    assert_eq!(s.silent_gateways(i64::MAX, 10).await.unwrap(), vec!["gY"]);
    assert!(!s.forget_gateway("gX", 20_000).await.unwrap());
    // A forgotten gateway that holds a session again is scheduled again.
    let before = amr_proto::now_ms();
    let again = ids::new_session_id();
    let mut r = row(&again, "D31", active("o"), 1, 10);
    r.gateway = "gX".into();
    put_all(s, vec![r]).await;
    assert!(s.gateway_score("gX").await.unwrap() >= before);
}

pub async fn listing_is_newest_first_paginated_filtered_and_trimmed<S: SessionStore + Inspect>(
    s: &S,
) {
    let base = 4_000_000;
    let mut started = Vec::new();
    // Seven sessions of D5, two of them with the same start time; each start replaces the
    // previous one (same connection), so only the last is active.
    for (i, t) in [0, 1, 2, 2, 3, 4, 5].into_iter().enumerate() {
        let id = start(s, &start_req("D5", &format!("r{i}"), "o1"), base + t).await;
        started.push(id);
    }
    start(s, &start_req("D6", "r1", "o1"), base + 10).await;

    let (seen, pages) = list_all(s, list_query(2, None, None, Some("D5"))).await;
    assert_eq!(pages, 4);
    // Newest first; equal start times by descending id; nothing twice, nothing missing.
    let mut expected = started.clone();
    expected[2..4].sort();
    expected.reverse();
    assert_eq!(seen, expected);
    let p = s
        .list(&list_query(2, None, None, Some("D5")))
        .await
        .unwrap();
    assert_eq!(
        p.next_cursor,
        Some(format!("{}:{}", base + 4, started[5])),
        "the cursor is <startedAt>:<sessionId> of the last entry"
    );

    let act = s
        .list(&list_query(
            100,
            None,
            Some(SessionState::Active),
            Some("D5"),
        ))
        .await
        .unwrap();
    assert_eq!(act.sessions.len(), 1);
    assert_eq!(Some(&act.sessions[0].session_id), started.last());
    assert_eq!(act.next_cursor, None);
    let ended = s
        .list(&list_query(100, None, Some(SessionState::Ended), None))
        .await
        .unwrap();
    assert_eq!(ended.sessions.len(), 6);
    let all = s.list(&list_query(100, None, None, None)).await.unwrap();
    assert_eq!(all.sessions.len(), 8);
    assert_eq!(all.sessions[0].device_id, "D6");
    assert!(s
        .list(&list_query(10, None, None, Some("D404")))
        .await
        .unwrap()
        .sessions
        .is_empty());

    // An expired record disappears from listings and from the indexes.
    s.drop_record(&started[0]).await;
    let all = s
        .list(&list_query(100, None, None, Some("D5")))
        .await
        .unwrap();
    assert_eq!(all.sessions.len(), 6);
    assert_eq!(s.device_index_len("D5").await, 6);
    assert!(matches!(
        s.list(&list_query(10, Some("nonsense".into()), None, None))
            .await,
        Err(StoreError::InvalidCursor)
    ));
    assert!(matches!(
        s.list(&list_query(10, Some("12:session_nope".into()), None, None))
            .await,
        Err(StoreError::InvalidCursor)
    ));
    assert!(s.get("session_nope").await.unwrap().is_none());
    assert!(s.ping().await);
}

pub async fn listing_steps_over_long_runs_of_equal_start_times<S: SessionStore + Inspect>(s: &S) {
    // 450 sessions started in the same millisecond (longer than two listing batches), and a
    // few around them.
    let mut rows: Vec<Session> = (0..450)
        .map(|_| row(&ids::new_session_id(), "L1", ended(1), 5_000, 0))
        .collect();
    for t in [4_999, 5_001, 5_001, 5_002] {
        rows.push(row(&ids::new_session_id(), "L1", ended(1), t, 0));
    }
    let mut expected: Vec<(i64, String)> = rows
        .iter()
        .map(|r| (r.started_at, r.session_id.clone()))
        .collect();
    expected.sort_by(|x, y| y.cmp(x));
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();
    put_all(s, rows).await;

    for limit in [100, 7, 450, 1000] {
        let (seen, _) = list_all(s, list_query(limit, None, None, Some("L1"))).await;
        assert_eq!(seen, expected, "limit {limit}");
    }
    let (seen, pages) = list_all(s, list_query(100, None, None, None)).await;
    assert_eq!((seen, pages), (expected, 5));
}

pub async fn listing_hands_back_a_cursor_after_a_bounded_scan<S: SessionStore + Inspect>(s: &S) {
    // 4 100 ended sessions, newer than the only active one: a listing of active sessions
    // examines a bounded number of entries, then hands back a cursor. 20 batches of 200,
    // each after the first starting at the entry it stopped at: 200 + 19 * 199 = 3 981.
    let mut rows: Vec<Session> = (0..4_100)
        .map(|i| row(&ids::new_session_id(), "B1", ended(1), 10_000 + i, 0))
        .collect();
    let oldest = ids::new_session_id();
    rows.push(row(&oldest, "B1", active("o"), 9_999, 1));
    let last_examined = rows[4_099 - 3_980].clone();
    put_all(s, rows).await;

    let q = list_query(10, None, Some(SessionState::Active), Some("B1"));
    let first = s.list(&q).await.unwrap();
    assert!(first.sessions.is_empty());
    assert_eq!(
        first.next_cursor,
        Some(format!(
            "{}:{}",
            last_examined.started_at, last_examined.session_id
        ))
    );
    let second = s
        .list(&ListQuery {
            cursor: first.next_cursor,
            ..q
        })
        .await
        .unwrap();
    assert_eq!(second.sessions.len(), 1);
    assert_eq!(second.sessions[0].session_id, oldest);
    assert_eq!(second.next_cursor, None);
}

pub async fn ended_records_expire_after_the_retention<S: SessionStore + Inspect>(s: &S) {
    let now = 5_000_000;
    let id = start(s, &start_req("D11", "r1", "o1"), now).await;
    let end = EndRequest {
        device_id: "D11".into(),
        session_id: None,
        owner: "o1".into(),
        count: None,
    };
    let q = SnapshotQuery {
        device_id: Some("D11".into()),
        request_id: Some("r1".into()),
        session_ids: vec![id.clone()],
    };
    let snap = s.snapshot(&q).await.unwrap();
    let Decision::Commit { plan, .. } = machine::end(&snap, &end, &[], now + 1) else {
        panic!()
    };
    assert_eq!(s.commit(&plan).await.unwrap(), CommitOutcome::Committed);
    assert!(s.get(&id).await.unwrap().is_some());
    let ttl = s.record_ttl(&id).await.unwrap();
    assert!(ttl > 0 && ttl <= SHORT_RETENTION.as_millis() as i64);

    tokio::time::sleep(SHORT_RETENTION + Duration::from_millis(300)).await;
    assert!(s.get(&id).await.unwrap().is_none());
    let snap = s.snapshot(&q).await.unwrap();
    // The request memory (60 s) outlives the record.
    assert_eq!(snap.by_request.as_deref(), Some(id.as_str()));
    assert!(snap.sessions.is_empty());
    let page = s
        .list(&list_query(10, None, None, Some("D11")))
        .await
        .unwrap();
    assert!(page.sessions.is_empty());
    assert_eq!(page.next_cursor, None);
    assert_eq!(s.device_index_len("D11").await, 0);
    // The id names nothing any more.
    assert_eq!(
        commit(s, vec![version(&id, None)], vec![]).await,
        CommitOutcome::Committed
    );
    let late = ActivityRequest {
        device_id: "D11".into(),
        owner: "o1".into(),
        reports: vec![CountReport {
            session_id: id.clone(),
            accepted: 1,
        }],
    };
    assert_eq!(s.activity(&late, now).await.unwrap(), vec![id]);
}
