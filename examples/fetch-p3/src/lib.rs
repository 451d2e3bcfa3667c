//! A WASIp3 handler that calls an upstream HTTP service and streams its
//! answer back: `GET /...?url=http://host:port/path` answers with the
//! upstream's status and body, the body passed through as it arrives (the
//! upstream's body stream becomes the response's, never buffered here).
//!
//! The deployment must allow the upstream's host:
//! `wasmwiz deploy fetch_p3.wasm --route '/acme/fetch/...' --allow-outbound http://127.0.0.1:9000`.
//! While it waits for the upstream, its instance may serve other requests
//! (`--max-instance-reuse 1000 --max-instance-concurrency 100`).

use wasip3::http::client;
use wasip3::http::types::{ErrorCode, Fields, Request, Response, Scheme};
use wasip3::{wit_bindgen, wit_future, wit_stream};

wasip3::http::service::export!(FetchP3);

struct FetchP3;

fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// A plain-text answer.
fn text(status: u16, body: String) -> Response {
    let (mut body_tx, body_rx) = wit_stream::new();
    let (_trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
    let (response, _sent) = Response::new(Fields::new(), Some(body_rx), trailers_rx);
    let _ = response.set_status_code(status);
    wit_bindgen::spawn_local(async move {
        body_tx.write_all(body.into_bytes()).await;
    });
    response
}

impl wasip3::exports::http::handler::Guest for FetchP3 {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let target = request.get_path_with_query().unwrap_or_default();
        let query = target.split_once('?').map_or("", |(_, query)| query);
        let Some(url) = param(query, "url") else {
            return Ok(text(400, "add ?url=http://host:port/path\n".into()));
        };
        let (scheme, rest) = match url.split_once("://") {
            Some(("http", rest)) => (Scheme::Http, rest),
            Some(("https", rest)) => (Scheme::Https, rest),
            _ => return Ok(text(400, format!("not an http(s) URL: {url}\n"))),
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };

        let (_trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
        let (outgoing, _sent) = Request::new(Fields::new(), None, trailers_rx, None);
        let bad = |what: &str| ErrorCode::InternalError(Some(format!("invalid {what}")));
        outgoing.set_scheme(Some(&scheme)).map_err(|()| bad("scheme"))?;
        outgoing.set_authority(Some(authority)).map_err(|()| bad("authority"))?;
        outgoing.set_path_with_query(Some(path)).map_err(|()| bad("path"))?;

        // Refused by the host unless the deployment allows the upstream.
        let upstream = match client::send(outgoing).await {
            Ok(upstream) => upstream,
            Err(code) => return Ok(text(502, format!("the upstream failed: {code:?}\n"))),
        };
        let status = upstream.get_status_code();
        let (_result_tx, result_rx) = wit_future::new(|| Ok(()));
        let (body, trailers) = Response::consume_body(upstream, result_rx);
        let (response, _sent) = Response::new(Fields::new(), Some(body), trailers);
        let _ = response.set_status_code(status);
        Ok(response)
    }
}
