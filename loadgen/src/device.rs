//! One simulated device: one WebSocket connection, a writer (this task: the device's state
//! machine) and a reader task that parses server messages, handles acks and forwards the
//! replies the writer waits for.

use crate::cli::{Args, Mode};
use crate::msg::{self, SensorBuilder};
use crate::stats::{Latency, Recorder, Stats};
use crate::target::Target;
use amr_proto::client::types;
use amr_proto::server::{ErrorMessage, ServerMessage, SessionEnded};
use amr_proto::EndReason;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{sleep, sleep_until, timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;
type Sink = SplitSink<Ws, Message>;

/// What every device shares.
pub struct Ctx {
    pub args: Args,
    pub target: Target,
    pub stats: Arc<Stats>,
}

/// Diagnostics printed to stderr, at most this many lines in a run.
const MAX_LOG_LINES: u64 = 20;
static LOGGED: AtomicU64 = AtomicU64::new(0);

pub fn log_limited(line: impl FnOnce() -> String) {
    let n = LOGGED.fetch_add(1, Relaxed);
    if n < MAX_LOG_LINES {
        eprintln!("amr-loadgen: {}", line());
    } else if n == MAX_LOG_LINES {
        eprintln!("amr-loadgen: (further diagnostics suppressed)");
    }
}

/// The connection broke (or the server closed it) while the device still needed it.
#[derive(Debug)]
struct Dropped;

/// Replies the writer waits for, stamped when the reader received them.
enum Event {
    Created { at: Instant, session_id: String },
    Ended { at: Instant, ended: SessionEnded },
    Error { err: ErrorMessage },
}

/// `seq` messages sent and not yet acked, of the current session.
#[derive(Default)]
struct SeqState {
    session_id: String,
    /// (seq, sent at, sent inside the measured window)
    pending: VecDeque<(u64, Instant, bool)>,
}

/// The unacked messages, shared by the writer and the reader, and a wake-up for the writer
/// when acks free room in the --max-unacked window.
#[derive(Default)]
struct SeqShared {
    state: Mutex<SeqState>,
    acked: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn device_id(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index:06}")
}

fn ws_config() -> WebSocketConfig {
    // Small buffers: the tool may hold 10,000 connections. Writes are flushed explicitly.
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// Runs one device until `stop` is set (and its last session is ended).
pub async fn run(ctx: Arc<Ctx>, index: usize, start_at: Instant, mut stop: watch::Receiver<bool>) {
    let stats = &ctx.stats;
    tokio::select! {
        _ = sleep_until(start_at) => {}
        _ = stop.changed() => {}
    }
    let device_id = device_id(&ctx.args.device_prefix, index);
    let mut retries_left = ctx.args.connect_retries;
    let mut first = true;
    loop {
        if *stop.borrow() {
            break;
        }
        let connected = connect(&ctx, index).await;
        if first {
            stats.c.ramped.fetch_add(1, Relaxed);
            first = false;
        }
        match connected {
            Ok(ws) => {
                stats.c.connects.fetch_add(1, Relaxed);
                stats.c.open.fetch_add(1, Relaxed);
                let outcome = Device::new(&ctx, &device_id, stop.clone())
                    .run_connection(ws)
                    .await;
                stats.c.open.fetch_sub(1, Relaxed);
                match outcome {
                    Ok(()) => break,
                    Err(Dropped) => {
                        if *stop.borrow() {
                            break;
                        }
                        stats.c.dropped.fetch_add(1, Relaxed);
                        log_limited(|| format!("{device_id}: connection dropped"));
                    }
                }
            }
            Err(e) => {
                stats.c.connect_failures.fetch_add(1, Relaxed);
                log_limited(|| format!("{device_id}: connect failed: {e}"));
            }
        }
        if retries_left == 0 {
            break;
        }
        retries_left -= 1;
        tokio::select! {
            _ = sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn connect(ctx: &Ctx, index: usize) -> Result<Ws, String> {
    let source = ctx.target.source_for(index, ctx.args.source_ips);
    let attempt = async {
        let tcp = ctx
            .target
            .connect_tcp(source)
            .await
            .map_err(|e| format!("tcp: {e}"))?;
        let (ws, _response) = tokio_tungstenite::client_async_with_config(
            ctx.target.url.as_str(),
            tcp,
            Some(ws_config()),
        )
        .await
        .map_err(|e| format!("websocket handshake: {e}"))?;
        Ok::<_, String>(ws)
    };
    timeout(ctx.args.connect_timeout, attempt)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// How a data phase finished.
enum Streamed {
    /// Sent this many samples; the session is still active.
    Done(u64),
    /// The server ended the session on its own (replaced, idle_timeout, ...).
    EndedByServer,
}

struct Device<'a> {
    ctx: &'a Ctx,
    stats: &'a Stats,
    args: &'a Args,
    device_id: &'a str,
    stop: watch::Receiver<bool>,
    seq: Arc<SeqShared>,
}

impl<'a> Device<'a> {
    fn new(ctx: &'a Ctx, device_id: &'a str, stop: watch::Receiver<bool>) -> Self {
        Device {
            ctx,
            stats: &ctx.stats,
            args: &ctx.args,
            device_id,
            stop,
            seq: Arc::new(SeqShared::default()),
        }
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    async fn run_connection(&mut self, ws: Ws) -> Result<(), Dropped> {
        let (mut sink, stream) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(
            stream,
            tx,
            self.ctx.stats.clone(),
            self.seq.clone(),
        ));
        let result = async {
            send(
                &mut sink,
                msg::device_register(self.device_id, &self.args.client_version),
            )
            .await?;
            match self.args.mode {
                Mode::Idle => self.idle(&mut rx).await,
                Mode::Ingest => self.ingest(&mut sink, &mut rx).await,
                Mode::Cycle | Mode::Sessions => self.cycle(&mut sink, &mut rx).await,
            }
        }
        .await;
        // Close politely, give the server a moment to answer the close, then let go.
        let _ = timeout(Duration::from_secs(1), sink.close()).await;
        let mut reader = reader;
        if timeout(Duration::from_secs(2), &mut reader).await.is_err() {
            reader.abort();
        }
        result
    }

    async fn idle(&mut self, rx: &mut mpsc::UnboundedReceiver<Event>) -> Result<(), Dropped> {
        loop {
            if self.stopped() {
                return Ok(());
            }
            tokio::select! {
                ev = rx.recv() => match ev {
                    None => return Err(Dropped),
                    Some(Event::Ended { .. }) => {
                        self.stats.c.unsolicited_ends.fetch_add(1, Relaxed);
                    }
                    Some(_) => {}
                },
                _ = self.stop.changed() => {}
            }
        }
    }

    async fn cycle(
        &mut self,
        sink: &mut Sink,
        rx: &mut mpsc::UnboundedReceiver<Event>,
    ) -> Result<(), Dropped> {
        while !self.stopped() {
            let Some(session_id) = self.start_session(sink, rx).await? else {
                // Refused or timed out: back off a little and try again.
                self.pause(self.args.pause.max(Duration::from_millis(100)))
                    .await;
                continue;
            };
            let streamed = if self.args.mode == Mode::Sessions {
                Streamed::Done(0)
            } else {
                self.stream_data(sink, rx, &session_id).await?
            };
            if let Streamed::Done(samples) = streamed {
                self.end_session(sink, rx, &session_id, Some(samples))
                    .await?;
            }
            if !self.args.pause.is_zero() {
                self.pause(self.args.pause).await;
            }
        }
        Ok(())
    }

    async fn ingest(
        &mut self,
        sink: &mut Sink,
        rx: &mut mpsc::UnboundedReceiver<Event>,
    ) -> Result<(), Dropped> {
        while !self.stopped() {
            let Some(session_id) = self.start_session(sink, rx).await? else {
                self.pause(Duration::from_millis(100)).await;
                continue;
            };
            if let Streamed::Done(samples) = self.stream_data(sink, rx, &session_id).await? {
                self.end_session(sink, rx, &session_id, Some(samples))
                    .await?;
            }
        }
        Ok(())
    }

    async fn pause(&mut self, d: Duration) {
        if self.stopped() {
            return;
        }
        tokio::select! {
            _ = sleep(d) => {}
            _ = self.stop.changed() => {}
        }
    }

    /// session_start -> session_created. `None` when refused or timed out.
    async fn start_session(
        &mut self,
        sink: &mut Sink,
        rx: &mut mpsc::UnboundedReceiver<Event>,
    ) -> Result<Option<String>, Dropped> {
        let t0 = Instant::now();
        send(sink, msg::session_start(self.device_id)).await?;
        let deadline = t0 + self.args.reply_timeout;
        loop {
            match timeout_at(deadline, rx.recv()).await {
                Err(_) => {
                    self.stats.c.start_timeouts.fetch_add(1, Relaxed);
                    log_limited(|| format!("{}: no session_created in time", self.device_id));
                    return Ok(None);
                }
                Ok(None) => return Err(Dropped),
                Ok(Some(Event::Created { at, session_id })) => {
                    self.stats
                        .record(Latency::Start, micros(at.saturating_duration_since(t0)));
                    self.stats.c.sessions_started.fetch_add(1, Relaxed);
                    return Ok(Some(session_id));
                }
                Ok(Some(Event::Error { err })) => {
                    if err.ref_type.as_deref() == Some(types::SESSION_START) {
                        return Ok(None);
                    }
                }
                Ok(Some(Event::Ended { .. })) => {
                    self.stats.c.unsolicited_ends.fetch_add(1, Relaxed);
                }
            }
        }
    }

    /// session_end -> session_ended; checks dataCount against `sent_samples` when given.
    async fn end_session(
        &mut self,
        sink: &mut Sink,
        rx: &mut mpsc::UnboundedReceiver<Event>,
        session_id: &str,
        sent_samples: Option<u64>,
    ) -> Result<(), Dropped> {
        let t0 = Instant::now();
        send(sink, msg::session_end(self.device_id, session_id)).await?;
        let deadline = t0 + self.args.reply_timeout;
        loop {
            match timeout_at(deadline, rx.recv()).await {
                Err(_) => {
                    self.stats.c.end_timeouts.fetch_add(1, Relaxed);
                    log_limited(|| format!("{}: no session_ended in time", self.device_id));
                    return Ok(());
                }
                Ok(None) => return Err(Dropped),
                Ok(Some(Event::Ended { at, ended })) if ended.session_id == session_id => {
                    let us = micros(at.saturating_duration_since(t0));
                    if self.args.mode == Mode::Ingest {
                        // The run's one end: how long the server takes to work off the backlog.
                        self.stats.record_always(Latency::End, us);
                        if ended.reason == EndReason::ClientRequest {
                            self.stats.mark_confirmed(ended.data_count, at.into_std());
                        }
                    } else {
                        self.stats.record(Latency::End, us);
                    }
                    self.stats.c.sessions_ended.fetch_add(1, Relaxed);
                    if ended.reason != EndReason::ClientRequest {
                        // Ended by the server before our end arrived: the count is the server's.
                        self.stats.c.unsolicited_ends.fetch_add(1, Relaxed);
                    } else if let Some(sent) = sent_samples {
                        if ended.data_count != sent {
                            self.stats.c.data_count_mismatches.fetch_add(1, Relaxed);
                            log_limited(|| {
                                format!(
                                    "{}: {session_id}: dataCount {} but {sent} samples sent",
                                    self.device_id, ended.data_count
                                )
                            });
                        }
                    }
                    return Ok(());
                }
                Ok(Some(Event::Ended { .. })) => {
                    self.stats.c.unsolicited_ends.fetch_add(1, Relaxed);
                }
                Ok(Some(Event::Error { err })) => {
                    if err.ref_type.as_deref() == Some(types::SESSION_END) {
                        return Ok(());
                    }
                }
                Ok(Some(Event::Created { .. })) => {}
            }
        }
    }

    /// Sends sensor data into the session: for --session-secs / --messages-per-session in
    /// cycle mode, until the run stops in ingest mode.
    async fn stream_data(
        &mut self,
        sink: &mut Sink,
        rx: &mut mpsc::UnboundedReceiver<Event>,
        session_id: &str,
    ) -> Result<Streamed, Dropped> {
        let args = self.args;
        let builder =
            SensorBuilder::new(self.device_id, session_id, args.batch, args.payload_bytes);
        if args.seq {
            let mut st = lock(&self.seq.state);
            st.session_id = session_id.to_owned();
            st.pending.clear();
        }
        let t_start = Instant::now();
        if args.mode == Mode::Ingest {
            self.stats.mark_first_data(t_start.into_std());
        }
        let cycle = args.mode == Mode::Cycle;
        // In cycle mode a session lasts --session-secs, unless --messages-per-session is given.
        let end_at = (cycle && args.messages_per_session.is_none())
            .then(|| t_start + Duration::from_secs_f64(args.session_secs));
        let limit = if cycle {
            args.messages_per_session.unwrap_or(u64::MAX)
        } else {
            u64::MAX
        };
        let pipeline = u64::from(args.pipeline);
        let mut sent: u64 = 0;
        loop {
            if self.stopped() || sent >= limit || end_at.is_some_and(|e| Instant::now() >= e) {
                break;
            }
            // A session_ended we did not ask for (replaced, idle_timeout): stop sending into it.
            while let Ok(ev) = rx.try_recv() {
                if let Event::Ended { ended, .. } = ev {
                    self.stats.c.unsolicited_ends.fetch_add(1, Relaxed);
                    if ended.session_id == session_id {
                        log_limited(|| {
                            format!(
                                "{}: {session_id} ended by the server ({})",
                                self.device_id, ended.reason
                            )
                        });
                        return Ok(Streamed::EndedByServer);
                    }
                }
            }
            let due = if args.rate == 0.0 {
                pipeline
            } else {
                let elapsed = t_start.elapsed().as_secs_f64();
                let should = (elapsed * args.rate).floor() as u64 + 1;
                should.saturating_sub(sent).min(pipeline)
            };
            let mut due = due.min(limit - sent);
            if due > 0 && args.seq && args.max_unacked > 0 {
                // A client with a resend buffer: at most --max-unacked messages in flight.
                match self.unacked_room(rx).await? {
                    0 => continue,
                    room => due = due.min(room),
                }
            }
            if due == 0 {
                let next = t_start + Duration::from_secs_f64(sent as f64 / args.rate);
                let next = end_at.map_or(next, |e| next.min(e));
                tokio::select! {
                    _ = sleep_until(next) => {}
                    _ = self.stop.changed() => {}
                }
                continue;
            }
            let mut bytes = 0u64;
            for _ in 0..due {
                let seq = args.seq.then_some(sent + 1);
                let m = builder.build(seq);
                bytes += m.len() as u64;
                if let Some(n) = seq {
                    // Before sending: the ack may arrive before feed() returns.
                    lock(&self.seq.state).pending.push_back((
                        n,
                        Instant::now(),
                        self.stats.measuring(),
                    ));
                }
                sink.feed(Message::text(m)).await.map_err(|_| Dropped)?;
                sent += 1;
            }
            sink.flush().await.map_err(|_| Dropped)?;
            let c = &self.stats.c;
            c.messages_sent.fetch_add(due, Relaxed);
            c.samples_sent.fetch_add(due * builder.samples(), Relaxed);
            c.bytes_sent.fetch_add(bytes, Relaxed);
        }
        if args.seq {
            self.drain_acks(rx).await?;
        }
        Ok(Streamed::Done(sent * builder.samples()))
    }

    /// Room in the --max-unacked window; waits for acks while it is full. 0 when stopping.
    async fn unacked_room(&mut self, rx: &mpsc::UnboundedReceiver<Event>) -> Result<u64, Dropped> {
        let max = self.args.max_unacked;
        loop {
            let in_flight = lock(&self.seq.state).pending.len() as u64;
            if in_flight < max {
                return Ok(max - in_flight);
            }
            if self.stopped() {
                return Ok(0);
            }
            if rx.is_closed() {
                return Err(Dropped);
            }
            let acked = self.seq.acked.notified();
            tokio::select! {
                _ = acked => {}
                _ = sleep(Duration::from_millis(100)) => {}
                _ = self.stop.changed() => {}
            }
        }
    }

    /// Waits up to --ack-drain for the acks of every message sent; counts what stays unacked.
    async fn drain_acks(&mut self, rx: &mut mpsc::UnboundedReceiver<Event>) -> Result<(), Dropped> {
        let deadline = Instant::now() + self.args.ack_drain;
        loop {
            if lock(&self.seq.state).pending.is_empty() || Instant::now() >= deadline {
                break;
            }
            if rx.is_closed() && rx.is_empty() {
                return Err(Dropped);
            }
            sleep(Duration::from_millis(5)).await;
        }
        let left = {
            let mut st = lock(&self.seq.state);
            let n = st.pending.len() as u64;
            st.pending.clear();
            n
        };
        if left > 0 {
            self.stats.c.unacked_messages.fetch_add(left, Relaxed);
            log_limited(|| format!("{}: {left} messages never acked", self.device_id));
        }
        Ok(())
    }
}

async fn send(sink: &mut Sink, text: String) -> Result<(), Dropped> {
    sink.send(Message::text(text)).await.map_err(|_| Dropped)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Reads server messages until the connection closes; the writer sees the end as a closed
/// channel.
async fn read_loop(
    mut stream: SplitStream<Ws>,
    tx: mpsc::UnboundedSender<Event>,
    stats: Arc<Stats>,
    seq: Arc<SeqShared>,
) {
    let mut ack_latency = Recorder::new(stats.clone(), Latency::Ack);
    while let Some(frame) = stream.next().await {
        let Ok(frame) = frame else { break };
        let text = match frame {
            Message::Text(t) => t,
            Message::Binary(_) => {
                stats.c.unparsable.fetch_add(1, Relaxed);
                continue;
            }
            Message::Close(_) => break,
            _ => continue,
        };
        let at = Instant::now();
        let parsed = match serde_json::from_str::<ServerMessage>(text.as_str()) {
            Ok(m) => m,
            Err(e) => {
                stats.c.unparsable.fetch_add(1, Relaxed);
                log_limited(|| format!("unparsable server message ({e}): {}", clip(text.as_str())));
                continue;
            }
        };
        let event = match parsed {
            ServerMessage::Ack(ack) => {
                stats.c.acks.fetch_add(1, Relaxed);
                let now = Instant::now();
                let mut st = lock(&seq.state);
                if st.session_id != ack.session_id {
                    continue;
                }
                let mut n = 0u64;
                while let Some(&(s, sent_at, measured)) = st.pending.front() {
                    if s > ack.seq {
                        break;
                    }
                    st.pending.pop_front();
                    n += 1;
                    if measured {
                        ack_latency.record(micros(now.saturating_duration_since(sent_at)));
                    }
                }
                drop(st);
                stats.c.acked_messages.fetch_add(n, Relaxed);
                seq.acked.notify_one();
                continue;
            }
            ServerMessage::DeviceRegistered(_) => {
                stats.c.registered.fetch_add(1, Relaxed);
                continue;
            }
            ServerMessage::Pong(_) => continue,
            ServerMessage::SessionCreated(c) => Event::Created {
                at,
                session_id: c.session_id,
            },
            ServerMessage::SessionEnded(ended) => Event::Ended { at, ended },
            ServerMessage::Error(err) => {
                stats.error(err.error_code, err.count);
                log_limited(|| {
                    format!(
                        "error {} ({}) ref={:?} session={:?}",
                        err.error_code, err.message, err.ref_type, err.session_id
                    )
                });
                Event::Error { err }
            }
        };
        if tx.send(event).is_err() {
            break;
        }
    }
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}
