//! Test helpers: the real `wasmwiz` binary on port 0, real components.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Variables of the developer's environment that would change what a test
/// server does; every test starts from none of them.
const SCRUBBED_VARS: &[&str] = &[
    "DATABASE_URL",
    "REDIS_URL",
    "API_SALT",
    "ENVIRONMENT",
    "SERVER_HOST",
    "SERVER_PORT",
    "LOG_LEVEL",
    "MAX_WASM_SIZE",
    "MAX_INPUT_SIZE",
    "EXECUTION_TIMEOUT",
    "MEMORY_LIMIT",
    "TLS_CERT_PATH",
    "TLS_KEY_PATH",
    "PROMETHEUS_ENABLED",
    "METRICS_ENDPOINT",
    "METRICS_ADDR",
    "WASMWIZ_DATA_DIR",
    "WASMWIZ_URL",
    "WASMWIZ_API_KEY",
    "INSTANCE_POOL_SIZE",
];

/// A compiled example or test component, built by `scripts/build-examples.sh`.
pub fn component(name: &str) -> PathBuf {
    let dir = std::env::var_os("WASMWIZ_COMPONENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/components"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-examples.sh first",
        path.display()
    );
    path
}

/// A `wasmwiz` process started by a test; killed when dropped.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `wasmwiz ARGS` on 127.0.0.1:0 and waits for `listening on`.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wasmwiz"));
        for var in SCRUBBED_VARS {
            command.env_remove(var);
        }
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
        let (tx, rx) = mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.strip_prefix("listening on ")
                        && let Some(tx) = tx.take()
                    {
                        let addr = rest
                            .trim_start_matches("http://")
                            .trim_start_matches("https://");
                        let _ = tx.send(addr.parse::<SocketAddr>().expect("listening address"));
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("wasmwiz did not start listening:\n{}", log.lock().unwrap());
            }
        };
        Server { child, addr, log }
    }

    /// `http://ADDR/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
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
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasmwiz"));
    for var in SCRUBBED_VARS {
        command.env_remove(var);
    }
    let output = command
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running wasmwiz");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// An HTTP client that never retries and never follows redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(64)
        .build()
        .expect("building the client")
}
