//! Instance reuse (`max_instance_reuse`): a deployment that opts in has its
//! requests served by instances kept from earlier requests, within limits;
//! every other deployment keeps a fresh instance per request.
//!
//! The hostile guest's `count` action answers how many requests its
//! instance has served: `1` always on a fresh instance, `1, 2, 3...` on a
//! reused one.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Api, ServeEnv, Server, client, mount, on_both_stores};

/// `wasmwiz run` with the hostile guest on `/h/...` and `/other/...`, and
/// the stream example on `/s`.
fn server(envs: &[(&str, &str)]) -> Server {
    let args = [
        "run".to_string(),
        mount("/h/...", "hostile"),
        mount("/other/...", "hostile"),
        mount("/s", "stream"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut all = vec![("EXECUTION_TIMEOUT", "1")];
    all.extend_from_slice(envs);
    Server::start(&args, &all)
}

async fn fetch(base: &str, path: &str) -> (u16, String, String) {
    let response = client().get(format!("{base}{path}")).send().await.unwrap();
    let status = response.status().as_u16();
    let id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    (status, response.text().await.unwrap_or_default(), id)
}

/// The answers of `n` `count` requests on `path`, one after another.
async fn counts(base: &str, path: &str, n: usize) -> Vec<String> {
    let mut answers = Vec::new();
    for _ in 0..n {
        let (status, body, _) = fetch(base, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        answers.push(body);
    }
    answers
}

/// Logs what instance reuse does, for tests that wait for it.
const DEBUG_REUSE: &str = "info,wasmwiz::runtime=debug";
/// Logged when an instance is kept for a later request.
const KEPT: &str = "instance kept for reuse";
/// Logged when idle instances are dropped.
const SWEPT: &str = "idle instances dropped after REUSE_IDLE_TIMEOUT";

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn an_instance_serves_up_to_max_instance_reuse_requests_of_its_own_route() {
    let fresh = server(&[]);
    let base = fresh.url("");
    assert_eq!(counts(&base, "/h/count", 3).await, strings(&["1", "1", "1"]), "off by default");

    let reusing = server(&[("MAX_INSTANCE_REUSE", "3")]);
    let base = reusing.url("");
    assert_eq!(
        counts(&base, "/h/count", 7).await,
        strings(&["1", "2", "3", "1", "2", "3", "1"]),
        "three requests per instance, then a fresh one"
    );
    // The other route runs the same component on instances of its own.
    assert_eq!(counts(&base, "/other/count", 2).await, strings(&["1", "2"]));
    assert_eq!(counts(&base, "/h/count", 1).await, strings(&["2"]));
}

#[tokio::test]
async fn an_instance_that_failed_or_kept_a_resource_is_never_reused() {
    let server = server(&[("MAX_INSTANCE_REUSE", "100"), ("MEMORY_LIMIT", "33554432")]);
    let base = server.url("");
    // Each failure runs on the instance the two counts before it used; the
    // count after it must start again on a fresh instance.
    let failures = [
        ("trap", 500),
        ("sleep?ms=5000", 504),
        ("oom", 500),
        ("no-response", 500),
        ("error-code", 500),
        ("keep-resource", 200),
        ("keep-body-stream", 200),
    ];
    for (action, status) in failures {
        assert_eq!(
            counts(&base, "/h/count", 2).await,
            strings(&["1", "2"]),
            "the instance before `{action}` was not fresh, or not reused"
        );
        let (got, body, _) = fetch(&base, &format!("/h/{action}")).await;
        assert_eq!(got, status, "{action}: {body}");
    }
    assert_eq!(counts(&base, "/h/count", 1).await, strings(&["1"]));
}

#[tokio::test]
async fn an_instance_whose_guest_keeps_its_answered_request_is_reused_up_to_a_cap() {
    let server = server(&[("MAX_INSTANCE_REUSE", "1000")]);
    let base = server.url("");
    assert_eq!(counts(&base, "/h/count", 1).await, strings(&["1"]));
    // As StarlingMonkey does: the request kept after answering it (with a
    // body the guest never read, which the host drops).
    let response =
        client().post(format!("{base}/h/keep-request")).body(vec![7u8; 64 << 10]).send().await;
    assert_eq!(response.unwrap().status(), 200);
    assert_eq!(counts(&base, "/h/count", 1).await, strings(&["2"]), "reused all the same");
    // Up to 256 kept requests; past them, a fresh instance.
    for _ in 0..255 {
        assert_eq!(fetch(&base, "/h/keep-request").await.0, 200);
    }
    assert_eq!(counts(&base, "/h/count", 1).await, strings(&["3"]), "256 kept: still reused");
    assert_eq!(fetch(&base, "/h/keep-request").await.0, 200);
    assert_eq!(counts(&base, "/h/count", 1).await, strings(&["1"]), "257 kept: a fresh one");
}

#[tokio::test]
async fn only_second_requests_returning_without_an_answer_turn_reuse_off() {
    let server = server(&[("MAX_INSTANCE_REUSE", "100")]);
    let base = server.url("");
    // Two traps, each on an instance's second request: reuse stays on.
    for _ in 0..2 {
        assert_eq!(counts(&base, "/h/count", 1).await, strings(&["1"]));
        assert_eq!(fetch(&base, "/h/trap").await.0, 500);
    }
    assert_eq!(counts(&base, "/h/count", 2).await, strings(&["1", "2"]), "still reused");
    // Another route of the same component, whose instances return without
    // an answer on their second request twice (as a fetch-event
    // JavaScript component does): reused no more.
    for _ in 0..2 {
        assert_eq!(counts(&base, "/other/count", 1).await, strings(&["1"]));
        assert_eq!(fetch(&base, "/other/no-response").await.0, 500);
    }
    assert_eq!(counts(&base, "/other/count", 2).await, strings(&["1", "1"]), "fresh now");
    server.wait_for_log("instance reuse turned off", Duration::from_secs(5));
    assert_eq!(counts(&base, "/h/count", 1).await, strings(&["3"]), "the first route is not");
}

#[tokio::test]
async fn kept_requests_with_large_headers_end_reuse_past_a_mebibyte() {
    let server = server(&[("MAX_INSTANCE_REUSE", "1000")]);
    let base = server.url("");
    assert_eq!(counts(&base, "/h/count", 1).await, strings(&["1"]));
    // Each kept request holds 60 KiB of headers: past 1 MiB of them the
    // instance is not kept, whatever the count.
    let pad = "p".repeat(60 << 10);
    for i in 0..20 {
        let response =
            client().get(format!("{base}/h/keep-request")).header("x-pad", &pad).send().await;
        assert_eq!(response.unwrap().status(), 200, "request {i}");
    }
    assert_eq!(counts(&base, "/h/count", 1).await, strings(&["1"]), "a fresh instance");
}

#[tokio::test]
async fn an_instance_that_streamed_its_body_after_its_head_is_reused() {
    let server = server(&[("MAX_INSTANCE_REUSE", "100"), ("LOG_LEVEL", DEBUG_REUSE)]);
    let base = server.url("");
    assert_eq!(counts(&base, "/h/count", 1).await, strings(&["1"]));
    // 2 MiB through the bounded body channel: the guest waits for the
    // client after its head has gone, and ends in a task of its own.
    let response = client().get(format!("{base}/h/big-response?mib=2")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().len(), 2 << 20);
    // That task gives the instance back just after the last byte is sent.
    server.wait_for_log_count(KEPT, 2, Duration::from_secs(5));
    assert_eq!(counts(&base, "/h/count", 1).await, strings(&["2"]));

    // Streamed bodies stay whole and in order, request after request.
    for _ in 0..3 {
        let response =
            client().get(format!("{base}/s?chunks=32&size=8192&delay_ms=1")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.bytes().await.unwrap();
        assert_eq!(body.len(), 32 * 8192);
        assert!(body.iter().enumerate().all(|(i, b)| *b as usize == i % 251), "a byte is wrong");
    }
}

#[tokio::test]
async fn an_idle_instance_is_dropped_after_its_idle_timeout() {
    let server = server(&[
        ("MAX_INSTANCE_REUSE", "100"),
        ("REUSE_IDLE_TIMEOUT", "1"),
        ("LOG_LEVEL", DEBUG_REUSE),
    ]);
    let base = server.url("");
    assert_eq!(counts(&base, "/h/count", 2).await, strings(&["1", "2"]));
    // Swept four times per timeout: gone within 1.25 s.
    server.wait_for_log(SWEPT, Duration::from_secs(5));
    assert_eq!(counts(&base, "/h/count", 2).await, strings(&["1", "2"]));
}

#[tokio::test]
async fn idle_instances_stay_within_the_node_memory_budget() {
    let off = server(&[("MAX_INSTANCE_REUSE", "100"), ("REUSE_IDLE_MEMORY", "0")]);
    let base = off.url("");
    assert_eq!(counts(&base, "/h/count", 2).await, strings(&["1", "1"]), "0 turns reuse off");

    let small = server(&[("MAX_INSTANCE_REUSE", "100"), ("REUSE_IDLE_MEMORY", "4MiB")]);
    let base = small.url("");
    assert_eq!(counts(&base, "/h/count", 2).await, strings(&["1", "2"]), "a small instance fits");
    // Growing the heap by 8 MiB takes the instance past the budget.
    let (status, body, _) = fetch(&base, "/h/write-secret").await;
    assert_eq!((status, body.as_str()), (200, "written"));
    assert_eq!(counts(&base, "/h/count", 2).await, strings(&["1", "2"]));
}

#[tokio::test]
async fn a_reused_instance_keeps_memory_but_not_output_and_other_routes_see_neither() {
    let server = server(&[("MAX_INSTANCE_REUSE", "100")]);
    let base = server.url("");
    // The trade a deployment opts in to: what one request leaves in the
    // guest's memory, the next request of the same route can read.
    let (status, body, _) = fetch(&base, "/h/write-secret").await;
    assert_eq!((status, body.as_str()), (200, "written"));
    let (status, body, _) = fetch(&base, "/h/probe").await;
    assert_eq!((status, body.as_str()), (200, "LEAKED"), "the instance was not reused");
    let (status, body, _) = fetch(&base, "/other/probe").await;
    assert_eq!((status, body.as_str()), (200, "clean"), "another route saw /h's memory");

    // Captured output is logged per request, never carried to the next;
    // the guest's own stdout and stderr streams do not stop reuse.
    assert_eq!(counts(&base, "/h/count", 1).await, strings(&["1"]));
    let (_, _, first) = fetch(&base, "/h/stdout?lines=1&tag=first-request").await;
    let (_, _, second) = fetch(&base, "/h/stdout?lines=1&tag=second-request").await;
    assert_eq!(counts(&base, "/h/count", 1).await, strings(&["2"]), "printing ended reuse");
    // Nor does a stdin stream kept (as the WASIp1 adapter keeps it).
    let (status, body, _) = fetch(&base, "/h/keep-stdin").await;
    assert_eq!((status, body.as_str()), (200, "kept stdin"));
    assert_eq!(counts(&base, "/h/count", 1).await, strings(&["3"]), "keeping stdin ended reuse");
    server.wait_for_log("second-request 0 to stderr", Duration::from_secs(5));
    let logs = server.logs();
    let lines_of = |id: &str| -> Vec<String> {
        logs.lines()
            .filter(|l| l.contains(id) && l.contains("guest output"))
            .map(String::from)
            .collect()
    };
    let second_lines = lines_of(&second);
    assert_eq!(second_lines.len(), 2, "stdout and stderr of the second request: {second_lines:?}");
    assert!(
        second_lines.iter().all(|l| l.contains("second-request") && !l.contains("first-request")),
        "{second_lines:?}"
    );
    assert_eq!(lines_of(&first).len(), 2);
}

#[tokio::test]
async fn concurrent_requests_share_a_few_instances() {
    let server = server(&[("MAX_INSTANCE_REUSE", "10000")]);
    let base = server.url("");
    let mut answers = Vec::new();
    // 16 clients, 25 requests each: at most 16 instances are ever running,
    // and every one of them is kept, so no more than 16 are created.
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let base = base.clone();
            tokio::spawn(async move { counts(&base, "/h/count", 25).await })
        })
        .collect();
    for client in clients {
        answers.extend(client.await.unwrap());
    }
    assert_eq!(answers.len(), 400);
    let numbers: Vec<u64> = answers.iter().map(|a| a.parse().expect("a count")).collect();
    let fresh = numbers.iter().filter(|n| **n == 1).count();
    assert!((1..=16).contains(&fresh), "{fresh} fresh instances for 16 clients");
    // Each instance answered 1, 2, ... k: as many answers say h as there
    // are instances that served h requests or more, fewer for every h up.
    let at = |h: u64| numbers.iter().filter(|n| **n == h).count();
    let highest = *numbers.iter().max().unwrap();
    for h in 2..=highest {
        assert!(at(h) <= at(h - 1), "{} answers of {h}, {} of {}", at(h), at(h - 1), h - 1);
    }
}

/// `max_instance_reuse` through API v1 and `wasmwiz serve`, on both stores.
async fn max_instance_reuse_is_validated_stored_and_kept_per_version(env: ServeEnv) {
    let admin_key = env.tenant("ops", "pro", true);
    let key = env.tenant("acme", "pro", false);
    env.grant("acme", &["/r/...", "/plain/..."]);
    let server = env.serve();
    let api = Api::new(&server, &key);
    let hostile = api.upload_component("hostile").await;

    for bad in [json!(0), json!(10_001), json!("many"), json!(-1)] {
        let (status, body) = api
            .deploy(json!({ "route": "/r/...", "component": hostile, "max_instance_reuse": bad }))
            .await;
        assert_eq!(status, 400, "max_instance_reuse {bad}: {body}");
    }
    let (status, v1) = api
        .deploy(json!({ "route": "/r/...", "component": hostile, "max_instance_reuse": 3 }))
        .await;
    assert_eq!(status, 201, "{v1}");
    assert_eq!(v1["max_instance_reuse"], 3);
    let id = v1["id"].as_str().unwrap().to_string();
    let base = server.url("");
    assert_eq!(counts(&base, "/r/count", 4).await, strings(&["1", "2", "3", "1"]));

    // Version 2 (another component could run) starts on fresh instances.
    let (status, v2) = api
        .deploy(json!({ "route": "/r/...", "component": hostile, "max_instance_reuse": 2 }))
        .await;
    assert_eq!((status, v2["version"].as_i64()), (201, Some(2)), "{v2}");
    assert_eq!(counts(&base, "/r/count", 3).await, strings(&["1", "2", "1"]));

    // A deployment that does not ask keeps a fresh instance per request.
    let (status, plain) = api.deploy(json!({ "route": "/plain/...", "component": hostile })).await;
    assert_eq!((status, plain["max_instance_reuse"].as_i64()), (201, Some(1)), "{plain}");
    assert_eq!(counts(&base, "/plain/count", 2).await, strings(&["1", "1"]));

    let (status, back) =
        api.call(api.request(Method::POST, &format!("/api/v1/deployments/{id}/rollback"))).await;
    assert_eq!((status, back["max_instance_reuse"].as_i64()), (200, Some(3)), "{back}");
    assert_eq!(counts(&base, "/r/count", 4).await, strings(&["1", "2", "3", "1"]));

    let metrics = reqwest::get(server.metrics_url()).await.unwrap().text().await.unwrap();
    let reused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("wasmwiz_instances_reused_total "))
        .expect("wasmwiz_instances_reused_total");
    // 2 + 1 + 2 reused requests on /r; none on /plain.
    assert_eq!(reused, "5", "{metrics}");
    assert!(metrics.contains("wasmwiz_instances_idle"), "{metrics}");

    // Stored: a restarted node serves the live version with its setting.
    drop(server);
    let server = env.serve();
    let api = Api::new(&server, &key);
    let (status, list) = api.call(api.request(Method::GET, "/api/v1/deployments")).await;
    assert_eq!(status, 200);
    let r = list.as_array().unwrap().iter().find(|d| d["route"] == "/r/...").unwrap();
    assert_eq!((r["version"].as_i64(), r["max_instance_reuse"].as_i64()), (Some(1), Some(3)));
    let base = server.url("");
    assert_eq!(counts(&base, "/r/count", 4).await, strings(&["1", "2", "3", "1"]));

    // The tier caps what its deployments get, and what they may ask for.
    let admin = Api::new(&server, &admin_key);
    let (status, tier) = admin
        .call(
            admin
                .request(Method::PUT, "/api/v1/tiers/pro")
                .json(&json!({ "max_instance_reuse": 2 })),
        )
        .await;
    assert_eq!((status, tier["max_instance_reuse"].as_i64()), (200, Some(2)), "{tier}");
    assert_eq!(counts(&base, "/r/count", 3).await, strings(&["1", "2", "1"]));
    let (status, body) = api
        .deploy(json!({ "route": "/r/...", "component": hostile, "max_instance_reuse": 3 }))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("up to 2"), "{body}");
    let (status, tiers) = api.call(api.request(Method::GET, "/api/v1/tiers")).await;
    assert_eq!(status, 200);
    let free = tiers.as_array().unwrap().iter().find(|t| t["name"] == "free").unwrap();
    assert_eq!(free["max_instance_reuse"], 10_000, "the default: {free}");
}

