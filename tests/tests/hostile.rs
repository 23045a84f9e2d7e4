//! Hostile clients: while one well-behaved client streams seq'd data into its session, bad
//! clients replay a corpus of malformed, oversized, injected, impersonating and flooding
//! inputs. Each bad input gets the contract's error code (and close code where the contract
//! closes); the good client's data ends up complete (every message acked, the exact count
//! stored), with no error and no restart of the service. JWT flows (docs/protocol.md,
//! Authentication) and the upgrade-time limits (connections per gateway / per IP, Origin,
//! handshake timeout) are checked end to end too.

use amr_proto::client::types;
use amr_proto::server::ServerMessage;
use amr_proto::ErrorCode;
use amr_tests::checks::assert_error;
use amr_tests::client::ConnectError;
use amr_tests::{both_modes, msg, unique_device, wait, Mode, Stack, WsClient, WAIT_TIMEOUT};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "hostile-suite-secret";
/// Limits of the hostile stacks: well above the good client's pace, far below a flood's.
const RATE: &str = "2000";
const BURST: &str = "2000";

fn fixtures() -> PathBuf {
    amr_tests::binaries::workspace_root().join("gateway/tests/fixtures")
}

fn now_s() -> i64 {
    amr_proto::now_ms() / 1000
}

fn hs_token(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode")
}

fn valid_token(device: &str) -> String {
    hs_token(&json!({"sub": device, "exp": now_s() + 600}))
}

fn signed_with(alg: Algorithm, key_file: &str, kid: &str, claims: &Value) -> String {
    let pem = std::fs::read(fixtures().join("jwt-private").join(key_file)).expect("fixture");
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .expect("private key");
    let mut h = Header::new(alg);
    h.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&h, claims, &key).expect("encode")
}

/// The well-behaved device: registers, starts a session and streams seq'd data in batches,
/// each batch acked before the next, until told to stop. Returns its session, the last seq
/// and everything the server sent it besides acks (must be empty).
struct Streamer {
    device: String,
    session: String,
    stop: Arc<AtomicBool>,
    task: JoinHandle<(u64, Vec<ServerMessage>)>,
}

impl Streamer {
    /// `with_token`: registers with a valid token for its own device (jwt stacks).
    async fn start(stack: &Stack, with_token: bool) -> Streamer {
        let device = unique_device("GOOD");
        let mut c = stack.client(0).await;
        let mut reg = msg::register(&device, Some(msg::CLIENT_VERSION));
        if with_token {
            reg["token"] = json!(valid_token(&device));
        }
        c.send_json(&reg).await;
        c.recv_registered().await;
        let session = c.start(&device).await.session_id;
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (device, session, stop) = (device.clone(), session.clone(), stop.clone());
            async move {
                let mut seq = 0;
                // Paced well under the rate limit: a well-behaved device.
                let mut pace = tokio::time::interval(Duration::from_millis(20));
                while !stop.load(Ordering::Relaxed) {
                    pace.tick().await;
                    c.send_data_acked(&device, &session, seq + 1, 10).await;
                    seq += 10;
                }
                c.sync().await;
                let others: Vec<ServerMessage> = c
                    .take_pending()
                    .into_iter()
                    .filter(|m| !matches!(m, ServerMessage::Ack(_)))
                    .collect();
                c.close().await;
                (seq, others)
            }
        });
        Streamer {
            device,
            session,
            stop,
            task,
        }
    }

    /// Stops streaming and checks the session's data is complete: every message acked (the
    /// client waited for each batch's ack), nothing else received, the exact count stored.
    async fn finish(self, stack: &Stack) {
        self.stop.store(true, Ordering::Relaxed);
        let (sent, others) = self.task.await.expect("the good client panicked");
        assert!(sent > 0, "the good client sent nothing");
        assert!(
            others.is_empty(),
            "the good client got messages besides acks: {others:?}"
        );
        let stored = stack
            .wait_stored_count(&self.device, &self.session, sent)
            .await;
        assert_eq!(stored, sent, "the good client's session is incomplete");
        let rec = stack
            .get_session(&self.session)
            .await
            .expect("the good session's record");
        assert_eq!(rec.device_id, self.device);
    }
}

