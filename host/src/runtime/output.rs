//! Guest stdout and stderr: captured per invocation, bounded, and written to
//! the host's log as one event tagged with the request id, so output of
//! concurrent requests never interleaves and never reaches the host's own
//! stdout unmarked.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes of each stream kept per invocation; the rest is counted, not kept.
pub const MAX_CAPTURED_OUTPUT: usize = 16 << 10;

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    dropped: usize,
}

/// One captured stream (stdout or stderr) of one invocation.
#[derive(Clone, Default)]
pub(crate) struct GuestOutput(Arc<Mutex<Captured>>);

impl GuestOutput {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Handles on this stream: the state's, the WASI context's, and one per
    /// stream the guest holds in its resource table.
    pub(crate) fn handles(&self) -> usize {
        Arc::strong_count(&self.0)
    }

    fn append(&self, bytes: &[u8]) {
        let mut captured = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let room = MAX_CAPTURED_OUTPUT.saturating_sub(captured.bytes.len());
        let kept = room.min(bytes.len());
        captured.bytes.extend_from_slice(&bytes[..kept]);
        captured.dropped += bytes.len() - kept;
    }

    /// Logs what was captured (if anything) as one event, and forgets it:
    /// a kept instance's next request starts with nothing captured. Returns
    /// it, for the tenant's log stream.
    pub(crate) fn log(&self, request_id: &str, stream: &'static str) -> CapturedText {
        let captured =
            std::mem::take(&mut *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        if captured.bytes.is_empty() && captured.dropped == 0 {
            return CapturedText::default();
        }
        // Moved, not copied, when it is valid UTF-8 (as it nearly always is).
        let text = String::from_utf8(captured.bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        tracing::info!(
            target: "wasmwiz::guest",
            request_id,
            stream,
            truncated_bytes = captured.dropped,
            // Debug formatting escapes newlines: one event stays one log line.
            output = ?text.trim_end(),
            "guest output"
        );
        CapturedText { text, dropped: captured.dropped as u64 }
    }
}

/// What one stream of one invocation captured.
#[derive(Clone, Debug, Default)]
pub struct CapturedText {
    /// The first [`MAX_CAPTURED_OUTPUT`] bytes (invalid UTF-8 replaced).
    pub text: String,
    /// Bytes written past them.
    pub dropped: u64,
}

/// What the guest wrote during one invocation.
#[derive(Clone, Debug, Default)]
pub struct GuestText {
    pub stdout: CapturedText,
    pub stderr: CapturedText,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always writable: past the cap the bytes are counted and dropped,
        // so a chatty guest never blocks or fails on its own logging.
        Ok(64 << 10)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_cap_is_counted_not_kept() {
        let out = GuestOutput::new();
        out.append(&vec![b'a'; MAX_CAPTURED_OUTPUT - 1]);
        out.append(b"bcd");
        let captured = out.0.lock().unwrap();
        assert_eq!(captured.bytes.len(), MAX_CAPTURED_OUTPUT);
        assert_eq!(captured.bytes.last(), Some(&b'b'));
        assert_eq!(captured.dropped, 2);
    }
}
