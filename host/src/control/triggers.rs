//! Schedules and queues as the control plane makes them: each request is
//! checked here once (the deployment is the tenant's, the path inside its
//! route, the timing within the tier), then written by the store.

use serde::Deserialize;

use super::service::{ControlError, ControlPlane, ControlResult};
use crate::router::{RoutePattern, normalize_path};
use crate::store::{
    Deployment, NewQueue, NewSchedule, QueueRecord, RunRecord, ScheduleRecord, StoreError, now_ms,
    plausible_id,
};
use crate::tenancy::{TenantId, valid_name};
use crate::triggers::spec::Spec;

/// Longest schedule body, in characters.
pub const MAX_SCHEDULE_BODY: usize = 64 << 10;
/// Longest `cron`, in characters.
pub const MAX_CRON: usize = 256;
/// Longest path of a schedule or queue, in characters.
pub const MAX_TRIGGER_PATH: usize = 2048;
/// Most deliveries a queue may make of one message.
pub const MAX_ATTEMPTS: u32 = 100;
/// Longest visibility timeout, in seconds (12 hours).
pub const MAX_VISIBILITY_TIMEOUT_S: u32 = 43_200;
/// Due times `POST /api/v1/schedules` answers with.
pub const NEXT_RUNS: usize = 5;
/// The methods a schedule may use.
pub const SCHEDULE_METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// `POST /api/v1/schedules`'s body.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// The deployment to invoke (`dep_...`, the tenant's).
    pub deployment: String,
    /// Five-field cron in UTC, or `@every <duration>`.
    pub cron: String,
    /// The request's path (and query), inside the deployment's route.
    pub path: String,
    /// The request's method (default `POST`).
    #[serde(default = "post")]
    pub method: String,
    /// The request's body (default empty).
    #[serde(default)]
    pub body: String,
}

fn post() -> String {
    "POST".into()
}

/// `POST /api/v1/queues`'s body.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    /// The queue's name (a name: lower-case letters, digits and `-`).
    pub name: String,
    /// The consumer deployment (`dep_...`, the tenant's).
    pub deployment: String,
    /// The path messages are `POST`ed to, inside the deployment's route.
    pub path: String,
    /// Deliveries before a message goes to the dead letters (default 5).
    #[serde(default = "five")]
    pub max_attempts: u32,
    /// Seconds a delivery may take before the message is delivered again
    /// (default 30; at least the tier's execution timeout).
    #[serde(default)]
    pub visibility_timeout_s: Option<u32>,
}

fn five() -> u32 {
    5
}

/// A schedule and its next due times.
#[derive(Clone, Debug)]
pub struct Scheduled {
    /// As stored.
    pub record: ScheduleRecord,
    /// The next due times, Unix ms.
    pub next_runs: Vec<i64>,
}

impl ControlPlane {
    /// A tenant's live deployment `id`, or 404 (another tenant's too).
    async fn own_deployment(&self, tenant_id: TenantId, id: &str) -> ControlResult<Deployment> {
        if !plausible_id(id) {
            return Err(ControlError::NotFound("deployment"));
        }
        self.store()
            .deployments(Some(tenant_id))
            .await?
            .into_iter()
            .find(|d| d.id == id)
            .ok_or(ControlError::NotFound("deployment"))
    }

