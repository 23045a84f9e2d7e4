//! Forwarding accepted sensor messages to NATS (`<p>.sensor.<deviceId>.<sessionId>`, captured
//! by the `AMR_SENSOR` JetStream stream).
//!
//! The payload is the client's frame, byte for byte (no re-serialisation); metadata travels in
//! headers. Two reliability levels (protocol.md section 4):
//! - no `seq` (v1.1.0 apps): a core publish, fire and forget, no per-message round trip;
//! - with `seq`: a JetStream publish with `Nats-Msg-Id` = `<sessionId>:<seq>` whose ack future
//!   is handed back, so the connection can acknowledge once the message is stored (pipelined:
//!   many in flight, never one await per message).
//!
//! When the NATS client's outbound buffer (or the gateway-wide ack budget) is full, the await
//! here holds the connection's read loop: TCP backpressure instead of unbounded buffering.

use crate::backend::{Published, SensorSink, Stamp};
use crate::config::Config;
use amr_proto::client::SensorMessage;
use amr_proto::headers;
use amr_proto::subjects::Subjects;
use async_nats::{jetstream, Client, HeaderMap};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

#[derive(Clone)]
pub struct Forwarder {
    nats: Client,
    js: jetstream::Context,
    subjects: Subjects,
    gateway_id: String,
}

impl Forwarder {
    pub fn new(nats: Client, config: &Config, subjects: Subjects, gateway_id: String) -> Self {
        let js = jetstream::ContextBuilder::new()
            .timeout(config.publish_timeout)
            .max_ack_inflight(config.max_inflight)
            .backpressure_on_inflight(true)
            .build(nats.clone());
        Forwarder {
            nats,
            js,
            subjects,
            gateway_id,
        }
    }

    async fn publish_nats(
        &self,
        msg: &SensorMessage<'_>,
        stamp: &Stamp<'_>,
        payload: Bytes,
    ) -> Result<Published, String> {
        let mut h = HeaderMap::new();
        // Ids are validated token characters, so none of these values can hold CR/LF.
        h.insert(headers::DEVICE_ID, stamp.device_id);
        h.insert(headers::SESSION_ID, stamp.session_id);
        h.insert(
            headers::RECEIVED_AT,
            amr_proto::now_ms().to_string().as_str(),
        );
        h.insert(headers::GATEWAY, self.gateway_id.as_str());
        h.insert(headers::MESSAGE_TYPE, msg.kind.wire_type());
        h.insert(headers::DATA_COUNT, stamp.data_count.to_string().as_str());
        h.insert(headers::TRACEPARENT, stamp.traceparent);
        let subject = self.subjects.sensor(stamp.device_id, stamp.session_id);
        match msg.seq {
            None => {
                self.nats
                    .publish_with_headers(subject, h, payload)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Published::Sent)
            }
            Some(seq) => {
                h.insert(headers::SEQ, seq.to_string().as_str());
                h.insert(
                    headers::NATS_MSG_ID,
                    headers::sensor_msg_id(stamp.session_id, seq).as_str(),
                );
                let ack = self
                    .js
                    .publish_with_headers(subject, h, payload)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Published::Pending(
                    async move { ack.await.map(|a| a.duplicate).map_err(|e| e.to_string()) }
                        .boxed(),
                ))
            }
        }
    }
}

impl SensorSink for Forwarder {
    fn publish<'a>(
        &'a self,
        msg: &'a SensorMessage<'a>,
        stamp: &'a Stamp<'a>,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<Published, String>> {
        self.publish_nats(msg, stamp, payload).boxed()
    }
}

/// A trace id per session on a connection, and a span id per message, so downstream can
/// correlate one session's messages (OpenTelemetry export of gateway spans is separate).
pub struct TraceIds {
    trace_id: String,
    next_span: u64,
}

impl TraceIds {
    pub fn new() -> Self {
        let id = uuid::Uuid::new_v4();
        let span_seed = uuid::Uuid::new_v4().as_u64_pair().0 | 1;
        TraceIds {
            trace_id: id.simple().to_string(),
            next_span: span_seed,
        }
    }

    pub fn next_traceparent(&mut self) -> String {
        self.next_span = self.next_span.wrapping_add(1).max(1);
        format!("00-{}-{:016x}-01", self.trace_id, self.next_span)
    }
}

impl Default for TraceIds {
    fn default() -> Self {
        Self::new()
    }
}
