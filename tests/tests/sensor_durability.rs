//! Durability of `seq` sensor data (protocol.md section 4, issue 5), distributed mode only:
//! - many clients stream `seq` messages while nats-server restarts; each client keeps what is
//!   not acked yet and resends everything after its last ack (after an error, a close, or an
//!   ack that stops moving); in the end every session holds each seq exactly once, read back
//!   with the `amr-export` library and binary;
//! - a client that outruns the gateway's in-flight bound is slowed down (TCP backpressure),
//!   never cut off or refused.

use amr_export::{SessionReader, StoredRecord};
use amr_proto::server::ServerMessage;
use amr_proto::ErrorCode;
use amr_tests::wait::wait_until;
use amr_tests::{binaries, msg, unique_device, Stack, WAIT_TIMEOUT};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Upper bound for a whole streaming run (generous: a shared 2-core machine).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// A client resends everything after its last ack when acks stopped moving for this long
/// (a real client's ack timeout; the gateway's own publish timeout is 5 s).
const ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// After an error, a client waits this long before resending (errors come in bursts).
const RESEND_DELAY: Duration = Duration::from_millis(250);

/// Counters shared between the clients and the test body.
#[derive(Default)]
struct Shared {
    acked: AtomicU64,
    errors: AtomicU64,
}

/// What one client saw.
#[derive(Debug, Default)]
struct Report {
    session: String,
    last_ack: u64,
    errors: u64,
    resends: u64,
    reconnects: u64,
    unexpected: Vec<String>,
}

