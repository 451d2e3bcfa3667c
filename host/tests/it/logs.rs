//! Tenants' log streams (`GET /api/v1/logs`, `wasmwiz logs`): each tenant
//! sees its own invocations, from every node, with its guest's output, and
//! nothing of any other tenant's; logging never grows the host nor lets one
//! tenant crowd out another.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::helpers::{
    Api, RedisServer, ServeEnv, Server, client, eventually, shared_redis_url, unique_prefix,
};

/// A follower of one tenant's stream: its events as they arrive.
struct Follower {
    events: mpsc::UnboundedReceiver<Value>,
    seen: Vec<Value>,
}

impl Follower {
    /// Follows the stream of `key`'s tenant on `server` (`query` added).
    async fn start(server: &Server, key: &str, query: &str) -> Follower {
        let response = client()
            .get(server.url(&format!("/api/v1/logs?follow=true{query}")))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut pending = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                pending.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = pending.find("\n\n") {
                    let message: String = pending.drain(..end + 2).collect();
                    if let Some(data) = message.lines().find_map(|l| l.strip_prefix("data: ")) {
                        let _ = tx.send(serde_json::from_str(data).unwrap());
                    }
                }
            }
        });
        Follower { events, seen: Vec::new() }
    }

    /// Waits up to `within` for an event `matches` accepts (among those
    /// seen before too), and returns it.
    async fn expect(&mut self, within: Duration, matches: impl Fn(&Value) -> bool) -> Value {
        if let Some(event) = self.seen.iter().find(|e| matches(e)) {
            return event.clone();
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    self.seen.push(event.clone());
                    if matches(&event) {
                        return event;
                    }
                }
                _ => panic!("no such event within {within:?}; seen: {:#?}", self.seen),
            }
        }
    }

    /// Everything received until now (waiting `settle` for stragglers).
    async fn drain(&mut self, settle: Duration) -> &[Value] {
        tokio::time::sleep(settle).await;
        while let Ok(event) = self.events.try_recv() {
            self.seen.push(event);
        }
        &self.seen
    }
}

/// Two tenants on one environment, each with the hostile guest on its own
/// prefix; returns their keys.
fn two_tenants(env: &ServeEnv) -> (String, String) {
    (env.tenant("acme", "pro", false), env.tenant("bravo", "pro", false))
}

async fn get(server: &Server, path: &str) -> u16 {
    client().get(server.url(path)).send().await.unwrap().status().as_u16()
}

/// An invocation event for `path` answered `status`.
fn invocation(path: &'static str, status: u64) -> impl Fn(&Value) -> bool {
    move |e| e["kind"] == "invocation" && e["path"] == path && e["status"] == status
}

/// Each tenant follows its stream on one node and sees its invocations on
/// every node within a second, with node, deployment and output, and never
/// the other tenant's.
async fn each_tenant_sees_its_own_invocations_from_every_node(nodes: Vec<Server>, keys: [&str; 2]) {
    let [acme, bravo] = keys;
    let mut followers =
        [Follower::start(&nodes[0], acme, "").await, Follower::start(&nodes[0], bravo, "").await];
    for (i, node) in nodes.iter().enumerate() {
        let started = Instant::now();
        assert_eq!(get(node, &format!("/acme/h/stdout?lines=2&tag=acme{i}")).await, 200);
        assert_eq!(get(node, &format!("/bravo/h/stdout?lines=1&tag=bravo{i}")).await, 200);
        let tag = format!("acme{i} 1 to stdout");
        let event = followers[0]
            .expect(Duration::from_secs(1), |e| {
                e["stdout"].as_str().is_some_and(|s| s.contains(&tag))
            })
            .await;
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!(event["status"], 200);
        assert_eq!(event["outcome"], "ok");
        assert_eq!(event["method"], "GET");
        assert_eq!(event["path"], "/acme/h/stdout");
        assert_eq!(event["route"], "/acme/h/...");
        assert_eq!(event["version"], 1);
        assert!(event["deployment"].as_str().unwrap().starts_with("dep_"), "{event}");
        assert!(event["stderr"].as_str().unwrap().contains(&format!("acme{i} 0 to stderr")));
        assert!(event["request_id"].as_str().is_some_and(|id| !id.is_empty()));
        assert!(event["duration_ms"].as_f64().unwrap() >= event["guest_ms"].as_f64().unwrap());
        assert!(event["node"].as_str().unwrap().ends_with(&format!(":{}", node.addr.port())));
        let tag = format!("bravo{i} 0 to stdout");
        followers[1]
            .expect(Duration::from_secs(1), |e| {
                e["stdout"].as_str().is_some_and(|s| s.contains(&tag))
            })
            .await;
    }
    for (follower, own, other) in [(0, "acme", "bravo"), (1, "bravo", "acme")] {
        let seen = followers[follower].drain(Duration::from_millis(500)).await;
        assert!(
            seen.iter()
                .all(|e| e["path"].as_str().is_some_and(|p| p.starts_with(&format!("/{own}/")))),
            "{own} saw {other}'s events: {seen:#?}"
        );
    }
    // A guest's panic, in its tenant's stream.
    assert_eq!(get(&nodes[nodes.len() - 1], "/acme/h/trap").await, 500);
    let event = followers[0].expect(Duration::from_secs(1), invocation("/acme/h/trap", 500)).await;
    assert_eq!(event["outcome"], "trap");
    assert!(
        event["stderr"].as_str().unwrap().contains("the guest trapped on purpose"),
        "the panic message: {event}"
    );
}

