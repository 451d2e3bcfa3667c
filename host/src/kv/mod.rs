//! Key-value data of components (`wasi:keyvalue`), isolated per tenant.
//!
//! A component names buckets; the host turns each name into a [`Bucket`]
//! that always carries the tenant, so no name a guest can pass reaches
//! another tenant's data: `default` (or the empty name) is the deployment's
//! own bucket, any other valid name a bucket shared by the tenant's
//! deployments.
//!
//! Backends: Redis when `REDIS_URL` is set ([`redis::RedisKv`]), the store
//! otherwise (`store::StoreKv`: SQLite embedded, PostgreSQL), and process memory
//! for `wasmwiz run` ([`memory::MemoryKv`]). Every backend checks the tier's
//! totals ([`KvLimits`]) atomically with the write that would break them,
//! so they hold across nodes, and `increment` is exact across nodes.

pub mod memory;
pub mod redis;

use serde::Serialize;

use crate::tenancy::{
    DEFAULT_KV_MAX_KEY_BYTES, DEFAULT_KV_MAX_KEYS, DEFAULT_KV_MAX_TOTAL_BYTES,
    DEFAULT_KV_MAX_VALUE_BYTES, DEFAULT_KV_WRITES_PER_SECOND, TenantId, TierLimits,
};

/// Longest bucket name a guest may open.
pub const MAX_BUCKET_NAME: usize = 64;
/// Keys one `list-keys` call returns at most.
pub const LIST_PAGE: usize = 100;

/// A tenant's key-value limits (from its tier).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLimits {
    /// Longest key, in bytes.
    pub max_key_bytes: u64,
    /// Longest value, in bytes.
    pub max_value_bytes: u64,
    /// Keys the tenant may hold over all its buckets.
    pub max_keys: u64,
    /// Bytes (keys plus values) the tenant may hold over all its buckets.
    pub max_total_bytes: u64,
    /// Writes the tenant may make per second on one node.
    pub writes_per_second: u64,
}

impl KvLimits {
    /// The limits of `tier`.
    pub fn of(tier: &TierLimits) -> Self {
        Self {
            max_key_bytes: tier.kv_max_key_bytes,
            max_value_bytes: tier.kv_max_value_bytes,
            max_keys: tier.kv_max_keys,
            max_total_bytes: tier.kv_max_total_bytes,
            writes_per_second: tier.kv_writes_per_second,
        }
    }
}

impl Default for KvLimits {
    fn default() -> Self {
        Self {
            max_key_bytes: DEFAULT_KV_MAX_KEY_BYTES,
            max_value_bytes: DEFAULT_KV_MAX_VALUE_BYTES,
            max_keys: DEFAULT_KV_MAX_KEYS,
            max_total_bytes: DEFAULT_KV_MAX_TOTAL_BYTES,
            writes_per_second: DEFAULT_KV_WRITES_PER_SECOND,
        }
    }
}

/// A bucket of one tenant. `name` is `d:<deployment id>` for a
/// deployment's own bucket and `s:<name>` for a shared one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bucket {
    /// The owner.
    pub tenant: TenantId,
    /// The scoped name.
    pub name: String,
}

impl Bucket {
    /// The bucket a guest of `deployment` (of `tenant`) means by
    /// `identifier`.
    pub fn open(tenant: TenantId, deployment: &str, identifier: &str) -> Result<Self, KvError> {
        let name = match identifier {
            "" | "default" => format!("d:{deployment}"),
            shared if valid_bucket_name(shared) => format!("s:{shared}"),
            _ => {
                return Err(KvError::Invalid(format!(
                    "a bucket name is `default` or 1 to {MAX_BUCKET_NAME} letters, digits, \
                     `-`, `_` or `.`"
                )));
            }
        };
        Ok(Self { tenant, name })
    }
}

fn valid_bucket_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_BUCKET_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Why a key-value operation failed. The guest receives the message as
/// `error::other`; the host carries on.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    /// A tier limit would be exceeded.
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// The request makes no sense (bad name, not a counter, overflow).
    #[error("{0}")]
    Invalid(String),
    /// The backend did not answer in time or failed.
    #[error("key-value store unavailable: {0}")]
    Unavailable(String),
}

/// A write to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Set the value.
    Set(Vec<u8>),
    /// Remove the key (nothing if absent).
    Delete,
    /// Add to the decimal counter stored at the key (absent: 0).
    Increment(u64),
}

/// What a tenant holds over all its buckets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Keys.
    pub keys: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
}

/// A write worked out against the current value and totals: what to store
/// and how the totals change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// The new value, `None` to remove the key.
    pub value: Option<Vec<u8>>,
    /// Change of the tenant's key count.
    pub keys_delta: i64,
    /// Change of the tenant's byte count.
    pub bytes_delta: i64,
    /// The counter's new value (increments), else 0.
    pub counter: u64,
}

