//! Crash consistency: `kill -9` at the worst moments of an upload, a
//! deploy, a rollback and a key revocation, on SQLite and on PostgreSQL.
//! After each restart every acknowledged change is there and nothing
//! half-made is visible: every listed component has its bytes (it deploys
//! and serves), every route points to a component that serves. The
//! compiled-code cache never serves a truncated or corrupted file, and a
//! full disk under `WASMWIZ_DATA_DIR` gives clear errors until space
//! returns.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Api, ServeEnv, Server, component, eventually, kept};

mod sqlite {
    #[tokio::test]
    async fn every_acknowledged_change_survives_kill_9_and_nothing_half_made_is_seen() {
        super::drills(super::ServeEnv::sqlite()).await
    }

    #[tokio::test]
    async fn a_full_disk_gives_clear_errors_and_the_node_recovers_when_space_returns() {
        super::full_disk(super::ServeEnv::sqlite()).await
    }
}

mod postgres {
    #[tokio::test]
    async fn every_acknowledged_change_survives_kill_9_and_nothing_half_made_is_seen() {
        super::drills(super::ServeEnv::postgres()).await
    }

    #[tokio::test]
    async fn a_full_disk_gives_clear_errors_and_the_node_recovers_when_space_returns() {
        super::full_disk(super::ServeEnv::postgres()).await
    }
}

