//! HTTP side endpoints (protocol.md section 9) and the session records API (section 10), on
//! every product process: gateway and session service, or the one bridge (embedded mode, whose
//! HTTP port serves `/api/sessions` too). Every test runs in both modes.

use amr_proto::events::SessionState;
use amr_proto::EndReason;
use amr_tests::http;
use amr_tests::{both_modes, unique_device, Mode, Stack};
use std::collections::HashSet;

/// True when `body` is Prometheus text exposition with at least one sample.
fn check_prometheus_text(body: &str) -> Result<usize, String> {
    let mut samples = 0;
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            if rest.starts_with("TYPE ") || rest.starts_with("HELP ") || !rest.is_empty() {
                continue;
            }
        }
        // name{labels} value [timestamp]
        let (name_part, value_part) = match line.find('}') {
            Some(i) => (&line[..=i], line[i + 1..].trim()),
            None => line
                .split_once(char::is_whitespace)
                .ok_or_else(|| format!("no value: {line:?}"))?,
        };
        let name = name_part.split('{').next().unwrap_or("");
        let name_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !name_ok {
            return Err(format!("bad metric name in {line:?}"));
        }
        let value = value_part.split_whitespace().next().unwrap_or("");
        let value_ok =
            value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf", "Inf"].contains(&value);
        if !value_ok {
            return Err(format!("bad value in {line:?}"));
        }
        samples += 1;
    }
    if samples == 0 {
        return Err("no samples".into());
    }
    Ok(samples)
}

async fn health_ready_and_metrics_on_every_process(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    // Some traffic so that metrics exist.
    let dev = unique_device("AMR");
    let mut c = stack.registered_client(0, &dev).await;
    let s = c.start(&dev).await.session_id;
    c.send_data(&dev, &s, 2).await;
    c.end(&dev, &s).await;

    let processes = stack.product_http_urls();
    let expected = match mode {
        Mode::Distributed => 2, // gateway + session service
        Mode::Embedded => 1,    // the bridge
    };
    assert_eq!(processes.len(), expected, "{processes:?}");
    for (who, base) in processes {
        for path in ["/healthz", "/readyz"] {
            let r = http::get(&format!("{base}{path}")).await;
            assert_eq!(r.status, 200, "{who} {path}: {}", r.body);
        }
        let r = http::get(&format!("{base}/metrics")).await;
        assert_eq!(r.status, 200, "{who} /metrics: {}", r.body);
        let ct = r.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("text/plain"),
            "{who} /metrics content-type {ct:?} is not Prometheus text"
        );
        if let Err(e) = check_prometheus_text(&r.body) {
            panic!("{who} /metrics is not Prometheus text ({e}):\n{}", r.body);
        }
    }
}
both_modes!(health_ready_and_metrics_on_every_process);

/// `GET /api/sessions?deviceId=&state=&limit=&cursor=`: newest first, filtered, paginated with
/// nextCursor; `GET /api/sessions/<id>`: one record or 404.
async fn sessions_api_filters_pages_and_404s(mode: Mode) {
    let stack = Stack::start_mode(mode).await;
    let dev = unique_device("API");
    let mut c = stack.registered_client(0, &dev).await;
    let mut started = Vec::new();
    for i in 0..5u64 {
        let s = c.start(&dev).await.session_id;
        c.send_data(&dev, &s, i).await;
        if i < 4 {
            c.end(&dev, &s).await;
        }
        started.push(s);
    }
    let active_id = started[4].clone();

    // Pages of 2: 2 + 2 + 1, nextCursor while more exist.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &cursor {
            None => format!("deviceId={dev}&limit=2"),
            Some(cur) => format!(
                "deviceId={dev}&limit=2&cursor={}",
                amr_tests::stack::percent_encode(cur)
            ),
        };
        let page = stack.sessions_page(&q).await;
        assert!(page.sessions.len() <= 2, "limit honoured: {page:?}");
        pages += 1;
        seen.extend(page.sessions);
        match page.next_cursor {
            Some(cur) => cursor = Some(cur),
            None => break,
        }
        assert!(pages < 10, "the cursor does not advance");
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    let ids: HashSet<_> = seen.iter().map(|r| r.session_id.clone()).collect();
    assert_eq!(ids, started.iter().cloned().collect::<HashSet<_>>());
    assert!(
        seen.windows(2).all(|w| w[0].started_at >= w[1].started_at),
        "newest first: {seen:?}"
    );
    assert_eq!(
        seen[0].session_id, active_id,
        "the newest is the last started"
    );
    for r in &seen {
        assert_eq!(r.device_id, dev);
        let i = started.iter().position(|s| *s == r.session_id).unwrap() as u64;
        if r.state == SessionState::Ended {
            assert_eq!(r.data_count, i, "{r:?}");
        } else {
            // An active session's count may lag (activity is reported in batches); the
            // contract makes it exact once the session ended.
            assert!(r.data_count <= i, "{r:?}");
        }
    }

    let active = stack.list_sessions(&dev, Some(SessionState::Active)).await;
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].session_id, active_id);
    assert_eq!(active[0].ended_at, None);
    assert_eq!(active[0].reason, None);
    let ended = stack.list_sessions(&dev, Some(SessionState::Ended)).await;
    assert_eq!(ended.len(), 4);
    assert!(ended
        .iter()
        .all(|r| r.reason == Some(EndReason::ClientRequest) && r.ended_at.is_some()));

    let rec = stack.get_session(&started[2]).await.expect("record");
    assert_eq!((rec.state, rec.data_count), (SessionState::Ended, 2));
    assert_eq!(
        stack.get_session(&amr_proto::ids::new_session_id()).await,
        None
    );
    assert!(stack
        .list_sessions(&unique_device("NOBODY"), None)
        .await
        .is_empty());
}
both_modes!(sessions_api_filters_pages_and_404s);
