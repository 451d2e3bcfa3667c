//! Key-value data and configuration through `wasi:keyvalue` and
//! `wasi:config`: isolation between tenants, exact increments over two
//! nodes, tier limits the guest can handle, configuration and hidden
//! secrets. Each test runs on every key-value backend: the embedded store
//! (SQLite), PostgreSQL without Redis, and Redis (over PostgreSQL).

use std::time::Duration;

use crate::helpers::{
    Api, RedisServer, ServeEnv, Server, client, component, shared_redis_url, unique_prefix,
};

/// Where key-value data lives in a test.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kv {
    Sqlite,
    Postgres,
    Redis,
}

impl Kv {
    fn env(self) -> ServeEnv {
        match self {
            Kv::Sqlite => ServeEnv::sqlite(),
            Kv::Postgres => ServeEnv::postgres(),
            Kv::Redis => {
                let mut env = ServeEnv::postgres();
                env.set("REDIS_URL", &shared_redis_url()).set("REDIS_KEY_PREFIX", &unique_prefix());
                env
            }
        }
    }

    /// The backend `serve` reports in its log.
    fn log_name(self) -> &'static str {
        match self {
            Kv::Redis => "backend=\"redis\"",
            _ => "backend=\"store\"",
        }
    }
}

macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Kv::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Kv::Postgres).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Kv::Redis).await
                }
            )*
        }
    };
}

on_every_backend!(
    tenants_and_deployments_cannot_see_each_others_keys,
    increments_are_exact_under_concurrency_on_two_nodes,
    limits_give_the_guest_an_error_and_the_next_request_succeeds,
    configuration_reaches_the_guest_and_secrets_stay_hidden,
    key_value_operations_cover_the_interfaces,
);

