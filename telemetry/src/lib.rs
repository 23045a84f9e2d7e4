//! Logging and tracing set-up shared by every AMR Bridge binary, and W3C trace context carried
//! in NATS headers.
//!
//! It owns: the `tracing` subscriber (human-readable or flat JSON lines, level by `RUST_LOG`),
//! the OpenTelemetry tracer provider (OTLP export only when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; service name from `OTEL_SERVICE_NAME`), and
//! the `traceparent` injection/extraction used on session requests.
//!
//! It must never log or export message payloads or tokens, never block an async task (flush
//! and shutdown run on a blocking thread), and never make tracing a requirement: without an
//! endpoint spans still get trace ids (for logs and propagation) but nothing leaves the process.

mod json;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, FilterFn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

pub use amr_proto::headers::TRACEPARENT;

/// Name of the long-lived span of one WebSocket connection. It carries the connection's
/// deviceId/sessionId for the logs but is kept out of OpenTelemetry: one trace per client
/// message or session operation, not one trace per connection lifetime.
pub const CONNECTION_SPAN: &str = "connection";

/// Latency buckets (seconds) of every `_seconds` histogram of every service: 100 us to 10 s,
/// so loopback round trips (~0.2 ms) and request timeouts both land in a bucket.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Keeps the tracer provider alive; call [`Telemetry::shutdown`] at exit so buffered spans
/// are exported.
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Telemetry {
    /// True when spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Flushes and stops the exporter (on a blocking thread: the SDK's flush blocks).
    pub async fn shutdown(self) {
        if !self.exporting {
            return;
        }
        let provider = self.provider;
        let done = tokio::task::spawn_blocking(move || {
            let _ = provider.force_flush();
            provider.shutdown()
        });
        match tokio::time::timeout(std::time::Duration::from_secs(5), done).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("telemetry shutdown: {e}"),
            Ok(Err(e)) => eprintln!("telemetry shutdown: {e}"),
            Err(_) => eprintln!("telemetry shutdown timed out"),
        }
    }
}

/// True when the standard OTLP variables ask for trace export.
pub fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()))
}

/// `OTEL_SERVICE_NAME`, or `default`.
pub fn service_name(default: &str) -> String {
    std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Installs the global subscriber: logs in `format` at the `RUST_LOG` level (default `info`)
/// and spans into OpenTelemetry. Must run inside a Tokio runtime (the OTLP/gRPC exporter
/// spawns its connection there). An exporter that cannot be built is reported and tracing
/// goes on without export.
pub fn init(default_service: &str, format: Format) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = Resource::builder()
        .with_service_name(service_name(default_service))
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    let mut export_error = None;
    let mut exporting = false;
    if otlp_configured() {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(exporter) => {
                builder = builder.with_batch_exporter(exporter);
                exporting = true;
            }
            Err(e) => export_error = Some(e.to_string()),
        }
    }
    let provider = builder.build();
    let tracer = provider.tracer("amr-bridge");

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The exporter's own transport must not trace itself (a span per export, forever).
    let otel_filter = FilterFn::new(|meta| {
        let connection = meta.is_span() && meta.name() == CONNECTION_SPAN;
        let transport = ["h2", "hyper", "tonic", "tower", "opentelemetry", "reqwest"]
            .iter()
            .any(|p| meta.target().starts_with(p));
        !connection && !transport
    });
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(otel_filter);
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = match format {
        Format::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .event_format(json::FlatJson),
            )
            .try_init(),
        Format::Text => registry.with(tracing_subscriber::fmt::layer()).try_init(),
    };
    if let Err(e) = result {
        eprintln!("logging already initialised: {e}");
    }
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_default();
    if exporting && !protocol.is_empty() && protocol != "grpc" {
        tracing::warn!(%protocol, "only OTLP over gRPC is built in; exporting with grpc");
    }
    if let Some(e) = export_error {
        tracing::warn!(error = %e, "OTLP exporter not available; spans are not exported");
    } else if exporting {
        tracing::info!(service = %service_name(default_service), "exporting spans over OTLP");
    }
    Telemetry {
        provider,
        exporting,
    }
}

/// Records the span's OpenTelemetry trace id into its `traceId` field (declared
/// `traceId = tracing::field::Empty`), so every log line inside carries it.
pub fn record_trace_id(span: &tracing::Span) {
    if span.is_disabled() {
        return;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("traceId", tracing::field::display(sc.trace_id()));
    }
}

/// The OpenTelemetry trace id of `span` (32 hex digits), if it has one. For example to give
/// the sensor messages of a session the trace id of the `session_start` that created it.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The W3C `traceparent` of `span` (None when it has no valid context).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    Some(format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    ))
}

struct NatsInjector<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // NATS header lines break on CR/LF: never inject such a value.
        if value.bytes().any(|b| b == b'\r' || b == b'\n') {
            return;
        }
        self.0.insert(key, value.as_str());
    }
}

struct NatsExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Puts the trace context of `span` into NATS headers (`traceparent`, `tracestate`).
pub fn inject(span: &tracing::Span, headers: &mut async_nats::HeaderMap) {
    let cx = span.context();
    TraceContextPropagator::new().inject_context(&cx, &mut NatsInjector(headers));
}

/// Makes the trace context found in NATS headers (if any) the parent of `span`. Call before
/// the span is first entered.
pub fn set_parent_from(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    let Some(headers) = headers else { return };
    let cx = TraceContextPropagator::new().extract(&NatsExtractor(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injector_refuses_cr_lf_and_extractor_reads_traceparent() {
        let mut h = async_nats::HeaderMap::new();
        NatsInjector(&mut h).set(TRACEPARENT, "bad\r\nvalue".to_owned());
        assert!(h.get(TRACEPARENT).is_none());
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        NatsInjector(&mut h).set(TRACEPARENT, tp.to_owned());
        assert_eq!(NatsExtractor(&h).get(TRACEPARENT), Some(tp));
        let cx = TraceContextPropagator::new().extract(&NatsExtractor(&h));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote());
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
    }

    #[test]
    fn service_name_defaults() {
        // Only the default branch: the environment is the test runner's.
        if std::env::var("OTEL_SERVICE_NAME").is_err() {
            assert_eq!(service_name("amr-gateway"), "amr-gateway");
        }
    }
}
