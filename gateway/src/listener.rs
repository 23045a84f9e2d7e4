//! Accepting TCP connections and upgrading them to WebSocket on the configured path.
//!
//! At the upgrade, before any WebSocket exists: the path, the `Origin` allow-list (403), the
//! connection limits per gateway (503) and per client IP (429), and a token presented in the
//! request (kept for `device_register`). A TCP connection that never upgrades is dropped after
//! `AMR_HANDSHAKE_TIMEOUT`.

use crate::connection::Connection;
use crate::limits::ConnPermit;
use crate::registry::CONTROL_QUEUE;
use crate::Shared;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let next_id = AtomicU64::new(1);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let conn_id = format!("c{}", next_id.fetch_add(1, Ordering::Relaxed));
                tokio::spawn(serve_socket(stream, peer, shared.clone(), conn_id));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn ws_config(max_message: usize) -> WebSocketConfig {
    // Small buffers: memory per idle connection is a target; frames above the limit are refused.
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

fn refuse(status: StatusCode, why: &str) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(why.to_owned()));
    *resp.status_mut() = status;
    resp
}

// The upgrade callback's signature is tungstenite's; its error type is an HTTP response.
#[allow(clippy::result_large_err)]
async fn serve_socket(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, conn_id: String) {
    let _ = stream.set_nodelay(true);
    let mut permit: Option<ConnPermit> = None;
    let mut token: Option<String> = None;
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != shared.config.ws_path {
            return Err(refuse(StatusCode::NOT_FOUND, "not found"));
        }
        let origin = req
            .headers()
            .get(tokio_tungstenite::tungstenite::http::header::ORIGIN)
            .map(|v| v.to_str().unwrap_or("\u{fffd}"));
        if !shared.origins.allows(origin) {
            metrics::counter!(crate::metrics::UPGRADES_REFUSED, "cause" => "origin").increment(1);
            return Err(refuse(StatusCode::FORBIDDEN, "origin not allowed"));
        }
        match shared.conn_limits.try_acquire(peer.ip()) {
            Ok(p) => permit = Some(p),
            Err(refusal) => {
                metrics::counter!(crate::metrics::UPGRADES_REFUSED, "cause" => refusal.as_str())
                    .increment(1);
                return Err(refuse(refusal.status(), "too many connections"));
            }
        }
        token = crate::auth::upgrade_token(req);
        Ok(resp)
    };
    let config = ws_config(shared.config.max_frame_bytes);
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config));
    let ws = match tokio::time::timeout(shared.config.handshake_timeout, upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            crate::metrics::closed(crate::metrics::cause::HANDSHAKE_FAILED);
            return;
        }
        Err(_) => {
            crate::metrics::closed(crate::metrics::cause::HANDSHAKE_TIMEOUT);
            return;
        }
    };
    // Held for the life of the connection: its slot is released when this task ends.
    let Some(_permit) = permit else {
        return;
    };
    if shared.is_draining() {
        crate::metrics::closed(crate::metrics::cause::DRAINED);
        return;
    }
    let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
    shared.registry.insert(&conn_id, tx);
    metrics::gauge!(crate::metrics::CONNECTIONS).increment(1.0);
    metrics::counter!(crate::metrics::CONNECTIONS_OPENED).increment(1);
    Connection::new(shared.clone(), conn_id)
        .with_upgrade_token(token)
        .run(ws, rx)
        .await;
    metrics::gauge!(crate::metrics::CONNECTIONS).decrement(1.0);
}
