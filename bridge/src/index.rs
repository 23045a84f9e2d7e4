//! The embedded mode's session index: an append-only NDJSON file of lifecycle events
//! (`<data dir>/sessions.ndjson`), the embedded counterpart of the `AMR_SESSIONS` stream.
//!
//! At start-up it is read back so that sessions of earlier runs stay listed: a session whose
//! `ended` line is missing (the process stopped while it was open) is ended `disconnected`
//! with its count taken from its data file, and that end is appended too.

use crate::file_sink::FileSink;
use amr_proto::client::{self, ClientMessage};
use amr_proto::events::{SessionCreatedEvent, SessionEndedEvent, SessionRecord, SessionState};
use amr_proto::EndReason;
use amr_session_service::events::Lifecycle;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const INDEX_FILE: &str = "sessions.ndjson";

/// One line of the index.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum IndexLine {
    Created(SessionCreatedEvent),
    Ended(SessionEndedEvent),
}

pub struct SessionIndex {
    dir: PathBuf,
    file: Mutex<File>,
    sink: FileSink,
}

impl SessionIndex {
    pub fn open(dir: &Path, sink: FileSink) -> std::io::Result<SessionIndex> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(INDEX_FILE))?;
        Ok(SessionIndex {
            dir: dir.to_owned(),
            file: Mutex::new(file),
            sink,
        })
    }

    fn append(&self, line: &IndexLine) {
        let Ok(mut text) = serde_json::to_vec(line) else {
            return;
        };
        text.push(b'\n');
        // One short line per session event: written and handed to the OS at once.
        match self.file.lock() {
            Ok(mut f) => {
                if let Err(e) = f.write_all(&text).and_then(|()| f.flush()) {
                    tracing::error!(error = %e, "cannot append to the session index");
                }
            }
            Err(_) => tracing::error!("session index lock poisoned"),
        }
    }

    /// Reads the index back: every session of earlier runs as an ended record. Sessions left
    /// open are ended `disconnected` now (and the end is appended).
    pub fn recover(&self) -> std::io::Result<Vec<SessionRecord>> {
        let path = self.dir.join(INDEX_FILE);
        let reader = BufReader::new(File::open(&path)?);
        let mut created: HashMap<String, SessionCreatedEvent> = HashMap::new();
        let mut ended: HashMap<String, SessionEndedEvent> = HashMap::new();
        for (n, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<IndexLine>(&line) {
                Ok(IndexLine::Created(c)) => {
                    created.insert(c.session_id.clone(), c);
                }
                Ok(IndexLine::Ended(e)) => {
                    ended.insert(e.session_id.clone(), e);
                }
                Err(e) => {
                    tracing::warn!(line = n + 1, error = %e, "unreadable session index line skipped")
                }
            }
        }
        let now = amr_proto::now_ms();
        let mut records = Vec::with_capacity(created.len());
        for (sid, c) in created {
            let e = match ended.remove(&sid) {
                Some(e) => e,
                None => {
                    let data_count =
                        count_samples(&FileSink::path(&self.dir, &c.device_id, &c.session_id));
                    let e = SessionEndedEvent {
                        session_id: c.session_id.clone(),
                        device_id: c.device_id.clone(),
                        started_at: c.started_at,
                        ended_at: now,
                        reason: EndReason::Disconnected,
                        data_count,
                    };
                    self.append(&IndexLine::Ended(e.clone()));
                    e
                }
            };
            records.push(SessionRecord {
                session_id: e.session_id,
                device_id: e.device_id,
                state: SessionState::Ended,
                started_at: e.started_at,
                ended_at: Some(e.ended_at),
                reason: Some(e.reason),
                data_count: e.data_count,
            });
        }
        Ok(records)
    }
}

/// Samples in a session's data file: 1 per `sensor_data` line, the batch size per
/// `sensor_batch` line (the same rule as dataCount).
fn count_samples(path: &Path) -> u64 {
    let Ok(file) = File::open(path) else {
        return 0;
    };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .map(|line| match client::parse(&line) {
            Ok(ClientMessage::Sensor(s)) => s.samples,
            _ => 0,
        })
        .sum()
}

impl Lifecycle for SessionIndex {
    fn created<'a>(&'a self, event: &'a SessionCreatedEvent) -> BoxFuture<'a, ()> {
        async move { self.append(&IndexLine::Created(event.clone())) }.boxed()
    }

    fn ended<'a>(&'a self, event: &'a SessionEndedEvent) -> BoxFuture<'a, ()> {
        async move {
            // The session's data file is complete: flush and close it first.
            self.sink.close(&event.session_id).await;
            self.append(&IndexLine::Ended(event.clone()));
        }
        .boxed()
    }
}
