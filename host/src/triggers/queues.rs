//! Queues: messages a tenant publishes (through the API, or from its
//! components with a request to `http://queue.wasmwiz.internal/<name>`),
//! each delivered at least once as a `POST` to the queue's consumer
//! deployment.
//!
//! A `2xx` answer acknowledges a message; anything else (another status, a
//! trap, a timeout) tries it again after a back-off that doubles (1 s, 2 s,
//! 4 s ... at most [`MAX_BACKOFF`]), and after `max_attempts` deliveries it
//! goes to the queue's dead letters, from where a redrive puts it back. A
//! delivery the tenant's quota or the node refused before it ran is tried
//! again later without counting. A message being delivered is invisible to
//! other deliveries for the queue's visibility timeout; a node that dies
//! mid-delivery leaves it to be delivered again after that. So a message
//! is delivered at least once, and more than once only when a node died
//! (or a delivery outlived the visibility timeout): consumers key their
//! work on `wasmwiz-message-id`.
//!
//! Where messages are kept is a [`QueueBackend`]: Redis Streams when
//! `REDIS_URL` is set (`redis.rs`), the store otherwise ([`SqlQueues`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::Method;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Targets;
use super::deliver::{Answer, Trigger, deliver};
use crate::dataplane::DataPlane;
use crate::metrics::Metrics;
use crate::store::{QueueDepth, QueueRecord, Store, StoreError, StoredMessage, new_id, now_ms};
use crate::tenancy::{TenantId, TierLimits};

/// Deliveries of one queue running at once on one node: a backlog moves
/// steadily, without taking a node's (or the tenant's) instances from its
/// other requests.
pub const CONCURRENCY: usize = 16;
/// Longest wait between two deliveries of a failing message.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often an idle consumer of a queue kept in the store looks again.
const POLL: Duration = Duration::from_millis(100);
/// How often a node reads the list of queues.
const REFRESH: Duration = Duration::from_secs(1);
/// How often a publish to a queue this node does not know may read the
/// list of queues again.
const MISS_REFRESH: Duration = Duration::from_millis(250);

/// The wait before delivery `attempt` + 1 of a message whose delivery
/// `attempt` failed: 1 s, doubling, at most [`MAX_BACKOFF`].
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The backend did not answer.
    #[error("the queue backend is unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for QueueError {
    fn from(error: StoreError) -> Self {
        QueueError::Unavailable(error.to_string())
    }
}

/// A message taken for delivery.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// `msg_...`.
    pub id: String,
    /// The body, as published.
    pub body: Bytes,
    /// Its `Content-Type`.
    pub content_type: String,
    /// Which delivery this is: 1 the first.
    pub attempt: u32,
    /// The backend's own handle on it (a stream entry's id).
    pub handle: String,
    /// When it was published, Unix ms.
    pub published_ms: i64,
}

/// A message in the dead letters.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeadLetter {
    /// `msg_...`.
    pub id: String,
    /// Deliveries made.
    pub attempts: u32,
    /// Why the last one failed.
    pub last_error: String,
    /// When it was published, Unix ms.
    pub published_ms: i64,
    /// Its size.
    pub size: usize,
    /// Its `Content-Type`.
    pub content_type: String,
}

