//! In-memory [`crate::store::SessionStore`] for the embedded single-process mode.
//!
//! It behaves as [`crate::redis_store::RedisStore`] does, structure for structure: session
//! rows (ended ones expire `retention` after their last write), the devices' active pointers,
//! the 60 s request memory, the deadline schedule, the two listing indexes (sorted sets
//! ordered by score, then member, as Redis orders them), the gateway schedule and the
//! per-gateway session index. Every call takes the one lock, does
//! its work synchronously and releases it, so a plan's guards and writes are atomic as the
//! Lua commit is. Expiry is checked on every read (a record past its expiry does not exist)
//! and expired entries are purged whenever the lock is taken. The shared conformance suite
//! (`store/conformance.rs`) runs against both stores.

use crate::config::millis;
use crate::machine::{Guard, Phase, Plan, Session, Snapshot, Write};
use crate::redis_store::{parse_cursor, LIST_BATCH, LIST_MAX_BATCHES, REQUEST_MEMORY_MS};
use crate::store::{CommitOutcome, ListQuery, SessionStore, SnapshotQuery, StoreError};
use amr_proto::events::{SessionPage, SessionRecord, SessionState};
use amr_proto::internal::ActivityRequest;
use amr_proto::{ids, now_ms, EndReason};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Highest count the Redis activity script keeps exactly (Lua numbers are doubles); reports
/// are capped at it here too so that both stores count alike.
const MAX_EXACT_COUNT: u64 = 1 << 53;

/// A sorted set as Redis keeps one: members ordered by score, then by member bytes.
#[derive(Debug, Default)]
struct ZSet {
    scores: HashMap<String, i64>,
    order: BTreeSet<(i64, String)>,
}

impl ZSet {
    /// `ZADD`: inserts or moves `member` to `score`.
    fn add(&mut self, member: &str, score: i64) {
        match self.scores.insert(member.to_string(), score) {
            Some(old) if old == score => return,
            Some(old) => {
                self.order.remove(&(old, member.to_string()));
            }
            None => {}
        }
        self.order.insert((score, member.to_string()));
    }

    /// `ZREM`.
    fn remove(&mut self, member: &str) {
        if let Some(old) = self.scores.remove(member) {
            self.order.remove(&(old, member.to_string()));
        }
    }

    fn score(&self, member: &str) -> Option<i64> {
        self.scores.get(member).copied()
    }

    fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.scores.len()
    }

    /// Entries whose score is `<= max` (all when `None`), in ascending order.
    fn up_to(&self, max: Option<i64>) -> impl DoubleEndedIterator<Item = &(i64, String)> {
        // (max + 1, "") is the first entry past every entry at `max`.
        let end = match max.and_then(|m| m.checked_add(1)) {
            Some(next) => Bound::Excluded((next, String::new())),
            // No bound, or `i64::MAX`: everything.
            None => Bound::Unbounded,
        };
        self.order.range((Bound::Unbounded, end))
    }

    /// `ZRANGEBYSCORE -inf max LIMIT 0 count`.
    fn range_up_to(&self, max: i64, count: usize) -> Vec<String> {
        self.up_to(Some(max))
            .take(count)
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// `ZREVRANGEBYSCORE max -inf WITHSCORES LIMIT offset count`.
    fn rev_range(&self, max: Option<i64>, offset: usize, count: usize) -> Vec<(String, i64)> {
        self.up_to(max)
            .rev()
            .skip(offset)
            .take(count)
            .map(|(s, m)| (m.clone(), *s))
            .collect()
    }
}

#[derive(Debug)]
struct Row {
    session: Session,
    /// Unix ms from which the row no longer exists (`None`: kept until rewritten).
    expires_at: Option<i64>,
}

#[derive(Debug)]
struct Remembered {
    session_id: String,
    expires_at: i64,
}

/// Expiry is `expires_at <= now`, as for a Redis key given a TTL of 0 or less.
fn expired(expires_at: i64, now: i64) -> bool {
    expires_at <= now
}