fn hostile_stack(mode: Mode) -> amr_tests::StackBuilder {
    Stack::builder()
        .mode(mode)
        .gateway_env("AMR_CONN_RATE_LIMIT", RATE)
        .gateway_env("AMR_CONN_RATE_BURST", BURST)
        .gateway_env("AMR_RATE_LIMIT_CLOSE_AFTER", "2s")
        .gateway_env("AMR_MAX_FRAME_BYTES", "16384")
        .gateway_env("AMR_HANDSHAKE_TIMEOUT", "1s")
        .gateway_env("AMR_ALLOWED_ORIGINS", "https://ops.example.com")
}

/// Sends `text` and expects one error with `code` (and `ref` when given); the connection stays
/// open (a ping still gets its pong).
async fn expect_error(c: &mut WsClient, text: &str, code: ErrorCode, ref_type: Option<&str>) {
    c.send_text(text).await;
    let e = c.recv_error().await;
    assert_error(&e, code, ref_type);
    c.ping().await;
}

/// Reads until the server closes; asserts the close code and that an error with `code` came
/// first.
async fn expect_closed_with(c: &mut WsClient, code: ErrorCode, close: CloseCode) {
    let (frame, errors) = c.expect_close().await;
    assert!(
        errors.iter().any(|e| e.error_code == code),
        "expected {code} before the close, got {errors:?}"
    );
    let frame = frame.expect("a close frame");
    assert_eq!(frame.code, close, "close code");
}

