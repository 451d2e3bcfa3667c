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
use crate::router::RoutePattern;

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

/// Refuses a route that would take requests from another tenant's route:
/// the same route, or one inside another tenant's wildcard.
pub(super) fn check_route_ownership(
    route: &str,
    host: &str,
    others: &[(String, String)],
) -> Result<(), StoreError> {
    let host_opt = (!host.is_empty()).then_some(host);
    let new =
        RoutePattern::parse_any(route, host_opt).map_err(|e| StoreError::Invalid(e.to_string()))?;
    for (other_route, other_host) in others {
        let other_host = (!other_host.is_empty()).then_some(other_host.as_str());
        let Ok(existing) = RoutePattern::parse_any(other_route, other_host) else {
            continue;
        };
        if existing == new {
            return Err(StoreError::Conflict(format!(
                "the route {route} belongs to another tenant"
            )));
        }
        if new.would_take_from(&existing) {
            return Err(StoreError::Conflict(format!(
                "the route {route} is inside {existing}, which belongs to another tenant"
            )));
        }
    }
    Ok(())
}

pub(super) const TIER_COLUMNS: &str = "name, requests_per_minute, requests_per_day, \
     memory_limit_bytes, execution_timeout_ms, max_input_bytes, max_component_bytes, \
     kv_max_key_bytes, kv_max_value_bytes, kv_max_keys, kv_max_total_bytes, max_instance_reuse, \
     max_concurrency";

pub(super) const DEPLOYMENT_SELECT: &str = "SELECT d.id, d.tenant_id, t.name AS tenant, \
     t.tier AS tier, d.route, d.host, v.version, v.component, v.config, v.secrets, \
     v.allowed_outbound_hosts, v.max_instance_reuse, v.created_at \
     FROM deployments d \
     JOIN tenants t ON t.id = d.tenant_id \
     JOIN deployment_versions v ON v.deployment_id = d.id AND v.version = d.live_version \
     WHERE d.deleted_at IS NULL";

pub(super) const KEY_SELECT: &str = "SELECT k.id, k.tenant_id, t.name AS tenant, t.tier AS tier, k.prefix, \
     k.scopes, k.key_hash, k.created_at, k.revoked_at FROM api_keys k JOIN tenants t ON t.id = k.tenant_id";