#[derive(Debug, Default)]
struct State {
    rows: HashMap<String, Row>,
    /// `(expires_at, sessionId)` of the rows that expire, to purge them in order.
    row_expiry: BTreeSet<(i64, String)>,
    /// Device id -> its active session id.
    active: HashMap<String, String>,
    /// `(deviceId, requestId)` -> the session created for it.
    requests: HashMap<(String, String), Remembered>,
    /// `(expires_at, deviceId, requestId)`, to purge the request memory in order.
    request_expiry: BTreeSet<(i64, String, String)>,
    /// Active sessions by deadline (and the sweeper's leases).
    deadlines: ZSet,
    /// Every session by start time.
    all: ZSet,
    /// Each device's sessions by start time.
    by_device: HashMap<String, ZSet>,
    /// Gateways by last heartbeat (and the sweeper's leases on silent ones).
    gateways: ZSet,
    /// Gateway id -> the sessions its connections hold (no empty sets, as in Redis).
    gateway_sessions: HashMap<String, BTreeSet<String>>,
}

impl State {
    /// The row of `session_id` unless it expired.
    fn row(&self, session_id: &str, now: i64) -> Option<&Session> {
        self.rows
            .get(session_id)
            .filter(|r| !r.expires_at.is_some_and(|at| expired(at, now)))
            .map(|r| &r.session)
    }

    fn request(&self, device_id: &str, request_id: &str, now: i64) -> Option<&str> {
        self.requests
            .get(&(device_id.to_string(), request_id.to_string()))
            .filter(|r| !expired(r.expires_at, now))
            .map(|r| r.session_id.as_str())
    }

    /// Drops everything that expired by `now`. Expired rows also leave the listing indexes
    /// (Redis leaves that to the listing that meets them): their entries would otherwise
    /// pile up for the life of the process.
    fn purge(&mut self, now: i64) {
        while let Some((at, id)) = self.row_expiry.first().cloned() {
            if !expired(at, now) {
                break;
            }
            self.row_expiry.remove(&(at, id.clone()));
            if let Some(row) = self.rows.remove(&id) {
                let device_id = row.session.device_id;
                self.trim(Some(&device_id), &[id]);
            }
        }
        while let Some((at, device_id, request_id)) = self.request_expiry.first().cloned() {
            if !expired(at, now) {
                break;
            }
            self.request_expiry
                .remove(&(at, device_id.clone(), request_id.clone()));
            self.requests.remove(&(device_id, request_id));
        }
    }

    /// Removes a row (not its index entries, as a Redis `DEL` would not).
    fn delete_row(&mut self, session_id: &str) {
        if let Some(Row {
            expires_at: Some(at),
            ..
        }) = self.rows.remove(session_id)
        {
            self.row_expiry.remove(&(at, session_id.to_string()));
        }
    }

    /// Forgets `session_ids` in the device's index (`None`: only the global one) and in the
    /// global index, as the Redis listing does.
    fn trim(&mut self, device_id: Option<&str>, session_ids: &[String]) {
        if let Some(d) = device_id {
            if let Some(index) = self.by_device.get_mut(d) {
                for id in session_ids {
                    index.remove(id);
                }
                // Redis deletes a sorted set once it is empty.
                if index.is_empty() {
                    self.by_device.remove(d);
                }
            }
        }
        for id in session_ids {
            self.all.remove(id);
        }
    }

    fn index(&self, device_id: Option<&str>) -> Option<&ZSet> {
        match device_id {
            Some(d) => self.by_device.get(d),
            None => Some(&self.all),
        }
    }

    fn guard_holds(&self, guard: &Guard, now: i64) -> bool {
        match guard {
            Guard::Version {
                session_id,
                version,
            } => self.row(session_id, now).map(|s| s.version) == *version,
            Guard::ActivePointer {
                device_id,
                session_id,
            } => self.active.get(device_id) == session_id.as_ref(),
            Guard::DeadlineDue {
                session_id,
                now: due_at,
            } => self
                .row(session_id, now)
                .is_some_and(|s| s.deadline <= *due_at),
            Guard::Request {
                device_id,
                request_id,
                session_id,
            } => self.request(device_id, request_id, now) == session_id.as_deref(),
        }
    }

