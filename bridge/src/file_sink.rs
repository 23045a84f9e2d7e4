//! The embedded mode's sensor sink: each session's accepted messages in their own NDJSON file,
//! `<data dir>/<deviceId>/<sessionId>.ndjson`, one message per line, the client's bytes
//! unchanged except that whitespace containing a line break is removed (so one message stays
//! one line).
//!
//! One writer task owns every open file and writes in arrival order. It drains whatever is
//! queued, writes it, flushes the files it touched to the operating system, and only then
//! resolves the pending acknowledgements (group commit): an acknowledged message survives the
//! process being killed. Files are flushed and closed when their session ends and on shutdown.

use amr_gateway::backend::{Published, SensorSink, Stamp};
use amr_proto::client::SensorMessage;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, oneshot};

/// Messages queued for the writer before publishers wait (backpressure).
const QUEUE: usize = 8192;
/// Writes drained per group commit.
const BATCH: usize = 1024;

/// Stored (`Ok(duplicate)`) or why not.
type StoreResult = Result<bool, String>;
/// An acknowledgement waiting for the group commit, with its outcome so far.
type PendingAck = (oneshot::Sender<StoreResult>, StoreResult);

enum Job {
    Write {
        device_id: String,
        session_id: String,
        line: Bytes,
        seq: Option<u64>,
        /// Set when the client asked for an acknowledgement (`seq`).
        stored: Option<oneshot::Sender<StoreResult>>,
    },
    /// The session ended: flush and close its file; answers when done.
    Close {
        session_id: String,
        done: oneshot::Sender<()>,
    },
    /// Flush everything (shutdown); answers when done.
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct FileSink {
    tx: mpsc::Sender<Job>,
}

impl FileSink {
    /// Starts the writer on its own blocking thread (file I/O is blocking).
    pub fn start(dir: PathBuf) -> std::io::Result<FileSink> {
        fs::create_dir_all(&dir)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("amr-file-sink".into())
            .spawn(move || Writer::new(dir).run(rx))?;
        Ok(FileSink { tx })
    }

    /// Flushes and closes one session's file; returns when it is done, so that every message
    /// accepted before the end is in the file before the end is reported.
    pub async fn close(&self, session_id: &str) {
        let (done, flushed) = oneshot::channel();
        let job = Job::Close {
            session_id: session_id.to_owned(),
            done,
        };
        if self.tx.send(job).await.is_ok() {
            let _ = flushed.await;
        }
    }

    /// Flushes every open file; returns when it is done.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Job::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Path of one session's file.
    pub fn path(dir: &Path, device_id: &str, session_id: &str) -> PathBuf {
        dir.join(device_id).join(format!("{session_id}.ndjson"))
    }
}

impl SensorSink for FileSink {
    fn publish<'a>(
        &'a self,
        msg: &'a SensorMessage<'a>,
        stamp: &'a Stamp<'a>,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<Published, String>> {
        async move {
            let line = match one_line(&payload) {
                Cow::Borrowed(_) => payload,
                Cow::Owned(v) => Bytes::from(v),
            };
            let (stored, published) = if msg.seq.is_some() {
                let (tx, rx) = oneshot::channel();
                let pending = async move {
                    rx.await
                        .unwrap_or_else(|_| Err("file sink stopped".to_owned()))
                }
                .boxed();
                (Some(tx), Published::Pending(pending))
            } else {
                (None, Published::Sent)
            };
            self.tx
                .send(Job::Write {
                    device_id: stamp.device_id.to_owned(),
                    session_id: stamp.session_id.to_owned(),
                    line,
                    seq: msg.seq,
                    stored,
                })
                .await
                .map_err(|_| "file sink stopped".to_owned())?;
            Ok(published)
        }
        .boxed()
    }
}

struct Writer {
    dir: PathBuf,
    files: HashMap<String, BufWriter<File>>,
    /// Highest `seq` written per open session: `seq` increases within a session, so a resend
    /// at or below it is a duplicate and is stored once (like JetStream's `Nats-Msg-Id`).
    last_seq: HashMap<String, u64>,
}

impl Writer {
    fn new(dir: PathBuf) -> Self {
        Writer {
            dir,
            files: HashMap::new(),
            last_seq: HashMap::new(),
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut acks: Vec<PendingAck> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut job = Some(first);
            let mut drained = 0;
            while let Some(j) = job.take() {
                self.handle(j, &mut acks);
                drained += 1;
                if drained < BATCH {
                    job = rx.try_recv().ok();
                }
            }
            // Group commit: everything written in this batch reaches the OS before any ack.
            let flushed = self.flush_all();
            for (tx, result) in acks.drain(..) {
                let result = match (&flushed, result) {
                    (Err(e), Ok(_)) => Err(e.clone()),
                    (_, r) => r,
                };
                let _ = tx.send(result);
            }
        }
        let _ = self.flush_all();
    }

