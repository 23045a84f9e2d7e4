//! The harness itself works, independently of the binaries under test: servers start, die,
//! come back on the same port and data; JetStream read-back and the event collector see what was
//! published; the WebSocket client sends fragments and reads close codes; the binaries build.

use amr_proto::events::SessionCreatedEvent;
use amr_proto::headers;
use amr_proto::subjects::{self, Subjects};
use amr_tests::binaries;
use amr_tests::client::WsClient;
use amr_tests::jetstream::{EventCollector, JetStreamReader};
use amr_tests::servers::{redis_ping, NatsServer, RedisServer};
use amr_tests::wait::wait_until;
use amr_tests::WAIT_TIMEOUT;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;

fn pid_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry: look at its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(s) => !s
            .rsplit(')')
            .next()
            .map(|rest| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}

async fn port_refuses(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
}

#[tokio::test]
async fn nats_survives_kill_and_restart_on_same_port_and_store() {
    let mut nats = NatsServer::start().await;
    assert_ne!(nats.port(), 4222, "never the system NATS");
    let port = nats.port();

    // Persist one message in a file-backed stream, stop gracefully, restart: it is still there.
    {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "SMOKE".into(),
            subjects: vec!["smoke.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        js.publish("smoke.a", "hello".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    nats.stop();
    assert!(port_refuses(port).await, "stopped server still accepts");
    nats.restart().await;
    assert_eq!(nats.port(), port);
    {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("SMOKE").await.unwrap();
        let m = stream
            .get_last_raw_message_by_subject("smoke.a")
            .await
            .unwrap();
        assert_eq!(&m.payload[..], b"hello");
    }

    // SIGKILL: the port closes; restart brings it back on the same port.
    nats.kill();
    assert!(!nats.is_running());
    assert!(port_refuses(port).await, "killed server still accepts");
    nats.restart().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    client.flush().await.unwrap();

    // Drop kills the child.
    let pid = nats.pid().unwrap();
    drop(client);
    drop(nats);
    assert!(!pid_alive(pid), "nats-server {pid} survived the drop");
}

#[tokio::test]
async fn redis_survives_kill_and_restart_on_same_port() {
    let mut redis = RedisServer::start().await;
    assert_ne!(redis.port(), 6379, "never the system Redis");
    let port = redis.port();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();

    redis.kill();
    assert!(port_refuses(port).await, "killed redis still accepts");
    assert!(redis_ping(&redis.url()).await.is_err());
    redis.restart().await;
    assert_eq!(redis.port(), port);
    redis_ping(&redis.url()).await.unwrap();
    // No persistence: a restart starts empty.
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let v: Option<String> = redis::cmd("GET")
        .arg("k")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, None);

    redis.stop();
    assert!(port_refuses(port).await);
    redis.restart().await;
    redis_ping(&redis.url()).await.unwrap();

    let pid = redis.pid().unwrap();
    drop(redis);
    assert!(!pid_alive(pid), "redis-server {pid} survived the drop");
}

#[tokio::test]
async fn jetstream_reader_and_event_collector_see_what_was_published() {
    let nats = NatsServer::start().await;
    let s = Subjects::default();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: subjects::SENSOR_STREAM.into(),
        subjects: vec![s.sensor_all()],
        ..Default::default()
    })
    .await
    .unwrap();
    let events = EventCollector::start(&nats.url(), s.prefix()).await;

    let (a, b) = (s.sensor("dev1", "session_a"), s.sensor("dev1", "session_b"));
    for i in 0..25u64 {
        let subject = if i % 3 == 0 { &b } else { &a };
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::DEVICE_ID, "dev1");
        h.insert(headers::SEQ, i.to_string().as_str());
        js.publish_with_headers(subject.clone(), h, format!("{{ \"i\" : {i} }}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let reader = JetStreamReader::connect(&nats.url(), s.prefix()).await;
    assert_eq!(reader.count(&a).await, 16);
    assert_eq!(reader.count(&b).await, 9);
    assert_eq!(reader.count(&s.sensor("dev1", "session_c")).await, 0);
    let got = reader.read(&a).await;
    let expected: Vec<u64> = (0..25).filter(|i| i % 3 != 0).collect();
    assert_eq!(got.len(), expected.len());
    for (m, i) in got.iter().zip(&expected) {
        assert_eq!(m.payload_str(), format!("{{ \"i\" : {i} }}"));
        assert_eq!(m.header(headers::SEQ), Some(i.to_string().as_str()));
        assert_eq!(m.header(headers::DEVICE_ID), Some("dev1"));
        assert_eq!(m.subject, a);
    }
    let last = reader.last(&b).await.unwrap();
    assert_eq!(last.header(headers::SEQ), Some("24"));

    let ev = SessionCreatedEvent {
        session_id: "session_x".into(),
        device_id: "dev1".into(),
        started_at: 5,
        replaced_session_id: None,
    };
    client
        .publish(
            s.session_event("dev1", subjects::EVENT_CREATED),
            serde_json::to_vec(&ev).unwrap().into(),
        )
        .await
        .unwrap();
    let got = events.wait_created("session_x").await;
    assert_eq!(got, ev);
}

/// A stand-in server with the contract's size rule, to check the client's fragments and close
/// handling without the product.
async fn tiny_server(limit: usize) -> String {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
    use tokio_tungstenite::tungstenite::Message;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let cfg = WebSocketConfig::default()
                    .max_message_size(Some(limit))
                    .max_frame_size(Some(limit));
                let mut ws = tokio_tungstenite::accept_async_with_config(tcp, Some(cfg))
                    .await
                    .unwrap();
                while let Some(m) = ws.next().await {
                    match m {
                        Ok(Message::Text(t)) => {
                            let reply = if t.as_str().contains("\"ping\"") {
                                r#"{"type":"pong","timestamp":1}"#.to_string()
                            } else {
                                format!(
                                    r#"{{"type":"error","errorCode":"UNKNOWN_TYPE","message":"len {}"}}"#,
                                    t.len()
                                )
                            };
                            let _ = ws.send(Message::text(reply)).await;
                        }
                        Ok(_) => {}
                        Err(_) => {
                            let _ = ws
                                .send(Message::text(
                                    r#"{"type":"error","errorCode":"MESSAGE_TOO_LARGE","message":"too large"}"#,
                                ))
                                .await;
                            let _ = ws
                                .send(Message::Close(Some(CloseFrame {
                                    code: CloseCode::Size,
                                    reason: "too large".into(),
                                })))
                                .await;
                            break;
                        }
                    }
                }
            });
        }
    });
    format!("ws://{addr}/ws")
}

