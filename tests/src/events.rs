//! Session lifecycle events, mode-neutral: what a core NATS subscriber on
//! `<p>.session.>` sees (distributed mode), or the lines appended to the embedded mode's
//! `<data dir>/sessions.ndjson` (`{"event":"created",...}` / `{"event":"ended",...}`).
//!
//! Either way an [`EventCollector`] holds the events from the moment it was started, in order,
//! and the same questions (`created`, `ended`, `wait_ended`, ...) are asked of both.

use crate::files;
use crate::WAIT_TIMEOUT;
use amr_proto::events::{SessionCreatedEvent, SessionEndedEvent};
use amr_proto::subjects::{self, Subjects};
use futures_util::StreamExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One lifecycle event. `subject` says where it was seen: the NATS subject in distributed mode,
/// `sessions.ndjson:<line number>` in embedded mode (so only distributed tests compare it with
/// [`Subjects::session_event`]).
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
    /// Anything else on `<p>.session.>`, or an index line that is not a contract event (kept
    /// to be asserted on).
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

    /// Classifies one event: `kind` is `created`/`ended` (the subject's last token, or the
    /// index line's `event` field), anything else is `Other`.
    fn classify(subject: String, kind: Option<&str>, payload: String) -> LifecycleEvent {
        let raw: Option<serde_json::Value> = serde_json::from_str(&payload).ok();
        match (raw, kind) {
            (Some(raw), Some(subjects::EVENT_CREATED)) => {
                match serde_json::from_value::<SessionCreatedEvent>(raw.clone()) {
                    Ok(event) => LifecycleEvent::Created {
                        subject,
                        event,
                        raw,
                    },
                    Err(_) => LifecycleEvent::Other { subject, payload },
                }
            }
            (Some(raw), Some(subjects::EVENT_ENDED)) => {
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
        }
    }
}

enum Source {
    /// A core NATS subscriber filling `events` from a task.
    Nats {
        events: Arc<Mutex<Vec<LifecycleEvent>>>,
        task: tokio::task::JoinHandle<()>,
    },
    /// The embedded index file, read from `offset` (its length when the collector started).
    File {
        path: PathBuf,
        offset: u64,
        first_line: usize,
    },
}

/// Collects every lifecycle event from the moment [`EventCollector::start`] /
/// [`EventCollector::start_file`] returns.
pub struct EventCollector {
    source: Source,
    subjects: Subjects,
}

impl EventCollector {
    /// Distributed mode: subscribes to `<p>.session.>`; the subscription is confirmed by a round
    /// trip through the server before this returns.
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
        let task = tokio::spawn(async move {
            let _client = client; // keeps the connection alive with the task
            while let Some(m) = sub.next().await {
                let subject = m.subject.to_string();
                let payload = String::from_utf8_lossy(&m.payload).into_owned();
                let kind = subject.rsplit('.').next().map(str::to_owned);
                let ev = LifecycleEvent::classify(subject, kind.as_deref(), payload);
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(ev);
            }
        });
        EventCollector {
            source: Source::Nats { events, task },
            subjects,
        }
    }

    /// Embedded mode: the lines appended to `index` (`sessions.ndjson`) from now on.
    pub fn start_file(index: PathBuf, prefix: &str) -> EventCollector {
        let (lines, offset) = files::complete_lines_from(&index, 0);
        EventCollector {
            source: Source::File {
                path: index,
                offset,
                first_line: lines.len() + 1,
            },
            subjects: Subjects::new(prefix),
        }
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// Every event so far, in arrival (append) order.
    pub fn all(&self) -> Vec<LifecycleEvent> {
        match &self.source {
            Source::Nats { events, .. } => events.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            Source::File {
                path,
                offset,
                first_line,
            } => {
                let (lines, _) = files::complete_lines_from(path, *offset);
                lines
                    .into_iter()
                    .enumerate()
                    .map(|(i, line)| {
                        let subject = format!("{}:{}", files::INDEX_FILE, first_line + i);
                        let payload = String::from_utf8_lossy(&line).into_owned();
                        let kind = serde_json::from_str::<serde_json::Value>(&payload)
                            .ok()
                            .and_then(|v| v.get("event")?.as_str().map(str::to_owned));
                        LifecycleEvent::classify(subject, kind.as_deref(), payload)
                    })
                    .collect()
            }
        }
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
        if let Source::Nats { task, .. } = &self.source {
            task.abort();
        }
    }
}
