//! `hello` as a WASIp3 component (`wasi:http/service@0.3`): an async
//! handler that returns its response at once and writes the body after
//! returning, from a task of its own.

use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_bindgen, wit_future, wit_stream};

wasip3::http::service::export!(HelloP3);

struct HelloP3;

impl wasip3::exports::http::handler::Guest for HelloP3 {
    async fn handle(_request: Request) -> Result<Response, ErrorCode> {
        let headers = Fields::from_list(&[(
            "content-type".to_string(),
            b"text/plain; charset=utf-8".to_vec(),
        )])
        .map_err(|_| ErrorCode::InternalError(Some("static headers".into())))?;
        let (mut body_tx, body_rx) = wit_stream::new();
        let (_trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(headers, Some(body_rx), trailers_rx);
        wit_bindgen::spawn_local(async move {
            body_tx.write_all(b"Hello, world!\n".to_vec()).await;
        });
        Ok(response)
    }
}