/// Where messages are kept.
#[async_trait::async_trait]
pub trait QueueBackend: Send + Sync + std::fmt::Debug {
    /// `redis` or `store`.
    fn name(&self) -> &'static str;
    /// Adds a message unless the queue holds `max_backlog` (false then).
    async fn publish(
        &self,
        queue: &QueueRecord,
        id: &str,
        body: Bytes,
        content_type: &str,
        max_backlog: u64,
    ) -> Result<bool, QueueError>;
    /// Takes up to `n` messages for delivery by `consumer`; waits a little
    /// when there are none.
    async fn claim(
        &self,
        queue: &QueueRecord,
        n: usize,
        consumer: &str,
    ) -> Result<Vec<Delivery>, QueueError>;
    /// The message was delivered: it is gone.
    async fn ack(&self, queue: &QueueRecord, delivery: &Delivery) -> Result<(), QueueError>;
    /// Delivers it again after `after`; `counted`: this delivery counts as
    /// an attempt (false for one the quota refused).
    async fn retry(
        &self,
        queue: &QueueRecord,
        delivery: &Delivery,
        after: Duration,
        error: &str,
        counted: bool,
    ) -> Result<(), QueueError>;
    /// Moves it to the dead letters.
    async fn bury(
        &self,
        queue: &QueueRecord,
        delivery: &Delivery,
        error: &str,
    ) -> Result<(), QueueError>;
    /// The dead letters, oldest first.
    async fn dead(&self, queue: &QueueRecord, limit: usize) -> Result<Vec<DeadLetter>, QueueError>;
    /// Every dead letter back in the queue; how many.
    async fn redrive(&self, queue: &QueueRecord) -> Result<u64, QueueError>;
    /// How full it is.
    async fn depth(&self, queue: &QueueRecord) -> Result<QueueDepth, QueueError>;
    /// Forgets everything of a deleted queue.
    async fn forget(&self, queue: &QueueRecord) -> Result<(), QueueError>;
}

/// Queues kept in the store (SQLite or PostgreSQL): without Redis.
#[derive(Debug)]
pub struct SqlQueues {
    store: Arc<dyn Store>,
}

impl SqlQueues {
    /// Over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

#[async_trait::async_trait]
impl QueueBackend for SqlQueues {
    fn name(&self) -> &'static str {
        "store"
    }

    async fn publish(
        &self,
        queue: &QueueRecord,
        id: &str,
        body: Bytes,
        content_type: &str,
        max_backlog: u64,
    ) -> Result<bool, QueueError> {
        let message = StoredMessage {
            id: id.to_string(),
            body: body.to_vec(),
            content_type: content_type.to_string(),
            attempts: 0,
            created_at: now_ms(),
            last_error: String::new(),
        };
        Ok(self.store.push_message(&queue.id, &message, max_backlog).await?)
    }

    async fn claim(
        &self,
        queue: &QueueRecord,
        n: usize,
        _consumer: &str,
    ) -> Result<Vec<Delivery>, QueueError> {
        let visibility = i64::from(queue.visibility_timeout_s) * 1000;
        let n = i64::try_from(n).unwrap_or(1);
        let claimed = self.store.claim_messages(&queue.id, n, now_ms(), visibility).await?;
        if claimed.is_empty() {
            tokio::time::sleep(POLL).await;
        }
        Ok(claimed
            .into_iter()
            .map(|m| Delivery {
                handle: m.id.clone(),
                id: m.id,
                body: Bytes::from(m.body),
                content_type: m.content_type,
                attempt: m.attempts,
                published_ms: m.created_at,
            })
            .collect())
    }

    async fn ack(&self, queue: &QueueRecord, delivery: &Delivery) -> Result<(), QueueError> {
        Ok(self.store.ack_message(&queue.id, &delivery.id).await?)
    }

    async fn retry(
        &self,
        queue: &QueueRecord,
        delivery: &Delivery,
        after: Duration,
        error: &str,
        counted: bool,
    ) -> Result<(), QueueError> {
        let at = now_ms() + i64::try_from(after.as_millis()).unwrap_or(i64::MAX / 2);
        Ok(self.store.retry_message(&queue.id, &delivery.id, at, error, !counted).await?)
    }

    async fn bury(
        &self,
        queue: &QueueRecord,
        delivery: &Delivery,
        error: &str,
    ) -> Result<(), QueueError> {
        Ok(self.store.bury_message(&queue.id, &delivery.id, error).await?)
    }

    async fn dead(&self, queue: &QueueRecord, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self
            .store
            .dead_messages(&queue.id, limit)
            .await?
            .into_iter()
            .map(|m| DeadLetter {
                size: m.body.len(),
                id: m.id,
                attempts: m.attempts,
                last_error: m.last_error,
                published_ms: m.created_at,
                content_type: m.content_type,
            })
            .collect())
    }

    async fn redrive(&self, queue: &QueueRecord) -> Result<u64, QueueError> {
        Ok(self.store.redrive_messages(&queue.id, now_ms()).await?)
    }

    async fn depth(&self, queue: &QueueRecord) -> Result<QueueDepth, QueueError> {
        Ok(self.store.queue_depth(&queue.id).await?)
    }

    async fn forget(&self, _queue: &QueueRecord) -> Result<(), QueueError> {
        // The store's messages went with the queue's row.
        Ok(())
    }
}

