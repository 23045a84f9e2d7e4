//! Test doubles of what the engine talks to besides the store: the gateways' connections and
//! the lifecycle event stream (the store itself is always a real one).

use crate::engine::Engine;
use crate::events::Lifecycle;
use crate::machine::{ConflictPolicy, RevokedCount, Settings};
use crate::memory_store::MemoryStore;
use crate::owners::Connections;
use amr_proto::events::{SessionCreatedEvent, SessionEndedEvent};
use amr_proto::subjects::Subjects;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Connections of the gateways in `alive` answer revocations; the others are dead, and the
/// sensor stream says `stream_total` for every session.
pub(crate) struct FakeConnections {
    pub subjects: Subjects,
    pub alive: HashSet<String>,
    pub stream_total: Option<u64>,
    pub revoked: Mutex<Vec<String>>,
    pub pushed: Mutex<Vec<String>>,
}

impl Connections for FakeConnections {
    fn revoke<'a>(
        &'a self,
        _device_id: &'a str,
        session_id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, RevokedCount> {
        async move {
            self.revoked.lock().unwrap().push(session_id.to_string());
            let gateway = self.subjects.gateway_of(owner).unwrap_or_default();
            if self.alive.contains(gateway) {
                RevokedCount::Accepted(0)
            } else {
                RevokedCount::StreamTotal(self.stream_total)
            }
        }
        .boxed()
    }

    fn push_ended<'a>(&'a self, owner: &'a str, _: &'a SessionEndedEvent) -> BoxFuture<'a, ()> {
        self.pushed.lock().unwrap().push(owner.to_string());
        async {}.boxed()
    }
}

/// Keeps every lifecycle event published.
#[derive(Default)]
pub(crate) struct Recorded {
    pub created: Mutex<Vec<SessionCreatedEvent>>,
    pub ended: Mutex<Vec<SessionEndedEvent>>,
}

impl Lifecycle for Recorded {
    fn created<'a>(&'a self, event: &'a SessionCreatedEvent) -> BoxFuture<'a, ()> {
        self.created.lock().unwrap().push(event.clone());
        async {}.boxed()
    }

    fn ended<'a>(&'a self, event: &'a SessionEndedEvent) -> BoxFuture<'a, ()> {
        self.ended.lock().unwrap().push(event.clone());
        async {}.boxed()
    }
}

/// An engine on a fresh memory store (replace policy, one-hour idle timeout, no grace), with
/// its faked connections and event stream.
pub(crate) struct Setup {
    pub engine: Arc<Engine<MemoryStore>>,
    pub conns: Arc<FakeConnections>,
    pub events: Arc<Recorded>,
}

/// See [`Setup`]; the gateways in `alive` answer revocations.
pub(crate) fn setup(alive: &[&str], stream_total: Option<u64>) -> Setup {
    let subjects = Subjects::default();
    let conns = Arc::new(FakeConnections {
        subjects: subjects.clone(),
        alive: alive.iter().map(|g| g.to_string()).collect(),
        stream_total,
        revoked: Mutex::default(),
        pushed: Mutex::default(),
    });
    let events = Arc::new(Recorded::default());
    let settings = Settings {
        policy: ConflictPolicy::Replace,
        idle_timeout_ms: 3_600_000,
        disconnect_grace_ms: 0,
        drain_grace_ms: 0,
        subjects,
    };
    let store = MemoryStore::new(Duration::from_secs(3600), Duration::from_secs(3600));
    let engine = Arc::new(Engine::new(store, conns.clone(), events.clone(), settings));
    Setup {
        engine,
        conns,
        events,
    }
}
