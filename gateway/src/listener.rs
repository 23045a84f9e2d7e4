//! Accepting TCP connections and upgrading them to WebSocket on the configured path.

use crate::connection::Connection;
use crate::registry::CONTROL_QUEUE;
use crate::Shared;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A TCP connection that has not completed the WebSocket upgrade by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let next_id = AtomicU64::new(1);
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let conn_id = format!("c{}", next_id.fetch_add(1, Ordering::Relaxed));
                tokio::spawn(serve_socket(stream, shared.clone(), conn_id));
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

// The upgrade callback's signature is tungstenite's; its error type is an HTTP response.
#[allow(clippy::result_large_err)]
async fn serve_socket(stream: TcpStream, shared: Arc<Shared>, conn_id: String) {
    let _ = stream.set_nodelay(true);
    let path = shared.config.ws_path.clone();
    let check_path = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() == path {
            Ok(resp)
        } else {
            let mut not_found = ErrorResponse::new(Some("not found".to_owned()));
            *not_found.status_mut() = StatusCode::NOT_FOUND;
            Err(not_found)
        }
    };
    let config = ws_config(shared.config.max_frame_bytes);
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(stream, check_path, Some(config));
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade).await {
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
    if shared.is_draining() {
        crate::metrics::closed(crate::metrics::cause::DRAINED);
        return;
    }
    let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
    shared.registry.insert(&conn_id, tx);
    metrics::gauge!(crate::metrics::CONNECTIONS).increment(1.0);
    metrics::counter!(crate::metrics::CONNECTIONS_OPENED).increment(1);
    Connection::new(shared.clone(), conn_id).run(ws, rx).await;
    metrics::gauge!(crate::metrics::CONNECTIONS).decrement(1.0);
}
