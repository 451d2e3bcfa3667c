//! `jobs`: the handler of a schedule and of a queue, and a publisher.
//!
//! Schedules and queue messages arrive as plain HTTP requests (see the
//! README's "Schedules and queues"); this component answers them and keeps
//! what it saw in its deployment's key-value bucket:
//!
//! - `POST .../tick` (a schedule's firing): counts it, and with
//!   `?publish=<queue>` publishes `tick <wasmwiz-scheduled-at>` to that
//!   queue of the tenant's.
//! - `POST .../consume` (a queue's delivery): counts the delivery and the
//!   message (keyed on `wasmwiz-message-id`: a message delivered twice is
//!   one message and one duplicate); a body `fail` fails every delivery,
//!   `fail-until N` fails deliveries before attempt N (`wasmwiz-attempt`).
//! - `POST .../publish?queue=<name>`: publishes the request's body to the
//!   tenant's queue with an outgoing request to
//!   `http://queue.wasmwiz.internal/<name>`, and answers with its answer.
//! - `GET .../stats`: what it counted, as JSON.
//! - `POST .../missing` with message ids, one a line (at most 1,000): those
//!   never consumed.
//! - `GET .../seen?id=<message id>`: how often that message was delivered
//!   and the last attempt number.

wit_bindgen::generate!({
    path: "../../wit",
    world: "wasmwiz:platform/platform",
    generate_all,
});

use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};
use wasi::keyvalue::{atomics, batch, store};

struct Jobs;

impl exports::wasi::http::incoming_handler::Guest for Jobs {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let target = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
        let header = |name: &str| {
            request
                .headers()
                .get(&name.to_string())
                .first()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let scheduled_at = header("wasmwiz-scheduled-at");
        let message_id = header("wasmwiz-message-id");
        let attempt: u64 = header("wasmwiz-attempt").parse().unwrap_or(0);
        let content_type = header("content-type");
        let action = path.rsplit('/').next().unwrap_or("").to_string();
        let body = read_body(request);
        let answer = match action.as_str() {
            "tick" => tick(&scheduled_at, param(query, "publish")),
            "consume" => consume(&message_id, attempt, &body),
            "publish" => match param(query, "queue") {
                Some(queue) => publish(&queue, &content_type, &body),
                None => Ok((400, "publish needs ?queue=<name>\n".to_string())),
            },
            "stats" => stats(),
            "missing" => missing(&body),
            "seen" => seen(&param(query, "id").unwrap_or_default()),
            _ => Ok((404, "tick, consume, publish, stats or seen\n".to_string())),
        };
        let (status, text) = answer.unwrap_or_else(|e| (503, format!("{e}\n")));
        respond(response_out, status, &text);
    }
}

type Answer = Result<(u16, String), String>;

fn bucket() -> Result<store::Bucket, String> {
    store::open("default").map_err(|e| describe(&e))
}

fn add(bucket: &store::Bucket, key: &str, by: u64) -> Result<u64, String> {
    atomics::increment(bucket, key, by).map_err(|e| describe(&e))
}

fn tick(scheduled_at: &str, publish_to: Option<String>) -> Answer {
    let b = bucket()?;
    add(&b, "ticks", 1)?;
    // The same due time twice is a duplicate firing.
    if add(&b, &format!("tick:{scheduled_at}"), 1)? > 1 {
        add(&b, "duplicate_ticks", 1)?;
    }
    b.set("last_scheduled_at", scheduled_at.as_bytes()).map_err(|e| describe(&e))?;
    if let Some(queue) = publish_to {
        let (status, text) = publish(&queue, "text/plain", format!("tick {scheduled_at}").as_bytes())?;
        if status != 202 {
            return Ok((502, format!("publishing to {queue}: {status} {text}")));
        }
    }
    Ok((200, format!("tick {scheduled_at}\n")))
}

fn consume(message_id: &str, attempt: u64, body: &[u8]) -> Answer {
    let b = bucket()?;
    add(&b, "deliveries", 1)?;
    b.set(&format!("attempt:{message_id}"), attempt.to_string().as_bytes())
        .map_err(|e| describe(&e))?;
    let text = String::from_utf8_lossy(body);
    let fail = match text.strip_prefix("fail-until ") {
        Some(n) => attempt < n.trim().parse::<u64>().unwrap_or(0),
        None => text == "fail",
    };
    if fail {
        return Ok((500, format!("failing attempt {attempt} as asked\n")));
    }
    // Counted once per message, however often it is delivered. (Not one
    // atomic step: a node killed between the two counts leaves a message
    // counted as a duplicate only; `missing` asks about each message.)
    if add(&b, &format!("done:{message_id}"), 1)? == 1 {
        add(&b, "messages", 1)?;
    } else {
        add(&b, "duplicates", 1)?;
    }
    Ok((200, format!("consumed {message_id} on attempt {attempt}\n")))
}

