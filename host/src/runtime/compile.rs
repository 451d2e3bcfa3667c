//! Validating and compiling component bytes, and the on-disk cache of
//! compiled code (keyed by content digest and engine fingerprint).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wasmtime::Engine;
use wasmtime::component::Component;

/// Interfaces a component may import: `(package, version prefix)`. Anything
/// else is refused at upload with the import's name, instead of failing at
/// the first request.
const ALLOWED_IMPORTS: &[(&str, &str)] = &[
    ("wasi:io", "0.2."),
    ("wasi:clocks", "0.2."),
    ("wasi:random", "0.2."),
    ("wasi:cli", "0.2."),
    ("wasi:filesystem", "0.2."),
    ("wasi:sockets", "0.2."),
    ("wasi:http", "0.2."),
    // WASIp3: the imports of `wasi:http/service@0.3`.
    ("wasi:clocks", "0.3."),
    ("wasi:random", "0.3."),
    ("wasi:cli", "0.3."),
    ("wasi:http", "0.3."),
    // The capabilities (see `wit/world.wit`), at the versions wasmtime 48
    // ships.
    ("wasi:keyvalue", "0.2.0-draft"),
    ("wasi:config", "0.2.0-rc.1"),
];

/// The exports of wasi:http handlers: WASIp2's (`wasi:http/proxy`) and
/// WASIp3's (`wasi:http/service`), at the versions wasmtime 48 serves.
const HANDLER_EXPORTS: [&str; 2] = ["wasi:http/incoming-handler@0.2.", "wasi:http/handler@0.3."];

/// Why bytes cannot become a servable component.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CompileError {
    /// The bytes do not start with the WebAssembly magic number.
    #[error("the upload is not WebAssembly (no `\\0asm` header)")]
    NotWasm,
    /// WebAssembly, but malformed.
    #[error("the upload is not valid WebAssembly: {0}")]
    Invalid(String),
    /// A core module, not a component.
    #[error(
        "the upload is a core WebAssembly module, not a component: build for wasm32-wasip2 \
         or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    /// No `wasi:http/incoming-handler` (or WASIp3 `wasi:http/handler`) export.
    #[error(
        "the component does not export `wasi:http/incoming-handler@0.2` or \
         `wasi:http/handler@0.3` ({0})"
    )]
    NotHttpHandler(String),
    /// An import the host does not provide.
    #[error("the component imports `{0}`, which WasmWiz does not provide")]
    UnsupportedImport(String),
    /// Linking failed for another reason (a type mismatch in an import).
    #[error("the component cannot be linked: {0}")]
    Link(String),
    /// Valid WebAssembly that this host cannot run (over its limits).
    #[error("the component cannot run on this host: {0}")]
    Unrunnable(String),
    /// Compilation did not finish in time.
    #[error("compiling the component took longer than {0:?}")]
    Timeout(Duration),
    /// The node has no disk space left for compiled code.
    #[error("the node has no space left for compiled code; retry later")]
    NoSpace(String),
    /// The compiler itself failed.
    #[error("compilation failed")]
    Internal(String),
}

impl CompileError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            Self::NotWasm | Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::NoSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// A stable machine-readable code for the JSON error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotWasm => "not_wasm",
            Self::Invalid(_) => "invalid_wasm",
            Self::CoreModule => "core_module",
            Self::NotHttpHandler(_) => "not_http_handler",
            Self::UnsupportedImport(_) => "unsupported_import",
            Self::Link(_) => "link_error",
            Self::Unrunnable(_) => "unrunnable",
            Self::Timeout(_) => "compile_timeout",
            Self::Internal(_) => "compile_failed",
            Self::NoSpace(_) => "insufficient_storage",
        }
    }

    /// The import this error is about, if any.
    pub fn import(&self) -> Option<&str> {
        match self {
            Self::UnsupportedImport(name) => Some(name),
            _ => None,
        }
    }
}

/// A compiled component and what producing it cost.
#[derive(Clone)]
pub struct Compiled {
    /// The compiled component.
    pub component: Component,
    /// Time spent compiling (zero when loaded from the cache).
    pub compile_time: Duration,
    /// Whether the code came from the on-disk cache.
    pub from_cache: bool,
}

