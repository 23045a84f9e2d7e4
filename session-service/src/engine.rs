//! Runs the decisions of `machine.rs` against the store and the connections: snapshot,
//! decide, revoke or commit, retry on conflict; then perform the effects of what committed.

use crate::events::Lifecycle;
use crate::machine::{self, Decision, Effect, Expiry, GatewayLoss, Revoked, Settings, Snapshot};
use crate::owners::Connections;
use crate::store::{CommitOutcome, SessionStore, SnapshotQuery, StoreError};
use amr_proto::internal::{
    ActivityOk, ActivityRequest, ClaimOk, ClaimRequest, DisconnectOk, DisconnectRequest, EndOk,
    EndRequest, HeartbeatOk, HeartbeatRequest, ServiceError, StartOk, StartRequest,
};
use amr_proto::{ids, now_ms, ErrorCode};
use std::sync::Arc;
use tracing::{debug, warn};

/// Snapshot/decide/commit rounds (revocations included) before giving up on contention.
const MAX_ROUNDS: usize = 16;

#[derive(Clone)]
pub struct Engine<S> {
    store: S,
    owners: Arc<dyn Connections>,
    events: Arc<dyn Lifecycle>,
    settings: Settings,
}

pub fn store_error(e: StoreError) -> ServiceError {
    match e {
        StoreError::Unavailable(m) => ServiceError::new(ErrorCode::ServiceUnavailable, m),
        StoreError::Corrupt(m) => ServiceError::new(ErrorCode::InternalError, m),
        StoreError::InvalidCursor => ServiceError::new(ErrorCode::InvalidMessage, "invalid cursor"),
    }
}

fn check_device(device_id: &str) -> Result<(), ServiceError> {
    if ids::is_valid_device_id(device_id) {
        Ok(())
    } else {
        Err(ServiceError::new(
            ErrorCode::InvalidDeviceId,
            "deviceId must be 1-64 characters of [A-Za-z0-9_-]",
        ))
    }
}

/// The ids among `candidates` that can name a session (others are never read).
fn session_ids<'a>(candidates: impl IntoIterator<Item = Option<&'a String>>) -> Vec<String> {
    candidates
        .into_iter()
        .flatten()
        .filter(|id| ids::is_valid_session_id(id))
        .cloned()
        .collect()
}

