//! Canary rollouts: the split on every node, steps, promotion, rollback, a
//! failing canary stopped by itself on every node, and version pinning.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Api, ServeEnv, Server, client, eventually, metric, on_both_stores};

on_both_stores!(a_canary_is_pinned_sticky_promoted_and_rolled_back_as_asked);

/// A tier with no request quota: these tests send thousands of requests.
fn unlimited(env: &ServeEnv) {
    env.admin(&["tier", "set", "bulk", "--per-minute", "unlimited", "--per-day", "unlimited"]);
}

/// Deploys `config-greeting` on `route` greeting `name`, with `extra` merged
/// into the request; the status and the deployment.
async fn greet(api: &Api, digest: &str, route: &str, name: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({ "route": route, "component": digest, "config": { "name": name } });
    body.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    api.deploy(body).await
}

/// `GET path` on `server` with `headers`: status and body.
async fn get(server: &Server, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = client().get(server.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the request reaches the server");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Sends `n` requests for `path` to `server`, 16 at a time; how many
/// answers were each of `Hello, canary!` and `Hello, stable!` (anything
/// else fails the test).
async fn split_of(server: &Server, path: &str, n: usize) -> (usize, usize) {
    use futures::StreamExt as _;
    let answers: Vec<(u16, String)> = futures::stream::iter(0..n)
        .map(|_| get(server, path, &[]))
        .buffer_unordered(16)
        .collect()
        .await;
    let canary = answers.iter().filter(|a| *a == &(200, "Hello, canary!\n".to_string())).count();
    let stable = answers.iter().filter(|a| *a == &(200, "Hello, stable!\n".to_string())).count();
    assert_eq!(canary + stable, n, "every answer is one side's: {:?}", &answers[..3]);
    (canary, stable)
}

async fn deployment(api: &Api, id: &str) -> Value {
    let (status, list) = api.call(api.request(Method::GET, "/api/v1/deployments")).await;
    assert_eq!(status, 200);
    list.as_array().unwrap().iter().find(|d| d["id"] == id).cloned().expect("the deployment")
}

async fn rollouts(api: &Api, id: &str) -> Vec<Value> {
    let (status, list) =
        api.call(api.request(Method::GET, &format!("/api/v1/deployments/{id}/rollouts"))).await;
    assert_eq!(status, 200, "{list}");
    list.as_array().unwrap().clone()
}

/// The share, pinning, stickiness, promotion and rollback, on one node of
/// either store.
async fn a_canary_is_pinned_sticky_promoted_and_rolled_back_as_asked(env: ServeEnv) {
    unlimited(&env);
    let key = env.tenant("acme", "bulk", false);
    let server = env.serve();
    let api = Api::new(&server, &key);
    let digest = api.upload_component("config_greeting").await;

    // A rollout needs a live version to split with.
    let (status, body) =
        greet(&api, &digest, "/acme/g", "canary", json!({ "rollout": { "percent": 10 } })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("no_live_version")), "{body}");
    let (status, v1) = greet(&api, &digest, "/acme/g", "stable", json!({})).await;
    assert_eq!(status, 201, "{v1}");
    let id = v1["id"].as_str().unwrap().to_string();
    // What cannot be a rollout is refused, saying why, and changes nothing.
    for (rollout, why) in [
        (json!({ "percent": 100 }), "0 to 99"),
        (json!({ "steps": [50, 10], "interval_s": 1 }), "grow"),
        (json!({ "percent": 5, "sticky_header": "wasmwiz-version" }), "platform's"),
    ] {
        let (status, body) =
            greet(&api, &digest, "/acme/g", "canary", json!({ "rollout": rollout })).await;
        assert_eq!(status, 400, "{rollout}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(why), "{body}");
    }
    assert_eq!(get(&server, "/acme/g", &[]).await, (200, "Hello, stable!\n".into()));

    // A canary at 0% is reached only by a request that pins it.
    let (status, v2) = greet(
        &api,
        &digest,
        "/acme/g",
        "canary",
        json!({ "rollout": { "percent": 0 }, "version_pinning": true }),
    )
    .await;
    assert_eq!(status, 201, "{v2}");
    assert_eq!((v2["version"].as_i64(), v2["rollout"]["version"].as_i64()), (Some(1), Some(2)));
    assert_eq!(split_of(&server, "/acme/g", 50).await, (0, 50));
    let server_ref = &server;
    let pinned = |version: &'static str| async move {
        get(server_ref, "/acme/g", &[("wasmwiz-version", version)]).await
    };
    assert_eq!(pinned("2").await, (200, "Hello, canary!\n".into()));
    assert_eq!(pinned("1").await, (200, "Hello, stable!\n".into()));
    let (status, body) = pinned("7").await;
    assert_eq!(status, 404);
    assert!(body.contains("version_not_served"), "{body}");
    assert_eq!(pinned("two").await.0, 400);

    // Rollback ends the rollout: the live version stays, the canary is
    // reached no more, and the versions API says why.
    let (status, d) =
        api.call(api.request(Method::POST, &format!("/api/v1/deployments/{id}/rollback"))).await;
    assert_eq!((status, d["version"].as_i64()), (200, Some(1)), "{d}");
    assert!(d.get("rollout").is_none(), "{d}");
    assert_eq!(pinned("2").await.0, 404);
    let (_, versions) =
        api.call(api.request(Method::GET, &format!("/api/v1/deployments/{id}/versions"))).await;
    let v2_record = versions.as_array().unwrap().iter().find(|v| v["version"] == 2).unwrap();
    assert_eq!(v2_record["rollout"]["state"], "rolled_back", "{versions}");
    assert_eq!(v2_record["live"], false);

    // A sticky rollout keeps each client on one side; about 30% of the
    // clients get the canary.
    let (status, v3) = greet(
        &api,
        &digest,
        "/acme/g",
        "canary",
        json!({ "rollout": { "percent": 30, "sticky_header": "X-Session" },
                "version_pinning": true }),
    )
    .await;
    assert_eq!((status, v3["rollout"]["version"].as_i64()), (201, Some(3)), "{v3}");
    let mut on_canary = 0;
    for session in 0..200 {
        let session = format!("session-{session}");
        let first = get(&server, "/acme/g", &[("x-session", &session)]).await;
        for _ in 0..3 {
            assert_eq!(get(&server, "/acme/g", &[("x-session", &session)]).await, first);
        }
        on_canary += usize::from(first.1 == "Hello, canary!\n");
    }
    assert!((30..=90).contains(&on_canary), "{on_canary} of 200 clients on a 30% canary");
    // Without the header, split per request: 30 of every 100.
    assert_eq!(split_of(&server, "/acme/g", 200).await, (60, 140));

    // Promotion makes the canary live at once.
    let (status, d) =
        api.call(api.request(Method::POST, &format!("/api/v1/deployments/{id}/promote"))).await;
    assert_eq!((status, d["version"].as_i64()), (200, Some(3)), "{d}");
    assert_eq!(split_of(&server, "/acme/g", 50).await, (50, 0));
    let (status, body) =
        api.call(api.request(Method::POST, &format!("/api/v1/deployments/{id}/promote"))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("no_rollout")), "{body}");
    let history = rollouts(&api, &id).await;
    let states: Vec<&str> = history.iter().map(|r| r["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["promoted", "rolled_back"], "newest first: {history:?}");

    // A deployment that does not allow pinning refuses a pinned request.
    let (status, _) = greet(&api, &digest, "/acme/g", "plain", json!({})).await;
    assert_eq!(status, 201);
    let (status, body) = pinned("4").await;
    assert_eq!(status, 400);
    assert!(body.contains("version_pinning_off"), "{body}");
    assert_eq!(get(&server, "/acme/g", &[]).await, (200, "Hello, plain!\n".into()));
}

/// The split is the same on every node: 10% of 10,000 requests on each of
/// two nodes go to the canary, and a pinned request reaches the version it
/// names on either.
#[tokio::test]
async fn a_ten_percent_canary_gets_ten_percent_of_requests_on_each_of_two_nodes() {
    let env = ServeEnv::postgres();
    unlimited(&env);
    let key = env.tenant("acme", "bulk", false);
    let a = env.serve();
    let b = env.other_node().serve();
    let on_a = Api::new(&a, &key);
    let digest = on_a.upload_component("config_greeting").await;
    let (status, _) = greet(&on_a, &digest, "/acme/split", "stable", json!({})).await;
    assert_eq!(status, 201);
    let (status, d) = greet(
        &on_a,
        &digest,
        "/acme/split",
        "canary",
        json!({ "rollout": { "percent": 10 }, "version_pinning": true }),
    )
    .await;
    assert_eq!(status, 201, "{d}");
    for (name, node) in [("A", &a), ("B", &b)] {
        // Node B hears of the rollout as of any change; wait for it.
        eventually(&format!("node {name} serving the canary"), Duration::from_secs(10), || async {
            (get(node, "/acme/split", &[("wasmwiz-version", "2")]).await.1 == "Hello, canary!\n")
                .then_some(())
        })
        .await;
        let (canary, stable) = split_of(node, "/acme/split", 10_000).await;
        assert!(
            (800..=1_200).contains(&canary),
            "node {name}: {canary} of 10,000 requests reached the 10% canary ({stable} the stable)"
        );
        assert_eq!(
            get(node, "/acme/split", &[("wasmwiz-version", "1")]).await,
            (200, "Hello, stable!\n".into())
        );
    }
    let counted = metric(
        &a,
        r#"wasmwiz_rollout_requests_total{result="ok",route="/acme/split",side="canary",tenant="acme"}"#,
    )
    .await
    .expect("the metric");
    assert!(counted >= 800.0, "{counted}");
}

/// A canary that fails every request is stopped by itself on both nodes,
/// within 2 s of the first node seeing its minimum of requests, and no
/// request reaches it after that; the reason is in the rollout's record,
/// the tenant's log and a metric.
#[tokio::test]
async fn a_failing_canary_is_stopped_on_every_node_and_reached_no_more() {
    let env = ServeEnv::postgres();
    unlimited(&env);
    let key = env.tenant("acme", "bulk", false);
    let a = env.serve();
    let b = env.other_node().serve();
    let on_a = Api::new(&a, &key);
    let on_b = Api::new(&b, &key);
    let stable = on_a.upload_component("config_greeting").await;
    let (status, v1) = greet(&on_a, &stable, "/acme/t/...", "stable", json!({})).await;
    assert_eq!(status, 201);
    let id = v1["id"].as_str().unwrap().to_string();
    let hostile = on_a.upload_component("hostile").await;
    let (status, d) = on_a
        .deploy(json!({
            "route": "/acme/t/...", "component": hostile,
            "rollout": { "percent": 50, "min_requests": 40 },
            "version_pinning": true,
        }))
        .await;
    assert_eq!(status, 201, "{d}");
    // Both nodes serve the split (the canary compiled) before traffic
    // starts: each then shows its own tallies.
    for (name, api) in [("A", &on_a), ("B", &on_b)] {
        eventually(&format!("node {name} serving the canary"), Duration::from_secs(20), || async {
            deployment(api, &id).await["rollout"]["on_this_node"].is_object().then_some(())
        })
        .await;
    }

    // One request at a time: node A gets five for each of node B's until A
    // has seen the canary's 40, then both in turn, ten rounds a second,
    // for 3 s: B, which sends the canary at most 8 + 15 of the 40 it needs
    // to judge it, can only stop it by hearing from A. Every answer's time
    // is noted.
    let started = Instant::now();
    let mut answers: [Vec<(Duration, u16)>; 2] = [Vec::new(), Vec::new()];
    let mut minimum_at: Option<Duration> = None;
    let mut round = 0;
    while minimum_at.is_none_or(|at| started.elapsed() < at + Duration::from_secs(3)) {
        assert!(started.elapsed() < Duration::from_secs(30), "the run does not end");
        round += 1;
        for (i, node) in [&a, &b].into_iter().enumerate() {
            if i == 1 && minimum_at.is_none() && round % 5 != 0 {
                continue;
            }
            let (status, _) = get(node, "/acme/t/trap", &[]).await;
            answers[i].push((started.elapsed(), status));
            let failures = answers[i].iter().filter(|(_, s)| *s == 500).count();
            if failures >= 40 && minimum_at.is_none() {
                minimum_at = Some(started.elapsed());
            }
        }
        if minimum_at.is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let minimum_at = minimum_at.unwrap();
    for (i, name) in ["A", "B"].into_iter().enumerate() {
        let last_failure = answers[i].iter().filter(|(_, s)| *s == 500).map(|(t, _)| *t).max();
        let last_failure = last_failure.expect("the canary got requests on both nodes");
        assert!(
            last_failure <= minimum_at + Duration::from_secs(2),
            "node {name} still sent the canary requests {:?} after the minimum was reached",
            last_failure - minimum_at
        );
        let after: Vec<u16> =
            answers[i].iter().filter(|(t, _)| *t > last_failure).map(|(_, s)| *s).collect();
        assert!(after.len() >= 5, "node {name}: {} requests after the stop", after.len());
        assert!(after.iter().all(|s| *s == 200), "node {name} after the stop: {after:?}");
        assert!(
            answers[i].iter().all(|(_, s)| *s == 200 || *s == 500),
            "node {name}: {:?}",
            answers[i]
        );
    }

    // The record says why, on either node's API; the live version is
    // still version 1 and the deployment shows no rollout.
    let history = rollouts(&on_b, &id).await;
    assert_eq!(history[0]["state"], "stopped", "{history:?}");
    let reason = history[0]["reason"].as_str().unwrap();
    assert!(reason.contains("the canary failed") && reason.contains("(100.0%)"), "{reason}");
    let now = deployment(&on_b, &id).await;
    assert_eq!((now["version"].as_i64(), now.get("rollout")), (Some(1), None), "{now}");
    // A pinned request cannot reach a stopped canary either.
    assert_eq!(get(&a, "/acme/t/ok", &[("wasmwiz-version", "2")]).await.0, 404);
    let series = r#"wasmwiz_rollouts_stopped_total{route="/acme/t/...",tenant="acme"}"#;
    let stopped_by = (metric(&a, series).await, metric(&b, series).await.unwrap_or(0.0));
    assert_eq!(stopped_by, (Some(1.0), 0.0), "node A judged it; B heard of it");
    let (status, logs) = on_a.call(on_a.request(Method::GET, "/api/v1/logs?limit=1000")).await;
    assert_eq!(status, 200);
    let events = logs["events"].as_array().cloned().unwrap_or_default();
    assert!(
        events.iter().any(|e| e["kind"] == "rollout"
            && e["message"].as_str().is_some_and(|m| m.contains("stopped on node"))),
        "no rollout event in the tenant's log: {logs}"
    );
}

/// Steps advance by themselves while the canary is healthy; the last, 100,
/// promotes it.
#[tokio::test]
async fn the_steps_of_a_healthy_canary_advance_to_its_promotion() {
    let env = ServeEnv::postgres();
    let key = env.tenant("acme", "pro", false);
    let a = env.serve();
    let b = env.other_node().serve();
    let on_a = Api::new(&a, &key);
    let on_b = Api::new(&b, &key);
    let digest = on_a.upload_component("config_greeting").await;
    let (status, v1) = greet(&on_a, &digest, "/acme/steps", "stable", json!({})).await;
    assert_eq!(status, 201);
    let id = v1["id"].as_str().unwrap().to_string();
    let (status, d) = greet(
        &on_a,
        &digest,
        "/acme/steps",
        "canary",
        json!({ "rollout": { "steps": [20, 60, 100], "interval_s": 1 } }),
    )
    .await;
    assert_eq!((status, d["rollout"]["percent"].as_u64()), (201, Some(20)), "{d}");
    assert!(d["rollout"]["next_step_at"].is_string(), "{d}");
    // Each step is seen through the other node's API, in order.
    let seen = std::sync::Mutex::new(Vec::new());
    let (on_b_ref, id_ref, seen_ref) = (&on_b, &id, &seen);
    eventually("the canary promoted by its last step", Duration::from_secs(15), || async move {
        let now = deployment(on_b_ref, id_ref).await;
        let share = match now.get("rollout") {
            Some(rollout) => rollout["percent"].as_u64().unwrap(),
            None => 100,
        };
        let mut seen = seen_ref.lock().unwrap();
        if seen.last() != Some(&share) {
            seen.push(share);
        }
        (now["version"] == 2 && now.get("rollout").is_none()).then_some(())
    })
    .await;
    let seen = seen.into_inner().unwrap();
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "shares seen in order: {seen:?}");
    assert!(seen.contains(&60), "the middle step was taken: {seen:?}");
    let history = rollouts(&on_a, &id).await;
    assert_eq!(history[0]["state"], "promoted", "{history:?}");
    assert!(history[0]["reason"].as_str().unwrap().contains("last of its steps"), "{history:?}");
    for node in [&a, &b] {
        assert_eq!(get(node, "/acme/steps", &[]).await, (200, "Hello, canary!\n".into()));
    }
    let (_, versions) =
        on_a.call(on_a.request(Method::GET, &format!("/api/v1/deployments/{id}/versions"))).await;
    let v2 = versions.as_array().unwrap().iter().find(|v| v["version"] == 2).unwrap();
    assert_eq!(v2["live_periods"][0]["reason"], "promote", "{versions}");
}
