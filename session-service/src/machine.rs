//! The session state machine: plain Rust, no I/O, no clock, no async.
//!
//! Every operation is a function of (a snapshot of the stored state, the request, what the
//! owners answered to revocations so far, `now`) that returns a [`Decision`]:
//! - [`Decision::Commit`]: rows to write, guarded by the versions they were computed from,
//!   plus the effects to perform once the write is committed, and the reply;
//! - [`Decision::Done`]: nothing to write, answer this;
//! - [`Decision::Revoke`]: the final count of a session is needed from the connection that
//!   holds it first; the caller asks it, adds the answer to `revoked` and decides again;
//! - [`Decision::Fail`]: an error reply.
//!
//! The caller (see `engine.rs`) loops: snapshot, decide, revoke or commit; a commit whose
//! guards no longer hold is recomputed from a fresh snapshot.

use amr_proto::events::{SessionCreatedEvent, SessionEndedEvent, SessionRecord, SessionState};
use amr_proto::ids;
use amr_proto::internal::{
    ActivityRequest, ClaimOk, ClaimRequest, DisconnectOutcome, DisconnectRequest, EndOk,
    EndRequest, ServiceError, StartOk, StartRequest,
};
use amr_proto::subjects::Subjects;
use amr_proto::{EndReason, ErrorCode};
use std::collections::BTreeMap;

/// What happens when a start finds the device's session still active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictPolicy {
    /// End the active session with `replaced` and start the new one.
    Replace,
    /// Refuse with `SESSION_ALREADY_ACTIVE`.
    Reject,
}

/// The configuration the decisions depend on, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub policy: ConflictPolicy,
    pub idle_timeout_ms: i64,
    pub disconnect_grace_ms: i64,
    pub drain_grace_ms: i64,
    /// Reads the gateway id out of an owner's connection subject.
    pub subjects: Subjects,
}

/// Where a session is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Held by the connection whose subject is `owner`; ends `idle_timeout` at its deadline.
    Active {
        owner: String,
    },
    /// Its connection left; it ends `disconnected` at its deadline unless a connection of the
    /// device claims it first.
    Detached,
    Ended {
        reason: EndReason,
        ended_at: i64,
    },
}

/// One stored session, as the store read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub session_id: String,
    pub device_id: String,
    pub phase: Phase,
    pub started_at: i64,
    /// The sum of `accepted`.
    pub data_count: u64,
    /// Per connection (subject) that ever reported for the session: the highest cumulative
    /// count it reported. Keeping maxima makes reports idempotent (repeated, reordered, or
    /// racing an end: never lost, never counted twice).
    pub accepted: BTreeMap<String, u64>,
    /// Gateway id of the last owner (informational).
    pub gateway: String,
    pub replaced_session_id: Option<String>,
    /// Reason the session ends with when `deadline` passes.
    pub pending_reason: EndReason,
    pub deadline: i64,
    /// Bumped by every change; commits are guarded by it.
    pub version: u64,
}

impl Session {
    pub fn is_active(&self) -> bool {
        !matches!(self.phase, Phase::Ended { .. })
    }

    /// The connection holding the session, if any.
    pub fn owner(&self) -> Option<&str> {
        match &self.phase {
            Phase::Active { owner } if !owner.is_empty() => Some(owner),
            _ => None,
        }
    }

    /// The final figures of an ended session.
    pub fn ended_event(&self) -> Option<SessionEndedEvent> {
        match self.phase {
            Phase::Ended { reason, ended_at } => Some(SessionEndedEvent {
                session_id: self.session_id.clone(),
                device_id: self.device_id.clone(),
                started_at: self.started_at,
                ended_at,
                reason,
                data_count: self.data_count,
            }),
            _ => None,
        }
    }

    pub fn record(&self) -> SessionRecord {
        let (state, ended_at, reason) = match self.phase {
            Phase::Ended { reason, ended_at } => {
                (SessionState::Ended, Some(ended_at), Some(reason))
            }
            _ => (SessionState::Active, None, None),
        };
        SessionRecord {
            session_id: self.session_id.clone(),
            device_id: self.device_id.clone(),
            state,
            started_at: self.started_at,
            ended_at,
            reason,
            data_count: self.data_count,
        }
    }

