//! Configuration: every setting is an environment variable and a flag, parsed
//! and validated before anything binds a socket.
//!
//! Each group below is a `clap::Args` struct that the commands in [`crate::cli`]
//! flatten. Defaults are named constants; a value that does not parse is refused
//! with a message naming the variable, so an operator reading the error knows
//! which line of their environment file to fix.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::tenancy::{self, Tier, TierLimits};

/// Shortest `API_SALT` accepted (shorter ones only in development).
pub const MIN_SALT_LEN: usize = 32;

/// Default for `SERVER_HOST`: every interface, as container platforms expect.
pub const DEFAULT_SERVER_HOST: &str = "0.0.0.0";
/// Largest `SERVER_THREADS`.
pub const MAX_SERVER_THREADS: usize = 256;
/// Default for `SERVER_PORT`.
pub const DEFAULT_SERVER_PORT: u16 = 8080;
/// Default for `INSTANCE_POOL_SIZE`: instances that may run at once.
pub const DEFAULT_INSTANCE_POOL_SIZE: u32 = 1000;
/// Default for `MAX_HEADER_BYTES`: the whole header section, 64 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 << 10;
/// Default for `MAX_HEADER_COUNT`.
pub const DEFAULT_MAX_HEADER_COUNT: usize = 100;
/// Default for `MAX_URI_LENGTH`: 8 KiB.
pub const DEFAULT_MAX_URI_LENGTH: usize = 8 << 10;
/// Default for `MAX_CONNECTIONS`: open client connections per node.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Where to listen.
#[derive(clap::Args, Clone, Debug)]
pub struct ListenArgs {
    /// Address to listen on, HOST:PORT; port 0 picks a free port
    /// [default: SERVER_HOST:SERVER_PORT]
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<String>,

    /// Host or IP address to listen on when --addr is not given.
    #[arg(long, env = "SERVER_HOST", default_value = DEFAULT_SERVER_HOST)]
    pub server_host: String,

    /// Port to listen on when --addr is not given.
    #[arg(long, env = "SERVER_PORT", default_value_t = DEFAULT_SERVER_PORT,
          value_parser = number_for::<u16>("SERVER_PORT"))]
    pub server_port: u16,
}

impl ListenArgs {
    /// The socket address to bind, resolving a host name if one was given.
    pub fn socket_addr(&self) -> anyhow::Result<SocketAddr> {
        let text = match &self.addr {
            Some(addr) => addr.clone(),
            None if self.server_host.contains(':') && !self.server_host.starts_with('[') => {
                format!("[{}]:{}", self.server_host, self.server_port)
            }
            None => format!("{}:{}", self.server_host, self.server_port),
        };
        let what = if self.addr.is_some() { "--addr" } else { "SERVER_HOST/SERVER_PORT" };
        text.to_socket_addrs()
            .with_context(|| format!("{what}: cannot resolve `{text}` to an address"))?
            .next()
            .with_context(|| format!("{what}: `{text}` resolves to no address"))
    }
}

/// Limits applied to every invocation (the defaults of every tier).
#[derive(clap::Args, Clone, Debug)]
pub struct LimitArgs {
    /// Largest request body a component receives, in bytes (or 1MiB, 512KiB).
    #[arg(long, env = "MAX_INPUT_SIZE", default_value_t = tenancy::DEFAULT_MAX_INPUT_BYTES,
          value_name = "BYTES", value_parser = bytes_for("MAX_INPUT_SIZE"))]
    pub max_input_size: u64,

    /// Wall-clock time an invocation may take: seconds (5, 0.5) or a duration
    /// with a unit (500ms, 2s) [default: 5]
    #[arg(long, env = "EXECUTION_TIMEOUT", value_name = "DURATION",
          value_parser = duration_for("EXECUTION_TIMEOUT"))]
    pub execution_timeout: Option<Duration>,

    /// Linear memory an instance may grow to, in bytes (or 128MiB).
    #[arg(long, env = "MEMORY_LIMIT", default_value_t = tenancy::DEFAULT_MEMORY_LIMIT_BYTES,
          value_name = "BYTES", value_parser = bytes_for("MEMORY_LIMIT"))]
    pub memory_limit: u64,
}

impl LimitArgs {
    /// `EXECUTION_TIMEOUT`, or its default.
    pub fn execution_timeout(&self) -> Duration {
        self.execution_timeout
            .unwrap_or(Duration::from_millis(tenancy::DEFAULT_EXECUTION_TIMEOUT_MS))
    }

    /// Checks ranges that a parser alone cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(tenancy::MIN_MEMORY_LIMIT_BYTES..=tenancy::MAX_MEMORY_LIMIT_BYTES)
            .contains(&self.memory_limit)
        {
            bail!("MEMORY_LIMIT must be between 1MiB and 4GiB, got {}", self.memory_limit);
        }
        let timeout = self.execution_timeout();
        if timeout.is_zero() || timeout > Duration::from_millis(tenancy::MAX_EXECUTION_TIMEOUT_MS) {
            bail!("EXECUTION_TIMEOUT must be more than 0 and at most 1 hour");
        }
        if self.max_input_size > tenancy::MAX_MAX_INPUT_BYTES {
            bail!("MAX_INPUT_SIZE must be at most 1GiB, got {}", self.max_input_size);
        }
        Ok(())
    }
}

