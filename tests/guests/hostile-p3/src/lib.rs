//! A WASIp3 handler that misbehaves on request, by the last path segment:
//! `ok`, `trap`, `loop` (computes forever), `sleep?ms=N` (waits, then
//! answers), `oom` (allocates until refused), `error-code` (answers with an
//! error code), `body-trap` (answers, then traps while writing the body),
//! `stream?chunks=N&ms=M` (writes N chunks, M ms apart), `print?tag=T`,
//! `count?ms=N` (counts the requests this instance has taken, waits, then
//! answers the count: 1 on a fresh instance), `no-response` (waits on a
//! future nothing will ever complete), `no-body` (sends the head, then
//! neither writes nor ends the body), `spawn-ticker?ms=N` (leaves a task
//! counting every N ms after its request), `ticks` (that count).

use std::hint::black_box;

use wasip3::clocks::monotonic_clock;
use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_bindgen, wit_future, wit_stream};

wasip3::http::service::export!(HostileP3);

struct HostileP3;

/// Requests this instance has taken (`count`).
static TAKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Ticks of the task `spawn-ticker` leaves running (`ticks`).
static TICKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

fn num(query: &str, name: &str, default: u64) -> u64 {
    param(query, name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A response whose body `write` produces, after the head has gone.
fn respond<F>(write: impl FnOnce(wit_bindgen::StreamWriter<u8>) -> F + 'static) -> Response
where
    F: std::future::Future<Output = ()> + 'static,
{
    let (body_tx, body_rx) = wit_stream::new();
    let (_trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
    let (response, _sent) = Response::new(Fields::new(), Some(body_rx), trailers_rx);
    wit_bindgen::spawn_local(write(body_tx));
    response
}

fn text(body: &'static str) -> Response {
    respond(move |mut tx| async move {
        tx.write_all(body.as_bytes().to_vec()).await;
    })
}

async fn sleep_ms(ms: u64) {
    monotonic_clock::wait_for(ms * 1_000_000).await;
}

impl wasip3::exports::http::handler::Guest for HostileP3 {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let target = request.get_path_with_query().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let action = path.rsplit('/').next().unwrap_or("");
        let query = query.to_string();
        match action {
            "ok" => Ok(text("ok")),
            "count" => {
                let n = TAKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                sleep_ms(num(&query, "ms", 0)).await;
                Ok(respond(move |mut tx| async move {
                    tx.write_all(n.to_string().into_bytes()).await;
                }))
            }
            "trap" => panic!("the guest trapped on purpose"),
            "loop" => {
                let mut n = 0u64;
                loop {
                    n = black_box(n.wrapping_add(1));
                }
            }
            "sleep" => {
                sleep_ms(num(&query, "ms", 60_000)).await;
                Ok(text("slept"))
            }
            "oom" => {
                let mut held: Vec<Vec<u8>> = Vec::new();
                loop {
                    held.push(vec![1u8; 1 << 20]);
                    black_box(&held);
                }
            }
            "no-response" => {
                // The writer is held across the wait, so the read never
                // ends: only the host can end this request.
                let (writer, reader) = wit_future::new::<Result<(), ErrorCode>>(|| Ok(()));
                let never = reader.await;
                drop(writer);
                Ok(text(if never.is_ok() { "ended" } else { "failed" }))
            }
            "no-body" => Ok(respond(|tx| async move {
                let (writer, reader) = wit_future::new::<Result<(), ErrorCode>>(|| Ok(()));
                let _ = reader.await;
                drop((writer, tx));
            })),
            "error-code" => Err(ErrorCode::InternalError(Some("on purpose".into()))),
            "body-trap" => Ok(respond(|mut tx| async move {
                tx.write_all(b"partial ".to_vec()).await;
                panic!("the guest trapped while writing its body");
            })),
            "stream" => {
                let chunks = num(&query, "chunks", 4);
                let ms = num(&query, "ms", 10);
                Ok(respond(move |mut tx| async move {
                    for i in 0..chunks {
                        tx.write_all(format!("chunk {i}\n").into_bytes()).await;
                        sleep_ms(ms).await;
                    }
                }))
            }
            // Leaves a task running after the request: it ticks every `ms`
            // for as long as the instance's event loop lets it.
            "spawn-ticker" => {
                let ms = num(&query, "ms", 5);
                wit_bindgen::spawn_local(async move {
                    loop {
                        TICKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        sleep_ms(ms).await;
                    }
                });
                Ok(text("ticking"))
            }
            "ticks" => {
                let n = TICKS.load(std::sync::atomic::Ordering::Relaxed);
                Ok(respond(move |mut tx| async move {
                    tx.write_all(n.to_string().into_bytes()).await;
                }))
            }
            "print" => {
                let tag = param(&query, "tag").unwrap_or("line");
                println!("{tag} to stdout");
                eprintln!("{tag} to stderr");
                Ok(text("printed"))
            }
            _ => Ok(text("unknown hostile action")),
        }
    }
}
