//! Sensor data lands separated per session, verbatim, in order, with the contract's headers
//! (protocol.md sections 4, 8, 10); data that is not for the device's active session is refused
//! and never forwarded. Every test runs in both modes (`both_modes!`): payloads, order, counts,
//! dataCount, events and acks are checked in both; headers (`Amr-*`, `Nats-Msg-Id`) and
//! subjects only in distributed mode. The embedded mode stores each message on one line
//! ([`Stack::expected_payload`]).

use amr_proto::client::types;
use amr_proto::server::{ServerMessage, SessionEnded};
use amr_proto::{headers, ids, now_ms, EndReason, ErrorCode};
use amr_tests::checks::{assert_error, is_w3c_traceparent};
use amr_tests::client::WsClient;
use amr_tests::jetstream::StoredMessage;
use amr_tests::{both_modes, msg, unique_device, Mode, Stack};
use serde_json::json;

/// One session's plan and what the client saw.
struct SentSession {
    device: String,
    session: String,
    texts: Vec<String>,
    seqs: Vec<Option<u64>>,
    samples: u64,
    ended: SessionEnded,
}

/// Message `k` of a session, in one of several hand-written layouts: odd whitespace (newlines
/// and tabs included), unusual key order, escapes, numbers a re-serialiser would rewrite
/// (`1.50`, `1e3`, `-0`). Returns (text, samples).
fn sensor_text(dev: &str, sid: &str, k: u64, seq: Option<u64>) -> (String, u64) {
    let ts = now_ms();
    let seq_part = seq.map(|n| format!(", \"seq\": {n}")).unwrap_or_default();
    if k % 4 == 3 {
        let n = 2 + (k % 3);
        let samples: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    "{{\"data\":{{\"vib\":[{i}.50, 1e3, -0]}}, \"timestamp\":{}}}",
                    ts + i as i64
                )
            })
            .collect();
        let text = format!(
            "{{\"samples\" : [ {} ],\n \"type\":\"{}\", \"sessionId\":\"{sid}\",\"deviceId\":\"{dev}\"{seq_part}}}",
            samples.join(" ,\t"),
            types::SENSOR_BATCH
        );
        return (text, n);
    }
    let text = match k % 3 {
        0 => {
            let mut v = msg::sensor_data(dev, Some(sid), seq, msg::sample(k));
            v["data"]["k"] = json!(k);
            v.to_string()
        }
        1 => format!(
            "{{ \"data\" : {{\"z\":{k}, \"a\" : [1, 2 ,3], \"s\":\"\u{e9} \\u00e9 \\\" \\t tab\"}},\n  \"sessionId\":\"{sid}\", \"type\":\"{}\"  , \"deviceId\": \"{dev}\", \"timestamp\": {ts}{seq_part} }}",
            types::SENSOR_DATA
        ),
        _ => format!(
            "{{\n\t\"type\": \"{}\",\n\t\"deviceId\": \"{dev}\",\n\t\"sessionId\": \"{sid}\",\n\t\"timestamp\": {ts},\n\t\"data\": {{ \"temp\": 21.50, \"big\": 1e3, \"neg\": -0, \"k\": {k} }}{seq_part}\n}}",
            types::SENSOR_DATA
        ),
    };
    (text, 1)
}

