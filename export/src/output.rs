//! The two output encodings.
//!
//! NDJSON: one line per stored message, the client's JSON verbatim. A raw CR or LF in valid
//! JSON can only be whitespace between tokens (inside strings they are escaped), so a
//! pretty-printed client frame becomes one line by turning those bytes into spaces, which
//! keeps every value exact. With metadata each line is
//! `{"meta":{...},"message":<the client's JSON>}`.
//!
//! CSV: see [`crate::flatten`]; the header is the column union given up front.

use crate::flatten::{self, Columns};
use crate::reader::StoredRecord;
use crate::ExportError;
use amr_proto::headers;
use serde_json::{Map, Value};
use std::io::Write;

/// The payload on one line (CR/LF whitespace turned into spaces).
pub fn one_line(payload: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if payload.iter().any(|&b| b == b'\n' || b == b'\r') {
        payload
            .iter()
            .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b })
            .collect::<Vec<u8>>()
            .into()
    } else {
        payload.into()
    }
}

/// The `meta` object of an NDJSON line with metadata.
pub fn meta_object(r: &StoredRecord) -> Value {
    let mut m = Map::new();
    m.insert("subject".into(), Value::from(r.subject.as_str()));
    m.insert("streamSeq".into(), Value::from(r.stream_seq));
    let number_or_text = |v: &str| match v.parse::<u64>() {
        Ok(n) => Value::from(n),
        Err(_) => Value::from(v),
    };
    let fields: [(&str, &str, bool); 7] = [
        ("deviceId", headers::DEVICE_ID, false),
        ("sessionId", headers::SESSION_ID, false),
        ("messageType", headers::MESSAGE_TYPE, false),
        ("seq", headers::SEQ, true),
        ("receivedAt", headers::RECEIVED_AT, true),
        ("dataCount", headers::DATA_COUNT, true),
        ("gateway", headers::GATEWAY, false),
    ];
    for (key, header, numeric) in fields {
        if let Some(v) = r.header(header) {
            let v = if numeric {
                number_or_text(v)
            } else {
                Value::from(v)
            };
            m.insert(key.into(), v);
        }
    }
    Value::Object(m)
}

pub struct NdjsonWriter<W: Write> {
    out: W,
    meta: bool,
}

impl<W: Write> NdjsonWriter<W> {
    pub fn new(out: W, meta: bool) -> Self {
        NdjsonWriter { out, meta }
    }

    pub fn write(&mut self, r: &StoredRecord) -> Result<(), ExportError> {
        let line = one_line(&r.payload);
        if self.meta {
            // Checked so that a wrapped line is always valid JSON.
            serde_json::from_slice::<&serde_json::value::RawValue>(&line).map_err(|e| {
                ExportError::BadPayload {
                    stream_seq: r.stream_seq,
                    reason: e.to_string(),
                }
            })?;
            self.out.write_all(b"{\"meta\":")?;
            serde_json::to_writer(&mut self.out, &meta_object(r))
                .map_err(|e| ExportError::Io(e.into()))?;
            self.out.write_all(b",\"message\":")?;
            self.out.write_all(&line)?;
            self.out.write_all(b"}\n")?;
        } else {
            self.out.write_all(&line)?;
            self.out.write_all(b"\n")?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<W, ExportError> {
        self.out.flush()?;
        Ok(self.out)
    }
}

pub struct CsvWriter<W: Write> {
    out: csv::Writer<W>,
    columns: Columns,
    meta: bool,
    rows: u64,
}

impl<W: Write> CsvWriter<W> {
    /// Writes the header line at once.
    pub fn new(out: W, columns: Columns, meta: bool) -> Result<Self, ExportError> {
        let mut out = csv::WriterBuilder::new().from_writer(out);
        out.write_record(columns.names())?;
        Ok(CsvWriter {
            out,
            columns,
            meta,
            rows: 0,
        })
    }

    pub fn write(&mut self, r: &StoredRecord) -> Result<(), ExportError> {
        for row in flatten::rows(r, self.meta)? {
            let cells = self
                .columns
                .cells(&row)
                .map_err(|reason| ExportError::BadPayload {
                    stream_seq: r.stream_seq,
                    reason,
                })?;
            self.out.write_record(&cells)?;
            self.rows += 1;
        }
        Ok(())
    }

    /// Rows written (samples).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn finish(self) -> Result<W, ExportError> {
        self.out
            .into_inner()
            .map_err(|e| ExportError::Io(std::io::Error::other(e.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::collections::BTreeMap;

    fn record(payload: &str) -> StoredRecord {
        let mut h = BTreeMap::new();
        h.insert(headers::SEQ.to_owned(), "12".to_owned());
        h.insert(headers::RECEIVED_AT.to_owned(), "1700000000000".to_owned());
        StoredRecord {
            subject: "amr.sensor.d.s".into(),
            stream_seq: 3,
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            headers: h,
        }
    }

    #[test]
    fn ndjson_is_the_payload_verbatim_one_line_each() {
        let p = r#"{"type":"sensor_data","seq":12,"data":{"s":"a\nb","n":1.50}}"#;
        let mut w = NdjsonWriter::new(Vec::new(), false);
        w.write(&record(p)).unwrap();
        w.write(&record(p)).unwrap();
        let out = String::from_utf8(w.finish().unwrap()).unwrap();
        assert_eq!(out, format!("{p}\n{p}\n"));
    }

    #[test]
    fn a_pretty_printed_payload_becomes_one_equivalent_line() {
        let p = "{\r\n  \"data\": {\"s\": \"x\\ny\"},\n  \"seq\": 12\n}";
        let mut w = NdjsonWriter::new(Vec::new(), false);
        w.write(&record(p)).unwrap();
        let out = String::from_utf8(w.finish().unwrap()).unwrap();
        assert_eq!(out.lines().count(), 1);
        let a: Value = serde_json::from_str(out.trim_end()).unwrap();
        let b: Value = serde_json::from_str(p).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn ndjson_with_metadata_wraps_the_verbatim_payload() {
        let p = r#"{"type":"sensor_data","seq":12,"data":{"n":1.50}}"#;
        let mut w = NdjsonWriter::new(Vec::new(), true);
        w.write(&record(p)).unwrap();
        let out = String::from_utf8(w.finish().unwrap()).unwrap();
        assert!(out.ends_with(&format!(",\"message\":{p}}}\n")), "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["meta"]["seq"], 12);
        assert_eq!(v["meta"]["streamSeq"], 3);
        assert_eq!(v["meta"]["receivedAt"], 1700000000000u64);
        assert_eq!(v["message"]["seq"], 12);
    }

    #[test]
    fn metadata_refuses_a_payload_that_is_not_json() {
        let mut w = NdjsonWriter::new(Vec::new(), true);
        assert!(w.write(&record("not json")).is_err());
    }
}