/// The wasmtime engine and its instance pool.
#[derive(clap::Args, Clone, Debug)]
pub struct RuntimeArgs {
    /// Instances that may run at the same time on this node; a request past
    /// this gets 503 at once. Each reserves virtual (not resident) memory.
    #[arg(long, env = "INSTANCE_POOL_SIZE", default_value_t = DEFAULT_INSTANCE_POOL_SIZE,
          value_parser = number_for::<u32>("INSTANCE_POOL_SIZE"))]
    pub instance_pool_size: u32,

    /// Instance slots beyond INSTANCE_POOL_SIZE kept warm, each bound to the
    /// component that last used it so that component's next instance skips
    /// re-mapping its memory image (address space only, plus the resident
    /// pages of POOL_KEEP_RESIDENT). Instances kept for reuse (deployments
    /// with max_instance_reuse above 1) use these slots too, at most this
    /// many. Unset: the pool size.
    #[arg(long, env = "POOL_WARM_SLOTS", value_parser = number_for::<u32>("POOL_WARM_SLOTS"))]
    pub pool_warm_slots: Option<u32>,

    /// Bytes of an idle slot's linear memory reset in place (only the pages
    /// the guest dirtied, Linux 6.7+) and kept resident rather than released.
    #[arg(long, env = "POOL_KEEP_RESIDENT", default_value_t = crate::runtime::DEFAULT_KEEP_RESIDENT_BYTES,
          value_parser = bytes_for("POOL_KEEP_RESIDENT"))]
    pub pool_keep_resident: u64,

    /// Most linear memory, in all, that instances kept idle for reuse may
    /// hold on this node (they keep their heap resident between requests).
    /// 0 turns instance reuse off on this node.
    #[arg(long, env = "REUSE_IDLE_MEMORY", default_value_t = crate::runtime::DEFAULT_REUSE_IDLE_MEMORY,
          value_name = "BYTES", value_parser = bytes_for("REUSE_IDLE_MEMORY"))]
    pub reuse_idle_memory: u64,

    /// How long an instance kept for reuse may stay idle before it is dropped.
    #[arg(long, env = "REUSE_IDLE_TIMEOUT", default_value = "10", value_name = "DURATION",
          value_parser = duration_for("REUSE_IDLE_TIMEOUT"))]
    pub reuse_idle_timeout: Duration,

    /// Core module instances one component may hold (Rust 3, JavaScript 6,
    /// Python 14 and more with native extensions); counted, not reserved.
    #[arg(long, env = "POOL_CORE_INSTANCES", value_name = "N",
          default_value_t = crate::runtime::DEFAULT_CORE_INSTANCES_PER_COMPONENT,
          value_parser = number_for::<u32>("POOL_CORE_INSTANCES"))]
    pub pool_core_instances: u32,

    /// Linear memories one component may hold (each reserves address space,
    /// not memory, in every pool slot).
    #[arg(long, env = "POOL_MEMORIES", value_name = "N",
          default_value_t = crate::runtime::DEFAULT_MEMORIES_PER_COMPONENT,
          value_parser = number_for::<u32>("POOL_MEMORIES"))]
    pub pool_memories: u32,

    /// Tables one component may hold.
    #[arg(long, env = "POOL_TABLES", value_name = "N",
          default_value_t = crate::runtime::DEFAULT_TABLES_PER_COMPONENT,
          value_parser = number_for::<u32>("POOL_TABLES"))]
    pub pool_tables: u32,

    /// Elements one table may hold.
    #[arg(long, env = "POOL_TABLE_ELEMENTS", value_name = "N",
          default_value_t = crate::runtime::DEFAULT_TABLE_ELEMENTS,
          value_parser = number_for::<u32>("POOL_TABLE_ELEMENTS"))]
    pub pool_table_elements: u32,
}

impl RuntimeArgs {
    /// The runtime's settings.
    pub fn runtime_config(&self) -> crate::runtime::RuntimeConfig {
        crate::runtime::RuntimeConfig {
            pool_size: self.instance_pool_size,
            warm_slots: self.pool_warm_slots.unwrap_or(self.instance_pool_size),
            keep_resident_bytes: self.pool_keep_resident,
            reuse_idle_memory: self.reuse_idle_memory,
            reuse_idle_timeout: self.reuse_idle_timeout,
            shape: crate::runtime::ComponentShape {
                core_instances: self.pool_core_instances.max(1),
                memories: self.pool_memories.max(1),
                tables: self.pool_tables.max(1),
                table_elements: self.pool_table_elements.max(1),
            },
        }
    }
}