/// One device: 3 sessions on one connection, with varying counts; every other session uses seq.
async fn run_device(url: String, d: u64) -> Vec<SentSession> {
    let dev = unique_device(&format!("DEV{d}"));
    let mut c = WsClient::connect(&url).await;
    c.register(&dev, msg::CLIENT_VERSION).await;
    let mut out = Vec::new();
    for s in 0..3u64 {
        let sid = c.start(&dev).await.session_id;
        let with_seq = matches!((d + s) % 2, 0);
        let n = 3 + 4 * d + 2 * s;
        let mut sent = SentSession {
            device: dev.clone(),
            session: sid.clone(),
            texts: Vec::new(),
            seqs: Vec::new(),
            samples: 0,
            ended: SessionEnded {
                session_id: String::new(),
                device_id: String::new(),
                timestamp: 0,
                reason: EndReason::ClientRequest,
                started_at: 0,
                ended_at: 0,
                data_count: 0,
            },
        };
        for k in 0..n {
            let seq = with_seq.then_some(k + 1);
            let (text, samples) = sensor_text(&dev, &sid, k, seq);
            c.send_text(&text).await;
            sent.texts.push(text);
            sent.seqs.push(seq);
            sent.samples += samples;
        }
        if with_seq {
            c.wait_ack(&sid, n).await;
        }
        sent.ended = c.end(&dev, &sid).await;
        out.push(sent);
    }
    c.close().await;
    out
}

fn check_headers(m: &StoredMessage, s: &SentSession, seq: Option<u64>, i: usize) {
    let at = format!("{} message #{i}", s.session);
    assert_eq!(
        m.header(headers::DEVICE_ID),
        Some(s.device.as_str()),
        "{at}: {m:?}"
    );
    assert_eq!(
        m.header(headers::SESSION_ID),
        Some(s.session.as_str()),
        "{at}: {m:?}"
    );
    let received: i64 = m
        .header(headers::RECEIVED_AT)
        .unwrap_or_else(|| panic!("{at}: no {} header: {m:?}", headers::RECEIVED_AT))
        .parse()
        .unwrap_or_else(|_| panic!("{at}: {} is not integer ms: {m:?}", headers::RECEIVED_AT));
    assert!(
        received > 1_000_000_000_000,
        "{at}: Amr-Received-At is not Unix ms: {received}"
    );
    assert!(
        m.header(headers::GATEWAY).is_some_and(|g| !g.is_empty()),
        "{at}: no {} header: {m:?}",
        headers::GATEWAY
    );
    match seq {
        Some(n) => {
            assert_eq!(m.header(headers::SEQ), Some(n.to_string().as_str()), "{at}");
            assert_eq!(
                m.header(headers::NATS_MSG_ID),
                Some(headers::sensor_msg_id(&s.session, n).as_str()),
                "{at}"
            );
        }
        None => assert_eq!(m.header(headers::SEQ), None, "{at}: no seq was sent: {m:?}"),
    }
    if let Some(tp) = m.header(headers::TRACEPARENT) {
        assert!(is_w3c_traceparent(tp), "{at}: malformed traceparent {tp:?}");
    }
}

/// 5 devices x 3 sessions at once, varying counts, some batches, some with seq: every
/// `<p>.sensor.<dev>.<sid>` subject (embedded: `<dev>/<sid>.ndjson` file) holds exactly that
/// session's messages, byte for byte (embedded: in their one-line form), in order, with the
/// contract's headers (distributed); dataCount counts samples everywhere.
async fn data_lands_per_session_verbatim_and_in_order(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let events = stack.events().await;
    let tasks: Vec<_> = (0..5u64)
        .map(|d| tokio::spawn(run_device(stack.ws_url(0), d)))
        .collect();
    let mut sessions = Vec::new();
    for t in tasks {
        sessions.extend(t.await.expect("device task"));
    }
    assert_eq!(sessions.len(), 15);
    let distinct: std::collections::HashSet<_> = sessions.iter().map(|s| &s.session).collect();
    assert_eq!(distinct.len(), 15, "session ids must be unique");

    for s in &sessions {
        assert_eq!(s.ended.reason, EndReason::ClientRequest);
        assert_eq!(
            s.ended.data_count, s.samples,
            "session_ended dataCount of {} counts samples (a batch counts its samples)",
            s.session
        );
        let count = stack
            .wait_stored_count(&s.device, &s.session, s.texts.len() as u64)
            .await;
        assert_eq!(
            count,
            s.texts.len() as u64,
            "stored messages of {}",
            s.session
        );
        let stored = stack.stored_messages(&s.device, &s.session).await;
        assert_eq!(stored.len(), s.texts.len());
        for (i, (m, text)) in stored.iter().zip(&s.texts).enumerate() {
            assert_eq!(
                m.payload_str(),
                stack.expected_payload(text),
                "{} message #{i}: the payload must be the client's bytes verbatim, in order",
                s.session
            );
            assert_eq!(m.payload_seq(), s.seqs[i], "{} message #{i}", s.session);
            if mode == Mode::Distributed {
                assert_eq!(m.subject, stack.subjects().sensor(&s.device, &s.session));
                check_headers(m, s, s.seqs[i], i);
            }
        }
        let ev = events.wait_ended(&s.session).await;
        assert_eq!(ev.data_count, s.samples, "ended event of {}", s.session);
        let rec = stack.get_session(&s.session).await.expect("record");
        assert_eq!(rec.data_count, s.samples, "record of {}", s.session);
    }
}
both_modes!(data_lands_per_session_verbatim_and_in_order, multi_thread);

