//! README's first hour, run as written: the quick start (`scripts/
//! quickstart.sh`, skipping only its build), then every walkthrough block
//! README marks with `<!-- test: NAME -->`, on a fresh store, in README's
//! order and in the reverse order (they must work in any order from what
//! the quick start leaves). The prerequisite check is tested on a machine
//! made to lack a C compiler and Rust.
//!
//! What the test changes in README's text, and nothing else:
//! - each `127.0.0.1:PORT` becomes a free port (tests run side by side);
//! - `/path/to/wasmwiz` becomes this checkout;
//! - the builds (`cargo build`, componentize-py, componentize-js, and the
//!   installs they need) are stood in for by shell functions that copy the
//!   component `scripts/build-examples.sh` built from the same source, and
//!   fail unless the source the walkthrough wrote is that source to the
//!   letter (`examples/visits`, `hello-p3`, `python-visits`,
//!   `python-orders`, `js-visits`);
//! - a `curl` line with a `# comment` (or followed by a comment line) must
//!   print that comment, exactly.
//!
//! `HOME` is a fresh folder, so `cd ~` and `mkdir ~/...` stay inside it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::helpers::{clean_command, component, free_port, kept};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// The walkthroughs README must have, each tested.
const WALKTHROUGHS: &[&str] = &[
    "quickstart",
    "by-hand",
    "run",
    "logs",
    "rollback",
    "rust",
    "examples",
    "wasip3",
    "python",
    "javascript",
    "python-queue",
];

/// README's marked `sh` blocks, by name, in README's order (a name's
/// blocks joined), and the `rust` blocks a reader writes to `src/lib.rs`.
struct Readme {
    blocks: Vec<(String, String)>,
    rust_sources: Vec<String>,
}

fn readme() -> Readme {
    let text = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut rust_sources = Vec::new();
    // A src/lib.rs shown since a walkthrough's last block: the reader
    // writes it before running the next.
    let mut pending: Option<String> = None;
    let mut i = 0;
    while i < lines.len() {
        let marker = lines[i].strip_prefix("<!-- test: ").and_then(|l| l.strip_suffix(" -->"));
        let source = lines[i] == "`src/lib.rs`:";
        if marker.is_none() && !source {
            i += 1;
            continue;
        }
        // The fence follows the marker (after a blank line for src/lib.rs).
        let mut j = i + 1;
        while lines[j].is_empty() {
            j += 1;
        }
        let fence = if source { "```rust" } else { "```sh" };
        assert_eq!(
            lines[j],
            fence,
            "README line {}: a marked block must be a {fence} block",
            j + 1
        );
        let end = j + 1 + lines[j + 1..].iter().position(|l| *l == "```").expect("a closed block");
        let mut body = lines[j + 1..end].join("\n");
        body.push('\n');
        match marker {
            Some(name) => match blocks.iter_mut().find(|(n, _)| n == name) {
                Some((_, text)) => {
                    if let Some(source) = pending.take() {
                        text.push_str(&format!(
                            "cat > src/lib.rs <<'README_RUST'\n{source}README_RUST\n"
                        ));
                    }
                    text.push_str(&body);
                }
                None => blocks.push((name.to_string(), body)),
            },
            None => {
                rust_sources.push(body.clone());
                pending = Some(body);
            }
        }
        i = end + 1;
    }
    Readme { blocks, rust_sources }
}

/// Ports README names (`127.0.0.1:NNNN`) mapped to free ones.
fn port_map(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for (at, _) in text.match_indices("127.0.0.1:") {
        let digits: String = text[at + 10..].chars().take_while(char::is_ascii_digit).collect();
        if !digits.is_empty() {
            map.entry(digits).or_insert_with(|| free_port().to_string());
        }
    }
    map
}

fn substitute(text: &str, ports: &BTreeMap<String, String>) -> String {
    let mut out = text.replace("/path/to/wasmwiz", repo().to_str().unwrap());
    for (from, to) in ports {
        out = out.replace(&format!("127.0.0.1:{from}"), &format!("127.0.0.1:{to}"));
    }
    out
}

