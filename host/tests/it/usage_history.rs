//! `GET /api/v1/usage/history`: a tenant's invocations, errors by kind and
//! guest time per minute and per day, summed across nodes.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{Api, ServeEnv, Server, client, eventually, shared_redis_url, unique_prefix};

async fn get(server: &Server, path: &str) -> u16 {
    client().get(server.url(path)).send().await.unwrap().status().as_u16()
}

fn sum(history: &Value, field: &str) -> u64 {
    history["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let value = field.split('.').fold(p, |v, k| &v[k]);
            value.as_u64().unwrap()
        })
        .sum()
}

/// The history once every node has written what it counted (each flushes
/// every 5 s).
async fn history_with(api: &Api, query: &str, invocations: u64) -> Value {
    let what = format!("{invocations} invocations in the history");
    eventually(&what, Duration::from_secs(20), || async {
        let (status, body) = api
            .call(api.request(reqwest::Method::GET, &format!("/api/v1/usage/history{query}")))
            .await;
        assert_eq!(status, 200, "{body}");
        if sum(&body, "invocations") == invocations { Ok(body) } else { Err(format!("{body:#}")) }
    })
    .await
}

#[tokio::test]
async fn usage_history_adds_up_every_nodes_invocations_per_minute_and_per_day() {
    let mut env = ServeEnv::postgres();
    env.set("REDIS_URL", &shared_redis_url()).set("REDIS_KEY_PREFIX", &unique_prefix());
    let key = env.tenant("acme", "pro", false);
    let other = env.tenant("bravo", "pro", false);
    let a = env.serve();
    let api = Api::new(&a, &key);
    api.deploy_component("hostile", "/acme/h/...").await;
    Api::new(&a, &other).deploy_component("hostile", "/bravo/h/...").await;
    let b = env.other_node().serve();
    for _ in 0..6 {
        assert_eq!(get(&a, "/acme/h/ok").await, 200);
    }
    assert_eq!(get(&a, "/acme/h/trap").await, 500);
    for _ in 0..5 {
        assert_eq!(get(&b, "/acme/h/ok").await, 200);
    }
    assert_eq!(get(&b, "/bravo/h/ok").await, 200, "another tenant's");

    let minutes = history_with(&api, "", 12).await;
    assert_eq!(minutes["period"], "minute");
    assert_eq!(minutes["points"].as_array().unwrap().len(), 60, "the last hour");
    assert_eq!(minutes["quota"], 500, "pro's per-minute quota");
    assert_eq!(sum(&minutes, "errors.trap"), 1);
    let points = minutes["points"].as_array().unwrap();
    assert!(points.windows(2).all(|w| w[0]["start"].as_str() < w[1]["start"].as_str()));
    assert!(points.last().unwrap()["start"].as_str().unwrap().ends_with(":00Z"));

    let days = history_with(&api, "?period=day", 12).await;
    assert_eq!(days["points"].as_array().unwrap().len(), 30, "the last 30 days");
    assert_eq!(days["quota"], 50_000, "pro's per-day quota");
    assert_eq!(days["points"][29]["invocations"], 12, "today: {days:#}");
    assert!(days["points"][29]["wall_ms"].as_u64().is_some());

    let bravo = history_with(&Api::new(&b, &other), "?count=5", 1).await;
    assert_eq!(bravo["points"].as_array().unwrap().len(), 5);
    for bad in ["?period=week", "?count=0", "?count=99999"] {
        let (status, body) = api
            .call(api.request(reqwest::Method::GET, &format!("/api/v1/usage/history{bad}")))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}
