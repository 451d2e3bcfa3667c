//! Operations: metrics, readiness, logs, timing, and the scripts of the
//! operations guide (backup/restore drill on the real PostgreSQL).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Api, Backend, ServeEnv, Server, client, eventually};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn text(url: &str) -> (u16, String) {
    let response = client().get(url).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// A server with tenant acme (hello on `/hello/...`, hostile on `/h/...`),
/// after a few requests of every kind.
async fn busy_server(env: &ServeEnv) -> Server {
    let key = env.tenant("acme", "pro", false);
    env.grant("acme", &["/hello/...", "/h/..."]);
    let server = env.serve();
    let acme = Api::new(&server, &key);
    acme.deploy_component("hello", "/hello/...").await;
    acme.deploy_component("hostile", "/h/...").await;
    for path in ["/hello/some/raw/path/123", "/hello", "/h/trap", "/nowhere"] {
        client().get(server.url(path)).send().await.unwrap();
    }
    let _ = acme.call(acme.request(Method::GET, "/api/v1/deployments")).await;
    server
}

#[tokio::test]
async fn metrics_are_exported_with_bounded_labels() {
    let env = ServeEnv::sqlite();
    let server = busy_server(&env).await;
    let (status, metrics) = text(&server.metrics_url()).await;
    assert_eq!(status, 200);
    for expected in [
        r#"wasmwiz_http_requests_total{route="/hello/...",status="200",tenant="acme"} 2"#,
        r#"wasmwiz_http_requests_total{route="/h/...",status="500",tenant="acme"} 1"#,
        r#"wasmwiz_http_requests_total{route="-",status="404",tenant="-"} 1"#,
        r#"wasmwiz_http_requests_total{route="/api",status="200",tenant="-"}"#,
        r#"wasmwiz_wasm_executions_total{outcome="trap",tenant="acme"} 1"#,
        r#"wasmwiz_wasm_executions_total{outcome="ok",tenant="acme"} 2"#,
        r#"wasmwiz_http_request_duration_seconds_bucket{route="/hello/...",tenant="acme",le="0.0001"}"#,
        r#"wasmwiz_deployments_live 2"#,
        r#"wasmwiz_instance_pool_capacity 1000"#,
        r#"wasmwiz_store_up 1"#,
        r#"wasmwiz_components_uploaded_total{result="created"} 2"#,
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(expected), "missing `{expected}` in:\n{metrics}");
    }
    assert!(!metrics.contains("/some/raw/path"), "a raw path became a label");
}

/// Every `wasmwiz_*` name in a text, without histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(offset) = text[i..].find("wasmwiz_") {
        let start = i + offset;
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(text.len() - start);
        // Skip words that merely contain the prefix (e.g. `job="wasmwiz"`).
        if start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            names.insert(base.to_string());
        }
        i = end;
    }
    names
}

#[tokio::test]
async fn every_metric_in_the_alert_rules_and_dashboards_is_exported() {
    let env = ServeEnv::sqlite();
    env.admin(&["tier", "set", "pro", "--min-schedule-interval", "1"]);
    let server = busy_server(&env).await;
    // A schedule and a queue at work: their series exist once they have
    // fired and delivered.
    let acme = Api::new(&server, env.admin(&["key", "create", "acme"]).trim());
    let (_, deployments) = acme.call(acme.request(Method::GET, "/api/v1/deployments")).await;
    let hello =
        deployments.as_array().unwrap().iter().find(|d| d["route"] == "/hello/...").unwrap()["id"]
            .clone();
    for (path, body) in [
        (
            "/api/v1/schedules",
            json!({"deployment": hello, "cron": "@every 1s", "path": "/hello/tick"}),
        ),
        ("/api/v1/queues", json!({"name": "q", "deployment": hello, "path": "/hello/q"})),
    ] {
        let (status, answer) = acme.call(acme.request(Method::POST, path).json(&body)).await;
        assert_eq!(status, 201, "{answer}");
    }
    let (status, _) =
        acme.call(acme.request(Method::POST, "/api/v1/queues/q/messages").body("m")).await;
    assert_eq!(status, 202);
    let exported = eventually("the triggers' series", Duration::from_secs(30), || async {
        let (_, metrics) = text(&server.metrics_url()).await;
        let exported: BTreeSet<String> = metrics
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect();
        ["wasmwiz_schedule_firings_total", "wasmwiz_queue_deliveries_total", "wasmwiz_queue_depth"]
            .iter()
            .all(|name| exported.contains(*name))
            .then_some(exported)
    })
    .await;

    let mut named = BTreeSet::new();
    let mut files = vec![repo().join("deploy/prometheus/alerts.yml")];
    for entry in std::fs::read_dir(repo().join("deploy/grafana/dashboards")).unwrap() {
        files.push(entry.unwrap().path());
    }
    for file in &files {
        named.extend(metric_names(&std::fs::read_to_string(file).unwrap()));
    }
    assert!(named.len() >= 10, "too few names found: {named:?}");
    let missing: Vec<_> = named.difference(&exported).collect();
    assert!(missing.is_empty(), "named in rules or dashboards but not exported: {missing:?}");
}