    /// Applies one connection's cumulative count; true when the session's count grew.
    pub fn report(&mut self, connection: &str, accepted: u64) -> bool {
        let seen = self.accepted.entry(connection.to_string()).or_insert(0);
        if accepted <= *seen {
            return false;
        }
        self.data_count = self.data_count.saturating_add(accepted - *seen);
        *seen = accepted;
        true
    }

    /// The next version of this row: same fields, version bumped.
    fn next(&self) -> Session {
        Session {
            version: self.version + 1,
            ..self.clone()
        }
    }

    fn ended(&self, reason: EndReason, now: i64) -> Session {
        Session {
            phase: Phase::Ended {
                reason,
                ended_at: now,
            },
            ..self.next()
        }
    }
}

/// What a decision read from the store, in one consistent read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The device's active pointer.
    pub active: Option<String>,
    /// The session created for the request's `(deviceId, requestId)` in the last 60 s.
    pub by_request: Option<String>,
    /// Rows of the sessions named by the query, the active pointer and the request key
    /// (absent rows are simply missing).
    pub sessions: Vec<Session>,
}

impl Snapshot {
    pub fn session(&self, session_id: &str) -> Option<&Session> {
        self.sessions.iter().find(|s| s.session_id == session_id)
    }

    /// The device's active session, when the pointer names an active row.
    fn active_session(&self) -> Option<&Session> {
        self.active
            .as_deref()
            .and_then(|id| self.session(id))
            .filter(|s| s.is_active())
    }
}

/// What a revoked connection (or, failing that, the sensor stream) told of a session's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokedCount {
    /// The connection answered with its cumulative count for the session.
    Accepted(u64),
    /// The connection did not answer; the stream's last message of the session says how many
    /// samples were accepted in total (`None`: unknown, keep the stored count).
    StreamTotal(Option<u64>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub session_id: String,
    pub owner: String,
    pub count: RevokedCount,
}

/// A condition the commit re-checks atomically; any that fails makes the commit a conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// The stored row has this version (`None`: the row must not exist).
    Version {
        session_id: String,
        version: Option<u64>,
    },
    /// The device's active pointer names this session (`None`: no pointer).
    ActivePointer {
        device_id: String,
        session_id: Option<String>,
    },
    /// The session's stored deadline is `<= now`.
    DeadlineDue { session_id: String, now: i64 },
    /// The session remembered for `(deviceId, requestId)` is this one (`None`: none is).
    Request {
        device_id: String,
        request_id: String,
        session_id: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Write the whole row. The store derives the rest from it: an active row is scheduled at
    /// its deadline and kept; an ended row is unscheduled and expires after the retention;
    /// every row is in the listing indexes.
    Put(Session),
    /// Point the device's active pointer at this session.
    SetActive {
        device_id: String,
        session_id: String,
    },
    /// Drop the device's active pointer if it still names this session.
    ClearActive {
        device_id: String,
        session_id: String,
    },
    /// Remember the session created for a request id (for 60 s).
    RememberRequest {
        device_id: String,
        request_id: String,
        session_id: String,
    },
    /// (Re)schedule a session at `deadline` without changing its row.
    Schedule { session_id: String, deadline: i64 },
    /// Forget the schedule of a session that is gone or no longer active.
    Unschedule { session_id: String },
}

/// Done once the commit succeeded, by whoever committed it (so exactly once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Created(SessionCreatedEvent),
    Ended(SessionEndedEvent),
    /// Tell a connection that its session ended on someone else's behalf.
    PushEnded {
        owner: String,
        event: SessionEndedEvent,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub guards: Vec<Guard>,
    pub writes: Vec<Write>,
    pub effects: Vec<Effect>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<T> {
    Commit {
        plan: Plan,
        reply: T,
    },
    Done(T),
    Revoke {
        device_id: String,
        session_id: String,
        owner: String,
    },
    Fail(ServiceError),
}

/// Outcome of a sweep of one due session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    Ended(SessionEndedEvent),
    /// A revoked owner had unreported samples: not idle after all; deadline refreshed.
    Extended,
    /// Refreshed since it was listed; nothing to do (schedule restored).
    NotDue,
    /// Gone or already ended; its schedule was stale.
    Forgotten,
}

/// Outcome of the gateway-loss sweep of one session indexed under a silent gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayLoss {
    Ended(SessionEndedEvent),
    /// The owner answered its revocation: its gateway is alive (heartbeats were lost, not the
    /// gateway). The session stays; the connection claims it again with its next message.
    Alive,
    /// Not active, or not held by a connection of that gateway (any more): nothing to do.
    NotHeld,
}