    /// Creates a schedule: `spec.cron` is due at the times it names, each
    /// time one request to the deployment's live version.
    pub async fn create_schedule(
        &self,
        tenant_id: TenantId,
        tier: &str,
        spec: ScheduleSpec,
    ) -> ControlResult<Scheduled> {
        let deployment = self.own_deployment(tenant_id, &spec.deployment).await?;
        let path = check_trigger_path(&deployment, &spec.path)?;
        let method = spec.method;
        if !SCHEDULE_METHODS.contains(&method.as_str()) {
            return Err(ControlError::Invalid(format!(
                "`method` must be one of {}",
                SCHEDULE_METHODS.join(", ")
            )));
        }
        if spec.body.chars().count() > MAX_SCHEDULE_BODY {
            return Err(ControlError::Invalid(format!(
                "`body` may be at most {MAX_SCHEDULE_BODY} characters"
            )));
        }
        if spec.cron.chars().count() > MAX_CRON {
            return Err(ControlError::Invalid(format!(
                "`cron` may be at most {MAX_CRON} characters"
            )));
        }
        let parsed = Spec::parse(&spec.cron).map_err(ControlError::Invalid)?;
        let limits = self.tier_limits(tier).await?;
        let now = now_ms();
        let shortest = parsed.shortest_interval(now);
        if shortest.as_secs() < limits.min_schedule_interval_s {
            return Err(ControlError::Invalid(format!(
                "`{}` is due every {}s; the {tier} tier allows schedules at most once every \
                 {}s (min_schedule_interval_s)",
                spec.cron.trim(),
                shortest.as_secs(),
                limits.min_schedule_interval_s
            )));
        }
        let held = self.store().schedules(Some(tenant_id)).await?.len() as u64;
        if held >= limits.max_schedules {
            return Err(ControlError::Limit {
                status: 429,
                code: "schedule_limit",
                message: format!(
                    "this tenant has {held} schedules, as many as the {tier} tier allows \
                     (max_schedules); delete one first"
                ),
            });
        }
        let next_runs = parsed.next_runs(now, NEXT_RUNS);
        let Some(&next_due) = next_runs.first() else {
            return Err(ControlError::Invalid(format!("`{}` is never due", spec.cron)));
        };
        let record = self
            .store()
            .create_schedule(&NewSchedule {
                tenant_id,
                deployment_id: deployment.id,
                spec: spec.cron.trim().to_string(),
                path,
                method,
                body: spec.body,
                next_due,
            })
            .await?;
        tracing::info!(tenant_id, schedule = %record.id, spec = %record.spec, "schedule created");
        Ok(Scheduled { record, next_runs })
    }

    /// A tenant's schedules, each with its next due times.
    pub async fn schedules(&self, tenant_id: TenantId) -> ControlResult<Vec<Scheduled>> {
        let now = now_ms();
        Ok(self
            .store()
            .schedules(Some(tenant_id))
            .await?
            .into_iter()
            .map(|record| {
                let next_runs = Spec::parse(&record.spec)
                    .map(|s| s.next_runs(now, NEXT_RUNS))
                    .unwrap_or_default();
                Scheduled { record, next_runs }
            })
            .collect())
    }

    /// Deletes a tenant's schedule: no firing starts after this answers.
    pub async fn delete_schedule(&self, tenant_id: TenantId, id: &str) -> ControlResult<()> {
        if plausible_id(id) && self.store().delete_schedule(tenant_id, id).await? {
            tracing::info!(tenant_id, schedule = %id, "schedule deleted");
            Ok(())
        } else {
            Err(ControlError::NotFound("schedule"))
        }
    }

    /// A tenant's schedule's newest firings, newest first.
    pub async fn schedule_runs(
        &self,
        tenant_id: TenantId,
        id: &str,
        limit: i64,
    ) -> ControlResult<Vec<RunRecord>> {
        if !plausible_id(id) {
            return Err(ControlError::NotFound("schedule"));
        }
        self.store().firings(tenant_id, id, limit).await?.ok_or(ControlError::NotFound("schedule"))
    }

