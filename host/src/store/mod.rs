//! Durable state: tiers, tenants, API keys, components (their bytes
//! included) and versioned deployments.
//!
//! One trait, [`Store`], two implementations with the same schema and the
//! same queries: PostgreSQL when `DATABASE_URL` is set ([`postgres`]),
//! SQLite under `WASMWIZ_DATA_DIR` otherwise ([`sqlite`], the embedded
//! default). The queries live once, in [`sql`]; each backend adds only what
//! differs (how a write transaction is serialized, how other nodes are told).
//!
//! Every mutation that nodes must see bumps one change counter in the same
//! transaction; nodes reload when it moves.

mod kv;
pub mod opening;
pub mod postgres;
mod sql;
pub mod sqlite;
pub mod triggers;

pub use kv::StoreKv;
pub use triggers::{
    NewQueue, NewSchedule, QueueDepth, QueueRecord, RunRecord, ScheduleRecord, StoredMessage,
    TriggerStore,
};

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

pub use crate::kv::{Bucket, Change, KvError, KvLimits, Totals};
use crate::rollout::{Guard, RolloutPlan};
use crate::router::{Grant, RoutePattern};
use crate::tenancy::{TenantId, Tier};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist (or belongs to another tenant).
    #[error("not found")]
    NotFound,
    /// The change conflicts with existing state.
    #[error("{0}")]
    Conflict(String),
    /// The request names something that does not exist or is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The route is outside what the tenant is granted.
    #[error("{0}")]
    NotGranted(String),
    /// The database cannot be reached right now.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The database's disk is full: reads work, writes wait for space.
    #[error("the store has no space left: {0}")]
    Full(String),
    /// Anything else.
    #[error("store error: {0}")]
    Internal(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
                StoreError::Full(error.to_string())
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => StoreError::Unavailable(error.to_string()),
            sqlx::Error::Database(db) => {
                // PostgreSQL error classes that mean "the database is not
                // there right now", not "this query is wrong": connection
                // exceptions (08), insufficient resources (53), operator
                // intervention such as a restart (57), a missing database
                // (3D000) and refused authentication (28).
                let code = db.code().unwrap_or_default();
                // SQLITE_FULL (13), PostgreSQL's disk_full (53100).
                if code == "13" || code == "53100" {
                    return StoreError::Full(error.to_string());
                }
                // PostgreSQL's data exceptions (class 22): a value the
                // column cannot hold, such as text with a NUL character.
                if code.starts_with("22") {
                    return StoreError::Invalid(format!(
                        "a value cannot be stored ({}); text may not contain NUL characters",
                        db.message()
                    ));
                }
                let unavailable =
                    ["08", "53", "57", "28"].iter().any(|class| code.starts_with(class))
                        || code == "3D000";
                if unavailable {
                    StoreError::Unavailable(error.to_string())
                } else if db.is_unique_violation() {
                    StoreError::Conflict(error.to_string())
                } else {
                    StoreError::Internal(error.to_string())
                }
            }
            _ => StoreError::Internal(error.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        StoreError::Internal(format!("migration failed: {error}"))
    }
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// A task listening for other nodes' changes; it ends when dropped.
pub type Watcher = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    /// Primary key.
    pub id: TenantId,
    /// Unique name.
    pub name: String,
    /// Name of its tier.
    pub tier: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// An API key as stored: never the key itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Public identifier (`key_...`).
    pub id: String,
    /// Owner.
    pub tenant_id: TenantId,
    /// Owner's name.
    pub tenant: String,
    /// Owner's tier.
    pub tier: String,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    /// Comma-separated scopes.
    pub scopes: String,
    /// HMAC of the key, to compare in constant time.
    pub key_hash: Vec<u8>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
    /// When it last authenticated a request (Unix milliseconds; written at
    /// most once a minute per node).
    pub last_used_at: Option<i64>,
}

/// A new API key to store.
#[derive(Clone, Debug)]
pub struct NewApiKey {
    /// Public identifier.
    pub id: String,
    /// Owner.
    pub tenant_id: TenantId,
    /// Display prefix.
    pub prefix: String,
    /// HMAC of the key.
    pub hash: Vec<u8>,
    /// Comma-separated scopes.
    pub scopes: String,
}

