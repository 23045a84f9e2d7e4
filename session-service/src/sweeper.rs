//! Ends the sessions nobody ends: those whose deadline passed (idle timeout, disconnect grace)
//! and those held by a gateway that went silent (`gateway_lost`). Every replica runs it; the
//! atomic claim of a due session (or of a silent gateway) makes one replica at a time work on
//! it, and the version-guarded commit makes exactly one of them end it (one `ended` event).

use crate::config::millis;
use crate::engine::Engine;
use crate::machine::{Expiry, GatewayLoss};
use crate::store::SessionStore;
use amr_proto::now_ms;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// Due sessions (or silent gateways) looked at per tick.
const BATCH: usize = 100;
/// Sessions of one lost gateway ended at once.
const PARALLEL_ENDS: usize = 32;

/// When gateways count as lost, from `AMR_GATEWAY_LOST_AFTER` (the bound within which the
/// sessions of a dead gateway end). Gateways heartbeat every third of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostGateways {
    pub after: Duration,
}

impl LostGateways {
    /// A gateway whose last heartbeat is older than this is lost: the bound less half a
    /// heartbeat period. One missed heartbeat is tolerated with margin, and the sessions of a
    /// dead gateway (whose last heartbeat preceded its death) end within the bound, sweep
    /// period included.
    pub fn silence(&self) -> Duration {
        self.after - self.after / 6
    }

    /// How often silent gateways are looked for.
    pub fn interval(&self) -> Duration {
        (self.after / 12).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

/// Runs until `stop` turns true. `lease` is how long a claimed session (or gateway) stays
/// with this replica before another may retry it (when this one died while working on it).
/// `lost`: also end the sessions of silent gateways (`None` in the embedded mode, where the
/// gateway and the sessions live and die in one process).
pub async fn run<S: SessionStore>(
    engine: Arc<Engine<S>>,
    interval: Duration,
    lease: Duration,
    lost: Option<LostGateways>,
    stop: watch::Receiver<bool>,
) {
    info!(?interval, ?lease, ?lost, "sweeper started");
    let deadlines = sweep_deadlines(engine.clone(), interval, lease, stop.clone());
    match lost {
        Some(lost) => {
            tokio::join!(deadlines, sweep_gateways(engine, lost, lease, stop));
        }
        None => deadlines.await,
    }
    info!("sweeper stopped");
}

async fn sweep_deadlines<S: SessionStore>(
    engine: Arc<Engine<S>>,
    interval: Duration,
    lease: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let lease_ms = millis(lease);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let now = now_ms();
        let due = match engine.store().due(now, BATCH).await {
            Ok(due) => due,
            Err(e) => {
                debug!(error = %e, "sweeper could not list deadlines");
                continue;
            }
        };
        let mut work = JoinSet::new();
        for session_id in due {
            match engine.store().claim_due(&session_id, now, lease_ms).await {
                Ok(true) => {
                    let engine = engine.clone();
                    work.spawn(async move {
                        match engine.expire(&session_id).await {
                            Ok(Expiry::Ended(e)) => {
                                info!(session_id, reason = %e.reason, data_count = e.data_count, "session ended by deadline")
                            }
                            Ok(Expiry::Extended) => {
                                debug!(session_id, "owner had unreported data; not idle")
                            }
                            Ok(Expiry::NotDue | Expiry::Forgotten) => {}
                            // The lease runs out and a replica tries again.
                            Err(e) => warn!(session_id, error = %e.message, "sweep failed"),
                        }
                    });
                }
                Ok(false) => {}
                Err(e) => debug!(session_id, error = %e, "claim failed"),
            }
        }
        // Finish this tick's ends before the next tick (and before a shutdown completes).
        while work.join_next().await.is_some() {}
    }
}

async fn sweep_gateways<S: SessionStore>(
    engine: Arc<Engine<S>>,
    lost: LostGateways,
    lease: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let silence = lost.silence();
    let silence_ms = millis(silence);
    let lease_ms = millis(lease);
    // Since when this replica has reached the store and NATS without a failure. Heartbeats
    // are not recorded while either (or every replica) is away: after such an outage every
    // gateway looks silent until its next heartbeat lands, so nothing is declared lost before
    // both have been reachable for a whole silence period.
    let mut reachable_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(lost.interval()) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        if !engine.connections_reachable() {
            reachable_since = None;
            continue;
        }
        let now = now_ms();
        let silent_since = now.saturating_sub(silence_ms);
        let silent = match engine.store().silent_gateways(silent_since, BATCH).await {
            Ok(silent) => silent,
            Err(e) => {
                reachable_since = None;
                debug!(error = %e, "sweeper could not list gateways");
                continue;
            }
        };
        let since = *reachable_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() < silence {
            continue;
        }
        for gateway_id in silent {
            if *stop.borrow() {
                break;
            }
            // Silent again once the lease ends, unless a heartbeat comes first.
            let claimed = silent_since.saturating_add(lease_ms);
            match engine
                .store()
                .claim_gateway(&gateway_id, silent_since, claimed)
                .await
            {
                Ok(true) => sweep_gateway(&engine, &gateway_id, claimed, &stop).await,
                Ok(false) => {}
                Err(e) => {
                    reachable_since = None;
                    debug!(gateway_id, error = %e, "gateway claim failed");
                }
            }
        }
    }
}

