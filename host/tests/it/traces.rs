//! Request traces: a client's `traceparent` is continued through the host
//! into the component's outgoing requests, the spans are exported over
//! OTLP/HTTP to a real receiver (which decodes the protobuf payloads), and
//! the trace id is in the tenant's log event.

use std::io::{Read as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::json;

use crate::helpers::{Api, ServeEnv, client};

/// An OTLP/HTTP receiver on loopback: every span of every
/// `POST /v1/traces` it decodes, and the service names they came with.
struct Receiver {
    port: u16,
    spans: Arc<Mutex<Vec<Span>>>,
    services: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let services = Arc::new(Mutex::new(Vec::new()));
        let (kept, names) = (spans.clone(), services.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (kept, names) = (kept.clone(), names.clone());
                std::thread::spawn(move || serve_export(stream, &kept, &names));
            }
        });
        Receiver { port, spans, services }
    }

    /// Waits until spans of `trace_id` named `names` have all arrived.
    fn wait_for(&self, trace_id: &[u8], names: &[&str]) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let spans: Vec<Span> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect();
            if names.iter().all(|n| spans.iter().any(|s| s.name == *n)) {
                return spans;
            }
            assert!(Instant::now() < deadline, "spans so far: {spans:#?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Reads one HTTP/1.1 request (keep-alive: several) and decodes each body.
fn serve_export(
    mut stream: std::net::TcpStream,
    spans: &Mutex<Vec<Span>>,
    services: &Mutex<Vec<String>>,
) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
        assert!(head.starts_with("post /v1/traces "), "{head}");
        assert!(head.contains("content-type: application/x-protobuf"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .expect("a content-length");
        while buffer.len() < end + 4 + length {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buffer.drain(..end + 4 + length).skip(end + 4).collect();
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        for resource in request.resource_spans {
            for attribute in resource.resource.iter().flat_map(|r| &r.attributes) {
                if attribute.key == "service.name" {
                    services.lock().unwrap().push(format!("{:?}", attribute.value));
                }
            }
            for scope in resource.scope_spans {
                spans.lock().unwrap().extend(scope.spans);
            }
        }
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    }
}

/// A loopback server answering 204, keeping each request's `traceparent`.
fn upstream() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 8192];
            let n = stream.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
            let header = head.lines().find_map(|l| l.strip_prefix("traceparent:"));
            kept.lock().unwrap().push(header.unwrap_or("").trim().to_string());
            let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
        }
    });
    (port, seen)
}

fn attribute(span: &Span, key: &str) -> String {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .map(|a| format!("{:?}", a.value))
        .unwrap_or_default()
}

#[tokio::test]
async fn a_traced_request_continues_the_clients_trace_into_the_components_calls() {
    let receiver = Receiver::start();
    let (port, upstream_seen) = upstream();
    let mut env = ServeEnv::sqlite();
    env.set("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://127.0.0.1:{}", receiver.port))
        .set("OTEL_SERVICE_NAME", "wasmwiz-test")
        // The batch is sent every 200 ms instead of every 5 s.
        .set("OTEL_BSP_SCHEDULE_DELAY", "200")
        .set("OUTBOUND_ALLOWED_NETWORKS", "127.0.0.0/8");
    let key = env.tenant("acme", "pro", false);
    let server = env.serve();
    let api = Api::new(&server, &key);
    let digest = api.upload_component("hostile").await;
    let (status, body) = api
        .deploy(json!({
            "route": "/acme/h/...",
            "component": digest,
            "allowed_outbound_hosts": [format!("127.0.0.1:{port}")],
        }))
        .await;
    assert_eq!(status, 201, "{body}");

    let trace_hex = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let response = client()
        .get(server.url(&format!("/acme/h/outbound?url=http://127.0.0.1:{port}/x")))
        .header("traceparent", format!("00-{trace_hex}-{client_span}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "status 204");

    let trace_id = hex::decode(trace_hex).unwrap();
    let services = receiver.services.clone();
    let names = ["request", "route_lookup", "admission", "instantiate", "guest", "response"];
    let spans =
        tokio::task::spawn_blocking(move || receiver.wait_for(&trace_id, &names)).await.unwrap();
    assert!(services.lock().unwrap().iter().any(|s| s.contains("wasmwiz-test")), "service.name");
    let request = spans.iter().find(|s| s.name == "request").unwrap();
    assert_eq!(hex::encode(&request.parent_span_id), client_span, "continued from the client's");
    assert!(attribute(request, "http.route").contains("/acme/h/..."), "{request:#?}");
    assert!(attribute(request, "http.response.status_code").contains("200"), "{request:#?}");
    for name in &names[1..] {
        let child = spans.iter().find(|s| s.name == *name).unwrap();
        assert_eq!(child.parent_span_id, request.span_id, "{name} is a child of the request");
        assert!(child.end_time_unix_nano >= child.start_time_unix_nano);
    }
    let guest = spans.iter().find(|s| s.name == "guest").unwrap();
    assert!(attribute(guest, "outcome").contains("ok"), "{guest:#?}");

    // The component's outgoing request carried the trace on, with its own
    // run (the guest span) as the parent.
    let seen = upstream_seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [format!("00-{trace_hex}-{}-01", hex::encode(&guest.span_id))],
        "the outgoing traceparent"
    );

    // And the trace id is in the tenant's log event.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = api.call(api.request(reqwest::Method::GET, "/api/v1/logs")).await;
    assert_eq!(status, 200);
    assert_eq!(body["events"][0]["trace_id"], trace_hex, "{body}");
}

#[tokio::test]
async fn without_an_exporter_a_trace_is_still_continued_into_outgoing_requests() {
    let (port, upstream_seen) = upstream();
    let mut env = ServeEnv::sqlite();
    env.set("OUTBOUND_ALLOWED_NETWORKS", "127.0.0.0/8");
    let key = env.tenant("acme", "pro", false);
    let server = env.serve();
    let api = Api::new(&server, &key);
    let digest = api.upload_component("hostile").await;
    let (status, _) = api
        .deploy(json!({
            "route": "/acme/h/...",
            "component": digest,
            "allowed_outbound_hosts": [format!("127.0.0.1:{port}")],
        }))
        .await;
    assert_eq!(status, 201);
    let url = server.url(&format!("/acme/h/outbound?url=http://127.0.0.1:{port}/x"));
    let traced = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    client().get(&url).header("traceparent", traced).send().await.unwrap();
    // No header (or a malformed one): a trace is started.
    client().get(&url).header("traceparent", "00-zz-bad-01").send().await.unwrap();
    let seen = upstream_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0], traced, "passed on as it came: no span of the host's is recorded");
    assert!(seen[1].len() == 55 && !seen[1].contains("4bf92f35"), "{seen:?}");
}
