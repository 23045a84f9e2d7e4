#!/usr/bin/env python3
"""Merges the amr-loadgen reports of one bench/run.sh run into results-<stamp>.json and a
Markdown table (results-<stamp>.md). Called by run.sh with the run names as arguments; reads
$TMP/results/<name>.json and the machine facts from the environment."""

import json
import os
import sys

TMP = os.environ["TMP"]
OUT = os.environ["OUT"]
STAMP = os.environ["STAMP"]


def load(name):
    path = os.path.join(TMP, "results", name + ".json")
    try:
        with open(path) as f:
            text = f.read().strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


runs = {name: load(name) for name in sys.argv[1:]}
machine = {
    "cores": os.environ.get("MACHINE_CORES"),
    "memory": os.environ.get("MACHINE_MEM"),
    "cpu": os.environ.get("MACHINE_CPU"),
    "kernel": os.environ.get("MACHINE_KERNEL"),
    "nats_server": os.environ.get("V_NATS"),
    "redis_server": os.environ.get("V_REDIS"),
    "python": os.environ.get("V_PY"),
    "git": os.environ.get("GIT_REV"),
    "binaries": os.environ.get("BINARIES"),
    "quick": os.environ.get("QUICK") == "1",
    "note": "everything on one box: servers, brokers and the load tool share the cores",
    "busy_before_percent": os.environ.get("BUSY_BEFORE"),
    "loadavg_before": os.environ.get("LOADAVG_BEFORE"),
    "loadavg_after": os.environ.get("LOADAVG_AFTER"),
}


def get(r, *path):
    for p in path:
        if r is None:
            return None
        r = r.get(p) if isinstance(r, dict) else None
    return r


def ms(us):
    return "-" if us is None else f"{us / 1000:.2f}"


def num(v, fmt="{:,.0f}"):
    return "-" if v is None else fmt.format(v)


def stack_cpu(r, key):
    """CPU per unit of the whole stack (server + watched processes)."""
    vals = [get(r, "server", key)] + [w.get(key) for w in (get(r, "watched") or {}).values()]
    vals = [v for v in vals if v is not None]
    return sum(vals) if vals else None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 2)


SERVERS = [("gw", "amr-gateway stack"), ("py", "Python baseline"), ("raw", "raw limit")]

ratios = {}
for base in ("py", "raw"):
    g_paced, b_paced = runs.get("gw-sessions-paced"), runs.get(f"{base}-sessions-paced")
    g_max, b_max = runs.get("gw-sessions-max"), runs.get(f"{base}-sessions-max")
    g_ing, b_ing = runs.get("gw-ingest"), runs.get(f"{base}-ingest")
    g_idle, b_idle = runs.get("gw-idle-10k"), runs.get(f"{base}-idle-10k")
    ratios[f"gateway_vs_{base}"] = {
        "paced_start_p50": ratio(get(g_paced, "session_start_us", "p50"), get(b_paced, "session_start_us", "p50")),
        "paced_start_p99": ratio(get(g_paced, "session_start_us", "p99"), get(b_paced, "session_start_us", "p99")),
        "max_sessions_per_sec": ratio(get(g_max, "sessions", "started_per_sec"), get(b_max, "sessions", "started_per_sec")),
        "max_start_p50": ratio(get(g_max, "session_start_us", "p50"), get(b_max, "session_start_us", "p50")),
        "ingest_msgs_per_sec": ratio(get(g_ing, "messages", "per_sec"), get(b_ing, "messages", "per_sec")),
        "ingest_confirmed_per_sec": ratio(get(g_ing, "messages", "confirmed_samples_per_sec"), get(b_ing, "messages", "confirmed_samples_per_sec")),
        "ingest_seq_msgs_per_sec": ratio(get(runs.get("gw-ingest-seq"), "messages", "per_sec"), get(b_ing, "messages", "per_sec")),
        "rss_per_connection": ratio(get(g_idle, "server", "rss_per_connection_bytes"), get(b_idle, "server", "rss_per_connection_bytes")),
    }

result = {"stamp": STAMP, "machine": machine, "runs": runs, "ratios": ratios}
os.makedirs(OUT, exist_ok=True)
with open(os.path.join(OUT, f"results-{STAMP}.json"), "w") as f:
    json.dump(result, f, indent=1)

