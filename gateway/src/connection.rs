//! One client connection: an actor that owns the WebSocket, the registered device, the current
//! session (a cache of what the session service decided) and the connection's sample counts.
//!
//! Everything that touches a connection's state runs on this one task: client frames, events
//! pushed by the session service (revocations, ends), pings and activity reports. While a
//! session operation is in flight the task stops reading the socket but keeps serving pushed
//! events, so two connections replacing each other's sessions can never wait on each other.

use crate::acks::AckPoint;
use crate::backend::{Published, Stamp};
use crate::deadline::Deadline;
use crate::forward::TraceIds;
use crate::limits::{RateDecision, RateLimiter};
use crate::registry::Control;
use crate::Shared;
use amr_proto::client::{self, ClientMessage, SensorKind, SensorMessage};
use amr_proto::events::SessionEndedEvent;
use amr_proto::internal::{
    ActivityRequest, ClaimRequest, ConnEvent, CountReport, DisconnectRequest, EndRequest,
    RevokeReply, ServiceError, StartRequest,
};
use amr_proto::server::{
    Ack, DeviceRegistered, ErrorMessage, Pong, ServerMessage, SessionCreated, SessionEnded,
};
use amr_proto::{ids, now_ms, ErrorCode};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

pub type Ws = WebSocketStream<TcpStream>;

/// Sessions remembered after the connection stopped holding them: enough to answer late
/// revocations with the right count and to refuse data for ended sessions without a round trip.
const RECENT_SESSIONS: usize = 16;
/// Refusals of sensor data are coalesced to one error per this period (with a `count`).
const COALESCE_PERIOD: Duration = Duration::from_secs(1);
/// Bound on sending a close frame to a client that may have stopped reading.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// After a policy close, how long frames still arriving are read and dropped, so that the
/// socket is not closed with unread data (a TCP reset that would lose the close frame).
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// The session this connection currently sends data into.
struct Current {
    id: String,
    /// Samples this connection accepted for the session (cumulative, never reset).
    accepted: u64,
    /// `accepted` as last reported to the session service.
    reported: u64,
    /// The session-wide running count stamped on the last published message
    /// (`Amr-Data-Count`): the session's count when this connection took it, plus every sample
    /// published since (with or without `seq`, before any ack).
    stamped: u64,
    /// Legacy provisional id, not known to the session service until the first data.
    provisional: bool,
    /// False after a revocation: the next message must claim the session again.
    held: bool,
    trace: TraceIds,
    /// The session's sensor subject, built on its first message.
    subject: Option<Bytes>,
}

impl Current {
    fn new(id: String, provisional: bool) -> Self {
        Current {
            id,
            accepted: 0,
            reported: 0,
            stamped: 0,
            provisional,
            held: !provisional,
            // The data joins the trace of the message that made the session current.
            trace: TraceIds::continuing(amr_telemetry::trace_id(&tracing::Span::current())),
            subject: None,
        }
    }
}

struct Recent {
    id: String,
    accepted: u64,
    ended: bool,
}

/// A refusal being coalesced.
struct Coalesce {
    code: ErrorCode,
    session_id: Option<String>,
    /// None for refusals of unparsed messages (rate limiting).
    ref_type: Option<&'static str>,
    window_start: Instant,
    suppressed: u64,
}

/// The result of one JetStream publish of a `seq` message.
struct Outcome {
    session_id: String,
    seq: u64,
    samples: u64,
    kind: SensorKind,
    /// Ok(duplicate): stored (or already stored under the same `Nats-Msg-Id`).
    result: Result<bool, String>,
}

/// Why the read loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// The client closed, the socket broke, or the peer went silent.
    Gone,
    /// The gateway is draining and closed the connection with 1012.
    Drained,
}

pub struct Connection {
    shared: Arc<Shared>,
    conn_id: String,
    owner: String,
    device: Option<String>,
    current: Option<Current>,
    recent: VecDeque<Recent>,
    /// Ends pushed for sessions that were not current yet (see `apply_early_end`).
    early_ends: VecDeque<SessionEndedEvent>,
    /// Sessions this connection held when its own start raced another connection's start
    /// that ended them: their `session_ended` is still owed to the client.
    owed_notices: VecDeque<String>,
    coalesce: Option<Coalesce>,
    last_seen: Instant,
    /// JetStream publishes awaiting their ack, in the order they were sent.
    inflight: FuturesOrdered<BoxFuture<'static, Outcome>>,
    ack: Option<AckPoint>,
    ack_due: Deadline,
    coalesce_due: Deadline,
    /// A token presented at the upgrade (`Authorization: Bearer` or `?token=`).
    upgrade_token: Option<String>,
    /// `None` when rate limiting is off.
    rate: Option<RateLimiter>,
    /// Set when a write to the client did not complete within `AMR_WRITE_TIMEOUT`: the client
    /// stopped reading, and the connection is dropped.
    write_stalled: bool,
    /// The connection's span: its `deviceId`/`sessionId` fields are on every log line of it.
    span: tracing::Span,
}

enum Flow {
    Continue,
    Close,
}

impl Connection {
    pub fn new(shared: Arc<Shared>, conn_id: String) -> Self {
        let owner = shared.subjects.connection(&shared.gateway_id, &conn_id);
        Connection {
            conn_id,
            owner,
            device: None,
            current: None,
            recent: VecDeque::new(),
            early_ends: VecDeque::new(),
            owed_notices: VecDeque::new(),
            coalesce: None,
            last_seen: Instant::now(),
            inflight: FuturesOrdered::new(),
            ack: None,
            ack_due: Deadline::default(),
            coalesce_due: Deadline::default(),
            upgrade_token: None,
            rate: RateLimiter::new(
                shared.config.conn_rate_limit,
                shared.config.conn_rate_burst,
                shared.config.rate_limit_close_after,
                Instant::now(),
            ),
            write_stalled: false,
            span: tracing::Span::none(),
            shared,
        }
    }

