//! The control plane as an operator and a tenant see it: readiness that
//! holds while other nodes deploy, what a node serves while it compiles,
//! compile failures, and the instance pool shared fairly between tenants.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Api, ServeEnv, Server, client, eventually};

/// The deployment with `id` as node `api` lists it.
async fn deployment_on(api: &Api, id: &str) -> Option<Value> {
    let (status, list) = api.call(api.request(Method::GET, "/api/v1/deployments")).await;
    assert_eq!(status, 200, "{list}");
    list.as_array().unwrap().iter().find(|d| d["id"] == id).cloned()
}

/// Waits until node `api` reports deployment `id` in `state`, and returns it.
async fn until_state(api: &Api, id: &str, state: &str, timeout: Duration) -> Value {
    let what = format!("{id} becoming {state} on {}", api.base);
    eventually(&what, timeout, || async {
        match deployment_on(api, id).await {
            Some(d) if d["status"]["state"] == state => Ok(d),
            seen => Err(format!("{seen:?}")),
        }
    })
    .await
}

async fn get(url: String) -> (u16, String) {
    let response = client().get(url).send().await.expect("answered");
    (response.status().as_u16(), response.text().await.unwrap_or_default())
}

/// The value of the metric line starting with `prefix` on `server`.
async fn metric(server: &Server, prefix: &str) -> f64 {
    let (_, text) = get(server.metrics_url()).await;
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn a_node_stays_ready_while_it_compiles_what_another_node_deployed() {
    let env = ServeEnv::postgres();
    let key = env.tenant("acme", "pro", false);
    env.grant("acme", &["/heavy", "/app"]);
    let a = env.serve();
    let env_b = env.other_node();
    let b = env_b.serve();
    let on_a = Api::new(&a, &key);
    let on_b = Api::new(&b, &key);
    assert_eq!(get(b.url("/ready")).await.0, 200);

    // Node b's readiness, polled every 5 ms from before the upload until b
    // serves the new route.
    let ready_url = b.url("/ready");
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let poller = tokio::spawn(async move {
        let (mut polls, mut not_ready, mut saw_pending) = (0, Vec::new(), false);
        while !*stopped.borrow() {
            let (status, body) = get(ready_url.clone()).await;
            polls += 1;
            if status != 200 {
                not_ready.push(format!("{status} {body}"));
            }
            saw_pending |= body.contains("\"pending_compilations\":1");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                _ = stopped.changed() => {}
            }
        }
        (polls, not_ready, saw_pending)
    });

    // The heavy component takes seconds to compile on each node.
    let deployment = on_a.deploy_component("heavy", "/heavy").await;
    let id = deployment["id"].as_str().unwrap();
    assert_eq!(deployment["status"]["state"], "serving", "a compiled it at upload");

    // Once b knows of the deployment, requests to the route through b wait
    // for its compilation instead of answering 404.
    let compiling = until_state(&on_b, id, "compiling", Duration::from_secs(10)).await;
    assert!(compiling["status"].get("serving_version").is_none(), "{compiling}");
    let started = Instant::now();
    let requests: Vec<_> = (0..4).map(|_| tokio::spawn(get(b.url("/heavy")))).collect();
    for request in requests {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("heavy "), "{body}");
    }
    let waited = started.elapsed();
    until_state(&on_b, id, "serving", Duration::from_secs(5)).await;
    stop.send(true).unwrap();
    let (polls, not_ready, saw_pending) = poller.await.unwrap();
    assert!(not_ready.is_empty(), "b left the load balancer while compiling: {not_ready:?}");
    assert!(saw_pending, "b's readiness never named the pending compilation");
    assert!(
        waited > Duration::from_millis(500),
        "the compile took {waited:?}: not a test of waiting"
    );
    assert!(polls > 100, "{polls} polls");
    assert!(metric(&b, "wasmwiz_compilations_pending").await == 0.0);
}

