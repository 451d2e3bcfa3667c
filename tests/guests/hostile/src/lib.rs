//! `hostile`: a component that misbehaves on request, for the host's tests.
//!
//! The last path segment picks the behaviour (`/anything/trap` traps, `path`
//! answers the path and query it was given, `page` serves a page of the
//! caller's making); query
//! parameters tune it. Every behaviour either answers in a way the test can
//! check or attacks the host in a way the host must survive.

#![expect(unsafe_code, reason = "the leftover probe reads raw linear memory on purpose")]

use std::hint::black_box;
use std::io::Write as _;

use wasi::http::types::{
    ErrorCode, Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

wasi::http::proxy::export!(Hostile);

struct Hostile;

/// The marker `write-secret` leaves in memory and `probe` looks for.
const SECRET: &[u8; 24] = b"WASMWIZ-LEFTOVER-SECRET!";

/// Requests this instance has answered with `count`: 1 on every request
/// when each gets a fresh instance, 1, 2, 3... on a reused one.
static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn num(query: &str, name: &str, default: u64) -> u64 {
    param(query, name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let response = OutgoingResponse::new(Fields::new());
    response.set_status_code(status).expect("valid status");
    let out_body = response.body().expect("body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = out_body.write().expect("stream is taken once");
    let _ = stream.write_all(body);
    let _ = stream.flush();
    drop(stream);
    let _ = OutgoingBody::finish(out_body, None);
}

#[expect(unconditional_recursion, reason = "a stack overflow on purpose")]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 16]);
    recurse(depth + 1) + frame[3]
}

fn sleep_ms(ms: u64) {
    wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
}

fn busy_ms(ms: u64) {
    let start = wasi::clocks::monotonic_clock::now();
    let mut x = 0u64;
    while wasi::clocks::monotonic_clock::now() - start < ms * 1_000_000 {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// Scans all of this instance's linear memory for [`SECRET`].
fn memory_contains_secret() -> bool {
    let pages = core::arch::wasm32::memory_size(0);
    let len = pages * 65536;
    // Start after the first page: address 0 is never read by Rust code.
    let mut addr = 1024usize;
    let mut found = false;
    while addr + SECRET.len() <= len {
        // SAFETY: every address below memory_size is inside linear memory;
        // reading it is defined for wasm even where Rust allocated nothing.
        let first = unsafe { core::ptr::read_volatile(addr as *const u8) };
        if first == SECRET[0] {
            let window = unsafe { core::slice::from_raw_parts(addr as *const u8, SECRET.len()) };
            // The constant itself lives in the data segment: skip it.
            if window == SECRET && addr != SECRET.as_ptr() as usize {
                found = true;
                break;
            }
        }
        addr += 1;
    }
    found
}

fn outbound(url: &str) -> Result<String, String> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        return Err("url must start with http:// or https://".into());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    request.set_scheme(Some(&scheme)).map_err(|_| "bad scheme")?;
    request.set_authority(Some(authority)).map_err(|_| "bad authority")?;
    request.set_path_with_query(Some(path)).map_err(|_| "bad path")?;
    let future = wasi::http::outgoing_handler::handle(request, None)
        .map_err(|e| format!("refused: {e:?}"))?;
    future.subscribe().block();
    let response = future
        .get()
        .ok_or("no response")?
        .map_err(|_| "response taken twice")?
        .map_err(|e| format!("failed: {e:?}"))?;
    Ok(format!("status {}", response.status()))
}

impl wasi::exports::http::incoming_handler::Guest for Hostile {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query.split_once('?').unwrap_or((&path_with_query, ""));
        let action = path.rsplit('/').next().unwrap_or("");
        match action {
            "ok" => respond(out, 200, b"ok"),
            // The path and query the guest was given.
            "path" => respond(out, 200, path_with_query.as_bytes()),
            // A page of the caller's choosing: `body` (percent-encoded),
            // `type` (its Content-Type) and response headers `h=NAME:VALUE`
            // (repeatable), as a tenant's page or script would be served.
            "page" => {
                let headers = Fields::new();
                let kind = param(query, "type").map_or("text/html".into(), percent_decoded);
                let _ = headers.append("content-type", kind.as_bytes());
                for pair in query.split('&').filter_map(|p| p.strip_prefix("h=")) {
                    let pair = percent_decoded(pair);
                    if let Some((name, value)) = pair.split_once(':') {
                        let _ = headers.append(name.trim(), value.trim().as_bytes());
                    }
                }
                let body = param(query, "body").map(percent_decoded).unwrap_or_default();
                let response = OutgoingResponse::new(headers);
                let out_body = response.body().expect("body is taken once");
                ResponseOutparam::set(out, Ok(response));
                let mut stream = out_body.write().expect("stream is taken once");
                let _ = stream.write_all(body.as_bytes());
                let _ = stream.flush();
                drop(stream);
                let _ = OutgoingBody::finish(out_body, None);
            }
            "count" => {
                let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                respond(out, 200, n.to_string().as_bytes());
            }
            "error-code" => {
                let code = ErrorCode::InternalError(Some("failed on purpose".into()));
                ResponseOutparam::set(out, Err(code));
            }
            "keep-stdin" => {
                // As the WASIp1 adapter does: stdin taken once and kept.
                std::mem::forget(wasi::cli::stdin::get_stdin());
                respond(out, 200, b"kept stdin");
            }
            "keep-body-stream" => {
                // A stream of the request's body, kept past the request: its
                // parent (the body) stays too, so the instance must not be
                // reused.
                let body = request.consume().expect("the body is taken once");
                let stream = body.stream().expect("the stream is taken once");
                std::mem::forget(stream);
                std::mem::forget(body);
                respond(out, 200, b"kept the body stream");
            }
            "keep-resource" => {
                // A live resource the guest never drops (an outgoing request
                // it never sent): it stays in the host's table after the
                // request, so the instance must not be reused.
                std::mem::forget(OutgoingRequest::new(Fields::new()));
                respond(out, 200, b"kept");
            }
            "keep-request" => {
                // The request itself, kept after answering it, as
                // StarlingMonkey does until its garbage collector runs:
                // inert once the host has dropped its body, so the instance
                // may still be reused.
                respond(out, 200, b"kept the request");
                std::mem::forget(request);
                return;
            }
            "trap" => panic!("the guest trapped on purpose"),
            "no-response" => drop(out),
            "loop" => {
                let mut x = 1u64;
                loop {
                    x = black_box(x.wrapping_mul(3).wrapping_add(1));
                }
            }
            "busy" => {
                busy_ms(num(query, "ms", 10));
                respond(out, 200, b"done");
            }
            "sleep" => {
                sleep_ms(num(query, "ms", 60_000));
                respond(out, 200, b"woke up");
            }
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![0xA5; 1 << 20]);
                    black_box(&hoard);
                }
            }
            "recurse" => {
                let depth = recurse(0);
                respond(out, 200, depth.to_string().as_bytes());
            }
            "big-response" => {
                let mib = num(query, "mib", 4096);
                let response = OutgoingResponse::new(Fields::new());
                let body = response.body().expect("body is taken once");
                ResponseOutparam::set(out, Ok(response));
                let mut stream = body.write().expect("stream is taken once");
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..mib * 16 {
                    if stream.write_all(&chunk).is_err() {
                        return;
                    }
                }
                drop(stream);
                let _ = OutgoingBody::finish(body, None);
            }
            "env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                let args: Vec<String> = std::env::args().collect();
                let cwd = std::env::current_dir().map(|p| p.display().to_string());
                let body = format!("vars={}\nargs={}\ncwd={cwd:?}\n", vars.len(), args.len());
                respond(out, 200, body.as_bytes());
            }
            "read-file" => {
                let file = param(query, "path").unwrap_or("/etc/passwd");
                match std::fs::read(file) {
                    Ok(bytes) => respond(out, 200, &bytes),
                    Err(e) => respond(out, 403, format!("denied: {e}").as_bytes()),
                }
            }
            "list-dir" => {
                let dir = param(query, "path").unwrap_or("/");
                match std::fs::read_dir(dir) {
                    Ok(entries) => {
                        let names: Vec<String> = entries
                            .filter_map(|e| e.ok())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect();
                        respond(out, 200, names.join("\n").as_bytes())
                    }
                    Err(e) => respond(out, 403, format!("denied: {e}").as_bytes()),
                }
            }
            "socket" => {
                let addr = param(query, "addr").unwrap_or("127.0.0.1:6379");
                match std::net::TcpStream::connect(addr) {
                    Ok(_) => respond(out, 200, b"connected"),
                    Err(e) => respond(out, 403, format!("denied: {e}").as_bytes()),
                }
            }
            "outbound" => {
                let url = param(query, "url").unwrap_or("http://127.0.0.1:6379/");
                match outbound(url) {
                    Ok(status) => respond(out, 200, status.as_bytes()),
                    Err(e) => respond(out, 403, e.as_bytes()),
                }
            }
            "write-secret" => {
                // Fill fresh memory with the marker so a later instance in
                // the same pool slot could find it if the host did not wipe.
                let mut buf = vec![0u8; 8 << 20];
                for chunk in buf.chunks_mut(SECRET.len()) {
                    chunk.copy_from_slice(&SECRET[..chunk.len()]);
                }
                black_box(&buf);
                std::mem::forget(buf);
                respond(out, 200, b"written");
            }
            "probe" => {
                let grown = vec![0u8; 8 << 20];
                black_box(&grown);
                if memory_contains_secret() {
                    respond(out, 200, b"LEAKED")
                } else {
                    respond(out, 200, b"clean")
                }
            }
            "headers-bomb" => {
                let fields = Fields::new();
                let count = num(query, "count", 1_000_000);
                let mut appended = 0u64;
                for i in 0..count {
                    if fields.append(&format!("x-bomb-{i}"), &vec![b'v'; 64]).is_err() {
                        break;
                    }
                    appended += 1;
                }
                respond(out, 200, format!("appended {appended}").as_bytes());
            }
            "random-bomb" => {
                let len = num(query, "bytes", u64::MAX);
                let bytes = wasi::random::random::get_random_bytes(len);
                respond(out, 200, format!("got {}", bytes.len()).as_bytes());
            }
            "resources-bomb" => {
                let mut held = Vec::new();
                loop {
                    held.push(Fields::new());
                    black_box(&held);
                }
            }
            "stdout" => {
                let lines = num(query, "lines", 3);
                // Percent-decoded: the console's tests print markup with it.
                let tag = percent_decoded(param(query, "tag").unwrap_or("line"));
                for i in 0..lines {
                    println!("{tag} {i} to stdout");
                    eprintln!("{tag} {i} to stderr");
                }
                respond(out, 200, b"printed");
            }
            "flood" => {
                // `mib` MiB to stdout, in 64 KiB writes.
                let chunk = vec![b'x'; 64 << 10];
                let mut stdout = std::io::stdout();
                for _ in 0..num(query, "mib", 1) * 16 {
                    let _ = stdout.write_all(&chunk);
                }
                respond(out, 200, b"flooded");
            }
            _ => respond(out, 404, b"unknown hostile action"),
        }
    }
}