/// HTTP serving: timeouts and limits on what clients send.
#[derive(clap::Args, Clone, Debug)]
pub struct HttpArgs {
    /// Time a client has to send the request line and headers.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "10", value_name = "DURATION",
          value_parser = duration_for("HEADER_READ_TIMEOUT"))]
    pub header_read_timeout: Duration,

    /// Longest pause allowed between two chunks of a request body.
    #[arg(long, env = "BODY_READ_TIMEOUT", default_value = "30", value_name = "DURATION",
          value_parser = duration_for("BODY_READ_TIMEOUT"))]
    pub body_read_timeout: Duration,

    /// Bytes of request bodies of unknown length the node may hold, all
    /// requests together, while it reads them ahead of admission (to learn
    /// their size); past it, new such bodies get 503 with Retry-After
    /// instead of being buffered.
    #[arg(long, env = "MAX_BUFFERED_INPUT", default_value = "256MiB", value_name = "BYTES",
          value_parser = bytes_for("MAX_BUFFERED_INPUT"))]
    pub max_buffered_input: u64,

    /// Largest header section accepted (431 past it), in bytes.
    #[arg(long, env = "MAX_HEADER_BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES as u64,
          value_name = "BYTES", value_parser = bytes_for("MAX_HEADER_BYTES"))]
    pub max_header_bytes: u64,

    /// Most header fields accepted in one request (431 past it).
    #[arg(long, env = "MAX_HEADER_COUNT", default_value_t = DEFAULT_MAX_HEADER_COUNT,
          value_parser = number_for::<usize>("MAX_HEADER_COUNT"))]
    pub max_header_count: usize,

    /// Longest request target accepted (414 past it), in bytes.
    #[arg(long, env = "MAX_URI_LENGTH", default_value_t = DEFAULT_MAX_URI_LENGTH,
          value_parser = number_for::<usize>("MAX_URI_LENGTH"))]
    pub max_uri_length: usize,

    /// Open client connections accepted at once; further clients wait in the
    /// kernel's accept queue.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = number_for::<usize>("MAX_CONNECTIONS"))]
    pub max_connections: usize,

    /// Threads that accept and serve connections, each with its own event
    /// loop and its own listening socket on the address (SO_REUSEPORT), a
    /// connection staying on its thread: a little faster for short
    /// handlers, but a CPU-bound guest then delays every connection of its
    /// thread. 0 serves every connection on the process's shared,
    /// work-stealing runtime.
    #[arg(long, env = "SERVER_THREADS", default_value_t = 0,
          value_parser = number_for::<usize>("SERVER_THREADS"))]
    pub server_threads: usize,

    /// Time a client has to complete the TLS handshake.
    #[arg(long, env = "TLS_HANDSHAKE_TIMEOUT", default_value = "10", value_name = "DURATION",
          value_parser = duration_for("TLS_HANDSHAKE_TIMEOUT"))]
    pub tls_handshake_timeout: Duration,

    /// Time in-flight requests get to finish after SIGINT or SIGTERM.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "30", value_name = "DURATION",
          value_parser = duration_for("SHUTDOWN_TIMEOUT"))]
    pub shutdown_timeout: Duration,

    /// PEM certificate chain: serve HTTPS (h2 and http/1.1) instead of HTTP.
    #[arg(long, env = "TLS_CERT_PATH", requires = "tls_key_path")]
    pub tls_cert_path: Option<PathBuf>,

    /// PEM private key for TLS_CERT_PATH.
    #[arg(long, env = "TLS_KEY_PATH", requires = "tls_cert_path")]
    pub tls_key_path: Option<PathBuf>,
}

impl HttpArgs {
    /// Checks ranges that a parser alone cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_header_bytes < 8192 {
            bail!("MAX_HEADER_BYTES must be at least 8192 (hyper's smallest buffer)");
        }
        if self.max_connections == 0 {
            bail!("MAX_CONNECTIONS must be at least 1");
        }
        if self.server_threads > MAX_SERVER_THREADS {
            bail!("SERVER_THREADS must be at most {MAX_SERVER_THREADS}");
        }
        if self.max_header_count == 0 {
            bail!("MAX_HEADER_COUNT must be at least 1");
        }
        Ok(())
    }
}

/// Where state lives and how keys are hashed: shared by `serve`, `admin`
/// and `migrate`, so they always open the same store the same way.
#[derive(clap::Args, Clone)]
pub struct StoreArgs {
    /// PostgreSQL URL; when unset, the embedded SQLite store under
    /// WASMWIZ_DATA_DIR is used.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Folder for the embedded database and the compiled-code cache.
    #[arg(long, env = "WASMWIZ_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// Secret for hashing API keys (at least 32 characters; required when
    /// ENVIRONMENT=production). Changing it invalidates every key.
    #[arg(long, env = "API_SALT", hide_env_values = true)]
    pub api_salt: Option<String>,

    /// A domain under which each tenant may deploy on its own host,
    /// `<tenant>.<domain>` (every path on it), beside its default route
    /// prefix `/<tenant>/...`. Every node and admin command of an
    /// installation must agree on it.
    #[arg(long, env = "WASMWIZ_BASE_DOMAIN", value_name = "DOMAIN",
          value_parser = base_domain)]
    pub base_domain: Option<String>,

    /// The key deployments' secrets are sealed with at rest: 32 bytes in
    /// base64 or hex (`wasmwiz admin secrets generate-key` makes one).
    /// Required when ENVIRONMENT=production; without it (development only)
    /// a key is generated and kept beside the embedded store
    /// (WASMWIZ_DATA_DIR/secrets.key), or in PostgreSQL's settings.
    #[arg(long, env = "SECRETS_KEY", hide_env_values = true)]
    pub secrets_key: Option<String>,

    /// Keys secrets were sealed with before SECRETS_KEY, comma-separated:
    /// what they sealed still opens, until `wasmwiz admin secrets rotate`
    /// has sealed everything again under SECRETS_KEY.
    #[arg(long, env = "SECRETS_KEY_PREVIOUS", hide_env_values = true, value_delimiter = ',')]
    pub secrets_key_previous: Vec<String>,
}

