//! The queries of [`Store`](super::Store), written once for both backends.
//!
//! PostgreSQL and SQLite run the same statements here (`$N` placeholders,
//! `ON CONFLICT`, `RETURNING`, times as BIGINT milliseconds). sqlx code that
//! is generic over the database needs a bound for every type on every
//! method, so instead [`sql_store!`] expands the one implementation for each
//! backend type. A backend provides:
//! - `pool: sqlx::Pool<DB>`;
//! - `const BACKEND: &str` and `static MIGRATOR`;
//! - `async fn begin_write(&self)`: a transaction that serializes with every
//!   other writer (PostgreSQL: an advisory lock; SQLite: `BEGIN IMMEDIATE`);
//! - `async fn bump(tx)`: increments the change counter (PostgreSQL also
//!   notifies listening nodes).

use std::collections::BTreeMap;

use super::StoreError;
use crate::rollout::Guard;
use crate::router::{Grant, RoutePattern};
use crate::tenancy::LIMITS;

/// Decodes a JSON map column.
pub(super) fn json_map(text: &str) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Internal(format!("corrupt JSON map: {e}")))
}

/// Decodes a JSON list column.
pub(super) fn json_list(text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Internal(format!("corrupt JSON list: {e}")))
}

/// Encodes a JSON column.
pub(super) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("maps and lists of strings serialize")
}

/// A grant as stored: a route (`route` set) or a host (`host` set).
pub(super) fn grant_of(route: &str, host: &str) -> Result<Grant, StoreError> {
    let grant = if host.is_empty() {
        RoutePattern::parse_stored(route, None).map(Grant::Path)
    } else {
        Grant::host(host)
    };
    grant.map_err(|e| StoreError::Internal(format!("a stored grant is invalid: {e}")))
}

/// Refuses `grant` for a tenant when it overlaps another tenant's: one of
/// `others` (explicit grants, with their tenants' names) or the default
/// path grant of a tenant named in `other_tenants`.
pub(super) fn check_grant_free(
    grant: &Grant,
    others: &[(String, Grant)],
    other_tenants: &[String],
) -> Result<(), StoreError> {
    if let Some((tenant, taken)) = others.iter().find(|(_, g)| g.overlaps(grant)) {
        return Err(StoreError::Conflict(format!(
            "{grant} overlaps {taken}, which is granted to tenant {tenant}"
        )));
    }
    if let Grant::Path(_) = grant
        && let Some(tenant) =
            other_tenants.iter().find(|t| Grant::defaults(t, None)[0].overlaps(grant))
    {
        return Err(StoreError::Conflict(format!(
            "{grant} overlaps /{tenant}/..., where tenant {tenant} deploys by default"
        )));
    }
    Ok(())
}

/// Whether tenant `name`, holding `grants` (beside its defaults), may
/// deploy `route`; the refusal names what it may use.
pub(super) fn check_granted(
    name: &str,
    grants: &[Grant],
    base_domain: Option<&str>,
    route: &RoutePattern,
) -> Result<(), StoreError> {
    let all: Vec<Grant> =
        Grant::defaults(name, base_domain).into_iter().chain(grants.iter().cloned()).collect();
    if all.iter().any(|g| g.covers(route)) {
        return Ok(());
    }
    Err(StoreError::NotGranted(crate::router::not_granted(name, &all, route)))
}

/// The columns of the `tiers` table: the name, then one per limit of
/// [`LIMITS`], named as the limit (a test checks every limit has its
/// column after the migrations).
fn tier_columns() -> String {
    let mut columns = String::from("name");
    for spec in LIMITS {
        columns.push_str(", ");
        columns.push_str(spec.name);
    }
    columns
}

/// `INSERT INTO tiers ...` of a tier's name and limits and the time, with
/// `on_conflict` (`DO NOTHING`, or an update of every limit).
pub(super) fn tier_insert(replace: bool) -> String {
    let n = LIMITS.len() + 1;
    let values: Vec<String> = (1..=n + 1).map(|i| format!("${i}")).collect();
    let on_conflict = if replace {
        let set: Vec<String> =
            LIMITS.iter().map(|spec| format!("{0} = excluded.{0}", spec.name)).collect();
        format!("DO UPDATE SET {}, updated_at = excluded.updated_at", set.join(", "))
    } else {
        "DO NOTHING".to_string()
    };
    format!(
        "INSERT INTO tiers ({}, created_at, updated_at) VALUES ({}, ${}) ON CONFLICT (name) {on_conflict}",
        tier_columns(),
        values.join(", "),
        n + 1
    )
}

/// `SELECT` of every tier.
pub(super) fn tier_select() -> String {
    format!("SELECT {} FROM tiers ORDER BY name", tier_columns())
}

/// A limit's stored value: a number, or NULL for none.
pub(super) fn limit_column(value: &serde_json::Value) -> Option<i64> {
    value.as_u64().map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

pub(super) const DEPLOYMENT_SELECT: &str = "SELECT d.id, d.tenant_id, t.name AS tenant, \
     t.tier AS tier, d.route, d.host, v.version, v.component, v.config, d.secrets, \
     v.allowed_outbound_hosts, v.max_instance_reuse, v.max_instance_concurrency, v.created_at, \
     d.version_pinning \
     FROM deployments d \
     JOIN tenants t ON t.id = d.tenant_id \
     JOIN deployment_versions v ON v.deployment_id = d.id AND v.version = d.live_version \
     WHERE d.deleted_at IS NULL";

/// The running rollouts' canaries (`AND r.deployment_id = $1` narrows it
/// to one deployment).
pub(super) const CANARY_SELECT: &str = "SELECT r.deployment_id, r.version, r.percent, \
     r.sticky_header, r.min_requests, r.max_error_increase, r.next_at, v.component, v.config, \
     v.allowed_outbound_hosts, v.max_instance_reuse, v.max_instance_concurrency, v.created_at \
     FROM rollouts r \
     JOIN deployment_versions v ON v.deployment_id = r.deployment_id AND v.version = r.version \
     WHERE r.state = 'running'";

/// Every column of a rollout.
pub(super) const ROLLOUT_SELECT: &str = "SELECT deployment_id, version, stable, state, percent, \
     steps, step, interval_ms, next_at, sticky_header, min_requests, max_error_increase, reason, \
     started_at, ended_at FROM rollouts";

/// A count of at least one as stored (`max_instance_reuse`, ...).
pub(super) fn at_least_one(stored: i64) -> u32 {
    u32::try_from(stored).unwrap_or(1).max(1)
}

/// A percent as stored (clamped to 0..=100).
pub(super) fn percent_of(stored: i64) -> u8 {
    stored.clamp(0, 100) as u8
}

/// The steps of a rollout as stored (JSON array of percents).
pub(super) fn steps_of(text: &str) -> Result<Vec<u8>, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Internal(format!("corrupt rollout steps: {e}")))
}

/// The guard of a rollout as stored.
pub(super) fn guard_of(min_requests: i64, max_error_increase: i64) -> Guard {
    Guard {
        min_requests: u32::try_from(min_requests.max(1)).unwrap_or(u32::MAX),
        max_error_increase: percent_of(max_error_increase),
    }
}

pub(super) const GRANT_SELECT: &str = "SELECT g.id, g.tenant_id, t.name AS tenant, g.route, \
     g.host, g.created_at FROM route_grants g JOIN tenants t ON t.id = g.tenant_id";

pub(super) const KEY_SELECT: &str = "SELECT k.id, k.tenant_id, t.name AS tenant, t.tier AS tier, k.prefix, \
     k.scopes, k.key_hash, k.created_at, k.revoked_at, k.last_used_at FROM api_keys k \
     JOIN tenants t ON t.id = k.tenant_id";

