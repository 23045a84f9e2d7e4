//! The final report: one JSON object (`--json`) or a text summary.

use crate::cli::Mode;
use crate::stats::LatencySummary;
use crate::sys::FdLimit;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub label: Option<String>,
    pub mode: &'static str,
    pub url: String,
    pub devices: usize,
    pub config: RunConfig,
    /// Seconds from the first connection to the end of the ramp (all first attempts done).
    pub ramp_secs: f64,
    /// Length of the measured window, in seconds (rates below are over this window).
    pub window_secs: f64,
    pub connections: Connections,
    pub sessions: Sessions,
    /// session_start sent -> session_created received, microseconds (measured window).
    pub session_start_us: LatencySummary,
    /// session_end sent -> session_ended received, microseconds (measured window; in ingest
    /// mode the final end of each device's session, i.e. the time to work off the backlog).
    pub session_end_us: LatencySummary,
    pub messages: Messages,
    pub acks: Acks,
    /// Error messages received, by errorCode (whole run).
    pub errors: BTreeMap<String, u64>,
    /// Messages the server said it refused (sum of coalesced error counts).
    pub refused_messages: u64,
    /// Server frames that were not a valid server message.
    pub unparsable_frames: u64,
    pub server: Option<ProcFigures>,
    pub watched: BTreeMap<String, ProcFigures>,
    pub loadgen: ProcFigures,
    /// CPU of the whole machine in the window, 100 = one core; `other_cpu_percent` is what was
    /// not the server, the watched processes or the load tool (other work on the machine
    /// disturbs the figures when it is large).
    pub machine: MachineCpu,
    pub fd_limit: Option<FdLimit>,
    /// Devices still running when the tool gave up waiting for them at the end.
    pub unfinished_devices: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    pub rate_hz_per_device: f64,
    pub session_secs: f64,
    pub messages_per_session: Option<u64>,
    pub pause_ms: u128,
    pub batch: u32,
    pub seq: bool,
    pub payload_bytes: usize,
    pub pipeline: u32,
    pub connect_rate: f64,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    pub threads: usize,
    pub source_ips: u8,
    pub cores: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    /// Successful WebSocket handshakes (reconnections included).
    pub connected: u64,
    pub failures: u64,
    /// Connections the server closed (or that broke) while the device still used them.
    pub dropped: u64,
    /// Connections open when the measured window closed.
    pub open_at_end: u64,
    /// `device_registered` replies received.
    pub registered: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sessions {
    pub started: u64,
    pub ended: u64,
    /// Sessions started per second in the measured window.
    pub started_per_sec: f64,
    pub start_timeouts: u64,
    pub end_timeouts: u64,
    /// session_ended whose dataCount differed from the samples sent into the session.
    pub data_count_mismatches: u64,
    /// session_ended the device did not ask for (replaced, idle_timeout, ...).
    pub unsolicited_ends: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Messages {
    pub sent: u64,
    pub samples: u64,
    pub bytes: u64,
    /// In the measured window.
    pub per_sec: f64,
    pub samples_per_sec: f64,
    pub mib_per_sec: f64,
    /// Ingest mode: samples the server confirmed (sum of dataCount of the ended sessions).
    pub confirmed_samples: u64,
    /// Ingest mode: confirmed samples / seconds from the first data sent to the last
    /// session_ended received: the server's own rate over the run, backlog included.
    pub confirmed_samples_per_sec: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Acks {
    pub received: u64,
    pub per_sec: f64,
    /// Messages covered by acks (an ack of seq N covers every message up to N).
    pub acked_messages: u64,
    pub acked_messages_per_sec: f64,
    /// `seq` messages without an ack when their session ended (after --ack-drain).
    pub unacked_messages: u64,
    /// Message sent -> ack covering it received, microseconds (sent in the measured window).
    pub latency_us: LatencySummary,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MachineCpu {
    pub cores: usize,
    pub busy_percent: Option<f64>,
    pub other_cpu_percent: Option<f64>,
}

/// Memory and CPU of one process.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcFigures {
    pub pid: u32,
    pub rss_before_kib: Option<u64>,
    pub rss_after_ramp_kib: Option<u64>,
    pub rss_end_kib: Option<u64>,
    /// (RSS at the end of the window - RSS before) / connections open then, in bytes.
    pub rss_per_connection_bytes: Option<f64>,
    /// CPU seconds (user + system) in the measured window.
    pub cpu_secs: Option<f64>,
    /// CPU use in the window, 100 = one core.
    pub cpu_percent: Option<f64>,
    pub cpu_us_per_message: Option<f64>,
    pub cpu_us_per_session: Option<f64>,
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn latency_line(out: &mut String, name: &str, l: &LatencySummary) {
    if l.count == 0 {
        let _ = writeln!(out, "  {name:<24} (none measured)");
        return;
    }
    let _ = writeln!(
        out,
        "  {name:<24} n={:<8} p50 {} ms  p90 {} ms  p99 {} ms  p99.9 {} ms  max {} ms",
        l.count,
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.p999),
        ms(l.max)
    );
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn proc_lines(out: &mut String, name: &str, p: &ProcFigures) {
    let _ = writeln!(
        out,
        "  {name:<16} pid {}  RSS before {} KiB, after ramp {} KiB, end {} KiB{}",
        p.pid,
        opt(p.rss_before_kib),
        opt(p.rss_after_ramp_kib),
        opt(p.rss_end_kib),
        p.rss_per_connection_bytes
            .map(|b| format!(", {b:.0} B/connection"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "  {:<16} CPU {} s ({}% of a core){}{}",
        "",
        opt(p.cpu_secs.map(|c| format!("{c:.2}"))),
        opt(p.cpu_percent.map(|c| format!("{c:.0}"))),
        p.cpu_us_per_message
            .map(|c| format!(", {c:.2} us/message"))
            .unwrap_or_default(),
        p.cpu_us_per_session
            .map(|c| format!(", {c:.1} us/session"))
            .unwrap_or_default()
    );
}

impl Report {
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "amr-loadgen{}: mode {} against {}, {} devices, window {:.1} s (ramp {:.1} s)",
            self.label
                .as_deref()
                .map(|l| format!(" [{l}]"))
                .unwrap_or_default(),
            self.mode,
            self.url,
            self.devices,
            self.window_secs,
            self.ramp_secs
        );
        let c = &self.connections;
        let _ = writeln!(
            o,
            "connections: {} connected, {} failed, {} dropped, {} open at end, {} registered",
            c.connected, c.failures, c.dropped, c.open_at_end, c.registered
        );
        let s = &self.sessions;
        let _ = writeln!(
            o,
            "sessions: {} started ({:.0}/s), {} ended; timeouts start {} end {}; dataCount mismatches {}; unsolicited ends {}",
            s.started,
            s.started_per_sec,
            s.ended,
            s.start_timeouts,
            s.end_timeouts,
            s.data_count_mismatches,
            s.unsolicited_ends
        );
        let _ = writeln!(o, "latency:");
        latency_line(&mut o, "session_start->created", &self.session_start_us);
        let end_label = if self.mode == Mode::Ingest.as_str() {
            "final session_end->ended"
        } else {
            "session_end->ended"
        };
        latency_line(&mut o, end_label, &self.session_end_us);
        if self.config.seq {
            latency_line(&mut o, "message->ack", &self.acks.latency_us);
        }
        let m = &self.messages;
        let _ = writeln!(
            o,
            "messages: {} sent ({} samples, {:.1} MiB); {:.0} msg/s, {:.0} samples/s, {:.2} MiB/s",
            m.sent,
            m.samples,
            m.bytes as f64 / (1024.0 * 1024.0),
            m.per_sec,
            m.samples_per_sec,
            m.mib_per_sec
        );
        if let Some(r) = m.confirmed_samples_per_sec {
            let _ = writeln!(
                o,
                "confirmed by the server (dataCount): {} samples, {:.0} samples/s from first data to last session_ended",
                m.confirmed_samples, r
            );
        }
        if self.config.seq {
            let a = &self.acks;
            let _ = writeln!(
                o,
                "acks: {} received ({:.0}/s), {} messages acked ({:.0}/s), {} unacked",
                a.received,
                a.per_sec,
                a.acked_messages,
                a.acked_messages_per_sec,
                a.unacked_messages
            );
        }
        if self.errors.is_empty() {
            let _ = writeln!(o, "errors: none");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(
                o,
                "errors: {} (refused messages {})",
                list.join(", "),
                self.refused_messages
            );
        }
        if self.unparsable_frames > 0 {
            let _ = writeln!(o, "unparsable server frames: {}", self.unparsable_frames);
        }
        let _ = writeln!(o, "processes:");
        if let Some(g) = &self.server {
            proc_lines(&mut o, "server", g);
        }
        for (name, p) in &self.watched {
            proc_lines(&mut o, name, p);
        }
        proc_lines(&mut o, "amr-loadgen", &self.loadgen);
        if let Some(busy) = self.machine.busy_percent {
            let _ = writeln!(
                o,
                "machine: {busy:.0}% busy of {}00% ({} cores), of which {}% by other processes",
                self.machine.cores,
                self.machine.cores,
                opt(self.machine.other_cpu_percent.map(|c| format!("{c:.0}")))
            );
        }
        if self.unfinished_devices > 0 {
            let _ = writeln!(
                o,
                "warning: {} devices did not finish in time",
                self.unfinished_devices
            );
        }
        o
    }
}
