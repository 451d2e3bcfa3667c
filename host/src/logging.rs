//! Logging: `tracing` to stderr, readable in development and JSON lines in
//! production, filtered by `LOG_LEVEL`, written by a background thread so a
//! slow terminal or pipe never stalls a request.
//!
//! Under load the access log is a line per request. Handing each line to a
//! writer thread on its own (a channel send that wakes the thread, then one
//! `write` each) costs a thread wake-up and a system call per request; here
//! a request only appends its line to a shared buffer, and the writer thread,
//! woken once per batch, lets lines gather for [`BATCH_WINDOW`] and writes
//! them out together. Lines appear at most that much later. When the output
//! cannot keep up, the buffer stops at [`MAX_BUFFERED`]: further lines are
//! dropped, never waited for, and a line saying how many follows.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::LogArgs;

/// How long the writer thread lets lines gather before writing them.
pub const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// Bytes of log lines held at most while the output is slow.
pub const MAX_BUFFERED: usize = 8 << 20;

/// Installs the global subscriber. Keep the guard until the process ends:
/// dropping it writes out what is still buffered.
pub fn init(args: &LogArgs) -> anyhow::Result<LogGuard> {
    let filter = EnvFilter::try_new(&args.log_level).with_context(|| {
        format!("LOG_LEVEL: `{}` is not a log level or filter (try info or debug)", args.log_level)
    })?;
    let (writer, mut guard) = BatchWriter::spawn(io::stderr(), MAX_BUFFERED)?;
    let installed = match &args.otel_endpoint {
        None => subscriber(filter, args.is_production(), writer).try_init(),
        Some(endpoint) => {
            let (provider, layer) = crate::telemetry::exporter(endpoint, &args.otel_service_name)?;
            guard.tracer = Some(provider);
            traced_subscriber(filter, args.is_production(), writer, layer).try_init()
        }
    };
    installed.map_err(|e| anyhow::anyhow!("installing the logger: {e}"))?;
    Ok(guard)
}

/// [`subscriber`]'s log lines beside the span exporter's `layer`: the log
/// filter applies to the lines only, and the exporter sees the request
/// spans (`wasmwiz::trace`) alone.
pub fn traced_subscriber(
    filter: EnvFilter,
    production: bool,
    writer: BatchWriter,
    layer: tracing_opentelemetry::OpenTelemetryLayer<
        tracing_subscriber::Registry,
        opentelemetry_sdk::trace::Tracer,
    >,
) -> Box<dyn tracing::Subscriber + Send + Sync> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    let spans = tracing_subscriber::filter::Targets::new()
        .with_target(crate::telemetry::TARGET, tracing::Level::TRACE);
    let registry = tracing_subscriber::registry().with(layer.with_filter(spans));
    let lines = tracing_subscriber::fmt::layer().with_writer(writer);
    if production {
        let lines = lines.json().with_current_span(false).with_span_list(false);
        Box::new(registry.with(lines.with_filter(filter)))
    } else {
        Box::new(registry.with(lines.with_ansi(false).with_filter(filter)))
    }
}

/// The subscriber [`init`] installs: plain lines, or JSON lines in
/// production, through `filter`, to `writer`.
pub fn subscriber(
    filter: EnvFilter,
    production: bool,
    writer: BatchWriter,
) -> Box<dyn tracing::Subscriber + Send + Sync> {
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    if production {
        Box::new(builder.json().with_current_span(false).with_span_list(false).finish())
    } else {
        Box::new(builder.with_ansi(false).finish())
    }
}

/// Where log lines are appended: a [`MakeWriter`] for the subscriber.
#[derive(Clone, Debug)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer thread when it waits for a first line.
    wake: Condvar,
    max_buffered: usize,
}

#[derive(Debug, Default)]
struct State {
    /// Whole lines not yet written.
    lines: Vec<u8>,
    /// Lines dropped since the last write because `lines` was full.
    dropped: u64,
    /// Whether the writer thread sleeps on `wake` (only then is it woken).
    waiting: bool,
    /// Set by the guard: write what is left and stop.
    closing: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves whole lines behind (appends
        // are single `extend`s): keep logging.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Writes out what is buffered and stops the writer thread when dropped.
#[derive(Debug)]
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The span exporter, flushed on drop.
    tracer: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl BatchWriter {
    /// A writer whose lines a new thread writes to `output`, holding at
    /// most `max_buffered` bytes.
    pub fn spawn<W: Write + Send + 'static>(
        output: W,
        max_buffered: usize,
    ) -> io::Result<(Self, LogGuard)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            max_buffered,
        });
        let thread = std::thread::Builder::new().name("wasmwiz-log".into()).spawn({
            let shared = shared.clone();
            move || write_batches(&shared, output)
        })?;
        Ok((
            Self { shared: shared.clone() },
            LogGuard { shared, thread: Some(thread), tracer: None },
        ))
    }

    fn append(&self, line: &[u8]) {
        let mut state = self.shared.lock();
        if state.lines.len() + line.len() > self.shared.max_buffered {
            state.dropped += 1;
            return;
        }
        state.lines.extend_from_slice(line);
        if state.waiting {
            state.waiting = false;
            drop(state);
            self.shared.wake.notify_one();
        }
    }
}