/// Expands the [`Store`](super::Store) implementation for one backend.
macro_rules! sql_store {
    ($store:ty, $db:ty) => {
        impl $store {
            fn tier_from_row(row: &<$db as sqlx::Database>::Row) -> Result<Tier, StoreError> {
                use sqlx::Row as _;
                let opt = |v: Option<i64>| v.map(|n| n.max(0) as u64);
                Ok(Tier {
                    name: row.try_get("name")?,
                    limits: TierLimits {
                        requests_per_minute: opt(row.try_get("requests_per_minute")?),
                        requests_per_day: opt(row.try_get("requests_per_day")?),
                        memory_limit_bytes: row.try_get::<i64, _>("memory_limit_bytes")?.max(0) as u64,
                        execution_timeout_ms: row.try_get::<i64, _>("execution_timeout_ms")?.max(0) as u64,
                        max_input_bytes: row.try_get::<i64, _>("max_input_bytes")?.max(0) as u64,
                        max_component_bytes: row.try_get::<i64, _>("max_component_bytes")?.max(0) as u64,
                        kv_max_key_bytes: row.try_get::<i64, _>("kv_max_key_bytes")?.max(0) as u64,
                        kv_max_value_bytes: row.try_get::<i64, _>("kv_max_value_bytes")?.max(0) as u64,
                        kv_max_keys: row.try_get::<i64, _>("kv_max_keys")?.max(0) as u64,
                        kv_max_total_bytes: row.try_get::<i64, _>("kv_max_total_bytes")?.max(0) as u64,
                        max_instance_reuse: u32::try_from(
                            row.try_get::<i64, _>("max_instance_reuse")?,
                        )
                        .unwrap_or(1)
                        .max(1),
                        max_concurrency: row
                            .try_get::<Option<i64>, _>("max_concurrency")?
                            .map(|n| u32::try_from(n).unwrap_or(u32::MAX).max(1)),
                    },
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
                    max_instance_reuse: u32::try_from(
                        row.try_get::<i64, _>("max_instance_reuse")?,
                    )
                    .unwrap_or(1)
                    .max(1),
                    created_at: row.try_get("created_at")?,
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
                Self::deployment_from_row(&row)
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
                    let query = format!(
                        "INSERT INTO tiers ({TIER_COLUMNS}, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14) \
                         ON CONFLICT (name) DO NOTHING"
                    );
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
                let query = format!(
                    "INSERT INTO tiers ({TIER_COLUMNS}, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14) \
                     ON CONFLICT (name) DO UPDATE SET \
                     requests_per_minute = excluded.requests_per_minute, \
                     requests_per_day = excluded.requests_per_day, \
                     memory_limit_bytes = excluded.memory_limit_bytes, \
                     execution_timeout_ms = excluded.execution_timeout_ms, \
                     max_input_bytes = excluded.max_input_bytes, \
                     max_component_bytes = excluded.max_component_bytes, \
                     kv_max_key_bytes = excluded.kv_max_key_bytes, \
                     kv_max_value_bytes = excluded.kv_max_value_bytes, \
                     kv_max_keys = excluded.kv_max_keys, \
                     kv_max_total_bytes = excluded.kv_max_total_bytes, \
                     max_instance_reuse = excluded.max_instance_reuse, \
                     max_concurrency = excluded.max_concurrency, \
                     updated_at = excluded.updated_at"
                );
                bind_tier(sqlx::query(sqlx::AssertSqlSafe(query)), tier)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                Self::bump(&mut tx).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn tiers(&self) -> StoreResult<Vec<Tier>> {
                let query = format!("SELECT {TIER_COLUMNS} FROM tiers ORDER BY name");
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
                let host = new.host.clone().unwrap_or_default();
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
                let others: Vec<(String, String)> = sqlx::query(
                    "SELECT route, host FROM deployments \
                     WHERE deleted_at IS NULL AND tenant_id <> $1 AND host = $2",
                )
                .bind(new.tenant_id)
                .bind(&host)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("route")?, r.try_get("host")?)))
                .collect::<Result<_, sqlx::Error>>()?;
                check_route_ownership(&new.route, &host, &others)?;

                let existing = sqlx::query(
                    "SELECT id FROM deployments WHERE host = $1 AND route = $2 AND tenant_id = $3 \
                     AND deleted_at IS NULL",
                )
                .bind(&host)
                .bind(&new.route)
                .bind(new.tenant_id)
                .fetch_optional(&mut *tx)
                .await?;
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
                        .bind(&new.route)
                        .bind(&host)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                        (id, 1)
                    }
                };
                sqlx::query(
                    "INSERT INTO deployment_versions (deployment_id, version, component, config, \
                     secrets, allowed_outbound_hosts, max_instance_reuse, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&id)
                .bind(version)
                .bind(&new.component)
                .bind(to_json(&new.config))
                .bind(to_json(&new.secrets))
                .bind(to_json(&new.allowed_outbound_hosts))
                .bind(i64::from(new.max_instance_reuse.max(1)))
                .bind(now)
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE deployments SET live_version = $1, updated_at = $2 WHERE id = $3")
                    .bind(version)
                    .bind(now)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                Self::bump(&mut tx).await?;
                let deployment = Self::deployment_in(&mut tx, &id).await?;
                tx.commit().await?;
                Ok(deployment)
            }

            async fn rollback(&self, tenant_id: TenantId, id: &str) -> StoreResult<Deployment> {
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
                let previous: Option<i64> = sqlx::query(
                    "SELECT MAX(version) AS v FROM deployment_versions \
                     WHERE deployment_id = $1 AND version < $2",
                )
                .bind(id)
                .bind(live)
                .fetch_one(&mut *tx)
                .await?
                .try_get("v")?;
                let Some(previous) = previous else {
                    return Err(StoreError::Conflict(format!(
                        "version {live} is the first: there is nothing to roll back to"
                    )));
                };
                sqlx::query("UPDATE deployments SET live_version = $1, updated_at = $2 WHERE id = $3")
                    .bind(previous)
                    .bind(now_ms())
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                Self::bump(&mut tx).await?;
                let deployment = Self::deployment_in(&mut tx, id).await?;
                tx.commit().await?;
                Ok(deployment)
            }

            async fn delete_deployment(&self, tenant_id: TenantId, id: &str) -> StoreResult<bool> {
                let mut tx = self.begin_write().await?;
                let deleted = sqlx::query(
                    "UPDATE deployments SET deleted_at = $1 WHERE id = $2 AND tenant_id = $3 \
                     AND deleted_at IS NULL",
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
                rows.iter().map(Self::deployment_from_row).collect()
            }

            async fn add_usage(
                &self,
                tenant_id: TenantId,
                day: i64,
                counts: &UsageCounts,
            ) -> StoreResult<()> {
                let big = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                sqlx::query(
                    "INSERT INTO usage (tenant_id, day, invocations, errors_trap, errors_timeout, \
                     errors_oom, errors_other, wall_ms, kv_reads, kv_writes) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT (tenant_id, day) DO UPDATE SET \
                     invocations = usage.invocations + excluded.invocations, \
                     errors_trap = usage.errors_trap + excluded.errors_trap, \
                     errors_timeout = usage.errors_timeout + excluded.errors_timeout, \
                     errors_oom = usage.errors_oom + excluded.errors_oom, \
                     errors_other = usage.errors_other + excluded.errors_other, \
                     wall_ms = usage.wall_ms + excluded.wall_ms, \
                     kv_reads = usage.kv_reads + excluded.kv_reads, \
                     kv_writes = usage.kv_writes + excluded.kv_writes",
                )
                .bind(tenant_id)
                .bind(day)
                .bind(big(counts.invocations))
                .bind(big(counts.errors_trap))
                .bind(big(counts.errors_timeout))
                .bind(big(counts.errors_oom))
                .bind(big(counts.errors_other))
                .bind(big(counts.wall_ms))
                .bind(big(counts.kv_reads))
                .bind(big(counts.kv_writes))
                .execute(&self.pool)
                .await?;
                Ok(())
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
                    let n = |column: &str| -> Result<u64, sqlx::Error> {
                        Ok(row.try_get::<i64, _>(column)?.max(0) as u64)
                    };
                    let counts = UsageCounts {
                        invocations: n("invocations")?,
                        errors_trap: n("errors_trap")?,
                        errors_timeout: n("errors_timeout")?,
                        errors_oom: n("errors_oom")?,
                        errors_other: n("errors_other")?,
                        wall_ms: n("wall_ms")?,
                        kv_reads: n("kv_reads")?,
                        kv_writes: n("kv_writes")?,
                    };
                    total = total.plus(&counts);
                    if row.try_get::<i64, _>("day")? == day {
                        today = counts;
                    }
                }
                Ok((total, today))
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
            let opt = |v: Option<u64>| v.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
            let big = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            let limits = &tier.limits;
            query
                .bind(&tier.name)
                .bind(opt(limits.requests_per_minute))
                .bind(opt(limits.requests_per_day))
                .bind(big(limits.memory_limit_bytes))
                .bind(big(limits.execution_timeout_ms))
                .bind(big(limits.max_input_bytes))
                .bind(big(limits.max_component_bytes))
                .bind(big(limits.kv_max_key_bytes))
                .bind(big(limits.kv_max_value_bytes))
                .bind(big(limits.kv_max_keys))
                .bind(big(limits.kv_max_total_bytes))
                .bind(i64::from(limits.max_instance_reuse))
                .bind(limits.max_concurrency.map(i64::from))
        }
    };
}

pub(super) use sql_store;

#[cfg(test)]
mod tests {
    use super::*;

    fn others(routes: &[&str]) -> Vec<(String, String)> {
        routes.iter().map(|r| (r.to_string(), String::new())).collect()
    }

    #[test]
    fn another_tenants_route_or_wildcard_above_is_a_conflict() {
        assert!(check_route_ownership("/a", "", &others(&["/a"])).is_err());
        assert!(check_route_ownership("/a/b", "", &others(&["/a/..."])).is_err());
        assert!(check_route_ownership("/a/...", "", &others(&["/a/..."])).is_err());
        assert!(check_route_ownership("/b", "", &others(&["/a/...", "/c"])).is_ok());
        assert!(check_route_ownership("/...", "", &others(&["/a/..."])).is_ok());
        assert!(check_route_ownership("/a/b", "h.example", &others(&["/a/..."])).is_ok());
    }
}
