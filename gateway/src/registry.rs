//! The gateway's live connections, and delivery of events the session service pushes to one
//! of them (over NATS: `<p>.internal.gw.<gatewayId>.<connId>`; in-process in embedded mode).

use amr_proto::internal::{ConnEvent, RevokeReply};
use amr_proto::subjects::Subjects;
use async_nats::{Client, Subject};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Capacity of one connection's control queue: pushes are rare (a few per session), and a
/// full queue makes the sender wait in a task of its own, so it stays small (memory per
/// idle connection is a target).
pub const CONTROL_QUEUE: usize = 4;

/// Where the answer to a revocation goes.
#[derive(Debug)]
pub enum ReplyTo {
    Nats { client: Client, subject: Subject },
    Local(oneshot::Sender<RevokeReply>),
}

impl ReplyTo {
    pub async fn send(self, reply: RevokeReply) {
        match self {
            ReplyTo::Nats { client, subject } => match serde_json::to_vec(&reply) {
                Ok(bytes) => {
                    if let Err(e) = client.publish(subject, bytes.into()).await {
                        tracing::warn!(error = %e, "cannot answer a revocation");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot encode a revocation answer"),
            },
            ReplyTo::Local(tx) => {
                let _ = tx.send(reply);
            }
        }
    }
}

/// What a connection's task is told besides its client's frames.
///
/// Kept pointer-sized: every connection's queue allocates its first block of slots up front, so
/// the size of this enum is paid by every idle connection (pushes are rare; their box is not).
#[derive(Debug)]
pub enum Control {
    /// An event the session service pushed.
    Pushed(Box<Push>),
    /// Gateway-internal: NATS is back after an outage. Meanwhile the session service may have
    /// ended the connection's session (`gateway_lost`: no heartbeats arrived) and its pushes
    /// were lost, so the session is checked again (claimed) before more data goes into it.
    Recheck,
}

/// An event the session service pushed; `reply` is set on requests (revocations).
#[derive(Debug)]
pub struct Push {
    pub event: ConnEvent,
    pub reply: Option<ReplyTo>,
}

impl Control {
    pub fn pushed(event: ConnEvent, reply: Option<ReplyTo>) -> Self {
        Control::Pushed(Box::new(Push { event, reply }))
    }
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

    /// Tells every connection to check its session again (see [`Control::Recheck`]); the
    /// number of connections told.
    pub fn recheck_all(&self) -> usize {
        let all: Vec<mpsc::Sender<Control>> = self
            .conns
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        for tx in &all {
            if let Err(mpsc::error::TrySendError::Full(control)) = tx.try_send(Control::Recheck) {
                // Never stall the caller behind one busy connection.
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(control).await;
                });
            }
        }
        all.len()
    }

    /// Hands an event to a connection. A revocation for a connection that is gone is answered
    /// at once with a zero count: the closed connection reported its final (cumulative) count
    /// itself, and the session service must not wait for it.
    pub async fn deliver(&self, conn_id: &str, control: Control) {
        match self.get(conn_id) {
            Some(tx) => {
                if let Err(mpsc::error::TrySendError::Full(control)) = tx.try_send(control) {
                    // Never stall the caller behind one busy connection.
                    tokio::spawn(async move {
                        let _ = tx.send(control).await;
                    });
                }
            }
            None => {
                if let Control::Pushed(push) = control {
                    if let Push {
                        event: ConnEvent::Revoke { session_id },
                        reply: Some(reply),
                    } = *push
                    {
                        reply
                            .send(RevokeReply {
                                session_id,
                                accepted: 0,
                            })
                            .await;
                    }
                }
            }
        }
    }
}

/// Routes events pushed over NATS until the subscription ends.
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
        let reply = msg.reply.clone().map(|subject| ReplyTo::Nats {
            client: nats.clone(),
            subject,
        });
        registry
            .deliver(conn_id, Control::pushed(event, reply))
            .await;
    }
    Ok(())
}
