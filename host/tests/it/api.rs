//! `wasmwiz serve` and API v1, every row of README.md's API table, on both
//! stores: each test is an `async fn(ServeEnv)` run once on SQLite and
//! once on a fresh PostgreSQL database.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Api, ServeEnv, component, eventually, on_both_stores};

on_both_stores!(
    uploads_are_validated_compiled_and_deduplicated,
    an_upload_over_the_size_limit_gets_413,
    components_are_listed_and_deleted_unless_deployed,
    deployments_version_roll_back_and_delete,
    routes_are_owned_by_one_tenant,
    tenants_are_managed_by_admins_only,
    keys_are_scoped_listed_without_secrets_and_revoked_at_once,
    tiers_are_listed_by_anyone_and_set_by_admins,
    requests_without_a_valid_key_get_401,
    health_ready_and_docs_answer_without_a_key,
    every_documented_operation_exists_and_nothing_else,
    a_restart_serves_every_deployment_without_recompiling,
    eight_clients_see_only_200_while_a_route_is_redeployed,
    the_cli_client_deploys_lists_and_rolls_back,
);

/// Starts a server with an admin tenant `ops` and a tenant `acme`.
fn setup(env: &ServeEnv) -> (crate::helpers::Server, Api, Api) {
    let admin_key = env.tenant("ops", "pro", true);
    let tenant_key = env.tenant("acme", "pro", false);
    env.grant("acme", &["/hello", "/app/...", "/shop/...", "/echo/..."]);
    let server = env.serve();
    let admin = Api::new(&server, &admin_key);
    let acme = Api::new(&server, &tenant_key);
    (server, admin, acme)
}

fn code(body: &serde_json::Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

async fn uploads_are_validated_compiled_and_deduplicated(env: ServeEnv) {
    let (_server, _admin, acme) = setup(&env);
    let hello = std::fs::read(component("hello")).unwrap();

    let (status, first) = acme.upload("hello", hello.clone()).await;
    assert_eq!(status, 201, "{first}");
    let digest = first["digest"].as_str().unwrap();
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "{digest}");
    assert_eq!(first["name"], "hello");
    assert_eq!(first["size"], hello.len());
    assert!(first["world"].as_str().unwrap().starts_with("wasi:http/proxy"));
    assert!(first["compile_ms"].as_u64().unwrap() > 0, "compile time reported: {first}");

    let (status, again) = acme.upload("hello", hello).await;
    assert_eq!(status, 200, "the same bytes again: {again}");
    assert_eq!(again["digest"], first["digest"]);

    let (status, body) = acme.upload("text", b"this is not wasm".to_vec()).await;
    assert_eq!((status, code(&body)), (400, "not_wasm"), "{body}");

    let (status, body) = acme.upload("core", b"\0asm\x01\0\0\0".to_vec()).await;
    assert_eq!((status, code(&body)), (422, "core_module"), "{body}");

    let (status, body) = acme.upload("cli", std::fs::read(component("not-http")).unwrap()).await;
    assert_eq!((status, code(&body)), (422, "not_http_handler"), "{body}");

    let (status, body) =
        acme.upload("vault", std::fs::read(component("bad_import")).unwrap()).await;
    assert_eq!((status, code(&body)), (422, "unsupported_import"), "{body}");
    assert_eq!(body["error"]["import"], "acme:vault/secrets@1.0.0");
    assert!(body["error"]["message"].as_str().unwrap().contains("acme:vault/secrets@1.0.0"));
}

async fn an_upload_over_the_size_limit_gets_413(mut env: ServeEnv) {
    env.set("PRO_TIER_MAX_WASM_SIZE", "50000");
    let (_server, _admin, acme) = setup(&env);
    let hello = std::fs::read(component("hello")).unwrap();
    assert!(hello.len() > 50_000);
    let (status, body) = acme.upload("hello", hello.clone()).await;
    assert_eq!((status, code(&body)), (413, "component_too_large"), "{body}");

    // Without a Content-Length the cap is enforced while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        hello.chunks(8192).map(|c| Ok(c.to_vec())).collect();
    let (status, body) = acme
        .call(
            acme.request(Method::POST, "/api/v1/components?name=hello")
                .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks))),
        )
        .await;
    assert_eq!((status, code(&body)), (413, "component_too_large"), "{body}");
}

