//! Protocol abuse over raw sockets: slow clients, framing tricks, oversized
//! parts. Every case is answered as README.md says, and no request is ever
//! smuggled through to a guest.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::helpers::{Server, component, mount};

fn server(extra_env: &[(&str, &str)]) -> Server {
    let args = [
        "run".to_string(),
        mount("/hello", "hello"),
        mount("/echo", "echo"),
        mount("/smuggled", "hello"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env = vec![("HEADER_READ_TIMEOUT", "1"), ("BODY_READ_TIMEOUT", "1")];
    env.extend_from_slice(extra_env);
    Server::start(&args, &env)
}

/// Sends `bytes`, then reads until the server closes the connection or
/// `wait` passes; returns what was read and whether the server closed.
fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let _ = stream.write_all(bytes);
    read_until_closed(&mut stream, wait)
}

fn read_until_closed(stream: &mut TcpStream, wait: Duration) -> (String, bool) {
    let (out, closed) = read_bytes_until_closed(stream, wait);
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Reads until the server closes the connection (or resets it) or `wait`
/// passes: what was read, and whether the server closed. The stream needs
/// a short read timeout.
fn read_bytes_until_closed(stream: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

fn responses(text: &str) -> usize {
    text.matches("HTTP/1.1 ").count()
}

/// No access line for `/smuggled` was logged; then proves the check can
/// see one by sending a real request there.
fn assert_nothing_smuggled(server: &Server) {
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !server.logs().contains("route=\"/smuggled\""),
        "a request reached /smuggled:\n{}",
        server.logs()
    );
    let (text, _) = exchange(
        server.addr,
        b"GET /smuggled HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    server.wait_for_log("route=\"/smuggled\"", Duration::from_secs(5));
}

#[test]
fn slowloris_headers_are_cut_off_by_the_header_timeout() {
    let server = server(&[]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n").unwrap();
    stream.set_nonblocking(true).unwrap();
    let started = Instant::now();
    let mut closed_at = None;
    for i in 0..30 {
        std::thread::sleep(Duration::from_millis(200));
        let mut buf = [0u8; 1024];
        let closed = match stream.read(&mut buf) {
            Ok(_) => true, // closed (0) or answered (408) before closing
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        };
        if closed || stream.write_all(format!("X-Slow-{i}: a\r\n").as_bytes()).is_err() {
            closed_at = Some(started.elapsed());
            break;
        }
    }
    let closed_at = closed_at.expect("the server kept a slowloris connection open for 6 s");
    assert!(closed_at < Duration::from_secs(3), "closed only after {closed_at:?}");
}

#[test]
fn a_stalled_chunked_body_gets_408() {
    let server = server(&[]);
    let started = Instant::now();
    let (text, _) = exchange(
        server.addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
        Duration::from_secs(5),
    );
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_stalled_body_of_known_length_closes_the_connection() {
    let server = server(&[]);
    let started = Instant::now();
    let (_, closed) = exchange(
        server.addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
        Duration::from_secs(6),
    );
    assert!(closed, "the connection was still open after 6 s");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
}

#[test]
fn content_length_with_transfer_encoding_smuggles_nothing() {
    let server = server(&[]);
    let attack = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 47\r\nTransfer-Encoding: chunked\r\n\r\n\
        0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let (text, closed) = exchange(server.addr, attack, Duration::from_secs(3));
    assert!(responses(&text) <= 1, "two answers to one request: {text}");
    assert!(text.starts_with("HTTP/1.1 400") || closed, "{text}");
    assert_nothing_smuggled(&server);
}

#[test]
fn duplicate_content_lengths_get_400() {
    let server = server(&[]);
    let (text, _) = exchange(
        server.addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    );
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(responses(&text), 1, "{text}");
    assert_nothing_smuggled(&server);
}

#[test]
fn a_bad_chunk_size_is_refused() {
    let server = server(&[]);
    let (text, closed) = exchange(
        server.addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    );
    assert!(!text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.starts_with("HTTP/1.1 400") || closed, "{text}");
    assert_nothing_smuggled(&server);
}

#[test]
fn bare_line_feeds_are_one_request_at_most() {
    let server = server(&[]);
    let (text, _) = exchange(
        server.addr,
        b"GET /hello HTTP/1.1\nHost: x\nConnection: close\n\n",
        Duration::from_secs(3),
    );
    assert!(responses(&text) <= 1, "{text}");
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );
}

#[test]
fn oversized_headers_get_431_and_a_long_uri_gets_414() {
    let server = server(&[]);
    let big = format!("GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(70 * 1024));
    let (text, _) = exchange(server.addr, big.as_bytes(), Duration::from_secs(3));
    assert!(text.starts_with("HTTP/1.1 431"), "{}", &text[..text.len().min(200)]);

    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let request = format!("GET /hello HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let (text, _) = exchange(server.addr, request.as_bytes(), Duration::from_secs(3));
    assert!(text.starts_with("HTTP/1.1 431"), "{}", &text[..text.len().min(200)]);

    let request =
        format!("GET /hello?{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "q".repeat(9000));
    let (text, _) = exchange(server.addr, request.as_bytes(), Duration::from_secs(3));
    assert!(text.starts_with("HTTP/1.1 414"), "{}", &text[..text.len().min(200)]);
}

#[test]
fn a_body_that_will_be_refused_gets_413_without_100_continue() {
    let server = server(&[("MAX_INPUT_SIZE", "1000")]);
    let (text, _) = exchange(
        server.addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
        Duration::from_secs(3),
    );
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");

    // A body that fits is asked for, and echoed.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 100 Continue"), "{head}");
    stream.write_all(b"hello").unwrap();
    let (rest, _) = read_until_closed(&mut stream, Duration::from_secs(3));
    let text = head + &rest;
    assert!(text.contains("200 OK") && text.contains("\r\nhello\r\n"), "{text}");
}

#[test]
fn connections_over_the_cap_wait_instead_of_failing() {
    connections_over_the_cap_wait(&[]);
}

/// With a socket per serving thread, a connection that closes lets in the
/// one waiting, whichever socket the kernel queued it on.
#[test]
fn connections_over_the_cap_wait_with_two_server_threads() {
    connections_over_the_cap_wait(&[("SERVER_THREADS", "2")]);
}

fn connections_over_the_cap_wait(extra_env: &[(&str, &str)]) {
    let mut env = vec![("MAX_CONNECTIONS", "2"), ("HEADER_READ_TIMEOUT", "30")];
    env.extend_from_slice(extra_env);
    let server = server(&env);
    let request = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut first = TcpStream::connect(server.addr).unwrap();
    let mut second = TcpStream::connect(server.addr).unwrap();
    for stream in [&mut first, &mut second] {
        stream.write_all(request).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 1024];
        assert!(stream.read(&mut buf).unwrap() > 0, "an open connection is served");
    }
    // The third is accepted by the kernel but not served yet.
    let mut third = TcpStream::connect(server.addr).unwrap();
    third.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    third.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buf = [0u8; 1024];
    assert!(third.read(&mut buf).is_err(), "served over the connection cap");
    drop(first);
    let (text, _) = read_until_closed(&mut third, Duration::from_secs(3));
    assert!(text.starts_with("HTTP/1.1 200"), "the waiting connection was not served: {text}");
}

#[test]
fn running_out_of_file_descriptors_backs_off_and_recovers() {
    // A shell lowers the descriptor limit, then becomes wasmwiz.
    let hello = component("hello");
    let script = format!(
        "ulimit -n 48 && exec {} run --addr 127.0.0.1:0 /hello={}",
        env!("CARGO_BIN_EXE_wasmwiz"),
        hello.display()
    );
    let server = Server::start_command("sh", &["-c", &script], &[]);
    let mut streams = Vec::new();
    for _ in 0..80 {
        if let Ok(stream) = TcpStream::connect(server.addr) {
            streams.push(stream);
        }
    }
    server.wait_for_log("resources exhausted", Duration::from_secs(5));
    drop(streams);
    std::thread::sleep(Duration::from_millis(1500));
    let (text, _) = exchange(
        server.addr,
        b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(text.starts_with("HTTP/1.1 200"), "not serving after descriptors came back: {text}");
}

/// An HTTP/2 frame: a 9-byte header and its payload.
fn h2_frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags, 0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// Opens a prior-knowledge HTTP/2 connection, sends its SETTINGS and
/// `count` frames of `kind` in one write, and reads until the server
/// closes or three seconds pass: what was read, and whether it closed.
fn h2_control_frames(addr: SocketAddr, kind: u8, count: usize) -> (Vec<u8>, bool) {
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(h2_frame(0x4, 0, &[]));
    let payload: &[u8] = if kind == 0x6 { &[1; 8] } else { &[] };
    for _ in 0..count {
        bytes.extend(h2_frame(kind, 0, payload));
    }
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let _ = stream.write_all(&bytes);
    read_bytes_until_closed(&mut stream, Duration::from_secs(3))
}

/// The frames of `kind` with the ACK flag in what a server wrote.
fn acks(mut written: &[u8], kind: u8) -> usize {
    let mut n = 0;
    while written.len() >= 9 {
        let length = u32::from_be_bytes([0, written[0], written[1], written[2]]) as usize;
        if written[3] == kind && written[4] & 1 == 1 {
            n += 1;
        }
        written = &written[(9 + length).min(written.len())..];
    }
    n
}

#[test]
fn an_http2_client_flooding_settings_or_pings_is_disconnected_and_others_are_served() {
    let server = server(&[]);
    let burst = wasmwiz::server::CONTROL_FRAME_BURST as usize;
    for (kind, name) in [(0x4u8, "SETTINGS"), (0x6, "PING")] {
        // Within the burst (its first SETTINGS counts): every frame is
        // answered and the connection stays open.
        let (written, closed) = h2_control_frames(server.addr, kind, burst - 1);
        assert!(!closed, "{name}: a connection within the burst was closed");
        // The server acknowledges the client's SETTINGS too.
        let expected = if kind == 0x4 { burst } else { burst - 1 };
        assert_eq!(acks(&written, kind), expected, "{name}: answers within the burst");
        // A flood: nothing past the burst is answered, and the connection
        // is closed after FLOOD_CLOSE_DELAY (the client's writes stall
        // meanwhile).
        let started = Instant::now();
        let (written, closed) = h2_control_frames(server.addr, kind, 50_000);
        assert!(closed, "{name}: a flooding connection was left open");
        assert!(started.elapsed() >= wasmwiz::server::FLOOD_CLOSE_DELAY, "{name}: closed at once");
        assert!(acks(&written, kind) <= burst, "{name}: answered past the burst");
    }
    // A well-behaved HTTP/2 client is served meanwhile and after.
    let output = std::process::Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "-w", "\n%{http_version} %{http_code}"])
        .arg(server.url("/hello"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "Hello, world!\n\n2 200");
    assert!(server.logs().contains("control frames past the limit"), "{}", server.logs());
}
