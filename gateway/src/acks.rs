//! Acknowledgements for sensor messages that carry `seq` (protocol.md section 4).
//!
//! `ack{sessionId, seq: N}` promises that every `seq` message of that session received on this
//! connection up to N is durably stored in JetStream. Publishes complete in the order they were
//! sent (the connection keeps them in an ordered queue), so the ack point is simply the last
//! stored seq, until one publish fails: then the point freezes at the message before it (the
//! client resends from its last ack) and moves again only when that failed seq is stored on a
//! resend. Acks are coalesced: at most every `interval`, or after `every` stored messages.
//!
//! A failure also closes a gate: later `seq` messages of the session are refused (not
//! published) until the client's resend reaches the failed seq. Otherwise the messages the
//! client keeps sending until it learns of the failure would be stored before its resend of
//! the lost one, out of seq order (and unackable anyway). Messages already handed to NATS
//! before the failure was known can still land before the resend: that residue is why
//! downstream orders by `Amr-Seq` (docs/downstream.md).

use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
pub struct AckPoint {
    session_id: String,
    /// Highest seq such that everything before it on this connection is stored.
    stored: u64,
    /// Highest seq already acknowledged to the client.
    sent: u64,
    /// The first seq that failed to be stored and has not been stored since.
    blocked: Option<u64>,
    /// While set, only seqs up to it may be published (see [`AckPoint::admit`]).
    gate: Option<u64>,
    /// Stored messages not acknowledged yet, and since when.
    unacked: u32,
    unacked_since: Option<Instant>,
}

impl AckPoint {
    pub fn new(session_id: String) -> Self {
        AckPoint {
            session_id,
            stored: 0,
            sent: 0,
            blocked: None,
            gate: None,
            unacked: 0,
            unacked_since: None,
        }
    }

    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Records the outcome of one publish, in the order the publishes were sent.
    pub fn record(&mut self, seq: u64, stored: bool, now: Instant) {
        if !stored {
            self.blocked = Some(self.blocked.map_or(seq, |b| b.min(seq)));
            self.gate = Some(self.gate.map_or(seq, |g| g.min(seq)));
            return;
        }
        match self.blocked {
            Some(b) if seq == b => self.blocked = None,
            // Stored, but after a gap the client has not filled yet: no ack may cover it.
            Some(_) => return,
            None => {}
        }
        if seq > self.stored {
            self.stored = seq;
            self.unacked += 1;
            self.unacked_since.get_or_insert(now);
        }
    }

    /// Whether a `seq` message of this session may be published now: false after a failure,
    /// for seqs above the failed one, until the client's resend reaches it (which opens the
    /// gate again; pipelining resumes).
    pub fn admit(&mut self, seq: u64) -> bool {
        match self.gate {
            Some(g) if seq > g => false,
            Some(_) => {
                self.gate = None;
                true
            }
            None => true,
        }
    }

    /// The seq to acknowledge now, if an ack is due.
    pub fn due(&self, now: Instant, interval: Duration, every: u32) -> Option<u64> {
        if self.stored <= self.sent {
            return None;
        }
        let old_enough = self
            .unacked_since
            .is_some_and(|t| now.duration_since(t) >= interval);
        (old_enough || self.unacked >= every).then_some(self.stored)
    }

    /// The seq to acknowledge regardless of coalescing (before switching sessions, on close).
    pub fn pending(&self) -> Option<u64> {
        (self.stored > self.sent).then_some(self.stored)
    }

    /// When the next coalesced ack falls due.
    pub fn deadline(&self, interval: Duration) -> Option<Instant> {
        if self.stored <= self.sent {
            return None;
        }
        self.unacked_since.map(|t| t + interval)
    }

    pub fn mark_sent(&mut self, seq: u64) {
        self.sent = self.sent.max(seq);
        self.unacked = 0;
        self.unacked_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_millis(50);

    #[test]
    fn coalesces_by_count_and_time() {
        let t0 = Instant::now();
        let mut a = AckPoint::new("s".into());
        a.record(1, true, t0);
        a.record(2, true, t0);
        assert_eq!(a.due(t0, I, 3), None);
        a.record(3, true, t0);
        assert_eq!(a.due(t0, I, 3), Some(3));
        a.mark_sent(3);
        a.record(4, true, t0);
        assert_eq!(a.due(t0, I, 100), None);
        assert_eq!(a.due(t0 + I, I, 100), Some(4));
    }

    #[test]
    fn a_failure_freezes_the_point_until_the_resend_is_stored() {
        let t0 = Instant::now();
        let mut a = AckPoint::new("s".into());
        a.record(1, true, t0);
        a.record(2, false, t0);
        a.record(3, true, t0);
        assert_eq!(a.pending(), Some(1));
        a.mark_sent(1);
        // The client resends from 2.
        a.record(2, true, t0);
        a.record(3, true, t0);
        assert_eq!(a.pending(), Some(3));
    }

    #[test]
    fn after_a_failure_later_seqs_wait_for_the_resend() {
        let t0 = Instant::now();
        let mut a = AckPoint::new("s".into());
        assert!(a.admit(1));
        a.record(1, true, t0);
        a.record(2, false, t0);
        a.record(3, false, t0);
        // Sent before the client heard of the failure: refused, not published.
        assert!(!a.admit(4));
        assert!(!a.admit(5));
        // The resend starts after the last ack: it opens the gate, the rest follows.
        assert!(a.admit(2));
        assert!(a.admit(3));
        assert!(a.admit(4));
        a.record(2, true, t0);
        a.record(3, true, t0);
        a.record(4, true, t0);
        assert_eq!(a.pending(), Some(4));
        // A failure during the resend closes the gate again at that seq.
        a.record(5, false, t0);
        assert!(!a.admit(6));
        assert!(a.admit(5));
    }

    #[test]
    fn duplicates_do_not_move_the_point_backwards() {
        let t0 = Instant::now();
        let mut a = AckPoint::new("s".into());
        a.record(5, true, t0);
        a.mark_sent(5);
        a.record(4, true, t0);
        assert_eq!(a.pending(), None);
    }
}