async fn components_are_listed_and_deleted_unless_deployed(env: ServeEnv) {
    let (_server, admin, acme) = setup(&env);
    let hello = acme.upload_component("hello").await;
    let echo = acme.upload_component("echo").await;

    let (status, list) = acme.call(acme.request(Method::GET, "/api/v1/components")).await;
    assert_eq!(status, 200);
    let digests: Vec<&str> =
        list.as_array().unwrap().iter().map(|c| c["digest"].as_str().unwrap()).collect();
    assert_eq!(digests, vec![hello.as_str(), echo.as_str()]);

    // Another tenant sees none of them and cannot delete them.
    let (status, list) = admin.call(admin.request(Method::GET, "/api/v1/components")).await;
    assert_eq!((status, list), (200, json!([])));
    let (status, _) =
        admin.call(admin.request(Method::DELETE, &format!("/api/v1/components/{echo}"))).await;
    assert_eq!(status, 404);

    acme.deploy(json!({ "route": "/hello", "component": hello })).await;
    let (status, body) =
        acme.call(acme.request(Method::DELETE, &format!("/api/v1/components/{hello}"))).await;
    assert_eq!((status, code(&body)), (409, "component_in_use"), "{body}");

    let (status, _) =
        acme.call(acme.request(Method::DELETE, &format!("/api/v1/components/{echo}"))).await;
    assert_eq!(status, 204);
    let (status, _) =
        acme.call(acme.request(Method::DELETE, &format!("/api/v1/components/{echo}"))).await;
    assert_eq!(status, 404);
}

async fn deployments_version_roll_back_and_delete(env: ServeEnv) {
    let (server, _admin, acme) = setup(&env);
    let hello = acme.upload_component("hello").await;
    let echo = acme.upload_component("echo").await;

    let (status, v1) = acme
        .deploy(json!({ "route": "/app/...", "component": hello, "config": { "greeting": "hi" },
                        "secrets": { "token": "s3cret" } }))
        .await;
    assert_eq!(status, 201, "{v1}");
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["route"], "/app/...");
    assert_eq!(v1["host"], serde_json::Value::Null);
    assert_eq!(v1["component"], hello.as_str());
    assert!(v1["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v1["config"], json!({ "greeting": "hi" }));
    assert_eq!(v1["secrets"], json!(["token"]), "secrets by name only");
    let id = v1["id"].as_str().unwrap().to_string();
    let (status, text) = acme.get_text("/app/x").await;
    assert_eq!((status, text.as_str()), (200, "Hello, world!\n"));

    // The same route again: version 2, switched at once.
    let (status, v2) = acme.deploy(json!({ "route": "/app/...", "component": echo })).await;
    assert_eq!(status, 201, "{v2}");
    assert_eq!((v2["id"].as_str().unwrap(), v2["version"].as_i64()), (id.as_str(), Some(2)));
    let response = reqwest::get(server.url("/app/x")).await.unwrap();
    assert_eq!(response.headers()["x-echo-path"], "/app/x", "version 2 (echo) serves");

    let (status, list) = acme.call(acme.request(Method::GET, "/api/v1/deployments")).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["version"], 2);
    assert!(!list.to_string().contains("s3cret"), "a secret value leaked: {list}");

    let (status, back) =
        acme.call(acme.request(Method::POST, &format!("/api/v1/deployments/{id}/rollback"))).await;
    assert_eq!(status, 200, "{back}");
    assert_eq!(
        (back["version"].as_i64(), back["component"].as_str()),
        (Some(1), Some(hello.as_str()))
    );
    let (status, text) = acme.get_text("/app/x").await;
    assert_eq!((status, text.as_str()), (200, "Hello, world!\n"), "rolled back to hello");

    let (status, body) =
        acme.call(acme.request(Method::POST, &format!("/api/v1/deployments/{id}/rollback"))).await;
    assert_eq!((status, code(&body)), (409, "conflict"), "nothing before version 1: {body}");

    let (status, body) = acme.deploy(json!({ "route": "/metrics", "component": hello })).await;
    assert_eq!((status, code(&body)), (400, "invalid_route"), "{body}");
    let (status, body) = acme.deploy(json!({ "route": "no-slash", "component": hello })).await;
    assert_eq!((status, code(&body)), (400, "invalid_route"), "{body}");
    let missing = format!("sha256:{}", "0".repeat(64));
    let (status, body) = acme.deploy(json!({ "route": "/x", "component": missing })).await;
    assert_eq!(status, 400, "unknown component: {body}");
    let (status, _) =
        acme.deploy(json!({ "route": "/x", "component": hello, "surprise": 1 })).await;
    assert_eq!(status, 400, "unknown fields are refused");

    let (status, _) =
        acme.call(acme.request(Method::DELETE, &format!("/api/v1/deployments/{id}"))).await;
    assert_eq!(status, 204);
    let (status, _) = acme.get_text("/app/x").await;
    assert_eq!(status, 404, "a deleted route answers 404");
    let (status, _) =
        acme.call(acme.request(Method::DELETE, &format!("/api/v1/deployments/{id}"))).await;
    assert_eq!(status, 404);
    let (status, _) =
        acme.call(acme.request(Method::POST, "/api/v1/deployments/dep_nope/rollback")).await;
    assert_eq!(status, 404);
}

