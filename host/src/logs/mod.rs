//! Tenant log streams: one event per invocation of a tenant's deployments,
//! with what the guest wrote to stdout and stderr during it, readable by
//! that tenant only (`GET /api/v1/logs`, `wasmwiz logs`).
//!
//! The request path never waits for logging: an event is checked against
//! the tenant's allowance on this node (`LOG_EVENTS_PER_SECOND`) and handed
//! to a bounded queue; one task writes the queue to the backend in batches.
//! What does not fit (over the allowance, the queue full, the backend down)
//! is counted per tenant, and a `dropped` event (at most one per tenant per
//! quarter second) tells the tenant how many of its events were lost. Each event holds at most
//! [`MAX_EVENT_OUTPUT`] bytes of each stream, the rest counted.
//!
//! Backends: Redis Streams when the node has `REDIS_URL` (one capped stream
//! per tenant, shared by every node), else an in-process ring per tenant
//! ([`memory::MemoryLogs`], this node's events only). Either keeps the
//! last `LOG_EVENTS_KEPT` events of each tenant.

pub mod memory;
pub mod redis;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::tenancy::TenantId;

/// Default events kept per tenant (`LOG_EVENTS_KEPT`).
pub const DEFAULT_EVENTS_KEPT: usize = 1000;
/// Default events one tenant may log per second on one node
/// (`LOG_EVENTS_PER_SECOND`); a burst of twice as many is let through.
pub const DEFAULT_EVENTS_PER_SECOND: u32 = 100;
/// Bytes of each guest stream (stdout, stderr) kept in one event.
pub const MAX_EVENT_OUTPUT: usize = 4 << 10;
/// Bytes of the request's path (and of the route) kept in one event.
pub const MAX_EVENT_PATH: usize = 1 << 10;
/// Followers one tenant may have on one node at once.
pub const MAX_FOLLOWERS_PER_TENANT: usize = 8;
/// Events waiting to be written, on one node, for all tenants.
const QUEUE: usize = 1024;
/// How often drop notices are written, and followers poll the backend.
pub const TICK: Duration = Duration::from_millis(250);
/// Longest wait for the backend before a batch is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// One entry of a tenant's stream.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LogEvent {
    /// Its place in the stream (`MILLISECONDS-SEQUENCE`), given by the
    /// backend; events are read after an id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// When it happened (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// `invocation`, or `dropped` (a notice of events this node lost).
    pub kind: String,
    /// The node that served the request (`NODE_NAME`).
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The W3C trace the request was part of (the client's `traceparent`
    /// continued, or one started for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The status the client got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// How the guest's run ended (`ok`, `trap`, `timeout`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// From the request's arrival to the end of the guest's run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// The guest's own time (instantiation to its return).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_ms: Option<f64>,
    /// What the guest wrote to stdout during the request.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    /// What it wrote to stderr (a Rust panic's message lands here).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    /// Bytes of output written past what an event keeps.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub output_dropped_bytes: u64,
    /// For `dropped`: how many events were lost.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_events: u64,
    /// For `dropped`: why, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl LogEvent {
    /// The id as (milliseconds, sequence); unparsable ids sort first.
    pub fn position(&self) -> Cursor {
        Cursor::parse(&self.id).unwrap_or(Cursor::START)
    }
}

/// A place in a stream: events after it are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub ms: u64,
    pub seq: u64,
}

impl Cursor {
    /// Before every event.
    pub const START: Cursor = Cursor { ms: 0, seq: 0 };

    /// `MS-SEQ`, as stream ids and `Last-Event-ID` are written.
    pub fn parse(text: &str) -> Option<Cursor> {
        let (ms, seq) = text.split_once('-')?;
        Some(Cursor { ms: ms.parse().ok()?, seq: seq.parse().ok()? })
    }

