//! What the store keeps of schedules and queues: the schedules and their
//! firings (claimed by one node per due time), the queues, and the
//! messages of queues kept in the store (without Redis).
//!
//! Claims are compare-and-set updates, so any node may claim and none
//! twice: a schedule's due time is claimed by moving its `next_due` from
//! the value the node read; a message by moving its `visible_at`.

use serde::Serialize;

use super::StoreResult;
use crate::tenancy::TenantId;

/// A schedule to create.
#[derive(Clone, Debug)]
pub struct NewSchedule {
    /// Owner.
    pub tenant_id: TenantId,
    /// The deployment it invokes.
    pub deployment_id: String,
    /// Five-field cron (UTC) or `@every <duration>`, checked.
    pub spec: String,
    /// The path (and query) of the request, inside the deployment's route.
    pub path: String,
    /// The request's method.
    pub method: String,
    /// The request's body.
    pub body: String,
    /// Its first due time, Unix ms.
    pub next_due: i64,
}

/// A stored schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleRecord {
    /// `sch_...`.
    pub id: String,
    /// Owner.
    pub tenant_id: TenantId,
    /// The deployment it invokes.
    pub deployment_id: String,
    /// Cron or `@every`.
    pub spec: String,
    /// Path and query.
    pub path: String,
    /// Method.
    pub method: String,
    /// Body.
    pub body: String,
    /// Next due time, Unix ms.
    pub next_due: i64,
    /// Unix ms.
    pub created_at: i64,
}

/// One firing of a schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunRecord {
    /// The due time it fired for, Unix ms.
    pub due_at: i64,
    /// The node that fired it (or holds the claim).
    pub node: String,
    /// When that node claimed it (kept fresh while it fires), Unix ms.
    pub claimed_at: i64,
    /// When the request was made (by the node that took it over, if its
    /// first node died), Unix ms.
    pub started_at: i64,
    /// When the request was answered, Unix ms (`None`: firing, or lost).
    pub fired_at: Option<i64>,
    /// The status of the answer.
    pub status: Option<i64>,
    /// How it ended: the guest's outcome, or why it was refused.
    pub outcome: Option<String>,
}

/// A queue to create.
#[derive(Clone, Debug)]
pub struct NewQueue {
    /// Owner.
    pub tenant_id: TenantId,
    /// Its name, unique for the tenant.
    pub name: String,
    /// The deployment that consumes it.
    pub deployment_id: String,
    /// The path messages are `POST`ed to.
    pub path: String,
    /// Deliveries before a message goes to the dead letters.
    pub max_attempts: u32,
    /// How long a delivery may take before the message is delivered again.
    pub visibility_timeout_s: u32,
}

/// A stored queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueRecord {
    /// `que_...`.
    pub id: String,
    /// Owner.
    pub tenant_id: TenantId,
    /// Name.
    pub name: String,
    /// Consumer deployment.
    pub deployment_id: String,
    /// Delivery path.
    pub path: String,
    /// Deliveries before the dead letters.
    pub max_attempts: u32,
    /// Seconds a delivery may take.
    pub visibility_timeout_s: u32,
    /// Unix ms.
    pub created_at: i64,
}

/// A message of a queue kept in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// `msg_...`.
    pub id: String,
    /// The body, as published.
    pub body: Vec<u8>,
    /// Its `Content-Type`.
    pub content_type: String,
    /// Deliveries so far (counting the one it is claimed for).
    pub attempts: u32,
    /// Published, Unix ms.
    pub created_at: i64,
    /// Why the last delivery failed.
    pub last_error: String,
}

/// How full a queue is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueDepth {
    /// Messages waiting or being delivered (not dead).
    pub waiting: u64,
    /// Messages in the dead letters.
    pub dead: u64,
    /// When the oldest waiting message was published, Unix ms.
    pub oldest_ms: Option<i64>,
}