/// `GET path` → (status, body).
async fn get(server: &Server, path: &str) -> (u16, String) {
    let response = client().get(server.url(path)).send().await.expect("the request is answered");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

async fn tenant_with_probe(env: &ServeEnv, server: &Server, name: &str, route: &str) -> Api {
    let key = env.tenant(name, "pro", false);
    let api = Api::new(server, &key);
    api.deploy_component("kv_probe", route).await;
    api
}

async fn tenants_and_deployments_cannot_see_each_others_keys(kv: Kv) {
    let env = kv.env();
    let server = env.serve();
    server.wait_for_log(kv.log_name(), Duration::from_secs(10));
    let alice = tenant_with_probe(&env, &server, "alice", "/alice/...").await;
    tenant_with_probe(&env, &server, "bob", "/bob/...").await;
    env.grant("alice", &["/alice2/..."]);
    // A second deployment of alice's: same tenant, another default bucket.
    let digest = alice.upload_component("kv_probe").await;
    let (status, body) =
        alice.deploy(serde_json::json!({"route": "/alice2/...", "component": digest})).await;
    assert_eq!(status, 201, "{body}");

    for bucket in ["default", "shared"] {
        let set = format!("/alice/?op=set&bucket={bucket}&key=k&value=alice-{bucket}");
        assert_eq!(get(&server, &set).await, (200, "ok".into()));
        let read = format!("/alice/?op=get&bucket={bucket}&key=k");
        assert_eq!(get(&server, &read).await, (200, format!("alice-{bucket}")));
        // Bob names the same bucket and key: his own, empty.
        let bob_read = format!("/bob/?op=get&bucket={bucket}&key=k");
        assert_eq!(get(&server, &bob_read).await, (404, "absent".into()), "{bucket}");
        let bob_list = format!("/bob/?op=list&bucket={bucket}");
        assert_eq!(get(&server, &bob_list).await, (200, String::new()), "{bucket}");
    }
    // Bob's writes do not touch alice's data.
    assert_eq!(get(&server, "/bob/?op=set&bucket=shared&key=k&value=bob").await.0, 200);
    assert_eq!(
        get(&server, "/alice/?op=get&bucket=shared&key=k").await,
        (200, "alice-shared".into())
    );
    // A shared bucket is shared by the tenant's deployments; `default` is
    // each deployment's own.
    assert_eq!(
        get(&server, "/alice2/?op=get&bucket=shared&key=k").await,
        (200, "alice-shared".into())
    );
    assert_eq!(get(&server, "/alice2/?op=get&bucket=default&key=k").await.0, 404);
    // No bucket name spells another scope.
    for name in ["d:anything", "s:shared", "..%2Fx", "a%2Fb"] {
        let (status, body) = get(&server, &format!("/bob/?op=get&bucket={name}&key=k")).await;
        assert_eq!((status, body.as_str()), (409, "access-denied"), "{name}");
    }
}

async fn increments_are_exact_under_concurrency_on_two_nodes(kv: Kv) {
    let env = kv.env();
    // Quotas and concurrency caps are not what this test is about: a burst
    // of 200 requests on a debug build may push quota calls past their
    // short Redis timeout (a degraded node counts against a per-node share
    // of the limit), and may hold more than the default cap of instances.
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
    let first = env.serve();
    let key = env.tenant("counter", "unlimited", false);
    env.grant("counter", &["/count/..."]);
    let api = Api::new(&first, &key);
    api.deploy_component("kv_counter", "/count/...").await;
    // The embedded store is one node; PostgreSQL and Redis are shared by two.
    let other = (kv != Kv::Sqlite).then(|| env.other_node());
    let second = other.as_ref().map(ServeEnv::serve);
    let nodes: Vec<&Server> = std::iter::once(&first).chain(second.as_ref()).collect();
    for node in &nodes {
        wait_for_route(node, "/count/warmup").await;
    }

    let http = client();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let url = nodes[i % nodes.len()].url("/count/page");
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            let response = http.get(url).send().await.expect("answered");
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.expect("JSON");
            assert_eq!(status, 200, "{body}");
            body["count"].as_u64().expect("a count")
        }));
    }
    let mut counts = Vec::new();
    for task in tasks {
        counts.push(task.await.expect("the task"));
    }
    counts.sort_unstable();
    // Every increment got its own number: none lost, none twice.
    assert_eq!(counts, (1..=200).collect::<Vec<u64>>());
    let (status, body) = get(nodes[nodes.len() - 1], "/count/page").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"count\":201"), "{body}");
    // Another path counts on its own.
    let (_, body) = get(&first, "/count/other").await;
    assert!(body.contains("\"path\":\"/count/other\",\"count\":1"), "{body}");
}

/// Waits until `path` is served (a deploy reaches a second node within 1 s).
async fn wait_for_route(server: &Server, path: &str) {
    for _ in 0..100 {
        if get(server, path).await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} was never served");
}

