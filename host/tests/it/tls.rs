//! TLS (rustls, ALPN h2 and http/1.1), certificate reload, the handshake
//! timeout, and HTTP/2 in cleartext with prior knowledge — driven by curl.

use std::io::Read as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::{Server, component};

/// Writes a self-signed certificate for `localhost` whose subject CN is
/// `name`.
fn write_cert(dir: &Path, name: &str) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    // Written beside, then renamed: the server never reads half a file.
    std::fs::write(dir.join("cert.pem.tmp"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem.tmp"), key.serialize_pem()).unwrap();
    std::fs::rename(dir.join("key.pem.tmp"), dir.join("key.pem")).unwrap();
    std::fs::rename(dir.join("cert.pem.tmp"), dir.join("cert.pem")).unwrap();
}

fn tls_server(dir: &Path, extra_env: &[(&str, &str)]) -> Server {
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    let hello = format!("/hello={}", component("hello").display());
    let stream = format!("/stream={}", component("stream").display());
    let mut env = vec![("TLS_CERT_PATH", cert.as_str()), ("TLS_KEY_PATH", key.as_str())];
    env.extend_from_slice(extra_env);
    Server::start(&["run", &hello, &stream], &env)
}

/// Runs curl; returns (stdout, stderr).
fn curl(args: &[&str]) -> (String, String) {
    let output = Command::new("curl").args(args).output().expect("curl is installed");
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn https_url(server: &Server, path: &str) -> String {
    format!("https://localhost:{}{path}", server.addr.port())
}

#[test]
fn curl_speaks_http2_and_http11_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "first");
    let server = tls_server(dir.path(), &[]);
    assert!(server.logs().contains("listening on https://"), "{}", server.logs());
    let url = https_url(&server, "/hello");

    let (out, err) = curl(&["-sk", "--http2", "-w", "\n%{http_version} %{http_code}", &url]);
    assert_eq!(out, "Hello, world!\n\n2 200", "{err}");
    let (out, err) = curl(&["-sk", "--http1.1", "-w", "\n%{http_version} %{http_code}", &url]);
    assert_eq!(out, "Hello, world!\n\n1.1 200", "{err}");
    // Plain HTTP to a TLS port is not served.
    let (out, _) = curl(&[
        "-s",
        "-w",
        "%{http_code}",
        &format!("http://127.0.0.1:{}/hello", server.addr.port()),
    ]);
    assert_ne!(out, "200");
}

#[test]
fn http2_with_prior_knowledge_works_in_cleartext() {
    let hello = format!("/hello={}", component("hello").display());
    let server = Server::start(&["run", &hello], &[]);
    let (out, err) = curl(&[
        "-s",
        "--http2-prior-knowledge",
        "-w",
        "\n%{http_version} %{http_code}",
        &server.url("/hello"),
    ]);
    assert_eq!(out, "Hello, world!\n\n2 200", "{err}");
}

#[test]
fn a_replaced_certificate_is_served_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "first");
    let server = tls_server(dir.path(), &[]);
    let subject = |server: &Server| {
        let (_, err) = curl(&["-vsk", "-o", "/dev/null", &https_url(server, "/hello")]);
        err.lines().find(|l| l.contains("subject:")).unwrap_or_default().to_string()
    };
    assert!(subject(&server).contains("CN=first"), "{}", subject(&server));

    // A slow response is in flight across the reload.
    let url = https_url(&server, "/stream?chunks=10&size=100&delay_ms=200");
    let slow = std::thread::spawn(move || {
        curl(&["-sk", "--http2", "-o", "/dev/null", "-w", "%{size_download} %{http_code}", &url])
    });
    std::thread::sleep(Duration::from_millis(300));

    write_cert(dir.path(), "second");
    server.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !subject(&server).contains("CN=second") {
        assert!(Instant::now() < deadline, "the new certificate was never served");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (out, err) = slow.join().unwrap();
    assert_eq!(out, "1000 200", "the in-flight response was dropped or cut: {err}");

    // An invalid certificate on disk keeps the current one in service.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("keeping the previous one", Duration::from_secs(5));
    assert!(subject(&server).contains("CN=second"));
}

#[test]
fn a_client_that_never_finishes_the_handshake_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "first");
    let server = tls_server(dir.path(), &[("TLS_HANDSHAKE_TIMEOUT", "1")]);
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = stream.read(&mut buf);
    assert!(matches!(read, Ok(0)) || read.is_err(), "{read:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}

#[test]
fn a_bad_certificate_path_is_refused_at_start() {
    let hello = component("hello");
    let (status, stderr) = crate::helpers::run_to_exit(
        &["run", hello.to_str().unwrap()],
        &[
            ("TLS_CERT_PATH", "/nonexistent/cert.pem"),
            ("TLS_KEY_PATH", "/nonexistent/key.pem"),
            ("SERVER_PORT", "0"),
        ],
    );
    assert!(!status.success());
    assert!(stderr.contains("TLS_CERT_PATH"), "{stderr}");
}
