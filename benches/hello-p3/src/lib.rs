//! `hello-p3`: answers every request with `Hello, world!\n`, as the `hello`
//! example does, but as a WASIp3 component: `handle` is an async export, the
//! body a `stream<u8>` written by a task the guest spawns, so one instance
//! may serve several requests at once.

wit_bindgen::generate!({
    path: "wit",
    world: "wasmwiz:bench/hello-p3",
    generate_all,
});

use exports::wasi::http::handler::Guest;
use wasi::http::types::{ErrorCode, Fields, Request, Response};

struct HelloP3;

impl Guest for HelloP3 {
    async fn handle(_request: Request) -> Result<Response, ErrorCode> {
        let headers = Fields::new();
        headers
            .set("content-type", &[b"text/plain".to_vec()])
            .map_err(|_| ErrorCode::InternalError(Some("content-type".into())))?;
        let (mut body, contents) = wit_stream::new();
        let (trailers, no_trailers) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(headers, Some(contents), no_trailers);
        wit_bindgen::spawn_local(async move {
            body.write_all(b"Hello, world!\n".to_vec()).await;
            drop(body);
            let _ = trailers.write(Ok(None)).await;
        });
        Ok(response)
    }
}

export!(HelloP3);
