//! The control-plane service: every change to tenants, keys, tiers,
//! components and deployments, with its validation written once. The API
//! handlers and `wasmwiz admin` both call it; neither writes to the store
//! on its own.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::compiled::CompiledComponents;
use crate::auth::{self, Principal, Scopes};
use crate::metrics::Metrics;
use crate::rollout::RolloutSpec;
use crate::router::{Grant, RouteError, RoutePattern};
use crate::runtime::{CompileError, OutboundPolicy};
use crate::store::{
    ApiKeyRecord, ComponentDeletion, ComponentMeta, Deployment, GrantRecord, NewComponent,
    NewDeployment, RolloutRecord, Store, StoreError, Tenant, VersionRecord, now_ms, plausible_id,
};
use crate::tenancy::{
    MAX_INSTANCE_CONCURRENCY, MAX_INSTANCE_REUSE, NAME_RULE, TenantId, Tier, TierLimits, TierPatch,
    valid_name,
};

/// Most entries in `config` plus `secrets`.
pub const MAX_CONFIG_ENTRIES: usize = 256;
/// Longest configuration name, in characters.
pub const MAX_CONFIG_NAME: usize = 256;
/// Longest configuration value, in characters.
pub const MAX_CONFIG_VALUE: usize = 64 << 10;
/// Most entries in `allowed_outbound_hosts`.
pub const MAX_OUTBOUND_HOSTS: usize = 64;
/// Longest component name, in characters.
pub const MAX_COMPONENT_NAME: usize = 128;

/// Why a change was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The request is malformed or out of range.
    #[error("{0}")]
    Invalid(String),
    /// The route is malformed or reserved.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The route is outside what the tenant is granted.
    #[error("{0}")]
    NotGranted(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No such object (or another tenant's).
    #[error("no such {0}")]
    NotFound(&'static str),
    /// The change conflicts with what exists.
    #[error("{message}")]
    Conflict {
        /// A stable code (`conflict`, `component_in_use`).
        code: &'static str,
        /// What conflicts.
        message: String,
    },
    /// The upload is not a servable component.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// This process cannot compile (an admin command has no runtime).
    #[error("uploads need a serving node")]
    NoCompiler,
    /// A limit of the tenant's tier is reached: `status` 413 for what it
    /// may keep, 429 for what it may do at once; `code` names the limit.
    #[error("{message}")]
    Limit {
        /// 413 or 429.
        status: u16,
        /// A stable code naming the limit (`component_storage_limit` ...).
        code: &'static str,
        /// What the limit is and what to do.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ControlError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Invalid(message) => ControlError::Invalid(message),
            StoreError::NotGranted(message) => ControlError::NotGranted(message),
            StoreError::Conflict(message) => ControlError::Conflict { code: "conflict", message },
            other => ControlError::Store(other),
        }
    }
}

/// Result of a control-plane operation.
pub type ControlResult<T> = Result<T, ControlError>;

/// Who asks: the operator at the command line (`wasmwiz admin`), or the
/// holder of an API key.
#[derive(Clone, Copy, Debug)]
pub enum Actor<'a> {
    /// `wasmwiz admin`: every right.
    Operator,
    /// A key's holder: its tenant and scopes.
    Key(&'a Principal),
}

impl Actor<'_> {
    fn is_admin(&self) -> bool {
        match self {
            Actor::Operator => true,
            Actor::Key(principal) => principal.is_admin(),
        }
    }
}

/// How [`ControlPlane::put_tier`] fills in what a patch leaves out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierBase {
    /// From the defaults for new tiers (`PUT`: the body replaces the tier).
    Defaults,
    /// From the tier's current limits, or the defaults for a new tier
    /// (`wasmwiz admin tier set`).
    Current,
}