    pub fn with_upgrade_token(mut self, token: Option<String>) -> Self {
        self.upgrade_token = token;
        self
    }

    /// Runs the connection to its end, then reports a held session as disconnected.
    pub async fn run(mut self, mut ws: Ws, mut ctrl: mpsc::Receiver<Control>) {
        self.span = tracing::info_span!(
            amr_telemetry::CONNECTION_SPAN,
            conn = %self.conn_id,
            deviceId = tracing::field::Empty,
            sessionId = tracing::field::Empty,
        );
        let span = self.span.clone();
        async move {
            let exit = self.read_loop(&mut ws, &mut ctrl).await;
            self.finish(exit, &mut ctrl).await;
            self.shared.registry.remove(&self.conn_id);
        }
        .instrument(span)
        .await
    }

    /// Puts the current session's id on the connection's log lines.
    fn note_session(&self) {
        if let Some(c) = &self.current {
            self.span.record("sessionId", c.id.as_str());
        }
    }

    async fn read_loop(&mut self, ws: &mut Ws, ctrl: &mut mpsc::Receiver<Control>) -> Exit {
        // Only the few settings the loop reads: this future lives as long as the connection.
        let shared = self.shared.clone();
        let config = &shared.config;
        let mut ping = tokio::time::interval(config.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ping.tick().await;
        let mut activity = tokio::time::interval(config.activity_interval());
        activity.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut drain = self.shared.drain.clone();
        if *drain.borrow() {
            close(ws, CloseCode::Restart, "gateway draining").await;
            crate::metrics::closed(crate::metrics::cause::DRAINED);
            return Exit::Drained;
        }
        let mut was_readable = true;
        loop {
            if self.write_stalled {
                tracing::info!(conn = %self.conn_id, device = ?self.device, "client stopped reading; dropping the connection");
                metrics::counter!(crate::metrics::CONNECTIONS_CLOSED, "cause" => crate::metrics::cause::WRITE_STALLED).increment(1);
                return Exit::Gone;
            }
            self.coalesce_due.set(
                self.coalesce
                    .as_ref()
                    .filter(|c| c.suppressed > 0)
                    .map(|c| c.window_start + COALESCE_PERIOD),
            );
            self.ack_due.set(
                self.ack
                    .as_ref()
                    .and_then(|a| a.deadline(config.ack_interval)),
            );
            // At the in-flight bound the socket is not read: TCP backpressure.
            let can_read = self.inflight.len() < config.max_inflight_per_conn;
            if !can_read && was_readable {
                // Visible proof that backpressure, not buffering, handled a fast client.
                metrics::counter!(crate::metrics::INFLIGHT_BOUND_REACHED).increment(1);
            }
            was_readable = can_read;
            tokio::select! {
                biased;
                Ok(()) = drain.changed() => {
                    close(ws, CloseCode::Restart, "gateway restarting").await;
                    crate::metrics::closed(crate::metrics::cause::DRAINED);
                    return Exit::Drained;
                }
                Some(control) = ctrl.recv() => self.on_control(Some(ws), control).await,
                Some(outcome) = self.inflight.next(), if !self.inflight.is_empty() => {
                    self.on_outcome(Some(ws), outcome).await
                }
                frame = ws.next(), if can_read => {
                    self.last_seen = Instant::now();
                    match frame {
                        Some(Ok(msg)) => {
                            if let Flow::Close = self.on_frame(ws, ctrl, msg).await {
                                crate::metrics::closed(crate::metrics::cause::CLIENT_CLOSED);
                                return Exit::Gone;
                            }
                        }
                        Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                            crate::metrics::closed(crate::metrics::cause::TOO_LARGE);
                            let mut e = ErrorMessage::new(
                                ErrorCode::MessageTooLarge,
                                format!("message of {size} bytes exceeds the limit of {max_size} bytes"),
                            );
                            e.device_id = self.device.clone();
                            self.send(ws, ServerMessage::Error(e)).await;
                            close(ws, CloseCode::Size, "message too large").await;
                            return Exit::Gone;
                        }
                        Some(Err(e)) => {
                            tracing::debug!(conn = %self.conn_id, error = %e, "websocket error");
                            crate::metrics::closed(crate::metrics::cause::SOCKET_ERROR);
                            return Exit::Gone;
                        }
                        None => {
                            crate::metrics::closed(crate::metrics::cause::SOCKET_ERROR);
                            return Exit::Gone;
                        }
                    }
                }
                _ = ping.tick() => {
                    if self.last_seen.elapsed() > config.peer_timeout {
                        tracing::info!(conn = %self.conn_id, device = ?self.device, "peer silent; closing");
                        crate::metrics::closed(crate::metrics::cause::SILENT);
                        close(ws, CloseCode::Away, "peer timeout").await;
                        return Exit::Gone;
                    }
                    match tokio::time::timeout(config.write_timeout, ws.send(Message::Ping(Bytes::new()))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return Exit::Gone,
                        Err(_) => self.write_stalled = true,
                    }
                }
                _ = activity.tick() => self.report_activity(),
                _ = self.coalesce_due.reached() => self.flush_coalesced(ws).await,
                _ = self.ack_due.reached() => self.send_due_ack(ws).await,
            }
        }
    }

