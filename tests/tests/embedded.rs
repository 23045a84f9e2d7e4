//! The embedded mode's own promises (README "One process", protocol.md section 10): what
//! `amr-bridge` without `AMR_NATS_URL` writes to `AMR_DATA_DIR`, and what survives a stop.
//! - `<dir>/<deviceId>/<sessionId>.ndjson`: each accepted message on one line, the client's
//!   bytes with every whitespace run that holds a line break removed, values unchanged;
//! - `<dir>/sessions.ndjson`: `{"event":"created",...}` / `{"event":"ended",...}`;
//! - files are flushed when a session ends and on SIGTERM/SIGINT; acked (`seq`) messages are
//!   written before their ack; after a restart, sessions of earlier runs are listed as ended,
//!   one left open ends `disconnected` with its dataCount counted from its file.
//!
//! The protocol itself is checked in both modes by the other suites (`both_modes!`).

use amr_proto::client::types;
use amr_proto::events::{SessionRecord, SessionState};
use amr_proto::server::ServerMessage;
use amr_proto::{now_ms, EndReason};
use amr_tests::client::WsClient;
use amr_tests::files::{self, one_line, tokens};
use amr_tests::{msg, unique_device, Mode, Stack};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// Generous bound for the bridge to drain, flush and exit after a signal.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

async fn embedded() -> Stack {
    Stack::start_mode(Mode::Embedded).await
}

/// The bytes of a session's file (empty when it does not exist).
fn file_bytes(stack: &Stack, device: &str, session: &str) -> Vec<u8> {
    let path = files::session_file(stack.data_dir(), device, session);
    match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}

