//! WASIp3 handlers (`wasi:http/service@0.3`) beside WASIp2 ones: uploaded,
//! named by their world, served on a fresh instance per request with the
//! same limits, usage and logs, on both stores.

use std::time::{Duration, Instant};

use crate::helpers::{Api, ServeEnv, component, eventually};

async fn a_wasip3_component_is_named_by_its_world_served_counted_and_logged(env: ServeEnv) {
    let key = env.tenant("acme", "pro", false);
    let server = env.serve();
    let api = Api::new(&server, &key);
    let bytes = std::fs::read(component("hello_p3")).unwrap();
    let (status, uploaded) = api.upload("hello-p3", bytes).await;
    assert_eq!(status, 201, "{uploaded}");
    let world = uploaded["world"].as_str().unwrap();
    assert!(world.starts_with("wasi:http/service@0.3."), "{uploaded}");
    let (status, deployed) = api
        .deploy(serde_json::json!({ "route": "/acme/p3/...", "component": uploaded["digest"] }))
        .await;
    assert_eq!(status, 201, "{deployed}");
    // A WASIp2 component beside it, on the same node.
    api.deploy_component("hello", "/acme/p2/...").await;

    // Concurrent requests, each on its own instance, all answered whole.
    let requests =
        (0..32).map(|i| {
            let api = api.clone();
            async move {
                api.get_text(&format!("/acme/{}/x", if i % 2 == 0 { "p3" } else { "p2" })).await
            }
        });
    for (status, body) in futures::future::join_all(requests).await {
        assert_eq!((status, body.as_str()), (200, "Hello, world!\n"));
    }

    // Counted as invocations of the tenant, and in its log stream.
    eventually("32 invocations counted", Duration::from_secs(20), || async {
        let (status, usage) = api.call(api.request(reqwest::Method::GET, "/api/v1/usage")).await;
        assert_eq!(status, 200);
        if usage["today"]["invocations"] == 32 { Ok(()) } else { Err(usage.to_string()) }
    })
    .await;
    let (status, logs) = api
        .call(api.request(
            reqwest::Method::GET,
            &format!("/api/v1/logs?deployment={}&limit=100", deployed["id"].as_str().unwrap()),
        ))
        .await;
    assert_eq!(status, 200);
    let events = logs["events"].as_array().unwrap();
    assert_eq!(events.len(), 16, "{logs}");
    assert!(events.iter().all(|e| e["outcome"] == "ok" && e["status"] == 200), "{logs}");
}

mod sqlite {
    #[tokio::test]
    async fn shared_instances_not_their_requests_take_places_in_the_pool() {
        super::shared_instances_not_their_requests_take_places_in_the_pool(
            crate::helpers::ServeEnv::sqlite(),
        )
        .await;
    }

    #[tokio::test]
    async fn a_wasip3_handler_streams_an_upstreams_answer_while_others_share_its_instance() {
        super::a_wasip3_handler_streams_an_upstreams_answer_while_others_share_its_instance(
            crate::helpers::ServeEnv::sqlite(),
        )
        .await;
    }

    #[tokio::test]
    async fn a_wasip3_deployment_may_serve_requests_at_once_on_one_instance() {
        super::a_wasip3_deployment_may_serve_requests_at_once_on_one_instance(
            crate::helpers::ServeEnv::sqlite(),
        )
        .await;
    }

    #[tokio::test]
    async fn every_misbehaviour_of_a_wasip3_handler_ends_only_its_own_request() {
        super::every_misbehaviour_of_a_wasip3_handler_ends_only_its_own_request(
            crate::helpers::ServeEnv::sqlite(),
        )
        .await;
    }

    #[tokio::test]
    async fn a_wasip3_component_is_named_by_its_world_served_counted_and_logged() {
        super::a_wasip3_component_is_named_by_its_world_served_counted_and_logged(
            crate::helpers::ServeEnv::sqlite(),
        )
        .await;
    }
}

mod postgres {
    #[tokio::test]
    async fn shared_instances_not_their_requests_take_places_in_the_pool() {
        super::shared_instances_not_their_requests_take_places_in_the_pool(
            crate::helpers::ServeEnv::postgres(),
        )
        .await;
    }