    async fn on_frame(
        &mut self,
        ws: &mut Ws,
        ctrl: &mut mpsc::Receiver<Control>,
        msg: Message,
    ) -> Flow {
        if matches!(msg, Message::Text(_) | Message::Binary(_)) {
            // Before any parsing: a flood costs as little as possible.
            match self.check_rate(ws).await {
                RateDecision::Allow => {}
                RateDecision::Refuse => return Flow::Continue,
                RateDecision::Close => return Flow::Close,
            }
        }
        match msg {
            Message::Text(text) => {
                let raw: Bytes = text.clone().into();
                self.on_text(ws, ctrl, text.as_str(), raw).await
            }
            Message::Binary(_) => {
                self.count_in("binary");
                self.send_error(
                    ws,
                    ErrorMessage::new(
                        ErrorCode::InvalidMessage,
                        "binary frames are not accepted: send one JSON object per text frame",
                    ),
                )
                .await;
                Flow::Continue
            }
            Message::Close(_) => Flow::Close,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Flow::Continue,
        }
    }

    async fn on_text(
        &mut self,
        ws: &mut Ws,
        ctrl: &mut mpsc::Receiver<Control>,
        text: &str,
        raw: Bytes,
    ) -> Flow {
        let msg = match client::parse(text) {
            Ok(m) => m,
            Err(e) => {
                self.count_in("invalid");
                let mut out = ErrorMessage::new(e.code, e.message);
                out.ref_type = e.ref_type;
                out.device_id = e.device_id.or_else(|| self.device.clone());
                out.request_id = e.request_id;
                self.send_error(ws, out).await;
                return Flow::Continue;
            }
        };
        let kind = msg.wire_type();
        self.count_in(kind);
        // Control messages always get a span (and so a trace); sensor messages only when
        // debug is on: the data path stays cheap.
        let span = match &msg {
            ClientMessage::Sensor(_) => tracing::debug_span!(
                "client_message",
                otel.name = kind,
                r#type = kind,
                traceId = tracing::field::Empty,
            ),
            _ => tracing::info_span!(
                "client_message",
                otel.name = kind,
                r#type = kind,
                deviceId = tracing::field::Empty,
                traceId = tracing::field::Empty,
            ),
        };
        if !span.is_disabled() {
            if let Some(d) = msg.device_id().or(self.device.as_deref()) {
                span.record("deviceId", d);
            }
            amr_telemetry::record_trace_id(&span);
        }
        self.on_message(ws, ctrl, msg, raw).instrument(span).await
    }

    async fn on_message(
        &mut self,
        ws: &mut Ws,
        ctrl: &mut mpsc::Receiver<Control>,
        msg: ClientMessage<'_>,
        raw: Bytes,
    ) -> Flow {
        match msg {
            ClientMessage::Ping => {
                let pong = ServerMessage::Pong(Pong {
                    timestamp: now_ms(),
                });
                self.send(ws, pong).await;
            }
            ClientMessage::DeviceRegister {
                device_id,
                client_version,
                token,
            } => {
                return self
                    .on_register(ws, &device_id, client_version.as_deref(), token.as_deref())
                    .await
            }
            ClientMessage::SessionStart {
                device_id,
                request_id,
            } => {
                let Some(device) = self
                    .require_device(ws, device_id.as_deref(), client::types::SESSION_START)
                    .await
                else {
                    return Flow::Continue;
                };
                self.on_start(ws, ctrl, device, request_id.map(|r| r.into_owned()))
                    .await
            }
            ClientMessage::SessionEnd {
                device_id,
                session_id,
            } => {
                let Some(device) = self
                    .require_device(ws, device_id.as_deref(), client::types::SESSION_END)
                    .await
                else {
                    return Flow::Continue;
                };
                self.on_end(ws, ctrl, device, session_id.map(|s| s.into_owned()))
                    .await
            }
            ClientMessage::Sensor(sensor) => {
                let Some(device) = self
                    .require_device(ws, sensor.device_id.as_deref(), sensor.kind.wire_type())
                    .await
                else {
                    return Flow::Continue;
                };
                self.on_sensor(ws, ctrl, device, sensor, raw).await
            }
        }
        Flow::Continue
    }

    async fn on_register(
        &mut self,
        ws: &mut Ws,
        device_id: &str,
        client_version: Option<&str>,
        token: Option<&str>,
    ) -> Flow {
        match &self.device {
            Some(bound) if bound != device_id => {
                let mut e = ErrorMessage::new(
                    ErrorCode::DeviceMismatch,
                    format!("this connection is registered as '{bound}'"),
                );
                e.device_id = Some(device_id.to_owned());
                e.ref_type = Some(client::types::DEVICE_REGISTER.to_owned());
                self.send_error(ws, e).await;
                return Flow::Continue;
            }
            Some(_) => {}
            None => {
                if let Err(why) = self.authenticate(device_id, token) {
                    tracing::info!(conn = %self.conn_id, device = device_id, reason = %why, "authentication failed");
                    metrics::counter!(crate::metrics::CONNECTIONS_CLOSED, "cause" => crate::metrics::cause::UNAUTHORIZED).increment(1);
                    let mut e = ErrorMessage::new(
                        ErrorCode::Unauthorized,
                        "a valid token for this deviceId is required",
                    );
                    e.device_id = Some(device_id.to_owned());
                    e.ref_type = Some(client::types::DEVICE_REGISTER.to_owned());
                    self.send_error(ws, e).await;
                    close_lingering(ws, CloseCode::Policy, "unauthorized").await;
                    return Flow::Close;
                }
                self.device = Some(device_id.to_owned());
                self.span.record("deviceId", device_id);
                let session_aware = client_version.is_some_and(ids::is_session_aware_version);
                if !session_aware {
                    // v1.0 clients expect a session per connection: a provisional id that
                    // only becomes a session when data arrives (no phantom sessions).
                    self.current = Some(Current::new(ids::new_session_id(), true));
                    self.note_session();
                }
                tracing::debug!(conn = %self.conn_id, device = device_id, session_aware, "registered");
            }
        }
        // A repeated register is answered again; a legacy client sees its session id again.
        let session_id = self
            .current
            .as_ref()
            .filter(|_| !client_version.is_some_and(ids::is_session_aware_version))
            .map(|c| c.id.clone());
        let reply = ServerMessage::DeviceRegistered(DeviceRegistered {
            device_id: device_id.to_owned(),
            timestamp: now_ms(),
            session_id,
        });
        self.send(ws, reply).await;
        Flow::Continue
    }

