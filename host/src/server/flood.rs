//! A limit on the HTTP/2 control frames a client may send.
//!
//! The h2 crate answers every SETTINGS frame with an acknowledgement and
//! every PING with a PING, and has no limit to set on how many a
//! connection sends (it limits resets, which hyper's builder sets). A
//! client writing them as fast as it can (CVE-2019-9515, CVE-2019-9512)
//! makes the server do work for nothing, on the cores every other client
//! shares. [`FloodGuard`] sits between the socket (or the TLS stream) and
//! hyper, follows the frame boundaries of what the client sends without
//! copying it, and ends the connection when its SETTINGS and PING frames
//! (acknowledgements not counted) outrun a token bucket:
//! [`CONTROL_FRAME_BURST`] at once, [`CONTROL_FRAMES_PER_SECOND`] after.
//! Past it nothing more is read from the client, and the connection is
//! closed [`FLOOD_CLOSE_DELAY`] later.
//! A well-behaved client sends one SETTINGS frame when it connects and
//! now and then another, and a PING every few seconds at most.
//!
//! An HTTP/1.1 connection (anything that does not open with the HTTP/2
//! preface) passes through untouched.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// SETTINGS and PING frames a client may send at once.
pub const CONTROL_FRAME_BURST: u32 = 100;
/// SETTINGS and PING frames a client may send per second, past the burst.
pub const CONTROL_FRAMES_PER_SECOND: u32 = 10;

/// The preface an HTTP/2 client opens with (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

/// Where the reader is in the client's byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Position {
    /// In the preface, this many bytes matched so far.
    Preface(usize),
    /// In a frame header, this many bytes read so far.
    Header { bytes: [u8; FRAME_HEADER], have: usize },
    /// In a frame's payload, this many bytes left.
    Payload(usize),
    /// Not HTTP/2: nothing to watch.
    Off,
}

/// Follows frame boundaries and counts control frames.
#[derive(Debug)]
struct Watch {
    position: Position,
    /// Control frames the client may still send now.
    tokens: u32,
    /// When the tokens were last topped up.
    refilled: Instant,
}

/// A frame the client sent that the guard counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlFrame {
    /// SETTINGS (not an acknowledgement).
    Settings,
    /// PING (not an answer to the server's).
    Ping,
}

impl Watch {
    fn new(now: Instant) -> Self {
        Self { position: Position::Preface(0), tokens: CONTROL_FRAME_BURST, refilled: now }
    }

    /// Takes in bytes the client sent; the first control frame past the
    /// limit, if one is in them. `clock` is read only when a control frame
    /// is (at most once a call), not for each read of HTTP/1 or of data.
    fn feed(&mut self, mut data: &[u8], clock: impl Fn() -> Instant) -> Option<ControlFrame> {
        let mut refilled = false;
        while !data.is_empty() {
            match &mut self.position {
                Position::Off => return None,
                Position::Preface(matched) => {
                    let want = &PREFACE[*matched..];
                    let n = want.len().min(data.len());
                    if data[..n] != want[..n] {
                        self.position = Position::Off;
                        return None;
                    }
                    *matched += n;
                    data = &data[n..];
                    if *matched == PREFACE.len() {
                        self.position = Position::Header { bytes: [0; FRAME_HEADER], have: 0 };
                    }
                }
                Position::Header { bytes, have } => {
                    let n = (FRAME_HEADER - *have).min(data.len());
                    bytes[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data = &data[n..];
                    if *have == FRAME_HEADER {
                        let header = *bytes;
                        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
                        let (kind, flags) = (header[3], header[4]);
                        let counted = match kind {
                            SETTINGS if flags & ACK == 0 => Some(ControlFrame::Settings),
                            PING if flags & ACK == 0 => Some(ControlFrame::Ping),
                            _ => None,
                        };
                        if let Some(frame) = counted {
                            if !refilled {
                                self.refill(clock());
                                refilled = true;
                            }
                            if self.tokens == 0 {
                                return Some(frame);
                            }
                            self.tokens -= 1;
                        }
                        self.position = match length {
                            0 => Position::Header { bytes: [0; FRAME_HEADER], have: 0 },
                            n => Position::Payload(n as usize),
                        };
                    }
                }
                Position::Payload(left) => {
                    let n = (*left).min(data.len());
                    *left -= n;
                    data = &data[n..];
                    if *left == 0 {
                        self.position = Position::Header { bytes: [0; FRAME_HEADER], have: 0 };
                    }
                }
            }
        }
        None
    }

    fn refill(&mut self, now: Instant) {
        if self.tokens >= CONTROL_FRAME_BURST {
            self.refilled = now;
            return;
        }
        let elapsed = now.saturating_duration_since(self.refilled);
        let earned = elapsed.as_millis() * u128::from(CONTROL_FRAMES_PER_SECOND) / 1000;
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(CONTROL_FRAME_BURST);
            // Keep the remainder: advance by the time the tokens took.
            self.refilled += std::time::Duration::from_millis(
                u64::from(earned) * 1000 / u64::from(CONTROL_FRAMES_PER_SECOND),
            );
        }
    }
}

/// How long a flooding connection is held, unread, before it is closed: its
/// client's writes stall meanwhile instead of reconnecting at once to flood
/// again (an idle socket costs the server nothing; a new connection's
/// handshake and burst do).
pub const FLOOD_CLOSE_DELAY: Duration = Duration::from_secs(1);

