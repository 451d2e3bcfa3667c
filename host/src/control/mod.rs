//! The control plane's parts: what changes the store, what decides the
//! route table, and what compiles components on a node.
//!
//! # Layout
//! - [`service`]: [`ControlPlane`], every change to tenants, keys, tiers,
//!   components and deployments, validated once; called by the API and by
//!   `wasmwiz admin`.
//! - [`plan`]: the route-table builder, pure: a store snapshot and what
//!   this node holds compiled in, the routes and what to compile out.
//! - [`compile_queue`]: which components this node still has to compile,
//!   their failures and back-off.
//! - [`compiled`]: the components this node holds compiled.
//! - [`triggers`]: schedules and queues, checked and made.
//!
//! The node ([`crate::node`]) runs them: it reads the store, asks the
//! builder for a plan, feeds the queue, and publishes the routes.

pub mod compile_queue;
pub mod compiled;
pub mod plan;
pub mod service;
pub mod triggers;

pub use compile_queue::CompileQueue;
pub use compiled::CompiledComponents;
pub use service::{
    Actor, ControlError, ControlPlane, ControlResult, ControlSettings, DeploySpec, GrantSpec,
    IssuedKey, Publisher, TierBase, Uploaded,
};
pub use triggers::{QueueSpec, ScheduleSpec, Scheduled};