md = []
w = md.append
w(f"# AMR Bridge benchmarks, {STAMP}")
w("")
w(f"Machine: {machine['cores']} cores ({machine['cpu']}), {machine['memory']}, Linux {machine['kernel']}; "
  f"{machine['nats_server']}, redis {machine['redis_server']}, Python {machine['python']}; git {machine['git']}"
  + ("; QUICK run (short windows)" if machine["quick"] else "") + ".")
w(f"Binaries: {machine['binaries']}(git HEAD at run time: {machine['git']}; with --no-build the "
  "binaries may be older than HEAD).")
w("Everything runs on this one box: the load tool, the gateway, the session service, NATS and Redis "
  "share the cores, so the load tool's own CPU is taken from the servers. `other CPU %` is the "
  "machine's CPU in the window that none of the benchmark's processes used (100 = one core): "
  "other work on the machine; figures of a run where it is large are disturbed.")
w(f"Machine before the run: {machine['busy_before_percent']}% CPU busy (of {machine['cores']}00%), "
  f"load average {machine['loadavg_before']}; after: load average {machine['loadavg_after']}.")
w("")

w("## (a) Session start latency (1,000 connected devices doing session_start / session_end)")
w("")
w("`paced`: each device waits 1 s after session_ended before the next start (about 1,000 starts/s "
  "offered). `max`: no pause (closed loop, saturation: latency includes queueing). `light`: 10 s "
  "pause. `one device`: a single connection doing start and end back to back, nothing else running: "
  "the floor of the round trip through every hop.")
w("")
w("| server | load | sessions/s | start p50 | p90 | p99 | p99.9 | max (ms) | end p50 | end p99 (ms) | errors | server CPU % | stack CPU us/session | loadgen CPU % | other CPU % |")
w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
rows_a = [(f"{k}-sessions-{load}", label, load) for k, label in SERVERS for load in ("paced", "max")]
rows_a.insert(2, ("gw-fleet", "amr-gateway stack", "fleet: 5 s sessions of 10 Hz data (seq), 1 s pause"))
rows_a.insert(3, ("gw-sessions-light", "amr-gateway stack", "light: 10 s pause (about 100 starts/s)"))
rows_a.insert(4, ("gw-sessions-serial", "amr-gateway stack", "one device, back to back"))
for name, label, load in rows_a:
    r = runs.get(name)
    if r is None:
        continue
    s, e = r["session_start_us"], r["session_end_us"]
    errs = sum(r["errors"].values()) + r["sessions"]["start_timeouts"] + r["sessions"]["end_timeouts"]
    w(f"| {label} | {load} | {num(r['sessions']['started_per_sec'])} | {ms(s['p50'])} | {ms(s['p90'])} | "
      f"{ms(s['p99'])} | {ms(s['p999'])} | {ms(s['max'])} | {ms(e['p50'])} | {ms(e['p99'])} | {errs} | "
      f"{num(get(r, 'server', 'cpu_percent'))} | {num(stack_cpu(r, 'cpu_us_per_session'), '{:,.1f}')} | "
      f"{num(get(r, 'loadgen', 'cpu_percent'))} | {num(get(r, 'machine', 'other_cpu_percent'))} |")
w("")

