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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::CsvWriter;
    use bytes::Bytes;
    use std::collections::BTreeMap;

    fn record(payload: &str, seq: Option<u64>) -> StoredRecord {
        let mut h = BTreeMap::new();
        h.insert(headers::DEVICE_ID.to_owned(), "AMR_1".to_owned());
        h.insert(headers::SESSION_ID.to_owned(), "session_x".to_owned());
        h.insert(headers::RECEIVED_AT.to_owned(), "1700000000000".to_owned());
        h.insert(headers::GATEWAY.to_owned(), "gw-1".to_owned());
        h.insert(headers::DATA_COUNT.to_owned(), "7".to_owned());
        if let Some(s) = seq {
            h.insert(headers::SEQ.to_owned(), s.to_string());
        }
        StoredRecord {
            subject: "amr.sensor.AMR_1.session_x".into(),
            stream_seq: 42,
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            headers: h,
        }
    }

    fn get<'a>(row: &'a Row, col: &str) -> Option<&'a str> {
        row.iter().find(|(c, _)| c == col).map(|(_, v)| v.as_str())
    }

    /// Parses CSV text back with the csv crate: what a spreadsheet or pandas would read.
    fn parse_csv(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let header = r.headers().unwrap().iter().map(str::to_owned).collect();
        let rows = r
            .records()
            .map(|rec| rec.unwrap().iter().map(str::to_owned).collect())
            .collect();
        (header, rows)
    }

    fn export_csv(records: &[StoredRecord], meta: bool) -> String {
        let mut columns = Columns::new(meta);
        for r in records {
            for row in rows(r, meta).unwrap() {
                columns.observe(&row);
            }
        }
        let mut w = CsvWriter::new(Vec::new(), columns, meta).unwrap();
        for r in records {
            w.write(r).unwrap();
        }
        String::from_utf8(w.finish().unwrap()).unwrap()
    }

    #[test]
    fn nested_objects_become_dotted_columns() {
        let r = record(
            r#"{"type":"sensor_data","deviceId":"AMR_1","sessionId":"session_x","seq":3,"timestamp":1700,"data":{"accel":{"x":1.5,"y":-2,"z":{"deep":true}},"temp":21}}"#,
            Some(3),
        );
        let rs = rows(&r, false).unwrap();
        assert_eq!(rs.len(), 1);
        let row = &rs[0];
        assert_eq!(get(row, "data.accel.x"), Some("1.5"));
        assert_eq!(get(row, "data.accel.y"), Some("-2"));
        assert_eq!(get(row, "data.accel.z.deep"), Some("true"));
        assert_eq!(get(row, "data.temp"), Some("21"));
        assert_eq!(get(row, "timestamp"), Some("1700"));
        assert_eq!(get(row, "seq"), Some("3"));
        assert_eq!(get(row, "type"), Some("sensor_data"));
        // The envelope is not sample data.
        assert_eq!(get(row, "deviceId"), Some("AMR_1"));
        assert_eq!(row.iter().filter(|(c, _)| c == "deviceId").count(), 1);
    }

    #[test]
    fn arrays_nulls_and_empty_objects_stay_one_cell() {
        let r = record(
            r#"{"type":"sensor_data","data":{"ranges":[1,2.5,null],"pose":[{"a":1}],"none":null,"empty":{}}}"#,
            None,
        );
        let row = &rows(&r, false).unwrap()[0];
        assert_eq!(get(row, "data.ranges"), Some("[1,2.5,null]"));
        assert_eq!(get(row, "data.pose"), Some(r#"[{"a":1}]"#));
        assert_eq!(get(row, "data.none"), Some(""));
        assert_eq!(get(row, "data.empty"), Some("{}"));
        // deviceId/sessionId left out of the payload come from the headers.
        assert_eq!(get(row, "deviceId"), Some("AMR_1"));
        assert_eq!(get(row, "sessionId"), Some("session_x"));
        assert_eq!(get(row, "seq"), Some(""));
    }

    #[test]
    fn strings_with_commas_quotes_and_newlines_round_trip() {
        let tricky = "a,b \"quoted\"\nnext line; ünïcode";
        let payload = serde_json::json!({
            "type": "sensor_data",
            "seq": 1,
            "data": {"note": tricky, "plain": "x"}
        })
        .to_string();
        let text = export_csv(&[record(&payload, Some(1))], false);
        let (header, rows) = parse_csv(&text);
        assert_eq!(rows.len(), 1);
        let col = header.iter().position(|h| h == "data.note").unwrap();
        assert_eq!(rows[0][col], tricky);
        let col = header.iter().position(|h| h == "data.plain").unwrap();
        assert_eq!(rows[0][col], "x");
    }

    #[test]
    fn a_batch_gives_one_row_per_sample() {
        let r = record(
            r#"{"type":"sensor_batch","seq":9,"samples":[{"timestamp":1,"data":{"x":1}},{"timestamp":2,"data":{"x":2,"y":"b"}},{"timestamp":3,"data":{"z":[3]}}]}"#,
            Some(9),
        );
        let rs = rows(&r, false).unwrap();
        assert_eq!(rs.len(), 3);
        for (i, row) in rs.iter().enumerate() {
            assert_eq!(get(row, "sample"), Some(i.to_string().as_str()));
            assert_eq!(get(row, "seq"), Some("9"));
            assert_eq!(get(row, "type"), Some("sensor_batch"));
            assert_eq!(get(row, "timestamp"), Some((i + 1).to_string().as_str()));
        }
        assert_eq!(get(&rs[1], "data.y"), Some("b"));
        assert_eq!(get(&rs[2], "data.z"), Some("[3]"));
    }

    #[test]
    fn the_column_set_is_the_union_in_order_of_first_appearance() {
        let a = record(r#"{"type":"sensor_data","seq":1,"data":{"x":1}}"#, Some(1));
        let b = record(
            r#"{"type":"sensor_batch","seq":2,"samples":[{"data":{"y":2}},{"data":{"x":3,"w":4}}]}"#,
            Some(2),
        );
        let text = export_csv(&[a, b], false);
        let (header, rows) = parse_csv(&text);
        assert_eq!(
            header,
            [
                "deviceId",
                "sessionId",
                "type",
                "seq",
                "sample",
                "data.x",
                "data.y",
                "data.w"
            ]
        );
        assert_eq!(rows.len(), 3);
        // Missing values are empty cells, every row has every column.
        assert!(rows.iter().all(|r| r.len() == header.len()));
        assert_eq!(rows[0][5..], ["1", "", ""]);
        assert_eq!(rows[1][5..], ["", "2", ""]);
        assert_eq!(rows[2][5..], ["3", "", "4"]);
    }

    #[test]
    fn metadata_columns_come_from_the_stream_and_headers() {
        let r = record(r#"{"type":"sensor_data","seq":5,"data":{"x":1}}"#, Some(5));
        let text = export_csv(&[r], true);
        let (header, rows) = parse_csv(&text);
        let at = |c: &str| rows[0][header.iter().position(|h| h == c).unwrap()].clone();
        assert_eq!(at("streamSeq"), "42");
        assert_eq!(at("receivedAt"), "1700000000000");
        assert_eq!(at("gateway"), "gw-1");
        assert_eq!(at("dataCount"), "7");
    }

    #[test]
    fn a_column_not_seen_in_the_first_pass_is_an_error() {
        let columns = Columns::new(false);
        let row: Row = vec![("data.new".into(), "1".into())];
        assert!(columns.cells(&row).is_err());
    }

    #[test]
    fn a_payload_that_is_not_an_object_is_reported_with_its_stream_seq() {
        let e = rows(&record("[1,2]", None), false).unwrap_err();
        assert!(e.to_string().contains("42"), "{e}");
    }
}
