//! `WsClient`: a WebSocket client that speaks the wire contract, over tokio-tungstenite.
//!
//! Server messages are parsed with `amr_proto::server::ServerMessage` (the contract in code).
//! Every wait is bounded by [`crate::RECV_TIMEOUT`]; nothing here measures durations.
//! WebSocket pings are answered by tungstenite itself and never surface; an app-level
//! `{"type":"ping"}` gets a `pong` message.

use crate::msg;
use crate::RECV_TIMEOUT;
use amr_proto::server::{
    Ack, DeviceRegistered, ErrorMessage, Pong, ServerMessage, SessionCreated, SessionEnded,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What came from the server.
#[derive(Debug)]
pub enum Incoming {
    /// A text frame (one JSON message).
    Text(String),
    /// A binary frame (the contract never sends one).
    Binary(Vec<u8>),
    /// The server closed: its close frame, or `None` when the TCP connection ended without one.
    Closed(Option<CloseFrame>),
}

/// Why [`WsClient::try_connect_with`] failed.
#[derive(Debug)]
pub struct ConnectError {
    /// The HTTP status of a refused upgrade.
    pub status: Option<u16>,
    pub message: String,
}

pub struct WsClient {
    ws: Option<Ws>,
    url: String,
    /// Messages read while looking for another one (see [`WsClient::recv_where`]).
    pending: VecDeque<(ServerMessage, String)>,
    /// Every `ack` skipped by the typed helpers, in arrival order.
    pub acks: Vec<Ack>,
    timeout: Duration,
}

impl WsClient {
    /// Connects or panics.
    pub async fn connect(url: &str) -> WsClient {
        Self::try_connect(url)
            .await
            .unwrap_or_else(|e| panic!("WebSocket connect to {url}: {e}"))
    }

    pub async fn try_connect(url: &str) -> Result<WsClient, String> {
        let (ws, _resp) = tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(WsClient {
            ws: Some(ws),
            url: url.to_owned(),
            pending: VecDeque::new(),
            acks: Vec::new(),
            timeout: RECV_TIMEOUT,
        })
    }

    /// Connects with extra request headers (`Authorization`, `Origin`, ...), optionally from a
    /// given local loopback address (per-IP limits). Err carries the HTTP status when the
    /// server refused the upgrade.
    pub async fn try_connect_with(
        url: &str,
        headers: &[(&str, &str)],
        from: Option<std::net::IpAddr>,
    ) -> Result<WsClient, ConnectError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        let fail = |message: String| ConnectError {
            status: None,
            message,
        };
        let mut req = url.into_client_request().map_err(|e| fail(e.to_string()))?;
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| fail(e.to_string()))?;
            let value = HeaderValue::from_str(v).map_err(|e| fail(e.to_string()))?;
            req.headers_mut().insert(name, value);
        }
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .ok_or_else(|| fail("no authority".into()))?;
        let addr: std::net::SocketAddr = authority
            .parse()
            .map_err(|e| fail(format!("{authority}: {e}")))?;
        let connect = async {
            let sock = tokio::net::TcpSocket::new_v4().map_err(|e| fail(e.to_string()))?;
            if let Some(ip) = from {
                sock.bind(std::net::SocketAddr::new(ip, 0))
                    .map_err(|e| fail(e.to_string()))?;
            }
            let stream = sock.connect(addr).await.map_err(|e| fail(e.to_string()))?;
            tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
                .await
                .map_err(|e| match e {
                    tokio_tungstenite::tungstenite::Error::Http(resp) => ConnectError {
                        status: Some(resp.status().as_u16()),
                        message: format!("HTTP {}", resp.status()),
                    },
                    other => fail(other.to_string()),
                })
        };
        let (ws, _resp) = tokio::time::timeout(RECV_TIMEOUT, connect)
            .await
            .map_err(|_| fail("timed out".into()))??;
        Ok(WsClient {
            ws: Some(ws),
            url: url.to_owned(),
            pending: VecDeque::new(),
            acks: Vec::new(),
            timeout: RECV_TIMEOUT,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The underlying WebSocket (for tests that drive frames themselves, e.g. floods).
    pub fn into_inner(mut self) -> Option<Ws> {
        self.ws.take()
    }

    fn ws(&mut self) -> &mut Ws {
        self.ws
            .as_mut()
            .expect("the WebSocket was already closed by this client")
    }

    // ------------------------------------------------------------------ sending

    pub async fn send_message(&mut self, m: Message) {
        let url = self.url.clone();
        if let Err(e) = self.ws().send(m).await {
            panic!("send on {url}: {e}");
        }
    }

    /// Sends one JSON value as a text frame; returns the exact text sent.
    pub async fn send_json(&mut self, v: &Value) -> String {
        let text = v.to_string();
        self.send_text(&text).await;
        text
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_message(Message::text(text)).await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.send_message(Message::binary(bytes)).await;
    }

    /// Sends `text` as ONE text message split into `parts` frames (a first text frame, then
    /// continuation frames; the last one final).
    pub async fn send_fragmented_text(&mut self, text: &str, parts: usize) {
        let bytes = text.as_bytes();
        let parts = parts.max(1);
        let size = bytes.len().div_ceil(parts);
        let chunks: Vec<&[u8]> = bytes.chunks(size.max(1)).collect();
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let opcode = if i == 0 {
                OpCode::Data(Data::Text)
            } else {
                OpCode::Data(Data::Continue)
            };
            let frame = Frame::message(chunk.to_vec(), opcode, i == last);
            self.send_message(Message::Frame(frame)).await;
        }
    }

    // ------------------------------------------------------------------ receiving

    /// The next thing from the server within `timeout`, or `None` when nothing came.
    /// Control frames (ping/pong) never surface.
    pub async fn next_incoming(&mut self, timeout: Duration) -> Option<Incoming> {
        let ws = self.ws.as_mut()?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => return None,
                Ok(n) => n,
            };
            return Some(match next {
                None => Incoming::Closed(None),
                Some(Ok(Message::Text(t))) => Incoming::Text(t.as_str().to_owned()),
                Some(Ok(Message::Binary(b))) => Incoming::Binary(b.to_vec()),
                Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => continue,
                Some(Ok(Message::Frame(_))) => continue,
                Some(Ok(Message::Close(f))) => Incoming::Closed(f),
                Some(Err(_)) => Incoming::Closed(None),
            });
        }
    }

    /// The next server message (text), parsed with the contract's `ServerMessage`, together
    /// with its raw text. Panics on timeout, close, or a message outside the contract.
    pub async fn recv_with_text(&mut self) -> (ServerMessage, String) {
        if let Some(p) = self.pending.pop_front() {
            return p;
        }
        let timeout = self.timeout;
        match self.next_incoming(timeout).await {
            None => panic!(
                "no message from the server within {timeout:?} ({})",
                self.url
            ),
            Some(Incoming::Text(t)) => {
                let m: ServerMessage = serde_json::from_str(&t)
                    .unwrap_or_else(|e| panic!("server message outside the contract ({e}): {t}"));
                (m, t)
            }
            Some(Incoming::Binary(b)) => {
                panic!("the server sent a binary frame ({} bytes)", b.len())
            }
            Some(Incoming::Closed(f)) => panic!("the server closed the connection: {f:?}"),
        }
    }

    pub async fn recv(&mut self) -> ServerMessage {
        self.recv_with_text().await.0
    }

    /// The next message that is not an `ack` (acks are kept in [`WsClient::acks`]).
    pub async fn recv_non_ack(&mut self) -> ServerMessage {
        loop {
            match self.recv().await {
                ServerMessage::Ack(a) => self.acks.push(a),
                m => return m,
            }
        }
    }

    /// Reads until a message satisfies `pred`; the others stay queued, in order, for later
    /// `recv` calls. Panics after the receive timeout.
    pub async fn recv_where(
        &mut self,
        what: &str,
        pred: impl Fn(&ServerMessage) -> bool,
    ) -> ServerMessage {
        if let Some(i) = self.pending.iter().position(|(m, _)| pred(m)) {
            return self
                .pending
                .remove(i)
                .map(|(m, _)| m)
                .expect("index is valid");
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_incoming(left).await {
                None => panic!(
                    "no {what} within {:?} ({}); other messages meanwhile: {skipped:?}",
                    self.timeout, self.url
                ),
                Some(Incoming::Text(t)) => {
                    let m: ServerMessage = serde_json::from_str(&t).unwrap_or_else(|e| {
                        panic!("server message outside the contract ({e}): {t}")
                    });
                    if pred(&m) {
                        return m;
                    }
                    skipped.push(t.clone());
                    self.pending.push_back((m, t));
                }
                Some(Incoming::Binary(b)) => {
                    panic!("the server sent a binary frame ({} bytes)", b.len())
                }
                Some(Incoming::Closed(f)) => panic!(
                    "the server closed the connection ({f:?}) while waiting for {what}; \
                     other messages meanwhile: {skipped:?}"
                ),
            }
        }
    }

    /// Messages read and queued by [`WsClient::recv_where`] and not consumed yet.
    pub fn take_pending(&mut self) -> Vec<ServerMessage> {
        self.pending.drain(..).map(|(m, _)| m).collect()
    }

    pub async fn recv_error(&mut self) -> ErrorMessage {
        match self.recv_non_ack().await {
            ServerMessage::Error(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    pub async fn recv_registered(&mut self) -> DeviceRegistered {
        match self.recv_non_ack().await {
            ServerMessage::DeviceRegistered(r) => r,
            other => panic!("expected device_registered, got {other:?}"),
        }
    }

    pub async fn recv_created(&mut self) -> SessionCreated {
        match self.recv_non_ack().await {
            ServerMessage::SessionCreated(c) => c,
            other => panic!("expected session_created, got {other:?}"),
        }
    }

    pub async fn recv_ended(&mut self) -> SessionEnded {
        match self.recv_non_ack().await {
            ServerMessage::SessionEnded(e) => e,
            other => panic!("expected session_ended, got {other:?}"),
        }
    }

    pub async fn recv_pong(&mut self) -> Pong {
        match self.recv_non_ack().await {
            ServerMessage::Pong(p) => p,
            other => panic!("expected pong, got {other:?}"),
        }
    }

    /// Waits until an `ack` covering `seq` of `session` arrived (acks may be coalesced: an ack
    /// of N covers every message up to N). Other messages stay queued.
    pub async fn wait_ack(&mut self, session: &str, seq: u64) -> Ack {
        if let Some(a) = self
            .acks
            .iter()
            .find(|a| a.session_id == session && a.seq >= seq)
        {
            return a.clone();
        }
        let what = format!("ack of {session} up to seq {seq}");
        // Queued acks of the session below `seq` are consumed on the way.
        loop {
            let m = self
                .recv_where(
                    &what,
                    |m| matches!(m, ServerMessage::Ack(a) if a.session_id == session),
                )
                .await;
            if let ServerMessage::Ack(a) = m {
                self.acks.push(a.clone());
                if a.seq >= seq {
                    return a;
                }
            }
        }
    }

    /// Asserts that the server sends nothing for `dur`. Use only where the contract says that
    /// nothing may come (it costs `dur` of wall time).
    pub async fn expect_no_message_for(&mut self, dur: Duration) {
        if let Some((m, _)) = self.pending.front() {
            panic!("expected no message, but {m:?} is queued");
        }
        match self.next_incoming(dur).await {
            None => {}
            Some(Incoming::Text(t)) => panic!("expected no message for {dur:?}, got {t}"),
            Some(other) => panic!("expected no message for {dur:?}, got {other:?}"),
        }
    }

    /// Reads until the server closes; returns its close frame (`None` when the TCP connection
    /// ended without one). Panics if a message other than `ack`/`error` arrives first, or on
    /// timeout. Errors read on the way are returned too.
    pub async fn expect_close(&mut self) -> (Option<CloseFrame>, Vec<ErrorMessage>) {
        let mut errors = Vec::new();
        for (m, t) in self.pending.drain(..) {
            match m {
                ServerMessage::Error(e) => errors.push(e),
                ServerMessage::Ack(a) => self.acks.push(a),
                _ => panic!("expected the server to close, got {t}"),
            }
        }
        let timeout = self.timeout;
        loop {
            match self.next_incoming(timeout).await {
                None => panic!("the server did not close within {timeout:?}"),
                Some(Incoming::Closed(f)) => {
                    self.ws = None;
                    return (f, errors);
                }
                Some(Incoming::Text(t)) => match serde_json::from_str::<ServerMessage>(&t) {
                    Ok(ServerMessage::Error(e)) => errors.push(e),
                    Ok(ServerMessage::Ack(a)) => self.acks.push(a),
                    _ => panic!("expected the server to close, got {t}"),
                },
                Some(Incoming::Binary(b)) => panic!("binary frame ({} bytes)", b.len()),
            }
        }
    }

    // ------------------------------------------------------------------ the app's flows

    /// `device_register` (clientVersion given) -> `device_registered`.
    pub async fn register(&mut self, device: &str, client_version: &str) -> DeviceRegistered {
        self.send_json(&msg::register(device, Some(client_version)))
            .await;
        let r = self.recv_registered().await;
        assert_eq!(
            r.device_id, device,
            "device_registered names another device"
        );
        r
    }

    /// `device_register` without clientVersion (a v1.0 app).
    pub async fn register_legacy(&mut self, device: &str) -> DeviceRegistered {
        self.send_json(&msg::register(device, None)).await;
        let r = self.recv_registered().await;
        assert_eq!(
            r.device_id, device,
            "device_registered names another device"
        );
        r
    }

    /// `session_start` -> `session_created`.
    pub async fn start(&mut self, device: &str) -> SessionCreated {
        self.send_json(&msg::session_start(device)).await;
        let c = self.recv_created().await;
        assert_eq!(c.device_id, device, "session_created names another device");
        c
    }

    pub async fn start_with_request(&mut self, device: &str, request_id: &str) -> SessionCreated {
        self.send_json(&msg::session_start_with_request(device, request_id))
            .await;
        let c = self.recv_created().await;
        assert_eq!(c.device_id, device, "session_created names another device");
        c
    }

    /// `session_end` naming `session` -> `session_ended`.
    pub async fn end(&mut self, device: &str, session: &str) -> SessionEnded {
        self.send_json(&msg::session_end(device, Some(session)))
            .await;
        let e = self.recv_ended().await;
        assert_eq!(e.session_id, session, "session_ended names another session");
        assert_eq!(e.device_id, device, "session_ended names another device");
        e
    }

    /// `session_end` without sessionId -> `session_ended` (of the active session).
    pub async fn end_active(&mut self, device: &str) -> SessionEnded {
        self.send_json(&msg::session_end(device, None)).await;
        self.recv_ended().await
    }

    /// `n` `sensor_data` messages (no seq) naming `session`; returns the texts sent.
    pub async fn send_data(&mut self, device: &str, session: &str, n: u64) -> Vec<String> {
        let mut sent = Vec::with_capacity(n as usize);
        for i in 0..n {
            let v = msg::sensor_data(device, Some(session), None, msg::sample(i));
            sent.push(self.send_json(&v).await);
        }
        sent
    }

    /// `n` `sensor_data` messages with seq `first..first+n`; waits for the ack of the last one.
    pub async fn send_data_acked(
        &mut self,
        device: &str,
        session: &str,
        first: u64,
        n: u64,
    ) -> Vec<String> {
        let mut sent = Vec::with_capacity(n as usize);
        for seq in first..first + n {
            let v = msg::sensor_data(device, Some(session), Some(seq), msg::sample(seq));
            sent.push(self.send_json(&v).await);
        }
        if n > 0 {
            self.wait_ack(session, first + n - 1).await;
        }
        sent
    }

    /// App-level ping -> pong (the next non-ack message must be the pong).
    pub async fn ping(&mut self) -> Pong {
        self.send_json(&msg::ping()).await;
        self.recv_pong().await
    }

    /// Barrier: sends a ping and waits for its pong; every other message that arrives first
    /// stays queued for later `recv`/`take_pending` calls (unlike [`WsClient::ping`]).
    pub async fn sync(&mut self) {
        self.send_json(&msg::ping()).await;
        self.recv_where("pong", |m| matches!(m, ServerMessage::Pong(_)))
            .await;
    }

    /// Closes with a close frame (1000) and waits for the server's close (bounded).
    pub async fn close(mut self) {
        if let Some(mut ws) = self.ws.take() {
            let _ = ws.close(None).await;
            let _ = tokio::time::timeout(RECV_TIMEOUT, async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }
    }

    /// Drops the TCP connection without a close frame (an app killed, a network gone).
    pub fn abort(mut self) {
        if let Some(ws) = self.ws.take() {
            drop(ws);
        }
    }
}