#[tokio::test]
async fn a_redeployed_route_keeps_its_previous_version_on_a_node_compiling_the_new_one() {
    let env = ServeEnv::postgres();
    let key = env.tenant("acme", "pro", false);
    env.grant("acme", &["/heavy", "/app"]);
    let a = env.serve();
    let env_b = env.other_node();
    let b = env_b.serve();
    let on_a = Api::new(&a, &key);
    let on_b = Api::new(&b, &key);
    let first = on_a.deploy_component("hello", "/app").await;
    let id = first["id"].as_str().unwrap();
    until_state(&on_b, id, "serving", Duration::from_secs(10)).await;
    assert_eq!(get(b.url("/app")).await, (200, "Hello, world!\n".to_string()));

    let second = on_a.deploy_component("heavy", "/app").await;
    assert_eq!(second["version"], 2);
    let compiling = until_state(&on_b, id, "compiling", Duration::from_secs(10)).await;
    assert_eq!(compiling["status"]["serving_version"], 1, "{compiling}");
    // Meanwhile b answers with version 1, at once.
    let started = Instant::now();
    assert_eq!(get(b.url("/app")).await, (200, "Hello, world!\n".to_string()));
    assert!(started.elapsed() < Duration::from_millis(500), "the request waited");
    until_state(&on_b, id, "serving", Duration::from_secs(30)).await;
    let (status, body) = get(b.url("/app")).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("heavy "), "{body}");
}

#[tokio::test]
async fn a_component_that_fails_to_compile_on_a_node_is_retried_with_back_off_and_shown() {
    let env = ServeEnv::postgres();
    let key = env.tenant("acme", "pro", false);
    env.grant("acme", &["/heavy", "/app"]);
    let a = env.serve();
    // Node b cannot compile the heavy component within its time limit.
    let mut env_b = env.other_node();
    env_b.set("COMPILE_TIMEOUT", "200ms");
    let b = env_b.serve();
    let on_a = Api::new(&a, &key);
    let on_b = Api::new(&b, &key);

    let deployment = on_a.deploy_component("heavy", "/heavy").await;
    let id = deployment["id"].as_str().unwrap();
    let failed = until_state(&on_b, id, "failed", Duration::from_secs(10)).await;
    let status = &failed["status"];
    assert!(status["error"].as_str().unwrap().contains("took longer than"), "{failed}");
    assert_eq!(status["attempts"], 1, "{failed}");
    assert!(status["retry_in_s"].as_u64().unwrap() <= 2, "{failed}");
    assert_eq!(get(b.url("/ready")).await.0, 200, "a failure does not take b out of service");

    // Its route answers 503 with Retry-After on b, and 200 on a.
    let response = client().get(b.url("/heavy")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "deployment_unavailable", "{body}");
    assert_eq!(get(a.url("/heavy")).await.0, 200);

    // Rebuilds of the route table (ten deployments through a) do not try
    // again; the back-off does: a second attempt 2 s after the first (which
    // a slow machine may reach during the ten), a third 4 s after that.
    for i in 0..10 {
        on_a.deploy_component("hello", &format!("/acme/other{i}")).await;
    }
    let attempts = || b.logs().matches("cannot compile a deployed component").count();
    assert!(attempts() <= 2, "{} attempts for ten rebuilds:\n{}", attempts(), b.logs());
    b.logged("cannot compile a deployed component", 2, Duration::from_secs(10)).await;
    let shown = eventually("the second attempt shown", Duration::from_secs(5), || async {
        let attempts = deployment_on(&on_b, id).await.unwrap()["status"]["attempts"].as_u64();
        attempts.filter(|n| *n >= 2)
    })
    .await;
    assert!(metric(&b, "wasmwiz_compile_failures_total").await >= shown as f64);
}