/// Schedules and queues in the store.
#[async_trait::async_trait]
pub trait TriggerStore: Send + Sync {
    /// Creates a schedule.
    async fn create_schedule(&self, schedule: &NewSchedule) -> StoreResult<ScheduleRecord>;
    /// A tenant's live schedules (every tenant's with `None`).
    async fn schedules(&self, tenant_id: Option<TenantId>) -> StoreResult<Vec<ScheduleRecord>>;
    /// Deletes a tenant's schedule: it never fires again.
    async fn delete_schedule(&self, tenant_id: TenantId, id: &str) -> StoreResult<bool>;
    /// Schedules due at `now` (their `next_due` at or before it).
    async fn due_schedules(&self, now: i64, limit: i64) -> StoreResult<Vec<ScheduleRecord>>;
    /// Claims the firing of schedule `id` due at `due_at` for `node`: moves
    /// its `next_due` from `expected` to `next`, and records the claim.
    /// False when another node moved it first (or it was deleted).
    async fn claim_firing(
        &self,
        id: &str,
        expected: i64,
        next: i64,
        due_at: i64,
        node: &str,
        now: i64,
    ) -> StoreResult<bool>;
    /// Keeps a claim fresh while its firing runs.
    async fn touch_firing(&self, id: &str, due_at: i64, node: &str, now: i64) -> StoreResult<()>;
    /// Records how a firing ended.
    async fn finish_firing(
        &self,
        id: &str,
        due_at: i64,
        fired_at: i64,
        status: i64,
        outcome: &str,
    ) -> StoreResult<()>;
    /// Firings claimed before `stale` and never finished (their node died),
    /// of live schedules, with the claim's time.
    async fn stale_firings(
        &self,
        stale: i64,
        limit: i64,
    ) -> StoreResult<Vec<(ScheduleRecord, i64, i64)>>;
    /// Takes over a stale firing: moves its claim from `expected_claim` to
    /// `node` at `now`; false when another node took it first.
    async fn take_over_firing(
        &self,
        id: &str,
        due_at: i64,
        expected_claim: i64,
        node: &str,
        now: i64,
    ) -> StoreResult<bool>;
    /// A tenant's schedule's newest firings; `None` when it has no such
    /// schedule.
    async fn firings(
        &self,
        tenant_id: TenantId,
        id: &str,
        limit: i64,
    ) -> StoreResult<Option<Vec<RunRecord>>>;
    /// Keeps the newest `keep` firings of each schedule, and none of a
    /// deleted one; returns how many went.
    async fn prune_firings(&self, keep: i64) -> StoreResult<u64>;

    /// Creates a queue (409 when the tenant has one of that name).
    async fn create_queue(&self, queue: &NewQueue) -> StoreResult<QueueRecord>;
    /// A tenant's queues (every tenant's with `None`).
    async fn queues(&self, tenant_id: Option<TenantId>) -> StoreResult<Vec<QueueRecord>>;
    /// Deletes a tenant's queue and every message it holds.
    async fn delete_queue(&self, tenant_id: TenantId, name: &str) -> StoreResult<bool>;

    /// Adds a message to a queue kept in the store, unless the queue holds
    /// `max_backlog` already (false then).
    async fn push_message(
        &self,
        queue_id: &str,
        message: &StoredMessage,
        max_backlog: u64,
    ) -> StoreResult<bool>;
    /// Claims up to `n` deliverable messages: each invisible to every other
    /// claim for `visibility_ms`, its attempts counted.
    async fn claim_messages(
        &self,
        queue_id: &str,
        n: i64,
        now: i64,
        visibility_ms: i64,
    ) -> StoreResult<Vec<StoredMessage>>;
    /// A delivered message is gone.
    async fn ack_message(&self, queue_id: &str, id: &str) -> StoreResult<()>;
    /// A message to deliver again from `visible_at`; `uncount` takes back
    /// the attempt (a delivery the tenant's quota refused).
    async fn retry_message(
        &self,
        queue_id: &str,
        id: &str,
        visible_at: i64,
        error: &str,
        uncount: bool,
    ) -> StoreResult<()>;
    /// A message moves to the dead letters.
    async fn bury_message(&self, queue_id: &str, id: &str, error: &str) -> StoreResult<()>;
    /// The dead letters, oldest first.
    async fn dead_messages(&self, queue_id: &str, limit: i64) -> StoreResult<Vec<StoredMessage>>;
    /// Every dead letter back in the queue, attempts from zero; how many.
    async fn redrive_messages(&self, queue_id: &str, now: i64) -> StoreResult<u64>;
    /// How full a queue is.
    async fn queue_depth(&self, queue_id: &str) -> StoreResult<QueueDepth>;
}