    /// Creates a queue, consumed by a deployment of the tenant's.
    pub async fn create_queue(
        &self,
        tenant_id: TenantId,
        tier: &str,
        spec: QueueSpec,
    ) -> ControlResult<QueueRecord> {
        check_queue_name(&spec.name)?;
        let deployment = self.own_deployment(tenant_id, &spec.deployment).await?;
        let path = check_trigger_path(&deployment, &spec.path)?;
        if !(1..=MAX_ATTEMPTS).contains(&spec.max_attempts) {
            return Err(ControlError::Invalid(format!(
                "`max_attempts` must be 1 to {MAX_ATTEMPTS}"
            )));
        }
        let limits = self.tier_limits(tier).await?;
        // A delivery runs at most the execution timeout (and a request's
        // queueing before it): the message must stay invisible that long.
        let floor =
            u32::try_from(limits.execution_timeout_ms.div_ceil(1000)).unwrap_or(u32::MAX).max(1);
        let visibility = spec.visibility_timeout_s.unwrap_or(30).max(floor);
        if spec.visibility_timeout_s == Some(0) {
            return Err(ControlError::Invalid("`visibility_timeout_s` must be at least 1".into()));
        }
        if spec.visibility_timeout_s.is_some_and(|v| v < floor) {
            return Err(ControlError::Invalid(format!(
                "`visibility_timeout_s` must be at least {floor}: the {tier} tier lets a \
                 delivery run that long (execution_timeout_ms)"
            )));
        }
        if visibility > MAX_VISIBILITY_TIMEOUT_S {
            return Err(ControlError::Invalid(format!(
                "`visibility_timeout_s` must be at most {MAX_VISIBILITY_TIMEOUT_S}"
            )));
        }
        let held = self.store().queues(Some(tenant_id)).await?.len() as u64;
        if held >= limits.max_queues {
            return Err(ControlError::Limit {
                status: 429,
                code: "queue_limit",
                message: format!(
                    "this tenant has {held} queues, as many as the {tier} tier allows \
                     (max_queues); delete one first"
                ),
            });
        }
        let queue = self
            .store()
            .create_queue(&NewQueue {
                tenant_id,
                name: spec.name,
                deployment_id: deployment.id,
                path,
                max_attempts: spec.max_attempts,
                visibility_timeout_s: visibility,
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => ControlError::Conflict {
                    code: "conflict",
                    message: "this tenant has a queue of that name already".into(),
                },
                other => other.into(),
            })?;
        tracing::info!(tenant_id, queue = %queue.name, "queue created");
        Ok(queue)
    }

    /// A tenant's queues.
    pub async fn queues(&self, tenant_id: TenantId) -> ControlResult<Vec<QueueRecord>> {
        Ok(self.store().queues(Some(tenant_id)).await?)
    }

    /// A tenant's queue by name, or 404.
    pub async fn queue(&self, tenant_id: TenantId, name: &str) -> ControlResult<QueueRecord> {
        if valid_name(name) {
            let queues = self.store().queues(Some(tenant_id)).await?;
            if let Some(queue) = queues.into_iter().find(|q| q.name == name) {
                return Ok(queue);
            }
        }
        Err(ControlError::NotFound("queue"))
    }

    /// Deletes a tenant's queue and the messages the store holds of it;
    /// returns it (the caller forgets what another backend holds).
    pub async fn delete_queue(
        &self,
        tenant_id: TenantId,
        name: &str,
    ) -> ControlResult<QueueRecord> {
        let queue = self.queue(tenant_id, name).await?;
        if self.store().delete_queue(tenant_id, name).await? {
            tracing::info!(tenant_id, queue = %name, "queue deleted");
            Ok(queue)
        } else {
            Err(ControlError::NotFound("queue"))
        }
    }
}

/// Refuses a queue name that is not a name.
pub fn check_queue_name(name: &str) -> ControlResult<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!("a queue name is {}", crate::tenancy::NAME_RULE)))
    }
}

/// The path a trigger's requests use: absolute, normal (no dot segments,
/// no encoded separators) and inside the deployment's route.
fn check_trigger_path(deployment: &Deployment, path: &str) -> ControlResult<String> {
    if path.chars().count() > MAX_TRIGGER_PATH || path.chars().any(char::is_control) {
        return Err(ControlError::Invalid(format!(
            "`path` must be at most {MAX_TRIGGER_PATH} characters, without control characters"
        )));
    }
    let bare = path.split_once('?').map_or(path, |(p, _)| p);
    let normal = normalize_path(bare).map_err(|e| ControlError::Invalid(format!("`path`: {e}")))?;
    if !bare.starts_with('/') || normal != bare {
        return Err(ControlError::Invalid(
            "`path` must be an absolute path without `.` or `..` segments (`/acme/jobs/run`)"
                .into(),
        ));
    }
    let pattern = RoutePattern::parse_stored(&deployment.route, deployment.host.as_deref())
        .map_err(|e| ControlError::Invalid(format!("the deployment's route: {e}")))?;
    if !pattern.matches_path(bare) {
        return Err(ControlError::Invalid(format!(
            "`path` {bare} is outside the deployment's route {}",
            deployment.route
        )));
    }
    Ok(path.to_string())
}
