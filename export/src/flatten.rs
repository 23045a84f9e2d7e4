//! Samples of a stored sensor message as CSV rows.
//!
//! One row per sample: a `sensor_data` message is one sample (its fields other than the
//! envelope `type`, `deviceId`, `sessionId`, `seq`); a `sensor_batch` gives one row per
//! element of `samples` (its other top-level fields, if any, repeat on each row as `batch.*`).
//! Nested objects become dotted column names (`data.accel.x`); arrays and empty objects stay
//! one cell holding their compact JSON (a column per array index would make the column set
//! depend on array lengths); `null` is an empty cell; strings are written as they are (the csv
//! crate quotes commas, quotes and line breaks). Keys that themselves contain a dot share the
//! column of the equivalent nesting (`{"a.b":1}` and `{"a":{"b":1}}` both give `a.b`).

use crate::reader::StoredRecord;
use crate::ExportError;
use amr_proto::headers;
use serde_json::Value;
use std::collections::HashMap;

/// Columns every row starts with.
pub const FIXED_COLUMNS: [&str; 5] = ["deviceId", "sessionId", "type", "seq", "sample"];
/// Columns added after the fixed ones with `--metadata` (from the stream and its headers).
pub const META_COLUMNS: [&str; 4] = ["streamSeq", "receivedAt", "gateway", "dataCount"];

/// Envelope keys of a client message: not sample fields.
const ENVELOPE: [&str; 4] = ["type", "deviceId", "sessionId", "seq"];
const SAMPLES: &str = "samples";

/// One CSV row: (column, cell) pairs, fixed columns first.
pub type Row = Vec<(String, String)>;

/// The cell text of a leaf value.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(_) | Value::Object(_) => v.to_string(),
    }
}

/// Appends `v` flattened under `prefix` (empty: top level) to `out`.
pub fn flatten_into(prefix: &str, v: &Value, out: &mut Row) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_into(&name, child, out);
            }
        }
        _ => out.push((prefix.to_owned(), cell(v))),
    }
}

fn flatten_fields<'a>(
    fields: impl Iterator<Item = (&'a String, &'a Value)>,
    prefix: &str,
    out: &mut Row,
) {
    for (k, v) in fields {
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        flatten_into(&name, v, out);
    }
}

/// The rows of one stored message. `meta` adds the [`META_COLUMNS`].
pub fn rows(record: &StoredRecord, meta: bool) -> Result<Vec<Row>, ExportError> {
    let bad = |reason: String| ExportError::BadPayload {
        stream_seq: record.stream_seq,
        reason,
    };
    let value: Value = serde_json::from_slice(&record.payload).map_err(|e| bad(e.to_string()))?;
    let Value::Object(msg) = value else {
        return Err(bad("not an object".into()));
    };
    let text = |key: &str| msg.get(key).map(cell);
    // Headers are authoritative: a client may leave deviceId/sessionId out of later messages.
    let device = record
        .header(headers::DEVICE_ID)
        .map(str::to_owned)
        .or_else(|| text("deviceId"))
        .unwrap_or_default();
    let session = record
        .header(headers::SESSION_ID)
        .map(str::to_owned)
        .or_else(|| text("sessionId"))
        .unwrap_or_default();
    let kind = text("type")
        .or_else(|| record.header(headers::MESSAGE_TYPE).map(str::to_owned))
        .unwrap_or_default();
    let seq = text("seq")
        .or_else(|| record.header(headers::SEQ).map(str::to_owned))
        .unwrap_or_default();
    let head = |index: usize| -> Row {
        let mut row: Row = vec![
            ("deviceId".into(), device.clone()),
            ("sessionId".into(), session.clone()),
            ("type".into(), kind.clone()),
            ("seq".into(), seq.clone()),
            ("sample".into(), index.to_string()),
        ];
        if meta {
            let h = |name: &str| record.header(name).unwrap_or_default().to_owned();
            row.push(("streamSeq".into(), record.stream_seq.to_string()));
            row.push(("receivedAt".into(), h(headers::RECEIVED_AT)));
            row.push(("gateway".into(), h(headers::GATEWAY)));
            row.push(("dataCount".into(), h(headers::DATA_COUNT)));
        }
        row
    };
    let not_envelope = |(k, _): &(&String, &Value)| !ENVELOPE.contains(&k.as_str());
    match msg.get(SAMPLES) {
        Some(Value::Array(samples)) => {
            let mut batch_fields = Row::new();
            flatten_fields(
                msg.iter()
                    .filter(not_envelope)
                    .filter(|(k, _)| k.as_str() != SAMPLES),
                "batch",
                &mut batch_fields,
            );
            let mut out = Vec::with_capacity(samples.len());
            for (i, s) in samples.iter().enumerate() {
                let mut row = head(i);
                match s {
                    Value::Object(m) => flatten_fields(m.iter(), "", &mut row),
                    other => row.push(("value".into(), cell(other))),
                }
                row.extend(batch_fields.iter().cloned());
                out.push(row);
            }
            Ok(out)
        }
        _ => {
            let mut row = head(0);
            flatten_fields(msg.iter().filter(not_envelope), "", &mut row);
            Ok(vec![row])
        }
    }
}

/// The union of the columns of many rows, fixed columns first, then in order of first
/// appearance.
#[derive(Debug, Clone, Default)]
pub struct Columns {
    names: Vec<String>,
    index: HashMap<String, usize>,
}

impl Columns {
    pub fn new(meta: bool) -> Self {
        let mut c = Columns::default();
        for name in FIXED_COLUMNS {
            c.add(name);
        }
        if meta {
            for name in META_COLUMNS {
                c.add(name);
            }
        }
        c
    }

    fn add(&mut self, name: &str) {
        if !self.index.contains_key(name) {
            self.index.insert(name.to_owned(), self.names.len());
            self.names.push(name.to_owned());
        }
    }

    pub fn observe(&mut self, row: &Row) {
        for (name, _) in row {
            self.add(name);
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The cells of `row` in column order (empty where the row has no value). A column this
    /// set never saw is an error: the first pass must have seen every row of the second.
    pub fn cells<'r>(&self, row: &'r Row) -> Result<Vec<&'r str>, String> {
        let mut cells = vec![""; self.names.len()];
        for (name, value) in row {
            match self.index.get(name) {
                Some(&i) => cells[i] = value.as_str(),
                None => return Err(format!("column '{name}' was not seen in the first pass")),
            }
        }
        Ok(cells)
    }
}