#[tokio::test]
async fn metrics_can_move_to_another_address_or_path_or_be_turned_off() {
    // By default on a listener of their own, never on the public one (they
    // name every tenant and route).
    let mut env = ServeEnv::sqlite();
    let server = env.serve();
    assert_eq!(text(&server.metrics_url()).await.0, 200);
    assert_eq!(text(&server.url("/metrics")).await.0, 404, "not on the public listener");
    drop(server);

    env.set("METRICS_ENDPOINT", "/internal/metrics");
    let server = env.serve();
    let internal = server.metrics_url().replace("/metrics", "/internal/metrics");
    assert_eq!(text(&internal).await.0, 200);
    assert_eq!(text(&server.metrics_url()).await.0, 404);
    drop(server);

    let port = crate::helpers::free_port();
    env.set("METRICS_ENDPOINT", "/metrics").set("METRICS_ADDR", &format!("127.0.0.1:{port}"));
    let server = env.serve();
    let (status, metrics) = text(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert_eq!(status, 200);
    assert!(metrics.contains("wasmwiz_build_info"));
    assert_eq!(text(&server.url("/metrics")).await.0, 404, "not on the public listener");
    drop(server);

    // On the public listener only when asked for by name.
    env.set("METRICS_ADDR", "public");
    let server = env.serve();
    assert_eq!(server.metrics, None);
    assert_eq!(text(&server.url("/metrics")).await.0, 200);
    drop(server);

    let mut env = ServeEnv::sqlite();
    env.set("PROMETHEUS_ENABLED", "false");
    let server = env.serve();
    assert_eq!(server.metrics, None);
    assert_eq!(text(&server.url("/metrics")).await.0, 404);
}

#[tokio::test]
async fn readiness_names_each_dependency() {
    let mut env = ServeEnv::postgres();
    env.set("REDIS_URL", "redis://127.0.0.1:1"); // nothing listens there
    let server = env.serve();
    assert_eq!(text(&server.url("/health")).await, (200, r#"{"status":"ok"}"#.to_string()));
    // The quota backend learns Redis is away at the first admission.
    let key = env.tenant("acme", "pro", false);
    env.grant("acme", &["/hello"]);
    Api::new(&server, &key).deploy_component("hello", "/hello").await;
    let _ = client().get(server.url("/hello")).send().await.unwrap();
    let (status, ready) = text(&server.url("/ready")).await;
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(status, 200, "a degraded node stays in the load balancer");
    assert_eq!(ready, json!({ "status": "degraded", "store": "ok", "quota": "degraded" }));
}

#[tokio::test]
async fn production_logs_are_json_lines_with_one_line_per_request() {
    let mut env = ServeEnv::sqlite();
    env.set("ENVIRONMENT", "production").set("SECRETS_KEY", &"5e".repeat(32));
    let server = busy_server(&env).await;
    server.wait_for_log_count("\"target\":\"wasmwiz::access\"", 4, Duration::from_secs(5));
    let logs = server.logs();
    let mut access = 0;
    let announced = ["listening on", "metrics on", "console on"];
    for line in logs.lines().filter(|l| !announced.iter().any(|a| l.starts_with(a))) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON line: {line}"));
        if value["target"] == "wasmwiz::access" {
            access += 1;
            let fields = &value["fields"];
            for field in ["request_id", "route", "tenant", "status", "duration_us"] {
                assert!(!fields[field].is_null(), "{field} missing from {line}");
            }
        }
    }
    assert!(access >= 4, "{access} access lines:\n{logs}");
    assert!(logs.contains(r#""tenant":"acme""#), "{logs}");

    let mut quiet = ServeEnv::sqlite();
    quiet.set("LOG_LEVEL", "warn");
    let mut server = quiet.serve();
    client().get(server.url("/nowhere")).send().await.unwrap();
    // Every line the process wrote, up to its exit.
    let logs = server.stop_and_read_log();
    assert!(!logs.contains("wasmwiz::access"), "LOG_LEVEL=warn still logs requests:\n{logs}");
}

#[tokio::test]
async fn server_timing_breaks_an_answer_down_when_enabled() {
    let mut env = ServeEnv::sqlite();
    env.set("SERVER_TIMING", "true");
    let key = env.tenant("acme", "pro", false);
    env.grant("acme", &["/hello"]);
    let server = env.serve();
    Api::new(&server, &key).deploy_component("hello", "/hello").await;
    let response = client().get(server.url("/hello")).send().await.unwrap();
    let timing = response.headers()["server-timing"].to_str().unwrap().to_string();
    let names: Vec<&str> = timing.split(", ").map(|part| part.split(';').next().unwrap()).collect();
    assert_eq!(names, ["quota", "instantiate", "guest"], "{timing}");
    assert!(timing.split(", ").all(|part| part.contains(";dur=")), "{timing}");
}

/// Runs a script of `scripts/` with `envs`; returns status, stdout, stderr.
fn script(name: &str, args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let output = Command::new(repo().join("scripts").join(name))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn every_operations_script_explains_itself() {
    for name in
        ["generate_secrets.sh", "backup.sh", "restore.sh", "load_test.sh", "collect-logs.sh"]
    {
        let (ok, stdout, _) = script(name, &["--help"], &[]);
        assert!(ok, "{name} --help failed");
        assert!(stdout.starts_with("Usage: scripts/"), "{name}: {stdout}");
    }
}

#[test]
fn generated_secrets_are_private_and_never_overwritten_unless_asked() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    let (ok, stdout, stderr) =
        script("generate_secrets.sh", &["-d", secrets.to_str().unwrap()], &[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("created"));
    assert_eq!(std::fs::metadata(&secrets).unwrap().permissions().mode() & 0o777, 0o700);
    let salt = std::fs::read_to_string(secrets.join("api_salt")).unwrap();
    assert!(salt.len() >= 32 && salt.bytes().all(|b| b.is_ascii_hexdigit()), "{salt}");
    let key = std::fs::read_to_string(secrets.join("secrets_key")).unwrap();
    assert!(key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
    for file in [
        "api_salt",
        "secrets_key",
        "postgres_password",
        "database_url",
        "redis_password",
        "redis_url",
        "grafana_admin_password",
    ] {
        let mode = std::fs::metadata(secrets.join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    let password = std::fs::read_to_string(secrets.join("postgres_password")).unwrap();
    assert!(std::fs::read_to_string(secrets.join("database_url")).unwrap().contains(&password));

    let (ok, stdout, _) = script("generate_secrets.sh", &["-d", secrets.to_str().unwrap()], &[]);
    assert!(ok && stdout.contains("kept"));
    assert_eq!(std::fs::read_to_string(secrets.join("api_salt")).unwrap(), salt, "overwritten");
    let (ok, _, _) =
        script("generate_secrets.sh", &["-d", secrets.to_str().unwrap(), "--force"], &[]);
    assert!(ok);
    assert_ne!(
        std::fs::read_to_string(secrets.join("api_salt")).unwrap(),
        salt,
        "--force did not replace"
    );
}

#[tokio::test]
async fn load_test_and_collect_logs_work_against_a_node() {
    let mut env = ServeEnv::sqlite();
    env.set("API_SALT", "a-secret-salt-of-at-least-32-characters!!")
        .set("WASMWIZ_URL", "http://someone:hunter2@example.test");
    env.admin(&["tier", "set", "thirty", "--per-minute", "30", "--per-day", "1000"]);
    let key = env.tenant("acme", "pro", false);
    let limited = env.tenant("limited", "thirty", false);
    env.grant("acme", &["/hello"]);
    let server = env.serve();
    Api::new(&server, &key).deploy_component("hello", "/hello").await;
    Api::new(&server, &limited).deploy_component("hello", "/limited/hello").await;

    let url = server.url("");
    let (ok, stdout, stderr) = script("load_test.sh", &["-u", &url, "-c", "4", "-n", "200"], &[]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("/health: 200 requests") && stdout.contains("/hello: 200 requests"),
        "{stdout}"
    );
    assert_eq!(
        stdout
            .matches("answers: 200 2xx, 0 429 (quota refusals), 0 other 4xx, 0 5xx, 0 failed")
            .count(),
        2,
        "{stdout}"
    );

    // Quota refusals are told apart, and the exit status says so.
    let output = Command::new(repo().join("scripts/load_test.sh"))
        .args(["-u", &url, "-c", "4", "-n", "100", "-p", "/limited/hello"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(3), "{stdout}");
    assert!(
        stdout.contains("429 (quota refusals)") && stdout.contains("quota was used up"),
        "{stdout}"
    );
    let refused: u64 = stdout
        .lines()
        .filter(|l| l.starts_with("answers:"))
        .nth(1)
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|part| part.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(refused >= 70, "{stdout}");
    let output = Command::new(repo().join("scripts/load_test.sh"))
        .args(["-u", &url, "-c", "2", "-n", "10", "-p", "/nowhere"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "a 404 is an error");
    // Without its tool it says what to install.
    let empty = tempfile::tempdir().unwrap();
    let missing_tool = Command::new("/bin/bash")
        .arg(repo().join("scripts/load_test.sh"))
        .args(["-u", &url, "-n", "10"])
        .env("PATH", empty.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&missing_tool.stderr);
    assert_eq!(missing_tool.status.code(), Some(1));
    assert!(stderr.contains("apt-get install nghttp2-client"), "{stderr}");

    let log = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        log.path(),
        format!(
            "2001-01-01T00:00:00.000000Z  INFO an old line\n{} INFO a line mentioning {key}\n  and its continuation\n",
            humantime::format_rfc3339_micros(std::time::SystemTime::now())
        ),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let collect = |args: &str, name: &str| {
        let tarball = dir.path().join(format!("{name}.tar.gz"));
        let output = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{} -u {url} -m {} {args} > {}",
                repo().join("scripts/collect-logs.sh").display(),
                server.metrics_url(),
                tarball.display()
            ))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let unpacked = dir.path().join(name);
        std::fs::create_dir(&unpacked).unwrap();
        assert!(
            Command::new("tar")
                .args(["-xzf", tarball.to_str().unwrap(), "-C", unpacked.to_str().unwrap()])
                .status()
                .unwrap()
                .success()
        );
        (unpacked.join("wasmwiz-debug"), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (root, stderr) =
        collect(&format!("-p {} -l {} -s 1h", server.pid(), log.path().display()), "with-log");
    let config = std::fs::read_to_string(root.join("config.txt")).unwrap();
    assert!(config.contains("API_SALT=<redacted>"), "the node's own environment: {config}");
    assert!(config.contains("someone:<redacted>@example.test"), "{config}");
    assert!(!config.contains("hunter2") && !config.contains("a-secret-salt"), "{config}");
    let metrics = std::fs::read_to_string(root.join("metrics.txt")).unwrap();
    assert!(metrics.contains("wasmwiz_http_requests_total"));
    let logs: String = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("log-"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(logs.contains("ww_<redacted>") && !logs.contains(&key), "{logs}");
    assert!(logs.contains("and its continuation"), "{logs}");
    assert!(!logs.contains("an old line"), "-s applies to log files: {logs}");
    assert!(stderr.contains("2 lines since"), "{stderr}");
    assert!(std::fs::read_to_string(root.join("versions.txt")).unwrap().contains("host:"));

    // With no log source, it says so instead of writing an empty journal.
    let (root, stderr) = collect(&format!("-p {}", server.pid()), "no-log");
    let summary = std::fs::read_to_string(root.join("summary.txt")).unwrap();
    assert!(
        summary.contains("log: none found") || summary.contains("log: journalctl"),
        "{summary}"
    );
    assert!(stderr.contains("collect-logs: "), "{stderr}");
    assert!(!root.join("journal.log").exists() || summary.contains("log: journalctl"));
}

/// sha256 of every stored component, as the database computes it.
fn stored_digests(url: &str) -> Vec<(String, String)> {
    let output = Command::new("psql")
        .args([url, "-qAt", "-F", " ", "-c",
               "SELECT digest, 'sha256:' || encode(sha256(bytes), 'hex') FROM components ORDER BY digest"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.to_string(), b.to_string())
        })
        .collect()
}

#[tokio::test]
async fn backup_drop_restore_drill_brings_every_route_back() {
    let env = ServeEnv::postgres();
    let Backend::Postgres(db) = &env.backend else { unreachable!() };
    let url = db.url.clone();
    let admin_key = env.tenant("ops", "pro", true);
    let acme_key = env.tenant("acme", "pro", false);
    env.grant("acme", &["/hello", "/echo/...", "/stream"]);
    let server = env.serve();
    let acme = Api::new(&server, &acme_key);
    acme.deploy_component("hello", "/hello").await;
    acme.deploy_component("echo", "/echo/...").await;
    acme.deploy_component("stream", "/stream").await;
    let before = stored_digests(&url);
    assert_eq!(before.len(), 3);

    let backups = tempfile::tempdir().unwrap();
    let dir = backups.path().to_str().unwrap().to_string();
    let (ok, stdout, stderr) =
        script("backup.sh", &["-d", &dir, "-k", "7"], &[("DATABASE_URL", &url)]);
    assert!(ok, "{stderr}");
    let file = stdout.trim().to_string();
    assert!(
        file.ends_with(".dump") && std::path::Path::new(&format!("{file}.sha256")).exists(),
        "{file}"
    );

    // A damaged backup is refused.
    let damaged = format!("{dir}/wasmwiz-00000000T000000Z.dump");
    std::fs::copy(&file, &damaged).unwrap();
    std::fs::write(
        format!("{damaged}.sha256"),
        std::fs::read_to_string(format!("{file}.sha256")).unwrap().replace(
            std::path::Path::new(&file).file_name().unwrap().to_str().unwrap(),
            "wasmwiz-00000000T000000Z.dump",
        ),
    )
    .unwrap();
    let mut bytes = std::fs::read(&damaged).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0xff;
    std::fs::write(&damaged, bytes).unwrap();
    let (ok, _, stderr) =
        script("restore.sh", &[&damaged, "--no-ready-check"], &[("DATABASE_URL", &url)]);
    assert!(!ok && stderr.contains("checksum mismatch"), "{stderr}");
    std::fs::remove_file(&damaged).unwrap();
    std::fs::remove_file(format!("{damaged}.sha256")).unwrap();

    // Disaster: the database is gone. Live routes keep serving meanwhile.
    db.drop_now();
    assert_eq!(Api::anonymous(&server).get_text("/hello").await.0, 200);

    let wasmwiz_url = server.url("");
    let (ok, _, stderr) = script(
        "restore.sh",
        &["latest", "-d", &dir],
        &[("DATABASE_URL", &url), ("WASMWIZ_URL", &wasmwiz_url)],
    );
    assert!(ok, "{stderr}");
    assert!(stderr.contains("is ready"), "{stderr}");
    assert_eq!(stored_digests(&url), before);
    assert!(before.iter().all(|(digest, actual)| digest == actual), "{before:?}");

    // A fresh node on the restored database serves every route and key.
    drop(server);
    let restored = env.serve();
    let api = Api::anonymous(&restored);
    assert_eq!(api.get_text("/hello").await, (200, "Hello, world!\n".to_string()));
    assert_eq!(api.get_text("/echo/x").await.0, 200);
    assert_eq!(api.get_text("/stream?chunks=1&size=10").await.0, 200);
    let admin = Api::new(&restored, &admin_key);
    let (status, tenants) = admin.call(admin.request(Method::GET, "/api/v1/keys")).await;
    assert_eq!(status, 200);
    assert_eq!(tenants.as_array().unwrap().len(), 2);
}

/// The Compose file, as data (parsed by Python's YAML module, which CI
/// installs with kubernetes-validate).
fn compose_file() -> serde_json::Value {
    let output = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
            repo().join("deploy/docker-compose.production.yml").to_str().unwrap(),
        ])
        .output()
        .expect("python3 with PyYAML");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Runs a `docker-compose -f deploy/docker-compose.production.yml run --rm
/// [--entrypoint E] SERVICE ARGS...` line as Compose would run it, on this
/// machine: the service's entrypoint, environment, secrets and volumes, with
/// each path inside the container mapped to where it is here, the secrets
/// to `secrets`, and the stack's host names to `hosts`.
fn compose_run(
    line: &str,
    secrets: &std::collections::HashMap<&str, String>,
    volumes: &std::collections::HashMap<&str, String>,
    hosts: &[(&str, String)],
) -> (bool, String, String) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let prefix = ["docker-compose", "-f", "deploy/docker-compose.production.yml", "run", "--rm"];
    assert_eq!(words[..prefix.len()], prefix, "{line}");
    let mut rest = &words[prefix.len()..];
    let mut entrypoint = None;
    if rest[0] == "--entrypoint" {
        entrypoint = Some(vec![rest[1].to_string()]);
        rest = &rest[2..];
    }
    let compose = compose_file();
    let service = &compose["services"][rest[0]];
    assert!(service.is_object(), "no service {} in the compose file", rest[0]);
    // Container path -> host path, for every mount and secret.
    let mut mounts: Vec<(String, String)> = service["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let parts: Vec<&str> = v.as_str().unwrap().split(':').collect();
            let here =
                volumes.get(parts[0]).unwrap_or_else(|| panic!("no mapping for {}", parts[0]));
            (parts[1].to_string(), here.clone())
        })
        .collect();
    for name in service["secrets"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        mounts.push((format!("/run/secrets/{name}"), secrets[name].clone()));
    }
    let translate = |value: &str| {
        let mut value = value.to_string();
        for (inside, here) in &mounts {
            if value == *inside || value.starts_with(&format!("{inside}/")) {
                value = value.replacen(inside.as_str(), here, 1);
            }
        }
        for (host, address) in hosts {
            value = value.replace(&format!("//{host}"), &format!("//{address}"));
        }
        value
    };
    let entrypoint: Vec<String> = entrypoint.unwrap_or_else(|| {
        service["entrypoint"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_string())
            .collect()
    });
    let mut command = Command::new(translate(&entrypoint[0]));
    command.args(entrypoint[1..].iter().map(|a| translate(a)));
    command.args(rest[1..].iter().map(|a| translate(a)));
    command.env_clear().env("PATH", std::env::var_os("PATH").unwrap());
    for (name, value) in service["environment"].as_object().unwrap() {
        command.env(name, translate(value.as_str().unwrap()));
    }
    let output = command.output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_compose_backup_and_restore_commands_of_operations_md_run_as_written() {
    // The backup service dumps with the database's own major version.
    let compose = compose_file();
    let services = &compose["services"];
    assert_eq!(services["backup"]["image"], services["postgres"]["image"], "pg_dump's version");
    assert_eq!(services["backup"]["profiles"], json!(["tools"]), "not started by `up`");

    // The commands, as OPERATIONS.md shows them for the Compose stack.
    let guide = std::fs::read_to_string(repo().join("OPERATIONS.md")).unwrap();
    let lines: Vec<&str> = guide
        .lines()
        .filter(|l| l.starts_with("docker-compose -f deploy/docker-compose.production.yml run"))
        .collect();
    let backup = *lines.iter().find(|l| l.ends_with("run --rm backup")).expect("a backup line");
    let restore = *lines.iter().find(|l| l.contains("restore.sh")).expect("a restore line");
    assert!(
        guide.contains(&format!("cd /opt/wasmwiz && {backup}")),
        "the daily cron line runs the same command"
    );

    // PostgreSQL on loopback stands in for the Compose service, a node for
    // the wasmwiz service.
    let env = ServeEnv::postgres();
    let Backend::Postgres(db) = &env.backend else { unreachable!() };
    let key = env.tenant("acme", "pro", false);
    let server = env.serve();
    Api::new(&server, &key).deploy_component("hello", "/acme/hello").await;
    let before = stored_digests(&db.url);

    let secrets_dir = tempfile::tempdir().unwrap();
    let database_url = secrets_dir.path().join("database_url");
    std::fs::write(&database_url, format!("{}\n", db.url)).unwrap();
    let backups = tempfile::tempdir().unwrap();
    let secrets =
        std::collections::HashMap::from([("database_url", database_url.display().to_string())]);
    let volumes = std::collections::HashMap::from([
        ("../scripts", repo().join("scripts").display().to_string()),
        ("../backups", backups.path().display().to_string()),
    ]);
    let hosts = [("wasmwiz:8080", server.addr.to_string())];

    let (ok, stdout, stderr) = compose_run(backup, &secrets, &volumes, &hosts);
    assert!(ok, "{backup}: {stderr}");
    assert!(stdout.trim().starts_with(&backups.path().display().to_string()), "{stdout}");

    db.drop_now();

    let (ok, _, stderr) = compose_run(restore, &secrets, &volumes, &hosts);
    assert!(ok, "{restore}: {stderr}");
    assert!(stderr.contains("is ready"), "it waited for the node: {stderr}");
    assert_eq!(stored_digests(&db.url), before);

    // Without curl (the postgres image has none) the readiness check still
    // works, over bash's /dev/tcp.
    let bin = tempfile::tempdir().unwrap();
    for tool in [
        "bash",
        "psql",
        "pg_restore",
        "sha256sum",
        "find",
        "sort",
        "tail",
        "dirname",
        "basename",
        "cat",
        "seq",
        "sleep",
    ] {
        let path = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap();
        let path = String::from_utf8_lossy(&path.stdout).trim().to_string();
        std::os::unix::fs::symlink(path, bin.path().join(tool)).unwrap();
    }
    let output = Command::new(repo().join("scripts/restore.sh"))
        .args(["latest", "-d", backups.path().to_str().unwrap()])
        .env_clear()
        .env("PATH", bin.path())
        .env("DATABASE_URL", &db.url)
        .env("WASMWIZ_URL", server.url(""))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.contains("is ready"), "{stderr}");
}

#[test]
fn restore_says_clearly_when_there_is_no_backup() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-folder");
    let unused = crate::helpers::postgres_url("unused");
    let url = [("DATABASE_URL", unused.as_str())];
    let (ok, _, stderr) = script("restore.sh", &["latest", "-d", missing.to_str().unwrap()], &url);
    assert!(!ok);
    assert!(stderr.contains("no backup folder at") && stderr.contains("-d DIR"), "{stderr}");
    let (ok, _, stderr) =
        script("restore.sh", &["latest", "-d", dir.path().to_str().unwrap()], &url);
    assert!(!ok && stderr.contains("no backup in"), "{stderr}");
}
