//! Queues in Redis Streams (`REDIS_URL`): every node publishes to and
//! consumes from the same streams, at Redis speed.
//!
//! Per queue (one hash tag, so a Redis Cluster keeps them on one shard):
//! - `PREFIX:q:{ID}`: the stream of messages to deliver, read by the
//!   consumer group `g` (each entry delivered to one consumer; entries a
//!   consumer took and never acknowledged, because its node died, are
//!   claimed by another after the visibility timeout, `XAUTOCLAIM`);
//! - `PREFIX:q:{ID}:later`: messages waiting to be delivered again after a
//!   back-off, scored by when (moved back to the stream when due);
//! - `PREFIX:q:{ID}:dead`: the dead letters (a stream).
//!
//! Every move between them is one Lua script, so a message is never in two
//! of them or in none. An entry carries the message's id (`m`), body (`b`),
//! content type (`t`), failed deliveries so far (`a`) and publish time
//! (`p`). What an acknowledged publish survives is Redis's own persistence
//! (`appendonly yes` in the shipped Compose and Kubernetes files).

use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use bytes::Bytes;
use redis::aio::ConnectionManager;

use super::queues::{DeadLetter, Delivery, QueueBackend, QueueError};
use crate::store::{QueueDepth, QueueRecord, now_ms};

/// The consumer group every node reads with.
const GROUP: &str = "g";
/// A consumer that found nothing waits this long at first, doubling up to
/// [`IDLE_POLL_MAX`] while the queue stays empty.
const IDLE_POLL_MIN: Duration = Duration::from_millis(5);
/// The longest wait between two looks at an empty queue.
const IDLE_POLL_MAX: Duration = Duration::from_millis(200);

/// Adds a message unless the queue holds the backlog already.
/// KEYS: stream, later, dead. ARGV: max, id, body, type, published.
const PUBLISH: &str = r"
local held = redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2]) + redis.call('XLEN', KEYS[3])
if held >= tonumber(ARGV[1]) then return 0 end
redis.call('XADD', KEYS[1], '*', 'm', ARGV[2], 'b', ARGV[3], 't', ARGV[4], 'a', '0', 'p', ARGV[5])
return 1
";

/// Moves the messages whose back-off is over back to the stream.
/// KEYS: stream, later. ARGV: now.
const DUE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 256)
for _, packed in ipairs(due) do
  local m = cjson.decode(packed)
  redis.call('XADD', KEYS[1], '*', 'm', m.m, 'b', m.b64, 't', m.t, 'a', tostring(m.a), 'p', tostring(m.p), 'e', '1')
  redis.call('ZREM', KEYS[2], packed)
end
return #due
";

