//! The `wasmwiz` binary: parse the command line, start logging, run.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = wasmwiz::cli::Cli::parse();
    let _log_guard = match wasmwiz::logging::init(cli.log_args()) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.execute()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
