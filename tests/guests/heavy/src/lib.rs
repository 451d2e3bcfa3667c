//! `heavy`: a component with megabytes of distinct code, so that compiling
//! it takes its host well over a second. Tests use it to watch what a node
//! does while a deployment compiles. It answers `heavy <n>`, where `n`
//! depends on every function it carries.

use std::io::Write as _;

use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

wasi::http::proxy::export!(Heavy);

include!(concat!(env!("OUT_DIR"), "/functions.rs"));

struct Heavy;

impl wasi::exports::http::incoming_handler::Guest for Heavy {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let n = TABLE.iter().fold(1u64, |acc, f| f(acc) % 1_000_003);
        let response = OutgoingResponse::new(Fields::new());
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let mut out = body.write().expect("stream is taken once");
        let _ = out.write_all(format!("heavy {n}\n").as_bytes());
        drop(out);
        let _ = OutgoingBody::finish(body, None);
    }
}
