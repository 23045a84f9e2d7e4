//! Ends sessions whose deadline passed (idle timeout, disconnect grace). Every replica runs
//! it; the atomic claim of a due session makes one replica at a time work on it, and the
//! version-guarded commit makes exactly one of them end it (one `ended` event).

use crate::config::millis;
use crate::engine::Engine;
use crate::machine::Expiry;
use crate::store::SessionStore;
use amr_proto::now_ms;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// Due sessions looked at per tick.
const BATCH: usize = 100;

/// Runs until `stop` turns true. `lease` is how long a claimed session stays with this
/// replica before another may retry it (when this one died while working on it).
pub async fn run<S: SessionStore>(
    engine: Arc<Engine<S>>,
    interval: Duration,
    lease: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let lease_ms = millis(lease);
    info!(?interval, ?lease, "sweeper started");
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
    info!("sweeper stopped");
}
