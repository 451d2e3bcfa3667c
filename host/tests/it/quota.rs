//! Tier quotas and limits: in process (embedded store) and in Redis
//! (PostgreSQL + the real Redis), with Redis faults.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::helpers::{
    Api, RedisServer, ServeEnv, Server, client, eventually, shared_redis_url, unique_prefix,
    wait_for_minute_room,
};

/// The in-process backend on the embedded store.
fn local() -> ServeEnv {
    ServeEnv::sqlite()
}

/// Redis (the shared server, a key prefix of this test's own) on PostgreSQL.
fn redis() -> ServeEnv {
    let mut env = ServeEnv::postgres();
    env.set("REDIS_URL", &shared_redis_url()).set("REDIS_KEY_PREFIX", &unique_prefix());
    env
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::local()).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::redis()).await
                }
            )*
        }
    };
}

on_both_backends!(
    a_tenant_gets_exactly_its_minute_quota_and_refusals_do_not_count,
    the_day_window_is_enforced_too,
    a_tier_change_takes_effect_within_a_second,
    tier_limits_apply_to_each_invocation,
    usage_counts_invocations_and_errors,
);

/// A server where tenant `acme` is on tier `metered` (per minute, per day)
/// with `hello` on `/hello` and the hostile guest on `/hostile/...`.
async fn metered(env: &ServeEnv, per_minute: &str, per_day: &str) -> (Server, Api, Api) {
    env.admin(&["tier", "set", "metered", "--per-minute", per_minute, "--per-day", per_day]);
    let admin_key = env.tenant("ops", "pro", true);
    let key = env.tenant("acme", "metered", false);
    env.grant("acme", &["/hello", "/hostile/...", "/echo"]);
    let server = env.serve();
    let acme = Api::new(&server, &key);
    acme.deploy_component("hello", "/hello").await;
    acme.deploy_component("hostile", "/hostile/...").await;
    acme.deploy_component("echo", "/echo").await;
    let admin = Api::new(&server, &admin_key);
    (server, admin, acme)
}

async fn get(server: &Server, path: &str) -> reqwest::Response {
    client().get(server.url(path)).send().await.unwrap()
}

