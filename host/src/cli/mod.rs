//! The `wasmwiz` command line: one clap struct per command, each flag also
//! an environment variable (see [`crate::config`]).

pub mod admin;
pub mod client;
pub mod logs;
mod run;
pub mod serve;
mod store;
pub mod triggers;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::LogArgs;

/// WasmWiz: a self-hosted edge runtime for wasi:http WebAssembly components.
#[derive(Parser, Debug)]
#[command(name = "wasmwiz", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
#[expect(clippy::large_enum_variant, reason = "parsed once at start; boxing buys nothing")]
pub enum Command {
    /// Serve components from files: no store, no tenants, no quotas.
    ///
    /// `wasmwiz run hello.wasm` serves hello on every path;
    /// `wasmwiz run '/hello/...=hello.wasm' '/echo=echo.wasm'` maps routes.
    Run(run::RunArgs),
    /// Run the multi-tenant server: the API under /api/v1, /health, /ready,
    /// and every deployed route.
    Serve(serve::ServeArgs),
    /// Bootstrap and maintain the store without the API (tenants, keys,
    /// tiers).
    Admin(admin::AdminArgs),
    /// Apply pending database migrations and exit.
    Migrate(admin::MigrateArgs),
    /// Upload a component and deploy it on a route (API client).
    Deploy(client::DeployArgs),
    /// List your live deployments, or one's versions (API client).
    Deployments(client::DeploymentsArgs),
    /// Switch a deployment back to the version live before the current one,
    /// or to a chosen one (API client).
    Rollback(client::RollbackArgs),
    /// Delete a deployment: its route answers 404 from then on (API client).
    Delete(client::DeleteArgs),
    /// Your invocations with what the component printed; `--follow` for a
    /// live tail across every node (API client).
    Logs(logs::LogsArgs),
    /// Invoke a deployment on a cron schedule or `@every` interval; list,
    /// delete, and see its firings (API client).
    Schedule(triggers::ScheduleArgs),
    /// Queues whose messages are delivered to a deployment: create,
    /// publish, dead letters, redrive (API client).
    Queue(triggers::QueueArgs),
    /// Internal: compile one component read from stdin into the cache.
    #[command(hide = true)]
    CompileWorker {
        /// The compiled-code cache's root folder.
        #[arg(long)]
        cache_dir: PathBuf,
        /// The component's sha256, in hex.
        #[arg(long)]
        digest: String,
        /// The server's pool size (part of the engine configuration).
        #[arg(long)]
        instance_pool_size: u32,
        /// Heap the compiler may use.
        #[arg(long)]
        memory_limit: u64,
    },
}

impl Cli {
    /// The logging settings of the chosen command (`None`: no logger).
    pub fn log_args(&self) -> Option<&LogArgs> {
        match &self.command {
            Command::Run(args) => Some(&args.log),
            Command::Serve(args) => Some(&args.log),
            Command::Admin(args) => Some(&args.log),
            Command::Migrate(args) => Some(&args.log),
            Command::Deploy(_)
            | Command::Deployments(_)
            | Command::Rollback(_)
            | Command::Delete(_)
            | Command::Logs(_)
            | Command::Schedule(_)
            | Command::Queue(_)
            | Command::CompileWorker { .. } => None,
        }
    }

    /// Runs the chosen command to completion; returns the exit code.
    pub async fn execute(self) -> anyhow::Result<i32> {
        match self.command {
            Command::Run(args) => run::execute(args).await?,
            Command::Serve(args) => serve::execute(args).await?,
            Command::Admin(args) => admin::execute(args).await?,
            Command::Migrate(args) => admin::migrate(args).await?,
            Command::Deploy(args) => client::deploy(args).await?,
            Command::Deployments(args) => client::deployments(args).await?,
            Command::Rollback(args) => client::rollback(args).await?,
            Command::Delete(args) => client::delete(args).await?,
            Command::Logs(args) => logs::logs(args).await?,
            Command::Schedule(args) => triggers::schedule(args).await?,
            Command::Queue(args) => triggers::queue(args).await?,
            Command::CompileWorker { cache_dir, digest, instance_pool_size, memory_limit } => {
                let code = tokio::task::spawn_blocking(move || {
                    crate::runtime::worker_main(
                        &cache_dir,
                        &digest,
                        instance_pool_size,
                        memory_limit,
                    )
                })
                .await?;
                return Ok(code);
            }
        }
        Ok(0)
    }
}
