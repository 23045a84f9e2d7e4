//! Observability across the distributed deployment: one OpenTelemetry trace crosses the
//! gateway and the session service (collected by an in-process OTLP/gRPC receiver), the
//! Prometheus series of both services exist and move with a session, and JSON logs carry
//! deviceId, sessionId and traceId without payloads or tokens.

use amr_tests::wait::wait_for;
use amr_tests::{http, msg, unique_device, Mode, Stack, WAIT_TIMEOUT};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One span as received: the exporting service's name and the span's identity.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attrs: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Got>>>);

fn text(kv: &[KeyValue]) -> HashMap<String, String> {
    kv.iter()
        .filter_map(|a| {
            let v = match a.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => s.clone(),
                AnyValue::IntValue(i) => i.to_string(),
                AnyValue::BoolValue(b) => b.to_string(),
                other => format!("{other:?}"),
            };
            Some((a.key.clone(), v))
        })
        .collect()
}

#[async_trait::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for rs in request.into_inner().resource_spans {
            let resource = rs.resource.map(|r| text(&r.attributes)).unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Got {
                        service: service.clone(),
                        name: s.name,
                        trace_id: s.trace_id,
                        span_id: s.span_id,
                        parent_span_id: s.parent_span_id,
                        attrs: text(&s.attributes),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    fn spans(&self) -> Vec<Got> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Starts an OTLP/gRPC trace receiver on a free loopback port; returns its endpoint.
async fn start_receiver() -> (Receiver, String) {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let addr = listener.local_addr().expect("receiver address");
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let service = TraceServiceServer::new(receiver.clone());
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    (receiver, format!("http://{addr}"))
}

/// A session start is one trace: the gateway's `session_start` message span, its
/// `session_op` client span, the service's `session_op` server span (a child of the gateway's
/// span, through the `traceparent` NATS header) and the service's Redis spans below it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_crosses_gateway_and_session_service() {
    let (receiver, endpoint) = start_receiver().await;
    let stack = Stack::builder()
        .mode(Mode::Distributed)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start()
        .await;
    let dev = unique_device("TRACE");
    let mut c = stack.registered_client(0, &dev).await;
    let s = c.start(&dev).await.session_id;
    c.send_data_acked(&dev, &s, 1, 3).await;
    c.end(&dev, &s).await;

    let (service_op, spans) = wait_for(
        "the service's start span and its gateway parent",
        WAIT_TIMEOUT,
        || {
            let (spans, dev) = (receiver.spans(), dev.clone());
            async move {
                let op = spans.iter().find(|g| {
                    g.service == "amr-session-service"
                        && g.name == "start"
                        && g.attrs.get("op").map(String::as_str) == Some("start")
                        && g.attrs.get("deviceId") == Some(&dev)
                })?;
                // Its parent must have arrived too.
                spans
                    .iter()
                    .any(|p| p.span_id == op.parent_span_id && p.service == "amr-gateway")
                    .then(|| (op.clone(), spans.clone()))
            }
        },
    )
    .await;
    let in_trace: Vec<&Got> = spans
        .iter()
        .filter(|g| g.trace_id == service_op.trace_id)
        .collect();
    let by_id = |id: &[u8]| in_trace.iter().find(|g| g.span_id == id).copied();

    // service op <- gateway session_op (client) <- gateway session_start message span.
    let gw_op = by_id(&service_op.parent_span_id).expect("parent in the same trace");
    assert_eq!(gw_op.service, "amr-gateway", "{gw_op:?}");
    assert_eq!(gw_op.attrs.get("op").map(String::as_str), Some("start"));
    let gw_msg = by_id(&gw_op.parent_span_id).expect("the client message span");
    assert_eq!(gw_msg.service, "amr-gateway");
    assert_eq!(gw_msg.name, "session_start", "{gw_msg:?}");
    assert!(
        gw_msg.parent_span_id.is_empty(),
        "the client message span is the root: {gw_msg:?}"
    );
    // Redis calls of the service are children of its op span.
    let redis: Vec<_> = in_trace
        .iter()
        .filter(|g| g.name.starts_with("redis.") && g.parent_span_id == service_op.span_id)
        .collect();
    assert!(
        redis.iter().any(|g| g.name == "redis.commit"),
        "no redis.commit under the service span: {in_trace:#?}"
    );
    let services: std::collections::HashSet<_> =
        in_trace.iter().map(|g| g.service.as_str()).collect();
    assert_eq!(
        services,
        ["amr-gateway", "amr-session-service"].into_iter().collect()
    );
    // The connection's lifetime span is not exported (it would make one trace per socket).
    assert!(spans.iter().all(|g| g.name != "connection"));
}

