//! Key-value data in process memory, for `wasmwiz run` (no store): kept
//! while the process runs, gone when it stops.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::{Bucket, Change, KvBackend, KvError, KvLimits, Totals, page_at, plan};
use crate::tenancy::TenantId;

/// Buckets and per-tenant totals under one lock.
#[derive(Debug, Default)]
pub struct MemoryKv {
    data: Mutex<Data>,
}

#[derive(Debug, Default)]
struct Data {
    buckets: HashMap<Bucket, BTreeMap<String, Vec<u8>>>,
    totals: HashMap<TenantId, Totals>,
}

impl MemoryKv {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl KvBackend for MemoryKv {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, bucket: &Bucket, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.data().buckets.get(bucket).and_then(|b| b.get(key)).cloned())
    }

    async fn exists(&self, bucket: &Bucket, key: &str) -> Result<bool, KvError> {
        Ok(self.data().buckets.get(bucket).is_some_and(|b| b.contains_key(key)))
    }

    async fn list(
        &self,
        bucket: &Bucket,
        cursor: u64,
    ) -> Result<(Vec<String>, Option<u64>), KvError> {
        let data = self.data();
        let keys = data.buckets.get(bucket).into_iter().flat_map(|b| b.keys().cloned());
        Ok(page_at(keys, cursor))
    }

    async fn write(
        &self,
        bucket: &Bucket,
        key: &str,
        change: Change,
        limits: &KvLimits,
    ) -> Result<u64, KvError> {
        let mut data = self.data();
        let totals = data.totals.get(&bucket.tenant).copied().unwrap_or_default();
        let old = data.buckets.get(bucket).and_then(|b| b.get(key));
        let planned = plan(key, old.map(Vec::as_slice), change, totals, limits)?;
        let entries = data.buckets.entry(bucket.clone()).or_default();
        match planned.value {
            Some(value) => entries.insert(key.to_string(), value),
            None => entries.remove(key),
        };
        let totals = data.totals.entry(bucket.tenant).or_default();
        totals.keys = totals.keys.saturating_add_signed(planned.keys_delta);
        totals.bytes = totals.bytes.saturating_add_signed(planned.bytes_delta);
        Ok(planned.counter)
    }

    async fn totals(&self, tenant: TenantId) -> Result<Totals, KvError> {
        Ok(self.data().totals.get(&tenant).copied().unwrap_or_default())
    }
}