pub use crate::runtime::QueueRefused as Refused;

/// The node's queues: where messages are kept, which queues exist, and the
/// publishes each tenant made this second.
#[derive(Debug)]
pub struct QueueHub {
    store: Arc<dyn Store>,
    backend: Arc<dyn QueueBackend>,
    directory: ArcSwap<HashMap<(TenantId, String), Arc<QueueRecord>>>,
    /// Per tenant: (Unix second, publishes in it).
    rates: Mutex<HashMap<TenantId, (u64, u64)>>,
    /// When the list was last read: a name missing from it is looked up in
    /// the store at most once per [`MISS_REFRESH`], however many publishes
    /// name queues that do not exist (the store is every tenant's).
    refreshed: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    metrics: Arc<Metrics>,
}

impl QueueHub {
    /// Queues over `backend`, listed in `store`.
    pub fn new(
        store: Arc<dyn Store>,
        backend: Arc<dyn QueueBackend>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            backend,
            directory: ArcSwap::from_pointee(HashMap::new()),
            rates: Mutex::new(HashMap::new()),
            refreshed: tokio::sync::Mutex::new(None),
            metrics,
        }
    }

    /// Where messages are kept.
    pub fn backend(&self) -> &Arc<dyn QueueBackend> {
        &self.backend
    }

    /// Reads the list of queues again.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let queues = self.store.queues(None).await?;
        let directory =
            queues.into_iter().map(|q| ((q.tenant_id, q.name.clone()), Arc::new(q))).collect();
        self.directory.store(Arc::new(directory));
        Ok(())
    }

    /// A tenant's queue by name: from the list, or, for one made a moment
    /// ago through another node, from the store.
    pub async fn queue(
        &self,
        tenant: TenantId,
        name: &str,
    ) -> Result<Option<Arc<QueueRecord>>, StoreError> {
        let key = (tenant, name.to_string());
        if let Some(queue) = self.directory.load().get(&key) {
            return Ok(Some(queue.clone()));
        }
        // Misses wait for one another: a flood of them reads the store once.
        let mut refreshed = self.refreshed.lock().await;
        if refreshed.is_none_or(|at| at.elapsed() >= MISS_REFRESH) {
            self.refresh().await?;
            *refreshed = Some(tokio::time::Instant::now());
        }
        Ok(self.directory.load().get(&key).cloned())
    }

    /// Publishes a message to a tenant's queue `name`, within its tier's
    /// limits; returns the message's id.
    pub async fn publish(
        &self,
        tenant: TenantId,
        limits: &TierLimits,
        name: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<String, Refused> {
        let unavailable = |e: &dyn std::fmt::Display| Refused {
            status: 503,
            code: "queues_unavailable",
            message: format!("the queue cannot be written now; retry ({e})"),
        };
        let Some(queue) = self.queue(tenant, name).await.map_err(|e| unavailable(&e))? else {
            return Err(Refused {
                status: 404,
                code: "no_such_queue",
                message: format!("there is no queue named `{name}`"),
            });
        };
        if body.len() as u64 > limits.max_message_bytes {
            return Err(Refused {
                status: 413,
                code: "message_too_large",
                message: format!(
                    "a message may be at most {} bytes on this tier (max_message_bytes)",
                    limits.max_message_bytes
                ),
            });
        }
        if !self.take_publish(tenant, limits.max_publishes_per_second) {
            return Err(Refused {
                status: 429,
                code: "publish_rate",
                message: format!(
                    "this tenant may publish {} messages per second on this node \
                     (max_publishes_per_second); retry shortly",
                    limits.max_publishes_per_second
                ),
            });
        }
        let id = new_id("msg_");
        let content_type =
            if content_type.is_empty() { "application/octet-stream" } else { content_type };
        match self.backend.publish(&queue, &id, body, content_type, limits.max_queue_backlog).await
        {
            Ok(true) => Ok(id),
            Ok(false) => Err(Refused {
                status: 429,
                code: "queue_full",
                message: format!(
                    "queue `{name}` holds {} messages, as many as this tier allows \
                     (max_queue_backlog); retry once it has drained",
                    limits.max_queue_backlog
                ),
            }),
            Err(e) => Err(unavailable(&e)),
        }
    }

    /// Counts one publish of `tenant` in this second, if its rate allows.
    fn take_publish(&self, tenant: TenantId, per_second: u64) -> bool {
        let now = crate::quota::unix_now();
        let mut rates = self.rates.lock().unwrap_or_else(PoisonError::into_inner);
        let window = rates.entry(tenant).or_insert((now, 0));
        if window.0 != now {
            *window = (now, 0);
        }
        if window.1 >= per_second {
            return false;
        }
        window.1 += 1;
        true
    }

    /// Keeps a consumer running for every queue, until the node shuts
    /// down (the caller's cancellation).
    pub async fn run_consumers(
        self: Arc<Self>,
        plane: Arc<DataPlane>,
        targets: Arc<dyn Targets>,
        stop: CancellationToken,
    ) {
        // Per queue id: its consumer, and its gauges' labels.
        let mut running: HashMap<String, (CancellationToken, [String; 2])> = HashMap::new();
        let mut tick = tokio::time::interval(REFRESH);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.refresh().await {
                tracing::debug!(error = %e, "reading the queues failed");
                continue;
            }
            let directory = self.directory.load_full();
            let live: HashMap<&str, &Arc<QueueRecord>> =
                directory.values().map(|q| (q.id.as_str(), q)).collect();
            running.retain(|id, (token, labels)| {
                let keep = live.contains_key(id.as_str());
                if !keep {
                    // Deleted: its consumer stops and its series go.
                    token.cancel();
                    let labels = [labels[0].as_str(), labels[1].as_str()];
                    let _ = self.metrics.queue_depth.remove_label_values(&labels);
                    let _ = self.metrics.queue_dead.remove_label_values(&labels);
                    let _ = self.metrics.queue_oldest_age.remove_label_values(&labels);
                }
                keep
            });
            for (id, queue) in live {
                if running.contains_key(id) {
                    continue;
                }
                let token = stop.child_token();
                let labels = [targets.tenant_name(queue.tenant_id), queue.name.clone()];
                running.insert(id.to_string(), (token.clone(), labels));
                let consumer = Consumer {
                    hub: self.clone(),
                    queue: queue.clone(),
                    plane: plane.clone(),
                    targets: targets.clone(),
                };
                tokio::spawn(consumer.run(token));
            }
            self.export_depths(&directory, targets.as_ref()).await;
        }
        for (token, _) in running.values() {
            token.cancel();
        }
    }

    /// Sets the depth and oldest-age gauges of every queue.
    async fn export_depths(
        &self,
        directory: &HashMap<(TenantId, String), Arc<QueueRecord>>,
        targets: &dyn Targets,
    ) {
        for queue in directory.values() {
            if let Ok(depth) = self.backend.depth(queue).await {
                let tenant = targets.tenant_name(queue.tenant_id);
                let labels = [tenant.as_str(), queue.name.as_str()];
                self.metrics.queue_depth.with_label_values(&labels).set(depth.waiting as i64);
                self.metrics.queue_dead.with_label_values(&labels).set(depth.dead as i64);
                let age = depth.oldest_ms.map_or(0, |oldest| (now_ms() - oldest).max(0) / 1000);
                self.metrics.queue_oldest_age.with_label_values(&labels).set(age);
            }
        }
    }
}