/// Takes a delivered entry out of the stream and puts the message in the
/// back-off set. KEYS: stream, later. ARGV: entry, when, packed message.
const LATER: &str = r"
if redis.call('XACK', KEYS[1], 'g', ARGV[1]) == 1 then
  redis.call('XDEL', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
end
return 1
";

/// Takes a delivered entry out of the stream into the dead letters.
/// KEYS: stream, dead. ARGV: entry, id, body, type, attempts, published, error.
const BURY: &str = r"
if redis.call('XACK', KEYS[1], 'g', ARGV[1]) == 1 then
  redis.call('XDEL', KEYS[1], ARGV[1])
  redis.call('XADD', KEYS[2], '*', 'm', ARGV[2], 'b', ARGV[3], 't', ARGV[4], 'a', ARGV[5], 'p', ARGV[6], 'r', ARGV[7])
end
return 1
";

/// Every dead letter back in the stream, failures forgotten.
/// KEYS: stream, dead.
const REDRIVE: &str = r"
local dead = redis.call('XRANGE', KEYS[2], '-', '+')
for _, entry in ipairs(dead) do
  local f = {}
  for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
  redis.call('XADD', KEYS[1], '*', 'm', f.m, 'b', f.b, 't', f.t, 'a', '0', 'p', f.p)
end
redis.call('DEL', KEYS[2])
return #dead
";

/// Queues in Redis.
pub struct RedisQueues {
    connection: ConnectionManager,
    prefix: String,
    publish: redis::Script,
    due: redis::Script,
    later: redis::Script,
    bury: redis::Script,
    redrive: redis::Script,
    /// Per queue: how long its consumer waits when it found nothing.
    idle: std::sync::Mutex<std::collections::HashMap<String, Duration>>,
    /// Streams whose consumer group this node made or found: not asked for
    /// again on every claim (forgotten when Redis says it has none, after a
    /// restart that lost it).
    grouped: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for RedisQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueues").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// A stream entry: its id and field-value pairs.
type Entry = (String, Vec<(String, redis::Value)>);

fn field<'a>(fields: &'a [(String, redis::Value)], name: &str) -> Option<&'a redis::Value> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn text(fields: &[(String, redis::Value)], name: &str) -> String {
    match field(fields, name) {
        Some(redis::Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Some(redis::Value::SimpleString(s)) => s.clone(),
        _ => String::new(),
    }
}

fn number(fields: &[(String, redis::Value)], name: &str) -> i64 {
    text(fields, name).parse().unwrap_or(0)
}

/// A message's body: raw in an entry, base64 when it came back from the
/// back-off set (`e` set).
fn body(fields: &[(String, redis::Value)]) -> Bytes {
    let raw = match field(fields, "b") {
        Some(redis::Value::BulkString(bytes)) => bytes.clone(),
        _ => Vec::new(),
    };
    if field(fields, "e").is_some() {
        base64::engine::general_purpose::STANDARD.decode(&raw).map(Bytes::from).unwrap_or_default()
    } else {
        Bytes::from(raw)
    }
}

impl RedisQueues {
    /// Connects lazily to `url`; keys are `PREFIX:q:{ID}...`.
    pub fn connect(url: &str, prefix: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            connection: crate::quota::redis::connect_lazily(url, timeout)?,
            prefix: prefix.to_string(),
            publish: redis::Script::new(PUBLISH),
            due: redis::Script::new(DUE),
            later: redis::Script::new(LATER),
            bury: redis::Script::new(BURY),
            redrive: redis::Script::new(REDRIVE),
            idle: std::sync::Mutex::default(),
            grouped: std::sync::Mutex::default(),
        })
    }

    fn stream(&self, queue: &QueueRecord) -> String {
        format!("{}:q:{{{}}}", self.prefix, queue.id)
    }

    fn later_key(&self, queue: &QueueRecord) -> String {
        format!("{}:later", self.stream(queue))
    }

    fn dead_key(&self, queue: &QueueRecord) -> String {
        format!("{}:dead", self.stream(queue))
    }

    fn idle_wait(&self, queue: &QueueRecord, found: bool) -> Duration {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let wait = idle.entry(queue.id.clone()).or_insert(IDLE_POLL_MIN);
        if found {
            *wait = IDLE_POLL_MIN;
            Duration::ZERO
        } else {
            let now = *wait;
            *wait = (*wait * 2).min(IDLE_POLL_MAX);
            now
        }
    }

    async fn ensure_group(
        &self,
        c: &mut ConnectionManager,
        stream: &str,
    ) -> Result<(), QueueError> {
        if self.grouped.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(stream) {
            return Ok(());
        }
        let made: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(c)
            .await;
        match made {
            Ok(()) => {}
            Err(e) if e.to_string().contains("BUSYGROUP") => {}
            Err(e) => return Err(unavailable(e)),
        }
        self.grouped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(stream.to_string());
        Ok(())
    }

    /// Forgets that `stream` has its group when Redis answered `NOGROUP`
    /// (it restarted without its data): the next claim makes it again.
    fn check_group(&self, stream: &str, error: &redis::RedisError) {
        if error.to_string().contains("NOGROUP") {
            self.grouped.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(stream);
        }
    }

    fn delivery(entry: Entry) -> Delivery {
        let (handle, fields) = entry;
        Delivery {
            id: text(&fields, "m"),
            body: body(&fields),
            content_type: text(&fields, "t"),
            attempt: u32::try_from(number(&fields, "a")).unwrap_or(0).saturating_add(1),
            handle,
            published_ms: number(&fields, "p"),
        }
    }
}