async fn routes_are_owned_by_one_tenant(env: ServeEnv) {
    let (server, admin, acme) = setup(&env);
    let other_key = env.tenant("globex", "free", false);
    let globex = Api::new(&server, &other_key);
    let deployment = acme.deploy_component("hello", "/shop/...").await;
    let digest = globex.upload_component("echo").await;

    // Inside acme's grant: not globex's to take.
    for route in ["/shop/...", "/shop", "/shop/cart", "/shop/cart/..."] {
        let (status, body) = globex.deploy(json!({ "route": route, "component": digest })).await;
        assert_eq!((status, code(&body)), (403, "route_not_granted"), "{route}: {body}");
    }
    // A sibling path and a host granted to globex are its own.
    env.grant("globex", &["/shopping", "globex.example"]);
    let (status, body) = globex.deploy(json!({ "route": "/shopping", "component": digest })).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = globex
        .deploy(json!({ "route": "/shop/...", "host": "globex.example", "component": digest }))
        .await;
    assert_eq!(status, 201, "{body}");
    let response = globex
        .request(Method::GET, "/shop/x")
        .header("host", "globex.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-echo-path"], "/shop/x", "the host route wins for its host");
    let (status, text) = acme.get_text("/shop/x").await;
    assert_eq!((status, text.as_str()), (200, "Hello, world!\n"));

    // Another tenant cannot roll back or delete acme's deployment.
    let id = deployment["id"].as_str().unwrap();
    let (status, _) =
        admin.call(admin.request(Method::DELETE, &format!("/api/v1/deployments/{id}"))).await;
    assert_eq!(status, 404);
    let (status, _) = globex
        .call(globex.request(Method::POST, &format!("/api/v1/deployments/{id}/rollback")))
        .await;
    assert_eq!(status, 404);
}

