//! # WasmWiz
//!
//! A self-hosted, multi-tenant edge runtime for WebAssembly components of the
//! `wasi:http/proxy` world: tenants upload components, map routes to them,
//! and anyone invokes them by URL, each request in a fresh sandbox.
//!
//! # Layout
//! - [`config`]: every setting, as a flag and an environment variable.
//! - [`server`]: listeners, TLS, HTTP/1.1 and HTTP/2 connections, shutdown.
//! - [`router`]: route patterns and the route table (pure).
//! - [`rollout`]: canary rollouts as rules: requests, the split, steps and
//!   when a canary is stopped (pure).
//! - [`dataplane`]: the invocation path — route, limits, admission, invoke.
//! - [`runtime`]: the wasmtime engine, compilation and per-request sandboxes.
//! - [`frontdoor`]: what each listener of a `serve` node answers: the API,
//!   the console (on a listener of its own), `/health`, `/ready`, metrics.
//! - [`node`]: a `serve` node: the loop that keeps its route table in step
//!   with the store, its readiness, and every task it starts.
//! - [`control`]: the control plane's parts: the service every change goes
//!   through, the route-table builder, the compile queue.
//! - [`store`]: durable state on PostgreSQL or embedded SQLite.
//! - [`tenancy`]: tenants, tiers, their limits, defaults and ranges (a leaf).
//! - [`auth`]: API keys, scopes and their cache.
//! - [`api`]: the REST control plane under `/api/v1`.
//! - [`console`]: the web console at `/console`, its files in the binary.
//! - [`kv`]: key-value data of components (`wasi:keyvalue`), per tenant.
//! - [`quota`]: per-tenant request quotas, in Redis or in process.
//! - [`usage`]: per-tenant usage counters, flushed to the store in batches
//!   (per day, and per minute for the history).
//! - [`response`]: the response body type and JSON errors.
//! - [`logs`]: tenants' log streams (an event per invocation), in Redis or
//!   in process.
//! - [`triggers`]: schedules and queues, delivered to deployments as requests.
//! - [`telemetry`]: request traces: W3C trace context and OTLP export.
//! - [`logging`]: the tracing subscriber.
//! - [`metrics`]: Prometheus metrics, resolved per route once.
//! - [`secrets`]: deployments' secrets sealed at rest with the operator's key.
//! - [`wiring`]: a serving node wired from its configuration (store,
//!   runtime, data plane, node, control plane, front door, listeners).
//! - [`cli`]: the `wasmwiz` commands, and nothing else.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod console;
pub mod control;
pub mod dataplane;
pub mod frontdoor;
#[doc(hidden)]
pub mod fuzzing;
pub mod kv;
pub mod logging;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod quota;
pub mod response;
pub mod rollout;
pub mod router;
pub mod runtime;
pub mod secrets;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tenancy;
pub mod triggers;
pub mod usage;
pub mod wiring;
