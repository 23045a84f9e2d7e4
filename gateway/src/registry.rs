//! The gateway's live connections, and the dispatcher that routes events the session service
//! pushes to `<p>.internal.gw.<gatewayId>.<connId>` into the right connection.

use amr_proto::internal::{ConnEvent, RevokeReply};
use amr_proto::subjects::Subjects;
use async_nats::{Client, Subject};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Capacity of one connection's control queue; pushes are rare (a few per session).
pub const CONTROL_QUEUE: usize = 32;

/// One pushed event for a connection; `reply` is set on requests (revocations).
#[derive(Debug)]
pub struct Control {
    pub event: ConnEvent,
    pub reply: Option<Subject>,
}

#[derive(Default)]
pub struct Registry {
    conns: Mutex<HashMap<String, mpsc::Sender<Control>>>,
}

impl Registry {
    pub fn insert(&self, conn_id: &str, tx: mpsc::Sender<Control>) {
        if let Ok(mut map) = self.conns.lock() {
            map.insert(conn_id.to_owned(), tx);
        }
    }

    pub fn remove(&self, conn_id: &str) {
        if let Ok(mut map) = self.conns.lock() {
            map.remove(conn_id);
        }
    }

    pub fn len(&self) -> usize {
        self.conns.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, conn_id: &str) -> Option<mpsc::Sender<Control>> {
        self.conns.lock().ok()?.get(conn_id).cloned()
    }
}

/// Routes pushed events until the subscription ends. A revocation for a connection that is
/// gone is answered at once with a zero count: the closed connection reported its final
/// count itself (cumulative counts make that safe), and the service must not wait for it.
pub async fn dispatch(
    nats: Client,
    subjects: Subjects,
    gateway_id: String,
    registry: Arc<Registry>,
) -> Result<(), async_nats::SubscribeError> {
    let mut sub = nats.subscribe(subjects.gateway_all(&gateway_id)).await?;
    while let Some(msg) = sub.next().await {
        let Some(conn_id) = subjects.conn_id_of(msg.subject.as_str()) else {
            continue;
        };
        let event: ConnEvent = match serde_json::from_slice(&msg.payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(subject = %msg.subject, error = %e, "malformed connection event");
                continue;
            }
        };
        let control = Control {
            event,
            reply: msg.reply.clone(),
        };
        match registry.get(conn_id) {
            Some(tx) => {
                if let Err(mpsc::error::TrySendError::Full(control)) = tx.try_send(control) {
                    // Never stall the dispatcher behind one busy connection.
                    tokio::spawn(async move {
                        let _ = tx.send(control).await;
                    });
                }
            }
            None => {
                if let (ConnEvent::Revoke { session_id }, Some(reply)) =
                    (&control.event, reply_of(&control))
                {
                    let body = RevokeReply {
                        session_id: session_id.clone(),
                        accepted: 0,
                    };
                    if let Ok(bytes) = serde_json::to_vec(&body) {
                        let _ = nats.publish(reply, bytes.into()).await;
                    }
                }
            }
        }
    }
    Ok(())
}

fn reply_of(control: &Control) -> Option<Subject> {
    control.reply.clone()
}
