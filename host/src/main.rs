//! The `wasmwiz` binary: parse the command line, start logging, run.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    if let Err(e) = load_file_variables() {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let cli = wasmwiz::cli::Cli::parse();
    if !cli.serves() {
        // A command that prints ends quietly when its reader goes away, as
        // command-line tools do, instead of panicking on a broken pipe.
        // (Servers keep ignoring SIGPIPE: a client closing a socket is an
        // error on that connection only. Sockets are written with
        // MSG_NOSIGNAL either way.)
        #[expect(unsafe_code, reason = "setting a signal's disposition")]
        // SAFETY: before any other thread exists; SIG_DFL is a valid
        // disposition for SIGPIPE.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
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

/// Sets `API_SALT` from `API_SALT_FILE` and the like, before anything reads
/// the environment; and turns off backtraces in library errors unless asked
/// for: wasmtime builds an error value as part of dropping every store, and
/// with `RUST_BACKTRACE=1` in the environment each one would walk the stack
/// (a few percent of all CPU under load). Panics still print backtraces as
/// `RUST_BACKTRACE` says.
fn load_file_variables() -> anyhow::Result<()> {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        #[expect(unsafe_code, reason = "std::env::set_var is unsafe once threads exist")]
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe {
            std::env::set_var("RUST_LIB_BACKTRACE", "0");
        }
    }
    for (var, value) in wasmwiz::config::values_from_files()? {
        #[expect(unsafe_code, reason = "std::env::set_var is unsafe once threads exist")]
        // SAFETY: called first thing in main, before the async runtime or
        // any other thread is started.
        unsafe {
            std::env::set_var(var, value);
        }
    }
    Ok(())
}