    fn apply(&mut self, write: &Write, now: i64, retention_ms: i64) {
        match write {
            Write::Put(s) => self.put(s, now, retention_ms),
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
                let key = (device_id.clone(), request_id.clone());
                let expires_at = now.saturating_add(REQUEST_MEMORY_MS);
                let remembered = Remembered {
                    session_id: session_id.clone(),
                    expires_at,
                };
                if let Some(old) = self.requests.insert(key, remembered) {
                    self.request_expiry.remove(&(
                        old.expires_at,
                        device_id.clone(),
                        request_id.clone(),
                    ));
                }
                self.request_expiry
                    .insert((expires_at, device_id.clone(), request_id.clone()));
            }
            Write::Schedule {
                session_id,
                deadline,
            } => self.deadlines.add(session_id, *deadline),
            Write::Unschedule { session_id } => self.deadlines.remove(session_id),
        }
    }

    /// The gateway index of the Redis commit's `gwidx`: the row leaves the set of the gateway
    /// its stored version names and enters the set of its gateway while a connection holds it.
    fn index_gateway(&mut self, s: &Session, now: i64) {
        let old = self
            .row(&s.session_id, now)
            .map(|old| old.gateway.clone())
            .unwrap_or_default();
        let held_by = match &s.phase {
            Phase::Active { owner } if !owner.is_empty() => s.gateway.as_str(),
            _ => "",
        };
        if !old.is_empty() && old != held_by {
            if let Some(set) = self.gateway_sessions.get_mut(&old) {
                set.remove(&s.session_id);
                if set.is_empty() {
                    self.gateway_sessions.remove(&old);
                }
            }
        }
        if !held_by.is_empty() {
            self.gateway_sessions
                .entry(held_by.to_string())
                .or_default()
                .insert(s.session_id.clone());
            if self.gateways.score(held_by).is_none() {
                self.gateways.add(held_by, now);
            }
        }
    }

    /// `Write::Put` with what the store derives from the row (see `RedisStore::put_ops`).
    fn put(&mut self, s: &Session, now: i64, retention_ms: i64) {
        self.index_gateway(s, now);
        let mut session = s.clone();
        // Read back as Redis reads the hash: an empty owner is no owner, an empty
        // replaced id is none.
        if session.owner().is_none() && session.is_active() {
            session.phase = Phase::Detached;
        }
        if session.replaced_session_id.as_deref() == Some("") {
            session.replaced_session_id = None;
        }
        match self.row(&s.session_id, now) {
            // `HSET` keeps the fields the new row does not name: connection counts too.
            Some(old) => {
                for (connection, accepted) in &old.accepted {
                    session
                        .accepted
                        .entry(connection.clone())
                        .or_insert(*accepted);
                }
            }
            // An expired row is gone: the new one starts from nothing, like a new key.
            None => self.delete_row(&s.session_id),
        }
        let expires_at = match s.phase {
            Phase::Ended { .. } => {
                self.deadlines.remove(&s.session_id);
                Some(now.saturating_add(retention_ms))
            }
            _ => {
                self.deadlines.add(&s.session_id, s.deadline);
                None
            }
        };
        self.insert_row(session, expires_at, now);
        self.all.add(&s.session_id, s.started_at);
        self.by_device
            .entry(s.device_id.clone())
            .or_default()
            .add(&s.session_id, s.started_at);
    }

    /// Stores a row with its expiry (replacing any row of that id).
    fn insert_row(&mut self, session: Session, expires_at: Option<i64>, now: i64) {
        let id = session.session_id.clone();
        if let Some(Row {
            expires_at: Some(old),
            ..
        }) = self.rows.get(&id)
        {
            self.row_expiry.remove(&(*old, id.clone()));
        }
        if let Some(at) = expires_at {
            if expired(at, now) {
                // `PEXPIRE` with no time left deletes the key at once.
                self.rows.remove(&id);
                return;
            }
            self.row_expiry.insert((at, id.clone()));
        }
        self.rows.insert(
            id,
            Row {
                session,
                expires_at,
            },
        );
    }
}