/// A client connection's byte stream, ended with an error when an HTTP/2
/// client floods it with control frames (see the module's documentation).
#[derive(Debug)]
pub struct FloodGuard<IO> {
    inner: IO,
    watch: Watch,
    remote: Option<SocketAddr>,
    close_delay: Duration,
    /// Set once the client flooded: when the connection ends.
    flooded: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> FloodGuard<IO> {
    /// Watches what the client at `remote` (when known: in logs) sends
    /// through `inner`; a flooding connection is closed after
    /// [`FLOOD_CLOSE_DELAY`].
    pub fn new(inner: IO, remote: Option<SocketAddr>) -> Self {
        Self {
            inner,
            watch: Watch::new(Instant::now()),
            remote,
            close_delay: FLOOD_CLOSE_DELAY,
            flooded: None,
        }
    }

    /// Closes a flooding connection after `delay` instead.
    pub fn close_after(mut self, delay: Duration) -> Self {
        self.close_delay = delay;
        self
    }
}

fn flood_error() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "HTTP/2 control frame flood")
}

impl<IO: AsyncRead + Unpin> AsyncRead for FloodGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(closing) = &mut this.flooded {
            // Nothing more is read from a flooding client: it ends here.
            ready!(closing.as_mut().poll(cx));
            return Poll::Ready(Err(flood_error()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Some(frame) = this.watch.feed(&buf.filled()[before..], Instant::now) {
            buf.set_filled(before);
            tracing::info!(
                remote = ?this.remote,
                frame = ?frame,
                burst = CONTROL_FRAME_BURST,
                per_second = CONTROL_FRAMES_PER_SECOND,
                "an HTTP/2 client sent control frames past the limit: connection closed"
            );
            let closing = this.flooded.insert(Box::pin(tokio::time::sleep(this.close_delay)));
            ready!(closing.as_mut().poll(cx));
            return Poll::Ready(Err(flood_error()));
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FloodGuard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags, 0, 0, 0, 0]);
        out.extend_from_slice(payload);
        out
    }

    /// A client's stream: the preface, its SETTINGS, a request's HEADERS
    /// and DATA, then `floods` frames of `kind`.
    fn stream(kind: u8, flags: u8, floods: usize) -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 100]));
        out.extend(frame(0x1, 0x4, b"\x82\x86\x84"));
        // A DATA frame whose payload looks like PING frames: not counted.
        let fake: Vec<u8> = (0..50).flat_map(|_| frame(PING, 0, &[0; 8])).collect();
        out.extend(frame(0x0, 0, &fake));
        for _ in 0..floods {
            let payload: &[u8] = if kind == PING { &[7; 8] } else { &[] };
            out.extend(frame(kind, flags, payload));
        }
        out
    }

    /// Feeds `data` in pieces of `chunk` bytes; where the flood was seen.
    fn feed_in(data: &[u8], chunk: usize, watch: &mut Watch, now: Instant) -> Option<ControlFrame> {
        data.chunks(chunk).find_map(|piece| watch.feed(piece, || now))
    }

    #[test]
    fn a_burst_of_control_frames_passes_and_one_more_is_a_flood_however_the_bytes_arrive() {
        let now = Instant::now();
        let burst = CONTROL_FRAME_BURST as usize;
        for chunk in [1, 2, 7, 9, 10, 64, 4096] {
            // The client's own SETTINGS counts: burst - 1 more pass.
            let mut watch = Watch::new(now);
            assert_eq!(feed_in(&stream(PING, 0, burst - 1), chunk, &mut watch, now), None);
            assert_eq!(watch.feed(&frame(PING, 0, &[0; 8]), || now), Some(ControlFrame::Ping));
            let mut watch = Watch::new(now);
            assert_eq!(
                feed_in(&stream(SETTINGS, 0, burst), chunk, &mut watch, now),
                Some(ControlFrame::Settings),
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn acknowledgements_and_other_frames_are_never_counted() {
        let now = Instant::now();
        let mut watch = Watch::new(now);
        assert_eq!(watch.feed(&stream(SETTINGS, ACK, 10_000), || now), None);
        let mut watch = Watch::new(now);
        assert_eq!(watch.feed(&stream(PING, ACK, 10_000), || now), None);
        let mut watch = Watch::new(now);
        assert_eq!(watch.feed(&stream(0x8, 0, 10_000), || now), None); // WINDOW_UPDATE
    }

    #[test]
    fn the_bucket_refills_at_its_rate() {
        let start = Instant::now();
        let mut watch = Watch::new(start);
        let burst = CONTROL_FRAME_BURST as usize;
        assert_eq!(watch.feed(&stream(PING, 0, burst - 1), || start), None);
        // A second later: that second's frames pass, one more does not.
        let later = start + Duration::from_secs(1);
        let ping = frame(PING, 0, &[0; 8]);
        for _ in 0..CONTROL_FRAMES_PER_SECOND {
            assert_eq!(watch.feed(&ping, || later), None);
        }
        assert_eq!(watch.feed(&ping, || later), Some(ControlFrame::Ping));
        // A client pinging once a second forever is never cut off.
        let mut watch = Watch::new(start);
        for second in 0..10_000 {
            assert_eq!(watch.feed(&ping, || start + Duration::from_secs(second)), None);
        }
    }

    #[test]
    fn http1_passes_through_untouched() {
        let now = Instant::now();
        let mut watch = Watch::new(now);
        let mut request = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n".to_vec();
        // Bytes that would read as PING frames past an HTTP/2 preface.
        request.extend((0..1000).flat_map(|_| frame(PING, 0, &[0; 8])));
        assert_eq!(watch.feed(&request, || now), None);
        assert_eq!(watch.position, Position::Off);
        // A preface that diverges late is HTTP/1 too.
        let mut watch = Watch::new(now);
        assert_eq!(watch.feed(b"PRI * HTTP/2.0\r\n\r\nXX", || now), None);
        assert_eq!(watch.position, Position::Off);
    }
}
