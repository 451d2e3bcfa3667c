//! Where the time of one invocation goes, in process (no sockets).
//!
//! `cargo bench --bench invocation` prints, for `hello`:
//! - route lookup among 10 to 10,000 routes;
//! - one access-log line, text and JSON, through the node's subscriber;
//! - admission by the in-process quota and, when Redis answers on
//!   `$REDIS_URL` (default `redis://127.0.0.1:6379`), by the Redis quota
//!   (leases included, as the server runs it);
//! - the phases of an invocation: sandbox (store and contexts),
//!   instantiation, the guest's handler, response body, teardown;
//! - a whole invocation through `Runtime::invoke` (what the server calls);
//! - the same through `Runtime::invoke` with an instance pool, as a
//!   deployment with `max_instance_reuse` above 1 runs it (one instance
//!   serves every request).
//!
//! `... -- languages` prints the same phases, and whole invocations fresh
//! and reused, for `hello` in each language `scripts/build-examples.sh`
//! builds (Rust, Python, JavaScript), one column each.
//!
//! `... -- precompile OUT` writes hello's compiled code to OUT, and
//! `... -- invocations CODE N [reused]` loads it and runs N invocations
//! (on fresh instances, or on one reused instance) and nothing else:
//! `benches/callgrind.sh` counts the instructions of that under valgrind,
//! once with N = 0 and once with N > 0, so the difference per invocation is
//! the stable figure regressions show in.

#![expect(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::{BodyExt as _, Empty};
use wasmwiz::dataplane::log_access;
use wasmwiz::logging::BatchWriter;
use wasmwiz::quota::local::LocalQuota;
use wasmwiz::quota::redis::RedisQuota;
use wasmwiz::quota::{QuotaBackend, Rates};
use wasmwiz::router::{RoutePattern, RouteTable};
use wasmwiz::runtime::{
    App, Capabilities, Instances, InvokeOptions, Limits, OutboundPolicy, OutboundSettings, Runtime,
    RuntimeConfig,
};
use wasmwiz::tenancy::MAX_INSTANCE_REUSE;

/// The limits every benchmark invocation runs with (the defaults).
const LIMITS: Limits =
    Limits { memory_bytes: 128 << 20, timeout: Duration::from_secs(5), max_input_bytes: 1 << 20 };

fn hello_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/components/hello.wasm")
}

fn request() -> Request<wasmtime_wasi_http::p2::body::HyperIncomingBody> {
    Request::get("http://localhost/hello")
        .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
        .expect("a valid request")
}

fn outbound() -> OutboundPolicy {
    OutboundPolicy::new(&[], Arc::new(OutboundSettings::default()))
}

fn runtime() -> Runtime {
    Runtime::new(&RuntimeConfig::with_pool(64)).expect("the runtime")
}

/// A runtime with one pool slot: under valgrind the address space cannot
/// hold the reservation of a larger pool (8 GiB per slot).
fn one_slot_runtime() -> Runtime {
    // One warm slot: room for the idle instance of the reuse row.
    let config = RuntimeConfig { warm_slots: 1, ..RuntimeConfig::with_pool(1) };
    Runtime::new(&config).expect("the runtime")
}

/// Mean time per call of `f` over `n` calls.
fn mean(n: u32, mut f: impl FnMut()) -> Duration {
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    started.elapsed() / n
}

fn route_lookup() {
    println!("route lookup (a path under one route of N, mean of 1,000,000):");
    println!("| routes | ns per lookup |");
    println!("| ---: | ---: |");
    for n in [10usize, 100, 1_000, 10_000] {
        let mut table = RouteTable::new();
        for i in 0..n {
            let pattern = RoutePattern::parse_unreserved(&format!("/r{i:05}/..."), None).unwrap();
            table.insert(&pattern, i);
        }
        let path = format!("/r{:05}/some/deeper/path", n / 2);
        let found = table.lookup(Some("localhost"), &path).copied();
        assert_eq!(found, Some(n / 2));
        let t = mean(1_000_000, || {
            std::hint::black_box(table.lookup(Some("localhost"), std::hint::black_box(&path)));
        });
        println!("| {n} | {} |", t.as_nanos());
    }
    println!();
}

