//! `echo`: sends the request back.
//!
//! The body comes back byte for byte (binary-safe, streamed in chunks as it
//! arrives); the method, path, query and every request header come back as
//! response headers:
//!
//! | response header            | value                              |
//! | -------------------------- | ---------------------------------- |
//! | `x-echo-method`            | the request method                 |
//! | `x-echo-path`              | the path, as the client sent it    |
//! | `x-echo-query`             | the query string (absent if none)  |
//! | `x-echo-header-NAME`       | each request header `NAME`         |
//! | `content-type`             | the request's, if it had one       |

use std::io::Write as _;

use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::StreamError;

wasi::http::proxy::export!(Echo);

struct Echo;

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.clone(),
    }
}

impl wasi::exports::http::incoming_handler::Guest for Echo {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".into());
        let (path, query) = match path_with_query.split_once('?') {
            Some((path, query)) => (path.to_string(), Some(query.to_string())),
            None => (path_with_query.clone(), None),
        };

        let mut headers: Vec<(String, Vec<u8>)> = vec![
            ("x-echo-method".into(), method_name(&request.method()).into_bytes()),
            ("x-echo-path".into(), path.into_bytes()),
        ];
        if let Some(query) = query {
            headers.push(("x-echo-query".into(), query.into_bytes()));
        }
        for (name, value) in request.headers().entries() {
            if name == "content-type" {
                headers.push((name.clone(), value.clone()));
            }
            headers.push((format!("x-echo-header-{name}"), value));
        }
        let response = match Fields::from_list(&headers) {
            Ok(fields) => OutgoingResponse::new(fields),
            Err(_) => {
                let response = OutgoingResponse::new(Fields::new());
                response.set_status_code(400).expect("400 is a valid status");
                response
            }
        };
        let out_body = response.body().expect("body is taken once");
        ResponseOutparam::set(response_out, Ok(response));

        let mut out = out_body.write().expect("stream is taken once");
        if let Ok(in_body) = request.consume() {
            let input = in_body.stream().expect("stream is taken once");
            loop {
                match input.blocking_read(64 * 1024) {
                    Ok(chunk) => out.write_all(&chunk).expect("client went away"),
                    Err(StreamError::Closed) => break,
                    // The request body failed (cut off, or over the host's
                    // limit): end the response without finishing it.
                    Err(StreamError::LastOperationFailed(_)) => return,
                }
            }
            drop(input);
        }
        out.flush().expect("client went away");
        drop(out);
        OutgoingBody::finish(out_body, None).expect("body is complete");
    }
}