async fn tenants_are_managed_by_admins_only(env: ServeEnv) {
    let (_server, admin, acme) = setup(&env);
    let (status, body) = admin
        .call(
            admin
                .request(Method::POST, "/api/v1/tenants")
                .json(&json!({ "name": "initech", "tier": "basic" })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!((body["name"].as_str(), body["tier"].as_str()), (Some("initech"), Some("basic")));

    let (status, body) = admin
        .call(admin.request(Method::POST, "/api/v1/tenants").json(&json!({ "name": "initech" })))
        .await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");
    let (status, _) = admin
        .call(
            admin
                .request(Method::POST, "/api/v1/tenants")
                .json(&json!({ "name": "x", "tier": "gold" })),
        )
        .await;
    assert_eq!(status, 400, "unknown tier");
    let (status, _) = admin
        .call(admin.request(Method::POST, "/api/v1/tenants").json(&json!({ "name": "Bad Name" })))
        .await;
    assert_eq!(status, 400, "invalid name");
    let (status, body) = acme
        .call(acme.request(Method::POST, "/api/v1/tenants").json(&json!({ "name": "mine" })))
        .await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");

    let (status, body) = admin
        .call(
            admin.request(Method::PATCH, "/api/v1/tenants/initech").json(&json!({ "tier": "pro" })),
        )
        .await;
    assert_eq!((status, body["tier"].as_str()), (200, Some("pro")), "{body}");
    let (status, _) = admin
        .call(
            admin.request(Method::PATCH, "/api/v1/tenants/nobody").json(&json!({ "tier": "pro" })),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = acme
        .call(acme.request(Method::PATCH, "/api/v1/tenants/acme").json(&json!({ "tier": "pro" })))
        .await;
    assert_eq!(status, 403);
}

async fn keys_are_scoped_listed_without_secrets_and_revoked_at_once(env: ServeEnv) {
    let (server, admin, acme) = setup(&env);
    let (status, created) = acme.call(acme.request(Method::POST, "/api/v1/keys")).await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("ww_") && key.starts_with(created["prefix"].as_str().unwrap()));
    assert_eq!(created["scopes"], json!(["deploy", "read"]));
    assert_eq!(created["tenant"], "acme");

    let (status, list) = acme.call(acme.request(Method::GET, "/api/v1/keys")).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 2, "acme's two keys: {list}");
    assert!(!list.to_string().contains(&key[10..]), "the list shows a secret");
    // The key in use says when it was last used (written in the
    // background); the new one, never used, says null.
    eventually("the key in use marked as used", Duration::from_secs(5), || async {
        let (_, list) = acme.call(acme.request(Method::GET, "/api/v1/keys")).await;
        let keys = list.as_array().unwrap();
        let unused = keys.iter().find(|k| k["id"] == created["id"]).unwrap();
        assert!(unused["last_used_at"].is_null(), "{unused}");
        let used = keys.iter().find(|k| k["id"] != created["id"]).unwrap();
        if used["last_used_at"].is_string() { Ok(()) } else { Err(list.to_string()) }
    })
    .await;

    // A read-only key can read but not deploy, nor mint a stronger key.
    let (status, reader) = acme
        .call(acme.request(Method::POST, "/api/v1/keys").json(&json!({ "scopes": ["read"] })))
        .await;
    assert_eq!(status, 201);
    let reader = Api::new(&server, reader["key"].as_str().unwrap());
    let (status, _) = reader.call(reader.request(Method::GET, "/api/v1/deployments")).await;
    assert_eq!(status, 200);
    let (status, body) = reader.upload("hello", std::fs::read(component("hello")).unwrap()).await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
    let (status, _) = acme
        .call(acme.request(Method::POST, "/api/v1/keys").json(&json!({ "scopes": ["admin"] })))
        .await;
    assert_eq!(status, 403, "no escalation to admin");
    let (status, _) = acme
        .call(acme.request(Method::POST, "/api/v1/keys").json(&json!({ "tenant": "ops" })))
        .await;
    assert_eq!(status, 404, "no keys for other tenants");

    // Admins see every key and may mint one for any tenant.
    let (status, all) = admin.call(admin.request(Method::GET, "/api/v1/keys")).await;
    assert_eq!(status, 200);
    assert!(all.as_array().unwrap().len() >= 4, "{all}");
    let (status, body) = admin
        .call(admin.request(Method::POST, "/api/v1/keys").json(&json!({ "tenant": "acme" })))
        .await;
    assert_eq!((status, body["tenant"].as_str()), (201, Some("acme")));

    // Revocation: the key stops working on the next request.
    let fresh = Api::new(&server, &key);
    let (status, _) = fresh.call(fresh.request(Method::GET, "/api/v1/components")).await;
    assert_eq!(status, 200);
    let id = created["id"].as_str().unwrap();
    let (status, _) = admin.call(admin.request(Method::DELETE, "/api/v1/keys/key_nope")).await;
    assert_eq!(status, 404);
    let (status, _) = acme.call(acme.request(Method::DELETE, &format!("/api/v1/keys/{id}"))).await;
    assert_eq!(status, 204);
    let (status, body) = fresh.call(fresh.request(Method::GET, "/api/v1/components")).await;
    assert_eq!((status, code(&body)), (401, "unauthorized"), "a revoked key still works");
    let (status, list) = acme.call(acme.request(Method::GET, "/api/v1/keys")).await;
    assert_eq!(status, 200);
    let revoked = list.as_array().unwrap().iter().find(|k| k["id"] == id).unwrap();
    assert_eq!(revoked["revoked"], true);
}

async fn tiers_are_listed_by_anyone_and_set_by_admins(env: ServeEnv) {
    let (_server, admin, acme) = setup(&env);
    let (status, tiers) = acme.call(acme.request(Method::GET, "/api/v1/tiers")).await;
    assert_eq!(status, 200);
    let free = tiers.as_array().unwrap().iter().find(|t| t["name"] == "free").unwrap().clone();
    assert_eq!(
        (free["requests_per_minute"].as_u64(), free["requests_per_day"].as_u64()),
        (Some(10), Some(500))
    );
    let pro = tiers.as_array().unwrap().iter().find(|t| t["name"] == "pro").unwrap();
    assert_eq!(pro["requests_per_minute"], 500);
    assert_eq!(pro["memory_limit_bytes"], 134217728);

    let (status, body) = admin
        .call(admin.request(Method::PUT, "/api/v1/tiers/unlimited").json(&json!({
            "requests_per_minute": null, "requests_per_day": null, "execution_timeout_ms": 1000 })))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["requests_per_minute"], serde_json::Value::Null, "null is unlimited");
    assert_eq!(body["execution_timeout_ms"], 1000);
    assert_eq!(body["memory_limit_bytes"], 134217728, "missing fields take the default");

    let (status, body) = admin
        .call(
            admin
                .request(Method::PUT, "/api/v1/tiers/unlimited")
                .json(&json!({ "memory_limit_bytes": 67108864 })),
        )
        .await;
    assert_eq!(status, 200, "replaced: {body}");
    assert_eq!(body["requests_per_minute"], 10, "replaced whole: a missing rate takes the default");
    let (status, _) = admin
        .call(
            admin
                .request(Method::PUT, "/api/v1/tiers/tiny")
                .json(&json!({ "memory_limit_bytes": 10 })),
        )
        .await;
    assert_eq!(status, 400, "limits are checked");
    let (status, _) =
        acme.call(acme.request(Method::PUT, "/api/v1/tiers/mine").json(&json!({}))).await;
    assert_eq!(status, 403);
}