/// A deployment to make: `POST /api/v1/deployments`'s body.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploySpec {
    /// The route, Spin syntax.
    pub route: String,
    /// The component's digest (one of the tenant's).
    pub component: String,
    /// The host the route is bound to, if any.
    #[serde(default)]
    pub host: Option<String>,
    /// Configuration the guest reads.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Secret configuration: readable by the guest, never returned.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Hosts the guest may send HTTP requests to.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// Requests one instance may serve: 1 (the default) gives every
    /// request a fresh instance; more keeps an instance that ended well
    /// for later requests of this deployment (faster, but requests see
    /// what earlier ones left in the guest's memory).
    #[serde(default = "one")]
    pub max_instance_reuse: u32,
    /// Requests one instance of a WASIp3 component may serve at once: 1
    /// (the default) one at a time; more lets requests that wait (for an
    /// upstream, a timer) share an instance, which then also serves up to
    /// `max_instance_reuse` requests in all. They share its memory, and a
    /// trap or a timeout ends all of them.
    #[serde(default = "one")]
    pub max_instance_concurrency: u32,
    /// A canary rollout of this version beside the live one, instead of
    /// making it live at once.
    #[serde(default)]
    pub rollout: Option<RolloutSpec>,
    /// Whether a request may pick one of the versions the route serves
    /// (the live one, a rollout's canary) with `wasmwiz-version: N`.
    #[serde(default)]
    pub version_pinning: bool,
}

fn one() -> u32 {
    1
}

/// A grant to make: `{"route": "/shop/..."}` or `{"host": "shop.example.com"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantSpec {
    /// Host-less routes at or below a route pattern.
    Route(String),
    /// Every route on a host.
    Host(String),
}

/// The result of an upload.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// What is stored.
    pub meta: ComponentMeta,
    /// Whether the tenant did not have these bytes before.
    pub created: bool,
}

/// A new API key: the secret, shown once, and what is stored.
#[derive(Debug)]
pub struct IssuedKey {
    /// The key itself.
    pub key: String,
    /// Its stored record (no secret).
    pub record: ApiKeyRecord,
    /// The tenant it belongs to.
    pub tenant: String,
    /// Its scopes.
    pub scopes: Scopes,
}

/// What the service takes from the installation's configuration.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// Limits a tier gets for the fields a change leaves out.
    pub tier_defaults: TierLimits,
    /// Paths no route may claim beyond the built-in ones (a custom metrics
    /// path).
    pub reserved: Vec<String>,
    /// `WASMWIZ_BASE_DOMAIN`: each tenant may use `<tenant>.<base>`.
    pub base_domain: Option<String>,
    /// Seals deployments' secrets before they are stored.
    pub secrets: Arc<crate::secrets::Keyring>,
}

/// The control-plane service of one process.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    store: Arc<dyn Store>,
    salt: Arc<[u8]>,
    settings: Arc<ControlSettings>,
    components: Option<Arc<CompiledComponents>>,
    metrics: Arc<Metrics>,
    /// Uploads each tenant has in flight on this node: each holds its
    /// bytes in memory until it is compiled, so a tier bounds how many.
    uploads: Arc<std::sync::Mutex<HashMap<TenantId, u64>>>,
    /// Makes a stored change live on this node before it is answered
    /// (none for `wasmwiz admin`: serving nodes hear of its changes).
    publisher: Option<Arc<dyn Publisher>>,
}