/// One tenant's queues as its components publish to them, within its
/// tier's limits (built with the tenant's routes).
#[derive(Debug)]
pub struct TenantQueues {
    hub: Arc<QueueHub>,
    tenant: TenantId,
    limits: TierLimits,
}

impl TenantQueues {
    /// `tenant`'s queues of `hub`, under `limits`.
    pub fn new(hub: Arc<QueueHub>, tenant: TenantId, limits: TierLimits) -> Self {
        Self { hub, tenant, limits }
    }
}

#[async_trait::async_trait]
impl crate::runtime::QueuePublisher for TenantQueues {
    fn max_message_bytes(&self) -> u64 {
        self.limits.max_message_bytes
    }

    async fn publish(
        &self,
        queue: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<String, Refused> {
        self.hub.publish(self.tenant, &self.limits, queue, body, content_type).await
    }
}

/// Delivers one queue's messages on this node.
struct Consumer {
    hub: Arc<QueueHub>,
    queue: Arc<QueueRecord>,
    plane: Arc<DataPlane>,
    targets: Arc<dyn Targets>,
}

impl Consumer {
    async fn run(self, stop: CancellationToken) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        let paused = Arc::new(Mutex::new(None::<tokio::time::Instant>));
        let name = format!("{}-{}", this.targets.node_name(), this.queue.id);
        loop {
            if stop.is_cancelled() {
                break;
            }
            let until = *paused.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(until) = until {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep_until(until) => {}
                }
            }
            let first = tokio::select! {
                () = stop.cancelled() => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let mut permits = vec![first];
            while let Ok(permit) = slots.clone().try_acquire_owned() {
                permits.push(permit);
            }
            let batch = tokio::select! {
                () = stop.cancelled() => break,
                batch = this.hub.backend.claim(&this.queue, permits.len(), &name) => batch,
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::debug!(queue = %this.queue.id, error = %e, "claiming messages failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for delivery in batch {
                let Some(permit) = permits.pop() else { break };
                let (this, paused) = (this.clone(), paused.clone());
                tokio::spawn(async move {
                    this.deliver(delivery, &paused).await;
                    drop(permit);
                });
            }
        }
    }

