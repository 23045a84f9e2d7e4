//! Client messages the simulated devices send. Type names come from `amr_proto::client::types`.

use amr_proto::client::types;
use amr_proto::now_ms;
use serde_json::json;
use std::fmt::Write as _;

pub fn device_register(device_id: &str, client_version: &str) -> String {
    json!({
        "type": types::DEVICE_REGISTER,
        "deviceId": device_id,
        "timestamp": now_ms(),
        "clientVersion": client_version,
    })
    .to_string()
}

pub fn session_start(device_id: &str) -> String {
    json!({
        "type": types::SESSION_START,
        "deviceId": device_id,
        "timestamp": now_ms(),
    })
    .to_string()
}

pub fn session_end(device_id: &str, session_id: &str) -> String {
    json!({
        "type": types::SESSION_END,
        "deviceId": device_id,
        "sessionId": session_id,
        "timestamp": now_ms(),
    })
    .to_string()
}

/// The sensor reading every sample carries (an IMU-like object), before the padding field.
const READING: &str = r#""accel":[0.012,-0.034,9.81],"battery":87,"pad":""#;

/// Builds the sensor messages of one session, padded to the requested size.
pub struct SensorBuilder {
    /// `{"type":"sensor_data","deviceId":"..","sessionId":"..",` (or sensor_batch).
    head: String,
    batch: u32,
    target_bytes: usize,
    pad_per_sample: usize,
}

impl SensorBuilder {
    /// `target_bytes`: size of one `sensor_data` message; a batch of N samples is about N times
    /// that (the padding of each sample is what makes up the size).
    pub fn new(device_id: &str, session_id: &str, batch: u32, target_bytes: usize) -> Self {
        let kind = if batch > 1 {
            types::SENSOR_BATCH
        } else {
            types::SENSOR_DATA
        };
        // Ids are validated server-side tokens ([A-Za-z0-9_-]); serialising them still escapes.
        let head = format!(
            r#"{{"type":{},"deviceId":{},"sessionId":{},"#,
            json!(kind),
            json!(device_id),
            json!(session_id)
        );
        // One unpadded sample: {"timestamp":1700000000000,"data":{READING""}}
        let sample_len = r#"{"timestamp":1700000000000,"data":{"#.len() + READING.len() + 3;
        let pad_per_sample = target_bytes.saturating_sub(sample_len + 40);
        SensorBuilder {
            head,
            batch: batch.max(1),
            target_bytes,
            pad_per_sample,
        }
    }

    /// Samples per message (the server's dataCount grows by this much per message).
    pub fn samples(&self) -> u64 {
        u64::from(self.batch)
    }

    /// One message; `seq` is included when given.
    pub fn build(&self, seq: Option<u64>) -> String {
        let ts = now_ms();
        let total = self.target_bytes.saturating_mul(self.batch as usize);
        let mut s = String::with_capacity(total + 64);
        s.push_str(&self.head);
        if let Some(n) = seq {
            let _ = write!(s, r#""seq":{n},"#);
        }
        if self.batch == 1 {
            let _ = write!(s, r#""timestamp":{ts},"data":{{{READING}"#);
            let n = total.saturating_sub(s.len() + 3);
            pad(&mut s, n);
            s.push_str(r#""}}"#);
        } else {
            s.push_str(r#""samples":["#);
            for i in 0..self.batch {
                if i > 0 {
                    s.push(',');
                }
                let _ = write!(s, r#"{{"timestamp":{ts},"data":{{{READING}"#);
                if i + 1 == self.batch {
                    let n = total.saturating_sub(s.len() + 5);
                    pad(&mut s, n);
                } else {
                    pad(&mut s, self.pad_per_sample);
                }
                s.push_str(r#""}}"#);
            }
            s.push_str("]}");
        }
        s
    }
}

fn pad(s: &mut String, n: usize) {
    const X: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
    let mut left = n;
    while left > 0 {
        let k = left.min(X.len());
        s.push_str(&X[..k]);
        left -= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amr_proto::client::{parse, ClientMessage, SensorKind};

    #[test]
    fn sensor_data_has_the_requested_size_and_parses() {
        let b = SensorBuilder::new(
            "lg-000001",
            "session_0123456789abcdef0123456789abcdef",
            1,
            200,
        );
        for seq in [None, Some(1), Some(123_456)] {
            let m = b.build(seq);
            assert_eq!(m.len(), 200, "{m}");
            let v: serde_json::Value = serde_json::from_str(&m).unwrap();
            assert!(v["data"].is_object());
            match parse(&m).unwrap() {
                ClientMessage::Sensor(s) => {
                    assert_eq!(s.kind, SensorKind::Data);
                    assert_eq!(s.seq, seq);
                    assert_eq!(s.samples, 1);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn small_target_still_valid() {
        let b = SensorBuilder::new("d", "session_x", 1, 10);
        let m = b.build(Some(7));
        assert!(serde_json::from_str::<serde_json::Value>(&m).is_ok());
    }

    #[test]
    fn batch_counts_samples() {
        let b = SensorBuilder::new(
            "lg-000001",
            "session_0123456789abcdef0123456789abcdef",
            10,
            200,
        );
        assert_eq!(b.samples(), 10);
        let m = b.build(Some(3));
        assert_eq!(m.len(), 2000);
        match parse(&m).unwrap() {
            ClientMessage::Sensor(s) => {
                assert_eq!(s.kind, SensorKind::Batch);
                assert_eq!(s.samples, 10);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn control_messages_parse() {
        for m in [
            device_register("lg-1", "1.1.0"),
            session_start("lg-1"),
            session_end("lg-1", "session_abc"),
        ] {
            assert!(parse(&m).is_ok(), "{m}");
        }
    }
}