fn version_guard(s: &Session) -> Guard {
    Guard::Version {
        session_id: s.session_id.clone(),
        version: Some(s.version),
    }
}

/// `s` with the requester's own report (`own`: connection, cumulative count) and what
/// revoked connections answered applied. Also true when an answering connection had samples
/// the store did not know of yet (it was not idle).
fn counted(s: &Session, own: Option<(&str, u64)>, revoked: &[Revoked]) -> (Session, bool) {
    let mut s = s.clone();
    if let Some((connection, accepted)) = own {
        s.report(connection, accepted);
    }
    let mine: Vec<&Revoked> = revoked
        .iter()
        .filter(|r| r.session_id == s.session_id)
        .collect();
    let mut grew = false;
    for r in &mine {
        if let RevokedCount::Accepted(n) = r.count {
            grew |= s.report(&r.owner, n);
        }
    }
    // A silent connection's samples are known only as the stream's running total: what it
    // holds beyond the stored count was accepted by that connection.
    for r in &mine {
        if let RevokedCount::StreamTotal(Some(total)) = r.count {
            if total > s.data_count {
                let seen = s.accepted.get(&r.owner).copied().unwrap_or(0);
                s.report(&r.owner, seen + (total - s.data_count));
            }
        }
    }
    (s, grew)
}

/// The revocation still needed before `s` can be decided on behalf of `requester`: its owner
/// when that is another connection that has not been revoked yet.
fn needs_revoke<T>(s: &Session, requester: &str, revoked: &[Revoked]) -> Option<Decision<T>> {
    let owner = s.owner()?;
    if owner == requester
        || revoked
            .iter()
            .any(|r| r.session_id == s.session_id && r.owner == owner)
    {
        return None;
    }
    Some(Decision::Revoke {
        device_id: s.device_id.clone(),
        session_id: s.session_id.clone(),
        owner: owner.to_string(),
    })
}

/// The requester's own report when it names `session_id`.
fn own_report<'a>(
    report: Option<&amr_proto::internal::CountReport>,
    requester: &'a str,
    session_id: &str,
) -> Option<(&'a str, u64)> {
    report
        .filter(|c| c.session_id == session_id)
        .map(|c| (requester, c.accepted))
}

/// Ends the active session `s` (as stored: guarded by its version) with `reason` and the
/// counts of `counted`: its row, guards, pointer and effects, appended to `plan`.
/// `requester` never gets a push for it; any other owner does.
fn end_into(
    plan: &mut Plan,
    s: &Session,
    counted: &Session,
    reason: EndReason,
    requester: Option<&str>,
    now: i64,
) -> SessionEndedEvent {
    let row = counted.ended(reason, now);
    let event = SessionEndedEvent {
        session_id: row.session_id.clone(),
        device_id: row.device_id.clone(),
        started_at: row.started_at,
        ended_at: now,
        reason,
        data_count: row.data_count,
    };
    plan.guards.push(version_guard(s));
    plan.writes.push(Write::Put(row));
    plan.writes.push(Write::ClearActive {
        device_id: s.device_id.clone(),
        session_id: s.session_id.clone(),
    });
    plan.effects.push(Effect::Ended(event.clone()));
    if let Some(owner) = s.owner().filter(|o| Some(*o) != requester) {
        plan.effects.push(Effect::PushEnded {
            owner: owner.to_string(),
            event: event.clone(),
        });
    }
    event
}

