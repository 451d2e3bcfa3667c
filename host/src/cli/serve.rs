//! `wasmwiz serve`: the multi-tenant server, wired in [`crate::wiring`].

pub use crate::config::ServeArgs;
use crate::server;
use crate::wiring::Serve;

/// Opens the store, loads every deployment, binds, prints `listening on`,
/// serves until SIGINT or SIGTERM.
pub async fn execute(args: ServeArgs) -> anyhow::Result<()> {
    Serve::build(args).await?.run(server::shutdown_signal()).await
}