/// Works out `change` to `key`, whose current value is `old`, for a tenant
/// holding `totals`. Shared by the store and memory backends (the Redis
/// backend does the same in its script).
pub fn plan(
    key: &str,
    old: Option<&[u8]>,
    change: Change,
    totals: Totals,
    limits: &KvLimits,
) -> Result<Planned, KvError> {
    let old_bytes = old.map_or(0, |v| (key.len() + v.len()) as i64);
    let (value, counter) = match change {
        Change::Delete => {
            return Ok(Planned {
                value: None,
                keys_delta: if old.is_some() { -1 } else { 0 },
                bytes_delta: -old_bytes,
                counter: 0,
            });
        }
        Change::Set(value) => (value, 0),
        Change::Increment(delta) => {
            let current = match old {
                None => 0,
                Some(bytes) => parse_counter(bytes)?,
            };
            let next = current.checked_add(delta).ok_or_else(|| {
                KvError::Invalid(format!("incrementing `{key}` would overflow a u64"))
            })?;
            (next.to_string().into_bytes(), next)
        }
    };
    let keys_delta = if old.is_none() { 1 } else { 0 };
    let bytes_delta = (key.len() + value.len()) as i64 - old_bytes;
    if keys_delta > 0 && totals.keys + 1 > limits.max_keys {
        return Err(KvError::Limit(format!("at most {} keys per tenant", limits.max_keys)));
    }
    if bytes_delta > 0 && totals.bytes.saturating_add(bytes_delta as u64) > limits.max_total_bytes {
        return Err(KvError::Limit(format!(
            "at most {} bytes of keys and values per tenant",
            limits.max_total_bytes
        )));
    }
    Ok(Planned { value: Some(value), keys_delta, bytes_delta, counter })
}

/// Reads a counter: a decimal u64 in ASCII.
pub fn parse_counter(bytes: &[u8]) -> Result<u64, KvError> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| KvError::Invalid("the value is not a decimal counter".into()))
}

/// Checks a key and, for a set, the value against the per-item limits
/// (the totals are the backend's to check).
pub fn check_item(key: &str, value: Option<&[u8]>, limits: &KvLimits) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::Invalid("a key may not be empty".into()));
    }
    if key.len() as u64 > limits.max_key_bytes {
        return Err(KvError::Limit(format!("a key is at most {} bytes", limits.max_key_bytes)));
    }
    if let Some(value) = value
        && value.len() as u64 > limits.max_value_bytes
    {
        return Err(KvError::Limit(format!("a value is at most {} bytes", limits.max_value_bytes)));
    }
    Ok(())
}

/// Where key-value data lives.
#[async_trait::async_trait]
pub trait KvBackend: Send + Sync + std::fmt::Debug + 'static {
    /// `redis`, `store` or `memory`.
    fn name(&self) -> &'static str;
    /// The value at `key`.
    async fn get(&self, bucket: &Bucket, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    /// Whether `key` has a value.
    async fn exists(&self, bucket: &Bucket, key: &str) -> Result<bool, KvError>;
    /// Up to [`LIST_PAGE`] keys in key order from position `cursor`, and the
    /// cursor of the next page if there is one.
    async fn list(
        &self,
        bucket: &Bucket,
        cursor: u64,
    ) -> Result<(Vec<String>, Option<u64>), KvError>;
    /// Applies `change` to `key` within the tenant's `limits`; returns the
    /// counter's new value for an increment (else 0).
    async fn write(
        &self,
        bucket: &Bucket,
        key: &str,
        change: Change,
        limits: &KvLimits,
    ) -> Result<u64, KvError>;
    /// What `tenant` holds.
    async fn totals(&self, tenant: TenantId) -> Result<Totals, KvError>;
}

/// The page at `cursor` of all the keys of a bucket, in key order, and the
/// next cursor (for backends that hold the whole list).
pub(crate) fn page_at(
    keys: impl IntoIterator<Item = String>,
    cursor: u64,
) -> (Vec<String>, Option<u64>) {
    let skip = usize::try_from(cursor).unwrap_or(usize::MAX);
    page(keys.into_iter().skip(skip).take(LIST_PAGE + 1).collect(), cursor)
}