async fn requests_without_a_valid_key_get_401(env: ServeEnv) {
    let (server, _admin, acme) = setup(&env);
    let anonymous = Api::anonymous(&server);
    let (status, body) =
        anonymous.call(anonymous.request(Method::GET, "/api/v1/deployments")).await;
    assert_eq!((status, code(&body)), (401, "unauthorized"), "{body}");
    for bad in ["ww_short", "Bearer", "ww_0000000000000000000000000000000000000000"] {
        let api = Api::new(&server, bad);
        let (status, _) = api.call(api.request(Method::GET, "/api/v1/deployments")).await;
        assert_eq!(status, 401, "{bad}");
    }
    // Well-formed (valid checksum) but never issued.
    let unknown = Api::new(&server, &wasmwiz::auth::generate(b"another salt").key);
    let (status, _) = unknown.call(unknown.request(Method::GET, "/api/v1/deployments")).await;
    assert_eq!(status, 401);
    let (status, _) = acme.call(acme.request(Method::GET, "/api/v1/deployments")).await;
    assert_eq!(status, 200);
}

async fn health_ready_and_docs_answer_without_a_key(env: ServeEnv) {
    let (server, _admin, _acme) = setup(&env);
    let anonymous = Api::anonymous(&server);
    let (status, _) = anonymous.call(anonymous.request(Method::GET, "/health")).await;
    assert_eq!(status, 200);
    let (status, ready) = anonymous.call(anonymous.request(Method::GET, "/ready")).await;
    assert_eq!(status, 200);
    assert_eq!((ready["status"].as_str(), ready["store"].as_str()), (Some("ready"), Some("ok")));
    let (status, docs) = anonymous.call(anonymous.request(Method::GET, "/api/docs")).await;
    assert_eq!(status, 200);
    assert_eq!(docs["openapi"], "3.1.0");
    let (status, body) = anonymous.call(anonymous.request(Method::GET, "/api/v2/nothing")).await;
    assert_eq!((status, code(&body)), (404, "not_found"));
}