hops = [(n, runs.get(n)) for n in ("hops-100", "hops-1000") if runs.get(n)]
if hops:
    w("The hops of that path by themselves (`hop-latency`, paced, on the same nats-server and "
      "redis-server): a session start crosses one NATS request/reply and one or two Redis round "
      "trips, plus the WebSocket round trip (the raw limit's `paced` row).")
    w("")
    w("| hop | rate | p50 | p90 | p99 | p99.9 | max (ms) |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in hops:
        for key, label in (("nats_request_reply_us", "NATS request/reply"), ("redis_ping_us", "Redis PING")):
            h = r.get(key) or {}
            w(f"| {label} | {num(r.get('rate_per_sec'))}/s | {ms(h.get('p50'))} | {ms(h.get('p90'))} | "
              f"{ms(h.get('p99'))} | {ms(h.get('p999'))} | {ms(h.get('max'))} |")
    w("")

w("## (b) Ingest through one gateway (50 devices, 200-byte sensor_data, unlimited rate, pipelined)")
w("")
w("`msg/s`: sent in the measured window (TCP backpressure makes it the server's read rate; socket "
  "buffers add a backlog). `confirmed/s`: samples the server counted (dataCount of the final "
  "session_ended) from the first message to the last session_ended, backlog included; `drain`: "
  "that final session_end round trip (time to work off the backlog).")
w("")
w("| server | mode | msg/s | confirmed/s | MiB/s | drain p50 (ms) | acked msg/s | ack p50 | ack p99 | ack max (ms) | unacked | dataCount mismatches | errors | server CPU % | server CPU us/msg | stack CPU us/msg | loadgen CPU % | other CPU % |")
w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for name, label, mode in [("gw-ingest", "amr-gateway stack", "fire-and-forget"),
                          ("gw-ingest-seq", "amr-gateway stack", "seq + acks (JetStream), max 1024 unacked/device"),
                          ("gw-ingest-seq-paced", "amr-gateway stack", "seq + acks, paced 50 x 200 Hz"),
                          ("py-ingest", "Python baseline", "fire-and-forget"),
                          ("raw-ingest", "raw limit", "fire-and-forget")]:
    r = runs.get(name)
    if r is None:
        continue
    a = r["acks"]
    seq = r["config"]["seq"]
    w(f"| {label} | {mode} | {num(r['messages']['per_sec'])} | {num(r['messages'].get('confirmed_samples_per_sec'))} | "
      f"{num(r['messages']['mib_per_sec'], '{:.1f}')} | {ms(r['session_end_us']['p50'])} | "
      f"{num(a['acked_messages_per_sec']) if seq else '-'} | {ms(a['latency_us']['p50']) if seq else '-'} | "
      f"{ms(a['latency_us']['p99']) if seq else '-'} | {ms(a['latency_us']['max']) if seq else '-'} | "
      f"{a['unacked_messages'] if seq else '-'} | {r['sessions']['data_count_mismatches']} | {sum(r['errors'].values())} | "
      f"{num(get(r, 'server', 'cpu_percent'))} | {num(get(r, 'server', 'cpu_us_per_message'), '{:.2f}')} | "
      f"{num(stack_cpu(r, 'cpu_us_per_message'), '{:.2f}')} | {num(get(r, 'loadgen', 'cpu_percent'))} | "
      f"{num(get(r, 'machine', 'other_cpu_percent'))} |")
w("")

w("## (c) Idle connections (registered, held)")
w("")
w("| server | connections open | RSS before (MiB) | RSS with connections (MiB) | bytes per connection | failures |")
w("|---|---:|---:|---:|---:|---:|")
for key, label in SERVERS:
    r = runs.get(f"{key}-idle-10k")
    if r is None:
        continue
    sv = r.get("server") or {}
    mib = lambda k: "-" if sv.get(k) is None else f"{sv[k] / 1024:.1f}"
    w(f"| {label} | {r['connections']['open_at_end']:,} | {mib('rss_before_kib')} | {mib('rss_end_kib')} | "
      f"{num(sv.get('rss_per_connection_bytes'))} | {r['connections']['failures']} |")
w("")
g = runs.get("gw-idle-10k")
if g:
    others = ", ".join(f"{n} {(p.get('rss_end_kib') or 0) / 1024:.1f} MiB (before {(p.get('rss_before_kib') or 0) / 1024:.1f})"
                       for n, p in (g.get("watched") or {}).items())
    if others:
        w(f"Rest of the stack during the gateway idle run: {others}.")
        w("")

w("## (d) Ratios (gateway stack / baseline)")
w("")
w("| ratio | vs Python baseline | vs raw limit |")
w("|---|---:|---:|")
labels = {
    "paced_start_p50": "session start p50, paced (lower is better)",
    "paced_start_p99": "session start p99, paced (lower is better)",
    "max_sessions_per_sec": "sessions/s at saturation (higher is better)",
    "max_start_p50": "session start p50 at saturation (lower is better)",
    "ingest_msgs_per_sec": "ingest msg/s, fire-and-forget (higher is better)",
    "ingest_confirmed_per_sec": "ingest samples/s confirmed by dataCount, fire-and-forget (higher is better)",
    "ingest_seq_msgs_per_sec": "ingest msg/s with seq+acks vs baseline fire-and-forget",
    "rss_per_connection": "RSS per idle connection (lower is better)",
}
for k, label in labels.items():
    a = ratios["gateway_vs_py"].get(k)
    b = ratios["gateway_vs_raw"].get(k)
    w(f"| {label} | {'-' if a is None else a} | {'-' if b is None else b} |")
w("")
missing = [n for n, r in runs.items() if r is None]
if missing:
    w(f"Runs without a report (failed or timed out): {', '.join(missing)}.")
    w("")

with open(os.path.join(OUT, f"results-{STAMP}.md"), "w") as f:
    f.write("\n".join(md))