/// Expands the [`Store`](super::Store) implementation for one backend.
macro_rules! sql_store {
    ($store:ty, $db:ty) => {
        impl $store {
            fn tier_from_row(row: &<$db as sqlx::Database>::Row) -> Result<Tier, StoreError> {
                use sqlx::Row as _;
                let mut limits = serde_json::Map::new();
                for spec in LIMITS {
                    let value: Option<i64> = row.try_get(spec.name)?;
                    limits.insert(
                        spec.name.to_string(),
                        value.map_or(serde_json::Value::Null, |n| (n.max(0) as u64).into()),
                    );
                }
                Ok(Tier {
                    name: row.try_get("name")?,
                    limits: TierLimits::from_json(limits)
                        .map_err(|e| StoreError::Internal(format!("a stored tier: {e}")))?,
                })
            }

            /// The usage columns of a `usage` or `usage_minutes` row.
            fn counts_from_row(
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<UsageCounts, sqlx::Error> {
                use sqlx::Row as _;
                let n = |column: &str| -> Result<u64, sqlx::Error> {
                    Ok(row.try_get::<i64, _>(column)?.max(0) as u64)
                };
                Ok(UsageCounts {
                    invocations: n("invocations")?,
                    errors_trap: n("errors_trap")?,
                    errors_timeout: n("errors_timeout")?,
                    errors_oom: n("errors_oom")?,
                    errors_other: n("errors_other")?,
                    wall_ms: n("wall_ms")?,
                    kv_reads: n("kv_reads")?,
                    kv_writes: n("kv_writes")?,
                })
            }

            fn tenant_from_row(row: &<$db as sqlx::Database>::Row) -> Result<Tenant, StoreError> {
                use sqlx::Row as _;
                Ok(Tenant {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    tier: row.try_get("tier")?,
                    created_at: row.try_get("created_at")?,
                })
            }

            fn key_from_row(row: &<$db as sqlx::Database>::Row) -> Result<ApiKeyRecord, StoreError> {
                use sqlx::Row as _;
                Ok(ApiKeyRecord {
                    id: row.try_get("id")?,
                    tenant_id: row.try_get("tenant_id")?,
                    tenant: row.try_get("tenant")?,
                    tier: row.try_get("tier")?,
                    prefix: row.try_get("prefix")?,
                    scopes: row.try_get("scopes")?,
                    key_hash: row.try_get("key_hash")?,
                    created_at: row.try_get("created_at")?,
                    revoked_at: row.try_get("revoked_at")?,
                    last_used_at: row.try_get("last_used_at")?,
                })
            }

            fn component_from_row(
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<ComponentMeta, StoreError> {
                use sqlx::Row as _;
                Ok(ComponentMeta {
                    digest: row.try_get("digest")?,
                    name: row.try_get("name")?,
                    size: row.try_get::<i64, _>("size")?.max(0) as u64,
                    world: row.try_get("world")?,
                    compile_ms: row.try_get::<i64, _>("compile_ms")?.max(0) as u64,
                    created_at: row.try_get("created_at")?,
                })
            }

            fn deployment_from_row(
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<Deployment, StoreError> {
                use sqlx::Row as _;
                let host: String = row.try_get("host")?;
                Ok(Deployment {
                    id: row.try_get("id")?,
                    tenant_id: row.try_get("tenant_id")?,
                    tenant: row.try_get("tenant")?,
                    tier: row.try_get("tier")?,
                    route: row.try_get("route")?,
                    host: (!host.is_empty()).then_some(host),
                    version: row.try_get("version")?,
                    component: row.try_get("component")?,
                    config: json_map(&row.try_get::<String, _>("config")?)?,
                    secrets: json_map(&row.try_get::<String, _>("secrets")?)?,
                    allowed_outbound_hosts: json_list(
                        &row.try_get::<String, _>("allowed_outbound_hosts")?,
                    )?,
                    max_instance_reuse: at_least_one(row.try_get("max_instance_reuse")?),
                    max_instance_concurrency: at_least_one(row.try_get("max_instance_concurrency")?),
                    created_at: row.try_get("created_at")?,
                    version_pinning: row.try_get::<i64, _>("version_pinning")? != 0,
                    canary: None,
                })
            }

            /// A running rollout's canary, and its deployment's id.
            fn canary_from_row(
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<(String, Canary), StoreError> {
                use sqlx::Row as _;
                let header: String = row.try_get("sticky_header")?;
                Ok((
                    row.try_get("deployment_id")?,
                    Canary {
                        version: row.try_get("version")?,
                        component: row.try_get("component")?,
                        config: json_map(&row.try_get::<String, _>("config")?)?,
                        allowed_outbound_hosts: json_list(
                            &row.try_get::<String, _>("allowed_outbound_hosts")?,
                        )?,
                        max_instance_reuse: at_least_one(row.try_get("max_instance_reuse")?),
                        max_instance_concurrency: at_least_one(row.try_get("max_instance_concurrency")?),
                        created_at: row.try_get("created_at")?,
                        percent: percent_of(row.try_get("percent")?),
                        sticky_header: (!header.is_empty()).then_some(header),
                        guard: guard_of(
                            row.try_get("min_requests")?,
                            row.try_get("max_error_increase")?,
                        ),
                        next_at: row.try_get("next_at")?,
                    },
                ))
            }

            fn rollout_from_row(
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<RolloutRecord, StoreError> {
                use sqlx::Row as _;
                let header: String = row.try_get("sticky_header")?;
                Ok(RolloutRecord {
                    version: row.try_get("version")?,
                    stable: row.try_get("stable")?,
                    state: row.try_get("state")?,
                    percent: percent_of(row.try_get("percent")?),
                    steps: steps_of(&row.try_get::<String, _>("steps")?)?,
                    step: usize::try_from(row.try_get::<i64, _>("step")?).unwrap_or(0),
                    interval_ms: row.try_get("interval_ms")?,
                    next_at: row.try_get("next_at")?,
                    sticky_header: (!header.is_empty()).then_some(header),
                    guard: guard_of(row.try_get("min_requests")?, row.try_get("max_error_increase")?),
                    reason: row.try_get("reason")?,
                    started_at: row.try_get("started_at")?,
                    ended_at: row.try_get("ended_at")?,
                })
            }

            /// Gives each of `deployments` the canary of its running
            /// rollout, if any.
            fn attach_canaries(
                deployments: &mut [Deployment],
                rows: &[<$db as sqlx::Database>::Row],
            ) -> Result<(), StoreError> {
                if rows.is_empty() {
                    return Ok(());
                }
                let mut canaries: std::collections::HashMap<String, Canary> = rows
                    .iter()
                    .map(Self::canary_from_row)
                    .collect::<Result<_, StoreError>>()?;
                for deployment in deployments {
                    // Read apart from the deployment (outside a transaction)
                    // a canary may have been promoted in between.
                    if let Some(canary) = canaries.remove(&deployment.id)
                        && canary.version != deployment.version
                    {
                        deployment.canary = Some(Box::new(canary));
                    }
                }
                Ok(())
            }

            /// Ends `id`'s running rollout, if any, with `state` and
            /// `reason`; the canary's version, if one ran.
            async fn end_running<'c>(
                tx: &mut sqlx::Transaction<'c, $db>,
                id: &str,
                state: &str,
                reason: &str,
                at: i64,
            ) -> Result<Option<i64>, StoreError> {
                use sqlx::Row as _;
                let row = sqlx::query(
                    "UPDATE rollouts SET state = $1, reason = $2, ended_at = $3, next_at = NULL, \
                     percent = CASE WHEN $1 = 'promoted' THEN 100 ELSE 0 END \
                     WHERE deployment_id = $4 AND state = 'running' RETURNING version",
                )
                .bind(state)
                .bind(reason)
                .bind(at)
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?;
                Ok(match row {
                    Some(row) => Some(row.try_get("version")?),
                    None => None,
                })
            }

            fn grant_from_row(row: &<$db as sqlx::Database>::Row) -> Result<GrantRecord, StoreError> {
                use sqlx::Row as _;
                let route: String = row.try_get("route")?;
                let host: String = row.try_get("host")?;
                Ok(GrantRecord {
                    id: row.try_get("id")?,
                    tenant_id: row.try_get("tenant_id")?,
                    tenant: row.try_get("tenant")?,
                    grant: grant_of(&route, &host)?,
                    created_at: row.try_get("created_at")?,
                })
            }

            async fn grants_in<'c>(
                tx: &mut sqlx::Transaction<'c, $db>,
            ) -> Result<Vec<GrantRecord>, StoreError> {
                let query = format!("{GRANT_SELECT} ORDER BY g.created_at, g.id");
                let rows = sqlx::query(sqlx::AssertSqlSafe(query)).fetch_all(&mut **tx).await?;
                rows.iter().map(Self::grant_from_row).collect()
            }

            /// Records a switch of `id`'s live version to `version`.
            async fn switch_to<'c>(
                tx: &mut sqlx::Transaction<'c, $db>,
                id: &str,
                version: i64,
                parent: Option<i64>,
                reason: &str,
                at: i64,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO deployment_switches (deployment_id, seq, version, parent, reason, at) \
                     SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5 \
                     FROM deployment_switches WHERE deployment_id = $1",
                )
                .bind(id)
                .bind(version)
                .bind(parent)
                .bind(reason)
                .bind(at)
                .execute(&mut **tx)
                .await?;
                sqlx::query("UPDATE deployments SET live_version = $1, updated_at = $2 WHERE id = $3")
                    .bind(version)
                    .bind(at)
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            /// The current switch of `id`: its sequence number, version and
            /// parent.
            async fn current_switch<'c>(
                tx: &mut sqlx::Transaction<'c, $db>,
                id: &str,
            ) -> Result<Option<(i64, i64, Option<i64>)>, StoreError> {
                use sqlx::Row as _;
                let row = sqlx::query(
                    "SELECT seq, version, parent FROM deployment_switches WHERE deployment_id = $1 \
                     ORDER BY seq DESC LIMIT 1",
                )
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?;
                Ok(match row {
                    Some(r) => Some((r.try_get("seq")?, r.try_get("version")?, r.try_get("parent")?)),
                    None => None,
                })
            }

            async fn deployment_in<'c>(
                tx: &mut sqlx::Transaction<'c, $db>,
                id: &str,
            ) -> Result<Deployment, StoreError> {
                let query = format!("{DEPLOYMENT_SELECT} AND d.id = $1");
                let row = sqlx::query(sqlx::AssertSqlSafe(query))
                    .bind(id)
                    .fetch_one(&mut **tx)
                    .await?;
                let mut deployment = [Self::deployment_from_row(&row)?];
                let query = format!("{CANARY_SELECT} AND r.deployment_id = $1");
                let canaries = sqlx::query(sqlx::AssertSqlSafe(query))
                    .bind(id)
                    .fetch_all(&mut **tx)
                    .await?;
                Self::attach_canaries(&mut deployment, &canaries)?;
                let [deployment] = deployment;
                Ok(deployment)
            }

            async fn tier_exists<'c>(
                tx: &mut sqlx::Transaction<'c, $db>,
                tier: &str,
            ) -> Result<(), StoreError> {
                let found = sqlx::query("SELECT 1 FROM tiers WHERE name = $1")
                    .bind(tier)
                    .fetch_optional(&mut **tx)
                    .await?;
                match found {
                    Some(_) => Ok(()),
                    None => Err(StoreError::Invalid(format!("there is no tier named `{tier}`"))),
                }
            }
        }

        #[async_trait::async_trait]
        impl Store for $store {
            fn backend(&self) -> &'static str {
                Self::BACKEND
            }

            fn location(&self) -> String {
                self.place()
            }

            async fn migrate(&self) -> StoreResult<()> {
                MIGRATOR.run(&self.pool).await?;
                Ok(())
            }

            async fn ping(&self) -> StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            fn connections_active(&self) -> u32 {
                let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
                self.pool.size().saturating_sub(idle)
            }

            async fn seed_tiers(&self, tiers: &[Tier]) -> StoreResult<()> {
                let mut tx = self.begin_write().await?;
                let now = now_ms();
                let mut inserted = 0;
                for tier in tiers {
                    let query = tier_insert(false);
                    inserted += bind_tier(sqlx::query(sqlx::AssertSqlSafe(query)), tier)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                if inserted > 0 {
                    Self::bump(&mut tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn put_tier(&self, tier: &Tier) -> StoreResult<()> {
                let mut tx = self.begin_write().await?;
                let query = tier_insert(true);
                bind_tier(sqlx::query(sqlx::AssertSqlSafe(query)), tier)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                Self::bump(&mut tx).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn tiers(&self) -> StoreResult<Vec<Tier>> {
                let query = tier_select();
                let rows = sqlx::query(sqlx::AssertSqlSafe(query)).fetch_all(&self.pool).await?;
                rows.iter().map(Self::tier_from_row).collect()
            }

            async fn create_tenant(&self, name: &str, tier: &str) -> StoreResult<Tenant> {
                let mut tx = self.begin_write().await?;
                Self::tier_exists(&mut tx, tier).await?;
                let row = sqlx::query(
                    "INSERT INTO tenants (name, tier, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO NOTHING RETURNING id, name, tier, created_at",
                )
                .bind(name)
                .bind(tier)
                .bind(now_ms())
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    return Err(StoreError::Conflict(format!("a tenant named `{name}` exists")));
                };
                let tenant = Self::tenant_from_row(&row)?;
                Self::bump(&mut tx).await?;
                tx.commit().await?;
                Ok(tenant)
            }

            async fn set_tenant_tier(&self, name: &str, tier: &str) -> StoreResult<Tenant> {
                let mut tx = self.begin_write().await?;
                Self::tier_exists(&mut tx, tier).await?;
                let row = sqlx::query(
                    "UPDATE tenants SET tier = $1 WHERE name = $2 RETURNING id, name, tier, created_at",
                )
                .bind(tier)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
                let tenant = Self::tenant_from_row(&row)?;
                Self::bump(&mut tx).await?;
                tx.commit().await?;
                Ok(tenant)
            }

            async fn tenant(&self, name: &str) -> StoreResult<Option<Tenant>> {
                let row = sqlx::query("SELECT id, name, tier, created_at FROM tenants WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(Self::tenant_from_row).transpose()
            }

            async fn tenant_by_id(&self, id: TenantId) -> StoreResult<Option<Tenant>> {
                let row = sqlx::query("SELECT id, name, tier, created_at FROM tenants WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(Self::tenant_from_row).transpose()
            }

            async fn tenants(&self) -> StoreResult<Vec<Tenant>> {
                let rows = sqlx::query("SELECT id, name, tier, created_at FROM tenants ORDER BY name")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(Self::tenant_from_row).collect()
            }

            async fn grants(&self, tenant_id: Option<TenantId>) -> StoreResult<Vec<GrantRecord>> {
                let rows = match tenant_id {
                    Some(id) => {
                        let query =
                            format!("{GRANT_SELECT} WHERE g.tenant_id = $1 ORDER BY g.created_at, g.id");
                        sqlx::query(sqlx::AssertSqlSafe(query)).bind(id).fetch_all(&self.pool).await?
                    }
                    None => {
                        let query = format!("{GRANT_SELECT} ORDER BY g.created_at, g.id");
                        sqlx::query(sqlx::AssertSqlSafe(query)).fetch_all(&self.pool).await?
                    }
                };
                rows.iter().map(Self::grant_from_row).collect()
            }

            async fn add_grant(&self, tenant_id: TenantId, grant: &Grant) -> StoreResult<GrantRecord> {
                use sqlx::Row as _;
                let mut tx = self.begin_write().await?;
                let all = Self::grants_in(&mut tx).await?;
                if let Some(own) = all.iter().find(|g| g.tenant_id == tenant_id && g.grant == *grant) {
                    return Err(StoreError::Conflict(format!(
                        "{grant} is already granted to tenant {} ({})",
                        own.tenant, own.id
                    )));
                }
                let others: Vec<(String, Grant)> = all
                    .into_iter()
                    .filter(|g| g.tenant_id != tenant_id)
                    .map(|g| (g.tenant, g.grant))
                    .collect();
                let other_tenants: Vec<String> = sqlx::query("SELECT name FROM tenants WHERE id <> $1")
                    .bind(tenant_id)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| r.try_get("name"))
                    .collect::<Result<_, sqlx::Error>>()?;
                check_grant_free(grant, &others, &other_tenants)?;
                let (route, host) = match grant {
                    Grant::Path(pattern) => (pattern.to_string(), String::new()),
                    Grant::Host(host) => (String::new(), host.clone()),
                };
                let id = new_id("grt_");
                sqlx::query(
                    "INSERT INTO route_grants (id, tenant_id, route, host, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&id)
                .bind(tenant_id)
                .bind(&route)
                .bind(&host)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
                let query = format!("{GRANT_SELECT} WHERE g.id = $1");
                let row = sqlx::query(sqlx::AssertSqlSafe(query)).bind(&id).fetch_one(&mut *tx).await?;
                let record = Self::grant_from_row(&row)?;
                // A host grant changes what answers on that host.
                Self::bump(&mut tx).await?;
                tx.commit().await?;
                Ok(record)
            }

            async fn revoke_grant(
                &self,
                tenant_id: TenantId,
                id: &str,
                base_domain: Option<&str>,
            ) -> StoreResult<bool> {
                use sqlx::Row as _;
                let mut tx = self.begin_write().await?;
                let own: Vec<GrantRecord> = Self::grants_in(&mut tx)
                    .await?
                    .into_iter()
                    .filter(|g| g.tenant_id == tenant_id)
                    .collect();
                let Some(revoked) = own.iter().find(|g| g.id == id) else {
                    return Ok(false);
                };
                let rest: Vec<Grant> =
                    own.iter().filter(|g| g.id != id).map(|g| g.grant.clone()).collect();
                let routes = sqlx::query(
                    "SELECT route, host FROM deployments WHERE tenant_id = $1 AND deleted_at IS NULL",
                )
                .bind(tenant_id)
                .fetch_all(&mut *tx)
                .await?;
                for row in routes {
                    let route: String = row.try_get("route")?;
                    let host: String = row.try_get("host")?;
                    let Ok(pattern) =
                        RoutePattern::parse_stored(&route, (!host.is_empty()).then_some(host.as_str()))
                    else {
                        continue;
                    };
                    if revoked.grant.covers(&pattern)
                        && check_granted(&revoked.tenant, &rest, base_domain, &pattern).is_err()
                    {
                        return Err(StoreError::Conflict(format!(
                            "tenant {} has a deployment on {pattern} inside {}; delete it first",
                            revoked.tenant, revoked.grant
                        )));
                    }
                }
                sqlx::query("DELETE FROM route_grants WHERE id = $1").bind(id).execute(&mut *tx).await?;
                Self::bump(&mut tx).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn create_key(&self, key: &NewApiKey) -> StoreResult<ApiKeyRecord> {
                sqlx::query(
                    "INSERT INTO api_keys (id, tenant_id, prefix, key_hash, scopes, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&key.id)
                .bind(key.tenant_id)
                .bind(&key.prefix)
                .bind(&key.hash)
                .bind(&key.scopes)
                .bind(now_ms())
                .execute(&self.pool)
                .await?;
                let query = format!("{KEY_SELECT} WHERE k.id = $1");
                let row = sqlx::query(sqlx::AssertSqlSafe(query))
                    .bind(&key.id)
                    .fetch_one(&self.pool)
                    .await?;
                Self::key_from_row(&row)
            }

            async fn key_by_hash(&self, hash: &[u8]) -> StoreResult<Option<ApiKeyRecord>> {
                let query = format!("{KEY_SELECT} WHERE k.key_hash = $1");
                let row = sqlx::query(sqlx::AssertSqlSafe(query))
                    .bind(hash)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(Self::key_from_row).transpose()
            }

            async fn keys(&self, tenant_id: Option<TenantId>) -> StoreResult<Vec<ApiKeyRecord>> {
                let rows = match tenant_id {
                    Some(id) => {
                        let query = format!("{KEY_SELECT} WHERE k.tenant_id = $1 ORDER BY k.created_at, k.id");
                        sqlx::query(sqlx::AssertSqlSafe(query)).bind(id).fetch_all(&self.pool).await?
                    }
                    None => {
                        let query = format!("{KEY_SELECT} ORDER BY k.created_at, k.id");
                        sqlx::query(sqlx::AssertSqlSafe(query)).fetch_all(&self.pool).await?
                    }
                };
                rows.iter().map(Self::key_from_row).collect()
            }

            async fn revoke_key(&self, id: &str, tenant_id: Option<TenantId>) -> StoreResult<bool> {
                let mut tx = self.begin_write().await?;
                let updated = match tenant_id {
                    Some(tenant) => sqlx::query(
                        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) \
                         WHERE id = $2 AND tenant_id = $3",
                    )
                    .bind(now_ms())
                    .bind(id)
                    .bind(tenant)
                    .execute(&mut *tx)
                    .await?,
                    None => sqlx::query(
                        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2",
                    )
                    .bind(now_ms())
                    .bind(id)
                    .execute(&mut *tx)
                    .await?,
                };
                if updated.rows_affected() == 0 {
                    return Ok(false);
                }
                Self::bump(&mut tx).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn put_component(
                &self,
                component: &NewComponent,
            ) -> StoreResult<(ComponentMeta, bool)> {
                let meta = &component.meta;
                let inserted = sqlx::query(
                    "INSERT INTO components (tenant_id, digest, name, size, world, compile_ms, bytes, \
                     created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (tenant_id, digest) DO NOTHING",
                )
                .bind(component.tenant_id)
                .bind(&meta.digest)
                .bind(&meta.name)
                .bind(meta.size as i64)
                .bind(&meta.world)
                .bind(meta.compile_ms as i64)
                .bind(&component.bytes)
                .bind(meta.created_at)
                .execute(&self.pool)
                .await?
                .rows_affected();
                let stored = self
                    .component(component.tenant_id, &meta.digest)
                    .await?
                    .ok_or_else(|| StoreError::Internal("component vanished after insert".into()))?;
                Ok((stored, inserted == 1))
            }

            async fn component(
                &self,
                tenant_id: TenantId,
                digest: &str,
            ) -> StoreResult<Option<ComponentMeta>> {
                let row = sqlx::query(
                    "SELECT digest, name, size, world, compile_ms, created_at FROM components \
                     WHERE tenant_id = $1 AND digest = $2",
                )
                .bind(tenant_id)
                .bind(digest)
                .fetch_optional(&self.pool)
                .await?;
                row.as_ref().map(Self::component_from_row).transpose()
            }

            async fn component_bytes(&self, digest: &str) -> StoreResult<Option<Vec<u8>>> {
                use sqlx::Row as _;
                let row = sqlx::query("SELECT bytes FROM components WHERE digest = $1 LIMIT 1")
                    .bind(digest)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(|r| r.try_get("bytes")).transpose()?)
            }

            async fn components(&self, tenant_id: TenantId) -> StoreResult<Vec<ComponentMeta>> {
                let rows = sqlx::query(
                    "SELECT digest, name, size, world, compile_ms, created_at FROM components \
                     WHERE tenant_id = $1 ORDER BY created_at, digest",
                )
                .bind(tenant_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::component_from_row).collect()
            }

            async fn delete_component(
                &self,
                tenant_id: TenantId,
                digest: &str,
            ) -> StoreResult<ComponentDeletion> {
                let mut tx = self.begin_write().await?;
                let used = sqlx::query(
                    "SELECT 1 FROM deployment_versions v JOIN deployments d ON d.id = v.deployment_id \
                     WHERE d.tenant_id = $1 AND v.component = $2 AND d.deleted_at IS NULL LIMIT 1",
                )
                .bind(tenant_id)
                .bind(digest)
                .fetch_optional(&mut *tx)
                .await?;
                if used.is_some() {
                    return Ok(ComponentDeletion::InUse);
                }
                let deleted = sqlx::query("DELETE FROM components WHERE tenant_id = $1 AND digest = $2")
                    .bind(tenant_id)
                    .bind(digest)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok(if deleted == 0 { ComponentDeletion::NotFound } else { ComponentDeletion::Deleted })
            }

            async fn deploy(&self, new: &NewDeployment) -> StoreResult<Deployment> {
                use sqlx::Row as _;
                let route = new.pattern.to_string();
                let host = new.pattern.host().unwrap_or_default().to_string();
                let now = now_ms();
                let mut tx = self.begin_write().await?;
                let component = sqlx::query("SELECT 1 FROM components WHERE tenant_id = $1 AND digest = $2")
                    .bind(new.tenant_id)
                    .bind(&new.component)
                    .fetch_optional(&mut *tx)
                    .await?;
                if component.is_none() {
                    return Err(StoreError::Invalid(format!(
                        "there is no component {} (upload it first)",
                        new.component
                    )));
                }
                let existing = sqlx::query(
                    "SELECT id FROM deployments WHERE host = $1 AND route = $2 AND tenant_id = $3 \
                     AND deleted_at IS NULL",
                )
                .bind(&host)
                .bind(&route)
                .bind(new.tenant_id)
                .fetch_optional(&mut *tx)
                .await?;
                // A route the tenant holds may always get a new version (it
                // may predate grants); a new one must be inside its grants.
                if existing.is_none() {
                    let name: String = sqlx::query("SELECT name FROM tenants WHERE id = $1")
                        .bind(new.tenant_id)
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get("name")?;
                    let grants: Vec<Grant> = Self::grants_in(&mut tx)
                        .await?
                        .into_iter()
                        .filter(|g| g.tenant_id == new.tenant_id)
                        .map(|g| g.grant)
                        .collect();
                    check_granted(&name, &grants, new.base_domain.as_deref(), &new.pattern)?;
                }
                if new.rollout.is_some() && existing.is_none() {
                    return Err(StoreError::Conflict(format!(
                        "a rollout splits a route's requests between its live version and the new \
                         one, and {route} has no live version yet: deploy it without `rollout` first"
                    )));
                }
                let taken = sqlx::query(
                    "SELECT 1 FROM deployments WHERE deleted_at IS NULL AND tenant_id <> $1 \
                     AND host = $2 AND route = $3",
                )
                .bind(new.tenant_id)
                .bind(&host)
                .bind(&route)
                .fetch_optional(&mut *tx)
                .await?;
                if taken.is_some() {
                    return Err(StoreError::Conflict(format!(
                        "the route {} belongs to another tenant",
                        route
                    )));
                }

                let (id, version) = match existing {
                    Some(row) => {
                        let id: String = row.try_get("id")?;
                        let last: i64 = sqlx::query(
                            "SELECT MAX(version) AS v FROM deployment_versions WHERE deployment_id = $1",
                        )
                        .bind(&id)
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get::<Option<i64>, _>("v")?
                        .unwrap_or(0);
                        (id, last + 1)
                    }
                    None => {
                        let id = new_id("dep_");
                        sqlx::query(
                            "INSERT INTO deployments (id, tenant_id, route, host, live_version, \
                             created_at, updated_at) VALUES ($1, $2, $3, $4, 1, $5, $5)",
                        )
                        .bind(&id)
                        .bind(new.tenant_id)
                        .bind(&route)
                        .bind(&host)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                        (id, 1)
                    }
                };
                sqlx::query(
                    "INSERT INTO deployment_versions (deployment_id, version, component, config, \
                     secrets, allowed_outbound_hosts, max_instance_reuse, max_instance_concurrency, \
                     created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&id)
                .bind(version)
                .bind(&new.component)
                .bind(to_json(&new.config))
                // Secrets are the deployment's, not the version's: a
                // rollback keeps the current ones.
                .bind("{}")
                .bind(to_json(&new.allowed_outbound_hosts))
                .bind(i64::from(new.max_instance_reuse.max(1)))
                .bind(i64::from(new.max_instance_concurrency.max(1)))
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let live: i64 = sqlx::query(
                    "UPDATE deployments SET secrets = $1, version_pinning = $2 WHERE id = $3 \
                     RETURNING live_version",
                )
                .bind(to_json(&new.secrets))
                .bind(i64::from(new.version_pinning))
                .bind(&id)
                .fetch_one(&mut *tx)
                .await?
                .try_get("live_version")?;
                // The newest versions are kept, the new one among them, and
                // the live one (the stable side of a rollout) whatever its
                // age; older ones go, and their components may be deleted.
                let keep = i64::try_from(new.keep_versions.max(1)).unwrap_or(i64::MAX);
                sqlx::query(
                    "DELETE FROM deployment_versions WHERE deployment_id = $1 AND version <= $2 \
                     AND version <> $3",
                )
                .bind(&id)
                .bind(version.saturating_sub(keep))
                .bind(live)
                .execute(&mut *tx)
                .await?;
                // A rollout under way ends: the new version replaces its
                // canary (as the canary of a new rollout, or live).
                let replaced = format!("replaced by version {version}");
                Self::end_running(&mut tx, &id, "replaced", &replaced, now).await?;
                match &new.rollout {
                    None => {
                        let current =
                            Self::current_switch(&mut tx, &id).await?.map(|(seq, _, _)| seq);
                        Self::switch_to(&mut tx, &id, version, current, "deploy", now).await?;
                    }
                    Some(plan) => {
                        let next_at = (plan.steps.len() > 1).then(|| now + plan.interval_ms);
                        sqlx::query(
                            "INSERT INTO rollouts (deployment_id, version, stable, state, percent, \
                             steps, step, interval_ms, next_at, sticky_header, min_requests, \
                             max_error_increase, reason, started_at) \
                             VALUES ($1, $2, $3, 'running', $4, $5, 0, $6, $7, $8, $9, $10, '', $11)",
                        )
                        .bind(&id)
                        .bind(version)
                        .bind(live)
                        .bind(i64::from(plan.steps[0]))
                        .bind(to_json(&plan.steps))
                        .bind(plan.interval_ms)
                        .bind(next_at)
                        .bind(plan.sticky_header.clone().unwrap_or_default())
                        .bind(i64::from(plan.guard.min_requests))
                        .bind(i64::from(plan.guard.max_error_increase))
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query("UPDATE deployments SET updated_at = $1 WHERE id = $2")
                            .bind(now)
                            .bind(&id)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                Self::bump(&mut tx).await?;
                let deployment = Self::deployment_in(&mut tx, &id).await?;
                tx.commit().await?;
                Ok(deployment)
            }

            async fn rollback(
                &self,
                tenant_id: TenantId,
                id: &str,
                to: Option<i64>,
            ) -> StoreResult<Deployment> {
                use sqlx::Row as _;
                let mut tx = self.begin_write().await?;
                let live: i64 = sqlx::query(
                    "SELECT live_version FROM deployments WHERE id = $1 AND tenant_id = $2 \
                     AND deleted_at IS NULL",
                )
                .bind(id)
                .bind(tenant_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?
                .try_get("live_version")?;
                // A rollout under way ends first: its canary gets no more
                // requests, and the live version stays live unless `to`
                // names another.
                let now = now_ms();
                let ended =
                    Self::end_running(&mut tx, id, "rolled_back", "rolled back by the tenant", now)
                        .await?;
                if ended.is_some() && to.is_none_or(|to| to == live) {
                    Self::bump(&mut tx).await?;
                    let deployment = Self::deployment_in(&mut tx, id).await?;
                    tx.commit().await?;
                    return Ok(deployment);
                }
                let current = Self::current_switch(&mut tx, id).await?;
                let (version, parent, reason) = match to {
                    None => {
                        let Some(parent) = current.and_then(|(_, _, parent)| parent) else {
                            return Err(StoreError::Conflict(format!(
                                "version {live} was the first to be live: there is nothing to roll \
                                 back to (rollback --to VERSION picks any version)"
                            )));
                        };
                        let row = sqlx::query(
                            "SELECT version, parent FROM deployment_switches \
                             WHERE deployment_id = $1 AND seq = $2",
                        )
                        .bind(id)
                        .bind(parent)
                        .fetch_one(&mut *tx)
                        .await?;
                        let version: i64 = row.try_get("version")?;
                        let kept = sqlx::query(
                            "SELECT 1 FROM deployment_versions WHERE deployment_id = $1 AND version = $2",
                        )
                        .bind(id)
                        .bind(version)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if kept.is_none() {
                            return Err(StoreError::Conflict(format!(
                                "version {version}, live before the current one, was pruned (the \
                                 tier keeps the newest max_versions_per_deployment versions); \
                                 roll back to a kept one (rollback --to VERSION)"
                            )));
                        }
                        (version, row.try_get("parent")?, "rollback")
                    }
                    Some(version) => {
                        let exists = sqlx::query(
                            "SELECT 1 FROM deployment_versions WHERE deployment_id = $1 AND version = $2",
                        )
                        .bind(id)
                        .bind(version)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if exists.is_none() {
                            return Err(StoreError::Invalid(format!(
                                "the deployment has no version {version}"
                            )));
                        }
                        if version == live {
                            return Err(StoreError::Conflict(format!("version {version} is live already")));
                        }
                        (version, current.map(|(seq, _, _)| seq), "rollback_to")
                    }
                };
                Self::switch_to(&mut tx, id, version, parent, reason, now).await?;
                Self::bump(&mut tx).await?;
                let deployment = Self::deployment_in(&mut tx, id).await?;
                tx.commit().await?;
                Ok(deployment)
            }

            async fn rollouts(&self, tenant_id: TenantId, id: &str) -> StoreResult<Vec<RolloutRecord>> {
                let owned = sqlx::query(
                    "SELECT 1 FROM deployments WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL",
                )
                .bind(id)
                .bind(tenant_id)
                .fetch_optional(&self.pool)
                .await?;
                if owned.is_none() {
                    return Err(StoreError::NotFound);
                }
                let query = format!("{ROLLOUT_SELECT} WHERE deployment_id = $1 ORDER BY started_at, version");
                let rows = sqlx::query(sqlx::AssertSqlSafe(query)).bind(id).fetch_all(&self.pool).await?;
                rows.iter().map(Self::rollout_from_row).collect()
            }

            async fn promote(&self, tenant_id: TenantId, id: &str) -> StoreResult<Deployment> {
                let mut tx = self.begin_write().await?;
                let owned = sqlx::query(
                    "SELECT 1 FROM deployments WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL",
                )
                .bind(id)
                .bind(tenant_id)
                .fetch_optional(&mut *tx)
                .await?;
                if owned.is_none() {
                    return Err(StoreError::NotFound);
                }
                let now = now_ms();
                let Some(version) =
                    Self::end_running(&mut tx, id, "promoted", "promoted by the tenant", now).await?
                else {
                    return Err(StoreError::Conflict(
                        "no rollout is running for this deployment: there is nothing to promote"
                            .into(),
                    ));
                };
                let current = Self::current_switch(&mut tx, id).await?.map(|(seq, _, _)| seq);
                Self::switch_to(&mut tx, id, version, current, "promote", now).await?;
                Self::bump(&mut tx).await?;
                let deployment = Self::deployment_in(&mut tx, id).await?;
                tx.commit().await?;
                Ok(deployment)
            }

            async fn end_rollout(
                &self,
                id: &str,
                version: i64,
                state: &str,
                reason: &str,
            ) -> StoreResult<bool> {
                let mut tx = self.begin_write().await?;
                let ended = sqlx::query(
                    "UPDATE rollouts SET state = $1, reason = $2, ended_at = $3, next_at = NULL, \
                     percent = 0 WHERE deployment_id = $4 AND version = $5 AND state = 'running'",
                )
                .bind(state)
                .bind(reason)
                .bind(now_ms())
                .bind(id)
                .bind(version)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if ended == 0 {
                    return Ok(false);
                }
                Self::bump(&mut tx).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn advance_rollouts(&self, now: i64) -> StoreResult<Vec<RolloutStep>> {
                use sqlx::Row as _;
                let mut tx = self.begin_write().await?;
                let query = "SELECT r.deployment_id, d.tenant_id, r.version, r.steps, r.step, \
                     r.interval_ms FROM rollouts r JOIN deployments d ON d.id = r.deployment_id \
                     WHERE r.state = 'running' AND r.next_at IS NOT NULL AND r.next_at <= $1 \
                     AND d.deleted_at IS NULL";
                let due = sqlx::query(query).bind(now).fetch_all(&mut *tx).await?;
                let mut taken = Vec::with_capacity(due.len());
                let mut changed = false;
                for row in &due {
                    let id: String = row.try_get("deployment_id")?;
                    let version: i64 = row.try_get("version")?;
                    let steps = steps_of(&row.try_get::<String, _>("steps")?)?;
                    let step = usize::try_from(row.try_get::<i64, _>("step")?).unwrap_or(0);
                    let interval_ms: i64 = row.try_get("interval_ms")?;
                    let Some((step, percent)) = crate::rollout::next_step(&steps, step) else {
                        // Nothing after the last step: nothing is due.
                        sqlx::query("UPDATE rollouts SET next_at = NULL WHERE deployment_id = $1 \
                                     AND version = $2")
                            .bind(&id)
                            .bind(version)
                            .execute(&mut *tx)
                            .await?;
                        changed = true;
                        continue;
                    };
                    changed = true;
                    if percent >= 100 {
                        let reason = format!("promoted at the last of its steps ({steps:?})");
                        Self::end_running(&mut tx, &id, "promoted", &reason, now).await?;
                        let current = Self::current_switch(&mut tx, &id).await?.map(|(seq, _, _)| seq);
                        Self::switch_to(&mut tx, &id, version, current, "promote", now).await?;
                    } else {
                        let next_at = (step + 1 < steps.len()).then(|| now + interval_ms);
                        sqlx::query(
                            "UPDATE rollouts SET percent = $1, step = $2, next_at = $3 \
                             WHERE deployment_id = $4 AND version = $5",
                        )
                        .bind(i64::from(percent))
                        .bind(step as i64)
                        .bind(next_at)
                        .bind(&id)
                        .bind(version)
                        .execute(&mut *tx)
                        .await?;
                    }
                    taken.push(RolloutStep {
                        deployment_id: id,
                        tenant_id: row.try_get("tenant_id")?,
                        version,
                        percent,
                    });
                }
                if changed {
                    Self::bump(&mut tx).await?;
                    tx.commit().await?;
                }
                Ok(taken)
            }

            async fn versions(&self, tenant_id: TenantId, id: &str) -> StoreResult<Vec<VersionRecord>> {
                use sqlx::Row as _;
                let live: i64 = sqlx::query(
                    "SELECT live_version FROM deployments WHERE id = $1 AND tenant_id = $2 \
                     AND deleted_at IS NULL",
                )
                .bind(id)
                .bind(tenant_id)
                .fetch_optional(&self.pool)
                .await?
                .ok_or(StoreError::NotFound)?
                .try_get("live_version")?;
                let mut versions: Vec<VersionRecord> = sqlx::query(
                    "SELECT version, component, created_at FROM deployment_versions \
                     WHERE deployment_id = $1 ORDER BY version",
                )
                .bind(id)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| {
                    let version: i64 = r.try_get("version")?;
                    Ok(VersionRecord {
                        version,
                        component: r.try_get("component")?,
                        created_at: r.try_get("created_at")?,
                        live: version == live,
                        periods: Vec::new(),
                    })
                })
                .collect::<Result<_, sqlx::Error>>()?;
                let switches: Vec<(i64, String, i64)> = sqlx::query(
                    "SELECT version, reason, at FROM deployment_switches WHERE deployment_id = $1 \
                     ORDER BY seq",
                )
                .bind(id)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("version")?, r.try_get("reason")?, r.try_get("at")?)))
                .collect::<Result<_, sqlx::Error>>()?;
                for (i, (version, reason, from)) in switches.iter().enumerate() {
                    let until = switches.get(i + 1).map(|(_, _, at)| *at);
                    if let Some(v) = versions.iter_mut().find(|v| v.version == *version) {
                        v.periods.push(LivePeriod { from: *from, until, reason: reason.clone() });
                    }
                }
                Ok(versions)
            }

            async fn put_secrets(
                &self,
                id: &str,
                secrets: &std::collections::BTreeMap<String, String>,
            ) -> StoreResult<()> {
                sqlx::query("UPDATE deployments SET secrets = $1 WHERE id = $2")
                    .bind(to_json(secrets))
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn delete_deployment(&self, tenant_id: TenantId, id: &str) -> StoreResult<bool> {
                let mut tx = self.begin_write().await?;
                let deleted = sqlx::query(
                    "UPDATE deployments SET deleted_at = $1, secrets = '{}' WHERE id = $2 \
                     AND tenant_id = $3 AND deleted_at IS NULL",
                )
                .bind(now_ms())
                .bind(id)
                .bind(tenant_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if deleted == 0 {
                    return Ok(false);
                }
                Self::bump(&mut tx).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn deployments(&self, tenant_id: Option<TenantId>) -> StoreResult<Vec<Deployment>> {
                let rows = match tenant_id {
                    Some(id) => {
                        let query =
                            format!("{DEPLOYMENT_SELECT} AND d.tenant_id = $1 ORDER BY d.created_at, d.id");
                        sqlx::query(sqlx::AssertSqlSafe(query)).bind(id).fetch_all(&self.pool).await?
                    }
                    None => {
                        let query = format!("{DEPLOYMENT_SELECT} ORDER BY d.created_at, d.id");
                        sqlx::query(sqlx::AssertSqlSafe(query)).fetch_all(&self.pool).await?
                    }
                };
                let mut deployments: Vec<Deployment> =
                    rows.iter().map(Self::deployment_from_row).collect::<Result<_, _>>()?;
                let canaries =
                    sqlx::query(CANARY_SELECT).fetch_all(&self.pool).await?;
                Self::attach_canaries(&mut deployments, &canaries)?;
                Ok(deployments)
            }

            async fn add_usage(
                &self,
                tenant_id: TenantId,
                minute: i64,
                counts: &UsageCounts,
            ) -> StoreResult<()> {
                let big = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                let mut tx = self.pool.begin().await?;
                // The day's row and the minute's, together.
                for (table, column, at) in
                    [("usage", "day", minute.div_euclid(1440)), ("usage_minutes", "minute", minute)]
                {
                    let query = format!(
                        "INSERT INTO {table} (tenant_id, {column}, invocations, errors_trap, \
                         errors_timeout, errors_oom, errors_other, wall_ms, kv_reads, kv_writes) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                         ON CONFLICT (tenant_id, {column}) DO UPDATE SET \
                         invocations = {table}.invocations + excluded.invocations, \
                         errors_trap = {table}.errors_trap + excluded.errors_trap, \
                         errors_timeout = {table}.errors_timeout + excluded.errors_timeout, \
                         errors_oom = {table}.errors_oom + excluded.errors_oom, \
                         errors_other = {table}.errors_other + excluded.errors_other, \
                         wall_ms = {table}.wall_ms + excluded.wall_ms, \
                         kv_reads = {table}.kv_reads + excluded.kv_reads, \
                         kv_writes = {table}.kv_writes + excluded.kv_writes"
                    );
                    sqlx::query(sqlx::AssertSqlSafe(query))
                        .bind(tenant_id)
                        .bind(at)
                        .bind(big(counts.invocations))
                        .bind(big(counts.errors_trap))
                        .bind(big(counts.errors_timeout))
                        .bind(big(counts.errors_oom))
                        .bind(big(counts.errors_other))
                        .bind(big(counts.wall_ms))
                        .bind(big(counts.kv_reads))
                        .bind(big(counts.kv_writes))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn usage_history(
                &self,
                tenant_id: TenantId,
                per_minute: bool,
                from: i64,
                to: i64,
            ) -> StoreResult<Vec<(i64, UsageCounts)>> {
                use sqlx::Row as _;
                let (table, column) =
                    if per_minute { ("usage_minutes", "minute") } else { ("usage", "day") };
                let query = format!(
                    "SELECT {column} AS at, invocations, errors_trap, errors_timeout, errors_oom, \
                     errors_other, wall_ms, kv_reads, kv_writes FROM {table} \
                     WHERE tenant_id = $1 AND {column} >= $2 AND {column} <= $3 ORDER BY {column}"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(query))
                    .bind(tenant_id)
                    .bind(from)
                    .bind(to)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|row| Ok((row.try_get::<i64, _>("at")?, Self::counts_from_row(row)?)))
                    .collect()
            }

            async fn touch_key(&self, id: &str, at: i64) -> StoreResult<()> {
                sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn prune_usage_minutes(&self, before: i64) -> StoreResult<u64> {
                let done = sqlx::query("DELETE FROM usage_minutes WHERE minute < $1")
                    .bind(before)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn usage(
                &self,
                tenant_id: TenantId,
                day: i64,
            ) -> StoreResult<(UsageCounts, UsageCounts)> {
                use sqlx::Row as _;
                let rows = sqlx::query(
                    "SELECT day, invocations, errors_trap, errors_timeout, errors_oom, errors_other, \
                     wall_ms, kv_reads, kv_writes FROM usage WHERE tenant_id = $1",
                )
                .bind(tenant_id)
                .fetch_all(&self.pool)
                .await?;
                let mut total = UsageCounts::default();
                let mut today = UsageCounts::default();
                for row in rows {
                    let counts = Self::counts_from_row(&row)?;
                    total = total.plus(&counts);
                    if row.try_get::<i64, _>("day")? == day {
                        today = counts;
                    }
                }
                Ok((total, today))
            }

            async fn usage_on_day(&self, day: i64) -> StoreResult<Vec<(TenantId, UsageCounts)>> {
                use sqlx::Row as _;
                let rows = sqlx::query(
                    "SELECT tenant_id, invocations, errors_trap, errors_timeout, errors_oom, \
                     errors_other, wall_ms, kv_reads, kv_writes FROM usage WHERE day = $1",
                )
                .bind(day)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| Ok((row.try_get::<TenantId, _>("tenant_id")?, Self::counts_from_row(row)?)))
                    .collect()
            }

            fn watch_changes(&self, wake: std::sync::Arc<tokio::sync::Notify>) -> Option<super::Watcher> {
                self.watch(wake)
            }

            async fn kv_get(&self, bucket: &Bucket, key: &str) -> StoreResult<Option<Vec<u8>>> {
                Ok(sqlx::query_scalar(
                    "SELECT value FROM kv_entries WHERE tenant_id = $1 AND bucket = $2 AND key = $3",
                )
                .bind(bucket.tenant)
                .bind(&bucket.name)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn kv_exists(&self, bucket: &Bucket, key: &str) -> StoreResult<bool> {
                let found: Option<i32> = sqlx::query_scalar(
                    "SELECT 1 FROM kv_entries WHERE tenant_id = $1 AND bucket = $2 AND key = $3",
                )
                .bind(bucket.tenant)
                .bind(&bucket.name)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
                Ok(found.is_some())
            }

            async fn kv_list(
                &self,
                bucket: &Bucket,
                offset: u64,
                limit: u64,
            ) -> StoreResult<Vec<String>> {
                let big = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                Ok(sqlx::query_scalar(
                    "SELECT key FROM kv_entries WHERE tenant_id = $1 AND bucket = $2 \
                     ORDER BY key LIMIT $3 OFFSET $4",
                )
                .bind(bucket.tenant)
                .bind(&bucket.name)
                .bind(big(limit))
                .bind(big(offset))
                .fetch_all(&self.pool)
                .await?)
            }

            async fn kv_write(
                &self,
                bucket: &Bucket,
                key: &str,
                change: Change,
                limits: &KvLimits,
            ) -> StoreResult<Result<u64, KvError>> {
                use sqlx::Row as _;
                let mut tx = self.begin_kv().await?;
                // Takes the tenant's totals row for the transaction: the
                // tenant's writes queue here, on every node.
                let row = sqlx::query(
                    "INSERT INTO kv_totals (tenant_id, keys, bytes) VALUES ($1, 0, 0) \
                     ON CONFLICT (tenant_id) DO UPDATE SET keys = kv_totals.keys \
                     RETURNING keys, bytes",
                )
                .bind(bucket.tenant)
                .fetch_one(&mut *tx)
                .await?;
                let totals = Totals {
                    keys: row.try_get::<i64, _>("keys")?.max(0) as u64,
                    bytes: row.try_get::<i64, _>("bytes")?.max(0) as u64,
                };
                let old: Option<Vec<u8>> = sqlx::query_scalar(
                    "SELECT value FROM kv_entries WHERE tenant_id = $1 AND bucket = $2 AND key = $3",
                )
                .bind(bucket.tenant)
                .bind(&bucket.name)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
                let planned = match crate::kv::plan(key, old.as_deref(), change, totals, limits) {
                    Ok(planned) => planned,
                    // Dropping the transaction rolls it back.
                    Err(refused) => return Ok(Err(refused)),
                };
                match &planned.value {
                    Some(value) => {
                        sqlx::query(
                            "INSERT INTO kv_entries (tenant_id, bucket, key, value) \
                             VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, bucket, key) \
                             DO UPDATE SET value = excluded.value",
                        )
                        .bind(bucket.tenant)
                        .bind(&bucket.name)
                        .bind(key)
                        .bind(value.as_slice())
                        .execute(&mut *tx)
                        .await?;
                    }
                    None if old.is_some() => {
                        sqlx::query(
                            "DELETE FROM kv_entries WHERE tenant_id = $1 AND bucket = $2 AND key = $3",
                        )
                        .bind(bucket.tenant)
                        .bind(&bucket.name)
                        .bind(key)
                        .execute(&mut *tx)
                        .await?;
                    }
                    None => {}
                }
                if planned.keys_delta != 0 || planned.bytes_delta != 0 {
                    sqlx::query(
                        "UPDATE kv_totals SET keys = keys + $2, bytes = bytes + $3 WHERE tenant_id = $1",
                    )
                    .bind(bucket.tenant)
                    .bind(planned.keys_delta)
                    .bind(planned.bytes_delta)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(Ok(planned.counter))
            }

            async fn kv_totals(&self, tenant: TenantId) -> StoreResult<Totals> {
                use sqlx::Row as _;
                let row = sqlx::query("SELECT keys, bytes FROM kv_totals WHERE tenant_id = $1")
                    .bind(tenant)
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(row) = row else { return Ok(Totals::default()) };
                Ok(Totals {
                    keys: row.try_get::<i64, _>("keys")?.max(0) as u64,
                    bytes: row.try_get::<i64, _>("bytes")?.max(0) as u64,
                })
            }

            async fn change_seq(&self) -> StoreResult<i64> {
                use sqlx::Row as _;
                let row = sqlx::query("SELECT seq FROM changes WHERE id = 1").fetch_one(&self.pool).await?;
                Ok(row.try_get("seq")?)
            }

            async fn setting(&self, name: &str) -> StoreResult<Option<String>> {
                use sqlx::Row as _;
                let row = sqlx::query("SELECT value FROM settings WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(|r| r.try_get("value")).transpose()?)
            }

            async fn setting_or_insert(&self, name: &str, value: &str) -> StoreResult<String> {
                sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                    .bind(name)
                    .bind(value)
                    .execute(&self.pool)
                    .await?;
                self.setting(name)
                    .await?
                    .ok_or_else(|| StoreError::Internal(format!("setting {name} vanished")))
            }
        }

        fn bind_tier<'q>(
            query: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments>,
            tier: &'q Tier,
        ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments> {
            let limits = tier.limits.to_json();
            LIMITS.iter().fold(query.bind(&tier.name), |query, spec| {
                query.bind(limit_column(&limits[spec.name]))
            })
        }
    };
}

pub(super) use sql_store;

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(route: &str) -> Grant {
        Grant::path(route, &[]).unwrap()
    }

    #[test]
    fn a_grant_that_overlaps_another_tenants_grant_or_default_is_a_conflict() {
        let others = vec![("bob".to_string(), grant("/shop/..."))];
        let tenants = vec!["bob".to_string(), "carol".to_string()];
        let err = check_grant_free(&grant("/shop/cart"), &others, &tenants).unwrap_err();
        assert!(err.to_string().contains("granted to tenant bob"), "{err}");
        let err = check_grant_free(&grant("/carol/x"), &others, &tenants).unwrap_err();
        assert!(err.to_string().contains("where tenant carol deploys by default"), "{err}");
        assert!(check_grant_free(&grant("/shopping/..."), &others, &tenants).is_ok());
        let host = Grant::host("bob.example.com").unwrap();
        assert!(check_grant_free(&host, &others, &tenants).is_ok());
    }

    #[test]
    fn a_route_outside_the_tenants_grants_is_refused_with_what_it_may_use() {
        let route = |r: &str, h: Option<&str>| RoutePattern::parse(r, h, &[]).unwrap();
        let grants = vec![grant("/shop/..."), Grant::host("shop.example.com").unwrap()];
        assert!(check_granted("acme", &grants, None, &route("/acme/x", None)).is_ok());
        assert!(check_granted("acme", &grants, None, &route("/shop", None)).is_ok());
        assert!(
            check_granted("acme", &grants, None, &route("/...", Some("shop.example.com"))).is_ok()
        );
        assert!(
            check_granted("acme", &[], Some("edge.test"), &route("/x", Some("acme.edge.test")))
                .is_ok()
        );
        let err = check_granted("acme", &grants, None, &route("/...", None)).unwrap_err();
        assert!(matches!(err, StoreError::NotGranted(_)));
        assert!(
            err.to_string().contains("(/acme/..., /shop/..., host shop.example.com); /... is not"),
            "{err}"
        );
    }
}
