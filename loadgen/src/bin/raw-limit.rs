//! The "raw limit" baseline: the least a WebSocket server can do with the same traffic.
//!
//! Accepts WebSocket on `/ws` (tokio-tungstenite), parses every text frame as JSON
//! (`serde_json::Value`) and drops it. It answers only `session_start` (a minimal
//! `session_created`) and `session_end` (`session_ended`), so that `amr-loadgen` can drive it;
//! the only state is a per-connection sample counter, so `dataCount` stays checkable. No NATS,
//! no Redis, no validation, no durability: whatever the gateway costs above this is the price of
//! the product's features.

use amr_proto::client::types;
use amr_proto::server::{ServerMessage, SessionCreated, SessionEnded};
use amr_proto::{ids, now_ms, EndReason};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Raw-limit baseline server for amr-loadgen.
#[derive(Debug, Parser)]
#[command(name = "raw-limit", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// WebSocket path.
    #[arg(long, default_value = "/ws")]
    path: String,
    /// Worker threads (default: the number of cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raw-limit: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raw-limit: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> std::io::Result<()> {
    raise_fd_limit();
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!(
        "raw-limit: listening on ws://{}{}",
        listener.local_addr()?,
        args.path
    );
    let path: &'static str = Box::leak(args.path.into_boxed_str());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, path));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    eprintln!("raw-limit: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to an rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

// The upgrade callback's signature is tungstenite's; its error type is an HTTP response.
#[allow(clippy::result_large_err)]
async fn connection(stream: TcpStream, path: &'static str) {
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024));
    let check_path = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() == path {
            Ok(resp)
        } else {
            let mut not_found = ErrorResponse::new(Some("not found".to_owned()));
            *not_found.status_mut() = StatusCode::NOT_FOUND;
            Err(not_found)
        }
    };
    let Ok(Ok(mut ws)) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::accept_hdr_async_with_config(stream, check_path, Some(config)),
    )
    .await
    else {
        return;
    };
    // The connection's one session: (sessionId, startedAt, samples).
    let mut session: Option<(String, i64, u64)> = None;
    while let Some(Ok(frame)) = ws.next().await {
        let Message::Text(text) = frame else {
            if frame.is_close() {
                break;
            }
            continue;
        };
        let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        let reply = match value.get("type").and_then(Value::as_str) {
            Some(types::SENSOR_DATA) => {
                if let Some(s) = session.as_mut() {
                    s.2 += 1;
                }
                None
            }
            Some(types::SENSOR_BATCH) => {
                if let Some(s) = session.as_mut() {
                    let n = value
                        .get("samples")
                        .and_then(Value::as_array)
                        .map_or(0, |a| a.len() as u64);
                    s.2 += n;
                }
                None
            }
            Some(types::SESSION_START) => {
                let id = ids::new_session_id();
                let now = now_ms();
                session = Some((id.clone(), now, 0));
                Some(ServerMessage::SessionCreated(SessionCreated {
                    session_id: id,
                    device_id: device_of(&value),
                    timestamp: now,
                    replaced_session_id: None,
                    request_id: None,
                }))
            }
            Some(types::SESSION_END) => {
                let now = now_ms();
                let (id, started, count) = session.take().unwrap_or_else(|| {
                    let id = value
                        .get("sessionId")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    (id, now, 0)
                });
                Some(ServerMessage::SessionEnded(SessionEnded {
                    session_id: id,
                    device_id: device_of(&value),
                    timestamp: now,
                    reason: EndReason::ClientRequest,
                    started_at: started,
                    ended_at: now,
                    data_count: count,
                }))
            }
            _ => None,
        };
        if let Some(reply) = reply {
            if ws.send(Message::text(reply.to_json())).await.is_err() {
                break;
            }
        }
    }
}

fn device_of(value: &Value) -> String {
    value
        .get("deviceId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}