/// A file made of `lines`, each ended by `\n`.
fn ndjson(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Index lines (`sessions.ndjson`) naming `session`, as (event, line).
fn index_lines_of(stack: &Stack, session: &str) -> Vec<(String, Value)> {
    files::read_index(stack.data_dir())
        .into_iter()
        .filter(|v| v["sessionId"] == session)
        .map(|v| (v["event"].as_str().unwrap_or("?").to_owned(), v))
        .collect()
}

/// One session's messages as the client sent them, and their sample count.
#[derive(Default, Debug)]
struct Sent {
    texts: Vec<String>,
    samples: u64,
}

impl Sent {
    async fn send(&mut self, c: &mut WsClient, text: String, samples: u64) {
        c.send_text(&text).await;
        self.texts.push(text);
        self.samples += samples;
    }

    /// The file the embedded mode must hold for these messages.
    fn expected_file(&self) -> String {
        let lines: Vec<String> = self.texts.iter().map(|t| one_line(t)).collect();
        ndjson(&lines)
    }
}

/// A pretty-printed (LF) sensor_data with number literals a re-serialiser would rewrite, escapes
/// and a trailing newline; and, written out by hand, its one-line form.
fn pretty_lf(dev: &str, sid: &str, ts: i64) -> (String, String) {
    let text = format!(
        "{{\n  \"type\": \"{t}\",\n  \"deviceId\": \"{dev}\",\n  \"sessionId\": \"{sid}\",\n  \"timestamp\": {ts},\n  \"data\": {{\n    \"temp\": 21.50,\n    \"big\": 123456789012345678901234567890,\n    \"exp\": 1E+3,\n    \"neg\": -0,\n    \"s\": \"a\\nb \\\"q\\\" \\u00e9 \u{e9}\",\n    \"arr\": [ 1 , 2,\n      3 ]\n  }}\n}}\n",
        t = types::SENSOR_DATA
    );
    let line = format!(
        "{{\"type\": \"{t}\",\"deviceId\": \"{dev}\",\"sessionId\": \"{sid}\",\"timestamp\": {ts},\"data\": {{\"temp\": 21.50,\"big\": 123456789012345678901234567890,\"exp\": 1E+3,\"neg\": -0,\"s\": \"a\\nb \\\"q\\\" \\u00e9 \u{e9}\",\"arr\": [ 1 , 2,3 ]}}}}",
        t = types::SENSOR_DATA
    );
    (text, line)
}

/// A pretty-printed (CRLF, tabs) sensor_batch of 2 samples with `seq`; and its one-line form.
fn pretty_crlf_batch(dev: &str, sid: &str, ts: i64, seq: u64) -> (String, String) {
    let text = format!(
        "{{\r\n\t\"type\": \"{t}\",\r\n\t\"deviceId\": \"{dev}\",\r\n\t\"sessionId\": \"{sid}\",\r\n\t\"seq\": {seq},\r\n\t\"samples\": [\r\n\t\t{{\"timestamp\": {ts}, \"data\": {{\"v\": 0.10}}}},\r\n\t\t{{\"timestamp\": {ts}, \"data\": {{\"v\": -1e-3}}}}\r\n\t]\r\n}}",
        t = types::SENSOR_BATCH
    );
    let line = format!(
        "{{\"type\": \"{t}\",\"deviceId\": \"{dev}\",\"sessionId\": \"{sid}\",\"seq\": {seq},\"samples\": [{{\"timestamp\": {ts}, \"data\": {{\"v\": 0.10}}}},{{\"timestamp\": {ts}, \"data\": {{\"v\": -1e-3}}}}]}}",
        t = types::SENSOR_BATCH
    );
    (text, line)
}

/// (a) Each session's file is `<dir>/<deviceId>/<sessionId>.ndjson` and holds exactly what was
/// sent, in order: one-line messages byte for byte (odd spacing, tabs, escapes, unicode, number
/// literals untouched); pretty-printed messages (LF, CRLF + tabs) on one line with their
/// line-break whitespace removed and every token unchanged. `sessions.ndjson` holds one
/// `created` and one `ended` line per session with the contract's fields.
#[tokio::test]
async fn files_hold_exactly_what_was_sent() {
    let stack = embedded().await;
    let (dev1, dev2) = (unique_device("FILE"), unique_device("FILE"));
    let mut c1 = stack.registered_client(0, &dev1).await;
    let mut c2 = stack.registered_client(0, &dev2).await;
    let s1 = c1.start(&dev1).await.session_id;
    let s2 = c2.start(&dev2).await.session_id;
    let (mut sent1, mut sent2) = (Sent::default(), Sent::default());
    let ts = now_ms();
    // Each pretty message and the one-line form written out by hand, to check below.
    let mut pretty: Vec<(String, String)> = Vec::new();

    for (c, dev, sid, sent) in [
        (&mut c1, &dev1, &s1, &mut sent1),
        (&mut c2, &dev2, &s2, &mut sent2),
    ] {
        let compact = msg::sensor_data(dev, Some(sid), None, msg::sample(1)).to_string();
        sent.send(c, compact, 1).await;
        let spaced = format!(
            "{{ \"type\" :\t\"{t}\" ,  \"deviceId\":\"{dev}\",\"sessionId\" : \"{sid}\", \"data\":{{ \"x\" :  1.50 , \"e\": 2.5E-7, \"s\":\"tab\\there \\\\ \\/ \\u00e9 \u{e9} \u{1f916}\" }} }}",
            t = types::SENSOR_DATA
        );
        sent.send(c, spaced, 1).await;
        let (text, line) = pretty_lf(dev, sid, ts);
        pretty.push((text.clone(), line));
        sent.send(c, text, 1).await;
        let (text, line) = pretty_crlf_batch(dev, sid, ts, 1);
        pretty.push((text.clone(), line));
        sent.send(c, text, 2).await;
        let last = msg::sensor_data(dev, Some(sid), Some(2), msg::sample(2)).to_string();
        sent.send(c, last, 1).await;
    }
    // Acked: seq 2 was written (and everything before it on the connection).
    c1.wait_ack(&s1, 2).await;
    c2.wait_ack(&s2, 2).await;
    let e1 = c1.end(&dev1, &s1).await;
    let e2 = c2.end(&dev2, &s2).await;
    assert_eq!((e1.data_count, e2.data_count), (6, 6));

    // The harness's one-line rule agrees with the hand-written forms.
    for (text, line) in &pretty {
        assert_eq!(&one_line(text), line);
    }
    for (dev, sid, sent) in [(&dev1, &s1, &sent1), (&dev2, &s2, &sent2)] {
        let bytes = file_bytes(&stack, dev, sid);
        let content = String::from_utf8(bytes).expect("the file is UTF-8");
        assert_eq!(
            content,
            sent.expected_file(),
            "{}",
            files::session_file(stack.data_dir(), dev, sid).display()
        );
        // One-line messages byte for byte.
        let lines: Vec<&str> = content.lines().collect();
        assert_eq!(lines.len(), sent.texts.len());
        for (i, (line, text)) in lines.iter().zip(&sent.texts).enumerate() {
            if !text.contains(['\n', '\r']) {
                assert_eq!(
                    line,
                    text,
                    "{sid} line {}: one-line message verbatim",
                    i + 1
                );
                continue;
            }
            // Pretty ones: on one line, every token unchanged, the same JSON value.
            assert!(!line.contains(['\n', '\r']), "{sid} line {}", i + 1);
            assert_eq!(tokens(line), tokens(text), "{sid} line {}", i + 1);
            let (stored, original): (Value, Value) = (
                serde_json::from_str(line).expect("stored line is JSON"),
                serde_json::from_str(text).expect("sent text is JSON"),
            );
            assert_eq!(stored, original, "{sid} line {}", i + 1);
        }
        let expected_lines: Vec<&String> = pretty
            .iter()
            .filter(|(t, _)| t.contains(sid.as_str()))
            .map(|(_, l)| l)
            .collect();
        assert_eq!(expected_lines.len(), 2);
        assert_eq!(lines[2], expected_lines[0]);
        assert_eq!(lines[3], expected_lines[1]);
        // Nothing else in the device's directory.
        let names: Vec<String> = std::fs::read_dir(stack.data_dir().join(dev))
            .expect("device directory")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, vec![format!("{sid}.ndjson")]);
    }

    // The index: one created and one ended line per session, the contract's fields.
    for (sid, ended) in [(&s1, &e1), (&s2, &e2)] {
        let lines = index_lines_of(&stack, sid);
        let kinds: Vec<&str> = lines.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds, vec!["created", "ended"], "{lines:?}");
        let (created, end) = (&lines[0].1, &lines[1].1);
        assert_eq!(
            keys(created),
            set(&["event", "sessionId", "deviceId", "startedAt"]),
            "{created}"
        );
        assert_eq!(
            keys(end),
            set(&[
                "event",
                "sessionId",
                "deviceId",
                "startedAt",
                "endedAt",
                "reason",
                "dataCount"
            ]),
            "{end}"
        );
        assert_eq!(created["deviceId"], ended.device_id.as_str());
        assert_eq!(created["startedAt"], ended.started_at);
        assert_eq!(end["endedAt"], ended.ended_at);
        assert_eq!(end["reason"], "client_request");
        assert_eq!(end["dataCount"], ended.data_count);
    }
}