async fn admission() {
    println!("admission of an admitted request (mean of 100,000):");
    println!("| backend | ns per admission |");
    println!("| --- | ---: |");
    let rates = Rates { per_minute: Some(1_000_000_000), per_day: Some(1_000_000_000_000) };
    let local = LocalQuota::new();
    let t = mean(100_000, || {
        std::hint::black_box(local.admit_now(1, rates));
    });
    println!("| in process | {} |", t.as_nanos());
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("wwbench{}", std::process::id());
    if let Ok(redis) = RedisQuota::connect(&url, &prefix, Duration::from_millis(100)) {
        let n = 100_000u32;
        let started = Instant::now();
        let mut round_trips = 0;
        for _ in 0..n {
            if redis.admit_now(1, rates).is_none() {
                round_trips += 1;
                std::hint::black_box(redis.admit(1, rates).await);
            }
        }
        let t = started.elapsed() / n;
        if redis.errors() == 0 {
            println!("| Redis (leases; {round_trips} round trips) | {} |", t.as_nanos());
        } else {
            println!("| Redis | not measured: Redis did not answer on {url} |");
        }
    }
    println!();
}

/// One access-log line through the node's own subscriber (as `init`
/// builds it: plain text, then JSON as in production) into the batching
/// writer, whose thread writes to nowhere.
fn access_log() {
    println!("access-log line, formatted and handed to the log thread (mean of 100,000):");
    println!("| format | ns per line |");
    println!("| --- | ---: |");
    for (name, production) in [("text (development)", false), ("JSON (production)", true)] {
        let (writer, guard) = BatchWriter::spawn(std::io::sink(), wasmwiz::logging::MAX_BUFFERED)
            .expect("the log thread");
        let filter = tracing_subscriber::EnvFilter::new("info");
        let subscriber = wasmwiz::logging::subscriber(filter, production, writer);
        let method = http::Method::GET;
        let t = tracing::subscriber::with_default(subscriber, || {
            mean(100_000, || {
                log_access("e8187c4e00000001", &method, "/r0500/...", "bench", 200, LIMITS.timeout);
            })
        });
        drop(guard);
        println!("| {name} | {} |", t.as_nanos());
    }
    println!();
}

/// Mean microseconds per invocation of each phase, and of whole
/// invocations on fresh and on reused instances (`None` where the
/// component cannot serve two requests on one instance).
struct PhaseFigures {
    phases: [f64; 6],
    whole: f64,
    /// With reuse: the mean, and how many requests ran on a new instance
    /// all the same (the guest kept too much of its earlier requests).
    reused: Option<(f64, u32)>,
}

/// Whether a component's instances can be reused, and whether every
/// request after the first must then run on a kept one.
#[derive(Clone, Copy, PartialEq)]
enum Reuse {
    No,
    Always,
    /// Mostly: StarlingMonkey keeps answered requests until its garbage
    /// collector runs, and an instance holding too many is replaced.
    Mostly,
}

const PHASE_NAMES: [&str; 6] = [
    "sandbox: store, WASI and HTTP contexts",
    "instantiate (pool slot, memory image)",
    "guest handler (host calls included)",
    "response body",
    "teardown (store dropped, slot reset)",
    "sum",
];

