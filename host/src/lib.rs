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
//! - [`dataplane`]: the invocation path — route, limits, admission, invoke.
//! - [`runtime`]: the wasmtime engine, compilation and per-request sandboxes.
//! - [`response`]: the response body type and JSON errors.
//! - [`logging`]: the tracing subscriber.
//! - [`cli`]: the `wasmwiz` commands.

pub mod cli;
pub mod config;
pub mod dataplane;
pub mod logging;
pub mod response;
pub mod router;
pub mod runtime;
pub mod server;
