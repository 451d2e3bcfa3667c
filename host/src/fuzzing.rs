//! Entry points for fuzzing what a tenant or a client controls: one
//! function per target, each taking arbitrary bytes and checking what must
//! hold for any input (no panic, and the properties named on each). The
//! coverage-guided targets under `fuzz/` call these, and the test suite
//! replays every committed corpus file and a run of mutations through them
//! (`host/tests/fuzz_corpus.rs`), so a regression shows without a fuzzer.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::router::{Grant, RoutePattern, RouteTable};

/// A fuzz target: takes any bytes, panics if what must hold does not.
pub type Target = fn(&[u8]);

/// The targets, by name (the `fuzz/fuzz_targets/*.rs` and corpus folders).
pub const TARGETS: &[(&str, Target)] = &[
    ("route", route),
    ("api_key", api_key),
    ("upload", upload),
    ("deployment_json", deployment_json),
    ("kv_limits", kv_limits),
    ("request_head", request_head),
];

/// Splits `data` at the first NUL: two strings from one input.
fn two_strings(data: &[u8]) -> (String, String) {
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let first = String::from_utf8_lossy(&data[..split]).into_owned();
    let second = String::from_utf8_lossy(data.get(split + 1..).unwrap_or(&[])).into_owned();
    (first, second)
}

/// Route patterns and host names at deploy, and grants.
///
/// Holds: a pattern that parses claims its own path (a request for the
/// route's literal path, or a path under a wildcard, finds it in a table);
/// a path grant that parses covers the same route pattern; nothing panics.
pub fn route(data: &[u8]) {
    let (route, host) = two_strings(data);
    let host = (!host.is_empty()).then_some(host.as_str());
    let parsed = RoutePattern::parse(&route, host, &[]);
    let _ = RoutePattern::parse_stored(&route, host);
    if let Ok(pattern) = parsed {
        let mut table = RouteTable::new();
        table.insert(&pattern, ());
        let path = route.strip_suffix("/...").unwrap_or(&route);
        let path = if path.is_empty() { "/" } else { path };
        let request_path = if pattern.is_wildcard() { format!("{path}/x") } else { path.into() };
        let found = table.lookup(pattern.host(), &request_path);
        assert!(found.is_some(), "{route:?} on {host:?} does not match {request_path:?}");
        if host.is_none()
            && let Ok(grant) = Grant::path(&route, &[])
        {
            assert!(grant.covers(&pattern), "the grant {route:?} does not cover its own route");
        }
    }
    if let Some(host) = host {
        let _ = Grant::host(host);
        let _ = crate::router::request_host(host);
    }
}

/// API keys: format and checksum.
///
/// Holds: a key judged well formed has the documented length and alphabet;
/// changing any one character of a well-formed key makes it ill formed
/// (the checksum catches it), and hashing never panics.
pub fn api_key(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if crate::auth::well_formed(&text) {
        assert_eq!(text.len(), 3 + 32 + 6);
        assert!(text.starts_with("ww_"));
        assert!(text[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
        let mut changed = text.clone().into_owned().into_bytes();
        let at = 3 + usize::from(data.first().copied().unwrap_or(0)) % 32;
        changed[at] = if changed[at] == b'a' { b'b' } else { b'a' };
        let changed = String::from_utf8(changed).expect("ASCII");
        assert!(!crate::auth::well_formed(&changed), "{text} and {changed} both pass");
    }
    let _ = crate::auth::hash(b"fuzzing-salt-that-is-long-enough-to-use", &text);
    let _ = crate::auth::Scopes::parse(&text);
}

/// The engine uploads are checked with: the server's configuration with a
/// small pool.
fn engine() -> &'static wasmtime::Engine {
    static ENGINE: OnceLock<wasmtime::Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let config = crate::runtime::engine_config(&crate::runtime::RuntimeConfig {
            warm_slots: 0,
            ..crate::runtime::RuntimeConfig::with_pool(4)
        });
        wasmtime::Engine::new(&config).expect("the server's engine configuration")
    })
}

/// The upload validator, on arbitrary bytes (and mutated components).
///
/// Holds: every input gets an answer, an error with a status of 400 or
/// 422 or a compiled component whose imports are then checked, within
/// bounds (10 s for any input a tenant may upload).
pub fn upload(data: &[u8]) {
    let started = Instant::now();
    match crate::runtime::compile(engine(), data) {
        Ok(compiled) => {
            let _ = crate::runtime::check_imports(engine(), &compiled.component);
        }
        Err(error) => {
            let status = error.status().as_u16();
            assert!(status == 400 || status == 422, "{error:?} answers {status}");
            let _ = error.to_string();
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?} for {} bytes",
        started.elapsed(),
        data.len()
    );
}

/// Deployment JSON: route, host, config, secrets, outbound hosts.
///
/// Holds: nothing panics; an accepted configuration keeps within its
/// documented counts; every accepted outbound host pattern builds a policy
/// that answers for any host.
pub fn deployment_json(data: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<crate::control::DeploySpec>(data) else {
        return;
    };
    let _ = RoutePattern::parse(&spec.route, spec.host.as_deref(), crate::router::RESERVED_PATHS);
    let config_ok = crate::control::service::check_config(&spec.config, &spec.secrets).is_ok();
    if config_ok {
        assert!(
            spec.config.len() + spec.secrets.len() <= crate::control::service::MAX_CONFIG_ENTRIES
        );
    }
    if crate::control::service::check_outbound_hosts(&spec.allowed_outbound_hosts).is_ok() {
        let policy = crate::runtime::OutboundPolicy::new(
            &spec.allowed_outbound_hosts,
            std::sync::Arc::new(crate::runtime::OutboundSettings::default()),
        );
        for host in spec.allowed_outbound_hosts.iter().chain(spec.config.keys()) {
            let _ = policy.allows("https", host, 443);
            let _ = policy.allows("http", host, 80);
        }
    }
}

