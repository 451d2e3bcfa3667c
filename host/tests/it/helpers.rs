//! Test helpers: the real `wasmwiz` binary on port 0, real components.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Variables a test's `wasmwiz` keeps from the environment of the test run:
/// what a process needs to run at all. Everything else (every WasmWiz
/// setting a developer may have exported, `QUOTAS_ENABLED`,
/// `SERVER_THREADS`, `DATABASE_URL` ...) is cleared, so each test starts from
/// the defaults and sets only what it means to.
const KEPT_VARS: &[&str] = &["PATH", "HOME", "TMPDIR", "LANG", "RUST_BACKTRACE"];

/// A command running `program` with the environment cleared but for
/// [`KEPT_VARS`].
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    command.env_clear();
    for var in KEPT_VARS {
        if let Some(value) = std::env::var_os(var) {
            command.env(var, value);
        }
    }
    command
}

/// A compiled example or test component, built by `scripts/build-examples.sh`.
pub fn component(name: &str) -> PathBuf {
    let dir = std::env::var_os("WASMWIZ_COMPONENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/components"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: run scripts/build-examples.sh first", path.display());
    path
}

/// Keeps a long diagnostic (a server's log, a tool's output) in
/// `target/test-logs/` and returns its last `lines` lines with the file's
/// path: a failing test's message stays short enough for CI to show whole.
pub fn kept(name: &str, text: &str, lines: usize) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-logs");
    let path = dir.join(format!("{name}-{}-{}.txt", std::process::id(), rand::random::<u32>()));
    let saved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text));
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    match saved {
        Ok(()) => format!("[last {lines} lines; all {} in {}]\n{tail}", all.len(), path.display()),
        Err(e) => format!("[last {lines} lines; not saved: {e}]\n{tail}"),
    }
}

/// A `ROUTE=FILE` argument of `wasmwiz run` for the component `name`.
pub fn mount(route: &str, name: &str) -> String {
    format!("{route}={}", component(name).display())
}

/// A `wasmwiz` process started by a test; killed when dropped.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its console listens (`serve` only).
    pub console: Option<SocketAddr>,
    /// Where its metrics listen (`serve` only, unless public or off).
    pub metrics: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
    /// Set once the process's stderr is closed and every line is in `log`.
    log_ended: Arc<std::sync::atomic::AtomicBool>,
}

