//! Request traces. Each request served is a `tracing` span (`request`,
//! target `wasmwiz::trace`) with children for the route lookup, admission,
//! instantiation, the guest's run and the response. A client's W3C
//! `traceparent` is continued, or a trace started; the component's outgoing
//! HTTP requests carry the trace on in their own `traceparent`, and the
//! trace id is in the tenant's log event.
//!
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the spans are exported over
//! OTLP/HTTP (protobuf) in batches, by a thread of the exporter's own.
//! Unset, the spans are at `TRACE` level, which the default log filter
//! does not enable: they are not built, and only the trace context is
//! carried per request (the client's passed on as it came, or a new one).

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use http::HeaderValue;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Target of the request spans.
pub const TARGET: &str = "wasmwiz::trace";

/// Whether spans are exported (set once, at start).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether an exporter is installed.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// A W3C trace context: the trace, and the span a callee's spans hang off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub sampled: bool,
}

impl TraceParent {
    /// Reads a `traceparent` header (`00-TRACE-PARENT-FLAGS`); `None` when
    /// it is malformed, of version `ff`, or has an all-zero id, as the W3C
    /// recommendation says a receiver must treat it.
    pub fn parse(header: &str) -> Option<TraceParent> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        let (trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || !is_hex(version) {
            return None;
        }
        // Version 00 has exactly four fields; later ones may add more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id: [u8; 16] = decode_hex(trace)?;
        let parent_id: [u8; 8] = decode_hex(parent)?;
        let [flags] = decode_hex::<1>(flags)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent { trace_id, parent_id, sampled: flags & 1 == 1 })
    }

    /// A new trace, sampled.
    pub fn root() -> TraceParent {
        TraceParent { trace_id: nonzero(), parent_id: nonzero(), sampled: true }
    }

    /// The header value.
    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.parent_id),
            u8::from(self.sampled)
        )
    }

    /// The trace id in hex (as log events and tracing backends show it).
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    fn span_context(&self) -> SpanContext {
        let flags = if self.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.parent_id),
            flags,
            true,
            TraceState::default(),
        )
    }
}

fn is_hex(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !is_hex(text) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

fn nonzero<const N: usize>() -> [u8; N] {
    loop {
        let bytes: [u8; N] = rand::random();
        if bytes != [0; N] {
            return bytes;
        }
    }
}

/// One request's trace: its span and its context.
#[derive(Debug)]
pub struct RequestTrace {
    /// The `request` span (disabled unless spans are exported).
    pub span: tracing::Span,
    /// The trace, with this request's span as the parent of what it calls.
    pub context: TraceParent,
}

impl RequestTrace {
    /// Starts the trace of a request that came with `traceparent` (if
    /// any): continued from the client's context, or a new trace.
    pub fn start(traceparent: Option<&HeaderValue>, span: tracing::Span) -> RequestTrace {
        let client = traceparent.and_then(|v| v.to_str().ok()).and_then(TraceParent::parse);
        if !exporting() || span.is_disabled() {
            // No span of this host is recorded: the component's calls hang
            // off the client's span, as if the host were not there.
            let context = client.unwrap_or_else(TraceParent::root);
            return RequestTrace { span, context };
        }
        if let Some(client) = client {
            let parent =
                opentelemetry::Context::new().with_remote_span_context(client.span_context());
            let _ = span.set_parent(parent);
        }
        let context = span_ids(&span).unwrap_or_else(|| client.unwrap_or_else(TraceParent::root));
        RequestTrace { span, context }
    }
}

/// The `traceparent` of the calls a guest makes inside `guest` (its span):
/// that span as their parent when spans are exported, else `context`.
pub fn outgoing(context: TraceParent, guest: &tracing::Span) -> TraceParent {
    if !exporting() {
        return context;
    }
    span_ids(guest).unwrap_or(context)
}

/// The trace and span ids OpenTelemetry gave `span`, if it is recorded.
fn span_ids(span: &tracing::Span) -> Option<TraceParent> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let otel = context.span();
    let ids = otel.span_context();
    ids.is_valid().then(|| TraceParent {
        trace_id: ids.trace_id().to_bytes(),
        parent_id: ids.span_id().to_bytes(),
        sampled: ids.is_sampled(),
    })
}

/// The OTLP/HTTP exporter and the layer that feeds it, for `endpoint`
/// (`OTEL_EXPORTER_OTLP_ENDPOINT`: spans go to `ENDPOINT/v1/traces`).
pub fn exporter(
    endpoint: &str,
    service: &str,
) -> anyhow::Result<(
    SdkTracerProvider,
    tracing_opentelemetry::OpenTelemetryLayer<
        tracing_subscriber::Registry,
        opentelemetry_sdk::trace::Tracer,
    >,
)> {
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url.clone())
        .build()
        .with_context(|| format!("OTEL_EXPORTER_OTLP_ENDPOINT: cannot export to {url}"))?;
    let resource =
        opentelemetry_sdk::Resource::builder().with_service_name(service.to_string()).build();
    let provider =
        SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let tracer = provider.tracer("wasmwiz");
    EXPORTING.store(true, Ordering::Relaxed);
    Ok((provider, tracing_opentelemetry::layer().with_tracer(tracer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_headers_are_read_as_the_recommendation_says() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = TraceParent::parse(header).unwrap();
        assert_eq!(parent.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(parent.sampled);
        assert_eq!(parent.header(), header);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad}");
        }
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
                .is_some()
        );
    }

    #[test]
    fn without_an_exporter_a_client_trace_is_continued_and_otherwise_one_is_started() {
        let header =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let continued = RequestTrace::start(Some(&header), tracing::Span::none());
        assert_eq!(continued.context.header(), header.to_str().unwrap(), "passed on as it came");
        let started = RequestTrace::start(None, tracing::Span::none());
        assert_ne!(started.context.trace_id, [0; 16]);
        assert_eq!(TraceParent::parse(&started.context.header()), Some(started.context));
    }
}