/// Checks that `bytes` are a WebAssembly component and compiles them.
///
/// Blocking and CPU-heavy: call it off the async runtime.
pub fn compile(engine: &Engine, bytes: &[u8]) -> Result<Compiled, CompileError> {
    use wasmparser::{Parser, Validator, WasmFeatures};

    if !bytes.starts_with(b"\0asm") {
        return Err(CompileError::NotWasm);
    }
    if Parser::is_core_wasm(bytes) {
        return Err(CompileError::CoreModule);
    }
    if !Parser::is_component(bytes) {
        return Err(CompileError::Invalid("unknown WebAssembly layer or version".into()));
    }
    Validator::new_with_features(WasmFeatures::all())
        .validate_all(bytes)
        .map_err(|e| CompileError::Invalid(e.to_string()))?;

    let started = Instant::now();
    let component = Component::new(engine, bytes)
        .map_err(|e| CompileError::Unrunnable(with_setting(format!("{e:#}"))))?;
    Ok(Compiled { component, compile_time: started.elapsed(), from_cache: false })
}

/// `message` (wasmtime's refusal of a component) with the setting that
/// raises the limit it names, when it names one of the pool's.
fn with_setting(message: String) -> String {
    let setting = if message.contains("core module instances") {
        "POOL_CORE_INSTANCES"
    } else if message.contains("linear memories") {
        "POOL_MEMORIES"
    } else if message.contains("minimum element size") {
        "POOL_TABLE_ELEMENTS"
    } else if message.contains("tables") && message.contains("exceeds") {
        "POOL_TABLES"
    } else {
        return message;
    };
    format!("{message} (the node's {setting} setting)")
}

/// Refuses a component without the handler export or with an import outside
/// [`ALLOWED_IMPORTS`], naming the offending item.
pub fn check_imports(engine: &Engine, component: &Component) -> Result<(), CompileError> {
    let ty = component.component_type();
    let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    if !exports.iter().any(|name| HANDLER_EXPORTS.iter().any(|e| name.starts_with(e))) {
        let found = if exports.is_empty() {
            "it exports nothing".to_string()
        } else {
            format!("it exports {}", exports.join(", "))
        };
        return Err(CompileError::NotHttpHandler(found));
    }
    for (name, _) in ty.imports(engine) {
        if !import_allowed(name) {
            return Err(CompileError::UnsupportedImport(name.to_string()));
        }
    }
    Ok(())
}

fn import_allowed(name: &str) -> bool {
    let Some((package_interface, version)) = name.split_once('@') else {
        return false;
    };
    let package = package_interface.split('/').next().unwrap_or("");
    // WASIp3 release candidates (`0.3.0-rc-...`) never link with the
    // final 0.3.0 that wasmtime 48 implements: refused by name at upload.
    let candidate = version.starts_with("0.3.") && version.contains('-');
    !candidate
        && ALLOWED_IMPORTS
            .iter()
            .any(|(allowed, prefix)| package == *allowed && version.starts_with(prefix))
}

/// Compiled code on local disk, one file per component digest, in a folder
/// per engine fingerprint so a new wasmtime never loads an old one's code.
///
/// Each file is [`CODE_MAGIC`], the code's length and its SHA-256, then
/// wasmtime's serialized code. wasmtime checks its own header when loading,
/// not the machine code after it: the digest is what keeps a file cut short
/// or damaged on disk from ever being run. A file that fails the check is
/// removed, and the component is compiled again from its stored bytes.
#[derive(Clone, Debug)]
pub struct CodeCache {
    dir: PathBuf,
}

/// The first bytes of a compiled-code file (format 1).
const CODE_MAGIC: &[u8; 8] = b"WWCODE\x00\x01";
/// Magic, length (u64, little-endian), SHA-256 of the code.
const CODE_HEADER: usize = 8 + 8 + 32;

/// The code in a compiled-code file, if the file is whole.
fn verified_code(file: &[u8]) -> Result<&[u8], &'static str> {
    use sha2::Digest as _;
    if file.len() < CODE_HEADER || &file[..8] != CODE_MAGIC {
        return Err("not a compiled-code file of this format");
    }
    let length = u64::from_le_bytes(file[8..16].try_into().expect("8 bytes"));
    let code = &file[CODE_HEADER..];
    if code.len() as u64 != length {
        return Err("its length does not match its header (cut short?)");
    }
    if sha2::Sha256::digest(code).as_slice() != &file[16..CODE_HEADER] {
        return Err("its checksum does not match (damaged on disk?)");
    }
    Ok(code)
}

/// Whether an error of the cache is the disk being full.
pub fn is_disk_full(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|e| {
            e.kind() == std::io::ErrorKind::StorageFull
                || e.kind() == std::io::ErrorKind::QuotaExceeded
        })
    })
}

