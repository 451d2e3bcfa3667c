//! Tenant log streams in this process: a ring of the last events per tenant
//! (the embedded default, and `wasmwiz serve` without `REDIS_URL`). Only
//! this node's events are in it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use super::{Cursor, LogBackend, LogEvent, now_ms};
use crate::tenancy::TenantId;

/// The last `kept` events of each tenant.
#[derive(Debug)]
pub struct MemoryLogs {
    kept: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    last: Cursor,
    streams: HashMap<TenantId, VecDeque<LogEvent>>,
}

impl MemoryLogs {
    /// Rings of `kept` events each.
    pub fn new(kept: usize) -> Self {
        Self {
            kept: kept.max(1),
            inner: Mutex::new(Inner { last: Cursor::START, ..Inner::default() }),
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Inner) -> T) -> T {
        f(&self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[async_trait::async_trait]
impl LogBackend for MemoryLogs {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn append(&self, tenant: TenantId, events: Vec<LogEvent>) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for mut event in events {
            // Ids as Redis gives them: milliseconds, then a sequence within
            // the millisecond, always increasing.
            let ms = now_ms();
            inner.last = if ms > inner.last.ms {
                Cursor { ms, seq: 0 }
            } else {
                Cursor { ms: inner.last.ms, seq: inner.last.seq + 1 }
            };
            event.id = inner.last.to_string();
            let stream = inner.streams.entry(tenant).or_default();
            if stream.len() == self.kept {
                stream.pop_front();
            }
            stream.push_back(event);
        }
        Ok(())
    }

    async fn after(
        &self,
        tenant: TenantId,
        after: Cursor,
        count: usize,
    ) -> anyhow::Result<Vec<LogEvent>> {
        Ok(self.read(|inner| {
            inner.streams.get(&tenant).map_or_else(Vec::new, |stream| {
                stream.iter().filter(|e| e.position() > after).take(count).cloned().collect()
            })
        }))
    }

    async fn newest(
        &self,
        tenant: TenantId,
        after: Cursor,
        count: usize,
    ) -> anyhow::Result<Vec<LogEvent>> {
        Ok(self.read(|inner| {
            inner.streams.get(&tenant).map_or_else(Vec::new, |stream| {
                let mut newest: Vec<LogEvent> = stream
                    .iter()
                    .rev()
                    .take_while(|e| e.position() > after)
                    .take(count)
                    .cloned()
                    .collect();
                newest.reverse();
                newest
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(path: &str) -> LogEvent {
        LogEvent { path: Some(path.into()), kind: "invocation".into(), ..LogEvent::default() }
    }

    #[tokio::test]
    async fn a_ring_keeps_the_newest_events_of_each_tenant_apart() {
        let logs = MemoryLogs::new(3);
        logs.append(1, (0..5).map(|i| event(&format!("/a{i}"))).collect()).await.unwrap();
        logs.append(2, vec![event("/b")]).await.unwrap();
        let a = logs.after(1, Cursor::START, 10).await.unwrap();
        let paths: Vec<_> = a.iter().map(|e| e.path.clone().unwrap()).collect();
        assert_eq!(paths, ["/a2", "/a3", "/a4"]);
        assert!(a.windows(2).all(|w| w[0].position() < w[1].position()));
        assert_eq!(logs.after(2, Cursor::START, 10).await.unwrap().len(), 1);
        assert_eq!(logs.after(1, a[0].position(), 10).await.unwrap().len(), 2);
        let newest = logs.newest(1, Cursor::START, 2).await.unwrap();
        assert_eq!(newest[0].path.as_deref(), Some("/a3"));
        assert_eq!(logs.last(1).await.unwrap(), a[2].position());
        assert_eq!(logs.last(3).await.unwrap(), Cursor::START);
    }
}
