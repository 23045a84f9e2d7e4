//! Talking to the gateway connections that hold sessions: the [`Connections`] interface the
//! engine uses, and its NATS implementation (the embedded mode has an in-process one).

use crate::machine::RevokedCount;
use amr_proto::events::SessionEndedEvent;
use amr_proto::headers;
use amr_proto::internal::{ConnEvent, RevokeReply};
use amr_proto::subjects::{Subjects, SENSOR_STREAM};
use async_nats::jetstream;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use std::time::Duration;
use tracing::{debug, warn};

/// What the engine needs from the connections holding sessions.
pub trait Connections: Send + Sync + 'static {
    /// Asks the connection `owner` to stop accepting data for the session and to answer its
    /// cumulative count; when it cannot answer, the best other source of the count.
    fn revoke<'a>(
        &'a self,
        device_id: &'a str,
        session_id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, RevokedCount>;

    /// Tells a connection that its session ended on someone else's behalf (fire and forget).
    fn push_ended<'a>(&'a self, owner: &'a str, event: &'a SessionEndedEvent) -> BoxFuture<'a, ()>;

    /// Whether connections can be reached now (in-process: always). While they cannot, no
    /// gateway heartbeat can arrive either, so the gateway-loss sweep waits.
    fn reachable(&self) -> bool {
        true
    }
}

#[derive(Clone)]
pub struct Owners {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    timeout: Duration,
}

impl Owners {
    /// `timeout` bounds each revocation (and the stream read of its fallback).
    pub fn new(client: async_nats::Client, subjects: Subjects, timeout: Duration) -> Owners {
        Owners {
            js: jetstream::new(client.clone()),
            client,
            subjects,
            timeout,
        }
    }

    /// Asks the connection `owner` to stop accepting data for the session and to hand over
    /// the samples it has not reported. If it cannot answer (gone, or its gateway is), the
    /// last message of the session's sensor subject tells the total instead.
    async fn revoke_over_nats(
        &self,
        device_id: &str,
        session_id: &str,
        owner: &str,
    ) -> RevokedCount {
        let event = ConnEvent::Revoke {
            session_id: session_id.to_string(),
        };
        let payload = match serde_json::to_vec(&event) {
            Ok(p) => p,
            Err(_) => return self.stream_total(device_id, session_id).await,
        };
        let request = async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(self.timeout));
        match self.client.send_request(owner.to_string(), request).await {
            Ok(msg) => match serde_json::from_slice::<RevokeReply>(&msg.payload) {
                Ok(reply) if reply.session_id == session_id => {
                    debug!(session_id, owner, accepted = reply.accepted, "revoked");
                    RevokedCount::Accepted(reply.accepted)
                }
                _ => {
                    warn!(
                        session_id,
                        owner, "unreadable revoke reply; using the stream count"
                    );
                    self.stream_total(device_id, session_id).await
                }
            },
            Err(e) => {
                debug!(session_id, owner, error = %e, "owner did not answer the revoke");
                self.stream_total(device_id, session_id).await
            }
        }
    }

    /// The session's running count stamped on its last sensor message.
    async fn stream_total(&self, device_id: &str, session_id: &str) -> RevokedCount {
        let subject = self.subjects.sensor(device_id, session_id);
        let read = async {
            let stream = self.js.get_stream_no_info(SENSOR_STREAM).await.ok()?;
            match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(msg) => msg
                    .headers
                    .get(headers::DATA_COUNT)
                    .and_then(|v| v.as_str().trim().parse::<u64>().ok()),
                // Nothing was ever accepted for it.
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Some(0),
                Err(e) => {
                    debug!(session_id, error = %e, "sensor stream count unknown");
                    None
                }
            }
        };
        RevokedCount::StreamTotal(
            tokio::time::timeout(self.timeout, read)
                .await
                .ok()
                .flatten(),
        )
    }

    async fn push_ended_over_nats(&self, owner: &str, event: &SessionEndedEvent) {
        let payload = match serde_json::to_vec(&ConnEvent::SessionEnded(event.clone())) {
            Ok(p) => p,
            Err(_) => return,
        };
        let sent = tokio::time::timeout(
            self.timeout,
            self.client.publish(owner.to_string(), payload.into()),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            warn!(owner, session_id = %event.session_id, "could not push session_ended");
        }
    }
}

impl Connections for Owners {
    fn revoke<'a>(
        &'a self,
        device_id: &'a str,
        session_id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, RevokedCount> {
        self.revoke_over_nats(device_id, session_id, owner).boxed()
    }

    fn push_ended<'a>(&'a self, owner: &'a str, event: &'a SessionEndedEvent) -> BoxFuture<'a, ()> {
        self.push_ended_over_nats(owner, event).boxed()
    }

    fn reachable(&self) -> bool {
        matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        )
    }
}