/// `'text'` for bash.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A block's lines with each `curl ... # OUTPUT` (or a `curl` line followed
/// by `# OUTPUT`) made to check that it prints OUTPUT.
fn with_expectations(block: &str) -> String {
    let lines: Vec<&str> = block.lines().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.starts_with("curl ") && !line.ends_with('\\') {
            let (command, inline) = match line.find("  #") {
                Some(at) => (line[..at].trim_end(), Some(line[at..].trim_start()[1..].trim())),
                None => (line, None),
            };
            let next = lines.get(i + 1).and_then(|l| l.strip_prefix("# "));
            let expected = inline.or(next);
            if let Some(expected) = expected {
                out.push_str(&format!("__expect {} {command}\n", quoted(expected)));
                i += if inline.is_none() { 2 } else { 1 };
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
        i += 1;
    }
    out
}

/// The shell functions standing in for the builds, and the expectation
/// check.
fn preamble(components: &Path) -> String {
    format!(
        r#"set -euo pipefail
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
__examples={examples}
__components={components}
# A source with its leading //! comments and blank lines dropped.
__strip() {{ sed '/^\/\/!/d' "$1" | sed '/./,$!d'; }}
__same() {{
    if ! diff <(__strip "$1") <(__strip "$2") >&2; then
        echo "README's $1 is not $2, the source of the component standing in for its build" >&2
        exit 1
    fi
}}
__expect() {{
    local want=$1 got
    shift
    got=$("$@")
    if [ "$got" != "$want" ]; then
        printf 'README says `%s` prints\n  %s\nit printed\n  %s\n' "$*" "$want" "$got" >&2
        exit 1
    fi
    printf '%s\n' "$got"
}}
rustup() {{ :; }}
cargo() {{
    case $1 in
        add) ;;
        build)
            local crate
            crate=$(sed -n 's/^name = "\(.*\)"/\1/p' Cargo.toml | head -1)
            __same src/lib.rs "$__examples/$crate/src/lib.rs"
            mkdir -p target/wasm32-wasip2/release
            cp "$__components/${{crate//-/_}}.wasm" target/wasm32-wasip2/release/ ;;
        *) command cargo "$@" ;;
    esac
}}
python3() {{
    if [ "${{1:-}} ${{2:-}}" != "-m venv" ]; then command python3 "$@"; return; fi
    mkdir -p "$3/bin"
    printf '#!/bin/sh\n' >"$3/bin/pip"
    cat >"$3/bin/componentize-py" <<'SHIM'
#!/usr/bin/env bash
set -eu
while [ "$1" != -o ]; do shift; done
for example in "$__examples"/python-*/; do
    if cmp -s app.py "$example/app.py"; then
        cp "$__components/$(basename "$example" | tr - _).wasm" "$2"
        exit 0
    fi
done
echo "README's app.py is none of examples/python-*/app.py, the sources of the components standing in for its build" >&2
exit 1
SHIM
    chmod +x "$3/bin/pip" "$3/bin/componentize-py"
}}
export __examples __components
npm() {{ :; }}
npx() {{
    while [ "$1" != -o ]; do shift; done
    local example
    for example in "$__examples"/js-*/; do
        if cmp -s app.js "$example/app.js"; then
            cp "$__components/$(basename "$example" | tr - _).wasm" "$2"
            return
        fi
    done
    echo "README's app.js is none of examples/js-*/app.js, the sources of the components standing in for its build" >&2
    exit 1
}}
"#,
        examples = quoted(repo().join("examples").to_str().unwrap()),
        components = quoted(components.to_str().unwrap()),
    )
}

/// The quick start's server, stopped when dropped.
struct QuickStart {
    home: tempfile::TempDir,
    ports: BTreeMap<String, String>,
    components: PathBuf,
}