    #[tokio::test]
    async fn a_wasip3_handler_streams_an_upstreams_answer_while_others_share_its_instance() {
        super::a_wasip3_handler_streams_an_upstreams_answer_while_others_share_its_instance(
            crate::helpers::ServeEnv::postgres(),
        )
        .await;
    }

    #[tokio::test]
    async fn a_wasip3_deployment_may_serve_requests_at_once_on_one_instance() {
        super::a_wasip3_deployment_may_serve_requests_at_once_on_one_instance(
            crate::helpers::ServeEnv::postgres(),
        )
        .await;
    }

    #[tokio::test]
    async fn every_misbehaviour_of_a_wasip3_handler_ends_only_its_own_request() {
        super::every_misbehaviour_of_a_wasip3_handler_ends_only_its_own_request(
            crate::helpers::ServeEnv::postgres(),
        )
        .await;
    }

    #[tokio::test]
    async fn a_wasip3_component_is_named_by_its_world_served_counted_and_logged() {
        super::a_wasip3_component_is_named_by_its_world_served_counted_and_logged(
            crate::helpers::ServeEnv::postgres(),
        )
        .await;
    }
}

async fn get(api: &Api, path: &str) -> (u16, String) {
    api.get_text(path).await
}

/// The hostile suite on a WASIp3 handler: each misbehaviour beside
/// well-behaved requests on the same deployment and on another one, each
/// answered as it should be, and followed by a request that succeeds.
async fn every_misbehaviour_of_a_wasip3_handler_ends_only_its_own_request(env: ServeEnv) {
    env.admin(&[
        "tier",
        "set",
        "tight",
        "--timeout",
        "1000ms",
        "--memory",
        "32MiB",
        "--per-minute",
        "unlimited",
        "--per-day",
        "unlimited",
    ]);
    let key = env.tenant("acme", "tight", false);
    let server = env.serve();
    let api = Api::new(&server, &key);
    api.deploy_component("hostile_p3", "/acme/h/...").await;
    api.deploy_component("hello", "/acme/hello/...").await;

    for (action, status, outcome) in [
        ("loop", 504, "timeout"),
        ("sleep?ms=60000", 504, "timeout"),
        ("trap", 500, "trap"),
        ("oom", 500, "oom"),
        ("error-code", 500, "guest_error"),
        ("no-response", 504, "timeout"),
    ] {
        let started = std::time::Instant::now();
        let bad_path = format!("/acme/h/{action}");
        let bad = get(&api, &bad_path);
        let good = futures::future::join_all((0..8).map(|i| {
            let api = api.clone();
            async move {
                // Well-behaved requests beside it, started while it runs.
                tokio::time::sleep(Duration::from_millis(20 * i)).await;
                let path = if i % 2 == 0 { "/acme/h/ok" } else { "/acme/hello/" };
                get(&api, path).await
            }
        }));
        let ((bad_status, bad_body), good) = tokio::join!(bad, good);
        assert_eq!(bad_status, status, "{action}: {bad_body}");
        for (status, body) in good {
            assert_eq!(status, 200, "beside {action}: {body}");
        }
        // The deadline holds for loops and waits alike, without a margin
        // of seconds.
        assert!(started.elapsed() < Duration::from_secs(5), "{action}: {:?}", started.elapsed());
        assert_eq!(get(&api, "/acme/h/ok").await, (200, "ok".to_string()), "after {action}");
        // The log names the outcome.
        let what = format!("a {outcome} event for {action}");
        eventually(&what, Duration::from_secs(10), || async {
            let (_, logs) = api
                .call(api.request(
                    reqwest::Method::GET,
                    &format!("/api/v1/logs?outcome={outcome}&limit=10"),
                ))
                .await;
            (!logs["events"].as_array().unwrap().is_empty()).then_some(())
        })
        .await;
    }

    // A trap after the head: the response ends with an error (the head may
    // not even have been written yet), never as if whole.
    for _ in 0..5 {
        let sent = crate::helpers::client().get(server.url("/acme/h/body-trap")).send().await;
        if let Ok(response) = sent {
            assert_eq!(response.status(), 200);
            assert!(response.bytes().await.is_err(), "a body cut off by a trap read as complete");
        }
    }
    // A head, then a body never written nor ended: the body ends with an
    // error at the deadline, never a hang.
    let started = std::time::Instant::now();
    let response = crate::helpers::client().get(server.url("/acme/h/no-body")).send().await;
    let response = response.expect("the head arrives");
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err(), "a body the guest never ended read as complete");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "{took:?}");
    assert_eq!(get(&api, "/acme/h/ok").await, (200, "ok".to_string()), "after no-body");
    // A body written in chunks after the head streams whole.
    let (status, body) = get(&api, "/acme/h/stream?chunks=5&ms=20").await;
    assert_eq!(status, 200);
    assert_eq!(body, "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n");
    // Output is captured per request.
    assert_eq!(get(&api, "/acme/h/print?tag=p3-marker").await.0, 200);
    eventually("the output captured", Duration::from_secs(10), || async {
        let (_, logs) = api.call(api.request(reqwest::Method::GET, "/api/v1/logs?limit=5")).await;
        let printed = logs["events"].as_array().unwrap().iter().any(|e| {
            e["stdout"] == "p3-marker to stdout\n" && e["stderr"] == "p3-marker to stderr\n"
        });
        if printed { Ok(()) } else { Err(logs.to_string()) }
    })
    .await;
}