async fn limits_give_the_guest_an_error_and_the_next_request_succeeds(kv: Kv) {
    let env = kv.env();
    env.admin(&[
        "tier",
        "set",
        "tiny",
        "--per-minute",
        "unlimited",
        "--per-day",
        "unlimited",
        "--kv-max-value",
        "1000",
        "--kv-max-keys",
        "3",
        "--kv-max-total",
        "2100",
    ]);
    let server = env.serve();
    let key = env.tenant("small", "tiny", false);
    env.grant("small", &["/kv/..."]);
    let api = Api::new(&server, &key);
    api.deploy_component("kv_probe", "/kv/...").await;

    // A value over the limit: an error value for the guest, not a failure.
    let (status, body) = get(&server, "/kv/?op=set&key=a&size=1001").await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("limit exceeded") && body.contains("1000 bytes"), "{body}");
    // The next request is served as usual.
    assert_eq!(get(&server, "/kv/?op=set&key=a&size=1000").await, (200, "ok".into()));
    // A key over the key length (256 bytes by default).
    let long = "k".repeat(257);
    let (status, body) = get(&server, &format!("/kv/?op=set&key={long}&value=x")).await;
    assert_eq!(status, 409, "{body}");
    // Total bytes: 1001 held, 1001 more fit, a third does not.
    assert_eq!(get(&server, "/kv/?op=set&key=b&size=1000").await.0, 200);
    let (status, body) = get(&server, "/kv/?op=set&key=c&size=1000").await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("2100 bytes"), "{body}");
    // Key count: small values, a fourth key is refused.
    assert_eq!(get(&server, "/kv/?op=set&key=c&value=1").await.0, 200);
    let (status, body) = get(&server, "/kv/?op=incr&key=d").await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("3 keys"), "{body}");
    // Overwriting and deleting free room again.
    assert_eq!(get(&server, "/kv/?op=del&key=a").await.0, 200);
    assert_eq!(get(&server, "/kv/?op=incr&key=d&by=5").await, (200, "5".into()));
    // Nothing was written by the refused calls.
    assert_eq!(get(&server, "/kv/?op=list").await, (200, "b\nc\nd".into()));

    // The usage API shows what the tenant holds and its operations.
    let (status, usage) = api.call(api.request(reqwest::Method::GET, "/api/v1/usage")).await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["kv"]["keys"], 3, "{usage}");
    assert_eq!(usage["kv"]["bytes"], (1 + 1000) + (1 + 1) + (1 + 1), "{usage}");
    assert_eq!(usage["kv"]["max_keys"], 3, "{usage}");
    // Writes that reached the backend, refused ones included (7); the
    // ones refused before it (value and key length) are not counted.
    assert_eq!(usage["today"]["kv_writes"], 7, "{usage}");
    assert!(usage["today"]["kv_reads"].as_u64().unwrap() >= 1, "{usage}");
}

async fn configuration_reaches_the_guest_and_secrets_stay_hidden(kv: Kv) {
    let env = kv.env();
    let server = env.serve();
    let key = env.tenant("greeter", "pro", false);
    env.grant("greeter", &["/greet"]);
    let api = Api::new(&server, &key);
    let digest = api.upload_component("config_greeting").await;
    let (status, body) = api
        .deploy(serde_json::json!({
            "route": "/greet",
            "component": digest,
            "config": {"name": "Ada"},
            "secrets": {"greeting": "Top-secret-hello"},
        }))
        .await;
    assert_eq!(status, 201, "{body}");
    let response = client().get(server.url("/greet")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-config-entries"], "2");
    assert_eq!(response.text().await.unwrap(), "Top-secret-hello, Ada!\n");

    // The API names secrets but never shows their values.
    let listing = api
        .request(reqwest::Method::GET, "/api/v1/deployments")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listing.contains("Top-secret-hello"), "{listing}");
    let (_, deployments) = api.call(api.request(reqwest::Method::GET, "/api/v1/deployments")).await;
    let greet = deployments
        .as_array()
        .and_then(|all| all.iter().find(|d| d["route"] == "/greet"))
        .unwrap_or_else(|| panic!("{deployments}"));
    assert_eq!(greet["config"], serde_json::json!({"name": "Ada"}));
    assert_eq!(greet["secrets"], serde_json::json!(["greeting"]));
    assert!(!body.to_string().contains("Top-secret-hello"), "{body}");

    // A redeploy with other configuration switches what the guest sees.
    let (status, _) = api
        .deploy(serde_json::json!({"route": "/greet", "component": digest, "config": {"name": "Grace"}}))
        .await;
    assert_eq!(status, 201);
    for _ in 0..50 {
        if get(&server, "/greet").await.1 == "Hello, Grace!\n" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the new configuration never reached the guest");
}

async fn key_value_operations_cover_the_interfaces(kv: Kv) {
    let env = kv.env();
    let server = env.serve();
    let key = env.tenant("ops", "pro", false);
    env.grant("ops", &["/kv/..."]);
    let api = Api::new(&server, &key);
    api.deploy_component("kv_probe", "/kv/...").await;
    assert_eq!(get(&server, "/kv/?op=exists&key=x").await, (200, "false".into()));
    assert_eq!(get(&server, "/kv/?op=setmany&keys=x,y,z&value=1").await.0, 200);
    assert_eq!(get(&server, "/kv/?op=exists&key=x").await, (200, "true".into()));
    assert_eq!(get(&server, "/kv/?op=getmany&keys=x,nope,z").await, (200, "x=1\n-\nz=1\n".into()));
    assert_eq!(get(&server, "/kv/?op=incr&key=x&by=41").await, (200, "42".into()));
    assert_eq!(get(&server, "/kv/?op=get&key=x").await, (200, "42".into()));
    // Not a counter: an error value.
    assert_eq!(get(&server, "/kv/?op=set&key=t&value=text").await.0, 200);
    let (status, body) = get(&server, "/kv/?op=incr&key=t").await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("not a decimal counter"), "{body}");
    let (status, body) = get(&server, "/kv/?op=incr&key=x&by=18446744073709551615").await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("overflow"), "{body}");
    assert_eq!(get(&server, "/kv/?op=delmany&keys=y,z,t").await.0, 200);
    assert_eq!(get(&server, "/kv/?op=list").await, (200, "x".into()));
    // Listing pages through more keys than one page holds.
    let many: Vec<String> = (0..250).map(|i| format!("k{i:03}")).collect();
    for chunk in many.chunks(100) {
        let url = format!("/kv/?op=setmany&keys={}&value=v", chunk.join(","));
        assert_eq!(get(&server, &url).await.0, 200);
    }
    let (status, listed) = get(&server, "/kv/?op=list").await;
    assert_eq!(status, 200);
    assert_eq!(listed.lines().count(), 251, "{listed}");
    // Configuration entries through the same probe (none set).
    assert_eq!(get(&server, "/kv/?op=config&key=name").await, (404, "absent".into()));
}

