wit_bindgen::generate!({ path: "wit", world: "wasmwiz:platform/platform", generate_all });

use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};
use wasi::keyvalue::{atomics, store};

struct Visits;

impl exports::wasi::http::incoming_handler::Guest for Visits {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        // The deployment's own bucket; any other name is shared by the
        // tenant's deployments. Errors (a limit, the store down) are values.
        let text = match store::open("default").and_then(|b| atomics::increment(&b, &path, 1)) {
            Ok(n) => format!("{path}: {n} visits\n"),
            Err(e) => format!("no count: {e:?}\n"),
        };
        let response = OutgoingResponse::new(Fields::new());
        let body = response.body().unwrap();
        ResponseOutparam::set(response_out, Ok(response));
        let out = body.write().unwrap();
        out.blocking_write_and_flush(text.as_bytes()).unwrap();
        drop(out);
        OutgoingBody::finish(body, None).unwrap();
    }
}

export!(Visits);