    /// Just before the first event at or after `ms`.
    pub fn before_ms(ms: u64) -> Cursor {
        if ms == 0 { Cursor::START } else { Cursor { ms: ms - 1, seq: u64::MAX } }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Where events are kept.
#[async_trait::async_trait]
pub trait LogBackend: Send + Sync + fmt::Debug {
    /// `redis` or `memory`.
    fn name(&self) -> &'static str;
    /// Appends events of one tenant, in order, each given its id.
    async fn append(&self, tenant: TenantId, events: Vec<LogEvent>) -> anyhow::Result<()>;
    /// At most `count` of the tenant's events after `after`, oldest first.
    async fn after(
        &self,
        tenant: TenantId,
        after: Cursor,
        count: usize,
    ) -> anyhow::Result<Vec<LogEvent>>;
    /// The newest `count` of the tenant's events after `after`, oldest first.
    async fn newest(
        &self,
        tenant: TenantId,
        after: Cursor,
        count: usize,
    ) -> anyhow::Result<Vec<LogEvent>>;
    /// The id of the tenant's newest event (`START` when none).
    async fn last(&self, tenant: TenantId) -> anyhow::Result<Cursor> {
        let newest = self.newest(tenant, Cursor::START, 1).await?;
        Ok(newest.first().map_or(Cursor::START, LogEvent::position))
    }
}

/// How a node's log streams are bounded.
#[derive(Clone, Copy, Debug)]
pub struct LogSettings {
    /// Events kept per tenant.
    pub kept: usize,
    /// Events one tenant may log per second on this node.
    pub per_second: u32,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { kept: DEFAULT_EVENTS_KEPT, per_second: DEFAULT_EVENTS_PER_SECOND }
    }
}

/// One tenant's logging on this node: its allowance, what it lost, and its
/// followers.
#[derive(Debug)]
pub struct TenantLog {
    tenant: TenantId,
    per_second: f64,
    allowance: Mutex<(f64, Instant)>,
    dropped: AtomicU64,
    followers: AtomicUsize,
}

impl TenantLog {
    fn new(tenant: TenantId, per_second: u32) -> Self {
        let per_second = f64::from(per_second);
        Self {
            tenant,
            per_second,
            allowance: Mutex::new((per_second * 2.0, Instant::now())),
            dropped: AtomicU64::new(0),
            followers: AtomicUsize::new(0),
        }
    }

    /// Takes one event's allowance (a token bucket: `per_second`, bursts
    /// of twice as many), or counts the event as dropped. Asked before an
    /// event is made: one over the allowance costs nothing more.
    pub fn admit(&self) -> bool {
        let mut guard = self.allowance.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, at) = &mut *guard;
        let now = Instant::now();
        let burst = self.per_second * 2.0;
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            drop(guard);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// A place among a tenant's followers on this node, given back on drop.
#[derive(Debug)]
pub struct Follower(Arc<TenantLog>);

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.followers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// This node's side of the tenant log streams.
#[derive(Debug)]
pub struct LogHub {
    backend: Arc<dyn LogBackend>,
    node: OnceLock<String>,
    settings: LogSettings,
    queue: mpsc::Sender<(Arc<TenantLog>, LogEvent)>,
    tenants: Mutex<HashMap<TenantId, Arc<TenantLog>>>,
    /// Cancelled when the node drains: followers' streams end then, so
    /// their connections do not hold the shutdown up.
    closing: tokio_util::sync::CancellationToken,
}

impl LogHub {
    /// A hub writing to `backend`, with its writer task started (it ends
    /// when the hub is dropped). Name the node with [`LogHub::name_node`]
    /// once it is known.
    pub fn start(backend: Arc<dyn LogBackend>, settings: LogSettings) -> Arc<Self> {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let hub = Arc::new(Self {
            backend,
            node: OnceLock::new(),
            settings,
            queue,
            tenants: Mutex::default(),
            closing: tokio_util::sync::CancellationToken::new(),
        });
        tokio::spawn(write_loop(Arc::downgrade(&hub), hub.backend.clone(), receiver));
        hub
    }

    /// The backend's name.
    pub fn backend(&self) -> &Arc<dyn LogBackend> {
        &self.backend
    }

    /// This node's name in events.
    pub fn node(&self) -> &str {
        self.node.get().map_or("", String::as_str)
    }

    /// Ends every follower's stream (the node is draining).
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Cancelled once the node drains.
    pub fn closing(&self) -> tokio_util::sync::CancellationToken {
        self.closing.clone()
    }

    /// Names this node in events (the first name given stays).
    pub fn name_node(&self, name: String) {
        let _ = self.node.set(name);
    }

    /// The tenant's logging on this node (made on first use).
    pub fn for_tenant(&self, tenant: TenantId) -> Arc<TenantLog> {
        self.tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant)
            .or_insert_with(|| Arc::new(TenantLog::new(tenant, self.settings.per_second)))
            .clone()
    }