    /// With `AMR_AUTH_MODE=jwt`: the token of the register message, else the one of the
    /// upgrade, must be valid for `device_id`.
    fn authenticate(&self, device_id: &str, token: Option<&str>) -> Result<(), String> {
        let Some(auth) = self.shared.auth.as_ref() else {
            return Ok(());
        };
        let Some(token) = token.or(self.upgrade_token.as_deref()) else {
            return Err("no token".to_owned());
        };
        auth.verify(token, device_id).map_err(|e| e.0)
    }

    /// Counts one client message against the connection's rate: a refused message is dropped
    /// unparsed and answered by a coalesced `RATE_LIMITED`; sustained abuse closes with 1008.
    async fn check_rate(&mut self, ws: &mut Ws) -> RateDecision {
        let Some(rate) = self.rate.as_mut() else {
            return RateDecision::Allow;
        };
        let decision = rate.check(Instant::now());
        match decision {
            RateDecision::Allow => {}
            RateDecision::Refuse => {
                metrics::counter!(crate::metrics::RATE_LIMITED).increment(1);
                self.refuse_with(ws, ErrorCode::RateLimited, None, None)
                    .await;
            }
            RateDecision::Close => {
                tracing::info!(conn = %self.conn_id, device = ?self.device, "sustained rate abuse; closing");
                metrics::counter!(crate::metrics::CONNECTIONS_CLOSED, "cause" => crate::metrics::cause::RATE_LIMITED).increment(1);
                self.flush_coalesced(ws).await;
                let mut e = ErrorMessage::new(
                    ErrorCode::RateLimited,
                    "message rate over the limit for too long; closing",
                );
                e.device_id = self.device.clone();
                self.send_error(ws, e).await;
                close_lingering(ws, CloseCode::Policy, "rate limit exceeded").await;
            }
        }
        decision
    }

    /// The connection's device, if the message may act for it (NOT_REGISTERED /
    /// DEVICE_MISMATCH otherwise, already answered).
    async fn require_device(
        &mut self,
        ws: &mut Ws,
        claimed: Option<&str>,
        ref_type: &'static str,
    ) -> Option<String> {
        let error = match (&self.device, claimed) {
            (None, _) => ErrorMessage::new(
                ErrorCode::NotRegistered,
                "send device_register before any session or data message",
            ),
            (Some(bound), Some(other)) if bound != other => ErrorMessage::new(
                ErrorCode::DeviceMismatch,
                format!("this connection is registered as '{bound}'"),
            ),
            (Some(bound), _) => return Some(bound.clone()),
        };
        let mut error = error;
        error.device_id = claimed.map(str::to_owned);
        error.ref_type = Some(ref_type.to_owned());
        if ref_type == client::types::SENSOR_DATA || ref_type == client::types::SENSOR_BATCH {
            error.message.push_str("; the message was not forwarded");
        }
        self.send_error(ws, error).await;
        None
    }

    async fn on_start(
        &mut self,
        ws: &mut Ws,
        ctrl: &mut mpsc::Receiver<Control>,
        device: String,
        client_request_id: Option<String>,
    ) {
        self.settle_inflight(Some(ws)).await;
        let current = self
            .current
            .as_ref()
            .filter(|c| !c.provisional)
            .map(|c| CountReport {
                session_id: c.id.clone(),
                accepted: c.accepted,
            });
        let req = StartRequest {
            device_id: device.clone(),
            request_id: client_request_id
                .clone()
                .unwrap_or_else(ids::new_request_id),
            owner: self.owner.clone(),
            gateway_id: self.shared.gateway_id.clone(),
            adopt_session_id: None,
            current,
        };
        let sessions = self.shared.sessions.clone();
        let result = self
            .await_op(Some(ws), ctrl, async move { sessions.start(&req).await })
            .await;
        match result {
            Ok(ok) => {
                if let Some(prev) = self.current.take() {
                    // The previous session (if it was ever real) is over: either this start
                    // replaced it, or it had ended already. A provisional id just vanishes.
                    if !prev.provisional {
                        if ok.replaced_session_id.as_deref() != Some(prev.id.as_str()) {
                            // Another connection's start ended it meanwhile; its notice is
                            // still on the way and the client is owed it.
                            if self.owed_notices.len() == RECENT_SESSIONS {
                                self.owed_notices.pop_front();
                            }
                            self.owed_notices.push_back(prev.id.clone());
                        }
                        self.remember(prev.id, prev.accepted, true);
                    }
                }
                self.current = Some(Current::new(ok.session_id.clone(), false));
                self.note_session();
                tracing::info!(conn = %self.conn_id, device = %device, session = %ok.session_id, replaced = ?ok.replaced_session_id, "session started");
                let created = ServerMessage::SessionCreated(SessionCreated {
                    session_id: ok.session_id,
                    device_id: device,
                    timestamp: now_ms(),
                    replaced_session_id: ok.replaced_session_id,
                    request_id: client_request_id,
                });
                self.send(ws, created).await;
                self.apply_early_end(ws).await;
            }
            Err(e) => {
                let mut out = service_error(e, client::types::SESSION_START);
                out.device_id = Some(device);
                out.request_id = client_request_id;
                self.send_error(ws, out).await;
            }
        }
    }