/// What is known about an uploaded component (without its bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ComponentMeta {
    /// `sha256:<hex>`.
    pub digest: String,
    /// The name it was uploaded under.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// The world it targets.
    pub world: String,
    /// Compilation time at upload.
    pub compile_ms: u64,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A component to store.
#[derive(Clone, Debug)]
pub struct NewComponent {
    /// Owner.
    pub tenant_id: TenantId,
    /// Metadata.
    pub meta: ComponentMeta,
    /// The component's bytes.
    pub bytes: Vec<u8>,
}

/// What deleting a component did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComponentDeletion {
    /// Deleted.
    Deleted,
    /// No such component for this tenant.
    NotFound,
    /// A live deployment (any of its versions) uses it.
    InUse,
}

/// A route grant as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantRecord {
    /// Public identifier (`grt_...`).
    pub id: String,
    /// The tenant it is granted to.
    pub tenant_id: TenantId,
    /// That tenant's name.
    pub tenant: String,
    /// What it grants.
    pub grant: Grant,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// One version of a deployment, and when it was live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRecord {
    /// The version number.
    pub version: i64,
    /// Its component's digest.
    pub component: String,
    /// When it was deployed, Unix milliseconds.
    pub created_at: i64,
    /// Whether it is live now.
    pub live: bool,
    /// Every stretch of time it was live, oldest first.
    pub periods: Vec<LivePeriod>,
}

/// A stretch of time a version was live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LivePeriod {
    /// When it became live, Unix milliseconds.
    pub from: i64,
    /// When another version replaced it (`None`: live now).
    pub until: Option<i64>,
    /// What made it live: `deploy`, `rollback`, `rollback_to` or
    /// `promote`.
    pub reason: String,
}

/// A rollout as stored: a version (the canary) given a share of its
/// deployment's requests beside the live one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutRecord {
    /// The canary version.
    pub version: i64,
    /// The live version it was split with.
    pub stable: i64,
    /// `running`, `promoted`, `rolled_back`, `stopped` (by a node, its
    /// error rate past the guard's) or `replaced` (by another deploy).
    pub state: String,
    /// Its share now, percent (0 once ended other than promoted).
    pub percent: u8,
    /// The shares it goes through.
    pub steps: Vec<u8>,
    /// Index into `steps` of the share in force.
    pub step: usize,
    /// Milliseconds between steps.
    pub interval_ms: i64,
    /// When the next step is due, Unix milliseconds (none left: `None`).
    pub next_at: Option<i64>,
    /// The header that keeps a client on one side.
    pub sticky_header: Option<String>,
    /// When it is stopped.
    pub guard: Guard,
    /// Why it ended (empty while running).
    pub reason: String,
    /// Unix milliseconds.
    pub started_at: i64,
    /// Unix milliseconds.
    pub ended_at: Option<i64>,
}

/// A running rollout's canary, as nodes serve it beside the live version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canary {
    /// The canary version.
    pub version: i64,
    /// Its component's digest.
    pub component: String,
    /// Its configuration.
    pub config: BTreeMap<String, String>,
    /// Hosts it may call.
    pub allowed_outbound_hosts: Vec<String>,
    /// Requests one instance may serve.
    pub max_instance_reuse: u32,
    /// Requests one WASIp3 instance may serve at once.
    pub max_instance_concurrency: u32,
    /// When the version was created, Unix milliseconds.
    pub created_at: i64,
    /// Its share now, percent.
    pub percent: u8,
    /// The header that keeps a client on one side.
    pub sticky_header: Option<String>,
    /// When it is stopped.
    pub guard: Guard,
    /// When its next step is due, Unix milliseconds.
    pub next_at: Option<i64>,
}

/// A step a rollout took by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutStep {
    /// The deployment.
    pub deployment_id: String,
    /// Its tenant.
    pub tenant_id: TenantId,
    /// The canary version.
    pub version: i64,
    /// Its share now (100: promoted).
    pub percent: u8,
}

