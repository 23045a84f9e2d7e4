//! Lifecycle events (`created`, `ended`): published once per session, by whoever committed
//! the transition. [`Lifecycle`] is what the engine needs; [`Events`] publishes through
//! JetStream with a `Nats-Msg-Id` so that the stream keeps one copy (the embedded mode writes
//! a session index file instead).

use amr_proto::events::{SessionCreatedEvent, SessionEndedEvent};
use amr_proto::headers;
use amr_proto::subjects::{Subjects, EVENT_CREATED, EVENT_ENDED, SESSIONS_STREAM};
use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::Serialize;
use std::time::Duration;
use tracing::{info, warn};

/// Where lifecycle events go.
pub trait Lifecycle: Send + Sync + 'static {
    fn created<'a>(&'a self, event: &'a SessionCreatedEvent) -> BoxFuture<'a, ()>;
    fn ended<'a>(&'a self, event: &'a SessionEndedEvent) -> BoxFuture<'a, ()>;
}

#[derive(Clone)]
pub struct Events {
    js: jetstream::Context,
    subjects: Subjects,
    timeout: Duration,
}

impl Events {
    pub fn new(client: async_nats::Client, subjects: Subjects, timeout: Duration) -> Events {
        Events {
            js: jetstream::new(client),
            subjects,
            timeout,
        }
    }

    /// Makes sure the `AMR_SESSIONS` stream exists and captures this prefix's events.
    pub async fn ensure_stream(&self, max_age: Duration) -> Result<(), String> {
        let filter = self.subjects.session_all();
        let config = jetstream::stream::Config {
            name: SESSIONS_STREAM.to_string(),
            subjects: vec![filter.clone()],
            max_age,
            ..Default::default()
        };
        let work = async {
            let mut stream = self
                .js
                .get_or_create_stream(config)
                .await
                .map_err(|e| e.to_string())?;
            let info = stream.info().await.map_err(|e| e.to_string())?;
            if !info.config.subjects.contains(&filter) {
                // Another prefix created it on this server: add ours rather than lose events.
                let mut config = info.config.clone();
                config.subjects.push(filter.clone());
                self.js
                    .update_stream(config)
                    .await
                    .map_err(|e| e.to_string())?;
                info!(stream = SESSIONS_STREAM, subject = %filter, "added subject to stream");
            }
            Ok(())
        };
        tokio::time::timeout(self.timeout * 5, work)
            .await
            .map_err(|_| "timed out ensuring the sessions stream".to_string())?
    }

    /// Publishes once, never retried, so that a core NATS subscriber sees the event exactly
    /// once. The stream's ack is awaited in the background: the reply to the gateway (sent on
    /// the same NATS connection, so after the event) does not wait for a JetStream round trip.
    async fn publish<T: Serialize>(
        &self,
        device_id: &str,
        session_id: &str,
        kind: &str,
        event: &T,
    ) {
        let payload = match serde_json::to_vec(event) {
            Ok(p) => p,
            Err(e) => {
                warn!(session_id, kind, error = %e, "could not encode lifecycle event");
                return;
            }
        };
        let subject = self.subjects.session_event(device_id, kind);
        let message = PublishMessage::build()
            .payload(payload.into())
            .message_id(headers::lifecycle_msg_id(session_id, kind));
        let sent = tokio::time::timeout(self.timeout, self.js.send_publish(subject, message)).await;
        let ack = match sent {
            Ok(Ok(ack)) => ack,
            Ok(Err(e)) => {
                warn!(session_id, kind, error = %e, "lifecycle event not sent");
                return;
            }
            Err(_) => {
                warn!(session_id, kind, "lifecycle event publish timed out");
                return;
            }
        };
        let (session_id, kind) = (session_id.to_owned(), kind.to_owned());
        tokio::spawn(async move {
            if let Err(e) = ack.await {
                warn!(session_id, kind, error = %e, "lifecycle event not acknowledged by the stream");
            }
        });
    }
}

impl Lifecycle for Events {
    fn created<'a>(&'a self, event: &'a SessionCreatedEvent) -> BoxFuture<'a, ()> {
        self.publish(&event.device_id, &event.session_id, EVENT_CREATED, event)
            .boxed()
    }

    fn ended<'a>(&'a self, event: &'a SessionEndedEvent) -> BoxFuture<'a, ()> {
        self.publish(&event.device_id, &event.session_id, EVENT_ENDED, event)
            .boxed()
    }
}
