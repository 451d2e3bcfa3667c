//! Key-value data in Redis, shared by every node.
//!
//! A bucket is one hash, `PREFIX:kv:{TENANT}:BUCKET`; the tenant's totals
//! are the hash `PREFIX:kv:{TENANT}` (fields `keys` and `bytes`). The braces
//! keep a tenant's keys in one slot. Every write runs as one script that
//! checks the totals, writes and updates them, so limits hold and
//! increments are exact however many nodes write at once. Counters are
//! decimal strings added digit by digit: exact over the whole u64 range.

use std::time::Duration;

use redis::aio::ConnectionManager;

use super::{Bucket, Change, KvBackend, KvError, KvLimits, Totals, page_at};
use crate::tenancy::TenantId;

/// KEYS: bucket hash, totals hash. ARGV: op (`set`, `del`, `incr`), key,
/// value or delta, max keys, max bytes. Returns `{status, value}`.
const WRITE: &str = r"
local op, field = ARGV[1], ARGV[2]
local exists = redis.call('HEXISTS', KEYS[1], field) == 1
local old_len = 0
if exists then old_len = redis.call('HSTRLEN', KEYS[1], field) + #field end
if op == 'del' then
  if exists then
    redis.call('HDEL', KEYS[1], field)
    redis.call('HINCRBY', KEYS[2], 'keys', -1)
    redis.call('HINCRBY', KEYS[2], 'bytes', -old_len)
  end
  return {'ok', '0'}
end
local value = ARGV[3]
if op == 'incr' then
  local current = '0'
  if exists then current = redis.call('HGET', KEYS[1], field) end
  if #current == 0 or #current > 20 or string.find(current, '^%d+$') == nil then
    return {'invalid', 'the value is not a decimal counter'}
  end
  local a, b, digits, carry = current, ARGV[3], {}, 0
  local i, j = #a, #b
  while i > 0 or j > 0 or carry > 0 do
    local s = carry
    if i > 0 then s = s + string.byte(a, i) - 48 end
    if j > 0 then s = s + string.byte(b, j) - 48 end
    table.insert(digits, 1, string.char(48 + s % 10))
    carry = math.floor(s / 10)
    i, j = i - 1, j - 1
  end
  value = string.gsub(table.concat(digits), '^0+', '')
  if value == '' then value = '0' end
  if #value > 20 or (#value == 20 and value > '18446744073709551615') then
    return {'invalid', 'the increment would overflow a u64'}
  end
end
local keys = tonumber(redis.call('HGET', KEYS[2], 'keys') or '0')
local bytes = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
local added = #field + #value - old_len
if not exists and keys + 1 > tonumber(ARGV[4]) then
  return {'limit', 'at most ' .. ARGV[4] .. ' keys per tenant'}
end
if added > 0 and bytes + added > tonumber(ARGV[5]) then
  return {'limit', 'at most ' .. ARGV[5] .. ' bytes of keys and values per tenant'}
end
redis.call('HSET', KEYS[1], field, value)
if not exists then redis.call('HINCRBY', KEYS[2], 'keys', 1) end
redis.call('HINCRBY', KEYS[2], 'bytes', added)
if op == 'incr' then return {'ok', value} end
return {'ok', '0'}
";

/// Key-value data in Redis.
pub struct RedisKv {
    connection: ConnectionManager,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl RedisKv {
    /// Connects lazily to `url`; keys start with `PREFIX:kv:`.
    pub fn connect(url: &str, prefix: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            connection: crate::quota::redis::connect_lazily(url, timeout)?,
            script: redis::Script::new(WRITE),
            prefix: prefix.to_string(),
            timeout,
        })
    }

    fn bucket_key(&self, bucket: &Bucket) -> String {
        format!("{}:kv:{{{}}}:{}", self.prefix, bucket.tenant, bucket.name)
    }

    fn totals_key(&self, tenant: TenantId) -> String {
        format!("{}:kv:{{{tenant}}}", self.prefix)
    }

    /// Runs one call with the timeout.
    async fn call<T, F>(&self, what: &str, f: F) -> Result<T, KvError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                tracing::warn!(%error, what, "key-value call to Redis failed");
                Err(KvError::Unavailable("Redis did not answer".into()))
            }
            Err(_) => {
                tracing::warn!(what, "key-value call to Redis timed out");
                Err(KvError::Unavailable("Redis did not answer in time".into()))
            }
        }
    }
}

#[async_trait::async_trait]
impl KvBackend for RedisKv {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, bucket: &Bucket, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let mut c = self.connection.clone();
        let cmd = redis::cmd("HGET").arg(self.bucket_key(bucket)).arg(key).clone();
        self.call("get", cmd.query_async(&mut c)).await
    }

    async fn exists(&self, bucket: &Bucket, key: &str) -> Result<bool, KvError> {
        let mut c = self.connection.clone();
        let cmd = redis::cmd("HEXISTS").arg(self.bucket_key(bucket)).arg(key).clone();
        self.call("exists", cmd.query_async(&mut c)).await
    }

    async fn list(
        &self,
        bucket: &Bucket,
        cursor: u64,
    ) -> Result<(Vec<String>, Option<u64>), KvError> {
        // A bucket holds at most the tier's key count: fetch its keys and
        // page them in key order, as the other backends do.
        let mut c = self.connection.clone();
        let cmd = redis::cmd("HKEYS").arg(self.bucket_key(bucket)).clone();
        let mut keys: Vec<String> = self.call("list", cmd.query_async(&mut c)).await?;
        keys.sort_unstable();
        Ok(page_at(keys, cursor))
    }

    async fn write(
        &self,
        bucket: &Bucket,
        key: &str,
        change: Change,
        limits: &KvLimits,
    ) -> Result<u64, KvError> {
        let mut c = self.connection.clone();
        let mut invocation = self.script.prepare_invoke();
        invocation.key(self.bucket_key(bucket)).key(self.totals_key(bucket.tenant));
        match change {
            Change::Set(value) => invocation.arg("set").arg(key).arg(value),
            Change::Delete => invocation.arg("del").arg(key).arg(""),
            Change::Increment(delta) => invocation.arg("incr").arg(key).arg(delta.to_string()),
        };
        invocation.arg(limits.max_keys).arg(limits.max_total_bytes);
        let (status, value): (String, Vec<u8>) =
            self.call("write", invocation.invoke_async(&mut c)).await?;
        let text = || String::from_utf8_lossy(&value).into_owned();
        match status.as_str() {
            "ok" => Ok(std::str::from_utf8(&value).ok().and_then(|v| v.parse().ok()).unwrap_or(0)),
            "limit" => Err(KvError::Limit(text())),
            _ => Err(KvError::Invalid(text())),
        }
    }

    async fn totals(&self, tenant: TenantId) -> Result<Totals, KvError> {
        let mut c = self.connection.clone();
        let cmd = redis::cmd("HMGET").arg(self.totals_key(tenant)).arg("keys").arg("bytes").clone();
        let (keys, bytes): (Option<i64>, Option<i64>) =
            self.call("totals", cmd.query_async(&mut c)).await?;
        let n = |v: Option<i64>| v.unwrap_or(0).max(0) as u64;
        Ok(Totals { keys: n(keys), bytes: n(bytes) })
    }
}
