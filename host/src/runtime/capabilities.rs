//! What a component may import besides `wasi:http/proxy`: key-value data
//! (`wasi:keyvalue/{store,atomics,batch}@0.2.0-draft`) and configuration
//! (`wasi:config/store@0.2.0-rc.1`), as the `capabilities` world in `wit/`
//! declares them.
//!
//! Failures reach the guest as `error` values it can handle (a limit, an
//! unreachable backend); nothing a guest passes makes the host trap except
//! misuse of its own resource handles.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::kv::{Bucket, Change, KvBackend, KvError, KvLimits, check_item};
use crate::tenancy::TenantId;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasmwiz:platform/capabilities",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::OpenBucket,
        },
    });
}

use bindings::wasi::config::store as config;
use bindings::wasi::keyvalue::{atomics, batch, store};

/// Most keys one batch call may name.
pub const MAX_BATCH_KEYS: usize = 1_000;
/// Most key-value operations (each key of a batch counts) one invocation
/// may make: a guest looping on the store cannot hold it for its whole
/// timeout.
pub const MAX_KV_OPS_PER_INVOCATION: u32 = 10_000;

/// A bucket the guest opened.
#[derive(Debug)]
pub struct OpenBucket {
    bucket: Bucket,
}

/// What one route's invocations may use. Shared by every invocation of the
/// route (an `Arc`), built when the route is published.
#[derive(Debug, Default)]
pub struct Capabilities {
    /// Key-value access (`None`: `open` answers `no-such-store`).
    pub kv: Option<KvAccess>,
    /// The deployment's configuration, secrets included.
    pub config: BTreeMap<String, String>,
    /// Publishing to the tenant's queues with an outgoing request to
    /// `http://queue.wasmwiz.internal/<name>` (`None`: that host answers
    /// 404).
    pub queues: Option<Arc<dyn QueuePublisher>>,
}

/// Why a publish was refused: the status, a code naming the limit, words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueRefused {
    /// 404, 413, 429 or 503.
    pub status: u16,
    /// `no_such_queue`, `message_too_large`, `publish_rate`, `queue_full`,
    /// `queues_unavailable`.
    pub code: &'static str,
    /// What to do.
    pub message: String,
}

/// Publishes to one tenant's queues, within its tier's limits.
#[async_trait::async_trait]
pub trait QueuePublisher: Send + Sync + std::fmt::Debug {
    /// The largest message the tier allows, in bytes.
    fn max_message_bytes(&self) -> u64;
    /// Publishes `body` to the tenant's queue `queue`; the message's id.
    async fn publish(
        &self,
        queue: &str,
        body: bytes::Bytes,
        content_type: &str,
    ) -> Result<String, QueueRefused>;
}

/// Key-value access of one deployment.
#[derive(Debug, Clone)]
pub struct KvAccess {
    /// Where the data lives.
    pub backend: Arc<dyn KvBackend>,
    /// The tenant whose buckets these are.
    pub tenant: TenantId,
    /// The deployment whose `default` bucket this is.
    pub deployment: String,
    /// The tenant's limits.
    pub limits: KvLimits,
    /// Where operations are counted.
    pub usage: Option<Arc<dyn KvMeter>>,
}

/// Counts a tenant's key-value operations (its usage counters).
pub trait KvMeter: Send + Sync + std::fmt::Debug {
    /// `n` reads (get, exists, list; each key of a batch).
    fn kv_read(&self, n: u64);
    /// `n` writes (set, delete, increment; each key of a batch).
    fn kv_write(&self, n: u64);
    /// Whether one more write fits in this second's `per_second` (and
    /// counts it if it does): one tenant's writes may not crowd the
    /// backend every tenant shares.
    fn kv_write_allowed(&self, per_second: u64) -> bool;
}

impl KvAccess {
    fn count(&self, reads: usize, writes: usize) {
        if let Some(usage) = &self.usage {
            if reads > 0 {
                usage.kv_read(reads as u64);
            }
            if writes > 0 {
                usage.kv_write(writes as u64);
            }
        }
    }

    async fn write(&self, bucket: &Bucket, key: &str, change: Change) -> Result<u64, KvError> {
        let value = match &change {
            Change::Set(value) => Some(value.as_slice()),
            _ => None,
        };
        check_item(key, value, &self.limits)?;
        if let Some(usage) = &self.usage
            && !usage.kv_write_allowed(self.limits.writes_per_second)
        {
            return Err(KvError::Limit(format!(
                "kv_writes_per_second: this tenant may make {} key-value writes per second on \
                 this node",
                self.limits.writes_per_second
            )));
        }
        self.count(0, 1);
        self.backend.write(bucket, key, change, &self.limits).await
    }
}

/// The view of an invocation's state that the capability bindings use.
pub struct CapabilitiesView<'a> {
    pub(super) caps: &'a Capabilities,
    pub(super) table: &'a mut ResourceTable,
    /// Key-value operations this invocation made so far.
    pub(super) kv_ops: &'a mut u32,
}

struct HasCapabilities;

impl HasData for HasCapabilities {
    type Data<'a> = CapabilitiesView<'a>;
}

/// Adds the capability interfaces to `linker`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> CapabilitiesView<'_>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<_, HasCapabilities>(linker, view)?;
    atomics::add_to_linker::<_, HasCapabilities>(linker, view)?;
    batch::add_to_linker::<_, HasCapabilities>(linker, view)?;
    config::add_to_linker::<_, HasCapabilities>(linker, view)?;
    Ok(())
}

#[expect(clippy::needless_pass_by_value, reason = "the shape `map_err` takes")]
fn guest_error(error: KvError) -> store::Error {
    store::Error::Other(error.to_string())
}

