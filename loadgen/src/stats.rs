//! Counters and latency histograms shared by every simulated device.

use amr_proto::ErrorCode;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Highest latency a histogram tracks, in microseconds (larger values are clamped).
const MAX_US: u64 = 120_000_000;

fn new_histogram() -> Mutex<Histogram<u64>> {
    // 3 significant figures from 1 us to 120 s; `new_with_bounds` only fails on bad bounds.
    Mutex::new(Histogram::new_with_bounds(1, MAX_US, 3).expect("constant, valid bounds"))
}

fn lock(h: &Mutex<Histogram<u64>>) -> MutexGuard<'_, Histogram<u64>> {
    h.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Which histogram a value goes to.
#[derive(Debug, Clone, Copy)]
pub enum Latency {
    /// session_start sent -> session_created received.
    Start,
    /// session_end sent -> session_ended received.
    End,
    /// A `seq` message sent -> an ack covering it received.
    Ack,
}

#[derive(Default)]
pub struct Counters {
    /// Devices whose first connection attempt finished (the ramp is over when all have).
    pub ramped: AtomicU64,
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Connections currently open.
    pub open: AtomicU64,
    /// Connections that closed while the device still wanted them.
    pub dropped: AtomicU64,
    pub registered: AtomicU64,
    pub sessions_started: AtomicU64,
    pub sessions_ended: AtomicU64,
    pub start_timeouts: AtomicU64,
    pub end_timeouts: AtomicU64,
    pub data_count_mismatches: AtomicU64,
    /// `session_ended` that the device did not ask for (replaced, idle_timeout, ...).
    pub unsolicited_ends: AtomicU64,
    pub messages_sent: AtomicU64,
    pub samples_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Ack frames received.
    pub acks: AtomicU64,
    /// Messages covered by the acks received.
    pub acked_messages: AtomicU64,
    /// `seq` messages never acked when their session ended.
    pub unacked_messages: AtomicU64,
    /// Server frames that did not parse as a server message.
    pub unparsable: AtomicU64,
    /// Messages refused by the server, as counted by (possibly coalesced) errors.
    pub refused_messages: AtomicU64,
    /// Ingest mode: samples the server confirmed in `dataCount` of the sessions it ended for us.
    pub confirmed_samples: AtomicU64,
}

/// Snapshot of the counters whose rate is reported.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    pub messages: u64,
    pub samples: u64,
    pub bytes: u64,
    pub acks: u64,
    pub acked: u64,
    pub sessions: u64,
    pub ends: u64,
}

pub struct Stats {
    pub c: Counters,
    /// Error messages received, by code (index of `ErrorCode::ALL`).
    errors: [AtomicU64; ErrorCode::ALL.len()],
    start: Mutex<Histogram<u64>>,
    end: Mutex<Histogram<u64>>,
    ack: Mutex<Histogram<u64>>,
    /// True inside the measured window: latencies are recorded only then.
    measuring: AtomicBool,
    epoch: Instant,
    /// Ingest mode: first data sent and last session_ended received, microseconds since epoch.
    first_data_us: AtomicU64,
    last_end_us: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            c: Counters::default(),
            errors: Default::default(),
            start: new_histogram(),
            end: new_histogram(),
            ack: new_histogram(),
            measuring: AtomicBool::new(false),
            epoch: Instant::now(),
            first_data_us: AtomicU64::new(u64::MAX),
            last_end_us: AtomicU64::new(0),
        }
    }
}

impl Stats {
    pub fn set_measuring(&self, on: bool) {
        self.measuring.store(on, Relaxed);
    }

    pub fn measuring(&self) -> bool {
        self.measuring.load(Relaxed)
    }

    fn histogram(&self, which: Latency) -> &Mutex<Histogram<u64>> {
        match which {
            Latency::Start => &self.start,
            Latency::End => &self.end,
            Latency::Ack => &self.ack,
        }
    }

    /// Records one latency in microseconds if the measured window is open.
    pub fn record(&self, which: Latency, us: u64) {
        if self.measuring() {
            lock(self.histogram(which)).saturating_record(us.max(1));
        }
    }

