//! What the embedded mode stores, read back from its data directory (`AMR_DATA_DIR`) as a
//! downstream reader of the files would:
//! - `<dir>/<deviceId>/<sessionId>.ndjson`: each accepted `sensor_data`/`sensor_batch` on one
//!   line, the client's bytes with every whitespace run that holds a line break removed;
//! - `<dir>/sessions.ndjson`: lifecycle events, `{"event":"created",...}` / `{"event":"ended",...}`.
//!
//! Only complete lines (ending in `\n`) are returned: a line the writer has not finished yet is
//! not a stored message. Nothing here knows how the product writes the files.

use crate::jetstream::StoredMessage;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Name of the lifecycle index in the data directory.
pub const INDEX_FILE: &str = "sessions.ndjson";

/// `<dir>/<deviceId>/<sessionId>.ndjson`.
pub fn session_file(dir: &Path, device: &str, session: &str) -> PathBuf {
    dir.join(device).join(format!("{session}.ndjson"))
}

/// `<dir>/sessions.ndjson`.
pub fn index_file(dir: &Path) -> PathBuf {
    dir.join(INDEX_FILE)
}

/// The complete lines of a file from byte `offset` on (without their `\n`), and the offset just
/// after the last complete line. A missing file has no lines.
pub fn complete_lines_from(path: &Path, offset: u64) -> (Vec<Vec<u8>>, u64) {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Vec::new(), offset),
        Err(e) => panic!("read {}: {e}", path.display()),
    };
    let start = (offset as usize).min(bytes.len());
    let rest = &bytes[start..];
    let Some(last_nl) = rest.iter().rposition(|&b| b == b'\n') else {
        return (Vec::new(), offset);
    };
    let lines = rest[..last_nl]
        .split(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    (lines, (start + last_nl + 1) as u64)
}

/// Every complete line of a file (none when it does not exist).
pub fn complete_lines(path: &Path) -> Vec<Vec<u8>> {
    complete_lines_from(path, 0).0
}

/// A session's stored messages, in file order. `subject` holds the file's path; there are no
/// headers in this mode.
pub fn read_session(dir: &Path, device: &str, session: &str) -> Vec<StoredMessage> {
    let path = session_file(dir, device, session);
    let where_ = path.display().to_string();
    complete_lines(&path)
        .into_iter()
        .map(|payload| StoredMessage {
            subject: where_.clone(),
            payload,
            headers: BTreeMap::new(),
        })
        .collect()
}

/// How many messages a session's file holds (0 when it does not exist).
pub fn session_count(dir: &Path, device: &str, session: &str) -> u64 {
    complete_lines(&session_file(dir, device, session)).len() as u64
}

/// Every line of the lifecycle index, parsed as JSON (a line that is not JSON panics: the
/// index is NDJSON).
pub fn read_index(dir: &Path) -> Vec<serde_json::Value> {
    let path = index_file(dir);
    complete_lines(&path)
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_slice(&l).unwrap_or_else(|e| {
                panic!(
                    "{} line {}: not JSON ({e}): {}",
                    path.display(),
                    i + 1,
                    String::from_utf8_lossy(&l)
                )
            })
        })
        .collect()
}

/// What the embedded mode must store for a client message `text`: `text` with every whitespace
/// run outside strings that contains a line break (`\n` or `\r`) removed; every other byte,
/// whitespace runs without a line break included, unchanged (protocol.md section 10).
pub fn one_line(text: &str) -> String {
    let is_ws = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r');
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if is_ws(c) {
            run.push(c);
            continue;
        }
        if !run.contains(['\n', '\r']) {
            out.push_str(&run);
        }
        run.clear();
        if c == '"' {
            in_string = true;
        }
        out.push(c);
    }
    if !run.contains(['\n', '\r']) {
        out.push_str(&run);
    }
    out
}

/// `text` without any whitespace outside strings: two messages with the same tokens (every
/// key, every value literal, byte for byte) compare equal.
pub fn tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_removes_only_runs_with_a_line_break() {
        assert_eq!(one_line("{\"a\" :  1,\t\"b\":2}"), "{\"a\" :  1,\t\"b\":2}");
        assert_eq!(
            one_line("{\n  \"a\": \"x \\\" \\n y\",\r\n\t\"b\" : [1 ,\n 2]\n}"),
            "{\"a\": \"x \\\" \\n y\",\"b\" : [1 ,2]}"
        );
        assert_eq!(one_line("{\"s\":\"a\\\\\"}\n"), "{\"s\":\"a\\\\\"}");
    }

    #[test]
    fn tokens_ignore_whitespace_outside_strings_only() {
        assert_eq!(tokens("{ \"a b\" :\n 1.50 }"), "{\"a b\":1.50}");
    }

    #[test]
    fn complete_lines_skip_an_unfinished_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.ndjson");
        assert!(complete_lines(&p).is_empty());
        std::fs::write(&p, b"{\"a\":1}\n{\"b\":2}\n{\"c\"").unwrap();
        let (lines, next) = complete_lines_from(&p, 0);
        assert_eq!(lines, vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]);
        assert_eq!(next, 16);
        let (lines, next2) = complete_lines_from(&p, next);
        assert!(lines.is_empty());
        assert_eq!(next2, next);
    }
}