    fn handle(&mut self, job: Job, acks: &mut Vec<PendingAck>) {
        match job {
            Job::Write {
                device_id,
                session_id,
                line,
                seq,
                stored,
            } => {
                let last = seq.and_then(|_| self.last_seq.get(&session_id).copied());
                if let (Some(seq), Some(last)) = (seq, last) {
                    if seq <= last {
                        if let Some(tx) = stored {
                            acks.push((tx, Ok(true)));
                        }
                        return;
                    }
                }
                let result = self.write(&device_id, &session_id, &line);
                if let (Ok(()), Some(seq)) = (&result, seq) {
                    self.last_seq.insert(session_id.clone(), seq);
                }
                if let Err(e) = &result {
                    tracing::error!(device = %device_id, session = %session_id, error = %e, "cannot write sensor data");
                }
                if let Some(tx) = stored {
                    acks.push((tx, result.map(|()| false).map_err(|e| e.to_string())));
                }
            }
            Job::Close { session_id, done } => {
                self.last_seq.remove(&session_id);
                if let Some(mut f) = self.files.remove(&session_id) {
                    if let Err(e) = f.flush() {
                        tracing::error!(session = %session_id, error = %e, "cannot flush session file");
                    }
                }
                let _ = done.send(());
            }
            Job::Flush(done) => {
                let _ = self.flush_all();
                let _ = done.send(());
            }
        }
    }

    fn write(&mut self, device_id: &str, session_id: &str, line: &[u8]) -> std::io::Result<()> {
        if !self.files.contains_key(session_id) {
            let path = FileSink::path(&self.dir, device_id, session_id);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            self.files.insert(
                session_id.to_owned(),
                BufWriter::with_capacity(64 * 1024, file),
            );
        }
        let Some(f) = self.files.get_mut(session_id) else {
            return Ok(());
        };
        f.write_all(line)?;
        f.write_all(b"\n")
    }

    fn flush_all(&mut self) -> Result<(), String> {
        let mut result = Ok(());
        for (sid, f) in self.files.iter_mut() {
            if let Err(e) = f.flush() {
                tracing::error!(session = %sid, error = %e, "cannot flush session file");
                result = Err(e.to_string());
            }
        }
        result
    }
}

/// The message on one line: every whitespace run outside strings that contains a line break is
/// removed; nothing else changes. (JSON strings cannot hold a raw line break, so every raw
/// `\n`/`\r` is outside a string.)
pub fn one_line(json: &[u8]) -> Cow<'_, [u8]> {
    if !json.iter().any(|&b| b == b'\n' || b == b'\r') {
        return Cow::Borrowed(json);
    }
    let mut out = Vec::with_capacity(json.len());
    let mut i = 0;
    let mut in_string = false;
    while i < json.len() {
        let b = json[i];
        if in_string {
            out.push(b);
            if b == b'\\' && i + 1 < json.len() {
                out.push(json[i + 1]);
                i += 2;
                continue;
            }
            if b == b'"' {
                in_string = false;
            }
            i += 1;
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            let start = i;
            while i < json.len() && matches!(json[i], b' ' | b'\t' | b'\n' | b'\r') {
                i += 1;
            }
            let run = &json[start..i];
            if !run.iter().any(|&c| c == b'\n' || c == b'\r') {
                out.extend_from_slice(run);
            }
        } else {
            if b == b'"' {
                in_string = true;
            }
            out.push(b);
            i += 1;
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_messages_are_untouched() {
        let m = br#"{"type":"sensor_data",  "data": {"a" : 1}}"#;
        assert!(matches!(one_line(m), Cow::Borrowed(_)));
    }

    #[test]
    fn line_breaks_outside_strings_go_with_their_whitespace() {
        let m = b"{\n  \"type\": \"sensor_data\",\r\n  \"data\": {\"s\": \"a \\\" b\\n\"}\n}";
        assert_eq!(
            one_line(m).as_ref(),
            b"{\"type\": \"sensor_data\",\"data\": {\"s\": \"a \\\" b\\n\"}}".as_slice()
        );
    }
}