/// A gauge of the node's /metrics.
async fn gauge(api: &Api, name: &str) -> Option<u64> {
    let url = api.metrics.as_deref().expect("a metrics listener");
    let metrics = reqwest::get(url).await.unwrap().text().await.unwrap();
    let prefix = format!("{name} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// `wasmwiz_instances_in_use`: instances serving requests.
async fn instances_in_use(api: &Api) -> Option<u64> {
    gauge(api, "wasmwiz_instances_in_use").await
}

/// Waits until the node has no shared instance alive, serving or idle (an
/// idle one ends after the idle timeout).
async fn wait_idle(api: &Api) {
    eventually("no instance alive", Duration::from_secs(30), || async {
        let in_use = instances_in_use(api).await;
        let idle = gauge(api, "wasmwiz_instances_idle").await;
        let memory = gauge(api, "wasmwiz_instance_memory_bytes").await;
        if in_use == Some(0) && idle == Some(0) && memory == Some(0) {
            Ok(())
        } else {
            Err(format!("{in_use:?} in use, {idle:?} idle, {memory:?} bytes"))
        }
    })
    .await;
}

/// Sets tier `name`: no rate limits, a deadline of `timeout`, and `extra`
/// settings of `wasmwiz admin tier set`.
fn unrated_tier(env: &ServeEnv, name: &str, timeout: &str, extra: &[&str]) {
    let mut args = vec!["tier", "set", name, "--timeout", timeout];
    args.extend_from_slice(&["--per-minute", "unlimited", "--per-day", "unlimited"]);
    args.extend_from_slice(extra);
    env.admin(&args);
}

async fn count(api: &Api, ms: u64) -> (u16, String) {
    api.get_text(&format!("/acme/shared/count?ms={ms}")).await
}

/// Concurrency per instance: requests that wait share an instance; a trap
/// or a timeout on it ends every request it serves with a 5xx (no hang),
/// and the next request gets a fresh instance.
async fn a_wasip3_deployment_may_serve_requests_at_once_on_one_instance(mut env: ServeEnv) {
    // Idle instances end after a second, so each case below starts afresh.
    env.set("REUSE_IDLE_TIMEOUT", "1");
    unrated_tier(&env, "shared", "2000ms", &["--max-instance-concurrency", "16"]);
    let key = env.tenant("acme", "shared", false);
    let server = env.serve();
    let api = Api::new(&server, &key);
    let p3 = api.upload_component("hostile_p3").await;
    let p2 = api.upload_component("hello").await;
    let deploy = |body: serde_json::Value| {
        let api = api.clone();
        async move { api.deploy(body).await }
    };
    // Refused: concurrency on a WASIp2 component, above the reuse, above
    // the tier's cap.
    for (component, reuse, concurrency, says) in [
        (&p2, 64, 8, "needs a WASIp3 component"),
        (&p3, 4, 8, "needs max_instance_reuse of at least 8"),
        (&p3, 64, 32, "allows max_instance_concurrency up to 16"),
    ] {
        let (status, body) = deploy(serde_json::json!({
            "route": "/acme/refused/...", "component": component,
            "max_instance_reuse": reuse, "max_instance_concurrency": concurrency,
        }))
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(says), "{body}");
    }
    let (status, body) = deploy(serde_json::json!({
        "route": "/acme/shared/...", "component": p3,
        "max_instance_reuse": 1000, "max_instance_concurrency": 8,
    }))
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["max_instance_concurrency"], 8);
    api.deploy_component("hostile_p3", "/acme/fresh/...").await;

    // Eight waiting requests at once share one instance: it counts 1 to 8,
    // and the node reports one instance in use meanwhile.
    let in_use = async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        instances_in_use(&api).await
    };
    let (counts, in_use) =
        tokio::join!(futures::future::join_all((0..8).map(|_| count(&api, 1000))), in_use);
    assert_eq!(in_use, Some(1), "instances in use while eight requests wait");
    let mut seen: Vec<u64> = counts
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            body.parse().unwrap()
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (1..=8).collect::<Vec<_>>(), "eight requests on one instance");
    // Without the opt-in, every request is on a fresh instance.
    for _ in 0..3 {
        assert_eq!(api.get_text("/acme/fresh/count").await, (200, "1".to_string()));
    }

    // The hostile suite on a shared instance. Four requests wait on it
    // (1.5 s each) when the bad one arrives (at 0.2 s, its deadline at
    // 2.2 s); two more arrive at 1 s.
    // - A trap or memory over the limit ends the instance at once: the four
    //   get a 5xx then, not a hang, and the two later ones a fresh instance.
    // - A CPU loop holds the instance (its other requests cannot run) until
    //   its deadline, which ends the instance: all six get a 5xx then.
    // - A request that waits past its deadline (a sleep, or a future that
    //   never completes) is answered 504 at its deadline. The four finished
    //   before it and were served; the instance then ends with the two
    //   still on it (wasmtime 48 cannot cancel one guest task and keep its
    //   instance), which get a 5xx too.
    // Each time the next request gets a fresh instance.
    #[derive(Clone, Copy, PartialEq)]
    enum Ends {
        /// The instance ends at once.
        Now,
        /// The instance ends at the first deadline on it, with everything.
        FirstDeadline,
        /// The instance ends at the bad request's deadline.
        OwnDeadline,
    }
    for (bad, status, ends) in [
        ("trap", 500, Ends::Now),
        ("oom", 500, Ends::Now),
        ("loop", 504, Ends::FirstDeadline),
        ("no-response", 504, Ends::OwnDeadline),
        ("sleep?ms=60000", 504, Ends::OwnDeadline),
    ] {
        let started = std::time::Instant::now();
        let waiting = futures::future::join_all((0..4).map(|_| count(&api, 1500)));
        let late = futures::future::join_all((0..2).map(|_| async {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            count(&api, 1500).await
        }));
        let failing = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let answer = api.get_text(&format!("/acme/shared/{bad}")).await;
            (answer, started.elapsed())
        };
        let (waiting, late, ((bad_status, bad_body), bad_took)) =
            tokio::join!(waiting, late, failing);
        assert_eq!(bad_status, status, "{bad}: {bad_body}");
        for (status, body) in waiting {
            if ends == Ends::OwnDeadline {
                assert_eq!(status, 200, "a request done before `{bad}`'s deadline: {body}");
            } else {
                assert!(
                    status >= 500,
                    "a request sharing the instance with `{bad}`: {status} {body}"
                );
            }
        }
        if ends == Ends::Now {
            assert!(bad_took < Duration::from_millis(2000), "{bad} took {bad_took:?}");
            // The late requests came after the instance had ended: a fresh
            // one served them, counting 1 and 2.
            let mut counts: Vec<String> = late
                .into_iter()
                .map(|(status, body)| {
                    assert_eq!(status, 200, "a request after `{bad}` ended its instance: {body}");
                    body
                })
                .collect();
            counts.sort();
            assert_eq!(counts, ["1", "2"], "the requests after `{bad}` on a fresh instance");
        } else {
            // A loop holds the waiting requests past their own deadline
            // (at 2 s), which ends the instance; a wait ends at its own.
            let deadline = if ends == Ends::OwnDeadline { 2100 } else { 1900 };
            assert!(
                bad_took >= Duration::from_millis(deadline),
                "{bad} answered early: {bad_took:?}"
            );
            for (status, body) in late {
                assert!(
                    status >= 500,
                    "a request on the instance `{bad}` timed out on: {status} {body}"
                );
            }
            assert_eq!(
                count(&api, 0).await,
                (200, "1".to_string()),
                "a fresh instance after {bad}"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(6), "{bad}: {:?}", started.elapsed());
        // The instance of the last requests goes idle and ends; the next
        // case starts on one of its own.
        wait_idle(&api).await;
    }

    // Round after round of twice as many waiting requests as an instance
    // takes at once: the same two instances serve them all (none is left
    // idle beside a new one).
    let mut seen = Vec::new();
    for round in 0..3 {
        let in_use = async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            instances_in_use(&api).await
        };
        let (answers, in_use) =
            tokio::join!(futures::future::join_all((0..16).map(|_| count(&api, 1500))), in_use);
        assert!(answers.iter().all(|(status, _)| *status == 200), "{answers:?}");
        // Two while all sixteen wait (one if some had not arrived yet, one
        // more while an instance the loop above ended is still being
        // dropped on a loaded machine).
        let in_use = in_use.unwrap_or(0);
        assert!(in_use >= 1, "instances in use in round {round}: {in_use}");
        seen.push(in_use);
    }
    // Before every live instance was offered requests, one more was left
    // idle each round (2, 3, 4).
    assert!(seen[2] <= seen[0].max(3), "instances piled up round after round: {seen:?}");
}