/// A message without sessionId (absent or null) is attributed to the connection's current
/// session.
async fn data_without_session_id_goes_to_the_current_session(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let dev = unique_device("AMR");
    let mut c = stack.registered_client(0, &dev).await;
    let sid = c.start(&dev).await.session_id;
    let texts = [
        c.send_json(&msg::sensor_data(&dev, None, None, msg::sample(1)))
            .await,
        {
            let mut v = msg::sensor_data(&dev, None, None, msg::sample(2));
            v["sessionId"] = serde_json::Value::Null;
            c.send_json(&v).await
        },
        c.send_json(&msg::sensor_batch(&dev, None, None, 2)).await,
        c.send_json(&msg::sensor_data(&dev, Some(&sid), None, msg::sample(3)))
            .await,
    ];
    let e = c.end(&dev, &sid).await;
    assert_eq!(e.data_count, 5);
    assert_eq!(stack.wait_stored_count(&dev, &sid, 4).await, 4);
    let payloads = stack.stored_payloads(&dev, &sid).await;
    let expected: Vec<String> = texts.iter().map(|t| stack.expected_payload(t)).collect();
    assert_eq!(payloads, expected);
}
both_modes!(data_without_session_id_goes_to_the_current_session);

/// With seq: an ack of N means everything up to N is stored (embedded: the line is written);
/// a message re-sent with the same (sessionId, seq) is stored once.
async fn acked_data_is_stored_and_a_resent_seq_is_stored_once(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let dev = unique_device("AMR");
    let mut c = stack.registered_client(0, &dev).await;
    let sid = c.start(&dev).await.session_id;
    let sent = c.send_data_acked(&dev, &sid, 1, 30).await;
    // Acked means durably stored: no waiting needed.
    assert_eq!(stack.stored_count(&dev, &sid).await, 30);

    // Re-send 29 and 30 byte for byte, then a new 31.
    c.send_text(&sent[28]).await;
    c.send_text(&sent[29]).await;
    c.send_data_acked(&dev, &sid, 31, 1).await;
    assert_eq!(
        stack.stored_count(&dev, &sid).await,
        31,
        "a re-sent (sessionId, seq) must be stored once"
    );
    let stored = stack.stored_messages(&dev, &sid).await;
    let seqs: Vec<Option<u64>> = stored.iter().map(|m| m.payload_seq()).collect();
    let expected: Vec<Option<u64>> = (1..=31).map(Some).collect();
    assert_eq!(seqs, expected);
    if mode == Mode::Distributed {
        let header_seqs: Vec<String> = stored
            .iter()
            .map(|m| m.header(headers::SEQ).unwrap_or("-").to_owned())
            .collect();
        let expected: Vec<String> = (1..=31).map(|n| n.to_string()).collect();
        assert_eq!(header_seqs, expected);
    }
    let payloads: Vec<&str> = stored.iter().map(|m| m.payload_str()).collect();
    assert_eq!(
        payloads[..30],
        sent.iter().map(String::as_str).collect::<Vec<_>>()[..]
    );
    for a in &c.acks {
        assert_eq!(a.session_id, sid);
    }
    let e = c.end(&dev, &sid).await;
    assert_eq!(e.data_count, 31, "a re-sent seq is counted once");
}
both_modes!(acked_data_is_stored_and_a_resent_seq_is_stored_once);