/// One device's session left open when the bridge stops.
struct Open {
    device: String,
    session: String,
    sent: Sent,
}

/// Reads until the server closes the connection of a draining bridge: close 1012.
async fn expect_drain_close(c: &mut WsClient) {
    let (close, errors) = c.expect_close().await;
    assert!(errors.is_empty(), "{errors:?}");
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), 1012, "{close:?}");
}

/// The session records of `open` after a restart: ended `disconnected`, dataCount exact.
async fn check_recovered(stack: &Stack, open: &Open) -> SessionRecord {
    let rec = stack
        .get_session(&open.session)
        .await
        .unwrap_or_else(|| panic!("{} is not listed after the restart", open.session));
    assert_eq!(rec.device_id, open.device);
    assert_eq!(rec.state, SessionState::Ended, "{rec:?}");
    assert_eq!(rec.reason, Some(EndReason::Disconnected), "{rec:?}");
    assert_eq!(
        rec.data_count, open.sent.samples,
        "dataCount of {} counted from its file",
        open.session
    );
    assert!(rec.ended_at.is_some_and(|e| e >= rec.started_at), "{rec:?}");
    rec
}

/// (b) SIGTERM mid-session: every message sent before it (acked ones with `seq`, and the others
/// the bridge had read) is on disk and the process exits; restarted on the same data dir, the
/// sessions left open are listed as ended `disconnected` with the exact dataCount, and an ended
/// one keeps its figures. Then the same with SIGINT across a second restart: nothing changes
/// for the older sessions, and each session has exactly one `ended` line in the index.
#[tokio::test]
async fn sigterm_keeps_every_message_and_a_restart_lists_open_sessions_as_disconnected() {
    let mut stack = embedded().await;
    let (dev_a, dev_b, dev_c) = (
        unique_device("STOP"),
        unique_device("STOP"),
        unique_device("OLD"),
    );

    // A: one session ended normally, then one left open with acked seq data, a batch and a
    // pretty-printed message.
    let mut a = stack.registered_client(0, &dev_a).await;
    let done = a.start(&dev_a).await.session_id;
    a.send_data(&dev_a, &done, 2).await;
    let done_end = a.end(&dev_a, &done).await;
    assert_eq!(done_end.data_count, 2);
    let sa = a.start(&dev_a).await.session_id;
    let mut open_a = Open {
        device: dev_a.clone(),
        session: sa.clone(),
        sent: Sent::default(),
    };
    for seq in 1..=20u64 {
        let t = msg::sensor_data(&dev_a, Some(&sa), Some(seq), msg::sample(seq)).to_string();
        open_a.sent.send(&mut a, t, 1).await;
    }
    let (batch, _) = pretty_crlf_batch(&dev_a, &sa, now_ms(), 21);
    open_a.sent.send(&mut a, batch, 2).await;
    let t = msg::sensor_batch(&dev_a, Some(&sa), Some(22), 5).to_string();
    open_a.sent.send(&mut a, t, 5).await;
    a.wait_ack(&sa, 22).await;

    // B: data without seq; the pong after it says the bridge has read (accepted) all of it.
    let mut b = stack.registered_client(0, &dev_b).await;
    let sb = b.start(&dev_b).await.session_id;
    let mut open_b = Open {
        device: dev_b.clone(),
        session: sb.clone(),
        sent: Sent::default(),
    };
    for i in 0..15u64 {
        let t = msg::sensor_data(&dev_b, Some(&sb), None, msg::sample(i)).to_string();
        open_b.sent.send(&mut b, t, 1).await;
    }
    let (pretty, _) = pretty_lf(&dev_b, &sb, now_ms());
    open_b.sent.send(&mut b, pretty, 1).await;
    let t = msg::sensor_batch(&dev_b, Some(&sb), None, 3).to_string();
    open_b.sent.send(&mut b, t, 3).await;
    b.sync().await;

    // C: a legacy client whose provisional session took data.
    let mut c = stack.client(0).await;
    let sc = c
        .register_legacy(&dev_c)
        .await
        .session_id
        .expect("provisional id");
    let mut open_c = Open {
        device: dev_c.clone(),
        session: sc.clone(),
        sent: Sent::default(),
    };
    for i in 0..4u64 {
        let t = msg::sensor_data(&dev_c, None, None, msg::sample(i)).to_string();
        open_c.sent.send(&mut c, t, 1).await;
    }
    c.sync().await;
    stack
        .wait_session(&sc, "active", |r| r.state == SessionState::Active)
        .await;

    stack.term_bridge();
    for client in [&mut a, &mut b, &mut c] {
        expect_drain_close(client).await;
    }
    let status = stack
        .wait_bridge_exit(EXIT_TIMEOUT)
        .expect("the bridge exits after SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");

    // On disk, with the process gone: everything sent before the signal.
    for open in [&open_a, &open_b, &open_c] {
        let content =
            String::from_utf8(file_bytes(&stack, &open.device, &open.session)).expect("UTF-8 file");
        assert_eq!(
            content,
            open.sent.expected_file(),
            "file of {} after SIGTERM",
            open.session
        );
    }

    stack.restart_bridge().await;
    let mut recovered = HashMap::new();
    for open in [&open_a, &open_b, &open_c] {
        let rec = check_recovered(&stack, open).await;
        recovered.insert(open.session.clone(), rec);
    }
    let rec = stack.get_session(&done).await.expect("the ended session");
    assert_eq!(
        (rec.state, rec.reason, rec.data_count, rec.ended_at),
        (
            SessionState::Ended,
            Some(EndReason::ClientRequest),
            2,
            Some(done_end.ended_at)
        ),
        "a session that had ended keeps its figures"
    );
    let listed = stack.list_sessions(&dev_a, None).await;
    let ids: Vec<&str> = listed.iter().map(|r| r.session_id.as_str()).collect();
    assert_eq!(ids, vec![sa.as_str(), done.as_str()], "newest first");
    for dev in [&dev_a, &dev_b, &dev_c] {
        assert!(
            stack
                .list_sessions(dev, Some(SessionState::Active))
                .await
                .is_empty(),
            "nothing of {dev} is active after the restart"
        );
    }

    // Second run: a new session of A left open, then SIGINT.
    let mut a = stack.registered_client(0, &dev_a).await;
    let sa2 = a.start(&dev_a).await;
    assert_eq!(sa2.replaced_session_id, None, "nothing was active");
    let sa2 = sa2.session_id;
    assert!(!recovered.contains_key(&sa2) && sa2 != done, "a new id");
    let mut open_a2 = Open {
        device: dev_a.clone(),
        session: sa2.clone(),
        sent: Sent::default(),
    };
    for seq in 1..=3u64 {
        let t = msg::sensor_data(&dev_a, Some(&sa2), Some(seq), msg::sample(seq)).to_string();
        open_a2.sent.send(&mut a, t, 1).await;
    }
    a.wait_ack(&sa2, 3).await;
    stack.signal_bridge(libc::SIGINT);
    expect_drain_close(&mut a).await;
    let status = stack
        .wait_bridge_exit(EXIT_TIMEOUT)
        .expect("the bridge exits after SIGINT");
    assert!(status.success(), "exit status after SIGINT: {status}");
    stack.restart_bridge().await;

    check_recovered(&stack, &open_a2).await;
    for open in [&open_a, &open_b, &open_c] {
        let rec = check_recovered(&stack, open).await;
        assert_eq!(
            &rec, &recovered[&open.session],
            "a second restart changes nothing"
        );
    }
    assert_eq!(stack.list_sessions(&dev_a, None).await.len(), 3);
    for sid in [&done, &sa, &sb, &sc, &sa2] {
        let lines = index_lines_of(&stack, sid);
        let count = |k: &str| lines.iter().filter(|(e, _)| e == k).count();
        assert_eq!(
            (count("created"), count("ended")),
            (1, 1),
            "{sid}: {lines:?}"
        );
    }
    // The restarted bridge works: a new session of B takes data and ends.
    let mut b = stack.registered_client(0, &dev_b).await;
    let s = b.start(&dev_b).await.session_id;
    b.send_data_acked(&dev_b, &s, 1, 2).await;
    let e = b.end(&dev_b, &s).await;
    assert_eq!((e.reason, e.data_count), (EndReason::ClientRequest, 2));
}

