//! What downstream sees on NATS: a session's sensor messages read back from JetStream
//! (`AMR_SENSOR`, one subject per session), and lifecycle events on core NATS
//! (`<p>.session.<deviceId>.created|ended`).

use crate::wait::settle;
use crate::WAIT_TIMEOUT;
use amr_proto::events::{SessionCreatedEvent, SessionEndedEvent};
use amr_proto::subjects::{self, Subjects};
use futures_util::{StreamExt, TryStreamExt};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One stored message, mode-neutral: payload bytes and headers (name -> last value).
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
}

fn header_map(h: Option<&async_nats::HeaderMap>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(h) = h {
        for (k, vs) in h.iter() {
            if let Some(v) = vs.last() {
                out.insert(k.to_string(), v.as_str().to_owned());
            }
        }
    }
    out
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

/// A lifecycle event as seen by a core NATS subscriber.
#[derive(Debug, Clone)]
pub enum LifecycleEvent {
    Created {
        subject: String,
        event: SessionCreatedEvent,
        raw: serde_json::Value,
    },
    Ended {
        subject: String,
        event: SessionEndedEvent,
        raw: serde_json::Value,
    },
    /// A message on `<p>.session.>` that is not a contract event (kept to be asserted on).
    Other { subject: String, payload: String },
}

impl LifecycleEvent {
    pub fn session_id(&self) -> Option<&str> {
        match self {
            LifecycleEvent::Created { event, .. } => Some(&event.session_id),
            LifecycleEvent::Ended { event, .. } => Some(&event.session_id),
            LifecycleEvent::Other { .. } => None,
        }
    }

    pub fn subject(&self) -> &str {
        match self {
            LifecycleEvent::Created { subject, .. }
            | LifecycleEvent::Ended { subject, .. }
            | LifecycleEvent::Other { subject, .. } => subject,
        }
    }
}

/// Collects every message on `<p>.session.>` from the moment [`EventCollector::start`] returns
/// (the subscription is confirmed by a round trip through the server).
pub struct EventCollector {
    events: Arc<Mutex<Vec<LifecycleEvent>>>,
    task: tokio::task::JoinHandle<()>,
    subjects: Subjects,
}

impl EventCollector {
    pub async fn start(nats_url: &str, prefix: &str) -> EventCollector {
        let subjects = Subjects::new(prefix);
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(nats_url)
            .await
            .unwrap_or_else(|e| panic!("connect to {nats_url}: {e}"));
        let mut sub = client
            .subscribe(subjects.session_all())
            .await
            .expect("subscribe to lifecycle events");
        // Barrier: a message to our own inbox comes back only after the server processed
        // everything sent before it on this connection, the subscription included.
        let inbox = client.new_inbox();
        let mut barrier = client
            .subscribe(inbox.clone())
            .await
            .expect("subscribe inbox");
        client
            .publish(inbox, "barrier".into())
            .await
            .expect("publish barrier");
        tokio::time::timeout(WAIT_TIMEOUT, barrier.next())
            .await
            .expect("barrier message came back")
            .expect("barrier subscription open");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let created_suffix = format!(".{}", subjects::EVENT_CREATED);
        let ended_suffix = format!(".{}", subjects::EVENT_ENDED);
        let task = tokio::spawn(async move {
            let _client = client; // keeps the connection alive with the task
            while let Some(m) = sub.next().await {
                let subject = m.subject.to_string();
                let payload = String::from_utf8_lossy(&m.payload).into_owned();
                let raw: Option<serde_json::Value> = serde_json::from_str(&payload).ok();
                let ev = match raw {
                    Some(raw) if subject.ends_with(&created_suffix) => {
                        match serde_json::from_value::<SessionCreatedEvent>(raw.clone()) {
                            Ok(event) => LifecycleEvent::Created {
                                subject,
                                event,
                                raw,
                            },
                            Err(_) => LifecycleEvent::Other { subject, payload },
                        }
                    }
                    Some(raw) if subject.ends_with(&ended_suffix) => {
                        match serde_json::from_value::<SessionEndedEvent>(raw.clone()) {
                            Ok(event) => LifecycleEvent::Ended {
                                subject,
                                event,
                                raw,
                            },
                            Err(_) => LifecycleEvent::Other { subject, payload },
                        }
                    }
                    _ => LifecycleEvent::Other { subject, payload },
                };
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(ev);
            }
        });
        EventCollector {
            events,
            task,
            subjects,
        }
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// Every event so far, in arrival order.
    pub fn all(&self) -> Vec<LifecycleEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Events that name `session` (created and ended).
    pub fn for_session(&self, session: &str) -> Vec<LifecycleEvent> {
        self.all()
            .into_iter()
            .filter(|e| e.session_id() == Some(session))
            .collect()
    }

    pub fn created(&self, session: &str) -> Vec<(String, SessionCreatedEvent)> {
        self.all()
            .into_iter()
            .filter_map(|e| match e {
                LifecycleEvent::Created { subject, event, .. } if event.session_id == session => {
                    Some((subject, event))
                }
                _ => None,
            })
            .collect()
    }

    pub fn ended(&self, session: &str) -> Vec<(String, SessionEndedEvent)> {
        self.all()
            .into_iter()
            .filter_map(|e| match e {
                LifecycleEvent::Ended { subject, event, .. } if event.session_id == session => {
                    Some((subject, event))
                }
                _ => None,
            })
            .collect()
    }

    /// Waits (bounded) for the `created` event of `session`.
    pub async fn wait_created(&self, session: &str) -> SessionCreatedEvent {
        crate::wait::wait_for(
            &format!("the created event of {session}"),
            WAIT_TIMEOUT,
            || async { self.created(session).into_iter().next().map(|(_, e)| e) },
        )
        .await
    }

    /// Waits (bounded) for the `ended` event of `session`.
    pub async fn wait_ended(&self, session: &str) -> SessionEndedEvent {
        crate::wait::wait_for(
            &format!("the ended event of {session}"),
            WAIT_TIMEOUT,
            || async { self.ended(session).into_iter().next().map(|(_, e)| e) },
        )
        .await
    }
}

impl Drop for EventCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}