impl CodeCache {
    /// A cache under `root`, for code of the engine with `fingerprint`.
    pub fn open(root: &Path, fingerprint: &str) -> std::io::Result<Self> {
        let dir = root.join(fingerprint);
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn path(&self, digest_hex: &str) -> PathBuf {
        self.dir.join(format!("{digest_hex}.cwasm"))
    }

    /// Loads the compiled code for `digest_hex`, if cached and whole.
    #[expect(unsafe_code, reason = "wasmtime can only load native code through `unsafe`")]
    pub fn load(&self, engine: &Engine, digest_hex: &str) -> Option<Component> {
        let path = self.path(digest_hex);
        let file = match std::fs::read(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read compiled code");
                return None;
            }
        };
        let discard = |why: &str| {
            tracing::warn!(path = %path.display(), error = why, "discarding unusable compiled code");
            let _ = std::fs::remove_file(&path);
            None
        };
        let code = match verified_code(&file) {
            Ok(code) => code,
            Err(why) => return discard(why),
        };
        // SAFETY: the code is byte for byte what `store` below wrote (its
        // SHA-256 matches), from a component this engine compiled; the
        // folder is named by the engine fingerprint, and wasmtime checks
        // its own header against the engine before using the code. The
        // folder is the operator's (WASMWIZ_DATA_DIR), not tenants'.
        match unsafe { Component::deserialize(engine, code) } {
            Ok(component) => Some(component),
            Err(e) => discard(&format!("{e:#}")),
        }
    }

    /// Writes the compiled code for `digest_hex`: to a temporary file,
    /// synced, then renamed into place and the folder synced, so the file
    /// under the digest's name is whole even after a crash or power loss.
    pub fn store(&self, digest_hex: &str, component: &Component) -> anyhow::Result<()> {
        use sha2::Digest as _;
        use std::io::Write as _;
        let code = component.serialize()?;
        let path = self.path(digest_hex);
        let tmp = self.dir.join(format!(".{digest_hex}.{}.tmp", std::process::id()));
        let written = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(CODE_MAGIC)?;
            file.write_all(&(code.len() as u64).to_le_bytes())?;
            file.write_all(&sha2::Sha256::digest(&code))?;
            file.write_all(&code)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(anyhow::Error::new(e).context(format!("writing {}", path.display())));
        }
        Ok(())
    }

    /// Removes the compiled code for `digest_hex`, if any.
    pub fn remove(&self, digest_hex: &str) {
        let _ = std::fs::remove_file(self.path(digest_hex));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_checked_by_package_and_version() {
        assert!(import_allowed("wasi:http/types@0.2.6"));
        assert!(import_allowed("wasi:cli/environment@0.2.0"));
        assert!(import_allowed("wasi:io/streams@0.2.12"));
        assert!(!import_allowed("wasi:http/types@0.3.0-rc-2025-08-15"));
        assert!(import_allowed("wasi:http/types@0.3.0"));
        assert!(import_allowed("wasi:cli/stdout@0.3.0"));
        assert!(!import_allowed("wasi:filesystem/types@0.3.0"));
        assert!(!import_allowed("acme:secrets/vault@1.0.0"));
        assert!(!import_allowed("wasi:nn/graph@0.2.0"));
        assert!(!import_allowed("unversioned"));
        assert!(import_allowed("wasi:keyvalue/store@0.2.0-draft"));
        assert!(import_allowed("wasi:config/store@0.2.0-rc.1"));
        assert!(!import_allowed("wasi:keyvalue/store@0.1.0"));
    }

    #[test]
    fn bytes_that_are_not_wasm_are_refused() {
        let engine = Engine::default();
        assert!(matches!(compile(&engine, b"hello"), Err(CompileError::NotWasm)));
        // A minimal core module: magic, version 1.
        let core = b"\0asm\x01\0\0\0";
        assert!(matches!(compile(&engine, core), Err(CompileError::CoreModule)));
        // A component header followed by garbage.
        let broken = b"\0asm\x0d\0\x01\0\xff\xff";
        assert!(matches!(compile(&engine, broken), Err(CompileError::Invalid(_))));
    }

    #[test]
    fn errors_map_to_the_documented_statuses() {
        assert_eq!(CompileError::NotWasm.status(), 400);
        assert_eq!(CompileError::CoreModule.status(), 422);
        assert_eq!(CompileError::UnsupportedImport("x".into()).status(), 422);
        assert_eq!(CompileError::UnsupportedImport("x".into()).import(), Some("x"));
    }
}