    async fn on_end(
        &mut self,
        ws: &mut Ws,
        ctrl: &mut mpsc::Receiver<Control>,
        device: String,
        session_id: Option<String>,
    ) {
        self.settle_inflight(Some(ws)).await;
        let mut held_before = None;
        let count = match (&session_id, self.current.as_mut()) {
            (None, Some(c)) if !c.provisional => Some(c),
            (Some(target), Some(c)) if *target == c.id && !c.provisional => Some(c),
            _ => None,
        }
        .map(|c| {
            // Stop accepting data for it while the end is in flight.
            held_before = Some(c.held);
            c.held = false;
            CountReport {
                session_id: c.id.clone(),
                accepted: c.accepted,
            }
        })
        .or_else(|| {
            let target = session_id.as_deref()?;
            self.recent
                .iter()
                .find(|r| r.id == target)
                .map(|r| CountReport {
                    session_id: r.id.clone(),
                    accepted: r.accepted,
                })
        });
        let req = EndRequest {
            device_id: device.clone(),
            session_id: session_id.clone(),
            owner: self.owner.clone(),
            count,
        };
        let sessions = self.shared.sessions.clone();
        let result = self
            .await_op(Some(ws), ctrl, async move { sessions.end(&req).await })
            .await;
        match result {
            Ok(ended) => {
                if self
                    .current
                    .as_ref()
                    .is_some_and(|c| c.id == ended.session_id)
                {
                    if let Some(c) = self.current.take() {
                        self.remember(c.id, c.accepted, true);
                    }
                } else {
                    self.mark_ended(&ended.session_id);
                }
                tracing::info!(conn = %self.conn_id, device = %device, session = %ended.session_id, data_count = ended.data_count, "session ended by client");
                self.send(ws, session_ended_message(ended)).await;
            }
            Err(e) => {
                if let (Some(held), Some(c)) = (held_before, self.current.as_mut()) {
                    c.held = held;
                }
                let mut out = service_error(e, client::types::SESSION_END);
                out.device_id = Some(device);
                if out.session_id.is_none() {
                    out.session_id = session_id;
                }
                self.send_error(ws, out).await;
            }
        }
    }

    async fn on_sensor(
        &mut self,
        ws: &mut Ws,
        ctrl: &mut mpsc::Receiver<Control>,
        device: String,
        sensor: SensorMessage<'_>,
        raw: Bytes,
    ) {
        let ref_type = sensor.kind.wire_type();
        // The common case, data for the session this connection holds, allocates nothing here.
        let ready = self.current.as_ref().is_some_and(|c| {
            c.held && !c.provisional && sensor.session_id.as_deref().is_none_or(|id| id == c.id)
        });
        if !ready {
            let target = match (sensor.session_id.as_deref(), self.current.as_ref()) {
                (Some(id), _) => id.to_owned(),
                (None, Some(c)) => c.id.clone(),
                (None, None) => {
                    self.refuse(ws, ErrorCode::NoActiveSession, None, ref_type)
                        .await;
                    return;
                }
            };
            if let Err(code) = self.take_session(ws, ctrl, &device, &target).await {
                self.refuse(ws, code, Some(target), ref_type).await;
                return;
            }
            self.apply_early_end(ws).await;
            if self.current.as_ref().is_none_or(|c| c.id != target) {
                self.refuse(ws, ErrorCode::SessionNotActive, Some(target), ref_type)
                    .await;
                return;
            }
        }
        // After a failed publish, later seqs wait for the client's resend (see acks.rs).
        if let Some(seq) = sensor.seq {
            let current_id = self.current.as_ref().map(|c| c.id.as_str());
            let gated = match (self.ack.as_mut(), current_id) {
                (Some(a), Some(id)) if a.session_id() == id => !a.admit(seq),
                _ => false,
            };
            if gated {
                let session_id = self.current.as_ref().map(|c| c.id.clone());
                self.refuse(ws, ErrorCode::ServiceUnavailable, session_id, ref_type)
                    .await;
                return;
            }
        }
        let Some(current) = self.current.as_mut() else {
            return;
        };
        let traceparent = current.trace.next_traceparent();
        let subjects = &self.shared.subjects;
        let subject = current
            .subject
            .get_or_insert_with(|| Bytes::from(subjects.sensor(&device, &current.id)));
        let stamp = Stamp {
            device_id: &device,
            session_id: &current.id,
            subject,
            data_count: current.stamped + sensor.samples,
            traceparent: &traceparent,
        };
        let published = self.shared.sink.publish(&sensor, &stamp, raw).await;
        if published.is_ok() {
            current.stamped += sensor.samples;
        }
        match published {
            Ok(Published::Sent) => {
                current.accepted += sensor.samples;
                crate::metrics::samples(sensor.samples);
            }
            Ok(Published::Pending(ack)) => {
                // Counted once stored: a resend of a stored seq must not count twice.
                let (session_id, seq, samples, kind) = (
                    current.id.clone(),
                    sensor.seq.unwrap_or(0),
                    sensor.samples,
                    sensor.kind,
                );
                crate::metrics::publish_sent();
                let sent = Instant::now();
                self.inflight.push_back(
                    async move {
                        let result = ack.await;
                        crate::metrics::publish_settled(sent.elapsed(), result.is_ok());
                        Outcome {
                            session_id,
                            seq,
                            samples,
                            kind,
                            result,
                        }
                    }
                    .boxed(),
                );
            }
            Err(e) => {
                let session_id = current.id.clone();
                tracing::warn!(conn = %self.conn_id, error = %e, "publish failed");
                let mut out = ErrorMessage::new(
                    ErrorCode::ServiceUnavailable,
                    "message broker unavailable; the message was not forwarded",
                );
                out.session_id = Some(session_id);
                out.ref_type = Some(ref_type.to_owned());
                self.send_error(ws, out).await;
            }
        }
    }