    async fn deliver(&self, delivery: Delivery, paused: &Mutex<Option<tokio::time::Instant>>) {
        let queue = &self.queue;
        let tenant = self.targets.tenant_name(queue.tenant_id);
        let answer = match self.targets.host_of(&queue.deployment_id) {
            None => Answer::Gone { code: "not_found".into() },
            Some(host) => {
                let host = host.unwrap_or_else(|| self.targets.public_host());
                let trigger = Trigger {
                    deployment: &queue.deployment_id,
                    host: &host,
                    method: Method::POST,
                    path: &queue.path,
                    headers: vec![
                        ("wasmwiz-trigger", "queue".into()),
                        ("wasmwiz-queue", queue.name.clone()),
                        ("wasmwiz-message-id", delivery.id.clone()),
                        ("wasmwiz-attempt", delivery.attempt.to_string()),
                    ],
                    content_type: Some(&delivery.content_type),
                    body: delivery.body.clone(),
                };
                deliver(&self.plane, trigger).await
            }
        };
        let backend = &self.hub.backend;
        let (result, written) = match &answer {
            Answer::Done { .. } => ("ok", backend.ack(queue, &delivery).await),
            Answer::Refused { retry_after, .. } => {
                // Not run: the tenant's quota or the node said not now. The
                // whole queue waits, not only this message.
                *paused.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(tokio::time::Instant::now() + *retry_after);
                (
                    "refused",
                    backend.retry(queue, &delivery, *retry_after, &answer.outcome(), false).await,
                )
            }
            Answer::Failed { .. } | Answer::Gone { .. }
                if delivery.attempt >= queue.max_attempts =>
            {
                ("dead", backend.bury(queue, &delivery, &answer.outcome()).await)
            }
            Answer::Failed { .. } | Answer::Gone { .. } => {
                let wait = backoff(delivery.attempt);
                ("retry", backend.retry(queue, &delivery, wait, &answer.outcome(), true).await)
            }
        };
        self.hub.metrics.queue_deliveries.with_label_values(&[tenant.as_str(), result]).inc();
        if let Err(e) = written {
            // Left as it was: delivered again after the visibility timeout.
            tracing::warn!(queue = %queue.id, message = %delivery.id, error = %e,
                           "a delivery's result was not recorded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_deliveries_wait_longer_each_time_up_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
