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
use async_nats::header::{HeaderName, HeaderValue};
use async_nats::{jetstream, Client, HeaderMap, Subject};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

#[derive(Clone)]
pub struct Forwarder {
    nats: Client,
    js: jetstream::Context,
    gateway_id: String,
}

impl Forwarder {
    pub fn new(nats: Client, config: &Config, gateway_id: String) -> Self {
        let js = jetstream::ContextBuilder::new()
            .timeout(config.publish_timeout)
            .max_ack_inflight(config.max_inflight)
            .backpressure_on_inflight(true)
            .build(nats.clone());
        Forwarder {
            nats,
            js,
            gateway_id,
        }
    }

    async fn publish_nats(
        &self,
        msg: &SensorMessage<'_>,
        stamp: &Stamp<'_>,
        payload: Bytes,
    ) -> Result<Published, String> {
        let subject = Subject::try_from(stamp.subject.clone()).map_err(|e| e.to_string())?;
        let headers = self.headers(msg, stamp);
        match msg.seq {
            None => {
                self.nats
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Published::Sent)
            }
            Some(_) => {
                let ack = self
                    .js
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Published::Pending(
                    async move { ack.await.map(|a| a.duplicate).map_err(|e| e.to_string()) }
                        .boxed(),
                ))
            }
        }
    }

    /// The metadata headers of one sensor message, built in one go: static names (no
    /// allocation) and a table sized once. Ids are validated token characters, so no value can
    /// hold CR/LF.
    fn headers(&self, msg: &SensorMessage<'_>, stamp: &Stamp<'_>) -> HeaderMap {
        let common = [
            (H_DEVICE_ID, HeaderValue::from(stamp.device_id)),
            (H_SESSION_ID, HeaderValue::from(stamp.session_id)),
            (H_RECEIVED_AT, HeaderValue::from(amr_proto::now_ms())),
            (H_GATEWAY, HeaderValue::from(self.gateway_id.as_str())),
            (H_MESSAGE_TYPE, HeaderValue::from(msg.kind.wire_type())),
            (H_DATA_COUNT, HeaderValue::from(stamp.data_count)),
            (H_TRACEPARENT, HeaderValue::from(stamp.traceparent)),
        ];
        match msg.seq {
            None => common.into_iter().collect(),
            Some(seq) => common
                .into_iter()
                .chain([
                    (H_SEQ, HeaderValue::from(seq)),
                    (
                        H_NATS_MSG_ID,
                        HeaderValue::from(headers::sensor_msg_id(stamp.session_id, seq)),
                    ),
                ])
                .collect(),
        }
    }
}

const H_DEVICE_ID: HeaderName = HeaderName::from_static(headers::DEVICE_ID);
const H_SESSION_ID: HeaderName = HeaderName::from_static(headers::SESSION_ID);
const H_RECEIVED_AT: HeaderName = HeaderName::from_static(headers::RECEIVED_AT);
const H_GATEWAY: HeaderName = HeaderName::from_static(headers::GATEWAY);
const H_MESSAGE_TYPE: HeaderName = HeaderName::from_static(headers::MESSAGE_TYPE);
const H_DATA_COUNT: HeaderName = HeaderName::from_static(headers::DATA_COUNT);
const H_TRACEPARENT: HeaderName = HeaderName::from_static(headers::TRACEPARENT);
const H_SEQ: HeaderName = HeaderName::from_static(headers::SEQ);
const H_NATS_MSG_ID: HeaderName = HeaderName::from_static(headers::NATS_MSG_ID);

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
        Self::continuing(None)
    }

    /// Continues `trace_id` (32 lowercase hex digits, e.g. the trace of the `session_start`
    /// that created the session, so that its data joins that trace), or starts a new trace.
    pub fn continuing(trace_id: Option<String>) -> Self {
        let trace_id = trace_id
            .filter(|t| {
                t.len() == 32
                    && t.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                    && t.bytes().any(|b| b != b'0')
            })
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let span_seed = uuid::Uuid::new_v4().as_u64_pair().0 | 1;
        TraceIds {
            trace_id,
            next_span: span_seed,
        }
    }

    pub fn next_traceparent(&mut self) -> String {
        self.next_span = self.next_span.wrapping_add(1).max(1);
        // `00-<32 hex trace id>-<16 hex span id>-01`, without the formatting machinery.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        out.push_str(&self.trace_id);
        out.push('-');
        for shift in (0..16).rev() {
            out.push(char::from(
                HEX[((self.next_span >> (shift * 4)) & 0xf) as usize],
            ));
        }
        out.push_str("-01");
        out
    }
}

impl Default for TraceIds {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_w3c_shaped_and_new_per_message() {
        let mut ids = TraceIds::new();
        let first = ids.next_traceparent();
        let second = ids.next_traceparent();
        for tp in [&first, &second] {
            let parts: Vec<&str> = tp.split('-').collect();
            assert_eq!(parts.len(), 4, "{tp}");
            assert_eq!(parts[0], "00");
            assert_eq!(parts[1].len(), 32);
            assert_eq!(parts[2].len(), 16);
            assert_eq!(parts[3], "01");
            assert!(parts[1..3].iter().all(|p| p
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())));
            assert_ne!(parts[2], "0000000000000000");
        }
        assert_eq!(first[..36], second[..36], "one trace per session");
        assert_ne!(first, second, "one span per message");
        let span = |tp: &str| u64::from_str_radix(&tp[36..52], 16).ok();
        assert_eq!(
            span(&second),
            span(&first).map(|s| s.wrapping_add(1).max(1))
        );
    }
}