/// What makes a change the control plane stored live: a serving node
/// rebuilds its route table (and every other node hears of the change
/// through the store). Every change that can alter what a request reaches
/// (a deployment, rollback or deletion, a tenant, its tier or grants, a
/// tier's limits) goes through it, whoever asked (the API, the console
/// through the API, `wasmwiz admin`), so no caller has to remember it.
pub trait Publisher: Send + Sync + std::fmt::Debug {
    /// Returns once the change is live here (or its failure is logged:
    /// the change is stored, and the node's next sync applies it).
    fn publish(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

impl ControlPlane {
    /// A service over `store`, hashing keys with `salt`.
    pub fn new(
        store: Arc<dyn Store>,
        salt: &[u8],
        settings: ControlSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            salt: salt.into(),
            settings: Arc::new(settings),
            components: None,
            metrics,
            uploads: Arc::default(),
            publisher: None,
        }
    }

    /// The same, compiling uploads into `components` (a serving node).
    pub fn with_components(mut self, components: Arc<CompiledComponents>) -> Self {
        self.components = Some(components);
        self
    }

    /// Publishes every change through `publisher` before answering.
    pub fn with_publisher(mut self, publisher: Arc<dyn Publisher>) -> Self {
        self.publisher = Some(publisher);
        self
    }

    /// Makes a stored change live here, if this control plane serves.
    async fn published<T>(&self, changed: T) -> ControlResult<T> {
        if let Some(publisher) = &self.publisher {
            publisher.publish().await;
        }
        Ok(changed)
    }

    /// The store it writes to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The salt keys are hashed with.
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    // --- tenants ---------------------------------------------------------

    fn reserved(&self) -> Vec<&str> {
        self.settings.reserved.iter().map(String::as_str).collect()
    }

    /// Creates a tenant on `tier`. Its name becomes its default route
    /// prefix (`/<name>/...`) and, with a base domain, its host: neither
    /// may be reserved or granted to another tenant.
    pub async fn create_tenant(&self, name: &str, tier: &str) -> ControlResult<Tenant> {
        check_name("tenant", name)?;
        check_name("tier", tier)?;
        let defaults = Grant::defaults(name, self.settings.base_domain.as_deref());
        if let Grant::Path(prefix) = &defaults[0]
            && let Err(RouteError::Reserved(_)) =
                RoutePattern::parse(&prefix.to_string(), None, &self.reserved())
        {
            return Err(ControlError::Invalid(format!(
                "`{name}` cannot name a tenant: /{name}/ is reserved for the host"
            )));
        }
        if let Some(taken) = self
            .store
            .grants(None)
            .await?
            .into_iter()
            .find(|g| defaults.iter().any(|d| d.overlaps(&g.grant)))
        {
            return Err(ControlError::Conflict {
                code: "conflict",
                message: format!(
                    "a tenant named `{name}` would deploy in {}, which is granted to tenant {}",
                    taken.grant, taken.tenant
                ),
            });
        }
        let tenant = self.store.create_tenant(name, tier).await?;
        self.metrics.tenants_created.inc();
        tracing::info!(tenant = %tenant.name, tier = %tenant.tier, "tenant created");
        self.published(tenant).await
    }

    /// Every tenant.
    pub async fn tenants(&self) -> ControlResult<Vec<Tenant>> {
        Ok(self.store.tenants().await?)
    }

    /// Moves a tenant to another tier.
    pub async fn set_tenant_tier(&self, name: &str, tier: &str) -> ControlResult<Tenant> {
        if !valid_name(name) {
            return Err(ControlError::NotFound("tenant"));
        }
        check_name("tier", tier)?;
        let tenant = self.store.set_tenant_tier(name, tier).await.map_err(|e| match e {
            StoreError::NotFound => ControlError::NotFound("tenant"),
            other => other.into(),
        })?;
        self.published(tenant).await
    }

    // --- keys ------------------------------------------------------------

    /// Issues a key for `tenant` (default: the caller's own) with `scopes`
    /// (default: deploy and read). A tenant's key can only make keys for
    /// its own tenant, with at most its own scopes.
    pub async fn create_key(
        &self,
        actor: Actor<'_>,
        tenant: Option<&str>,
        scopes: Option<Scopes>,
    ) -> ControlResult<IssuedKey> {
        let scopes = scopes.unwrap_or(Scopes::TENANT_DEFAULT);
        if let Actor::Key(principal) = actor
            && !principal.is_admin()
            && !principal.scopes.covers(scopes)
        {
            return Err(ControlError::Forbidden(
                "a key cannot grant scopes it does not have".into(),
            ));
        }
        let name = match (tenant, actor) {
            (Some(name), Actor::Key(principal))
                if name != principal.tenant && !actor.is_admin() =>
            {
                return Err(ControlError::NotFound("tenant"));
            }
            (Some(name), _) => {
                check_name("tenant", name)?;
                name.to_string()
            }
            (None, Actor::Key(principal)) => principal.tenant.clone(),
            (None, Actor::Operator) => return Err(ControlError::Invalid("name the tenant".into())),
        };
        let record = self.store.tenant(&name).await?.ok_or(ControlError::NotFound("tenant"))?;
        let (key, stored) =
            auth::issue_key(self.store.as_ref(), &self.salt, record.id, scopes).await?;
        self.metrics.keys_created.inc();
        Ok(IssuedKey { key, record: stored, tenant: name, scopes })
    }

    /// The caller's tenant's keys; every key for an admin.
    pub async fn keys(&self, actor: Actor<'_>) -> ControlResult<Vec<ApiKeyRecord>> {
        Ok(self.store.keys(tenant_filter(actor)).await?)
    }

    /// Revokes a key (one of the caller's tenant's, unless an admin asks).
    pub async fn revoke_key(&self, actor: Actor<'_>, id: &str) -> ControlResult<()> {
        if plausible_id(id) && self.store.revoke_key(id, tenant_filter(actor)).await? {
            Ok(())
        } else {
            Err(ControlError::NotFound("key"))
        }
    }

    // --- grants ------------------------------------------------------------

    async fn tenant_named(&self, name: &str) -> ControlResult<Tenant> {
        // A name outside the naming rule names no tenant: not asked of the
        // store (PostgreSQL cannot even hold some strings).
        if !valid_name(name) {
            return Err(ControlError::NotFound("tenant"));
        }
        self.store.tenant(name).await?.ok_or(ControlError::NotFound("tenant"))
    }

    /// What a tenant may deploy inside: its defaults (not stored, so not
    /// revocable) and the grants an operator gave it.
    pub async fn grants(&self, tenant: &str) -> ControlResult<(Vec<Grant>, Vec<GrantRecord>)> {
        let tenant = self.tenant_named(tenant).await?;
        let defaults = Grant::defaults(&tenant.name, self.settings.base_domain.as_deref());
        Ok((defaults, self.store.grants(Some(tenant.id)).await?))
    }

    /// Grants a tenant a route prefix or a host; refused when it overlaps
    /// what another tenant holds or deploys in by default.
    pub async fn grant(&self, tenant: &str, grant: &GrantSpec) -> ControlResult<GrantRecord> {
        let tenant = self.tenant_named(tenant).await?;
        let grant = match grant {
            GrantSpec::Route(route) => Grant::path(route, &self.reserved())?,
            GrantSpec::Host(host) => Grant::host(host)?,
        };
        // Another tenant's default host (`<name>.<base>`) is not stored:
        // the store cannot see it.
        if let (Grant::Host(host), Some(base)) = (&grant, &self.settings.base_domain)
            && let Some(owner) = host.strip_suffix(&format!(".{base}"))
            && owner != tenant.name
            && self.store.tenant(owner).await?.is_some()
        {
            return Err(ControlError::Conflict {
                code: "conflict",
                message: format!("host {host} is tenant {owner}'s by default"),
            });
        }
        let record = self.store.add_grant(tenant.id, &grant).await?;
        tracing::info!(tenant = %tenant.name, grant = %record.grant, id = %record.id, "granted");
        self.published(record).await
    }

    /// Revokes one of a tenant's grants; refused while a deployment of the
    /// tenant is inside it and in none of its other grants.
    pub async fn revoke_grant(&self, tenant: &str, id: &str) -> ControlResult<()> {
        let tenant = self.tenant_named(tenant).await?;
        match self.store.revoke_grant(tenant.id, id, self.settings.base_domain.as_deref()).await {
            Ok(true) => {
                tracing::info!(tenant = %tenant.name, id, "grant revoked");
                self.published(()).await
            }
            Ok(false) => Err(ControlError::NotFound("grant")),
            Err(StoreError::Conflict(message)) => {
                Err(ControlError::Conflict { code: "grant_in_use", message })
            }
            Err(other) => Err(other.into()),
        }
    }

    // --- tiers -------------------------------------------------------------

    /// Every tier.
    pub async fn tiers(&self) -> ControlResult<Vec<Tier>> {
        Ok(self.store.tiers().await?)
    }

    /// One tier.
    pub async fn tier(&self, name: &str) -> ControlResult<Tier> {
        self.tiers()
            .await?
            .into_iter()
            .find(|t| t.name == name)
            .ok_or(ControlError::NotFound("tier"))
    }

    /// Creates or changes a tier; returns it and whether it is new.
    pub async fn put_tier(
        &self,
        name: &str,
        patch: &TierPatch,
        base: TierBase,
    ) -> ControlResult<(Tier, bool)> {
        check_name("tier", name)?;
        let current = self.store.tiers().await?.into_iter().find(|t| t.name == name);
        let created = current.is_none();
        let base = match (base, current) {
            (TierBase::Current, Some(current)) => current.limits,
            _ => self.settings.tier_defaults.clone(),
        };
        let limits = patch.apply(&base).map_err(ControlError::Invalid)?;
        limits.check().map_err(ControlError::Invalid)?;
        let tier = Tier { name: name.to_string(), limits };
        self.store.put_tier(&tier).await?;
        self.published((tier, created)).await
    }

    // --- components ----------------------------------------------------------

    /// The limits of a tier.
    pub async fn tier_limits(&self, tier: &str) -> ControlResult<TierLimits> {
        Ok(self.tier(tier).await?.limits)
    }

    /// A place for one of the tenant's uploads on this node, held until
    /// the returned guard drops; `429 too_many_uploads` past the tier's
    /// `max_uploads_in_flight`.
    pub fn start_upload(
        &self,
        tenant_id: TenantId,
        limits: &TierLimits,
    ) -> ControlResult<UploadPlace> {
        let mut uploads = self.uploads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let held = uploads.entry(tenant_id).or_insert(0);
        if *held >= limits.max_uploads_in_flight {
            return Err(ControlError::Limit {
                status: 429,
                code: "too_many_uploads",
                message: format!(
                    "this tenant already has {held} uploads in flight on this node, as many as \
                     its tier allows (max_uploads_in_flight); retry when one has finished"
                ),
            });
        }
        *held += 1;
        Ok(UploadPlace { uploads: self.uploads.clone(), tenant_id })
    }

    /// Refuses an upload of `size` more bytes that would take the tenant
    /// past its tier's stored components (count or bytes): `413`, with a
    /// code naming the cap, before anything is written (and long before a
    /// full disk would refuse it, for everyone).
    ///
    /// Before an upload is read (`new_component` false) only a tenant
    /// already at its bytes cap is refused: the bytes may turn out to be a
    /// component it has, which is answered as before whatever the caps.
    pub async fn check_storage(
        &self,
        tenant_id: TenantId,
        limits: &TierLimits,
        size: u64,
        new_component: bool,
    ) -> ControlResult<()> {
        let stored = self.store.components(tenant_id).await?;
        let bytes: u64 = stored.iter().map(|c| c.size).sum();
        if new_component && stored.len() as u64 >= limits.max_components {
            return Err(ControlError::Limit {
                status: 413,
                code: "component_count_limit",
                message: format!(
                    "this tenant keeps {} components, as many as its tier allows \
                     (max_components); delete components it no longer deploys",
                    stored.len()
                ),
            });
        }
        if bytes.saturating_add(size) > limits.max_component_storage_bytes {
            return Err(ControlError::Limit {
                status: 413,
                code: "component_storage_limit",
                message: format!(
                    "this tenant keeps {bytes} bytes of components; {size} more would pass the \
                     {} its tier allows (max_component_storage_bytes); delete components it no \
                     longer deploys",
                    limits.max_component_storage_bytes
                ),
            });
        }
        Ok(())
    }

    /// Validates, compiles and stores a tenant's upload. The same bytes
    /// again are not compiled again.
    pub async fn upload(
        &self,
        tenant_id: TenantId,
        name: &str,
        bytes: Vec<u8>,
        limits: Option<&TierLimits>,
    ) -> ControlResult<Uploaded> {
        check_component_name(name)?;
        let components = self.components.as_ref().ok_or(ControlError::NoCompiler)?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if let Some(meta) = self.store.component(tenant_id, &digest).await? {
            self.metrics.uploads.with_label_values(&["existing"]).inc();
            return Ok(Uploaded { meta, created: false });
        }
        if let Some(limits) = limits {
            self.check_storage(tenant_id, limits, bytes.len() as u64, true).await?;
        }
        let compiled = match components.compile_upload(tenant_id, &digest, &bytes).await {
            Ok(compiled) => compiled,
            Err(e) => {
                self.metrics.uploads.with_label_values(&["refused"]).inc();
                return Err(e.into());
            }
        };
        let compile_ms = u64::try_from(compiled.compile_time.as_millis()).unwrap_or(u64::MAX);
        let meta = ComponentMeta {
            digest,
            name: name.to_string(),
            size: bytes.len() as u64,
            world: compiled.world,
            compile_ms,
            created_at: now_ms(),
        };
        let (meta, created) =
            self.store.put_component(&NewComponent { tenant_id, meta, bytes }).await?;
        self.metrics.uploads.with_label_values(&["created"]).inc();
        tracing::info!(tenant_id, digest = %meta.digest, compile_ms, "component uploaded");
        Ok(Uploaded { meta, created })
    }

    /// A tenant's components.
    pub async fn components(&self, tenant_id: TenantId) -> ControlResult<Vec<ComponentMeta>> {
        Ok(self.store.components(tenant_id).await?)
    }

    /// Deletes a tenant's component unless a deployment uses it.
    pub async fn delete_component(&self, tenant_id: TenantId, digest: &str) -> ControlResult<()> {
        if !is_digest(digest) {
            return Err(ControlError::NotFound("component"));
        }
        match self.store.delete_component(tenant_id, digest).await? {
            ComponentDeletion::Deleted => Ok(()),
            ComponentDeletion::NotFound => Err(ControlError::NotFound("component")),
            ComponentDeletion::InUse => Err(ControlError::Conflict {
                code: "component_in_use",
                message: "a deployment uses this component (or may roll back to it); delete \
                          the deployment first"
                    .into(),
            }),
        }
    }

    // --- deployments -----------------------------------------------------------

    /// Checks a route as a deployment would have it, without deploying.
    pub fn check_route(&self, route: &str, host: Option<&str>) -> ControlResult<RoutePattern> {
        Ok(RoutePattern::parse(route, host, &self.reserved())?)
    }

    /// Deploys `spec` for a tenant on `tier`: version 1 of a new route, or
    /// version n+1 of one the tenant has.
    pub async fn deploy(
        &self,
        tenant_id: TenantId,
        tier: &str,
        spec: DeploySpec,
    ) -> ControlResult<Deployment> {
        let pattern = self.check_route(&spec.route, spec.host.as_deref())?;
        if !is_digest(&spec.component) {
            return Err(ControlError::Invalid(
                "`component` must be a digest: `sha256:` and 64 lower-case hex digits".into(),
            ));
        }
        check_config(&spec.config, &spec.secrets)?;
        check_outbound_hosts(&spec.allowed_outbound_hosts)?;
        if !(1..=MAX_INSTANCE_REUSE).contains(&spec.max_instance_reuse) {
            return Err(ControlError::Invalid(format!(
                "max_instance_reuse must be 1 (a fresh instance for every request) to \
                 {MAX_INSTANCE_REUSE}"
            )));
        }
        let limits = self.tier(tier).await?.limits;
        let allowed = limits.max_instance_reuse;
        if spec.max_instance_reuse > allowed {
            return Err(ControlError::Invalid(format!(
                "the {tier} tier allows max_instance_reuse up to {allowed}"
            )));
        }
        let concurrency = spec.max_instance_concurrency;
        if !(1..=MAX_INSTANCE_CONCURRENCY).contains(&concurrency) {
            return Err(ControlError::Invalid(format!(
                "max_instance_concurrency must be 1 (one request at a time) to \
                 {MAX_INSTANCE_CONCURRENCY}"
            )));
        }
        if concurrency > limits.max_instance_concurrency {
            return Err(ControlError::Invalid(format!(
                "the {tier} tier allows max_instance_concurrency up to {}",
                limits.max_instance_concurrency
            )));
        }
        if concurrency > 1 {
            let world = self
                .store
                .component(tenant_id, &spec.component)
                .await?
                .map(|c| c.world)
                .unwrap_or_default();
            if !world.starts_with("wasi:http/service@0.3") {
                return Err(ControlError::Invalid(format!(
                    "max_instance_concurrency above 1 needs a WASIp3 component \
                     (wasi:http/service@0.3); this one targets {world}"
                )));
            }
            if concurrency > spec.max_instance_reuse {
                return Err(ControlError::Invalid(format!(
                    "max_instance_concurrency {concurrency} needs max_instance_reuse of at least \
                     {concurrency}: an instance serving that many at once serves that many in all"
                )));
            }
        }
        let rollout = match &spec.rollout {
            Some(rollout) => Some(rollout.check().map_err(ControlError::Invalid)?),
            None => None,
        };
        let route = pattern.to_string();
        let place =
            crate::secrets::Place { tenant: tenant_id, host: pattern.host(), route: &route };
        let secrets = self.settings.secrets.seal_values(place, &spec.secrets);
        let deployment = self
            .store
            .deploy(&NewDeployment {
                tenant_id,
                pattern: pattern.clone(),
                component: spec.component,
                config: spec.config,
                secrets,
                allowed_outbound_hosts: spec.allowed_outbound_hosts,
                max_instance_reuse: spec.max_instance_reuse,
                max_instance_concurrency: spec.max_instance_concurrency,
                base_domain: self.settings.base_domain.clone(),
                keep_versions: limits.max_versions_per_deployment,
                rollout,
                version_pinning: spec.version_pinning,
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict(message) if message.starts_with("a rollout") => {
                    ControlError::Conflict { code: "no_live_version", message }
                }
                other => other.into(),
            })?;
        match &deployment.canary {
            Some(canary) => tracing::info!(tenant_id, deployment = %deployment.id,
                route = %deployment.route, version = canary.version, percent = canary.percent,
                "deployed as a canary"),
            None => tracing::info!(tenant_id, deployment = %deployment.id,
                route = %deployment.route, version = deployment.version, "deployed"),
        }
        self.published(deployment).await
    }

    /// Seals every live deployment's secrets again under the current key
    /// (`wasmwiz admin secrets rotate`); returns how many deployments have
    /// secrets. One that does not open (sealed under a key this process
    /// does not hold) stops the rotation, naming it.
    pub async fn reseal_secrets(&self) -> ControlResult<usize> {
        let mut resealed = 0;
        for deployment in self.store.deployments(None).await? {
            if deployment.secrets.is_empty() {
                continue;
            }
            let place = crate::secrets::Place {
                tenant: deployment.tenant_id,
                host: deployment.host.as_deref(),
                route: &deployment.route,
            };
            let sealed =
                self.settings.secrets.seal_all(place, &deployment.secrets).map_err(|e| {
                    ControlError::Invalid(format!("the secrets of {}: {e}", deployment.id))
                })?;
            self.store.put_secrets(&deployment.id, &sealed).await?;
            resealed += 1;
        }
        tracing::info!(deployments = resealed, "secrets sealed again under the current key");
        Ok(resealed)
    }

    /// A tenant's live deployments.
    pub async fn deployments(&self, tenant_id: TenantId) -> ControlResult<Vec<Deployment>> {
        Ok(self.store.deployments(Some(tenant_id)).await?)
    }

    /// Switches a deployment back to the version that was live before the
    /// current one (repeatable: it walks back through the switches), or to
    /// the version `to`.
    pub async fn rollback(
        &self,
        tenant_id: TenantId,
        id: &str,
        to: Option<i64>,
    ) -> ControlResult<Deployment> {
        if !plausible_id(id) {
            return Err(ControlError::NotFound("deployment"));
        }
        let deployment = self.store.rollback(tenant_id, id, to).await.map_err(|e| match e {
            StoreError::NotFound => ControlError::NotFound("deployment"),
            other => other.into(),
        })?;
        tracing::info!(tenant_id, deployment = %deployment.id, version = deployment.version,
                       "rolled back");
        self.published(deployment).await
    }

    /// Makes a running rollout's canary the live version at once.
    pub async fn promote(&self, tenant_id: TenantId, id: &str) -> ControlResult<Deployment> {
        if !plausible_id(id) {
            return Err(ControlError::NotFound("deployment"));
        }
        let deployment = self.store.promote(tenant_id, id).await.map_err(|e| match e {
            StoreError::NotFound => ControlError::NotFound("deployment"),
            StoreError::Conflict(message) => ControlError::Conflict { code: "no_rollout", message },
            other => other.into(),
        })?;
        tracing::info!(tenant_id, deployment = %deployment.id, version = deployment.version,
                       "canary promoted");
        self.published(deployment).await
    }

    /// Every rollout of a deployment, oldest first.
    pub async fn rollouts(
        &self,
        tenant_id: TenantId,
        id: &str,
    ) -> ControlResult<Vec<RolloutRecord>> {
        if !plausible_id(id) {
            return Err(ControlError::NotFound("deployment"));
        }
        self.store.rollouts(tenant_id, id).await.map_err(|e| match e {
            StoreError::NotFound => ControlError::NotFound("deployment"),
            other => other.into(),
        })
    }

    /// Every version of a deployment and when each was live.
    pub async fn versions(
        &self,
        tenant_id: TenantId,
        id: &str,
    ) -> ControlResult<Vec<VersionRecord>> {
        if !plausible_id(id) {
            return Err(ControlError::NotFound("deployment"));
        }
        self.store.versions(tenant_id, id).await.map_err(|e| match e {
            StoreError::NotFound => ControlError::NotFound("deployment"),
            other => other.into(),
        })
    }

    /// Deletes a deployment; its route answers 404 from then on.
    pub async fn delete_deployment(&self, tenant_id: TenantId, id: &str) -> ControlResult<()> {
        if plausible_id(id) && self.store.delete_deployment(tenant_id, id).await? {
            self.published(()).await
        } else {
            Err(ControlError::NotFound("deployment"))
        }
    }
}

fn tenant_filter(actor: Actor<'_>) -> Option<TenantId> {
    match actor {
        Actor::Key(principal) if !principal.is_admin() => Some(principal.tenant_id),
        _ => None,
    }
}

/// Refuses a component name that is empty, longer than
/// [`MAX_COMPONENT_NAME`] characters or holds a control character (the API
/// checks it before reading an upload's bytes, so a bad name is a 400
/// whatever the size). Characters, not bytes: as the API document's
/// `maxLength` counts.
pub fn check_component_name(name: &str) -> ControlResult<()> {
    let length = name.chars().count();
    if length == 0 || length > MAX_COMPONENT_NAME || name.chars().any(char::is_control) {
        return Err(ControlError::Invalid(format!(
            "`name` must be 1 to {MAX_COMPONENT_NAME} printable characters"
        )));
    }
    Ok(())
}

/// Whether `digest` is how a component is named: `sha256:` and 64
/// lower-case hex digits (any other string names no component).
fn is_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn check_name(what: &str, name: &str) -> ControlResult<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!("a {what} name is {NAME_RULE}")))
    }
}

