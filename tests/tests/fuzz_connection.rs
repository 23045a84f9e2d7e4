//! Property test over the per-connection state machine (the fuzz target of the running
//! product, bounded so that it runs in CI): random sequences of valid, half-valid and garbage
//! messages go to a real `amr-bridge` over a real WebSocket. Every reply must parse as a server
//! message of the contract, the connection may only end with a documented close code (1009
//! after an oversized message), and a well-behaved client is served normally afterwards.

use amr_proto::client::{self, ClientMessage};
use amr_proto::server::ServerMessage;
use amr_tests::client::Incoming;
use amr_tests::{msg, unique_device, Mode, Stack, WsClient, RECV_TIMEOUT};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const MAX_FRAME: usize = 8192;

#[derive(Debug, Clone)]
enum Action {
    Register { other_device: bool, version: bool },
    RegisterBadId(String),
    Start { request_id: Option<String> },
    End { target: Target },
    Data { target: Target, seq: Option<u64> },
    Batch { target: Target, samples: usize },
    Ping,
    Json(Value),
    Text(String),
    Binary(Vec<u8>),
    Fragmented { parts: usize },
    Oversized,
}

#[derive(Debug, Clone)]
enum Target {
    Current,
    Absent,
    Random(String),
    OtherDevice,
}

fn arb_target() -> impl Strategy<Value = Target> {
    prop_oneof![
        4 => Just(Target::Current),
        2 => Just(Target::Absent),
        1 => "[a-z_.*> ]{0,40}".prop_map(Target::Random),
        1 => Just(Target::OtherDevice),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(|n| json!(n)),
        any::<bool>().prop_map(Value::Bool),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "device_register",
            "session_start",
            "session_end",
            "sensor_data",
            "sensor_batch",
            "ping",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "type",
                    "deviceId",
                    "sessionId",
                    "data",
                    "samples",
                    "seq",
                    "timestamp",
                ])
                .prop_map(str::to_owned),
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (any::<bool>(), any::<bool>()).prop_map(|(o, v)| Action::Register {
            other_device: o && v,
            version: v
        }),
        1 => "[a-z.*> ]{0,70}".prop_map(Action::RegisterBadId),
        3 => prop::option::of("[a-z0-9]{1,8}").prop_map(|request_id| Action::Start { request_id }),
        2 => arb_target().prop_map(|target| Action::End { target }),
        6 => (arb_target(), prop::option::of(1u64..50)).prop_map(|(target, seq)| Action::Data { target, seq }),
        2 => (arb_target(), 1usize..5).prop_map(|(target, samples)| Action::Batch { target, samples }),
        1 => Just(Action::Ping),
        3 => arb_json().prop_map(Action::Json),
        1 => ".{0,40}".prop_map(Action::Text),
        1 => prop::collection::vec(any::<u8>(), 0..32).prop_map(Action::Binary),
        1 => (1usize..6).prop_map(|parts| Action::Fragmented { parts }),
        1 => Just(Action::Oversized),
    ]
}

struct Driver {
    device: String,
    other: String,
    current: Option<String>,
}

impl Driver {
    fn session(&self, t: &Target) -> Option<String> {
        match t {
            Target::Current => self.current.clone(),
            Target::Absent => None,
            Target::Random(s) => Some(s.clone()),
            Target::OtherDevice => Some(amr_proto::ids::new_session_id()),
        }
    }

    fn text(&self, a: &Action) -> Option<String> {
        let d = self.device.as_str();
        Some(match a {
            Action::Register {
                other_device,
                version,
            } => {
                let id = if *other_device { &self.other } else { d };
                msg::register(id, version.then_some(msg::CLIENT_VERSION)).to_string()
            }
            Action::RegisterBadId(id) => msg::register(id, None).to_string(),
            Action::Start { request_id } => match request_id {
                Some(r) => msg::session_start_with_request(d, r).to_string(),
                None => msg::session_start(d).to_string(),
            },
            Action::End { target } => {
                msg::session_end(d, self.session(target).as_deref()).to_string()
            }
            Action::Data { target, seq } => {
                let device = match target {
                    Target::OtherDevice => self.other.as_str(),
                    _ => d,
                };
                msg::sensor_data(
                    device,
                    self.session(target).as_deref(),
                    *seq,
                    msg::sample(1),
                )
                .to_string()
            }
            Action::Batch { target, samples } => {
                msg::sensor_batch(d, self.session(target).as_deref(), None, *samples).to_string()
            }
            Action::Ping => msg::ping().to_string(),
            Action::Json(v) => v.to_string(),
            Action::Text(t) => t.clone(),
            Action::Oversized => {
                msg::sensor_data(d, None, None, json!({"x": "y".repeat(MAX_FRAME)})).to_string()
            }
            Action::Binary(_) | Action::Fragmented { .. } => return None,
        })
    }
}

