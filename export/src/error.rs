//! What can go wrong while exporting, and the process exit code of each.

/// Exit code when the session is unknown (no stored sensor message has its id).
pub const EXIT_UNKNOWN_SESSION: i32 = 3;
/// Exit code of every other failure (NATS unreachable, output not writable, ...).
pub const EXIT_FAILURE: i32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the stream {stream} does not exist (no gateway ever started against this NATS?)")]
    NoStream { stream: String },
    #[error("unknown session '{session}': the stream {stream} holds no message on {filter}")]
    UnknownSession {
        session: String,
        stream: String,
        filter: String,
    },
    #[error(
        "session '{session}' is stored under several subjects ({subjects:?}): pass --device-id"
    )]
    Ambiguous {
        session: String,
        subjects: Vec<String>,
    },
    #[error("invalid {what} '{value}': {why}")]
    InvalidId {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("NATS: {0}")]
    Nats(String),
    #[error("read {read} messages of {subject}, then nothing for {idle:?} although {pending} more were announced")]
    Stalled {
        subject: String,
        read: u64,
        pending: u64,
        idle: std::time::Duration,
    },
    #[error("stored message {stream_seq} is not a JSON object: {reason}")]
    BadPayload { stream_seq: u64, reason: String },
    #[error("writing the output: {0}")]
    Io(#[from] std::io::Error),
    #[error("writing CSV: {0}")]
    Csv(#[from] csv::Error),
}

impl ExportError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExportError::UnknownSession { .. } | ExportError::NoStream { .. } => {
                EXIT_UNKNOWN_SESSION
            }
            _ => EXIT_FAILURE,
        }
    }
}