/// What [`MemoryStore::restore`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    Inserted,
    /// Its retention had already run out (`endedAt + retention <= now`): not inserted.
    Expired,
    /// The store already holds this session: kept as it is.
    Present,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("session {0}: not a well-formed session id or device id")]
    InvalidId(String),
    #[error("session {0}: not an ended record (state ended, endedAt and reason required)")]
    NotEnded(String),
}

#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    retention_ms: i64,
    idle_timeout_ms: i64,
    /// Added to the clock by tests that let time pass without waiting.
    #[cfg(test)]
    skew: Arc<std::sync::atomic::AtomicI64>,
}

impl MemoryStore {
    /// `retention`: how long an ended session stays readable; `idle_timeout`: how far an
    /// activity report of the owner moves the deadline (as for `RedisStore::connect`).
    pub fn new(retention: Duration, idle_timeout: Duration) -> MemoryStore {
        MemoryStore {
            state: Arc::new(Mutex::new(State::default())),
            retention_ms: millis(retention),
            idle_timeout_ms: millis(idle_timeout),
            #[cfg(test)]
            skew: Arc::default(),
        }
    }

    /// Imports an ended session (read back from the embedded mode's session index after a
    /// restart) into the store and its listing indexes. It expires `retention` after its
    /// end, as it would have had the process kept running.
    pub fn restore(&self, record: SessionRecord) -> Result<Restored, RestoreError> {
        if !ids::is_valid_session_id(&record.session_id)
            || !ids::is_valid_device_id(&record.device_id)
        {
            return Err(RestoreError::InvalidId(record.session_id));
        }
        let (SessionState::Ended, Some(ended_at), Some(reason)) =
            (record.state, record.ended_at, record.reason)
        else {
            return Err(RestoreError::NotEnded(record.session_id));
        };
        let now = self.now();
        // An end stamped in the future (the clock went back) still gets no more than the
        // retention from now.
        let expires_at = ended_at.min(now).saturating_add(self.retention_ms);
        if expired(expires_at, now) {
            return Ok(Restored::Expired);
        }
        let mut state = self.lock();
        state.purge(now);
        if state.row(&record.session_id, now).is_some() {
            return Ok(Restored::Present);
        }
        let session = Session {
            session_id: record.session_id,
            device_id: record.device_id,
            phase: Phase::Ended { reason, ended_at },
            started_at: record.started_at,
            data_count: record.data_count,
            // Per-connection maxima only matter while a session can still be reported on.
            accepted: BTreeMap::new(),
            gateway: String::new(),
            replaced_session_id: None,
            pending_reason: reason,
            deadline: ended_at,
            version: 1,
        };
        let (id, device_id, started_at) = (
            session.session_id.clone(),
            session.device_id.clone(),
            session.started_at,
        );
        state.deadlines.remove(&id);
        state.insert_row(session, Some(expires_at), now);
        state.all.add(&id, started_at);
        state
            .by_device
            .entry(device_id)
            .or_default()
            .add(&id, started_at);
        Ok(Restored::Inserted)
    }

    /// The clock of every expiry (the engine's clock).
    fn now(&self) -> i64 {
        now_ms().saturating_add(self.skew())
    }

    #[cfg(not(test))]
    fn skew(&self) -> i64 {
        0
    }