/// `start`: idempotent per `(deviceId, requestId)`, then replace or reject the active
/// session, then create the new one. `fresh_id` is used unless the request adopts an id.
pub fn start(
    cfg: &Settings,
    snap: &Snapshot,
    req: &StartRequest,
    revoked: &[Revoked],
    now: i64,
    fresh_id: &str,
) -> Decision<StartOk> {
    // A retry of a start already served: the same answer, even if that session ended since.
    if let Some(done) = snap.by_request.as_deref().and_then(|id| snap.session(id)) {
        if done.device_id == req.device_id {
            return Decision::Done(StartOk {
                session_id: done.session_id.clone(),
                device_id: done.device_id.clone(),
                started_at: done.started_at,
                replaced_session_id: done.replaced_session_id.clone(),
            });
        }
    }

    let new_id = match &req.adopt_session_id {
        Some(id) if !ids::is_valid_session_id(id) || snap.session(id).is_some() => {
            return Decision::Fail(ServiceError::new(
                ErrorCode::InvalidMessage,
                "adoptSessionId is not a valid new session id",
            ));
        }
        Some(id) => id.clone(),
        None => fresh_id.to_string(),
    };

    let mut plan = Plan::default();
    let mut replaced = None;
    if let Some(a) = snap.active_session() {
        if cfg.policy == ConflictPolicy::Reject {
            return Decision::Fail(
                ServiceError::new(
                    ErrorCode::SessionAlreadyActive,
                    "the device already has an active session",
                )
                .with_session(a.session_id.clone()),
            );
        }
        if let Some(revoke) = needs_revoke(a, &req.owner, revoked) {
            return revoke;
        }
        let own = own_report(req.current.as_ref(), &req.owner, &a.session_id);
        let (final_a, _) = counted(a, own, revoked);
        end_into(
            &mut plan,
            a,
            &final_a,
            EndReason::Replaced,
            Some(&req.owner),
            now,
        );
        replaced = Some(a.session_id.clone());
    }

    let row = Session {
        session_id: new_id.clone(),
        device_id: req.device_id.clone(),
        phase: Phase::Active {
            owner: req.owner.clone(),
        },
        started_at: now,
        data_count: 0,
        accepted: BTreeMap::new(),
        gateway: req.gateway_id.clone(),
        replaced_session_id: replaced.clone(),
        pending_reason: EndReason::IdleTimeout,
        deadline: now + cfg.idle_timeout_ms,
        version: 1,
    };
    plan.guards.push(Guard::ActivePointer {
        device_id: req.device_id.clone(),
        session_id: snap.active.clone(),
    });
    // A retry must get the first answer: the request memory is still what was read.
    plan.guards.push(Guard::Request {
        device_id: req.device_id.clone(),
        request_id: req.request_id.clone(),
        session_id: snap.by_request.clone(),
    });
    plan.guards.push(Guard::Version {
        session_id: new_id.clone(),
        version: None,
    });
    plan.writes.push(Write::Put(row));
    plan.writes.push(Write::SetActive {
        device_id: req.device_id.clone(),
        session_id: new_id.clone(),
    });
    plan.writes.push(Write::RememberRequest {
        device_id: req.device_id.clone(),
        request_id: req.request_id.clone(),
        session_id: new_id.clone(),
    });
    plan.effects.push(Effect::Created(SessionCreatedEvent {
        session_id: new_id.clone(),
        device_id: req.device_id.clone(),
        started_at: now,
        replaced_session_id: replaced.clone(),
    }));
    Decision::Commit {
        plan,
        reply: StartOk {
            session_id: new_id,
            device_id: req.device_id.clone(),
            started_at: now,
            replaced_session_id: replaced,
        },
    }
}

/// `end`: the named (or the device's active) session ends `client_request`; an ended one
/// answers its stored figures again.
pub fn end(snap: &Snapshot, req: &EndRequest, revoked: &[Revoked], now: i64) -> Decision<EndOk> {
    let Some(session_id) = req.session_id.clone().or_else(|| snap.active.clone()) else {
        return Decision::Fail(ServiceError::new(
            ErrorCode::NoActiveSession,
            "the device has no active session",
        ));
    };
    let s = match snap.session(&session_id) {
        Some(s) if s.device_id == req.device_id => s,
        Some(_) | None if req.session_id.is_none() => {
            // The pointer named a row that is gone: nothing active to end.
            return Decision::Fail(ServiceError::new(
                ErrorCode::NoActiveSession,
                "the device has no active session",
            ));
        }
        _ => {
            return Decision::Fail(
                ServiceError::new(
                    ErrorCode::SessionNotFound,
                    "no such session for this device",
                )
                .with_session(session_id),
            );
        }
    };
    if let Some(event) = s.ended_event() {
        return Decision::Done(event);
    }
    if let Some(revoke) = needs_revoke(s, &req.owner, revoked) {
        return revoke;
    }
    let own = own_report(req.count.as_ref(), &req.owner, &s.session_id);
    let (final_s, _) = counted(s, own, revoked);
    let mut plan = Plan::default();
    let event = end_into(
        &mut plan,
        s,
        &final_s,
        EndReason::ClientRequest,
        Some(&req.owner),
        now,
    );
    Decision::Commit { plan, reply: event }
}

