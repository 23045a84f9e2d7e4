//! The Redis store against a real `redis-server` started for each test on a free port in a
//! temporary directory (never the shared one on 6379). The store behaviour itself is the
//! shared conformance suite (`store/conformance.rs`).

use super::*;
use crate::store::conformance::{self, conformance_tests, Inspect};
use std::process::{Child, Command, Stdio};

struct RedisProc {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn redis() -> RedisProc {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed for this test");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    RedisProc {
        child,
        port,
        _dir: dir,
    }
}

async fn store(r: &RedisProc, retention: Duration) -> RedisStore {
    RedisStore::connect(
        &format!("redis://127.0.0.1:{}", r.port),
        Keys::new("t"),
        retention,
        conformance::IDLE_TIMEOUT,
        Duration::from_secs(2),
    )
    .await
    .unwrap()
}

/// A server of its own and a store on it, for one conformance test.
async fn make(retention: Duration) -> (RedisProc, RedisStore) {
    let r = redis().await;
    let s = store(&r, retention).await;
    (r, s)
}

conformance_tests!(make);

impl RedisStore {
    async fn raw<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn).await.unwrap()
    }

    async fn ttl_of(&self, key: String) -> Option<i64> {
        // PTTL: -1 for a key without expiry, -2 for no key.
        let ttl: i64 = self.raw(redis::cmd("PTTL").arg(key)).await;
        (ttl >= 0).then_some(ttl)
    }
}

impl Inspect for RedisStore {
    async fn scheduled(&self, session_id: &str) -> Option<i64> {
        let score: Option<f64> = self
            .raw(
                redis::cmd("ZSCORE")
                    .arg(self.keys.deadlines())
                    .arg(session_id),
            )
            .await;
        score.map(|s| s as i64)
    }

    async fn record_ttl(&self, session_id: &str) -> Option<i64> {
        self.ttl_of(self.keys.session(session_id)).await
    }

    async fn request_ttl(&self, device_id: &str, request_id: &str) -> Option<i64> {
        self.ttl_of(self.keys.request(device_id, request_id)).await
    }

    async fn drop_record(&self, session_id: &str) {
        let _: () = self
            .raw(redis::cmd("DEL").arg(self.keys.session(session_id)))
            .await;
    }

    async fn device_index_len(&self, device_id: &str) -> usize {
        self.raw(redis::cmd("ZCARD").arg(self.keys.device_sessions(device_id)))
            .await
    }

    async fn gateway_score(&self, gateway_id: &str) -> Option<i64> {
        let score: Option<f64> = self
            .raw(
                redis::cmd("ZSCORE")
                    .arg(self.keys.gateways())
                    .arg(gateway_id),
            )
            .await;
        score.map(|s| s as i64)
    }
}

#[tokio::test]
async fn a_dead_redis_fails_fast() {
    let r = redis().await;
    let s = store(&r, conformance::RETENTION).await;
    drop(r);
    let began = std::time::Instant::now();
    let q = SnapshotQuery {
        device_id: Some("D7".into()),
        ..SnapshotQuery::default()
    };
    assert!(matches!(
        s.snapshot(&q).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(!s.ping().await);
    assert!(began.elapsed() < Duration::from_secs(10));
}