async fn malformed_and_injected(stack: &Stack, good_device: &str, good_session: &str) {
    let mut c = stack.client(0).await;
    // Malformed JSON, not objects, wrong types, huge numbers, deep nesting.
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let invalid = [
        "".to_owned(),
        "{".to_owned(),
        "}{".to_owned(),
        "null".to_owned(),
        "[{\"type\":\"ping\"}]".to_owned(),
        "{\"type\":\"ping\"}{\"type\":\"ping\"}".to_owned(),
        "{\"type\":[\"ping\"]}".to_owned(),
        "{\"type\":\"ping\",\"timestamp\":1e400}".to_owned(),
        "{\"type\":\"ping\",\"timestamp\":123456789012345678901234567890}".to_owned(),
        "{\"type\":\"ping\",\"timestamp\":-1.5}".to_owned(),
        "{\"type\":\"ping\",\"timestamp\":\"now\"}".to_owned(),
        "{\"type\":\"ping\",\"type\":\"ping\"}".to_owned(),
        "\u{feff}{\"type\":\"ping\"}".to_owned(),
    ];
    for text in &invalid {
        expect_error(&mut c, text, ErrorCode::InvalidMessage, None).await;
    }
    // Deep nesting is skipped without recursion (the gateway never builds a tree of a
    // payload; the frame size bounds it): a valid envelope is answered normally.
    c.send_text(&format!("{{\"type\":\"ping\",\"x\":{deep}}}"))
        .await;
    c.recv_pong().await;
    let deep_data =
        format!("{{\"type\":\"sensor_data\",\"deviceId\":\"A\",\"data\":{{\"n\":{deep}}}}}");
    expect_error(
        &mut c,
        &deep_data,
        ErrorCode::NotRegistered,
        Some(types::SENSOR_DATA),
    )
    .await;
    let wrong = [
        (
            json!({"type": "device_register", "deviceId": 1}),
            types::DEVICE_REGISTER,
        ),
        (
            json!({"type": "device_register", "deviceId": null}),
            types::DEVICE_REGISTER,
        ),
        (
            json!({"type": "device_register", "deviceId": "A", "token": 5}),
            types::DEVICE_REGISTER,
        ),
        (
            json!({"type": "sensor_data", "deviceId": "A", "data": [1]}),
            types::SENSOR_DATA,
        ),
        (
            json!({"type": "sensor_data", "deviceId": "A", "data": {}, "seq": 0}),
            types::SENSOR_DATA,
        ),
        (
            json!({"type": "sensor_data", "deviceId": "A", "data": {}, "seq": -1}),
            types::SENSOR_DATA,
        ),
        (
            json!({"type": "sensor_data", "deviceId": "A", "data": {}, "seq": 1e30}),
            types::SENSOR_DATA,
        ),
        (
            json!({"type": "sensor_batch", "deviceId": "A", "samples": []}),
            types::SENSOR_BATCH,
        ),
        (
            json!({"type": "session_start", "deviceId": "A", "requestId": "a b"}),
            types::SESSION_START,
        ),
    ];
    for (v, r) in &wrong {
        expect_error(&mut c, &v.to_string(), ErrorCode::InvalidMessage, Some(r)).await;
    }
    expect_error(
        &mut c,
        "{\"type\":\"ping\\u0000\"}",
        ErrorCode::UnknownType,
        None,
    )
    .await;
    expect_error(&mut c, "{\"type\":\"x\"}", ErrorCode::UnknownType, None).await;
    // Binary frames.
    c.send_binary(vec![0xff, 0x00, 0x7b]).await;
    assert_error(&c.recv_error().await, ErrorCode::InvalidMessage, None);
    c.send_binary(b"{\"type\":\"ping\"}".to_vec()).await;
    assert_error(&c.recv_error().await, ErrorCode::InvalidMessage, None);
    // A valid message in fragments is one message.
    c.send_fragmented_text(&msg::ping().to_string(), 5).await;
    c.recv_pong().await;
    // Subject/key injection through deviceId: never registered, never forwarded.
    let big = "x".repeat(10 * 1024);
    let ids = [
        "a.b",
        "*",
        ">",
        "a>",
        "a b",
        " ",
        "",
        "ü",
        "AMR\u{0}",
        "a\nb",
        "amr.sensor.>",
        &big,
        "😀",
    ];
    for id in ids {
        for v in [
            msg::register(id, Some(msg::CLIENT_VERSION)),
            msg::session_start(id),
            msg::sensor_data(id, Some(good_session), Some(1), msg::sample(1)),
            msg::session_end(id, Some(good_session)),
        ] {
            let r = v["type"].as_str().map(str::to_owned);
            expect_error(
                &mut c,
                &v.to_string(),
                ErrorCode::InvalidDeviceId,
                r.as_deref(),
            )
            .await;
        }
    }
    // Before registering: NOT_REGISTERED, even naming the good device.
    for v in [
        msg::session_start(good_device),
        msg::session_end(good_device, Some(good_session)),
        msg::sensor_data(good_device, Some(good_session), Some(1), msg::sample(1)),
    ] {
        let r = v["type"].as_str().map(str::to_owned);
        expect_error(
            &mut c,
            &v.to_string(),
            ErrorCode::NotRegistered,
            r.as_deref(),
        )
        .await;
    }
    // Registered as another device: the good device's session can be neither ended nor
    // written into, and the good deviceId is refused on this connection.
    let evil = unique_device("EVIL");
    c.register(&evil, msg::CLIENT_VERSION).await;
    for v in [
        msg::session_start(good_device),
        msg::session_end(good_device, Some(good_session)),
        msg::sensor_data(good_device, Some(good_session), Some(1), msg::sample(1)),
        msg::register(good_device, Some(msg::CLIENT_VERSION)),
    ] {
        let r = v["type"].as_str().map(str::to_owned);
        expect_error(
            &mut c,
            &v.to_string(),
            ErrorCode::DeviceMismatch,
            r.as_deref(),
        )
        .await;
    }
    let end_other = msg::session_end(&evil, Some(good_session)).to_string();
    expect_error(
        &mut c,
        &end_other,
        ErrorCode::SessionNotFound,
        Some(types::SESSION_END),
    )
    .await;
    // Refusals of the same (code, session) within a second are coalesced: every id differs.
    for session in [good_session, "session_*", "a.b.>", "session_0000", &big] {
        let v = msg::sensor_data(&evil, Some(session), Some(1), msg::sample(1));
        c.send_json(&v).await;
        let e = c.recv_error().await;
        assert_error(&e, ErrorCode::SessionNotActive, Some(types::SENSOR_DATA));
        assert_eq!(e.session_id.as_deref(), Some(session));
        c.ping().await;
    }
    for session in ["session_batch", "b.>"] {
        let batch = msg::sensor_batch(&evil, Some(session), None, 3);
        c.send_json(&batch).await;
        let e = c.recv_error().await;
        assert_error(&e, ErrorCode::SessionNotActive, Some(types::SENSOR_BATCH));
        c.ping().await;
    }
    for session in ["session_*", "a.b.>", &big] {
        let v = msg::session_end(&evil, Some(session)).to_string();
        expect_error(
            &mut c,
            &v,
            ErrorCode::SessionNotFound,
            Some(types::SESSION_END),
        )
        .await;
    }
    // Its own session still works: the connection is not poisoned by what came before.
    let own = c.start(&evil).await.session_id;
    c.send_data_acked(&evil, &own, 1, 3).await;
    c.end(&evil, &own).await;
    c.close().await;
}