/// `claim`: a connection of the device takes an active session over (resume or hand-over).
pub fn claim(
    cfg: &Settings,
    snap: &Snapshot,
    req: &ClaimRequest,
    revoked: &[Revoked],
    now: i64,
) -> Decision<ClaimOk> {
    let s = match snap.session(&req.session_id) {
        Some(s) if s.device_id == req.device_id && s.is_active() => s,
        _ => {
            return Decision::Fail(
                ServiceError::new(ErrorCode::SessionNotActive, "the session is not active")
                    .with_session(req.session_id.clone()),
            );
        }
    };
    if let Some(revoke) = needs_revoke(s, &req.owner, revoked) {
        return revoke;
    }
    let (counted_s, _) = counted(s, None, revoked);
    let row = Session {
        phase: Phase::Active {
            owner: req.owner.clone(),
        },
        gateway: req.gateway_id.clone(),
        pending_reason: EndReason::IdleTimeout,
        deadline: now + cfg.idle_timeout_ms,
        ..counted_s.next()
    };
    let reply = ClaimOk {
        session_id: row.session_id.clone(),
        started_at: row.started_at,
        data_count: row.data_count,
    };
    Decision::Commit {
        plan: Plan {
            guards: vec![version_guard(s)],
            writes: vec![Write::Put(row)],
            effects: vec![],
        },
        reply,
    }
}

/// `disconnect`: the owning connection closed. Ends now (no grace) or detaches the session
/// for the grace; a connection that does not own the session changes nothing but its count.
pub fn disconnect(
    cfg: &Settings,
    snap: &Snapshot,
    req: &DisconnectRequest,
    now: i64,
) -> Decision<DisconnectOutcome> {
    let s = match snap.session(&req.session_id) {
        Some(s) if s.device_id == req.device_id && s.is_active() => s,
        _ => return Decision::Done(DisconnectOutcome::NotOwner),
    };
    let mut counted_s = s.clone();
    let grew = counted_s.report(&req.owner, req.accepted);
    if s.owner() != Some(req.owner.as_str()) {
        if !grew {
            return Decision::Done(DisconnectOutcome::NotOwner);
        }
        // Samples it accepted before losing the session still count.
        let row = counted_s.next();
        return Decision::Commit {
            plan: Plan {
                guards: vec![version_guard(s)],
                writes: vec![Write::Put(row)],
                effects: vec![],
            },
            reply: DisconnectOutcome::NotOwner,
        };
    }
    let grace = if req.drained {
        cfg.disconnect_grace_ms.max(cfg.drain_grace_ms)
    } else {
        cfg.disconnect_grace_ms
    };
    let mut plan = Plan::default();
    if grace <= 0 {
        // The owner is gone: nobody to push to.
        end_into(
            &mut plan,
            s,
            &counted_s,
            EndReason::Disconnected,
            Some(&req.owner),
            now,
        );
        return Decision::Commit {
            plan,
            reply: DisconnectOutcome::Ended,
        };
    }
    let row = Session {
        phase: Phase::Detached,
        pending_reason: EndReason::Disconnected,
        deadline: now + grace,
        ..counted_s.next()
    };
    plan.guards.push(version_guard(s));
    plan.writes.push(Write::Put(row));
    Decision::Commit {
        plan,
        reply: DisconnectOutcome::Grace,
    }
}

/// The sweeper's decision for one session whose deadline was listed as due.
pub fn expire(
    cfg: &Settings,
    snap: &Snapshot,
    session_id: &str,
    revoked: &[Revoked],
    now: i64,
) -> Decision<Expiry> {
    let forget = || Decision::Commit {
        plan: Plan {
            guards: vec![],
            writes: vec![Write::Unschedule {
                session_id: session_id.to_string(),
            }],
            effects: vec![],
        },
        reply: Expiry::Forgotten,
    };
    let Some(s) = snap.session(session_id) else {
        return forget();
    };
    if !s.is_active() {
        return forget();
    }
    if s.deadline > now {
        // Refreshed after it was listed: put its schedule back where the row says.
        return Decision::Commit {
            plan: Plan {
                guards: vec![version_guard(s)],
                writes: vec![Write::Schedule {
                    session_id: session_id.to_string(),
                    deadline: s.deadline,
                }],
                effects: vec![],
            },
            reply: Expiry::NotDue,
        };
    }
    // Nobody requests this end: every owner gets revoked (and told).
    if let Some(revoke) = needs_revoke(s, "", revoked) {
        return revoke;
    }
    let guards = vec![
        version_guard(s),
        Guard::DeadlineDue {
            session_id: session_id.to_string(),
            now,
        },
    ];
    let (counted_s, grew) = counted(s, None, revoked);
    if s.pending_reason == EndReason::IdleTimeout && grew {
        // The owner accepted data it had not reported yet: the session was not idle.
        let row = Session {
            deadline: now + cfg.idle_timeout_ms,
            ..counted_s.next()
        };
        return Decision::Commit {
            plan: Plan {
                guards,
                writes: vec![Write::Put(row)],
                effects: vec![],
            },
            reply: Expiry::Extended,
        };
    }
    let mut plan = Plan::default();
    let event = end_into(&mut plan, s, &counted_s, s.pending_reason, None, now);
    plan.guards.push(guards[1].clone());
    Decision::Commit {
        plan,
        reply: Expiry::Ended(event),
    }
}