async fn every_documented_operation_exists_and_nothing_else(env: ServeEnv) {
    let (server, _admin, _acme) = setup(&env);
    let anonymous = Api::anonymous(&server);
    let docs: serde_json::Value = serde_json::from_str(wasmwiz::api::OPENAPI).unwrap();
    let methods = [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE];
    for (path, operations) in docs["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{digest}", &format!("sha256:{}", "a".repeat(64)))
            .replace("{id}", "dep_x")
            .replace("{name}", "free");
        for method in &methods {
            let documented = operations.get(method.as_str().to_lowercase()).is_some();
            let response = anonymous.request(method.clone(), &concrete).send().await.unwrap();
            let status = response.status().as_u16();
            if documented {
                assert!(
                    status != 404 && status != 405,
                    "{method} {path} is documented but the server answers {status}"
                );
            } else {
                assert!(
                    status == 405 || status == 404,
                    "{method} {path} is not documented but the server answers {status}"
                );
            }
        }
    }
}

async fn a_restart_serves_every_deployment_without_recompiling(env: ServeEnv) {
    let (server, _admin, acme) = setup(&env);
    acme.deploy_component("hello", "/hello").await;
    acme.deploy_component("echo", "/echo/...").await;
    assert_eq!(acme.get_text("/hello").await.0, 200);
    drop(server);

    let restarted = env.serve();
    restarted.wait_for_log("deployments loaded", Duration::from_secs(10));
    let logs = restarted.logs();
    assert!(
        logs.contains("(2 from the compiled-code cache, 0 to compile)"),
        "the restart recompiled:\n{logs}"
    );
    let api = Api::anonymous(&restarted);
    assert_eq!(api.get_text("/hello").await, (200, "Hello, world!\n".to_string()));
    assert_eq!(api.get_text("/echo/x").await.0, 200);
}

async fn eight_clients_see_only_200_while_a_route_is_redeployed(env: ServeEnv) {
    // A tenant without a request quota: the clients send thousands.
    env.admin(&["tier", "set", "unlimited", "--per-minute", "unlimited", "--per-day", "unlimited"]);
    let key = env.tenant("flipper", "unlimited", false);
    env.grant("flipper", &["/flip"]);
    let server = env.serve();
    let acme = Api::new(&server, &key);
    let hello = acme.upload_component("hello").await;
    let echo = acme.upload_component("echo").await;
    acme.deploy(json!({ "route": "/flip", "component": hello })).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = server.url("/flip");
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let stop = stop.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let client = crate::helpers::client();
                let mut statuses = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let status =
                        client.get(&url).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
                    statuses.push(status);
                }
                statuses
            })
        })
        .collect();
    let started = Instant::now();
    let mut deploys = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let component = if deploys % 2 == 0 { &echo } else { &hello };
        let (status, body) = acme.deploy(json!({ "route": "/flip", "component": component })).await;
        assert_eq!(status, 201, "{body}");
        deploys += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for client in clients {
        let statuses = client.await.unwrap();
        total += statuses.len();
        assert!(
            statuses.iter().all(|s| *s == 200),
            "non-200 answers during redeploys: {statuses:?}"
        );
    }
    assert!(deploys >= 5, "only {deploys} redeploys");
    assert!(total > 50, "only {total} requests");
}

async fn the_cli_client_deploys_lists_and_rolls_back(mut env: ServeEnv) {
    let (server, _admin, _acme) = setup(&env);
    let key = env.tenant("cli", "pro", false);
    env.set("WASMWIZ_URL", &server.url("")).set("WASMWIZ_API_KEY", &key);
    let hello = component("hello");
    let echo = component("echo");

    let (status, stdout, stderr) =
        env.command(&["deploy", hello.to_str().unwrap(), "--route", "/cli/..."]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains(&format!("invoke: {}", server.url("/cli"))), "{stdout}");
    assert_eq!(Api::anonymous(&server).get_text("/cli").await.1, "Hello, world!\n");

    let (status, stdout, _) = env.command(&[
        "deploy",
        echo.to_str().unwrap(),
        "--route",
        "/cli/...",
        "--max-instance-reuse",
        "4",
    ]);
    assert!(status.success());
    assert!(stdout.contains("version 2"), "{stdout}");
    let cli = Api::new(&server, &key);
    let (_, list) = cli.call(cli.request(Method::GET, "/api/v1/deployments")).await;
    assert_eq!(list[0]["max_instance_reuse"], 4, "{list}");

    let (status, stdout, _) = env.command(&["deployments"]);
    assert!(status.success());
    let line = stdout.lines().find(|l| l.contains("/cli/...")).expect("the deployment is listed");
    let id = line.split_whitespace().next().unwrap().to_string();
    assert!(id.starts_with("dep_"), "{line}");

    let (status, stdout, _) = env.command(&["rollback", &id]);
    assert!(status.success());
    assert!(stdout.contains("version 1"), "{stdout}");
    assert_eq!(Api::anonymous(&server).get_text("/cli").await.1, "Hello, world!\n");

    // Errors from the server are sentences.
    env.set("WASMWIZ_API_KEY", "ww_not-a-real-key");
    let (status, _, stderr) = env.command(&["deployments"]);
    assert!(!status.success());
    assert!(stderr.contains("the API key is not valid (HTTP 401)"), "{stderr}");
}

