//! One child process with its output captured to a log file, killed on drop.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A free loopback TCP port, never handed out twice by this test process. The port is free
/// when returned but not reserved: callers retry with a new one when the child reports the
/// address in use.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        // Never hand out the system services' ports, whatever the kernel says.
        if port == 4222 || port == 6379 {
            continue;
        }
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// True when a log says the child could not bind its port (another process took it between
/// [`free_port`] and the child's bind).
pub fn log_says_port_in_use(log: &str) -> bool {
    let l = log.to_ascii_lowercase();
    l.contains("address already in use") || l.contains("addrinuse") || l.contains("eaddrinuse")
}

/// How to (re)start a child: program, arguments, environment.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// A running (or stopped) child process. Output goes to `log`, appended across restarts.
#[derive(Debug)]
pub struct Proc {
    pub spec: Spec,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Spawns the child; its stdout and stderr are appended to `log`.
    pub fn spawn(spec: Spec, log: PathBuf) -> Proc {
        let mut p = Proc {
            spec,
            log,
            child: None,
        };
        p.respawn();
        p
    }

    /// Starts the child again with the same spec (after a kill or a stop).
    pub fn respawn(&mut self) {
        assert!(
            !self.is_running(),
            "{} is still running: stop it before respawning",
            self.spec.name
        );
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open log {}: {e}", self.log.display()));
        let err = out.try_clone().expect("clone log handle");
        let mut cmd = Command::new(&self.spec.program);
        cmd.args(&self.spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        // Configuration comes only from the spec: drop any AMR_* the test runner inherited.
        for (k, _) in std::env::vars() {
            if k.starts_with("AMR_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &self.spec.env {
            cmd.env(k, v);
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            // The child is killed when the thread that spawned it dies: tests spawn from their
            // own thread and drop the stack before it ends, so this only matters when the test
            // process itself dies without running destructors (SIGKILL, abort).
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "spawn {} ({}): {e}",
                self.spec.name,
                self.spec.program.display()
            )
        });
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True while the child runs (reaps it when it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    /// The exit status if the child has exited (without waiting).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) without waiting.
    pub fn signal(&mut self, sig: i32) {
        if let Some(pid) = self.pid() {
            if self.is_running() {
                // SAFETY: plain kill(2) on our own child's pid (not yet reaped, so not reused).
                unsafe {
                    libc::kill(pid as libc::pid_t, sig);
                }
            }
        }
    }

    /// Waits up to `timeout` for the child to exit; returns its status, or `None` if it still
    /// runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit_status() {
                self.child = None;
                return Some(s);
            }
            self.child.as_ref()?;
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Graceful stop: SIGTERM, wait up to `timeout`, then SIGKILL.
    pub fn stop(&mut self, timeout: Duration) {
        self.signal(libc::SIGTERM);
        if self.wait_exit(timeout).is_none() {
            self.kill();
        }
    }

    /// The whole log so far (lossy UTF-8).
    pub fn log_text(&self) -> String {
        read_lossy(&self.log)
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_lossy(path: &Path) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last `lines` lines of a file (reads at most the last 256 KiB).
pub fn tail(path: &Path, lines: usize) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let start = len.saturating_sub(256 * 1024);
        let _ = f.seek(SeekFrom::Start(start));
        let _ = f.read_to_end(&mut buf);
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