    #[cfg(test)]
    fn skew(&self) -> i64 {
        self.skew.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under the lock can panic (no indexing, no unchecked arithmetic), so a
        // poisoned lock still guards consistent maps.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the lock and purges what expired (every call starts here); the clock's now.
    fn locked(&self) -> (MutexGuard<'_, State>, i64) {
        let now = self.now();
        let mut state = self.lock();
        state.purge(now);
        (state, now)
    }

    fn snapshot_now(&self, query: &SnapshotQuery) -> Snapshot {
        let (state, now) = self.locked();
        let active = query
            .device_id
            .as_ref()
            .and_then(|d| state.active.get(d).cloned());
        let by_request = match (&query.device_id, &query.request_id) {
            (Some(d), Some(r)) => state.request(d, r, now).map(String::from),
            _ => None,
        };
        let mut sessions: Vec<Session> = Vec::new();
        for id in active
            .iter()
            .chain(by_request.iter())
            .chain(query.session_ids.iter())
        {
            if sessions.iter().any(|s| &s.session_id == id) {
                continue;
            }
            if let Some(s) = state.row(id, now) {
                sessions.push(s.clone());
            }
        }
        Snapshot {
            active,
            by_request,
            sessions,
        }
    }

    fn commit_now(&self, plan: &Plan) -> CommitOutcome {
        let (mut state, now) = self.locked();
        if !plan.guards.iter().all(|g| state.guard_holds(g, now)) {
            return CommitOutcome::Conflict;
        }
        for w in &plan.writes {
            state.apply(w, now, self.retention_ms);
        }
        CommitOutcome::Committed
    }

    /// The activity script's rule (`machine::apply_activity`), report by report.
    fn activity_now(&self, req: &ActivityRequest, now: i64) -> Vec<String> {
        // Ids that cannot name a session are inactive without a look, listed first.
        let (valid, invalid): (Vec<_>, Vec<_>) = req
            .reports
            .iter()
            .partition(|r| ids::is_valid_session_id(&r.session_id));
        let mut inactive: Vec<String> = invalid.into_iter().map(|r| r.session_id.clone()).collect();
        if valid.is_empty() {
            return inactive;
        }
        let deadline = now.saturating_add(self.idle_timeout_ms);
        let (mut guard, ttl_now) = self.locked();
        let state = &mut *guard;
        for r in valid {
            let row = state
                .rows
                .get_mut(&r.session_id)
                .filter(|row| !row.expires_at.is_some_and(|at| expired(at, ttl_now)))
                .map(|row| &mut row.session)
                .filter(|s| s.is_active() && s.device_id == req.device_id);
            let Some(s) = row else {
                inactive.push(r.session_id.clone());
                continue;
            };
            s.report(&req.owner, r.accepted.min(MAX_EXACT_COUNT));
            s.version += 1;
            if s.owner() == Some(req.owner.as_str()) && s.pending_reason == EndReason::IdleTimeout {
                s.deadline = deadline;
                state.deadlines.add(&r.session_id, deadline);
            }
        }
        inactive
    }

    fn claim_now(&self, session_id: &str, now: i64, lease_ms: i64) -> bool {
        let (mut state, _) = self.locked();
        match state.deadlines.score(session_id) {
            Some(at) if at <= now => {
                state
                    .deadlines
                    .add(session_id, now.saturating_add(lease_ms));
                true
            }
            _ => false,
        }
    }

    /// The Redis listing, batch for batch (`RedisStore::list`): the same pages and the same
    /// cursors, including where a long scan gives up and hands back a cursor.
    fn list_now(&self, query: &ListQuery) -> Result<SessionPage, StoreError> {
        let mut pos = match &query.cursor {
            Some(c) => Some(parse_cursor(c).ok_or(StoreError::InvalidCursor)?),
            None => None,
        };
        let device = query.device_id.as_deref();
        let (mut state, now) = self.locked();
        let mut offset = 0usize;
        let mut found: Vec<(i64, SessionRecord)> = Vec::new();
        let mut exhausted = false;
        'batches: for _ in 0..LIST_MAX_BATCHES {
            let max = pos.as_ref().map(|(s, _)| *s);
            let batch = state
                .index(device)
                .map(|z| z.rev_range(max, offset, LIST_BATCH))
                .unwrap_or_default();
            let full = batch.len() == LIST_BATCH;
            // Entries at the cursor's score that sort at or after its member were seen already.
            let fresh: Vec<(String, i64)> = batch
                .into_iter()
                .filter(|(m, s)| match &pos {
                    Some((ps, pm)) => !(s == ps && m >= pm),
                    None => true,
                })
                .collect();
            if fresh.is_empty() {
                if full {
                    // A run of equal scores longer than a batch: step over it.
                    offset += LIST_BATCH;
                    continue;
                }
                exhausted = true;
                break;
            }
            offset = 0;
            let mut gone = Vec::new();
            for (m, s) in fresh {
                pos = Some((s, m.clone()));
                let record = ids::is_valid_session_id(&m)
                    .then(|| state.row(&m, now).map(Session::record))
                    .flatten();
                let Some(record) = record else {
                    gone.push(m);
                    continue;
                };
                if query.state.is_none_or(|want| want == record.state) {
                    found.push((s, record));
                    if found.len() > query.limit {
                        state.trim(device, &gone);
                        break 'batches;
                    }
                }
            }
            state.trim(device, &gone);
            if !full {
                exhausted = true;
                break;
            }
        }
        let next_cursor = if found.len() > query.limit {
            found.truncate(query.limit);
            found
                .last()
                .map(|(s, record)| format!("{s}:{}", record.session_id))
        } else if exhausted {
            None
        } else {
            // Gave up scanning for this page: resume where it stopped.
            pos.map(|(s, m)| format!("{s}:{m}"))
        };
        Ok(SessionPage {
            sessions: found.into_iter().map(|(_, r)| r).collect(),
            next_cursor,
        })
    }
}