impl QuickStart {
    fn data(&self) -> PathBuf {
        self.home.path().join("wasmwiz-data")
    }

    /// `scripts/quickstart.sh --background --no-build`, and README's ports.
    fn start(readme: &Readme) -> Self {
        let all: String = readme.blocks.iter().map(|(_, b)| b.as_str()).collect();
        let mut ports = port_map(&all);
        ports.entry("8080".into()).or_insert_with(|| free_port().to_string());
        let components = component("hello").parent().unwrap().to_path_buf();
        let start = Self { home: tempfile::tempdir().unwrap(), ports, components };
        let output = start.quickstart(&["--background", "--no-build"]);
        assert!(
            output.status.success(),
            "the quick start failed: {}",
            kept("readme-quickstart", &String::from_utf8_lossy(&output.stderr), 30)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains(&format!("curl http://127.0.0.1:{}/hello", start.ports["8080"])),
            "the quick start prints the curl line that works: {stdout}"
        );
        start
    }

    fn quickstart(&self, args: &[&str]) -> std::process::Output {
        clean_command("bash")
            .arg(repo().join("scripts/quickstart.sh"))
            .args(args)
            .env("HOME", self.home.path())
            .env("CARGO_HOME", cargo_home())
            .env("RUSTUP_HOME", rustup_home())
            .env("WASMWIZ_BIN", env!("CARGO_BIN_EXE_wasmwiz"))
            .env("WASMWIZ_COMPONENTS", &self.components)
            .env("WASMWIZ_DATA_DIR", self.data())
            .env("ADDR", format!("127.0.0.1:{}", self.ports["8080"]))
            .env("CONSOLE_ADDR", "127.0.0.1:0")
            .env("METRICS_ADDR", "127.0.0.1:0")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs one walkthrough's blocks as the reader would, in a shell where
    /// the quick start's file is sourced.
    fn walk(&self, name: &str, block: &str) {
        let script = format!(
            "{}source {}\ncd ~\n{}",
            preamble(&self.components),
            quoted(self.data().join("env").to_str().unwrap()),
            with_expectations(&substitute(block, &self.ports))
        );
        let output = clean_command("bash")
            .arg("-c")
            .arg(&script)
            .env("HOME", self.home.path())
            // The reader's toolchain stays where rustup put it.
            .env("CARGO_HOME", cargo_home())
            .env("RUSTUP_HOME", rustup_home())
            .current_dir(self.home.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "README's {name} walkthrough failed:\n{}\nstdout: {}",
            kept(
                &format!("readme-{name}"),
                &format!("{script}\n---\n{}", String::from_utf8_lossy(&output.stderr)),
                30
            ),
            String::from_utf8_lossy(&output.stdout)
        );
    }
}

impl Drop for QuickStart {
    fn drop(&mut self) {
        let _ = self.quickstart(&["--stop"]);
    }
}

fn real_home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").expect("HOME"))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME").map(PathBuf::from).unwrap_or_else(|| real_home().join(".cargo"))
}

fn rustup_home() -> PathBuf {
    std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| real_home().join(".rustup"))
}

#[test]
fn the_quick_start_and_every_walkthrough_work_as_written_in_any_order() {
    let readme = readme();
    let names: Vec<&str> = readme.blocks.iter().map(|(n, _)| n.as_str()).collect();
    for wanted in WALKTHROUGHS {
        assert!(names.contains(wanted), "README has no block marked `test: {wanted}`: {names:?}");
    }
    assert!(readme.rust_sources.len() >= 2, "README shows src/lib.rs for Rust and WASIp3");

    // README's order, then the reverse, each on a fresh quick start.
    for order in [names.clone(), names.iter().rev().copied().collect()] {
        let start = QuickStart::start(&readme);
        for name in order {
            let block = &readme.blocks.iter().find(|(n, _)| n == name).unwrap().1;
            start.walk(name, block);
        }
    }
}