fn write_batches<W: Write>(shared: &Shared, mut output: W) {
    let mut batch = Vec::new();
    loop {
        {
            let mut state = shared.lock();
            while state.lines.is_empty() && state.dropped == 0 && !state.closing {
                state.waiting = true;
                state = shared.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            state.waiting = false;
            if state.closing && state.lines.is_empty() && state.dropped == 0 {
                break;
            }
            if !state.closing {
                drop(state);
                // Let the lines of this window gather into one write.
                std::thread::sleep(BATCH_WINDOW);
            }
        }
        let dropped = {
            let mut state = shared.lock();
            std::mem::swap(&mut batch, &mut state.lines);
            std::mem::take(&mut state.dropped)
        };
        // A closed or broken stderr loses the lines; nothing better to do
        // with them (there is nowhere left to say so).
        let _ = output.write_all(&batch);
        if dropped > 0 {
            let _ = writeln!(
                output,
                "wasmwiz: {dropped} log lines dropped: the log output could not keep up"
            );
        }
        let _ = output.flush();
        batch.clear();
        // After a burst, give back what a normal batch does not need.
        if batch.capacity() > 1 << 20 {
            batch.shrink_to(64 << 10);
        }
    }
    let _ = output.flush();
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take() {
            // Sends what the batch holds (the exporter's own timeout bounds it).
            let _ = tracer.shutdown();
        }
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        let Some(thread) = self.thread.take() else { return };
        // An output that stays blocked (a pipe nobody reads) must not keep
        // the process from exiting: give the last write a second.
        let deadline = Instant::now() + Duration::from_secs(1);
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}

impl Write for &BatchWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        // The subscriber formats a whole event, then writes it with one
        // `write_all`: one call is one line.
        self.append(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = &'a BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output that records what reaches it, and can be held shut.
    #[derive(Clone, Default)]
    struct Sink {
        written: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.written.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.written.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn every_line_is_written_in_order_by_the_time_the_guard_is_dropped() {
        let sink = Sink::default();
        let (writer, guard) = BatchWriter::spawn(sink.clone(), MAX_BUFFERED).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        (&writer).write_all(format!("{t} {i}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let text = sink.text();
        assert_eq!(text.lines().count(), 4000);
        for t in 0..4 {
            let mine: Vec<u32> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("{t} ")))
                .map(|i| i.parse().unwrap())
                .collect();
            assert_eq!(mine, (0..1000).collect::<Vec<_>>(), "thread {t}'s lines");
        }
    }

    #[test]
    fn a_line_reaches_the_output_within_a_few_windows_without_the_guard() {
        let sink = Sink::default();
        let (writer, _guard) = BatchWriter::spawn(sink.clone(), MAX_BUFFERED).unwrap();
        (&writer).write_all(b"first\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.text().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the line was never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sink.text(), "first\n");
    }

    #[test]
    fn a_stalled_output_drops_lines_past_the_limit_and_says_how_many() {
        let sink = Sink::default();
        let gate = sink.gate.lock().unwrap();
        let (writer, guard) = BatchWriter::spawn(sink.clone(), 100).unwrap();
        let mut writer = &writer;
        // Wait until the thread has taken this first line and is held in
        // its write by the gate, so the buffer's whole limit is left.
        writer.write_all(b"aaaaaaaaa\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !writer.shared.lock().lines.is_empty() {
            assert!(std::time::Instant::now() < deadline, "the first line was never taken");
            std::thread::sleep(Duration::from_millis(1));
        }
        for _ in 0..30 {
            writer.write_all(b"0123456789\n").unwrap();
        }
        drop(gate);
        drop(guard);
        let text = sink.text();
        let kept = text.lines().filter(|l| *l == "0123456789").count();
        assert_eq!(kept, 9, "100 bytes hold 9 lines of 11:\n{text}");
        assert!(text.contains("wasmwiz: 21 log lines dropped"), "{text}");
    }
}