#[tokio::test]
async fn on_the_embedded_default_each_tenant_sees_only_its_own_invocations() {
    let env = ServeEnv::sqlite();
    let (acme, bravo) = two_tenants(&env);
    let server = env.serve();
    Api::new(&server, &acme).deploy_component("hostile", "/acme/h/...").await;
    Api::new(&server, &bravo).deploy_component("hostile", "/bravo/h/...").await;
    each_tenant_sees_its_own_invocations_from_every_node(vec![server], [&acme, &bravo]).await;
}

#[tokio::test]
async fn on_postgres_and_redis_each_tenant_sees_its_invocations_on_both_nodes() {
    let mut env = ServeEnv::postgres();
    env.set("REDIS_URL", &shared_redis_url()).set("REDIS_KEY_PREFIX", &unique_prefix());
    let (acme, bravo) = two_tenants(&env);
    let a = env.serve();
    Api::new(&a, &acme).deploy_component("hostile", "/acme/h/...").await;
    Api::new(&a, &bravo).deploy_component("hostile", "/bravo/h/...").await;
    let b = env.other_node().serve();
    // B has loaded the routes before it listens; both serve them.
    assert_eq!(get(&b, "/acme/h/ok").await, 200);
    each_tenant_sees_its_own_invocations_from_every_node(vec![a, b], [&acme, &bravo]).await;
}

/// Recent events as JSON, filtered; another tenant's stream is not there
/// for a tenant, and is for an admin; bad values are refused in words.
#[tokio::test]
async fn recent_events_are_filtered_and_kept_to_their_tenant() {
    let env = ServeEnv::sqlite();
    let (acme, bravo) = two_tenants(&env);
    let admin = env.tenant("ops", "pro", true);
    let server = env.serve();
    let api = Api::new(&server, &acme);
    let first = api.deploy_component("hostile", "/acme/h/...").await;
    let second = api.deploy_component("hostile", "/acme/g/...").await;
    for path in ["/acme/h/ok", "/acme/h/trap", "/acme/g/ok", "/acme/h/ok"] {
        get(&server, path).await;
    }
    // Written by the node's writer within a tick.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let events = |body: Value| body["events"].as_array().unwrap().clone();
    let (status, body) = api.call(api.request(reqwest::Method::GET, "/api/v1/logs")).await;
    assert_eq!(status, 200, "{body}");
    let all = events(body);
    let paths: Vec<&str> = all.iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/acme/h/ok", "/acme/h/trap", "/acme/g/ok", "/acme/h/ok"], "oldest first");

    let query = |q: &str| api.request(reqwest::Method::GET, &format!("/api/v1/logs?{q}"));
    let (_, body) =
        api.call(query(&format!("deployment={}", second["id"].as_str().unwrap()))).await;
    assert_eq!(events(body).len(), 1);
    let (_, body) = api
        .call(query(&format!("deployment={}&outcome=trap", first["id"].as_str().unwrap())))
        .await;
    let trapped = events(body);
    assert_eq!((trapped.len(), &trapped[0]["status"]), (1, &Value::from(500)));
    let (_, body) = api.call(query("limit=2")).await;
    assert_eq!(events(body)[0]["path"], "/acme/g/ok", "the newest two");
    let (_, body) = api.call(query("since=2099-01-01T00:00:00Z")).await;
    assert_eq!(events(body).len(), 0);
    let (_, body) = api.call(query("since=1h")).await;
    assert_eq!(events(body).len(), 4);
    for bad in ["limit=0", "limit=lots", "since=yesterday", "follow=maybe", "outcome=crashed"] {
        let (status, body) = api.call(query(bad)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(bad.split('=').next().unwrap())
        );
    }

    let bravo_api = Api::new(&server, &bravo);
    let (status, body) =
        bravo_api.call(bravo_api.request(reqwest::Method::GET, "/api/v1/logs")).await;
    assert_eq!((status, events(body).len()), (200, 0), "bravo has no invocations");
    let (status, _) =
        bravo_api.call(bravo_api.request(reqwest::Method::GET, "/api/v1/logs?tenant=acme")).await;
    assert_eq!(status, 404, "another tenant's stream is not there for a tenant");
    let ops = Api::new(&server, &admin);
    let (status, body) =
        ops.call(ops.request(reqwest::Method::GET, "/api/v1/logs?tenant=acme")).await;
    assert_eq!((status, events(body).len()), (200, 4), "an admin reads any tenant's");
}