    /// Makes `target` this connection's held session: activates a legacy provisional id, or
    /// claims the device's active session (resume after reconnect, hand-over). Err is the code
    /// to refuse the message with.
    async fn take_session(
        &mut self,
        ws: &mut Ws,
        ctrl: &mut mpsc::Receiver<Control>,
        device: &str,
        target: &str,
    ) -> Result<(), ErrorCode> {
        let sessions = self.shared.sessions.clone();
        if let Some(c) = self
            .current
            .as_ref()
            .filter(|c| c.id == target && c.provisional)
        {
            let req = StartRequest {
                device_id: device.to_owned(),
                request_id: ids::new_request_id(),
                owner: self.owner.clone(),
                gateway_id: self.shared.gateway_id.clone(),
                adopt_session_id: Some(c.id.clone()),
                current: None,
            };
            let result = self
                .await_op(Some(ws), ctrl, async move { sessions.start(&req).await })
                .await;
            return match result {
                Ok(ok) => {
                    if let Some(c) = self.current.as_mut().filter(|c| c.id == ok.session_id) {
                        c.provisional = false;
                        c.held = true;
                    }
                    tracing::info!(conn = %self.conn_id, device, session = %ok.session_id, "legacy session activated");
                    Ok(())
                }
                Err(e) => Err(e.code),
            };
        }
        if !ids::is_valid_session_id(target)
            || self.recent.iter().any(|r| r.id == target && r.ended)
        {
            return Err(ErrorCode::SessionNotActive);
        }
        let req = ClaimRequest {
            device_id: device.to_owned(),
            session_id: target.to_owned(),
            owner: self.owner.clone(),
            gateway_id: self.shared.gateway_id.clone(),
        };
        let result = self
            .await_op(Some(ws), ctrl, async move { sessions.claim(&req).await })
            .await;
        match result {
            Ok(ok) => {
                let mut taken = match self.current.take() {
                    Some(c) if c.id == ok.session_id => c,
                    other => {
                        if let Some(prev) = other.filter(|p| !p.provisional) {
                            self.remember(prev.id, prev.accepted, false);
                        }
                        let mut c = Current::new(ok.session_id.clone(), false);
                        if let Some(pos) = self.recent.iter().position(|r| r.id == ok.session_id) {
                            if let Some(r) = self.recent.remove(pos) {
                                // Cumulative per connection: continue where it stopped.
                                c.accepted = r.accepted;
                                c.reported = r.accepted;
                            }
                        }
                        c
                    }
                };
                taken.held = true;
                taken.provisional = false;
                // The stored count lacks what this connection has not reported yet when it
                // claims back a session it held all along (after a NATS outage): its own
                // running count is then the larger one.
                taken.stamped = taken.stamped.max(ok.data_count);
                tracing::info!(conn = %self.conn_id, device, session = %ok.session_id, "session taken over by this connection");
                self.current = Some(taken);
                self.note_session();
                Ok(())
            }
            Err(e) => {
                if e.code == ErrorCode::SessionNotActive {
                    self.mark_ended(target);
                }
                Err(e.code)
            }
        }
    }

    /// Awaits a session operation while still serving pushed events (revocations must be
    /// answered even while this connection waits on the service).
    async fn await_op<T>(
        &mut self,
        mut ws: Option<&mut Ws>,
        ctrl: &mut mpsc::Receiver<Control>,
        op: impl Future<Output = T>,
    ) -> T {
        tokio::pin!(op);
        loop {
            tokio::select! {
                result = &mut op => return result,
                Some(control) = ctrl.recv() => {
                    let ws_now = ws.as_deref_mut();
                    self.on_control(ws_now, control).await
                }
            }
        }
    }

    async fn on_control(&mut self, ws: Option<&mut Ws>, control: Control) {
        let (event, reply) = match control {
            Control::Pushed(push) => (push.event, push.reply),
            Control::Recheck => {
                // The next message claims the session again: it may have ended while NATS was
                // away (a claim of an ended session answers SESSION_NOT_ACTIVE).
                if let Some(c) = self.current.as_mut().filter(|c| !c.provisional && c.held) {
                    c.held = false;
                    tracing::debug!(conn = %self.conn_id, session = %c.id, "NATS back; session to be checked again");
                }
                return;
            }
        };
        match event {
            ConnEvent::Revoke { session_id } => {
                // Everything in flight is settled first, so the count is final.
                self.settle_inflight(ws).await;
                let accepted = match self.current.as_mut() {
                    Some(c) if c.id == session_id => {
                        c.held = false;
                        c.accepted
                    }
                    _ => self
                        .recent
                        .iter()
                        .find(|r| r.id == session_id)
                        .map_or(0, |r| r.accepted),
                };
                tracing::debug!(conn = %self.conn_id, session = %session_id, accepted, "revoked");
                if let Some(reply) = reply {
                    reply
                        .send(RevokeReply {
                            session_id,
                            accepted,
                        })
                        .await;
                }
            }
            ConnEvent::SessionEnded(ended) => {
                // Only the connection's current session: a v1.1.0 client nulls its sessionId on
                // any session_ended, so news about an older session would clear the new one.
                let is_current = self
                    .current
                    .as_ref()
                    .is_some_and(|c| c.id == ended.session_id);
                if !is_current {
                    self.mark_ended(&ended.session_id);
                    if let Some(pos) = self
                        .owed_notices
                        .iter()
                        .position(|id| *id == ended.session_id)
                    {
                        // The session this connection held when its own start raced another
                        // connection's: the contract says its holder is told.
                        self.owed_notices.remove(pos);
                        if let Some(ws) = ws {
                            self.send(ws, session_ended_message(ended)).await;
                        }
                        return;
                    }
                    // It may be the session a start or claim in flight is about to make current
                    // (a racing start replaced it first): kept until that answer arrives.
                    if self.early_ends.len() == RECENT_SESSIONS {
                        self.early_ends.pop_front();
                    }
                    self.early_ends.push_back(ended);
                    return;
                }
                self.end_current(ws, ended).await;
            }
        }
    }