/// Ends the sessions a claimed, silent gateway held, then forgets the gateway once it holds
/// none (and sent no heartbeat since the claim).
async fn sweep_gateway<S: SessionStore>(
    engine: &Arc<Engine<S>>,
    gateway_id: &str,
    claimed: i64,
    stop: &watch::Receiver<bool>,
) {
    let sessions = match engine.store().gateway_sessions(gateway_id).await {
        Ok(s) => s,
        Err(e) => {
            // The lease runs out and a replica tries again.
            debug!(gateway_id, error = %e, "could not read the gateway's sessions");
            return;
        }
    };
    let (mut ended, mut failed, mut alive) = (0usize, 0usize, false);
    for chunk in sessions.chunks(PARALLEL_ENDS) {
        if *stop.borrow() {
            return;
        }
        let mut work = JoinSet::new();
        for session_id in chunk {
            let (engine, session_id, gateway_id) =
                (engine.clone(), session_id.clone(), gateway_id.to_string());
            work.spawn(async move {
                let outcome = engine.gateway_lost(&session_id, &gateway_id).await;
                (session_id, outcome)
            });
        }
        while let Some(done) = work.join_next().await {
            match done {
                Ok((session_id, Ok(GatewayLoss::Ended(e)))) => {
                    ended += 1;
                    info!(
                        session_id,
                        gateway_id,
                        data_count = e.data_count,
                        "session ended: gateway lost"
                    );
                }
                Ok((_, Ok(GatewayLoss::Alive))) => alive = true,
                Ok((_, Ok(GatewayLoss::NotHeld))) => {}
                Ok((session_id, Err(e))) => {
                    failed += 1;
                    warn!(session_id, gateway_id, error = %e.message, "gateway-loss end failed; retried after the lease");
                }
                Err(e) => {
                    failed += 1;
                    warn!(gateway_id, error = %e, "gateway-loss end task failed");
                }
            }
        }
        if alive {
            break;
        }
    }
    if ended > 0 {
        metrics::counter!(crate::metrics::GATEWAYS_LOST).increment(1);
        info!(
            gateway_id,
            ended, "gateway lost: the sessions it held ended"
        );
    }
    if alive {
        // One of its connections answered: the gateway lives, only its heartbeats did not
        // arrive. Record the sign of life so that its other connections are left alone.
        warn!(
            gateway_id,
            "gateway silent but alive (a connection answered its revocation); sessions kept"
        );
        if let Err(e) = engine.store().heartbeat(gateway_id, now_ms()).await {
            debug!(gateway_id, error = %e, "could not record the gateway as alive");
        }
        return;
    }
    if failed > 0 {
        return;
    }
    match engine.store().forget_gateway(gateway_id, claimed).await {
        Ok(true) => debug!(gateway_id, "silent gateway forgotten"),
        // A heartbeat since the claim, or a session indexed meanwhile: kept.
        Ok(false) => {}
        Err(e) => debug!(gateway_id, error = %e, "could not forget the gateway"),
    }
}

#[cfg(test)]
mod tests;