/// Parses `WASMWIZ_BASE_DOMAIN`: a DNS name, lower-cased.
fn base_domain(text: &str) -> Result<String, String> {
    match crate::router::Grant::host(text) {
        Ok(crate::router::Grant::Host(host)) if host.contains('.') => Ok(host),
        _ => Err(format!("WASMWIZ_BASE_DOMAIN: `{text}` is not a domain such as edge.example.com")),
    }
}

impl std::fmt::Debug for StoreArgs {
    /// Never prints the database URL (it may hold a password) or the salt.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreArgs")
            .field("database_url", &self.database_url.as_ref().map(|_| "<set>"))
            .field("data_dir", &self.data_dir)
            .field("api_salt", &self.api_salt.as_ref().map(|_| "<set>"))
            .field("base_domain", &self.base_domain)
            .finish()
    }
}

/// Default for `WASMWIZ_DATA_DIR`.
pub const DEFAULT_DATA_DIR: &str = ".wasmwiz";

/// The default tiers' request rates, seeded into the store on first start.
#[derive(clap::Args, Clone, Debug)]
pub struct TierRateArgs {
    /// Requests per minute of the free tier.
    #[arg(long, env = "FREE_TIER_RATE_MINUTE", default_value_t = tenancy::DEFAULT_TIER_RATES[0].1,
          value_parser = number_for::<u64>("FREE_TIER_RATE_MINUTE"))]
    pub free_tier_rate_minute: u64,
    /// Requests per day of the free tier.
    #[arg(long, env = "FREE_TIER_RATE_DAY", default_value_t = tenancy::DEFAULT_TIER_RATES[0].2,
          value_parser = number_for::<u64>("FREE_TIER_RATE_DAY"))]
    pub free_tier_rate_day: u64,
    /// Requests per minute of the basic tier.
    #[arg(long, env = "BASIC_TIER_RATE_MINUTE", default_value_t = tenancy::DEFAULT_TIER_RATES[1].1,
          value_parser = number_for::<u64>("BASIC_TIER_RATE_MINUTE"))]
    pub basic_tier_rate_minute: u64,
    /// Requests per day of the basic tier.
    #[arg(long, env = "BASIC_TIER_RATE_DAY", default_value_t = tenancy::DEFAULT_TIER_RATES[1].2,
          value_parser = number_for::<u64>("BASIC_TIER_RATE_DAY"))]
    pub basic_tier_rate_day: u64,
    /// Requests per minute of the pro tier.
    #[arg(long, env = "PRO_TIER_RATE_MINUTE", default_value_t = tenancy::DEFAULT_TIER_RATES[2].1,
          value_parser = number_for::<u64>("PRO_TIER_RATE_MINUTE"))]
    pub pro_tier_rate_minute: u64,
    /// Requests per day of the pro tier.
    #[arg(long, env = "PRO_TIER_RATE_DAY", default_value_t = tenancy::DEFAULT_TIER_RATES[2].2,
          value_parser = number_for::<u64>("PRO_TIER_RATE_DAY"))]
    pub pro_tier_rate_day: u64,
}

/// A per-tenant cap: a number, or `unlimited` for none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(pub Option<u32>);

impl std::fmt::Display for Cap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("unlimited"),
        }
    }
}

/// A parser for a [`Cap`] that names its variable when it fails.
pub fn cap_for(
    var: &'static str,
) -> impl Fn(&str) -> Result<Cap, String> + Clone + Send + Sync + 'static {
    move |text: &str| {
        if text.eq_ignore_ascii_case("unlimited") {
            return Ok(Cap(None));
        }
        match text.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(Cap(Some(n))),
            _ => Err(format!("{var}: `{text}` is neither a number from 1 up nor `unlimited`")),
        }
    }
}

/// The limits and rates new tiers start from: the default tiers (free,
/// basic, pro) are seeded from these on first start, and a tier created
/// through the API takes them for the fields it leaves out.
#[derive(clap::Args, Clone, Debug)]
pub struct TierDefaultArgs {
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub rates: TierRateArgs,
    /// Largest component accepted for upload: the free tier's, and that of
    /// tiers created without saying.
    #[arg(long, env = "MAX_WASM_SIZE", default_value_t = tenancy::DEFAULT_MAX_COMPONENT_BYTES,
          value_name = "BYTES", value_parser = bytes_for("MAX_WASM_SIZE"))]
    pub max_wasm_size: u64,
    /// Largest component of the basic tier (room for Python and JavaScript).
    #[arg(long, env = "BASIC_TIER_MAX_WASM_SIZE",
          default_value_t = tenancy::DEFAULT_BASIC_MAX_COMPONENT_BYTES,
          value_name = "BYTES", value_parser = bytes_for("BASIC_TIER_MAX_WASM_SIZE"))]
    pub basic_tier_max_wasm_size: u64,
    /// Largest component of the pro tier.
    #[arg(long, env = "PRO_TIER_MAX_WASM_SIZE",
          default_value_t = tenancy::DEFAULT_PRO_MAX_COMPONENT_BYTES,
          value_name = "BYTES", value_parser = bytes_for("PRO_TIER_MAX_WASM_SIZE"))]
    pub pro_tier_max_wasm_size: u64,
    /// Invocations one tenant may run at once on one node, or `unlimited`
    /// (then only the instance pool's fair share limits it).
    #[arg(long, env = "MAX_CONCURRENCY", value_name = "N",
          default_value_t = Cap(Some(tenancy::DEFAULT_MAX_CONCURRENCY)),
          value_parser = cap_for("MAX_CONCURRENCY"))]
    pub max_concurrency: Cap,
}

