//! Finding one session in `AMR_SENSOR` and reading it back in stream order.
//!
//! A session's messages live on one subject, `<prefix>.sensor.<deviceId>.<sessionId>`. Reading
//! uses an ephemeral ordered consumer filtered on that subject, deliver-all, and stops at the
//! message after which the consumer has nothing pending (or at a given stream sequence): it
//! never waits for a timeout to find the end. A session still being recorded is read up to
//! what the stream held when the read caught up.

use crate::ExportError;
use amr_proto::subjects::{Subjects, SENSOR_STREAM};
use async_nats::jetstream::{self, consumer, stream::Stream};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use std::collections::BTreeMap;
use std::time::Duration;

/// One stored sensor message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub subject: String,
    /// Sequence of the message in the stream (`AMR_SENSOR`).
    pub stream_seq: u64,
    /// The client's frame, byte for byte.
    pub payload: Bytes,
    /// Header name -> last value.
    pub headers: BTreeMap<String, String>,
}

impl StoredRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The client's `seq`, from the `Amr-Seq` header.
    pub fn seq(&self) -> Option<u64> {
        self.header(amr_proto::headers::SEQ)?.parse().ok()
    }
}

/// A session found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub session_id: String,
    pub subject: String,
    /// Messages the stream held on the subject when it was found.
    pub count: u64,
}

/// Reads sessions back from `AMR_SENSOR`.
#[derive(Clone)]
pub struct SessionReader {
    js: jetstream::Context,
    subjects: Subjects,
    /// A read fails when no message comes for this long while the consumer still announces
    /// some (a broken server or connection, never the normal end).
    stall: Duration,
}

fn nats<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> ExportError + '_ {
    move |e| ExportError::Nats(format!("{what}: {e}"))
}

/// A stored message's headers as name -> value (the last value of a repeated header).
pub fn header_map(h: Option<&async_nats::HeaderMap>) -> BTreeMap<String, String> {
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

impl SessionReader {
    pub fn new(client: async_nats::Client, prefix: &str) -> Self {
        SessionReader {
            js: jetstream::new(client),
            subjects: Subjects::new(prefix),
            stall: Duration::from_secs(30),
        }
    }

    /// Connects to `url` (comma-separated server list allowed).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, ExportError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(10)))
            .connect(url)
            .await
            .map_err(|e| ExportError::Connect {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Self::new(client, prefix))
    }

    pub fn with_stall_timeout(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    async fn stream(&self) -> Result<Stream, ExportError> {
        match self.js.get_stream(SENSOR_STREAM).await {
            Ok(s) => Ok(s),
            Err(e) => match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Err(ExportError::NoStream {
                        stream: SENSOR_STREAM.to_owned(),
                    })
                }
                _ => Err(ExportError::Nats(format!("stream {SENSOR_STREAM}: {e}"))),
            },
        }
    }

    /// Finds the subject of `session_id` (of `device_id` when given, else of any device, with
    /// the wildcard filter `<prefix>.sensor.*.<sessionId>`) and how many messages it holds.
    pub async fn find(
        &self,
        device_id: Option<&str>,
        session_id: &str,
    ) -> Result<Target, ExportError> {
        // Ids become subject tokens: a '.', '*' or '>' would select other sessions.
        if !amr_proto::ids::is_valid_session_id(session_id) {
            return Err(ExportError::InvalidId {
                what: "session id",
                value: session_id.to_owned(),
                why: "expected session_ followed by 32 hex digits",
            });
        }
        if let Some(d) = device_id {
            if !amr_proto::ids::is_valid_device_id(d) {
                return Err(ExportError::InvalidId {
                    what: "device id",
                    value: d.to_owned(),
                    why: "expected 1-64 characters of [A-Za-z0-9_-]",
                });
            }
        }
        let filter = self.subjects.sensor(device_id.unwrap_or("*"), session_id);
        let stream = self.stream().await?;
        let mut info = stream
            .info_with_subjects(&filter)
            .await
            .map_err(nats("stream subjects"))?;
        let mut found: Vec<(String, u64)> = Vec::new();
        while let Some((subject, n)) = info.try_next().await.map_err(nats("stream subjects"))? {
            if n > 0 {
                found.push((subject, n as u64));
            }
        }
        found.sort();
        match found.len() {
            0 => Err(ExportError::UnknownSession {
                session: session_id.to_owned(),
                stream: SENSOR_STREAM.to_owned(),
                filter,
            }),
            1 => {
                let (subject, count) = found.remove(0);
                Ok(Target {
                    session_id: session_id.to_owned(),
                    subject,
                    count,
                })
            }
            _ => Err(ExportError::Ambiguous {
                session: session_id.to_owned(),
                subjects: found.into_iter().map(|(s, _)| s).collect(),
            }),
        }
    }

    /// Calls `each` for every message of `target`, in stream order, until the consumer has
    /// nothing pending, or up to stream sequence `upto` when given (a second pass over exactly
    /// the messages of a first one). Returns the stream sequence of the last message read
    /// (0 when there was none).
    pub async fn for_each<F>(
        &self,
        target: &Target,
        upto: Option<u64>,
        mut each: F,
    ) -> Result<u64, ExportError>
    where
        F: FnMut(StoredRecord) -> Result<(), ExportError>,
    {
        let stream = self.stream().await?;
        let mut consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: target.subject.clone(),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(nats("ordered consumer"))?;
        let initially = consumer
            .info()
            .await
            .map_err(nats("consumer info"))?
            .num_pending;
        if initially == 0 || upto == Some(0) {
            return Ok(0);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(nats("consumer messages"))?;
        let mut read = 0u64;
        let mut pending = initially;
        loop {
            let next = match tokio::time::timeout(self.stall, messages.next()).await {
                Ok(n) => n,
                Err(_) => {
                    return Err(ExportError::Stalled {
                        subject: target.subject.clone(),
                        read,
                        pending,
                        idle: self.stall,
                    })
                }
            };
            let m = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(ExportError::Nats(format!("consumer: {e}"))),
                None => return Err(ExportError::Nats("consumer ended".into())),
            };
            let info = m.info().map_err(nats("message info"))?;
            let stream_seq = info.stream_sequence;
            pending = info.pending;
            read += 1;
            each(StoredRecord {
                subject: m.subject.to_string(),
                stream_seq,
                payload: m.payload.clone(),
                headers: header_map(m.headers.as_ref()),
            })?;
            if pending == 0 || upto.is_some_and(|u| stream_seq >= u) {
                return Ok(stream_seq);
            }
        }
    }

    /// Every message of `target`, in stream order (for tests and small sessions).
    pub async fn read_all(&self, target: &Target) -> Result<Vec<StoredRecord>, ExportError> {
        let mut out = Vec::with_capacity(target.count as usize);
        self.for_each(target, None, |r| {
            out.push(r);
            Ok(())
        })
        .await?;
        Ok(out)
    }
}