#[tokio::test]
async fn a_revoked_key_stops_working_on_another_node_within_a_second() {
    let env = ServeEnv::postgres();
    let (_server, admin, acme) = setup(&env);
    let other = env.other_node().serve();
    let (status, created) = acme.call(acme.request(Method::POST, "/api/v1/keys")).await;
    assert_eq!(status, 201);
    let on_other = Api::new(&other, created["key"].as_str().unwrap());
    let (status, _) = on_other.call(on_other.request(Method::GET, "/api/v1/components")).await;
    assert_eq!(status, 200, "the key works on the other node (and is cached there)");

    let id = created["id"].as_str().unwrap();
    let (status, _) =
        admin.call(admin.request(Method::DELETE, &format!("/api/v1/keys/{id}"))).await;
    assert_eq!(status, 204);
    eventually("the revoked key refused on the other node", Duration::from_secs(1), || async {
        let (status, _) = on_other.call(on_other.request(Method::GET, "/api/v1/components")).await;
        (status == 401).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_malformed_key_is_refused_without_asking_the_store() {
    let env = ServeEnv::postgres();
    let (server, _admin, _acme) = setup(&env);
    // Take the database away: the server can no longer ask it anything.
    let crate::helpers::Backend::Postgres(db) = &env.backend else { unreachable!() };
    db.drop_now();

    let malformed = Api::new(&server, "ww_this-is-not-a-key");
    let (status, _) = malformed.call(malformed.request(Method::GET, "/api/v1/components")).await;
    assert_eq!(status, 401, "refused on its form alone");
    let unknown = Api::new(&server, &wasmwiz::auth::generate(b"x").key);
    let (status, body) = unknown.call(unknown.request(Method::GET, "/api/v1/components")).await;
    assert_eq!(
        (status, code(&body)),
        (503, "store_unavailable"),
        "a well-formed key needs the store"
    );
}

#[test]
fn production_refuses_to_start_without_a_strong_api_salt() {
    let mut env = ServeEnv::sqlite();
    env.set("ENVIRONMENT", "production");
    env.set("API_SALT", "short");
    let (status, _, stderr) = env.command(&["serve", "--addr", "127.0.0.1:0"]);
    assert!(!status.success());
    assert!(stderr.contains("API_SALT"), "{stderr}");
    // Nor without the key that seals deployments' secrets at rest.
    env.set("API_SALT", "a-production-salt-of-at-least-32-characters");
    let (status, _, stderr) = env.command(&["serve", "--addr", "127.0.0.1:0"]);
    assert!(!status.success());
    assert!(stderr.contains("SECRETS_KEY must be set"), "{stderr}");
}

/// Whether `wasmwiz admin tier set`'s summary (`name value, name value`)
/// shows `item` as one of its entries.
fn shows(out: &str, item: &str) -> bool {
    out.split([',', '\n', ':']).any(|entry| entry.trim() == item)
}

#[test]
fn admin_commands_bootstrap_a_fresh_store() {
    for env in [ServeEnv::sqlite(), ServeEnv::postgres()] {
        let (status, stdout, stderr) = env.command(&["migrate"]);
        assert!(status.success(), "{stderr}");
        assert!(stdout.contains("migrations applied"));
        assert!(
            env.admin(&["tenant", "create", "t1", "--tier", "pro"]).contains("tenant t1 created")
        );
        let key = env.admin(&["key", "create", "t1", "--admin"]);
        assert_eq!(key.lines().count(), 1, "the key alone on a line: {key}");
        assert!(wasmwiz::auth::well_formed(key.trim()), "{key}");
        let out = env.admin(&[
            "tier",
            "set",
            "unlimited",
            "--per-minute",
            "unlimited",
            "--per-day",
            "unlimited",
        ]);
        assert!(out.contains("requests_per_minute unlimited, requests_per_day unlimited"), "{out}");
        let out = env.admin(&["tier", "set", "free", "--per-minute", "20"]);
        assert!(out.contains("requests_per_minute 20, requests_per_day 500"), "{out}");
        assert!(out.contains("max_instance_reuse 10000,"), "the default: {out}");
        assert!(shows(&out, "max_concurrency 100"), "{out}");
        let out = env.admin(&["tier", "set", "free", "--max-instance-reuse", "1"]);
        assert!(out.contains("minute 20") && out.contains("max_instance_reuse 1,"), "{out}");
        let out = env.admin(&["tier", "set", "free", "--max-concurrency", "unlimited"]);
        assert!(out.contains("max_instance_reuse 1,"), "the earlier change is kept: {out}");
        assert!(shows(&out, "max_concurrency unlimited"), "{out}");
        // Every limit has its flag, from the one description of the limits.
        let out = env.admin(&[
            "tier",
            "set",
            "free",
            "--memory",
            "64MiB",
            "--timeout",
            "2s",
            "--max-components",
            "7",
            "--max-versions",
            "3",
            "--kv-writes-per-second",
            "50",
        ]);
        for expected in [
            "memory_limit_bytes 67108864",
            "execution_timeout_ms 2000",
            "max_components 7",
            "max_versions_per_deployment 3",
            "kv_writes_per_second 50",
        ] {
            assert!(out.contains(expected), "{expected}: {out}");
        }
        let (status, _, stderr) =
            env.command(&["admin", "tier", "set", "free", "--max-concurrency", "0"]);
        assert!(!status.success() && stderr.contains("--max-concurrency"), "{stderr}");
        let (status, _, stderr) = env.command(&["admin", "key", "create", "nobody"]);
        assert!(!status.success() && stderr.contains("no tenant named `nobody`"), "{stderr}");
        // Every admin command says which store it used, and nothing else
        // of the store's own chatter.
        let (status, stdout, stderr) = env.command(&["admin", "tenant", "list"]);
        assert!(status.success(), "{stderr}");
        assert!(stdout.contains("t1\tpro"), "{stdout}");
        let expected = match &env.backend {
            crate::helpers::Backend::Sqlite => {
                format!("store: {}/wasmwiz.db (sqlite)", env.data_dir().display())
            }
            crate::helpers::Backend::Postgres(db) => {
                format!("store: 127.0.0.1:5432/{} (postgres)", db.url.rsplit('/').next().unwrap())
            }
        };
        assert!(stderr.contains(&expected), "{stderr}");
        assert!(!stderr.contains("already exists, skipping"), "{stderr}");
        assert!(!stderr.contains("wasmwiz::cli::serve"), "{stderr}");
        assert!(!stderr.contains("made a new, empty one"), "the store existed: {stderr}");
        let (status, _, stderr) =
            env.command(&["admin", "tenant", "grant", "nobody", "--route", "/x/..."]);
        assert!(!status.success(), "{stderr}");
        assert!(stderr.contains("there is no tenant named `nobody` in the store at"), "{stderr}");
    }

    // An operator in the wrong folder: the embedded store there is new and
    // empty, and both messages say so, naming where it is.
    let elsewhere = tempfile::tempdir().unwrap();
    let data = elsewhere.path().join("data");
    let (status, stderr) = crate::helpers::run_to_exit(
        &["admin", "tenant", "grant", "acme", "--route", "/shop/..."],
        &[("WASMWIZ_DATA_DIR", data.to_str().unwrap())],
    );
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("this command made a new, empty one"), "{stderr}");
    assert!(stderr.contains("WASMWIZ_DATA_DIR (default `.wasmwiz`"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "there is no tenant named `acme` in the store at {}",
            data.display()
        )),
        "{stderr}"
    );
}
