//! `wasmwiz run`: serving components from files.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use rand::RngCore as _;

use crate::helpers::{Server, client, component, mount, run_to_exit};

/// A server with the examples and the hostile guest mounted, a 1 s timeout.
fn examples_server() -> Server {
    examples_server_with(&[])
}

fn examples_server_with(envs: &[(&str, &str)]) -> Server {
    let args = [
        "run".to_string(),
        mount("/hello/...", "hello"),
        mount("/echo/...", "echo"),
        mount("/stream", "stream"),
        mount("/hostile/...", "hostile"),
        mount("/bigmem", "bigmem"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut all = vec![("EXECUTION_TIMEOUT", "1"), ("MAX_INPUT_SIZE", "1MiB")];
    all.extend_from_slice(envs);
    Server::start(&args, &all)
}

async fn assert_still_serving(server: &Server) {
    let response =
        client().get(server.url("/hello")).send().await.expect("hello after misbehaviour");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "Hello, world!\n");
}

#[tokio::test]
async fn hello_answers_200_with_its_greeting() {
    let server = Server::start(&["run", component("hello").to_str().unwrap()], &[]);
    let response = client().get(server.url("/anything/at/all")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(response.text().await.unwrap(), "Hello, world!\n");
}

#[tokio::test]
async fn echo_round_trips_a_512_kib_binary_body_and_the_request_line() {
    let server = examples_server();
    let mut body = vec![0u8; 512 * 1024];
    rand::rng().fill_bytes(&mut body);
    let response = client()
        .post(server.url("/echo/some/path?a=1&b=two"))
        .header("x-custom", "value-42")
        .header("content-type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["x-echo-method"], "POST");
    assert_eq!(headers["x-echo-path"], "/echo/some/path");
    assert_eq!(headers["x-echo-query"], "a=1&b=two");
    assert_eq!(headers["x-echo-header-x-custom"], "value-42");
    assert_eq!(headers["content-type"], "application/octet-stream");
    let echoed = response.bytes().await.unwrap();
    assert_eq!(echoed.len(), body.len());
    assert!(echoed == body, "the echoed body differs from the one sent");
}

#[tokio::test]
async fn echo_round_trips_a_chunked_body_of_unknown_length() {
    let server = examples_server();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..16u8).map(|i| Ok(vec![i; 4096])).collect();
    let expected: Vec<u8> = (0..16u8).flat_map(|i| vec![i; 4096]).collect();
    let response = client()
        .put(server.url("/echo"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-echo-method"], "PUT");
    assert_eq!(response.bytes().await.unwrap().as_ref(), expected.as_slice());
}

#[tokio::test]
async fn stream_delivers_every_byte_and_the_first_chunk_before_the_last() {
    let server = examples_server();
    // 64 chunks of 16 KiB: every byte checked.
    let body = client().get(server.url("/stream?chunks=64&size=16384")).send().await.unwrap();
    assert_eq!(body.status(), 200);
    let bytes = body.bytes().await.unwrap();
    assert_eq!(bytes.len(), 64 * 16384);
    assert!(bytes.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));

    // With 100 ms between chunks, the first arrives long before the end:
    // the response is streamed, not buffered.
    let started = Instant::now();
    let response =
        client().get(server.url("/stream?chunks=5&size=10&delay_ms=100")).send().await.unwrap();
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    let first_at = started.elapsed();
    let mut total = first.len();
    while let Some(chunk) = stream.next().await {
        total += chunk.unwrap().len();
    }
    let last_at = started.elapsed();
    assert_eq!(total, 50);
    assert!(last_at >= Duration::from_millis(400), "the guest waits 4 x 100 ms");
    assert!(
        first_at + Duration::from_millis(250) < last_at,
        "first chunk at {first_at:?}, end at {last_at:?}: not streamed"
    );
}

/// The framing of a response: its `Content-Length`, and whether it came
/// chunked, with its body.
async fn framing(server: &Server, path: &str) -> (Option<String>, bool, Vec<u8>) {
    let response = client().get(server.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    let headers = response.headers().clone();
    let length = headers.get("content-length").map(|v| v.to_str().unwrap().to_string());
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.to_str().unwrap().eq_ignore_ascii_case("chunked"));
    (length, chunked, response.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn a_body_complete_on_return_has_a_length_and_a_streamed_one_is_chunked() {
    let server = examples_server();
    // hello writes its body and returns without waiting: one complete answer.
    let (length, chunked, body) = framing(&server, "/hello").await;
    assert_eq!(body, b"Hello, world!\n");
    assert_eq!((length.as_deref(), chunked), (Some("14"), false));
    // One written and flushed chunk fits the host's buffer without a wait.
    let (length, chunked, body) = framing(&server, "/stream?chunks=1&size=1000").await;
    assert_eq!(body.len(), 1000);
    assert_eq!((length.as_deref(), chunked), (Some("1000"), false));
    // A guest that waits between chunks streams: head first, chunked.
    let (length, chunked, body) = framing(&server, "/stream?chunks=3&size=10&delay_ms=20").await;
    assert_eq!(body.len(), 30);
    assert_eq!((length, chunked), (None, true));
    // So does one whose body outgrows the buffer and waits for the client.
    let (length, chunked, body) = framing(&server, "/stream?chunks=64&size=16384").await;
    assert!(body.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    assert_eq!((length, chunked, body.len()), (None, true, 64 * 16384));
}

#[tokio::test]
async fn a_path_without_a_route_gets_404() {
    let server = examples_server();
    let response = client().get(server.url("/nowhere")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"]["code"], "not_found");
    // `/stream` is exact: below it is unrouted.
    let response = client().get(server.url("/stream/below")).send().await.unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn a_body_over_the_cap_gets_413_declared_or_chunked() {
    let server = examples_server();
    let too_big = vec![7u8; (1 << 20) + 1];
    let response = client().post(server.url("/echo")).body(too_big.clone()).send().await.unwrap();
    assert_eq!(response.status(), 413);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"]["code"], "body_too_large");

    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        too_big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let response = client()
        .post(server.url("/echo"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    // Exactly at the cap is fine.
    let at_cap = vec![7u8; 1 << 20];
    let response = client().post(server.url("/echo")).body(at_cap).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().len(), 1 << 20);
}

#[tokio::test]
async fn a_trapping_guest_gets_500_and_the_server_keeps_serving() {
    let server = examples_server();
    let response = client().get(server.url("/hostile/trap")).send().await.unwrap();
    assert_eq!(response.status(), 500);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"]["code"], "component_trap");
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn a_guest_that_never_responds_gets_500() {
    let server = examples_server();
    let response = client().get(server.url("/hostile/no-response")).send().await.unwrap();
    assert_eq!(response.status(), 500);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"]["code"], "no_response");
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn a_cpu_loop_gets_504_within_the_timeout_plus_one_second() {
    let server = examples_server();
    let started = Instant::now();
    let response = client().get(server.url("/hostile/loop")).send().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 504);
    assert!(elapsed >= Duration::from_millis(900), "stopped too early: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "stopped too late: {elapsed:?}");
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn a_guest_sleeping_past_the_timeout_gets_504_in_time() {
    let server = examples_server();
    let started = Instant::now();
    let response = client().get(server.url("/hostile/sleep?ms=30000")).send().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 504);
    assert!(elapsed < Duration::from_secs(2), "stopped too late: {elapsed:?}");
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn a_memory_bomb_gets_500_out_of_memory() {
    let server = examples_server();
    let response = client().get(server.url("/hostile/oom")).send().await.unwrap();
    assert_eq!(response.status(), 500);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"]["code"], "out_of_memory");
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn initial_memory_over_the_limit_gets_500() {
    let server = examples_server();
    let response = client().get(server.url("/bigmem")).send().await.unwrap();
    assert_eq!(response.status(), 500);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"]["code"], "out_of_memory");
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn unbounded_recursion_gets_500_stack_overflow() {
    let server = examples_server();
    let response = client().get(server.url("/hostile/recurse")).send().await.unwrap();
    assert_eq!(response.status(), 500);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"]["code"], "stack_overflow");
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn guest_output_is_logged_once_per_request_tagged_with_its_id() {
    let server = examples_server();
    let response =
        client().get(server.url("/hostile/stdout?lines=2&tag=marker")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    server.wait_for_log("marker 1 to stderr", Duration::from_secs(5));
    let logs = server.logs();
    let stdout_line =
        logs.lines().find(|l| l.contains("marker 0 to stdout")).expect("stdout logged");
    assert!(stdout_line.contains(&id), "not tagged with {id}: {stdout_line}");
    assert!(stdout_line.contains("marker 1 to stdout"), "one event per stream: {stdout_line}");
}

#[tokio::test]
async fn two_hundred_fifty_six_requests_at_concurrency_64_all_succeed() {
    let server = examples_server();
    let statuses = hello_at_concurrency_64(&server, 256).await;
    assert!(statuses.iter().all(|s| *s == 200), "not all 200: {statuses:?}");
}

/// `count` requests for `/hello`, 64 at a time (over up to 64 connections).
async fn hello_at_concurrency_64(server: &Server, count: usize) -> Vec<u16> {
    let client = client();
    let url = server.url("/hello");
    let statuses: Vec<u16> = futures::stream::iter(0..count)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            async move { client.get(url).send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(statuses.len(), count);
    statuses
}

/// With `SERVER_THREADS=2` two threads of their own serve the connections,
/// each from its own socket: the kernel spreads 64 connections over both,
/// and each thread does a fair share of the work.
#[tokio::test]
async fn server_threads_each_serve_connections_from_their_own_socket() {
    let server = examples_server_with(&[("SERVER_THREADS", "2")]);
    let statuses = hello_at_concurrency_64(&server, 1024).await;
    assert!(statuses.iter().all(|s| *s == 200), "not all 200: {statuses:?}");
    // CPU time of each serving thread, in ns (schedstat's first field).
    let tasks = format!("/proc/{}/task", server.pid());
    let mut busy = Vec::new();
    for task in std::fs::read_dir(&tasks).unwrap() {
        let path = task.unwrap().path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if name.trim().starts_with("wasmwiz-http-") {
            let schedstat = std::fs::read_to_string(path.join("schedstat")).unwrap();
            let ns: u64 = schedstat.split_whitespace().next().unwrap().parse().unwrap();
            busy.push((name.trim().to_string(), ns));
        }
    }
    busy.sort();
    assert_eq!(busy.len(), 2, "serving threads: {busy:?}");
    let total: u64 = busy.iter().map(|(_, ns)| ns).sum();
    assert!(busy.iter().all(|(_, ns)| *ns * 5 > total), "one thread did (almost) all: {busy:?}");
}

#[test]
fn invalid_settings_are_refused_at_start_naming_the_variable() {
    let hello = component("hello");
    let hello = hello.to_str().unwrap();
    for (var, value) in [
        ("MEMORY_LIMIT", "lots"),
        ("EXECUTION_TIMEOUT", "forever"),
        ("MAX_INPUT_SIZE", "-5"),
        ("SERVER_PORT", "99999"),
        ("MEMORY_LIMIT", "16GiB"),
        ("SERVER_THREADS", "1000"),
    ] {
        let mut envs = vec![(var, value)];
        if var != "SERVER_PORT" {
            envs.push(("SERVER_PORT", "0"));
        }
        let (status, stderr) = run_to_exit(&["run", hello], &envs);
        assert!(!status.success(), "{var}={value} was accepted");
        assert!(stderr.contains(var), "{var}={value}: the error does not name it:\n{stderr}");
    }
}

#[test]
fn a_file_that_is_not_a_component_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"not wasm at all").unwrap();
    let (status, stderr) = run_to_exit(&["run", bogus.to_str().unwrap()], &[("SERVER_PORT", "0")]);
    assert!(!status.success());
    assert!(stderr.contains("bogus.wasm") && stderr.contains("not WebAssembly"), "{stderr}");
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_refuses_new_connections() {
    sigterm_drains(examples_server_with(&[("EXECUTION_TIMEOUT", "10")])).await;
}

#[tokio::test]
async fn sigterm_drains_the_connections_of_every_server_thread() {
    sigterm_drains(examples_server_with(&[("SERVER_THREADS", "2"), ("EXECUTION_TIMEOUT", "10")]))
        .await;
}

/// Sends `SIGTERM` while 16 streamed responses, each on a connection of its
/// own (so with two server threads, on both of them but for a chance of
/// 1 in 32,768), are in flight: while they are still streaming, new
/// connections are refused; then every one of them is delivered whole, and
/// the server exits.
async fn sigterm_drains(mut server: Server) {
    let url = server.url("/stream?chunks=4&size=10&delay_ms=500");
    let slow: Vec<_> = (0..16)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let response = client().get(url).send().await.unwrap();
                (response.status(), response.bytes().await.map(|b| b.len()))
            })
        })
        .collect();
    // Every response head is out (each takes 2 s to stream its body).
    server.logged("route=\"/stream\"", 16, Duration::from_secs(10)).await;
    server.signal(libc::SIGTERM);

    // The listening socket closes at once: a new connection is refused
    // while the in-flight responses are still streaming.
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while std::net::TcpStream::connect(server.addr).is_ok() {
        assert!(std::time::Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let in_flight = slow.iter().filter(|task| !task.is_finished()).count();
    assert_eq!(in_flight, 16, "responses ended before new connections were refused");

    for slow in slow {
        let (status, length) = slow.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(length.unwrap(), 40, "an in-flight response was cut");
    }
    let exit = server.wait_exit(Duration::from_secs(10)).expect("exits after draining");
    assert!(exit.success(), "exit status {exit:?}");
}
