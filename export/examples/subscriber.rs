//! A downstream analytics subscriber, as an example of the NATS contract (docs/downstream.md).
//!
//! It keeps two durable pull consumers, so a restart of this program resumes where it stopped
//! and nothing published meanwhile is missed:
//! - `analytics-sensor` on `AMR_SENSOR`, filter `<prefix>.sensor.>`: every accepted sensor
//!   message; it "processes" each one (here: counts samples per session) and acks it;
//! - `analytics-ended` on `AMR_SESSIONS`, filter `<prefix>.session.*.ended`: when a session
//!   ends, its final `dataCount`. A session is complete when the samples seen reach it (the two
//!   streams are independent: the end may arrive before the session's last messages).
//!
//! Delivery is at least once: a message whose ack was lost comes again, so samples of a `seq`
//! message are counted once per (session, seq). Messages without `seq` (v1.1.0 apps) carry no
//! id; a redelivery of one would be counted twice (compare with `Amr-Data-Count` if it matters).
//!
//! Run: `cargo run -p amr-export --example subscriber` (`AMR_NATS_URL`, `AMR_SUBJECT_PREFIX`
//! as for the gateway). Ctrl-C stops it; its consumers stay on the server until deleted
//! (`nats consumer rm AMR_SENSOR analytics-sensor`).

use amr_proto::events::SessionEndedEvent;
use amr_proto::headers;
use amr_proto::subjects::{Subjects, EVENT_ENDED, SENSOR_STREAM, SESSIONS_STREAM};
use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};

#[derive(Default)]
struct Tally {
    device: String,
    samples: u64,
    seqs: HashSet<u64>,
    /// `dataCount` of the session's end event, once seen.
    expected: Option<u64>,
    done: bool,
}

impl Tally {
    fn check(&mut self, session: &str) {
        if let Some(expected) = self.expected.filter(|e| !self.done && self.samples >= *e) {
            self.done = true;
            let verdict = if self.samples == expected {
                "complete"
            } else {
                "MORE samples than dataCount (redelivered messages without seq?)"
            };
            println!(
                "session {session} of {}: {verdict}: saw {} samples, dataCount {expected}",
                self.device, self.samples
            );
        }
    }
}

/// Samples in one stored message: 1 for `sensor_data`, `samples.len()` for `sensor_batch`.
fn samples_of(payload: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| {
            v.get("samples")
                .and_then(|s| s.as_array())
                .map(|a| a.len() as u64)
        })
        .unwrap_or(1)
}

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let url = std::env::var("AMR_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let prefix = std::env::var("AMR_SUBJECT_PREFIX").unwrap_or_else(|_| "amr".into());
    let subjects = Subjects::new(prefix);
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client);

    let sensor = js
        .get_stream(SENSOR_STREAM)
        .await?
        .get_or_create_consumer(
            "analytics-sensor",
            consumer::pull::Config {
                durable_name: Some("analytics-sensor".into()),
                filter_subject: subjects.sensor_all(),
                ack_policy: consumer::AckPolicy::Explicit,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await?;
    let ended = js
        .get_stream(SESSIONS_STREAM)
        .await?
        .get_or_create_consumer(
            "analytics-ended",
            consumer::pull::Config {
                durable_name: Some("analytics-ended".into()),
                filter_subject: subjects.session_event("*", EVENT_ENDED),
                ack_policy: consumer::AckPolicy::Explicit,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await?;
    let mut sensor_msgs = sensor.messages().await?;
    let mut ended_msgs = ended.messages().await?;
    let mut sessions: HashMap<String, Tally> = HashMap::new();

    loop {
        tokio::select! {
            Some(m) = sensor_msgs.next() => {
                let m = m?;
                let h = m.headers.as_ref();
                let get = |name: &str| {
                    h.and_then(|h| h.get(name)).map(|v| v.as_str().to_owned())
                };
                let (Some(session), Some(device)) = (get(headers::SESSION_ID), get(headers::DEVICE_ID)) else {
                    // Not from a gateway: ack it so it is not redelivered forever.
                    m.ack().await?;
                    continue;
                };
                let t = sessions.entry(session.clone()).or_default();
                t.device = device;
                let seq = get(headers::SEQ).and_then(|s| s.parse::<u64>().ok());
                // A redelivered seq'd message (its ack was lost) is counted once.
                if seq.is_none_or(|s| t.seqs.insert(s)) {
                    t.samples += samples_of(&m.payload);
                }
                t.check(&session);
                // Ack after processing: a crash before this line means a redelivery, not a loss.
                m.ack().await?;
            }
            Some(m) = ended_msgs.next() => {
                let m = m?;
                match serde_json::from_slice::<SessionEndedEvent>(&m.payload) {
                    Ok(e) => {
                        println!(
                            "session {} of {} ended ({}), dataCount {}",
                            e.session_id, e.device_id, e.reason, e.data_count
                        );
                        let t = sessions.entry(e.session_id.clone()).or_default();
                        t.device = e.device_id;
                        t.expected = Some(e.data_count);
                        t.check(&e.session_id);
                    }
                    Err(err) => eprintln!("unreadable end event: {err}"),
                }
                m.ack().await?;
            }
            else => return Ok(()),
        }
    }
}
