//! `bad-import`: an HTTP handler that also imports `acme:vault/secrets`, an
//! interface no WasmWiz host provides, so an upload must be refused with 422
//! naming that import.

use std::io::Write as _;

use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

wit_bindgen::generate!({
    inline: "
        package acme:vault@1.0.0;
        interface secrets {
            get: func(name: string) -> string;
        }
        world guest {
            import secrets;
        }
    ",
    world: "guest",
});

wasi::http::proxy::export!(BadImport);

struct BadImport;

impl wasi::exports::http::incoming_handler::Guest for BadImport {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let secret = acme::vault::secrets::get("token");
        let response = OutgoingResponse::new(Fields::new());
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let mut out = body.write().expect("stream is taken once");
        let _ = out.write_all(secret.as_bytes());
        drop(out);
        let _ = OutgoingBody::finish(body, None);
    }
}
