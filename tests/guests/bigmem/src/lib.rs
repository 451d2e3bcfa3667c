//! `bigmem`: a component whose *initial* linear memory (a 256 MiB static
//! array) is over the host's default memory limit, so it must fail to
//! instantiate rather than run.

use std::hint::black_box;
use std::io::Write as _;

use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

wasi::http::proxy::export!(BigMem);

struct BigMem;

// `static mut` puts the array in .bss: it costs nothing in the file but
// raises the module's initial memory to 256 MiB and more.
static mut HUGE: [u8; 256 << 20] = [0; 256 << 20];

impl wasi::exports::http::incoming_handler::Guest for BigMem {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let response = OutgoingResponse::new(Fields::new());
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let mut out = body.write().expect("stream is taken once");
        #[expect(unsafe_code, reason = "reading the .bss array keeps it alive")]
        // SAFETY: one instance per request, nothing writes to HUGE.
        let byte = unsafe { (*black_box(&raw const HUGE))[black_box(12345)] };
        let _ = out.write_all(format!("instantiated, byte {byte}").as_bytes());
        drop(out);
        let _ = OutgoingBody::finish(body, None);
    }
}