    /// Queues an event of `log`'s tenant that [`TenantLog::admit`] let
    /// through, never waiting: with the queue full, it is counted as
    /// dropped.
    pub fn publish(&self, log: &Arc<TenantLog>, event: LogEvent) {
        if self.queue.try_send((log.clone(), event)).is_err() {
            log.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A place among the tenant's followers, if it has fewer than
    /// [`MAX_FOLLOWERS_PER_TENANT`] on this node.
    pub fn follow(&self, tenant: TenantId) -> Option<Follower> {
        let log = self.for_tenant(tenant);
        let mut now = log.followers.load(Ordering::Acquire);
        loop {
            if now >= MAX_FOLLOWERS_PER_TENANT {
                return None;
            }
            match log.followers.compare_exchange(now, now + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(Follower(log)),
                Err(actual) => now = actual,
            }
        }
    }

    /// A `dropped` notice for each tenant that lost events since the last.
    fn drop_notices(&self) -> Vec<(Arc<TenantLog>, LogEvent)> {
        let tenants: Vec<Arc<TenantLog>> =
            self.tenants.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        tenants
            .into_iter()
            .filter_map(|log| {
                let dropped = log.dropped.swap(0, Ordering::AcqRel);
                (dropped > 0).then(|| {
                    let event = LogEvent {
                        time: now_rfc3339(),
                        kind: "dropped".into(),
                        node: self.node().to_string(),
                        dropped_events: dropped,
                        message: Some(format!(
                            "{dropped} events of this tenant were not logged on node {}: more \
                             than {} a second (LOG_EVENTS_PER_SECOND), or the log backend was \
                             busy or unreachable",
                            self.node(),
                            self.settings.per_second
                        )),
                        ..LogEvent::default()
                    };
                    (log, event)
                })
            })
            .collect()
    }
}

/// Writes queued events in batches, and each tick the drop notices.
async fn write_loop(
    hub: std::sync::Weak<LogHub>,
    backend: Arc<dyn LogBackend>,
    mut receiver: mpsc::Receiver<(Arc<TenantLog>, LogEvent)>,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            received = receiver.recv_many(&mut batch, 256) => {
                if received == 0 {
                    return;
                }
                let mut by_tenant: HashMap<TenantId, (Arc<TenantLog>, Vec<LogEvent>)> =
                    HashMap::new();
                for (log, event) in batch.drain(..) {
                    by_tenant.entry(log.tenant).or_insert_with(|| (log.clone(), Vec::new())).1.push(event);
                }
                for (tenant, (log, events)) in by_tenant {
                    let n = events.len() as u64;
                    if !write(&*backend, tenant, events).await {
                        log.dropped.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
            _ = tick.tick() => {
                let Some(hub) = hub.upgrade() else { return };
                for (log, notice) in hub.drop_notices() {
                    let lost = notice.dropped_events;
                    if !write(&*backend, log.tenant, vec![notice]).await {
                        // Told in the next notice that gets through.
                        log.dropped.fetch_add(lost, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// Appends within [`WRITE_TIMEOUT`]; false (and a warning) when it failed.
async fn write(backend: &dyn LogBackend, tenant: TenantId, events: Vec<LogEvent>) -> bool {
    match tokio::time::timeout(WRITE_TIMEOUT, backend.append(tenant, events)).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::warn!(%error, tenant, backend = backend.name(), "tenant log events lost");
            false
        }
        Err(_) => {
            tracing::warn!(tenant, backend = backend.name(), "tenant log write timed out");
            false
        }
    }
}

/// `text` cut to at most `max` bytes on a character boundary, and how many
/// bytes were cut.
pub fn clip(text: &str, max: usize) -> (String, u64) {
    if text.len() <= max {
        return (text.to_string(), 0);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_string(), (text.len() - end) as u64)
}

/// This machine's host name (`localhost` if it has none).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    #[expect(unsafe_code, reason = "libc's gethostname")]
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "localhost".to_string(),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A time in Unix milliseconds as RFC 3339 with milliseconds (UTC).
pub fn rfc3339_ms(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}

/// Now, as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// What a reader asks for besides the tenant.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this deployment's events (drop notices always pass).
    pub deployment: Option<String>,
    /// Only events with this outcome.
    pub outcome: Option<String>,
}

impl Filter {
    /// Whether `event` passes.
    pub fn matches(&self, event: &LogEvent) -> bool {
        if event.kind == "dropped" {
            return true;
        }
        if let Some(d) = &self.deployment
            && event.deployment.as_deref() != Some(d.as_str())
        {
            return false;
        }
        if let Some(o) = &self.outcome
            && event.outcome.as_deref() != Some(o.as_str())
        {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_parse_order_and_start_before_a_time() {
        let a = Cursor::parse("1700000000000-3").unwrap();
        assert_eq!(a, Cursor { ms: 1_700_000_000_000, seq: 3 });
        assert!(Cursor::parse("17-x").is_none() && Cursor::parse("17").is_none());
        assert!(Cursor::before_ms(1_700_000_000_000) < Cursor { ms: 1_700_000_000_000, seq: 0 });
        assert!(Cursor::before_ms(1_700_000_000_000) > Cursor { ms: 1_699_999_999_999, seq: 9 });
        assert_eq!(a.to_string(), "1700000000000-3");
    }

    #[test]
    fn clipping_keeps_whole_characters_and_counts_the_rest() {
        assert_eq!(clip("hello", 10), ("hello".to_string(), 0));
        assert_eq!(clip("héllo", 2), ("h".to_string(), 5));
    }

    #[test]
    fn the_allowance_lets_a_burst_through_then_counts_drops() {
        let log = TenantLog::new(1, 10);
        let admitted = (0..100).filter(|_| log.admit()).count();
        assert_eq!(admitted, 20, "a burst of twice the rate");
        assert_eq!(log.dropped.load(Ordering::Relaxed), 80);
    }
}