impl SessionStore for MemoryStore {
    async fn snapshot(&self, query: &SnapshotQuery) -> Result<Snapshot, StoreError> {
        Ok(self.snapshot_now(query))
    }

    async fn commit(&self, plan: &Plan) -> Result<CommitOutcome, StoreError> {
        Ok(self.commit_now(plan))
    }

    async fn activity(&self, req: &ActivityRequest, now: i64) -> Result<Vec<String>, StoreError> {
        Ok(self.activity_now(req, now))
    }

    async fn due(&self, now: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        let (state, _) = self.locked();
        Ok(state.deadlines.range_up_to(now, limit))
    }

    async fn claim_due(
        &self,
        session_id: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        Ok(self.claim_now(session_id, now, lease_ms))
    }

    async fn heartbeat(&self, gateway_id: &str, now: i64) -> Result<(), StoreError> {
        self.locked().0.gateways.add(gateway_id, now);
        Ok(())
    }

    async fn silent_gateways(
        &self,
        silent_since: i64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let (state, _) = self.locked();
        Ok(state.gateways.range_up_to(silent_since, limit))
    }

    async fn claim_gateway(
        &self,
        gateway_id: &str,
        silent_since: i64,
        claimed: i64,
    ) -> Result<bool, StoreError> {
        let (mut state, _) = self.locked();
        match state.gateways.score(gateway_id) {
            Some(at) if at <= silent_since => {
                state.gateways.add(gateway_id, claimed);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn gateway_sessions(&self, gateway_id: &str) -> Result<Vec<String>, StoreError> {
        let (state, _) = self.locked();
        Ok(state
            .gateway_sessions
            .get(gateway_id)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn forget_gateway(&self, gateway_id: &str, claimed: i64) -> Result<bool, StoreError> {
        let (mut state, _) = self.locked();
        let holds = state
            .gateway_sessions
            .get(gateway_id)
            .is_some_and(|set| !set.is_empty());
        if state.gateways.score(gateway_id) != Some(claimed) || holds {
            return Ok(false);
        }
        state.gateways.remove(gateway_id);
        state.gateway_sessions.remove(gateway_id);
        Ok(true)
    }

    async fn get(&self, session_id: &str) -> Result<Option<Session>, StoreError> {
        if !ids::is_valid_session_id(session_id) {
            return Ok(None);
        }
        let (state, now) = self.locked();
        Ok(state.row(session_id, now).cloned())
    }

    async fn list(&self, query: &ListQuery) -> Result<SessionPage, StoreError> {
        self.list_now(query)
    }

    async fn ping(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests;