/// RSS of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// A guest printing 100 MiB leaves the host's memory flat and its event
/// says how much was not kept; a tenant past its events a second gets a
/// notice of the drops; the other tenant's stream sees none of it.
#[tokio::test]
async fn floods_of_output_and_of_events_are_dropped_with_a_notice_and_touch_no_one_else() {
    let mut env = ServeEnv::sqlite();
    env.set("LOG_EVENTS_PER_SECOND", "5");
    let (acme, bravo) = two_tenants(&env);
    let server = env.serve();
    Api::new(&server, &acme).deploy_component("hostile", "/acme/h/...").await;
    Api::new(&server, &bravo).deploy_component("hostile", "/bravo/h/...").await;
    let mut own = Follower::start(&server, &acme, "").await;
    let mut other = Follower::start(&server, &bravo, "").await;
    assert_eq!(get(&server, "/acme/h/ok").await, 200, "warm");
    let before = rss_bytes(server.pid());

    assert_eq!(get(&server, "/acme/h/flood?mib=100").await, 200);
    let event = own.expect(Duration::from_secs(2), invocation("/acme/h/flood", 200)).await;
    let dropped = event["output_dropped_bytes"].as_u64().unwrap();
    assert!(dropped >= (100 << 20) - (16 << 10), "{event}");
    assert!(event["stdout"].as_str().unwrap().len() <= 4 << 10);
    let grown = rss_bytes(server.pid()).saturating_sub(before);
    assert!(grown < 32 << 20, "the host grew by {grown} bytes");

    // Burst of 10 allowed at 5 a second; 40 requests at once lose most.
    let requests = (0..40).map(|_| get(&server, "/acme/h/ok"));
    assert!(futures::future::join_all(requests).await.iter().all(|&s| s == 200));
    let notice = own.expect(Duration::from_secs(2), |e| e["kind"] == "dropped").await;
    assert!(notice["message"].as_str().unwrap().contains("LOG_EVENTS_PER_SECOND"), "{notice}");
    let seen = own.drain(Duration::from_millis(600)).await;
    let dropped: u64 = seen.iter().filter_map(|e| e["dropped_events"].as_u64()).sum();
    let logged = seen.iter().filter(|e| e["path"] == "/acme/h/ok").count() as u64;
    assert!(dropped >= 20, "{seen:#?}");
    assert_eq!(dropped + logged, 41, "every request logged or counted in a notice");

    // Bravo's stream saw nothing of it, and bravo still logs.
    assert!(other.drain(Duration::from_millis(300)).await.is_empty());
    assert_eq!(get(&server, "/bravo/h/ok").await, 200);
    other.expect(Duration::from_secs(1), invocation("/bravo/h/ok", 200)).await;
}

/// A follower on Redis keeps following when Redis restarts.
#[tokio::test]
async fn a_follower_survives_a_redis_restart() {
    let mut redis = RedisServer::start();
    let mut env = ServeEnv::sqlite();
    env.set("REDIS_URL", &redis.url()).set("REDIS_KEY_PREFIX", &unique_prefix());
    let (acme, _) = two_tenants(&env);
    let server = env.serve();
    Api::new(&server, &acme).deploy_component("hostile", "/acme/h/...").await;
    let mut follower = Follower::start(&server, &acme, "").await;
    assert_eq!(get(&server, "/acme/h/ok").await, 200);
    follower.expect(Duration::from_secs(1), invocation("/acme/h/ok", 200)).await;

    redis.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart();
    // The first write after the restart may go to a connection being
    // remade: ask until one arrives.
    let (server_ref, follower_ref) = (&server, &mut follower);
    let follower_cell = tokio::sync::Mutex::new(follower_ref);
    eventually("an event after the restart", Duration::from_secs(10), || async {
        assert_eq!(get(server_ref, "/acme/h/stdout?lines=1&tag=after").await, 200);
        let mut follower = follower_cell.lock().await;
        let events = follower.drain(Duration::from_millis(500)).await;
        events
            .iter()
            .any(|e| e["stdout"].as_str().is_some_and(|s| s.contains("after 0")))
            .then_some(())
    })
    .await;
}