impl TierDefaultArgs {
    /// Checks ranges that a parser alone cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.limits.validate()?;
        for (var, size) in [
            ("MAX_WASM_SIZE", self.max_wasm_size),
            ("BASIC_TIER_MAX_WASM_SIZE", self.basic_tier_max_wasm_size),
            ("PRO_TIER_MAX_WASM_SIZE", self.pro_tier_max_wasm_size),
        ] {
            if !(1..=tenancy::MAX_MAX_COMPONENT_BYTES).contains(&size) {
                bail!("{var} must be between 1 byte and 1GiB");
            }
        }
        if self.max_concurrency.0.is_some_and(|n| n > tenancy::MAX_MAX_CONCURRENCY) {
            bail!("MAX_CONCURRENCY must be at most {}", tenancy::MAX_MAX_CONCURRENCY);
        }
        Ok(())
    }

    /// Limits of a tier with the given rates: the built-in defaults with
    /// what these settings change.
    pub fn tier_limits(&self, per_minute: Option<u64>, per_day: Option<u64>) -> TierLimits {
        TierLimits {
            requests_per_minute: per_minute,
            requests_per_day: per_day,
            memory_limit_bytes: self.limits.memory_limit,
            execution_timeout_ms: u64::try_from(self.limits.execution_timeout().as_millis())
                .unwrap_or(u64::MAX),
            max_input_bytes: self.limits.max_input_size,
            max_component_bytes: self.max_wasm_size,
            max_concurrency: self.max_concurrency.0,
            ..TierLimits::default()
        }
    }

    /// The default tiers: free, basic and pro.
    pub fn default_tiers(&self) -> Vec<Tier> {
        let r = &self.rates;
        [
            ("free", r.free_tier_rate_minute, r.free_tier_rate_day, self.max_wasm_size),
            (
                "basic",
                r.basic_tier_rate_minute,
                r.basic_tier_rate_day,
                self.basic_tier_max_wasm_size,
            ),
            ("pro", r.pro_tier_rate_minute, r.pro_tier_rate_day, self.pro_tier_max_wasm_size),
        ]
        .into_iter()
        .map(|(name, minute, day, component)| Tier {
            name: name.to_string(),
            limits: TierLimits {
                max_component_bytes: component,
                ..self.tier_limits(Some(minute), Some(day))
            },
        })
        .collect()
    }

    /// What `PUT /api/v1/tiers` fills in for missing fields: the free
    /// tier's rates (a new tier is never unlimited by accident).
    pub fn defaults_for_new_tiers(&self) -> TierLimits {
        self.tier_limits(
            Some(self.rates.free_tier_rate_minute),
            Some(self.rates.free_tier_rate_day),
        )
    }
}

/// Where quotas are counted.
#[derive(clap::Args, Clone)]
pub struct QuotaArgs {
    /// Redis URL for exact quotas across nodes; unset: counted in process.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key this installation writes.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "wasmwiz")]
    pub redis_key_prefix: String,

    /// Longest wait for one Redis call before counting on this node.
    #[arg(long, env = "REDIS_TIMEOUT", default_value = "100ms", value_name = "DURATION",
          value_parser = duration_for("REDIS_TIMEOUT"))]
    pub redis_timeout: Duration,

    /// `false` turns quota admission off entirely (benchmarks, debugging).
    #[arg(long, env = "QUOTAS_ENABLED", default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub quotas_enabled: bool,
}

impl std::fmt::Debug for QuotaArgs {
    /// Never prints the Redis URL (it may hold a password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaArgs")
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<set>"))
            .field("redis_key_prefix", &self.redis_key_prefix)
            .field("redis_timeout", &self.redis_timeout)
            .field("quotas_enabled", &self.quotas_enabled)
            .finish()
    }
}