    /// The current session ended on someone else's behalf: forget it and tell the client.
    async fn end_current(&mut self, ws: Option<&mut Ws>, ended: SessionEndedEvent) {
        if let Some(c) = self.current.take() {
            self.remember(c.id, c.accepted, true);
        }
        tracing::info!(conn = %self.conn_id, session = %ended.session_id, reason = %ended.reason, "session ended by the service");
        if let Some(ws) = ws {
            self.send(ws, session_ended_message(ended)).await;
        }
    }

    /// After a session became current: if its end was pushed while the operation that made it
    /// current was in flight, that end applies now.
    async fn apply_early_end(&mut self, ws: &mut Ws) {
        let Some(current) = self.current.as_ref() else {
            return;
        };
        if let Some(pos) = self
            .early_ends
            .iter()
            .position(|e| e.session_id == current.id)
        {
            if let Some(ended) = self.early_ends.remove(pos) {
                self.end_current(Some(ws), ended).await;
            }
        }
    }

    /// Sends the current session's cumulative count when it grew (fire and forget: counts are
    /// cumulative, so a lost report is repaired by the next one or by the end).
    fn report_activity(&mut self) {
        let (Some(device), Some(c)) = (self.device.as_ref(), self.current.as_mut()) else {
            return;
        };
        if c.provisional || !c.held || c.accepted == c.reported {
            return;
        }
        c.reported = c.accepted;
        let req = ActivityRequest {
            device_id: device.clone(),
            owner: self.owner.clone(),
            reports: vec![CountReport {
                session_id: c.id.clone(),
                accepted: c.accepted,
            }],
        };
        let sessions = self.shared.sessions.clone();
        tokio::spawn(async move {
            if let Err(e) = sessions.activity(&req).await {
                tracing::debug!(error = %e.message, "activity report failed");
            }
        });
    }

    /// After the socket is gone: a session this connection still holds ends `disconnected`
    /// (or waits for the grace); revocations keep being answered until that is settled.
    async fn finish(&mut self, exit: Exit, ctrl: &mut mpsc::Receiver<Control>) {
        self.settle_inflight(None).await;
        let (Some(device), Some(c)) = (self.device.clone(), self.current.as_ref()) else {
            return;
        };
        if c.provisional {
            return;
        }
        let req = DisconnectRequest {
            device_id: device,
            session_id: c.id.clone(),
            owner: self.owner.clone(),
            accepted: c.accepted,
            drained: exit == Exit::Drained,
        };
        let sessions = self.shared.sessions.clone();
        let result = self
            .await_op(None, ctrl, async move { sessions.disconnect(&req).await })
            .await;
        match result {
            Ok(ok) => {
                tracing::info!(conn = %self.conn_id, session = %req_session(&self.current), outcome = ?ok.outcome, "connection closed")
            }
            Err(e) => {
                tracing::warn!(conn = %self.conn_id, error = %e.message, "disconnect not recorded; the idle timeout will end the session")
            }
        }
    }

    /// Waits for every publish in flight and accounts for it.
    async fn settle_inflight(&mut self, mut ws: Option<&mut Ws>) {
        while let Some(outcome) = self.inflight.next().await {
            self.on_outcome(ws.as_deref_mut(), outcome).await;
        }
        if let Some(ws) = ws {
            self.send_pending_ack(ws).await;
        }
    }

    async fn on_outcome(&mut self, mut ws: Option<&mut Ws>, o: Outcome) {
        let switch = self
            .ack
            .as_ref()
            .is_none_or(|a| a.session_id() != o.session_id);
        if switch {
            if let Some(ws) = ws.as_deref_mut() {
                self.send_pending_ack(ws).await;
            }
            self.ack = Some(AckPoint::new(o.session_id.clone()));
        }
        let now = Instant::now();
        match o.result {
            Ok(duplicate) => {
                if !duplicate {
                    match self.current.as_mut().filter(|c| c.id == o.session_id) {
                        Some(c) => c.accepted += o.samples,
                        None => {
                            if let Some(r) = self.recent.iter_mut().find(|r| r.id == o.session_id) {
                                r.accepted += o.samples;
                            }
                        }
                    }
                    crate::metrics::samples(o.samples);
                }
                if let Some(a) = self.ack.as_mut() {
                    a.record(o.seq, true, now);
                }
            }
            Err(e) => {
                tracing::warn!(conn = %self.conn_id, session = %o.session_id, seq = o.seq, error = %e, "not stored; no ack");
                if let Some(a) = self.ack.as_mut() {
                    a.record(o.seq, false, now);
                }
                if let Some(ws) = ws {
                    self.refuse(
                        ws,
                        ErrorCode::ServiceUnavailable,
                        Some(o.session_id),
                        o.kind.wire_type(),
                    )
                    .await;
                }
                return;
            }
        }
        if let Some(ws) = ws {
            self.send_due_ack(ws).await;
        }
    }