async fn oversized(stack: &Stack) {
    // One frame over the limit (16 KiB here).
    let mut c = stack.client(0).await;
    let huge = msg::sensor_data("A", None, None, json!({"blob": "x".repeat(20_000)}));
    c.send_json(&huge).await;
    expect_closed_with(&mut c, ErrorCode::MessageTooLarge, CloseCode::Size).await;
    // Many small fragments adding up to more than the limit.
    let mut c = stack.client(0).await;
    c.send_fragmented_text(&huge.to_string(), 40).await;
    expect_closed_with(&mut c, ErrorCode::MessageTooLarge, CloseCode::Size).await;
}

/// A client flooding as fast as it can: refused messages are answered by coalesced
/// RATE_LIMITED errors (never one per message), and sustained abuse ends with close 1008.
async fn flood(stack: &Stack) {
    let c = stack.client(0).await;
    let ws = c.into_inner().expect("open");
    let (mut tx, mut rx) = ws.split();
    let done = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn({
        let done = done.clone();
        async move {
            let ping = msg::ping().to_string();
            let mut sent = 0u64;
            while !done.load(Ordering::Relaxed) {
                if tx.send(Message::text(ping.clone())).await.is_err() {
                    break;
                }
                sent += 1;
            }
            sent
        }
    });
    let (mut pongs, mut limited_errors, mut limited_msgs) = (0u64, 0u64, 0u64);
    let close = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(m) = rx.next().await {
            match m {
                Ok(Message::Text(t)) => match serde_json::from_str::<ServerMessage>(t.as_str()) {
                    Ok(ServerMessage::Pong(_)) => pongs += 1,
                    Ok(ServerMessage::Error(e)) => {
                        assert_eq!(e.error_code, ErrorCode::RateLimited, "{e:?}");
                        limited_errors += 1;
                        limited_msgs += 1 + e.count.unwrap_or(0);
                    }
                    other => panic!("unexpected {other:?}"),
                },
                Ok(Message::Close(f)) => return f,
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("a sustained flood is closed");
    done.store(true, Ordering::Relaxed);
    let sent = sender.await.expect("sender");
    let frame = close.expect("closed with a close frame");
    assert_eq!(frame.code, CloseCode::Policy);
    assert!(limited_errors > 0, "no RATE_LIMITED");
    assert!(pongs > 0, "nothing got through before the limit");
    // Coalesced: far fewer errors than refused messages.
    assert!(
        limited_errors * 20 < limited_msgs,
        "{limited_errors} errors for {limited_msgs} refused messages ({sent} sent)"
    );
}

/// Slow handshakes and idle connections: a TCP connection that never upgrades is dropped;
/// many idle WebSocket connections cost the others nothing.
async fn slow_and_idle(stack: &Stack) {
    let addr = stack.ws_url(0).replace("ws://", "").replace("/ws", "");
    let mut silent = tokio::net::TcpStream::connect(&addr).await.expect("tcp");
    let mut partial = tokio::net::TcpStream::connect(&addr).await.expect("tcp");
    partial
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    for s in [&mut silent, &mut partial] {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT_TIMEOUT, s.read(&mut buf))
            .await
            .expect("the gateway drops a connection that never upgrades")
            .unwrap_or(0);
        assert_eq!(n, 0, "dropped without a response");
    }
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(stack.client(0).await);
    }
    for c in idle.iter_mut().step_by(10) {
        c.ping().await;
    }
    for c in idle {
        c.abort();
    }
}

async fn origins(stack: &Stack) {
    let url = stack.ws_url(0);
    let refused = WsClient::try_connect_with(&url, &[("Origin", "https://evil.example")], None)
        .await
        .err()
        .expect("a foreign Origin is refused");
    assert_eq!(refused.status, Some(403), "{refused:?}");
    let mut ok = WsClient::try_connect_with(&url, &[("Origin", "https://ops.example.com")], None)
        .await
        .expect("an allowed Origin");
    ok.ping().await;
}