/// Compiling uploads.
#[derive(clap::Args, Clone, Debug)]
pub struct CompileArgs {
    /// Time one compilation may take before the compiler is killed.
    #[arg(long, env = "COMPILE_TIMEOUT", default_value = "60", value_name = "DURATION",
          value_parser = duration_for("COMPILE_TIMEOUT"))]
    pub compile_timeout: Duration,

    /// Heap the compiler process may use.
    #[arg(long, env = "COMPILE_MEMORY_LIMIT", default_value = "4GiB", value_name = "BYTES",
          value_parser = bytes_for("COMPILE_MEMORY_LIMIT"))]
    pub compile_memory_limit: u64,

    /// Where compiled code is cached, by component digest and engine
    /// fingerprint (safe to share between nodes of one build on one
    /// machine) [default: WASMWIZ_DATA_DIR/cache]
    #[arg(long, env = "COMPILE_CACHE_DIR", value_name = "DIR")]
    pub compile_cache_dir: Option<PathBuf>,

    /// How long a request waits for a route deployed a moment ago (through
    /// any node) whose component this node is still compiling; past it,
    /// 503 with Retry-After.
    #[arg(long, env = "COMPILE_WAIT", default_value = "15", value_name = "DURATION",
          value_parser = duration_for("COMPILE_WAIT"))]
    pub compile_wait: Duration,
}

/// Prometheus metrics and timing headers.
#[derive(clap::Args, Clone, Debug)]
pub struct MetricsArgs {
    /// `false` turns the metrics endpoint off.
    #[arg(long, env = "PROMETHEUS_ENABLED", default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub prometheus_enabled: bool,

    /// Path of the metrics endpoint.
    #[arg(long, env = "METRICS_ENDPOINT", default_value = "/metrics")]
    pub metrics_endpoint: String,

    /// Where metrics are served: HOST:PORT (a listener of their own), or
    /// `public` (on the serving listener, beside tenants' routes: only
    /// behind a proxy that keeps `/metrics` from the internet). They name
    /// every tenant and route, so by default they have a listener of their
    /// own on loopback [default: 127.0.0.1:9100; 127.0.0.1:0 when the
    /// serving port is 0]
    #[arg(long, env = "METRICS_ADDR", value_name = "HOST:PORT|public",
          value_parser = side_addr_for("METRICS_ADDR", true))]
    pub metrics_addr: Option<SideAddr>,

    /// Add a `Server-Timing` header (quota, instantiate, guest) to answers.
    #[arg(long, env = "SERVER_TIMING", default_value_t = false, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub server_timing: bool,
}

impl MetricsArgs {
    /// Checks the endpoint path.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.metrics_endpoint.starts_with('/') || self.metrics_endpoint.len() < 2 {
            bail!("METRICS_ENDPOINT must be a path such as /metrics");
        }
        if self.metrics_endpoint == "/health" || self.metrics_endpoint == "/ready" {
            bail!("METRICS_ENDPOINT cannot be /health or /ready");
        }
        Ok(())
    }
}

/// Default port of the metrics listener (`METRICS_ADDR`), the one
/// Prometheus' node exporter convention and the deploy files use.
pub const DEFAULT_METRICS_PORT: u16 = 9100;
/// Default port of the console listener (`CONSOLE_ADDR`).
pub const DEFAULT_CONSOLE_PORT: u16 = 8081;

/// Where a listener of the node's own (the console's, the metrics') binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SideAddr {
    /// A listener of its own on this address.
    Addr(SocketAddr),
    /// On the serving listener (metrics only).
    Public,
    /// Not served at all.
    Off,
}

impl SideAddr {
    /// The address for `setting` (unset: loopback and `default_port`, or
    /// port 0 when the serving listener was asked for port 0, so that nodes
    /// started on free ports, as tests start them, never collide).
    pub fn resolve(setting: Option<SideAddr>, default_port: u16, serving: SocketAddr) -> SideAddr {
        setting.unwrap_or_else(|| {
            let port = if serving.port() == 0 { 0 } else { default_port };
            SideAddr::Addr(SocketAddr::from(([127, 0, 0, 1], port)))
        })
    }
}

/// A parser for a [`SideAddr`] (`HOST:PORT`, `off`, and `public` where
/// `public` is allowed) that names its variable when it fails.
pub fn side_addr_for(
    var: &'static str,
    public_allowed: bool,
) -> impl Fn(&str) -> Result<SideAddr, String> + Clone + Send + Sync + 'static {
    move |text: &str| match text.trim() {
        "off" => Ok(SideAddr::Off),
        "public" if public_allowed => Ok(SideAddr::Public),
        "public" => Err(format!(
            "{var}: the console is never served on the tenants' listener (a page a tenant \
             serves there would share the console's browser origin); give it HOST:PORT"
        )),
        other => {
            other.to_socket_addrs().ok().and_then(|mut a| a.next()).map(SideAddr::Addr).ok_or_else(
                || {
                    let also = if public_allowed { ", `public`" } else { "" };
                    format!("{var}: `{other}` is not HOST:PORT (or `off`{also})")
                },
            )
        }
    }
}

/// The web console.
#[derive(clap::Args, Clone, Debug)]
pub struct ConsoleArgs {
    /// Where the web console (and the API it calls) is served: HOST:PORT,
    /// or `off`. Never on the serving listener: a page a tenant serves
    /// there would share the console's browser origin, and could read the
    /// key of whoever signs in [default: 127.0.0.1:8081; 127.0.0.1:0 when
    /// the serving port is 0]
    #[arg(long, env = "CONSOLE_ADDR", value_name = "HOST:PORT|off",
          value_parser = side_addr_for("CONSOLE_ADDR", false))]
    pub console_addr: Option<SideAddr>,

    /// The URL where tenants' routes answer, as their clients reach them
    /// (`https://edge.example.com` behind a proxy); the console shows
    /// invoke URLs on it [default: the serving listener's address, with
    /// 127.0.0.1 for an unspecified host]
    #[arg(long, env = "PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
}

