//! Waiting for a condition with an upper bound. Polling with a short pause is the only sleep the
//! suite uses; the bound is generous and never asserted on.

use std::future::Future;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(50);

/// Polls `f` until it returns `Some`, and returns that value; panics after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `f` until it returns true; panics after `timeout` with `what`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, timeout, || {
        let fut = f();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Polls `f` until it returns `Some`, or returns the last value seen when `timeout` passes:
/// for conditions whose final value the caller asserts on with a precise message.
pub async fn settle<T, F, Fut>(timeout: Duration, mut f: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let v = f().await;
        if done(&v) || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Lets `dur` pass so that a message that must NOT come (a duplicate event, a wrong end) has
/// the time to show up before the caller asserts its absence. Not a synchronisation tool: use
/// it only for absence checks, once per test, after every expected thing was waited for.
pub async fn absence_window(dur: Duration) {
    tokio::time::sleep(dur).await;
}