/// An upstream on loopback that answers every request with three chunks,
/// `gap` apart; its address.
async fn chunked_upstream(gap: Duration) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\
                          transfer-encoding: chunked\r\n\r\n",
                    )
                    .await;
                for i in 0..3 {
                    let chunk = format!("part {i}\n");
                    let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
                    if socket.write_all(framed.as_bytes()).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(gap).await;
                }
                let _ = socket.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    addr
}

/// examples/fetch-p3: calls an upstream and streams its answer through, on
/// an instance shared by requests that wait.
async fn a_wasip3_handler_streams_an_upstreams_answer_while_others_share_its_instance(
    mut env: ServeEnv,
) {
    env.set("OUTBOUND_ALLOWED_NETWORKS", "127.0.0.0/8");
    let key = env.tenant("acme", "pro", false);
    let server = env.serve();
    let api = Api::new(&server, &key);
    let upstream = chunked_upstream(Duration::from_millis(300)).await;
    let digest = api.upload_component("fetch_p3").await;
    let (status, body) = api
        .deploy(serde_json::json!({
            "route": "/acme/fetch/...", "component": digest,
            "allowed_outbound_hosts": [format!("http://{upstream}")],
            "max_instance_reuse": 1000, "max_instance_concurrency": 32,
        }))
        .await;
    assert_eq!(status, 201, "{body}");
    let url = server.url(&format!("/acme/fetch/?url=http://{upstream}/data"));

    // The first part arrives while the upstream still writes the rest.
    let started = std::time::Instant::now();
    let mut response = crate::helpers::client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert!(first.starts_with(b"part 0"), "{first:?}");
    let mut rest = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    let whole = [first.to_vec(), rest].concat();
    assert_eq!(String::from_utf8(whole).unwrap(), "part 0\npart 1\npart 2\n");
    assert!(first_at < Duration::from_millis(500), "the first part took {first_at:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not streamed: {:?}",
        started.elapsed()
    );

    // Thirty-two at once, each waiting on the upstream: all whole, together.
    let started = std::time::Instant::now();
    let all =
        futures::future::join_all(
            (0..32).map(|_| {
                let url = url.clone();
                async move {
                    crate::helpers::client().get(&url).send().await.unwrap().text().await.unwrap()
                }
            }),
        )
        .await;
    assert!(all.iter().all(|b| b == "part 0\npart 1\npart 2\n"), "{all:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());

    // An upstream the deployment does not allow is refused by the host.
    let (status, body) = api.get_text("/acme/fetch/?url=http://127.0.0.2:9/").await;
    assert_eq!(status, 502, "{body}");
}

/// On shared instances the pool and the tier's cap count instances, not
/// requests: a tenant capped at two runs sixteen waiting requests at once
/// on two instances, and a seventeenth, which would need a third, gets
/// 429. Without sharing, the same cap admits two requests at once.
async fn shared_instances_not_their_requests_take_places_in_the_pool(mut env: ServeEnv) {
    env.set("REUSE_IDLE_TIMEOUT", "1");
    unrated_tier(
        &env,
        "capped",
        "5000ms",
        &["--max-concurrency", "2", "--max-instance-concurrency", "8"],
    );
    let key = env.tenant("acme", "capped", false);
    let server = env.serve();
    let api = Api::new(&server, &key);
    let p3 = api.upload_component("hostile_p3").await;
    let (status, body) = api
        .deploy(serde_json::json!({
            "route": "/acme/shared/...", "component": p3,
            "max_instance_reuse": 1000, "max_instance_concurrency": 8,
        }))
        .await;
    assert_eq!(status, 201, "{body}");
    api.deploy_component("hostile_p3", "/acme/fresh/...").await;

    let in_use = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let memory = gauge(&api, "wasmwiz_instance_memory_bytes").await;
        (instances_in_use(&api).await, memory)
    };
    let late = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        count(&api, 0).await
    };
    let (counts, in_use, late) =
        tokio::join!(futures::future::join_all((0..16).map(|_| count(&api, 1500))), in_use, late);
    let mut seen: Vec<u64> = counts
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            body.parse().unwrap()
        })
        .collect();
    seen.sort_unstable();
    let two_instances: Vec<u64> = (1..=8).flat_map(|n| [n, n]).collect();
    assert_eq!(seen, two_instances, "sixteen requests on two instances");
    let (in_use, memory) = in_use;
    assert_eq!(in_use, Some(2), "instances in use while sixteen requests wait");
    // Two instances' linear memory: some, and not sixteen instances' worth.
    let memory = memory.expect("wasmwiz_instance_memory_bytes");
    assert!(memory > 0 && memory <= 2 * (16 << 20), "{memory} bytes for two instances");
    assert_eq!(late.0, 429, "a request that needs a third instance: {}", late.1);
    assert!(late.1.contains("concurrency_limit"), "{}", late.1);
    // Their requests done, the two instances wait among the idle ones
    // (until REUSE_IDLE_TIMEOUT), holding no place in the pool.
    let deadline = std::time::Instant::now() + Duration::from_millis(600);
    let (mut idle, mut in_use) = (None, None);
    while std::time::Instant::now() < deadline {
        idle = gauge(&api, "wasmwiz_instances_idle").await;
        in_use = instances_in_use(&api).await;
        if (idle, in_use) == (Some(2), Some(0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((idle, in_use), (Some(2), Some(0)), "idle and in use after the requests");

    // Without sharing, each request is an instance: two at once, the third
    // refused.
    let fresh = |ms: u64| {
        let api = api.clone();
        async move { api.get_text(&format!("/acme/fresh/count?ms={ms}")).await }
    };
    let third = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        fresh(0).await
    };
    let (first, second, third) = tokio::join!(fresh(1500), fresh(1500), third);
    assert_eq!((first.0, second.0), (200, 200), "{first:?} {second:?}");
    assert_eq!(third.0, 429, "{third:?}");
    // Once they are done, the tenant is served again.
    wait_idle(&api).await;
    assert_eq!(count(&api, 0).await, (200, "1".to_string()));
}

/// A shared WASIp3 instance runs its guest only while it serves requests:
/// a task a request leaves behind does not run while the instance idles
/// (where it would hold the CPU, memory and outbound allowance of no
/// request, and count in no usage).
#[tokio::test]
async fn an_idle_shared_instance_runs_nothing_of_its_guest() {
    let env = ServeEnv::sqlite();
    unrated_tier(&env, "shared", "2000ms", &["--max-instance-concurrency", "4"]);
    let key = env.tenant("acme", "shared", false);
    let server = env.serve();
    let api = Api::new(&server, &key);
    let digest = api.upload_component("hostile_p3").await;
    let (status, body) = api
        .deploy(serde_json::json!({
            "route": "/acme/shared/...", "component": digest,
            "max_instance_reuse": 1000, "max_instance_concurrency": 4,
        }))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(get(&api, "/acme/shared/spawn-ticker?ms=5").await, (200, "ticking".into()));
    // Idle for a second: a ticker left running would tick ~200 times.
    let idle = Instant::now();
    while idle.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, ticks) = get(&api, "/acme/shared/ticks").await;
    assert_eq!(status, 200);
    let ticks: u64 = ticks.trim().parse().unwrap();
    assert!(ticks < 20, "the guest's task ran while its instance was idle: {ticks} ticks");
}
