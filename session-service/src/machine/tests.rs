//! Every transition of the state machine, with plain values.

use super::*;
use amr_proto::internal::CountReport;
use std::collections::HashMap;

const NOW: i64 = 1_000_000;
const DEV: &str = "AMR_1";
const A: &str = "session_0000000000000000000000000000000a";
const B: &str = "session_0000000000000000000000000000000b";
const C: &str = "session_0000000000000000000000000000000c";
const ME: &str = "amr.internal.gw.g1.c1";
const OTHER: &str = "amr.internal.gw.g2.c9";

fn cfg() -> Settings {
    Settings {
        policy: ConflictPolicy::Replace,
        idle_timeout_ms: 1_000,
        disconnect_grace_ms: 0,
        drain_grace_ms: 5_000,
        subjects: Subjects::default(),
    }
}

fn with_grace(grace: i64) -> Settings {
    Settings {
        disconnect_grace_ms: grace,
        ..cfg()
    }
}

/// An active session of DEV held by `owner` ("" = detached), `count` samples all reported
/// by the owner.
fn active(id: &str, owner: &str, count: u64) -> Session {
    let mut accepted = BTreeMap::new();
    if count > 0 {
        accepted.insert(owner.to_string(), count);
    }
    Session {
        session_id: id.into(),
        device_id: DEV.into(),
        phase: if owner.is_empty() {
            Phase::Detached
        } else {
            Phase::Active {
                owner: owner.into(),
            }
        },
        started_at: NOW - 500,
        data_count: count,
        accepted,
        gateway: "g".into(),
        replaced_session_id: None,
        pending_reason: if owner.is_empty() {
            EndReason::Disconnected
        } else {
            EndReason::IdleTimeout
        },
        deadline: NOW + 500,
        version: 3,
    }
}

fn ended(id: &str, reason: EndReason, count: u64) -> Session {
    Session {
        phase: Phase::Ended {
            reason,
            ended_at: NOW - 100,
        },
        ..active(id, ME, count)
    }
}

fn snap_with_active(s: Session) -> Snapshot {
    Snapshot {
        active: Some(s.session_id.clone()),
        by_request: None,
        sessions: vec![s],
    }
}

fn start_req() -> StartRequest {
    StartRequest {
        device_id: DEV.into(),
        request_id: "r1".into(),
        owner: ME.into(),
        gateway_id: "g1".into(),
        adopt_session_id: None,
        current: None,
    }
}

fn end_req(session_id: Option<&str>) -> EndRequest {
    EndRequest {
        device_id: DEV.into(),
        session_id: session_id.map(String::from),
        owner: ME.into(),
        count: None,
    }
}

fn revoked(session_id: &str, owner: &str, count: RevokedCount) -> Vec<Revoked> {
    vec![Revoked {
        session_id: session_id.into(),
        owner: owner.into(),
        count,
    }]
}

fn commit<T: std::fmt::Debug>(d: Decision<T>) -> (Plan, T) {
    match d {
        Decision::Commit { plan, reply } => (plan, reply),
        other => panic!("expected a commit, got {other:?}"),
    }
}