fn unavailable(error: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(error.to_string())
}

/// The entries of an `XREADGROUP`/`XAUTOCLAIM` answer.
fn entries_of(value: &redis::Value) -> Vec<Entry> {
    let mut out = Vec::new();
    let redis::Value::Array(items) = value else { return out };
    for item in items {
        let redis::Value::Array(pair) = item else { continue };
        let (Some(redis::Value::BulkString(id)), Some(redis::Value::Array(kv))) =
            (pair.first(), pair.get(1))
        else {
            continue;
        };
        let mut fields = Vec::with_capacity(kv.len() / 2);
        for chunk in kv.chunks(2) {
            if let [redis::Value::BulkString(k), v] = chunk {
                fields.push((String::from_utf8_lossy(k).into_owned(), v.clone()));
            }
        }
        out.push((String::from_utf8_lossy(id).into_owned(), fields));
    }
    out
}

#[async_trait::async_trait]
impl QueueBackend for RedisQueues {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn publish(
        &self,
        queue: &QueueRecord,
        id: &str,
        body: Bytes,
        content_type: &str,
        max_backlog: u64,
    ) -> Result<bool, QueueError> {
        let mut c = self.connection.clone();
        let added: i64 = self
            .publish
            .key(self.stream(queue))
            .key(self.later_key(queue))
            .key(self.dead_key(queue))
            .arg(max_backlog)
            .arg(id)
            .arg(body.as_ref())
            .arg(content_type)
            .arg(now_ms())
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(added == 1)
    }

