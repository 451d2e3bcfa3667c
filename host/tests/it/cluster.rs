//! Several nodes on one PostgreSQL and one Redis: propagation between
//! nodes, cold starts, and faults behind a real nginx running the
//! production configuration from `deploy/nginx/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::helpers::{
    Api, RedisServer, ServeEnv, Server, client, eventually, free_port, metric, unique_prefix,
    wait_for_minute_room,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A PostgreSQL server of a test's own (initdb in a temporary folder, run as
/// the `postgres` user), so the test can stop and restart it.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

/// Whether the tests run as root (`id -u` is 0).
fn running_as_root() -> bool {
    let output = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

impl PrivatePostgres {
    fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries")
            .map(|e| e.unwrap().path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .expect("initdb");
        let dir = tempfile::tempdir().unwrap();
        if running_as_root() {
            // PostgreSQL refuses to run as root: as its own user, then.
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(chown.success());
        }
        let pg = Self { port: free_port(), dir, bin };
        pg.as_postgres(&[
            pg.bin.join("initdb").to_str().unwrap(),
            "-D",
            pg.data().to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        pg.run_ctl("start");
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs a PostgreSQL program: as the `postgres` user under root (which
    /// PostgreSQL refuses), as the test's own user otherwise.
    fn as_postgres(&self, args: &[&str]) {
        let output = if running_as_root() {
            Command::new("runuser").args(["-u", "postgres", "--"]).args(args).output().unwrap()
        } else {
            Command::new(args[0]).args(&args[1..]).output().unwrap()
        };
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }

    fn run_ctl(&self, action: &str) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        self.as_postgres(&[
            self.bin.join("pg_ctl").to_str().unwrap(),
            "-D",
            self.data().to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-o",
            &options,
            "-m",
            "fast",
            "-w",
            action,
        ]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", self.data().to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
    }
}

/// nginx running `deploy/nginx/` with the upstream, ports, certificate and
/// log paths pointed at this test's own.
struct Nginx {
    _dir: tempfile::TempDir,
    child: Child,
    https_port: u16,
}

fn write_self_signed(dir: &Path) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("fullchain.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("privkey.pem"), key.serialize_pem()).unwrap();
}

/// The production configuration, rewritten for a test: returns the path
/// of the main file.
fn nginx_config(dir: &Path, upstreams: &[u16], http_port: u16, https_port: u16) -> PathBuf {
    let deploy = repo().join("deploy/nginx");
    let servers: String = upstreams
        .iter()
        .map(|p| format!("    server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;\n"))
        .collect();
    let site = std::fs::read_to_string(deploy.join("conf.d/wasmwiz.conf"))
        .unwrap()
        .replace("    server wasmwiz:8080 max_fails=1 fail_timeout=5s;\n", &servers)
        .replace("listen 80;", &format!("listen 127.0.0.1:{http_port};"))
        .replace("listen [::]:80;", "")
        .replace("listen 443 ssl http2;", &format!("listen 127.0.0.1:{https_port} ssl http2;"))
        .replace("listen [::]:443 ssl http2;", "")
        .replace("/etc/nginx/certs", &dir.display().to_string());
    assert!(
        site.contains(&format!("127.0.0.1:{}", upstreams[0])),
        "the upstream block changed shape"
    );
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    std::fs::write(dir.join("conf.d/wasmwiz.conf"), site).unwrap();
    let main = std::fs::read_to_string(deploy.join("nginx.conf"))
        .unwrap()
        .replace("/var/log/nginx", &dir.display().to_string())
        .replace("/run/nginx.pid", &dir.join("nginx.pid").display().to_string())
        .replace("/etc/nginx/conf.d", &dir.join("conf.d").display().to_string())
        .replace("worker_connections 4096;", "worker_connections 1024;");
    let main = format!(
        "{main}\n# test: temporary files under the test's folder\n"
    )
    .replace(
        "    include /etc/nginx/conf.d/",
        &format!(
            "    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    \
             fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n    \
             include /etc/nginx/conf.d/",
            d = dir.display()
        ),
    );
    write_self_signed(dir);
    let path = dir.join("nginx.conf");
    std::fs::write(&path, main).unwrap();
    path
}

impl Nginx {
    fn start(upstreams: &[u16]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (http_port, https_port) = (free_port(), free_port());
        let config = nginx_config(dir.path(), upstreams, http_port, https_port);
        let child = Command::new("nginx")
            .args(["-c", config.to_str().unwrap(), "-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", https_port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { _dir: dir, child, https_port }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https_port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that trusts the test's self-signed certificate.
fn tls_client() -> reqwest::Client {
    reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap()
}

#[test]
fn nginx_accepts_the_production_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config = nginx_config(dir.path(), &[8081, 8082, 8083], free_port(), free_port());
    let output =
        Command::new("nginx").args(["-t", "-c", config.to_str().unwrap()]).output().unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && said.contains("test is successful"), "{said}");
}

/// Runs wrk against `url` for `seconds`; returns (requests, non-2xx, socket errors).
fn wrk(url: &str, seconds: u64) -> (u64, u64, u64) {
    let output = Command::new("wrk")
        .args(["-t1", "-c8", &format!("-d{seconds}s"), url])
        .output()
        .expect("wrk is installed");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let bad = text
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses:"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0);
    let errors = text
        .lines()
        .find(|l| l.contains("Socket errors:"))
        .map(|l| l.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    (requests, bad, errors)
}

#[tokio::test]
async fn three_nodes_behind_nginx_survive_a_node_kill_and_restarts_of_postgres_and_redis() {
    let pg = PrivatePostgres::start();
    let mut redis = RedisServer::start();
    let mut env = ServeEnv::sqlite();
    env.set("DATABASE_URL", &pg.url())
        .set("REDIS_URL", &redis.url())
        .set("REDIS_KEY_PREFIX", &unique_prefix())
        .set("LOG_LEVEL", "info,wasmwiz::store=debug");
    env.admin(&["tier", "set", "ten", "--per-minute", "10", "--per-day", "100000"]);
    env.admin(&["tier", "set", "big", "--per-minute", "unlimited", "--per-day", "unlimited"]);
    let key = env.tenant("acme", "big", false);
    let limited_key = env.tenant("limited", "ten", false);
    env.grant("acme", &["/hello", "/flip", "/after-restart"]);
    let nodes: Vec<Server> = (0..3).map(|_| env.other_node().serve()).collect();
    let ports: Vec<u16> = nodes.iter().map(|n| n.addr.port()).collect();
    let nginx = Nginx::start(&ports);
    let http = tls_client();

    // Deploy through one node, invoke through nginx.
    Api::new(&nodes[0], &key).deploy_component("hello", "/hello").await;
    Api::new(&nodes[0], &limited_key).deploy_component("hello", "/limited").await;
    // Three nodes compile the component at once beside the rest of the
    // suite; how fast a deployment spreads is another test's subject.
    let deadline = Instant::now() + Duration::from_secs(15);
    for node in &nodes {
        while Api::anonymous(node).get_text("/hello").await.0 != 200 {
            assert!(Instant::now() < deadline, "a node did not serve the deployment within 15 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let response = http.get(nginx.url("/hello")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert!(response.headers().contains_key("strict-transport-security"));
    assert_eq!(
        http.get(nginx.url("/metrics")).send().await.unwrap().status(),
        404,
        "metrics exposed"
    );

    // Quotas exact across the three nodes, through nginx.
    wait_for_minute_room(20).await;
    let statuses: Vec<u16> = futures::future::join_all((0..30).map(|_| async {
        http.get(nginx.url("/limited")).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
    }))
    .await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 10, "{statuses:?}");

    // Kill a node under load while deploying: nginx fails over, and every
    // acknowledged deployment is in the store.
    let load = tokio::task::spawn_blocking({
        let url = nginx.url("/hello");
        move || wrk(&url, 4)
    });
    let deployer = tokio::spawn({
        let api = Api::new(&nodes[0], &key);
        async move {
            let hello = api.upload_component("hello").await;
            let echo = api.upload_component("echo").await;
            let mut acknowledged = 0;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(3) {
                let component = if acknowledged % 2 == 0 { &echo } else { &hello };
                let (status, body) =
                    api.deploy(json!({ "route": "/flip", "component": component })).await;
                if status == 201 {
                    acknowledged = body["version"].as_i64().unwrap();
                }
            }
            acknowledged
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut nodes = nodes;
    let killed = nodes.remove(1);
    killed.signal(libc::SIGKILL);
    let (requests, bad, errors) = load.await.unwrap();
    let acknowledged = deployer.await.unwrap();
    assert!(requests > 100, "only {requests} requests");
    assert_eq!((bad, errors), (0, 0), "nginx did not fail over cleanly ({requests} requests)");
    let api = Api::new(&nodes[1], &key);
    let (_, list) = api.call(api.request(Method::GET, "/api/v1/deployments")).await;
    let flip =
        list.as_array().unwrap().iter().find(|d| d["route"] == "/flip").expect("the route exists");
    assert_eq!(
        flip["version"].as_i64().unwrap(),
        acknowledged,
        "an acknowledged deployment was lost"
    );

    // Stop PostgreSQL under load: live routes keep serving, the API answers
    // 503, and both recover by themselves when it is back.
    let load = tokio::task::spawn_blocking({
        let url = nginx.url("/hello");
        move || wrk(&url, 4)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.run_ctl("stop");
    let mut saw_503 = false;
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(2) {
        let (status, _) = api.call(api.request(Method::GET, "/api/v1/deployments")).await;
        assert!(
            status == 503 || status == 200,
            "the API answered {status} while the database was away"
        );
        saw_503 |= status == 503;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_503, "the API never answered 503 while the database was stopped");
    pg.run_ctl("start");
    let (requests, bad, errors) = load.await.unwrap();
    assert!(
        requests > 100 && bad == 0 && errors == 0,
        "{requests} requests, {bad} non-2xx, {errors} errors"
    );
    let back = Instant::now();
    while api.call(api.request(Method::GET, "/api/v1/deployments")).await.0 != 200 {
        assert!(back.elapsed() < Duration::from_secs(15), "the API did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The change listeners reconnected: a deploy through one node reaches
    // the other within a second.
    Api::new(&nodes[0], &key).deploy_component("echo", "/after-restart").await;
    let deadline = Instant::now() + Duration::from_secs(1);
    while Api::anonymous(&nodes[1]).get_text("/after-restart").await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the other node missed the deployment after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        nodes[1].logs().matches("listening for changes").count() >= 2,
        "the change listener never reconnected:\n{}",
        nodes[1].logs()
    );

    // Restart Redis under load: served throughout (the quota fault policy),
    // degraded meanwhile, exact again afterwards.
    let load = tokio::task::spawn_blocking({
        let url = nginx.url("/hello");
        move || wrk(&url, 3)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.stop();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let ready: serde_json::Value =
        client().get(nodes[0].url("/ready")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["quota"], "degraded");
    redis.restart();
    let (requests, bad, errors) = load.await.unwrap();
    assert!(
        requests > 100 && bad == 0 && errors == 0,
        "{requests} requests, {bad} non-2xx, {errors} errors"
    );
    eventually("quotas back in Redis", Duration::from_secs(5), || async {
        let ready: serde_json::Value =
            client().get(nodes[0].url("/ready")).send().await.unwrap().json().await.unwrap();
        if ready["quota"] == "ok" { Ok(()) } else { Err(ready.to_string()) }
    })
    .await;
}

/// Read your writes across nodes: once one node has acknowledged a deploy,
/// no node answers 404 for its route, however soon it is asked.
#[tokio::test]
async fn a_route_deployed_through_one_node_is_never_404_on_another() {
    let env = ServeEnv::postgres();
    let key = env.tenant("acme", "pro", false);
    let a = env.serve();
    let b = env.other_node().serve();
    let on_a = Api::new(&a, &key);
    let on_b = Api::anonymous(&b);
    // B knows the component already (compiled for the first route), so
    // what is measured is B hearing of each route, not compiling it.
    on_a.deploy_component("hello", "/acme/first").await;
    for i in 0..20 {
        let route = format!("/acme/r{i}");
        on_a.deploy_component("hello", &route).await;
        let (status, body) = on_b.get_text(&route).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "Hello, world!\n"),
            "{route} on the other node, asked right after the deploy was acknowledged"
        );
    }
    // A route nobody deployed is still a 404, after the node has checked.
    assert_eq!(on_b.get_text("/acme/never").await.0, 404);

    // A flood of misses shares its checks of the store: at most one per
    // 100 ms however many requests arrive (and each waits at most that).
    let before = metric(&b, "wasmwiz_route_catch_ups_total").await.expect("the metric");
    let started = Instant::now();
    let misses = (0..400).map(|i| {
        let on_b = on_b.clone();
        async move { on_b.get_text(&format!("/acme/none{i}")).await.0 }
    });
    let statuses = futures::future::join_all(misses).await;
    let took = started.elapsed();
    assert!(statuses.iter().all(|s| *s == 404), "{statuses:?}");
    let checks = metric(&b, "wasmwiz_route_catch_ups_total").await.unwrap() - before;
    let bound = (took.as_millis() / 100 + 2) as f64;
    assert!(
        (1.0..=bound).contains(&checks),
        "400 misses in {took:?} made {checks} checks of the store (at most {bound})"
    );
}

#[tokio::test]
async fn every_change_through_one_node_reaches_another_within_a_second() {
    let env = ServeEnv::postgres();
    let admin_key = env.tenant("ops", "pro", true);
    let key = env.tenant("acme", "pro", false);
    env.grant("acme", &["/app"]);
    let a = env.serve();
    let b = env.other_node().serve();
    let on_a = Api::new(&a, &key);
    let admin_on_a = Api::new(&a, &admin_key);

    let within_a_second =
        |what: &'static str, path: &'static str, expected: fn(u16, &str) -> bool| {
            let b = Api::anonymous(&b);
            async move {
                let what = format!("{what} reaching the other node");
                eventually(&what, Duration::from_secs(1), || async {
                    let (status, body) = b.get_text(path).await;
                    if expected(status, &body) { Ok(()) } else { Err(format!("{status} {body}")) }
                })
                .await
            }
        };

    let v1 = on_a.deploy_component("hello", "/app").await;
    within_a_second("a deployment", "/app", |s, b| s == 200 && b == "Hello, world!\n").await;
    on_a.deploy_component("echo", "/app").await;
    within_a_second("a new version", "/app", |s, b| s == 200 && b.is_empty()).await;
    let id = v1["id"].as_str().unwrap();
    let (status, _) =
        on_a.call(on_a.request(Method::POST, &format!("/api/v1/deployments/{id}/rollback"))).await;
    assert_eq!(status, 200);
    within_a_second("a rollback", "/app", |s, b| s == 200 && b == "Hello, world!\n").await;

    let (status, _) = admin_on_a
        .call(
            admin_on_a
                .request(Method::PUT, "/api/v1/tiers/pro")
                .json(&json!({ "requests_per_minute": 1 })),
        )
        .await;
    assert_eq!(status, 200);
    // One request may be admitted in the new minute; then 429.
    within_a_second("a tier change", "/app", |s, _| s == 429).await;
    let (status, _) = admin_on_a
        .call(
            admin_on_a
                .request(Method::PUT, "/api/v1/tiers/pro")
                .json(&json!({ "requests_per_minute": 500 })),
        )
        .await;
    assert_eq!(status, 200);

    let (status, _) =
        on_a.call(on_a.request(Method::DELETE, &format!("/api/v1/deployments/{id}"))).await;
    assert_eq!(status, 204);
    within_a_second("a deletion", "/app", |s, _| s == 404).await;
}

#[tokio::test]
async fn a_starting_node_is_ready_only_when_it_can_serve_every_deployment() {
    let env = ServeEnv::postgres();
    let key = env.tenant("acme", "pro", false);
    env.grant("acme", &["/hello", "/echo", "/stream", "/h/..."]);
    let a = env.serve();
    let api = Api::new(&a, &key);
    for (name, route) in
        [("hello", "/hello"), ("echo", "/echo"), ("stream", "/stream"), ("hostile", "/h/...")]
    {
        api.deploy_component(name, route).await;
    }
    drop(a);

    // A node with an empty compiled-code cache must compile all four.
    let env_b = env.other_node();
    let b = env_b.serve();
    let (status, body) = Api::anonymous(&b).get_text("/ready").await;
    assert_eq!(status, 503, "ready before compiling: {body}");
    assert!(body.contains("loading"), "{body}");
    let started = Instant::now();
    while Api::anonymous(&b).get_text("/ready").await.0 != 200 {
        assert!(started.elapsed() < Duration::from_secs(60), "never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for path in ["/hello", "/echo", "/stream?chunks=1&size=1", "/h/ok"] {
        assert_eq!(Api::anonymous(&b).get_text(path).await.0, 200, "{path}");
    }
    drop(b);

    // The same node restarted has everything cached.
    let c = env_b.serve();
    c.wait_for_log("(4 from the compiled-code cache, 0 to compile)", Duration::from_secs(10));
    let started = Instant::now();
    while Api::anonymous(&c).get_text("/ready").await.0 != 200 {
        assert!(started.elapsed() < Duration::from_secs(60), "never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
