//! The session store interface: how decisions of `machine.rs` read and change state.
//!
//! Kept free of Redis notions so that an in-memory store (embedded single-process mode: a
//! mutex around maps, with the same TTL semantics) can implement it too.

use crate::machine::{Plan, Session, Snapshot};
use amr_proto::events::{SessionPage, SessionState};
use amr_proto::internal::ActivityRequest;
use std::future::Future;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or did not answer in time.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something this code cannot read.
    #[error("session store returned an unreadable answer: {0}")]
    Corrupt(String),
    /// A listing cursor that no listing produced.
    #[error("invalid cursor")]
    InvalidCursor,
}

/// What a decision needs to read (all of it in one consistent read).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotQuery {
    /// Read this device's active pointer and its row.
    pub device_id: Option<String>,
    /// With `device_id`: read the session remembered for this request id and its row.
    pub request_id: Option<String>,
    /// Further rows to read (only valid session ids).
    pub session_ids: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed,
    /// A guard no longer held: nothing was written; reload and decide again.
    Conflict,
}

/// `GET /api/sessions` parameters, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub device_id: Option<String>,
    pub state: Option<SessionState>,
    /// 1..=1000.
    pub limit: usize,
    /// Opaque position from a previous page's `nextCursor`.
    pub cursor: Option<String>,
}

pub trait SessionStore: Clone + Send + Sync + 'static {
    /// Reads what a decision needs, in one round trip.
    fn snapshot(
        &self,
        query: &SnapshotQuery,
    ) -> impl Future<Output = Result<Snapshot, StoreError>> + Send;

    /// Applies `plan.writes` atomically iff every guard of `plan.guards` still holds. With each
    /// `Write::Put` the gateway index follows the row: an active row with an owner is in the
    /// set of its `gateway` (which enters the gateway schedule at the commit's time unless it
    /// is there already), any other row in no set.
    fn commit(&self, plan: &Plan)
        -> impl Future<Output = Result<CommitOutcome, StoreError>> + Send;

    /// Applies a batch of activity reports atomically (rule: `machine::apply_activity`).
    /// Returns the ids of the reports whose session is not active (not applied).
    fn activity(
        &self,
        req: &ActivityRequest,
        now: i64,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Up to `limit` sessions whose deadline is `<= now`, earliest first.
    fn due(
        &self,
        now: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Claims a due session for `lease_ms` so that one replica works on it: true iff its
    /// deadline was `<= now` (it is then pushed to `now + lease_ms`).
    fn claim_due(
        &self,
        session_id: &str,
        now: i64,
        lease_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records a heartbeat of `gateway_id` at `now` (its score in the gateway schedule).
    fn heartbeat(
        &self,
        gateway_id: &str,
        now: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Up to `limit` gateways whose score (last heartbeat, or end of a sweeper's lease) is
    /// `<= silent_since`, earliest first.
    fn silent_gateways(
        &self,
        silent_since: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Claims a silent gateway so that one replica works on it: true iff its score was
    /// `<= silent_since`; the score is then set to `claimed` (the claim's token; a heartbeat
    /// overwrites it). Choose `claimed` so that the gateway is silent again once the lease ends.
    fn claim_gateway(
        &self,
        gateway_id: &str,
        silent_since: i64,
        claimed: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The sessions indexed under a gateway: every row that is active with an owner and names
    /// that gateway (the store keeps this index with every row it writes).
    fn gateway_sessions(
        &self,
        gateway_id: &str,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Forgets a claimed gateway (schedule entry and index) iff its score is still `claimed`
    /// (no heartbeat since the claim) and it holds no session. True iff forgotten.
    fn forget_gateway(
        &self,
        gateway_id: &str,
        claimed: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    fn get(
        &self,
        session_id: &str,
    ) -> impl Future<Output = Result<Option<Session>, StoreError>> + Send;

    /// Newest first. Sessions whose record expired are skipped (and forgotten).
    fn list(
        &self,
        query: &ListQuery,
    ) -> impl Future<Output = Result<SessionPage, StoreError>> + Send;

    /// True when the store answers.
    fn ping(&self) -> impl Future<Output = bool> + Send;

    /// Sessions active now, when the store can count them in one cheap call (metrics).
    fn active_count(&self) -> impl Future<Output = Option<u64>> + Send {
        async { None }
    }
}

#[cfg(test)]
pub(crate) mod conformance;
