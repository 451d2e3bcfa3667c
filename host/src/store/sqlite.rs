//! The embedded store: one SQLite file under `WASMWIZ_DATA_DIR`, so
//! `wasmwiz serve` needs nothing else installed. Single node.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

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

/// The migrations in `migrations/sqlite`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// The database file's name inside the data directory.
pub const DATABASE_FILE: &str = "wasmwiz.db";

/// A SQLite-backed store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The database file, absolute, for messages.
    file: std::path::PathBuf,
}

impl SqliteStore {
    const BACKEND: &'static str = "sqlite";

    /// Opens (creating if needed) `DATA_DIR/wasmwiz.db`.
    ///
    /// WAL with `synchronous = FULL`: a write the API acknowledged is on disk
    /// and survives a crash or a power cut.
    pub async fn open(data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("WASMWIZ_DATA_DIR: cannot create {}", data_dir.display()))?;
        let file = std::path::absolute(data_dir.join(DATABASE_FILE)).with_context(|| {
            format!("WASMWIZ_DATA_DIR: {} has no absolute path", data_dir.display())
        })?;
        let options = SqliteConnectOptions::new()
            .filename(&file)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            // A COMMIT that failed (SQLITE_FULL on a full disk) leaves its
            // connection counted inside a transaction, and every later
            // BEGIN on it fails: such a connection is closed, not reused.
            .before_acquire(|conn, _| {
                Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) })
            })
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open the database in {}", data_dir.display()))?;
        Ok(Self { pool, file })
    }

    /// The database file, for messages.
    fn place(&self) -> String {
        self.file.display().to_string()
    }

    /// The pool (for tests that reach under the store).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Single node: nothing to listen to (the change counter is polled).
    /// The embedded store is single-node: nothing to listen to.
    fn watch(&self, _wake: std::sync::Arc<tokio::sync::Notify>) -> Option<super::Watcher> {
        None
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        // IMMEDIATE takes the write lock up front: two writers queue instead
        // of failing when one upgrades a read to a write.
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn begin_kv(&self) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn bump(tx: &mut sqlx::Transaction<'_, Sqlite>) -> Result<(), StoreError> {
        sqlx::query("UPDATE changes SET seq = seq + 1 WHERE id = 1").execute(&mut **tx).await?;
        Ok(())
    }
}

sql_store!(SqliteStore, Sqlite);
sql_triggers!(
    SqliteStore,
    Sqlite,
    "UPDATE queue_messages SET attempts = attempts + 1, visible_at = $4 \
     WHERE (queue_id, id) IN (SELECT queue_id, id FROM queue_messages WHERE queue_id = $1 \
     AND dead = 0 AND visible_at <= $2 ORDER BY created_at, id LIMIT $3) RETURNING *"
);
