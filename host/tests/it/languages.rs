//! Components written in Python (componentize-py) and JavaScript
//! (componentize-js), built by `scripts/build-examples.sh` from
//! `examples/python-*`, `examples/js-*` and `tests/guests/{python,js}-hostile`,
//! served like any other.

use std::time::Duration;

use crate::helpers::{Api, ServeEnv, Server, client, component, on_both_stores};

on_both_stores!(every_language_example_is_deployed_with_the_cli_and_counts_exactly);

async fn get(server: &Server, path: &str) -> (u16, String) {
    let response = client().get(server.url(path)).send().await.expect("answered");
    (response.status().as_u16(), response.text().await.unwrap_or_default())
}

/// `wasmwiz deploy FILE --route ROUTE [ARGS]` as the tenant whose key is set.
fn deploy(env: &ServeEnv, name: &str, route: &str, args: &[&str]) -> String {
    let file = component(name);
    let mut all = vec!["deploy", file.to_str().unwrap(), "--route", route];
    all.extend_from_slice(args);
    let (status, stdout, stderr) = env.command(&all);
    assert!(status.success(), "deploy {name}: {stderr}");
    stdout
}

async fn every_language_example_is_deployed_with_the_cli_and_counts_exactly(mut env: ServeEnv) {
    env.share_compiled_code();
    let key = env.tenant("acme", "pro", false);
    let server = env.serve();
    env.set("WASMWIZ_URL", &server.url("")).set("WASMWIZ_API_KEY", &key);

    let out = deploy(&env, "python_hello", "/acme/py/hello", &[]);
    assert!(out.contains("compiled in"), "{out}");
    deploy(&env, "js_hello", "/acme/js/hello", &[]);
    deploy(&env, "python_kv", "/acme/py/count/...", &["--config", "greeting=Howdy"]);
    deploy(&env, "js_kv", "/acme/js/count/...", &[]);
    assert_eq!(get(&server, "/acme/py/hello").await, (200, "Hello, world!\n".to_string()));
    assert_eq!(get(&server, "/acme/js/hello").await, (200, "Hello, world!\n".to_string()));

    // The key-value examples count exactly under concurrency, and read
    // their configuration.
    for (prefix, greeting) in [("/acme/py/count", "Howdy"), ("/acme/js/count", "Hello")] {
        let path = format!("{prefix}/page");
        let requests: Vec<_> = (0..40)
            .map(|_| {
                let url = server.url(&path);
                tokio::spawn(async move {
                    let response = client().get(url).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                    response.json::<serde_json::Value>().await.unwrap()
                })
            })
            .collect();
        let mut counts = Vec::new();
        for request in requests {
            let answer = request.await.unwrap();
            assert_eq!(answer["greeting"], greeting, "{answer}");
            assert_eq!(answer["path"], path, "{answer}");
            counts.push(answer["count"].as_u64().unwrap());
        }
        counts.sort_unstable();
        assert_eq!(counts, (1..=40).collect::<Vec<u64>>(), "{prefix}");
    }

    // The uploads went gzipped: the sizes stored are the components'.
    let api = Api::new(&server, &key);
    let (_, components) = api.call(api.request(reqwest::Method::GET, "/api/v1/components")).await;
    let python =
        components.as_array().unwrap().iter().find(|c| c["name"] == "python_hello").unwrap();
    assert_eq!(python["size"], std::fs::metadata(component("python_hello")).unwrap().len());
    assert!(python["world"].as_str().unwrap().starts_with("wasi:http/proxy@0.2."), "{python}");

    // A restart serves all four from the compiled-code cache.
    drop(server);
    let restarted = env.serve();
    restarted
        .wait_for_log("(4 from the compiled-code cache, 0 to compile)", Duration::from_secs(30));
    assert_eq!(get(&restarted, "/acme/js/hello").await.0, 200);
}

#[tokio::test]
async fn a_python_exception_and_a_javascript_throw_are_500s_with_their_text_in_the_guest_output() {
    let mut env = ServeEnv::sqlite();
    env.share_compiled_code();
    let key = env.tenant("acme", "pro", false);
    let server = env.serve();
    let api = Api::new(&server, &key);
    api.deploy_component("python_hostile", "/acme/py/...").await;
    api.deploy_component("js_hostile", "/acme/js/...").await;

    for (path, text) in [
        ("/acme/py/raise", "python-hostile was asked to raise"),
        ("/acme/js/throw", "js-hostile was asked to throw"),
    ] {
        let response = client().get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 500, "{path}");
        let id = response.headers()["x-request-id"].to_str().unwrap().to_string();
        // Python's exception traps (the host answers `component_trap`);
        // StarlingMonkey catches the throw and answers a 500 of its own.
        let body = response.text().await.unwrap();
        assert!(!body.contains(text), "the client sees no exception text: {body}");
        // The guest's own words, in its captured output, under the request id.
        server.logged(text, 1, Duration::from_secs(5)).await;
        let logs = server.logs();
        let line = logs.lines().find(|l| l.contains(text)).unwrap();
        let event = logs.lines().find(|l| l.contains("wasmwiz::guest") && l.contains(&id));
        assert!(event.is_some() || line.contains(&id), "not tagged with {id}:\n{logs}");
    }
    assert_eq!(get(&server, "/acme/py/ok").await.0, 200, "the next request succeeds");
    assert_eq!(get(&server, "/acme/js/ok").await.0, 200);
}