#[tokio::test]
async fn one_tenant_cannot_take_the_instance_pool_from_another() {
    let mut env = ServeEnv::sqlite();
    env.set("INSTANCE_POOL_SIZE", "8").set("EXECUTION_TIMEOUT", "3");
    env.admin(&[
        "tier",
        "set",
        "unlimited",
        "--per-minute",
        "unlimited",
        "--per-day",
        "unlimited",
        "--max-concurrency",
        "unlimited",
    ]);
    let noisy = env.tenant("noisy", "unlimited", false);
    let quiet = env.tenant("quiet", "unlimited", false);
    let server = env.serve();
    Api::new(&server, &noisy).deploy_component("hostile", "/noisy/...").await;
    Api::new(&server, &quiet).deploy_component("hello", "/quiet/...").await;

    // 24 requests of the noisy tenant that sleep past the timeout.
    let slow: Vec<_> =
        (0..24).map(|_| tokio::spawn(get(server.url("/noisy/sleep?ms=60000")))).collect();
    // Those past its share are refused at once; the rest hold the pool.
    server.logged("status=503", 18, Duration::from_secs(10)).await;
    assert_eq!(metric(&server, "wasmwiz_instances_in_use").await, 6.0);

    // The quiet tenant's requests, one after another, all get in.
    for i in 0..10 {
        let (status, body) = get(server.url("/quiet")).await;
        assert_eq!((status, body.as_str()), (200, "Hello, world!\n"), "request {i}");
    }

    let mut statuses = Vec::new();
    for request in slow {
        let (status, body) = request.await.unwrap();
        if status == 503 {
            assert!(body.contains("fair_share_exceeded"), "{body}");
        }
        statuses.push(status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [[503; 18].as_slice(), &[504; 6]].concat());
    let refused = "wasmwiz_concurrency_rejections_total{reason=\"fair_share\",tenant=\"noisy\"}";
    assert_eq!(metric(&server, refused).await, 18.0);
}

#[tokio::test]
async fn a_tenant_over_its_tiers_concurrency_cap_gets_429() {
    let env = ServeEnv::sqlite();
    env.admin(&["tier", "set", "capped", "--per-minute", "1000", "--max-concurrency", "2"]);
    let key = env.tenant("acme", "capped", false);
    env.grant("acme", &["/h/..."]);
    let server = env.serve();
    Api::new(&server, &key).deploy_component("hostile", "/h/...").await;
    let slow: Vec<_> = (0..2).map(|_| tokio::spawn(get(server.url("/h/sleep?ms=1500")))).collect();
    eventually("the two slow requests running", Duration::from_secs(5), || async {
        (metric(&server, "wasmwiz_instances_in_use").await >= 2.0).then_some(())
    })
    .await;
    let response = client().get(server.url("/h/ok")).send().await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "concurrency_limit", "{body}");
    for request in slow {
        assert_eq!(request.await.unwrap().0, 200);
    }
    assert_eq!(get(server.url("/h/ok")).await.0, 200, "room again once they ended");
    let refused = "wasmwiz_concurrency_rejections_total{reason=\"tenant_cap\",tenant=\"acme\"}";
    assert_eq!(metric(&server, refused).await, 1.0);

    // The cap is part of the tier, through the API too.
    let admin = env.tenant("root", "pro", true);
    let api = Api::new(&server, &admin);
    let (status, tier) = api
        .call(
            api.request(Method::PUT, "/api/v1/tiers/capped")
                .json(&json!({"max_concurrency": null})),
        )
        .await;
    assert_eq!(status, 200, "{tier}");
    assert_eq!(tier["max_concurrency"], Value::Null);
    let (status, tier) = api
        .call(api.request(Method::PUT, "/api/v1/tiers/capped").json(&json!({"max_concurrency": 0})))
        .await;
    assert_eq!(status, 400, "{tier}");
    let (_, tiers) = api.call(api.request(Method::GET, "/api/v1/tiers")).await;
    let pro = tiers.as_array().unwrap().iter().find(|t| t["name"] == "pro").unwrap();
    assert_eq!(pro["max_concurrency"], 100, "the documented default: {pro}");
}
