//! Key-value data of components kept in the store (SQLite embedded, or
//! PostgreSQL without Redis): the store as a [`KvBackend`].

use std::sync::Arc;

use super::{Store, StoreError};
use crate::kv::{Bucket, Change, KvBackend, KvError, KvLimits, LIST_PAGE, Totals, page};
use crate::tenancy::TenantId;

impl From<StoreError> for KvError {
    fn from(error: StoreError) -> Self {
        tracing::warn!(%error, "key-value operation on the store failed");
        KvError::Unavailable("the store did not answer".into())
    }
}

/// Key-value operations on the store at once, per node: at most half of a
/// node's database connections, so guests can never starve the control
/// plane (API, change notifications, usage) of connections.
pub const STORE_KV_CONCURRENCY: usize = 8;

/// Key-value data in the store (SQLite embedded, PostgreSQL without Redis).
#[derive(Debug, Clone)]
pub struct StoreKv {
    store: Arc<dyn Store>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl StoreKv {
    /// Keeps key-value data in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, permits: Arc::new(tokio::sync::Semaphore::new(STORE_KV_CONCURRENCY)) }
    }

    async fn permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.permits.acquire().await.expect("the semaphore is never closed")
    }
}

#[async_trait::async_trait]
impl KvBackend for StoreKv {
    fn name(&self) -> &'static str {
        "store"
    }

    async fn get(&self, bucket: &Bucket, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let _permit = self.permit().await;
        Ok(self.store.kv_get(bucket, key).await?)
    }

    async fn exists(&self, bucket: &Bucket, key: &str) -> Result<bool, KvError> {
        let _permit = self.permit().await;
        Ok(self.store.kv_exists(bucket, key).await?)
    }

    async fn list(
        &self,
        bucket: &Bucket,
        cursor: u64,
    ) -> Result<(Vec<String>, Option<u64>), KvError> {
        let _permit = self.permit().await;
        let keys = self.store.kv_list(bucket, cursor, LIST_PAGE as u64 + 1).await?;
        Ok(page(keys, cursor))
    }

    async fn write(
        &self,
        bucket: &Bucket,
        key: &str,
        change: Change,
        limits: &KvLimits,
    ) -> Result<u64, KvError> {
        let _permit = self.permit().await;
        self.store.kv_write(bucket, key, change, limits).await?
    }

    async fn totals(&self, tenant: TenantId) -> Result<Totals, KvError> {
        let _permit = self.permit().await;
        Ok(self.store.kv_totals(tenant).await?)
    }
}
