//! `kv-probe`: runs one key-value or configuration call named by the query
//! string and answers with its result, so tests can drive the capability
//! interfaces from outside. HTTP through the `wasi` crate (as `wasip2`), the capabilities
//! through wit-bindgen against the `capabilities` world of `wit/`.
//!
//! `?op=set&bucket=B&key=K&value=V` (or `&size=N` for N bytes), `op=get`,
//! `op=del`, `op=exists`, `op=incr&by=N`, `op=list`, `op=getmany&keys=a,b`,
//! `op=setmany&keys=a,b&value=V`, `op=config&key=K`, `op=configall`.
//! A key-value error answers 409 with the error's text.

use std::io::Write as _;

use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

wit_bindgen::generate!({
    path: "../../../wit",
    world: "wasmwiz:platform/capabilities",
    generate_all,
});

use crate::wasi::config::store as config;
use crate::wasi::keyvalue::{atomics, batch, store};

wasip2::http::proxy::export!(KvProbe);

struct KvProbe;

impl wasip2::exports::http::incoming_handler::Guest for KvProbe {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let query = request.path_with_query().unwrap_or_default();
        let query = query.split_once('?').map(|(_, q)| q.to_string()).unwrap_or_default();
        let param = |name: &str| {
            query.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == name).then(|| v.to_string())
            })
        };
        let (status, body) = run(&param);
        let response = OutgoingResponse::new(Fields::new());
        response.set_status_code(status).expect("status is valid");
        let outgoing = response.body().expect("body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let mut out = outgoing.write().expect("stream is taken once");
        let _ = out.write_all(body.as_bytes());
        let _ = out.flush();
        drop(out);
        let _ = OutgoingBody::finish(outgoing, None);
    }
}

fn describe(error: store::Error) -> String {
    match error {
        store::Error::NoSuchStore => "no-such-store".to_string(),
        store::Error::AccessDenied => "access-denied".to_string(),
        store::Error::Other(message) => format!("other: {message}"),
    }
}

fn run(param: &dyn Fn(&str) -> Option<String>) -> (u16, String) {
    let op = param("op").unwrap_or_default();
    if op == "config" {
        let key = param("key").unwrap_or_default();
        return match config::get(&key) {
            Ok(Some(value)) => (200, value),
            Ok(None) => (404, "absent".into()),
            Err(e) => (500, format!("{e:?}")),
        };
    }
    if op == "configall" {
        return match config::get_all() {
            Ok(all) => (200, all.iter().map(|(k, v)| format!("{k}={v}\n")).collect()),
            Err(e) => (500, format!("{e:?}")),
        };
    }
    let bucket = match store::open(&param("bucket").unwrap_or_else(|| "default".into())) {
        Ok(bucket) => bucket,
        Err(e) => return (409, describe(e)),
    };
    let key = param("key").unwrap_or_default();
    let value = || match param("size") {
        Some(n) => vec![b'v'; n.parse().unwrap_or(0)],
        None => param("value").unwrap_or_default().into_bytes(),
    };
    let keys = || param("keys").unwrap_or_default().split(',').map(String::from).collect::<Vec<_>>();
    let result = match op.as_str() {
        "set" => bucket.set(&key, &value()).map(|()| "ok".to_string()),
        "get" => match bucket.get(&key) {
            Ok(Some(v)) => Ok(String::from_utf8_lossy(&v).into_owned()),
            Ok(None) => return (404, "absent".into()),
            Err(e) => Err(e),
        },
        "del" => bucket.delete(&key).map(|()| "ok".to_string()),
        "exists" => bucket.exists(&key).map(|b| b.to_string()),
        "incr" => {
            let by = param("by").and_then(|n| n.parse().ok()).unwrap_or(1);
            atomics::increment(&bucket, &key, by).map(|n| n.to_string())
        }
        "list" => {
            let mut all = Vec::new();
            let mut cursor = None;
            loop {
                match bucket.list_keys(cursor) {
                    Ok(page) => {
                        all.extend(page.keys);
                        cursor = page.cursor;
                        if cursor.is_none() {
                            break Ok(all.join("\n"));
                        }
                    }
                    Err(e) => break Err(e),
                }
            }
        }
        "getmany" => batch::get_many(&bucket, &keys()).map(|found| {
            found
                .into_iter()
                .map(|kv| match kv {
                    Some((k, v)) => format!("{k}={}\n", String::from_utf8_lossy(&v)),
                    None => "-\n".to_string(),
                })
                .collect()
        }),
        "setmany" => {
            let v = value();
            let pairs: Vec<_> = keys().into_iter().map(|k| (k, v.clone())).collect();
            batch::set_many(&bucket, &pairs).map(|()| "ok".to_string())
        }
        "delmany" => batch::delete_many(&bucket, &keys()).map(|()| "ok".to_string()),
        other => return (400, format!("unknown op `{other}`")),
    };
    match result {
        Ok(text) => (200, text),
        Err(e) => (409, describe(e)),
    }
}