/// Sends `n` sensor_data messages without seq (1 sample each) as fast as the socket takes them.
async fn burst(c: &mut WsClient, dev: &str, sid: &str, n: u64) {
    for i in 0..n {
        c.send_json(&msg::sensor_data(dev, Some(sid), None, msg::sample(i)))
            .await;
    }
}

/// Lines in a session's file, read at once (no waiting).
fn lines_now(stack: &Stack, dev: &str, sid: &str) -> u64 {
    files::session_count(stack.data_dir(), dev, sid)
}

/// (c) Ending a session flushes its file: right after `session_ended` arrives (client request,
/// replaced from another connection, idle timeout), and as soon as the `ended` line is in the
/// index (disconnect), the file holds dataCount lines (one sample per message), without waiting.
#[tokio::test]
async fn ending_a_session_flushes_its_file() {
    const N: u64 = 400;
    let stack = Stack::builder()
        .mode(Mode::Embedded)
        .env("AMR_SESSION_IDLE_TIMEOUT", "3s")
        .start()
        .await;
    let events = stack.events().await;
    let dev = unique_device("FLUSH");
    let mut c = stack.registered_client(0, &dev).await;

    // client_request, a few times.
    for round in 0..3 {
        let sid = c.start(&dev).await.session_id;
        burst(&mut c, &dev, &sid, N).await;
        let e = c.end(&dev, &sid).await;
        let lines = lines_now(&stack, &dev, &sid);
        assert_eq!(e.data_count, N, "round {round}");
        assert_eq!(
            lines, e.data_count,
            "round {round}: {sid} right after session_ended(client_request)"
        );
    }

    // replaced: the old connection is told; its file is complete by then.
    let sid = c.start(&dev).await.session_id;
    burst(&mut c, &dev, &sid, N).await;
    c.sync().await; // everything sent was read before the other connection's start
    let mut other = stack.registered_client(0, &dev).await;
    let next = other.start(&dev).await.session_id;
    let m = c
        .recv_where(
            "session_ended(replaced)",
            |m| matches!(m, ServerMessage::SessionEnded(e) if e.session_id == sid),
        )
        .await;
    let lines = lines_now(&stack, &dev, &sid);
    let ServerMessage::SessionEnded(e) = m else {
        unreachable!()
    };
    assert_eq!((e.reason, e.data_count), (EndReason::Replaced, N));
    assert_eq!(lines, N, "{sid} right after session_ended(replaced)");

    // idle_timeout: the data stops, the end is pushed.
    burst(&mut other, &dev, &next, N).await;
    let e = other.recv_ended().await;
    let lines = lines_now(&stack, &dev, &next);
    assert_eq!(e.session_id, next);
    assert_eq!((e.reason, e.data_count), (EndReason::IdleTimeout, N));
    assert_eq!(lines, N, "{next} right after session_ended(idle_timeout)");

    // disconnected: no session_ended to wait for; the index's ended line comes after the flush.
    let sid = other.start(&dev).await.session_id;
    burst(&mut other, &dev, &sid, N).await;
    other.abort();
    let ev = events.wait_ended(&sid).await;
    let lines = lines_now(&stack, &dev, &sid);
    assert_eq!((ev.reason, ev.data_count), (EndReason::Disconnected, N));
    assert_eq!(lines, N, "{sid} when its ended line is in the index");
    c.ping().await;
}