impl ConsoleArgs {
    /// `PUBLIC_URL`, or the serving listener's own (`scheme://addr`).
    pub fn public_url(&self, scheme: &str, serving: SocketAddr) -> anyhow::Result<String> {
        if let Some(url) = &self.public_url {
            let url = url.trim_end_matches('/');
            let valid = ["http://", "https://"].iter().any(|s| {
                url.strip_prefix(s).is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
            });
            if !valid {
                bail!("PUBLIC_URL: `{url}` is not http(s)://HOST[:PORT] (no path)");
            }
            return Ok(url.to_string());
        }
        let mut addr = serving;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Ok(format!("{scheme}://{addr}"))
    }
}

/// Guests' outgoing HTTP requests.
#[derive(clap::Args, Clone, Debug)]
pub struct OutboundArgs {
    /// Networks guests may reach although they are not public (loopback,
    /// private, link-local ...), comma-separated CIDRs. Default: none.
    #[arg(long, env = "OUTBOUND_ALLOWED_NETWORKS", value_delimiter = ',',
          value_parser = network_for("OUTBOUND_ALLOWED_NETWORKS"))]
    pub outbound_allowed_networks: Vec<crate::runtime::Network>,

    /// Outgoing requests one invocation may make.
    #[arg(long, env = "OUTBOUND_MAX_REQUESTS", default_value_t = crate::runtime::outbound_defaults::MAX_REQUESTS,
          value_parser = number_for::<u32>("OUTBOUND_MAX_REQUESTS"))]
    pub outbound_max_requests: u32,

    /// Time to connect to an outbound host (and finish TLS).
    #[arg(long, env = "OUTBOUND_CONNECT_TIMEOUT", default_value = "5", value_name = "DURATION",
          value_parser = duration_for("OUTBOUND_CONNECT_TIMEOUT"))]
    pub outbound_connect_timeout: Duration,

    /// Time to an outbound response's first byte.
    #[arg(long, env = "OUTBOUND_RESPONSE_TIMEOUT", default_value = "10", value_name = "DURATION",
          value_parser = duration_for("OUTBOUND_RESPONSE_TIMEOUT"))]
    pub outbound_response_timeout: Duration,
}

impl OutboundArgs {
    /// The settings every deployment's policy shares.
    pub fn settings(&self) -> crate::runtime::OutboundSettings {
        crate::runtime::OutboundSettings {
            allowed_networks: self.outbound_allowed_networks.clone(),
            max_requests: self.outbound_max_requests,
            connect_timeout: self.outbound_connect_timeout,
            response_timeout: self.outbound_response_timeout,
        }
    }
}

/// A parser for a CIDR network that names its variable when it fails.
pub fn network_for(
    var: &'static str,
) -> impl Fn(&str) -> Result<crate::runtime::Network, String> + Clone + Send + Sync + 'static {
    move |text: &str| crate::runtime::Network::parse(text).map_err(|e| format!("{var}: {e}"))
}

/// Logging.
#[derive(clap::Args, Clone, Debug)]
pub struct LogArgs {
    /// Log filter: error, warn, info, debug, trace, or a tracing directive
    /// such as `wasmwiz=debug,info`.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// `production` switches logs to JSON (and, for `serve`, requires a
    /// strong API_SALT).
    #[arg(long, env = "ENVIRONMENT", default_value = "development")]
    pub environment: String,

    /// OTLP/HTTP endpoint to export request traces to (spans go to
    /// `ENDPOINT/v1/traces`, protobuf, in batches); unset: none exported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otel_endpoint: Option<String>,

    /// The `service.name` of the exported spans.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "wasmwiz")]
    pub otel_service_name: String,
}

impl LogArgs {
    /// Whether this process runs as production.
    pub fn is_production(&self) -> bool {
        self.environment.eq_ignore_ascii_case("production")
    }
}

/// Variables that may instead name a file holding their value (`X_FILE`),
/// the way Docker and Kubernetes mount secrets.
pub const FILE_VARIABLES: &[&str] =
    &["DATABASE_URL", "REDIS_URL", "API_SALT", "SECRETS_KEY", "WASMWIZ_API_KEY"];

/// For each of [`FILE_VARIABLES`] that is unset while `X_FILE` is set, the
/// value read from that file (without a trailing newline).
pub fn values_from_files() -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut values = Vec::new();
    for var in FILE_VARIABLES {
        if std::env::var_os(var).is_some() {
            continue;
        }
        let file_var = format!("{var}_FILE");
        let Some(path) = std::env::var_os(&file_var) else { continue };
        let value = std::fs::read_to_string(&path).with_context(|| {
            format!("{file_var}: cannot read {}", std::path::Path::new(&path).display())
        })?;
        values.push((*var, value.trim_end_matches(['\n', '\r']).to_string()));
    }
    Ok(values)
}