/// `bytes` with a custom section carrying `nonce` appended: the same
/// component under a digest of its own.
fn unique(bytes: &[u8], nonce: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"wasmwiz-test";
    let mut content = Vec::new();
    leb(name.len(), &mut content);
    content.extend_from_slice(name);
    content.extend_from_slice(nonce.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    leb(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}

/// Kills the node with SIGKILL and waits until it is gone.
fn kill_9(server: &mut Server) {
    server.signal(libc::SIGKILL);
    assert!(server.wait_exit(Duration::from_secs(10)).is_some(), "the node outlived SIGKILL");
}

/// Starts the node again and waits until it is ready (every deployment
/// compiled or loaded).
async fn restart(env: &ServeEnv) -> Server {
    let server = env.serve();
    let server_ref = &server;
    eventually("the node ready after a restart", Duration::from_secs(120), || async move {
        let ready = crate::helpers::client().get(server_ref.url("/ready")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            Ok(())
        } else {
            // The log's end, for the message if it never gets ready.
            let logs = server_ref.logs();
            let tail: Vec<&str> = logs.lines().rev().take(40).collect();
            Err(tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
        }
    })
    .await;
    server
}

/// Sends a request, kills the node `after` it was sent, and returns the
/// answer if one arrived before the kill (an acknowledgement).
async fn killed_during(
    server: &mut Server,
    request: reqwest::RequestBuilder,
    after: Duration,
) -> Option<(u16, Value)> {
    let sent = tokio::spawn(async move {
        let response = request.send().await.ok()?;
        let status = response.status().as_u16();
        let body = response.bytes().await.ok()?;
        Some((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    });
    tokio::time::sleep(after).await;
    kill_9(server);
    sent.await.unwrap()
}

/// What a tenant sees after a restart, checked for anything half-made:
/// every listed component deploys and serves, every deployment serves.
/// Returns the digests listed.
async fn check_whole(api: &Api, probe: usize) -> BTreeSet<String> {
    let (status, components) = api.call(api.request(Method::GET, "/api/v1/components")).await;
    assert_eq!(status, 200, "{components}");
    let listed: BTreeSet<String> = components
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| c["digest"].as_str().unwrap().to_string())
        .collect();
    for (i, digest) in listed.iter().enumerate() {
        // A component listed without its bytes would fail to deploy here
        // (or fail to compile on the node).
        let route = format!("/acme/probe{probe}x{i}");
        let (status, body) = api.deploy(json!({ "route": route, "component": digest })).await;
        assert_eq!(status, 201, "a listed component does not deploy: {digest}: {body}");
        serves(api, &route).await;
        let id = body["id"].as_str().unwrap();
        let (status, _) =
            api.call(api.request(Method::DELETE, &format!("/api/v1/deployments/{id}"))).await;
        assert_eq!(status, 204);
    }
    let (status, deployments) = api.call(api.request(Method::GET, "/api/v1/deployments")).await;
    assert_eq!(status, 200);
    for deployment in deployments.as_array().unwrap() {
        let route = deployment["route"].as_str().unwrap();
        let path = match route.strip_suffix("/...") {
            Some(prefix) => format!("{prefix}/"),
            None => route.to_string(),
        };
        let component = deployment["component"].as_str().unwrap();
        assert!(listed.contains(component), "a route points to a missing component: {deployment}");
        serves(api, &path).await;
    }
    listed
}

/// The route answers 200 (the node loads what was deployed through it at
/// once; this waits only for a compilation, which a test run's load on two
/// cores may slow down a lot).
async fn serves(api: &Api, path: &str) {
    eventually(&format!("{path} answering 200"), Duration::from_secs(120), || async {
        match api.get_text(path).await {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
}

async fn live_version(api: &Api, id: &str) -> (u64, String) {
    let (status, deployments) = api.call(api.request(Method::GET, "/api/v1/deployments")).await;
    assert_eq!(status, 200);
    let deployment = deployments
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .unwrap_or_else(|| panic!("deployment {id} vanished: {deployments}"))
        .clone();
    (deployment["version"].as_u64().unwrap(), deployment["component"].as_str().unwrap().to_string())
}

async fn drills(env: ServeEnv) {
    let key = env.tenant("acme", "pro", false);
    let hello = std::fs::read(component("hello")).unwrap();
    // A component that takes a while to compile, to be killed mid-way.
    let big = std::fs::read(component("js_hello")).unwrap();
    let mut server = restart(&env).await;
    let mut probe = 0;

    // 1. Uploads, killed at moments from "bytes still arriving" to "after
    //    the answer": acknowledged ones are all there; any other is there
    //    whole or not at all.
    let mut acknowledged = BTreeSet::new();
    let mut moments: Vec<(Vec<u8>, Duration)> = [0u64, 2, 5, 10, 20, 40, 80, 160, 320, 640]
        .iter()
        .enumerate()
        .map(|(i, ms)| (unique(&hello, &format!("upload {i}")), Duration::from_millis(*ms)))
        .collect();
    moments.push((unique(&big, "compiling"), Duration::from_millis(700)));
    for (bytes, after) in moments {
        let api = Api::new(&server, &key);
        let request = api
            .request(Method::POST, "/api/v1/components?name=drill")
            .header("content-type", "application/wasm")
            .body(bytes);
        if let Some((status, body)) = killed_during(&mut server, request, after).await {
            assert!(status == 201 || status == 200, "{status} {body}");
            acknowledged.insert(body["digest"].as_str().unwrap().to_string());
        }
        server = restart(&env).await;
        probe += 1;
        let listed = check_whole(&Api::new(&server, &key), probe).await;
        let lost: Vec<_> = acknowledged.difference(&listed).collect();
        assert!(lost.is_empty(), "acknowledged uploads lost after kill -9 at {after:?}: {lost:?}");
    }
    // Killed right as the 201 arrives.
    for i in 0..3 {
        let api = Api::new(&server, &key);
        let (status, body) = api.upload("drill", unique(&hello, &format!("acked {i}"))).await;
        kill_9(&mut server);
        assert_eq!(status, 201, "{body}");
        server = restart(&env).await;
        probe += 1;
        let listed = check_whole(&Api::new(&server, &key), probe).await;
        assert!(listed.contains(body["digest"].as_str().unwrap()), "the upload acknowledged last");
    }

    // 2. Deploys and rollbacks of one route, killed at swept moments: the
    //    live version is always one that was made whole, an acknowledged
    //    one or a later one, and the route serves it.
    let api = Api::new(&server, &key);
    let mut digests = Vec::new();
    for i in 0..8 {
        let (status, body) = api.upload("drill", unique(&hello, &format!("version {i}"))).await;
        assert!(status == 201 || status == 200, "{body}");
        digests.push(body["digest"].as_str().unwrap().to_string());
    }
    let (status, first) =
        api.deploy(json!({ "route": "/acme/app/...", "component": digests[0] })).await;
    assert_eq!(status, 201, "{first}");
    let id = first["id"].as_str().unwrap().to_string();
    let mut acked_version = 1;
    // The versions that went live, in order: what rollbacks walk back
    // through. A deploy cut short by the kill either made its version live
    // (the restarted node serves a newer one) or left no trace.
    let mut switches: Vec<u64> = vec![1];
    for (i, ms) in [0u64, 2, 5, 10, 20, 60, 150].iter().enumerate() {
        let api = Api::new(&server, &key);
        let request = api
            .request(Method::POST, "/api/v1/deployments")
            .json(&json!({ "route": "/acme/app/...", "component": digests[i + 1] }));
        let answer = killed_during(&mut server, request, Duration::from_millis(*ms)).await;
        if let Some((status, body)) = &answer {
            assert_eq!(*status, 201, "{body}");
            acked_version = body["version"].as_u64().unwrap();
        }
        server = restart(&env).await;
        let api = Api::new(&server, &key);
        let (version, live) = live_version(&api, &id).await;
        assert!(
            version >= acked_version,
            "deploy acknowledged as v{acked_version}, live v{version}"
        );
        assert!(digests.contains(&live), "live on an unknown component {live}");
        serves(&api, "/acme/app/").await;
        if version != *switches.last().unwrap() {
            switches.push(version);
        }
        acked_version = version;
    }
    // Rollbacks: each goes back one switch. How many switches there are
    // depends on where the kills above fell, so the answer that is right
    // depends on it too: 200 to the version live before the current one,
    // or 409 when the live version is the first one (nothing to go back
    // to). Whatever the kill cut short is there whole or not at all.
    for ms in [0u64, 3, 10, 40, 1000] {
        let api = Api::new(&server, &key);
        let (before, _) = live_version(&api, &id).await;
        assert_eq!(before, *switches.last().unwrap(), "live v{before}; switches {switches:?}");
        let previous = switches.len().checked_sub(2).map(|i| switches[i]);
        let request = api
            .request(Method::POST, &format!("/api/v1/deployments/{id}/rollback"))
            .json(&json!({}));
        let answer = killed_during(&mut server, request, Duration::from_millis(ms)).await;
        server = restart(&env).await;
        let api = Api::new(&server, &key);
        let (after, live) = live_version(&api, &id).await;
        match (answer, previous) {
            (Some((200, body)), Some(previous)) => {
                let to = body["version"].as_u64().unwrap();
                assert_eq!(to, previous, "rolled back from v{before} to v{to}: {switches:?}");
                assert_eq!(
                    after, to,
                    "a rollback acknowledged to v{to}, live v{after} after kill -9"
                );
                switches.pop();
            }
            (Some((409, body)), None) => {
                assert_eq!(after, before, "a refused rollback changed the live version: {body}");
            }
            (Some((status, body)), previous) => panic!(
                "rollback from v{before} (the version before: {previous:?}; switches \
                 {switches:?}) answered {status} {body}"
            ),
            (None, previous) => {
                // Cut short: made whole, or not at all.
                if after != before {
                    assert_eq!(
                        Some(after),
                        previous,
                        "an unacknowledged rollback from v{before} left v{after} live"
                    );
                    switches.pop();
                }
            }
        }
        assert!(digests.contains(&live));
        serves(&api, "/acme/app/").await;
    }

    // 3. Key revocation: an acknowledged revocation holds after kill -9;
    //    one cut short leaves the key either working or refused, never
    //    half-revoked (refused on one request and accepted on the next).
    for ms in [0u64, 2, 10, 1000] {
        let api = Api::new(&server, &key);
        let (status, created) =
            api.call(api.request(Method::POST, "/api/v1/keys").json(&json!({}))).await;
        assert_eq!(status, 201, "{created}");
        let (doomed, doomed_id) = (
            created["key"].as_str().unwrap().to_string(),
            created["id"].as_str().unwrap().to_string(),
        );
        let request = api.request(Method::DELETE, &format!("/api/v1/keys/{doomed_id}"));
        let answer = killed_during(&mut server, request, Duration::from_millis(ms)).await;
        server = restart(&env).await;
        let doomed_api = Api::new(&server, &doomed);
        let (first, _) = doomed_api.call(doomed_api.request(Method::GET, "/api/v1/me")).await;
        if let Some((status, _)) = answer {
            assert_eq!(status, 204);
            assert_eq!(first, 401, "a revocation acknowledged before kill -9 was lost");
        }
        for _ in 0..3 {
            let (again, _) = doomed_api.call(doomed_api.request(Method::GET, "/api/v1/me")).await;
            assert_eq!(again, first, "a key both refused and accepted");
        }
    }

    // 4. The compiled-code cache: a truncated file, a corrupted one and an
    //    empty one planted in it are never run; the node compiles again.
    let api = Api::new(&server, &key);
    let mut routes = Vec::new();
    for (i, digest) in digests.iter().take(3).enumerate() {
        let route = format!("/acme/cached{i}");
        let (status, body) = api.deploy(json!({ "route": route, "component": digest })).await;
        assert_eq!(status, 201, "{body}");
        serves(&api, &route).await;
        routes.push(route);
    }
    kill_9(&mut server);
    let cached = cache_files(env.data_dir());
    for digest in digests.iter().take(3) {
        let hex = digest.trim_start_matches("sha256:");
        assert!(cached.iter().any(|p| p.to_string_lossy().contains(hex)), "{hex} not cached");
    }
    for (i, digest) in digests.iter().take(3).enumerate() {
        let hex = digest.trim_start_matches("sha256:");
        let path = cached.iter().find(|p| p.to_string_lossy().contains(hex)).unwrap();
        let mut bytes = std::fs::read(path).unwrap();
        match i {
            0 => bytes.truncate(bytes.len() / 2),
            1 => {
                // Flip a byte in every page past the header: code, data
                // and metadata alike.
                for at in (4096..bytes.len()).step_by(4096) {
                    bytes[at] ^= 0x5a;
                }
            }
            _ => bytes.clear(),
        }
        std::fs::write(path, bytes).unwrap();
    }
    server = restart(&env).await;
    let api = Api::new(&server, &key);
    for route in &routes {
        let (status, body) = api.get_text(route).await;
        assert_eq!((status, body.as_str()), (200, "Hello, world!\n"), "{route}");
    }
    let logs = server.logs();
    assert!(
        logs.matches("discarding unusable compiled code").count() >= 3,
        "{}",
        kept("crash-cache", &logs, 40)
    );
    probe += 1;
    check_whole(&api, probe).await;
}

/// Every compiled-code file under `dir`.
fn cache_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "cwasm") {
                found.push(path);
            }
        }
    }
    found
}

/// A tmpfs of `size` mounted on a fresh folder, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let root = status.lines().any(|l| {
            l.strip_prefix("Uid:").and_then(|ids| ids.split_whitespace().nth(1)) == Some("0")
        });
        if !root {
            eprintln!("skipped: mounting a small disk needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(status.success(), "mount -t tmpfs failed");
        Some(SmallDisk { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills the disk to the last byte with a file of its own.
    fn fill(&self) {
        use std::io::Write as _;
        let mut file = std::fs::File::create(self.path().join("filler")).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let mut byte = [0u8; 1];
        while file.write_all(&byte).is_ok() {
            byte[0] = byte[0].wrapping_add(1);
        }
        let _ = file.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.path().join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

async fn full_disk(mut env: ServeEnv) {
    let Some(disk) = SmallDisk::mount("64m") else { return };
    env.set("WASMWIZ_DATA_DIR", disk.path().to_str().unwrap());
    let key = env.tenant("acme", "pro", false);
    let hello = std::fs::read(component("hello")).unwrap();
    let server = restart(&env).await;
    let api = Api::new(&server, &key);
    let (status, body) = api.upload("first", unique(&hello, "before")).await;
    assert_eq!(status, 201, "{body}");
    let digest = body["digest"].as_str().unwrap().to_string();
    let (status, body) = api.deploy(json!({ "route": "/acme/app", "component": &digest })).await;
    assert_eq!(status, 201, "{body}");
    serves(&api, "/acme/app").await;

    disk.fill();
    // Serving goes on; changes get a clear answer, not a hang or a 500.
    for _ in 0..20 {
        assert_eq!(api.get_text("/acme/app").await.0, 200, "serving on a full disk");
    }
    // An upload needs room for its compiled code (under WASMWIZ_DATA_DIR
    // on either store): refused in words, nothing kept.
    let (status, body) = api.upload("second", unique(&hello, "while full")).await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("no space left"), "{message}");
    // Other changes: on SQLite the store itself is on the full disk.
    let (status, body) = api.call(api.request(Method::POST, "/api/v1/keys").json(&json!({}))).await;
    match env.backend {
        crate::helpers::Backend::Sqlite => {
            assert_eq!(status, 507, "{body}");
            assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
        }
        crate::helpers::Backend::Postgres(_) => assert_eq!(status, 201, "{body}"),
    }
    let (status, body) = api.deploy(json!({ "route": "/acme/second", "component": digest })).await;
    match env.backend {
        crate::helpers::Backend::Sqlite => assert_eq!(status, 507, "{body}"),
        crate::helpers::Backend::Postgres(_) => assert_eq!(status, 201, "{body}"),
    }
    let (status, components) = api.call(api.request(Method::GET, "/api/v1/components")).await;
    assert_eq!(components.as_array().map(Vec::len), Some(1), "{status} {components}");
    let (status, _) = api.call(api.request(Method::GET, "/api/v1/deployments")).await;
    assert_eq!(status, 200, "reading on a full disk");

    // Space returns: the node takes changes again, without a restart.
    disk.free();
    let (status, body) = api.upload("third", unique(&hello, "after")).await;
    assert_eq!(status, 201, "{body}\n{}", kept("crash-full-disk", &server.logs(), 30));
    let digest = body["digest"].as_str().unwrap().to_string();
    let (status, body) = api.deploy(json!({ "route": "/acme/again", "component": digest })).await;
    if status != 201 {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(status, 201, "{body}\n{}", kept("crash-full-disk", &server.logs(), 8));
    serves(&api, "/acme/again").await;
    let (status, ready) = api.call(api.request(Method::GET, "/ready")).await;
    assert_eq!(status, 200, "{ready}");
    drop(server);
}
