//! The web console: its files and headers over a real socket, and the
//! browser tests (`tests/browser/`, Playwright driving Debian's headless
//! Chromium) against a real `wasmwiz serve`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::helpers::{Api, ServeEnv, clean_command, client, component};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The Chromium the browser tests drive: `CHROMIUM`, else Debian's.
fn chromium() -> PathBuf {
    let path =
        std::env::var_os("CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from);
    assert!(
        path.exists(),
        "the browser tests need Chromium at {} (Debian: `apt-get install chromium`; \
         .ci/run installs it), or CHROMIUM=/path/to/chromium",
        path.display()
    );
    path
}

#[tokio::test]
async fn the_console_is_served_from_the_binary_with_a_strict_policy() {
    let env = ServeEnv::sqlite();
    let key = env.tenant("acme", "free", false);
    let server = env.serve();
    let http = client();
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
        ("/console/icon.svg", "image/svg+xml"),
    ] {
        let response = http.get(server.console_url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind), "{path}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }
    let page = http.get(server.console_url("/console")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("<script type=\"module\" src=\"/console/console.js\">"), "{page}");
    // Nothing in the page names another origin.
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("//cdn"));
    let missing = http.get(server.console_url("/console/nope.js")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    // Never on the serving listener, where tenants' pages answer: not on
    // its address, nor under any host name a tenant may hold.
    for host in [None, Some("acme.test"), Some("console.example.com")] {
        let mut request = http.get(server.url("/console/"));
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 404, "/console on the serving listener, host {host:?}");
        let body = response.text().await.unwrap();
        assert!(!body.contains("<script"), "{body}");
    }
    // The console is a reserved path: no tenant can deploy over it.
    let api = Api::new(&server, &key);
    let digest = api.upload_component("hello").await;
    let (status, body) =
        api.deploy(serde_json::json!({ "route": "/console/...", "component": digest })).await;
    assert_eq!(status, 400, "{body}");

    // What the console signs in with: the caller's tenant, tier and key.
    let (status, me) = api.call(api.request(reqwest::Method::GET, "/api/v1/me")).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["tenant"], "acme");
    assert_eq!(me["tier"], "free");
    assert!(key.starts_with(me["prefix"].as_str().unwrap()), "{me}");
    assert_eq!(me["scopes"], serde_json::json!(["deploy", "read"]));
    let anonymous = client().get(server.url("/api/v1/me")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn the_admins_tenant_list_shows_todays_usage() {
    let env = ServeEnv::sqlite();
    let key = env.tenant("acme", "free", false);
    let admin = env.tenant("ops", "pro", true);
    let server = env.serve();
    Api::new(&server, &key).deploy_component("hostile", "/acme/h/...").await;
    for path in ["/acme/h/ok", "/acme/h/ok", "/acme/h/trap"] {
        client().get(server.url(path)).send().await.unwrap();
    }
    let admin = Api::new(&server, &admin);
    let (status, tenants) =
        admin.call(admin.request(reqwest::Method::GET, "/api/v1/tenants")).await;
    assert_eq!(status, 200, "{tenants}");
    let acme = tenants.as_array().unwrap().iter().find(|t| t["name"] == "acme").unwrap();
    assert_eq!(acme["tier"], "free");
    assert_eq!(acme["today"]["invocations"], 3, "{acme}");
    assert_eq!(acme["today"]["errors"]["trap"], 1, "{acme}");
    let ops = tenants.as_array().unwrap().iter().find(|t| t["name"] == "ops").unwrap();
    assert_eq!(ops["today"]["invocations"], 0, "{ops}");
    // A tenant's key cannot list tenants.
    let tenant = Api::new(&server, &key);
    let (status, _) = tenant.call(tenant.request(reqwest::Method::GET, "/api/v1/tenants")).await;
    assert_eq!(status, 403);
}

/// Every browser scenario of `tests/browser/console.spec.mjs`, against one
/// node on the embedded store; screenshots land in
/// `target/console-screenshots/`.
#[test]
fn the_console_works_in_a_real_browser() {
    let browser = repo_root().join("tests/browser");
    let runner = browser.join("node_modules/.bin/playwright");
    assert!(
        runner.exists(),
        "the browser tests' packages are not installed: run scripts/test.sh (it runs \
         `npm ci` in tests/browser), or `npm ci` there yourself"
    );
    let chromium = chromium();
    let mut env = ServeEnv::sqlite();
    // The browser's own requests and the test's invocations come from one
    // address; the free tier's per-minute quota is not under test here.
    env.set("LOG_LEVEL", "info");
    let tenant = env.tenant("acme", "basic", false);
    let admin = env.tenant("ops", "pro", true);
    let server = env.serve();
    let screenshots =
        Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("console-screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let output = clean_command(&runner)
        .args(["test", "--reporter=line"])
        .current_dir(&browser)
        .env("CONSOLE_BASE", server.console_url(""))
        .env("SERVING_BASE", server.url(""))
        .env("TENANT", "acme")
        .env("TENANT_KEY", &tenant)
        .env("ADMIN_KEY", &admin)
        .env("CHROMIUM", &chromium)
        .env("SCREENSHOTS", &screenshots)
        .env("HELLO_WASM", component("hello"))
        .env("GREETING_WASM", component("config_greeting"))
        .env("HOSTILE_WASM", component("hostile"))
        .env("ECHO_WASM", component("echo"))
        .env("BAD_IMPORT_WASM", component("bad_import"))
        .stdin(Stdio::null())
        .output()
        .expect("running playwright");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser tests failed:\n{stdout}\n{stderr}\n--- server log ---\n{}",
        server.logs()
    );
    for page in [
        "signin",
        "deployments",
        "deploy",
        "history",
        "canary",
        "triggers",
        "usage",
        "logs",
        "keys",
        "admin",
    ] {
        let shot = screenshots.join(format!("{page}.png"));
        assert!(shot.metadata().is_ok_and(|m| m.len() > 1000), "no screenshot {}", shot.display());
    }
}
