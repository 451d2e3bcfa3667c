//! WASIp3 handlers (`wasi:http/service@0.3`) beside WASIp2 ones: uploaded,
//! named by their world, served on a fresh instance per request with the
//! same limits, usage and logs, on both stores.

use std::time::Duration;

use crate::helpers::{Api, ServeEnv, component};

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
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, usage) = api.call(api.request(reqwest::Method::GET, "/api/v1/usage")).await;
        assert_eq!(status, 200);
        if usage["today"]["invocations"] == 32 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never 32 invocations: {usage}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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
    async fn a_wasip3_component_is_named_by_its_world_served_counted_and_logged() {
        super::a_wasip3_component_is_named_by_its_world_served_counted_and_logged(
            crate::helpers::ServeEnv::sqlite(),
        )
        .await;
    }
}

mod postgres {
    #[tokio::test]
    async fn a_wasip3_component_is_named_by_its_world_served_counted_and_logged() {
        super::a_wasip3_component_is_named_by_its_world_served_counted_and_logged(
            crate::helpers::ServeEnv::postgres(),
        )
        .await;
    }
}
