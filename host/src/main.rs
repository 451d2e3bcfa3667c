//! The `wasmwiz` binary: parse the command line, start logging, run.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = wasmwiz::cli::Cli::parse();
    let _log_guard = match cli.log_args().map(wasmwiz::logging::init).transpose() {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.execute()) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
