//! Events beyond HTTP requests: schedules and queues. Each arrives at a
//! tenant's own deployment as an ordinary `wasi:http` request, so every
//! language handles them without new bindings, under the same quotas,
//! limits, logs and usage as any request.
//!
//! # Layout
//! - `spec`: when a schedule is due (cron or `@every`), pure.
//! - `deliver`: a trigger as a request through the node's data plane, and
//!   what its answer means.
//! - `schedules`: the scheduler, one firing per due time across nodes.
//! - `queues`: publishing, the queue backend seam, messages kept in the
//!   store, and the consumers.
//! - `redis`: messages kept in Redis Streams.

pub mod deliver;
pub mod queues;
pub mod redis;
pub mod schedules;
pub mod spec;

/// What the triggers need to know of the node they run on.
pub trait Targets: Send + Sync {
    /// This node's name, in claims and consumer names.
    fn node_name(&self) -> String;
    /// The host a deployment is bound to (`Some(None)`: none), or `None`
    /// when this node serves no such deployment.
    fn host_of(&self, deployment: &str) -> Option<Option<String>>;
    /// The `Host` a request to a deployment bound to no host carries: where
    /// clients reach the node.
    fn public_host(&self) -> String;
    /// A tenant's name, for metric labels.
    fn tenant_name(&self, tenant: crate::tenancy::TenantId) -> String;
}