impl<S: SessionStore> Engine<S> {
    pub fn new(
        store: S,
        owners: Arc<dyn Connections>,
        events: Arc<dyn Lifecycle>,
        settings: Settings,
    ) -> Engine<S> {
        Engine {
            store,
            owners,
            events,
            settings,
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Whether the gateways' connections (and so their heartbeats) can get through now.
    pub fn connections_reachable(&self) -> bool {
        self.owners.reachable()
    }

    pub async fn start(&self, req: &StartRequest) -> Result<StartOk, ServiceError> {
        check_device(&req.device_id)?;
        if !ids::is_valid_request_id(&req.request_id) {
            return Err(ServiceError::new(
                ErrorCode::InvalidMessage,
                "requestId must be 1-128 characters of [A-Za-z0-9_.:-]",
            ));
        }
        let fresh = ids::new_session_id();
        if req.current.is_none() && req.adopt_session_id.is_none() {
            if let Some(started) = self.start_on_clean_device(req, &fresh).await? {
                return Ok(started);
            }
        }
        let query = SnapshotQuery {
            device_id: Some(req.device_id.clone()),
            request_id: Some(req.request_id.clone()),
            session_ids: session_ids([
                req.current.as_ref().map(|c| &c.session_id),
                req.adopt_session_id.as_ref(),
            ]),
        };
        self.run(&query, |snap, revoked, now| {
            machine::start(&self.settings, snap, req, revoked, now, &fresh)
        })
        .await
    }

    /// The common start, START after STOP: the connection holds no session, and the device
    /// most likely has no active session and no remembered answer for this request. Decide on
    /// that guess (an empty snapshot) and let the commit's guards check it: right, the start
    /// costs one store round trip instead of two; wrong, nothing is written (`None`) and the
    /// caller reads the device's real state and decides again.
    async fn start_on_clean_device(
        &self,
        req: &StartRequest,
        fresh: &str,
    ) -> Result<Option<StartOk>, ServiceError> {
        let guess = Snapshot::default();
        let Decision::Commit { plan, reply } =
            machine::start(&self.settings, &guess, req, &[], now_ms(), fresh)
        else {
            return Ok(None);
        };
        match self.store.commit(&plan).await.map_err(store_error)? {
            CommitOutcome::Committed => {
                metrics::counter!(crate::metrics::CLEAN_STARTS, "outcome" => "committed")
                    .increment(1);
                self.perform(&plan.effects).await;
                Ok(Some(reply))
            }
            CommitOutcome::Conflict => {
                metrics::counter!(crate::metrics::CLEAN_STARTS, "outcome" => "conflict")
                    .increment(1);
                debug!("the device has a session or a remembered request; reading its state");
                Ok(None)
            }
        }
    }

    pub async fn end(&self, req: &EndRequest) -> Result<EndOk, ServiceError> {
        check_device(&req.device_id)?;
        if let Some(id) = req
            .session_id
            .as_deref()
            .filter(|id| !ids::is_valid_session_id(id))
        {
            return Err(ServiceError::new(
                ErrorCode::SessionNotFound,
                "no such session for this device",
            )
            .with_session(id));
        }
        let query = SnapshotQuery {
            device_id: Some(req.device_id.clone()),
            request_id: None,
            session_ids: session_ids([req.session_id.as_ref()]),
        };
        self.run(&query, |snap, revoked, now| {
            machine::end(snap, req, revoked, now)
        })
        .await
    }

    pub async fn claim(&self, req: &ClaimRequest) -> Result<ClaimOk, ServiceError> {
        check_device(&req.device_id)?;
        let query = SnapshotQuery {
            device_id: None,
            request_id: None,
            session_ids: session_ids([Some(&req.session_id)]),
        };
        self.run(&query, |snap, revoked, now| {
            machine::claim(&self.settings, snap, req, revoked, now)
        })
        .await
    }

    pub async fn disconnect(&self, req: &DisconnectRequest) -> Result<DisconnectOk, ServiceError> {
        check_device(&req.device_id)?;
        let query = SnapshotQuery {
            device_id: None,
            request_id: None,
            session_ids: session_ids([Some(&req.session_id)]),
        };
        let outcome = self
            .run(&query, |snap, _revoked, now| {
                machine::disconnect(&self.settings, snap, req, now)
            })
            .await?;
        Ok(DisconnectOk { outcome })
    }

    pub async fn activity(&self, req: &ActivityRequest) -> Result<ActivityOk, ServiceError> {
        check_device(&req.device_id)?;
        let inactive = self
            .store
            .activity(req, now_ms())
            .await
            .map_err(store_error)?;
        Ok(ActivityOk { inactive })
    }

    /// A gateway's heartbeat: it is alive now.
    pub async fn heartbeat(&self, req: &HeartbeatRequest) -> Result<HeartbeatOk, ServiceError> {
        // It becomes part of a key.
        if !ids::is_valid_gateway_id(&req.gateway_id) {
            return Err(ServiceError::new(
                ErrorCode::InvalidMessage,
                "gatewayId must be 1-128 characters of [A-Za-z0-9_-]",
            ));
        }
        self.store
            .heartbeat(&req.gateway_id, now_ms())
            .await
            .map_err(store_error)?;
        Ok(HeartbeatOk {})
    }

    /// The gateway-loss sweep's end path for one session indexed under a silent gateway.
    pub async fn gateway_lost(
        &self,
        session_id: &str,
        gateway_id: &str,
    ) -> Result<GatewayLoss, ServiceError> {
        let query = SnapshotQuery {
            device_id: None,
            request_id: None,
            session_ids: session_ids([Some(&session_id.to_string())]),
        };
        self.run(&query, |snap, revoked, now| {
            machine::gateway_lost(&self.settings, snap, session_id, gateway_id, revoked, now)
        })
        .await
    }

    /// The sweeper's end path for one claimed, due session.
    pub async fn expire(&self, session_id: &str) -> Result<Expiry, ServiceError> {
        let query = SnapshotQuery {
            device_id: None,
            request_id: None,
            session_ids: session_ids([Some(&session_id.to_string())]),
        };
        self.run(&query, |snap, revoked, now| {
            machine::expire(&self.settings, snap, session_id, revoked, now)
        })
        .await
    }

    /// Snapshot, decide, then revoke (and decide again) or commit (and on a conflict reload
    /// and decide again). Revocation answers are kept across rounds: a revoked connection has
    /// handed its samples over and will not report them again.
    async fn run<T>(
        &self,
        query: &SnapshotQuery,
        decide: impl Fn(&Snapshot, &[Revoked], i64) -> Decision<T>,
    ) -> Result<T, ServiceError> {
        let mut revoked: Vec<Revoked> = Vec::new();
        for _ in 0..MAX_ROUNDS {
            let snap = self.store.snapshot(query).await.map_err(store_error)?;
            match decide(&snap, &revoked, now_ms()) {
                Decision::Fail(e) => return Err(e),
                Decision::Done(reply) => return Ok(reply),
                Decision::Revoke {
                    device_id,
                    session_id,
                    owner,
                } => {
                    let count = self.owners.revoke(&device_id, &session_id, &owner).await;
                    revoked.push(Revoked {
                        session_id,
                        owner,
                        count,
                    });
                }
                Decision::Commit { plan, reply } => {
                    match self.store.commit(&plan).await.map_err(store_error)? {
                        CommitOutcome::Committed => {
                            self.perform(&plan.effects).await;
                            return Ok(reply);
                        }
                        CommitOutcome::Conflict => debug!("commit conflict; deciding again"),
                    }
                }
            }
        }
        if !revoked.is_empty() {
            warn!(?revoked, "gave up under contention after revoking");
        }
        Err(ServiceError::new(
            ErrorCode::ServiceUnavailable,
            "too much contention on this session; retry",
        ))
    }

    async fn perform(&self, effects: &[Effect]) {
        for effect in effects {
            match effect {
                Effect::Created(e) => {
                    metrics::counter!(crate::metrics::SESSIONS_STARTED).increment(1);
                    self.events.created(e).await;
                }
                Effect::Ended(e) => {
                    metrics::counter!(crate::metrics::SESSIONS_ENDED, "reason" => e.reason.as_str())
                        .increment(1);
                    self.events.ended(e).await;
                }
                Effect::PushEnded { owner, event } => self.owners.push_ended(owner, event).await,
            }
        }
    }
}

#[cfg(test)]
mod tests;