/// A deployment request.
#[derive(Clone, Debug)]
pub struct NewDeployment {
    /// Owner.
    pub tenant_id: TenantId,
    /// The route and the host it is bound to, parsed and checked once by
    /// the control plane; stored as its text (`/path/...`) and host.
    pub pattern: RoutePattern,
    /// Digest of one of the tenant's components.
    pub component: String,
    /// Configuration the guest reads.
    pub config: BTreeMap<String, String>,
    /// Secret configuration: readable by the guest, never returned by the API.
    pub secrets: BTreeMap<String, String>,
    /// Hosts the guest may send HTTP requests to.
    pub allowed_outbound_hosts: Vec<String>,
    /// Requests one instance may serve (1: a fresh instance each; 0 is
    /// taken as 1).
    pub max_instance_reuse: u32,
    /// Requests one WASIp3 instance may serve at once (0 is taken as 1).
    pub max_instance_concurrency: u32,
    /// `WASMWIZ_BASE_DOMAIN`: the tenant may use `<tenant>.<base>`.
    pub base_domain: Option<String>,
    /// Versions kept (the tier's `max_versions_per_deployment`): deploying
    /// prunes older ones (never the live one).
    pub keep_versions: u64,
    /// A canary rollout of the new version instead of making it live at
    /// once (the route must have a live version to split with).
    pub rollout: Option<RolloutPlan>,
    /// Whether requests may pick a served version with `wasmwiz-version`.
    pub version_pinning: bool,
}

/// A live deployment at its live version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    /// Stable across versions (`dep_...`).
    pub id: String,
    /// Owner.
    pub tenant_id: TenantId,
    /// Owner's name.
    pub tenant: String,
    /// Owner's tier.
    pub tier: String,
    /// Route in Spin syntax.
    pub route: String,
    /// Host, if bound to one.
    pub host: Option<String>,
    /// Live version (1, 2, ...).
    pub version: i64,
    /// Digest of the live version's component.
    pub component: String,
    /// Configuration.
    pub config: BTreeMap<String, String>,
    /// Secret configuration: the deployment's, whatever its version, each
    /// value sealed ([`crate::secrets`]); never returned by the API.
    pub secrets: BTreeMap<String, String>,
    /// Hosts the guest may call.
    pub allowed_outbound_hosts: Vec<String>,
    /// Requests one instance may serve (1: a fresh instance each).
    pub max_instance_reuse: u32,
    /// Requests one WASIp3 instance may serve at once.
    pub max_instance_concurrency: u32,
    /// When the live version was created, Unix milliseconds.
    pub created_at: i64,
    /// Whether requests may pick a served version with `wasmwiz-version`.
    pub version_pinning: bool,
    /// The canary of a running rollout, served beside the live version.
    pub canary: Option<Box<Canary>>,
}

impl Deployment {
    /// The deployment as its canary serves it: the canary's version,
    /// component, configuration and instance settings (secrets, route and
    /// owner are the deployment's).
    pub fn at_canary(&self) -> Option<Deployment> {
        let canary = self.canary.as_deref()?;
        Some(Deployment {
            version: canary.version,
            component: canary.component.clone(),
            config: canary.config.clone(),
            allowed_outbound_hosts: canary.allowed_outbound_hosts.clone(),
            max_instance_reuse: canary.max_instance_reuse,
            max_instance_concurrency: canary.max_instance_concurrency,
            created_at: canary.created_at,
            canary: None,
            ..self.clone()
        })
    }
}

/// Usage counts of one tenant (for a day, a batch, or all time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UsageCounts {
    /// Invocations that ran.
    pub invocations: u64,
    /// Traps and stack overflows.
    pub errors_trap: u64,
    /// Timeouts.
    pub errors_timeout: u64,
    /// Out of memory.
    pub errors_oom: u64,
    /// No response, or an error answer.
    pub errors_other: u64,
    /// Guest wall time, milliseconds.
    pub wall_ms: u64,
    /// Key-value reads (get, exists, list; each key of a batch).
    pub kv_reads: u64,
    /// Key-value writes (set, delete, increment; each key of a batch).
    pub kv_writes: u64,
}

impl UsageCounts {
    /// Whether everything is zero.
    pub fn is_empty(&self) -> bool {
        *self == UsageCounts::default()
    }