/// With Redis down, a key-value call is an error the guest answers with;
/// the host and routes without key-value data carry on.
#[tokio::test]
async fn redis_down_is_an_error_value_not_a_failure() {
    let mut redis = RedisServer::start();
    let mut env = ServeEnv::postgres();
    env.set("REDIS_URL", &redis.url()).set("REDIS_KEY_PREFIX", &unique_prefix());
    let server = env.serve();
    let key = env.tenant("fragile", "pro", false);
    env.grant("fragile", &["/count/...", "/hello"]);
    let api = Api::new(&server, &key);
    api.deploy_component("kv_counter", "/count/...").await;
    api.deploy_component("hello", "/hello").await;
    assert_eq!(get(&server, "/count/a").await.0, 200);

    redis.stop();
    let started = std::time::Instant::now();
    let (status, body) = get(&server, "/count/a").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("unavailable"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(get(&server, "/hello").await.0, 200);

    redis.restart();
    for _ in 0..100 {
        let (status, body) = get(&server, "/count/a").await;
        if status == 200 {
            // The test's Redis keeps nothing on disk: counting starts over.
            assert!(body.contains("\"count\":1"), "{body}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("key-value calls never recovered after Redis came back");
}

/// `wasmwiz run` keeps key-value data in memory and takes `--config`.
#[tokio::test]
async fn run_serves_key_value_and_configuration() {
    let counter = format!("/count/...={}", component("kv_counter").display());
    let greeting = format!("/greet={}", component("config_greeting").display());
    let server = Server::start(&["run", "--config", "name=Laptop", &counter, &greeting], &[]);
    for expected in 1..=3 {
        let (status, body) = get(&server, "/count/x").await;
        assert_eq!(status, 200);
        assert!(body.contains(&format!("\"count\":{expected}")), "{body}");
    }
    assert_eq!(get(&server, "/greet").await, (200, "Hello, Laptop!\n".into()));
}
