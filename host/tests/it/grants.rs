//! Route ownership and deployment history: tenants deploy only inside what
//! they are granted; a rollback returns to what was live before.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Api, ServeEnv, Server, component, on_both_stores};

on_both_stores!(
    squatting_the_root_is_refused_and_a_granted_tenant_deploys_under_it,
    every_tenant_deploys_in_its_own_namespace_by_default,
    an_admin_grants_and_revokes_routes_and_hosts,
    grants_of_two_tenants_never_overlap,
    a_store_from_before_grants_keeps_serving_its_routes,
    rollback_returns_to_what_was_live_before,
    routes_with_characters_spin_gives_no_meaning_are_refused,
    the_cli_rolls_back_deletes_and_shows_history_by_route,
);

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

/// `POST /api/v1/tenants/{tenant}/grants` with `body` through `api`.
async fn grant(api: &Api, tenant: &str, body: Value) -> (u16, Value) {
    api.call(api.request(Method::POST, &format!("/api/v1/tenants/{tenant}/grants")).json(&body))
        .await
}

async fn text(server: &Server, path: &str, host: Option<&str>) -> (u16, String) {
    let mut request = crate::helpers::client().get(server.url(path));
    if let Some(host) = host {
        request = request.header("host", host);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn squatting_the_root_is_refused_and_a_granted_tenant_deploys_under_it(env: ServeEnv) {
    let admin = env.tenant("ops", "pro", true);
    let squatter = env.tenant("squat", "free", false);
    let shop = env.tenant("shopper", "pro", false);
    let server = env.serve();
    let (admin, squatter, shop) =
        (Api::new(&server, &admin), Api::new(&server, &squatter), Api::new(&server, &shop));

    let digest = squatter.upload_component("hello").await;
    let (status, body) = squatter.deploy(json!({ "route": "/...", "component": digest })).await;
    assert_eq!((status, code(&body)), (403, "route_not_granted"), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("/squat/..."), "the refusal names what it may use: {message}");
    assert_eq!(text(&server, "/anything", None).await.0, 404, "nothing took the root");

    let (status, body) = grant(&admin, "shopper", json!({ "route": "/shop/..." })).await;
    assert_eq!(status, 201, "{body}");
    assert!(body["id"].as_str().unwrap().starts_with("grt_"), "{body}");
    shop.deploy_component("echo", "/shop/...").await;
    let (status, body) =
        squatter.deploy(json!({ "route": "/shop/cart", "component": digest })).await;
    assert_eq!((status, code(&body)), (403, "route_not_granted"), "{body}");
    let (status, _) = text(&server, "/shop/cart", None).await;
    assert_eq!(status, 200);
}

async fn every_tenant_deploys_in_its_own_namespace_by_default(mut env: ServeEnv) {
    env.set("WASMWIZ_BASE_DOMAIN", "edge.test");
    let acme = env.tenant("acme", "pro", false);
    let server = env.serve();
    let acme = Api::new(&server, &acme);
    acme.deploy_component("hello", "/acme/hello").await;
    let digest = acme.upload_component("echo").await;
    for (route, host, status) in [
        ("/acme/...", None, 201),
        ("/...", Some("acme.edge.test"), 201),
        ("/x", Some("bob.edge.test"), 403),
        ("/acmex", None, 403),
        ("/acme", None, 201),
    ] {
        let (got, body) =
            acme.deploy(json!({ "route": route, "host": host, "component": digest })).await;
        assert_eq!(got, status, "{route} on {host:?}: {body}");
    }
    assert_eq!(text(&server, "/acme/hello", None).await, (200, "Hello, world!\n".to_string()));
    let (status, _) = text(&server, "/anything", Some("acme.edge.test")).await;
    assert_eq!(status, 200, "the tenant's own host");
    let (_, grants) = acme.call(acme.request(Method::GET, "/api/v1/tenants/acme/grants")).await;
    assert_eq!(
        grants["defaults"],
        json!([{ "route": "/acme/..." }, { "host": "acme.edge.test" }]),
        "{grants}"
    );
    let (status, _) = acme.call(acme.request(Method::GET, "/api/v1/tenants/ops/grants")).await;
    assert_eq!(status, 404, "another tenant's grants are not shown");
}

async fn an_admin_grants_and_revokes_routes_and_hosts(env: ServeEnv) {
    let admin = env.tenant("ops", "pro", true);
    let acme = env.tenant("acme", "pro", false);
    let server = env.serve();
    let (admin, acme) = (Api::new(&server, &admin), Api::new(&server, &acme));
    let digest = acme.upload_component("hello").await;

    let (status, body) = grant(&acme, "acme", json!({ "route": "/shop/..." })).await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "only admins grant");
    let (status, route_grant) = grant(&admin, "acme", json!({ "route": "/shop/..." })).await;
    assert_eq!(status, 201, "{route_grant}");
    let (status, host_grant) = grant(&admin, "acme", json!({ "host": "Shop.Example.com" })).await;
    assert_eq!((status, &host_grant["host"]), (201, &json!("shop.example.com")), "{host_grant}");
    let (status, body) = grant(&admin, "acme", json!({ "route": "/a", "host": "a.example" })).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = grant(&admin, "nobody", json!({ "route": "/x/..." })).await;
    assert_eq!(status, 404, "{body}");

    let (_, list) = admin.call(admin.request(Method::GET, "/api/v1/tenants/acme/grants")).await;
    assert_eq!(list["grants"].as_array().unwrap().len(), 2, "{list}");
    assert_eq!(list["grants"][0]["route"], "/shop/...");

    let (status, shop) = acme.deploy(json!({ "route": "/shop/cart", "component": digest })).await;
    assert_eq!(status, 201, "{shop}");
    let (status, _) = acme
        .deploy(json!({ "route": "/...", "host": "shop.example.com", "component": digest }))
        .await;
    assert_eq!(status, 201);

    // Revoking a grant a deployment needs is refused until it is deleted.
    let revoke = |id: &str| format!("/api/v1/tenants/acme/grants/{id}");
    let route_id = route_grant["id"].as_str().unwrap();
    let (status, body) = admin.call(admin.request(Method::DELETE, &revoke(route_id))).await;
    assert_eq!((status, code(&body)), (409, "grant_in_use"), "{body}");
    let id = shop["id"].as_str().unwrap();
    let (status, _) =
        acme.call(acme.request(Method::DELETE, &format!("/api/v1/deployments/{id}"))).await;
    assert_eq!(status, 204);
    let (status, _) = admin.call(admin.request(Method::DELETE, &revoke(route_id))).await;
    assert_eq!(status, 204);
    let (status, _) = admin.call(admin.request(Method::DELETE, &revoke(route_id))).await;
    assert_eq!(status, 404, "already revoked");
    let (status, body) = acme.deploy(json!({ "route": "/shop/cart", "component": digest })).await;
    assert_eq!((status, code(&body)), (403, "route_not_granted"), "{body}");

    // The same through the command line.
    let out = env.admin(&["tenant", "grant", "acme", "--route", "/docs/..."]);
    assert!(out.starts_with("granted /docs/... to tenant acme (grt_"), "{out}");
    let out = env.admin(&["tenant", "grants", "acme"]);
    assert!(out.contains("default\t/acme/...") && out.contains("\t/docs/..."), "{out}");
    let docs_id =
        out.lines().find(|l| l.ends_with("/docs/...")).unwrap().split('\t').next().unwrap();
    let out = env.admin(&["tenant", "revoke", "acme", docs_id]);
    assert!(out.contains("revoked"), "{out}");
    let (status, _, stderr) = env.command(&["admin", "tenant", "grant", "acme", "--route", "/..."]);
    assert!(!status.success() && stderr.contains("granted to no one"), "{stderr}");
}

async fn grants_of_two_tenants_never_overlap(env: ServeEnv) {
    let admin = env.tenant("ops", "pro", true);
    env.tenant("acme", "pro", false);
    env.tenant("bob", "pro", false);
    let server = env.serve();
    let admin = Api::new(&server, &admin);
    assert_eq!(grant(&admin, "acme", json!({ "route": "/shop/..." })).await.0, 201);
    for (tenant, body, status, why) in [
        ("bob", json!({ "route": "/shop/cart" }), 409, "inside acme's grant"),
        ("bob", json!({ "route": "/shop" }), 409, "the root of acme's grant"),
        ("bob", json!({ "route": "/acme/x/..." }), 409, "inside acme's default"),
        ("acme", json!({ "route": "/shop/..." }), 409, "the same grant twice"),
        ("bob", json!({ "route": "/..." }), 400, "the root is granted to no one"),
        ("bob", json!({ "route": "/api/..." }), 400, "a reserved path"),
        ("bob", json!({ "route": "/console" }), 400, "a reserved path"),
        ("bob", json!({ "route": "/shopping/..." }), 201, "a sibling"),
    ] {
        let (got, answer) = grant(&admin, tenant, body.clone()).await;
        assert_eq!(got, status, "{why}: {body} -> {answer}");
    }
    assert_eq!(grant(&admin, "acme", json!({ "host": "x.example" })).await.0, 201);
    assert_eq!(grant(&admin, "bob", json!({ "host": "X.example" })).await.0, 409);

    // A new tenant's name is its default prefix: not one already granted,
    // nor a reserved path.
    for (name, status) in [("shop", 409), ("api", 400), ("console", 400), ("carol", 201)] {
        let (got, body) = admin
            .call(admin.request(Method::POST, "/api/v1/tenants").json(&json!({ "name": name })))
            .await;
        assert_eq!(got, status, "{name}: {body}");
    }
}

async fn a_store_from_before_grants_keeps_serving_its_routes(env: ServeEnv) {
    // Two tenants deployed routes before grants existed, one of them the
    // whole route space; made here the way that version left the store.
    let acme = env.tenant("acme", "pro", false);
    env.tenant("bob", "pro", false);
    let server = env.serve();
    let acme_api = Api::new(&server, &acme);
    let hello = acme_api.upload_component("hello").await;
    drop(server);
    let acme_id = sql(&env, "SELECT id FROM tenants WHERE name = 'acme'");
    let bob_id = sql(&env, "SELECT id FROM tenants WHERE name = 'bob'");
    let copy_component = format!(
        "INSERT INTO components SELECT {bob_id}, digest, name, size, world, compile_ms, bytes, created_at FROM components WHERE tenant_id = {acme_id}"
    );
    sql(&env, &copy_component);
    for (id, tenant, route, versions) in
        [("dep_legacyshop", &acme_id, "/shop/...", 2), ("dep_legacyroot", &bob_id, "/...", 1)]
    {
        sql(
            &env,
            &format!(
                "INSERT INTO deployments (id, tenant_id, route, host, live_version, created_at, updated_at) \
             VALUES ('{id}', {tenant}, '{route}', '', {versions}, 1, 1)"
            ),
        );
        for v in 1..=versions {
            sql(
                &env,
                &format!(
                    "INSERT INTO deployment_versions (deployment_id, version, component, created_at) \
                 VALUES ('{id}', {v}, '{hello}', {v})"
                ),
            );
        }
    }
    // The store as it was before this version's migration.
    for statement in [
        "DROP TABLE route_grants",
        "DROP TABLE deployment_switches",
        "DELETE FROM _sqlx_migrations WHERE version = 6",
        "DELETE FROM settings WHERE name = 'grants_backfilled'",
    ] {
        sql(&env, statement);
    }

    let server = env.serve();
    assert_eq!(text(&server, "/shop/x", None).await.0, 200);
    assert_eq!(text(&server, "/anything", None).await.0, 200, "the root keeps serving");
    let acme_api = Api::new(&server, &acme);
    let (_, grants) =
        acme_api.call(acme_api.request(Method::GET, "/api/v1/tenants/acme/grants")).await;
    assert_eq!(grants["grants"][0]["route"], "/shop/...", "granted what it served: {grants}");
    // Its history is known: a rollback returns to version 1.
    let (status, body) = acme_api
        .call(acme_api.request(Method::POST, "/api/v1/deployments/dep_legacyshop/rollback"))
        .await;
    assert_eq!((status, &body["version"]), (200, &json!(1)), "{body}");
    // The ungrantable root keeps serving and may get a new version.
    let bob_key = env.admin(&["key", "create", "bob"]).trim().to_string();
    let bob = Api::new(&server, &bob_key);
    let (status, body) = bob.deploy(json!({ "route": "/...", "component": hello })).await;
    assert_eq!((status, &body["version"]), (201, &json!(2)), "{body}");
}

/// Runs one SQL statement on the test's store; returns its first value.
fn sql(env: &ServeEnv, statement: &str) -> String {
    let output = match &env.backend {
        crate::helpers::Backend::Postgres(db) => std::process::Command::new("psql")
            .args([db.url.as_str(), "-v", "ON_ERROR_STOP=1", "-qAt", "-c", statement])
            .output()
            .unwrap(),
        crate::helpers::Backend::Sqlite => std::process::Command::new("sqlite3")
            .arg(env.data_dir().join("wasmwiz.db"))
            .arg(statement)
            .output()
            .expect("sqlite3 is installed"),
    };
    assert!(output.status.success(), "{statement}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

async fn rollback_returns_to_what_was_live_before(env: ServeEnv) {
    let key = env.tenant("acme", "pro", false);
    let server = env.serve();
    let acme = Api::new(&server, &key);
    let route = "/acme/app";
    let a = acme.deploy_component("hello", route).await;
    let id = a["id"].as_str().unwrap().to_string();
    acme.deploy_component("echo", route).await;
    let rollback = |body: Option<Value>| {
        let mut request = acme.request(Method::POST, &format!("/api/v1/deployments/{id}/rollback"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        acme.call(request)
    };
    let (status, body) = rollback(None).await;
    assert_eq!((status, &body["version"]), (200, &json!(1)), "{body}");
    let c = acme.deploy_component("stream", route).await;
    assert_eq!(c["version"], 3);
    // Back to what was live before C: A, not B.
    let (status, body) = rollback(None).await;
    assert_eq!((status, &body["version"]), (200, &json!(1)), "{body}");
    assert_eq!(text(&server, route, None).await, (200, "Hello, world!\n".to_string()));
    let (status, body) = rollback(None).await;
    assert_eq!((status, code(&body)), (409, "conflict"), "nothing before A: {body}");

    let (status, body) = rollback(Some(json!({ "version": 2 }))).await;
    assert_eq!((status, &body["version"]), (200, &json!(2)), "{body}");
    let (status, body) = rollback(Some(json!({ "version": 2 }))).await;
    assert_eq!(status, 409, "already live: {body}");
    let (status, body) = rollback(Some(json!({ "version": 9 }))).await;
    assert_eq!(status, 400, "{body}");
    // A rollback after --to returns to what was live before it.
    let (status, body) = rollback(None).await;
    assert_eq!((status, &body["version"]), (200, &json!(1)), "{body}");

    let (status, versions) =
        acme.call(acme.request(Method::GET, &format!("/api/v1/deployments/{id}/versions"))).await;
    assert_eq!(status, 200, "{versions}");
    let versions = versions.as_array().unwrap();
    let numbers: Vec<i64> = versions.iter().map(|v| v["version"].as_i64().unwrap()).collect();
    assert_eq!(numbers, [3, 2, 1], "newest first");
    let live: Vec<bool> = versions.iter().map(|v| v["live"].as_bool().unwrap()).collect();
    assert_eq!(live, [false, false, true]);
    let reasons = |v: &Value| -> Vec<String> {
        v["live_periods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["reason"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(reasons(&versions[2]), ["deploy", "rollback", "rollback", "rollback"]);
    assert_eq!(reasons(&versions[1]), ["deploy", "rollback_to"]);
    assert_eq!(reasons(&versions[0]), ["deploy"]);
    let periods = versions[2]["live_periods"].as_array().unwrap();
    assert!(periods[..3].iter().all(|p| p["until"].is_string()), "{periods:?}");
    assert!(periods[3].get("until").is_none(), "live now: {periods:?}");
    let (status, _) =
        acme.call(acme.request(Method::GET, "/api/v1/deployments/dep_nope/versions")).await;
    assert_eq!(status, 404);
}

async fn routes_with_characters_spin_gives_no_meaning_are_refused(env: ServeEnv) {
    let key = env.tenant("acme", "pro", false);
    let server = env.serve();
    let acme = Api::new(&server, &key);
    let digest = acme.upload_component("hello").await;
    let (status, body) =
        acme.deploy(json!({ "route": "/acme/visits2/*", "component": digest })).await;
    assert_eq!((status, code(&body)), (400, "invalid_route"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("/acme/visits2/..."), "{body}");
    let (status, body) = acme.deploy(json!({ "route": "/acme/:id", "component": digest })).await;
    assert_eq!((status, code(&body)), (400, "invalid_route"), "{body}");
}

async fn the_cli_rolls_back_deletes_and_shows_history_by_route(mut env: ServeEnv) {
    let key = env.tenant("acme", "pro", false);
    let server = env.serve();
    env.set("WASMWIZ_URL", &server.url("")).set("WASMWIZ_API_KEY", &key);
    let hello = component("hello");
    let echo = component("echo");

    // A route the server would refuse is refused before anything is sent.
    let (status, _, stderr) =
        env.command(&["deploy", hello.to_str().unwrap(), "--route", "/acme/x/*"]);
    assert!(!status.success() && stderr.contains("/acme/x/..."), "{stderr}");
    // So is a route outside the tenant's grants, naming them, before the
    // upload (a Python component is 18 MB and seconds of compiling).
    let (status, _, stderr) =
        env.command(&["deploy", hello.to_str().unwrap(), "--route", "/shop/..."]);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("tenant acme may deploy only inside what it is granted (/acme/...)")
            && stderr.contains("Nothing was uploaded"),
        "{stderr}"
    );
    let acme = Api::new(&server, &key);
    let (_, components) = acme.call(acme.request(Method::GET, "/api/v1/components")).await;
    assert_eq!(components, json!([]), "nothing was uploaded");

    for file in [&hello, &echo] {
        let (status, _, stderr) =
            env.command(&["deploy", file.to_str().unwrap(), "--route", "/acme/app/..."]);
        assert!(status.success(), "{stderr}");
    }
    let (status, stdout, stderr) = env.command(&["deployments"]);
    assert!(status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let (version, component) =
        (lines[0].find("VERSION").unwrap(), lines[0].find("COMPONENT").unwrap());
    assert!(lines[1][version..].starts_with("2 "), "aligned:\n{stdout}");
    assert!(lines[1][component..].starts_with("echo ("), "the component's name:\n{stdout}");

    let (status, stdout, stderr) = env.command(&["rollback", "/acme/app/..."]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("is on version 1 (hello ("), "{stdout}");
    let (status, stdout, _) = env.command(&["rollback", "/acme/app/...", "--to", "2"]);
    assert!(status.success() && stdout.contains("version 2"), "{stdout}");
    let (status, stdout, stderr) = env.command(&["deployments", "--history", "/acme/app/..."]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.starts_with("VERSION"), "{stdout}");
    assert!(stdout.contains("2 *") && stdout.contains("(rollback_to)"), "{stdout}");

    // Logs of a deployment named by its route; an id or a route the
    // tenant does not have is refused, not answered with nothing.
    assert_eq!(text(&server, "/acme/app/x", None).await.0, 200);
    let (status, stdout, stderr) =
        env.command(&["logs", "--deployment", "/acme/app/...", "--outcome", "ok"]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains(" 200 ok  GET /acme/app/x"), "{stdout}");
    for unknown in ["dep_nothere", "/acme/nothing/..."] {
        let (status, stdout, stderr) = env.command(&["logs", "--deployment", unknown]);
        assert!(!status.success() && stdout.is_empty(), "{unknown}: {stdout}");
        assert!(stderr.contains("you have no deployment"), "{unknown}: {stderr}");
    }

    let (status, stdout, stderr) = env.command(&["delete", "/acme/app/..."]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.starts_with("deleted dep_"), "{stdout}");
    assert_eq!(text(&server, "/acme/app", None).await.0, 404);
    let (status, _, stderr) = env.command(&["delete", "/acme/app/..."]);
    assert!(!status.success() && stderr.contains("no deployment on /acme/app/..."), "{stderr}");

    // A server that is not there: the message says how to point elsewhere.
    drop(server);
    let (status, _, stderr) = env.command(&["deployments"]);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("cannot reach the WasmWiz server at"), "{stderr}");
    assert!(stderr.contains("WASMWIZ_URL or --url"), "{stderr}");
}
