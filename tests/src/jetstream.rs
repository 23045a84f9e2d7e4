//! What downstream sees on NATS: a session's sensor messages read back from JetStream
//! (`AMR_SENSOR`, one subject per session). Lifecycle events (core NATS subscriber, or the
//! embedded mode's index file) live in [`crate::events`].

use crate::wait::settle;
use crate::WAIT_TIMEOUT;
use amr_export::reader::header_map;
use amr_proto::subjects::{self, Subjects};
use futures_util::{StreamExt, TryStreamExt};
use std::collections::BTreeMap;
use std::time::Duration;

/// One stored message, mode-neutral: payload bytes and headers (name -> last value).
/// Distributed mode: `subject` is the NATS subject, `headers` the message's headers.
/// Embedded mode ([`crate::files`]): `subject` is the session file's path, no headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub subject: String,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

impl StoredMessage {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn payload_str(&self) -> &str {
        std::str::from_utf8(&self.payload).expect("payload is UTF-8 JSON")
    }

    /// The `seq` field of the stored client message, read from the payload (mode-neutral,
    /// unlike the `Amr-Seq` header).
    pub fn payload_seq(&self) -> Option<u64> {
        let v: serde_json::Value = serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "stored payload is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.payload)
            )
        });
        v.get("seq").and_then(serde_json::Value::as_u64)
    }
}

/// Reads `AMR_SENSOR` back, as an analytics consumer would.
#[derive(Clone)]
pub struct JetStreamReader {
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub subjects: Subjects,
}

impl JetStreamReader {
    pub async fn connect(nats_url: &str, prefix: &str) -> JetStreamReader {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(5)))
            .connect(nats_url)
            .await
            .unwrap_or_else(|e| panic!("connect to {nats_url}: {e}"));
        let js = async_nats::jetstream::new(client.clone());
        JetStreamReader {
            client,
            js,
            subjects: Subjects::new(prefix),
        }
    }

    async fn sensor_stream(&self) -> Option<async_nats::jetstream::stream::Stream> {
        self.js.get_stream(subjects::SENSOR_STREAM).await.ok()
    }

    /// Messages the stream holds on exactly `subject` (0 when the stream does not exist).
    pub async fn count(&self, subject: &str) -> u64 {
        let Some(stream) = self.sensor_stream().await else {
            return 0;
        };
        let mut info = stream
            .info_with_subjects(subject)
            .await
            .unwrap_or_else(|e| panic!("stream info of {subject}: {e}"));
        let mut n = 0u64;
        while let Some((s, c)) = info
            .try_next()
            .await
            .unwrap_or_else(|e| panic!("stream subjects of {subject}: {e}"))
        {
            if s == subject {
                n += c as u64;
            }
        }
        n
    }

    /// Count of a session's subject.
    pub async fn session_count(&self, device: &str, session: &str) -> u64 {
        self.count(&self.subjects.sensor(device, session)).await
    }

    /// Waits (bounded) until `subject` holds at least `expected` messages; returns the count
    /// seen last, for the caller to assert on (exactly `expected`).
    pub async fn wait_count(&self, subject: &str, expected: u64) -> u64 {
        settle(WAIT_TIMEOUT, || self.count(subject), |n| *n >= expected).await
    }

    /// Every message of `subject`, in stream order, read with an ordered consumer filtered on
    /// it until the stream's count for the subject is reached.
    pub async fn read(&self, subject: &str) -> Vec<StoredMessage> {
        let total = self.count(subject).await;
        if total == 0 {
            return Vec::new();
        }
        let stream = self.sensor_stream().await.expect("AMR_SENSOR exists");
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: subject.to_owned(),
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("ordered consumer on {subject}: {e}"));
        let mut messages = consumer
            .messages()
            .await
            .unwrap_or_else(|e| panic!("messages of {subject}: {e}"));
        let mut out = Vec::with_capacity(total as usize);
        while (out.len() as u64) < total {
            let m = tokio::time::timeout(WAIT_TIMEOUT, messages.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "read {} of {total} messages of {subject}, then nothing",
                        out.len()
                    )
                })
                .unwrap_or_else(|| panic!("consumer of {subject} ended"))
                .unwrap_or_else(|e| panic!("consumer of {subject}: {e}"));
            out.push(StoredMessage {
                subject: m.subject.to_string(),
                payload: m.payload.to_vec(),
                headers: header_map(m.headers.as_ref()),
            });
        }
        out
    }

    /// A session's messages (`<p>.sensor.<device>.<session>`).
    pub async fn read_session(&self, device: &str, session: &str) -> Vec<StoredMessage> {
        self.read(&self.subjects.sensor(device, session)).await
    }

    /// The last message of a subject, if any (e.g. its `Amr-Data-Count` header).
    pub async fn last(&self, subject: &str) -> Option<StoredMessage> {
        let stream = self.sensor_stream().await?;
        let m = stream.get_last_raw_message_by_subject(subject).await.ok()?;
        Some(StoredMessage {
            subject: m.subject.to_string(),
            payload: m.payload.to_vec(),
            headers: header_map(Some(&m.headers)),
        })
    }
}

/// Lifecycle events moved to [`crate::events`] (they are mode-neutral); re-exported here for the
/// tests that name them through this module.
pub use crate::events::{EventCollector, LifecycleEvent};