#[test]
fn the_quick_start_names_each_missing_prerequisite_with_its_install_command() {
    // A machine like this one without a C compiler and without Rust: every
    // program of the usual folders but those, linked into one PATH folder.
    let bin = tempfile::tempdir().unwrap();
    let hidden = |name: &str| {
        ["cc", "gcc", "clang", "c89", "c99", "cargo", "rustc", "rustup"].contains(&name)
            || name.contains("-gcc")
            || name.starts_with("gcc-")
            || name.starts_with("clang-")
    };
    for dir in ["/usr/local/bin", "/usr/bin", "/bin"] {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let link = bin.path().join(&name);
            if !hidden(&name.to_string_lossy()) && !link.exists() {
                std::os::unix::fs::symlink(entry.path(), link).unwrap();
            }
        }
    }
    let output = Command::new("/bin/bash")
        .arg(repo().join("scripts/quickstart.sh"))
        .arg("--check")
        .env_clear()
        .env("PATH", bin.path())
        .env("HOME", real_home())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("missing, install and run again"), "{stderr}");
    assert!(stderr.contains("Rust (cargo and rustc): curl --proto '=https'"), "{stderr}");
    assert!(stderr.contains("a C compiler (cc): apt-get install build-essential"), "{stderr}");
    assert!(!stderr.contains("curl: apt-get install curl"), "curl is there: {stderr}");

    // And on this machine as it is, nothing is missing.
    let output = clean_command("bash")
        .arg(repo().join("scripts/quickstart.sh"))
        .arg("--check")
        .env("CARGO_HOME", cargo_home())
        .env("RUSTUP_HOME", rustup_home())
        .env("WASMWIZ_DATA_DIR", bin.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.contains("all there"), "{stderr}");
}

/// A heading's anchor as GitHub makes it: lower case, letters, digits,
/// `-` and `_` kept, spaces made `-`, the rest dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code blocks; a
/// repeated heading's anchor gets `-1`, `-2` ...).
fn anchors(text: &str) -> std::collections::HashSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = std::collections::HashSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        let heading = line.trim_start_matches('#');
        if fenced || heading.len() == line.len() || !heading.starts_with(' ') {
            continue;
        }
        let slug = slug(heading);
        let n = seen.entry(slug.clone()).or_insert(0);
        anchors.insert(if *n == 0 { slug.clone() } else { format!("{slug}-{n}") });
        *n += 1;
    }
    anchors
}

#[test]
fn every_link_in_the_documentation_leads_somewhere() {
    let docs = ["README.md", "OPERATIONS.md", "SECURITY.md", "benches/README.md", "wit/README.md"];
    let mut broken = Vec::new();
    for doc in docs {
        let path = repo().join(doc);
        let text = std::fs::read_to_string(&path).unwrap();
        // Links outside code blocks: `](target)`.
        let mut prose = String::new();
        let mut fenced = false;
        for line in text.lines() {
            if line.starts_with("```") {
                fenced = !fenced;
            } else if !fenced {
                prose.push_str(line);
                prose.push('\n');
            }
        }
        for (at, _) in prose.match_indices("](") {
            let link = &prose[at + 2..];
            let Some(end) = link.find(')') else { continue };
            let link = &link[..end];
            if link.contains("://") || link.starts_with("mailto:") || link.contains(' ') {
                continue;
            }
            let (file, anchor) = link.split_once('#').unwrap_or((link, ""));
            let target =
                if file.is_empty() { path.clone() } else { path.parent().unwrap().join(file) };
            if !target.exists() {
                broken.push(format!("{doc}: {link} (no such file)"));
                continue;
            }
            if !anchor.is_empty() && target.extension().is_some_and(|e| e == "md") {
                let text = std::fs::read_to_string(&target).unwrap();
                if !anchors(&text).contains(anchor) {
                    broken.push(format!("{doc}: {link} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "links that lead nowhere:\n{}", broken.join("\n"));
}