/// Reads what the server sends until `pongs` pongs came (the last one answers the barrier
/// ping); every message must be in the contract. Ok(false) when the server closed (with a
/// documented code).
async fn drain_until_pong(
    c: &mut WsClient,
    driver: &mut Driver,
    oversized_sent: bool,
    mut pongs: u64,
) -> Result<bool, TestCaseError> {
    loop {
        match c.next_incoming(RECV_TIMEOUT).await {
            None => return Err(TestCaseError::fail("no answer to the barrier ping")),
            Some(Incoming::Binary(_)) => return Err(TestCaseError::fail("binary frame")),
            Some(Incoming::Closed(frame)) => {
                let code = frame.map(|f| f.code);
                prop_assert!(
                    oversized_sent && code == Some(CloseCode::Size),
                    "closed with {code:?}"
                );
                return Ok(false);
            }
            Some(Incoming::Text(t)) => {
                let m: ServerMessage = serde_json::from_str(&t)
                    .map_err(|e| TestCaseError::fail(format!("outside the contract ({e}): {t}")))?;
                match m {
                    ServerMessage::Pong(_) => {
                        pongs = pongs.saturating_sub(1);
                        if pongs == 0 {
                            return Ok(true);
                        }
                    }
                    ServerMessage::SessionCreated(s) => driver.current = Some(s.session_id),
                    ServerMessage::SessionEnded(e)
                        if driver.current.as_deref() == Some(e.session_id.as_str()) =>
                    {
                        driver.current = None
                    }
                    ServerMessage::DeviceRegistered(r) if r.session_id.is_some() => {
                        driver.current = r.session_id
                    }
                    _ => {}
                }
            }
        }
    }
}

async fn run_case(stack: &Stack, actions: Vec<Action>) -> Result<(), TestCaseError> {
    let mut c = stack.client(0).await;
    let mut driver = Driver {
        device: unique_device("FZ"),
        other: unique_device("FZO"),
        current: None,
    };
    for a in &actions {
        // Pongs due: one per ping the action sends, plus the barrier's.
        let mut pongs = 1;
        match a {
            Action::Binary(b) => c.send_binary(b.clone()).await,
            Action::Fragmented { parts } => {
                c.send_fragmented_text(&msg::ping().to_string(), *parts)
                    .await;
                pongs += 1;
            }
            other => {
                if let Some(t) = driver.text(other) {
                    if matches!(client::parse(&t), Ok(ClientMessage::Ping)) {
                        pongs += 1;
                    }
                    c.send_text(&t).await;
                }
            }
        }
        let oversized = matches!(a, Action::Oversized);
        if !oversized {
            // Barrier after each message: keeps `current` in step with the server.
            c.send_json(&msg::ping()).await;
        }
        if !drain_until_pong_or_close(&mut c, &mut driver, oversized, pongs).await? {
            return Ok(());
        }
    }
    c.abort();
    Ok(())
}

async fn drain_until_pong_or_close(
    c: &mut WsClient,
    driver: &mut Driver,
    oversized: bool,
    pongs: u64,
) -> Result<bool, TestCaseError> {
    if oversized {
        // The server closes (1009) after MESSAGE_TOO_LARGE: no pong may come.
        let alive = drain_until_pong(c, driver, true, 1).await?;
        prop_assert!(!alive, "an oversized message did not close the connection");
        return Ok(false);
    }
    drain_until_pong(c, driver, false, pongs).await
}

#[test]
fn random_sequences_on_a_real_connection() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let stack = rt.block_on(
        Stack::builder()
            .mode(Mode::Embedded)
            .gateway_env("AMR_MAX_FRAME_BYTES", &MAX_FRAME.to_string())
            .start(),
    );
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    });
    let strategy = prop::collection::vec(arb_action(), 1..24);
    let result = runner.run(&strategy, |actions| rt.block_on(run_case(&stack, actions)));
    if let Err(e) = result {
        panic!("{e}");
    }
    // The service still serves a well-behaved client normally.
    rt.block_on(async {
        let dev = unique_device("AFTER");
        let mut c = stack.registered_client(0, &dev).await;
        let s = c.start(&dev).await.session_id;
        c.send_data_acked(&dev, &s, 1, 5).await;
        assert_eq!(c.end(&dev, &s).await.data_count, 5);
        c.close().await;
    });
}
