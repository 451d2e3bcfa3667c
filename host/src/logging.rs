//! Logging: `tracing` to stderr, readable in development and JSON lines in
//! production, filtered by `LOG_LEVEL`, written by a background thread so a
//! slow terminal or pipe never stalls a request.

use anyhow::Context as _;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::config::LogArgs;

/// Installs the global subscriber. Keep the guard until the process ends:
/// dropping it flushes what is still queued.
pub fn init(args: &LogArgs) -> anyhow::Result<WorkerGuard> {
    let filter = EnvFilter::try_new(&args.log_level).with_context(|| {
        format!("LOG_LEVEL: `{}` is not a log level or filter (try info or debug)", args.log_level)
    })?;
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let result = if args.is_production() {
        builder.json().with_current_span(false).with_span_list(false).try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
    result.map_err(|e| anyhow::anyhow!("installing the logger: {e}"))?;
    Ok(guard)
}
