//! `Stack`: one complete AMR Bridge deployment per test, on free loopback ports.
//!
//! ```ignore
//! let stack = Stack::builder()
//!     .env("AMR_SESSION_IDLE_TIMEOUT", "2s") // every product process
//!     .service_env("AMR_CONFLICT_POLICY", "reject")
//!     .gateways(2)
//!     .services(2)
//!     .start()
//!     .await;
//! let mut c = stack.client(0).await;
//! ```
//!
//! Start order: servers, session services, gateways; each product process must answer
//! `GET /readyz` with 200 before the next starts. Every child's stdout/stderr goes to a file in
//! the stack's temporary directory; when a test fails, the tail of every log is printed.
//! Children are killed on drop. Set `AMR_TEST_KEEP=1` to keep the directory (path printed).
//!
//! Modes ([`Mode`]):
//! - [`Mode::Distributed`]: `nats-server` + `redis-server` + N `amr-session-service` +
//!   M `amr-gateway`.
//! - [`Mode::Embedded`]: ONE `amr-bridge` process without `AMR_NATS_URL` (no NATS, no Redis),
//!   its `AMR_DATA_DIR` in the stack's directory ([`Stack::data_dir`]). It is the stack's only
//!   node and stands at index 0 of the gateways: `ws_url(0)`, `http_url(0)`, `client(0)` reach
//!   it, and [`Stack::api_url`] is its HTTP port. Every builder variable (`env`,
//!   `gateway_env`, `service_env`) goes to it. `gateways(n)`/`services(n)` with n > 1 panic.
//!
//! Mode-neutral accessors: [`Stack::stored_messages`] / [`Stack::stored_payloads`] /
//! [`Stack::stored_count`] / [`Stack::wait_stored_count`] (JetStream, or the session's NDJSON
//! file), [`Stack::events`] (core NATS subscriber, or `sessions.ndjson`),
//! [`Stack::expected_payload`] (what the mode stores for a client's text),
//! [`Stack::get_session`] / [`Stack::list_sessions`] / [`Stack::sessions_page`],
//! [`Stack::product_http_urls`]. NATS/Redis-specific accessors ([`Stack::nats_url`],
//! [`Stack::jetstream`], [`Stack::redis_url`], service nodes) panic in embedded mode; tests
//! that need them say so by using them.

use crate::binaries;
use crate::client::WsClient;
use crate::events::EventCollector;
use crate::files;
use crate::http;
use crate::jetstream::{JetStreamReader, StoredMessage};
use crate::process::{free_port, log_says_port_in_use, Proc, Spec};
use crate::servers::{NatsServer, RedisServer};
use amr_proto::events::{SessionPage, SessionRecord, SessionState};
use amr_proto::subjects::{Subjects, DEFAULT_PREFIX};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a product process gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const PORT_ATTEMPTS: usize = 4;

/// How the product is deployed for a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `nats-server` + `redis-server` + N `amr-session-service` + M `amr-gateway`.
    Distributed,
    /// One `amr-bridge` process (no `AMR_NATS_URL`): sessions in memory, data in NDJSON files.
    Embedded,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Distributed => "distributed",
            Mode::Embedded => "embedded",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Gateway,
    Service,
    /// `amr-bridge` in embedded mode: gateway and session service in one process.
    Bridge,
}

impl Role {
    fn binary(self) -> &'static str {
        match self {
            Role::Gateway => binaries::GATEWAY,
            Role::Service => binaries::SESSION_SERVICE,
            Role::Bridge => binaries::EMBEDDED,
        }
    }

    fn short(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Service => "service",
            Role::Bridge => "bridge",
        }
    }

    fn has_ws(self) -> bool {
        matches!(self, Role::Gateway | Role::Bridge)
    }
}

pub struct StackBuilder {
    mode: Mode,
    gateways: usize,
    services: usize,
    prefix: Option<String>,
    env: Vec<(String, String)>,
    gateway_env: Vec<(String, String)>,
    service_env: Vec<(String, String)>,
    fixed_gateway_ids: bool,
}

impl Default for StackBuilder {
    fn default() -> Self {
        StackBuilder {
            mode: Mode::Distributed,
            gateways: 1,
            services: 1,
            prefix: None,
            env: Vec::new(),
            gateway_env: Vec::new(),
            service_env: Vec::new(),
            fixed_gateway_ids: false,
        }
    }
}

