//! The `wasmwiz` command line: one clap struct per command, each flag also
//! an environment variable (see [`crate::config`]).

pub mod admin;
pub mod client;
pub mod logs;
mod run;
pub mod serve;
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
    /// or to a chosen one; during a rollout, end it (API client).
    Rollback(client::RollbackArgs),
    /// Make a rollout's canary the live version at once (API client).
    Promote(client::TargetArgs),
    /// See a deployment's rollout: its split, steps, and each side's
    /// errors (API client).
    Rollout(client::RolloutArgs),
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
            | Command::Promote(_)
            | Command::Rollout(_)
            | Command::Delete(_)
            | Command::Logs(_)
            | Command::Schedule(_)
            | Command::Queue(_)
            | Command::CompileWorker { .. } => None,
        }
    }

    /// Whether the command serves (`serve`, `run`, the compile worker):
    /// the others print for a reader, who may close the pipe early
    /// (`wasmwiz deployments | head -1`).
    pub fn serves(&self) -> bool {
        matches!(self.command, Command::Serve(_) | Command::Run(_) | Command::CompileWorker { .. })
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
            Command::Promote(args) => client::promote(args).await?,
            Command::Rollout(args) => client::rollout(args).await?,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::CommandFactory as _;

    /// Every environment variable a command of the binary reads.
    fn variables() -> BTreeSet<String> {
        fn walk(command: &clap::Command, into: &mut BTreeSet<String>) {
            for arg in command.get_arguments() {
                if let Some(env) = arg.get_env() {
                    into.insert(env.to_string_lossy().into_owned());
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, into);
            }
        }
        let mut all = BTreeSet::new();
        walk(&super::Cli::command(), &mut all);
        all
    }

    /// README's "Configuration" section: its table and the lines around it.
    fn configuration() -> &'static str {
        let readme = include_str!("../../../README.md");
        let start = readme.find("\n## Configuration").expect("README has Configuration");
        let rest = &readme[start + 1..];
        &rest[..rest[3..].find("\n## ").map_or(rest.len(), |end| end + 3)]
    }

    #[test]
    fn readme_names_every_setting_and_only_settings() {
        let variables = variables();
        // Read by clients and the tests, not by a server's configuration.
        let clients = ["WASMWIZ_URL", "WASMWIZ_API_KEY", "WASMWIZ_COMPONENTS"];
        let section = configuration();
        let missing: Vec<&String> = variables
            .iter()
            .filter(|v| !clients.contains(&v.as_str()))
            .filter(|v| !section.contains(&format!("`{v}`")))
            .collect();
        assert!(missing.is_empty(), "README's Configuration does not name {missing:?}");
        // And every name in the table's first column is read by a command
        // (or is `NO_COLOR`, which `wasmwiz logs` looks for as the
        // convention has it, without a flag).
        let table = section.lines().filter(|l| l.starts_with("| `"));
        let named: BTreeSet<&str> = table
            .flat_map(|row| row.split('|').nth(1).unwrap().split('`').skip(1).step_by(2))
            .filter(|name| {
                name.chars().all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
            })
            .collect();
        let unknown: Vec<&&str> =
            named.iter().filter(|n| !variables.contains(**n) && **n != "NO_COLOR").collect();
        assert!(unknown.is_empty(), "README's Configuration names {unknown:?}, read by no command");
    }
}
