//! `hello`: answers every request with `200 Hello, world!`.
//!
//! The smallest useful wasi:http component, and the one every benchmark runs.

use std::io::Write as _;

use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

wasi::http::proxy::export!(Hello);

struct Hello;

impl wasi::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let headers = Fields::from_list(&[(
            "content-type".to_string(),
            b"text/plain; charset=utf-8".to_vec(),
        )])
        .expect("static header is valid");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(response_out, Ok(response));

        let mut out = body.write().expect("stream is taken once");
        out.write_all(b"Hello, world!\n").expect("client went away");
        out.flush().expect("client went away");
        drop(out);
        OutgoingBody::finish(body, None).expect("body is complete");
    }
}
