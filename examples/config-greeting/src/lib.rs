//! `config-greeting`: greets with the name the deployment is configured
//! with, read through `wasi:config/store`.
//!
//! Deployed with `"config": {"name": "Ada"}` it answers `Hello, Ada!`;
//! without a `name` it answers `Hello, world!`. Secrets are read the same
//! way (`"secrets": {...}` in the deployment): this component never shows
//! them, it only says how many configuration entries it sees.

wit_bindgen::generate!({
    path: "../../wit",
    world: "wasmwiz:platform/platform",
    generate_all,
});

use wasi::config::store as config;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct ConfigGreeting;

impl exports::wasi::http::incoming_handler::Guest for ConfigGreeting {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let name = config::get("name").ok().flatten().unwrap_or_else(|| "world".to_string());
        let greeting = config::get("greeting").ok().flatten().unwrap_or_else(|| "Hello".to_string());
        let entries = config::get_all().map(|all| all.len()).unwrap_or(0);
        let body = format!("{greeting}, {name}!\n");

        let headers = Fields::from_list(&[
            ("content-type".to_string(), b"text/plain; charset=utf-8".to_vec()),
            ("x-config-entries".to_string(), entries.to_string().into_bytes()),
        ])
        .expect("static headers are valid");
        let response = OutgoingResponse::new(headers);
        let outgoing = response.body().expect("body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let stream = outgoing.write().expect("stream is taken once");
        if stream.blocking_write_and_flush(body.as_bytes()).is_ok() {
            drop(stream);
            let _ = OutgoingBody::finish(outgoing, None);
        }
    }
}

export!(ConfigGreeting);
