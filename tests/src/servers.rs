//! Real `nats-server` (JetStream) and `redis-server` processes on free loopback ports, each with
//! its data in its own temporary directory. They support the faults the tests need: SIGKILL,
//! graceful stop, and restart on the SAME port and data directory.
//!
//! Start, kill and restart them from the test's own thread (see [`crate::process::Proc`]).

use crate::process::{free_port, log_says_port_in_use, Proc, Spec};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a server gets to accept connections after a (re)start.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts with fresh ports when the chosen one was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;

/// Where a server keeps its data and log: its own temporary directory, or a directory given by
/// the stack (so that all logs of one test live together).
enum Home {
    Owned(TempDir),
    Borrowed(PathBuf),
}

impl Home {
    fn path(&self) -> &Path {
        match self {
            Home::Owned(t) => t.path(),
            Home::Borrowed(p) => p,
        }
    }
}

fn new_home(dir: Option<&Path>, name: &str) -> Home {
    match dir {
        Some(d) => {
            let p = d.join(name);
            std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
            Home::Borrowed(p)
        }
        None => Home::Owned(
            tempfile::Builder::new()
                .prefix(&format!("amr-{name}-"))
                .tempdir()
                .expect("tempdir"),
        ),
    }
}

fn exited_early(proc_: &mut Proc) -> Option<String> {
    proc_.try_exit_status().map(|s| {
        format!(
            "{} exited during start-up ({s}); log tail:\n{}",
            proc_.spec.name,
            proc_.log_tail(30)
        )
    })
}

// ----------------------------------------------------------------------------------------
// NATS
// ----------------------------------------------------------------------------------------

/// A `nats-server -js` on a free loopback port, JetStream store in its own directory.
pub struct NatsServer {
    port: u16,
    proc_: Proc,
    // Declared last: the directory outlives the process that writes into it.
    home: Home,
}

impl NatsServer {
    /// Starts a server in a fresh temporary directory.
    pub async fn start() -> NatsServer {
        Self::start_in(None).await
    }

    /// Starts a server whose store and log live under `dir/nats` (or a fresh temporary
    /// directory when `dir` is `None`).
    pub async fn start_in(dir: Option<&Path>) -> NatsServer {
        let home = new_home(dir, "nats");
        let store = home.path().join("jetstream");
        let log = home.path().join("nats-server.log");
        let mut last_err = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let spec = Spec {
                name: format!("nats-server:{port}"),
                program: PathBuf::from("nats-server"),
                args: vec![
                    "-js".into(),
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string(),
                    "-sd".into(),
                    store.display().to_string(),
                ],
                env: vec![],
            };
            let mut proc_ = Proc::spawn(spec, log.clone());
            match wait_nats_ready(&mut proc_, port).await {
                Ok(()) => return NatsServer { port, proc_, home },
                Err(e) => {
                    proc_.kill();
                    if log_says_port_in_use(&proc_.log_text()) {
                        last_err = e;
                        continue;
                    }
                    panic!("{e}");
                }
            }
        }
        panic!("nats-server did not start after {PORT_ATTEMPTS} attempts: {last_err}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.home.path()
    }

    pub fn log_path(&self) -> &Path {
        &self.proc_.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.proc_.log_tail(lines)
    }

    pub fn is_running(&mut self) -> bool {
        self.proc_.is_running()
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc_.pid()
    }

    /// SIGKILL (the store keeps whatever JetStream had flushed).
    pub fn kill(&mut self) {
        self.proc_.kill();
    }

    /// Graceful stop (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&mut self) {
        self.proc_.stop(Duration::from_secs(10));
    }

    /// Starts again on the same port with the same store (stops it first if it runs).
    pub async fn restart(&mut self) {
        if self.proc_.is_running() {
            self.stop();
        }
        self.proc_.respawn();
        if let Err(e) = wait_nats_ready(&mut self.proc_, self.port).await {
            panic!("restart of nats-server on port {}: {e}", self.port);
        }
    }
}

async fn wait_nats_ready(proc_: &mut Proc, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(e) = exited_early(proc_) {
            return Err(e);
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            let url = format!("nats://127.0.0.1:{port}");
            let connected = tokio::time::timeout(
                Duration::from_secs(2),
                async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(1))
                    .connect(url),
            )
            .await;
            if let Ok(Ok(client)) = connected {
                // A round trip proves the server processes protocol, not only accepts TCP.
                let flushed = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
                if matches!(flushed, Ok(Ok(()))) {
                    return Ok(());
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "nats-server on port {port} not ready after {READY_TIMEOUT:?}; log tail:\n{}",
                proc_.log_tail(30)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ----------------------------------------------------------------------------------------
// Redis
// ----------------------------------------------------------------------------------------

/// A `redis-server` on a free loopback port, no persistence, working dir in its own directory.
pub struct RedisServer {
    port: u16,
    proc_: Proc,
    home: Home,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        Self::start_in(None).await
    }

    /// Starts a server whose directory and log are `dir/redis` (or a fresh temporary
    /// directory when `dir` is `None`).
    pub async fn start_in(dir: Option<&Path>) -> RedisServer {
        let home = new_home(dir, "redis");
        let log = home.path().join("redis-server.log");
        let mut last_err = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let spec = Spec {
                name: format!("redis-server:{port}"),
                program: PathBuf::from("redis-server"),
                args: vec![
                    "--port".into(),
                    port.to_string(),
                    "--bind".into(),
                    "127.0.0.1".into(),
                    "--save".into(),
                    "".into(),
                    "--appendonly".into(),
                    "no".into(),
                    "--dir".into(),
                    home.path().display().to_string(),
                ],
                env: vec![],
            };
            let mut proc_ = Proc::spawn(spec, log.clone());
            match wait_redis_ready(&mut proc_, port).await {
                Ok(()) => return RedisServer { port, proc_, home },
                Err(e) => {
                    proc_.kill();
                    if log_says_port_in_use(&proc_.log_text()) {
                        last_err = e;
                        continue;
                    }
                    panic!("{e}");
                }
            }
        }
        panic!("redis-server did not start after {PORT_ATTEMPTS} attempts: {last_err}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.home.path()
    }

    pub fn log_path(&self) -> &Path {
        &self.proc_.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.proc_.log_tail(lines)
    }

    pub fn is_running(&mut self) -> bool {
        self.proc_.is_running()
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc_.pid()
    }

    /// SIGKILL. Without persistence every key is gone after a restart.
    pub fn kill(&mut self) {
        self.proc_.kill();
    }

    pub fn stop(&mut self) {
        self.proc_.stop(Duration::from_secs(10));
    }

    /// Starts again on the same port and directory (stops it first if it runs).
    pub async fn restart(&mut self) {
        if self.proc_.is_running() {
            self.stop();
        }
        self.proc_.respawn();
        if let Err(e) = wait_redis_ready(&mut self.proc_, self.port).await {
            panic!("restart of redis-server on port {}: {e}", self.port);
        }
    }
}

/// One PING through the redis crate, bounded in time.
pub async fn redis_ping(url: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let fut = async {
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let pong: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(format!("PING answered {pong:?}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .map_err(|_| "PING timed out".to_string())?
}

async fn wait_redis_ready(proc_: &mut Proc, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let url = format!("redis://127.0.0.1:{port}");
    loop {
        if let Some(e) = exited_early(proc_) {
            return Err(e);
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
            && redis_ping(&url).await.is_ok()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "redis-server on port {port} not ready after {READY_TIMEOUT:?}; log tail:\n{}",
                proc_.log_tail(30)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
