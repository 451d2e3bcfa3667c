//! API conformance: Schemathesis (tests/api/, pinned) generates requests
//! for every operation of `/api/docs` and checks every answer against the
//! document (status codes, schemas, content types, no 5xx), with a
//! tenant's key and with an admin's, on each store, including its
//! stateful phase (upload -> deploy -> versions -> rollback -> delete,
//! through the document's links). Meanwhile another tenant's objects sit
//! on the same node: none is read or changed. The run is reproducible: a
//! fixed number of examples from a fixed seed (tests/api/schemathesis.toml).

use std::path::PathBuf;
use std::process::Command;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Api, ServeEnv, component, kept};

mod sqlite {
    #[tokio::test]
    async fn the_api_answers_as_documented_to_a_tenant_and_an_admin() {
        super::conformance(super::ServeEnv::sqlite()).await
    }
}

mod postgres {
    #[tokio::test]
    async fn the_api_answers_as_documented_to_a_tenant_and_an_admin() {
        super::conformance(super::ServeEnv::postgres()).await
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Schemathesis command, installed by scripts/test.sh.
fn schemathesis() -> PathBuf {
    let st = repo().join("target/toolchains/schemathesis/bin/st");
    assert!(st.exists(), "{} is missing: run scripts/test.sh", st.display());
    st
}

/// Everything another tenant owns, as that tenant sees it.
async fn belongings(api: &Api) -> Value {
    let mut seen = serde_json::Map::new();
    for path in ["/api/v1/components", "/api/v1/deployments", "/api/v1/keys"] {
        let (status, body) = api.call(api.request(Method::GET, path)).await;
        assert_eq!(status, 200, "{path}: {body}");
        seen.insert(path.to_string(), body);
    }
    let deployments = seen["/api/v1/deployments"].as_array().unwrap().clone();
    for deployment in deployments {
        let id = deployment["id"].as_str().unwrap();
        let path = format!("/api/v1/deployments/{id}/versions");
        let (status, body) = api.call(api.request(Method::GET, &path)).await;
        assert_eq!(status, 200, "{path}: {body}");
        seen.insert(path, body);
    }
    // Keys' last use changes as they are used: not a change of object.
    if let Some(keys) = seen.get_mut("/api/v1/keys").and_then(Value::as_array_mut) {
        for key in keys {
            key.as_object_mut().unwrap().remove("last_used_at");
        }
    }
    Value::Object(seen)
}

async fn conformance(env: ServeEnv) {
    let tenant_key = env.tenant("acme", "pro", false);
    let admin_key = env.tenant("ops", "pro", true);
    let other_key = env.tenant("globex", "pro", false);
    let server = env.serve();

    // The other tenant's objects: a component, two versions of a route, a
    // second key.
    let globex = Api::new(&server, &other_key);
    let deployment = globex.deploy_component("hello", "/globex/shop/...").await;
    globex.deploy_component("echo", "/globex/shop/...").await;
    let (status, _) =
        globex.call(globex.request(Method::POST, "/api/v1/keys").json(&json!({}))).await;
    assert_eq!(status, 201);
    let before = belongings(&globex).await;

    // A tenant's key cannot reach them by id.
    let acme = Api::new(&server, &tenant_key);
    let id = deployment["id"].as_str().unwrap();
    let digest = deployment["component"].as_str().unwrap();
    for (method, path) in [
        (Method::GET, format!("/api/v1/deployments/{id}/versions")),
        (Method::POST, format!("/api/v1/deployments/{id}/rollback")),
        (Method::DELETE, format!("/api/v1/deployments/{id}")),
        (Method::DELETE, format!("/api/v1/components/{digest}")),
    ] {
        let (status, body) = acme.call(acme.request(method.clone(), &path)).await;
        assert_eq!(status, 404, "{method} {path} with another tenant's key: {body}");
    }

    // Each run's own key must not be revoked under it, and each gets a
    // component of its own to deploy (see tests/api/hooks.py).
    let mut runs = Vec::new();
    for (who, tenant, key) in [("tenant", "acme", &tenant_key), ("admin", "ops", &admin_key)] {
        let api = Api::new(&server, key);
        let (_, me) = api.call(api.request(Method::GET, "/api/v1/me")).await;
        let key_id = me["key_id"].as_str().expect("the key's id").to_string();
        let digest = api.upload_component("hello").await;
        runs.push((who, tenant, key, key_id, digest));
    }
    let docs = server.url("/api/docs");
    for (who, tenant, key, key_id, digest) in runs {
        // The key still works when its run starts.
        let api = Api::new(&server, key);
        let (status, me) = api.call(api.request(Method::GET, "/api/v1/me")).await;
        assert_eq!(status, 200, "the {who} key before its run: {me}");
        let report =
            std::env::temp_dir().join(format!("wasmwiz-conformance-{}", rand::random::<u64>()));
        let output = Command::new(schemathesis())
            .current_dir(repo().join("tests/api"))
            .env("SCHEMATHESIS_HOOKS", "hooks")
            .env("PYTHONPATH", repo().join("tests/api"))
            .env("WASMWIZ_CONFORMANCE_COMPONENT", component("hello"))
            .env("WASMWIZ_CONFORMANCE_TENANT", tenant)
            .env("WASMWIZ_CONFORMANCE_KEY_ID", &key_id)
            .env("WASMWIZ_CONFORMANCE_DIGEST", &digest)
            // The hooks' own choices, seeded per run (the tenant's and the
            // admin's differ, and are the same on every machine).
            .env("WASMWIZ_CONFORMANCE_SEED", format!("conformance-{who}"))
            .args(["--config-file", "schemathesis.toml", "run", &docs])
            .args(["--header", &format!("Authorization: Bearer {key}")])
            // Bounded by counts and seeded in schemathesis.toml, never by
            // time: a slow machine runs the same requests as a fast one.
            .args(["--checks", "all", "--workers", "1"])
            .args(["--phases", "examples,coverage,fuzzing,stateful"])
            .args(["--report", "junit", "--report-dir"])
            .arg(&report)
            .output()
            .expect("running schemathesis");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "Schemathesis with the {who} key found answers that break /api/docs:\n{}\n{}\nserver log:\n{}",
            kept(&format!("conformance-{who}-stdout"), &stdout, 120),
            kept(&format!("conformance-{who}-stderr"), &stderr, 20),
            kept(&format!("conformance-{who}-server"), &server.logs(), 30),
        );
        // The run did exercise the API, stateful phase included.
        assert!(stdout.contains("Stateful"), "no stateful phase:\n{stdout}");
        let _ = std::fs::remove_dir_all(&report);
        // After the tenant's run, the other tenant's objects are as they
        // were (an admin may act on any tenant: not checked after its run).
        if who == "tenant" {
            let alive = reqwest::get(server.url("/health")).await;
            assert!(
                alive.is_ok(),
                "the node is gone after the run:\n{}",
                kept("conformance-server", &server.logs(), 40)
            );
            let globex = Api::new(&server, &other_key);
            let after = belongings(&globex).await;
            assert_eq!(before, after, "another tenant's objects changed during the tenant's run");
        }
    }
    // Nor did the node fail a request on its side (Schemathesis checks the
    // answers it got; this reads the node's own log).
    let logs = server.logs();
    for bad in ["panicked", "internal error"] {
        let at = logs.lines().filter(|l| l.contains(bad)).take(5).collect::<Vec<_>>().join("\n");
        assert!(
            at.is_empty(),
            "the node's log says {bad:?}:\n{at}\n{}",
            kept("conformance-server", &logs, 10)
        );
    }
}