    async fn claim(
        &self,
        queue: &QueueRecord,
        n: usize,
        consumer: &str,
    ) -> Result<Vec<Delivery>, QueueError> {
        let mut c = self.connection.clone();
        let stream = self.stream(queue);
        self.ensure_group(&mut c, &stream).await?;
        let _: i64 = self
            .due
            .key(&stream)
            .key(self.later_key(queue))
            .arg(now_ms())
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        // Entries another consumer took and never acknowledged (its node
        // died, or the delivery outlived the visibility timeout).
        let visibility_ms = u64::from(queue.visibility_timeout_s) * 1000;
        let claimed: redis::Value = redis::cmd("XAUTOCLAIM")
            .arg(&stream)
            .arg(GROUP)
            .arg(consumer)
            .arg(visibility_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(n)
            .query_async(&mut c)
            .await
            .map_err(|e| {
                self.check_group(&stream, &e);
                unavailable(e)
            })?;
        let mut entries = match &claimed {
            redis::Value::Array(parts) if parts.len() >= 2 => entries_of(&parts[1]),
            _ => Vec::new(),
        };
        if entries.len() < n {
            let read: redis::Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(consumer)
                .arg("COUNT")
                .arg(n - entries.len())
                .arg("STREAMS")
                .arg(&stream)
                .arg(">")
                .query_async(&mut c)
                .await
                .map_err(|e| {
                    self.check_group(&stream, &e);
                    unavailable(e)
                })?;
            if let redis::Value::Array(streams) = &read {
                for s in streams {
                    if let redis::Value::Array(pair) = s
                        && let Some(list) = pair.get(1)
                    {
                        entries.extend(entries_of(list));
                    }
                }
            }
        }
        let wait = self.idle_wait(queue, !entries.is_empty());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(entries.into_iter().map(Self::delivery).collect())
    }

    async fn ack(&self, queue: &QueueRecord, delivery: &Delivery) -> Result<(), QueueError> {
        let mut c = self.connection.clone();
        let stream = self.stream(queue);
        redis::pipe()
            .cmd("XACK")
            .arg(&stream)
            .arg(GROUP)
            .arg(&delivery.handle)
            .ignore()
            .cmd("XDEL")
            .arg(&stream)
            .arg(&delivery.handle)
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn retry(
        &self,
        queue: &QueueRecord,
        delivery: &Delivery,
        after: Duration,
        _error: &str,
        counted: bool,
    ) -> Result<(), QueueError> {
        let failed = if counted { delivery.attempt } else { delivery.attempt.saturating_sub(1) };
        let packed = serde_json::json!({
            "m": delivery.id,
            "b64": base64::engine::general_purpose::STANDARD.encode(&delivery.body),
            "t": delivery.content_type,
            "a": failed,
            "p": delivery.published_ms,
            // Unique, so two equal messages never collapse into one member.
            "n": crate::store::new_id(""),
        })
        .to_string();
        let when = now_ms() + i64::try_from(after.as_millis()).unwrap_or(i64::MAX / 2);
        let mut c = self.connection.clone();
        let _: i64 = self
            .later
            .key(self.stream(queue))
            .key(self.later_key(queue))
            .arg(&delivery.handle)
            .arg(when)
            .arg(packed)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn bury(
        &self,
        queue: &QueueRecord,
        delivery: &Delivery,
        error: &str,
    ) -> Result<(), QueueError> {
        let mut c = self.connection.clone();
        let _: i64 = self
            .bury
            .key(self.stream(queue))
            .key(self.dead_key(queue))
            .arg(&delivery.handle)
            .arg(&delivery.id)
            .arg(delivery.body.as_ref())
            .arg(&delivery.content_type)
            .arg(delivery.attempt)
            .arg(delivery.published_ms)
            .arg(error)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn dead(&self, queue: &QueueRecord, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let mut c = self.connection.clone();
        let value: redis::Value = redis::cmd("XRANGE")
            .arg(self.dead_key(queue))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(entries_of(&value)
            .into_iter()
            .map(|(_, fields)| DeadLetter {
                id: text(&fields, "m"),
                attempts: u32::try_from(number(&fields, "a")).unwrap_or(0),
                last_error: text(&fields, "r"),
                published_ms: number(&fields, "p"),
                size: body(&fields).len(),
                content_type: text(&fields, "t"),
            })
            .collect())
    }

    async fn redrive(&self, queue: &QueueRecord) -> Result<u64, QueueError> {
        let mut c = self.connection.clone();
        let moved: i64 = self
            .redrive
            .key(self.stream(queue))
            .key(self.dead_key(queue))
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(moved).unwrap_or(0))
    }

    async fn depth(&self, queue: &QueueRecord) -> Result<QueueDepth, QueueError> {
        let mut c = self.connection.clone();
        let stream = self.stream(queue);
        let (ready, later, dead, first): (u64, u64, u64, redis::Value) = redis::pipe()
            .cmd("XLEN")
            .arg(&stream)
            .cmd("ZCARD")
            .arg(self.later_key(queue))
            .cmd("XLEN")
            .arg(self.dead_key(queue))
            .cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let oldest = entries_of(&first).first().map(|(_, fields)| number(fields, "p"));
        Ok(QueueDepth { waiting: ready + later, dead, oldest_ms: oldest.filter(|p| *p > 0) })
    }

    async fn forget(&self, queue: &QueueRecord) -> Result<(), QueueError> {
        let mut c = self.connection.clone();
        self.grouped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.stream(queue));
        let keys = [self.stream(queue), self.later_key(queue), self.dead_key(queue)];
        redis::cmd("DEL").arg(&keys[..]).query_async::<()>(&mut c).await.map_err(unavailable)
    }
}

impl RedisQueues {
    /// Whether Redis answers (for tests and readiness).
    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut c = self.connection.clone();
        redis::cmd("PING").query_async::<()>(&mut c).await.context("PING")
    }
}