impl Server {
    /// Starts `wasmwiz ARGS` on 127.0.0.1:0 and waits for `listening on`.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Server {
        Self::start_command(env!("CARGO_BIN_EXE_wasmwiz"), args, envs)
    }

    /// Starts `PROGRAM ARGS` (which must end up running wasmwiz) and waits
    /// for `listening on`.
    pub fn start_command(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Server {
        let mut command = clean_command(program);
        command
            .args(args)
            .env("SERVER_HOST", "127.0.0.1")
            .env("SERVER_PORT", "0")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("starting wasmwiz");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let log_ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        {
            let log = log.clone();
            let log_ended = log_ended.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    // In the log before the start is reported: a test may
                    // look for the line as soon as it has the address.
                    {
                        let mut log = log.lock().unwrap();
                        log.push_str(&line);
                        log.push('\n');
                    }
                    if let Some(rest) = line.strip_prefix("listening on ")
                        && let Some(tx) = tx.take()
                    {
                        let addr =
                            rest.trim_start_matches("http://").trim_start_matches("https://");
                        let _ = tx.send(addr.parse::<SocketAddr>().expect("listening address"));
                    }
                }
                log_ended.store(true, std::sync::atomic::Ordering::Release);
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("wasmwiz did not start listening:\n{}", log.lock().unwrap());
            }
        };
        // Printed before `listening on`, so already in the log.
        let side = |prefix: &str| {
            let log = log.lock().unwrap();
            log.lines().find_map(|line| {
                let rest = line.strip_prefix(prefix)?;
                let rest = rest.trim_start_matches("http://").trim_start_matches("https://");
                rest.split('/').next()?.parse::<SocketAddr>().ok()
            })
        };
        let console = side("console on ");
        let metrics = side("metrics on ");
        Server { child, addr, console, metrics, log, log_ended }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://ADDR/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `http://CONSOLE_ADDR/PATH`: the console's listener.
    pub fn console_url(&self, path: &str) -> String {
        format!("http://{}{}", self.console.expect("a console listener"), path)
    }

    /// `http://METRICS_ADDR/metrics`: the metrics' listener.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics.expect("a metrics listener"))
    }

    /// Everything the server wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`, or panics after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.logs().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the log never showed `{needle}`:\n{}", self.logs());
    }

    /// Waits until `needle` is in the log at least `times` times, or panics
    /// after `timeout`.
    pub fn wait_for_log_count(&self, needle: &str, times: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.logs().matches(needle).count() >= times {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the log never showed `{needle}` {times} times:\n{}", self.logs());
    }

    /// [`Self::wait_for_log_count`] for async tests: other tasks of a
    /// current-thread runtime go on while it waits.
    pub async fn logged(&self, needle: &str, times: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.logs().matches(needle).count() < times {
            assert!(
                Instant::now() < deadline,
                "the log never showed `{needle}` {times} times:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the process with SIGTERM and returns everything it logged, to
    /// its last line.
    pub fn stop_and_read_log(&mut self) -> String {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(30)).expect("exits on SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.log_ended.load(std::sync::atomic::Ordering::Acquire) {
            assert!(Instant::now() < deadline, "stderr stayed open after the exit");
            std::thread::sleep(Duration::from_millis(10));
        }
        self.logs()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid fits");
        #[expect(unsafe_code, reason = "kill(2) has no safe wrapper in std")]
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("waiting for wasmwiz") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `wasmwiz ARGS` to completion and returns its status and stderr.
pub fn run_to_exit(args: &[&str], envs: &[(&str, &str)]) -> (ExitStatus, String) {
    let output = clean_command(env!("CARGO_BIN_EXE_wasmwiz"))
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running wasmwiz");
    (output.status, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// An HTTP client that never retries and never follows redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(64)
        // The node closes a connection idle for its HEADER_READ_TIMEOUT (10 s
        // by default); a pooled connection reused just as the node closes it
        // fails the request (IncompleteMessage). Idle ones are let go first.
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .expect("building the client")
}

/// Base URL of the test PostgreSQL server (trust auth on loopback).
fn postgres_base() -> String {
    std::env::var("WASMWIZ_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

fn psql(database: &str, sql: &str) {
    let url = format!("{}/{database}", postgres_base());
    let output = Command::new("psql")
        .args([url.as_str(), "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql])
        .output()
        .expect("running psql");
    assert!(output.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&output.stderr));
}

/// A fresh PostgreSQL database for one test, dropped afterwards.
pub struct TestDb {
    name: String,
    /// Its URL.
    pub url: String,
}

impl TestDb {
    /// Creates `wasmwiz_test_<random>`.
    pub fn create() -> TestDb {
        let name = format!("wasmwiz_test_{:016x}", rand::random::<u64>());
        psql("postgres", &format!("CREATE DATABASE {name}"));
        TestDb { url: format!("{}/{name}", postgres_base()), name }
    }

    /// Drops the database now, connections and all (a disaster drill).
    pub fn drop_now(&self) {
        psql("postgres", &format!("DROP DATABASE {} WITH (FORCE)", self.name));
    }
}

/// A URL of the test PostgreSQL server (`WASMWIZ_TEST_PG`) for `database`.
pub fn postgres_url(database: &str) -> String {
    format!("{}/{database}", postgres_base())
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // A second node's handle on the same database has no name: the
        // first node's handle drops it.
        if self.name.is_empty() {
            return;
        }
        let _ = Command::new("psql")
            .args([
                format!("{}/postgres", postgres_base()).as_str(),
                "-qAt",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// Which store a `serve` test runs on.
pub enum Backend {
    /// The embedded SQLite store.
    Sqlite,
    /// A fresh PostgreSQL database.
    Postgres(TestDb),
}

/// The environment of a `wasmwiz serve` test: a store, a data folder, and
/// the variables every process of the test shares.
pub struct ServeEnv {
    /// The store.
    pub backend: Backend,
    /// Data folder (SQLite file, compiled-code cache); removed on drop.
    _data_dir: tempfile::TempDir,
    envs: Vec<(String, String)>,
}

impl ServeEnv {
    /// On the embedded SQLite store.
    pub fn sqlite() -> ServeEnv {
        Self::with(Backend::Sqlite)
    }

    /// On a fresh PostgreSQL database.
    pub fn postgres() -> ServeEnv {
        Self::with(Backend::Postgres(TestDb::create()))
    }

    fn with(backend: Backend) -> ServeEnv {
        let data_dir = tempfile::tempdir().expect("a temporary folder");
        let mut envs = vec![
            ("WASMWIZ_DATA_DIR".to_string(), data_dir.path().display().to_string()),
            ("API_SALT".to_string(), "test-salt-that-is-at-least-32-characters".to_string()),
        ];
        if let Backend::Postgres(db) = &backend {
            envs.push(("DATABASE_URL".to_string(), db.url.clone()));
        }
        ServeEnv { backend, _data_dir: data_dir, envs }
    }

    /// The data folder (the SQLite store's file is `wasmwiz.db` in it).
    pub fn data_dir(&self) -> &std::path::Path {
        self._data_dir.path()
    }

    /// Shares one compiled-code cache (content-addressed, so safe to share)
    /// with every test that asks for it, and gives compilations more time:
    /// for tests of what large components do once compiled (Python and
    /// JavaScript take seconds each to compile), not of compiling them.
    pub fn share_compiled_code(&mut self) -> &mut Self {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("compiled-code");
        self.set("COMPILE_CACHE_DIR", dir.to_str().unwrap()).set("COMPILE_TIMEOUT", "300")
    }

    /// Sets a variable for every process started from now on.
    pub fn set(&mut self, var: &str, value: &str) -> &mut Self {
        self.envs.retain(|(v, _)| v != var);
        self.envs.push((var.to_string(), value.to_string()));
        self
    }

    /// A second data folder over the same store (PostgreSQL, through
    /// `DATABASE_URL`): another node.
    pub fn other_node(&self) -> ServeEnv {
        let data_dir = tempfile::tempdir().expect("a temporary folder");
        let mut envs = self.envs.clone();
        envs.retain(|(v, _)| v != "WASMWIZ_DATA_DIR");
        envs.push(("WASMWIZ_DATA_DIR".to_string(), data_dir.path().display().to_string()));
        assert!(
            self.envs.iter().any(|(v, _)| v == "DATABASE_URL"),
            "the embedded store is single-node: another node needs DATABASE_URL"
        );
        let backend = match &self.backend {
            Backend::Sqlite => Backend::Sqlite,
            Backend::Postgres(db) => {
                Backend::Postgres(TestDb { name: String::new(), url: db.url.clone() })
            }
        };
        ServeEnv { backend, _data_dir: data_dir, envs }
    }

    fn env_refs(&self) -> Vec<(&str, &str)> {
        self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    /// Runs a `wasmwiz` command against this store to completion.
    pub fn command(&self, args: &[&str]) -> (ExitStatus, String, String) {
        let output = clean_command(env!("CARGO_BIN_EXE_wasmwiz"))
            .args(args)
            .envs(self.env_refs())
            .stdin(Stdio::null())
            .output()
            .expect("running wasmwiz");
        (
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Runs `wasmwiz admin ...`, panicking on failure; returns stdout.
    pub fn admin(&self, args: &[&str]) -> String {
        let mut full = vec!["admin"];
        full.extend_from_slice(args);
        let (status, stdout, stderr) = self.command(&full);
        assert!(status.success(), "wasmwiz admin {args:?} failed:\n{stderr}");
        stdout
    }

    /// Creates a tenant on `tier` and a key for it (`--admin` if asked).
    pub fn tenant(&self, name: &str, tier: &str, admin: bool) -> String {
        self.admin(&["tenant", "create", name, "--tier", tier]);
        let mut args = vec!["key", "create", name];
        if admin {
            args.push("--admin");
        }
        self.admin(&args).trim().to_string()
    }

    /// Grants `tenant` each of `grants` as an operator would: a route
    /// (`/shop/...`) or, without a leading `/`, a host.
    pub fn grant(&self, tenant: &str, grants: &[&str]) {
        for grant in grants {
            let flag = if grant.starts_with('/') { "--route" } else { "--host" };
            self.admin(&["tenant", "grant", tenant, flag, grant]);
        }
    }

    /// Starts `wasmwiz serve` on 127.0.0.1:0.
    pub fn serve(&self) -> Server {
        Server::start(&["serve"], &self.env_refs())
    }
}

/// A client of the API with a key.
#[derive(Clone)]
pub struct Api {
    /// Base URL, `http://ADDR`.
    pub base: String,
    key: Option<String>,
    http: reqwest::Client,
    /// The node's metrics, `http://METRICS_ADDR/metrics`, if it has them.
    pub metrics: Option<String>,
}

impl Api {
    /// A client of `server` using `key`.
    pub fn new(server: &Server, key: &str) -> Api {
        Api {
            base: server.url(""),
            key: Some(key.to_string()),
            http: client(),
            metrics: server.metrics.map(|_| server.metrics_url()),
        }
    }

    /// A client of `server` sending no key.
    pub fn anonymous(server: &Server) -> Api {
        Api {
            base: server.url(""),
            key: None,
            http: client(),
            metrics: server.metrics.map(|_| server.metrics_url()),
        }
    }

    /// A request with the key set.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// Sends and returns the status and the JSON body (Null when empty).
    pub async fn call(&self, request: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
        let response = request.send().await.expect("the request reaches the server");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("a body");
        let json = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!("status {status}: not JSON: {}", String::from_utf8_lossy(&bytes))
            })
        };
        (status, json)
    }

    /// `POST /api/v1/components?name=NAME` with a file's bytes.
    pub async fn upload(&self, name: &str, bytes: Vec<u8>) -> (u16, serde_json::Value) {
        self.call(
            self.request(reqwest::Method::POST, &format!("/api/v1/components?name={name}"))
                .header("content-type", "application/wasm")
                .body(bytes),
        )
        .await
    }

    /// Uploads a component built by the examples script; returns its digest.
    pub async fn upload_component(&self, name: &str) -> String {
        let bytes = std::fs::read(component(name)).expect("the component file");
        let (status, body) = self.upload(name, bytes).await;
        assert!(status == 200 || status == 201, "upload of {name}: {status} {body}");
        body["digest"].as_str().expect("a digest").to_string()
    }

    /// `POST /api/v1/deployments`.
    pub async fn deploy(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.call(self.request(reqwest::Method::POST, "/api/v1/deployments").json(&body)).await
    }

    /// Uploads `name` and deploys it on `route`; returns the deployment.
    pub async fn deploy_component(&self, name: &str, route: &str) -> serde_json::Value {
        let digest = self.upload_component(name).await;
        let (status, body) =
            self.deploy(serde_json::json!({ "route": route, "component": digest })).await;
        assert_eq!(status, 201, "deploy {name} on {route}: {body}");
        body
    }

    /// `GET path` without a key, returning status and body text.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("the request reaches the server");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }
}

/// A Redis server of a test's own, on a free port, for tests that stop or
/// stall it without disturbing the shared one.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port.
    pub fn start() -> RedisServer {
        let port = free_port();
        let mut server = RedisServer { child: None, port };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts it on the same port and waits until it answers.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it (the port then refuses connections).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGSTOP or SIGCONT: a stalled Redis accepts connections and
    /// never answers.
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.as_ref().expect("running").id()).unwrap();
        #[expect(unsafe_code, reason = "kill(2) has no safe wrapper in std")]
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped process must be resumed to die.
            let pid = i32::try_from(child.id()).unwrap();
            #[expect(unsafe_code, reason = "kill(2) has no safe wrapper in std")]
            // SAFETY: signalling our own child process.
            unsafe {
                libc::kill(pid, libc::SIGCONT);
            }
        }
        self.stop();
    }
}

/// The shared test Redis.
pub fn shared_redis_url() -> String {
    std::env::var("WASMWIZ_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("wwtest{:016x}", rand::random::<u64>())
}

/// Waits, if needed, until the current UTC minute has at least
/// `seconds` left, so a test that counts within one minute window does not
/// straddle two.
pub async fn wait_for_minute_room(seconds: u64) {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let left = 60.0 - now % 60.0;
    if left < seconds as f64 {
        tokio::time::sleep(Duration::from_secs_f64(left + 0.05)).await;
    }
}

/// Runs each listed `async fn(ServeEnv)` test once on SQLite and once on a
/// fresh PostgreSQL database, as `sqlite::NAME` and `postgres::NAME`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(crate::helpers::ServeEnv::sqlite()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(crate::helpers::ServeEnv::postgres()).await
                }
            )*
        }
    };
}
pub(crate) use on_both_stores;

/// What a check of [`eventually`] says: settled with a value, or not yet
/// (with what it saw, for the message if it never settles).
pub trait Settled {
    /// The value once settled.
    type Value;
    /// `Ok` once settled; `Err` with what was seen, if anything, before.
    fn settled(self) -> Result<Self::Value, Option<String>>;
}

impl<T> Settled for Option<T> {
    type Value = T;
    fn settled(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T> Settled for Result<T, String> {
    type Value = T;
    fn settled(self) -> Result<T, Option<String>> {
        self.map_err(Some)
    }
}

/// Runs `check` until it settles (`Some`, or `Ok`), and returns its value;
/// panics with `what`, and what the last check saw (an `Err`'s text), after
/// `timeout`. Checks come 10 ms apart at first, then further apart up to
/// 100 ms. The one way the tests wait for a condition instead of a time.
pub async fn eventually<S, F, Fut>(what: &str, timeout: Duration, mut check: F) -> S::Value
where
    S: Settled,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        let seen = match check().await.settled() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            match seen {
                Some(seen) => panic!("{what}: not within {timeout:?}; last seen: {seen}"),
                None => panic!("{what}: not within {timeout:?}"),
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Sends `head` (a request line and headers, `\r\n`-separated, without the
/// blank line) as it is over a fresh connection to `addr`, and returns the
/// status and body of the answer: for request targets no client library
/// sends unnormalised (`/a/../b`).
pub async fn raw_request(addr: SocketAddr, head: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connecting");
    let request = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("sending");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("reading");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    (status, body)
}

/// The value of the metric line starting with `series` (name and labels,
/// as Prometheus prints them) in the node's metrics, if there is one.
pub async fn metric(server: &Server, series: &str) -> Option<f64> {
    let text = client().get(server.metrics_url()).send().await.ok()?.text().await.ok()?;
    let prefix = format!("{series} ");
    text.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.trim().parse().ok())
}

/// A port free now, below Linux's ephemeral range (32768 and up): README's
/// servers bind it a moment later, and a port the kernel hands out for
/// `bind(0)` could meanwhile go to another test's listener or connection.
pub fn free_port() -> u16 {
    loop {
        let port = 20_000 + rand::random::<u16>() % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