fn fail<T: std::fmt::Debug>(d: Decision<T>) -> ServiceError {
    match d {
        Decision::Fail(e) => e,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn put<'a>(plan: &'a Plan, id: &str) -> &'a Session {
    plan.writes
        .iter()
        .find_map(|w| match w {
            Write::Put(s) if s.session_id == id => Some(s),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no row written for {id}: {plan:?}"))
}

fn pushes(plan: &Plan) -> Vec<(&str, &SessionEndedEvent)> {
    plan.effects
        .iter()
        .filter_map(|e| match e {
            Effect::PushEnded { owner, event } => Some((owner.as_str(), event)),
            _ => None,
        })
        .collect()
}

fn ended_events(plan: &Plan) -> Vec<&SessionEndedEvent> {
    plan.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Ended(ev) => Some(ev),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------- start

#[test]
fn start_without_active_session_creates_one() {
    let (plan, ok) = commit(start(
        &cfg(),
        &Snapshot::default(),
        &start_req(),
        &[],
        NOW,
        C,
    ));
    assert_eq!(ok.session_id, C);
    assert_eq!(ok.started_at, NOW);
    assert_eq!(ok.replaced_session_id, None);
    let row = put(&plan, C);
    assert_eq!(row.phase, Phase::Active { owner: ME.into() });
    assert_eq!((row.data_count, row.version), (0, 1));
    assert_eq!(row.deadline, NOW + 1_000);
    assert_eq!(row.pending_reason, EndReason::IdleTimeout);
    assert!(plan.guards.contains(&Guard::ActivePointer {
        device_id: DEV.into(),
        session_id: None
    }));
    assert!(plan.guards.contains(&Guard::Version {
        session_id: C.into(),
        version: None
    }));
    assert!(plan.writes.contains(&Write::SetActive {
        device_id: DEV.into(),
        session_id: C.into()
    }));
    assert!(plan.writes.contains(&Write::RememberRequest {
        device_id: DEV.into(),
        request_id: "r1".into(),
        session_id: C.into()
    }));
    assert_eq!(
        plan.effects,
        vec![Effect::Created(SessionCreatedEvent {
            session_id: C.into(),
            device_id: DEV.into(),
            started_at: NOW,
            replaced_session_id: None,
        })]
    );
}

#[test]
fn start_retry_with_same_request_id_answers_the_same_even_after_the_end() {
    let mut first = ended(B, EndReason::ClientRequest, 4);
    first.replaced_session_id = Some(A.into());
    let snap = Snapshot {
        active: None,
        by_request: Some(B.into()),
        sessions: vec![first.clone()],
    };
    match start(&cfg(), &snap, &start_req(), &[], NOW, C) {
        Decision::Done(ok) => {
            assert_eq!(ok.session_id, B);
            assert_eq!(ok.started_at, first.started_at);
            assert_eq!(ok.replaced_session_id.as_deref(), Some(A));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn start_with_reject_policy_refuses_even_the_owner() {
    let cfg = Settings {
        policy: ConflictPolicy::Reject,
        ..cfg()
    };
    let snap = snap_with_active(active(A, ME, 2));
    let mut req = start_req();
    req.current = Some(CountReport {
        session_id: A.into(),
        accepted: 2,
    });
    let e = fail(start(&cfg, &snap, &req, &[], NOW, C));
    assert_eq!(e.code, ErrorCode::SessionAlreadyActive);
    assert_eq!(e.session_id.as_deref(), Some(A));
}

#[test]
fn start_replacing_own_session_uses_its_count_and_pushes_nothing() {
    let snap = snap_with_active(active(A, ME, 5));
    let mut req = start_req();
    req.current = Some(CountReport {
        session_id: A.into(),
        accepted: 7,
    });
    let (plan, ok) = commit(start(&cfg(), &snap, &req, &[], NOW, C));
    assert_eq!(ok.replaced_session_id.as_deref(), Some(A));
    let a = put(&plan, A);
    assert_eq!(
        a.phase,
        Phase::Ended {
            reason: EndReason::Replaced,
            ended_at: NOW
        }
    );
    assert_eq!(a.data_count, 7);
    assert_eq!(a.version, 4);
    assert!(pushes(&plan).is_empty());
    assert_eq!(ended_events(&plan)[0].data_count, 7);
    assert!(plan.guards.contains(&Guard::Version {
        session_id: A.into(),
        version: Some(3)
    }));
    assert!(plan.guards.contains(&Guard::ActivePointer {
        device_id: DEV.into(),
        session_id: Some(A.into())
    }));
    assert!(plan.writes.contains(&Write::ClearActive {
        device_id: DEV.into(),
        session_id: A.into()
    }));
    // The ended event comes before the created one; created names the replaced session.
    assert!(matches!(plan.effects[0], Effect::Ended(_)));
    assert!(matches!(
        plan.effects.last(),
        Some(Effect::Created(SessionCreatedEvent { replaced_session_id: Some(r), .. })) if r == A
    ));
    assert_eq!(put(&plan, C).replaced_session_id.as_deref(), Some(A));
}

#[test]
fn start_replacing_another_connections_session_revokes_then_tells_it() {
    let snap = snap_with_active(active(A, OTHER, 5));
    match start(&cfg(), &snap, &start_req(), &[], NOW, C) {
        Decision::Revoke {
            device_id,
            session_id,
            owner,
        } => {
            assert_eq!(
                (device_id.as_str(), session_id.as_str(), owner.as_str()),
                (DEV, A, OTHER)
            );
        }
        other => panic!("{other:?}"),
    }
    let r = revoked(A, OTHER, RevokedCount::Accepted(9));
    let (plan, ok) = commit(start(&cfg(), &snap, &start_req(), &r, NOW, C));
    assert_eq!(ok.replaced_session_id.as_deref(), Some(A));
    assert_eq!(put(&plan, A).data_count, 9);
    let p = pushes(&plan);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0, OTHER);
    assert_eq!(p[0].1.reason, EndReason::Replaced);
    assert_eq!(p[0].1.data_count, 9);
}

#[test]
fn start_replacing_a_silent_owner_takes_the_stream_total() {
    let snap = snap_with_active(active(A, OTHER, 6));
    let r = revoked(A, OTHER, RevokedCount::StreamTotal(Some(10)));
    let (plan, _) = commit(start(&cfg(), &snap, &start_req(), &r, NOW, C));
    assert_eq!(put(&plan, A).data_count, 10);
    assert_eq!(put(&plan, A).accepted.get(OTHER), Some(&10));

    let r = revoked(A, OTHER, RevokedCount::StreamTotal(None));
    let (plan, _) = commit(start(&cfg(), &snap, &start_req(), &r, NOW, C));
    assert_eq!(put(&plan, A).data_count, 6);

    // The stream never lowers a count.
    let r = revoked(A, OTHER, RevokedCount::StreamTotal(Some(2)));
    let (plan, _) = commit(start(&cfg(), &snap, &start_req(), &r, NOW, C));
    assert_eq!(put(&plan, A).data_count, 6);
}

#[test]
fn start_replacing_a_detached_session_needs_no_revoke_and_pushes_nothing() {
    let snap = snap_with_active(active(A, "", 3));
    let (plan, ok) = commit(start(&cfg(), &snap, &start_req(), &[], NOW, C));
    assert_eq!(ok.replaced_session_id.as_deref(), Some(A));
    assert_eq!(put(&plan, A).data_count, 3);
    assert!(pushes(&plan).is_empty());
}

#[test]
fn start_ignores_a_stale_pointer_to_an_ended_session() {
    let snap = snap_with_active(ended(A, EndReason::ClientRequest, 1));
    let (plan, ok) = commit(start(&cfg(), &snap, &start_req(), &[], NOW, C));
    assert_eq!(ok.replaced_session_id, None);
    assert!(ended_events(&plan).is_empty());
    // Still guarded by the pointer it saw.
    assert!(plan.guards.contains(&Guard::ActivePointer {
        device_id: DEV.into(),
        session_id: Some(A.into())
    }));
}

#[test]
fn start_adopts_a_valid_new_provisional_id_only() {
    let mut req = start_req();
    req.adopt_session_id = Some(B.into());
    let (plan, ok) = commit(start(&cfg(), &Snapshot::default(), &req, &[], NOW, C));
    assert_eq!(ok.session_id, B);
    put(&plan, B);

    req.adopt_session_id = Some("session_nope".into());
    let e = fail(start(&cfg(), &Snapshot::default(), &req, &[], NOW, C));
    assert_eq!(e.code, ErrorCode::InvalidMessage);

    req.adopt_session_id = Some(B.into());
    let exists = Snapshot {
        sessions: vec![ended(B, EndReason::ClientRequest, 0)],
        ..Snapshot::default()
    };
    let e = fail(start(&cfg(), &exists, &req, &[], NOW, C));
    assert_eq!(e.code, ErrorCode::InvalidMessage);
}

// ---------------------------------------------------------------- end

#[test]
fn end_by_the_owner_adds_its_count() {
    let snap = snap_with_active(active(A, ME, 5));
    let mut req = end_req(Some(A));
    req.count = Some(CountReport {
        session_id: A.into(),
        accepted: 8,
    });
    let (plan, ev) = commit(end(&snap, &req, &[], NOW));
    assert_eq!(ev.reason, EndReason::ClientRequest);
    assert_eq!(ev.data_count, 8);
    assert_eq!((ev.started_at, ev.ended_at), (NOW - 500, NOW));
    assert!(pushes(&plan).is_empty());
    assert_eq!(ended_events(&plan), vec![&ev]);
    assert!(plan.writes.contains(&Write::ClearActive {
        device_id: DEV.into(),
        session_id: A.into()
    }));
}

#[test]
fn end_reports_are_cumulative_not_added_twice() {
    let snap = snap_with_active(active(A, ME, 5));
    let mut req = end_req(Some(A));
    // Already reported by activity: no change.
    req.count = Some(CountReport {
        session_id: A.into(),
        accepted: 5,
    });
    let (_, ev) = commit(end(&snap, &req, &[], NOW));
    assert_eq!(ev.data_count, 5);
    // A count naming another session is ignored.
    req.count = Some(CountReport {
        session_id: B.into(),
        accepted: 50,
    });
    let (_, ev) = commit(end(&snap, &req, &[], NOW));
    assert_eq!(ev.data_count, 5);
}

#[test]
fn end_without_id_ends_the_active_session_or_says_none() {
    let snap = snap_with_active(active(A, ME, 1));
    let (_, ev) = commit(end(&snap, &end_req(None), &[], NOW));
    assert_eq!(ev.session_id, A);
    let e = fail(end(&Snapshot::default(), &end_req(None), &[], NOW));
    assert_eq!(e.code, ErrorCode::NoActiveSession);
}

#[test]
fn end_of_unknown_or_foreign_session_is_not_found() {
    let e = fail(end(&Snapshot::default(), &end_req(Some(B)), &[], NOW));
    assert_eq!(e.code, ErrorCode::SessionNotFound);
    assert_eq!(e.session_id.as_deref(), Some(B));
    let mut foreign = active(B, OTHER, 1);
    foreign.device_id = "AMR_2".into();
    let snap = Snapshot {
        sessions: vec![foreign],
        ..Snapshot::default()
    };
    let e = fail(end(&snap, &end_req(Some(B)), &[], NOW));
    assert_eq!(e.code, ErrorCode::SessionNotFound);
}

#[test]
fn end_of_ended_session_answers_the_stored_figures() {
    let s = ended(A, EndReason::IdleTimeout, 42);
    let snap = Snapshot {
        sessions: vec![s.clone()],
        ..Snapshot::default()
    };
    match end(&snap, &end_req(Some(A)), &[], NOW) {
        Decision::Done(ev) => assert_eq!(Some(ev), s.ended_event()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn end_of_a_session_held_elsewhere_revokes_and_tells_the_holder() {
    let snap = snap_with_active(active(A, OTHER, 5));
    assert!(matches!(
        end(&snap, &end_req(Some(A)), &[], NOW),
        Decision::Revoke { ref owner, .. } if owner == OTHER
    ));
    let mut req = end_req(Some(A));
    req.count = Some(CountReport {
        session_id: A.into(),
        accepted: 2,
    });
    let r = revoked(A, OTHER, RevokedCount::Accepted(6));
    let (plan, ev) = commit(end(&snap, &req, &r, NOW));
    // Both connections' samples: 6 by the holder, 2 by the requester.
    assert_eq!(ev.data_count, 8);
    assert_eq!(pushes(&plan), vec![(OTHER, &ev)]);
}

// ---------------------------------------------------------------- claim

fn claim_req(id: &str) -> ClaimRequest {
    ClaimRequest {
        device_id: DEV.into(),
        session_id: id.into(),
        owner: ME.into(),
        gateway_id: "g1".into(),
    }
}

#[test]
fn claim_of_a_detached_session_resumes_it() {
    let snap = snap_with_active(active(A, "", 4));
    let (plan, ok) = commit(claim(&cfg(), &snap, &claim_req(A), &[], NOW));
    assert_eq!(ok.data_count, 4);
    let row = put(&plan, A);
    assert_eq!(row.phase, Phase::Active { owner: ME.into() });
    assert_eq!(row.pending_reason, EndReason::IdleTimeout);
    assert_eq!(row.deadline, NOW + 1_000);
    assert_eq!(row.gateway, "g1");
    assert!(plan.effects.is_empty());
}

#[test]
fn claim_from_another_holder_revokes_it_first() {
    let snap = snap_with_active(active(A, OTHER, 4));
    assert!(matches!(
        claim(&cfg(), &snap, &claim_req(A), &[], NOW),
        Decision::Revoke { .. }
    ));
    let r = revoked(A, OTHER, RevokedCount::Accepted(7));
    let (plan, ok) = commit(claim(&cfg(), &snap, &claim_req(A), &r, NOW));
    assert_eq!(ok.data_count, 7);
    assert_eq!(put(&plan, A).data_count, 7);
    assert!(plan.effects.is_empty(), "a hand-over ends nothing");
}

#[test]
fn claim_of_an_inactive_or_foreign_session_fails() {
    for snap in [
        Snapshot::default(),
        Snapshot {
            sessions: vec![ended(A, EndReason::Replaced, 1)],
            ..Snapshot::default()
        },
    ] {
        let e = fail(claim(&cfg(), &snap, &claim_req(A), &[], NOW));
        assert_eq!(e.code, ErrorCode::SessionNotActive);
        assert_eq!(e.session_id.as_deref(), Some(A));
    }
    let mut foreign = active(A, OTHER, 1);
    foreign.device_id = "AMR_2".into();
    let e = fail(claim(
        &cfg(),
        &snap_with_active(foreign),
        &claim_req(A),
        &[],
        NOW,
    ));
    assert_eq!(e.code, ErrorCode::SessionNotActive);
}

// ---------------------------------------------------------------- disconnect

fn disc(id: &str, accepted: u64, drained: bool) -> DisconnectRequest {
    DisconnectRequest {
        device_id: DEV.into(),
        session_id: id.into(),
        owner: ME.into(),
        accepted,
        drained,
    }
}

#[test]
fn disconnect_without_grace_ends_now() {
    let snap = snap_with_active(active(A, ME, 2));
    let (plan, out) = commit(disconnect(&cfg(), &snap, &disc(A, 3, false), NOW));
    assert_eq!(out, DisconnectOutcome::Ended);
    let ev = ended_events(&plan)[0];
    assert_eq!(ev.reason, EndReason::Disconnected);
    assert_eq!(ev.data_count, 3);
    assert!(pushes(&plan).is_empty(), "the owner is gone");
}

#[test]
fn disconnect_with_grace_detaches() {
    let snap = snap_with_active(active(A, ME, 2));
    let (plan, out) = commit(disconnect(
        &with_grace(2_000),
        &snap,
        &disc(A, 3, false),
        NOW,
    ));
    assert_eq!(out, DisconnectOutcome::Grace);
    let row = put(&plan, A);
    assert_eq!(row.phase, Phase::Detached);
    assert_eq!(row.pending_reason, EndReason::Disconnected);
    assert_eq!(row.deadline, NOW + 2_000);
    assert_eq!(row.data_count, 3);
    assert!(plan.effects.is_empty());
}

#[test]
fn drained_disconnect_gets_at_least_the_drain_grace() {
    let snap = snap_with_active(active(A, ME, 0));
    let (plan, out) = commit(disconnect(&cfg(), &snap, &disc(A, 0, true), NOW));
    assert_eq!(out, DisconnectOutcome::Grace);
    assert_eq!(put(&plan, A).deadline, NOW + 5_000);
    let (plan, _) = commit(disconnect(
        &with_grace(9_000),
        &snap,
        &disc(A, 0, true),
        NOW,
    ));
    assert_eq!(put(&plan, A).deadline, NOW + 9_000);
}

#[test]
fn disconnect_of_a_non_owner_only_counts() {
    let snap = snap_with_active(active(A, OTHER, 2));
    // Samples the old connection accepted still count; nothing else changes.
    let (plan, out) = commit(disconnect(&cfg(), &snap, &disc(A, 3, false), NOW));
    assert_eq!(out, DisconnectOutcome::NotOwner);
    let row = put(&plan, A);
    assert_eq!(row.data_count, 5);
    assert_eq!(
        row.phase,
        Phase::Active {
            owner: OTHER.into()
        }
    );
    assert!(plan.effects.is_empty());
    // Nothing new: nothing to write.
    let mut counted = active(A, OTHER, 2);
    counted.report(ME, 3);
    let snap = snap_with_active(counted);
    assert_eq!(
        disconnect(&cfg(), &snap, &disc(A, 3, false), NOW),
        Decision::Done(DisconnectOutcome::NotOwner)
    );
}

#[test]
fn disconnect_of_unknown_or_ended_session_is_not_owner() {
    assert_eq!(
        disconnect(&cfg(), &Snapshot::default(), &disc(A, 1, false), NOW),
        Decision::Done(DisconnectOutcome::NotOwner)
    );
    let snap = Snapshot {
        sessions: vec![ended(A, EndReason::Replaced, 1)],
        ..Snapshot::default()
    };
    assert_eq!(
        disconnect(&cfg(), &snap, &disc(A, 9, false), NOW),
        Decision::Done(DisconnectOutcome::NotOwner)
    );
}

// ---------------------------------------------------------------- expire (sweeper)

fn due(mut s: Session) -> Session {
    s.deadline = NOW - 1;
    s
}

#[test]
fn idle_end_revokes_the_owner_then_ends_and_tells_it() {
    let snap = snap_with_active(due(active(A, ME, 4)));
    assert!(matches!(
        expire(&cfg(), &snap, A, &[], NOW),
        Decision::Revoke { ref owner, .. } if owner == ME
    ));
    let r = revoked(A, ME, RevokedCount::Accepted(4));
    let (plan, out) = commit(expire(&cfg(), &snap, A, &r, NOW));
    let Expiry::Ended(ev) = out else {
        panic!("{out:?}")
    };
    assert_eq!(ev.reason, EndReason::IdleTimeout);
    assert_eq!(ev.data_count, 4);
    assert_eq!(pushes(&plan), vec![(ME, &ev)]);
    assert!(plan.guards.contains(&Guard::DeadlineDue {
        session_id: A.into(),
        now: NOW
    }));
}

#[test]
fn idle_end_with_unreported_samples_is_not_idle() {
    let snap = snap_with_active(due(active(A, ME, 4)));
    let r = revoked(A, ME, RevokedCount::Accepted(6));
    let (plan, out) = commit(expire(&cfg(), &snap, A, &r, NOW));
    assert_eq!(out, Expiry::Extended);
    let row = put(&plan, A);
    assert_eq!(row.data_count, 6);
    assert_eq!(row.deadline, NOW + 1_000);
    assert!(row.is_active());
    assert!(plan.effects.is_empty());
}

#[test]
fn idle_end_of_a_silent_owner_uses_the_stream_and_ends() {
    let snap = snap_with_active(due(active(A, ME, 4)));
    let r = revoked(A, ME, RevokedCount::StreamTotal(Some(9)));
    let (_, out) = commit(expire(&cfg(), &snap, A, &r, NOW));
    assert!(matches!(out, Expiry::Ended(ref ev) if ev.data_count == 9));
}

#[test]
fn grace_end_needs_no_revoke_and_ends_disconnected() {
    let snap = snap_with_active(due(active(A, "", 4)));
    let (plan, out) = commit(expire(&with_grace(100), &snap, A, &[], NOW));
    assert!(
        matches!(out, Expiry::Ended(ref ev) if ev.reason == EndReason::Disconnected && ev.data_count == 4)
    );
    assert!(pushes(&plan).is_empty());
    assert!(plan.writes.contains(&Write::ClearActive {
        device_id: DEV.into(),
        session_id: A.into()
    }));
}

#[test]
fn expire_of_a_refreshed_session_restores_its_schedule() {
    let snap = snap_with_active(active(A, ME, 4));
    let (plan, out) = commit(expire(&cfg(), &snap, A, &[], NOW));
    assert_eq!(out, Expiry::NotDue);
    assert_eq!(
        plan.writes,
        vec![Write::Schedule {
            session_id: A.into(),
            deadline: NOW + 500
        }]
    );
}

#[test]
fn expire_of_a_gone_or_ended_session_forgets_it() {
    for snap in [
        Snapshot::default(),
        Snapshot {
            sessions: vec![ended(A, EndReason::Replaced, 1)],
            ..Snapshot::default()
        },
    ] {
        let (plan, out) = commit(expire(&cfg(), &snap, A, &[], NOW));
        assert_eq!(out, Expiry::Forgotten);
        assert_eq!(
            plan.writes,
            vec![Write::Unschedule {
                session_id: A.into()
            }]
        );
    }
}

// ---------------------------------------------------------------- gateway lost (sweeper)

/// ME's gateway (see the `ME` subject).
const ME_GW: &str = "g1";

#[test]
fn gateway_lost_revokes_the_dead_owner_then_ends_with_the_stream_count() {
    let snap = snap_with_active(active(A, ME, 4));
    assert!(matches!(
        gateway_lost(&cfg(), &snap, A, ME_GW, &[], NOW),
        Decision::Revoke { ref owner, ref session_id, .. } if owner == ME && session_id == A
    ));
    // A dead gateway cannot answer: the stream's running total counts every sample.
    let r = revoked(A, ME, RevokedCount::StreamTotal(Some(9)));
    let (plan, out) = commit(gateway_lost(&cfg(), &snap, A, ME_GW, &r, NOW));
    let GatewayLoss::Ended(ev) = out else {
        panic!("{out:?}")
    };
    assert_eq!(
        (ev.reason, ev.data_count, ev.ended_at),
        (EndReason::GatewayLost, 9, NOW)
    );
    assert_eq!(ended_events(&plan), vec![&ev]);
    assert!(
        pushes(&plan).is_empty(),
        "nothing is pushed to a dead connection"
    );
    let row = put(&plan, A);
    assert_eq!(row.ended_event(), Some(ev));
    assert_eq!(row.version, 4);
    assert!(plan.guards.contains(&Guard::Version {
        session_id: A.into(),
        version: Some(3)
    }));
    assert!(plan.writes.contains(&Write::ClearActive {
        device_id: DEV.into(),
        session_id: A.into()
    }));
    // A stream holding fewer samples than reported never lowers the count.
    let r = revoked(A, ME, RevokedCount::StreamTotal(Some(2)));
    let (_, out) = commit(gateway_lost(&cfg(), &snap, A, ME_GW, &r, NOW));
    assert!(matches!(out, GatewayLoss::Ended(ref ev) if ev.data_count == 4));
    // Nothing ever accepted: the stream says 0.
    let snap0 = snap_with_active(active(A, ME, 0));
    let r = revoked(A, ME, RevokedCount::StreamTotal(Some(0)));
    let (_, out) = commit(gateway_lost(&cfg(), &snap0, A, ME_GW, &r, NOW));
    assert!(matches!(out, GatewayLoss::Ended(ref ev) if ev.data_count == 0));
}

#[test]
fn gateway_lost_with_an_unknown_count_ends_nothing_yet() {
    let snap = snap_with_active(active(A, ME, 4));
    let r = revoked(A, ME, RevokedCount::StreamTotal(None));
    let e = fail(gateway_lost(&cfg(), &snap, A, ME_GW, &r, NOW));
    assert_eq!(e.code, ErrorCode::ServiceUnavailable);
    assert_eq!(e.session_id.as_deref(), Some(A));
}

#[test]
fn gateway_lost_spares_an_owner_that_answers() {
    let snap = snap_with_active(active(A, ME, 4));
    // It answered with nothing new: nothing to write.
    let r = revoked(A, ME, RevokedCount::Accepted(4));
    assert_eq!(
        gateway_lost(&cfg(), &snap, A, ME_GW, &r, NOW),
        Decision::Done(GatewayLoss::Alive)
    );
    // It handed over unreported samples: they are kept (it will not report them again).
    let r = revoked(A, ME, RevokedCount::Accepted(7));
    let (plan, out) = commit(gateway_lost(&cfg(), &snap, A, ME_GW, &r, NOW));
    assert_eq!(out, GatewayLoss::Alive);
    let row = put(&plan, A);
    assert_eq!((row.data_count, row.version), (7, 4));
    assert_eq!(row.phase, Phase::Active { owner: ME.into() });
    assert_eq!(row.deadline, NOW + 500, "the idle deadline does not move");
    assert!(plan.effects.is_empty());
    assert!(!plan
        .writes
        .iter()
        .any(|w| matches!(w, Write::ClearActive { .. })));
}

#[test]
fn gateway_lost_leaves_sessions_not_held_by_that_gateway() {
    let gone = Snapshot::default();
    let ended_one = Snapshot {
        sessions: vec![ended(A, EndReason::Replaced, 1)],
        ..Snapshot::default()
    };
    let detached = snap_with_active(active(A, "", 4));
    // Claimed by a connection of another gateway meanwhile (the row's gateway field aside:
    // the owner's subject decides).
    let elsewhere = snap_with_active(active(A, OTHER, 4));
    // A gateway id that is a prefix of the owner's is another gateway.
    let mut similar = active(A, "amr.internal.gw.g10.c1", 4);
    similar.gateway = ME_GW.into();
    let similar = snap_with_active(similar);
    for snap in [gone, ended_one, detached, elsewhere, similar] {
        assert_eq!(
            gateway_lost(&cfg(), &snap, A, ME_GW, &[], NOW),
            Decision::Done(GatewayLoss::NotHeld),
            "{snap:?}"
        );
    }
    // Another prefix: subjects are read with the configured one.
    let cfg_p = Settings {
        subjects: Subjects::new("plant1.amr"),
        ..cfg()
    };
    let snap = snap_with_active(active(A, "plant1.amr.internal.gw.g1.c1", 4));
    assert!(matches!(
        gateway_lost(&cfg_p, &snap, A, ME_GW, &[], NOW),
        Decision::Revoke { .. }
    ));
    let snap = snap_with_active(active(A, ME, 4));
    assert_eq!(
        gateway_lost(&cfg_p, &snap, A, ME_GW, &[], NOW),
        Decision::Done(GatewayLoss::NotHeld)
    );
}

#[test]
fn gateway_lost_counts_a_dead_owner_after_earlier_owners() {
    // 3 samples came from an earlier owner (reported), 2 from the dead one (reported); the
    // stream's running total says 8: the dead owner accepted 3 more it never reported.
    let mut s = active(A, ME, 0);
    s.accepted = BTreeMap::from([(OTHER.to_string(), 3), (ME.to_string(), 2)]);
    s.data_count = 5;
    let snap = snap_with_active(s);
    let r = revoked(A, ME, RevokedCount::StreamTotal(Some(8)));
    let (plan, out) = commit(gateway_lost(&cfg(), &snap, A, ME_GW, &r, NOW));
    assert!(matches!(out, GatewayLoss::Ended(ref ev) if ev.data_count == 8));
    assert_eq!(put(&plan, A).accepted.get(ME), Some(&5));
}

// ---------------------------------------------------------------- counts and activity

#[test]
fn reports_keep_the_maximum_per_connection() {
    let mut s = active(A, ME, 0);
    assert!(s.report(ME, 3));
    assert!(!s.report(ME, 3), "a repeated report changes nothing");
    assert!(!s.report(ME, 2), "a late, older report changes nothing");
    assert!(s.report(OTHER, 4));
    assert!(s.report(ME, 5));
    assert_eq!(s.data_count, 9);
}

#[test]
fn activity_counts_for_anyone_but_refreshes_only_the_owners_idle_deadline() {
    let act = |owner: &str| ActivityRequest {
        device_id: DEV.into(),
        owner: owner.into(),
        reports: vec![],
    };
    let mut s = active(A, ME, 0);
    assert!(apply_activity(&cfg(), &mut s, &act(ME), 2, NOW));
    assert_eq!((s.data_count, s.deadline, s.version), (2, NOW + 1_000, 4));

    let mut s = active(A, ME, 0);
    assert!(apply_activity(&cfg(), &mut s, &act(OTHER), 2, NOW));
    assert_eq!((s.data_count, s.deadline), (2, NOW + 500));

    // In disconnect grace: counted, but the grace deadline stays.
    let mut s = active(A, "", 0);
    assert!(apply_activity(&cfg(), &mut s, &act(ME), 1, NOW));
    assert_eq!((s.data_count, s.deadline), (1, NOW + 500));

    let mut s = ended(A, EndReason::Replaced, 1);
    assert!(!apply_activity(&cfg(), &mut s, &act(ME), 5, NOW));
    assert_eq!(s.data_count, 1);

    let mut s = active(A, ME, 0);
    s.device_id = "AMR_2".into();
    assert!(!apply_activity(&cfg(), &mut s, &act(ME), 5, NOW));
}

// ---------------------------------------------------------------- scenarios over a model store

/// A minimal store for scenarios: applies plans with their guards, like a real store must.
#[derive(Default)]
struct Model {
    rows: HashMap<String, Session>,
    active: HashMap<String, String>,
    requests: HashMap<(String, String), String>,
}

impl Model {
    fn snapshot(&self, device: &str, request: Option<&str>, ids: &[&str]) -> Snapshot {
        let active = self.active.get(device).cloned();
        let by_request =
            request.and_then(|r| self.requests.get(&(device.into(), r.into())).cloned());
        let mut sessions = Vec::new();
        for id in active
            .iter()
            .chain(by_request.iter())
            .map(String::as_str)
            .chain(ids.iter().copied())
        {
            if let Some(s) = self.rows.get(id) {
                if !sessions.contains(s) {
                    sessions.push(s.clone());
                }
            }
        }
        Snapshot {
            active,
            by_request,
            sessions,
        }
    }

    fn commit(&mut self, plan: &Plan) -> bool {
        for g in &plan.guards {
            let holds = match g {
                Guard::Version {
                    session_id,
                    version,
                } => self.rows.get(session_id).map(|s| s.version) == *version,
                Guard::ActivePointer {
                    device_id,
                    session_id,
                } => self.active.get(device_id) == session_id.as_ref(),
                Guard::DeadlineDue { session_id, now } => self
                    .rows
                    .get(session_id)
                    .is_some_and(|s| s.deadline <= *now),
                Guard::Request {
                    device_id,
                    request_id,
                    session_id,
                } => {
                    self.requests
                        .get(&(device_id.clone(), request_id.clone()))
                        .cloned()
                        == *session_id
                }
            };
            if !holds {
                return false;
            }
        }
        for w in &plan.writes {
            match w {
                Write::Put(s) => {
                    self.rows.insert(s.session_id.clone(), s.clone());
                }
                Write::SetActive {
                    device_id,
                    session_id,
                } => {
                    self.active.insert(device_id.clone(), session_id.clone());
                }
                Write::ClearActive {
                    device_id,
                    session_id,
                } => {
                    if self.active.get(device_id) == Some(session_id) {
                        self.active.remove(device_id);
                    }
                }
                Write::RememberRequest {
                    device_id,
                    request_id,
                    session_id,
                } => {
                    self.requests
                        .insert((device_id.clone(), request_id.clone()), session_id.clone());
                }
                Write::Schedule { .. } | Write::Unschedule { .. } => {}
            }
        }
        true
    }
}

#[test]
fn racing_starts_leave_exactly_one_active_session() {
    let mut m = Model::default();
    let mine = start_req();
    let theirs = StartRequest {
        request_id: "r2".into(),
        owner: OTHER.into(),
        gateway_id: "g2".into(),
        ..start_req()
    };
    // Both decide on the same empty snapshot.
    let s0 = m.snapshot(DEV, None, &[]);
    let (p1, ok1) = commit(start(&cfg(), &s0, &mine, &[], NOW, A));
    let (p2, _) = commit(start(&cfg(), &s0, &theirs, &[], NOW, B));
    assert!(m.commit(&p1));
    assert!(
        !m.commit(&p2),
        "the pointer guard lets one start win a round"
    );
    // The loser reloads: the winner's session is active, held by another connection.
    let s1 = m.snapshot(DEV, Some("r2"), &[]);
    let Decision::Revoke { owner, .. } = start(&cfg(), &s1, &theirs, &[], NOW + 1, B) else {
        panic!("expected a revoke")
    };
    assert_eq!(owner, ME);
    let r = revoked(A, ME, RevokedCount::Accepted(0));
    let (p3, ok3) = commit(start(&cfg(), &s1, &theirs, &r, NOW + 1, B));
    assert!(m.commit(&p3));
    assert_eq!(
        ok3.replaced_session_id.as_deref(),
        Some(ok1.session_id.as_str())
    );
    // The winner's connection is told; exactly one ended event; exactly one active.
    assert_eq!(pushes(&p3).len(), 1);
    assert_eq!(pushes(&p3)[0].0, ME);
    let ended: Vec<_> = [&p1, &p3].iter().flat_map(|p| ended_events(p)).collect();
    assert_eq!(ended.len(), 1);
    let active: Vec<_> = m.rows.values().filter(|s| s.is_active()).collect();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].session_id, B);
    assert_eq!(m.active.get(DEV).map(String::as_str), Some(B));
}

#[test]
fn a_retried_start_after_a_lost_race_answers_the_first_result() {
    let mut m = Model::default();
    let req = start_req();
    let s0 = m.snapshot(DEV, Some("r1"), &[]);
    // The same request reached two replicas.
    let (p1, ok1) = commit(start(&cfg(), &s0, &req, &[], NOW, A));
    let (p2, _) = commit(start(&cfg(), &s0, &req, &[], NOW, B));
    assert!(m.commit(&p1));
    assert!(!m.commit(&p2));
    let s1 = m.snapshot(DEV, Some("r1"), &[]);
    assert_eq!(start(&cfg(), &s1, &req, &[], NOW, B), Decision::Done(ok1));
}

#[test]
fn end_racing_an_idle_end_ends_once() {
    let mut m = Model::default();
    let s = due(active(A, ME, 2));
    m.rows.insert(A.into(), s);
    m.active.insert(DEV.into(), A.into());
    let snap = m.snapshot(DEV, None, &[A]);
    let r = revoked(A, ME, RevokedCount::Accepted(2));
    let (sweep, _) = commit(expire(&cfg(), &snap, A, &r, NOW));
    let (client, _) = commit(end(&snap, &end_req(Some(A)), &[], NOW));
    assert!(m.commit(&client));
    assert!(!m.commit(&sweep), "the version guard stops the second end");
    let snap = m.snapshot(DEV, None, &[A]);
    let (plan, out) = commit(expire(&cfg(), &snap, A, &r, NOW));
    assert_eq!(out, Expiry::Forgotten);
    assert!(ended_events(&plan).is_empty());
}