/// Cuts a list of up to `LIST_PAGE + 1` keys read from `cursor` into a page
/// and the next cursor.
pub(crate) fn page(mut keys: Vec<String>, cursor: u64) -> (Vec<String>, Option<u64>) {
    if keys.len() > LIST_PAGE {
        keys.truncate(LIST_PAGE);
        (keys, Some(cursor + LIST_PAGE as u64))
    } else {
        (keys, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: KvLimits = KvLimits {
        max_key_bytes: 8,
        max_value_bytes: 16,
        max_keys: 2,
        max_total_bytes: 40,
        writes_per_second: 1000,
    };

    #[test]
    fn buckets_are_scoped_to_the_tenant_and_the_deployment() {
        let own = Bucket::open(7, "dep_a", "default").unwrap();
        assert_eq!(own, Bucket { tenant: 7, name: "d:dep_a".into() });
        assert_eq!(Bucket::open(7, "dep_a", "").unwrap(), own);
        assert_ne!(Bucket::open(7, "dep_b", "default").unwrap(), own);
        assert_eq!(Bucket::open(7, "dep_a", "cache").unwrap().name, "s:cache");
        assert_eq!(
            Bucket::open(7, "dep_a", "cache").unwrap(),
            Bucket::open(7, "dep_b", "cache").unwrap()
        );
        assert_ne!(
            Bucket::open(8, "dep_a", "cache").unwrap(),
            Bucket::open(7, "dep_a", "cache").unwrap()
        );
        // Nothing a guest passes can spell another scope.
        for bad in ["d:dep_x", "s:x", "a/b", "../x", "x y", &"x".repeat(65)] {
            assert!(matches!(Bucket::open(7, "dep_a", bad), Err(KvError::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn plans_count_keys_and_bytes() {
        let t = Totals::default();
        let p = plan("k", None, Change::Set(b"abc".to_vec()), t, &LIMITS).unwrap();
        assert_eq!((p.keys_delta, p.bytes_delta), (1, 4));
        let p = plan("k", Some(b"abc"), Change::Set(b"a".to_vec()), t, &LIMITS).unwrap();
        assert_eq!((p.keys_delta, p.bytes_delta), (0, -2));
        let p = plan("k", Some(b"abc"), Change::Delete, t, &LIMITS).unwrap();
        assert_eq!((p.value, p.keys_delta, p.bytes_delta), (None, -1, -4));
        let p = plan("k", None, Change::Delete, t, &LIMITS).unwrap();
        assert_eq!((p.keys_delta, p.bytes_delta), (0, 0));
    }

    #[test]
    fn plans_refuse_what_breaks_the_totals() {
        let full = Totals { keys: 2, bytes: 10 };
        assert!(matches!(
            plan("new", None, Change::Set(vec![1]), full, &LIMITS),
            Err(KvError::Limit(_))
        ));
        // Overwriting an existing key adds no key.
        assert!(plan("k", Some(b"x"), Change::Set(vec![1]), full, &LIMITS).is_ok());
        let heavy = Totals { keys: 1, bytes: 38 };
        assert!(matches!(
            plan("k", Some(b"x"), Change::Set(vec![0; 4]), heavy, &LIMITS),
            Err(KvError::Limit(_))
        ));
        // Shrinking is always allowed.
        assert!(plan("k", Some(b"xxxx"), Change::Set(vec![0]), heavy, &LIMITS).is_ok());
    }

    #[test]
    fn increments_are_decimal_and_checked() {
        let t = Totals::default();
        let p = plan("n", None, Change::Increment(5), t, &LIMITS).unwrap();
        assert_eq!((p.value.as_deref(), p.counter), (Some(&b"5"[..]), 5));
        let p = plan("n", Some(b"41"), Change::Increment(1), t, &LIMITS).unwrap();
        assert_eq!(p.counter, 42);
        assert!(matches!(
            plan("n", Some(b"x1"), Change::Increment(1), t, &LIMITS),
            Err(KvError::Invalid(_))
        ));
        assert!(matches!(
            plan("n", Some(u64::MAX.to_string().as_bytes()), Change::Increment(1), t, &LIMITS),
            Err(KvError::Invalid(_))
        ));
    }

    #[test]
    fn items_are_checked() {
        assert!(check_item("12345678", Some(&[0; 16]), &LIMITS).is_ok());
        assert!(matches!(check_item("123456789", None, &LIMITS), Err(KvError::Limit(_))));
        assert!(matches!(check_item("k", Some(&[0; 17]), &LIMITS), Err(KvError::Limit(_))));
        assert!(matches!(check_item("", None, &LIMITS), Err(KvError::Invalid(_))));
    }

    #[test]
    fn pages_have_a_cursor_while_keys_remain() {
        let keys = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>();
        assert_eq!(page(keys(3), 0), (keys(3), None));
        let (first, next) = page(keys(LIST_PAGE + 1), 200);
        assert_eq!((first.len(), next), (LIST_PAGE, Some(200 + LIST_PAGE as u64)));
    }
}
