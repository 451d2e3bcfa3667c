//! The hostile-component suite: each attack gets the status README.md
//! gives, the process survives, and a well-behaved tenant is served
//! meanwhile with low latency.

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use futures::StreamExt as _;

use crate::helpers::{Server, client, mount};

/// Most a well-behaved request may take while an attack runs. Generous for
/// a busy CI machine; an attack that holds a worker shows up as seconds.
const BYSTANDER_BUDGET: Duration = Duration::from_millis(500);

/// `run` with the hostile guest on `/h/...` (and twice more, as two
/// "tenants" `/a/...` and `/b/...`), bigmem, and hello for the bystander.
fn server(extra_env: &[(&str, &str)]) -> Server {
    let args = [
        "run".to_string(),
        mount("/h/...", "hostile"),
        mount("/a/...", "hostile"),
        mount("/b/...", "hostile"),
        mount("/big", "bigmem"),
        mount("/hello", "hello"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env = vec![("EXECUTION_TIMEOUT", "2")];
    env.extend_from_slice(extra_env);
    Server::start(&args, &env)
}

/// Runs `attack` while a bystander requests `/hello` in a loop; asserts the
/// bystander always got 200 within [`BYSTANDER_BUDGET`]; returns the
/// attack's result.
async fn during<F, T>(server: &Server, attack: F) -> T
where
    F: std::future::Future<Output = T>,
{
    let url = server.url("/hello");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bystander = tokio::spawn({
        let stop = stop.clone();
        async move {
            let client = client();
            let mut worst = Duration::ZERO;
            let mut count = 0;
            // At least one request, even when the attack ends at once.
            while count == 0 || !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = Instant::now();
                let response = client.get(&url).send().await.expect("the bystander is answered");
                assert_eq!(response.status(), 200, "the bystander was refused");
                response.bytes().await.unwrap();
                worst = worst.max(sent.elapsed());
                count += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (worst, count)
        }
    });
    let result = attack.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (worst, count) = bystander.await.unwrap();
    assert!(count > 0, "the bystander never ran");
    assert!(worst < BYSTANDER_BUDGET, "the bystander waited {worst:?} during the attack");
    result
}

async fn fetch(server: &Server, path: &str) -> (u16, String) {
    let response = client().get(server.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

fn code(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn rss_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_cpu_loop_is_stopped_and_others_are_served_meanwhile() {
    let server = server(&[]);
    let (status, body) = during(&server, fetch(&server, "/h/loop")).await;
    assert_eq!((status, code(&body).as_str()), (504, "execution_timeout"));
}

#[tokio::test]
async fn twice_as_many_cpu_loops_as_workers_do_not_starve_others() {
    let server = server(&[]);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let loops = futures::future::join_all((0..workers * 2).map(|_| fetch(&server, "/h/loop")));
    let results = during(&server, loops).await;
    assert!(results.iter().all(|(s, _)| *s == 504), "{results:?}");
}

#[tokio::test]
async fn a_memory_bomb_and_a_too_large_initial_memory_get_500() {
    let server = server(&[]);
    let (status, body) = during(&server, fetch(&server, "/h/oom")).await;
    assert_eq!((status, code(&body).as_str()), (500, "out_of_memory"));
    let (status, body) = during(&server, fetch(&server, "/big")).await;
    assert_eq!((status, code(&body).as_str()), (500, "out_of_memory"));
}

#[tokio::test]
async fn a_stack_overflow_a_trap_and_no_response_get_500() {
    let server = server(&[]);
    for (path, expected) in [
        ("/h/recurse", "stack_overflow"),
        ("/h/trap", "component_trap"),
        ("/h/no-response", "no_response"),
    ] {
        let (status, body) = during(&server, fetch(&server, path)).await;
        assert_eq!((status, code(&body).as_str()), (500, expected), "{path}");
    }
}

#[tokio::test]
async fn a_guest_whose_client_left_runs_to_its_end() {
    // One instance slot: while the guest holds it, others get 503.
    let server = server(&[("INSTANCE_POOL_SIZE", "1")]);
    // The client gives up after 100 ms; the guest sleeps 1.5 s, then answers.
    let started = Instant::now();
    let gave_up = client()
        .get(server.url("/h/sleep?ms=1500"))
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client should have timed out");
    // The guest was not cut off with its client: it still holds the slot.
    let (status, body) = fetch(&server, "/hello").await;
    if started.elapsed() < Duration::from_millis(1400) {
        assert_eq!((status, code(&body).as_str()), (503, "instance_pool_full"));
    }
    // Its run ends on its own and frees the slot.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fetch(&server, "/hello").await.0 != 200 {
        assert!(Instant::now() < deadline, "the slot was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(1500), "freed before the guest's end");
}

#[tokio::test]
async fn sleeping_past_the_timeout_gets_504() {
    let server = server(&[]);
    let started = Instant::now();
    let (status, _) = during(&server, fetch(&server, "/h/sleep?ms=60000")).await;
    assert_eq!(status, 504);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_4_gib_response_is_cut_off_visibly_and_host_memory_stays_flat() {
    let server = server(&[]);
    let before = rss_kib(&server);
    let (received, failed, peak) = during(&server, async {
        let response = client().get(server.url("/h/big-response?mib=4096")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let mut stream = response.bytes_stream();
        let mut received = 0u64;
        let mut peak = 0;
        let mut failed = false;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => received += bytes.len() as u64,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
            if received % (256 << 20) < 65536 {
                peak = peak.max(rss_kib(&server));
            }
        }
        (received, failed, peak)
    })
    .await;
    assert!(failed, "the client saw a complete body of {received} bytes: the cut is invisible");
    assert!(received < 4 << 30, "all 4 GiB arrived");
    assert!(received > 1 << 20, "almost nothing arrived ({received} bytes)");
    let growth_mib = peak.saturating_sub(before) / 1024;
    assert!(growth_mib < 100, "host RSS grew by {growth_mib} MiB while streaming");
}

#[tokio::test]
async fn the_guest_sees_no_environment_arguments_files_or_sockets() {
    let server = server(&[]);
    let (status, body) = during(&server, fetch(&server, "/h/env")).await;
    assert_eq!(status, 200);
    assert!(body.contains("vars=0") && body.contains("args=0"), "{body}");
    for path in [
        "/h/read-file?path=/etc/passwd",
        "/h/list-dir?path=/",
        "/h/read-file?path=/proc/self/environ",
    ] {
        let (status, body) = fetch(&server, path).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(!body.contains("root:"), "{path} leaked a file: {body}");
    }
    for addr in ["127.0.0.1:6379", "127.0.0.1:5432", &server.addr.to_string(), "1.1.1.1:53"] {
        let (status, body) = fetch(&server, &format!("/h/socket?addr={addr}")).await;
        assert_eq!(status, 403, "a socket to {addr}: {body}");
    }
}

#[tokio::test]
async fn outbound_requests_are_denied_by_default_and_never_reach_loopback() {
    // Allowed by name, but the names resolve to loopback: still refused.
    let server = Server::start(
        &[
            "run",
            &mount("/h/...", "hostile"),
            &mount("/hello", "hello"),
            "--allow-outbound",
            "localhost:6379",
            "--allow-outbound",
            "127.0.0.1:5432",
        ],
        &[],
    );
    let self_url = format!("http://{}/hello", server.addr);
    for (url, expected) in [
        // On the list by name, but the name resolves to loopback.
        ("http://localhost:6379/", "DestinationIpProhibited"),
        // On the list, and a loopback address.
        ("http://127.0.0.1:5432/", "DestinationIpProhibited"),
        // Not on the list: refused before any lookup or connection.
        ("http://127.0.0.1:6379/", "HttpRequestDenied"),
        ("http://169.254.169.254/latest/meta-data/", "HttpRequestDenied"),
        (self_url.as_str(), "HttpRequestDenied"),
        ("http://example.com/", "HttpRequestDenied"),
    ] {
        let (status, body) = fetch(&server, &format!("/h/outbound?url={url}")).await;
        assert_eq!(status, 403, "{url}: {body}");
        assert!(body.contains(expected), "{url}: expected {expected}, got {body}");
    }
}

#[tokio::test]
async fn an_operator_can_open_a_network_and_the_per_invocation_cap_holds() {
    // A loopback listener of the test's own, answering 204 to anything.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
        }
    });
    let allowed = format!("127.0.0.1:{port}");
    let server = Server::start(
        &["run", &mount("/h/...", "hostile"), "--allow-outbound", &allowed],
        &[("OUTBOUND_ALLOWED_NETWORKS", "127.0.0.0/8"), ("OUTBOUND_MAX_REQUESTS", "1")],
    );
    let (status, body) =
        fetch(&server, &format!("/h/outbound?url=http://127.0.0.1:{port}/x")).await;
    assert_eq!((status, body.as_str()), (200, "status 204"));
    // Another port of the same host is not on the list.
    let (status, body) = fetch(&server, "/h/outbound?url=http://127.0.0.1:6379/").await;
    assert_eq!(status, 403);
    assert!(body.contains("HttpRequestDenied"), "{body}");
}

#[tokio::test]
async fn no_tenant_reads_another_tenants_leftovers_from_a_reused_slot() {
    let server = server(&[]);
    for _ in 0..20 {
        let (status, body) = fetch(&server, "/a/write-secret").await;
        assert_eq!((status, body.as_str()), (200, "written"));
        let (status, body) = fetch(&server, "/b/probe").await;
        assert_eq!((status, body.as_str()), (200, "clean"), "leftovers of /a were visible to /b");
    }
}

#[tokio::test]
async fn host_side_exhaustion_is_bounded() {
    let server = server(&[]);
    // Past wasmtime's cap on a fields resource (128 KiB), the host traps
    // the guest instead of growing the map.
    let (status, body) = during(&server, fetch(&server, "/h/headers-bomb")).await;
    assert_eq!((status, code(&body).as_str()), (500, "component_trap"), "{body}");
    let (status, body) = fetch(&server, "/h/headers-bomb?count=50").await;
    assert_eq!((status, body.as_str()), (200, "appended 50"));

    let (status, body) = during(&server, fetch(&server, "/h/random-bomb")).await;
    assert_eq!((status, code(&body).as_str()), (500, "component_trap"), "{body}");
    let (status, body) = fetch(&server, "/h/random-bomb?bytes=4096").await;
    assert_eq!((status, body.as_str()), (200, "got 4096"));

    let (status, body) = during(&server, fetch(&server, "/h/resources-bomb")).await;
    assert_eq!((status, code(&body).as_str()), (500, "component_trap"), "{body}");
}
