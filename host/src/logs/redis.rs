//! Tenant log streams in Redis Streams: one stream per tenant
//! (`PREFIX:logs:{TENANT}`), written by every node, trimmed to about
//! `LOG_EVENTS_KEPT` entries at each write (`XADD ... MAXLEN ~`), so a
//! tenant's stream takes at most that many events of at most twice
//! [`super::MAX_EVENT_OUTPUT`] bytes of output each.

use std::time::Duration;

use anyhow::Context;
use redis::aio::ConnectionManager;

use super::{Cursor, LogBackend, LogEvent};
use crate::tenancy::TenantId;

/// Log streams in Redis.
pub struct RedisLogs {
    connection: ConnectionManager,
    prefix: String,
    kept: usize,
}

impl std::fmt::Debug for RedisLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLogs").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// One entry as XRANGE answers it: its id and its field-value pairs.
type Entry = (String, Vec<String>);

impl RedisLogs {
    /// Connects lazily to `url`; streams are `PREFIX:logs:{TENANT}`.
    pub fn connect(
        url: &str,
        prefix: &str,
        kept: usize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            connection: crate::quota::redis::connect_lazily(url, timeout)?,
            prefix: prefix.to_string(),
            kept: kept.max(1),
        })
    }

    fn key(&self, tenant: TenantId) -> String {
        format!("{}:logs:{{{tenant}}}", self.prefix)
    }

    fn decode(entries: Vec<Entry>) -> Vec<LogEvent> {
        entries
            .into_iter()
            .filter_map(|(id, fields)| {
                let json = fields.chunks(2).find(|kv| kv[0] == "e").and_then(|kv| kv.get(1))?;
                let mut event: LogEvent = serde_json::from_str(json).ok()?;
                event.id = id;
                Some(event)
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl LogBackend for RedisLogs {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn append(&self, tenant: TenantId, events: Vec<LogEvent>) -> anyhow::Result<()> {
        let key = self.key(tenant);
        let mut pipe = redis::pipe();
        for event in &events {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.kept)
                .arg("*")
                .arg("e")
                .arg(serde_json::to_string(event)?)
                .ignore();
        }
        let mut c = self.connection.clone();
        pipe.query_async::<()>(&mut c).await.context("XADD to the tenant's log stream")
    }

    async fn after(
        &self,
        tenant: TenantId,
        after: Cursor,
        count: usize,
    ) -> anyhow::Result<Vec<LogEvent>> {
        let mut c = self.connection.clone();
        let entries: Vec<Entry> = redis::cmd("XRANGE")
            .arg(self.key(tenant))
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut c)
            .await
            .context("XRANGE of the tenant's log stream")?;
        Ok(Self::decode(entries))
    }

    async fn newest(
        &self,
        tenant: TenantId,
        after: Cursor,
        count: usize,
    ) -> anyhow::Result<Vec<LogEvent>> {
        let mut c = self.connection.clone();
        let entries: Vec<Entry> = redis::cmd("XREVRANGE")
            .arg(self.key(tenant))
            .arg("+")
            .arg(format!("({after}"))
            .arg("COUNT")
            .arg(count)
            .query_async(&mut c)
            .await
            .context("XREVRANGE of the tenant's log stream")?;
        let mut events = Self::decode(entries);
        events.reverse();
        Ok(events)
    }
}
