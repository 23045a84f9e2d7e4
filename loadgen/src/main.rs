//! `amr-loadgen`: see the crate docs and `bench/results/README.md`.

use amr_loadgen::cli::{Args, Mode};
use amr_loadgen::device::{self, Ctx};
use amr_loadgen::report::{
    Acks, Connections, MachineCpu, Messages, ProcFigures, Report, RunConfig, Sessions,
};
use amr_loadgen::stats::{Latency, Snapshot, Stats};
use amr_loadgen::sys::{self, FdLimit};
use amr_loadgen::target::Target;
use clap::Parser;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, Instant};

fn main() -> ExitCode {
    let args = Args::parse();
    let target = match Target::parse(&args.url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("amr-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let fd_limit = sys::raise_fd_limit();
    if let Some(l) = fd_limit {
        let needed = args.devices as u64 + 64;
        if l.soft < needed {
            eprintln!(
                "amr-loadgen: the file-descriptor limit ({}, hard {}) is too low for {} connections: \
                 raise it first (ulimit -n {needed})",
                l.soft, l.hard, args.devices
            );
            return ExitCode::from(2);
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.unwrap_or(cores).max(1);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("amr-loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = args.json;
    let report = runtime.block_on(run(args, target, fd_limit, threads, cores));
    // Devices that did not finish were aborted; don't wait for their sockets.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if json {
        match serde_json::to_string(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("amr-loadgen: cannot serialise the report: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.to_text());
    }
    if report.connections.connected == 0 {
        eprintln!("amr-loadgen: no connection succeeded");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

const PHASE_RAMP: u8 = 0;
const PHASE_WARMUP: u8 = 1;
const PHASE_MEASURE: u8 = 2;
const PHASE_DRAIN: u8 = 3;

fn phase_name(p: u8) -> &'static str {
    match p {
        PHASE_RAMP => "ramp",
        PHASE_WARMUP => "warmup",
        PHASE_MEASURE => "measure",
        _ => "drain",
    }
}

/// CPU ticks of a process at the start of the window.
struct CpuMark {
    pid: u32,
    ticks: Option<u64>,
}

impl CpuMark {
    fn take(pid: u32) -> Self {
        CpuMark {
            pid,
            ticks: sys::cpu_ticks(pid),
        }
    }

    /// Fills the CPU figures of `p` for the window that ends now.
    fn finish(&self, p: &mut ProcFigures, window: f64, messages: u64, sessions: u64) {
        let (Some(a), Some(b)) = (self.ticks, sys::cpu_ticks(self.pid)) else {
            return;
        };
        let secs = b.saturating_sub(a) as f64 / sys::clock_ticks_per_sec();
        p.cpu_secs = Some(round(secs, 3));
        if window > 0.0 {
            p.cpu_percent = Some(round(secs / window * 100.0, 1));
        }
        if messages > 0 {
            p.cpu_us_per_message = Some(round(secs * 1e6 / messages as f64, 3));
        }
        if sessions > 0 {
            p.cpu_us_per_session = Some(round(secs * 1e6 / sessions as f64, 1));
        }
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

fn proc_before(pid: u32) -> ProcFigures {
    ProcFigures {
        pid,
        rss_before_kib: sys::rss_kib(pid),
        ..ProcFigures::default()
    }
}

/// Sleeps for `d` unless interrupted (Ctrl-C). Returns true when interrupted.
async fn sleep_or_interrupt(d: Duration, interrupt: &mut watch::Receiver<bool>) -> bool {
    if *interrupt.borrow() {
        return true;
    }
    tokio::select! {
        _ = sleep(d) => false,
        _ = interrupt.changed() => true,
    }
}

async fn run(
    args: Args,
    target: Target,
    fd_limit: Option<FdLimit>,
    threads: usize,
    cores: usize,
) -> Report {
    let stats = Arc::new(Stats::default());
    let ctx = Arc::new(Ctx {
        args: args.clone(),
        target,
        stats: stats.clone(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (interrupt_tx, mut interrupt) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("amr-loadgen: interrupted, finishing the run");
            let _ = interrupt_tx.send(true);
        }
    });

    let self_pid = std::process::id();
    let mut server = args.gateway_pid.map(proc_before);
    let mut watched: BTreeMap<String, ProcFigures> = args
        .watch
        .iter()
        .map(|(name, pid)| (name.clone(), proc_before(*pid)))
        .collect();
    let mut loadgen = proc_before(self_pid);

    let phase = Arc::new(AtomicU8::new(PHASE_RAMP));
    let t0 = Instant::now();
    let progress = (!args.quiet).then(|| {
        tokio::spawn(progress_loop(
            stats.clone(),
            phase.clone(),
            t0,
            args.devices,
            args.mode,
        ))
    });

    // Ramp-up: device i connects at t0 + i / connect_rate.
    let step = if args.connect_rate > 0.0 {
        Duration::from_secs_f64(1.0 / args.connect_rate)
    } else {
        Duration::ZERO
    };
    let mut devices = JoinSet::new();
    for i in 0..args.devices {
        let start_at = t0 + step.saturating_mul(u32::try_from(i).unwrap_or(u32::MAX));
        devices.spawn(device::run(ctx.clone(), i, start_at, stop_rx.clone()));
    }
    let ramp_deadline = t0
        + step.saturating_mul(u32::try_from(args.devices).unwrap_or(u32::MAX))
        + args.connect_timeout
        + Duration::from_secs(2);
    while stats.c.ramped.load(Relaxed) < args.devices as u64 && Instant::now() < ramp_deadline {
        if sleep_or_interrupt(Duration::from_millis(20), &mut interrupt).await {
            break;
        }
    }
    let ramp_secs = t0.elapsed().as_secs_f64();
    for p in server.iter_mut().chain(watched.values_mut()) {
        p.rss_after_ramp_kib = sys::rss_kib(p.pid);
    }
    loadgen.rss_after_ramp_kib = sys::rss_kib(self_pid);

    phase.store(PHASE_WARMUP, Relaxed);
    sleep_or_interrupt(args.warmup, &mut interrupt).await;

    // The measured window.
    phase.store(PHASE_MEASURE, Relaxed);
    stats.set_measuring(true);
    let s0 = stats.snapshot();
    let w0 = Instant::now();
    let server_cpu = server.as_ref().map(|p| CpuMark::take(p.pid));
    let watched_cpu: Vec<CpuMark> = watched.values().map(|p| CpuMark::take(p.pid)).collect();
    let self_cpu = CpuMark::take(self_pid);
    let machine0 = sys::machine_ticks();
    sleep_or_interrupt(args.duration, &mut interrupt).await;
    let machine1 = sys::machine_ticks();
    let window = w0.elapsed().as_secs_f64();
    let s1 = stats.snapshot();
    stats.set_measuring(false);
    let open_at_end = stats.c.open.load(Relaxed);
    let d = Snapshot {
        messages: s1.messages - s0.messages,
        samples: s1.samples - s0.samples,
        bytes: s1.bytes - s0.bytes,
        acks: s1.acks - s0.acks,
        acked: s1.acked - s0.acked,
        sessions: s1.sessions - s0.sessions,
        ends: s1.ends - s0.ends,
    };
    let finish = |p: &mut ProcFigures, mark: &CpuMark, per_conn: bool| {
        mark.finish(p, window, d.messages, d.sessions);
        p.rss_end_kib = sys::rss_kib(p.pid);
        if per_conn && open_at_end > 0 {
            if let (Some(a), Some(b)) = (p.rss_before_kib, p.rss_end_kib) {
                let per = (b as f64 - a as f64) * 1024.0 / open_at_end as f64;
                p.rss_per_connection_bytes = Some(per.round());
            }
        }
    };
    if let (Some(p), Some(mark)) = (server.as_mut(), server_cpu.as_ref()) {
        finish(p, mark, true);
    }
    for (p, mark) in watched.values_mut().zip(watched_cpu.iter()) {
        finish(p, mark, false);
    }
    finish(&mut loadgen, &self_cpu, true);
    let mut machine = MachineCpu {
        cores,
        ..MachineCpu::default()
    };
    if let (Some((b0, _)), Some((b1, _))) = (machine0, machine1) {
        if window > 0.0 {
            let busy = b1.saturating_sub(b0) as f64 / sys::clock_ticks_per_sec() / window * 100.0;
            let ours: f64 = server
                .iter()
                .chain(watched.values())
                .chain(std::iter::once(&loadgen))
                .filter_map(|p| p.cpu_percent)
                .sum();
            machine.busy_percent = Some(round(busy, 1));
            machine.other_cpu_percent = Some(round((busy - ours).max(0.0), 1));
        }
    }

    // Stop: every device ends its session (dataCount check) and closes.
    phase.store(PHASE_DRAIN, Relaxed);
    let _ = stop_tx.send(true);
    let drain = args.reply_timeout * 2 + args.ack_drain + Duration::from_secs(5);
    let _ = timeout(drain, async {
        while devices.join_next().await.is_some() {}
    })
    .await;
    let unfinished = devices.len() as u64;
    devices.abort_all();
    if let Some(p) = progress {
        p.abort();
    }

    let c = &stats.c;
    let per_sec = |n: u64| {
        if window > 0.0 {
            round(n as f64 / window, 1)
        } else {
            0.0
        }
    };
    Report {
        label: args.label.clone(),
        mode: args.mode.as_str(),
        url: args.url.clone(),
        devices: args.devices,
        config: RunConfig {
            rate_hz_per_device: args.rate,
            session_secs: args.session_secs,
            messages_per_session: args.messages_per_session,
            pause_ms: args.pause.as_millis(),
            batch: args.batch,
            seq: args.seq,
            payload_bytes: args.payload_bytes,
            pipeline: args.pipeline,
            connect_rate: args.connect_rate,
            warmup_secs: args.warmup.as_secs_f64(),
            duration_secs: args.duration.as_secs_f64(),
            threads,
            source_ips: args.source_ips,
            cores,
        },
        ramp_secs: round(ramp_secs, 2),
        window_secs: round(window, 2),
        connections: Connections {
            connected: c.connects.load(Relaxed),
            failures: c.connect_failures.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            open_at_end,
            registered: c.registered.load(Relaxed),
        },
        sessions: Sessions {
            started: c.sessions_started.load(Relaxed),
            ended: c.sessions_ended.load(Relaxed),
            started_per_sec: per_sec(d.sessions),
            start_timeouts: c.start_timeouts.load(Relaxed),
            end_timeouts: c.end_timeouts.load(Relaxed),
            data_count_mismatches: c.data_count_mismatches.load(Relaxed),
            unsolicited_ends: c.unsolicited_ends.load(Relaxed),
        },
        session_start_us: stats.summary(Latency::Start),
        session_end_us: stats.summary(Latency::End),
        messages: Messages {
            sent: c.messages_sent.load(Relaxed),
            samples: c.samples_sent.load(Relaxed),
            bytes: c.bytes_sent.load(Relaxed),
            per_sec: per_sec(d.messages),
            samples_per_sec: per_sec(d.samples),
            mib_per_sec: if window > 0.0 {
                round(d.bytes as f64 / window / (1024.0 * 1024.0), 2)
            } else {
                0.0
            },
            confirmed_samples: c.confirmed_samples.load(Relaxed),
            confirmed_samples_per_sec: stats
                .confirmed_span_secs()
                .map(|span| round(c.confirmed_samples.load(Relaxed) as f64 / span, 1)),
        },
        acks: Acks {
            received: c.acks.load(Relaxed),
            per_sec: per_sec(d.acks),
            acked_messages: c.acked_messages.load(Relaxed),
            acked_messages_per_sec: per_sec(d.acked),
            unacked_messages: c.unacked_messages.load(Relaxed),
            latency_us: stats.summary(Latency::Ack),
        },
        errors: stats
            .errors_by_code()
            .into_iter()
            .map(|(code, n)| (code.as_str().to_owned(), n))
            .collect(),
        refused_messages: c.refused_messages.load(Relaxed),
        unparsable_frames: c.unparsable.load(Relaxed),
        server,
        watched,
        loadgen,
        machine,
        fd_limit,
        unfinished_devices: unfinished,
    }
}

/// One line on stderr per second.
async fn progress_loop(
    stats: Arc<Stats>,
    phase: Arc<AtomicU8>,
    t0: Instant,
    devices: usize,
    mode: Mode,
) {
    let mut last = stats.snapshot();
    let mut last_t = Instant::now();
    loop {
        sleep(Duration::from_secs(1)).await;
        let now = stats.snapshot();
        let dt = last_t.elapsed().as_secs_f64().max(1e-3);
        last_t = Instant::now();
        let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / dt;
        let c = &stats.c;
        let mut line = format!(
            "[{:>6.1}s {:<7}] conns {}/{} (failed {}, dropped {})",
            t0.elapsed().as_secs_f64(),
            phase_name(phase.load(Relaxed)),
            c.open.load(Relaxed),
            devices,
            c.connect_failures.load(Relaxed),
            c.dropped.load(Relaxed),
        );
        if mode != Mode::Idle {
            line.push_str(&format!(
                " | sessions {} ({:.0}/s) start p99 {}",
                now.sessions,
                rate(now.sessions, last.sessions),
                stats.p99(Latency::Start).map_or_else(
                    || "-".to_owned(),
                    |us| format!("{:.2}ms", us as f64 / 1000.0)
                ),
            ));
        }
        if matches!(mode, Mode::Cycle | Mode::Ingest) {
            line.push_str(&format!(
                " | msgs {} ({:.0}/s)",
                now.messages,
                rate(now.messages, last.messages)
            ));
            if now.acks > 0 {
                line.push_str(&format!(" acked {:.0}/s", rate(now.acked, last.acked)));
            }
        }
        line.push_str(&format!(
            " | errors {} mismatches {}",
            stats.error_total(),
            c.data_count_mismatches.load(Relaxed)
        ));
        eprintln!("{line}");
        last = now;
    }
}
