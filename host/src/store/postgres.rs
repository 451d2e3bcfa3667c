//! The PostgreSQL store (`DATABASE_URL`), for production and for several
//! nodes sharing one database.

use std::time::Duration;

use anyhow::Context as _;
use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use tokio::sync::Notify;

use super::sql::{
    CANARY_SELECT, DEPLOYMENT_SELECT, GRANT_SELECT, KEY_SELECT, ROLLOUT_SELECT, at_least_one,
    guard_of, json_list, json_map, limit_column, percent_of, sql_store, steps_of, tier_insert,
    tier_select, to_json,
};
use super::sql::{check_grant_free, check_granted, grant_of};
use super::triggers::{
    NewQueue, NewSchedule, QueueDepth, QueueRecord, RunRecord, ScheduleRecord, StoredMessage,
    TriggerStore, sql_triggers,
};
use super::{
    ApiKeyRecord, Bucket, Canary, Change, ComponentDeletion, ComponentMeta, Deployment,
    GrantRecord, KvError, KvLimits, LivePeriod, NewApiKey, NewComponent, NewDeployment,
    RolloutRecord, RolloutStep, Store, StoreError, StoreResult, Tenant, Totals, UsageCounts,
    VersionRecord, new_id, now_ms,
};
use crate::router::{Grant, RoutePattern};
use crate::tenancy::{LIMITS, TenantId, Tier, TierLimits};

/// The migrations in `migrations/postgres`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The channel nodes `LISTEN` on; every change notifies it.
pub const CHANGES_CHANNEL: &str = "wasmwiz_changes";

/// Key of the advisory lock that serializes writers across nodes.
const WRITE_LOCK: i64 = 0x5741_534d_5749_5a00; // "WASMWIZ\0"

/// Time to wait for a connection before answering "unavailable": short, so
/// the API answers 503 quickly while the database restarts.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// Most connections one node opens.
pub const MAX_CONNECTIONS: u32 = 16;

/// A PostgreSQL-backed store.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    url: String,
}

impl PgStore {
    const BACKEND: &'static str = "postgres";

    /// Connects (lazily: the pool opens connections when needed, so a node
    /// starts even while the database is briefly away).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let options: PgConnectOptions =
            url.parse().context("DATABASE_URL is not a valid PostgreSQL URL")?;
        // Notices (`relation "_sqlx_migrations" already exists, skipping`
        // at every start) are not for operators.
        let options = options.options([("client_min_messages", "warning")]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(true)
            .connect_with(options)
            .await
            .context("cannot connect to DATABASE_URL")?;
        Ok(Self { pool, url: url.to_string() })
    }

    /// The pool (for listeners and tests).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The URL it connected with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `host:port/database`, for messages (never the password).
    fn place(&self) -> String {
        let options = self.pool.connect_options();
        format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("postgres")
        )
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Postgres>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(WRITE_LOCK).execute(&mut *tx).await?;
        Ok(tx)
    }

    /// A transaction for key-value writes: they serialize per tenant (on
    /// the tenant's totals row), not with the control plane's writers.
    async fn begin_kv(&self) -> Result<sqlx::Transaction<'static, Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    async fn bump(tx: &mut sqlx::Transaction<'_, Postgres>) -> Result<(), StoreError> {
        use sqlx::Row as _;
        let seq: i64 = sqlx::query("UPDATE changes SET seq = seq + 1 WHERE id = 1 RETURNING seq")
            .fetch_one(&mut **tx)
            .await?
            .try_get("seq")?;
        // Delivered to listeners when the transaction commits.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANGES_CHANNEL)
            .bind(seq.to_string())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

impl PgStore {
    /// Listens on [`CHANGES_CHANNEL`], waking `wake` for every notification
    /// and after every (re)connection, when notifications may have been
    /// missed. Reconnects by itself after PostgreSQL restarts; ends when
    /// the returned task is dropped.
    fn watch(&self, wake: Arc<Notify>) -> Option<super::Watcher> {
        let pool = self.pool.clone();
        Some(Box::pin(async move {
            loop {
                let mut listener = match PgListener::connect_with(&pool).await {
                    Ok(listener) => listener,
                    Err(_) => {
                        tokio::time::sleep(LISTEN_RETRY).await;
                        continue;
                    }
                };
                if listener.listen(CHANGES_CHANNEL).await.is_err() {
                    tokio::time::sleep(LISTEN_RETRY).await;
                    continue;
                }
                tracing::debug!("listening for changes");
                wake.notify_one();
                loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => wake.notify_one(),
                        // The connection dropped; the next call reconnects
                        // and listens again. What was missed is caught up.
                        Ok(None) => wake.notify_one(),
                        Err(e) => {
                            tracing::debug!(error = %e, "change listener lost its connection");
                            tokio::time::sleep(LISTEN_RETRY).await;
                            break;
                        }
                    }
                }
            }
        }))
    }
}

/// Pause before the change listener tries to connect again.
const LISTEN_RETRY: Duration = Duration::from_millis(500);

sql_store!(PgStore, Postgres);
sql_triggers!(
    PgStore,
    Postgres,
    "UPDATE queue_messages SET attempts = attempts + 1, visible_at = $4 \
     WHERE (queue_id, id) IN (SELECT queue_id, id FROM queue_messages WHERE queue_id = $1 \
     AND dead = 0 AND visible_at <= $2 ORDER BY created_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING *"
);