impl CapabilitiesView<'_> {
    fn access(&self) -> Result<&KvAccess, store::Error> {
        self.caps.kv.as_ref().ok_or(store::Error::NoSuchStore)
    }

    /// Counts `n` operations against the per-invocation cap.
    fn spend(&mut self, n: usize) -> Result<(), store::Error> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if self.kv_ops.saturating_add(n) > MAX_KV_OPS_PER_INVOCATION {
            return Err(guest_error(KvError::Limit(format!(
                "at most {MAX_KV_OPS_PER_INVOCATION} key-value operations per request"
            ))));
        }
        *self.kv_ops += n;
        Ok(())
    }

    fn bucket(&self, handle: &Resource<OpenBucket>) -> wasmtime::Result<Bucket> {
        Ok(self.table.get(handle)?.bucket.clone())
    }
}

/// Runs a key-value call: `Ok(Err(..))` is an error the guest handles.
macro_rules! kv_call {
    ($view:expr, $ops:expr, |$access:ident| $body:expr) => {{
        if let Err(error) = $view.spend($ops) {
            return Ok(Err(error));
        }
        let $access = match $view.access() {
            Ok(access) => access.clone(),
            Err(error) => return Ok(Err(error)),
        };
        Ok($body.await.map_err(guest_error))
    }};
}

impl store::Host for CapabilitiesView<'_> {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<OpenBucket>, store::Error>> {
        let access = match self.access() {
            Ok(access) => access,
            Err(error) => return Ok(Err(error)),
        };
        let bucket = match Bucket::open(access.tenant, &access.deployment, &identifier) {
            Ok(bucket) => bucket,
            Err(_) => return Ok(Err(store::Error::AccessDenied)),
        };
        Ok(Ok(self.table.push(OpenBucket { bucket })?))
    }
}

impl store::HostBucket for CapabilitiesView<'_> {
    async fn get(
        &mut self,
        handle: Resource<OpenBucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        let bucket = self.bucket(&handle)?;
        kv_call!(self, 1, |access| async move {
            access.count(1, 0);
            access.backend.get(&bucket, &key).await
        })
    }

    async fn set(
        &mut self,
        handle: Resource<OpenBucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let bucket = self.bucket(&handle)?;
        kv_call!(self, 1, |access| async move {
            access.write(&bucket, &key, Change::Set(value)).await.map(drop)
        })
    }

    async fn delete(
        &mut self,
        handle: Resource<OpenBucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let bucket = self.bucket(&handle)?;
        kv_call!(self, 1, |access| async move {
            access.write(&bucket, &key, Change::Delete).await.map(drop)
        })
    }

    async fn exists(
        &mut self,
        handle: Resource<OpenBucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, store::Error>> {
        let bucket = self.bucket(&handle)?;
        kv_call!(self, 1, |access| async move {
            access.count(1, 0);
            access.backend.exists(&bucket, &key).await
        })
    }

    async fn list_keys(
        &mut self,
        handle: Resource<OpenBucket>,
        cursor: Option<u64>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        let bucket = self.bucket(&handle)?;
        kv_call!(self, 1, |access| async move {
            access.count(1, 0);
            let (keys, cursor) = access.backend.list(&bucket, cursor.unwrap_or(0)).await?;
            Ok::<_, KvError>(store::KeyResponse { keys, cursor })
        })
    }

    async fn drop(&mut self, handle: Resource<OpenBucket>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        Ok(())
    }
}

impl atomics::Host for CapabilitiesView<'_> {
    async fn increment(
        &mut self,
        handle: Resource<OpenBucket>,
        key: String,
        delta: u64,
    ) -> wasmtime::Result<Result<u64, store::Error>> {
        let bucket = self.bucket(&handle)?;
        kv_call!(self, 1, |access| async move {
            access.write(&bucket, &key, Change::Increment(delta)).await
        })
    }
}

fn too_many(keys: usize) -> Result<(), KvError> {
    if keys > MAX_BATCH_KEYS {
        return Err(KvError::Limit(format!("at most {MAX_BATCH_KEYS} keys per batch call")));
    }
    Ok(())
}

impl batch::Host for CapabilitiesView<'_> {
    async fn get_many(
        &mut self,
        handle: Resource<OpenBucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Option<(String, Vec<u8>)>>, store::Error>> {
        let bucket = self.bucket(&handle)?;
        kv_call!(self, keys.len(), |access| async move {
            too_many(keys.len())?;
            access.count(keys.len(), 0);
            let mut found = Vec::with_capacity(keys.len());
            for key in keys {
                let value = access.backend.get(&bucket, &key).await?;
                found.push(value.map(|v| (key, v)));
            }
            Ok::<_, KvError>(found)
        })
    }

    async fn set_many(
        &mut self,
        handle: Resource<OpenBucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let bucket = self.bucket(&handle)?;
        kv_call!(self, key_values.len(), |access| async move {
            too_many(key_values.len())?;
            for (key, value) in key_values {
                access.write(&bucket, &key, Change::Set(value)).await?;
            }
            Ok::<_, KvError>(())
        })
    }

    async fn delete_many(
        &mut self,
        handle: Resource<OpenBucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let bucket = self.bucket(&handle)?;
        kv_call!(self, keys.len(), |access| async move {
            too_many(keys.len())?;
            for key in keys {
                access.write(&bucket, &key, Change::Delete).await?;
            }
            Ok::<_, KvError>(())
        })
    }
}

impl config::Host for CapabilitiesView<'_> {
    async fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<String>, config::Error>> {
        Ok(Ok(self.caps.config.get(&key).cloned()))
    }

    async fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, config::Error>> {
        Ok(Ok(self.caps.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
    }
}
