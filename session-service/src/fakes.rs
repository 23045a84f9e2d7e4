//! Test doubles of what the engine talks to besides the store: the gateways' connections and
//! the lifecycle event stream (the store itself is always a real one).

use crate::events::Lifecycle;
use crate::machine::RevokedCount;
use crate::owners::Connections;
use amr_proto::events::{SessionCreatedEvent, SessionEndedEvent};
use amr_proto::subjects::Subjects;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use std::collections::HashSet;
use std::sync::Mutex;

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
