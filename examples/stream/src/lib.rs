//! `stream`: writes a large body in chunks, as it is produced.
//!
//! Query parameters: `chunks` (default 64), `size` bytes per chunk (default
//! 16384), `delay_ms` between chunks (default 0). Byte `i` of the body is
//! `i % 251`, so a client can check every byte it receives.

use std::io::Write as _;

use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

wasi::http::proxy::export!(Stream);

struct Stream;

fn param(query: &str, name: &str, default: u64) -> u64 {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(default)
}

impl wasi::exports::http::incoming_handler::Guest for Stream {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let query = path_with_query.split_once('?').map(|(_, q)| q).unwrap_or("");
        let chunks = param(query, "chunks", 64);
        let size = param(query, "size", 16 * 1024).clamp(1, 1 << 20) as usize;
        let delay_ms = param(query, "delay_ms", 0);

        let headers = Fields::from_list(&[(
            "content-type".to_string(),
            b"application/octet-stream".to_vec(),
        )])
        .expect("static header is valid");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(response_out, Ok(response));

        let mut out = body.write().expect("stream is taken once");
        let mut chunk = vec![0u8; size];
        let mut offset: u64 = 0;
        for _ in 0..chunks {
            for byte in chunk.iter_mut() {
                *byte = (offset % 251) as u8;
                offset += 1;
            }
            if out.write_all(&chunk).is_err() || out.flush().is_err() {
                return; // the client went away
            }
            if delay_ms > 0 {
                wasi::clocks::monotonic_clock::subscribe_duration(delay_ms * 1_000_000).block();
            }
        }
        drop(out);
        OutgoingBody::finish(body, None).expect("body is complete");
    }
}