/// Checks configuration and secrets: counts, names, sizes (in characters, as
/// the API document's `maxLength` counts), no name in both.
pub fn check_config(
    config: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
) -> ControlResult<()> {
    if config.len() + secrets.len() > MAX_CONFIG_ENTRIES {
        return Err(ControlError::Invalid(format!(
            "at most {MAX_CONFIG_ENTRIES} config and secret entries"
        )));
    }
    for (name, value) in config.iter().chain(secrets) {
        let length = name.chars().count();
        if length == 0 || length > MAX_CONFIG_NAME || name.chars().any(char::is_control) {
            return Err(ControlError::Invalid(format!(
                "config names must be 1 to {MAX_CONFIG_NAME} printable characters"
            )));
        }
        if value.chars().count() > MAX_CONFIG_VALUE {
            return Err(ControlError::Invalid(format!(
                "the value of `{name}` is over {MAX_CONFIG_VALUE} characters"
            )));
        }
    }
    if let Some(both) = config.keys().find(|k| secrets.contains_key(*k)) {
        return Err(ControlError::Invalid(format!("`{both}` is both config and a secret")));
    }
    Ok(())
}

/// Checks the outbound host patterns of a deployment.
pub fn check_outbound_hosts(hosts: &[String]) -> ControlResult<()> {
    if hosts.len() > MAX_OUTBOUND_HOSTS {
        return Err(ControlError::Invalid(format!("at most {MAX_OUTBOUND_HOSTS} outbound hosts")));
    }
    for host in hosts {
        OutboundPolicy::check_pattern(host).map_err(ControlError::Invalid)?;
    }
    Ok(())
}

/// One upload's place among its tenant's uploads in flight on this node
/// ([`ControlPlane::start_upload`]); given back when dropped.
#[derive(Debug)]
pub struct UploadPlace {
    uploads: Arc<std::sync::Mutex<HashMap<TenantId, u64>>>,
    tenant_id: TenantId,
}

impl Drop for UploadPlace {
    fn drop(&mut self) {
        let mut uploads = self.uploads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(held) = uploads.get_mut(&self.tenant_id) {
            *held -= 1;
            if *held == 0 {
                uploads.remove(&self.tenant_id);
            }
        }
    }
}