/// The key-value limit checks: keys, values, bucket names and counters.
///
/// Holds: a key or value over its limit is refused, one within is not;
/// a counter that parses prints back as the same digits (without leading
/// zeros); nothing panics.
pub fn kv_limits(data: &[u8]) {
    use crate::kv::{Bucket, KvLimits, check_item, parse_counter};
    let limits = KvLimits {
        max_key_bytes: 16,
        max_value_bytes: 64,
        ..KvLimits::of(&crate::tenancy::TierLimits::default())
    };
    let (key, value) = two_strings(data);
    let result = check_item(&key, Some(value.as_bytes()), &limits);
    let fits = !key.is_empty() && key.len() <= 16 && value.len() <= 64;
    assert_eq!(result.is_ok(), fits, "{key:?} = {} bytes", value.len());
    let _ = Bucket::open(1, "dep_fuzz", &key);
    if let Ok(n) = parse_counter(value.as_bytes()) {
        let digits = value.trim_start_matches('0');
        assert_eq!(n.to_string(), if digits.is_empty() { "0" } else { digits });
    }
    let mut config = BTreeMap::new();
    config.insert(key, value);
    let _ = crate::control::service::check_config(&config, &BTreeMap::new());
}

/// The request-head limits: a request head (HTTP/1.1 bytes) through the
/// server's own connection handling, over an in-memory stream.
///
/// Holds: every input ends with an answer or a closed connection within
/// the header read timeout, never a panic or a hang; an answer is a
/// well-formed status line.
pub fn request_head(data: &[u8]) {
    crate::server::fuzz_one_connection(data);
}

/// The short run of every target, part of `cargo test`: each committed
/// corpus and regression file (`fuzz/corpus/TARGET`, `fuzz/regressions/TARGET`),
/// then random mutations of them (bit flips, byte changes, insertions,
/// deletions, splices of two inputs) for a time budget per target. The
/// long coverage-guided runs are `scripts/fuzz.sh`.
#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use rand::{Rng as _, SeedableRng as _};

    fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut found = Vec::new();
        for kind in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_file() {
                    found.push((path.clone(), std::fs::read(&path).unwrap()));
                }
            }
        }
        found.sort();
        found
    }

    fn mutate(rng: &mut rand::rngs::StdRng, input: &[u8], other: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..rng.random_range(1..=4) {
            let len = out.len();
            match rng.random_range(0..6) {
                0 if len > 0 => {
                    let at = rng.random_range(0..len);
                    out[at] ^= 1 << rng.random_range(0..8);
                }
                1 if len > 0 => {
                    let at = rng.random_range(0..len);
                    out[at] = *[0u8, 0xff, b'/', b'.', b'%', b':', b'\n', b'"', 0x7f]
                        .get(rng.random_range(0..9))
                        .unwrap();
                }
                2 => {
                    let at = rng.random_range(0..=len);
                    let n = rng.random_range(1..=16);
                    let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                    out.splice(at..at, bytes);
                }
                3 if len > 0 => {
                    let at = rng.random_range(0..len);
                    let end = (at + rng.random_range(1..=16)).min(len);
                    out.drain(at..end);
                }
                4 if !other.is_empty() => {
                    let at = rng.random_range(0..=len);
                    let from = rng.random_range(0..other.len());
                    let end = (from + rng.random_range(1..=64)).min(other.len());
                    out.splice(at..at, other[from..end].iter().copied());
                }
                _ => {
                    let at = rng.random_range(0..=len);
                    out.truncate(at);
                }
            }
        }
        out
    }

    #[test]
    fn every_fuzz_target_survives_its_corpus_and_a_short_mutation_run() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(20261130);
        for (name, target) in super::TARGETS {
            let corpus = inputs(name);
            assert!(!corpus.is_empty(), "no corpus for the fuzz target `{name}`");
            for (path, input) in &corpus {
                let result = std::panic::catch_unwind(|| target(input));
                assert!(result.is_ok(), "{name}: {} fails", path.display());
            }
            // Compiling is slow in a debug build: the validator gets fewer
            // mutations in its budget than the parsers.
            let budget = Duration::from_secs(if *name == "upload" { 6 } else { 2 });
            let started = Instant::now();
            let mut runs = 0u64;
            while started.elapsed() < budget {
                let input = &corpus[rng.random_range(0..corpus.len())].1;
                let other = &corpus[rng.random_range(0..corpus.len())].1;
                let mutated = mutate(&mut rng, input, other);
                let result = std::panic::catch_unwind(|| target(&mutated));
                assert!(result.is_ok(), "{name}: the mutated input {mutated:?} fails");
                runs += 1;
            }
            eprintln!("fuzz target {name}: {} corpus inputs, {runs} mutations", corpus.len());
            assert!(runs > 0);
        }
    }
}