async fn hostile_corpus_while_good_client_streams(mode: Mode) {
    let stack = hostile_stack(mode).start().await;
    let good = Streamer::start(&stack, false).await;
    malformed_and_injected(&stack, &good.device, &good.session).await;
    oversized(&stack).await;
    origins(&stack).await;
    slow_and_idle(&stack).await;
    flood(&stack).await;
    good.finish(&stack).await;
    // Still serving: a new client works end to end.
    let dev = unique_device("AFTER");
    let mut c = stack.registered_client(0, &dev).await;
    let s = c.start(&dev).await.session_id;
    c.send_data_acked(&dev, &s, 1, 5).await;
    assert_eq!(c.end(&dev, &s).await.data_count, 5);
}
both_modes!(hostile_corpus_while_good_client_streams, multi_thread);

fn jwt_stack(mode: Mode) -> amr_tests::StackBuilder {
    let keys = fixtures().join("jwt-public");
    hostile_stack(mode)
        .gateway_env("AMR_AUTH_MODE", "jwt")
        .gateway_env("AMR_JWT_HS256_SECRET", SECRET)
        .gateway_env(
            "AMR_JWT_PUBLIC_KEYS_DIR",
            keys.to_str().expect("utf-8 path"),
        )
}

async fn expect_unauthorized(c: &mut WsClient, register: &Value) {
    c.send_json(register).await;
    expect_closed_with(c, ErrorCode::Unauthorized, CloseCode::Policy).await;
}

/// Tokens in device_register, in `Authorization: Bearer`, in `?token=`, RS256/ES256 with kid;
/// missing, expired, forged and other-device tokens get UNAUTHORIZED and close 1008, while the
/// good device (authenticated with its own token) streams undisturbed.
async fn jwt_flows(mode: Mode) {
    let stack = jwt_stack(mode).start().await;
    let good = Streamer::start(&stack, true).await;
    let url = stack.ws_url(0);
    let dev = unique_device("JWT");
    let reg = |token: Option<&str>| {
        let mut r = msg::register(&dev, Some(msg::CLIENT_VERSION));
        if let Some(t) = token {
            r["token"] = json!(t);
        }
        r
    };
    // Accepted: token in the message, in the header, in the query; RS256 and ES256 by kid.
    let claims = json!({"sub": dev, "exp": now_s() + 600});
    let tokens = [
        valid_token(&dev),
        signed_with(Algorithm::RS256, "rsa-a.key", "rsa-a", &claims),
        signed_with(Algorithm::RS256, "rsa-b.key", "rsa-b", &claims),
        signed_with(Algorithm::ES256, "ec-a.key", "ec-a", &claims),
    ];
    for t in &tokens {
        let mut c = stack.client(0).await;
        c.send_json(&reg(Some(t))).await;
        c.recv_registered().await;
        c.close().await;
    }
    let bearer = format!("Bearer {}", tokens[0]);
    let mut c = WsClient::try_connect_with(&url, &[("Authorization", &bearer)], None)
        .await
        .expect("connect");
    c.register(&dev, msg::CLIENT_VERSION).await;
    let s = c.start(&dev).await.session_id;
    c.send_data_acked(&dev, &s, 1, 3).await;
    c.end(&dev, &s).await;
    c.close().await;
    let mut c = WsClient::connect(&format!("{url}?token={}", tokens[3])).await;
    c.register(&dev, msg::CLIENT_VERSION).await;
    c.close().await;

    // Refused: missing, expired, other device, wrong key, wrong kid, alg none, garbage.
    let expired = hs_token(&json!({"sub": dev, "exp": now_s() - 3600}));
    let other = valid_token(&good.device);
    let wrong_key = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(b"not-the-secret"),
    )
    .expect("encode");
    let wrong_kid = signed_with(Algorithm::RS256, "rsa-a.key", "rsa-b", &claims);
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4IiwiZXhwIjo5OTk5OTk5OTk5fQ.";
    let junk = "x".repeat(9000);
    for t in [
        None,
        Some(expired.as_str()),
        Some(&other),
        Some(&wrong_key),
        Some(&wrong_kid),
        Some(none),
        Some(junk.as_str()),
    ] {
        let mut c = stack.client(0).await;
        expect_unauthorized(&mut c, &reg(t)).await;
    }
    // A token presented at the upgrade for another device: refused at device_register.
    let mut c =
        WsClient::try_connect_with(&url, &[("Authorization", &format!("Bearer {other}"))], None)
            .await
            .expect("connect");
    expect_unauthorized(&mut c, &reg(None)).await;
    let mut c = WsClient::connect(&format!("{url}?token={expired}")).await;
    expect_unauthorized(&mut c, &reg(None)).await;
    // Impersonation of the good device without its token.
    let mut c = stack.client(0).await;
    let imp = msg::register(&good.device, Some(msg::CLIENT_VERSION));
    expect_unauthorized(&mut c, &imp).await;
    let mut c = WsClient::try_connect_with(&url, &[("Authorization", &bearer)], None)
        .await
        .expect("connect");
    expect_unauthorized(&mut c, &imp).await;
    // Before any register: NOT_REGISTERED, the connection stays open until the register.
    let mut c = stack.client(0).await;
    let start = msg::session_start(&dev).to_string();
    expect_error(
        &mut c,
        &start,
        ErrorCode::NotRegistered,
        Some(types::SESSION_START),
    )
    .await;
    expect_unauthorized(&mut c, &reg(None)).await;

    good.finish(&stack).await;
}