#[tokio::test]
async fn an_instance_grown_past_a_lowered_memory_limit_is_not_reused() {
    let env = ServeEnv::sqlite();
    let admin = env.tenant("ops", "pro", true);
    let key = env.tenant("acme", "pro", false);
    env.grant("acme", &["/m/..."]);
    let server = env.serve();
    let (admin, api) = (Api::new(&server, &admin), Api::new(&server, &key));
    let hostile = api.upload_component("hostile").await;
    let (status, body) = api
        .deploy(json!({ "route": "/m/...", "component": hostile, "max_instance_reuse": 100 }))
        .await;
    assert_eq!(status, 201, "{body}");
    let base = server.url("");
    assert_eq!(counts(&base, "/m/count", 2).await, strings(&["1", "2"]));
    // The instance grows past 8 MiB, then the tier's limit drops to 6 MiB:
    // the kept instance is over it, a fresh one is not.
    let (status, body, _) = fetch(&base, "/m/write-secret").await;
    assert_eq!((status, body.as_str()), (200, "written"));
    assert_eq!(counts(&base, "/m/count", 1).await, strings(&["3"]));
    let (status, body) = admin
        .call(
            admin
                .request(Method::PUT, "/api/v1/tiers/pro")
                .json(&json!({ "memory_limit_bytes": 6 << 20 })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(&base, "/m/count", 2).await, strings(&["1", "2"]));
}

on_both_stores!(max_instance_reuse_is_validated_stored_and_kept_per_version);