/// `name{labels} value` lines of a Prometheus text page, keyed by `name{labels}`.
fn samples(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

async fn scrape(base: &str) -> (String, HashMap<String, f64>) {
    let r = http::get(&format!("{base}/metrics")).await;
    assert_eq!(r.status, 200, "{base}/metrics: {}", r.body);
    let s = samples(&r.body);
    (r.body, s)
}

fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_both_services_move_with_a_session() {
    let stack = Stack::start_mode(Mode::Distributed).await;
    let gw = stack.http_url(0);
    let svc = stack.service_http_url(0);
    let (_, gw0) = scrape(&gw).await;
    let (_, svc0) = scrape(&svc).await;

    let dev = unique_device("METRICS");
    let mut c = stack.registered_client(0, &dev).await;
    let s = c.start(&dev).await.session_id;
    c.send_data_acked(&dev, &s, 1, 3).await;
    c.send_text("{not json").await;
    c.recv_error().await;
    let (gw_mid, _) = scrape(&gw).await;
    let (_, svc_mid) = scrape(&svc).await;
    assert!(
        gw_mid.contains("amr_gateway_connections 1"),
        "one open connection:\n{gw_mid}"
    );
    assert_eq!(value(&svc_mid, "amr_sessions_active"), 1.0);
    c.end(&dev, &s).await;
    c.close().await;

    // The gateway counts the connection's close once the socket is gone.
    let gw1 = wait_for("the gateway's close counters", WAIT_TIMEOUT, || {
        let gw = gw.clone();
        async move {
            let (_, m) = scrape(&gw).await;
            (value(
                &m,
                "amr_gateway_connections_closed_total{cause=\"client_closed\"}",
            ) >= 1.0)
                .then_some(m)
        }
    })
    .await;
    let (svc_body, svc1) = scrape(&svc).await;

    let moved = |before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str| {
        assert!(
            value(after, key) > value(before, key),
            "{key} did not move: {} -> {}",
            value(before, key),
            value(after, key)
        );
    };
    for key in [
        "amr_gateway_connections_opened_total",
        "amr_gateway_messages_in_total{type=\"device_register\"}",
        "amr_gateway_messages_in_total{type=\"session_start\"}",
        "amr_gateway_messages_in_total{type=\"sensor_data\"}",
        "amr_gateway_messages_in_total{type=\"invalid\"}",
        "amr_gateway_messages_out_total{type=\"session_created\"}",
        "amr_gateway_messages_out_total{type=\"ack\"}",
        "amr_gateway_errors_total{code=\"INVALID_MESSAGE\"}",
        "amr_gateway_session_ops_total{op=\"start\",result=\"ok\"}",
        "amr_gateway_session_op_duration_seconds_count{op=\"start\"}",
        "amr_gateway_session_op_duration_seconds_bucket{op=\"start\",le=\"+Inf\"}",
        "amr_gateway_jetstream_ack_duration_seconds_count",
        "amr_gateway_sensor_samples_total",
        "amr_gateway_connections_closed_total{cause=\"client_closed\"}",
    ] {
        moved(&gw0, &gw1, key);
    }
    for key in [
        "amr_sessions_started_total",
        "amr_sessions_ended_total{reason=\"client_request\"}",
        "amr_session_ops_total{op=\"start\",result=\"ok\"}",
        "amr_session_op_duration_seconds_count{op=\"start\"}",
    ] {
        moved(&svc0, &svc1, key);
    }
    assert_eq!(value(&gw1, "amr_gateway_connections"), 0.0);
    assert_eq!(value(&gw1, "amr_gateway_publishes_in_flight"), 0.0);
    assert_eq!(value(&gw1, "amr_gateway_nats_connected"), 1.0);
    assert_eq!(value(&gw1, "amr_gateway_draining"), 0.0);
    assert_eq!(value(&svc1, "amr_session_service_nats_connected"), 1.0);
    assert_eq!(value(&svc1, "amr_session_service_redis_connected"), 1.0);
    assert_eq!(value(&svc1, "amr_sessions_active"), 0.0);
    assert!(
        svc_body.contains("amr_session_requests_in_flight"),
        "{svc_body}"
    );
    // No id ever becomes a label.
    for (who, body) in [("gateway", &gw1), ("service", &svc1)] {
        assert!(
            body.keys().all(|k| !k.contains(&dev) && !k.contains(&s)),
            "{who} exposes a device or session id as a label"
        );
    }
}

/// `AMR_LOG_FORMAT=json`: every line of both services is a JSON object; the lines of the
/// session carry deviceId, sessionId and traceId; no payload or token text appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_ids_and_no_payload_or_token() {
    let mut stack = Stack::builder()
        .mode(Mode::Distributed)
        .env("AMR_LOG_FORMAT", "json")
        .env(
            "RUST_LOG",
            "info,amr_gateway=debug,amr_session_service=debug",
        )
        .start()
        .await;
    let dev = unique_device("LOGS");
    let secret = "tok-SECRET-7f3a9c";
    let marker = "PAYLOAD-MARKER-51c2";
    let mut c = stack.client(0).await;
    let mut reg = msg::register(&dev, Some("1.1.0"));
    reg["token"] = serde_json::Value::from(secret);
    c.send_json(&reg).await;
    c.recv_registered().await;
    let s = c.start(&dev).await.session_id;
    c.send_json(&msg::sensor_data(
        &dev,
        Some(&s),
        Some(1),
        serde_json::json!({ "note": marker }),
    ))
    .await;
    c.wait_ack(&s, 1).await;
    c.end(&dev, &s).await;
    c.close().await;

    // Stop both (gracefully), so every line is written.
    stack.term_gateway(0);
    assert!(stack.wait_gateway_exit(0, WAIT_TIMEOUT).is_some());
    stack.term_service(0);
    assert!(stack.wait_service_exit(0, WAIT_TIMEOUT).is_some());
    let gw_log = stack.gateway(0).proc_.log_text();
    let svc_log = stack.service(0).proc_.log_text();

    for (who, log) in [("gateway", &gw_log), ("service", &svc_log)] {
        assert!(!log.contains(secret), "{who} logged the token:\n{log}");
        assert!(!log.contains(marker), "{who} logged a payload:\n{log}");
        let lines: Vec<serde_json::Value> = log
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{who}: not JSON ({e}): {l}"))
            })
            .collect();
        let of_session: Vec<_> = lines
            .iter()
            .filter(|l| l["sessionId"] == s.as_str())
            .collect();
        assert!(
            !of_session.is_empty(),
            "{who}: no line carries sessionId {s}:\n{log}"
        );
        assert!(
            of_session.iter().any(|l| l["deviceId"] == dev.as_str()
                && l["traceId"].as_str().is_some_and(|t| t.len() == 32)),
            "{who}: no line carries deviceId, sessionId and traceId together:\n{log}"
        );
    }
}