/// A follower that stops reading is cut off; another follower of the same
/// tenant gets every event all the same.
#[tokio::test]
async fn a_slow_follower_is_cut_off_and_the_others_carry_on() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let mut env = ServeEnv::sqlite();
    env.set("LOG_EVENTS_PER_SECOND", "100000").set("QUOTAS_ENABLED", "false");
    let (acme, _) = two_tenants(&env);
    let server = env.serve();
    Api::new(&server, &acme).deploy_component("hostile", "/acme/h/...").await;

    // The slow one: a tiny receive window, and never a read after the head.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(server.addr).await.unwrap();
    let request = format!(
        "GET /api/v1/logs?follow=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {acme}\r\n\r\n"
    );
    slow.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 64];
    let n = slow.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));
    let mut fast = Follower::start(&server, &acme, "").await;

    // Events of 8 KiB of output each, until the slow one is cut off.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    while !server.logs().contains("log follower cut off") {
        assert!(Instant::now() < deadline, "the slow follower was never cut off ({sent} sent)");
        let requests =
            (0..50).map(|_| get(&server, "/acme/h/stdout?lines=100&tag=padding-padding-padding"));
        assert!(futures::future::join_all(requests).await.iter().all(|&s| s == 200));
        sent += 50;
    }
    // The fast one has every event.
    let seen = fast.drain(Duration::from_millis(800)).await;
    let got = seen.iter().filter(|e| e["kind"] == "invocation").count();
    assert_eq!(got, sent, "the fast follower missed events");
    assert_eq!(get(&server, "/acme/h/ok").await, 200);
    fast.expect(Duration::from_secs(1), invocation("/acme/h/ok", 200)).await;
}

/// `wasmwiz logs` prints recent events; `--follow --json` follows, and
/// reconnects by itself when the node restarts, without printing an
/// event twice (the stream is in Redis, the node comes back on its port).
#[tokio::test]
async fn the_cli_prints_events_and_follows_across_a_restart_without_duplicates() {
    use std::io::BufRead as _;

    let port = crate::helpers::free_port();
    let mut env = ServeEnv::sqlite();
    env.set("REDIS_URL", &shared_redis_url())
        .set("REDIS_KEY_PREFIX", &unique_prefix())
        .set("SERVER_PORT", &port.to_string());
    let (acme, _) = two_tenants(&env);
    let mut server = env.serve();
    Api::new(&server, &acme).deploy_component("hostile", "/acme/h/...").await;
    assert_eq!(get(&server, "/acme/h/trap").await, 500);
    tokio::time::sleep(Duration::from_millis(600)).await;

    let url = server.url("");
    let cli = |args: &[&str]| {
        let mut command = crate::helpers::clean_command(env!("CARGO_BIN_EXE_wasmwiz"));
        command.arg("logs").args(args).env("WASMWIZ_URL", &url).env("WASMWIZ_API_KEY", &acme);
        command
    };
    let output = cli(&[]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let line = text.lines().next().unwrap();
    assert!(line.contains("500 trap  GET /acme/h/trap  dep_"), "{text}");
    assert!(!line.contains('\x1b'), "plain when piped: {line}");
    assert!(text.contains("    ! "), "the panic message beneath: {text}");

    let mut follow = cli(&["--follow", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, mut lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next_path = |lines: &mut mpsc::UnboundedReceiver<String>| {
        let line = lines.try_recv().ok()?;
        let event: Value = serde_json::from_str(&line).unwrap();
        Some(event["path"].as_str().unwrap_or("").to_string())
    };
    // Followed from now on: the trap before is not printed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&server, "/acme/h/ok").await, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(next_path(&mut lines).as_deref(), Some("/acme/h/ok"));

    server.stop_and_read_log();
    let server = env.serve();
    assert_eq!(server.addr.port(), port);
    assert_eq!(get(&server, "/acme/h/count").await, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut printed = Vec::new();
    while !printed.iter().any(|p: &String| p == "/acme/h/count") {
        assert!(Instant::now() < deadline, "nothing printed after the restart: {printed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        while let Some(path) = next_path(&mut lines) {
            printed.push(path);
        }
    }
    assert_eq!(printed, ["/acme/h/count"], "each event once");
    let _ = follow.kill();
    let _ = follow.wait();
}