/// Measures `app` (whose answer is `Hello, world!\n`) `n` times per row,
/// after `n / 10` invocations to warm up.
async fn measure(runtime: &Runtime, app: &App, n: u32, reuse: Reuse) -> PhaseFigures {
    let mut sum = wasmwiz::runtime::Phases::default();
    for i in 0..(n + n / 10) {
        let (p, status, body) = runtime
            .invoke_phased(app, request(), LIMITS.memory_bytes, outbound())
            .await
            .expect("hello answers");
        assert_eq!((status.as_u16(), &body[..]), (200, &b"Hello, world!\n"[..]));
        if i >= n / 10 {
            sum.context += p.context;
            sum.instantiate += p.instantiate;
            sum.guest += p.guest;
            sum.response += p.response;
            sum.teardown += p.teardown;
        }
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(n);
    let phases = [
        us(sum.context),
        us(sum.instantiate),
        us(sum.guest),
        us(sum.response),
        us(sum.teardown),
        us(sum.total()),
    ];

    let started = Instant::now();
    for _ in 0..n {
        invoke_once(runtime, app, None).await;
    }
    let whole = us(started.elapsed());

    // A deployment that opted in to instance reuse: after the first
    // request, every one runs on the instance the one before gave back.
    let reused = if reuse == Reuse::No {
        None
    } else {
        let pool = runtime.instances(app, "/...", MAX_INSTANCE_REUSE, 1).expect("kept instances");
        invoke_once(runtime, app, Some(&pool)).await;
        let started = Instant::now();
        let mut fresh = 0;
        for _ in 0..n {
            if !invoke_once(runtime, app, Some(&pool)).await {
                fresh += 1;
            }
        }
        assert!(
            reuse == Reuse::Mostly || fresh == 0,
            "a request ran on a new instance although one was idle"
        );
        Some((us(started.elapsed()), fresh))
    };
    PhaseFigures { phases, whole, reused }
}

fn print_figures(columns: &[(&str, u32, PhaseFigures)]) {
    let head: Vec<&str> = columns.iter().map(|(name, ..)| *name).collect();
    println!("| phase, µs | {} |", head.join(" | "));
    println!("| --- |{}", " ---: |".repeat(columns.len()));
    let row = |label: &str, value: &dyn Fn(&PhaseFigures) -> String| {
        let cells: Vec<String> = columns.iter().map(|(_, _, f)| value(f)).collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    for (i, name) in PHASE_NAMES.iter().enumerate() {
        row(name, &|f| format!("{:.1}", f.phases[i]));
    }
    row("whole `Runtime::invoke` (own task, timeout, body streamed)", &|f| {
        format!("{:.1}", f.whole)
    });
    row(
        "whole `Runtime::invoke`, instance reused (`max_instance_reuse` > 1)",
        &|f| match f.reused {
            None => "cannot be reused".into(),
            Some((t, 0)) => format!("{t:.1}"),
            Some((t, fresh)) => format!("{t:.1} ({fresh} on new instances)"),
        },
    );
    let counts: Vec<String> = columns.iter().map(|(name, n, _)| format!("{name} {n}")).collect();
    println!(
        "(mean of each row's invocations: {}, after a tenth as many to warm up)",
        counts.join(", ")
    );
    println!();
}

async fn phases(runtime: &Runtime, app: &App) {
    const N: u32 = 5_000;
    println!("phases of one invocation of hello:");
    print_figures(&[("hello", N, measure(runtime, app, N, Reuse::Always).await)]);
}

/// `hello` in every language built, one column each. A JavaScript
/// component answering through StarlingMonkey's `fetch` event cannot serve
/// a second request on one instance, so its reuse row is empty;
/// `js-handler` (the same answer through `wasi:http`'s incoming handler)
/// shows what reuse does for JavaScript.
async fn languages(runtime: &Runtime) {
    let components = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/components");
    let mut columns = Vec::new();
    for (name, file, n, reuse) in [
        ("Rust", "hello.wasm", 5_000, Reuse::Always),
        ("Python", "python_hello.wasm", 1_000, Reuse::Always),
        ("JavaScript", "js_hello.wasm", 2_000, Reuse::No),
        ("JavaScript (js-handler)", "js_handler.wasm", 2_000, Reuse::Mostly),
    ] {
        let Ok(bytes) = std::fs::read(components.join(file)) else {
            eprintln!("{file}: not built (scripts/build-examples.sh), left out");
            continue;
        };
        let started = Instant::now();
        let compiled = wasmwiz::runtime::compile(runtime.engine(), &bytes).expect("it compiles");
        eprintln!("{file}: compiled in {:.1} s", started.elapsed().as_secs_f64());
        let app = runtime.prepare(&compiled.component).expect("it links");
        columns.push((name, n, measure(runtime, &app, n, reuse).await));
    }
    println!("phases of one invocation of hello, by language:");
    print_figures(&columns);
}

/// One request through `Runtime::invoke`, checked; whether it ran on an
/// instance kept from an earlier request.
async fn invoke_once(runtime: &Runtime, app: &App, pool: Option<&Arc<Instances>>) -> bool {
    let options = InvokeOptions {
        limits: LIMITS,
        request_id: "bench".into(),
        https: false,
        outbound: outbound(),
        timing: false,
        capabilities: Arc::new(Capabilities::default()),
        instances: pool.cloned(),
        trace: (tracing::Span::none(), wasmwiz::telemetry::TraceParent::root()),
    };
    let place = runtime.admit(app, &options, None, None).expect("a free slot");
    let reused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let report = reused.clone();
    let response = runtime
        .invoke(place, app, request(), options, move |r| {
            report.store(r.reused, std::sync::atomic::Ordering::Relaxed);
        })
        .await;
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.expect("the body").to_bytes();
    assert_eq!(&body[..], b"Hello, world!\n");
    reused.load(std::sync::atomic::Ordering::Relaxed)
}

fn load(runtime: &Runtime, code: Option<&Path>) -> App {
    let component = match code {
        Some(path) => {
            #[expect(unsafe_code, reason = "loading compiled code is unsafe in wasmtime")]
            // SAFETY: the file was written by `precompile` with this engine's
            // configuration, and nothing changes it meanwhile.
            unsafe { wasmtime::component::Component::deserialize_file(runtime.engine(), path) }
                .expect("precompiled hello")
        }
        None => {
            let bytes = std::fs::read(hello_path())
                .expect("target/components/hello.wasm (run scripts/build-examples.sh)");
            wasmwiz::runtime::compile(runtime.engine(), &bytes).expect("hello compiles").component
        }
    };
    runtime.prepare(&component).expect("hello links")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    match args.first().map(String::as_str) {
        Some("precompile") => {
            let runtime = one_slot_runtime();
            let bytes = std::fs::read(hello_path()).expect("hello.wasm");
            let code = runtime.engine().precompile_component(&bytes).expect("precompiled");
            std::fs::write(&args[1], code).expect("writing the code");
        }
        Some("invocations") => {
            let n: u32 = args[2].parse().expect("a count");
            // `reused`: one request first (in every run, so it cancels out),
            // then the N measured ones on the instance it leaves.
            let reuse = args.get(3).map(String::as_str) == Some("reused");
            tokio.block_on(async {
                let runtime = one_slot_runtime();
                let app = load(&runtime, Some(Path::new(&args[1])));
                let pool = reuse.then(|| {
                    runtime.instances(&app, "/...", MAX_INSTANCE_REUSE, 1).expect("kept instances")
                });
                if let Some(pool) = &pool {
                    invoke_once(&runtime, &app, Some(pool)).await;
                }
                for _ in 0..n {
                    let reused = invoke_once(&runtime, &app, pool.as_ref()).await;
                    assert_eq!(reused, reuse);
                }
            });
        }
        Some("languages") => tokio.block_on(languages(&runtime())),
        _ => {
            route_lookup();
            access_log();
            tokio.block_on(async {
                admission().await;
                let runtime = runtime();
                let app = load(&runtime, None);
                phases(&runtime, &app).await;
            });
        }
    }
}