    /// The sum of two counts.
    pub fn plus(&self, other: &UsageCounts) -> UsageCounts {
        UsageCounts {
            invocations: self.invocations + other.invocations,
            errors_trap: self.errors_trap + other.errors_trap,
            errors_timeout: self.errors_timeout + other.errors_timeout,
            errors_oom: self.errors_oom + other.errors_oom,
            errors_other: self.errors_other + other.errors_other,
            wall_ms: self.wall_ms + other.wall_ms,
            kv_reads: self.kv_reads + other.kv_reads,
            kv_writes: self.kv_writes + other.kv_writes,
        }
    }
}

/// The durable state of a WasmWiz installation (schedules and queues in
/// [`TriggerStore`]).
#[async_trait::async_trait]
pub trait Store: TriggerStore + Send + Sync + std::fmt::Debug + 'static {
    /// `postgres` or `sqlite`.
    fn backend(&self) -> &'static str;
    /// Where the data is, for messages: the SQLite file, or PostgreSQL's
    /// `host:port/database` (never a password).
    fn location(&self) -> String;
    /// Applies pending migrations.
    async fn migrate(&self) -> StoreResult<()>;
    /// Whether the database answers.
    async fn ping(&self) -> StoreResult<()>;
    /// Connections in use now (for the metric).
    fn connections_active(&self) -> u32;

    /// Inserts tiers that do not exist yet (leaves existing ones alone).
    async fn seed_tiers(&self, tiers: &[Tier]) -> StoreResult<()>;
    /// Creates or replaces a tier.
    async fn put_tier(&self, tier: &Tier) -> StoreResult<()>;
    /// All tiers.
    async fn tiers(&self) -> StoreResult<Vec<Tier>>;

    /// Creates a tenant; `Conflict` if the name is taken, `Invalid` for an
    /// unknown tier.
    async fn create_tenant(&self, name: &str, tier: &str) -> StoreResult<Tenant>;
    /// Moves a tenant to another tier.
    async fn set_tenant_tier(&self, name: &str, tier: &str) -> StoreResult<Tenant>;
    /// A tenant by name.
    async fn tenant(&self, name: &str) -> StoreResult<Option<Tenant>>;
    /// A tenant by id.
    async fn tenant_by_id(&self, id: TenantId) -> StoreResult<Option<Tenant>>;
    /// Every tenant, by name.
    async fn tenants(&self) -> StoreResult<Vec<Tenant>>;

    /// The explicit grants of one tenant, or of every tenant (defaults are
    /// not stored).
    async fn grants(&self, tenant_id: Option<TenantId>) -> StoreResult<Vec<GrantRecord>>;
    /// Grants `grant` to a tenant; `Conflict` when it overlaps another
    /// tenant's grant or default path.
    async fn add_grant(&self, tenant_id: TenantId, grant: &Grant) -> StoreResult<GrantRecord>;
    /// Revokes one of a tenant's grants; `Conflict` while a live deployment
    /// of the tenant is inside it and in none of its other grants; false if
    /// there is no such grant.
    async fn revoke_grant(
        &self,
        tenant_id: TenantId,
        id: &str,
        base_domain: Option<&str>,
    ) -> StoreResult<bool>;

    /// Stores a new API key.
    async fn create_key(&self, key: &NewApiKey) -> StoreResult<ApiKeyRecord>;
    /// The key with this HMAC, revoked or not.
    async fn key_by_hash(&self, hash: &[u8]) -> StoreResult<Option<ApiKeyRecord>>;
    /// Keys of one tenant, or of all tenants.
    async fn keys(&self, tenant_id: Option<TenantId>) -> StoreResult<Vec<ApiKeyRecord>>;
    /// Revokes a key (of `tenant_id` if given); false if there is none.
    async fn revoke_key(&self, id: &str, tenant_id: Option<TenantId>) -> StoreResult<bool>;

    /// Stores a component unless the tenant already has these bytes; returns
    /// the stored metadata and whether it was new.
    async fn put_component(&self, component: &NewComponent) -> StoreResult<(ComponentMeta, bool)>;
    /// A tenant's component metadata.
    async fn component(
        &self,
        tenant_id: TenantId,
        digest: &str,
    ) -> StoreResult<Option<ComponentMeta>>;
    /// The bytes of a component (any tenant's: used to compile).
    async fn component_bytes(&self, digest: &str) -> StoreResult<Option<Vec<u8>>>;
    /// A tenant's components.
    async fn components(&self, tenant_id: TenantId) -> StoreResult<Vec<ComponentMeta>>;
    /// Deletes a tenant's component unless a live deployment uses it.
    async fn delete_component(
        &self,
        tenant_id: TenantId,
        digest: &str,
    ) -> StoreResult<ComponentDeletion>;

    /// Deploys: version 1 of a new route, or version n+1 of the tenant's
    /// existing one. `NotGranted` outside the tenant's grants (a route the
    /// tenant already holds may always get a new version); `Conflict` when
    /// another tenant holds the route; `Invalid` for an unknown component.
    async fn deploy(&self, deployment: &NewDeployment) -> StoreResult<Deployment>;
    /// Switches a deployment back to the version that was live before the
    /// current one (walking back through the switches), or to `to`. A
    /// running rollout ends instead (`rolled_back`), the live version
    /// staying live unless `to` names another.
    async fn rollback(
        &self,
        tenant_id: TenantId,
        id: &str,
        to: Option<i64>,
    ) -> StoreResult<Deployment>;
    /// Every version of a tenant's deployment, and when each was live.
    async fn versions(&self, tenant_id: TenantId, id: &str) -> StoreResult<Vec<VersionRecord>>;
    /// Every rollout of a tenant's deployment, oldest first.
    async fn rollouts(&self, tenant_id: TenantId, id: &str) -> StoreResult<Vec<RolloutRecord>>;
    /// Makes a running rollout's canary the live version; `Conflict` when
    /// none runs.
    async fn promote(&self, tenant_id: TenantId, id: &str) -> StoreResult<Deployment>;
    /// Ends the running rollout of `version` of deployment `id` with
    /// `state` (`stopped`: by a node) and `reason`; false when it does not
    /// run (any more).
    async fn end_rollout(
        &self,
        id: &str,
        version: i64,
        state: &str,
        reason: &str,
    ) -> StoreResult<bool>;
    /// Takes every step that is due at `now` (each once, whichever node
    /// asks); a step reaching 100 promotes the canary.
    async fn advance_rollouts(&self, now: i64) -> StoreResult<Vec<RolloutStep>>;
    /// Replaces a deployment's (sealed) secrets, as they are: sealing them
    /// again, under another key, changes nothing a node serves.
    async fn put_secrets(&self, id: &str, secrets: &BTreeMap<String, String>) -> StoreResult<()>;
    /// Deletes a deployment (and its secrets); its route is free again.
    async fn delete_deployment(&self, tenant_id: TenantId, id: &str) -> StoreResult<bool>;
    /// Live deployments of one tenant, or of everyone.
    async fn deployments(&self, tenant_id: Option<TenantId>) -> StoreResult<Vec<Deployment>>;

    /// Adds a batch of counts to a tenant's rows for `minute` (minutes
    /// since the epoch, UTC) and for its day, in one transaction.
    async fn add_usage(
        &self,
        tenant_id: TenantId,
        minute: i64,
        counts: &UsageCounts,
    ) -> StoreResult<()>;
    /// A tenant's counts per minute (or per day) from `from` to `to`
    /// (minutes, or days, since the epoch), oldest first; periods without
    /// any are left out.
    async fn usage_history(
        &self,
        tenant_id: TenantId,
        per_minute: bool,
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<(i64, UsageCounts)>>;
    /// Notes that the key `id` authenticated a request at `at` (Unix ms).
    async fn touch_key(&self, id: &str, at: i64) -> StoreResult<()>;
    /// Deletes every tenant's per-minute rows before `before`; how many.
    async fn prune_usage_minutes(&self, before: i64) -> StoreResult<u64>;
    /// A tenant's counts: all time, and for `day`.
    async fn usage(&self, tenant_id: TenantId, day: i64)
    -> StoreResult<(UsageCounts, UsageCounts)>;
    /// Every tenant's counts for `day` (tenants without any are left out).
    async fn usage_on_day(&self, day: i64) -> StoreResult<Vec<(TenantId, UsageCounts)>>;

    /// The value at `key` of `bucket` (key-value data, when the store
    /// keeps it).
    async fn kv_get(&self, bucket: &Bucket, key: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Whether `key` of `bucket` has a value.
    async fn kv_exists(&self, bucket: &Bucket, key: &str) -> StoreResult<bool>;
    /// Up to `limit` keys of `bucket` in key order, from position `offset`.
    async fn kv_list(&self, bucket: &Bucket, offset: u64, limit: u64) -> StoreResult<Vec<String>>;
    /// Applies `change` to `key` of `bucket` within `limits`, serialized with
    /// the tenant's other writes on every node; the counter's new value for
    /// an increment (else 0), or why the write was refused.
    async fn kv_write(
        &self,
        bucket: &Bucket,
        key: &str,
        change: Change,
        limits: &KvLimits,
    ) -> StoreResult<Result<u64, KvError>>;
    /// Keys and bytes `tenant` holds in the store.
    async fn kv_totals(&self, tenant: TenantId) -> StoreResult<Totals>;

    /// The change counter.
    async fn change_seq(&self) -> StoreResult<i64>;
    /// A task that calls `wake.notify_one()` whenever another node may
    /// have changed something (and whenever notifications may have been
    /// missed), for as long as the caller runs it; `None` when there is
    /// nothing to listen to (the embedded store is single-node, and nodes
    /// poll the change counter anyway).
    fn watch_changes(&self, wake: Arc<tokio::sync::Notify>) -> Option<Watcher>;
    /// A shared setting.
    async fn setting(&self, name: &str) -> StoreResult<Option<String>>;
    /// Sets a shared setting if it is not set yet, and returns its value.
    async fn setting_or_insert(&self, name: &str, value: &str) -> StoreResult<String>;
}

/// Opens the store `DATABASE_URL` names, or the embedded SQLite store under
/// `data_dir`, and applies pending migrations.
pub async fn open(database_url: Option<&str>, data_dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
    let store: Arc<dyn Store> = match database_url {
        Some(url) => Arc::new(postgres::PgStore::connect(url).await?),
        None => Arc::new(sqlite::SqliteStore::open(data_dir).await?),
    };
    store.migrate().await?;
    Ok(store)
}

/// Grants each tenant, once per store, the routes it served before grants
/// existed (outside its default `/<tenant>/...`), where they overlap no
/// other tenant's, oldest deployment first: upgrading breaks nobody. A
/// route that cannot be granted (`/...`, or one overlapping an earlier
/// tenant's) keeps serving and may still get new versions; it only cannot
/// be taken by the tenant's other deployments. Returns what it granted.
pub async fn backfill_grants(store: &dyn Store) -> StoreResult<Vec<GrantRecord>> {
    const DONE: &str = "grants_backfilled";
    if store.setting(DONE).await?.is_some() {
        return Ok(Vec::new());
    }
    let mut granted = Vec::new();
    for deployment in store.deployments(None).await? {
        let Ok(pattern) = RoutePattern::parse_stored(&deployment.route, deployment.host.as_deref())
        else {
            continue;
        };
        if Grant::defaults(&deployment.tenant, None).iter().any(|g| g.covers(&pattern)) {
            continue;
        }
        let grant = match pattern.host() {
            Some(host) => Grant::Host(host.to_string()),
            None if pattern.is_wildcard() && pattern.to_string() == "/..." => continue,
            None => Grant::Path(pattern.clone()),
        };
        match store.add_grant(deployment.tenant_id, &grant).await {
            Ok(record) => {
                tracing::info!(tenant = %record.tenant, grant = %record.grant,
                               "granted a route the tenant served before grants existed");
                granted.push(record);
            }
            Err(StoreError::Conflict(why)) => {
                tracing::warn!(tenant = %deployment.tenant, route = %pattern, %why,
                               "a route served before grants existed is not granted; it keeps serving");
            }
            Err(e) => return Err(e),
        }
    }
    store.setting_or_insert(DONE, "1").await?;
    Ok(granted)
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A random identifier: `prefix` + 20 base62 characters (119 bits).
pub fn new_id(prefix: &str) -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let mut id = String::with_capacity(prefix.len() + 20);
    id.push_str(prefix);
    for _ in 0..20 {
        id.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    id
}

/// Whether `id` could name a stored object: ASCII letters, digits and `_`,
/// 1 to 64 of them ([`new_id`] makes a prefix and 20 base62 characters).
/// Anything else names nothing, and is answered as absent without asking the
/// store (PostgreSQL's text cannot even hold a NUL: it would be an error).
pub fn plausible_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