async fn a_tenant_gets_exactly_its_minute_quota_and_refusals_do_not_count(env: ServeEnv) {
    let (server, _admin, _acme) = metered(&env, "5", "1000").await;
    wait_for_minute_room(20).await;

    // Refused requests first: none of them may count.
    assert_eq!(get(&server, "/nowhere").await.status(), 404);
    let too_big = client().post(server.url("/echo")).body(vec![0u8; 2 << 20]).send().await.unwrap();
    assert_eq!(too_big.status(), 413);

    let mut statuses = Vec::new();
    let mut last_admitted = None;
    let mut first_refused = None;
    for _ in 0..12 {
        let response = get(&server, "/hello").await;
        statuses.push(response.status().as_u16());
        if response.status() == 200 {
            last_admitted = Some(response);
        } else if first_refused.is_none() {
            first_refused = Some(response);
        }
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 7, "{statuses:?}");

    let admitted = last_admitted.unwrap();
    assert_eq!(
        admitted.headers()["ratelimit-policy"],
        "\"minute\";q=5;w=60, \"day\";q=1000;w=86400"
    );
    let state = admitted.headers()["ratelimit"].to_str().unwrap();
    assert!(state.starts_with("\"minute\";r=0;t="), "{state}");
    assert!(state.contains("\"day\";r=995;"), "{state}");

    let refused = first_refused.unwrap();
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert!(refused.headers().contains_key("ratelimit"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "quota_exceeded");
}

async fn the_day_window_is_enforced_too(env: ServeEnv) {
    let (server, _admin, acme) = metered(&env, "100", "3").await;
    let statuses: Vec<u16> = futures::future::join_all((0..6).map(|_| get(&server, "/hello")))
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    let refused = get(&server, "/hello").await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let to_midnight = 86_400 - now % 86_400;
    assert!(
        retry_after.abs_diff(to_midnight) <= 2,
        "Retry-After {retry_after}, midnight in {to_midnight}"
    );

    let (status, usage) = acme.call(acme.request(Method::GET, "/api/v1/usage")).await;
    assert_eq!(status, 200);
    assert_eq!(
        usage["day"],
        json!({ "limit": 3, "used": 3, "reset_in_s": usage["day"]["reset_in_s"] })
    );
}

async fn a_tier_change_takes_effect_within_a_second(env: ServeEnv) {
    let (server, admin, _acme) = metered(&env, "2", "1000").await;
    wait_for_minute_room(15).await;
    assert_eq!(get(&server, "/hello").await.status(), 200);
    assert_eq!(get(&server, "/hello").await.status(), 200);
    assert_eq!(get(&server, "/hello").await.status(), 429);

    let (status, _) = admin
        .call(admin.request(Method::PATCH, "/api/v1/tenants/acme").json(&json!({ "tier": "pro" })))
        .await;
    assert_eq!(status, 200);
    let changed = Instant::now();
    while get(&server, "/hello").await.status() != 200 {
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "the new tier was not applied within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = get(&server, "/hello").await;
    assert!(response.headers()["ratelimit-policy"].to_str().unwrap().contains("q=500"));

    // Changing the tier itself applies too.
    let (status, _) = admin
        .call(
            admin
                .request(Method::PUT, "/api/v1/tiers/pro")
                .json(&json!({ "requests_per_minute": 3 })),
        )
        .await;
    assert_eq!(status, 200);
    let response = get(&server, "/hello").await;
    assert_eq!(response.status(), 429, "used 4 of a new 3 per minute");
}

async fn tier_limits_apply_to_each_invocation(env: ServeEnv) {
    env.admin(&[
        "tier",
        "set",
        "small",
        "--timeout",
        "300ms",
        "--max-input",
        "1000",
        "--memory",
        "16MiB",
    ]);
    let key = env.tenant("tiny", "small", false);
    env.grant("tiny", &["/h/...", "/e"]);
    let server = env.serve();
    let tiny = Api::new(&server, &key);
    tiny.deploy_component("hostile", "/h/...").await;
    tiny.deploy_component("echo", "/e").await;

    let started = Instant::now();
    let response = get(&server, "/h/sleep?ms=5000").await;
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() < Duration::from_millis(1500), "took {:?}", started.elapsed());

    let response = client().post(server.url("/e")).body(vec![1u8; 1001]).send().await.unwrap();
    assert_eq!(response.status(), 413);
    let response = client().post(server.url("/e")).body(vec![1u8; 1000]).send().await.unwrap();
    assert_eq!(response.status(), 200);

    let response = get(&server, "/h/oom").await;
    assert_eq!(response.status(), 500);
}

async fn usage_counts_invocations_and_errors(env: ServeEnv) {
    let (server, _admin, acme) = metered(&env, "1000", "10000").await;
    for path in ["/hello", "/hello", "/hostile/trap", "/hostile/oom", "/hostile/no-response"] {
        let _ = get(&server, path).await;
    }
    // Usage is recorded when each guest's task ends, just after the answer.
    let usage = eventually("usage counting 5 invocations", Duration::from_secs(5), || async {
        let (status, usage) = acme.call(acme.request(Method::GET, "/api/v1/usage")).await;
        assert_eq!(status, 200);
        if usage["totals"]["invocations"] == 5 { Ok(usage) } else { Err(usage.to_string()) }
    })
    .await;
    assert_eq!(usage["tenant"], "acme");
    assert_eq!(usage["tier"], "metered");
    assert_eq!(usage["totals"]["errors"], json!({ "trap": 1, "timeout": 0, "oom": 1, "other": 1 }));
    assert_eq!(usage["today"]["invocations"], 5);
    assert_eq!(usage["minute"]["limit"], 1000);
    assert!(usage["minute"]["used"].as_u64().unwrap() >= 5);
}

/// With a limit large enough for leases, 64 concurrent clients are counted
/// as what they were served plus at most the unspent rest of two leases
/// (the one being spent and the one taken ahead; concurrent requests that
/// find no lease never each reserve a batch), in about one Redis call per
/// lease.
#[tokio::test]
async fn leases_under_concurrency_count_what_was_served() {
    leases_count_what_was_served(redis()).await;
}

/// The same with two serving threads, each with its own event loop: one
/// lease table and one Redis connection for both.
#[tokio::test]
async fn leases_count_what_was_served_with_two_server_threads() {
    let mut env = redis();
    env.set("SERVER_THREADS", "2");
    leases_count_what_was_served(env).await;
}

async fn leases_count_what_was_served(env: ServeEnv) {
    use wasmwiz::quota::redis::MAX_LEASE;
    let (server, _admin, acme) = metered(&env, "10000000", "100000000").await;
    // Leases end with their minute: the whole run must fit in one.
    wait_for_minute_room(30).await;
    let http = client();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (http, url) = (http.clone(), server.url("/hello"));
        tasks.push(tokio::spawn(async move {
            for _ in 0..40 {
                let status = http.get(&url).send().await.unwrap().status();
                assert_eq!(status, 200);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let (_, usage) = acme.call(acme.request(Method::GET, "/api/v1/usage")).await;
    let counted = usage["minute"]["used"].as_u64().unwrap();
    // 2,560 served; two leases (the one being spent and the next, taken
    // ahead) may be left unspent.
    assert!((2560..=2560 + 2 * MAX_LEASE).contains(&counted), "counted {counted}: {usage}");
    // And they cost Redis about one call per lease: requests that a lease
    // left without a unit take or wait for the next one rather than each
    // calling Redis on its own (2,560 / MAX_LEASE leases would do).
    let metrics = http.get(server.metrics_url()).send().await.unwrap().text().await.unwrap();
    let calls: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("wasmwiz_quota_redis_calls_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no wasmwiz_quota_redis_calls_total in:\n{metrics}"));
    let leases = 2560 / MAX_LEASE;
    assert!((leases..=2 * leases + 2).contains(&calls), "{calls} Redis calls for 2,560 requests");
}

/// Once half of a lease is spent, the next one is taken ahead: a busy
/// tenant's requests spend unit after unit without ever waiting for Redis
/// (a request waiting for a lease holds its pool place, and a kept
/// instance, meanwhile).
#[tokio::test]
async fn the_next_lease_is_taken_before_the_one_being_spent_runs_out() {
    use wasmwiz::quota::QuotaBackend as _;
    use wasmwiz::quota::redis::{MAX_LEASE, RedisQuota, lease_size};
    wait_for_minute_room(20).await;
    let quota =
        RedisQuota::connect(&shared_redis_url(), &unique_prefix(), Duration::from_secs(2)).unwrap();
    let rates = wasmwiz::quota::Rates { per_minute: None, per_day: None };
    assert_eq!(lease_size(rates), MAX_LEASE);
    // The first request takes a lease: one unit for it, 63 left.
    assert!(quota.admit(1, rates).await.allowed);
    assert_eq!(quota.calls(), 1);
    // Spent down to half: the next one is taken ahead, in a task of its own.
    let mut spent = 1;
    while spent <= MAX_LEASE / 2 {
        assert!(quota.admit_now(1, rates).expect("a unit of the lease").allowed);
        spent += 1;
    }
    crate::helpers::eventually("the next lease taken ahead", Duration::from_secs(10), || async {
        (quota.calls() == 2).then_some(())
    })
    .await;
    // The rest of the first lease and the whole of the second are spent
    // without a call, each admission answered at once.
    while spent < 2 * MAX_LEASE {
        assert!(
            quota.admit_now(1, rates).is_some_and(|a| a.allowed),
            "request {spent} waited for Redis"
        );
        spent += 1;
    }
    // (the second lease, half spent, took a third ahead)
    assert!(quota.calls() <= 3, "{} calls", quota.calls());
    // Redis counted what was served and what the leases reserved: the
    // three leases, no more.
    let counted = quota.peek(1, rates).await.minute.used;
    assert!((2 * MAX_LEASE..=3 * MAX_LEASE).contains(&counted), "counted {counted}");
}

#[tokio::test]
async fn thirty_concurrent_requests_over_three_nodes_admit_exactly_ten() {
    let env = redis();
    env.admin(&["tier", "set", "ten", "--per-minute", "10", "--per-day", "1000"]);
    let key = env.tenant("acme", "ten", false);
    env.grant("acme", &["/hello"]);
    let a = env.serve();
    let b = env.other_node().serve();
    let c = env.other_node().serve();
    Api::new(&a, &key).deploy_component("hello", "/hello").await;
    // A route of another tenant deployed afterwards: once the other nodes
    // serve it, they serve /hello too (a node loads the whole table at
    // once), and probing it costs acme nothing.
    let probe_key = env.tenant("probe", "pro", false);
    Api::new(&a, &probe_key).deploy_component("hello", "/probe").await;
    // Each node compiles the component itself (its own data folder), two
    // at once beside the rest of the suite: generous, since what is under
    // test here is the count, not how fast a deployment spreads (that is
    // cluster::every_change_through_one_node_reaches_another_within_a_second).
    for node in [&b, &c] {
        let deadline = Instant::now() + Duration::from_secs(15);
        while get(node, "/probe").await.status() != 200 {
            assert!(
                Instant::now() < deadline,
                "the deployment did not reach every node within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    wait_for_minute_room(20).await;

    let urls: Vec<String> = (0..30).map(|i| [&a, &b, &c][i % 3].url("/hello")).collect();
    let statuses: Vec<u16> = futures::future::join_all(urls.iter().map(|url| async move {
        client().get(url).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
    }))
    .await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 10, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 20, "{statuses:?}");
}

/// Sends requests from 8 clients for `duration`; returns (status, latency)
/// of every answer.
async fn load(server: &Server, path: &str, duration: Duration) -> Vec<(u16, Duration)> {
    let url = server.url(path);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = client();
                let started = Instant::now();
                let mut answers = Vec::new();
                while started.elapsed() < duration {
                    let sent = Instant::now();
                    let status =
                        match tokio::time::timeout(Duration::from_secs(5), client.get(&url).send())
                            .await
                        {
                            Ok(Ok(response)) => response.status().as_u16(),
                            Ok(Err(_)) => 0,
                            Err(_) => 1, // hung
                        };
                    answers.push((status, sent.elapsed()));
                }
                answers
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

async fn ready(server: &Server) -> serde_json::Value {
    client().get(server.url("/ready")).send().await.unwrap().json().await.unwrap()
}

fn assert_served(answers: &[(u16, Duration)], phase: &str) {
    assert!(answers.len() > 20, "{phase}: only {} answers", answers.len());
    let bad: Vec<_> = answers.iter().filter(|(s, _)| *s != 200 && *s != 429).collect();
    assert!(bad.is_empty(), "{phase}: answers other than 200/429: {bad:?}");
    let slowest = answers.iter().map(|(_, l)| *l).max().unwrap();
    assert!(slowest < Duration::from_secs(1), "{phase}: a request took {slowest:?}");
}

#[tokio::test]
async fn redis_stopped_or_stalled_under_load_degrades_then_recovers() {
    let mut redis = RedisServer::start();
    let mut env = ServeEnv::postgres();
    env.set("REDIS_URL", &redis.url()).set("REDIS_KEY_PREFIX", &unique_prefix());
    env.admin(&["tier", "set", "big", "--per-minute", "1000000", "--per-day", "100000000"]);
    let key = env.tenant("acme", "big", false);
    env.grant("acme", &["/hello"]);
    let server = env.serve();
    Api::new(&server, &key).deploy_component("hello", "/hello").await;

    assert_served(&load(&server, "/hello", Duration::from_millis(500)).await, "healthy");
    assert_eq!(ready(&server).await["quota"], "ok");

    // Stopped: connections are refused.
    redis.stop();
    assert_served(&load(&server, "/hello", Duration::from_secs(1)).await, "redis stopped");
    let state = ready(&server).await;
    assert_eq!(
        (state["status"].as_str(), state["quota"].as_str()),
        (Some("degraded"), Some("degraded"))
    );
    assert_eq!(client().get(server.url("/ready")).send().await.unwrap().status(), 200);

    redis.restart();
    let back = Instant::now();
    while ready(&server).await["quota"] != "ok" {
        assert!(back.elapsed() < Duration::from_secs(5), "never recovered from the stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Stalled: connections are accepted and never answered.
    redis.signal(libc::SIGSTOP);
    assert_served(&load(&server, "/hello", Duration::from_secs(1)).await, "redis stalled");
    assert_eq!(ready(&server).await["quota"], "degraded");
    redis.signal(libc::SIGCONT);
    let back = Instant::now();
    while ready(&server).await["quota"] != "ok" {
        assert!(back.elapsed() < Duration::from_secs(5), "never recovered from the stall");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Exact counting again: the counter in Redis moves with each request.
    let response = get(&server, "/hello").await;
    assert_eq!(response.status(), 200);
    assert!(!response.headers()["ratelimit"].to_str().unwrap().is_empty());
}