/// Implements [`TriggerStore`] for one backend (`$claim` is its query that
/// claims deliverable messages: PostgreSQL skips rows another claim has
/// locked, SQLite serializes writers).
macro_rules! sql_triggers {
    ($store:ty, $db:ty, $claim:expr) => {
        impl $store {
            fn schedule_from_row(
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<ScheduleRecord, StoreError> {
                use sqlx::Row as _;
                Ok(ScheduleRecord {
                    id: row.try_get("id")?,
                    tenant_id: row.try_get("tenant_id")?,
                    deployment_id: row.try_get("deployment_id")?,
                    spec: row.try_get("spec")?,
                    path: row.try_get("path")?,
                    method: row.try_get("method")?,
                    body: row.try_get("body")?,
                    next_due: row.try_get("next_due")?,
                    created_at: row.try_get("created_at")?,
                })
            }

            fn queue_from_row(row: &<$db as sqlx::Database>::Row) -> Result<QueueRecord, StoreError> {
                use sqlx::Row as _;
                let small = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
                Ok(QueueRecord {
                    id: row.try_get("id")?,
                    tenant_id: row.try_get("tenant_id")?,
                    name: row.try_get("name")?,
                    deployment_id: row.try_get("deployment_id")?,
                    path: row.try_get("path")?,
                    max_attempts: small(row.try_get("max_attempts")?),
                    visibility_timeout_s: small(row.try_get("visibility_timeout_s")?),
                    created_at: row.try_get("created_at")?,
                })
            }

            fn message_from_row(
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<StoredMessage, StoreError> {
                use sqlx::Row as _;
                Ok(StoredMessage {
                    id: row.try_get("id")?,
                    body: row.try_get("body")?,
                    content_type: row.try_get("content_type")?,
                    attempts: u32::try_from(row.try_get::<i64, _>("attempts")?.max(0))
                        .unwrap_or(u32::MAX),
                    created_at: row.try_get("created_at")?,
                    last_error: row.try_get("last_error")?,
                })
            }
        }

        #[async_trait::async_trait]
        impl TriggerStore for $store {
            async fn create_schedule(&self, s: &NewSchedule) -> StoreResult<ScheduleRecord> {
                let id = new_id("sch_");
                let row = sqlx::query(
                    "INSERT INTO schedules (id, tenant_id, deployment_id, spec, path, method, body, \
                     next_due, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     RETURNING id, tenant_id, deployment_id, spec, path, method, body, next_due, \
                     created_at",
                )
                .bind(&id)
                .bind(s.tenant_id)
                .bind(&s.deployment_id)
                .bind(&s.spec)
                .bind(&s.path)
                .bind(&s.method)
                .bind(&s.body)
                .bind(s.next_due)
                .bind(now_ms())
                .fetch_one(&self.pool)
                .await?;
                Self::schedule_from_row(&row)
            }

            async fn schedules(&self, tenant_id: Option<TenantId>) -> StoreResult<Vec<ScheduleRecord>> {
                let rows = match tenant_id {
                    Some(tenant) => sqlx::query(
                        "SELECT * FROM schedules WHERE tenant_id = $1 AND deleted_at IS NULL \
                         ORDER BY created_at, id",
                    )
                    .bind(tenant)
                    .fetch_all(&self.pool)
                    .await?,
                    None => sqlx::query(
                        "SELECT * FROM schedules WHERE deleted_at IS NULL ORDER BY created_at, id",
                    )
                    .fetch_all(&self.pool)
                    .await?,
                };
                rows.iter().map(Self::schedule_from_row).collect()
            }

            async fn delete_schedule(&self, tenant_id: TenantId, id: &str) -> StoreResult<bool> {
                let done = sqlx::query(
                    "UPDATE schedules SET deleted_at = $1 WHERE id = $2 AND tenant_id = $3 \
                     AND deleted_at IS NULL",
                )
                .bind(now_ms())
                .bind(id)
                .bind(tenant_id)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn due_schedules(&self, now: i64, limit: i64) -> StoreResult<Vec<ScheduleRecord>> {
                let rows = sqlx::query(
                    "SELECT * FROM schedules WHERE deleted_at IS NULL AND next_due <= $1 \
                     ORDER BY next_due LIMIT $2",
                )
                .bind(now)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::schedule_from_row).collect()
            }

            async fn claim_firing(
                &self,
                id: &str,
                expected: i64,
                next: i64,
                due_at: i64,
                node: &str,
                now: i64,
            ) -> StoreResult<bool> {
                let mut tx = self.pool.begin().await?;
                let moved = sqlx::query(
                    "UPDATE schedules SET next_due = $1 WHERE id = $2 AND next_due = $3 \
                     AND deleted_at IS NULL",
                )
                .bind(next)
                .bind(id)
                .bind(expected)
                .execute(&mut *tx)
                .await?;
                if moved.rows_affected() == 0 {
                    return Ok(false);
                }
                let claimed = sqlx::query(
                    "INSERT INTO schedule_runs (schedule_id, due_at, node, claimed_at, started_at) \
                     VALUES ($1, $2, $3, $4, $4) ON CONFLICT (schedule_id, due_at) DO NOTHING",
                )
                .bind(id)
                .bind(due_at)
                .bind(node)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(claimed.rows_affected() > 0)
            }

            async fn touch_firing(&self, id: &str, due_at: i64, node: &str, now: i64) -> StoreResult<()> {
                sqlx::query(
                    "UPDATE schedule_runs SET claimed_at = $1 WHERE schedule_id = $2 AND due_at = $3 \
                     AND node = $4 AND fired_at IS NULL",
                )
                .bind(now)
                .bind(id)
                .bind(due_at)
                .bind(node)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn finish_firing(
                &self,
                id: &str,
                due_at: i64,
                fired_at: i64,
                status: i64,
                outcome: &str,
            ) -> StoreResult<()> {
                sqlx::query(
                    "UPDATE schedule_runs SET fired_at = $1, status = $2, outcome = $3 \
                     WHERE schedule_id = $4 AND due_at = $5",
                )
                .bind(fired_at)
                .bind(status)
                .bind(outcome)
                .bind(id)
                .bind(due_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn stale_firings(
                &self,
                stale: i64,
                limit: i64,
            ) -> StoreResult<Vec<(ScheduleRecord, i64, i64)>> {
                use sqlx::Row as _;
                let rows = sqlx::query(
                    "SELECT s.*, r.due_at AS run_due_at, r.claimed_at AS run_claimed_at \
                     FROM schedule_runs r JOIN schedules s ON s.id = r.schedule_id \
                     WHERE r.fired_at IS NULL AND r.claimed_at < $1 AND s.deleted_at IS NULL \
                     ORDER BY r.due_at LIMIT $2",
                )
                .bind(stale)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok((
                            Self::schedule_from_row(row)?,
                            row.try_get("run_due_at")?,
                            row.try_get("run_claimed_at")?,
                        ))
                    })
                    .collect()
            }

            async fn take_over_firing(
                &self,
                id: &str,
                due_at: i64,
                expected_claim: i64,
                node: &str,
                now: i64,
            ) -> StoreResult<bool> {
                let taken = sqlx::query(
                    "UPDATE schedule_runs SET node = $1, claimed_at = $2, started_at = $2 \
                     WHERE schedule_id = $3 \
                     AND due_at = $4 AND claimed_at = $5 AND fired_at IS NULL",
                )
                .bind(node)
                .bind(now)
                .bind(id)
                .bind(due_at)
                .bind(expected_claim)
                .execute(&self.pool)
                .await?;
                Ok(taken.rows_affected() > 0)
            }

            async fn firings(
                &self,
                tenant_id: TenantId,
                id: &str,
                limit: i64,
            ) -> StoreResult<Option<Vec<RunRecord>>> {
                use sqlx::Row as _;
                let exists = sqlx::query(
                    "SELECT 1 FROM schedules WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL",
                )
                .bind(id)
                .bind(tenant_id)
                .fetch_optional(&self.pool)
                .await?;
                if exists.is_none() {
                    return Ok(None);
                }
                let rows = sqlx::query(
                    "SELECT due_at, node, claimed_at, started_at, fired_at, status, outcome \
                     FROM schedule_runs \
                     WHERE schedule_id = $1 ORDER BY due_at DESC LIMIT $2",
                )
                .bind(id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                let runs = rows
                    .iter()
                    .map(|row| {
                        Ok(RunRecord {
                            due_at: row.try_get("due_at")?,
                            node: row.try_get("node")?,
                            started_at: row.try_get("started_at")?,
                            claimed_at: row.try_get("claimed_at")?,
                            fired_at: row.try_get("fired_at")?,
                            status: row.try_get("status")?,
                            outcome: row.try_get("outcome")?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?;
                Ok(Some(runs))
            }

            async fn prune_firings(&self, keep: i64) -> StoreResult<u64> {
                let gone = sqlx::query(
                    "DELETE FROM schedule_runs WHERE schedule_id IN \
                     (SELECT id FROM schedules WHERE deleted_at IS NOT NULL) \
                     OR due_at < (SELECT COALESCE(MIN(due_at), 0) FROM (SELECT r2.due_at FROM \
                     schedule_runs r2 WHERE r2.schedule_id = schedule_runs.schedule_id \
                     ORDER BY r2.due_at DESC LIMIT $1) newest)",
                )
                .bind(keep)
                .execute(&self.pool)
                .await?;
                Ok(gone.rows_affected())
            }

            async fn create_queue(&self, q: &NewQueue) -> StoreResult<QueueRecord> {
                let id = new_id("que_");
                let row = sqlx::query(
                    "INSERT INTO queues (id, tenant_id, name, deployment_id, path, max_attempts, \
                     visibility_timeout_s, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (tenant_id, name) DO NOTHING RETURNING *",
                )
                .bind(&id)
                .bind(q.tenant_id)
                .bind(&q.name)
                .bind(&q.deployment_id)
                .bind(&q.path)
                .bind(i64::from(q.max_attempts))
                .bind(i64::from(q.visibility_timeout_s))
                .bind(now_ms())
                .fetch_optional(&self.pool)
                .await?;
                match row {
                    Some(row) => Self::queue_from_row(&row),
                    None => Err(StoreError::Conflict(format!("a queue named `{}` exists", q.name))),
                }
            }

            async fn queues(&self, tenant_id: Option<TenantId>) -> StoreResult<Vec<QueueRecord>> {
                let rows = match tenant_id {
                    Some(tenant) => {
                        sqlx::query("SELECT * FROM queues WHERE tenant_id = $1 ORDER BY name")
                            .bind(tenant)
                            .fetch_all(&self.pool)
                            .await?
                    }
                    None => sqlx::query("SELECT * FROM queues ORDER BY tenant_id, name")
                        .fetch_all(&self.pool)
                        .await?,
                };
                rows.iter().map(Self::queue_from_row).collect()
            }

            async fn delete_queue(&self, tenant_id: TenantId, name: &str) -> StoreResult<bool> {
                let done = sqlx::query("DELETE FROM queues WHERE tenant_id = $1 AND name = $2")
                    .bind(tenant_id)
                    .bind(name)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn push_message(
                &self,
                queue_id: &str,
                m: &StoredMessage,
                max_backlog: u64,
            ) -> StoreResult<bool> {
                use sqlx::Row as _;
                // Counted, then written: concurrent publishes may pass the
                // bound by a few, never by more than they are.
                let held: i64 =
                    sqlx::query("SELECT COUNT(*) AS n FROM queue_messages WHERE queue_id = $1")
                        .bind(queue_id)
                        .fetch_one(&self.pool)
                        .await?
                        .try_get("n")?;
                if held.max(0) as u64 >= max_backlog {
                    return Ok(false);
                }
                sqlx::query(
                    "INSERT INTO queue_messages (queue_id, id, body, content_type, attempts, \
                     visible_at, created_at) VALUES ($1, $2, $3, $4, 0, $5, $5)",
                )
                .bind(queue_id)
                .bind(&m.id)
                .bind(&m.body)
                .bind(&m.content_type)
                .bind(m.created_at)
                .execute(&self.pool)
                .await?;
                Ok(true)
            }

            async fn claim_messages(
                &self,
                queue_id: &str,
                n: i64,
                now: i64,
                visibility_ms: i64,
            ) -> StoreResult<Vec<StoredMessage>> {
                let rows = sqlx::query($claim)
                    .bind(queue_id)
                    .bind(now)
                    .bind(n)
                    .bind(now + visibility_ms)
                    .fetch_all(&self.pool)
                    .await?;
                let mut messages: Vec<StoredMessage> =
                    rows.iter().map(Self::message_from_row).collect::<Result<_, _>>()?;
                messages.sort_by_key(|m| (m.created_at, m.id.clone()));
                Ok(messages)
            }

            async fn ack_message(&self, queue_id: &str, id: &str) -> StoreResult<()> {
                sqlx::query("DELETE FROM queue_messages WHERE queue_id = $1 AND id = $2")
                    .bind(queue_id)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn retry_message(
                &self,
                queue_id: &str,
                id: &str,
                visible_at: i64,
                error: &str,
                uncount: bool,
            ) -> StoreResult<()> {
                sqlx::query(
                    "UPDATE queue_messages SET visible_at = $1, last_error = $2, \
                     attempts = attempts - $3 WHERE queue_id = $4 AND id = $5",
                )
                .bind(visible_at)
                .bind(error)
                .bind(i64::from(uncount))
                .bind(queue_id)
                .bind(id)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn bury_message(&self, queue_id: &str, id: &str, error: &str) -> StoreResult<()> {
                sqlx::query(
                    "UPDATE queue_messages SET dead = 1, last_error = $1 WHERE queue_id = $2 AND id = $3",
                )
                .bind(error)
                .bind(queue_id)
                .bind(id)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn dead_messages(&self, queue_id: &str, limit: i64) -> StoreResult<Vec<StoredMessage>> {
                let rows = sqlx::query(
                    "SELECT * FROM queue_messages WHERE queue_id = $1 AND dead = 1 \
                     ORDER BY created_at, id LIMIT $2",
                )
                .bind(queue_id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::message_from_row).collect()
            }

            async fn redrive_messages(&self, queue_id: &str, now: i64) -> StoreResult<u64> {
                let moved = sqlx::query(
                    "UPDATE queue_messages SET dead = 0, attempts = 0, visible_at = $1 \
                     WHERE queue_id = $2 AND dead = 1",
                )
                .bind(now)
                .bind(queue_id)
                .execute(&self.pool)
                .await?;
                Ok(moved.rows_affected())
            }

            async fn queue_depth(&self, queue_id: &str) -> StoreResult<QueueDepth> {
                use sqlx::Row as _;
                let row = sqlx::query(
                    "SELECT COALESCE(SUM(CASE WHEN dead = 0 THEN 1 ELSE 0 END), 0) AS waiting, \
                     COALESCE(SUM(CASE WHEN dead = 1 THEN 1 ELSE 0 END), 0) AS dead, \
                     MIN(CASE WHEN dead = 0 THEN created_at END) AS oldest \
                     FROM queue_messages WHERE queue_id = $1",
                )
                .bind(queue_id)
                .fetch_one(&self.pool)
                .await?;
                let count = |name: &str| -> Result<u64, sqlx::Error> {
                    Ok(row.try_get::<i64, _>(name)?.max(0) as u64)
                };
                Ok(QueueDepth {
                    waiting: count("waiting")?,
                    dead: count("dead")?,
                    oldest_ms: row.try_get("oldest")?,
                })
            }
        }
    };
}

pub(super) use sql_triggers;