/// The gateway-loss sweep's decision for one session indexed under `gateway_id`, a gateway
/// silent for longer than `AMR_GATEWAY_LOST_AFTER`: still active and held by a connection of
/// that gateway, it ends `gateway_lost` after its owner was revoked (a dead owner cannot
/// answer, so the count is the sensor stream's running total); nothing is pushed to the owner.
pub fn gateway_lost(
    cfg: &Settings,
    snap: &Snapshot,
    session_id: &str,
    gateway_id: &str,
    revoked: &[Revoked],
    now: i64,
) -> Decision<GatewayLoss> {
    let Some(s) = snap.session(session_id).filter(|s| s.is_active()) else {
        return Decision::Done(GatewayLoss::NotHeld);
    };
    let Some(owner) = s
        .owner()
        .filter(|o| cfg.subjects.gateway_of(o) == Some(gateway_id))
    else {
        return Decision::Done(GatewayLoss::NotHeld);
    };
    if let Some(revoke) = needs_revoke(s, "", revoked) {
        return revoke;
    }
    let answer = revoked
        .iter()
        .find(|r| r.session_id == s.session_id && r.owner == owner)
        .map(|r| r.count);
    match answer {
        Some(RevokedCount::Accepted(_)) => {
            // Alive after all. Its answer is the count it will not report again (it
            // stopped accepting until it claims the session back): keep it.
            let (counted_s, grew) = counted(s, None, revoked);
            if !grew {
                return Decision::Done(GatewayLoss::Alive);
            }
            return Decision::Commit {
                plan: Plan {
                    guards: vec![version_guard(s)],
                    writes: vec![Write::Put(counted_s.next())],
                    effects: vec![],
                },
                reply: GatewayLoss::Alive,
            };
        }
        Some(RevokedCount::StreamTotal(None)) => {
            // An end must carry the exact count: try again later (the idle timeout remains
            // the backstop).
            return Decision::Fail(
                ServiceError::new(
                    ErrorCode::ServiceUnavailable,
                    "the session's count is unknown (sensor stream unreachable)",
                )
                .with_session(session_id),
            );
        }
        Some(RevokedCount::StreamTotal(Some(_))) | None => {}
    }
    let (counted_s, _) = counted(s, None, revoked);
    let mut plan = Plan::default();
    // The owner is the "requester": a dead connection gets no push.
    let event = end_into(
        &mut plan,
        s,
        &counted_s,
        EndReason::GatewayLost,
        Some(owner),
        now,
    );
    Decision::Commit {
        plan,
        reply: GatewayLoss::Ended(event),
    }
}

/// One report of an activity batch, as the store applies it: the reporting connection's
/// cumulative count is applied when the session is active and of this device (whoever owns
/// it); the idle deadline moves only for its owner while the session waits on idleness (not
/// while it is in disconnect grace). Returns false when the session is not active (the
/// report is then listed as inactive). The Redis store applies the same rule in Lua; this is
/// the reference for other stores.
pub fn apply_activity(
    cfg: &Settings,
    s: &mut Session,
    req: &ActivityRequest,
    accepted: u64,
    now: i64,
) -> bool {
    if s.device_id != req.device_id || !s.is_active() {
        return false;
    }
    s.report(&req.owner, accepted);
    s.version += 1;
    if s.owner() == Some(req.owner.as_str()) && s.pending_reason == EndReason::IdleTimeout {
        s.deadline = now + cfg.idle_timeout_ms;
    }
    true
}

#[cfg(test)]
mod tests;