    async fn send_due_ack(&mut self, ws: &mut Ws) {
        let config = &self.shared.config;
        let due = self.ack.as_ref().and_then(|a| {
            a.due(Instant::now(), config.ack_interval, config.ack_every)
                .map(|seq| (a.session_id().to_owned(), seq))
        });
        if let Some((session_id, seq)) = due {
            self.send_ack(ws, session_id, seq).await;
        }
    }

    async fn send_pending_ack(&mut self, ws: &mut Ws) {
        let pending = self
            .ack
            .as_ref()
            .and_then(|a| a.pending().map(|seq| (a.session_id().to_owned(), seq)));
        if let Some((session_id, seq)) = pending {
            self.send_ack(ws, session_id, seq).await;
        }
    }

    async fn send_ack(&mut self, ws: &mut Ws, session_id: String, seq: u64) {
        if let Some(a) = self.ack.as_mut() {
            a.mark_sent(seq);
        }
        self.send(ws, ServerMessage::Ack(Ack { session_id, seq }))
            .await;
    }

    fn remember(&mut self, id: String, accepted: u64, ended: bool) {
        self.recent.retain(|r| r.id != id);
        if self.recent.len() == RECENT_SESSIONS {
            self.recent.pop_front();
        }
        self.recent.push_back(Recent {
            id,
            accepted,
            ended,
        });
    }

    fn mark_ended(&mut self, id: &str) {
        match self.recent.iter_mut().find(|r| r.id == id) {
            Some(r) => r.ended = true,
            None => self.remember(id.to_owned(), 0, true),
        }
    }

    /// Refuses a sensor message; a flood of identical refusals becomes one error per second
    /// carrying the number of messages it stands for.
    async fn refuse(
        &mut self,
        ws: &mut Ws,
        code: ErrorCode,
        session_id: Option<String>,
        ref_type: &'static str,
    ) {
        self.refuse_with(ws, code, session_id, Some(ref_type)).await
    }

    async fn refuse_with(
        &mut self,
        ws: &mut Ws,
        code: ErrorCode,
        session_id: Option<String>,
        ref_type: Option<&'static str>,
    ) {
        if let Some(c) = self.coalesce.as_mut() {
            if c.code == code
                && c.session_id == session_id
                && c.window_start.elapsed() < COALESCE_PERIOD
            {
                c.suppressed += 1;
                return;
            }
        }
        self.flush_coalesced(ws).await;
        let message = match code {
            ErrorCode::SessionNotActive => "session is not the device's active session",
            ErrorCode::NoActiveSession => "no active session: send session_start first",
            ErrorCode::ServiceUnavailable => "session service unavailable",
            ErrorCode::RateLimited => "message rate over the limit",
            _ => "message refused",
        };
        let mut e = ErrorMessage::new(code, format!("{message}; the message was not forwarded"));
        e.device_id = self.device.clone();
        e.session_id = session_id.clone();
        e.ref_type = ref_type.map(str::to_owned);
        self.send_error(ws, e).await;
        self.coalesce = Some(Coalesce {
            code,
            session_id,
            ref_type,
            window_start: Instant::now(),
            suppressed: 0,
        });
    }

    async fn flush_coalesced(&mut self, ws: &mut Ws) {
        let Some(c) = self.coalesce.take() else {
            return;
        };
        if c.suppressed == 0 {
            return;
        }
        let mut e = ErrorMessage::new(
            c.code,
            format!(
                "{} more messages refused with this code; they were not forwarded",
                c.suppressed
            ),
        );
        e.device_id = self.device.clone();
        e.session_id = c.session_id.clone();
        e.ref_type = c.ref_type.map(str::to_owned);
        e.count = Some(c.suppressed);
        self.send_error(ws, e).await;
        // Keep rate limiting: the next window starts now.
        self.coalesce = Some(Coalesce {
            window_start: Instant::now(),
            suppressed: 0,
            ..c
        });
    }

    async fn send_error(&mut self, ws: &mut Ws, e: ErrorMessage) {
        crate::metrics::error(e.error_code.as_str());
        self.send(ws, ServerMessage::Error(e)).await;
    }

    async fn send(&mut self, ws: &mut Ws, msg: ServerMessage) {
        if self.write_stalled {
            return;
        }
        crate::metrics::message_out(&msg);
        // A failed write means the socket is gone; the read side notices and ends the loop.
        // A write that never completes (a client that stopped reading) is bounded: the
        // connection holds one message at most, whatever the client does.
        let write = ws.send(Message::Text(msg.to_json().into()));
        if tokio::time::timeout(self.shared.config.write_timeout, write)
            .await
            .is_err()
        {
            self.write_stalled = true;
        }
    }

    fn count_in(&self, kind: &'static str) {
        crate::metrics::message_in(kind);
    }
}

fn session_ended_message(ended: SessionEndedEvent) -> ServerMessage {
    ServerMessage::SessionEnded(SessionEnded {
        session_id: ended.session_id,
        device_id: ended.device_id,
        timestamp: now_ms(),
        reason: ended.reason,
        started_at: ended.started_at,
        ended_at: ended.ended_at,
        data_count: ended.data_count,
    })
}

fn req_session(current: &Option<Current>) -> &str {
    current.as_ref().map_or("-", |c| c.id.as_str())
}

fn service_error(e: ServiceError, ref_type: &str) -> ErrorMessage {
    let mut out = ErrorMessage::new(e.code, e.message);
    out.session_id = e.session_id;
    out.ref_type = Some(ref_type.to_owned());
    out
}

async fn close(ws: &mut Ws, code: CloseCode, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
}

/// Closes, then reads and drops what the client still sends until it answers the close (or
/// `CLOSE_LINGER` passes): a client flooding at the moment of the close still gets the frame.
async fn close_lingering(ws: &mut Ws, code: CloseCode, reason: &'static str) {
    close(ws, code, reason).await;
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}
