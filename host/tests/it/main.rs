//! Integration tests: the real `wasmwiz` binary over real sockets, running
//! real components compiled from `examples/` and `tests/guests/`.

mod api;
mod capabilities;
mod cluster;
mod conformance;
mod console;
mod control;
mod crash;
mod grants;
mod helpers;
mod hostile;
mod inprocess;
mod isolation;
mod languages;
mod logs;
mod ops;
mod p3;
mod protocol;
mod quota;
mod quota_properties;
mod readme;
mod reuse;
mod rollouts;
mod run;
mod tls;
mod traces;
mod triggers;
mod usage_history;