both_modes!(jwt_flows, multi_thread);

/// Over-limit connections are refused at the upgrade with an HTTP status: 429 over the per-IP
/// limit, 503 over the gateway's; a freed slot is usable again.
async fn connection_limits() {
    let stack = Stack::builder()
        .gateway_env("AMR_MAX_CONNS_PER_IP", "2")
        .gateway_env("AMR_MAX_CONNECTIONS", "4")
        .start()
        .await;
    let url = stack.ws_url(0);
    let ip = |n: u8| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)));
    let connect = |from| {
        let url = url.clone();
        async move { WsClient::try_connect_with(&url, &[], from).await }
    };
    let status = |r: Result<WsClient, ConnectError>| r.err().and_then(|e| e.status);
    let mut a1 = connect(ip(1)).await.expect("first from .1");
    let _a2 = connect(ip(1)).await.expect("second from .1");
    assert_eq!(status(connect(ip(1)).await), Some(429));
    let _b1 = connect(ip(2)).await.expect("first from .2");
    let _b2 = connect(ip(2)).await.expect("second from .2");
    assert_eq!(status(connect(ip(3)).await), Some(503));
    a1.ping().await;
    a1.close().await;
    // The slot is released when the connection's task ends.
    let mut c = wait::wait_for("a freed slot", WAIT_TIMEOUT, || {
        let connect = connect(ip(3));
        async move { connect.await.ok() }
    })
    .await;
    let dev = unique_device("LIMIT");
    c.register(&dev, msg::CLIENT_VERSION).await;
}

#[tokio::test]
async fn connection_limits_distributed() {
    connection_limits().await;
}

/// A client that sends but never reads: the gateway's writes stall, and after
/// `AMR_WRITE_TIMEOUT` it drops the connection instead of buffering for it (every refusal here
/// echoes a 10 KB sessionId, so the socket buffers fill quickly). A good client streams
/// meanwhile, undisturbed.
async fn never_reading_client_is_dropped(mode: Mode) {
    let stack = Stack::builder()
        .mode(mode)
        .gateway_env("AMR_WRITE_TIMEOUT", "1s")
        .start()
        .await;
    let good = Streamer::start(&stack, false).await;
    let dev = unique_device("DEAF");
    let mut c = stack.registered_client(0, &dev).await;
    c.start(&dev).await;
    let ws = c.into_inner().expect("open");
    let (mut tx, rx) = ws.split();
    let pad = "x".repeat(10 * 1024);
    let dropped = tokio::time::timeout(Duration::from_secs(60), async {
        for i in 0u64.. {
            // Distinct ids: refusals of distinct sessions are not coalesced.
            let v = msg::sensor_data(&dev, Some(&format!("{i}{pad}")), None, msg::sample(i));
            if tx.send(Message::text(v.to_string())).await.is_err() {
                return i;
            }
        }
        unreachable!()
    })
    .await
    .expect("the gateway drops a client that never reads");
    assert!(dropped > 0);
    drop(rx);
    good.finish(&stack).await;
}
both_modes!(never_reading_client_is_dropped, multi_thread);
