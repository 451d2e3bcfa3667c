//! The `wasmwiz` command line: one clap struct per command, each flag also
//! an environment variable (see [`crate::config`]).

mod run;

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
pub enum Command {
    /// Serve components from files: no store, no tenants, no quotas.
    ///
    /// `wasmwiz run hello.wasm` serves hello on every path;
    /// `wasmwiz run '/hello/...=hello.wasm' '/echo=echo.wasm'` maps routes.
    Run(run::RunArgs),
}

impl Cli {
    /// The logging settings of the chosen command.
    pub fn log_args(&self) -> &LogArgs {
        match &self.command {
            Command::Run(args) => &args.log,
        }
    }

    /// Runs the chosen command to completion.
    pub async fn execute(self) -> anyhow::Result<()> {
        match self.command {
            Command::Run(args) => run::execute(args).await,
        }
    }
}
