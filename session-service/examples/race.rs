//! Racing starts against running replicas: for each of N devices, two connections (on two
//! gateways) start a session at the same time. Checks, as a core NATS subscriber sees the
//! lifecycle events, that each device ends with exactly one active session, the other one
//! ended `replaced` exactly once, and that no session got two `ended` events.
//!
//! `AMR_SUBJECT_PREFIX=try3 cargo run -p amr-session-service --example race -- 200`
//! (with one or more services running on that prefix, with an idle timeout well above the
//! few seconds this takes).

use amr_proto::events::{SessionCreatedEvent, SessionEndedEvent};
use amr_proto::internal::{ConnEvent, Reply, RevokeReply, StartOk, StartRequest};
use amr_proto::subjects::{ops, Subjects};
use amr_proto::EndReason;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::time::Duration;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("AMR_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let prefix = std::env::var("AMR_SUBJECT_PREFIX").unwrap_or_else(|_| "amr".into());
    let devices: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(50);
    let subjects = Subjects::new(prefix.clone());
    let nats = async_nats::connect(url).await?;
    let run = std::process::id();

    // Every connection of the two fake gateways answers revocations: nothing unreported.
    let mut conns = nats.subscribe(format!("{prefix}.internal.gw.>")).await?;
    let answering = nats.clone();
    let pushed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pushed_in = pushed.clone();
    tokio::spawn(async move {
        while let Some(msg) = conns.next().await {
            match serde_json::from_slice::<ConnEvent>(&msg.payload) {
                Ok(ConnEvent::Revoke { session_id }) => {
                    if let (Some(reply), Ok(body)) = (
                        msg.reply,
                        serde_json::to_vec(&RevokeReply {
                            session_id,
                            accepted: 0,
                        }),
                    ) {
                        let _ = answering.publish(reply, body.into()).await;
                    }
                }
                Ok(ConnEvent::SessionEnded(_)) => {
                    pushed_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(_) => {}
            }
        }
    });
    let mut events = nats.subscribe(subjects.session_all()).await?;
    nats.flush().await?;

    let mut calls = Vec::new();
    for d in 0..devices {
        let device = format!("RACE_{run}_{d}");
        for gw in ["gw1", "gw2"] {
            let req = StartRequest {
                device_id: device.clone(),
                request_id: format!("{gw}-{d}"),
                owner: subjects.connection(gw, &format!("c{d}")),
                gateway_id: gw.into(),
                adopt_session_id: None,
                current: None,
            };
            let nats = nats.clone();
            let subject = subjects.service_op(ops::START);
            calls.push(tokio::spawn(async move {
                let body = serde_json::to_vec(&req).ok()?;
                let msg = nats.request(subject, body.into()).await.ok()?;
                serde_json::from_slice::<Reply<StartOk>>(&msg.payload).ok()
            }));
        }
    }
    let mut failures = 0;
    for c in calls {
        if !matches!(c.await, Ok(Some(Reply::Ok(_)))) {
            failures += 1;
        }
    }

    let mut created: HashMap<String, Vec<SessionCreatedEvent>> = HashMap::new();
    let mut ended: HashMap<String, Vec<SessionEndedEvent>> = HashMap::new();
    let mut total = 0;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(2), events.next()).await {
        if !msg.subject.contains(&format!("RACE_{run}_")) {
            continue;
        }
        total += 1;
        if msg.subject.ends_with(".created") {
            let e: SessionCreatedEvent = serde_json::from_slice(&msg.payload)?;
            created.entry(e.device_id.clone()).or_default().push(e);
        } else {
            let e: SessionEndedEvent = serde_json::from_slice(&msg.payload)?;
            ended.entry(e.session_id.clone()).or_default().push(e);
        }
    }
    let mut bad = 0;
    for d in 0..devices {
        let device = format!("RACE_{run}_{d}");
        let made = created.get(&device).map_or(0, Vec::len);
        let still_active = created
            .get(&device)
            .into_iter()
            .flatten()
            .filter(|c| !ended.contains_key(&c.session_id))
            .count();
        if made != 2 || still_active != 1 {
            bad += 1;
            if bad <= 10 {
                println!("{device}: created {made}, active {still_active}");
            }
        }
    }
    let doubled = ended.values().filter(|v| v.len() != 1).count();
    let not_replaced = ended
        .values()
        .flatten()
        .filter(|e| e.reason != EndReason::Replaced)
        .count();
    println!(
        "devices {devices}, request failures {failures}, events {total}, sessions ended {}, \
         ended twice {doubled}, not 'replaced' {not_replaced}, pushes {}, bad devices {bad}",
        ended.len(),
        pushed.load(std::sync::atomic::Ordering::Relaxed)
    );
    if failures + doubled + not_replaced + bad > 0 {
        return Err("race check failed".into());
    }
    println!("OK");
    Ok(())
}