/// `/readyz` follows NATS on both services (and `/healthz` stays 200: liveness only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_nats_on_both_services() {
    let mut stack = Stack::start_mode(Mode::Distributed).await;
    let urls = [stack.http_url(0), stack.service_http_url(0)];
    for base in &urls {
        assert_eq!(http::get(&format!("{base}/readyz")).await.status, 200);
    }
    stack.nats_mut().stop();
    for base in &urls {
        let readyz = format!("{base}/readyz");
        amr_tests::wait::wait_until("/readyz 503 without NATS", WAIT_TIMEOUT, || async {
            http::get(&readyz).await.status == 503
        })
        .await;
        assert_eq!(http::get(&format!("{base}/healthz")).await.status, 200);
    }
    let (_, gw) = scrape(&urls[0]).await;
    assert_eq!(value(&gw, "amr_gateway_nats_connected"), 0.0);
    stack.nats_mut().restart().await;
    for base in &urls {
        let readyz = format!("{base}/readyz");
        amr_tests::wait::wait_until("/readyz 200 with NATS back", WAIT_TIMEOUT, || async {
            http::get(&readyz).await.status == 200
        })
        .await;
    }
}

/// The dashboard uses only series the services expose, and the README documents each one.
#[test]
fn dashboard_series_are_documented() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana/amr-bridge.json"))
        .expect("read the dashboard");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("read README");
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()));
    let mut names = std::collections::BTreeSet::new();
    let bytes = dashboard.as_bytes();
    let mut i = 0;
    while let Some(pos) = dashboard[i..].find("amr_") {
        let start = i + pos;
        let end = start
            + bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_lowercase() || **b == b'_')
                .count();
        let name = &dashboard[start..end];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_owned());
        i = end;
    }
    assert!(names.len() > 10, "{names:?}");
    for name in &names {
        assert!(
            readme.contains(&format!("| `{name}` |")),
            "{name} is on the dashboard but not in README's metrics table"
        );
    }
}
