//! A node started and stopped inside the test process: every task it
//! starts ends when it shuts down.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use wasmwiz::cli::{Cli, Command};
use wasmwiz::wiring::Serve;

use crate::helpers::client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_run_in_process_ends_every_task_it_started_when_it_shuts_down() {
    let data = tempfile::tempdir().unwrap();
    let cli = Cli::try_parse_from([
        "wasmwiz",
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--data-dir",
        data.path().to_str().unwrap(),
        "--api-salt",
        "an-in-process-salt-of-at-least-32-characters",
    ])
    .unwrap();
    let Command::Serve(args) = cli.command else { unreachable!("parsed `serve`") };
    let serve = Serve::build(args).await.expect("the node starts");
    let addr = serve.local_addr();
    let node = Arc::downgrade(serve.node());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(serve.run(async {
        let _ = stopped.await;
    }));

    let http = client();
    for (path, status) in [("/health", 200), ("/ready", 200), ("/api/v1/tiers", 401), ("/x", 404)] {
        let response = http.get(format!("http://{addr}{path}")).send().await.unwrap();
        assert_eq!(response.status(), status, "{path}");
    }
    assert!(node.strong_count() > 1, "the node's tasks hold it while it runs");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the node stops")
        .unwrap()
        .expect("it ran without an error");
    assert_eq!(node.strong_count(), 0, "a task of the node outlived its shutdown");
    assert!(std::net::TcpStream::connect(addr).is_err(), "the port still accepts");
}