/// Data for a session that is not the device's active one (ended, unknown, another device's)
/// gets SESSION_NOT_ACTIVE naming that id and is not forwarded; no session and no sessionId
/// gets NO_ACTIVE_SESSION.
async fn refused_data_is_not_forwarded(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let (dev, other) = (unique_device("MINE"), unique_device("OTHER"));

    // Another device with an active session and 2 samples.
    let mut o = stack.registered_client(0, &other).await;
    let so = o.start(&other).await.session_id;
    o.send_data_acked(&other, &so, 1, 2).await;

    // Each case on its own connection, so that no error can be coalesced with another one.
    // 1. An ended session of this device.
    let mut c1 = stack.registered_client(0, &dev).await;
    let ended = c1.start(&dev).await.session_id;
    c1.send_data_acked(&dev, &ended, 1, 2).await;
    c1.end(&dev, &ended).await;
    // 2. An unknown (well-formed) id. 3. The other device's active session.
    let unknown = ids::new_session_id();
    let cases = [
        (ended.clone(), types::SENSOR_DATA),
        (unknown.clone(), types::SENSOR_DATA),
        (so.clone(), types::SENSOR_DATA),
        (ended.clone(), types::SENSOR_BATCH),
        (so.clone(), types::SENSOR_BATCH),
    ];
    for (sid, kind) in &cases {
        let mut c = stack.registered_client(0, &dev).await;
        let v = if *kind == types::SENSOR_DATA {
            msg::sensor_data(&dev, Some(sid), None, msg::sample(9))
        } else {
            msg::sensor_batch(&dev, Some(sid), None, 3)
        };
        c.send_json(&v).await;
        let e = c.recv_error().await;
        assert_error(&e, ErrorCode::SessionNotActive, Some(kind));
        assert_eq!(
            e.session_id.as_deref(),
            Some(sid.as_str()),
            "the error names the id sent"
        );
        // Barrier: a later accepted message of this connection is stored; a wrongly forwarded
        // earlier one would be stored before it.
        let s = c.start(&dev).await.session_id;
        c.send_data_acked(&dev, &s, 1, 1).await;
    }
    // 4. No session and no sessionId.
    let mut c4 = stack.registered_client(0, &dev).await;
    c4.send_json(&msg::sensor_data(&dev, None, None, msg::sample(1)))
        .await;
    let e = c4.recv_error().await;
    assert_error(&e, ErrorCode::NoActiveSession, Some(types::SENSOR_DATA));
    c4.send_json(&msg::sensor_batch(&dev, None, None, 2)).await;
    let e = c4.recv_error().await;
    assert_eq!(e.error_code, ErrorCode::NoActiveSession, "{e:?}");
    c4.ping().await;

    assert_eq!(
        stack.stored_count(&dev, &ended).await,
        2,
        "ended session unchanged"
    );
    assert_eq!(stack.stored_count(&dev, &unknown).await, 0);
    assert_eq!(stack.stored_count(&dev, &so).await, 0);
    assert_eq!(
        stack.stored_count(&other, &so).await,
        2,
        "other device unchanged"
    );

    // The other device's session was not disturbed.
    let e = o.end(&other, &so).await;
    assert_eq!((e.reason, e.data_count), (EndReason::ClientRequest, 2));
    let rec = stack.get_session(&ended).await.expect("record");
    assert_eq!(rec.data_count, 2, "refused data is not counted");
    // No pushed message arrived for the refusals on the other device's connection.
    let pending = o.take_pending();
    assert!(
        !pending
            .iter()
            .any(|m| matches!(m, ServerMessage::SessionEnded(_))),
        "{pending:?}"
    );
}
both_modes!(refused_data_is_not_forwarded);