impl StackBuilder {
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Number of gateway processes (default 1).
    pub fn gateways(mut self, n: usize) -> Self {
        self.gateways = n;
        self
    }

    /// Number of session-service processes (default 1).
    pub fn services(mut self, n: usize) -> Self {
        self.services = n;
        self
    }

    /// `AMR_SUBJECT_PREFIX` for every process (default: unset, the product's `amr`).
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = Some(prefix.to_owned());
        self
    }

    /// An environment variable for EVERY product process (e.g. `AMR_SESSION_IDLE_TIMEOUT`,
    /// which gateway and service must agree on).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// An environment variable for gateways only (wins over [`StackBuilder::env`]).
    pub fn gateway_env(mut self, key: &str, value: &str) -> Self {
        self.gateway_env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// An environment variable for session services only (wins over [`StackBuilder::env`]).
    pub fn service_env(mut self, key: &str, value: &str) -> Self {
        self.service_env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Gives gateway `i` the id `gw<i>` (`AMR_GATEWAY_ID`), kept across restarts (a StatefulSet
    /// pod). By default each gateway picks its own id (random), as a Deployment pod would.
    pub fn fixed_gateway_ids(mut self) -> Self {
        self.fixed_gateway_ids = true;
        self
    }

    /// Starts everything and waits until each product process is ready.
    pub async fn start(self) -> Stack {
        match self.mode {
            Mode::Distributed => self.start_distributed().await,
            Mode::Embedded => self.start_embedded().await,
        }
    }

    fn new_stack(&self) -> Stack {
        let dir = tempfile::Builder::new()
            .prefix(&format!("amr-e2e-{}-", self.mode.as_str()))
            .tempdir()
            .expect("tempdir");
        Stack {
            mode: self.mode,
            prefix: self.prefix.clone(),
            gateways: Vec::new(),
            services: Vec::new(),
            nats: None,
            redis: None,
            data_dir: None,
            dir: Some(dir),
        }
    }

    /// One `amr-bridge` without `AMR_NATS_URL`, data in `<stack dir>/data`.
    async fn start_embedded(self) -> Stack {
        assert!(
            self.gateways == 1 && self.services == 1,
            "embedded mode is one process: gateways({}) / services({}) are distributed-only",
            self.gateways,
            self.services
        );
        let bridge_bin = binaries::binary(binaries::EMBEDDED);
        let mut stack = self.new_stack();
        let data_dir = stack.dir().join("data");
        stack.data_dir = Some(data_dir);
        let node = stack.spawn_node(Role::Bridge, 0, &bridge_bin, &self).await;
        stack.gateways.push(node);
        stack
    }

    async fn start_distributed(self) -> Stack {
        let gateway_bin = binaries::binary(binaries::GATEWAY);
        let service_bin = binaries::binary(binaries::SESSION_SERVICE);
        let mut stack = self.new_stack();
        // Servers first, then services, then gateways: each waits for what it needs.
        let nats = NatsServer::start_in(Some(stack.dir())).await;
        stack.nats = Some(nats);
        let redis = RedisServer::start_in(Some(stack.dir())).await;
        stack.redis = Some(redis);
        for i in 0..self.services {
            let node = stack
                .spawn_node(Role::Service, i, &service_bin, &self)
                .await;
            stack.services.push(node);
        }
        for i in 0..self.gateways {
            let node = stack
                .spawn_node(Role::Gateway, i, &gateway_bin, &self)
                .await;
            stack.gateways.push(node);
        }
        stack
    }
}

/// One product process and its ports.
pub struct Node {
    pub role: Role,
    pub index: usize,
    pub http_port: u16,
    /// Gateways (and the bridge) only.
    pub ws_port: Option<u16>,
    pub proc_: Proc,
}

impl Node {
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn name(&self) -> String {
        format!("{}-{}", self.role.short(), self.index)
    }
}

pub struct Stack {
    mode: Mode,
    prefix: Option<String>,
    gateways: Vec<Node>,
    services: Vec<Node>,
    nats: Option<NatsServer>,
    redis: Option<RedisServer>,
    /// Embedded mode: `AMR_DATA_DIR` (inside `dir`).
    data_dir: Option<PathBuf>,
    // Last: removed after every process that writes into it is gone.
    dir: Option<TempDir>,
}

impl Stack {
    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    /// A default distributed stack: 1 service, 1 gateway, product defaults.
    pub async fn start() -> Stack {
        Self::builder().start().await
    }

    /// A default stack of `mode` (distributed: 1 service, 1 gateway; embedded: 1 bridge).
    pub async fn start_mode(mode: Mode) -> Stack {
        Self::builder().mode(mode).start().await
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The stack's temporary directory (logs, NATS store, Redis dir, embedded data dir).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("stack dir").path()
    }

    /// Embedded mode: the bridge's `AMR_DATA_DIR` (session files, `sessions.ndjson`).
    pub fn data_dir(&self) -> &Path {
        self.data_dir
            .as_deref()
            .expect("only the embedded mode has a data dir")
    }

    pub fn prefix(&self) -> &str {
        self.prefix.as_deref().unwrap_or(DEFAULT_PREFIX)
    }

    /// Subject builder for this stack's prefix (never re-type subjects in tests).
    pub fn subjects(&self) -> Subjects {
        Subjects::new(self.prefix())
    }

    fn product_env(
        &self,
        role: Role,
        b: &StackBuilder,
        http_port: u16,
        ws_port: Option<u16>,
        index: usize,
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: String| env.push((k.to_owned(), v));
        set(
            "RUST_LOG",
            std::env::var("AMR_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        set("NO_COLOR", "1".into());
        set("RUST_BACKTRACE", "1".into());
        // Embedded mode is chosen by the ABSENCE of AMR_NATS_URL (the child inherits no AMR_*).
        if role != Role::Bridge {
            set("AMR_NATS_URL", self.nats_url());
        }
        set("AMR_HTTP_LISTEN", format!("127.0.0.1:{http_port}"));
        if let Some(p) = &self.prefix {
            set("AMR_SUBJECT_PREFIX", p.clone());
        }
        if role == Role::Service {
            set("AMR_REDIS_URL", self.redis_url());
        }
        if role.has_ws() {
            let ws = ws_port.expect("gateway has a ws port");
            set("AMR_WS_LISTEN", format!("127.0.0.1:{ws}"));
            if b.fixed_gateway_ids {
                set("AMR_GATEWAY_ID", format!("gw{index}"));
            }
        }
        if role == Role::Bridge {
            set("AMR_DATA_DIR", self.data_dir().display().to_string());
        }
        env.extend(b.env.iter().cloned());
        match role {
            Role::Gateway => env.extend(b.gateway_env.iter().cloned()),
            Role::Service => env.extend(b.service_env.iter().cloned()),
            // The bridge is both: it takes every gateway and session-service variable.
            Role::Bridge => {
                env.extend(b.service_env.iter().cloned());
                env.extend(b.gateway_env.iter().cloned());
            }
        }
        env
    }

    async fn spawn_node(&self, role: Role, index: usize, bin: &Path, b: &StackBuilder) -> Node {
        let log = self.dir().join(format!("{}-{index}.log", role.short()));
        let mut last_err = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let http_port = free_port();
            let ws_port = role.has_ws().then(free_port);
            let spec = Spec {
                name: format!("{}-{index}", role.binary()),
                program: bin.to_path_buf(),
                args: Vec::new(),
                env: self.product_env(role, b, http_port, ws_port, index),
            };
            let mut node = Node {
                role,
                index,
                http_port,
                ws_port,
                proc_: Proc::spawn(spec, log.clone()),
            };
            match wait_node_ready(&mut node).await {
                Ok(()) => return node,
                Err(e) => {
                    let in_use = log_says_port_in_use(&node.proc_.log_tail(40));
                    node.proc_.kill();
                    if in_use {
                        last_err = e;
                        continue;
                    }
                    panic!("{e}");
                }
            }
        }
        panic!(
            "{} did not start after {PORT_ATTEMPTS} attempts: {last_err}",
            role.binary()
        );
    }

    // ------------------------------------------------------------------ addresses

    /// WebSocket URL of gateway `i` (`ws://127.0.0.1:<port>/ws`).
    pub fn ws_url(&self, i: usize) -> String {
        let port = self.gateway(i).ws_port.expect("gateway ws port");
        format!("ws://127.0.0.1:{port}/ws")
    }

    /// HTTP base URL of gateway `i` (`/healthz`, `/readyz`, `/metrics`; in embedded mode,
    /// `i` = 0, also `/api/sessions`).
    pub fn http_url(&self, i: usize) -> String {
        self.gateway(i).http_url()
    }

    /// `(name, base URL)` of every product process's HTTP side endpoints (`/healthz`,
    /// `/readyz`, `/metrics`): gateways and services, or the one bridge.
    pub fn product_http_urls(&self) -> Vec<(String, String)> {
        self.gateways
            .iter()
            .chain(self.services.iter())
            .map(|n| (n.name(), n.http_url()))
            .collect()
    }

    /// HTTP base URL of session service `i` (also `/api/sessions`).
    pub fn service_http_url(&self, i: usize) -> String {
        self.service(i).http_url()
    }

    /// Base URL that serves `/api/sessions` in this mode.
    pub fn api_url(&self) -> String {
        match self.mode {
            Mode::Distributed => self.service_http_url(0),
            Mode::Embedded => self.http_url(0),
        }
    }

    pub fn nats_url(&self) -> String {
        self.nats.as_ref().expect("this mode has no NATS").url()
    }

    pub fn redis_url(&self) -> String {
        self.redis.as_ref().expect("this mode has no Redis").url()
    }

    pub fn gateway_count(&self) -> usize {
        self.gateways.len()
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    pub fn gateway(&self, i: usize) -> &Node {
        self.gateways
            .get(i)
            .unwrap_or_else(|| panic!("the stack has {} gateway(s), not #{i}", self.gateways.len()))
    }

    pub fn service(&self, i: usize) -> &Node {
        self.services
            .get(i)
            .unwrap_or_else(|| panic!("the stack has {} service(s), not #{i}", self.services.len()))
    }

    pub fn nats_mut(&mut self) -> &mut NatsServer {
        self.nats.as_mut().expect("this mode has no NATS")
    }

    pub fn redis_mut(&mut self) -> &mut RedisServer {
        self.redis.as_mut().expect("this mode has no Redis")
    }

    // ------------------------------------------------------------------ faults

    /// SIGKILL gateway `i`.
    pub fn kill_gateway(&mut self, i: usize) {
        self.gateways[i].proc_.kill();
    }

    /// SIGTERM gateway `i` (graceful drain); see [`Stack::wait_gateway_exit`].
    pub fn term_gateway(&mut self, i: usize) {
        self.gateways[i].proc_.signal(libc::SIGTERM);
    }

    /// Waits (bounded) for gateway `i` to exit; `None` if it still runs after `timeout`.
    pub fn wait_gateway_exit(&mut self, i: usize, timeout: Duration) -> Option<ExitStatus> {
        self.gateways[i].proc_.wait_exit(timeout)
    }

    /// Starts gateway `i` again on the same ports and waits until it is ready.
    pub async fn restart_gateway(&mut self, i: usize) {
        let node = &mut self.gateways[i];
        if node.proc_.is_running() {
            node.proc_.stop(Duration::from_secs(10));
        }
        node.proc_.respawn();
        if let Err(e) = wait_node_ready(node).await {
            panic!("restart of {}: {e}", node.name());
        }
    }

    /// SIGKILL session service `i`.
    pub fn kill_service(&mut self, i: usize) {
        self.services[i].proc_.kill();
    }

    /// SIGTERM session service `i`.
    pub fn term_service(&mut self, i: usize) {
        self.services[i].proc_.signal(libc::SIGTERM);
    }

    pub fn wait_service_exit(&mut self, i: usize, timeout: Duration) -> Option<ExitStatus> {
        self.services[i].proc_.wait_exit(timeout)
    }

    /// Starts session service `i` again on the same port and waits until it is ready.
    pub async fn restart_service(&mut self, i: usize) {
        let node = &mut self.services[i];
        if node.proc_.is_running() {
            node.proc_.stop(Duration::from_secs(10));
        }
        node.proc_.respawn();
        if let Err(e) = wait_node_ready(node).await {
            panic!("restart of {}: {e}", node.name());
        }
    }

    fn bridge_index(&self) -> usize {
        assert_eq!(
            self.mode,
            Mode::Embedded,
            "only the embedded mode has a bridge"
        );
        0
    }

    /// Embedded mode: the one `amr-bridge` node.
    pub fn bridge(&self) -> &Node {
        self.gateway(self.bridge_index())
    }

    /// Embedded mode: SIGTERM the bridge (drain, flush, exit); see [`Stack::wait_bridge_exit`].
    pub fn term_bridge(&mut self) {
        let i = self.bridge_index();
        self.term_gateway(i);
    }

    /// Embedded mode: sends `sig` (e.g. `libc::SIGINT`) to the bridge without waiting.
    pub fn signal_bridge(&mut self, sig: i32) {
        let i = self.bridge_index();
        self.gateways[i].proc_.signal(sig);
    }

    /// Embedded mode: SIGKILL the bridge.
    pub fn kill_bridge(&mut self) {
        let i = self.bridge_index();
        self.kill_gateway(i);
    }

    /// Embedded mode: waits (bounded) for the bridge to exit; `None` if it still runs.
    pub fn wait_bridge_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let i = self.bridge_index();
        self.wait_gateway_exit(i, timeout)
    }

    /// Embedded mode: starts the bridge again with the same ports, environment and data dir,
    /// and waits until it is ready.
    pub async fn restart_bridge(&mut self) {
        let i = self.bridge_index();
        self.restart_gateway(i).await;
    }

    // ------------------------------------------------------------------ clients and data

    /// A WebSocket client connected to gateway `i`.
    pub async fn client(&self, i: usize) -> WsClient {
        WsClient::connect(&self.ws_url(i)).await
    }

    /// A client on gateway `i`, registered as `device` with the session-aware app version.
    pub async fn registered_client(&self, i: usize, device: &str) -> WsClient {
        let mut c = self.client(i).await;
        c.register(device, crate::msg::CLIENT_VERSION).await;
        c
    }

    /// Lifecycle events from now on (mode-neutral): a core NATS subscriber on `<p>.session.>`,
    /// subscribed when this returns; in embedded mode the lines appended to `sessions.ndjson`
    /// from now on.
    pub async fn events(&self) -> EventCollector {
        match self.mode {
            Mode::Distributed => EventCollector::start(&self.nats_url(), self.prefix()).await,
            Mode::Embedded => {
                EventCollector::start_file(files::index_file(self.data_dir()), self.prefix())
            }
        }
    }

    /// Reader of `AMR_SENSOR` (distributed mode only).
    pub async fn jetstream(&self) -> JetStreamReader {
        JetStreamReader::connect(&self.nats_url(), self.prefix()).await
    }

    /// What the product stored for a session, in order (mode-neutral): the messages of its
    /// `AMR_SENSOR` subject with their headers, or the lines of its NDJSON file (no headers).
    pub async fn stored_messages(&self, device: &str, session: &str) -> Vec<StoredMessage> {
        match self.mode {
            Mode::Distributed => self.jetstream().await.read_session(device, session).await,
            Mode::Embedded => files::read_session(self.data_dir(), device, session),
        }
    }

    /// The stored payloads of a session, in order, as text (mode-neutral).
    pub async fn stored_payloads(&self, device: &str, session: &str) -> Vec<String> {
        self.stored_messages(device, session)
            .await
            .into_iter()
            .map(|m| m.payload_str().to_owned())
            .collect()
    }

    /// What this mode stores for a client message `text`: the bytes verbatim (distributed),
    /// or the text on one line, every whitespace run holding a line break removed (embedded).
    pub fn expected_payload(&self, text: &str) -> String {
        match self.mode {
            Mode::Distributed => text.to_owned(),
            Mode::Embedded => files::one_line(text),
        }
    }

    /// How many messages the product stored for a session (mode-neutral).
    pub async fn stored_count(&self, device: &str, session: &str) -> u64 {
        match self.mode {
            Mode::Distributed => self.jetstream().await.session_count(device, session).await,
            Mode::Embedded => files::session_count(self.data_dir(), device, session),
        }
    }

    /// Waits (bounded) until a session's stored count reaches `expected`; returns the last
    /// count seen (assert it equals `expected`).
    pub async fn wait_stored_count(&self, device: &str, session: &str, expected: u64) -> u64 {
        match self.mode {
            Mode::Distributed => {
                let js = self.jetstream().await;
                js.wait_count(&js.subjects.sensor(device, session), expected)
                    .await
            }
            Mode::Embedded => {
                crate::wait::settle(
                    crate::WAIT_TIMEOUT,
                    || async { files::session_count(self.data_dir(), device, session) },
                    |n| *n >= expected,
                )
                .await
            }
        }
    }

    /// `GET /api/sessions/<id>`: the record, or `None` on 404 (any other status panics).
    pub async fn get_session(&self, session: &str) -> Option<SessionRecord> {
        let url = format!("{}/api/sessions/{session}", self.api_url());
        let r = http::get(&url).await;
        match r.status {
            200 => {
                Some(serde_json::from_str(&r.body).unwrap_or_else(|e| {
                    panic!("GET {url}: not a session record ({e}): {}", r.body)
                }))
            }
            404 => None,
            s => panic!("GET {url}: status {s}: {}", r.body),
        }
    }

    /// Waits (bounded) until `GET /api/sessions/<id>` satisfies `pred`; returns that record.
    pub async fn wait_session(
        &self,
        session: &str,
        what: &str,
        pred: impl Fn(&SessionRecord) -> bool,
    ) -> SessionRecord {
        let mut last;
        let deadline = Instant::now() + crate::WAIT_TIMEOUT;
        loop {
            let r = self.get_session(session).await;
            if let Some(rec) = &r {
                if pred(rec) {
                    return rec.clone();
                }
            }
            last = Some(r);
            if Instant::now() >= deadline {
                panic!("session {session} never became {what}; last record: {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One page of `GET /api/sessions?<query>`.
    pub async fn sessions_page(&self, query: &str) -> SessionPage {
        let url = format!("{}/api/sessions?{query}", self.api_url());
        let r = http::get(&url).await;
        assert_eq!(r.status, 200, "GET {url}: {}", r.body);
        serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("GET {url}: not a session page ({e}): {}", r.body))
    }

    /// Every session of `device` (optionally in `state`), all pages, newest first.
    pub async fn list_sessions(
        &self,
        device: &str,
        state: Option<SessionState>,
    ) -> Vec<SessionRecord> {
        let mut base = format!("deviceId={device}");
        if let Some(s) = state {
            base.push_str(&format!("&state={}", s.as_str()));
        }
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..1000 {
            let q = match &cursor {
                None => base.clone(),
                Some(c) => format!("{base}&cursor={}", percent_encode(c)),
            };
            let page = self.sessions_page(&q).await;
            out.extend(page.sessions);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return out,
            }
        }
        panic!("more than 1000 pages of sessions for {device}: the cursor does not advance?");
    }

    fn all_procs(&self) -> Vec<(String, PathBuf, String)> {
        let mut v = Vec::new();
        if let Some(n) = &self.nats {
            v.push((
                "nats-server".to_string(),
                n.log_path().to_path_buf(),
                n.log_tail(40),
            ));
        }
        if let Some(r) = &self.redis {
            v.push((
                "redis-server".to_string(),
                r.log_path().to_path_buf(),
                r.log_tail(20),
            ));
        }
        for n in self.services.iter().chain(self.gateways.iter()) {
            v.push((n.name(), n.proc_.log.clone(), n.proc_.log_tail(80)));
        }
        v
    }
}

/// Percent-encodes a query value (cursors are opaque).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn wait_node_ready(node: &mut Node) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let url = format!("{}/readyz", node.http_url());
    let mut last: String;
    loop {
        if let Some(status) = node.proc_.try_exit_status() {
            return Err(format!(
                "{} exited during start-up ({status}); log tail:\n{}",
                node.name(),
                node.proc_.log_tail(40)
            ));
        }
        match http::try_get(&url).await {
            Ok(r) if r.status == 200 => {
                let ws_ok = match node.ws_port {
                    None => true,
                    Some(p) => tokio::net::TcpStream::connect(("127.0.0.1", p))
                        .await
                        .is_ok(),
                };
                if ws_ok {
                    return Ok(());
                }
                last = "readyz 200 but the WebSocket port refuses connections".into();
            }
            Ok(r) => last = format!("readyz {}: {}", r.status, r.body),
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} not ready after {READY_TIMEOUT:?} ({last}); log tail:\n{}",
                node.name(),
                node.proc_.log_tail(40)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let keep = std::env::var_os("AMR_TEST_KEEP").is_some();
        if std::thread::panicking() {
            let mut report = String::from("\n======== AMR stack logs (test failed) ========\n");
            for (name, path, tail) in self.all_procs() {
                report.push_str(&format!(
                    "-------- {name} ({}) --------\n{tail}\n",
                    path.display()
                ));
            }
            eprintln!("{report}");
        }
        // Gateways first (they hold the clients), then services, then the servers.
        for n in self.gateways.iter_mut() {
            n.proc_.kill();
        }
        for n in self.services.iter_mut() {
            n.proc_.kill();
        }
        if let Some(n) = self.nats.as_mut() {
            n.kill();
        }
        if let Some(r) = self.redis.as_mut() {
            r.kill();
        }
        if keep {
            if let Some(dir) = self.dir.take() {
                let path = dir.keep();
                eprintln!("AMR_TEST_KEEP: stack files kept in {}", path.display());
            }
        }
    }
}
