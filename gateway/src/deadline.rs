//! A re-armable deadline for a connection's `select!` loop.
//!
//! Creating a fresh `sleep_until` on every loop turn registers and removes a timer entry per
//! message (a lock on the runtime's timer wheel each time). A `Deadline` keeps one timer per
//! purpose and only moves it when the instant changes; it is allocated on first use, so idle
//! connections that never need it pay nothing.

use std::pin::Pin;
use tokio::time::{Instant, Sleep};

#[derive(Default)]
pub struct Deadline {
    sleep: Option<Pin<Box<Sleep>>>,
    at: Option<Instant>,
}

impl Deadline {
    /// Arms the deadline at `at`, or disarms it with `None`.
    pub fn set(&mut self, at: Option<Instant>) {
        if at == self.at {
            return;
        }
        self.at = at;
        if let Some(at) = at {
            match self.sleep.as_mut() {
                Some(sleep) => sleep.as_mut().reset(at),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
    }

    /// Completes when the armed instant is reached; never while disarmed.
    pub async fn reached(&mut self) {
        match (self.at, self.sleep.as_mut()) {
            (Some(_), Some(sleep)) => sleep.as_mut().await,
            _ => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn fires_at_the_armed_instant_and_moves_when_rearmed() {
        let mut d = Deadline::default();
        let start = Instant::now();
        d.set(Some(start + Duration::from_millis(50)));
        d.set(Some(start + Duration::from_millis(20)));
        d.reached().await;
        assert_eq!(Instant::now(), start + Duration::from_millis(20));
    }

    #[tokio::test(start_paused = true)]
    async fn never_fires_while_disarmed() {
        let mut d = Deadline::default();
        d.set(Some(Instant::now() + Duration::from_millis(10)));
        d.set(None);
        let fired = tokio::time::timeout(Duration::from_secs(1), d.reached()).await;
        assert!(fired.is_err());
    }
}