/// One WebSocket connection: the sink, and a reader task forwarding every server message so
/// that acks are always read even while a send waits on TCP backpressure.
struct Conn {
    sink: SplitSink<Ws, Message>,
    rx: mpsc::UnboundedReceiver<Option<ServerMessage>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Conn {
    /// Connects and registers (clientVersion 1.1.0).
    async fn open(url: &str, device: &str) -> Result<Conn, String> {
        let (ws, _) = tokio::time::timeout(WAIT_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let (sink, mut stream) = ws.split();
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                match m {
                    Message::Text(t) => {
                        let parsed = serde_json::from_str::<ServerMessage>(t.as_str())
                            .unwrap_or_else(|e| panic!("outside the contract ({e}): {t}"));
                        if tx.send(Some(parsed)).is_err() {
                            return;
                        }
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            // None: the connection is gone.
            let _ = tx.send(None);
        });
        let mut c = Conn { sink, rx, reader };
        c.send(msg::register(device, Some("1.1.0")).to_string())
            .await?;
        c.expect("device_registered", |m| {
            matches!(m, ServerMessage::DeviceRegistered(_))
        })
        .await?;
        Ok(c)
    }

    async fn send(&mut self, text: String) -> Result<(), String> {
        self.sink
            .send(Message::text(text))
            .await
            .map_err(|e| e.to_string())
    }

    /// Reads until a message matching `pred` (others are dropped: only used before data flows).
    async fn expect(
        &mut self,
        what: &str,
        pred: impl Fn(&ServerMessage) -> bool,
    ) -> Result<ServerMessage, String> {
        loop {
            match tokio::time::timeout(WAIT_TIMEOUT, self.rx.recv()).await {
                Err(_) => return Err(format!("no {what}")),
                Ok(None) | Ok(Some(None)) => {
                    return Err(format!("closed while waiting for {what}"))
                }
                Ok(Some(Some(m))) if pred(&m) => return Ok(m),
                Ok(Some(Some(_))) => {}
            }
        }
    }
}

/// The client message of `seq`: a typical sample padded to about 200 bytes.
fn message_text(device: &str, session: &str, seq: u64) -> String {
    let mut v = msg::sensor_data(device, Some(session), Some(seq), msg::sample(seq));
    v["data"]["tag"] = json!("pad-0123456789");
    v.to_string()
}

/// A client with the reliability pattern of protocol.md section 4: sends `n` seq'd messages
/// (at most `window` unacked), keeps every unacked one, and resends all of them after an
/// error, a lost connection (reconnect, register, resume by sending into the same session) or
/// an ack timeout. Returns when the last ack covers `n`, with every text it sent by seq.
async fn run_client(
    url: String,
    device: String,
    n: u64,
    window: usize,
    shared: Arc<Shared>,
) -> (Report, Vec<String>) {
    let mut conn = Conn::open(&url, &device).await.expect("first connect");
    conn.send(msg::session_start(&device).to_string())
        .await
        .expect("session_start");
    let session = match conn
        .expect("session_created", |m| {
            matches!(m, ServerMessage::SessionCreated(_))
        })
        .await
        .expect("session_created")
    {
        ServerMessage::SessionCreated(c) => c.session_id,
        _ => unreachable!(),
    };
    let mut report = Report {
        session: session.clone(),
        ..Default::default()
    };
    let mut texts: Vec<String> = Vec::with_capacity(n.min(1 << 20) as usize);
    let mut unacked: VecDeque<(u64, usize)> = VecDeque::new();
    let mut next = 1u64;
    let mut resend_at: Option<Instant> = None;
    let mut last_progress = Instant::now();
    let mut connected = true;
    // A message taken while waiting, handled on the next turn (None: the connection is gone).
    let mut held: Option<Option<ServerMessage>> = None;
    let deadline = Instant::now() + RUN_TIMEOUT;
    while report.last_ack < n {
        assert!(
            Instant::now() < deadline,
            "{device}: last ack {} of {n} after {RUN_TIMEOUT:?}: {report:?}",
            report.last_ack
        );
        // Everything the server said so far.
        loop {
            let event = match held.take() {
                Some(m) => Ok(m),
                None => conn.rx.try_recv(),
            };
            match event {
                Ok(Some(ServerMessage::Ack(a))) => {
                    assert_eq!(a.session_id, session, "{device}: ack of another session");
                    if a.seq > report.last_ack {
                        shared
                            .acked
                            .fetch_add(a.seq - report.last_ack, Ordering::Relaxed);
                        report.last_ack = a.seq;
                        last_progress = Instant::now();
                        while unacked.front().is_some_and(|(s, _)| *s <= a.seq) {
                            unacked.pop_front();
                        }
                    }
                }
                Ok(Some(ServerMessage::Error(e))) => {
                    report.errors += 1;
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    if e.error_code != ErrorCode::ServiceUnavailable {
                        report.unexpected.push(format!("{e:?}"));
                    }
                    resend_at.get_or_insert(Instant::now() + RESEND_DELAY);
                }
                Ok(Some(other)) => report.unexpected.push(format!("{other:?}")),
                Ok(None) | Err(mpsc::error::TryRecvError::Disconnected) => {
                    connected = false;
                    break;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
        if !connected {
            // Reconnect and resume: the first message naming the session claims it again.
            report.reconnects += 1;
            conn = loop {
                assert!(Instant::now() < deadline, "{device}: cannot reconnect");
                match Conn::open(&url, &device).await {
                    Ok(c) => break c,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            connected = true;
            resend_at = Some(Instant::now());
        }
        let ack_stuck = !unacked.is_empty() && last_progress.elapsed() > ACK_TIMEOUT;
        if resend_at.is_some_and(|t| Instant::now() >= t) || ack_stuck {
            resend_at = None;
            last_progress = Instant::now();
            report.resends += 1;
            for (_, i) in unacked.iter() {
                if conn.send(texts[*i].clone()).await.is_err() {
                    connected = false;
                    break;
                }
            }
            continue;
        }
        if next <= n && unacked.len() < window {
            let text = message_text(&device, &session, next);
            texts.push(text.clone());
            unacked.push_back((next, texts.len() - 1));
            next += 1;
            if conn.send(text).await.is_err() {
                connected = false;
            }
            continue;
        }
        // Nothing to send: wait for the server (bounded, to look at the timers again).
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(50), conn.rx.recv()).await {
            held = Some(m.flatten());
        }
    }
    (report, texts)
}

/// The seqs of a session in stream order, with the checks that must hold whatever the order:
/// every stored payload is the text the client sent for its seq, `Amr-Seq` equals the payload's
/// `seq`, each seq 1..=n is stored exactly once.
fn check_exactly_once(
    device: &str,
    n: u64,
    records: &[StoredRecord],
    texts: &[String],
) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(records.len());
    for r in records {
        let seq = r
            .seq()
            .unwrap_or_else(|| panic!("{device}: a stored message without Amr-Seq"));
        let payload = std::str::from_utf8(&r.payload).expect("UTF-8 payload");
        assert_eq!(
            payload,
            texts[(seq - 1) as usize],
            "{device}: stored payload of seq {seq} is not what the client sent"
        );
        seqs.push(seq);
    }
    let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
    let missing: Vec<u64> = (1..=n).filter(|s| !distinct.contains(s)).take(20).collect();
    assert!(
        missing.is_empty(),
        "{device}: seqs missing from the stream: {missing:?}..."
    );
    assert_eq!(
        seqs.len() as u64,
        n,
        "{device}: {} stored messages for {n} distinct seqs: duplicates",
        seqs.len()
    );
    assert_eq!(distinct.len() as u64, n);
    seqs
}

/// Positions where stream order goes backwards in seq.
fn reorders(seqs: &[u64]) -> Vec<(usize, u64, u64)> {
    seqs.windows(2)
        .enumerate()
        .filter(|(_, w)| w[1] < w[0])
        .map(|(i, w)| (i, w[0], w[1]))
        .collect()
}

/// Runs the `amr-export` binary; returns its stdout.
fn run_export(nats_url: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(binaries::binary(binaries::EXPORT))
        .env("AMR_NATS_URL", nats_url)
        .args(args)
        .output()
        .expect("run amr-export");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// 4 clients x 25,000 seq'd messages (~200 B) while nats-server restarts: exactly once, and
/// the export tool gives back what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_data_survives_a_nats_restart_exactly_once() {
    const DEVICES: usize = 4;
    const N: u64 = 25_000;
    let mut stack = Stack::start().await;
    let shared = Arc::new(Shared::default());
    let mut clients = Vec::new();
    let mut devices = Vec::new();
    for _ in 0..DEVICES {
        let dev = unique_device("DUR");
        devices.push(dev.clone());
        clients.push(tokio::spawn(run_client(
            stack.ws_url(0),
            dev,
            N,
            4096,
            shared.clone(),
        )));
    }
    // Restart NATS once a good part of the data is stored, while the rest is still flowing.
    let total = DEVICES as u64 * N;
    let s = shared.clone();
    wait_until("40% of the messages acked", RUN_TIMEOUT, || {
        let acked = s.acked.load(Ordering::Relaxed);
        async move { acked >= total * 2 / 5 }
    })
    .await;
    stack.nats_mut().stop();
    let s = shared.clone();
    wait_until("a client told of the outage", WAIT_TIMEOUT * 2, || {
        let errors = s.errors.load(Ordering::Relaxed);
        async move { errors > 0 }
    })
    .await;
    let acked_at_restart = shared.acked.load(Ordering::Relaxed);
    stack.nats_mut().restart().await;
    assert!(
        acked_at_restart < total,
        "the restart must happen mid-stream"
    );

    let mut results = Vec::new();
    for c in clients {
        results.push(c.await.expect("client task"));
    }
    let reader = SessionReader::connect(&stack.nats_url(), stack.prefix())
        .await
        .expect("connect the reader");
    let mut all_reorders = Vec::new();
    for (dev, (report, texts)) in devices.iter().zip(&results) {
        eprintln!("{dev}: {report:?}");
        assert!(
            report.unexpected.is_empty(),
            "{dev}: unexpected server messages: {:?}",
            report.unexpected
        );
        assert_eq!(report.last_ack, N);
        let target = reader
            .find(Some(dev), &report.session)
            .await
            .expect("the session is in the stream");
        assert_eq!(target.count, N, "{dev}: subject count");
        let records = reader.read_all(&target).await.expect("read the session");
        let seqs = check_exactly_once(dev, N, &records, texts);
        let r = reorders(&seqs);
        if !r.is_empty() {
            eprintln!(
                "{dev}: {} places where stream order goes back in seq, first: {:?}",
                r.len(),
                &r[..r.len().min(10)]
            );
        }
        all_reorders.extend(r.into_iter().map(|x| (dev.clone(), x)));
    }
    let total_errors: u64 = results.iter().map(|(r, _)| r.errors).sum();
    assert!(total_errors > 0, "the clients never saw the outage");
    // Stream order may differ from seq order after the outage: resends of messages lost with
    // the old NATS connection can be stored after later messages that were still in the
    // gateway's NATS client buffer (see acks.rs). Reported, not asserted; the seq order is
    // asserted on the export sorted by Amr-Seq below.
    eprintln!(
        "stream order vs seq order: {} inversions over {DEVICES} sessions; first: {:?}",
        all_reorders.len(),
        &all_reorders[..all_reorders.len().min(10)]
    );

    // The export tool on one session: NDJSON is the sent texts, CSV one row per sample.
    let (dev, (report, texts)) = (&devices[0], &results[0]);
    let nats_url = stack.nats_url();
    let (code, out, err) = run_export(&nats_url, &["--session-id", &report.session, "-q"]);
    assert_eq!(code, 0, "amr-export failed: {err}");
    let mut lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len() as u64, N, "{dev}: NDJSON lines");
    lines.sort_by_key(|l| {
        serde_json::from_str::<serde_json::Value>(l).expect("NDJSON line")["seq"]
            .as_u64()
            .expect("seq")
    });
    assert!(
        lines.iter().zip(texts).all(|(l, t)| l == t),
        "{dev}: NDJSON lines are the texts sent"
    );
    let (code, out, err) = run_export(
        &nats_url,
        &["--session-id", &report.session, "--sort", "seq", "-q"],
    );
    assert_eq!(code, 0, "amr-export --sort seq failed: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len() as u64, N, "{dev}: NDJSON lines");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(*line, texts[i], "{dev}: NDJSON line {i} sorted by seq");
    }
    let (code, out, err) = run_export(
        &nats_url,
        &[
            "--session-id",
            &report.session,
            "--device-id",
            dev,
            "--format",
            "csv",
            "--sort",
            "seq",
            "-q",
        ],
    );
    assert_eq!(code, 0, "amr-export --format csv failed: {err}");
    let mut csv = csv::Reader::from_reader(out.as_bytes());
    let header: Vec<String> = csv
        .headers()
        .expect("CSV header")
        .iter()
        .map(str::to_owned)
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
    };
    let (seq_col, i_col, ax_col, tag_col) = (
        col("seq"),
        col("data.i"),
        col("data.imu.ax"),
        col("data.tag"),
    );
    let mut rows = 0u64;
    for (k, rec) in csv.records().enumerate() {
        let rec = rec.expect("CSV row");
        let seq: u64 = rec[seq_col].parse().expect("seq cell");
        assert_eq!(seq, k as u64 + 1, "CSV rows in seq order");
        assert_eq!(rec[i_col], seq.to_string());
        let sent: serde_json::Value = serde_json::from_str(&texts[k]).expect("sent JSON");
        assert_eq!(rec[ax_col], sent["data"]["imu"]["ax"].to_string());
        assert_eq!(&rec[tag_col], "pad-0123456789");
        rows += 1;
    }
    assert_eq!(rows, N, "{dev}: CSV rows");
}

/// A client that blasts far past `AMR_MAX_INFLIGHT_PER_CONN` without waiting for acks is slowed
/// (the gateway stops reading its socket), never closed nor refused, and every message is
/// stored once and acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_the_inflight_bound_is_slowed_not_cut() {
    const N: u64 = 20_000;
    let stack = Stack::builder()
        .gateway_env("AMR_MAX_INFLIGHT_PER_CONN", "2")
        .gateway_env("AMR_MAX_INFLIGHT", "4")
        .start()
        .await;
    let dev = unique_device("BLAST");
    let shared = Arc::new(Shared::default());
    // An unbounded window: nothing waits for acks before sending.
    let (report, texts) = run_client(stack.ws_url(0), dev.clone(), N, usize::MAX, shared).await;
    assert_eq!(report.errors, 0, "no refusal: {report:?}");
    assert_eq!(report.reconnects, 0, "never closed: {report:?}");
    assert_eq!(report.resends, 0, "nothing to resend: {report:?}");
    assert!(report.unexpected.is_empty(), "{report:?}");
    assert_eq!(report.last_ack, N);
    // The gateway counts each time a connection hit the bound (and stopped being read).
    let metrics = amr_tests::http::get(&format!("{}/metrics", stack.http_url(0))).await;
    let hits: f64 = metrics
        .body
        .lines()
        .filter(|l| l.starts_with("amr_gateway_inflight_bound_reached_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum();
    assert!(hits > 0.0, "the in-flight bound was never reached");
    let reader = SessionReader::connect(&stack.nats_url(), stack.prefix())
        .await
        .expect("connect the reader");
    let target = reader.find(None, &report.session).await.expect("session");
    assert_eq!(target.count, N);
    let records = reader.read_all(&target).await.expect("read");
    let seqs = check_exactly_once(&dev, N, &records, &texts);
    assert!(
        reorders(&seqs).is_empty(),
        "one connection, no failure: seq order"
    );
}

/// An unknown session makes the tool fail with its own exit code and a message.
#[tokio::test]
async fn export_of_an_unknown_session_fails_clearly() {
    let stack = Stack::start().await;
    let dev = unique_device("EXP");
    let mut c = stack.registered_client(0, &dev).await;
    let s = c.start(&dev).await.session_id;
    c.send_data_acked(&dev, &s, 1, 3).await;
    let unknown = amr_proto::ids::new_session_id();
    let (code, out, err) = run_export(&stack.nats_url(), &["--session-id", &unknown]);
    assert_eq!(code, amr_export::error::EXIT_UNKNOWN_SESSION, "{err}");
    assert!(out.is_empty());
    assert!(
        err.contains("unknown session") && err.contains(&unknown),
        "{err}"
    );
    let (code, _, err) = run_export(&stack.nats_url(), &["--session-id", "nope.*"]);
    assert_ne!(code, 0);
    assert!(err.contains("invalid session id"), "{err}");
    // The known one works, with metadata.
    let (code, out, err) = run_export(&stack.nats_url(), &["--session-id", &s, "--metadata"]);
    assert_eq!(code, 0, "{err}");
    let seqs: Vec<u64> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("NDJSON line");
            assert_eq!(v["meta"]["seq"], v["message"]["seq"]);
            assert_eq!(v["meta"]["deviceId"], dev.as_str());
            v["meta"]["seq"].as_u64().expect("seq")
        })
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
}