#[tokio::test]
async fn a_memory_hungry_python_handler_is_stopped_by_the_tiers_limit_and_the_next_succeeds() {
    let mut env = ServeEnv::sqlite();
    env.share_compiled_code();
    env.admin(&[
        "tier",
        "set",
        "small",
        "--per-minute",
        "1000",
        "--memory",
        "96MiB",
        "--max-component",
        "64MiB",
    ]);
    let key = env.tenant("acme", "small", false);
    let server = env.serve();
    Api::new(&server, &key).deploy_component("python_hostile", "/acme/py/...").await;
    assert_eq!(get(&server, "/acme/py/grow?mib=4").await, (200, "ok 4\n".to_string()));
    let response = client().get(server.url("/acme/py/grow?mib=200")).send().await.unwrap();
    assert_eq!(response.status(), 500);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "out_of_memory", "{body}");
    assert_eq!(get(&server, "/acme/py/grow?mib=1").await, (200, "ok 1\n".to_string()));
}

/// The directory `root`'s `.wit` files, by path relative to it.
fn wit_files(root: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().unwrap() != "js" {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "wit") {
                let relative = path.strip_prefix(root).unwrap().display().to_string();
                files.insert(relative, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    files
}

#[test]
fn wit_js_is_wit_at_the_version_starlingmonkey_exports() {
    let wit = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../wit");
    let expected: std::collections::BTreeMap<String, String> = wit_files(&wit)
        .into_iter()
        .map(|(path, text)| (path, text.replace("0.2.12", "0.2.10")))
        .collect();
    assert_eq!(
        wit_files(&wit.join("js")),
        expected,
        "regenerate wit/js from wit (see wit/js/README.md)"
    );
}

/// A JavaScript component answering through StarlingMonkey's `fetch` event
/// fails on a reused instance (its event cannot be answered twice): a
/// deployment that opted in to reuse stops reusing after two such failures,
/// and every later request is answered. One answering through `wasi:http`'s
/// incoming handler (js-handler) is reused and stays so.
#[tokio::test]
async fn javascript_reuse_works_with_the_incoming_handler_and_falls_back_with_the_fetch_event() {
    let mut env = ServeEnv::sqlite();
    env.share_compiled_code().set("LOG_LEVEL", "info,wasmwiz::runtime=debug");
    let key = env.tenant("acme", "pro", false);
    let server = env.serve();
    let api = Api::new(&server, &key);
    for (name, route) in [("js_handler", "/acme/handler/..."), ("js_hello", "/acme/fetch/...")] {
        let digest = api.upload_component(name).await;
        let (status, body) = api
            .deploy(serde_json::json!({
                "route": route, "component": digest, "max_instance_reuse": 100
            }))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    const KEPT: &str = "instance kept for reuse";
    const GIVEN_UP: &str = "instance reuse turned off for this deployment";

    for _ in 0..5 {
        assert_eq!(get(&server, "/acme/handler/").await, (200, "Hello, world!\n".to_string()));
    }
    // Kept after each of the five: the first ran on a fresh instance, the
    // other four on that one.
    server.logged(KEPT, 5, Duration::from_secs(5)).await;

    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(get(&server, "/acme/fetch/").await.0);
    }
    let failed = statuses.iter().filter(|&&s| s == 500).count();
    assert_eq!(failed, 2, "two failures on reused instances, then fresh ones: {statuses:?}");
    assert!(statuses[4..].iter().all(|&s| s == 200), "{statuses:?}");
    server.logged(GIVEN_UP, 1, Duration::from_secs(5)).await;
    let logs = server.logs();
    let warning = logs.lines().find(|l| l.contains(GIVEN_UP)).unwrap();
    assert!(warning.contains("/acme/fetch/..."), "names the route: {warning}");
    assert_eq!(logs.matches(GIVEN_UP).count(), 1, "once");

    // The handler component is still reused.
    assert_eq!(get(&server, "/acme/handler/").await.0, 200);
    let kept_before = server.logs().matches(KEPT).count();
    assert_eq!(get(&server, "/acme/handler/").await.0, 200);
    server.logged(KEPT, kept_before + 1, Duration::from_secs(5)).await;
}

/// Python's 14 core module instances past a lowered `POOL_CORE_INSTANCES`:
/// refused with wasmtime's count and the setting that raises the limit.
#[test]
fn a_component_past_the_pools_shape_is_refused_naming_the_setting() {
    let file = crate::helpers::component("python_hello");
    let route = format!("/py/...={}", file.display());
    let (status, stderr) = crate::helpers::run_to_exit(
        &["run", "--addr", "127.0.0.1:0", &route],
        &[("POOL_CORE_INSTANCES", "8")],
    );
    assert!(!status.success());
    assert!(stderr.contains("14 core module instances"), "{stderr}");
    assert!(stderr.contains("POOL_CORE_INSTANCES"), "{stderr}");
}
