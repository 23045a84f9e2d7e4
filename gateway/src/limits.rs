//! Limits that keep one client (or many) from exhausting the gateway: connections per gateway
//! and per client IP (refused at the upgrade with an HTTP status, before any WebSocket
//! exists), the browser `Origin` allow-list, and the per-connection message rate (a token
//! bucket with a rule for closing a connection that keeps abusing it).
//!
//! Frame size (`AMR_MAX_FRAME_BYTES`) is enforced by tungstenite's configuration
//! (see `listener.rs`); the write timeout by the connection (see `connection.rs`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::http::StatusCode;

/// Open-connection counters of one gateway.
pub struct ConnLimits {
    max_total: usize,
    /// 0 = no per-IP limit.
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was refused at the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `AMR_MAX_CONNECTIONS` reached: 503, try another replica.
    GatewayFull,
    /// `AMR_MAX_CONNS_PER_IP` reached: 429.
    TooManyFromIp,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::GatewayFull => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::TooManyFromIp => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::GatewayFull => "gateway_full",
            Refusal::TooManyFromIp => "too_many_from_ip",
        }
    }
}

/// One open connection counted in [`ConnLimits`]; released on drop.
pub struct ConnPermit {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.limits.release(self.ip);
    }
}

impl ConnLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(ConnLimits {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a new connection from `ip`, unless a limit is reached.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, Refusal> {
        let reserved = self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_total).then_some(n + 1)
            });
        if reserved.is_err() {
            return Err(Refusal::GatewayFull);
        }
        if self.max_per_ip > 0 {
            let mut map = self
                .per_ip
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                drop(map);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::TooManyFromIp);
            }
            *n += 1;
        }
        Ok(ConnPermit {
            limits: self.clone(),
            ip,
        })
    }

    fn release(&self, ip: IpAddr) {
        if self.max_per_ip > 0 {
            let mut map = self
                .per_ip
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    // Entries only for addresses with open connections: the map stays bounded.
                    map.remove(&ip);
                }
            }
        }
        self.total.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// The `AMR_ALLOWED_ORIGINS` allow-list.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    /// Lower-cased, without trailing `/`; empty = any origin.
    allowed: Vec<String>,
}

impl Origins {
    pub fn parse(list: &str) -> Origins {
        Origins {
            allowed: list
                .split(',')
                .map(normalize_origin)
                .filter(|o| !o.is_empty())
                .collect(),
        }
    }

    /// True when a request with this `Origin` header (None: no header, a robot) may upgrade.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(_) if self.allowed.is_empty() => true,
            Some(o) => {
                let o = normalize_origin(o);
                self.allowed.contains(&o)
            }
        }
    }
}

fn normalize_origin(o: &str) -> String {
    o.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// What the rate limiter says about one incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allow,
    /// Over the rate: the message is dropped and answered by a (coalesced) `RATE_LIMITED`.
    Refuse,
    /// Over the rate for `AMR_RATE_LIMIT_CLOSE_AFTER` without a break of a second or more:
    /// `RATE_LIMITED`, then close 1008.
    Close,
}

/// Per-connection token bucket: `rate` messages per second, `burst` at most at once.
///
/// Sustained abuse rule: a connection that had at least one message refused in every second
/// for `close_after` (no gap of a second or more between refusals) is closed. A client that
/// bursts now and then never gets there; a flood does.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    close_after: Duration,
    abuse_since: Option<Instant>,
    last_refusal: Option<Instant>,
}

/// A gap between refusals that ends a streak of abuse.
const ABUSE_GAP: Duration = Duration::from_secs(1);

