//! `kv-counter`: counts the visits of every path in the deployment's own
//! key-value bucket and answers with the new count.
//!
//! `GET /counter/a` → `{"path":"/counter/a","count":3}`. The increment is
//! atomic, so concurrent requests on any number of nodes each get their own
//! count. Built with wit-bindgen against the `platform` world in `wit/`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "wasmwiz:platform/platform",
    generate_all,
});

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::keyvalue::{atomics, store};

struct KvCounter;

impl exports::wasi::http::incoming_handler::Guest for KvCounter {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let path = path.split('?').next().unwrap_or("/").to_string();
        let counted = store::open("default")
            .and_then(|bucket| atomics::increment(&bucket, &path, 1));
        let (status, body) = match counted {
            Ok(count) => (200, format!("{{\"path\":{},\"count\":{count}}}\n", json_string(&path))),
            // A limit or an unreachable store: say so, the host carries on.
            Err(error) => (503, format!("{{\"error\":{}}}\n", json_string(&describe(&error)))),
        };
        respond(response_out, status, "application/json", body.as_bytes());
    }
}

fn describe(error: &store::Error) -> String {
    match error {
        store::Error::NoSuchStore => "no key-value store".to_string(),
        store::Error::AccessDenied => "access denied".to_string(),
        store::Error::Other(message) => message.clone(),
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn respond(response_out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    let headers = Fields::from_list(&[("content-type".to_string(), content_type.into())])
        .expect("static header is valid");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("status is valid");
    let outgoing = response.body().expect("body is taken once");
    ResponseOutparam::set(response_out, Ok(response));
    let stream = outgoing.write().expect("stream is taken once");
    for chunk in body.chunks(4096) {
        if stream.blocking_write_and_flush(chunk).is_err() {
            return; // the client went away
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(outgoing, None);
}

export!(KvCounter);