/// A parser for a plain number that names its variable when it fails.
pub fn number_for<T>(
    var: &'static str,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    move |text: &str| {
        text.trim().parse::<T>().map_err(|e| format!("{var}: `{text}` is not a valid number ({e})"))
    }
}

/// A parser for a byte count (`1048576`, `512KiB`, `128MiB`, `1GiB`, `10MB`)
/// that names its variable when it fails.
pub fn bytes_for(
    var: &'static str,
) -> impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync + 'static {
    move |text: &str| {
        parse_bytes(text).ok_or_else(|| {
            format!("{var}: `{text}` is not a byte count (examples: 1048576, 512KiB, 128MiB)")
        })
    }
}

/// A parser for a duration (`5` or `0.5` seconds, `500ms`, `2s`, `1m`) that
/// names its variable when it fails.
pub fn duration_for(
    var: &'static str,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |text: &str| {
        parse_duration(text).ok_or_else(|| {
            format!("{var}: `{text}` is not a duration (examples: 5 for seconds, 500ms, 2s)")
        })
    }
}

/// Parses a byte count with an optional binary or decimal unit.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits.parse().ok()?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return None,
    };
    value.checked_mul(multiplier)
}

/// Parses a duration: a bare number is seconds (fractions allowed), anything
/// else goes to `humantime` (`500ms`, `2s`, `1m 30s`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    humantime::parse_duration(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_accept_plain_numbers_and_units() {
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("128MiB"), Some(128 << 20));
        assert_eq!(parse_bytes("512 KiB"), Some(512 << 10));
        assert_eq!(parse_bytes("10MB"), Some(10_000_000));
        assert_eq!(parse_bytes("1gib"), Some(1 << 30));
        assert_eq!(parse_bytes("12x"), None);
        assert_eq!(parse_bytes("-1"), None);
        assert_eq!(parse_bytes(""), None);
        assert_eq!(parse_bytes("99999999999999999999GiB"), None);
    }

    #[test]
    fn durations_default_to_seconds_and_accept_units() {
        assert_eq!(parse_duration("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("0.25"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("-1"), None);
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn parse_errors_name_the_variable() {
        let err = bytes_for("MEMORY_LIMIT")("lots").unwrap_err();
        assert!(err.starts_with("MEMORY_LIMIT:"), "{err}");
        let err = duration_for("EXECUTION_TIMEOUT")("forever").unwrap_err();
        assert!(err.starts_with("EXECUTION_TIMEOUT:"), "{err}");
        let err = number_for::<u16>("SERVER_PORT")("70000").unwrap_err();
        assert!(err.starts_with("SERVER_PORT:"), "{err}");
    }

    #[test]
    fn listen_address_comes_from_host_and_port_unless_given() {
        let args = ListenArgs { addr: None, server_host: "127.0.0.1".into(), server_port: 9000 };
        assert_eq!(args.socket_addr().unwrap(), "127.0.0.1:9000".parse().unwrap());
        let args = ListenArgs { addr: Some("127.0.0.1:0".into()), ..args };
        assert_eq!(args.socket_addr().unwrap(), "127.0.0.1:0".parse().unwrap());
        let args = ListenArgs { addr: None, server_host: "::1".into(), server_port: 1 };
        assert_eq!(args.socket_addr().unwrap(), "[::1]:1".parse().unwrap());
    }
}

/// Tenants' log streams (`GET /api/v1/logs`, `wasmwiz logs`).
#[derive(clap::Args, Clone, Debug)]
pub struct TenantLogArgs {
    /// `false` turns the tenants' log streams off on this node.
    #[arg(long, env = "TENANT_LOGS", default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub tenant_logs: bool,

    /// Events kept per tenant (in Redis, shared by the nodes; else on
    /// each node).
    #[arg(long, env = "LOG_EVENTS_KEPT", value_name = "N",
          default_value_t = crate::logs::DEFAULT_EVENTS_KEPT as u32,
          value_parser = number_for::<u32>("LOG_EVENTS_KEPT"))]
    pub log_events_kept: u32,

    /// Events one tenant may log per second on one node (bursts of twice
    /// as many); the rest are counted in a `dropped` notice.
    #[arg(long, env = "LOG_EVENTS_PER_SECOND", value_name = "N",
          default_value_t = crate::logs::DEFAULT_EVENTS_PER_SECOND,
          value_parser = number_for::<u32>("LOG_EVENTS_PER_SECOND"))]
    pub log_events_per_second: u32,

    /// This node's name in log events [default: HOSTNAME:PORT]
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
}

impl TenantLogArgs {
    /// The bounds of the streams.
    pub fn settings(&self) -> crate::logs::LogSettings {
        crate::logs::LogSettings {
            kept: self.log_events_kept.max(1) as usize,
            per_second: self.log_events_per_second.max(1),
        }
    }
}

/// The configuration of a serving node: the arguments of `wasmwiz serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub tiers: TierDefaultArgs,
    #[command(flatten)]
    pub quota: QuotaArgs,
    #[command(flatten)]
    pub compile: CompileArgs,
    #[command(flatten)]
    pub outbound: OutboundArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub console: ConsoleArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub logs: TenantLogArgs,
    #[command(flatten)]
    pub log: LogArgs,
}