fn stats() -> Answer {
    let b = bucket()?;
    let last = b
        .get("last_scheduled_at")
        .map_err(|e| describe(&e))?
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default();
    Ok((
        200,
        format!(
            "{{\"ticks\":{},\"duplicate_ticks\":{},\"deliveries\":{},\"messages\":{},\
             \"duplicates\":{},\"last_scheduled_at\":\"{}\"}}\n",
            add(&b, "ticks", 0)?,
            add(&b, "duplicate_ticks", 0)?,
            add(&b, "deliveries", 0)?,
            add(&b, "messages", 0)?,
            add(&b, "duplicates", 0)?,
            last.replace(['"', '\\'], "")
        ),
    ))
}

/// Of the message ids in `body` (one a line, at most 1,000), those never
/// consumed, one a line.
fn missing(body: &[u8]) -> Answer {
    let b = bucket()?;
    let ids: Vec<String> =
        String::from_utf8_lossy(body).lines().filter(|l| !l.is_empty()).map(str::to_string).collect();
    if ids.len() > 1000 {
        return Ok((400, "at most 1000 ids at once\n".to_string()));
    }
    let keys: Vec<String> = ids.iter().map(|id| format!("done:{id}")).collect();
    let found = batch::get_many(&b, &keys).map_err(|e| describe(&e))?;
    let mut out = String::new();
    for (id, value) in ids.iter().zip(found) {
        if value.is_none() {
            out.push_str(id);
            out.push('\n');
        }
    }
    Ok((200, out))
}

fn seen(id: &str) -> Answer {
    let b = bucket()?;
    // `consume` writes the attempt before it counts the message done: read
    // in the other order, a count of one comes with that attempt's number.
    let consumed = add(&b, &format!("done:{id}"), 0)?;
    let attempt = b
        .get(&format!("attempt:{id}"))
        .map_err(|e| describe(&e))?
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_else(|| "0".into());
    Ok((
        200,
        format!(
            "{{\"consumed\":{consumed},\"last_attempt\":{}}}\n",
            attempt.parse::<u64>().unwrap_or(0)
        ),
    ))
}

/// Publishes `body` to the tenant's queue `queue`: an ordinary outgoing
/// request, answered inside the node (no outbound grant needed).
fn publish(queue: &str, content_type: &str, body: &[u8]) -> Answer {
    let content_type = if content_type.is_empty() { "application/octet-stream" } else { content_type };
    let headers = Fields::from_list(&[("content-type".to_string(), content_type.into())])
        .map_err(|e| format!("{e:?}"))?;
    let request = OutgoingRequest::new(headers);
    let _ = request.set_method(&Method::Post);
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some("queue.wasmwiz.internal"));
    let _ = request.set_path_with_query(Some(&format!("/{queue}")));
    let outgoing = request.body().map_err(|()| "request body taken".to_string())?;
    let pending = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    {
        let stream = outgoing.write().map_err(|()| "request stream taken".to_string())?;
        for chunk in body.chunks(4096) {
            stream.blocking_write_and_flush(chunk).map_err(|e| format!("{e:?}"))?;
        }
    }
    OutgoingBody::finish(outgoing, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or("no answer")?
        .map_err(|()| "answer taken".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let incoming = response.consume().map_err(|()| "answer body taken".to_string())?;
    let text = read_incoming(incoming);
    Ok((status, String::from_utf8_lossy(&text).into_owned()))
}

fn param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn read_body(request: IncomingRequest) -> Vec<u8> {
    match request.consume() {
        Ok(body) => read_incoming(body),
        Err(()) => Vec::new(),
    }
}

fn read_incoming(body: wasi::http::types::IncomingBody) -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(stream) = body.stream() {
        while let Ok(chunk) = stream.blocking_read(64 << 10) {
            out.extend_from_slice(&chunk);
        }
    }
    out
}

fn describe(error: &store::Error) -> String {
    match error {
        store::Error::NoSuchStore => "no key-value store".to_string(),
        store::Error::AccessDenied => "access denied".to_string(),
        store::Error::Other(message) => message.clone(),
    }
}

fn respond(response_out: ResponseOutparam, status: u16, body: &str) {
    let headers = Fields::from_list(&[("content-type".to_string(), b"text/plain".to_vec())])
        .expect("static header is valid");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("status is valid");
    let outgoing = response.body().expect("body is taken once");
    ResponseOutparam::set(response_out, Ok(response));
    let stream = outgoing.write().expect("stream is taken once");
    for chunk in body.as_bytes().chunks(4096) {
        if stream.blocking_write_and_flush(chunk).is_err() {
            return;
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(outgoing, None);
}

export!(Jobs);