#[tokio::test]
async fn ws_client_fragments_pings_and_reads_close_codes() {
    use amr_proto::ErrorCode;
    let url = tiny_server(4096).await;
    let mut c = WsClient::connect(&url).await;
    c.ping().await;
    // A fragmented message under the limit is reassembled by the server.
    let text = format!("{{\"type\":\"x\",\"pad\":\"{}\"}}", "a".repeat(2000));
    c.send_fragmented_text(&text, 4).await;
    let e = c.recv_error().await;
    assert_eq!(e.message, format!("len {}", text.len()));
    // Fragments each under the limit, together over it.
    let big = format!("{{\"type\":\"x\",\"pad\":\"{}\"}}", "a".repeat(6000));
    c.send_fragmented_text(&big, 4).await;
    let (frame, errors) = c.expect_close().await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].error_code, ErrorCode::MessageTooLarge);
    assert_eq!(u16::from(frame.expect("close frame").code), 1009);
}

#[tokio::test]
async fn wait_until_returns_when_the_condition_holds() {
    let start = std::time::Instant::now();
    wait_until("a clock to advance", WAIT_TIMEOUT, || async {
        start.elapsed() > Duration::from_millis(100)
    })
    .await;
}

#[test]
fn binaries_build_and_exist() {
    // Builds the product binaries once for this process (as every Stack does) and checks that
    // the paths cargo reported exist.
    for name in [
        binaries::GATEWAY,
        binaries::SESSION_SERVICE,
        binaries::EMBEDDED,
    ] {
        let p = binaries::binary(name);
        assert!(p.is_file(), "{}", p.display());
    }
}
