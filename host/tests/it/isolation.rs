//! Tenant isolation around the sandbox: hosts, paths, response headers that
//! would widen a guest's reach in a browser, revoked keys' log streams,
//! secrets at rest, and a control plane (uploads, compile slots, storage,
//! versions, key-value writes, request bodies read before admission) that
//! no tenant can fill or starve for the others. Each test is an attack a
//! tenant (or anyone, without a key) could try, and what must hold.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Api, ServeEnv, client, component, eventually, metric, raw_request};

/// A tier for these tests: every limit as the defaults, rates off.
fn roomy_tier(env: &ServeEnv, name: &str, extra: &[&str]) {
    let mut args = vec!["tier", "set", name, "--per-minute", "unlimited", "--per-day", "unlimited"];
    args.extend_from_slice(extra);
    env.admin(&args);
}

#[tokio::test]
async fn a_host_a_tenant_holds_serves_only_that_tenants_routes() {
    let mut env = ServeEnv::sqlite();
    env.set("WASMWIZ_BASE_DOMAIN", "edge.test");
    let a = env.tenant("a", "pro", false);
    let b = env.tenant("b", "pro", false);
    env.grant("a", &["a.example"]);
    let server = env.serve();
    let (a, b) = (Api::new(&server, &a), Api::new(&server, &b));
    let digest = a.upload_component("hostile").await;
    for (route, host) in [("/x/...", Some("a.example")), ("/a/...", None)] {
        let (status, body) =
            a.deploy(json!({ "route": route, "host": host, "component": digest })).await;
        assert_eq!(status, 201, "{body}");
    }
    b.deploy_component("hostile", "/b/...").await;
    let get = |host: &'static str, path: &'static str| {
        let url = server.url(path);
        async move {
            let response = client().get(url).header("host", host).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    // On a's granted host: a's routes only, bound to the host or not.
    assert_eq!(get("a.example", "/x/path").await, (200, "/x/path".to_string()));
    assert_eq!(get("a.example", "/a/path").await, (200, "/a/path".to_string()));
    assert_eq!(get("a.example", "/b/ok").await.0, 404, "b's page on a's origin");
    // On a's host under the base domain too, with nothing bound to it.
    assert_eq!(get("a.edge.test", "/a/ok").await.0, 200);
    assert_eq!(get("a.edge.test", "/b/ok").await.0, 404);
    assert_eq!(get("b.edge.test", "/a/ok").await.0, 404);
    assert_eq!(get("b.edge.test", "/b/ok").await.0, 200);
    // A host nobody holds serves every host-less route.
    assert_eq!(get("shared.example", "/b/ok").await.0, 200);
    assert_eq!(get("shared.example", "/a/ok").await.0, 200);
}

#[tokio::test]
async fn paths_are_routed_as_normalised_and_disguised_dots_are_refused() {
    let env = ServeEnv::sqlite();
    let a = env.tenant("a", "pro", false);
    let b = env.tenant("b", "pro", false);
    let server = env.serve();
    let (a, b) = (Api::new(&server, &a), Api::new(&server, &b));
    // Routes with a dot segment or an encoded `.`, `/`, `\` are refused.
    let digest = a.upload_component("hostile").await;
    for route in ["/a/%2e%2e/b/...", "/a/%2E%2E/b", "/a/x%2fy", "/a/x%5Cy", "/a/../b/...", "/a/%61"]
    {
        let (status, body) = a.deploy(json!({ "route": route, "component": digest })).await;
        assert_eq!(status, 400, "{route}: {body}");
        assert_eq!(body["error"]["code"], "invalid_route", "{route}: {body}");
    }
    a.deploy_component("hostile", "/a/...").await;
    b.deploy_component("hostile", "/b/...").await;
    // Sent as they are: each reaches the route its normal form names, and
    // the guest sees that form.
    for (target, seen) in [
        ("/a/../b/path", "/b/path"),
        ("/a/%2e%2e/b/path", "/b/path"),
        ("/a/.%2E/b/path?x=1", "/b/path?x=1"),
        ("//b/path", "/b/path"),
        ("/b/./x/../path", "/b/path"),
        ("/%61/path", "/a/path"),
    ] {
        let (status, body) = raw_request(server.addr, &format!("GET {target} HTTP/1.1")).await;
        assert_eq!((status, body.as_str()), (200, seen), "{target}");
    }
    // Encoded separators and broken escapes are refused before routing.
    for target in ["/a%2f..%2fb/path", "/b/x%5cpath", "/b/%zz/path", "/b/%00/path"] {
        let (status, body) = raw_request(server.addr, &format!("GET {target} HTTP/1.1")).await;
        assert_eq!(status, 400, "{target}: {body}");
        assert!(body.contains("bad_path"), "{target}: {body}");
    }
}

#[tokio::test]
async fn response_headers_that_widen_a_guests_reach_are_stripped_counted_and_logged() {
    let env = ServeEnv::sqlite();
    let key = env.tenant("a", "pro", false);
    let server = env.serve();
    let api = Api::new(&server, &key);
    api.deploy_component("hostile", "/a/...").await;
    let query = "h=Service-Worker-Allowed:%2F&h=Clear-Site-Data:%22*%22\
                 &h=Set-Cookie:wide%3D1%3B%20Domain%3Dexample.com&h=Set-Cookie:own%3D1%3B%20Path%3D%2Fa\
                 &h=X-Kept:yes&body=hi";
    let response = client().get(server.url(&format!("/a/page?{query}"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert!(headers.get("service-worker-allowed").is_none(), "{headers:?}");
    assert!(headers.get("clear-site-data").is_none(), "{headers:?}");
    let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["own=1; Path=/a"], "only the host-only cookie stays");
    assert_eq!(headers["x-kept"], "yes");
    assert_eq!(response.text().await.unwrap(), "hi");
    for header in ["service-worker-allowed", "clear-site-data", "set-cookie"] {
        let series =
            format!("wasmwiz_guest_headers_stripped_total{{header=\"{header}\",tenant=\"a\"}}");
        assert_eq!(metric(&server, &series).await, Some(1.0), "{series}");
    }
    // The tenant reads why in its log stream.
    let notice = eventually("a notice in the tenant's log", Duration::from_secs(10), || async {
        let (_, logs) = api.call(api.request(Method::GET, "/api/v1/logs")).await;
        logs["events"].as_array()?.iter().find(|e| e["kind"] == "notice").cloned()
    })
    .await;
    let message = notice["message"].as_str().unwrap();
    assert!(
        message.contains("service-worker-allowed") && message.contains("set-cookie"),
        "{message}"
    );
}

#[tokio::test]
async fn a_revoked_keys_log_streams_end_on_every_node_and_free_their_places() {
    use futures::StreamExt as _;
    let env = ServeEnv::postgres();
    let owner = env.tenant("acme", "pro", false);
    let node_a = env.serve();
    let other = env.other_node();
    let node_b = other.serve();
    let on_a = Api::new(&node_a, &owner);
    let (status, created) =
        on_a.call(on_a.request(Method::POST, "/api/v1/keys").json(&json!({}))).await;
    assert_eq!(status, 201, "{created}");
    let doomed = created["key"].as_str().unwrap().to_string();
    let doomed_id = created["id"].as_str().unwrap().to_string();
    // The doomed key follows on node B, as many times as a tenant may.
    let on_b = Api::new(&node_b, &doomed);
    let mut streams = Vec::new();
    for _ in 0..8 {
        let response =
            on_b.request(Method::GET, "/api/v1/logs?follow=true").send().await.expect("a stream");
        assert_eq!(response.status(), 200);
        streams.push(response.bytes_stream());
    }
    let owner_on_b = Api::new(&node_b, &owner);
    let full = owner_on_b.request(Method::GET, "/api/v1/logs?follow=true").send().await.unwrap();
    assert_eq!(full.status(), 429, "the tenant's followers on node B are all taken");
    drop(full);
    // Revoked through node A: every stream on node B ends.
    let (status, _) =
        on_a.call(on_a.request(Method::DELETE, &format!("/api/v1/keys/{doomed_id}"))).await;
    assert_eq!(status, 204);
    let revoked = Instant::now();
    for stream in &mut streams {
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
        assert!(ended.is_ok(), "a revoked key's stream still open after 10 s");
    }
    eprintln!("streams ended {:?} after the revocation", revoked.elapsed());
    // The owner's own follower gets a place again.
    eventually("a place for the owner's follower", Duration::from_secs(10), || async {
        let response =
            owner_on_b.request(Method::GET, "/api/v1/logs?follow=true").send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
}

/// What a store's rows hold, as text: `sqlite3` or `psql` on the tables.
fn dump(env: &ServeEnv, sql: &str) -> String {
    let output = match &env.backend {
        crate::helpers::Backend::Sqlite => std::process::Command::new("sqlite3")
            .arg(env.data_dir().join("wasmwiz.db"))
            .arg(sql)
            .output(),
        crate::helpers::Backend::Postgres(db) => {
            std::process::Command::new("psql").args([db.url.as_str(), "-qAt", "-c", sql]).output()
        }
    }
    .expect("the store's client");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Deploys `config_greeting` on `/acme/greet` with the secret `name`.
async fn deploy_greeting(api: &Api, digest: &str, secret: &str) -> serde_json::Value {
    let (status, body) = api
        .deploy(json!({
            "route": "/acme/greet", "component": digest,
            "secrets": { "name": secret }, "config": { "greeting": "Hi" },
        }))
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn secrets_at_rest(mut env: ServeEnv) {
    let key = env.tenant("acme", "pro", false);
    let server = env.serve();
    let api = Api::new(&server, &key);
    let digest = api.upload_component("config_greeting").await;
    let first = deploy_greeting(&api, &digest, "first-secret-value").await;
    let id = first["id"].as_str().unwrap().to_string();
    assert_eq!(api.get_text("/acme/greet").await, (200, "Hi, first-secret-value!\n".into()));
    deploy_greeting(&api, &digest, "rotated-secret-value").await;
    assert_eq!(api.get_text("/acme/greet").await, (200, "Hi, rotated-secret-value!\n".into()));
    // At rest: sealed, in the deployment's row only.
    let rows = dump(&env, "SELECT secrets FROM deployments");
    assert!(rows.contains("wwsec1:"), "{rows}");
    let versions = dump(&env, "SELECT secrets FROM deployment_versions");
    assert!(versions.lines().all(|l| l == "{}"), "versions keep no secrets: {versions}");
    for table in ["deployments", "deployment_versions", "settings"] {
        let text = dump(&env, &format!("SELECT * FROM {table}"));
        assert!(!text.contains("secret-value"), "plain text in {table}: {text}");
    }
    // A rollback keeps the current (rotated) secret, not the old one.
    let (status, body) = api
        .call(
            api.request(Method::POST, &format!("/api/v1/deployments/{id}/rollback"))
                .json(&json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(api.get_text("/acme/greet").await, (200, "Hi, rotated-secret-value!\n".into()));
    // The API names secrets, never their values.
    let (_, listed) = api.call(api.request(Method::GET, "/api/v1/deployments")).await;
    assert_eq!(listed[0]["secrets"], json!(["name"]), "{listed}");
    assert!(!listed.to_string().contains("secret-value") && !listed.to_string().contains("wwsec1"));
    // Deleted: no sealed value of it is left anywhere.
    let (status, _) =
        api.call(api.request(Method::DELETE, &format!("/api/v1/deployments/{id}"))).await;
    assert_eq!(status, 204);
    let rows = dump(&env, "SELECT secrets FROM deployments");
    assert!(!rows.contains("wwsec1:"), "a deleted deployment's secrets stay: {rows}");
    drop(server);

    // Rotation: nodes get the new key and the old one as previous, one
    // command seals everything again, then the old key can go.
    let old = "11".repeat(32);
    let new = "22".repeat(32);
    env.set("SECRETS_KEY", &old);
    let server = env.serve();
    let api = Api::new(&server, &key);
    deploy_greeting(&api, &digest, "sealed-under-the-old-key").await;
    drop(server);
    env.set("SECRETS_KEY", &new).set("SECRETS_KEY_PREVIOUS", &old);
    let out = env.admin(&["secrets", "rotate"]);
    assert!(out.contains("secrets of 1 deployments sealed"), "{out}");
    env.set("SECRETS_KEY_PREVIOUS", "");
    let server = env.serve();
    let api = Api::new(&server, &key);
    assert_eq!(
        api.get_text("/acme/greet").await,
        (200, "Hi, sealed-under-the-old-key!\n".into()),
        "opened with the new key alone after the rotation"
    );
    // A node holding neither key does not serve it, and says why.
    drop(server);
    env.set("SECRETS_KEY", &"33".repeat(32));
    let server = env.serve();
    let api = Api::new(&server, &key);
    assert_eq!(api.get_text("/acme/greet").await.0, 404);
    server.wait_for_log("secrets do not open on this node", Duration::from_secs(10));
}

mod sqlite {
    #[tokio::test]
    async fn secrets_are_sealed_at_rest_kept_across_rollbacks_purged_with_their_deployment_and_rotated()
     {
        super::secrets_at_rest(super::ServeEnv::sqlite()).await
    }
}

mod postgres {
    #[tokio::test]
    async fn secrets_are_sealed_at_rest_kept_across_rollbacks_purged_with_their_deployment_and_rotated()
     {
        super::secrets_at_rest(super::ServeEnv::postgres()).await
    }
}

/// `bytes` with a custom section carrying `nonce`: a component of its own.
fn unique(bytes: &[u8], nonce: &str) -> Vec<u8> {
    let name = b"isolation";
    let mut content = vec![u8::try_from(name.len()).unwrap()];
    content.extend_from_slice(name);
    content.extend_from_slice(nonce.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    out.push(u8::try_from(content.len()).unwrap());
    out.extend_from_slice(&content);
    out
}

#[tokio::test]
async fn one_tenants_uploads_neither_exceed_its_bound_nor_starve_another_tenants() {
    let env = ServeEnv::sqlite();
    let greedy = env.tenant("greedy", "pro", false);
    let modest = env.tenant("modest", "pro", false);
    let server = env.serve();
    let heavy = std::fs::read(component("heavy")).unwrap();
    let greedy_api = Api::new(&server, &greedy);

    // One heavy compilation alone: the yardstick.
    let started = Instant::now();
    let (status, body) = greedy_api.upload("heavy", unique(&heavy, "alone")).await;
    assert_eq!(status, 201, "{body}");
    let one_compile = started.elapsed();

    // With the pro tier's bound (2 in flight), 20 at once: 2 are taken, the
    // rest refused at once, naming the bound.
    let mut uploads = Vec::new();
    for i in 0..20 {
        let api = greedy_api.clone();
        let bytes = unique(&heavy, &format!("bounded {i}"));
        uploads.push(tokio::spawn(async move { api.upload("heavy", bytes).await }));
    }
    let mut refused = 0;
    for upload in uploads {
        let (status, body) = upload.await.unwrap();
        if status == 429 {
            assert_eq!(body["error"]["code"], "too_many_uploads", "{body}");
            refused += 1;
        } else {
            assert_eq!(status, 201, "{body}");
        }
    }
    assert!(refused >= 18, "{refused} of 20 refused");

    // Allowed 20 in flight, its compilations queue; another tenant's small
    // upload is served in turn, not after all of them.
    roomy_tier(&env, "greedy20", &["--max-uploads-in-flight", "20"]);
    env.admin(&["tenant", "set-tier", "greedy", "greedy20"]);
    eventually("the tier change on the node", Duration::from_secs(10), || async {
        let api = greedy_api.clone();
        let (_, me) = api.call(api.request(Method::GET, "/api/v1/me")).await;
        (me["tier"] == "greedy20").then_some(())
    })
    .await;
    // Each upload notes how many uploads (of either tenant) had finished
    // before it: its place in the order of answers.
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut uploads = Vec::new();
    for i in 0..20 {
        let (api, finished) = (greedy_api.clone(), finished.clone());
        let bytes = unique(&heavy, &format!("queued {i}"));
        uploads.push(tokio::spawn(async move {
            let answer = api.upload("heavy", bytes).await;
            finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            answer
        }));
    }
    eventually("greedy's compilations queued", Duration::from_secs(60), || async {
        let waiting = metric(&server, "wasmwiz_compile_slots_waiting").await?;
        (waiting >= 10.0).then_some(())
    })
    .await;
    let started = Instant::now();
    let digest = Api::new(&server, &modest).upload_component("hello").await;
    let modest_took = started.elapsed();
    let before_modest = finished.load(std::sync::atomic::Ordering::SeqCst);
    assert!(digest.starts_with("sha256:"));
    for upload in uploads {
        let (status, body) = upload.await.unwrap();
        assert_eq!(status, 201, "{body}");
    }
    let greedy_took = started.elapsed();
    eprintln!(
        "one heavy compile {one_compile:?}; the modest upload {modest_took:?}, answered after \
         {before_modest} of greedy's; greedy's 20 {greedy_took:?}"
    );
    // First come, first served, it would be answered after the ten or more
    // of greedy's queued before it; in turn, after the two compiling when
    // it came (each slot frees once before it is its turn), whatever the
    // machine's speed.
    assert!(
        before_modest <= 3,
        "the modest upload was answered after {before_modest} of greedy's 20 \
         (it took {modest_took:?}; one heavy compile alone {one_compile:?})"
    );
}

#[tokio::test]
async fn storage_caps_answer_413_naming_the_cap_and_old_versions_are_pruned() {
    let env = ServeEnv::sqlite();
    roomy_tier(
        &env,
        "small",
        &["--max-components", "2", "--max-component-storage", "400KiB", "--max-versions", "2"],
    );
    let key = env.tenant("acme", "small", false);
    let server = env.serve();
    let api = Api::new(&server, &key);
    let hello = std::fs::read(component("hello")).unwrap();
    for i in 0..2 {
        let (status, body) = api.upload("hello", unique(&hello, &i.to_string())).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = api.upload("hello", unique(&hello, "third")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("component_count_limit")),
        "{body}"
    );
    // The same bytes again are not a new component: answered as before.
    let (status, _) = api.upload("hello", unique(&hello, "0")).await;
    assert_eq!(status, 200);
    // Bytes: a big component over what is left.
    let (_, components) = api.call(api.request(Method::GET, "/api/v1/components")).await;
    let digests: Vec<String> = components
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["digest"].as_str().unwrap().to_string())
        .collect();
    let (status, _) =
        api.call(api.request(Method::DELETE, &format!("/api/v1/components/{}", digests[0]))).await;
    assert_eq!(status, 204);
    let heavy = std::fs::read(component("heavy")).unwrap();
    let (status, body) = api.upload("big", unique(&heavy, "x")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("component_storage_limit")),
        "{body}"
    );
    // Versions: the newest two are kept.
    let (status, deployed) =
        api.deploy(json!({ "route": "/acme/app", "component": digests[1] })).await;
    assert_eq!(status, 201, "{deployed}");
    let id = deployed["id"].as_str().unwrap().to_string();
    for _ in 0..3 {
        let (status, body) =
            api.deploy(json!({ "route": "/acme/app", "component": digests[1] })).await;
        assert_eq!(status, 201, "{body}");
    }
    let (_, versions) =
        api.call(api.request(Method::GET, &format!("/api/v1/deployments/{id}/versions"))).await;
    let kept: Vec<u64> =
        versions.as_array().unwrap().iter().map(|v| v["version"].as_u64().unwrap()).collect();
    assert_eq!(kept, [4, 3], "newest first: {versions}");
    let rollback = |api: Api, id: String| async move {
        api.call(
            api.request(Method::POST, &format!("/api/v1/deployments/{id}/rollback"))
                .json(&json!({})),
        )
        .await
    };
    assert_eq!(rollback(api.clone(), id.clone()).await.0, 200, "to v3");
    let (status, body) = rollback(api.clone(), id.clone()).await;
    assert_eq!(status, 409, "v2 was pruned: {body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("pruned"), "{body}");
}

#[tokio::test]
async fn key_value_writes_are_bounded_per_second() {
    let env = ServeEnv::sqlite();
    roomy_tier(&env, "kv10", &["--kv-writes-per-second", "10"]);
    let key = env.tenant("acme", "kv10", false);
    let server = env.serve();
    let api = Api::new(&server, &key);
    api.deploy_component("kv_probe", "/acme/kv").await;
    // 50 writes in one request: even if the second turns during them, at
    // most 20 fit.
    let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
    let (status, body) =
        api.get_text(&format!("/acme/kv?op=setmany&keys={}&value=v", keys.join(","))).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("kv_writes_per_second"), "{body}");
}

#[tokio::test]
async fn request_bodies_read_before_admission_share_a_node_wide_budget() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut env = ServeEnv::sqlite();
    env.set("MAX_BUFFERED_INPUT", "1000");
    let key = env.tenant("acme", "pro", false);
    let server = env.serve();
    Api::new(&server, &key).deploy_component("echo", "/acme/echo").await;
    // A slow client: a chunked body of unknown length, 800 bytes so far.
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /acme/echo HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        server.addr
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(format!("320\r\n{}\r\n", "a".repeat(800)).as_bytes()).await.unwrap();
    eventually("the slow body held by the node", Duration::from_secs(10), || async {
        let held = metric(&server, "wasmwiz_input_buffered_bytes").await?;
        (held >= 800.0).then_some(())
    })
    .await;
    // Another body of unknown length does not fit beside it: refused, not
    // buffered.
    let stream = futures::stream::iter(["b".repeat(400)].map(Ok::<_, std::io::Error>));
    let response = client()
        .post(server.url("/acme/echo"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert!(response.text().await.unwrap().contains("input_budget_exhausted"));
    // The slow client finishes: answered, and the budget is whole again.
    slow.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    slow.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    eventually("the budget given back", Duration::from_secs(10), || async {
        let held = metric(&server, "wasmwiz_input_buffered_bytes").await?;
        (held == 0.0).then_some(())
    })
    .await;
}
