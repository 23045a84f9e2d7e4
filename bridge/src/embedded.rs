//! The embedded single-process mode: the gateway, the session state machine on an in-memory
//! store, sensor data in NDJSON files, lifecycle events in a session index file. The same
//! engine and store semantics as the distributed mode; only the plumbing differs.

use crate::file_sink::FileSink;
use crate::index::SessionIndex;
use amr_gateway::backend::{Readiness, ServiceResult, SessionApi};
use amr_gateway::registry::{Control, Registry, ReplyTo};
use amr_gateway::Backend;
use amr_proto::events::SessionEndedEvent;
use amr_proto::internal::{
    ActivityOk, ActivityRequest, ClaimOk, ClaimRequest, ConnEvent, DisconnectOk, DisconnectRequest,
    EndOk, EndRequest, StartOk, StartRequest,
};
use amr_proto::subjects::Subjects;
use amr_session_service::engine::Engine;
use amr_session_service::machine::RevokedCount;
use amr_session_service::memory_store::MemoryStore;
use amr_session_service::owners::Connections;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// Session operations answered in-process by the engine.
struct LocalSessions(Arc<Engine<MemoryStore>>);

impl SessionApi for LocalSessions {
    fn start<'a>(&'a self, req: &'a StartRequest) -> BoxFuture<'a, ServiceResult<StartOk>> {
        self.0.start(req).boxed()
    }

    fn end<'a>(&'a self, req: &'a EndRequest) -> BoxFuture<'a, ServiceResult<EndOk>> {
        self.0.end(req).boxed()
    }

    fn claim<'a>(&'a self, req: &'a ClaimRequest) -> BoxFuture<'a, ServiceResult<ClaimOk>> {
        self.0.claim(req).boxed()
    }

    fn disconnect<'a>(
        &'a self,
        req: &'a DisconnectRequest,
    ) -> BoxFuture<'a, ServiceResult<DisconnectOk>> {
        self.0.disconnect(req).boxed()
    }

    fn activity<'a>(
        &'a self,
        req: &'a ActivityRequest,
    ) -> BoxFuture<'a, ServiceResult<ActivityOk>> {
        self.0.activity(req).boxed()
    }
}

/// Revocations and pushes delivered straight to the connection tasks of this process.
struct LocalConnections {
    registry: Arc<Registry>,
    subjects: Subjects,
    timeout: Duration,
}

impl Connections for LocalConnections {
    fn revoke<'a>(
        &'a self,
        _device_id: &'a str,
        session_id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, RevokedCount> {
        async move {
            let Some(conn_id) = self.subjects.conn_id_of(owner) else {
                return RevokedCount::StreamTotal(None);
            };
            let (tx, rx) = oneshot::channel();
            let control = Control::pushed(
                ConnEvent::Revoke {
                    session_id: session_id.to_owned(),
                },
                Some(ReplyTo::Local(tx)),
            );
            self.registry.deliver(conn_id, control).await;
            match tokio::time::timeout(self.timeout, rx).await {
                Ok(Ok(reply)) if reply.session_id == session_id => {
                    RevokedCount::Accepted(reply.accepted)
                }
                // Every accepted message is already in the file the connection wrote; the
                // stored count stands.
                _ => RevokedCount::StreamTotal(None),
            }
        }
        .boxed()
    }

    fn push_ended<'a>(&'a self, owner: &'a str, event: &'a SessionEndedEvent) -> BoxFuture<'a, ()> {
        async move {
            if let Some(conn_id) = self.subjects.conn_id_of(owner) {
                let control = Control::pushed(ConnEvent::SessionEnded(event.clone()), None);
                self.registry.deliver(conn_id, control).await;
            }
        }
        .boxed()
    }
}

struct AlwaysReady;

impl Readiness for AlwaysReady {
    fn check(&self) -> Result<(), &'static str> {
        Ok(())
    }
}

/// The pieces of a running embedded bridge.
pub struct Embedded {
    pub backend: Backend,
    pub sink: FileSink,
    pub sweeper: tokio::task::JoinHandle<()>,
    pub stop_sweeper: watch::Sender<bool>,
}

/// Assembles the embedded mode: restores sessions of earlier runs from the index, starts the
/// sweeper, and returns the gateway backend.
pub fn assemble(
    gateway: &amr_gateway::config::Config,
    session: &amr_session_service::config::Config,
    data_dir: &std::path::Path,
) -> std::io::Result<Embedded> {
    let sink = FileSink::start(data_dir.to_owned())?;
    let index = SessionIndex::open(data_dir, sink.clone())?;
    let store = MemoryStore::new(session.session_retention, session.session_idle_timeout);
    let restored = index.recover()?;
    if !restored.is_empty() {
        tracing::info!(
            sessions = restored.len(),
            "sessions of earlier runs restored from the index"
        );
    }
    for record in restored {
        let id = record.session_id.clone();
        if let Err(e) = store.restore(record) {
            tracing::warn!(session = %id, error = %e, "session of an earlier run not restored");
        }
    }
    let registry = Arc::new(Registry::default());
    let gateway_id = amr_gateway::gateway_id(gateway);
    let connections = LocalConnections {
        registry: registry.clone(),
        subjects: Subjects::new(gateway.subject_prefix.clone()),
        timeout: session.request_timeout / 4,
    };
    let engine = Arc::new(Engine::new(
        store.clone(),
        Arc::new(connections),
        Arc::new(index),
        session.settings(),
    ));
    let (stop_sweeper, stop) = watch::channel(false);
    let lease = (session.request_timeout * 4).max(Duration::from_secs(5));
    let sweeper = tokio::spawn(amr_session_service::sweeper::run(
        engine.clone(),
        session.sweep_interval(),
        lease,
        // One process: the gateway cannot be lost apart from its sessions.
        None,
        stop,
    ));
    let backend = Backend {
        gateway_id,
        registry,
        sessions: Arc::new(LocalSessions(engine)),
        sink: Arc::new(sink.clone()),
        readiness: Arc::new(AlwaysReady),
        extra_routes: amr_session_service::http::api_routes(store),
    };
    Ok(Embedded {
        backend,
        sink,
        sweeper,
        stop_sweeper,
    })
}
