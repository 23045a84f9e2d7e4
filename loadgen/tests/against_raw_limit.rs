//! amr-loadgen drives the raw-limit server end to end (both binaries of this crate), on a free
//! loopback port: sessions start and end, data is counted, the JSON report is complete.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn start_raw_limit() -> (Server, String) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_raw-limit"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--threads", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("raw-limit starts");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "raw-limit did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, format!("ws://127.0.0.1:{port}/ws"))
}

fn loadgen(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_amr-loadgen"))
        .args(args)
        .args(["--json", "--quiet", "--warmup", "200ms", "--threads", "1"])
        .output()
        .expect("amr-loadgen runs");
    assert!(
        out.status.success(),
        "amr-loadgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

#[test]
fn cycle_mode_counts_sessions_and_data() {
    let (server, url) = start_raw_limit();
    let pid = server.0.id().to_string();
    let r = loadgen(&[
        "--url",
        &url,
        "-n",
        "5",
        "--mode",
        "cycle",
        "--rate",
        "200",
        "--session-secs",
        "0.3",
        "--batch",
        "3",
        "--duration",
        "1500ms",
        "--gateway-pid",
        &pid,
    ]);
    assert_eq!(r["connections"]["connected"], 5);
    assert_eq!(r["connections"]["failures"], 0);
    let started = r["sessions"]["started"].as_u64().unwrap();
    assert!(started >= 10, "{r}");
    assert_eq!(r["sessions"]["ended"].as_u64().unwrap(), started);
    assert_eq!(r["sessions"]["data_count_mismatches"], 0);
    assert_eq!(r["sessions"]["start_timeouts"], 0);
    assert!(r["session_start_us"]["count"].as_u64().unwrap() > 0);
    assert!(r["session_start_us"]["p50"].as_u64().unwrap() > 0);
    let msgs = r["messages"]["sent"].as_u64().unwrap();
    assert!(msgs > 100, "{r}");
    assert_eq!(r["messages"]["samples"].as_u64().unwrap(), msgs * 3);
    assert!(r["server"]["rss_end_kib"].as_u64().unwrap() > 0);
    assert!(r["errors"].as_object().unwrap().is_empty());
}

#[test]
fn ingest_mode_confirms_every_message() {
    let (_server, url) = start_raw_limit();
    let r = loadgen(&[
        "--url",
        &url,
        "-n",
        "3",
        "--mode",
        "ingest",
        "--rate",
        "0",
        "--duration",
        "1s",
    ]);
    let sent = r["messages"]["samples"].as_u64().unwrap();
    assert!(sent > 1000, "{r}");
    assert_eq!(r["messages"]["confirmed_samples"].as_u64().unwrap(), sent);
    assert_eq!(r["sessions"]["data_count_mismatches"], 0);
}

#[test]
fn refuses_non_loopback_targets() {
    let out = Command::new(env!("CARGO_BIN_EXE_amr-loadgen"))
        .args(["--url", "ws://192.0.2.1:8080/ws", "--duration", "1s"])
        .output()
        .expect("amr-loadgen runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}