    /// Records one latency whether or not the window is open (the final session_end of an
    /// ingest run, which measures how long the server takes to work off its backlog).
    pub fn record_always(&self, which: Latency, us: u64) {
        lock(self.histogram(which)).saturating_record(us.max(1));
    }

    fn since_epoch(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    pub fn mark_first_data(&self, t: Instant) {
        self.first_data_us.fetch_min(self.since_epoch(t), Relaxed);
    }

    pub fn mark_confirmed(&self, samples: u64, at: Instant) {
        self.c.confirmed_samples.fetch_add(samples, Relaxed);
        self.last_end_us.fetch_max(self.since_epoch(at), Relaxed);
    }

    /// Seconds from the first data sent to the last session_ended received (ingest mode).
    pub fn confirmed_span_secs(&self) -> Option<f64> {
        let a = self.first_data_us.load(Relaxed);
        let b = self.last_end_us.load(Relaxed);
        (a != u64::MAX && b > a).then(|| (b - a) as f64 / 1e6)
    }

    pub fn error(&self, code: ErrorCode, count: Option<u64>) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[i].fetch_add(1, Relaxed);
        }
        if let Some(n) = count {
            self.c.refused_messages.fetch_add(n, Relaxed);
        }
    }

    pub fn errors_by_code(&self) -> Vec<(ErrorCode, u64)> {
        ErrorCode::ALL
            .iter()
            .zip(self.errors.iter())
            .map(|(c, n)| (*c, n.load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn error_total(&self) -> u64 {
        self.errors.iter().map(|n| n.load(Relaxed)).sum()
    }

    pub fn snapshot(&self) -> Snapshot {
        let c = &self.c;
        Snapshot {
            messages: c.messages_sent.load(Relaxed),
            samples: c.samples_sent.load(Relaxed),
            bytes: c.bytes_sent.load(Relaxed),
            acks: c.acks.load(Relaxed),
            acked: c.acked_messages.load(Relaxed),
            sessions: c.sessions_started.load(Relaxed),
            ends: c.sessions_ended.load(Relaxed),
        }
    }

    pub fn summary(&self, which: Latency) -> LatencySummary {
        LatencySummary::of(&lock(self.histogram(which)))
    }

    /// The 99th percentile so far, in microseconds (for the progress line).
    pub fn p99(&self, which: Latency) -> Option<u64> {
        let h = lock(self.histogram(which));
        (!h.is_empty()).then(|| h.value_at_quantile(0.99))
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl LatencySummary {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Buffers latencies of one task and adds them to the shared histogram in batches (the ack
/// path records one value per message).
pub struct Recorder {
    stats: Arc<Stats>,
    which: Latency,
    buf: Vec<u64>,
}

impl Recorder {
    const BATCH: usize = 256;

    pub fn new(stats: Arc<Stats>, which: Latency) -> Self {
        Recorder {
            stats,
            which,
            buf: Vec::new(),
        }
    }

    pub fn record(&mut self, us: u64) {
        self.buf.push(us.max(1));
        if self.buf.len() >= Self::BATCH {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut h = lock(self.stats.histogram(self.which));
        for v in self.buf.drain(..) {
            h.saturating_record(v);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_while_measuring() {
        let s = Stats::default();
        s.record(Latency::Start, 100);
        assert_eq!(s.summary(Latency::Start).count, 0);
        s.set_measuring(true);
        for v in 1..=1000 {
            s.record(Latency::Start, v);
        }
        let sum = s.summary(Latency::Start);
        assert_eq!(sum.count, 1000);
        assert!((495..=505).contains(&sum.p50));
        assert_eq!(sum.max, 1000);
    }

    #[test]
    fn recorder_flushes_on_drop_and_errors_count() {
        let s = Arc::new(Stats::default());
        {
            let mut r = Recorder::new(s.clone(), Latency::Ack);
            r.record(10);
            r.record(0);
        }
        assert_eq!(s.summary(Latency::Ack).count, 2);
        s.error(ErrorCode::SessionNotActive, Some(5));
        s.error(ErrorCode::SessionNotActive, None);
        assert_eq!(s.errors_by_code(), vec![(ErrorCode::SessionNotActive, 2)]);
        assert_eq!(s.c.refused_messages.load(Relaxed), 5);
    }
}
