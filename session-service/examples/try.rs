//! Speaks the internal gateway <-> session-service protocol by hand, and documents it.
//!
//! Run a service (`AMR_SUBJECT_PREFIX=try1 cargo run -p amr-session-service`), then
//! `AMR_SUBJECT_PREFIX=try1 cargo run -p amr-session-service --example try`.
//! It plays two connections of one gateway: A starts a session, reports activity, B starts
//! another one (replacing A's: A's connection gets a revoke request, then `session_ended`),
//! B ends it, B ends it again (same figures), and a malformed request gets INVALID_MESSAGE.
//!
//! `... --example try -- deadlines` (run the service with e.g. `AMR_SESSION_IDLE_TIMEOUT=2s
//! AMR_DISCONNECT_GRACE=1s`): a session left idle ends `idle_timeout` (its connection is
//! revoked, then told); a disconnected one waits for the grace, is claimed by another
//! connection (resume), disconnected again, and ends `disconnected`. Lifecycle events are
//! printed as a core subscriber sees them.

use amr_proto::internal::{
    ActivityRequest, ClaimRequest, ConnEvent, CountReport, DisconnectRequest, EndRequest,
    RevokeReply, StartRequest,
};
use amr_proto::subjects::{ops, Subjects};
use futures_util::StreamExt;
use serde::Serialize;
use std::time::Duration;

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn call<T: Serialize>(
    nats: &async_nats::Client,
    subjects: &Subjects,
    op: &str,
    body: &T,
) -> Result<String, Error> {
    let payload = serde_json::to_vec(body)?;
    let request = async_nats::Request::new()
        .payload(payload.into())
        .timeout(Some(Duration::from_secs(3)));
    let reply = nats.send_request(subjects.service_op(op), request).await?;
    let text = String::from_utf8_lossy(&reply.payload).to_string();
    println!("{op:>10} -> {text}");
    Ok(text)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("AMR_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let prefix = std::env::var("AMR_SUBJECT_PREFIX").unwrap_or_else(|_| "amr".into());
    let subjects = Subjects::new(prefix);
    let nats = async_nats::connect(url).await?;

    let device = format!("TRY_{}", std::process::id());
    let conn_a = subjects.connection("try-gw", "a");
    let conn_b = subjects.connection("try-gw", "b");

    let deadlines_mode = std::env::args().nth(1).as_deref() == Some("deadlines");
    // Connection A answers revocations with its cumulative count (3; 0 in the deadlines run,
    // where a count above the reported one would rightly keep the session from idling) and
    // prints what it gets.
    let revoke_answer = if deadlines_mode { 0 } else { 3 };
    let mut inbox_a = nats.subscribe(conn_a.clone()).await?;
    let answering = nats.clone();
    tokio::spawn(async move {
        while let Some(msg) = inbox_a.next().await {
            println!("   conn A <- {}", String::from_utf8_lossy(&msg.payload));
            if let (Some(reply), Ok(ConnEvent::Revoke { session_id })) =
                (msg.reply, serde_json::from_slice::<ConnEvent>(&msg.payload))
            {
                let answer = RevokeReply {
                    session_id,
                    accepted: revoke_answer,
                };
                if let Ok(body) = serde_json::to_vec(&answer) {
                    let _ = answering.publish(reply, body.into()).await;
                }
            }
        }
    });
    let mut events = nats.subscribe(subjects.session_all()).await?;
    tokio::spawn(async move {
        while let Some(msg) = events.next().await {
            println!(
                "   event {} {}",
                msg.subject,
                String::from_utf8_lossy(&msg.payload)
            );
        }
    });
    // Make sure the subscriptions are in place before the service needs them.
    nats.flush().await?;
    if deadlines_mode {
        return deadlines(&nats, &subjects, &device, &conn_a, &conn_b).await;
    }

    let start_a = StartRequest {
        device_id: device.clone(),
        request_id: "try-req-1".into(),
        owner: conn_a.clone(),
        gateway_id: "try-gw".into(),
        adopt_session_id: None,
        current: None,
    };
    let created = call(&nats, &subjects, ops::START, &start_a).await?;
    // Same requestId again: the same answer, no second session.
    call(&nats, &subjects, ops::START, &start_a).await?;
    let session_a = serde_json::from_str::<serde_json::Value>(&created)?["ok"]["sessionId"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    call(
        &nats,
        &subjects,
        ops::ACTIVITY,
        &ActivityRequest {
            device_id: device.clone(),
            owner: conn_a.clone(),
            reports: vec![CountReport {
                session_id: session_a.clone(),
                accepted: 2,
            }],
        },
    )
    .await?;

    let start_b = StartRequest {
        request_id: "try-req-2".into(),
        owner: conn_b.clone(),
        ..start_a.clone()
    };
    call(&nats, &subjects, ops::START, &start_b).await?;

    let end = EndRequest {
        device_id: device.clone(),
        session_id: None,
        owner: conn_b.clone(),
        count: None,
    };
    let ended = call(&nats, &subjects, ops::END, &end).await?;
    let session_b = serde_json::from_str::<serde_json::Value>(&ended)?["ok"]["sessionId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // Ending it again answers the same figures.
    call(
        &nats,
        &subjects,
        ops::END,
        &EndRequest {
            session_id: Some(session_b),
            ..end.clone()
        },
    )
    .await?;
    // Nothing active any more.
    call(&nats, &subjects, ops::END, &end).await?;
    // A malformed request.
    call(
        &nats,
        &subjects,
        ops::START,
        &serde_json::json!({"deviceId": 5}),
    )
    .await?;

    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

fn session_id_of(reply: &str) -> Result<String, Error> {
    let v = serde_json::from_str::<serde_json::Value>(reply)?;
    Ok(v["ok"]["sessionId"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

async fn deadlines(
    nats: &async_nats::Client,
    subjects: &Subjects,
    device: &str,
    conn_a: &str,
    conn_b: &str,
) -> Result<(), Error> {
    let wait = Duration::from_secs(
        std::env::var("TRY_WAIT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(4),
    );
    let start = StartRequest {
        device_id: device.to_string(),
        request_id: "try-idle".into(),
        owner: conn_a.to_string(),
        gateway_id: "try-gw".into(),
        adopt_session_id: None,
        current: None,
    };
    let idle = session_id_of(&call(nats, subjects, ops::START, &start).await?)?;
    println!("-- waiting {wait:?} for the idle timeout of {idle}");
    tokio::time::sleep(wait).await;

    let start = StartRequest {
        request_id: "try-grace".into(),
        ..start
    };
    let sid = session_id_of(&call(nats, subjects, ops::START, &start).await?)?;
    let gone = DisconnectRequest {
        device_id: device.to_string(),
        session_id: sid.clone(),
        owner: conn_a.to_string(),
        accepted: 1,
        drained: false,
    };
    call(nats, subjects, ops::DISCONNECT, &gone).await?;
    let claim = ClaimRequest {
        device_id: device.to_string(),
        session_id: sid.clone(),
        owner: conn_b.to_string(),
        gateway_id: "try-gw".into(),
    };
    call(nats, subjects, ops::CLAIM, &claim).await?;
    // The old connection's late close changes nothing now.
    call(nats, subjects, ops::DISCONNECT, &gone).await?;
    let gone_b = DisconnectRequest {
        owner: conn_b.to_string(),
        accepted: 2,
        ..gone
    };
    call(nats, subjects, ops::DISCONNECT, &gone_b).await?;
    println!("-- waiting {wait:?} for the disconnect grace of {sid}");
    tokio::time::sleep(wait).await;
    call(
        nats,
        subjects,
        ops::END,
        &EndRequest {
            device_id: device.to_string(),
            session_id: Some(sid),
            owner: conn_b.to_string(),
            count: None,
        },
    )
    .await?;
    Ok(())
}