impl RateLimiter {
    /// `None` when either figure is 0 (no limit).
    pub fn new(rate: u32, burst: u32, close_after: Duration, now: Instant) -> Option<Self> {
        if rate == 0 || burst == 0 {
            return None;
        }
        Some(RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
            close_after,
            abuse_since: None,
            last_refusal: None,
        })
    }

    pub fn check(&mut self, now: Instant) -> RateDecision {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return RateDecision::Allow;
        }
        let streak_broken = self
            .last_refusal
            .is_none_or(|t| now.saturating_duration_since(t) >= ABUSE_GAP);
        if streak_broken {
            self.abuse_since = Some(now);
        }
        self.last_refusal = Some(now);
        let since = self.abuse_since.unwrap_or(now);
        if !self.close_after.is_zero() && now.saturating_duration_since(since) >= self.close_after {
            RateDecision::Close
        } else {
            RateDecision::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    #[test]
    fn per_gateway_and_per_ip_counts() {
        let l = ConnLimits::new(3, 2);
        let a1 = l.try_acquire(ip(1)).unwrap();
        let _a2 = l.try_acquire(ip(1)).unwrap();
        assert_eq!(l.try_acquire(ip(1)).err(), Some(Refusal::TooManyFromIp));
        let b1 = l.try_acquire(ip(2)).unwrap();
        assert_eq!(l.try_acquire(ip(3)).err(), Some(Refusal::GatewayFull));
        assert_eq!(l.open(), 3);
        drop(a1);
        assert_eq!(l.open(), 2);
        let _a3 = l.try_acquire(ip(1)).unwrap();
        drop(b1);
        let _c = l.try_acquire(ip(3)).unwrap();
        assert_eq!(
            Refusal::GatewayFull.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            Refusal::TooManyFromIp.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }

    #[test]
    fn per_ip_off_and_map_stays_empty() {
        let l = ConnLimits::new(10, 0);
        let permits: Vec<_> = (0..10).map(|_| l.try_acquire(ip(1)).unwrap()).collect();
        assert_eq!(l.try_acquire(ip(1)).err(), Some(Refusal::GatewayFull));
        drop(permits);
        assert_eq!(l.open(), 0);
        let l = ConnLimits::new(10, 1);
        drop(l.try_acquire(ip(9)).unwrap());
        assert!(l.per_ip.lock().unwrap().is_empty());
    }

    #[test]
    fn origins() {
        let any = Origins::parse("");
        assert!(any.allows(Some("https://evil.example")));
        assert!(any.allows(None));
        let list = Origins::parse(" https://ops.example.com/ ,http://localhost:3000");
        assert!(list.allows(Some("https://OPS.example.com")));
        assert!(list.allows(Some("http://localhost:3000")));
        assert!(!list.allows(Some("https://evil.example")));
        assert!(!list.allows(Some("null")));
        // Robots send no Origin.
        assert!(list.allows(None));
    }

    #[test]
    fn token_bucket_refuses_then_refills() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10, 5, Duration::from_secs(10), t0).unwrap();
        for _ in 0..5 {
            assert_eq!(r.check(t0), RateDecision::Allow);
        }
        assert_eq!(r.check(t0), RateDecision::Refuse);
        // 100 ms at 10/s: one more token.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(r.check(t1), RateDecision::Allow);
        assert_eq!(r.check(t1), RateDecision::Refuse);
        // A long pause refills up to the burst only.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(r.check(t2), RateDecision::Allow);
        }
        assert_eq!(r.check(t2), RateDecision::Refuse);
        assert!(RateLimiter::new(0, 5, Duration::ZERO, t0).is_none());
        assert!(RateLimiter::new(5, 0, Duration::ZERO, t0).is_none());
    }

    #[test]
    fn sustained_abuse_closes_bursts_do_not() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(1, 1, Duration::from_secs(3), t0).unwrap();
        assert_eq!(r.check(t0), RateDecision::Allow);
        // Refused every 500 ms: the streak grows until 3 s.
        let mut t = t0;
        let mut closed_at = None;
        for i in 1..=20 {
            t = t0 + Duration::from_millis(500 * i);
            // Drain the token refilled meanwhile.
            let mut d = r.check(t);
            while d == RateDecision::Allow {
                d = r.check(t);
            }
            if d == RateDecision::Close {
                closed_at = Some(t - t0);
                break;
            }
        }
        let closed_at = closed_at.expect("a flood is closed");
        assert!(closed_at >= Duration::from_secs(3), "{closed_at:?}");
        // A gap of a second or more between refusals restarts the streak.
        let mut r = RateLimiter::new(1, 1, Duration::from_secs(3), t).unwrap();
        for i in 0..10u64 {
            let at = t + Duration::from_millis(1500 * i);
            let mut d = r.check(at);
            while d == RateDecision::Allow {
                d = r.check(at);
            }
            assert_eq!(d, RateDecision::Refuse);
        }
        // close_after 0: never closed.
        let mut r = RateLimiter::new(1, 1, Duration::ZERO, t0).unwrap();
        for i in 0..100 {
            assert_ne!(
                r.check(t0 + Duration::from_millis(10 * i)),
                RateDecision::Close
            );
        }
    }
}
